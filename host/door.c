/*
 * door.c - the one door into plugin code (see door.h).
 *
 * The frame's state word packs a per-call sequence number with the state, so
 * a compare-and-swap by the monitor can only ever hit the call it looked at
 * (never a later call that reuses the frame). Transitions and who makes
 * them:
 *
 *   IDLE -> RUNNING            the worker's thread, entering the plugin
 *   RUNNING -> IDLE            the same thread, back from the plugin (the
 *                              common case: nothing else ever happened)
 *   RUNNING -> DETACHED        the monitor (fh_door_frame_detach)
 *   DETACHED -> RETURNED       the call's thread, back from the plugin; it
 *                              then posts the frame to the worker
 *   DETACHED -> ABANDONED      the worker, at the deadline
 *
 * Memory order: the calling thread fills the frame, then stores RUNNING with
 * release; the monitor's CAS (acquire) therefore sees the call it detaches,
 * and everything the worker's loop did before the call happens-before the
 * new runner thread the monitor starts. RETURNED is published with release
 * after the outputs are written; the worker reads it through the inbox lock.
 */
#include "door.h"

#include "crash.h"

#include "log.h"
#include "util.h"

#include <assert.h>
#include <jansson.h>
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define FRAME_MAGIC 0x46524d31u /* "FRM1" */
#define STATE_BITS  3u
#define STATE_MASK  7u

static atomic_uint stuck_threads;

static const char *const kind_names[FH_HOOK_KIND_COUNT] = {
    [FH_HOOK_DLOPEN] = "dlopen()", [FH_HOOK_ENTRY] = "entry()",
    [FH_HOOK_INIT] = "init()",     [FH_HOOK_MATCH] = "match()",
    [FH_HOOK_APPLY] = "apply()",   [FH_HOOK_EVALUATE] = "evaluate()",
    [FH_HOOK_FINI] = "fini()",     [FH_HOOK_DLCLOSE] = "dlclose()",
};

const char *fh_hook_kind_name(fh_hook_kind k)
{
    return (unsigned)k < FH_HOOK_KIND_COUNT ? kind_names[k] : "hook()";
}

unsigned fh_door_stuck_threads(void)
{
    return atomic_load(&stuck_threads);
}

/* The plugin code itself, for every kind; the only place it is entered.
 * t0: when the call started (the caller's clock reading, if it took one). */
static void invoke_at(fh_hook_call *c, uint64_t t0)
{
    const char *prev = fh_log_set_overlay(c->who);
    const fh_hook_call *outer = fh_crash_enter(c);
    switch (c->kind) {
    case FH_HOOK_DLOPEN:
        dlerror();
        c->handle_out = dlopen(c->path, c->dl_flags);
        if (!c->handle_out) {
            const char *e = dlerror();
            snprintf(c->dl_error, sizeof(c->dl_error), "%s", e ? e : "unknown error");
        }
        break;
    case FH_HOOK_ENTRY:
        c->desc_out = c->entry();
        break;
    case FH_HOOK_INIT:
        c->state_out = NULL;
        c->rc = c->desc->init(c->init_args, &c->state_out);
        break;
    case FH_HOOK_MATCH:
        c->score = c->desc->match ? c->desc->match(c->state, c->req, c->host) : 1.0;
        break;
    case FH_HOOK_APPLY:
        c->rc = c->desc->apply(c->state, c->req, c->host);
        break;
    case FH_HOOK_EVALUATE:
        memset(&c->eval, 0, sizeof(c->eval));
        c->rc = c->desc->evaluate(c->state, c->req, c->answer, c->answer_len, &c->eval, c->host);
        break;
    case FH_HOOK_FINI:
        c->desc->fini(c->state);
        break;
    case FH_HOOK_DLCLOSE:
        dlerror();
        c->rc = dlclose(c->handle);
        if (c->rc != 0) {
            const char *e = dlerror();
            snprintf(c->dl_error, sizeof(c->dl_error), "%s", e ? e : "unknown error");
        }
        break;
    case FH_HOOK_KIND_COUNT:
        break;
    }
    c->elapsed_ns = fh_now_ns() - t0;
    fh_crash_leave(outer);
    fh_log_set_overlay(prev);
}

static void invoke(fh_hook_call *c)
{
    invoke_at(c, fh_now_ns());
}

/* ---- worker calls ------------------------------------------------------------- */

static uint64_t pack(uint64_t seq, fh_frame_state s)
{
    return seq << STATE_BITS | (uint64_t)s;
}

fh_door_frame *fh_door_frame_new(void (*post)(void *, fh_door_frame *), void *post_ud)
{
    fh_door_frame *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->magic = FRAME_MAGIC;
    atomic_init(&f->word, pack(0, FH_FRAME_IDLE));
    atomic_init(&f->start_ns, 0);
    atomic_init(&f->refs, 1);
    atomic_init(&f->handed_over, false);
    f->post = post;
    f->post_ud = post_ud;
    return f;
}

