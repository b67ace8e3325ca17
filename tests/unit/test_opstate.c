/*
 * test_opstate.c - host/opstate.c: the operator's decisions kept in
 * STATE_DIR/operator-state.json. An empty folder means everything enabled;
 * decisions saved are read back with their reasons; the file is 0600,
 * format 1, rewritten only when its content changes; a file that cannot be
 * trusted is set aside (never deleted) and the daemon starts clean; sync
 * derives the file from a real registry and real gates, and what it wrote
 * brings a fresh registry (state_for) and fresh gates back to where they
 * were.
 *
 * Each test works in a fresh folder under /tmp; the registry tests stage
 * the test plugins (tests/plugins/) into it with safe modes.
 * Single-threaded.
 */
#include "opstate.h"

#include "gates.h"
#include "log.h"
#include "registry.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <setjmp.h>
#include <cmocka.h>

#include "test_fs.h"

#define STATE_FILE "operator-state.json"
#define CORRUPT    STATE_FILE ".corrupt-"

/* ---- helpers ---------------------------------------------------------- */

typedef struct fixture {
    char root[64];        /* mkdtemp, 0755 */
    char state[PATH_MAX]; /* root/state: the state folder */
    char file[PATH_MAX];  /* root/state/operator-state.json */
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    snprintf(f->root, sizeof(f->root), "/tmp/fh_opstate_XXXXXX");
    assert_non_null(mkdtemp(f->root));
    assert_int_equal(chmod(f->root, 0755), 0);
    xsnprintf(f->state, sizeof(f->state), "%s/state", f->root);
    assert_int_equal(mkdir(f->state, 0700), 0);
    xsnprintf(f->file, sizeof(f->file), "%s/" STATE_FILE, f->state);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    remove_tree(f->root);
    free(f);
    return 0;
}

static void write_text(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    assert_int_equal(fwrite(text, 1, strlen(text), fp), strlen(text));
    assert_int_equal(fclose(fp), 0);
}

/* The whole file, malloc'd and NUL-terminated (NULL when absent). */
static char *read_text(const char *path)
{
    FILE *fp = fopen(path, "r");
    if (!fp)
        return NULL;
    char *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        size_t n = fread(buf + len, 1, 4096, fp);
        len += n;
        if (n == 0)
            break;
    }
    fclose(fp);
    buf[len] = '\0';
    return buf;
}

/* Names in `dir` starting with `prefix`: how many, and the last seen. */
static int count_prefixed(const char *dir, const char *prefix, char *last, size_t len)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, prefix, strlen(prefix)) != 0)
            continue;
        n++;
        if (last)
            xsnprintf(last, len, "%s/%s", dir, de->d_name);
    }
    closedir(d);
    return n;
}

/* No temporary of an atomic write may linger (".operator-state.json.tmp.*"). */
static void assert_no_temporaries(const char *dir)
{
    assert_int_equal(count_prefixed(dir, "." STATE_FILE, NULL, 0), 0);
}

static json_t *load_json(const char *path)
{
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        fail_msg("%s: line %d: %s", path, jerr.line, jerr.text);
    assert_true(json_is_object(root));
    assert_int_equal(json_integer_value(json_object_get(root, "format")), 1);
    assert_true(json_is_integer(json_object_get(root, "format")));
    assert_true(json_is_object(json_object_get(root, "overlays")));
    assert_true(json_is_object(json_object_get(root, "gates")));
    return root;
}

/* overlays.NAME.FIELD of the file, as a string (NULL when absent). */
static const char *overlay_field(json_t *root, const char *name, const char *field)
{
    return json_string_value(
        json_object_get(json_object_get(json_object_get(root, "overlays"), name), field));
}

static fh_overlay_state overlay_state(fh_opstate *o, const char *name, char *why, size_t len)
{
    if (why && len)
        why[0] = '\0';
    return fh_opstate_overlay(o, name, why, len);
}

static void file_identity(const char *path, struct stat *st)
{
    assert_int_equal(stat(path, st), 0);
}

