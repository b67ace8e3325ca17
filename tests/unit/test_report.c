/*
 * test_report.c - host/report.c: the runbook thresholds at their edges
 * (exactly 2000 ms is ok, 2000.1 a warning), compare's regression rules at
 * theirs (a change of exactly the threshold is not a regression, whatever
 * double rounding makes of 17.3 - 12.3), unknown figures (null or absent:
 * never a breach nor a regression), failed runs (any a warning, all of
 * them critical: a report whose runs all failed must not read as healthy),
 * the messages for malformed reports, and both analyses with their
 * markdown. Reports are built in memory; the
 * fixtures under tests/fixtures/reports/ are read once to prove the file
 * path. Single-threaded.
 */
#include "report.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <setjmp.h>
#include <cmocka.h>

#define FIXTURES FH_SOURCE_DIR "/tests/fixtures/reports"

/* ---- helpers ---------------------------------------------------------- */

/* A scenario object as bench writes it; NAN figures are written null. */
static char *scenario_json(const char *id, double p95, double delta, double quality)
{
    char p95s[32], deltas[32], qs[32];
    snprintf(p95s, sizeof(p95s), isnan(p95) ? "null" : "%.17g", p95);
    snprintf(deltas, sizeof(deltas), isnan(delta) ? "null" : "%.17g", delta);
    snprintf(qs, sizeof(qs), isnan(quality) ? "null" : "%.17g", quality);
    char *s = NULL;
    int n = asprintf(&s,
                     "{\"id\": \"%s\", \"overlay\": {\"name\": \"refund_lot_switch\", \"runs\": 5, "
                     "\"failed\": 0, \"latency_ms\": {\"p50\": 10.0, \"p95\": %s}, "
                     "\"quality\": {\"mean\": %s}, \"rules\": {\"a\": {\"pass_rate\": 1.0}, "
                     "\"b\": {\"pass_rate\": 0.8}}}, \"token_delta_pct\": %s}",
                     id, p95s, qs, deltas);
    assert_true(n > 0);
    return s;
}

/* A whole report: `scenarios` is the inside of the array. */
static fh_report *report_of(const char *scenarios, const char *overall, const char *extra)
{
    char *doc = NULL;
    int n = asprintf(&doc,
                     "{\"format\": 1, \"iterations\": 5, \"upstream\": \"stub\", "
                     "\"config_hash\": \"aaaa\"%s, \"scenarios\": [%s], \"overall\": %s}",
                     extra ? extra : "", scenarios, overall);
    assert_true(n > 0);
    json_error_t je;
    json_t *root = json_loads(doc, 0, &je);
    assert_non_null(root);
    char err[512] = "";
    fh_report *r = fh_report_from_json(root, "test.json", err, sizeof(err));
    if (!r)
        fail_msg("parse failed: %s", err);
    json_decref(root);
    free(doc);
    return r;
}

/* The message for a document that must be refused. */
static void refused(const char *doc, const char *want)
{
    json_error_t je;
    json_t *root = json_loads(doc, 0, &je);
    assert_non_null(root);
    char err[512] = "";
    fh_report *r = fh_report_from_json(root, "bad.json", err, sizeof(err));
    json_decref(root);
    if (r) {
        fh_report_free(r);
        fail_msg("accepted: %s", doc);
    }
    if (!strstr(err, want))
        fail_msg("message '%s' does not contain '%s'", err, want);
    assert_true(strncmp(err, "bad.json: ", 10) == 0);
}

static const char *OVERALL_OK = "{\"latency_ms\": {\"p50\": 10.0, \"p95\": 20.0}, "
                                "\"token_delta_pct\": 3.0, \"quality\": {\"mean\": 0.9}, "
                                "\"rule_pass_rate\": 0.9, \"runs\": 10, \"failed\": 0}";

static char *render(void (*markdown)(FILE *, const json_t *), const json_t *a)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    markdown(f, a);
    fclose(f);
    return buf;
}

/* cmocka 1.1 has no assert_double_equal. */
static void assert_near(double got, double want, double eps)
{
    if (!(fabs(got - want) <= eps))
        fail_msg("%.17g is not within %g of %.17g", got, eps, want);
}

static void contains(const char *text, const char *want)
{
    if (!strstr(text, want))
        fail_msg("output does not contain '%s':\n%s", want, text);
}

static const char *status_of(const json_t *row, const char *figure)
{
    return json_string_value(
        json_object_get(json_object_get(json_object_get(row, "figures"), figure), "status"));
}

/* ---- budget thresholds ------------------------------------------------ */

static void test_latency_edges(void **state)
{
    (void)state;
    assert_int_equal(fh_budget_latency_status(NAN), FH_STATUS_UNKNOWN);
    assert_int_equal(fh_budget_latency_status(0), FH_STATUS_OK);
    assert_int_equal(fh_budget_latency_status(2000.0), FH_STATUS_OK);
    assert_int_equal(fh_budget_latency_status(2000.1), FH_STATUS_WARNING);
    assert_int_equal(fh_budget_latency_status(5000.0), FH_STATUS_WARNING);
    assert_int_equal(fh_budget_latency_status(5000.1), FH_STATUS_CRITICAL);
    assert_int_equal(fh_budget_latency_status(60000), FH_STATUS_CRITICAL);
}

