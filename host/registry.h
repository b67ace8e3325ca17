/*
 * registry.h - the live set of overlays and their generations.
 *
 * Owns: every loaded fh_plugin, its private state from init(), and the list
 * of files that were refused. Per overlay name there is one current
 * generation (the one new requests get) and any older generations still
 * draining after a swap or unload.
 *
 * Threads: any thread may call any function. Routing threads call
 * fh_registry_acquire()/fh_generation_release() around every use of plugin
 * code; the hot path takes a read lock and bumps an atomic reference count.
 * Load, swap, enable/disable, unload and reap take the write lock and never
 * call plugin code while holding it, except init()/fini() which run with no
 * lock held on a generation nobody else can reach yet / any more.
 *
 * Invariant: a generation's fini() and dlclose() run only once its
 * reference count is zero and it is no longer reachable from the table; a
 * generation that does not drain before a deadline stays mapped, listed as
 * draining, and is finalised by a later fh_registry_reap().
 */
#ifndef FH_REGISTRY_H
#define FH_REGISTRY_H

#include "door.h"
#include "loader.h"

#include <stdbool.h>
#include <stddef.h>

typedef enum fh_overlay_state {
    FH_STATE_ENABLED = 0,
    FH_STATE_DISABLED,
    FH_STATE_DRAINING, /* unloading: no new requests, in-flight finishing */
    FH_STATE_QUARANTINED,
    FH_STATE_FAILED, /* a file the host refused */
    FH_STATE_COUNT
} fh_overlay_state;

const char *fh_overlay_state_name(fh_overlay_state s);

/* What init() gets for an overlay, looked up by name at load time. The
 * pointers are borrowed for the duration of the call only. */
typedef struct fh_overlay_inputs {
    const char *config_json; /* NULL means "{}" */
    const fusion_directive *directives;
    size_t directive_count;
    double rule_pass_mark; /* a rule passes at this score; 0 means 0.5 */
} fh_overlay_inputs;

typedef struct fh_registry_opts {
    fh_loader_opts loader;
    const fusion_host_api *host_api;
    /* Fills *in for `name`; returns 0, or -1 to refuse the load. May be NULL
     * (empty config, no directives). Called without registry locks held. */
    int (*inputs_for)(void *ud, const char *name, fh_overlay_inputs *in);
    void *inputs_ud;
    int hook_deadline_ms; /* init()/fini() and offline hooks (door.h); 0: none */
    /* The state a name gets the first time it loads: FH_STATE_ENABLED, or
     * _DISABLED / _QUARANTINED with a reason (the operator's persisted
     * state, opstate.h). May be NULL (enabled). Called without locks. */
    fh_overlay_state (*state_for)(void *ud, const char *name, char *why, size_t len);
    void *state_ud;
} fh_registry_opts;

typedef struct fh_registry fh_registry;
typedef struct fh_generation fh_generation;

fh_registry *fh_registry_new(const fh_registry_opts *opts);
/* Unloads everything, waiting up to drain_timeout_ms for in-flight calls;
 * whatever still does not drain is left mapped (and leaked) on purpose. */
void fh_registry_free(fh_registry *r, int drain_timeout_ms);

/* Loads `path`. A new name is added (enabled); a name already loaded from
 * the same path, or with another version, hot-swaps: the new generation
 * becomes current at once, the old one drains and is finalised by reap.
 * The same name and version from another file is FH_LOAD_DUPLICATE.
 * Refusals are remembered (state failed, with the message) until the file
 * loads or is forgotten. On success, *name_out (if given) receives the
 * overlay name (copied, at most FUSION_NAME_MAX + 1 bytes). */
fh_load_err fh_registry_load(fh_registry *r, const char *path, char *msg, size_t msglen,
                             char *name_out);

/* Each returns 0, or -1 when the name is unknown (or, for enable, the
 * overlay is not in a state that can be enabled, e.g. draining). */
int fh_registry_enable(fh_registry *r, const char *name);
int fh_registry_disable(fh_registry *r, const char *name);
int fh_registry_quarantine(fh_registry *r, const char *name, const char *why);
/* The same, only when the current generation is the one with load number
 * `seq` (fh_generation_seq): a hung call of a version already swapped out
 * must not quarantine its successor. -1 when it is not. */
int fh_registry_quarantine_seq(fh_registry *r, const char *name, unsigned long seq,
                               const char *why);
