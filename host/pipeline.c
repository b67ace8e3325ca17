/*
 * pipeline.c - see pipeline.h. The data path reads top to bottom:
 *
 *   fh_txn_step()     HTTP: the body is in; wait, queue the START job
 *   txn_start()       job: parse, route, match + apply (door), submit upstream
 *   up_response()     curl: status line in; a 200 SSE answer to a streaming
 *                     client switches the txn to relaying
 *   up_body()         curl: buffer (or relay, with backpressure)
 *   up_done()         loop: overlay rejected with a 4xx? retry as baseline;
 *                     else queue the ANSWER job (or end the relayed stream)
 *   txn_answer()      job: evaluate (door), build the response, resume
 *   fh_txn_step()     HTTP: queue the prepared response (or the stream)
 *   stream_reader()   HTTP: hands relayed bytes over; waits when it has none
 *   fh_txn_completed  HTTP: the request is over (or the client left: cancel
 *                     the upstream call); queue the finish
 *   txn_finish()      job: evaluate a finished stream (door), record metrics,
 *                     release the overlay and the snapshot
 *
 * Threads: everything here runs on the worker's runner (pipeline.h); no
 * locks. Plugin hooks run only from jobs, through run_hook(): if the door
 * detaches the call, the job returns HOOK_LEFT all the way up without
 * touching anything, and the request continues in frame_resumed() once the
 * call returns or its deadline passes.
 *
 * Ownership: a txn is reference counted (plain int, runner only): the HTTP
 * side's reference until the finish, the streaming response's until the
 * connection frees it, and a hook call's while it runs. While a hook runs, the call
 * owns the request, the overlay reference and the answer it reads (door.h);
 * a call abandoned at its deadline keeps them, and the request is then
 * served from the caller's original bytes.
 */
#include "pipeline.h"

#include "apierror.h"
#include "gates.h"
#include "jfast.h"
#include "log.h"
#include "reason.h"
#include "request.h"
#include "util.h"

#include <assert.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <unistd.h>

#define RESP_MAX      (64u << 20)  /* a non-streaming answer larger is a 502 */
#define STREAM_HIGH   (256u << 10) /* pause the upstream above this backlog */
#define STREAM_LOW    (64u << 10)  /* and resume it below this */
#define SSE_EVENT_MAX (1u << 20)   /* one SSE event larger is a broken upstream */
#define TEXT_MAX      (4u << 20)   /* streamed text kept for evaluation */
#define TXN_MAGIC     0x54584e32u  /* "TXN2" */
#define HUNG_MAX      4            /* an overlay with this many calls hung gets no more */

