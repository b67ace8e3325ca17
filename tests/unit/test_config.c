/*
 * test_config.c - fusion-host.yaml loading (host/config.c, host/yamlutil.c):
 * the shipped files, defaults, relative path resolution, the free-form
 * overlay config as JSON, and a table of hostile inputs, each asserting the
 * exact "FILE:LINE:COL: key.path: problem" it must produce.
 * Single-threaded; each test works in its own temporary folder.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "config.h"
#include "yamlutil.h"

#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- helpers ------------------------------------------------------------------ */

static char *make_tmpdir(void)
{
    char tmpl[] = "/tmp/fh-test-config-XXXXXX";
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    /* Canonical, so expected paths compare equal to realpath'd ones. */
    char *real = realpath(d, NULL);
    assert_non_null(real);
    return real;
}

static void rm_rf(const char *dir)
{
    char *cmd = NULL;
    assert_true(asprintf(&cmd, "rm -rf '%s'", dir) > 0);
    assert_int_equal(system(cmd), 0);
    free(cmd);
}

static char *write_file(const char *dir, const char *name, const char *text, size_t len)
{
    char *path = NULL;
    assert_true(asprintf(&path, "%s/%s", dir, name) > 0);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    return path;
}

static void dump_diag(const fh_diag *d)
{
    for (size_t i = 0; i < d->count; i++)
        print_message("  diag[%zu] %s\n", i, d->items[i]);
}

/* True when some diagnostic starts with `prefix` and contains `needle`. */
static bool diag_has(const fh_diag *d, const char *prefix, const char *needle)
{
    for (size_t i = 0; i < d->count; i++)
        if (!strncmp(d->items[i], prefix, strlen(prefix)) &&
            (!needle || strstr(d->items[i], needle)))
            return true;
    return false;
}

static char *src_path(const char *rel)
{
    char *p = NULL;
    assert_true(asprintf(&p, "%s/%s", FH_SOURCE_DIR, rel) > 0);
    return p;
}

static char *real_src(const char *rel)
{
    char *p = src_path(rel);
    char *r = realpath(p, NULL);
    assert_non_null(r);
    free(p);
    return r;
}

/* ---- the shipped files ------------------------------------------------------- */

static void test_dev_config_loads(void **state)
{
    (void)state;
    fh_diag d = {0};
    char *path = src_path("config/fusion-host.dev.yaml");
    fh_config *c = fh_config_load(path, &d);
    dump_diag(&d);
    assert_non_null(c);
    assert_int_equal(d.count, 0);

    char *cfgdir = real_src("config");
    char *root = real_src(".");
    char *expect = NULL;
    assert_string_equal(c->dir, cfgdir);
    assert_true(asprintf(&expect, "%s/fusion-host.dev.yaml", cfgdir) > 0);
    assert_string_equal(c->path, expect);
    free(expect);
    assert_true(asprintf(&expect, "%s/build/plugins", root) > 0);
    assert_string_equal(c->plugins.dir, expect);
    free(expect);
    assert_true(asprintf(&expect, "%s/build/dev-state", root) > 0);
    assert_string_equal(c->state_dir, expect);
    free(expect);
    assert_true(asprintf(&expect, "unix:%s/build/dev-state/admin.sock", root) > 0);
    assert_string_equal(c->admin.listen, expect);
    free(expect);
    assert_true(asprintf(&expect, "%s/overlay_feature_flags.yaml", cfgdir) > 0);
    assert_string_equal(c->feature_flags, expect);
    free(expect);
    assert_true(asprintf(&expect, "%s/micro_overlays", cfgdir) > 0);
    assert_string_equal(c->micro_overlays_dir, expect);
    free(expect);
    assert_string_equal(c->listen, "127.0.0.1:8080");
    assert_string_equal(c->upstream.base_url, "http://127.0.0.1:8000/v1");
    assert_string_equal(c->environment, "development");
    assert_string_equal(c->admin.token_file, "");
    assert_int_equal(c->overlay_count, 2);
    assert_string_equal(c->overlays[0].name, "refund_lot_switch");
    assert_string_equal(c->overlays[1].name, "state_model_first");
    assert_string_equal(c->overlays[0].config_json, "{}");

    free(cfgdir);
    free(root);
    free(path);
    fh_config_free(c);
    fh_diag_clear(&d);
}

static void test_prod_config_loads(void **state)
{
    (void)state;
    fh_diag d = {0};
    char *path = src_path("config/fusion-host.yaml");
    fh_config *c = fh_config_load(path, &d);
    dump_diag(&d);
    assert_non_null(c);
    char *cfgdir = real_src("config");
    char *expect = NULL;
    assert_string_equal(c->listen, "127.0.0.1:8080");
    assert_string_equal(c->admin.listen, "unix:/run/fusion-host/admin.sock");
    assert_string_equal(c->admin.token_file, "");
    assert_string_equal(c->upstream.base_url, "http://127.0.0.1:8000/v1");
    assert_string_equal(c->upstream.api_key_env, "FUSION_UPSTREAM_API_KEY");
    assert_int_equal(c->upstream.timeout_ms, 60000);
    assert_int_equal(c->upstream.connect_timeout_ms, 2000);
    assert_string_equal(c->plugins.dir, "/usr/lib/fusion-host/plugins");
    assert_true(c->plugins.watch);
    assert_string_equal(c->state_dir, "/var/lib/fusion-host");
    assert_true(asprintf(&expect, "%s/overlay_feature_flags.yaml", cfgdir) > 0);
    assert_string_equal(c->feature_flags, expect);
    free(expect);
    assert_true(asprintf(&expect, "%s/micro_overlays", cfgdir) > 0);
    assert_string_equal(c->micro_overlays_dir, expect);
    free(expect);
    assert_string_equal(c->environment, "production");
    const fh_overlay_cfg *o = fh_config_overlay(c, "refund_lot_switch");
    assert_string_equal(o->name, "refund_lot_switch");
    assert_int_equal(o->breaker.failure_threshold, 5);
    assert_int_equal(o->breaker.recovery_timeout_s, 300);
    assert_int_equal(o->breaker.half_open_max_calls, 3);
    assert_int_equal(o->budget.hook_latency_ms, 50);
    assert_true(o->budget.token_delta_warn_pct == 12);
    assert_true(o->budget.token_delta_max_pct == 25);
    assert_int_equal(o->budget.token_window, 20);
    assert_int_equal(o->budget.consecutive_breaches, 3);
    assert_int_equal(o->budget.tokens_per_minute, 0);
    assert_true(o->quality_threshold == 0.8);
    assert_int_equal(c->limits.max_body_bytes, 1048576);
    assert_int_equal(c->limits.max_connections, 10000);
    assert_int_equal(c->metrics.max_series_per_metric, 1000);
    assert_int_equal(c->drain_timeout_ms, 10000);
    free(cfgdir);
    free(path);
    fh_config_free(c);
    fh_diag_clear(&d);
}

