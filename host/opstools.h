/*
 * opstools.h - the operations toolkit (SPEC 9): golden regression tests,
 * the quality and budget benchmark, the budget analysis of its report, and
 * the comparison of two reports. Each is a `fusion-host` subcommand that
 * runs on the main thread and returns the process exit status.
 *
 *   golden.c   golden validate|update   scenarios through the real daemon
 *   bench.c    bench                    scenarios N times, a JSON report
 *   report.c   budget, compare          reading reports (docs/reports.md)
 */
#ifndef FH_OPSTOOLS_H
#define FH_OPSTOOLS_H

/* argv[0] is the command word ("golden", "bench", "budget", "compare"). */
int fh_golden_main(int argc, char **argv);
int fh_bench_main(int argc, char **argv);
int fh_budget_main(int argc, char **argv);
int fh_compare_main(int argc, char **argv);

/* ---- shared by golden.c and bench.c ---------------------------------------- */

#include <jansson.h>
#include <stddef.h>

/* DIR/scenarios.yaml as JSON ({"scenarios": [...]}, each checked to have
 * an id, a scenario_type and messages); NULL with a message. */
json_t *fh_golden_load_scenarios(const char *dir, char *err, size_t errlen);
/* The chat request a client sends for a scenario (malloc'd JSON). */
char *fh_golden_request(const json_t *scenario);

/* An overlay's evaluate() run offline on an answer, with the plugin file
 * the daemon loaded and the config it was given (plugins loaded once). */
typedef struct fh_evaluator fh_evaluator;
fh_evaluator *fh_evaluator_new(const char *config_path);
void fh_evaluator_free(fh_evaluator *ev);
/* {"quality_score", "rules": {name: {"score", "passed"}}}, or NULL. */
json_t *fh_evaluator_run(fh_evaluator *ev, const char *file, const json_t *scenario,
                         const char *request_body, const char *answer);

struct fh_runner;
/* The scores of a daemon's answer (its parsed JSON): the overlay that
 * served it (its `fusion` object) run offline on choice 0's text, with the
 * plugin file the daemon loaded (asked over the admin API once per
 * overlay). NULL when no overlay served it or it cannot be scored. */
json_t *fh_golden_score(struct fh_runner *r, fh_evaluator *ev, const json_t *scenario,
                        const char *request_body, const json_t *answer);

#endif
