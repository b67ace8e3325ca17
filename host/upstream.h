/*
 * upstream.h - a worker's client for the LLM server.
 *
 * Owns: one libcurl multi handle per worker, driven by the worker's event
 * loop through curl's socket interface (its sockets are registered with the
 * worker's epoll, its timer is a turn deadline), every easy handle and a
 * small pool of idle ones for reuse. Connections to the upstream are kept
 * alive and reused. No thread of its own and none per request: thousands
 * of waiting calls cost one easy handle and one socket each.
 *
 * Threads: everything here runs on the worker's runner - submit, resume,
 * cancel and every callback. The callbacks never run inside another of
 * this module's calls except as documented: on_response and on_body run
 * inside curl (from the worker's fd events), on_done runs after curl
 * returned, from the loop; none of them may call into plugin code.
 */
#ifndef FH_UPSTREAM_H
#define FH_UPSTREAM_H

#include "worker.h"

#include <stddef.h>
#include <stdint.h>

typedef enum fh_upstream_result {
    FH_UPSTREAM_OK = 0,    /* a complete HTTP answer (any status) */
    FH_UPSTREAM_CONNECT,   /* could not connect: 502 */
    FH_UPSTREAM_TIMEOUT,   /* no answer in time: 504 */
    FH_UPSTREAM_BROKEN,    /* connection lost mid-answer, bad HTTP: 502 */
    FH_UPSTREAM_CANCELLED, /* shutdown */
    FH_UPSTREAM_INTERNAL   /* out of memory, curl refused the request */
} fh_upstream_result;

const char *fh_upstream_result_name(fh_upstream_result r);

typedef struct fh_upstream_done {
    fh_upstream_result result;
    long status;
    const char *error; /* NULL when OK; valid during the callback */
    uint64_t wait_ns;  /* from the request leaving to the last byte in:
                          the time the upstream took, not the host */
} fh_upstream_done;

/* Callbacks, in this order: on_response once when the status line and
 * headers are in (not for failures before that), on_body any number of
 * times, on_done exactly once (after which the call is gone). */
typedef struct fh_upstream_handler {
    /* content_type: "" when none; headers: the answer headers a client
     * reads (x-request-id, openai-*, x-ratelimit-*, retry-after), as
     * "Name: value\r\n" lines, "" when none; both valid during the call. */
    void (*on_response)(void *ud, long status, const char *content_type, const char *headers);
    /* Returns 0 when the data was taken, 1 to pause the transfer (the same
     * data comes again after fh_upstream_resume()), -1 to abort it
     * (on_done then reports FH_UPSTREAM_BROKEN). */
    int (*on_body)(void *ud, const char *data, size_t len);
    void (*on_done)(void *ud, const fh_upstream_done *d);
} fh_upstream_handler;

typedef struct fh_upstream_opts {
    const char *base_url; /* e.g. "http://127.0.0.1:8000/v1", no trailing / needed */
    const char *api_key;  /* sent as "Authorization: Bearer"; NULL/"" for none */
    long timeout_ms;      /* the answer's head; a whole non-streamed answer */
    long idle_timeout_ms; /* the longest gap between a stream's bytes */
    long connect_timeout_ms;
} fh_upstream_opts;

typedef struct fh_upstream fh_upstream;
typedef struct fh_upstream_target fh_upstream_target;

/* The settings in opts, checked and prepared (the URL parsed, the key in
 * a header), for fh_upstream_retarget(). Any thread. NULL with a message
 * when the base URL is not one. */
fh_upstream_target *fh_upstream_target_new(const fh_upstream_opts *opts, char *err, size_t errlen);
/* Drops a reference (the creator's, or one from fh_upstream_target_ref).
 * References are counted without a lock: after its creation a target
 * belongs to one worker's runner. */
void fh_upstream_target_free(fh_upstream_target *t);
fh_upstream_target *fh_upstream_target_ref(fh_upstream_target *t);
/* Runner: what calls submitted without a target use from now on (the
 * upstream takes the reference). */
void fh_upstream_retarget(fh_upstream *u, fh_upstream_target *t);
typedef struct fh_upstream_call fh_upstream_call;

fh_upstream *fh_upstream_new(fh_worker *w, const fh_upstream_opts *opts, char *err, size_t errlen);
/* Ends every call without callbacks (their owners are gone) and frees. */
void fh_upstream_free(fh_upstream *u);

/* Starts a request to the target's base_url + path (tg NULL: the current
 * target); the call keeps a reference to its target until it ends, so a
 * reload changes new calls only. `body` (NULL for GET) is borrowed: it
 * must stay valid until on_done or fh_upstream_cancel(). `streaming`
 * makes the timeout an idle timeout. `extra` (NULL-terminated, may be
 * NULL) adds "Name: value" request headers after the target's. NULL when
 * out of memory. */
fh_upstream_call *fh_upstream_submit(fh_upstream *u, fh_upstream_target *tg, const char *method,
                                     const char *path, const char *body, size_t len, int streaming,
                                     const char *const *extra, const fh_upstream_handler *h,
                                     void *ud);
/* Continues a transfer paused by on_body returning 1. */
void fh_upstream_resume(fh_upstream *u, fh_upstream_call *c);
/* Ends a call at once, without on_done; `c` is gone afterwards. */
void fh_upstream_cancel(fh_upstream *u, fh_upstream_call *c);

/* Calls submitted and not yet done. */
size_t fh_upstream_in_flight(const fh_upstream *u);

#endif
