/*
 * flags.c - the feature flags file, RESON_FEATURES and routing; see
 * flags.h for the routing rules, which this file implements in order.
 *
 * Owns: every string of the fh_flags and fh_env_override it returns.
 * Loading runs on the thread that (re)loads configuration; the snapshot is
 * immutable afterwards. fh_flags_route() and fh_rollout_bucket() are pure
 * and run on any thread, concurrently, without locks.
 */
#include "flags.h"
#include "yamlutil.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The only fallback the host implements: serve the caller's request. */
#define STRATEGY_BASELINE "baseline_only"

static const char *const top_keys[] = {"features", "global", "environments", NULL};
static const char *const feature_keys[] = {"description",       "enabled_overlays",
                                           "fallback_strategy", "rollout_percentage",
                                           "conditions",        NULL};
static const char *const condition_keys[] = {"scenario_types", "confidence_threshold", NULL};
static const char *const global_keys[] = {"default_strategy", "circuit_breaker", "metrics", NULL};
static const char *const global_cb_keys[] = {"enabled", "failure_threshold", "recovery_timeout",
                                             NULL};
static const char *const global_metrics_keys[] = {"enabled", "track_latency", "track_quality",
                                                  "track_token_usage", NULL};
static const char *const env_keys[] = {"global_rollout_percentage", "circuit_breaker_enabled",
                                       "quality_gate_threshold", NULL};

