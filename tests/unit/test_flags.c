/*
 * test_flags.c - the feature flags file and routing (host/flags.c): the
 * shipped flags files, validation errors with their line numbers, the
 * scenario prefix rule, confidence thresholds, sticky and well-spread
 * rollout, environment rollout, and every RESON_FEATURES case.
 * Single-threaded; temporary files live in a per-run folder.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "config.h"
#include "flags.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[64];

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/fh-test-flags-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

static char *write_flags(const char *text)
{
    char *path = NULL;
    assert_true(asprintf(&path, "%s/flags.yaml", tmpdir) > 0);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
    return path;
}

static void dump_diag(const fh_diag *d)
{
    for (size_t i = 0; i < d->count; i++)
        print_message("  diag[%zu] %s\n", i, d->items[i]);
}

/* Loads `text` as a flags file; fails the test on any problem. */
static fh_flags *load_ok(const char *text)
{
    char *path = write_flags(text);
    fh_diag d = {0};
    fh_flags *f = fh_flags_load(path, &d);
    dump_diag(&d);
    assert_non_null(f);
    assert_int_equal(d.count, 0);
    fh_diag_clear(&d);
    free(path);
    return f;
}

static fh_route route(const fh_flags *f, const char *env, const fh_env_override *o,
                      const char *type, double confidence, const char *key)
{
    fh_route_ctx ctx = {.scenario_type = type,
                        .scenario_id = "sid",
                        .confidence = confidence,
                        .key = key,
                        .request_id = "rid"};
    fh_route r;
    fh_flags_route(f, env, o, &ctx, &r);
    return r;
}

static const fh_env_override unset = {.set = false};

/* ---- shipped files -------------------------------------------------------------- */

static void test_shipped_flags(void **state)
{
    (void)state;
    fh_diag d = {0};
    fh_flags *f = fh_flags_load(FH_SOURCE_DIR "/config/overlay_feature_flags.yaml", &d);
    dump_diag(&d);
    assert_non_null(f);
    assert_int_equal(f->feature_count, 2);

    const fh_feature *r = fh_flags_feature(f, "refund_lot_switch");
    assert_non_null(r);
    assert_int_equal(r->enabled_overlay_count, 1);
    assert_string_equal(r->enabled_overlays[0], "rollback_first");
    assert_string_equal(r->fallback_strategy, "baseline_only");
    assert_true(r->rollout_percentage == 100);
    assert_true(r->confidence_threshold == 0.7);
    assert_true(r->line > 0);

    const fh_feature *s = fh_flags_feature(f, "state_model_first");
    assert_non_null(s);
    assert_int_equal(s->enabled_overlay_count, 2);
    assert_string_equal(s->enabled_overlays[0], "state_compliance_model");
    assert_string_equal(s->enabled_overlays[1], "regulatory_audit_prep");
    assert_true(s->confidence_threshold == 0.7);

    assert_string_equal(f->global.default_strategy, "baseline_only");
    assert_true(f->global.circuit_breaker.enabled);
    assert_int_equal(f->global.circuit_breaker.failure_threshold, 5);
    assert_int_equal(f->global.circuit_breaker.recovery_timeout, 300);
    assert_true(f->global.metrics.track_token_usage);
    assert_non_null(fh_flags_environment(f, "production"));
    assert_non_null(fh_flags_environment(f, "staging"));
    assert_non_null(fh_flags_environment(f, "development"));
    assert_null(fh_flags_environment(f, "moon"));

    /* The seed's scenarios route to the right overlay. */
    fh_route rt = route(f, "production", &unset, "refund_processing_duplicate", 0.9, "k");
    assert_int_equal(rt.reason, FH_REASON_APPLIED);
    assert_ptr_equal(rt.feature, r);
    rt = route(f, "production", &unset, "lot_boundary_dispute_resolution", 0.9, "k");
    assert_ptr_equal(rt.feature, r);
    rt = route(f, "production", &unset, "regulatory_compliance_audit_prep", 0.9, "k");
    assert_ptr_equal(rt.feature, s);
    rt = route(f, "production", &unset, "webhook_endpoint_failure_cascade", 0.9, "k");
    assert_int_equal(rt.reason, FH_REASON_NO_MATCH);
    assert_null(rt.feature);

    /* Every environment a shipped config names exists in the flags file. */
    static const char *configs[] = {FH_SOURCE_DIR "/config/fusion-host.yaml",
                                    FH_SOURCE_DIR "/config/fusion-host.dev.yaml"};
    for (size_t i = 0; i < 2; i++) {
        fh_config *c = fh_config_load(configs[i], &d);
        assert_non_null(c);
        assert_non_null(fh_flags_environment(f, c->environment));
        fh_flags *again = fh_flags_load(c->feature_flags, &d);
        assert_non_null(again);
        fh_flags_free(again);
        fh_config_free(c);
    }
    assert_int_equal(d.count, 0);
    fh_flags_free(f);
    fh_diag_clear(&d);
}

