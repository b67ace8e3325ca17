/*
 * pipeline.c - see pipeline.h. The data path reads top to bottom:
 *
 *   txn_start()      parse, route, apply the overlay, submit upstream, suspend
 *   up_response()    upstream thread: status line in; a 200 SSE answer to a
 *                    streaming client switches the txn to relaying
 *   up_body()        upstream thread: buffer (or relay, with backpressure)
 *   up_done()        upstream thread: overlay rejected with a 4xx? retry as
 *                    baseline; else mark done and resume the connection
 *   txn_respond()    HTTP thread: evaluate the answer, add the fusion object
 *                    and headers, queue the response
 *   stream_reader()  HTTP thread: hands relayed bytes to MHD; suspends when
 *                    it has none instead of spinning
 *   fh_txn_completed HTTP thread: evaluate a finished stream, record
 *                    metrics, release the overlay and the snapshot
 *
 * Threads and locks: t->lock guards every field marked (L); the HTTP thread
 * owns the others until it submits, after which they are read-only. The
 * suspend and resume of a connection both happen under t->lock and the
 * `suspended` flag, so each suspension is resumed exactly once. Lock order:
 * t->lock, then the upstream queue lock (inside fh_upstream_*); never the
 * reverse. Plugin code runs on the HTTP thread only.
 */
#include "pipeline.h"

#include "log.h"
#include "reason.h"
#include "request.h"

#include <assert.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define RESP_MAX      (64u << 20)  /* a non-streaming answer larger is a 502 */
#define STREAM_HIGH   (256u << 10) /* pause the upstream above this backlog */
#define STREAM_LOW    (64u << 10)  /* and resume it below this */
#define SSE_EVENT_MAX (1u << 20)   /* one SSE event larger is a broken upstream */
#define TEXT_MAX      (4u << 20)   /* streamed text kept for evaluation */
#define TXN_MAGIC     0x54584e31u  /* "TXN1", checked in debug builds */
#define TXN_CHECK(t)  assert((t)->magic == TXN_MAGIC)

typedef struct buf {
    char *data;
    size_t len, cap;
} buf;

typedef enum { PH_RECEIVING, PH_WAITING, PH_STREAMING, PH_ANSWERED } phase;

struct fh_txn {
    unsigned magic;
    atomic_int refs;
    pthread_mutex_t lock;
    fh_pipeline *p;
    struct MHD_Connection *conn; /* (L) NULL once MHD is done with it */
    fh_txn_kind kind;
    phase ph;
    fh_txn *prev, *next; /* live list, under p->live_lock */

    /* Request, HTTP thread. */
    buf in;
    bool in_too_large;
    size_t discarded; /* body bytes dropped past the limit */
    char request_id[48];
    fusion_request *req;
    fh_snapshot *snap;
    fh_generation *gen; /* the overlay in use, referenced until completion */
    fh_reason reason;
    bool overlaid;
    char overlay_name[FUSION_NAME_MAX + 1];
    char overlay_version[FUSION_VERSION_MAX + 1];
    char scenario[64];
    char *baseline_body;
    size_t baseline_len;
    bool client_stream;
    bool added_usage; /* we asked for usage the client did not want */
    uint64_t t_start_ns, t_submit_ns, t_done_ns;

    /* Upstream exchange (L). */
    fh_upstream_call *call;
    bool retried;
    bool suspended;
    long status;
    char content_type[128];
    bool streaming; /* relaying SSE to the client */
    bool done;
    fh_upstream_result result;
    char error[256];
    bool paused; /* upstream paused by backpressure */
    bool overflow;
    buf resp; /* whole answer, or the relay backlog */
    size_t resp_off;
    buf sse;            /* partial SSE event (upstream thread) */
    size_t sse_scanned; /* bytes of `sse` already searched for an event end */
    buf text;           /* assembled streamed answer */
    bool text_truncated;
    uint64_t upstream_ns; /* time spent in earlier upstream attempts */
    long usage_total, usage_prompt, usage_completion;
    bool have_usage;