static void test_tokens_edges(void **state)
{
    (void)state;
    assert_int_equal(fh_budget_tokens_status(NAN), FH_STATUS_UNKNOWN);
    /* Fewer tokens than the baseline is never a budget problem. */
    assert_int_equal(fh_budget_tokens_status(-40.0), FH_STATUS_OK);
    assert_int_equal(fh_budget_tokens_status(12.0), FH_STATUS_OK);
    assert_int_equal(fh_budget_tokens_status(12.1), FH_STATUS_WARNING);
    assert_int_equal(fh_budget_tokens_status(25.0), FH_STATUS_WARNING);
    assert_int_equal(fh_budget_tokens_status(25.1), FH_STATUS_CRITICAL);
}

static void test_quality_edges(void **state)
{
    (void)state;
    assert_int_equal(fh_budget_quality_status(NAN), FH_STATUS_UNKNOWN);
    assert_int_equal(fh_budget_quality_status(0.8), FH_STATUS_OK);
    assert_int_equal(fh_budget_quality_status(1.0), FH_STATUS_OK);
    assert_int_equal(fh_budget_quality_status(0.799), FH_STATUS_WARNING);
    /* No critical level for quality, however low. */
    assert_int_equal(fh_budget_quality_status(0.0), FH_STATUS_WARNING);
    assert_string_equal(fh_report_status_name(FH_STATUS_UNKNOWN), "unknown");
    assert_string_equal(fh_report_status_name(FH_STATUS_OK), "ok");
    assert_string_equal(fh_report_status_name(FH_STATUS_WARNING), "warning");
    assert_string_equal(fh_report_status_name(FH_STATUS_CRITICAL), "critical");
}

static void test_failed_edges(void **state)
{
    (void)state;
    /* Runs unknown (or none): unknown, never a breach. */
    assert_int_equal(fh_budget_failed_status(NAN), FH_STATUS_UNKNOWN);
    assert_int_equal(fh_budget_failed_status(0), FH_STATUS_OK);
    /* Any failed run is a warning... */
    assert_int_equal(fh_budget_failed_status(0.1), FH_STATUS_WARNING);
    assert_int_equal(fh_budget_failed_status(50.0), FH_STATUS_WARNING);
    assert_int_equal(fh_budget_failed_status(99.9), FH_STATUS_WARNING);
    /* ...and every run failed critical: the other figures describe nothing. */
    assert_int_equal(fh_budget_failed_status(100.0), FH_STATUS_CRITICAL);
    /* As parse_scenario computes it: 9 of 10, 1 of 3, 3 of 3. */
    assert_int_equal(fh_budget_failed_status(100.0 * 9 / 10), FH_STATUS_WARNING);
    assert_int_equal(fh_budget_failed_status(100.0 * 1 / 3), FH_STATUS_WARNING);
    assert_int_equal(fh_budget_failed_status(100.0 * 3 / 3), FH_STATUS_CRITICAL);
}

/* ---- compare rules ---------------------------------------------------- */

static void test_p95_rule_edges(void **state)
{
    (void)state;
    /* Both conditions must hold: +20 % and +50 ms, each strictly. */
    assert_false(fh_compare_p95_regressed(1000, 1200));      /* exactly 20 % */
    assert_true(fh_compare_p95_regressed(1000, 1200.1));     /* just past */
    assert_false(fh_compare_p95_regressed(250, 300));        /* 20 % and 50 ms exactly */
    assert_true(fh_compare_p95_regressed(250, 300.1));       /* */
    assert_false(fh_compare_p95_regressed(100, 149.9));      /* +49.9 %, but under 50 ms */
    assert_false(fh_compare_p95_regressed(100, 150));        /* 50 ms exactly */
    assert_true(fh_compare_p95_regressed(100, 150.1));       /* */
    assert_false(fh_compare_p95_regressed(1000, 1150));      /* +150 ms, but 15 % */
    assert_false(fh_compare_p95_regressed(3000, 1000));      /* faster */
    assert_true(fh_compare_p95_regressed(0, 50.1));          /* from nothing */
    assert_false(fh_compare_p95_regressed(NAN, 9000));       /* unknown: not judged */
    assert_false(fh_compare_p95_regressed(1000, NAN));       /* */
    assert_false(fh_compare_p95_regressed(2.4, 4.0));        /* stub: +66 %, 1.6 ms */
    assert_false(fh_compare_p95_regressed(1642.7, 1971.24)); /* 20 % to the rounding */
}