static void test_emergency_baseline(void **state)
{
    (void)state;
    fh_diag d = {0};
    fh_flags *f = fh_flags_load(FH_SOURCE_DIR "/config/emergency_baseline.yaml", &d);
    dump_diag(&d);
    assert_non_null(f);
    fh_flags *shipped = fh_flags_load(FH_SOURCE_DIR "/config/overlay_feature_flags.yaml", &d);
    assert_non_null(shipped);
    /* Same features as the shipped file (the plugins need their
     * enabled_overlays to initialise), every one at 0%. */
    assert_int_equal(f->feature_count, shipped->feature_count);
    for (size_t i = 0; i < f->feature_count; i++) {
        const fh_feature *e = &f->features[i];
        const fh_feature *s = fh_flags_feature(shipped, e->name);
        assert_non_null(s);
        assert_true(e->rollout_percentage == 0);
        assert_int_equal(e->enabled_overlay_count, s->enabled_overlay_count);
        for (size_t j = 0; j < e->enabled_overlay_count; j++)
            assert_string_equal(e->enabled_overlays[j], s->enabled_overlays[j]);
    }
    for (size_t i = 0; i < f->environment_count; i++)
        assert_true(f->environments[i].global_rollout_percentage == 0);

    static const char *types[] = {"refund_processing_duplicate",
                                  "regulatory_compliance",
                                  "lot_boundary",
                                  "audit_prep",
                                  "",
                                  NULL};
    static const char *envs[] = {"production", "staging", "development", "undefined_env"};
    fh_env_override empty;
    assert_int_equal(fh_env_override_parse("", &empty), 0);
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        for (size_t e = 0; e < sizeof(envs) / sizeof(envs[0]); e++) {
            for (int k = 0; k < 100; k++) {
                char key[16];
                snprintf(key, sizeof(key), "k%d", k);
                fh_route r = route(f, envs[e], &unset, types[i], 1.0, key);
                assert_null(r.feature);
                assert_true(r.reason == FH_REASON_FLAG_OFF || r.reason == FH_REASON_NO_MATCH);
                r = route(f, envs[e], &empty, types[i], 1.0, key);
                assert_null(r.feature);
                assert_int_equal(r.reason, FH_REASON_ENV_OVERRIDE);
            }
        }
    }
    fh_route r = route(f, "production", &unset, "refund_processing", 1.0, "k");
    assert_int_equal(r.reason, FH_REASON_FLAG_OFF);
    assert_int_equal(d.count, 0);
    fh_env_override_free(&empty);
    fh_flags_free(shipped);
    fh_flags_free(f);
    fh_diag_clear(&d);
}

/* ---- validation ------------------------------------------------------------------- */

