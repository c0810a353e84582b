/*
 * tether-supervise: the per-run supervisor of tether's local backend.
 *
 * Usage: tether-supervise RUN_DIR CWD TIMEOUT GRACE CAPTURE ARGV...
 *
 * Started by tether in a new session, it outlives the Python process that started
 * it. The protocol, shared with the pure-Python supervisor (fallback.py):
 *
 *  0. Session: with TETHER_SUPERVISOR_SETSID=1 in its environment (removed before the
 *     command starts) it leaves the submitter's session for a new one of its own, its
 *     first act. tether's local backend asks for this instead of a setsid in posix_spawn:
 *     a new session is a new scheduling autogroup, and on a busy machine the spawned
 *     child, in that new group, waits for a CPU while the submitter, stopped until the
 *     exec, waits with it. Terminal signals (Ctrl-C, hang-up, Ctrl-\, Ctrl-Z) that
 *     reached the submitter's group before it left are dropped; signals sent to it by a
 *     process stay pending, so an early cancel still counts.
 *  1. Gate: it reads one byte "g" from fd 3, which tether writes once the run's
 *     record (RUN_DIR/handle.json) is on disk. If the submitter dies first (end of
 *     file), the run never starts: the record, if any, is removed and nothing runs,
 *     so no run exists without a record.
 *  2. Reserve: it writes RUN_DIR/.exit.json.tmp full of blanks, so that the outcome
 *     can be recorded in place even after the run has filled the disk.
 *  3. It becomes a child subreaper (PR_SET_CHILD_SUBREAPER): every descendant of the
 *     run, also one that calls setsid or double-forks, stays in its tree.
 *  4. It runs ARGV in its own process group (its memory limited, when the admission
 *     step of tether's resource slots, admit.py, asked: TETHER_RUN_CGROUP names a
 *     cgroup for it to join, else TETHER_RUN_RLIMIT_DATA a data-segment rlimit) (in CWD, stdout/stderr to RUN_DIR files
 *     when CAPTURE is "1"), enforces TIMEOUT seconds (TERM to every descendant,
 *     KILL after GRACE) and turns SIGTERM/SIGINT/SIGHUP into a cancel (same).
 *  5. When the command has ended, whatever of the run is left is stopped the same
 *     way (TERM, KILL after GRACE; at once after a cancel or timeout), and only
 *     when no descendant is left does it record the outcome in RUN_DIR/exit.json
 *     (the reserve file, filled in and renamed). So a recorded run has nothing
 *     still running.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define GATE_FD 3
#define RESERVE 4096

static volatile sig_atomic_t reason = 0; /* 0 running, 1 timeout, 2 cancelled */
static volatile sig_atomic_t escalated = 0;
static volatile sig_atomic_t settled = 0; /* the command has ended: cancel means hurry */
static volatile pid_t group = 0;
static double grace = 5.0;

static void arm(double seconds) {
    struct itimerval t = {{0, 0}, {0, 0}};
    if (seconds <= 0) seconds = 0.001;
    t.it_value.tv_sec = (time_t)seconds;
    t.it_value.tv_usec = (suseconds_t)((seconds - (double)(time_t)seconds) * 1e6);
    if (t.it_value.tv_sec == 0 && t.it_value.tv_usec == 0) t.it_value.tv_usec = 1000;
    setitimer(ITIMER_REAL, &t, NULL);
}

static void stop_group(int why) {
    if (reason == 0) reason = why;
    if (group > 0) kill(-group, SIGTERM);
    arm(grace);
}

static void on_alarm(int sig) {
    (void)sig;
    if (reason == 0 && !settled) {
        stop_group(1);
    } else if (!escalated) {
        escalated = 1;
        if (group > 0 && !settled) kill(-group, SIGKILL);
    }
}

static void on_cancel(int sig) {
    (void)sig;
    if (settled) escalated = 1;
    else if (reason == 0) stop_group(2);
}

/* The memory limit of the command (protocol item 4b): join the cgroup the admission
   step made (TETHER_RUN_CGROUP), else limit its data segment (TETHER_RUN_RLIMIT_DATA).
   Read and removed from the environment before the fork, applied in the child. */
static char run_cgroup[4096];
static unsigned long long run_rlimit = 0;

static void take_limits(void) {
    const char *cg = getenv("TETHER_RUN_CGROUP"), *lim = getenv("TETHER_RUN_RLIMIT_DATA");
    if (cg) snprintf(run_cgroup, sizeof run_cgroup, "%s", cg);
    if (lim) run_rlimit = strtoull(lim, NULL, 10);
    unsetenv("TETHER_RUN_CGROUP");
    unsetenv("TETHER_RUN_RLIMIT_DATA");
}

