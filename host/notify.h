/*
 * notify.h - the systemd notify protocol (READY, STATUS, RELOADING,
 * STOPPING, WATCHDOG) through libsystemd. Without NOTIFY_SOCKET every call
 * is a no-op, so the daemon behaves the same outside systemd. Main thread.
 */
#ifndef FH_NOTIFY_H
#define FH_NOTIFY_H

#include <stdint.h>

void fh_notify_ready(const char *status);
void fh_notify_status(const char *status);
void fh_notify_reloading(void);
void fh_notify_stopping(void);
void fh_notify_watchdog(void);
/* The ping interval (half of WATCHDOG_USEC) in ms, or 0 when the service
 * has no watchdog. */
uint64_t fh_notify_watchdog_interval_ms(void);

#endif