static void test_rollout_150_is_an_error(void **state)
{
    (void)state;
    char *path = write_flags("features:\n"
                             "  refund_lot_switch:\n"
                             "    enabled_overlays: [\"rollback_first\"]\n"
                             "    rollout_percentage: 150\n");
    fh_diag d = {0};
    assert_null(fh_flags_load(path, &d));
    dump_diag(&d);
    assert_int_equal(d.count, 1);
    char *want = NULL;
    assert_true(asprintf(&want,
                         "%s:4:25: features.refund_lot_switch.rollout_percentage: must be a "
                         "number from 0 to 100; got 150",
                         path) > 0);
    assert_string_equal(d.items[0], want);
    free(want);
    free(path);
    fh_diag_clear(&d);
}

typedef struct bad_case {
    const char *text;
    size_t line, col;
    const char *key;
    const char *needle;
} bad_case;

static const bad_case bad_cases[] = {
    {"features:\n  a:\n    rollout: 5\n", 3, 5, "features.a.rollout",
     "unknown key \"rollout\"; known keys: description, enabled_overlays"},
    {"features:\n  a:\n    rollout_percentage: -1\n", 3, 25, "features.a.rollout_percentage",
     "from 0 to 100"},
    {"features:\n  a:\n    rollout_percentage: \"50\"\n", 3, 25, "features.a.rollout_percentage",
     "got the string \"50\""},
    {"features:\n  a:\n    conditions: { confidence_threshold: 1.2 }\n", 3, 41,
     "features.a.conditions.confidence_threshold", "must be a number from 0 to 1; got 1.2"},
    {"features:\n  a:\n    conditions: { scenario_types: refund }\n", 3, 35,
     "features.a.conditions.scenario_types", "must be a list"},
    {"features:\n  a:\n    conditions: { scenario_types: [ok, \"Bad Type\"] }\n", 3, 40,
     "features.a.conditions.scenario_types[1]", "must be a scenario type of [a-z0-9_]"},
    /* "refund_" would only ever match a type that is itself "refund_" or
     * has "__" in it, never "refund_x": refused rather than silently dead. */
    {"features:\n  a:\n    conditions: { scenario_types: [refund_] }\n", 3, 36,
     "features.a.conditions.scenario_types[0]",
     "must not end with '_'; write the prefix without it: 'refund' matches 'refund_x'"},
    {"features:\n  a:\n    conditions:\n      scenario_types:\n        - ok\n        - \"b__\"\n",
     6, 11, "features.a.conditions.scenario_types[1]",
     "must not end with '_'; write the prefix without it: 'b' matches 'b_x'"},
    {"features:\n  a:\n    conditions: { scenario_types: [_] }\n", 3, 36,
     "features.a.conditions.scenario_types[0]", "must not end with '_'"},
    /* An escaped NUL in a feature name must not pass as the name before it. */
    {"features:\n  \"a\\0b\": {}\n", 2, 3, "features.a\\0b", "contains a NUL byte"},
    {"features:\n  a:\n    conditions: { scenario_typez: [x] }\n", 3, 19,
     "features.a.conditions.scenario_typez", "did you mean 'scenario_types'?"},
    {"features:\n  a:\n    enabled_overlays: [\"../etc/passwd\"]\n", 3, 24,
     "features.a.enabled_overlays[0]", "must be a micro-overlay name"},
    {"features:\n  a:\n    fallback_strategy: \"retry\"\n", 3, 24, "features.a.fallback_strategy",
     "must be \"baseline_only\""},
    {"features:\n  Refund-Lot:\n    rollout_percentage: 5\n", 2, 3, "features.Refund-Lot",
     "not a valid feature name"},
    {"features:\n  a: {}\n  a: {}\n", 3, 3, "features.a", "duplicate key; first defined at line 2"},
    {"features: [a, b]\n", 1, 11, "features", "must be a mapping"},
    {"global: {}\n", 1, 1, "features", "missing: the flags file needs a features mapping"},
    {"features: {}\nversion: 2\n", 2, 1, "version",
     "unknown key \"version\"; known keys: features, global, environments"},
    {"features: {}\nglobal:\n  circuit_breaker: { enabled: on }\n", 3, 31,
     "global.circuit_breaker.enabled", "must be true or false; got on"},
    {"features: {}\nglobal:\n  circuit_breaker: { failure_threshold: 0 }\n", 3, 41,
     "global.circuit_breaker.failure_threshold", "from 1 to 1000"},
    {"features: {}\nglobal:\n  metrics: { track_cost: true }\n", 3, 14, "global.metrics.track_cost",
     "unknown key"},
    {"features: {}\nglobal:\n  default_strategy: overlay_always\n", 3, 21,
     "global.default_strategy", "must be \"baseline_only\""},
    {"features: {}\nenvironments:\n  production: { global_rollout_percentage: 101 }\n", 3, 44,
     "environments.production.global_rollout_percentage", "from 0 to 100"},
    {"features: {}\nenvironments:\n  production: { quality_gate_threshold: -0.1 }\n", 3, 41,
     "environments.production.quality_gate_threshold", "from 0 to 1"},
    {"features: {}\nenvironments:\n  production: 100\n", 3, 15, "environments.production",
     "must be a mapping"},
};

