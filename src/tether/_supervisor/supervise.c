/*
 * tether-supervise: the per-run supervisor of tether's local backend.
 *
 * Usage: tether-supervise RUN_DIR CWD TIMEOUT GRACE CAPTURE ARGV...
 *
 * Started by tether in a new session, it outlives the Python process that started
 * it. It runs ARGV in its own process group (in CWD, stdout/stderr to RUN_DIR
 * files when CAPTURE is "1"), enforces TIMEOUT seconds (TERM to the group, KILL
 * after GRACE), turns SIGTERM/SIGINT/SIGHUP into a cancel (same escalation), and
 * records the outcome in RUN_DIR/exit.json, written to a temp file then renamed.
 * The Python fallback (tether/_supervise.py) implements the same protocol.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t reason = 0; /* 0 running, 1 timeout, 2 cancelled */
static volatile sig_atomic_t escalated = 0;
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
    if (reason == 0) {
        stop_group(1);
    } else if (!escalated) {
        escalated = 1;
        if (group > 0) kill(-group, SIGKILL);
    }
}

static void on_cancel(int sig) {
    (void)sig;
    if (reason == 0) stop_group(2);
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

static void json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

static int record(const char *dir, double started, int status, int exec_errno, const char *what) {
    char tmp[4096], final[4096];
    snprintf(tmp, sizeof tmp, "%s/.exit.json.tmp", dir);
    snprintf(final, sizeof final, "%s/exit.json", dir);
    FILE *f = fopen(tmp, "w");
    if (!f) return 1;
    const char *why = reason == 1 ? "timeout" : reason == 2 ? "cancelled" : "exited";
    if (exec_errno) why = "exec_failed";
    fprintf(f, "{\"reason\": \"%s\", \"started\": %.6f, \"ended\": %.6f, ", why, started, now());
    if (exec_errno) {
        fprintf(f, "\"exit_code\": 127, \"signal\": null, \"error\": ");
        char msg[4400];
        if (exec_errno < 0)
            snprintf(msg, sizeof msg, "cannot enter working directory '%s': %s", what,
                     strerror(-exec_errno));
        else
            snprintf(msg, sizeof msg, "cannot execute '%s': %s", what, strerror(exec_errno));
        json_string(f, msg);
    } else if (WIFSIGNALED(status)) {
        fprintf(f, "\"exit_code\": %d, \"signal\": %d, \"error\": null", -WTERMSIG(status),
                WTERMSIG(status));
    } else {
        fprintf(f, "\"exit_code\": %d, \"signal\": null, \"error\": null", WEXITSTATUS(status));
    }
    fprintf(f, ", \"supervisor\": \"c\"}\n");
    if (fclose(f) != 0) return 1;
    return rename(tmp, final) == 0 ? 0 : 1;
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
    double started = now();

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    sa.sa_handler = on_cancel;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    int out = -1, err = -1;
    if (capture) {
        out = open_log(dir, "stdout");
        err = open_log(dir, "stderr");
        if (out < 0 || err < 0) { perror("tether-supervise: run folder"); return 3; }
    }
    int pipefd[2];
    if (pipe2(pipefd, O_CLOEXEC) != 0) { perror("tether-supervise: pipe"); return 3; }

    /* tether starts us with TERM/INT/HUP blocked so that an early cancel waits
       for the handlers; keep everything blocked until the group is known. */
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    sigprocmask(SIG_BLOCK, &all, NULL);
    pid_t child = fork();
    if (child < 0) { perror("tether-supervise: fork"); return 3; }
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
        if (capture) { dup2(out, 1); dup2(err, 2); }
        int e = 0;
        if (chdir(cwd) != 0) e = -errno;
        else { execvp(argv[6], argv + 6); e = errno; }
        if (write(pipefd[1], &e, sizeof e) < 0) { /* nothing more to do */ }
        _exit(127);
    }
    setpgid(child, child);
    group = child;
    if (timeout > 0) arm(timeout);
    sigprocmask(SIG_SETMASK, &none, NULL);
    close(pipefd[1]);
    if (out >= 0) close(out);
    if (err >= 0) close(err);

    int exec_errno = 0;
    ssize_t n;
    do { n = read(pipefd[0], &exec_errno, sizeof exec_errno); } while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof exec_errno) exec_errno = 0;
    close(pipefd[0]);

    /* Observe the exit without reaping, so the group id cannot be reused while we
       clear out whatever the run left behind. */
    siginfo_t info;
    while (waitid(P_PID, (id_t)child, &info, WEXITED | WNOWAIT) != 0 && errno == EINTR) {}
    kill(-child, reason ? SIGKILL : SIGTERM);
    int status = 0;
    while (waitpid(child, &status, 0) < 0 && errno == EINTR) {}
    sigprocmask(SIG_BLOCK, &all, NULL); /* the outcome is settled: no more signals */
    return record(dir, started, status, exec_errno, exec_errno < 0 ? cwd : argv[6]);
}
