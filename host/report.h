/*
 * report.h - reading bench reports (docs/reports.md) and judging them:
 * `budget` holds one report against the runbook thresholds, `compare` holds
 * a current report against a baseline one. The commands themselves are
 * fh_budget_main/fh_compare_main (opstools.h); this header exposes the
 * pure parts so the unit tests can reach the edges without files.
 *
 * Owns: fh_report, the figures the two commands read out of a report,
 * parsed once and checked for type (a figure that is absent or null is
 * unknown, NAN here; one of the wrong type makes the report malformed).
 * The analyses are built as jansson objects, which are the `json` output
 * as is and which the markdown renderers read: one source of truth for
 * both formats.
 *
 * Invariants: a figure is NAN exactly when the report does not know it;
 * an unknown figure is never a breach nor a regression. Thresholds are
 * strict ("over 2000 ms": 2000 is ok, 2000.1 a warning); compare's
 * differences allow FH_REPORT_EPSILON of rounding, so 12.3 -> 17.3 is a
 * change of 5 points, not of 5.000000000000002.
 *
 * Threads: none of its own; no shared state, any thread.
 */
#ifndef FH_REPORT_H
#define FH_REPORT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

/* Slack for compare's differences: far below the precision reports carry
 * (0.1 ms, 0.1 %, 0.001 of quality), far above double rounding. */
#define FH_REPORT_EPSILON 1e-9

/* The figures of one scenario, or of the whole report. NAN: unknown. */
typedef struct fh_report_row {
    char *id;           /* scenario id; "overall" for the overall row */
    char *overlay;      /* overlay.name; NULL when the report has none */
    double p50_ms;      /* overlaid latency, nearest-rank percentiles */
    double p95_ms;      /* */
    double token_delta; /* token_delta_pct */
    double quality;     /* quality.mean */
    double rule_pass;   /* overall.rule_pass_rate; per scenario, the mean
                           of its rules' pass_rate */
    long runs;          /* overlaid runs; -1 unknown */
    long failed;        /* of those, without HTTP 200; -1 unknown */
    double failed_pct;  /* failed / runs x 100; NAN unknown */
} fh_report_row;

typedef struct fh_report {
    char *file;        /* as given on the command line, for messages */
    char *created;     /* the report's metadata; NULL when absent */
    char *upstream;    /* */
    char *config_hash; /* */
    char *host_version;
    long iterations; /* -1 unknown */
    size_t count;    /* scenarios, in the report's order */
    fh_report_row *rows;
    fh_report_row overall;
} fh_report;

/* Reads `path`. NULL on failure with `err` saying, for an operator, which
 * file and what is wrong with it ("FILE: not a fusion-host bench report
 * (no "format": 1)"). */
fh_report *fh_report_load(const char *path, char *err, size_t errlen);
/* The same from a parsed document; `file` names it in messages. Does not
 * take `root`. */
fh_report *fh_report_from_json(const json_t *root, const char *file, char *err, size_t errlen);
void fh_report_free(fh_report *r);

/* ---- budget --------------------------------------------------------- */

typedef enum fh_report_status {
    FH_STATUS_UNKNOWN, /* the report does not know the figure */
    FH_STATUS_OK,
    FH_STATUS_WARNING,
    FH_STATUS_CRITICAL,
} fh_report_status;

/* "unknown", "ok", "warning", "critical". */
const char *fh_report_status_name(fh_report_status s);

/* The runbook thresholds: p95 latency over 2000 ms a warning, over 5000 ms
 * critical; token delta over 12 % a warning, over 25 % critical; mean
 * quality under 0.8 a warning. NAN is FH_STATUS_UNKNOWN. */
fh_report_status fh_budget_latency_status(double p95_ms);
fh_report_status fh_budget_tokens_status(double delta_pct);
fh_report_status fh_budget_quality_status(double quality);
/* Runs without an answer: any is a warning, all of them critical (the
 * other figures then describe nothing). */
fh_report_status fh_budget_failed_status(double failed_pct);

/* The budget analysis of `r`: the object `budget --output-format json`
 * prints (docs/reports.md). NULL only when out of memory. */
json_t *fh_budget_analyze(const fh_report *r);
/* The analysis as markdown: a table, a summary line, one hint per breach. */
void fh_budget_markdown(FILE *out, const json_t *analysis);
/* Exit status for an analysis: 1 with a critical figure, else 0. */
int fh_budget_exit(const json_t *analysis);

/* ---- compare -------------------------------------------------------- */

/* The regression rules, each false when either side is unknown:
 * p95 more than 20 % and more than 50 ms above; token delta more than 5
 * points above; quality, rule pass rate more than 0.05 below. */
bool fh_compare_p95_regressed(double base_ms, double cur_ms);
bool fh_compare_tokens_regressed(double base_pct, double cur_pct);
bool fh_compare_quality_regressed(double base, double cur);
bool fh_compare_rules_regressed(double base, double cur);

/* The comparison of `cur` against `base`: the object `compare
 * --output-format json` prints. NULL only when out of memory. */
json_t *fh_compare_analyze(const fh_report *base, const fh_report *cur);
void fh_compare_markdown(FILE *out, const json_t *analysis);
/* 1 with any regression (a scenario missing from the current report is
 * one), else 0. */
int fh_compare_exit(const json_t *analysis);

#endif
