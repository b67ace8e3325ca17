/*
 * metrics.c - the Prometheus registry behind /metrics (SPEC section 8); the
 * contract is in metrics.h.
 *
 * Owns: the fh_metrics, one family table per metric family, and every
 * series in it (each malloc'd once, when first seen, and freed only by
 * fh_metrics_free). Label values are copied into the series: nothing the
 * caller passes is kept.
 *
 * Invariants:
 *   - A family holds at most `rows_cap` ordinary series (max_series_per_metric,
 *     or max/4 for fusion_overlay_state whose rows are 4 series each). A new
 *     series past it is folded: its fold label (scenario, or overlay for the
 *     families without scenario) becomes "__other__" and the sample lands
 *     there, +1 on fusion_metrics_dropped_total. Fold series may exceed the
 *     cap, but only up to 2 * rows_cap + 1; past that every label becomes
 *     "__other__" (one last series), so a plugin inventing event names
 *     cannot grow memory without bound.
 *   - Series render in insertion order, families in a fixed order, so two
 *     renders diff cleanly.
 *   - Histograms keep non-cumulative bucket counts; render makes them
 *     cumulative. Non-finite observations are ignored: one NaN would poison
 *     _sum for the life of the process.
 *
 * Threads: any thread records or renders; `lock` guards everything in the
 * struct but `max_series` (immutable). Recording an existing series is a
 * hash lookup plus additions, with no allocation; only a new series (or a
 * grown index) allocates. Render formats under the lock: it is rare (one
 * scrape every few seconds) and short.
 */
#include "metrics.h"

#include <assert.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define LABEL_MAX   50 /* sanitised value length, without the NUL */
#define MAX_LABELS  3
#define FOLD_VALUE  "__other__"
#define NONE_VALUE  "none"
#define INDEX_EMPTY UINT32_MAX

/* Runbook thresholds (SPEC 8, docs/operations.md "Metrics"). */

/* Mutex calls that cannot fail in a correct program: a failure is a bug. */
#define LOCK(m)                                                                                    \
    do {                                                                                           \
        int rc_ = pthread_mutex_lock(&(m)->lock);                                                  \
        assert(rc_ == 0);                                                                          \
        (void)rc_;                                                                                 \
    } while (0)
#define UNLOCK(m)                                                                                  \
    do {                                                                                           \
        int rc_ = pthread_mutex_unlock(&(m)->lock);                                                \
        assert(rc_ == 0);                                                                          \
        (void)rc_;                                                                                 \
    } while (0)

typedef enum { KIND_COUNTER, KIND_HISTOGRAM, KIND_STATE } fam_kind;

typedef enum {
    F_REQUESTS,
    F_LATENCY,
    F_TOKEN_DELTA,
    F_QUALITY,
    F_OVERHEAD,
    F_BREAKER,
    F_OVERLAY_EVENTS,
    F_OVERLAY_STATE,
    F_COUNT
} fam_id;

typedef struct {
    const char *name;
    const char *help;
    fam_kind kind;
    size_t nlabels;
    const char *labels[MAX_LABELS];
    size_t fold;
    const double *bounds;
    size_t nbounds;
} fam_def;

/* Milliseconds: from a fast local upstream (a few ms) to a stuck one. */
static const double latency_bounds[] = {5,    10,   25,   50,    100,   250,  500,
                                        1000, 2000, 5000, 10000, 30000, 60000};
/* Percent change of tokens against the baseline; 12 and 25 are the runbook
 * warn and critical lines, so their buckets are exact. */
static const double token_bounds[] = {-50, -25, -10, 0, 5, 10, 12, 15, 20, 25, 50, 100};
/* Milliseconds of the host's own work on a request: tens of microseconds
 * when healthy (SPEC 11: p50 25/60 us, p99 250 us). */
static const double overhead_bounds[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 100};
/* 0.8 is the runbook's minimum quality, so "below 0.8" is a bucket edge. */
static const double quality_bounds[] = {0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0};

#define NB(a) (sizeof(a) / sizeof((a)[0]))