    /* Outcome, HTTP thread. */
    double quality;
    bool have_quality;
    bool recorded;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int buf_add(buf *b, const char *d, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown)
            return -1;
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, d, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

static void buf_free(buf *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

static void mark_done(fh_txn *t, fh_upstream_result result, const char *error);
static void wake(fh_txn *t);

/* ---- lifecycle ----------------------------------------------------------- */

void fh_pipeline_init(fh_pipeline *p, fh_registry *reg, fh_upstream *up, fh_snapshot_holder *snaps,
                      fh_metrics *metrics)
{
    memset(p, 0, sizeof(*p));
    p->reg = reg;
    p->up = up;
    p->snaps = snaps;
    p->metrics = metrics;
    p->id_salt = (unsigned long)now_ns() ^ ((unsigned long)getpid() << 16);
    pthread_mutex_init(&p->live_lock, NULL);
}

void fh_pipeline_destroy(fh_pipeline *p)
{
    pthread_mutex_destroy(&p->live_lock);
}

static void txn_unref(fh_txn *t)
{
    if (atomic_fetch_sub(&t->refs, 1) != 1)
        return;
    t->magic = 0;
    if (t->gen)
        fh_generation_release(t->gen);
    fh_request_free(t->req);
    fh_snapshot_unref(t->snap);
    fh_upstream_call_release(t->call);
    free(t->baseline_body);
    buf_free(&t->in);
    buf_free(&t->resp);
    buf_free(&t->sse);
    buf_free(&t->text);
    pthread_mutex_destroy(&t->lock);
    free(t);
}

fh_txn *fh_txn_new(fh_pipeline *p, struct MHD_Connection *conn, fh_txn_kind kind)
{
    fh_txn *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->magic = TXN_MAGIC;
    atomic_init(&t->refs, 1); /* the HTTP side's, dropped in completed */
    pthread_mutex_init(&t->lock, NULL);
    t->p = p;
    t->conn = conn;
    t->kind = kind;
    t->t_start_ns = now_ns();
    t->reason = FH_REASON_NO_MATCH;
    snprintf(t->request_id, sizeof(t->request_id), "fh-%08lx-%lu", p->id_salt & 0xffffffffu,
             atomic_fetch_add(&p->next_id, 1) + 1);
    pthread_mutex_lock(&p->live_lock);
    t->next = p->live;
    if (p->live)
        p->live->prev = t;
    p->live = t;
    p->live_count++;
    pthread_mutex_unlock(&p->live_lock);
    return t;
}

int fh_txn_feed(fh_txn *t, const char *data, size_t len, size_t max_body)
{
    if (!t->in_too_large && t->in.len + len <= max_body && buf_add(&t->in, data, len) == 0)
        return 0;
    t->in_too_large = true; /* over the limit (or out of memory): 413 */
    t->discarded += len;
    /* Read and drop a while, so a client that sends before it reads is
     * still there for the 413; past twice the limit, cut it off. */
    return t->discarded > max_body ? -2 : -1;
}

size_t fh_pipeline_in_flight(fh_pipeline *p)
{
    pthread_mutex_lock(&p->live_lock);
    size_t n = p->live_count;
    pthread_mutex_unlock(&p->live_lock);
    return n;
}

size_t fh_pipeline_abort_all(fh_pipeline *p)
{
    atomic_store(&p->closing, true);
    size_t suspended = 0;
    pthread_mutex_lock(&p->live_lock);
    for (fh_txn *t = p->live; t; t = t->next) {
        pthread_mutex_lock(&t->lock);
        if (t->ph != PH_RECEIVING && !t->done) {
            mark_done(t, FH_UPSTREAM_CANCELLED, "fusion-host is stopping");
            if (t->call)
                fh_upstream_cancel(p->up, t->call);
        }
        if (t->done)
            wake(t);
        suspended += t->suspended;
        pthread_mutex_unlock(&t->lock);
    }
    pthread_mutex_unlock(&p->live_lock);
    return suspended;
}

/* ---- responses ------------------------------------------------------------ */

static enum MHD_Result queue(struct MHD_Connection *conn, unsigned status, struct MHD_Response *r)
{
    if (!r)
        return MHD_NO;
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

enum MHD_Result fh_http_error(struct MHD_Connection *conn, unsigned status, const char *type,
                              const char *code, const char *message)
{
    return fh_http_error_allow(conn, status, type, code, message, NULL);
}

enum MHD_Result fh_http_error_allow(struct MHD_Connection *conn, unsigned status, const char *type,
                                    const char *code, const char *message, const char *allow)
{
    json_t *o =
        json_pack("{s:{s:s, s:s, s:s}}", "error", "message", message, "type", type, "code", code);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text)
        return MHD_NO;
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "application/json");
    if (allow)
        MHD_add_response_header(r, "Allow", allow);
    return queue(conn, status, r);
}

static void add_fusion_headers(fh_txn *t, struct MHD_Response *r)
{
    char overlay[FUSION_NAME_MAX + FUSION_VERSION_MAX + 2];
    if (t->overlaid)
        snprintf(overlay, sizeof(overlay), "%s/%s", t->overlay_name, t->overlay_version);
    else
        snprintf(overlay, sizeof(overlay), "baseline");
    MHD_add_response_header(r, "X-Fusion-Overlay", overlay);
    MHD_add_response_header(r, "X-Fusion-Reason", fh_reason_name(t->reason));
    MHD_add_response_header(r, "X-Fusion-Request-Id", t->request_id);
    /* The host's own time: everything but the wait for the upstream. */
    uint64_t end = now_ns();
    uint64_t upstream =
        t->upstream_ns + (t->t_done_ns > t->t_submit_ns ? t->t_done_ns - t->t_submit_ns : 0);
    if (t->streaming)
        upstream = end - t->t_submit_ns; /* headers go out as the stream starts */
    uint64_t total = end - t->t_start_ns;
    double overhead = (double)(total > upstream ? total - upstream : 0) / 1e6;
    char ms[32];
    snprintf(ms, sizeof(ms), "%.3f", overhead);
    MHD_add_response_header(r, "X-Fusion-Overhead-Ms", ms);
}

/* ---- routing and submit ----------------------------------------------------- */

static const char *header(fh_txn *t, const char *name)
{
    return MHD_lookup_connection_value(t->conn, MHD_HEADER_KIND, name);
}

/* X-Fusion-* headers fill what the body's fusion object did not give. */
static int apply_headers(fh_txn *t, char *err, size_t errlen)
{
    fusion_request *r = t->req;
    const char *type = header(t, "X-Fusion-Scenario-Type");
    const char *id = header(t, "X-Fusion-Scenario-Id");
    const char *key = header(t, "X-Fusion-Key");
    const char *conf = header(t, "X-Fusion-Confidence");
    double confidence = r->confidence;
    if (conf && r->confidence < 0) {
        char *end = NULL;
        errno = 0;
        double v = strtod(conf, &end);
        if (errno || end == conf || *end || !isfinite(v) || v < 0 || v > 1) {
            snprintf(err, errlen, "X-Fusion-Confidence must be a number from 0 to 1");
            return -1;
        }
        confidence = v;
    }
    if (!type && !id && !key && confidence == r->confidence)
        return 0;
    return fh_request_set_context_checked(r, r->scenario_type ? r->scenario_type : type,
                                          r->scenario_id ? r->scenario_id : id,
                                          r->key ? r->key : key, confidence, err, errlen);
}

static fh_reason unavailable_reason(fh_overlay_state s)
{
    switch (s) {
    case FH_STATE_QUARANTINED:
        return FH_REASON_QUARANTINED;
    case FH_STATE_DISABLED:
    case FH_STATE_DRAINING:
        return FH_REASON_DISABLED;
    default:
        return FH_REASON_NO_MATCH; /* the feature has no loaded plugin */
    }
}

/* Decides overlay or baseline; on overlay, t->gen holds the reference. */
static void route(fh_txn *t)
{
    fusion_request *r = t->req;
    fh_route_ctx ctx = {.scenario_type = r->scenario_type,
                        .scenario_id = r->scenario_id,
                        .confidence = r->confidence,
                        .key = r->key,
                        .request_id = t->request_id};
    fh_route rt;
    fh_flags_route(t->snap->flags, t->snap->cfg->environment, &t->snap->ovr, &ctx, &rt);
    t->reason = rt.reason;
    if (!rt.feature)
        return;
    fh_overlay_state st = FH_STATE_COUNT;
    fh_generation *g = fh_registry_acquire(t->p->reg, rt.feature->name, &st);
    if (!g) {
        t->reason = unavailable_reason(st);
        return;
    }
    if (fh_generation_match(g, r) <= 0.0) {
        fh_generation_release(g);
        t->reason = FH_REASON_NO_MATCH;
        return;
    }
    const fusion_overlay_descriptor *d = fh_generation_descriptor(g);
    snprintf(t->overlay_name, sizeof(t->overlay_name), "%s", d->name);
    snprintf(t->overlay_version, sizeof(t->overlay_version), "%s", d->version);
    t->gen = g;
    t->reason = FH_REASON_APPLIED;
}

static void up_response(void *ud, long status, const char *content_type);
static int up_body(void *ud, const char *data, size_t len);
static void up_done(void *ud, fh_upstream_result result, long status, const char *error);
static const fh_upstream_handler handler = {up_response, up_body, up_done};

/* Under t->lock. */
static int submit(fh_txn *t, const char *body, size_t len)
{
    if (atomic_load(&t->p->closing))
        return -1;
    atomic_fetch_add(&t->refs, 1); /* the upstream side's, dropped in up_done */
    fh_upstream_call_release(t->call);
    t->call = t->kind == FH_TXN_MODELS
                  ? fh_upstream_submit(t->p->up, "GET", "/models", NULL, 0, 0, &handler, t)
                  : fh_upstream_submit(t->p->up, "POST", "/chat/completions", body, len,
                                       t->client_stream, &handler, t);
    if (!t->call) {
        atomic_fetch_sub(&t->refs, 1);
        return -1;
    }
    t->status = 0;
    t->content_type[0] = '\0';
    t->resp.len = t->resp_off = 0;
    t->overflow = false;
    return 0;
}

/* Under t->lock: every later upstream callback for this txn is ignored. */
static void mark_done(fh_txn *t, fh_upstream_result result, const char *error)
{
    t->done = true;
    t->result = result;
    t->t_done_ns = now_ns();
    snprintf(t->error, sizeof(t->error), "%s", error ? error : "");
}

/* Under t->lock: parks the connection until the upstream has news. */
static void suspend(fh_txn *t)
{
    t->suspended = true;
    MHD_suspend_connection(t->conn);
}

/* Under t->lock: the counterpart, exactly once per suspension. */
static void wake(fh_txn *t)
{
    if (t->suspended && t->conn) {
        t->suspended = false;
        MHD_resume_connection(t->conn);
    }
}

/* Sets t->baseline_body: the caller's request as the upstream must see it
 * for the baseline. The bytes as sent when nothing had to change (no
 * `fusion` object, no usage request added); else re-serialised, from
 * t->req when it is still untouched by an overlay (`pristine`), or from
 * the original bytes. Any thread that owns the txn's request side. */
static int make_baseline(fh_txn *t, bool pristine)
{
    if (t->baseline_body)
        return 0;
    bool as_sent = !t->added_usage && !t->req->had_fusion;
    if (as_sent) {
        t->baseline_body = malloc(t->in.len + 1);
        if (!t->baseline_body)
            return -1;
        memcpy(t->baseline_body, t->in.data, t->in.len);
        t->baseline_body[t->in.len] = '\0';
        t->baseline_len = t->in.len;
        return 0;
    }
    if (pristine) {
        t->baseline_body = fh_request_dump(t->req, 0);
    } else {
        char err[64];
        fusion_request *orig = fh_request_parse(t->in.data, t->in.len, err, sizeof(err));
        if (orig && t->added_usage) {
            json_t *so = json_object_get(orig->body, "stream_options");
            if (!json_is_object(so)) {
                so = json_object();
                json_object_set_new(orig->body, "stream_options", so);
            }
            json_object_set_new(so, "include_usage", json_true());
        }
        t->baseline_body = orig ? fh_request_dump(orig, 0) : NULL;
        fh_request_free(orig);
    }
    if (!t->baseline_body)
        return -1;
    t->baseline_len = strlen(t->baseline_body);
    return 0;
}

enum MHD_Result fh_txn_reject_too_large(fh_txn *t)
{
    if (t->ph != PH_RECEIVING)
        return MHD_YES; /* answered already */
    t->ph = PH_ANSWERED;
    return fh_http_error(t->conn, 413, "invalid_request_error", "request_too_large",
                         "request body is larger than limits.max_body_bytes");
}

static enum MHD_Result txn_start(fh_txn *t)
{
    char err[256];
    if (t->kind == FH_TXN_MODELS) {
        pthread_mutex_lock(&t->lock);
        t->t_submit_ns = now_ns();
        int rc = submit(t, NULL, 0);
        pthread_mutex_unlock(&t->lock);
        t->ph = PH_WAITING;
        return rc == 0 ? fh_txn_step(t)
                       : fh_http_error(t->conn, 503, "server_error", "shutting_down",
                                       "fusion-host is stopping");
    }
    if (t->in_too_large)
        return fh_http_error(t->conn, 413, "invalid_request_error", "request_too_large",
                             "request body is larger than limits.max_body_bytes");
    t->snap = fh_snapshot_get(t->p->snaps);
    t->req = fh_request_parse(t->in.data ? t->in.data : "", t->in.len, err, sizeof(err));
    if (!t->req)
        return fh_http_error(t->conn, 400, "invalid_request_error", "invalid_body", err);
    if (apply_headers(t, err, sizeof(err)) != 0)
        return fh_http_error(t->conn, 400, "invalid_request_error", "invalid_fusion", err);
    fh_request_set_id(t->req, t->request_id);
    snprintf(t->scenario, sizeof(t->scenario), "%s",
             t->req->scenario_type && *t->req->scenario_type ? t->req->scenario_type : "none");