static void test_tokens_rule_edges(void **state)
{
    (void)state;
    /* 17.3 - 12.3 is 5.000000000000002 in doubles: still 5 points. */
    assert_false(fh_compare_tokens_regressed(12.3, 17.3));
    assert_true(fh_compare_tokens_regressed(12.3, 17.4));
    assert_false(fh_compare_tokens_regressed(-3.0, 2.0));
    assert_true(fh_compare_tokens_regressed(-3.0, 2.1));
    assert_false(fh_compare_tokens_regressed(40.0, 10.0));
    assert_false(fh_compare_tokens_regressed(NAN, 99.0));
    assert_false(fh_compare_tokens_regressed(0.0, NAN));
}

static void test_quality_and_rules_edges(void **state)
{
    (void)state;
    /* 0.9 - 0.85 is 0.05000000000000004 in doubles: still 0.05. */
    assert_false(fh_compare_quality_regressed(0.9, 0.85));
    assert_true(fh_compare_quality_regressed(0.9, 0.849));
    assert_false(fh_compare_quality_regressed(0.85, 0.8));
    assert_false(fh_compare_quality_regressed(0.5, 1.0));
    assert_false(fh_compare_quality_regressed(NAN, 0.1));
    assert_false(fh_compare_quality_regressed(0.9, NAN));
    assert_false(fh_compare_rules_regressed(0.95, 0.9));
    assert_true(fh_compare_rules_regressed(0.95, 0.899));
    assert_false(fh_compare_rules_regressed(1.0, 0.95));
    assert_false(fh_compare_rules_regressed(NAN, 0.0));
}

/* ---- reading reports -------------------------------------------------- */

/* null and absent both mean unknown; a scenario's rule pass rate is the
 * mean of the rates it has. */
static void test_unknown_figures(void **state)
{
    (void)state;
    /* No runs counted either: the failed-runs figure is unknown too (runs
     * that all failed are a breach: test_budget_all_failed). */
    const char *sc = "{\"id\": \"served_by_baseline\", \"overlay\": {\"name\": null, "
                     "\"latency_ms\": null}, \"token_delta_pct\": null},"
                     "{\"id\": \"bare\"},"
                     "{\"id\": \"rules\", \"overlay\": {\"rules\": {\"a\": {\"pass_rate\": 1.0}, "
                     "\"b\": {\"pass_rate\": 0.5}, \"c\": {\"pass_rate\": null}}}}";
    fh_report *r = report_of(sc, "{\"latency_ms\": {\"p95\": null}}", NULL);
    assert_int_equal(r->count, 3);
    assert_string_equal(r->rows[0].id, "served_by_baseline");
    assert_null(r->rows[0].overlay);
    assert_true(isnan(r->rows[0].p95_ms));
    assert_true(isnan(r->rows[0].token_delta));
    assert_true(isnan(r->rows[0].quality));
    assert_true(isnan(r->rows[0].rule_pass));
    assert_int_equal(r->rows[0].runs, -1);
    assert_int_equal(r->rows[0].failed, -1);
    assert_true(isnan(r->rows[0].failed_pct));
    assert_true(isnan(r->rows[1].p50_ms));
    assert_int_equal(r->rows[1].runs, -1);
    assert_true(isnan(r->rows[1].failed_pct));
    assert_near(r->rows[2].rule_pass, 0.75, 1e-12);
    assert_true(isnan(r->overall.p95_ms));
    assert_true(isnan(r->overall.rule_pass));
    assert_int_equal(r->iterations, 5);
    assert_string_equal(r->config_hash, "aaaa");
    assert_null(r->created);

    /* Unknown is never a breach: exit 0, every figure "unknown", "-". */
    json_t *a = fh_budget_analyze(r);
    assert_non_null(a);
    assert_int_equal(fh_budget_exit(a), 0);
    assert_int_equal(json_integer_value(json_object_get(a, "critical")), 0);
    assert_int_equal(json_integer_value(json_object_get(a, "warnings")), 0);
    assert_int_equal(json_integer_value(json_object_get(a, "unknown")), 16);
    const json_t *row = json_array_get(json_object_get(a, "scenarios"), 0);
    assert_string_equal(status_of(row, "latency_p95_ms"), "unknown");
    assert_string_equal(status_of(row, "failed_runs_pct"), "unknown");
    assert_string_equal(json_string_value(json_object_get(row, "status")), "unknown");
    assert_true(json_is_null(json_object_get(
        json_object_get(json_object_get(row, "figures"), "latency_p95_ms"), "value")));
    assert_true(json_is_null(json_object_get(row, "overlay")));
    char *md = render(fh_budget_markdown, a);
    contains(md, "| served_by_baseline | baseline | - | unknown | - | unknown | - | unknown | - | "
                 "unknown |\n");
    contains(md, "**All figures within the runbook thresholds**; 16 unknown");
    assert_null(strstr(md, "Note: overlaid runs failed"));
    free(md);
    json_decref(a);

    /* Unknown in either report is never a regression. */
    fh_report *other = report_of("{\"id\": \"bare\", \"overlay\": {\"latency_ms\": {\"p95\": 1.0}, "
                                 "\"quality\": {\"mean\": 0.1}}, \"token_delta_pct\": 90}",
                                 "{}", NULL);
    a = fh_compare_analyze(other, r);
    assert_non_null(a);
    /* Missing: served_by_baseline and rules only in r (new); bare lost
     * its figures (warned, not judged). */
    const json_t *bare = json_array_get(json_object_get(a, "scenarios"), 0);
    assert_string_equal(json_string_value(json_object_get(bare, "verdict")), "ok");
    assert_int_equal(json_integer_value(json_object_get(a, "regressions")), 0);
    assert_int_equal(fh_compare_exit(a), 0);
    char *w = json_dumps(json_object_get(a, "warnings"), 0);
    contains(w, "bare: p95 latency is 1.0 ms in the baseline report and unknown in the current");
    contains(w, "bare: mean quality is 0.100 in the baseline report and unknown");
    free(w);
    json_decref(a);
    fh_report_free(other);
    fh_report_free(r);
}

