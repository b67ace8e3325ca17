/*
 * http_api.c - see http_api.h.
 *
 * Each worker owns its connections (httpd.h), run by the worker's loop; the
 * worker's HTTP turn runs the connections the pipeline resumed and times
 * out slow ones.
 *
 * Accepting: every worker watches the shared listening socket
 * (EPOLLEXCLUSIVE: one wakes per connection), accepts, and gives each
 * connection to the worker with the fewest (its own directly, another's
 * through that worker's inbox). Left to the kernel, a burst of keep-alive connections may all
 * land on one worker and leave the others idle for their whole life;
 * measured, 8 wrk connections split 8/0 in one run of three, at 70% of the
 * throughput of an even split.
 *
 * Connection counts are atomics any worker reads to choose: `pending` counts
 * connections accepted for a worker and not yet added to it, `live` those
 * it holds (down again in the close callback). A connection is counted
 * against its client address (limits.max_connections_per_ip) from accept
 * to close.
 */
#include "http_api.h"

#include "apierror.h"
#include "auth.h"
#include "config.h"
#include "gates.h"
#include "iplimit.h"
#include "log.h"
#include "util.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <jansson.h>
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
    atomic_size_t max_body;
    atomic_uint max_connections, max_per_ip;
    fh_iplimit *per_ip;
    _Atomic(uint64_t) limits_gen; /* bumped when the limits below change */
    pthread_mutex_t limits_mu;    /* guards `limits` */
    fh_hsrv_limits limits;
    atomic_int state;
    atomic_uint rotor; /* spreads ties */
    fh_http_worker *workers[FH_WORKERS_MAX];
    atomic_uint nworkers;
};

struct fh_http_worker {
    fh_http *h;
    fh_worker *w;
    fh_pipe *pipe;
    fh_hsrv *srv;
    uint64_t limits_gen;       /* of the limits srv has */
    fh_watch listen;           /* the shared listening socket */
    bool listening;            /* `listen` is registered */
    bool quiesced;             /* never again */
    atomic_uint pending, live; /* connections of this worker (see the top) */
    atomic_bool stopped;       /* others no longer hand it connections */
};

/* A connection accepted by one worker for another. */
typedef struct handover {
    fh_http_worker *to;
    int fd;
    struct sockaddr_storage addr;
    socklen_t addrlen;
} handover;

/* What a connection is counted as, from accept to close. */
typedef struct conn_tag {
    fh_http_worker *hw;
    struct sockaddr_storage addr;
} conn_tag;

static int respond_text(fh_hconn *c, unsigned status, const char *ctype, char *text, size_t len)
{
    fh_hresp *r = fh_hresp_buffer(text, len);
    if (!r || fh_hresp_header(r, "Content-Type", ctype) != 0) {
        fh_hresp_free(r);
        return -1;
    }
    return fh_hconn_respond(c, status, r);
}

/* The /health document: ok, or degraded with its reasons (SPEC 4 and 7):
 * the upstream refusing connections, a quarantined overlay, an open
 * breaker, a tripped gate, a runbook threshold crossed; every overlay's
 * breaker and gate. */
json_t *fh_http_health_json(fh_http *h, unsigned *status_code)
{
    int state = atomic_load(&h->state);
    json_t *reasons = json_array();
    if (fh_pipeline_upstream_down(h->p))
        json_array_append_new(reasons, json_string("upstream_unreachable"));
    fh_overlay_info *list = NULL;
    size_t n = fh_registry_list(h->reg, &list);
    size_t enabled = 0, quarantined = 0, failed = 0;
    for (size_t i = 0; i < n; i++) {
        enabled += list[i].state == FH_STATE_ENABLED;
        failed += list[i].state == FH_STATE_FAILED;
        if (list[i].state == FH_STATE_QUARANTINED) {
            char r[96];
            snprintf(r, sizeof(r), "overlay_quarantined:%s", list[i].name);
            json_array_append_new(reasons, json_string(r));
            quarantined++;
        }
    }
    free(list);
    char *gate_reasons = NULL;
    char *gates = h->p->gates ? fh_gates_json(h->p->gates, fh_now_ms(), &gate_reasons) : NULL;
    json_t *more = gate_reasons ? json_loads(gate_reasons, 0, NULL) : NULL;
    if (more)
        json_array_extend(reasons, more);
    json_decref(more);
    free(gate_reasons);
    json_t *gj = gates ? json_loads(gates, 0, NULL) : NULL;
    free(gates);
    bool degraded = json_array_size(reasons) > 0;
    const char *status = state == FH_HTTP_STARTING   ? "starting"
                         : state == FH_HTTP_DRAINING ? "draining"
                         : degraded                  ? "degraded"
                                                     : "ok";
    json_t *o = json_pack(
        "{s:s, s:{s:I, s:I, s:I}, s:I, s:I, s:o, s:o}", "status", status, "overlays", "enabled",
        (json_int_t)enabled, "quarantined", (json_int_t)quarantined, "failed", (json_int_t)failed,
        "in_flight", (json_int_t)fh_pipeline_in_flight(h->p), "stuck_threads",
        (json_int_t)fh_door_stuck_threads(), "reasons", reasons, "gates", gj ? gj : json_object());
    if (o && state == FH_HTTP_SERVING && degraded)
        json_object_set(o, "reason", json_array_get(reasons, 0)); /* the first, for scripts */
    *status_code = state == FH_HTTP_SERVING ? 200 : 503;
    return o;
}