    json_t *stream = json_object_get(t->req->body, "stream");
    if (stream && !json_is_boolean(stream))
        return fh_http_error(t->conn, 400, "invalid_request_error", "invalid_stream",
                             "'stream' must be true or false");
    t->client_stream = json_is_true(stream);
    if (t->client_stream) {
        /* Token accounting needs usage; ask for it and hide it again. */
        json_t *so = json_object_get(t->req->body, "stream_options");
        if (so && !json_is_object(so))
            return fh_http_error(t->conn, 400, "invalid_request_error", "invalid_stream_options",
                                 "'stream_options' must be an object");
        if (!json_is_true(json_object_get(so, "include_usage"))) {
            if (!so) {
                so = json_object();
                json_object_set_new(t->req->body, "stream_options", so);
            }
            json_object_set_new(so, "include_usage", json_true());
            t->added_usage = true;
        }
    }

    route(t);
    char *overlay_body = NULL;
    if (t->gen) {
        if (fh_generation_apply(t->gen, t->req) != 0 ||
            !(overlay_body = fh_request_dump(t->req, 0))) {
            fh_warn("overlay %s/%s: apply failed for request %s; serving the baseline",
                    t->overlay_name, t->overlay_version, t->request_id);
            t->reason = FH_REASON_HOOK_ERROR;
        } else {
            t->overlaid = true;
        }
    }
    /* The baseline body is built only when it is sent: most overlaid
     * requests never need it (see make_baseline). */
    if (!t->overlaid && make_baseline(t, t->reason != FH_REASON_HOOK_ERROR) != 0)
        return fh_http_error(t->conn, 500, "server_error", "out_of_memory", "out of memory");
    if (fh_log_get_level() >= FH_LOG_DEBUG) {
        char f_id[80], f_scn[90], f_ovl[100], f_rsn[64];
        snprintf(f_id, sizeof(f_id), "FUSION_REQUEST_ID=%s", t->request_id);
        snprintf(f_scn, sizeof(f_scn), "FUSION_SCENARIO=%s", t->scenario);
        snprintf(f_ovl, sizeof(f_ovl), "FUSION_DECISION=%s",
                 t->overlaid ? t->overlay_name : "baseline");
        snprintf(f_rsn, sizeof(f_rsn), "FUSION_REASON=%s", fh_reason_name(t->reason));
        const char *fields[] = {f_id, f_scn, f_ovl, f_rsn, NULL};
        fh_log_fields(FH_LOG_DEBUG, fields, "request routed");
    }

