/*
 * test_overlays.c - the two shipped overlays, loaded the way a host would
 * (dlopen of build/plugins/<name>.so, the entry symbol, the real directive
 * texts from config/micro_overlays): match scores, apply (directive first,
 * the reference parameters, clamping, the caller's limits and fields kept),
 * evaluate on good and bad answers, determinism (also across threads) and
 * init failures. Each test loads its own handle; the hooks run on the test
 * thread except in test_concurrent_hooks.
 */
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "hostapi.h"
#include "request.h"

#include <dlfcn.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct loaded {
    void *dl;
    const fusion_overlay_descriptor *d;
    void *state;
    char *texts[2];
    fusion_directive dirs[2];
} loaded;

static char *read_text(const char *name, size_t *len)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/config/micro_overlays/%s.md", FH_SOURCE_DIR, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    char *buf = malloc(65536);
    assert_non_null(buf);
    *len = fread(buf, 1, 65535, f);
    buf[*len] = '\0';
    fclose(f);
    return buf;
}

static const fusion_overlay_descriptor *open_plugin(const char *name, void **dl)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s.so", FH_PLUGIN_DIR, name);
    *dl = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!*dl)
        fail_msg("dlopen %s: %s", path, dlerror());
    fusion_overlay_entry_fn entry;
    *(void **)&entry = dlsym(*dl, FUSION_OVERLAY_ENTRY_NAME);
    assert_non_null(entry);
    const fusion_overlay_descriptor *d = entry();
    assert_int_equal(d->magic, FUSION_OVERLAY_MAGIC);
    assert_int_equal(d->abi_major, FUSION_ABI_MAJOR);
    assert_int_equal(d->size, sizeof(fusion_overlay_descriptor));
    assert_string_equal(d->name, name);
    assert_string_equal(d->version, "1.0.0");
    assert_non_null(d->init);
    assert_non_null(d->fini);
    assert_non_null(d->match);
    assert_non_null(d->apply);
    assert_non_null(d->evaluate);
    return d;
}

static int init_args(loaded *l, const char *const *names, size_t n, const char *config, char *err,
                     size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        size_t len;
        l->texts[i] = read_text(names[i], &len);
        l->dirs[i] = (fusion_directive){.name = names[i], .text = l->texts[i], .text_len = len};
    }
    /* As the host hands it over since SDK 1.1: the text and, for the
     * config accessors, the parsed tree. */
    json_t *tree = config ? json_loads(config, 0, NULL) : NULL;
    fusion_init_args a = {.size = sizeof(a),
                          .host = fh_host_api(),
                          .config_json = config,
                          .config_len = config ? strlen(config) : 0,
                          .directives = l->dirs,
                          .directive_count = n,
                          .error = err,
                          .error_size = errlen,
                          .host_config = tree};
    int rc = l->d->init(&a, &l->state);
    json_decref(tree);
    return rc;
}

static const char *const rls_dirs[] = {"rollback_first"};
static const char *const smf_dirs[] = {"state_compliance_model", "regulatory_audit_prep"};

static void load(loaded *l, const char *name, const char *config)
{
    memset(l, 0, sizeof(*l));
    l->d = open_plugin(name, &l->dl);
    char err[256] = "";
    int smf = strcmp(name, "state_model_first") == 0;
    if (init_args(l, smf ? smf_dirs : rls_dirs, smf ? 2 : 1, config, err, sizeof(err)) != 0)
        fail_msg("init %s failed: %s", name, err);
}

static void unload(loaded *l)
{
    if (l->state || l->d)
        l->d->fini(l->state);
    free(l->texts[0]);
    free(l->texts[1]);
    dlclose(l->dl);
}

static fusion_request *request(const char *type, const char *id, const char *extra)
{
    char body[2048];
    snprintf(body, sizeof(body),
             "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"You are the "
             "billing assistant.\"},{\"role\":\"user\",\"content\":\"Customer 881 was refunded "
             "twice. What now?\"}]%s%s}",
             extra && *extra ? "," : "", extra ? extra : "");
    char err[256];
    fusion_request *req = fh_request_parse(body, strlen(body), err, sizeof(err));
    if (!req)
        fail_msg("bad test body: %s", err);
    assert_int_equal(fh_request_set_context(req, type, id, NULL, 0.9), 0);
    return req;
}

static double num(const fusion_request *req, const char *field)
{
    json_t *v = json_object_get(req->body, field);
    if (!json_is_number(v))
        fail_msg("%s is not set", field);
    return json_number_value(v);
}

