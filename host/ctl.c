/*
 * ctl.c - see ctl.h.
 *
 * One command runs in four steps, each a function: parse the arguments
 * (parse_args), find the admin API and its token (resolve_endpoint: --admin,
 * $FUSION_HOST_ADMIN, -c FILE, the default), send one request (ctl_call),
 * judge and print the answer (ctl_answer, then the command's printer).
 *
 * The exit status says who said no: 3 when no HTTP answer came (nothing
 * listens, the socket is missing, no answer in time), 1 when the daemon
 * answered with an error or the answer is unusable. Everything is freed on
 * every path; the only globals are constant tables.
 */
#include "ctl.h"

#include "config.h"
#include "diag.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#define EXIT_FAILED 1
#define EXIT_USAGE  2

#define CTL_CONNECT_TIMEOUT_MS 2000
/* unload and reload wait for in-flight requests and plugin fini(). */
#define CTL_TIMEOUT_MS 30000
/* Far above any real answer; a bound so a wrong address cannot fill memory. */
#define CTL_BODY_MAX (16u << 20)

typedef enum ctl_arg_kind { ARG_NONE, ARG_NAME, ARG_PATH } ctl_arg_kind;

typedef struct ctl_args {
    const char *cmd; /* the command word */
    const char *arg; /* NAME or PATH */
    const char *admin, *token_file, *config;
    bool json;
} ctl_args;

/* Where the admin API is and how to talk to it. */
typedef struct ctl_endpoint {
    char *addr;   /* as written by the operator or the config, for messages */
    char *source; /* where addr came from, e.g. "admin.listen in FILE" */
    char *socket; /* unix socket path, or NULL for TCP */
    char *base;   /* "http://localhost" (unix) or "http://HOST:PORT" */
    char *token;  /* bearer token, or NULL: no Authorization header */
} ctl_endpoint;

typedef struct ctl_buf {
    char *data;
    size_t len;
    bool too_big;
} ctl_buf;

typedef int (*ctl_print_fn)(const json_t *body, const ctl_args *a);

typedef struct ctl_cmd {
    const char *name;
    const char *sub; /* the required second word ("flags show"), or NULL */
    ctl_arg_kind arg;
    bool post;
    /* ARG_NAME: what follows /admin/overlays/NAME; otherwise the whole path */
    const char *path;
    ctl_print_fn print;
    /* The exit status an answer means beyond HTTP success, or NULL. */
    int (*verdict)(const json_t *body);
} ctl_cmd;

/* ---- small helpers ------------------------------------------------------ */

__attribute__((format(printf, 1, 2))) static int usage(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("fusion-host: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputs("\nTry 'fusion-host --help'.\n", stderr);
    va_end(ap);
    return EXIT_USAGE;
}

static const char *jstr(const json_t *o, const char *key, const char *dflt)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : dflt;
}

static long long jint(const json_t *o, const char *key)
{
    const json_t *v = json_object_get(o, key);
    return json_is_integer(v) ? (long long)json_integer_value(v)
           : json_is_real(v)  ? (long long)json_real_value(v)
                              : 0;
}

static const char *plural(long long n)
{
    return n == 1 ? "" : "s";
}

/* Pretty-printed JSON on stdout; 1 when it cannot be (out of memory). */
static int print_json(const json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_ENCODE_ANY | JSON_REAL_PRECISION(10));
    if (!s) {
        fprintf(stderr, "fusion-host: out of memory printing the answer\n");
        return EXIT_FAILED;
    }
    puts(s);
    free(s);
    return 0;
}

/* The start of a body that is not JSON, printable on one line. */
static void snippet(const char *body, size_t len, char *out, size_t outlen)
{
    size_t n = 0, i = 0;
    for (; i < len && n + 4 < outlen; i++)
        out[n++] = body[i] >= 0x20 && body[i] < 0x7f ? body[i] : ' ';
    out[n] = '\0';
    if (i < len)
        snprintf(out + n, outlen - n, "...");
}

/* ---- printers: one per command ------------------------------------------ */

static const char *breaker_cell(const json_t *o)
{
    return jstr(json_object_get(o, "breaker"), "state", "-");
}

static const char *gate_cell(const json_t *o)
{
    const json_t *t = json_object_get(json_object_get(o, "gate"), "tripped");
    if (!json_is_boolean(t))
        return "-";
    return json_is_true(t) ? "tripped" : "ok";
}

enum { COL_NAME, COL_VERSION, COL_STATE, COL_IN_FLIGHT, COL_BREAKER, COL_GATE, COL_FILE, NCOLS };

