/*
 * server.c - the stub model's HTTP side on libmicrohttpd.
 *
 * Owns: the MHD daemon, the wake-up timer, the ring of recorded chat
 * requests, the counters behind /stub/stats, and per connection a
 * struct req (MHD's con_cls: created on the first handler call, freed in
 * on_completed) and, for streams, a struct stream (owned by its MHD
 * response, freed by MHD through stream_free).
 *
 * Threads: MHD runs one internal polling thread (epoll). Every handler,
 * content reader and completion callback runs on it, so the ring, the
 * counters, struct req and struct stream need no locks. The only other
 * thread is the timer's (timer.c), which touches nothing here but the
 * struct stub_wait of a parked (suspended) connection. The main thread
 * only starts and stops.
 *
 * Waiting never blocks the thread: a delayed answer suspends its
 * connection in the handler, a paced or stalled stream suspends in its
 * content reader (returning 0, which is safe only while suspended), and
 * the timer resumes them. A parked connection also wakes every
 * LIVENESS_MS to check that its client is still there, because MHD does
 * not notice a disconnect while a connection is suspended.
 */
#include "server.h"
#include "answer.h"
#include "strbuf.h"
#include "timer.h"

#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BODY_BYTES  (8u * 1024u * 1024u)
#define RING_SIZE       64
#define LIVENESS_MS     1000u
#define WORDS_PER_CHUNK 3
#define REQ_MAGIC       0x53545251u /* "STRQ" */
#define STREAM_MAGIC    0x53545253u /* "STRS" */

#ifdef NDEBUG
#define CHECK_MAGIC(p, m) ((void)0)
#else
#define CHECK_MAGIC(p, m)                                                                          \
    do {                                                                                           \
        if ((p)->magic != (m)) {                                                                   \
            fprintf(stderr, "fusion-stub-llm: %s:%d: bad magic\n", __FILE__, __LINE__);            \
            abort();                                                                               \
        }                                                                                          \
    } while (0)
#endif

/* One recorded chat request, as received. */
struct record {
    uint64_t seq;
    char *body; /* raw bytes plus a NUL for convenience */
    size_t len;
    char *authorization, *content_type, *fault_header; /* NULL when absent */
    json_t *headers;                                   /* every request header, names lower-cased */
};

struct stub_server {
    struct stub_config cfg;
    struct MHD_Daemon *daemon;
    struct stub_timer *timer;
    struct record ring[RING_SIZE]; /* oldest at ring_start */
    size_t ring_start, ring_count;
    uint64_t seq;                  /* chat requests received: ids, records */
    long in_flight, max_in_flight; /* chat requests not yet completed */
    unsigned long requests;        /* since start or DELETE /stub/stats */
    unsigned long hung_up;         /* chat requests whose client left before the answer */
};

/* Fault injection for one request; -1 / 0 mean "not asked for". All long
 * so one table (fault_spec) can set any field. */
struct fault {
    long status, delay_ms, reset, malformed, usage_on_last_choice_chunk, reject_if_system;
    long stall_after, break_after, chunk_delay_ms;
    long huge_event_kb; /* one SSE event of this many KiB with no blank line inside */
    long answer_kb;     /* the answer repeated to at least this many KiB */
};

enum route {
    R_CHAT,
    R_MODELS,
    R_REQUESTS,
    R_LAST,
    R_STATS,
    R_HEALTH,
    R_BYTES, /* GET /v1/files/ID/content: binary bytes */
    R_ECHO,  /* any other /v1/ path: what arrived, for a gateway's proxy tests */
    R_NOT_FOUND
};

enum phase { P_RECEIVING, P_WAITING, P_DONE };

/* A stream's SSE events, built up front and sent as the reader is asked. */
struct stream {
    uint32_t magic;
    struct MHD_Connection *conn;
    struct stub_timer *timer;
    struct strbuf text; /* every event, concatenated */
    size_t *ends;       /* ends[i]: offset just past event i */
    size_t nev, idx, off, sent;
    long stall_after, break_after, chunk_delay_ms;
    uint64_t next_due;
    int stalled;
    unsigned long *hung_up; /* the server's counter (same thread) */
    struct stub_wait wait;
};

/* What a chat request will be answered with, decided before any delay. */
struct outcome {
    int reset;
    int status;
    char *body; /* malloc'ed; handed to MHD when sent */
    size_t len;
    const char *content_type;
    struct stream *stream; /* handed to the MHD response when sent */
};

struct req {
    uint32_t magic;
    struct stub_server *srv;
    enum route route;
    enum phase phase;
    int counted; /* in in_flight */
    uint64_t id;
    char *body;
    size_t len, cap;
    int too_large;
    uint64_t due_ms;
    struct stub_wait wait;
    struct outcome out;
};

/* ---- small helpers ------------------------------------------------------ */