/* fold: the label that becomes "__other__" past the cap (scenario where
 * there is one, else overlay). */
static const fam_def defs[F_COUNT] = {
    [F_REQUESTS] = {.name = "fusion_requests_total",
                    .help = "Chat-completion requests by overlay (or baseline), scenario and "
                            "routing reason.",
                    .kind = KIND_COUNTER,
                    .nlabels = 3,
                    .labels = {"overlay", "scenario", "result"},
                    .fold = 1},
    [F_LATENCY] = {.name = "fusion_execution_latency_ms",
                   .help = "End-to-end request latency in milliseconds, as seen by fusion-host.",
                   .kind = KIND_HISTOGRAM,
                   .nlabels = 2,
                   .labels = {"overlay", "scenario"},
                   .fold = 1,
                   .bounds = latency_bounds,
                   .nbounds = NB(latency_bounds)},
    [F_TOKEN_DELTA] = {.name = "fusion_tokens_delta_pct",
                       .help = "Token usage change of an overlaid request against the baseline, "
                               "in percent.",
                       .kind = KIND_HISTOGRAM,
                       .nlabels = 2,
                       .labels = {"overlay", "scenario"},
                       .fold = 1,
                       .bounds = token_bounds,
                       .nbounds = NB(token_bounds)},
    [F_QUALITY] = {.name = "fusion_quality_score",
                   .help = "Quality score of answers (0 to 1).",
                   .kind = KIND_HISTOGRAM,
                   .nlabels = 2,
                   .labels = {"overlay", "scenario"},
                   .fold = 1,
                   .bounds = quality_bounds,
                   .nbounds = NB(quality_bounds)},
    [F_OVERHEAD] = {.name = "fusion_overhead_ms",
                    .help = "Time fusion-host itself spent on a request, in milliseconds: the "
                            "total less the waits for the client's body and the upstream.",
                    .kind = KIND_HISTOGRAM,
                    .nlabels = 1,
                    .labels = {"overlay"},
                    .fold = 0,
                    .bounds = overhead_bounds,
                    .nbounds = NB(overhead_bounds)},
    [F_BREAKER] = {.name = "fusion_circuit_breaker_events_total",
                   .help = "Circuit breaker transitions and trips per overlay.",
                   .kind = KIND_COUNTER,
                   .nlabels = 2,
                   .labels = {"overlay", "result"},
                   .fold = 0},
    [F_OVERLAY_EVENTS] = {.name = "fusion_overlay_events_total",
                          .help = "Events counted by overlay plugins (metric_count).",
                          .kind = KIND_COUNTER,
                          .nlabels = 2,
                          .labels = {"overlay", "result"},
                          .fold = 0},
    [F_OVERLAY_STATE] = {.name = "fusion_overlay_state",
                         .help = "Overlay state: 1 for the current state, 0 for the others.",
                         .kind = KIND_STATE,
                         .nlabels = 1,
                         .labels = {"overlay"},
                         .fold = 0},
};

/* The states every overlay row renders, in this order; another state name
 * renders as one extra line after them so exactly one line is still 1. */
static const char *const known_states[] = {"enabled", "disabled", "draining", "quarantined"};
#define N_STATES NB(known_states)

typedef struct {
    uint64_t hash;
    char lv[MAX_LABELS][LABEL_MAX + 1];
    double value;              /* counter */
    char state[LABEL_MAX + 1]; /* KIND_STATE */
    double sum;                /* histogram */
    uint64_t count;            /* histogram */
    uint64_t buckets[];        /* histogram: nbounds + 1 (the last is +Inf), not cumulative */
} series;

typedef struct {
    series **items; /* insertion order; owned */
    size_t n, items_cap;
    uint32_t *index;   /* open addressing: item number or INDEX_EMPTY; owned */
    size_t index_size; /* power of two, at least twice n */
} family;

struct fh_metrics {
    pthread_mutex_t lock;
    size_t max_series; /* immutable */
    family fam[F_COUNT];
    uint64_t dropped;
    atomic_uint_fast64_t client_cancelled; /* no lock: one add per cancelled call */
};

