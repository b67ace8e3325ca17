/*
 * loader.c - one plugin file to a mapped, validated descriptor (see loader.h).
 *
 * Owns: the private copy of a plugin file under cache_dir and its dlopen
 * handle, from fh_loader_open() until fh_loader_close().
 *
 * Why a private copy: dlopen() hands back the handle of an already-mapped
 * object when the path (or the file's dev/inode) matches one, so loading a
 * new version dropped over the same path would silently return the old code,
 * and an installer rewriting the file in place would change pages under a
 * running plugin. Copying to a unique name gives every generation its own
 * mapping; RTLD_NOLOAD on that name first proves nothing stale answers to it.
 *
 * Order of checks, and why:
 *   1. open + fstat the file once and run every check on that descriptor, so
 *      the file checked is the file copied (no check-then-swap race);
 *   2. ownership and group/other write bits of the file and of its folder
 *      (for a symlink: of its target, and of the target's folder too):
 *      anyone who can write either can run code as the daemon;
 *   3. the ELF header (magic, ET_DYN), so a stray text file gets a clear
 *      message rather than dlerror()'s "invalid ELF header";
 *   4. the cache folder, opened O_DIRECTORY | O_NOFOLLOW and checked on that
 *      descriptor: owned by the daemon's effective user and not writable by
 *      group/other, since whoever can write it can swap the copy before it is
 *      mapped; the copy is created with openat(O_EXCL | O_NOFOLLOW) in it;
 *   5. RTLD_NOLOAD, dlopen(RTLD_NOW | RTLD_LOCAL): RTLD_NOW surfaces a
 *      missing symbol now rather than in the middle of a request, LOCAL keeps
 *      two plugins' symbols apart; then the file the dynamic loader mapped
 *      must be the very copy written (same device and inode);
 *   6. the descriptor: magic, ABI major, ABI minor and size are read before
 *      any other field, because an object of another ABI may be shorter than
 *      ours; then min(size, sizeof) is copied into a zeroed local, so a plugin
 *      built against an older minor has the newer fields NULL.
 * Every refusal undoes what was done (dlclose, unlink the copy) and writes
 * one line naming the file and what to do about it. A refused library is
 * closed the way fh_loader_close() closes one: its destructors attributed to
 * the file in the log, and a library the dynamic loader keeps mapped is
 * reported in the message.
 *
 * Threads: no shared state but the atomic counter that makes copy names
 * unique; any thread may load or close. A plugin's constructors, its entry
 * function and its destructors run through the door (door.h): on a helper
 * thread, attributed to the file name, under the deadline. A library whose
 * code is still running past it is left mapped, never closed.
 */
#include "loader.h"

#include "door.h"
#include "log.h"
#include "sha256.h"
#include "util.h"

#include <dlfcn.h>
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The 1.0 descriptor ends after `evaluate`: the least a plugin may declare. */
#define FH_DESC_SIZE_1_0                                                                           \
    (offsetof(fusion_overlay_descriptor, evaluate) +                                               \
     sizeof(((fusion_overlay_descriptor *)0)->evaluate))

static atomic_ulong copy_counter;

static const char *const err_names[FH_LOAD_ERR_COUNT] = {
    [FH_LOAD_OK] = "ok",
    [FH_LOAD_IO] = "io",
    [FH_LOAD_NOT_ELF] = "not_elf",
    [FH_LOAD_QUARANTINED] = "quarantined",
    [FH_LOAD_UNSAFE_PERMS] = "unsafe_permissions",
    [FH_LOAD_BAD_OWNER] = "bad_owner",
    [FH_LOAD_STALE_COPY] = "stale_copy",
    [FH_LOAD_DLOPEN] = "dlopen",
    [FH_LOAD_NO_ENTRY] = "no_entry",
    [FH_LOAD_NULL_DESCRIPTOR] = "null_descriptor",
    [FH_LOAD_BAD_MAGIC] = "bad_magic",
    [FH_LOAD_ABI_MAJOR] = "abi_major",
    [FH_LOAD_ABI_MINOR] = "abi_minor",
    [FH_LOAD_TOO_SMALL] = "descriptor_too_small",
    [FH_LOAD_MISSING_HOOK] = "missing_hook",
    [FH_LOAD_BAD_NAME] = "bad_name",
    [FH_LOAD_BAD_VERSION] = "bad_version",
    [FH_LOAD_DUPLICATE] = "duplicate",
    [FH_LOAD_INIT_FAILED] = "init_failed",
    [FH_LOAD_TIMEOUT] = "timeout",
};

