/*
 * stress.c - plugin-test's engine: one run of an overlay's hooks, the
 * contract check of its results, the same run from several threads
 * compared with the first, and the child process all of it runs in.
 *
 * Owns: the child (fork, its pipe, the shared slots, the deadline watch in
 * the parent) and, in the child, the stress threads and their findings.
 *
 * Invariants: every call into plugin code made here is bracketed by
 * fh_bench_enter/leave on the caller's own slot, so the parent can always
 * say which hook a dead or stuck child was in. A stress thread writes only
 * its slot, its findings and the timing entries of the runs it took (a run
 * number is taken by exactly one thread); the findings are merged after
 * every thread is joined. The parent never runs plugin code.
 */
#include "stress.h"

#include "request.h"
#include "util.h"
#include "yamlutil.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- slots ------------------------------------------------------------- */

void fh_bench_enter(fh_bench_shared *s, int slot, int hook, unsigned long run)
{
    if (!s)
        return;
    fh_bench_slot *sl = &s->slot[slot];
    atomic_store(&sl->run, run);
    atomic_store(&sl->start_ns, fh_now_ns());
    atomic_store(&sl->hook, hook); /* last: a reader that sees it sees the rest */
}

void fh_bench_leave(fh_bench_shared *s, int slot)
{
    if (!s)
        return;
    int hook = atomic_exchange(&s->slot[slot].hook, FH_BENCH_IDLE);
    if (hook == FH_HOOK_MATCH || hook == FH_HOOK_APPLY || hook == FH_HOOK_EVALUATE)
        atomic_fetch_add(&s->calls, 1);
}

const char *fh_bench_hook_name(int hook)
{
    if (hook == FH_BENCH_LOAD)
        return "load (dlopen, entry, init())";
    if (hook == FH_HOOK_FINI)
        return "unload (fini(), dlclose)";
    if (hook >= 0 && hook < FH_HOOK_KIND_COUNT)
        return fh_hook_kind_name((fh_hook_kind)hook);
    return "host code";
}

