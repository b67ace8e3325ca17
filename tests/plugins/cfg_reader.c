/*
 * cfg_reader - a test overlay that reads its `config:` with the 1.1 typed
 * accessors (no JSON parser): a string, a number, an integer, a boolean, a
 * string list, and defaults for absent or mistyped keys. init() logs what it
 * read as one line the tests compare ("cfg ..."), and refuses to start on a
 * host without the accessors (a 1.0 host), saying so.
 */
#include <fusion/overlay.h>

#include <stdio.h>

static int cfg_init(const fusion_init_args *a, void **state)
{
    *state = NULL;
    const fusion_host_api *h = a->host;
    if (!FUSION_HOST_HAS(h, config_count)) {
        snprintf(a->error, a->error_size, "needs a host with SDK 1.1 config accessors");
        return -1;
    }
    char line[512];
    int n = snprintf(line, sizeof(line), "cfg tone=%s temp=%.2f max=%lld strict=%d missing=%s",
                     h->config_string(a, "tone", "none"), h->config_number(a, "temperature", -1),
                     (long long)h->config_integer(a, "limits.max_tokens", -1),
                     h->config_bool(a, "strict", 0), h->config_string(a, "nope.deeper", "dflt"));
    size_t words = h->config_count(a, "keywords");
    n += snprintf(line + n, sizeof(line) - (size_t)n, " keywords=%zu:", words);
    for (size_t i = 0; i < words && n < (int)sizeof(line) - 40; i++) {
        char key[32];
        snprintf(key, sizeof(key), "keywords.%zu", i);
        n += snprintf(line + n, sizeof(line) - (size_t)n, "%s%s", i ? "," : "",
                      h->config_string(a, key, "?"));
    }
    snprintf(line + n, sizeof(line) - (size_t)n, " wrongtype=%lld",
             (long long)h->config_integer(a, "tone", 7));
    h->log(FUSION_LOG_INFO, "%s", line);
    return 0;
}

static void cfg_fini(void *state)
{
    (void)state;
}

static int cfg_apply(void *state, fusion_request *req, const fusion_host_api *host)
{
    (void)state, (void)req, (void)host;
    return 0;
}

static int cfg_evaluate(void *state, const fusion_request *req, const char *answer, size_t len,
                        fusion_evaluation *out, const fusion_host_api *host)
{
    (void)state, (void)req, (void)answer, (void)host;
    fusion_eval_add(out, "half", len % 2 ? 0.45 : 0.55, NULL);
    out->quality = 0.5;
    return 0;
}

FUSION_OVERLAY_DEFINE(.name = "cfg_reader", .version = "1.1.0",
                      .description = "test: reads its config with the 1.1 accessors",
                      .license = "MIT", .init = cfg_init, .fini = cfg_fini, .apply = cfg_apply,
                      .evaluate = cfg_evaluate)
