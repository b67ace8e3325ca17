/*
 * test_gates.c - SPEC section 7's gates: host/breaker.c (the state machine,
 * driven by an injected clock), host/budget.c (the tripwire, the token
 * window, the per-minute spend), host/gates.c (one gate per overlay name,
 * admission and finish as the pipeline calls them, the operator's reset,
 * the JSON that /health and the admin API serve, the baseline reference per
 * scenario type, the prompt token estimator), and 8 threads reserving spend
 * on one gate at once (run under TSan by the "concurrency" label).
 *
 * Times are plain millisecond values: nothing here reads a clock or sleeps.
 * Each test owns its fh_gates and fh_metrics; no files.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "gates.h"
#include "log.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- helpers ---------------------------------------------------------- */

/* A start time well past 0, so "0 = never" fields and minute 0 (the budget's
 * initial window) cannot pass for real values by accident. */
#define T0 1000000ull

static fh_breaker_cfg brk_cfg(int threshold, int recovery_s, int half_open)
{
    return (fh_breaker_cfg){.failure_threshold = threshold,
                            .recovery_timeout_s = recovery_s,
                            .half_open_max_calls = half_open};
}

/* SPEC 7's defaults, with tokens_per_minute given. */
static fh_budget_cfg bud_cfg(long tokens_per_minute)
{
    return (fh_budget_cfg){.hook_latency_ms = 50,
                           .token_delta_warn_pct = 12,
                           .token_delta_max_pct = 25,
                           .token_window = 20,
                           .consecutive_breaches = 3,
                           .tokens_per_minute = tokens_per_minute};
}

/* Breaker after 3 failures, 30 s to half-open, 1 probe at a time. */
static fh_gate_cfg gate_cfg(void)
{
    return (fh_gate_cfg){.breaker_enabled = true,
                         .breaker = brk_cfg(3, 30, 1),
                         .budget = bud_cfg(0),
                         .quality_threshold = 0.8};
}

static void expect_change(fh_brk_change ch, fh_brk_state from, fh_brk_state to)
{
    if (ch.from != from || ch.to != to) {
        print_message("change %s -> %s, expected %s -> %s\n", fh_brk_state_name(ch.from),
                      fh_brk_state_name(ch.to), fh_brk_state_name(from), fh_brk_state_name(to));
        fail();
    }
}

/* One overlaid request through the gate, as the pipeline makes it: admitted
 * or not; when admitted, finished with `o` (no tokens, no delta). */
static fh_reason one_request(fh_gate *gate, const fh_gate_cfg *cfg, uint64_t now, fh_outcome o)
{
    fh_gate_ticket t;
    fh_reason r = fh_gate_admit(gate, cfg, now, &t);
    if (r == FH_REASON_APPLIED) {
        assert_ptr_equal(t.gate, gate);
        fh_gate_finish(&t, cfg, o, -1, NAN, 5, NAN, now);
        assert_null(t.gate); /* finish clears the ticket */
    } else {
        assert_null(t.gate); /* refused: nothing to settle */
    }
    return r;
}

/* fh_gates_json parsed; *reasons (when asked) the parsed reasons array. */
static json_t *gates_json(fh_gates *g, uint64_t now, json_t **reasons)
{
    char *rtext = NULL;
    char *text = fh_gates_json(g, now, &rtext);
    assert_non_null(text);
    assert_non_null(rtext);
    json_error_t err;
    json_t *j = json_loads(text, 0, &err);
    if (!j) {
        print_message("fh_gates_json is not JSON (%s): %s\n", err.text, text);
        fail();
    }
    json_t *r = json_loads(rtext, 0, &err);
    if (!json_is_array(r)) {
        print_message("the reasons are not a JSON array (%s): %s\n", err.text, rtext);
        fail();
    }
    free(text);
    free(rtext);
    if (reasons)
        *reasons = r;
    else
        json_decref(r);
    return j;
}

/* j[overlay][part][key], which must exist. */
static json_t *field(json_t *j, const char *overlay, const char *part, const char *key)
{
    json_t *v = json_object_get(json_object_get(json_object_get(j, overlay), part), key);
    if (!v) {
        char *dump = json_dumps(j, JSON_COMPACT);
        print_message("no %s.%s.%s in %s\n", overlay, part, key, dump);
        free(dump);
        fail();
    }
    return v;
}

static const char *field_str(json_t *j, const char *overlay, const char *part, const char *key)
{
    json_t *v = field(j, overlay, part, key);
    assert_true(json_is_string(v));
    return json_string_value(v);
}

static json_int_t field_int(json_t *j, const char *overlay, const char *part, const char *key)
{
    json_t *v = field(j, overlay, part, key);
    assert_true(json_is_integer(v));
    return json_integer_value(v);
}

static bool has_reason(json_t *reasons, const char *want)
{
    size_t i;
    json_t *r;
    json_array_foreach(reasons, i, r)
    {
        if (json_is_string(r) && strcmp(json_string_value(r), want) == 0)
            return true;
    }
    return false;
}

/* The value of the Prometheus sample `key` (name and labels); 0 if absent. */
static double metric(fh_metrics *m, const char *key)
{
    size_t len = 0;
    char *text = fh_metrics_render(m, &len);
    assert_non_null(text);
    double v = 0;
    size_t n = strlen(key);
    for (const char *p = text; (p = strstr(p, key)) != NULL; p++)
        if ((p == text || p[-1] == '\n') && p[n] == ' ') {
            v = strtod(p + n + 1, NULL);
            break;
        }
    free(text);
    return v;
}

/* ---- breaker.c -------------------------------------------------------- */

