/*
 * test_plugsync.c - host/plugsync.c: the registry kept in step with the
 * plugin folder. A scan loads new files, hot-swaps a replaced one, unloads
 * a deleted one, remembers a refused file and retries it only when it
 * changes (or when asked to), refuses a second file with the same overlay
 * name and version and lets it take over when the serving one goes; the
 * admin API's load only takes *.so files directly inside the folder; the
 * inotify watch says when a scan is due; a move unloads the old folder's
 * overlays and loads the new one's.
 *
 * Each test stages the test plugins (tests/plugins/, see tp_common.h) into
 * a fresh folder under /tmp with safe modes (0644 files, 0755 folders), and
 * replaces files the way an operator should: write a hidden temporary in
 * the folder, then rename it over. Single-threaded.
 */
#include "plugsync.h"

#include "log.h"
#include "registry.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <setjmp.h>
#include <cmocka.h>

#include "test_fs.h"

/* ---- the test's host table ------------------------------------------ */

static void host_log(fusion_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void host_log(fusion_log_level level, const char *fmt, ...)
{
    (void)level;
    (void)fmt;
}

static const fusion_host_api test_host = {
    .size = sizeof(fusion_host_api),
    .abi_major = FUSION_ABI_MAJOR,
    .abi_minor = FUSION_ABI_MINOR,
    .log = host_log,
};

/* ---- fixture --------------------------------------------------------- */

typedef struct fixture {
    char root[64];          /* mkdtemp, 0755 */
    char plugins[PATH_MAX]; /* root/plugins, 0755: the watched folder */
    char other[PATH_MAX];   /* root/other, 0755: a second folder */
    char cache[PATH_MAX];   /* root/cache: the loader's private copies */
    fh_registry *reg;
    fh_plugsync *ps;
    int ticks;
} fixture;

static void make_dir(const char *path)
{
    assert_int_equal(mkdir(path, 0755), 0);
    assert_int_equal(chmod(path, 0755), 0);
}

static void on_tick(void *ud)
{
    fixture *f = ud;
    f->ticks++;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->root, sizeof(f->root), "/tmp/fh_plugsync_XXXXXX");
    assert_non_null(mkdtemp(f->root));
    assert_int_equal(chmod(f->root, 0755), 0);
    xsnprintf(f->plugins, sizeof(f->plugins), "%s/plugins", f->root);
    make_dir(f->plugins);
    xsnprintf(f->other, sizeof(f->other), "%s/other", f->root);
    make_dir(f->other);
    xsnprintf(f->cache, sizeof(f->cache), "%s/cache", f->root);
    fh_registry_opts o = {
        .loader = {.cache_dir = f->cache, .daemon_uid = getuid()},
        .host_api = &test_host,
    };
    f->reg = fh_registry_new(&o);
    assert_non_null(f->reg);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    fh_plugsync_free(f->ps);
    fh_registry_free(f->reg, 1000);
    remove_tree(f->root);
    free(f);
    return 0;
}

static void start(fixture *f, bool watch)
{
    f->ps = fh_plugsync_new(f->reg, f->plugins, watch, on_tick, f);
    assert_non_null(f->ps);
    assert_string_equal(fh_plugsync_dir(f->ps), f->plugins);
}

/* Puts the test plugin `plugin` into `dir` as `file`, the safe way: a
 * hidden temporary in the same folder renamed over the old file. */
static void put(const char *dir, const char *plugin, const char *file)
{
    char from[PATH_MAX], tmp[PATH_MAX], to[PATH_MAX];
    xsnprintf(from, sizeof(from), "%s/%s.so", FH_TEST_PLUGIN_DIR, plugin);
    xsnprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, file);
    xsnprintf(to, sizeof(to), "%s/%s", dir, file);
    copy_file(from, tmp, 0644);
    assert_int_equal(rename(tmp, to), 0);
}

static void del(const char *dir, const char *file)
{
    char p[PATH_MAX];
    xsnprintf(p, sizeof(p), "%s/%s", dir, file);
    assert_int_equal(unlink(p), 0);
}

static void path_of(char *out, const char *dir, const char *file)
{
    xsnprintf(out, PATH_MAX, "%s/%s", dir, file);
}

