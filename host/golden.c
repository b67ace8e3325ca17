/*
 * golden.c - `fusion-host golden validate|update` (see opstools.h).
 *
 * Each canonical scenario (tests/golden/scenarios.yaml) goes as a client's
 * request through a real daemon (runner.h) in front of the stub model; its
 * golden file (tests/golden/<id>_golden.json) records what must not change
 * unnoticed:
 *   routing      the decision, overlay, version and reason, the status
 *   upstream_request
 *                the exact request the upstream received (directive text,
 *                caller messages, sampling parameters)
 *   sampling     the sampling parameters alone, for reading
 *   evaluation   the answer's quality score and each rule's result, from
 *                the daemon's scoring (scores compared within a tolerance)
 *   config_hash  the configuration it was captured with (a change is
 *                reported, not failed: the parts above say whether it mattered)
 * The rule results are the overlay's evaluate() on the answer, run offline
 * on the same plugin file the daemon loaded.
 *
 * Exit: 0 every scenario matches (or was updated), 1 a regression, 2 usage
 * or an unknown scenario. Runs on the main thread.
 */
#include "opstools.h"

#include "config.h"
#include "diag.h"
#include "directives.h"
#include "flags.h"
#include "hostapi.h"
#include "registry.h"
#include "request.h"
#include "runner.h"
#include "util.h"
#include "yamlutil.h"

#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define EXIT_REGRESSION 1
#define EXIT_USAGE      2

#define DEFAULT_GOLDEN_DIR "tests/golden"
#define DEFAULT_CONFIG     "config/fusion-host.dev.yaml"
#define DEFAULT_TOLERANCE  0.05

/* ---- scenarios ------------------------------------------------------------------- */

/* scenarios.yaml as JSON: {"scenarios": [{id, scenario_type, ...}]}. */
json_t *fh_golden_load_scenarios(const char *dir, char *err, size_t errlen)
{
    char path[4200];
    snprintf(path, sizeof(path), "%s/scenarios.yaml", dir);
    fh_diag diag = {0};
    fh_yaml y;
    if (fh_yaml_open(&y, path, path, &diag) != 0) {
        snprintf(err, errlen, "%s", diag.count ? diag.items[0] : path);
        fh_diag_clear(&diag);
        return NULL;
    }
    char *text = fh_yaml_to_json(&y, fh_yaml_root(&y), NULL, true);
    fh_yaml_close(&y);
    json_t *root = text ? json_loads(text, 0, NULL) : NULL;
    free(text);
    json_t *list = json_object_get(root, "scenarios");
    if (!json_is_array(list) || json_array_size(list) == 0) {
        snprintf(err, errlen, "%s: %s", path,
                 diag.count ? diag.items[0] : "needs a non-empty `scenarios:` list");
        fh_diag_clear(&diag);
        json_decref(root);
        return NULL;
    }
    fh_diag_clear(&diag);
    size_t i;
    json_t *s;
    json_array_foreach(list, i, s)
    {
        const char *id = json_string_value(json_object_get(s, "id"));
        json_t *conf = json_object_get(s, "confidence"), *crit = json_object_get(s, "critical");
        json_t *model = json_object_get(s, "model"), *msgs = json_object_get(s, "messages");
        const char *why = NULL;
        if (!id || !fh_valid_overlay_name(id))
            why = "needs an id of [a-z0-9_]";
        else if (!json_string_value(json_object_get(s, "scenario_type")))
            why = "needs a scenario_type";
        else if (!json_string_value(json_object_get(s, "expected_overlay")))
            why = "needs an expected_overlay (an overlay name, or \"baseline\")";
        else if (!json_is_array(msgs) || json_array_size(msgs) == 0)
            why = "needs a non-empty messages list";
        else if (conf && !json_is_number(conf))
            why = "has a confidence that is not a number";
        else if (crit && !json_is_boolean(crit))
            why = "has a critical that is not true or false";
        else if (model && !json_is_string(model))
            why = "has a model that is not a string";
        for (size_t k = 0; !why && k < i; k++)
            if (strcmp(json_string_value(json_object_get(json_array_get(list, k), "id")), id) == 0)
                why = "repeats an id (each has its own golden file)";
        if (why) {
            snprintf(err, errlen, "%s: scenario %zu (%s) %s", path, i + 1, id ? id : "no id", why);
            json_decref(root);
            return NULL;
        }
    }
    return root;
}