static void test_breaker_opens_at_threshold(void **state)
{
    (void)state;
    fh_breaker_cfg cfg = brk_cfg(3, 10, 2);
    fh_breaker b;
    fh_breaker_init(&b);
    assert_int_equal(b.state, FH_BRK_CLOSED);
    assert_string_equal(b.last_reason, "");

    /* Closed: every call goes, none holds a probe slot. */
    bool probe = true;
    fh_brk_change ch;
    assert_true(fh_breaker_allow(&b, &cfg, T0, &probe, &ch));
    assert_false(probe);
    expect_change(ch, FH_BRK_CLOSED, FH_BRK_CLOSED);

    /* Two failures, then a success: the run starts over, so two more
     * failures still leave it closed. */
    expect_change(fh_breaker_failure(&b, &cfg, T0, false, "hook_error"), FH_BRK_CLOSED,
                  FH_BRK_CLOSED);
    expect_change(fh_breaker_failure(&b, &cfg, T0, false, "hook_error"), FH_BRK_CLOSED,
                  FH_BRK_CLOSED);
    expect_change(fh_breaker_success(&b, &cfg, false), FH_BRK_CLOSED, FH_BRK_CLOSED);
    assert_int_equal(b.consecutive, 0);
    expect_change(fh_breaker_failure(&b, &cfg, T0 + 1, false, "quality"), FH_BRK_CLOSED,
                  FH_BRK_CLOSED);
    expect_change(fh_breaker_failure(&b, &cfg, T0 + 2, false, "quality"), FH_BRK_CLOSED,
                  FH_BRK_CLOSED);
    assert_int_equal(b.state, FH_BRK_CLOSED);
    assert_int_equal(b.trips, 0);

    /* The third in a row opens it, once, with its reason and reopen time. */
    expect_change(fh_breaker_failure(&b, &cfg, T0 + 3, false, "overlay_rejected_upstream"),
                  FH_BRK_CLOSED, FH_BRK_OPEN);
    assert_int_equal(b.state, FH_BRK_OPEN);
    assert_int_equal(b.trips, 1);
    assert_int_equal(b.consecutive, 3);
    assert_string_equal(b.last_reason, "overlay_rejected_upstream");
    assert_int_equal(b.last_failure_ms, T0 + 3);
    assert_int_equal(b.reopen_at_ms, T0 + 3 + 10000);

    /* Open: refused up to the last millisecond before the recovery time,
     * with no transition and no probe. */
    probe = true;
    assert_false(fh_breaker_allow(&b, &cfg, T0 + 3 + 1, &probe, &ch));
    assert_false(probe);
    expect_change(ch, FH_BRK_OPEN, FH_BRK_OPEN);
    assert_false(fh_breaker_allow(&b, &cfg, T0 + 3 + 9999, &probe, &ch));
    expect_change(ch, FH_BRK_OPEN, FH_BRK_OPEN);
    assert_int_equal(b.state, FH_BRK_OPEN);

    /* Recovery time reached: the next admission turns it half-open and is
     * its first probe. */
    assert_true(fh_breaker_allow(&b, &cfg, T0 + 3 + 10000, &probe, &ch));
    assert_true(probe);
    expect_change(ch, FH_BRK_OPEN, FH_BRK_HALF_OPEN);
    assert_int_equal(b.state, FH_BRK_HALF_OPEN);
    assert_int_equal(b.trips, 1);
}

/* Open at `at` (threshold 1) and half-open at at + recovery. */
static void open_then_half_open(fh_breaker *b, const fh_breaker_cfg *cfg, uint64_t at)
{
    fh_breaker_init(b);
    expect_change(fh_breaker_failure(b, cfg, at, false, "hook_timeout"), FH_BRK_CLOSED,
                  FH_BRK_OPEN);
    bool probe = false;
    fh_brk_change ch;
    assert_true(
        fh_breaker_allow(b, cfg, at + (uint64_t)cfg->recovery_timeout_s * 1000, &probe, &ch));
    assert_true(probe);
    expect_change(ch, FH_BRK_OPEN, FH_BRK_HALF_OPEN);
}

static void test_breaker_half_open_probes(void **state)
{
    (void)state;
    fh_breaker_cfg cfg = brk_cfg(1, 5, 2);
    fh_breaker b;
    open_then_half_open(&b, &cfg, T0);
    uint64_t now = T0 + 5000;

    /* One probe is out; a second fits, a third does not. */
    bool probe = false;
    fh_brk_change ch;
    assert_true(fh_breaker_allow(&b, &cfg, now, &probe, &ch));
    assert_true(probe);
    expect_change(ch, FH_BRK_HALF_OPEN, FH_BRK_HALF_OPEN);
    probe = true;
    assert_false(fh_breaker_allow(&b, &cfg, now + 1, &probe, &ch));
    assert_false(probe);
    expect_change(ch, FH_BRK_HALF_OPEN, FH_BRK_HALF_OPEN);

    /* A probe that ended neither way gives its slot back: one more fits,
     * then it is full again. */
    fh_breaker_release(&b, true);
    assert_int_equal(b.state, FH_BRK_HALF_OPEN);
    assert_true(fh_breaker_allow(&b, &cfg, now + 2, &probe, &ch));
    assert_true(probe);
    assert_false(fh_breaker_allow(&b, &cfg, now + 3, &probe, &ch));

    /* A probe's success closes it; then calls go without probe slots. */
    expect_change(fh_breaker_success(&b, &cfg, true), FH_BRK_HALF_OPEN, FH_BRK_CLOSED);
    assert_int_equal(b.state, FH_BRK_CLOSED);
    assert_int_equal(b.consecutive, 0);
    for (int i = 0; i < 5; i++) {
        assert_true(fh_breaker_allow(&b, &cfg, now + 4, &probe, &ch));
        assert_false(probe);
    }
    assert_int_equal(b.trips, 1);
}

static void test_breaker_probe_failure_reopens(void **state)
{
    (void)state;
    fh_breaker_cfg cfg = brk_cfg(4, 20, 1);
    fh_breaker b;
    fh_breaker_init(&b);
    for (int i = 0; i < 4; i++)
        fh_breaker_failure(&b, &cfg, T0, false, "hook_error");
    assert_int_equal(b.state, FH_BRK_OPEN);
    bool probe = false;
    fh_brk_change ch;
    assert_true(fh_breaker_allow(&b, &cfg, T0 + 20000, &probe, &ch));
    assert_true(probe);

    /* One failed probe is enough (not failure_threshold of them): open
     * again, for a full recovery time from that failure. */
    uint64_t failed_at = T0 + 27000;
    expect_change(fh_breaker_failure(&b, &cfg, failed_at, true, "budget_latency"), FH_BRK_HALF_OPEN,
                  FH_BRK_OPEN);
    assert_int_equal(b.state, FH_BRK_OPEN);
    assert_int_equal(b.trips, 2);
    assert_int_equal(b.reopen_at_ms, failed_at + 20000);
    assert_string_equal(b.last_reason, "budget_latency");
    assert_false(fh_breaker_allow(&b, &cfg, failed_at + 19999, &probe, &ch));
    assert_false(probe);
    assert_true(fh_breaker_allow(&b, &cfg, failed_at + 20000, &probe, &ch));
    assert_true(probe);
    expect_change(ch, FH_BRK_OPEN, FH_BRK_HALF_OPEN);
}

