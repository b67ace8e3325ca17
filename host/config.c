/*
 * config.c - loads fusion-host.yaml (SPEC section 3) into an immutable
 * fh_config snapshot; see config.h.
 *
 * Owns: every string in the fh_config it returns (freed by
 * fh_config_free). Runs on whichever thread loads or reloads the config
 * (main thread at start, the reload path later); the result is never
 * modified afterwards, so readers on any thread need no lock.
 *
 * Validation collects every problem in one pass (yamlutil getters keep
 * going after an error) so an operator fixes a file in one edit, not one
 * error per run.
 */
#include "config.h"

#include "auth.h"
#include "yamlutil.h"

#include <errno.h>
#include <arpa/inet.h>
#include <fnmatch.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

/* Field defaults; the comments in config.h and docs/config.md match. */
#define DEF_LISTEN        "127.0.0.1:8080"
#define DEF_ADMIN_LISTEN  "unix:/run/fusion-host/admin.sock"
#define DEF_BASE_URL      "http://127.0.0.1:8000/v1"
#define DEF_API_KEY_ENV   "FUSION_UPSTREAM_API_KEY"
#define DEF_PLUGINS_DIR   "/usr/lib/fusion-host/plugins"
#define DEF_STATE_DIR     "/var/lib/fusion-host"
#define DEF_FEATURE_FLAGS "overlay_feature_flags.yaml"
#define DEF_MICRO_DIR     "micro_overlays"
#define DEF_ENVIRONMENT   "production"

/* Shared by fh_overlay_cfg_defaults() and fh_config_overlay()'s fallback. */
#define OVERLAY_DEFAULT_FIELDS                                                                     \
    .breaker = {.failure_threshold = 5, .recovery_timeout_s = 300, .half_open_max_calls = 3},      \
    .budget = {.hook_latency_ms = 50,                                                              \
               .token_delta_warn_pct = 12,                                                         \
               .token_delta_max_pct = 25,                                                          \
               .token_window = 20,                                                                 \
               .consecutive_breaches = 3,                                                          \
               .tokens_per_minute = 0},                                                            \
    .quality_threshold = 0.8, .rule_pass_mark = 0.5

static const char *const top_keys[] = {"listen",
                                       "admin",
                                       "upstream",
                                       "plugins",
                                       "state_dir",
                                       "feature_flags",
                                       "micro_overlays_dir",
                                       "environment",
                                       "overlays",
                                       "limits",
                                       "metrics",
                                       "drain_timeout_ms",
                                       "workers",
                                       "hooks",
                                       "auth",
                                       "cors",
                                       NULL};
static const char *const admin_keys[] = {"listen", "token_file", NULL};
static const char *const auth_keys[] = {"keys_file", "allow_anonymous", NULL};
static const char *const cors_keys[] = {"allow_origins", NULL};
static const char *const upstream_keys[] = {
    "base_url",           "api_key_env",        "timeout_ms",  "idle_timeout_ms",
    "connect_timeout_ms", "forward_client_key", "model_rules", NULL};
static const char *const plugins_keys[] = {"dir", "watch", NULL};
static const char *const overlay_keys[] = {"breaker",        "budget", "quality_threshold",
                                           "rule_pass_mark", "config", NULL};
static const char *const breaker_keys[] = {"failure_threshold", "recovery_timeout_s",
                                           "half_open_max_calls", NULL};
static const char *const budget_keys[] = {"hook_latency_ms",
                                          "token_delta_warn_pct",
                                          "token_delta_max_pct",
                                          "token_window",
                                          "consecutive_breaches",
                                          "tokens_per_minute",
                                          NULL};
static const char *const limits_keys[] = {
    "max_body_bytes",    "max_connections",      "max_header_bytes", "max_connections_per_ip",
    "header_timeout_ms", "body_min_bytes_per_s", "idle_timeout_ms",  NULL};
static const char *const metrics_keys[] = {"max_series_per_metric", NULL};
static const char *const hooks_keys[] = {"deadline_ms", NULL};

void fh_overlay_cfg_defaults(fh_overlay_cfg *o)
{
    static const fh_overlay_cfg def = {OVERLAY_DEFAULT_FIELDS};
    *o = def;
}