/* The overlay `name` is current, in `state`, version `version`, from
 * dir/file. */
static void expect_overlay(fixture *f, const char *name, fh_overlay_state state,
                           const char *version, const char *dir, const char *file)
{
    fh_overlay_info info;
    if (fh_registry_get(f->reg, name, &info) != 0)
        fail_msg("overlay %s is not in the registry", name);
    char want[PATH_MAX];
    path_of(want, dir, file);
    if (info.state != state)
        fail_msg("overlay %s is %s, not %s", name, fh_overlay_state_name(info.state),
                 fh_overlay_state_name(state));
    assert_string_equal(info.version, version);
    assert_string_equal(info.path, want);
}

/* Gone from the registry (after a reap), or at least not routing. */
static void expect_gone(fixture *f, const char *name)
{
    fh_registry_reap(f->reg);
    fh_overlay_info info;
    if (fh_registry_get(f->reg, name, &info) == 0)
        fail_msg("overlay %s is still listed (%s, from %s)", name,
                 fh_overlay_state_name(info.state), info.path);
    fh_overlay_state st;
    assert_null(fh_registry_acquire(f->reg, name, &st));
}

/* The refusal remembered for dir/file: its error, or -1 when none. */
static int refusal_at(fixture *f, const char *dir, const char *file)
{
    char want[PATH_MAX];
    path_of(want, dir, file);
    fh_overlay_info *list = NULL;
    size_t n = fh_registry_list(f->reg, &list);
    int err = -1;
    for (size_t i = 0; i < n; i++)
        if (list[i].state == FH_STATE_FAILED && strcmp(list[i].path, want) == 0)
            err = (int)list[i].error;
    free(list);
    return err;
}

static size_t count_failed(fixture *f)
{
    fh_overlay_info *list = NULL;
    size_t n = fh_registry_list(f->reg, &list), failed = 0;
    for (size_t i = 0; i < n; i++)
        failed += list[i].state == FH_STATE_FAILED;
    free(list);
    return failed;
}

/* ---- scans ------------------------------------------------------------ */

static void test_scan_loads_new_files(void **state)
{
    fixture *f = *state;
    put(f->plugins, "good_a", "good_a.so");
    put(f->plugins, "good_b", "good_b.so");
    /* Not plugins: hidden, other suffixes. */
    put(f->plugins, "good_b", ".hidden.so");
    put(f->plugins, "good_b", "good_b.so.bak");
    start(f, false);
    assert_false(fh_plugsync_watching(f->ps));
    assert_int_equal(fh_plugsync_fd(f->ps), -1);
    assert_int_equal(fh_plugsync_scan(f->ps, false), 2);
    assert_int_equal(f->ticks, 2); /* the watchdog ticks between loads */
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "1.0.0", f->plugins, "good_a.so");
    expect_overlay(f, "good_b", FH_STATE_ENABLED, "1.0.0", f->plugins, "good_b.so");
    assert_int_equal(count_failed(f), 0);
    /* Unchanged: nothing loads, with or without retrying refusals. */
    assert_int_equal(fh_plugsync_scan(f->ps, false), 0);
    assert_int_equal(fh_plugsync_scan(f->ps, true), 0);
    assert_int_equal(f->ticks, 2);
    /* A file added later loads alone. */
    put(f->plugins, "good_a_v2", "zz_later.so");
    assert_int_equal(fh_plugsync_scan(f->ps, false), 1);
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "2.0.0", f->plugins, "zz_later.so");
}