static void logf_req(const struct stub_server *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void logf_req(const struct stub_server *s, const char *fmt, ...)
{
    if (s->cfg.quiet)
        return;
    va_list ap;
    va_start(ap, fmt);
    fputs("fusion-stub-llm: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* Whether the client of a suspended connection has gone: MHD cannot tell
 * while the connection is suspended, so peek at the socket ourselves. */
static int peer_gone(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci)
        return 0;
    char b;
    ssize_t n = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0)
        return 1;
    return n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

/* Queues `body` (malloc'ed, ownership passes to MHD, also on failure). */
/* The answer headers the OpenAI API sends and clients read (the SDKs'
 * request_id, rate limits, when to retry a 429), plus a hop-by-hop one a
 * gateway must not pass on. */
static void add_api_headers(struct MHD_Response *r, unsigned status)
{
    static unsigned long next_id;
    char id[48];
    snprintf(id, sizeof id, "req_stub_%lu", ++next_id);
    MHD_add_response_header(r, "x-request-id", id);
    MHD_add_response_header(r, "openai-processing-ms", "1");
    MHD_add_response_header(r, "openai-version", "2020-10-01");
    MHD_add_response_header(r, "x-ratelimit-remaining-requests", "99");
    MHD_add_response_header(r, "Keep-Alive", "timeout=5");
    if (status == 429)
        MHD_add_response_header(r, "Retry-After", "7");
}

static enum MHD_Result send_owned(struct MHD_Connection *c, unsigned status, char *body, size_t len,
                                  const char *ctype)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    add_api_headers(r, status);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

/* Serialises and frees `v`, then queues it. */
static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, json_t *v)
{
    char *text = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    if (!text)
        return MHD_NO;
    return send_owned(c, status, text, strlen(text), "application/json");
}

static const char *error_type(unsigned status)
{
    if (status == 429)
        return "rate_limit_error";
    return status >= 500 ? "server_error" : "invalid_request_error";
}

/* The OpenAI error shape {"error": {"message", "type", "param", "code"}}. */
static json_t *error_json(unsigned status, const char *code, const char *msg)
{
    return json_pack("{s:{s:s, s:s, s:n, s:s}}", "error", "message", msg, "type",
                     error_type(status), "param", "code", code);
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *code,
                                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *code,
                                  const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return send_json(c, status, error_json(status, code, msg));
}

/* ---- fault injection ---------------------------------------------------- */

static void fault_init(struct fault *f)
{
    memset(f, 0, sizeof *f);
    f->delay_ms = -1;
    f->stall_after = -1;
    f->break_after = -1;
    f->chunk_delay_ms = -1;
}

/* Sets one field; on a bad key or value writes why to err and returns -1. */
static int fault_set(struct fault *f, const char *key, long long v, char *err, size_t errlen)
{
    static const struct {
        const char *name;
        long long lo, hi;
        size_t off;
    } spec[] = {
        /* Beyond 400..599: statuses a gateway must not relay (302, 600, 999). */
        {"status", 200, 999, offsetof(struct fault, status)},
        {"delay_ms", 0, 3600000, offsetof(struct fault, delay_ms)},
        {"reset", 0, 1, offsetof(struct fault, reset)},
        {"malformed", 0, 1, offsetof(struct fault, malformed)},
        {"stall_after_chunks", 0, 1000000, offsetof(struct fault, stall_after)},
        {"break_after_chunks", 0, 1000000, offsetof(struct fault, break_after)},
        {"chunk_delay_ms", 0, 600000, offsetof(struct fault, chunk_delay_ms)},
        {"usage_on_last_choice_chunk", 0, 1, offsetof(struct fault, usage_on_last_choice_chunk)},
        {"reject_if_system", 0, 1, offsetof(struct fault, reject_if_system)},
        {"huge_event_kb", 0, 65536, offsetof(struct fault, huge_event_kb)},
        {"answer_kb", 0, 262144, offsetof(struct fault, answer_kb)},
    };
    size_t i;
    for (i = 0; i < sizeof spec / sizeof spec[0]; i++)
        if (strcmp(key, spec[i].name) == 0)
            break;
    if (i == sizeof spec / sizeof spec[0]) {
        snprintf(err, errlen,
                 "unknown stub fault '%s'; known: status, delay_ms, reset, malformed, "
                 "stall_after_chunks, break_after_chunks, chunk_delay_ms, "
                 "usage_on_last_choice_chunk, reject_if_system, huge_event_kb, answer_kb",
                 key);
        return -1;
    }
    if (v < spec[i].lo || v > spec[i].hi) {
        snprintf(err, errlen, "stub fault '%s' must be between %lld and %lld", key, spec[i].lo,
                 spec[i].hi);
        return -1;
    }
    *(long *)((char *)f + spec[i].off) = (long)v;
    return 0;
}

/* Header form: "status=503,delay_ms=1000,reset" (',' or ';' separated; a
 * bare name means 1; true/false/yes/no accepted). */
static int fault_from_header(struct fault *f, const char *h, char *err, size_t errlen)
{
    char *copy = strdup(h);
    if (!copy) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    int rc = 0;
    char *save = NULL;
    for (char *item = strtok_r(copy, ",;", &save); item && rc == 0;
         item = strtok_r(NULL, ",;", &save)) {
        while (*item == ' ' || *item == '\t')
            item++;
        char *end = item + strlen(item);
        while (end > item && (end[-1] == ' ' || end[-1] == '\t'))
            *--end = '\0';
        if (*item == '\0')
            continue;
        char *eq = strchr(item, '=');
        long long v = 1;
        if (eq) {
            *eq = '\0';
            const char *val = eq + 1;
            if (strcasecmp(val, "true") == 0 || strcasecmp(val, "yes") == 0)
                v = 1;
            else if (strcasecmp(val, "false") == 0 || strcasecmp(val, "no") == 0)
                v = 0;
            else {
                char *num_end;
                errno = 0;
                v = strtoll(val, &num_end, 10);
                if (errno || num_end == val || *num_end != '\0') {
                    snprintf(err, errlen, "X-Stub-Fault: '%s' needs a number or true/false", item);
                    rc = -1;
                    break;
                }
            }
        }
        rc = fault_set(f, item, v, err, errlen);
    }
    free(copy);
    return rc;
}

/* Body form: {"stub": {"status": 503, "reset": true, ...}}. */
static int fault_from_json(struct fault *f, const json_t *obj, char *err, size_t errlen)
{
    if (!json_is_object(obj)) {
        snprintf(err, errlen, "'stub' must be an object of fault settings");
        return -1;
    }
    const char *key;
    const json_t *val;
    json_object_foreach((json_t *)obj, key, val)
    {
        long long v;
        if (json_is_boolean(val))
            v = json_is_true(val);
        else if (json_is_integer(val))
            v = json_integer_value(val);
        else {
            snprintf(err, errlen, "stub fault '%s' must be an integer or a boolean", key);
            return -1;
        }
        if (fault_set(f, key, v, err, errlen) != 0)
            return -1;
    }
    return 0;
}

/* ---- recording ---------------------------------------------------------- */

static void record_free(struct record *r)
{
    free(r->body);
    free(r->authorization);
    free(r->content_type);
    free(r->fault_header);
    json_decref(r->headers);
    memset(r, 0, sizeof *r);
}

static void ring_clear(struct stub_server *s)
{
    for (size_t i = 0; i < s->ring_count; i++)
        record_free(&s->ring[(s->ring_start + i) % RING_SIZE]);
    s->ring_start = s->ring_count = 0;
}

/* Keeps a copy of the body and headers; on out-of-memory keeps nothing. */
static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                      const char *value)
{
    (void)kind;
    char lower[128];
    size_t i = 0;
    for (; key[i] && i + 1 < sizeof lower; i++)
        lower[i] = (char)((key[i] >= 'A' && key[i] <= 'Z') ? key[i] + 32 : key[i]);
    lower[i] = '\0';
    json_object_set_new(cls, lower, json_string(value ? value : ""));
    return MHD_YES;
}

