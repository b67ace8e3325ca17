/*
 * httpd.c - see httpd.h.
 *
 * A connection moves through: HEAD (waiting for or reading a request head)
 * -> BODY (Content-Length or chunked) -> WAIT (the application has the
 * request) -> SEND (writing its response) -> HEAD again (keep-alive; bytes
 * a client pipelined are parsed at once) or LINGER/close. Sockets are
 * watched level-triggered; interest is recomputed after every step.
 *
 * While the application has the request the socket is still watched: the
 * next request's bytes (pipelining) wait in the read buffer, a FIN (a
 * half-close, legal after a complete request) is remembered and the answer
 * still sent, an RST or socket error ends the request at once (completed
 * FH_HEND_CLIENT_GONE), which is what lets the pipeline cancel an upstream
 * call nobody will read.
 *
 * Time limits are deadlines checked by a sweep every SWEEP_MS (not timers
 * restarted by each byte, which a client sending one byte a second keeps
 * alive forever): the whole head, the body at a minimum average rate, the
 * keep-alive wait, a write that makes no progress, and a lingering close.
 *
 * The parser is strict where leniency lets two HTTP parsers disagree about
 * where a request ends (request smuggling): Content-Length with
 * Transfer-Encoding, differing Content-Lengths, whitespace before a header
 * colon, folded header lines, bare CRs and unknown transfer codings are all
 * 400 (or 501) with the connection closed.
 */
#include "httpd.h"

#include "apierror.h"
#include "log.h"
#include "util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/queue.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define SWEEP_MS    100
#define LINGER_MS   2000
#define MAX_HEADERS 100
#define CHUNK_OUT   (16u << 10) /* a streamed body's bytes per chunk */
#define CHUNK_LINE  1024        /* a chunk-size line with its extensions */
#define BODY_READ   (64u << 10) /* one read of a Content-Length body */
#define DISCARD_MAX (64u << 10) /* the rest of a body dropped to keep the connection */

typedef enum { C_HEAD, C_BODY, C_WAIT, C_SEND, C_LINGER } cstate;
typedef enum { CH_SIZE, CH_DATA, CH_CRLF, CH_TRAILER } chstate;
typedef enum { GO, WAIT, GONE } step; /* what a step of a connection left */
typedef enum { DL_NONE, DL_FIRST, DL_HEAD, DL_IDLE, DL_BODY, DL_WRITE, DL_LINGER } dlkind;

struct fh_hresp {
    char *data; /* buffer body (freed) */
    size_t len;
    fh_hreader_fn reader;
    void *cls;
    void (*free_cls)(void *cls);
    char *hdrs; /* "Name: value\r\n"... */
    size_t hlen, hcap;
    bool close;
};

typedef struct hdr {
    const char *name, *value;
} hdr;

struct fh_hconn {
    fh_hsrv *s;
    fh_watch watch;
    TAILQ_ENTRY(fh_hconn) link;  /* all */
    TAILQ_ENTRY(fh_hconn) rlink; /* resumed */
    bool resumed;
    bool busy; /* being advanced: a response queued now needs no resume */
    void *conn_ud;
    fh_hsrv_limits lim; /* taken at the start of each request */
    cstate st;

    char *rbuf; /* lim.max_header bytes */
    size_t rlen, rcap, scanned;
    bool read_closed;

    /* The request. */
    char *head; /* a copy of the head, NUL-separated */
    hdr *hdrs;
    size_t nhdrs;
    const char *method, *url;
    bool http10, keep_alive, is_head, expect_continue, chunked, in_request, has_ctx;
    void *ctx;
    uint64_t body_left; /* Content-Length still to come */
    chstate ch;
    uint64_t ch_left;
    uint64_t body_rx;
    uint64_t body_t0_ns;
    bool body_done;

    /* The response. */
    char extra[1024]; /* headers added for this request's response (CORS) */
    size_t extra_len;
    fh_hresp *resp;
    bool answered, close_after, reader_waiting, reader_done;
    char *obuf;
    size_t olen, ooff, ocap;
    size_t boff; /* of resp->data */

    dlkind dl;
    uint64_t deadline_ns;
    uint32_t events;
};

struct fh_hsrv {
    fh_worker *w;
    fh_hsrv_cbs cb;
    fh_hsrv_limits lim;
    TAILQ_HEAD(, fh_hconn) all;
    TAILQ_HEAD(, fh_hconn) resumed;
    size_t count;
    uint64_t next_sweep_ns;
    time_t date_at;
    char date[40];
};

static bool conn_advance(fh_hconn *c);
static void conn_close(fh_hconn *c, fh_hend how);

static bool has_token(const char *v, const char *token);

/* ---- responses --------------------------------------------------------------------- */

fh_hresp *fh_hresp_buffer(char *data, size_t len)
{
    fh_hresp *r = calloc(1, sizeof(*r));
    if (!r) {
        free(data);
        return NULL;
    }
    r->data = data;
    r->len = data ? len : 0;
    return r;
}

fh_hresp *fh_hresp_reader(fh_hreader_fn fn, void *cls, void (*free_cls)(void *cls))
{
    fh_hresp *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->reader = fn;
    r->cls = cls;
    r->free_cls = free_cls;
    return r;
}

static bool field_ok(const char *s)
{
    for (; *s; s++)
        if (*s == '\r' || *s == '\n')
            return false;
    return true;
}

