/*
 * test_crash.c - host/crash.c: the crash journal. A child process arms the
 * journal, marks itself as running an overlay's hook (as the door does)
 * and dies of a fatal signal; the parent checks how it died and what
 * fh_crash_collect reads back. A signal outside plugin code (no mark, a
 * mark left, another thread) writes nothing but still kills. Torn and
 * foreign blocks are skipped; fh_crash_clear empties the journal.
 *
 * The children reset the fatal signals to their defaults before arming
 * (cmocka installs its own handlers around each test, and the journal
 * hands the signal to whatever it replaced), and never dump core. The
 * parent never arms, except in the arm/disarm test, which disarms again.
 */
#include "crash.h"

#include "door.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <cmocka.h>

#include "test_fs.h"

#define SHA_A "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

typedef struct fixture {
    char dir[64]; /* mkdtemp: the state folder */
    char journal[PATH_MAX];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->dir, sizeof(f->dir), "/tmp/fh_crash_XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    xsnprintf(f->journal, sizeof(f->journal), "%s/" FH_CRASH_JOURNAL, f->dir);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    DIR *d = opendir(f->dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            char p[PATH_MAX];
            xsnprintf(p, sizeof(p), "%s/%s", f->dir, de->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(f->dir);
    free(f);
    return 0;
}

/* ---- the dying child --------------------------------------------------- */

typedef enum how {
    HOW_MARKED,      /* fh_crash_enter(call), then the signal */
    HOW_UNMARKED,    /* no mark at all */
    HOW_LEFT,        /* enter, then leave, then the signal */
    HOW_NESTED,      /* enter(call), enter(inner), leave(call's mark): call is marked */
    HOW_OTHER_THREAD /* the main thread is marked, another thread gets the signal */
} how;

static const int fatal[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS};

static void *raise_in_thread(void *arg)
{
    raise(*(const int *)arg); /* raise() signals the calling thread */
    return NULL;
}

static void die(int signo)
{
    if (signo == SIGSEGV) {
        /* A real fault, like a plugin's: a store to a page with no
         * access. Not through NULL: UBSan would report that and exit
         * before the store. Volatile, or the compiler may drop a store
         * nobody reads before _exit. */
        void *page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (page == MAP_FAILED)
            _exit(7);
        volatile int *volatile nowhere = page;
        *nowhere = 1;
    } else {
        raise(signo);
    }
}

/* Runs in the child; returns only if the child survived. */
static void child_body(const char *dir, const fh_hook_call *call, int signo, how h)
{
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
    for (size_t i = 0; i < sizeof(fatal) / sizeof(fatal[0]); i++)
        signal(fatal[i], SIG_DFL);
    char err[512];
    if (fh_crash_arm(dir, err, sizeof(err)) != 0)
        _exit(3);
    switch (h) {
    case HOW_MARKED:
        if (fh_crash_enter(call) != NULL)
            _exit(5); /* a fresh thread has no mark */
        break;
    case HOW_UNMARKED:
        break;
    case HOW_LEFT: {
        const fh_hook_call *prev = fh_crash_enter(call);
        fh_crash_leave(prev);
        break;
    }
    case HOW_NESTED: {
        static fh_hook_call inner = {.kind = FH_HOOK_DLCLOSE, .who = "inner"};
        const fh_hook_call *outer = fh_crash_enter(call);
        const fh_hook_call *prev = fh_crash_enter(&inner);
        if (prev != call || outer != NULL)
            _exit(5);
        fh_crash_leave(prev); /* back to call's mark */
        break;
    }
    case HOW_OTHER_THREAD: {
        fh_crash_enter(call);
        pthread_t t;
        static int sig;
        sig = signo;
        if (pthread_create(&t, NULL, raise_in_thread, &sig) != 0)
            _exit(6);
        pthread_join(t, NULL);
        _exit(4);
    }
    }
    die(signo);
}

/* Forks a child that dies as `h` says; returns its wait status. */
static int crash_child(const char *dir, const fh_hook_call *call, int signo, how h)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        child_body(dir, call, signo, h);
        _exit(4); /* survived the signal */
    }
    int status;
    pid_t w;
    while ((w = waitpid(pid, &status, 0)) < 0 && errno == EINTR)
        ;
    assert_int_equal(w, pid);
    return status;
}

static void assert_killed_by(int status, int signo)
{
    if (WIFEXITED(status))
        fail_msg("the child exited with %d instead of dying of %s", WEXITSTATUS(status),
                 fh_crash_signal_name(signo));
    assert_true(WIFSIGNALED(status));
    if (WTERMSIG(status) != signo)
        fail_msg("the child died of signal %d, not %d (%s)", WTERMSIG(status), signo,
                 fh_crash_signal_name(signo));
}

