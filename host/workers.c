/*
 * workers.c - see workers.h.
 *
 * Why inline hooks and a monitor, not a hook thread pool: measured on this
 * project's 2-core machine (docs/architecture.md), handing every hook call
 * to another thread and back costs two wake-ups per call, more than the
 * hooks themselves; inline calls cost nothing extra. The monitor keeps the
 * isolation a pool would give: a call that holds its worker past the
 * hand-off point is left on its thread and the worker continues on a new
 * one, so only the request that made the call waits for it.
 */
#include "workers.h"

#include "log.h"
#include "util.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MONITOR_TICK_NS (2u * 1000000u)  /* how often the monitor looks */
#define HANDOFF_NS      (10u * 1000000u) /* a call holding its worker this long is detached */
#define STOP_TIMEOUT_MS 10000

typedef struct slot {
    fh_worker *w;
    fh_upstream *up;
    fh_pipe *pipe;
    fh_http_worker *hw;
    bool started, stopped;
} slot;

struct fh_workers {
    unsigned n;
    slot *slots;
    uint64_t handoff_ns;
    pthread_t monitor;
    bool monitor_started;
    atomic_bool stopping;
    atomic_uint_fast64_t monitor_beat_ms;
    uint64_t ping_seq;
};

static void *monitor_main(void *p)
{
    fh_workers *ws = p;
    struct timespec tick = {0, MONITOR_TICK_NS};
    while (!atomic_load(&ws->stopping)) {
        uint64_t now = fh_now_ns();
        atomic_store(&ws->monitor_beat_ms, now / 1000000u);
        for (unsigned i = 0; i < ws->n; i++)
            fh_worker_handoff(ws->slots[i].w, now, ws->handoff_ns);
        nanosleep(&tick, NULL);
    }
    return NULL;
}

/* The runner's last act: its requests, daemon and client, in that order of
 * dependence (requests use the daemon's connections and the client's calls). */
static void teardown(fh_worker *w, void *ud)
{
    (void)w;
    slot *s = ud;
    fh_pipe_abort_all(s->pipe);
    fh_http_worker_free(s->hw);
    fh_pipe_free(s->pipe);
    fh_upstream_free(s->up);
    s->hw = NULL;
    s->pipe = NULL;
    s->up = NULL;
}

static int slot_init(slot *s, unsigned i, const fh_workers_opts *o, fh_pipeline *p, fh_http *h,
                     char *err, size_t errlen)
{
    s->w = fh_worker_new(i, err, errlen);
    if (!s->w)
        return -1;
    /* Turn order: the upstream's completions, then the jobs, then the connections. */
    s->up = fh_upstream_new(s->w, &o->upstream, err, errlen);
    if (!s->up)
        return -1;
    s->pipe = fh_pipe_new(p, s->w, s->up);
    if (!s->pipe) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    s->hw = fh_http_worker_new(h, s->w, s->pipe, err, errlen);
    if (!s->hw)
        return -1;
    fh_worker_set_stop(s->w, teardown, s);
    return 0;
}

/* A slot that never ran: torn down here, on the calling thread. */
static void slot_discard(slot *s)
{
    if (s->hw)
        fh_http_worker_free(s->hw);
    if (s->pipe)
        fh_pipe_free(s->pipe);
    if (s->up)
        fh_upstream_free(s->up);
    fh_worker_free(s->w);
}