static void assert_params(const fusion_request *req, double t, double p, double pp, double fp)
{
    if (fabs(num(req, "temperature") - t) > 1e-9 || fabs(num(req, "top_p") - p) > 1e-9 ||
        fabs(num(req, "presence_penalty") - pp) > 1e-9 ||
        fabs(num(req, "frequency_penalty") - fp) > 1e-9)
        fail_msg("got temperature %g top_p %g presence %g frequency %g, want %g %g %g %g",
                 num(req, "temperature"), num(req, "top_p"), num(req, "presence_penalty"),
                 num(req, "frequency_penalty"), t, p, pp, fp);
}

/* ---- match ------------------------------------------------------------------------ */

static double match(loaded *l, const char *type, const char *id, const char *user)
{
    char body[1024];
    snprintf(body, sizeof(body), "{\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]}", user);
    fusion_request *req = fh_request_parse(body, strlen(body), NULL, 0);
    assert_non_null(req);
    assert_int_equal(fh_request_set_context(req, type, id, NULL, -1), 0);
    double s = l->d->match(l->state, req, fh_host_api());
    fh_request_free(req);
    return s;
}

static void test_match(void **unused)
{
    loaded r, s;
    load(&r, "refund_lot_switch", NULL);
    load(&s, "state_model_first", NULL);

    assert_true(match(&r, "refund_processing_duplicate", NULL, "") >= 0.8);
    assert_true(match(&r, "refund_processing", NULL, "") >= 0.8);
    assert_true(match(&r, "lot_boundary_dispute_resolution", NULL, "") >= 0.8);
    assert_true(match(&r, "data_migration_rollback_scenario", NULL, "") >= 0.8);
    assert_true(match(&r, "payment_rollback_v2", NULL, "") >= 0.8);
    assert_true(match(&r, "regulatory_compliance_audit_prep", NULL, "refund") == 0.0);
    assert_true(match(&r, "subscription_downgrade_retention", NULL, "") == 0.0);
    assert_true(match(&r, "slot_allocation", NULL, "") == 0.0); /* not a lot_ type */

    assert_true(match(&s, "regulatory_compliance_audit_prep", NULL, "") >= 0.8);
    assert_true(match(&s, "compliance_kyc_refresh", NULL, "") >= 0.8);
    assert_true(match(&s, "order_state_machine", NULL, "") >= 0.8);
    assert_true(match(&s, "audit", NULL, "") >= 0.8);
    assert_true(match(&s, "refund_processing_duplicate", NULL, "audit") == 0.0);
    assert_true(match(&s, "statement_export", NULL, "") == 0.0); /* word, not prefix */

    /* No type: the scenario id, then the user's words. */
    assert_true(match(&r, NULL, "refund_processing_duplicate", "") >= 0.8);
    double kw = match(&r, NULL, NULL, "Please roll back the refund we issued twice");
    assert_true(kw >= 0.5 && kw < 0.8);
    assert_true(match(&r, NULL, NULL, "What is the weather like?") == 0.0);
    assert_true(match(&r, NULL, NULL, "We sold a lot of units") == 0.0);
    kw = match(&s, NULL, NULL, "Prepare for the SOX audit of our compliance process");
    assert_true(kw >= 0.5 && kw < 0.8);
    assert_true(match(&s, NULL, NULL, "Write a haiku") == 0.0);
    unload(&r);
    unload(&s);
}

/* ---- apply ------------------------------------------------------------------------ */

static const char *extra_fields =
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"refund_status\","
    "\"parameters\":{\"type\":\"object\"}}}],\"response_format\":{\"type\":\"text\"},"
    "\"n\":1,\"seed\":99,\"user\":\"ops\",\"stream\":true,\"temperature\":0.9,"
    "\"x_custom\":[1,{\"b\":null}]";