/* ---- defaults and paths -------------------------------------------------------- */

static void test_defaults(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    const char *text = "environment: production\n";
    char *path = write_file(dir, "c.yaml", text, strlen(text));
    fh_diag d = {0};
    fh_config *c = fh_config_load(path, &d);
    dump_diag(&d);
    assert_non_null(c);
    char *expect = NULL;
    assert_string_equal(c->path, path);
    assert_string_equal(c->dir, dir);
    assert_string_equal(c->listen, "127.0.0.1:8080");
    assert_string_equal(c->admin.listen, "unix:/run/fusion-host/admin.sock");
    assert_string_equal(c->admin.token_file, "");
    assert_string_equal(c->upstream.base_url, "http://127.0.0.1:8000/v1");
    assert_string_equal(c->upstream.api_key_env, "FUSION_UPSTREAM_API_KEY");
    assert_int_equal(c->upstream.timeout_ms, 60000);
    assert_int_equal(c->upstream.connect_timeout_ms, 2000);
    assert_string_equal(c->plugins.dir, "/usr/lib/fusion-host/plugins");
    assert_true(c->plugins.watch);
    assert_string_equal(c->state_dir, "/var/lib/fusion-host");
    assert_true(asprintf(&expect, "%s/overlay_feature_flags.yaml", dir) > 0);
    assert_string_equal(c->feature_flags, expect);
    free(expect);
    assert_true(asprintf(&expect, "%s/micro_overlays", dir) > 0);
    assert_string_equal(c->micro_overlays_dir, expect);
    free(expect);
    assert_string_equal(c->environment, "production");
    assert_int_equal(c->overlay_count, 0);
    assert_int_equal(c->limits.max_body_bytes, 1048576);
    assert_int_equal(c->limits.max_connections, 10000);
    assert_int_equal(c->metrics.max_series_per_metric, 1000);
    assert_int_equal(c->drain_timeout_ms, 10000);
    assert_int_equal(c->limits.max_header_bytes, 8192);
    assert_int_equal(c->limits.max_connections_per_ip, 1000); /* a tenth of max_connections */
    assert_int_equal(c->limits.header_timeout_ms, 10000);
    assert_int_equal(c->limits.body_min_bytes_per_s, 1024);
    assert_int_equal(c->limits.idle_timeout_ms, 30000);
    assert_int_equal(c->workers, 0);
    assert_int_equal(c->hooks.deadline_ms, 2000);
    /* 0 workers: the CPUs this process may run on, at least one. */
    cpu_set_t set;
    assert_int_equal(sched_getaffinity(0, sizeof(set), &set), 0);
    int cpus = CPU_COUNT(&set);
    assert_int_equal(fh_config_workers(c), cpus < 1 ? 1 : (cpus > 64 ? 64 : cpus));

    /* An overlay the file does not name gets the documented defaults. */
    const fh_overlay_cfg *o = fh_config_overlay(c, "refund_lot_switch");
    assert_non_null(o);
    assert_int_equal(o->breaker.failure_threshold, 5);
    assert_int_equal(o->breaker.recovery_timeout_s, 300);
    assert_int_equal(o->breaker.half_open_max_calls, 3);
    assert_int_equal(o->budget.hook_latency_ms, 50);
    assert_true(o->budget.token_delta_warn_pct == 12);
    assert_true(o->budget.token_delta_max_pct == 25);
    assert_int_equal(o->budget.token_window, 20);
    assert_int_equal(o->budget.consecutive_breaches, 3);
    assert_int_equal(o->budget.tokens_per_minute, 0);
    assert_true(o->quality_threshold == 0.8);
    assert_string_equal(o->config_json, "{}");

    fh_overlay_cfg od;
    memset(&od, 0xff, sizeof(od));
    fh_overlay_cfg_defaults(&od);
    assert_int_equal(od.breaker.failure_threshold, 5);
    assert_int_equal(od.budget.token_window, 20);
    assert_true(od.quality_threshold == 0.8);

    fh_config_free(c);
    fh_diag_clear(&d);
    free(path);
    rm_rf(dir);
    free(dir);
}

static void test_relative_paths(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    char *sub = NULL;
    assert_true(asprintf(&sub, "%s/etc", dir) > 0);
    assert_int_equal(mkdir(sub, 0700), 0);
    const char *text = "admin:\n"
                       "  listen: \"[::1]:9090\"\n"
                       "  token_file: \"secrets/admin.token\"\n"
                       "plugins: { dir: \"./plugins\" }\n"
                       "state_dir: \"../state\"\n"
                       "feature_flags: \"flags/ff.yaml\"\n"
                       "micro_overlays_dir: \"/abs/micro\"\n";
    char *path = write_file(sub, "c.yaml", text, strlen(text));
    fh_diag d = {0};

    /* Loaded through a relative path from another working directory: the
     * result must not depend on the cwd. */
    char cwd[PATH_MAX];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(dir), 0);
    fh_config *c = fh_config_load("etc/../etc/c.yaml", &d);
    assert_int_equal(chdir(cwd), 0);
    dump_diag(&d);
    assert_non_null(c);

    char *expect = NULL;
    assert_string_equal(c->path, path);
    assert_string_equal(c->dir, sub);
    assert_string_equal(c->admin.listen, "[::1]:9090");
    assert_true(asprintf(&expect, "%s/secrets/admin.token", sub) > 0);
    assert_string_equal(c->admin.token_file, expect);
    free(expect);
    assert_true(asprintf(&expect, "%s/plugins", sub) > 0);
    assert_string_equal(c->plugins.dir, expect);
    free(expect);
    assert_true(asprintf(&expect, "%s/state", dir) > 0);
    assert_string_equal(c->state_dir, expect);
    free(expect);
    assert_true(asprintf(&expect, "%s/flags/ff.yaml", sub) > 0);
    assert_string_equal(c->feature_flags, expect);
    free(expect);
    assert_string_equal(c->micro_overlays_dir, "/abs/micro");
    fh_config_free(c);

    /* A relative unix socket path resolves too. */
    const char *text2 = "admin: { listen: \"unix:run/a.sock\" }\n";
    char *path2 = write_file(sub, "d.yaml", text2, strlen(text2));
    c = fh_config_load(path2, &d);
    assert_non_null(c);
    assert_true(asprintf(&expect, "unix:%s/run/a.sock", sub) > 0);
    assert_string_equal(c->admin.listen, expect);
    free(expect);
    fh_config_free(c);

    fh_diag_clear(&d);
    free(path);
    free(path2);
    rm_rf(dir);
    free(sub);
    free(dir);
}

