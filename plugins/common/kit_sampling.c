/*
 * kit_sampling.c - the sampling job: reference/overlay_params.yaml's numbers (defaults,
 * per-scenario overrides, category defaults, constraints; compiled in, so a
 * change is a new version and a hot swap the host can track) and the
 * overlay's `config:` read through the SDK 1.1 accessors. Const tables and
 * pure functions: safe from every hook thread.
 */
#include "kit_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the parameter table --------------------------------------------------- */

const okit_sampling kit_param_defaults = {
    .temperature = 0.25, .top_p = 0.80, .presence_penalty = 0.00, .frequency_penalty = 0.30};

typedef struct override_row {
    const char *scenario;
    okit_sampling p;
} override_row;

static const override_row overrides[] = {
    {"refund_processing_duplicate", {0.22, 0.75, 0.00, 0.40}},
    {"lot_boundary_dispute_resolution", {0.28, 0.85, 0.05, 0.25}},
    {"webhook_endpoint_failure_cascade", {0.20, 0.70, 0.00, 0.35}},
    {"regulatory_compliance_audit_prep", {0.24, 0.78, 0.10, 0.32}},
    {"subscription_downgrade_retention", {0.32, 0.88, 0.15, 0.20}},
    {"api_rate_limit_optimization", {0.21, 0.72, 0.00, 0.38}},
    {"data_migration_rollback_scenario", {0.19, 0.68, 0.00, 0.42}},
    {"security_incident_containment", {0.18, 0.65, 0.00, 0.45}},
    {"vendor_contract_negotiation_renewal", {0.30, 0.82, 0.12, 0.28}},
    {"performance_monitoring_alert_fatigue", {0.23, 0.76, 0.00, 0.33}},
};

/* category_defaults give no top_p: it comes from the defaults. */
typedef struct category_row {
    const char *name;
    double temperature, presence_penalty, frequency_penalty;
} category_row;

static const category_row categories[] = {
    [OKIT_CAT_NONE] = {"defaults", 0, 0, 0},
    [OKIT_CAT_FINANCIAL_OPERATIONS] = {"financial_operations", 0.22, 0.00, 0.38},
    [OKIT_CAT_SECURITY_OPERATIONS] = {"security_operations", 0.19, 0.00, 0.43},
    [OKIT_CAT_SYSTEM_INTEGRATION] = {"system_integration", 0.21, 0.00, 0.36},
    [OKIT_CAT_COMPLIANCE_MANAGEMENT] = {"compliance_management", 0.24, 0.08, 0.31},
    [OKIT_CAT_CUSTOMER_SUCCESS] = {"customer_success", 0.31, 0.14, 0.22},
};

static const okit_sampling constraint_min = {0.15, 0.60, 0.00, 0.15};
static const okit_sampling constraint_max = {0.40, 0.95, 0.20, 0.50};

static const okit_sampling *find_override(const char *scenario)
{
    if (!scenario || !*scenario)
        return NULL;
    for (size_t i = 0; i < COUNT_OF(overrides); i++) {
        if (strcmp(overrides[i].scenario, scenario) == 0)
            return &overrides[i].p;
    }
    return NULL;
}

okit_source okit_sampling_lookup(const char *scenario_id, const char *scenario_type,
                                 okit_category category, okit_sampling *out)
{
    const okit_sampling *o = find_override(scenario_id);
    if (!o)
        o = find_override(scenario_type);
    if (o) {
        *out = *o;
        return OKIT_SRC_SCENARIO;
    }
    *out = kit_param_defaults;
    if (category > OKIT_CAT_NONE && (size_t)category < COUNT_OF(categories)) {
        out->temperature = categories[category].temperature;
        out->presence_penalty = categories[category].presence_penalty;
        out->frequency_penalty = categories[category].frequency_penalty;
        return OKIT_SRC_CATEGORY;
    }
    return OKIT_SRC_DEFAULTS;
}

