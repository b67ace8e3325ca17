/*
 * freeze-thread - stops one thread of a process for a while, as a hang in
 * that thread would: the watchdog test freezes a worker's loop with it.
 * ptrace() stops a single thread (SIGSTOP would stop them all).
 *   freeze-thread PID THREAD_NAME MILLISECONDS
 * Exit 0 after thawing it, 1 when the thread is not found or cannot be
 * traced (needs root or ptrace rights over the process).
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>

static long find_thread(long pid, const char *name)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%ld/task", pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    struct dirent *e;
    long tid = -1;
    while (tid < 0 && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char comm[128], file[320];
        snprintf(file, sizeof(file), "/proc/%ld/task/%s/comm", pid, e->d_name);
        FILE *f = fopen(file, "r");
        if (f && fgets(comm, sizeof(comm), f)) {
            comm[strcspn(comm, "\n")] = '\0';
            if (strcmp(comm, name) == 0)
                tid = strtol(e->d_name, NULL, 10);
        }
        if (f)
            fclose(f);
    }
    closedir(d);
    return tid;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: freeze-thread PID THREAD_NAME MILLISECONDS\n");
        return 2;
    }
    long pid = strtol(argv[1], NULL, 10), ms = strtol(argv[3], NULL, 10);
    long tid = find_thread(pid, argv[2]);
    if (tid < 0) {
        fprintf(stderr, "freeze-thread: no thread %s in %ld\n", argv[2], pid);
        return 1;
    }
    if (ptrace(PTRACE_SEIZE, (pid_t)tid, NULL, NULL) != 0 ||
        ptrace(PTRACE_INTERRUPT, (pid_t)tid, NULL, NULL) != 0) {
        fprintf(stderr, "freeze-thread: cannot trace %ld: %s\n", tid, strerror(errno));
        return 1;
    }
    int status;
    waitpid((pid_t)tid, &status, __WALL);
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
    ptrace(PTRACE_DETACH, (pid_t)tid, NULL, NULL);
    return 0;
}
