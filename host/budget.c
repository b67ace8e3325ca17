/* budget.c - see budget.h. */
#include "budget.h"

#include <stdio.h>
#include <string.h>

void fh_budget_init(fh_budget *b)
{
    memset(b, 0, sizeof(*b));
}

static int window_of(const fh_budget_cfg *cfg)
{
    int w = cfg->token_window;
    return w < 1 ? 1 : (w > FH_BUDGET_WINDOW_MAX ? FH_BUDGET_WINDOW_MAX : w);
}

double fh_budget_average(const fh_budget *b, const fh_budget_cfg *cfg)
{
    int w = window_of(cfg), n = b->n < w ? b->n : w;
    if (n == 0)
        return 0;
    double sum = 0;
    for (int i = 1; i <= n; i++) /* the n newest, going back from `next` */
        sum += b->deltas[(b->next - i + FH_BUDGET_WINDOW_MAX) % FH_BUDGET_WINDOW_MAX];
    return sum / n;
}

bool fh_budget_add_delta(fh_budget *b, const fh_budget_cfg *cfg, double pct, uint64_t now_ms)
{
    b->deltas[b->next] = pct;
    b->next = (b->next + 1) % FH_BUDGET_WINDOW_MAX;
    if (b->n < FH_BUDGET_WINDOW_MAX)
        b->n++;
    b->breaches = pct > cfg->token_delta_warn_pct ? b->breaches + 1 : 0;
    if (b->tripped)
        return false;
    double avg = fh_budget_average(b, cfg);
    if (avg > cfg->token_delta_max_pct) {
        snprintf(b->trip_reason, sizeof(b->trip_reason),
                 "average token delta %.1f%% over token_delta_max_pct %.1f%%", avg,
                 cfg->token_delta_max_pct);
    } else if (b->breaches >= cfg->consecutive_breaches) {
        snprintf(b->trip_reason, sizeof(b->trip_reason),
                 "%d requests in a row over token_delta_warn_pct %.1f%%", b->breaches,
                 cfg->token_delta_warn_pct);
    } else {
        return false;
    }
    b->tripped = true;
    b->tripped_at_ms = now_ms;
    return true;
}

static void roll(fh_budget *b, uint64_t now_ms)
{
    uint64_t m = now_ms / 60000u;
    if (m != b->minute) {
        b->minute = m;
        b->spent = 0; /* reservations still out stay: they are spend to come */
    }
}

bool fh_budget_reserve(fh_budget *b, const fh_budget_cfg *cfg, long estimate, uint64_t now_ms,
                       uint64_t *minute)
{
    roll(b, now_ms);
    *minute = b->minute;
    if (cfg->tokens_per_minute > 0 && b->spent + b->reserved + estimate > cfg->tokens_per_minute)
        return false;
    b->reserved += estimate;
    return true;
}

void fh_budget_settle(fh_budget *b, long estimate, long used, uint64_t minute, uint64_t now_ms)
{
    (void)minute;
    roll(b, now_ms);
    b->reserved -= estimate;
    if (b->reserved < 0)
        b->reserved = 0;
    /* Charged to the minute it is settled in: a call that began in the last
     * one still counts against this one, never against none. */
    b->spent += used > 0 ? used : 0;
}

long fh_budget_spend(fh_budget *b, uint64_t now_ms)
{
    roll(b, now_ms);
    return b->spent + b->reserved;
}

void fh_budget_reset(fh_budget *b)
{
    long spent = b->spent, reserved = b->reserved;
    uint64_t minute = b->minute;
    fh_budget_init(b);
    b->spent = spent; /* spend is not a fault: it stays */
    b->reserved = reserved;
    b->minute = minute;
}
