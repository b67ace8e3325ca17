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
 *   default quality gate of 0.8 ((3 + 0.15) / 4 < 0.8). Each rule asks for
 *   substance, not a keyword: "substantive" means at least N different
 *   words of two or more characters (okit_distinct_words), sentences as
 *   okit_next_sentence splits them (a short line is a sentence of its own,
 *   so keywords on lines of their own never add up).
 *   explicit_rollback_procedure  one run of steps numbered 1, 2, 3 ... with
 *        at least 3 steps of >= 6 words each, and rollback wording
 *        (rollback, roll(ed/ing) back, revert*, revers*, undo*, restore*)
 *        inside those steps' own text (not in a heading or the prose
 *        around them): in two or more of them 1.0, in one 0.8.
 *   compensating_actions  a sentence of >= 8 words with compensat*, refund
 *        reversal, reverse the refund, reversal/reversing entry,
 *        credit(ed) back, claw back, clawback, offsetting entry or void the:
 *        1.0 when such sentences name two of these, 0.8 for one.
 *   failure_scenarios  a sentence of >= 8 words that says "if/when ...
 *        fails/times out/errors/crashes/is unavailable ..." (exact words:
 *        a failover is not a failure) and what to do (retry, try again,
 *        escalate, alert, stop, abort, roll back, revert, fall back,
 *        resume, requeue, reconcile, back off, look up, check, replay ...):
 *        1.0 with a second such sentence or two failure aspects anywhere
 *        (partial failure, timeout, retry, crash, backoff), else 0.8.
 *   idempotency  a sentence of >= 8 words with the concept (idempoten*,
 *        exactly once, at most once, deduplicat*, dedup*, duplicate
 *        detection) and a mechanism (key(s), token, check, ledger, id(s),
 *        identifier, guard, unique, constraint, lookup, hash, nonce,
 *        version, sequence number, record): 1.0 when the concept is named
 *        idempotency/idempotent, 0.8 for the other wordings.
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

/* What makes an answer's sentence or step "substantive": enough different
 * words that a bare keyword ("idempotent", "1. rollback") does not pass. */
#define RLS_STEP_WORDS     6
#define RLS_SENTENCE_WORDS 8
#define RLS_MIN_STEPS      3

static const char *const rollback_words[] = {"rollback*",    "roll back", "rolled back",
                                             "rolling back", "revert*",   "revers*",
                                             "undo*",        "restore*",  NULL};
static const char *const compensation_words[] = {
    "compensat*",      "refund reversal",  "reverse the refund", "reversal entry",
    "reversing entry", "credit back",      "credited back",      "claw back",
    "clawback",        "offsetting entry", "void the",           NULL};
/* What the answer does about the failure: the second half of "if X fails,
 * <handling>". "then" alone is not handling. */
static const char *const handling_words[] = {
    "retry*",    "retried",   "try again", "escalat*", "alert*",    "page",      "notify",
    "stop",      "halt*",     "abort*",    "pause*",   "roll back", "rollback*", "revert*",
    "fall back", "fallback*", "resume*",   "requeue*", "re queue*", "reconcil*", "compensat*",
    "back off",  "backoff",   "look up",   "check*",   "verify",    "replay*",   NULL};
static const char *const failure_aspects[] = {
    "partial failure", "partially", "timeout*", "timed out", "times out", "retry",
    "retries",         "retried",   "crash*",   "backoff",   "back off",  NULL};
/* idempoten* must stay first: bit 0 of the mask tells "named idempotency"
 * from the weaker deduplication wording. */
static const char *const idempotency_words[] = {
    "idempoten*", "exactly once", "at most once", "deduplicat*", "dedup*", "duplicate detection",
    NULL};
static const char *const mechanism_words[] = {
    "key",         "keys",     "token*",           "check*",      "ledger*", "id",      "ids",
    "identifier*", "guard*",   "unique*",          "constraint*", "lookup*", "look up", "hash*",
    "nonce*",      "version*", "sequence number*", "record*",     NULL};

static const double rls_weights[4] = {0.25, 0.25, 0.25, 0.25};

