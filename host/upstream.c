/*
 * upstream.c - see upstream.h.
 *
 * curl's socket interface: CURLMOPT_SOCKETFUNCTION registers each of curl's
 * sockets with the worker's epoll (an fh_watch per socket, kept with
 * curl_multi_assign), CURLMOPT_TIMERFUNCTION sets `deadline_ns`, which the
 * worker's turn honours. Completed transfers are collected after curl
 * returns, so on_done never runs inside curl.
 *
 * Invariant: a call's on_done runs at most once, and never after
 * fh_upstream_cancel(); after either, the call is freed and its easy handle
 * goes back to the idle pool (or is cleaned up).
 */
#include "upstream.h"

#include "log.h"
#include "util.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>

#define IDLE_EASY_MAX 64 /* easy handles kept for reuse */

/* Where and how to call: the settings a call keeps from its start to its
 * end, so a reload changes new calls only. Runner only (plain count): the
 * upstream's reference and one per call. */
struct fh_upstream_target {
    int refs;
    char *base_url;
    struct curl_slist *headers;   /* curl only reads it */
    CURLU *url_chat, *url_models; /* parsed once: curl reads them, never writes */
    long timeout_ms;              /* the answer's head; a whole non-streamed answer */
    long idle_timeout_ms;         /* the longest gap between a stream's bytes */
    long connect_timeout_ms;
};

struct fh_upstream_call {
    fh_upstream_handler h;
    void *ud;
    CURL *easy;
    fh_upstream_target *tg;
    struct curl_slist *own_headers; /* the target's plus the caller's, when it sent any */
    char *resp_headers;             /* kept answer headers, "Name: value\r\n"... */
    size_t resp_len;
    /* A stream's own timing (curl's low-speed check counts in whole
     * seconds and waits up to twice the limit): the head by timeout_ms,
     * then every gap by idle_timeout_ms; not while we paused it. */
    bool streaming, paused;
    uint64_t deadline_ns;
    long status;
    bool got_response;
    char error[CURL_ERROR_SIZE];
    struct fh_upstream_call *prev, *next; /* the running list */
};

typedef struct sock_watch {
    fh_watch watch;
    fh_upstream *u;
    struct sock_watch *prev, *next; /* u->socks */
} sock_watch;

struct fh_upstream {
    fh_worker *w;
    CURLM *multi;
    fh_upstream_target *tg; /* what new calls use */
    uint64_t deadline_ns;   /* curl's timer; 0: none */
    size_t nstreams;        /* running streaming calls (their deadlines are ours) */
    uint64_t next_sweep_ns;
    bool in_turn; /* inside our own turn or fd event: it reads the timer */
    fh_upstream_call *running;
    size_t in_flight;
    CURL *idle[IDLE_EASY_MAX];
    size_t nidle;
    sock_watch *socks; /* every socket curl asked us to watch */
};

const char *fh_upstream_result_name(fh_upstream_result r)
{
    switch (r) {
    case FH_UPSTREAM_OK:
        return "ok";
    case FH_UPSTREAM_CONNECT:
        return "connect_failed";
    case FH_UPSTREAM_TIMEOUT:
        return "timeout";
    case FH_UPSTREAM_BROKEN:
        return "broken";
    case FH_UPSTREAM_CANCELLED:
        return "cancelled";
    case FH_UPSTREAM_INTERNAL:
        return "internal";
    }
    return "unknown";
}

/* ---- curl's sockets and timer ------------------------------------------------- */

static void drain_done(fh_upstream *u);

static void on_socket_event(fh_watch *watch, uint32_t events)
{
    sock_watch *sw = (sock_watch *)watch;
    fh_upstream *u = sw->u;
    int flags = 0;
    if (events & EPOLLIN)
        flags |= CURL_CSELECT_IN;
    if (events & EPOLLOUT)
        flags |= CURL_CSELECT_OUT;
    if (events & (EPOLLERR | EPOLLHUP))
        flags |= CURL_CSELECT_ERR;
    int running = 0;
    /* sw may be freed inside (CURL_POLL_REMOVE): do not touch it after. */
    u->in_turn = true;
    curl_multi_socket_action(u->multi, watch->fd, flags, &running);
    u->in_turn = false;
    drain_done(u);
}

