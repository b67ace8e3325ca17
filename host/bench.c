/*
 * bench.c - `fusion-host bench` (see opstools.h; the report: docs/reports.md).
 *
 * Every canonical scenario goes N times as a client's request through a
 * real daemon (runner.h), then N times more with the overlay that served
 * it disabled over the admin API: what the model does without it. Each
 * run's latency (as the client saw it), token usage, reason, quality score
 * and rule results (the overlay's evaluate(), offline, on the same plugin
 * file) go into the report, per scenario and overall.
 *
 * Exit: 0 the report was written, 1 it could not be made, 2 usage.
 * Runs on the main thread.
 */
#include "opstools.h"

#include "runner.h"
#include "util.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define EXIT_USAGE 2

/* One pass (overlaid or baseline) of one scenario. */
typedef struct pass {
    double *lat;
    size_t nlat; /* answered runs: the latency figures */
    size_t runs, failed;
    double prompt, completion, total; /* sums */
    size_t with_usage;
    double quality_sum, quality_min;
    size_t with_quality;
    json_t *reasons; /* reason -> count */
    json_t *rules;   /* rule -> [passed, runs] */
    char overlay[80];
} pass;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest rank. */
static double percentile(double *v, size_t n, double p)
{
    if (n == 0)
        return NAN;
    size_t rank = (size_t)ceil(p / 100.0 * (double)n);
    return v[rank ? rank - 1 : 0];
}

static json_t *num(double v)
{
    return isnan(v) ? json_null() : json_real(round(v * 1000) / 1000);
}

static json_t *latency_json(double *v, size_t n)
{
    if (n == 0)
        return json_null();
    qsort(v, n, sizeof(*v), cmp_double);
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += v[i];
    return json_pack("{s:o, s:o, s:o, s:o}", "p50", num(percentile(v, n, 50)), "p95",
                     num(percentile(v, n, 95)), "mean", num(sum / (double)n), "max", num(v[n - 1]));
}

static void count(json_t *obj, const char *key)
{
    json_t *c = json_object_get(obj, key);
    json_object_set_new(obj, key, json_integer(c ? json_integer_value(c) + 1 : 1));
}

/* One run: the request, then what it says about itself. */
static void run_once(fh_runner *r, fh_evaluator *ev, const json_t *s, const char *body, pass *p)
{
    fh_run_result res;
    fh_runner_clear_upstream(r);
    int rc = fh_runner_chat(r, body, &res);
    p->runs++;
    if (rc != 0 || res.status != 200) {
        char why[32];
        snprintf(why, sizeof(why), rc != 0 ? "transport_error" : "http_%ld", res.status);
        count(p->reasons, why);
        p->failed++;
        free(res.body);
        return;
    }
    /* Latency of answered runs only: a refused connection is fast. */
    p->lat[p->nlat++] = res.latency_ms;
    count(p->reasons, res.reason[0] ? res.reason : "unknown");
    if (!p->overlay[0])
        fh_strlcpy(p->overlay, res.overlay, sizeof(p->overlay));
    json_t *answer = json_loadb(res.body, res.len, 0, NULL);
    free(res.body);
    json_t *usage = json_object_get(answer, "usage");
    if (json_is_object(usage)) {
        p->prompt += json_number_value(json_object_get(usage, "prompt_tokens"));
        p->completion += json_number_value(json_object_get(usage, "completion_tokens"));
        p->total += json_number_value(json_object_get(usage, "total_tokens"));
        p->with_usage++;
    }
    json_t *fusion = json_object_get(answer, "fusion");
    json_t *q = json_object_get(fusion, "quality_score");
    if (json_is_number(q)) {
        double v = json_number_value(q);
        p->quality_sum += v;
        p->quality_min = p->with_quality ? fmin(p->quality_min, v) : v;
        p->with_quality++;
    }
    /* Each rule's verdict: the overlay's evaluate() on this answer. */
    char *upstream = ev ? fh_runner_upstream_last(r) : NULL;
    json_t *e = fh_golden_score(r, ev, s, upstream ? upstream : body, answer);
    free(upstream);
    if (e) {
        const char *name;
        json_t *v;
        json_object_foreach(json_object_get(e, "rules"), name, v)
        {
            json_t *tally = json_object_get(p->rules, name);
            long passed = tally ? (long)json_integer_value(json_array_get(tally, 0)) : 0;
            long runs = tally ? (long)json_integer_value(json_array_get(tally, 1)) : 0;
            passed += json_is_true(json_object_get(v, "passed"));
            json_object_set_new(p->rules, name,
                                json_pack("[I, I]", (json_int_t)passed, (json_int_t)(runs + 1)));
        }
        json_decref(e);
    }
    json_decref(answer);
}

