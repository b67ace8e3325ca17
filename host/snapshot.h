/*
 * snapshot.h - one consistent view of the configuration: the config file,
 * the flags file and the RESON_FEATURES override, read together.
 *
 * Owns: an immutable fh_snapshot, reference counted so a request keeps the
 * view it started with while a reload installs a new one. The holder's
 * pointer is swapped under a mutex (taken for a few instructions per
 * request); any thread may get or swap.
 */
#ifndef FH_SNAPSHOT_H
#define FH_SNAPSHOT_H

#include "config.h"
#include "diag.h"
#include "flags.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

typedef struct fh_snapshot {
    atomic_int refs;
    uint64_t generation; /* 1, 2, ... one per successful load */
    fh_config *cfg;
    fh_flags *flags;
    fh_env_override ovr;
} fh_snapshot;

/* Reads config, flags and RESON_FEATURES (from `reson_features`, NULL when
 * unset). NULL with problems in diag when anything is invalid. Unknown
 * RESON_FEATURES names are logged, not fatal (check reports them). */
fh_snapshot *fh_snapshot_load(const char *config_path, const char *reson_features, fh_diag *diag);
fh_snapshot *fh_snapshot_ref(fh_snapshot *s);
void fh_snapshot_unref(fh_snapshot *s);

typedef struct fh_snapshot_holder {
    pthread_mutex_t lock;
    fh_snapshot *current;
    uint64_t next_generation;
    atomic_uint_fast64_t installed; /* current->generation, readable without the lock */
} fh_snapshot_holder;

void fh_snapshot_holder_init(fh_snapshot_holder *h);
void fh_snapshot_holder_destroy(fh_snapshot_holder *h);
/* The current snapshot with a reference taken (NULL before the first). */
fh_snapshot *fh_snapshot_get(fh_snapshot_holder *h);
/* The generation of the current snapshot, without a lock: a reader that
 * caches a snapshot compares it to its copy's generation. */
uint64_t fh_snapshot_installed(fh_snapshot_holder *h);
/* Installs `s` (the holder takes the caller's reference) and drops the
 * holder's reference to the previous one. */
void fh_snapshot_install(fh_snapshot_holder *h, fh_snapshot *s);

#endif
