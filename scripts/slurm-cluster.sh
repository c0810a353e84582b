#!/usr/bin/env bash
# Make a real one-node Slurm cluster (munged, slurmctld, slurmd) answer on this
# machine, for the Slurm backend's tests. Idempotent: a second run finds the node
# idle and does nothing. Needs root (apt-get, daemons). As on many sites,
# accounting is off: sacct says "accounting storage is disabled".
#   - one partition, `debug`, oversubscribed (FORCE:32) so that tests run dozens of
#     one-CPU jobs at once on a 2-core machine;
#   - MinJobAge=300: finished jobs leave squeue at once, scontrol after 5 minutes.
# Exit status is non-zero, with the reason, when the node does not come up idle.
set -euo pipefail

LOG_DIR=${TETHER_SLURM_LOG_DIR:-/var/log/slurm}
say() { echo "slurm-cluster: $*" >&2; }

if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    say "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
fi

node_idle() { sinfo -h -N -o '%T' 2>/dev/null | grep -Eq '^(idle|mixed|allocated)'; }
if node_idle; then
    say "node $(hostname) is up ($(sinfo -h -N -o '%T'))"
    exit 0
fi

# munge: a key only munge reads, and its daemon.
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if ! pgrep -x munged >/dev/null; then
    su -s /bin/sh munge -c munged || { say "munged did not start"; exit 1; }
fi

host=$(hostname)
cpus=$(nproc)
memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOG_DIR"
cat >/etc/slurm/slurm.conf <<EOF
ClusterName=tether
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
ReturnToService=2
MinJobAge=300
KillWait=5
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
NodeName=$host CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:32
EOF

pgrep -x slurmctld >/dev/null || slurmctld || { say "slurmctld did not start; see $LOG_DIR/slurmctld.log"; exit 1; }
pgrep -x slurmd >/dev/null || slurmd || { say "slurmd did not start; see $LOG_DIR/slurmd.log"; exit 1; }

for _ in $(seq 1 60); do
    if node_idle; then
        say "node $host is up ($(sinfo -h -N -o '%T')), partition debug"
        exit 0
    fi
    # A node that was down (an earlier run of this machine) is resumed.
    scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
    sleep 1
done
say "node $host did not come up idle within 60 s: $(sinfo -N 2>&1 | tail -n +2)"
tail -n 20 "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" >&2 || true
exit 1