static void test_breaker_late_failure_never_shortens(void **state)
{
    (void)state;
    fh_breaker_cfg cfg = brk_cfg(2, 300, 1);
    fh_breaker b;
    fh_breaker_init(&b);
    fh_breaker_failure(&b, &cfg, T0, false, "hook_error");
    expect_change(fh_breaker_failure(&b, &cfg, T0, false, "hook_error"), FH_BRK_CLOSED,
                  FH_BRK_OPEN);
    uint64_t reopen = b.reopen_at_ms;
    assert_int_equal(reopen, T0 + 300000);

    /* A call admitted before it opened fails late: no new transition, no
     * new trip, and the reopen time does not come earlier. */
    expect_change(fh_breaker_failure(&b, &cfg, T0 + 60000, false, "hook_timeout"), FH_BRK_OPEN,
                  FH_BRK_OPEN);
    assert_int_equal(b.state, FH_BRK_OPEN);
    assert_int_equal(b.trips, 1);
    assert_true(b.reopen_at_ms >= reopen);
    reopen = b.reopen_at_ms;

    /* Even when the recovery time has since been lowered (a reload), a late
     * failure must not bring the reopen time forward. */
    fh_breaker_cfg shorter = brk_cfg(2, 1, 1);
    fh_breaker_failure(&b, &shorter, T0 + 61000, false, "hook_timeout");
    assert_true(b.reopen_at_ms >= reopen);
    bool probe = false;
    fh_brk_change ch;
    assert_false(fh_breaker_allow(&b, &shorter, T0 + 62000 + 1, &probe, &ch));
    assert_false(fh_breaker_allow(&b, &shorter, reopen - 1, &probe, &ch));
    assert_int_equal(b.state, FH_BRK_OPEN);
    assert_int_equal(b.trips, 1);
    assert_string_equal(b.last_reason, "hook_timeout");
    assert_int_equal(b.last_failure_ms, T0 + 61000);
}

static void test_breaker_reason_bounded(void **state)
{
    (void)state;
    fh_breaker_cfg cfg = brk_cfg(5, 10, 1);
    fh_breaker b;
    fh_breaker_init(&b);
    char longr[200];
    memset(longr, 'x', sizeof(longr) - 1);
    longr[sizeof(longr) - 1] = '\0';
    /* A reason longer than the field is cut, never overrun. */
    fh_breaker_failure(&b, &cfg, T0, false, longr);
    assert_int_equal(strlen(b.last_reason), sizeof(b.last_reason) - 1);
    fh_breaker_failure(&b, &cfg, T0, false, "quality");
    assert_string_equal(b.last_reason, "quality");
}

/* ---- budget.c --------------------------------------------------------- */

static void test_budget_consecutive_breaches(void **state)
{
    (void)state;
    fh_budget_cfg cfg = bud_cfg(0); /* warn 12, max 25, 3 in a row, window 20 */
    fh_budget b;
    fh_budget_init(&b);

    /* Two over warn, one at exactly warn (not over: the run resets), two
     * over: no trip. The average stays well under max throughout. */
    assert_false(fh_budget_add_delta(&b, &cfg, 13, T0));
    assert_false(fh_budget_add_delta(&b, &cfg, 13, T0));
    assert_int_equal(b.breaches, 2);
    assert_false(fh_budget_add_delta(&b, &cfg, 12, T0));
    assert_int_equal(b.breaches, 0);
    assert_false(fh_budget_add_delta(&b, &cfg, 14, T0));
    assert_false(fh_budget_add_delta(&b, &cfg, 14, T0));
    assert_false(b.tripped);

    /* The third in a row trips it. */
    assert_true(fh_budget_add_delta(&b, &cfg, 14, T0 + 7));
    assert_true(b.tripped);
    assert_int_equal(b.tripped_at_ms, T0 + 7);
    assert_true(fh_budget_average(&b, &cfg) < cfg.token_delta_max_pct);
    assert_non_null(strstr(b.trip_reason, "token_delta_warn_pct"));
}

static void test_budget_window_average(void **state)
{
    (void)state;
    fh_budget_cfg cfg = bud_cfg(0);
    cfg.token_window = 4;
    cfg.consecutive_breaches = 1000; /* only the average can trip it */
    fh_budget b;
    fh_budget_init(&b);
    assert_true(fh_budget_average(&b, &cfg) == 0);

    /* Warming up: the average is of the values so far, not of 4. */
    assert_false(fh_budget_add_delta(&b, &cfg, 10, T0));
    assert_true(fh_budget_average(&b, &cfg) == 10);
    assert_true(fh_budget_add_delta(&b, &cfg, 41, T0)); /* (10+41)/2 = 25.5 > 25 */
    assert_true(b.tripped);
    assert_non_null(strstr(b.trip_reason, "token_delta_max_pct"));

    /* A full window: only the last 4 count. 0,0,0,0,100 averages 25 over
     * the last 4 (not over max); one more 4 pushes out a 0: 26. */
    fh_budget_init(&b);
    for (int i = 0; i < 4; i++)
        assert_false(fh_budget_add_delta(&b, &cfg, 0, T0));
    assert_false(fh_budget_add_delta(&b, &cfg, 100, T0));
    assert_true(fh_budget_average(&b, &cfg) == 25);
    assert_true(fh_budget_add_delta(&b, &cfg, 4, T0));
    assert_true(fh_budget_average(&b, &cfg) == 26);

    /* Old values fall out completely: after 4 zeros the average is 0. */
    for (int i = 0; i < 4; i++)
        fh_budget_add_delta(&b, &cfg, 0, T0);
    assert_true(fh_budget_average(&b, &cfg) == 0);

    /* A window of 20 after 1500 values (past the ring's capacity): the
     * average is of the newest 20 only. */
    cfg.token_window = 20;
    fh_budget_init(&b);
    for (int i = 0; i < 1500; i++)
        fh_budget_add_delta(&b, &cfg, i < 1480 ? 0 : 20, T0);
    assert_true(fh_budget_average(&b, &cfg) == 20);
}

