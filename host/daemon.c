/*
 * daemon.c - see daemon.h.
 *
 * Threads: the main thread owns this file's state and runs the loop below;
 * it is the only thread that receives signals (they are blocked before any
 * other thread starts and taken with sigtimedwait). The workers and the
 * monitor (workers.h) are started here and stopped on the way out.
 *
 * The watchdog is pinged only while every worker's loop echoes the previous
 * ping (its inbox runs) and the monitor ticks: a wedged loop stops the
 * pings, and systemd restarts us. The proof needs no public connection, so
 * clients alone can never starve it.
 */
#include "daemon.h"

#include "config.h"
#include "directives.h"
#include "hostapi.h"
#include "http_api.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "pipeline.h"
#include "plugindir.h"
#include "registry.h"
#include "snapshot.h"
#include "upstream.h"
#include "util.h"
#include "workers.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LOOP_TICK_MS 100

static fh_metrics *metric_sink_target; /* set once before plugins load */

static void metric_sink(const char *overlay, const char *event, double delta)
{
    fh_metrics_overlay_event(metric_sink_target, overlay ? overlay : "unknown", event, delta);
}

/* Copies left by a run that crashed are never mapped again: clear them. */
static void clear_cache(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        char *path = NULL;
        if (asprintf(&path, "%s/%s", dir, e->d_name) >= 0)
            unlink(path);
        free(path);
    }
    closedir(d);
}

static size_t load_plugins(fh_registry *reg, const char *dir)
{
    fh_plugin_files files;
    if (fh_plugin_files_list(dir, &files) != 0) {
        fh_error("plugins.dir %s cannot be read: %s; serving the baseline only", dir,
                 strerror(errno));
        return 0;
    }
    size_t loaded = 0;
    for (size_t i = 0; i < files.count; i++) {
        char msg[1024] = "";
        /* The registry logs each load; refusals are ours to report. */
        if (fh_registry_load(reg, files.paths[i], msg, sizeof(msg), NULL) == FH_LOAD_OK)
            loaded++;
        else
            fh_error("%s", msg);
    }
    fh_plugin_files_free(&files);
    return loaded;
}

static void status_line(fh_registry *reg, const char *prefix, char *out, size_t len)
{
    fh_overlay_info *list = NULL;
    size_t n = fh_registry_list(reg, &list);
    size_t counts[FH_STATE_COUNT] = {0};
    for (size_t i = 0; i < n; i++)
        counts[list[i].state]++;
    free(list);
    snprintf(out, len, "%s%zu overlays enabled, %zu disabled, %zu quarantined, %zu failed", prefix,
             counts[FH_STATE_ENABLED], counts[FH_STATE_DISABLED], counts[FH_STATE_QUARANTINED],
             counts[FH_STATE_FAILED]);
}

static int write_ready_file(const char *path, const char *host, unsigned port)
{
    char *tmp = NULL;
    if (asprintf(&tmp, "%s.tmp.%d", path, (int)getpid()) < 0)
        return -1;
    FILE *f = fopen(tmp, "w");
    int rc = -1;
    if (f) {
        fprintf(f, "listen=%s:%u\npid=%d\n", host, port, (int)getpid());
        rc = fclose(f) == 0 && rename(tmp, path) == 0 ? 0 : -1;
    }
    if (rc != 0)
        unlink(tmp);
    free(tmp);
    return rc;
}

/* The host part of "host:port" (without brackets), for the ready file. */
static void listen_host(const char *listen, char *out, size_t len)
{
    const char *colon = strrchr(listen, ':');
    size_t n = colon ? (size_t)(colon - listen) : strlen(listen);
    if (n >= len)
        n = len - 1;
    memcpy(out, listen, n);
    out[n] = '\0';
}

/* The front door's settings from a configuration. */
static void http_opts(const fh_config *cfg, unsigned nworkers, fh_http_opts *ho)
{
    *ho = (fh_http_opts){.listen = cfg->listen,
                         .max_connections = (unsigned)cfg->limits.max_connections,
                         .max_connections_per_ip = (unsigned)cfg->limits.max_connections_per_ip,
                         .max_body_bytes = (size_t)cfg->limits.max_body_bytes,
                         .max_header_bytes = (size_t)cfg->limits.max_header_bytes,
                         .header_timeout_ms = (uint64_t)cfg->limits.header_timeout_ms,
                         .body_min_bytes_per_s = (uint64_t)cfg->limits.body_min_bytes_per_s,
                         .idle_timeout_ms = (uint64_t)cfg->limits.idle_timeout_ms,
                         .workers = nworkers};
}