    pthread_mutex_lock(&t->lock);
    t->t_submit_ns = now_ns();
    int rc = t->overlaid ? submit(t, overlay_body, strlen(overlay_body))
                         : submit(t, t->baseline_body, t->baseline_len);
    pthread_mutex_unlock(&t->lock);
    free(overlay_body);
    t->ph = PH_WAITING;
    if (rc != 0)
        return fh_http_error(t->conn, 503, "server_error", "shutting_down",
                             "fusion-host is stopping or out of memory");
    /* Suspends, or answers at once if the upstream was quicker than us:
     * MHD would not call us again for a connection with nothing to do. */
    return fh_txn_step(t);
}

/* ---- upstream thread ----------------------------------------------------------- */

static void up_response(void *ud, long status, const char *content_type)
{
    fh_txn *t = ud;
    TXN_CHECK(t);
    pthread_mutex_lock(&t->lock);
    t->status = status;
    snprintf(t->content_type, sizeof(t->content_type), "%s", content_type ? content_type : "");
    if (t->client_stream && status == 200 &&
        strncasecmp(t->content_type, "text/event-stream", 17) == 0) {
        t->streaming = true;
        wake(t); /* the HTTP thread queues the streaming response */
    }
    pthread_mutex_unlock(&t->lock);
}

/* Usage from a parsed chunk or answer. */
static void take_usage(fh_txn *t, json_t *usage)
{
    if (!json_is_object(usage))
        return;
    t->usage_prompt = (long)json_integer_value(json_object_get(usage, "prompt_tokens"));
    t->usage_completion = (long)json_integer_value(json_object_get(usage, "completion_tokens"));
    t->usage_total = (long)json_integer_value(json_object_get(usage, "total_tokens"));
    t->have_usage = true;
}

/* One complete SSE event (up to and including its blank line): collect the
 * text and usage, and relay it - without the usage the client did not ask
 * for. Under t->lock. */
static void relay_event(fh_txn *t, const char *ev, size_t len)
{
    const char *data = NULL;
    for (const char *line = ev; line < ev + len;) {
        const char *eol = memchr(line, '\n', (size_t)(ev + len - line));
        if (!eol)
            eol = ev + len;
        if (eol - line >= 5 && strncmp(line, "data:", 5) == 0) {
            data = line + 5;
            while (data < eol && *data == ' ')
                data++;
            break;
        }
        line = eol + 1;
    }
    json_t *chunk = NULL;
    if (data && *data == '{')
        chunk = json_loadb(data, (size_t)(ev + len - data), JSON_DISABLE_EOF_CHECK, NULL);
    if (!chunk) {
        buf_add(&t->resp, ev, len); /* [DONE], comments, anything else: as is */
        return;
    }
    json_t *choices = json_object_get(chunk, "choices");
    const char *piece = json_string_value(
        json_object_get(json_object_get(json_array_get(choices, 0), "delta"), "content"));
    if (piece && !t->text_truncated) {
        size_t n = strlen(piece);
        if (t->text.len + n > TEXT_MAX || buf_add(&t->text, piece, n) != 0)
            t->text_truncated = true; /* relayed, but too long to evaluate */
    }
    json_t *usage = json_object_get(chunk, "usage");
    if (json_is_object(usage))
        take_usage(t, usage);
    if (usage && t->added_usage) {
        if (json_is_object(usage) && json_is_array(choices) && json_array_size(choices) == 0) {
            json_decref(chunk); /* the usage-only chunk: drop it */
            return;
        }
        /* "usage": null on every chunk, or usage riding on a chunk with
         * choices: remove just the field the client did not ask for. */
        json_object_del(chunk, "usage");
        char *s = json_dumps(chunk, JSON_COMPACT);
        if (s) {
            buf_add(&t->resp, "data: ", 6);
            buf_add(&t->resp, s, strlen(s));
            buf_add(&t->resp, "\n\n", 2);
            free(s);
            json_decref(chunk);
            return;
        }
    }
    json_decref(chunk);
    buf_add(&t->resp, ev, len);
}

/* Splits the upstream bytes into events at blank lines. Under t->lock. */
static int relay_bytes(fh_txn *t, const char *d, size_t n)
{
    if (buf_add(&t->sse, d, n) != 0)
        return -1;
    size_t start = 0;
    /* Resume the search where the last one stopped (less the 3 bytes an
     * event end may straddle): a long event costs linear time. */
    size_t from = t->sse_scanned > 3 ? t->sse_scanned - 3 : 0;
    for (size_t i = from; i + 1 < t->sse.len; i++) {
        size_t end = 0;
        if (t->sse.data[i] == '\n' && t->sse.data[i + 1] == '\n')
            end = i + 2;
        else if (i + 3 < t->sse.len && memcmp(t->sse.data + i, "\r\n\r\n", 4) == 0)
            end = i + 4;
        if (end && i >= start) {
            relay_event(t, t->sse.data + start, end - start);
            start = end;
            i = end - 1;
        }
    }
    memmove(t->sse.data, t->sse.data + start, t->sse.len - start);
    t->sse.len -= start;
    t->sse_scanned = t->sse.len;
    return t->sse.len > SSE_EVENT_MAX ? -1 : 0;
}

static int up_body(void *ud, const char *data, size_t len)
{
    fh_txn *t = ud;
    TXN_CHECK(t);
    int rc = 0;
    pthread_mutex_lock(&t->lock);
    if (t->done || !t->conn) {
        rc = -1; /* aborted, or the client is gone: stop the transfer */
    } else if (t->streaming) {
        if (t->resp.len - t->resp_off > STREAM_HIGH) {
            t->paused = true; /* curl keeps the data and gives it again */
            rc = 1;
        } else if (relay_bytes(t, data, len) != 0) {
            fh_warn("request %s: the upstream stream has an event over 1 MiB or we are out "
                    "of memory; ending the stream",
                    t->request_id);
            rc = -1;
        } else {
            wake(t);
        }
    } else if (t->resp.len + len > RESP_MAX || buf_add(&t->resp, data, len) != 0) {
        t->overflow = true;
        rc = -1;
    }
    pthread_mutex_unlock(&t->lock);
    return rc;
}

/* A 4xx the caller's own request would not have caused: the overlay made
 * the upstream refuse it. 408 and 429 are about timing, not content. */
static bool overlay_rejected(const fh_txn *t, fh_upstream_result result)
{
    return t->overlaid && !t->retried && result == FH_UPSTREAM_OK && t->status >= 400 &&
           t->status < 500 && t->status != 408 && t->status != 429;
}

static void up_done(void *ud, fh_upstream_result result, long status, const char *error)
{
    fh_txn *t = ud;
    TXN_CHECK(t);
    pthread_mutex_lock(&t->lock);
    if (t->done) { /* aborted at shutdown: already answered */
        pthread_mutex_unlock(&t->lock);
        txn_unref(t);
        return;
    }
    if (status)
        t->status = status;
    if (overlay_rejected(t, result) && t->conn) {
        fh_warn("overlay %s/%s: the upstream refused the overlaid request %s with %ld; "
                "retrying it as the baseline",
                t->overlay_name, t->overlay_version, t->request_id, t->status);
        t->retried = true;
        uint64_t now = now_ns();
        if (make_baseline(t, false) == 0 && submit(t, t->baseline_body, t->baseline_len) == 0) {
            t->overlaid = false;
            t->reason = FH_REASON_OVERLAY_REJECTED_UPSTREAM;
            t->upstream_ns += now - t->t_submit_ns;
            t->t_submit_ns = now;
            pthread_mutex_unlock(&t->lock);
            txn_unref(t);
            return;
        }
    }
    if (t->streaming && t->sse.len) {
        buf_add(&t->resp, t->sse.data, t->sse.len); /* an unterminated tail */
        t->sse.len = 0;
    }
    mark_done(t, result, error);
    wake(t);
    pthread_mutex_unlock(&t->lock);
    txn_unref(t);
}

/* ---- HTTP thread: answers --------------------------------------------------- */

static ssize_t stream_reader(void *cls, uint64_t pos, char *out, size_t max)
{
    fh_txn *t = cls;
    TXN_CHECK(t);
    (void)pos;
    ssize_t rc;
    pthread_mutex_lock(&t->lock);
    size_t avail = t->resp.len - t->resp_off;
    if (avail > 0) {
        size_t n = avail < max ? avail : max;
        memcpy(out, t->resp.data + t->resp_off, n);
        t->resp_off += n;
        if (t->resp_off == t->resp.len)
            t->resp.len = t->resp_off = 0;
        if (t->paused && t->resp.len - t->resp_off < STREAM_LOW) {
            t->paused = false;
            fh_upstream_resume(t->p->up, t->call);
        }
        rc = (ssize_t)n;
    } else if (t->done) {
        rc = t->result == FH_UPSTREAM_OK ? MHD_CONTENT_READER_END_OF_STREAM
                                         : MHD_CONTENT_READER_END_WITH_ERROR;
    } else {
        suspend(t); /* nothing yet: park instead of being polled in a loop */
        rc = 0;
    }
    pthread_mutex_unlock(&t->lock);
    return rc;
}

static void stream_free(void *cls)
{
    txn_unref(cls);
}

static enum MHD_Result start_stream(fh_txn *t)
{
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024,
                                                               stream_reader, t, stream_free);
    if (!r)
        return MHD_NO;
    atomic_fetch_add(&t->refs, 1); /* the response's, dropped in stream_free */
    MHD_add_response_header(r, "Content-Type", "text/event-stream");
    MHD_add_response_header(r, "Cache-Control", "no-cache");
    add_fusion_headers(t, r);
    t->ph = PH_STREAMING;
    return queue(t->conn, 200, r);
}