const char *fh_signal_name(int signo)
{
    static const struct {
        int no;
        const char *name;
    } names[] = {{SIGSEGV, "SIGSEGV"}, {SIGBUS, "SIGBUS"},   {SIGILL, "SIGILL"},
                 {SIGFPE, "SIGFPE"},   {SIGABRT, "SIGABRT"}, {SIGSYS, "SIGSYS"},
                 {SIGTRAP, "SIGTRAP"}, {SIGKILL, "SIGKILL"}, {SIGTERM, "SIGTERM"},
                 {SIGINT, "SIGINT"},   {SIGPIPE, "SIGPIPE"}, {SIGXCPU, "SIGXCPU"},
                 {SIGXFSZ, "SIGXFSZ"}, {SIGALRM, "SIGALRM"}, {SIGHUP, "SIGHUP"}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (names[i].no == signo)
            return names[i].name;
    return "a signal";
}

/* ---- one run ------------------------------------------------------------ */

int fh_stress_sample_run(const fh_stress_input *in, int slot, unsigned long run,
                         fh_stress_sample *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    fusion_request *req = fh_request_parse(in->body, in->body_len, err, errlen);
    if (!req)
        return -1;
    if (!req->request_id && in->request_id && fh_request_set_id(req, in->request_id) != 0) {
        snprintf(err, errlen, "cannot set the request id '%s'", in->request_id);
        fh_request_free(req);
        return -1;
    }
    uint64_t t0 = fh_now_ns();
    fh_bench_enter(in->shared, slot, FH_HOOK_MATCH, run);
    out->match = fh_generation_match(in->gen, req);
    fh_bench_leave(in->shared, slot);
    uint64_t t1 = fh_now_ns();
    fh_bench_enter(in->shared, slot, FH_HOOK_APPLY, run);
    out->apply_rc = fh_generation_apply(in->gen, req);
    fh_bench_leave(in->shared, slot);
    uint64_t t2 = fh_now_ns();
    out->request = fh_request_dump(req, 1);
    uint64_t t3 = fh_now_ns();
    fh_bench_enter(in->shared, slot, FH_HOOK_EVALUATE, run);
    out->eval_rc = fh_generation_evaluate(in->gen, req, in->answer ? in->answer : "",
                                          in->answer ? in->answer_len : 0, &out->eval);
    fh_bench_leave(in->shared, slot);
    uint64_t t4 = fh_now_ns();
    out->ns[FH_STRESS_MATCH] = t1 - t0;
    out->ns[FH_STRESS_APPLY] = t2 - t1;
    out->ns[FH_STRESS_EVALUATE] = t4 - t3;
    fh_request_free(req);
    if (!out->request) {
        snprintf(err, errlen, "out of memory printing the rewritten request");
        return -1;
    }
    return 0;
}

void fh_stress_sample_clear(fh_stress_sample *s)
{
    free(s->request);
    s->request = NULL;
}

/* ---- the contract --------------------------------------------------------- */

typedef void (*breach_fn)(void *ud, const char *kind, const char *message);

static void breach(breach_fn fn, void *ud, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void breach(breach_fn fn, void *ud, const char *kind, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fn(ud, kind, msg);
}

/* A plugin's string for a message: at most 64 bytes, non-printables as '?'. */
static void printable(char *out, size_t len, const char *s)
{
    size_t n = 0;
    for (; s && s[n] && n < 64 && n + 1 < len; n++)
        out[n] = s[n] >= 0x20 && s[n] < 0x7f ? s[n] : '?';
    out[n] = '\0';
}

static bool in_unit(double v)
{
    return v >= 0.0 && v <= 1.0; /* false for NaN too */
}

static size_t check_sample(const fh_stress_sample *s, breach_fn fn, void *ud)
{
    size_t n = 0;
    if (!in_unit(s->match))
        n++, breach(fn, ud, "match",
                    "match() returned %g: a match score is in [0,1] (0: not for me)", s->match);
    if (s->apply_rc != 0)
        n++, breach(fn, ud, "apply",
                    "apply() returned %d: the daemon would serve such requests the baseline "
                    "(hook_error)",
                    s->apply_rc);
    if (s->eval_rc != 0)
        n++, breach(fn, ud, "evaluate",
                    "evaluate() returned %d: the daemon would count the answer as not scored "
                    "(hook_error)",
                    s->eval_rc);
    const fusion_evaluation *ev = &s->eval;
    if (!in_unit(ev->quality))
        n++, breach(fn, ud, "quality", "evaluate() set the quality to %g: it must be in [0,1]",
                    ev->quality);
    if (ev->rule_count > FUSION_EVAL_MAX_RULES)
        n++, breach(fn, ud, "rule_count",
                    "evaluate() set rule_count to %zu: at most %d rules fit; add them with "
                    "fusion_eval_add()",
                    ev->rule_count, FUSION_EVAL_MAX_RULES);
    size_t rules = ev->rule_count < FUSION_EVAL_MAX_RULES ? ev->rule_count : FUSION_EVAL_MAX_RULES;
    for (size_t i = 0; i < rules; i++) {
        const fusion_rule_result *r = &ev->rules[i];
        char name[80];
        printable(name, sizeof(name), r->name);
        if (!r->name)
            n++, breach(fn, ud, "rule_name", "evaluate(): rule %zu has no name", i + 1);
        else if (!fh_valid_word(r->name))
            n++, breach(fn, ud, "rule_name",
                        "evaluate(): rule %zu is named \"%s\": a rule name is [a-z0-9_]+, at most "
                        "64 characters",
                        i + 1, name);
        if (!in_unit(r->score))
            n++, breach(fn, ud, "rule_score",
                        "evaluate(): rule %s scored %g: a rule score must be in [0,1]",
                        r->name ? name : "(unnamed)", r->score);
    }
    return n;
}

static void add_to_diag(void *ud, const char *kind, const char *message)
{
    (void)kind;
    fh_diag_add(ud, "%s", message);
}

size_t fh_stress_contract_check(const fh_stress_sample *s, fh_diag *out)
{
    return check_sample(s, add_to_diag, out);
}

/* ---- findings ------------------------------------------------------------- */

/* One kind of difference (or of contract breach) and how often it was seen. */
typedef struct finding {
    char key[64];    /* "request", "rules[2].score", or a breach kind */
    char label[160]; /* for people: "rule idempotency score" */
    char where[64];  /* "line 7, column 30", or "" */
    char first[400]; /* the first run's value (a breach: its message) */
    char other[400]; /* this run's value */
    unsigned long count, first_run;
    int first_thread;
    uint64_t threads; /* bit t-1: seen on thread t */
} finding;

typedef struct findings {
    finding *v;
    size_t n, cap;
} findings;

/* The finding for `key`, new (zeroed, *fresh) when not seen yet; NULL when
 * out of memory. */
static finding *findings_get(findings *f, const char *key, bool *fresh)
{
    *fresh = false;
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->v[i].key, key) == 0)
            return &f->v[i];
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 8;
        finding *v = realloc(f->v, cap * sizeof(*v));
        if (!v)
            return NULL;
        f->v = v, f->cap = cap;
    }
    finding *x = &f->v[f->n++];
    memset(x, 0, sizeof(*x));
    fh_strlcpy(x->key, key, sizeof(x->key));
    *fresh = true;
    return x;
}