typedef struct list_row {
    const char *cell[NCOLS];
    char in_flight[24];
} list_row;

static void list_row_fill(const json_t *o, list_row *r)
{
    snprintf(r->in_flight, sizeof(r->in_flight), "%lld", jint(o, "in_flight"));
    r->cell[COL_NAME] = jstr(o, "name", "?");
    r->cell[COL_VERSION] = jstr(o, "version", "?");
    r->cell[COL_STATE] = jstr(o, "state", "?");
    r->cell[COL_IN_FLIGHT] = r->in_flight;
    r->cell[COL_BREAKER] = breaker_cell(o);
    r->cell[COL_GATE] = gate_cell(o);
    r->cell[COL_FILE] = jstr(o, "file", "?");
}

static void list_print_row(const list_row *r, const size_t *width)
{
    for (int c = 0; c < COL_FILE; c++)
        printf("%-*s  ", (int)width[c], r->cell[c]);
    printf("%s\n", r->cell[COL_FILE]);
}

/* The why of a row, indented under it: the state's reason, a tripped gate,
 * a breaker that is not closed, older generations still around. */
static void list_print_details(const json_t *o)
{
    const char *reason = jstr(o, "reason", "");
    if (*reason)
        printf("    reason: %s\n", reason);
    const json_t *gate = json_object_get(o, "gate");
    if (json_is_true(json_object_get(gate, "tripped")))
        printf("    gate tripped: %s\n", jstr(gate, "trip_reason", "(no reason given)"));
    const json_t *brk = json_object_get(o, "breaker");
    const char *bstate = jstr(brk, "state", "closed");
    const char *last = jstr(brk, "last_failure_reason", NULL);
    if (strcmp(bstate, "closed") != 0 && last)
        printf("    breaker %s: last failure %s\n", bstate, last);
    long long draining = jint(o, "draining_generations"), pinned = jint(o, "pinned_generations");
    bool unloading = strcmp(jstr(o, "state", ""), "draining") == 0;
    if (draining > 0 && unloading)
        printf("    unloading: %lld request%s in flight finish first\n", jint(o, "in_flight"),
               plural(jint(o, "in_flight")));
    else if (draining > 0)
        printf("    %lld older generation%s still draining\n", draining, plural(draining));
    if (pinned > 0)
        printf("    %lld closed generation%s left mapped (the library could not be unloaded)\n",
               pinned, plural(pinned));
}

static void list_print_failed(const json_t *failed)
{
    size_t i;
    const json_t *f;
    if (json_array_size(failed) == 0)
        return;
    printf("\nRefused files:\n");
    json_array_foreach(failed, i, f)
    {
        const char *file = jstr(f, "file", "?");
        const char *reason = jstr(f, "reason", jstr(f, "error", "refused"));
        /* The loader's reasons usually start with the file already. */
        size_t n = strlen(file);
        if (strncmp(reason, file, n) == 0 && reason[n] == ':')
            printf("  %s\n", reason);
        else
            printf("  %s: %s\n", file, reason);
    }
}

static int print_list(const json_t *body, const ctl_args *a)
{
    (void)a;
    const json_t *overlays = json_object_get(body, "overlays");
    const json_t *failed = json_object_get(body, "failed");
    size_t n = json_array_size(overlays);
    static const char *const header[NCOLS] = {"NAME",    "VERSION", "STATE", "IN-FLIGHT",
                                              "BREAKER", "GATE",    "FILE"};
    size_t width[NCOLS];
    size_t counts[4] = {0}; /* enabled, disabled, draining, quarantined */
    static const char *const states[4] = {"enabled", "disabled", "draining", "quarantined"};

    list_row *rows = calloc(n ? n : 1, sizeof(*rows));
    if (!rows) {
        fprintf(stderr, "fusion-host: out of memory\n");
        return EXIT_FAILED;
    }
    for (int c = 0; c < NCOLS; c++)
        width[c] = strlen(header[c]);
    for (size_t i = 0; i < n; i++) {
        list_row_fill(json_array_get(overlays, i), &rows[i]);
        for (int c = 0; c < NCOLS; c++)
            if (strlen(rows[i].cell[c]) > width[c])
                width[c] = strlen(rows[i].cell[c]);
        for (size_t s = 0; s < 4; s++)
            counts[s] += strcmp(rows[i].cell[COL_STATE], states[s]) == 0;
    }
    if (n) {
        list_row head;
        memcpy(head.cell, header, sizeof(head.cell));
        list_print_row(&head, width);
    }
    for (size_t i = 0; i < n; i++) {
        list_print_row(&rows[i], width);
        list_print_details(json_array_get(overlays, i));
    }
    free(rows);
    list_print_failed(failed);
    /* Decisions kept for names not loaded now: they apply when they load. */
    const json_t *kept = json_object_get(body, "persisted");
    if (json_array_size(kept)) {
        printf("\nKept for overlays not loaded now (`enable NAME` forgets them):\n");
        for (size_t i = 0; i < json_array_size(kept); i++) {
            const json_t *k = json_array_get(kept, i);
            printf("  %s  %s: %s\n", jstr(k, "name", "?"), jstr(k, "state", "?"),
                   jstr(k, "reason", ""));
        }
    }
    size_t nf = json_array_size(failed);
    printf("%s%zu overlay%s: %zu enabled, %zu disabled, %zu draining, %zu quarantined; "
           "%zu file%s refused\n",
           n || nf ? "\n" : "", n, plural((long long)n), counts[0], counts[1], counts[2], counts[3],
           nf, plural((long long)nf));
    return 0;
}

