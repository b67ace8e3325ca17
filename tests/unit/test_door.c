/*
 * test_door.c - the door into plugin code (host/door.c) and the worker loop
 * it hands off (host/worker.c): attribution and timing, control calls past
 * their deadline, a worker call detached by the monitor that comes back in
 * time, one abandoned at its deadline, and a stop with a call still hung.
 * Run under TSan by .ci/run (label concurrency): the hand-offs are exactly
 * what a data race would break.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "door.h"
#include "log.h"
#include "util.h"
#include "worker.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

/* ---- a plugin whose apply() blocks until released ------------------------------ */

static atomic_int gate;       /* apply() returns once this is non-zero */
static atomic_int calls;      /* apply() calls that started */
static atomic_int abandoned;  /* abandon callbacks run */
static char seen_overlay[80]; /* the attribution apply() saw */

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int blocking_apply(void *state, fusion_request *req, const fusion_host_api *host)
{
    (void)state, (void)req, (void)host;
    const char *who = fh_log_current_overlay();
    snprintf(seen_overlay, sizeof(seen_overlay), "%s", who ? who : "");
    atomic_fetch_add(&calls, 1);
    while (!atomic_load(&gate))
        sleep_ms(1);
    return 7;
}

static fusion_overlay_descriptor desc = {.name = "blocker", .apply = blocking_apply};

static void on_abandon(fh_hook_call *c)
{
    (void)c;
    atomic_fetch_add(&abandoned, 1);
}

static void prepare(fh_hook_call *c)
{
    memset(c, 0, sizeof(*c));
    c->kind = FH_HOOK_APPLY;
    snprintf(c->who, sizeof(c->who), "blocker");
    c->desc = &desc;
    c->abandon = on_abandon;
}

static int reset(void **state)
{
    (void)state;
    atomic_store(&gate, 0);
    atomic_store(&calls, 0);
    atomic_store(&abandoned, 0);
    seen_overlay[0] = '\0';
    return 0;
}

/* Waits up to ms for *v to reach want. */
static int wait_for(atomic_int *v, int want, int ms)
{
    for (int i = 0; i < ms && atomic_load(v) < want; i++)
        sleep_ms(1);
    return atomic_load(v) >= want;
}

/* ---- control calls -------------------------------------------------------------- */

static void control_call_returns(void **state)
{
    (void)state;
    atomic_store(&gate, 1);
    fh_hook_call c;
    prepare(&c);
    assert_int_equal(fh_door_call(&c, 1000), FH_DOOR_OK);
    assert_int_equal(c.rc, 7);
    assert_string_equal(seen_overlay, "blocker"); /* attributed while it ran */
    assert_null(fh_log_current_overlay());        /* and not after */
    /* Without a deadline: inline, attributed and timed all the same. */
    prepare(&c);
    assert_int_equal(fh_door_call(&c, 0), FH_DOOR_OK);
    assert_int_equal(c.rc, 7);
}

static void control_call_abandoned(void **state)
{
    (void)state;
    fh_hook_call c;
    prepare(&c);
    uint64_t t0 = fh_now_ms();
    assert_int_equal(fh_door_call(&c, 50), FH_DOOR_TIMEOUT);
    uint64_t took = fh_now_ms() - t0;
    assert_true(took >= 50 && took < 1000);
    assert_int_equal(fh_door_stuck_threads(), 1);
    assert_int_equal(atomic_load(&abandoned), 0);
    atomic_store(&gate, 1); /* the plugin returns at last: its thread cleans up */
    assert_true(wait_for(&abandoned, 1, 2000));
    for (int i = 0; i < 2000 && fh_door_stuck_threads() > 0; i++)
        sleep_ms(1);
    assert_int_equal(fh_door_stuck_threads(), 0);
}

/* ---- worker calls ------------------------------------------------------------------ */

typedef struct fixture {
    fh_worker *w;
    atomic_int started; /* the turn made its call */
    atomic_int resumed; /* frame_fn ran */
    atomic_int timed_out;
    atomic_int rc;
    atomic_int pings; /* closures run on the worker */
    atomic_int after; /* turns run after the hand-off */
    pthread_t first_runner;
    atomic_int other_runner; /* a turn ran on another thread */
} fixture;

static fixture fx;

static int turn(fh_worker *w, void *ud)
{
    (void)ud;
    if (atomic_load(&fx.started)) {
        if (!pthread_equal(pthread_self(), fx.first_runner))
            atomic_store(&fx.other_runner, 1);
        atomic_fetch_add(&fx.after, 1);
        return 5;
    }
    fx.first_runner = pthread_self();
    atomic_store(&fx.started, 1);
    fh_door_frame *f = fh_worker_frame(w);
    prepare(&f->call);
    f->ctx = &fx;
    if (fh_door_run(f) == FH_DOOR_DETACHED)
        return FH_TURN_LEFT; /* this thread is not the worker's any more */
    atomic_store(&fx.rc, f->call.rc);
    return 5;
}

static void frame_fn(fh_worker *w, fh_door_frame *f, bool timed_out)
{
    (void)w;
    assert_ptr_equal(f->ctx, &fx);
    atomic_store(&fx.timed_out, timed_out);
    if (!timed_out)
        atomic_store(&fx.rc, f->call.rc);
    atomic_fetch_add(&fx.resumed, 1);
}

static void ping(fh_worker *w, void *ud)
{
    (void)w, (void)ud;
    atomic_fetch_add(&fx.pings, 1);
}