static bool same_file(const struct stat *a, const struct stat *b)
{
    return a->st_ino == b->st_ino && a->st_dev == b->st_dev &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

static void no_trip_expected(void *ud, const char *overlay, const char *reason)
{
    (void)ud;
    fail_msg("no gate should be tripped, but %s is (%s)", overlay, reason);
}

/* ---- the file on its own ------------------------------------------------ */

static void test_empty_folder_everything_enabled(void **state)
{
    fixture *f = *state;
    fh_opstate *o = fh_opstate_open(f->state);
    assert_non_null(o);
    assert_string_equal(fh_opstate_path(o), f->file);
    char why[64];
    assert_int_equal(overlay_state(o, "good_a", why, sizeof(why)), FH_STATE_ENABLED);
    assert_int_equal(overlay_state(o, "anything", NULL, 0), FH_STATE_ENABLED);
    /* Opening writes nothing and sets nothing aside. */
    assert_int_equal(access(f->file, F_OK), -1);
    assert_int_equal(count_prefixed(f->state, CORRUPT, NULL, 0), 0);
    /* No gate to restore. */
    fh_gates *g = fh_gates_new(NULL);
    assert_non_null(g);
    fh_opstate_restore_gates(o, g, 1000);
    assert_int_equal(fh_gates_tripped(g, no_trip_expected, NULL), 0);
    fh_gates_free(g);
    fh_opstate_free(o);
    fh_opstate_free(NULL);
}

static void test_save_and_reopen(void **state)
{
    fixture *f = *state;
    fh_opstate *o = fh_opstate_open(f->state);
    assert_non_null(o);
    fh_opstate_set_overlay(o, "alpha", FH_STATE_DISABLED, "disabled by the operator");
    fh_opstate_set_overlay(o, "beta", FH_STATE_QUARANTINED, "apply() passed hooks.deadline_ms");
    fh_opstate_set_overlay(o, "gamma", FH_STATE_DISABLED, NULL);
    /* In memory at once, before any save. */
    char why[512];
    assert_int_equal(overlay_state(o, "alpha", why, sizeof(why)), FH_STATE_DISABLED);
    assert_string_equal(why, "disabled by the operator");
    assert_int_equal(fh_opstate_save(o), 0);
    fh_opstate_free(o);

    struct stat st;
    assert_int_equal(stat(f->file, &st), 0);
    assert_true(S_ISREG(st.st_mode));
    assert_int_equal(st.st_mode & 07777, 0600);
    assert_no_temporaries(f->state);
    char *text = read_text(f->file);
    assert_non_null(text);
    assert_true(strlen(text) > 0 && text[strlen(text) - 1] == '\n');
    free(text);

    json_t *root = load_json(f->file);
    assert_string_equal(overlay_field(root, "alpha", "state"), "disabled");
    assert_string_equal(overlay_field(root, "alpha", "reason"), "disabled by the operator");
    assert_string_equal(overlay_field(root, "beta", "state"), "quarantined");
    assert_string_equal(overlay_field(root, "beta", "reason"), "apply() passed hooks.deadline_ms");
    assert_string_equal(overlay_field(root, "gamma", "state"), "disabled");
    json_t *since =
        json_object_get(json_object_get(json_object_get(root, "overlays"), "alpha"), "since");
    assert_true(json_is_integer(since));
    assert_true(json_integer_value(since) > 1600000000);
    assert_int_equal(json_object_size(json_object_get(root, "overlays")), 3);
    assert_int_equal(json_object_size(json_object_get(root, "gates")), 0);
    json_decref(root);

    o = fh_opstate_open(f->state);
    assert_non_null(o);
    assert_int_equal(overlay_state(o, "alpha", why, sizeof(why)), FH_STATE_DISABLED);
    assert_string_equal(why, "disabled by the operator");
    assert_int_equal(overlay_state(o, "beta", why, sizeof(why)), FH_STATE_QUARANTINED);
    assert_string_equal(why, "apply() passed hooks.deadline_ms");
    assert_int_equal(overlay_state(o, "gamma", why, sizeof(why)), FH_STATE_DISABLED);
    assert_string_equal(why, "");
    assert_int_equal(overlay_state(o, "delta", why, sizeof(why)), FH_STATE_ENABLED);
    /* The reason is cut to the buffer, NUL-terminated. */
    char small[5];
    assert_int_equal(fh_opstate_overlay(o, "alpha", small, sizeof(small)), FH_STATE_DISABLED);
    assert_string_equal(small, "disa");
    /* No buffer at all is fine too. */
    assert_int_equal(fh_opstate_overlay(o, "beta", NULL, 0), FH_STATE_QUARANTINED);
    /* The file was left as it was: nothing set aside. */
    assert_int_equal(count_prefixed(f->state, CORRUPT, NULL, 0), 0);
    fh_opstate_free(o);
}

static void test_enabled_forgets(void **state)
{
    fixture *f = *state;
    fh_opstate *o = fh_opstate_open(f->state);
    assert_non_null(o);
    fh_opstate_set_overlay(o, "alpha", FH_STATE_DISABLED, "x");
    fh_opstate_set_overlay(o, "beta", FH_STATE_QUARANTINED, "y");
    assert_int_equal(fh_opstate_save(o), 0);
    fh_opstate_set_overlay(o, "alpha", FH_STATE_ENABLED, "ignored");
    assert_int_equal(overlay_state(o, "alpha", NULL, 0), FH_STATE_ENABLED);
    /* States the file does not keep forget too. */
    fh_opstate_set_overlay(o, "beta", FH_STATE_DRAINING, "z");
    assert_int_equal(overlay_state(o, "beta", NULL, 0), FH_STATE_ENABLED);
    fh_opstate_set_overlay(o, "never", FH_STATE_ENABLED, NULL); /* unknown: nothing to do */
    assert_int_equal(fh_opstate_save(o), 0);
    fh_opstate_free(o);

    json_t *root = load_json(f->file);
    assert_int_equal(json_object_size(json_object_get(root, "overlays")), 0);
    json_decref(root);
    o = fh_opstate_open(f->state);
    assert_non_null(o);
    assert_int_equal(overlay_state(o, "alpha", NULL, 0), FH_STATE_ENABLED);
    assert_int_equal(overlay_state(o, "beta", NULL, 0), FH_STATE_ENABLED);
    fh_opstate_free(o);
}

static void test_save_writes_only_changes(void **state)
{
    fixture *f = *state;
    fh_opstate *o = fh_opstate_open(f->state);
    assert_non_null(o);
    fh_opstate_set_overlay(o, "alpha", FH_STATE_DISABLED, "x");
    assert_int_equal(fh_opstate_save(o), 0);
    struct stat first, now;
    file_identity(f->file, &first);

    /* Nothing changed: not written again (a rewrite renames a new inode in). */
    assert_int_equal(fh_opstate_save(o), 0);
    file_identity(f->file, &now);
    assert_true(same_file(&first, &now));
    /* The same decision again keeps its "since" and changes nothing. */
    fh_opstate_set_overlay(o, "alpha", FH_STATE_DISABLED, "x");
    assert_int_equal(fh_opstate_save(o), 0);
    file_identity(f->file, &now);
    assert_true(same_file(&first, &now));
    /* Forgetting an overlay that was never recorded changes nothing. */
    fh_opstate_set_overlay(o, "beta", FH_STATE_ENABLED, NULL);
    assert_int_equal(fh_opstate_save(o), 0);
    file_identity(f->file, &now);
    assert_true(same_file(&first, &now));
    assert_no_temporaries(f->state);
    fh_opstate_free(o);

    /* A fresh process that changes nothing writes nothing. */
    o = fh_opstate_open(f->state);
    assert_non_null(o);
    assert_int_equal(fh_opstate_save(o), 0);
    file_identity(f->file, &now);
    assert_true(same_file(&first, &now));

    /* A real change is written. */
    fh_opstate_set_overlay(o, "alpha", FH_STATE_DISABLED, "another reason");
    assert_int_equal(fh_opstate_save(o), 0);
    file_identity(f->file, &now);
    assert_false(same_file(&first, &now));
    assert_int_equal(now.st_mode & 07777, 0600);
    assert_no_temporaries(f->state);
    fh_opstate_free(o);
    json_t *root = load_json(f->file);
    assert_string_equal(overlay_field(root, "alpha", "reason"), "another reason");
    json_decref(root);
}

/* One corrupt file in its own state folder: opened clean, set aside with
 * its bytes intact, and a save afterwards writes a good file next to it. */
static void check_set_aside(fixture *f, const char *sub, const char *content)
{
    char dir[PATH_MAX], file[PATH_MAX], aside[PATH_MAX];
    xsnprintf(dir, sizeof(dir), "%s/%s", f->root, sub);
    assert_int_equal(mkdir(dir, 0700), 0);
    xsnprintf(file, sizeof(file), "%s/" STATE_FILE, dir);
    write_text(file, content);

    fh_opstate *o = fh_opstate_open(dir);
    assert_non_null(o);
    if (count_prefixed(dir, CORRUPT, aside, sizeof(aside)) != 1)
        fail_msg("%s: a file holding '%s' was not set aside once", sub, content);
    assert_int_equal(access(file, F_OK), -1);
    char *kept = read_text(aside);
    assert_non_null(kept);
    assert_string_equal(kept, content);
    free(kept);
    /* Whatever the bad file said, everything starts enabled. */
    assert_int_equal(overlay_state(o, "alpha", NULL, 0), FH_STATE_ENABLED);
    fh_gates *g = fh_gates_new(NULL);
    assert_non_null(g);
    fh_opstate_restore_gates(o, g, 1000);
    assert_int_equal(fh_gates_tripped(g, no_trip_expected, NULL), 0);
    fh_gates_free(g);

    fh_opstate_set_overlay(o, "beta", FH_STATE_DISABLED, "after the corruption");
    assert_int_equal(fh_opstate_save(o), 0);
    fh_opstate_free(o);
    json_t *root = load_json(file);
    assert_string_equal(overlay_field(root, "beta", "state"), "disabled");
    assert_null(json_object_get(json_object_get(root, "overlays"), "alpha"));
    json_decref(root);
    assert_int_equal(count_prefixed(dir, CORRUPT, NULL, 0), 1); /* still kept */
}

static void test_corrupt_files_are_set_aside(void **state)
{
    fixture *f = *state;
    fh_log_set_level(FH_LOG_OFF); /* the corruption is expected */
    check_set_aside(f, "garbage", "\x01\x02 this is not JSON at all \xff\n");
    check_set_aside(f, "truncated",
                    "{\"format\": 1, \"overlays\": {\"alpha\": {\"state\": \"disab");
    check_set_aside(f, "array", "[{\"format\": 1}]\n");
    check_set_aside(f, "format2",
                    "{\"format\": 2, \"overlays\": {\"alpha\": {\"state\": \"disabled\"}}, "
                    "\"gates\": {\"alpha\": {\"reason\": \"x\"}}}\n");
    check_set_aside(f, "noformat", "{\"overlays\": {\"alpha\": {\"state\": \"disabled\"}}}\n");
    check_set_aside(f, "strformat",
                    "{\"format\": \"1\", \"overlays\": {\"alpha\": {\"state\": \"disabled\"}}}\n");
    check_set_aside(f, "dupkeys",
                    "{\"format\": 1, \"overlays\": {\"alpha\": {\"state\": \"disabled\"}}, "
                    "\"overlays\": {}}\n");
    check_set_aside(f, "empty", "");
    fh_log_set_level(FH_LOG_ERROR);
}

static void test_invalid_entries_ignored(void **state)
{
    fixture *f = *state;
    write_text(f->file, "{\"format\": 1,\n"
                        " \"overlays\": {\n"
                        "   \"bogus\": {\"state\": \"sleeping\", \"reason\": \"r\"},\n"
                        "   \"enabled\": {\"state\": \"enabled\"},\n"
                        "   \"draining\": {\"state\": \"draining\"},\n"
                        "   \"number\": {\"state\": 3},\n"
                        "   \"flat\": \"disabled\",\n"
                        "   \"empty\": {},\n"
                        "   \"kept\": {\"state\": \"disabled\", \"reason\": \"kept\", "
                        "\"since\": 1700000000},\n"
                        "   \"noreason\": {\"state\": \"quarantined\"}\n"
                        " },\n"
                        " \"gates\": {}}\n");
    fh_log_set_level(FH_LOG_OFF);
    fh_opstate *o = fh_opstate_open(f->state);
    fh_log_set_level(FH_LOG_ERROR);
    assert_non_null(o);
    /* Bad entries are not corruption: the file stays where it is. */
    assert_int_equal(count_prefixed(f->state, CORRUPT, NULL, 0), 0);
    assert_int_equal(access(f->file, F_OK), 0);
    const char *ignored[] = {"bogus", "enabled", "draining", "number", "flat", "empty"};
    for (size_t i = 0; i < sizeof(ignored) / sizeof(ignored[0]); i++)
        if (overlay_state(o, ignored[i], NULL, 0) != FH_STATE_ENABLED)
            fail_msg("entry %s should have been ignored", ignored[i]);
    char why[64];
    assert_int_equal(overlay_state(o, "kept", why, sizeof(why)), FH_STATE_DISABLED);
    assert_string_equal(why, "kept");
    assert_int_equal(overlay_state(o, "noreason", why, sizeof(why)), FH_STATE_QUARANTINED);
    assert_string_equal(why, "");

    /* The next save leaves only what was understood, "since" kept. */
    assert_int_equal(fh_opstate_save(o), 0);
    fh_opstate_free(o);
    json_t *root = load_json(f->file);
    json_t *ov = json_object_get(root, "overlays");
    assert_int_equal(json_object_size(ov), 2);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(ov, "kept"), "since")),
                     1700000000);
    json_decref(root);
}