/* The request a client sends for scenario s. */
char *fh_golden_request(const json_t *s)
{
    /* scenario_id: the rollout bucket is the scenario's, not a random
     * request's, so a partial rollout routes every run the same way. */
    json_t *fusion = json_pack("{s:O, s:O}", "scenario_type", json_object_get(s, "scenario_type"),
                               "scenario_id", json_object_get(s, "id"));
    json_t *conf = json_object_get(s, "confidence");
    if (json_is_number(conf))
        json_object_set(fusion, "confidence", conf);
    const char *model = json_string_value(json_object_get(s, "model"));
    json_t *req = json_pack("{s:s, s:O, s:o}", "model", model ? model : "fusion-stub", "messages",
                            json_object_get(s, "messages"), "fusion", fusion);
    char *text = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    return text;
}

/* ---- capture ----------------------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st, (void)type, (void)ftw;
    remove(path);
    return 0;
}

struct fh_evaluator {
    fh_config *cfg;
    fh_flags *flags;
    fh_inputs_provider inputs;
    char cache[64];
    bool broken; /* an evaluate() was abandoned at its deadline */
    fh_registry *reg;
    struct loaded {
        char *file;
        char name[FUSION_NAME_MAX + 1];
    } * loaded;
    size_t nloaded;
    struct named_file { /* overlay name -> the file the daemon loaded it from */
        char name[FUSION_NAME_MAX + 1];
        char *file;
    } * files;
    size_t nfiles;
};

fh_evaluator *fh_evaluator_new(const char *config_path)
{
    fh_evaluator *ev = calloc(1, sizeof(*ev));
    if (!ev)
        return NULL;
    fh_diag diag = {0};
    ev->cfg = fh_config_load(config_path, &diag);
    ev->flags = ev->cfg ? fh_flags_load(ev->cfg->feature_flags, &diag) : NULL;
    fh_diag_clear(&diag);
    snprintf(ev->cache, sizeof(ev->cache), "/tmp/fusion-host-eval-XXXXXX");
    if (!ev->cfg || !ev->flags || !mkdtemp(ev->cache)) {
        ev->cache[0] = '\0';
        fh_evaluator_free(ev);
        return NULL;
    }
    ev->inputs = (fh_inputs_provider){.cfg = ev->cfg, .flags = ev->flags};
    fh_registry_opts ro = {
        .loader = {.cache_dir = ev->cache, .daemon_uid = geteuid(), .skip_owner_checks = true},
        .host_api = fh_host_api(),
        .inputs_for = fh_inputs_for,
        .inputs_ud = &ev->inputs,
        .hook_deadline_ms = ev->cfg->hooks.deadline_ms};
    ev->reg = fh_registry_new(&ro);
    if (!ev->reg) {
        fh_evaluator_free(ev);
        return NULL;
    }
    return ev;
}

