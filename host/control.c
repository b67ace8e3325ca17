/*
 * control.c - see control.h.
 */
#include "control.h"

#include "door.h"
#include "log.h"
#include "util.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- answers --------------------------------------------------------------------- */

static unsigned reply(json_t *o, unsigned status, char **json)
{
    *json = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(10)) : NULL;
    json_decref(o);
    return *json ? status : 500;
}

/* The public API's error shape. */
static unsigned fail(unsigned status, const char *code, char **json, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static unsigned fail(unsigned status, const char *code, char **json, const char *fmt, ...)
{
    char msg[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    const char *type = status >= 500 ? "server_error" : "invalid_request_error";
    return reply(json_pack("{s:{s:s, s:s, s:n, s:s}}", "error", "message", msg, "type", type,
                           "param", "code", code),
                 status, json);
}

/* Every change is on disk before the operator hears it is done. */
static void persist(fh_control *c)
{
    if (c->ops)
        fh_opstate_sync(c->ops, c->reg, c->gates);
}

/* ---- overlays -------------------------------------------------------------------- */

static json_t *gates_of(fh_control *c)
{
    char *text = c->gates ? fh_gates_json(c->gates, fh_now_ms(), NULL) : NULL;
    json_t *g = text ? json_loads(text, 0, NULL) : NULL;
    free(text);
    return g ? g : json_object();
}

static json_t *overlay_json(const fh_overlay_info *o, json_t *gates)
{
    char abi[32];
    snprintf(abi, sizeof(abi), "%u.%u", o->abi_major, o->abi_minor);
    json_t *g = json_object_get(gates, o->name);
    json_t *j = json_pack(
        "{s:s, s:s, s:s, s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:{s:I, s:I, s:I}}", "name", o->name,
        "version", o->version, "abi", abi, "file", o->path, "sha256", o->sha256, "state",
        o->draining && o->state == FH_STATE_DRAINING ? "draining" : fh_overlay_state_name(o->state),
        "reason", o->reason, "in_flight", (json_int_t)o->inflight, "draining_generations",
        (json_int_t)o->draining, "pinned_generations", (json_int_t)o->pinned, "requests", "total",
        (json_int_t)o->requests, "applied", (json_int_t)o->applied, "baseline",
        (json_int_t)(o->requests - o->applied));
    if (!j)
        return NULL;
    const char *parts[] = {"breaker", "gate", "runbook"};
    for (size_t i = 0; i < 3; i++) {
        json_t *v = json_object_get(g, parts[i]);
        json_object_set(j, parts[i], v ? v : json_null());
    }
    return j;
}

static json_t *failed_json(const fh_overlay_info *o)
{
    return json_pack("{s:s, s:s?, s:s, s:s}", "file", o->path, "name", o->name[0] ? o->name : NULL,
                     "error", fh_load_err_name(o->error), "reason", o->reason);
}

static unsigned list_overlays(fh_control *c, char **json)
{
    fh_overlay_info *list = NULL;
    size_t n = fh_registry_list(c->reg, &list);
    json_t *gates = gates_of(c);
    json_t *ov = json_array(), *failed = json_array();
    for (size_t i = 0; i < n; i++) {
        if (list[i].state == FH_STATE_FAILED)
            json_array_append_new(failed, failed_json(&list[i]));
        else
            json_array_append_new(ov, overlay_json(&list[i], gates));
    }
    json_decref(gates);
    /* Decisions kept for names not loaded now: they apply when the name
     * loads again, and `enable NAME` forgets them. */
    json_t *kept = json_array();
    json_t *all = c->ops ? fh_opstate_json(c->ops) : NULL;
    const char *key;
    json_t *v;
    json_object_foreach(json_object_get(all, "overlays"), key, v)
    {
        bool loaded = false;
        for (size_t i = 0; i < n && !loaded; i++)
            loaded = list[i].state != FH_STATE_FAILED && strcmp(list[i].name, key) == 0;
        if (!loaded)
            json_array_append_new(kept, json_pack("{s:s, s:O, s:O}", "name", key, "state",
                                                  json_object_get(v, "state"), "reason",
                                                  json_object_get(v, "reason")));
    }
    json_object_foreach(json_object_get(all, "files"), key, v)
    {
        json_array_append_new(
            kept, json_pack("{s:O, s:s, s:s, s:O}", "name", json_object_get(v, "name"), "state",
                            "refused_file", "sha256", key, "reason", json_object_get(v, "reason")));
    }
    json_decref(all);
    free(list);
    return reply(json_pack("{s:o, s:o, s:o}", "overlays", ov, "failed", failed, "persisted", kept),
                 200, json);
}

/* An overlay by name; 404 written to *json when unknown. */
static bool find(fh_control *c, const char *name, fh_overlay_info *out, unsigned *status,
                 char **json)
{
    if (fh_registry_get(c->reg, name, out) == 0)
        return true;
    *status = fail(404, "overlay_not_found", json,
                   "no overlay named '%s' is loaded or was refused; `fusion-host list` shows "
                   "them",
                   name);
    return false;
}

static unsigned show_overlay(fh_control *c, const char *name, char **json)
{
    fh_overlay_info o;
    unsigned st;
    if (!find(c, name, &o, &st, json))
        return st;
    if (o.state == FH_STATE_FAILED)
        return reply(failed_json(&o), 200, json);
    json_t *gates = gates_of(c);
    json_t *j = overlay_json(&o, gates);
    json_decref(gates);
    return reply(j, 200, json);
}

static unsigned set_state(fh_control *c, const char *name, bool enable, char **json)
{
    fh_overlay_info o;
    if (fh_registry_get(c->reg, name, &o) != 0) {
        /* Not loaded, but a persisted decision names it: enabling clears
         * it, so the file loads enabled when it comes back. */
        if (enable && c->ops && fh_opstate_forget(c->ops, name)) {
            fh_opstate_save(c->ops);
            fh_info("%s: enabled by the operator; files refused for it are tried again", name);
            /* A file refused for crashing at load may load now. */
            if (fh_plugsync_scan(c->sync, true) && c->reloader)
                fh_reloader_note_loads(c->reloader);
            persist(c);
            fh_overlay_info now;
            bool loaded = fh_registry_get(c->reg, name, &now) == 0 && now.state != FH_STATE_FAILED;
            return reply(json_pack("{s:s, s:s, s:b, s:b}", "name", name, "state", "enabled",
                                   "changed", 1, "loaded", loaded),
                         200, json);
        }
        unsigned st = 500;
        find(c, name, &o, &st, json);
        return st;
    }
    if (o.state == FH_STATE_FAILED)
        return fail(409, "invalid_transition", json,
                    "%s is a file the host refused (%s), not a loaded overlay: fix it and drop it "
                    "into the plugin folder again",
                    o.path, o.reason);
    if (o.state == FH_STATE_DRAINING)
        return fail(409, "invalid_transition", json,
                    "overlay %s is being unloaded (%lu request(s) in flight); load it again to "
                    "route to it",
                    name, o.inflight);
    fh_overlay_state want = enable ? FH_STATE_ENABLED : FH_STATE_DISABLED;
    bool changed = o.state != want;
    if (changed) {
        int rc = enable ? fh_registry_enable(c->reg, name) : fh_registry_disable(c->reg, name);
        if (rc != 0)
            return fail(409, "invalid_transition", json, "overlay %s cannot be %s now", name,
                        enable ? "enabled" : "disabled");
        persist(c);
    }
    return reply(json_pack("{s:s, s:s, s:b}", "name", name, "state", fh_overlay_state_name(want),
                           "changed", changed),
                 200, json);
}

static unsigned unload(fh_control *c, const char *name, char **json)
{
    fh_overlay_info o;
    unsigned st;
    if (!find(c, name, &o, &st, json))
        return st;
    if (o.state == FH_STATE_FAILED)
        return fail(409, "invalid_transition", json,
                    "%s was refused (%s); there is nothing loaded to unload", o.path, o.reason);
    if (o.state == FH_STATE_DRAINING)
        return fail(409, "invalid_transition", json, "overlay %s is already being unloaded", name);
    /* No wait here: the main thread keeps the watchdog; reap finishes it. */
    int rc = fh_registry_unload(c->reg, name, 0);
    fh_overlay_info after;
    bool listed = fh_registry_get(c->reg, name, &after) == 0;
    unsigned long inflight = listed ? after.inflight : 0;
    /* Closed, but the dynamic loader kept the library mapped: say so. */
    const char *state = rc != 0                  ? "draining"
                        : listed && after.pinned ? "unloaded_pinned"
                                                 : "unloaded";
    persist(c);
    return reply(json_pack("{s:s, s:s, s:I}", "name", name, "state", state, "in_flight",
                           (json_int_t)inflight),
                 200, json);
}

static unsigned reset(fh_control *c, const char *name, char **json)
{
    fh_overlay_info o;
    unsigned st;
    /* A trip persisted for an overlay not loaded now can be cleared too. */
    bool persisted = c->ops && fh_opstate_gate_tripped(c->ops, name);
    if (!persisted && !find(c, name, &o, &st, json))
        return st;
    if (c->gates)
        fh_gates_reset(c->gates, name); /* -1: no gate yet, nothing to clear */
    fh_info("overlay %s: breaker closed and budget gate cleared by the operator", name);
    persist(c);
    json_t *gates = gates_of(c);
    json_t *g = json_object_get(gates, name);
    json_t *j = json_pack("{s:s, s:O?, s:O?}", "name", name, "breaker",
                          json_object_get(g, "breaker"), "gate", json_object_get(g, "gate"));
    json_decref(gates);
    return reply(j, 200, json);
}

static unsigned load(fh_control *c, const char *body, size_t len, char **json)
{
    json_error_t jerr;
    json_t *req = json_loadb(body, len, 0, &jerr);
    const char *path = json_string_value(json_object_get(req, "path"));
    if (!path || !*path) {
        json_decref(req);
        return fail(400, "bad_request", json,
                    "the body must be a JSON object with \"path\": the .so file to load");
    }
    char msg[1024] = "", name[FUSION_NAME_MAX + 1] = "";
    bool swapped = false, outside = false;
    fh_load_err e = fh_plugsync_load(c->sync, path, msg, sizeof(msg), name, &swapped, &outside);
    json_decref(req);
    if (e != FH_LOAD_OK)
        return fail(outside ? 400 : 409, outside ? "bad_request" : "load_refused", json, "%s", msg);
    if (c->reloader)
        fh_reloader_note_loads(c->reloader);
    persist(c);
    fh_overlay_info o;
    if (fh_registry_get(c->reg, name, &o) != 0)
        return fail(409, "load_refused", json, "overlay %s was unloaded again meanwhile", name);
    return reply(json_pack("{s:s, s:s, s:s, s:b, s:s, s:s}", "name", o.name, "version", o.version,
                           "state", fh_overlay_state_name(o.state), "swapped", swapped, "file",
                           o.path, "sha256", o.sha256),
                 200, json);
}

/* ---- the daemon -------------------------------------------------------------------- */

static unsigned reload(fh_control *c, char **json)
{
    if (!c->reloader)
        return fail(500, "internal_error", json, "reload is unavailable (out of memory at start)");
    char outcome[800];
    if (fh_reloader_reload(c->reloader, outcome, sizeof(outcome)) != 0)
        return fail(409, "reload_refused", json, "%s", outcome);
    persist(c);
    return reply(json_pack("{s:s, s:s}", "result", "reloaded", "status", outcome), 200, json);
}

static unsigned health(fh_control *c, char **json)
{
    unsigned code = 503;
    json_t *h = fh_http_health_json(c->http, &code);
    return reply(h, 200, json);
}

static unsigned status(fh_control *c, char **json)
{
    fh_snapshot *s = fh_snapshot_get(c->snaps);
    const fh_config *cfg = s->cfg;
    size_t counts[FH_STATE_COUNT] = {0};
    fh_overlay_info *list = NULL;
    size_t n = fh_registry_list(c->reg, &list);
    for (size_t i = 0; i < n; i++)
        counts[list[i].state]++;
    free(list);
    unsigned code;
    json_t *h = fh_http_health_json(c->http, &code);
    char listen[300];
    const char *colon = strrchr(cfg->listen, ':');
    snprintf(listen, sizeof(listen), "%.*s:%u", colon ? (int)(colon - cfg->listen) : 0, cfg->listen,
             fh_http_port(c->http));
    json_t *o = json_pack(
        "{s:s, s:I, s:f, s:s, s:s, s:s, s:I, s:I, s:I, s:s, s:s, s:b, s:s, "
        "s:{s:I, s:I, s:I, s:I, s:I}}",
        "version", FH_VERSION, "pid", (json_int_t)getpid(), "uptime_s",
        (double)(fh_now_ms() - c->started_ms) / 1000.0, "config", c->config_path, "listen", listen,
        "admin", c->admin_address, "workers", (json_int_t)c->workers, "in_flight",
        (json_int_t)fh_pipeline_in_flight(c->pipeline), "config_generation",
        (json_int_t)s->generation, "state_dir", cfg->state_dir, "plugins_dir",
        fh_plugsync_dir(c->sync), "watch", fh_plugsync_watching(c->sync), "environment",
        cfg->environment, "overlays", "enabled", (json_int_t)counts[FH_STATE_ENABLED], "disabled",
        (json_int_t)counts[FH_STATE_DISABLED], "draining", (json_int_t)counts[FH_STATE_DRAINING],
        "quarantined", (json_int_t)counts[FH_STATE_QUARANTINED], "failed",
        (json_int_t)counts[FH_STATE_FAILED]);
    fh_snapshot_unref(s);
    if (o && h) {
        json_object_set(o, "status", json_object_get(h, "status"));
        json_object_set(o, "reasons", json_object_get(h, "reasons"));
    }
    json_decref(h);
    return reply(o, 200, json);
}

static json_t *strings(char *const *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(v[i]));
    return a;
}

/* The flags as requests see them: RESON_FEATURES applied. */
static unsigned flags(fh_control *c, char **json)
{
    fh_snapshot *s = fh_snapshot_get(c->snaps);
    const fh_flags *f = s->flags;
    const fh_env_override *ovr = &s->ovr;
    json_t *features = json_object();
    for (size_t i = 0; i < f->feature_count; i++) {
        const fh_feature *ft = &f->features[i];
        bool active = !ovr->set;
        for (size_t k = 0; ovr->set && k < ovr->count; k++)
            active = active || strcmp(ovr->names[k], ft->name) == 0;
        json_object_set_new(
            features, ft->name,
            json_pack("{s:b, s:s, s:o, s:f, s:o, s:f, s:s}", "active", active, "description",
                      ft->description ? ft->description : "", "enabled_overlays",
                      strings(ft->enabled_overlays, ft->enabled_overlay_count),
                      "rollout_percentage", ft->rollout_percentage, "scenario_types",
                      strings(ft->scenario_types, ft->scenario_type_count), "confidence_threshold",
                      ft->confidence_threshold, "fallback_strategy",
                      ft->fallback_strategy ? ft->fallback_strategy : "baseline_only"));
    }
    const fh_environment *env = fh_flags_environment(f, s->cfg->environment);
    json_t *o =
        json_pack("{s:s, s:s, s:o, s:o}", "file", f->path ? f->path : "", "environment",
                  s->cfg->environment, "reson_features",
                  ovr->set ? strings(ovr->names, ovr->count) : json_null(), "features", features);
    if (o && env)
        json_object_set_new(o, "environment_settings",
                            json_pack("{s:f, s:b, s:f}", "global_rollout_percentage",
                                      env->global_rollout_percentage, "circuit_breaker_enabled",
                                      env->circuit_breaker_enabled, "quality_gate_threshold",
                                      env->quality_gate_threshold));
    fh_snapshot_unref(s);
    return reply(o, 200, json);
}

/* ---- routing --------------------------------------------------------------------- */

static unsigned wrong_method(const char *allow, char **json)
{
    return fail(405, "method_not_allowed", json, "method not allowed here; use %s", allow);
}

unsigned fh_control_handle(void *ud, const char *method, const char *path, const char *body,
                           size_t len, char **json)
{
    fh_control *c = ud;
    bool get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
    static const char prefix[] = "/admin/overlays";
    if (strcmp(path, "/admin/status") == 0)
        return get ? status(c, json) : wrong_method("GET", json);
    if (strcmp(path, "/admin/health") == 0)
        return get ? health(c, json) : wrong_method("GET", json);
    if (strcmp(path, "/admin/flags") == 0)
        return get ? flags(c, json) : wrong_method("GET", json);
    if (strcmp(path, "/admin/reload") == 0)
        return post ? reload(c, json) : wrong_method("POST", json);
    if (strcmp(path, prefix) == 0 || strcmp(path, "/admin/overlays/") == 0)
        return get ? list_overlays(c, json) : wrong_method("GET", json);
    if (strcmp(path, "/admin/overlays/load") == 0)
        return post ? load(c, body, len, json) : wrong_method("POST", json);
    if (strncmp(path, "/admin/overlays/", sizeof(prefix)) == 0) {
        const char *name = path + sizeof(prefix);
        size_t nlen = strcspn(name, "/");
        char nm[FUSION_NAME_MAX + 1];
        if (nlen == 0 || nlen > FUSION_NAME_MAX)
            return fail(404, "overlay_not_found", json, "no such overlay");
        memcpy(nm, name, nlen);
        nm[nlen] = '\0';
        /* Overlay names are [a-z0-9_] (a file name, for a refused file);
         * other bytes, those that are not UTF-8 included, name nothing. */
        for (size_t i = 0; i < nlen; i++)
            if (!((nm[i] >= 'a' && nm[i] <= 'z') || (nm[i] >= '0' && nm[i] <= '9') ||
                  nm[i] == '_' || nm[i] == '-' || nm[i] == '.' || (nm[i] >= 'A' && nm[i] <= 'Z')))
                return fail(404, "overlay_not_found", json,
                            "no overlay has that name (overlay names are lowercase letters, "
                            "digits and '_')");
        const char *action = name + nlen;
        if (!*action)
            return get ? show_overlay(c, nm, json) : wrong_method("GET", json);
        if (!post && (!strcmp(action, "/enable") || !strcmp(action, "/disable") ||
                      !strcmp(action, "/unload") || !strcmp(action, "/breaker/reset")))
            return wrong_method("POST", json);
        if (!strcmp(action, "/enable"))
            return set_state(c, nm, true, json);
        if (!strcmp(action, "/disable"))
            return set_state(c, nm, false, json);
        if (!strcmp(action, "/unload"))
            return unload(c, nm, json);
        if (!strcmp(action, "/breaker/reset"))
            return reset(c, nm, json);
    }
    return fail(404, "not_found", json,
                "no admin endpoint %s %s; see docs/admin-api.md (GET /admin/overlays, POST "
                "/admin/overlays/NAME/disable, ...)",
                method, path);
}
