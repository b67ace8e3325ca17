/*
 * test_registry.c - host/registry.c: generations, states, hot swap, drain
 * with a deadline, refusals in the list, and a concurrency run (routing
 * threads against a thread that disables, swaps and unloads).
 *
 * The test plugins (tests/plugins/, see tp_common.h) report init()/fini()
 * through host->log as "init NAME VERSION" / "fini NAME VERSION"; the small
 * host table below counts those lines, so a fini can be observed after its
 * library is gone, and checks that every plugin call is attributed to its
 * overlay in the log. Their apply() asks the host for "tp_block": when the
 * request is &block_req, that call blocks until the test lets it go, which
 * gives a hook that is still running while the test unloads its overlay.
 *
 * Threads: the tests start helper threads that only acquire, call hooks and
 * release; counters they share with the main thread are atomics, the block
 * handshake uses a mutex and condition variable.
 */
#include "registry.h"

#include "log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <cmocka.h>

#include "test_fs.h"

/* ---- the test's host table ------------------------------------------ */

enum { V_A1, V_A2, V_B, V_PINNED, V_COUNT };
static const char *const version_keys[V_COUNT] = {"good_a 1.0.0", "good_a 2.0.0", "good_b 1.0.0",
                                                  "pinned 1.0.0"};
static atomic_int inits[V_COUNT], finis[V_COUNT];
static atomic_int bad_fini, misattributed;

static void host_log(fusion_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void host_log(fusion_log_level level, const char *fmt, ...)
{
    (void)level;
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (strncmp(line, "bad fini", 8) == 0) {
        atomic_fetch_add(&bad_fini, 1);
        return;
    }
    bool is_init = strncmp(line, "init ", 5) == 0;
    bool is_fini = strncmp(line, "fini ", 5) == 0;
    if (!is_init && !is_fini)
        return;
    /* The host must have named the overlay whose hook is running. */
    const char *cur = fh_log_current_overlay();
    size_t nlen = strcspn(line + 5, " ");
    if (!cur || strlen(cur) != nlen || strncmp(cur, line + 5, nlen) != 0)
        atomic_fetch_add(&misattributed, 1);
    for (int i = 0; i < V_COUNT; i++)
        if (strcmp(line + 5, version_keys[i]) == 0)
            atomic_fetch_add(is_init ? &inits[i] : &finis[i], 1);
}

/* The blocking hook: apply() on &block_req waits here until released. */
static char block_req;
static pthread_mutex_t block_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t block_cv = PTHREAD_COND_INITIALIZER;
static bool block_entered, block_release;

static int host_get_number(const fusion_request *req, const char *field, double *out)
{
    (void)field;
    if (req == (const fusion_request *)&block_req) {
        pthread_mutex_lock(&block_mu);
        block_entered = true;
        pthread_cond_broadcast(&block_cv);
        while (!block_release)
            pthread_cond_wait(&block_cv, &block_mu);
        pthread_mutex_unlock(&block_mu);
    }
    *out = 0;
    return 0;
}

static const fusion_host_api test_host = {
    .size = sizeof(fusion_host_api),
    .abi_major = FUSION_ABI_MAJOR,
    .abi_minor = FUSION_ABI_MINOR,
    .log = host_log,
    .req_get_number = host_get_number,
};

/* ---- fixture --------------------------------------------------------- */

typedef struct fixture {
    char root[64];
    char plugins[PATH_MAX];
    char cache[PATH_MAX];
    char good_a[PATH_MAX], good_a_v2[PATH_MAX], good_b[PATH_MAX], bad_init[PATH_MAX];
    char pinned[PATH_MAX], bad_magic[PATH_MAX];
    fh_registry *reg;
} fixture;

/* inputs_for: records the call, may refuse, and checks that no registry
 * lock is held (fh_registry_get would deadlock under the write lock). */
static fixture *inputs_fixture;
static atomic_int inputs_calls;
static char inputs_refuse[FUSION_NAME_MAX + 1];

static int test_inputs(void *ud, const char *name, fh_overlay_inputs *in)
{
    fixture *f = ud;
    assert_ptr_equal(f, inputs_fixture);
    atomic_fetch_add(&inputs_calls, 1);
    fh_overlay_info info;
    (void)fh_registry_get(f->reg, name, &info);
    if (strcmp(name, inputs_refuse) == 0)
        return -1;
    in->config_json = "{\"k\": 1}";
    return 0;
}

static void stage(fixture *f, const char *name, char *path)
{
    char from[PATH_MAX];
    xsnprintf(from, sizeof(from), "%s/%s.so", FH_TEST_PLUGIN_DIR, name);
    xsnprintf(path, PATH_MAX, "%s/%s.so", f->plugins, name);
    copy_file(from, path, 0644);
}

static void reset_counters(void)
{
    for (int i = 0; i < V_COUNT; i++) {
        atomic_store(&inits[i], 0);
        atomic_store(&finis[i], 0);
    }
    atomic_store(&bad_fini, 0);
    atomic_store(&misattributed, 0);
    atomic_store(&inputs_calls, 0);
    inputs_refuse[0] = '\0';
    block_entered = false;
    block_release = false;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->root, sizeof(f->root), "/tmp/fh_registry_XXXXXX");
    assert_non_null(mkdtemp(f->root));
    assert_int_equal(chmod(f->root, 0755), 0);
    xsnprintf(f->plugins, sizeof(f->plugins), "%s/plugins", f->root);
    assert_int_equal(mkdir(f->plugins, 0755), 0);
    assert_int_equal(chmod(f->plugins, 0755), 0);
    xsnprintf(f->cache, sizeof(f->cache), "%s/cache", f->root);
    stage(f, "good_a", f->good_a);
    stage(f, "good_a_v2", f->good_a_v2);
    stage(f, "good_b", f->good_b);
    stage(f, "bad_init", f->bad_init);
    stage(f, "pinned", f->pinned);
    stage(f, "bad_magic", f->bad_magic);
    reset_counters();
    inputs_fixture = f;
    fh_registry_opts o = {
        .loader = {.cache_dir = f->cache, .daemon_uid = getuid()},
        .host_api = &test_host,
        .inputs_for = test_inputs,
        .inputs_ud = f,
    };
    f->reg = fh_registry_new(&o);
    assert_non_null(f->reg);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    if (f->reg)
        fh_registry_free(f->reg, 1000);
    assert_int_equal(atomic_load(&bad_fini), 0);
    assert_int_equal(atomic_load(&misattributed), 0);
    for (int i = 0; i < V_COUNT; i++)
        assert_int_equal(atomic_load(&inits[i]), atomic_load(&finis[i]));
    remove_tree(f->root);
    free(f);
    return 0;
}

