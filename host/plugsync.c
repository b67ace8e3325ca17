/*
 * plugsync.c - see plugsync.h.
 */
#include "plugsync.h"

#include "log.h"
#include "plugindir.h"
#include "util.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct known_file {
    char *path;
    struct stat st;                 /* identity when last seen */
    char name[FUSION_NAME_MAX + 1]; /* the overlay it carried, "" if unknown */
    bool present;                   /* in this scan's listing */
    struct known_file *next;
} known_file;

struct fh_plugsync {
    fh_registry *reg;
    char *dir;
    int ifd; /* inotify, or -1 */
    int wd;
    unsigned watch_id; /* bumped whenever ifd is closed or made */
    bool dir_warned;   /* "cannot read the folder" logged */
    known_file *files;
    void (*tick)(void *);
    void *tick_ud;
};

static known_file *find_known(fh_plugsync *ps, const char *path)
{
    for (known_file *k = ps->files; k; k = k->next)
        if (strcmp(k->path, path) == 0)
            return k;
    return NULL;
}

static bool same_identity(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_mode == b->st_mode && a->st_uid == b->st_uid;
}

static void unwatch(fh_plugsync *ps)
{
    if (ps->ifd >= 0) {
        close(ps->ifd);
        ps->watch_id++;
    }
    ps->ifd = -1;
    ps->wd = -1;
}

static void watch_dir(fh_plugsync *ps)
{
    unwatch(ps);
    ps->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    ps->watch_id++;
    if (ps->ifd < 0) {
        fh_warn("plugins.watch: inotify unavailable (%s); new plugins load at the next reload",
                strerror(errno));
        return;
    }
    const uint32_t mask = IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CREATE |
                          IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF;
    ps->wd = inotify_add_watch(ps->ifd, ps->dir, mask);
    if (ps->wd < 0) {
        fh_warn("plugins.watch: cannot watch %s (%s); new plugins load at the next reload", ps->dir,
                strerror(errno));
        unwatch(ps);
    }
}

/* "/a/b/" -> "/a/b": the registry names files dir + "/" + leaf. */
static char *dir_copy(const char *dir)
{
    char *d = strdup(dir);
    size_t n = d ? strlen(d) : 0;
    while (n > 1 && d[n - 1] == '/')
        d[--n] = '\0';
    return d;
}

fh_plugsync *fh_plugsync_new(fh_registry *reg, const char *dir, bool watch, void (*tick)(void *),
                             void *tick_ud)
{
    fh_plugsync *ps = calloc(1, sizeof(*ps));
    if (!ps || !(ps->dir = dir_copy(dir))) {
        free(ps);
        return NULL;
    }
    ps->reg = reg;
    ps->ifd = ps->wd = -1;
    ps->tick = tick;
    ps->tick_ud = tick_ud;
    if (watch)
        watch_dir(ps);
    return ps;
}

static void forget_all(fh_plugsync *ps)
{
    while (ps->files) {
        known_file *k = ps->files;
        ps->files = k->next;
        free(k->path);
        free(k);
    }
}

void fh_plugsync_free(fh_plugsync *ps)
{
    if (!ps)
        return;
    unwatch(ps);
    forget_all(ps);
    free(ps->dir);
    free(ps);
}

const char *fh_plugsync_dir(const fh_plugsync *ps)
{
    return ps->dir;
}

bool fh_plugsync_watching(const fh_plugsync *ps)
{
    return ps->ifd >= 0;
}

int fh_plugsync_fd(const fh_plugsync *ps)
{
    return ps->ifd;
}

unsigned fh_plugsync_watch_id(const fh_plugsync *ps)
{
    return ps->watch_id;
}

bool fh_plugsync_read_events(fh_plugsync *ps)
{
    bool due = false;
    char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        ssize_t n = read(ps->ifd, buf, sizeof(buf));
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        for (char *p = buf; p < buf + n;) {
            const struct inotify_event *ev = (const struct inotify_event *)(void *)p;
            if (ev->mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED)) {
                fh_warn("plugins.dir %s was removed or moved; its overlays keep serving; "
                        "recreate it and reload to watch it again",
                        ps->dir);
                unwatch(ps);
                return due;
            }
            if (ev->mask & IN_Q_OVERFLOW)
                due = true;
            /* Only *.so names are plugins; a temporary (".x.so.tmp") is
             * not one until renamed. */
            size_t nl = ev->len ? strlen(ev->name) : 0;
            if (nl > 3 && ev->name[0] != '.' && strcmp(ev->name + nl - 3, ".so") == 0)
                due = true;
            p += sizeof(*ev) + ev->len;
        }
    }
    return due;
}