static void note_trip(void *ud, const char *overlay, const char *reason)
{
    json_t *seen = ud;
    json_object_set_new(seen, overlay, json_string(reason));
}

static void test_gates_in_the_file_are_restored(void **state)
{
    fixture *f = *state;
    write_text(f->file, "{\"format\": 1, \"overlays\": {},\n"
                        " \"gates\": {\"alpha\": {\"reason\": \"average token delta 40.0%\", "
                        "\"since\": 1700000000},\n"
                        "           \"beta\": {\"since\": 1700000001}}}\n");
    fh_opstate *o = fh_opstate_open(f->state);
    assert_non_null(o);
    fh_gates *g = fh_gates_new(NULL);
    assert_non_null(g);
    fh_log_set_level(FH_LOG_ERROR);
    fh_opstate_restore_gates(o, g, 5000);
    json_t *seen = json_object();
    assert_int_equal(fh_gates_tripped(g, note_trip, seen), 2);
    assert_string_equal(json_string_value(json_object_get(seen, "alpha")),
                        "average token delta 40.0%");
    /* A trip recorded without a reason still restores, with one. */
    const char *beta = json_string_value(json_object_get(seen, "beta"));
    assert_non_null(beta);
    assert_true(strlen(beta) > 0);
    json_decref(seen);
    /* A restored gate refuses requests like any tripped one. */
    fh_gate_cfg cfg = {.breaker_enabled = false,
                       .budget = {.hook_latency_ms = 50,
                                  .token_delta_warn_pct = 12,
                                  .token_delta_max_pct = 25,
                                  .token_window = 20,
                                  .consecutive_breaches = 3},
                       .quality_threshold = 0.8};
    fh_gate_ticket t;
    assert_int_equal(fh_gate_admit(fh_gates_get(g, "alpha"), &cfg, 6000, &t),
                     FH_REASON_BUDGET_TOKENS);
    fh_gates_free(g);
    fh_opstate_free(o);
}

