/*
 * budget.h - one overlay's budget gate (SPEC section 7): pure logic.
 *
 * Owns: the overlay's recent token deltas (a ring of the last token_window
 * overlaid requests), its breaches in a row, the tripwire, and its token
 * spend in the current minute. No clock and no lock of its own: the caller
 * passes the time and serialises calls (gates.c holds the overlay's mutex).
 *
 * Tokens: the gate trips (and stays tripped until reset) when the average
 * delta of the window exceeds token_delta_max_pct, or when
 * consecutive_breaches requests in a row exceed token_delta_warn_pct.
 * Spend: a call reserves an estimate before it goes upstream and settles
 * with the reported usage after, so concurrent calls on every worker
 * together never reserve past tokens_per_minute.
 */
#ifndef FH_BUDGET_H
#define FH_BUDGET_H

#include "config.h"

#include <stdbool.h>
#include <stdint.h>

#define FH_BUDGET_WINDOW_MAX 1000 /* token_window's upper bound */

typedef struct fh_budget {
    double deltas[FH_BUDGET_WINDOW_MAX];
    int n, next;  /* samples held (<= token_window), where the next goes */
    int breaches; /* over token_delta_warn_pct in a row */
    bool tripped;
    char trip_reason[96];
    uint64_t tripped_at_ms;
    uint64_t minute; /* the spend window: now_ms / 60000 */
    long spent;      /* settled tokens in this minute */
    long reserved;   /* reserved by calls still out */
} fh_budget;

void fh_budget_init(fh_budget *b);
/* One overlaid request's token delta in percent. true when it tripped the
 * gate now (the reason is in b->trip_reason). */
bool fh_budget_add_delta(fh_budget *b, const fh_budget_cfg *cfg, double pct, uint64_t now_ms);
/* The window's average delta; 0 when empty. */
double fh_budget_average(const fh_budget *b, const fh_budget_cfg *cfg);
/* Reserves `estimate` tokens for a call. false, with nothing reserved, when
 * that would pass tokens_per_minute (0: no limit, always true). *minute is
 * what fh_budget_settle needs back. */
bool fh_budget_reserve(fh_budget *b, const fh_budget_cfg *cfg, long estimate, uint64_t now_ms,
                       uint64_t *minute);
/* The call is over: its reservation is replaced by what it used (0 when
 * it never reached the upstream). */
void fh_budget_settle(fh_budget *b, long estimate, long used, uint64_t minute, uint64_t now_ms);
/* Tokens spent and reserved in the current minute. */
long fh_budget_spend(fh_budget *b, uint64_t now_ms);
/* Clears the tripwire and the window (the operator's reset). */
void fh_budget_reset(fh_budget *b);

#endif