/* The registry's view: the loaded overlay (not draining) whose file is
 * `path`, and whether `path` is a refused file; name of either. */
typedef struct path_view {
    bool source; /* an overlay is loaded from it */
    bool failed; /* a refusal is remembered for it */
    char name[FUSION_NAME_MAX + 1];
} path_view;

static path_view view_of(const fh_overlay_info *list, size_t n, const char *path)
{
    path_view v = {0};
    for (size_t i = 0; i < n; i++) {
        if (strcmp(list[i].path, path) != 0)
            continue;
        if (list[i].state == FH_STATE_FAILED) {
            v.failed = true;
            if (!v.source)
                fh_strlcpy(v.name, list[i].name, sizeof(v.name));
        } else if (list[i].state != FH_STATE_DRAINING) {
            v.source = true;
            fh_strlcpy(v.name, list[i].name, sizeof(v.name));
        }
    }
    return v;
}

static fh_load_err load_file(fh_plugsync *ps, known_file *k, char *msg, size_t msglen,
                             char *name_out)
{
    char name[FUSION_NAME_MAX + 1] = "";
    fh_load_err e = fh_registry_load(ps->reg, k->path, msg, msglen, name);
    if (e == FH_LOAD_OK) {
        fh_strlcpy(k->name, name, sizeof(k->name));
    } else {
        /* The refusal may still know the name (a duplicate, init failed). */
        fh_overlay_info *list = NULL;
        size_t n = fh_registry_list(ps->reg, &list);
        path_view v = view_of(list, n, k->path);
        if (v.name[0] && !v.source)
            fh_strlcpy(k->name, v.name, sizeof(k->name));
        free(list);
    }
    if (name_out)
        fh_strlcpy(name_out, name, FUSION_NAME_MAX + 1);
    if (ps->tick)
        ps->tick(ps->tick_ud);
    return e;
}

/* The file that takes over `name` when the one serving it is deleted:
 * another present file known to carry it, most recently modified first. */
static known_file *successor(fh_plugsync *ps, const char *name, const known_file *gone)
{
    known_file *best = NULL;
    for (known_file *k = ps->files; k; k = k->next) {
        if (k == gone || !k->present || strcmp(k->name, name) != 0)
            continue;
        if (!best || k->st.st_mtim.tv_sec > best->st.st_mtim.tv_sec ||
            (k->st.st_mtim.tv_sec == best->st.st_mtim.tv_sec &&
             k->st.st_mtim.tv_nsec > best->st.st_mtim.tv_nsec))
            best = k;
    }
    return best;
}

static void file_gone(fh_plugsync *ps, known_file *k, const fh_overlay_info *list, size_t n)
{
    path_view v = view_of(list, n, k->path);
    if (v.source) {
        known_file *next = successor(ps, v.name, k);
        if (next) {
            fh_info("overlay %s: %s was deleted; %s carries the same overlay and takes over",
                    v.name, k->path, next->path);
            if (load_file(ps, next, NULL, 0, NULL) == FH_LOAD_OK) {
                if (v.failed)
                    fh_registry_forget_failed(ps->reg, k->path);
                return;
            }
        }
        fh_info("overlay %s: %s was deleted; unloading it once its requests in flight finish",
                v.name, k->path);
        /* Every overlay the file served (its contents may have changed
         * name); reap closes each once drained. */
        for (int i = 0; i < 64 && fh_registry_unload_path(ps->reg, k->path, 0) >= 0; i++)
            ;
    }
    if (v.failed)
        fh_registry_forget_failed(ps->reg, k->path);
}

static int by_mtime(const void *a, const void *b)
{
    const known_file *x = *(known_file *const *)a, *y = *(known_file *const *)b;
    if (x->st.st_mtim.tv_sec != y->st.st_mtim.tv_sec)
        return x->st.st_mtim.tv_sec < y->st.st_mtim.tv_sec ? -1 : 1;
    if (x->st.st_mtim.tv_nsec != y->st.st_mtim.tv_nsec)
        return x->st.st_mtim.tv_nsec < y->st.st_mtim.tv_nsec ? -1 : 1;
    return strcmp(x->path, y->path);
}