static void format_uptime(double s, char *out, size_t len)
{
    long long t = s > 0 ? (long long)s : 0;
    if (t < 60)
        snprintf(out, len, "%.1fs", s > 0 ? s : 0.0);
    else if (t < 3600)
        snprintf(out, len, "%lldm %02llds", t / 60, t % 60);
    else if (t < 86400)
        snprintf(out, len, "%lldh %02lldm", t / 3600, t % 3600 / 60);
    else
        snprintf(out, len, "%lldd %lldh", t / 86400, t % 86400 / 3600);
}

/* "ok", or "degraded: a, b" - the health line of status and health. */
static void print_health_line(const json_t *body)
{
    const json_t *reasons = json_object_get(body, "reasons");
    size_t i;
    const json_t *r;
    printf("%s", jstr(body, "status", "?"));
    json_array_foreach(reasons, i, r)
        printf("%s%s", i ? ", " : ": ", json_is_string(r) ? json_string_value(r) : "?");
    printf("\n");
}

static int print_status(const json_t *body, const ctl_args *a)
{
    (void)a;
    char up[48];
    const json_t *ov = json_object_get(body, "overlays");
    const json_t *u = json_object_get(body, "uptime_s");
    if (json_is_number(u))
        format_uptime(json_number_value(u), up, sizeof(up));
    else
        snprintf(up, sizeof(up), "?");
    printf("version:     %s\n", jstr(body, "version", "?"));
    printf("pid:         %lld\n", jint(body, "pid"));
    printf("uptime:      %s\n", up);
    printf("config:      %s\n", jstr(body, "config", "?"));
    printf("listen:      %s\n", jstr(body, "listen", "?"));
    printf("admin:       %s\n", jstr(body, "admin", "?"));
    printf("workers:     %lld\n", jint(body, "workers"));
    printf("in-flight:   %lld\n", jint(body, "in_flight"));
    printf("state dir:   %s\n", jstr(body, "state_dir", "?"));
    printf("plugins:     %s (%s)\n", jstr(body, "plugins_dir", "?"),
           json_is_true(json_object_get(body, "watch")) ? "watched for changes"
                                                        : "not watched: use load or reload");
    printf("overlays:    %lld enabled, %lld disabled, %lld draining, %lld quarantined, "
           "%lld failed\n",
           jint(ov, "enabled"), jint(ov, "disabled"), jint(ov, "draining"), jint(ov, "quarantined"),
           jint(ov, "failed"));
    printf("health:      ");
    print_health_line(body);
    return 0;
}

static int print_toggle(const json_t *body, const ctl_args *a)
{
    bool enable = strcmp(a->cmd, "enable") == 0;
    printf("%s: %s%s\n", jstr(body, "name", a->arg),
           json_is_false(json_object_get(body, "changed")) ? "already " : "",
           jstr(body, "state", enable ? "enabled" : "disabled"));
    return 0;
}

static int print_unload(const json_t *body, const ctl_args *a)
{
    const char *name = jstr(body, "name", a->arg);
    const char *state = jstr(body, "state", "?");
    long long n = jint(body, "in_flight");
    if (strcmp(state, "draining") == 0)
        printf("%s: draining (%lld request%s in flight finish%s first)\n", name, n, plural(n),
               n == 1 ? "es" : "");
    else if (strcmp(state, "unloaded_pinned") == 0)
        printf("%s: unloaded, but the dynamic loader kept the library mapped (restart to free "
               "it)\n",
               name);
    else
        printf("%s: %s\n", name, state);
    return 0;
}