static void rule_rollback(const char *answer, size_t len, fusion_evaluation *out)
{
    okit_step_run run;
    okit_best_step_run(answer, len, RLS_STEP_WORDS, RLS_MIN_STEPS, rollback_words, &run);
    if (run.substantive >= RLS_MIN_STEPS && run.worded >= 2)
        fusion_eval_add(out, "explicit_rollback_procedure", 1.0,
                        "numbered rollback steps in order, the rollback in the steps");
    else if (run.substantive >= RLS_MIN_STEPS && run.worded == 1)
        fusion_eval_add(out, "explicit_rollback_procedure", 0.8,
                        "numbered steps in order; only one step says rollback/revert/restore");
    else if (run.substantive >= RLS_MIN_STEPS)
        fusion_eval_add(out, "explicit_rollback_procedure", 0.15,
                        "numbered steps, but no step says rollback, revert, reverse or restore");
    else if (run.steps >= RLS_MIN_STEPS)
        fusion_eval_add(out, "explicit_rollback_procedure", 0.15,
                        "numbered steps too thin: fewer than three have six or more words");
    else if (run.steps >= 2)
        fusion_eval_add(out, "explicit_rollback_procedure", 0.15,
                        "fewer than three numbered steps");
    else if (okit_count_distinct(answer, len, rollback_words) > 0)
        fusion_eval_add(out, "explicit_rollback_procedure", 0.1,
                        "rollback is mentioned but not as numbered, ordered steps");
    else
        fusion_eval_add(out, "explicit_rollback_procedure", 0.0, "no rollback procedure");
}

static void rule_compensation(const char *answer, size_t len, fusion_evaluation *out)
{
    uint32_t mask;
    size_t n = okit_substantive(answer, len, compensation_words, NULL, RLS_SENTENCE_WORDS, &mask);
    size_t kinds = 0;
    for (; mask; mask &= mask - 1)
        kinds++;
    if (n > 0 && kinds >= 2)
        fusion_eval_add(out, "compensating_actions", 1.0, "compensating actions described");
    else if (n > 0)
        fusion_eval_add(out, "compensating_actions", 0.8, "one compensating action described");
    else if (okit_count_distinct(answer, len, compensation_words) > 0)
        fusion_eval_add(out, "compensating_actions", 0.15,
                        "compensation named, but in no sentence of eight or more words");
    else
        fusion_eval_add(out, "compensating_actions", 0.0,
                        "no compensating action (compensation, refund reversal, credit back)");
}

static void rule_failures(const char *answer, size_t len, fusion_evaluation *out)
{
    size_t pos = 0, s, e, cases = 0, thin = 0;
    while (okit_next_sentence(answer, len, &pos, &s, &e)) {
        const char *t = answer + s;
        if (!okit_conditional_failure(t, e - s))
            continue;
        if (okit_count_distinct(t, e - s, handling_words) > 0 &&
            okit_distinct_words(t, e - s, RLS_SENTENCE_WORDS) >= RLS_SENTENCE_WORDS)
            cases++;
        else
            thin++;
    }
    size_t aspects = okit_count_distinct(answer, len, failure_aspects);
    if (cases >= 2 || (cases == 1 && aspects >= 2))
        fusion_eval_add(out, "failure_scenarios", 1.0,
                        "says what happens when a step fails, times out or is retried");
    else if (cases == 1)
        fusion_eval_add(out, "failure_scenarios", 0.8, "one failure case with its handling");
    else if (thin > 0)
        fusion_eval_add(out, "failure_scenarios", 0.15,
                        "an 'if X fails' sentence, but too short or without what to do "
                        "(retry, escalate, stop, roll back)");
    else if (aspects > 0)
        fusion_eval_add(out, "failure_scenarios", 0.1,
                        "failure words, but no 'if X fails/times out, then ...' case");
    else
        fusion_eval_add(out, "failure_scenarios", 0.0,
                        "no failure scenario (partial failure, timeout, retry)");
}

static void rule_idempotency(const char *answer, size_t len, fusion_evaluation *out)
{
    uint32_t mask;
    size_t n = okit_substantive(answer, len, idempotency_words, mechanism_words, RLS_SENTENCE_WORDS,
                                &mask);
    if (n > 0 && (mask & 1u))
        fusion_eval_add(out, "idempotency", 1.0, "idempotency and the mechanism behind it");
    else if (n > 0)
        fusion_eval_add(out, "idempotency", 0.8,
                        "deduplication with its mechanism, not named idempotency");
    else if (okit_count_distinct(answer, len, idempotency_words) > 0)
        fusion_eval_add(out, "idempotency", 0.15,
                        "idempotency named, but no sentence says how (key, token, check, "
                        "ledger, id)");
    else
        fusion_eval_add(out, "idempotency", 0.0,
                        "nothing keeps a retried step from applying twice (idempotency key)");
}

static int rls_evaluate(void *state, const fusion_request *req, const char *answer, size_t len,
                        fusion_evaluation *out, const fusion_host_api *host)
{
    if (!out || (!answer && len > 0))
        return -1;
    okit_eval_begin(answer, len);
    rule_rollback(answer, len, out);
    rule_compensation(answer, len, out);
    rule_failures(answer, len, out);
    rule_idempotency(answer, len, out);
    okit_eval_end();
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