static void ring_add(struct stub_server *s, struct MHD_Connection *c, const struct req *q)
{
    struct record r = {.seq = q->id, .len = q->len};
    r.headers = json_object();
    if (r.headers)
        MHD_get_connection_values(c, MHD_HEADER_KIND, collect_header, r.headers);
    r.body = malloc(q->len + 1);
    r.authorization = dup_or_null(MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization"));
    r.content_type = dup_or_null(MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type"));
    r.fault_header = dup_or_null(MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Stub-Fault"));
    if (!r.body) {
        record_free(&r);
        return;
    }
    if (q->len)
        memcpy(r.body, q->body, q->len);
    r.body[q->len] = '\0';
    if (s->ring_count == RING_SIZE) {
        record_free(&s->ring[s->ring_start]);
        s->ring_start = (s->ring_start + 1) % RING_SIZE;
        s->ring_count--;
    }
    s->ring[(s->ring_start + s->ring_count) % RING_SIZE] = r;
    s->ring_count++;
}

static json_t *str_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

static enum MHD_Result send_requests(struct stub_server *s, struct MHD_Connection *c)
{
    json_t *arr = json_array();
    for (size_t i = 0; arr && i < s->ring_count; i++) {
        const struct record *r = &s->ring[(s->ring_start + i) % RING_SIZE];
        json_t *body = json_loadb(r->body, r->len, 0, NULL);
        json_t *raw = json_stringn(r->body, r->len); /* NULL when not UTF-8 */
        json_t *o = json_pack(
            "{s:I, s:O?, s:o, s:o, s:o, s:I, s:o, s:o}", "seq", (json_int_t)r->seq, "headers",
            r->headers, "authorization", str_or_null(r->authorization), "content_type",
            str_or_null(r->content_type), "x_stub_fault", str_or_null(r->fault_header), "bytes",
            (json_int_t)r->len, "body", body ? body : json_null(), "raw", raw ? raw : json_null());
        if (!o || json_array_append_new(arr, o) != 0) {
            json_decref(arr);
            arr = NULL;
        }
    }
    if (!arr)
        return send_error(c, 500, "out_of_memory", "out of memory");
    return send_json(c, 200, arr);
}

static enum MHD_Result send_last(struct stub_server *s, struct MHD_Connection *c)
{
    if (s->ring_count == 0)
        return send_error(c, 404, "no_requests", "no chat request recorded yet");
    const struct record *r = &s->ring[(s->ring_start + s->ring_count - 1) % RING_SIZE];
    char *copy = malloc(r->len ? r->len : 1);
    if (!copy)
        return MHD_NO;
    memcpy(copy, r->body, r->len);
    return send_owned(c, 200, copy, r->len,
                      r->content_type ? r->content_type : "application/octet-stream");
}

/* ---- building answers --------------------------------------------------- */

static json_t *usage_json(long prompt, long completion)
{
    return json_pack("{s:I, s:I, s:I}", "prompt_tokens", (json_int_t)prompt, "completion_tokens",
                     (json_int_t)completion, "total_tokens", (json_int_t)(prompt + completion));
}

/* Records that the text so far ends an event. */
static void end_event(struct stream *st, size_t *cap_ends)
{
    if (st->nev == *cap_ends) {
        size_t cap = *cap_ends ? *cap_ends * 2 : 32;
        size_t *ends = realloc(st->ends, cap * sizeof *ends);
        if (!ends) {
            st->text.failed = 1;
            return;
        }
        st->ends = ends;
        *cap_ends = cap;
    }
    st->ends[st->nev++] = st->text.len;
}

static void add_raw_event(struct stream *st, const char *raw, size_t *cap_ends)
{
    sb_puts(&st->text, raw);
    end_event(st, cap_ends);
}

/* Appends "data: <json>\n\n" as one event; frees `v`. */
static void add_event(struct stream *st, json_t *v, size_t *cap_ends)
{
    char *text = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    if (!text) {
        st->text.failed = 1;
        return;
    }
    sb_puts(&st->text, "data: ");
    sb_puts(&st->text, text);
    sb_puts(&st->text, "\n\n");
    free(text);
    end_event(st, cap_ends);
}

static void stream_free(void *cls)
{
    struct stream *st = cls;
    if (!st)
        return;
    CHECK_MAGIC(st, STREAM_MAGIC);
    st->magic = 0;
    free(st->text.data);
    free(st->ends);
    free(st);
}

/* A chunk object; `delta` and `usage` are stolen (usage NULL: no field,
 * json_null(): "usage": null as OpenAI sends when include_usage is on). */
static json_t *chunk_json(const char *id, json_int_t created, const char *model, json_t *delta,
                          const char *finish, json_t *usage)
{
    json_t *choices =
        delta ? json_pack("[{s:i, s:o, s:n, s:o}]", "index", 0, "delta", delta, "logprobs",
                          "finish_reason", finish ? json_string(finish) : json_null())
              : json_array();
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:s, s:o}", "id", id, "object",
                          "chat.completion.chunk", "created", created, "model", model,
                          "system_fingerprint", "fusion-stub", "choices", choices);
    if (o && usage)
        json_object_set_new(o, "usage", usage);
    else
        json_decref(usage);
    return o;
}

/*
 * The SSE events of an answer: a role chunk, content chunks of
 * WORDS_PER_CHUNK words, a finish chunk, the usage chunk when asked for,
 * [DONE]. Returns NULL when out of memory.
 */
static struct stream *build_stream(const char *id, const char *model, const char *answer,
                                   long prompt, long completion, int include_usage,
                                   int usage_on_last_choice, int malformed, long huge_event_kb)
{
    struct stream *st = calloc(1, sizeof *st);
    if (!st)
        return NULL;
    st->magic = STREAM_MAGIC;
    st->wait.slot = STUB_WAIT_IDLE;
    size_t cap_ends = 0;
    json_int_t created = (json_int_t)time(NULL);
    /* OpenAI sends "usage": null on every chunk once include_usage is on. */
    int null_usage = include_usage && !usage_on_last_choice;

    add_event(st,
              chunk_json(id, created, model,
                         json_pack("{s:s, s:s}", "role", "assistant", "content", ""), NULL,
                         null_usage ? json_null() : NULL),
              &cap_ends);
    if (huge_event_kb > 0) {
        /* One enormous event: a gateway must bound what it buffers. */
        size_t n = (size_t)huge_event_kb * 1024;
        char *big = malloc(n + 9);
        if (big) {
            memcpy(big, "data: ", 6);
            memset(big + 6, 'x', n);
            memcpy(big + 6 + n, "\n\n", 3);
            add_raw_event(st, big, &cap_ends);
            free(big);
        }
    }
    if (malformed) {
        /* A truncated JSON object where a chunk should be. */
        add_raw_event(st, "data: {\"id\": \"chatcmpl-stub\", \"choices\": [{\"delta\": {\"con\n\n",
                      &cap_ends);
        add_raw_event(st, "data: [DONE]\n\n", &cap_ends);
        if (st->text.failed) {
            stream_free(st);
            return NULL;
        }
        return st;
    }
    size_t start = 0, i = 0, words = 0, n = strlen(answer);
    while (i < n) {
        /* A word, then the whitespace after it, belong to the same chunk. */
        while (i < n && answer[i] != ' ' && answer[i] != '\n')
            i++;
        while (i < n && (answer[i] == ' ' || answer[i] == '\n'))
            i++;
        if (++words == WORDS_PER_CHUNK || i == n) {
            add_event(st,
                      chunk_json(id, created, model,
                                 json_pack("{s:s%}", "content", answer + start, i - start), NULL,
                                 null_usage ? json_null() : NULL),
                      &cap_ends);
            start = i;
            words = 0;
        }
    }
    json_t *final_usage = NULL;
    if (usage_on_last_choice)
        final_usage = usage_json(prompt, completion);
    else if (null_usage)
        final_usage = json_null();
    add_event(st, chunk_json(id, created, model, json_object(), "stop", final_usage), &cap_ends);
    if (include_usage && !usage_on_last_choice)
        add_event(st, chunk_json(id, created, model, NULL, NULL, usage_json(prompt, completion)),
                  &cap_ends);
    add_raw_event(st, "data: [DONE]\n\n", &cap_ends);
    if (st->text.failed) {
        stream_free(st);
        return NULL;
    }
    return st;
}

static void outcome_free(struct outcome *o)
{
    free(o->body);
    stream_free(o->stream);
    memset(o, 0, sizeof *o);
}

/* An error answer (status, OpenAI shape) as the outcome. */
static int outcome_error(struct outcome *o, unsigned status, const char *code, const char *msg)
{
    json_t *e = error_json(status, code, msg);
    o->body = e ? json_dumps(e, JSON_COMPACT) : NULL;
    json_decref(e);
    if (!o->body)
        return -1;
    o->len = strlen(o->body);
    o->status = (int)status;
    o->content_type = "application/json";
    return 0;
}

/*
 * Decides the answer to a parsed, valid-JSON chat request. Returns 0, or -1
 * when out of memory. Faults take effect in the order reset, status,
 * malformed, then validation, reject_if_system, and the answer itself.
 */
static int decide(struct stub_server *s, struct req *q, json_t *root, const struct fault *f)
{
    struct outcome *o = &q->out;
    char idbuf[64];
    snprintf(idbuf, sizeof idbuf, "chatcmpl-stub-%llu", (unsigned long long)q->id);

    if (f->reset) {
        o->reset = 1;
        return 0;
    }
    if (f->status) {
        char msg[128];
        snprintf(msg, sizeof msg, "fusion-stub-llm: injected status %ld", f->status);
        return outcome_error(o, (unsigned)f->status, "stub_fault", msg);
    }
    const json_t *stream_v = json_object_get(root, "stream");
    int stream = json_is_true(stream_v);
    if (f->malformed && !stream) {
        static const char bad[] = "{\"id\": \"chatcmpl-stub\", \"object\": \"chat.completion\", "
                                  "\"choices\": [{\"message\": {\"role\": \"assis";
        o->body = strdup(bad);
        if (!o->body)
            return -1;
        o->len = strlen(bad);
        o->status = 200;
        o->content_type = "application/json";
        return 0;
    }
    const json_t *messages = json_object_get(root, "messages");
    const char *invalid = stub_messages_invalid(messages);
    if (invalid)
        return outcome_error(o, 400, "invalid_messages", invalid);
    if (stream_v && !json_is_boolean(stream_v) && !json_is_null(stream_v)) /* null: not given */
        return outcome_error(o, 400, "invalid_stream", "'stream' must be a boolean");
    const json_t *model_v = json_object_get(root, "model");
    if (model_v && !json_is_string(model_v) && !json_is_null(model_v))
        return outcome_error(o, 400, "invalid_model", "'model' must be a string");
    const json_t *opts = json_object_get(root, "stream_options");
    if (opts && !json_is_object(opts) && !json_is_null(opts))
        return outcome_error(o, 400, "invalid_stream_options",
                             "'stream_options' must be an object");
    if (f->reject_if_system && stub_has_system(messages))
        return outcome_error(o, 400, "stub_reject_system",
                             "fusion-stub-llm: this upstream rejects requests with a system "
                             "message (reject_if_system)");

    const char *model = json_string_value(model_v);
    if (!model || !*model)
        model = s->cfg.model;
    unsigned directive = stub_detect_directive(messages);
    char *answer = stub_compose_answer(messages, directive);
    if (!answer)
        return -1;
    if (f->answer_kb > 0) {
        /* A long answer, for backpressure tests: the same text again. */
        size_t one = strlen(answer), want = (size_t)f->answer_kb * 1024;
        size_t times = one ? (want + one - 1) / one : 0;
        char *big = times ? malloc(one * times + 1) : NULL;
        if (big) {
            for (size_t k = 0; k < times; k++)
                memcpy(big + k * one, answer, one);
            big[one * times] = '\0';
            free(answer);
            answer = big;
        }
    }
    long prompt = stub_prompt_tokens(messages);
    long completion = stub_completion_tokens(answer);

    if (stream) {
        int include_usage = json_is_true(json_object_get(opts, "include_usage"));
        o->stream =
            build_stream(idbuf, model, answer, prompt, completion, include_usage,
                         f->usage_on_last_choice_chunk != 0, f->malformed != 0, f->huge_event_kb);
        free(answer);
        if (!o->stream)
            return -1;
        o->stream->stall_after = f->stall_after;
        o->stream->break_after = f->break_after;
        o->stream->chunk_delay_ms =
            f->chunk_delay_ms >= 0 ? f->chunk_delay_ms : s->cfg.chunk_delay_ms;
        o->stream->timer = s->timer;
        o->status = 200;
        return 0;
    }
    json_t *reply = json_pack(
        "{s:s, s:s, s:I, s:s, s:s, s:[{s:i, s:{s:s, s:s}, s:n, s:s}], s:o}", "id", idbuf, "object",
        "chat.completion", "created", (json_int_t)time(NULL), "model", model, "system_fingerprint",
        "fusion-stub", "choices", "index", 0, "message", "role", "assistant", "content", answer,
        "logprobs", "finish_reason", "stop", "usage", usage_json(prompt, completion));
    free(answer);
    o->body = reply ? json_dumps(reply, JSON_COMPACT) : NULL;
    json_decref(reply);
    if (!o->body)
        return -1;
    o->len = strlen(o->body);
    o->status = 200;
    o->content_type = "application/json";
    return 0;
}

/* ---- streaming ---------------------------------------------------------- */

/* Parks the stream's connection; returns what the reader should return. */
static ssize_t stream_park(struct stream *st, uint64_t due)
{
    if (stub_timer_park(st->timer, &st->wait, st->conn, due) != 0)
        return MHD_CONTENT_READER_END_WITH_ERROR; /* shutting down or no memory */
    return 0; /* suspended: MHD calls again only after the timer resumes us */
}

/*
 * MHD content reader. Copies whole or partial events into buf; at an event
 * boundary applies break/stall and pacing. When there is nothing to send
 * yet it suspends and returns 0 (never 0 without suspending: that would
 * make MHD spin).
 */
static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct stream *st = cls;
    CHECK_MAGIC(st, STREAM_MAGIC);
    if (st->stalled) {
        /* Woken only to see whether the client gave up. */
        if (peer_gone(st->conn)) {
            (*st->hung_up)++;
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        return stream_park(st, stub_now_ms() + LIVENESS_MS);
    }
    size_t copied = 0;
    while (copied < max) {
        if (st->off == 0) {
            if (st->break_after >= 0 && (long)st->sent >= st->break_after) {
                if (copied)
                    break; /* let what we have go out first */
                return MHD_CONTENT_READER_END_WITH_ERROR;
            }
            if (st->stall_after >= 0 && (long)st->sent >= st->stall_after) {
                if (copied)
                    break;
                st->stalled = 1;
                return stream_park(st, stub_now_ms() + LIVENESS_MS);
            }
            if (st->idx == st->nev) {
                if (copied)
                    break;
                return MHD_CONTENT_READER_END_OF_STREAM;
            }
            if (st->chunk_delay_ms > 0 && st->sent > 0) {
                if (copied)
                    break; /* paced: one event per wake-up */
                uint64_t now = stub_now_ms();
                if (now < st->next_due)
                    return stream_park(st, st->next_due);
            }
        }
        size_t begin = st->idx ? st->ends[st->idx - 1] : 0;
        size_t left = st->ends[st->idx] - begin - st->off;
        size_t n = left < max - copied ? left : max - copied;
        memcpy(buf + copied, st->text.data + begin + st->off, n);
        copied += n;
        st->off += n;
        if (n == left) {
            st->idx++;
            st->sent++;
            st->off = 0;
            st->next_due =
                stub_deadline_ms((uint64_t)(st->chunk_delay_ms > 0 ? st->chunk_delay_ms : 0));
        }
    }
    return (ssize_t)copied;
}

/* ---- chat completions --------------------------------------------------- */

/* Sends the decided outcome (after any delay). */
static enum MHD_Result deliver(struct stub_server *s, struct MHD_Connection *c, struct req *q)
{
    struct outcome *o = &q->out;
    q->phase = P_DONE;
    if (o->reset) {
        logf_req(s, "#%llu reset (injected)", (unsigned long long)q->id);
        return MHD_NO; /* MHD closes the connection without an answer */
    }
    if (o->stream) {
        struct stream *st = o->stream;
        st->conn = c;
        st->hung_up = &s->hung_up;
        struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16 * 1024,
                                                                   stream_read, st, stream_free);
        if (!r)
            return MHD_NO; /* the stream stays in the outcome and is freed with q */
        o->stream = NULL;  /* owned by the response from here on */
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        add_api_headers(r, 200);
        enum MHD_Result ret = MHD_queue_response(c, 200, r);
        MHD_destroy_response(r);
        logf_req(s, "#%llu 200 stream (%zu events)", (unsigned long long)q->id, st->nev);
        return ret;
    }
    char *body = o->body;
    o->body = NULL; /* send_owned takes it */
    logf_req(s, "#%llu %d", (unsigned long long)q->id, o->status);
    return send_owned(c, (unsigned)o->status, body, o->len, o->content_type);
}

