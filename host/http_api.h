/*
 * http_api.h - the public HTTP listener (SPEC section 4).
 *
 * Owns: the libmicrohttpd daemon, run by MHD's internal epoll thread with
 * suspend/resume. Every MHD callback, and so every plugin hook, runs on that
 * one thread. Its liveness for the watchdog is proven from outside, by a
 * real request to /health (fh_http_probe). Routes /v1/chat/completions and /v1/models to the
 * pipeline and answers /health and /metrics itself.
 */
#ifndef FH_HTTP_API_H
#define FH_HTTP_API_H

#include "metrics.h"
#include "pipeline.h"
#include "registry.h"

#include <stddef.h>
#include <stdint.h>

typedef enum fh_http_state {
    FH_HTTP_STARTING = 0, /* /health answers 503 */
    FH_HTTP_SERVING,
    FH_HTTP_DRAINING /* /health 503, new chat requests 503 */
} fh_http_state;

typedef struct fh_http_opts {
    const char *listen; /* "host:port"; port 0 picks a free one */
    unsigned max_connections;
    size_t max_body_bytes;
    unsigned idle_timeout_s; /* clients silent this long are dropped */
} fh_http_opts;

typedef struct fh_http fh_http;

fh_http *fh_http_start(const fh_http_opts *o, fh_pipeline *p, fh_metrics *m, fh_registry *reg,
                       char *err, size_t errlen);
void fh_http_set_state(fh_http *h, fh_http_state s);
uint16_t fh_http_port(const fh_http *h);
/* A real GET /health against our own listener, on a kept-alive connection
 * (so it works at the connection limit): 0 when the loop answered within
 * timeout_ms, -1 otherwise (wedged, overloaded, gone). Blocks the caller up
 * to timeout_ms. One thread only (the main thread). */
int fh_http_probe(fh_http *h, int timeout_ms);
/* Stops accepting new connections (kept ones are still served). */
void fh_http_quiesce(fh_http *h);
/* Cancels what is still in flight, lets the loop answer it (bounded), then
 * stops the thread and the daemon. */
void fh_http_stop(fh_http *h);

#endif
