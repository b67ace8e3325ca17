/*
 * opstate.c - see opstate.h.
 *
 * The file:
 *   {"format": 1,
 *    "overlays": {"NAME": {"state": "disabled"|"quarantined",
 *                          "reason": "...", "since": 1764558000}},
 *    "gates": {"NAME": {"reason": "...", "since": 1764558000}},
 *    "files": {"SHA256": {"name": "...", "reason": "...", "since": ...}}}
 * An overlay absent from "overlays" is enabled; a gate absent from
 * "gates" is not tripped; "files" are plugin files (by content) that
 * crashed the daemon while being loaded, never mapped again until an
 * operator enables their name.
 */
#include "opstate.h"

#include "log.h"
#include "util.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define STATE_FILE "operator-state.json"

struct fh_opstate {
    char *dir;
    char *path;
    json_t *overlays; /* name -> {state, reason, since} */
    json_t *gates;    /* name -> {reason, since} */
    json_t *files;    /* sha256 -> {name, reason, since} */
    char *written;    /* what the file holds now (NULL: unknown or absent) */
    unsigned long reg_seen, gates_seen;
    bool synced_once;
    bool failing; /* the last write failed (logged once) */
};

static json_t *decision(const char *state, const char *reason, json_int_t since)
{
    return json_pack("{s:s, s:s, s:I}", "state", state, "reason", reason ? reason : "", "since",
                     since);
}

/* Keeps the entries of a loaded file that make sense; says which did not. */
static void adopt(fh_opstate *o, json_t *root)
{
    json_t *ov = json_object_get(root, "overlays"), *v;
    const char *name;
    json_object_foreach(ov, name, v)
    {
        const char *st = json_string_value(json_object_get(v, "state"));
        const char *why = json_string_value(json_object_get(v, "reason"));
        json_int_t since = json_integer_value(json_object_get(v, "since"));
        if (!st || (strcmp(st, "disabled") != 0 && strcmp(st, "quarantined") != 0)) {
            fh_warn("%s: overlay %s has no valid state; ignoring that entry", o->path, name);
            continue;
        }
        json_object_set_new(o->overlays, name, decision(st, why, since));
    }
    json_t *fs = json_object_get(root, "files");
    json_object_foreach(fs, name, v)
    {
        const char *who = json_string_value(json_object_get(v, "name"));
        const char *why = json_string_value(json_object_get(v, "reason"));
        if (strlen(name) == 64 && who)
            json_object_set_new(o->files, name,
                                json_pack("{s:s, s:s, s:I}", "name", who, "reason",
                                          why ? why : "crashed the daemon", "since",
                                          json_integer_value(json_object_get(v, "since"))));
    }
    json_t *gs = json_object_get(root, "gates");
    json_object_foreach(gs, name, v)
    {
        const char *why = json_string_value(json_object_get(v, "reason"));
        json_object_set_new(o->gates, name,
                            json_pack("{s:s, s:I}", "reason", why ? why : "tripped", "since",
                                      json_integer_value(json_object_get(v, "since"))));
    }
}

/* A file we cannot trust is kept for the operator, never deleted. */
static void set_aside(fh_opstate *o, const char *why)
{
    char aside[4200];
    /* link() never replaces: a second corrupt file keeps the first's copy. */
    int rc = -1;
    for (int i = 0; i < 100 && rc != 0; i++) {
        if (i == 0)
            snprintf(aside, sizeof(aside), "%s.corrupt-%ld", o->path, (long)time(NULL));
        else
            snprintf(aside, sizeof(aside), "%s.corrupt-%ld.%d", o->path, (long)time(NULL), i);
        rc = link(o->path, aside);
        if (rc != 0 && errno != EEXIST)
            break;
    }
    if (rc == 0)
        rc = unlink(o->path);
    if (rc == 0)
        fh_error("%s is corrupt (%s); set aside as %s; starting with every overlay enabled and "
                 "no gate tripped: disable again what must stay off",
                 o->path, why, aside);
    else
        fh_error("%s is corrupt (%s) and cannot be set aside (%s); starting with every overlay "
                 "enabled; it is replaced at the next operator change",
                 o->path, why, strerror(errno));
}