static void test_budget_stays_tripped_until_reset(void **state)
{
    (void)state;
    fh_budget_cfg cfg = bud_cfg(1000);
    cfg.consecutive_breaches = 2;
    fh_budget b;
    fh_budget_init(&b);
    assert_false(fh_budget_add_delta(&b, &cfg, 20, T0));
    assert_true(fh_budget_add_delta(&b, &cfg, 20, T0 + 1));
    char reason[sizeof(b.trip_reason)];
    memcpy(reason, b.trip_reason, sizeof(reason));

    /* Tripped: further values, good or bad, neither report a new trip nor
     * clear it, and the first trip's time and reason stay. */
    for (int i = 0; i < 50; i++) {
        assert_false(fh_budget_add_delta(&b, &cfg, i % 2 ? 500 : 0, T0 + 2 + (uint64_t)i));
        assert_true(b.tripped);
    }
    assert_int_equal(b.tripped_at_ms, T0 + 1);
    assert_string_equal(b.trip_reason, reason);

    /* The operator's reset: cleared, window empty, spend kept. */
    uint64_t minute;
    assert_true(fh_budget_reserve(&b, &cfg, 300, T0, &minute));
    fh_budget_reset(&b);
    assert_false(b.tripped);
    assert_int_equal(b.breaches, 0);
    assert_true(fh_budget_average(&b, &cfg) == 0);
    assert_int_equal(fh_budget_spend(&b, T0), 300);

    /* And it can trip again, reporting it again. */
    assert_false(fh_budget_add_delta(&b, &cfg, 20, T0 + 100));
    assert_true(fh_budget_add_delta(&b, &cfg, 20, T0 + 101));
    assert_int_equal(b.tripped_at_ms, T0 + 101);
}

static void test_budget_spend(void **state)
{
    (void)state;
    fh_budget_cfg cfg = bud_cfg(100);
    fh_budget b;
    fh_budget_init(&b);
    uint64_t now = 5 * 60000ull + 123, m1, m2, m3;
    assert_int_equal(fh_budget_spend(&b, now), 0);

    /* Reservations up to exactly the limit; one past it is refused and
     * leaves nothing reserved. */
    assert_true(fh_budget_reserve(&b, &cfg, 60, now, &m1));
    assert_int_equal(m1, 5);
    assert_false(fh_budget_reserve(&b, &cfg, 41, now, &m2));
    assert_int_equal(fh_budget_spend(&b, now), 60);
    assert_true(fh_budget_reserve(&b, &cfg, 40, now, &m2));
    assert_int_equal(fh_budget_spend(&b, now), 100);
    assert_false(fh_budget_reserve(&b, &cfg, 1, now, &m3));
    assert_int_equal(fh_budget_spend(&b, now), 100);

    /* Settling replaces the estimate by what was used, either way. */
    fh_budget_settle(&b, 60, 25, m1, now + 1);
    assert_int_equal(fh_budget_spend(&b, now + 1), 65);
    assert_true(fh_budget_reserve(&b, &cfg, 35, now + 2, &m3));
    assert_false(fh_budget_reserve(&b, &cfg, 1, now + 2, &m1));
    fh_budget_settle(&b, 40, 0, m2, now + 3); /* never reached the upstream */
    assert_int_equal(fh_budget_spend(&b, now + 3), 60);
    fh_budget_settle(&b, 35, 50, m3, now + 4); /* used more than estimated */
    assert_int_equal(fh_budget_spend(&b, now + 4), 75);

    /* Same minute to its last millisecond; the next minute starts empty. */
    uint64_t last = 6 * 60000ull - 1;
    assert_int_equal(fh_budget_spend(&b, last), 75);
    assert_false(fh_budget_reserve(&b, &cfg, 26, last, &m1));
    assert_int_equal(fh_budget_spend(&b, last + 1), 0);
    assert_true(fh_budget_reserve(&b, &cfg, 100, last + 1, &m1));
    assert_int_equal(m1, 6);
    assert_false(fh_budget_reserve(&b, &cfg, 1, last + 2, &m2));
    fh_budget_settle(&b, 100, 100, m1, last + 3);
    assert_int_equal(fh_budget_spend(&b, last + 3), 100);

    /* 0 = no limit. */
    fh_budget_cfg unlimited = bud_cfg(0);
    fh_budget u;
    fh_budget_init(&u);
    for (int i = 0; i < 100; i++)
        assert_true(fh_budget_reserve(&u, &unlimited, 1000000, now, &m1));
    assert_int_equal(fh_budget_spend(&u, now), 100000000L);
}

/* ---- gates.c ---------------------------------------------------------- */

static void test_gates_get(void **state)
{
    (void)state;
    fh_metrics *m = fh_metrics_new(1000);
    fh_gates *g = fh_gates_new(m);
    assert_non_null(g);
    fh_gate *a = fh_gates_get(g, "alpha"), *b = fh_gates_get(g, "beta");
    assert_non_null(a);
    assert_non_null(b);
    assert_ptr_not_equal(a, b);
    assert_ptr_equal(fh_gates_get(g, "alpha"), a);
    assert_ptr_equal(fh_gates_get(g, "beta"), b);

    /* A second table is separate. */
    fh_gates *g2 = fh_gates_new(m);
    assert_ptr_not_equal(fh_gates_get(g2, "alpha"), a);
    fh_gates_free(g2);
    fh_gates_free(g);
    fh_gates_free(NULL);
    fh_metrics_free(m);
}

