/*
 * directives.h - micro-overlay texts (config's micro_overlays_dir/<name>.md)
 * and the init inputs an overlay gets: its `overlays.<name>.config` as JSON
 * and the texts its feature's enabled_overlays name.
 *
 * Owns: the texts read into an fh_directive_set. A set is built and freed by
 * one thread; the texts are immutable in between.
 */
#ifndef FH_DIRECTIVES_H
#define FH_DIRECTIVES_H

#include "config.h"
#include "diag.h"
#include "flags.h"
#include "registry.h"

#include <stddef.h>
#include <stdint.h>

#define FH_DIRECTIVE_MAX_BYTES (64 * 1024)

typedef struct fh_directive_set {
    fusion_directive *items; /* names and texts malloc'd, owned by the set */
    size_t count;
} fh_directive_set;

/* Reads dir/<name>.md for every enabled_overlays entry of `feature`. A text
 * that is missing, empty, over FH_DIRECTIVE_MAX_BYTES or not UTF-8 is a
 * problem appended to diag; returns the number of problems (0 = all read). */
size_t fh_directives_load(const char *dir, const fh_feature *feature, fh_directive_set *out,
                          fh_diag *diag);
void fh_directives_free(fh_directive_set *set);

/* An fh_registry_opts.inputs_for provider over one config and flags pair.
 * Not thread-safe: one registry load at a time (the loads are serialised). */
typedef struct fh_inputs_provider {
    const fh_config *cfg; /* may be NULL: empty config, no directives */
    const fh_flags *flags;
    fh_directive_set current; /* the texts handed out by the last call */
} fh_inputs_provider;

int fh_inputs_for(void *provider, const char *name, fh_overlay_inputs *in);
void fh_inputs_provider_clear(fh_inputs_provider *p);
/* A hash of what init() of `name` would get from p (its config and texts):
 * a reload re-initialises an overlay whose fingerprint changed. */
uint64_t fh_inputs_fingerprint(fh_inputs_provider *p, const char *name);

#endif
