/*
 * cli.c - the fusion-host command line and its offline commands.
 *
 *   check -c FILE            validate config, flags, directive texts, plugins
 *   flags validate -c FILE   the flags part alone (or -f FLAGS_FILE)
 *   plugin-test PATH         an overlay author's bench: load, route, apply,
 *                            evaluate a scenario, print everything
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
    "  plugin-test PATH [--scenario FILE] [--answer FILE] [-c FILE] [--json]\n"
    "                               load an overlay offline, route a scenario,\n"
    "                               print the rewritten request and the\n"
    "                               evaluation of a sample answer\n"
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

typedef struct plugin_test_opts {
    const char *plugin;
    const char *scenario;
    const char *answer;
    const char *config;
    int json;
} plugin_test_opts;

static char *read_file(const char *path, size_t max, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = malloc(max + 1);
    size_t n = buf ? fread(buf, 1, max + 1, f) : 0;
    fclose(f);
    if (!buf || n > max) {
        free(buf);
        errno = EFBIG;
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

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

/* The request and sample answer to run: the --scenario file (a chat body,
 * or {"request": body, "answer": text}), else the built-in scenario the
 * plugin matches best. */
static fusion_request *pick_scenario(const plugin_test_opts *o, fh_generation *gen, char **answer,
                                     char **label, double *match)
{
    char err[256];
    if (o->scenario) {
        size_t len;
        char *text = read_file(o->scenario, 4 << 20, &len);
        if (!text) {
            fprintf(stderr, "fusion-host: cannot read scenario %s: %s\n", o->scenario,
                    strerror(errno));
            return NULL;
        }
        json_error_t jerr;
        json_t *root = json_loadb(text, len, 0, &jerr);
        free(text);
        if (!json_is_object(root)) {
            fprintf(stderr, "fusion-host: %s:%d:%d: not a JSON object: %s\n", o->scenario,
                    jerr.line, jerr.column, root ? "expected {...}" : jerr.text);
            json_decref(root);
            return NULL;
        }
        json_t *body = json_object_get(root, "request");
        const char *ans = json_string_value(json_object_get(root, "answer"));
        if (!json_is_object(body))
            body = root;
        if (ans)
            *answer = strdup(ans);
        char *body_text = json_dumps(body, JSON_COMPACT);
        json_decref(root);
        fusion_request *req =
            body_text ? fh_request_parse(body_text, strlen(body_text), err, sizeof(err)) : NULL;
        free(body_text);
        if (!req) {
            fprintf(stderr, "fusion-host: %s: %s\n", o->scenario, err);
            return NULL;
        }
        *label = strdup(o->scenario);
        *match = fh_generation_match(gen, req);
        return req;
    }
    size_t count;
    const fh_scenario *all = fh_scenarios(&count);
    fusion_request *best = NULL;
    const fh_scenario *best_s = NULL;
    for (size_t i = 0; i < count; i++) {
        char *body = fh_scenario_request_json(&all[i]);
        fusion_request *req = body ? fh_request_parse(body, strlen(body), err, sizeof(err)) : NULL;
        free(body);
        if (!req)
            continue;
        double m = fh_generation_match(gen, req);
        if (!best || m > *match) {
            fh_request_free(best);
            best = req;
            best_s = &all[i];
            *match = m;
        } else {
            fh_request_free(req);
        }
    }
    if (best_s) {
        *answer = strdup(best_s->sample_answer);
        if (asprintf(label, "%s (built-in)", best_s->id) < 0)
            *label = NULL;
    }
    return best;
}

static json_t *evaluation_json(const fusion_evaluation *ev)
{
    json_t *rules = json_array();
    for (size_t i = 0; i < ev->rule_count; i++) {
        const fusion_rule_result *r = &ev->rules[i];
        json_array_append_new(rules, json_pack("{s:s, s:f, s:b, s:s}", "name",
                                               r->name ? r->name : "?", "score", r->score, "passed",
                                               r->passed, "detail", r->detail ? r->detail : ""));
    }
    return json_pack("{s:f, s:o}", "quality_score", ev->quality, "rules", rules);
}

