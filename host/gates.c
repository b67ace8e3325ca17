/*
 * gates.c - see gates.h.
 *
 * Locks: fh_gates.mu only while a gate is made; fh_gate.mu around every
 * read or change of one gate; fh_gates.bmu around the baseline table. No
 * lock is held while another is taken, and none while logging... except a
 * gate's own around its transition lines, which are rare.
 */
#include "gates.h"

#include "log.h"
#include "util.h"

#include <fusion/overlay.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RUNBOOK_N      100  /* the runbook window: an overlay's last requests */
#define BASE_N         100  /* baseline samples kept per scenario type */
#define BASE_MIN       20   /* fewer: the request's own estimate is the reference */
#define BASE_SLOTS     2048 /* hash slots (a power of two) */
#define BASE_TYPES_MAX 1024 /* scenario types tracked; others use the estimate */

typedef struct ring {
    double v[RUNBOOK_N];
    int n, next;
} ring;

struct fh_gate {
    char name[FUSION_NAME_MAX + 1];
    pthread_mutex_t mu;
    fh_breaker brk;
    fh_budget bud;
    fh_gate_cfg cfg; /* as last used: shown in the JSON */
    ring latency, delta, quality;
    uint64_t admitted, failures;
    fh_gates *owner;
};

typedef struct base_entry {
    char type[FUSION_NAME_MAX + 1];
    long v[BASE_N];
    int n, next;
} base_entry;

struct fh_gates {
    fh_metrics *m;
    pthread_mutex_t mu;
    fh_gate *gates[FH_GATES_MAX];
    atomic_uint n;
    atomic_ulong changes; /* budget trips and resets: the daemon persists them */
    pthread_mutex_t bmu;
    base_entry *base[BASE_SLOTS];
    unsigned nbase;
};

const char *fh_outcome_name(fh_outcome o)
{
    static const char *const names[] = {"success",        "neutral",
                                        "hook_error",     "hook_timeout",
                                        "budget_latency", "overlay_rejected_upstream",
                                        "quality"};
    return (unsigned)o < sizeof(names) / sizeof(names[0]) ? names[o] : "unknown";
}

/* ---- settings ---------------------------------------------------------------- */

void fh_gate_cfg_of(const fh_snapshot *s, const char *overlay, fh_gate_cfg *out)
{
    const fh_overlay_cfg *o = fh_config_overlay(s->cfg, overlay);
    const fh_flags *fl = s->flags;
    const fh_environment *env = fl ? fh_flags_environment(fl, s->cfg->environment) : NULL;
    out->breaker = o->breaker;
    out->budget = o->budget;
    out->breaker_enabled = true;
    if (fl) {
        if (!fl->global.circuit_breaker.enabled)
            out->breaker_enabled = false;
        if (!o->breaker_set.failure_threshold && fl->global.circuit_breaker.failure_threshold > 0)
            out->breaker.failure_threshold = fl->global.circuit_breaker.failure_threshold;
        if (!o->breaker_set.recovery_timeout_s && fl->global.circuit_breaker.recovery_timeout > 0)
            out->breaker.recovery_timeout_s = fl->global.circuit_breaker.recovery_timeout;
    }
    if (env && !env->circuit_breaker_enabled)
        out->breaker_enabled = false;
    out->quality_threshold =
        o->quality_set || !env ? o->quality_threshold : env->quality_gate_threshold;
}

/* ---- the table ------------------------------------------------------------------ */

fh_gates *fh_gates_new(fh_metrics *m)
{
    fh_gates *g = calloc(1, sizeof(*g));
    if (!g)
        return NULL;
    g->m = m;
    pthread_mutex_init(&g->mu, NULL);
    pthread_mutex_init(&g->bmu, NULL);
    atomic_init(&g->n, 0);
    return g;
}

void fh_gates_free(fh_gates *g)
{
    if (!g)
        return;
    unsigned n = atomic_load(&g->n);
    for (unsigned i = 0; i < n; i++) {
        pthread_mutex_destroy(&g->gates[i]->mu);
        free(g->gates[i]);
    }
    for (unsigned i = 0; i < BASE_SLOTS; i++)
        free(g->base[i]);
    pthread_mutex_destroy(&g->mu);
    pthread_mutex_destroy(&g->bmu);
    free(g);
}