static void apply_limits(void) { /* in the child, before exec */
    int joined = 0;
    if (run_cgroup[0]) {
        char path[4200];
        snprintf(path, sizeof path, "%s/cgroup.procs", run_cgroup);
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd >= 0) { joined = write(fd, "0", 1) == 1; close(fd); }
    }
    if (!joined && run_rlimit > 0) {
        struct rlimit r = {(rlim_t)run_rlimit, (rlim_t)run_rlimit};
        setrlimit(RLIMIT_DATA, &r);
    }
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int open_log(const char *dir, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
}

struct proc { pid_t pid, ppid; char zombie, mine; };

/* Read every process's pid, parent and state from /proc; *count gets how many. */
static struct proc *list_procs(size_t *count) {
    size_t cap = 256, n = 0;
    struct proc *procs = malloc(cap * sizeof *procs);
    DIR *dir = opendir("/proc");
    struct dirent *entry;
    while (procs && dir && (entry = readdir(dir)) != NULL) {
        if (entry->d_name[0] < '1' || entry->d_name[0] > '9') continue;
        char path[300], buf[1024], state;
        int ppid;
        snprintf(path, sizeof path, "/proc/%s/stat", entry->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) continue;
        ssize_t len = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (len <= 0) continue;
        buf[len] = 0;
        char *end = strrchr(buf, ')'); /* field 2 (comm) may hold spaces and ')' */
        if (!end || sscanf(end + 2, "%c %d", &state, &ppid) != 2) continue;
        if (n == cap) {
            struct proc *more = realloc(procs, 2 * cap * sizeof *procs);
            if (!more) break;
            procs = more;
            cap *= 2;
        }
        procs[n++] = (struct proc){(pid_t)atoi(entry->d_name), (pid_t)ppid, state == 'Z', 0};
    }
    if (dir) closedir(dir);
    *count = n;
    return procs;
}

/* Send sig (0: none) to every live descendant of this process; return how many live.
   As a child subreaper we keep every descendant, also those that left the session. */
static int signal_descendants(int sig) {
    size_t n = 0;
    struct proc *procs = list_procs(&n);
    if (!procs) return 0;
    pid_t self = getpid();
    int changed = 1, count = 0;
    while (changed) { /* mark the tree; a child may be listed before its parent */
        changed = 0;
        for (size_t i = 0; i < n; i++) {
            if (procs[i].mine) continue;
            int joins = procs[i].ppid == self;
            for (size_t j = 0; !joins && j < n; j++)
                joins = procs[j].mine && procs[j].pid == procs[i].ppid;
            if (joins) { procs[i].mine = 1; changed = 1; }
        }
    }
    for (size_t i = 0; i < n; i++) {
        if (!procs[i].mine || procs[i].zombie) continue;
        if (kill(procs[i].pid, sig) == 0) count++;
    }
    free(procs);
    return count;
}

/* True while this process has any child, live or not yet reaped. A subreaper has no
   descendant at all when it has no child: an orphan is reparented to it before its
   dying parent can be reaped. One syscall, where finding descendants reads /proc. */
static int has_children(void) {
    siginfo_t info;
    memset(&info, 0, sizeof info);
    return !(waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) < 0 && errno == ECHILD);
}

static void reap_others(pid_t keep, int *status, int *have_status) {
    pid_t p;
    int st;
    while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
        if (p == keep) { *status = st; *have_status = 1; }
    }
}

static size_t json_string(char *out, size_t cap, const char *s) {
    size_t n = 0;
    if (n < cap) out[n++] = '"';
    for (; *s && n + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') { out[n++] = '\\'; out[n++] = (char)c; }
        else if (c < 0x20) n += (size_t)snprintf(out + n, cap - n, "\\u%04x", c);
        else out[n++] = (char)c;
    }
    if (n < cap) out[n++] = '"';
    return n;
}

static int disk_full(const char *dir) {
    struct statvfs s;
    if (statvfs(dir, &s) != 0) return 0;
    return s.f_bavail == 0 || (s.f_files > 0 && s.f_favail == 0);
}

