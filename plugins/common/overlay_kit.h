/*
 * overlay_kit.h - a small static helper compiled into each shipped overlay:
 * the sampling-parameter table, a flat config parser, directive assembly and
 * the text checks the quality rules are built from.
 *
 * Owns nothing at run time: the table is const and every function is pure or
 * writes only to what its caller passes, so hooks may call it from any
 * number of threads at once. Depends only on the SDK header and libc, like
 * the plugins themselves. Every text function takes (text, len): answers
 * are not NUL-terminated necessarily.
 */
#ifndef FUSION_OVERLAY_KIT_H
#define FUSION_OVERLAY_KIT_H

#include <fusion/overlay.h>

#include <stddef.h>
#include <stdint.h>

/* ---- sampling parameters ------------------------------------------------ */

typedef struct okit_sampling {
    double temperature;
    double top_p;
    double presence_penalty;
    double frequency_penalty;
} okit_sampling;

/* Categories of reference/overlay_params.yaml's category_defaults. */
typedef enum okit_category {
    OKIT_CAT_NONE = 0, /* use the defaults */
    OKIT_CAT_FINANCIAL_OPERATIONS,
    OKIT_CAT_SECURITY_OPERATIONS,
    OKIT_CAT_SYSTEM_INTEGRATION,
    OKIT_CAT_COMPLIANCE_MANAGEMENT,
    OKIT_CAT_CUSTOMER_SUCCESS
} okit_category;

/* Where a parameter set came from, for the debug log. */
typedef enum okit_source { OKIT_SRC_SCENARIO, OKIT_SRC_CATEGORY, OKIT_SRC_DEFAULTS } okit_source;

/* The max_tokens the overlays set when the caller set none. */
#define OKIT_DEFAULT_MAX_TOKENS 2048

/* Looks up the parameters: the per-scenario override for scenario_id, else
 * for scenario_type, else the category's defaults (fields the category does
 * not give come from the defaults), else the defaults. NULL ids are "".
 * The result is not clamped yet. Returns where it came from. */
okit_source okit_sampling_lookup(const char *scenario_id, const char *scenario_type,
                                 okit_category category, okit_sampling *out);

/* Clamps every field into the constraints' [min, max]. Returns how many
 * fields changed. (The table's `step` is the tuner's search granularity,
 * not a validity rule: the table's own overrides are off-step, e.g. top_p
 * 0.78, so values are not snapped to it.) */
int okit_sampling_clamp(okit_sampling *s);

const char *okit_source_name(okit_source src);
const char *okit_category_name(okit_category cat);

/* ---- the overlay's config (flat JSON object of numbers) ------------------- */

/* Operator overrides from the overlay's `config:`; has_* says which were
 * given. Unknown keys and non-number values are errors, so a typo does not
 * go unnoticed. */
typedef struct okit_config {
    okit_sampling force;
    int has_temperature, has_top_p, has_presence_penalty, has_frequency_penalty;
    int64_t max_tokens; /* set when the caller sets neither max_tokens nor
                           max_completion_tokens */
} okit_config;

/* Parses {"temperature":0.2,"max_tokens":1024,...}; NULL or "" is {}.
 * Returns 0, or -1 with a message in err. */
int okit_config_parse(const char *json, size_t len, okit_config *out, char *err, size_t errlen);

/* Applies the config's forced values over s. */
void okit_config_override(const okit_config *cfg, okit_sampling *s);

/* ---- directives ---------------------------------------------------------- */

/* Joins the non-empty directive texts, trimmed, separated by a blank line,
 * into one malloc'd string (the caller frees it). Returns NULL when there is
 * no non-empty text or out of memory; *count gets how many were joined. */
char *okit_join_directives(const fusion_directive *d, size_t n, size_t *count);

/* Copies a message into args->error (when the host gave room for one). */
void okit_set_error(const fusion_init_args *args, const char *fmt, ...) FUSION_PRINTF(2, 3);

/* ---- the shared overlay skeleton --------------------------------------------- */

/* What both shipped overlays keep between init() and fini(). Immutable
 * after init(), so concurrent hooks only read it. */
typedef struct okit_state {
    const char *name; /* the overlay's name, static */
    char *directive;  /* the joined directive texts, owned */
    size_t directive_count;
    okit_config cfg;
} okit_state;

/* init(): checks the host table, parses the config, joins the directives.
 * `missing_hint` completes "no directive text: ..." when none was given.
 * Returns 0 and *out, or -1 with args->error filled. */
int okit_state_init(const fusion_init_args *args, const char *name, const char *missing_hint,
                    okit_state **out);
void okit_state_free(okit_state *st);

/* apply(): the directive ahead of every caller message, then the sampling
 * parameters (scenario override, else `category`'s defaults, else the
 * defaults; the config's forced values; clamped), then max_tokens when the
 * caller set no limit. Returns 0, or -1 when the host refused a change. */
int okit_apply_standard(const okit_state *st, fusion_request *req, const fusion_host_api *host,
                        okit_category category);

/* ---- text checks (ASCII case-insensitive) ---------------------------------- */

/*
 * A pattern is a word or phrase matched case-insensitively on word
 * boundaries. A trailing '*' makes its last word a prefix ("idempoten*"
 * matches "idempotent" and "idempotency"); a space matches any run of
 * spaces, tabs, newlines or hyphens ("exactly once" matches "exactly-once").
 */
int okit_has(const char *text, size_t len, const char *pattern);

/* How many of the NULL-terminated patterns occur at least once. */
size_t okit_count_distinct(const char *text, size_t len, const char *const *patterns);

/* The longest run of lines numbered 1, 2, 3 ... ("1." "2)" "Step 3:"),
 * ignoring leading spaces and '*', '_', '>' markers (a "## 1." heading
 * is a section, not a step). */
size_t okit_numbered_steps(const char *text, size_t len);

/* How many transitions are written as "A -> B" ("->", "=>", U+2192 or
 * U+27F6 between two words). */
size_t okit_arrow_transitions(const char *text, size_t len);

/* Distinct state names in an explicit list: list items ("-", "*", "+",
 * "1." or a "|" table row) that open with an identifier in `backticks`, in
 * UPPER_SNAKE_CASE (at least 3 characters) or in snake_case with an '_', on
 * a line without a transition arrow ("- A -> B" is a transition, not a
 * state definition); and the comma-separated items of a "States: a, b, c"
 * line (one to four words each). */
size_t okit_named_states(const char *text, size_t len);

/* Case-sensitive substring search (for upper-case state-name fragments
 * such as "FAIL" in PAYMENT_FAILED). */
int okit_contains(const char *text, size_t len, const char *needle);

/* Whether a sentence says what happens when something fails: "if"/"when"
 * followed in the same sentence by fail*, time* out, timeout, unavailable,
 * crash* or error*. */
int okit_conditional_failure(const char *text, size_t len);

/* ---- scoring ------------------------------------------------------------- */

/* The weighted mean of the rule scores in out->rules (weights[i] for rule
 * i), stored in out->quality and returned. */
double okit_weighted_quality(fusion_evaluation *out, const double *weights);

#endif