static int print_load(const json_t *body, const ctl_args *a)
{
    const char *state = jstr(body, "state", "enabled");
    printf("%s %s loaded from %s%s", jstr(body, "name", "?"), jstr(body, "version", "?"),
           jstr(body, "file", a->arg),
           json_is_true(json_object_get(body, "swapped")) ? ", swapped in (the old version drains)"
                                                          : "");
    if (strcmp(state, "enabled") != 0)
        printf(" (%s)", state);
    printf("\n");
    return 0;
}

static int print_reload(const json_t *body, const ctl_args *a)
{
    (void)a;
    printf("%s\n", jstr(body, "status", jstr(body, "result", "reloaded")));
    return 0;
}

static int print_reset(const json_t *body, const ctl_args *a)
{
    const json_t *gate = json_object_get(body, "gate");
    printf("%s: breaker %s, gate %s\n", jstr(body, "name", a->arg),
           jstr(json_object_get(body, "breaker"), "state", "closed"),
           json_is_true(json_object_get(gate, "tripped")) ? "still tripped" : "cleared");
    return 0;
}

static int print_flags(const json_t *body, const ctl_args *a)
{
    (void)a;
    return print_json(body);
}

static int print_health(const json_t *body, const ctl_args *a)
{
    (void)a;
    print_health_line(body);
    return 0;
}

static int health_verdict(const json_t *body)
{
    return strcmp(jstr(body, "status", ""), "ok") == 0 ? 0 : EXIT_FAILED;
}

static const ctl_cmd ctl_cmds[] = {
    {"list", NULL, ARG_NONE, false, "/admin/overlays", print_list, NULL},
    {"status", NULL, ARG_NONE, false, "/admin/status", print_status, NULL},
    {"enable", NULL, ARG_NAME, true, "/enable", print_toggle, NULL},
    {"disable", NULL, ARG_NAME, true, "/disable", print_toggle, NULL},
    {"unload", NULL, ARG_NAME, true, "/unload", print_unload, NULL},
    {"load", NULL, ARG_PATH, true, "/admin/overlays/load", print_load, NULL},
    {"reload", NULL, ARG_NONE, true, "/admin/reload", print_reload, NULL},
    {"reset", NULL, ARG_NAME, true, "/breaker/reset", print_reset, NULL},
    {"flags", "show", ARG_NONE, false, "/admin/flags", print_flags, NULL},
    {"health", NULL, ARG_NONE, false, "/admin/health", print_health, health_verdict},
};

static const ctl_cmd *find_cmd(const char *name)
{
    for (size_t i = 0; i < sizeof(ctl_cmds) / sizeof(ctl_cmds[0]); i++)
        if (strcmp(ctl_cmds[i].name, name) == 0)
            return &ctl_cmds[i];
    return NULL;
}

bool fh_ctl_is_command(int argc, char **argv)
{
    const ctl_cmd *c = argc > 0 ? find_cmd(argv[0]) : NULL;
    return c && (!c->sub || (argc > 1 && strcmp(argv[1], c->sub) == 0));
}

/* ---- arguments ------------------------------------------------------------ */

/* "NAME VALUE", or "--NAME=VALUE" for long options, at argv[*i]: 1 taken,
 * 0 not this option, -1 the value is missing. */
static int opt_value(int argc, char **argv, int *i, const char *name, const char **out)
{
    const char *s = argv[*i];
    size_t n = strlen(name);
    if (strncmp(s, name, n) != 0)
        return 0;
    if (s[n] == '=' && name[1] == '-') {
        *out = s + n + 1;
        return 1;
    }
    if (s[n] != '\0')
        return 0;
    if (*i + 1 >= argc)
        return -1;
    *out = argv[++*i];
    return 1;
}

static int take_option(int argc, char **argv, int *i, ctl_args *a)
{
    if (strcmp(argv[*i], "--json") == 0) {
        a->json = true;
        return 1;
    }
    int r = opt_value(argc, argv, i, "--admin", &a->admin);
    if (!r)
        r = opt_value(argc, argv, i, "--token-file", &a->token_file);
    if (!r)
        r = opt_value(argc, argv, i, "--config", &a->config);
    if (!r)
        r = opt_value(argc, argv, i, "-c", &a->config);
    return r;
}

