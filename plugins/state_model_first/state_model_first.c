/*
 * state_model_first.c - the overlay for regulatory compliance, audit and
 * state-model scenarios: the model answers with an explicit state machine.
 *
 * Threads: init() and fini() run alone; match/apply/evaluate run on any
 * number of request threads at once and only read the state built by
 * init() (an okit_state: the joined directive texts and the config).
 *
 * match: scenario type (or, when the type is empty, the scenario id) with a
 *   '_'-separated word regulatory/regulation*, compliance/compliant, audit*,
 *   state/states, kyc, aml or gdpr -> 0.9 (category compliance_management);
 *   another non-empty type -> 0. With neither, keywords in the user's
 *   messages (compliance, regulator*, audit*, state machine, GDPR, SOX,
 *   HIPAA, KYC) -> 0.6 for two or more, 0.5 for one, else 0.
 *
 * apply: the feature's directives (state_compliance_model, then
 *   regulatory_audit_prep, in the flags' order) as one system message ahead
 *   of every caller message; sampling from overlay_params.yaml (scenario
 *   override, else compliance_management, else the defaults; config
 *   overrides; clamped); max_tokens 2048 only when the caller set no limit.
 *
 * evaluate: four rules, equal weights (0.25), quality = their weighted
 *   mean; passing rules score 0.8 or 1.0, failing ones at most 0.15, so an
 *   answer missing any rule stays below 0.8. The state model is read by
 *   okit_state_model_parse (see overlay_kit.h); sentences and "words" are
 *   as in refund_lot_switch.c.
 *   states        >= 3 distinct listed states: list items (or table rows)
 *                 opening with a name in UPPER_SNAKE_CASE, snake_case or
 *                 `code` (not transition lines), or the items of a
 *                 "States: a, b and c" line; names of >= 3 characters
 *                 (`A`, `B` are placeholders). With the word "state": 1.0;
 *                 without: 0.8.
 *   transitions   distinct transitions X -> Y (->, =>, U+2192, U+27F6;
 *                 "A -> B -> C" is two) or "from X to Y", whose ends are
 *                 listed states or names of state form, X != Y: three or
 *                 more 1.0, two 0.8; one, or arrows between other words
 *                 (A -> B, FROM -> TO), fail.
 *   invariants    a sentence of >= 8 words with invariant*, must always,
 *                 must never, must not, at all times, at no point/time or
 *                 under no circumstances: 1.0 for two such sentences or one
 *                 that says invariant and a must/never rule; else 0.8.
 *   error_states  an error state among the listed states and transition
 *                 ends: its name has the word fail(ed/ing/ure(s)),
 *                 error(s/ed) or reject(ed/ion) (whole words,
 *                 case-insensitive: PAYMENT_FAILED, evidence_rejected;
 *                 not FAILOVER, and "HTTP ERROR" in prose is no state), or
 *                 its list item says "error state". Plus a way out: a
 *                 transition from it to a state that is not an error state
 *                 1.0; or a sentence of >= 8 words that names it (or says
 *                 error/failed/rejected state) with recover*, retry,
 *                 resubmit, remediate, escalate, roll back, reopen, manual
 *                 review, resume, return or re-run: 0.8.
 */
#include <fusion/overlay.h>

#include "overlay_kit.h"

#include <stdlib.h>
#include <string.h>

#define SMF_NAME "state_model_first"

static const char *const type_words[] = {"regulatory", "regulation*", "compliance", "compliant",
                                         "audit*",     "state",       "states",     "kyc",
                                         "aml",        "gdpr",        NULL};

static double classify(const char *s)
{
    if (!s || !*s)
        return 0.0;
    return okit_count_distinct(s, strlen(s), type_words) > 0 ? 0.9 : 0.0;
}

static const char *const request_keywords[] = {
    "compliance", "regulator*", "audit*", "state machine", "gdpr", "sox", "hipaa", "kyc", NULL};