static void test_gate_breaker_opens(void **state)
{
    (void)state;
    fh_metrics *m = fh_metrics_new(1000);
    fh_gates *g = fh_gates_new(m);
    fh_gate *gate = fh_gates_get(g, "ov"), *other = fh_gates_get(g, "other");
    fh_gate_cfg cfg = gate_cfg(); /* 3 failures, 30 s, 1 probe */

    for (int i = 0; i < 3; i++)
        assert_int_equal(one_request(gate, &cfg, T0 + (uint64_t)i, FH_OUT_REJECTED),
                         FH_REASON_APPLIED);
    assert_int_equal(one_request(gate, &cfg, T0 + 10, FH_OUT_SUCCESS), FH_REASON_BREAKER_OPEN);
    /* Per overlay: the other one is unaffected. */
    assert_int_equal(one_request(other, &cfg, T0 + 10, FH_OUT_SUCCESS), FH_REASON_APPLIED);

    /* The transition was counted once. */
    assert_true(metric(m, "fusion_circuit_breaker_events_total{overlay=\"ov\",result=\"open\"}") ==
                1);

    /* Visible in the JSON and among the reasons for "degraded". */
    json_t *reasons;
    json_t *j = gates_json(g, T0 + 1002, &reasons);
    assert_string_equal(field_str(j, "ov", "breaker", "state"), "open");
    assert_string_equal(field_str(j, "other", "breaker", "state"), "closed");
    assert_int_equal(field_int(j, "ov", "breaker", "consecutive_failures"), 3);
    assert_int_equal(field_int(j, "ov", "breaker", "trips"), 1);
    assert_int_equal(field_int(j, "ov", "breaker", "reopens_in_ms"), 30000 - 1000);
    assert_int_equal(field_int(j, "ov", "breaker", "last_failure_ms_ago"), 1000);
    assert_string_equal(field_str(j, "ov", "breaker", "last_failure_reason"),
                        "overlay_rejected_upstream");
    assert_true(has_reason(reasons, "breaker_open:ov"));
    assert_false(has_reason(reasons, "breaker_open:other"));
    json_decref(j);
    json_decref(reasons);

    /* Still refused just before the recovery time; at it, one probe goes
     * (half_open_max_calls 1), the next is refused. */
    assert_int_equal(one_request(gate, &cfg, T0 + 2 + 29999, FH_OUT_SUCCESS),
                     FH_REASON_BREAKER_OPEN);
    fh_gate_ticket probe, second;
    assert_int_equal(fh_gate_admit(gate, &cfg, T0 + 2 + 30000, &probe), FH_REASON_APPLIED);
    assert_true(probe.probe);
    assert_int_equal(fh_gate_admit(gate, &cfg, T0 + 2 + 30001, &second), FH_REASON_BREAKER_OPEN);
    j = gates_json(g, T0 + 2 + 30001, &reasons);
    assert_string_equal(field_str(j, "ov", "breaker", "state"), "half_open");
    assert_false(has_reason(reasons, "breaker_open:ov"));
    json_decref(j);
    json_decref(reasons);

    /* A neutral end gives the probe slot back; a probe's success closes it. */
    fh_gate_finish(&probe, &cfg, FH_OUT_NEUTRAL, -1, NAN, 5, NAN, T0 + 2 + 30002);
    assert_int_equal(fh_gate_admit(gate, &cfg, T0 + 2 + 30003, &probe), FH_REASON_APPLIED);
    assert_true(probe.probe);
    fh_gate_finish(&probe, &cfg, FH_OUT_SUCCESS, -1, NAN, 5, NAN, T0 + 2 + 30004);
    j = gates_json(g, T0 + 2 + 30005, &reasons);
    assert_string_equal(field_str(j, "ov", "breaker", "state"), "closed");
    assert_int_equal(json_array_size(reasons), 0);
    json_decref(j);
    json_decref(reasons);
    assert_int_equal(one_request(gate, &cfg, T0 + 2 + 30006, FH_OUT_SUCCESS), FH_REASON_APPLIED);
    assert_true(metric(m, "fusion_circuit_breaker_events_total{overlay=\"ov\",result=\"open\"}") ==
                1);

    fh_gates_free(g);
    fh_metrics_free(m);
}

/* A probe admitted in one half-open period that ends after the breaker has
 * reopened and gone half-open again belongs to no current slot: its success
 * must not close the breaker (the current period's own probe decides). */
static void test_gate_stale_probe(void **state)
{
    (void)state;
    fh_metrics *m = fh_metrics_new(1000);
    fh_gates *g = fh_gates_new(m);
    fh_gate *gate = fh_gates_get(g, "ov");
    fh_gate_cfg cfg = gate_cfg();
    cfg.breaker.half_open_max_calls = 2;
    for (int i = 0; i < 3; i++)
        one_request(gate, &cfg, T0 + (uint64_t)i, FH_OUT_REJECTED);
    fh_gate_ticket a, b, c;
    assert_int_equal(fh_gate_admit(gate, &cfg, T0 + 30002, &a), FH_REASON_APPLIED);
    assert_int_equal(fh_gate_admit(gate, &cfg, T0 + 30002, &b), FH_REASON_APPLIED);
    assert_true(a.probe && b.probe);
    fh_gate_finish(&b, &cfg, FH_OUT_REJECTED, -1, NAN, 5, NAN, T0 + 30003); /* reopens */
    assert_int_equal(fh_gate_admit(gate, &cfg, T0 + 60003, &c), FH_REASON_APPLIED);
    assert_true(c.probe); /* a new half-open period */
    fh_gate_finish(&a, &cfg, FH_OUT_SUCCESS, -1, NAN, 5, NAN, T0 + 60004); /* stale */
    char *text = fh_gates_json(g, T0 + 60005, NULL);
    assert_non_null(strstr(text, "\"state\":\"half_open\""));
    free(text);
    fh_gate_finish(&c, &cfg, FH_OUT_SUCCESS, -1, NAN, 5, NAN, T0 + 60006);
    text = fh_gates_json(g, T0 + 60007, NULL);
    assert_non_null(strstr(text, "\"state\":\"closed\""));
    free(text);
    fh_gates_free(g);
    fh_metrics_free(m);
}

static void test_gate_neutral_not_failure(void **state)
{
    (void)state;
    fh_metrics *m = fh_metrics_new(1000);
    fh_gates *g = fh_gates_new(m);
    fh_gate *gate = fh_gates_get(g, "ov");
    fh_gate_cfg cfg = gate_cfg();
    cfg.breaker.failure_threshold = 2;
    for (int i = 0; i < 20; i++)
        assert_int_equal(one_request(gate, &cfg, T0 + (uint64_t)i, FH_OUT_NEUTRAL),
                         FH_REASON_APPLIED);
    json_t *j = gates_json(g, T0 + 20, NULL);
    assert_string_equal(field_str(j, "ov", "breaker", "state"), "closed");
    assert_int_equal(field_int(j, "ov", "breaker", "consecutive_failures"), 0);
    assert_int_equal(field_int(j, "ov", "runbook", "failures"), 0);
    assert_int_equal(field_int(j, "ov", "runbook", "admitted"), 20);
    json_decref(j);

    /* Every other outcome but success is a failure. */
    const fh_outcome failing[] = {FH_OUT_HOOK_ERROR, FH_OUT_HOOK_TIMEOUT, FH_OUT_LATENCY,
                                  FH_OUT_REJECTED, FH_OUT_QUALITY};
    for (size_t i = 0; i < sizeof(failing) / sizeof(failing[0]); i++) {
        fh_gates_reset(g, "ov");
        assert_int_equal(one_request(gate, &cfg, T0 + 100, failing[i]), FH_REASON_APPLIED);
        assert_int_equal(one_request(gate, &cfg, T0 + 101, failing[i]), FH_REASON_APPLIED);
        assert_int_equal(one_request(gate, &cfg, T0 + 102, FH_OUT_SUCCESS), FH_REASON_BREAKER_OPEN);
    }
    fh_gates_free(g);
    fh_metrics_free(m);
}

