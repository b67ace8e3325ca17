/*
 * control.h - what each admin API request does (SPEC 5): list, show,
 * enable, disable, unload, load, reset, reload, status, health, flags.
 *
 * Owns nothing: it acts on the daemon's registry, gates, plugin folder,
 * reloader and operator state, all borrowed. Every change an operator
 * makes is written to the operator state (opstate.h) before the answer
 * goes out, so a command that was answered survives kill -9.
 *
 * Threads: the main thread only (fh_admin_run's handler).
 */
#ifndef FH_CONTROL_H
#define FH_CONTROL_H

#include "gates.h"
#include "http_api.h"
#include "opstate.h"
#include "pipeline.h"
#include "plugsync.h"
#include "registry.h"
#include "reload.h"
#include "snapshot.h"

#include <stdint.h>

typedef struct fh_control {
    fh_registry *reg;
    fh_gates *gates; /* may be NULL (out of memory at start) */
    fh_opstate *ops; /* may be NULL */
    fh_plugsync *sync;
    fh_reloader *reloader; /* may be NULL */
    fh_snapshot_holder *snaps;
    fh_pipeline *pipeline;
    fh_http *http;
    const char *config_path;
    const char *admin_address;
    unsigned workers;
    uint64_t started_ms;
} fh_control;

/* fh_admin_fn: the status and a malloc'd JSON body in *json. */
unsigned fh_control_handle(void *ctl, const char *method, const char *path, const char *body,
                           size_t len, char **json);

#endif