static int record(const char *dir, int reserve, double started, int status, int exec_errno,
                  const char *what) {
    char tmp[4096], final[4096], out[RESERVE * 2];
    snprintf(tmp, sizeof tmp, "%s/.exit.json.tmp", dir);
    snprintf(final, sizeof final, "%s/exit.json", dir);
    const char *why = reason == 1 ? "timeout" : reason == 2 ? "cancelled" : "exited";
    if (exec_errno) why = "exec_failed";
    size_t n = (size_t)snprintf(out, sizeof out, "{\"reason\": \"%s\", \"started\": %.6f, "
                                "\"ended\": %.6f, ", why, started, now());
    if (exec_errno) {
        char msg[4400];
        if (exec_errno < 0)
            snprintf(msg, sizeof msg, "cannot enter working directory '%s': %s", what,
                     strerror(-exec_errno));
        else
            snprintf(msg, sizeof msg, "cannot execute '%s': %s", what, strerror(exec_errno));
        n += (size_t)snprintf(out + n, sizeof out - n,
                              "\"exit_code\": 127, \"signal\": null, \"error\": ");
        n += json_string(out + n, 1024, msg);
    } else if (WIFSIGNALED(status)) {
        n += (size_t)snprintf(out + n, sizeof out - n,
                              "\"exit_code\": %d, \"signal\": %d, \"error\": null",
                              -WTERMSIG(status), WTERMSIG(status));
    } else {
        n += (size_t)snprintf(out + n, sizeof out - n,
                              "\"exit_code\": %d, \"signal\": null, \"error\": null",
                              WEXITSTATUS(status));
    }
    n += (size_t)snprintf(out + n, sizeof out - n, ", \"disk_full\": %s, \"supervisor\": \"c\"}\n",
                          disk_full(dir) ? "true" : "false");
    if (reserve < 0) reserve = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (reserve < 0) return 1;
    /* In place over the reserved blocks: no allocation needed on a full disk. */
    if (pwrite(reserve, out, n, 0) != (ssize_t)n) { close(reserve); return 1; }
    if (ftruncate(reserve, (off_t)n) != 0) { /* blanks after the JSON are still JSON */ }
    if (close(reserve) != 0) return 1;
    return rename(tmp, final) == 0 ? 0 : 1;
}

static int make_reserve(const char *dir) {
    char tmp[4096], blanks[RESERVE];
    snprintf(tmp, sizeof tmp, "%s/.exit.json.tmp", dir);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    memset(blanks, ' ', sizeof blanks);
    /* fallocate: the blocks are the file's now (an fsync would do it too, but waits for
       the disk: milliseconds on every run). Where it is not supported, the written
       blanks hold their space as dirty pages until written back. */
    if (write(fd, blanks, sizeof blanks) != (ssize_t)sizeof blanks
        || (fallocate(fd, 0, 0, RESERVE) != 0 && errno != EOPNOTSUPP && errno != ENOSYS)) {
        close(fd);
        unlink(tmp);
        return -1;
    }
    return fd;
}

/* Protocol item 0: a session of our own, when tether asks for it. Called with every
   signal blocked; the ones a terminal sent (si_code SI_KERNEL) are taken and dropped,
   the ones a process sent (si_code <= 0: kill, sigqueue, tkill) are raised again. */
static void own_session(void) {
    const char *want = getenv("TETHER_SUPERVISOR_SETSID");
    int asked = want != NULL && strcmp(want, "1") == 0;
    unsetenv("TETHER_SUPERVISOR_SETSID");
    if (!asked || setsid() < 0) return;
    static const int terminal[] = {SIGINT, SIGHUP, SIGQUIT, SIGTSTP, SIGTTIN, SIGTTOU};
    sigset_t set;
    sigemptyset(&set);
    for (size_t i = 0; i < sizeof terminal / sizeof *terminal; i++) sigaddset(&set, terminal[i]);
    int again[sizeof terminal / sizeof *terminal], n = 0;
    struct timespec zero = {0, 0};
    siginfo_t info;
    int sig;
    while (n < (int)(sizeof again / sizeof *again) && (sig = sigtimedwait(&set, &info, &zero)) > 0) {
        if (info.si_code <= 0) again[n++] = sig;
    }
    for (int i = 0; i < n; i++) kill(getpid(), again[i]);
}