void fh_evaluator_free(fh_evaluator *ev)
{
    if (!ev)
        return;
    fh_registry_free(ev->reg, 1000);
    fh_inputs_provider_clear(&ev->inputs);
    if (ev->cache[0])
        nftw(ev->cache, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    for (size_t i = 0; i < ev->nloaded; i++)
        free(ev->loaded[i].file);
    free(ev->loaded);
    for (size_t i = 0; i < ev->nfiles; i++)
        free(ev->files[i].file);
    free(ev->files);
    fh_flags_free(ev->flags);
    fh_config_free(ev->cfg);
    free(ev);
}

/* The overlay name of `file`, loading it the first time. */
static const char *evaluator_load(fh_evaluator *ev, const char *file)
{
    for (size_t i = 0; i < ev->nloaded; i++)
        if (strcmp(ev->loaded[i].file, file) == 0)
            return ev->loaded[i].name;
    char name[FUSION_NAME_MAX + 1] = "", msg[1024];
    if (fh_registry_load(ev->reg, file, msg, sizeof(msg), name) != FH_LOAD_OK)
        return NULL;
    struct loaded *g = realloc(ev->loaded, (ev->nloaded + 1) * sizeof(*g));
    if (!g)
        return NULL;
    ev->loaded = g;
    g[ev->nloaded].file = strdup(file);
    fh_strlcpy(g[ev->nloaded].name, name, sizeof(g[ev->nloaded].name));
    return ev->loaded[ev->nloaded++].name;
}

json_t *fh_evaluator_run(fh_evaluator *ev, const char *file, const json_t *s,
                         const char *request_body, const char *answer)
{
    if (ev->broken)
        return NULL;
    const char *name = evaluator_load(ev, file);
    fh_generation *g = name ? fh_registry_acquire(ev->reg, name, NULL) : NULL;
    if (!g)
        return NULL;
    char err[256];
    fusion_request *req = fh_request_parse(request_body, strlen(request_body), err, sizeof(err));
    json_t *conf = json_object_get(s, "confidence");
    if (req)
        fh_request_set_context(req, json_string_value(json_object_get(s, "scenario_type")),
                               json_string_value(json_object_get(s, "id")), NULL,
                               json_is_number(conf) ? json_number_value(conf) : -1);
    json_t *out = NULL;
    fusion_evaluation e;
    char *copy = strdup(answer);
    int rc = req && copy ? fh_generation_evaluate(g, req, copy, strlen(copy), &e) : -1;
    if (rc == FH_GENERATION_TIMEOUT) {
        /* The abandoned call may still read the request, the answer and the
         * plugin: all stay as they are, and this evaluator is done. */
        fprintf(stderr,
                "fusion-host: overlay %s: evaluate() passed hooks.deadline_ms; no more "
                "scores from it in this run\n",
                name);
        ev->broken = true;
        return NULL;
    }
    free(copy);
    if (rc == 0) {
        json_t *rules = json_object();
        for (size_t i = 0; i < e.rule_count; i++)
            if (e.rules[i].name)
                json_object_set_new(rules, e.rules[i].name,
                                    json_pack("{s:f, s:b}", "score", e.rules[i].score, "passed",
                                              e.rules[i].passed != 0));
        out = json_pack("{s:f, s:o}", "quality_score", e.quality, "rules", rules);
    }
    if (req)
        fh_request_free(req);
    fh_generation_release(g);
    return out;
}

/* The file the private daemon loaded overlay `name` from, asked once. */
static const char *evaluator_file(fh_evaluator *ev, fh_runner *r, const char *name)
{
    for (size_t i = 0; i < ev->nfiles; i++)
        if (strcmp(ev->files[i].name, name) == 0)
            return ev->files[i].file;
    char path[FUSION_NAME_MAX + 32], *info = NULL;
    snprintf(path, sizeof(path), "/admin/overlays/%s", name);
    json_t *o = fh_runner_admin(r, "GET", path, &info) == 200 ? json_loads(info, 0, NULL) : NULL;
    free(info);
    const char *file = json_string_value(json_object_get(o, "file"));
    struct named_file *g = file ? realloc(ev->files, (ev->nfiles + 1) * sizeof(*g)) : NULL;
    char *copy = g ? strdup(file) : NULL;
    json_decref(o);
    if (g)
        ev->files = g;
    if (!copy)
        return NULL;
    fh_strlcpy(g[ev->nfiles].name, name, sizeof(g[ev->nfiles].name));
    g[ev->nfiles].file = copy;
    return ev->files[ev->nfiles++].file;
}

json_t *fh_golden_score(fh_runner *r, fh_evaluator *ev, const json_t *scenario,
                        const char *request_body, const json_t *answer)
{
    const char *overlay =
        json_string_value(json_object_get(json_object_get(answer, "fusion"), "overlay"));
    const char *text = json_string_value(json_object_get(
        json_object_get(json_array_get(json_object_get(answer, "choices"), 0), "message"),
        "content"));
    const char *file = overlay && text && ev ? evaluator_file(ev, r, overlay) : NULL;
    return file ? fh_evaluator_run(ev, file, scenario, request_body, text) : NULL;
}

/* Every request parameter but the conversation: what the overlay tuned. */
static json_t *sampling_of(const json_t *upstream)
{
    json_t *s = json_object();
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)upstream, k, v)
    {
        if (strcmp(k, "model") != 0 && strcmp(k, "messages") != 0 && strcmp(k, "stream") != 0 &&
            strcmp(k, "stream_options") != 0)
            json_object_set(s, k, v);
    }
    return s;
}