const fh_overlay_cfg *fh_config_overlay(const fh_config *cfg, const char *name)
{
    /* Shared by every caller, so it is const and its strings are literals. */
    static const fh_overlay_cfg def = {
        OVERLAY_DEFAULT_FIELDS,
        .name = (char *)"",
        .config_json = (char *)"{}",
    };
    for (size_t i = 0; cfg && name && i < cfg->overlay_count; i++)
        if (!strcmp(cfg->overlays[i].name, name))
            return &cfg->overlays[i];
    return &def;
}

/* Lexical join. A leading "../" pops a component of base_dir, which is
 * only safe because callers pass a canonical (realpath'd) base_dir with no
 * symlinks; "." components are dropped. Other ".." are kept verbatim. */
char *fh_path_resolve(const char *base_dir, const char *path)
{
    if (!path)
        return NULL;
    if (path[0] == '/' || !base_dir)
        return strdup(path);
    size_t blen = strlen(base_dir);
    while (blen > 1 && base_dir[blen - 1] == '/')
        blen--;
    for (;;) {
        if (path[0] == '.' && path[1] == '/') {
            path += 2;
        } else if (path[0] == '.' && path[1] == '\0') {
            path += 1;
        } else if (path[0] == '.' && path[1] == '.' && (path[2] == '/' || path[2] == '\0')) {
            path += path[2] ? 3 : 2;
            while (blen > 0 && base_dir[blen - 1] != '/')
                blen--;
            while (blen > 1 && base_dir[blen - 1] == '/')
                blen--;
            if (blen == 0)
                blen = 1; /* "/.." is "/" */
        } else if (path[0] == '/') {
            path++; /* collapse "a//b" left behind by the steps above */
        } else {
            break;
        }
    }
    char *out = NULL;
    bool root = blen == 1 && base_dir[0] == '/';
    if (!*path) {
        if (asprintf(&out, "%.*s", (int)blen, base_dir) < 0)
            return NULL;
    } else if (asprintf(&out, "%.*s%s%s", root ? 0 : (int)blen, base_dir, "/", path) < 0) {
        return NULL;
    }
    return out;
}

/* ---- value checks ------------------------------------------------------------ */

static bool valid_port(const char *p)
{
    if (!*p || strlen(p) > 5)
        return false;
    for (const char *c = p; *c; c++)
        if (*c < '0' || *c > '9')
            return false;
    long v = strtol(p, NULL, 10);
    return v >= 0 && v <= 65535; /* 0: the kernel picks a free port (tests) */
}

static bool valid_host(const char *h, size_t n)
{
    if (!n || n > 253)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = h[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '-' || c == '_'))
            return false;
    }
    return true;
}

/* "host:port" or "[v6]:port". NULL when valid, else why not. */
static const char *hostport_problem(const char *s)
{
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end == s + 1)
            return "an IPv6 address must be written [ADDRESS]:PORT, e.g. [::1]:8080";
        for (const char *c = s + 1; c < end; c++)
            if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f') ||
                  (*c >= 'A' && *c <= 'F') || *c == ':' || *c == '.'))
                return "an IPv6 address must be written [ADDRESS]:PORT, e.g. [::1]:8080";
        if (end[1] != ':')
            return "must be HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080 (port missing)";
        if (!valid_port(end + 2))
            return "the port must be a number from 0 to 65535 (0 picks a free port)";
        return NULL;
    }
    const char *colon = strrchr(s, ':');
    if (!colon)
        return "must be HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080 (port missing)";
    if (memchr(s, ':', (size_t)(colon - s)))
        return "an IPv6 address must be written [ADDRESS]:PORT, e.g. [::1]:8080";
    if (!valid_host(s, (size_t)(colon - s)))
        return "must be HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080 (bad host)";
    if (!valid_port(colon + 1))
        return "the port must be a number from 0 to 65535 (0 picks a free port)";
    return NULL;
}

static bool valid_env_var(const char *s)
{
    if (!*s)
        return true;
    if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || *s == '_'))
        return false;
    for (; *s; s++)
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
              *s == '_'))
            return false;
    return true;
}

static bool valid_environment_name(const char *s)
{
    size_t n = 0;
    for (; *s; s++, n++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              *s == '_' || *s == '-'))
            return false;
    return n >= 1 && n <= 64;
}

/* ---- sections ------------------------------------------------------------------ */

/* Parsing state for one load. */
typedef struct loader {
    fh_yaml y;
    fh_config *cfg;
    bool admin_tcp;
} loader;

