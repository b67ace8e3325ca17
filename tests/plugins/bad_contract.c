/*
 * bad_contract - a test overlay that loads fine and breaks the hooks'
 * contract on request, for plugin-test's contract checks. Its config's
 * "violate" list (given with plugin-test --config, JSON or YAML) names the
 * promises to break:
 *   "match"      match() returns 1.5
 *   "apply"      apply() returns -2
 *   "evaluate"   evaluate() returns 7
 *   "quality"    evaluate() sets the quality to 1.5
 *   "rule_score" a rule scored -0.25 (written past fusion_eval_add)
 *   "rule_name"  a rule named "Not-Snake"
 *   "rule_count" rule_count 17 (more than FUSION_EVAL_MAX_RULES)
 * Without a config it keeps every promise.
 */
#include <fusion/overlay.h>

#include <stdlib.h>
#include <string.h>

enum {
    V_MATCH = 1,
    V_APPLY = 2,
    V_EVALUATE = 4,
    V_QUALITY = 8,
    V_RULE_SCORE = 16,
    V_RULE_NAME = 32,
    V_RULE_COUNT = 64
};

typedef struct bc_state {
    unsigned violate;
} bc_state;

static int bc_init(const fusion_init_args *args, void **state)
{
    static const struct {
        const char *word;
        unsigned bit;
    } words[] = {{"\"match\"", V_MATCH},           {"\"apply\"", V_APPLY},
                 {"\"evaluate\"", V_EVALUATE},     {"\"quality\"", V_QUALITY},
                 {"\"rule_score\"", V_RULE_SCORE}, {"\"rule_name\"", V_RULE_NAME},
                 {"\"rule_count\"", V_RULE_COUNT}};
    bc_state *s = calloc(1, sizeof(*s));
    if (!s)
        return -1;
    const char *list = args->config_json ? strstr(args->config_json, "\"violate\"") : NULL;
    for (size_t i = 0; list && i < sizeof(words) / sizeof(words[0]); i++)
        if (strstr(list, words[i].word))
            s->violate |= words[i].bit;
    *state = s;
    return 0;
}

static void bc_fini(void *state)
{
    free(state);
}

static double bc_match(void *state, const fusion_request *req, const fusion_host_api *host)
{
    const bc_state *s = state;
    (void)req, (void)host;
    return s->violate & V_MATCH ? 1.5 : 0.5;
}

static int bc_apply(void *state, fusion_request *req, const fusion_host_api *host)
{
    const bc_state *s = state;
    if (s->violate & V_APPLY)
        return -2;
    return host->req_prepend_system(req, "Keep every promise.");
}

static int bc_evaluate(void *state, const fusion_request *req, const char *answer, size_t len,
                       fusion_evaluation *out, const fusion_host_api *host)
{
    const bc_state *s = state;
    (void)req, (void)answer, (void)host;
    fusion_eval_add(out, "answered", len > 0 ? 1.0 : 0.0, NULL);
    if (s->violate & V_RULE_NAME)
        fusion_eval_add(out, "Not-Snake", 1.0, NULL);
    if (s->violate & V_RULE_SCORE) {
        fusion_eval_add(out, "negative", 0.0, NULL);
        out->rules[out->rule_count - 1].score = -0.25;
    }
    if (s->violate & V_RULE_COUNT)
        out->rule_count = FUSION_EVAL_MAX_RULES + 1;
    out->quality = s->violate & V_QUALITY ? 1.5 : 1.0;
    return s->violate & V_EVALUATE ? 7 : 0;
}

FUSION_OVERLAY_DEFINE(.name = "bad_contract", .version = "1.0.0",
                      .description = "test: breaks the hooks' contract as its config says",
                      .license = "MIT", .init = bc_init, .fini = bc_fini, .match = bc_match,
                      .apply = bc_apply, .evaluate = bc_evaluate)