/* How many of the private copies in the cache folder are mapped here. */
static int mapped_copies(const fixture *f)
{
    FILE *fp = fopen("/proc/self/maps", "r");
    assert_non_null(fp);
    char line[PATH_MAX + 128], last[PATH_MAX] = "";
    int n = 0;
    while (fgets(line, sizeof(line), fp)) {
        char *p = strstr(line, f->cache);
        if (!p)
            continue;
        p[strcspn(p, "\n")] = '\0';
        if (strcmp(p, last) != 0) { /* one library has several segments */
            n++;
            xsnprintf(last, sizeof(last), "%s", p);
        }
    }
    fclose(fp);
    return n;
}

static fh_load_err load(fixture *f, const char *path)
{
    char msg[1024];
    fh_load_err err = fh_registry_load(f->reg, path, msg, sizeof(msg), NULL);
    if (err != FH_LOAD_OK)
        print_message("load %s: %s: %s\n", path, fh_load_err_name(err), msg);
    return err;
}

/* ---- tests ----------------------------------------------------------- */

static void test_load_acquire_release(void **state)
{
    fixture *f = *state;
    char msg[512], name[FUSION_NAME_MAX + 1];
    assert_int_equal(fh_registry_load(f->reg, f->good_a, msg, sizeof(msg), name), FH_LOAD_OK);
    assert_string_equal(name, "good_a");
    assert_int_equal(atomic_load(&inits[V_A1]), 1);
    assert_int_equal(atomic_load(&inputs_calls), 1);
    assert_null(fh_log_current_overlay()); /* restored after init */

    fh_overlay_state st = FH_STATE_FAILED;
    fh_generation *g = fh_registry_acquire(f->reg, "good_a", &st);
    assert_non_null(g);
    assert_int_equal(st, FH_STATE_ENABLED);
    assert_string_equal(fh_generation_descriptor(g)->version, "1.0.0");
    assert_non_null(fh_generation_state(g));
    assert_true(fh_generation_match(g, NULL) > 0.09 && fh_generation_match(g, NULL) < 0.11);
    assert_int_equal(fh_generation_apply(g, NULL), 0);
    fusion_evaluation ev;
    memset(&ev, 0, sizeof(ev));
    assert_int_equal(fh_generation_evaluate(g, NULL, "ok", 2, &ev), 0);
    assert_int_equal(ev.rule_count, 1);
    assert_null(fh_log_current_overlay());

    fh_overlay_info info;
    assert_int_equal(fh_registry_get(f->reg, "good_a", &info), 0);
    assert_string_equal(info.name, "good_a");
    assert_string_equal(info.version, "1.0.0");
    assert_string_equal(info.path, f->good_a);
    assert_int_equal(info.abi_major, FUSION_ABI_MAJOR);
    assert_int_equal(info.state, FH_STATE_ENABLED);
    assert_int_equal(info.inflight, 1);
    assert_int_equal(info.draining, 0);
    fh_generation_release(g);
    assert_int_equal(fh_registry_get(f->reg, "good_a", &info), 0);
    assert_int_equal(info.inflight, 0);

    /* No match hook: the host scores 1.0. */
    assert_int_equal(load(f, f->good_b), FH_LOAD_OK);
    g = fh_registry_acquire(f->reg, "good_b", NULL);
    assert_non_null(g);
    assert_true(fh_generation_match(g, NULL) == 1.0);
    fh_generation_release(g);

    assert_null(fh_registry_acquire(f->reg, "nope", &st));
    assert_int_equal(st, FH_STATE_COUNT);
    assert_int_equal(fh_registry_get(f->reg, "nope", &info), -1);
}