static void test_replaced_file_hot_swaps(void **state)
{
    fixture *f = *state;
    put(f->plugins, "good_a", "good_a.so");
    start(f, false);
    assert_int_equal(fh_plugsync_scan(f->ps, false), 1);
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "1.0.0", f->plugins, "good_a.so");
    /* An operator's disable survives the swap. */
    assert_int_equal(fh_registry_disable(f->reg, "good_a"), 0);

    put(f->plugins, "good_a_v2", "good_a.so");
    assert_int_equal(fh_plugsync_scan(f->ps, false), 1);
    expect_overlay(f, "good_a", FH_STATE_DISABLED, "2.0.0", f->plugins, "good_a.so");
    assert_int_equal(fh_registry_reap(f->reg), 0);
    fh_overlay_info info;
    assert_int_equal(fh_registry_get(f->reg, "good_a", &info), 0);
    assert_int_equal(info.draining, 0);
    assert_int_equal(fh_registry_enable(f->reg, "good_a"), 0);
    assert_int_equal(fh_plugsync_scan(f->ps, false), 0);

    /* And back to 1.0.0. */
    put(f->plugins, "good_a", "good_a.so");
    assert_int_equal(fh_plugsync_scan(f->ps, false), 1);
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "1.0.0", f->plugins, "good_a.so");

    /* A chmod changes its identity too: loaded again, same version. */
    char p[PATH_MAX];
    path_of(p, f->plugins, "good_a.so");
    assert_int_equal(chmod(p, 0640), 0);
    assert_int_equal(fh_plugsync_scan(f->ps, false), 1);
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "1.0.0", f->plugins, "good_a.so");
    assert_int_equal(count_failed(f), 0);
}

static void test_deleted_file_unloads(void **state)
{
    fixture *f = *state;
    put(f->plugins, "good_a", "good_a.so");
    put(f->plugins, "good_b", "good_b.so");
    start(f, false);
    assert_int_equal(fh_plugsync_scan(f->ps, false), 2);
    /* A request in flight keeps the old generation until it ends. */
    fh_generation *held = fh_registry_acquire(f->reg, "good_b", NULL);
    assert_non_null(held);
    del(f->plugins, "good_b.so");
    assert_int_equal(fh_plugsync_scan(f->ps, false), 0);
    fh_overlay_state st;
    assert_null(fh_registry_acquire(f->reg, "good_b", &st)); /* no new requests */
    fh_overlay_info info;
    assert_int_equal(fh_registry_get(f->reg, "good_b", &info), 0);
    assert_int_equal(info.state, FH_STATE_DRAINING);
    assert_int_equal(fh_registry_reap(f->reg), 1);
    fh_generation_release(held);
    expect_gone(f, "good_b");
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "1.0.0", f->plugins, "good_a.so");
    /* Put back: loads again. */
    put(f->plugins, "good_b", "good_b.so");
    assert_int_equal(fh_plugsync_scan(f->ps, false), 1);
    expect_overlay(f, "good_b", FH_STATE_ENABLED, "1.0.0", f->plugins, "good_b.so");
    /* Everything deleted. */
    del(f->plugins, "good_a.so");
    del(f->plugins, "good_b.so");
    assert_int_equal(fh_plugsync_scan(f->ps, false), 0);
    expect_gone(f, "good_a");
    expect_gone(f, "good_b");
}

static void test_refused_file_retried_when_changed(void **state)
{
    fixture *f = *state;
    put(f->plugins, "bad_major", "bad.so");
    start(f, false);
    assert_int_equal(fh_plugsync_scan(f->ps, false), 1); /* one load tried */
    assert_int_equal(refusal_at(f, f->plugins, "bad.so"), FH_LOAD_ABI_MAJOR);
    /* Unchanged: not tried again... */
    assert_int_equal(fh_plugsync_scan(f->ps, false), 0);
    assert_int_equal(f->ticks, 1);
    /* ... unless asked (start-up, reload); still refused. */
    assert_int_equal(fh_plugsync_scan(f->ps, true), 1);
    assert_int_equal(f->ticks, 2);
    assert_int_equal(refusal_at(f, f->plugins, "bad.so"), FH_LOAD_ABI_MAJOR);
    assert_int_equal(count_failed(f), 1);
    /* Replaced by a good plugin: loads, and the refusal is gone. */
    put(f->plugins, "good_b", "bad.so");
    assert_int_equal(fh_plugsync_scan(f->ps, false), 1);
    expect_overlay(f, "good_b", FH_STATE_ENABLED, "1.0.0", f->plugins, "bad.so");
    assert_int_equal(refusal_at(f, f->plugins, "bad.so"), -1);
    assert_int_equal(count_failed(f), 0);

    /* A refused file that is deleted is forgotten. */
    put(f->plugins, "bad_major", "bad2.so");
    assert_int_equal(fh_plugsync_scan(f->ps, false), 1);
    assert_int_equal(refusal_at(f, f->plugins, "bad2.so"), FH_LOAD_ABI_MAJOR);
    del(f->plugins, "bad2.so");
    assert_int_equal(fh_plugsync_scan(f->ps, false), 0);
    assert_int_equal(refusal_at(f, f->plugins, "bad2.so"), -1);
    assert_int_equal(fh_plugsync_scan(f->ps, true), 0);
}

