/*
 * cli.c - the fusion-host command line and its offline commands.
 *
 *   check -c FILE            validate config, flags, directive texts, plugins
 *   flags validate -c FILE   the flags part alone (or -f FLAGS_FILE)
 *   plugin-test PATH         an overlay author's bench: load, route, apply,
 *                            evaluate a scenario, check the hooks' results
 *                            against the contract, optionally N more times
 *                            from several threads (--stress); the plugin
 *                            runs in a child process (stress.h)
 *
 * The admin commands (list, status, enable, ..., flags show) talk to a
 * running daemon and live in ctl.c; this file only hands them over, with
 * the options given before the command word.
 *
 * Runs on the main thread only. Exit codes: 0 done, 1 refused or failed,
 * 2 usage (3 for the admin commands: the daemon cannot be reached).
 * Problems are printed one per line on stdout, prefixed by nothing (they
 * already name file, line and key); warnings start with "warning: ".
 */
#include "cli.h"

#include "admin.h"
#include "config.h"
#include "ctl.h"
#include "daemon.h"
#include "directives.h"
#include "flags.h"
#include "hostapi.h"
#include "log.h"
#include "opstools.h"
#include "plugindir.h"
#include "reason.h"
#include "registry.h"
#include "request.h"
#include "scenarios.h"
#include "util.h"
#include "stress.h"
#include "yamlutil.h"

#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define EXIT_USAGE 2

static const char usage_text[] =
    "usage: fusion-host [--help] [--version] [--log-level LEVEL] [ADMIN OPTIONS]\n"
    "                   [-c FILE] COMMAND [ARGS]\n"
    "\n"
    "Daemon:\n"
    "  serve [-c FILE] [--ready-file F]\n"
    "                               run the gateway in the foreground (systemd\n"
    "                               Type=notify; SIGHUP reloads, SIGTERM drains)\n"
    "\n"
    "Offline commands:\n"
    "  check [-c FILE] [--user NAME]\n"
    "                               validate the config, the flags file, the\n"
    "                               micro-overlay texts and every plugin in the\n"
    "                               plugin folder, without serving (exit 0 or 1);\n"
    "                               --user: judge plugin file owners as the\n"
    "                               daemon running as NAME would\n"
    "  flags validate [-c FILE | -f FLAGS_FILE]\n"
    "                               validate the feature flags file alone\n"
    "                               (flags show, below, asks a running daemon)\n"
    "  plugin-test PATH [--scenario FILE] [--answer FILE] [--config FILE]\n"
    "              [-c FILE] [--stress N [--threads T]] [--json]\n"
    "                               load an overlay offline, route a scenario,\n"
    "                               print the rewritten request and the\n"
    "                               evaluation of a sample answer; exit 1 on a\n"
    "                               contract violation, a crash or a hook past\n"
    "                               hooks.deadline_ms. --config: the overlay's\n"
    "                               own config (JSON or YAML) for init();\n"
    "                               --stress: N more runs on T threads (4):\n"
    "                               hook time percentiles, every result\n"
    "                               compared with the first run's\n"
    "\n"
    "Operations toolkit (docs/operations.md):\n"
    "  golden validate [--critical-only] [--scenario ID]... [--all]\n"
    "  golden update --scenario ID | --all\n"
    "                               canonical scenarios (tests/golden/) through\n"
    "                               the real daemon against the stub model (or\n"
    "                               --upstream URL): exit 1 and a diff on a\n"
    "                               regression, 2 for an unknown scenario\n"
    "  bench --iterations N --output FILE [--baseline-mode] [--upstream URL]\n"
    "                               every canonical scenario baseline and\n"
    "                               overlaid, N times: a JSON report\n"
    "  budget --report-file FILE [--output-format markdown|json]\n"
    "                               the report against the runbook thresholds;\n"
    "                               exit 1 on a critical breach\n"
    "  compare --baseline A --current B [--output-format markdown|json]\n"
    "                               regression table of two reports; exit 1\n"
    "                               past the thresholds\n"
    "\n"
    "Admin commands (talk to a running daemon):\n"
    "  list                         overlays with state, in-flight requests,\n"
    "                               breaker and gate; the files the host refused\n"
    "  status                       version, uptime, addresses, overlay counts,\n"
    "                               health\n"
    "  enable NAME | disable NAME   route requests to the overlay again / stop\n"
    "  unload NAME                  take the overlay out (in-flight requests\n"
    "                               finish first)\n"
    "  load PATH                    load a plugin file, or swap in a new version;\n"
    "                               PATH is absolute, relative to this folder if\n"
    "                               it exists here, else relative to plugins.dir\n"
    "  reload                       re-read config, flags and plugins (as SIGHUP)\n"
    "  reset NAME                   close the overlay's breaker, clear its gate\n"
    "  flags show                   the feature flags the daemon runs with\n"
    "  health                       ok, or degraded and why (exit 1 unless ok)\n"
    "Admin options (before or after the command):\n"
    "  --admin ADDR                 unix:/PATH, /PATH or HOST:PORT; else\n"
    "                               $" FH_CTL_ADDR_ENV ", else admin.listen of -c FILE,\n"
    "                               else " FH_CTL_DEFAULT_ADDR "\n"
    "  --token-file F               the bearer token (first line of F); else\n"
    "                               admin.token_file of -c FILE\n"
    "  --json                       print the daemon's JSON answer\n"
    "Admin exit codes: 0 done, 1 refused or failed, 2 usage, 3 the admin API\n"
    "cannot be reached.\n"
    "\n"
    "FILE defaults to " FH_DEFAULT_CONFIG_PATH " (the admin commands read\n"
    "it only when given).\n"
    "Environment: RESON_FEATURES overrides the flags file (unset: the file\n"
    "decides; empty: baseline only; a,b: only those features).\n";

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "fusion-host: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nTry 'fusion-host --help'.\n");
    return EXIT_USAGE;
}

/* ---- helpers shared by the commands ---------------------------------- */

static void print_diag(const fh_diag *d, const char *prefix)
{
    for (size_t i = 0; i < d->count; i++)
        printf("%s%s\n", prefix, d->items[i]);
}

static int rm_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st, (void)type, (void)ftw;
    return remove(path);
}

/* A private, throw-away cache folder for plugin copies. */
static char *make_cache_dir(void)
{
    const char *tmp = getenv("TMPDIR");
    char *dir = NULL;
    if (asprintf(&dir, "%s/fusion-host-XXXXXX", tmp && *tmp ? tmp : "/tmp") < 0)
        return NULL;
    if (!mkdtemp(dir)) {
        fprintf(stderr, "fusion-host: cannot create a temporary folder in %s: %s\n",
                tmp && *tmp ? tmp : "/tmp", strerror(errno));
        free(dir);
        return NULL;
    }
    return dir;
}

static void remove_cache_dir(char *dir)
{
    if (dir)
        nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    free(dir);
}

/* Parses "-c FILE" / "--config FILE" / "--config=FILE" at argv[*i]. */
static int take_config_arg(int argc, char **argv, int *i, const char **config)
{
    const char *a = argv[*i];
    if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0) {
        if (*i + 1 >= argc)
            return -1;
        *config = argv[++*i];
        return 1;
    }
    if (strncmp(a, "--config=", 9) == 0) {
        *config = a + 9;
        return 1;
    }
    return 0;
}