void fh_metrics_sanitize(const char *in, char *out)
{
    size_t n = 0;
    if (in)
        for (; in[n] && n < LABEL_MAX; n++) {
            char c = in[n];
            bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '_' || c == '.' || c == '-';
            out[n] = ok ? c : '_';
        }
    if (n == 0) {
        memcpy(out, NONE_VALUE, sizeof(NONE_VALUE));
        return;
    }
    out[n] = '\0';
}

fh_metrics *fh_metrics_new(size_t max_series_per_metric)
{
    fh_metrics *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    if (pthread_mutex_init(&m->lock, NULL) != 0) {
        free(m);
        return NULL;
    }
    m->max_series = max_series_per_metric;
    return m;
}

void fh_metrics_free(fh_metrics *m)
{
    if (!m)
        return;
    for (size_t f = 0; f < F_COUNT; f++) {
        for (size_t i = 0; i < m->fam[f].n; i++)
            free(m->fam[f].items[i]);
        free(m->fam[f].items);
        free(m->fam[f].index);
    }
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* ---- series lookup ---------------------------------------------------- */

/* FNV-1a over the label values, each followed by a byte no value contains. */
static uint64_t hash_labels(const fam_def *d, char lv[][LABEL_MAX + 1])
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < d->nlabels; i++) {
        for (const char *p = lv[i]; *p; p++)
            h = (h ^ (unsigned char)*p) * 1099511628211ULL;
        h = (h ^ 0xffu) * 1099511628211ULL;
    }
    return h;
}

static series *find(family *f, const fam_def *d, char lv[][LABEL_MAX + 1], uint64_t h)
{
    if (!f->index)
        return NULL;
    size_t mask = f->index_size - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        uint32_t slot = f->index[i];
        if (slot == INDEX_EMPTY)
            return NULL;
        series *s = f->items[slot];
        if (s->hash != h)
            continue;
        bool same = true;
        for (size_t l = 0; l < d->nlabels && same; l++)
            same = strcmp(s->lv[l], lv[l]) == 0;
        if (same)
            return s;
    }
}

static void index_put(uint32_t *index, size_t size, uint64_t h, uint32_t item)
{
    size_t mask = size - 1;
    size_t i = (size_t)h & mask;
    while (index[i] != INDEX_EMPTY)
        i = (i + 1) & mask;
    index[i] = item;
}

/* Adds a zeroed series; NULL when out of memory (the sample is then lost
 * and counted as dropped by the caller). */
static series *insert(family *f, const fam_def *d, char lv[][LABEL_MAX + 1], uint64_t h)
{
    if (f->n >= INDEX_EMPTY - 1)
        return NULL;
    if (f->n == f->items_cap) {
        size_t cap = f->items_cap ? f->items_cap * 2 : 8;
        series **items = realloc(f->items, cap * sizeof(*items));
        if (!items)
            return NULL;
        f->items = items;
        f->items_cap = cap;
    }
    /* Keep the load factor at most 1/2 so probes stay short. */
    if ((f->n + 1) * 2 > f->index_size) {
        size_t size = f->index_size ? f->index_size * 2 : 16;
        uint32_t *index = malloc(size * sizeof(*index));
        if (!index)
            return NULL;
        for (size_t i = 0; i < size; i++)
            index[i] = INDEX_EMPTY;
        for (size_t i = 0; i < f->n; i++)
            index_put(index, size, f->items[i]->hash, (uint32_t)i);
        free(f->index);
        f->index = index;
        f->index_size = size;
    }
    size_t nb = d->kind == KIND_HISTOGRAM ? d->nbounds + 1 : 0;
    series *s = calloc(1, sizeof(*s) + nb * sizeof(s->buckets[0]));
    if (!s)
        return NULL;
    s->hash = h;
    for (size_t l = 0; l < d->nlabels; l++)
        memcpy(s->lv[l], lv[l], sizeof(s->lv[l]));
    f->items[f->n] = s;
    index_put(f->index, f->index_size, h, (uint32_t)f->n);
    f->n++;
    return s;
}