/* A state folder that cannot be written: save fails (-1), the memory
 * keeps the decision, and the next save retries. Root ignores modes, so
 * the folder is taken away instead, which stops root too. */
static void test_unwritable_state_dir(void **state)
{
    fixture *f = *state;
    fh_opstate *o = fh_opstate_open(f->state);
    assert_non_null(o);
    fh_opstate_set_overlay(o, "alpha", FH_STATE_DISABLED, "x");
    assert_int_equal(rmdir(f->state), 0);
    fh_log_set_level(FH_LOG_OFF);
    assert_int_equal(fh_opstate_save(o), -1);
    assert_int_equal(fh_opstate_save(o), -1); /* still failing, still trying */
    fh_log_set_level(FH_LOG_ERROR);
    assert_int_equal(overlay_state(o, "alpha", NULL, 0), FH_STATE_DISABLED);
    assert_int_equal(mkdir(f->state, 0700), 0);
    assert_int_equal(fh_opstate_save(o), 0);
    json_t *root = load_json(f->file);
    assert_string_equal(overlay_field(root, "alpha", "state"), "disabled");
    json_decref(root);
    fh_opstate_free(o);
}

static void test_readonly_state_dir(void **state)
{
    fixture *f = *state;
    if (geteuid() == 0)
        skip(); /* root writes through mode 0500 */
    fh_opstate *o = fh_opstate_open(f->state);
    assert_non_null(o);
    fh_opstate_set_overlay(o, "alpha", FH_STATE_DISABLED, "x");
    assert_int_equal(chmod(f->state, 0500), 0);
    fh_log_set_level(FH_LOG_OFF);
    assert_int_equal(fh_opstate_save(o), -1);
    fh_log_set_level(FH_LOG_ERROR);
    assert_int_equal(access(f->file, F_OK), -1);
    assert_no_temporaries(f->state);
    assert_int_equal(chmod(f->state, 0700), 0);
    assert_int_equal(fh_opstate_save(o), 0);
    assert_int_equal(access(f->file, F_OK), 0);
    fh_opstate_free(o);
}

