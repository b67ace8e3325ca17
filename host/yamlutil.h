/*
 * yamlutil.h - strict libyaml document helpers shared by config.c and
 * flags.c: load one file into a yaml_document_t, then read it with typed,
 * range-checked getters that report every problem as
 * "FILE:LINE:COL: key.path: problem; what is allowed" (fh_diag_at).
 *
 * Owns: an fh_yaml (the document, the file name used in messages, and the
 * error count). Single-threaded: one loader owns one fh_yaml at a time; the
 * helpers touch no global state.
 *
 * The getters never stop at the first problem: they append a diagnostic,
 * bump y->errors, leave the output at its default and return false, so a
 * caller validates a whole file in one pass and fails when y->errors > 0.
 *
 * Accepted YAML is deliberately narrow, because these files are edited by
 * hand under pressure: one document, UTF-8, a mapping at the top, no
 * aliases (they could build cycles and hide where a value came from), no
 * custom tags, no duplicate keys, booleans spelled true/false.
 */
#ifndef FH_YAMLUTIL_H
#define FH_YAMLUTIL_H

#include "diag.h"

#include <stdbool.h>
#include <stddef.h>
#include <yaml.h>

/* Files larger than this are refused before parsing: config files are a
 * few KiB, and this keeps a wrong path (a log, a core file) cheap. */
#define FH_YAML_MAX_FILE_BYTES (4u * 1024u * 1024u)

/* Longer lists and mappings are refused when the file is loaded: the
 * loaders look names up linearly, and no hand-edited file needs more. */
#define FH_YAML_MAX_ENTRIES 10000u

typedef struct fh_yaml {
    yaml_document_t doc;
    bool loaded;      /* doc must be deleted */
    const char *file; /* borrowed: the name used in diagnostics */
    fh_diag *diag;    /* borrowed */
    size_t errors;    /* problems appended through this fh_yaml */
} fh_yaml;

/* A dotted key path for messages: "overlays.x.breaker.failure_threshold",
 * "features.x.conditions.scenario_types[2]". Truncated (with "...") when
 * absurdly long; never fails. */
typedef struct fh_keypath {
    char buf[512];
    size_t len;
} fh_keypath;

void fh_keypath_init(fh_keypath *p);
/* Appends ".key" (or "key" at the root); returns the length to pop back to. */
size_t fh_keypath_push(fh_keypath *p, const char *key);
/* Appends "[index]"; returns the length to pop back to. */
size_t fh_keypath_push_index(fh_keypath *p, size_t index);
void fh_keypath_pop(fh_keypath *p, size_t len);

/* Reads `path` (shown as `display` in messages; NULL = path) and loads its
 * single YAML document. On any problem (unreadable, too large, not UTF-8, a
 * NUL byte, raw U+0085/U+2028/U+2029 (libyaml line breaks that would skew
 * line numbers), YAML syntax, aliases, custom tags, several documents,
 * empty, a top level that is not a mapping, a list or mapping of more than
 * FH_YAML_MAX_ENTRIES, or a key or scalar holding an escaped NUL ("key.path: contains a NUL byte"))
 * appends diagnostics and returns -1 with nothing to free. On success returns 0 and the caller must
 * call fh_yaml_close(); every scalar's text is then a C string of its full
 * length. A leading UTF-8 byte-order mark is skipped. */
int fh_yaml_open(fh_yaml *y, const char *path, const char *display, fh_diag *diag);
/* As fh_yaml_open(), from memory (tests, and files already read). */
int fh_yaml_open_string(fh_yaml *y, const char *text, size_t len, const char *display,
                        fh_diag *diag);
void fh_yaml_close(fh_yaml *y);

yaml_node_t *fh_yaml_root(fh_yaml *y);

/* Appends "FILE:LINE:COL: path: message" at node `n` (NULL: no position)
 * and counts it as an error. Control characters in `path` or the message
 * (from escapes in the file) are shown as '?'. */