/* Watchdog pings (main thread): one per interval while the workers and the
 * monitor are responsive. */
typedef struct watchdog {
    uint64_t interval; /* ms between pings; 0: no watchdog */
    uint64_t next_ping;
} watchdog;

static void watchdog_tick(watchdog *w, fh_workers *ws)
{
    uint64_t now = fh_now_ms();
    if (!w->interval || now < w->next_ping)
        return;
    /* Each worker must have echoed the ping sent one interval ago. */
    if (fh_workers_responsive(ws, w->interval > 1000 ? w->interval : 1000))
        fh_notify_watchdog();
    else
        fh_warn("watchdog: a worker or the monitor is not responding; not pinging");
    w->next_ping = now + w->interval;
}

/* Waits up to timeout_ms for the requests in flight to end; the watchdog
 * goes on (a long drain is not a hang). */
static void drain(fh_pipeline *p, watchdog *wd, fh_workers *ws, uint64_t timeout_ms)
{
    uint64_t deadline = fh_now_ms() + timeout_ms;
    while (fh_pipeline_in_flight(p) > 0 && fh_now_ms() < deadline) {
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
        watchdog_tick(wd, ws);
    }
}

/* What each overlay's current generation was initialised with (a hash of
 * its config and texts, fh_inputs_fingerprint): the texts are files, read
 * again at every load, so the running ones can only be known this way. */
typedef struct fp_entry {
    char name[FUSION_NAME_MAX + 1];
    uint64_t fp;
} fp_entry;

typedef struct fp_table {
    fp_entry *items;
    size_t count, cap;
} fp_table;

static uint64_t *fp_slot(fp_table *t, const char *name)
{
    for (size_t i = 0; i < t->count; i++)
        if (strcmp(t->items[i].name, name) == 0)
            return &t->items[i].fp;
    if (t->count == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 8;
        fp_entry *g = realloc(t->items, cap * sizeof(*g));
        if (!g)
            return NULL;
        t->items = g;
        t->cap = cap;
    }
    fp_entry *e = &t->items[t->count++];
    fh_strlcpy(e->name, name, sizeof(e->name));
    e->fp = 0;
    return &e->fp;
}

/* Remembers what every loaded overlay got from `inputs`. */
static void fp_record_all(fp_table *t, fh_registry *reg, fh_inputs_provider *inputs)
{
    fh_overlay_info *list = NULL;
    size_t n = fh_registry_list(reg, &list);
    for (size_t i = 0; i < n; i++) {
        if (list[i].state == FH_STATE_FAILED)
            continue;
        uint64_t *slot = fp_slot(t, list[i].name);
        if (slot && !*slot)
            *slot = fh_inputs_fingerprint(inputs, list[i].name);
    }
    fh_inputs_provider_clear(inputs);
    free(list);
}

/* What a reload touches besides the snapshot holder. */
typedef struct live {
    fp_table *fps;
    fh_snapshot_holder *snaps;
    fh_registry *reg;
    fh_http *http;
    fh_workers *workers;
    fh_inputs_provider *inputs;
    fh_snapshot **inputs_snap; /* the snapshot `inputs` points into */
    unsigned nworkers;
    const char *config_path;
} live;

static bool under_dir(const char *path, const char *dir)
{
    size_t n = strlen(dir);
    return strncmp(path, dir, n) == 0 && path[n] == '/';
}

static void upstream_opts(const fh_config *cfg, fh_upstream_opts *o)
{
    const char *key_env = cfg->upstream.api_key_env;
    *o = (fh_upstream_opts){.base_url = cfg->upstream.base_url,
                            .api_key = key_env && *key_env ? getenv(key_env) : NULL,
                            .timeout_ms = cfg->upstream.timeout_ms,
                            .connect_timeout_ms = cfg->upstream.connect_timeout_ms};
}

/* Points the init inputs at snapshot s (what the last load handed out is
 * freed first). */
