/*
 * main.c - fusion-stub-llm: a small OpenAI-compatible model server for the
 * tests and the quick start (docs/stub-llm.md).
 *
 * Owns: the command line, the file-descriptor limit, the port file and the
 * process's signals. Threads: main() blocks SIGINT/SIGTERM/SIGHUP/SIGPIPE
 * before any thread exists (so the MHD and timer threads inherit the mask)
 * and then waits for them with sigwait(): no async-signal-safety puzzles,
 * and a clean stop on the main thread.
 */
#include "server.h"

#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define DEFAULT_CONN_LIMIT 20000u

static void usage(FILE *out)
{
    fputs("usage: fusion-stub-llm --listen HOST:PORT [--port-file FILE] [--model NAME]\n"
          "                       [--delay-ms N] [--chunk-delay-ms N] [--max-connections N]\n"
          "                       [--quiet]\n"
          "  --listen HOST:PORT   address to serve on; PORT 0 picks a free port\n"
          "                       (IPv6: [::1]:PORT)\n"
          "  --port-file FILE     write the bound port to FILE once listening\n"
          "  --model NAME         model id reported by /v1/models (default fusion-stub)\n"
          "  --delay-ms N         answer every chat request after N ms (default 0)\n"
          "  --chunk-delay-ms N   gap between stream chunks (default 0)\n"
          "  --max-connections N  connection limit (default 20000)\n"
          "  --quiet              no per-request log lines\n"
          "Fault injection per request: see docs/stub-llm.md.\n",
          out);
}

static int parse_long(const char *flag, const char *v, long lo, long hi, long *out)
{
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || end == v || *end || n < lo || n > hi) {
        fprintf(stderr, "fusion-stub-llm: %s wants a number from %ld to %ld, got '%s'\n", flag, lo,
                hi, v);
        return -1;
    }
    *out = n;
    return 0;
}

/* Raises the soft descriptor limit to the hard one: thousands of
 * concurrent connections need thousands of descriptors. Returns the
 * resulting soft limit. */
static rlim_t raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return 1024;
    if (rl.rlim_cur < rl.rlim_max) {
        struct rlimit want = rl;
        want.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &want) == 0)
            rl = want;
    }
    return rl.rlim_cur;
}

/* "HOST:PORT" or "[V6]:PORT" -> address. Prints why on failure. */
static int resolve_listen(const char *spec, struct sockaddr_storage *ss, socklen_t *len, char *host,
                          size_t hostlen, char *port, size_t portlen)
{
    const char *colon = strrchr(spec, ':');
    if (!colon || colon == spec || !colon[1]) {
        fprintf(stderr, "fusion-stub-llm: --listen wants HOST:PORT (e.g. 127.0.0.1:0), got '%s'\n",
                spec);
        return -1;
    }
    const char *h = spec;
    size_t hl = (size_t)(colon - spec);
    if (h[0] == '[' && hl >= 2 && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl >= hostlen || strlen(colon + 1) >= portlen) {
        fprintf(stderr, "fusion-stub-llm: --listen '%s' is too long\n", spec);
        return -1;
    }
    memcpy(host, h, hl);
    host[hl] = '\0';
    strcpy(port, colon + 1);

    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "fusion-stub-llm: --listen '%s': %s\n", spec, gai_strerror(rc));
        return -1;
    }
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

/* Writes the port to path atomically (temp file + rename), so a test
 * polling for the file never reads it half written. */
static int write_port_file(const char *path, unsigned port)
{
    size_t n = strlen(path) + 32;
    char *tmp = malloc(n);
    if (!tmp)
        return -1;
    snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    int ok = f && fprintf(f, "%u\n", port) > 0;
    if (f && fclose(f) != 0)
        ok = 0;
    if (ok && rename(tmp, path) != 0)
        ok = 0;
    if (!ok) {
        fprintf(stderr, "fusion-stub-llm: cannot write the port file %s: %s\n", path,
                strerror(errno));
        unlink(tmp);
    }
    free(tmp);
    return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
    const char *listen_spec = NULL, *port_file = NULL;
    struct stub_config cfg = {.model = "fusion-stub", .conn_limit = DEFAULT_CONN_LIMIT};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        long n;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--quiet") == 0) {
            cfg.quiet = 1;
            continue;
        }
        if (!v) {
            fprintf(stderr, "fusion-stub-llm: unknown option or missing value: %s\n", a);
            usage(stderr);
            return 2;
        }
        i++;
        if (strcmp(a, "--listen") == 0) {
            listen_spec = v;
        } else if (strcmp(a, "--port-file") == 0) {
            port_file = v;
        } else if (strcmp(a, "--model") == 0) {
            if (!*v) {
                fprintf(stderr, "fusion-stub-llm: --model wants a non-empty name\n");
                return 2;
            }
            cfg.model = v;
        } else if (strcmp(a, "--delay-ms") == 0) {
            if (parse_long(a, v, 0, 3600000, &n) != 0)
                return 2;
            cfg.delay_ms = n;
        } else if (strcmp(a, "--chunk-delay-ms") == 0) {
            if (parse_long(a, v, 0, 600000, &n) != 0)
                return 2;
            cfg.chunk_delay_ms = n;
        } else if (strcmp(a, "--max-connections") == 0) {
            if (parse_long(a, v, 1, 1000000, &n) != 0)
                return 2;
            cfg.conn_limit = (unsigned)n;
        } else {
            fprintf(stderr, "fusion-stub-llm: unknown option: %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!listen_spec) {
        fprintf(stderr, "fusion-stub-llm: --listen HOST:PORT is required\n");
        usage(stderr);
        return 2;
    }

    struct sockaddr_storage ss;
    socklen_t sslen;
    char host[256], port_str[16];
    if (resolve_listen(listen_spec, &ss, &sslen, host, sizeof host, port_str, sizeof port_str) != 0)
        return 2;

    /* Keep a few descriptors for the listener, the epoll set, the timer
     * and stdio; MHD refuses connections beyond the limit instead of
     * failing accept(). */
    rlim_t nofile = raise_nofile();
    if (nofile > 64 && nofile - 64 < cfg.conn_limit)
        cfg.conn_limit = (unsigned)(nofile - 64);

    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN); /* a client gone mid-write is an EPIPE, not a death */

    uint16_t port = 0;
    struct stub_server *srv = stub_server_start(&cfg, (struct sockaddr *)&ss, sslen, &port);
    if (!srv)
        return 1;
    int v6 = ss.ss_family == AF_INET6;
    fprintf(stderr, "fusion-stub-llm listening on http://%s%s%s:%u/v1\n", v6 ? "[" : "", host,
            v6 ? "]" : "", (unsigned)port);
    if (port_file && write_port_file(port_file, port) != 0) {
        stub_server_stop(srv);
        return 1;
    }

    int sig = 0;
    for (;;) {
        if (sigwait(&sigs, &sig) != 0)
            continue;
        if (sig == SIGHUP)
            continue; /* nothing to reload; do not die on it */
        break;
    }
    if (!cfg.quiet)
        fprintf(stderr, "fusion-stub-llm: %s, stopping\n", strsignal(sig));
    stub_server_stop(srv);
    if (port_file)
        unlink(port_file);
    return 0;
}