/* ---- with a registry and gates ------------------------------------------ */

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

typedef struct world {
    char plugins[PATH_MAX];
    char cache[PATH_MAX];
    char good_a[PATH_MAX], good_b[PATH_MAX];
} world;

static void make_world(fixture *f, world *w)
{
    xsnprintf(w->plugins, sizeof(w->plugins), "%s/plugins", f->root);
    assert_int_equal(mkdir(w->plugins, 0755), 0);
    assert_int_equal(chmod(w->plugins, 0755), 0);
    xsnprintf(w->cache, sizeof(w->cache), "%s/cache", f->root);
    char from[PATH_MAX];
    xsnprintf(from, sizeof(from), "%s/good_a.so", FH_TEST_PLUGIN_DIR);
    xsnprintf(w->good_a, sizeof(w->good_a), "%s/good_a.so", w->plugins);
    copy_file(from, w->good_a, 0644);
    xsnprintf(from, sizeof(from), "%s/good_b.so", FH_TEST_PLUGIN_DIR);
    xsnprintf(w->good_b, sizeof(w->good_b), "%s/good_b.so", w->plugins);
    copy_file(from, w->good_b, 0644);
}

static fh_registry *new_registry(const world *w, fh_opstate *state_from)
{
    fh_registry_opts o = {
        .loader = {.cache_dir = w->cache, .daemon_uid = getuid()},
        .host_api = &test_host,
    };
    if (state_from) {
        o.state_for = fh_opstate_overlay;
        o.state_ud = state_from;
    }
    fh_registry *r = fh_registry_new(&o);
    assert_non_null(r);
    return r;
}