static void test_bad_flags(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
        const bad_case *bc = &bad_cases[i];
        char *path = write_flags(bc->text);
        fh_diag d = {0};
        fh_flags *f = fh_flags_load(path, &d);
        char *prefix = NULL;
        assert_true(asprintf(&prefix, "%s:%zu:%zu: %s: ", path, bc->line, bc->col, bc->key) > 0);
        bool ok = false;
        for (size_t j = 0; j < d.count; j++)
            ok |= !strncmp(d.items[j], prefix, strlen(prefix)) && strstr(d.items[j], bc->needle);
        if (!ok || f) {
            print_message("case %zu: expected \"%s...%s\"\n", i, prefix, bc->needle);
            dump_diag(&d);
        }
        assert_null(f);
        assert_true(ok);
        free(prefix);
        free(path);
        fh_diag_clear(&d);
    }
}

/* ---- routing ---------------------------------------------------------------------- */

static void test_prefix_rule(void **state)
{
    (void)state;
    assert_true(fh_scenario_type_matches("refund_processing", "refund_processing"));
    assert_true(fh_scenario_type_matches("refund_processing", "refund_processing_duplicate"));
    assert_true(fh_scenario_type_matches("refund_processing", "refund_processing_a_b"));
    assert_false(fh_scenario_type_matches("refund_processing", "refund_processingx"));
    assert_false(fh_scenario_type_matches("refund_processing", "refund"));
    assert_false(fh_scenario_type_matches("refund_processing", "xrefund_processing"));
    assert_false(fh_scenario_type_matches("refund_processing", ""));
    assert_false(fh_scenario_type_matches("refund_processing", NULL));
    assert_false(fh_scenario_type_matches("", "refund"));

    fh_flags *f = load_ok("features:\n"
                          "  only_refund:\n"
                          "    rollout_percentage: 100\n"
                          "    conditions: { scenario_types: [refund_processing] }\n"
                          "  catch_all:\n"
                          "    rollout_percentage: 100\n");
    fh_route r = route(f, "production", &unset, "refund_processing_duplicate", -1, "k");
    assert_string_equal(r.feature->name, "only_refund");
    r = route(f, "production", &unset, "refund_processingx", -1, "k");
    assert_string_equal(r.feature->name, "catch_all"); /* no scenario_types: any type */
    r = route(f, "production", &unset, "refund", -1, "k");
    assert_string_equal(r.feature->name, "catch_all");
    r = route(f, "production", &unset, NULL, -1, "k");
    assert_string_equal(r.feature->name, "catch_all");
    fh_flags_free(f);

    f = load_ok("features:\n"
                "  only_refund:\n"
                "    rollout_percentage: 100\n"
                "    conditions: { scenario_types: [refund_processing] }\n");
    r = route(f, "production", &unset, "refund_processingx", -1, "k");
    assert_int_equal(r.reason, FH_REASON_NO_MATCH);
    assert_null(r.feature);
    assert_null(r.considered);
    r = route(f, "production", &unset, "", -1, "k");
    assert_int_equal(r.reason, FH_REASON_NO_MATCH);
    r = route(f, "production", &unset, NULL, -1, "k");
    assert_int_equal(r.reason, FH_REASON_NO_MATCH);
    fh_flags_free(f);
}