/* Runs scenario s once and describes it in the golden file's shape. */
static json_t *capture(fh_runner *r, fh_evaluator *evr, const json_t *s, char *err, size_t errlen)
{
    char *body = fh_golden_request(s);
    fh_run_result res;
    fh_runner_clear_upstream(r); /* "last" is this scenario's, or nothing */
    if (!body || fh_runner_chat(r, body, &res) != 0) {
        snprintf(err, errlen, "the daemon did not answer");
        free(body);
        return NULL;
    }
    json_t *answer = json_loadb(res.body, res.len, 0, NULL);
    free(res.body);
    json_t *fusion = json_object_get(answer, "fusion");
    json_t *routing = json_pack("{s:I, s:O?, s:O?, s:O?, s:O?}", "status", (json_int_t)res.status,
                                "decision", json_object_get(fusion, "decision"), "overlay",
                                json_object_get(fusion, "overlay"), "version",
                                json_object_get(fusion, "overlay_version"), "reason",
                                json_object_get(fusion, "reason"));
    char *last = fh_runner_upstream_last(r);
    json_t *upstream = last ? json_loads(last, 0, NULL) : NULL;
    json_t *g = json_pack("{s:i, s:O, s:s, s:s, s:o, s:o, s:o}", "format", 1, "scenario",
                          json_object_get(s, "id"), "host_version", FH_VERSION, "config_hash",
                          fh_runner_config_hash(r), "routing", routing, "upstream_request",
                          upstream ? json_incref(upstream) : json_null(), "sampling",
                          upstream ? sampling_of(upstream) : json_null());
    /* The scores: the daemon's, and each rule's from the same plugin.
     * Without the stub the rewritten request is unknown; the caller's
     * carries the same context for the scoring. */
    json_t *ev = fh_golden_score(r, evr, s, last ? last : body, answer);
    if (ev)
        json_object_set(ev, "quality_score", json_object_get(fusion, "quality_score"));
    else
        ev = json_null();
    json_object_set_new(g, "evaluation", ev);
    free(body);
    json_decref(upstream);
    free(last);
    json_decref(answer);
    return g;
}

/* ---- comparison -------------------------------------------------------------------- */

typedef struct text {
    char *buf;
    size_t len, cap;
} textbuf;

static void put(textbuf *t, const char *s, size_t n)
{
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 1024;
        while (cap < t->len + n + 1)
            cap *= 2;
        char *g = realloc(t->buf, cap);
        if (!g)
            return;
        t->buf = g;
        t->cap = cap;
    }
    memcpy(t->buf + t->len, s, n);
    t->len += n;
    t->buf[t->len] = '\0';
}

/* One line per value, "path: value"; a text with newlines one line per
 * line of it, so a changed word in a directive shows as one changed line. */
static void render(textbuf *t, const char *path, const json_t *j)
{
    char sub[512];
    if (json_is_object(j)) {
        const char **keys = calloc(json_object_size(j) + 1, sizeof(*keys));
        size_t n = 0;
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)j, k, v) keys[n++] = k;
        for (size_t a = 0; keys && a < n; a++) /* sorted: stable diffs */
            for (size_t b = a + 1; b < n; b++)
                if (strcmp(keys[b], keys[a]) < 0) {
                    const char *x = keys[a];
                    keys[a] = keys[b];
                    keys[b] = x;
                }
        for (size_t a = 0; keys && a < n; a++) {
            snprintf(sub, sizeof(sub), "%s%s%s", path, *path ? "." : "", keys[a]);
            render(t, sub, json_object_get(j, keys[a]));
        }
        free(keys);
    } else if (json_is_array(j)) {
        size_t i;
        json_t *v;
        json_array_foreach((json_t *)j, i, v)
        {
            snprintf(sub, sizeof(sub), "%s[%zu]", path, i);
            render(t, sub, v);
        }
    } else if (json_is_string(j) && strchr(json_string_value(j), '\n')) {
        for (const char *p = json_string_value(j); *p;) {
            size_t n = strcspn(p, "\n");
            put(t, path, strlen(path));
            put(t, " | ", 3);
            put(t, p, n);
            put(t, "\n", 1);
            p += n + (p[n] == '\n');
        }
    } else {
        char *v = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT | JSON_REAL_PRECISION(10));
        put(t, path, strlen(path));
        put(t, ": ", 2);
        if (v)
            put(t, v, strlen(v));
        put(t, "\n", 1);
        free(v);
    }
}