/* A loaded overlay's file replaced by one the loader refuses: the old
 * generation keeps serving, the refusal is listed; deleting the file then
 * unloads the overlay and leaves no refusal behind. */
static void test_loaded_file_replaced_by_refused_one(void **state)
{
    fixture *f = *state;
    put(f->plugins, "good_a", "good_a.so");
    start(f, false);
    assert_int_equal(fh_plugsync_scan(f->ps, false), 1);
    put(f->plugins, "bad_major", "good_a.so");
    assert_int_equal(fh_plugsync_scan(f->ps, false), 1);
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "1.0.0", f->plugins, "good_a.so");
    assert_int_equal(refusal_at(f, f->plugins, "good_a.so"), FH_LOAD_ABI_MAJOR);
    /* A good file again: swaps, the refusal goes. */
    put(f->plugins, "good_a_v2", "good_a.so");
    assert_int_equal(fh_plugsync_scan(f->ps, false), 1);
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "2.0.0", f->plugins, "good_a.so");
    assert_int_equal(refusal_at(f, f->plugins, "good_a.so"), -1);
}

/* Deleted while its refused replacement is remembered: the overlay
 * unloads and the refusal goes with the file. */
static void test_deleted_after_refused_replacement(void **state)
{
    fixture *f = *state;
    put(f->plugins, "good_a", "good_a.so");
    start(f, false);
    assert_int_equal(fh_plugsync_scan(f->ps, false), 1);
    put(f->plugins, "bad_major", "good_a.so");
    assert_int_equal(fh_plugsync_scan(f->ps, false), 1);
    assert_int_equal(refusal_at(f, f->plugins, "good_a.so"), FH_LOAD_ABI_MAJOR);
    del(f->plugins, "good_a.so");
    assert_int_equal(fh_plugsync_scan(f->ps, false), 0);
    expect_gone(f, "good_a");
    assert_int_equal(refusal_at(f, f->plugins, "good_a.so"), -1);
    assert_int_equal(count_failed(f), 0);
}

/* A file rewritten with another overlay: the overlay it carried unloads
 * (it has no file any more); deleting the file then unloads the new one. */
static void test_file_changes_overlay_name(void **state)
{
    fixture *f = *state;
    put(f->plugins, "good_a", "x.so");
    start(f, false);
    assert_int_equal(fh_plugsync_scan(f->ps, false), 1);
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "1.0.0", f->plugins, "x.so");
    put(f->plugins, "good_b", "x.so");
    assert_int_equal(fh_plugsync_scan(f->ps, false), 1);
    expect_overlay(f, "good_b", FH_STATE_ENABLED, "1.0.0", f->plugins, "x.so");
    expect_gone(f, "good_a");
    del(f->plugins, "x.so");
    assert_int_equal(fh_plugsync_scan(f->ps, false), 0);
    expect_gone(f, "good_b");
}

static void test_duplicate_then_takeover(void **state)
{
    fixture *f = *state;
    /* Same overlay, same version, two files: sorted, the first serves. */
    put(f->plugins, "good_a", "good_a.so");
    put(f->plugins, "good_a", "good_a_copy.so");
    put(f->plugins, "good_b", "good_b.so");
    start(f, false);
    assert_int_equal(fh_plugsync_scan(f->ps, false), 3);
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "1.0.0", f->plugins, "good_a.so");
    assert_int_equal(refusal_at(f, f->plugins, "good_a_copy.so"), FH_LOAD_DUPLICATE);
    /* Retrying changes nothing while the serving file is there. */
    assert_int_equal(fh_plugsync_scan(f->ps, true), 1);
    assert_int_equal(refusal_at(f, f->plugins, "good_a_copy.so"), FH_LOAD_DUPLICATE);
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "1.0.0", f->plugins, "good_a.so");

    /* The serving file is deleted: the copy takes over at once. */
    del(f->plugins, "good_a.so");
    assert_int_equal(fh_plugsync_scan(f->ps, false), 0);
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "1.0.0", f->plugins, "good_a_copy.so");
    fh_overlay_state st;
    fh_generation *g = fh_registry_acquire(f->reg, "good_a", &st);
    assert_non_null(g);
    fh_generation_release(g);
    assert_int_equal(refusal_at(f, f->plugins, "good_a_copy.so"), -1);
    assert_int_equal(count_failed(f), 0);
    assert_int_equal(fh_registry_reap(f->reg), 0);
    /* And when it goes too, the overlay unloads. */
    del(f->plugins, "good_a_copy.so");
    assert_int_equal(fh_plugsync_scan(f->ps, false), 0);
    expect_gone(f, "good_a");
    expect_overlay(f, "good_b", FH_STATE_ENABLED, "1.0.0", f->plugins, "good_b.so");
}