static json_t *pass_json(pass *p, bool scores)
{
    double n = (double)p->with_usage;
    json_t *j = json_pack(
        "{s:I, s:I, s:O, s:o, s:{s:o}, s:{s:o}, s:{s:o}}", "runs", (json_int_t)p->runs, "failed",
        (json_int_t)p->failed, "reasons", p->reasons, "latency_ms", latency_json(p->lat, p->nlat),
        "prompt_tokens", "mean", num(n ? p->prompt / n : NAN), "completion_tokens", "mean",
        num(n ? p->completion / n : NAN), "total_tokens", "mean", num(n ? p->total / n : NAN));
    if (scores) {
        json_object_set_new(j, "quality",
                            p->with_quality
                                ? json_pack("{s:o, s:o}", "mean",
                                            num(p->quality_sum / (double)p->with_quality), "min",
                                            num(p->quality_min))
                                : json_null());
        json_t *rules = json_object();
        const char *name;
        json_t *v;
        json_object_foreach(p->rules, name, v)
        {
            double passed = (double)json_integer_value(json_array_get(v, 0));
            double runs = (double)json_integer_value(json_array_get(v, 1));
            json_object_set_new(rules, name, json_pack("{s:o}", "pass_rate", num(passed / runs)));
        }
        json_object_set_new(j, "rules", rules);
    }
    return j;
}

static void pass_init(pass *p, size_t n)
{
    memset(p, 0, sizeof(*p));
    p->lat = calloc(n ? n : 1, sizeof(*p->lat));
    p->reasons = json_object();
    p->rules = json_object();
}

static void pass_free(pass *p)
{
    free(p->lat);
    json_decref(p->reasons);
    json_decref(p->rules);
}

static int usage(const char *msg, const char *arg)
{
    fprintf(stderr, "fusion-host bench: ");
    fprintf(stderr, msg, arg);
    fprintf(stderr, "\nusage: fusion-host bench --iterations N --output FILE [--baseline-mode] "
                    "[--upstream URL] [-c FILE] [--golden-dir DIR]\n");
    return EXIT_USAGE;
}