size_t fh_plugsync_scan(fh_plugsync *ps, bool retry_failed)
{
    fh_plugin_files files = {0};
    if (fh_plugin_files_list(ps->dir, &files) != 0) {
        if (!ps->dir_warned)
            fh_error("plugins.dir %s cannot be read: %s; the overlays loaded keep serving, and "
                     "nothing new loads until it can be read",
                     ps->dir, strerror(errno));
        ps->dir_warned = true;
        return 0;
    }
    ps->dir_warned = false;
    for (known_file *k = ps->files; k; k = k->next)
        k->present = false;

    /* What changed: files new to us or with another identity. */
    size_t nchanged = 0;
    known_file **changed = calloc(files.count + 1, sizeof(*changed));
    for (size_t i = 0; i < files.count; i++) {
        struct stat st;
        if (stat(files.paths[i], &st) != 0)
            memset(&st, 0, sizeof(st)); /* a dangling link: the loader says why */
        known_file *k = find_known(ps, files.paths[i]);
        if (!k) {
            k = calloc(1, sizeof(*k));
            if (!k || !(k->path = strdup(files.paths[i]))) {
                free(k);
                continue;
            }
            k->st = st;
            k->next = ps->files;
            ps->files = k;
            if (changed)
                changed[nchanged++] = k;
        } else if (!same_identity(&k->st, &st)) {
            k->st = st;
            if (changed)
                changed[nchanged++] = k;
        }
        k->present = true;
    }
    fh_plugin_files_free(&files);

    fh_overlay_info *list = NULL;
    size_t n = fh_registry_list(ps->reg, &list);
    /* Deleted files first, so a successor can take over before the new
     * files of this scan load. */
    for (known_file **pp = &ps->files; *pp;) {
        known_file *k = *pp;
        if (k->present) {
            pp = &k->next;
            continue;
        }
        file_gone(ps, k, list, n);
        *pp = k->next;
        free(k->path);
        free(k);
    }
    /* Oldest first: of two files carrying one overlay, the newer one ends up
     * serving, at start as at run time. */
    if (changed && nchanged > 1)
        qsort(changed, nchanged, sizeof(*changed), by_mtime);
    size_t loads = 0;
    for (size_t i = 0; i < nchanged; i++) {
        path_view before = view_of(list, n, changed[i]->path);
        char name[FUSION_NAME_MAX + 1] = "";
        if (load_file(ps, changed[i], NULL, 0, name) == FH_LOAD_OK && before.source &&
            strcmp(before.name, name) != 0) {
            /* The file now carries another overlay: the one it carried
             * has no file any more. */
            fh_info("overlay %s: %s now carries overlay %s; unloading %s once its requests in "
                    "flight finish",
                    before.name, changed[i]->path, name, before.name);
            fh_registry_unload(ps->reg, before.name, 0);
        }
        loads++;
    }
    if (retry_failed) {
        for (known_file *k = ps->files; k; k = k->next) {
            bool fresh = false;
            for (size_t i = 0; i < nchanged; i++)
                fresh = fresh || changed[i] == k;
            path_view v = view_of(list, n, k->path);
            /* A loaded overlay whose new config was refused is retried by
             * the reload's own re-initialisation, not here. */
            if (!fresh && v.failed && !v.source) {
                load_file(ps, k, NULL, 0, NULL);
                loads++;
            }
        }
    }
    free(list);
    free(changed);
    return loads;
}

