/*
 * overlay_kit.c - see overlay_kit.h. Const tables and pure functions only:
 * safe from every hook thread at once, nothing to undo in fini().
 *
 * The numbers below are reference/overlay_params.yaml's (defaults,
 * overrides, category_defaults, constraints). They are compiled in rather
 * than read at run time because a plugin may depend only on libc and the
 * SDK header; changing a number means rebuilding the overlay, which gives it
 * a new version and a hot swap the host can track.
 */
#include "overlay_kit.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the parameter table --------------------------------------------------- */

static const okit_sampling param_defaults = {
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

#define COUNT_OF(a) (sizeof(a) / sizeof((a)[0]))

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
    *out = param_defaults;
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

/* ---- directives --------------------------------------------------------------- */

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

char *okit_join_directives(const fusion_directive *d, size_t n, size_t *count)
{
    size_t total = 1, used = 0, joined = 0;
    if (count)
        *count = 0;
    if (!d)
        return NULL;
    for (size_t i = 0; i < n; i++)
        total += (d[i].text ? d[i].text_len : 0) + 2;
    char *out = malloc(total);
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        const char *t = d[i].text;
        size_t a = 0, b = t ? d[i].text_len : 0;
        while (a < b && is_space(t[a]))
            a++;
        while (b > a && is_space(t[b - 1]))
            b--;
        if (a == b)
            continue;
        if (memchr(t + a, '\0', b - a)) /* the host hands text; a NUL would truncate */
            continue;
        if (joined++) {
            out[used++] = '\n';
            out[used++] = '\n';
        }
        memcpy(out + used, t + a, b - a);
        used += b - a;
    }
    out[used] = '\0';
    if (joined == 0) {
        free(out);
        return NULL;
    }
    if (count)
        *count = joined;
    return out;
}

void okit_set_error(const fusion_init_args *args, const char *fmt, ...)
{
    if (!args || !args->error || args->error_size == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args->error, args->error_size, fmt, ap);
    va_end(ap);
}

/* ---- the shared overlay skeleton ----------------------------------------------- */

static int host_complete(const fusion_host_api *h)
{
    return h && FUSION_HOST_HAS(h, log) && FUSION_HOST_HAS(h, req_scenario_type) &&
           FUSION_HOST_HAS(h, req_scenario_id) && FUSION_HOST_HAS(h, req_message_count) &&
           FUSION_HOST_HAS(h, req_message_role) && FUSION_HOST_HAS(h, req_message_content) &&
           FUSION_HOST_HAS(h, req_get_number) && FUSION_HOST_HAS(h, req_prepend_system) &&
           FUSION_HOST_HAS(h, req_set_number) && FUSION_HOST_HAS(h, req_set_integer) &&
           FUSION_HOST_HAS(h, config_type) && FUSION_HOST_HAS(h, config_key) &&
           FUSION_HOST_HAS(h, config_number);
}

int okit_state_init(const fusion_init_args *args, const char *name, const char *missing_hint,
                    okit_state **out)
{
    *out = NULL;
    if (!args || args->size < sizeof(fusion_init_args) || !host_complete(args->host)) {
        okit_set_error(args, "%s: the host's API table lacks functions of ABI 1.1", name);
        return -1;
    }
    okit_state *st = calloc(1, sizeof(*st));
    if (!st) {
        okit_set_error(args, "%s: out of memory", name);
        return -1;
    }
    st->name = name;
    char why[200] = "";
    if (okit_config_read(args, &st->cfg, why, sizeof(why)) != 0) {
        okit_set_error(args, "%s: %s", name, why);
        okit_state_free(st);
        return -1;
    }
    st->directive =
        okit_join_directives(args->directives, args->directive_count, &st->directive_count);
    if (!st->directive) {
        okit_set_error(args, "%s: no directive text: %s", name, missing_hint);
        okit_state_free(st);
        return -1;
    }
    /* Forced values outside the constraints still work (they are clamped
     * on every apply) but the operator should hear about it once. */
    okit_sampling given = param_defaults; /* in range; replaced by what is given */
    okit_config_override(&st->cfg, &given);
    if (okit_sampling_clamp(&given) > 0)
        args->host->log(FUSION_LOG_WARN,
                        "config sets sampling values outside the tuning constraints; they "
                        "are clamped to temperature [0.15,0.40], top_p [0.60,0.95], "
                        "presence_penalty [0,0.20], frequency_penalty [0.15,0.50]");
    *out = st;
    return 0;
}

void okit_state_free(okit_state *st)
{
    if (!st)
        return;
    free(st->directive);
    free(st);
}