static yaml_node_t *section(loader *L, yaml_node_t *root, const char *key, const char *const *known)
{
    yaml_node_t *n = fh_yaml_get(&L->y, root, key);
    if (!n)
        return NULL;
    if (!fh_yaml_check_map(&L->y, n, key, known, true) || n->type != YAML_MAPPING_NODE)
        return NULL;
    return n;
}

static void read_listen(loader *L, yaml_node_t *map, const char *path, const char *key, char **out)
{
    if (!fh_yaml_get_string(&L->y, map, path, key, false, out))
        return;
    yaml_node_t *n = fh_yaml_get(&L->y, map, key);
    const char *why = n ? hostport_problem(*out) : NULL;
    if (why) {
        char kp[256];
        snprintf(kp, sizeof(kp), "%s%s%s", path ? path : "", path ? "." : "", key);
        fh_yaml_error(&L->y, n, kp, "%s; got \"%s\"", why, *out);
    }
}

static void read_admin(loader *L, yaml_node_t *root)
{
    fh_yaml *y = &L->y;
    fh_config *c = L->cfg;
    yaml_node_t *m = section(L, root, "admin", admin_keys);
    if (fh_yaml_get_string(y, m, "admin", "listen", false, &c->admin.listen)) {
        yaml_node_t *n = fh_yaml_get(y, m, "listen");
        if (!strncmp(c->admin.listen, "unix:", 5)) {
            if (!c->admin.listen[5])
                fh_yaml_error(
                    y, n, "admin.listen",
                    "\"unix:\" needs a socket path, e.g. unix:/run/fusion-host/admin.sock");
        } else if (n) {
            const char *why = hostport_problem(c->admin.listen);
            if (why)
                fh_yaml_error(y, n, "admin.listen",
                              "must be unix:PATH or HOST:PORT: %s; got \"%s\"", why,
                              c->admin.listen);
            else
                L->admin_tcp = true;
        }
    }
    fh_yaml_get_string(y, m, "admin", "token_file", true, &c->admin.token_file);
    if (L->admin_tcp && !c->admin.token_file[0]) {
        yaml_node_t *n = fh_yaml_get(y, m, "token_file");
        fh_yaml_error(y, n ? n : fh_yaml_get(y, m, "listen"), "admin.token_file",
                      "required when admin.listen is TCP (%s): name a file holding the "
                      "bearer token, or use admin.listen: unix:PATH",
                      c->admin.listen);
    }
}

static bool valid_rule_param(const char *s)
{
    /* name, or from>to: [a-z0-9_] words */
    size_t n = strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_");
    if (n == 0)
        return false;
    if (!s[n])
        return true;
    return s[n] == '>' && s[n + 1] &&
           strspn(s + n + 1, "abcdefghijklmnopqrstuvwxyz0123456789_") == strlen(s + n + 1);
}

/* OpenAI's reasoning models take no sampling parameters, and
 * max_completion_tokens instead of max_tokens. */
static const char *const default_rule_params[] = {
    "temperature",       "top_p",      "presence_penalty",
    "frequency_penalty", "logit_bias", "max_tokens>max_completion_tokens"};
static const char *const default_rule_patterns[] = {"o1*", "o3*", "o4*", "gpt-5*"};

static void add_rule(loader *L, const char *pattern, char **params, size_t count)
{
    fh_config *c = L->cfg;
    fh_model_rule *g =
        realloc(c->upstream.model_rules, (c->upstream.model_rule_count + 1) * sizeof(*g));
    if (g)
        c->upstream.model_rules = g;
    char *p = g ? strdup(pattern) : NULL;
    if (!p) {
        fh_strv_free(params, count);
        fh_yaml_error(&L->y, NULL, NULL, "out of memory");
        return;
    }
    g[c->upstream.model_rule_count++] = (fh_model_rule){p, params, count};
}

static void read_model_rules(loader *L, yaml_node_t *up)
{
    fh_yaml *y = &L->y;
    yaml_node_t *m = up ? fh_yaml_get(y, up, "model_rules") : NULL;
    if (!m) {
        size_t n = sizeof(default_rule_params) / sizeof(default_rule_params[0]);
        for (size_t i = 0; i < sizeof(default_rule_patterns) / sizeof(*default_rule_patterns);
             i++) {
            char **v = calloc(n, sizeof(*v));
            for (size_t k = 0; v && k < n; k++)
                v[k] = strdup(default_rule_params[k]);
            if (v)
                add_rule(L, default_rule_patterns[i], v, n);
        }
        return;
    }
    if (!fh_yaml_check_map(y, m, "upstream.model_rules", NULL, true))
        return;
    for (size_t i = 0; i < fh_yaml_map_size(m); i++) {
        yaml_node_t *k, *v;
        const char *pattern = fh_yaml_map_key(y, m, i, &k, &v);
        if (!pattern || !*pattern)
            continue;
        char **params = NULL;
        size_t count = 0;
        if (fh_yaml_get_string_list(y, m, "upstream.model_rules", pattern, valid_rule_param,
                                    "a parameter name, or from>to to rename one", &params, &count))
            add_rule(L, pattern, params, count);
        else
            fh_strv_free(params, count);
    }
}

