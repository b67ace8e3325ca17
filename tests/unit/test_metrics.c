/*
 * test_metrics.c - the Prometheus registry (host/metrics.c): exact rendered
 * lines for counters and histograms (cumulative buckets, _sum, _count),
 * label sanitising, the series cap folding into __other__ and counting
 * drops, overlay state exclusivity, the exposition format line by line, and
 * 4 threads recording at once with exact totals (run under TSan by the
 * "concurrency" label). Each test owns its fh_metrics; no files.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <regex.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---------------------------------------------------------- */

static char *render(fh_metrics *m)
{
    size_t len = 0;
    char *text = fh_metrics_render(m, &len);
    assert_non_null(text);
    assert_int_equal(len, strlen(text));
    assert_true(len > 0 && text[len - 1] == '\n');
    return text;
}

/* Whether `line` is a whole line of text. */
static bool has_line(const char *text, const char *line)
{
    size_t n = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++)
        if ((p == text || p[-1] == '\n') && p[n] == '\n')
            return true;
    return false;
}

static void expect_line(const char *text, const char *line)
{
    if (!has_line(text, line)) {
        print_message("missing line: %s\n--- render ---\n%s", line, text);
        fail();
    }
}

/* The value of the sample whose name and labels are exactly `key`; fails
 * the test when there is none. */