int fh_hresp_header(fh_hresp *r, const char *name, const char *value)
{
    if (!r || !name || !value || !*name || !field_ok(name) || !field_ok(value))
        return -1;
    size_t nl = strlen(name), vl = strlen(value), need = r->hlen + nl + vl + 4;
    if (need > r->hcap) {
        size_t cap = r->hcap ? r->hcap : 256;
        while (cap < need)
            cap *= 2;
        char *g = realloc(r->hdrs, cap);
        if (!g)
            return -1;
        r->hdrs = g;
        r->hcap = cap;
    }
    if (strcasecmp(name, "Connection") == 0) {
        /* The connection's own business: build_head writes it. */
        if (has_token(value, "close"))
            r->close = true;
        return 0;
    }
    memcpy(r->hdrs + r->hlen, name, nl);
    memcpy(r->hdrs + r->hlen + nl, ": ", 2);
    memcpy(r->hdrs + r->hlen + nl + 2, value, vl);
    memcpy(r->hdrs + r->hlen + nl + 2 + vl, "\r\n", 2);
    r->hlen = need;
    return 0;
}

void fh_hresp_free(fh_hresp *r)
{
    if (!r)
        return;
    if (r->free_cls)
        r->free_cls(r->cls);
    free(r->data);
    free(r->hdrs);
    free(r);
}

const char *fh_http_reason(unsigned status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Content Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
    }
}

/* ---- helpers ------------------------------------------------------------------------ */

static bool tchar(unsigned char ch)
{
    /* RFC 9110 token characters. */
    static const char extra[] = "!#$%&'*+-.^_`|~";
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           (ch && strchr(extra, ch));
}

static void set_deadline(fh_hconn *c, dlkind k, uint64_t ms)
{
    c->dl = k;
    c->deadline_ns = k == DL_NONE ? 0 : fh_now_ns() + ms * 1000000u;
}

static void update_events(fh_hconn *c)
{
    /* Level-triggered: a FIN stays readable, so once seen (or with no room
     * to read into) only errors and hang-ups, which epoll always reports. */
    uint32_t ev = 0;
    bool room = c->rlen < c->rcap;
    if (c->st == C_LINGER || (!c->read_closed && room))
        ev |= EPOLLIN | EPOLLRDHUP;
    bool out = c->olen > c->ooff || (c->st == C_SEND && c->resp && !c->reader_waiting &&
                                     (c->resp->reader ? !c->reader_done : c->boff < c->resp->len));
    if (out)
        ev |= EPOLLOUT;
    if (ev != c->events) {
        c->events = ev;
        fh_worker_rewatch(c->s->w, &c->watch, ev);
    }
}

