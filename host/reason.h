/*
 * reason.h - why a request was served by an overlay or by the baseline.
 * The names are the contract of SPEC section 4 (X-Fusion-Reason, the
 * response's fusion.reason, metrics). Immutable; any thread.
 */
#ifndef FH_REASON_H
#define FH_REASON_H

typedef enum fh_reason {
    FH_REASON_APPLIED = 0,
    FH_REASON_NO_MATCH,
    FH_REASON_FLAG_OFF,
    FH_REASON_ROLLOUT,
    FH_REASON_ENV_OVERRIDE,
    FH_REASON_DISABLED,
    FH_REASON_QUARANTINED,
    FH_REASON_BREAKER_OPEN,
    FH_REASON_BUDGET_TOKENS,
    FH_REASON_BUDGET_RATE,
    FH_REASON_BUDGET_LATENCY,
    FH_REASON_HOOK_ERROR,
    FH_REASON_HOOK_TIMEOUT, /* a hook call passed hooks.deadline_ms (or the
                               overlay has calls hung past the hand-off) */
    FH_REASON_OVERLAY_REJECTED_UPSTREAM,
    FH_REASON_COUNT
} fh_reason;

const char *fh_reason_name(fh_reason r);

#endif