/* The flags checks shared by `check` and `flags validate`: the flags file
 * itself, the environment the config selects, RESON_FEATURES. */
static size_t check_flags(const char *flags_path, const char *environment, fh_flags **flags_out,
                          fh_diag *problems)
{
    size_t before = problems->count;
    fh_flags *flags = fh_flags_load(flags_path, problems);
    if (flags && environment && !fh_flags_environment(flags, environment))
        fh_diag_add(problems,
                    "%s: environments.%s is not defined; the config selects environment '%s': "
                    "add it to the flags file or change the config's environment",
                    flags_path, environment, environment);
    if (flags) {
        fh_env_override ovr;
        if (fh_env_override_parse(getenv("RESON_FEATURES"), &ovr) == 0) {
            fh_env_override_check(&ovr, flags, problems);
            fh_env_override_free(&ovr);
        }
    }
    if (flags_out)
        *flags_out = flags;
    else
        fh_flags_free(flags);
    return problems->count - before;
}

/* ---- check ------------------------------------------------------------ */

/* --user NAME: the uid whose plugin files the daemon would accept (with
 * root's), so `check` run as root can judge a daemon that runs as NAME. */
static int take_user_arg(int argc, char **argv, int *i, uid_t *uid)
{
    const char *a = argv[*i], *name;
    if (strncmp(a, "--user=", 7) == 0)
        name = a + 7;
    else if (strcmp(a, "--user") == 0 && *i + 1 < argc)
        name = argv[++*i];
    else if (strcmp(a, "--user") == 0)
        return usage_error("check: %s needs the name of the user the daemon runs as", a);
    else
        return -1;
    struct passwd *pw = *name ? getpwnam(name) : NULL;
    if (!pw)
        return usage_error("check: --user: there is no user '%s' on this host; give the user "
                           "the daemon runs as (User= in its systemd unit)",
                           name);
    *uid = pw->pw_uid;
    return 0;
}

static int cmd_check(int argc, char **argv)
{
    const char *config_path = FH_DEFAULT_CONFIG_PATH;
    uid_t daemon_uid = geteuid();
    for (int i = 1; i < argc; i++) {
        int r = take_config_arg(argc, argv, &i, &config_path);
        if (r < 0)
            return usage_error("%s needs a file", argv[i]);
        if (r > 0)
            continue;
        r = take_user_arg(argc, argv, &i, &daemon_uid);
        if (r >= 0) {
            if (r > 0)
                return r;
            continue;
        }
        return usage_error("check: unexpected argument '%s'", argv[i]);
    }

    fh_diag problems = {0}, warnings = {0};
    fh_config *cfg = fh_config_load(config_path, &problems);
    if (!cfg) {
        print_diag(&problems, "");
        printf("fusion-host check: %s: %zu problem%s\n", config_path, problems.count,
               problems.count == 1 ? "" : "s");
        fh_diag_clear(&problems);
        return 1;
    }

    fh_flags *flags = NULL;
    check_flags(cfg->feature_flags, cfg->environment, &flags, &problems);

    /* A token file the daemon would refuse, refused here first. */
    if (strncmp(cfg->admin.listen, "unix:", 5) != 0 && cfg->admin.token_file[0]) {
        unsigned char digest[32];
        char why[600];
        if (fh_admin_read_token(cfg->admin.token_file, daemon_uid, digest, why, sizeof(why)) != 0)
            fh_diag_add(&problems, "%s: %s", cfg->path, why);
    }

    /* Every directive text a feature names must be readable. */
    for (size_t i = 0; flags && i < flags->feature_count; i++) {
        fh_directive_set set;
        fh_directives_load(cfg->micro_overlays_dir, &flags->features[i], &set, &problems);
        fh_directives_free(&set);
    }
    for (size_t i = 0; flags && i < cfg->overlay_count; i++) {
        if (!fh_flags_feature(flags, cfg->overlays[i].name))
            fh_diag_add(&warnings,
                        "%s: overlays.%s has settings but %s has no feature of that name; "
                        "the overlay would never be routed to",
                        cfg->path, cfg->overlays[i].name, cfg->feature_flags);
    }

    /* Load every plugin for real (copy, dlopen, ABI checks, init, fini). */
    size_t loaded = 0;
    fh_plugin_files files = {0};
    char *cache = make_cache_dir();
    if (!cache) {
        fh_diag_add(&problems, "cannot create a temporary folder to check the plugins in");
    } else if (fh_plugin_files_list(cfg->plugins.dir, &files) < 0) {
        fh_diag_add(&problems, "%s: plugins.dir %s cannot be read: %s; create it or fix the path",
                    cfg->path, cfg->plugins.dir, strerror(errno));
    } else {
        fh_inputs_provider inputs = {.cfg = cfg, .flags = flags};
        fh_registry_opts ro = {.loader = {.cache_dir = cache, .daemon_uid = daemon_uid},
                               .host_api = fh_host_api(),
                               .inputs_for = fh_inputs_for,
                               .inputs_ud = &inputs,
                               .hook_deadline_ms = cfg->hooks.deadline_ms};
        fh_registry *reg = fh_registry_new(&ro);
        if (!reg) {
            fh_diag_add(&problems, "out of memory");
        } else {
            char msg[1024];
            for (size_t i = 0; i < files.count; i++) {
                msg[0] = '\0';
                if (fh_registry_load(reg, files.paths[i], msg, sizeof(msg), NULL) == FH_LOAD_OK)
                    loaded++;
                else
                    fh_diag_add(&problems, "%s", msg[0] ? msg : files.paths[i]);
            }
            for (size_t i = 0; flags && i < flags->feature_count; i++) {
                fh_overlay_info info;
                const char *name = flags->features[i].name;
                if (fh_registry_get(reg, name, &info) != 0 || info.state == FH_STATE_FAILED)
                    fh_diag_add(&warnings,
                                "%s: feature %s has no loadable plugin %s.so in %s; its "
                                "requests are served by the baseline",
                                cfg->feature_flags, name, name, cfg->plugins.dir);
            }
            fh_registry_free(reg, 1000);
        }
        fh_inputs_provider_clear(&inputs);
    }
    fh_plugin_files_free(&files);
    remove_cache_dir(cache);

    print_diag(&problems, "");
    print_diag(&warnings, "warning: ");
    int rc = problems.count ? 1 : 0;
    if (rc)
        printf("fusion-host check: %s: %zu problem%s\n", cfg->path, problems.count,
               problems.count == 1 ? "" : "s");
    else
        printf("fusion-host check: %s: ok (%zu feature%s, %zu plugin%s loaded)\n", cfg->path,
               flags ? flags->feature_count : 0, flags && flags->feature_count == 1 ? "" : "s",
               loaded, loaded == 1 ? "" : "s");
    if (!rc)
        printf("fusion-host check: a reload (SIGHUP) applies every setting but %s, which a "
               "running daemon refuses to change without a restart\n",
               FH_CONFIG_RESTART_KEYS);
    fh_flags_free(flags);
    fh_config_free(cfg);
    fh_diag_clear(&problems);
    fh_diag_clear(&warnings);
    return rc;
}

/* ---- flags validate ----------------------------------------------------- */

