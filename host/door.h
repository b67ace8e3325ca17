/*
 * door.h - the one door into plugin code.
 *
 * Every call into an overlay plugin goes through here: the constructors its
 * dlopen() runs, its entry function, init(), match(), apply(), evaluate(),
 * fini() and the destructors dlclose() runs. The door
 *   - attributes the call: the thread's log attribution (and the crash
 *     context) names the overlay while its code runs;
 *   - times it (fh_hook_call.elapsed_ns, charged to the overlay by the
 *     gates);
 *   - enforces the deadline (hooks.deadline_ms).
 *
 * There are two ways through it.
 *
 * Worker calls (match, apply, evaluate on the request path) run inline on
 * the worker thread that owns the request: no hand-off, no context switch.
 * The worker's current frame records the call (state RUNNING, start time).
 * A monitor thread (workers.c) watches the frames: a call that holds its
 * thread past the hand-off point is DETACHED - the worker's event loop moves
 * to a fresh thread at once and the old thread stays with the plugin. If the
 * call then returns, its thread posts the frame back to the worker
 * (RETURNED) and exits; the worker continues the request with the result.
 * If the deadline passes first, the worker ABANDONS the frame, serves the
 * request its baseline (hook_timeout) and quarantines the overlay; should
 * the plugin ever return, its thread frees what the call held and exits.
 * Whoever loses the race for the frame's state word (one CAS) backs off, so
 * every outcome happens exactly once.
 *
 * Control calls (dlopen, entry, init, fini, dlclose, and the offline
 * commands' hooks) run on a short-lived helper thread that the caller waits
 * for, up to the deadline; past it the helper is abandoned the same way.
 *
 * Ownership: while a call runs, the call owns what the plugin can touch -
 * the request, the answer buffer, the generation reference (fh_hook_call's
 * owned fields). An attached call gives them back when it returns; an
 * abandoned one frees them with its `abandon` callback if the plugin ever
 * returns, and never otherwise (the generation's reference keeps its code
 * mapped for good).
 *
 * Threads: a frame's state word and start time are atomics, shared by the
 * thread running the call, the monitor and the worker; everything else in a
 * frame belongs to the thread running the call until the state word says it
 * has been handed over (RETURNED: to the worker; ABANDONED: to the calling
 * thread). Control calls: the box is shared by the caller and the helper
 * under the box's mutex.
 */
#ifndef FH_DOOR_H
#define FH_DOOR_H

#include "fusion/overlay.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum fh_hook_kind {
    FH_HOOK_DLOPEN = 0,
    FH_HOOK_ENTRY,
    FH_HOOK_INIT,
    FH_HOOK_MATCH,
    FH_HOOK_APPLY,
    FH_HOOK_EVALUATE,
    FH_HOOK_FINI,
    FH_HOOK_DLCLOSE,
    FH_HOOK_KIND_COUNT
} fh_hook_kind;

/* "apply()", "dlopen()", ... for log lines. */
const char *fh_hook_kind_name(fh_hook_kind k);

typedef struct fh_hook_call fh_hook_call;

struct fh_hook_call {
    fh_hook_kind kind;
    char who[FUSION_NAME_MAX + 1]; /* attribution: the overlay (or file) name */
    /* For the crash journal (crash.h): borrowed from the generation, which
     * the call's reference keeps; NULL before the plugin is identified. */
    const char *version;
    const char *sha256;

    /* The plugin, for the hooks. */
    const fusion_overlay_descriptor *desc;
    void *state;
    const fusion_host_api *host;

    /* Inputs. Owned by the call while it runs (see the file comment). */
    fusion_request *req; /* match, apply, evaluate */
    char *answer;        /* evaluate: the text scored */
    size_t answer_len;   /* (answer_owned: free() it with the call) */
    bool answer_owned;   /* whether `answer` is the call's to free */
    void *gen;           /* the caller's reference on the plugin (opaque) */
    atomic_int *hung;    /* the plugin's count of detached calls, or NULL */
    const char *path;    /* dlopen: the file */
    int dl_flags;        /* dlopen */
    void *handle;        /* dlclose */
    fusion_overlay_entry_fn entry;
    const fusion_init_args *init_args; /* init: deep-copied for control calls */

