/*
 * upstream.c - see upstream.h.
 *
 * Threads: fh_upstream_submit/resume/cancel/call_release run on any thread
 * and only touch the command queue (under u->lock) and reference counts.
 * Everything else - the multi handle, easy handles, call->easy, call->state,
 * the handler callbacks - belongs to the upstream thread.
 *
 * Invariant: a call's on_done() runs exactly once, on the upstream thread,
 * after which the thread drops its reference and never touches it again.
 */
#include "upstream.h"

#include "log.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef enum { CALL_QUEUED, CALL_RUNNING, CALL_DONE } call_state;
/* Pending commands, a bit each, so queueing one never allocates. */
enum { CMD_SUBMIT = 1, CMD_RESUME = 2, CMD_CANCEL = 4 };

struct fh_upstream_call {
    atomic_int refs;
    fh_upstream_handler h;
    void *ud;
    char *url;
    char *method;
    char *body;
    size_t body_len;
    int streaming;
    /* Upstream thread only. */
    call_state state;
    CURL *easy;
    struct curl_slist *headers;
    long status;
    bool got_response;
    char content_type[128];
    char error[CURL_ERROR_SIZE];
    struct fh_upstream_call *prev, *next; /* the running list */
    /* Under u->lock: commands not yet run, and the queue link (the queue
     * holds a reference while the call is on it). */
    unsigned pending;
    bool queued;
    struct fh_upstream_call *qnext;
};

struct fh_upstream {
    CURLM *multi;
    pthread_t thread;
    char *base_url;
    char *auth_header;
    long timeout_ms;
    long connect_timeout_ms;

    pthread_mutex_t lock;            /* guards the queue, `stopping` and `stopped` */
    fh_upstream_call *qhead, *qtail; /* calls with pending commands */
    bool stopping;
    bool stopped; /* the thread has exited: nothing may be queued */

    fh_upstream_call *running; /* upstream thread only */

    atomic_uint_fast64_t heartbeat_ms;
    atomic_size_t in_flight;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

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

static void call_free(fh_upstream_call *c)
{
    free(c->url);
    free(c->method);
    free(c->body);
    free(c);
}

void fh_upstream_call_release(fh_upstream_call *c)
{
    if (c && atomic_fetch_sub(&c->refs, 1) == 1)
        call_free(c);
}

static int push_cmd(fh_upstream *u, unsigned kind, fh_upstream_call *c)
{
    pthread_mutex_lock(&u->lock);
    if (u->stopped || (u->stopping && kind == CMD_SUBMIT)) {
        pthread_mutex_unlock(&u->lock);
        return -1;
    }
    c->pending |= kind;
    if (!c->queued) {
        c->queued = true;
        c->qnext = NULL;
        atomic_fetch_add(&c->refs, 1);
        if (u->qtail)
            u->qtail->qnext = c;
        else
            u->qhead = c;
        u->qtail = c;
    }
    pthread_mutex_unlock(&u->lock);
    curl_multi_wakeup(u->multi);
    return 0;
}

/* ---- upstream thread ----------------------------------------------------- */

static void finish(fh_upstream *u, fh_upstream_call *c, fh_upstream_result r, const char *error)
{
    if (c->state == CALL_DONE)
        return;
    if (c->state == CALL_RUNNING) {
        if (c->prev)
            c->prev->next = c->next;
        else
            u->running = c->next;
        if (c->next)
            c->next->prev = c->prev;
        c->prev = c->next = NULL;
    }
    if (c->easy) {
        curl_multi_remove_handle(u->multi, c->easy);
        curl_easy_cleanup(c->easy);
        c->easy = NULL;
    }
    curl_slist_free_all(c->headers);
    c->headers = NULL;
    c->state = CALL_DONE;
    atomic_fetch_sub(&u->in_flight, 1);
    if (c->h.on_done)
        c->h.on_done(c->ud, r, c->status, error);
    fh_upstream_call_release(c); /* the thread's own reference */
}

static void deliver_response(fh_upstream_call *c)
{
    if (c->got_response)
        return;
    c->got_response = true;
    if (c->easy) {
        curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &c->status);
        char *ct = NULL;
        if (curl_easy_getinfo(c->easy, CURLINFO_CONTENT_TYPE, &ct) == CURLE_OK && ct)
            snprintf(c->content_type, sizeof(c->content_type), "%s", ct);
    }
    if (c->h.on_response)
        c->h.on_response(c->ud, c->status, c->content_type);
}