static void test_path_resolve(void **state)
{
    (void)state;
    static const struct {
        const char *base, *path, *want;
    } cases[] = {
        {"/a/b", "c", "/a/b/c"},       {"/a/b", "/x/y", "/x/y"},
        {"/a/b", "./c", "/a/b/c"},     {"/a/b", "../c", "/a/c"},
        {"/a/b", "../../c", "/c"},     {"/a/b", "../../../c", "/c"},
        {"/a/b/", "c/d", "/a/b/c/d"},  {"/a/b", ".", "/a/b"},
        {"/a/b", "..", "/a"},          {"/", "c", "/c"},
        {"/a", "x/../y", "/a/x/../y"}, /* inner ".." kept: x may be a symlink */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *got = fh_path_resolve(cases[i].base, cases[i].path);
        assert_non_null(got);
        if (strcmp(got, cases[i].want))
            print_message("resolve(%s, %s) = %s, want %s\n", cases[i].base, cases[i].path, got,
                          cases[i].want);
        assert_string_equal(got, cases[i].want);
        free(got);
    }
}

static void test_overlay_config_json(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    const char *text = "overlays:\n"
                       "  refund_lot_switch:\n"
                       "    budget: { tokens_per_minute: 120000, token_delta_warn_pct: 10.5 }\n"
                       "    config:\n"
                       "      a: 1\n"
                       "      b: [true, \"x\", 2.5, null, -3, \"007\", yes]\n"
                       "      c: { d: \"e\", \"with space\": 'q' }\n"
                       "      e:\n"
                       "  state_model_first:\n"
                       "  third_one: {}\n";
    char *path = write_file(dir, "c.yaml", text, strlen(text));
    fh_diag d = {0};
    fh_config *c = fh_config_load(path, &d);
    dump_diag(&d);
    assert_non_null(c);
    assert_int_equal(c->overlay_count, 3);
    const fh_overlay_cfg *o = fh_config_overlay(c, "refund_lot_switch");
    assert_string_equal(o->config_json, "{\"a\":1,\"b\":[true,\"x\",2.5,null,-3,\"007\",\"yes\"],"
                                        "\"c\":{\"d\":\"e\",\"with space\":\"q\"},\"e\":null}");
    assert_int_equal(o->budget.tokens_per_minute, 120000);
    assert_true(o->budget.token_delta_warn_pct == 10.5);
    assert_int_equal(o->budget.token_window, 20); /* untouched keys keep defaults */
    const fh_overlay_cfg *s = fh_config_overlay(c, "state_model_first");
    assert_string_equal(s->name, "state_model_first");
    assert_string_equal(s->config_json, "{}");
    assert_int_equal(s->breaker.failure_threshold, 5);
    assert_string_equal(c->overlays[2].name, "third_one");
    fh_config_free(c);
    fh_diag_clear(&d);
    free(path);
    rm_rf(dir);
    free(dir);
}

/* The thread-model keys as written: an explicit worker count is used as is. */
static void test_thread_keys(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    const char *text =
        "workers: 3\nhooks:\n  deadline_ms: 10\nlimits:\n  max_header_bytes: 65536\n";
    char *path = write_file(dir, "c.yaml", text, strlen(text));
    fh_diag d = {0};
    fh_config *c = fh_config_load(path, &d);
    dump_diag(&d);
    assert_non_null(c);
    assert_int_equal(c->workers, 3);
    assert_int_equal(fh_config_workers(c), 3);
    assert_int_equal(c->hooks.deadline_ms, 10);
    assert_int_equal(c->limits.max_header_bytes, 65536);
    fh_config_free(c);
    fh_diag_clear(&d);
    free(path);
    rm_rf(dir);
    free(dir);
}

static fh_config *load_text(const char *dir, const char *text)
{
    char *path = write_file(dir, "c.yaml", text, strlen(text));
    fh_diag d = {0};
    fh_config *c = fh_config_load(path, &d);
    dump_diag(&d);
    fh_diag_clear(&d);
    free(path);
    return c;
}

/* The front door's limits, and 0 as "a tenth of max_connections". */
static void test_door_limits(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    fh_config *c = load_text(dir, "limits: { max_connections: 50, max_connections_per_ip: 0,\n"
                                  "  header_timeout_ms: 250, body_min_bytes_per_s: 0,\n"
                                  "  idle_timeout_ms: 5000 }\n");
    assert_non_null(c);
    assert_int_equal(c->limits.max_connections_per_ip, 5);
    assert_int_equal(c->limits.header_timeout_ms, 250);
    assert_int_equal(c->limits.body_min_bytes_per_s, 0);
    assert_int_equal(c->limits.idle_timeout_ms, 5000);
    fh_config_free(c);
    c = load_text(dir, "limits: { max_connections_per_ip: 7 }\n");
    assert_non_null(c);
    assert_int_equal(c->limits.max_connections_per_ip, 7);
    fh_config_free(c);
    assert_null(load_text(dir, "limits: { header_timeout_ms: 10 }\n"));
    assert_null(load_text(dir, "limits: { max_connections_per_ip: -1 }\n"));
    rm_rf(dir);
    free(dir);
}