static void evaluate(fh_txn *t, const char *answer, size_t len)
{
    if (!t->overlaid || !t->gen || !answer)
        return;
    fusion_evaluation ev;
    memset(&ev, 0, sizeof(ev));
    if (fh_generation_evaluate(t->gen, t->req, answer, len, &ev) != 0) {
        fh_warn("overlay %s/%s: evaluate failed for request %s", t->overlay_name,
                t->overlay_version, t->request_id);
        return;
    }
    if (!isfinite(ev.quality)) {
        fh_warn("overlay %s/%s: evaluate returned a quality that is not a number for request "
                "%s; ignoring it",
                t->overlay_name, t->overlay_version, t->request_id);
        return;
    }
    t->quality = ev.quality < 0 ? 0 : (ev.quality > 1 ? 1 : ev.quality);
    t->have_quality = true;
}

static json_t *fusion_object(fh_txn *t)
{
    double latency = (double)(now_ns() - t->t_start_ns) / 1e6;
    json_t *o = json_object();
    json_object_set_new(o, "overlay", t->overlaid ? json_string(t->overlay_name) : json_null());
    json_object_set_new(o, "overlay_version",
                        t->overlaid ? json_string(t->overlay_version) : json_null());
    json_object_set_new(o, "decision", json_string(t->overlaid ? "overlay" : "baseline"));
    json_object_set_new(o, "reason", json_string(fh_reason_name(t->reason)));
    json_object_set_new(o, "quality_score", t->have_quality ? json_real(t->quality) : json_null());
    json_object_set_new(o, "token_delta_pct", json_null());
    json_object_set_new(o, "latency_ms", json_real(round(latency * 1000) / 1000));
    json_object_set_new(o, "request_id", json_string(t->request_id));
    return o;
}