static double value_of(const char *text, const char *key)
{
    size_t n = strlen(key);
    for (const char *p = text; (p = strstr(p, key)) != NULL; p++)
        if ((p == text || p[-1] == '\n') && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    print_message("no sample %s\n--- render ---\n%s", key, text);
    fail();
    return 0;
}

/* Number of sample lines starting with `prefix`. */
static size_t count_lines(const char *text, const char *prefix)
{
    size_t n = 0, len = strlen(prefix);
    for (const char *p = text; *p;) {
        if (strncmp(p, prefix, len) == 0)
            n++;
        const char *nl = strchr(p, '\n');
        if (!nl)
            break;
        p = nl + 1;
    }
    return n;
}

/* ---- tests ------------------------------------------------------------ */

static void test_null_safe(void **state)
{
    (void)state;
    fh_metrics_request(NULL, "o", "s", "applied", 1);
    fh_metrics_quality(NULL, "o", "s", 0.5);
    fh_metrics_token_delta(NULL, "o", "s", 5);
    fh_metrics_breaker_event(NULL, "o", "open");
    fh_metrics_overlay_event(NULL, "o", "e", 1);
    fh_metrics_overlay_state(NULL, "o", "enabled");
    size_t len = 99;
    assert_null(fh_metrics_render(NULL, &len));
    assert_int_equal(len, 0);
    fh_metrics_free(NULL);
}

static void test_empty_render(void **state)
{
    (void)state;
    fh_metrics *m = fh_metrics_new(10);
    assert_non_null(m);
    char *t = render(m);
    /* Every family announces itself even before its first sample. */
    expect_line(t, "# TYPE fusion_requests_total counter");
    expect_line(t, "# TYPE fusion_execution_latency_ms histogram");
    expect_line(t, "# TYPE fusion_tokens_delta_pct histogram");
    expect_line(t, "# TYPE fusion_quality_score histogram");
    expect_line(t, "# TYPE fusion_circuit_breaker_events_total counter");
    expect_line(t, "# TYPE fusion_overlay_events_total counter");
    expect_line(t, "# TYPE fusion_overlay_state gauge");
    expect_line(t, "# TYPE fusion_metrics_dropped_total counter");
    expect_line(t, "fusion_metrics_dropped_total 0");
    /* The runbook thresholds, with the SPEC's label name. */
    expect_line(t, "fusion_threshold_latency_ms{result=\"warn\"} 2000");
    expect_line(t, "fusion_threshold_latency_ms{result=\"critical\"} 5000");
    expect_line(t, "fusion_threshold_token_delta_pct{result=\"warn\"} 12");
    expect_line(t, "fusion_threshold_token_delta_pct{result=\"critical\"} 25");
    expect_line(t, "fusion_threshold_quality_min{result=\"warn\"} 0.8");
    free(t);
    fh_metrics_free(m);
}

static void test_counters_exact(void **state)
{
    (void)state;
    fh_metrics *m = fh_metrics_new(100);
    fh_metrics_request(m, "refund_lot_switch", "refund.lot", "applied", 10);
    fh_metrics_request(m, "refund_lot_switch", "refund.lot", "applied", 20);
    fh_metrics_request(m, "baseline", "refund.lot", "no_match", 5);
    fh_metrics_breaker_event(m, "refund_lot_switch", "open");
    fh_metrics_breaker_event(m, "refund_lot_switch", "open");
    fh_metrics_breaker_event(m, "refund_lot_switch", "closed");
    fh_metrics_overlay_event(m, "state_model_first", "rewrites", 2.5);
    fh_metrics_overlay_event(m, "state_model_first", "rewrites", 1);
    fh_metrics_overlay_event(m, "state_model_first", "rewrites", -3); /* ignored */
    char *t = render(m);
    expect_line(t, "fusion_requests_total{overlay=\"refund_lot_switch\",scenario=\"refund.lot\","
                   "result=\"applied\"} 2");
    expect_line(t, "fusion_requests_total{overlay=\"baseline\",scenario=\"refund.lot\","
                   "result=\"no_match\"} 1");
    expect_line(
        t, "fusion_circuit_breaker_events_total{overlay=\"refund_lot_switch\",result=\"open\"} "
           "2");
    expect_line(t, "fusion_circuit_breaker_events_total{overlay=\"refund_lot_switch\","
                   "result=\"closed\"} 1");
    expect_line(
        t, "fusion_overlay_events_total{overlay=\"state_model_first\",result=\"rewrites\"} 3.5");
    /* Insertion order: applied before no_match. */
    assert_true(strstr(t, "result=\"applied\"") < strstr(t, "result=\"no_match\""));
    expect_line(t, "fusion_metrics_dropped_total 0");
    free(t);
    fh_metrics_free(m);
}

static void test_histograms_exact(void **state)
{
    (void)state;
    fh_metrics *m = fh_metrics_new(100);
    /* Latency: edges are inclusive (le), 70000 is past the last bound. */
    fh_metrics_request(m, "o", "s", "applied", 3);
    fh_metrics_request(m, "o", "s", "applied", 7);
    fh_metrics_request(m, "o", "s", "applied", 100);
    fh_metrics_request(m, "o", "s", "applied", 70000.5);
    char *t = render(m);
#define LAT "fusion_execution_latency_ms_bucket{overlay=\"o\",scenario=\"s\",le="
    expect_line(t, LAT "\"5\"} 1");
    expect_line(t, LAT "\"10\"} 2");
    expect_line(t, LAT "\"25\"} 2");
    expect_line(t, LAT "\"50\"} 2");
    expect_line(t, LAT "\"100\"} 3");
    expect_line(t, LAT "\"250\"} 3");
    expect_line(t, LAT "\"2000\"} 3");
    expect_line(t, LAT "\"5000\"} 3");
    expect_line(t, LAT "\"60000\"} 3");
    expect_line(t, LAT "\"+Inf\"} 4");
#undef LAT
    expect_line(t, "fusion_execution_latency_ms_sum{overlay=\"o\",scenario=\"s\"} 70110.5");
    expect_line(t, "fusion_execution_latency_ms_count{overlay=\"o\",scenario=\"s\"} 4");
    assert_int_equal(count_lines(t, "fusion_execution_latency_ms_bucket{"), 14);
    free(t);

    /* Token delta: negative values and the runbook edges 12 and 25. */
    fh_metrics_token_delta(m, "o", "s", -60);
    fh_metrics_token_delta(m, "o", "s", -10);
    fh_metrics_token_delta(m, "o", "s", 12);
    fh_metrics_token_delta(m, "o", "s", 12.5);
    fh_metrics_token_delta(m, "o", "s", 30);
    fh_metrics_token_delta(m, "o", "s", INFINITY); /* ignored */
    t = render(m);
#define TOK "fusion_tokens_delta_pct_bucket{overlay=\"o\",scenario=\"s\",le="
    expect_line(t, TOK "\"-50\"} 1");
    expect_line(t, TOK "\"-25\"} 1");
    expect_line(t, TOK "\"-10\"} 2");
    expect_line(t, TOK "\"0\"} 2");
    expect_line(t, TOK "\"10\"} 2");
    expect_line(t, TOK "\"12\"} 3");
    expect_line(t, TOK "\"15\"} 4");
    expect_line(t, TOK "\"25\"} 4");
    expect_line(t, TOK "\"50\"} 5");
    expect_line(t, TOK "\"100\"} 5");
    expect_line(t, TOK "\"+Inf\"} 5");
#undef TOK
    expect_line(t, "fusion_tokens_delta_pct_sum{overlay=\"o\",scenario=\"s\"} -15.5");
    expect_line(t, "fusion_tokens_delta_pct_count{overlay=\"o\",scenario=\"s\"} 5");
    free(t);

    /* Quality: 0.8 is a bucket edge (the runbook minimum). */
    fh_metrics_quality(m, "o", "s", 0.75);
    fh_metrics_quality(m, "o", "s", 0.8);
    fh_metrics_quality(m, "o", "s", 0.95);
    fh_metrics_quality(m, "o", "s", NAN); /* ignored */
    t = render(m);
#define QUA "fusion_quality_score_bucket{overlay=\"o\",scenario=\"s\",le="
    expect_line(t, QUA "\"0.1\"} 0");
    expect_line(t, QUA "\"0.7\"} 0");
    expect_line(t, QUA "\"0.8\"} 2");
    expect_line(t, QUA "\"0.9\"} 2");
    expect_line(t, QUA "\"1\"} 3");
    expect_line(t, QUA "\"+Inf\"} 3");
#undef QUA
    /* 0.8 and 0.95 are inexact in binary: compare the sum numerically. */
    assert_true(fabs(value_of(t, "fusion_quality_score_sum{overlay=\"o\",scenario=\"s\"}") - 2.5) <
                1e-9);
    expect_line(t, "fusion_quality_score_count{overlay=\"o\",scenario=\"s\"} 3");
    assert_int_equal(count_lines(t, "fusion_quality_score_bucket{"), 11);
    free(t);
    fh_metrics_free(m);
}

/* One finished request's samples at once: the quality and overhead when
 * given, nothing for NAN; the same series the single calls would make. */
static void test_request_done(void **state)
{
    (void)state;
    fh_metrics *m = fh_metrics_new(100);
    fh_metrics_request_done(m, "o", "s", "applied", 12, 0.85, 0.03);
    fh_metrics_request_done(m, "o", "s", "applied", 40, NAN, NAN);
    fh_metrics_request_done(m, "baseline", "s", "no_match", 7, NAN, 0.3);
    char *t = render(m);
    expect_line(t, "fusion_requests_total{overlay=\"o\",scenario=\"s\",result=\"applied\"} 2");
    expect_line(t, "fusion_execution_latency_ms_count{overlay=\"o\",scenario=\"s\"} 2");
    expect_line(t, "fusion_quality_score_count{overlay=\"o\",scenario=\"s\"} 1");
    expect_line(t, "fusion_quality_score_bucket{overlay=\"o\",scenario=\"s\",le=\"0.8\"} 0");
    expect_line(t, "fusion_quality_score_bucket{overlay=\"o\",scenario=\"s\",le=\"0.9\"} 1");
    expect_line(t, "fusion_overhead_ms_count{overlay=\"o\"} 1");
    expect_line(t, "fusion_overhead_ms_bucket{overlay=\"o\",le=\"0.025\"} 0");
    expect_line(t, "fusion_overhead_ms_bucket{overlay=\"o\",le=\"0.05\"} 1");
    expect_line(t, "fusion_overhead_ms_count{overlay=\"baseline\"} 1");
    assert_null(strstr(t, "fusion_quality_score_count{overlay=\"baseline\""));
    free(t);
    fh_metrics_free(m);
}

static void test_sanitize(void **state)
{
    (void)state;
    char out[51];
    fh_metrics_sanitize("refund_lot-switch.v2", out);
    assert_string_equal(out, "refund_lot-switch.v2");
    fh_metrics_sanitize("", out);
    assert_string_equal(out, "none");
    fh_metrics_sanitize(NULL, out);
    assert_string_equal(out, "none");
    fh_metrics_sanitize("a\"b\\c\nd e{f}=g,h", out);
    assert_string_equal(out, "a_b_c_d_e_f__g_h");
    fh_metrics_sanitize("caf\xc3\xa9", out); /* "café": each byte of é */
    assert_string_equal(out, "caf__");
    char longer[200];
    memset(longer, 'x', sizeof(longer) - 1);
    longer[sizeof(longer) - 1] = '\0';
    memset(out, '#', sizeof(out));
    fh_metrics_sanitize(longer, out);
    assert_int_equal(strlen(out), 50);
    assert_int_equal(strspn(out, "x"), 50);

    /* And what reaches the output is the sanitised value. */
    fh_metrics *m = fh_metrics_new(10);
    fh_metrics_request(m, "ev\"il\nname", "", "caf\xc3\xa9", 1);
    fh_metrics_breaker_event(m, longer, NULL);
    char *t = render(m);
    expect_line(t, "fusion_requests_total{overlay=\"ev_il_name\",scenario=\"none\","
                   "result=\"caf__\"} 1");
    char line[200];
    snprintf(line, sizeof(line),
             "fusion_circuit_breaker_events_total{overlay=\"%.50s\",result=\"none\"} 1", longer);
    expect_line(t, line);
    free(t);
    fh_metrics_free(m);
}

static void test_cap_folds_scenario(void **state)
{
    (void)state;
    fh_metrics *m = fh_metrics_new(2);
    fh_metrics_quality(m, "o", "s1", 0.5);
    fh_metrics_quality(m, "o", "s2", 0.5);
    fh_metrics_quality(m, "o", "s3", 0.5); /* past the cap: folded */
    fh_metrics_quality(m, "o", "s3", 0.5); /* still not admitted: folded again */
    fh_metrics_quality(m, "o", "s1", 0.5); /* existing: not a drop */
    char *t = render(m);
    expect_line(t, "fusion_quality_score_count{overlay=\"o\",scenario=\"s1\"} 2");
    expect_line(t, "fusion_quality_score_count{overlay=\"o\",scenario=\"s2\"} 1");
    expect_line(t, "fusion_quality_score_count{overlay=\"o\",scenario=\"__other__\"} 2");
    assert_false(has_line(t, "fusion_quality_score_count{overlay=\"o\",scenario=\"s3\"} 1"));
    assert_null(strstr(t, "scenario=\"s3\""));
    expect_line(t, "fusion_metrics_dropped_total 2");
    free(t);

    /* A request records two families with the same cap: both fold. */
    fh_metrics_request(m, "o", "a", "applied", 1);
    fh_metrics_request(m, "o", "b", "applied", 1);
    fh_metrics_request(m, "o", "c", "applied", 1);
    t = render(m);
    expect_line(t,
                "fusion_requests_total{overlay=\"o\",scenario=\"__other__\",result=\"applied\"} 1");
    expect_line(t, "fusion_execution_latency_ms_count{overlay=\"o\",scenario=\"__other__\"} 1");
    expect_line(t, "fusion_metrics_dropped_total 4");
    free(t);
    fh_metrics_free(m);
}

static void test_cap_folds_overlay_and_bounds_memory(void **state)
{
    (void)state;
    fh_metrics *m = fh_metrics_new(1);
    fh_metrics_breaker_event(m, "a", "open");
    fh_metrics_breaker_event(m, "b", "open");
    fh_metrics_breaker_event(m, "c", "open");
    char *t = render(m);
    expect_line(t, "fusion_circuit_breaker_events_total{overlay=\"a\",result=\"open\"} 1");
    expect_line(t, "fusion_circuit_breaker_events_total{overlay=\"__other__\",result=\"open\"} 2");
    expect_line(t, "fusion_metrics_dropped_total 2");
    free(t);

    /* A plugin inventing event names cannot grow the table without bound:
     * every sample is kept somewhere, in at most 2 * cap + 2 series. */
    char ov[16], ev[16];
    for (int i = 0; i < 500; i++) {
        snprintf(ov, sizeof(ov), "o%d", i % 7);
        snprintf(ev, sizeof(ev), "e%d", i);
        fh_metrics_overlay_event(m, ov, ev, 1);
    }
    t = render(m);
    size_t lines = count_lines(t, "fusion_overlay_events_total{");
    assert_true(lines >= 2 && lines <= 4);
    double sum = 0;
    for (const char *p = t; (p = strstr(p, "\nfusion_overlay_events_total{")) != NULL; p++)
        sum += strtod(strchr(p, '}') + 2, NULL);
    assert_true(sum == 500);
    expect_line(t, "fusion_overlay_events_total{overlay=\"__other__\",result=\"__other__\"} 497");
    expect_line(t, "fusion_metrics_dropped_total 501");
    free(t);
    fh_metrics_free(m);
}

/* The state lines for one overlay, checked to have exactly one 1. */
static void expect_state(const char *t, const char *overlay, const char *on)
{
    static const char *const states[] = {"enabled", "disabled", "draining", "quarantined"};
    char key[160];
    for (size_t i = 0; i < 4; i++) {
        snprintf(key, sizeof(key), "fusion_overlay_state{overlay=\"%s\",state=\"%s\"}", overlay,
                 states[i]);
        assert_true(value_of(t, key) == (strcmp(states[i], on) == 0 ? 1 : 0));
    }
    snprintf(key, sizeof(key), "fusion_overlay_state{overlay=\"%s\",", overlay);
    double total = 0;
    for (const char *p = t; (p = strstr(p, key)) != NULL; p++)
        total += strtod(strchr(p, '}') + 2, NULL);
    assert_true(total == 1);
}

static void test_overlay_state_exclusive(void **state)
{
    (void)state;
    fh_metrics *m = fh_metrics_new(100);
    fh_metrics_overlay_state(m, "a", "enabled");
    fh_metrics_overlay_state(m, "b", "disabled");
    char *t = render(m);
    expect_state(t, "a", "enabled");
    expect_state(t, "b", "disabled");
    expect_line(t, "fusion_overlay_state{overlay=\"a\",state=\"enabled\"} 1");
    expect_line(t, "fusion_overlay_state{overlay=\"a\",state=\"quarantined\"} 0");
    free(t);

    fh_metrics_overlay_state(m, "a", "draining");
    fh_metrics_overlay_state(m, "a", "quarantined");
    fh_metrics_overlay_state(m, "b", "enabled");
    t = render(m);
    expect_state(t, "a", "quarantined");
    expect_state(t, "b", "enabled");
    assert_int_equal(count_lines(t, "fusion_overlay_state{overlay=\"a\""), 4);
    free(t);

    /* A state the list does not know still leaves exactly one 1. */
    fh_metrics_overlay_state(m, "a", "un known");
    t = render(m);
    expect_line(t, "fusion_overlay_state{overlay=\"a\",state=\"un_known\"} 1");
    expect_line(t, "fusion_overlay_state{overlay=\"a\",state=\"quarantined\"} 0");
    expect_line(t, "fusion_overlay_state{overlay=\"a\",state=\"enabled\"} 0");
    free(t);
    fh_metrics_free(m);

    /* The cap counts each overlay's 4 lines: a cap of 8 holds 2 overlays. */
    m = fh_metrics_new(8);
    fh_metrics_overlay_state(m, "a", "enabled");
    fh_metrics_overlay_state(m, "b", "enabled");
    fh_metrics_overlay_state(m, "c", "disabled");
    t = render(m);
    expect_state(t, "__other__", "disabled");
    assert_null(strstr(t, "overlay=\"c\""));
    expect_line(t, "fusion_metrics_dropped_total 1");
    free(t);
    fh_metrics_free(m);
}

/* Every line is a comment or a sample the format allows, each family has
 * one HELP and one TYPE before its samples, counters end in _total, and
 * histogram buckets are cumulative up to +Inf == _count. */
static void check_format(const char *text)
{
    regex_t re;
    /* POSIX brackets take no backslash escapes: '-' goes last instead. */
    int rc =
        regcomp(&re,
                "^[a-z_]+([{][a-z_]+=\"[A-Za-z0-9_.+-]*\"(,[a-z_]+=\"[A-Za-z0-9_.+-]*\")*[}])? "
                "-?[0-9.e+-]+(Inf)?$",
                REG_EXTENDED | REG_NOSUB);
    assert_int_equal(rc, 0);
    char *copy = strdup(text);
    assert_non_null(copy);
    char families[32][64];
    char types[32][16];
    size_t nf = 0;
    double prev_bucket = 0, inf_bucket = -1;
    char *save = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, "# HELP ", 7) == 0) {
            char name[64];
            assert_int_equal(sscanf(line + 7, "%63s", name), 1);
            for (size_t i = 0; i < nf; i++)
                assert_string_not_equal(families[i], name);
            assert_true(nf < 32);
            snprintf(families[nf], sizeof(families[nf]), "%s", name);
            types[nf][0] = '\0';
            nf++;
            continue;
        }
        if (strncmp(line, "# TYPE ", 7) == 0) {
            char name[64], type[16];
            assert_int_equal(sscanf(line + 7, "%63s %15s", name, type), 2);
            assert_true(nf > 0);
            assert_string_equal(families[nf - 1], name); /* right after its HELP */
            assert_string_equal(types[nf - 1], "");
            snprintf(types[nf - 1], sizeof(types[nf - 1]), "%s", type);
            if (strcmp(type, "counter") == 0)
                assert_non_null(strstr(name, "_total"));
            continue;
        }
        assert_true(line[0] != '#');
        if (regexec(&re, line, 0, NULL, 0) != 0) {
            print_message("bad line: %s\n", line);
            fail();
        }
        /* The sample belongs to the family announced last. */
        assert_true(nf > 0);
        const char *fam = families[nf - 1];
        size_t fl = strlen(fam);
        assert_memory_equal(line, fam, fl);
        const char *rest = line + fl;
        double v = strtod(strrchr(line, ' ') + 1, NULL);
        if (strcmp(types[nf - 1], "histogram") == 0) {
            if (strncmp(rest, "_bucket{", 8) == 0) {
                assert_true(v >= prev_bucket); /* cumulative */
                prev_bucket = v;
                if (strstr(line, "le=\"+Inf\""))
                    inf_bucket = v;
            } else if (strncmp(rest, "_count{", 7) == 0) {
                assert_true(v == inf_bucket);
                prev_bucket = 0; /* the next series starts over */
                inf_bucket = -1;
            } else {
                assert_true(strncmp(rest, "_sum{", 5) == 0);
            }
        } else {
            assert_true(rest[0] == '{' || rest[0] == ' ');
        }
    }
    assert_true(nf >= 11);
    for (size_t i = 0; i < nf; i++)
        assert_string_not_equal(types[i], "");
    free(copy);
    regfree(&re);
}