/* Which changes a reload refuses: each restart-only key, named; others pass. */
static void test_restart_keys(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    fh_config *base = load_text(dir, "listen: \"127.0.0.1:8080\"\n");
    assert_non_null(base);
    static const struct {
        const char *text, *key;
    } cases[] = {
        {"listen: \"127.0.0.1:8081\"\n", "listen"},
        {"listen: \"127.0.0.1:8080\"\nworkers: 63\n", "workers"},
        {"listen: \"127.0.0.1:8080\"\nstate_dir: \"/var/lib/other\"\n", "state_dir"},
        {"listen: \"127.0.0.1:8080\"\nadmin: { listen: \"unix:/tmp/x.sock\" }\n", "admin.listen"},
        {"listen: \"127.0.0.1:8080\"\nhooks: { deadline_ms: 500 }\n", "hooks.deadline_ms"},
        {"listen: \"127.0.0.1:8080\"\nmetrics: { max_series_per_metric: 10 }\n",
         "metrics.max_series_per_metric"},
        {"listen: \"127.0.0.1:8080\"\nupstream: { base_url: \"http://127.0.0.1:9/v1\", "
         "timeout_ms: 5 }\nlimits: { max_body_bytes: 2048, header_timeout_ms: 500 }\n"
         "plugins: { dir: \"elsewhere\" }\ndrain_timeout_ms: 100\n",
         NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        fh_config *next = load_text(dir, cases[i].text);
        assert_non_null(next);
        const char *key = fh_config_restart_key(base, next);
        if (cases[i].key)
            assert_string_equal(key, cases[i].key);
        else
            assert_null(key);
        fh_config_free(next);
    }
    fh_config_free(base);
    rm_rf(dir);
    free(dir);
}

/* A gateway others can reach is not an open one by accident: without
 * auth.keys_file, only loopback listens unless allow_anonymous says so. */
static void test_open_gateway_refused(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    static const char *loop[] = {"127.0.0.1:8080", "127.8.9.10:1", "[::1]:80", "localhost:9"};
    static const char *open[] = {"0.0.0.0:8080", "[::]:80", "10.0.0.1:80", "my-host.example:80"};
    for (size_t i = 0; i < 4; i++) {
        char *text = NULL;
        assert_true(asprintf(&text, "listen: \"%s\"\n", loop[i]) > 0);
        char *path = write_file(dir, "c.yaml", text, strlen(text));
        fh_diag d = {0};
        fh_config *c = fh_config_load(path, &d);
        assert_non_null(c);
        fh_config_free(c);
        free(path);
        free(text);
        assert_true(asprintf(&text, "listen: \"%s\"\n", open[i]) > 0);
        path = write_file(dir, "c.yaml", text, strlen(text));
        c = fh_config_load(path, &d);
        assert_null(c);
        assert_int_equal(d.count, 1);
        assert_non_null(strstr(d.items[0], "auth.keys_file"));
        fh_diag_clear(&d);
        free(path);
        free(text);
    }
    rm_rf(dir);
    free(dir);
}

static void test_valid_listen_forms(void **state)
{
    (void)state;
    static const char *ok[] = {"127.0.0.1:8080",     "[::1]:8080",     "localhost:1",
                               "0.0.0.0:65535",      "127.0.0.1:0",    "[::]:443",
                               "my-host.example:80", "[fe80::1]:9000", "10.0.0.1:00080"};
    char *dir = make_tmpdir();
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        char *text = NULL;
        /* Beyond loopback without client keys needs allow_anonymous (below). */
        assert_true(asprintf(&text, "listen: \"%s\"\nauth: { allow_anonymous: true }\n", ok[i]) >
                    0);
        char *path = write_file(dir, "c.yaml", text, strlen(text));
        fh_diag d = {0};
        fh_config *c = fh_config_load(path, &d);
        if (!c)
            dump_diag(&d);
        assert_non_null(c);
        assert_string_equal(c->listen, ok[i]);
        fh_config_free(c);
        fh_diag_clear(&d);
        free(path);
        free(text);
    }
    rm_rf(dir);
    free(dir);
}

/* ---- hostile inputs ------------------------------------------------------------ */

typedef struct bad_case {
    const char *name;
    const char *text;
    size_t len; /* 0: strlen(text) */
    size_t line, col;
    const char *key; /* NULL: no key path in the message */
    const char *needle;
} bad_case;