static void test_disable_enable_quarantine(void **state)
{
    fixture *f = *state;
    assert_int_equal(load(f, f->good_a), FH_LOAD_OK);
    fh_overlay_state st;
    assert_int_equal(fh_registry_disable(f->reg, "good_a"), 0);
    assert_null(fh_registry_acquire(f->reg, "good_a", &st));
    assert_int_equal(st, FH_STATE_DISABLED);
    fh_overlay_info info;
    assert_int_equal(fh_registry_get(f->reg, "good_a", &info), 0);
    assert_int_equal(info.state, FH_STATE_DISABLED);
    assert_int_equal(fh_registry_enable(f->reg, "good_a"), 0);
    fh_generation *g = fh_registry_acquire(f->reg, "good_a", &st);
    assert_non_null(g);
    fh_generation_release(g);

    assert_int_equal(fh_registry_quarantine(f->reg, "good_a", "hook never returned"), 0);
    assert_null(fh_registry_acquire(f->reg, "good_a", &st));
    assert_int_equal(st, FH_STATE_QUARANTINED);
    assert_int_equal(fh_registry_get(f->reg, "good_a", &info), 0);
    assert_int_equal(info.state, FH_STATE_QUARANTINED);
    assert_string_equal(info.reason, "hook never returned");
    /* A swap keeps the operator's quarantine. */
    assert_int_equal(load(f, f->good_a_v2), FH_LOAD_OK);
    assert_null(fh_registry_acquire(f->reg, "good_a", &st));
    assert_int_equal(st, FH_STATE_QUARANTINED);
    assert_int_equal(fh_registry_enable(f->reg, "good_a"), 0);
    assert_int_equal(fh_registry_get(f->reg, "good_a", &info), 0);
    assert_int_equal(info.state, FH_STATE_ENABLED);
    assert_string_equal(info.reason, "");

    assert_int_equal(fh_registry_disable(f->reg, "nope"), -1);
    assert_int_equal(fh_registry_enable(f->reg, "nope"), -1);
    assert_int_equal(fh_registry_quarantine(f->reg, "nope", "x"), -1);
    assert_string_equal(fh_overlay_state_name(FH_STATE_DRAINING), "draining");
    assert_string_equal(fh_overlay_state_name(FH_STATE_COUNT), "unknown");
}