static fh_gate *find(fh_gates *g, const char *name, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        if (strcmp(g->gates[i]->name, name) == 0)
            return g->gates[i];
    return NULL;
}

fh_gate *fh_gates_get(fh_gates *g, const char *overlay)
{
    /* Published with a release store after the slot is filled: a reader
     * that sees the count sees the gate. */
    fh_gate *gate = find(g, overlay, atomic_load_explicit(&g->n, memory_order_acquire));
    if (gate)
        return gate;
    pthread_mutex_lock(&g->mu);
    unsigned n = atomic_load_explicit(&g->n, memory_order_relaxed);
    gate = find(g, overlay, n);
    if (!gate && n < FH_GATES_MAX && (gate = calloc(1, sizeof(*gate))) != NULL) {
        fh_strlcpy(gate->name, overlay, sizeof(gate->name));
        pthread_mutex_init(&gate->mu, NULL);
        fh_breaker_init(&gate->brk);
        fh_budget_init(&gate->bud);
        gate->owner = g;
        g->gates[n] = gate;
        atomic_store_explicit(&g->n, n + 1, memory_order_release);
    }
    pthread_mutex_unlock(&g->mu);
    return gate;
}

/* ---- one gate ------------------------------------------------------------------- */

static void ring_add(ring *r, double v)
{
    r->v[r->next] = v;
    r->next = (r->next + 1) % RUNBOOK_N;
    if (r->n < RUNBOOK_N)
        r->n++;
}