static void read_upstream(loader *L, yaml_node_t *root)
{
    fh_yaml *y = &L->y;
    fh_config *c = L->cfg;
    yaml_node_t *m = section(L, root, "upstream", upstream_keys);
    if (fh_yaml_get_string(y, m, "upstream", "base_url", false, &c->upstream.base_url)) {
        const char *u = c->upstream.base_url;
        size_t skip = !strncmp(u, "http://", 7) ? 7 : !strncmp(u, "https://", 8) ? 8 : 0;
        bool space = strpbrk(u, " \t\r\n") != NULL;
        if (!skip || !u[skip] || u[skip] == '/' || space)
            fh_yaml_error(y, fh_yaml_get(y, m, "base_url"), "upstream.base_url",
                          "must be an http:// or https:// URL with a host, e.g. "
                          "http://127.0.0.1:8000/v1; got \"%s\"",
                          u);
    }
    if (fh_yaml_get_string(y, m, "upstream", "api_key_env", true, &c->upstream.api_key_env) &&
        !valid_env_var(c->upstream.api_key_env))
        fh_yaml_error(y, fh_yaml_get(y, m, "api_key_env"), "upstream.api_key_env",
                      "must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*) or \"\"; "
                      "got \"%s\"",
                      c->upstream.api_key_env);
    fh_yaml_get_int(y, m, "upstream", "timeout_ms", 1, 3600000, &c->upstream.timeout_ms);
    fh_yaml_get_int(y, m, "upstream", "idle_timeout_ms", 1, 3600000, &c->upstream.idle_timeout_ms);
    fh_yaml_get_int(y, m, "upstream", "connect_timeout_ms", 1, 600000,
                    &c->upstream.connect_timeout_ms);
    fh_yaml_get_bool(y, m, "upstream", "forward_client_key", &c->upstream.forward_client_key);
    read_model_rules(L, m);
}

static void read_overlay(loader *L, const char *name, yaml_node_t *node, fh_overlay_cfg *o)
{
    fh_yaml *y = &L->y;
    fh_keypath kp;
    fh_keypath_init(&kp);
    fh_keypath_push(&kp, "overlays");
    fh_keypath_push(&kp, name);
    if (!fh_yaml_check_map(y, node, kp.buf, overlay_keys, true))
        return;

    size_t mark = fh_keypath_push(&kp, "breaker");
    yaml_node_t *b = fh_yaml_get(y, node, "breaker");
    if (b && fh_yaml_check_map(y, b, kp.buf, breaker_keys, true)) {
        fh_yaml_get_int(y, b, kp.buf, "failure_threshold", 1, 1000, &o->breaker.failure_threshold);
        fh_yaml_get_int(y, b, kp.buf, "recovery_timeout_s", 1, 86400,
                        &o->breaker.recovery_timeout_s);
        o->breaker_set.failure_threshold = fh_yaml_get(y, b, "failure_threshold") != NULL;
        o->breaker_set.recovery_timeout_s = fh_yaml_get(y, b, "recovery_timeout_s") != NULL;
        fh_yaml_get_int(y, b, kp.buf, "half_open_max_calls", 1, 1000,
                        &o->breaker.half_open_max_calls);
    }
    fh_keypath_pop(&kp, mark);

    mark = fh_keypath_push(&kp, "budget");
    yaml_node_t *g = fh_yaml_get(y, node, "budget");
    if (g && fh_yaml_check_map(y, g, kp.buf, budget_keys, true)) {
        fh_budget_cfg *bu = &o->budget;
        fh_yaml_get_int(y, g, kp.buf, "hook_latency_ms", 1, 60000, &bu->hook_latency_ms);
        bool w = fh_yaml_get_double(y, g, kp.buf, "token_delta_warn_pct", 0, 100000,
                                    &bu->token_delta_warn_pct);
        bool x = fh_yaml_get_double(y, g, kp.buf, "token_delta_max_pct", 0, 100000,
                                    &bu->token_delta_max_pct);
        fh_yaml_get_int(y, g, kp.buf, "token_window", 1, 1000, &bu->token_window);
        fh_yaml_get_int(y, g, kp.buf, "consecutive_breaches", 1, 1000, &bu->consecutive_breaches);
        fh_yaml_get_long(y, g, kp.buf, "tokens_per_minute", 0, LONG_MAX, &bu->tokens_per_minute);
        /* A warn level above the trip level would never warn first. */
        if (w && x && bu->token_delta_warn_pct > bu->token_delta_max_pct) {
            yaml_node_t *n = fh_yaml_get(y, g, "token_delta_warn_pct");
            size_t m2 = fh_keypath_push(&kp, "token_delta_warn_pct");
            fh_yaml_error(y, n ? n : fh_yaml_get(y, g, "token_delta_max_pct"), kp.buf,
                          "must not exceed token_delta_max_pct (%g > %g)", bu->token_delta_warn_pct,
                          bu->token_delta_max_pct);
            fh_keypath_pop(&kp, m2);
        }
    }
    fh_keypath_pop(&kp, mark);

    fh_yaml_get_double(y, node, kp.buf, "quality_threshold", 0, 1, &o->quality_threshold);
    fh_yaml_get_double(y, node, kp.buf, "rule_pass_mark", 0, 1, &o->rule_pass_mark);
    o->quality_set = fh_yaml_get(y, node, "quality_threshold") != NULL;

    mark = fh_keypath_push(&kp, "config");
    char *json = fh_yaml_to_json(y, fh_yaml_get(y, node, "config"), kp.buf, true);
    fh_keypath_pop(&kp, mark);
    o->config_json = json; /* NULL only with an error reported */
}