static const char *date_now(fh_hsrv *s)
{
    time_t now = time(NULL);
    if (now != s->date_at) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(s->date, sizeof(s->date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        s->date_at = now;
    }
    return s->date;
}

static int obuf_reserve(fh_hconn *c, size_t extra)
{
    if (c->ooff == c->olen)
        c->ooff = c->olen = 0;
    if (c->olen + extra <= c->ocap)
        return 0;
    size_t cap = c->ocap ? c->ocap : 512;
    while (cap < c->olen + extra)
        cap *= 2;
    char *g = realloc(c->obuf, cap);
    if (!g)
        return -1;
    c->obuf = g;
    c->ocap = cap;
    return 0;
}

static int obuf_add(fh_hconn *c, const char *s, size_t n)
{
    if (obuf_reserve(c, n) != 0)
        return -1;
    memcpy(c->obuf + c->olen, s, n);
    c->olen += n;
    return 0;
}

/* ---- ending requests ------------------------------------------------------------------ */

static void request_reset(fh_hconn *c)
{
    free(c->head);
    free(c->hdrs);
    c->head = NULL;
    c->hdrs = NULL;
    c->nhdrs = 0;
    c->method = c->url = NULL;
    c->in_request = c->has_ctx = false;
    c->ctx = NULL;
    c->body_left = c->ch_left = c->body_rx = 0;
    c->body_done = false;
    c->ch = CH_SIZE;
    fh_hresp_free(c->resp);
    c->resp = NULL;
    c->answered = c->reader_waiting = c->reader_done = false;
    c->boff = 0;
    c->extra_len = 0;
    c->chunked = c->expect_continue = c->is_head = false;
}

/* Tells the application its request is over (once). */
static void request_end(fh_hconn *c, fh_hend how)
{
    if (c->has_ctx && c->s->cb.completed) {
        c->has_ctx = false;
        c->s->cb.completed(c->s->cb.ud, c, c->ctx, how);
    }
    request_reset(c);
}

static void conn_close(fh_hconn *c, fh_hend how)
{
    fh_hsrv *s = c->s;
    request_end(c, how);
    if (c->resumed)
        TAILQ_REMOVE(&s->resumed, c, rlink);
    TAILQ_REMOVE(&s->all, c, link);
    s->count--;
    fh_worker_unwatch(s->w, &c->watch);
    close(c->watch.fd);
    if (s->cb.closed)
        s->cb.closed(s->cb.ud, c->conn_ud);
    free(c->rbuf);
    free(c->obuf);
    free(c);
}

/* After the last response: let the client read it before the socket goes
 * (closing with unread input would send a reset that can destroy it). */
static step conn_linger(fh_hconn *c)
{
    request_end(c, FH_HEND_OK);
    if (c->read_closed) {
        conn_close(c, FH_HEND_OK);
        return GONE;
    }
    shutdown(c->watch.fd, SHUT_WR);
    c->st = C_LINGER;
    c->rlen = 0;
    set_deadline(c, DL_LINGER, LINGER_MS);
    return WAIT;
}

/* ---- queueing a response ------------------------------------------------------------- */

static int build_head(fh_hconn *c, unsigned status)
{
    fh_hresp *r = c->resp;
    char line[160];
    bool bodiless = status == 204 || status == 304 || (status >= 100 && status < 200);
    /* A half-closed client (read_closed) still gets every request it
     * pipelined before its FIN: step_head closes once none is left. */
    if (r->close || !c->keep_alive)
        c->close_after = true;
    /* Answered before the body was in: what is left of it is read and
     * dropped, keeping the connection, when it is small and its end is
     * known; else the connection closes after this response (a client
     * told "no" before 100 Continue may never send it). */
    if (!c->body_done && (c->chunked || c->expect_continue || c->body_left > DISCARD_MAX))
        c->close_after = true;
    if (r->reader && c->http10)
        c->close_after = true; /* no chunked in 1.0: the close ends the body */
    int n = snprintf(line, sizeof(line), "HTTP/1.1 %u %s\r\nDate: %s\r\n", status,
                     fh_http_reason(status), date_now(c->s));
    if (obuf_add(c, line, (size_t)n) != 0 || (r->hlen && obuf_add(c, r->hdrs, r->hlen) != 0) ||
        (c->extra_len && obuf_add(c, c->extra, c->extra_len) != 0))
        return -1;
    if (!bodiless) {
        if (!r->reader)
            n = snprintf(line, sizeof(line), "Content-Length: %zu\r\n", r->len);
        else
            n = c->http10 ? 0 : snprintf(line, sizeof(line), "Transfer-Encoding: chunked\r\n");
        if (n > 0 && obuf_add(c, line, (size_t)n) != 0)
            return -1;
    }
    const char *conn = c->close_after ? "Connection: close\r\n\r\n"
                       : c->http10    ? "Connection: keep-alive\r\n\r\n"
                                      : "\r\n";
    if (obuf_add(c, conn, strlen(conn)) != 0)
        return -1;
    if (bodiless || c->is_head) {
        if (r->reader)
            c->reader_done = true;
        else
            c->boff = r->len;
    }
    return 0;
}

int fh_hconn_respond(fh_hconn *c, unsigned status, fh_hresp *r)
{
    if (!r)
        return -1;
    if (c->answered || c->st == C_LINGER || c->st == C_SEND) {
        fh_hresp_free(r);
        return -1;
    }
    c->resp = r;
    c->answered = true;
    if (build_head(c, status) != 0) {
        fh_hresp_free(r);
        c->resp = NULL;
        return -1;
    }
    /* Answered before the body was in (413, 503, ...): the rest is not
     * read as a request; the connection closes after this response. */
    c->st = C_SEND;
    set_deadline(c, DL_WRITE, c->lim.idle_ms);
    if (!c->busy)
        fh_hconn_resume(c);
    return 0;
}

/* An answer the connection layer makes itself (in HEAD or BODY, before the
 * application answered), then the connection closes. GO: it is queued. */
static step conn_fail(fh_hconn *c, unsigned status, const char *code, const char *message)
{
    fh_hresp *r = fh_error_response(status >= 500 ? "server_error" : "invalid_request_error", code,
                                    message, NULL);
    c->keep_alive = false; /* build_head says Connection: close */
    /* fh_hconn_respond owns r from the call on, failing or not. */
    if (!r || fh_hconn_respond(c, status, r) != 0) {
        conn_close(c, FH_HEND_ERROR);
        return GONE;
    }
    return GO;
}

int fh_hconn_add_header(fh_hconn *c, const char *name, const char *value)
{
    size_t nl = strlen(name), vl = strlen(value);
    if (!field_ok(name) || !field_ok(value) || c->extra_len + nl + vl + 4 > sizeof(c->extra))
        return -1;
    memcpy(c->extra + c->extra_len, name, nl);
    memcpy(c->extra + c->extra_len + nl, ": ", 2);
    memcpy(c->extra + c->extra_len + nl + 2, value, vl);
    memcpy(c->extra + c->extra_len + nl + 2 + vl, "\r\n", 2);
    c->extra_len += nl + vl + 4;
    return 0;
}

void fh_hconn_resume(fh_hconn *c)
{
    if (!c->resumed) {
        c->resumed = true;
        TAILQ_INSERT_TAIL(&c->s->resumed, c, rlink);
        fh_worker_nudge(c->s->w);
    }
}

/* ---- request heads --------------------------------------------------------------------- */

const char *fh_hconn_header(const fh_hconn *c, const char *name)
{
    for (size_t i = 0; i < c->nhdrs; i++)
        if (strcasecmp(c->hdrs[i].name, name) == 0)
            return c->hdrs[i].value;
    return NULL;
}

void fh_hconn_headers(const fh_hconn *c, bool (*fn)(void *ud, const char *name, const char *value),
                      void *ud)
{
    for (size_t i = 0; i < c->nhdrs; i++)
        if (!fn(ud, c->hdrs[i].name, c->hdrs[i].value))
            return;
}

/* Whether a comma-separated header value lists `token`. */
static bool has_token(const char *v, const char *token)
{
    size_t tl = strlen(token);
    while (v && *v) {
        while (*v == ' ' || *v == '\t' || *v == ',')
            v++;
        const char *e = v;
        while (*e && *e != ',')
            e++;
        const char *t = e;
        while (t > v && (t[-1] == ' ' || t[-1] == '\t'))
            t--;
        if ((size_t)(t - v) == tl && strncasecmp(v, token, tl) == 0)
            return true;
        v = e;
    }
    return false;
}

/* Where the head ends (just past its empty line), or 0 if not yet. */
static size_t head_end(fh_hconn *c)
{
    size_t i = c->scanned;
    for (; i < c->rlen; i++) {
        if (c->rbuf[i] != '\n')
            continue;
        if (i >= 1 && c->rbuf[i - 1] == '\n')
            return i + 1;
        if (i >= 2 && c->rbuf[i - 1] == '\r' && c->rbuf[i - 2] == '\n')
            return i + 1;
    }
    c->scanned = i;
    return 0;
}

/* Splits the next line of the head at *p (ending in LF, an optional CR
 * before it dropped). NULL at the end. */
static char *next_line(char **p, char *end)
{
    char *s = *p;
    if (s >= end)
        return NULL;
    char *nl = memchr(s, '\n', (size_t)(end - s));
    if (!nl)
        return NULL;
    *nl = '\0';
    if (nl > s && nl[-1] == '\r')
        nl[-1] = '\0';
    *p = nl + 1;
    return s;
}

typedef struct head_err {
    unsigned status;
    const char *code, *message;
} head_err;

static bool parse_request_line(fh_hconn *c, char *line, head_err *e)
{
    char *sp1 = strchr(line, ' ');
    char *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
    if (!sp1 || !sp2 || strchr(sp2 + 1, ' ')) {
        *e = (head_err){400, "bad_request", "malformed request line"};
        return false;
    }
    *sp1 = *sp2 = '\0';
    for (char *p = line; *p; p++)
        if (!tchar((unsigned char)*p)) {
            *e = (head_err){400, "bad_request", "malformed request method"};
            return false;
        }
    char *url = sp1 + 1;
    if (!*line || !*url) {
        *e = (head_err){400, "bad_request", "malformed request line"};
        return false;
    }
    for (char *p = url; *p; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p == 0x7f) {
            *e = (head_err){400, "bad_request", "malformed request target"};
            return false;
        }
    const char *ver = sp2 + 1;
    if (strcmp(ver, "HTTP/1.1") == 0) {
        c->http10 = false;
    } else if (strcmp(ver, "HTTP/1.0") == 0) {
        c->http10 = true;
    } else if (strncmp(ver, "HTTP/", 5) == 0) {
        *e = (head_err){505, "http_version_not_supported",
                        "this server speaks HTTP/1.1 and HTTP/1.0 only"};
        return false;
    } else {
        *e = (head_err){400, "bad_request", "malformed request line"};
        return false;
    }
    c->method = line;
    c->url = url;
    c->is_head = strcmp(line, "HEAD") == 0;
    return true;
}

static bool parse_header_line(fh_hconn *c, char *line, head_err *e)
{
    if (*line == ' ' || *line == '\t') {
        *e = (head_err){400, "bad_request", "folded header lines are not accepted"};
        return false;
    }
    char *p = line;
    while (tchar((unsigned char)*p))
        p++;
    if (p == line || *p != ':') {
        *e = (head_err){400, "bad_request",
                        *p == ' ' || *p == '\t'
                            ? "whitespace between a header name and its colon is not accepted"
                            : "malformed header line"};
        return false;
    }
    *p++ = '\0';
    while (*p == ' ' || *p == '\t')
        p++;
    char *v = p, *end = p + strlen(p);
    for (char *q = v; q < end; q++) {
        unsigned char ch = (unsigned char)*q;
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
            *e = (head_err){400, "bad_request", "control character in a header value"};
            return false;
        }
    }
    while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
        *--end = '\0';
    if (c->nhdrs == MAX_HEADERS) {
        *e = (head_err){431, "request_header_fields_too_large", "too many request headers"};
        return false;
    }
    c->hdrs[c->nhdrs++] = (hdr){line, v};
    return true;
}

