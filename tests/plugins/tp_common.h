/*
 * tp_common.h - shared body of the registry/loader test plugins.
 *
 * A plugin defines TP_NAME, TP_VERSION and TP_MATCH (the score its match()
 * returns, so a test can tell generations apart) and includes this file to
 * get the hooks tp_init .. tp_evaluate. Every loaded copy of a .so has its
 * own globals, so the static `tp_state` below is per generation: init()
 * marks it live, fini() marks it dead, and every hook checks the mark and
 * returns an error the test counts if it ever runs on a finalised
 * generation. init() and fini() report themselves through host->log as
 * "init NAME VERSION" / "fini NAME VERSION" so the test can count them
 * after the library is gone. apply() asks the host for the number
 * "tp_block": the test's host table may block there, which makes a hook the
 * test controls. Threads: init/fini alone, the other hooks concurrently
 * (they only read tp_state).
 */
#ifndef TP_COMMON_H
#define TP_COMMON_H

#include <fusion/overlay.h>

#include <stddef.h>

#define TP_LIVE 0x4c495645u /* "LIVE" */
#define TP_DEAD 0x44454144u /* "DEAD" */

#define TP_UNUSED __attribute__((unused))

static struct {
    unsigned magic;
    const fusion_host_api *host;
} tp_state;

#ifdef TP_NAME

TP_UNUSED static int tp_init(const fusion_init_args *args, void **state)
{
    tp_state.host = args->host;
    tp_state.magic = TP_LIVE;
    if (tp_state.host && FUSION_HOST_HAS(tp_state.host, log))
        tp_state.host->log(FUSION_LOG_INFO, "init %s %s", TP_NAME, TP_VERSION);
    *state = &tp_state;
    return 0;
}

TP_UNUSED static void tp_fini(void *state)
{
    if (state != &tp_state || tp_state.magic != TP_LIVE) {
        if (tp_state.host && FUSION_HOST_HAS(tp_state.host, log))
            tp_state.host->log(FUSION_LOG_ERROR, "bad fini %s %s", TP_NAME, TP_VERSION);
    }
    tp_state.magic = TP_DEAD;
    if (tp_state.host && FUSION_HOST_HAS(tp_state.host, log))
        tp_state.host->log(FUSION_LOG_INFO, "fini %s %s", TP_NAME, TP_VERSION);
}

TP_UNUSED static double tp_match(void *state, const fusion_request *req,
                                 const fusion_host_api *host)
{
    (void)req;
    (void)host;
    if (state != &tp_state || tp_state.magic != TP_LIVE)
        return -1.0;
    return TP_MATCH;
}

TP_UNUSED static int tp_apply(void *state, fusion_request *req, const fusion_host_api *host)
{
    if (state != &tp_state || tp_state.magic != TP_LIVE)
        return -99;
    double v;
    if (host && FUSION_HOST_HAS(host, req_get_number))
        (void)host->req_get_number(req, "tp_block", &v);
    /* Checked again: a hook that outlived its generation would see it. */
    return tp_state.magic == TP_LIVE ? 0 : -98;
}

TP_UNUSED static int tp_evaluate(void *state, const fusion_request *req, const char *answer,
                                 size_t len, fusion_evaluation *out, const fusion_host_api *host)
{
    (void)req;
    (void)answer;
    (void)host;
    if (state != &tp_state || tp_state.magic != TP_LIVE)
        return -99;
    fusion_eval_add(out, "short", len < 100 ? 1.0 : 0.0, NULL);
    out->quality = TP_MATCH;
    return 0;
}

#endif /* TP_NAME */

/* An entry function around a hand-written descriptor, for the plugins that
 * must get the header fields wrong on purpose. */
#define TP_ENTRY(...)                                                                              \
    FUSION_EXPORT const fusion_overlay_descriptor *FUSION_OVERLAY_ENTRY(void);                     \
    FUSION_EXPORT const fusion_overlay_descriptor *FUSION_OVERLAY_ENTRY(void)                      \
    {                                                                                              \
        static const fusion_overlay_descriptor tp_descriptor_ = {__VA_ARGS__};                     \
        return &tp_descriptor_;                                                                    \
    }

/* The hooks of a well-formed descriptor, for TP_ENTRY. */
#define TP_HOOKS                                                                                   \
    .init = tp_init, .fini = tp_fini, .match = tp_match, .apply = tp_apply, .evaluate = tp_evaluate

#endif
