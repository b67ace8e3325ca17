/*
 * registry.c - overlays by name, their generations, and refused files
 * (see registry.h).
 *
 * Owns: every fh_entry (one per overlay name), every fh_generation (one per
 * successful load: the mapped plugin and the state its init() returned), and
 * every fh_failed record (a file that was refused, with why).
 *
 * Data:
 *   entries    list of fh_entry; each has `current` (the generation new
 *              requests get, NULL once unloaded), `retired` (generations
 *              replaced or unloaded, still draining), `finalising` (how many
 *              were taken off `retired` and are being finalised now) and
 *              `pinned` (finalised ones the dynamic loader kept mapped, with
 *              a record of the last: version, ABI and source path). An
 *              entry is freed only when all four are empty, so a library
 *              left in memory stays listed until the process ends.
 *   failed     list of refused files by path.
 *
 * Locks and who touches what:
 *   lock       rwlock (writer-preferring, so a stream of readers cannot
 *              starve a swap). Readers: acquire, list, get. Writers: publish
 *              a loaded generation, retire, enable/disable/quarantine, reap.
 *              Every field of an entry, a generation's `retired`, `holds`
 *              and list links, and the failed list are read under it and
 *              written only under the write lock.
 *   refs       per generation, atomic. Acquire increments it under the read
 *              lock while the generation is current; once a generation is
 *              retired (under the write lock) nobody can find it, so its
 *              count only goes down. "refs == 0 && retired" is therefore
 *              stable, and only then are fini() and dlclose() run.
 *   drain_mu / drain_cv
 *              unload waiters sleep on drain_cv until their generations'
 *              refs reach zero or a deadline passes. A release that takes
 *              refs to zero broadcasts when any generation is retired
 *              (`nretired`, atomic; read after the decrement, both seq_cst,
 *              so either the releaser sees the retirement or the waiter
 *              sees the zero). The releaser never reads the generation after
 *              its decrement: a reaper may free it at that moment.
 *   holds      an unload waiter's pin on a retired generation's memory (not
 *              its code): reap skips a held generation so the waiter's
 *              pointer stays valid while it sleeps.
 *
 * Plugin code (init, fini, match, apply, evaluate, and the loader's entry
 * call) never runs with a registry lock held: init() runs before the
 * generation is published, fini() after it is unreachable and drained, the
 * hooks between acquire and release. Every call goes through the door
 * (door.h), which attributes, times and bounds it: init() and fini() past
 * hooks.deadline_ms leave the generation mapped for good (a timed-out init
 * refuses the load; a timed-out fini counts as pinned).
 *
 * Threads: any. Routing threads acquire/call/release; the control thread
 * (admin API, folder watcher, reload) loads, swaps, unloads and reaps.
 */
#include "registry.h"

#include "door.h"
#include "log.h"
#include "util.h"

#include <assert.h>
#include <jansson.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define FH_GEN_MAGIC  0x47454e31u /* "GEN1" */
#define FH_GEN_DEAD   0x44454144u /* "DEAD": finalised, about to be freed */
#define FH_INIT_ERROR 512

struct fh_generation {
    uint32_t magic;
    fh_registry *reg;               /* immutable; outlives the generation */
    char name[FUSION_NAME_MAX + 1]; /* stable copy for log attribution */
    char version[FUSION_VERSION_MAX + 1];
    unsigned long seq; /* load number, for log lines */
    fh_plugin plugin;
    void *state; /* from init() */
    atomic_ulong refs;
    atomic_int hung;        /* detached hook calls not yet returned (door.h) */
    double rule_pass_mark;  /* overlays.<name>.rule_pass_mark, at load */
    struct fh_entry *entry; /* set when published; valid while referenced */
    bool retired;           /* under lock */
    unsigned holds;         /* unload waiters sleeping on it; under lock */
    fh_generation *next_retired;
};

/* The last generation of an entry that dlclose() left mapped: what `list`
 * shows once no live generation is left to describe the overlay. */
typedef struct fh_pinned_record {
    char version[FUSION_VERSION_MAX + 1];
    unsigned abi_major, abi_minor;
    char source_path[4096]; /* its private copy is named in the warning */
} fh_pinned_record;

typedef struct fh_entry {
    char name[FUSION_NAME_MAX + 1];
    fh_overlay_state state; /* ENABLED, DISABLED, QUARANTINED or DRAINING */
    char reason[512];
    fh_generation *current; /* NULL once unloaded */
    fh_generation *retired; /* newest first */
    size_t finalising;      /* off `retired`, fini()/dlclose() running */
    size_t pinned;          /* finalised but still mapped */
    fh_pinned_record last_pinned;
    atomic_ulong requests, applied; /* routed to it / served overlaid, since loaded */
    struct fh_entry *next;
} fh_entry;

/* Shown as the reason of an unloaded overlay whose library stays mapped. */
#define FH_PINNED_REASON                                                                           \
    "unloaded but the dynamic loader kept the library mapped (RTLD_NODELETE or unique symbols); "  \
    "restart to unmap it"

typedef struct fh_failed {
    char *path;
    char name[FUSION_NAME_MAX + 1]; /* when known (duplicate, init failed) */
    fh_load_err error;
    char message[512];
    struct fh_failed *next;
} fh_failed;