int okit_apply_standard(const okit_state *st, fusion_request *req, const fusion_host_api *host,
                        okit_category category)
{
    if (!st || !req || !host)
        return -1;
    if (host->req_prepend_system(req, st->directive) != 0) {
        host->log(FUSION_LOG_WARN, "the host refused the directive");
        return -1;
    }
    const char *id = host->req_scenario_id(req);
    const char *type = host->req_scenario_type(req);
    okit_sampling p;
    okit_source src = okit_sampling_lookup(id, type, category, &p);
    okit_config_override(&st->cfg, &p);
    int clamped = okit_sampling_clamp(&p);
    if (host->req_set_number(req, "temperature", p.temperature) != 0 ||
        host->req_set_number(req, "top_p", p.top_p) != 0 ||
        host->req_set_number(req, "presence_penalty", p.presence_penalty) != 0 ||
        host->req_set_number(req, "frequency_penalty", p.frequency_penalty) != 0) {
        host->log(FUSION_LOG_WARN, "the host refused a sampling parameter");
        return -1;
    }
    /* Only fill in a limit the caller did not set: never raise theirs.
     * max_completion_tokens is the newer name of the same limit. */
    double limit;
    int set_limit = !host->req_get_number(req, "max_tokens", &limit) &&
                    !host->req_get_number(req, "max_completion_tokens", &limit);
    if (set_limit && host->req_set_integer(req, "max_tokens", st->cfg.max_tokens) != 0) {
        host->log(FUSION_LOG_WARN, "the host refused max_tokens");
        return -1;
    }
    host->log(FUSION_LOG_DEBUG,
              "applied %zu directive(s); scenario id '%.64s' type '%.64s': %s (%s)%s "
              "temperature=%.2f top_p=%.2f presence_penalty=%.2f frequency_penalty=%.2f%s",
              st->directive_count, id, type, okit_source_name(src),
              src == OKIT_SRC_CATEGORY ? okit_category_name(category) : "reference table",
              clamped ? " clamped" : "", p.temperature, p.top_p, p.presence_penalty,
              p.frequency_penalty, set_limit ? " max_tokens set" : " caller's max_tokens kept");
    return 0;
}

/* ---- text checks --------------------------------------------------------------- */

static char lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/* Letters and digits (and any non-ASCII byte, so a word is never split in
 * the middle of a UTF-8 sequence). '_' separates words: PAYMENT_FAILED
 * contains the word "failed". */
static int word_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80;
}

/* A state name or code identifier keeps its '_' (PAYMENT_FAILED is one
 * name), unlike a word. */
static int ident_char(char c)
{
    return word_char((unsigned char)c) || c == '_';
}

static int letter(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80;
}

static int gap_char(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '-' || c == '_';
}

/* Matches pattern at text[pos] (pos on a word start); returns the end or -1. */
static long match_at(const char *text, size_t len, size_t pos, const char *p)
{
    size_t i = pos;
    int open_end = 0; /* a pattern ending in a space ends on the gap itself */
    for (; *p; p++) {
        open_end = *p == ' ';
        if (p[0] == '*' && p[1] == '\0') {
            while (i < len && word_char((unsigned char)text[i]))
                i++;
            return (long)i;
        }
        if (*p == ' ') {
            if (i >= len || !gap_char(text[i]))
                return -1;
            while (i < len && gap_char(text[i]))
                i++;
            continue;
        }
        if (i >= len || lower(text[i]) != lower(*p))
            return -1;
        i++;
    }
    if (!open_end && i < len && word_char((unsigned char)text[i]))
        return -1;
    return (long)i;
}

static int word_start(const char *text, size_t pos)
{
    return pos == 0 || !word_char((unsigned char)text[pos - 1]);
}

int okit_has(const char *text, size_t len, const char *pattern)
{
    if (!text || !pattern || !*pattern)
        return 0;
    char first = lower(pattern[0]);
    for (size_t i = 0; i < len; i++) {
        if (lower(text[i]) == first && word_start(text, i) && match_at(text, len, i, pattern) >= 0)
            return 1;
    }
    return 0;
}

/* The word starts of a text, chained by their lowercased first byte, so
 * that a list of patterns is matched by visiting each pattern's candidate
 * positions only, rather than scanning the whole text once per pattern. */
#define WORD_INDEX_MAX 2048 /* longer texts fall back to one scan per pattern */

#define BUCKETS 28 /* a..z, digits, anything else */

typedef struct word_index {
    uint16_t head[BUCKETS];        /* 1 + first entry of a bucket; 0: none */
    uint16_t next[WORD_INDEX_MAX]; /* 1 + next entry in the same bucket */
    uint32_t pos[WORD_INDEX_MAX];
} word_index;

static unsigned bucket(char c)
{
    c = lower(c);
    if (c >= 'a' && c <= 'z')
        return (unsigned)(c - 'a');
    return c >= '0' && c <= '9' ? 26 : 27;
}