static int parse_args(int argc, char **argv, ctl_args *a, const ctl_cmd **cmd)
{
    const ctl_cmd *c = find_cmd(argv[0]);
    const char *words[2];
    int nw = 0;
    bool options = true;
    a->cmd = argv[0];
    if (!c)
        return usage("unknown command '%s'", argv[0]);
    for (int i = 1; i < argc; i++) {
        const char *s = argv[i];
        if (options && strcmp(s, "--") == 0) {
            options = false;
            continue;
        }
        if (options && s[0] == '-' && s[1]) {
            int r = take_option(argc, argv, &i, a);
            if (r < 0)
                return usage("%s: %s needs a value", a->cmd, s);
            if (r == 0)
                return usage("%s: unknown option '%s'", a->cmd, s);
            continue;
        }
        if (nw == 2)
            return usage("%s: unexpected argument '%s'", a->cmd, s);
        words[nw++] = s;
    }
    int w = 0;
    if (c->sub) {
        if (nw == 0 || strcmp(words[0], c->sub) != 0)
            return usage("%s: expected '%s %s'", a->cmd, c->name, c->sub);
        w = 1;
    }
    if (c->arg != ARG_NONE) {
        if (w >= nw || !words[w][0])
            return usage(c->arg == ARG_NAME
                             ? "%s: which overlay? give its NAME (fusion-host list shows them)"
                             : "%s: which plugin? give the PATH of its .so (absolute, or "
                               "relative to plugins.dir)",
                         a->cmd);
        a->arg = words[w++];
    }
    if (w < nw)
        return usage("%s: unexpected argument '%s'", a->cmd, words[w]);
    *cmd = c;
    return 0;
}

/* ---- the endpoint --------------------------------------------------------- */

static void endpoint_clear(ctl_endpoint *ep)
{
    free(ep->addr);
    free(ep->source);
    free(ep->socket);
    free(ep->base);
    free(ep->token);
    memset(ep, 0, sizeof(*ep));
}

static bool valid_port(const char *p)
{
    if (!*p || strspn(p, "0123456789") != strlen(p) || strlen(p) > 5)
        return false;
    long v = strtol(p, NULL, 10);
    return v >= 1 && v <= 65535;
}

/* NULL when `s` is HOST:PORT or [V6]:PORT, else what is wrong. */
static const char *hostport_problem(const char *s)
{
    const char *port;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end == s + 1 || end[1] != ':')
            return "an IPv6 address is written [ADDRESS]:PORT, e.g. [::1]:8081";
        port = end + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon || colon == s)
            return "HOST:PORT needs both, e.g. 127.0.0.1:8081";
        if (memchr(s, ':', (size_t)(colon - s)))
            return "an IPv6 address is written [ADDRESS]:PORT, e.g. [::1]:8081";
        for (const char *c = s; c < colon; c++)
            if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-", *c))
                return "the host has characters a host name cannot have";
        port = colon + 1;
    }
    return valid_port(port) ? NULL : "the port must be a number from 1 to 65535";
}

/* ep->addr into ep->socket/ep->base. */
static int parse_addr(ctl_endpoint *ep)
{
    const char *s = ep->addr;
    const char *path = strncmp(s, "unix:", 5) == 0 ? s + 5 : s[0] == '/' ? s : NULL;
    if (path) {
        struct sockaddr_un sun;
        if (!*path)
            return usage("%s \"%s\": \"unix:\" needs a socket path, e.g. " FH_CTL_DEFAULT_ADDR,
                         ep->source, s);
        if (strlen(path) >= sizeof(sun.sun_path))
            return usage("%s \"%s\": the socket path is %zu bytes long; at most %zu fit in a "
                         "unix socket address",
                         ep->source, s, strlen(path), sizeof(sun.sun_path) - 1);
        ep->socket = strdup(path);
        ep->base = strdup("http://localhost");
    } else {
        const char *why = hostport_problem(s);
        if (why)
            return usage("%s \"%s\" is not an admin address: %s; write unix:/PATH, /PATH or "
                         "HOST:PORT",
                         ep->source, s, why);
        if (asprintf(&ep->base, "http://%s", s) < 0)
            ep->base = NULL;
    }
    if (!ep->base || (path && !ep->socket)) {
        fprintf(stderr, "fusion-host: out of memory\n");
        return EXIT_FAILED;
    }
    return 0;
}

