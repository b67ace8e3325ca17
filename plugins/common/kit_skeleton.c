/*
 * kit_skeleton.c - what every overlay does: join its directive texts, init() and
 * fini() of the shared state, the standard apply (directive first, tuned
 * sampling, the caller's stricter limits kept).
 */
#include "kit_internal.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- directives --------------------------------------------------------------- */

int kit_is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

char *okit_join_directives(const fusion_directive *d, size_t n, size_t *count)
{
    size_t total = 1, used = 0, joined = 0;
    if (count)
        *count = 0;
    if (!d)
        return NULL;
    for (size_t i = 0; i < n; i++)
        total += (d[i].text ? d[i].text_len : 0) + 2;
    char *out = malloc(total);
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        const char *t = d[i].text;
        size_t a = 0, b = t ? d[i].text_len : 0;
        while (a < b && kit_is_space(t[a]))
            a++;
        while (b > a && kit_is_space(t[b - 1]))
            b--;
        if (a == b)
            continue;
        if (memchr(t + a, '\0', b - a)) /* the host hands text; a NUL would truncate */
            continue;
        if (joined++) {
            out[used++] = '\n';
            out[used++] = '\n';
        }
        memcpy(out + used, t + a, b - a);
        used += b - a;
    }
    out[used] = '\0';
    if (joined == 0) {
        free(out);
        return NULL;
    }
    if (count)
        *count = joined;
    return out;
}

void okit_set_error(const fusion_init_args *args, const char *fmt, ...)
{
    if (!args || !args->error || args->error_size == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args->error, args->error_size, fmt, ap);
    va_end(ap);
}

/* ---- the shared overlay skeleton ----------------------------------------------- */

static int host_complete(const fusion_host_api *h)
{
    return h && FUSION_HOST_HAS(h, log) && FUSION_HOST_HAS(h, req_scenario_type) &&
           FUSION_HOST_HAS(h, req_scenario_id) && FUSION_HOST_HAS(h, req_message_count) &&
           FUSION_HOST_HAS(h, req_message_role) && FUSION_HOST_HAS(h, req_message_content) &&
           FUSION_HOST_HAS(h, req_get_number) && FUSION_HOST_HAS(h, req_prepend_system) &&
           FUSION_HOST_HAS(h, req_set_number) && FUSION_HOST_HAS(h, req_set_integer) &&
           FUSION_HOST_HAS(h, config_type) && FUSION_HOST_HAS(h, config_key) &&
           FUSION_HOST_HAS(h, config_number);
}

int okit_state_init(const fusion_init_args *args, const char *name, const char *missing_hint,
                    okit_state **out)
{
    *out = NULL;
    if (!args || args->size < sizeof(fusion_init_args) || !host_complete(args->host)) {
        okit_set_error(args, "%s: the host's API table lacks functions of ABI 1.1", name);
        return -1;
    }
    okit_state *st = calloc(1, sizeof(*st));
    if (!st) {
        okit_set_error(args, "%s: out of memory", name);
        return -1;
    }
    st->name = name;
    char why[200] = "";
    if (okit_config_read(args, &st->cfg, why, sizeof(why)) != 0) {
        okit_set_error(args, "%s: %s", name, why);
        okit_state_free(st);
        return -1;
    }
    st->directive =
        okit_join_directives(args->directives, args->directive_count, &st->directive_count);
    if (!st->directive) {
        okit_set_error(args, "%s: no directive text: %s", name, missing_hint);
        okit_state_free(st);
        return -1;
    }
    /* Forced values outside the constraints still work (they are clamped
     * on every apply) but the operator should hear about it once. */
    okit_sampling given = kit_param_defaults; /* in range; replaced by what is given */
    okit_config_override(&st->cfg, &given);
    if (okit_sampling_clamp(&given) > 0)
        args->host->log(FUSION_LOG_WARN,
                        "config sets sampling values outside the tuning constraints; they "
                        "are clamped to temperature [0.15,0.40], top_p [0.60,0.95], "
                        "presence_penalty [0,0.20], frequency_penalty [0.15,0.50]");
    *out = st;
    return 0;
}

void okit_state_free(okit_state *st)
{
    if (!st)
        return;
    free(st->directive);
    free(st);
}

int okit_apply_standard(const okit_state *st, fusion_request *req, const fusion_host_api *host,
                        okit_category category)
{
    if (!st || !req || !host)
        return -1;
    if (host->req_prepend_system(req, st->directive) != 0) {
        host->log(FUSION_LOG_WARN, "the host refused the directive");
        return -1;
    }
    const char *id = host->req_scenario_id(req);
    const char *type = host->req_scenario_type(req);
    okit_sampling p;
    okit_source src = okit_sampling_lookup(id, type, category, &p);
    okit_config_override(&st->cfg, &p);
    int clamped = okit_sampling_clamp(&p);
    if (host->req_set_number(req, "temperature", p.temperature) != 0 ||
        host->req_set_number(req, "top_p", p.top_p) != 0 ||
        host->req_set_number(req, "presence_penalty", p.presence_penalty) != 0 ||
        host->req_set_number(req, "frequency_penalty", p.frequency_penalty) != 0) {
        host->log(FUSION_LOG_WARN, "the host refused a sampling parameter");
        return -1;
    }
    /* Only fill in a limit the caller did not set: never raise theirs.
     * max_completion_tokens is the newer name of the same limit. */
    double limit;
    int set_limit = !host->req_get_number(req, "max_tokens", &limit) &&
                    !host->req_get_number(req, "max_completion_tokens", &limit);
    if (set_limit && host->req_set_integer(req, "max_tokens", st->cfg.max_tokens) != 0) {
        host->log(FUSION_LOG_WARN, "the host refused max_tokens");
        return -1;
    }
    host->log(FUSION_LOG_DEBUG,
              "applied %zu directive(s); scenario id '%.64s' type '%.64s': %s (%s)%s "
              "temperature=%.2f top_p=%.2f presence_penalty=%.2f frequency_penalty=%.2f%s",
              st->directive_count, id, type, okit_source_name(src),
              src == OKIT_SRC_CATEGORY ? okit_category_name(category) : "reference table",
              clamped ? " clamped" : "", p.temperature, p.top_p, p.presence_penalty,
              p.frequency_penalty, set_limit ? " max_tokens set" : " caller's max_tokens kept");
    return 0;
}