static fh_hook_call make_call(fh_hook_kind kind, const char *who, const char *version,
                              const char *sha)
{
    fh_hook_call c;
    memset(&c, 0, sizeof(c));
    c.kind = kind;
    snprintf(c.who, sizeof(c.who), "%s", who);
    c.version = version;
    c.sha256 = sha;
    return c;
}

static off_t file_size(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_size;
}

static void append_bytes(const char *path, int byte, size_t n)
{
    int fd = open(path, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    char buf[1024];
    assert_true(n <= sizeof(buf));
    memset(buf, byte, n);
    assert_int_equal(write(fd, buf, n), (ssize_t)n);
    close(fd);
}

/* ---- tests ------------------------------------------------------------- */

static void test_no_journal(void **state)
{
    fixture *f = *state;
    fh_crash_record *recs = (fh_crash_record *)f; /* must be reset */
    assert_int_equal(fh_crash_collect(f->dir, &recs), 0);
    assert_null(recs);
    fh_crash_clear(f->dir); /* nothing to clear: no file made either */
    assert_int_equal(access(f->journal, F_OK), -1);
    /* A folder that does not exist is the same: nothing. */
    char missing[PATH_MAX];
    xsnprintf(missing, sizeof(missing), "%s/nope", f->dir);
    assert_int_equal(fh_crash_collect(missing, &recs), 0);
    assert_null(recs);
    /* An empty journal (armed, never crashed) too. */
    int fd = open(f->journal, O_WRONLY | O_CREAT, 0600);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(fh_crash_collect(f->dir, &recs), 0);
    assert_null(recs);
}

static void test_crash_in_plugin_is_recorded(void **state)
{
    fixture *f = *state;
    fh_hook_call c = make_call(FH_HOOK_APPLY, "crasher", "1.2.3", SHA_A);
    time_t t0 = time(NULL);
    assert_killed_by(crash_child(f->dir, &c, SIGSEGV, HOW_MARKED), SIGSEGV);
    time_t t1 = time(NULL);

    struct stat st;
    assert_int_equal(stat(f->journal, &st), 0);
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_int_equal(st.st_size, 512);

    fh_crash_record *recs = NULL;
    assert_int_equal(fh_crash_collect(f->dir, &recs), 1);
    assert_non_null(recs);
    assert_string_equal(recs[0].who, "crasher");
    assert_string_equal(recs[0].version, "1.2.3");
    assert_string_equal(recs[0].sha256, SHA_A);
    assert_string_equal(recs[0].hook, fh_hook_kind_name(FH_HOOK_APPLY));
    assert_string_equal(recs[0].hook, "apply()");
    assert_int_equal(recs[0].signo, SIGSEGV);
    assert_true(recs[0].when >= (int64_t)t0 - 1 && recs[0].when <= (int64_t)t1 + 1);
    free(recs);
    /* Collecting does not consume. */
    assert_int_equal(fh_crash_collect(f->dir, &recs), 1);
    free(recs);
}

static void test_crash_outside_plugin_writes_nothing(void **state)
{
    fixture *f = *state;
    fh_hook_call c = make_call(FH_HOOK_APPLY, "innocent", "1.0.0", SHA_A);
    /* No mark: our own crash. */
    assert_killed_by(crash_child(f->dir, &c, SIGSEGV, HOW_UNMARKED), SIGSEGV);
    /* Marked, then left: back in host code. */
    assert_killed_by(crash_child(f->dir, &c, SIGABRT, HOW_LEFT), SIGABRT);
    /* Another thread than the one marked (the mark is per thread). */
    assert_killed_by(crash_child(f->dir, &c, SIGSEGV, HOW_OTHER_THREAD), SIGSEGV);
    assert_int_equal(access(f->journal, F_OK), 0); /* armed: it exists */
    assert_int_equal(file_size(f->journal), 0);
    fh_crash_record *recs = NULL;
    assert_int_equal(fh_crash_collect(f->dir, &recs), 0);
    assert_null(recs);
}

static void test_nested_marks(void **state)
{
    fixture *f = *state;
    fh_hook_call c = make_call(FH_HOOK_EVALUATE, "outer", "2.0.0", SHA_A);
    assert_killed_by(crash_child(f->dir, &c, SIGFPE, HOW_NESTED), SIGFPE);
    fh_crash_record *recs = NULL;
    assert_int_equal(fh_crash_collect(f->dir, &recs), 1);
    assert_string_equal(recs[0].who, "outer");
    assert_string_equal(recs[0].hook, fh_hook_kind_name(FH_HOOK_EVALUATE));
    assert_int_equal(recs[0].signo, SIGFPE);
    free(recs);
}

/* Several crashes append; a foreign block is skipped, a torn tail too. */
static void test_several_records_torn_and_foreign(void **state)
{
    fixture *f = *state;
    fh_hook_call a = make_call(FH_HOOK_APPLY, "alpha", "1.0.0", SHA_A);
    /* Before the plugin is identified: a file name, no version or hash. */
    fh_hook_call b = make_call(FH_HOOK_DLOPEN, "beta.so", NULL, NULL);
    fh_hook_call c = make_call(FH_HOOK_INIT, "gamma", "0.1.0-rc.1", SHA_A);
    fh_hook_call d = make_call(FH_HOOK_MATCH, "delta", "3.0.0", SHA_A);
    assert_killed_by(crash_child(f->dir, &a, SIGSEGV, HOW_MARKED), SIGSEGV);
    assert_killed_by(crash_child(f->dir, &b, SIGABRT, HOW_MARKED), SIGABRT);
    append_bytes(f->journal, 'x', 512); /* a whole block without the magic */
    assert_killed_by(crash_child(f->dir, &c, SIGBUS, HOW_MARKED), SIGBUS);
    assert_killed_by(crash_child(f->dir, &d, SIGILL, HOW_MARKED), SIGILL);
    append_bytes(f->journal, 0x52, 100); /* a torn last record */
    assert_int_equal(file_size(f->journal), 5 * 512 + 100);

    fh_crash_record *recs = NULL;
    assert_int_equal(fh_crash_collect(f->dir, &recs), 4);
    assert_string_equal(recs[0].who, "alpha");
    assert_int_equal(recs[0].signo, SIGSEGV);
    assert_string_equal(recs[0].hook, "apply()");
    assert_string_equal(recs[1].who, "beta.so");
    assert_string_equal(recs[1].version, "");
    assert_string_equal(recs[1].sha256, "");
    assert_string_equal(recs[1].hook, fh_hook_kind_name(FH_HOOK_DLOPEN));
    assert_int_equal(recs[1].signo, SIGABRT);
    assert_string_equal(recs[2].who, "gamma");
    assert_string_equal(recs[2].version, "0.1.0-rc.1");
    assert_string_equal(recs[2].hook, fh_hook_kind_name(FH_HOOK_INIT));
    assert_int_equal(recs[2].signo, SIGBUS);
    assert_string_equal(recs[3].who, "delta");
    assert_string_equal(recs[3].hook, fh_hook_kind_name(FH_HOOK_MATCH));
    assert_int_equal(recs[3].signo, SIGILL);
    free(recs);
}

/* A name and version at their limits are kept whole and terminated. */
static void test_longest_fields(void **state)
{
    fixture *f = *state;
    char name[FUSION_NAME_MAX + 1], version[FUSION_VERSION_MAX + 1];
    memset(name, 'n', FUSION_NAME_MAX);
    name[FUSION_NAME_MAX] = '\0';
    memset(version, '9', FUSION_VERSION_MAX);
    version[FUSION_VERSION_MAX] = '\0';
    fh_hook_call c = make_call(FH_HOOK_FINI, name, version, SHA_A);
    assert_killed_by(crash_child(f->dir, &c, SIGSYS, HOW_MARKED), SIGSYS);
    fh_crash_record *recs = NULL;
    assert_int_equal(fh_crash_collect(f->dir, &recs), 1);
    assert_string_equal(recs[0].who, name);
    assert_string_equal(recs[0].version, version);
    assert_string_equal(recs[0].hook, fh_hook_kind_name(FH_HOOK_FINI));
    assert_int_equal(recs[0].signo, SIGSYS);
    free(recs);
}

static void test_clear(void **state)
{
    fixture *f = *state;
    fh_hook_call c = make_call(FH_HOOK_APPLY, "alpha", "1.0.0", SHA_A);
    assert_killed_by(crash_child(f->dir, &c, SIGSEGV, HOW_MARKED), SIGSEGV);
    assert_killed_by(crash_child(f->dir, &c, SIGSEGV, HOW_MARKED), SIGSEGV);
    fh_crash_record *recs = NULL;
    assert_int_equal(fh_crash_collect(f->dir, &recs), 2);
    free(recs);
    fh_crash_clear(f->dir);
    assert_int_equal(file_size(f->journal), 0);
    assert_int_equal(fh_crash_collect(f->dir, &recs), 0);
    assert_null(recs);
    /* The next run appends to the emptied journal as before. */
    fh_hook_call d = make_call(FH_HOOK_APPLY, "delta", "1.0.0", SHA_A);
    assert_killed_by(crash_child(f->dir, &d, SIGSEGV, HOW_MARKED), SIGSEGV);
    assert_int_equal(fh_crash_collect(f->dir, &recs), 1);
    assert_string_equal(recs[0].who, "delta");
    free(recs);
}

static void test_signal_names(void **state)
{
    (void)state;
    assert_string_equal(fh_crash_signal_name(SIGSEGV), "SIGSEGV");
    assert_string_equal(fh_crash_signal_name(SIGBUS), "SIGBUS");
    assert_string_equal(fh_crash_signal_name(SIGILL), "SIGILL");
    assert_string_equal(fh_crash_signal_name(SIGFPE), "SIGFPE");
    assert_string_equal(fh_crash_signal_name(SIGABRT), "SIGABRT");
    assert_string_equal(fh_crash_signal_name(SIGSYS), "SIGSYS");
    assert_non_null(fh_crash_signal_name(SIGTERM));
    assert_non_null(fh_crash_signal_name(0));
    assert_non_null(fh_crash_signal_name(-1));
    assert_string_not_equal(fh_crash_signal_name(SIGTERM), "SIGSEGV");
}

static void same_handler(int signo, const struct sigaction *want)
{
    struct sigaction now;
    assert_int_equal(sigaction(signo, NULL, &now), 0);
    if ((now.sa_flags & SA_SIGINFO) != (want->sa_flags & SA_SIGINFO))
        fail_msg("signal %d: SA_SIGINFO differs after disarm", signo);
    if (now.sa_flags & SA_SIGINFO)
        assert_ptr_equal((void *)now.sa_sigaction, (void *)want->sa_sigaction);
    else
        assert_ptr_equal((void *)now.sa_handler, (void *)want->sa_handler);
}

static void test_arm_disarm_and_errors(void **state)
{
    fixture *f = *state;
    char err[512] = "";
    /* A folder that does not exist: -1 and a message naming the journal. */
    char missing[PATH_MAX];
    xsnprintf(missing, sizeof(missing), "%s/nope", f->dir);
    assert_int_equal(fh_crash_arm(missing, err, sizeof(err)), -1);
    assert_non_null(strstr(err, missing));
    assert_non_null(strstr(err, FH_CRASH_JOURNAL));
    /* A journal that is a symlink is not followed. */
    char target[PATH_MAX];
    xsnprintf(target, sizeof(target), "%s/elsewhere", f->dir);
    assert_int_equal(symlink(target, f->journal), 0);
    err[0] = '\0';
    assert_int_equal(fh_crash_arm(f->dir, err, sizeof(err)), -1);
    assert_true(err[0] != '\0');
    assert_int_equal(access(target, F_OK), -1);
    assert_int_equal(unlink(f->journal), 0);
    fh_crash_disarm(); /* never armed: nothing to do */

    /* Armed: every fatal signal is ours; disarmed: back as they were. */
    struct sigaction before[sizeof(fatal) / sizeof(fatal[0])];
    for (size_t i = 0; i < sizeof(fatal) / sizeof(fatal[0]); i++)
        assert_int_equal(sigaction(fatal[i], NULL, &before[i]), 0);
    assert_int_equal(fh_crash_arm(f->dir, err, sizeof(err)), 0);
    for (size_t i = 0; i < sizeof(fatal) / sizeof(fatal[0]); i++) {
        struct sigaction now;
        assert_int_equal(sigaction(fatal[i], NULL, &now), 0);
        assert_true(now.sa_handler != SIG_DFL && now.sa_handler != SIG_IGN);
        assert_ptr_not_equal((void *)now.sa_handler, (void *)before[i].sa_handler);
    }
    struct stat st;
    assert_int_equal(lstat(f->journal, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0600);
    fh_crash_disarm();
    for (size_t i = 0; i < sizeof(fatal) / sizeof(fatal[0]); i++)
        same_handler(fatal[i], &before[i]);
    fh_crash_disarm(); /* twice is harmless */
    for (size_t i = 0; i < sizeof(fatal) / sizeof(fatal[0]); i++)
        same_handler(fatal[i], &before[i]);
    assert_int_equal(file_size(f->journal), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_no_journal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_in_plugin_is_recorded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_outside_plugin_writes_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_nested_marks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_several_records_torn_and_foreign, setup, teardown),
        cmocka_unit_test_setup_teardown(test_longest_fields, setup, teardown),
        cmocka_unit_test_setup_teardown(test_clear, setup, teardown),
        cmocka_unit_test(test_signal_names),
        cmocka_unit_test_setup_teardown(test_arm_disarm_and_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