/* The bearer token: the first line of `path`, surrounding blanks cut. */
static int read_token(const char *path, char **out)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr,
                "fusion-host: cannot read the admin token file %s: %s; it is the daemon's "
                "admin.token_file: run as a user who may read it, or give --token-file\n",
                path, strerror(errno));
        return EXIT_FAILED;
    }
    char *line = NULL;
    size_t cap = 0;
    errno = 0;
    ssize_t n = getline(&line, &cap, f);
    int err = errno;
    fclose(f);
    while (n > 0 && strchr(" \t\r\n", line[n - 1]))
        line[--n] = '\0';
    size_t lead = n > 0 ? strspn(line, " \t") : 0;
    if (n <= 0 || (size_t)n == lead) {
        if (n < 0 && err)
            fprintf(stderr, "fusion-host: cannot read the admin token file %s: %s\n", path,
                    strerror(err));
        else
            fprintf(stderr,
                    "fusion-host: the admin token file %s has no token on its first line; "
                    "put the daemon's bearer token there\n",
                    path);
        free(line);
        return EXIT_FAILED;
    }
    memmove(line, line + lead, (size_t)n - lead + 1);
    *out = line;
    return 0;
}

/* -c FILE, for its admin.listen and admin.token_file. */
static fh_config *load_config(const char *path)
{
    fh_diag diag = {0};
    fh_config *cfg = fh_config_load(path, &diag);
    if (!cfg) {
        for (size_t i = 0; i < diag.count; i++)
            fprintf(stderr, "%s\n", diag.items[i]);
        fprintf(stderr,
                "fusion-host: %s: cannot take the admin address and token from it; fix it, or "
                "give --admin ADDR and --token-file F instead of -c\n",
                path);
    }
    fh_diag_clear(&diag);
    return cfg;
}

/* The address: --admin, else $FUSION_HOST_ADMIN, else admin.listen of -c
 * FILE, else the default. The token: --token-file, else admin.token_file
 * of -c FILE whichever way the address was given (the operator named that
 * config as the daemon's), else none. */
static int resolve_endpoint(const ctl_args *a, ctl_endpoint *ep)
{
    const char *env = getenv(FH_CTL_ADDR_ENV);
    bool addr_given = a->admin || (env && *env);
    fh_config *cfg = NULL;
    if (a->config && (!addr_given || !a->token_file)) {
        cfg = load_config(a->config);
        if (!cfg)
            return EXIT_FAILED;
    }
    int rc = 0;
    if (a->admin) {
        ep->addr = strdup(a->admin);
        ep->source = strdup("--admin");
    } else if (env && *env) {
        ep->addr = strdup(env);
        ep->source = strdup("$" FH_CTL_ADDR_ENV);
    } else if (cfg) {
        ep->addr = strdup(cfg->admin.listen);
        if (asprintf(&ep->source, "admin.listen in %s", cfg->path) < 0)
            ep->source = NULL;
    } else {
        ep->addr = strdup(FH_CTL_DEFAULT_ADDR);
        ep->source = strdup("the default address");
    }
    if (!ep->addr || !ep->source) {
        fprintf(stderr, "fusion-host: out of memory\n");
        rc = EXIT_FAILED;
    }
    if (!rc)
        rc = parse_addr(ep);
    const char *token_file = a->token_file                     ? a->token_file
                             : cfg && cfg->admin.token_file[0] ? cfg->admin.token_file
                                                               : NULL;
    if (!rc && token_file)
        rc = read_token(token_file, &ep->token);
    fh_config_free(cfg);
    return rc;
}

/* ---- the request ----------------------------------------------------------- */

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    ctl_buf *b = ud;
    size_t add = size * nmemb;
    if (b->len + add > CTL_BODY_MAX) {
        b->too_big = true;
        return 0;
    }
    char *d = realloc(b->data, b->len + add + 1);
    if (!d)
        return 0;
    memcpy(d + b->len, p, add);
    b->len += add;
    d[b->len] = '\0';
    b->data = d;
    return add;
}