struct fh_registry {
    fh_registry_opts opts;
    char *cache_dir; /* owned copy of opts.loader.cache_dir */
    pthread_rwlock_t lock;
    fh_entry *entries;
    fh_failed *failed;
    unsigned long load_seq;
    atomic_ulong changes;  /* bumped by every load, unload and state change */
    atomic_ulong nretired; /* retired generations not yet finalised */
    pthread_mutex_t drain_mu;
    pthread_cond_t drain_cv; /* CLOCK_MONOTONIC */
};

static const char *const state_names[FH_STATE_COUNT] = {
    [FH_STATE_ENABLED] = "enabled",   [FH_STATE_DISABLED] = "disabled",
    [FH_STATE_DRAINING] = "draining", [FH_STATE_QUARANTINED] = "quarantined",
    [FH_STATE_FAILED] = "failed",
};

const char *fh_overlay_state_name(fh_overlay_state s)
{
    if ((int)s < 0 || s >= FH_STATE_COUNT)
        return "unknown";
    return state_names[s];
}

/* Locks that cannot fail in a correct program: a failure is a bug. */
static void wrlock(fh_registry *r)
{
    int rc = pthread_rwlock_wrlock(&r->lock);
    assert(rc == 0);
    (void)rc;
}

static void rdlock(fh_registry *r)
{
    int rc = pthread_rwlock_rdlock(&r->lock);
    assert(rc == 0);
    (void)rc;
}

static void unlock(fh_registry *r)
{
    int rc = pthread_rwlock_unlock(&r->lock);
    assert(rc == 0);
    (void)rc;
}

fh_registry *fh_registry_new(const fh_registry_opts *opts)
{
    fh_registry *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->opts = *opts;
    if (opts->loader.cache_dir) {
        r->cache_dir = strdup(opts->loader.cache_dir);
        if (!r->cache_dir) {
            free(r);
            return NULL;
        }
    }
    r->opts.loader.cache_dir = r->cache_dir;
    r->opts.loader.deadline_ms = opts->hook_deadline_ms;

    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    int rc = pthread_rwlock_init(&r->lock, &ra);
    pthread_rwlockattr_destroy(&ra);
    if (rc != 0)
        goto fail_lock;
    if (pthread_mutex_init(&r->drain_mu, NULL) != 0)
        goto fail_mu;
    if (fh_cond_init_monotonic(&r->drain_cv) != 0)
        goto fail_cv;
    atomic_init(&r->nretired, 0);
    return r;

fail_cv:
    pthread_mutex_destroy(&r->drain_mu);
fail_mu:
    pthread_rwlock_destroy(&r->lock);
fail_lock:
    free(r->cache_dir);
    free(r);
    return NULL;
}

/* ---- lookups (caller holds the lock) ---------------------------------- */

static fh_entry *find_entry(fh_registry *r, const char *name)
{
    for (fh_entry *e = r->entries; e; e = e->next)
        if (strcmp(e->name, name) == 0)
            return e;
    return NULL;
}

static fh_failed *find_failed_path(fh_registry *r, const char *path)
{
    for (fh_failed *f = r->failed; f; f = f->next)
        if (strcmp(f->path, path) == 0)
            return f;
    return NULL;
}

static fh_failed *find_failed_name(fh_registry *r, const char *name)
{
    for (fh_failed *f = r->failed; f; f = f->next)
        if (f->name[0] && strcmp(f->name, name) == 0)
            return f;
    return NULL;
}

/* Unlinks and frees the failed record of `path`, if any. Write lock. */
static void drop_failed(fh_registry *r, const char *path)
{
    for (fh_failed **pp = &r->failed; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->path, path) == 0) {
            fh_failed *f = *pp;
            *pp = f->next;
            free(f->path);
            free(f);
            return;
        }
    }
}

/* Removes an entry with nothing left in it. An entry with generations being
 * finalised stays until their outcome is known, and one with a pinned
 * library stays for good: that memory is still in use. Write lock. */
static void drop_entry_if_empty(fh_registry *r, fh_entry *e)
{
    if (e->current || e->retired || e->finalising || e->pinned)
        return;
    for (fh_entry **pp = &r->entries; *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            free(e);
            return;
        }
    }
}

/* Makes the current generation unreachable. Write lock. */
static void retire_current(fh_registry *r, fh_entry *e)
{
    fh_generation *g = e->current;
    if (!g)
        return;
    e->current = NULL;
    g->retired = true;
    g->next_retired = e->retired;
    e->retired = g;
    atomic_fetch_add(&r->nretired, 1);
}

/* ---- remembering refusals --------------------------------------------- */

static void record_failed(fh_registry *r, const char *path, const char *name, fh_load_err err,
                          const char *message)
{
    wrlock(r);
    fh_failed *f = find_failed_path(r, path);
    if (!f) {
        f = calloc(1, sizeof(*f));
        if (f)
            f->path = strdup(path);
        if (!f || !f->path) {
            /* Out of memory: the refusal is still logged, just not listed. */
            free(f);
            unlock(r);
            return;
        }
        f->next = r->failed;
        r->failed = f;
    }
    fh_strlcpy(f->name, name, sizeof(f->name));
    f->error = err;
    fh_strlcpy(f->message, message, sizeof(f->message));
    unlock(r);
}