static void load_ok(fh_registry *r, const char *path)
{
    char msg[1024];
    fh_load_err e = fh_registry_load(r, path, msg, sizeof(msg), NULL);
    if (e != FH_LOAD_OK)
        fail_msg("load %s: %s: %s", path, fh_load_err_name(e), msg);
}

static const fh_gate_cfg trip_cfg = {
    .breaker_enabled = false,
    .budget = {.hook_latency_ms = 50,
               .token_delta_warn_pct = 12,
               .token_delta_max_pct = 25,
               .token_window = 20,
               .consecutive_breaches = 3},
    .quality_threshold = 0.8,
};

/* Trips `name`'s budget gate the way the pipeline does: an overlaid
 * request whose token delta is far over token_delta_max_pct. */
static void trip_by_request(fh_gates *g, const char *name, uint64_t now_ms)
{
    fh_gate_ticket t;
    assert_int_equal(fh_gate_admit(fh_gates_get(g, name), &trip_cfg, now_ms, &t),
                     FH_REASON_APPLIED);
    fh_gate_finish(&t, &trip_cfg, FH_OUT_SUCCESS, 100, 400.0, 1.0, NAN, now_ms);
}

static void test_sync_follows_registry_and_gates(void **state)
{
    fixture *f = *state;
    world w;
    make_world(f, &w);
    fh_registry *reg = new_registry(&w, NULL);
    load_ok(reg, w.good_a);
    load_ok(reg, w.good_b);
    fh_gates *gates = fh_gates_new(NULL);
    assert_non_null(gates);

    fh_opstate *o = fh_opstate_open(f->state);
    assert_non_null(o);
    /* The first sync writes the file: nothing decided yet. */
    assert_int_equal(fh_opstate_sync(o, reg, gates), 0);
    json_t *root = load_json(f->file);
    assert_int_equal(json_object_size(json_object_get(root, "overlays")), 0);
    json_decref(root);
    struct stat before, now;
    file_identity(f->file, &before);
    /* Nothing moved: nothing written. */
    assert_int_equal(fh_opstate_sync(o, reg, gates), 0);
    file_identity(f->file, &now);
    assert_true(same_file(&before, &now));

    /* disable in the registry -> the file records it. */
    assert_int_equal(fh_registry_disable(reg, "good_a"), 0);
    assert_int_equal(fh_opstate_sync(o, reg, gates), 0);
    root = load_json(f->file);
    assert_string_equal(overlay_field(root, "good_a", "state"), "disabled");
    assert_null(json_object_get(json_object_get(root, "overlays"), "good_b"));
    json_decref(root);
    assert_int_equal(overlay_state(o, "good_a", NULL, 0), FH_STATE_DISABLED);

    /* quarantine -> recorded with its reason. */
    assert_int_equal(fh_registry_quarantine(reg, "good_b", "apply() never returned"), 0);
    assert_int_equal(fh_opstate_sync(o, reg, gates), 0);
    root = load_json(f->file);
    assert_string_equal(overlay_field(root, "good_b", "state"), "quarantined");
    assert_string_equal(overlay_field(root, "good_b", "reason"), "apply() never returned");
    json_decref(root);

    /* A budget gate tripping -> "gates" has it, with the reason. */
    trip_by_request(gates, "good_b", 10000);
    assert_int_equal(fh_opstate_sync(o, reg, gates), 0);
    root = load_json(f->file);
    json_t *gb = json_object_get(json_object_get(root, "gates"), "good_b");
    assert_non_null(gb);
    const char *reason = json_string_value(json_object_get(gb, "reason"));
    assert_non_null(reason);
    assert_non_null(strstr(reason, "token_delta_max_pct"));
    json_int_t since = json_integer_value(json_object_get(gb, "since"));
    assert_true(since > 1600000000);
    json_decref(root);

    /* An unrelated change later keeps the gate's "since". */
    assert_int_equal(fh_registry_enable(reg, "good_a"), 0);
    assert_int_equal(fh_opstate_sync(o, reg, gates), 0);
    root = load_json(f->file);
    assert_null(json_object_get(json_object_get(root, "overlays"), "good_a")); /* forgotten */
    assert_int_equal(json_integer_value(json_object_get(
                         json_object_get(json_object_get(root, "gates"), "good_b"), "since")),
                     since);
    json_decref(root);

    /* An overlay not loaded any more keeps what the file says. */
    assert_int_equal(fh_registry_unload(reg, "good_b", 1000), 0);
    fh_registry_reap(reg);
    assert_int_equal(fh_opstate_sync(o, reg, gates), 0);
    root = load_json(f->file);
    assert_string_equal(overlay_field(root, "good_b", "state"), "quarantined");
    json_decref(root);

    /* The operator's reset clears the gate in the file. */
    fh_gates *gates2 = fh_gates_new(NULL);
    assert_non_null(gates2);
    trip_by_request(gates2, "good_a", 20000);
    assert_int_equal(fh_opstate_sync(o, reg, gates2), 0);
    assert_int_equal(fh_gates_reset(gates2, "good_a"), 0);
    assert_int_equal(fh_opstate_sync(o, reg, gates2), 0);
    root = load_json(f->file);
    assert_int_equal(json_object_size(json_object_get(root, "gates")), 0);
    json_decref(root);
    fh_gates_free(gates2);

    assert_no_temporaries(f->state);
    assert_int_equal(f->file[0], '/');
    fh_opstate_free(o);
    fh_gates_free(gates);
    fh_registry_free(reg, 1000);
}

