/*
 * report.c - `budget` and `compare`: bench reports (docs/reports.md) read,
 * judged and printed as markdown or JSON. See report.h for the model and
 * its invariants.
 *
 * The stages have names: fh_report_load parses and type-checks a report
 * once; fh_budget_analyze / fh_compare_analyze judge it into a jansson
 * object (the JSON output); fh_budget_markdown / fh_compare_markdown
 * render that object. The *_main functions only parse options and pick
 * the format.
 *
 * Exit codes: 0 within the thresholds, 1 a critical figure or a regression,
 * 2 a usage error or a report that cannot be read. Main thread only (the
 * functions themselves keep no state).
 */
#include "report.h"

#include "opstools.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define EXIT_USAGE 2

/* The runbook thresholds (docs/operations.md, "Runbook thresholds"). */
#define LATENCY_WARN_MS 2000.0
#define LATENCY_CRIT_MS 5000.0
#define TOKENS_WARN_PCT 12.0
#define TOKENS_CRIT_PCT 25.0
#define QUALITY_WARN    0.8
/* compare's regression rules (docs/reports.md). */
#define P95_REGRESS_RATIO 0.20
#define P95_REGRESS_MS    50.0
#define TOKENS_REGRESS_PT 5.0
#define QUALITY_REGRESS   0.05
#define RULES_REGRESS     0.05

#define RUNBOOK "docs/operations.md"

/* ==== reading a report ================================================= */

typedef struct parse_ctx {
    const char *file;
    char *err;
    size_t errlen;
    bool failed; /* the first problem is the one reported */
} parse_ctx;

static void parse_fail(parse_ctx *c, const char *fmt, ...)
{
    if (c->failed)
        return;
    c->failed = true;
    int n = snprintf(c->err, c->errlen, "%s: ", c->file);
    if (n < 0 || (size_t)n >= c->errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
    va_end(ap);
}

/* Messages name a field by its path from the top ("overall.latency_ms"):
 * `where` is the element, "" for the top level itself. */
#define DOT(where) (*(where) ? "." : "")

static const char *type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "an object";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
    case JSON_REAL:
        return "a number";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

/* The value at obj.a.b.c (a dotted `path` of our own field names); NULL
 * when a level is absent or null, which the report's contract lets mean
 * "unknown". A level that is there but not an object is a malformed
 * report: `where` names the element for the message. */
static const json_t *lookup(parse_ctx *c, const json_t *obj, const char *where, const char *path)
{
    const json_t *v = obj;
    const char *p = path;
    while (*p) {
        const char *dot = strchr(p, '.');
        int n = dot ? (int)(dot - p) : (int)strlen(p);
        if (!json_is_object(v)) {
            parse_fail(c, "%s%s%.*s: expected an object, found %s", where, DOT(where),
                       (int)(p - path - 1), path, type_name(v));
            return NULL;
        }
        char key[64];
        snprintf(key, sizeof(key), "%.*s", n, p);
        v = json_object_get(v, key);
        if (!v || json_is_null(v))
            return NULL;
        p += n + (dot ? 1 : 0);
    }
    return v;
}

/* A figure: the number at `path`, NAN when unknown. */
static double figure(parse_ctx *c, const json_t *obj, const char *where, const char *path)
{
    const json_t *v = lookup(c, obj, where, path);
    if (!v)
        return NAN;
    if (!json_is_number(v)) {
        parse_fail(c, "%s%s%s: expected a number or null, found %s", where, DOT(where), path,
                   type_name(v));
        return NAN;
    }
    return json_number_value(v);
}

/* A count (runs, failed, iterations): -1 when unknown. */
static long count(parse_ctx *c, const json_t *obj, const char *where, const char *path)
{
    const json_t *v = lookup(c, obj, where, path);
    if (!v)
        return -1;
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        parse_fail(c, "%s%s%s: expected a count (a whole number, 0 or more), found %s", where,
                   DOT(where), path, json_is_integer(v) ? "a negative number" : type_name(v));
        return -1;
    }
    return (long)json_integer_value(v);
}

/* A copy of the string at `path`, NULL when unknown (or out of memory,
 * which only costs a label). */
static char *text(parse_ctx *c, const json_t *obj, const char *where, const char *path)
{
    const json_t *v = lookup(c, obj, where, path);
    if (!v)
        return NULL;
    if (!json_is_string(v)) {
        parse_fail(c, "%s%s%s: expected a string, found %s", where, DOT(where), path, type_name(v));
        return NULL;
    }
    return strdup(json_string_value(v));
}

/* A scenario's rule pass rate: the mean of its rules' pass_rate. Every
 * rule is evaluated on every overlaid answer, so this is also the pass
 * rate over its rule results, as `overall.rule_pass_rate` is. */
static double rules_mean(parse_ctx *c, const json_t *sc, const char *where)
{
    const json_t *rules = lookup(c, sc, where, "overlay.rules");
    if (!rules)
        return NAN;
    if (!json_is_object(rules)) {
        parse_fail(c,
                   "%s.overlay.rules: expected an object (rule name: {\"pass_rate\": ...}), "
                   "found %s",
                   where, type_name(rules));
        return NAN;
    }
    double sum = 0;
    size_t n = 0;
    const char *name;
    json_t *rule;
    json_object_foreach((json_t *)rules, name, rule)
    {
        char path[256];
        snprintf(path, sizeof(path), "%s.overlay.rules.%s", where, name);
        double rate = json_is_object(rule) ? figure(c, rule, path, "pass_rate") : NAN;
        if (!json_is_object(rule) && !json_is_null(rule))
            parse_fail(c, "%s: expected an object with pass_rate, found %s", path, type_name(rule));
        if (!isnan(rate)) {
            sum += rate;
            n++;
        }
    }
    return n ? sum / (double)n : NAN;
}

static void row_free(fh_report_row *row)
{
    free(row->id);
    free(row->overlay);
}