static bool valid_env_name(const char *s)
{
    size_t n = 0;
    for (; *s; s++, n++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-'))
            return false;
    return n >= 1 && n <= 64;
}

static void read_strategy(fh_yaml *y, yaml_node_t *map, const char *path, const char *key,
                          char **out)
{
    if (fh_yaml_get_string(y, map, path, key, false, out) && strcmp(*out, STRATEGY_BASELINE)) {
        fh_keypath kp;
        fh_keypath_init(&kp);
        fh_keypath_push(&kp, path);
        fh_keypath_push(&kp, key);
        fh_yaml_error(y, fh_yaml_get(y, map, key), kp.buf,
                      "must be \"" STRATEGY_BASELINE "\" (the only fallback strategy); got \"%s\"",
                      *out);
    }
}

/* An entry ending in '_' ("refund_") looks like a prefix but never matches
 * "refund_x" (rule 2 wants the type to go on with '_' right after the
 * entry), so it would silently route nothing; refuse it and name the
 * spelling that works. */
static void check_scenario_types(fh_yaml *y, yaml_node_t *conditions, fh_keypath *kp,
                                 const fh_feature *f)
{
    yaml_node_t *list = fh_yaml_get(y, conditions, "scenario_types");
    /* The entries were just read from this list; a mismatch cannot happen,
     * but an index into the wrong node would read out of bounds. */
    if (!list || list->type != YAML_SEQUENCE_NODE ||
        (size_t)(list->data.sequence.items.top - list->data.sequence.items.start) !=
            f->scenario_type_count)
        return;
    for (size_t i = 0; i < f->scenario_type_count; i++) {
        const char *e = f->scenario_types[i];
        size_t n = strlen(e);
        if (!n || e[n - 1] != '_')
            continue;
        while (n && e[n - 1] == '_')
            n--;
        yaml_node_t *item = yaml_document_get_node(&y->doc, list->data.sequence.items.start[i]);
        size_t mark = fh_keypath_push(kp, "scenario_types");
        fh_keypath_push_index(kp, i);
        if (n)
            fh_yaml_error(y, item, kp->buf,
                          "must not end with '_'; write the prefix without it: '%.*s' matches "
                          "'%.*s_x'",
                          (int)n, e, (int)n, e);
        else
            fh_yaml_error(y, item, kp->buf,
                          "must not end with '_'; name a scenario type or its prefix, "
                          "e.g. 'refund' (matches 'refund' and 'refund_x')");
        fh_keypath_pop(kp, mark);
    }
}

static void read_feature(fh_yaml *y, const char *name, yaml_node_t *k, yaml_node_t *node,
                         fh_feature *f)
{
    fh_keypath kp;
    fh_keypath_init(&kp);
    fh_keypath_push(&kp, "features");
    fh_keypath_push(&kp, name);
    f->line = k->start_mark.line + 1;
    if (!fh_valid_overlay_name(name))
        fh_yaml_error(y, k, kp.buf,
                      "not a valid feature name (the overlay plugin's name): lower-case letter "
                      "first, then [a-z0-9_], at most 64 characters");
    if (!fh_yaml_check_map(y, node, kp.buf, feature_keys, true))
        return;
    fh_yaml_get_string(y, node, kp.buf, "description", true, &f->description);
    fh_yaml_get_string_list(y, node, kp.buf, "enabled_overlays", fh_valid_word,
                            "a micro-overlay name of [a-z0-9_], at most 64 characters",
                            &f->enabled_overlays, &f->enabled_overlay_count);
    read_strategy(y, node, kp.buf, "fallback_strategy", &f->fallback_strategy);
    fh_yaml_get_double(y, node, kp.buf, "rollout_percentage", 0, 100, &f->rollout_percentage);

    yaml_node_t *c = fh_yaml_get(y, node, "conditions");
    size_t mark = fh_keypath_push(&kp, "conditions");
    if (c && fh_yaml_check_map(y, c, kp.buf, condition_keys, true)) {
        if (fh_yaml_get_string_list(y, c, kp.buf, "scenario_types", fh_valid_word,
                                    "a scenario type of [a-z0-9_], at most 64 characters",
                                    &f->scenario_types, &f->scenario_type_count))
            check_scenario_types(y, c, &kp, f);
        fh_yaml_get_double(y, c, kp.buf, "confidence_threshold", 0, 1, &f->confidence_threshold);
    }
    fh_keypath_pop(&kp, mark);
}

static void read_features(fh_yaml *y, yaml_node_t *root, fh_flags *fl)
{
    yaml_node_t *m = fh_yaml_get(y, root, "features");
    if (!m) {
        fh_yaml_error(y, root, "features",
                      "missing: the flags file needs a features mapping (features: {} for none)");
        return;
    }
    if (!fh_yaml_check_map(y, m, "features", NULL, true))
        return;
    size_t n = fh_yaml_map_size(m);
    if (!n)
        return;
    fl->features = calloc(n, sizeof(*fl->features));
    if (!fl->features) {
        fh_yaml_error(y, m, "features", "out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *k, *v;
        const char *name = fh_yaml_map_key(y, m, i, &k, &v);
        if (!name || fh_yaml_is_null(k) || fh_flags_feature(fl, name))
            continue; /* reported by fh_yaml_check_map */
        fh_feature *f = &fl->features[fl->feature_count++];
        f->name = strdup(name);
        f->description = strdup("");
        f->fallback_strategy = strdup(STRATEGY_BASELINE);
        if (!f->name || !f->description || !f->fallback_strategy) {
            fh_yaml_error(y, k, "features", "out of memory");
            continue;
        }
        read_feature(y, name, k, v, f);
    }
}

static void read_global(fh_yaml *y, yaml_node_t *root, fh_flags *fl)
{
    yaml_node_t *g = fh_yaml_get(y, root, "global");
    if (!g || !fh_yaml_check_map(y, g, "global", global_keys, true))
        return;
    read_strategy(y, g, "global", "default_strategy", &fl->global.default_strategy);
    yaml_node_t *cb = fh_yaml_get(y, g, "circuit_breaker");
    if (cb && fh_yaml_check_map(y, cb, "global.circuit_breaker", global_cb_keys, true)) {
        fh_yaml_get_bool(y, cb, "global.circuit_breaker", "enabled",
                         &fl->global.circuit_breaker.enabled);
        fh_yaml_get_int(y, cb, "global.circuit_breaker", "failure_threshold", 1, 1000,
                        &fl->global.circuit_breaker.failure_threshold);
        fh_yaml_get_int(y, cb, "global.circuit_breaker", "recovery_timeout", 1, 86400,
                        &fl->global.circuit_breaker.recovery_timeout);
    }
    yaml_node_t *me = fh_yaml_get(y, g, "metrics");
    if (me && fh_yaml_check_map(y, me, "global.metrics", global_metrics_keys, true)) {
        fh_yaml_get_bool(y, me, "global.metrics", "enabled", &fl->global.metrics.enabled);
        fh_yaml_get_bool(y, me, "global.metrics", "track_latency",
                         &fl->global.metrics.track_latency);
        fh_yaml_get_bool(y, me, "global.metrics", "track_quality",
                         &fl->global.metrics.track_quality);
        fh_yaml_get_bool(y, me, "global.metrics", "track_token_usage",
                         &fl->global.metrics.track_token_usage);
    }
}

static void read_environments(fh_yaml *y, yaml_node_t *root, fh_flags *fl)
{
    yaml_node_t *m = fh_yaml_get(y, root, "environments");
    if (!m || !fh_yaml_check_map(y, m, "environments", NULL, true))
        return;
    size_t n = fh_yaml_map_size(m);
    if (!n)
        return;
    fl->environments = calloc(n, sizeof(*fl->environments));
    if (!fl->environments) {
        fh_yaml_error(y, m, "environments", "out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *k, *v;
        const char *name = fh_yaml_map_key(y, m, i, &k, &v);
        if (!name || fh_yaml_is_null(k) || fh_flags_environment(fl, name))
            continue; /* reported by fh_yaml_check_map */
        fh_environment *e = &fl->environments[fl->environment_count++];
        e->global_rollout_percentage = 100;
        e->circuit_breaker_enabled = true;
        e->quality_gate_threshold = 0.8;
        e->name = strdup(name);
        if (!e->name) {
            fh_yaml_error(y, k, "environments", "out of memory");
            continue;
        }
        fh_keypath kp;
        fh_keypath_init(&kp);
        fh_keypath_push(&kp, "environments");
        fh_keypath_push(&kp, name);
        if (!valid_env_name(name))
            fh_yaml_error(y, k, kp.buf,
                          "not a valid environment name: [A-Za-z0-9_-], at most 64 characters");
        if (!fh_yaml_check_map(y, v, kp.buf, env_keys, true))
            continue;
        fh_yaml_get_double(y, v, kp.buf, "global_rollout_percentage", 0, 100,
                           &e->global_rollout_percentage);
        fh_yaml_get_bool(y, v, kp.buf, "circuit_breaker_enabled", &e->circuit_breaker_enabled);
        fh_yaml_get_double(y, v, kp.buf, "quality_gate_threshold", 0, 1,
                           &e->quality_gate_threshold);
    }
}

fh_flags *fh_flags_load(const char *path, fh_diag *diag)
{
    if (!path || !*path) {
        fh_diag_add(diag, "no feature flags file given");
        return NULL;
    }
    fh_flags *fl = calloc(1, sizeof(*fl));
    if (!fl) {
        fh_diag_at(diag, path, 0, 0, NULL, "out of memory");
        return NULL;
    }
    fl->path = strdup(path);
    fl->global.default_strategy = strdup(STRATEGY_BASELINE);
    fl->global.circuit_breaker.enabled = true;
    fl->global.circuit_breaker.failure_threshold = 5;
    fl->global.circuit_breaker.recovery_timeout = 300;
    fl->global.metrics.enabled = true;
    fl->global.metrics.track_latency = true;
    fl->global.metrics.track_quality = true;
    fl->global.metrics.track_token_usage = true;
    if (!fl->path || !fl->global.default_strategy) {
        fh_diag_at(diag, path, 0, 0, NULL, "out of memory");
        fh_flags_free(fl);
        return NULL;
    }
    fh_yaml y;
    if (fh_yaml_open(&y, path, path, diag) != 0) {
        fh_flags_free(fl);
        return NULL;
    }
    yaml_node_t *root = fh_yaml_root(&y);
    fh_yaml_check_map(&y, root, NULL, top_keys, false);
    read_features(&y, root, fl);
    read_global(&y, root, fl);
    read_environments(&y, root, fl);
    size_t errors = y.errors;
    fh_yaml_close(&y);
    if (errors) {
        fh_flags_free(fl);
        return NULL;
    }
    return fl;
}

void fh_flags_free(fh_flags *flags)
{
    if (!flags)
        return;
    for (size_t i = 0; i < flags->feature_count; i++) {
        fh_feature *f = &flags->features[i];
        free(f->name);
        free(f->description);
        fh_strv_free(f->enabled_overlays, f->enabled_overlay_count);
        free(f->fallback_strategy);
        fh_strv_free(f->scenario_types, f->scenario_type_count);
    }
    free(flags->features);
    for (size_t i = 0; i < flags->environment_count; i++)
        free(flags->environments[i].name);
    free(flags->environments);
    free(flags->global.default_strategy);
    free(flags->path);
    free(flags);
}

const fh_feature *fh_flags_feature(const fh_flags *flags, const char *name)
{
    for (size_t i = 0; flags && name && i < flags->feature_count; i++)
        if (flags->features[i].name && !strcmp(flags->features[i].name, name))
            return &flags->features[i];
    return NULL;
}

const fh_environment *fh_flags_environment(const fh_flags *flags, const char *name)
{
    for (size_t i = 0; flags && name && i < flags->environment_count; i++)
        if (flags->environments[i].name && !strcmp(flags->environments[i].name, name))
            return &flags->environments[i];
    return NULL;
}

/* ---- RESON_FEATURES ---------------------------------------------------------- */

int fh_env_override_parse(const char *value, fh_env_override *out)
{
    memset(out, 0, sizeof(*out));
    if (!value)
        return 0;
    out->set = true;
    size_t cap = 1;
    for (const char *p = value; *p; p++)
        cap += *p == ',';
    out->names = calloc(cap, sizeof(*out->names));
    if (!out->names)
        return -1;
    const char *p = value;
    for (;;) {
        const char *end = strchr(p, ',');
        if (!end)
            end = p + strlen(p);
        const char *a = p, *b = end;
        while (a < b && (*a == ' ' || *a == '\t' || *a == '\n' || *a == '\r'))
            a++;
        while (b > a && (b[-1] == ' ' || b[-1] == '\t' || b[-1] == '\n' || b[-1] == '\r'))
            b--;
        if (b > a) {
            char *name = strndup(a, (size_t)(b - a));
            if (!name) {
                fh_env_override_free(out);
                return -1;
            }
            out->names[out->count++] = name;
        }
        if (!*end)
            break;
        p = end + 1;
    }
    return 0;
}

void fh_env_override_free(fh_env_override *o)
{
    fh_strv_free(o->names, o->count);
    memset(o, 0, sizeof(*o));
}

static bool override_lists(const fh_env_override *o, const char *name)
{
    for (size_t i = 0; i < o->count; i++)
        if (!strcmp(o->names[i], name))
            return true;
    return false;
}

size_t fh_env_override_check(const fh_env_override *o, const fh_flags *flags, fh_diag *diag)
{
    if (!o || !o->set)
        return 0;
    size_t bad = 0;
    for (size_t i = 0; i < o->count; i++) {
        if (fh_flags_feature(flags, o->names[i]))
            continue;
        char known[512] = "";
        size_t used = 0;
        for (size_t j = 0; flags && j < flags->feature_count; j++) {
            int n = snprintf(known + used, sizeof(known) - used, "%s%s", j ? ", " : "",
                             flags->features[j].name);
            if (n > 0 && (size_t)n < sizeof(known) - used)
                used += (size_t)n;
        }
        fh_diag_add(diag,
                    "RESON_FEATURES: '%s' is not a feature of %s and is ignored; features: %s",
                    o->names[i], flags && flags->path ? flags->path : "the flags file",
                    used ? known : "(none)");
        bad++;
    }
    return bad;
}

/* ---- routing ------------------------------------------------------------------- */

bool fh_scenario_type_matches(const char *entry, const char *scenario_type)
{
    if (!entry || !scenario_type || !*entry)
        return false;
    size_t n = strlen(entry);
    if (strncmp(entry, scenario_type, n))
        return false;
    /* Equal, or a prefix that ends where the type continues after '_'. */
    return scenario_type[n] == '\0' || scenario_type[n] == '_';
}

/* FNV-1a 64 over "feature\0key", then a murmur3 fmix64 finaliser because
 * FNV's low bits mix poorly and we reduce modulo 10000. Byte-wise, so it
 * is the same on every machine; docs/config.md specifies it. */
unsigned fh_rollout_bucket(const char *feature, const char *key)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    const uint64_t prime = 0x100000001b3ULL;
    for (const unsigned char *p = (const unsigned char *)(feature ? feature : ""); *p; p++)
        h = (h ^ *p) * prime;
    h = (h ^ 0u) * prime;
    for (const unsigned char *p = (const unsigned char *)(key ? key : ""); *p; p++)
        h = (h ^ *p) * prime;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return (unsigned)(h % 10000u);
}

static bool feature_matches_type(const fh_feature *f, const char *type)
{
    if (!f->scenario_type_count)
        return true;
    if (!type || !*type)
        return false;
    for (size_t i = 0; i < f->scenario_type_count; i++)
        if (fh_scenario_type_matches(f->scenario_types[i], type))
            return true;
    return false;
}

static const char *rollout_key(const fh_route_ctx *ctx)
{
    if (ctx->key && *ctx->key)
        return ctx->key;
    if (ctx->scenario_id && *ctx->scenario_id)
        return ctx->scenario_id;
    return ctx->request_id ? ctx->request_id : "";
}

void fh_flags_route(const fh_flags *flags, const char *environment, const fh_env_override *ovr,
                    const fh_route_ctx *ctx, fh_route *out)
{
    memset(out, 0, sizeof(*out));
    out->reason = FH_REASON_NO_MATCH;
    bool listed_only = ovr && ovr->set;
    /* Rule 1: emergency rollback. */
    if (listed_only && ovr->count == 0) {
        out->reason = FH_REASON_ENV_OVERRIDE;
        return;
    }
    if (!flags || !ctx)
        return;

    const fh_feature *chosen = NULL, *first_candidate = NULL, *first_low_conf = NULL;
    for (size_t i = 0; i < flags->feature_count && !chosen; i++) {
        const fh_feature *f = &flags->features[i];
        /* Rule 2: scenario type. */
        if (!feature_matches_type(f, ctx->scenario_type))
            continue;
        if (!first_candidate)
            first_candidate = f;
        /* Rule 3: RESON_FEATURES list. */
        if (listed_only && !override_lists(ovr, f->name))
            continue;
        /* Rule 4: confidence (negative = not given = passes). */
        if (ctx->confidence >= 0 && ctx->confidence < f->confidence_threshold) {
            if (!first_low_conf)
                first_low_conf = f;
            continue;
        }
        chosen = f;
    }
    if (!chosen) {
        if (!first_candidate) {
            out->reason = FH_REASON_NO_MATCH;
        } else if (first_low_conf) {
            out->reason = FH_REASON_NO_MATCH;
            out->considered = first_low_conf;
        } else {
            out->reason = FH_REASON_ENV_OVERRIDE;
            out->considered = first_candidate;
        }
        return;
    }
    out->considered = chosen;

    /* Rule 5: effective rollout; a listed feature runs at 100%. */
    double pct = 100.0;
    if (!listed_only) {
        const fh_environment *env = fh_flags_environment(flags, environment);
        double global = env ? env->global_rollout_percentage : 100.0;
        pct = chosen->rollout_percentage * global / 100.0;
    }
    if (pct <= 0) {
        out->reason = FH_REASON_FLAG_OFF;
        return;
    }
    /* Rule 6: sticky bucket. */
    out->bucket = fh_rollout_bucket(chosen->name, rollout_key(ctx));
    if ((double)out->bucket >= pct * 100.0) {
        out->reason = FH_REASON_ROLLOUT;
        return;
    }
    /* Rule 7. */
    out->feature = chosen;
    out->reason = FH_REASON_APPLIED;
}
