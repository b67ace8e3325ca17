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
#include "gates.h"
#include "hostapi.h"
#include "http_api.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "pipeline.h"
#include "plugindir.h"
#include "registry.h"
#include "reload.h"
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

/* Loads every file of dir; `files` (the caller frees it) lists them. */
static size_t load_plugins(fh_registry *reg, const char *dir, fh_plugin_files *files_out)
{
    fh_plugin_files files = {0};
    *files_out = files;
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
    *files_out = files;
    return loaded;
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

typedef struct watchdog_ctx {
    watchdog *wd;
    fh_workers *ws;
} watchdog_ctx;

/* The reload's tick between plugin loads. */
static void watchdog_tick_cb(void *ud)
{
    watchdog_ctx *c = ud;
    watchdog_tick(c->wd, c->ws);
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
    memset(&pipeline, 0, sizeof(pipeline)); /* gates: NULL until made */
    /* Plugins loaded later get their inputs from the snapshot they were
     * configured with; keep it alive for as long as the registry. */
    fh_snapshot *inputs_snap = fh_snapshot_ref(snap);
    fh_inputs_provider inputs = {.cfg = cfg, .flags = snap->flags};
    fh_plugin_files tried = {0};
    fh_reloader *reloader = NULL;
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
    load_plugins(reg, cfg->plugins.dir, &tried);

    fh_pipeline_init(&pipeline, reg, &snaps, metrics, cfg->hooks.deadline_ms);
    pipeline.gates = fh_gates_new(metrics);
    if (!pipeline.gates)
        fh_warn("out of memory: serving without breakers and budget gates");
    unsigned nworkers = (unsigned)fh_config_workers(cfg);
    fh_http_opts ho;
    fh_http_opts_of(cfg, nworkers, &ho);
    http = fh_http_listen(&ho, &pipeline, metrics, reg, err, sizeof(err));
    if (!http) {
        fh_error("%s", err);
        goto out;
    }
    fh_workers_opts wo = {.count = nworkers, .hook_deadline_ms = cfg->hooks.deadline_ms};
    fh_upstream_opts_of(cfg, &wo.upstream);
    workers = fh_workers_start(&wo, &pipeline, http, err, sizeof(err));
    if (!workers) {
        fh_error("%s", err);
        goto out;
    }

    char host[256], status[600];
    listen_host(cfg->listen, host, sizeof(host));
    fh_http_set_state(http, FH_HTTP_SERVING);
    fh_registry_status_line(reg, "serving; ", status, sizeof(status));
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
    watchdog_ctx wctx = {&wd, workers};
    fh_reload_env re = {.config_path = o->config_path,
                        .snaps = &snaps,
                        .reg = reg,
                        .http = http,
                        .nworkers = nworkers,
                        .inputs = &inputs,
                        .inputs_snap = &inputs_snap,
                        .tick = watchdog_tick_cb,
                        .tick_ud = &wctx};
    reloader = fh_reloader_new(&re, &tried);
    if (!reloader)
        fh_warn("out of memory: SIGHUP will not reload");
    for (;;) {
        struct timespec tick = {0, LOOP_TICK_MS * 1000000L};
        if (wd.interval && wd.interval < LOOP_TICK_MS)
            tick.tv_nsec = (long)wd.interval * 1000000L;
        int sig = sigtimedwait(&sigs, NULL, &tick);
        if (sig == SIGTERM || sig == SIGINT)
            break;
        if (sig == SIGHUP && reloader)
            fh_reloader_reload(reloader);
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
    fh_gates_free(pipeline.gates);
    fh_registry_free(reg, 1000);
    fh_inputs_provider_clear(&inputs);
    fh_reloader_free(reloader);
    fh_plugin_files_free(&tried); /* when the reloader never took it */
    fh_snapshot_unref(inputs_snap);
    fh_host_api_set_metric_sink(NULL);
    fh_metrics_free(metrics);
    fh_snapshot_holder_destroy(&snaps);
    free(cache);
    if (rc == 0)
        fh_info("stopped");
    return rc;
}
