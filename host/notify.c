/* notify.c - see notify.h. */
#include "notify.h"

#include "log.h"

#include <stdio.h>
#include <systemd/sd-daemon.h>
#include <time.h>

static void notify(const char *msg)
{
    int rc = sd_notify(0, msg);
    if (rc < 0)
        fh_warn("systemd notify '%s' failed: %d", msg, rc);
}

void fh_notify_ready(const char *status)
{
    char msg[600];
    snprintf(msg, sizeof(msg), "READY=1\nSTATUS=%s", status);
    notify(msg);
}

void fh_notify_status(const char *status)
{
    char msg[600];
    snprintf(msg, sizeof(msg), "STATUS=%s", status);
    notify(msg);
}

void fh_notify_reloading(void)
{
    /* Newer systemd wants MONOTONIC_USEC with RELOADING=1 (Type=notify-reload). */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char msg[96];
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000);
    notify(msg);
}

void fh_notify_stopping(void)
{
    notify("STOPPING=1");
}

void fh_notify_watchdog(void)
{
    notify("WATCHDOG=1");
}

uint64_t fh_notify_watchdog_interval_ms(void)
{
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0)
        return 0;
    return usec / 2000 ? usec / 2000 : 1;
}