/* Counts one occurrence at (run, thread); the texts are kept from the
 * occurrence with the lowest run number. */
static void findings_note(findings *f, const char *key, const char *label, const char *where,
                          const char *first, const char *other, unsigned long run, int thread)
{
    bool fresh;
    finding *x = findings_get(f, key, &fresh);
    if (!x)
        return;
    x->count++;
    x->threads |= 1ull << ((thread - 1) & 63);
    if (fresh || run < x->first_run) {
        x->first_run = run;
        x->first_thread = thread;
        fh_strlcpy(x->label, label, sizeof(x->label));
        fh_strlcpy(x->where, where ? where : "", sizeof(x->where));
        fh_strlcpy(x->first, first, sizeof(x->first));
        fh_strlcpy(x->other, other ? other : "", sizeof(x->other));
    }
}

static void findings_merge(findings *into, const findings *from)
{
    for (size_t i = 0; i < from->n; i++) {
        const finding *y = &from->v[i];
        bool fresh;
        finding *x = findings_get(into, y->key, &fresh);
        if (!x)
            return;
        if (fresh || y->first_run < x->first_run) {
            unsigned long count = fresh ? 0 : x->count;
            uint64_t threads = fresh ? 0 : x->threads;
            *x = *y;
            x->count += count;
            x->threads |= threads;
        } else {
            x->count += y->count;
            x->threads |= y->threads;
        }
    }
}

static int by_first_run(const void *a, const void *b)
{
    const finding *x = a, *y = b;
    return x->first_run < y->first_run ? -1 : x->first_run > y->first_run;
}

/* ---- comparing a run with the first ------------------------------------------- */

/* The shortest %g text that reads back as v. */
static void fmt_double(char *out, size_t len, double v)
{
    static const char *const fmts[] = {"%.6g", "%.10g", "%.17g"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(out, len, fmts[i], v);
        if (strtod(out, NULL) == v)
            return;
    }
}

static bool same_double(double a, double b)
{
    return a == b || (isnan(a) && isnan(b));
}