/* Parks a delayed request until min(deadline, next liveness check). */
static enum MHD_Result park_request(struct stub_server *s, struct MHD_Connection *c, struct req *q)
{
    uint64_t now = stub_now_ms();
    uint64_t due = q->due_ms < now + LIVENESS_MS ? q->due_ms : now + LIVENESS_MS;
    if (stub_timer_park(s->timer, &q->wait, c, due) != 0)
        return MHD_NO; /* shutting down or out of memory */
    return MHD_YES;
}

/* The whole body is in: record, parse, decide, then answer or wait. */
static enum MHD_Result chat_complete(struct stub_server *s, struct MHD_Connection *c, struct req *q)
{
    if (q->too_large) {
        q->phase = P_DONE;
        logf_req(s, "#%llu 413", (unsigned long long)q->id);
        return send_error(c, 413, "body_too_large", "request body over %u bytes", MAX_BODY_BYTES);
    }
    ring_add(s, c, q);

    json_error_t jerr;
    json_t *root = json_loadb(q->body ? q->body : "", q->len, 0, &jerr);
    if (!root && strstr(jerr.text, "too big integer"))
        /* An integer past 2^63 (a seed of 2^64-1) is valid JSON the API
         * takes; as a real here (the stub reads no such field). */
        root = json_loadb(q->body ? q->body : "", q->len, JSON_DECODE_INT_AS_REAL, &jerr);
    if (!root || !json_is_object(root)) {
        q->phase = P_DONE;
        logf_req(s, "#%llu 400 bad JSON", (unsigned long long)q->id);
        enum MHD_Result ret =
            root ? send_error(c, 400, "invalid_json", "the body must be a JSON object")
                 : send_error(c, 400, "invalid_json", "invalid JSON at line %d column %d: %s",
                              jerr.line, jerr.column, jerr.text);
        json_decref(root);
        return ret;
    }

