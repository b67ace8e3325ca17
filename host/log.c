/*
 * log.c - see log.h. The level is an atomic so any thread may read it; the
 * overlay attribution is thread-local and only its own thread touches it.
 */
#include "log.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

static atomic_int log_level = FH_LOG_INFO;
static _Thread_local const char *current_overlay;

static const char *const level_names[] = {"error", "warn", "info", "debug"};
/* syslog priorities for the journal: err, warning, info, debug. */
static const int level_priority[] = {3, 4, 6, 7};

static pthread_once_t journal_once = PTHREAD_ONCE_INIT;
static int to_journal;

/* stderr is the journal when JOURNAL_STREAM names its device and inode. */
static void detect_journal(void)
{
    const char *js = getenv("JOURNAL_STREAM");
    unsigned long long dev, ino;
    struct stat st;
    if (js && sscanf(js, "%llu:%llu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
        (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino)
        to_journal = 1;
}

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

static void emit(fh_log_level level, const char *const *fields, const char *fmt, va_list ap)
{
    if ((int)level < FH_LOG_ERROR || (int)level > FH_LOG_DEBUG ||
        (int)level > atomic_load(&log_level))
        return;
    pthread_once(&journal_once, detect_journal);
    char msg[2048];
    int m = vsnprintf(msg, sizeof(msg), fmt, ap);
    if (m < 0)
        return;
    if (to_journal) {
        struct iovec iov[16];
        char prio[16], overlay[96], message[2100];
        int n = 0;
        snprintf(message, sizeof(message), "MESSAGE=%s", msg);
        snprintf(prio, sizeof(prio), "PRIORITY=%d", level_priority[level]);
        iov[n++] = (struct iovec){message, strlen(message)};
        iov[n++] = (struct iovec){prio, strlen(prio)};
        iov[n++] = (struct iovec){(char *)"SYSLOG_IDENTIFIER=fusion-host", 29};
        if (current_overlay) {
            snprintf(overlay, sizeof(overlay), "FUSION_OVERLAY=%s", current_overlay);
            iov[n++] = (struct iovec){overlay, strlen(overlay)};
        }
        for (size_t i = 0; fields && fields[i] && n < 16; i++)
            iov[n++] = (struct iovec){(char *)fields[i], strlen(fields[i])};
        if (sd_journal_sendv(iov, n) >= 0)
            return;
        /* The journal is gone: fall back to stderr below. */
    }
    char line[3072];
    size_t used = 0;
    int k = current_overlay ? snprintf(line, sizeof(line), "%s [%s] %s", level_names[level],
                                       current_overlay, msg)
                            : snprintf(line, sizeof(line), "%s %s", level_names[level], msg);
    if (k < 0)
        return;
    used = (size_t)k < sizeof(line) ? (size_t)k : sizeof(line) - 1;
    /* Fields as logfmt pairs: FUSION_REQUEST_ID=x -> request_id=x. */
    for (size_t i = 0; fields && fields[i] && used + 2 < sizeof(line); i++) {
        const char *f = strncmp(fields[i], "FUSION_", 7) == 0 ? fields[i] + 7 : fields[i];
        const char *eq = strchr(f, '=');
        line[used++] = ' ';
        for (const char *c = f; *c && used + 2 < sizeof(line); c++)
            line[used++] = c < eq && *c >= 'A' && *c <= 'Z' ? (char)(*c - 'A' + 'a') : *c;
    }
    if (used > sizeof(line) - 2)
        used = sizeof(line) - 2; /* truncated: keep the newline */
    line[used++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, used);
    (void)w; /* nothing sensible to do when stderr is gone */
}

void fh_logv(fh_log_level level, const char *fmt, va_list ap)
{
    emit(level, NULL, fmt, ap);
}

void fh_log_fields(fh_log_level level, const char *const *fields, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit(level, fields, fmt, ap);
    va_end(ap);
}

void fh_log(fh_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fh_logv(level, fmt, ap);
    va_end(ap);
}