void fh_yaml_error(fh_yaml *y, const yaml_node_t *n, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* "a string", "a mapping", "a list", "true/false", "an integer", ... for
 * "must be X, not Y" messages. */
const char *fh_yaml_describe(const yaml_node_t *n);

/* --- mappings ---------------------------------------------------------- */

/* Checks that `map` (at `path`) is a mapping whose keys are plain scalars,
 * unique, and (when `known` is not NULL, a NULL-terminated list) among the
 * known keys; reports each offender with the list of known keys. Returns
 * false when `map` is not a mapping at all (other problems are reported but
 * the mapping is still usable). A null value (an empty "key:") is treated
 * as an empty mapping when `null_ok`. */
bool fh_yaml_check_map(fh_yaml *y, yaml_node_t *map, const char *path, const char *const *known,
                       bool null_ok);

/* Number of pairs, and the i-th pair's key text (NULL when the key is not a
 * scalar) and nodes, in file order. `map` must be a mapping. */
size_t fh_yaml_map_size(const yaml_node_t *map);
const char *fh_yaml_map_key(fh_yaml *y, yaml_node_t *map, size_t i, yaml_node_t **key_node,
                            yaml_node_t **value);

/* The value of the first pair whose key is `key`, or NULL (absent, or `map`
 * is not a mapping). */
yaml_node_t *fh_yaml_get(fh_yaml *y, yaml_node_t *map, const char *key);

/* True for a plain scalar that YAML reads as null: "", "~", "null". */
bool fh_yaml_is_null(const yaml_node_t *n);

/* --- typed getters ----------------------------------------------------
 * Each reads `key` of `map` (parent key path `path`). Absent key: output
 * untouched (the caller set the default), returns true. Present and valid:
 * stores, returns true. Otherwise: reports, output untouched, false. */

bool fh_yaml_get_long(fh_yaml *y, yaml_node_t *map, const char *path, const char *key, long min,
                      long max, long *out);
bool fh_yaml_get_int(fh_yaml *y, yaml_node_t *map, const char *path, const char *key, int min,
                     int max, int *out);
bool fh_yaml_get_double(fh_yaml *y, yaml_node_t *map, const char *path, const char *key, double min,
                        double max, double *out);
bool fh_yaml_get_bool(fh_yaml *y, yaml_node_t *map, const char *path, const char *key, bool *out);
/* Any scalar except a plain null is a string. Replaces *out (freeing the old
 * value) with a malloc'd copy. `allow_empty` false rejects "". */
bool fh_yaml_get_string(fh_yaml *y, yaml_node_t *map, const char *path, const char *key,
                        bool allow_empty, char **out);
/* A list of strings (flow or block; an empty "key:" is an empty list), each
 * checked with `valid` when not NULL (`what` describes the rule, e.g. "a
 * name of [a-z0-9_]+"). Replaces *items and *count (freeing the old ones). */
bool fh_yaml_get_string_list(fh_yaml *y, yaml_node_t *map, const char *path, const char *key,
                             bool (*valid)(const char *), const char *what, char ***items,
                             size_t *count);

/* The value node itself, for the scalar readers above when the caller has
 * the node rather than the key (sequence items, free-form values). */
bool fh_yaml_node_long(fh_yaml *y, yaml_node_t *n, const char *path, long min, long max, long *out);
bool fh_yaml_node_double(fh_yaml *y, yaml_node_t *n, const char *path, double min, double max,
                         double *out);

/* --- free-form values -------------------------------------------------- */

/* Converts `n` to compact JSON text (malloc'd): mappings to objects (keys
 * must be scalars, unique), sequences to arrays, plain scalars by the YAML
 * 1.2 core schema (null, true/false, integers, floats), quoted scalars to
 * strings. A null/absent `n` gives "{}" when `object_only`. With
 * `object_only`, anything but a mapping is reported. NULL on problems. */
char *fh_yaml_to_json(fh_yaml *y, yaml_node_t *n, const char *path, bool object_only);

/* --- shared validators -------------------------------------------------- */

/* An overlay / feature name: [a-z][a-z0-9_]*, at most 64 characters. */
bool fh_valid_overlay_name(const char *s);
/* [a-z0-9_]+, at most 64 characters (micro-overlay and scenario names). */
bool fh_valid_word(const char *s);

/* Frees a string vector and its items. */
void fh_strv_free(char **v, size_t n);

#endif