static void test_apply_scenario_override(void **unused)
{
    loaded r;
    load(&r, "refund_lot_switch", NULL);
    fusion_request *req = request("refund_processing", "refund_processing_duplicate", extra_fields);
    json_t *before = json_deep_copy(req->body);
    assert_int_equal(r.d->apply(r.state, req, fh_host_api()), 0);

    /* The directive is one system message ahead of everything the caller
     * sent, their own system message included. */
    json_t *msgs = json_object_get(req->body, "messages");
    assert_int_equal(json_array_size(msgs), 3);
    json_t *m0 = json_array_get(msgs, 0);
    assert_string_equal(json_string_value(json_object_get(m0, "role")), "system");
    const char *directive = json_string_value(json_object_get(m0, "content"));
    assert_non_null(strstr(directive, "# Rollback first"));
    assert_non_null(strstr(directive, "## 4. Idempotency"));
    assert_true(json_equal(json_array_get(msgs, 1),
                           json_array_get(json_object_get(before, "messages"), 0)));
    assert_true(json_equal(json_array_get(msgs, 2),
                           json_array_get(json_object_get(before, "messages"), 1)));

    assert_params(req, 0.22, 0.75, 0.0, 0.40);
    assert_int_equal(json_integer_value(json_object_get(req->body, "max_tokens")), 2048);

    /* Every other field is untouched. */
    const char *changed[] = {"messages",         "temperature",       "top_p",
                             "presence_penalty", "frequency_penalty", "max_tokens"};
    for (size_t i = 0; i < sizeof(changed) / sizeof(changed[0]); i++) {
        json_object_del(req->body, changed[i]);
        json_object_del(before, changed[i]);
    }
    assert_true(json_equal(before, req->body));
    json_decref(before);
    fh_request_free(req);
    unload(&r);
}

static void test_apply_category_and_defaults(void **unused)
{
    loaded r, s;
    load(&r, "refund_lot_switch", NULL);
    load(&s, "state_model_first", NULL);
    const fusion_host_api *h = fh_host_api();

    /* A refund type without an override: financial_operations, top_p from
     * the defaults. */
    fusion_request *req = request("refund_partial_capture", "refund_partial_capture_eu", NULL);
    assert_int_equal(r.d->apply(r.state, req, h), 0);
    assert_params(req, 0.22, 0.80, 0.0, 0.38);
    fh_request_free(req);

    /* A rollback type without an override: system_integration. */
    req = request("inventory_rollback", NULL, NULL);
    assert_int_equal(r.d->apply(r.state, req, h), 0);
    assert_params(req, 0.21, 0.80, 0.0, 0.36);
    fh_request_free(req);

    /* The id is listed even though the type is not. */
    req = request("db_ops", "data_migration_rollback_scenario", NULL);
    assert_int_equal(r.d->apply(r.state, req, h), 0);
    assert_params(req, 0.19, 0.68, 0.0, 0.42);
    fh_request_free(req);

    /* Nothing known: the defaults. */
    req = request(NULL, NULL, NULL);
    assert_int_equal(r.d->apply(r.state, req, h), 0);
    assert_params(req, 0.25, 0.80, 0.0, 0.30);
    fh_request_free(req);

    /* state_model_first: its override, compliance_management, both texts. */
    req = request("regulatory_compliance_audit_prep", "regulatory_compliance_audit_prep", NULL);
    assert_int_equal(s.d->apply(s.state, req, h), 0);
    assert_params(req, 0.24, 0.78, 0.10, 0.32);
    const char *d = h->req_message_content(req, 0);
    assert_non_null(strstr(d, "# State model first"));
    assert_non_null(strstr(d, "# Regulatory audit preparation"));
    assert_true(strstr(d, "# State model first") < strstr(d, "# Regulatory audit preparation"));
    assert_string_equal(h->req_message_role(req, 1), "system");
    assert_int_equal(h->req_message_count(req), 3);
    fh_request_free(req);

    req = request("compliance_kyc_refresh", NULL, NULL);
    assert_int_equal(s.d->apply(s.state, req, h), 0);
    assert_params(req, 0.24, 0.80, 0.08, 0.31);
    fh_request_free(req);
    unload(&r);
    unload(&s);
}

static void test_apply_clamps_and_config(void **unused)
{
    loaded r;
    load(&r, "refund_lot_switch",
         "{ \"temperature\": 0.9, \"top_p\": 0.1, \"presence_penalty\": -1,\n"
         "  \"frequency_penalty\": 0.7, \"max_tokens\": 1024 }");
    fusion_request *req = request("refund_processing", "refund_processing_duplicate", NULL);
    assert_int_equal(r.d->apply(r.state, req, fh_host_api()), 0);
    assert_params(req, 0.40, 0.60, 0.0, 0.50);
    assert_int_equal(json_integer_value(json_object_get(req->body, "max_tokens")), 1024);
    fh_request_free(req);
    unload(&r);

    /* Config values inside the constraints are used as given. */
    load(&r, "refund_lot_switch", "{\"temperature\":0.3}");
    req = request("refund_processing", "refund_processing_duplicate", NULL);
    assert_int_equal(r.d->apply(r.state, req, fh_host_api()), 0);
    assert_params(req, 0.30, 0.75, 0.0, 0.40);
    fh_request_free(req);
    unload(&r);
}