void fh_door_frame_unref(fh_door_frame *f)
{
    if (!f || atomic_fetch_sub(&f->refs, 1) != 1)
        return;
    f->magic = 0;
    free(f);
}

/* The plugin returned on a thread that no longer runs its worker. */
static void returned_detached(fh_door_frame *f, uint64_t seq)
{
    fh_hook_call *c = &f->call;
    while (!atomic_load(&f->handed_over)) /* the monitor's last moments with us */
        sched_yield();
    if (c->hung)
        atomic_fetch_sub(c->hung, 1);
    uint64_t want = pack(seq, FH_FRAME_DETACHED);
    if (atomic_compare_exchange_strong(&f->word, &want, pack(seq, FH_FRAME_RETURNED))) {
        fh_info("overlay %s: %s returned after %.1f ms on a detached thread", c->who,
                fh_hook_kind_name(c->kind), (double)c->elapsed_ns / 1e6);
        f->post(f->post_ud, f); /* the thread's reference goes with it */
    } else {
        /* Abandoned at the deadline: nobody wants the result. */
        fh_warn("overlay %s: %s returned after %.1f ms, past its deadline; result dropped", c->who,
                fh_hook_kind_name(c->kind), (double)c->elapsed_ns / 1e6);
        if (c->abandon)
            c->abandon(c);
        fh_door_frame_unref(f);
    }
    atomic_fetch_sub(&stuck_threads, 1);
}

fh_door_result fh_door_run(fh_door_frame *f)
{
    assert(f->magic == FRAME_MAGIC);
    uint64_t seq = (atomic_load_explicit(&f->word, memory_order_relaxed) >> STATE_BITS) + 1;
    uint64_t t0 = fh_now_ns();
    atomic_store_explicit(&f->start_ns, t0, memory_order_relaxed);
    atomic_store_explicit(&f->word, pack(seq, FH_FRAME_RUNNING), memory_order_release);
    invoke_at(&f->call, t0);
    uint64_t want = pack(seq, FH_FRAME_RUNNING);
    if (atomic_compare_exchange_strong_explicit(&f->word, &want, pack(seq, FH_FRAME_IDLE),
                                                memory_order_acq_rel, memory_order_acquire))
        return FH_DOOR_OK;
    returned_detached(f, seq);
    return FH_DOOR_DETACHED;
}

bool fh_door_frame_detach(fh_door_frame *f, uint64_t now_ns, uint64_t after_ns)
{
    uint64_t word = atomic_load_explicit(&f->word, memory_order_acquire);
    if ((word & STATE_MASK) != FH_FRAME_RUNNING)
        return false;
    uint64_t start = atomic_load_explicit(&f->start_ns, memory_order_relaxed);
    /* The start time read must belong to the call of `word`: read the word
     * again; a new call in between changed its sequence number. */
    if (atomic_load_explicit(&f->word, memory_order_acquire) != word || now_ns < start ||
        now_ns - start < after_ns)
        return false;
    atomic_fetch_add(&f->refs, 1); /* the worker's, taken before anyone can drop one */
    uint64_t want = word;
    if (!atomic_compare_exchange_strong_explicit(&f->word, &want,
                                                 (word & ~(uint64_t)STATE_MASK) | FH_FRAME_DETACHED,
                                                 memory_order_acq_rel, memory_order_acquire)) {
        atomic_fetch_sub(&f->refs, 1); /* returned meanwhile: still ours alone */
        return false;
    }
    if (f->call.hung)
        atomic_fetch_add(f->call.hung, 1);
    atomic_fetch_add(&stuck_threads, 1);
    return true;
}

void fh_door_frame_handed_over(fh_door_frame *f)
{
    atomic_store(&f->handed_over, true);
}

bool fh_door_frame_abandon(fh_door_frame *f)
{
    uint64_t word = atomic_load_explicit(&f->word, memory_order_acquire);
    if ((word & STATE_MASK) != FH_FRAME_DETACHED)
        return false;
    return atomic_compare_exchange_strong_explicit(
        &f->word, &word, (word & ~(uint64_t)STATE_MASK) | FH_FRAME_ABANDONED, memory_order_acq_rel,
        memory_order_acquire);
}

/* ---- control calls --------------------------------------------------------------- */

/* One control call and what it must keep alive should it be abandoned. */
typedef struct box {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC */
    int refs;          /* under mu: the caller's and the helper's */
    bool done, abandoned;
    fh_hook_call call;
    /* init: private copies of the arguments, valid as long as the box. */
    fusion_init_args init;
    char *config_json;
    json_t *config_tree; /* 1.1: what the config_*() accessors read */
    fusion_directive *directives;
    char error[512];
} box;

static void box_free(box *b)
{
    if (b->directives)
        for (size_t i = 0; i < b->init.directive_count; i++) {
            free((char *)b->directives[i].name);
            free((char *)b->directives[i].text);
        }
    free(b->directives);
    free(b->config_json);
    json_decref(b->config_tree);
    pthread_cond_destroy(&b->cv);
    pthread_mutex_destroy(&b->mu);
    free(b);
}