static int health(fh_http_worker *hw, fh_hconn *c)
{
    /* So an unreachable upstream turns ok again without traffic. */
    if (fh_pipeline_upstream_down(hw->h->p))
        fh_pipe_probe_upstream(hw->pipe);
    unsigned code = 503;
    json_t *o = fh_http_health_json(hw->h, &code);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text)
        return -1;
    return respond_text(c, code, "application/json", text, strlen(text));
}

/* What /health knows, as gauges an alert can hold on to (a counter of
 * transitions cannot say "still open"): degraded or not, each overlay's
 * breaker state and whether its budget gate is tripped. Labels are
 * `overlay` and `result` only (SPEC 8); one series per overlay at most. */
static char *state_gauges(fh_http *h)
{
    unsigned code;
    json_t *health = fh_http_health_json(h, &code);
    if (!health)
        return NULL;
    size_t cap = 1024, n = 0;
    char *out = malloc(cap);
    if (!out) {
        json_decref(health);
        return NULL;
    }
    out[0] = '\0';
#define EMIT(...)                                                                                  \
    do {                                                                                           \
        int k_ = snprintf(out + n, cap - n, __VA_ARGS__);                                          \
        if (k_ < 0)                                                                                \
            break;                                                                                 \
        if ((size_t)k_ >= cap - n) {                                                               \
            char *g_ = realloc(out, cap * 2 + (size_t)k_);                                         \
            if (!g_)                                                                               \
                break;                                                                             \
            out = g_;                                                                              \
            cap = cap * 2 + (size_t)k_;                                                            \
            k_ = snprintf(out + n, cap - n, __VA_ARGS__);                                          \
        }                                                                                          \
        n += (size_t)k_;                                                                           \
    } while (0)
    EMIT("# HELP fusion_health_degraded 1 while /health says degraded (its reasons say why).\n"
         "# TYPE fusion_health_degraded gauge\nfusion_health_degraded %d\n",
         strcmp(json_string_value(json_object_get(health, "status")) ?: "", "degraded") == 0);
    json_t *gates = json_object_get(health, "gates");
    static const char *const states[] = {"closed", "open", "half_open"};
    EMIT("# HELP fusion_circuit_breaker_state The overlay's circuit breaker: 1 for its state "
         "(result), 0 for the others.\n# TYPE fusion_circuit_breaker_state gauge\n");
    const char *name;
    json_t *g;
    json_object_foreach(gates, name, g)
    {
        char lv[64];
        fh_metrics_sanitize(name, lv);
        const char *st = json_string_value(json_object_get(json_object_get(g, "breaker"), "state"));
        for (size_t i = 0; i < 3; i++)
            EMIT("fusion_circuit_breaker_state{overlay=\"%s\",result=\"%s\"} %d\n", lv, states[i],
                 st && strcmp(st, states[i]) == 0);
    }
    EMIT("# HELP fusion_budget_gate_tripped 1 while the overlay's budget gate is tripped (until "
         "`fusion-host reset`).\n# TYPE fusion_budget_gate_tripped gauge\n");
    json_object_foreach(gates, name, g)
    {
        char lv[64];
        fh_metrics_sanitize(name, lv);
        EMIT("fusion_budget_gate_tripped{overlay=\"%s\"} %d\n", lv,
             json_is_true(json_object_get(json_object_get(g, "gate"), "tripped")));
    }
#undef EMIT
    json_decref(health);
    return out;
}

