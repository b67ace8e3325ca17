/*
 * breaker.h - one overlay's circuit breaker (SPEC section 7): pure logic.
 *
 * Owns: the state of one breaker. No clock and no lock of its own: the
 * caller passes the time (tests inject it) and serialises calls (gates.c
 * holds the overlay's mutex around each). Each call reports the transition
 * it made, if any, for the caller to log and count once.
 *
 *   closed --failure_threshold consecutive failures--> open
 *   open --recovery_timeout_s passed, at the next admission--> half_open
 *   half_open: at most half_open_max_calls admitted at once;
 *     a success --> closed; a failure --> open, its reopen time extended
 *     (never brought forward by a later failure)
 */
#ifndef FH_BREAKER_H
#define FH_BREAKER_H

#include "config.h"

#include <stdbool.h>
#include <stdint.h>

typedef enum fh_brk_state { FH_BRK_CLOSED = 0, FH_BRK_OPEN, FH_BRK_HALF_OPEN } fh_brk_state;

typedef struct fh_breaker {
    fh_brk_state state;
    int consecutive;       /* failures in a row */
    int probes;            /* half-open calls admitted and not yet settled */
    uint64_t reopen_at_ms; /* open: when it may go half-open */
    uint64_t last_failure_ms;
    char last_reason[32]; /* of the last failure, "" when none */
    uint64_t trips;       /* times it opened */
    uint64_t period;      /* half-open periods begun: a probe belongs to one */
} fh_breaker;

/* A transition made by a call: from == to when none. */
typedef struct fh_brk_change {
    fh_brk_state from, to;
} fh_brk_change;

const char *fh_brk_state_name(fh_brk_state s);
void fh_breaker_init(fh_breaker *b);
/* May a request use the overlay now? Open: no (until the recovery time,
 * when it turns half-open). Half-open: yes while fewer than
 * half_open_max_calls are out; *probe tells the caller it holds one of
 * those (to settle with success/failure/release). */
bool fh_breaker_allow(fh_breaker *b, const fh_breaker_cfg *cfg, uint64_t now_ms, bool *probe,
                      fh_brk_change *ch);
fh_brk_change fh_breaker_success(fh_breaker *b, const fh_breaker_cfg *cfg, bool probe);
fh_brk_change fh_breaker_failure(fh_breaker *b, const fh_breaker_cfg *cfg, uint64_t now_ms,
                                 bool probe, const char *reason);
/* An admitted request that ended neither way (the upstream was down, the
 * client left): gives its half-open slot back. */
void fh_breaker_release(fh_breaker *b, bool probe);

#endif