    struct fault f;
    fault_init(&f);
    char err[256];
    const char *hdr = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "X-Stub-Fault");
    const json_t *body_fault = json_object_get(root, "stub");
    if ((hdr && fault_from_header(&f, hdr, err, sizeof err) != 0) ||
        (body_fault && fault_from_json(&f, body_fault, err, sizeof err) != 0)) {
        json_decref(root);
        q->phase = P_DONE;
        return send_error(c, 400, "invalid_stub_fault", "%s", err);
    }
    int rc = decide(s, q, root, &f);
    json_decref(root);
    if (rc != 0) {
        q->phase = P_DONE;
        return send_error(c, 500, "out_of_memory", "out of memory");
    }
    long delay = f.delay_ms >= 0 ? f.delay_ms : s->cfg.delay_ms;
    if (delay > 0) {
        q->phase = P_WAITING;
        q->due_ms = stub_deadline_ms((uint64_t)delay);
        return park_request(s, c, q);
    }
    return deliver(s, c, q);
}

/* ---- MHD callbacks ------------------------------------------------------ */

static enum route route_of(const char *url)
{
    if (strcmp(url, "/v1/chat/completions") == 0)
        return R_CHAT;
    if (strcmp(url, "/v1/models") == 0)
        return R_MODELS;
    if (strcmp(url, "/stub/requests") == 0)
        return R_REQUESTS;
    if (strcmp(url, "/stub/last") == 0)
        return R_LAST;
    if (strcmp(url, "/stub/stats") == 0)
        return R_STATS;
    if (strcmp(url, "/health") == 0)
        return R_HEALTH;
    size_t n = strlen(url);
    if (strncmp(url, "/v1/files/", 10) == 0 && n > 18 && strcmp(url + n - 8, "/content") == 0)
        return R_BYTES;
    if (strncmp(url, "/v1/", 4) == 0)
        return R_ECHO;
    return R_NOT_FOUND;
}

