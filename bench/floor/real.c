/* Driver of bench/floor/real.sh: SUPERVISOR N DIR LABEL runs tether's real supervisor
 * (supervise.c, built) N times, one at a time, each on /bin/true in a fresh run folder
 * under DIR with its gate opened at once, and prints the CPU of the supervisor and the
 * command per run (RUSAGE_CHILDREN) and the wall time per run. */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

static double seconds(struct timeval t) { return t.tv_sec + t.tv_usec / 1e6; }

static void run_once(const char *supervisor, const char *dir) {
    int gate[2];
    if (mkdir(dir, 0700) != 0 || pipe(gate) != 0) { perror(dir); exit(1); }
    posix_spawn_file_actions_t files;
    posix_spawn_file_actions_init(&files);
    posix_spawn_file_actions_adddup2(&files, gate[0], 3);
    posix_spawn_file_actions_addclose(&files, gate[1]);
    char *argv[] = {(char *)supervisor, (char *)dir, (char *)dir, "0", "5", "1", "/bin/true", NULL};
    pid_t pid;
    if (posix_spawn(&pid, supervisor, &files, NULL, argv, environ) != 0) { perror(supervisor); exit(1); }
    posix_spawn_file_actions_destroy(&files);
    close(gate[0]);
    if (write(gate[1], "g", 1) != 1) { perror("gate"); exit(1); }
    close(gate[1]);
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "%s: supervisor ended with status %d\n", dir, status);
        exit(1);
    }
}

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: %s SUPERVISOR N DIR LABEL\n", argv[0]); return 2; }
    int runs = atoi(argv[2]);
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (int i = 0; i < runs; i++) {
        char dir[4096];
        snprintf(dir, sizeof dir, "%s/run%d", argv[3], i);
        run_once(argv[1], dir);
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    struct rusage children;
    getrusage(RUSAGE_CHILDREN, &children);
    double cpu = seconds(children.ru_utime) + seconds(children.ru_stime);
    double wall = (double)(end.tv_sec - start.tv_sec) + (end.tv_nsec - start.tv_nsec) / 1e9;
    printf("%-10s supervisor + /bin/true: %.3f ms CPU per run, %.3f ms wall per run\n", argv[4],
           cpu / runs * 1e3, wall / runs * 1e3);
    return 0;
}
