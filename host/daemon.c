/*
 * daemon.c - see daemon.h.
 *
 * Threads: the main thread owns this file's state and runs the loop below;
 * it is the only thread that receives signals (they are blocked before any
 * other thread starts and read from a signalfd). The loop also runs the
 * operator's commands (admin.h hands them over), the plugin folder's
 * changes (plugsync.h) and the operator state's persistence (opstate.h):
 * one thread loads plugins and writes state, so they never race. The
 * workers, the monitor (workers.h) and the admin thread are started here
 * and stopped on the way out.
 *
 * The watchdog is pinged only while every worker's loop echoes the previous
 * ping (its inbox runs) and the monitor ticks: a wedged loop stops the
 * pings, and systemd restarts us. The proof needs no public connection, so
 * clients alone can never starve it.
 */
#include "daemon.h"

#include "admin.h"
#include "config.h"
#include "control.h"
#include "crash.h"
#include "directives.h"
#include "gates.h"
#include "hostapi.h"
#include "http_api.h"
#include "log.h"
#include "metrics.h"
#include "notify.h"
#include "opstate.h"
#include "pipeline.h"
#include "plugsync.h"
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
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define LOOP_TICK_MS    100
#define WATCH_SETTLE_MS 150 /* a burst of folder events makes one scan */

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
    if (!w->interval || !ws || now < w->next_ping)
        return; /* (no workers yet: start-up loads plugins before they run) */
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

/* A previous run died inside an overlay: quarantine it before anything
 * loads, so the restart serves without it (crash.h). */
static void quarantine_crashed(const char *state_dir, fh_opstate *ops)
{
    fh_crash_record *recs = NULL;
    size_t n = fh_crash_collect(state_dir, &recs);
    for (size_t i = 0; i < n && ops; i++) {
        const fh_crash_record *r = &recs[i];
        char when[64] = "";
        time_t t = (time_t)r->when;
        struct tm tm;
        if (gmtime_r(&t, &tm))
            strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
        char why[512];
        snprintf(why, sizeof(why),
                 "crashed the daemon with %s in %s at %s (version %s, sha256 %.12s); fix it, "
                 "then `fusion-host enable %s`",
                 fh_crash_signal_name(r->signo), r->hook, when, r->version[0] ? r->version : "?",
                 r->sha256[0] ? r->sha256 : "?", r->who);
        /* A crash while loading would repeat at every start: that very
         * file (by content) is not mapped again. A crash in a request's
         * hook quarantines the overlay: loaded, never routed to. */
        bool loading = !strcmp(r->hook, "dlopen()") || !strcmp(r->hook, "entry()") ||
                       !strcmp(r->hook, "init()");
        fh_error("%s %s %s: it %s", loading ? "plugin file" : "overlay", r->who,
                 loading ? "refused until enabled" : "quarantined", why);
        if (loading)
            fh_opstate_refuse_file(ops, r->sha256, r->who, why);
        else
            fh_opstate_set_overlay(ops, r->who, FH_STATE_QUARANTINED, why);
    }
    /* Only once the quarantine is on disk may the journal forget it. */
    if (n && ops && fh_opstate_save(ops) == 0)
        fh_crash_clear(state_dir);
    free(recs);
}

/* The main loop's file descriptors. */
enum { EV_SIGNAL = 1, EV_ADMIN, EV_PLUGINS };

/* (Re)registers fd under tag. A closed descriptor left epoll by itself;
 * a new one may carry the same number, so the caller says when it is new. */