static const bad_case bad_cases[] = {
    {"unknown top-level key", "listn: \"127.0.0.1:8080\"\n", 0, 1, 1, "listn",
     "unknown key \"listn\" (did you mean 'listen'?); known keys: listen, admin, upstream"},
    {"unknown nested key", "upstream:\n  timeot_ms: 5\n", 0, 2, 3, "upstream.timeot_ms",
     "did you mean 'timeout_ms'?"},
    {"unknown overlay key", "overlays:\n  refund_lot_switch:\n    breakr: {}\n", 0, 3, 5,
     "overlays.refund_lot_switch.breakr",
     "known keys: breaker, budget, quality_threshold, rule_pass_mark, config"},
    {"string for integer", "upstream:\n  timeout_ms: \"fast\"\n", 0, 2, 15, "upstream.timeout_ms",
     "must be an integer from 1 to 3600000; got the string \"fast\""},
    {"quoted number for integer", "drain_timeout_ms: \"5\"\n", 0, 1, 19, "drain_timeout_ms",
     "must be an integer"},
    {"float for integer", "limits:\n  max_connections: 10.5\n", 0, 2, 20, "limits.max_connections",
     "must be an integer from 1 to 1000000; got 10.5"},
    {"mapping for string", "listen:\n  host: x\n", 0, 2, 3, "listen",
     "must be a string; got a mapping"},
    {"list for mapping", "upstream: [1, 2]\n", 0, 1, 11, "upstream",
     "must be a mapping (key: value); got a list"},
    {"out of range",
     "overlays:\n  refund_lot_switch:\n    breaker:\n      failure_threshold: 5000\n", 0, 4, 26,
     "overlays.refund_lot_switch.breaker.failure_threshold",
     "must be an integer from 1 to 1000; got 5000"},
    {"negative", "drain_timeout_ms: -1\n", 0, 1, 19, "drain_timeout_ms",
     "must be an integer from 0 to 3600000; got -1"},
    {"too many workers", "workers: 65\n", 0, 1, 10, "workers",
     "must be an integer from 0 to 64; got 65"},
    {"hook deadline too short", "hooks: { deadline_ms: 5 }\n", 0, 1, 23, "hooks.deadline_ms",
     "must be an integer from 10 to 60000; got 5"},
    {"unknown hooks key", "hooks: { deadline: 5 }\n", 0, 1, 10, "hooks.deadline",
     "unknown key \"deadline\"; known keys: deadline_ms"},
    {"header buffer too small", "limits: { max_header_bytes: 1024 }\n", 0, 1, 29,
     "limits.max_header_bytes", "must be an integer from 4096 to 65536; got 1024"},
    {"huge integer", "limits: { max_body_bytes: 99999999999999999999999 }\n", 0, 1, 27,
     "limits.max_body_bytes", "must be an integer from 1024 to 1073741824"},
    {"quality out of range", "overlays:\n  state_model_first: { quality_threshold: 1.5 }\n", 0, 2,
     43, "overlays.state_model_first.quality_threshold", "must be a number from 0 to 1; got 1.5"},
    {"nan threshold", "overlays:\n  state_model_first: { quality_threshold: .nan }\n", 0, 2, 43,
     "overlays.state_model_first.quality_threshold", "must be a number from 0 to 1"},
    {"boolean yes", "plugins:\n  watch: yes\n", 0, 2, 10, "plugins.watch",
     "must be true or false; got yes"},
    {"boolean quoted", "plugins:\n  watch: \"true\"\n", 0, 2, 10, "plugins.watch",
     "must be true or false; got the string \"true\""},
    {"listen without port", "listen: \"localhost\"\n", 0, 1, 9, "listen", "port missing"},
    {"listen port 70000", "listen: \"127.0.0.1:70000\"\n", 0, 1, 9, "listen",
     "the port must be a number from 0 to 65535"},
    {"listen bare ipv6", "listen: \"::1:8080\"\n", 0, 1, 9, "listen", "[ADDRESS]:PORT"},
    {"listen empty host", "listen: \":8080\"\n", 0, 1, 9, "listen", "bad host"},
    {"listen empty", "listen: \"\"\n", 0, 1, 9, "listen", "must not be empty"},
    {"admin bad", "admin:\n  listen: \"tcp://x\"\n", 0, 2, 11, "admin.listen",
     "must be unix:PATH or HOST:PORT"},
    {"admin unix without path", "admin:\n  listen: \"unix:\"\n", 0, 2, 11, "admin.listen",
     "needs a socket path"},
    {"tcp admin without token", "admin:\n  listen: \"127.0.0.1:9090\"\n", 0, 2, 11,
     "admin.token_file", "required when admin.listen is TCP"},
    {"tcp admin with empty token", "admin:\n  listen: \"127.0.0.1:9090\"\n  token_file: \"\"\n", 0,
     3, 15, "admin.token_file", "required when admin.listen is TCP"},
    {"base_url scheme", "upstream:\n  base_url: \"ftp://x/v1\"\n", 0, 2, 13, "upstream.base_url",
     "must be an http:// or https:// URL"},
    {"base_url no host", "upstream:\n  base_url: \"http://\"\n", 0, 2, 13, "upstream.base_url",
     "must be an http:// or https:// URL"},
    {"api_key_env", "upstream: { api_key_env: \"MY KEY\" }\n", 0, 1, 26, "upstream.api_key_env",
     "must be an environment variable name"},
    {"warn above max",
     "overlays:\n  x1:\n    budget: { token_delta_warn_pct: 30, token_delta_max_pct: 25 }\n", 0, 3,
     37, "overlays.x1.budget.token_delta_warn_pct",
     "must not exceed token_delta_max_pct (30 > 25)"},
    {"bad overlay name", "overlays:\n  Bad-Name: {}\n", 0, 2, 3, "overlays.Bad-Name",
     "not a valid overlay name"},
    {"overlay config not a mapping", "overlays:\n  x1:\n    config: [1, 2]\n", 0, 3, 13,
     "overlays.x1.config", "must be a mapping (key: value), handed to the plugin"},
    {"overlay config duplicate key", "overlays:\n  x1:\n    config:\n      a: 1\n      a: 2\n", 0,
     5, 7, "overlays.x1.config.a", "duplicate key; first defined at line 4"},
    {"overlay config inf", "overlays:\n  x1:\n    config: { a: [.inf] }\n", 0, 3, 19,
     "overlays.x1.config.a[0]", "cannot be represented in JSON"},
    {"overlay value not a mapping", "overlays:\n  x1: 3\n", 0, 2, 7, "overlays.x1",
     "must be a mapping"},
    {"environment name", "environment: \"prod env\"\n", 0, 1, 14, "environment",
     "must be a name of [A-Za-z0-9_-]"},
    {"duplicate key", "listen: \"127.0.0.1:1\"\nlisten: \"127.0.0.1:2\"\n", 0, 2, 1, "listen",
     "duplicate key; first defined at line 1"},
    {"duplicate nested key", "upstream:\n  timeout_ms: 1\n  timeout_ms: 2\n", 0, 3, 3,
     "upstream.timeout_ms", "duplicate key; first defined at line 2"},
    {"non-scalar key", "? [a]\n: 1\n", 0, 1, 3, NULL, "keys must be strings, not a list"},
    {"tab indentation", "upstream:\n\ttimeout_ms: 5\n", 0, 2, 1, NULL,
     "tabs are not allowed in YAML indentation"},
    {"unclosed flow", "listen: [unclosed\n", 0, 2, 1, NULL, "YAML syntax error"},
    {"unclosed quote", "listen: \"127.0.0.1:8080\n", 0, 2, 1, NULL,
     "YAML syntax error: found unexpected end of stream"},
    {"garbage", "}}}: :::\n", 0, 1, 1, NULL, "YAML syntax error"},
    {"alias", "a: &x 1\nlisten: *x\n", 0, 2, 9, NULL, "alias '*x' is not supported"},
    {"tag", "listen: !!binary aGVsbG8=\n", 0, 1, 9, NULL, "tag 'tag:yaml.org,2002:binary'"},
    {"two documents", "listen: \"127.0.0.1:1\"\n---\nlisten: \"127.0.0.1:2\"\n", 0, 2, 1, NULL,
     "a second YAML document"},
    {"top level list", "- a\n- b\n", 0, 1, 1, NULL, "the top level must be a mapping"},
    {"top level scalar", "hello\n", 0, 1, 1, NULL, "the top level must be a mapping"},
    {"empty file", "", 0, 0, 0, NULL, "the file is empty"},
    {"comments only", "# nothing here\n\n", 0, 0, 0, NULL, "the file is empty"},
    {"null document", "~\n", 0, 0, 0, NULL, "the file has no settings"},
    {"binary garbage",
     "\x7f"
     "ELF\x02\x01\x01\x00\x00\x00",
     10, 1, 8, NULL, "contains a NUL byte"},
    {"latin-1", "listen: \"caf\xe9\"\n", 0, 1, 13, NULL, "not UTF-8 text (byte 0xe9)"},
    {"utf-16 bom", "\xff\xfel\x00i\x00", 6, 1, 1, NULL, "not UTF-8 text (byte 0xff)"},
    {"overlong utf-8", "a: \"\xc0\xaf\"\n", 0, 1, 5, NULL, "not UTF-8 text (byte 0xc0)"},
    {"escaped NUL in string", "state_dir: \"a\\0b\"\n", 0, 1, 12, "state_dir",
     "contains a NUL byte"},
    /* A key with an escaped NUL would compare as its text before the NUL:
     * "listen\0junk" passed as the known key listen. */
    {"escaped NUL in known key", "\"listen\\0junk\": \"127.0.0.1:1\"\n", 0, 1, 1, "listen\\0junk",
     "contains a NUL byte"},
    {"escaped u0000 in key", "upstream:\n  \"timeout_ms\\u0000x\": 5\n", 0, 2, 3,
     "upstream.timeout_ms\\0x", "contains a NUL byte"},
    /* ...and made a second "listen" look like a duplicate of the first. */
    {"escaped NUL key after the real one",
     "listen: \"127.0.0.1:1\"\n\"listen\\0\": \"127.0.0.1:2\"\n", 0, 2, 1, "listen\\0",
     "contains a NUL byte"},
    {"escaped NUL in nested list", "overlays:\n  x1:\n    config: { a: [ok, \"b\\0\"] }\n", 0, 3,
     23, "overlays.x1.config.a[1]", "contains a NUL byte"},
    {"escaped NUL in complex key", "? [\"a\\0\"]\n: 1\n", 0, 1, 4, NULL, "contains a NUL byte"},
    /* YAML reads these as line breaks where editors do not: every later
     * line number would be off by one. */
    {"line separator", "a: \"x\xe2\x80\xa8y\"\nlisten: 1\n", 0, 1, 6, NULL,
     "U+2028 LINE SEPARATOR"},
    {"next line in comment", "# x\xc2\x85y\nlisten: 1\n", 0, 1, 4, NULL, "U+0085 NEXT LINE"},
    /* A lone CR is a line break to libyaml; the UTF-8 check must agree. */
    {"latin-1 after CR", "a: 1\rb: \"caf\xe9\"\n", 0, 2, 8, NULL, "not UTF-8 text (byte 0xe9)"},
    /* libyaml counts a byte-order mark as a column. */
    {"column after BOM", "\xef\xbb\xbflistn: 1\n", 0, 1, 1, "listn", "unknown key"},
};