fh_opstate *fh_opstate_open(const char *state_dir)
{
    fh_opstate *o = calloc(1, sizeof(*o));
    if (!o)
        return NULL;
    o->dir = strdup(state_dir);
    o->overlays = json_object();
    o->gates = json_object();
    o->files = json_object();
    if (!o->dir || !o->overlays || !o->gates || !o->files ||
        asprintf(&o->path, "%s/" STATE_FILE, state_dir) < 0) {
        o->path = NULL;
        fh_opstate_free(o);
        return NULL;
    }
    json_error_t jerr;
    json_t *root = json_load_file(o->path, JSON_REJECT_DUPLICATES, &jerr);
    struct stat st;
    if (!root) {
        /* Absent: nothing decided yet. Present but unreadable or not
         * JSON: kept aside, never overwritten by the next save. */
        if (lstat(o->path, &st) == 0) {
            char why[300];
            if (jerr.line > 0)
                snprintf(why, sizeof(why), "line %d: %s", jerr.line, jerr.text);
            else
                snprintf(why, sizeof(why), "%s", jerr.text);
            set_aside(o, why);
        }
        return o;
    }
    json_t *fmt = json_object_get(root, "format");
    if (!json_is_object(root) || json_integer_value(fmt) != 1) {
        set_aside(o, "not a format 1 operator state object");
    } else {
        adopt(o, root);
        o->written = json_dumps(root, JSON_SORT_KEYS | JSON_COMPACT);
        size_t n = json_object_size(o->overlays), g = json_object_size(o->gates);
        if (n || g)
            fh_info("%s: %zu overlay decision(s) and %zu tripped gate(s) kept from the last run",
                    o->path, n, g);
    }
    json_decref(root);
    return o;
}

void fh_opstate_free(fh_opstate *o)
{
    if (!o)
        return;
    json_decref(o->overlays);
    json_decref(o->gates);
    json_decref(o->files);
    free(o->written);
    free(o->path);
    free(o->dir);
    free(o);
}

const char *fh_opstate_path(const fh_opstate *o)
{
    return o->path;
}

fh_overlay_state fh_opstate_overlay(void *ud, const char *name, char *why, size_t len)
{
    fh_opstate *o = ud;
    json_t *v = json_object_get(o->overlays, name);
    const char *st = json_string_value(json_object_get(v, "state"));
    if (!st)
        return FH_STATE_ENABLED;
    if (why && len)
        fh_strlcpy(why, json_string_value(json_object_get(v, "reason")), len);
    return strcmp(st, "quarantined") == 0 ? FH_STATE_QUARANTINED : FH_STATE_DISABLED;
}

void fh_opstate_set_overlay(fh_opstate *o, const char *name, fh_overlay_state s, const char *why)
{
    if (s != FH_STATE_DISABLED && s != FH_STATE_QUARANTINED) {
        json_object_del(o->overlays, name);
        return;
    }
    const char *st = fh_overlay_state_name(s);
    json_t *old = json_object_get(o->overlays, name);
    const char *old_st = json_string_value(json_object_get(old, "state"));
    const char *old_why = json_string_value(json_object_get(old, "reason"));
    if (old_st && strcmp(old_st, st) == 0 && old_why && strcmp(old_why, why ? why : "") == 0)
        return; /* keep its "since" */
    json_object_set_new(o->overlays, name, decision(st, why, (json_int_t)time(NULL)));
}

void fh_opstate_restore_gates(fh_opstate *o, fh_gates *gates, uint64_t now_ms)
{
    const char *name;
    json_t *v;
    json_object_foreach(o->gates, name, v)
    {
        const char *why = json_string_value(json_object_get(v, "reason"));
        if (fh_gates_trip(gates, name, why ? why : "tripped before the restart", now_ms) == 0)
            fh_warn("overlay %s: budget gate still tripped from the last run (%s); `fusion-host "
                    "reset %s` clears it",
                    name, why ? why : "", name);
    }
}

