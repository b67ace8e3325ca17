/*
 * plugsync.h - keeps the registry in step with the plugin folder.
 *
 * Owns: what it knows of each *.so file in plugins.dir (its identity on
 * disk - device, inode, size, mtime, mode, owner - and the overlay name it
 * carried), and the inotify watch on the folder when plugins.watch is on.
 *
 * A scan compares the folder with what it knew:
 *   - a new file loads; a file whose identity changed (written again,
 *     replaced by a rename, chmod'ed) loads again: the same overlay name
 *     with other contents hot-swaps (new requests to the new generation at
 *     once, in-flight ones finish on the old), a refused file is retried;
 *   - a deleted file that an overlay was loaded from unloads it after
 *     draining - unless another file in the folder carries the same
 *     overlay name: that one takes over (the most recently modified);
 *   - a deleted refused file is forgotten.
 * Two files with one overlay name: the one loaded last serves; one with
 * the same name and version as the file serving is refused as a duplicate
 * while that file is there (docs/operations.md says so).
 *
 * Threads: the main thread only (it is the only one that loads plugins).
 */
#ifndef FH_PLUGSYNC_H
#define FH_PLUGSYNC_H

#include "loader.h"
#include "registry.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct fh_plugsync fh_plugsync;

/* tick runs between loads (the systemd watchdog); may be NULL. */
fh_plugsync *fh_plugsync_new(fh_registry *reg, const char *dir, bool watch, void (*tick)(void *),
                             void *tick_ud);
void fh_plugsync_free(fh_plugsync *ps);

/* Applies the folder's changes (above). retry_failed also loads refused
 * files that did not change (start-up, reload). Returns the loads done. */
size_t fh_plugsync_scan(fh_plugsync *ps, bool retry_failed);

/* plugins.dir or plugins.watch changed (reload): the old folder's
 * overlays unload after draining, the new folder is scanned. */
void fh_plugsync_move(fh_plugsync *ps, const char *dir, bool watch);

/* The inotify descriptor to poll (-1 when not watching), and reading it:
 * true when something in the folder changed and a scan is due. */
int fh_plugsync_fd(const fh_plugsync *ps);
/* Changes whenever that descriptor is closed or made anew (a new one may
 * get the old number): the poller registers it again. */
unsigned fh_plugsync_watch_id(const fh_plugsync *ps);
bool fh_plugsync_read_events(fh_plugsync *ps);

/* The admin API's load: `path` absolute, or a name relative to the
 * folder; only files directly inside the folder are accepted (400 for the
 * rest: *outside set). Otherwise as fh_registry_load; *swapped says
 * whether it replaced a loaded version. */
fh_load_err fh_plugsync_load(fh_plugsync *ps, const char *path, char *msg, size_t msglen,
                             char *name_out, bool *swapped, bool *outside);

const char *fh_plugsync_dir(const fh_plugsync *ps);
bool fh_plugsync_watching(const fh_plugsync *ps);

#endif