static void sock_forget(fh_upstream *u, sock_watch *sw)
{
    if (sw->prev)
        sw->prev->next = sw->next;
    else
        u->socks = sw->next;
    if (sw->next)
        sw->next->prev = sw->prev;
    free(sw);
}

static int socket_cb(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)e;
    fh_upstream *u = userp;
    sock_watch *sw = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (sw) {
            fh_worker_unwatch(u->w, &sw->watch);
            curl_multi_assign(u->multi, s, NULL);
            sock_forget(u, sw);
        }
        return 0;
    }
    uint32_t events = (what & CURL_POLL_IN ? EPOLLIN : 0) | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
    if (!sw) {
        sw = calloc(1, sizeof(*sw));
        if (!sw)
            return -1;
        sw->u = u;
        sw->watch.fd = s;
        sw->watch.events = events;
        sw->watch.fn = on_socket_event;
        if (fh_worker_watch(u->w, &sw->watch) != 0) {
            free(sw);
            return -1;
        }
        sw->next = u->socks;
        if (u->socks)
            u->socks->prev = sw;
        u->socks = sw;
        curl_multi_assign(u->multi, s, sw);
    } else if (events != sw->watch.events) {
        fh_worker_rewatch(u->w, &sw->watch, events);
    }
    return 0;
}

static int timer_cb(CURLM *m, long timeout_ms, void *userp)
{
    (void)m;
    fh_upstream *u = userp;
    u->deadline_ns = timeout_ms < 0 ? 0 : fh_now_ns() + (uint64_t)timeout_ms * 1000000u;
    if (!u->in_turn)
        fh_worker_nudge(u->w); /* set from another turn: ours already ran */
    return 0;
}

/* The worker's turn: curl's timer, then what completed. */
#define SWEEP_NS (20u * 1000000u) /* streams' deadlines are checked this often */

static uint64_t upstream_wait_ns(CURL *e);
static void free_call(fh_upstream *u, fh_upstream_call *c);

/* Ends the streams past their deadline, as curl ends a timed-out call. */
static void sweep_streams(fh_upstream *u, uint64_t now)
{
    fh_upstream_call *c = u->running, *next;
    for (; c; c = next) {
        next = c->next;
        if (!c->streaming || c->paused || now < c->deadline_ns)
            continue;
        char error[CURL_ERROR_SIZE];
        long ms = c->got_response ? c->tg->idle_timeout_ms : c->tg->timeout_ms;
        snprintf(error, sizeof(error),
                 c->got_response ? "no data from the stream for %ld ms (upstream.idle_timeout_ms)"
                                 : "no answer within %ld ms (upstream.timeout_ms)",
                 ms);
        fh_upstream_done d = {.result = FH_UPSTREAM_TIMEOUT,
                              .status = c->status,
                              .error = error,
                              .wait_ns = upstream_wait_ns(c->easy)};
        fh_upstream_handler h = c->h;
        void *ud = c->ud;
        free_call(u, c);
        if (h.on_done)
            h.on_done(ud, &d);
        next = u->running; /* on_done may have submitted or cancelled: start over */
    }
}