static void test_confidence(void **state)
{
    (void)state;
    fh_flags *f = load_ok("features:\n"
                          "  strict:\n"
                          "    rollout_percentage: 100\n"
                          "    conditions: { scenario_types: [audit], confidence_threshold: 0.9 }\n"
                          "  lenient:\n"
                          "    rollout_percentage: 100\n"
                          "    conditions: { scenario_types: [audit], confidence_threshold: 0.5 }\n"
                          "  none:\n"
                          "    rollout_percentage: 100\n"
                          "    conditions: { scenario_types: [other] }\n");
    fh_route r = route(f, "production", &unset, "audit", 0.95, "k");
    assert_string_equal(r.feature->name, "strict");
    r = route(f, "production", &unset, "audit", 0.9, "k"); /* at the threshold: passes */
    assert_string_equal(r.feature->name, "strict");
    r = route(f, "production", &unset, "audit", 0.89, "k"); /* falls to the next candidate */
    assert_string_equal(r.feature->name, "lenient");
    r = route(f, "production", &unset, "audit", 0.49, "k");
    assert_int_equal(r.reason, FH_REASON_NO_MATCH);
    assert_null(r.feature);
    assert_string_equal(r.considered->name, "strict");
    r = route(f, "production", &unset, "audit", -1, "k"); /* not given: passes */
    assert_string_equal(r.feature->name, "strict");
    r = route(f, "production", &unset, "other", 0.0, "k"); /* no threshold: 0 passes */
    assert_string_equal(r.feature->name, "none");
    fh_flags_free(f);
}

/* "thirty" has no scenario_types, so it catches every type; it comes last
 * so that the types z, f and h reach the features that list them. */
static fh_flags *load_rollout(void)
{
    return load_ok("features:\n"
                   "  zero:    { rollout_percentage: 0,\n"
                   "             conditions: { scenario_types: [z] } }\n"
                   "  full:    { rollout_percentage: 100,\n"
                   "             conditions: { scenario_types: [f] } }\n"
                   "  half:    { rollout_percentage: 50,\n"
                   "             conditions: { scenario_types: [h] } }\n"
                   "  thirty:  { rollout_percentage: 30 }\n"
                   "environments:\n"
                   "  production: { global_rollout_percentage: 100 }\n"
                   "  staging: { global_rollout_percentage: 50 }\n"
                   "  dark: { global_rollout_percentage: 0 }\n");
}

static size_t count_applied(const fh_flags *f, const char *env, const fh_env_override *o,
                            const char *type, size_t n)
{
    size_t applied = 0;
    for (size_t i = 0; i < n; i++) {
        char key[32];
        snprintf(key, sizeof(key), "customer-%zu", i);
        fh_route r = route(f, env, o, type, -1, key);
        if (r.reason == FH_REASON_APPLIED) {
            assert_non_null(r.feature);
            applied++;
        } else {
            assert_null(r.feature);
        }
    }
    return applied;
}