static void read_overlays(loader *L, yaml_node_t *root)
{
    fh_yaml *y = &L->y;
    fh_config *c = L->cfg;
    yaml_node_t *m = fh_yaml_get(y, root, "overlays");
    if (!m || !fh_yaml_check_map(y, m, "overlays", NULL, true))
        return;
    size_t n = fh_yaml_map_size(m);
    if (!n)
        return;
    c->overlays = calloc(n, sizeof(*c->overlays));
    if (!c->overlays) {
        fh_yaml_error(y, m, "overlays", "out of memory");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *k, *v;
        const char *name = fh_yaml_map_key(y, m, i, &k, &v);
        if (!name || fh_yaml_is_null(k))
            continue; /* reported by fh_yaml_check_map */
        bool dup = false;
        for (size_t j = 0; j < c->overlay_count && !dup; j++)
            dup = !strcmp(c->overlays[j].name, name);
        if (dup)
            continue; /* reported by fh_yaml_check_map */
        if (!fh_valid_overlay_name(name)) {
            char kp[256];
            snprintf(kp, sizeof(kp), "overlays.%.200s", name);
            fh_yaml_error(y, k, kp,
                          "not a valid overlay name: lower-case letter first, then [a-z0-9_], "
                          "at most 64 characters");
        }
        fh_overlay_cfg *o = &c->overlays[c->overlay_count++];
        fh_overlay_cfg_defaults(o);
        o->name = strdup(name);
        if (!o->name)
            fh_yaml_error(y, k, "overlays", "out of memory");
        read_overlay(L, name, v, o);
    }
}

/* Resolves a relative path field against the config's folder in place. */
static void resolve(loader *L, char **field)
{
    if (!*field || !**field)
        return;
    char *abs = fh_path_resolve(L->cfg->dir, *field);
    if (!abs) {
        fh_yaml_error(&L->y, NULL, NULL, "out of memory");
        return;
    }
    free(*field);
    *field = abs;
}

static bool valid_origin(const char *s)
{
    if (strcmp(s, "*") == 0)
        return true;
    bool scheme = strncmp(s, "http://", 7) == 0 || strncmp(s, "https://", 8) == 0;
    return scheme && !strpbrk(s, " \t\r\n,") && s[strlen(s) - 1] != '/';
}

static bool loopback_host(const char *listen)
{
    const char *colon = strrchr(listen, ':');
    size_t n = colon ? (size_t)(colon - listen) : strlen(listen);
    char host[64];
    if (n >= sizeof(host))
        return false;
    memcpy(host, listen, n);
    host[n] = '\0';
    if (strcmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0 || strcmp(host, "::1") == 0)
        return true;
    struct in_addr a4;
    return inet_pton(AF_INET, host, &a4) == 1 && (ntohl(a4.s_addr) >> 24) == 127;
}