static int metrics(fh_http *h, fh_hconn *c)
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
        return -1;
    char *state = state_gauges(h);
    if (state) {
        size_t sl = strlen(state);
        char *all = realloc(text, len + sl + 1);
        if (all) {
            memcpy(all + len, state, sl + 1);
            text = all;
            len += sl;
        }
        free(state);
    }
    return respond_text(c, 200, "text/plain; version=0.0.4", text, len);
}

static int method_not_allowed(fh_hconn *c, const char *allow)
{
    char msg[96];
    snprintf(msg, sizeof(msg), "method not allowed here; use %s", allow);
    return fh_http_error_allow(c, 405, "invalid_request_error", "method_not_allowed", msg, allow);
}

/* Whether a path has a "." or ".." segment, written plainly or
 * percent-encoded (%2e, any case): curl and upstreams would resolve it. */
static bool dot_segment(const char *url)
{
    size_t end = strcspn(url, "?");
    const char *p = url;
    while (p < url + end) {
        const char *seg = p;
        size_t n = strcspn(seg, "/?");
        if (n > (size_t)(url + end - seg))
            n = (size_t)(url + end - seg);
        size_t dots = 0, i = 0;
        bool only_dots = n > 0;
        while (i < n && only_dots) {
            if (seg[i] == '.') {
                dots++, i++;
            } else if (seg[i] == '%' && i + 2 < n + 1 && seg[i + 1] == '2' &&
                       (seg[i + 2] == 'e' || seg[i + 2] == 'E')) {
                dots++, i += 3;
            } else {
                only_dots = false;
            }
        }
        if (only_dots && dots >= 1 && dots <= 2)
            return true;
        p = seg + n + 1;
    }
    return false;
}

/* The metrics label of a proxied path: its first segment when it is an
 * OpenAI endpoint family, else "other", so clients cannot grow the series. */
static const char *route_label(const char *rest)
{
    static const char *const known[] = {"models",      "embeddings",    "completions", "responses",
                                        "moderations", "files",         "uploads",     "audio",
                                        "images",      "batches",       "fine_tuning", "assistants",
                                        "threads",     "vector_stores", "realtime",    "chat"};
    size_t n = strcspn(rest, "/?");
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (strlen(known[i]) == n && strncmp(rest, known[i], n) == 0)
            return known[i];
    return "other";
}

/* CORS (cors.allow_origins): an allowed browser origin gets the headers it
 * needs on every /v1/ answer; true for a preflight (OPTIONS) to answer. */
static bool cors(fh_hconn *c, const fh_config *cfg, const char *method)
{
    const char *origin = fh_hconn_header(c, "Origin");
    bool allowed = false;
    for (size_t i = 0; origin && i < cfg->cors.origin_count && !allowed; i++)
        allowed = strcmp(cfg->cors.allow_origins[i], "*") == 0 ||
                  strcmp(cfg->cors.allow_origins[i], origin) == 0;
    if (!allowed)
        return false;
    fh_hconn_add_header(c, "Access-Control-Allow-Origin", origin);
    fh_hconn_add_header(c, "Vary", "Origin");
    fh_hconn_add_header(c, "Access-Control-Expose-Headers",
                        "x-request-id, openai-processing-ms, openai-version, retry-after, "
                        "retry-after-ms, x-should-retry, x-ratelimit-limit-requests, "
                        "x-ratelimit-limit-tokens, x-ratelimit-remaining-requests, "
                        "x-ratelimit-remaining-tokens, x-ratelimit-reset-requests, "
                        "x-ratelimit-reset-tokens, x-fusion-overlay, x-fusion-reason, "
                        "x-fusion-request-id, x-fusion-overhead-ms");
    return strcmp(method, "OPTIONS") == 0 && fh_hconn_header(c, "Access-Control-Request-Method");
}