/* Framing and connection semantics from the parsed headers. */
static bool head_semantics(fh_hconn *c, head_err *e)
{
    const char *cl = NULL, *te = NULL, *host = NULL;
    size_t nte = 0, nhost = 0;
    for (size_t i = 0; i < c->nhdrs; i++) {
        const char *n = c->hdrs[i].name, *v = c->hdrs[i].value;
        if (strcasecmp(n, "Content-Length") == 0) {
            size_t len = strlen(v);
            if (len == 0 || len > 18 || strspn(v, "0123456789") != len) {
                *e = (head_err){400, "bad_request", "malformed Content-Length"};
                return false;
            }
            if (cl && strcmp(cl, v) != 0) {
                *e = (head_err){400, "bad_request", "conflicting Content-Length headers"};
                return false;
            }
            cl = v;
        } else if (strcasecmp(n, "Transfer-Encoding") == 0) {
            te = v;
            nte++;
        } else if (strcasecmp(n, "Host") == 0) {
            host = v;
            nhost++;
        } else if (strcasecmp(n, "Connection") == 0) {
            if (has_token(v, "close"))
                c->keep_alive = false;
            else if (has_token(v, "keep-alive") && c->http10)
                c->keep_alive = true;
        } else if (strcasecmp(n, "Expect") == 0) {
            if (strcasecmp(v, "100-continue") == 0)
                c->expect_continue = !c->http10;
        }
    }
    if (nhost > 1 || (!c->http10 && !host)) {
        *e = (head_err){400, "bad_request",
                        nhost > 1 ? "more than one Host header" : "HTTP/1.1 needs a Host header"};
        return false;
    }
    (void)host;
    if (te) {
        if (cl) {
            *e = (head_err){400, "bad_request",
                            "Content-Length and Transfer-Encoding together are not accepted"};
            return false;
        }
        if (nte > 1 || c->http10) {
            *e = (head_err){400, "bad_request", "malformed Transfer-Encoding"};
            return false;
        }
        if (strcasecmp(te, "chunked") != 0) {
            *e = (head_err){501, "not_implemented", "only Transfer-Encoding: chunked is supported"};
            return false;
        }
        c->chunked = true;
        c->body_done = false;
    } else {
        c->body_left = cl ? strtoull(cl, NULL, 10) : 0;
        c->body_done = c->body_left == 0;
    }
    if (c->body_done)
        c->expect_continue = false;
    return true;
}