static enum MHD_Result method_not_allowed(struct MHD_Connection *c, const char *method,
                                          const char *url)
{
    return send_error(c, 405, "method_not_allowed", "%s is not allowed on %s", method, url);
}

/* A proxied request as it arrived (R_ECHO): method, path, query, content
 * type and the body's size and FNV-1a hash; or (R_BYTES) 4096 binary bytes
 * 0, 1, ... 255, 0, ... */
static enum MHD_Result echo_route(struct MHD_Connection *c, const struct req *q, const char *method,
                                  const char *url)
{
    if (q->route == R_BYTES) {
        char *b = malloc(4096);
        if (!b)
            return MHD_NO;
        for (int i = 0; i < 4096; i++)
            b[i] = (char)(i & 0xff);
        return send_owned(c, 200, b, 4096, "application/octet-stream");
    }
    if (q->too_large)
        return send_error(c, 413, "request_too_large", "the stub keeps bodies up to %u bytes",
                          (unsigned)MAX_BODY_BYTES);
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < q->len; i++)
        h = (h ^ (unsigned char)q->body[i]) * 16777619u;
    const char *query = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "q");
    const char *ct = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Type");
    return send_json(c, 201,
                     json_pack("{s:s, s:s, s:s, s:s?, s:s?, s:I, s:I}", "object", "stub.echo",
                               "method", method, "path", url, "q", query, "content_type", ct,
                               "bytes", (json_int_t)q->len, "fnv1a", (json_int_t)h));
}

