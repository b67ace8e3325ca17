/*
 * http_api.h - the public HTTP listener (SPEC section 4).
 *
 * Owns: the listening socket (fh_http, shared) and one libmicrohttpd daemon
 * per worker (fh_http_worker), each run by its worker's event loop in
 * external-epoll mode and accepting from the shared socket: a connection
 * lives on the worker that accepted it, with every request on it. Routes
 * /v1/chat/completions and /v1/models to the pipeline and answers /health
 * and /metrics itself.
 *
 * Threads: an fh_http_worker, its MHD daemon and every MHD callback belong
 * to its worker's runner. fh_http_set_state, fh_http_port and the state
 * read by /health are any thread's. fh_http_listen/close run on the main
 * thread, before the workers start and after they stopped.
 */
#ifndef FH_HTTP_API_H
#define FH_HTTP_API_H

#include "metrics.h"
#include "pipeline.h"
#include "registry.h"
#include "worker.h"

#include <stddef.h>
#include <stdint.h>

typedef enum fh_http_state {
    FH_HTTP_STARTING = 0, /* /health answers 503 */
    FH_HTTP_SERVING,
    FH_HTTP_DRAINING /* /health 503, new chat requests 503 */
} fh_http_state;

typedef struct fh_http_opts {
    const char *listen;       /* "host:port"; port 0 picks a free one */
    unsigned max_connections; /* in all, shared out among the workers */
    size_t max_body_bytes;
    size_t max_header_bytes; /* each connection's buffer for its head */
    unsigned idle_timeout_s; /* clients silent this long are dropped */
    unsigned workers;
} fh_http_opts;

typedef struct fh_http fh_http;
typedef struct fh_http_worker fh_http_worker;

fh_http *fh_http_listen(const fh_http_opts *o, fh_pipeline *p, fh_metrics *m, fh_registry *reg,
                        char *err, size_t errlen);
/* Closes the socket; after every worker's daemon stopped. */
void fh_http_close(fh_http *h);
void fh_http_set_state(fh_http *h, fh_http_state s);
uint16_t fh_http_port(const fh_http *h);

/* A worker's daemon on the shared socket, registered with the worker's
 * loop (an fd watch and a turn). Before the worker starts. */
fh_http_worker *fh_http_worker_new(fh_http *h, fh_worker *w, fh_pipe *pipe, char *err,
                                   size_t errlen);
/* Runner: stops accepting (kept connections are still served). */
void fh_http_worker_quiesce(fh_http_worker *hw);
/* Runner: stops the daemon (after fh_pipe_abort_all resumed everything)
 * and frees. Connections still open are closed. */
void fh_http_worker_free(fh_http_worker *hw);

#endif