const char *fh_load_err_name(fh_load_err e)
{
    if ((int)e < 0 || e >= FH_LOAD_ERR_COUNT || !err_names[e])
        return "unknown";
    return err_names[e];
}

bool fh_overlay_name_valid(const char *name)
{
    if (!name || !(name[0] >= 'a' && name[0] <= 'z'))
        return false;
    size_t n = 0;
    for (const char *p = name; *p; p++, n++) {
        if (n >= FUSION_NAME_MAX)
            return false;
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
            return false;
    }
    return true;
}

/* A semver numeric identifier: digits, no leading zero unless it is "0".
 * Returns the number of characters consumed, 0 when there is none. */
static size_t semver_number(const char *s)
{
    size_t n = 0;
    while (s[n] >= '0' && s[n] <= '9')
        n++;
    if (n > 1 && s[0] == '0')
        return 0;
    return n;
}

bool fh_overlay_version_valid(const char *version)
{
    if (!version || strnlen(version, FUSION_VERSION_MAX + 1) > FUSION_VERSION_MAX)
        return false;
    const char *p = version;
    for (int part = 0; part < 3; part++) {
        size_t n = semver_number(p);
        if (n == 0)
            return false;
        p += n;
        if (part < 2) {
            if (*p != '.')
                return false;
            p++;
        }
    }
    if (*p == '\0')
        return true;
    if (*p != '-')
        return false;
    p++;
    /* Pre-release: dot-separated non-empty [0-9A-Za-z-] identifiers; purely
     * numeric ones without leading zeros (semver 2.0.0, item 9). */
    for (;;) {
        size_t n = 0;
        bool numeric = true;
        while ((p[n] >= '0' && p[n] <= '9') || (p[n] >= 'a' && p[n] <= 'z') ||
               (p[n] >= 'A' && p[n] <= 'Z') || p[n] == '-') {
            if (!(p[n] >= '0' && p[n] <= '9'))
                numeric = false;
            n++;
        }
        if (n == 0 || (numeric && n > 1 && p[0] == '0'))
            return false;
        p += n;
        if (*p == '\0')
            return true;
        if (*p != '.')
            return false;
        p++;
    }
}

static void set_msg(char *msg, size_t msglen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_msg(char *msg, size_t msglen, const char *fmt, ...)
{
    if (!msg || msglen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, msglen, fmt, ap);
    va_end(ap);
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* "x.so" or "dir/x.so" -> an absolute path; malloc'd, NULL when out of memory
 * or when the working directory is unknown. Not realpath(): a symlink in the
 * plugin folder is reported under the name the operator used. */
static char *absolute_path(const char *path)
{
    if (path[0] == '/')
        return strdup(path);
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof(cwd)))
        return NULL;
    size_t n = strlen(cwd) + 1 + strlen(path) + 1;
    char *out = malloc(n);
    if (out)
        snprintf(out, n, "%s/%s", cwd, path);
    return out;
}

/* The folder part of an absolute path, into buf. */
static void dir_name(const char *abs, char *buf, size_t len)
{
    const char *slash = strrchr(abs, '/');
    size_t n = slash && slash != abs ? (size_t)(slash - abs) : 1;
    if (n >= len)
        n = len - 1;
    memcpy(buf, abs, n);
    buf[n] = '\0';
}

/* Group/other write bits and the owner of one file or folder. */
static fh_load_err check_safety(const fh_loader_opts *opts, const char *path, const char *what,
                                const struct stat *st, char *msg, size_t msglen)
{
    if (st->st_mode & (S_IWGRP | S_IWOTH)) {
        set_msg(msg, msglen,
                "%s: %s is writable by %s (mode %04o); anyone who can write it can run code as "
                "the daemon: chmod go-w '%s'",
                path, what, (st->st_mode & S_IWOTH) ? "others" : "its group",
                (unsigned)(st->st_mode & 07777), path);
        return FH_LOAD_UNSAFE_PERMS;
    }
    if (!opts->skip_owner_checks && st->st_uid != 0 && st->st_uid != opts->daemon_uid) {
        set_msg(msg, msglen,
                "%s: %s is owned by uid %u, neither root nor the daemon's user (uid %u): "
                "chown root '%s'",
                path, what, (unsigned)st->st_uid, (unsigned)opts->daemon_uid, path);
        return FH_LOAD_BAD_OWNER;
    }
    return FH_LOAD_OK;
}

