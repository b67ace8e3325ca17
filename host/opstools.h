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

#endif