/* The upstream's answer with our `fusion` object added. The upstream's
 * bytes are kept as they are and the object spliced in before the closing
 * brace: re-serialising the whole answer would cost more than the rest of
 * the request. */
static char *with_fusion_object(fh_txn *t, json_t *answer, size_t *len)
{
    json_t *fusion = fusion_object(t);
    char *obj = fusion ? json_dumps(fusion, JSON_COMPACT | JSON_REAL_PRECISION(12)) : NULL;
    char *out = NULL;
    size_t end = t->resp.len;
    while (end > 0 && t->resp.data[end - 1] != '}')
        end--;
    if (obj && end > 0 && !json_object_get(answer, "fusion")) {
        const char *sep = json_object_size(answer) ? "," : "";
        size_t olen = strlen(obj);
        *len = (end - 1) + strlen(sep) + 9 + olen + 1;
        out = malloc(*len + 1);
        if (out) {
            char *p = out;
            memcpy(p, t->resp.data, end - 1);
            p += end - 1;
            p += sprintf(p, "%s\"fusion\":", sep);
            memcpy(p, obj, olen);
            p += olen;
            *p++ = '}';
            *p = '\0';
        }
    } else if (fusion) {
        /* An upstream that sends its own `fusion` key: ours replaces it. */
        json_object_set(answer, "fusion", fusion);
        out = json_dumps(answer, JSON_COMPACT | JSON_REAL_PRECISION(12));
        *len = out ? strlen(out) : 0;
    }
    json_decref(fusion);
    free(obj);
    return out;
}