/* The client keys, and the rule that a gateway others can reach is not an
 * open one (it would spend the operator's upstream key for anyone). */
static void read_auth(loader *L, yaml_node_t *au, yaml_node_t *root)
{
    fh_yaml *y = &L->y;
    fh_config *c = L->cfg;
    if (c->auth.keys_file && c->auth.keys_file[0]) {
        fh_diag d = {0};
        c->auth.keys = fh_keys_load(c->auth.keys_file, &d);
        for (size_t i = 0; i < d.count; i++)
            fh_yaml_error(y, fh_yaml_get(y, au, "keys_file"), "auth.keys_file", "%s", d.items[i]);
        fh_diag_clear(&d);
        return;
    }
    if (c->listen && !hostport_problem(c->listen) && !c->auth.allow_anonymous &&
        !loopback_host(c->listen))
        fh_yaml_error(y, fh_yaml_get(y, root, "listen"), "listen",
                      "%s is reachable beyond this host, and auth.keys_file is not set: anyone "
                      "who reaches it would spend the upstream key. Set auth.keys_file, or "
                      "auth.allow_anonymous: true to mean it",
                      c->listen);
}

static void resolve_paths(loader *L, yaml_node_t *root)
{
    fh_config *c = L->cfg;
    resolve(L, &c->plugins.dir);
    resolve(L, &c->state_dir);
    resolve(L, &c->feature_flags);
    resolve(L, &c->micro_overlays_dir);
    resolve(L, &c->admin.token_file);
    resolve(L, &c->auth.keys_file);
    if (c->admin.listen && !strncmp(c->admin.listen, "unix:", 5) && c->admin.listen[5]) {
        char *abs = fh_path_resolve(c->dir, c->admin.listen + 5);
        char *full = NULL;
        if (!abs || asprintf(&full, "unix:%s", abs) < 0) {
            free(abs);
            fh_yaml_error(&L->y, NULL, NULL, "out of memory");
            return;
        }
        /* sockaddr_un has a fixed-size path; bind() would fail later with a
         * less helpful message. */
        struct sockaddr_un sun;
        if (strlen(abs) >= sizeof(sun.sun_path)) {
            yaml_node_t *a = fh_yaml_get(&L->y, root, "admin");
            fh_yaml_error(&L->y, fh_yaml_get(&L->y, a, "listen"), "admin.listen",
                          "socket path %s is %zu bytes long; at most %zu fit in a unix socket "
                          "address",
                          abs, strlen(abs), sizeof(sun.sun_path) - 1);
        }
        free(abs);
        free(c->admin.listen);
        c->admin.listen = full;
    }
}

static int set_defaults(fh_config *c)
{
    c->listen = strdup(DEF_LISTEN);
    c->admin.listen = strdup(DEF_ADMIN_LISTEN);
    c->admin.token_file = strdup("");
    c->auth.keys_file = strdup("");
    c->upstream.base_url = strdup(DEF_BASE_URL);
    c->upstream.api_key_env = strdup(DEF_API_KEY_ENV);
    c->upstream.timeout_ms = 60000;
    c->upstream.idle_timeout_ms = 30000;
    c->upstream.connect_timeout_ms = 2000;
    c->plugins.dir = strdup(DEF_PLUGINS_DIR);
    c->plugins.watch = true;
    c->state_dir = strdup(DEF_STATE_DIR);
    c->feature_flags = strdup(DEF_FEATURE_FLAGS);
    c->micro_overlays_dir = strdup(DEF_MICRO_DIR);
    c->environment = strdup(DEF_ENVIRONMENT);
    c->limits.max_body_bytes = 1048576;
    c->limits.max_connections = 10000;
    c->limits.max_header_bytes = 8192;
    c->limits.max_connections_per_ip = 0; /* a tenth of max_connections, below */
    c->limits.header_timeout_ms = 10000;
    c->limits.body_min_bytes_per_s = 1024;
    c->limits.idle_timeout_ms = 30000;
    c->metrics.max_series_per_metric = 1000;
    c->drain_timeout_ms = 10000;
    c->workers = 0;
    c->hooks.deadline_ms = 2000;
    if (!c->listen || !c->admin.listen || !c->admin.token_file || !c->upstream.base_url ||
        !c->upstream.api_key_env || !c->plugins.dir || !c->state_dir || !c->feature_flags ||
        !c->micro_overlays_dir || !c->environment)
        return -1;
    return 0;
}