static void start_worker(int deadline_ms)
{
    memset(&fx, 0, sizeof(fx));
    char err[128];
    fx.w = fh_worker_new(0, err, sizeof(err));
    assert_non_null(fx.w);
    assert_int_equal(fh_worker_add_turn(fx.w, turn, NULL), 0);
    fh_worker_set_frames(fx.w, (uint64_t)deadline_ms * 1000000u, frame_fn);
    assert_int_equal(fh_worker_start(fx.w, "t-worker"), 0);
    assert_true(wait_for(&fx.started, 1, 2000));
    assert_true(wait_for(&calls, 1, 2000));
}

/* Plays the monitor until it hands the worker off. */
static void hand_off(void)
{
    for (int i = 0; i < 2000; i++) {
        if (fh_worker_handoff(fx.w, fh_now_ns(), 10u * 1000000u))
            return;
        sleep_ms(1);
    }
    fail_msg("the monitor never handed the worker off");
}

static void worker_call_detached_then_returns(void **state)
{
    (void)state;
    start_worker(5000);
    hand_off();
    /* The worker goes on while the plugin still holds the old thread. */
    assert_int_equal(fh_worker_post(fx.w, ping, NULL), 0);
    assert_true(wait_for(&fx.pings, 1, 2000));
    assert_true(wait_for(&fx.after, 1, 2000));
    assert_int_equal(atomic_load(&fx.other_runner), 1);
    assert_int_equal(atomic_load(&fx.resumed), 0);
    atomic_store(&gate, 1);
    assert_true(wait_for(&fx.resumed, 1, 2000));
    assert_int_equal(atomic_load(&fx.timed_out), 0);
    assert_int_equal(atomic_load(&fx.rc), 7);
    assert_int_equal(atomic_load(&abandoned), 0);
    assert_true(fh_worker_stop(fx.w, 2000));
    fh_worker_free(fx.w);
}

static void worker_call_abandoned_at_deadline(void **state)
{
    (void)state;
    start_worker(100);
    hand_off();
    assert_true(wait_for(&fx.resumed, 1, 2000));
    assert_int_equal(atomic_load(&fx.timed_out), 1);
    assert_int_equal(atomic_load(&abandoned), 0);
    atomic_store(&gate, 1); /* too late: the call cleans up after itself */
    assert_true(wait_for(&abandoned, 1, 2000));
    assert_int_equal(atomic_load(&fx.resumed), 1);
    assert_true(fh_worker_stop(fx.w, 2000));
    fh_worker_free(fx.w);
}

static void worker_stops_with_a_hung_call(void **state)
{
    (void)state;
    start_worker(60000);
    hand_off();
    /* Stopping gives up on the hung call at once; the worker can be freed
     * while the plugin still runs, and its late return touches nothing. */
    assert_true(fh_worker_stop(fx.w, 2000));
    assert_int_equal(atomic_load(&fx.resumed), 1);
    assert_int_equal(atomic_load(&fx.timed_out), 1);
    fh_worker_free(fx.w);
    atomic_store(&gate, 1);
    assert_true(wait_for(&abandoned, 1, 2000));
}

/* A watch removed (and freed) by an earlier callback of the same batch of
 * events is not called: the batch names it, its memory is gone. */
typedef struct two_watches {
    fh_watch a;
    fh_watch *b; /* heap, freed by a's callback */
    atomic_int a_calls, b_calls;
    fh_worker *w;
} two_watches;

static two_watches tw;

static void on_b(fh_watch *watch, uint32_t events)
{
    (void)watch, (void)events;
    atomic_fetch_add(&tw.b_calls, 1);
}

static void on_a(fh_watch *watch, uint32_t events)
{
    (void)events;
    char c;
    (void)!read(watch->fd, &c, 1);
    if (tw.b) {
        fh_worker_unwatch(tw.w, tw.b);
        memset(tw.b, 0xdb, sizeof(*tw.b)); /* as reused memory would look */
        free(tw.b);
        tw.b = NULL;
    }
    atomic_fetch_add(&tw.a_calls, 1);
}

static void unwatch_within_a_batch(void **state)
{
    (void)state;
    int pa[2], pb[2];
    assert_int_equal(pipe(pa), 0);
    assert_int_equal(pipe(pb), 0);
    char err[128];
    memset(&tw, 0, sizeof(tw));
    tw.w = fh_worker_new(0, err, sizeof(err));
    assert_non_null(tw.w);
    tw.a = (fh_watch){.fd = pa[0], .events = EPOLLIN, .fn = on_a};
    tw.b = calloc(1, sizeof(*tw.b));
    *tw.b = (fh_watch){.fd = pb[0], .events = EPOLLIN, .fn = on_b};
    /* Both ready before the loop starts, a first: one batch, in the order
     * they became ready (epoll's ready list), so a's callback frees b
     * while b's event is still to come. */
    assert_int_equal(fh_worker_watch(tw.w, tw.b), 0);
    assert_int_equal(fh_worker_watch(tw.w, &tw.a), 0);
    assert_int_equal(write(pa[1], "a", 1), 1);
    assert_int_equal(write(pb[1], "b", 1), 1);
    assert_int_equal(fh_worker_start(tw.w, "t-watch"), 0);
    assert_true(wait_for(&tw.a_calls, 1, 2000));
    assert_true(fh_worker_stop(tw.w, 2000));
    fh_worker_free(tw.w);
    assert_int_equal(atomic_load(&tw.b_calls), 0);
    free(tw.b);
    close(pa[0]), close(pa[1]), close(pb[0]), close(pb[1]);
}

int main(void)
{
    fh_log_set_level(FH_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(control_call_returns, reset),
        cmocka_unit_test_setup(control_call_abandoned, reset),
        cmocka_unit_test_setup(worker_call_detached_then_returns, reset),
        cmocka_unit_test_setup(worker_call_abandoned_at_deadline, reset),
        cmocka_unit_test_setup(worker_stops_with_a_hung_call, reset),
        cmocka_unit_test(unwatch_within_a_batch),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