static enum MHD_Result upstream_failed(fh_txn *t)
{
    char msg[400];
    if (t->result == FH_UPSTREAM_TIMEOUT) {
        snprintf(msg, sizeof(msg), "the upstream did not answer in time (%s)", t->error);
        return fh_http_error(t->conn, 504, "upstream_error", "upstream_timeout", msg);
    }
    if (t->result == FH_UPSTREAM_CANCELLED)
        return fh_http_error(t->conn, 503, "server_error", "shutting_down",
                             "fusion-host is stopping");
    if (t->result == FH_UPSTREAM_INTERNAL)
        return fh_http_error(t->conn, 500, "server_error", "internal_error",
                             "fusion-host could not make the upstream call (out of memory?)");
    snprintf(msg, sizeof(msg), "the upstream is unreachable or broke the connection (%s)",
             t->error);
    return fh_http_error(t->conn, 502, "upstream_error", "upstream_unreachable", msg);
}

static enum MHD_Result txn_respond(fh_txn *t)
{
    t->ph = PH_ANSWERED;
    if (t->result != FH_UPSTREAM_OK)
        return upstream_failed(t);
    if (t->overflow)
        return fh_http_error(t->conn, 502, "upstream_error", "upstream_invalid",
                             "the upstream answer is larger than 64 MiB");
    unsigned status = t->status >= 100 && t->status < 600 ? (unsigned)t->status : 502;
    json_t *answer = t->resp.len ? json_loadb(t->resp.data, t->resp.len, 0, NULL) : NULL;
    if (status >= 200 && status < 300 && !json_is_object(answer)) {
        json_decref(answer);
        return fh_http_error(t->conn, 502, "upstream_error", "upstream_invalid",
                             "the upstream answered 2xx with a body that is not a JSON object");
    }
    char *body = NULL;
    size_t len = 0;
    if (t->kind == FH_TXN_CHAT && json_is_object(answer) && status < 300) {
        const char *content = json_string_value(json_object_get(
            json_object_get(json_array_get(json_object_get(answer, "choices"), 0), "message"),
            "content"));
        evaluate(t, content, content ? strlen(content) : 0);
        take_usage(t, json_object_get(answer, "usage"));
        body = with_fusion_object(t, answer, &len);
    }
    json_decref(answer);
    struct MHD_Response *r;
    if (body) {
        r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    } else {
        /* Relayed as received: models, upstream errors. */
        r = MHD_create_response_from_buffer(t->resp.len, t->resp.data, MHD_RESPMEM_MUST_COPY);
    }
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type",
                            body || !t->content_type[0] ? "application/json" : t->content_type);
    if (t->kind == FH_TXN_CHAT)
        add_fusion_headers(t, r);
    return queue(t->conn, status, r);
}

