/*
 * pipeline.h - the data path of one chat-completion (or models) request:
 * parse, route, gate, apply, call upstream, evaluate, respond, record.
 *
 * Owns: every fh_txn (one per HTTP request on the public API) and the list
 * of live ones, used to drain on shutdown. A txn is shared by the HTTP
 * thread (which runs the MHD callbacks and all plugin hooks) and the
 * upstream thread (which runs the curl callbacks); the fields they share
 * are guarded by the txn's mutex, and each side holds a reference.
 */
#ifndef FH_PIPELINE_H
#define FH_PIPELINE_H

#include "metrics.h"
#include "registry.h"
#include "snapshot.h"
#include "upstream.h"

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

typedef struct fh_txn fh_txn;

typedef struct fh_pipeline {
    fh_registry *reg;
    fh_upstream *up;
    fh_snapshot_holder *snaps;
    fh_metrics *metrics;
    atomic_ulong next_id;
    atomic_bool closing; /* shutting down: no new upstream calls */
    unsigned long id_salt;
    pthread_mutex_t live_lock;
    fh_txn *live; /* doubly linked through the txns */
    size_t live_count;
} fh_pipeline;

typedef enum fh_txn_kind { FH_TXN_CHAT, FH_TXN_MODELS } fh_txn_kind;

void fh_pipeline_init(fh_pipeline *p, fh_registry *reg, fh_upstream *up, fh_snapshot_holder *snaps,
                      fh_metrics *metrics);
void fh_pipeline_destroy(fh_pipeline *p);

/* HTTP thread: a new request. */
fh_txn *fh_txn_new(fh_pipeline *p, struct MHD_Connection *conn, fh_txn_kind kind);
/* HTTP thread: request body bytes. Returns 0, or -1 once over
 * max_body_bytes (the rest is dropped and the request answered 413 when
 * the body ends), or -2 when the client went on sending past twice the
 * limit (answer 413 now: fh_txn_reject_too_large). */
int fh_txn_feed(fh_txn *t, const char *data, size_t len, size_t max_body);
/* HTTP thread: the access handler's call once the body is complete, and
 * again after every resume. Queues a response or suspends. */
enum MHD_Result fh_txn_step(fh_txn *t);
/* HTTP thread: MHD is done with the request (answered or client gone). */
void fh_txn_completed(fh_txn *t, enum MHD_RequestTerminationCode toe);

/* Requests not yet completed. */
size_t fh_pipeline_in_flight(fh_pipeline *p);
/* Shutdown past the drain: refuses new upstream calls, and ends every
 * request still waiting - answered 503, or its stream ended - resuming its
 * connection from this side without waiting on the upstream thread.
 * Returns how many connections are still suspended (call again until 0;
 * MHD must not be stopped before). Any thread. */
size_t fh_pipeline_abort_all(fh_pipeline *p);

/* HTTP thread: the body grew over the limit; answers 413 at once. */
enum MHD_Result fh_txn_reject_too_large(fh_txn *t);

/* Queues an OpenAI-shaped error {"error":{"message","type","code"}}. */
enum MHD_Result fh_http_error(struct MHD_Connection *conn, unsigned status, const char *type,
                              const char *code, const char *message);
/* The same with an Allow header (405). */
enum MHD_Result fh_http_error_allow(struct MHD_Connection *conn, unsigned status, const char *type,
                                    const char *code, const char *message, const char *allow);

#endif
