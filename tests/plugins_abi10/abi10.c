/*
 * abi10 - a test overlay built against the 1.0 header kept in
 * tests/fixtures/sdk-1.0/ (not the current SDK): a 1.1 host must load it and
 * run it unchanged. Its init() reads the config the 1.0 way (the JSON text)
 * and reports what it saw through host->log; apply() prepends a directive
 * and sets a temperature; evaluate() scores with fusion_eval_add (which,
 * compiled from the 1.0 header, sets `passed` at 0.5 itself).
 */
#include <fusion/overlay.h>

#include <string.h>

static int abi10_init(const fusion_init_args *a, void **state)
{
    *state = NULL;
    if (a->size < sizeof(fusion_init_args))
        return -1; /* the host gives at least the 1.0 layout */
    a->host->log(FUSION_LOG_INFO, "abi10 init: config %.*s", (int)a->config_len, a->config_json);
    return 0;
}

static void abi10_fini(void *state)
{
    (void)state;
}

static int abi10_apply(void *state, fusion_request *req, const fusion_host_api *host)
{
    (void)state;
    if (host->req_prepend_system(req, "abi10 directive") != 0)
        return -1;
    return host->req_set_number(req, "temperature", 0.3);
}

static int abi10_evaluate(void *state, const fusion_request *req, const char *answer, size_t len,
                          fusion_evaluation *out, const fusion_host_api *host)
{
    (void)state, (void)req, (void)host;
    fusion_eval_add(out, "long_enough", len >= 10 ? 0.6 : 0.2, NULL);
    out->quality = len >= 10 ? 0.6 : 0.2;
    (void)answer;
    return 0;
}

FUSION_OVERLAY_DEFINE(.name = "abi10", .version = "1.0.0",
                      .description = "test: built against the 1.0 SDK header", .license = "MIT",
                      .init = abi10_init, .fini = abi10_fini, .apply = abi10_apply,
                      .evaluate = abi10_evaluate)