static void test_duplicate_deleted_is_forgotten(void **state)
{
    fixture *f = *state;
    put(f->plugins, "good_a", "good_a.so");
    put(f->plugins, "good_a", "good_a_copy.so");
    start(f, false);
    assert_int_equal(fh_plugsync_scan(f->ps, false), 2);
    assert_int_equal(refusal_at(f, f->plugins, "good_a_copy.so"), FH_LOAD_DUPLICATE);
    del(f->plugins, "good_a_copy.so");
    assert_int_equal(fh_plugsync_scan(f->ps, false), 0);
    assert_int_equal(count_failed(f), 0);
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "1.0.0", f->plugins, "good_a.so");
}

/* Two versions of one overlay: the one loaded last serves; when its file
 * is deleted, the other file carrying the overlay takes over. */
static void test_two_versions_successor(void **state)
{
    fixture *f = *state;
    put(f->plugins, "good_a", "a1.so");
    put(f->plugins, "good_a_v2", "a2.so");
    start(f, false);
    assert_int_equal(fh_plugsync_scan(f->ps, false), 2);
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "2.0.0", f->plugins, "a2.so");
    assert_int_equal(count_failed(f), 0);
    del(f->plugins, "a2.so");
    assert_int_equal(fh_plugsync_scan(f->ps, false), 0);
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "1.0.0", f->plugins, "a1.so");
    fh_registry_reap(f->reg);
    fh_overlay_info info;
    assert_int_equal(fh_registry_get(f->reg, "good_a", &info), 0);
    assert_int_equal(info.draining, 0);
}

/* A folder that cannot be read: nothing happens, the overlays loaded keep
 * serving; once it is back, the scan goes on. */
static void test_unreadable_folder(void **state)
{
    fixture *f = *state;
    char gone[PATH_MAX];
    xsnprintf(gone, sizeof(gone), "%s/later", f->root);
    f->ps = fh_plugsync_new(f->reg, gone, false, NULL, NULL);
    assert_non_null(f->ps);
    assert_int_equal(fh_plugsync_scan(f->ps, true), 0);
    assert_int_equal(fh_plugsync_scan(f->ps, true), 0);
    make_dir(gone);
    put(gone, "good_b", "good_b.so");
    assert_int_equal(fh_plugsync_scan(f->ps, false), 1);
    expect_overlay(f, "good_b", FH_STATE_ENABLED, "1.0.0", gone, "good_b.so");
    /* Taken away while loaded: keeps serving. */
    del(gone, "good_b.so");
    assert_int_equal(rmdir(gone), 0);
    assert_int_equal(fh_plugsync_scan(f->ps, false), 0);
    fh_generation *g = fh_registry_acquire(f->reg, "good_b", NULL);
    assert_non_null(g);
    fh_generation_release(g);
}

/* ---- the admin API's load ------------------------------------------------ */

static void expect_outside(fixture *f, const char *path)
{
    char msg[1024] = "", name[FUSION_NAME_MAX + 1] = "";
    bool swapped = true, outside = false;
    fh_load_err e = fh_plugsync_load(f->ps, path, msg, sizeof(msg), name, &swapped, &outside);
    if (e != FH_LOAD_IO || !outside)
        fail_msg("load %s: %s (outside %d), expected io/outside: %s", path, fh_load_err_name(e),
                 outside, msg);
    assert_false(swapped);
    assert_true(msg[0] != '\0');
}

