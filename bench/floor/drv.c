/* Driver of bench/floor/run.sh: MODE (true, spawn, zygote) N SUPERVISOR DIR; prints the
 * CPU (self and children) per run. */
#include <spawn.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <sys/resource.h>
#include <time.h>
extern char **environ;
static double cpu(void){ struct rusage s,c; getrusage(RUSAGE_SELF,&s); getrusage(RUSAGE_CHILDREN,&c);
  return s.ru_utime.tv_sec+s.ru_stime.tv_sec+c.ru_utime.tv_sec+c.ru_stime.tv_sec+(s.ru_utime.tv_usec+s.ru_stime.tv_usec+c.ru_utime.tv_usec+c.ru_stime.tv_usec)/1e6; }
int main(int argc, char **argv){
  int n = atoi(argv[2]); const char *sup = argv[3], *dir = argv[4];
  double t0 = cpu();
  if (!strcmp(argv[1], "true")) { for (int i=0;i<n;i++){ pid_t p; char *av[]={"/bin/true",0}; posix_spawn(&p,"/bin/true",0,0,av,environ); waitpid(p,0,0);} }
  else if (!strcmp(argv[1], "spawn")) { for (int i=0;i<n;i++){ pid_t p; char *av[]={(char*)sup,(char*)dir,0}; posix_spawn(&p,sup,0,0,av,environ); waitpid(p,0,0);} }
  else { int in[2], out[2]; pipe(in); pipe(out); pid_t z=fork();
    if (!z){ dup2(in[0],0); dup2(out[1],1); close(in[1]); close(out[0]); execl(sup,sup,"zygote",dir,(char*)0); _exit(127);} 
    close(in[0]); close(out[1]);
    for (int i=0;i<n;i++){ pid_t p; write(in[1],"g",1); read(out[0],&p,sizeof p); read(out[0],&p,sizeof p);} 
    close(in[1]); waitpid(z,0,0); }
  double t1 = cpu();
  printf("%s: %.3f ms CPU/run\n", argv[1], (t1-t0)/n*1e3);
}