fh_workers *fh_workers_start(const fh_workers_opts *o, fh_pipeline *p, fh_http *h, char *err,
                             size_t errlen)
{
    fh_workers *ws = calloc(1, sizeof(*ws));
    unsigned n = o->count ? o->count : 1;
    if (ws)
        ws->slots = calloc(n, sizeof(*ws->slots));
    if (!ws || !ws->slots) {
        free(ws);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    ws->n = n;
    uint64_t deadline_ns = (uint64_t)o->hook_deadline_ms * 1000000u;
    ws->handoff_ns = HANDOFF_NS < deadline_ns / 2 ? HANDOFF_NS : deadline_ns / 2;
    atomic_init(&ws->stopping, false);
    atomic_init(&ws->monitor_beat_ms, fh_now_ms());
    unsigned made = 0;
    for (; made < n; made++)
        if (slot_init(&ws->slots[made], made, o, p, h, err, errlen) != 0)
            break;
    if (made < n) {
        for (unsigned i = 0; i <= made && i < n; i++)
            if (ws->slots[i].w)
                slot_discard(&ws->slots[i]);
        free(ws->slots);
        free(ws);
        return NULL;
    }
    unsigned started = 0;
    for (; started < n; started++) {
        char name[32]; /* the kernel keeps 15 characters */
        snprintf(name, sizeof(name), "fh-worker-%u", started % 1000);
        int rc = fh_worker_start(ws->slots[started].w, name);
        ws->slots[started].started = rc == 0;
        if (rc != 0) {
            snprintf(err, errlen, "cannot start worker thread %u: %s", started, strerror(rc));
            break;
        }
    }
    int rc = started == n ? pthread_create(&ws->monitor, NULL, monitor_main, ws) : -1;
    if (rc > 0)
        snprintf(err, errlen, "cannot start the monitor thread: %s", strerror(rc));
    ws->monitor_started = rc == 0;
    if (rc != 0) {
        fh_workers_stop(ws);
        return NULL;
    }
    pthread_setname_np(ws->monitor, "fh-monitor");
    return ws;
}

static void do_quiesce(fh_worker *w, void *ud)
{
    (void)w;
    fh_http_worker_quiesce(((slot *)ud)->hw);
}

static void do_abort(fh_worker *w, void *ud)
{
    (void)w;
    fh_pipe_abort_all(((slot *)ud)->pipe);
}

void fh_workers_quiesce(fh_workers *ws)
{
    for (unsigned i = 0; i < ws->n; i++)
        fh_worker_post(ws->slots[i].w, do_quiesce, &ws->slots[i]);
}

void fh_workers_abort(fh_workers *ws)
{
    for (unsigned i = 0; i < ws->n; i++)
        fh_worker_post(ws->slots[i].w, do_abort, &ws->slots[i]);
}

bool fh_workers_responsive(fh_workers *ws, uint64_t stale_ms)
{
    uint64_t monitor_age = fh_now_ms() - atomic_load(&ws->monitor_beat_ms);
    bool ok = monitor_age < stale_ms;
    for (unsigned i = 0; i < ws->n; i++) {
        if (fh_worker_pong(ws->slots[i].w) != ws->ping_seq) {
            fh_warn("watchdog: worker %u did not answer within %llu ms", i,
                    (unsigned long long)stale_ms);
            ok = false;
        }
    }
    if (monitor_age >= stale_ms)
        fh_warn("watchdog: the monitor thread has not run for %llu ms",
                (unsigned long long)monitor_age);
    ws->ping_seq++;
    for (unsigned i = 0; i < ws->n; i++)
        fh_worker_ping(ws->slots[i].w, ws->ping_seq);
    return ok;
}

bool fh_workers_stop(fh_workers *ws)
{
    if (!ws)
        return true;
    bool all = true;
    for (unsigned i = 0; i < ws->n; i++) /* all at once: they drain in parallel */
        if (ws->slots[i].started)
            fh_worker_request_stop(ws->slots[i].w);
    for (unsigned i = 0; i < ws->n; i++) {
        if (!ws->slots[i].started) {
            slot_discard(&ws->slots[i]); /* never ran: nothing on another thread */
            continue;
        }
        ws->slots[i].stopped = fh_worker_stop(ws->slots[i].w, STOP_TIMEOUT_MS);
        if (!ws->slots[i].stopped) {
            fh_error("worker %u did not stop within %d ms; leaving it", i, STOP_TIMEOUT_MS);
            all = false;
        }
    }
    atomic_store(&ws->stopping, true);
    if (ws->monitor_started)
        pthread_join(ws->monitor, NULL);
    for (unsigned i = 0; i < ws->n; i++)
        if (ws->slots[i].stopped)
            fh_worker_free(ws->slots[i].w);
    if (!all)
        return false; /* a worker may still touch its slot */
    free(ws->slots);
    free(ws);
    return true;
}
