/*
 * runner.c - see runner.h.
 */
#include "runner.h"

#include "config.h"
#include "diag.h"
#include "flags.h"
#include "sha256.h"
#include "util.h"
#include "yamlutil.h"

#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The files read here: logs, ports, configs, directive texts. */
#define RUNNER_FILE_MAX (16u << 20)

struct fh_runner {
    char dir[512];
    pid_t stub, daemon;
    char base[128];     /* http://127.0.0.1:PORT of the daemon */
    char stub_url[128]; /* http://127.0.0.1:PORT of the stub, "" with --upstream */
    char sock[PATH_MAX];
    char hash[65];
    CURL *chat, *other;
};

/* ---- children -------------------------------------------------------------------- */

/* Set by SIGINT, SIGTERM or SIGHUP once fh_runner_start installed the
 * handlers; the tools' loops stop and clean up. */
static volatile sig_atomic_t interrupted;

static void on_signal(int sig)
{
    interrupted = sig;
}

bool fh_runner_interrupted(void)
{
    return interrupted != 0;
}

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN); /* `| head` ends the output, not the cleanup */
}

/* The children die with the tool whatever kills it (PR_SET_PDEATHSIG),
 * and in their own process group, so a Ctrl-C reaches the tool, which
 * stops them in order. */
static pid_t spawn(char *const argv[], const char *log)
{
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);
    signal(SIGPIPE, SIG_DFL);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd >= 0) {
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
    }
    execv(argv[0], argv);
    _exit(127);
}

static void stop_child(pid_t *pid)
{
    if (*pid <= 0)
        return;
    kill(*pid, SIGTERM);
    for (int i = 0; i < 300; i++) {
        if (waitpid(*pid, NULL, WNOHANG) == *pid) {
            *pid = 0;
            return;
        }
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    kill(*pid, SIGKILL);
    waitpid(*pid, NULL, 0);
    *pid = 0;
}

/* Waits for `file` to be written by `pid`; false when it exits first or
 * the time runs out. */
static bool wait_file(const char *file, pid_t *pid, int ms)
{
    for (int i = 0; i < ms / 10 && !interrupted; i++) {
        struct stat st;
        if (stat(file, &st) == 0 && st.st_size > 0)
            return true;
        if (waitpid(*pid, NULL, WNOHANG) == *pid) {
            *pid = 0; /* reaped: never signal that number again */
            return false;
        }
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return false;
}

/* The last lines of the daemon's log, for a start that failed. */
static void log_tail(const char *dir, char *out, size_t len)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/daemon.log", dir);
    char *text = fh_read_file(path, RUNNER_FILE_MAX, NULL);
    if (!text) {
        out[0] = '\0';
        return;
    }
    size_t n = strlen(text);
    const char *from = n > 600 ? text + n - 600 : text;
    fh_strlcpy(out, from, len);
    free(text);
}

/* ---- the configuration ----------------------------------------------------------- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void hash_file(fh_sha256_ctx *h, const char *path)
{
    size_t len = 0;
    char *text = fh_read_file(path, RUNNER_FILE_MAX, &len);
    /* Its name too (not where it is: the same tree anywhere hashes the
     * same), so moving a text between files changes the digest. */
    const char *slash = strrchr(path, '/');
    const char *name = slash ? slash + 1 : path;
    fh_sha256_update(h, name, strlen(name) + 1);
    if (text)
        fh_sha256_update(h, text, len);
    free(text);
}

static void config_hash(const fh_config *cfg, const char *config_path, char out[65])
{
    fh_sha256_ctx h;
    fh_sha256_init(&h);
    hash_file(&h, config_path);
    hash_file(&h, cfg->feature_flags);
    DIR *d = opendir(cfg->micro_overlays_dir);
    char **names = NULL;
    size_t n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        size_t l = strlen(e->d_name);
        if (e->d_name[0] == '.' || l < 4 || strcmp(e->d_name + l - 3, ".md") != 0)
            continue;
        char **g = realloc(names, (n + 1) * sizeof(*g));
        if (!g)
            break;
        names = g;
        names[n++] = strdup(e->d_name);
    }
    if (d)
        closedir(d);
    if (n)
        qsort(names, n, sizeof(*names), cmp_str);
    for (size_t i = 0; i < n; i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof(path), "%s/%s", cfg->micro_overlays_dir, names[i] ? names[i] : "");
        /* Relative to the folder: the digest does not depend on where the
         * source tree is. */
        fh_sha256_update(&h, names[i] ? names[i] : "", names[i] ? strlen(names[i]) + 1 : 1);
        size_t len = 0;
        char *text = fh_read_file(path, RUNNER_FILE_MAX, &len);
        if (text)
            fh_sha256_update(&h, text, len);
        free(text);
        free(names[i]);
    }
    free(names);
    unsigned char digest[32];
    fh_sha256_final(&h, digest);
    fh_sha256_hex(digest, out);
}

