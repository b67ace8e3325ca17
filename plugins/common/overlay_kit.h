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

/* Reads the overlay's `config:` ({"temperature": 0.2, "max_tokens": 1024,
 * ...}; absent or null is {}) through the host's typed accessors (SDK 1.1):
 * 0, or -1 with a message in err for an unknown key or a value that is not
 * a number. During init() only. */
int okit_config_read(const fusion_init_args *args, okit_config *out, char *err, size_t errlen);

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
 * spaces, tabs, newlines, hyphens or '_' ("exactly once" matches
 * "exactly-once"). '_' separates words: PAYMENT_FAILED contains "failed",
 * FAILOVER does not contain "fail".
 */
int okit_has(const char *text, size_t len, const char *pattern);

/* Around one evaluate(): indexes the answer once, so that every query below
 * on a span of it (a sentence, a line) looks its patterns up instead of
 * scanning the span again. Results are the same with or without. */
void okit_eval_begin(const char *text, size_t len);
void okit_eval_end(void);

/* How many of the NULL-terminated patterns occur at least once. */
size_t okit_count_distinct(const char *text, size_t len, const char *const *patterns);

/* Bit i set when patterns[i] occurs (only the first 32 patterns count). */
uint32_t okit_match_mask(const char *text, size_t len, const char *const *patterns);

/* Whether an identifier (a state name: '_' is part of it) occurs as a
 * whole, case-insensitively: "PENDING" is not found in PENDING_REVIEW. */
int okit_has_name(const char *text, size_t len, const char *name);

/* The most words okit_distinct_words counts. */
#define OKIT_MAX_WORDS 32

/* How many different words (case-insensitive) the text has, counting up to
 * cap (at most OKIT_MAX_WORDS). A word is a run of letters, digits and '_'
 * (an apostrophe inside it too) of two or more characters with at least
 * one letter: numbers and one-letter filler do not count, and repeating a
 * keyword adds nothing. The measure of "substance" the quality rules use. */
size_t okit_distinct_words(const char *text, size_t len, size_t cap);

/* A line at least this long (bytes) that ends without punctuation was
 * wrapped to a width: its sentence goes on on the next line. */
#define OKIT_WRAP_WIDTH 50

/* Iterates sentences: from *pos, the next sentence's [*start, *end) and
 * *pos moved past it; returns 0 at the end. A sentence ends at '.', '!' or
 * '?' followed by white space (so "1.5" and "v2.1" do not end one), and at
 * every line break except one after a line of OKIT_WRAP_WIDTH or more bytes
 * that is not a heading or table row, followed by a line that does not open
 * a list item ("- ", "* ", "+ ", "1.", "2)"), a heading, a table row, a
 * quote or a blank line. Start with *pos = 0. */
int okit_next_sentence(const char *text, size_t len, size_t *pos, size_t *start, size_t *end);

/* How many sentences have at least min_words distinct words (see
 * okit_distinct_words) and contain one of `need` and, when `also` is not
 * NULL, also one of `also`. *mask (when not NULL) gets the OR of the `need`
 * patterns found in those sentences (bit i for need[i]). */
size_t okit_substantive(const char *text, size_t len, const char *const *need,
                        const char *const *also, size_t min_words, uint32_t *mask);

/* A run of numbered steps: lines numbered 1, 2, 3 ... in order ("1." "2)"
 * "Step 3:"), ignoring leading spaces and '*', '_', '>' markers (a "## 1."
 * heading is a section, not a step); prose between steps does not break a
 * run, a number out of order does. A step's text is its line after the
 * number plus the indented lines under it. */
typedef struct okit_step_run {
    size_t steps;       /* numbered steps in the run */
    size_t substantive; /* those with at least min_words distinct words */
    size_t worded;      /* substantive steps whose own text has one of the patterns */
} okit_step_run;

/* The best run of the text: one with at least min_steps substantive steps
 * and a worded one if there is such a run, then the one with the most
 * worded, then substantive, then steps. All zero when there is none. */
void okit_best_step_run(const char *text, size_t len, size_t min_words, size_t min_steps,
                        const char *const *patterns, okit_step_run *out);

/* Whether a sentence says what happens when something fails: "if" or
 * "when" followed, anywhere later in text (pass one sentence), by fail,
 * fails, failed, failing, failure(s), timeout*, time(s)/timed out, crash*,
 * error(s/ed), reject(s/ed), declined, unavailable, unreachable, is/goes
 * down. Exact words: "failover" is not a failure. */
int okit_conditional_failure(const char *text, size_t len);

/* ---- the state model ------------------------------------------------------- */

#define OKIT_MAX_STATES     64
#define OKIT_STATE_NAME_SZ  48
#define OKIT_MAX_EDGES      64
#define OKIT_MIN_STATE_NAME 3 /* characters: `A`, `B` are placeholders, not states */

/*
 * The state machine an answer writes down.
 *
 * Listed states (names[0 .. listed)): list items ("-", "*", "+", "1.") or
 * "|" table rows that open with a state name on a line without an arrow
 * ("- A -> B" is a transition, not the definition of A), where a state name
 * is `code`, UPPER_SNAKE_CASE or lower snake_case with an inner '_'; and
 * the items of a "States: a, b and c" line (one to four words each). At
 * least OKIT_MIN_STATE_NAME characters; compared case-insensitively.
 *
 * Transitions (edges): "X -> Y" (also =>, U+2192, U+27F6; a chain
 * "X -> Y -> Z" is two) and "from X to Y" / "from the X state into Y",
 * where X and Y are each a listed name or have the form of a state name.
 * Distinct, X != Y. Endpoints that were not listed are added after them.
 *
 * Error states: error[k] when names[k] has the word fail(ed/ing/ure(s)),
 * error(s/ed) or reject(ed/ion) in it (PAYMENT_FAILED, evidence_rejected;
 * not FAILOVER), or when the list item that defines it says "error state"
 * (failed/failure/rejected/exception state): "- `ON_HOLD`: error state".
 */
typedef struct okit_state_model {
    char names[OKIT_MAX_STATES][OKIT_STATE_NAME_SZ];
    unsigned char error[OKIT_MAX_STATES];
    size_t name_count;
    size_t listed; /* names[0 .. listed) are the listed states */
    struct {
        unsigned char from, to; /* indexes into names */
    } edges[OKIT_MAX_EDGES];
    size_t edge_count;
    size_t written; /* arrows between two words, whatever the words are */
} okit_state_model;

/* Fills *m (about 3.5 KiB: callers on hook threads allocate it). Returns 0. */
int okit_state_model_parse(const char *text, size_t len, okit_state_model *m);

/* ---- scoring ------------------------------------------------------------- */

/* The weighted mean of the rule scores in out->rules (weights[i] for rule
 * i), stored in out->quality and returned. */
double okit_weighted_quality(fusion_evaluation *out, const double *weights);

#endif