/* The series for lv (sanitised values), creating or folding it as the cap
 * dictates; may rewrite lv. Called with the lock held. */
static series *get_series(fh_metrics *m, fam_id id, char lv[][LABEL_MAX + 1])
{
    const fam_def *d = &defs[id];
    family *f = &m->fam[id];
    uint64_t h = hash_labels(d, lv);
    series *s = find(f, d, lv, h);
    if (s)
        return s;
    size_t rows_cap = d->kind == KIND_STATE ? m->max_series / N_STATES : m->max_series;
    if (f->n < rows_cap) {
        s = insert(f, d, lv, h);
        if (!s)
            m->dropped++;
        return s;
    }

    /* Folded on a copy: the caller's labels serve its other families. */
    m->dropped++;
    char folded[MAX_LABELS][LABEL_MAX + 1];
    memcpy(folded, lv, d->nlabels * sizeof(folded[0]));
    memcpy(folded[d->fold], FOLD_VALUE, sizeof(FOLD_VALUE));
    h = hash_labels(d, folded);
    s = find(f, d, folded, h);
    if (s)
        return s;
    if (f->n >= 2 * rows_cap + 1) {
        /* Even the fold series are too many: one series takes the rest. */
        for (size_t l = 0; l < d->nlabels; l++)
            memcpy(folded[l], FOLD_VALUE, sizeof(FOLD_VALUE));
        h = hash_labels(d, folded);
        s = find(f, d, folded, h);
        if (s)
            return s;
    }
    return insert(f, d, folded, h);
}

/* ---- recording -------------------------------------------------------- */

static void observe(series *s, const fam_def *d, double v)
{
    size_t b = 0;
    while (b < d->nbounds && v > d->bounds[b])
        b++;
    s->buckets[b]++;
    s->sum += v;
    s->count++;
}

static void record_histogram(fh_metrics *m, fam_id id, const char *overlay, const char *scenario,
                             double v)
{
    if (!m || !isfinite(v))
        return;
    char lv[MAX_LABELS][LABEL_MAX + 1];
    fh_metrics_sanitize(overlay, lv[0]);
    fh_metrics_sanitize(scenario, lv[1]);
    LOCK(m);
    series *s = get_series(m, id, lv);
    if (s)
        observe(s, &defs[id], v);
    UNLOCK(m);
}

static void record_counter2(fh_metrics *m, fam_id id, const char *overlay, const char *result,
                            double delta)
{
    /* A counter only goes up; a bad delta would make rate() lie. */
    if (!m || !isfinite(delta) || delta < 0)
        return;
    char lv[MAX_LABELS][LABEL_MAX + 1];
    fh_metrics_sanitize(overlay, lv[0]);
    fh_metrics_sanitize(result, lv[1]);
    LOCK(m);
    series *s = get_series(m, id, lv);
    if (s)
        s->value += delta;
    UNLOCK(m);
}

void fh_metrics_request(fh_metrics *m, const char *overlay, const char *scenario,
                        const char *result, double latency_ms)
{
    fh_metrics_request_done(m, overlay, scenario, result, latency_ms, NAN, NAN);
}

void fh_metrics_request_done(fh_metrics *m, const char *overlay, const char *scenario,
                             const char *result, double latency_ms, double quality,
                             double overhead_ms)
{
    if (!m)
        return;
    /* Labels sanitised once, one lock for all of a request's samples. */
    char lv[MAX_LABELS][LABEL_MAX + 1];
    fh_metrics_sanitize(overlay, lv[0]);
    fh_metrics_sanitize(scenario, lv[1]);
    fh_metrics_sanitize(result, lv[2]);
    LOCK(m);
    series *s = get_series(m, F_REQUESTS, lv);
    if (s)
        s->value += 1;
    if (isfinite(latency_ms) && (s = get_series(m, F_LATENCY, lv)) != NULL)
        observe(s, &defs[F_LATENCY], latency_ms);
    if (isfinite(quality) && (s = get_series(m, F_QUALITY, lv)) != NULL)
        observe(s, &defs[F_QUALITY], quality);
    if (isfinite(overhead_ms) && (s = get_series(m, F_OVERHEAD, lv)) != NULL)
        observe(s, &defs[F_OVERHEAD], overhead_ms);
    UNLOCK(m);
}