static void test_rollout_sticky_and_spread(void **state)
{
    (void)state;
    fh_flags *f = load_rollout();

    /* Stickiness: the same key always gets the same answer. */
    for (int i = 0; i < 200; i++) {
        char key[32];
        snprintf(key, sizeof(key), "user-%d", i);
        fh_route a = route(f, "production", &unset, "anything", -1, key);
        for (int j = 0; j < 5; j++) {
            fh_route b = route(f, "production", &unset, "anything", -1, key);
            assert_int_equal(a.reason, b.reason);
            assert_int_equal(a.bucket, b.bucket);
            assert_ptr_equal(a.feature, b.feature);
        }
        assert_int_equal(a.bucket, fh_rollout_bucket("thirty", key));
        assert_true(a.reason == FH_REASON_APPLIED ? a.bucket < 3000 : a.bucket >= 3000);
    }

    /* Distribution over 10,000 distinct keys. */
    size_t n30 = count_applied(f, "production", &unset, "anything", 10000);
    print_message("30%% rollout: %zu of 10000\n", n30);
    assert_in_range(n30, 2800, 3200);
    size_t n50 = count_applied(f, "production", &unset, "h", 10000);
    assert_in_range(n50, 4800, 5200);
    assert_int_equal(count_applied(f, "production", &unset, "z", 10000), 0);
    assert_int_equal(count_applied(f, "production", &unset, "f", 10000), 10000);

    fh_route r = route(f, "production", &unset, "z", -1, "k");
    assert_int_equal(r.reason, FH_REASON_FLAG_OFF);
    assert_string_equal(r.considered->name, "zero");

    /* The rollout key falls back to scenario_id, then request_id. */
    fh_route_ctx ctx = {.scenario_type = "anything", .confidence = -1, .request_id = "rq-1"};
    fh_flags_route(f, "production", &unset, &ctx, &r);
    assert_int_equal(r.bucket, fh_rollout_bucket("thirty", "rq-1"));
    ctx.scenario_id = "sc-9";
    fh_flags_route(f, "production", &unset, &ctx, &r);
    assert_int_equal(r.bucket, fh_rollout_bucket("thirty", "sc-9"));
    ctx.key = "";
    fh_flags_route(f, "production", &unset, &ctx, &r);
    assert_int_equal(r.bucket, fh_rollout_bucket("thirty", "sc-9"));
    ctx.key = "kk";
    fh_flags_route(f, "production", &unset, &ctx, &r);
    assert_int_equal(r.bucket, fh_rollout_bucket("thirty", "kk"));

    fh_flags_free(f);
}

/* The bucket function is part of the contract (docs/config.md): pinned
 * values catch an accidental change that would reshuffle every rollout. */
static void test_bucket_is_stable(void **state)
{
    (void)state;
    unsigned a = fh_rollout_bucket("refund_lot_switch", "customer-42");
    unsigned b = fh_rollout_bucket("state_model_first", "customer-42");
    unsigned c = fh_rollout_bucket("refund_lot_switch", "");
    print_message("pinned buckets: %u %u %u\n", a, b, c);
    assert_int_equal(a, 8334);
    assert_int_equal(b, 5540);
    assert_int_equal(c, 954);
    /* The separator keeps ("ab","c") and ("a","bc") apart. */
    assert_int_not_equal(fh_rollout_bucket("ab", "c"), fh_rollout_bucket("a", "bc"));
    for (int i = 0; i < 1000; i++) {
        char key[16];
        snprintf(key, sizeof(key), "%d", i);
        assert_true(fh_rollout_bucket("x", key) < 10000);
    }
}

static void test_environment_rollout(void **state)
{
    (void)state;
    fh_flags *f = load_rollout();
    /* staging: 100% feature x 50% environment. */
    size_t n = count_applied(f, "staging", &unset, "f", 10000);
    print_message("staging 100%% x 50%%: %zu of 10000\n", n);
    assert_in_range(n, 4800, 5200);
    /* 30% x 50% = 15%. */
    n = count_applied(f, "staging", &unset, "anything", 10000);
    assert_in_range(n, 1300, 1700);
    /* 0% environment: flag_off for everything. */
    fh_route r = route(f, "dark", &unset, "f", -1, "k");
    assert_int_equal(r.reason, FH_REASON_FLAG_OFF);
    assert_int_equal(count_applied(f, "dark", &unset, "f", 1000), 0);
    /* An environment the file does not define means 100%. */
    assert_int_equal(count_applied(f, "moon", &unset, "f", 1000), 1000);
    assert_int_equal(count_applied(f, NULL, &unset, "f", 1000), 1000);
    fh_flags_free(f);
}