static char *pretty(const json_t *j)
{
    textbuf t = {0};
    render(&t, "", j);
    if (!t.buf)
        return strdup("");
    if (t.len && t.buf[t.len - 1] == '\n')
        t.buf[--t.len] = '\0';
    return t.buf;
}

/* Splits text into lines (in place). */
static size_t lines_of(char *text, char ***out)
{
    size_t n = 1;
    for (char *p = text; *p; p++)
        n += *p == '\n';
    char **v = calloc(n, sizeof(*v));
    size_t k = 0;
    for (char *p = text; v && p;) {
        v[k++] = p;
        char *nl = strchr(p, '\n');
        if (nl)
            *nl++ = '\0';
        p = nl;
    }
    *out = v;
    return v ? k : 0;
}

/* A unified-style diff of two texts (LCS over lines), labelled. */
static void print_diff(const char *label, const json_t *want, const json_t *got)
{
    char *a = pretty(want), *b = pretty(got);
    char **la = NULL, **lb = NULL;
    size_t na = a ? lines_of(a, &la) : 0, nb = b ? lines_of(b, &lb) : 0;
    unsigned short *t = calloc((na + 1) * (nb + 1), sizeof(*t));
    if (!t || na > 4000 || nb > 4000) {
        printf("  %s differs (too large to diff)\n", label);
    } else {
        for (size_t i = na; i-- > 0;)
            for (size_t j = nb; j-- > 0;)
                t[i * (nb + 1) + j] = strcmp(la[i], lb[j]) == 0
                                          ? (unsigned short)(t[(i + 1) * (nb + 1) + j + 1] + 1)
                                          : (t[(i + 1) * (nb + 1) + j] > t[i * (nb + 1) + j + 1]
                                                 ? t[(i + 1) * (nb + 1) + j]
                                                 : t[i * (nb + 1) + j + 1]);
        printf("  --- golden %s\n  +++ now    %s\n", label, label);
        /* The edit script (golden lines removed before current ones added),
         * then printed with two unchanged lines of context around each. */
        size_t cap = na + nb + 1, nops = 0;
        char *op = malloc(cap);
        const char **line = malloc(cap * sizeof(*line));
        size_t i = 0, j = 0;
        while (op && line && (i < na || j < nb)) {
            if (i < na && j < nb && strcmp(la[i], lb[j]) == 0) {
                op[nops] = ' ', line[nops++] = la[i];
                i++, j++;
            } else if (i < na &&
                       (j == nb || t[(i + 1) * (nb + 1) + j] >= t[i * (nb + 1) + j + 1])) {
                op[nops] = '-', line[nops++] = la[i++];
            } else {
                op[nops] = '+', line[nops++] = lb[j++];
            }
        }
        bool skipped = false;
        for (size_t k = 0; op && line && k < nops; k++) {
            bool near = op[k] != ' ';
            for (size_t d = 1; d <= 2 && !near; d++)
                near = (k >= d && op[k - d] != ' ') || (k + d < nops && op[k + d] != ' ');
            if (!near) {
                if (!skipped)
                    printf("   ...\n");
                skipped = true;
                continue;
            }
            skipped = false;
            printf("  %c%s\n", op[k], line[k]);
        }
        free(op);
        free(line);
    }
    free(t);
    free(la);
    free(lb);
    free(a);
    free(b);
}

/* JSON equality where numbers match within a relative 1e-9: a file holds
 * 10 significant digits, the daemon's answer all of them. */