static void test_malformed(void **state)
{
    (void)state;
    refused("[1, 2]", "not a fusion-host bench report (no \"format\": 1)");
    refused("{\"scenarios\": [], \"overall\": {}}",
            "not a fusion-host bench report (no \"format\": 1)");
    refused("{\"format\": \"1\", \"scenarios\": [], \"overall\": {}}", "(no \"format\": 1)");
    refused("{\"format\": 2, \"scenarios\": [], \"overall\": {}}",
            "report format 2; this fusion-host reads format 1");
    refused("{\"format\": 1, \"overall\": {}}", "no \"scenarios\" array");
    refused("{\"format\": 1, \"scenarios\": {}, \"overall\": {}}", "no \"scenarios\" array");
    refused("{\"format\": 1, \"scenarios\": []}", "no \"overall\" object");
    refused("{\"format\": 1, \"scenarios\": [7], \"overall\": {}}",
            "scenarios[0]: expected an object, found a number");
    refused("{\"format\": 1, \"scenarios\": [{\"overlay\": {}}], \"overall\": {}}",
            "scenarios[0]: no \"id\"");
    refused("{\"format\": 1, \"scenarios\": [{\"id\": \"x\", \"overlay\": {\"latency_ms\": "
            "{\"p95\": \"fast\"}}}], \"overall\": {}}",
            "scenarios[0] (x).overlay.latency_ms.p95: expected a number or null, found a string");
    refused("{\"format\": 1, \"scenarios\": [{\"id\": \"x\", \"overlay\": {\"latency_ms\": "
            "[1]}}], \"overall\": {}}",
            "scenarios[0] (x).overlay.latency_ms: expected an object, found an array");
    refused("{\"format\": 1, \"scenarios\": [{\"id\": \"x\", \"overlay\": {\"runs\": -1}}], "
            "\"overall\": {}}",
            "scenarios[0] (x).overlay.runs: expected a count");
    refused("{\"format\": 1, \"scenarios\": [{\"id\": \"x\", \"overlay\": {\"rules\": [1]}}], "
            "\"overall\": {}}",
            "scenarios[0] (x).overlay.rules: expected an object");
    refused("{\"format\": 1, \"scenarios\": [{\"id\": \"x\", \"overlay\": {\"rules\": {\"idem\": "
            "{\"pass_rate\": true}}}}], \"overall\": {}}",
            "scenarios[0] (x).overlay.rules.idem.pass_rate: expected a number or null");
    refused("{\"format\": 1, \"scenarios\": [{\"id\": \"x\"}, {\"id\": \"y\"}, {\"id\": \"x\"}], "
            "\"overall\": {}}",
            "scenario 'x' appears twice (scenarios[0] and [2])");
    refused("{\"format\": 1, \"scenarios\": [], \"overall\": {\"quality\": {\"mean\": \"high\"}}}",
            "overall.quality.mean: expected a number or null, found a string");
    refused("{\"format\": 1, \"iterations\": 2.5, \"scenarios\": [], \"overall\": {}}",
            "iterations: expected a count");
}

static void test_load_files(void **state)
{
    (void)state;
    char err[512] = "";
    fh_report *r = fh_report_load(FIXTURES "/healthy.json", err, sizeof(err));
    if (!r)
        fail_msg("%s", err);
    assert_int_equal(r->count, 10);
    assert_string_equal(r->rows[0].id, "refund_processing_duplicate");
    assert_string_equal(r->rows[0].overlay, "refund_lot_switch");
    assert_false(isnan(r->overall.p95_ms));
    assert_near(r->rows[0].failed_pct, 0, 0);
    assert_near(r->overall.failed_pct, 0, 0);
    fh_report_free(r);

    assert_null(fh_report_load(FIXTURES "/no_such_report.json", err, sizeof(err)));
    contains(err, "no_such_report.json: cannot read the report: No such file or directory");
    assert_null(fh_report_load(FIXTURES "/truncated.json", err, sizeof(err)));
    contains(err, "truncated.json:");
    contains(err, "not valid JSON");
    assert_null(fh_report_load(FIXTURES "/not_a_report.json", err, sizeof(err)));
    contains(err, "not_a_report.json: not a fusion-host bench report (no \"format\": 1)");
    assert_null(fh_report_load(FIXTURES, err, sizeof(err)));
    contains(err, "is a folder");
}