/* ---- RESON_FEATURES --------------------------------------------------------------- */

static void test_env_override_parse(void **state)
{
    (void)state;
    fh_env_override o;
    assert_int_equal(fh_env_override_parse(NULL, &o), 0);
    assert_false(o.set);
    assert_int_equal(o.count, 0);
    fh_env_override_free(&o);

    assert_int_equal(fh_env_override_parse("", &o), 0);
    assert_true(o.set);
    assert_int_equal(o.count, 0);
    fh_env_override_free(&o);

    assert_int_equal(fh_env_override_parse(" , ,\t", &o), 0);
    assert_true(o.set);
    assert_int_equal(o.count, 0);
    fh_env_override_free(&o);

    assert_int_equal(fh_env_override_parse(" refund_lot_switch ,, state_model_first,", &o), 0);
    assert_true(o.set);
    assert_int_equal(o.count, 2);
    assert_string_equal(o.names[0], "refund_lot_switch");
    assert_string_equal(o.names[1], "state_model_first");
    fh_env_override_free(&o);
    assert_false(o.set);
    assert_null(o.names);
}

static const char *override_flags =
    "features:\n"
    "  refund_lot_switch:\n"
    "    rollout_percentage: 0\n"
    "    conditions: { scenario_types: [refund_processing], confidence_threshold: 0.7 }\n"
    "  state_model_first:\n"
    "    rollout_percentage: 10\n"
    "    conditions: { scenario_types: [regulatory_compliance], confidence_threshold: 0.7 }\n"
    "  broad:\n"
    "    rollout_percentage: 100\n"
    "environments:\n"
    "  production: { global_rollout_percentage: 100 }\n"
    "  dark: { global_rollout_percentage: 0 }\n";

static void test_env_override_unset(void **state)
{
    (void)state;
    fh_flags *f = load_ok(override_flags);
    fh_env_override o;
    assert_int_equal(fh_env_override_parse(NULL, &o), 0);
    /* The file decides: 0% is flag_off, broad catches the rest. */
    fh_route r = route(f, "production", &o, "refund_processing", 0.9, "k");
    assert_int_equal(r.reason, FH_REASON_FLAG_OFF);
    assert_string_equal(r.considered->name, "refund_lot_switch");
    r = route(f, "production", &o, "other", 0.9, "k");
    assert_string_equal(r.feature->name, "broad");
    /* A NULL override is the same as unset. */
    r = route(f, "production", NULL, "other", 0.9, "k");
    assert_string_equal(r.feature->name, "broad");
    fh_diag d = {0};
    assert_int_equal(fh_env_override_check(&o, f, &d), 0);
    assert_int_equal(d.count, 0);
    fh_env_override_free(&o);
    fh_flags_free(f);
}

static void test_env_override_empty(void **state)
{
    (void)state;
    fh_flags *f = load_ok(override_flags);
    fh_env_override o;
    assert_int_equal(fh_env_override_parse("", &o), 0);
    static const char *types[] = {"refund_processing", "regulatory_compliance", "other", "", NULL};
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        for (int k = 0; k < 50; k++) {
            char key[16];
            snprintf(key, sizeof(key), "k%d", k);
            fh_route r = route(f, "production", &o, types[i], 0.99, key);
            assert_int_equal(r.reason, FH_REASON_ENV_OVERRIDE);
            assert_null(r.feature);
        }
    }
    /* No flags loaded at all: still env_override, not a crash. */
    fh_route r = route(NULL, "production", &o, "other", 1, "k");
    assert_int_equal(r.reason, FH_REASON_ENV_OVERRIDE);
    fh_env_override_free(&o);
    fh_flags_free(f);
}

