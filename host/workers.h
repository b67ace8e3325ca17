/*
 * workers.h - the worker pool: N workers (worker.h), each with its own
 * HTTP daemon on the shared listening socket, its own upstream client and
 * its share of the pipeline, plus the monitor thread.
 *
 * Owns: the workers and what runs on each, and the monitor. The monitor
 * looks at every worker's door frame every few milliseconds and hands a
 * worker to a new thread when a plugin call has held it past the hand-off
 * point (door.h): a hung or slow hook costs its own request, never the
 * worker's other requests.
 *
 * Threads: start, quiesce, abort, ping and stop are the main thread's; the
 * per-worker work they ask for runs on each worker's runner (posted). The
 * monitor thread touches only the workers' frames and runners, through
 * fh_worker_handoff().
 */
#ifndef FH_WORKERS_H
#define FH_WORKERS_H

#include "http_api.h"
#include "pipeline.h"
#include "upstream.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct fh_workers_opts {
    unsigned count;
    int hook_deadline_ms;
    fh_upstream_opts upstream;
} fh_workers_opts;

typedef struct fh_workers fh_workers;

fh_workers *fh_workers_start(const fh_workers_opts *o, fh_pipeline *p, fh_http *h, char *err,
                             size_t errlen);

/* Stop accepting new connections (each worker, asynchronously). */
void fh_workers_quiesce(fh_workers *ws);
/* End every request still waiting: 503, or its stream ended. */
void fh_workers_abort(fh_workers *ws);

/* Liveness for the watchdog: true when every worker echoed the previous
 * ping and the monitor ticked recently; then pings again. */
bool fh_workers_responsive(fh_workers *ws, uint64_t stale_ms);

/* Stops every worker (tearing down its daemon, requests and upstream on
 * its own thread) and the monitor, and frees. false when a worker did not
 * stop in time: it may still use what the workers share (the listener,
 * the pipeline, the registry, the metrics), which must then be left. */
bool fh_workers_stop(fh_workers *ws);

#endif
