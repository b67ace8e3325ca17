/*
 * stress.h - the engine behind `fusion-host plugin-test`: runs an overlay's
 * hooks on one request, checks what they return against the contract of
 * fusion/overlay.h, repeats the run from several threads and compares every
 * result with the first run's, all inside a forked child process that the
 * bench outlives.
 *
 * Owns: the child process (fh_bench_spawn), the memory it shares with the
 * parent (fh_bench_shared), and the samples and findings of a stress run.
 *
 * Why a child: a plugin that crashes kills the process its code runs in.
 * The child runs the plugin (load, hooks, fini) and sends its reports as
 * JSON documents, one per line, down a pipe; before each hook call a thread
 * marks its slot in shared memory with the hook, the run and the start
 * time. The parent watches the slots: a hook past the deadline gets the
 * child killed and reported; a child killed by a signal is reported with
 * the hooks its threads were in, so "crashed with SIGSEGV in apply()" is
 * what the author reads, not a core dump of the bench.
 *
 * Threads: in the child, fh_stress_run starts its threads and joins them
 * before it returns; each thread parses its own copy of the request and
 * writes only its own slot, its own findings and its own entries of the
 * timing arrays. The parent is single-threaded. The shared slots are
 * lock-free atomics (valid across processes).
 */
#ifndef FH_STRESS_H
#define FH_STRESS_H

#include "diag.h"
#include "door.h"
#include "registry.h"

#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FH_STRESS_MAX_THREADS 64
#define FH_STRESS_MAX_RUNS    1000000L

/* What a slot's `hook` says besides an fh_hook_kind. */
#define FH_BENCH_IDLE (-1)
#define FH_BENCH_LOAD FH_HOOK_KIND_COUNT /* dlopen, entry and init() */

/* One thread of the child: slot 0 is its main thread (load, the first
 * run, fini), slots 1..threads the stress threads. */
typedef struct fh_bench_slot {
    atomic_int hook; /* FH_BENCH_IDLE, an fh_hook_kind, FH_BENCH_LOAD */
    _Atomic uint64_t start_ns;
    atomic_ulong run; /* 0: the first run; 1..N: stress runs */
} fh_bench_slot;

typedef struct fh_bench_shared {
    atomic_int done;    /* the child finished its work (reports sent) */
    atomic_ulong calls; /* match/apply/evaluate calls that returned */
    atomic_int nslots;  /* slots in use */
    fh_bench_slot slot[FH_STRESS_MAX_THREADS + 1];
} fh_bench_shared;

/* Slot bookkeeping around a call into plugin code (s may be NULL). */
void fh_bench_enter(fh_bench_shared *s, int slot, int hook, unsigned long run);
void fh_bench_leave(fh_bench_shared *s, int slot);

/* "apply()", "load (dlopen, entry, init)", ... for a slot's hook. */
const char *fh_bench_hook_name(int hook);

/* ---- one run ------------------------------------------------------------- */

typedef struct fh_stress_input {
    fh_generation *gen; /* referenced by the caller throughout */
    const char *body;   /* the request as the caller sends it, JSON */
    size_t body_len;
    const char *request_id; /* given to a request that has none */
    const char *answer;     /* the sample answer evaluate() scores */
    size_t answer_len;
    fh_bench_shared *shared; /* may be NULL */
} fh_stress_input;

enum { FH_STRESS_MATCH, FH_STRESS_APPLY, FH_STRESS_EVALUATE, FH_STRESS_HOOKS };

typedef struct fh_stress_sample {
    double match;
    int apply_rc;
    char *request; /* after apply, pretty JSON as the upstream gets it (malloc'd) */
    int eval_rc;
    fusion_evaluation eval;
    uint64_t ns[FH_STRESS_HOOKS]; /* the time each hook took */
} fh_stress_sample;

/* Parses a fresh request from in->body and runs match, apply and evaluate
 * on it, thread `slot`, run number `run`. 0, or -1 with err filled when the
 * body does not parse or memory runs out (no hook ran then). */
int fh_stress_sample_run(const fh_stress_input *in, int slot, unsigned long run,
                         fh_stress_sample *out, char *err, size_t errlen);
void fh_stress_sample_clear(fh_stress_sample *s);

/* The contract of the hooks' results: match in [0,1], apply and evaluate
 * return 0, a quality in [0,1], at most FUSION_EVAL_MAX_RULES rules, each
 * named [a-z0-9_]+ with a score in [0,1]. Appends one line per breach to
 * out; returns how many. */
size_t fh_stress_contract_check(const fh_stress_sample *s, fh_diag *out);

/* ---- many runs ------------------------------------------------------------ */

/* Runs `runs` samples spread over `threads` threads (1..FH_STRESS_MAX_THREADS),
 * each on its own parsed copy of the request, and compares each with
 * `first`. The report:
 *   {"runs", "threads", "completed", "seconds",
 *    "hooks": {"match"|"apply"|"evaluate":
 *              {"calls", "p50_us", "p95_us", "p99_us", "max_us"}},
 *    "differences": [{"field", "label", "runs", "threads": [...],
 *                     "first_run", "first_thread", "where", "first", "this"}],
 *    "violations": [{"kind", "message", "runs", "threads": [...],
 *                    "first_run", "first_thread"}],
 *    "errors": [text]}
 * NULL when out of memory. */
json_t *fh_stress_run(const fh_stress_input *in, const fh_stress_sample *first, long runs,
                      int threads);

/* ---- the child ------------------------------------------------------------ */

/* Runs in the child: do the work, write each report with fh_bench_send.
 * The return value is the child's exit status. */
typedef int (*fh_bench_fn)(void *ud, fh_bench_shared *shared, int report_fd);

/* Writes `doc` as one line of compact JSON; 0 or -1. */
int fh_bench_send(int report_fd, const json_t *doc);

typedef struct fh_bench_outcome {
    json_t *docs;    /* array of the documents the child sent, in order */
    bool finished;   /* it returned from fn (not killed, no exit() mid-way) */
    int exit_status; /* when it exited: its status, else -1 */
    int signo;       /* the signal that killed it, else 0 */
    bool timed_out;  /* the parent killed it: a hook was past the deadline */
    /* What each slot was running when it died or was killed. */
    int nslots;
    int hook[FH_STRESS_MAX_THREADS + 1];
    unsigned long run[FH_STRESS_MAX_THREADS + 1];
    uint64_t running_ns[FH_STRESS_MAX_THREADS + 1];
    unsigned long calls;
    int timeout_slot; /* the slot past the deadline, when timed_out */
} fh_bench_outcome;

/* Forks a child that runs fn(ud, shared, fd) with the fatal signals at
 * their default action and no core file, and waits for it, killing it
 * when a hook stays past deadline_ms (<= 0: no deadline). Flush stdio
 * before calling. 0 with *out filled, or -1 when the child could not be
 * started (message on stderr). */
int fh_bench_spawn(fh_bench_fn fn, void *ud, int deadline_ms, fh_bench_outcome *out);
void fh_bench_outcome_clear(fh_bench_outcome *o);

/* "SIGSEGV", "SIGABRT", ... */
const char *fh_signal_name(int signo);

#endif