static void test_gate_breaker_disabled(void **state)
{
    (void)state;
    fh_metrics *m = fh_metrics_new(1000);
    fh_gates *g = fh_gates_new(m);
    fh_gate *gate = fh_gates_get(g, "ov");
    fh_gate_cfg cfg = gate_cfg();
    cfg.breaker_enabled = false;
    for (int i = 0; i < 50; i++)
        assert_int_equal(one_request(gate, &cfg, T0 + (uint64_t)i, FH_OUT_REJECTED),
                         FH_REASON_APPLIED);
    json_t *reasons;
    json_t *j = gates_json(g, T0 + 50, &reasons);
    assert_string_equal(field_str(j, "ov", "breaker", "state"), "closed");
    assert_false(json_is_true(field(j, "ov", "breaker", "enabled")));
    assert_false(has_reason(reasons, "breaker_open:ov"));
    json_decref(j);
    json_decref(reasons);
    fh_gates_free(g);
    fh_metrics_free(m);
}

static void test_gate_budget_tripped(void **state)
{
    (void)state;
    fh_metrics *m = fh_metrics_new(1000);
    fh_gates *g = fh_gates_new(m);
    fh_gate *gate = fh_gates_get(g, "ov");
    fh_gate_cfg cfg = gate_cfg();

    /* Deltas over warn but under max: the third in a row trips it. */
    for (int i = 0; i < 3; i++) {
        fh_gate_ticket t;
        assert_int_equal(fh_gate_admit(gate, &cfg, T0, &t), FH_REASON_APPLIED);
        fh_gate_finish(&t, &cfg, FH_OUT_SUCCESS, 100, 15.0, 5, 0.9, T0);
    }
    assert_int_equal(one_request(gate, &cfg, T0 + 1, FH_OUT_SUCCESS), FH_REASON_BUDGET_TOKENS);
    assert_int_equal(one_request(gate, &cfg, T0 + 600000, FH_OUT_SUCCESS),
                     FH_REASON_BUDGET_TOKENS); /* no time heals it */

    json_t *reasons;
    json_t *j = gates_json(g, T0 + 2, &reasons);
    assert_true(json_is_true(field(j, "ov", "gate", "tripped")));
    assert_non_null(field_str(j, "ov", "gate", "trip_reason"));
    assert_int_equal(field_int(j, "ov", "gate", "breaches_in_a_row"), 3);
    assert_true(has_reason(reasons, "budget_tripped:ov"));
    /* The breaker is not involved. */
    assert_string_equal(field_str(j, "ov", "breaker", "state"), "closed");
    json_decref(j);
    json_decref(reasons);

    /* The operator's reset clears it. */
    assert_int_equal(fh_gates_reset(g, "ov"), 0);
    assert_int_equal(one_request(gate, &cfg, T0 + 3, FH_OUT_SUCCESS), FH_REASON_APPLIED);
    j = gates_json(g, T0 + 4, &reasons);
    assert_false(json_is_true(field(j, "ov", "gate", "tripped")));
    assert_false(has_reason(reasons, "budget_tripped:ov"));
    json_decref(j);
    json_decref(reasons);
    fh_gates_free(g);
    fh_metrics_free(m);
}

static void test_gates_reset(void **state)
{
    (void)state;
    fh_metrics *m = fh_metrics_new(1000);
    fh_gates *g = fh_gates_new(m);
    assert_int_equal(fh_gates_reset(g, "ov"), -1); /* not made yet */
    fh_gate *gate = fh_gates_get(g, "ov");
    fh_gate_cfg cfg = gate_cfg();
    for (int i = 0; i < 3; i++)
        one_request(gate, &cfg, T0, FH_OUT_HOOK_ERROR);
    assert_int_equal(one_request(gate, &cfg, T0 + 1, FH_OUT_SUCCESS), FH_REASON_BREAKER_OPEN);

    assert_int_equal(fh_gates_reset(g, "ov"), 0);
    assert_int_equal(fh_gates_reset(g, "unknown"), -1);
    json_t *reasons;
    json_t *j = gates_json(g, T0 + 2, &reasons);
    assert_string_equal(field_str(j, "ov", "breaker", "state"), "closed");
    assert_int_equal(field_int(j, "ov", "breaker", "consecutive_failures"), 0);
    assert_int_equal(json_array_size(reasons), 0);
    json_decref(j);
    json_decref(reasons);

    /* Admitted at once (well before the recovery time), and the count of
     * failures starts over: two more do not open it. */
    assert_int_equal(one_request(gate, &cfg, T0 + 3, FH_OUT_HOOK_ERROR), FH_REASON_APPLIED);
    assert_int_equal(one_request(gate, &cfg, T0 + 4, FH_OUT_HOOK_ERROR), FH_REASON_APPLIED);
    assert_int_equal(one_request(gate, &cfg, T0 + 5, FH_OUT_SUCCESS), FH_REASON_APPLIED);
    assert_true(
        metric(m, "fusion_circuit_breaker_events_total{overlay=\"ov\",result=\"closed\"}") == 1);
    fh_gates_free(g);
    fh_metrics_free(m);
}