static int preflight(fh_hconn *c)
{
    fh_hconn_add_header(c, "Access-Control-Allow-Methods", "GET, POST, DELETE, OPTIONS");
    /* The headers the browser asks for (the SDKs send X-Stainless-* and
     * OpenAI-Beta), when they are plain header names; else a fixed list. */
    const char *asked = fh_hconn_header(c, "Access-Control-Request-Headers");
    bool plain = asked && *asked && strlen(asked) < 512;
    for (const char *p = asked; plain && *p; p++)
        plain = isalnum((unsigned char)*p) || strchr("-_, ", *p);
    fh_hconn_add_header(c, "Access-Control-Allow-Headers",
                        plain ? asked
                              : "Authorization, Content-Type, OpenAI-Organization, "
                                "OpenAI-Project, OpenAI-Beta, X-Request-Id, Idempotency-Key, "
                                "X-Fusion-Scenario-Type, X-Fusion-Scenario-Id, "
                                "X-Fusion-Confidence, X-Fusion-Key");
    fh_hconn_add_header(c, "Access-Control-Max-Age", "600");
    fh_hresp *r = fh_hresp_buffer(NULL, 0);
    return r ? fh_hconn_respond(c, 204, r) : -1;
}

static int on_request(void *cls, fh_hconn *c, const char *method, const char *url,
                      const char *upload, size_t *upload_size, void **ctx)
{
    fh_http_worker *hw = cls;
    fh_http *h = hw->h;
    if (*ctx) {
        fh_txn *t = *ctx;
        if (*upload_size) {
            int over = fh_txn_feed(t, upload, *upload_size);
            *upload_size = 0;
            /* Over the limit: answer now; the connection drops the rest. */
            return over ? fh_txn_reject_too_large(t) : 0;
        }
        return fh_txn_step(t);
    }
    /* Routed on the path alone: a query string and one trailing slash
     * are tolerated (/v1/models/?x=1 is /v1/models). */
    const char *full_url = url;
    char path[256];
    size_t plen = strcspn(url, "?");
    if (plen >= sizeof(path))
        plen = sizeof(path) - 1;
    memcpy(path, url, plen);
    path[plen] = '\0';
    if (plen > 1 && path[plen - 1] == '/')
        path[plen - 1] = '\0';
    url = path;
    bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    bool draining = atomic_load(&h->state) == FH_HTTP_DRAINING;
    const char *client = NULL;
    if (strncmp(url, "/v1/", 4) == 0) {
        const fh_config *cfg = fh_pipe_config(hw->pipe);
        if (!cfg) /* never served unchecked */
            return fh_http_error(c, 503, "server_error", "out_of_memory",
                                 "fusion-host is out of memory");
        if (cfg->cors.origin_count && cors(c, cfg, method))
            return preflight(c);
        if (cfg->auth.keys) {
            client = fh_keys_check(cfg->auth.keys, fh_hconn_header(c, "Authorization"));
            if (!client) /* the key itself is never echoed or logged */
                return fh_http_error(c, 401, "invalid_request_error", "invalid_api_key",
                                     "Incorrect or missing API key: send Authorization: Bearer "
                                     "with a key listed in auth.keys_file");
        }
    }
    if (strcmp(url, "/v1/chat/completions") == 0 && strcmp(method, "POST") == 0) {
        if (draining)
            return fh_http_error(c, 503, "server_error", "draining", "fusion-host is stopping");
        const char *cl = fh_hconn_header(c, "Content-Length");
        unsigned long long announced = cl ? strtoull(cl, NULL, 10) : 0;
        size_t max_body = atomic_load(&h->max_body);
        if (announced > max_body)
            return fh_http_error(c, 413, "invalid_request_error", "request_too_large",
                                 "request body is larger than limits.max_body_bytes");
        fh_txn *t = fh_txn_new(hw->pipe, c, FH_TXN_CHAT, max_body);
        if (!t)
            return -1;
        fh_txn_set_client(t, client);
        if (cl)
            fh_txn_expect(t, (size_t)announced);
        *ctx = t;
        return 0;
    }
    if (strcmp(url, "/v1/models") == 0) {
        if (!get)
            return method_not_allowed(c, "GET");
        if (draining)
            return fh_http_error(c, 503, "server_error", "draining", "fusion-host is stopping");
        fh_txn *t = fh_txn_new(hw->pipe, c, FH_TXN_MODELS, atomic_load(&h->max_body));
        if (!t)
            return -1;
        *ctx = t;
        return 0;
    }
    if (strncmp(url, "/v1/", 4) == 0) {
        /* Every other /v1/ path: relayed to the upstream unchanged. The
         * methods the API uses only (a TRACE would echo the operator's key
         * back), and never a path that climbs out of base_url. */
        if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0 &&
            strcmp(method, "POST") != 0 && strcmp(method, "DELETE") != 0)
            return method_not_allowed(c, "GET, POST, DELETE");
        if (dot_segment(full_url))
            return fh_http_error(c, 400, "invalid_request_error", "invalid_path",
                                 "a path with . or .. segments is not relayed");
        if (draining)
            return fh_http_error(c, 503, "server_error", "draining", "fusion-host is stopping");
        fh_txn *t = fh_txn_new(hw->pipe, c, FH_TXN_PROXY, atomic_load(&h->max_body));
        if (!t)
            return -1;
        const char *raw = full_url + 3; /* "/v1" off, the query kept */
        if (fh_txn_set_proxy(t, method, raw, route_label(url + 4)) != 0) {
            *ctx = t; /* completed (and freed) with the connection */
            return -1;
        }
        fh_txn_set_client(t, client);
        *ctx = t;
        return 0;
    }
    if (strcmp(url, "/health") == 0)
        return get ? health(hw, c) : method_not_allowed(c, "GET");
    if (strcmp(url, "/metrics") == 0)
        return get ? metrics(h, c) : method_not_allowed(c, "GET");
    return fh_http_error(c, 404, "invalid_request_error", "not_found",
                         "no such endpoint; fusion-host serves POST /v1/chat/completions, "
                         "GET /v1/models, /health and /metrics");
}