/* ---- finalising ------------------------------------------------------- */

/* fini() through the door. No lock held. */
static fh_door_result call_fini(fh_generation *g)
{
    fh_hook_call c = {.kind = FH_HOOK_FINI, .desc = &g->plugin.desc, .state = g->state};
    fh_strlcpy(c.who, g->name, sizeof(c.who));
    c.version = g->version;
    c.sha256 = g->plugin.sha256;
    return fh_door_call(&c, g->reg->opts.hook_deadline_ms);
}

/* Runs fini() and dlclose() on a drained, unreachable generation and frees
 * it. Returns true when the library was really unmapped. No lock held. */
static bool finalise(fh_generation *g)
{
    assert(g->magic == FH_GEN_MAGIC);
    assert(atomic_load(&g->refs) == 0);
    char copy[4096];
    fh_strlcpy(copy, g->plugin.copy_path, sizeof(copy));
    bool unmapped = false;
    if (call_fini(g) == FH_DOOR_OK)
        unmapped = fh_loader_close(&g->plugin);
    else
        g->plugin.handle = NULL; /* fini() still runs: its code stays mapped */
    if (unmapped)
        fh_debug("overlay %s %s (generation %lu) finalised and unmapped", g->name, g->version,
                 g->seq);
    else
        fh_warn("overlay %s %s (generation %lu): dlclose() did not unmap %s; the library stays "
                "in memory (built with -z nodelete, or it uses unique/TLS symbols); rebuild it "
                "with -fvisibility=hidden and without them",
                g->name, g->version, g->seq, copy);
    g->magic = FH_GEN_DEAD;
    free(g);
    return unmapped;
}

/* An overlay with no live generation but a library in memory says why it
 * is still listed (draining, with that reason). Write lock. */
static void note_pinned(fh_entry *e)
{
    if (!e->current && e->pinned > 0) {
        e->state = FH_STATE_DRAINING;
        fh_strlcpy(e->reason, FH_PINNED_REASON, sizeof(e->reason));
    }
}

/* Finalises a list (linked by next_retired) built under the write lock by
 * collect_drained(), and books each outcome on its entry, which its
 * `finalising` count kept alive meanwhile. */
static void finalise_list(fh_registry *r, fh_generation *list)
{
    while (list) {
        fh_generation *g = list;
        list = g->next_retired;
        char name[FUSION_NAME_MAX + 1];
        fh_pinned_record rec;
        fh_strlcpy(name, g->name, sizeof(name));
        fh_strlcpy(rec.version, g->version, sizeof(rec.version));
        rec.abi_major = g->plugin.desc.abi_major;
        rec.abi_minor = g->plugin.desc.abi_minor;
        fh_strlcpy(rec.source_path, g->plugin.source_path, sizeof(rec.source_path));
        bool unmapped = finalise(g); /* frees g */
        atomic_fetch_sub(&r->nretired, 1);
        wrlock(r);
        fh_entry *e = find_entry(r, name);
        assert(e && e->finalising > 0);
        if (e) {
            e->finalising--;
            if (!unmapped) {
                e->pinned++;
                e->last_pinned = rec;
                note_pinned(e);
            }
            drop_entry_if_empty(r, e);
        }
        unlock(r);
    }
}

/* Moves the drained, unheld retired generations of `e` onto *out, counting
 * them in e->finalising. Write lock. Returns how many stay behind. */
static size_t collect_drained(fh_entry *e, fh_generation **out)
{
    size_t left = 0;
    for (fh_generation **pp = &e->retired; *pp;) {
        fh_generation *g = *pp;
        if (g->holds == 0 && atomic_load(&g->refs) == 0) {
            *pp = g->next_retired;
            g->next_retired = *out;
            *out = g;
            e->finalising++;
        } else {
            left++;
            pp = &g->next_retired;
        }
    }
    return left;
}

size_t fh_registry_reap(fh_registry *r)
{
    fh_generation *todo = NULL;
    size_t left = 0;
    wrlock(r);
    for (fh_entry *e = r->entries, *next; e; e = next) {
        next = e->next;
        left += collect_drained(e, &todo);
        drop_entry_if_empty(r, e);
    }
    unlock(r);
    finalise_list(r, todo);
    return left;
}

/* ---- draining --------------------------------------------------------- */

/* Sleeps until every generation in gens[] has no references or the
 * deadline passes. The caller holds a `holds` pin on each. No registry lock. */
static void wait_drained(fh_registry *r, fh_generation **gens, size_t n,
                         const struct timespec *deadline)
{
    pthread_mutex_lock(&r->drain_mu);
    for (size_t i = 0; i < n; i++) {
        while (atomic_load(&gens[i]->refs) > 0) {
            int rc = pthread_cond_timedwait(&r->drain_cv, &r->drain_mu, deadline);
            if (rc == ETIMEDOUT) {
                pthread_mutex_unlock(&r->drain_mu);
                return;
            }
        }
    }
    pthread_mutex_unlock(&r->drain_mu);
}