static void parse_scenario(parse_ctx *c, const json_t *sc, size_t i, fh_report_row *row)
{
    row->runs = row->failed = -1;
    row->p50_ms = row->p95_ms = row->token_delta = row->quality = row->rule_pass = NAN;
    row->failed_pct = NAN;
    const json_t *id = json_is_object(sc) ? json_object_get(sc, "id") : NULL;
    if (!json_is_object(sc)) {
        parse_fail(c, "scenarios[%zu]: expected an object, found %s", i, type_name(sc));
        return;
    }
    if (!json_is_string(id) || json_string_length(id) == 0) {
        parse_fail(c,
                   "scenarios[%zu]: no \"id\" (each scenario names itself, as in "
                   "tests/golden/scenarios.yaml)",
                   i);
        return;
    }
    char where[160];
    snprintf(where, sizeof(where), "scenarios[%zu] (%s)", i, json_string_value(id));
    row->id = strdup(json_string_value(id));
    if (!row->id)
        parse_fail(c, "out of memory");
    row->overlay = text(c, sc, where, "overlay.name");
    row->p50_ms = figure(c, sc, where, "overlay.latency_ms.p50");
    row->p95_ms = figure(c, sc, where, "overlay.latency_ms.p95");
    row->token_delta = figure(c, sc, where, "token_delta_pct");
    row->quality = figure(c, sc, where, "overlay.quality.mean");
    row->rule_pass = rules_mean(c, sc, where);
    row->runs = count(c, sc, where, "overlay.runs");
    row->failed = count(c, sc, where, "overlay.failed");
    row->failed_pct =
        row->runs > 0 && row->failed >= 0 ? 100.0 * (double)row->failed / (double)row->runs : NAN;
}

static void parse_overall(parse_ctx *c, const json_t *o, fh_report_row *row)
{
    row->id = strdup("overall");
    if (!row->id)
        parse_fail(c, "out of memory");
    row->p50_ms = figure(c, o, "overall", "latency_ms.p50");
    row->p95_ms = figure(c, o, "overall", "latency_ms.p95");
    row->token_delta = figure(c, o, "overall", "token_delta_pct");
    row->quality = figure(c, o, "overall", "quality.mean");
    row->rule_pass = figure(c, o, "overall", "rule_pass_rate");
    row->runs = count(c, o, "overall", "runs");
    row->failed = count(c, o, "overall", "failed");
    row->failed_pct =
        row->runs > 0 && row->failed >= 0 ? 100.0 * (double)row->failed / (double)row->runs : NAN;
}

/* "format": 1, a "scenarios" array, an "overall" object: without them
 * this is not a report whatever else it holds. */
static bool check_shape(parse_ctx *c, const json_t *root)
{
    const json_t *fmt = json_is_object(root) ? json_object_get(root, "format") : NULL;
    if (!json_is_integer(fmt)) {
        parse_fail(c, "not a fusion-host bench report (no \"format\": 1); give the file "
                      "`fusion-host bench --output FILE` wrote");
        return false;
    }
    if (json_integer_value(fmt) != 1) {
        parse_fail(c,
                   "report format %lld; this fusion-host reads format 1: read it with the "
                   "fusion-host that wrote it, or a newer one",
                   (long long)json_integer_value(fmt));
        return false;
    }
    if (!json_is_array(json_object_get(root, "scenarios"))) {
        parse_fail(c, "no \"scenarios\" array: a bench report lists every scenario it ran; "
                      "was the file edited or cut short?");
        return false;
    }
    if (!json_is_object(json_object_get(root, "overall"))) {
        parse_fail(c, "no \"overall\" object: a bench report ends with the figures over every "
                      "scenario; was the file edited or cut short?");
        return false;
    }
    return true;
}

static void check_duplicates(parse_ctx *c, const fh_report *r)
{
    for (size_t i = 0; i < r->count && !c->failed; i++)
        for (size_t j = i + 1; j < r->count && !c->failed; j++)
            if (r->rows[i].id && r->rows[j].id && strcmp(r->rows[i].id, r->rows[j].id) == 0)
                parse_fail(c,
                           "scenario '%s' appears twice (scenarios[%zu] and [%zu]); a report "
                           "lists each scenario once",
                           r->rows[i].id, i, j);
}

fh_report *fh_report_from_json(const json_t *root, const char *file, char *err, size_t errlen)
{
    parse_ctx c = {.file = file, .err = err, .errlen = errlen};
    if (!check_shape(&c, root))
        return NULL;
    fh_report *r = calloc(1, sizeof(*r));
    const json_t *scenarios = json_object_get(root, "scenarios");
    size_t n = json_array_size(scenarios);
    if (r)
        r->rows = calloc(n ? n : 1, sizeof(*r->rows));
    if (!r || !r->rows || !(r->file = strdup(file))) {
        parse_fail(&c, "out of memory");
        fh_report_free(r);
        return NULL;
    }
    r->created = text(&c, root, "", "created");
    r->upstream = text(&c, root, "", "upstream");
    r->config_hash = text(&c, root, "", "config_hash");
    r->host_version = text(&c, root, "", "host_version");
    r->iterations = count(&c, root, "", "iterations");
    for (size_t i = 0; i < n && !c.failed; i++, r->count++)
        parse_scenario(&c, json_array_get(scenarios, i), i, &r->rows[i]);
    parse_overall(&c, json_object_get(root, "overall"), &r->overall);
    check_duplicates(&c, r);
    if (c.failed) {
        fh_report_free(r);
        return NULL;
    }
    return r;
}

fh_report *fh_report_load(const char *path, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(err, errlen, "%s: cannot read the report: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s: is a folder; give the report file bench --output wrote", path);
        fclose(f);
        return NULL;
    }
    json_error_t je;
    json_t *root = json_loadf(f, JSON_REJECT_DUPLICATES, &je);
    fclose(f);
    if (!root) {
        snprintf(err, errlen,
                 "%s:%d:%d: not valid JSON: %s (bench writes a report whole: was it edited, or "
                 "is it another file?)",
                 path, je.line, je.column, je.text);
        return NULL;
    }
    fh_report *r = fh_report_from_json(root, path, err, errlen);
    json_decref(root);
    return r;
}

void fh_report_free(fh_report *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->count; i++)
        row_free(&r->rows[i]);
    row_free(&r->overall);
    free(r->rows);
    free(r->file);
    free(r->created);
    free(r->upstream);
    free(r->config_hash);
    free(r->host_version);
    free(r);
}

/* ==== shared by both analyses ========================================== */

static double row_value(const fh_report_row *row, size_t offset)
{
    return *(const double *)((const char *)row + offset);
}

