/*
 * reload.c - see reload.h.
 *
 * All or nothing: a setting that needs a restart (fh_config_restart_key),
 * a plugin folder that cannot be listed or an upstream URL that cannot be
 * used refuses the reload before anything changes. Then, in order: the
 * front door's limits, the snapshot (new requests see the new config, and
 * each worker builds the upstream target of that snapshot, so a request's
 * config and upstream always come from one reload), the overlays. Requests
 * in flight keep the snapshot, target and limits they started with.
 *
 * The overlays follow the snapshot by a few milliseconds (an init() may
 * take up to hooks.deadline_ms): in between, new requests see the new
 * config with the overlays' previous generations.
 */
#include "reload.h"

#include "log.h"
#include "notify.h"
#include "pipeline.h"
#include "plugindir.h"
#include "upstream.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct fp_entry {
    char name[FUSION_NAME_MAX + 1];
    uint64_t fp;
} fp_entry;

struct fh_reloader {
    fh_reload_env env;
    fp_entry *fps;
    size_t nfps, fps_cap;
};

/* ---- bookkeeping ------------------------------------------------------------- */

static uint64_t *fp_slot(fh_reloader *r, const char *name)
{
    for (size_t i = 0; i < r->nfps; i++)
        if (strcmp(r->fps[i].name, name) == 0)
            return &r->fps[i].fp;
    if (r->nfps == r->fps_cap) {
        size_t cap = r->fps_cap ? 2 * r->fps_cap : 8;
        fp_entry *g = realloc(r->fps, cap * sizeof(*g));
        if (!g)
            return NULL;
        r->fps = g;
        r->fps_cap = cap;
    }
    fp_entry *e = &r->fps[r->nfps++];
    fh_strlcpy(e->name, name, sizeof(e->name));
    e->fp = 0;
    return &e->fp;
}

static bool under_dir(const char *path, const char *dir)
{
    size_t n = strlen(dir);
    return strncmp(path, dir, n) == 0 && path[n] == '/';
}

/* Points the init inputs at snapshot s (what the last load handed out is
 * freed first). */
static void use_inputs(fh_reloader *r, const fh_snapshot *s)
{
    fh_inputs_provider_clear(r->env.inputs);
    *r->env.inputs = (fh_inputs_provider){.cfg = s->cfg, .flags = s->flags};
}

/* Remembers what every running overlay without a record got from the
 * current inputs (after start-up, and after loads). */
static void record_new(fh_reloader *r)
{
    fh_overlay_info *list = NULL;
    size_t n = fh_registry_list(r->env.reg, &list);
    for (size_t i = 0; i < n; i++) {
        if (list[i].state == FH_STATE_FAILED || list[i].state == FH_STATE_DRAINING)
            continue;
        uint64_t *slot = fp_slot(r, list[i].name);
        if (slot && !*slot)
            *slot = fh_inputs_fingerprint(r->env.inputs, list[i].name);
    }
    fh_inputs_provider_clear(r->env.inputs);
    free(list);
}

fh_reloader *fh_reloader_new(const fh_reload_env *env)
{
    fh_reloader *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->env = *env;
    record_new(r);
    return r;
}

void fh_reloader_note_loads(fh_reloader *r)
{
    record_new(r);
}

void fh_reloader_free(fh_reloader *r)
{
    if (!r)
        return;
    free(r->fps);
    free(r);
}

/* ---- the overlays ------------------------------------------------------------ */

/* Overlays whose config or texts changed get a new generation (the old
 * one drains); then the plugin folder (plugsync.h): a new folder replaces
 * the old one's overlays, new and changed files load, refused files are
 * tried again. */