static void test_load_only_inside_folder(void **state)
{
    fixture *f = *state;
    put(f->plugins, "good_a", "good_a.so");
    put(f->plugins, "good_a_v2", "good_a_v2.so");
    put(f->plugins, "good_b", "good_b.so");
    put(f->plugins, "good_b", ".hidden.so");
    put(f->plugins, "good_b", "good_b.txt");
    put(f->other, "good_b", "good_b.so");
    char sub[PATH_MAX];
    path_of(sub, f->plugins, "sub");
    make_dir(sub);
    put(sub, "good_b", "good_b.so");
    start(f, false);

    char p[PATH_MAX];
    path_of(p, f->other, "good_b.so");
    expect_outside(f, p); /* another folder */
    expect_outside(f, "../other/good_b.so");
    expect_outside(f, "../good_b.so");
    expect_outside(f, "sub/good_b.so"); /* a subfolder */
    path_of(p, sub, "good_b.so");
    expect_outside(f, p);
    xsnprintf(p, sizeof(p), "%s/../plugins/good_b.so", f->plugins);
    expect_outside(f, p);
    xsnprintf(p, sizeof(p), "%s/./good_b.so", f->plugins);
    expect_outside(f, p);
    expect_outside(f, ".hidden.so");
    expect_outside(f, "good_b.txt");
    expect_outside(f, ".so");
    expect_outside(f, "good_b");
    /* A folder whose name starts like the plugin folder's is another one. */
    char twin[PATH_MAX];
    xsnprintf(twin, sizeof(twin), "%s2", f->plugins);
    make_dir(twin);
    put(twin, "good_b", "good_b.so");
    path_of(p, twin, "good_b.so");
    expect_outside(f, p);
    assert_int_equal(count_failed(f), 0);
    expect_gone(f, "good_b");

    /* Missing inside the folder: an I/O error naming it. */
    char msg[1024], name[FUSION_NAME_MAX + 1];
    bool swapped, outside;
    assert_int_equal(
        fh_plugsync_load(f->ps, "missing.so", msg, sizeof(msg), name, &swapped, &outside),
        FH_LOAD_IO);
    assert_non_null(strstr(msg, "missing.so"));

    /* A name relative to the folder. */
    name[0] = '\0';
    assert_int_equal(
        fh_plugsync_load(f->ps, "good_a.so", msg, sizeof(msg), name, &swapped, &outside),
        FH_LOAD_OK);
    assert_string_equal(name, "good_a");
    assert_false(swapped);
    assert_false(outside);
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "1.0.0", f->plugins, "good_a.so");
    /* The same file again is a swap. */
    assert_int_equal(
        fh_plugsync_load(f->ps, "good_a.so", msg, sizeof(msg), name, &swapped, &outside),
        FH_LOAD_OK);
    assert_true(swapped);
    /* An absolute path inside the folder, another version: a swap. */
    path_of(p, f->plugins, "good_a_v2.so");
    assert_int_equal(fh_plugsync_load(f->ps, p, msg, sizeof(msg), name, &swapped, &outside),
                     FH_LOAD_OK);
    assert_string_equal(name, "good_a");
    assert_true(swapped);
    assert_false(outside);
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "2.0.0", f->plugins, "good_a_v2.so");
    /* A refusal inside the folder is the loader's, not "outside". */
    put(f->plugins, "bad_major", "bad.so");
    assert_int_equal(fh_plugsync_load(f->ps, "bad.so", msg, sizeof(msg), name, &swapped, &outside),
                     FH_LOAD_ABI_MAJOR);
    assert_false(outside);
    assert_false(swapped);

    /* The scan knows what was loaded by hand: only good_b.so is new. */
    assert_int_equal(fh_plugsync_scan(f->ps, false), 1);
    expect_overlay(f, "good_b", FH_STATE_ENABLED, "1.0.0", f->plugins, "good_b.so");
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "2.0.0", f->plugins, "good_a_v2.so");
    assert_int_equal(fh_plugsync_scan(f->ps, false), 0);
}

/* ---- the watch ----------------------------------------------------------- */

static bool readable_within(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int rc;
    while ((rc = poll(&p, 1, ms)) < 0 && errno == EINTR)
        ;
    return rc == 1 && (p.revents & POLLIN);
}

