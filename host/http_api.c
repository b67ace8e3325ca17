/*
 * http_api.c - see http_api.h.
 *
 * Threads: MHD's own epoll thread runs every callback; fh_http_set_state,
 * fh_http_port and fh_http_probe may be called from any thread. Start and
 * stop run on the main thread.
 */
#include "http_api.h"

#include "log.h"

#include <errno.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct fh_http {
    struct MHD_Daemon *d;
    fh_pipeline *p;
    fh_metrics *m;
    fh_registry *reg;
    size_t max_body;
    atomic_int state;
    struct sockaddr_storage addr;
    uint16_t port;
    int probe_fd; /* the watchdog probe's kept-alive connection (main thread) */
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

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
                       "\"failed\":%zu},\"in_flight\":%zu}",
                       status, enabled, quarantined, failed, fh_pipeline_in_flight(h->p));
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
    fh_http *h = cls;
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
        if (cl && strtoull(cl, NULL, 10) > h->max_body)
            return fh_http_error(c, 413, "invalid_request_error", "request_too_large",
                                 "request body is larger than limits.max_body_bytes");
        fh_txn *t = fh_txn_new(h->p, c, FH_TXN_CHAT);
        if (!t)
            return MHD_NO;
        *ctx = t;
        return MHD_YES;
    }
    if (strcmp(url, "/v1/models") == 0) {
        if (!get)
            return method_not_allowed(c, "GET");
        if (draining)
            return fh_http_error(c, 503, "server_error", "draining", "fusion-host is stopping");
        fh_txn *t = fh_txn_new(h->p, c, FH_TXN_MODELS);
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

/* Opens the probe's connection to our own listener. */
static int probe_connect(fh_http *h, uint64_t deadline)
{
    struct sockaddr_storage ss = h->addr;
    socklen_t len;
    if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        if (IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr))
            a->sin6_addr = in6addr_loopback;
        a->sin6_port = htons(h->port);
        len = sizeof(*a);
    } else {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        if (a->sin_addr.s_addr == htonl(INADDR_ANY))
            a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        a->sin_port = htons(h->port);
        len = sizeof(*a);
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect(fd, (struct sockaddr *)&ss, len) != 0) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int err = 0;
        socklen_t elen = sizeof(err);
        if (errno != EINPROGRESS || now_ms() >= deadline ||
            poll(&p, 1, (int)(deadline - now_ms())) != 1 ||
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) != 0 || err != 0) {
            close(fd);
            return -1;
        }
    }
    return fd;
}

/* One GET /health on the probe connection: 0 when a whole answer came
 * back in time (the body is read too, so the connection stays usable). */
static int probe_once(int fd, uint64_t deadline)
{
    static const char req[] = "GET /health HTTP/1.1\r\nHost: probe\r\n\r\n";
    size_t sent = 0, got = 0, need = 0;
    char buf[1024];
    while (now_ms() < deadline) {
        bool sending = sent < sizeof(req) - 1;
        struct pollfd p = {.fd = fd, .events = sending ? POLLOUT : POLLIN};
        if (poll(&p, 1, (int)(deadline - now_ms())) != 1)
            return -1;
        if (sending) {
            ssize_t n = send(fd, req + sent, sizeof(req) - 1 - sent, MSG_NOSIGNAL);
            if (n <= 0)
                return -1;
            sent += (size_t)n;
            continue;
        }
        ssize_t n = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
        if (n <= 0)
            return -1;
        got += (size_t)n;
        buf[got] = '\0';
        if (!need) {
            char *end = strstr(buf, "\r\n\r\n");
            if (!end)
                continue;
            if (strncmp(buf, "HTTP/1.", 7) != 0)
                return -1;
            char *cl = strcasestr(buf, "\r\nContent-Length:");
            need = (size_t)(end + 4 - buf) + (cl ? strtoul(cl + 17, NULL, 10) : 0);
        }
        if (got >= need)
            return got == need ? 0 : -1;
        if (got == sizeof(buf) - 1)
            return -1; /* /health is small; anything bigger is not it */
    }
    return -1;
}

/* The loop is alive when it answers a real request in time. The probe
 * keeps one connection open and reuses it, so a daemon at its connection
 * limit can still be probed. */
int fh_http_probe(fh_http *h, int timeout_ms)
{
    uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (h->probe_fd < 0)
            h->probe_fd = probe_connect(h, deadline);
        if (h->probe_fd < 0)
            return -1;
        if (probe_once(h->probe_fd, deadline) == 0)
            return 0;
        /* A stale connection (closed by MHD's idle timeout): once more on a
         * fresh one, within the same deadline. */
        close(h->probe_fd);
        h->probe_fd = -1;
    }
    return -1;
}

/* "host:port" or "[v6]:port" to a socket address. */
static int parse_listen(const char *listen, struct sockaddr_storage *ss, char *err, size_t errlen)
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
    freeaddrinfo(res);
    return 0;
}

fh_http *fh_http_start(const fh_http_opts *o, fh_pipeline *p, fh_metrics *m, fh_registry *reg,
                       char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    if (parse_listen(o->listen, &ss, err, errlen) != 0)
        return NULL;
    fh_http *h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    h->p = p;
    h->m = m;
    h->reg = reg;
    h->max_body = o->max_body_bytes;
    atomic_init(&h->state, FH_HTTP_STARTING);
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    h->d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, h, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_error, h,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT,
        o->max_connections ? o->max_connections : 10000u, MHD_OPTION_CONNECTION_TIMEOUT,
        o->idle_timeout_s ? o->idle_timeout_s : 30u,
        /* Bounds the request headers (and the per-connection buffer, which
         * MHD clears per request: bigger costs time on every request). */
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(16 * 1024), MHD_OPTION_LISTEN_BACKLOG_SIZE,
        4096u, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_END);
    if (!h->d) {
        snprintf(err, errlen, "cannot listen on %s: %s (in use, or not an address of this host?)",
                 o->listen, strerror(errno));
        free(h);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : 0;
    h->addr = ss;
    h->probe_fd = -1;
    return h;
}

void fh_http_set_state(fh_http *h, fh_http_state s)
{
    atomic_store(&h->state, (int)s);
}

uint16_t fh_http_port(const fh_http *h)
{
    return h->port;
}

void fh_http_quiesce(fh_http *h)
{
    MHD_socket s = MHD_quiesce_daemon(h->d);
    if (s != MHD_INVALID_SOCKET)
        close(s);
}

void fh_http_stop(fh_http *h)
{
    if (!h)
        return;
    /* Every suspended connection is resumed and answered before MHD goes
     * away: MHD refuses to stop with suspended connections. */
    uint64_t deadline = now_ms() + 2000;
    size_t suspended;
    /* Until every answer is out, not just queued: MHD_stop_daemon closes
     * connections whatever they still had to send. */
    while (((suspended = fh_pipeline_abort_all(h->p)) > 0 || fh_pipeline_in_flight(h->p) > 0) &&
           now_ms() < deadline) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    if (suspended) {
        /* Cannot happen unless MHD never ran them; exiting without
         * stopping MHD beats aborting in it. */
        fh_error("%zu connection(s) still suspended at exit; not stopping the HTTP daemon",
                 suspended);
        return;
    }
    MHD_stop_daemon(h->d);
    if (h->probe_fd >= 0)
        close(h->probe_fd);
    free(h);
}