static bool near_equal(const json_t *a, const json_t *b)
{
    if (json_is_number(a) && json_is_number(b)) {
        double x = json_number_value(a), y = json_number_value(b);
        return fabs(x - y) <= 1e-9 * fmax(1.0, fmax(fabs(x), fabs(y)));
    }
    if (json_typeof(a) != json_typeof(b))
        return false;
    if (json_is_object(a)) {
        if (json_object_size(a) != json_object_size(b))
            return false;
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)a, k, v)
        {
            json_t *w = json_object_get(b, k);
            if (!w || !near_equal(v, w))
                return false;
        }
        return true;
    }
    if (json_is_array(a)) {
        if (json_array_size(a) != json_array_size(b))
            return false;
        for (size_t i = 0; i < json_array_size(a); i++)
            if (!near_equal(json_array_get(a, i), json_array_get(b, i)))
                return false;
        return true;
    }
    return json_equal((json_t *)a, (json_t *)b);
}

/* Scores within tolerance; everything else exact. Prints what differs. */
static bool evaluation_matches(const json_t *want, const json_t *got, double tol)
{
    if (json_is_null(want) || json_is_null(got)) {
        if (json_is_null(want) != json_is_null(got))
            printf("  evaluation: %s\n", json_is_null(got) ? "golden has scores, none now"
                                                           : "scores now, none in the golden file");
        return json_is_null(want) == json_is_null(got);
    }
    double q0 = json_number_value(json_object_get(want, "quality_score"));
    double q1 = json_number_value(json_object_get(got, "quality_score"));
    bool ok = fabs(q0 - q1) <= tol;
    if (!ok)
        printf("  quality_score: golden %.3f, now %.3f (tolerance %.3f)\n", q0, q1, tol);
    json_t *r0 = json_object_get(want, "rules"), *r1 = json_object_get(got, "rules");
    const char *k;
    json_t *v;
    json_object_foreach(r0, k, v)
    {
        json_t *w = json_object_get(r1, k);
        if (!w) {
            printf("  rule %s: in the golden file, no longer reported\n", k);
            ok = false;
            continue;
        }
        double s0 = json_number_value(json_object_get(v, "score"));
        double s1 = json_number_value(json_object_get(w, "score"));
        bool p0 = json_is_true(json_object_get(v, "passed"));
        bool p1 = json_is_true(json_object_get(w, "passed"));
        if (fabs(s0 - s1) > tol || p0 != p1) {
            printf("  rule %s: golden %.3f (%s), now %.3f (%s)\n", k, s0, p0 ? "pass" : "fail", s1,
                   p1 ? "pass" : "fail");
            ok = false;
        }
    }
    json_object_foreach(r1, k, v)
    {
        if (!json_object_get(r0, k)) {
            printf("  rule %s: new, not in the golden file\n", k);
            ok = false;
        }
    }
    return ok;
}

/* 0 match, 1 regression. */
static int validate_one(const json_t *want, const json_t *got, double tol, bool has_stub)
{
    int rc = 0;
    if (!near_equal(json_object_get(want, "routing"), json_object_get(got, "routing"))) {
        print_diff("routing", json_object_get(want, "routing"), json_object_get(got, "routing"));
        rc = 1;
    }
    if (has_stub) {
        const char *parts[] = {"sampling", "upstream_request"};
        for (size_t i = 0; i < 2; i++) {
            if (!near_equal(json_object_get(want, parts[i]), json_object_get(got, parts[i]))) {
                print_diff(parts[i], json_object_get(want, parts[i]),
                           json_object_get(got, parts[i]));
                rc = 1;
            }
        }
    }
    if (!evaluation_matches(json_object_get(want, "evaluation"), json_object_get(got, "evaluation"),
                            tol))
        rc = 1;
    return rc;
}

/* ---- the command -------------------------------------------------------------------- */

static int usage(const char *msg, const char *arg)
{
    fprintf(stderr, "fusion-host golden: ");
    fprintf(stderr, msg, arg);
    fprintf(stderr, "\nusage: fusion-host golden validate [--critical-only] [--scenario ID]... "
                    "[--all]\n"
                    "       fusion-host golden update --scenario ID... | --all\n"
                    "       [--golden-dir DIR] [-c FILE] [--upstream URL] [--tolerance X]\n");
    return EXIT_USAGE;
}