/* Wait for tether's go-ahead; false if the submitter died before the record was written. */
static int gate_open(const char *dir) {
    char go = 0;
    ssize_t n;
    do { n = read(GATE_FD, &go, 1); } while (n < 0 && errno == EINTR);
    close(GATE_FD);
    if (n == 1 && go == 'g') return 1;
    if (n < 0 && errno == EBADF) return 1; /* started by hand, without a gate */
    char path[4096];
    snprintf(path, sizeof path, "%s/handle.json", dir);
    unlink(path);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s RUN_DIR CWD TIMEOUT GRACE CAPTURE ARGV...\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1], *cwd = argv[2];
    double timeout = atof(argv[3]);
    grace = atof(argv[4]);
    int capture = strcmp(argv[5], "1") == 0;

    /* tether starts us with TERM/INT/HUP blocked so that an early cancel waits for
       the handlers; everything stays blocked except while waiting in ppoll. */
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    sigprocmask(SIG_BLOCK, &all, NULL);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    sa.sa_handler = on_cancel;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    own_session();
    if (!gate_open(dir)) return 4;
    double started = now();
    int reserve = make_reserve(dir);
    if (prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0) { perror("tether-supervise: subreaper"); return 3; }

    int out = -1, err = -1;
    if (capture) {
        out = open_log(dir, "stdout");
        err = open_log(dir, "stderr");
        if (out < 0 || err < 0) { perror("tether-supervise: run folder"); return 3; }
    }
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0) { perror("tether-supervise: pipe"); return 3; }

    take_limits();
    /* vfork: no page tables to copy and no copy-on-write faults after (a tenth of a
       run's supervision, measured). We wait, suspended, until the child has exec'd or
       exited. The child only resets its handlers (before it unblocks anything: no
       handler of ours ever runs in it), makes syscalls and writes its own locals. */
    pid_t child = vfork();
    if (child < 0) { perror("tether-supervise: vfork"); return 3; }
    if (child == 0) {
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        sigaction(SIGALRM, &dfl, NULL);
        sigaction(SIGTERM, &dfl, NULL);
        sigaction(SIGINT, &dfl, NULL);
        sigaction(SIGHUP, &dfl, NULL);
        /* Python ignores these and exec keeps ignored signals: give the command the
           defaults, so `producer | head` ends the producer as in a shell. */
        sigaction(SIGPIPE, &dfl, NULL);
        sigaction(SIGXFSZ, &dfl, NULL);
        sigprocmask(SIG_SETMASK, &none, NULL);
        setpgid(0, 0);
        apply_limits();
        if (capture) { dup2(out, 1); dup2(err, 2); }
        int e = 0;
        if (chdir(cwd) != 0) e = -errno;
        else { execvp(argv[6], argv + 6); e = errno; }
        if (write(pipefd[1], &e, sizeof e) < 0) { /* nothing more to do */ }
        _exit(127);
    }
    setpgid(child, child);
    group = child;
    int pidfd = (int)syscall(SYS_pidfd_open, child, 0);
    if (timeout > 0) arm(timeout);
    close(pipefd[1]);
    if (out >= 0) close(out);
    if (err >= 0) close(err);

    int exec_errno = 0;
    ssize_t n;
    do { n = read(pipefd[0], &exec_errno, sizeof exec_errno); } while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof exec_errno) exec_errno = 0;
    close(pipefd[0]);

    /* While the command runs: act on cancels and the timeout (the handlers signal the
       group at once; here the rest of the tree, which may have left the group). */
    int status = 0, have_status = 0, termed = 0;
    struct timespec tick = {0, 50 * 1000 * 1000};
    struct pollfd wait_child = {pidfd, POLLIN, 0};
    while (pidfd >= 0) {
        if (reason && !termed) { signal_descendants(SIGTERM); termed = 1; }
        if (escalated) signal_descendants(SIGKILL);
        int r = ppoll(&wait_child, 1, escalated ? &tick : NULL, &none);
        if (r > 0) break;
        if (r < 0 && errno != EINTR) break;
    }
    if (pidfd < 0) { /* no pidfd (very old kernel): block in waitpid instead */
        while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
        have_status = 1;
    }
    settled = 1;

    /* The command has ended: stop what is left of the run (TERM, then KILL after the
       grace; KILL at once after a cancel or timeout), reaping as it goes. */
    if (reason) escalated = 1;
    arm(grace);
    int sent_term = 0;
    while (1) {
        reap_others(child, &status, &have_status);
        if (have_status && !has_children()) break; /* the usual end: nothing left */
        int live = escalated ? signal_descendants(SIGKILL)
                   : (sent_term ? signal_descendants(0) : signal_descendants(SIGTERM));
        sent_term = 1;
        if (live == 0 && have_status) break;
        ppoll(NULL, 0, &tick, &none);
    }
    sigprocmask(SIG_BLOCK, &all, NULL); /* the outcome is settled: no more signals */
    return record(dir, reserve, started, status, exec_errno, exec_errno < 0 ? cwd : argv[6]);
}
