/*
 * wedge - a test overlay whose hook blocks the calling thread when the
 * request's scenario type is "wedge": apply() or evaluate() (config "hook"),
 * for `block_ms` milliseconds (config; -1: for ever). The hang tests use it
 * to check that a hung hook costs only its own request. Other requests it
 * serves at once.
 */
#include <fusion/overlay.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct wedge_state {
    long block_ms;
    int on_evaluate;
} wedge_state;

static int wedge_init(const fusion_init_args *a, void **state)
{
    wedge_state *s = malloc(sizeof(*s));
    if (!s)
        return -1;
    /* The SDK 1.1 accessors; a host without them gets the defaults. */
    const fusion_host_api *h = a->host;
    bool typed = h && FUSION_HOST_HAS(h, config_integer) && FUSION_HOST_HAS(h, config_string);
    s->block_ms = typed ? (long)h->config_integer(a, "block_ms", 3000) : 3000;
    s->on_evaluate = typed && strcmp(h->config_string(a, "hook", "apply"), "evaluate") == 0;
    *state = s;
    return 0;
}

static void wedge_fini(void *state)
{
    free(state);
}

static void block(const wedge_state *s, const fusion_host_api *host, const char *hook)
{
    host->log(FUSION_LOG_WARN, "wedging %s for %ld ms", hook, s->block_ms);
    struct timespec ts = {s->block_ms / 1000, (s->block_ms % 1000) * 1000000L};
    if (s->block_ms < 0)
        ts.tv_sec = 3600, ts.tv_nsec = 0;
    do {
        while (nanosleep(&ts, &ts) != 0)
            ;
        ts.tv_sec = 3600;
    } while (s->block_ms < 0);
    host->log(FUSION_LOG_WARN, "unwedged");
}

static int triggered(const fusion_request *req, const fusion_host_api *host)
{
    return strcmp(host->req_scenario_type(req), "wedge") == 0;
}

static int wedge_apply(void *state, fusion_request *req, const fusion_host_api *host)
{
    const wedge_state *s = state;
    if (!s->on_evaluate && triggered(req, host))
        block(s, host, "apply()");
    return 0;
}

static int wedge_evaluate(void *state, const fusion_request *req, const char *answer, size_t len,
                          fusion_evaluation *out, const fusion_host_api *host)
{
    const wedge_state *s = state;
    (void)answer, (void)len;
    if (s->on_evaluate && triggered(req, host))
        block(s, host, "evaluate()");
    out->quality = 1.0;
    return 0;
}

FUSION_OVERLAY_DEFINE(.name = "wedge", .version = "1.0.0",
                      .description = "test: blocks apply() or evaluate()", .license = "MIT",
                      .init = wedge_init, .fini = wedge_fini, .apply = wedge_apply,
                      .evaluate = wedge_evaluate)
