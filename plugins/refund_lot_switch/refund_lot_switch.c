/*
 * refund_lot_switch.c - the overlay for refund, lot and rollback scenarios.
 *
 * Threads: init() and fini() run alone; match/apply/evaluate run on any
 * number of request threads at once and only read the state built by
 * init() (an okit_state: the joined directive text and the config).
 *
 * match: scenario type (or, when the type is empty, the scenario id) whose
 *   '_'-separated words include refund/refunds/chargeback or start with lot
 *   -> 0.9 (category financial_operations); a rollback word (rollback,
 *   data_migration_rollback_*, *_rollback_*) -> 0.85 (category
 *   system_integration). Another non-empty type -> 0. With neither type nor
 *   id, keywords in the user's messages (refund, chargeback, rollback,
 *   roll back, charged twice, duplicate charge) -> 0.6 for two or more,
 *   0.5 for one, else 0.
 *
 * apply: the feature's directives (rollback_first) as one system message
 *   ahead of every caller message; temperature, top_p, presence_penalty,
 *   frequency_penalty from overlay_params.yaml (scenario override, else the
 *   category default, else the defaults; config overrides; clamped to the
 *   constraints); max_tokens 2048 (config: max_tokens) only when the caller
 *   set no limit.
 *
 * evaluate: four rules, equal weights (0.25), quality = their weighted
 *   mean. A passing rule scores 0.8 (weaker evidence) or 1.0; a failing
 *   rule at most 0.15, so an answer missing any rule stays below the
 *   default quality gate of 0.8.
 *   explicit_rollback_procedure  >= 3 numbered steps (1. 2. 3. / Step 1)
 *        and rollback wording (rollback, roll back, revert, reverse, undo,
 *        restore): 1.0; two steps with the wording: 0.8.
 *   compensating_actions  compensating/compensation, refund reversal,
 *        reversal/reversing entry, credit back, claw back, offsetting
 *        entry, void the ...: two or more 1.0, one 0.8.
 *   failure_scenarios  a sentence "if/when ... fails/times out/errors/is
 *        unavailable" plus partial failure, timeout, retry or crash wording:
 *        1.0; either alone (the latter twice): 0.8.
 *   idempotency  idempotent/idempotency (key): 1.0; deduplicate, exactly
 *        once, at most once, duplicate detection: 0.8.
 */
#include <fusion/overlay.h>

#include "overlay_kit.h"

#include <string.h>

#define RLS_NAME "refund_lot_switch"

/* Classifies a scenario type or id by its '_'-separated words. */
static double classify(const char *s, okit_category *cat)
{
    *cat = OKIT_CAT_NONE;
    if (!s || !*s)
        return 0.0;
    size_t len = strlen(s);
    if (strncmp(s, "lot_", 4) == 0 || strcmp(s, "lot") == 0 || okit_has(s, len, "refund") ||
        okit_has(s, len, "refunds") || okit_has(s, len, "chargeback*")) {
        *cat = OKIT_CAT_FINANCIAL_OPERATIONS;
        return 0.9;
    }
    if (okit_has(s, len, "rollback*") || okit_has(s, len, "roll back")) {
        *cat = OKIT_CAT_SYSTEM_INTEGRATION;
        return 0.85;
    }
    return 0.0;
}

static const char *const request_keywords[] = {
    "refund*", "chargeback*", "rollback*", "roll back", "charged twice", "duplicate charge*", NULL};

static double rls_match(void *state, const fusion_request *req, const fusion_host_api *host)
{
    okit_category cat;
    const char *type = host->req_scenario_type(req);
    if (*type)
        return classify(type, &cat);
    const char *id = host->req_scenario_id(req);
    if (*id)
        return classify(id, &cat);
    size_t hits = 0, n = host->req_message_count(req);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(host->req_message_role(req, i), "user") != 0)
            continue;
        const char *c = host->req_message_content(req, i);
        hits += okit_count_distinct(c, strlen(c), request_keywords);
    }
    return hits >= 2 ? 0.6 : hits == 1 ? 0.5 : 0.0;
}

static int rls_apply(void *state, fusion_request *req, const fusion_host_api *host)
{
    okit_category cat;
    const char *type = host->req_scenario_type(req);
    if (classify(type, &cat) == 0.0)
        classify(host->req_scenario_id(req), &cat);
    return okit_apply_standard(state, req, host, cat);
}