static int upstream_turn(fh_worker *w, void *ud)
{
    (void)w;
    fh_upstream *u = ud;
    if (u->nstreams) {
        uint64_t now = fh_now_ns();
        if (now >= u->next_sweep_ns) {
            u->next_sweep_ns = now + SWEEP_NS;
            sweep_streams(u, now);
        }
    }
    if (u->deadline_ns && fh_now_ns() >= u->deadline_ns) {
        u->deadline_ns = 0;
        int running = 0;
        u->in_turn = true;
        curl_multi_socket_action(u->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        u->in_turn = false;
        drain_done(u);
    }
    uint64_t now = fh_now_ns();
    uint64_t next = u->deadline_ns;
    if (u->nstreams && (!next || u->next_sweep_ns < next))
        next = u->next_sweep_ns;
    if (!next)
        return -1;
    return next <= now ? 0 : (int)((next - now + 999999u) / 1000000u);
}

/* ---- calls -------------------------------------------------------------------- */

static void unlink_call(fh_upstream *u, fh_upstream_call *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        u->running = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

/* A finished handle keeps its options for the next call (submit sets all
 * that differ), so reuse costs neither an init nor a reset. */
static void release_easy(fh_upstream *u, CURL *e)
{
    if (!e)
        return;
    curl_multi_remove_handle(u->multi, e);
    if (u->nidle < IDLE_EASY_MAX)
        u->idle[u->nidle++] = e;
    else
        curl_easy_cleanup(e);
}

static void target_unref(fh_upstream_target *t)
{
    if (!t || --t->refs > 0)
        return;
    curl_slist_free_all(t->headers);
    curl_url_cleanup(t->url_chat);
    curl_url_cleanup(t->url_models);
    free(t->base_url);
    free(t);
}

static void free_call(fh_upstream *u, fh_upstream_call *c)
{
    if (c->streaming)
        u->nstreams--;
    unlink_call(u, c);
    release_easy(u, c->easy);
    target_unref(c->tg);
    curl_slist_free_all(c->own_headers);
    free(c->resp_headers);
    u->in_flight--;
    free(c);
}

static void deliver_response(fh_upstream_call *c)
{
    if (c->got_response)
        return;
    c->got_response = true;
    if (c->streaming)
        c->deadline_ns = fh_now_ns() + (uint64_t)c->tg->idle_timeout_ms * 1000000u;
    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &c->status);
    char *ct = NULL; /* curl's, valid during the callback: the caller copies it */
    if (curl_easy_getinfo(c->easy, CURLINFO_CONTENT_TYPE, &ct) != CURLE_OK || !ct)
        ct = "";
    if (c->h.on_response)
        c->h.on_response(c->ud, c->status, ct, c->resp_headers ? c->resp_headers : "");
}

/* Answer headers a client of the OpenAI API reads (the SDKs' request_id,
 * rate limits, when to retry); hop-by-hop and everything else stay here. */
static bool passed_back(const char *name, size_t n)
{
    /* Not openai-organization/-project: the operator's, not the caller's. */
    static const char *const exact[] = {"x-request-id", "openai-processing-ms", "openai-version",
                                        "retry-after",  "retry-after-ms",       "x-should-retry"};
    for (size_t i = 0; i < sizeof(exact) / sizeof(exact[0]); i++)
        if (strlen(exact[i]) == n && strncasecmp(name, exact[i], n) == 0)
            return true;
    return n > 12 && strncasecmp(name, "x-ratelimit-", 12) == 0;
}

static void keep_header(fh_upstream_call *c, const char *line, size_t len)
{
    const char *colon = memchr(line, ':', len);
    if (!colon || !passed_back(line, (size_t)(colon - line)))
        return;
    while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == '\n'))
        len--;
    if (c->resp_len + len + 3 > 16384)
        return; /* a flood of them is not worth keeping */
    char *g = realloc(c->resp_headers, c->resp_len + len + 3);
    if (!g)
        return;
    c->resp_headers = g;
    memcpy(g + c->resp_len, line, len);
    memcpy(g + c->resp_len + len, "\r\n", 3); /* NUL included */
    c->resp_len += len + 2;
}

static size_t on_header(char *data, size_t size, size_t n, void *p)
{
    fh_upstream_call *c = p;
    size_t len = size * n;
    if (len >= 5 && strncmp(data, "HTTP/", 5) == 0) {
        c->resp_len = 0; /* a new block (after a 1xx): only the final one counts */
        if (c->resp_headers)
            c->resp_headers[0] = '\0';
        return len;
    }
    if (!c->got_response && len > 2)
        keep_header(c, data, len);
    /* The blank line ends a header block; skip interim 1xx blocks. */
    if (len <= 2 && (data[0] == '\r' || data[0] == '\n')) {
        long code = 0;
        curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &code);
        if (code >= 200)
            deliver_response(c);
    }
    return len;
}