enum MHD_Result fh_txn_step(fh_txn *t)
{
    TXN_CHECK(t);
    if (t->ph == PH_RECEIVING && atomic_load(&t->p->closing)) {
        t->ph = PH_ANSWERED;
        return fh_http_error(t->conn, 503, "server_error", "draining", "fusion-host is stopping");
    }
    if (t->ph == PH_RECEIVING)
        return txn_start(t);
    if (t->ph != PH_WAITING)
        return MHD_YES;
    pthread_mutex_lock(&t->lock);
    bool streaming = t->streaming, done = t->done;
    if (!streaming && !done)
        suspend(t); /* nothing yet (or a retry started): wait for news */
    pthread_mutex_unlock(&t->lock);
    if (streaming)
        return start_stream(t);
    if (done)
        return txn_respond(t);
    return MHD_YES;
}

void fh_txn_completed(fh_txn *t, enum MHD_RequestTerminationCode toe)
{
    TXN_CHECK(t);
    fh_pipeline *p = t->p;
    pthread_mutex_lock(&t->lock);
    t->conn = NULL;
    bool cancel = t->call && !t->done;
    if (cancel)
        fh_upstream_cancel(p->up, t->call); /* client gone: stop the transfer */
    bool streamed_ok = t->streaming && t->done && t->result == FH_UPSTREAM_OK;
    pthread_mutex_unlock(&t->lock);

    if (t->kind == FH_TXN_CHAT && t->req) {
        if (streamed_ok)
            evaluate(t, t->text.data, t->text.len);
        double latency = (double)(now_ns() - t->t_start_ns) / 1e6;
        const char *overlay = t->overlaid ? t->overlay_name : "baseline";
        fh_metrics_request(p->metrics, overlay, t->scenario, fh_reason_name(t->reason), latency);
        if (t->have_quality)
            fh_metrics_quality(p->metrics, overlay, t->scenario, t->quality);
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
            fh_debug("request %s ended early (client gone or error %d)", t->request_id, (int)toe);
    }
    if (t->gen) {
        fh_generation_release(t->gen);
        t->gen = NULL;
    }
    pthread_mutex_lock(&p->live_lock);
    if (t->prev)
        t->prev->next = t->next;
    else
        p->live = t->next;
    if (t->next)
        t->next->prev = t->prev;
    p->live_count--;
    pthread_mutex_unlock(&p->live_lock);
    txn_unref(t);
}