static int cmd_flags(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "validate") != 0)
        return usage_error("flags: expected 'flags validate' (offline) or 'flags show' (asks "
                           "the daemon), got '%s'",
                           argc < 2 ? "" : argv[1]);
    const char *config_path = NULL, *flags_path = NULL;
    for (int i = 2; i < argc; i++) {
        int r = take_config_arg(argc, argv, &i, &config_path);
        if (r < 0)
            return usage_error("%s needs a file", argv[i]);
        if (r > 0)
            continue;
        if ((strcmp(argv[i], "-f") == 0 || strcmp(argv[i], "--file") == 0) && i + 1 < argc)
            flags_path = argv[++i];
        else
            return usage_error("flags validate: unexpected argument '%s'", argv[i]);
    }
    if (config_path && flags_path)
        return usage_error("flags validate: give -c or -f, not both%s", "");

    fh_diag problems = {0};
    fh_config *cfg = NULL;
    const char *environment = NULL;
    if (!flags_path) {
        cfg = fh_config_load(config_path ? config_path : FH_DEFAULT_CONFIG_PATH, &problems);
        if (cfg) {
            flags_path = cfg->feature_flags;
            environment = cfg->environment;
        }
    }
    size_t features = 0;
    if (flags_path) {
        fh_flags *flags = NULL;
        check_flags(flags_path, environment, &flags, &problems);
        features = flags ? flags->feature_count : 0;
        fh_flags_free(flags);
    }
    print_diag(&problems, "");
    int rc = problems.count ? 1 : 0;
    if (rc)
        printf("fusion-host flags validate: %zu problem%s\n", problems.count,
               problems.count == 1 ? "" : "s");
    else
        printf("fusion-host flags validate: %s: ok (%zu feature%s)\n", flags_path, features,
               features == 1 ? "" : "s");
    fh_config_free(cfg);
    fh_diag_clear(&problems);
    return rc;
}

/* ---- plugin-test -------------------------------------------------------- */

/* The bench runs every line of plugin code (load, hooks, fini) in a child
 * process (stress.h): the child prints the first run's report and sends
 * it, and the stress report, to this process as JSON; this process prints
 * the stress report, what killed the child if anything did, and the
 * verdict. A crash or a hung hook is a finding, never the bench's end. */

#define PT_DEFAULT_THREADS 4

typedef struct plugin_test_opts {
    const char *plugin;
    const char *scenario;
    const char *answer;
    const char *config;         /* -c: the daemon's config (settings, directive texts) */
    const char *overlay_config; /* --config: the overlay's own `config:` (JSON or YAML) */
    int json;
    long stress; /* runs; 0: no stress */
    int threads;
} plugin_test_opts;

/* The config plugin-test reads directive texts and settings from: -c, else
 * the in-tree development config when run from a checkout, else the
 * installed one. NULL when there is none (the plugin gets no texts). */
static const char *find_config(const char *given)
{
    static const char *const candidates[] = {"config/fusion-host.dev.yaml", FH_DEFAULT_CONFIG_PATH};
    if (given)
        return given;
    for (size_t i = 0; i < sizeof(candidates) / sizeof(candidates[0]); i++)
        if (access(candidates[i], R_OK) == 0)
            return candidates[i];
    return NULL;
}

/* --config FILE: the overlay's `config:` object, written as JSON or YAML,
 * as the JSON text init() gets. NULL after saying what is wrong. */
static char *load_overlay_config(const char *path)
{
    size_t len;
    char *text = fh_read_file(path, FH_YAML_MAX_FILE_BYTES, &len);
    if (!text) {
        fprintf(stderr, "fusion-host: --config %s: cannot read it: %s\n", path, strerror(errno));
        return NULL;
    }
    char *out = NULL;
    size_t lead = strspn(text, " \t\r\n");
    if (text[lead] == '{') { /* meant as JSON: its own errors say more */
        json_error_t jerr;
        json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
        if (!j)
            fprintf(stderr, "fusion-host: --config %s:%d:%d: %s\n", path, jerr.line, jerr.column,
                    jerr.text);
        else if (!(out = json_dumps(j, JSON_COMPACT)))
            fprintf(stderr, "fusion-host: out of memory\n");
        json_decref(j);
    } else {
        fh_diag diag = {0};
        fh_yaml y;
        if (fh_yaml_open_string(&y, text, len, path, &diag) == 0) {
            out = fh_yaml_to_json(&y, fh_yaml_root(&y), "config", true);
            fh_yaml_close(&y);
        }
        for (size_t i = 0; i < diag.count; i++)
            fprintf(stderr, "fusion-host: --config %s\n", diag.items[i]);
        if (!out && !diag.count)
            fprintf(stderr, "fusion-host: --config %s: not a JSON object or a YAML mapping\n",
                    path);
        fh_diag_clear(&diag);
    }
    free(text);
    return out;
}

/* What the child works with; built by the parent before the fork. */
typedef struct bench_ctx {
    const plugin_test_opts *o;
    const fh_config *cfg;
    const fh_flags *flags;
    const char *cache;
    const char *overlay_config; /* JSON text, or NULL: the daemon config's */
    fh_inputs_provider inputs;
} bench_ctx;

static int bench_inputs_for(void *ud, const char *name, fh_overlay_inputs *in)
{
    bench_ctx *b = ud;
    int rc = fh_inputs_for(&b->inputs, name, in);
    if (rc == 0 && b->overlay_config)
        in->config_json = b->overlay_config;
    return rc;
}

typedef struct bench_scenario {
    char *body; /* the request as a caller sends it (JSON, with its fusion object) */
    char *answer;
    char *label;
    fusion_request *req; /* parsed, for the routing decision */
} bench_scenario;

static void bench_scenario_clear(bench_scenario *s)
{
    free(s->body);
    free(s->answer);
    free(s->label);
    fh_request_free(s->req);
}

static double bench_match(fh_generation *gen, const fusion_request *req, fh_bench_shared *sh)
{
    fh_bench_enter(sh, 0, FH_HOOK_MATCH, 0);
    double m = fh_generation_match(gen, req);
    fh_bench_leave(sh, 0);
    return m;
}

/* The --scenario file: a chat body, or {"request": body, "answer": text}. */
static int scenario_from_file(const char *path, bench_scenario *sc)
{
    char err[256];
    size_t len;
    char *text = fh_read_file(path, 4 << 20, &len);
    if (!text) {
        fprintf(stderr, "fusion-host: cannot read scenario %s: %s\n", path, strerror(errno));
        return -1;
    }
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    free(text);
    if (!json_is_object(root)) {
        fprintf(stderr, "fusion-host: %s:%d:%d: not a JSON object: %s\n", path, jerr.line,
                jerr.column, root ? "expected {...}" : jerr.text);
        json_decref(root);
        return -1;
    }
    json_t *body = json_object_get(root, "request");
    const char *ans = json_string_value(json_object_get(root, "answer"));
    if (!json_is_object(body))
        body = root;
    if (ans)
        sc->answer = strdup(ans);
    sc->body = json_dumps(body, JSON_COMPACT);
    json_decref(root);
    sc->req = sc->body ? fh_request_parse(sc->body, strlen(sc->body), err, sizeof(err)) : NULL;
    if (!sc->req) {
        fprintf(stderr, "fusion-host: %s: %s\n", path, sc->body ? err : "out of memory");
        return -1;
    }
    sc->label = strdup(path);
    return 0;
}

/* The request and sample answer to run: the --scenario file, else the
 * built-in scenario the plugin matches best. */