/* Absolute path and folder of the file, with the folder canonicalised so
 * relative paths inside resolve the same however the daemon was started. */
static int locate(fh_config *c, const char *path, fh_diag *diag)
{
    const char *slash = strrchr(path, '/');
    char *folder = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    const char *base = slash ? slash + 1 : path;
    if (!folder) {
        fh_diag_at(diag, path, 0, 0, NULL, "out of memory");
        return -1;
    }
    char *real = realpath(folder, NULL);
    int err = errno;
    free(folder);
    if (!real) {
        fh_diag_at(diag, path, 0, 0, NULL, "cannot open: %s", strerror(err));
        return -1;
    }
    if (!*base) {
        free(real);
        fh_diag_at(diag, path, 0, 0, NULL, "is a folder; name the config file");
        return -1;
    }
    c->dir = real;
    if (asprintf(&c->path, "%s%s%s", real, strcmp(real, "/") ? "/" : "", base) < 0) {
        c->path = NULL;
        fh_diag_at(diag, path, 0, 0, NULL, "out of memory");
        return -1;
    }
    return 0;
}

fh_config *fh_config_load(const char *path, fh_diag *diag)
{
    if (!path || !*path) {
        fh_diag_add(diag, "no config file given");
        return NULL;
    }
    fh_config *c = calloc(1, sizeof(*c));
    if (!c) {
        fh_diag_at(diag, path, 0, 0, NULL, "out of memory");
        return NULL;
    }
    if (set_defaults(c) != 0) {
        fh_diag_at(diag, path, 0, 0, NULL, "out of memory");
        fh_config_free(c);
        return NULL;
    }
    if (locate(c, path, diag) != 0) {
        fh_config_free(c);
        return NULL;
    }
    loader L = {.cfg = c};
    /* Messages name the file as the operator wrote it. */
    if (fh_yaml_open(&L.y, c->path, path, diag) != 0) {
        fh_config_free(c);
        return NULL;
    }
    fh_yaml *y = &L.y;
    yaml_node_t *root = fh_yaml_root(y);
    fh_yaml_check_map(y, root, NULL, top_keys, false);

    read_listen(&L, root, NULL, "listen", &c->listen);
    read_admin(&L, root);
    read_upstream(&L, root);

    yaml_node_t *pl = section(&L, root, "plugins", plugins_keys);
    fh_yaml_get_string(y, pl, "plugins", "dir", false, &c->plugins.dir);
    fh_yaml_get_bool(y, pl, "plugins", "watch", &c->plugins.watch);

    fh_yaml_get_string(y, root, NULL, "state_dir", false, &c->state_dir);
    fh_yaml_get_string(y, root, NULL, "feature_flags", false, &c->feature_flags);
    fh_yaml_get_string(y, root, NULL, "micro_overlays_dir", false, &c->micro_overlays_dir);
    if (fh_yaml_get_string(y, root, NULL, "environment", false, &c->environment) &&
        !valid_environment_name(c->environment))
        fh_yaml_error(y, fh_yaml_get(y, root, "environment"), "environment",
                      "must be a name of [A-Za-z0-9_-], at most 64 characters; got \"%s\"",
                      c->environment);

    read_overlays(&L, root);

    yaml_node_t *li = section(&L, root, "limits", limits_keys);
    fh_yaml_get_long(y, li, "limits", "max_body_bytes", 1024, 1073741824L,
                     &c->limits.max_body_bytes);
    fh_yaml_get_long(y, li, "limits", "max_connections", 1, 1000000, &c->limits.max_connections);
    fh_yaml_get_long(y, li, "limits", "max_header_bytes", 4096, 65536, &c->limits.max_header_bytes);
    fh_yaml_get_long(y, li, "limits", "max_connections_per_ip", 0, 1000000,
                     &c->limits.max_connections_per_ip);
    /* 0 (the default): one address may hold a tenth of the connections. */
    if (!c->limits.max_connections_per_ip)
        c->limits.max_connections_per_ip =
            c->limits.max_connections >= 10 ? c->limits.max_connections / 10 : 1;
    fh_yaml_get_long(y, li, "limits", "header_timeout_ms", 100, 600000,
                     &c->limits.header_timeout_ms);
    fh_yaml_get_long(y, li, "limits", "body_min_bytes_per_s", 0, 1073741824L,
                     &c->limits.body_min_bytes_per_s);
    fh_yaml_get_long(y, li, "limits", "idle_timeout_ms", 100, 3600000, &c->limits.idle_timeout_ms);
    yaml_node_t *me = section(&L, root, "metrics", metrics_keys);
    fh_yaml_get_long(y, me, "metrics", "max_series_per_metric", 1, 1000000,
                     &c->metrics.max_series_per_metric);
    fh_yaml_get_int(y, root, NULL, "drain_timeout_ms", 0, 3600000, &c->drain_timeout_ms);
    fh_yaml_get_int(y, root, NULL, "workers", 0, FH_WORKERS_MAX, &c->workers);
    yaml_node_t *hk = section(&L, root, "hooks", hooks_keys);
    fh_yaml_get_int(y, hk, "hooks", "deadline_ms", 10, 60000, &c->hooks.deadline_ms);

    yaml_node_t *co = section(&L, root, "cors", cors_keys);
    fh_yaml_get_string_list(y, co, "cors", "allow_origins", valid_origin,
                            "an origin like https://app.example.com, or *", &c->cors.allow_origins,
                            &c->cors.origin_count);
    yaml_node_t *au = section(&L, root, "auth", auth_keys);
    fh_yaml_get_string(y, au, "auth", "keys_file", true, &c->auth.keys_file);
    fh_yaml_get_bool(y, au, "auth", "allow_anonymous", &c->auth.allow_anonymous);

    resolve_paths(&L, root);
    read_auth(&L, au, root);

    size_t errors = y->errors;
    fh_yaml_close(y);
    if (errors) {
        fh_config_free(c);
        return NULL;
    }
    return c;
}