static bool same_string(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/* The part of a line around column `col` (0-based), at most ~200 bytes. */
static void excerpt(char *out, size_t len, const char *line, size_t col)
{
    size_t n = strcspn(line, "\n"), from = col > 80 ? col - 80 : 0, to = n;
    if (to > from + 200)
        to = from + 200;
    while (from < to && (line[from] == ' ' || line[from] == '\t'))
        from++;
    snprintf(out, len, "%s%.*s%s", from > 0 && line[from - 1] != ' ' ? "..." : "", (int)(to - from),
             line + from, to < n ? "..." : "");
}

/* Where two texts first differ: "line L, column C" and both lines. */
static void text_difference(const char *a, const char *b, char *where, size_t wlen, char *ea,
                            char *eb, size_t elen)
{
    size_t i = 0, line = 1, line_start = 0;
    for (; a[i] && a[i] == b[i]; i++)
        if (a[i] == '\n')
            line++, line_start = i + 1;
    snprintf(where, wlen, "line %zu, column %zu", line, i - line_start + 1);
    excerpt(ea, elen, a + line_start, i - line_start);
    excerpt(eb, elen, b + line_start, i - line_start);
    if (!a[i] && !ea[0])
        fh_strlcpy(ea, "(end of the request)", elen);
    if (!b[i] && !eb[0])
        fh_strlcpy(eb, "(end of the request)", elen);
}

static void compare_number(findings *f, const char *key, const char *label, double first,
                           double got, unsigned long run, int thread)
{
    if (same_double(first, got))
        return;
    char a[40], b[40];
    fmt_double(a, sizeof(a), first);
    fmt_double(b, sizeof(b), got);
    findings_note(f, key, label, NULL, a, b, run, thread);
}

static void compare_text(findings *f, const char *key, const char *label, const char *first,
                         const char *got, unsigned long run, int thread)
{
    if (same_string(first, got))
        return;
    if (!first || !got) {
        findings_note(f, key, label, NULL, first ? first : "(none)", got ? got : "(none)", run,
                      thread);
        return;
    }
    char where[64], a[300], b[300];
    text_difference(first, got, where, sizeof(where), a, b, sizeof(a));
    findings_note(f, key, label, where, a, b, run, thread);
}

static void compare_rules(findings *f, const fusion_evaluation *x, const fusion_evaluation *y,
                          unsigned long run, int thread)
{
    size_t nx = x->rule_count < FUSION_EVAL_MAX_RULES ? x->rule_count : FUSION_EVAL_MAX_RULES;
    size_t ny = y->rule_count < FUSION_EVAL_MAX_RULES ? y->rule_count : FUSION_EVAL_MAX_RULES;
    compare_number(f, "rule_count", "rule count", (double)x->rule_count, (double)y->rule_count, run,
                   thread);
    for (size_t i = 0; i < nx && i < ny; i++) {
        const fusion_rule_result *a = &x->rules[i], *b = &y->rules[i];
        char key[64], label[160], name[80];
        if (a->name && fh_valid_word(a->name))
            snprintf(name, sizeof(name), "%s", a->name);
        else
            snprintf(name, sizeof(name), "%zu", i + 1);
        snprintf(key, sizeof(key), "rules[%zu].name", i);
        snprintf(label, sizeof(label), "rule %zu name", i + 1);
        compare_text(f, key, label, a->name, b->name, run, thread);
        snprintf(key, sizeof(key), "rules[%zu].score", i);
        snprintf(label, sizeof(label), "rule %s score", name);
        compare_number(f, key, label, a->score, b->score, run, thread);
        if (!a->passed != !b->passed) {
            snprintf(key, sizeof(key), "rules[%zu].passed", i);
            snprintf(label, sizeof(label), "rule %s passed", name);
            findings_note(f, key, label, NULL, a->passed ? "pass" : "fail",
                          b->passed ? "pass" : "fail", run, thread);
        }
        snprintf(key, sizeof(key), "rules[%zu].detail", i);
        snprintf(label, sizeof(label), "rule %s detail", name);
        compare_text(f, key, label, a->detail, b->detail, run, thread);
    }
}

static void compare_sample(findings *f, const fh_stress_sample *first, const fh_stress_sample *s,
                           unsigned long run, int thread)
{
    compare_number(f, "match_score", "match score", first->match, s->match, run, thread);
    compare_number(f, "apply_status", "apply() status", first->apply_rc, s->apply_rc, run, thread);
    compare_text(f, "request", "request (rewritten by apply)", first->request, s->request, run,
                 thread);
    compare_number(f, "evaluate_status", "evaluate() status", first->eval_rc, s->eval_rc, run,
                   thread);
    compare_number(f, "quality_score", "quality", first->eval.quality, s->eval.quality, run,
                   thread);
    compare_rules(f, &first->eval, &s->eval, run, thread);
}

/* ---- the threads -------------------------------------------------------------- */

enum { REQUEST_PATH = FH_STRESS_HOOKS, TIMINGS }; /* match + apply, as the budget counts */

typedef struct stress_run {
    const fh_stress_input *in;
    const fh_stress_sample *first;
    long runs;
    atomic_long next;         /* the last run number taken */
    uint64_t *ns[TIMINGS];    /* per run (index run - 1) */
    unsigned char *completed; /* per run */
} stress_run;

typedef struct worker {
    stress_run *sr;
    int index; /* 1..threads: its slot and its name in the report */
    pthread_t th;
    findings diffs, breaches;
    unsigned long run; /* the run being checked, for note_breach */
    char error[300];
} worker;

static void note_breach(void *ud, const char *kind, const char *message)
{
    worker *w = ud;
    findings_note(&w->breaches, kind, kind, NULL, message, NULL, w->run, w->index);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    stress_run *sr = w->sr;
    for (;;) {
        long run = atomic_fetch_add(&sr->next, 1) + 1;
        if (run > sr->runs)
            break;
        fh_stress_sample s;
        char err[256];
        if (fh_stress_sample_run(sr->in, w->index, (unsigned long)run, &s, err, sizeof(err)) != 0) {
            snprintf(w->error, sizeof(w->error), "thread %d, run %ld: %s", w->index, run, err);
            atomic_store(&sr->next, sr->runs); /* the others stop too */
            break;
        }
        for (int k = 0; k < FH_STRESS_HOOKS; k++)
            sr->ns[k][run - 1] = s.ns[k];
        sr->ns[REQUEST_PATH][run - 1] = s.ns[FH_STRESS_MATCH] + s.ns[FH_STRESS_APPLY];
        sr->completed[run - 1] = 1;
        compare_sample(&w->diffs, sr->first, &s, (unsigned long)run, w->index);
        w->run = (unsigned long)run;
        check_sample(&s, note_breach, w);
        fh_stress_sample_clear(&s);
    }
    return NULL;
}

/* ---- the report ------------------------------------------------------------------ */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile p (0..1] of n sorted values. */
static double percentile_us(const uint64_t *sorted, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t rank = (size_t)ceil(p * (double)n);
    return (double)sorted[rank ? rank - 1 : 0] / 1000.0;
}

static json_t *timing_json(const stress_run *sr, int which, uint64_t *scratch)
{
    size_t n = 0;
    for (long i = 0; i < sr->runs; i++)
        if (sr->completed[i])
            scratch[n++] = sr->ns[which][i];
    qsort(scratch, n, sizeof(*scratch), cmp_u64);
    return json_pack("{s:I, s:f, s:f, s:f, s:f}", "calls", (json_int_t)n, "p50_us",
                     percentile_us(scratch, n, 0.50), "p95_us", percentile_us(scratch, n, 0.95),
                     "p99_us", percentile_us(scratch, n, 0.99), "max_us",
                     percentile_us(scratch, n, 1.0));
}

static json_t *threads_json(uint64_t mask)
{
    json_t *a = json_array();
    for (int t = 0; t < 64; t++)
        if (mask & (1ull << t))
            json_array_append_new(a, json_integer(t + 1));
    return a;
}

static json_t *differences_json(findings *f)
{
    if (f->n > 1)
        qsort(f->v, f->n, sizeof(*f->v), by_first_run);
    json_t *a = json_array();
    for (size_t i = 0; i < f->n; i++) {
        const finding *x = &f->v[i];
        json_array_append_new(a,
                              json_pack("{s:s, s:s, s:I, s:o, s:I, s:i, s:s, s:s, s:s}", "field",
                                        x->key, "label", x->label, "runs", (json_int_t)x->count,
                                        "threads", threads_json(x->threads), "first_run",
                                        (json_int_t)x->first_run, "first_thread", x->first_thread,
                                        "where", x->where, "first", x->first, "this", x->other));
    }
    return a;
}

static json_t *breaches_json(findings *f)
{
    if (f->n > 1)
        qsort(f->v, f->n, sizeof(*f->v), by_first_run);
    json_t *a = json_array();
    for (size_t i = 0; i < f->n; i++) {
        const finding *x = &f->v[i];
        json_array_append_new(
            a, json_pack("{s:s, s:s, s:I, s:o, s:I, s:i}", "kind", x->key, "message", x->first,
                         "runs", (json_int_t)x->count, "threads", threads_json(x->threads),
                         "first_run", (json_int_t)x->first_run, "first_thread", x->first_thread));
    }
    return a;
}

static json_t *stress_report(stress_run *sr, worker *w, int threads, double seconds)
{
    findings diffs = {0}, breaches = {0};
    json_t *errors = json_array();
    for (int t = 0; t < threads; t++) {
        findings_merge(&diffs, &w[t].diffs);
        findings_merge(&breaches, &w[t].breaches);
        if (w[t].error[0])
            json_array_append_new(errors, json_string(w[t].error));
    }
    long completed = 0;
    for (long i = 0; i < sr->runs; i++)
        completed += sr->completed[i];
    uint64_t *scratch = malloc((size_t)sr->runs * sizeof(*scratch));
    json_t *hooks = NULL;
    if (scratch)
        hooks =
            json_pack("{s:o, s:o, s:o, s:o}", "match", timing_json(sr, FH_STRESS_MATCH, scratch),
                      "apply", timing_json(sr, FH_STRESS_APPLY, scratch), "evaluate",
                      timing_json(sr, FH_STRESS_EVALUATE, scratch), "match_apply",
                      timing_json(sr, REQUEST_PATH, scratch));
    free(scratch);
    json_t *report =
        json_pack("{s:I, s:i, s:I, s:f, s:o, s:o, s:o, s:o}", "runs", (json_int_t)sr->runs,
                  "threads", threads, "completed", (json_int_t)completed, "seconds", seconds,
                  "hooks", hooks ? hooks : json_null(), "differences", differences_json(&diffs),
                  "violations", breaches_json(&breaches), "errors", errors);
    free(diffs.v);
    free(breaches.v);
    return report;
}

json_t *fh_stress_run(const fh_stress_input *in, const fh_stress_sample *first, long runs,
                      int threads)
{
    if (runs < 1 || threads < 1 || threads > FH_STRESS_MAX_THREADS)
        return NULL;
    stress_run sr = {.in = in, .first = first, .runs = runs};
    atomic_init(&sr.next, 0);
    bool ok = true;
    for (int k = 0; k < TIMINGS; k++)
        ok = (sr.ns[k] = calloc((size_t)runs, sizeof(uint64_t))) != NULL && ok;
    sr.completed = calloc((size_t)runs, 1);
    worker *w = calloc((size_t)threads, sizeof(*w));
    json_t *report = NULL;
    if (ok && sr.completed && w) {
        if (in->shared)
            atomic_store(&in->shared->nslots, threads + 1);
        uint64_t t0 = fh_now_ns();
        int started = 0;
        for (int t = 0; t < threads; t++) {
            w[t].sr = &sr;
            w[t].index = t + 1;
            if (pthread_create(&w[t].th, NULL, worker_main, &w[t]) != 0) {
                snprintf(w[t].error, sizeof(w[t].error),
                         "thread %d could not be started: %s; fewer threads ran", t + 1,
                         strerror(errno));
                break;
            }
            started++;
        }
        if (started == 0) /* no threads at all: the runs still get made */
            worker_main(&w[0]);
        for (int t = 0; t < started; t++)
            pthread_join(w[t].th, NULL);
        double seconds = (double)(fh_now_ns() - t0) / 1e9;
        report = stress_report(&sr, w, threads, seconds);
    }
    for (int t = 0; w && t < threads; t++)
        free(w[t].diffs.v), free(w[t].breaches.v);
    free(w);
    for (int k = 0; k < TIMINGS; k++)
        free(sr.ns[k]);
    free(sr.completed);
    return report;
}

/* ---- the child ------------------------------------------------------------------- */

int fh_bench_send(int report_fd, const json_t *doc)
{
    char *text = json_dumps(doc, JSON_COMPACT);
    if (!text)
        return -1;
    size_t len = strlen(text);
    text[len] = '\n'; /* json_dumps' NUL: the line ends there instead */
    int rc = 0;
    for (size_t off = 0; off < len + 1;) {
        ssize_t n = write(report_fd, text + off, len + 1 - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = -1;
            break;
        }
        off += (size_t)n;
    }
    free(text);
    return rc;
}

/* The child dies of what the plugin does, so the parent sees the signal:
 * no sanitizer or host handler in the way, no core file left behind. */
static void child_setup(void)
{
    static const int fatal[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT, SIGSYS, SIGTRAP};
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_DFL;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof(fatal) / sizeof(fatal[0]); i++)
        sigaction(fatal[i], &sa, NULL);
    struct rlimit no_core = {0, 0};
    setrlimit(RLIMIT_CORE, &no_core);
}

