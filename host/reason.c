/* reason.c - see reason.h. */
#include "reason.h"

static const char *const names[FH_REASON_COUNT] = {
    [FH_REASON_APPLIED] = "applied",
    [FH_REASON_NO_MATCH] = "no_match",
    [FH_REASON_FLAG_OFF] = "flag_off",
    [FH_REASON_ROLLOUT] = "rollout",
    [FH_REASON_ENV_OVERRIDE] = "env_override",
    [FH_REASON_DISABLED] = "disabled",
    [FH_REASON_QUARANTINED] = "quarantined",
    [FH_REASON_BREAKER_OPEN] = "breaker_open",
    [FH_REASON_BUDGET_TOKENS] = "budget_tokens",
    [FH_REASON_BUDGET_RATE] = "budget_rate",
    [FH_REASON_BUDGET_LATENCY] = "budget_latency",
    [FH_REASON_HOOK_ERROR] = "hook_error",
    [FH_REASON_HOOK_TIMEOUT] = "hook_timeout",
    [FH_REASON_OVERLAY_REJECTED_UPSTREAM] = "overlay_rejected_upstream",
};

const char *fh_reason_name(fh_reason r)
{
    return (unsigned)r < FH_REASON_COUNT ? names[r] : "unknown";
}