static json_t *num_or_null(double v)
{
    return isnan(v) ? json_null() : json_real(v);
}

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *count_or_null(long v)
{
    return v < 0 ? json_null() : json_integer(v);
}

/* What the analysis says about where a report came from. */
static json_t *report_meta(const fh_report *r)
{
    json_t *m = json_object();
    json_object_set_new(m, "file", json_string(r->file));
    json_object_set_new(m, "created", str_or_null(r->created));
    json_object_set_new(m, "host_version", str_or_null(r->host_version));
    json_object_set_new(m, "upstream", str_or_null(r->upstream));
    json_object_set_new(m, "config_hash", str_or_null(r->config_hash));
    json_object_set_new(m, "iterations", count_or_null(r->iterations));
    json_object_set_new(m, "scenarios", json_integer((json_int_t)r->count));
    return m;
}

/* Reading the analysis back (the markdown side). */
static double jnum(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    return json_is_number(v) ? json_number_value(v) : NAN;
}

static const char *jstr(const json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* `v` with `decimals`, "-" when unknown; never "-0.0". */
static void fmt_value(char *buf, size_t len, double v, int decimals)
{
    if (isnan(v)) {
        snprintf(buf, len, "-");
        return;
    }
    double scale = pow(10, decimals);
    double r = round(v * scale) / scale;
    snprintf(buf, len, "%.*f", decimals, r == 0 ? 0.0 : r);
}

/* A change with its sign ("+2.1", "-0.050", "0.0"). */
static void fmt_change(char *buf, size_t len, double v, int decimals)
{
    double scale = pow(10, decimals);
    double r = round(v * scale) / scale;
    if (r == 0)
        snprintf(buf, len, "%.*f", decimals, 0.0);
    else
        snprintf(buf, len, "%+.*f", decimals, r);
}

/* Table cells hold ids and names from a file: a '|' would split the row. */
static void md_text(FILE *out, const char *s)
{
    for (; s && *s; s++) {
        if (*s == '|')
            fputs("\\|", out);
        else if (*s == '\n' || *s == '\r')
            fputc(' ', out);
        else
            fputc(*s, out);
    }
}

/* "Report `f`: created X by fusion-host V, N iterations, upstream U,
 * config 0123456789ab." with the parts the report has. */
static void md_report_line(FILE *out, const char *label, const json_t *m)
{
    fprintf(out, "%s `", label);
    md_text(out, jstr(m, "file"));
    fputs("`", out);
    const char *sep = ": ";
    if (jstr(m, "created")) {
        fprintf(out, "%screated %s", sep, jstr(m, "created"));
        sep = ", ";
    }
    if (jstr(m, "host_version")) {
        fprintf(out, "%sfusion-host %s", sep, jstr(m, "host_version"));
        sep = ", ";
    }
    if (json_is_integer(json_object_get(m, "iterations"))) {
        fprintf(out, "%s%lld iterations", sep,
                (long long)json_integer_value(json_object_get(m, "iterations")));
        sep = ", ";
    }
    if (jstr(m, "upstream")) {
        fprintf(out, "%supstream %s", sep, jstr(m, "upstream"));
        sep = ", ";
    }
    if (jstr(m, "config_hash"))
        fprintf(out, "%sconfig %.12s", sep, jstr(m, "config_hash"));
    fputs(".\n", out);
}

/* ==== budget =========================================================== */

fh_report_status fh_budget_latency_status(double p95_ms)
{
    if (isnan(p95_ms))
        return FH_STATUS_UNKNOWN;
    if (p95_ms > LATENCY_CRIT_MS)
        return FH_STATUS_CRITICAL;
    return p95_ms > LATENCY_WARN_MS ? FH_STATUS_WARNING : FH_STATUS_OK;
}

fh_report_status fh_budget_tokens_status(double delta_pct)
{
    if (isnan(delta_pct))
        return FH_STATUS_UNKNOWN;
    if (delta_pct > TOKENS_CRIT_PCT)
        return FH_STATUS_CRITICAL;
    return delta_pct > TOKENS_WARN_PCT ? FH_STATUS_WARNING : FH_STATUS_OK;
}

fh_report_status fh_budget_quality_status(double quality)
{
    if (isnan(quality))
        return FH_STATUS_UNKNOWN;
    return quality < QUALITY_WARN ? FH_STATUS_WARNING : FH_STATUS_OK;
}

fh_report_status fh_budget_failed_status(double failed_pct)
{
    if (isnan(failed_pct))
        return FH_STATUS_UNKNOWN;
    if (failed_pct >= 100.0) /* n / n x 100 is exactly 100 */
        return FH_STATUS_CRITICAL;
    return failed_pct > 0 ? FH_STATUS_WARNING : FH_STATUS_OK;
}

const char *fh_report_status_name(fh_report_status s)
{
    static const char *names[] = {"unknown", "ok", "warning", "critical"};
    return (unsigned)s < 4 ? names[s] : "unknown";
}

typedef struct budget_figure {
    const char *key;     /* in the JSON output */
    const char *label;   /* in prose */
    const char *heading; /* table column */
    const char *unit;    /* after a value in prose */
    int decimals;
    size_t offset; /* into fh_report_row */
    fh_report_status (*status)(double);
    double warn, crit;     /* crit NAN: none; for prose */
    bool below;            /* a breach is under the threshold, not over it */
    const char *procedure; /* section of the runbook */
} budget_figure;

static const budget_figure budget_figures[] = {
    {"latency_p95_ms", "p95 latency", "p95 ms", " ms", 1, offsetof(fh_report_row, p95_ms),
     fh_budget_latency_status, LATENCY_WARN_MS, LATENCY_CRIT_MS, false, "High latency"},
    {"token_delta_pct", "token delta", "token delta %", " %", 1,
     offsetof(fh_report_row, token_delta), fh_budget_tokens_status, TOKENS_WARN_PCT,
     TOKENS_CRIT_PCT, false, "Budget violations"},
    {"quality_mean", "mean quality", "quality", "", 3, offsetof(fh_report_row, quality),
     fh_budget_quality_status, QUALITY_WARN, NAN, true, "Quality degradation"},
    {"failed_runs_pct", "failed runs", "failed %", " %", 1, offsetof(fh_report_row, failed_pct),
     fh_budget_failed_status, 0, 100, false, "Health checks"},
};
#define N_BUDGET_FIGURES (sizeof(budget_figures) / sizeof(budget_figures[0]))

static json_t *budget_thresholds(void)
{
    json_t *t = json_object();
    for (size_t k = 0; k < N_BUDGET_FIGURES; k++) {
        const budget_figure *f = &budget_figures[k];
        json_object_set_new(t, f->key,
                            json_pack("{s:f,s:o,s:s}", f->below ? "warning_below" : "warning_over",
                                      f->warn, f->below ? "critical_below" : "critical_over",
                                      num_or_null(f->crit), "procedure", f->procedure));
    }
    return t;
}

/* One row's figures with their status; breaches go to `breaches`, and
 * every status is counted in `counts` (indexed by fh_report_status). */
static json_t *budget_row(const fh_report_row *row, json_t *breaches, int counts[4])
{
    json_t *figs = json_object();
    fh_report_status worst = FH_STATUS_UNKNOWN;
    for (size_t k = 0; k < N_BUDGET_FIGURES; k++) {
        const budget_figure *f = &budget_figures[k];
        double v = row_value(row, f->offset);
        fh_report_status st = f->status(v);
        counts[st]++;
        if (st > worst)
            worst = st;
        json_object_set_new(
            figs, f->key,
            json_pack("{s:o,s:s}", "value", num_or_null(v), "status", fh_report_status_name(st)));
        if (st < FH_STATUS_WARNING)
            continue;
        double limit = st == FH_STATUS_CRITICAL ? f->crit : f->warn;
        json_array_append_new(breaches,
                              json_pack("{s:s,s:s,s:f,s:s,s:f,s:s}", "scenario", row->id, "figure",
                                        f->key, "value", v, "status", fh_report_status_name(st),
                                        "threshold", limit, "procedure", f->procedure));
    }
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(row->id));
    json_object_set_new(o, "overlay", str_or_null(row->overlay));
    json_object_set_new(o, "status", json_string(fh_report_status_name(worst)));
    json_object_set_new(o, "figures", figs);
    json_object_set_new(o, "runs", count_or_null(row->runs));
    json_object_set_new(o, "failed", count_or_null(row->failed));
    return o;
}