static void use_inputs(fh_inputs_provider *inputs, const fh_snapshot *s)
{
    fh_inputs_provider_clear(inputs);
    *inputs = (fh_inputs_provider){.cfg = s->cfg, .flags = s->flags};
}

/* Overlays after a reload: those whose config or texts changed get a new
 * generation (init with the new inputs; the old one drains), a new plugin
 * folder replaces the old one's overlays, and files not seen yet load. */
static void reload_overlays(live *L, fh_snapshot *old, fh_snapshot *next)
{
    fh_overlay_info *list = NULL;
    size_t n = fh_registry_list(L->reg, &list);
    bool moved = strcmp(old->cfg->plugins.dir, next->cfg->plugins.dir) != 0;
    for (size_t i = 0; i < n; i++) {
        fh_overlay_info *o = &list[i];
        if (moved && under_dir(o->path, old->cfg->plugins.dir)) {
            if (o->state == FH_STATE_FAILED) {
                fh_registry_forget_failed(L->reg, o->path);
            } else {
                fh_info("overlay %s: plugins.dir moved to %s; unloading it (requests in flight "
                        "finish first)",
                        o->name, next->cfg->plugins.dir);
                fh_registry_unload(L->reg, o->name, 0); /* reap closes it once drained */
                uint64_t *fp = fp_slot(L->fps, o->name);
                if (fp)
                    *fp = 0; /* a later load records its own */
            }
            o->path[0] = '\0';
            continue;
        }
        if (o->state == FH_STATE_FAILED || !o->path[0])
            continue;
        use_inputs(L->inputs, next);
        uint64_t after = fh_inputs_fingerprint(L->inputs, o->name);
        fh_inputs_provider_clear(L->inputs);
        uint64_t *before = fp_slot(L->fps, o->name);
        if (!before || *before == after)
            continue;
        *before = after;
        char msg[1024] = "";
        if (fh_registry_load(L->reg, o->path, msg, sizeof(msg), NULL) == FH_LOAD_OK)
            fh_info("overlay %s: its config or directive texts changed; re-initialised as a new "
                    "generation (requests in flight finish on the old one)",
                    o->name);
        else
            fh_error("overlay %s: its new config or texts were refused (above); the running "
                     "generation keeps serving",
                     o->name);
    }
    use_inputs(L->inputs, next);
    fh_snapshot_unref(*L->inputs_snap);
    *L->inputs_snap = fh_snapshot_ref(next);
    /* Files of the (new) folder that are not loaded or refused yet. */
    fh_plugin_files files;
    if (fh_plugin_files_list(next->cfg->plugins.dir, &files) == 0) {
        for (size_t f = 0; f < files.count; f++) {
            bool known = false;
            for (size_t i = 0; i < n && !known; i++)
                known = strcmp(list[i].path, files.paths[f]) == 0;
            char msg[1024] = "";
            if (!known &&
                fh_registry_load(L->reg, files.paths[f], msg, sizeof(msg), NULL) != FH_LOAD_OK)
                fh_error("%s", msg);
        }
        fh_plugin_files_free(&files);
    }
    free(list);
    fp_record_all(L->fps, L->reg, L->inputs); /* the overlays loaded just now */
}

/* The reload, all or nothing: a setting that needs a restart, a plugin
 * folder that cannot be read or an unusable upstream URL refuses it and
 * the running configuration stays. Requests in flight keep the snapshot,
 * upstream target and limits they started with. */