/* The slot of a hook running past the deadline, or -1. */
static int past_deadline(fh_bench_shared *sh, int deadline_ms)
{
    if (deadline_ms <= 0)
        return -1;
    uint64_t now = fh_now_ns(), limit = (uint64_t)deadline_ms * 1000000u;
    int n = atomic_load(&sh->nslots);
    for (int i = 0; i < n && i <= FH_STRESS_MAX_THREADS; i++) {
        if (atomic_load(&sh->slot[i].hook) == FH_BENCH_IDLE)
            continue;
        uint64_t start = atomic_load(&sh->slot[i].start_ns);
        if (now > start && now - start > limit)
            return i;
    }
    return -1;
}

/* Reads the child's reports until it closes the pipe (by ending), killing
 * it when a hook passes the deadline. */
static void watch_child(pid_t pid, int fd, fh_bench_shared *sh, int deadline_ms,
                        fh_bench_outcome *out, char **buf, size_t *len)
{
    size_t cap = 0;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, 10);
        if (r < 0 && errno != EINTR)
            break;
        if (r > 0) {
            if (*len + 65536 > cap) {
                char *nb = realloc(*buf, cap = cap * 2 + 65536);
                if (!nb)
                    break;
                *buf = nb;
            }
            ssize_t n = read(fd, *buf + *len, cap - *len - 1);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break; /* the child is gone (or closed it: it ends soon) */
            *len += (size_t)n;
        }
        int late = out->timed_out ? -1 : past_deadline(sh, deadline_ms);
        if (late >= 0) {
            out->timed_out = true;
            out->timeout_slot = late;
            kill(pid, SIGKILL);
        }
    }
}