json_t *fh_budget_analyze(const fh_report *r)
{
    json_t *a = json_object();
    json_t *scenarios = json_array();
    json_t *breaches = json_array();
    int counts[4] = {0};
    if (!a || !scenarios || !breaches) {
        json_decref(a);
        json_decref(scenarios);
        json_decref(breaches);
        return NULL;
    }
    for (size_t i = 0; i < r->count; i++)
        json_array_append_new(scenarios, budget_row(&r->rows[i], breaches, counts));
    json_t *overall = budget_row(&r->overall, breaches, counts);
    json_object_del(overall, "id");
    json_object_del(overall, "overlay");
    json_object_set_new(a, "report", report_meta(r));
    json_object_set_new(a, "thresholds", budget_thresholds());
    json_object_set_new(a, "scenarios", scenarios);
    json_object_set_new(a, "overall", overall);
    json_object_set_new(a, "critical", json_integer(counts[FH_STATUS_CRITICAL]));
    json_object_set_new(a, "warnings", json_integer(counts[FH_STATUS_WARNING]));
    json_object_set_new(a, "unknown", json_integer(counts[FH_STATUS_UNKNOWN]));
    json_object_set_new(a, "breaches", breaches);
    return a;
}

int fh_budget_exit(const json_t *analysis)
{
    return json_integer_value(json_object_get(analysis, "critical")) > 0 ? 1 : 0;
}

static const budget_figure *budget_figure_named(const char *key)
{
    for (size_t k = 0; k < N_BUDGET_FIGURES; k++)
        if (key && strcmp(budget_figures[k].key, key) == 0)
            return &budget_figures[k];
    return &budget_figures[0];
}

/* A breach is worth a look: it stands out in bold. */
static const char *md_status(const char *status)
{
    if (strcmp(status, "warning") == 0)
        return "**warning**";
    if (strcmp(status, "critical") == 0)
        return "**critical**";
    return status;
}

static void budget_md_row(FILE *out, const json_t *row, bool overall)
{
    if (overall) {
        fputs("| **overall** | |", out);
    } else {
        fputs("| ", out);
        md_text(out, jstr(row, "id"));
        fputs(" | ", out);
        /* overlay.name null: no overlay served it (docs/reports.md). */
        md_text(out, jstr(row, "overlay") ? jstr(row, "overlay") : "baseline");
        fputs(" |", out);
    }
    const json_t *figs = json_object_get(row, "figures");
    for (size_t k = 0; k < N_BUDGET_FIGURES; k++) {
        const json_t *fig = json_object_get(figs, budget_figures[k].key);
        char v[48];
        fmt_value(v, sizeof(v), jnum(fig, "value"), budget_figures[k].decimals);
        fprintf(out, " %s | %s |", v, md_status(jstr(fig, "status")));
    }
    fputc('\n', out);
}

/* "2 critical (a token delta, overall token delta), 1 warning (b p95
 * latency)" for one status; nothing when none. */
static void budget_md_list(FILE *out, const json_t *breaches, const char *status, int n,
                           const char *one, const char *many, const char *lead)
{
    if (n == 0)
        return;
    fprintf(out, "%s%d %s (", lead, n, n == 1 ? one : many);
    const char *sep = "";
    size_t i;
    const json_t *b;
    json_array_foreach(breaches, i, b)
    {
        if (strcmp(jstr(b, "status"), status) != 0)
            continue;
        fputs(sep, out);
        md_text(out, jstr(b, "scenario"));
        fprintf(out, " %s", budget_figure_named(jstr(b, "figure"))->label);
        sep = ", ";
    }
    fputc(')', out);
}

static void budget_md_summary(FILE *out, const json_t *a)
{
    int crit = (int)json_integer_value(json_object_get(a, "critical"));
    int warn = (int)json_integer_value(json_object_get(a, "warnings"));
    int unknown = (int)json_integer_value(json_object_get(a, "unknown"));
    const json_t *breaches = json_object_get(a, "breaches");
    if (crit == 0 && warn == 0) {
        fputs("**All figures within the runbook thresholds**", out);
    } else {
        budget_md_list(out, breaches, "critical", crit, "critical", "critical", "**");
        budget_md_list(out, breaches, "warning", warn, "warning", "warnings", crit ? ", " : "**");
        fputs("**", out);
    }
    if (unknown)
        fprintf(out,
                "; %d unknown (not in the report: no overlay served the scenario, or its runs "
                "failed)",
                unknown);
    fputs(".\n", out);
}