/* Pins every retired generation of `e` into a malloc'd array. Write lock. */
static fh_generation **hold_retired(fh_entry *e, size_t *n)
{
    size_t count = 0;
    for (fh_generation *g = e->retired; g; g = g->next_retired)
        count++;
    *n = 0;
    if (count == 0)
        return NULL;
    fh_generation **arr = malloc(count * sizeof(*arr));
    if (!arr)
        return NULL; /* no wait then; reap finishes later */
    for (fh_generation *g = e->retired; g; g = g->next_retired) {
        g->holds++;
        arr[(*n)++] = g;
    }
    return arr;
}

/* Retires `e`'s current generation, waits for the entry's retired
 * generations to drain, finalises those that did. Called with the write
 * lock held; returns with it released. 0 closed, 1 still draining. */
static int unload_locked(fh_registry *r, fh_entry *e, int drain_timeout_ms)
{
    char name[FUSION_NAME_MAX + 1];
    fh_strlcpy(name, e->name, sizeof(name));
    retire_current(r, e);
    e->state = FH_STATE_DRAINING;
    note_pinned(e); /* a library an earlier swap left mapped */
    atomic_fetch_add(&r->changes, 1);
    size_t n = 0;
    fh_generation **held = hold_retired(e, &n);
    unlock(r);

    if (n > 0 && drain_timeout_ms > 0) {
        struct timespec deadline;
        fh_deadline_after(&deadline, drain_timeout_ms);
        wait_drained(r, held, n, &deadline);
    }

    fh_generation *todo = NULL;
    size_t left = 0;
    wrlock(r);
    for (size_t i = 0; i < n; i++)
        held[i]->holds--;
    /* The entry cannot have been freed: our holds kept it non-empty. */
    e = find_entry(r, name);
    if (e) {
        left = collect_drained(e, &todo);
        drop_entry_if_empty(r, e);
    }
    unlock(r);
    free(held);
    finalise_list(r, todo);
    if (left > 0)
        fh_warn("overlay %s: %zu generation(s) still in use after %d ms; left mapped and "
                "draining, finalised once released",
                name, left, drain_timeout_ms);
    else
        fh_info("overlay %s unloaded", name);
    return left > 0 ? 1 : 0;
}

int fh_registry_unload(fh_registry *r, const char *name, int drain_timeout_ms)
{
    wrlock(r);
    fh_entry *e = find_entry(r, name);
    if (!e) {
        unlock(r);
        return -1;
    }
    return unload_locked(r, e, drain_timeout_ms);
}

int fh_registry_unload_path(fh_registry *r, const char *path, int drain_timeout_ms)
{
    wrlock(r);
    for (fh_entry *e = r->entries; e; e = e->next) {
        if (e->current && strcmp(e->current->plugin.source_path, path) == 0)
            return unload_locked(r, e, drain_timeout_ms);
    }
    unlock(r);
    return -1;
}

void fh_registry_forget_failed(fh_registry *r, const char *path)
{
    wrlock(r);
    drop_failed(r, path);
    unlock(r);
}

/* ---- loading ---------------------------------------------------------- */

/* Same name and version already current from another file? (lock held) */
/* *gone: whether the file serving the name was deleted or replaced (then
 * this one takes over). Found with stat() when `look` (under the read lock
 * only: the write lock stops every request's acquire), else trusted. */
static const fh_generation *duplicate_of(fh_registry *r, const fh_plugin *p, bool look, bool *gone)
{
    fh_entry *e = find_entry(r, p->desc.name);
    if (!e || !e->current)
        return NULL;
    const fh_generation *cur = e->current;
    if (strcmp(cur->version, p->desc.version) != 0 ||
        strcmp(cur->plugin.source_path, p->source_path) == 0)
        return NULL;
    if (look) {
        struct stat st;
        *gone = stat(cur->plugin.source_path, &st) != 0 || st.st_dev != cur->plugin.source_dev ||
                st.st_ino != cur->plugin.source_ino;
    }
    return *gone ? NULL : cur;
}

static void duplicate_msg(const fh_plugin *p, const char *other, char *msg, size_t msglen)
{
    snprintf(msg, msglen,
             "%s: overlay name '%s' %s is already loaded from %s; remove one of the files",
             p->source_path, p->desc.name, p->desc.version, other);
}