/* Every route but chat completions, once its (ignored) body is read. */
static enum MHD_Result other_route(struct stub_server *s, struct MHD_Connection *c,
                                   enum route route, const char *method, const char *url)
{
    int get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    int del = strcmp(method, "DELETE") == 0;
    switch (route) {
    case R_MODELS:
        if (!get)
            return method_not_allowed(c, method, url);
        return send_json(c, 200,
                         json_pack("{s:s, s:[{s:s, s:s, s:I, s:s}]}", "object", "list", "data",
                                   "id", s->cfg.model, "object", "model", "created", (json_int_t)0,
                                   "owned_by", "fusion-stub"));
    case R_REQUESTS:
        if (get)
            return send_requests(s, c);
        if (del) {
            ring_clear(s);
            return send_json(c, 200, json_pack("{s:b}", "cleared", 1));
        }
        return method_not_allowed(c, method, url);
    case R_LAST:
        return get ? send_last(s, c) : method_not_allowed(c, method, url);
    case R_STATS:
        if (del) {
            /* A fresh measurement window for tests of concurrency. */
            s->requests = 0;
            s->hung_up = 0;
            s->max_in_flight = s->in_flight;
        } else if (!get) {
            return method_not_allowed(c, method, url);
        }
        return send_json(c, 200,
                         json_pack("{s:I, s:I, s:I, s:I, s:I}", "requests", (json_int_t)s->requests,
                                   "hung_up", (json_int_t)s->hung_up, "in_flight",
                                   (json_int_t)s->in_flight, "max_in_flight",
                                   (json_int_t)s->max_in_flight, "parked",
                                   (json_int_t)stub_timer_parked(s->timer)));
    case R_HEALTH:
        return get ? send_json(c, 200, json_pack("{s:s}", "status", "ok"))
                   : method_not_allowed(c, method, url);
    default:
        return send_error(c, 404, "not_found", "no route %s %s", method, url);
    }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    struct stub_server *s = cls;
    struct req *q = *con_cls;
    if (!q) {
        q = calloc(1, sizeof *q);
        if (!q)
            return MHD_NO;
        q->magic = REQ_MAGIC;
        q->srv = s;
        q->route = route_of(url);
        q->wait.slot = STUB_WAIT_IDLE;
        if (q->route == R_CHAT && strcmp(method, "POST") == 0) {
            q->counted = 1;
            q->id = ++s->seq;
            s->requests++;
            if (++s->in_flight > s->max_in_flight)
                s->max_in_flight = s->in_flight;
        }
        *con_cls = q;
        return MHD_YES;
    }
    CHECK_MAGIC(q, REQ_MAGIC);