static int pick_scenario(const plugin_test_opts *o, fh_generation *gen, fh_bench_shared *sh,
                         bench_scenario *sc)
{
    if (o->scenario)
        return scenario_from_file(o->scenario, sc);
    char err[256];
    size_t count;
    const fh_scenario *all = fh_scenarios(&count);
    const fh_scenario *best_s = NULL;
    double best = 0;
    for (size_t i = 0; i < count; i++) {
        char *body = fh_scenario_request_json(&all[i]);
        fusion_request *req = body ? fh_request_parse(body, strlen(body), err, sizeof(err)) : NULL;
        double m = req ? bench_match(gen, req, sh) : 0;
        if (req && (!sc->req || m > best)) {
            fh_request_free(sc->req);
            free(sc->body);
            sc->req = req, sc->body = body, best_s = &all[i], best = m;
        } else {
            fh_request_free(req);
            free(body);
        }
    }
    if (!best_s) {
        fprintf(stderr, "fusion-host: no built-in scenario could be parsed; give --scenario\n");
        return -1;
    }
    sc->answer = strdup(best_s->sample_answer);
    if (asprintf(&sc->label, "%s (built-in)", best_s->id) < 0)
        sc->label = NULL;
    return 0;
}

/* What the daemon would decide for this request. */
typedef struct bench_route {
    const char *decision; /* "overlay" or "baseline" */
    const char *routed;   /* the feature it goes to, or "baseline" */
    fh_reason reason;
} bench_route;

static bench_route route_request(const bench_ctx *b, const char *name, const fusion_request *req,
                                 double match)
{
    fh_route route = {.reason = FH_REASON_NO_MATCH};
    if (b->flags) {
        fh_env_override ovr = {0};
        fh_env_override_parse(getenv("RESON_FEATURES"), &ovr);
        fh_route_ctx ctx = {.scenario_type = req->scenario_type,
                            .scenario_id = req->scenario_id,
                            .confidence = req->confidence,
                            .key = req->key,
                            .request_id = req->request_id};
        fh_flags_route(b->flags, b->cfg ? b->cfg->environment : NULL, &ovr, &ctx, &route);
        fh_env_override_free(&ovr);
    }
    bench_route r = {.reason = route.reason};
    r.decision = route.feature && strcmp(route.feature->name, name) == 0 ? "overlay" : "baseline";
    r.routed = route.feature ? route.feature->name : "baseline";
    if (match <= 0.0 && strcmp(r.decision, "overlay") == 0)
        r.reason = FH_REASON_NO_MATCH, r.decision = "baseline";
    return r;
}

/* A plugin's number for JSON: null when it is not finite (JSON has no NaN). */
static json_t *json_num(double v)
{
    return isfinite(v) ? json_real(v) : json_null();
}

static size_t rule_count(const fusion_evaluation *ev)
{
    return ev->rule_count < FUSION_EVAL_MAX_RULES ? ev->rule_count : FUSION_EVAL_MAX_RULES;
}

static json_t *evaluation_json(const fusion_evaluation *ev)
{
    json_t *rules = json_array();
    for (size_t i = 0; i < rule_count(ev); i++) {
        const fusion_rule_result *r = &ev->rules[i];
        json_array_append_new(rules,
                              json_pack("{s:s, s:o, s:b, s:s}", "name", r->name ? r->name : "?",
                                        "score", json_num(r->score), "passed", r->passed, "detail",
                                        r->detail ? r->detail : ""));
    }
    return json_pack("{s:o, s:o}", "quality_score", json_num(ev->quality), "rules", rules);
}

static json_t *hooks_json(const fusion_overlay_descriptor *d)
{
    json_t *a = json_array();
    const struct {
        const char *name;
        bool present;
    } hooks[] = {{"init", d->init},
                 {"fini", d->fini},
                 {"match", d->match},
                 {"apply", d->apply},
                 {"evaluate", d->evaluate}};
    for (size_t i = 0; i < sizeof(hooks) / sizeof(hooks[0]); i++)
        if (hooks[i].present)
            json_array_append_new(a, json_string(hooks[i].name));
    return a;
}

static json_t *strings_json(const fh_diag *d)
{
    json_t *a = json_array();
    for (size_t i = 0; i < d->count; i++)
        json_array_append_new(a, json_string(d->items[i]));
    return a;
}

/* What was loaded, as the child sends it once the plugin is in. */
static json_t *loaded_json(const fusion_overlay_descriptor *d)
{
    return json_pack("{s:s, s:s, s:s, s:s?, s:s?, s:{s:i, s:i, s:i, s:i, s:i}, s:o}", "kind",
                     "loaded", "overlay", d->name, "overlay_version", d->version, "description",
                     d->description, "license", d->license, "abi", "major", (int)d->abi_major,
                     "minor", (int)d->abi_minor, "host_major", FUSION_ABI_MAJOR, "host_minor",
                     FUSION_ABI_MINOR, "descriptor_size", (int)d->size, "hooks", hooks_json(d));
}

static void print_loaded(const fusion_overlay_descriptor *d)
{
    printf("overlay:   %s %s (ABI %u.%u)%s%s\n", d->name, d->version, d->abi_major, d->abi_minor,
           d->description ? ": " : "", d->description ? d->description : "");
    printf("abi:       descriptor %u.%u, %u bytes, on host ABI %d.%d; hooks: init fini%s apply "
           "evaluate\n",
           d->abi_major, d->abi_minor, d->size, FUSION_ABI_MAJOR, FUSION_ABI_MINOR,
           d->match ? " match" : " (no match: always 1.0)");
}

/* The first run's report, as the child sends it (and --json prints it). */
static json_t *first_run_json(const bench_scenario *sc, const bench_route *r,
                              const fh_stress_sample *s, double threshold,
                              const fh_diag *violations)
{
    json_t *request = s->request ? json_loads(s->request, 0, NULL) : NULL;
    return json_pack(
        "{s:s, s:s, s:s, s:s, s:s, s:o, s:i, s:o, s:i, s:o, s:f, s:{s:f, s:f, s:f}, "
        "s:o}",
        "kind", "first_run", "scenario", sc->label ? sc->label : "", "decision", r->decision,
        "routed_to", r->routed, "reason", fh_reason_name(r->reason), "match_score",
        json_num(s->match), "apply_status", s->apply_rc, "request", request ? request : json_null(),
        "evaluate_status", s->eval_rc, "evaluation", evaluation_json(&s->eval), "quality_threshold",
        threshold, "hook_us", "match", (double)s->ns[FH_STRESS_MATCH] / 1e3, "apply",
        (double)s->ns[FH_STRESS_APPLY] / 1e3, "evaluate", (double)s->ns[FH_STRESS_EVALUATE] / 1e3,
        "violations", strings_json(violations));
}