/* Reads the ELF identification and type from fd; refuses anything but a
 * shared object. e_type sits at the same offset for ELFCLASS32 and 64. */
static fh_load_err check_elf(int fd, const char *path, char *msg, size_t msglen)
{
    Elf64_Ehdr eh;
    memset(&eh, 0, sizeof(eh));
    ssize_t n = pread(fd, &eh, sizeof(eh), 0);
    if (n < 0) {
        set_msg(msg, msglen, "%s: cannot read: %s", path, strerror(errno));
        return FH_LOAD_IO;
    }
    if ((size_t)n < offsetof(Elf64_Ehdr, e_type) + sizeof(eh.e_type) ||
        memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) {
        set_msg(msg, msglen,
                "%s: not an ELF file; only shared objects built against <fusion/overlay.h> "
                "belong in the plugin folder: move it away",
                path);
        return FH_LOAD_NOT_ELF;
    }
    if (eh.e_type != ET_DYN) {
        set_msg(msg, msglen,
                "%s: an ELF file but not a shared object (e_type %u); link the plugin with "
                "-shared (check with `file %s`)",
                path, (unsigned)eh.e_type, base_name(path));
        return FH_LOAD_NOT_ELF;
    }
    return FH_LOAD_OK;
}

/* Every byte the dynamic loader will map is in the copy: a file caught
 * half-written (a copy straight into the folder, an scp) would map pages
 * past its end, and touching them is a SIGBUS inside dlopen(). */
static fh_load_err check_complete(int dirfd, const char *leaf, off_t size, const char *path,
                                  char *msg, size_t msglen)
{
    int fd = openat(dirfd, leaf, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        set_msg(msg, msglen, "%s: cannot read its private copy: %s", path, strerror(errno));
        return FH_LOAD_IO;
    }
    Elf64_Ehdr eh;
    fh_load_err err = FH_LOAD_OK;
    bool whole = pread(fd, &eh, sizeof(eh), 0) == (ssize_t)sizeof(eh);
    if (whole && eh.e_ident[EI_CLASS] == ELFCLASS64) {
        uint64_t ph_end = eh.e_phoff + (uint64_t)eh.e_phnum * eh.e_phentsize;
        whole = eh.e_phentsize == sizeof(Elf64_Phdr) && eh.e_phoff >= sizeof(eh) &&
                ph_end <= (uint64_t)size;
        for (unsigned i = 0; whole && i < eh.e_phnum; i++) {
            Elf64_Phdr ph;
            whole = pread(fd, &ph, sizeof(ph), (off_t)(eh.e_phoff + i * sizeof(ph))) ==
                    (ssize_t)sizeof(ph);
            if (whole && ph.p_type == PT_LOAD)
                whole = ph.p_offset + ph.p_filesz >= ph.p_offset &&
                        ph.p_offset + ph.p_filesz <= (uint64_t)size;
        }
    }
    close(fd);
    if (!whole) {
        set_msg(msg, msglen,
                "%s: incomplete ELF file (%lld bytes; its segments reach further): still being "
                "written? Install by writing elsewhere and `mv` into the folder; it is tried "
                "again when it changes",
                path, (long long)size);
        err = FH_LOAD_NOT_ELF;
    }
    return err;
}

