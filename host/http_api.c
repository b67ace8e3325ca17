/*
 * http_api.c - see http_api.h.
 *
 * Each worker's daemon runs in libmicrohttpd's external-epoll mode: its epoll
 * descriptor is watched by the worker's loop, and the worker's HTTP turn
 * calls MHD_run() when that descriptor is ready, when the pipeline resumed a
 * connection, or when MHD's own timer (idle connections) is due.
 *
 * Accepting: the daemons have no listening socket of their own. Every worker
 * watches the shared one (EPOLLEXCLUSIVE: one wakes per connection), accepts,
 * and gives each connection to the worker with the fewest (its own daemon
 * directly, another's through that worker's inbox, MHD_add_connection() on
 * its runner). Left to the kernel, a burst of keep-alive connections may all
 * land on one worker and leave the others idle for their whole life;
 * measured, 8 wrk connections split 8/0 in one run of three, at 70% of the
 * throughput of an even split.
 *
 * Connection counts are atomics any worker reads to choose: `pending` counts
 * connections accepted for a daemon and not yet added to it (down again
 * once MHD_add_connection returns, whatever it returned), `live` those MHD
 * announced (its start and close notifications), so a connection MHD
 * refuses half-way is never uncounted twice.
 */
#include "http_api.h"

#include "apierror.h"
#include "config.h"
#include "log.h"
#include "util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define LISTEN_BACKLOG 4096
#define ACCEPT_BATCH   64 /* connections accepted per wake-up */

struct fh_http {
    int fd;
    int family;
    uint16_t port;
    fh_pipeline *p;
    fh_metrics *m;
    fh_registry *reg;
    size_t max_body;
    size_t max_header;
    unsigned max_connections;
    unsigned idle_timeout_s;
    atomic_int state;
    atomic_uint rotor; /* spreads ties */
    fh_http_worker *workers[FH_WORKERS_MAX];
    atomic_uint nworkers;
};

struct fh_http_worker {
    fh_http *h;
    fh_worker *w;
    fh_pipe *pipe;
    struct MHD_Daemon *d;
    fh_watch watch;            /* MHD's epoll descriptor */
    fh_watch listen;           /* the shared listening socket */
    bool listening;            /* `listen` is registered */
    bool quiesced;             /* never again */
    bool due;                  /* MHD has work: its descriptor is ready or a connection came */
    uint64_t deadline_ns;      /* MHD's timer; 0: none */
    atomic_uint pending, live; /* connections of this daemon (see the top) */
    atomic_bool stopped;       /* others no longer hand it connections */
};

/* A connection accepted by one worker for another. */
typedef struct handover {
    fh_http_worker *to;
    int fd;
    struct sockaddr_storage addr;
    socklen_t addrlen;
} handover;

static enum MHD_Result respond_text(struct MHD_Connection *c, unsigned status, const char *ctype,
                                    char *text, size_t len)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", ctype);
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static enum MHD_Result health(fh_http *h, struct MHD_Connection *c)
{
    int state = atomic_load(&h->state);
    fh_overlay_info *list = NULL;
    size_t n = fh_registry_list(h->reg, &list);
    size_t enabled = 0, quarantined = 0, failed = 0;
    for (size_t i = 0; i < n; i++) {
        enabled += list[i].state == FH_STATE_ENABLED;
        quarantined += list[i].state == FH_STATE_QUARANTINED;
        failed += list[i].state == FH_STATE_FAILED;
    }
    free(list);
    const char *status = state == FH_HTTP_STARTING   ? "starting"
                         : state == FH_HTTP_DRAINING ? "draining"
                         : quarantined               ? "degraded"
                                                     : "ok";
    char *text = NULL;
    int len = asprintf(&text,
                       "{\"status\":\"%s\",\"overlays\":{\"enabled\":%zu,\"quarantined\":%zu,"
                       "\"failed\":%zu},\"in_flight\":%zu,\"stuck_threads\":%u}",
                       status, enabled, quarantined, failed, fh_pipeline_in_flight(h->p),
                       fh_door_stuck_threads());
    if (len < 0)
        return MHD_NO;
    return respond_text(c, state == FH_HTTP_SERVING ? 200 : 503, "application/json", text,
                        (size_t)len);
}