static void print_first_run(const bench_scenario *sc, const bench_route *r,
                            const fh_stress_sample *s, double threshold, bool have_flags,
                            const fh_diag *violations)
{
    printf("scenario:  %s\n", sc->label ? sc->label : "?");
    printf("match:     %.2f\n", s->match);
    bool overlaid = strcmp(r->decision, "overlay") == 0;
    printf("decision:  %s (%s)%s%s\n", r->decision, fh_reason_name(r->reason),
           overlaid ? "" : ", routed to ", overlaid ? "" : r->routed);
    if (!have_flags)
        printf("           (no flags file: the routing decision is not known)\n");
    if (s->apply_rc != 0)
        printf("apply:     FAILED (hook returned %d): the daemon would serve the baseline "
               "(hook_error)\n",
               s->apply_rc);
    printf("rewritten request%s:\n%s\n", overlaid ? "" : " (what the overlay would send)",
           s->request ? s->request : "(none)");
    if (s->eval_rc != 0)
        printf("evaluate:  FAILED (hook returned %d)\n", s->eval_rc);
    printf("evaluation of the sample answer: quality %.2f (threshold %.2f: %s)\n", s->eval.quality,
           threshold, s->eval.quality >= threshold ? "pass" : "below threshold");
    for (size_t i = 0; i < rule_count(&s->eval); i++) {
        const fusion_rule_result *x = &s->eval.rules[i];
        printf("  [%s] %-30s %.2f  %s\n", x->passed ? "pass" : "FAIL", x->name ? x->name : "?",
               x->score, x->detail ? x->detail : "");
    }
    printf("time:      match %.1f us, apply %.1f us, evaluate %.1f us\n",
           (double)s->ns[FH_STRESS_MATCH] / 1e3, (double)s->ns[FH_STRESS_APPLY] / 1e3,
           (double)s->ns[FH_STRESS_EVALUATE] / 1e3);
    if (!violations->count)
        printf("contract:  ok\n");
    else
        printf("contract:  %zu violation%s\n", violations->count,
               violations->count == 1 ? "" : "s");
    print_diag(violations, "  - ");
}

/* In the child: the first run, its report, then the stress runs. */
static int bench_overlay(bench_ctx *b, fh_registry *reg, const char *name, fh_bench_shared *sh,
                         int fd)
{
    const plugin_test_opts *o = b->o;
    fh_overlay_state state;
    fh_generation *gen = fh_registry_acquire(reg, name, &state);
    if (!gen) {
        fprintf(stderr, "fusion-host: %s loaded but is %s\n", name, fh_overlay_state_name(state));
        return 1;
    }
    const fusion_overlay_descriptor *d = fh_generation_descriptor(gen);
    if (!o->json)
        print_loaded(d);
    fflush(stdout); /* before any hook runs */
    json_t *loaded = loaded_json(d);
    if (loaded)
        fh_bench_send(fd, loaded);
    json_decref(loaded);
    bench_scenario sc = {0};
    fh_stress_sample first = {0};
    fh_diag violations = {0};
    int rc = 1;
    char err[256];
    if (pick_scenario(o, gen, sh, &sc) != 0)
        goto out;
    if (o->answer) {
        size_t len;
        free(sc.answer);
        if (!(sc.answer = fh_read_file(o->answer, 4 << 20, &len))) {
            fprintf(stderr, "fusion-host: cannot read answer %s: %s\n", o->answer, strerror(errno));
            goto out;
        }
    }
    fh_stress_input in = {.gen = gen,
                          .body = sc.body,
                          .body_len = strlen(sc.body),
                          .request_id = "plugin-test",
                          .answer = sc.answer ? sc.answer : "",
                          .answer_len = sc.answer ? strlen(sc.answer) : 0,
                          .shared = sh};
    if (!sc.req->request_id)
        fh_request_set_id(sc.req, in.request_id);
    if (fh_stress_sample_run(&in, 0, 0, &first, err, sizeof(err)) != 0) {
        fprintf(stderr, "fusion-host: %s\n", err);
        goto out;
    }
    bench_route route = route_request(b, name, sc.req, first.match);
    fh_stress_contract_check(&first, &violations);
    double threshold = b->cfg ? fh_config_overlay(b->cfg, name)->quality_threshold : 0.8;
    if (!o->json)
        print_first_run(&sc, &route, &first, threshold, b->flags != NULL, &violations);
    fflush(stdout); /* before any more plugin code runs */
    json_t *doc = first_run_json(&sc, &route, &first, threshold, &violations);
    rc = doc && fh_bench_send(fd, doc) == 0 ? 0 : 1;
    json_decref(doc);
    if (rc == 0 && o->stress > 0) {
        json_t *report = fh_stress_run(&in, &first, o->stress, o->threads);
        if (report)
            json_object_set_new(report, "kind", json_string("stress"));
        rc = report && fh_bench_send(fd, report) == 0 ? 0 : 1;
        json_decref(report);
    }
out:
    fh_stress_sample_clear(&first);
    fh_diag_clear(&violations);
    bench_scenario_clear(&sc);
    fh_generation_release(gen);
    return rc;
}

/* The child's whole life: load, run, unload. Hooks run inline on the
 * calling thread (hook_deadline_ms 0); the parent keeps the deadline. */
static int bench_child(void *ud, fh_bench_shared *sh, int fd)
{
    bench_ctx *b = ud;
    /* An author's build tree may be group-writable or theirs: the owner and
     * permission rules are the daemon's, not the bench's. */
    fh_registry_opts ro = {
        .loader = {.cache_dir = b->cache, .daemon_uid = geteuid(), .skip_owner_checks = true},
        .host_api = fh_host_api(),
        .inputs_for = bench_inputs_for,
        .inputs_ud = b};
    fh_registry *reg = fh_registry_new(&ro);
    if (!reg) {
        fprintf(stderr, "fusion-host: out of memory\n");
        return 1;
    }
    char msg[1024] = "", name[FUSION_NAME_MAX + 1] = "";
    fh_bench_enter(sh, 0, FH_BENCH_LOAD, 0);
    fh_load_err e = fh_registry_load(reg, b->o->plugin, msg, sizeof(msg), name);
    fh_bench_leave(sh, 0);
    int rc = 1;
    if (e != FH_LOAD_OK) {
        const char *why = msg[0] ? msg : fh_load_err_name(e);
        fprintf(stderr, "fusion-host: %s\n", why);
        json_t *doc = json_pack("{s:s, s:s, s:s}", "kind", "load_error", "load_error", why,
                                "load_status", fh_load_err_name(e));
        if (doc)
            fh_bench_send(fd, doc);
        json_decref(doc);
    } else {
        rc = bench_overlay(b, reg, name, sh, fd);
    }
    atomic_store(&sh->nslots, 1);
    fh_bench_enter(sh, 0, FH_HOOK_FINI, 0);
    fh_registry_free(reg, 1000);
    fh_bench_leave(sh, 0);
    fh_inputs_provider_clear(&b->inputs);
    return rc;
}

/* ---- plugin-test: the parent's report ---- */

static json_t *find_doc(const fh_bench_outcome *out, const char *kind)
{
    size_t i;
    json_t *doc;
    json_array_foreach(out->docs, i, doc)
    {
        const char *k = json_string_value(json_object_get(doc, "kind"));
        if (k && strcmp(k, kind) == 0)
            return doc;
    }
    return NULL;
}

static const char *slot_name(int slot, char *buf, size_t len)
{
    if (slot == 0)
        return "the first run";
    snprintf(buf, len, "stress thread %d", slot);
    return buf;
}

/* "apply() (stress thread 2, run 17), match() (stress thread 3, run 18)":
 * what the child's threads were running when it ended. */
