/*
 * log.h - the host's logger.
 *
 * Owns: the process-wide log level and sink. Lines go to stderr as
 * "LEVEL [overlay] message", or, when stderr is the journal (systemd sets
 * JOURNAL_STREAM), to journald with PRIORITY, FUSION_OVERLAY and any extra
 * FUSION_* fields as structured fields.
 * Thread-safe: each line is formatted into a local buffer and written with
 * one write(2). The "current overlay" is thread-local so that a plugin's
 * host->log() calls are attributed to the overlay whose hook is running
 * (set it with fh_log_set_overlay() around every call into plugin code).
 */
#ifndef FH_LOG_H
#define FH_LOG_H

#include <stdarg.h>

typedef enum fh_log_level {
    FH_LOG_OFF = -1, /* only as a threshold: nothing is logged */
    FH_LOG_ERROR = 0,
    FH_LOG_WARN = 1,
    FH_LOG_INFO = 2,
    FH_LOG_DEBUG = 3
} fh_log_level;

void fh_log_set_level(fh_log_level level);
fh_log_level fh_log_get_level(void);
/* Parses "error", "warn", "info", "debug"; returns -1 when unknown. */
int fh_log_parse_level(const char *s, fh_log_level *out);

/* Returns the previous value, to restore after the plugin call. */
const char *fh_log_set_overlay(const char *overlay_name);
const char *fh_log_current_overlay(void);

void fh_log(fh_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void fh_logv(fh_log_level level, const char *fmt, va_list ap);
/* With structured fields: `fields` is a NULL-terminated list of "KEY=value"
 * strings (KEY in [A-Z0-9_], e.g. "FUSION_REQUEST_ID=fh-1"); on stderr they
 * are appended as key=value pairs. */
void fh_log_fields(fh_log_level level, const char *const *fields, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define fh_error(...) fh_log(FH_LOG_ERROR, __VA_ARGS__)
#define fh_warn(...)  fh_log(FH_LOG_WARN, __VA_ARGS__)
#define fh_info(...)  fh_log(FH_LOG_INFO, __VA_ARGS__)
#define fh_debug(...) fh_log(FH_LOG_DEBUG, __VA_ARGS__)

#endif