static int index_build(word_index *ix, const char *text, size_t len)
{
    if (len > UINT32_MAX)
        return -1;
    memset(ix->head, 0, sizeof(ix->head));
    size_t n = 0;
    int after_word = 0; /* word_start(): the previous byte is not a word byte */
    for (size_t i = 0; i < len; i++) {
        int was = after_word;
        after_word = word_char((unsigned char)text[i]);
        if (was)
            continue;
        if (n == WORD_INDEX_MAX)
            return -1;
        unsigned b = bucket(text[i]);
        ix->pos[n] = (uint32_t)i;
        ix->next[n] = ix->head[b];
        ix->head[b] = (uint16_t)(n + 1);
        n++;
    }
    return 0;
}

/* A cheap filter before match_at(): the first two bytes, when the pattern's
 * second one is literal. Most word starts in a bucket fail it. */
static int may_match_at(const char *text, size_t len, size_t at, const char *p)
{
    if (lower(text[at]) != lower(p[0]))
        return 0;
    if (p[0] == ' ' || p[1] == '\0' || p[1] == ' ' || p[1] == '*')
        return 1; /* a gap spans several bytes; '*' ends in anything */
    return at + 1 < len && lower(text[at + 1]) == lower(p[1]);
}

/* okit_has() over the index: the same matches, visiting only the word starts
 * whose first byte can begin the pattern (match_at() checks it exactly). */
static int index_has(const word_index *ix, const char *text, size_t len, const char *pattern)
{
    if (!pattern || !*pattern)
        return 0;
    for (uint16_t k = ix->head[bucket(pattern[0])]; k; k = ix->next[k - 1]) {
        uint32_t at = ix->pos[k - 1];
        if (may_match_at(text, len, at, pattern) && match_at(text, len, at, pattern) >= 0)
            return 1;
    }
    return 0;
}

/* The answer being evaluated, indexed once (okit_eval_begin): a query on
 * any span of it uses this index (a binary search per pattern) instead of
 * building one for the span. Per thread, plain data, no destructor: one
 * thread runs one evaluate() at a time. */
typedef struct answer_index {
    const char *text;
    size_t len;
    uint32_t *pos;               /* word starts, grouped by bucket, ascending */
    uint32_t first[BUCKETS + 1]; /* bucket b: pos[first[b] .. first[b + 1]) */
} answer_index;

static _Thread_local answer_index *current_answer;

void okit_eval_begin(const char *text, size_t len)
{
    okit_eval_end();
    if (!text || len == 0 || len > UINT32_MAX)
        return;
    answer_index *a = calloc(1, sizeof(*a));
    uint32_t count[BUCKETS] = {0};
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        if (word_start(text, i)) {
            count[bucket(text[i])]++;
            n++;
        }
    if (a)
        a->pos = malloc((n ? n : 1) * sizeof(*a->pos));
    if (!a || !a->pos) {
        free(a);
        return; /* each query indexes its own span instead */
    }
    for (unsigned b = 0; b < BUCKETS; b++)
        a->first[b + 1] = a->first[b] + count[b];
    uint32_t fill[BUCKETS];
    memcpy(fill, a->first, sizeof(fill));
    for (size_t i = 0; i < len; i++)
        if (word_start(text, i))
            a->pos[fill[bucket(text[i])]++] = (uint32_t)i;
    a->text = text;
    a->len = len;
    current_answer = a;
}

void okit_eval_end(void)
{
    if (current_answer) {
        free(current_answer->pos);
        free(current_answer);
        current_answer = NULL;
    }
}

/* An index over one text, built once for several pattern lists: the
 * answer's, when the text is a span of it, else one of its own. */
typedef struct text_ix {
    word_index ix;
    int indexed;                /* 0: too many words, scan per pattern instead */
    const answer_index *answer; /* the span's answer, or NULL */
    size_t off;                 /* where the span starts in it */
} text_ix;

static void text_ix_build(text_ix *t, const char *text, size_t len)
{
    const answer_index *a = current_answer;
    if (a && text >= a->text && text + len <= a->text + a->len) {
        t->answer = a;
        t->off = (size_t)(text - a->text);
        t->indexed = 1;
        return;
    }
    t->answer = NULL;
    t->indexed = index_build(&t->ix, text, len) == 0;
}