static void test_bad_inputs(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const bad_case *bc = &bad_cases[i];
        size_t len = bc->len ? bc->len : strlen(bc->text);
        char *path = write_file(dir, "c.yaml", bc->text, len);
        fh_diag d = {0};
        fh_config *c = fh_config_load(path, &d);
        char *prefix = NULL;
        if (bc->line && bc->key)
            assert_true(asprintf(&prefix, "%s:%zu:%zu: %s: ", path, bc->line, bc->col, bc->key) >
                        0);
        else if (bc->line)
            assert_true(asprintf(&prefix, "%s:%zu:%zu: ", path, bc->line, bc->col) > 0);
        else
            assert_true(asprintf(&prefix, "%s: ", path) > 0);
        bool ok = c == NULL && diag_has(&d, prefix, bc->needle);
        if (!ok) {
            print_message("case '%s': expected NULL and \"%s...%s\"\n", bc->name, prefix,
                          bc->needle);
            dump_diag(&d);
        }
        assert_null(c);
        assert_true(ok);
        free(prefix);
        fh_diag_clear(&d);
        free(path);
    }
    rm_rf(dir);
    free(dir);
}

/* Escapes in quoted keys and values ("\\n", "\\e") must not reach the
 * diagnostics raw: a newline would forge a second "FILE:LINE:COL:" line
 * and an escape sequence would drive the terminal. */
static void test_control_chars_in_diagnostics(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    const char *text = "\"lis\\nc.yaml:9:9: fake\": 1\n"
                       "listen: \"h\\e[31m:1\\n2\"\n"
                       "environment: \"a\\tb\"\n"
                       "x: !<%0A> 1\n";
    char *path = write_file(dir, "c.yaml", text, strlen(text));
    fh_diag d = {0};
    assert_null(fh_config_load(path, &d));
    dump_diag(&d);
    assert_true(d.count >= 1);
    for (size_t i = 0; i < d.count; i++)
        for (const char *p = d.items[i]; *p; p++)
            assert_false((unsigned char)*p < 0x20 || *p == 0x7f);
    fh_diag_clear(&d);

    text = "\"lis\\nc.yaml:9:9: fake\": 1\n"
           "listen: \"h\\e[31m:1\\n2\"\n"
           "environment: \"a\\tb\"\n";
    free(path);
    path = write_file(dir, "c.yaml", text, strlen(text));
    assert_null(fh_config_load(path, &d));
    dump_diag(&d);
    assert_int_equal(d.count, 3);
    char *want = NULL;
    assert_true(asprintf(&want, "%s:1:1: lis?c.yaml:9:9: fake: unknown key", path) > 0);
    assert_true(diag_has(&d, want, NULL));
    free(want);
    assert_true(asprintf(&want, "%s:2:9: listen: ", path) > 0);
    assert_true(diag_has(&d, want, "got \"h?[31m:1?2\""));
    free(want);
    assert_true(asprintf(&want, "%s:3:14: environment: ", path) > 0);
    assert_true(diag_has(&d, want, "got \"a?b\""));
    free(want);
    fh_diag_clear(&d);
    free(path);
    rm_rf(dir);
    free(dir);
}