/* Calls init() with the overlay's inputs. No lock held. */
static fh_load_err run_init(fh_registry *r, fh_generation *g, char *msg, size_t msglen)
{
    fh_overlay_inputs in = {0};
    if (r->opts.inputs_for && r->opts.inputs_for(r->opts.inputs_ud, g->name, &in) != 0) {
        snprintf(msg, msglen,
                 "%s: the configuration of overlay '%s' was refused; fix its entry under "
                 "`overlays:` or its feature flags and reload",
                 g->plugin.source_path, g->name);
        return FH_LOAD_INIT_FAILED;
    }
    char error[FH_INIT_ERROR] = "";
    fusion_init_args args = {
        .size = (uint32_t)sizeof(args),
        .host = r->opts.host_api,
        .config_json = in.config_json ? in.config_json : "{}",
        .directives = in.directives,
        .directive_count = in.directive_count,
        .error = error,
        .error_size = sizeof(error),
    };
    args.config_len = strlen(args.config_json);
    /* 1.1: the config parsed once, for the config_*() accessors. */
    json_t *tree = json_loads(args.config_json, 0, NULL);
    args.host_config = tree;
    g->rule_pass_mark = in.rule_pass_mark > 0 ? in.rule_pass_mark : 0.5;
    fh_hook_call c = {.kind = FH_HOOK_INIT, .desc = &g->plugin.desc, .init_args = &args};
    fh_strlcpy(c.who, g->name, sizeof(c.who));
    c.version = g->version;
    c.sha256 = g->plugin.sha256;
    fh_door_result dr = fh_door_call(&c, r->opts.hook_deadline_ms);
    json_decref(tree); /* an abandoned init() reads the door's own copy */
    if (dr != FH_DOOR_OK) {
        snprintf(msg, msglen,
                 "%s: overlay '%s' %s init() did not return within %d ms (hooks.deadline_ms); "
                 "it stays mapped until a restart: fix its init() and load it again",
                 g->plugin.source_path, g->name, g->version, r->opts.hook_deadline_ms);
        return FH_LOAD_TIMEOUT;
    }
    int rc = c.rc;
    void *state = c.state_out;
    error[sizeof(error) - 1] = '\0'; /* the plugin may have filled it all */
    if (rc != 0) {
        snprintf(msg, msglen,
                 "%s: overlay '%s' %s init() failed (%d): %s; fix its `config:` or directives "
                 "and load it again",
                 g->plugin.source_path, g->name, g->version, rc,
                 error[0] ? error : "no reason given");
        return FH_LOAD_INIT_FAILED;
    }
    g->state = state;
    return FH_LOAD_OK;
}

/* Logs a refusal, remembers it, returns it. */
static fh_load_err refuse(fh_registry *r, const char *path, const char *name, fh_load_err err,
                          const char *message)
{
    fh_error("%s", message);
    record_failed(r, path, name, err, message);
    return err;
}

/* Undoes a generation that was opened (and maybe initialised) but will not
 * be published, and remembers why. No lock held. */
static fh_load_err discard(fh_registry *r, fh_generation *g, bool initialised, const char *path,
                           fh_load_err err, const char *msg)
{
    char name[FUSION_NAME_MAX + 1];
    fh_strlcpy(name, g->name, sizeof(name));
    if (err == FH_LOAD_TIMEOUT || (initialised && call_fini(g) != FH_DOOR_OK)) {
        /* Its code may still run on an abandoned thread: never unmap it. */
        g->magic = FH_GEN_DEAD;
        return refuse(r, path, name, err, msg);
    }
    fh_loader_close(&g->plugin);
    free(g);
    return refuse(r, path, name, err, msg);
}