/* One line per breach, naming the runbook procedure to follow. */
static void budget_md_hints(FILE *out, const json_t *breaches)
{
    size_t i;
    const json_t *b;
    json_array_foreach(breaches, i, b)
    {
        const budget_figure *f = budget_figure_named(jstr(b, "figure"));
        char v[48], t[48];
        fmt_value(v, sizeof(v), jnum(b, "value"), f->decimals);
        snprintf(t, sizeof(t), "%g", jnum(b, "threshold"));
        fprintf(out, "%s- %s: ", i ? "" : "\n", md_status(jstr(b, "status")));
        md_text(out, jstr(b, "scenario"));
        if (f->status == fh_budget_failed_status &&
            strcmp(jstr(b, "status"), fh_report_status_name(FH_STATUS_CRITICAL)) == 0)
            fprintf(out, " %s: every run failed: follow \"%s\" in %s.\n", f->label, f->procedure,
                    RUNBOOK);
        else
            fprintf(out, " %s %s%s is %s %s%s: follow \"%s\" in %s.\n", f->label, v, f->unit,
                    f->below ? "under" : "over", t, f->unit, f->procedure, RUNBOOK);
    }
}

/* Failed runs are left out of the figures (an unknown figure often means
 * every run failed): say so, or the table reads better than it is. */
static void budget_md_failed(FILE *out, const json_t *a)
{
    const char *sep = "\nNote: overlaid runs failed (no HTTP 200) and are left out of the "
                      "figures: ";
    size_t i;
    const json_t *sc;
    json_array_foreach(json_object_get(a, "scenarios"), i, sc)
    {
        json_int_t n = json_integer_value(json_object_get(sc, "failed"));
        if (n <= 0)
            continue;
        fputs(sep, out);
        md_text(out, jstr(sc, "id"));
        fprintf(out, " %lld", (long long)n);
        if (json_is_integer(json_object_get(sc, "runs")))
            fprintf(out, " of %lld", (long long)json_integer_value(json_object_get(sc, "runs")));
        sep = ", ";
    }
    if (*sep == ',')
        fputs(". Their reasons are in the report (`reasons`).\n", out);
}

void fh_budget_markdown(FILE *out, const json_t *a)
{
    const json_t *meta = json_object_get(a, "report");
    fputs("# Budget analysis\n\n", out);
    md_report_line(out, "Report", meta);
    fputs("\n| scenario | overlay |", out);
    for (size_t k = 0; k < N_BUDGET_FIGURES; k++)
        fprintf(out, " %s | status |", budget_figures[k].heading);
    fputs("\n|---|---|", out);
    for (size_t k = 0; k < N_BUDGET_FIGURES; k++)
        fputs("---:|---|", out);
    fputc('\n', out);
    size_t i;
    const json_t *sc;
    json_array_foreach(json_object_get(a, "scenarios"), i, sc) budget_md_row(out, sc, false);
    budget_md_row(out, json_object_get(a, "overall"), true);
    fputc('\n', out);
    budget_md_summary(out, a);
    budget_md_hints(out, json_object_get(a, "breaches"));
    budget_md_failed(out, a);
}

/* ==== compare ========================================================== */

bool fh_compare_p95_regressed(double base_ms, double cur_ms)
{
    if (isnan(base_ms) || isnan(cur_ms))
        return false;
    double up = cur_ms - base_ms;
    return up > P95_REGRESS_MS + FH_REPORT_EPSILON &&
           up > P95_REGRESS_RATIO * base_ms + FH_REPORT_EPSILON;
}

bool fh_compare_tokens_regressed(double base_pct, double cur_pct)
{
    if (isnan(base_pct) || isnan(cur_pct))
        return false;
    return cur_pct - base_pct > TOKENS_REGRESS_PT + FH_REPORT_EPSILON;
}

bool fh_compare_quality_regressed(double base, double cur)
{
    if (isnan(base) || isnan(cur))
        return false;
    return base - cur > QUALITY_REGRESS + FH_REPORT_EPSILON;
}

bool fh_compare_rules_regressed(double base, double cur)
{
    if (isnan(base) || isnan(cur))
        return false;
    return base - cur > RULES_REGRESS + FH_REPORT_EPSILON;
}

typedef enum change_kind {
    CHANGE_PCT,    /* relative, in percent */
    CHANGE_POINTS, /* of a percentage, in points */
    CHANGE_ABS,    /* of a fraction */
} change_kind;

typedef struct cmp_figure {
    const char *key;     /* in the JSON output */
    const char *label;   /* in prose */
    const char *heading; /* table column */
    const char *unit;    /* after a value in prose */
    int decimals;
    size_t offset; /* into fh_report_row */
    change_kind change;
    bool (*regressed)(double base, double cur); /* NULL: shown, not judged */
    const char *procedure;
} cmp_figure;

static const cmp_figure cmp_figures[] = {
    {"latency_p50_ms", "p50 latency", "p50 ms", " ms", 1, offsetof(fh_report_row, p50_ms),
     CHANGE_PCT, NULL, NULL},
    {"latency_p95_ms", "p95 latency", "p95 ms", " ms", 1, offsetof(fh_report_row, p95_ms),
     CHANGE_PCT, fh_compare_p95_regressed, "High latency"},
    {"token_delta_pct", "token delta", "token delta %", " %", 1,
     offsetof(fh_report_row, token_delta), CHANGE_POINTS, fh_compare_tokens_regressed,
     "Budget violations"},
    {"quality_mean", "mean quality", "quality", "", 3, offsetof(fh_report_row, quality), CHANGE_ABS,
     fh_compare_quality_regressed, "Quality degradation"},
    {"rule_pass_rate", "rule pass rate", "rule pass rate", "", 3,
     offsetof(fh_report_row, rule_pass), CHANGE_ABS, fh_compare_rules_regressed,
     "Quality degradation"},
};
#define N_CMP_FIGURES (sizeof(cmp_figures) / sizeof(cmp_figures[0]))

static const char *change_key(change_kind k)
{
    return k == CHANGE_PCT ? "change_pct" : k == CHANGE_POINTS ? "change_points" : "change";
}