static void on_completed(void *cls, fh_hconn *c, void *ctx, fh_hend how)
{
    (void)cls, (void)c;
    if (ctx)
        fh_txn_completed(ctx, how);
}

static void on_closed(void *cls, void *conn_ud)
{
    (void)cls;
    conn_tag *tag = conn_ud;
    fh_iplimit_give(tag->hw->h->per_ip, (struct sockaddr *)&tag->addr);
    atomic_fetch_sub(&tag->hw->live, 1);
    free(tag);
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

/* Runner of hw's worker: the connection joins hw's (closed when it cannot). */
static void add_connection(fh_http_worker *hw, int fd, const struct sockaddr *addr, socklen_t len)
{
    conn_tag *tag = malloc(sizeof(*tag));
    if (!tag) {
        fh_iplimit_give(hw->h->per_ip, addr);
        close(fd);
    } else {
        tag->hw = hw;
        memcpy(&tag->addr, addr, len < sizeof(tag->addr) ? len : sizeof(tag->addr));
        atomic_fetch_add(&hw->live, 1);
        /* On failure the close callback has not run: undo here. */
        if (fh_hsrv_add(hw->srv, fd, addr, len, tag) != 0) {
            atomic_fetch_sub(&hw->live, 1);
            fh_iplimit_give(hw->h->per_ip, addr);
            free(tag);
        }
    }
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

/* Too many from one address: a short answer, then the socket goes. The
 * write cannot block for long on a fresh socket; it is not retried. */
static void refuse_per_ip(int fd)
{
    static const char body[] =
        "{\"error\":{\"message\":\"too many connections from this address "
        "(limits.max_connections_per_ip)\",\"type\":\"rate_limit_error\",\"param\":null,"
        "\"code\":\"too_many_connections\"}}";
    char msg[512];
    int n = snprintf(msg, sizeof(msg),
                     "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
                     "Connection: close\r\nContent-Length: %zu\r\n\r\n%s",
                     sizeof(body) - 1, body);
    ssize_t sent = send(fd, msg, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)sent;
    close(fd);
}

static void on_listen_ready(fh_watch *watch, uint32_t events)
{
    (void)events;
    fh_http_worker *hw = watch->ud;
    fh_http *h = hw->h;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        if (total_conns(h) >= atomic_load(&h->max_connections)) {
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
        if (!fh_iplimit_take(h->per_ip, (struct sockaddr *)&ho.addr, atomic_load(&h->max_per_ip))) {
            refuse_per_ip(ho.fd);
            continue;
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

static void set_limits(fh_http *h, const fh_http_opts *o)
{
    atomic_store(&h->max_body, o->max_body_bytes);
    atomic_store(&h->max_connections, o->max_connections ? o->max_connections : 10000u);
    atomic_store(&h->max_per_ip, o->max_connections_per_ip);
    fh_hsrv_limits l = {.max_header = o->max_header_bytes ? o->max_header_bytes : 8192,
                        .header_ms = o->header_timeout_ms ? o->header_timeout_ms : 10000,
                        .body_min_rate = o->body_min_bytes_per_s,
                        .idle_ms = o->idle_timeout_ms ? o->idle_timeout_ms : 30000};
    pthread_mutex_lock(&h->limits_mu);
    h->limits = l;
    pthread_mutex_unlock(&h->limits_mu);
    atomic_fetch_add(&h->limits_gen, 1);
}

void fh_http_opts_of(const fh_config *cfg, unsigned nworkers, fh_http_opts *o)
{
    *o = (fh_http_opts){.listen = cfg->listen,
                        .max_connections = (unsigned)cfg->limits.max_connections,
                        .max_connections_per_ip = (unsigned)cfg->limits.max_connections_per_ip,
                        .max_body_bytes = (size_t)cfg->limits.max_body_bytes,
                        .max_header_bytes = (size_t)cfg->limits.max_header_bytes,
                        .header_timeout_ms = (uint64_t)cfg->limits.header_timeout_ms,
                        .body_min_bytes_per_s = (uint64_t)cfg->limits.body_min_bytes_per_s,
                        .idle_timeout_ms = (uint64_t)cfg->limits.idle_timeout_ms,
                        .workers = nworkers};
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
    fh_iplimit *per_ip = fh_iplimit_new();
    if (!h || !per_ip) {
        free(h);
        fh_iplimit_free(per_ip);
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
    h->per_ip = per_ip;
    pthread_mutex_init(&h->limits_mu, NULL);
    set_limits(h, o);
    atomic_init(&h->state, FH_HTTP_STARTING);
    return h;
}

void fh_http_apply(fh_http *h, const fh_http_opts *o)
{
    set_limits(h, o);
}

void fh_http_close(fh_http *h)
{
    if (!h)
        return;
    for (unsigned i = 0; i < atomic_load(&h->nworkers); i++)
        free(h->workers[i]);
    close(h->fd);
    fh_iplimit_free(h->per_ip);
    pthread_mutex_destroy(&h->limits_mu);
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

/* ---- a worker's connections --------------------------------------------------------- */

static int http_turn(fh_worker *w, void *ud)
{
    (void)w;
    fh_http_worker *hw = ud;
    fh_http *h = hw->h;
    uint64_t gen = atomic_load_explicit(&h->limits_gen, memory_order_acquire);
    if (gen != hw->limits_gen) {
        pthread_mutex_lock(&h->limits_mu);
        fh_hsrv_set_limits(hw->srv, &h->limits);
        pthread_mutex_unlock(&h->limits_mu);
        hw->limits_gen = gen;
    }
    int ms = fh_hsrv_turn(hw->srv);
    if (!hw->listening && total_conns(h) < atomic_load(&h->max_connections))
        listen_on(hw, true); /* room again after being full */
    if (fh_pipe_busy(hw->pipe))
        return 0; /* jobs queued: run them at once */
    return ms;
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
    fh_hsrv_cbs cbs = {
        .request = on_request, .completed = on_completed, .closed = on_closed, .ud = hw};
    pthread_mutex_lock(&h->limits_mu);
    hw->srv = fh_hsrv_new(w, &cbs, &h->limits);
    pthread_mutex_unlock(&h->limits_mu);
    hw->limits_gen = atomic_load(&h->limits_gen);
    hw->listen.fd = h->fd;
    hw->listen.fn = on_listen_ready;
    hw->listen.ud = hw;
    if (!hw->srv || fh_worker_add_turn(w, http_turn, hw) != 0) {
        snprintf(err, errlen, "cannot register worker %u's HTTP connections: %s",
                 fh_worker_index(w), hw->srv ? "too many turn callbacks" : "out of memory");
        fh_hsrv_free(hw->srv);
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
    /* Connections still open close now (their requests complete as
     * FH_HEND_SHUTDOWN); the list is freed by fh_http_close once every
     * worker stopped. */
    fh_hsrv_free(hw->srv);
    hw->srv = NULL;
}