static void test_apply_keeps_caller_limits(void **unused)
{
    loaded r;
    load(&r, "refund_lot_switch", "{}");
    fusion_request *req = request("refund_processing", NULL, "\"max_tokens\":300");
    assert_int_equal(r.d->apply(r.state, req, fh_host_api()), 0);
    json_t *mt = json_object_get(req->body, "max_tokens");
    assert_true(json_is_integer(mt));
    assert_int_equal(json_integer_value(mt), 300);
    fh_request_free(req);

    req = request("refund_processing", NULL, "\"max_tokens\":100000");
    assert_int_equal(r.d->apply(r.state, req, fh_host_api()), 0);
    assert_int_equal(json_integer_value(json_object_get(req->body, "max_tokens")), 100000);
    fh_request_free(req);

    req = request("refund_processing", NULL, "\"max_completion_tokens\":500");
    assert_int_equal(r.d->apply(r.state, req, fh_host_api()), 0);
    assert_null(json_object_get(req->body, "max_tokens"));
    assert_int_equal(json_integer_value(json_object_get(req->body, "max_completion_tokens")), 500);
    fh_request_free(req);
    unload(&r);
}

/* ---- evaluate ------------------------------------------------------------------------- */

static const char *rls_sections[4] = {
    "## Rollback procedure\n"
    "1. Freeze refunds for customer 881 and snapshot the ledger rows for both refunds.\n"
    "2. Reverse the duplicate refund R-2 through the payment provider's API.\n"
    "3. Restore the order balance from the snapshot and compare it with the ledger.\n"
    "4. Unfreeze refunds once the reconciliation report is clean.\n\n",
    "## Compensating actions\n"
    "Where R-2 has already settled, post a compensating ledger entry and credit back "
    "the customer's account instead, with finance approval.\n\n",
    "## Failure scenarios\n"
    "If the provider call times out, look the refund up by its id before trying again; "
    "retry at most three times with backoff. A partial failure (provider updated, ledger "
    "not) is fixed by replaying step 3 alone.\n\n",
    "## Idempotency\n"
    "Each provider request carries an idempotency key derived from the refund id, so a "
    "repeated request reverses the money once.\n",
};
static const char *rls_rules[4] = {"explicit_rollback_procedure", "compensating_actions",
                                   "failure_scenarios", "idempotency"};

static const char *smf_sections[4] = {
    "## States\n"
    "- `SUBMITTED`: the application was received.\n"
    "- `PENDING_REVIEW`: a reviewer is assigned.\n"
    "- `APPROVED`: the account may be opened.\n"
    "- `VERIFICATION_FAILED`: the documents could not be verified.\n\n",
    "## Transitions\n"
    "- SUBMITTED -> PENDING_REVIEW when the file is complete.\n"
    "- PENDING_REVIEW -> APPROVED when the reviewer signs off.\n"
    "- PENDING_REVIEW -> VERIFICATION_FAILED when a document does not verify.\n\n",
    "## Invariants\n"
    "Invariant: an application must never be approved without a recorded reviewer, and the "
    "audit trail must always be append-only.\n\n",
    "## Error states and recovery\n"
    "From the error state the applicant may resubmit corrected documents; after 14 days "
    "the case is escalated to the compliance officer.\n",
};
static const char *smf_rules[4] = {"states", "transitions", "invariants", "error_states"};

/* The answer made of every section but `skip` (-1: all). */
static char *compose(const char *const *sections, int skip)
{
    char *out = calloc(1, 4096);
    assert_non_null(out);
    for (int i = 0; i < 4; i++) {
        if (i != skip)
            strcat(out, sections[i]);
    }
    return out;
}

static void evaluate(loaded *l, const char *answer, fusion_evaluation *ev)
{
    memset(ev, 0, sizeof(*ev));
    fusion_request *req = request("x", NULL, NULL);
    assert_int_equal(l->d->evaluate(l->state, req, answer, strlen(answer), ev, fh_host_api()), 0);
    fh_request_free(req);
}