const fh_model_rule *fh_config_model_rule(const fh_config *cfg, const char *model)
{
    for (size_t i = 0; model && i < cfg->upstream.model_rule_count; i++)
        if (fnmatch(cfg->upstream.model_rules[i].pattern, model, 0) == 0)
            return &cfg->upstream.model_rules[i];
    return NULL;
}

const char *fh_config_restart_key(const fh_config *running, const fh_config *next)
{
    if (strcmp(running->listen, next->listen) != 0)
        return "listen";
    if (fh_config_workers(running) != fh_config_workers(next))
        return "workers";
    if (strcmp(running->state_dir, next->state_dir) != 0)
        return "state_dir";
    if (strcmp(running->admin.listen, next->admin.listen) != 0)
        return "admin.listen";
    if (strcmp(running->admin.token_file, next->admin.token_file) != 0)
        return "admin.token_file";
    if (running->hooks.deadline_ms != next->hooks.deadline_ms)
        return "hooks.deadline_ms";
    if (running->metrics.max_series_per_metric != next->metrics.max_series_per_metric)
        return "metrics.max_series_per_metric";
    return NULL;
}

int fh_config_workers(const fh_config *cfg)
{
    if (cfg && cfg->workers > 0)
        return cfg->workers;
    cpu_set_t set;
    int n = 1;
    if (sched_getaffinity(0, sizeof(set), &set) == 0)
        n = CPU_COUNT(&set);
    return n < 1 ? 1 : (n > FH_WORKERS_MAX ? FH_WORKERS_MAX : n);
}

void fh_config_free(fh_config *cfg)
{
    if (!cfg)
        return;
    free(cfg->path);
    free(cfg->dir);
    free(cfg->listen);
    free(cfg->admin.listen);
    free(cfg->admin.token_file);
    free(cfg->auth.keys_file);
    fh_strv_free(cfg->cors.allow_origins, cfg->cors.origin_count);
    for (size_t i = 0; i < cfg->upstream.model_rule_count; i++) {
        free(cfg->upstream.model_rules[i].pattern);
        fh_strv_free(cfg->upstream.model_rules[i].params, cfg->upstream.model_rules[i].count);
    }
    free(cfg->upstream.model_rules);
    fh_keys_free(cfg->auth.keys);
    free(cfg->upstream.base_url);
    free(cfg->upstream.api_key_env);
    free(cfg->plugins.dir);
    free(cfg->state_dir);
    free(cfg->feature_flags);
    free(cfg->micro_overlays_dir);
    free(cfg->environment);
    for (size_t i = 0; i < cfg->overlay_count; i++) {
        free(cfg->overlays[i].name);
        free(cfg->overlays[i].config_json);
    }
    free(cfg->overlays);
    free(cfg);
}