static void where_it_ended(const fh_bench_outcome *out, char *buf, size_t len)
{
    size_t used = 0;
    buf[0] = '\0';
    for (int i = 0; i < out->nslots && used + 1 < len; i++) {
        if (out->hook[i] == FH_BENCH_IDLE)
            continue;
        char who[40];
        int n;
        if (i == 0)
            n = snprintf(buf + used, len - used, "%sin %s (%s)", used ? ", " : "",
                         fh_bench_hook_name(out->hook[i]), slot_name(0, who, sizeof(who)));
        else
            n = snprintf(buf + used, len - used, "%sin %s (%s, run %lu)", used ? ", " : "",
                         fh_bench_hook_name(out->hook[i]), slot_name(i, who, sizeof(who)),
                         out->run[i]);
        used += n > 0 ? (size_t)n : 0;
    }
    if (!buf[0])
        snprintf(buf, len, "outside the overlay's hooks");
}

/* A crash, an exit mid-way or a hung hook: the finding, as JSON (and
 * printed unless --json). NULL when the child ended normally. */
static json_t *child_end_finding(const plugin_test_opts *o, const fh_bench_outcome *out,
                                 int deadline_ms)
{
    char where[1024];
    where_it_ended(out, where, sizeof(where));
    if (out->timed_out) {
        int s = out->timeout_slot;
        char who[40];
        const char *hook =
            fh_bench_hook_name(out->hook[s] == FH_BENCH_IDLE ? FH_HOOK_APPLY : out->hook[s]);
        if (!o->json)
            printf("deadline:  %s did not return within %d ms (hooks.deadline_ms) on %s; the "
                   "test process was stopped. The daemon would abandon the call, serve the "
                   "baseline and quarantine the overlay\n",
                   hook, deadline_ms, slot_name(s, who, sizeof(who)));
        return json_pack("{s:s, s:s, s:i, s:i, s:I}", "kind", "timeout", "hook", hook,
                         "deadline_ms", deadline_ms, "thread", s, "run", (json_int_t)out->run[s]);
    }
    if (out->signo) {
        if (!o->json)
            printf("crash:     the plugin crashed the test process with %s %s after %lu hook "
                   "call%s. In the daemon this kills the process, and the overlay is "
                   "quarantined when it starts again\n",
                   fh_signal_name(out->signo), where, out->calls, out->calls == 1 ? "" : "s");
        return json_pack("{s:s, s:i, s:s, s:s, s:I}", "kind", "crash", "signal", out->signo,
                         "signal_name", fh_signal_name(out->signo), "where", where, "calls",
                         (json_int_t)out->calls);
    }
    if (!out->finished) {
        if (!o->json)
            printf("crash:     the test process ended with exit status %d %s after %lu hook "
                   "call%s, before it finished: the plugin called exit(), or a sanitizer "
                   "stopped it (its report is above)\n",
                   out->exit_status, where, out->calls, out->calls == 1 ? "" : "s");
        return json_pack("{s:s, s:i, s:s, s:I}", "kind", "exit", "exit_status", out->exit_status,
                         "where", where, "calls", (json_int_t)out->calls);
    }
    return NULL;
}

static void print_threads(json_t *threads)
{
    size_t i;
    json_t *t;
    json_array_foreach(threads, i, t)
        printf("%s%lld", i ? "," : "", (long long)json_integer_value(t));
}

static void print_stress(json_t *st)
{
    json_t *hooks = json_object_get(st, "hooks");
    long long runs = json_integer_value(json_object_get(st, "runs"));
    long long done = json_integer_value(json_object_get(st, "completed"));
    printf("stress:    %lld run%s on %lld thread%s in %.2f s (%lld hook calls), each compared "
           "with the first run\n",
           done, done == 1 ? "" : "s", json_integer_value(json_object_get(st, "threads")),
           json_integer_value(json_object_get(st, "threads")) == 1 ? "" : "s",
           json_real_value(json_object_get(st, "seconds")), done * 3);
    if (done < runs)
        printf("           (%lld of the %lld runs asked for)\n", done, runs);
    static const char *const rows[][2] = {{"match", "match()"},
                                          {"apply", "apply()"},
                                          {"evaluate", "evaluate()"},
                                          {"match_apply", "match+apply"}};
    printf("  %-12s %8s %10s %10s %10s %10s\n", "hook", "calls", "p50 us", "p95 us", "p99 us",
           "max us");
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        json_t *h = json_object_get(hooks, rows[i][0]);
        printf("  %-12s %8lld %10.1f %10.1f %10.1f %10.1f\n", rows[i][1],
               json_integer_value(json_object_get(h, "calls")),
               json_real_value(json_object_get(h, "p50_us")),
               json_real_value(json_object_get(h, "p95_us")),
               json_real_value(json_object_get(h, "p99_us")),
               json_real_value(json_object_get(h, "max_us")));
    }
    size_t i;
    json_t *x;
    json_array_foreach(json_object_get(st, "differences"), i, x)
    {
        printf("nondeterministic result: %s differs from the first run's in %lld of %lld runs, on "
               "thread%s ",
               json_string_value(json_object_get(x, "label")),
               json_integer_value(json_object_get(x, "runs")), done,
               json_array_size(json_object_get(x, "threads")) == 1 ? "" : "s");
        print_threads(json_object_get(x, "threads"));
        const char *where = json_string_value(json_object_get(x, "where"));
        printf(": a data race or hidden state in the plugin\n  first at run %lld (stress thread "
               "%lld)%s%s:\n",
               json_integer_value(json_object_get(x, "first_run")),
               json_integer_value(json_object_get(x, "first_thread")), where && *where ? ", " : "",
               where ? where : "");
        printf("    first run: %s\n    this run:  %s\n",
               json_string_value(json_object_get(x, "first")),
               json_string_value(json_object_get(x, "this")));
    }
    json_array_foreach(json_object_get(st, "violations"), i, x)
    {
        printf("contract violation in %lld of %lld runs (first: run %lld, stress thread %lld): "
               "%s\n",
               json_integer_value(json_object_get(x, "runs")), done,
               json_integer_value(json_object_get(x, "first_run")),
               json_integer_value(json_object_get(x, "first_thread")),
               json_string_value(json_object_get(x, "message")));
    }
    json_array_foreach(json_object_get(st, "errors"), i, x)
        printf("error:     %s\n", json_string_value(x));
}

/* Counts the findings of a finished bench into *n (violations, differences). */
static bool stress_clean(json_t *st, long runs, size_t *diffs, size_t *viols)
{
    *diffs = json_array_size(json_object_get(st, "differences"));
    *viols = json_array_size(json_object_get(st, "violations"));
    return st && !*diffs && !*viols && !json_array_size(json_object_get(st, "errors")) &&
           json_integer_value(json_object_get(st, "completed")) == runs;
}

/* What the child reported, and what became of it. */
typedef struct bench_verdict {
    json_t *loaded, *load_error, *first, *stress; /* the child's documents, borrowed */
    json_t *ended;               /* crash, exit or timeout (child_end_finding), owned */
    bool timeout;                /* ended is a hook past the deadline */
    size_t viols, sviols, diffs; /* first-run violations; kinds under stress; differences */
    bool ok;
} bench_verdict;