/* The change, to 4 decimals: finer than any report's figures, and the
 * JSON shows 32.6 rather than 32.600000000000001. Judging uses the raw
 * figures, never this. */
static double change_of(change_kind k, double base, double cur)
{
    if (isnan(base) || isnan(cur) || (k == CHANGE_PCT && base == 0))
        return NAN;
    double d = k == CHANGE_PCT ? (cur - base) / base * 100.0 : cur - base;
    d = round(d * 1e4) / 1e4;
    return d == 0 ? 0.0 : d;
}

static const cmp_figure *cmp_figure_named(const char *key)
{
    for (size_t k = 0; k < N_CMP_FIGURES; k++)
        if (key && strcmp(cmp_figures[k].key, key) == 0)
            return &cmp_figures[k];
    return NULL;
}

static void add_warning(json_t *warnings, const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    json_array_append_new(warnings, json_string(buf));
}

/* A figure the baseline measured and the current report does not is not
 * judged (an unknown is never a regression), but it must not pass
 * silently: its runs likely failed. */
static void warn_lost_figure(json_t *warnings, const char *id, const cmp_figure *f, double base)
{
    char v[48];
    fmt_value(v, sizeof(v), base, f->decimals);
    add_warning(warnings,
                "%s: %s is %s%s in the baseline report and unknown in the current one: not "
                "judged (did its runs fail?)",
                id, f->label, v, f->unit);
}

static void warn_failed_runs(json_t *warnings, const fh_report_row *b, const fh_report_row *c)
{
    if (c->failed <= 0 || c->runs <= 0)
        return;
    double cur_rate = (double)c->failed / (double)c->runs;
    double base_rate = b->failed > 0 && b->runs > 0 ? (double)b->failed / (double)b->runs : 0;
    if (cur_rate <= base_rate)
        return;
    /* overall.runs counts the baseline pass too (docs/reports.md). */
    const char *what = strcmp(c->id, "overall") == 0 ? "runs" : "overlaid runs";
    if (b->failed >= 0 && b->runs >= 0)
        add_warning(warnings,
                    "%s: %ld of %ld %s failed in the current report, %ld of %ld in the baseline "
                    "one",
                    c->id, c->failed, c->runs, what, b->failed, b->runs);
    else
        add_warning(warnings, "%s: %ld of %ld %s failed in the current report", c->id, c->failed,
                    c->runs, what);
}

/* One row compared: `b` or `c` NULL for a scenario only in the current or
 * only in the baseline report. Regressions are appended to the row's
 * "regressions" and counted in *nreg. */
static json_t *compare_row(const fh_report_row *b, const fh_report_row *c, json_t *warnings,
                           size_t *nreg)
{
    json_t *figs = json_object();
    json_t *regs = json_array();
    const char *id = b ? b->id : c->id;
    for (size_t k = 0; k < N_CMP_FIGURES; k++) {
        const cmp_figure *f = &cmp_figures[k];
        double bv = b ? row_value(b, f->offset) : NAN;
        double cv = c ? row_value(c, f->offset) : NAN;
        json_t *fig =
            json_pack("{s:o,s:o,s:o}", "baseline", num_or_null(bv), "current", num_or_null(cv),
                      change_key(f->change), num_or_null(change_of(f->change, bv, cv)));
        if (f->regressed) {
            bool r = f->regressed(bv, cv);
            json_object_set_new(fig, "regression", json_boolean(r));
            if (r)
                json_array_append_new(regs, json_string(f->key));
            if (b && c && !isnan(bv) && isnan(cv))
                warn_lost_figure(warnings, id, f, bv);
        }
        json_object_set_new(figs, f->key, fig);
    }
    const char *verdict = json_array_size(regs) ? "regression" : "ok";
    if (!c) {
        verdict = "missing";
        json_array_append_new(regs, json_string("missing"));
    } else if (!b) {
        verdict = "new";
    } else {
        warn_failed_runs(warnings, b, c);
    }
    *nreg += json_array_size(regs);
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(id));
    json_object_set_new(o, "verdict", json_string(verdict));
    json_object_set_new(o, "regressions", regs);
    json_object_set_new(o, "figures", figs);
    return o;
}

static const fh_report_row *find_row(const fh_report *r, const char *id)
{
    for (size_t i = 0; i < r->count; i++)
        if (strcmp(r->rows[i].id, id) == 0)
            return &r->rows[i];
    return NULL;
}

static bool differ(const char *a, const char *b)
{
    return a && b && strcmp(a, b) != 0;
}

/* Differences between the runs that make the figures less comparable:
 * said, never a failure (the operator may compare them on purpose). */
static void compare_warnings(json_t *warnings, const fh_report *b, const fh_report *c)
{
    if (differ(b->config_hash, c->config_hash))
        add_warning(warnings,
                    "the reports were made with different configurations: config_hash %.12s... "
                    "in the baseline, %.12s... in the current; a change may come from the "
                    "configuration (config, flags, directive texts) rather than the code",
                    b->config_hash, c->config_hash);
    else if (!b->config_hash != !c->config_hash)
        add_warning(warnings,
                    "the %s report records no config_hash: cannot tell whether the reports "
                    "were made with the same configuration",
                    b->config_hash ? "current" : "baseline");
    if (b->iterations >= 0 && c->iterations >= 0 && b->iterations != c->iterations)
        add_warning(warnings,
                    "the reports ran different numbers of iterations (%ld in the baseline, %ld "
                    "in the current): percentiles over few runs move more, small changes may "
                    "be noise",
                    b->iterations, c->iterations);
    if (differ(b->upstream, c->upstream))
        add_warning(warnings,
                    "the reports ran against different upstreams (%s in the baseline, %s in the "
                    "current): latency and tokens depend on the upstream",
                    b->upstream, c->upstream);
}