int fh_golden_main(int argc, char **argv)
{
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        printf("usage: fusion-host golden validate [--critical-only] [--scenario ID]... [--all]\n"
               "       fusion-host golden update --scenario ID... | --all\n"
               "       [--golden-dir DIR] [-c FILE] [--upstream URL] [--tolerance X]\n"
               "exit: 0 pass, 1 regression (or the daemon could not run), 2 usage or unknown "
               "scenario\n");
        return 0;
    }
    if (argc < 2 || (strcmp(argv[1], "validate") != 0 && strcmp(argv[1], "update") != 0))
        return usage("needs validate or update%s", "");
    bool update = strcmp(argv[1], "update") == 0, all = false, critical_only = false;
    const char *dir = DEFAULT_GOLDEN_DIR, *config = DEFAULT_CONFIG, *upstream = NULL;
    double tol = DEFAULT_TOLERANCE;
    const char **ids = calloc((size_t)argc, sizeof(*ids));
    size_t nids = 0;
    if (!ids)
        return 1;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        bool more = i + 1 < argc;
        if (!strcmp(a, "--all"))
            all = true;
        else if (!strcmp(a, "--critical-only") && !update)
            critical_only = true;
        else if (!strcmp(a, "--scenario") && more)
            ids[nids++] = argv[++i];
        else if (!strcmp(a, "--golden-dir") && more)
            dir = argv[++i];
        else if ((!strcmp(a, "-c") || !strcmp(a, "--config")) && more)
            config = argv[++i];
        else if (!strcmp(a, "--upstream") && more)
            upstream = argv[++i];
        else if (!strcmp(a, "--tolerance") && more) {
            char *end = NULL;
            tol = strtod(argv[++i], &end);
            if (!end || *end || !(tol >= 0 && tol <= 1)) {
                free(ids);
                return usage("--tolerance needs a number from 0 to 1, not '%s'", argv[i]);
            }
        } else {
            free(ids);
            return usage("unexpected argument '%s'", a);
        }
    }
    if (update && !all && nids == 0) {
        free(ids);
        return usage("update needs --scenario ID or --all%s", "");
    }
    if (all && nids) {
        free(ids);
        return usage("--all and --scenario ask for different things; give one%s", "");
    }
    /* RESON_FEATURES reaches the private daemon: fine for a rollback test,
     * never for recording what the overlays do. */
    const char *reson = getenv("RESON_FEATURES");
    if (update && reson) {
        free(ids);
        fprintf(stderr,
                "fusion-host golden: RESON_FEATURES is set (\"%s\"): unset it before "
                "recording golden files\n",
                reson);
        return EXIT_USAGE;
    }
    if (reson)
        printf("note: RESON_FEATURES=\"%s\" applies to this run's routing\n", reson);
    char err[1200];
    json_t *root = fh_golden_load_scenarios(dir, err, sizeof(err));
    if (!root) {
        free(ids);
        fprintf(stderr, "fusion-host golden: %s\n", err);
        return EXIT_USAGE;
    }
    json_t *list = json_object_get(root, "scenarios");
    for (size_t k = 0; k < nids; k++) {
        bool known = false;
        size_t i;
        json_t *s;
        json_array_foreach(list, i, s) known =
            known || strcmp(json_string_value(json_object_get(s, "id")), ids[k]) == 0;
        if (!known) {
            fprintf(stderr,
                    "fusion-host golden: unknown scenario '%s' (not in %s/scenarios.yaml)\n",
                    ids[k], dir);
            free(ids);
            json_decref(root);
            return EXIT_USAGE;
        }
    }
    fh_runner *r = fh_runner_start(config, upstream, err, sizeof(err));
    if (!r) {
        fprintf(stderr, "fusion-host golden: %s\n", err);
        free(ids);
        json_decref(root);
        return 1;
    }
    fh_evaluator *evr = fh_evaluator_new(config);
    if (!fh_runner_has_stub(r))
        printf("note: --upstream given: the upstream request cannot be seen, so routing and "
               "scores are compared, not the rewritten request\n");
    size_t ran = 0, failed = 0, hash_changed = 0;
    size_t i;
    json_t *s;
    json_array_foreach(list, i, s)
    {
        const char *id = json_string_value(json_object_get(s, "id"));
        bool picked = nids == 0;
        for (size_t k = 0; k < nids; k++)
            picked = picked || strcmp(ids[k], id) == 0;
        if (critical_only && !json_is_true(json_object_get(s, "critical"))) {
            if (picked && nids)
                printf("note: %s is not critical: skipped (--critical-only)\n", id);
            picked = false;
        }
        if (fh_runner_interrupted())
            break;
        if (!picked)
            continue;
        ran++;
        json_t *got = capture(r, evr, s, err, sizeof(err));
        char path[4200];
        snprintf(path, sizeof(path), "%s/%s_golden.json", dir, id);
        if (!got) {
            printf("FAIL %s: %s\n", id, err);
            failed++;
            continue;
        }
        /* The scenario says which overlay it is for: routing elsewhere is a
         * regression whatever the golden file says, and is never recorded. */
        const char *expected = json_string_value(json_object_get(s, "expected_overlay"));
        const char *routed =
            json_string_value(json_object_get(json_object_get(got, "routing"), "overlay"));
        bool misrouted = expected && strcmp(expected, routed ? routed : "baseline") != 0;
        char misroute[300] = "";
        if (misrouted)
            snprintf(misroute, sizeof(misroute), "routed to %s, but scenarios.yaml expects %s",
                     routed ? routed : "the baseline", expected);
        if (update && misrouted) {
            printf("FAIL %s: %s; not recorded\n", id, misroute);
            failed++;
            json_decref(got);
            continue;
        }
        long status =
            (long)json_integer_value(json_object_get(json_object_get(got, "routing"), "status"));
        if (update &&
            (status != 200 || (routed && json_is_null(json_object_get(got, "evaluation"))))) {
            printf("FAIL %s: %s; not recorded\n", id,
                   status != 200 ? "the daemon did not answer 200"
                                 : "no scores for an overlaid answer");
            failed++;
            json_decref(got);
            continue;
        }
        if (update) {
            if (json_dump_file(got, path,
                               JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(10)) != 0) {
                printf("FAIL %s: cannot write %s: %s\n", id, path, strerror(errno));
                failed++;
            } else {
                printf("updated %s\n", path);
            }
            json_decref(got);
            continue;
        }
        json_error_t jerr;
        json_t *want = json_load_file(path, 0, &jerr);
        if (!want) {
            printf("FAIL %s: no golden file %s (%s); record it with `fusion-host golden update "
                   "--scenario %s`\n",
                   id, path, jerr.text, id);
            failed++;
            json_decref(got);
            continue;
        }
        const char *h0 = json_string_value(json_object_get(want, "config_hash"));
        if (h0 && strcmp(h0, fh_runner_config_hash(r)) != 0)
            hash_changed++;
        printf("%s %s%s\n", "----", id,
               json_is_true(json_object_get(s, "critical")) ? " (critical)" : "");
        int differs = validate_one(want, got, tol, fh_runner_has_stub(r));
        if (misrouted)
            printf("  %s\n", misroute);
        if (differs || misrouted) {
            printf("FAIL %s: differs from %s\n", id, path);
            failed++;
        } else {
            printf("ok   %s\n", id);
        }
        json_decref(want);
        json_decref(got);
    }
    bool stopped = fh_runner_interrupted();
    fh_runner_stop(r);
    fh_evaluator_free(evr);
    if (stopped) {
        fprintf(stderr, "fusion-host golden: interrupted; %zu scenario(s) done\n", ran);
        free(ids);
        json_decref(root);
        return 130;
    }
    if (hash_changed)
        printf("note: the configuration changed since %zu golden file(s) were captured "
               "(config_hash); the checks above say whether it mattered\n",
               hash_changed);
    printf("golden %s: %zu scenario(s), %zu %s\n", update ? "update" : "validate", ran, failed,
           update ? "failed" : "regressed");
    free(ids);
    json_decref(root);
    return failed ? EXIT_REGRESSION : 0;
}