static void test_hot_swap(void **state)
{
    fixture *f = *state;
    assert_int_equal(load(f, f->good_a), FH_LOAD_OK);
    fh_generation *g1 = fh_registry_acquire(f->reg, "good_a", NULL);
    assert_non_null(g1);

    assert_int_equal(load(f, f->good_a_v2), FH_LOAD_OK);
    assert_int_equal(atomic_load(&inits[V_A2]), 1);
    fh_generation *g2 = fh_registry_acquire(f->reg, "good_a", NULL);
    assert_non_null(g2);
    assert_ptr_not_equal(g1, g2);
    /* New requests run v2; the request holding v1 keeps running v1. */
    assert_string_equal(fh_generation_descriptor(g2)->version, "2.0.0");
    assert_true(fh_generation_match(g2, NULL) > 0.19);
    assert_true(fh_generation_match(g1, NULL) > 0.09 && fh_generation_match(g1, NULL) < 0.11);
    assert_int_equal(fh_generation_apply(g1, NULL), 0);
    assert_int_equal(mapped_copies(f), 2);

    fh_overlay_info info;
    assert_int_equal(fh_registry_get(f->reg, "good_a", &info), 0);
    assert_string_equal(info.version, "2.0.0");
    assert_string_equal(info.path, f->good_a_v2);
    assert_int_equal(info.state, FH_STATE_ENABLED);
    assert_int_equal(info.inflight, 2);
    assert_int_equal(info.draining, 1);

    assert_int_equal(fh_registry_reap(f->reg), 1); /* v1 still held */
    assert_int_equal(atomic_load(&finis[V_A1]), 0);
    fh_generation_release(g2);
    fh_generation_release(g1);
    assert_int_equal(atomic_load(&finis[V_A1]), 0); /* release never finalises */
    assert_int_equal(fh_registry_reap(f->reg), 0);
    assert_int_equal(atomic_load(&finis[V_A1]), 1);
    assert_int_equal(atomic_load(&finis[V_A2]), 0);
    assert_int_equal(mapped_copies(f), 1);
    assert_int_equal(fh_registry_get(f->reg, "good_a", &info), 0);
    assert_int_equal(info.draining, 0);

    /* Swapping back with nothing in flight finalises the old one at once. */
    assert_int_equal(load(f, f->good_a), FH_LOAD_OK);
    assert_int_equal(atomic_load(&finis[V_A2]), 1);
    /* Same path, same version: a reload is a swap too. */
    assert_int_equal(load(f, f->good_a), FH_LOAD_OK);
    assert_int_equal(atomic_load(&inits[V_A1]), 3);
    assert_int_equal(atomic_load(&finis[V_A1]), 2);
    assert_int_equal(mapped_copies(f), 1);
}

typedef struct holder {
    fixture *f;
    int apply_rc;
} holder;

/* Acquires good_a and runs apply() on the blocking request. */
static void *hold_in_apply(void *arg)
{
    holder *h = arg;
    fh_generation *g = fh_registry_acquire(h->f->reg, "good_a", NULL);
    if (!g) { /* no cmocka asserts off the main thread */
        h->apply_rc = -1000;
        return NULL;
    }
    h->apply_rc = fh_generation_apply(g, (fusion_request *)&block_req);
    fh_generation_release(g);
    return NULL;
}

static void wait_entered(void)
{
    pthread_mutex_lock(&block_mu);
    while (!block_entered)
        pthread_cond_wait(&block_cv, &block_mu);
    pthread_mutex_unlock(&block_mu);
}

