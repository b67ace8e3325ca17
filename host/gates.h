/*
 * gates.h - every overlay's circuit breaker and budget gate, shared by the
 * workers; the baseline token reference per scenario type; the runbook
 * thresholds each overlay is held to.
 *
 * Owns: one fh_gate per overlay name (made on first use, kept until exit),
 * each with a mutex around its breaker (breaker.c), budget (budget.c) and
 * a window of its last requests (latency, token delta, quality) for the
 * runbook thresholds; and the table of baseline-served token totals per
 * scenario type. breaker.c and budget.c only count and decide; the
 * pipeline classifies a request's outcome once (fh_outcome) and hands it
 * here; this file logs each breaker transition once and counts it.
 *
 * Threads: any. A gate's mutex is held for a few hundred instructions, twice
 * per overlaid request (admission, finish); gates are found without a lock.
 */
#ifndef FH_GATES_H
#define FH_GATES_H

#include "breaker.h"
#include "budget.h"
#include "metrics.h"
#include "reason.h"
#include "snapshot.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct fh_gates fh_gates;
typedef struct fh_gate fh_gate;

/* An overlay's settings, as the running snapshot gives them. */
typedef struct fh_gate_cfg {
    bool breaker_enabled;
    fh_breaker_cfg breaker;
    fh_budget_cfg budget;
    double quality_threshold;
} fh_gate_cfg;

/* overlays.<name> over the flags file's global.circuit_breaker and
 * environments.<env> (circuit_breaker_enabled, quality_gate_threshold). */
void fh_gate_cfg_of(const fh_snapshot *s, const char *overlay, fh_gate_cfg *out);

/* How an overlaid request ended, decided once by the pipeline. */
typedef enum fh_outcome {
    FH_OUT_SUCCESS = 0,
    FH_OUT_NEUTRAL,      /* not the overlay's doing: upstream down, client gone, declined */
    FH_OUT_HOOK_ERROR,   /* a hook failed */
    FH_OUT_HOOK_TIMEOUT, /* a hook passed hooks.deadline_ms */
    FH_OUT_LATENCY,      /* hooks over budget.hook_latency_ms */
    FH_OUT_REJECTED,     /* the upstream refused the overlaid request (4xx) */
    FH_OUT_QUALITY       /* the answer scored under quality_threshold */
} fh_outcome;

const char *fh_outcome_name(fh_outcome o);

/* What an admitted request holds until its finish. */
typedef struct fh_gate_ticket {
    fh_gate *gate;   /* NULL: not admitted (nothing to settle) */
    bool probe;      /* one of the half-open breaker's calls */
    uint64_t period; /* ... of this half-open period (a later one ignores it) */
    long reserved;   /* tokens reserved against tokens_per_minute */
    uint64_t minute;
} fh_gate_ticket;

fh_gates *fh_gates_new(fh_metrics *m);
void fh_gates_free(fh_gates *g);
/* The overlay's gate (made on first use); NULL when out of memory or past
 * FH_GATES_MAX overlays (the request is then served without gates). */
#define FH_GATES_MAX 256
fh_gate *fh_gates_get(fh_gates *g, const char *overlay);

/* Before any hook runs: the breaker and the tripwire. FH_REASON_APPLIED
 * when admitted (the ticket holds it), else breaker_open or budget_tokens. */
fh_reason fh_gate_admit(fh_gate *gate, const fh_gate_cfg *cfg, uint64_t now_ms, fh_gate_ticket *t);
/* Before the overlaid request goes upstream: reserves `estimate` tokens.
 * false (budget_rate) when over tokens_per_minute. */
bool fh_gate_reserve(fh_gate_ticket *t, const fh_gate_cfg *cfg, long estimate, uint64_t now_ms);
/* The request's end: its outcome for the breaker; the tokens it used
 * (-1: unknown, the reservation is charged); its token delta (NAN: none),
 * latency and quality (NAN: none) for the gate and the runbook window.
 * Clears the ticket. */
void fh_gate_finish(fh_gate_ticket *t, const fh_gate_cfg *cfg, fh_outcome o, long used,
                    double delta_pct, double latency_ms, double quality, uint64_t now_ms);

/* The baseline reference of a scenario type (SPEC 7): record one
 * baseline-served request's total tokens; the median of the last 100, or
 * -1 while there are fewer than 20. */
void fh_gates_baseline_add(fh_gates *g, const char *scenario, long total_tokens);
long fh_gates_baseline_ref(fh_gates *g, const char *scenario);

/* Every gate as JSON, {"name": {"breaker": {...}, "gate": {...}, "runbook":
 * {...}}, ...} (malloc'd), the form /health and the admin API serve; and,
 * when reasons is not NULL, the reasons for "degraded" as a malloc'd JSON
 * array in *reasons (["breaker_open:name", "budget_tripped:name", ...]). */
char *fh_gates_json(fh_gates *g, uint64_t now_ms, char **reasons);
/* The operator's reset: breaker closed, tripwire cleared. -1 when unknown. */
int fh_gates_reset(fh_gates *g, const char *overlay);

/* Persisting tripped gates across restarts (opstate.h): a number that
 * moves whenever a gate trips or is reset; every tripped gate with its
 * reason; and a trip restored at start (the gate is made if need be). */
unsigned long fh_gates_changes(fh_gates *g);
size_t fh_gates_tripped(fh_gates *g, void (*fn)(void *ud, const char *overlay, const char *reason),
                        void *ud);
int fh_gates_trip(fh_gates *g, const char *overlay, const char *reason, uint64_t now_ms);

/* The estimator for prompt tokens (SPEC 7's "estimated"): about one token
 * per 4 bytes of message text plus 4 per message; `messages` is the
 * request's JSON array. */
long fh_estimate_prompt_tokens(const void *messages);

#endif