static size_t on_header(char *data, size_t size, size_t n, void *p)
{
    fh_upstream_call *c = p;
    size_t len = size * n;
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
    if (rc > 0)
        return CURL_WRITEFUNC_PAUSE;
    if (rc < 0)
        return 0; /* CURLE_WRITE_ERROR: the handler refused the answer */
    return len;
}

static void start_call(fh_upstream *u, fh_upstream_call *c)
{
    if (c->state != CALL_QUEUED)
        return;
    c->state = CALL_RUNNING;
    c->next = u->running;
    if (u->running)
        u->running->prev = c;
    u->running = c;
    CURL *e = curl_easy_init();
    struct curl_slist *hd = NULL, *tmp;
    /* "Expect:" off: 100-continue costs a round trip on bodies over 1 KiB. */
    const char *fixed[] = {"Content-Type: application/json", "Expect:", u->auth_header};
    for (size_t i = 0; e && i < sizeof(fixed) / sizeof(fixed[0]); i++) {
        if (!fixed[i])
            continue;
        tmp = curl_slist_append(hd, fixed[i]);
        if (!tmp) {
            curl_easy_cleanup(e);
            e = NULL;
            break;
        }
        hd = tmp;
    }
    if (!e) {
        curl_slist_free_all(hd);
        finish(u, c, FH_UPSTREAM_INTERNAL, "out of memory");
        return;
    }
    c->easy = e;
    c->headers = hd;
    curl_easy_setopt(e, CURLOPT_URL, c->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, c);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hd);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, c->error);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, u->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    /* Thousands of calls wait at once: keep each one's buffer small. */
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 8192L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    if (c->streaming) {
        /* A stream may last long; what must not last is silence. */
        long idle_s = (u->timeout_ms + 999) / 1000;
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, 1L);
        curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, idle_s > 0 ? idle_s : 1L);
    } else {
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, u->timeout_ms);
    }
    if (strcmp(c->method, "GET") != 0) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, c->method);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, c->body ? c->body : "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)c->body_len);
    }
    if (curl_multi_add_handle(u->multi, e) != CURLM_OK)
        finish(u, c, FH_UPSTREAM_INTERNAL, "curl refused the transfer");
}

static void run_commands(fh_upstream *u, bool stopping)
{
    pthread_mutex_lock(&u->lock);
    fh_upstream_call *c = u->qhead;
    u->qhead = u->qtail = NULL;
    pthread_mutex_unlock(&u->lock);
    while (c) {
        pthread_mutex_lock(&u->lock);
        fh_upstream_call *next = c->qnext;
        unsigned pending = c->pending;
        c->pending = 0;
        c->queued = false;
        pthread_mutex_unlock(&u->lock);
        if (pending & CMD_SUBMIT) {
            if (stopping)
                finish(u, c, FH_UPSTREAM_CANCELLED, "fusion-host is stopping");
            else
                start_call(u, c);
        }
        if (pending & CMD_CANCEL)
            finish(u, c, FH_UPSTREAM_CANCELLED, "cancelled");
        else if ((pending & CMD_RESUME) && c->state == CALL_RUNNING && c->easy)
            curl_easy_pause(c->easy, CURLPAUSE_CONT);
        fh_upstream_call_release(c); /* the queue's reference */
        c = next;
    }
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

static void reap_done(fh_upstream *u)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(u->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        fh_upstream_call *c = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&c);
        CURLcode rc = msg->data.result;
        if (rc == CURLE_OK)
            deliver_response(c); /* an empty body calls no write callback */
        const char *err = c->error[0] ? c->error : curl_easy_strerror(rc);
        finish(u, c, classify(rc), rc == CURLE_OK ? NULL : err);
    }
}

static void *upstream_main(void *p)
{
    fh_upstream *u = p;
    for (;;) {
        atomic_store(&u->heartbeat_ms, now_ms());
        run_commands(u, false);
        int running = 0;
        curl_multi_perform(u->multi, &running);
        reap_done(u);
        pthread_mutex_lock(&u->lock);
        bool stop = u->stopping;
        pthread_mutex_unlock(&u->lock);
        if (stop)
            break;
        /* Wakes on socket activity, curl's own timers, or wakeup(). */
        curl_multi_poll(u->multi, NULL, 0, 250, NULL);
    }
    /* Shutdown: everything still running is cancelled, exactly once. */
    run_commands(u, true);
    while (u->running)
        finish(u, u->running, FH_UPSTREAM_CANCELLED, "fusion-host is stopping");
    pthread_mutex_lock(&u->lock);
    u->stopped = true;
    pthread_mutex_unlock(&u->lock);
    run_commands(u, true); /* anything queued meanwhile: refs only */
    return NULL;
}