/* The operator's config as JSON (valid YAML), with what a private daemon
 * must change. */
static int derive_config(fh_runner *r, const char *config_path, const char *upstream, char *err,
                         size_t errlen)
{
    fh_diag diag = {0};
    fh_config *cfg = fh_config_load(config_path, &diag);
    fh_yaml y;
    json_t *root = NULL;
    char *text = NULL;
    if (cfg && fh_yaml_open(&y, cfg->path, config_path, &diag) == 0) {
        text = fh_yaml_to_json(&y, fh_yaml_root(&y), NULL, true);
        fh_yaml_close(&y);
    }
    root = text ? json_loads(text, 0, NULL) : NULL;
    free(text);
    if (!cfg || !root) {
        snprintf(err, errlen, "%s: %s", config_path,
                 diag.count ? diag.items[0] : "cannot be read as a configuration");
        fh_diag_clear(&diag);
        fh_config_free(cfg);
        json_decref(root);
        return -1;
    }
    fh_diag_clear(&diag);
    config_hash(cfg, cfg->path, r->hash);
    char state[PATH_MAX];
    snprintf(state, sizeof(state), "%s/state", r->dir);
    snprintf(r->sock, sizeof(r->sock), "%s/admin.sock", r->dir);
    char admin[PATH_MAX + 8];
    snprintf(admin, sizeof(admin), "unix:%s", r->sock);
    json_object_set_new(root, "listen", json_string("127.0.0.1:0"));
    json_object_set_new(root, "admin", json_pack("{s:s}", "listen", admin));
    json_t *up = json_object_get(root, "upstream");
    if (!json_is_object(up)) {
        up = json_object();
        json_object_set_new(root, "upstream", up);
    }
    json_object_set_new(up, "base_url", json_string(upstream));
    json_object_set_new(root, "plugins",
                        json_pack("{s:s, s:b}", "dir", cfg->plugins.dir, "watch", 0));
    json_object_set_new(root, "state_dir", json_string(state));
    json_object_set_new(root, "feature_flags", json_string(cfg->feature_flags));
    json_object_set_new(root, "micro_overlays_dir", json_string(cfg->micro_overlays_dir));
    /* The tools measure the overlays, not the gates: a gate tripped or a
     * breaker opened by one scenario would turn the next ones into
     * baseline runs (and the stub's long answers trip the runbook budgets
     * at once). Every overlay the flags or the config name gets them
     * lifted; its `config:` is kept. */
    json_t *ov = json_object_get(root, "overlays");
    if (!json_is_object(ov)) {
        ov = json_object();
        json_object_set_new(root, "overlays", ov);
    }
    fh_flags *flags = fh_flags_load(cfg->feature_flags, &diag);
    fh_diag_clear(&diag);
    for (size_t i = 0; flags && i < flags->feature_count; i++)
        if (!json_object_get(ov, flags->features[i].name))
            json_object_set_new(ov, flags->features[i].name, json_object());
    fh_flags_free(flags);
    const char *oname;
    json_t *o;
    json_object_foreach(ov, oname, o)
    {
        if (!json_is_object(o))
            continue;
        json_object_set_new(o, "budget",
                            json_pack("{s:i, s:f, s:f, s:i, s:i}", "hook_latency_ms", 60000,
                                      "token_delta_warn_pct", 100000.0, "token_delta_max_pct",
                                      100000.0, "consecutive_breaches", 1000, "tokens_per_minute",
                                      0));
        json_object_set_new(o, "breaker", json_pack("{s:i}", "failure_threshold", 1000));
        json_object_set_new(o, "quality_threshold", json_real(0));
    }
    json_object_del(root, "auth"); /* the tools' requests carry no client key */
    json_object_del(root, "cors");
    json_object_set_new(root, "workers", json_integer(1));
    fh_config_free(cfg);
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/fusion-host.yaml", r->dir);
    int rc = json_dump_file(root, path, JSON_INDENT(2));
    json_decref(root);
    if (rc != 0) {
        snprintf(err, errlen, "cannot write %s: %s", path, strerror(errno));
        return -1;
    }
    return 0;
}

