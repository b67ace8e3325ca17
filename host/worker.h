/*
 * worker.h - one worker: an event loop that owns a share of the requests.
 *
 * Owns: an epoll instance, an eventfd to wake it, an inbox for the other
 * threads, the current door frame (door.h), and the list of its calls that
 * were detached from it. What runs on the loop - the worker's HTTP daemon,
 * its upstream client, its requests - registers file descriptors and "turn"
 * callbacks with it; the worker knows nothing of HTTP or plugins.
 *
 * Threads: the loop runs on one thread at a time, the worker's runner. All
 * that the loop owns (and so every request of this worker) is touched by the
 * runner alone, without locks. The runner changes only when the monitor
 * (workers.c) finds it held by a plugin call past the hand-off point: the
 * monitor detaches that call and starts a new runner, and the old thread,
 * once the plugin returns, leaves without touching the worker
 * (fh_worker_left()). Other threads reach the loop through fh_worker_post()
 * (a closure run on the runner), fh_worker_ping() and the door frames'
 * posting; all take the inbox lock and write the eventfd.
 *
 * Each loop turn: wait for events (bounded by every turn callback's next
 * deadline and a 1 s tick), dispatch fd events, run the inbox, then the
 * turn callbacks in registration order, and repeat.
 */
#ifndef FH_WORKER_H
#define FH_WORKER_H

#include "door.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

typedef struct fh_worker fh_worker;

/* An fd registered with the loop. `fn` runs on the runner with the epoll
 * events. */
typedef struct fh_watch {
    int fd;
    uint32_t events;
    void (*fn)(struct fh_watch *w, uint32_t events);
    void *ud;
} fh_watch;

/* A turn callback: does its work and returns how many milliseconds may
 * pass before it must run again (0: at once, -1: only after an event). It
 * returns FH_TURN_LEFT when a door call it made was detached: the runner
 * then leaves the loop without touching anything more. */
#define FH_TURN_LEFT (-2)
typedef int (*fh_turn_fn)(fh_worker *w, void *ud);

/* Runs on the runner with a frame whose call was detached, once it returned
 * (timed_out false) or once its deadline passed and the worker abandoned it
 * (timed_out true). */
typedef void (*fh_frame_fn)(fh_worker *w, fh_door_frame *f, bool timed_out);

fh_worker *fh_worker_new(unsigned index, char *err, size_t errlen);
/* After the runner has exited (fh_worker_join) and every call it waited for
 * was abandoned: frees the worker. */
void fh_worker_free(fh_worker *w);

unsigned fh_worker_index(const fh_worker *w);

/* Registration, from the runner (or before the worker starts). */
int fh_worker_watch(fh_worker *w, fh_watch *watch);
int fh_worker_rewatch(fh_worker *w, fh_watch *watch, uint32_t events);
void fh_worker_unwatch(fh_worker *w, fh_watch *watch);
int fh_worker_add_turn(fh_worker *w, fh_turn_fn fn, void *ud);

/* What the runner does last, once stopping: after the detached calls are
 * settled and the inbox has run (tear down what runs on the loop). */
void fh_worker_set_stop(fh_worker *w, void (*fn)(fh_worker *w, void *ud), void *ud);

/* Starts the first runner thread. */
int fh_worker_start(fh_worker *w, const char *name);
/* Asks the loop to end (after its current turn, running what was posted
 * before); returns at once. */
void fh_worker_request_stop(fh_worker *w);
/* fh_worker_request_stop(), then waits up to timeout_ms for the runner to
 * leave. false when it did not: the worker must then not be freed. */
bool fh_worker_stop(fh_worker *w, int timeout_ms);

/* Runner: a turn that already ran this round has work again (e.g. a timer
 * set by another turn): the loop goes round again without waiting. */
void fh_worker_nudge(fh_worker *w);

/* Runs fn(w, ud) on the runner soon. Any thread. -1 when out of memory or
 * stopping (fn is then not run). */
int fh_worker_post(fh_worker *w, void (*fn)(fh_worker *w, void *ud), void *ud);

/* ---- plugin calls (door.h) ---------------------------------------------------- */

/* The runner's frame for its next door call. */
fh_door_frame *fh_worker_frame(fh_worker *w);
/* Deadline of detached calls (hooks.deadline_ms) and what to do with them. */
void fh_worker_set_frames(fh_worker *w, uint64_t deadline_ns, fh_frame_fn fn);
/* Whether a stop was requested (frames abandoned then were not
 * late, only cut short). Any thread. */
bool fh_worker_stopping(const fh_worker *w);

/* Monitor: hands the worker to a new runner when its current call has run
 * longer than after_ns. Returns true when it did. */
bool fh_worker_handoff(fh_worker *w, uint64_t now_ns, uint64_t after_ns);

/* ---- liveness ----------------------------------------------------------------- */

/* Any thread: asks the loop to echo `seq`; fh_worker_pong() returns the
 * last echo. A loop that echoes is turning and running its inbox. */
void fh_worker_ping(fh_worker *w, uint64_t seq);
uint64_t fh_worker_pong(const fh_worker *w);

#endif