void fh_metrics_quality(fh_metrics *m, const char *overlay, const char *scenario, double score)
{
    record_histogram(m, F_QUALITY, overlay, scenario, score);
}

void fh_metrics_token_delta(fh_metrics *m, const char *overlay, const char *scenario, double pct)
{
    record_histogram(m, F_TOKEN_DELTA, overlay, scenario, pct);
}

void fh_metrics_breaker_event(fh_metrics *m, const char *overlay, const char *result)
{
    record_counter2(m, F_BREAKER, overlay, result, 1);
}

void fh_metrics_overlay_event(fh_metrics *m, const char *overlay, const char *event, double delta)
{
    record_counter2(m, F_OVERLAY_EVENTS, overlay, event, delta);
}

void fh_metrics_overlay_state(fh_metrics *m, const char *overlay, const char *state)
{
    if (!m)
        return;
    char lv[MAX_LABELS][LABEL_MAX + 1];
    char st[LABEL_MAX + 1];
    fh_metrics_sanitize(overlay, lv[0]);
    fh_metrics_sanitize(state, st);
    LOCK(m);
    series *s = get_series(m, F_OVERLAY_STATE, lv);
    if (s)
        memcpy(s->state, st, sizeof(st));
    UNLOCK(m);
}

/* ---- rendering -------------------------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
    bool failed;
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void sb_printf(sbuf *b, const char *fmt, ...)
{
    if (b->failed)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = true;
            return;
        }
        if ((size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap * 2 > b->len + (size_t)n + 1 ? b->cap * 2 : b->len + (size_t)n + 1;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->failed = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
}

/* Shortest text that reads back as v; integers without a decimal point. */
static void fmt_num(double v, char out[40])
{
    if (isnan(v)) {
        strcpy(out, "NaN");
        return;
    }
    if (isinf(v)) {
        strcpy(out, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (v == 0) { /* also -0, which would print as "-0" */
        strcpy(out, "0");
        return;
    }
    if (v == floor(v) && fabs(v) < 1e15) {
        snprintf(out, 40, "%.0f", v);
        return;
    }
    snprintf(out, 40, "%.15g", v);
    if (strtod(out, NULL) != v)
        snprintf(out, 40, "%.17g", v);
}

/* Label values are sanitised already; escaping keeps the output valid
 * should that ever change. */
static void sb_label(sbuf *b, bool first, const char *name, const char *value)
{
    if (!strpbrk(value, "\\\"\n")) { /* the usual case: one call */
        sb_printf(b, "%s%s=\"%s\"", first ? "" : ",", name, value);
        return;
    }
    sb_printf(b, "%s%s=\"", first ? "" : ",", name);
    for (const char *p = value; *p; p++) {
        if (*p == '\\')
            sb_printf(b, "\\\\");
        else if (*p == '"')
            sb_printf(b, "\\\"");
        else if (*p == '\n')
            sb_printf(b, "\\n");
        else
            sb_printf(b, "%c", *p);
    }
    sb_printf(b, "\"");
}

/* `name{labels[,extra="extra_value"]} value\n` */
static void sb_sample(sbuf *b, const char *name, const char *suffix, const fam_def *d,
                      const series *s, const char *extra, const char *extra_value, double v)
{
    char num[40];
    fmt_num(v, num);
    sb_printf(b, "%s%s{", name, suffix);
    size_t l = 0;
    for (; l < d->nlabels; l++)
        sb_label(b, l == 0, d->labels[l], s->lv[l]);
    if (extra)
        sb_label(b, l == 0, extra, extra_value);
    sb_printf(b, "} %s\n", num);
}

static void render_family(sbuf *b, const fam_def *d, const family *f)
{
    static const char *const type_names[] = {
        [KIND_COUNTER] = "counter", [KIND_HISTOGRAM] = "histogram", [KIND_STATE] = "gauge"};
    sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", d->name, d->help, d->name, type_names[d->kind]);
    for (size_t i = 0; i < f->n; i++) {
        const series *s = f->items[i];
        if (d->kind == KIND_COUNTER) {
            sb_sample(b, d->name, "", d, s, NULL, NULL, s->value);
        } else if (d->kind == KIND_STATE) {
            bool known = false;
            for (size_t k = 0; k < N_STATES; k++) {
                bool on = strcmp(s->state, known_states[k]) == 0;
                known = known || on;
                sb_sample(b, d->name, "", d, s, "state", known_states[k], on ? 1 : 0);
            }
            if (!known)
                sb_sample(b, d->name, "", d, s, "state", s->state, 1);
        } else {
            uint64_t cum = 0;
            char le[40];
            for (size_t k = 0; k < d->nbounds; k++) {
                cum += s->buckets[k];
                fmt_num(d->bounds[k], le);
                sb_sample(b, d->name, "_bucket", d, s, "le", le, (double)cum);
            }
            cum += s->buckets[d->nbounds];
            sb_sample(b, d->name, "_bucket", d, s, "le", "+Inf", (double)cum);
            sb_sample(b, d->name, "_sum", d, s, NULL, NULL, s->sum);
            sb_sample(b, d->name, "_count", d, s, NULL, NULL, (double)s->count);
        }
    }
}

/* A gauge family with a warn and (optionally) a critical line; the label
 * is "result" because SPEC 8 allows no other label names. */
static void render_threshold(sbuf *b, const char *name, const char *help, double warn,
                             double critical)
{
    char num[40];
    sb_printf(b, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name);
    fmt_num(warn, num);
    sb_printf(b, "%s{result=\"warn\"} %s\n", name, num);
    if (critical > 0) {
        fmt_num(critical, num);
        sb_printf(b, "%s{result=\"critical\"} %s\n", name, num);
    }
}

void fh_metrics_client_cancelled(fh_metrics *m)
{
    if (m)
        atomic_fetch_add_explicit(&m->client_cancelled, 1, memory_order_relaxed);
}

char *fh_metrics_render(fh_metrics *m, size_t *len)
{
    if (len)
        *len = 0;
    if (!m)
        return NULL;
    sbuf b = {malloc(4096), 0, 4096, false};
    if (!b.p)
        return NULL;
    b.p[0] = '\0';
    LOCK(m);
    for (size_t f = 0; f < F_COUNT; f++)
        render_family(&b, &defs[f], &m->fam[f]);
    char num[40], num2[40];
    fmt_num((double)m->dropped, num);
    UNLOCK(m);
    fmt_num((double)atomic_load(&m->client_cancelled), num2);
    sb_printf(&b,
              "# HELP fusion_client_cancelled_total Upstream calls cancelled because the client "
              "left.\n# TYPE fusion_client_cancelled_total counter\n"
              "fusion_client_cancelled_total %s\n",
              num2);
    sb_printf(&b,
              "# HELP fusion_metrics_dropped_total Samples folded into __other__ (or lost) by the "
              "series cap.\n# TYPE fusion_metrics_dropped_total counter\n"
              "fusion_metrics_dropped_total %s\n",
              num);
    render_threshold(
        &b, "fusion_threshold_latency_ms",
        "Runbook thresholds for the p95 of fusion_execution_latency_ms, in milliseconds.",
        FH_RUNBOOK_LATENCY_P95_WARN_MS, FH_RUNBOOK_LATENCY_P95_CRITICAL_MS);
    render_threshold(&b, "fusion_threshold_token_delta_pct",
                     "Runbook average token delta thresholds in percent.",
                     FH_RUNBOOK_TOKEN_DELTA_WARN_PCT, FH_RUNBOOK_TOKEN_DELTA_CRITICAL_PCT);
    render_threshold(&b, "fusion_threshold_quality_min",
                     "Runbook minimum average quality score (below is a warning).",
                     FH_RUNBOOK_QUALITY_MIN_WARN, 0);
    if (b.failed) {
        free(b.p);
        return NULL;
    }
    if (len)
        *len = b.len;
    return b.p;
}