/* ---- any thread ------------------------------------------------------------ */

static void global_init(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

fh_upstream *fh_upstream_start(const fh_upstream_opts *opts, char *err, size_t errlen)
{
    /* curl_global_init is not thread-safe on older libcurl: once, here. */
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, global_init);

    fh_upstream *u = calloc(1, sizeof(*u));
    if (!u) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    size_t n = strlen(opts->base_url);
    while (n > 0 && opts->base_url[n - 1] == '/')
        n--;
    u->base_url = strndup(opts->base_url, n);
    if (opts->api_key && *opts->api_key &&
        asprintf(&u->auth_header, "Authorization: Bearer %s", opts->api_key) < 0)
        u->auth_header = NULL;
    u->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 60000;
    u->connect_timeout_ms = opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 2000;
    pthread_mutex_init(&u->lock, NULL);
    u->multi = curl_multi_init();
    if (!u->base_url || !u->multi) {
        snprintf(err, errlen, "out of memory creating the upstream client");
        goto fail;
    }
    /* Keep plenty of idle keep-alive connections for reuse. */
    curl_multi_setopt(u->multi, CURLMOPT_MAXCONNECTS, 1024L);
    atomic_store(&u->heartbeat_ms, now_ms());
    int rc = pthread_create(&u->thread, NULL, upstream_main, u);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start the upstream thread: %s", strerror(rc));
        goto fail;
    }
    return u;
fail:
    if (u->multi)
        curl_multi_cleanup(u->multi);
    pthread_mutex_destroy(&u->lock);
    free(u->base_url);
    free(u->auth_header);
    free(u);
    return NULL;
}

void fh_upstream_stop(fh_upstream *u)
{
    if (!u)
        return;
    pthread_mutex_lock(&u->lock);
    u->stopping = true;
    pthread_mutex_unlock(&u->lock);
    curl_multi_wakeup(u->multi);
    pthread_join(u->thread, NULL);
    curl_multi_cleanup(u->multi);
    pthread_mutex_destroy(&u->lock);
    free(u->base_url);
    free(u->auth_header);
    free(u);
}

fh_upstream_call *fh_upstream_submit(fh_upstream *u, const char *method, const char *path,
                                     const char *body, size_t len, int streaming,
                                     const fh_upstream_handler *h, void *ud)
{
    fh_upstream_call *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    atomic_init(&c->refs, 2); /* the caller's and the upstream thread's */
    c->h = *h;
    c->ud = ud;
    c->streaming = streaming;
    c->state = CALL_QUEUED;
    c->method = strdup(method);
    if (asprintf(&c->url, "%s%s", u->base_url, path) < 0)
        c->url = NULL;
    if (body) {
        c->body = malloc(len + 1);
        if (c->body) {
            memcpy(c->body, body, len);
            c->body[len] = '\0';
            c->body_len = len;
        }
    }
    if (!c->method || !c->url || (body && !c->body)) {
        call_free(c);
        return NULL;
    }
    atomic_fetch_add(&u->in_flight, 1);
    if (push_cmd(u, CMD_SUBMIT, c) != 0) {
        atomic_fetch_sub(&u->in_flight, 1);
        call_free(c);
        return NULL;
    }
    return c;
}

void fh_upstream_resume(fh_upstream *u, fh_upstream_call *c)
{
    push_cmd(u, CMD_RESUME, c); /* refused only once the thread is gone */
}

void fh_upstream_cancel(fh_upstream *u, fh_upstream_call *c)
{
    push_cmd(u, CMD_CANCEL, c);
}

uint64_t fh_upstream_heartbeat(const fh_upstream *u)
{
    return atomic_load(&((fh_upstream *)u)->heartbeat_ms);
}

size_t fh_upstream_in_flight(const fh_upstream *u)
{
    return atomic_load(&((fh_upstream *)u)->in_flight);
}