/* ---- budget analysis -------------------------------------------------- */

static void test_budget_analysis(void **state)
{
    (void)state;
    char *a1 = scenario_json("tokens_critical", 1500, 25.1, 0.9);
    char *a2 = scenario_json("slow|pipe", 2000.1, 12.0, 0.8);
    char *a3 = scenario_json("all_ok", 2000.0, -5.0, 0.95);
    char *a4 = scenario_json("low_quality", 10, 0, 0.79);
    char *sc = NULL;
    assert_true(asprintf(&sc, "%s,%s,%s,%s", a1, a2, a3, a4) > 0);
    fh_report *r = report_of(sc,
                             "{\"latency_ms\": {\"p95\": 5000.1}, \"token_delta_pct\": 8.0, "
                             "\"quality\": {\"mean\": 0.85}, \"runs\": 40, \"failed\": 0}",
                             ", \"created\": \"2026-12-01T04:30:00Z\"");
    json_t *a = fh_budget_analyze(r);
    assert_non_null(a);
    assert_int_equal(json_integer_value(json_object_get(a, "critical")), 2);
    assert_int_equal(json_integer_value(json_object_get(a, "warnings")), 2);
    assert_int_equal(json_integer_value(json_object_get(a, "unknown")), 0);
    assert_int_equal(fh_budget_exit(a), 1);
    const json_t *rows = json_object_get(a, "scenarios");
    assert_string_equal(status_of(json_array_get(rows, 0), "token_delta_pct"), "critical");
    assert_string_equal(status_of(json_array_get(rows, 1), "latency_p95_ms"), "warning");
    assert_string_equal(status_of(json_array_get(rows, 1), "token_delta_pct"), "ok");
    assert_string_equal(status_of(json_array_get(rows, 1), "quality_mean"), "ok");
    assert_string_equal(status_of(json_array_get(rows, 2), "latency_p95_ms"), "ok");
    assert_string_equal(status_of(json_array_get(rows, 3), "quality_mean"), "warning");
    assert_string_equal(status_of(json_array_get(rows, 3), "failed_runs_pct"), "ok");
    assert_string_equal(json_string_value(json_object_get(json_array_get(rows, 2), "status")),
                        "ok");
    assert_string_equal(json_string_value(json_object_get(json_array_get(rows, 0), "status")),
                        "critical");
    const json_t *overall = json_object_get(a, "overall");
    assert_string_equal(status_of(overall, "latency_p95_ms"), "critical");
    assert_string_equal(status_of(overall, "failed_runs_pct"), "ok");
    assert_null(json_object_get(overall, "id"));

    const json_t *breaches = json_object_get(a, "breaches");
    assert_int_equal(json_array_size(breaches), 4);
    const json_t *b0 = json_array_get(breaches, 0);
    assert_string_equal(json_string_value(json_object_get(b0, "scenario")), "tokens_critical");
    assert_string_equal(json_string_value(json_object_get(b0, "procedure")), "Budget violations");
    assert_near(json_real_value(json_object_get(b0, "threshold")), 25.0, 0);
    assert_string_equal(json_string_value(json_object_get(json_array_get(breaches, 3), "scenario")),
                        "overall");

    char *md = render(fh_budget_markdown, a);
    contains(md, "# Budget analysis\n");
    contains(md, "| scenario | overlay | p95 ms | status | token delta % | status | quality | "
                 "status | failed % | status |\n");
    contains(md, "| tokens_critical | refund_lot_switch | 1500.0 | ok | 25.1 | **critical** | "
                 "0.900 | ok | 0.0 | ok |\n");
    /* A '|' in an id must not split the row. */
    contains(md, "| slow\\|pipe | refund_lot_switch | 2000.1 | **warning** | 12.0 | ok | 0.800 | "
                 "ok | 0.0 | ok |\n");
    contains(md, "| all_ok | refund_lot_switch | 2000.0 | ok | -5.0 | ok | 0.950 | ok | 0.0 | ok "
                 "|\n");
    contains(md, "| **overall** | | 5000.1 | **critical** | 8.0 | ok | 0.850 | ok | 0.0 | ok |\n");
    contains(md, "**2 critical (tokens_critical token delta, overall p95 latency), 2 warnings "
                 "(slow\\|pipe p95 latency, low_quality mean quality)**.");
    contains(md, "- **critical**: tokens_critical token delta 25.1 % is over 25 %: follow "
                 "\"Budget violations\" in docs/operations.md.");
    contains(md, "- **warning**: low_quality mean quality 0.790 is under 0.8: follow \"Quality "
                 "degradation\" in docs/operations.md.");
    contains(md, "- **critical**: overall p95 latency 5000.1 ms is over 5000 ms: follow \"High "
                 "latency\" in docs/operations.md.");
    contains(md, "created 2026-12-01T04:30:00Z");
    free(md);
    json_decref(a);
    fh_report_free(r);
    free(a1);
    free(a2);
    free(a3);
    free(a4);
    free(sc);
}