    if (*upload_size > 0) {
        /* Only chat and echo bodies are kept; beyond the cap they are
         * dropped and the request ends in 413 once fully read. */
        if ((q->counted || q->route == R_ECHO) && !q->too_large) {
            if (q->len + *upload_size > MAX_BODY_BYTES) {
                q->too_large = 1;
                free(q->body);
                q->body = NULL;
                q->len = q->cap = 0;
            } else {
                if (q->len + *upload_size > q->cap) {
                    size_t cap = q->cap ? q->cap : 4096;
                    while (cap < q->len + *upload_size)
                        cap *= 2;
                    char *p = realloc(q->body, cap);
                    if (!p)
                        return MHD_NO;
                    q->body = p;
                    q->cap = cap;
                }
                memcpy(q->body + q->len, upload, *upload_size);
                q->len += *upload_size;
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }

    if (q->route != R_CHAT) {
        q->phase = P_DONE;
        return q->route == R_ECHO || q->route == R_BYTES ? echo_route(c, q, method, url)
                                                         : other_route(s, c, q->route, method, url);
    }
    if (!q->counted)
        return method_not_allowed(c, method, url);
    switch (q->phase) {
    case P_RECEIVING:
        return chat_complete(s, c, q);
    case P_WAITING:
        /* Resumed by the timer: either the deadline or a liveness check. */
        if (stub_now_ms() < q->due_ms) {
            if (peer_gone(c))
                return MHD_NO;
            return park_request(s, c, q);
        }
        return deliver(s, c, q);
    default:
        return MHD_YES; /* answer already queued */
    }
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode why)
{
    struct stub_server *s = cls;
    struct req *q = *con_cls;
    if (!q)
        return;
    CHECK_MAGIC(q, REQ_MAGIC);
    if (q->counted)
        s->in_flight--;
    if (q->counted && why != MHD_REQUEST_TERMINATED_COMPLETED_OK && q->phase != P_DONE)
        s->hung_up++;
    if (q->counted && why != MHD_REQUEST_TERMINATED_COMPLETED_OK && q->phase != P_DONE)
        logf_req(s, "#%llu ended early (client gone or shutdown)", (unsigned long long)q->id);
    outcome_free(&q->out);
    free(q->body);
    q->magic = 0;
    free(q);
    *con_cls = NULL;
}

/* ---- start / stop ------------------------------------------------------- */

struct stub_server *stub_server_start(const struct stub_config *cfg, const struct sockaddr *addr,
                                      socklen_t addrlen, uint16_t *port)
{
    struct stub_server *s = calloc(1, sizeof *s);
    if (!s) {
        fprintf(stderr, "fusion-stub-llm: out of memory\n");
        return NULL;
    }
    s->cfg = *cfg;
    s->timer = stub_timer_start();
    if (!s->timer) {
        fprintf(stderr, "fusion-stub-llm: cannot start the timer thread: %s\n", strerror(errno));
        free(s);
        return NULL;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_ALLOW_SUSPEND_RESUME;
    flags |= MHD_is_feature_supported(MHD_FEATURE_EPOLL) == MHD_YES ? MHD_USE_EPOLL : MHD_USE_AUTO;
    if (addr->sa_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    if (!cfg->quiet)
        flags |= MHD_USE_ERROR_LOG;
    (void)addrlen;
    s->daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, addr,
                                 MHD_OPTION_CONNECTION_LIMIT, cfg->conn_limit,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                                 MHD_OPTION_LISTEN_BACKLOG_SIZE, (unsigned)4096,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_END);
    if (!s->daemon) {
        fprintf(stderr, "fusion-stub-llm: cannot listen (address in use, or not an address of this "
                        "host?)\n");
        stub_timer_stop(s->timer);
        free(s);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    *port = info ? info->port : 0;
    return s;
}

void stub_server_stop(struct stub_server *s)
{
    if (!s)
        return;
    /* MHD_stop_daemon must not find a suspended connection: resume them
     * all, refuse new parks, and give the MHD thread a moment to run the
     * resumed callbacks (which then end their requests). */
    stub_timer_resume_all(s->timer);
    uint64_t give_up = stub_now_ms() + 5000;
    while (stub_timer_parked(s->timer) > 0 && stub_now_ms() < give_up) {
        struct timespec ts = {0, 5 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    MHD_stop_daemon(s->daemon);
    stub_timer_stop(s->timer);
    ring_clear(s);
    free(s);
}