static void reload(live *L)
{
    fh_notify_reloading();
    fh_info("reloading %s", L->config_path);
    fh_diag diag = {0};
    fh_snapshot *s = fh_snapshot_load(L->config_path, getenv("RESON_FEATURES"), &diag);
    fh_snapshot *old = fh_snapshot_get(L->snaps);
    char status[700], why[600] = "";
    const char *key = s ? fh_config_restart_key(old->cfg, s->cfg) : NULL;
    struct stat st;
    fh_upstream_opts uo;
    if (!s) {
        for (size_t i = 0; i < diag.count; i++)
            fh_error("%s", diag.items[i]);
        snprintf(why, sizeof(why), "%s%s", diag.count ? diag.items[0] : "unknown error",
                 diag.count > 1 ? " (and more, logged)" : "");
    } else if (key) {
        snprintf(why, sizeof(why),
                 "%s changed, and it cannot change while running: restart fusion-host "
                 "(systemctl restart fusion-host) to apply it",
                 key);
    } else if (stat(s->cfg->plugins.dir, &st) != 0) {
        snprintf(why, sizeof(why), "plugins.dir %s cannot be read: %s", s->cfg->plugins.dir,
                 strerror(errno));
    } else if (!S_ISDIR(st.st_mode)) {
        snprintf(why, sizeof(why), "plugins.dir %s is not a folder", s->cfg->plugins.dir);
    } else {
        upstream_opts(s->cfg, &uo);
        char err[512];
        if (fh_workers_retarget(L->workers, &uo, err, sizeof(err)) != 0)
            snprintf(why, sizeof(why), "%s", err);
    }
    fh_diag_clear(&diag);
    if (why[0]) {
        fh_error("reload failed: %s; still serving with the previous configuration", why);
        snprintf(status, sizeof(status),
                 "reload failed: %s; serving with the previous configuration", why);
        fh_notify_ready(status);
        fh_snapshot_unref(s);
        fh_snapshot_unref(old);
        return;
    }
    fh_http_opts ho;
    http_opts(s->cfg, L->nworkers, &ho);
    fh_http_apply(L->http, &ho);
    fh_snapshot_install(L->snaps, fh_snapshot_ref(s));
    reload_overlays(L, old, s);
    fh_snapshot_unref(s);
    fh_snapshot_unref(old);
    status_line(L->reg, "reloaded; ", status, sizeof(status));
    fh_info("%s", status);
    fh_notify_ready(status);
}