static void check_answers(loaded *l, const char *const *sections, const char *const *rules)
{
    fusion_evaluation ev, again;
    char *good = compose(sections, -1);
    evaluate(l, good, &ev);
    assert_int_equal(ev.rule_count, 4);
    for (size_t i = 0; i < 4; i++) {
        assert_string_equal(ev.rules[i].name, rules[i]);
        if (!ev.rules[i].passed)
            fail_msg("good answer: %s failed: %s", rules[i], ev.rules[i].detail);
        assert_non_null(ev.rules[i].detail);
    }
    assert_true(ev.quality >= 0.8 && ev.quality <= 1.0);

    /* Deterministic: the same answer gives the same evaluation. */
    evaluate(l, good, &again);
    assert_int_equal(again.rule_count, ev.rule_count);
    assert_true(again.quality == ev.quality);
    for (size_t i = 0; i < ev.rule_count; i++) {
        assert_true(again.rules[i].score == ev.rules[i].score);
        assert_string_equal(again.rules[i].detail, ev.rules[i].detail);
    }
    free(good);

    /* Missing any one section fails exactly that rule and the gate. */
    for (int skip = 0; skip < 4; skip++) {
        char *bad = compose(sections, skip);
        evaluate(l, bad, &ev);
        for (int i = 0; i < 4; i++) {
            if ((i == skip) == (ev.rules[i].passed != 0))
                fail_msg("without section %d: rule %s %s (%s)", skip, rules[i],
                         ev.rules[i].passed ? "passed" : "failed", ev.rules[i].detail);
        }
        if (!(ev.quality < 0.8))
            fail_msg("without section %d: quality %g", skip, ev.quality);
        free(bad);
    }

    /* Empty and unrelated answers score 0 on every rule. */
    evaluate(l, "", &ev);
    assert_true(ev.quality == 0.0);
    evaluate(l, "Sure, happy to help with that.", &ev);
    assert_true(ev.quality == 0.0);
    for (size_t i = 0; i < ev.rule_count; i++)
        assert_false(ev.rules[i].passed);
}

/* The good answer with section `idx` replaced by `section`: a near miss
 * that must fail exactly rule `idx` and the quality gate. */
static void check_near_miss(loaded *l, const char *const *sections, const char *const *rules,
                            int idx, const char *section)
{
    const char *with[4];
    for (int i = 0; i < 4; i++)
        with[i] = i == idx ? section : sections[i];
    char *answer = compose(with, -1);
    fusion_evaluation ev;
    evaluate(l, answer, &ev);
    for (int i = 0; i < 4; i++) {
        if ((i == idx) == (ev.rules[i].passed != 0))
            fail_msg("near miss for %s: rule %s %s (%s)\n%s", rules[idx], rules[i],
                     ev.rules[i].passed ? "passed" : "failed", ev.rules[i].detail, answer);
    }
    if (!(ev.quality < 0.8))
        fail_msg("near miss for %s: quality %g", rules[idx], ev.quality);
    free(answer);
}

/* A whole answer: rule i must pass exactly when want[i] is 'p'; the
 * quality must be below the gate unless every rule passes. */
static void check_rules(loaded *l, const char *answer, const char *want)
{
    fusion_evaluation ev;
    evaluate(l, answer, &ev);
    assert_int_equal(ev.rule_count, 4);
    for (size_t i = 0; i < 4; i++) {
        if ((want[i] == 'p') != (ev.rules[i].passed != 0))
            fail_msg("rule %s %s (%s), want %s\n%s", ev.rules[i].name,
                     ev.rules[i].passed ? "passed" : "failed", ev.rules[i].detail,
                     want[i] == 'p' ? "pass" : "fail", answer);
    }
    if (strcmp(want, "pppp") == 0 ? !(ev.quality >= 0.8) : !(ev.quality < 0.8))
        fail_msg("quality %g for rules %s\n%s", ev.quality, want, answer);
}

/* The directive texts echoed back as the answer. */
static char *echo(const char *const *names, size_t n)
{
    char *out = calloc(1, 65536 * 2 + 2);
    assert_non_null(out);
    for (size_t i = 0; i < n; i++) {
        size_t len;
        char *t = read_text(names[i], &len);
        strcat(out, t);
        strcat(out, "\n");
        free(t);
    }
    return out;
}