static int run_plugin_test(const plugin_test_opts *o, fh_registry *reg, const char *name,
                           const fh_config *cfg, const fh_flags *flags)
{
    fh_overlay_state state;
    fh_generation *gen = fh_registry_acquire(reg, name, &state);
    if (!gen) {
        fprintf(stderr, "fusion-host: %s loaded but is %s\n", name, fh_overlay_state_name(state));
        return 1;
    }
    const fusion_overlay_descriptor *d = fh_generation_descriptor(gen);
    char *answer = NULL, *label = NULL;
    double match = 0;
    int rc = 1;
    fusion_request *req = pick_scenario(o, gen, &answer, &label, &match);
    if (!req)
        goto out;
    if (!req->request_id)
        fh_request_set_id(req, "plugin-test");
    if (o->answer) {
        size_t len;
        free(answer);
        answer = read_file(o->answer, 4 << 20, &len);
        if (!answer) {
            fprintf(stderr, "fusion-host: cannot read answer %s: %s\n", o->answer, strerror(errno));
            goto out;
        }
    }

    /* What the daemon would decide for this request. */
    fh_route route = {.reason = FH_REASON_NO_MATCH};
    if (flags) {
        fh_env_override ovr = {0};
        fh_env_override_parse(getenv("RESON_FEATURES"), &ovr);
        fh_route_ctx ctx = {.scenario_type = req->scenario_type,
                            .scenario_id = req->scenario_id,
                            .confidence = req->confidence,
                            .key = req->key,
                            .request_id = req->request_id};
        fh_flags_route(flags, cfg ? cfg->environment : NULL, &ovr, &ctx, &route);
        fh_env_override_free(&ovr);
    }
    const char *decision =
        route.feature && strcmp(route.feature->name, name) == 0 ? "overlay" : "baseline";
    const char *routed = route.feature ? route.feature->name : "baseline";
    if (match <= 0.0 && strcmp(decision, "overlay") == 0)
        route.reason = FH_REASON_NO_MATCH, decision = "baseline";

    int apply_rc = fh_generation_apply(gen, req);
    if (apply_rc == FH_GENERATION_TIMEOUT) {
        fprintf(stderr, "fusion-host: apply() did not return within hooks.deadline_ms; the daemon "
                        "would serve the baseline and quarantine the overlay\n");
        return 1; /* the request is the abandoned call's now: keep it */
    }
    char *rewritten = fh_request_dump(req, 1);
    fusion_evaluation ev;
    memset(&ev, 0, sizeof(ev));
    const char *text = answer ? answer : "";
    int eval_rc = fh_generation_evaluate(gen, req, text, strlen(text), &ev);
    if (eval_rc == FH_GENERATION_TIMEOUT) {
        fprintf(stderr, "fusion-host: evaluate() did not return within hooks.deadline_ms; the "
                        "daemon would serve the baseline and quarantine the overlay\n");
        free(rewritten);
        return 1;
    }
    if (eval_rc == 0 && !isfinite(ev.quality)) {
        fprintf(stderr, "fusion-host: evaluate returned a quality that is not a number; the "
                        "daemon ignores such a score\n");
        eval_rc = -1;
        ev.quality = 0;
    }
    double threshold = cfg ? fh_config_overlay(cfg, name)->quality_threshold : 0.8;

    if (o->json) {
        json_t *out = json_pack(
            "{s:s, s:s, s:{s:i, s:i}, s:s, s:s, s:s, s:s, s:f, s:i, s:o, s:i, s:o, s:f}", "overlay",
            d->name, "overlay_version", d->version, "abi", "major", (int)d->abi_major, "minor",
            (int)d->abi_minor, "scenario", label ? label : "", "decision", decision, "routed_to",
            routed, "reason", fh_reason_name(route.reason), "match_score", match, "apply_status",
            apply_rc, "request", rewritten ? json_loads(rewritten, 0, NULL) : json_null(),
            "evaluate_status", eval_rc, "evaluation", evaluation_json(&ev), "quality_threshold",
            threshold);
        char *s = out ? json_dumps(out, JSON_INDENT(2)) : NULL;
        if (s)
            printf("%s\n", s);
        free(s);
        json_decref(out);
    } else {
        printf("overlay:   %s %s (ABI %u.%u)%s%s\n", d->name, d->version, d->abi_major,
               d->abi_minor, d->description ? ": " : "", d->description ? d->description : "");
        printf("scenario:  %s\n", label ? label : "?");
        printf("match:     %.2f\n", match);
        printf("decision:  %s (%s)%s%s\n", decision, fh_reason_name(route.reason),
               strcmp(decision, "overlay") == 0 ? "" : ", routed to ",
               strcmp(decision, "overlay") == 0 ? "" : routed);
        if (!flags)
            printf("           (no flags file: the routing decision is not known)\n");
        if (apply_rc != 0)
            printf("apply:     FAILED (hook returned %d): the daemon would serve the baseline "
                   "(hook_error)\n",
                   apply_rc);
        printf("rewritten request%s:\n%s\n",
               strcmp(decision, "overlay") == 0 ? "" : " (what the overlay would send)",
               rewritten ? rewritten : "(none)");
        if (eval_rc != 0)
            printf("evaluate:  FAILED (hook returned %d)\n", eval_rc);
        printf("evaluation of the sample answer: quality %.2f (threshold %.2f: %s)\n", ev.quality,
               threshold, ev.quality >= threshold ? "pass" : "below threshold");
        for (size_t i = 0; i < ev.rule_count && i < FUSION_EVAL_MAX_RULES; i++) {
            const fusion_rule_result *r = &ev.rules[i];
            printf("  [%s] %-30s %.2f  %s\n", r->passed ? "pass" : "FAIL", r->name ? r->name : "?",
                   r->score, r->detail ? r->detail : "");
        }
    }
    free(rewritten);
    rc = apply_rc == 0 && eval_rc == 0 ? 0 : 1;
out:
    fh_request_free(req);
    free(answer);
    free(label);
    fh_generation_release(gen);
    return rc;
}