/* rbuf[0, end) is a complete head: parse it into a copy of its own, so the
 * read buffer is free for the body and whatever follows. */
static bool parse_head(fh_hconn *c, size_t end, head_err *e)
{
    c->head = malloc(end + 1);
    c->hdrs = malloc(sizeof(hdr) * MAX_HEADERS);
    if (!c->head || !c->hdrs) {
        *e = (head_err){503, "out_of_memory", "out of memory"};
        return false;
    }
    memcpy(c->head, c->rbuf, end);
    c->head[end] = '\0';
    memmove(c->rbuf, c->rbuf + end, c->rlen - end);
    c->rlen -= end;
    c->scanned = 0;
    if (memchr(c->head, '\0', end)) {
        *e = (head_err){400, "bad_request", "NUL byte in the request head"};
        return false;
    }
    char *p = c->head, *stop = c->head + end;
    char *line = next_line(&p, stop);
    if (!line || !parse_request_line(c, line, e))
        return false;
    c->keep_alive = !c->http10;
    while ((line = next_line(&p, stop)) != NULL && *line)
        if (!parse_header_line(c, line, e))
            return false;
    for (char *q = c->head; q < stop; q++)
        if (*q == '\r') {
            *e = (head_err){400, "bad_request", "bare CR in the request head"};
            return false;
        }
    return head_semantics(c, e);
}

/* ---- calling the application ------------------------------------------------------------ */

static int call_app(fh_hconn *c, const char *upload, size_t len)
{
    size_t n = len;
    int rc = c->s->cb.request(c->s->cb.ud, c, c->method, c->url, upload, &n, &c->ctx);
    if (c->ctx)
        c->has_ctx = true;
    return rc;
}

/* The body's deadline: header_ms of grace, then the minimum rate. */
static void body_deadline(fh_hconn *c)
{
    uint64_t now = fh_now_ns();
    uint64_t dl = now + c->lim.idle_ms * 1000000u;
    if (c->lim.body_min_rate) {
        uint64_t rate_dl = c->body_t0_ns + c->lim.header_ms * 1000000u +
                           c->body_rx * 1000000000u / c->lim.body_min_rate;
        if (rate_dl < dl)
            dl = rate_dl;
    }
    c->dl = DL_BODY;
    c->deadline_ns = dl;
}

/* Feeds body bytes to the application. false: the connection is gone. */
static bool deliver(fh_hconn *c, const char *p, size_t n)
{
    c->body_rx += n;
    if (c->answered)
        return true; /* answered early: dropped */
    if (call_app(c, p, n) != 0) {
        conn_close(c, FH_HEND_ERROR);
        return false;
    }
    return true;
}

static void consume(fh_hconn *c, size_t n)
{
    memmove(c->rbuf, c->rbuf + n, c->rlen - n);
    c->rlen -= n;
}

/* Decodes what the read buffer holds of a chunked body. The bytes used are
 * dropped from the buffer once, on the way out (not per chunk: a body of
 * one-byte chunks would otherwise move the buffer for every byte). */
static step chunked_step(fh_hconn *c)
{
    size_t off = 0;
    const char *why = NULL;
    while (off < c->rlen && !c->body_done && c->st == C_BODY) {
        const char *p = c->rbuf + off;
        size_t avail = c->rlen - off;
        if (c->ch == CH_DATA) {
            size_t n = avail < c->ch_left ? avail : (size_t)c->ch_left;
            if (!deliver(c, p, n))
                return GONE;
            off += n;
            c->ch_left -= n;
            if (c->ch_left == 0)
                c->ch = CH_CRLF;
            continue;
        }
        if (c->ch == CH_CRLF) {
            if (avail < 2)
                break;
            if (p[0] != '\r' || p[1] != '\n') {
                why = "malformed chunked body (no CRLF after a chunk)";
                break;
            }
            off += 2;
            c->ch = CH_SIZE;
            continue;
        }
        const char *nl = memchr(p, '\n', avail);
        if (!nl) {
            if (avail > CHUNK_LINE) /* (the buffer, at least 4 KiB, holds more) */
                why = "malformed chunked body (line too long)";
            break;
        }
        size_t ll = (size_t)(nl - p);
        if (ll == 0 || p[ll - 1] != '\r') {
            why = "malformed chunked body (bare LF)";
            break;
        }
        if (c->ch == CH_TRAILER) {
            c->ch_left += ll + 1; /* the trailer's size so far */
            if (c->ch_left > c->rcap) {
                consume(c, off);
                return conn_fail(c, 431, "request_header_fields_too_large",
                                 "chunked trailer is larger than limits.max_header_bytes");
            }
            off += ll + 1;
            if (ll == 1)
                c->body_done = true;
            continue;
        }
        uint64_t size = 0;
        size_t i = 0;
        for (; i < ll - 1; i++) {
            char ch = p[i];
            int d = ch >= '0' && ch <= '9'   ? ch - '0'
                    : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
                    : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                             : -1;
            if (d < 0)
                break;
            if (size >> 56) {
                why = "malformed chunked body (chunk too large)";
                break;
            }
            size = size * 16 + (uint64_t)d;
        }
        if (why)
            break;
        if (i == 0 || (i < ll - 1 && p[i] != ';' && p[i] != ' ' && p[i] != '\t')) {
            why = "malformed chunked body (chunk size)";
            break;
        }
        off += ll + 1;
        if (size == 0) {
            c->ch = CH_TRAILER;
            c->ch_left = 0;
        } else {
            c->ch = CH_DATA;
            c->ch_left = size;
        }
    }
    consume(c, off);
    if (why)
        return conn_fail(c, 400, "bad_request", why);
    return WAIT;
}

