/*
 * diag.h - a list of diagnostics ("problems") collected while validating
 * files, each already formatted as "FILE:LINE:COL: KEY: what is wrong; what
 * to do". Owned by whoever created it; single-threaded.
 */
#ifndef FH_DIAG_H
#define FH_DIAG_H

#include <stddef.h>

typedef struct fh_diag {
    char **items;
    size_t count;
    size_t cap;
} fh_diag;

/* Appends a formatted problem; silently drops it when out of memory. */
void fh_diag_add(fh_diag *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends "file:line:col: key: message" (line/col 1-based, 0 = unknown). */
void fh_diag_at(fh_diag *d, const char *file, size_t line, size_t col, const char *key,
                const char *fmt, ...) __attribute__((format(printf, 6, 7)));
void fh_diag_clear(fh_diag *d);

#endif
