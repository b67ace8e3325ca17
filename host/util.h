/*
 * util.h - small helpers every module needs, in one place: the monotonic
 * clock and `mkdir -p`. Stateless; any thread.
 */
#ifndef FH_UTIL_H
#define FH_UTIL_H

#include <stdint.h>
#include <sys/types.h>

/* CLOCK_MONOTONIC in nanoseconds / milliseconds (vDSO: no system call). */
uint64_t fh_now_ns(void);
uint64_t fh_now_ms(void);

/* mkdir -p: missing parents are created with mode `parents`, the last
 * level with `last`. Returns 0 (also when it exists), or -1 with errno. */
int fh_mkdir_p(const char *path, mode_t parents, mode_t last);

#endif