/* Every NUL is reported, each with its own position, in one run. */
static void test_nul_reports_all(void **state)
{
    (void)state;
    const char *text = "\"listen\\0junk\": 1\nupstream: { base_url: \"\\0\" }\n";
    fh_diag d = {0};
    fh_yaml y;
    assert_int_equal(fh_yaml_open_string(&y, text, strlen(text), "mem.yaml", &d), -1);
    dump_diag(&d);
    assert_int_equal(d.count, 2);
    assert_string_equal(d.items[0], "mem.yaml:1:1: listen\\0junk: contains a NUL byte (written "
                                    "\\0 or \\u0000); keys and strings cannot hold one");
    assert_string_equal(d.items[1], "mem.yaml:2:23: upstream.base_url: contains a NUL byte "
                                    "(written \\0 or \\u0000); keys and strings cannot hold one");
    fh_diag_clear(&d);
}

/* Every problem is reported, not just the first. */
static void test_collects_all_problems(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    const char *text = "listn: 1\n"
                       "upstream:\n"
                       "  timeout_ms: 0\n"
                       "  base_url: \"gopher://x\"\n"
                       "plugins: { watch: maybe }\n"
                       "overlays:\n"
                       "  refund_lot_switch:\n"
                       "    breaker: { failure_threshold: 0, recovery_timeout_s: 999999 }\n";
    char *path = write_file(dir, "c.yaml", text, strlen(text));
    fh_diag d = {0};
    fh_config *c = fh_config_load(path, &d);
    assert_null(c);
    dump_diag(&d);
    assert_int_equal(d.count, 6);
    char *p = NULL;
    assert_true(asprintf(&p, "%s:1:1: listn: ", path) > 0);
    assert_true(diag_has(&d, p, "unknown key"));
    free(p);
    assert_true(asprintf(&p, "%s:3:15: upstream.timeout_ms: ", path) > 0);
    assert_true(diag_has(&d, p, NULL));
    free(p);
    assert_true(asprintf(&p, "%s:4:13: upstream.base_url: ", path) > 0);
    assert_true(diag_has(&d, p, NULL));
    free(p);
    assert_true(asprintf(&p, "%s:5:19: plugins.watch: ", path) > 0);
    assert_true(diag_has(&d, p, NULL));
    free(p);
    assert_true(
        asprintf(&p, "%s:8:35: overlays.refund_lot_switch.breaker.failure_threshold: ", path) > 0);
    assert_true(diag_has(&d, p, NULL));
    free(p);
    assert_true(
        asprintf(&p, "%s:8:58: overlays.refund_lot_switch.breaker.recovery_timeout_s: ", path) > 0);
    assert_true(diag_has(&d, p, "from 1 to 86400"));
    free(p);
    fh_diag_clear(&d);
    free(path);
    rm_rf(dir);
    free(dir);
}

static void test_missing_and_unreadable(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    fh_diag d = {0};
    char *p = NULL;

    assert_true(asprintf(&p, "%s/nope.yaml", dir) > 0);
    assert_null(fh_config_load(p, &d));
    assert_int_equal(d.count, 1);
    assert_true(strstr(d.items[0], p) == d.items[0]);
    assert_non_null(strstr(d.items[0], "cannot open: No such file or directory"));
    fh_diag_clear(&d);
    free(p);

    assert_true(asprintf(&p, "%s/no/such/dir/c.yaml", dir) > 0);
    assert_null(fh_config_load(p, &d));
    assert_int_equal(d.count, 1);
    assert_non_null(strstr(d.items[0], "No such file or directory"));
    fh_diag_clear(&d);
    free(p);

    /* A folder is not a config file. */
    assert_null(fh_config_load(dir, &d));
    assert_true(d.count >= 1);
    assert_non_null(strstr(d.items[0], "not a regular file"));
    fh_diag_clear(&d);

    assert_null(fh_config_load("", &d));
    assert_int_equal(d.count, 1);
    fh_diag_clear(&d);

    rm_rf(dir);
    free(dir);
}

/* A file far larger than any config is refused before it is parsed. */
static void test_too_large(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    size_t len = FH_YAML_MAX_FILE_BYTES + 16;
    char *text = malloc(len);
    assert_non_null(text);
    memset(text, '#', len);
    char *path = write_file(dir, "c.yaml", text, len);
    free(text);
    fh_diag d = {0};
    assert_null(fh_config_load(path, &d));
    assert_int_equal(d.count, 1);
    assert_non_null(strstr(d.items[0], "at most 4194304 are accepted"));
    fh_diag_clear(&d);
    free(path);
    rm_rf(dir);
    free(dir);
}

/* Deep nesting is refused instead of recursing without bound. */
static void test_deep_nesting(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    size_t depth = 10000;
    char *text = malloc(depth * 2 + 64);
    assert_non_null(text);
    size_t o = (size_t)sprintf(text, "overlays: { x1: { config: { a: ");
    for (size_t i = 0; i < depth; i++)
        text[o++] = '[';
    for (size_t i = 0; i < depth; i++)
        text[o++] = ']';
    o += (size_t)sprintf(text + o, " } } }\n");
    char *path = write_file(dir, "c.yaml", text, o);
    free(text);
    fh_diag d = {0};
    assert_null(fh_config_load(path, &d));
    assert_true(d.count >= 1);
    assert_non_null(strstr(d.items[0], "nested deeper than 64 levels"));
    fh_diag_clear(&d);
    free(path);
    rm_rf(dir);
    free(dir);
}

/* A list or mapping beyond FH_YAML_MAX_ENTRIES is refused at load: the
 * name lookups are linear, and 400,000 keys fit in 4 MiB. At the limit,
 * duplicates are still found, each naming the line of the first. */