/* ---- reading and writing ------------------------------------------------------------------ */

/* What a recv() that returned n means. false: the connection is gone. */
static bool after_recv(fh_hconn *c, ssize_t n)
{
    if (n == 0)
        c->read_closed = true; /* a FIN: the answer is still due */
    if (n >= 0 || errno == EAGAIN || errno == EINTR)
        return true;
    conn_close(c, FH_HEND_CLIENT_GONE);
    return false;
}

/* One read. false: the connection is gone. */
static bool conn_read(fh_hconn *c)
{
    int fd = c->watch.fd;
    if (c->st == C_LINGER) {
        char junk[16384];
        ssize_t n = recv(fd, junk, sizeof(junk), 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            conn_close(c, FH_HEND_OK);
            return false;
        }
        return true;
    }
    if (c->read_closed)
        return true;
    /* A Content-Length body straight from the socket (nothing buffered):
     * never more than the body, so what follows stays in the kernel. */
    if (c->st == C_BODY && !c->chunked && c->rlen == 0 && c->body_left > 0 && !c->answered) {
        char buf[BODY_READ];
        size_t want = c->body_left < sizeof(buf) ? (size_t)c->body_left : sizeof(buf);
        ssize_t n = recv(fd, buf, want, 0);
        if (n > 0) {
            c->body_left -= (size_t)n;
            if (!deliver(c, buf, (size_t)n))
                return false;
            if (c->st == C_BODY) /* not when answered meanwhile: its write deadline stands */
                body_deadline(c);
            return true;
        }
        return after_recv(c, n);
    }
    if (c->rlen == c->rcap)
        return true;
    ssize_t n = recv(fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
    if (n > 0) {
        c->rlen += (size_t)n;
        if (c->st == C_BODY)
            body_deadline(c); /* (C_SEND keeps its write deadline) */
        return true;
    }
    return after_recv(c, n);
}

/* Writes what it can. false: the connection is gone. */
static bool conn_write(fh_hconn *c)
{
    for (;;) {
        fh_hresp *r = c->resp;
        if (c->olen == c->ooff && c->st == C_SEND && r && r->reader && !c->reader_done &&
            !c->reader_waiting) {
            if (obuf_reserve(c, CHUNK_OUT + 32) != 0) {
                conn_close(c, FH_HEND_ERROR);
                return false;
            }
            size_t room = 20; /* the chunk-size line, written after */
            ssize_t got = r->reader(r->cls, c->obuf + room, CHUNK_OUT);
            if (got == 0) {
                c->reader_waiting = true; /* until fh_hconn_resume */
                set_deadline(c, DL_NONE, 0);
                return true;
            }
            if (got == FH_HRESP_ERROR || got < -2) {
                conn_close(c, FH_HEND_ERROR);
                return false;
            }
            if (got == FH_HRESP_END) {
                c->reader_done = true;
                if (!c->http10 && obuf_add(c, "0\r\n\r\n", 5) != 0) {
                    conn_close(c, FH_HEND_ERROR);
                    return false;
                }
                continue;
            }
            if (c->http10) {
                c->ooff = room;
                c->olen = room + (size_t)got;
            } else {
                char sz[20];
                int l = snprintf(sz, sizeof(sz), "%zx\r\n", (size_t)got);
                c->ooff = room - (size_t)l;
                memcpy(c->obuf + c->ooff, sz, (size_t)l);
                c->olen = room + (size_t)got;
                memcpy(c->obuf + c->olen, "\r\n", 2);
                c->olen += 2;
            }
            set_deadline(c, DL_WRITE, c->lim.idle_ms);
        }
        struct iovec iov[2];
        int niov = 0;
        if (c->olen > c->ooff)
            iov[niov++] = (struct iovec){c->obuf + c->ooff, c->olen - c->ooff};
        if (c->st == C_SEND && r && !r->reader && c->boff < r->len)
            iov[niov++] = (struct iovec){r->data + c->boff, r->len - c->boff};
        if (niov == 0)
            return true;
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)niov};
        ssize_t n = sendmsg(c->watch.fd, &mh, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return true;
            conn_close(c, FH_HEND_CLIENT_GONE);
            return false;
        }
        size_t left = (size_t)n, o = c->olen - c->ooff;
        if (left >= o) {
            c->ooff = c->olen = 0;
            left -= o;
            c->boff += left;
        } else {
            c->ooff += left;
        }
        if (c->st == C_SEND)
            set_deadline(c, DL_WRITE, c->lim.idle_ms);
    }
}