static void print_json_report(const plugin_test_opts *o, const fh_config *cfg,
                              const bench_verdict *v)
{
    json_t *rep = json_pack("{s:s}", "plugin", o->plugin);
    if (v->loaded)
        json_object_update(rep, v->loaded);
    if (v->first)
        json_object_update(rep, v->first);
    json_object_del(rep, "kind");
    json_object_set_new(rep, "load_error",
                        v->load_error ? json_incref(json_object_get(v->load_error, "load_error"))
                                      : json_null());
    json_object_set_new(rep, "config", cfg ? json_string(cfg->path) : json_null());
    json_object_set_new(rep, "overlay_config",
                        o->overlay_config ? json_string(o->overlay_config) : json_null());
    json_t *st = v->stress ? json_deep_copy(v->stress) : json_null();
    json_object_del(st, "kind");
    json_object_set_new(rep, "stress", st);
    json_object_set_new(rep, "crash",
                        v->ended && !v->timeout ? json_incref(v->ended) : json_null());
    json_object_set_new(rep, "timeout", v->timeout ? json_incref(v->ended) : json_null());
    json_object_set_new(rep, "ok", json_boolean(v->ok));
    char *text = json_dumps(rep, JSON_INDENT(2));
    if (text)
        printf("%s\n", text);
    free(text);
    json_decref(rep);
}

static void print_verdict(const plugin_test_opts *o, const bench_verdict *v, bool finished)
{
    if (v->ok) {
        printf("result:    ok%s\n",
               o->stress ? " (no crash, no contract violation, every run equal to the first)" : "");
        return;
    }
    printf("result:    FAILED:");
    const char *sep = " ";
    if (v->load_error)
        printf("%sthe plugin did not load", sep), sep = ", ";
    if (v->ended)
        printf("%s%s", sep, v->timeout ? "a hook past the deadline" : "the plugin crashed"),
            sep = ", ";
    if (v->viols)
        printf("%s%zu contract violation%s in the first run", sep, v->viols,
               v->viols == 1 ? "" : "s"),
            sep = ", ";
    if (v->sviols)
        printf("%s%zu kind%s of contract violation under stress", sep, v->sviols,
               v->sviols == 1 ? "" : "s"),
            sep = ", ";
    if (v->diffs)
        printf("%s%zu nondeterministic result%s", sep, v->diffs, v->diffs == 1 ? "" : "s"),
            sep = ", ";
    if (!v->ended && !v->load_error && !finished)
        printf("%sthe test did not finish (see above)", sep);
    printf("\n");
}

static int report_outcome(const plugin_test_opts *o, const fh_config *cfg,
                          const fh_bench_outcome *out, int deadline_ms)
{
    bench_verdict v = {.loaded = find_doc(out, "loaded"),
                       .load_error = find_doc(out, "load_error"),
                       .first = find_doc(out, "first_run"),
                       .stress = find_doc(out, "stress")};
    if (v.stress && !o->json)
        print_stress(v.stress);
    v.ended = child_end_finding(o, out, deadline_ms);
    v.timeout =
        v.ended && strcmp(json_string_value(json_object_get(v.ended, "kind")), "timeout") == 0;
    v.viols = json_array_size(json_object_get(v.first, "violations"));
    bool stress_ok = !o->stress || stress_clean(v.stress, o->stress, &v.diffs, &v.sviols);
    bool finished = v.first && (!o->stress || v.stress) && out->exit_status == 0;
    v.ok = finished && !v.load_error && !v.ended && !v.viols && stress_ok;
    if (o->json)
        print_json_report(o, cfg, &v);
    else
        print_verdict(o, &v, finished);
    json_decref(v.ended);
    return v.ok ? 0 : 1;
}

/* "--name VALUE" or "--name=VALUE" at argv[*i]: 1 (value in *v), 0 when
 * argv[*i] is not it, -1 when the value is missing. */
static int take_value(int argc, char **argv, int *i, const char *name, const char **v)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0)
        return 0;
    if (argv[*i][n] == '=') {
        *v = argv[*i] + n + 1;
        return 1;
    }
    if (argv[*i][n] != '\0')
        return 0;
    if (*i + 1 >= argc)
        return -1;
    *v = argv[++*i];
    return 1;
}

static int parse_count(const char *s, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static int parse_plugin_test_args(int argc, char **argv, plugin_test_opts *o)
{
    static const char *const valued[] = {"--scenario", "--answer",  "-c", "--config",
                                         "--stress",   "--threads", NULL};
    const char *stress = NULL, *threads = NULL;
    const char **slots[] = {&o->scenario,       &o->answer, &o->config,
                            &o->overlay_config, &stress,    &threads};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r = 0;
        for (size_t k = 0; valued[k] && r == 0; k++)
            r = take_value(argc, argv, &i, valued[k], slots[k]);
        if (r < 0)
            return usage_error("plugin-test: %s needs a value", a);
        if (r > 0)
            continue;
        if (strcmp(a, "--json") == 0)
            o->json = 1;
        else if (a[0] == '-')
            return usage_error("plugin-test: unknown option '%s'", a);
        else if (!o->plugin)
            o->plugin = a;
        else
            return usage_error("plugin-test: unexpected argument '%s'", a);
    }
    if (!o->plugin)
        return usage_error("plugin-test: which plugin? give the path of a .so%s", "");
    if (stress && parse_count(stress, 1, FH_STRESS_MAX_RUNS, &o->stress) != 0)
        return usage_error("plugin-test: --stress takes a number of runs from 1 to 1000000, "
                           "not '%s'",
                           stress);
    long t = PT_DEFAULT_THREADS;
    if (threads && (!stress || parse_count(threads, 1, FH_STRESS_MAX_THREADS, &t) != 0))
        return usage_error(stress ? "plugin-test: --threads takes 1 to 64, not '%s'"
                                  : "plugin-test: --threads %s goes with --stress N",
                           threads);
    o->threads = (int)t;
    return 0;
}

static int cmd_plugin_test(int argc, char **argv)
{
    plugin_test_opts o = {0};
    int r = parse_plugin_test_args(argc, argv, &o);
    if (r != 0)
        return r;

    fh_diag diag = {0};
    const char *config_path = find_config(o.config);
    fh_config *cfg = config_path ? fh_config_load(config_path, &diag) : NULL;
    fh_flags *flags = cfg ? fh_flags_load(cfg->feature_flags, &diag) : NULL;
    if (diag.count) {
        print_diag(&diag, "warning: ");
        if (o.config && !cfg) {
            fh_diag_clear(&diag);
            return 1;
        }
    }
    fh_diag_clear(&diag);
    char *overlay_config = o.overlay_config ? load_overlay_config(o.overlay_config) : NULL;
    char *cache = NULL;
    int rc = 1;
    if (o.overlay_config && !overlay_config)
        goto out;
    if (!o.json) {
        printf("config:    %s\n", cfg ? cfg->path : "(none: no settings, no directive texts)");
        if (o.overlay_config)
            printf("overlay config: %s (--config): %.300s%s\n", o.overlay_config, overlay_config,
                   strlen(overlay_config) > 300 ? "..." : "");
    }
    if (!(cache = make_cache_dir()))
        goto out;
    int deadline_ms = cfg ? cfg->hooks.deadline_ms : 2000;
    bench_ctx b = {.o = &o,
                   .cfg = cfg,
                   .flags = flags,
                   .cache = cache,
                   .overlay_config = overlay_config,
                   .inputs = {.cfg = cfg, .flags = flags}};
    fh_bench_outcome out;
    if (fh_bench_spawn(bench_child, &b, deadline_ms, &out) == 0) {
        rc = report_outcome(&o, cfg, &out, deadline_ms);
        fh_bench_outcome_clear(&out);
    }
out:
    remove_cache_dir(cache);
    free(overlay_config);
    fh_flags_free(flags);
    fh_config_free(cfg);
    return rc;
}