fh_load_err fh_registry_load(fh_registry *r, const char *path, char *msg, size_t msglen,
                             char *name_out)
{
    char local[1024];
    if (!msg || msglen == 0) {
        msg = local;
        msglen = sizeof(local);
    }
    msg[0] = '\0';

    fh_generation *g = calloc(1, sizeof(*g));
    if (!g) {
        snprintf(msg, msglen, "%s: out of memory", path);
        return refuse(r, path, NULL, FH_LOAD_IO, msg);
    }
    fh_load_err err = fh_loader_open(&r->opts.loader, path, &g->plugin, msg, msglen);
    if (err != FH_LOAD_OK) {
        free(g);
        return refuse(r, path, NULL, err, msg);
    }
    g->magic = FH_GEN_MAGIC;
    g->reg = r;
    atomic_init(&g->refs, 0);
    fh_strlcpy(g->name, g->plugin.desc.name, sizeof(g->name));
    fh_strlcpy(g->version, g->plugin.desc.version, sizeof(g->version));

    /* Cheap early duplicate check, so a clash does not run init(); it is
     * repeated under the write lock before publishing. */
    rdlock(r);
    bool source_gone = false;
    const fh_generation *dup = duplicate_of(r, &g->plugin, true, &source_gone);
    if (dup)
        duplicate_msg(&g->plugin, dup->plugin.source_path, msg, msglen);
    unlock(r);
    if (dup)
        return discard(r, g, false, path, FH_LOAD_DUPLICATE, msg);

    err = run_init(r, g, msg, msglen);
    if (err != FH_LOAD_OK)
        return discard(r, g, false, path, err, msg);

    /* What the log lines below need, copied now: once published, `g` may be
     * retired and freed by a concurrent unload at any moment. */
    char name[FUSION_NAME_MAX + 1], version[FUSION_VERSION_MAX + 1];
    char old_version[FUSION_VERSION_MAX + 1] = "";
    char src[4096];
    fh_strlcpy(name, g->name, sizeof(name));
    fh_strlcpy(version, g->version, sizeof(version));
    fh_strlcpy(src, g->plugin.source_path, sizeof(src));
    unsigned abi_major = g->plugin.desc.abi_major, abi_minor = g->plugin.desc.abi_minor;
    bool swapped = false;

    /* A name seen for the first time starts in the state the operator
     * left it in (persisted disable or quarantine), asked without locks. */
    fh_overlay_state first_state = FH_STATE_ENABLED;
    char first_reason[512] = "";
    if (r->opts.state_for)
        first_state = r->opts.state_for(r->opts.state_ud, name, first_reason, sizeof(first_reason));
    if (first_state != FH_STATE_DISABLED && first_state != FH_STATE_QUARANTINED) {
        first_state = FH_STATE_ENABLED;
        first_reason[0] = '\0';
    }
    fh_entry *fresh = calloc(1, sizeof(*fresh));
    wrlock(r);
    dup = duplicate_of(r, &g->plugin, false, &source_gone);
    fh_entry *e = NULL;
    if (dup) {
        /* Lost a race with another load of the same name and version. */
        duplicate_msg(&g->plugin, dup->plugin.source_path, msg, msglen);
    } else if ((e = find_entry(r, name)) != NULL) {
        if (e->current) {
            fh_strlcpy(old_version, e->current->version, sizeof(old_version));
            swapped = true;
        }
        retire_current(r, e);
        /* A reload after an unload routes again; disable and quarantine are
         * the operator's and survive a swap. The pinned count stays: the
         * old library is still in memory. */
        if (e->state == FH_STATE_DRAINING) {
            /* As a name loaded for the first time: the persisted decision. */
            e->state = first_state;
            fh_strlcpy(e->reason, first_reason, sizeof(e->reason));
        }
    } else if (fresh) {
        e = fresh;
        fresh = NULL;
        fh_strlcpy(e->name, name, sizeof(e->name));
        e->state = first_state;
        fh_strlcpy(e->reason, first_reason, sizeof(e->reason));
        e->next = r->entries;
        r->entries = e;
    } else {
        snprintf(msg, msglen, "%s: out of memory", src);
    }
    if (e) {
        g->seq = ++r->load_seq;
        g->entry = e;
        e->current = g;
        drop_failed(r, path);
        if (strcmp(path, src) != 0)
            drop_failed(r, src);
    }
    unlock(r);
    free(fresh);
    if (!e)
        return discard(r, g, true, path, dup ? FH_LOAD_DUPLICATE : FH_LOAD_IO, msg);
    atomic_fetch_add(&r->changes, 1);

    if (name_out)
        fh_strlcpy(name_out, name, FUSION_NAME_MAX + 1);
    if (swapped)
        fh_info("overlay %s: swapped %s -> %s from %s; the old one drains", name, old_version,
                version, src);
    else
        fh_info("overlay %s %s loaded from %s (ABI %u.%u)", name, version, src, abi_major,
                abi_minor);
    /* An old generation nobody was using is finalised right away. */
    fh_registry_reap(r);
    return FH_LOAD_OK;
}

/* ---- state changes ---------------------------------------------------- */

/* seq: only when the current generation has that load number (0: any). */
static int set_state(fh_registry *r, const char *name, fh_overlay_state to, const char *why,
                     unsigned long seq)
{
    wrlock(r);
    fh_entry *e = find_entry(r, name);
    if (!e || !e->current || (seq && e->current->seq != seq)) {
        /* Unknown, unloaded and draining, or replaced: not that one. */
        unlock(r);
        return -1;
    }
    fh_overlay_state from = e->state;
    e->state = to;
    fh_strlcpy(e->reason, why, sizeof(e->reason));
    unlock(r);
    atomic_fetch_add(&r->changes, 1);
    if (from != to) {
        if (to == FH_STATE_QUARANTINED)
            fh_warn("overlay %s quarantined: %s", name, why && *why ? why : "no reason given");
        else
            fh_info("overlay %s %s", name, fh_overlay_state_name(to));
    }
    return 0;
}

int fh_registry_enable(fh_registry *r, const char *name)
{
    return set_state(r, name, FH_STATE_ENABLED, NULL, 0);
}

int fh_registry_disable(fh_registry *r, const char *name)
{
    return set_state(r, name, FH_STATE_DISABLED, NULL, 0);
}

int fh_registry_quarantine(fh_registry *r, const char *name, const char *why)
{
    return set_state(r, name, FH_STATE_QUARANTINED, why ? why : "", 0);
}

int fh_registry_quarantine_seq(fh_registry *r, const char *name, unsigned long seq, const char *why)
{
    return set_state(r, name, FH_STATE_QUARANTINED, why ? why : "", seq ? seq : ULONG_MAX);
}

unsigned long fh_generation_seq(const fh_generation *g)
{
    return g->seq;
}

/* ---- the hot path ----------------------------------------------------- */

fh_generation *fh_registry_acquire(fh_registry *r, const char *name, fh_overlay_state *state)
{
    /* Under the read lock the current generation cannot be retired, so the
     * increment lands before any unload could see refs == 0. */
    fh_generation *g = NULL;
    fh_overlay_state why = FH_STATE_COUNT;
    rdlock(r);
    fh_entry *e = find_entry(r, name);
    if (e) {
        why = e->current ? e->state : FH_STATE_DRAINING;
        if (e->current && e->state == FH_STATE_ENABLED) {
            g = e->current;
            atomic_fetch_add(&g->refs, 1);
        }
    } else if (find_failed_name(r, name)) {
        why = FH_STATE_FAILED;
    }
    unlock(r);
    if (state)
        *state = g ? FH_STATE_ENABLED : why;
    return g;
}