/* ---- start and stop --------------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st, (void)type, (void)ftw;
    remove(path);
    return 0;
}

static bool self_dir(char *out, size_t len)
{
    ssize_t n = readlink("/proc/self/exe", out, len - 1);
    if (n <= 0)
        return false;
    out[n] = '\0';
    char *slash = strrchr(out, '/');
    if (!slash)
        return false;
    *slash = '\0';
    return true;
}

fh_runner *fh_runner_start(const char *config_path, const char *upstream, char *err, size_t errlen)
{
    fh_runner *r = calloc(1, sizeof(*r));
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    install_signals();
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp || strlen(tmp) > 400)
        tmp = "/tmp";
    snprintf(r->dir, sizeof(r->dir), "%s/fusion-host-run-XXXXXX", tmp);
    if (!mkdtemp(r->dir)) {
        snprintf(err, errlen, "cannot create a temporary folder: %s", strerror(errno));
        free(r);
        return NULL;
    }
    char bindir[PATH_MAX], exe[PATH_MAX + 32], log[PATH_MAX], file[PATH_MAX];
    if (!self_dir(bindir, sizeof(bindir))) {
        snprintf(err, errlen, "cannot find this program's folder (/proc/self/exe)");
        goto fail;
    }
    char up[300];
    if (upstream) {
        fh_strlcpy(up, upstream, sizeof(up));
    } else {
        const char *env = getenv("FUSION_STUB_LLM");
        if (env && *env)
            fh_strlcpy(exe, env, sizeof(exe));
        else
            snprintf(exe, sizeof(exe), "%s/fusion-stub-llm", bindir);
        if (access(exe, X_OK) != 0) {
            snprintf(err, errlen,
                     "the bundled stub model %s is not there (%s): build it (it comes with the "
                     "source tree), set FUSION_STUB_LLM, or give --upstream URL",
                     exe, strerror(errno));
            goto fail;
        }
        snprintf(log, sizeof(log), "%s/stub.log", r->dir);
        snprintf(file, sizeof(file), "%s/stub.port", r->dir);
        char *argv[] = {exe, "--listen", "127.0.0.1:0", "--port-file", file, "--quiet", NULL};
        r->stub = spawn(argv, log);
        if (r->stub < 0 || !wait_file(file, &r->stub, 5000)) {
            snprintf(err, errlen, "the stub model %s did not start (see %s)", exe, log);
            goto fail;
        }
        char *port = fh_read_file(file, RUNNER_FILE_MAX, NULL);
        snprintf(r->stub_url, sizeof(r->stub_url), "http://127.0.0.1:%ld",
                 port ? strtol(port, NULL, 10) : 0L);
        free(port);
        snprintf(up, sizeof(up), "%s/v1", r->stub_url);
    }
    if (derive_config(r, config_path, up, err, errlen) != 0)
        goto fail;
    snprintf(exe, sizeof(exe), "%s/fusion-host", bindir);
    char cfg[PATH_MAX], ready[PATH_MAX];
    snprintf(cfg, sizeof(cfg), "%s/fusion-host.yaml", r->dir);
    snprintf(ready, sizeof(ready), "%s/ready", r->dir);
    snprintf(log, sizeof(log), "%s/daemon.log", r->dir);
    char *argv[] = {exe, "--log-level", "warn", "serve", "-c", cfg, "--ready-file", ready, NULL};
    r->daemon = spawn(argv, log);
    if (r->daemon < 0 || !wait_file(ready, &r->daemon, 15000)) {
        char tail[700];
        log_tail(r->dir, tail, sizeof(tail));
        snprintf(err, errlen, "the daemon did not start; its log ends with:\n%s", tail);
        goto fail;
    }
    char *rf = fh_read_file(ready, RUNNER_FILE_MAX, NULL);
    const char *l = rf ? strstr(rf, "listen=") : NULL;
    if (!l) {
        free(rf);
        snprintf(err, errlen, "the daemon's ready file %s has no listen= line", ready);
        goto fail;
    }
    snprintf(r->base, sizeof(r->base), "http://%.*s", (int)strcspn(l + 7, "\n"), l + 7);
    free(rf);
    r->chat = curl_easy_init();
    r->other = curl_easy_init();
    if (!r->chat || !r->other) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    return r;
fail:
    fh_runner_stop(r);
    return NULL;
}

void fh_runner_stop(fh_runner *r)
{
    if (!r)
        return;
    stop_child(&r->daemon);
    stop_child(&r->stub);
    if (r->chat)
        curl_easy_cleanup(r->chat);
    if (r->other)
        curl_easy_cleanup(r->other);
    nftw(r->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(r);
}

const char *fh_runner_config_hash(const fh_runner *r)
{
    return r->hash;
}

int fh_runner_has_stub(const fh_runner *r)
{
    return r->stub_url[0] != '\0';
}

/* ---- calls ------------------------------------------------------------------------ */