json_t *fh_compare_analyze(const fh_report *base, const fh_report *cur)
{
    json_t *a = json_object();
    json_t *scenarios = json_array();
    json_t *warnings = json_array();
    if (!a || !scenarios || !warnings) {
        json_decref(a);
        json_decref(scenarios);
        json_decref(warnings);
        return NULL;
    }
    compare_warnings(warnings, base, cur);
    size_t nreg = 0;
    for (size_t i = 0; i < base->count; i++)
        json_array_append_new(
            scenarios,
            compare_row(&base->rows[i], find_row(cur, base->rows[i].id), warnings, &nreg));
    for (size_t i = 0; i < cur->count; i++)
        if (!find_row(base, cur->rows[i].id))
            json_array_append_new(scenarios, compare_row(NULL, &cur->rows[i], warnings, &nreg));
    json_t *overall = compare_row(&base->overall, &cur->overall, warnings, &nreg);
    json_object_del(overall, "id");
    json_object_set_new(a, "baseline", report_meta(base));
    json_object_set_new(a, "current", report_meta(cur));
    json_object_set_new(a, "scenarios", scenarios);
    json_object_set_new(a, "overall", overall);
    json_object_set_new(a, "regressions", json_integer((json_int_t)nreg));
    json_object_set_new(a, "warnings", warnings);
    return a;
}

int fh_compare_exit(const json_t *analysis)
{
    return json_integer_value(json_object_get(analysis, "regressions")) > 0 ? 1 : 0;
}

/* "2.4 → 4.0 (+66.7 %)", bold when it regressed. */
static void compare_md_cell(FILE *out, const cmp_figure *f, const json_t *fig)
{
    char b[48], c[48], ch[48] = "";
    fmt_value(b, sizeof(b), jnum(fig, "baseline"), f->decimals);
    fmt_value(c, sizeof(c), jnum(fig, "current"), f->decimals);
    double change = jnum(fig, change_key(f->change));
    if (!isnan(change)) {
        char v[40];
        fmt_change(v, sizeof(v), change, f->decimals);
        snprintf(ch, sizeof(ch), " (%s%s)", v,
                 f->change == CHANGE_PCT      ? " %"
                 : f->change == CHANGE_POINTS ? " pts"
                                              : "");
    }
    const char *em = json_is_true(json_object_get(fig, "regression")) ? "**" : "";
    fprintf(out, " %s%s → %s%s%s |", em, b, c, ch, em);
}

static void compare_md_verdict(FILE *out, const json_t *row)
{
    const char *verdict = jstr(row, "verdict");
    if (strcmp(verdict, "missing") == 0) {
        fputs(" **regression**: missing from the current report |\n", out);
        return;
    }
    if (strcmp(verdict, "regression") != 0) {
        fprintf(out, " %s |\n", verdict);
        return;
    }
    fputs(" **regression**:", out);
    const char *sep = " ";
    size_t i;
    const json_t *r;
    json_array_foreach(json_object_get(row, "regressions"), i, r)
    {
        const cmp_figure *f = cmp_figure_named(json_string_value(r));
        fprintf(out, "%s%s", sep, f ? f->label : json_string_value(r));
        sep = ", ";
    }
    fputs(" |\n", out);
}

static void compare_md_row(FILE *out, const json_t *row, bool overall)
{
    if (overall) {
        fputs("| **overall** |", out);
    } else {
        fputs("| ", out);
        md_text(out, jstr(row, "id"));
        fputs(" |", out);
    }
    const json_t *figs = json_object_get(row, "figures");
    for (size_t k = 0; k < N_CMP_FIGURES; k++)
        compare_md_cell(out, &cmp_figures[k], json_object_get(figs, cmp_figures[k].key));
    compare_md_verdict(out, row);
}

/* One line per regression, naming the runbook procedure to follow. */
static void compare_md_hints(FILE *out, const json_t *row, const char *id)
{
    size_t i;
    const json_t *r;
    json_array_foreach(json_object_get(row, "regressions"), i, r)
    {
        const cmp_figure *f = cmp_figure_named(json_string_value(r));
        fputs("- ", out);
        md_text(out, id);
        if (!f) {
            fputs(": in the baseline report, missing from the current one: did bench fail "
                  "to run it, or was the scenario removed from tests/golden/scenarios.yaml?\n",
                  out);
            continue;
        }
        const json_t *fig = json_object_get(json_object_get(row, "figures"), f->key);
        char b[48], c[48];
        fmt_value(b, sizeof(b), jnum(fig, "baseline"), f->decimals);
        fmt_value(c, sizeof(c), jnum(fig, "current"), f->decimals);
        fprintf(out, ": %s %s → %s%s: follow \"%s\" in %s.\n", f->label, b, c, f->unit,
                f->procedure, RUNBOOK);
    }
}

static void compare_md_summary(FILE *out, const json_t *a)
{
    json_int_t nreg = json_integer_value(json_object_get(a, "regressions"));
    const json_t *scenarios = json_object_get(a, "scenarios");
    size_t compared = 0, added = 0, i;
    const json_t *sc;
    json_array_foreach(scenarios, i, sc)
    {
        compared +=
            strcmp(jstr(sc, "verdict"), "new") != 0 && strcmp(jstr(sc, "verdict"), "missing") != 0;
        added += strcmp(jstr(sc, "verdict"), "new") == 0;
    }
    if (nreg == 0)
        fprintf(out, "**No regressions**: %zu scenarios in both reports", compared);
    else
        fprintf(out, "**%lld regression%s** (%zu scenarios in both reports", (long long)nreg,
                nreg == 1 ? "" : "s", compared);
    if (added)
        fprintf(out, ", %zu new", added);
    fputs(nreg ? "):\n\n" : ".\n", out);
    json_array_foreach(scenarios, i, sc) compare_md_hints(out, sc, jstr(sc, "id"));
    compare_md_hints(out, json_object_get(a, "overall"), "overall");
}

void fh_compare_markdown(FILE *out, const json_t *a)
{
    fputs("# Comparison\n\n", out);
    md_report_line(out, "Baseline:", json_object_get(a, "baseline"));
    fputs("\n", out);
    md_report_line(out, "Current:", json_object_get(a, "current"));
    fputs("\n| scenario |", out);
    for (size_t k = 0; k < N_CMP_FIGURES; k++)
        fprintf(out, " %s |", cmp_figures[k].heading);
    fputs(" verdict |\n|---|", out);
    for (size_t k = 0; k < N_CMP_FIGURES; k++)
        fputs("---|", out);
    fputs("---|\n", out);
    size_t i;
    const json_t *sc;
    json_array_foreach(json_object_get(a, "scenarios"), i, sc) compare_md_row(out, sc, false);
    compare_md_row(out, json_object_get(a, "overall"), true);
    const json_t *warnings = json_object_get(a, "warnings");
    const json_t *w;
    json_array_foreach(warnings, i, w)
        fprintf(out, "%swarning: %s\n", i ? "" : "\n", json_string_value(w));
    fputc('\n', out);
    compare_md_summary(out, a);
}