static void watch_fd(int ep, int fd, int tag, int *current, bool renewed)
{
    if (*current == fd && !renewed)
        return;
    if (*current >= 0 && *current != fd)
        epoll_ctl(ep, EPOLL_CTL_DEL, *current, NULL);
    *current = fd;
    if (fd >= 0) {
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)tag};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) != 0 && errno == EEXIST)
            epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
    }
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
    fh_opstate *ops = NULL;
    fh_plugsync *sync = NULL;
    fh_admin *admin = NULL;
    int ep = -1, sfd = -1;
    fh_pipeline pipeline;
    memset(&pipeline, 0, sizeof(pipeline)); /* gates: NULL until made */
    /* Plugins loaded later get their inputs from the snapshot they were
     * configured with; keep it alive for as long as the registry. */
    fh_snapshot *inputs_snap = fh_snapshot_ref(snap);
    fh_inputs_provider inputs = {.cfg = cfg, .flags = snap->flags};
    fh_reloader *reloader = NULL;
    char err[512];
    watchdog wd = {.interval = fh_notify_watchdog_interval_ms()};
    watchdog_ctx wctx = {&wd, NULL};

    if (asprintf(&cache, "%s/plugin-cache", cfg->state_dir) < 0 ||
        fh_mkdir_p(cache, 0755, 0700) != 0) {
        fh_error("cannot create %s/plugin-cache: %s; create state_dir or fix its permissions",
                 cfg->state_dir, strerror(errno));
        goto out;
    }
    clear_cache(cache);
    /* Before the plugins load: a socket in the way or a token file others
     * can read stops the start at once. Commands wait for the main loop. */
    admin = fh_admin_open(cfg->admin.listen, cfg->admin.token_file, err, sizeof(err));
    if (!admin) {
        fh_error("not starting: %s", err);
        goto out;
    }
    ops = fh_opstate_open(cfg->state_dir);
    quarantine_crashed(cfg->state_dir, ops);
    if (fh_crash_arm(cfg->state_dir, err, sizeof(err)) != 0)
        fh_warn("%s", err);
    fh_crash_thread_init(); /* the main thread loads plugins */
    fh_registry_opts ro = {.loader = {.cache_dir = cache,
                                      .daemon_uid = geteuid(),
                                      .refuse_hash = ops ? fh_opstate_refused_hash : NULL,
                                      .refuse_ud = ops},
                           .host_api = fh_host_api(),
                           .inputs_for = fh_inputs_for,
                           .inputs_ud = &inputs,
                           .hook_deadline_ms = cfg->hooks.deadline_ms,
                           .state_for = ops ? fh_opstate_overlay : NULL,
                           .state_ud = ops};
    reg = fh_registry_new(&ro);
    sync = reg ? fh_plugsync_new(reg, cfg->plugins.dir, cfg->plugins.watch, watchdog_tick_cb, &wctx)
               : NULL;
    if (!metrics || !reg || !sync || !ops) {
        fh_error("out of memory");
        goto out;
    }
    fh_plugsync_scan(sync, true);

    fh_pipeline_init(&pipeline, reg, &snaps, metrics, cfg->hooks.deadline_ms);
    pipeline.gates = fh_gates_new(metrics);
    if (!pipeline.gates)
        fh_warn("out of memory: serving without breakers and budget gates");
    else
        fh_opstate_restore_gates(ops, pipeline.gates, fh_now_ms());
    fh_opstate_sync(ops, reg, pipeline.gates);
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
    wctx.ws = workers;
    ep = epoll_create1(EPOLL_CLOEXEC);
    sfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
    if (ep < 0 || sfd < 0) {
        fh_error("cannot set up the main loop: %s", strerror(errno));
        goto out;
    }

    char host[256], status[600];
    listen_host(cfg->listen, host, sizeof(host));
    fh_http_set_state(http, FH_HTTP_SERVING);
    fh_registry_status_line(reg, "serving; ", status, sizeof(status));
    fh_info("listening on %s:%u with %u worker(s) (upstream %s, admin %s); %s; ready in %.1f ms",
            host, fh_http_port(http), nworkers, cfg->upstream.base_url, fh_admin_address(admin),
            status, (double)(fh_now_ns() - t_start) / 1e6);
    if (o->ready_file && write_ready_file(o->ready_file, host, fh_http_port(http)) != 0)
        fh_warn("cannot write %s: %s", o->ready_file, strerror(errno));
    fh_notify_ready(status);

    fh_workers_responsive(workers, UINT64_MAX); /* the first ping */
    wd.next_ping = fh_now_ms() + wd.interval;
    uint64_t next_reap = fh_now_ms() + 1000;
    fh_reload_env re = {.config_path = o->config_path,
                        .snaps = &snaps,
                        .reg = reg,
                        .http = http,
                        .nworkers = nworkers,
                        .inputs = &inputs,
                        .inputs_snap = &inputs_snap,
                        .sync = sync,
                        .tick = watchdog_tick_cb,
                        .tick_ud = &wctx};
    reloader = fh_reloader_new(&re);
    if (!reloader)
        fh_warn("out of memory: SIGHUP will not reload");
    fh_control ctl = {.reg = reg,
                      .gates = pipeline.gates,
                      .ops = ops,
                      .sync = sync,
                      .reloader = reloader,
                      .snaps = &snaps,
                      .pipeline = &pipeline,
                      .http = http,
                      .config_path = o->config_path,
                      .admin_address = fh_admin_address(admin),
                      .workers = nworkers,
                      .started_ms = fh_now_ms() - (fh_now_ns() - t_start) / 1000000};
    int fd_sig = -1, fd_admin = -1, fd_plugins = -1;
    watch_fd(ep, sfd, EV_SIGNAL, &fd_sig, false);
    watch_fd(ep, fh_admin_fd(admin), EV_ADMIN, &fd_admin, false);
    unsigned watch_id = fh_plugsync_watch_id(sync) - 1; /* registered below */
    uint64_t scan_at = 0; /* a folder change settles until then; 0: none */
    bool stop = false;
    while (!stop) {
        unsigned id = fh_plugsync_watch_id(sync);
        watch_fd(ep, fh_plugsync_fd(sync), EV_PLUGINS, &fd_plugins, id != watch_id);
        watch_id = id;
        int timeout = LOOP_TICK_MS;
        if (wd.interval && wd.interval < LOOP_TICK_MS)
            timeout = (int)wd.interval;
        uint64_t now = fh_now_ms();
        if (scan_at && scan_at <= now + (uint64_t)timeout)
            timeout = scan_at > now ? (int)(scan_at - now) : 0;
        struct epoll_event evs[4];
        int n = epoll_wait(ep, evs, 4, timeout);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u32 == EV_SIGNAL) {
                struct signalfd_siginfo si;
                while (read(sfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
                    if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
                        stop = true;
                    else if (si.ssi_signo == SIGHUP && reloader)
                        fh_reloader_reload(reloader, NULL, 0);
                }
            } else if (evs[i].data.u32 == EV_ADMIN) {
                fh_admin_run(admin, fh_control_handle, &ctl);
            } else if (evs[i].data.u32 == EV_PLUGINS) {
                /* Armed by the first change, not pushed back by later ones:
                 * a folder that never goes quiet is still scanned. */
                if (fh_plugsync_read_events(sync) && !scan_at)
                    scan_at = fh_now_ms() + WATCH_SETTLE_MS;
            }
        }
        now = fh_now_ms();
        if (scan_at && now >= scan_at) {
            scan_at = 0;
            if (fh_plugsync_scan(sync, false) && reloader)
                fh_reloader_note_loads(reloader);
        }
        watchdog_tick(&wd, workers);
        if (now >= next_reap) {
            fh_registry_reap(reg);
            next_reap = now + 1000;
        }
        /* Quarantines by workers and gate trips reach the disk here. */
        fh_opstate_sync(ops, reg, pipeline.gates);
    }

    fh_notify_stopping();
    fh_admin_close(admin); /* no operator commands while draining */
    admin = NULL;
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
    fh_opstate_sync(ops, reg, pipeline.gates);
    rc = 0;
out:
    fh_admin_close(admin);
    if (!fh_workers_stop(workers)) {
        /* A worker still runs: what it uses stays allocated until exit. */
        fh_error("a worker did not stop; exiting without tearing down");
        return rc;
    }
    if (ep >= 0)
        close(ep);
    if (sfd >= 0)
        close(sfd);
    fh_http_close(http);
    fh_gates_free(pipeline.gates);
    fh_plugsync_free(sync);
    fh_registry_free(reg, 1000);
    fh_crash_disarm();
    fh_opstate_free(ops);
    fh_inputs_provider_clear(&inputs);
    fh_reloader_free(reloader);
    fh_snapshot_unref(inputs_snap);
    fh_host_api_set_metric_sink(NULL);
    fh_metrics_free(metrics);
    fh_snapshot_holder_destroy(&snaps);
    free(cache);
    if (rc == 0)
        fh_info("stopped");
    return rc;
}
