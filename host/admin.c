/*
 * admin.c - see admin.h.
 *
 * A request's life: the admin thread parses it (httpd.c), checks the
 * token, collects the body into a job, and queues the job (one reference
 * for the queue, one for the connection). The main thread takes the
 * queue, runs the handler, and posts the job back to the admin thread,
 * which resumes the connection; the request callback then answers. The
 * job's `conn` is the admin thread's alone: the completed callback clears
 * it when the client leaves, so a late answer finds no connection.
 */
#include "admin.h"

#include "apierror.h"
#include "httpd.h"
#include "log.h"
#include "sha256.h"
#include "util.h"
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_BODY  65536
#define MAX_CONNS 64

typedef struct job {
    atomic_int refs;
    fh_admin *a;
    fh_hconn *conn; /* admin thread; NULL once the client left */
    char method[8];
    char *path;
    char *body;
    size_t len;
    bool too_big, queued, ready;
    unsigned status; /* set by the main thread before it posts the job back */
    char *answer;
    struct job *next;
} job;

struct fh_admin {
    fh_worker *w;
    fh_hsrv *srv;
    fh_watch lw;
    int efd;
    bool tcp;
    unsigned char token[32]; /* SHA-256 of the token: compared in constant time */
    char *address;
    char *sock_path; /* unix: removed on close if still ours */
    struct stat sock_st;
    int conns; /* admin thread */
    pthread_mutex_t mu;
    job *head, *tail; /* mu */
};

static void job_unref(job *j)
{
    if (!j || atomic_fetch_sub(&j->refs, 1) != 1)
        return;
    free(j->path);
    free(j->body);
    free(j->answer);
    free(j);
}

/* ---- the admin thread --------------------------------------------------------------- */