static enum MHD_Result metrics(fh_http *h, struct MHD_Connection *c)
{
    fh_overlay_info *list = NULL;
    size_t n = fh_registry_list(h->reg, &list);
    for (size_t i = 0; i < n; i++)
        if (list[i].state != FH_STATE_FAILED)
            fh_metrics_overlay_state(h->m, list[i].name, fh_overlay_state_name(list[i].state));
    free(list);
    size_t len = 0;
    char *text = fh_metrics_render(h->m, &len);
    if (!text)
        return MHD_NO;
    return respond_text(c, 200, "text/plain; version=0.0.4", text, len);
}

static enum MHD_Result method_not_allowed(struct MHD_Connection *c, const char *allow)
{
    char msg[96];
    snprintf(msg, sizeof(msg), "method not allowed here; use %s", allow);
    return fh_http_error_allow(c, 405, "invalid_request_error", "method_not_allowed", msg, allow);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **ctx)
{
    fh_http_worker *hw = cls;
    fh_http *h = hw->h;
    (void)version;
    if (*ctx) {
        fh_txn *t = *ctx;
        if (*upload_size) {
            int over = fh_txn_feed(t, upload, *upload_size, h->max_body);
            *upload_size = 0;
            /* Far over the limit: answer now; MHD closes the connection. */
            return over == -2 ? fh_txn_reject_too_large(t) : MHD_YES;
        }
        return fh_txn_step(t);
    }
    bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    bool draining = atomic_load(&h->state) == FH_HTTP_DRAINING;
    if (strcmp(url, "/v1/chat/completions") == 0) {
        if (strcmp(method, "POST") != 0)
            return method_not_allowed(c, "POST");
        if (draining)
            return fh_http_error(c, 503, "server_error", "draining", "fusion-host is stopping");
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        unsigned long long announced = cl ? strtoull(cl, NULL, 10) : 0;
        if (announced > h->max_body)
            return fh_http_error(c, 413, "invalid_request_error", "request_too_large",
                                 "request body is larger than limits.max_body_bytes");
        fh_txn *t = fh_txn_new(hw->pipe, c, FH_TXN_CHAT);
        if (!t)
            return MHD_NO;
        if (cl)
            fh_txn_expect(t, (size_t)announced);
        *ctx = t;
        return MHD_YES;
    }
    if (strcmp(url, "/v1/models") == 0) {
        if (!get)
            return method_not_allowed(c, "GET");
        if (draining)
            return fh_http_error(c, 503, "server_error", "draining", "fusion-host is stopping");
        fh_txn *t = fh_txn_new(hw->pipe, c, FH_TXN_MODELS);
        if (!t)
            return MHD_NO;
        *ctx = t;
        return MHD_YES;
    }
    if (strcmp(url, "/health") == 0)
        return get ? health(h, c) : method_not_allowed(c, "GET");
    if (strcmp(url, "/metrics") == 0)
        return get ? metrics(h, c) : method_not_allowed(c, "GET");
    return fh_http_error(c, 404, "invalid_request_error", "not_found",
                         "no such endpoint; fusion-host serves POST /v1/chat/completions, "
                         "GET /v1/models, /health and /metrics");
}

static void on_completed(void *cls, struct MHD_Connection *c, void **ctx,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls, (void)c;
    if (*ctx)
        fh_txn_completed(*ctx, toe);
    *ctx = NULL;
}

static void on_mhd_error(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof(line), fmt, ap);
    size_t n = strlen(line);
    while (n && line[n - 1] == '\n')
        line[--n] = '\0';
    fh_debug("http: %s", line);
}

/* ---- accepting ------------------------------------------------------------------ */

