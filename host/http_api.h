/*
 * http_api.h - the public HTTP listener (SPEC section 4).
 *
 * Owns: the listening socket (fh_http, shared), the per-address connection
 * counts, the front door's limits, and per worker its connections
 * (fh_http_worker, an httpd.h server run by the worker's loop, accepting
 * from the shared socket): a connection lives on the worker that accepted
 * it, with every request on it. Routes /v1/chat/completions and /v1/models
 * to the pipeline and answers /health and /metrics itself.
 *
 * Threads: an fh_http_worker, its connections and their callbacks belong
 * to its worker's runner. fh_http_set_state, fh_http_apply, fh_http_port
 * and the state read by /health are any thread's. fh_http_listen/close run
 * on the main thread, before the workers start and after they stopped.
 */
#ifndef FH_HTTP_API_H
#define FH_HTTP_API_H

#include "config.h"
#include "metrics.h"
#include "pipeline.h"
#include "registry.h"
#include "worker.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

typedef enum fh_http_state {
    FH_HTTP_STARTING = 0, /* /health answers 503 */
    FH_HTTP_SERVING,
    FH_HTTP_DRAINING /* /health 503, new chat requests 503 */
} fh_http_state;

typedef struct fh_http_opts {
    const char *listen;              /* "host:port"; port 0 picks a free one */
    unsigned max_connections;        /* in all, shared out among the workers */
    unsigned max_connections_per_ip; /* 0: no limit */
    size_t max_body_bytes;
    size_t max_header_bytes;       /* each connection's buffer for its head */
    uint64_t header_timeout_ms;    /* the whole request head */
    uint64_t body_min_bytes_per_s; /* after header_timeout_ms; 0: none */
    uint64_t idle_timeout_ms;      /* keep-alive wait; a stalled body or write */
    unsigned workers;
} fh_http_opts;

/* The front door's settings of a configuration. */
void fh_http_opts_of(const fh_config *cfg, unsigned nworkers, fh_http_opts *o);

typedef struct fh_http fh_http;
typedef struct fh_http_worker fh_http_worker;

fh_http *fh_http_listen(const fh_http_opts *o, fh_pipeline *p, fh_metrics *m, fh_registry *reg,
                        char *err, size_t errlen);
/* New limits (a reload): every field of `o` but listen and workers. New
 * requests use them; a connection's read buffer keeps its size. */
void fh_http_apply(fh_http *h, const fh_http_opts *o);
/* Closes the socket; after every worker's connections closed. */
void fh_http_close(fh_http *h);
void fh_http_set_state(fh_http *h, fh_http_state s);
uint16_t fh_http_port(const fh_http *h);
/* The GET /health document (the admin API serves it too), and the status
 * it is answered with (200 serving, 503 starting or draining). Any
 * thread; NULL when out of memory. */
json_t *fh_http_health_json(fh_http *h, unsigned *status_code);

/* A worker's connections on the shared socket, registered with the
 * worker's loop (an fd watch and a turn). Before the worker starts. */
fh_http_worker *fh_http_worker_new(fh_http *h, fh_worker *w, fh_pipe *pipe, char *err,
                                   size_t errlen);
/* Runner: stops accepting (kept connections are still served). */
void fh_http_worker_quiesce(fh_http_worker *hw);
/* Runner: closes the worker's connections (after fh_pipe_abort_all
 * answered what it could). */
void fh_http_worker_free(fh_http_worker *hw);

#endif