static void box_unref(box *b)
{
    pthread_mutex_lock(&b->mu);
    int left = --b->refs;
    pthread_mutex_unlock(&b->mu);
    if (left == 0)
        box_free(b);
}

/* init() may keep reading its arguments after we gave up on it: give it
 * copies that live as long as the box. */
static int copy_init_args(box *b, const fusion_init_args *a)
{
    b->init = *a;
    b->config_json = strndup(a->config_json ? a->config_json : "{}", a->config_len);
    if (!b->config_json)
        return -1;
    b->init.config_json = b->config_json;
    if (a->size >= offsetof(fusion_init_args, host_config) + sizeof(a->host_config) &&
        a->host_config) {
        b->config_tree = json_deep_copy(a->host_config);
        b->init.host_config = b->config_tree;
    }
    b->init.error = b->error;
    b->init.error_size = sizeof(b->error);
    if (a->directive_count) {
        b->directives = calloc(a->directive_count, sizeof(*b->directives));
        if (!b->directives)
            return -1;
        for (size_t i = 0; i < a->directive_count; i++) {
            b->directives[i].name = strdup(a->directives[i].name ? a->directives[i].name : "");
            b->directives[i].text = strndup(a->directives[i].text ? a->directives[i].text : "",
                                            a->directives[i].text_len);
            b->directives[i].text_len = a->directives[i].text_len;
            if (!b->directives[i].name || !b->directives[i].text)
                return -1;
        }
        b->init.directives = b->directives;
    }
    b->call.init_args = &b->init;
    return 0;
}

static void *helper_main(void *p)
{
    box *b = p;
    fh_crash_thread_init();
    invoke(&b->call);
    pthread_mutex_lock(&b->mu);
    b->done = true;
    bool abandoned = b->abandoned;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
    if (abandoned) {
        fh_warn("overlay %s: %s returned after %.1f ms, past its deadline; result dropped",
                b->call.who, fh_hook_kind_name(b->call.kind), (double)b->call.elapsed_ns / 1e6);
        if (b->call.abandon)
            b->call.abandon(&b->call);
        atomic_fetch_sub(&stuck_threads, 1);
    }
    box_unref(b);
    return NULL;
}

fh_door_result fh_door_call(fh_hook_call *c, int deadline_ms)
{
    if (deadline_ms <= 0) {
        invoke(c); /* no deadline to enforce: no helper thread either */
        return FH_DOOR_OK;
    }
    box *b = calloc(1, sizeof(*b));
    if (!b) {
        invoke(c); /* no memory for a helper: run it here rather than not at all */
        return FH_DOOR_OK;
    }
    pthread_mutex_init(&b->mu, NULL);
    fh_cond_init_monotonic(&b->cv);
    b->refs = 2;
    b->call = *c;
    pthread_t th;
    if ((c->kind == FH_HOOK_INIT && copy_init_args(b, c->init_args) != 0) ||
        pthread_create(&th, NULL, helper_main, b) != 0) {
        /* Out of memory or threads: run it on this thread, unguarded. */
        box_free(b);
        invoke(c);
        return FH_DOOR_OK;
    }
    struct timespec deadline;
    fh_deadline_after(&deadline, deadline_ms);
    pthread_mutex_lock(&b->mu);
    while (!b->done) {
        int rc = pthread_cond_timedwait(&b->cv, &b->mu, &deadline);
        if (rc == ETIMEDOUT && !b->done) {
            b->abandoned = true;
            /* Counted under the lock: the helper uncounts under it too. */
            atomic_fetch_add(&stuck_threads, 1);
            break;
        }
    }
    bool abandoned = b->abandoned;
    pthread_mutex_unlock(&b->mu);
    if (abandoned) {
        pthread_detach(th);
        fh_error("overlay %s: %s did not return within %d ms (hooks.deadline_ms); abandoned its "
                 "thread, the plugin stays mapped",
                 c->who, fh_hook_kind_name(c->kind), deadline_ms);
        box_unref(b);
        return FH_DOOR_TIMEOUT;
    }
    pthread_join(th, NULL);
    /* Outputs back; the inputs were the caller's all along. */
    c->rc = b->call.rc;
    c->score = b->call.score;
    c->state_out = b->call.state_out;
    c->handle_out = b->call.handle_out;
    c->desc_out = b->call.desc_out;
    c->eval = b->call.eval;
    memcpy(c->dl_error, b->call.dl_error, sizeof(c->dl_error));
    c->elapsed_ns = b->call.elapsed_ns;
    if (c->kind == FH_HOOK_INIT && c->init_args->error && c->init_args->error_size) {
        b->error[sizeof(b->error) - 1] = '\0';
        snprintf(c->init_args->error, c->init_args->error_size, "%s", b->error);
    }
    box_unref(b);
    return FH_DOOR_OK;
}