static unsigned load_of(fh_http_worker *hw)
{
    return atomic_load_explicit(&hw->pending, memory_order_relaxed) +
           atomic_load_explicit(&hw->live, memory_order_relaxed);
}

/* All workers' connections, stopped ones included (theirs are still open). */
static unsigned total_conns(fh_http *h)
{
    unsigned n = atomic_load(&h->nworkers), total = 0;
    for (unsigned i = 0; i < n; i++)
        total += load_of(h->workers[i]);
    return total;
}

/* Runner of hw's worker: the connection joins hw's daemon (MHD closes it
 * when it refuses it). */
static void add_connection(fh_http_worker *hw, int fd, const struct sockaddr *addr, socklen_t len)
{
    if (MHD_add_connection(hw->d, fd, addr, len) == MHD_YES)
        hw->due = true;
    atomic_fetch_sub(&hw->pending, 1);
}

/* Runner of the target worker: a connection another worker accepted. */
static void take_handover(fh_worker *w, void *ud)
{
    (void)w;
    handover *ho = ud;
    add_connection(ho->to, ho->fd, (struct sockaddr *)&ho->addr, ho->addrlen);
    free(ho);
}

/* The worker with the fewest connections (ties spread round-robin). */
static fh_http_worker *least_loaded(fh_http *h)
{
    unsigned n = atomic_load(&h->nworkers);
    unsigned start = atomic_fetch_add_explicit(&h->rotor, 1, memory_order_relaxed);
    fh_http_worker *best = NULL;
    unsigned best_load = 0;
    for (unsigned i = 0; i < n; i++) {
        fh_http_worker *hw = h->workers[(start + i) % n];
        if (atomic_load(&hw->stopped))
            continue;
        unsigned c = load_of(hw);
        if (!best || c < best_load) {
            best = hw;
            best_load = c;
        }
    }
    return best;
}

static void on_listen_ready(fh_watch *watch, uint32_t events);

static void listen_on(fh_http_worker *hw, bool on)
{
    if (on == hw->listening || (on && hw->quiesced))
        return;
    if (on) {
        hw->listen.events = EPOLLIN | EPOLLEXCLUSIVE;
        if (fh_worker_watch(hw->w, &hw->listen) != 0)
            return;
    } else {
        fh_worker_unwatch(hw->w, &hw->listen);
    }
    hw->listening = on;
}

static void on_listen_ready(fh_watch *watch, uint32_t events)
{
    (void)events;
    fh_http_worker *hw = watch->ud;
    fh_http *h = hw->h;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        if (total_conns(h) >= h->max_connections) {
            /* Full: leave new clients in the backlog until one leaves
             * (http_turn listens again). */
            listen_on(hw, false);
            return;
        }
        handover ho;
        ho.addrlen = sizeof(ho.addr);
        ho.fd =
            accept4(h->fd, (struct sockaddr *)&ho.addr, &ho.addrlen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (ho.fd < 0) {
            if (errno == EMFILE || errno == ENFILE)
                fh_warn("http: cannot accept a connection: %s; raise LimitNOFILE= or lower "
                        "limits.max_connections",
                        strerror(errno));
            return; /* EAGAIN: another worker took it, or none left */
        }
        fh_http_worker *to = least_loaded(h);
        if (!to)
            to = hw;
        if (to != hw) {
            handover *copy = malloc(sizeof(*copy));
            if (copy) {
                *copy = ho;
                copy->to = to;
                atomic_fetch_add(&to->pending, 1);
                if (fh_worker_post(to->w, take_handover, copy) == 0)
                    continue;
                atomic_fetch_sub(&to->pending, 1);
                free(copy);
            }
        }
        atomic_fetch_add(&hw->pending, 1);
        add_connection(hw, ho.fd, (struct sockaddr *)&ho.addr, ho.addrlen);
    }
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_ctx,
                          enum MHD_ConnectionNotificationCode code)
{
    (void)c, (void)socket_ctx;
    fh_http_worker *hw = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        atomic_fetch_add(&hw->live, 1);
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        atomic_fetch_sub(&hw->live, 1);
    }
}