static void let_go(void)
{
    pthread_mutex_lock(&block_mu);
    block_release = true;
    pthread_cond_broadcast(&block_cv);
    pthread_mutex_unlock(&block_mu);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void test_unload_times_out_then_reap(void **state)
{
    fixture *f = *state;
    assert_int_equal(load(f, f->good_a), FH_LOAD_OK);
    holder h = {.f = f, .apply_rc = -1};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, hold_in_apply, &h), 0);
    wait_entered(); /* plugin code is running on t */

    double t0 = now_ms();
    assert_int_equal(fh_registry_unload(f->reg, "good_a", 100), 1);
    assert_true(now_ms() - t0 >= 90);
    fh_overlay_info info;
    assert_int_equal(fh_registry_get(f->reg, "good_a", &info), 0);
    assert_int_equal(info.state, FH_STATE_DRAINING);
    assert_int_equal(info.draining, 1);
    assert_int_equal(info.inflight, 1);
    assert_string_equal(info.version, "1.0.0");
    assert_int_equal(mapped_copies(f), 1); /* still mapped: code is running */
    assert_int_equal(atomic_load(&finis[V_A1]), 0);
    fh_overlay_state st;
    assert_null(fh_registry_acquire(f->reg, "good_a", &st));
    assert_int_equal(st, FH_STATE_DRAINING);
    assert_int_equal(fh_registry_enable(f->reg, "good_a"), -1);
    assert_int_equal(fh_registry_reap(f->reg), 1);

    fh_overlay_info *list = NULL;
    size_t n = fh_registry_list(f->reg, &list);
    assert_int_equal(n, 1);
    assert_int_equal(list[0].state, FH_STATE_DRAINING);
    free(list);

    let_go();
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(h.apply_rc, 0);
    assert_int_equal(atomic_load(&finis[V_A1]), 0);
    assert_int_equal(fh_registry_reap(f->reg), 0);
    assert_int_equal(atomic_load(&finis[V_A1]), 1);
    assert_int_equal(mapped_copies(f), 0);
    assert_int_equal(fh_registry_get(f->reg, "good_a", &info), -1);
    assert_null(fh_registry_acquire(f->reg, "good_a", &st));
    assert_int_equal(st, FH_STATE_COUNT);
    assert_int_equal(fh_registry_unload(f->reg, "good_a", 0), -1);
}

static void *release_later(void *arg)
{
    fh_generation *g = arg;
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
    fh_generation_release(g);
    return NULL;
}

static void test_unload_drains_in_time(void **state)
{
    fixture *f = *state;
    assert_int_equal(load(f, f->good_a), FH_LOAD_OK);
    fh_generation *g = fh_registry_acquire(f->reg, "good_a", NULL);
    assert_non_null(g);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, release_later, g), 0);
    double t0 = now_ms();
    /* The release wakes the unloader long before the deadline. */
    assert_int_equal(fh_registry_unload(f->reg, "good_a", 10000), 0);
    assert_true(now_ms() - t0 < 5000);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(atomic_load(&finis[V_A1]), 1);
    assert_int_equal(mapped_copies(f), 0);

    /* Unload by path; then a reload of the name routes again. */
    assert_int_equal(load(f, f->good_b), FH_LOAD_OK);
    assert_int_equal(fh_registry_unload_path(f->reg, f->good_b, 1000), 0);
    assert_int_equal(fh_registry_unload_path(f->reg, f->good_b, 1000), -1);
    assert_int_equal(load(f, f->good_b), FH_LOAD_OK);
    g = fh_registry_acquire(f->reg, "good_b", NULL);
    assert_non_null(g);
    fh_generation_release(g);
}