static void test_watch_says_when_a_scan_is_due(void **state)
{
    fixture *f = *state;
    start(f, true);
    assert_true(fh_plugsync_watching(f->ps));
    int fd = fh_plugsync_fd(f->ps);
    assert_true(fd >= 0);
    assert_false(readable_within(fd, 0));
    assert_false(fh_plugsync_read_events(f->ps)); /* nothing yet, and no blocking */

    /* A hidden temporary alone is not a plugin: no scan due. */
    char tmp[PATH_MAX];
    path_of(tmp, f->plugins, ".good_a.so.tmp");
    char from[PATH_MAX];
    xsnprintf(from, sizeof(from), "%s/good_a.so", FH_TEST_PLUGIN_DIR);
    copy_file(from, tmp, 0644);
    assert_true(readable_within(fd, 2000));
    assert_false(fh_plugsync_read_events(f->ps));
    /* Renamed into place: due. */
    char to[PATH_MAX];
    path_of(to, f->plugins, "good_a.so");
    assert_int_equal(rename(tmp, to), 0);
    assert_true(readable_within(fd, 2000));
    assert_true(fh_plugsync_read_events(f->ps));
    assert_false(readable_within(fd, 0)); /* all read */
    assert_int_equal(fh_plugsync_scan(f->ps, false), 1);
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "1.0.0", f->plugins, "good_a.so");

    /* A file written in place, and a deletion, are seen too. */
    path_of(to, f->plugins, "good_b.so");
    xsnprintf(from, sizeof(from), "%s/good_b.so", FH_TEST_PLUGIN_DIR);
    copy_file(from, to, 0644);
    assert_true(readable_within(fd, 2000));
    assert_true(fh_plugsync_read_events(f->ps));
    assert_int_equal(fh_plugsync_scan(f->ps, false), 1);
    del(f->plugins, "good_a.so");
    assert_true(readable_within(fd, 2000));
    assert_true(fh_plugsync_read_events(f->ps));
    assert_int_equal(fh_plugsync_scan(f->ps, false), 0);
    expect_gone(f, "good_a");
}

static void test_watched_folder_removed(void **state)
{
    fixture *f = *state;
    char dir[PATH_MAX];
    xsnprintf(dir, sizeof(dir), "%s/doomed", f->root);
    make_dir(dir);
    f->ps = fh_plugsync_new(f->reg, dir, true, NULL, NULL);
    assert_non_null(f->ps);
    assert_true(fh_plugsync_watching(f->ps));
    int fd = fh_plugsync_fd(f->ps);
    assert_int_equal(rmdir(dir), 0);
    assert_true(readable_within(fd, 2000));
    (void)fh_plugsync_read_events(f->ps);
    assert_false(fh_plugsync_watching(f->ps));
    assert_int_equal(fh_plugsync_fd(f->ps), -1);
    assert_false(fh_plugsync_read_events(f->ps)); /* not watching: nothing to read */
}

static void test_watch_unavailable_folder(void **state)
{
    fixture *f = *state;
    char dir[PATH_MAX];
    xsnprintf(dir, sizeof(dir), "%s/absent", f->root);
    f->ps = fh_plugsync_new(f->reg, dir, true, NULL, NULL);
    assert_non_null(f->ps);
    assert_false(fh_plugsync_watching(f->ps));
    assert_int_equal(fh_plugsync_fd(f->ps), -1);
}

/* ---- moving the folder -------------------------------------------------- */