void fh_generation_release(fh_generation *g)
{
    assert(g->magic == FH_GEN_MAGIC);
    fh_registry *r = g->reg; /* read before the decrement: g may go after it */
    if (atomic_fetch_sub(&g->refs, 1) == 1 && atomic_load(&r->nretired) > 0) {
        pthread_mutex_lock(&r->drain_mu);
        pthread_cond_broadcast(&r->drain_cv);
        pthread_mutex_unlock(&r->drain_mu);
    }
}

const fusion_overlay_descriptor *fh_generation_descriptor(const fh_generation *g)
{
    return &g->plugin.desc;
}

void *fh_generation_state(const fh_generation *g)
{
    return g->state;
}

void fh_generation_prepare(fh_generation *g, fh_hook_kind kind, fh_hook_call *c)
{
    assert(g->magic == FH_GEN_MAGIC && atomic_load(&g->refs) > 0);
    c->kind = kind;
    memcpy(c->who, g->name, sizeof(c->who));
    c->version = g->version;
    c->sha256 = g->plugin.sha256;
    c->desc = &g->plugin.desc;
    c->state = g->state;
    c->host = g->reg->opts.host_api;
    c->gen = g;
    c->hung = &g->hung;
}

int fh_generation_hung(const fh_generation *g)
{
    return atomic_load(&((fh_generation *)g)->hung);
}

/* The offline path (plugin-test, tests): a control call under the deadline.
 * A call abandoned at the deadline keeps the request: the caller must then
 * not free it, so the result says "failed" and the caller exits. */
static fh_door_result offline_call(fh_generation *g, fh_hook_call *c)
{
    fh_door_result r = fh_door_call(c, g->reg->opts.hook_deadline_ms);
    if (r == FH_DOOR_TIMEOUT)
        atomic_fetch_add(&g->refs, 1); /* the abandoned call's: keep the code mapped */
    return r;
}

double fh_generation_match(fh_generation *g, const fusion_request *req)
{
    fh_hook_call c = {0};
    fh_generation_prepare(g, FH_HOOK_MATCH, &c);
    c.req = (fusion_request *)req;
    return offline_call(g, &c) == FH_DOOR_OK ? c.score : -1.0;
}

int fh_generation_apply(fh_generation *g, fusion_request *req)
{
    fh_hook_call c = {0};
    fh_generation_prepare(g, FH_HOOK_APPLY, &c);
    c.req = req;
    return offline_call(g, &c) == FH_DOOR_OK ? c.rc : FH_GENERATION_TIMEOUT;
}

int fh_generation_evaluate(fh_generation *g, const fusion_request *req, const char *answer,
                           size_t len, fusion_evaluation *out)
{
    fh_hook_call c = {0};
    fh_generation_prepare(g, FH_HOOK_EVALUATE, &c);
    c.req = (fusion_request *)req;
    c.answer = (char *)answer;
    c.answer_len = len;
    if (offline_call(g, &c) != FH_DOOR_OK)
        return FH_GENERATION_TIMEOUT;
    *out = c.eval;
    fh_generation_mark_rules(g, out);
    return c.rc;
}

void fh_generation_mark_rules(const fh_generation *g, fusion_evaluation *ev)
{
    /* 1.1: whether a rule holds is the host's to say, per overlay, so the
     * mark changes with the config, not with a rebuild of the plugin. */
    for (size_t i = 0; i < ev->rule_count && i < FUSION_EVAL_MAX_RULES; i++)
        ev->rules[i].passed = ev->rules[i].score >= g->rule_pass_mark;
}

/* ---- listing ---------------------------------------------------------- */

static void fill_entry_info(const fh_entry *e, fh_overlay_info *o)
{
    memset(o, 0, sizeof(*o));
    fh_strlcpy(o->name, e->name, sizeof(o->name));
    /* Describe the current generation, or the newest one still draining,
     * or else the last one the dynamic loader kept mapped. */
    const fh_generation *g = e->current ? e->current : e->retired;
    if (g) {
        fh_strlcpy(o->version, g->version, sizeof(o->version));
        o->abi_major = g->plugin.desc.abi_major;
        o->abi_minor = g->plugin.desc.abi_minor;
        fh_strlcpy(o->path, g->plugin.source_path, sizeof(o->path));
        fh_strlcpy(o->sha256, g->plugin.sha256, sizeof(o->sha256));
    } else if (e->pinned > 0) {
        fh_strlcpy(o->version, e->last_pinned.version, sizeof(o->version));
        o->abi_major = e->last_pinned.abi_major;
        o->abi_minor = e->last_pinned.abi_minor;
        fh_strlcpy(o->path, e->last_pinned.source_path, sizeof(o->path));
    }
    o->state = e->state;
    if (e->current)
        o->inflight += atomic_load(&e->current->refs);
    for (const fh_generation *d = e->retired; d; d = d->next_retired) {
        o->inflight += atomic_load(&d->refs);
        o->draining++;
    }
    o->pinned = e->pinned;
    o->requests = atomic_load_explicit(&e->requests, memory_order_relaxed);
    o->applied = atomic_load_explicit(&e->applied, memory_order_relaxed);
    o->error = FH_LOAD_OK;
    fh_strlcpy(o->reason, e->reason, sizeof(o->reason));
}