/* okit_has() on a span of the indexed answer. */
static int answer_has(const answer_index *a, size_t off, const char *text, size_t len,
                      const char *pattern)
{
    unsigned b = bucket(pattern[0]);
    uint32_t lo = a->first[b], hi = a->first[b + 1];
    while (lo < hi) { /* the first word start at or after the span */
        uint32_t mid = lo + (hi - lo) / 2;
        if (a->pos[mid] < off)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (uint32_t k = lo; k < a->first[b + 1] && a->pos[k] < off + len; k++) {
        size_t at = a->pos[k] - off;
        if (may_match_at(text, len, at, pattern) && match_at(text, len, at, pattern) >= 0)
            return 1;
    }
    /* The span's first byte starts a word of the span even in the middle
     * of one of the answer's. */
    return off > 0 && len > 0 && !word_start(a->text, off) && lower(text[0]) == lower(pattern[0]) &&
           match_at(text, len, 0, pattern) >= 0;
}

static int ix_has(const text_ix *t, const char *text, size_t len, const char *pattern)
{
    if (!pattern || !*pattern)
        return 0;
    if (t->answer)
        return answer_has(t->answer, t->off, text, len, pattern);
    return t->indexed ? index_has(&t->ix, text, len, pattern) : okit_has(text, len, pattern);
}

static uint32_t ix_mask(const text_ix *t, const char *text, size_t len, const char *const *patterns)
{
    uint32_t mask = 0;
    for (size_t i = 0; patterns && patterns[i] && i < 32; i++)
        if (ix_has(t, text, len, patterns[i]))
            mask |= (uint32_t)1 << i;
    return mask;
}

static size_t ix_count(const text_ix *t, const char *text, size_t len, const char *const *patterns)
{
    size_t n = 0;
    for (size_t i = 0; patterns && patterns[i]; i++)
        n += ix_has(t, text, len, patterns[i]) ? 1 : 0;
    return n;
}

uint32_t okit_match_mask(const char *text, size_t len, const char *const *patterns)
{
    if (!text || !patterns)
        return 0;
    text_ix t;
    text_ix_build(&t, text, len);
    return ix_mask(&t, text, len, patterns);
}

size_t okit_count_distinct(const char *text, size_t len, const char *const *patterns)
{
    if (!text || !patterns)
        return 0;
    text_ix t;
    text_ix_build(&t, text, len);
    return ix_count(&t, text, len, patterns);
}

static int same_ci(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (lower(a[i]) != lower(b[i]))
            return 0;
    }
    return 1;
}

int okit_has_name(const char *text, size_t len, const char *name)
{
    size_t n = name ? strlen(name) : 0;
    if (!text || n == 0 || n > len)
        return 0;
    for (size_t i = 0; i + n <= len; i++) {
        if ((i == 0 || !ident_char(text[i - 1])) && (i + n == len || !ident_char(text[i + n])) &&
            same_ci(text + i, name, n))
            return 1;
    }
    return 0;
}

size_t okit_distinct_words(const char *text, size_t len, size_t cap)
{
    size_t start[OKIT_MAX_WORDS], size[OKIT_MAX_WORDS], n = 0;
    if (!text)
        return 0;
    if (cap > OKIT_MAX_WORDS)
        cap = OKIT_MAX_WORDS;
    for (size_t i = 0; i < len && n < cap;) {
        if (!ident_char(text[i])) {
            i++;
            continue;
        }
        size_t s = i;
        int has_letter = 0;
        /* "customer's" is one word: an apostrophe between two word
         * characters does not end it. */
        while (i < len && (ident_char(text[i]) ||
                           (text[i] == '\'' && i + 1 < len && ident_char(text[i + 1])))) {
            has_letter |= letter((unsigned char)text[i]);
            i++;
        }
        /* "3", "2024" (numbers alone) and "x", "y" (one-character filler)
         * do not make a sentence. */
        if (!has_letter || i - s < 2)
            continue;
        size_t k = 0;
        while (k < n && !(size[k] == i - s && same_ci(text + start[k], text + s, i - s)))
            k++;
        if (k == n) {
            start[n] = s;
            size[n++] = i - s;
        }
    }
    return n;
}

/* Whether the line [s, e) is a block of its own even without a blank line
 * around it: a heading or a table row. */
static int own_line(const char *t, size_t s, size_t e)
{
    while (s < e && (t[s] == ' ' || t[s] == '\t'))
        s++;
    return s < e && (t[s] == '#' || t[s] == '|');
}

/* Whether the line starting at t[i] starts a new block: blank, a heading,
 * a table row, a quote or a list item ("- ", "* ", "+ ", "1. ", "2) "). */
static int block_start(const char *t, size_t len, size_t i)
{
    while (i < len && (t[i] == ' ' || t[i] == '\t' || t[i] == '\r'))
        i++;
    if (i >= len || t[i] == '\n' || t[i] == '#' || t[i] == '|' || t[i] == '>')
        return 1;
    if ((t[i] == '-' || t[i] == '*' || t[i] == '+') && i + 1 < len &&
        (t[i + 1] == ' ' || t[i + 1] == '\t'))
        return 1;
    size_t d = i;
    while (d < len && t[d] >= '0' && t[d] <= '9')
        d++;
    return d > i && d < len && (t[d] == '.' || t[d] == ')');
}