static int clamp_one(double *v, double lo, double hi)
{
    double before = *v;
    if (!(*v >= lo)) /* also catches NaN */
        *v = lo;
    else if (*v > hi)
        *v = hi;
    return *v != before;
}

int okit_sampling_clamp(okit_sampling *s)
{
    return clamp_one(&s->temperature, constraint_min.temperature, constraint_max.temperature) +
           clamp_one(&s->top_p, constraint_min.top_p, constraint_max.top_p) +
           clamp_one(&s->presence_penalty, constraint_min.presence_penalty,
                     constraint_max.presence_penalty) +
           clamp_one(&s->frequency_penalty, constraint_min.frequency_penalty,
                     constraint_max.frequency_penalty);
}

const char *okit_source_name(okit_source src)
{
    switch (src) {
    case OKIT_SRC_SCENARIO:
        return "scenario override";
    case OKIT_SRC_CATEGORY:
        return "category default";
    case OKIT_SRC_DEFAULTS:
        break;
    }
    return "defaults";
}

const char *okit_category_name(okit_category cat)
{
    if ((size_t)cat < COUNT_OF(categories))
        return categories[cat].name;
    return "defaults";
}

/* ---- config ------------------------------------------------------------------- */

static void put_err(char *err, size_t errlen, const char *fmt, ...) FUSION_PRINTF(3, 4);

static void put_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

#define CONFIG_KEYS "temperature, top_p, presence_penalty, frequency_penalty, max_tokens"

static int config_set(okit_config *out, const char *key, double v, char *err, size_t errlen)
{
    struct {
        const char *name;
        double *dst;
        int *has;
    } keys[] = {
        {"temperature", &out->force.temperature, &out->has_temperature},
        {"top_p", &out->force.top_p, &out->has_top_p},
        {"presence_penalty", &out->force.presence_penalty, &out->has_presence_penalty},
        {"frequency_penalty", &out->force.frequency_penalty, &out->has_frequency_penalty},
    };
    for (size_t i = 0; i < COUNT_OF(keys); i++) {
        if (strcmp(key, keys[i].name) == 0) {
            *keys[i].dst = v;
            *keys[i].has = 1;
            return 0;
        }
    }
    if (strcmp(key, "max_tokens") == 0) {
        if (v < 1 || v > 1000000 || (double)(int64_t)v != v) {
            put_err(err, errlen, "config.max_tokens must be a whole number in 1..1000000");
            return -1;
        }
        out->max_tokens = (int64_t)v;
        return 0;
    }
    put_err(err, errlen, "config.%s is not a known key (known: " CONFIG_KEYS ")", key);
    return -1;
}

/* The config through the host's typed accessors (SDK 1.1): every key
 * known, every value a number, or init() refuses with the reason. */
int okit_config_read(const fusion_init_args *args, okit_config *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    out->max_tokens = OKIT_DEFAULT_MAX_TOKENS;
    const fusion_host_api *h = args->host;
    int top = h->config_type(args, "");
    if (top == FUSION_CONFIG_ABSENT || top == FUSION_CONFIG_NULL)
        return 0;
    if (top != FUSION_CONFIG_OBJECT) {
        put_err(err, errlen, "config must be an object (keys: " CONFIG_KEYS ")");
        return -1;
    }
    const char *key;
    for (size_t i = 0; (key = h->config_key(args, "", i)) != NULL; i++) {
        if (h->config_type(args, key) != FUSION_CONFIG_NUMBER) {
            put_err(err, errlen, "config.%s must be a number", key);
            return -1;
        }
        if (config_set(out, key, h->config_number(args, key, 0), err, errlen) != 0)
            return -1;
    }
    return 0;
}

void okit_config_override(const okit_config *cfg, okit_sampling *s)
{
    if (cfg->has_temperature)
        s->temperature = cfg->force.temperature;
    if (cfg->has_top_p)
        s->top_p = cfg->force.top_p;
    if (cfg->has_presence_penalty)
        s->presence_penalty = cfg->force.presence_penalty;
    if (cfg->has_frequency_penalty)
        s->frequency_penalty = cfg->force.frequency_penalty;
}