static size_t on_write(char *data, size_t size, size_t n, void *p)
{
    fh_upstream_call *c = p;
    size_t len = size * n;
    deliver_response(c);
    int rc = c->h.on_body ? c->h.on_body(c->ud, data, len) : 0;
    if (c->streaming)
        c->deadline_ns = fh_now_ns() + (uint64_t)c->tg->idle_timeout_ms * 1000000u;
    if (rc > 0) {
        c->paused = true;
        return CURL_WRITEFUNC_PAUSE;
    }
    if (rc < 0)
        return 0; /* CURLE_WRITE_ERROR: the handler refused the answer */
    return len;
}

static fh_upstream_result classify(CURLcode rc)
{
    switch (rc) {
    case CURLE_OK:
        return FH_UPSTREAM_OK;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return FH_UPSTREAM_CONNECT;
    case CURLE_OPERATION_TIMEDOUT:
        return FH_UPSTREAM_TIMEOUT;
    case CURLE_OUT_OF_MEMORY:
        return FH_UPSTREAM_INTERNAL;
    default:
        return FH_UPSTREAM_BROKEN;
    }
}

/* The upstream's share of the call: from the request leaving (curl's
 * pre-transfer mark) to the end. Connecting counts as the host's. */
static uint64_t upstream_wait_ns(CURL *e)
{
    curl_off_t pre = 0, total = 0;
    curl_easy_getinfo(e, CURLINFO_PRETRANSFER_TIME_T, &pre);
    curl_easy_getinfo(e, CURLINFO_TOTAL_TIME_T, &total);
    return total > pre ? (uint64_t)(total - pre) * 1000u : 0;
}

static void drain_done(fh_upstream *u)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(u->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        fh_upstream_call *c = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&c);
        CURLcode rc = m->data.result;
        if (rc == CURLE_OK)
            deliver_response(c); /* an empty body calls no write callback */
        fh_upstream_done d = {.result = classify(rc),
                              .status = c->status,
                              .error = rc == CURLE_OK ? NULL
                                       : c->error[0]  ? c->error
                                                      : curl_easy_strerror(rc),
                              .wait_ns = upstream_wait_ns(c->easy)};
        fh_upstream_handler h = c->h;
        void *ud = c->ud;
        /* Freed before on_done, which may submit again (a retry) and reuse
         * the easy handle; `d.error` points into `c`, so copy it first. */
        char error[CURL_ERROR_SIZE];
        if (d.error) {
            snprintf(error, sizeof(error), "%s", d.error);
            d.error = error;
        }
        free_call(u, c);
        if (h.on_done)
            h.on_done(ud, &d);
    }
}

static size_t on_header(char *data, size_t size, size_t n, void *p);
static size_t on_write(char *data, size_t size, size_t n, void *p);

/* A handle from the idle pool, or a new one with the options every call
 * shares. */
static CURL *take_easy(fh_upstream *u)
{
    if (u->nidle)
        return u->idle[--u->nidle];
    CURL *e = curl_easy_init();
    if (!e)
        return NULL;
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    /* Thousands of calls wait at once: keep each one's buffer small. */
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 4096L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    /* The upstream is named in the config: no proxy from the environment
     * (http_proxy would silently reroute every model call; curl would also
     * read the variables on every call). */
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    return e;
}

