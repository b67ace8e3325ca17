/*
 * jfast.h - the request path's JSON work, without building what it does not
 * need: a validating scanner that walks a document in place, a serialiser
 * for jansson trees that copies plain string runs in blocks, and a UTF-8
 * check with an ASCII fast path.
 *
 * Why not jansson alone: on the request path jansson's json_dumps escapes
 * every character of a 2 KB directive one at a time, and json_loadb builds
 * (and frees) a node per value of an answer of which the host reads four
 * fields; a profile put both at over a third of an overlaid request. The
 * serialiser writes exactly what json_dumps(JSON_COMPACT |
 * JSON_REAL_PRECISION(15)) writes; the scanner accepts exactly RFC 8259
 * documents with valid UTF-8 (tests/unit/test_jfast.c checks both against
 * jansson, including hostile inputs).
 *
 * Stateless; any thread. Nothing here allocates but the serialiser's output
 * and fh_jstr_unescape's.
 */
#ifndef FH_JFAST_H
#define FH_JFAST_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

/* ---- UTF-8 -------------------------------------------------------------------- */

/* Valid UTF-8 (no overlongs, no surrogates, at most U+10FFFF). */
bool fh_utf8_valid(const char *s, size_t n);

/* ---- shared strings --------------------------------------------------------------- */

/* A new reference to a string value holding `text` (valid UTF-8 only; NULL
 * otherwise or out of memory). Long texts - the directives plugins prepend,
 * the same bytes on every request - come from a small per-thread cache, so
 * they are checked, copied and escaped once per thread instead of once per
 * request; the serialiser writes a cached string's escaped form directly. */
json_t *fh_json_string_shared(const char *text, size_t n);

/* ---- serialiser --------------------------------------------------------------- */

/* json_dumps(v, JSON_COMPACT | JSON_REAL_PRECISION(15)), faster; malloc'd,
 * NUL-terminated, *len set when len is not NULL. NULL when out of memory
 * or v is NULL. */
char *fh_json_dump(const json_t *v, size_t *len);

/* A finite double as jansson writes it with JSON_REAL_PRECISION(precision)
 * ("%.*g", ".0" when it would read as an integer, a bare exponent). Returns
 * the length, or 0 when it does not fit. */
size_t fh_json_real(char *buf, size_t size, double v, int precision);

/* ---- scanner ------------------------------------------------------------------ */

#define FH_JSCAN_MAX_DEPTH 2048 /* jansson's JSON_PARSER_MAX_DEPTH */

typedef enum fh_jtype {
    FH_J_NONE = 0,
    FH_J_OBJECT,
    FH_J_ARRAY,
    FH_J_STRING,
    FH_J_NUMBER,
    FH_J_TRUE,
    FH_J_FALSE,
    FH_J_NULL
} fh_jtype;

/* A value inside a document: [start, end) of its text. */
typedef struct fh_jval {
    const char *start, *end;
    fh_jtype type;
} fh_jval;

/* Validates a whole document (one value, surrounded only by whitespace) and
 * returns its top value; false on anything else (the offset of the first
 * bad byte in *err_at, when not NULL). */
bool fh_json_scan(const char *s, size_t n, fh_jval *top, size_t *err_at);

/* fh_json_scan, reporting on the way the values at the given paths
 * ("usage", "choices.0.message.content": keys and array indexes, dotted;
 * at most 8 paths of at most 6 steps) in found[] (type FH_J_NONE when
 * absent; for a repeated key, the last). One pass over the document. */
bool fh_json_scan_paths(const char *s, size_t n, fh_jval *top, const char *const *paths,
                        fh_jval *found, size_t npaths);

/* Parses a document into a jansson tree, accepting what json_loadb(s, n,
 * 0) accepts (an object or array at the top; no \u0000) and building the
 * same tree (a repeated key keeps its last value), at a fraction of the
 * cost. A number no C type holds (an integer past json_int_t, a real that
 * overflows) is not an error: it is kept as its text in a string that
 * starts with a NUL byte, which fh_json_dump writes back as the number it
 * was. NULL on
 * error, with the offset of the problem in *err_at and a short reason in
 * *why (static text). */
json_t *fh_json_parse(const char *s, size_t n, size_t *err_at, const char **why);

/* Iterates an object already validated by fh_json_scan: *pos starts at 0.
 * Each call gives the next member's key (raw, without the quotes, escapes
 * as written) and value; false at the end. */
bool fh_jobj_next(const fh_jval *obj, size_t *pos, fh_jval *key, fh_jval *val);
/* The member named `name` (escaped keys are compared unescaped). */
bool fh_jobj_get(const fh_jval *obj, const char *name, fh_jval *val);
/* Element i of a validated array. */
bool fh_jarr_get(const fh_jval *arr, size_t i, fh_jval *val);

/* A string value, unescaped, malloc'd and NUL-terminated (*len without the
 * NUL). NULL when not a string or out of memory. */
char *fh_jstr_unescape(const fh_jval *str, size_t *len);
/* Whether a key or string equals `name` once unescaped. */
bool fh_jstr_eq(const fh_jval *str, const char *name);
/* A number value as a long (integral numbers in range), else false. */
bool fh_jnum_long(const fh_jval *num, long *out);

#endif
