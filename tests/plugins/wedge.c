/*
 * wedge - a test overlay whose apply() blocks the calling thread for
 * `block_ms` (its config, default 3000) when the request's scenario type is
 * "wedge". The notify test uses it to wedge the HTTP loop and check that
 * the watchdog pings stop while the loop is stuck. Bounded, so tests end.
 */
#include <fusion/overlay.h>

#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct wedge_state {
    long block_ms;
} wedge_state;

static int wedge_init(const fusion_init_args *a, void **state)
{
    wedge_state *s = malloc(sizeof(*s));
    if (!s)
        return -1;
    s->block_ms = 3000;
    const char *k = a->config_json ? strstr(a->config_json, "\"block_ms\"") : NULL;
    if (k && (k = strchr(k, ':')) != NULL)
        s->block_ms = strtol(k + 1, NULL, 10);
    *state = s;
    return 0;
}

static void wedge_fini(void *state)
{
    free(state);
}

static int wedge_apply(void *state, fusion_request *req, const fusion_host_api *host)
{
    const wedge_state *s = state;
    if (strcmp(host->req_scenario_type(req), "wedge") != 0)
        return 0;
    host->log(FUSION_LOG_WARN, "wedging the calling thread for %ld ms", s->block_ms);
    struct timespec ts = {s->block_ms / 1000, (s->block_ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0)
        ;
    host->log(FUSION_LOG_WARN, "unwedged");
    return 0;
}

static int wedge_evaluate(void *state, const fusion_request *req, const char *answer, size_t len,
                          fusion_evaluation *out, const fusion_host_api *host)
{
    (void)state, (void)req, (void)answer, (void)len, (void)host;
    out->quality = 1.0;
    return 0;
}

FUSION_OVERLAY_DEFINE(.name = "wedge", .version = "1.0.0", .description = "test: blocks apply()",
                      .license = "MIT", .init = wedge_init, .fini = wedge_fini,
                      .apply = wedge_apply, .evaluate = wedge_evaluate)