static void test_gate_spend(void **state)
{
    (void)state;
    fh_metrics *m = fh_metrics_new(1000);
    fh_gates *g = fh_gates_new(m);
    fh_gate *gate = fh_gates_get(g, "ov");
    fh_gate_cfg cfg = gate_cfg();
    cfg.budget.tokens_per_minute = 100;
    uint64_t now = 7 * 60000ull;
    fh_gate_ticket a, b, c;
    assert_int_equal(fh_gate_admit(gate, &cfg, now, &a), FH_REASON_APPLIED);
    assert_int_equal(fh_gate_admit(gate, &cfg, now, &b), FH_REASON_APPLIED);
    assert_int_equal(fh_gate_admit(gate, &cfg, now, &c), FH_REASON_APPLIED);
    assert_true(fh_gate_reserve(&a, &cfg, 40, now));
    assert_true(fh_gate_reserve(&b, &cfg, 50, now));
    assert_false(fh_gate_reserve(&c, &cfg, 11, now)); /* 101 > 100 */
    fh_gate_finish(&c, &cfg, FH_OUT_NEUTRAL, 0, NAN, NAN, NAN, now);

    json_t *j = gates_json(g, now, NULL);
    assert_int_equal(field_int(j, "ov", "gate", "spend_this_minute"), 90);
    assert_int_equal(field_int(j, "ov", "gate", "tokens_per_minute"), 100);
    json_decref(j);

    /* Unknown usage (-1) charges the reservation; 0 charges nothing. */
    fh_gate_finish(&a, &cfg, FH_OUT_SUCCESS, -1, NAN, NAN, NAN, now + 1);
    fh_gate_finish(&b, &cfg, FH_OUT_NEUTRAL, 0, NAN, NAN, NAN, now + 1);
    j = gates_json(g, now + 2, NULL);
    assert_int_equal(field_int(j, "ov", "gate", "spend_this_minute"), 40);
    json_decref(j);

    /* An unadmitted ticket reserves nothing and finishes as a no-op. */
    fh_gate_ticket none = {0};
    assert_true(fh_gate_reserve(&none, &cfg, 1000, now));
    fh_gate_finish(&none, &cfg, FH_OUT_REJECTED, 1000, NAN, NAN, NAN, now);
    j = gates_json(g, now + 3, NULL);
    assert_int_equal(field_int(j, "ov", "gate", "spend_this_minute"), 40);
    assert_int_equal(field_int(j, "ov", "breaker", "consecutive_failures"), 0);
    json_decref(j);
    fh_gates_free(g);
    fh_metrics_free(m);
}

static void test_baseline_reference(void **state)
{
    (void)state;
    fh_metrics *m = fh_metrics_new(1000);
    fh_gates *g = fh_gates_new(m);
    assert_int_equal(fh_gates_baseline_ref(g, "refund"), -1);

    /* 19 samples: still -1. */
    for (long i = 1; i <= 19; i++) {
        fh_gates_baseline_add(g, "refund", i * 10);
        assert_int_equal(fh_gates_baseline_ref(g, "refund"), -1);
    }
    /* 20 (10..200): a median, between the two middle values. */
    fh_gates_baseline_add(g, "refund", 200);
    long r = fh_gates_baseline_ref(g, "refund");
    assert_in_range(r, 100, 110);
    /* 21 (10..210): exactly the middle one. */
    fh_gates_baseline_add(g, "refund", 210);
    assert_int_equal(fh_gates_baseline_ref(g, "refund"), 110);

    /* 100 more: 49 x 9, 2 x 7, 49 x 5, so the last 100 have median 7 (the
     * middle two are both 7). Were the old samples kept, or the first 100
     * used, the median would be 9. */
    for (int i = 0; i < 49; i++)
        fh_gates_baseline_add(g, "refund", 9);
    fh_gates_baseline_add(g, "refund", 7);
    fh_gates_baseline_add(g, "refund", 7);
    for (int i = 0; i < 49; i++)
        fh_gates_baseline_add(g, "refund", 5);
    assert_int_equal(fh_gates_baseline_ref(g, "refund"), 7);
    /* 60 more of 1000 push out the 9s, the 7s and 9 of the 5s: the last
     * 100 are 40 x 5 and 60 x 1000, median 1000. */
    for (int i = 0; i < 60; i++)
        fh_gates_baseline_add(g, "refund", 1000);
    assert_int_equal(fh_gates_baseline_ref(g, "refund"), 1000);

    /* Types are independent: another type has its own count and values. */
    assert_int_equal(fh_gates_baseline_ref(g, "lot_switch"), -1);
    for (int i = 0; i < 19; i++)
        fh_gates_baseline_add(g, "lot_switch", 300);
    assert_int_equal(fh_gates_baseline_ref(g, "lot_switch"), -1);
    fh_gates_baseline_add(g, "lot_switch", 300);
    assert_int_equal(fh_gates_baseline_ref(g, "lot_switch"), 300);
    assert_int_equal(fh_gates_baseline_ref(g, "refund"), 1000);
    fh_gates_free(g);
    fh_metrics_free(m);
}

/* ---- spend from many threads ------------------------------------------ */

#define THREADS  8
#define TRIES    2000
#define LIMIT    10000
#define ESTIMATE 7

typedef struct spend_run {
    fh_gates *g;
    fh_gate_cfg cfg;
    uint64_t now;
    pthread_barrier_t start;
    fh_gate *seen[THREADS];
    atomic_int next_id;
    atomic_long successes, refused_admit, refused_reserve, json_over;
    atomic_bool done;
} spend_run;

static void *spender(void *arg)
{
    spend_run *r = arg;
    int id = atomic_fetch_add(&r->next_id, 1);
    pthread_barrier_wait(&r->start);
    /* All threads look the gate up at once: the first use makes it. */
    fh_gate *gate = fh_gates_get(r->g, "shared");
    r->seen[id] = gate;
    if (!gate)
        return NULL;
    for (int i = 0; i < TRIES; i++) {
        fh_gate_ticket t;
        if (fh_gate_admit(gate, &r->cfg, r->now, &t) != FH_REASON_APPLIED) {
            atomic_fetch_add(&r->refused_admit, 1);
            continue;
        }
        if (fh_gate_reserve(&t, &r->cfg, ESTIMATE, r->now)) {
            atomic_fetch_add(&r->successes, 1);
            fh_gate_finish(&t, &r->cfg, FH_OUT_SUCCESS, ESTIMATE, NAN, 1, NAN, r->now);
        } else {
            atomic_fetch_add(&r->refused_reserve, 1);
            fh_gate_finish(&t, &r->cfg, FH_OUT_NEUTRAL, 0, NAN, NAN, NAN, r->now);
        }
    }
    return NULL;
}

/* Reads the JSON while the spenders run: the spend is never seen past the
 * limit, even mid-run. */
static void *watcher(void *arg)
{
    spend_run *r = arg;
    pthread_barrier_wait(&r->start);
    while (!atomic_load(&r->done)) {
        char *text = fh_gates_json(r->g, r->now, NULL);
        json_t *j = text ? json_loads(text, 0, NULL) : NULL;
        json_t *s = json_object_get(json_object_get(json_object_get(j, "shared"), "gate"),
                                    "spend_this_minute");
        if (s && json_integer_value(s) > LIMIT)
            atomic_fetch_add(&r->json_over, 1);
        json_decref(j);
        free(text);
    }
    return NULL;
}