static void fill_failed_info(const fh_failed *f, fh_overlay_info *o)
{
    memset(o, 0, sizeof(*o));
    fh_strlcpy(o->name, f->name, sizeof(o->name));
    fh_strlcpy(o->path, f->path, sizeof(o->path));
    o->state = FH_STATE_FAILED;
    o->error = f->error;
    fh_strlcpy(o->reason, f->message, sizeof(o->reason));
}

static int info_cmp(const void *a, const void *b)
{
    const fh_overlay_info *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : strcmp(x->path, y->path);
}

size_t fh_registry_list(fh_registry *r, fh_overlay_info **out)
{
    *out = NULL;
    rdlock(r);
    size_t n = 0;
    for (fh_entry *e = r->entries; e; e = e->next)
        n++;
    for (fh_failed *f = r->failed; f; f = f->next)
        n++;
    fh_overlay_info *arr = n ? malloc(n * sizeof(*arr)) : NULL;
    if (!arr) {
        unlock(r);
        return 0;
    }
    size_t i = 0;
    for (fh_entry *e = r->entries; e; e = e->next)
        fill_entry_info(e, &arr[i++]);
    for (fh_failed *f = r->failed; f; f = f->next)
        fill_failed_info(f, &arr[i++]);
    unlock(r);
    qsort(arr, n, sizeof(*arr), info_cmp);
    *out = arr;
    return n;
}

int fh_registry_get(fh_registry *r, const char *name, fh_overlay_info *out)
{
    int rc = -1;
    rdlock(r);
    fh_entry *e = find_entry(r, name);
    if (e) {
        fill_entry_info(e, out);
        rc = 0;
    } else {
        fh_failed *f = find_failed_name(r, name);
        if (f) {
            fill_failed_info(f, out);
            rc = 0;
        }
    }
    unlock(r);
    return rc;
}

/* ---- teardown --------------------------------------------------------- */

void fh_registry_free(fh_registry *r, int drain_timeout_ms)
{
    if (!r)
        return;
    /* Retire everything at once so one deadline covers all overlays. */
    wrlock(r);
    size_t n = 0;
    for (fh_entry *e = r->entries; e; e = e->next) {
        retire_current(r, e);
        e->state = FH_STATE_DRAINING;
        for (fh_generation *g = e->retired; g; g = g->next_retired)
            n++;
    }
    fh_generation **held = n ? malloc(n * sizeof(*held)) : NULL;
    size_t k = 0;
    if (held)
        for (fh_entry *e = r->entries; e; e = e->next)
            for (fh_generation *g = e->retired; g; g = g->next_retired) {
                g->holds++;
                held[k++] = g;
            }
    unlock(r);
    if (k > 0 && drain_timeout_ms > 0) {
        struct timespec deadline;
        fh_deadline_after(&deadline, drain_timeout_ms);
        wait_drained(r, held, k, &deadline);
    }
    wrlock(r);
    for (size_t i = 0; i < k; i++)
        held[i]->holds--;
    unlock(r);
    free(held);

    size_t left = fh_registry_reap(r);
    if (left == 0) {
        /* What is left is only the record of pinned libraries; their
         * memory is the dynamic loader's, ours can go. */
        while (r->entries) {
            fh_entry *e = r->entries;
            r->entries = e->next;
            free(e);
        }
    }
    while (r->failed) {
        fh_failed *f = r->failed;
        r->failed = f->next;
        free(f->path);
        free(f);
    }
    if (left > 0) {
        /* A thread may still run their code and will release into this
         * registry: leave both mapped and allocated. */
        fh_error("%zu overlay generation(s) still in use at shutdown after %d ms; leaving them "
                 "mapped",
                 left, drain_timeout_ms);
        return;
    }
    pthread_cond_destroy(&r->drain_cv);
    pthread_mutex_destroy(&r->drain_mu);
    pthread_rwlock_destroy(&r->lock);
    free(r->cache_dir);
    free(r);
}

void fh_registry_status_line(fh_registry *r, const char *prefix, char *out, size_t len)
{
    fh_overlay_info *list = NULL;
    size_t n = fh_registry_list(r, &list);
    size_t counts[FH_STATE_COUNT] = {0};
    for (size_t i = 0; i < n; i++)
        counts[list[i].state]++;
    free(list);
    snprintf(out, len, "%s%zu overlays enabled, %zu disabled, %zu quarantined, %zu failed", prefix,
             counts[FH_STATE_ENABLED], counts[FH_STATE_DISABLED], counts[FH_STATE_QUARANTINED],
             counts[FH_STATE_FAILED]);
}

void fh_generation_count(fh_generation *g, bool applied)
{
    atomic_fetch_add_explicit(&g->entry->requests, 1, memory_order_relaxed);
    if (applied)
        atomic_fetch_add_explicit(&g->entry->applied, 1, memory_order_relaxed);
}

unsigned long fh_registry_changes(fh_registry *r)
{
    return atomic_load(&r->changes);
}