int fh_opstate_save(fh_opstate *o)
{
    json_t *root = json_pack("{s:i, s:O, s:O, s:O}", "format", 1, "overlays", o->overlays, "gates",
                             o->gates, "files", o->files);
    char *text = root ? json_dumps(root, JSON_SORT_KEYS | JSON_COMPACT) : NULL;
    json_decref(root);
    if (!text)
        return -1;
    if (o->written && strcmp(o->written, text) == 0) {
        free(text);
        return 0;
    }
    /* The file is for people too: indented, ending in a newline. */
    json_t *pretty = json_loads(text, 0, NULL);
    char *out = pretty ? json_dumps(pretty, JSON_SORT_KEYS | JSON_INDENT(2)) : NULL;
    json_decref(pretty);
    char *nl = out ? malloc(strlen(out) + 2) : NULL;
    if (nl)
        sprintf(nl, "%s\n", out);
    free(out);
    if (!nl || fh_write_file_atomic(o->dir, STATE_FILE, nl, strlen(nl)) != 0) {
        if (!o->failing)
            fh_error("cannot write %s: %s; operator decisions will not survive a restart until "
                     "state_dir is writable",
                     o->path, nl ? strerror(errno) : "out of memory");
        o->failing = true;
        free(nl);
        free(text);
        return -1;
    }
    if (o->failing)
        fh_info("%s written again", o->path);
    o->failing = false;
    free(nl);
    free(o->written);
    o->written = text;
    return 0;
}

static void note_gate(void *ud, const char *overlay, const char *reason)
{
    json_t *now = ud;
    json_object_set_new(now, overlay,
                        json_pack("{s:s, s:I}", "reason", reason, "since", (json_int_t)time(NULL)));
}

int fh_opstate_sync(fh_opstate *o, fh_registry *reg, fh_gates *gates)
{
    unsigned long rc = fh_registry_changes(reg), gc = gates ? fh_gates_changes(gates) : 0;
    if (o->synced_once && rc == o->reg_seen && gc == o->gates_seen && !o->failing)
        return 0;
    o->synced_once = true;
    o->reg_seen = rc;
    o->gates_seen = gc;

    fh_overlay_info *list = NULL;
    size_t n = fh_registry_list(reg, &list);
    for (size_t i = 0; i < n; i++) {
        const fh_overlay_info *e = &list[i];
        /* Refused files and overlays on their way out decide nothing. */
        if (e->state == FH_STATE_FAILED || e->state == FH_STATE_DRAINING)
            continue;
        fh_opstate_set_overlay(o, e->name, e->state, e->reason);
    }
    free(list);
    if (gates) {
        json_t *now = json_object();
        if (now) {
            fh_gates_tripped(gates, note_gate, now);
            /* Keep the "since" of trips already recorded. */
            const char *name;
            json_t *v;
            json_object_foreach(now, name, v)
            {
                json_t *old = json_object_get(o->gates, name);
                if (old)
                    json_object_set(v, "since", json_object_get(old, "since"));
            }
            json_decref(o->gates);
            o->gates = now;
        }
    }
    return fh_opstate_save(o);
}

void fh_opstate_refuse_file(fh_opstate *o, const char *sha256, const char *name, const char *why)
{
    if (!sha256 || strlen(sha256) != 64)
        return;
    json_object_set_new(
        o->files, sha256,
        json_pack("{s:s, s:s, s:I}", "name", name, "reason", why, "since", (json_int_t)time(NULL)));
}

bool fh_opstate_refused_hash(void *ud, const char *sha256, char *why, size_t len)
{
    fh_opstate *o = ud;
    json_t *v = json_object_get(o->files, sha256);
    if (!v)
        return false;
    fh_strlcpy(why, json_string_value(json_object_get(v, "reason")), len);
    return true;
}

bool fh_opstate_forget(fh_opstate *o, const char *name)
{
    bool any = json_object_get(o->overlays, name) != NULL;
    json_object_del(o->overlays, name);
    const char *sha;
    json_t *v;
    void *tmp;
    json_object_foreach_safe(o->files, tmp, sha, v)
    {
        const char *who = json_string_value(json_object_get(v, "name"));
        if (who && strcmp(who, name) == 0) {
            json_object_del(o->files, sha);
            any = true;
        }
    }
    return any;
}

bool fh_opstate_gate_tripped(const fh_opstate *o, const char *name)
{
    return json_object_get(o->gates, name) != NULL;
}

void fh_opstate_clear_gate(fh_opstate *o, const char *name)
{
    json_object_del(o->gates, name);
}

json_t *fh_opstate_json(const fh_opstate *o)
{
    return json_pack("{s:O, s:O, s:O}", "overlays", o->overlays, "gates", o->gates, "files",
                     o->files);
}
