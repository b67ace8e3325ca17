/*
 * config.h - fusion-host.yaml (SPEC section 3), parsed with libyaml.
 *
 * Owns: an immutable fh_config snapshot built by fh_config_load(). Once
 * loaded it is never modified, so any thread may read it; the daemon swaps
 * whole snapshots on reload. Every key is validated: unknown keys, wrong
 * types and out-of-range values are reported as "FILE:LINE:COL: key.path:
 * problem" diagnostics and the load fails. Relative paths are resolved
 * against the config file's folder, so all path fields are absolute.
 */
#ifndef FH_CONFIG_H
#define FH_CONFIG_H

#include "diag.h"

#include <stdbool.h>
#include <stddef.h>

#define FH_DEFAULT_CONFIG_PATH "/etc/fusion-host/fusion-host.yaml"
#define FH_WORKERS_MAX         64

typedef struct fh_breaker_cfg {
    int failure_threshold;   /* default 5, 1..1000 */
    int recovery_timeout_s;  /* default 300, 1..86400 */
    int half_open_max_calls; /* default 3, 1..1000 */
} fh_breaker_cfg;

typedef struct fh_budget_cfg {
    int hook_latency_ms;         /* default 50, 1..60000 */
    double token_delta_warn_pct; /* default 12, 0..1000 */
    double token_delta_max_pct;  /* default 25, 0..1000 */
    int token_window;            /* default 20, 1..1000 */
    int consecutive_breaches;    /* default 3, 1..1000 */
    long tokens_per_minute;      /* default 0 = no limit, >= 0 */
} fh_budget_cfg;

typedef struct fh_overlay_cfg {
    char *name;
    fh_breaker_cfg breaker;
    fh_budget_cfg budget;
    double quality_threshold; /* default 0.8, 0..1 */
    double rule_pass_mark;    /* default 0.5, 0..1: a rule passes at this score */
    /* Which the file set: the others come from the flags file's global
     * circuit_breaker and environment (gates.c). */
    struct {
        bool failure_threshold, recovery_timeout_s;
    } breaker_set;
    bool quality_set;
    char *config_json; /* `config:` as a JSON object text, "{}" if absent */
} fh_overlay_cfg;

/* upstream.model_rules: the request parameters a model does not take. Each
 * entry of `params` is a name to drop, or "from>to" to rename. */
typedef struct fh_model_rule {
    char *pattern; /* fnmatch(3) on the request's model, e.g. "o1*" */
    char **params;
    size_t count;
} fh_model_rule;

typedef struct fh_config {
    char *path; /* absolute path of the file it was read from */
    char *dir;  /* its folder */

    char *listen; /* "host:port" */
    struct {
        char *listen;     /* "unix:/path" or "host:port" */
        char *token_file; /* absolute, or "" */
    } admin;
    struct {
        char *base_url;
        char *api_key_env;   /* may be "" */
        int timeout_ms;      /* the answer's head; a whole non-streamed answer */
        int idle_timeout_ms; /* the longest gap between a stream's bytes */
        int connect_timeout_ms;
        bool forward_client_key; /* the caller's Authorization goes upstream */
        fh_model_rule *model_rules;
        size_t model_rule_count;
    } upstream;
    struct {
        char *dir;
        bool watch;
    } plugins;
    char *state_dir;
    char *feature_flags;      /* absolute path of the flags file */
    char *micro_overlays_dir; /* absolute */
    char *environment;

    fh_overlay_cfg *overlays; /* the `overlays:` map, in file order */
    size_t overlay_count;

    struct {
        long max_body_bytes;
        long max_connections;
        long max_header_bytes; /* per connection: request line, headers, answer head */
        long max_connections_per_ip;
        long header_timeout_ms;    /* the whole request head, from its first byte */
        long body_min_bytes_per_s; /* after header_timeout_ms of grace; 0: none */
        long idle_timeout_ms;      /* keep-alive wait, a stalled body or write */
    } limits;
    struct {
        long max_series_per_metric;
    } metrics;
    struct {
        char **allow_origins; /* browser origins let in ("*": any); none: no CORS */
        size_t origin_count;
    } cors;
    struct {
        char *keys_file; /* absolute, or "" */
        bool allow_anonymous;
        struct fh_keys *keys; /* loaded from keys_file; NULL: no client auth */
    } auth;
    int drain_timeout_ms;
    int workers; /* 0: the CPUs the process may run on (fh_config_workers) */
    struct {
        int deadline_ms; /* hard limit on one plugin call, 10..60000 */
    } hooks;
} fh_config;

/* Returns NULL and appends to `diag` on any problem (file unreadable, YAML
 * syntax, unknown key, wrong type, out of range). */
fh_config *fh_config_load(const char *path, fh_diag *diag);
void fh_config_free(fh_config *cfg);

/* The overlay's settings: its `overlays.<name>` entry, or the defaults (with
 * config_json "{}") when the file has none. Never NULL. */
const fh_overlay_cfg *fh_config_overlay(const fh_config *cfg, const char *name);

/* Fills the documented defaults (name and config_json left NULL). */
void fh_overlay_cfg_defaults(fh_overlay_cfg *o);

/* The worker count to run: `workers`, or when 0 the CPUs this process may
 * run on (sched_getaffinity), capped at FH_WORKERS_MAX. */
int fh_config_workers(const fh_config *cfg);
/* The first rule whose pattern matches `model`, or NULL. */
const fh_model_rule *fh_config_model_rule(const fh_config *cfg, const char *model);
/* The keys a reload cannot change (the listening socket, the worker
 * threads, the state folder and what lives in it, the admin socket, the
 * hook deadline the workers' monitor and the loader run on, the metrics'
 * series cap), as one line for operators. */
#define FH_CONFIG_RESTART_KEYS                                                                     \
    "listen, workers, state_dir, admin.listen, admin.token_file, hooks.deadline_ms, "              \
    "metrics.max_series_per_metric"
/* The first of those that differs between the running config and the next
 * one (its key), or NULL when a reload can apply `next` whole. */
const char *fh_config_restart_key(const fh_config *running, const fh_config *next);

/* Resolves `path` against `base_dir` unless absolute; malloc'd result. */
char *fh_path_resolve(const char *base_dir, const char *path);

#endif
