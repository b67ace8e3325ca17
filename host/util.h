/*
 * util.h - small helpers every module needs, in one place: the monotonic
 * clock, deadlines for timed waits, `mkdir -p`. Stateless; any thread.
 */
#ifndef FH_UTIL_H
#define FH_UTIL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* CLOCK_MONOTONIC in nanoseconds / milliseconds (vDSO: no system call). */
uint64_t fh_now_ns(void);
uint64_t fh_now_ms(void);

/* The CLOCK_MONOTONIC time `ms` from now (negative: now), for
 * pthread_cond_timedwait on a condition made by fh_cond_init_monotonic. */
void fh_deadline_after(struct timespec *ts, int ms);
/* pthread_cond_init with CLOCK_MONOTONIC, so a wall-clock step cannot
 * stretch or cut a timed wait. Returns pthread_cond_init's result. */
int fh_cond_init_monotonic(pthread_cond_t *cv);

/* Copies src into dst (size bytes), cut to fit, NUL-terminated; returns
 * the length written. src NULL copies "". printf-free: the request path
 * calls these per request. */
size_t fh_strlcpy(char *dst, const char *src, size_t size);
/* v in decimal into out (at least 21 bytes); returns the length. */
size_t fh_utoa(unsigned long long v, char *out);

/* mkdir -p: missing parents are created with mode `parents`, the last
 * level with `last`. Returns 0 (also when it exists), or -1 with errno. */
int fh_mkdir_p(const char *path, mode_t parents, mode_t last);

/* A whole file of at most `max` bytes, NUL-terminated (malloc'd); its
 * length in *len when given. NULL with errno set (EFBIG when larger). */
char *fh_read_file(const char *path, size_t max, size_t *len);

/* Replaces dir/name with `len` bytes, atomically and durably: a temporary
 * file in dir (mode 0600), fsync, rename, fsync of dir. A crash at any
 * point leaves the old file or the new one, never a mix. 0, or -1 with
 * errno set (the temporary is removed). */
int fh_write_file_atomic(const char *dir, const char *name, const void *data, size_t len);

#endif
