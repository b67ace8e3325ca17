/*
 * flags.h - the feature flags file (SPEC section 3, the seed's format), the
 * RESON_FEATURES override and the routing decision built from them.
 *
 * Owns: immutable fh_flags snapshots (any thread may read one; reload swaps
 * whole snapshots) and the pure routing function fh_flags_route(), which
 * touches no global state and may run on any thread.
 *
 * Routing rules, in order, for a request context:
 *   1. RESON_FEATURES set and empty: baseline, env_override.
 *   2. Candidate features are those whose scenario_types condition matches
 *      the request's scenario type (equal, or the entry is a prefix of it
 *      ending at an underscore: "refund_processing" matches
 *      "refund_processing_duplicate"; no scenario_types matches any type),
 *      taken in file order. None: baseline, no_match.
 *   3. RESON_FEATURES set to a list: candidates not in it are skipped; when
 *      every candidate was skipped: baseline, env_override. Listed features
 *      run at 100% rollout (feature and environment percentages ignored).
 *   4. The confidence condition: a request confidence below the feature's
 *      confidence_threshold skips the feature (all skipped: no_match). A
 *      request without a confidence is taken at face value (passes).
 *   5. Effective rollout = feature rollout_percentage x the environment's
 *      global_rollout_percentage / 100. 0: baseline, flag_off.
 *   6. Sticky bucket: fh_rollout_bucket(feature, key) in [0, 10000); the
 *      request is in when bucket < effective% x 100; otherwise baseline,
 *      rollout. The key is ctx.key, else ctx.scenario_id, else request_id.
 *   7. Otherwise: that feature's overlay, applied.
 */
#ifndef FH_FLAGS_H
#define FH_FLAGS_H

#include "diag.h"
#include "reason.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct fh_feature {
    char *name; /* == the overlay plugin's name */
    char *description;
    char **enabled_overlays; /* micro-overlay text names */
    size_t enabled_overlay_count;
    char *fallback_strategy;   /* "baseline_only" (the only one so far) */
    double rollout_percentage; /* 0..100 */
    char **scenario_types;     /* NULL/0: any scenario type */
    size_t scenario_type_count;
    double confidence_threshold; /* 0..1; 0 when absent */
    size_t line;                 /* where the feature is defined */
} fh_feature;

typedef struct fh_environment {
    char *name;
    double global_rollout_percentage; /* 0..100, default 100 */
    bool circuit_breaker_enabled;     /* default true */
    double quality_gate_threshold;    /* 0..1, default 0.8 */
} fh_environment;

typedef struct fh_flags {
    char *path;
    fh_feature *features; /* file order */
    size_t feature_count;
    struct {
        char *default_strategy;
        struct {
            bool enabled;
            int failure_threshold;
            int recovery_timeout;
        } circuit_breaker;
        struct {
            bool enabled, track_latency, track_quality, track_token_usage;
        } metrics;
    } global;
    fh_environment *environments;
    size_t environment_count;
} fh_flags;

fh_flags *fh_flags_load(const char *path, fh_diag *diag);
void fh_flags_free(fh_flags *flags);
const fh_feature *fh_flags_feature(const fh_flags *flags, const char *name);
/* The named environment, or NULL when the file does not define it. */
const fh_environment *fh_flags_environment(const fh_flags *flags, const char *name);

/* RESON_FEATURES, parsed once at start or reload. */
typedef struct fh_env_override {
    bool set;     /* false: variable unset, the file decides */
    char **names; /* set and count == 0: baseline only */
    size_t count;
} fh_env_override;

/* `value` is getenv("RESON_FEATURES") (NULL when unset). Names are split on
 * commas and trimmed; empty items are ignored. Returns 0 or -1 (no memory). */
int fh_env_override_parse(const char *value, fh_env_override *out);
void fh_env_override_free(fh_env_override *o);
/* Appends one diagnostic per listed name that is not a feature of `flags`. */
size_t fh_env_override_check(const fh_env_override *o, const fh_flags *flags, fh_diag *diag);

typedef struct fh_route_ctx {
    const char *scenario_type; /* may be NULL or "" */
    const char *scenario_id;
    double confidence; /* < 0: not given */
    const char *key;
    const char *request_id;
} fh_route_ctx;

typedef struct fh_route {
    const fh_feature *feature; /* the overlay to apply; NULL for baseline */
    fh_reason reason;
    const fh_feature *considered; /* the feature the reason is about, if any */
    unsigned bucket;              /* rollout bucket used, 0..9999 */
} fh_route;

/* True when the condition entry matches the scenario type (rule 2). */
bool fh_scenario_type_matches(const char *entry, const char *scenario_type);
/* Deterministic bucket in [0, 10000) for (feature, key). */
unsigned fh_rollout_bucket(const char *feature, const char *key);

/* `environment` is the config's environment name; an environment missing
 * from the file means 100% global rollout. */
void fh_flags_route(const fh_flags *flags, const char *environment, const fh_env_override *ovr,
                    const fh_route_ctx *ctx, fh_route *out);

#endif