int okit_next_sentence(const char *text, size_t len, size_t *pos, size_t *start, size_t *end)
{
    if (!text)
        return 0;
    size_t i = *pos;
    while (i < len && is_space(text[i]))
        i++;
    if (i >= len) {
        *pos = len;
        return 0;
    }
    *start = i;
    for (; i < len; i++) {
        char c = text[i];
        /* "1.5" and "v2.1" do not end a sentence: the mark must be
         * followed by a space or the end. */
        if ((c == '.' || c == '!' || c == '?') && (i + 1 >= len || is_space(text[i + 1]))) {
            *end = i + 1;
            *pos = i + 1;
            return 1;
        }
        if (c == '\n') {
            /* Each line break is looked at by one call only, so finding
             * its line's start here keeps the iteration linear. */
            size_t line = i;
            while (line > 0 && text[line - 1] != '\n')
                line--;
            /* A line wrapped to a width continues its sentence; a short
             * line ("invariant must never"), a heading, a table row, a
             * list item or a paragraph break does not, so keywords on
             * lines of their own never add up to one long sentence. */
            if (i - line < OKIT_WRAP_WIDTH || own_line(text, line, i) ||
                block_start(text, len, i + 1)) {
                *end = i;
                *pos = i + 1;
                return 1;
            }
        }
    }
    *end = len;
    *pos = len;
    return 1;
}

size_t okit_substantive(const char *text, size_t len, const char *const *need,
                        const char *const *also, size_t min_words, uint32_t *mask)
{
    size_t pos = 0, s, e, n = 0;
    uint32_t m = 0;
    while (okit_next_sentence(text, len, &pos, &s, &e)) {
        text_ix t; /* one index of the sentence for both lists */
        text_ix_build(&t, text + s, e - s);
        uint32_t hit = ix_mask(&t, text + s, e - s, need);
        if (!hit || (also && ix_count(&t, text + s, e - s, also) == 0) ||
            okit_distinct_words(text + s, e - s, min_words) < min_words)
            continue;
        n++;
        m |= hit;
    }
    if (mask)
        *mask = m;
    return n;
}

/* Line iteration: [start, end) of the line beginning at *pos. */
static int next_line(const char *text, size_t len, size_t *pos, size_t *start, size_t *end)
{
    if (*pos >= len)
        return 0;
    *start = *pos;
    const char *nl = memchr(text + *pos, '\n', len - *pos);
    *end = nl ? (size_t)(nl - text) : len;
    *pos = *end + 1;
    return 1;
}

/* The step number a line opens with, or 0 when it is not a numbered line;
 * *after gets where the step's own text starts. */
static unsigned line_number(const char *t, size_t i, size_t end, size_t *after)
{
    while (i < end && strchr(" \t*_>", t[i]) && t[i])
        i++;
    int step_word = 0;
    if (end - i > 5 && lower(t[i]) == 's' && lower(t[i + 1]) == 't' && lower(t[i + 2]) == 'e' &&
        lower(t[i + 3]) == 'p' && (t[i + 4] == ' ' || t[i + 4] == '\t')) {
        i += 5;
        step_word = 1;
    }
    unsigned n = 0, digits = 0;
    while (i < end && t[i] >= '0' && t[i] <= '9' && digits < 3) {
        n = n * 10 + (unsigned)(t[i++] - '0');
        digits++;
    }
    if (digits == 0 || i >= end)
        return 0;
    /* "1." "1)" "1:" and, after "Step", also "Step 1 -"; never "1.5" or 10 % */
    if (t[i] == '.' || t[i] == ')' || t[i] == ':' || (step_word && (t[i] == ' ' || t[i] == '-'))) {
        if (i + 1 < end && t[i + 1] >= '0' && t[i + 1] <= '9')
            return 0;
        *after = i + 1;
        return n;
    }
    return 0;
}

/* An indented line that is neither blank nor numbered carries on the step
 * above it (a wrapped step, or its sub-items); anything else ends it. */
static int continues_step(const char *t, size_t s, size_t e)
{
    size_t after, i = s;
    if (s >= e || (t[s] != ' ' && t[s] != '\t'))
        return 0;
    while (i < e && (t[i] == ' ' || t[i] == '\t' || t[i] == '\r'))
        i++;
    return i < e && line_number(t, s, e, &after) == 0;
}

/* Order of preference between two runs: one that qualifies first, then
 * more steps with the wording, then more substantive steps, then more
 * steps. */
static int better_run(const okit_step_run *a, const okit_step_run *b, size_t min_steps)
{
    int qa = a->substantive >= min_steps && a->worded > 0;
    int qb = b->substantive >= min_steps && b->worded > 0;
    if (qa != qb)
        return qa > qb;
    if (a->worded != b->worded)
        return a->worded > b->worded;
    if (a->substantive != b->substantive)
        return a->substantive > b->substantive;
    return a->steps > b->steps;
}