static void test_move_to_another_folder(void **state)
{
    fixture *f = *state;
    put(f->plugins, "good_a", "good_a.so");
    put(f->plugins, "bad_major", "bad.so");
    put(f->other, "good_b", "good_b.so");
    put(f->other, "good_a_v2", "good_a_v2.so");
    start(f, false);
    assert_int_equal(fh_plugsync_scan(f->ps, false), 2);
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "1.0.0", f->plugins, "good_a.so");
    assert_int_equal(refusal_at(f, f->plugins, "bad.so"), FH_LOAD_ABI_MAJOR);

    fh_plugsync_move(f->ps, f->other, false);
    assert_string_equal(fh_plugsync_dir(f->ps), f->other);
    assert_false(fh_plugsync_watching(f->ps));
    fh_registry_reap(f->reg);
    /* good_a now comes from the new folder; good_b is new; the old
     * folder's refusal is forgotten. */
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "2.0.0", f->other, "good_a_v2.so");
    expect_overlay(f, "good_b", FH_STATE_ENABLED, "1.0.0", f->other, "good_b.so");
    assert_int_equal(count_failed(f), 0);
    fh_overlay_info info;
    assert_int_equal(fh_registry_get(f->reg, "good_a", &info), 0);
    assert_int_equal(info.draining, 0);
    /* The old folder is no longer followed. */
    del(f->plugins, "good_a.so");
    put(f->plugins, "good_b", "zz.so");
    assert_int_equal(fh_plugsync_scan(f->ps, false), 0);
    expect_overlay(f, "good_b", FH_STATE_ENABLED, "1.0.0", f->other, "good_b.so");
    /* Outside now means outside the new folder. */
    expect_outside(f, "../plugins/zz.so");

    /* Same folder, watch turned on and off: nothing unloads. */
    fh_plugsync_move(f->ps, f->other, true);
    assert_true(fh_plugsync_watching(f->ps));
    assert_true(fh_plugsync_fd(f->ps) >= 0);
    fh_plugsync_move(f->ps, f->other, false);
    assert_false(fh_plugsync_watching(f->ps));
    expect_overlay(f, "good_b", FH_STATE_ENABLED, "1.0.0", f->other, "good_b.so");
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "2.0.0", f->other, "good_a_v2.so");
}

static void test_move_back_and_watch(void **state)
{
    fixture *f = *state;
    put(f->plugins, "good_a", "good_a.so");
    put(f->other, "good_b", "good_b.so");
    start(f, true);
    assert_int_equal(fh_plugsync_scan(f->ps, false), 1);
    /* Moving while watching keeps watching the new folder. */
    fh_plugsync_move(f->ps, f->other, true);
    assert_true(fh_plugsync_watching(f->ps));
    expect_gone(f, "good_a");
    expect_overlay(f, "good_b", FH_STATE_ENABLED, "1.0.0", f->other, "good_b.so");
    int fd = fh_plugsync_fd(f->ps);
    assert_true(fd >= 0);
    while (fh_plugsync_read_events(f->ps))
        ;
    put(f->plugins, "good_a_v2", "x.so"); /* the old folder: not watched */
    assert_false(readable_within(fd, 200) && fh_plugsync_read_events(f->ps));
    put(f->other, "good_a", "good_a.so"); /* the new one is */
    assert_true(readable_within(fd, 2000));
    assert_true(fh_plugsync_read_events(f->ps));
    assert_int_equal(fh_plugsync_scan(f->ps, false), 1);
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "1.0.0", f->other, "good_a.so");
    /* And back. */
    fh_plugsync_move(f->ps, f->plugins, true);
    fh_registry_reap(f->reg);
    expect_gone(f, "good_b");
    /* x.so, written while another folder was followed, carries good_a
     * 2.0.0: sorted after good_a.so, it loads last and serves. */
    expect_overlay(f, "good_a", FH_STATE_ENABLED, "2.0.0", f->plugins, "x.so");
    assert_int_equal(count_failed(f), 0);
}

int main(void)
{
    fh_log_set_level(FH_LOG_OFF); /* refusals and unloads are expected */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_scan_loads_new_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_replaced_file_hot_swaps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deleted_file_unloads, setup, teardown),
        cmocka_unit_test_setup_teardown(test_refused_file_retried_when_changed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loaded_file_replaced_by_refused_one, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deleted_after_refused_replacement, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_changes_overlay_name, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_then_takeover, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_deleted_is_forgotten, setup, teardown),
        cmocka_unit_test_setup_teardown(test_two_versions_successor, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unreadable_folder, setup, teardown),
        cmocka_unit_test_setup_teardown(test_load_only_inside_folder, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch_says_when_a_scan_is_due, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watched_folder_removed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_watch_unavailable_folder, setup, teardown),
        cmocka_unit_test_setup_teardown(test_move_to_another_folder, setup, teardown),
        cmocka_unit_test_setup_teardown(test_move_back_and_watch, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