typedef struct sink {
    char *data;
    size_t len, cap;
} sink;

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    sink *s = ud;
    size_t n = size * nmemb;
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < s->len + n + 1)
            cap *= 2;
        char *g = realloc(s->data, cap);
        if (!g)
            return 0;
        s->data = g;
        s->cap = cap;
    }
    memcpy(s->data + s->len, p, n);
    s->len += n;
    s->data[s->len] = '\0';
    return n;
}

static size_t on_header(char *p, size_t size, size_t nmemb, void *ud)
{
    fh_run_result *out = ud;
    size_t n = size * nmemb;
    const struct {
        const char *name;
        char *dst;
        size_t len;
    } want[] = {{"x-fusion-overlay:", out->overlay, sizeof(out->overlay)},
                {"x-fusion-reason:", out->reason, sizeof(out->reason)}};
    for (size_t i = 0; i < 2; i++) {
        size_t k = strlen(want[i].name);
        if (n > k && strncasecmp(p, want[i].name, k) == 0) {
            const char *v = p + k;
            size_t vl = n - k;
            while (vl && (*v == ' ' || *v == '\t'))
                v++, vl--;
            while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
                vl--;
            if (vl >= want[i].len)
                vl = want[i].len - 1;
            memcpy(want[i].dst, v, vl);
            want[i].dst[vl] = '\0';
        }
    }
    return n;
}

int fh_runner_chat(fh_runner *r, const char *body, fh_run_result *out)
{
    memset(out, 0, sizeof(*out));
    char url[200];
    snprintf(url, sizeof(url), "%s/v1/chat/completions", r->base);
    sink s = {0};
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    CURL *e = r->chat;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, out);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 120000L);
    curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
    uint64_t t0 = fh_now_ns();
    CURLcode cc = curl_easy_perform(e);
    out->latency_ms = (double)(fh_now_ns() - t0) / 1e6;
    curl_slist_free_all(h);
    if (cc != CURLE_OK) {
        free(s.data);
        fh_strlcpy(out->reason, "transport_error", sizeof(out->reason));
        return -1;
    }
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &out->status);
    out->body = s.data ? s.data : strdup("");
    out->len = s.len;
    return 0;
}

static long get(CURL *e, const char *url, const char *sock, const char *method, char **body)
{
    sink s = {0};
    curl_easy_reset(e);
    curl_easy_setopt(e, CURLOPT_URL, url);
    if (sock)
        curl_easy_setopt(e, CURLOPT_UNIX_SOCKET_PATH, sock);
    if (strcmp(method, "POST") == 0)
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
    else if (strcmp(method, "GET") != 0)
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 30000L);
    curl_easy_setopt(e, CURLOPT_NOPROXY, "*");
    long status = 0;
    if (curl_easy_perform(e) == CURLE_OK)
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    if (body)
        *body = s.data;
    else
        free(s.data);
    return status;
}

char *fh_runner_upstream_last(fh_runner *r)
{
    if (!r->stub_url[0])
        return NULL;
    char url[200], *body = NULL;
    snprintf(url, sizeof(url), "%s/stub/last", r->stub_url);
    if (get(r->other, url, NULL, "GET", &body) != 200) {
        free(body);
        return NULL;
    }
    return body;
}

long fh_runner_admin(fh_runner *r, const char *method, const char *path, char **body)
{
    char url[PATH_MAX];
    snprintf(url, sizeof(url), "http://localhost%s", path);
    return get(r->other, url, r->sock, method, body);
}

void fh_runner_clear_upstream(fh_runner *r)
{
    if (!r->stub_url[0])
        return;
    char url[200];
    snprintf(url, sizeof(url), "%s/stub/requests", r->stub_url);
    get(r->other, url, NULL, "DELETE", NULL);
}