void okit_best_step_run(const char *text, size_t len, size_t min_words, size_t min_steps,
                        const char *const *patterns, okit_step_run *best)
{
    okit_step_run cur = {0, 0, 0};
    int active = 0;
    unsigned prev = 0;
    size_t pos = 0, s, e;
    *best = cur;
    while (text && next_line(text, len, &pos, &s, &e)) {
        size_t after = 0;
        unsigned n = line_number(text, s, e, &after);
        if (n == 0)
            continue; /* prose between steps does not break the run */
        if (n == 1 || !active || n != prev + 1) {
            if (active && better_run(&cur, best, min_steps))
                *best = cur;
            cur = (okit_step_run){0, 0, 0};
            active = n == 1; /* "5." out of order starts nothing */
        }
        prev = n;
        if (!active)
            continue;
        size_t step_end = e, q = pos, ls, le;
        while (next_line(text, len, &q, &ls, &le) && continues_step(text, ls, le))
            step_end = le;
        cur.steps++;
        if (okit_distinct_words(text + after, step_end - after, min_words) >= min_words) {
            cur.substantive++;
            if (okit_count_distinct(text + after, step_end - after, patterns) > 0)
                cur.worded++;
        }
    }
    if (active && better_run(&cur, best, min_steps))
        *best = cur;
}

/* ---- the state model ---------------------------------------------------------- */

/* Length of an arrow at text[i], or 0. */
static size_t arrow_at(const char *t, size_t len, size_t i)
{
    if (i + 1 < len && (t[i] == '-' || t[i] == '=') && t[i + 1] == '>')
        return 2;
    if (i + 2 < len && (unsigned char)t[i] == 0xE2 &&
        (((unsigned char)t[i + 1] == 0x86 && (unsigned char)t[i + 2] == 0x92) ||
         ((unsigned char)t[i + 1] == 0x9F && (unsigned char)t[i + 2] == 0xB6)))
        return 3;
    return 0;
}

static int decoration(char c)
{
    return c == ' ' || c == '\t' || c == '`' || c == '*' || c == '"' || c == '\'';
}

/* Index of a name in the model (case-insensitive), or -1. */
static long name_find(const okit_state_model *m, const char *name, size_t n)
{
    for (size_t i = 0; i < m->name_count; i++) {
        if (strlen(m->names[i]) == n && same_ci(m->names[i], name, n))
            return (long)i;
    }
    return -1;
}

/* Adds a name (or finds it); -1 when it is too short to be a state name
 * ("A", "B": the minimum is what keeps single letters from passing as a
 * model), too long, or the model is full. */
static long name_add(okit_state_model *m, const char *name, size_t n)
{
    if (n < OKIT_MIN_STATE_NAME || n >= OKIT_STATE_NAME_SZ)
        return -1;
    long k = name_find(m, name, n);
    if (k >= 0 || m->name_count >= OKIT_MAX_STATES)
        return k;
    memcpy(m->names[m->name_count], name, n);
    m->names[m->name_count][n] = '\0';
    return (long)m->name_count++;
}

/* Whether [s, s+n) has the form of a state name by itself: `code` (letters,
 * digits, '_', a letter among them), UPPER_SNAKE_CASE or lower snake_case
 * with an inner '_' ("under_review"; a plain lower-case word is prose), at
 * least OKIT_MIN_STATE_NAME characters. */
static int state_form(const char *s, size_t n, int backticked)
{
    if (n < OKIT_MIN_STATE_NAME || n >= OKIT_STATE_NAME_SZ)
        return 0;
    int upper = s[0] >= 'A' && s[0] <= 'Z', low = s[0] >= 'a' && s[0] <= 'z', underscore = 0,
        has_letter = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if ((unsigned char)c >= 0x80 || !ident_char(c))
            return 0;
        underscore |= c == '_';
        has_letter |= letter((unsigned char)c);
        if (c >= 'a' && c <= 'z')
            upper = 0;
        if (c >= 'A' && c <= 'Z')
            low = 0;
    }
    if (backticked)
        return has_letter;
    return upper || (low && underscore && s[n - 1] != '_');
}

/* A state name starting at t[i], of state_form ("Refund", mixed case, is
 * a word, not a name). Returns its length and sets *name, or 0. */
static size_t state_token(const char *t, size_t len, size_t i, const char **name)
{
    size_t j = i + (i < len && t[i] == '`');
    size_t k = j;
    while (k < len && ident_char(t[k]))
        k++;
    int backticked = j > i && k < len && t[k] == '`';
    if (j > i && !backticked)
        return 0;
    if (!state_form(t + j, k - j, backticked))
        return 0;
    *name = t + j;
    return k - j;
}

/* "States: a, b and c" on one line: each item (split at commas,
 * semicolons, "and", "or") of one to four words or a `code` name is a state
 * name. */