fh_upstream_call *fh_upstream_submit(fh_upstream *u, fh_upstream_target *tg, const char *method,
                                     const char *path, const char *body, size_t len, int streaming,
                                     const char *const *extra, const fh_upstream_handler *h,
                                     void *ud)
{
    if (!tg)
        tg = u->tg;
    CURLU *url = strcmp(path, "/chat/completions") == 0 ? tg->url_chat
                 : strcmp(path, "/models") == 0         ? tg->url_models
                                                        : NULL;
    /* Any other path (the proxied endpoints): base_url + path, parsed by
     * curl for this call. */
    char *text = NULL;
    if (!url && (path[0] != '/' || asprintf(&text, "%s%s", tg->base_url, path) < 0))
        return NULL;
    fh_upstream_call *c = calloc(1, sizeof(*c));
    CURL *e = c ? take_easy(u) : NULL;
    if (!e) {
        free(c);
        free(text);
        return NULL;
    }
    c->h = *h;
    c->ud = ud;
    c->easy = e;
    c->tg = tg;
    tg->refs++;
    /* Everything a previous call on this handle may have set differently
     * (a reload may have changed the target since). */
    curl_easy_setopt(e, CURLOPT_CURLU, url);
    /* Dot segments are refused before (http_api.c); curl must not resolve
     * any either. */
    curl_easy_setopt(e, CURLOPT_PATH_AS_IS, url ? 0L : 1L);
    if (!url) {
        curl_easy_setopt(e, CURLOPT_URL, text); /* curl copies it */
        free(text);
    }
    struct curl_slist *hdrs = tg->headers;
    if (extra && extra[0]) {
        /* The caller's headers that go upstream, after the target's own
         * (its Content-Type replaces the target's JSON one). */
        bool own_type = false;
        for (size_t i = 0; extra[i]; i++)
            own_type = own_type || strncasecmp(extra[i], "Content-Type:", 13) == 0;
        for (const struct curl_slist *l = tg->headers; l; l = l->next)
            if (!own_type || strncasecmp(l->data, "Content-Type:", 13) != 0)
                c->own_headers = curl_slist_append(c->own_headers, l->data);
        for (size_t i = 0; extra[i]; i++)
            c->own_headers = curl_slist_append(c->own_headers, extra[i]);
        if (c->own_headers)
            hdrs = c->own_headers;
    }
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, tg->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_PRIVATE, c);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->error);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
    if (streaming) {
        /* A stream may last long; what must not last is silence. Our own
         * deadlines (upstream_turn): the head within timeout_ms, then no
         * gap over idle_timeout_ms. */
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 0L);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 0L);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, 0L);
        c->streaming = true;
        c->deadline_ns = fh_now_ns() + (uint64_t)tg->timeout_ms * 1000000u;
        u->nstreams++;
    } else {
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 0L);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, 0L);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, tg->timeout_ms);
    }
    if (strcmp(method, "GET") == 0) {
        curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, NULL);
    } else {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, strcmp(method, "POST") ? method : NULL);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body ? body : "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? len : 0));
    }
    c->next = u->running;
    if (u->running)
        u->running->prev = c;
    u->running = c;
    u->in_flight++;
    if (curl_multi_add_handle(u->multi, e) != CURLM_OK) {
        free_call(u, c);
        return NULL;
    }
    return c;
}

void fh_upstream_resume(fh_upstream *u, fh_upstream_call *c)
{
    (void)u;
    c->paused = false;
    if (c->streaming)
        c->deadline_ns = fh_now_ns() + (uint64_t)c->tg->idle_timeout_ms * 1000000u;
    curl_easy_pause(c->easy, CURLPAUSE_CONT);
}

void fh_upstream_cancel(fh_upstream *u, fh_upstream_call *c)
{
    free_call(u, c);
}

size_t fh_upstream_in_flight(const fh_upstream *u)
{
    return u->in_flight;
}

/* ---- life --------------------------------------------------------------------- */