/* ---- the state machine ------------------------------------------------------------------- */

static void start_request_wait(fh_hconn *c, bool fresh)
{
    c->st = C_HEAD;
    c->lim = c->s->lim;
    c->scanned = 0;
    if (fresh)
        set_deadline(c, DL_FIRST, c->lim.header_ms);
    else
        set_deadline(c, DL_IDLE, c->lim.idle_ms);
}

static step step_head(fh_hconn *c)
{
    /* Empty lines before a request are allowed (RFC 9112 2.2). */
    size_t skip = 0;
    while (skip < c->rlen && (c->rbuf[skip] == '\r' || c->rbuf[skip] == '\n'))
        skip++;
    if (skip)
        consume(c, skip);
    if (c->rlen == 0) {
        if (!c->read_closed)
            return WAIT;
        conn_close(c, FH_HEND_OK);
        return GONE;
    }
    if (!tchar((unsigned char)c->rbuf[0]))
        /* A TLS ClientHello or other binary: not worth waiting for. */
        return conn_fail(c, 400, "bad_request",
                         "this is not an HTTP/1.x request (plain HTTP expected)");
    /* The head's deadline: from its first byte after a keep-alive wait;
     * on a new connection the one counted from the accept stands. */
    if (c->dl == DL_IDLE)
        set_deadline(c, DL_HEAD, c->lim.header_ms);
    else if (c->dl == DL_FIRST)
        c->dl = DL_HEAD;
    size_t end = head_end(c);
    if (!end) {
        if (c->rlen == c->rcap)
            return conn_fail(c, 431, "request_header_fields_too_large",
                             "request head is larger than limits.max_header_bytes");
        if (!c->read_closed)
            return WAIT;
        conn_close(c, FH_HEND_CLIENT_GONE);
        return GONE;
    }
    head_err e = {0};
    c->in_request = true;
    if (!parse_head(c, end, &e))
        return conn_fail(c, e.status, e.code, e.message);
    if (call_app(c, NULL, 0) != 0) {
        conn_close(c, FH_HEND_ERROR);
        return GONE;
    }
    if (c->st == C_SEND)
        return GO; /* answered from the head alone */
    if (c->body_done) {
        c->st = C_WAIT;
        set_deadline(c, DL_NONE, 0);
        if (call_app(c, NULL, 0) != 0) {
            conn_close(c, FH_HEND_ERROR);
            return GONE;
        }
        return GO;
    }
    c->st = C_BODY;
    c->body_t0_ns = fh_now_ns();
    body_deadline(c);
    if (c->expect_continue) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (obuf_add(c, cont, sizeof(cont) - 1) != 0) {
            conn_close(c, FH_HEND_ERROR);
            return GONE;
        }
    }
    return GO;
}

static step step_body(fh_hconn *c)
{
    if (c->olen > c->ooff && !conn_write(c)) /* 100 Continue */
        return GONE;
    if (c->chunked) {
        step r = chunked_step(c);
        if (r == GONE)
            return GONE;
    } else if (c->rlen > 0 && c->body_left > 0) {
        size_t n = c->rlen < c->body_left ? c->rlen : (size_t)c->body_left;
        if (!deliver(c, c->rbuf, n))
            return GONE;
        consume(c, n);
        c->body_left -= n;
    }
    if (c->st != C_BODY)
        return GO; /* answered meanwhile */
    if (!c->chunked && c->body_left == 0)
        c->body_done = true;
    if (!c->body_done) {
        if (!c->read_closed)
            return WAIT;
        conn_close(c, FH_HEND_CLIENT_GONE);
        return GONE;
    }
    if (c->answered) {
        /* The rest of an answered request's body is dropped: next request. */
        request_end(c, FH_HEND_OK);
        start_request_wait(c, false);
        return GO;
    }
    c->st = C_WAIT;
    set_deadline(c, DL_NONE, 0);
    if (call_app(c, NULL, 0) != 0) {
        conn_close(c, FH_HEND_ERROR);
        return GONE;
    }
    return GO;
}

static step step_send(fh_hconn *c)
{
    if (!conn_write(c))
        return GONE;
    fh_hresp *r = c->resp;
    bool done = c->olen == c->ooff && (r->reader ? c->reader_done : c->boff >= r->len);
    if (!done)
        return WAIT;
    if (c->close_after)
        return conn_linger(c);
    if (!c->body_done) {
        c->st = C_BODY; /* read and drop the rest (build_head bounded it) */
        c->body_t0_ns = fh_now_ns();
        body_deadline(c);
        return GO;
    }
    request_end(c, FH_HEND_OK);
    start_request_wait(c, false);
    return GO; /* a pipelined request may be waiting */
}

/* Runs the connection as far as it goes; false when it is gone. */
static bool conn_advance(fh_hconn *c)
{
    c->busy = true;
    step r = GO;
    while (r == GO) {
        switch (c->st) {
        case C_HEAD:
            r = step_head(c);
            break;
        case C_BODY:
            r = step_body(c);
            break;
        case C_SEND:
            r = step_send(c);
            break;
        case C_WAIT:
        case C_LINGER:
            r = WAIT;
            break;
        }
    }
    if (r == GONE)
        return false;
    c->busy = false;
    update_events(c);
    return true;
}