static void inline_state_list(const char *t, size_t s, size_t e, okit_state_model *m)
{
    size_t i, k = 0;
    for (i = s; i < e && i < s + 60; i++) {
        long end;
        if (word_start(t, i) && (end = match_at(t, e, i, "states")) >= 0) {
            k = (size_t)end;
            while (k < e && (t[k] == ' ' || t[k] == '*'))
                k++;
            if (k < e && t[k] == ':')
                break;
        }
    }
    if (i >= e || i >= s + 60)
        return;
    for (size_t a = k + 1; a < e;) {
        size_t b = a;
        while (b < e && t[b] != ',' && t[b] != ';' &&
               !(t[b] == ' ' && b > a &&
                 (match_at(t, e, b + 1, "and ") >= 0 || match_at(t, e, b + 1, "or ") >= 0)))
            b++;
        size_t x = a, y = b;
        while (x < y && strchr(" \t`*", t[x]) && t[x])
            x++;
        if (y - x > 4 && match_at(t, y, x, "and ") >= 0)
            x += 4;
        else if (y - x > 3 && match_at(t, y, x, "or ") >= 0)
            x += 3;
        while (y > x && strchr(" \t`*.\r", t[y - 1]) && t[y - 1])
            y--;
        size_t words = y > x ? 1 : 0, ok = y > x && y - x < OKIT_STATE_NAME_SZ;
        for (size_t c = x; c < y && ok; c++) {
            if (t[c] == ' ')
                words++;
            else if (!ident_char(t[c]) && t[c] != '-')
                ok = 0;
        }
        if (ok && words <= 4)
            name_add(m, t + x, y - x);
        a = b + 1;
    }
}

static const char *const error_name_words[] = {"fail",     "failed",   "failing",   "failure",
                                               "failures", "error",    "errors",    "errored",
                                               "reject",   "rejected", "rejection", NULL};
static const char *const error_state_phrases[] = {
    "error state*", "failed state*", "failure state*", "rejected state*", "exception state*", NULL};

/* The listed states: list items ("-", "*", "+", "1." or a "|" table row)
 * that open with a state name, on a line without an arrow, and the items
 * of "States:" lines. */
static void collect_listed(const char *text, size_t len, okit_state_model *m)
{
    const char *name;
    size_t n, pos = 0, s, e;
    while (next_line(text, len, &pos, &s, &e)) {
        size_t i = s;
        inline_state_list(text, s, e, m);
        while (i < e && (text[i] == ' ' || text[i] == '\t'))
            i++;
        if (i < e && strchr("-*+|", text[i]) && text[i]) {
            i++;
        } else {
            size_t d = i;
            while (d < e && text[d] >= '0' && text[d] <= '9')
                d++;
            if (d == i || d >= e || (text[d] != '.' && text[d] != ')'))
                continue;
            i = d + 1;
        }
        while (i < e && (text[i] == ' ' || text[i] == '\t' || text[i] == '*' || text[i] == '_'))
            i++;
        /* "- A -> B" is a transition, not the definition of state A. */
        int arrow = 0;
        for (size_t k = i; k < e && !arrow; k++)
            arrow = arrow_at(text, e, k) > 0;
        long k;
        if (arrow || (n = state_token(text, e, i, &name)) == 0 || (k = name_add(m, name, n)) < 0)
            continue;
        /* "- `ON_HOLD`: error state, ..." declares an error state whatever
         * its name; a sentence elsewhere that mentions the state does not
         * (it may be about leaving it). */
        size_t rest = (size_t)(name - text) + n;
        if (okit_count_distinct(text + rest, e - rest, error_state_phrases) > 0)
            m->error[k] = 1;
    }
}

/* The state named at t[i] (a word start): the longest listed name written
 * there, else a name of state form. Returns its end and sets *at and *n, or 0. */
static size_t state_after(const okit_state_model *m, const char *t, size_t len, size_t i,
                          size_t *at, size_t *n)
{
    size_t best = 0;
    for (size_t k = 0; k < m->listed; k++) {
        size_t l = strlen(m->names[k]);
        if (l > best && i + l <= len && same_ci(t + i, m->names[k], l) &&
            (i + l == len || !ident_char(t[i + l])))
            best = l;
    }
    if (best == 0) {
        size_t j = i;
        while (j < len && ident_char(t[j]))
            j++;
        int bt = i > 0 && t[i - 1] == '`' && j < len && t[j] == '`';
        if (!state_form(t + i, j - i, bt))
            return 0;
        best = j - i;
    }
    *at = i;
    *n = best;
    return i + best;
}

/* The state named just before t[l] (l is where it ends), as state_after. */
static int state_before(const okit_state_model *m, const char *t, size_t len, size_t l, size_t *at,
                        size_t *n)
{
    size_t best = 0;
    for (size_t k = 0; k < m->listed; k++) {
        size_t w = strlen(m->names[k]);
        if (w > best && w <= l && same_ci(t + l - w, m->names[k], w) &&
            (l == w || !ident_char(t[l - w - 1])))
            best = w;
    }
    if (best == 0) {
        size_t j = l;
        while (j > 0 && ident_char(t[j - 1]))
            j--;
        int bt = j > 0 && t[j - 1] == '`' && l < len && t[l] == '`';
        if (!state_form(t + j, l - j, bt))
            return 0;
        best = l - j;
    }
    *at = l - best;
    *n = best;
    return 1;
}