static void test_evaluate_refund(void **unused)
{
    loaded r;
    load(&r, "refund_lot_switch", NULL);
    check_answers(&r, rls_sections, rls_rules);

    /* Steps without rollback wording, and rollback wording without steps. */
    fusion_evaluation ev;
    evaluate(&r, "1. Check the ledger.\n2. Email the customer.\n3. Close the ticket.\n", &ev);
    assert_false(ev.rules[0].passed);
    evaluate(&r, "We will roll back the refund soon.", &ev);
    assert_false(ev.rules[0].passed);
    /* Not NUL-terminated: only len bytes count. */
    const char text[] = "idempotency key";
    fusion_request *req = request("x", NULL, NULL);
    memset(&ev, 0, sizeof(ev));
    assert_int_equal(r.d->evaluate(r.state, req, text, 4, &ev, fh_host_api()), 0);
    assert_false(ev.rules[3].passed);
    fh_request_free(req);

    /* Keyword stuffing: every keyword, no substance. */
    check_rules(&r,
                "1. rollback\n2. x\n3. y\ncompensating clawback. If it fails, retry. "
                "idempotent",
                "ffff");
    /* The directive echoed back has no numbered steps of its own. */
    char *e = echo(rls_dirs, 1);
    check_rules(&r, e, "fppp");
    free(e);

    /* One thin section in an otherwise good answer fails that rule. */
    check_near_miss(&r, rls_sections, rls_rules, 0,
                    "## Rollback procedure\n1. Roll back.\n2. Revert it.\n3. Restore the row.\n\n");
    /* Substantive steps, but the rollback wording only around them. */
    check_near_miss(&r, rls_sections, rls_rules, 0,
                    "## Rollback procedure\nWe roll back the duplicate refund as follows.\n"
                    "1. Freeze refunds for customer 881 and snapshot the ledger rows.\n"
                    "2. Call the payment provider's API about the duplicate refund R-2.\n"
                    "3. Compare the order balance with the ledger and close the ticket.\n\n");
    check_near_miss(&r, rls_sections, rls_rules, 1,
                    "## Compensating actions\ncompensating clawback.\n\n");
    check_near_miss(&r, rls_sections, rls_rules, 2,
                    "## Failure scenarios\nIf it fails, retry.\n\n");
    /* A failover is not a failure word, and there is no handling. */
    check_near_miss(&r, rls_sections, rls_rules, 2,
                    "## Failure scenarios\nWhen the primary database does a FAILOVER, the "
                    "replica takes over and traffic continues normally.\n\n");
    check_near_miss(&r, rls_sections, rls_rules, 3, "## Idempotency\nidempotent\n");
    /* Named, in a long sentence, but with no mechanism (key, token, check). */
    check_near_miss(&r, rls_sections, rls_rules, 3,
                    "## Idempotency\nThe whole process is idempotent and happens exactly once, "
                    "we promise that to every customer.\n");

    /* Only one step says rollback: still a procedure, at 0.8. */
    evaluate(&r,
             "1. Freeze refunds for customer 881 and snapshot the ledger rows.\n"
             "2. Reverse the duplicate refund R-2 through the provider's API.\n"
             "3. Compare the balance with the snapshot before closing the ticket.\n",
             &ev);
    assert_true(ev.rules[0].passed);
    assert_true(ev.rules[0].score == 0.8);
    unload(&r);
}