static void parse_docs(char *buf, size_t len, json_t *docs)
{
    if (!buf)
        return;
    buf[len] = '\0';
    for (char *line = buf, *end; *line; line = end + 1) {
        end = strchr(line, '\n');
        if (!end) /* a torn last line: the child died writing it */
            break;
        *end = '\0';
        json_t *doc = json_loads(line, 0, NULL);
        if (json_is_object(doc))
            json_array_append_new(docs, doc);
        else
            json_decref(doc);
    }
}

int fh_bench_spawn(fh_bench_fn fn, void *ud, int deadline_ms, fh_bench_outcome *out)
{
    memset(out, 0, sizeof(*out));
    out->exit_status = -1;
    out->docs = json_array();
    fh_bench_shared *sh =
        mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int fds[2] = {-1, -1};
    if (!out->docs || sh == MAP_FAILED || pipe2(fds, O_CLOEXEC) != 0) {
        fprintf(stderr, "fusion-host: cannot set up the test process: %s\n", strerror(errno));
        if (sh != MAP_FAILED)
            munmap(sh, sizeof(*sh));
        return -1;
    }
    for (int i = 0; i <= FH_STRESS_MAX_THREADS; i++)
        atomic_init(&sh->slot[i].hook, FH_BENCH_IDLE);
    atomic_init(&sh->nslots, 1);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        fprintf(stderr, "fusion-host: cannot start the test process: %s\n", strerror(errno));
        close(fds[0]), close(fds[1]);
        munmap(sh, sizeof(*sh));
        return -1;
    }
    if (pid == 0) {
        close(fds[0]);
        child_setup();
        int rc = fn(ud, sh, fds[1]);
        atomic_store(&sh->done, 1);
        fflush(NULL);
        _exit(rc & 0xff); /* no atexit handlers: they are the parent's */
    }
    close(fds[1]);
    char *buf = NULL;
    size_t len = 0;
    watch_child(pid, fds[0], sh, deadline_ms, out, &buf, &len);
    close(fds[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (WIFEXITED(status))
        out->exit_status = WEXITSTATUS(status);
    else if (WIFSIGNALED(status))
        out->signo = WTERMSIG(status);
    out->finished = atomic_load(&sh->done) != 0;
    out->calls = atomic_load(&sh->calls);
    out->nslots = atomic_load(&sh->nslots);
    if (out->nslots > FH_STRESS_MAX_THREADS + 1)
        out->nslots = FH_STRESS_MAX_THREADS + 1;
    uint64_t now = fh_now_ns();
    for (int i = 0; i < out->nslots; i++) {
        out->hook[i] = atomic_load(&sh->slot[i].hook);
        out->run[i] = atomic_load(&sh->slot[i].run);
        uint64_t start = atomic_load(&sh->slot[i].start_ns);
        out->running_ns[i] = now > start ? now - start : 0;
    }
    parse_docs(buf, len, out->docs);
    free(buf);
    munmap(sh, sizeof(*sh));
    return 0;
}

void fh_bench_outcome_clear(fh_bench_outcome *o)
{
    json_decref(o->docs);
    o->docs = NULL;
}