static int cmd_plugin_test(int argc, char **argv)
{
    plugin_test_opts o = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int r = take_config_arg(argc, argv, &i, &o.config);
        if (r < 0)
            return usage_error("%s needs a file", a);
        if (r > 0)
            continue;
        if (strcmp(a, "--scenario") == 0 && i + 1 < argc)
            o.scenario = argv[++i];
        else if (strcmp(a, "--answer") == 0 && i + 1 < argc)
            o.answer = argv[++i];
        else if (strcmp(a, "--json") == 0)
            o.json = 1;
        else if (a[0] == '-')
            return usage_error("plugin-test: unknown or incomplete option '%s'", a);
        else if (!o.plugin)
            o.plugin = a;
        else
            return usage_error("plugin-test: unexpected argument '%s'", a);
    }
    if (!o.plugin)
        return usage_error("plugin-test: which plugin? give the path of a .so%s", "");

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
    if (!o.json)
        printf("config:    %s\n", cfg ? cfg->path : "(none: no settings, no directive texts)");

    int rc = 1;
    char *cache = make_cache_dir();
    fh_inputs_provider inputs = {.cfg = cfg, .flags = flags};
    /* An author's build tree may be group-writable or theirs: the owner and
     * permission rules are the daemon's, not the bench's. */
    fh_registry_opts ro = {
        .loader = {.cache_dir = cache, .daemon_uid = geteuid(), .skip_owner_checks = true},
        .host_api = fh_host_api(),
        .inputs_for = fh_inputs_for,
        .inputs_ud = &inputs,
        .hook_deadline_ms = cfg ? cfg->hooks.deadline_ms : 2000};
    fh_registry *reg = cache ? fh_registry_new(&ro) : NULL;
    if (reg) {
        char msg[1024] = "", name[FUSION_NAME_MAX + 1] = "";
        fh_load_err e = fh_registry_load(reg, o.plugin, msg, sizeof(msg), name);
        if (e != FH_LOAD_OK)
            fprintf(stderr, "fusion-host: %s\n", msg[0] ? msg : fh_load_err_name(e));
        else
            rc = run_plugin_test(&o, reg, name, cfg, flags);
        fh_registry_free(reg, 1000);
    }
    fh_inputs_provider_clear(&inputs);
    remove_cache_dir(cache);
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

int fh_cli_main(int argc, char **argv)
{
    /* Offline commands report problems themselves; the log would repeat
     * them. plugin-test shows the plugin's own log lines. */
    fh_log_level level = FH_LOG_OFF;
    int level_given = 0;
    int i = 1;
    char **globals = calloc((size_t)argc + 1, sizeof(*globals));
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
