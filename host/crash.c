/*
 * crash.c - see crash.h.
 *
 * On disk, a record is a fixed 512-byte block (the struct below, padded)
 * starting with a magic: a torn write at the end of the file is skipped.
 */
#include "crash.h"

#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define REC_MAGIC 0x46484352u /* "FHCR" */
#define REC_SIZE  512

typedef struct disk_record {
    uint32_t magic;
    int32_t signo;
    int64_t when;
    char who[FUSION_NAME_MAX + 1];
    char version[FUSION_VERSION_MAX + 1];
    char sha256[65];
    char hook[16];
} disk_record;

_Static_assert(sizeof(disk_record) <= REC_SIZE, "a crash record must fit its block");

static const int fatal_signals[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS};
#define NSIG_FATAL (sizeof(fatal_signals) / sizeof(fatal_signals[0]))

/* Set once by fh_crash_arm before any thread starts; read by the handler. */
static int journal_fd = -1;
static struct sigaction replaced[NSIG_FATAL];
static _Thread_local const fh_hook_call *running;

const char *fh_crash_signal_name(int signo)
{
    switch (signo) {
    case SIGSEGV:
        return "SIGSEGV";
    case SIGBUS:
        return "SIGBUS";
    case SIGILL:
        return "SIGILL";
    case SIGFPE:
        return "SIGFPE";
    case SIGABRT:
        return "SIGABRT";
    case SIGSYS:
        return "SIGSYS";
    default:
        return "a fatal signal";
    }
}

/* ---- alternate signal stacks ------------------------------------------------- */

/* A hook that recurses for ever overflows its thread's stack; the handler
 * then needs a stack of its own to write the record. */
#define ALT_STACK_SIZE (64 * 1024)
static pthread_key_t alt_key;
static pthread_once_t alt_once = PTHREAD_ONCE_INIT;
static bool alt_key_ok;

static void alt_free(void *stack)
{
    stack_t off = {.ss_flags = SS_DISABLE};
    sigaltstack(&off, NULL);
    munmap(stack, ALT_STACK_SIZE);
}

static void alt_make_key(void)
{
    alt_key_ok = pthread_key_create(&alt_key, alt_free) == 0;
}

void fh_crash_thread_init(void)
{
    pthread_once(&alt_once, alt_make_key);
    stack_t cur;
    /* One a sanitizer runtime set up already serves as well. */
    if (!alt_key_ok || sigaltstack(NULL, &cur) != 0 || !(cur.ss_flags & SS_DISABLE))
        return;
    void *p =
        mmap(NULL, ALT_STACK_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return;
    stack_t ss = {.ss_sp = p, .ss_size = ALT_STACK_SIZE};
    if (sigaltstack(&ss, NULL) != 0 || pthread_setspecific(alt_key, p) != 0) {
        stack_t off = {.ss_flags = SS_DISABLE};
        sigaltstack(&off, NULL);
        munmap(p, ALT_STACK_SIZE);
    }
}

const fh_hook_call *fh_crash_enter(const fh_hook_call *c)
{
    const fh_hook_call *prev = running;
    running = c;
    return prev;
}

void fh_crash_leave(const fh_hook_call *prev)
{
    running = prev;
}

/* strlcpy without the library: the handler may not call it. */
static void copy_str(char *dst, const char *src, size_t size)
{
    size_t i = 0;
    for (; src && i + 1 < size && src[i]; i++)
        dst[i] = src[i];
    dst[i] = '\0';
}

static void put_stderr(const char *s)
{
    size_t n = 0;
    while (s[n])
        n++;
    ssize_t w = write(STDERR_FILENO, s, n);
    (void)w;
}

static void on_fatal(int signo)
{
    int saved = errno;
    const fh_hook_call *c = running;
    /* One record per death: the first fatal signal is the cause; what a
     * chained handler does next (a sanitizer's abort()) is not. */
    static atomic_flag fired = ATOMIC_FLAG_INIT;
    if (c && journal_fd >= 0 && !atomic_flag_test_and_set(&fired)) {
        char block[REC_SIZE];
        for (size_t i = 0; i < sizeof(block); i++)
            block[i] = 0;
        disk_record *r = (disk_record *)(void *)block;
        r->magic = REC_MAGIC;
        r->signo = signo;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        r->when = ts.tv_sec;
        copy_str(r->who, c->who, sizeof(r->who));
        copy_str(r->version, c->version, sizeof(r->version));
        copy_str(r->sha256, c->sha256, sizeof(r->sha256));
        copy_str(r->hook, fh_hook_kind_name(c->kind), sizeof(r->hook));
        ssize_t w = write(journal_fd, block, sizeof(block));
        (void)w;
        put_stderr("fusion-host: fatal signal in overlay ");
        put_stderr(r->who);
        put_stderr(" ");
        put_stderr(r->hook);
        put_stderr("; it will be quarantined at the next start\n");
    }
    /* Whatever handled it before us (the default: die, with a core) gets
     * it next; SA_NODEFER lets the raise through at once. */
    for (size_t i = 0; i < NSIG_FATAL; i++)
        sigaction(fatal_signals[i], &replaced[i], NULL);
    raise(signo);
    errno = saved;
}

int fh_crash_arm(const char *state_dir, char *err, size_t errlen)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/" FH_CRASH_JOURNAL, state_dir);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen,
                 "cannot open %s: %s; an overlay that crashes the daemon will not be quarantined",
                 path, strerror(errno));
        return -1;
    }
    journal_fd = fd;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_fatal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_NODEFER | SA_ONSTACK;
    for (size_t i = 0; i < NSIG_FATAL; i++)
        sigaction(fatal_signals[i], &sa, &replaced[i]);
    return 0;
}

void fh_crash_disarm(void)
{
    if (journal_fd < 0)
        return;
    for (size_t i = 0; i < NSIG_FATAL; i++)
        sigaction(fatal_signals[i], &replaced[i], NULL);
    close(journal_fd);
    journal_fd = -1;
}

size_t fh_crash_collect(const char *state_dir, fh_crash_record **out)
{
    *out = NULL;
    char path[4200];
    snprintf(path, sizeof(path), "%s/" FH_CRASH_JOURNAL, state_dir);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return 0;
    fh_crash_record *recs = NULL;
    size_t n = 0, cap = 0;
    char block[REC_SIZE];
    for (;;) {
        ssize_t got = read(fd, block, sizeof(block));
        if (got < 0 && errno == EINTR)
            continue;
        if (got != (ssize_t)sizeof(block))
            break; /* the end, or a torn last record */
        disk_record d;
        memcpy(&d, block, sizeof(d));
        if (d.magic != REC_MAGIC || n >= 1000)
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 4;
            fh_crash_record *g = realloc(recs, ncap * sizeof(*g));
            if (!g)
                break;
            recs = g;
            cap = ncap;
        }
        fh_crash_record *r = &recs[n++];
        copy_str(r->who, d.who, sizeof(r->who));
        copy_str(r->version, d.version, sizeof(r->version));
        copy_str(r->sha256, d.sha256, sizeof(r->sha256));
        copy_str(r->hook, d.hook, sizeof(r->hook));
        r->signo = d.signo;
        r->when = d.when;
    }
    close(fd);
    if (n == 0) {
        free(recs);
        return 0;
    }
    *out = recs;
    return n;
}

void fh_crash_clear(const char *state_dir)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/" FH_CRASH_JOURNAL, state_dir);
    if (truncate(path, 0) != 0 && errno != ENOENT)
        fprintf(stderr, "fusion-host: cannot empty %s: %s\n", path, strerror(errno));
}