int fh_bench_main(int argc, char **argv)
{
    long iterations = 0;
    const char *output = NULL, *upstream = NULL, *config = "config/fusion-host.dev.yaml";
    const char *dir = "tests/golden";
    bool baseline_mode = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool more = i + 1 < argc;
        if (!strcmp(a, "--iterations") && more) {
            char *end = NULL;
            iterations = strtol(argv[++i], &end, 10);
            if (!end || *end || iterations < 1 || iterations > 100000)
                return usage("--iterations needs a number from 1 to 100000, not '%s'", argv[i]);
        } else if (!strcmp(a, "--output") && more) {
            output = argv[++i];
        } else if (!strcmp(a, "--baseline-mode")) {
            baseline_mode = true;
        } else if (!strcmp(a, "--upstream") && more) {
            upstream = argv[++i];
        } else if ((!strcmp(a, "-c") || !strcmp(a, "--config")) && more) {
            config = argv[++i];
        } else if (!strcmp(a, "--golden-dir") && more) {
            dir = argv[++i];
        } else {
            return usage("unexpected argument '%s'", a);
        }
    }
    if (!iterations || !output)
        return usage("needs --iterations N and --output FILE%s", "");
    /* Where the report goes is known to work before the runs, not after. */
    char tmp_out[4200];
    snprintf(tmp_out, sizeof(tmp_out), "%s.tmp.%ld", output, (long)getpid());
    FILE *probe = fopen(tmp_out, "w");
    if (!probe) {
        fprintf(stderr, "fusion-host bench: cannot write %s: %s\n", output, strerror(errno));
        return 1;
    }
    fclose(probe);
    unlink(tmp_out);
    char err[1200];
    json_t *root = fh_golden_load_scenarios(dir, err, sizeof(err));
    if (!root) {
        fprintf(stderr, "fusion-host bench: %s\n", err);
        return EXIT_USAGE;
    }
    fh_runner *r = fh_runner_start(config, upstream, err, sizeof(err));
    if (!r) {
        fprintf(stderr, "fusion-host bench: %s\n", err);
        json_decref(root);
        return 1;
    }
    fh_evaluator *ev = fh_evaluator_new(config);
    /* One request first: connections and caches warm up outside the
     * figures of the first scenario. */
    json_t *first = json_array_get(json_object_get(root, "scenarios"), 0);
    char *warm = first ? fh_golden_request(first) : NULL;
    fh_run_result wr;
    if (warm && fh_runner_chat(r, warm, &wr) == 0)
        free(wr.body);
    free(warm);
    size_t unanswered = 0; /* scenarios whose every overlaid run failed */
    bool admin_failed = false;
    json_t *scenarios = json_array();
    double *all = calloc((size_t)iterations * json_array_size(json_object_get(root, "scenarios")),
                         sizeof(*all));
    double *all_base =
        calloc((size_t)iterations * json_array_size(json_object_get(root, "scenarios")),
               sizeof(*all_base));
    size_t nall = 0, nbase = 0, runs = 0, failed = 0, nq = 0, ndelta = 0;
    double qsum = 0, qmin = NAN, dsum = 0, rule_pass = 0, rule_runs = 0;
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(root, "scenarios"), i, s)
    {
        if (fh_runner_interrupted())
            break;
        char *body = fh_golden_request(s);
        pass ov, base;
        pass_init(&ov, (size_t)iterations);
        pass_init(&base, (size_t)iterations);
        for (long k = 0; body && k < iterations; k++)
            run_once(r, ev, s, body, &ov);
        /* The same requests without the overlay that served them. */
        char name[80] = "", version[40] = "";
        const char *slash = strchr(ov.overlay, '/');
        if (slash && strcmp(ov.overlay, "baseline") != 0) {
            snprintf(name, sizeof(name), "%.*s", (int)(slash - ov.overlay), ov.overlay);
            fh_strlcpy(version, slash + 1, sizeof(version));
        }
        char path[200];
        bool disabled = true;
        if (name[0]) {
            snprintf(path, sizeof(path), "/admin/overlays/%s/disable", name);
            disabled = fh_runner_admin(r, "POST", path, NULL) == 200;
        }
        for (long k = 0; body && disabled && k < iterations; k++)
            run_once(r, NULL, s, body, &base);
        if (name[0]) {
            snprintf(path, sizeof(path), "/admin/overlays/%s/enable", name);
            disabled = disabled && fh_runner_admin(r, "POST", path, NULL) == 200;
        }
        if (!disabled) {
            fprintf(stderr,
                    "fusion-host bench: %s: the admin API did not disable/enable %s; "
                    "no baseline figures for it\n",
                    json_string_value(json_object_get(s, "id")), name);
            admin_failed = true;
        }
        if (ov.runs && ov.failed == ov.runs)
            unanswered++;
        free(body);
        json_t *oj = pass_json(&ov, true), *bj = pass_json(&base, false);
        json_object_set_new(oj, "name", name[0] ? json_string(name) : json_null());
        json_object_set_new(oj, "version", version[0] ? json_string(version) : json_null());
        double to = ov.with_usage ? ov.total / (double)ov.with_usage : NAN;
        double tb = base.with_usage ? base.total / (double)base.with_usage : NAN;
        double delta = !isnan(to) && !isnan(tb) && tb > 0 ? (to - tb) / tb * 100.0 : NAN;
        json_t *expected = json_object_get(s, "expected_overlay");
        json_array_append_new(
            scenarios,
            json_pack("{s:O, s:O, s:b, s:O?, s:o, s:o, s:o}", "id", json_object_get(s, "id"),
                      "scenario_type", json_object_get(s, "scenario_type"), "critical",
                      json_is_true(json_object_get(s, "critical")), "expected_overlay", expected,
                      "overlay", oj, "baseline", bj, "token_delta_pct",
                      num(!name[0] || isnan(delta) ? NAN : round(delta * 10) / 10)));
        /* Overall: only scenarios that were overlaid count for the deltas
         * and scores; every run counts for the latency. */
        memcpy(all + nall, ov.lat, ov.nlat * sizeof(*all));
        nall += ov.nlat;
        memcpy(all_base + nbase, base.lat, base.nlat * sizeof(*all_base));
        nbase += base.nlat;
        runs += ov.runs + base.runs;
        failed += ov.failed + base.failed;
        if (name[0] && !isnan(delta)) {
            dsum += delta;
            ndelta++;
        }
        if (ov.with_quality) {
            qsum += ov.quality_sum / (double)ov.with_quality;
            qmin = nq ? fmin(qmin, ov.quality_min) : ov.quality_min;
            nq++;
        }
        const char *rn;
        json_t *rv;
        json_object_foreach(ov.rules, rn, rv)
        {
            rule_pass += (double)json_integer_value(json_array_get(rv, 0));
            rule_runs += (double)json_integer_value(json_array_get(rv, 1));
        }
        char dtext[32] = "-";
        if (name[0] && !isnan(delta))
            snprintf(dtext, sizeof(dtext), "%+.1f %%", delta);
        qsort(ov.lat, ov.nlat, sizeof(*ov.lat), cmp_double);
        qsort(base.lat, base.nlat, sizeof(*base.lat), cmp_double);
        printf("%-40s %-26s p95 %7.1f ms (baseline %7.1f ms)  tokens %s\n",
               json_string_value(json_object_get(s, "id")), ov.overlay,
               percentile(ov.lat, ov.nlat, 95), percentile(base.lat, base.nlat, 95), dtext);
        pass_free(&ov);
        pass_free(&base);
    }
    char created[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(created, sizeof(created), "%Y-%m-%dT%H:%M:%SZ", &tm);
    json_t *overall =
        json_pack("{s:o, s:o, s:o, s:o, s:o, s:I, s:I}", "latency_ms", latency_json(all, nall),
                  "baseline_latency_ms", latency_json(all_base, nbase), "token_delta_pct",
                  num(ndelta ? round(dsum / (double)ndelta * 10) / 10 : NAN), "quality",
                  nq ? json_pack("{s:o, s:o}", "mean", num(qsum / (double)nq), "min", num(qmin))
                     : json_null(),
                  "rule_pass_rate", num(rule_runs ? rule_pass / rule_runs : NAN), "runs",
                  (json_int_t)runs, "failed", (json_int_t)failed);
    json_t *report =
        json_pack("{s:i, s:s, s:s, s:s, s:b, s:I, s:s, s:s, s:o, s:o}", "format", 1, "tool",
                  "fusion-host bench", "host_version", FH_VERSION, "created", created,
                  "baseline_mode", baseline_mode, "iterations", (json_int_t)iterations, "upstream",
                  upstream ? upstream : "stub", "config_hash", fh_runner_config_hash(r),
                  "scenarios", scenarios, "overall", overall);
    bool stopped = fh_runner_interrupted();
    fh_runner_stop(r);
    fh_evaluator_free(ev);
    free(all);
    free(all_base);
    json_decref(root);
    if (stopped) {
        json_decref(report);
        fprintf(stderr, "fusion-host bench: interrupted; no report written\n");
        return 130;
    }
    /* Whole or not at all: a temporary file renamed over the report. */
    int rc =
        report ? json_dump_file(report, tmp_out, JSON_INDENT(2) | JSON_REAL_PRECISION(10)) : -1;
    json_decref(report);
    if (rc != 0 || rename(tmp_out, output) != 0) {
        fprintf(stderr, "fusion-host bench: cannot write %s: %s\n", output, strerror(errno));
        unlink(tmp_out);
        return 1;
    }
    printf("bench: %zu runs (%zu failed) written to %s%s\n", runs, failed, output,
           baseline_mode ? " (baseline mode: the reference for `fusion-host compare`)" : "");
    if (unanswered)
        fprintf(stderr,
                "fusion-host bench: %zu scenario(s) got no answer at all: the report "
                "describes no model; check the upstream\n",
                unanswered);
    return unanswered || admin_failed ? 1 : 0;
}