static bool authorised(const fh_admin *a, fh_hconn *c)
{
    if (!a->tcp)
        return true; /* the socket's mode and owner decide who connects */
    const char *h = fh_hconn_header(c, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return false;
    unsigned char got[32];
    const char *tok = h + 7;
    while (*tok == ' ')
        tok++;
    fh_sha256(tok, strlen(tok), got);
    unsigned char diff = 0;
    for (int i = 0; i < 32; i++)
        diff |= (unsigned char)(got[i] ^ a->token[i]);
    return diff == 0;
}

static int answer(fh_hconn *c, job *j)
{
    char *text = j->answer;
    j->answer = NULL;
    if (!text)
        return fh_http_error(c, 500, "server_error", "internal_error", "the command failed");
    fh_hresp *r = fh_hresp_buffer(text, strlen(text));
    if (!r) {
        free(text);
        return -1;
    }
    if (fh_hresp_header(r, "Content-Type", "application/json") != 0) {
        fh_hresp_free(r);
        return -1;
    }
    return fh_hconn_respond(c, j->status, r);
}

static void enqueue(fh_admin *a, job *j)
{
    atomic_fetch_add(&j->refs, 1);
    pthread_mutex_lock(&a->mu);
    if (a->tail)
        a->tail->next = j;
    else
        a->head = j;
    a->tail = j;
    pthread_mutex_unlock(&a->mu);
    uint64_t one = 1;
    ssize_t n = write(a->efd, &one, sizeof(one));
    (void)n; /* EAGAIN: already signalled */
}

static int on_request(void *ud, fh_hconn *c, const char *method, const char *url,
                      const char *upload, size_t *upload_size, void **ctx)
{
    fh_admin *a = ud;
    job *j = *ctx;
    if (!j) {
        if (!authorised(a, c))
            return fh_http_error(c, 401, "invalid_request_error", "unauthorized",
                                 "the admin API needs `Authorization: Bearer TOKEN` with the "
                                 "token from admin.token_file");
        j = calloc(1, sizeof(*j));
        if (!j)
            return -1;
        atomic_init(&j->refs, 1);
        j->a = a;
        j->conn = c;
        fh_strlcpy(j->method, method, sizeof(j->method));
        j->path = strndup(url, strcspn(url, "?"));
        if (!j->path) {
            free(j);
            return -1;
        }
        *ctx = j;
        return 0;
    }
    if (*upload_size) {
        if (j->len + *upload_size > MAX_BODY) {
            j->too_big = true;
        } else {
            char *g = realloc(j->body, j->len + *upload_size + 1);
            if (!g)
                return -1;
            j->body = g;
            memcpy(j->body + j->len, upload, *upload_size);
            j->len += *upload_size;
            j->body[j->len] = '\0';
        }
        *upload_size = 0;
        return 0;
    }
    if (j->too_big)
        return fh_http_error(c, 413, "invalid_request_error", "request_too_large",
                             "admin request bodies are at most 64 KiB");
    if (j->ready)
        return answer(c, j);
    if (!j->queued) {
        j->queued = true;
        enqueue(a, j);
    }
    return 0;
}

static void on_completed(void *ud, fh_hconn *c, void *ctx, fh_hend how)
{
    (void)ud;
    (void)c;
    (void)how;
    job *j = ctx;
    if (!j)
        return;
    j->conn = NULL;
    job_unref(j);
}

static void on_closed(void *ud, void *conn_ud)
{
    (void)conn_ud;
    fh_admin *a = ud;
    a->conns--;
}

/* Posted by the main thread with the answer in the job. */
static void deliver(fh_worker *w, void *ud)
{
    (void)w;
    job *j = ud;
    j->ready = true;
    if (j->conn)
        fh_hconn_resume(j->conn);
    job_unref(j);
}

static void on_listen_ready(fh_watch *watch, uint32_t events)
{
    (void)events;
    fh_admin *a = watch->ud;
    for (int i = 0; i < 16; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd = accept4(watch->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        if (a->conns >= MAX_CONNS) {
            close(fd); /* an operator does not need 64 connections at once */
            continue;
        }
        a->conns++;
        if (fh_hsrv_add(a->srv, fd, (struct sockaddr *)&ss, len, NULL) != 0)
            a->conns--;
    }
}

static int admin_turn(fh_worker *w, void *ud)
{
    (void)w;
    fh_admin *a = ud;
    return fh_hsrv_turn(a->srv);
}

static void admin_teardown(fh_worker *w, void *ud)
{
    fh_admin *a = ud;
    fh_worker_unwatch(w, &a->lw);
    fh_hsrv_free(a->srv);
    a->srv = NULL;
}

/* ---- listening -------------------------------------------------------------------- */

/* A unix socket path: a stale socket is replaced; anything else in the
 * way is the operator's to remove (we never follow or delete a symlink). */
static int bind_unix(fh_admin *a, const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof(sa.sun_path)) {
        snprintf(err, errlen, "admin.listen: the socket path %s is longer than %zu bytes", path,
                 sizeof(sa.sun_path) - 1);
        return -1;
    }
    memcpy(sa.sun_path, path, strlen(path));
    char *parent = strdup(path);
    char *slash = parent ? strrchr(parent, '/') : NULL;
    if (slash && slash != parent) {
        *slash = '\0';
        if (fh_mkdir_p(parent, 0755, 0750) != 0) {
            snprintf(err, errlen, "admin.listen: cannot create %s: %s", parent, strerror(errno));
            free(parent);
            return -1;
        }
    }
    free(parent);
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (S_ISLNK(st.st_mode) || !S_ISSOCK(st.st_mode)) {
            snprintf(err, errlen,
                     "admin.listen: %s exists and is %s; remove it (it is never followed or "
                     "replaced)",
                     path, S_ISLNK(st.st_mode) ? "a symlink" : "not a socket");
            return -1;
        }
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int live = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0;
        int why = errno;
        if (probe >= 0)
            close(probe);
        if (live) {
            snprintf(err, errlen,
                     "admin.listen: another process serves %s (another fusion-host?); stop it or "
                     "choose another admin.listen",
                     path);
            return -1;
        }
        if (why != ECONNREFUSED && why != ENOENT) {
            snprintf(err, errlen, "admin.listen: %s: %s", path, strerror(why));
            return -1;
        }
        if (unlink(path) != 0 && errno != ENOENT) {
            snprintf(err, errlen, "admin.listen: cannot remove the stale socket %s: %s", path,
                     strerror(errno));
            return -1;
        }
        fh_info("admin: replaced the stale socket %s", path);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "admin.listen: socket: %s", strerror(errno));
        return -1;
    }
    /* Made 0660 from the start: no moment where others could connect. */
    mode_t old = umask(0117);
    int rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    umask(old);
    if (rc != 0) {
        snprintf(err, errlen, "admin.listen: cannot listen on %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (listen(fd, 64) != 0 || lstat(path, &a->sock_st) != 0) {
        snprintf(err, errlen, "admin.listen: cannot listen on %s: %s", path, strerror(errno));
        close(fd);
        unlink(path);
        return -1;
    }
    a->sock_path = strdup(path);
    return fd;
}