static void test_env_override_list(void **state)
{
    (void)state;
    fh_flags *f = load_ok(override_flags);
    fh_env_override o;
    assert_int_equal(fh_env_override_parse("refund_lot_switch,state_model_first", &o), 0);

    /* File says 0% (refund) and 10% (state): listed features run at 100%,
     * even for keys outside their rollout, and even in a 0% environment. */
    assert_int_equal(count_applied(f, "production", &o, "refund_processing_duplicate", 2000), 2000);
    assert_int_equal(count_applied(f, "production", &o, "regulatory_compliance", 2000), 2000);
    assert_int_equal(count_applied(f, "dark", &o, "regulatory_compliance", 500), 500);
    /* Without the override the same keys are mostly excluded by rollout. */
    assert_in_range(count_applied(f, "production", &unset, "regulatory_compliance", 2000), 100,
                    300);

    /* Still subject to the scenario type... */
    fh_route r = route(f, "production", &o, "refund", 0.9, "k");
    assert_int_equal(r.reason, FH_REASON_ENV_OVERRIDE); /* only "broad" matched: not listed */
    assert_string_equal(r.considered->name, "broad");
    /* ...and to the confidence condition. */
    r = route(f, "production", &o, "refund_processing", 0.5, "k");
    assert_int_equal(r.reason, FH_REASON_NO_MATCH);
    assert_null(r.feature);
    r = route(f, "production", &o, "refund_processing", 0.7, "k");
    assert_int_equal(r.reason, FH_REASON_APPLIED);
    assert_string_equal(r.feature->name, "refund_lot_switch");
    fh_env_override_free(&o);

    /* Only the listed ones: broad is a candidate for every type but not
     * listed, so an unmatched type is env_override, not broad. */
    assert_int_equal(fh_env_override_parse("state_model_first", &o), 0);
    r = route(f, "production", &o, "refund_processing", 0.9, "k");
    assert_int_equal(r.reason, FH_REASON_ENV_OVERRIDE);
    assert_null(r.feature);
    r = route(f, "production", &o, "regulatory_compliance_audit_prep", 0.9, "k");
    assert_string_equal(r.feature->name, "state_model_first");
    fh_env_override_free(&o);
    fh_flags_free(f);
}

static void test_env_override_unknown_names(void **state)
{
    (void)state;
    fh_flags *f = load_ok(override_flags);
    fh_env_override o;
    assert_int_equal(fh_env_override_parse("refund_lot_switch, nosuch ,typo_feature", &o), 0);
    fh_diag d = {0};
    assert_int_equal(fh_env_override_check(&o, f, &d), 2);
    dump_diag(&d);
    assert_int_equal(d.count, 2);
    assert_non_null(strstr(d.items[0], "RESON_FEATURES: 'nosuch' is not a feature of"));
    assert_non_null(strstr(d.items[0], "features: refund_lot_switch, state_model_first, broad"));
    assert_non_null(strstr(d.items[1], "'typo_feature'"));
    /* Unknown names are ignored by routing; known ones still run. */
    fh_route r = route(f, "production", &o, "refund_processing", 0.9, "k");
    assert_string_equal(r.feature->name, "refund_lot_switch");
    fh_env_override_free(&o);
    fh_diag_clear(&d);
    fh_flags_free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shipped_flags),
        cmocka_unit_test(test_emergency_baseline),
        cmocka_unit_test(test_rollout_150_is_an_error),
        cmocka_unit_test(test_bad_flags),
        cmocka_unit_test(test_prefix_rule),
        cmocka_unit_test(test_confidence),
        cmocka_unit_test(test_rollout_sticky_and_spread),
        cmocka_unit_test(test_bucket_is_stable),
        cmocka_unit_test(test_environment_rollout),
        cmocka_unit_test(test_env_override_parse),
        cmocka_unit_test(test_env_override_unset),
        cmocka_unit_test(test_env_override_empty),
        cmocka_unit_test(test_env_override_list),
        cmocka_unit_test(test_env_override_unknown_names),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