/* Warnings alone exit 0; some failed runs (not all) are one. */
static void test_budget_warnings_only(void **state)
{
    (void)state;
    char *w = scenario_json("w", 4999.9, 24.9, 0.1);
    char *s = NULL;
    assert_true(
        asprintf(&s,
                 "%s, {\"id\": \"flaky\", \"overlay\": {\"name\": \"refund_lot_switch\", "
                 "\"runs\": 5, \"failed\": 4, \"latency_ms\": {\"p50\": 10.0, \"p95\": 12.0}, "
                 "\"quality\": {\"mean\": 0.9}}, \"token_delta_pct\": 1.0}",
                 w) > 0);
    fh_report *r = report_of(s, OVERALL_OK, NULL);
    assert_near(r->rows[1].failed_pct, 80.0, 1e-9);
    json_t *a = fh_budget_analyze(r);
    assert_int_equal(json_integer_value(json_object_get(a, "critical")), 0);
    assert_int_equal(json_integer_value(json_object_get(a, "warnings")), 4);
    assert_int_equal(fh_budget_exit(a), 0);
    const json_t *flaky = json_array_get(json_object_get(a, "scenarios"), 1);
    assert_string_equal(status_of(flaky, "failed_runs_pct"), "warning");
    assert_string_equal(json_string_value(json_object_get(flaky, "status")), "warning");
    char *md = render(fh_budget_markdown, a);
    contains(md,
             "**4 warnings (w p95 latency, w token delta, w mean quality, flaky failed runs)**.");
    contains(md, "| flaky | refund_lot_switch | 12.0 | ok | 1.0 | ok | 0.900 | ok | 80.0 | "
                 "**warning** |\n");
    contains(md, "- **warning**: flaky failed runs 80.0 % is over 0 %: follow \"Health checks\" in "
                 "docs/operations.md.");
    contains(md, "Note: overlaid runs failed (no HTTP 200) and are left out of the figures: "
                 "flaky 4 of 5.");
    free(md);
    json_decref(a);
    fh_report_free(r);
    free(w);
    free(s);
}

/* Every overlaid run of a scenario failed (an upstream that never
 * answered): its other figures are unknown, and it must not read as
 * healthy: critical, exit 1. No runs at all is unknown, not ok. */
static void test_budget_all_failed(void **state)
{
    (void)state;
    char *fine = scenario_json("fine", 100, 5, 0.9);
    char *s = NULL;
    assert_true(asprintf(&s,
                         "%s, {\"id\": \"dead\", \"overlay\": {\"name\": null, \"version\": null, "
                         "\"runs\": 5, \"failed\": 5, \"reasons\": {\"transport_error\": 5}, "
                         "\"latency_ms\": null, \"quality\": null, \"rules\": {}}, "
                         "\"token_delta_pct\": null},"
                         "{\"id\": \"never_ran\", \"overlay\": {\"runs\": 0, \"failed\": 0}}",
                         fine) > 0);
    fh_report *r = report_of(s,
                             "{\"latency_ms\": {\"p95\": 20.0}, \"token_delta_pct\": 5.0, "
                             "\"quality\": {\"mean\": 0.9}, \"runs\": 30, \"failed\": 10}",
                             NULL);
    assert_int_equal(r->rows[1].runs, 5);
    assert_int_equal(r->rows[1].failed, 5);
    assert_near(r->rows[1].failed_pct, 100.0, 0);
    assert_true(isnan(r->rows[1].p95_ms));
    assert_true(isnan(r->rows[2].failed_pct));
    assert_near(r->overall.failed_pct, 100.0 / 3, 1e-9);

    json_t *a = fh_budget_analyze(r);
    assert_non_null(a);
    assert_int_equal(json_integer_value(json_object_get(a, "critical")), 1);
    assert_int_equal(json_integer_value(json_object_get(a, "warnings")), 1);
    assert_int_equal(json_integer_value(json_object_get(a, "unknown")), 7);
    assert_int_equal(fh_budget_exit(a), 1);
    const json_t *rows = json_object_get(a, "scenarios");
    const json_t *dead = json_array_get(rows, 1);
    assert_string_equal(json_string_value(json_object_get(dead, "status")), "critical");
    assert_string_equal(status_of(dead, "failed_runs_pct"), "critical");
    assert_near(json_real_value(json_object_get(
                    json_object_get(json_object_get(dead, "figures"), "failed_runs_pct"), "value")),
                100.0, 0);
    assert_string_equal(status_of(dead, "latency_p95_ms"), "unknown");
    assert_string_equal(json_string_value(json_object_get(json_array_get(rows, 0), "status")),
                        "ok");
    const json_t *never = json_array_get(rows, 2);
    assert_string_equal(status_of(never, "failed_runs_pct"), "unknown");
    assert_string_equal(json_string_value(json_object_get(never, "status")), "unknown");
    assert_string_equal(status_of(json_object_get(a, "overall"), "failed_runs_pct"), "warning");

    const json_t *t = json_object_get(json_object_get(a, "thresholds"), "failed_runs_pct");
    assert_string_equal(json_string_value(json_object_get(t, "procedure")), "Health checks");
    assert_near(json_real_value(json_object_get(t, "warning_over")), 0, 0);
    const json_t *breaches = json_object_get(a, "breaches");
    assert_int_equal(json_array_size(breaches), 2);
    const json_t *b0 = json_array_get(breaches, 0);
    assert_string_equal(json_string_value(json_object_get(b0, "scenario")), "dead");
    assert_string_equal(json_string_value(json_object_get(b0, "figure")), "failed_runs_pct");
    assert_string_equal(json_string_value(json_object_get(b0, "status")), "critical");
    assert_string_equal(json_string_value(json_object_get(b0, "procedure")), "Health checks");
    assert_string_equal(json_string_value(json_object_get(json_array_get(breaches, 1), "scenario")),
                        "overall");

    char *md = render(fh_budget_markdown, a);
    contains(md, "| dead | baseline | - | unknown | - | unknown | - | unknown | 100.0 | "
                 "**critical** |\n");
    contains(md, "| never_ran | baseline | - | unknown | - | unknown | - | unknown | - | "
                 "unknown |\n");
    contains(md, "| **overall** | | 20.0 | ok | 5.0 | ok | 0.900 | ok | 33.3 | **warning** |\n");
    contains(md, "**1 critical (dead failed runs), 1 warning (overall failed runs)**; 7 unknown");
    contains(md, "- **critical**: dead failed runs: every run failed: follow \"Health checks\"");
    contains(md, "follow \"Health checks\" in docs/operations.md.");
    contains(md, "Note: overlaid runs failed (no HTTP 200) and are left out of the figures: "
                 "dead 5 of 5.");
    free(md);
    json_decref(a);
    fh_report_free(r);
    free(fine);
    free(s);
}