static void on_conn_event(fh_watch *w, uint32_t events)
{
    fh_hconn *c = w->ud;
    if (events & EPOLLERR) {
        conn_close(c, c->st == C_LINGER ? FH_HEND_OK : FH_HEND_CLIENT_GONE);
        return;
    }
    if ((events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP)) && !conn_read(c))
        return;
    if ((events & EPOLLHUP) && c->st != C_LINGER) {
        /* Both directions are down: nothing can be delivered. */
        conn_close(c, FH_HEND_CLIENT_GONE);
        return;
    }
    if (c->st == C_LINGER) {
        update_events(c);
        return;
    }
    conn_advance(c);
}

/* ---- the server --------------------------------------------------------------------------- */

fh_hsrv *fh_hsrv_new(fh_worker *w, const fh_hsrv_cbs *cbs, const fh_hsrv_limits *lim)
{
    fh_hsrv *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->w = w;
    s->cb = *cbs;
    s->lim = *lim;
    TAILQ_INIT(&s->all);
    TAILQ_INIT(&s->resumed);
    return s;
}

void fh_hsrv_set_limits(fh_hsrv *s, const fh_hsrv_limits *lim)
{
    s->lim = *lim;
}

int fh_hsrv_add(fh_hsrv *s, int fd, const struct sockaddr *addr, socklen_t len, void *conn_ud)
{
    (void)addr, (void)len;
    fh_hconn *c = calloc(1, sizeof(*c));
    char *rbuf = malloc(s->lim.max_header);
    if (!c || !rbuf) {
        free(c);
        free(rbuf);
        close(fd);
        return -1;
    }
    c->s = s;
    c->rbuf = rbuf;
    c->rcap = s->lim.max_header;
    c->conn_ud = conn_ud;
    c->watch.fd = fd;
    c->watch.fn = on_conn_event;
    c->watch.ud = c;
    c->watch.events = c->events = EPOLLIN | EPOLLRDHUP;
    c->ch = CH_SIZE;
    if (fh_worker_watch(s->w, &c->watch) != 0) {
        free(rbuf);
        free(c);
        close(fd);
        return -1;
    }
    TAILQ_INSERT_TAIL(&s->all, c, link);
    s->count++;
    start_request_wait(c, true);
    /* Clients usually send with the handshake: try at once. */
    if (conn_read(c))
        conn_advance(c);
    return 0;
}

static void sweep(fh_hsrv *s, uint64_t now)
{
    fh_hconn *c, *next;
    for (c = TAILQ_FIRST(&s->all); c; c = next) {
        next = TAILQ_NEXT(c, link);
        if (c->dl == DL_NONE || now < c->deadline_ns)
            continue;
        step r = WAIT;
        c->busy = true;
        switch (c->dl) {
        case DL_HEAD:
            r = conn_fail(c, 408, "request_timeout",
                          "the request head did not arrive within limits.header_timeout_ms");
            break;
        case DL_BODY:
            if (c->answered) { /* dropping the rest of an answered body: just go */
                conn_close(c, FH_HEND_OK);
                continue;
            }
            r = conn_fail(c, 408, "request_timeout",
                          "the request body arrived slower than limits.body_min_bytes_per_s");
            break;
        case DL_FIRST:
        case DL_IDLE:
        case DL_LINGER:
            conn_close(c, FH_HEND_OK);
            continue;
        case DL_WRITE:
            conn_close(c, FH_HEND_TIMEOUT);
            continue;
        case DL_NONE:
            break;
        }
        /* A slow client keeps its slot no longer (it may be one of many
         * holding every slot): the 408 is written once, what the client
         * sent meanwhile is drained so the close is a FIN and not a reset
         * that could destroy the 408, and the socket goes. */
        if (r == GO && conn_write(c)) {
            char junk[4096];
            for (int i = 0; i < 64 && recv(c->watch.fd, junk, sizeof(junk), MSG_DONTWAIT) > 0; i++)
                ;
            conn_close(c, FH_HEND_TIMEOUT);
        }
    }
}

int fh_hsrv_turn(fh_hsrv *s)
{
    fh_hconn *c;
    while ((c = TAILQ_FIRST(&s->resumed)) != NULL) {
        TAILQ_REMOVE(&s->resumed, c, rlink);
        c->resumed = false;
        c->busy = true;
        if (c->st == C_WAIT && !c->answered) {
            if (call_app(c, NULL, 0) != 0) {
                conn_close(c, FH_HEND_ERROR);
                continue;
            }
        }
        c->reader_waiting = false;
        conn_advance(c);
    }
    uint64_t now = fh_now_ns();
    if (now >= s->next_sweep_ns) {
        sweep(s, now);
        s->next_sweep_ns = now + SWEEP_MS * 1000000u;
    }
    if (!TAILQ_EMPTY(&s->resumed))
        return 0;
    if (s->count == 0)
        return -1;
    uint64_t left = s->next_sweep_ns > now ? s->next_sweep_ns - now : 0;
    return (int)(left / 1000000u) + 1;
}

size_t fh_hsrv_count(const fh_hsrv *s)
{
    return s->count;
}

void fh_hsrv_free(fh_hsrv *s)
{
    if (!s)
        return;
    fh_hconn *c;
    while ((c = TAILQ_FIRST(&s->all)) != NULL)
        conn_close(c, FH_HEND_SHUTDOWN);
    free(s);
}
