#!/usr/bin/env bash
# Make a real Docker engine answer on /var/run/docker.sock and build tether's test
# images. Idempotent: a second run finds the engine up and the images built, and
# does nothing. Needs root (apt-get, dockerd). See ../docs and SERVICES notes:
#   - the engine starts with --bridge=none (containers run with network mode none);
#   - no registry answers here, so the test images are built locally from Debian's
#     busybox-static: one imported from a root file system, one through the build
#     API from a `FROM scratch` Dockerfile.
# Exit status is non-zero, with the reason, when the engine cannot be started.
set -euo pipefail

LOG=${TETHER_DOCKERD_LOG:-/var/log/tether-dockerd.log}
IMPORTED=tether-test/busybox:import
BUILT=tether-test/busybox:build

say() { echo "docker-engine: $*" >&2; }

need_install=0
command -v dockerd >/dev/null 2>&1 || need_install=1
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx sleep || need_install=1
if [ "$need_install" = 1 ]; then
    say "installing docker.io and busybox-static with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io busybox-static >/dev/null
fi

engine_up() { docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if ! engine_up; then
    say "starting dockerd (log: $LOG)"
    # setsid: the engine must outlive this script and the nox session that runs it.
    setsid dockerd --iptables=false --bridge=none >"$LOG" 2>&1 < /dev/null &
    for _ in $(seq 1 120); do
        engine_up && break
        sleep 0.5
    done
    if ! engine_up; then
        say "dockerd did not answer within 60 s; last lines of $LOG:"
        tail -n 20 "$LOG" >&2 || true
        exit 1
    fi
fi
say "engine $(docker version --format '{{.Server.Version}}') answers on /var/run/docker.sock"

workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
make_rootfs() {
    mkdir -p "$1/bin" "$1/tmp"
    cp /bin/busybox "$1/bin/busybox"
    for tool in sh true false sleep echo cat ls env id printf kill trap seq wc date mkdir rm; do
        ln -sf busybox "$1/bin/$tool"
    done
}

if ! docker image inspect "$IMPORTED" >/dev/null 2>&1; then
    make_rootfs "$workdir/rootfs"
    tar -C "$workdir/rootfs" -c . | docker import - "$IMPORTED" >/dev/null
    say "imported $IMPORTED"
fi
if ! docker image inspect "$BUILT" >/dev/null 2>&1; then
    make_rootfs "$workdir/context/rootfs"
    printf 'FROM scratch\nCOPY rootfs/ /\nCMD ["/bin/sh"]\n' >"$workdir/context/Dockerfile"
    # The classic builder is the engine's build API (a tar of the context, POSTed).
    if ! DOCKER_BUILDKIT=0 docker build -q -t "$BUILT" "$workdir/context" >"$workdir/build.log" 2>&1; then
        cat "$workdir/build.log" >&2
        exit 1
    fi
    say "built $BUILT through the build API"
fi
docker run --rm --network none "$IMPORTED" true
say "ready: $IMPORTED and $BUILT run"
