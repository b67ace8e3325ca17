/*
 * pipeline.h - the data path of one chat-completion (or models) request:
 * parse, route, gate, apply, call upstream, evaluate, respond, record.
 *
 * Owns: fh_pipeline, what the workers share (registry, snapshots, metrics,
 * counters), and per worker an fh_pipe: that worker's live requests (fh_txn)
 * and its job queue.
 *
 * Threads: a request belongs to the worker that accepted its connection,
 * and only that worker's runner touches it - the connection's callbacks,
 * the curl callbacks and the jobs all run there, so a txn has no lock.
 * Plugin hooks run in jobs (never inside an HTTP or curl callback), through
 * the door (door.h); a hook that holds the runner past the hand-off point
 * leaves its request parked until the call returns or its deadline passes.
 * The fh_pipeline's counters are atomics; other threads reach a worker's
 * requests only through fh_worker_post().
 */
#ifndef FH_PIPELINE_H
#define FH_PIPELINE_H

#include "metrics.h"
#include "registry.h"
#include "snapshot.h"
#include "upstream.h"
#include "worker.h"

#include "httpd.h"
#include <stdatomic.h>
#include <stddef.h>

typedef struct fh_txn fh_txn;
typedef struct fh_pipe fh_pipe;

typedef struct fh_pipeline {
    fh_registry *reg;
    fh_snapshot_holder *snaps;
    fh_metrics *metrics;
    atomic_ulong next_id;
    atomic_bool closing; /* shutting down: no new upstream calls */
    atomic_size_t in_flight;
    unsigned long id_salt;
    char id_prefix[24]; /* "fh-<salt>-" */
    size_t id_prefix_len;
    uint64_t hook_deadline_ns;
    atomic_bool upstream_down; /* the last call (or probe) could not connect */
    struct fh_gates *gates;    /* every overlay's breaker and budget gate; NULL: none */
} fh_pipeline;

/* CHAT: the overlaid path. MODELS: GET /v1/models relayed. PROXY: any
 * other /v1/ path, relayed as it is (method, body, status, bytes). */
typedef enum fh_txn_kind { FH_TXN_CHAT, FH_TXN_MODELS, FH_TXN_PROXY } fh_txn_kind;

void fh_pipeline_init(fh_pipeline *p, fh_registry *reg, fh_snapshot_holder *snaps,
                      fh_metrics *metrics, int hook_deadline_ms);

/* A worker's share: registers its job turn and the worker's frame handler.
 * Before the worker starts, or on its runner. */
fh_pipe *fh_pipe_new(fh_pipeline *p, fh_worker *w, fh_upstream *up);
/* Runner: ends what is left (after fh_pipe_abort_all and the connections' close). */
void fh_pipe_free(fh_pipe *pp);
/* Runner: jobs queued (the HTTP turn runs again at once when there are). */
bool fh_pipe_busy(const fh_pipe *pp);

/* Runner, from the connection's request callback (httpd.h). */
fh_txn *fh_txn_new(fh_pipe *pp, fh_hconn *conn, fh_txn_kind kind, size_t max_body);
/* Runner: the configuration this worker serves new requests with (valid
 * during the current callback). */
const fh_config *fh_pipe_config(fh_pipe *pp);
/* The client key's name that authenticated the request (logged; the
 * rollout key when the request names none). */
void fh_txn_set_client(fh_txn *t, const char *name);
/* A PROXY request's method, its path after /v1 (query included) and the
 * bounded label it is counted under in the metrics. Right after fh_txn_new. */
int fh_txn_set_proxy(fh_txn *t, const char *method, const char *path, const char *route);
/* The body's announced length (Content-Length), before its bytes. */
void fh_txn_expect(fh_txn *t, size_t len);
/* Request body bytes. Returns 0, or -1 once over the max_body the request
 * came with (a reload does not change it for requests in flight; answer
 * 413 now: fh_txn_reject_too_large; the connection reads and drops the
 * rest before it closes, so the client sees the answer). */
int fh_txn_feed(fh_txn *t, const char *data, size_t len);
/* The request callback's call once the body is complete, and again after
 * every resume. Queues a response or waits. 0, or -1 to close. */
int fh_txn_step(fh_txn *t);
/* The body grew over the limit: answers 413 at once. */
int fh_txn_reject_too_large(fh_txn *t);
/* The connection is done with the request (answered, or the client left:
 * an upstream call still running is cancelled). */
void fh_txn_completed(fh_txn *t, fh_hend how);

/* The upstream settings of a config (the API key read from its
 * environment variable). Any thread. */
void fh_upstream_opts_of(const fh_config *cfg, fh_upstream_opts *o);
/* Whether the upstream refused connections at the last try. Any thread. */
bool fh_pipeline_upstream_down(const fh_pipeline *p);
/* Runner: while it is down, a GET /models to see whether it is back (at
 * most one at a time and one a second per worker). */
void fh_pipe_probe_upstream(fh_pipe *pp);
/* Requests not yet completed, on every worker. Any thread. */
size_t fh_pipeline_in_flight(const fh_pipeline *p);
/* Runner: shutdown past the drain. Refuses new upstream calls and ends
 * every request still waiting - answered 503, or its stream ended. */
void fh_pipe_abort_all(fh_pipe *pp);

#endif
