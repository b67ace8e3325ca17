/* breaker.c - see breaker.h. */
#include "breaker.h"

#include "util.h"

#include <string.h>

const char *fh_brk_state_name(fh_brk_state s)
{
    return s == FH_BRK_OPEN ? "open" : s == FH_BRK_HALF_OPEN ? "half_open" : "closed";
}

void fh_breaker_init(fh_breaker *b)
{
    memset(b, 0, sizeof(*b));
}

static fh_brk_change move(fh_breaker *b, fh_brk_state to)
{
    fh_brk_change ch = {b->state, to};
    b->state = to;
    return ch;
}

bool fh_breaker_allow(fh_breaker *b, const fh_breaker_cfg *cfg, uint64_t now_ms, bool *probe,
                      fh_brk_change *ch)
{
    *probe = false;
    *ch = (fh_brk_change){b->state, b->state};
    if (b->state == FH_BRK_OPEN) {
        if (now_ms < b->reopen_at_ms)
            return false;
        *ch = move(b, FH_BRK_HALF_OPEN);
        b->probes = 0;
        b->period++;
    }
    if (b->state == FH_BRK_HALF_OPEN) {
        if (b->probes >= cfg->half_open_max_calls)
            return false;
        b->probes++;
        *probe = true;
    }
    return true;
}

fh_brk_change fh_breaker_success(fh_breaker *b, const fh_breaker_cfg *cfg, bool probe)
{
    (void)cfg;
    b->consecutive = 0;
    if (probe && b->probes > 0)
        b->probes--;
    if (b->state == FH_BRK_HALF_OPEN && probe) {
        b->probes = 0;
        return move(b, FH_BRK_CLOSED);
    }
    return (fh_brk_change){b->state, b->state};
}

fh_brk_change fh_breaker_failure(fh_breaker *b, const fh_breaker_cfg *cfg, uint64_t now_ms,
                                 bool probe, const char *reason)
{
    b->consecutive++;
    b->last_failure_ms = now_ms;
    fh_strlcpy(b->last_reason, reason ? reason : "", sizeof(b->last_reason));
    if (probe && b->probes > 0)
        b->probes--;
    uint64_t reopen = now_ms + (uint64_t)cfg->recovery_timeout_s * 1000u;
    bool trip = (b->state == FH_BRK_HALF_OPEN && probe) ||
                (b->state == FH_BRK_CLOSED && b->consecutive >= cfg->failure_threshold);
    if (b->state == FH_BRK_OPEN || trip) {
        /* Extended, never brought forward (a late failure of a call admitted
         * before the breaker opened must not shorten the wait). */
        if (reopen > b->reopen_at_ms)
            b->reopen_at_ms = reopen;
    }
    if (!trip)
        return (fh_brk_change){b->state, b->state};
    b->trips++;
    b->probes = 0;
    return move(b, FH_BRK_OPEN);
}

void fh_breaker_release(fh_breaker *b, bool probe)
{
    if (probe && b->probes > 0)
        b->probes--;
}
