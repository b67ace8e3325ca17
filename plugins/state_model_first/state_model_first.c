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
 *   mean; passing rules score 0.8 or 1.0, failing ones at most 0.15.
 *   states        an explicit list of >= 3 distinct names: list items (or
 *                 table rows) opening with a state name in UPPER_SNAKE_CASE,
 *                 snake_case or `code` (not transition lines), or the items
 *                 of a "States: a, b and c" line; and the word "state": 1.0;
 *                 the list without the word: 0.8.
 *   transitions   >= 2 transitions written FROM -> TO (->, =>, U+2192):
 *                 1.0; one: 0.8.
 *   invariants    "invariant" plus a must-always/must-never/at-all-times
 *                 statement: 1.0; either the word or two such statements:
 *                 0.8.
 *   error_states  an error state (error/failed/rejected state, or a state
 *                 name containing FAIL, ERROR, REJECT) and a way out of it
 *                 (recover, retry, resubmit, remediate, escalate, roll
 *                 back, reopen, manual review): 1.0.
 */
#include <fusion/overlay.h>

#include "overlay_kit.h"

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

static const char *const transition_words[] = {"transition*", "moves to", "moves from", "goes from",
                                               NULL};
static const char *const modal_words[] = {
    "must always", "must never",   "must not",    "always be",
    "never be",    "at all times", "at no point", "under no circumstances",
    NULL};
static const char *const error_state_words[] = {
    "error state*", "failed state*", "failure state*", "rejected state*", "terminal failure", NULL};
static const char *const recovery_words[] = {"recover*",  "retry",         "retries",   "resubmi*",
                                             "remediat*", "escalat*",      "roll back", "rollback*",
                                             "reopen*",   "manual review", "resume*",   NULL};

static const double smf_weights[4] = {0.25, 0.25, 0.25, 0.25};

static int smf_evaluate(void *state, const fusion_request *req, const char *answer, size_t len,
                        fusion_evaluation *out, const fusion_host_api *host)
{
    if (!out || (!answer && len > 0))
        return -1;

    size_t names = okit_named_states(answer, len);
    int says_state = okit_has(answer, len, "state*");
    if (names >= 3 && says_state)
        fusion_eval_add(out, "states", 1.0, "an explicit list of named states");
    else if (names >= 3)
        fusion_eval_add(out, "states", 0.8, "named states, not called states");
    else if (names > 0)
        fusion_eval_add(out, "states", 0.15, "fewer than three named states");
    else if (says_state)
        fusion_eval_add(out, "states", 0.1,
                        "talks about states but names none (e.g. PENDING_REVIEW)");
    else
        fusion_eval_add(out, "states", 0.0, "no state model");

    size_t arrows = okit_arrow_transitions(answer, len);
    if (arrows >= 2)
        fusion_eval_add(out, "transitions", 1.0, "transitions written FROM -> TO");
    else if (arrows == 1)
        fusion_eval_add(out, "transitions", 0.8, "only one transition written FROM -> TO");
    else if (okit_count_distinct(answer, len, transition_words) > 0)
        fusion_eval_add(out, "transitions", 0.15,
                        "mentions transitions but writes none as FROM -> TO");
    else
        fusion_eval_add(out, "transitions", 0.0, "no transitions");

    int invariant = okit_has(answer, len, "invariant*");
    size_t modal = okit_count_distinct(answer, len, modal_words);
    if (invariant && modal > 0)
        fusion_eval_add(out, "invariants", 1.0, "invariants stated as must-always/never rules");
    else if (invariant || modal >= 2)
        fusion_eval_add(out, "invariants", 0.8, "invariants partly stated");
    else if (modal == 1)
        fusion_eval_add(out, "invariants", 0.15, "one must/never statement, no invariants");
    else
        fusion_eval_add(out, "invariants", 0.0, "no invariants");

    int error_state = okit_count_distinct(answer, len, error_state_words) > 0 ||
                      okit_contains(answer, len, "FAIL") || okit_contains(answer, len, "ERROR") ||
                      okit_contains(answer, len, "REJECT");
    int recovery = okit_count_distinct(answer, len, recovery_words) > 0;
    if (error_state && recovery)
        fusion_eval_add(out, "error_states", 1.0, "error states with a recovery path");
    else if (error_state)
        fusion_eval_add(out, "error_states", 0.15, "error states without a way out of them");
    else if (recovery)
        fusion_eval_add(out, "error_states", 0.1, "recovery mentioned but no error state");
    else
        fusion_eval_add(out, "error_states", 0.0, "no error states");

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
