/* Driver of bench/floor/run.sh: MODE N SUPERVISOR DIR runs /bin/true N times, one at a
 * time, and prints the CPU (its own and its children's) per run. MODE is "true"
 * (posix_spawn /bin/true), "spawn" (posix_spawn SUPERVISOR DIR, which runs /bin/true)
 * or "zygote" (one "SUPERVISOR zygote DIR" forks a supervisor per request). */
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static double seconds(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }

static double cpu(void) {
    struct rusage self, children;
    getrusage(RUSAGE_SELF, &self);
    getrusage(RUSAGE_CHILDREN, &children);
    return seconds(self.ru_utime) + seconds(self.ru_stime) + seconds(children.ru_utime) +
           seconds(children.ru_stime);
}

static void spawn_and_wait(const char *path, char *const argv[]) {
    pid_t pid;
    if (posix_spawn(&pid, path, NULL, NULL, argv, environ) != 0) {
        perror(path);
        exit(1);
    }
    waitpid(pid, NULL, 0);
}

static void via_zygote(const char *sup, const char *dir, int n) {
    int in[2], out[2];
    if (pipe(in) != 0 || pipe(out) != 0) exit(1);
    pid_t zygote = fork();
    if (zygote == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[1]);
        close(out[0]);
        execl(sup, sup, "zygote", dir, (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    for (int i = 0; i < n; i++) {
        pid_t pid;
        if (write(in[1], "g", 1) != 1 || read(out[0], &pid, sizeof pid) != sizeof pid ||
            read(out[0], &pid, sizeof pid) != sizeof pid) {
            fprintf(stderr, "zygote: no answer\n");
            exit(1);
        }
    }
    close(in[1]);
    waitpid(zygote, NULL, 0);  /* its children's CPU is counted once it is reaped */
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s true|spawn|zygote N SUPERVISOR DIR\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1], *sup = argv[3], *dir = argv[4];
    int n = atoi(argv[2]);
    char *true_argv[] = {"/bin/true", NULL};
    char *sup_argv[] = {(char *)sup, (char *)dir, NULL};
    double before = cpu();
    for (int i = 0; i < n && strcmp(mode, "zygote") != 0; i++) {
        if (strcmp(mode, "true") == 0)
            spawn_and_wait("/bin/true", true_argv);
        else
            spawn_and_wait(sup, sup_argv);
    }
    if (strcmp(mode, "zygote") == 0) via_zygote(sup, dir, n);
    printf("%s: %.3f ms CPU/run\n", mode, (cpu() - before) / n * 1e3);
    return 0;
}
