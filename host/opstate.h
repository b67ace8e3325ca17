/*
 * opstate.h - the operator's decisions that must outlive the process:
 * overlays disabled or quarantined (by `disable`, a hook timeout or a
 * crash) and budget gates tripped, kept in STATE_DIR/operator-state.json.
 *
 * Owns: the in-memory copy of that file and the file itself. The registry
 * and the gates are the truth while the daemon runs; fh_opstate_sync()
 * derives the file from them (an overlay not loaded right now keeps what
 * the file said), so every path that changes a state - admin API, worker
 * threads quarantining a hung overlay, a gate tripping - is persisted
 * without knowing about this file.
 *
 * Writes are atomic and durable: a temporary file in the same folder,
 * fsync, rename over the old one, fsync of the folder. A file that cannot
 * be parsed is renamed aside (operator-state.json.corrupt-EPOCH) and the
 * daemon starts with every overlay enabled, saying so in the log.
 *
 * Threads: the main thread only.
 */
#ifndef FH_OPSTATE_H
#define FH_OPSTATE_H

#include "gates.h"
#include "registry.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct fh_opstate fh_opstate;

/* Reads STATE_DIR/operator-state.json (absent: nothing persisted). NULL
 * only when out of memory. */
fh_opstate *fh_opstate_open(const char *state_dir);
void fh_opstate_free(fh_opstate *o);

/* The persisted state of `name`: FH_STATE_DISABLED or _QUARANTINED with
 * its reason, else FH_STATE_ENABLED. Fits fh_registry_opts.state_for. */
fh_overlay_state fh_opstate_overlay(void *o, const char *name, char *why, size_t len);
/* Records a decision for `name` (FH_STATE_ENABLED forgets it), whether
 * or not the overlay is loaded now. Written by the next sync or save. */
void fh_opstate_set_overlay(fh_opstate *o, const char *name, fh_overlay_state s, const char *why);

/* Restores every persisted gate trip into `gates` (at start). */
void fh_opstate_restore_gates(fh_opstate *o, fh_gates *gates, uint64_t now_ms);

/* Brings the file in step with the registry and the gates when either
 * changed since the last call (their change counters), and writes it when
 * its content changed. 0, or -1 when the write failed (logged once per
 * failure streak; retried at the next change). */
int fh_opstate_sync(fh_opstate *o, fh_registry *reg, fh_gates *gates);
/* Writes what is in memory now if it differs from the file. */
int fh_opstate_save(fh_opstate *o);

/* A plugin file, by the SHA-256 of its bytes, that crashed the daemon in
 * dlopen(), its entry function or init(): it is never mapped again (the
 * loader asks fh_opstate_refused_hash, which fits
 * fh_loader_opts.refuse_hash) until an operator enables `name`. */
void fh_opstate_refuse_file(fh_opstate *o, const char *sha256, const char *name, const char *why);
bool fh_opstate_refused_hash(void *o, const char *sha256, char *why, size_t len);
/* The operator's `enable NAME` for a name that is not loaded: forgets its
 * decision and its refused files. true when there was something to forget. */
bool fh_opstate_forget(fh_opstate *o, const char *name);
/* A persisted gate trip for a name that may not be loaded (reset). */
bool fh_opstate_gate_tripped(const fh_opstate *o, const char *name);
void fh_opstate_clear_gate(fh_opstate *o, const char *name);
/* Everything persisted: {"overlays": ..., "gates": ..., "files": ...}. */
json_t *fh_opstate_json(const fh_opstate *o);

/* The file's path, for messages. */
const char *fh_opstate_path(const fh_opstate *o);

#endif
