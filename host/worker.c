/*
 * worker.c - one worker's event loop and runner threads (see worker.h).
 *
 * Locks: `mu` guards the inbox (closures and returned frames), `runner`,
 * `exited` and `stopping`. The detached list and everything registered with
 * the loop are the runner's alone. `frame` and `epoch` are atomics: the
 * monitor swaps them in fh_worker_handoff() while the old runner is inside
 * plugin code and before the new runner exists, so no runner ever sees them
 * change under it; pthread_create() orders the swap before the new runner's
 * first instruction.
 */
#include "worker.h"

#include "crash.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define MAX_TURNS   8
#define MAX_EVENTS  128
#define MAX_WAIT_MS 1000 /* a turn at least this often, events or not */

typedef struct msg {
    void (*fn)(fh_worker *w, void *ud);
    void *ud;
    struct msg *next;
} msg;

struct fh_worker {
    unsigned index;
    int epfd;
    fh_watch wake;
    struct {
        fh_turn_fn fn;
        void *ud;
    } turns[MAX_TURNS];
    size_t nturns;

    pthread_mutex_t mu;
    pthread_cond_t exited_cv;
    msg *msgs, *msgs_tail;   /* mu */
    fh_door_frame *returned; /* mu: frames posted back, linked by `posted_next` */
    pthread_t runner;        /* mu */
    bool started, exited;    /* mu */
    bool orphaned;           /* mu: handed off, but no thread could be started */
    atomic_bool stopping;
    char name[16];

    _Atomic(fh_door_frame *) frame;
    fh_door_frame *spare; /* monitor only: the next `frame`, made ahead of a hand-off */
    atomic_uint_fast64_t epoch;
    atomic_uint_fast64_t ping, pong;

    /* Runner only. */
    bool nudged; /* a turn has work again before the next wait */
    /* Watches removed while a batch of events is dispatched: the batch may
     * still name them (and their memory may be gone). */
    bool dispatching;
    fh_watch **dead;
    size_t ndead, dead_cap;
    void (*stop_fn)(fh_worker *w, void *ud);
    void *stop_ud;
    fh_door_frame *detached; /* linked by `next` */
    uint64_t frame_deadline_ns;
    fh_frame_fn frame_fn;
};

static void wake(fh_worker *w)
{
    uint64_t one = 1;
    ssize_t n = write(w->wake.fd, &one, sizeof(one));
    (void)n; /* EAGAIN: the counter is already non-zero, the loop will wake */
}

static void on_wake(fh_watch *watch, uint32_t events)
{
    (void)events;
    uint64_t v;
    ssize_t n = read(watch->fd, &v, sizeof(v));
    (void)n;
}

/* A door frame's RETURNED post: hand it to the runner. Any thread. */
static void frame_post(void *ud, fh_door_frame *f)
{
    fh_worker *w = ud;
    pthread_mutex_lock(&w->mu);
    f->posted_next = w->returned;
    w->returned = f;
    /* Woken before unlocking: the runner cannot take the frame, settle
     * and let the worker be freed while this thread still writes to it. */
    wake(w);
    pthread_mutex_unlock(&w->mu);
}

fh_worker *fh_worker_new(unsigned index, char *err, size_t errlen)
{
    fh_worker *w = calloc(1, sizeof(*w));
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    w->index = index;
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    w->wake.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    w->wake.events = EPOLLIN;
    w->wake.fn = on_wake;
    fh_door_frame *f = fh_door_frame_new(frame_post, w);
    if (w->epfd < 0 || w->wake.fd < 0 || !f) {
        snprintf(err, errlen, "cannot create worker %u's event loop: %s", index,
                 f ? strerror(errno) : "out of memory");
        if (w->epfd >= 0)
            close(w->epfd);
        if (w->wake.fd >= 0)
            close(w->wake.fd);
        fh_door_frame_unref(f);
        free(w);
        return NULL;
    }
    atomic_init(&w->frame, f);
    atomic_init(&w->epoch, 1);
    atomic_init(&w->ping, 0);
    atomic_init(&w->pong, 0);
    atomic_init(&w->stopping, false);
    pthread_mutex_init(&w->mu, NULL);
    fh_cond_init_monotonic(&w->exited_cv);
    if (fh_worker_watch(w, &w->wake) != 0) {
        snprintf(err, errlen, "cannot watch worker %u's wake-up descriptor: %s", index,
                 strerror(errno));
        fh_worker_free(w);
        return NULL;
    }
    return w;
}

