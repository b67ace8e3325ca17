/*
 * upstream.h - the one thread that talks to the LLM server.
 *
 * Owns: a libcurl multi handle and every easy handle, all touched only by
 * the upstream thread. Other threads hand it work through a locked command
 * queue and curl_multi_wakeup(): submit, resume (after backpressure) and
 * cancel. Connections to the upstream are kept alive and reused by the
 * multi handle. No thread is held per request: thousands of waiting calls
 * cost one easy handle and one socket each.
 *
 * A call is reference counted: fh_upstream_submit() returns a reference
 * the caller must drop with fh_upstream_call_release(); the upstream
 * thread holds its own until on_done() has returned. resume/cancel on a
 * call that has finished are harmless no-ops.
 */
#ifndef FH_UPSTREAM_H
#define FH_UPSTREAM_H

#include <stddef.h>
#include <stdint.h>

typedef enum fh_upstream_result {
    FH_UPSTREAM_OK = 0,    /* a complete HTTP answer (any status) */
    FH_UPSTREAM_CONNECT,   /* could not connect: 502 */
    FH_UPSTREAM_TIMEOUT,   /* no answer in time: 504 */
    FH_UPSTREAM_BROKEN,    /* connection lost mid-answer, bad HTTP: 502 */
    FH_UPSTREAM_CANCELLED, /* fh_upstream_cancel() or shutdown */
    FH_UPSTREAM_INTERNAL   /* out of memory, curl refused the request */
} fh_upstream_result;

const char *fh_upstream_result_name(fh_upstream_result r);

/* Callbacks, all run on the upstream thread, in this order: on_response
 * once when the status line and headers are in (not for failures before
 * that), on_body any number of times, on_done exactly once. */
typedef struct fh_upstream_handler {
    void (*on_response)(void *ud, long status, const char *content_type);
    /* Returns 0 when the data was taken, 1 to pause the transfer (the same
     * data is delivered again after fh_upstream_resume()), -1 to abort it
     * (on_done then reports FH_UPSTREAM_BROKEN). */
    int (*on_body)(void *ud, const char *data, size_t len);
    void (*on_done)(void *ud, fh_upstream_result result, long status, const char *error);
} fh_upstream_handler;

typedef struct fh_upstream_opts {
    const char *base_url; /* e.g. "http://127.0.0.1:8000/v1", no trailing / needed */
    const char *api_key;  /* sent as "Authorization: Bearer"; NULL/"" for none */
    long timeout_ms;      /* whole answer (non-streaming) / idle gap (streaming) */
    long connect_timeout_ms;
} fh_upstream_opts;

typedef struct fh_upstream fh_upstream;
typedef struct fh_upstream_call fh_upstream_call;

/* Starts the thread. NULL with a message in err on failure. */
fh_upstream *fh_upstream_start(const fh_upstream_opts *opts, char *err, size_t errlen);
/* Cancels every call (on_done with FH_UPSTREAM_CANCELLED) and joins. */
void fh_upstream_stop(fh_upstream *u);

/* Queues a request to base_url + path ("/chat/completions"). `body` (may be
 * NULL for GET) is copied. `streaming` makes the timeout an idle timeout.
 * Returns a reference to release, or NULL when out of memory or stopping. */
fh_upstream_call *fh_upstream_submit(fh_upstream *u, const char *method, const char *path,
                                     const char *body, size_t len, int streaming,
                                     const fh_upstream_handler *h, void *ud);
void fh_upstream_resume(fh_upstream *u, fh_upstream_call *c);
void fh_upstream_cancel(fh_upstream *u, fh_upstream_call *c);
void fh_upstream_call_release(fh_upstream_call *c);

/* Monotonic milliseconds of the thread's last loop iteration, for the
 * watchdog: a loop that stops checking in stops the pings. */
uint64_t fh_upstream_heartbeat(const fh_upstream *u);
/* Calls submitted and not yet done. */
size_t fh_upstream_in_flight(const fh_upstream *u);

#endif