static void test_concurrent_spend(void **state)
{
    (void)state;
    static spend_run r; /* large enough to keep off the stack */
    memset(&r, 0, sizeof(r));
    fh_metrics *m = fh_metrics_new(1000);
    r.g = fh_gates_new(m);
    r.cfg = gate_cfg();
    r.cfg.budget.tokens_per_minute = LIMIT;
    r.now = 42 * 60000ull + 30000; /* one minute throughout */
    atomic_init(&r.next_id, 0);
    atomic_init(&r.successes, 0);
    atomic_init(&r.refused_admit, 0);
    atomic_init(&r.refused_reserve, 0);
    atomic_init(&r.json_over, 0);
    atomic_init(&r.done, false);
    assert_int_equal(pthread_barrier_init(&r.start, NULL, THREADS + 1), 0);

    pthread_t th[THREADS], w;
    assert_int_equal(pthread_create(&w, NULL, watcher, &r), 0);
    for (int i = 0; i < THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, spender, &r), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(th[i], NULL);
    atomic_store(&r.done, true);
    pthread_join(w, NULL);
    pthread_barrier_destroy(&r.start);

    for (int i = 0; i < THREADS; i++) {
        assert_non_null(r.seen[i]);
        assert_ptr_equal(r.seen[i], r.seen[0]);
    }
    long ok = atomic_load(&r.successes);
    assert_int_equal(atomic_load(&r.refused_admit), 0);
    assert_int_equal(ok + atomic_load(&r.refused_reserve), (long)THREADS * TRIES);
    /* Never past the limit... */
    assert_true(ok * ESTIMATE <= LIMIT);
    assert_int_equal(atomic_load(&r.json_over), 0);
    /* ...and not short of it either: each settle replaces 7 reserved by 7
     * used, so spent + reserved only grows, by 7 per success, and a refusal
     * means it is within 7 of the limit. With 16000 tries, far more than
     * the limit allows, the total ends at the largest multiple of 7 that
     * fits, whatever the interleaving. */
    assert_int_equal(ok, LIMIT / ESTIMATE);

    json_t *j = gates_json(r.g, r.now, NULL);
    assert_int_equal(field_int(j, "shared", "gate", "spend_this_minute"), ok * ESTIMATE);
    assert_int_equal(field_int(j, "shared", "runbook", "admitted"), (long)THREADS * TRIES);
    assert_string_equal(field_str(j, "shared", "breaker", "state"), "closed");
    json_decref(j);
    fh_gates_free(r.g);
    fh_metrics_free(m);
}

/* ---- the estimator ---------------------------------------------------- */

static long estimate_of(const char *messages_json)
{
    json_error_t err;
    json_t *msgs = json_loads(messages_json, 0, &err);
    if (!msgs) {
        print_message("bad test JSON (%s): %s\n", err.text, messages_json);
        fail();
    }
    long n = fh_estimate_prompt_tokens(msgs);
    json_decref(msgs);
    return n;
}

static void test_estimate_prompt_tokens(void **state)
{
    (void)state;
    /* ceil(bytes / 4) + 4 per message. */
    assert_int_equal(estimate_of("[]"), 0);
    assert_int_equal(estimate_of("[{\"role\":\"user\",\"content\":\"\"}]"), 4);
    assert_int_equal(estimate_of("[{\"role\":\"user\",\"content\":\"abcd\"}]"), 1 + 4);
    assert_int_equal(estimate_of("[{\"role\":\"user\",\"content\":\"abcde\"}]"), 2 + 4);
    /* Bytes, not characters: 3 x U+00E9 is 6 bytes. */
    assert_int_equal(estimate_of("[{\"role\":\"user\",\"content\":\"\\u00e9\\u00e9\\u00e9\"}]"),
                     2 + 4);
    /* Array content: the text parts' bytes together (8 + 1 = 9), other
     * parts add nothing. */
    assert_int_equal(estimate_of("[{\"role\":\"user\",\"content\":["
                                 "{\"type\":\"text\",\"text\":\"abcdefgh\"},"
                                 "{\"type\":\"image_url\",\"image_url\":{\"url\":\"http://x/y\"}},"
                                 "{\"type\":\"text\",\"text\":\"i\"}]}]"),
                     3 + 4);
    assert_int_equal(estimate_of("[{\"role\":\"user\",\"content\":[]}]"), 4);
    /* No content at all (a tool call): the per-message 4 only. */
    assert_int_equal(estimate_of("[{\"role\":\"assistant\",\"content\":null}]"), 4);
    /* Messages add up: 13 bytes, 0 bytes, 102 bytes. */
    assert_int_equal(estimate_of("[{\"role\":\"system\",\"content\":\"You are a bot\"},"
                                 "{\"role\":\"user\",\"content\":\"\"},"
                                 "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":"
                                 "\"0123456789012345678901234567890123456789"
                                 "0123456789012345678901234567890123456789"
                                 "0123456789012345678901\"}]}]"),
                     (4 + 4) + (0 + 4) + (26 + 4));
}

int main(void)
{
    fh_log_set_level(FH_LOG_ERROR); /* the transitions and trips are expected */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_breaker_opens_at_threshold),
        cmocka_unit_test(test_breaker_half_open_probes),
        cmocka_unit_test(test_breaker_probe_failure_reopens),
        cmocka_unit_test(test_breaker_late_failure_never_shortens),
        cmocka_unit_test(test_breaker_reason_bounded),
        cmocka_unit_test(test_budget_consecutive_breaches),
        cmocka_unit_test(test_budget_window_average),
        cmocka_unit_test(test_budget_stays_tripped_until_reset),
        cmocka_unit_test(test_budget_spend),
        cmocka_unit_test(test_gates_get),
        cmocka_unit_test(test_gate_breaker_opens),
        cmocka_unit_test(test_gate_stale_probe),
        cmocka_unit_test(test_gate_neutral_not_failure),
        cmocka_unit_test(test_gate_breaker_disabled),
        cmocka_unit_test(test_gate_budget_tripped),
        cmocka_unit_test(test_gates_reset),
        cmocka_unit_test(test_gate_spend),
        cmocka_unit_test(test_baseline_reference),
        cmocka_unit_test(test_concurrent_spend),
        cmocka_unit_test(test_estimate_prompt_tokens),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