static void test_evaluate_state_model(void **unused)
{
    loaded s;
    load(&s, "state_model_first", NULL);
    check_answers(&s, smf_sections, smf_rules);

    /* Prose about states without listing any: only the states rule fails
     * (transition lines define no state). */
    fusion_evaluation ev;
    check_rules(&s,
                "The application moves through a few states.\n"
                "- SUBMITTED -> IN_REVIEW when the form is complete.\n"
                "- IN_REVIEW -> APPROVED when the reviewer signs off.\n"
                "- IN_REVIEW -> VERIFICATION_FAILED when a document does not verify.\n"
                "Invariant: an application must never be approved without a reviewer.\n"
                "From VERIFICATION_FAILED the applicant may resubmit corrected documents for "
                "another review.\n",
                "fppp");
    /* Arrows between plain lower-case words are not transitions between
     * named states, and "the failed state" in prose is not an error state. */
    check_rules(&s,
                "The application moves through a few states.\n"
                "- submitted -> review when the form is complete.\n"
                "- review -> approved when the reviewer signs off.\n"
                "Invariant: an application must never be approved without a reviewer.\n"
                "If documents cannot be verified it enters the failed state; the applicant may "
                "resubmit them.\n",
                "ffpf");

    /* Keyword stuffing: one-letter states, keywords on lines of their own. */
    check_rules(&s, "- `A`\n- `B`\n- `C`\nA -> B -> C\ninvariant must never\nERROR retry", "ffff");
    /* Real names make states and transitions, but not the rest. */
    check_rules(&s,
                "- `DRAFT`\n- `REVIEW`\n- `DONE`\nDRAFT -> REVIEW -> DONE\ninvariant must never\n"
                "ERROR retry",
                "ppff");
    /* The directives echoed back: no listed state, `FROM -> TO` is not a
     * transition, VERIFICATION_FAILED in prose is not a state. */
    char *e = echo(smf_dirs, 2);
    check_rules(&s, e, "ffpf");
    free(e);
    /* FAILOVER and "HTTP ERROR" are not error states (whole words, and
     * only listed states or transition ends count). */
    check_rules(
        &s,
        "## States\n- `PRIMARY_ACTIVE`: the primary serves traffic.\n"
        "- `FAILOVER_IN_PROGRESS`: traffic moves to the standby.\n"
        "- `STANDBY_ACTIVE`: the standby serves traffic.\n\n"
        "## Transitions\n- PRIMARY_ACTIVE -> FAILOVER_IN_PROGRESS when health checks fail.\n"
        "- FAILOVER_IN_PROGRESS -> STANDBY_ACTIVE when the standby is promoted.\n"
        "- STANDBY_ACTIVE -> PRIMARY_ACTIVE after the primary is repaired.\n\n"
        "## Invariants\nInvariant: exactly one region must always accept writes, in "
        "every state.\n\n"
        "## Errors\nOn an HTTP ERROR from the standby the client will retry the request "
        "after a short delay.\n",
        "pppf");

    /* One thin section in an otherwise good answer fails that rule. */
    check_near_miss(&s, smf_sections, smf_rules, 0,
                    "## States\n- `A`: received.\n- `B`: in review.\n- `C`: done.\n\n");
    check_near_miss(&s, smf_sections, smf_rules, 1, "## Transitions\n- A -> B -> C\n\n");
    check_near_miss(&s, smf_sections, smf_rules, 1,
                    "## Transitions\n- SUBMITTED -> PENDING_REVIEW when the file is "
                    "complete.\n\n");
    check_near_miss(&s, smf_sections, smf_rules, 2, "## Invariants\ninvariant must never\n\n");
    check_near_miss(&s, smf_sections, smf_rules, 3, "## Error states and recovery\nERROR retry\n");
    /* A recovery that is not about an error state. */
    check_near_miss(&s, smf_sections, smf_rules, 3,
                    "## Error states and recovery\nReviewers may retry the checks later if they "
                    "want to double-check the evidence.\n");

    /* "from X to Y" transitions, and a state its list item calls the error
     * state, with a transition out of it. */
    evaluate(&s,
             "## States\n- `DRAFT`: being written.\n- `IN_REVIEW`: with a reviewer.\n"
             "- `APPROVED`: signed off.\n- `ON_HOLD`: error state, a document is missing.\n\n"
             "An item moves from DRAFT to IN_REVIEW when submitted, from IN_REVIEW to APPROVED "
             "on sign-off and from IN_REVIEW into the ON_HOLD state when a document is missing. "
             "It goes from ON_HOLD to IN_REVIEW once the document arrives.\n"
             "Invariant: an item must never be approved by the person who drafted it.\n",
             &ev);
    for (size_t i = 0; i < 4; i++) {
        if (!ev.rules[i].passed)
            fail_msg("from/to answer: %s failed: %s", ev.rules[i].name, ev.rules[i].detail);
    }
    assert_true(ev.rules[1].score == 1.0);
    assert_true(ev.rules[3].score == 1.0);

    /* States listed inline, in snake_case; a "States:" line of prose is not a list. */
    evaluate(&s, "States: draft, in_review, `APPROVED` and archived.\n", &ev);
    assert_true(ev.rules[0].passed);
    evaluate(&s, "States: we keep track of where each request stands at every point in time.\n",
             &ev);
    assert_false(ev.rules[0].passed);
    evaluate(&s, "- under_review: someone looks at it\n- sign_off: done\n", &ev);
    assert_false(ev.rules[0].passed); /* only two */

    /* A table of states; Unicode arrows count as transitions. */
    evaluate(&s,
             "| state | meaning |\n|---|---|\n| OPEN | new |\n| CLOSED | done |\n"
             "| ARCHIVED | kept |\n\nOPEN \xe2\x86\x92 CLOSED, then `CLOSED` \xe2\x86\x92 "
             "`ARCHIVED`.",
             &ev);
    assert_true(ev.rules[0].passed);
    assert_true(ev.rules[1].passed);
    unload(&s);
}

