/*
 * loader.h - turns one plugin file into a mapped, validated descriptor.
 *
 * Owns: the private copy of the file and the dlopen handle of one fh_plugin.
 * The loader never maps the file in the plugin folder itself: it checks the
 * file (regular, ELF shared object, not writable by group/other, owned by
 * root or the daemon's user, folder likewise), copies it under cache_dir (a
 * folder that must be the daemon's own, not a symlink, mode 0700) with
 * a unique name, checks with RTLD_NOLOAD that nothing of that name is mapped,
 * dlopens the copy RTLD_NOW|RTLD_LOCAL, calls the entry function, checks
 * magic, ABI major and size before reading anything else, refuses a newer
 * minor, copies min(size, sizeof) into a zeroed descriptor, then checks the
 * required hooks, the name and the version. It does not call init(): the
 * registry does. Stateless apart from a counter for unique names; any thread.
 */
#ifndef FH_LOADER_H
#define FH_LOADER_H

#include "fusion/overlay.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef enum fh_load_err {
    FH_LOAD_OK = 0,
    FH_LOAD_IO,           /* cannot stat/read/copy the file */
    FH_LOAD_NOT_ELF,      /* not an ELF shared object */
    FH_LOAD_UNSAFE_PERMS, /* file or folder writable by group/other */
    FH_LOAD_BAD_OWNER,    /* owned by someone but root or the daemon's user */
    FH_LOAD_STALE_COPY,   /* a library of the private copy's name is mapped */
    FH_LOAD_DLOPEN,       /* the dynamic loader refused it (dlerror) */
    FH_LOAD_NO_ENTRY,     /* no fusion_overlay_entry symbol */
    FH_LOAD_NULL_DESCRIPTOR,
    FH_LOAD_BAD_MAGIC,
    FH_LOAD_ABI_MAJOR,
    FH_LOAD_ABI_MINOR,    /* built for a newer minor than this host */
    FH_LOAD_TOO_SMALL,    /* descriptor size below the 1.0 layout */
    FH_LOAD_MISSING_HOOK, /* init, fini, apply or evaluate is NULL */
    FH_LOAD_BAD_NAME,
    FH_LOAD_BAD_VERSION,
    FH_LOAD_DUPLICATE,   /* (registry) another file has this name+version */
    FH_LOAD_INIT_FAILED, /* (registry) init() returned non-zero */
    FH_LOAD_TIMEOUT,     /* plugin code did not return within the deadline */
    FH_LOAD_QUARANTINED, /* this very file crashed the daemon while loading */
    FH_LOAD_ERR_COUNT
} fh_load_err;

/* Short stable identifier, e.g. "no_entry", for logs, `list` and tests. */
const char *fh_load_err_name(fh_load_err e);

typedef struct fh_loader_opts {
    const char *cache_dir;  /* where private copies go; created 0700 if missing */
    uid_t daemon_uid;       /* besides root, the owner a plugin file may have */
    bool skip_owner_checks; /* plugin-test on an author's own build tree */
    int deadline_ms;        /* limit on the plugin's constructors, entry and
                               destructors (hooks.deadline_ms); 0: none */
    /* Whether to refuse a file by the SHA-256 of its bytes (hex), before
     * any of its code runs; fills why. May be NULL. */
    bool (*refuse_hash)(void *ud, const char *sha256, char *why, size_t len);
    void *refuse_ud;
} fh_loader_opts;

typedef struct fh_plugin {
    void *handle;
    int deadline_ms;   /* from the loader options, for fh_loader_close */
    char *source_path; /* the file as given (absolute) */
    char *copy_path;   /* the private copy that is mapped */
    dev_t source_dev;
    ino_t source_ino;
    char sha256[65];                /* of the bytes copied and mapped, hex */
    fusion_overlay_descriptor desc; /* zeroed, then min(size, sizeof) copied */
    uint32_t declared_size;         /* the plugin's desc->size */
} fh_plugin;

/* On failure returns the reason, writes a one-line message naming the file
 * and what to do into msg, and leaves *out zeroed with nothing mapped. */
fh_load_err fh_loader_open(const fh_loader_opts *opts, const char *path, fh_plugin *out, char *msg,
                           size_t msglen);

/* dlcloses (destructors under opts' deadline, given at open) and removes
 * the private copy. Returns true when the library is
 * really unmapped afterwards, false when the dynamic loader kept it (e.g.
 * -z nodelete or unique symbols): the caller reports it as pinned. */
bool fh_loader_close(fh_plugin *p);

/* True once a plugin's constructors or destructors did not return within
 * the deadline: from then on fh_loader_open refuses (FH_LOAD_TIMEOUT) and
 * fh_loader_close leaves libraries mapped, because the thread left behind
 * may hold the dynamic loader's lock. */
bool fh_loader_wedged(void);

/* Name and version rules, shared with the registry and tests. */
bool fh_overlay_name_valid(const char *name);
bool fh_overlay_version_valid(const char *version);

#endif