static void test_entry_limit(void **state)
{
    (void)state;
    char *dir = make_tmpdir();
    size_t n = FH_YAML_MAX_ENTRIES;
    char *text = malloc(n * 32 + 128);
    assert_non_null(text);
    size_t o = (size_t)sprintf(text, "overlays:\n  x1:\n    config:\n");
    for (size_t i = 0; i < n - 1; i++)
        o += (size_t)sprintf(text + o, "      k%zu: %zu\n", (i * 7919) % (n - 1), i);
    o += (size_t)sprintf(text + o, "      k%zu: dup\n", (size_t)17 * 7919 % (n - 1));
    char *path = write_file(dir, "c.yaml", text, o);
    fh_diag d = {0};
    assert_null(fh_config_load(path, &d));
    dump_diag(&d);
    assert_int_equal(d.count, 1);
    char *want = NULL;
    assert_true(asprintf(&want,
                         "%s:%zu:7: overlays.x1.config.k%zu: duplicate key; first defined at "
                         "line 21",
                         path, n + 3, (size_t)17 * 7919 % (n - 1)) > 0);
    assert_string_equal(d.items[0], want);
    free(want);
    fh_diag_clear(&d);
    free(path);

    o = (size_t)sprintf(text, "features_list: [");
    for (size_t i = 0; i <= n; i++)
        o += (size_t)sprintf(text + o, "%sa%zu", i ? "," : "", i);
    o += (size_t)sprintf(text + o, "]\n");
    path = write_file(dir, "c.yaml", text, o);
    free(text);
    assert_null(fh_config_load(path, &d));
    dump_diag(&d);
    assert_int_equal(d.count, 1);
    assert_true(asprintf(&want, "%s:1:16: features_list: has %zu entries; at most %u are accepted",
                         path, n + 1, FH_YAML_MAX_ENTRIES) > 0);
    assert_string_equal(d.items[0], want);
    free(want);
    fh_diag_clear(&d);
    free(path);
    rm_rf(dir);
    free(dir);
}

/* yamlutil on its own: key paths and the string-list getter. */
static void test_yamlutil_helpers(void **state)
{
    (void)state;
    fh_keypath kp;
    fh_keypath_init(&kp);
    size_t a = fh_keypath_push(&kp, "features");
    size_t b = fh_keypath_push(&kp, "x");
    size_t c = fh_keypath_push_index(&kp, 2);
    assert_string_equal(kp.buf, "features.x[2]");
    fh_keypath_pop(&kp, c);
    assert_string_equal(kp.buf, "features.x");
    fh_keypath_pop(&kp, b);
    fh_keypath_pop(&kp, a);
    assert_string_equal(kp.buf, "");
    for (int i = 0; i < 200; i++)
        fh_keypath_push(&kp, "longish_component");
    assert_true(strlen(kp.buf) < sizeof(kp.buf));

    const char *text =
        "l: [a, b_1]\nbad: [a, \"B\"]\ndup: [a, a]\nscalar: a\nempty:\ndup3: [b, a, b, c, b]\n";
    fh_diag d = {0};
    fh_yaml y;
    assert_int_equal(fh_yaml_open_string(&y, text, strlen(text), "mem.yaml", &d), 0);
    yaml_node_t *root = fh_yaml_root(&y);
    char **v = NULL;
    size_t n = 0;
    assert_true(fh_yaml_get_string_list(&y, root, "", "l", fh_valid_word, "a word", &v, &n));
    assert_int_equal(n, 2);
    assert_string_equal(v[1], "b_1");
    assert_false(fh_yaml_get_string_list(&y, root, "", "bad", fh_valid_word, "a word", &v, &n));
    assert_false(fh_yaml_get_string_list(&y, root, "", "dup", fh_valid_word, "a word", &v, &n));
    assert_false(fh_yaml_get_string_list(&y, root, "", "scalar", NULL, NULL, &v, &n));
    assert_int_equal(n, 2); /* failures leave the old value */
    assert_true(fh_yaml_get_string_list(&y, root, "", "empty", NULL, NULL, &v, &n));
    assert_int_equal(n, 0);
    assert_null(v);
    dump_diag(&d);
    assert_int_equal(d.count, 3);
    assert_string_equal(d.items[0], "mem.yaml:2:10: bad[1]: must be a word; got the string \"B\"");
    assert_string_equal(d.items[1], "mem.yaml:3:10: dup[1]: 'a' is listed twice");
    assert_string_equal(d.items[2],
                        "mem.yaml:4:9: scalar: must be a list such as [\"a\", \"b\"]; got a");
    assert_false(fh_yaml_get_string_list(&y, root, "", "dup3", NULL, NULL, &v, &n));
    assert_int_equal(d.count, 5);
    assert_string_equal(d.items[3], "mem.yaml:6:14: dup3[2]: 'b' is listed twice");
    assert_string_equal(d.items[4], "mem.yaml:6:20: dup3[4]: 'b' is listed twice");
    fh_yaml_close(&y);
    fh_diag_clear(&d);

    assert_true(fh_valid_overlay_name("refund_lot_switch"));
    assert_false(fh_valid_overlay_name("9lives"));
    assert_false(fh_valid_overlay_name("_x"));
    assert_false(fh_valid_overlay_name("Refund"));
    assert_false(fh_valid_overlay_name(""));
    char long_name[66];
    memset(long_name, 'a', 65);
    long_name[65] = '\0';
    assert_false(fh_valid_overlay_name(long_name));
    long_name[64] = '\0';
    assert_true(fh_valid_overlay_name(long_name));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dev_config_loads),
        cmocka_unit_test(test_prod_config_loads),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_relative_paths),
        cmocka_unit_test(test_path_resolve),
        cmocka_unit_test(test_overlay_config_json),
        cmocka_unit_test(test_thread_keys),
        cmocka_unit_test(test_valid_listen_forms),
        cmocka_unit_test(test_open_gateway_refused),
        cmocka_unit_test(test_door_limits),
        cmocka_unit_test(test_restart_keys),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_control_chars_in_diagnostics),
        cmocka_unit_test(test_nul_reports_all),
        cmocka_unit_test(test_collects_all_problems),
        cmocka_unit_test(test_missing_and_unreadable),
        cmocka_unit_test(test_too_large),
        cmocka_unit_test(test_deep_nesting),
        cmocka_unit_test(test_entry_limit),
        cmocka_unit_test(test_yamlutil_helpers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