/* ==== the commands ===================================================== */

static int usage_error(const char *cmd, const char *fmt, ...)
{
    fprintf(stderr, "fusion-host: %s: ", cmd);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'fusion-host --help'.\n");
    return EXIT_USAGE;
}

typedef struct option {
    const char *name; /* "--report-file" */
    const char *what; /* "a file", for "needs ..." */
    const char *value;
} option;

/* "--name VALUE" and "--name=VALUE" for each option; -h/--help prints
 * `usage`. Returns -1 to go on, else the exit status. */
static int parse_options(int argc, char **argv, option *opts, size_t n, const char *usage)
{
    const char *cmd = argv[0];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            fputs(usage, stdout);
            return 0;
        }
        option *o = NULL;
        const char *value = NULL;
        for (size_t k = 0; k < n && !o; k++) {
            size_t len = strlen(opts[k].name);
            if (strcmp(a, opts[k].name) == 0) {
                o = &opts[k];
                value = i + 1 < argc ? argv[++i] : NULL;
            } else if (strncmp(a, opts[k].name, len) == 0 && a[len] == '=') {
                o = &opts[k];
                value = a + len + 1;
            }
        }
        if (!o)
            return usage_error(cmd, "unexpected argument '%s'", a);
        if (!value || !*value)
            return usage_error(cmd, "%s needs %s", o->name, o->what);
        if (o->value)
            return usage_error(cmd, "%s given twice ('%s', '%s'); give it once", o->name, o->value,
                               value);
        o->value = value;
    }
    return -1;
}

static int check_format(const char *cmd, const char *format, bool *json)
{
    *json = format && strcmp(format, "json") == 0;
    if (format && !*json && strcmp(format, "markdown") != 0)
        return usage_error(cmd, "--output-format is markdown or json, not '%s'", format);
    return -1;
}

/* Prints the analysis; a failed write is exit 2, not a verdict. */
static int print_analysis(const char *cmd, const json_t *a, bool json,
                          void (*markdown)(FILE *, const json_t *), int verdict)
{
    if (json) {
        json_dumpf(a, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(12));
        fputc('\n', stdout);
    } else {
        markdown(stdout, a);
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "fusion-host: %s: cannot write the output: %s\n", cmd, strerror(errno));
        return EXIT_USAGE;
    }
    return verdict;
}

static fh_report *load_or_say(const char *cmd, const char *path)
{
    char err[1024];
    fh_report *r = fh_report_load(path, err, sizeof(err));
    if (!r)
        fprintf(stderr, "fusion-host: %s: %s\n", cmd, err);
    return r;
}

static const char budget_usage[] =
    "Usage: fusion-host budget --report-file FILE [--output-format markdown|json]\n"
    "Judges a bench report (docs/reports.md) against the runbook thresholds:\n"
    "p95 latency over 2000 ms a warning, over 5000 ms critical; token delta over\n"
    "12 % a warning, over 25 % critical; mean quality under 0.8 a warning;\n"
    "failed runs: any a warning, every run critical.\n"
    "Exit 0 within them or with warnings, 1 with a critical figure, 2 when the\n"
    "report cannot be read.\n";

int fh_budget_main(int argc, char **argv)
{
    option opts[] = {{"--report-file", "a file (the report bench --output wrote)", NULL},
                     {"--output-format", "markdown or json", NULL}};
    int rc = parse_options(argc, argv, opts, 2, budget_usage);
    bool json = false;
    if (rc < 0)
        rc = check_format(argv[0], opts[1].value, &json);
    if (rc >= 0)
        return rc;
    if (!opts[0].value)
        return usage_error(argv[0], "--report-file FILE is required (a report written by "
                                    "`fusion-host bench --output FILE`)");
    fh_report *r = load_or_say(argv[0], opts[0].value);
    if (!r)
        return EXIT_USAGE;
    json_t *a = fh_budget_analyze(r);
    fh_report_free(r);
    if (!a) {
        fprintf(stderr, "fusion-host: %s: out of memory\n", argv[0]);
        return EXIT_USAGE;
    }
    rc = print_analysis(argv[0], a, json, fh_budget_markdown, fh_budget_exit(a));
    json_decref(a);
    return rc;
}

static const char compare_usage[] =
    "Usage: fusion-host compare --baseline A --current B [--output-format markdown|json]\n"
    "Compares two bench reports (docs/reports.md) scenario by scenario. A\n"
    "regression: p95 latency more than 20 % and 50 ms up, token delta more than\n"
    "5 points up, mean quality or rule pass rate more than 0.05 down, or a\n"
    "scenario of A missing from B. Exit 0 without regressions, 1 with any, 2 when\n"
    "a report cannot be read.\n";

int fh_compare_main(int argc, char **argv)
{
    option opts[] = {{"--baseline", "a file (the reference report)", NULL},
                     {"--current", "a file (the report to judge)", NULL},
                     {"--output-format", "markdown or json", NULL}};
    int rc = parse_options(argc, argv, opts, 3, compare_usage);
    bool json = false;
    if (rc < 0)
        rc = check_format(argv[0], opts[2].value, &json);
    if (rc >= 0)
        return rc;
    if (!opts[0].value || !opts[1].value)
        return usage_error(argv[0],
                           "%s FILE is required (reports written by `fusion-host "
                           "bench --output FILE`; the baseline one with "
                           "--baseline-mode)",
                           opts[0].value ? "--current" : "--baseline");
    fh_report *base = load_or_say(argv[0], opts[0].value);
    fh_report *cur = base ? load_or_say(argv[0], opts[1].value) : NULL;
    json_t *a = base && cur ? fh_compare_analyze(base, cur) : NULL;
    rc = EXIT_USAGE;
    if (base && cur && !a)
        fprintf(stderr, "fusion-host: %s: out of memory\n", argv[0]);
    if (a)
        rc = print_analysis(argv[0], a, json, fh_compare_markdown, fh_compare_exit(a));
    json_decref(a);
    fh_report_free(base);
    fh_report_free(cur);
    return rc;
}