void fh_plugsync_move(fh_plugsync *ps, const char *dir, bool watch)
{
    char *copy = dir_copy(dir);
    if (!copy) {
        fh_error("out of memory: plugins.dir stays %s", ps->dir);
        return;
    }
    if (strcmp(ps->dir, copy) == 0) {
        free(copy);
        if (!watch)
            unwatch(ps);
        else if (!fh_plugsync_watching(ps))
            watch_dir(ps);
        fh_plugsync_scan(ps, true);
        return;
    }
    /* The old folder's overlays go first (they drain), then the new
     * folder loads: an overlay in both is served by the baseline for the
     * moment between, but never by a file outside plugins.dir. */
    fh_overlay_info *list = NULL;
    size_t n = fh_registry_list(ps->reg, &list);
    for (known_file *k = ps->files; k; k = k->next) {
        path_view v = view_of(list, n, k->path);
        if (v.source) {
            fh_info("overlay %s: plugins.dir moved to %s; unloading it (requests in flight "
                    "finish first)",
                    v.name, copy);
            for (int i = 0; i < 64 && fh_registry_unload_path(ps->reg, k->path, 0) >= 0; i++)
                ;
        }
        if (v.failed)
            fh_registry_forget_failed(ps->reg, k->path);
    }
    free(list);
    forget_all(ps);
    free(ps->dir);
    ps->dir = copy;
    if (watch)
        watch_dir(ps);
    else
        unwatch(ps);
    fh_plugsync_scan(ps, true);
}

fh_load_err fh_plugsync_load(fh_plugsync *ps, const char *path, char *msg, size_t msglen,
                             char *name_out, bool *swapped, bool *outside)
{
    *swapped = false;
    *outside = false;
    char full[PATH_MAX];
    if (path[0] == '/')
        fh_strlcpy(full, path, sizeof(full));
    else
        snprintf(full, sizeof(full), "%s/%s", ps->dir, path);
    /* Directly inside the folder, by name: no "..", no subfolder. What a
     * symlink in the folder points at is the loader's to judge. */
    const char *slash = strrchr(full, '/');
    const char *leaf = slash ? slash + 1 : full;
    size_t llen = strlen(leaf);
    /* The folder it names must be plugins.dir itself, however reached (a
     * symlinked path to it included): compared by identity, not text. */
    bool inside = false;
    if (slash && strlen(path) < PATH_MAX - 1) {
        char parent[PATH_MAX];
        size_t plen = slash == full ? 1 : (size_t)(slash - full);
        memcpy(parent, full, plen);
        parent[plen] = '\0';
        struct stat a, b;
        inside = stat(parent, &a) == 0 && stat(ps->dir, &b) == 0 && a.st_dev == b.st_dev &&
                 a.st_ino == b.st_ino;
    }
    /* No "." or ".." segments either: a plain name or path is asked for. */
    bool dots = strstr(path, "/./") || strstr(path, "/../") || !strncmp(path, "./", 2) ||
                !strncmp(path, "../", 3);
    if (!inside || dots || leaf[0] == '.' || llen < 4 || strcmp(leaf + llen - 3, ".so") != 0) {
        snprintf(msg, msglen,
                 "%s: only *.so files directly inside plugins.dir (%s) can be loaded; move it "
                 "there first (write it elsewhere, then mv)",
                 path, ps->dir);
        *outside = true;
        return FH_LOAD_IO;
    }
    /* From here on, the folder's own name for it (leaf points into full). */
    char name_in_dir[NAME_MAX + 1];
    fh_strlcpy(name_in_dir, leaf, sizeof(name_in_dir));
    snprintf(full, sizeof(full), "%s/%s", ps->dir, name_in_dir);
    struct stat st;
    if (stat(full, &st) != 0) {
        snprintf(msg, msglen, "%s: %s", full, strerror(errno));
        *outside = true;
        return FH_LOAD_IO;
    }
    fh_overlay_info *list = NULL;
    size_t n = fh_registry_list(ps->reg, &list);
    known_file *k = find_known(ps, full);
    if (!k) {
        k = calloc(1, sizeof(*k));
        if (!k || !(k->path = strdup(full))) {
            free(k);
            free(list);
            snprintf(msg, msglen, "%s: out of memory", full);
            return FH_LOAD_IO;
        }
        k->next = ps->files;
        ps->files = k;
    }
    k->st = st;
    k->present = true;
    char name[FUSION_NAME_MAX + 1] = "";
    fh_load_err e = load_file(ps, k, msg, msglen, name);
    if (e == FH_LOAD_OK) {
        for (size_t i = 0; i < n; i++)
            if (strcmp(list[i].name, name) == 0 && list[i].state != FH_STATE_FAILED &&
                list[i].state != FH_STATE_DRAINING)
                *swapped = true;
        if (name_out)
            fh_strlcpy(name_out, name, FUSION_NAME_MAX + 1);
    }
    free(list);
    return e;
}