/* ---- compare analysis ------------------------------------------------- */

static void test_compare_regressions(void **state)
{
    (void)state;
    char *b1 = scenario_json("slower", 1000, 5, 0.9);
    char *b2 = scenario_json("dropped", 10, 5, 0.9);
    char *b3 = scenario_json("steady", 1000, 12.3, 0.9);
    char *c1 = scenario_json("slower", 1200.1, 5, 0.849);
    char *c3 = scenario_json("steady", 1200, 17.3, 0.85);
    char *c4 = scenario_json("added", 10, 5, 0.9);
    char *bs = NULL, *cs = NULL;
    assert_true(asprintf(&bs, "%s,%s,%s", b1, b2, b3) > 0);
    assert_true(asprintf(&cs, "%s,%s,%s", c1, c3, c4) > 0);
    fh_report *base = report_of(bs, OVERALL_OK, NULL);
    fh_report *cur = report_of(cs, OVERALL_OK,
                               ", \"iterations\": 20, \"upstream\": \"http://10.0.0.5:8000\", "
                               "\"config_hash\": \"bbbb\"");
    json_t *a = fh_compare_analyze(base, cur);
    assert_non_null(a);
    const json_t *rows = json_object_get(a, "scenarios");
    assert_int_equal(json_array_size(rows), 4);
    const json_t *slower = json_array_get(rows, 0);
    assert_string_equal(json_string_value(json_object_get(slower, "verdict")), "regression");
    assert_int_equal(json_array_size(json_object_get(slower, "regressions")), 2);
    const json_t *p95 = json_object_get(json_object_get(slower, "figures"), "latency_p95_ms");
    assert_near(json_real_value(json_object_get(p95, "change_pct")), 20.01, 1e-9);
    assert_true(json_is_true(json_object_get(p95, "regression")));
    const json_t *dropped = json_array_get(rows, 1);
    assert_string_equal(json_string_value(json_object_get(dropped, "verdict")), "missing");
    assert_string_equal(
        json_string_value(json_array_get(json_object_get(dropped, "regressions"), 0)), "missing");
    /* Every change exactly at its threshold: not a regression. */
    const json_t *steady = json_array_get(rows, 2);
    assert_string_equal(json_string_value(json_object_get(steady, "verdict")), "ok");
    const json_t *td = json_object_get(json_object_get(steady, "figures"), "token_delta_pct");
    assert_near(json_real_value(json_object_get(td, "change_points")), 5.0, 1e-9);
    const json_t *added = json_array_get(rows, 3);
    assert_string_equal(json_string_value(json_object_get(added, "id")), "added");
    assert_string_equal(json_string_value(json_object_get(added, "verdict")), "new");
    assert_int_equal(json_integer_value(json_object_get(a, "regressions")), 3);
    assert_int_equal(fh_compare_exit(a), 1);
    assert_string_equal(
        json_string_value(json_object_get(json_object_get(a, "overall"), "verdict")), "ok");

    char *w = json_dumps(json_object_get(a, "warnings"), 0);
    contains(w, "the reports were made with different configurations: config_hash aaaa... in "
                "the baseline, bbbb... in the current");
    contains(w, "different numbers of iterations (5 in the baseline, 20 in the current)");
    contains(w, "different upstreams (stub in the baseline, http://10.0.0.5:8000 in the current)");
    free(w);

    char *md = render(fh_compare_markdown, a);
    contains(md, "| scenario | p50 ms | p95 ms | token delta % | quality | rule pass rate | "
                 "verdict |");
    contains(md, "| slower | 10.0 → 10.0 (0.0 %) | **1000.0 → 1200.1 (+20.0 %)** | 5.0 → 5.0 "
                 "(0.0 pts) | **0.900 → 0.849 (-0.051)** | 0.900 → 0.900 (0.000) | "
                 "**regression**: p95 latency, mean quality |");
    contains(md, "| dropped | 10.0 → - | 10.0 → - | 5.0 → - | 0.900 → - | 0.900 → - | "
                 "**regression**: missing from the current report |");
    contains(md, "| steady | 10.0 → 10.0 (0.0 %) | 1000.0 → 1200.0 (+20.0 %) | 12.3 → 17.3 "
                 "(+5.0 pts) | 0.900 → 0.850 (-0.050) | 0.900 → 0.900 (0.000) | ok |");
    contains(md, "| added | - → 10.0 | - → 10.0 | - → 5.0 | - → 0.900 | - → 0.900 | new |");
    contains(md, "| **overall** | 10.0 → 10.0 (0.0 %) | 20.0 → 20.0 (0.0 %) |");
    contains(md, "warning: the reports were made with different configurations");
    contains(md, "**3 regressions** (2 scenarios in both reports, 1 new):");
    contains(md, "- slower: p95 latency 1000.0 → 1200.1 ms: follow \"High latency\" in "
                 "docs/operations.md.");
    contains(md, "- slower: mean quality 0.900 → 0.849: follow \"Quality degradation\"");
    contains(md, "- dropped: in the baseline report, missing from the current one");
    free(md);
    json_decref(a);
    fh_report_free(base);
    fh_report_free(cur);
    free(b1);
    free(b2);
    free(b3);
    free(c1);
    free(c3);
    free(c4);
    free(bs);
    free(cs);
}