/* ---- concurrency -------------------------------------------------------------------------- */

struct worker {
    loaded *l;
    double quality;
    int ok;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    char *good = compose(rls_sections, -1);
    w->ok = 1;
    for (int i = 0; i < 200 && w->ok; i++) {
        fusion_request *req = request("refund_processing", "refund_processing_duplicate", NULL);
        fusion_evaluation ev;
        memset(&ev, 0, sizeof(ev));
        if (w->l->d->apply(w->l->state, req, fh_host_api()) != 0 ||
            w->l->d->evaluate(w->l->state, req, good, strlen(good), &ev, fh_host_api()) != 0)
            w->ok = 0;
        if (i > 0 && ev.quality != w->quality)
            w->ok = 0;
        w->quality = ev.quality;
        fh_request_free(req);
    }
    free(good);
    return NULL;
}

static void test_concurrent_hooks(void **unused)
{
    loaded r;
    load(&r, "refund_lot_switch", NULL);
    struct worker w[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct worker){.l = &r};
        assert_int_equal(pthread_create(&t[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        assert_true(w[i].ok);
        assert_true(w[i].quality == w[0].quality);
    }
    unload(&r);
}

/* ---- init failures ---------------------------------------------------------------------- */

static void test_init_failures(void **unused)
{
    const char *names[] = {"refund_lot_switch", "state_model_first"};
    for (int p = 0; p < 2; p++) {
        loaded l;
        memset(&l, 0, sizeof(l));
        l.d = open_plugin(names[p], &l.dl);
        char err[256] = "";
        fusion_init_args a = {.size = sizeof(a),
                              .host = fh_host_api(),
                              .config_json = "{}",
                              .config_len = 2,
                              .error = err,
                              .error_size = sizeof(err)};
        void *state = NULL;
        assert_int_not_equal(l.d->init(&a, &state), 0);
        assert_non_null(strstr(err, "no directive text"));
        assert_non_null(strstr(err, p == 0 ? "rollback_first" : "state_compliance_model"));
        assert_null(state);

        /* Blank texts do not count. */
        fusion_directive blank = {.name = "rollback_first", .text = " \n\t\n", .text_len = 4};
        a.directives = &blank;
        a.directive_count = 1;
        err[0] = '\0';
        assert_int_not_equal(l.d->init(&a, &state), 0);
        assert_non_null(strstr(err, "no directive text"));

        /* Unknown keys and wrong types (read through the SDK 1.1 accessors;
         * malformed JSON never reaches a plugin: the host reads YAML). */
        fusion_directive ok = {.name = "rollback_first", .text = "Do it.", .text_len = 6};
        a.directives = &ok;
        const char *bad[] = {"{\"temprature\":0.2}", "{\"temperature\":\"hot\"}", "[1]",
                             "{\"max_tokens\":1.5}", "{\"top_p\":true}"};
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
            err[0] = '\0';
            json_t *tree = json_loads(bad[i], JSON_DECODE_ANY, NULL);
            assert_non_null(tree);
            a.config_json = bad[i];
            a.config_len = strlen(bad[i]);
            a.host_config = tree;
            if (l.d->init(&a, &state) == 0)
                fail_msg("config %s accepted", bad[i]);
            assert_non_null(strstr(err, "config"));
            json_decref(tree);
        }
        a.host_config = NULL;
        /* No host table, or a too-small init struct. */
        a.config_json = "{}";
        a.config_len = 2;
        a.host = NULL;
        assert_int_not_equal(l.d->init(&a, &state), 0);
        a.host = fh_host_api();
        a.size = 8;
        assert_int_not_equal(l.d->init(&a, &state), 0);
        /* And a good init after all that. */
        a.size = sizeof(a);
        assert_int_equal(l.d->init(&a, &state), 0);
        l.d->fini(state);
        dlclose(l.dl);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_match),
        cmocka_unit_test(test_apply_scenario_override),
        cmocka_unit_test(test_apply_category_and_defaults),
        cmocka_unit_test(test_apply_clamps_and_config),
        cmocka_unit_test(test_apply_keeps_caller_limits),
        cmocka_unit_test(test_evaluate_refund),
        cmocka_unit_test(test_evaluate_state_model),
        cmocka_unit_test(test_concurrent_hooks),
        cmocka_unit_test(test_init_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