static void test_format_valid(void **state)
{
    (void)state;
    fh_metrics *m = fh_metrics_new(3);
    const char *names[] = {"", "x\"y", "caf\xc3\xa9", "a\\b", "line\nbreak", "ok.v-1_2"};
    for (size_t i = 0; i < 6; i++) {
        for (size_t j = 0; j < 6; j++) {
            fh_metrics_request(m, names[i], names[j], names[(i + j) % 6], (double)(i * 700 + j));
            fh_metrics_quality(m, names[i], names[j], (double)j / 5.0);
            fh_metrics_token_delta(m, names[i], names[j], (double)j * 13.0 - 40.5);
            fh_metrics_breaker_event(m, names[i], names[j]);
            fh_metrics_overlay_event(m, names[i], names[j], 0.25);
        }
        fh_metrics_overlay_state(m, names[i], i % 2 ? "enabled" : "draining");
    }
    char *t = render(m);
    check_format(t);
    free(t);
    fh_metrics_free(m);

    /* An empty registry is valid too. */
    m = fh_metrics_new(10);
    t = render(m);
    check_format(t);
    free(t);
    fh_metrics_free(m);
}

/* ---- concurrency ------------------------------------------------------ */

#define THREADS 4
#define SAMPLES 20000

typedef struct {
    fh_metrics *m;
    int id;
} worker_arg;