/* The daemon's restart: what sync wrote brings back the gate trips
 * (restore_gates) and the overlay states (registry state_for). */
static void test_restart_restores_state(void **state)
{
    fixture *f = *state;
    world w;
    make_world(f, &w);
    fh_registry *reg = new_registry(&w, NULL);
    load_ok(reg, w.good_a);
    load_ok(reg, w.good_b);
    fh_gates *gates = fh_gates_new(NULL);
    assert_non_null(gates);
    fh_opstate *o = fh_opstate_open(f->state);
    assert_non_null(o);
    assert_int_equal(fh_registry_quarantine(reg, "good_a", "crashed in apply()"), 0);
    assert_int_equal(fh_registry_disable(reg, "good_b"), 0);
    trip_by_request(gates, "good_b", 10000);
    assert_int_equal(fh_opstate_sync(o, reg, gates), 0);
    fh_opstate_free(o);
    fh_gates_free(gates);
    fh_registry_free(reg, 1000);

    /* The next run. */
    o = fh_opstate_open(f->state);
    assert_non_null(o);
    gates = fh_gates_new(NULL);
    assert_non_null(gates);
    fh_log_set_level(FH_LOG_ERROR);
    fh_opstate_restore_gates(o, gates, 50000);
    json_t *seen = json_object();
    assert_int_equal(fh_gates_tripped(gates, note_trip, seen), 1);
    const char *reason = json_string_value(json_object_get(seen, "good_b"));
    assert_non_null(reason);
    assert_non_null(strstr(reason, "token_delta_max_pct"));
    json_decref(seen);
    fh_gate_ticket t;
    assert_int_equal(fh_gate_admit(fh_gates_get(gates, "good_b"), &trip_cfg, 50001, &t),
                     FH_REASON_BUDGET_TOKENS);

    reg = new_registry(&w, o);
    load_ok(reg, w.good_a);
    load_ok(reg, w.good_b);
    fh_overlay_info info;
    assert_int_equal(fh_registry_get(reg, "good_a", &info), 0);
    assert_int_equal(info.state, FH_STATE_QUARANTINED);
    assert_string_equal(info.reason, "crashed in apply()");
    assert_int_equal(fh_registry_get(reg, "good_b", &info), 0);
    assert_int_equal(info.state, FH_STATE_DISABLED);
    fh_overlay_state st;
    assert_null(fh_registry_acquire(reg, "good_a", &st));
    assert_int_equal(st, FH_STATE_QUARANTINED);

    /* Syncing the restored world changes nothing in the file. */
    struct stat before, now;
    file_identity(f->file, &before);
    assert_int_equal(fh_opstate_sync(o, reg, gates), 0);
    file_identity(f->file, &now);
    assert_true(same_file(&before, &now));

    /* Enabling it again is persisted as "forgotten". */
    assert_int_equal(fh_registry_enable(reg, "good_a"), 0);
    assert_int_equal(fh_opstate_sync(o, reg, gates), 0);
    assert_int_equal(overlay_state(o, "good_a", NULL, 0), FH_STATE_ENABLED);
    json_t *root = load_json(f->file);
    assert_null(json_object_get(json_object_get(root, "overlays"), "good_a"));
    json_decref(root);

    fh_opstate_free(o);
    fh_gates_free(gates);
    fh_registry_free(reg, 1000);
}