static void edge_add(okit_state_model *m, const char *t, size_t fa, size_t fn, size_t ta, size_t tn)
{
    long from = name_add(m, t + fa, fn), to = name_add(m, t + ta, tn);
    if (from < 0 || to < 0 || from == to || m->edge_count >= OKIT_MAX_EDGES)
        return; /* "A -> A" changes nothing: not a transition */
    for (size_t i = 0; i < m->edge_count; i++) {
        if (m->edges[i].from == from && m->edges[i].to == to)
            return;
    }
    m->edges[m->edge_count].from = (unsigned char)from;
    m->edges[m->edge_count].to = (unsigned char)to;
    m->edge_count++;
}

static size_t skip_decoration(const char *t, size_t len, size_t i)
{
    while (i < len && decoration(t[i]))
        i++;
    return i;
}

/* "from X to Y" / "from the X state into Y": X and Y as state_after. */
static void from_to(okit_state_model *m, const char *t, size_t len, size_t i)
{
    long w = match_at(t, len, i, "from ");
    size_t fa, fn, ta, tn, k;
    if (w < 0)
        return;
    k = skip_decoration(t, len, (size_t)w);
    if ((w = match_at(t, len, k, "the ")) >= 0)
        k = skip_decoration(t, len, (size_t)w);
    if (!(k = state_after(m, t, len, k, &fa, &fn)))
        return;
    k = skip_decoration(t, len, k);
    if ((w = match_at(t, len, k, "state ")) >= 0)
        k = (size_t)w;
    if ((w = match_at(t, len, k, "to ")) < 0 && (w = match_at(t, len, k, "into ")) < 0)
        return;
    k = skip_decoration(t, len, (size_t)w);
    if ((w = match_at(t, len, k, "the ")) >= 0)
        k = skip_decoration(t, len, (size_t)w);
    if (state_after(m, t, len, k, &ta, &tn))
        edge_add(m, t, fa, fn, ta, tn);
}

/* Error states by name: a failure word in it (PAYMENT_FAILED,
 * evidence_rejected; FAILOVER is not one). collect_listed() has already
 * marked the listed states whose own item calls them an error state. */
static void mark_errors(okit_state_model *m)
{
    for (size_t k = 0; k < m->name_count; k++)
        m->error[k] |= okit_count_distinct(m->names[k], strlen(m->names[k]), error_name_words) > 0;
}

int okit_state_model_parse(const char *text, size_t len, okit_state_model *m)
{
    memset(m, 0, sizeof(*m));
    if (!text)
        return 0;
    collect_listed(text, len, m);
    m->listed = m->name_count;
    for (size_t i = 0; i < len; i++) {
        if (word_start(text, i) && (text[i] == 'f' || text[i] == 'F')) {
            from_to(m, text, len, i);
            continue;
        }
        size_t a = arrow_at(text, len, i);
        if (!a)
            continue;
        size_t l = i, r = i + a, fa, fn, ta, tn;
        while (l > 0 && decoration(text[l - 1]))
            l--;
        r = skip_decoration(text, len, r);
        if (l > 0 && ident_char(text[l - 1]) && r < len && ident_char(text[r]))
            m->written++;
        if (state_before(m, text, len, l, &fa, &fn) && state_after(m, text, len, r, &ta, &tn))
            edge_add(m, text, fa, fn, ta, tn);
        i += a - 1;
    }
    mark_errors(m);
    return 0;
}

static const char *const failure_words[] = {
    "fail",        "fails",       "failed",   "failing",   "failure", "failures", "timeout*",
    "times out",   "timed out",   "time out", "crash",     "crashes", "crashed",  "crashing",
    "error",       "errors",      "errored",  "reject",    "rejects", "rejected", "declined",
    "unavailable", "unreachable", "is down",  "goes down", NULL};

int okit_conditional_failure(const char *text, size_t len)
{
    if (!text)
        return 0;
    /* Only the first "if"/"when" matters: a failure word after any later
     * one is also after the first. One pass, however many there are. */
    long end = -1;
    for (size_t i = 0; i < len && end < 0; i++) {
        if (!word_start(text, i))
            continue;
        end = match_at(text, len, i, "if");
        if (end < 0)
            end = match_at(text, len, i, "when");
    }
    for (size_t j = end < 0 ? len : (size_t)end; j < len; j++) {
        if (!word_start(text, j))
            continue;
        for (size_t k = 0; failure_words[k]; k++) {
            if (match_at(text, len, j, failure_words[k]) >= 0)
                return 1;
        }
    }
    return 0;
}

double okit_weighted_quality(fusion_evaluation *out, const double *weights)
{
    double sum = 0.0, wsum = 0.0;
    for (size_t i = 0; i < out->rule_count; i++) {
        sum += weights[i] * out->rules[i].score;
        wsum += weights[i];
    }
    out->quality = wsum > 0.0 ? sum / wsum : 0.0;
    if (out->quality > 1.0)
        out->quality = 1.0;
    if (out->quality < 0.0)
        out->quality = 0.0;
    return out->quality;
}