static const char *const rollback_words[] = {"rollback*",    "roll back", "rolled back",
                                             "rolling back", "revert*",   "revers*",
                                             "undo*",        "restore*",  NULL};
static const char *const compensation_words[] = {
    "compensat*",      "refund reversal",  "reverse the refund", "reversal entry",
    "reversing entry", "credit back",      "credited back",      "claw back",
    "clawback",        "offsetting entry", "void the",           NULL};
static const char *const failure_words[] = {"partial failure", "partially", "timeout*",
                                            "timed out",       "retry",     "retries",
                                            "retried",         "crash*",    NULL};
static const char *const dedup_words[] = {
    "deduplicat*", "dedup*", "exactly once", "at most once", "duplicate detection", NULL};

static const double rls_weights[4] = {0.25, 0.25, 0.25, 0.25};

static int rls_evaluate(void *state, const fusion_request *req, const char *answer, size_t len,
                        fusion_evaluation *out, const fusion_host_api *host)
{
    if (!out || (!answer && len > 0))
        return -1;

    size_t steps = okit_numbered_steps(answer, len);
    int rollback = okit_count_distinct(answer, len, rollback_words) > 0;
    if (steps >= 3 && rollback)
        fusion_eval_add(out, "explicit_rollback_procedure", 1.0,
                        "numbered rollback steps in order");
    else if (steps == 2 && rollback)
        fusion_eval_add(out, "explicit_rollback_procedure", 0.8,
                        "rollback steps present but only two are numbered");
    else if (steps >= 2)
        fusion_eval_add(out, "explicit_rollback_procedure", 0.15,
                        "numbered steps, but none says rollback, revert, reverse or undo");
    else if (rollback)
        fusion_eval_add(out, "explicit_rollback_procedure", 0.1,
                        "rollback is mentioned but not as numbered, ordered steps");
    else
        fusion_eval_add(out, "explicit_rollback_procedure", 0.0, "no rollback procedure");

    size_t comp = okit_count_distinct(answer, len, compensation_words);
    if (comp >= 2)
        fusion_eval_add(out, "compensating_actions", 1.0, "compensating actions named");
    else if (comp == 1)
        fusion_eval_add(out, "compensating_actions", 0.8, "one compensating action named");
    else
        fusion_eval_add(out, "compensating_actions", 0.0,
                        "no compensating action (compensation, refund reversal, credit back)");

    int conditional = okit_conditional_failure(answer, len);
    size_t fails = okit_count_distinct(answer, len, failure_words);
    if (conditional && fails >= 1)
        fusion_eval_add(out, "failure_scenarios", 1.0,
                        "says what happens when a step fails, times out or is retried");
    else if (conditional || fails >= 2)
        fusion_eval_add(out, "failure_scenarios", 0.8, "some failure handling described");
    else if (fails == 1)
        fusion_eval_add(out, "failure_scenarios", 0.15,
                        "a failure word, but no 'if X fails' case with its handling");
    else
        fusion_eval_add(out, "failure_scenarios", 0.0,
                        "no failure scenario (partial failure, timeout, retry)");

    if (okit_has(answer, len, "idempoten*"))
        fusion_eval_add(out, "idempotency", 1.0, "idempotency addressed");
    else if (okit_count_distinct(answer, len, dedup_words) > 0)
        fusion_eval_add(out, "idempotency", 0.8, "deduplication addressed, not named idempotency");
    else
        fusion_eval_add(out, "idempotency", 0.0,
                        "nothing keeps a retried step from applying twice (idempotency key)");

    okit_weighted_quality(out, rls_weights);
    return 0;
}

static int rls_init(const fusion_init_args *args, void **state)
{
    okit_state *st;
    if (okit_state_init(args, RLS_NAME,
                        "the feature " RLS_NAME " must list rollback_first in enabled_overlays "
                        "and config/micro_overlays/rollback_first.md must exist",
                        &st) != 0)
        return -1;
    *state = st;
    return 0;
}

static void rls_fini(void *state)
{
    okit_state_free(state);
}

FUSION_OVERLAY_DEFINE(.name = RLS_NAME, .version = "1.0.0",
                      .description = "Rollback-first directive and tuned sampling for refund, "
                                     "lot and rollback scenarios",
                      .license = "MIT", .init = rls_init, .fini = rls_fini, .match = rls_match,
                      .apply = rls_apply, .evaluate = rls_evaluate)
