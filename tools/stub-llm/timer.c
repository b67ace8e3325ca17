/*
 * timer.c - one thread and a binary min-heap of parked connections ordered
 * by deadline.
 *
 * Owns: the heap (pointers to struct stub_wait living in request/stream
 * objects), the thread, the mutex and condition variable.
 * Threads: stub_timer_park() runs on the MHD thread, the timer thread pops
 * and resumes; both under `lock`. A parked stub_wait belongs to a suspended
 * connection, and MHD neither calls nor frees a suspended connection, so
 * the object holding it stays alive until the timer thread resumes it. The
 * timer thread clears `slot` before MHD_resume_connection() and never
 * touches the wait after it: from then on the MHD thread may free it.
 * Shutdown: once `draining` is set (under the lock) nothing new is
 * suspended, so after the heap empties no connection is suspended and
 * MHD_stop_daemon may run.
 */
#include "timer.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

struct stub_timer {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond; /* CLOCK_MONOTONIC: a new earliest deadline or stop */
    struct stub_wait **heap;
    size_t n, cap;
    int draining; /* resume_all called: park refuses, the heap empties */
    int stop;
};

uint64_t stub_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t stub_deadline_ms(uint64_t delay_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000u + ((uint64_t)ts.tv_nsec + 999999u) / 1000000u;
    return ms + delay_ms;
}

static void heap_set(struct stub_timer *t, size_t i, struct stub_wait *w)
{
    t->heap[i] = w;
    w->slot = i;
}

static void sift_up(struct stub_timer *t, size_t i)
{
    struct stub_wait *w = t->heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (t->heap[parent]->due_ms <= w->due_ms)
            break;
        heap_set(t, i, t->heap[parent]);
        i = parent;
    }
    heap_set(t, i, w);
}

static void sift_down(struct stub_timer *t, size_t i)
{
    struct stub_wait *w = t->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= t->n)
            break;
        if (c + 1 < t->n && t->heap[c + 1]->due_ms < t->heap[c]->due_ms)
            c++;
        if (w->due_ms <= t->heap[c]->due_ms)
            break;
        heap_set(t, i, t->heap[c]);
        i = c;
    }
    heap_set(t, i, w);
}

/* Removes and returns the earliest wait; caller holds the lock, n > 0. */
static struct stub_wait *heap_pop(struct stub_timer *t)
{
    struct stub_wait *top = t->heap[0];
    t->n--;
    if (t->n > 0) {
        t->heap[0] = t->heap[t->n];
        sift_down(t, 0);
    }
    top->slot = STUB_WAIT_IDLE;
    return top;
}

static void *timer_main(void *arg)
{
    struct stub_timer *t = arg;
    pthread_mutex_lock(&t->lock);
    while (!t->stop) {
        if (t->n == 0) {
            pthread_cond_wait(&t->cond, &t->lock);
            continue;
        }
        uint64_t now = stub_now_ms();
        uint64_t due = t->heap[0]->due_ms;
        if (due > now && !t->draining) {
            struct timespec ts = {.tv_sec = (time_t)(due / 1000),
                                  .tv_nsec = (long)(due % 1000) * 1000000L};
            pthread_cond_timedwait(&t->cond, &t->lock, &ts);
            continue;
        }
        struct MHD_Connection *conn = heap_pop(t)->conn;
        /* Resuming only flags the connection and wakes MHD's loop, so it
         * is cheap enough to do under the lock. */
        MHD_resume_connection(conn);
    }
    pthread_mutex_unlock(&t->lock);
    return NULL;
}

struct stub_timer *stub_timer_start(void)
{
    struct stub_timer *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    pthread_condattr_t attr;
    int err = pthread_condattr_init(&attr);
    if (!err) {
        err = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        if (!err)
            err = pthread_cond_init(&t->cond, &attr);
        pthread_condattr_destroy(&attr);
    }
    if (err) {
        free(t);
        errno = err;
        return NULL;
    }
    pthread_mutex_init(&t->lock, NULL);
    err = pthread_create(&t->thread, NULL, timer_main, t);
    if (err) {
        pthread_cond_destroy(&t->cond);
        pthread_mutex_destroy(&t->lock);
        free(t);
        errno = err;
        return NULL;
    }
    return t;
}

int stub_timer_park(struct stub_timer *t, struct stub_wait *w, struct MHD_Connection *conn,
                    uint64_t due_ms)
{
    pthread_mutex_lock(&t->lock);
    if (t->draining) {
        pthread_mutex_unlock(&t->lock);
        return 1;
    }
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 1024;
        struct stub_wait **heap = realloc(t->heap, cap * sizeof *heap);
        if (!heap) {
            pthread_mutex_unlock(&t->lock);
            return -1;
        }
        t->heap = heap;
        t->cap = cap;
    }
    /* Suspend before the wait becomes visible to the timer thread, which
     * may resume it the moment the lock is released. */
    MHD_suspend_connection(conn);
    w->conn = conn;
    w->due_ms = due_ms;
    t->heap[t->n] = w;
    w->slot = t->n++;
    sift_up(t, w->slot);
    if (w->slot == 0)
        pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
    return 0;
}

void stub_timer_resume_all(struct stub_timer *t)
{
    pthread_mutex_lock(&t->lock);
    t->draining = 1;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
}

size_t stub_timer_parked(struct stub_timer *t)
{
    pthread_mutex_lock(&t->lock);
    size_t n = t->n;
    pthread_mutex_unlock(&t->lock);
    return n;
}

void stub_timer_stop(struct stub_timer *t)
{
    pthread_mutex_lock(&t->lock);
    t->stop = 1;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
    pthread_join(t->thread, NULL);
    free(t->heap);
    pthread_cond_destroy(&t->cond);
    pthread_mutex_destroy(&t->lock);
    free(t);
}