/* What to tell the operator when no HTTP answer came. */
static void say_unreachable(CURL *e, CURLcode cc, const char *errbuf, const ctl_endpoint *ep)
{
    long oserr = 0;
    curl_off_t connected = 0;
    char why[CURL_ERROR_SIZE + 64];
    curl_easy_getinfo(e, CURLINFO_OS_ERRNO, &oserr);
    curl_easy_getinfo(e, CURLINFO_CONNECT_TIME_T, &connected);
    if (cc == CURLE_OPERATION_TIMEDOUT && connected > 0) {
        fprintf(stderr,
                "fusion-host: no answer from the admin API at %s within %d s; the command may "
                "still complete: see 'fusion-host status' and the daemon's log\n",
                ep->addr, CTL_TIMEOUT_MS / 1000);
        return;
    }
    if (cc == CURLE_OPERATION_TIMEDOUT)
        snprintf(why, sizeof(why), "the connection was not accepted within %d s",
                 CTL_CONNECT_TIMEOUT_MS / 1000);
    else if (oserr)
        snprintf(why, sizeof(why), "%s", strerror((int)oserr));
    else /* curl's own text names "localhost port 80" for a unix socket */
        snprintf(why, sizeof(why), "%s",
                 errbuf[0] && !ep->socket ? errbuf : curl_easy_strerror(cc));
    const char *hint =
        oserr == EACCES
            ? "run as a user the socket lets in (the daemon's user or group), e.g. with sudo"
        : strcmp(ep->source, "--admin") == 0           ? "is the daemon running? is --admin right?"
        : strncmp(ep->source, "admin.listen", 12) == 0 ? "is the daemon running with this config?"
        : ep->source[0] == '$' ? "is the daemon running? is $" FH_CTL_ADDR_ENV " right?"
                               : "is the daemon running? is admin.listen right? give -c FILE "
                                 "or --admin ADDR";
    fprintf(stderr, "fusion-host: cannot reach the admin API at %s: %s (%s)\n", ep->addr, why,
            hint);
}

static struct curl_slist *request_headers(const ctl_endpoint *ep, bool has_body)
{
    struct curl_slist *h = curl_slist_append(NULL, "Accept: application/json"), *t;
    /* No 100-continue round trip for a small body. */
    t = h ? curl_slist_append(h, "Expect:") : NULL;
    /* "Content-Type:" alone stops curl's form type on a bodiless POST. */
    if (t)
        t = curl_slist_append(t, has_body ? "Content-Type: application/json" : "Content-Type:");
    if (t && ep->token) {
        char *auth = NULL;
        if (asprintf(&auth, "Authorization: Bearer %s", ep->token) < 0)
            auth = NULL;
        t = auth ? curl_slist_append(t, auth) : NULL;
        free(auth);
    }
    if (!t) {
        curl_slist_free_all(h);
        return NULL;
    }
    return h;
}

/* One request. 0 with *status and `out` filled when an HTTP answer came
 * whole; else the exit status, the problem told on stderr. */
static int ctl_call(CURL *e, const ctl_endpoint *ep, bool post, const char *path, const char *body,
                    long *status, ctl_buf *out)
{
    char errbuf[CURL_ERROR_SIZE] = "";
    char *url = NULL;
    struct curl_slist *hdrs = request_headers(ep, body != NULL);
    if (!hdrs || asprintf(&url, "%s%s", ep->base, path) < 0) {
        curl_slist_free_all(hdrs);
        fprintf(stderr, "fusion-host: out of memory\n");
        return EXIT_FAILED;
    }
    curl_easy_setopt(e, CURLOPT_URL, url);
    if (ep->socket)
        curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, ep->socket);
    /* http_proxy in the operator's shell must not reroute admin calls. */
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)CTL_CONNECT_TIMEOUT_MS);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)CTL_TIMEOUT_MS);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "fusion-host/" FH_VERSION);
    if (post) {
        curl_easy_setopt(e, CURLOPT_POST, 1L);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, body ? body : "");
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? strlen(body) : 0));
    }
    CURLcode cc = curl_easy_perform(e);
    *status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, status);
    int rc = 0;
    if (cc == CURLE_OK) {
        rc = 0;
    } else if (out->too_big) {
        fprintf(stderr,
                "fusion-host: the answer from %s is larger than %u MiB; is it the "
                "fusion-host admin API?\n",
                ep->addr, CTL_BODY_MAX >> 20);
        rc = EXIT_FAILED;
    } else if (*status > 0) {
        /* The daemon answered, then the answer broke off. */
        fprintf(stderr,
                "fusion-host: the answer from the admin API at %s (HTTP %ld) was cut "
                "off: %s\n",
                ep->addr, *status, errbuf[0] ? errbuf : curl_easy_strerror(cc));
        rc = EXIT_FAILED;
    } else {
        say_unreachable(e, cc, errbuf, ep);
        rc = FH_CTL_EXIT_DOWN;
    }
    /* curl keeps pointers to these until the handle is cleaned up. */
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, NULL);
    curl_slist_free_all(hdrs);
    free(url);
    return rc;
}

