/*
 * reload.h - SIGHUP: a new configuration applied whole to new requests, or
 * refused with the running one kept.
 *
 * Owns: what each running overlay was initialised with (a fingerprint of
 * its config and directive texts: the texts are files, read again at every
 * load, so the running ones can only be known this way). The plugin folder
 * itself is plugsync.h's: a reload rescans it and retries refused files.
 *
 * Threads: main thread only (it is the only one that loads plugins, and
 * the registry's init inputs provider is not thread-safe).
 */
#ifndef FH_RELOAD_H
#define FH_RELOAD_H

#include "directives.h"
#include "http_api.h"
#include "plugsync.h"
#include "registry.h"
#include "snapshot.h"

typedef struct fh_reloader fh_reloader;

typedef struct fh_reload_env {
    const char *config_path;
    fh_snapshot_holder *snaps;
    fh_registry *reg;
    fh_http *http;
    unsigned nworkers;
    fh_inputs_provider *inputs; /* the registry's init inputs */
    fh_snapshot **inputs_snap;  /* the snapshot `inputs` points into (a reference) */
    fh_plugsync *sync;          /* the plugin folder */
    /* Called between plugin loads, so a reload of many overlays does not
     * starve the systemd watchdog. */
    void (*tick)(void *ud);
    void *tick_ud;
} fh_reload_env;

/* After start-up; the running overlays' inputs come from *env->inputs.
 * NULL when out of memory. */
fh_reloader *fh_reloader_new(const fh_reload_env *env);
/* Records the inputs of overlays loaded since (the folder watcher, the
 * admin API's load), so the next reload re-initialises only what changed. */
void fh_reloader_note_loads(fh_reloader *r);
void fh_reloader_free(fh_reloader *r);
/* Reads the config again and applies it, or refuses it; logs and notifies
 * systemd (RELOADING=1, then READY=1 with the outcome in STATUS=). 0 when
 * applied, -1 when refused; outcome (may be NULL) gets the status line or
 * the reason. */
int fh_reloader_reload(fh_reloader *r, char *outcome, size_t outlen);

#endif