/* A trip set with fh_gates_trip (what restore_gates does at start) is in
 * the file after the first sync, the daemon's order. */
static void test_trip_before_first_sync(void **state)
{
    fixture *f = *state;
    world w;
    make_world(f, &w);
    fh_registry *reg = new_registry(&w, NULL);
    fh_gates *gates = fh_gates_new(NULL);
    assert_non_null(gates);
    assert_int_equal(fh_gates_trip(gates, "good_a", "tripped by hand", 1000), 0);
    fh_opstate *o = fh_opstate_open(f->state);
    assert_non_null(o);
    assert_int_equal(fh_opstate_sync(o, reg, gates), 0);
    json_t *root = load_json(f->file);
    json_t *ga = json_object_get(json_object_get(root, "gates"), "good_a");
    assert_non_null(ga);
    assert_string_equal(json_string_value(json_object_get(ga, "reason")), "tripped by hand");
    json_decref(root);
    fh_opstate_free(o);
    fh_gates_free(gates);
    fh_registry_free(reg, 1000);
}

/* A sync whose write fails is retried at the next sync even when neither
 * the registry nor the gates moved since. */
static void test_sync_retries_after_failure(void **state)
{
    fixture *f = *state;
    world w;
    make_world(f, &w);
    fh_registry *reg = new_registry(&w, NULL);
    load_ok(reg, w.good_a);
    fh_opstate *o = fh_opstate_open(f->state);
    assert_non_null(o);
    assert_int_equal(fh_registry_disable(reg, "good_a"), 0);
    assert_int_equal(rmdir(f->state), 0);
    fh_log_set_level(FH_LOG_OFF);
    assert_int_equal(fh_opstate_sync(o, reg, NULL), -1);
    fh_log_set_level(FH_LOG_ERROR);
    assert_int_equal(mkdir(f->state, 0700), 0);
    assert_int_equal(fh_opstate_sync(o, reg, NULL), 0);
    json_t *root = load_json(f->file);
    assert_string_equal(overlay_field(root, "good_a", "state"), "disabled");
    json_decref(root);
    fh_opstate_free(o);
    fh_registry_free(reg, 1000);
}

int main(void)
{
    fh_log_set_level(FH_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_empty_folder_everything_enabled, setup, teardown),
        cmocka_unit_test_setup_teardown(test_save_and_reopen, setup, teardown),
        cmocka_unit_test_setup_teardown(test_enabled_forgets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_save_writes_only_changes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_files_are_set_aside, setup, teardown),
        cmocka_unit_test_setup_teardown(test_invalid_entries_ignored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gates_in_the_file_are_restored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unwritable_state_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_readonly_state_dir, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sync_follows_registry_and_gates, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_restores_state, setup, teardown),
        cmocka_unit_test_setup_teardown(test_trip_before_first_sync, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sync_retries_after_failure, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