/* base + path, parsed once: curl would parse the URL text on every call. */
static CURLU *parse_url(const char *base, const char *path, char *err, size_t errlen)
{
    char *text = NULL;
    CURLU *h = curl_url();
    if (!h || asprintf(&text, "%s%s", base, path) < 0) {
        curl_url_cleanup(h);
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    CURLUcode rc = curl_url_set(h, CURLUPART_URL, text, 0);
    if (rc != CURLUE_OK) {
        snprintf(err, errlen, "upstream.base_url %s: %s", base, curl_url_strerror(rc));
        curl_url_cleanup(h);
        h = NULL;
    }
    free(text);
    return h;
}

static pthread_once_t global_once = PTHREAD_ONCE_INIT;

static void global_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

fh_upstream_target *fh_upstream_target_new(const fh_upstream_opts *opts, char *err, size_t errlen)
{
    /* curl_global_init is not thread-safe on older libcurl: once, here. */
    pthread_once(&global_once, global_init);
    fh_upstream_target *t = calloc(1, sizeof(*t));
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    t->refs = 1;
    size_t n = strlen(opts->base_url);
    while (n > 0 && opts->base_url[n - 1] == '/')
        n--;
    t->base_url = strndup(opts->base_url, n);
    t->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 60000;
    t->idle_timeout_ms = opts->idle_timeout_ms > 0 ? opts->idle_timeout_ms : 30000;
    t->connect_timeout_ms = opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 2000;
    /* "Expect:" off: 100-continue costs a round trip on bodies over 1 KiB. */
    t->headers = curl_slist_append(NULL, "Content-Type: application/json");
    struct curl_slist *l = t->headers ? curl_slist_append(t->headers, "Expect:") : NULL;
    if (l && opts->api_key && *opts->api_key) {
        char *auth = NULL;
        if (asprintf(&auth, "Authorization: Bearer %s", opts->api_key) >= 0) {
            l = curl_slist_append(t->headers, auth);
            /* curl copied it; the key must not linger in our heap */
            memset(auth, 0, strlen(auth));
            free(auth);
        } else {
            l = NULL;
        }
    }
    if (!t->base_url || !l) {
        snprintf(err, errlen, "out of memory creating the upstream client");
        target_unref(t);
        return NULL;
    }
    if (!(t->url_chat = parse_url(t->base_url, "/chat/completions", err, errlen)) ||
        !(t->url_models = parse_url(t->base_url, "/models", err, errlen))) {
        target_unref(t);
        return NULL;
    }
    return t;
}

void fh_upstream_target_free(fh_upstream_target *t)
{
    target_unref(t);
}

fh_upstream_target *fh_upstream_target_ref(fh_upstream_target *t)
{
    t->refs++;
    return t;
}

void fh_upstream_retarget(fh_upstream *u, fh_upstream_target *t)
{
    target_unref(u->tg);
    u->tg = t;
}

fh_upstream *fh_upstream_new(fh_worker *w, const fh_upstream_opts *opts, char *err, size_t errlen)
{
    fh_upstream *u = calloc(1, sizeof(*u));
    if (!u) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    u->w = w;
    u->tg = fh_upstream_target_new(opts, err, errlen);
    if (!u->tg) {
        free(u);
        return NULL;
    }
    u->multi = curl_multi_init();
    if (!u->multi) {
        snprintf(err, errlen, "out of memory creating the upstream client");
        fh_upstream_free(u);
        return NULL;
    }
    curl_multi_setopt(u->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(u->multi, CURLMOPT_SOCKETDATA, u);
    curl_multi_setopt(u->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(u->multi, CURLMOPT_TIMERDATA, u);
    /* Keep plenty of idle keep-alive connections for reuse. */
    curl_multi_setopt(u->multi, CURLMOPT_MAXCONNECTS, 1024L);
    if (fh_worker_add_turn(w, upstream_turn, u) != 0) {
        snprintf(err, errlen, "worker has no room for the upstream client");
        fh_upstream_free(u);
        return NULL;
    }
    return u;
}

void fh_upstream_free(fh_upstream *u)
{
    if (!u)
        return;
    while (u->running)
        free_call(u, u->running);
    for (size_t i = 0; i < u->nidle; i++)
        curl_easy_cleanup(u->idle[i]);
    if (u->multi)
        curl_multi_cleanup(u->multi);
    while (u->socks) { /* the ones cleanup closed without telling us */
        fh_worker_unwatch(u->w, &u->socks->watch);
        sock_forget(u, u->socks);
    }
    target_unref(u->tg);
    free(u);
}
