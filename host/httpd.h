/*
 * httpd.h - HTTP/1.1 connections of one worker: parse, frame, time, write.
 *
 * Owns: the connections a worker accepted (fh_hsrv), each with its socket,
 * its read buffer (bounded by limits.max_header_bytes), the request head it
 * parsed, and the response it is writing. Knows nothing of routes: a
 * request is handed to the application's callback, which answers at once
 * or later (fh_hconn_respond from a later turn, after fh_hconn_resume).
 *
 * Why our own and not libmicrohttpd's: the front door must answer a client
 * that half-closes after its request, notice one that resets while it
 * waits (to cancel the upstream call), bound the whole request head and
 * the body's rate, refuse the framings used for request smuggling, answer
 * oversized or non-HTTP input at once, and keep the connection on a 4xx;
 * libmicrohttpd 0.9.75 does not expose the state needed for any of them
 * (it closes a half-closed connection on resume, and its timeout restarts
 * with every byte).
 *
 * The handler model (one request at a time per connection; pipelined
 * requests wait in the read buffer, answered in order):
 *   request(..., upload NULL, *upload_size 0, *ctx NULL)  head complete
 *   request(..., upload, *upload_size n, ctx)              body bytes (the
 *                                                          callback consumes
 *                                                          all: sets 0)
 *   request(..., NULL, 0, ctx)                             body complete;
 *                                                          again after each
 *                                                          fh_hconn_resume()
 *                                                          until it answered
 *   completed(ctx, how)                                    the request is over
 * A callback returning -1 closes the connection (completed is still called
 * once ctx was set).
 *
 * Threads: everything here belongs to the worker's runner (worker.h).
 */
#ifndef FH_HTTPD_H
#define FH_HTTPD_H

#include "worker.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

typedef struct fh_hsrv fh_hsrv;
typedef struct fh_hconn fh_hconn;
typedef struct fh_hresp fh_hresp;

/* How a request ended (completed callback). */
typedef enum fh_hend {
    FH_HEND_OK = 0,      /* the whole response was sent */
    FH_HEND_CLIENT_GONE, /* the client reset or closed before it had it */
    FH_HEND_TIMEOUT,     /* the client was too slow (head, body or reading) */
    FH_HEND_ERROR,       /* a write failed, or the application gave up */
    FH_HEND_SHUTDOWN     /* the server closed it on the way out */
} fh_hend;

typedef struct fh_hsrv_limits {
    size_t max_header;  /* bytes of a request head (and the read buffer) */
    uint64_t header_ms; /* the whole head, from its first byte (from accept on a new connection) */
    uint64_t body_min_rate; /* body bytes per second after header_ms; 0: none */
    uint64_t idle_ms;       /* keep-alive wait; a stalled body or write */
} fh_hsrv_limits;

typedef int (*fh_hreq_fn)(void *ud, fh_hconn *c, const char *method, const char *url,
                          const char *upload, size_t *upload_size, void **ctx);
typedef void (*fh_hdone_fn)(void *ud, fh_hconn *c, void *ctx, fh_hend how);
/* A connection closed (any reason); conn_ud is what fh_hsrv_add got. */
typedef void (*fh_hclosed_fn)(void *ud, void *conn_ud);

typedef struct fh_hsrv_cbs {
    fh_hreq_fn request;
    fh_hdone_fn completed;
    fh_hclosed_fn closed;
    void *ud;
} fh_hsrv_cbs;

fh_hsrv *fh_hsrv_new(fh_worker *w, const fh_hsrv_cbs *cbs, const fh_hsrv_limits *lim);
/* New connections use these; open ones keep theirs until their next request. */
void fh_hsrv_set_limits(fh_hsrv *s, const fh_hsrv_limits *lim);
/* Takes the connected socket (closed on failure, -1). */
int fh_hsrv_add(fh_hsrv *s, int fd, const struct sockaddr *addr, socklen_t len, void *conn_ud);
/* The worker's turn: runs resumed connections, times out slow ones.
 * Returns the milliseconds until it must run again (-1: none). */
int fh_hsrv_turn(fh_hsrv *s);
size_t fh_hsrv_count(const fh_hsrv *s);
/* Closes every connection (completed FH_HEND_SHUTDOWN) and frees. */
void fh_hsrv_free(fh_hsrv *s);

/* ---- inside a request ----------------------------------------------------------- */

/* A request header's value (first of that name, case-insensitive), or NULL. */
const char *fh_hconn_header(const fh_hconn *c, const char *name);
/* Calls fn for every request header in order; stops when fn returns false. */
void fh_hconn_headers(const fh_hconn *c, bool (*fn)(void *ud, const char *name, const char *value),
                      void *ud);
/* A header for this request's response, whichever the application makes
 * (CORS). -1 when it does not fit (about 1 KiB in all) or has CR/LF. */
int fh_hconn_add_header(fh_hconn *c, const char *name, const char *value);
/* Runs the request callback again (or, for a streamed response whose
 * reader had nothing, the reader) in the worker's next turn. */
void fh_hconn_resume(fh_hconn *c);
/* Queues the response (owned from here, freed even on failure). One per
 * request; -1 when one was queued already or the connection is closing. */
int fh_hconn_respond(fh_hconn *c, unsigned status, fh_hresp *r);

/* ---- responses ----------------------------------------------------------------------- */

/* A streamed body's reader: copies up to max bytes to out and returns how
 * many; 0 when it has none now (called again after fh_hconn_resume);
 * FH_HRESP_END at the end; FH_HRESP_ERROR to cut the connection. */
#define FH_HRESP_END   ((ssize_t)-1)
#define FH_HRESP_ERROR ((ssize_t)-2)
typedef ssize_t (*fh_hreader_fn)(void *cls, char *out, size_t max);

/* A body of len bytes that the response frees (free()) when done. */
fh_hresp *fh_hresp_buffer(char *data, size_t len);
/* A body of unknown length (chunked); free_cls runs when the response is
 * freed, whether or not it was sent. */
fh_hresp *fh_hresp_reader(fh_hreader_fn fn, void *cls, void (*free_cls)(void *cls));
/* Adds a header; names and values with CR, LF or NUL are refused (-1).
 * A Connection header is not copied: "close" in it makes the connection
 * close after this response (the layer writes the header itself). */
int fh_hresp_header(fh_hresp *r, const char *name, const char *value);
void fh_hresp_free(fh_hresp *r);

/* The reason phrase of a status ("OK", "Not Found", ...). */
const char *fh_http_reason(unsigned status);

#endif