static void test_duplicate_name(void **state)
{
    fixture *f = *state;
    assert_int_equal(load(f, f->good_a), FH_LOAD_OK);
    char other_dir[PATH_MAX], other[PATH_MAX];
    xsnprintf(other_dir, sizeof(other_dir), "%s/other", f->root);
    assert_int_equal(mkdir(other_dir, 0755), 0);
    assert_int_equal(chmod(other_dir, 0755), 0);
    xsnprintf(other, sizeof(other), "%s/copy_of_a.so", other_dir);
    copy_file(f->good_a, other, 0644);

    char msg[1024];
    assert_int_equal(fh_registry_load(f->reg, other, msg, sizeof(msg), NULL), FH_LOAD_DUPLICATE);
    assert_non_null(strstr(msg, other));
    assert_non_null(strstr(msg, "'good_a' 1.0.0 is already loaded from"));
    assert_non_null(strstr(msg, f->good_a));
    assert_non_null(strstr(msg, "remove one of the files"));
    assert_int_equal(atomic_load(&inits[V_A1]), 1); /* init never ran for it */

    /* The loaded one is untouched; the refused file is listed as failed. */
    fh_generation *g = fh_registry_acquire(f->reg, "good_a", NULL);
    assert_non_null(g);
    assert_string_equal(fh_generation_descriptor(g)->version, "1.0.0");
    fh_generation_release(g);
    fh_overlay_info *list = NULL;
    size_t n = fh_registry_list(f->reg, &list);
    assert_int_equal(n, 2);
    /* Sorted by name then path: both are good_a; f->root/other < .../plugins */
    assert_int_equal(list[0].state, FH_STATE_FAILED);
    assert_string_equal(list[0].path, other);
    assert_int_equal(list[0].error, FH_LOAD_DUPLICATE);
    assert_string_equal(list[0].name, "good_a");
    assert_int_equal(list[1].state, FH_STATE_ENABLED);
    assert_string_equal(list[1].path, f->good_a);
    free(list);
    assert_int_equal(mapped_copies(f), 1);

    /* Another version from the other path is a swap, not a clash. */
    copy_file(f->good_a_v2, other, 0644);
    assert_int_equal(load(f, other), FH_LOAD_OK);
    n = fh_registry_list(f->reg, &list);
    assert_int_equal(n, 1);
    assert_string_equal(list[0].version, "2.0.0");
    free(list);
}

static void test_refusals_are_listed(void **state)
{
    fixture *f = *state;
    char msg[1024];
    assert_int_equal(fh_registry_load(f->reg, f->bad_init, msg, sizeof(msg), NULL),
                     FH_LOAD_INIT_FAILED);
    assert_non_null(strstr(msg, f->bad_init));
    assert_non_null(strstr(msg, "cannot open the model table 'tp_table.csv'"));
    assert_int_equal(mapped_copies(f), 0);

    assert_int_equal(fh_registry_load(f->reg, f->bad_magic, msg, sizeof(msg), NULL),
                     FH_LOAD_BAD_MAGIC);
    xsnprintf(inputs_refuse, sizeof(inputs_refuse), "good_b");
    assert_int_equal(fh_registry_load(f->reg, f->good_b, msg, sizeof(msg), NULL),
                     FH_LOAD_INIT_FAILED);
    assert_non_null(strstr(msg, "configuration of overlay 'good_b' was refused"));
    assert_int_equal(atomic_load(&inits[V_B]), 0);
    assert_int_equal(load(f, f->good_a), FH_LOAD_OK);

    fh_overlay_info *list = NULL;
    size_t n = fh_registry_list(f->reg, &list);
    assert_int_equal(n, 4);
    /* "" (bad_magic: name unknown) < bad_init < good_a < good_b */
    assert_string_equal(list[0].name, "");
    assert_string_equal(list[0].path, f->bad_magic);
    assert_int_equal(list[0].state, FH_STATE_FAILED);
    assert_int_equal(list[0].error, FH_LOAD_BAD_MAGIC);
    assert_non_null(strstr(list[0].reason, "magic"));
    assert_string_equal(list[1].name, "bad_init");
    assert_int_equal(list[1].state, FH_STATE_FAILED);
    assert_int_equal(list[1].error, FH_LOAD_INIT_FAILED);
    assert_non_null(strstr(list[1].reason, "tp_table.csv"));
    assert_string_equal(list[2].name, "good_a");
    assert_int_equal(list[2].state, FH_STATE_ENABLED);
    assert_string_equal(list[3].name, "good_b");
    assert_int_equal(list[3].state, FH_STATE_FAILED);
    free(list);

    fh_overlay_state st;
    assert_null(fh_registry_acquire(f->reg, "bad_init", &st));
    assert_int_equal(st, FH_STATE_FAILED);
    fh_overlay_info info;
    assert_int_equal(fh_registry_get(f->reg, "bad_init", &info), 0);
    assert_int_equal(info.state, FH_STATE_FAILED);

    /* A successful load of the path clears its refusal; forget drops one. */
    inputs_refuse[0] = '\0';
    assert_int_equal(load(f, f->good_b), FH_LOAD_OK);
    fh_registry_forget_failed(f->reg, f->bad_init);
    n = fh_registry_list(f->reg, &list);
    assert_int_equal(n, 3);
    for (size_t i = 0; i < n; i++)
        assert_string_not_equal(list[i].path, f->bad_init);
    free(list);
    assert_int_equal(fh_registry_get(f->reg, "bad_init", &info), -1);
}