static double smf_match(void *state, const fusion_request *req, const fusion_host_api *host)
{
    const char *type = host->req_scenario_type(req);
    if (*type)
        return classify(type);
    const char *id = host->req_scenario_id(req);
    if (*id)
        return classify(id);
    size_t hits = 0, n = host->req_message_count(req);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(host->req_message_role(req, i), "user") != 0)
            continue;
        const char *c = host->req_message_content(req, i);
        hits += okit_count_distinct(c, strlen(c), request_keywords);
    }
    return hits >= 2 ? 0.6 : hits == 1 ? 0.5 : 0.0;
}

static int smf_apply(void *state, fusion_request *req, const fusion_host_api *host)
{
    int ours =
        classify(host->req_scenario_type(req)) > 0.0 || classify(host->req_scenario_id(req)) > 0.0;
    return okit_apply_standard(state, req, host,
                               ours ? OKIT_CAT_COMPLIANCE_MANAGEMENT : OKIT_CAT_NONE);
}

/* How many different words a sentence needs before an invariant or a
 * recovery in it counts: "invariant must never" is a keyword, not a rule. */
#define SMF_SENTENCE_WORDS 8

static const char *const transition_words[] = {"transition*", "moves to", "moves from", "goes from",
                                               NULL};
/* invariant* must stay first: bit 0 of the mask says the answer calls its
 * rule an invariant. */
static const char *const invariant_words[] = {"invariant*",
                                              "must always",
                                              "must never",
                                              "must not",
                                              "at all times",
                                              "at no point",
                                              "at no time",
                                              "under no circumstances",
                                              NULL};
static const char *const error_state_words[] = {
    "error state*", "failed state*", "failure state*", "rejected state*", "exception state*", NULL};
static const char *const error_words[] = {"fail",   "failed",   "failure",   "error", "errors",
                                          "reject", "rejected", "rejection", NULL};
static const char *const recovery_words[] = {
    "recover*",      "retry",    "retries",   "retried",   "resubmi*",
    "remediat*",     "escalat*", "roll back", "rollback*", "reopen*",
    "manual review", "resume*",  "return*",   "re run*",   NULL};

static const double smf_weights[4] = {0.25, 0.25, 0.25, 0.25};

static void rule_states(const okit_state_model *m, const char *answer, size_t len,
                        fusion_evaluation *out)
{
    int says_state = okit_has(answer, len, "state*");
    if (m->listed >= 3 && says_state)
        fusion_eval_add(out, "states", 1.0, "an explicit list of named states");
    else if (m->listed >= 3)
        fusion_eval_add(out, "states", 0.8, "named states, not called states");
    else if (m->listed > 0)
        fusion_eval_add(out, "states", 0.15,
                        "fewer than three named states (of three or more characters)");
    else if (says_state)
        fusion_eval_add(out, "states", 0.1,
                        "talks about states but lists none (e.g. - `PENDING_REVIEW`: ...)");
    else
        fusion_eval_add(out, "states", 0.0, "no state model");
}

static void rule_transitions(const okit_state_model *m, const char *answer, size_t len,
                             fusion_evaluation *out)
{
    if (m->edge_count >= 3)
        fusion_eval_add(out, "transitions", 1.0, "transitions between named states");
    else if (m->edge_count == 2)
        fusion_eval_add(out, "transitions", 0.8, "two transitions between named states");
    else if (m->edge_count == 1)
        fusion_eval_add(out, "transitions", 0.15, "only one transition between named states");
    else if (m->written > 0)
        fusion_eval_add(out, "transitions", 0.1,
                        "arrows, but their ends are not named states (A -> B is not a model)");
    else if (okit_count_distinct(answer, len, transition_words) > 0)
        fusion_eval_add(out, "transitions", 0.1,
                        "mentions transitions but writes none as FROM -> TO");
    else
        fusion_eval_add(out, "transitions", 0.0, "no transitions");
}

static void rule_invariants(const char *answer, size_t len, fusion_evaluation *out)
{
    uint32_t mask;
    size_t n = okit_substantive(answer, len, invariant_words, NULL, SMF_SENTENCE_WORDS, &mask);
    /* Called an invariant and stated as a must-always/never rule, or two
     * such rules. */
    if (n >= 2 || (n == 1 && (mask & 1u) && (mask & ~1u)))
        fusion_eval_add(out, "invariants", 1.0, "invariants stated as must-always/never rules");
    else if (n == 1)
        fusion_eval_add(out, "invariants", 0.8, "one invariant stated");
    else if (okit_count_distinct(answer, len, invariant_words) > 0)
        fusion_eval_add(out, "invariants", 0.15,
                        "invariant wording, but in no sentence of eight or more words");
    else
        fusion_eval_add(out, "invariants", 0.0, "no invariants");
}