int fh_serve(const fh_serve_opts *o)
{
    uint64_t t_start = fh_now_ns();
    /* Signals go to this thread only: block them before threads start. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGHUP);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* Each proxied request holds two sockets; take what we are allowed. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    fh_diag diag = {0};
    fh_snapshot *snap = fh_snapshot_load(o->config_path, getenv("RESON_FEATURES"), &diag);
    if (!snap) {
        for (size_t i = 0; i < diag.count; i++)
            fh_error("%s", diag.items[i]);
        fh_error("not starting: fix the configuration (check it with `fusion-host check -c %s`)",
                 o->config_path);
        fh_diag_clear(&diag);
        return 1;
    }
    const fh_config *cfg = snap->cfg;
    int rc = 1;
    fh_snapshot_holder snaps;
    fh_snapshot_holder_init(&snaps);
    fh_snapshot_install(&snaps, snap);

    fh_metrics *metrics = fh_metrics_new((size_t)cfg->metrics.max_series_per_metric);
    metric_sink_target = metrics;
    fh_host_api_set_metric_sink(metric_sink);

    char *cache = NULL;
    fh_registry *reg = NULL;
    fh_http *http = NULL;
    fh_workers *workers = NULL;
    fh_pipeline pipeline;
    /* Plugins loaded later get their inputs from the snapshot they were
     * configured with; keep it alive for as long as the registry. */
    fh_snapshot *inputs_snap = fh_snapshot_ref(snap);
    fh_inputs_provider inputs = {.cfg = cfg, .flags = snap->flags};
    fp_table fps = {0};
    char err[512];

    if (asprintf(&cache, "%s/plugin-cache", cfg->state_dir) < 0 ||
        fh_mkdir_p(cache, 0755, 0700) != 0) {
        fh_error("cannot create %s/plugin-cache: %s; create state_dir or fix its permissions",
                 cfg->state_dir, strerror(errno));
        goto out;
    }
    clear_cache(cache);
    fh_registry_opts ro = {.loader = {.cache_dir = cache, .daemon_uid = geteuid()},
                           .host_api = fh_host_api(),
                           .inputs_for = fh_inputs_for,
                           .inputs_ud = &inputs,
                           .hook_deadline_ms = cfg->hooks.deadline_ms};
    reg = fh_registry_new(&ro);
    if (!metrics || !reg) {
        fh_error("out of memory");
        goto out;
    }
    load_plugins(reg, cfg->plugins.dir);

    fh_pipeline_init(&pipeline, reg, &snaps, metrics, cfg->hooks.deadline_ms);
    unsigned nworkers = (unsigned)fh_config_workers(cfg);
    fh_http_opts ho;
    http_opts(cfg, nworkers, &ho);
    http = fh_http_listen(&ho, &pipeline, metrics, reg, err, sizeof(err));
    if (!http) {
        fh_error("%s", err);
        goto out;
    }
    fh_workers_opts wo = {.count = nworkers, .hook_deadline_ms = cfg->hooks.deadline_ms};
    upstream_opts(cfg, &wo.upstream);
    workers = fh_workers_start(&wo, &pipeline, http, err, sizeof(err));
    if (!workers) {
        fh_error("%s", err);
        goto out;
    }

    char host[256], status[600];
    listen_host(cfg->listen, host, sizeof(host));
    fh_http_set_state(http, FH_HTTP_SERVING);
    status_line(reg, "serving; ", status, sizeof(status));
    fh_info("listening on %s:%u with %u worker(s) (upstream %s); %s; ready in %.1f ms", host,
            fh_http_port(http), nworkers, cfg->upstream.base_url, status,
            (double)(fh_now_ns() - t_start) / 1e6);
    if (o->ready_file && write_ready_file(o->ready_file, host, fh_http_port(http)) != 0)
        fh_warn("cannot write %s: %s", o->ready_file, strerror(errno));
    fh_notify_ready(status);

    watchdog wd = {.interval = fh_notify_watchdog_interval_ms()};
    fh_workers_responsive(workers, UINT64_MAX); /* the first ping */
    wd.next_ping = fh_now_ms() + wd.interval;
    uint64_t next_reap = fh_now_ms() + 1000;
    fp_record_all(&fps, reg, &inputs);
    live L = {.fps = &fps,
              .snaps = &snaps,
              .reg = reg,
              .http = http,
              .workers = workers,
              .inputs = &inputs,
              .inputs_snap = &inputs_snap,
              .nworkers = nworkers,
              .config_path = o->config_path};
    for (;;) {
        struct timespec tick = {0, LOOP_TICK_MS * 1000000L};
        if (wd.interval && wd.interval < LOOP_TICK_MS)
            tick.tv_nsec = (long)wd.interval * 1000000L;
        int sig = sigtimedwait(&sigs, NULL, &tick);
        if (sig == SIGTERM || sig == SIGINT)
            break;
        if (sig == SIGHUP)
            reload(&L);
        watchdog_tick(&wd, workers);
        uint64_t now = fh_now_ms();
        if (now >= next_reap) {
            fh_registry_reap(reg);
            next_reap = now + 1000;
        }
    }

    fh_notify_stopping();
    fh_snapshot *last = fh_snapshot_get(&snaps); /* the reloaded drain_timeout_ms */
    int drain_ms = last->cfg->drain_timeout_ms;
    fh_snapshot_unref(last);
    fh_info("stopping: draining %zu request(s), up to %d ms", fh_pipeline_in_flight(&pipeline),
            drain_ms);
    fh_http_set_state(http, FH_HTTP_DRAINING);
    fh_workers_quiesce(workers);
    drain(&pipeline, &wd, workers, (uint64_t)drain_ms);
    if (fh_pipeline_in_flight(&pipeline) > 0) {
        fh_warn("drain timeout: cancelling %zu request(s)", fh_pipeline_in_flight(&pipeline));
        fh_workers_abort(workers);
        /* Until every answer is out, not just queued: stopping a worker's
         * daemon closes its connections whatever they still had to send. */
        drain(&pipeline, &wd, workers, 2000);
    }
    rc = 0;
out:
    if (!fh_workers_stop(workers)) {
        /* A worker still runs: what it uses stays allocated until exit. */
        fh_error("a worker did not stop; exiting without tearing down");
        return rc;
    }
    fh_http_close(http);
    fh_registry_free(reg, 1000);
    fh_inputs_provider_clear(&inputs);
    free(fps.items);
    fh_snapshot_unref(inputs_snap);
    fh_host_api_set_metric_sink(NULL);
    fh_metrics_free(metrics);
    fh_snapshot_holder_destroy(&snaps);
    free(cache);
    if (rc == 0)
        fh_info("stopped");
    return rc;
}