unsigned long fh_generation_seq(const fh_generation *g);

/* Stops routing to `name` at once, waits up to drain_timeout_ms for its
 * in-flight calls, then finalises and closes it. Returns 0 when closed,
 * 1 when still draining at the deadline (left mapped; reap finishes it),
 * -1 when unknown. */
int fh_registry_unload(fh_registry *r, const char *name, int drain_timeout_ms);
/* The same, for the overlay loaded from `path` (the file was deleted). */
int fh_registry_unload_path(fh_registry *r, const char *path, int drain_timeout_ms);
/* Drops the remembered refusal for `path` (the file was deleted). */
void fh_registry_forget_failed(fh_registry *r, const char *path);

/* Finalises and closes every retired generation whose reference count is
 * zero. Returns how many are still draining. Call it periodically. */
size_t fh_registry_reap(fh_registry *r);

/* The current generation of `name` with a reference taken, or NULL; when
 * NULL, *state (if given) says why: FH_STATE_DISABLED, _QUARANTINED,
 * _DRAINING or _FAILED; FH_STATE_COUNT when the name is unknown. */
fh_generation *fh_registry_acquire(fh_registry *r, const char *name, fh_overlay_state *state);
void fh_generation_release(fh_generation *g);

const fusion_overlay_descriptor *fh_generation_descriptor(const fh_generation *g);
void *fh_generation_state(const fh_generation *g);

/* Fills the plugin part of a door call (who, desc, state, host, gen, hung)
 * for the request path, which runs it with fh_door_run(). The caller holds
 * a reference on g. */
void fh_generation_prepare(fh_generation *g, fh_hook_kind kind, fh_hook_call *c);
/* Sets each rule's `passed` from its score and the overlay's
 * rule_pass_mark (1.1: the host's to decide, not the plugin's). */
void fh_generation_mark_rules(const fh_generation *g, fusion_evaluation *ev);

/* Counts a request routed to g's overlay, and whether it was served
 * overlaid (`list` shows both). The caller holds a reference on g. */
void fh_generation_count(fh_generation *g, bool applied);
/* A number that changes whenever an overlay loads, unloads or changes
 * state: the daemon persists operator state when it moves. */
unsigned long fh_registry_changes(fh_registry *r);

/* Hook calls of g detached from their worker and not yet returned. */
int fh_generation_hung(const fh_generation *g);

/* Offline calls into plugin code (plugin-test, tests): through the door as
 * control calls under hook_deadline_ms; the caller holds a reference.
 * match() returns 1.0 when the plugin has no match hook, -1 past the
 * deadline; apply and evaluate return FH_GENERATION_TIMEOUT past it (the
 * request then belongs to the abandoned call: do not free it). */
#define FH_GENERATION_TIMEOUT (-1000)
double fh_generation_match(fh_generation *g, const fusion_request *req);
int fh_generation_apply(fh_generation *g, fusion_request *req);
int fh_generation_evaluate(fh_generation *g, const fusion_request *req, const char *answer,
                           size_t len, fusion_evaluation *out);

typedef struct fh_overlay_info {
    char name[FUSION_NAME_MAX + 1];
    char version[FUSION_VERSION_MAX + 1];
    unsigned abi_major, abi_minor;
    char path[4096];                 /* the source file */
    char sha256[65];                 /* of the bytes mapped; "" for a refused file */
    unsigned long requests, applied; /* routed to it / served overlaid */
    fh_overlay_state state;
    unsigned long inflight; /* references held on all its generations */
    size_t draining;        /* retired generations not yet closed */
    size_t pinned;          /* closed generations the loader kept mapped */
    fh_load_err error;      /* for FH_STATE_FAILED */
    char reason[512];       /* why failed/quarantined, else "" */
} fh_overlay_info;

/* A malloc'd snapshot of every overlay and every refused file, sorted by
 * name then path. Returns the count; *out is NULL when it is 0. */
size_t fh_registry_list(fh_registry *r, fh_overlay_info **out);
/* "PREFIX N overlays enabled, N disabled, N quarantined, N failed": the
 * daemon's log and systemd STATUS= line. */
void fh_registry_status_line(fh_registry *r, const char *prefix, char *out, size_t len);
/* One overlay by name; returns 0 or -1 when unknown. */
int fh_registry_get(fh_registry *r, const char *name, fh_overlay_info *out);

#endif