static void test_pinned_is_counted(void **state)
{
    fixture *f = *state;
    assert_int_equal(load(f, f->pinned), FH_LOAD_OK);
    assert_int_equal(load(f, f->pinned), FH_LOAD_OK); /* reload: the first is closed */
    assert_int_equal(atomic_load(&finis[V_PINNED]), 1);
    fh_overlay_info info;
    assert_int_equal(fh_registry_get(f->reg, "pinned", &info), 0);
    assert_int_equal(info.pinned, 1);
    assert_int_equal(info.state, FH_STATE_ENABLED);
    assert_int_equal(mapped_copies(f), 2); /* the pinned one and the live one */
}

/* An unloaded overlay whose library the dynamic loader keeps in memory
 * stays listed: draining, pinned, and a reason that says what to do. */
static void test_pinned_is_listed_after_unload(void **state)
{
    static const char reason[] = "unloaded but the dynamic loader kept the library mapped "
                                 "(RTLD_NODELETE or unique symbols); restart to unmap it";
    fixture *f = *state;
    assert_int_equal(load(f, f->pinned), FH_LOAD_OK);
    assert_int_equal(fh_registry_unload(f->reg, "pinned", 1000), 0);
    assert_int_equal(atomic_load(&finis[V_PINNED]), 1);
    assert_int_equal(mapped_copies(f), 1);

    fh_overlay_info *list = NULL;
    size_t n = fh_registry_list(f->reg, &list);
    assert_int_equal(n, 1);
    assert_string_equal(list[0].name, "pinned");
    assert_string_equal(list[0].version, "1.0.0");
    assert_string_equal(list[0].path, f->pinned);
    assert_int_equal(list[0].state, FH_STATE_DRAINING);
    assert_int_equal(list[0].pinned, 1);
    assert_int_equal(list[0].draining, 0);
    assert_int_equal(list[0].inflight, 0);
    assert_string_equal(list[0].reason, reason);
    free(list);
    fh_overlay_info info;
    assert_int_equal(fh_registry_get(f->reg, "pinned", &info), 0);
    assert_int_equal(info.pinned, 1);
    assert_string_equal(info.reason, reason);

    /* Reaping does not forget it; nothing routes to it. */
    assert_int_equal(fh_registry_reap(f->reg), 0);
    assert_int_equal(fh_registry_get(f->reg, "pinned", &info), 0);
    assert_int_equal(info.pinned, 1);
    fh_overlay_state st;
    assert_null(fh_registry_acquire(f->reg, "pinned", &st));
    assert_int_equal(st, FH_STATE_DRAINING);
    assert_int_equal(fh_registry_enable(f->reg, "pinned"), -1);

    /* Loading it again routes again; the old library is still counted. */
    assert_int_equal(load(f, f->pinned), FH_LOAD_OK);
    assert_int_equal(fh_registry_get(f->reg, "pinned", &info), 0);
    assert_int_equal(info.state, FH_STATE_ENABLED);
    assert_int_equal(info.pinned, 1);
    assert_string_equal(info.reason, "");
    fh_generation *g = fh_registry_acquire(f->reg, "pinned", &st);
    assert_non_null(g);
    fh_generation_release(g);

    /* Unloading again leaves the second library in memory as well. */
    assert_int_equal(fh_registry_unload(f->reg, "pinned", 1000), 0);
    assert_int_equal(fh_registry_get(f->reg, "pinned", &info), 0);
    assert_int_equal(info.state, FH_STATE_DRAINING);
    assert_int_equal(info.pinned, 2);
    assert_string_equal(info.reason, reason);
}

/* ---- concurrency ----------------------------------------------------- */

typedef struct run {
    fixture *f;
    atomic_bool stop;
    atomic_long calls, misses, errors;
} run;