/* ---- the listening socket ------------------------------------------------------ */

/* "host:port" or "[v6]:port" to a socket address. */
static int parse_listen(const char *listen, struct sockaddr_storage *ss, socklen_t *sslen,
                        char *err, size_t errlen)
{
    char host[256];
    const char *colon = strrchr(listen, ':');
    if (!colon || colon == listen) {
        snprintf(err, errlen, "listen address '%s' is not host:port", listen);
        return -1;
    }
    size_t hl = (size_t)(colon - listen);
    if (listen[0] == '[' && hl >= 2 && listen[hl - 1] == ']') {
        listen++;
        hl -= 2;
    }
    if (hl >= sizeof(host)) {
        snprintf(err, errlen, "listen host too long");
        return -1;
    }
    memcpy(host, listen, hl);
    host[hl] = '\0';
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, colon + 1, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "listen address '%s': %s", listen, gai_strerror(rc));
        return -1;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *sslen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

fh_http *fh_http_listen(const fh_http_opts *o, fh_pipeline *p, fh_metrics *m, fh_registry *reg,
                        char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    socklen_t sslen = 0;
    if (parse_listen(o->listen, &ss, &sslen, err, errlen) != 0)
        return NULL;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        (ss.ss_family == AF_INET6 &&
         setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0) ||
        bind(fd, (struct sockaddr *)&ss, sslen) != 0 || listen(fd, LISTEN_BACKLOG) != 0) {
        snprintf(err, errlen, "cannot listen on %s: %s (in use, or not an address of this host?)",
                 o->listen, strerror(errno));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    struct sockaddr_storage bound;
    socklen_t blen = sizeof(bound);
    getsockname(fd, (struct sockaddr *)&bound, &blen);
    fh_http *h = calloc(1, sizeof(*h));
    if (!h) {
        close(fd);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->fd = fd;
    h->family = ss.ss_family;
    h->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                : ((struct sockaddr_in *)&bound)->sin_port);
    h->p = p;
    h->m = m;
    h->reg = reg;
    h->max_body = o->max_body_bytes;
    h->max_header = o->max_header_bytes ? o->max_header_bytes : 8192;
    h->max_connections = o->max_connections ? o->max_connections : 10000u;
    h->idle_timeout_s = o->idle_timeout_s ? o->idle_timeout_s : 30u;
    atomic_init(&h->state, FH_HTTP_STARTING);
    return h;
}

void fh_http_close(fh_http *h)
{
    if (!h)
        return;
    for (unsigned i = 0; i < atomic_load(&h->nworkers); i++)
        free(h->workers[i]);
    close(h->fd);
    free(h);
}

void fh_http_set_state(fh_http *h, fh_http_state s)
{
    atomic_store(&h->state, (int)s);
}

uint16_t fh_http_port(const fh_http *h)
{
    return h->port;
}

/* ---- a worker's daemon ------------------------------------------------------------ */

static void on_mhd_ready(fh_watch *watch, uint32_t events)
{
    (void)events;
    ((fh_http_worker *)watch->ud)->due = true;
}

static int http_turn(fh_worker *w, void *ud)
{
    (void)w;
    fh_http_worker *hw = ud;
    bool kicked = fh_pipe_take_kick(hw->pipe);
    uint64_t now = fh_now_ns();
    if (hw->due || kicked || (hw->deadline_ns && now >= hw->deadline_ns)) {
        hw->due = false;
        MHD_run(hw->d);
    }
    if (!hw->listening && total_conns(hw->h) < hw->h->max_connections)
        listen_on(hw, true); /* room again after being full */
    if (fh_pipe_busy(hw->pipe))
        return 0; /* MHD queued jobs: run them at once */
    MHD_UNSIGNED_LONG_LONG ms = 0;
    if (MHD_get_timeout(hw->d, &ms) != MHD_YES) {
        hw->deadline_ns = 0;
        return -1;
    }
    hw->deadline_ns = fh_now_ns() + (uint64_t)ms * 1000000u;
    return ms > 60000 ? 60000 : (int)ms;
}