/* A report against itself: nothing to say, exit 0. */
static void test_compare_same(void **state)
{
    (void)state;
    char *s = scenario_json("same", 1500, 30, 0.5);
    fh_report *r = report_of(s, OVERALL_OK, NULL);
    json_t *a = fh_compare_analyze(r, r);
    assert_int_equal(json_integer_value(json_object_get(a, "regressions")), 0);
    assert_int_equal(json_array_size(json_object_get(a, "warnings")), 0);
    assert_int_equal(fh_compare_exit(a), 0);
    char *md = render(fh_compare_markdown, a);
    contains(md, "**No regressions**: 1 scenarios in both reports.");
    assert_null(strstr(md, "warning:"));
    free(md);
    json_decref(a);
    fh_report_free(r);
    free(s);
}

/* Failed runs that grew are said; a baseline latency of 0 has no
 * percentage change. */
static void test_compare_failed_runs(void **state)
{
    (void)state;
    fh_report *base = report_of("{\"id\": \"x\", \"overlay\": {\"runs\": 5, \"failed\": 0, "
                                "\"latency_ms\": {\"p50\": 0, \"p95\": 0}}}",
                                OVERALL_OK, NULL);
    fh_report *cur = report_of("{\"id\": \"x\", \"overlay\": {\"runs\": 5, \"failed\": 3, "
                               "\"latency_ms\": {\"p50\": 4, \"p95\": 50.1}}}",
                               OVERALL_OK, NULL);
    json_t *a = fh_compare_analyze(base, cur);
    char *w = json_dumps(json_object_get(a, "warnings"), 0);
    contains(w, "x: 3 of 5 overlaid runs failed in the current report, 0 of 5 in the baseline");
    free(w);
    const json_t *p95 = json_object_get(
        json_object_get(json_array_get(json_object_get(a, "scenarios"), 0), "figures"),
        "latency_p95_ms");
    assert_true(json_is_null(json_object_get(p95, "change_pct")));
    assert_true(json_is_true(json_object_get(p95, "regression")));
    char *md = render(fh_compare_markdown, a);
    contains(md, "| x | 0.0 → 4.0 | **0.0 → 50.1** |");
    free(md);
    json_decref(a);
    fh_report_free(base);
    fh_report_free(cur);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_latency_edges),
        cmocka_unit_test(test_tokens_edges),
        cmocka_unit_test(test_quality_edges),
        cmocka_unit_test(test_failed_edges),
        cmocka_unit_test(test_p95_rule_edges),
        cmocka_unit_test(test_tokens_rule_edges),
        cmocka_unit_test(test_quality_and_rules_edges),
        cmocka_unit_test(test_unknown_figures),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_load_files),
        cmocka_unit_test(test_budget_analysis),
        cmocka_unit_test(test_budget_warnings_only),
        cmocka_unit_test(test_budget_all_failed),
        cmocka_unit_test(test_compare_regressions),
        cmocka_unit_test(test_compare_same),
        cmocka_unit_test(test_compare_failed_runs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