static void *router(void *arg)
{
    run *r = arg;
    while (!atomic_load(&r->stop)) {
        fh_overlay_state st;
        fh_generation *g = fh_registry_acquire(r->f->reg, "good_a", &st);
        if (!g) {
            if (st != FH_STATE_DISABLED && st != FH_STATE_DRAINING && st != FH_STATE_COUNT)
                atomic_fetch_add(&r->errors, 1);
            atomic_fetch_add(&r->misses, 1);
            continue;
        }
        double m = fh_generation_match(g, NULL);
        if (!((m > 0.09 && m < 0.11) || (m > 0.19 && m < 0.21)))
            atomic_fetch_add(&r->errors, 1);
        if (fh_generation_apply(g, NULL) != 0)
            atomic_fetch_add(&r->errors, 1);
        fusion_evaluation ev;
        memset(&ev, 0, sizeof(ev));
        if (fh_generation_evaluate(g, NULL, "answer", 6, &ev) != 0 || ev.quality != m)
            atomic_fetch_add(&r->errors, 1);
        fh_generation_release(g);
        atomic_fetch_add(&r->calls, 1);
    }
    return NULL;
}

static void test_concurrent_routing_while_swapping(void **state)
{
    fixture *f = *state;
    enum { ROUTERS = 4, MAX_ROUNDS = 400 };
    const double budget_ms = 2500;
    assert_int_equal(load(f, f->good_a), FH_LOAD_OK);
    run r = {.f = f};
    pthread_t t[ROUTERS];
    for (int i = 0; i < ROUTERS; i++)
        assert_int_equal(pthread_create(&t[i], NULL, router, &r), 0);

    double t0 = now_ms();
    int rounds = 0;
    for (; rounds < MAX_ROUNDS && now_ms() - t0 < budget_ms; rounds++) {
        switch (rounds % 6) {
        case 0:
            assert_int_equal(fh_registry_disable(f->reg, "good_a"), 0);
            sched_yield();
            assert_int_equal(fh_registry_enable(f->reg, "good_a"), 0);
            break;
        case 1:
            assert_int_equal(load(f, f->good_a_v2), FH_LOAD_OK);
            break;
        case 2:
            assert_int_equal(load(f, f->good_a), FH_LOAD_OK);
            break;
        case 3: {
            /* Either drains within the deadline or is left to reap. */
            int rc = fh_registry_unload(f->reg, "good_a", rounds % 4 ? 20 : 0);
            assert_true(rc == 0 || rc == 1);
            break;
        }
        case 4:
            assert_int_equal(load(f, f->good_a), FH_LOAD_OK);
            break;
        case 5:
            assert_int_equal(load(f, f->good_a_v2), FH_LOAD_OK);
            break;
        }
        (void)fh_registry_reap(f->reg);
    }
    atomic_store(&r.stop, true);
    for (int i = 0; i < ROUTERS; i++)
        assert_int_equal(pthread_join(t[i], NULL), 0);
    assert_int_equal(fh_registry_reap(f->reg), 0);

    print_message("%d control rounds, %ld calls, %ld misses in %.0f ms\n", rounds,
                  atomic_load(&r.calls), atomic_load(&r.misses), now_ms() - t0);
    assert_int_equal(atomic_load(&r.errors), 0);
    assert_true(rounds >= 12);
    assert_true(atomic_load(&r.calls) > 0);
    /* Every generation but the current one (if the last round did not
     * unload it) has been finalised and unmapped. */
    fh_overlay_info info;
    int current = fh_registry_get(f->reg, "good_a", &info) == 0 ? 1 : 0;
    int live = 0;
    for (int i = 0; i < V_COUNT; i++)
        live += atomic_load(&inits[i]) - atomic_load(&finis[i]);
    assert_int_equal(live, current);
    assert_int_equal(mapped_copies(f), current);
    fh_registry_free(f->reg, 1000);
    f->reg = NULL;
    assert_int_equal(mapped_copies(f), 0);
}

int main(void)
{
    fh_log_set_level(FH_LOG_ERROR); /* the refusals are expected */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_load_acquire_release, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disable_enable_quarantine, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hot_swap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unload_times_out_then_reap, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unload_drains_in_time, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refusals_are_listed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pinned_is_counted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_pinned_is_listed_after_unload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_routing_while_swapping, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
