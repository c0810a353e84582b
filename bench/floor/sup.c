/* A minimal run supervisor (bench/floor/run.sh): own session, vfork /bin/true, wait,
 * write exit.<pid>.json through a temporary file. "zygote DIR" serves one fork per
 * byte read on stdin, answering the pid twice (forked, done). */
#include <unistd.h>
#include <stdio.h>
#include <fcntl.h>
#include <sys/wait.h>
#include <string.h>
#include <stdlib.h>
extern char **environ;
static void run(const char *dir) {
    setsid();
    char *av[] = {"/bin/true", NULL};
    pid_t c = vfork();
    if (c == 0) { execve("/bin/true", av, environ); _exit(127); }
    int st; waitpid(c, &st, 0);
    char tmp[256], fin[256];
    snprintf(tmp, sizeof tmp, "%s/.exit.tmp.%d", dir, getpid());
    snprintf(fin, sizeof fin, "%s/exit.%d.json", dir, getpid());
    int fd = open(tmp, O_WRONLY|O_CREAT|O_TRUNC, 0600);
    dprintf(fd, "{\"exit_code\": %d}\n", WEXITSTATUS(st)); close(fd);
    rename(tmp, fin);
}
int main(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[1], "zygote") == 0) {
        char b;
        while (read(0, &b, 1) == 1) {
            pid_t p = fork();
            if (p == 0) { run(argv[2]); _exit(0); }
            write(1, &p, sizeof p);
            int st; waitpid(p, &st, 0);
            write(1, &p, sizeof p);  /* done */
        }
        return 0;
    }
    run(argv[1]);
    return 0;
}