static double ring_avg(const ring *r)
{
    double sum = 0;
    for (int i = 0; i < r->n; i++)
        sum += r->v[i];
    return r->n ? sum / r->n : NAN;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double ring_p95(const ring *r)
{
    if (!r->n)
        return NAN;
    double v[RUNBOOK_N];
    memcpy(v, r->v, sizeof(double) * (size_t)r->n);
    qsort(v, (size_t)r->n, sizeof(double), cmp_double);
    int i = (int)ceil(0.95 * r->n) - 1;
    return v[i < 0 ? 0 : i];
}

/* Under gate->mu: a transition is logged once and counted. */
static void note_change(fh_gate *gate, fh_brk_change ch, const char *why)
{
    if (ch.from == ch.to)
        return;
    const char *to = fh_brk_state_name(ch.to);
    if (ch.to == FH_BRK_OPEN)
        fh_warn("overlay %s: circuit breaker %s -> open (%s); its requests get the baseline "
                "(breaker_open) for %d s",
                gate->name, fh_brk_state_name(ch.from), why, gate->cfg.breaker.recovery_timeout_s);
    else
        fh_info("overlay %s: circuit breaker %s -> %s (%s)", gate->name, fh_brk_state_name(ch.from),
                to, why);
    fh_metrics_breaker_event(gate->owner->m, gate->name, to);
}

fh_reason fh_gate_admit(fh_gate *gate, const fh_gate_cfg *cfg, uint64_t now_ms, fh_gate_ticket *t)
{
    *t = (fh_gate_ticket){0};
    fh_reason r = FH_REASON_APPLIED;
    pthread_mutex_lock(&gate->mu);
    gate->cfg = *cfg;
    bool probe = false;
    if (!cfg->breaker_enabled && gate->brk.state != FH_BRK_CLOSED) {
        /* Turned off (a reload): it must not keep the overlay fenced off. */
        fh_brk_change ch = {gate->brk.state, FH_BRK_CLOSED};
        gate->brk.state = FH_BRK_CLOSED;
        gate->brk.consecutive = gate->brk.probes = 0;
        note_change(gate, ch, "circuit breakers are disabled");
    }
    if (cfg->breaker_enabled) {
        fh_brk_change ch;
        bool ok = fh_breaker_allow(&gate->brk, &cfg->breaker, now_ms, &probe, &ch);
        note_change(gate, ch, "recovery_timeout_s passed: trying the overlay again");
        if (!ok)
            r = FH_REASON_BREAKER_OPEN;
    }
    if (r == FH_REASON_APPLIED && gate->bud.tripped) {
        fh_breaker_release(&gate->brk, probe);
        r = FH_REASON_BUDGET_TOKENS;
    }
    if (r == FH_REASON_APPLIED) {
        t->gate = gate;
        t->probe = probe;
        t->period = gate->brk.period;
        gate->admitted++;
    }
    pthread_mutex_unlock(&gate->mu);
    return r;
}

bool fh_gate_reserve(fh_gate_ticket *t, const fh_gate_cfg *cfg, long estimate, uint64_t now_ms)
{
    if (!t->gate)
        return true;
    pthread_mutex_lock(&t->gate->mu);
    bool ok = fh_budget_reserve(&t->gate->bud, &cfg->budget, estimate, now_ms, &t->minute);
    if (ok)
        t->reserved = estimate;
    pthread_mutex_unlock(&t->gate->mu);
    return ok;
}

void fh_gate_finish(fh_gate_ticket *t, const fh_gate_cfg *cfg, fh_outcome o, long used,
                    double delta_pct, double latency_ms, double quality, uint64_t now_ms)
{
    fh_gate *gate = t->gate;
    if (!gate)
        return;
    pthread_mutex_lock(&gate->mu);
    gate->cfg = *cfg;
    if (t->reserved || used > 0)
        fh_budget_settle(&gate->bud, t->reserved, used >= 0 ? used : t->reserved, t->minute,
                         now_ms);
    /* A probe of an earlier half-open period (the breaker reopened and went
     * half-open again meanwhile) settles as an ordinary call: it must not
     * free a slot of, or close, the current period. */
    if (t->probe && t->period != gate->brk.period)
        t->probe = false;
    if (cfg->breaker_enabled) {
        if (o == FH_OUT_SUCCESS) {
            note_change(gate, fh_breaker_success(&gate->brk, &cfg->breaker, t->probe),
                        "a half-open call succeeded");
        } else if (o == FH_OUT_NEUTRAL) {
            fh_breaker_release(&gate->brk, t->probe);
        } else {
            gate->failures++;
            char why[96];
            snprintf(why, sizeof(why), "%s; %d failure%s in a row", fh_outcome_name(o),
                     gate->brk.consecutive + 1, gate->brk.consecutive ? "s" : "");
            note_change(
                gate,
                fh_breaker_failure(&gate->brk, &cfg->breaker, now_ms, t->probe, fh_outcome_name(o)),
                why);
        }
    }
    if (!isnan(delta_pct)) {
        ring_add(&gate->delta, delta_pct);
        if (fh_budget_add_delta(&gate->bud, &cfg->budget, delta_pct, now_ms)) {
            fh_warn("overlay %s: budget gate tripped: %s; its requests get the baseline "
                    "(budget_tokens) until it is reset",
                    gate->name, gate->bud.trip_reason);
            fh_metrics_breaker_event(gate->owner->m, gate->name, "budget_tripped");
            atomic_fetch_add(&gate->owner->changes, 1);
        }
    }
    if (!isnan(latency_ms))
        ring_add(&gate->latency, latency_ms);
    if (!isnan(quality))
        ring_add(&gate->quality, quality);
    pthread_mutex_unlock(&gate->mu);
    *t = (fh_gate_ticket){0};
}

int fh_gates_reset(fh_gates *g, const char *overlay)
{
    fh_gate *gate = find(g, overlay, atomic_load_explicit(&g->n, memory_order_acquire));
    if (!gate)
        return -1;
    pthread_mutex_lock(&gate->mu);
    fh_brk_change ch = {gate->brk.state, FH_BRK_CLOSED};
    uint64_t trips = gate->brk.trips;
    fh_breaker_init(&gate->brk);
    gate->brk.trips = trips;
    note_change(gate, ch, "reset by the operator");
    fh_budget_reset(&gate->bud);
    pthread_mutex_unlock(&gate->mu);
    atomic_fetch_add(&g->changes, 1);
    return 0;
}

unsigned long fh_gates_changes(fh_gates *g)
{
    return atomic_load(&g->changes);
}

size_t fh_gates_tripped(fh_gates *g, void (*fn)(void *ud, const char *overlay, const char *reason),
                        void *ud)
{
    unsigned n = atomic_load_explicit(&g->n, memory_order_acquire);
    size_t count = 0;
    for (unsigned i = 0; i < n; i++) {
        fh_gate *gate = g->gates[i];
        char reason[sizeof(gate->bud.trip_reason)];
        pthread_mutex_lock(&gate->mu);
        bool tripped = gate->bud.tripped;
        fh_strlcpy(reason, gate->bud.trip_reason, sizeof(reason));
        pthread_mutex_unlock(&gate->mu);
        if (tripped) {
            count++;
            fn(ud, gate->name, reason);
        }
    }
    return count;
}

int fh_gates_trip(fh_gates *g, const char *overlay, const char *reason, uint64_t now_ms)
{
    fh_gate *gate = fh_gates_get(g, overlay);
    if (!gate)
        return -1;
    pthread_mutex_lock(&gate->mu);
    gate->bud.tripped = true;
    fh_strlcpy(gate->bud.trip_reason, reason, sizeof(gate->bud.trip_reason));
    gate->bud.tripped_at_ms = now_ms;
    pthread_mutex_unlock(&gate->mu);
    atomic_fetch_add(&g->changes, 1);
    return 0;
}

/* ---- the baseline reference ------------------------------------------------------ */

static unsigned type_hash(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h & (BASE_SLOTS - 1);
}

/* Under bmu: the entry of `type` (made when `make`), or NULL. */
static base_entry *base_find(fh_gates *g, const char *type, bool make)
{
    unsigned i = type_hash(type);
    for (unsigned k = 0; k < BASE_SLOTS; k++, i = (i + 1) & (BASE_SLOTS - 1)) {
        base_entry *e = g->base[i];
        if (!e) {
            if (!make || g->nbase >= BASE_TYPES_MAX || !(e = calloc(1, sizeof(*e))))
                return NULL;
            fh_strlcpy(e->type, type, sizeof(e->type));
            g->base[i] = e;
            g->nbase++;
            return e;
        }
        if (strcmp(e->type, type) == 0)
            return e;
    }
    return NULL;
}

void fh_gates_baseline_add(fh_gates *g, const char *scenario, long total_tokens)
{
    if (!scenario || total_tokens <= 0)
        return;
    pthread_mutex_lock(&g->bmu);
    base_entry *e = base_find(g, scenario, true);
    if (e) {
        e->v[e->next] = total_tokens;
        e->next = (e->next + 1) % BASE_N;
        if (e->n < BASE_N)
            e->n++;
    }
    pthread_mutex_unlock(&g->bmu);
}

static int cmp_long(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;
    return x < y ? -1 : x > y;
}

long fh_gates_baseline_ref(fh_gates *g, const char *scenario)
{
    long v[BASE_N];
    int n = 0;
    pthread_mutex_lock(&g->bmu);
    base_entry *e = scenario ? base_find(g, scenario, false) : NULL;
    if (e && e->n >= BASE_MIN) {
        n = e->n;
        memcpy(v, e->v, sizeof(long) * (size_t)n);
    }
    pthread_mutex_unlock(&g->bmu);
    if (!n)
        return -1;
    qsort(v, (size_t)n, sizeof(long), cmp_long);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* ---- the visible state -------------------------------------------------------------- */

static void add_reason(json_t *reasons, const char *what, const char *name)
{
    char r[160];
    snprintf(r, sizeof(r), "%s:%s", what, name);
    json_array_append_new(reasons, json_string(r));
}

static json_t *num_or_null(double v)
{
    return isnan(v) ? json_null() : json_real(round(v * 1000) / 1000);
}

char *fh_gates_json(fh_gates *g, uint64_t now_ms, char **reasons_out)
{
    json_t *all = json_object(), *reasons = json_array();
    unsigned n = atomic_load_explicit(&g->n, memory_order_acquire);
    for (unsigned i = 0; i < n && all && reasons; i++) {
        fh_gate *gate = g->gates[i];
        pthread_mutex_lock(&gate->mu);
        fh_breaker b = gate->brk;
        fh_gate_cfg cfg = gate->cfg;
        double avg_window = fh_budget_average(&gate->bud, &cfg.budget);
        int breaches = gate->bud.breaches,
            samples = gate->bud.n < cfg.budget.token_window ? gate->bud.n : cfg.budget.token_window;
        bool tripped = gate->bud.tripped;
        char trip_reason[96];
        fh_strlcpy(trip_reason, gate->bud.trip_reason, sizeof(trip_reason));
        long spend = fh_budget_spend(&gate->bud, now_ms);
        double p95 = ring_p95(&gate->latency), avg_delta = ring_avg(&gate->delta),
               avg_quality = ring_avg(&gate->quality);
        int n_lat = gate->latency.n;
        uint64_t admitted = gate->admitted, failures = gate->failures;
        pthread_mutex_unlock(&gate->mu);

        json_t *brk = json_pack(
            "{s:s, s:b, s:i, s:I, s:s?, s:I, s:I, s:I}", "state", fh_brk_state_name(b.state),
            "enabled", cfg.breaker_enabled, "consecutive_failures", b.consecutive,
            "last_failure_ms_ago",
            (json_int_t)(b.last_failure_ms ? (json_int_t)(now_ms - b.last_failure_ms) : -1),
            "last_failure_reason", b.last_reason[0] ? b.last_reason : NULL, "reopens_in_ms",
            (json_int_t)(b.state == FH_BRK_OPEN && b.reopen_at_ms > now_ms ? b.reopen_at_ms - now_ms
                                                                           : 0),
            "trips", (json_int_t)b.trips, "failure_threshold",
            (json_int_t)cfg.breaker.failure_threshold);
        json_t *gj = json_pack(
            "{s:o, s:i, s:i, s:b, s:s?, s:I, s:I, s:f, s:f}", "avg_token_delta_pct",
            num_or_null(samples ? avg_window : NAN), "window_samples", samples, "breaches_in_a_row",
            breaches, "tripped", tripped, "trip_reason", tripped ? trip_reason : NULL,
            "spend_this_minute", (json_int_t)spend, "tokens_per_minute",
            (json_int_t)cfg.budget.tokens_per_minute, "token_delta_warn_pct",
            cfg.budget.token_delta_warn_pct, "token_delta_max_pct", cfg.budget.token_delta_max_pct);
        json_t *rb = json_pack("{s:i, s:o, s:o, s:o, s:I, s:I}", "requests", n_lat,
                               "latency_p95_ms", num_or_null(p95), "avg_token_delta_pct",
                               num_or_null(avg_delta), "avg_quality", num_or_null(avg_quality),
                               "admitted", (json_int_t)admitted, "failures", (json_int_t)failures);
        json_object_set_new(
            all, gate->name,
            json_pack("{s:o, s:o, s:o}", "breaker", brk, "gate", gj, "runbook", rb));
        if (b.state != FH_BRK_CLOSED)
            add_reason(reasons, b.state == FH_BRK_OPEN ? "breaker_open" : "breaker_half_open",
                       gate->name);
        if (tripped)
            add_reason(reasons, "budget_tripped", gate->name);
        if (!isnan(p95) && p95 > FH_RUNBOOK_LATENCY_P95_WARN_MS)
            add_reason(reasons,
                       p95 > FH_RUNBOOK_LATENCY_P95_CRITICAL_MS ? "latency_p95_critical"
                                                                : "latency_p95_warn",
                       gate->name);
        if (!isnan(avg_delta) && avg_delta > FH_RUNBOOK_TOKEN_DELTA_WARN_PCT)
            add_reason(reasons,
                       avg_delta > FH_RUNBOOK_TOKEN_DELTA_CRITICAL_PCT ? "token_delta_critical"
                                                                       : "token_delta_warn",
                       gate->name);
        if (!isnan(avg_quality) && avg_quality < FH_RUNBOOK_QUALITY_MIN_WARN)
            add_reason(reasons, "quality_low", gate->name);
    }
    char *text = all ? json_dumps(all, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    if (reasons_out)
        *reasons_out = reasons ? json_dumps(reasons, JSON_COMPACT) : NULL;
    json_decref(all);
    json_decref(reasons);
    return text;
}

/* ---- the estimator ------------------------------------------------------------------ */

/* Bytes of a message's text: a string, or the text parts of an array. */
static size_t content_bytes(const json_t *c)
{
    if (json_is_string(c))
        return json_string_length(c);
    size_t n = 0, i;
    const json_t *part;
    if (json_is_array(c))
        json_array_foreach(c, i, part)
        {
            const json_t *t = json_object_get(part, "text");
            if (json_is_string(t))
                n += json_string_length(t);
        }
    return n;
}

long fh_estimate_prompt_tokens(const void *messages)
{
    const json_t *msgs = messages;
    long total = 0;
    size_t i;
    const json_t *m;
    if (!json_is_array(msgs))
        return 0;
    json_array_foreach(msgs, i, m)
    {
        total += (long)((content_bytes(json_object_get(m, "content")) + 3) / 4) + 4;
    }
    return total;
}