/* Whether a sentence is about an error state: it names one, or says
 * "error state" (failed/failure/rejected/exception state). */
static int about_error_state(const okit_state_model *m, const char *t, size_t n)
{
    if (okit_count_distinct(t, n, error_state_words) > 0)
        return 1;
    for (size_t k = 0; k < m->name_count; k++) {
        if (m->error[k] && okit_has_name(t, n, m->names[k]))
            return 1;
    }
    return 0;
}

static void rule_error_states(const okit_state_model *m, const char *answer, size_t len,
                              fusion_evaluation *out)
{
    int error_state = 0, way_out = 0, recovery = 0;
    for (size_t k = 0; k < m->name_count; k++)
        error_state |= m->error[k];
    /* A transition out of an error state into one that is not an error. */
    for (size_t i = 0; i < m->edge_count; i++)
        way_out |= m->error[m->edges[i].from] && !m->error[m->edges[i].to];
    size_t pos = 0, s, e;
    while (error_state && !way_out && !recovery && okit_next_sentence(answer, len, &pos, &s, &e)) {
        const char *t = answer + s;
        recovery = okit_count_distinct(t, e - s, recovery_words) > 0 &&
                   about_error_state(m, t, e - s) &&
                   okit_distinct_words(t, e - s, SMF_SENTENCE_WORDS) >= SMF_SENTENCE_WORDS;
    }
    if (error_state && way_out)
        fusion_eval_add(out, "error_states", 1.0, "error states with a transition out of them");
    else if (error_state && recovery)
        fusion_eval_add(out, "error_states", 0.8, "error states with a recovery described");
    else if (error_state)
        fusion_eval_add(out, "error_states", 0.15, "error states without a way out of them");
    else if (okit_count_distinct(answer, len, error_words) > 0 ||
             okit_count_distinct(answer, len, error_state_words) > 0)
        fusion_eval_add(out, "error_states", 0.1,
                        "errors mentioned, but no listed state or transition end is an error "
                        "state (e.g. VERIFICATION_FAILED)");
    else if (okit_count_distinct(answer, len, recovery_words) > 0)
        fusion_eval_add(out, "error_states", 0.1, "recovery mentioned but no error state");
    else
        fusion_eval_add(out, "error_states", 0.0, "no error states");
}

static int smf_evaluate(void *state, const fusion_request *req, const char *answer, size_t len,
                        fusion_evaluation *out, const fusion_host_api *host)
{
    if (!out || (!answer && len > 0))
        return -1;
    /* ~3.5 KiB: off the hook thread's stack, which may be small. */
    okit_state_model *m = malloc(sizeof(*m));
    if (!m)
        return -1;
    okit_eval_begin(answer, len);
    okit_state_model_parse(answer, len, m);
    rule_states(m, answer, len, out);
    rule_transitions(m, answer, len, out);
    rule_invariants(answer, len, out);
    rule_error_states(m, answer, len, out);
    okit_eval_end();
    free(m);
    okit_weighted_quality(out, smf_weights);
    return 0;
}

static int smf_init(const fusion_init_args *args, void **state)
{
    okit_state *st;
    if (okit_state_init(args, SMF_NAME,
                        "the feature " SMF_NAME " must list state_compliance_model and "
                        "regulatory_audit_prep in enabled_overlays and their files must exist "
                        "in config/micro_overlays/",
                        &st) != 0)
        return -1;
    *state = st;
    return 0;
}

static void smf_fini(void *state)
{
    okit_state_free(state);
}

FUSION_OVERLAY_DEFINE(.name = SMF_NAME, .version = "1.0.0",
                      .description = "State-model directives and tuned sampling for regulatory "
                                     "compliance and audit scenarios",
                      .license = "MIT", .init = smf_init, .fini = smf_fini, .match = smf_match,
                      .apply = smf_apply, .evaluate = smf_evaluate)