/* mkdir -p for the cache folder, new levels 0700; it must be a folder. */
static int make_dirs(const char *dir)
{
    if (fh_mkdir_p(dir, 0700, 0700) != 0)
        return -1;
    struct stat st;
    if (stat(dir, &st) != 0)
        return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

static int copy_fd_at(int in, int dirfd, const char *leaf, struct stat *written,
                      fh_sha256_ctx *hash)
{
    const int flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
    int out = openat(dirfd, leaf, flags, 0500);
    if (out < 0 && errno == EEXIST) {
        /* Left behind by an earlier process with our pid. If it is still
         * mapped here, the RTLD_NOLOAD check that follows will say so. */
        if (unlinkat(dirfd, leaf, 0) != 0)
            return -1;
        out = openat(dirfd, leaf, flags, 0500);
    }
    if (out < 0)
        return -1;
    char buf[65536];
    off_t off = 0;
    for (;;) {
        ssize_t n = pread(in, buf, sizeof(buf), off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto fail;
        if (n == 0)
            break;
        off += n;
        fh_sha256_update(hash, buf, (size_t)n);
        for (ssize_t done = 0; done < n;) {
            ssize_t w = write(out, buf + done, (size_t)(n - done));
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0)
                goto fail;
            done += w;
        }
    }
    if (fstat(out, written) != 0)
        goto fail;
    if (close(out) != 0) {
        out = -1;
        goto fail;
    }
    return 0;
fail:;
    int saved = errno;
    if (out >= 0)
        close(out);
    unlinkat(dirfd, leaf, 0);
    errno = saved;
    return -1;
}

/* Opens the cache folder without following a symlink at its last component
 * and checks it on that descriptor: owned by the daemon's effective user,
 * not writable by group/other. Returns the descriptor, or -1 with *err and
 * msg set. */
static int open_cache_dir(const char *cache_dir, const char *abs, fh_load_err *err, char *msg,
                          size_t msglen)
{
    int dfd = open(cache_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (dfd < 0) {
        int e = errno;
        if ((e == ELOOP || e == ENOTDIR) && lstat(cache_dir, &st) == 0 && S_ISLNK(st.st_mode)) {
            set_msg(msg, msglen,
                    "%s: the plugin cache folder %s is a symbolic link; whoever can change the "
                    "link chooses what gets mapped: set cache_dir to a real folder owned by the "
                    "daemon's user, mode 700",
                    abs, cache_dir);
            *err = FH_LOAD_UNSAFE_PERMS;
        } else {
            set_msg(msg, msglen, "%s: cannot open the plugin cache folder %s: %s", abs, cache_dir,
                    strerror(e));
            *err = FH_LOAD_IO;
        }
        return -1;
    }
    if (fstat(dfd, &st) != 0) {
        set_msg(msg, msglen, "%s: cannot stat the plugin cache folder %s: %s", abs, cache_dir,
                strerror(errno));
        *err = FH_LOAD_IO;
        close(dfd);
        return -1;
    }
    /* Whoever owns or can write the cache folder can swap the copy between
     * our write and dlopen(): it must be the daemon's alone. */
    uid_t me = geteuid();
    if (st.st_uid != me) {
        set_msg(msg, msglen,
                "%s: the plugin cache folder %s is owned by uid %u, not by the daemon's user "
                "(uid %u), so its owner could swap the private copy before it is mapped: "
                "chown %u '%s' && chmod 700 '%s', or set cache_dir to a folder of the daemon's "
                "own",
                abs, cache_dir, (unsigned)st.st_uid, (unsigned)me, (unsigned)me, cache_dir,
                cache_dir);
        *err = FH_LOAD_UNSAFE_PERMS;
        close(dfd);
        return -1;
    }
    if (st.st_mode & (S_IWGRP | S_IWOTH)) {
        set_msg(msg, msglen,
                "%s: the plugin cache folder %s is writable by %s (mode %04o), so they could swap "
                "the private copy before it is mapped: chmod 700 '%s'",
                abs, cache_dir, (st.st_mode & S_IWOTH) ? "others" : "its group",
                (unsigned)(st.st_mode & 07777), cache_dir);
        *err = FH_LOAD_UNSAFE_PERMS;
        close(dfd);
        return -1;
    }
    return dfd;
}

/* True when the object behind `handle` is the file whose fstat is
 * `written`: the dynamic loader opened the copy by name, so a rename into
 * the cache folder between our write and dlopen() would map something else.
 * The folder checks make that unlikely; this makes it detected. */
static bool mapped_is_copy(void *handle, const struct stat *written)
{
    struct link_map *lm = NULL;
    if (dlinfo(handle, RTLD_DI_LINKMAP, &lm) != 0 || !lm || !lm->l_name || !*lm->l_name)
        return false;
    struct stat st;
    if (stat(lm->l_name, &st) != 0)
        return false;
    return st.st_dev == written->st_dev && st.st_ino == written->st_ino;
}

/* "/a/b/foo.so" -> "foo" into buf (the stem names the private copy). */
static void file_stem(const char *path, char *buf, size_t len)
{
    const char *b = base_name(path);
    size_t n = strlen(b);
    if (n > 3 && strcmp(b + n - 3, ".so") == 0)
        n -= 3;
    if (n >= len)
        n = len - 1;
    memcpy(buf, b, n);
    buf[n] = '\0';
}

/* True while an object of that name is still in the link map. The path is
 * the unique copy name, so only our own mapping can answer. */
static bool still_mapped(const char *copy_path)
{
    void *h = dlopen(copy_path, RTLD_LAZY | RTLD_NOLOAD);
    if (!h)
        return false;
    dlclose(h); /* drop the reference RTLD_NOLOAD just took */
    return true;
}

/* Set once constructors or destructors did not return in time: the thread
 * left in them may hold the dynamic loader's lock, so any further dlopen,
 * dlsym or dlclose in this process could block for ever. Loading and
 * closing stop until a restart, and say so. */
static atomic_bool loader_wedged;

static const char wedged_msg[] =
    "a plugin's constructors or destructors did not return (see above); the dynamic loader may "
    "be locked, so no plugin is loaded or unloaded until fusion-host restarts";

/* Plugin code of the loader's (constructors, entry, destructors), through
 * the door. FH_DOOR_TIMEOUT leaves the call running on its own thread. */
static fh_door_result plugin_call(fh_hook_call *c, const char *who, int deadline_ms)
{
    snprintf(c->who, sizeof(c->who), "%s", who);
    fh_door_result r = fh_door_call(c, deadline_ms);
    if (r == FH_DOOR_TIMEOUT && c->kind != FH_HOOK_ENTRY)
        atomic_store(&loader_wedged, true);
    return r;
}

bool fh_loader_wedged(void)
{
    return atomic_load(&loader_wedged);
}

/* dlclose() runs the plugin's destructors: attribute them to `who` in the
 * log. Returns true when the library is really unmapped afterwards; false
 * when the dynamic loader kept it, or its destructors did not return in time
 * (the library then stays mapped for good). Shared by fh_loader_close() and
 * the refusal path of fh_loader_open(), so a refused library that will not
 * unmap is reported like a loaded one. */
static bool close_handle(void *handle, const char *copy_path, const char *who, int deadline_ms)
{
    if (atomic_load(&loader_wedged))
        return false; /* left mapped: dlclose could block for ever */
    fh_hook_call c = {.kind = FH_HOOK_DLCLOSE, .handle = handle};
    if (plugin_call(&c, who, deadline_ms) != FH_DOOR_OK)
        return false;
    return !(copy_path && still_mapped(copy_path));
}

/* Checks the header fields of the descriptor the entry returned, then copies
 * it and checks the rest. Nothing past `size` is read before the first four
 * checks pass. */
static fh_load_err check_descriptor(const fusion_overlay_descriptor *d, const char *path,
                                    fh_plugin *out, char *msg, size_t msglen)
{
    if (!d) {
        set_msg(msg, msglen,
                "%s: " FUSION_OVERLAY_ENTRY_NAME "() returned NULL; it must return the address of "
                "a static descriptor: use FUSION_OVERLAY_DEFINE() from <fusion/overlay.h>",
                path);
        return FH_LOAD_NULL_DESCRIPTOR;
    }
    if (d->magic != FUSION_OVERLAY_MAGIC) {
        set_msg(msg, msglen,
                "%s: descriptor magic is 0x%08x, not 0x%08x; this is not a fusion overlay "
                "descriptor: build the plugin with FUSION_OVERLAY_DEFINE() from "
                "<fusion/overlay.h>",
                path, (unsigned)d->magic, (unsigned)FUSION_OVERLAY_MAGIC);
        return FH_LOAD_BAD_MAGIC;
    }
    if (d->abi_major != FUSION_ABI_MAJOR) {
        set_msg(msg, msglen,
                "%s: built for overlay ABI %u.%u, this host speaks ABI %d.%d; rebuild the plugin "
                "against this host's <fusion/overlay.h>",
                path, (unsigned)d->abi_major, (unsigned)d->abi_minor, FUSION_ABI_MAJOR,
                FUSION_ABI_MINOR);
        return FH_LOAD_ABI_MAJOR;
    }
    if (d->abi_minor > FUSION_ABI_MINOR) {
        set_msg(msg, msglen,
                "%s: built for overlay ABI %u.%u, newer than this host's %d.%d; upgrade "
                "fusion-host or rebuild the plugin against this host's <fusion/overlay.h>",
                path, (unsigned)d->abi_major, (unsigned)d->abi_minor, FUSION_ABI_MAJOR,
                FUSION_ABI_MINOR);
        return FH_LOAD_ABI_MINOR;
    }
    if (d->size < FH_DESC_SIZE_1_0) {
        set_msg(msg, msglen,
                "%s: descriptor declares %u bytes, less than the %zu of ABI 1.0; set .size with "
                "FUSION_OVERLAY_DEFINE() from <fusion/overlay.h> instead of by hand",
                path, (unsigned)d->size, (size_t)FH_DESC_SIZE_1_0);
        return FH_LOAD_TOO_SMALL;
    }

    memset(&out->desc, 0, sizeof(out->desc));
    memcpy(&out->desc, d, d->size < sizeof(out->desc) ? d->size : sizeof(out->desc));
    out->declared_size = d->size;
    const fusion_overlay_descriptor *c = &out->desc;

    if (!c->init || !c->fini || !c->apply || !c->evaluate) {
        set_msg(msg, msglen,
                "%s: required hook(s) missing:%s%s%s%s; an overlay must set .init, .fini, .apply "
                "and .evaluate in FUSION_OVERLAY_DEFINE()",
                path, c->init ? "" : " init", c->fini ? "" : " fini", c->apply ? "" : " apply",
                c->evaluate ? "" : " evaluate");
        return FH_LOAD_MISSING_HOOK;
    }
    if (!fh_overlay_name_valid(c->name)) {
        set_msg(msg, msglen,
                "%s: overlay name '%.*s' is not valid; use 1 to %d characters of [a-z0-9_] "
                "starting with a letter, the same as its feature's name",
                path, c->name ? 80 : 6, c->name ? c->name : "(null)", FUSION_NAME_MAX);
        return FH_LOAD_BAD_NAME;
    }
    if (!fh_overlay_version_valid(c->version)) {
        set_msg(msg, msglen,
                "%s: overlay '%s' has version '%.*s', not a semantic version; use "
                "MAJOR.MINOR.PATCH[-prerelease] of at most %d characters, e.g. \"1.2.0\"",
                path, c->name, c->version ? 40 : 6, c->version ? c->version : "(null)",
                FUSION_VERSION_MAX);
        return FH_LOAD_BAD_VERSION;
    }
    return FH_LOAD_OK;
}

fh_load_err fh_loader_open(const fh_loader_opts *opts, const char *path, fh_plugin *out, char *msg,
                           size_t msglen)
{
    memset(out, 0, sizeof(*out));
    set_msg(msg, msglen, "%s", "");
    if (atomic_load(&loader_wedged)) {
        set_msg(msg, msglen, "%s: not loaded: %s", path, wedged_msg);
        return FH_LOAD_TIMEOUT;
    }
    fh_load_err err = FH_LOAD_OK;
    int fd = -1, cache_fd = -1;
    void *handle = NULL;
    char *copy = NULL;
    char *abs = absolute_path(path);
    if (!abs) {
        set_msg(msg, msglen, "%s: cannot resolve the path: %s", path, strerror(errno));
        return FH_LOAD_IO;
    }

    fd = open(abs, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        set_msg(msg, msglen, "%s: cannot open: %s", abs, strerror(errno));
        err = FH_LOAD_IO;
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        set_msg(msg, msglen, "%s: not a regular file; a plugin is a .so file", abs);
        err = FH_LOAD_IO;
        goto fail;
    }

    char dir[PATH_MAX];
    dir_name(abs, dir, sizeof(dir));
    struct stat dst;
    if (stat(dir, &dst) != 0) {
        set_msg(msg, msglen, "%s: cannot stat its folder %s: %s", abs, dir, strerror(errno));
        err = FH_LOAD_IO;
        goto fail;
    }
    err = check_safety(opts, abs, "the file", &st, msg, msglen);
    if (err == FH_LOAD_OK) {
        char what[PATH_MAX + 16];
        snprintf(what, sizeof(what), "its folder %s", dir);
        err = check_safety(opts, abs, what, &dst, msg, msglen);
    }
    if (err != FH_LOAD_OK)
        goto fail;
    /* A symlink is followed (the file checked above is its target, through
     * fd); the folder its target lives in is held to the same rule as the
     * plugin folder, since whoever can write it can replace the code. */
    char real[PATH_MAX];
    if (realpath(abs, real) && strcmp(real, abs) != 0) {
        char rdir[PATH_MAX];
        dir_name(real, rdir, sizeof(rdir));
        if (strcmp(rdir, dir) != 0) {
            struct stat rst;
            if (stat(rdir, &rst) != 0) {
                set_msg(msg, msglen, "%s: cannot stat the folder of its target %s: %s", abs, real,
                        strerror(errno));
                err = FH_LOAD_IO;
                goto fail;
            }
            char what[2 * PATH_MAX + 48];
            snprintf(what, sizeof(what), "the folder %s of its symlink target %s", rdir, real);
            if ((err = check_safety(opts, abs, what, &rst, msg, msglen)) != FH_LOAD_OK)
                goto fail;
        }
    }
    if ((err = check_elf(fd, abs, msg, msglen)) != FH_LOAD_OK)
        goto fail;

    if (!opts->cache_dir || make_dirs(opts->cache_dir) != 0) {
        set_msg(msg, msglen, "%s: cannot create the plugin cache folder %s: %s", abs,
                opts->cache_dir ? opts->cache_dir : "(unset)", strerror(errno));
        err = FH_LOAD_IO;
        goto fail;
    }
    if ((cache_fd = open_cache_dir(opts->cache_dir, abs, &err, msg, msglen)) < 0)
        goto fail;
    char stem[FUSION_NAME_MAX + 1];
    file_stem(abs, stem, sizeof(stem));
    unsigned long seq = atomic_fetch_add(&copy_counter, 1) + 1;
    char leaf[FUSION_NAME_MAX + 64];
    snprintf(leaf, sizeof(leaf), "%s-%ld-%lu.so", stem, (long)getpid(), seq);
    size_t clen = strlen(opts->cache_dir) + 1 + strlen(leaf) + 1;
    copy = malloc(clen);
    if (!copy) {
        set_msg(msg, msglen, "%s: out of memory", abs);
        err = FH_LOAD_IO;
        goto fail;
    }
    snprintf(copy, clen, "%s/%s", opts->cache_dir, leaf);
    struct stat written;
    fh_sha256_ctx hash;
    fh_sha256_init(&hash);
    if (copy_fd_at(fd, cache_fd, leaf, &written, &hash) != 0) {
        set_msg(msg, msglen,
                "%s: cannot copy it to %s: %s; check that the cache folder is "
                "writable by the daemon",
                abs, copy, strerror(errno));
        free(copy);
        copy = NULL;
        err = FH_LOAD_IO;
        goto fail;
    }

    if ((err = check_complete(cache_fd, leaf, written.st_size, abs, msg, msglen)) != FH_LOAD_OK)
        goto fail;
    char sha[65];
    unsigned char digest[32];
    fh_sha256_final(&hash, digest);
    fh_sha256_hex(digest, sha);
    /* A file that crashed the daemon while it was being loaded is not
     * mapped again (crash.h): its constructors would run first. */
    if (opts->refuse_hash) {
        char why[400] = "";
        if (opts->refuse_hash(opts->refuse_ud, sha, why, sizeof(why))) {
            set_msg(msg, msglen, "%s: quarantined: %s", abs, why);
            err = FH_LOAD_QUARANTINED;
            goto fail;
        }
    }

    /* The copy's name is new to this process unless something went badly
     * wrong (a counter reuse, a fork); a hit would hand us old code. */
    void *stale = dlopen(copy, RTLD_LAZY | RTLD_NOLOAD);
    if (stale) {
        dlclose(stale);
        set_msg(msg, msglen,
                "%s: a library named %s is already mapped in this process, so dlopen() would "
                "return old code; restart the daemon to clear it",
                abs, copy);
        err = FH_LOAD_STALE_COPY;
        goto fail;
    }

    /* Constructors and the entry function are plugin code: through the door. */
    fh_hook_call dl = {
        .kind = FH_HOOK_DLOPEN, .path = copy, .dl_flags = RTLD_NOW | RTLD_LOCAL, .sha256 = sha};
    if (plugin_call(&dl, base_name(abs), opts->deadline_ms) != FH_DOOR_OK) {
        set_msg(msg, msglen,
                "%s: its constructors did not return within %d ms (hooks.deadline_ms); the "
                "library stays mapped until a restart: fix its initialisation code",
                abs, opts->deadline_ms);
        err = FH_LOAD_TIMEOUT;
        goto fail;
    }
    handle = dl.handle_out;
    if (!handle) {
        set_msg(msg, msglen,
                "%s: the dynamic loader refused it: %s; check its dependencies with `ldd %s` "
                "and that it was built for this system",
                abs, dl.dl_error, base_name(abs));
        err = FH_LOAD_DLOPEN;
        goto fail;
    }
    if (!mapped_is_copy(handle, &written)) {
        set_msg(msg, msglen,
                "%s: the library the dynamic loader mapped from %s is not the copy just written "
                "there (another device/inode): something else writes the cache folder %s; make "
                "it the daemon's alone (chmod 700, owned by the daemon's user) and load again",
                abs, copy, opts->cache_dir);
        err = FH_LOAD_UNSAFE_PERMS;
        goto fail;
    }
    dlerror();
    /* dlsym returns data pointers; the POSIX-blessed way to get a function
     * pointer out of it is to copy the bits. */
    void *sym = dlsym(handle, FUSION_OVERLAY_ENTRY_NAME);
    if (!sym) {
        set_msg(msg, msglen,
                "%s: no symbol " FUSION_OVERLAY_ENTRY_NAME "; build the plugin with "
                "FUSION_OVERLAY_DEFINE() from <fusion/overlay.h> and -fvisibility=hidden "
                "(check with `nm -D %s`)",
                abs, base_name(abs));
        err = FH_LOAD_NO_ENTRY;
        goto fail;
    }
    fh_hook_call en = {.kind = FH_HOOK_ENTRY, .sha256 = sha};
    memcpy(&en.entry, &sym, sizeof(en.entry));
    if (plugin_call(&en, base_name(abs), opts->deadline_ms) != FH_DOOR_OK) {
        set_msg(msg, msglen,
                "%s: " FUSION_OVERLAY_ENTRY_NAME "() did not return within %d ms "
                "(hooks.deadline_ms); the library stays mapped until a restart",
                abs, opts->deadline_ms);
        handle = NULL; /* its code may still run: never close it */
        err = FH_LOAD_TIMEOUT;
        goto fail;
    }
    const fusion_overlay_descriptor *d = en.desc_out;

    if ((err = check_descriptor(d, abs, out, msg, msglen)) != FH_LOAD_OK)
        goto fail;

    close(fd);
    close(cache_fd);
    out->handle = handle;
    out->deadline_ms = opts->deadline_ms;
    out->source_path = abs;
    out->copy_path = copy;
    out->source_dev = st.st_dev;
    out->source_ino = st.st_ino;
    memcpy(out->sha256, sha, sizeof(out->sha256));
    return FH_LOAD_OK;

fail:
    if (handle && !close_handle(handle, copy, base_name(abs), opts->deadline_ms)) {
        /* Its code stays in memory whatever we do; say so rather than
         * let the operator believe a refused file left nothing behind. */
        size_t used = msg && msglen ? strlen(msg) : 0;
        if (msg && used + 1 < msglen)
            snprintf(msg + used, msglen - used,
                     "; the dynamic loader also kept the refused library mapped (linked with -z "
                     "nodelete, or it uses unique symbols): it stays in memory until a restart");
        else
            fh_warn("%s: refused, and the dynamic loader kept the library mapped (linked with "
                    "-z nodelete, or it uses unique symbols) until a restart",
                    abs);
    }
    if (copy) {
        unlink(copy);
        free(copy);
    }
    if (cache_fd >= 0)
        close(cache_fd);
    if (fd >= 0)
        close(fd);
    free(abs);
    memset(out, 0, sizeof(*out));
    return err;
}

bool fh_loader_close(fh_plugin *p)
{
    bool unmapped = true;
    if (p->handle) {
        unmapped = close_handle(p->handle, p->copy_path, p->desc.name, p->deadline_ms);
        p->handle = NULL;
    }
    if (p->copy_path) {
        /* A pinned mapping keeps the inode alive; the name can go. */
        unlink(p->copy_path);
        free(p->copy_path);
    }
    free(p->source_path);
    memset(p, 0, sizeof(*p));
    return unmapped;
}