static void reload_overlays(fh_reloader *r, const fh_snapshot *old, const fh_snapshot *next)
{
    const char *dir = next->cfg->plugins.dir;
    fh_overlay_info *list = NULL;
    size_t n = fh_registry_list(r->env.reg, &list);
    bool moved = strcmp(old->cfg->plugins.dir, dir) != 0;
    for (size_t i = 0; i < n; i++) {
        fh_overlay_info *o = &list[i];
        if (o->state == FH_STATE_DRAINING || !o->path[0])
            continue; /* on its way out */
        if (moved && !under_dir(o->path, dir)) {
            uint64_t *fp = fp_slot(r, o->name);
            if (fp)
                *fp = 0; /* unloaded by the move below; a later load records its own */
            continue;
        }
        if (o->state == FH_STATE_FAILED)
            continue; /* retried with the folder's files below */
        use_inputs(r, next);
        uint64_t after = fh_inputs_fingerprint(r->env.inputs, o->name);
        uint64_t *before = fp_slot(r, o->name);
        if (before && *before == after) {
            /* Back to what the running generation has: a refusal of an
             * earlier attempt on its file is stale now. */
            for (size_t k = 0; k < n; k++)
                if (list[k].state == FH_STATE_FAILED && strcmp(list[k].path, o->path) == 0)
                    fh_registry_forget_failed(r->env.reg, o->path);
            continue;
        }
        if (!before)
            continue;
        char msg[1024] = "";
        fh_load_err e = fh_registry_load(r->env.reg, o->path, msg, sizeof(msg), NULL);
        if (e == FH_LOAD_OK) {
            *before = after; /* only then: a refused init is tried again next time */
            fh_info("overlay %s: its config or directive texts changed; re-initialised as a new "
                    "generation (requests in flight finish on the old one)",
                    o->name);
        } else {
            fh_error("overlay %s: its new config or texts were refused (above); the running "
                     "generation keeps serving",
                     o->name);
        }
        if (r->env.tick)
            r->env.tick(r->env.tick_ud);
    }
    use_inputs(r, next);
    fh_snapshot_unref(*r->env.inputs_snap);
    *r->env.inputs_snap = fh_snapshot_ref((fh_snapshot *)next);
    free(list);
    if (moved || next->cfg->plugins.watch != old->cfg->plugins.watch)
        fh_plugsync_move(r->env.sync, dir, next->cfg->plugins.watch);
    else
        fh_plugsync_scan(r->env.sync, true);
    record_new(r); /* the overlays loaded just now */
}

/* ---- the reload -------------------------------------------------------------- */

/* Why `next` cannot be applied over `running`, into why (empty: it can). */
static void refusal(const fh_config *running, const fh_config *next, char *why, size_t len)
{
    const char *key = fh_config_restart_key(running, next);
    if (key) {
        snprintf(why, len,
                 "%s changed, and it cannot change while running: restart fusion-host "
                 "(systemctl restart fusion-host) to apply it",
                 key);
        return;
    }
    fh_plugin_files files;
    if (fh_plugin_files_list(next->plugins.dir, &files) != 0) {
        snprintf(why, len, "plugins.dir %s cannot be read: %s", next->plugins.dir, strerror(errno));
        return;
    }
    fh_plugin_files_free(&files);
    /* The URL as each worker will build its upstream target from it. */
    fh_upstream_opts o;
    char err[512];
    fh_upstream_opts_of(next, &o);
    fh_upstream_target *tg = fh_upstream_target_new(&o, err, sizeof(err));
    if (!tg)
        snprintf(why, len, "%s", err);
    fh_upstream_target_free(tg);
}

int fh_reloader_reload(fh_reloader *r, char *outcome, size_t outlen)
{
    fh_notify_reloading();
    fh_info("reloading %s", r->env.config_path);
    fh_diag diag = {0};
    fh_snapshot *s = fh_snapshot_load(r->env.config_path, getenv("RESON_FEATURES"), &diag);
    fh_snapshot *old = fh_snapshot_get(r->env.snaps);
    char status[700], why[600] = "";
    if (!s) {
        for (size_t i = 0; i < diag.count; i++)
            fh_error("%s", diag.items[i]);
        snprintf(why, sizeof(why), "%s%s", diag.count ? diag.items[0] : "unknown error",
                 diag.count > 1 ? " (and more, logged)" : "");
    } else {
        refusal(old->cfg, s->cfg, why, sizeof(why));
    }
    fh_diag_clear(&diag);
    if (why[0]) {
        fh_error("reload failed: %s; still serving with the previous configuration", why);
        snprintf(status, sizeof(status),
                 "reload failed: %s; serving with the previous configuration", why);
        fh_notify_ready(status);
    } else {
        fh_http_opts ho;
        fh_http_opts_of(s->cfg, r->env.nworkers, &ho);
        fh_http_apply(r->env.http, &ho);
        fh_snapshot_install(r->env.snaps, fh_snapshot_ref(s));
        reload_overlays(r, old, s);
        fh_registry_status_line(r->env.reg, "reloaded; ", status, sizeof(status));
        fh_info("%s", status);
        fh_notify_ready(status);
    }
    if (outcome && outlen)
        fh_strlcpy(outcome, why[0] ? why : status, outlen);
    fh_snapshot_unref(s);
    fh_snapshot_unref(old);
    return why[0] ? -1 : 0;
}
