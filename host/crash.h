/*
 * crash.h - the crash journal: which overlay was running when the process
 * died of a fatal signal, so the next start quarantines it.
 *
 * While plugin code runs, the door (door.c, the only place that enters it)
 * marks the thread with the hook call; a handler for SIGSEGV, SIGBUS,
 * SIGILL, SIGFPE, SIGABRT and SIGSYS writes one fixed-size record (overlay,
 * version, file hash, hook, signal, time) with a single write(2) to
 * STATE_DIR/crash-journal, opened at start, then hands the signal to the
 * disposition it replaced (the default, or a sanitizer's), which kills the
 * process; systemd's Restart=on-failure brings it back. A signal outside
 * plugin code writes nothing: that crash is ours, not an overlay's.
 *
 * Owns: the journal's descriptor and the replaced signal dispositions
 * (process-wide, set once by fh_crash_arm before threads start); the
 * thread-local mark is each thread's own. Everything the handler touches
 * is async-signal-safe: a thread-local pointer, memcpy-like loops,
 * clock_gettime, write, sigaction, raise.
 */
#ifndef FH_CRASH_H
#define FH_CRASH_H

#include "door.h"

#include <stddef.h>
#include <stdint.h>

#define FH_CRASH_JOURNAL "crash-journal"

typedef struct fh_crash_record {
    char who[FUSION_NAME_MAX + 1]; /* overlay name (or file name for dlopen) */
    char version[FUSION_VERSION_MAX + 1];
    char sha256[65];
    char hook[16]; /* "apply()" ... */
    int signo;
    int64_t when; /* seconds since the epoch */
} fh_crash_record;

/* Opens STATE_DIR/crash-journal for appending and installs the handlers.
 * 0, or -1 with a message (the daemon then runs without crash quarantine). */
int fh_crash_arm(const char *state_dir, char *err, size_t errlen);
/* Puts the replaced dispositions back and closes the journal. */
void fh_crash_disarm(void);

/* Gives the calling thread an alternate signal stack (freed when it
 * exits), so a stack overflow in plugin code is recorded too. Every
 * thread that may run plugin code calls it first. */
void fh_crash_thread_init(void);

/* Marks this thread as running c's plugin code; returns the previous mark
 * for fh_crash_leave (calls nest: a host function a hook calls may log). */
const fh_hook_call *fh_crash_enter(const fh_hook_call *c);
void fh_crash_leave(const fh_hook_call *prev);

/* The records a previous run left in STATE_DIR (malloc'd array, count
 * returned; 0 and NULL when none). Torn or foreign records are skipped. */
size_t fh_crash_collect(const char *state_dir, fh_crash_record **out);
/* Empties the journal once its records are persisted elsewhere. */
void fh_crash_clear(const char *state_dir);

/* "SIGSEGV" for a signal number. */
const char *fh_crash_signal_name(int signo);

#endif