void fh_worker_free(fh_worker *w)
{
    if (!w)
        return;
    while (w->msgs) {
        msg *m = w->msgs;
        w->msgs = m->next;
        free(m);
    }
    fh_door_frame_unref(atomic_load(&w->frame));
    fh_door_frame_unref(w->spare);
    free(w->dead);
    close(w->wake.fd);
    close(w->epfd);
    pthread_cond_destroy(&w->exited_cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

unsigned fh_worker_index(const fh_worker *w)
{
    return w->index;
}

int fh_worker_watch(fh_worker *w, fh_watch *watch)
{
    struct epoll_event ev = {.events = watch->events, .data.ptr = watch};
    return epoll_ctl(w->epfd, EPOLL_CTL_ADD, watch->fd, &ev);
}

int fh_worker_rewatch(fh_worker *w, fh_watch *watch, uint32_t events)
{
    watch->events = events;
    struct epoll_event ev = {.events = events, .data.ptr = watch};
    return epoll_ctl(w->epfd, EPOLL_CTL_MOD, watch->fd, &ev);
}

void fh_worker_unwatch(fh_worker *w, fh_watch *watch)
{
    epoll_ctl(w->epfd, EPOLL_CTL_DEL, watch->fd, NULL); /* ENOENT/EBADF: gone already */
    if (!w->dispatching)
        return;
    if (w->ndead == w->dead_cap) {
        size_t cap = w->dead_cap ? 2 * w->dead_cap : 16;
        fh_watch **grown = realloc(w->dead, cap * sizeof(*grown));
        if (!grown) {
            /* Cannot remember it: stop dispatching this batch (its events
             * come again, level-triggered, or were for a dead socket). */
            w->dispatching = false;
            return;
        }
        w->dead = grown;
        w->dead_cap = cap;
    }
    w->dead[w->ndead++] = watch;
}

static bool is_dead(const fh_worker *w, const fh_watch *watch)
{
    for (size_t i = 0; i < w->ndead; i++)
        if (w->dead[i] == watch)
            return true;
    return false;
}

void fh_worker_set_stop(fh_worker *w, void (*fn)(fh_worker *w, void *ud), void *ud)
{
    w->stop_fn = fn;
    w->stop_ud = ud;
}

int fh_worker_add_turn(fh_worker *w, fh_turn_fn fn, void *ud)
{
    if (w->nturns == MAX_TURNS)
        return -1;
    w->turns[w->nturns].fn = fn;
    w->turns[w->nturns].ud = ud;
    w->nturns++;
    return 0;
}

int fh_worker_post(fh_worker *w, void (*fn)(fh_worker *w, void *ud), void *ud)
{
    msg *m = malloc(sizeof(*m));
    if (!m)
        return -1;
    m->fn = fn;
    m->ud = ud;
    m->next = NULL;
    pthread_mutex_lock(&w->mu);
    if (w->exited || atomic_load(&w->stopping)) {
        /* Stopping: nothing posted now would run before the worker goes. */
        pthread_mutex_unlock(&w->mu);
        free(m);
        return -1;
    }
    if (w->msgs_tail)
        w->msgs_tail->next = m;
    else
        w->msgs = m;
    w->msgs_tail = m;
    pthread_mutex_unlock(&w->mu);
    wake(w);
    return 0;
}

/* ---- detached calls (runner) ---------------------------------------------------- */

void fh_worker_set_frames(fh_worker *w, uint64_t deadline_ns, fh_frame_fn fn)
{
    w->frame_deadline_ns = deadline_ns;
    w->frame_fn = fn;
}

bool fh_worker_stopping(const fh_worker *w)
{
    return atomic_load(&((fh_worker *)w)->stopping);
}

fh_door_frame *fh_worker_frame(fh_worker *w)
{
    return atomic_load_explicit(&w->frame, memory_order_relaxed);
}

static void unlink_detached(fh_worker *w, fh_door_frame *f)
{
    for (fh_door_frame **pp = &w->detached; *pp; pp = &(*pp)->next) {
        if (*pp == f) {
            *pp = f->next;
            f->next = NULL;
            return;
        }
    }
}

/* Frames whose calls came back (taken from the inbox): continue their
 * requests. */
static void resume_returned(fh_worker *w, fh_door_frame *list)
{
    while (list) {
        fh_door_frame *f = list;
        list = f->posted_next;
        unlink_detached(w, f);
        if (w->frame_fn)
            w->frame_fn(w, f, false);
        fh_door_frame_unref(f); /* the returning thread's reference */
        fh_door_frame_unref(f); /* ours */
    }
}

/* Abandons the detached calls past their deadline (all of them when
 * `all`); returns ms until the next deadline, or -1. */
static int expire_detached(fh_worker *w, bool all)
{
    if (!w->detached)
        return -1;
    uint64_t now = fh_now_ns();
    uint64_t next = 0;
    for (fh_door_frame *f = w->detached, *nx; f; f = nx) {
        nx = f->next;
        if (!all && now < f->deadline_ns) {
            if (!next || f->deadline_ns < next)
                next = f->deadline_ns;
            continue;
        }
        if (!fh_door_frame_abandon(f))
            continue; /* it returned meanwhile: its post is on the way */
        unlink_detached(w, f);
        if (w->frame_fn)
            w->frame_fn(w, f, true);
        fh_door_frame_unref(f); /* ours; the abandoned call keeps its own */
    }
    return next ? (int)((next - now) / 1000000u) + 1 : -1;
}

/* ---- the loop ------------------------------------------------------------------- */

/* Posted closures, then returned frames: both lists taken at once. */
static void run_inbox(fh_worker *w)
{
    atomic_store(&w->pong, atomic_load(&w->ping));
    pthread_mutex_lock(&w->mu);
    msg *m = w->msgs;
    w->msgs = w->msgs_tail = NULL;
    fh_door_frame *returned = w->returned;
    w->returned = NULL;
    pthread_mutex_unlock(&w->mu);
    while (m) {
        msg *next = m->next;
        m->fn(w, m->ud);
        free(m);
        m = next;
    }
    resume_returned(w, returned);
}

static int min_wait(int a, int b)
{
    if (a < 0)
        return b;
    if (b < 0)
        return a;
    return a < b ? a : b;
}

/* Returns false when this thread stopped being the runner (a door call it
 * made was detached): it must then leave without touching the worker. */
static bool loop(fh_worker *w, uint64_t epoch)
{
    struct epoll_event ev[MAX_EVENTS];
    int wait_ms = 0;
    while (!atomic_load(&w->stopping)) {
        int n = epoll_wait(w->epfd, ev, MAX_EVENTS, wait_ms);
        w->dispatching = true;
        w->ndead = 0;
        for (int i = 0; i < n && w->dispatching; i++) {
            fh_watch *watch = ev[i].data.ptr;
            if (!is_dead(w, watch))
                watch->fn(watch, ev[i].events);
        }
        w->dispatching = false;
        run_inbox(w);
        wait_ms = expire_detached(w, false);
        for (size_t i = 0; i < w->nturns; i++) {
            int r = w->turns[i].fn(w, w->turns[i].ud);
            if (r == FH_TURN_LEFT || atomic_load(&w->epoch) != epoch)
                return false;
            wait_ms = min_wait(wait_ms, r);
        }
        if (w->nudged) {
            w->nudged = false;
            wait_ms = 0;
        }
        wait_ms = min_wait(wait_ms, MAX_WAIT_MS);
    }
    return true;
}

/* Stopping: every call still detached is abandoned (or, if it returned
 * meanwhile, taken back), so no thread can post to this worker once it is
 * freed. */
static void settle_detached(fh_worker *w)
{
    while (w->detached) {
        run_inbox(w); /* returned frames, and what was posted before the stop */
        expire_detached(w, true);
        if (w->detached) {
            struct timespec ts = {0, 1000000}; /* a returning call posts within moments */
            nanosleep(&ts, NULL);
        }
    }
}

static void *runner_main(void *p)
{
    fh_worker *w = p;
    fh_crash_thread_init(); /* plugin code runs inline here */
    uint64_t epoch = atomic_load(&w->epoch);
    if (!loop(w, epoch))
        return NULL; /* left inside plugin code; the worker is another thread's */
    settle_detached(w);
    run_inbox(w); /* what was posted before the stop */
    if (w->stop_fn)
        w->stop_fn(w, w->stop_ud);
    pthread_mutex_lock(&w->mu);
    w->exited = true;
    pthread_cond_broadcast(&w->exited_cv);
    pthread_mutex_unlock(&w->mu);
    return NULL;
}

/* Starts a detached runner thread. Under w->mu. */
static int spawn_runner(fh_worker *w)
{
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_t t;
    int rc = pthread_create(&t, &a, runner_main, w);
    pthread_attr_destroy(&a);
    if (rc != 0)
        return rc;
    pthread_setname_np(t, w->name);
    w->runner = t;
    return 0;
}

int fh_worker_start(fh_worker *w, const char *name)
{
    snprintf(w->name, sizeof(w->name), "%s", name);
    pthread_mutex_lock(&w->mu);
    int rc = spawn_runner(w);
    w->started = rc == 0;
    pthread_mutex_unlock(&w->mu);
    return rc;
}

void fh_worker_request_stop(fh_worker *w)
{
    atomic_store(&w->stopping, true);
    wake(w);
}

bool fh_worker_stop(fh_worker *w, int timeout_ms)
{
    if (!w)
        return true;
    fh_worker_request_stop(w);
    struct timespec deadline;
    fh_deadline_after(&deadline, timeout_ms);
    pthread_mutex_lock(&w->mu);
    while (w->started && !w->exited &&
           pthread_cond_timedwait(&w->exited_cv, &w->mu, &deadline) != ETIMEDOUT)
        ;
    bool done = !w->started || w->exited;
    w->exited = true; /* nothing is posted any more either way */
    pthread_mutex_unlock(&w->mu);
    return done;
}

bool fh_worker_handoff(fh_worker *w, uint64_t now_ns, uint64_t after_ns)
{
    pthread_mutex_lock(&w->mu);
    if (w->orphaned && spawn_runner(w) == 0) {
        w->orphaned = false;
        fh_info("worker %u: runs again on a new thread", w->index);
    }
    pthread_mutex_unlock(&w->mu);
    /* The replacement frame is made ahead, not on every tick. */
    if (!w->spare && !(w->spare = fh_door_frame_new(frame_post, w)))
        return false; /* try again on the next tick */
    fh_door_frame *f = atomic_load(&w->frame);
    if (!fh_door_frame_detach(f, now_ns, after_ns))
        return false;
    /* Nobody runs the loop now: the old runner is inside the plugin and
     * the new one does not exist yet. */
    uint64_t start = atomic_load(&f->start_ns);
    f->deadline_ns = start + w->frame_deadline_ns;
    f->next = w->detached;
    w->detached = f;
    atomic_store(&w->frame, w->spare);
    w->spare = NULL;
    atomic_fetch_add(&w->epoch, 1);
    pthread_mutex_lock(&w->mu);
    pthread_t old = w->runner;
    int rc = spawn_runner(w);
    w->orphaned = rc != 0;
    pthread_mutex_unlock(&w->mu);
    /* The old thread cannot exit before handed_over: naming it is safe. */
    char stuck[32]; /* the kernel keeps 15 characters */
    snprintf(stuck, sizeof(stuck), "fh-hook-%u", w->index % 1000);
    pthread_setname_np(old, stuck);
    fh_warn("worker %u: overlay %s: %s has held its thread for %.0f ms; the worker goes on on a "
            "new thread (%s)",
            w->index, f->call.who, fh_hook_kind_name(f->call.kind), (double)(now_ns - start) / 1e6,
            rc == 0 ? "started" : strerror(rc));
    fh_door_frame_handed_over(f); /* f is the worker's and the call's from here on */
    if (rc != 0)
        fh_error("worker %u: cannot start a thread (%s); its requests stall until one can be "
                 "started (retried every few ms)",
                 w->index, strerror(rc));
    return true;
}

void fh_worker_nudge(fh_worker *w)
{
    w->nudged = true;
}

void fh_worker_ping(fh_worker *w, uint64_t seq)
{
    atomic_store(&w->ping, seq);
    wake(w);
}

uint64_t fh_worker_pong(const fh_worker *w)
{
    return atomic_load(&((fh_worker *)w)->pong);
}