static void *worker(void *p)
{
    worker_arg *a = p;
    char own[16];
    snprintf(own, sizeof(own), "t%d", a->id);
    for (int i = 0; i < SAMPLES; i++) {
        fh_metrics_request(a->m, "ov", "shared", "applied", (double)(i % 100));
        fh_metrics_token_delta(a->m, "ov", own, 1);
        fh_metrics_overlay_event(a->m, "ov", "hits", 1);
        if (i % 1000 == 0)
            fh_metrics_overlay_state(a->m, "ov", i % 2000 ? "enabled" : "draining");
    }
    return NULL;
}

static void *scraper(void *p)
{
    fh_metrics *m = p;
    for (int i = 0; i < 20; i++) {
        char *t = fh_metrics_render(m, NULL);
        assert_non_null(t);
        free(t);
    }
    return NULL;
}

static void test_concurrent_exact(void **state)
{
    (void)state;
    fh_metrics *m = fh_metrics_new(1000);
    pthread_t th[THREADS], scr;
    worker_arg args[THREADS];
    for (int i = 0; i < THREADS; i++) {
        args[i] = (worker_arg){m, i};
        assert_int_equal(pthread_create(&th[i], NULL, worker, &args[i]), 0);
    }
    assert_int_equal(pthread_create(&scr, NULL, scraper, m), 0);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    assert_int_equal(pthread_join(scr, NULL), 0);

    char *t = render(m);
    check_format(t);
    assert_true(value_of(t, "fusion_requests_total{overlay=\"ov\",scenario=\"shared\","
                            "result=\"applied\"}") == THREADS * SAMPLES);
    assert_true(
        value_of(t, "fusion_execution_latency_ms_count{overlay=\"ov\",scenario=\"shared\"}") ==
        THREADS * SAMPLES);
    /* Each thread adds 0..99 SAMPLES/100 times: 4950 * 200 per thread. */
    assert_true(
        value_of(t, "fusion_execution_latency_ms_sum{overlay=\"ov\",scenario=\"shared\"}") ==
        THREADS * 4950.0 * (SAMPLES / 100));
    /* 0..5 land in le=5: 6 of every 100. */
    assert_true(value_of(t, "fusion_execution_latency_ms_bucket{overlay=\"ov\",scenario=\"shared\","
                            "le=\"5\"}") == THREADS * 6 * (SAMPLES / 100));
    assert_true(value_of(t, "fusion_overlay_events_total{overlay=\"ov\",result=\"hits\"}") ==
                THREADS * SAMPLES);
    char key[128];
    for (int i = 0; i < THREADS; i++) {
        snprintf(key, sizeof(key), "fusion_tokens_delta_pct_count{overlay=\"ov\",scenario=\"t%d\"}",
                 i);
        assert_true(value_of(t, key) == SAMPLES);
    }
    expect_line(t, "fusion_metrics_dropped_total 0");
    free(t);
    fh_metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_null_safe),
        cmocka_unit_test(test_empty_render),
        cmocka_unit_test(test_counters_exact),
        cmocka_unit_test(test_histograms_exact),
        cmocka_unit_test(test_request_done),
        cmocka_unit_test(test_sanitize),
        cmocka_unit_test(test_cap_folds_scenario),
        cmocka_unit_test(test_cap_folds_overlay_and_bounds_memory),
        cmocka_unit_test(test_overlay_state_exclusive),
        cmocka_unit_test(test_format_valid),
        cmocka_unit_test(test_concurrent_exact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