static int bind_tcp(const char *listen_addr, char *err, size_t errlen)
{
    char host[256];
    const char *colon = strrchr(listen_addr, ':');
    size_t hl = colon ? (size_t)(colon - listen_addr) : 0;
    if (!colon || hl >= sizeof(host)) {
        snprintf(err, errlen, "admin.listen: %s is not host:port", listen_addr);
        return -1;
    }
    memcpy(host, listen_addr, hl);
    host[hl] = '\0';
    char *h = host;
    if (h[0] == '[' && hl > 1 && h[hl - 1] == ']') {
        h[hl - 1] = '\0';
        h++;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV | AI_NUMERICHOST};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(*h ? h : NULL, colon + 1, &hints, &res);
    if (gai != 0) {
        snprintf(err, errlen, "admin.listen: %s: %s", listen_addr, gai_strerror(gai));
        return -1;
    }
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 64) != 0) {
        snprintf(err, errlen, "admin.listen: cannot listen on %s: %s", listen_addr,
                 strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

/* The token: the file's first line. A file others can read is a token
 * others know. */
int fh_admin_read_token(const char *path, uid_t owner, unsigned char digest[32], char *err,
                        size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        snprintf(err, errlen, "admin.token_file %s: %s", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (st.st_uid != owner && st.st_uid != 0) {
        snprintf(err, errlen,
                 "admin.token_file %s is owned by uid %u, neither root nor the daemon's user "
                 "(uid %u); chown it",
                 path, (unsigned)st.st_uid, (unsigned)owner);
        close(fd);
        return -1;
    }
    if (st.st_mode & 077) {
        snprintf(err, errlen,
                 "admin.token_file %s is readable or writable by group or other (mode %03o); "
                 "chmod 600 it",
                 path, (unsigned)(st.st_mode & 0777));
        close(fd);
        return -1;
    }
    char buf[512];
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n < 0)
        n = 0;
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    size_t len = strlen(buf);
    while (len && (buf[len - 1] == ' ' || buf[len - 1] == '\t'))
        buf[--len] = '\0';
    if (len < 16) {
        snprintf(err, errlen,
                 "admin.token_file %s holds no token of at least 16 characters on its first "
                 "line",
                 path);
        return -1;
    }
    fh_sha256(buf, len, digest);
    memset(buf, 0, sizeof(buf));
    return 0;
}

fh_admin *fh_admin_open(const char *listen_addr, const char *token_file, char *err, size_t errlen)
{
    fh_admin *a = calloc(1, sizeof(*a));
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&a->mu, NULL);
    a->efd = -1;
    a->lw.fd = -1;
    a->address = strdup(listen_addr);
    a->tcp = strncmp(listen_addr, "unix:", 5) != 0;
    if (a->tcp && (!token_file || !*token_file)) {
        snprintf(err, errlen, "admin.listen %s is TCP: admin.token_file is required", listen_addr);
        goto fail;
    }
    if (a->tcp && fh_admin_read_token(token_file, geteuid(), a->token, err, errlen) != 0)
        goto fail;
    a->lw.fd =
        a->tcp ? bind_tcp(listen_addr, err, errlen) : bind_unix(a, listen_addr + 5, err, errlen);
    if (a->lw.fd < 0)
        goto fail;
    a->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    a->w = fh_worker_new(0, err, errlen);
    if (a->efd < 0 || !a->w || !a->address)
        goto fail_msg;
    fh_hsrv_limits lim = {.max_header = 16384, .header_ms = 10000, .idle_ms = 60000};
    fh_hsrv_cbs cbs = {
        .request = on_request, .completed = on_completed, .closed = on_closed, .ud = a};
    a->srv = fh_hsrv_new(a->w, &cbs, &lim);
    a->lw.events = EPOLLIN;
    a->lw.fn = on_listen_ready;
    a->lw.ud = a;
    if (!a->srv || fh_worker_add_turn(a->w, admin_turn, a) != 0 ||
        fh_worker_watch(a->w, &a->lw) != 0)
        goto fail_msg;
    fh_worker_set_stop(a->w, admin_teardown, a);
    if (fh_worker_start(a->w, "fh-admin") != 0)
        goto fail_msg;
    return a;
fail_msg:
    snprintf(err, errlen, "admin: cannot start its thread: %s", strerror(errno));
fail:
    fh_admin_close(a);
    return NULL;
}

void fh_admin_close(fh_admin *a)
{
    if (!a)
        return;
    if (a->w) {
        fh_worker_request_stop(a->w);
        if (!fh_worker_stop(a->w, 2000)) {
            fh_error("admin: its thread did not stop; leaving it");
            return;
        }
        if (a->srv) { /* never started: its teardown did not run */
            fh_hsrv_free(a->srv);
            a->srv = NULL;
        }
        fh_worker_free(a->w);
    }
    if (a->lw.fd >= 0)
        close(a->lw.fd);
    /* Remove the socket only if it is still the one we made. */
    struct stat st;
    if (a->sock_path && lstat(a->sock_path, &st) == 0 && st.st_ino == a->sock_st.st_ino &&
        st.st_dev == a->sock_st.st_dev)
        unlink(a->sock_path);
    while (a->head) {
        job *j = a->head;
        a->head = j->next;
        job_unref(j);
    }
    if (a->efd >= 0)
        close(a->efd);
    pthread_mutex_destroy(&a->mu);
    free(a->sock_path);
    free(a->address);
    free(a);
}

int fh_admin_fd(const fh_admin *a)
{
    return a->efd;
}

const char *fh_admin_address(const fh_admin *a)
{
    return a->address;
}

void fh_admin_run(fh_admin *a, fh_admin_fn fn, void *ud)
{
    uint64_t v;
    ssize_t n = read(a->efd, &v, sizeof(v));
    (void)n;
    pthread_mutex_lock(&a->mu);
    job *list = a->head;
    a->head = a->tail = NULL;
    pthread_mutex_unlock(&a->mu);
    while (list) {
        job *j = list;
        list = j->next;
        j->next = NULL;
        j->answer = NULL;
        j->status = fn(ud, j->method, j->path, j->body ? j->body : "", j->len, &j->answer);
        /* The queue's reference travels with the post. */
        if (fh_worker_post(a->w, deliver, j) != 0)
            job_unref(j);
    }
}
