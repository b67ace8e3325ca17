/*
 * timer.h - wakes suspended connections at their deadline.
 *
 * A handler or content reader that has to wait (a delayed answer, the gap
 * between two stream chunks, a stalled stream) parks its connection here:
 * stub_timer_park() suspends it and the single timer thread resumes it at
 * the deadline. No thread ever sleeps on behalf of a request.
 */
#ifndef STUB_TIMER_H
#define STUB_TIMER_H

#include <microhttpd.h>
#include <stddef.h>
#include <stdint.h>

/* Lives inside the object that waits (request or stream); the timer only
 * points at it while it is parked. */
struct stub_wait {
    struct MHD_Connection *conn;
    uint64_t due_ms;
    size_t slot; /* index in the heap, STUB_WAIT_IDLE when not parked */
};
#define STUB_WAIT_IDLE ((size_t)-1)

struct stub_timer;

/* Milliseconds on the monotonic clock (rounded down). */
uint64_t stub_now_ms(void);

/* The deadline `delay_ms` from now, rounded up so that a wait never ends
 * before the full delay has passed. */
uint64_t stub_deadline_ms(uint64_t delay_ms);

/* Starts the timer thread. Returns NULL (errno set) on failure. */
struct stub_timer *stub_timer_start(void);

/*
 * From an access handler or content reader of `conn` (the only places MHD
 * allows suspending): suspends `conn` and resumes it at `due_ms`. Returns
 * 0 when parked; 1 after stub_timer_resume_all() (shutting down) and -1 when
 * out of memory: then nothing is suspended and the caller must end the
 * request rather than ask to be called again.
 */
int stub_timer_park(struct stub_timer *t, struct stub_wait *w, struct MHD_Connection *conn,
                    uint64_t due_ms);

/* Shutdown: resumes every parked connection now and refuses later parks,
 * so once stub_timer_parked() is 0 MHD_stop_daemon finds nothing
 * suspended. */
void stub_timer_resume_all(struct stub_timer *t);

/* Connections currently parked (suspended and waiting). */
size_t stub_timer_parked(struct stub_timer *t);

/* Stops and joins the thread; frees the timer. Call after MHD_stop_daemon
 * (no callback may park any more). */
void stub_timer_stop(struct stub_timer *t);

#endif