/* A broken invariant here corrupts memory: checked in release builds too. */
#define TXN_CHECK(t)                                                                               \
    do {                                                                                           \
        if ((t)->magic != TXN_MAGIC) {                                                             \
            fh_error("pipeline: request object corrupt at %s:%d", __FILE__, __LINE__);             \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

typedef struct buf {
    char *data;
    size_t len, cap;
} buf;

typedef enum { PH_RECEIVING, PH_WAITING, PH_STREAMING, PH_ANSWERED } phase;
typedef enum { JOB_NONE, JOB_START, JOB_ANSWER, JOB_RESUMED } job_kind;
typedef enum { HOOK_OK, HOOK_LEFT } hook_result;

/* A worker's view of the config snapshot: one shared reference, many
 * requests counted without atomics. */
/* A snapshot as this worker uses it: with the upstream target built from
 * it, so a request's config and its upstream (URL, key, timeouts) are
 * always the same reload's, retries included. */
typedef struct snap_ref {
    fh_snapshot *snap;
    fh_upstream_target *tg; /* NULL: the upstream's current one */
    unsigned users;         /* the pipe's (while current) + one per request */
} snap_ref;

struct fh_pipe {
    fh_pipeline *p;
    fh_worker *w;
    fh_upstream *up;
    TAILQ_HEAD(, fh_txn) ready; /* txns with a job to run */
    TAILQ_HEAD(, fh_txn) live;  /* every txn not yet finished */
    snap_ref *snap;
    fh_upstream_call *probe; /* /health's reachability probe, while one runs */
    uint64_t probe_at;
};

struct fh_txn {
    unsigned magic;
    int refs;
    fh_pipe *pp;
    fh_hconn *conn; /* NULL once the connection is done with it */
    fh_txn_kind kind;
    phase ph;
    job_kind job;
    bool queued;
    TAILQ_ENTRY(fh_txn) qlink;
    TAILQ_ENTRY(fh_txn) llink;

    /* Request. */
    buf in;
    size_t max_body; /* limits.max_body_bytes when the request came */
    bool in_too_large;
    bool bad_status; /* the upstream's status was not a usable final answer */
    /* Gates: the overlay's admission, its settings, and what the budget
     * needs (the baseline request's prompt estimate, the token delta). */
    fh_gate_ticket ticket;
    fh_gate_cfg gcfg;
    long prompt_est;         /* the caller's prompt, estimated */
    long prompt_est_overlay; /* the overlaid prompt, estimated (after apply) */
    long overlay_used;       /* tokens of the overlaid call: -1 unknown (charge the estimate) */
    bool overlay_called;     /* an overlaid call went upstream */
    long rejected_status;    /* the overlaid call's 4xx, when retried as the baseline */
    bool hook_failed;        /* a hook errored or passed its deadline (evaluate included) */
    json_t *pre_apply;       /* the caller's values of the model's refused parameters */
    const fh_model_rule *model_rule;
    double delta_pct;
    bool have_delta;
    char request_id[48];
    char client[65];       /* the client key's name (auth.keys_file), "" when none */
    char *proxy_path;      /* PROXY: the path after /v1, query included */
    char proxy_method[16]; /* PROXY: the caller's method */
    char proxy_route[24];  /* PROXY: the metrics label */
    fusion_request *req;
    snap_ref *snap;
    fh_generation *gen;    /* the overlay in use, referenced until the finish */
    unsigned long gen_seq; /* its load number: a timeout quarantines that one only */
    fh_reason reason;
    bool overlaid, had_fusion;
    char overlay_name[FUSION_NAME_MAX + 1];
    char overlay_version[FUSION_VERSION_MAX + 1];
    char scenario[64];
    char *baseline_body;
    size_t baseline_len;
    char *up_body; /* what is being sent upstream (owned) */
    bool client_stream;
    bool added_usage; /* we asked for usage the client did not want */

    /* The hook in flight, if any, and the last one's outputs. */
    bool in_hook;
    fh_hook_kind hook_kind;
    bool hook_timed_out;
    bool evaluated; /* evaluate() was called (streams: at the finish) */
    int hook_rc;
    double hook_score;
    double hook_quality;

    /* Upstream exchange. */
    fh_upstream_call *call;
    bool retried;
    bool suspended;
    long status;
    char content_type[128];
    bool streaming;    /* relaying SSE to the client */
    bool stream_bad;   /* the upstream sent an event that is not one: relaying stopped */
    char *up_headers;  /* the answer's headers a client reads (upstream.h), or NULL */
    bool stream_ended; /* the final error event is queued */
    bool done;         /* the upstream exchange is over */
    fh_upstream_result result;
    char error[256];
    bool paused; /* upstream paused by backpressure */
    bool overflow;
    buf resp; /* whole answer, or the relay backlog */
    size_t resp_off;
    buf sse;            /* partial SSE event */
    size_t sse_scanned; /* bytes of `sse` already searched for an event end */
    buf text;           /* assembled streamed answer */
    bool text_truncated;
    long usage_total, usage_prompt, usage_completion;
    bool have_usage;
    bool answer_has_fusion, answer_empty; /* of a complete JSON answer */

    /* Response. */
    fh_hresp *response; /* prepared by a job, queued by the request callback */
    unsigned response_status;

    /* Time: the host's own share (SPEC: overhead) leaves out the client's
     * upload and the upstream's answer. */
    uint64_t t_start_ns, t_body_ns, t_submit_ns, t_headers_ns;
    uint64_t upstream_ns; /* the upstream's share of finished attempts */
    uint64_t relay_ns;    /* host time spent relaying a stream */
    uint64_t hook_ns;
    double overhead_ms; /* as reported in X-Fusion-Overhead-Ms */
    bool have_overhead; /* a response with the fusion headers was made */

    /* Outcome. */
    double quality;
    bool have_quality;
    bool completed; /* the connection is done with it */
    bool aborted;   /* shutdown ended it */
    fh_hend toe;
};

static const fh_upstream_handler handler;

/* ---- buffers --------------------------------------------------------------- */

/* Room for n more bytes and a NUL. */
static int buf_reserve(buf *b, size_t n)
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
    return 0;
}

static int buf_add(buf *b, const char *d, size_t n)
{
    if (buf_reserve(b, n) != 0)
        return -1;
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

/* ---- snapshots -------------------------------------------------------------- */

static void snap_release(snap_ref *s)
{
    if (s && --s->users == 0) {
        fh_snapshot_unref(s->snap);
        fh_upstream_target_free(s->tg);
        free(s);
    }
}

/* The upstream settings of a config (the API key read from its variable). */
void fh_upstream_opts_of(const fh_config *cfg, fh_upstream_opts *o)
{
    const char *key_env = cfg->upstream.api_key_env;
    /* With forward_client_key the caller's own key goes instead (submit). */
    *o = (fh_upstream_opts){.base_url = cfg->upstream.base_url,
                            .api_key = key_env && *key_env && !cfg->upstream.forward_client_key
                                           ? getenv(key_env)
                                           : NULL,
                            .timeout_ms = cfg->upstream.timeout_ms,
                            .idle_timeout_ms = cfg->upstream.idle_timeout_ms,
                            .connect_timeout_ms = cfg->upstream.connect_timeout_ms};
}

/* The worker's current snapshot, refreshed when a reload installed one. */
static snap_ref *snap_take(fh_pipe *pp)
{
    fh_snapshot_holder *h = pp->p->snaps;
    if (!pp->snap || pp->snap->snap->generation != fh_snapshot_installed(h)) {
        snap_ref *s = malloc(sizeof(*s));
        if (s && (s->snap = fh_snapshot_get(h)) != NULL) {
            s->users = 1;
            /* The reload checked the URL; a failure here is memory, and
             * the previous target then serves. */
            fh_upstream_opts o;
            char err[256];
            fh_upstream_opts_of(s->snap->cfg, &o);
            s->tg = fh_upstream_target_new(&o, err, sizeof(err));
            if (s->tg)
                fh_upstream_retarget(pp->up, fh_upstream_target_ref(s->tg));
            snap_release(pp->snap);
            pp->snap = s;
        } else {
            free(s);
        }
    }
    if (!pp->snap)
        return NULL;
    pp->snap->users++;
    return pp->snap;
}

/* ---- lifecycle ---------------------------------------------------------------- */

void fh_pipeline_init(fh_pipeline *p, fh_registry *reg, fh_snapshot_holder *snaps,
                      fh_metrics *metrics, int hook_deadline_ms)
{
    memset(p, 0, sizeof(*p));
    p->reg = reg;
    p->snaps = snaps;
    p->metrics = metrics;
    p->id_salt = (unsigned long)fh_now_ns() ^ ((unsigned long)getpid() << 16);
    p->id_prefix_len =
        (size_t)snprintf(p->id_prefix, sizeof(p->id_prefix), "fh-%08lx-", p->id_salt & 0xffffffffu);
    p->hook_deadline_ns = (uint64_t)hook_deadline_ms * 1000000u;
    atomic_init(&p->in_flight, 0);
}

static void note_reachable(fh_pipeline *p, const fh_upstream_done *d);

const fh_config *fh_pipe_config(fh_pipe *pp)
{
    snap_ref *s = snap_take(pp);
    if (!s)
        return NULL;
    const fh_config *c = s->snap->cfg;
    snap_release(s); /* pp->snap still holds it until a reload is seen here */
    return c;
}

int fh_txn_set_proxy(fh_txn *t, const char *method, const char *path, const char *route)
{
    if (strlen(method) >= sizeof(t->proxy_method))
        return -1;
    free(t->proxy_path);
    t->proxy_path = strdup(path);
    /* HEAD is sent as GET: the connection drops the body for the client. */
    fh_strlcpy(t->proxy_method, strcmp(method, "HEAD") == 0 ? "GET" : method,
               sizeof(t->proxy_method));
    fh_strlcpy(t->proxy_route, route, sizeof(t->proxy_route));
    fh_strlcpy(t->scenario, route, sizeof(t->scenario));
    return t->proxy_path ? 0 : -1;
}

void fh_txn_set_client(fh_txn *t, const char *name)
{
    fh_strlcpy(t->client, name ? name : "", sizeof(t->client));
}

bool fh_pipeline_upstream_down(const fh_pipeline *p)
{
    return atomic_load(&((fh_pipeline *)p)->upstream_down);
}

static void probe_response(void *ud, long status, const char *content_type, const char *headers)
{
    (void)ud, (void)status, (void)content_type, (void)headers;
}

static int probe_body(void *ud, const char *data, size_t len)
{
    (void)ud, (void)data, (void)len;
    return 0;
}

static void probe_done(void *ud, const fh_upstream_done *d)
{
    fh_pipe *pp = ud;
    pp->probe = NULL;
    note_reachable(pp->p, d);
}

static const fh_upstream_handler probe_handler = {probe_response, probe_body, probe_done};

void fh_pipe_probe_upstream(fh_pipe *pp)
{
    uint64_t now = fh_now_ns();
    if (pp->probe || now - pp->probe_at < 1000000000u || atomic_load(&pp->p->closing))
        return;
    pp->probe_at = now;
    snap_release(snap_take(pp)); /* the upstream of the running config */
    pp->probe =
        fh_upstream_submit(pp->up, NULL, "GET", "/models", NULL, 0, 0, NULL, &probe_handler, pp);
}

size_t fh_pipeline_in_flight(const fh_pipeline *p)
{
    return atomic_load(&((fh_pipeline *)p)->in_flight);
}

static void txn_unref(fh_txn *t)
{
    if (--t->refs > 0)
        return;
    t->magic = 0;
    if (t->gen)
        fh_generation_release(t->gen);
    if (t->response)
        fh_hresp_free(t->response);
    if (t->call)
        fh_upstream_cancel(t->pp->up, t->call);
    fh_request_free(t->req);
    snap_release(t->snap);
    if (t->up_body != t->baseline_body)
        free(t->up_body);
    free(t->baseline_body);
    buf_free(&t->in);
    buf_free(&t->resp);
    buf_free(&t->sse);
    free(t->up_headers);
    free(t->proxy_path);
    json_decref(t->pre_apply);
    buf_free(&t->text);
    free(t);
}

fh_txn *fh_txn_new(fh_pipe *pp, fh_hconn *conn, fh_txn_kind kind, size_t max_body)
{
    fh_txn *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    fh_pipeline *p = pp->p;
    t->magic = TXN_MAGIC;
    t->refs = 1; /* the HTTP side's, dropped by the finish */
    t->pp = pp;
    t->conn = conn;
    t->kind = kind;
    t->max_body = max_body;
    t->t_start_ns = fh_now_ns();
    t->reason = FH_REASON_NO_MATCH;
    /* "fh-" + the process's salt in hex (fixed per process) + "-" + a
     * counter: unique per process run, without printf on every request. */
    memcpy(t->request_id, p->id_prefix, p->id_prefix_len);
    fh_utoa(atomic_fetch_add_explicit(&p->next_id, 1, memory_order_relaxed) + 1,
            t->request_id + p->id_prefix_len);
    TAILQ_INSERT_TAIL(&pp->live, t, llink);
    atomic_fetch_add(&p->in_flight, 1);
    return t;
}

void fh_txn_expect(fh_txn *t, size_t len)
{
    /* The body's size is known: one allocation of that size (thousands of
     * requests may wait at once; doubling from 1 KiB wastes the rest). Not
     * for large bodies: a client announcing one and sending nothing must
     * not make us hold the memory (they grow as their bytes arrive). */
    if (!t->in.cap && len > 0 && len <= (64u << 10)) {
        t->in.data = malloc(len + 1);
        if (t->in.data)
            t->in.cap = len + 1;
    }
}

int fh_txn_feed(fh_txn *t, const char *data, size_t len)
{
    if (!t->in_too_large && t->in.len + len <= t->max_body && buf_add(&t->in, data, len) == 0)
        return 0;
    t->in_too_large = true; /* over the limit (or out of memory): 413 */
    return -1;
}

/* ---- jobs ------------------------------------------------------------------------ */

static void queue_job(fh_txn *t, job_kind j)
{
    if (j != JOB_NONE)
        t->job = j;
    if (!t->queued) {
        t->queued = true;
        TAILQ_INSERT_TAIL(&t->pp->ready, t, qlink);
    }
}

bool fh_pipe_busy(const fh_pipe *pp)
{
    return !TAILQ_EMPTY(&pp->ready);
}

/* The connection waits (its callback or stream reader is not called) until
 * wake(). */
static void suspend(fh_txn *t)
{
    if (!t->suspended && t->conn)
        t->suspended = true;
}

/* The counterpart of suspend(), exactly once per suspension. */
static void wake(fh_txn *t)
{
    if (t->suspended && t->conn) {
        t->suspended = false;
        fh_hconn_resume(t->conn);
    }
}

/* A response for the request callback to queue once the connection is resumed. */
static void prepare(fh_txn *t, unsigned status, fh_hresp *r)
{
    if (t->response)
        fh_hresp_free(t->response);
    t->response = r;
    t->response_status = status;
    wake(t);
}

static void prepare_error(fh_txn *t, unsigned status, const char *type, const char *code,
                          const char *message)
{
    fh_hresp *r = fh_error_response(type, code, message, NULL);
    if (r && t->kind == FH_TXN_CHAT)
        fh_hresp_header(r, "X-Fusion-Request-Id", t->request_id);
    prepare(t, status, r);
}

/* ---- plugin hooks ------------------------------------------------------------------ */

/* Frees what an abandoned call held, should its plugin ever return. */
static void abandon_call(fh_hook_call *c)
{
    fh_request_free(c->req);
    if (c->answer_owned)
        free(c->answer);
    if (c->gen)
        fh_generation_release(c->gen);
}

/* A call that returned (inline or detached): t gets its request and
 * overlay back, and the hook's outputs; the answer copy is freed. */
static void take_outputs(fh_txn *t, fh_hook_call *c)
{
    t->req = c->req;
    t->gen = c->gen;
    t->hook_ns += c->elapsed_ns;
    t->hook_rc = c->rc;
    t->hook_score = c->score;
    t->hook_quality = c->kind == FH_HOOK_EVALUATE ? c->eval.quality : NAN;
    if (c->answer_owned)
        free(c->answer);
}

/* Runs one hook of t's overlay inline, through the door. HOOK_OK: outputs
 * in t->hook, and t owns its request and overlay again. HOOK_LEFT: the call
 * was detached; this thread no longer runs the worker, so the caller must
 * return HOOK_LEFT at once, touching nothing. */
static hook_result run_hook(fh_txn *t, fh_hook_kind kind, char *answer, size_t len, bool owned)
{
    fh_door_frame *f = fh_worker_frame(t->pp->w);
    fh_hook_call *c = &f->call;
    fh_generation_prepare(t->gen, kind, c);
    c->req = t->req;
    c->answer = answer;
    c->answer_len = len;
    c->answer_owned = owned;
    c->abandon = abandon_call;
    f->ctx = t;
    t->req = NULL; /* the call's while it runs */
    t->gen = NULL;
    t->in_hook = true;
    t->hook_kind = kind;
    t->refs++; /* the call's */
    if (fh_door_run(f) == FH_DOOR_DETACHED)
        return HOOK_LEFT;
    t->in_hook = false;
    t->refs--;
    take_outputs(t, c);
    return HOOK_OK;
}

static void quarantine(fh_txn *t, const fh_hook_call *c)
{
    char why[256];
    snprintf(why, sizeof(why), "%s did not return within %.0f ms (hooks.deadline_ms)",
             fh_hook_kind_name(c->kind), (double)t->pp->p->hook_deadline_ns / 1e6);
    /* The call may be an older version's, swapped out meanwhile (maybe to
     * ship the fix): quarantine the version that hung, not its successor. */
    if (fh_registry_quarantine_seq(t->pp->p->reg, c->who, t->gen_seq, why) == 0)
        fh_error("overlay %s: %s; quarantined, request %s served by the baseline", c->who, why,
                 t->request_id);
    else
        fh_error("overlay %s: %s in a version already replaced; request %s served by the "
                 "baseline, the running version stays as it is",
                 c->who, why, t->request_id);
}

/* The worker's handler for detached calls (worker.h): the call came back,
 * or its deadline passed. Either way the request continues in a job. */
static void frame_resumed(fh_worker *w, fh_door_frame *f, bool timed_out)
{
    fh_txn *t = f->ctx;
    TXN_CHECK(t);
    fh_hook_call *c = &f->call;
    t->in_hook = false;
    t->refs--; /* the call's; the HTTP side's keeps t alive */
    if (timed_out) {
        /* The abandoned call keeps the request, the answer and the overlay
         * reference; the request is served from the caller's bytes. At a
         * stop the call was only cut short, not late: no quarantine. */
        t->hook_timed_out = true;
        t->hook_failed = true;
        t->hook_ns += t->pp->p->hook_deadline_ns;
        if (!fh_worker_stopping(w))
            quarantine(t, c);
    } else {
        take_outputs(t, c);
    }
    /* Timed out, the call's fields stay the call's (its thread frees them
     * if the plugin ever returns): nothing of `c` is touched here. */
    queue_job(t, JOB_RESUMED);
}

/* ---- routing and submit --------------------------------------------------------------- */

static const char *header(fh_txn *t, const char *name)
{
    return fh_hconn_header(t->conn, name);
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
    fh_snapshot *s = t->snap->snap;
    /* The rollout key: key, else scenario_id, else the client key's name,
     * else the request id (SPEC 4). */
    fh_route_ctx ctx = {.scenario_type = r->scenario_type,
                        .scenario_id = r->scenario_id,
                        .confidence = r->confidence,
                        .key =
                            r->key ? r->key : (!r->scenario_id && t->client[0] ? t->client : NULL),
                        .request_id = t->request_id};
    fh_route rt;
    fh_flags_route(s->flags, s->cfg->environment, &s->ovr, &ctx, &rt);
    t->reason = rt.reason;
    if (!rt.feature)
        return;
    fh_overlay_state st = FH_STATE_COUNT;
    fh_generation *g = fh_registry_acquire(t->pp->p->reg, rt.feature->name, &st);
    if (!g) {
        t->reason = unavailable_reason(st);
        return;
    }
    if (fh_generation_hung(g) >= HUNG_MAX) {
        /* Its calls hang: do not hand it another thread. */
        fh_generation_release(g);
        t->reason = FH_REASON_HOOK_TIMEOUT;
        return;
    }
    const fusion_overlay_descriptor *d = fh_generation_descriptor(g);
    fh_gate *gate = t->pp->p->gates ? fh_gates_get(t->pp->p->gates, d->name) : NULL;
    if (gate) {
        /* Before any hook: an open breaker or a tripped gate keeps the
         * overlay's code and its upstream call out of this request. */
        fh_gate_cfg_of(s, d->name, &t->gcfg);
        fh_reason why = fh_gate_admit(gate, &t->gcfg, fh_now_ms(), &t->ticket);
        if (why != FH_REASON_APPLIED) {
            fh_generation_release(g);
            t->reason = why;
            return;
        }
        t->prompt_est = fh_estimate_prompt_tokens(json_object_get(r->body, "messages"));
    }
    fh_strlcpy(t->overlay_name, d->name, sizeof(t->overlay_name));
    fh_strlcpy(t->overlay_version, d->version, sizeof(t->overlay_version));
    t->gen = g;
    t->gen_seq = fh_generation_seq(g);
    t->reason = FH_REASON_APPLIED;
}

/* Tokens an overlaid call may use, reserved against tokens_per_minute
 * before it goes upstream: its prompt as estimated, plus its completion
 * limit (max_completion_tokens or max_tokens), else 1024. */
static long spend_estimate(const fusion_request *r, long *prompt)
{
    long completion = 1024;
    json_t *mt = json_object_get(r->body, "max_completion_tokens");
    if (!json_is_integer(mt))
        mt = json_object_get(r->body, "max_tokens");
    if (json_is_integer(mt) && json_integer_value(mt) > 0)
        completion = (long)json_integer_value(mt);
    *prompt = fh_estimate_prompt_tokens(json_object_get(r->body, "messages"));
    return *prompt + completion;
}

/* Sets t->baseline_body: the caller's request as the upstream must see it
 * for the baseline. The bytes as sent when nothing had to change (no
 * `fusion` object, no usage request added); else re-serialised, from
 * t->req when it is still untouched by an overlay (`pristine`), or from
 * the original bytes. */
static int make_baseline(fh_txn *t, bool pristine)
{
    if (t->baseline_body)
        return 0;
    if (!t->added_usage && !t->had_fusion) {
        t->baseline_body = malloc(t->in.len + 1);
        if (!t->baseline_body)
            return -1;
        memcpy(t->baseline_body, t->in.data, t->in.len);
        t->baseline_body[t->in.len] = '\0';
        t->baseline_len = t->in.len;
        return 0;
    }
    if (pristine && t->req) {
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

/* Sends `body` (taken: freed with the txn or the next submit) upstream. */
static int submit(fh_txn *t, char *body, size_t len)
{
    if (atomic_load(&t->pp->p->closing)) {
        if (body != t->baseline_body)
            free(body);
        return -1;
    }
    if (t->up_body != t->baseline_body)
        free(t->up_body);
    t->up_body = body;
    t->status = 0;
    t->content_type[0] = '\0';
    t->resp.len = t->resp_off = 0;
    t->overflow = false;
    t->done = false; /* a retry: the exchange is open again */
    t->t_submit_ns = fh_now_ns();
    if (!t->snap)
        t->snap = snap_take(t->pp); /* /v1/models: its upstream */
    fh_upstream_target *tg = t->snap ? t->snap->tg : NULL;
    /* The caller's headers OpenAI defines go upstream (X-Fusion-* never
     * do). OWN_KEY: only with upstream.forward_client_key (with the
     * operator's key the caller picks neither it nor the operator's
     * organization or project). FIRST: not on a retry as the baseline,
     * another body (an upstream would replay the first answer). PROXY:
     * relayed calls only (chat and models are JSON, the target's). */
    enum { OWN_KEY = 1, FIRST = 2, PROXY = 4 };
    static const struct {
        const char *name;
        int only;
    } fwd[] = {{"OpenAI-Organization", OWN_KEY},
               {"OpenAI-Project", OWN_KEY},
               {"Authorization", OWN_KEY},
               {"User-Agent", 0},
               {"X-Request-Id", 0},
               {"OpenAI-Beta", 0},
               {"Idempotency-Key", FIRST},
               {"Content-Type", PROXY},
               {"Accept", PROXY}};
    int skip = (t->snap && t->snap->snap->cfg->upstream.forward_client_key ? 0 : OWN_KEY) |
               (t->retried ? FIRST : 0) | (t->kind == FH_TXN_PROXY ? 0 : PROXY);
    char *extra[sizeof(fwd) / sizeof(fwd[0]) + 1];
    size_t nextra = 0;
    for (size_t i = 0; t->conn && i < sizeof(fwd) / sizeof(fwd[0]); i++) {
        const char *v = fwd[i].only & skip ? NULL : fh_hconn_header(t->conn, fwd[i].name);
        if (v && asprintf(&extra[nextra], "%s: %s", fwd[i].name, v) >= 0)
            nextra++;
    }
    extra[nextra] = NULL;
    if (t->kind == FH_TXN_PROXY)
        /* Relayed as it comes: timed like a stream (the head within
         * timeout_ms, then no gap over idle_timeout_ms). */
        t->call = fh_upstream_submit(t->pp->up, tg, t->proxy_method, t->proxy_path, t->in.data,
                                     t->in.len, 1, (const char *const *)extra, &handler, t);
    else
        t->call =
            t->kind == FH_TXN_MODELS
                ? fh_upstream_submit(t->pp->up, tg, "GET", "/models", NULL, 0, 0,
                                     (const char *const *)extra, &handler, t)
                : fh_upstream_submit(t->pp->up, tg, "POST", "/chat/completions", body, len,
                                     t->client_stream, (const char *const *)extra, &handler, t);
    for (size_t i = 0; i < nextra; i++)
        free(extra[i]);
    return t->call ? 0 : -1;
}

static void submit_or_fail(fh_txn *t, char *body, size_t len)
{
    if (submit(t, body, len) != 0)
        prepare_error(t, 503, "server_error", "shutting_down",
                      "fusion-host is stopping or out of memory");
}

/* The baseline goes upstream (no overlay, or the overlay failed). */
static void send_baseline(fh_txn *t, bool pristine)
{
    if (t->gen) {
        fh_generation_release(t->gen);
        t->gen = NULL;
    }
    if (t->overlaid) {
        /* A retry after the overlaid call: what that call used is the
         * overlay's spend, whatever the baseline's answer says. */
        t->overlay_used = t->have_usage ? t->usage_total : -1;
        t->have_usage = false;
        t->usage_total = t->usage_prompt = t->usage_completion = 0;
    }
    t->overlaid = false;
    if (make_baseline(t, pristine) != 0) {
        prepare_error(t, 500, "server_error", "out_of_memory", "out of memory");
        return;
    }
    submit_or_fail(t, t->baseline_body, t->baseline_len);
}

static void log_routed(fh_txn *t)
{
    if (fh_log_get_level() < FH_LOG_DEBUG)
        return;
    char f_id[80], f_scn[90], f_ovl[100], f_rsn[64];
    snprintf(f_id, sizeof(f_id), "FUSION_REQUEST_ID=%s", t->request_id);
    snprintf(f_scn, sizeof(f_scn), "FUSION_SCENARIO=%s", t->scenario);
    snprintf(f_ovl, sizeof(f_ovl), "FUSION_DECISION=%s",
             t->overlaid ? t->overlay_name : "baseline");
    snprintf(f_rsn, sizeof(f_rsn), "FUSION_REASON=%s", fh_reason_name(t->reason));
    char f_cli[90];
    snprintf(f_cli, sizeof(f_cli), "FUSION_CLIENT=%s", t->client); /* a name, never the key */
    const char *fields[] = {f_id, f_scn, f_ovl, f_rsn, t->client[0] ? f_cli : NULL, NULL};
    fh_log_fields(FH_LOG_DEBUG, fields, "request routed");
}

static void enforce_model_rule(fh_txn *t);

/* After apply(): the overlaid body goes upstream, or the baseline. */
static void after_apply(fh_txn *t)
{
    char *body = NULL;
    if (t->hook_timed_out) {
        t->reason = FH_REASON_HOOK_TIMEOUT;
    } else if (t->hook_rc != 0 || (enforce_model_rule(t), !(body = fh_request_dump(t->req, 0)))) {
        fh_warn("overlay %s/%s: apply failed for request %s; serving the baseline", t->overlay_name,
                t->overlay_version, t->request_id);
        t->reason = FH_REASON_HOOK_ERROR;
    } else if (t->ticket.gate && t->hook_ns > (uint64_t)t->gcfg.budget.hook_latency_ms * 1000000u) {
        free(body);
        t->reason = FH_REASON_BUDGET_LATENCY; /* match + apply over budget.hook_latency_ms */
    } else if (!fh_gate_reserve(&t->ticket, &t->gcfg,
                                spend_estimate(t->req, &t->prompt_est_overlay), fh_now_ms())) {
        free(body);
        t->reason = FH_REASON_BUDGET_RATE;
    } else {
        t->overlaid = true;
        t->overlay_called = true;
        t->overlay_used = -1;
        log_routed(t);
        submit_or_fail(t, body, strlen(body));
        return;
    }
    log_routed(t);
    send_baseline(t, false);
}

/* The name a model rule entry is about ("a" or "a>b" -> "a"), into buf. */
static const char *rule_name(const char *entry, char *out, size_t len, const char **to)
{
    const char *gt = strchr(entry, '>');
    size_t n = gt ? (size_t)(gt - entry) : strlen(entry);
    if (n >= len)
        n = len - 1;
    memcpy(out, entry, n);
    out[n] = '\0';
    *to = gt ? gt + 1 : NULL;
    return out;
}

/* Before apply(): when the model refuses some parameters, remember the
 * caller's own values of them (what the caller sent is its business). */
static void remember_caller_params(fh_txn *t)
{
    json_t *model = json_object_get(t->req->body, "model");
    t->model_rule = json_is_string(model)
                        ? fh_config_model_rule(t->snap->snap->cfg, json_string_value(model))
                        : NULL;
    if (!t->model_rule)
        return;
    t->pre_apply = json_object();
    for (size_t i = 0; t->pre_apply && i < t->model_rule->count; i++) {
        char name[64];
        const char *to;
        rule_name(t->model_rule->params[i], name, sizeof(name), &to);
        json_t *v = json_object_get(t->req->body, name);
        if (v)
            json_object_set(t->pre_apply, name, v);
    }
}

/* After apply(): what the overlay set that the model does not take is
 * dropped (or renamed), so an overlay never turns a valid request into one
 * the model refuses; the retry as the baseline stays the last defence. */
static void enforce_model_rule(fh_txn *t)
{
    const fh_model_rule *rule = t->model_rule;
    for (size_t i = 0; rule && i < rule->count; i++) {
        char name[64];
        const char *to;
        rule_name(rule->params[i], name, sizeof(name), &to);
        json_t *now = json_object_get(t->req->body, name);
        json_t *before = json_object_get(t->pre_apply, name);
        if (!now || (before && json_equal(now, before)))
            continue; /* not the overlay's doing */
        if (to && !json_object_get(t->req->body, to)) {
            json_object_set(t->req->body, to, now);
            fh_debug("request %s: model rule %s: %s renamed to %s (set by overlay %s)",
                     t->request_id, rule->pattern, name, to, t->overlay_name);
        } else {
            fh_debug("request %s: model rule %s: %s dropped (set by overlay %s)", t->request_id,
                     rule->pattern, name, t->overlay_name);
        }
        if (before)
            json_object_set(t->req->body, name, before);
        else
            json_object_del(t->req->body, name);
    }
}

static hook_result do_apply(fh_txn *t)
{
    remember_caller_params(t);
    if (run_hook(t, FH_HOOK_APPLY, NULL, 0, false) == HOOK_LEFT)
        return HOOK_LEFT;
    after_apply(t);
    return HOOK_OK;
}

static hook_result after_match(fh_txn *t)
{
    if (t->hook_timed_out) {
        t->reason = FH_REASON_HOOK_TIMEOUT;
    } else if (!(t->hook_score > 0.0)) {
        t->reason = FH_REASON_NO_MATCH;
    } else {
        return do_apply(t);
    }
    log_routed(t);
    send_baseline(t, true);
    return HOOK_OK;
}

static int parse_request(fh_txn *t, char *err, size_t errlen, const char **code)
{
    t->req = fh_request_parse(t->in.data ? t->in.data : "", t->in.len, err, errlen);
    if (!t->req) {
        *code = "invalid_body";
        return -1;
    }
    t->had_fusion = t->req->had_fusion;
    if (apply_headers(t, err, errlen) != 0) {
        *code = "invalid_fusion";
        return -1;
    }
    fh_request_set_id(t->req, t->request_id);
    fh_strlcpy(t->scenario,
               t->req->scenario_type && *t->req->scenario_type ? t->req->scenario_type : "none",
               sizeof(t->scenario));
    /* `null` is "not given" wherever the OpenAI schema allows it (the SDKs
     * send stream_options: null with stream=True). */
    json_t *stream = json_object_get(t->req->body, "stream");
    if (json_is_null(stream))
        stream = NULL;
    if (stream && !json_is_boolean(stream)) {
        snprintf(err, errlen, "'stream' must be true or false");
        *code = "invalid_stream";
        return -1;
    }
    t->client_stream = json_is_true(stream);
    if (t->client_stream) {
        /* Token accounting needs usage; ask for it and hide it again. */
        json_t *so = json_object_get(t->req->body, "stream_options");
        if (json_is_null(so))
            so = NULL; /* replaced below when usage is asked for */
        if (so && !json_is_object(so)) {
            snprintf(err, errlen, "'stream_options' must be an object");
            *code = "invalid_stream_options";
            return -1;
        }
        if (!json_is_true(json_object_get(so, "include_usage"))) {
            if (!so) {
                so = json_object();
                json_object_set_new(t->req->body, "stream_options", so);
            }
            json_object_set_new(so, "include_usage", json_true());
            t->added_usage = true;
        }
    }
    return 0;
}

static hook_result txn_start(fh_txn *t)
{
    char err[256];
    const char *code = NULL;
    t->snap = snap_take(t->pp);
    if (!t->snap) {
        prepare_error(t, 500, "server_error", "out_of_memory", "out of memory");
        return HOOK_OK;
    }
    if (parse_request(t, err, sizeof(err), &code) != 0) {
        prepare_error(t, 400, "invalid_request_error", code, err);
        return HOOK_OK;
    }
    route(t);
    if (!t->gen) {
        log_routed(t);
        send_baseline(t, true);
        return HOOK_OK;
    }
    if (!fh_generation_descriptor(t->gen)->match) {
        t->hook_score = 1.0;
        return after_match(t);
    }
    if (run_hook(t, FH_HOOK_MATCH, NULL, 0, false) == HOOK_LEFT)
        return HOOK_LEFT;
    return after_match(t);
}

/* ---- upstream callbacks ------------------------------------------------------------------ */

static void up_response(void *ud, long status, const char *content_type, const char *headers)
{
    fh_txn *t = ud;
    TXN_CHECK(t);
    free(t->up_headers);
    t->up_headers = *headers ? strdup(headers) : NULL;
    t->status = status;
    t->t_headers_ns = fh_now_ns();
    fh_strlcpy(t->content_type, content_type, sizeof(t->content_type));
    if (t->kind == FH_TXN_PROXY || (t->client_stream && status == 200 &&
                                    strncasecmp(t->content_type, "text/event-stream", 17) == 0)) {
        t->streaming = true;
        wake(t); /* the request callback queues the streaming response */
    }
}

/* Usage from a parsed chunk or answer. */
static void take_usage_j(fh_txn *t, const fh_jval *usage);

static bool is_json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* The bytes of `"usage": value` and one adjacent comma in a scanned object,
 * [*from, *to); false when the key is not written plainly as "usage". */
static bool usage_member_span(const char *data, const fh_jval *value, const char **from,
                              const char **to)
{
    const char *k = value->start;
    while (k > data && is_json_space(k[-1]))
        k--;
    if (k == data || k[-1] != ':')
        return false;
    k--;
    while (k > data && is_json_space(k[-1]))
        k--;
    static const char key[] = "\"usage\"";
    if ((size_t)(k - data) < sizeof(key) - 1 || memcmp(k - (sizeof(key) - 1), key, sizeof(key) - 1))
        return false;
    k -= sizeof(key) - 1;
    const char *e = value->end;
    while (*e && is_json_space(*e))
        e++;
    if (*e == ',') { /* a member follows: take the comma after */
        *from = k;
        *to = e + 1;
        return true;
    }
    const char *b = k; /* the last member: take the comma before, if any */
    while (b > data && is_json_space(b[-1]))
        b--;
    *from = b > data && b[-1] == ',' ? b - 1 : k;
    *to = value->end;
    return true;
}

/* A chunk with usage the client did not ask for, but with choices too (the
 * `"usage": null` upstreams put on every chunk once asked for usage): the
 * same chunk without that member, cut out of the bytes as they came. */
static void relay_without_usage(fh_txn *t, const char *data, size_t len, const fh_jval *usage)
{
    const char *from, *to;
    if (usage_member_span(data, usage, &from, &to)) {
        const char *key = "\"usage\"";
        const char *end = data + len;
        /* A second "usage" (a repeated key, or those bytes inside a
         * string): leave it to the parser below to decide. */
        if (!memmem(data, (size_t)(from - data), key, 7) &&
            !memmem(to, (size_t)(end - to), key, 7)) {
            buf_add(&t->resp, "data: ", 6);
            buf_add(&t->resp, data, (size_t)(from - data));
            buf_add(&t->resp, to, (size_t)(end - to));
            buf_add(&t->resp, "\n\n", 2);
            return;
        }
    }
    json_t *chunk = json_loadb(data, len, JSON_DISABLE_EOF_CHECK, NULL);
    char *s = NULL;
    if (chunk) {
        json_object_del(chunk, "usage");
        s = fh_json_dump(chunk, NULL);
    }
    if (s) {
        buf_add(&t->resp, "data: ", 6);
        buf_add(&t->resp, s, strlen(s));
        buf_add(&t->resp, "\n\n", 2);
    }
    free(s);
    json_decref(chunk);
}

/* One complete SSE event (up to and including its blank line): collect the
 * text and usage, and relay it - without the usage the client did not ask
 * for. One scanning pass per event, no tree. */
static void relay_event(fh_txn *t, const char *ev, size_t len)
{
    const char *data = NULL, *data_end = NULL;
    for (const char *line = ev; line < ev + len;) {
        const char *eol = memchr(line, '\n', (size_t)(ev + len - line));
        if (!eol)
            eol = ev + len;
        if (eol - line >= 5 && strncmp(line, "data:", 5) == 0) {
            data = line + 5;
            while (data < eol && *data == ' ')
                data++;
            data_end = eol > data && eol[-1] == '\r' ? eol - 1 : eol;
            break;
        }
        line = eol + 1;
    }
    static const char *const paths[] = {"choices", "choices.0.delta.content", "usage",
                                        "choices.0.index"};
    fh_jval top, found[4];
    if (!data) {
        buf_add(&t->resp, ev, len); /* comments, `event:`/`id:` only: as is */
        return;
    }
    size_t dlen = (size_t)(data_end - data);
    if (dlen == 6 && memcmp(data, "[DONE]", 6) == 0) {
        buf_add(&t->resp, ev, len);
        return;
    }
    if (*data != '{' || !fh_json_scan_paths(data, dlen, &top, paths, found, 4) ||
        top.type != FH_J_OBJECT) {
        /* Never passed on as if it were valid: the stream ends here with
         * an error event the SDKs turn into their API error. */
        if (!t->stream_bad)
            fh_warn("request %s: the upstream sent a malformed stream event; ending the stream "
                    "with an error event",
                    t->request_id);
        t->stream_bad = true;
        return;
    }
    /* With n > 1 every chunk carries one choice and its index: the answer
     * evaluate() sees is choice 0's text (<fusion/overlay.h>). */
    bool choice0 = found[3].type != FH_J_NUMBER ||
                   (found[3].end - found[3].start == 1 && found[3].start[0] == '0');
    if (found[1].type == FH_J_STRING && !t->text_truncated && choice0) {
        size_t n = 0;
        char *piece = fh_jstr_unescape(&found[1], &n);
        if (!piece || t->text.len + n > TEXT_MAX || buf_add(&t->text, piece, n) != 0)
            t->text_truncated = true; /* relayed, but too long to evaluate */
        free(piece);
    }
    if (found[2].type == FH_J_OBJECT)
        take_usage_j(t, &found[2]);
    if (found[2].type != FH_J_NONE && t->added_usage) {
        fh_jval first;
        bool no_choices = found[0].type == FH_J_ARRAY && !fh_jarr_get(&found[0], 0, &first);
        if (found[2].type == FH_J_OBJECT && no_choices)
            return; /* the usage-only chunk: drop it */
        /* "usage": null on every chunk, or usage riding on a chunk with
         * choices: remove just the field the client did not ask for. */
        relay_without_usage(t, data, (size_t)(data_end - data), &found[2]);
        return;
    }
    buf_add(&t->resp, ev, len);
}

/* Splits the upstream bytes into events at blank lines. */
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
            if (t->stream_bad)
                break; /* nothing after a malformed event is relayed */
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
    if (!t->conn)
        return -1; /* the client is gone: stop the transfer */
    if (!t->streaming) {
        if (t->resp.len + len > RESP_MAX || buf_add(&t->resp, data, len) != 0) {
            t->overflow = true;
            return -1;
        }
        return 0;
    }
    if (t->resp.len - t->resp_off > STREAM_HIGH) {
        t->paused = true; /* curl keeps the data and gives it again */
        return 1;
    }
    if (t->kind == FH_TXN_PROXY) {
        /* Bytes as they come, whatever they are. */
        if (t->resp.len - t->resp_off > STREAM_HIGH) {
            t->paused = true;
            return 1;
        }
        if (buf_add(&t->resp, data, len) != 0)
            return -1;
        wake(t);
        return 0;
    }
    if (t->stream_bad)
        return -1; /* stop the transfer: nothing more is relayed */
    uint64_t t0 = fh_now_ns();
    int rc = relay_bytes(t, data, len);
    t->relay_ns += fh_now_ns() - t0;
    if (t->stream_bad) {
        wake(t);
        return -1;
    }
    if (rc != 0) {
        fh_warn("request %s: the upstream stream has an event over 1 MiB or we are out of "
                "memory; ending the stream",
                t->request_id);
        return -1;
    }
    wake(t);
    return 0;
}

/* A 4xx the caller's own request would not have caused: the overlay made
 * the upstream refuse it. 408 and 429 are about timing, not content. */
static bool overlay_rejected(const fh_txn *t, const fh_upstream_done *d)
{
    return t->overlaid && !t->retried && d->result == FH_UPSTREAM_OK && d->status >= 400 &&
           d->status < 500 && d->status != 408 && d->status != 429;
}

static void upstream_failed(fh_txn *t);
static unsigned answer_status(const fh_txn *t);
static fh_hresp *relayed_response(fh_txn *t, const char *content_type);

/* Whether the upstream can be reached, from every call's end (and the
 * probes /health starts while it cannot). */
static void note_reachable(fh_pipeline *p, const fh_upstream_done *d)
{
    if (d->result == FH_UPSTREAM_CONNECT) {
        if (!atomic_exchange(&p->upstream_down, true))
            fh_warn("upstream unreachable: %s; /health says degraded until it answers", d->error);
    } else if (d->result == FH_UPSTREAM_OK) {
        if (atomic_exchange(&p->upstream_down, false))
            fh_info("upstream reachable again");
    }
}

static void up_done(void *ud, const fh_upstream_done *d)
{
    fh_txn *t = ud;
    TXN_CHECK(t);
    t->call = NULL;
    t->upstream_ns += d->wait_ns;
    note_reachable(t->pp->p, d);
    if (d->status)
        t->status = d->status;
    fh_upstream_done bad;
    if (d->result == FH_UPSTREAM_OK &&
        (d->status < 200 || d->status > 599 || (d->status >= 300 && d->status < 400))) {
        /* Not a final answer a client could act on (redirects are not
         * followed): a gateway error, never relayed as the overlay's. */
        bad = *d;
        bad.result = FH_UPSTREAM_BROKEN;
        bad.error = d->status >= 300 && d->status < 400
                        ? "it answered with a redirect, which fusion-host does not follow; "
                          "check upstream.base_url"
                        : "it answered with an HTTP status outside 200..599";
        t->bad_status = true;
        d = &bad;
    }
    if (t->completed || t->aborted)
        return; /* nobody to answer */
    if (overlay_rejected(t, d) && !t->streaming) {
        fh_warn("overlay %s/%s: the upstream refused the overlaid request %s with %ld; "
                "retrying it as the baseline",
                t->overlay_name, t->overlay_version, t->request_id, t->status);
        t->retried = true;
        t->reason = FH_REASON_OVERLAY_REJECTED_UPSTREAM;
        t->rejected_status = t->status;
        send_baseline(t, false);
        return;
    }
    t->done = true;
    t->result = d->result;
    fh_strlcpy(t->error, d->error, sizeof(t->error));
    if (t->streaming) {
        if (t->sse.len && d->result == FH_UPSTREAM_OK && !t->stream_bad &&
            t->kind != FH_TXN_PROXY) {
            /* An unterminated last event: checked like any other, so a
             * malformed one ends the stream with the error event. */
            if (buf_add(&t->sse, "\n\n", 2) == 0)
                relay_event(t, t->sse.data, t->sse.len);
        }
        t->sse.len = 0; /* after a failure: a partial event, never passed on */
        wake(t);        /* the reader ends the stream */
    } else if (t->kind == FH_TXN_MODELS || t->kind == FH_TXN_PROXY) {
        if (t->result != FH_UPSTREAM_OK || t->overflow)
            upstream_failed(t);
        else
            prepare(t, answer_status(t), relayed_response(t, NULL));
    } else {
        queue_job(t, JOB_ANSWER);
    }
}

static const fh_upstream_handler handler = {up_response, up_body, up_done};

/* ---- answers ------------------------------------------------------------------------------ */

/* "1.234" for 1234 us: milliseconds with three decimals, printf-free. */
static size_t format_ms(uint64_t us, char *out)
{
    size_t n = fh_utoa(us / 1000, out);
    out[n++] = '.';
    unsigned f = (unsigned)(us % 1000);
    out[n++] = (char)('0' + f / 100);
    out[n++] = (char)('0' + f / 10 % 10);
    out[n++] = (char)('0' + f % 10);
    out[n] = '\0';
    return n;
}

static void add_fusion_headers(fh_txn *t, fh_hresp *r)
{
    char overlay[FUSION_NAME_MAX + FUSION_VERSION_MAX + 2] = "baseline";
    if (t->overlaid) {
        size_t n = fh_strlcpy(overlay, t->overlay_name, sizeof(overlay));
        overlay[n++] = '/';
        fh_strlcpy(overlay + n, t->overlay_version, sizeof(overlay) - n);
    }
    fh_hresp_header(r, "X-Fusion-Overlay", overlay);
    fh_hresp_header(r, "X-Fusion-Reason", fh_reason_name(t->reason));
    fh_hresp_header(r, "X-Fusion-Request-Id", t->request_id);
    /* The host's own time: from the body's arrival to now, less the
     * upstream's share (SPEC 4: X-Fusion-Overhead-Ms). */
    uint64_t now = fh_now_ns();
    uint64_t upstream = t->upstream_ns;
    if (t->streaming) /* headers leave as the stream starts: up to its head */
        upstream += t->t_headers_ns > t->t_submit_ns ? t->t_headers_ns - t->t_submit_ns : 0;
    uint64_t total = now - (t->t_body_ns ? t->t_body_ns : t->t_start_ns);
    uint64_t own = total > upstream ? total - upstream : 0;
    t->overhead_ms = (double)own / 1e6;
    t->have_overhead = true;
    char ms[32];
    format_ms((own + 500) / 1000, ms);
    fh_hresp_header(r, "X-Fusion-Overhead-Ms", ms);
}

/* The response's `fusion` object (SPEC 4). Every string in it is an
 * identifier the host validated, so it needs no escaping. */
/* Appends s to the text being built at *n (bounded by size). */
static void put_text(char *text, size_t size, size_t *n, const char *s)
{
    *n += fh_strlcpy(text + *n, s, size - *n);
}

static size_t fusion_object(fh_txn *t, char *text, size_t size)
{
    char quality[40] = "null", latency[40] = "0.0";
    if (t->have_quality)
        fh_json_real(quality, sizeof(quality), t->quality, 12);
    double ms = (double)(fh_now_ns() - t->t_start_ns) / 1e6;
    fh_json_real(latency, sizeof(latency), round(ms * 1000) / 1000, 12);
    size_t n = 0;
    put_text(text, size, &n, "{\"overlay\":");
    if (t->overlaid) {
        put_text(text, size, &n, "\"");
        put_text(text, size, &n, t->overlay_name);
        put_text(text, size, &n, "\",\"overlay_version\":\"");
        put_text(text, size, &n, t->overlay_version);
        put_text(text, size, &n, "\",\"decision\":\"overlay");
    } else {
        put_text(text, size, &n, "null,\"overlay_version\":null,\"decision\":\"baseline");
    }
    put_text(text, size, &n, "\",\"reason\":\"");
    put_text(text, size, &n, fh_reason_name(t->reason));
    put_text(text, size, &n, "\",\"quality_score\":");
    put_text(text, size, &n, quality);
    char delta[40] = "null";
    if (t->have_delta)
        fh_json_real(delta, sizeof(delta), round(t->delta_pct * 10) / 10, 12);
    put_text(text, size, &n, ",\"token_delta_pct\":");
    put_text(text, size, &n, delta);
    put_text(text, size, &n, ",\"latency_ms\":");
    put_text(text, size, &n, latency);
    put_text(text, size, &n, ",\"request_id\":\"");
    put_text(text, size, &n, t->request_id);
    put_text(text, size, &n, "\"}");
    return n + 1 < size ? n : 0; /* 0: cut short */
}

/* The upstream's answer with our `fusion` object added. The upstream's
 * bytes are kept as they are and the object spliced in before the closing
 * brace: re-serialising the whole answer would cost more than the rest of
 * the request. */
static bool splice_fusion_object(fh_txn *t)
{
    char obj[512];
    size_t olen = fusion_object(t, obj, sizeof(obj));
    if (!olen)
        return false;
    if (t->answer_has_fusion) {
        /* An upstream that sends its own `fusion` key: ours replaces it
         * (rare: the whole answer is rebuilt). */
        json_t *answer = json_loadb(t->resp.data, t->resp.len, 0, NULL);
        json_t *fusion = json_loadb(obj, olen, 0, NULL);
        size_t len = 0;
        char *out = NULL;
        if (answer && fusion && json_object_set(answer, "fusion", fusion) == 0)
            out = fh_json_dump(answer, &len);
        json_decref(answer);
        json_decref(fusion);
        if (!out)
            return false;
        free(t->resp.data);
        t->resp = (buf){.data = out, .len = len, .cap = len + 1};
        return true;
    }
    size_t end = t->resp.len;
    while (end > 0 && t->resp.data[end - 1] != '}')
        end--;
    const char *sep = t->answer_empty ? "" : ",";
    size_t slen = strlen(sep);
    /* Reserved first: on failure the answer is still whole. */
    if (end == 0 || buf_reserve(&t->resp, slen + 9 + olen + 1) != 0)
        return false;
    t->resp.len = end - 1; /* the closing brace and what follows it */
    buf_add(&t->resp, sep, slen);
    buf_add(&t->resp, "\"fusion\":", 9);
    buf_add(&t->resp, obj, olen);
    buf_add(&t->resp, "}", 1);
    return true;
}

/* The error the host answers for a failed upstream exchange. */
static void upstream_failed(fh_txn *t)
{
    char msg[400];
    if (t->result == FH_UPSTREAM_TIMEOUT) {
        snprintf(msg, sizeof(msg), "the upstream did not answer in time (%s)", t->error);
        prepare_error(t, 504, "upstream_error", "upstream_timeout", msg);
    } else if (t->result == FH_UPSTREAM_CANCELLED) {
        prepare_error(t, 503, "server_error", "shutting_down", "fusion-host is stopping");
    } else if (t->result == FH_UPSTREAM_INTERNAL) {
        prepare_error(t, 500, "server_error", "internal_error",
                      "fusion-host could not make the upstream call (out of memory?)");
    } else if (t->overflow) {
        prepare_error(t, 502, "upstream_error", "upstream_invalid",
                      "the upstream answer is larger than 64 MiB");
    } else if (t->bad_status) {
        snprintf(msg, sizeof(msg), "the upstream's answer (status %ld) is not usable: %s",
                 t->status, t->error);
        prepare_error(t, 502, "upstream_error", "upstream_invalid", msg);
    } else if (t->result == FH_UPSTREAM_CONNECT) {
        snprintf(msg, sizeof(msg), "the upstream is unreachable (%s)", t->error);
        prepare_error(t, 502, "upstream_error", "upstream_unreachable", msg);
    } else {
        snprintf(msg, sizeof(msg), "the upstream broke the connection or its answer (%s)",
                 t->error);
        prepare_error(t, 502, "upstream_error", "upstream_broken", msg);
    }
}

static unsigned answer_status(const fh_txn *t)
{
    return t->status >= 100 && t->status < 600 ? (unsigned)t->status : 502;
}

/* t->resp's bytes as the response, which frees them: no
 * copy. content_type NULL: the upstream's, or JSON when it gave none. */
/* The upstream's answer headers a client reads, onto a response. */
static void add_upstream_headers(const fh_txn *t, fh_hresp *r)
{
    for (const char *p = t->up_headers; p && *p;) {
        const char *eol = strstr(p, "\r\n"), *colon = strchr(p, ':');
        if (!eol || !colon || colon > eol)
            break;
        char name[128], value[1024];
        size_t nl = (size_t)(colon - p);
        const char *v = colon + 1;
        while (v < eol && (*v == ' ' || *v == '\t'))
            v++;
        size_t vl = (size_t)(eol - v);
        if (nl < sizeof(name) && vl < sizeof(value)) {
            memcpy(name, p, nl);
            name[nl] = '\0';
            memcpy(value, v, vl);
            value[vl] = '\0';
            fh_hresp_header(r, name, value);
        }
        p = eol + 2;
    }
}

static fh_hresp *relayed_response(fh_txn *t, const char *content_type)
{
    fh_hresp *r = fh_hresp_buffer(t->resp.data, t->resp.len);
    t->resp = (buf){0}; /* the response's now, freed even when NULL */
    if (!r)
        return NULL;
    if (!content_type)
        content_type = t->content_type[0] ? t->content_type : "application/json";
    fh_hresp_header(r, "Content-Type", content_type);
    add_upstream_headers(t, r);
    return r;
}

/* Builds the response from a complete upstream answer in t->resp, with the
 * evaluation (if any) done. `object`: the answer is a JSON object. */
/* The token delta of an overlaid answer (SPEC 7): its total tokens against
 * the scenario type's baseline reference, or, while that is warming up,
 * against this request's own prompt estimated without the overlay plus
 * its completion tokens. */
static void compute_delta(fh_txn *t)
{
    fh_gates *g = t->pp->p->gates;
    if (t->have_delta || !g || !t->overlaid || !t->have_usage || t->usage_total <= 0 ||
        t->status < 200 || t->status >= 300)
        return;
    long ref = fh_gates_baseline_ref(g, t->scenario);
    if (ref <= 0) {
        /* Warming up: the caller's prompt without the overlay. Scaled from
         * the reported overlaid prompt by the two estimates' ratio, so the
         * estimator's own error cancels out (it is never compared with a
         * real tokenizer's count directly). */
        long prompt = t->prompt_est;
        if (t->prompt_est_overlay > 0 && t->usage_prompt > 0)
            prompt = (long)((double)t->usage_prompt * (double)t->prompt_est /
                                (double)t->prompt_est_overlay +
                            0.5);
        ref = prompt + t->usage_completion;
    }
    if (ref <= 0)
        return;
    t->delta_pct = (double)(t->usage_total - ref) * 100.0 / (double)ref;
    t->have_delta = true;
}

static void respond(fh_txn *t, bool object)
{
    compute_delta(t);
    unsigned status = answer_status(t);
    /* Upstream errors, and answers the object cannot be spliced into: as
     * received, with the upstream's content type. */
    bool spliced = object && status < 300 && splice_fusion_object(t);
    fh_hresp *r = relayed_response(t, spliced ? "application/json" : NULL);
    if (!r) {
        prepare(t, 500, NULL);
        return;
    }
    add_fusion_headers(t, r);
    prepare(t, status, r);
}

static void take_evaluation(fh_txn *t)
{
    if (t->hook_timed_out)
        return;
    if (t->hook_rc != 0) {
        fh_warn("overlay %s/%s: evaluate failed for request %s", t->overlay_name,
                t->overlay_version, t->request_id);
        t->hook_failed = true;
        return;
    }
    double q = t->hook_quality;
    if (!isfinite(q)) {
        t->hook_failed = true;
        fh_warn("overlay %s/%s: evaluate returned a quality that is not a number for request "
                "%s; ignoring it",
                t->overlay_name, t->overlay_version, t->request_id);
        return;
    }
    t->quality = q < 0 ? 0 : (q > 1 ? 1 : q);
    t->have_quality = true;
}

/* After evaluate() of a complete answer: the response, or (the hook hung)
 * the baseline instead. */
static void after_evaluate(fh_txn *t)
{
    if (t->hook_timed_out) {
        t->reason = FH_REASON_HOOK_TIMEOUT;
        t->retried = true;
        send_baseline(t, false);
        return;
    }
    take_evaluation(t);
    respond(t, true);
}

/* Usage from an answer's `usage` object. */
static void take_usage_j(fh_txn *t, const fh_jval *usage)
{
    fh_jval v;
    t->usage_prompt = t->usage_completion = t->usage_total = 0;
    if (fh_jobj_get(usage, "prompt_tokens", &v))
        fh_jnum_long(&v, &t->usage_prompt);
    if (fh_jobj_get(usage, "completion_tokens", &v))
        fh_jnum_long(&v, &t->usage_completion);
    if (fh_jobj_get(usage, "total_tokens", &v))
        fh_jnum_long(&v, &t->usage_total);
    t->have_usage = true;
}

/* What the host reads of a complete answer, in one validating pass and
 * without building it: usage, whether it has a `fusion` member, and the
 * first choice's text (in *content). false when it is not a JSON object. */
static bool read_answer(fh_txn *t, fh_jval *content)
{
    static const char *const paths[] = {"fusion", "usage", "choices.0.message.content"};
    fh_jval top, found[3];
    content->type = FH_J_NONE;
    if (!t->resp.len || !fh_json_scan_paths(t->resp.data, t->resp.len, &top, paths, found, 3) ||
        top.type != FH_J_OBJECT)
        return false;
    const char *p = top.start + 1;
    while (p < top.end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
        p++;
    t->answer_empty = *p == '}';
    t->answer_has_fusion = found[0].type != FH_J_NONE;
    if (found[1].type == FH_J_OBJECT)
        take_usage_j(t, &found[1]);
    if (found[2].type == FH_J_STRING)
        *content = found[2];
    return true;
}

static hook_result txn_answer(fh_txn *t)
{
    if (t->result != FH_UPSTREAM_OK || t->overflow) {
        upstream_failed(t);
        return HOOK_OK;
    }
    unsigned status = answer_status(t);
    fh_jval content;
    bool object = read_answer(t, &content);
    if (status >= 200 && status < 300 && !object) {
        prepare_error(t, 502, "upstream_error", "upstream_invalid",
                      "the upstream answered 2xx with a body that is not a JSON object");
        return HOOK_OK;
    }
    if (t->overlaid && t->gen && status < 300 && content.type == FH_J_STRING) {
        size_t len = 0;
        char *text = fh_jstr_unescape(&content, &len); /* the call's: it may outlive t->resp */
        if (!text) {
            respond(t, true); /* out of memory: answered, not evaluated */
            return HOOK_OK;
        }
        if (run_hook(t, FH_HOOK_EVALUATE, text, len, true) == HOOK_LEFT)
            return HOOK_LEFT;
        after_evaluate(t);
        return HOOK_OK;
    }
    respond(t, object);
    return HOOK_OK;
}

/* ---- the connection: queueing, streams
 * --------------------------------------------------------------- */

/* The final SSE event of a stream whose upstream failed, into t->resp. */
static void stream_error_event(fh_txn *t)
{
    const char *code = "upstream_broken", *type = "upstream_error";
    char msg[400];
    if (t->stream_bad) {
        snprintf(msg, sizeof(msg), "the upstream sent a malformed stream event");
        code = "upstream_invalid";
    } else if (t->result == FH_UPSTREAM_TIMEOUT) {
        snprintf(msg, sizeof(msg), "the upstream stream stalled (%s)", t->error);
        code = "upstream_timeout";
    } else if (t->result == FH_UPSTREAM_CANCELLED) {
        snprintf(msg, sizeof(msg), "fusion-host is stopping");
        code = "shutting_down";
        type = "server_error";
    } else {
        snprintf(msg, sizeof(msg), "the upstream broke the stream (%s)", t->error);
    }
    json_t *o = json_pack("{s:{s:s, s:s, s:n, s:s}}", "error", "message", msg, "type", type,
                          "param", "code", code);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (text) {
        buf_add(&t->resp, "data: ", 6);
        buf_add(&t->resp, text, strlen(text));
        buf_add(&t->resp, "\n\n", 2);
        free(text);
    }
}

static ssize_t stream_reader(void *cls, char *out, size_t max)
{
    fh_txn *t = cls;
    TXN_CHECK(t);
    size_t avail = t->resp.len - t->resp_off;
    if (avail > 0) {
        size_t n = avail < max ? avail : max;
        memcpy(out, t->resp.data + t->resp_off, n);
        t->resp_off += n;
        if (t->resp_off == t->resp.len) {
            t->resp.len = t->resp_off = 0;
        } else if (t->resp_off >= STREAM_LOW) {
            /* A client slower than the upstream never empties the backlog:
             * move the unread part to the front, or the buffer grows with
             * the whole stream. */
            memmove(t->resp.data, t->resp.data + t->resp_off, t->resp.len - t->resp_off);
            t->resp.len -= t->resp_off;
            t->resp_off = 0;
        }
        if (t->paused && t->call && t->resp.len - t->resp_off < STREAM_LOW) {
            t->paused = false;
            fh_upstream_resume(t->pp->up, t->call);
        }
        return (ssize_t)n;
    }
    if (t->done) {
        if ((t->result == FH_UPSTREAM_OK && !t->stream_bad) || t->stream_ended)
            return FH_HRESP_END;
        if (t->kind == FH_TXN_PROXY)
            return FH_HRESP_ERROR; /* not an event stream: cut, as the upstream did */
        /* The upstream failed after the stream began: one last event in the
         * OpenAI error shape, then a clean end, so a client's SDK raises
         * its API error rather than a transport or JSON one. */
        t->stream_ended = true;
        stream_error_event(t);
        return stream_reader(cls, out, max);
    }
    suspend(t); /* nothing yet: park instead of being polled in a loop */
    return 0;
}

static void stream_free(void *cls)
{
    txn_unref(cls);
}

static int start_stream(fh_txn *t)
{
    fh_hresp *r = fh_hresp_reader(stream_reader, t, stream_free);
    if (!r)
        return -1;
    t->refs++; /* the response's, dropped in stream_free */
    t->ph = PH_STREAMING;
    if (t->kind == FH_TXN_PROXY) {
        if (t->content_type[0])
            fh_hresp_header(r, "Content-Type", t->content_type);
        add_upstream_headers(t, r);
        fh_hresp_header(r, "X-Fusion-Request-Id", t->request_id);
        return fh_hconn_respond(t->conn, answer_status(t), r);
    }
    fh_hresp_header(r, "Content-Type", "text/event-stream");
    fh_hresp_header(r, "Cache-Control", "no-cache");
    add_upstream_headers(t, r);
    add_fusion_headers(t, r);
    return fh_hconn_respond(t->conn, 200, r);
}

int fh_txn_reject_too_large(fh_txn *t)
{
    if (t->ph != PH_RECEIVING)
        return 0; /* answered already */
    t->ph = PH_ANSWERED;
    return fh_http_error(t->conn, 413, "invalid_request_error", "request_too_large",
                         "request body is larger than limits.max_body_bytes");
}

/* The body is complete: the first call of the handler without upload. */
static int body_complete(fh_txn *t)
{
    t->t_body_ns = fh_now_ns();
    if (atomic_load(&t->pp->p->closing)) {
        t->ph = PH_ANSWERED;
        return fh_http_error(t->conn, 503, "server_error", "draining", "fusion-host is stopping");
    }
    if (t->in_too_large)
        return fh_txn_reject_too_large(t);
    t->ph = PH_WAITING;
    if (t->kind == FH_TXN_MODELS || t->kind == FH_TXN_PROXY) {
        if (submit(t, NULL, 0) != 0) {
            t->ph = PH_ANSWERED;
            return fh_http_error(t->conn, 503, "server_error", "shutting_down",
                                 "fusion-host is stopping");
        }
    } else {
        queue_job(t, JOB_START);
    }
    suspend(t);
    return 0;
}

int fh_txn_step(fh_txn *t)
{
    TXN_CHECK(t);
    if (t->ph == PH_RECEIVING)
        return body_complete(t);
    if (t->ph != PH_WAITING)
        return 0;
    if (t->response || t->response_status) {
        fh_hresp *r = t->response;
        t->response = NULL;
        t->ph = PH_ANSWERED;
        if (!r)
            return -1; /* out of memory building it: close */
        return fh_hconn_respond(t->conn, t->response_status, r);
    }
    if (t->streaming)
        return start_stream(t);
    suspend(t); /* woken early: wait for the answer */
    return 0;
}

void fh_txn_completed(fh_txn *t, fh_hend toe)
{
    TXN_CHECK(t);
    t->conn = NULL;
    t->suspended = false;
    t->completed = true;
    t->toe = toe;
    if (t->call && !t->done) {
        /* The connection ended before the answer was all in: nobody will
         * read the rest of an expensive call. */
        fh_upstream_cancel(t->pp->up, t->call);
        t->call = NULL;
        if (toe == FH_HEND_CLIENT_GONE || toe == FH_HEND_TIMEOUT) {
            fh_metrics_client_cancelled(t->pp->p->metrics);
            fh_debug("request %s: client left; upstream call cancelled", t->request_id);
        }
    }
    queue_job(t, JOB_NONE);
}

/* ---- finish ------------------------------------------------------------------------------ */

/* How an overlaid request ended, decided here once (gates.h): the breaker
 * and the budget only count it. */
static fh_outcome classify(const fh_txn *t)
{
    if (t->hook_timed_out)
        return FH_OUT_HOOK_TIMEOUT; /* whichever hook, whatever happened after */
    if (t->hook_failed)
        return FH_OUT_HOOK_ERROR;
    if (t->reason == FH_REASON_OVERLAY_REJECTED_UPSTREAM)
        /* Only when the caller's own request was accepted: a 4xx both get
         * (a bad key, a retired model, the caller's mistake) is not the
         * overlay's doing. */
        return t->status >= 200 && t->status < 300 ? FH_OUT_REJECTED : FH_OUT_NEUTRAL;
    switch (t->reason) {
    case FH_REASON_HOOK_ERROR:
        return FH_OUT_HOOK_ERROR;
    case FH_REASON_HOOK_TIMEOUT:
        return FH_OUT_HOOK_TIMEOUT;
    case FH_REASON_BUDGET_LATENCY:
        return FH_OUT_LATENCY;
    case FH_REASON_APPLIED:
        break;
    default:
        return FH_OUT_NEUTRAL; /* declined by match(), over its spend, ... */
    }
    if (!t->overlaid || !t->done || t->result != FH_UPSTREAM_OK)
        return FH_OUT_NEUTRAL; /* the client left first, or the upstream is down */
    if (t->status >= 500 || t->status == 408 || t->status == 429)
        return FH_OUT_NEUTRAL; /* the upstream's trouble, not the overlay's */
    if (t->status >= 400)
        return FH_OUT_REJECTED;
    if (t->have_quality && t->quality < t->gcfg.quality_threshold)
        return FH_OUT_QUALITY;
    if (t->hook_ns > (uint64_t)t->gcfg.budget.hook_latency_ms * 1000000u)
        return FH_OUT_LATENCY; /* evaluate() pushed it over */
    return FH_OUT_SUCCESS;
}

static void settle_gates(fh_txn *t, double latency)
{
    fh_gates *g = t->pp->p->gates;
    if (!g)
        return;
    if (!t->overlaid && t->status == 200 && t->have_usage && t->usage_total > 0)
        fh_gates_baseline_add(g, t->scenario, t->usage_total); /* the reference */
    if (!t->ticket.gate)
        return;
    compute_delta(t); /* streams: their usage came with the last chunk */
    /* The overlaid call's tokens: reported; unknown (-1: the reservation is
     * charged) when it was answered without usage or cut off; 0 when it
     * never reached the upstream or none was made. */
    long used = 0;
    if (t->overlay_called) {
        used = t->overlaid ? (t->have_usage ? t->usage_total : -1) : t->overlay_used;
        if (used == -1 && t->overlaid && t->result == FH_UPSTREAM_CONNECT)
            used = 0;
    }
    fh_gate_finish(&t->ticket, &t->gcfg, classify(t), used, t->have_delta ? t->delta_pct : NAN,
                   latency, t->have_quality ? t->quality : NAN, fh_now_ms());
}

static void record(fh_txn *t)
{
    fh_pipeline *p = t->pp->p;
    if (t->kind == FH_TXN_PROXY) /* counted by its bounded route label */
        fh_metrics_request_done(p->metrics, "baseline", t->proxy_route, "proxied",
                                (double)(fh_now_ns() - t->t_start_ns) / 1e6, NAN, NAN);
    if (t->kind != FH_TXN_CHAT || !t->snap)
        return;
    double latency = (double)(fh_now_ns() - t->t_start_ns) / 1e6;
    settle_gates(t, latency);
    if (t->have_delta)
        fh_metrics_token_delta(p->metrics, t->overlaid ? t->overlay_name : "baseline", t->scenario,
                               t->delta_pct);
    const char *overlay = t->overlaid ? t->overlay_name : "baseline";
    /* Errors the host answered itself have no overhead figure. */
    fh_metrics_request_done(p->metrics, overlay, t->scenario, fh_reason_name(t->reason), latency,
                            t->have_quality ? t->quality : NAN,
                            t->have_overhead ? t->overhead_ms + (double)t->relay_ns / 1e6 : NAN);
    if (t->toe != FH_HEND_OK)
        fh_debug("request %s ended early (%s)", t->request_id,
                 t->toe == FH_HEND_CLIENT_GONE ? "client gone"
                 : t->toe == FH_HEND_TIMEOUT   ? "client too slow"
                 : t->toe == FH_HEND_SHUTDOWN  ? "shutdown"
                                               : "error");
}

static void finish(fh_txn *t)
{
    fh_pipe *pp = t->pp;
    record(t);
    if (t->gen) {
        fh_generation_count(t->gen, t->reason == FH_REASON_APPLIED);
        fh_generation_release(t->gen);
        t->gen = NULL;
    }
    snap_release(t->snap);
    t->snap = NULL;
    TAILQ_REMOVE(&pp->live, t, llink);
    atomic_fetch_sub(&pp->p->in_flight, 1);
    txn_unref(t);
}

/* A stream that ended well is evaluated once the client has it. */
static hook_result txn_finish(fh_txn *t)
{
    bool streamed_ok = t->streaming && t->done && t->result == FH_UPSTREAM_OK;
    if (streamed_ok && t->overlaid && t->gen && !t->text_truncated && !t->evaluated) {
        t->evaluated = true;
        char *text = t->text.data ? t->text.data : strdup("");
        size_t len = t->text.len;
        t->text.data = NULL; /* the call's */
        t->text.len = t->text.cap = 0;
        if (text) {
            if (run_hook(t, FH_HOOK_EVALUATE, text, len, true) == HOOK_LEFT)
                return HOOK_LEFT;
            take_evaluation(t);
        }
    }
    finish(t);
    return HOOK_OK;
}

/* A detached hook came back (or was abandoned): continue where it was. */
static hook_result txn_resumed(fh_txn *t)
{
    if (t->completed || t->aborted) {
        /* Answered already (a stream's evaluation, or shutdown): keep the
         * score, the finish comes with the connection's completion. */
        if (t->hook_kind == FH_HOOK_EVALUATE)
            take_evaluation(t);
        return HOOK_OK;
    }
    switch (t->hook_kind) {
    case FH_HOOK_MATCH:
        return after_match(t);
    case FH_HOOK_APPLY:
        after_apply(t);
        return HOOK_OK;
    case FH_HOOK_EVALUATE:
        after_evaluate(t);
        return HOOK_OK;
    default:
        return HOOK_OK;
    }
}

static hook_result run_job(fh_txn *t)
{
    job_kind j = t->job;
    t->job = JOB_NONE;
    hook_result r = HOOK_OK;
    switch (j) {
    case JOB_START: /* not after a shutdown's abort: answered 503 already */
        if (!t->completed && !t->aborted)
            r = txn_start(t);
        break;
    case JOB_ANSWER:
        if (!t->completed && !t->aborted)
            r = txn_answer(t);
        break;
    case JOB_RESUMED:
        r = txn_resumed(t);
        break;
    case JOB_NONE:
        break;
    }
    if (r == HOOK_LEFT)
        return r;
    if (t->completed && !t->in_hook && t->job == JOB_NONE)
        return txn_finish(t);
    return HOOK_OK;
}

static int jobs_turn(fh_worker *w, void *ud)
{
    (void)w;
    fh_pipe *pp = ud;
    fh_txn *t;
    while ((t = TAILQ_FIRST(&pp->ready)) != NULL) {
        TAILQ_REMOVE(&pp->ready, t, qlink);
        t->queued = false;
        TXN_CHECK(t);
        if (t->in_hook)
            continue; /* parked: its call's return requeues it */
        if (run_job(t) == HOOK_LEFT)
            return FH_TURN_LEFT;
    }
    return -1;
}

/* ---- workers, shutdown ------------------------------------------------------------------- */

fh_pipe *fh_pipe_new(fh_pipeline *p, fh_worker *w, fh_upstream *up)
{
    fh_pipe *pp = calloc(1, sizeof(*pp));
    if (!pp)
        return NULL;
    pp->p = p;
    pp->w = w;
    pp->up = up;
    TAILQ_INIT(&pp->ready);
    TAILQ_INIT(&pp->live);
    if (fh_worker_add_turn(w, jobs_turn, pp) != 0) {
        free(pp);
        return NULL;
    }
    fh_worker_set_frames(w, p->hook_deadline_ns, frame_resumed);
    return pp;
}

void fh_pipe_abort_all(fh_pipe *pp)
{
    atomic_store(&pp->p->closing, true);
    if (pp->probe) {
        fh_upstream_cancel(pp->up, pp->probe);
        pp->probe = NULL;
    }
    fh_txn *t;
    TAILQ_FOREACH(t, &pp->live, llink)
    {
        if (t->completed || t->ph == PH_RECEIVING || t->ph == PH_ANSWERED)
            continue;
        t->aborted = true;
        if (t->call) {
            fh_upstream_cancel(pp->up, t->call);
            t->call = NULL;
        }
        if (t->ph == PH_STREAMING) {
            t->done = true;
            t->result = FH_UPSTREAM_CANCELLED;
            wake(t); /* the reader ends the stream */
        } else if (!t->response) {
            prepare_error(t, 503, "server_error", "shutting_down", "fusion-host is stopping");
        }
    }
}

void fh_pipe_free(fh_pipe *pp)
{
    if (!pp)
        return;
    /* What the connections' close completed but no turn finished: finish here. A txn
     * parked in a hook keeps its memory (its call may still come back). */
    fh_txn *t, *next;
    for (t = TAILQ_FIRST(&pp->live); t; t = next) {
        next = TAILQ_NEXT(t, llink);
        if (t->queued) {
            TAILQ_REMOVE(&pp->ready, t, qlink);
            t->queued = false;
        }
        if (!t->in_hook)
            finish(t);
    }
    snap_release(pp->snap);
    free(pp);
}