    /* Outputs, valid once the call returned (FH_DOOR_OK, or RETURNED). */
    int rc;                                    /* init, apply, evaluate, dlclose */
    double score;                              /* match */
    void *state_out;                           /* init */
    void *handle_out;                          /* dlopen */
    const fusion_overlay_descriptor *desc_out; /* entry */
    fusion_evaluation eval;                    /* evaluate (zeroed first) */
    char dl_error[512]; /* dlopen, dlclose: dlerror() (thread-local, so copied) */
    uint64_t elapsed_ns;

    /* Frees the owned inputs of an abandoned call whose plugin returned at
     * last (never called otherwise). Runs on that call's thread. */
    void (*abandon)(fh_hook_call *c);
};

typedef enum fh_door_result {
    FH_DOOR_OK = 0,   /* returned; outputs valid; owned inputs are the caller's again */
    FH_DOOR_DETACHED, /* worker call: this thread no longer runs the worker;
                         return to the worker loop at once, touching nothing */
    FH_DOOR_TIMEOUT   /* control call: abandoned at the deadline; the owned
                         inputs (and any borrowed ones) belong to it now */
} fh_door_result;

/* ---- worker calls ----------------------------------------------------------- */

typedef enum fh_frame_state {
    FH_FRAME_IDLE = 0,
    FH_FRAME_RUNNING,  /* a call runs on the worker's thread */
    FH_FRAME_DETACHED, /* the call's thread no longer runs the worker */
    FH_FRAME_RETURNED, /* detached, then returned: posted to the worker */
    FH_FRAME_ABANDONED /* detached past its deadline: the worker gave up */
} fh_frame_state;

typedef struct fh_door_frame fh_door_frame;

struct fh_door_frame {
    uint32_t magic;
    _Atomic uint64_t word;     /* seq << 3 | fh_frame_state */
    _Atomic uint64_t start_ns; /* of the running call */
    atomic_int refs;
    atomic_bool handed_over; /* the monitor is done with this frame and its old
                                thread (fh_door_frame_handed_over) */
    fh_hook_call call;
    /* Set by the caller before each call, used once the call is detached. */
    void *ctx; /* the request */
    /* Set once by the frame's worker. */
    void (*post)(void *post_ud, fh_door_frame *f); /* RETURNED: hand it back */
    void *post_ud;
    /* The worker's: deadline and list link while detached (runner only),
     * and the inbox link once returned (under the worker's inbox lock). */
    uint64_t deadline_ns;
    fh_door_frame *next;
    fh_door_frame *posted_next;
};

fh_door_frame *fh_door_frame_new(void (*post)(void *, fh_door_frame *), void *post_ud);
void fh_door_frame_unref(fh_door_frame *f);

/* Runs f->call inline on this thread (a worker's runner). FH_DOOR_OK, or
 * FH_DOOR_DETACHED when the monitor detached the call meanwhile: the result
 * then reaches the worker through f->post (or is dropped if abandoned). */
fh_door_result fh_door_run(fh_door_frame *f);

/* Monitor: detaches f's running call when it started more than `after_ns`
 * before `now_ns`. On true the caller owns one extra reference (the
 * worker's) and must move the worker to a new thread. */
bool fh_door_frame_detach(fh_door_frame *f, uint64_t now_ns, uint64_t after_ns);

/* Monitor: done with a frame it detached (and with the thread that runs
 * its call). Until then a call that returns waits, so the thread cannot
 * exit while the monitor still names it. */
void fh_door_frame_handed_over(fh_door_frame *f);

/* Worker: gives up on a detached frame. true when it was still running (the
 * call now cleans up after itself if it ever returns); false when it had
 * returned meanwhile (its RETURNED post is on its way). */
bool fh_door_frame_abandon(fh_door_frame *f);

/* ---- control calls ------------------------------------------------------------ */

/* Runs c on a helper thread and waits up to deadline_ms; with no deadline
 * (<= 0) it runs c inline on this thread, attributed and timed. */
fh_door_result fh_door_call(fh_hook_call *c, int deadline_ms);

/* Threads still inside plugin code that the host gave up on (abandoned or
 * detached calls not yet returned). */
unsigned fh_door_stuck_threads(void);

#endif