/* ---- serve --------------------------------------------------------------- */

static int cmd_serve(int argc, char **argv)
{
    fh_serve_opts o = {.config_path = FH_DEFAULT_CONFIG_PATH};
    for (int i = 1; i < argc; i++) {
        int r = take_config_arg(argc, argv, &i, &o.config_path);
        if (r < 0)
            return usage_error("%s needs a file", argv[i]);
        if (r > 0)
            continue;
        if (strcmp(argv[i], "--ready-file") == 0 && i + 1 < argc)
            o.ready_file = argv[++i];
        else
            return usage_error("serve: unexpected argument '%s'", argv[i]);
    }
    return fh_serve(&o);
}

/* ---- dispatch ----------------------------------------------------------- */

/* The options a command may also take before its word: the admin
 * commands' (--admin, --token-file, --json) and -c FILE. 1 when argv[*i]
 * is one (its value taken too), 0 when not, -1 when its value is missing;
 * *admin_only set for those only the admin commands understand. */
static int take_global_arg(int argc, char **argv, int *i, bool *admin_only)
{
    static const char *const with_value[] = {"--admin", "--token-file", "-c", "--config"};
    const char *a = argv[*i];
    if (strcmp(a, "--json") == 0)
        return 1;
    for (size_t k = 0; k < sizeof(with_value) / sizeof(with_value[0]); k++) {
        size_t n = strlen(with_value[k]);
        if (strncmp(a, with_value[k], n) != 0 || (a[n] != '\0' && (a[n] != '=' || n < 3)))
            continue;
        if (k < 2)
            *admin_only = true;
        if (a[n] == '=')
            return 1;
        if (*i + 1 >= argc)
            return -1;
        ++*i;
        return 1;
    }
    return 0;
}

/* argv[cmd..] with the global options `globals` moved in behind the
 * command word (and behind the subcommand of `flags`), so each command
 * parses them as its own: "fusion-host -c F check" is "check -c F". Not at
 * the end, where they would land behind a "--". */
static char **command_argv(int argc, char **argv, int cmd, char **globals, int nglobals)
{
    int n = argc - cmd;
    int at = strcmp(argv[cmd], "flags") == 0 && n >= 2 ? 2 : 1;
    char **out = calloc((size_t)(n + nglobals + 1), sizeof(*out));
    if (!out)
        return NULL;
    memcpy(out, argv + cmd, (size_t)at * sizeof(*out));
    memcpy(out + at, globals, (size_t)nglobals * sizeof(*out));
    memcpy(out + at + nglobals, argv + cmd + at, (size_t)(n - at) * sizeof(*out));
    return out;
}

static int run_command(int argc, char **argv, bool admin_only)
{
    static const struct {
        const char *name;
        int (*run)(int argc, char **argv);
    } offline[] = {{"serve", cmd_serve},       {"check", cmd_check},
                   {"flags", cmd_flags},       {"plugin-test", cmd_plugin_test},
                   {"golden", fh_golden_main}, {"bench", fh_bench_main},
                   {"budget", fh_budget_main}, {"compare", fh_compare_main}};
    const char *cmd = argv[0];
    if (fh_ctl_is_command(argc, argv))
        return fh_ctl_main(argc, argv);
    if (strcmp(cmd, "help") == 0) {
        fputs(usage_text, stdout);
        return 0;
    }
    for (size_t k = 0; k < sizeof(offline) / sizeof(offline[0]); k++) {
        if (strcmp(cmd, offline[k].name) != 0)
            continue;
        /* `flags` without `validate` gets its own message from cmd_flags. */
        bool flags_unclear =
            strcmp(cmd, "flags") == 0 && (argc < 2 || strcmp(argv[1], "validate") != 0);
        if (admin_only && !flags_unclear)
            return usage_error("--admin and --token-file go with the admin commands (list, "
                               "status, ...), not '%s'",
                               cmd);
        return offline[k].run(argc, argv);
    }
    return usage_error("unknown command '%s'", cmd);
}

/* plugin-test's own --config is the overlay's config; a --config given
 * before the command word is the daemon's, as for every other command:
 * it reaches plugin-test as -c. */
static void plugin_test_globals(char **globals, int *n)
{
    for (int k = 0; k < *n; k++) {
        if (strcmp(globals[k], "--config") == 0) {
            globals[k] = (char *)"-c";
        } else if (strncmp(globals[k], "--config=", 9) == 0) {
            memmove(globals + k + 2, globals + k + 1, (size_t)(*n - k - 1) * sizeof(*globals));
            globals[k + 1] = globals[k] + 9;
            globals[k] = (char *)"-c";
            ++*n, ++k;
        }
    }
}

int fh_cli_main(int argc, char **argv)
{
    /* Offline commands report problems themselves; the log would repeat
     * them. plugin-test shows the plugin's own log lines. */
    fh_log_level level = FH_LOG_OFF;
    int level_given = 0;
    int i = 1;
    /* Twice argc: plugin_test_globals may split each one in two. */
    char **globals = calloc(2 * (size_t)argc + 1, sizeof(*globals));
    int nglobals = 0;
    bool admin_only = false;
    if (!globals) {
        fprintf(stderr, "fusion-host: out of memory\n");
        return 1;
    }
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i];
        int start = i, r = take_global_arg(argc, argv, &i, &admin_only);
        if (r < 0) {
            free(globals);
            return usage_error("%s needs a value", a);
        }
        if (r > 0) {
            for (int k = start; k <= i; k++)
                globals[nglobals++] = argv[k];
            continue;
        }
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            free(globals);
            fputs(usage_text, stdout);
            return 0;
        } else if (strcmp(a, "--version") == 0 || strcmp(a, "-V") == 0) {
            free(globals);
            printf("fusion-host %s (overlay ABI %d.%d)\n", FH_VERSION, FUSION_ABI_MAJOR,
                   FUSION_ABI_MINOR);
            return 0;
        } else if (strcmp(a, "--log-level") == 0 && i + 1 < argc) {
            if (fh_log_parse_level(argv[++i], &level) != 0) {
                free(globals);
                return usage_error("unknown log level '%s' (error, warn, info, debug)", argv[i]);
            }
            level_given = 1;
        } else {
            free(globals);
            return usage_error("unknown option '%s'", a);
        }
    }
    if (i >= argc) {
        free(globals);
        fputs(usage_text, stderr);
        return EXIT_USAGE;
    }
    const char *cmd = argv[i];
    if (strcmp(cmd, "plugin-test") == 0)
        plugin_test_globals(globals, &nglobals);
    if (!level_given && (strcmp(cmd, "plugin-test") == 0 || strcmp(cmd, "serve") == 0))
        level = FH_LOG_INFO;
    fh_log_set_level(level);
    int sub_argc = argc - i + nglobals;
    char **sub_argv = command_argv(argc, argv, i, globals, nglobals);
    free(globals);
    if (!sub_argv) {
        fprintf(stderr, "fusion-host: out of memory\n");
        return 1;
    }
    int rc = run_command(sub_argc, sub_argv, admin_only);
    free(sub_argv);
    return rc;
}
