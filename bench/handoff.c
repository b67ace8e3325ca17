/*
 * handoff.c - what it costs to run a plugin hook on another thread (a hook
 * pool) rather than inline on the worker: the round trip of handing a job
 * to a thread that waits on an eventfd and getting the answer back the same
 * way, against a plain function call. The design note in
 * docs/architecture.md quotes its numbers.
 *   cc -O2 -pthread bench/handoff.c -o /tmp/handoff && /tmp/handoff [N]
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

static int to_pool, to_worker;
static volatile long sink;

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

__attribute__((noinline)) static long hook(long x)
{
    return x * 2 + 1; /* the hook's own work is not what is measured */
}

static void *pool(void *p)
{
    (void)p;
    uint64_t v;
    for (;;) {
        if (read(to_pool, &v, sizeof(v)) != sizeof(v))
            return NULL;
        sink = hook((long)v);
        v = 1;
        if (write(to_worker, &v, sizeof(v)) != sizeof(v))
            return NULL;
    }
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 200000;
    to_pool = eventfd(0, 0);
    to_worker = eventfd(0, 0);
    pthread_t t;
    pthread_create(&t, NULL, pool, NULL);
    double t0 = now_us();
    for (long i = 0; i < n; i++)
        sink = hook(i);
    double inline_us = (now_us() - t0) / (double)n;
    t0 = now_us();
    for (long i = 0; i < n; i++) {
        uint64_t v = (uint64_t)i + 1;
        if (write(to_pool, &v, sizeof(v)) != sizeof(v) ||
            read(to_worker, &v, sizeof(v)) != sizeof(v))
            return 1;
    }
    double pool_us = (now_us() - t0) / (double)n;
    printf("inline call: %.3f us; hand-off to a pool thread and back: %.2f us per hook call\n",
           inline_us, pool_us);
    return 0;
}