fh_http_worker *fh_http_worker_new(fh_http *h, fh_worker *w, fh_pipe *pipe, char *err,
                                   size_t errlen)
{
    fh_http_worker *hw = calloc(1, sizeof(*hw));
    if (!hw) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    hw->h = h;
    hw->w = w;
    hw->pipe = pipe;
    atomic_init(&hw->pending, 0);
    atomic_init(&hw->live, 0);
    atomic_init(&hw->stopped, false);
    unsigned flags =
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG | MHD_USE_NO_LISTEN_SOCKET;
    if (h->family == AF_INET6)
        flags |= MHD_USE_IPv6;
    hw->d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, hw, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_error, hw,
        /* The limit is ours (on_listen_ready); MHD's only guards its own. */
        MHD_OPTION_CONNECTION_LIMIT, h->max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
        h->idle_timeout_s,
        /* Bounds the request head, and is what every connection holds:
         * 8 KiB by default keeps 9,000 waiting requests under 300 MB (MHD
         * also clears it per request: bigger costs time on every one). */
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, h->max_header, MHD_OPTION_NOTIFY_COMPLETED,
        on_completed, hw, MHD_OPTION_NOTIFY_CONNECTION, on_connection, hw, MHD_OPTION_END);
    const union MHD_DaemonInfo *info =
        hw->d ? MHD_get_daemon_info(hw->d, MHD_DAEMON_INFO_EPOLL_FD) : NULL;
    if (!info) {
        snprintf(err, errlen, "cannot start the HTTP daemon of worker %u: %s", fh_worker_index(w),
                 strerror(errno));
        if (hw->d)
            MHD_stop_daemon(hw->d);
        free(hw);
        return NULL;
    }
    hw->watch.fd = info->epoll_fd;
    hw->watch.events = EPOLLIN;
    hw->watch.fn = on_mhd_ready;
    hw->watch.ud = hw;
    hw->listen.fd = h->fd;
    hw->listen.fn = on_listen_ready;
    hw->listen.ud = hw;
    hw->due = true;
    bool watched = fh_worker_watch(w, &hw->watch) == 0;
    if (!watched || fh_worker_add_turn(w, http_turn, hw) != 0) {
        snprintf(err, errlen, "cannot register worker %u's HTTP daemon: %s", fh_worker_index(w),
                 watched ? "too many turn callbacks" : strerror(errno));
        if (watched)
            fh_worker_unwatch(w, &hw->watch);
        MHD_stop_daemon(hw->d);
        free(hw);
        return NULL;
    }
    listen_on(hw, true);
    unsigned i = atomic_load(&h->nworkers);
    if (i < FH_WORKERS_MAX) {
        h->workers[i] = hw;
        atomic_store(&h->nworkers, i + 1);
    }
    return hw;
}

void fh_http_worker_quiesce(fh_http_worker *hw)
{
    listen_on(hw, false);
    hw->quiesced = true;
    atomic_store(&hw->stopped, true); /* no more hand-overs to it either */
}

void fh_http_worker_free(fh_http_worker *hw)
{
    if (!hw)
        return;
    fh_http_worker_quiesce(hw);
    fh_worker_unwatch(hw->w, &hw->watch);
    size_t suspended = fh_pipe_suspended(hw->pipe);
    if (suspended) {
        /* MHD must not stop with suspended connections; leaving it running
         * (and its memory) at exit beats aborting in it. */
        fh_error("worker %u: %zu connection(s) still suspended at exit; not stopping its HTTP "
                 "daemon",
                 fh_worker_index(hw->w), suspended);
        return;
    }
    /* Other workers skip a stopped daemon (least_loaded); the list is freed
     * by fh_http_close once every worker stopped. */
    atomic_store(&hw->stopped, true);
    MHD_stop_daemon(hw->d);
}