/* ---- the answer ------------------------------------------------------------- */

static int say_error(const json_t *j, long status, const ctl_endpoint *ep)
{
    const char *msg = jstr(json_object_get(j, "error"), "message", NULL);
    if (msg)
        fprintf(stderr, "fusion-host: %s", msg);
    else
        fprintf(stderr, "fusion-host: the admin API at %s answered HTTP %ld", ep->addr, status);
    if (status == 401 && !ep->token)
        fprintf(stderr, " (no token was sent: give --token-file F, or -c FILE for the daemon's "
                        "admin.token_file)");
    fprintf(stderr, "\n");
    return EXIT_FAILED;
}

static int ctl_answer(const ctl_cmd *c, const ctl_args *a, const ctl_endpoint *ep, long status,
                      const ctl_buf *body)
{
    json_error_t jerr;
    json_t *j = json_loadb(body->data ? body->data : "", body->len, 0, &jerr);
    bool ok = status >= 200 && status < 300;
    const json_t *err = json_object_get(j, "error");
    if (!json_is_object(j)) {
        char start[128];
        snippet(body->data ? body->data : "", body->len, start, sizeof(start));
        if (ok)
            fprintf(stderr,
                    "fusion-host: the admin API at %s answered HTTP %ld with %s (%s); is it "
                    "the fusion-host admin API?\n",
                    ep->addr, status, body->len ? "a body that is not a JSON object" : "no body",
                    j ? "not an object" : jerr.text);
        else
            fprintf(stderr,
                    "fusion-host: the admin API at %s answered HTTP %ld%s%s (that is not "
                    "fusion-host's admin API answering; the address came from %s)\n",
                    ep->addr, status, body->len ? ": " : "", start, ep->source);
        json_decref(j);
        return EXIT_FAILED;
    }
    /* health answers 503 with its own body while starting or draining. */
    bool failed = err || (!ok && !c->verdict);
    int rc = a->json ? print_json(j) : 0;
    if (failed)
        rc = say_error(j, status, ep);
    else if (!a->json && !rc)
        rc = c->print(j, a);
    if (!failed && !rc && c->verdict)
        rc = c->verdict(j);
    json_decref(j);
    return rc;
}

/* The path, and for load the body, of the request for `a`. */
static int build_request(CURL *e, const ctl_cmd *c, const ctl_args *a, char **path, char **body)
{
    if (c->arg == ARG_NAME) {
        char *esc = curl_easy_escape(e, a->arg, 0);
        if (!esc || asprintf(path, "/admin/overlays/%s%s", esc, c->path) < 0)
            *path = NULL;
        curl_free(esc);
    } else {
        *path = strdup(c->path);
    }
    if (c->arg == ARG_PATH) {
        /* A relative path that exists here means this file; otherwise the
         * daemon resolves it against plugins.dir. */
        char *abs = a->arg[0] != '/' ? realpath(a->arg, NULL) : NULL;
        json_t *j = json_pack("{s:s}", "path", abs ? abs : a->arg);
        *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        free(abs);
        if (!*body)
            return -1;
    }
    return *path ? 0 : -1;
}

static int run(const ctl_cmd *c, const ctl_args *a, const ctl_endpoint *ep)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        fprintf(stderr, "fusion-host: cannot initialise libcurl\n");
        return EXIT_FAILED;
    }
    CURL *e = curl_easy_init();
    char *path = NULL, *body = NULL;
    ctl_buf buf = {0};
    long status = 0;
    int rc;
    if (!e || build_request(e, c, a, &path, &body) != 0) {
        fprintf(stderr, "fusion-host: out of memory\n");
        rc = EXIT_FAILED;
    } else {
        rc = ctl_call(e, ep, c->post, path, body, &status, &buf);
        if (rc == 0)
            rc = ctl_answer(c, a, ep, status, &buf);
    }
    free(buf.data);
    free(body);
    free(path);
    curl_easy_cleanup(e);
    curl_global_cleanup();
    return rc;
}

int fh_ctl_main(int argc, char **argv)
{
    ctl_args a = {0};
    const ctl_cmd *c = NULL;
    int rc = argc > 0 ? parse_args(argc, argv, &a, &c) : usage("which admin command?");
    if (rc)
        return rc;
    ctl_endpoint ep = {0};
    rc = resolve_endpoint(&a, &ep);
    if (rc == 0)
        rc = run(c, &a, &ep);
    endpoint_clear(&ep);
    return rc;
}
