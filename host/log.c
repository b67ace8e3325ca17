/*
 * log.c - see log.h. The level is an atomic so any thread may read it; the
 * overlay attribution is thread-local and only its own thread touches it.
 */
#include "log.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static atomic_int log_level = FH_LOG_INFO;
static _Thread_local const char *current_overlay;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

void fh_log_set_level(fh_log_level level)
{
    atomic_store(&log_level, (int)level);
}

fh_log_level fh_log_get_level(void)
{
    return (fh_log_level)atomic_load(&log_level);
}

int fh_log_parse_level(const char *s, fh_log_level *out)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (fh_log_level)i;
            return 0;
        }
    }
    return -1;
}

const char *fh_log_set_overlay(const char *overlay_name)
{
    const char *prev = current_overlay;
    current_overlay = overlay_name;
    return prev;
}

const char *fh_log_current_overlay(void)
{
    return current_overlay;
}

void fh_logv(fh_log_level level, const char *fmt, va_list ap)
{
    if ((int)level < FH_LOG_ERROR || (int)level > FH_LOG_DEBUG ||
        (int)level > atomic_load(&log_level))
        return;
    char line[2048];
    int n;
    if (current_overlay)
        n = snprintf(line, sizeof(line), "%s [%s] ", level_names[level], current_overlay);
    else
        n = snprintf(line, sizeof(line), "%s ", level_names[level]);
    if (n < 0)
        return;
    size_t used = (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
    int m = vsnprintf(line + used, sizeof(line) - used, fmt, ap);
    if (m < 0)
        return;
    used += (size_t)m;
    if (used > sizeof(line) - 2)
        used = sizeof(line) - 2; /* truncated: keep the newline */
    line[used++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, used);
    (void)w; /* nothing sensible to do when stderr is gone */
}

void fh_log(fh_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fh_logv(level, fmt, ap);
    va_end(ap);
}
