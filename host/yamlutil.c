/*
 * yamlutil.c - see yamlutil.h. Loading is two passes over an in-memory
 * copy of the file: an event pass that refuses what the document API would
 * silently accept (aliases, tags, several documents, absurd nesting) and
 * reports syntax errors with their position, then yaml_parser_load() for
 * the node tree the getters walk. Single-threaded; no global state.
 */
#include "yamlutil.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Deep nesting has no use in these files and would make the recursive JSON
 * conversion's stack depth depend on input. */
#define MAX_DEPTH 64

/* ---- key paths ---------------------------------------------------------- */

void fh_keypath_init(fh_keypath *p)
{
    p->buf[0] = '\0';
    p->len = 0;
}

static size_t keypath_append(fh_keypath *p, const char *sep, const char *text)
{
    size_t old = p->len;
    int n = snprintf(p->buf + p->len, sizeof(p->buf) - p->len, "%s%s", sep, text);
    if (n < 0 || (size_t)n >= sizeof(p->buf) - p->len) {
        /* Keep it terminated and visibly cut; messages stay useful. */
        memcpy(p->buf + sizeof(p->buf) - 4, "...", 4);
        p->len = sizeof(p->buf) - 1;
    } else {
        p->len += (size_t)n;
    }
    return old;
}

size_t fh_keypath_push(fh_keypath *p, const char *key)
{
    return keypath_append(p, p->len ? "." : "", key);
}

size_t fh_keypath_push_index(fh_keypath *p, size_t index)
{
    char tmp[32];
    snprintf(tmp, sizeof(tmp), "[%zu]", index);
    return keypath_append(p, "", tmp);
}

void fh_keypath_pop(fh_keypath *p, size_t len)
{
    if (len < sizeof(p->buf)) {
        p->len = len;
        p->buf[len] = '\0';
    }
}

/* "parent.key" into a caller buffer (the getters' common case). */
static const char *join_path(char *buf, size_t size, const char *parent, const char *key)
{
    if (parent && *parent)
        snprintf(buf, size, "%s.%s", parent, key);
    else
        snprintf(buf, size, "%s", key);
    return buf;
}

/* ---- diagnostics ---------------------------------------------------------- */

/* Quoted YAML may carry "\n", "\e" and friends into keys, values and tags
 * (tags even through %0A). A raw newline in a diagnostic would forge a
 * second "FILE:LINE:COL:" line and an escape would drive the terminal, so
 * every control byte is shown as '?', as quote_value() does. */
static void clean_controls(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = '?';
}

void fh_yaml_error(fh_yaml *y, const yaml_node_t *n, const char *path, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    clean_controls(msg);
    char kp[sizeof(((fh_keypath *)0)->buf)];
    if (path) {
        snprintf(kp, sizeof(kp), "%s", path);
        clean_controls(kp);
    }
    size_t line = n ? n->start_mark.line + 1 : 0;
    size_t col = n ? n->start_mark.column + 1 : 0;
    fh_diag_at(y->diag, y->file, line, col, path ? kp : NULL, "%s", msg);
    y->errors++;
}

static void error_at_mark(fh_yaml *y, yaml_mark_t m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void error_at_mark(fh_yaml *y, yaml_mark_t m, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    clean_controls(msg);
    fh_diag_at(y->diag, y->file, m.line + 1, m.column + 1, NULL, "%s", msg);
    y->errors++;
}

static bool is_plain(const yaml_node_t *n)
{
    return n->type == YAML_SCALAR_NODE && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

static const char *scalar(const yaml_node_t *n)
{
    return (const char *)n->data.scalar.value;
}

bool fh_yaml_is_null(const yaml_node_t *n)
{
    if (!n || !is_plain(n))
        return false;
    const char *s = scalar(n);
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

/* A printable, bounded rendering of a scalar for "got ..." messages. */
static void quote_value(const yaml_node_t *n, char *out, size_t size)
{
    const char *s = scalar(n);
    size_t len = n->data.scalar.length, o = 0;
    out[o++] = '"';
    for (size_t i = 0; i < len && o + 6 < size; i++) {
        unsigned char c = (unsigned char)s[i];
        out[o++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
        if (i == 40 && len > 44) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
    }
    out[o++] = '"';
    out[o] = '\0';
}

const char *fh_yaml_describe(const yaml_node_t *n)
{
    if (!n)
        return "nothing";
    switch (n->type) {
    case YAML_MAPPING_NODE:
        return "a mapping";
    case YAML_SEQUENCE_NODE:
        return "a list";
    case YAML_SCALAR_NODE:
        if (fh_yaml_is_null(n))
            return "an empty value";
        if (!is_plain(n))
            return "a quoted string";
        return "a plain value";
    default:
        return "nothing";
    }
}

/* "; got X" text for a wrong value: the scalar itself, or its kind. */
static const char *got(const yaml_node_t *n, char *buf, size_t size)
{
    if (n && n->type == YAML_SCALAR_NODE && !fh_yaml_is_null(n)) {
        char q[64];
        quote_value(n, q, sizeof(q));
        if (is_plain(n))
            snprintf(buf, size, "%.*s", (int)strlen(q) - 2, q + 1);
        else
            snprintf(buf, size, "the string %s", q);
    } else {
        snprintf(buf, size, "%s", fh_yaml_describe(n));
    }
    return buf;
}

/* ---- loading ---------------------------------------------------------------- */

/* Byte offset of (0-based line, column in characters), for hints. */
static const char *char_at(const char *text, size_t len, size_t line, size_t column)
{
    size_t i = 0;
    for (size_t l = 0; l < line && i < len; i++)
        if (text[i] == '\n')
            l++;
    for (size_t c = 0; c < column && i < len; i++)
        if (((unsigned char)text[i] & 0xC0) != 0x80)
            c++;
    while (i < len && ((unsigned char)text[i] & 0xC0) == 0x80)
        i++;
    return i < len ? text + i : NULL;
}

/* Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF), no NUL byte,
 * and none of the characters YAML 1.1 (so libyaml) takes as a line break
 * but editors do not: NEL, LS, PS. With one of those in a comment or a
 * quoted string, every later line number libyaml reports would be one past
 * the line the operator sees. Lines are counted as libyaml counts them (LF,
 * CRLF and a lone CR each end a line) so the positions here agree. */
static bool check_utf8(fh_yaml *y, const char *text, size_t len)
{
    const unsigned char *s = (const unsigned char *)text;
    size_t line = 1, col = 1;
    for (size_t i = 0; i < len;) {
        unsigned char c = s[i];
        size_t need = 0;
        unsigned cp = 0, min = 0;
        if (c == 0) {
            fh_diag_at(y->diag, y->file, line, col, NULL,
                       "contains a NUL byte: this is not a text file; expected YAML");
            y->errors++;
            return false;
        }
        if (c < 0x80) {
            i++;
            if (c == '\n' || (c == '\r' && (i >= len || s[i] != '\n'))) {
                line++;
                col = 1;
            } else if (c != '\r') {
                col++;
            }
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            need = 1, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            need = 2, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            need = 3, cp = c & 0x07, min = 0x10000;
        } else {
            goto bad;
        }
        for (size_t k = 1; k <= need; k++) {
            if (i + k >= len || (s[i + k] & 0xC0) != 0x80)
                goto bad;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            goto bad;
        if (cp == 0x85 || cp == 0x2028 || cp == 0x2029) {
            fh_diag_at(y->diag, y->file, line, col, NULL,
                       "U+%04X %s: YAML reads it as a line break, which would put every later "
                       "line number off; remove it, or write it as \\u%04X inside double quotes",
                       cp,
                       cp == 0x85     ? "NEXT LINE"
                       : cp == 0x2028 ? "LINE SEPARATOR"
                                      : "PARAGRAPH SEPARATOR",
                       cp);
            y->errors++;
            return false;
        }
        i += need + 1;
        col++;
        continue;
    bad:
        fh_diag_at(y->diag, y->file, line, col, NULL,
                   "not UTF-8 text (byte 0x%02x); save the file as UTF-8 YAML", c);
        y->errors++;
        return false;
    }
    return true;
}

static void report_parser_error(fh_yaml *y, const yaml_parser_t *p, const char *text, size_t len)
{
    const char *problem = p->problem ? p->problem : "malformed YAML";
    const char *hint = "";
    const char *at = char_at(text, len, p->problem_mark.line, p->problem_mark.column);
    if (at && *at == '\t')
        hint = "; tabs are not allowed in YAML indentation, use spaces";
    if (p->error == YAML_MEMORY_ERROR)
        problem = "out of memory";
    if (p->context)
        error_at_mark(y, p->problem_mark, "YAML syntax error: %s (%s, which started at line %zu)%s",
                      problem, p->context, p->context_mark.line + 1, hint);
    else
        error_at_mark(y, p->problem_mark, "YAML syntax error: %s%s", problem, hint);
}

/* Event pass: syntax, aliases, tags, nesting, document count. */
static bool prepass(fh_yaml *y, const char *text, size_t len)
{
    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) {
        fh_diag_at(y->diag, y->file, 0, 0, NULL, "out of memory");
        y->errors++;
        return false;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    yaml_parser_set_encoding(&p, YAML_UTF8_ENCODING);
    size_t before = y->errors;
    int docs = 0, depth = 0;
    bool done = false;
    while (!done) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            report_parser_error(y, &p, text, len);
            break;
        }
        yaml_char_t *tag = NULL;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++docs == 2)
                error_at_mark(y, ev.start_mark,
                              "a second YAML document ('---'); this file must hold exactly one");
            break;
        case YAML_ALIAS_EVENT:
            error_at_mark(y, ev.start_mark,
                          "alias '*%s' is not supported; write the value out in full",
                          (const char *)ev.data.alias.anchor);
            break;
        case YAML_SCALAR_EVENT:
            tag = ev.data.scalar.tag;
            break;
        case YAML_SEQUENCE_START_EVENT:
            tag = ev.data.sequence_start.tag;
            depth++;
            break;
        case YAML_MAPPING_START_EVENT:
            tag = ev.data.mapping_start.tag;
            depth++;
            break;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            depth--;
            break;
        default:
            break;
        }
        if (tag)
            error_at_mark(y, ev.start_mark,
                          "tag '%s' is not supported; quote the value if it is a string",
                          (const char *)tag);
        if (depth > MAX_DEPTH) {
            error_at_mark(y, ev.start_mark, "nested deeper than %d levels", MAX_DEPTH);
            done = true;
        }
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&p);
    if (y->errors == before && docs == 0) {
        fh_diag_at(y->diag, y->file, 0, 0, NULL,
                   "the file is empty; expected a mapping of settings (key: value)");
        y->errors++;
    }
    return y->errors == before;
}

/* A key's text for a key path, with each NUL shown as "\0" so the path
 * names the key as written rather than as its text before the NUL. */
static void key_text(const yaml_node_t *k, char *out, size_t size)
{
    const char *s = scalar(k);
    size_t len = k->data.scalar.length, o = 0;
    for (size_t i = 0; i < len && o + 3 < size; i++) {
        if (s[i]) {
            out[o++] = s[i];
        } else {
            out[o++] = '\\';
            out[o++] = '0';
        }
    }
    out[o] = '\0';
}

static bool has_nul(const yaml_node_t *n)
{
    return n->type == YAML_SCALAR_NODE && strlen(scalar(n)) != n->data.scalar.length;
}

/* Reports every list or mapping longer than FH_YAML_MAX_ENTRIES, and every
 * scalar holding a NUL (only a "\0" or "\u0000" escape in a
 * double-quoted scalar can make one; a raw NUL byte was refused earlier).
 * The getters, key lookups and duplicate checks all treat text as C
 * strings, so "listen\0junk" would otherwise pass as the known key listen
 * or as a duplicate of it, and a value would be cut short. Depth is bounded
 * by the prepass (MAX_DEPTH). */
static void check_nuls(fh_yaml *y, yaml_node_t *n, fh_keypath *kp)
{
    static const char why[] = "contains a NUL byte (written \\0 or \\u0000); keys and strings "
                              "cannot hold one";
    if (!n)
        return;
    /* The loaders look names up linearly (overlays, features, environments),
     * so a bound here keeps a hostile 4 MiB file from costing minutes of
     * string compares on every reload. */
    size_t entries = n->type == YAML_SEQUENCE_NODE
                         ? (size_t)(n->data.sequence.items.top - n->data.sequence.items.start)
                         : fh_yaml_map_size(n);
    if (entries > FH_YAML_MAX_ENTRIES) {
        fh_yaml_error(y, n, kp->buf, "has %zu entries; at most %u are accepted", entries,
                      FH_YAML_MAX_ENTRIES);
        return;
    }
    if (n->type == YAML_SCALAR_NODE) {
        if (has_nul(n))
            fh_yaml_error(y, n, kp->buf, "%s", why);
    } else if (n->type == YAML_SEQUENCE_NODE) {
        size_t total = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
        for (size_t i = 0; i < total; i++) {
            size_t mark = fh_keypath_push_index(kp, i);
            check_nuls(y, yaml_document_get_node(&y->doc, n->data.sequence.items.start[i]), kp);
            fh_keypath_pop(kp, mark);
        }
    } else if (n->type == YAML_MAPPING_NODE) {
        size_t total = fh_yaml_map_size(n);
        for (size_t i = 0; i < total; i++) {
            yaml_node_t *k, *v;
            fh_yaml_map_key(y, n, i, &k, &v);
            if (!k)
                continue;
            size_t mark = kp->len;
            if (k->type == YAML_SCALAR_NODE) {
                char text[256];
                key_text(k, text, sizeof(text));
                mark = fh_keypath_push(kp, text);
                if (has_nul(k))
                    fh_yaml_error(y, k, kp->buf, "%s", why);
            } else {
                /* A complex key is refused later by fh_yaml_check_map; its
                 * scalars are still checked, under the mapping's path. */
                check_nuls(y, k, kp);
            }
            check_nuls(y, v, kp);
            fh_keypath_pop(kp, mark);
        }
    }
}

int fh_yaml_open_string(fh_yaml *y, const char *text, size_t len, const char *display,
                        fh_diag *diag)
{
    memset(y, 0, sizeof(*y));
    y->file = display ? display : "<string>";
    y->diag = diag;
    /* libyaml skips a UTF-8 byte-order mark but counts it as a column, so
     * every position on line 1 would be one to the right. */
    if (len >= 3 && !memcmp(text, "\xef\xbb\xbf", 3)) {
        text += 3;
        len -= 3;
    }
    if (!check_utf8(y, text, len) || !prepass(y, text, len))
        return -1;

    yaml_parser_t p;
    if (!yaml_parser_initialize(&p)) {
        fh_yaml_error(y, NULL, NULL, "out of memory");
        return -1;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    yaml_parser_set_encoding(&p, YAML_UTF8_ENCODING);
    if (!yaml_parser_load(&p, &y->doc)) {
        report_parser_error(y, &p, text, len);
        yaml_parser_delete(&p);
        return -1;
    }
    yaml_parser_delete(&p);
    y->loaded = true;

    yaml_node_t *root = yaml_document_get_root_node(&y->doc);
    if (!root || fh_yaml_is_null(root)) {
        fh_yaml_error(y, NULL, NULL,
                      "the file has no settings; expected a mapping of settings (key: value)");
    } else if (root->type != YAML_MAPPING_NODE) {
        fh_yaml_error(y, root, NULL,
                      "the top level must be a mapping of settings (key: value), not %s",
                      fh_yaml_describe(root));
    } else {
        fh_keypath kp;
        fh_keypath_init(&kp);
        check_nuls(y, root, &kp);
    }
    if (y->errors) {
        fh_yaml_close(y);
        return -1;
    }
    return 0;
}

int fh_yaml_open(fh_yaml *y, const char *path, const char *display, fh_diag *diag)
{
    memset(y, 0, sizeof(*y));
    y->file = display ? display : path;
    y->diag = diag;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fh_yaml_error(y, NULL, NULL, "cannot open: %s", strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        fh_yaml_error(y, NULL, NULL, "cannot stat: %s", strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        fh_yaml_error(y, NULL, NULL, "not a regular file; expected a YAML file");
        close(fd);
        return -1;
    }
    if (st.st_size > (off_t)FH_YAML_MAX_FILE_BYTES) {
        fh_yaml_error(y, NULL, NULL, "file is %lld bytes; at most %u are accepted",
                      (long long)st.st_size, FH_YAML_MAX_FILE_BYTES);
        close(fd);
        return -1;
    }
    size_t cap = (size_t)st.st_size + 1, len = 0;
    char *text = malloc(cap);
    if (!text) {
        fh_yaml_error(y, NULL, NULL, "out of memory");
        close(fd);
        return -1;
    }
    /* Read to EOF rather than trusting st_size: the file may be changing. */
    for (;;) {
        if (len == cap) {
            fh_yaml_error(y, NULL, NULL, "file grew while being read; try again");
            free(text);
            close(fd);
            return -1;
        }
        ssize_t n = read(fd, text + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fh_yaml_error(y, NULL, NULL, "cannot read: %s", strerror(errno));
            free(text);
            close(fd);
            return -1;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    const char *file = y->file;
    int rc = fh_yaml_open_string(y, text, len, file, diag);
    free(text);
    return rc;
}

void fh_yaml_close(fh_yaml *y)
{
    if (y->loaded)
        yaml_document_delete(&y->doc);
    y->loaded = false;
}

yaml_node_t *fh_yaml_root(fh_yaml *y)
{
    return y->loaded ? yaml_document_get_root_node(&y->doc) : NULL;
}

/* ---- mappings ----------------------------------------------------------------- */

size_t fh_yaml_map_size(const yaml_node_t *map)
{
    if (!map || map->type != YAML_MAPPING_NODE)
        return 0;
    return (size_t)(map->data.mapping.pairs.top - map->data.mapping.pairs.start);
}

const char *fh_yaml_map_key(fh_yaml *y, yaml_node_t *map, size_t i, yaml_node_t **key_node,
                            yaml_node_t **value)
{
    yaml_node_pair_t *pair = map->data.mapping.pairs.start + i;
    yaml_node_t *k = yaml_document_get_node(&y->doc, pair->key);
    yaml_node_t *v = yaml_document_get_node(&y->doc, pair->value);
    if (key_node)
        *key_node = k;
    if (value)
        *value = v;
    return (k && k->type == YAML_SCALAR_NODE) ? scalar(k) : NULL;
}

yaml_node_t *fh_yaml_get(fh_yaml *y, yaml_node_t *map, const char *key)
{
    size_t n = fh_yaml_map_size(map);
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *v;
        const char *k = fh_yaml_map_key(y, map, i, NULL, &v);
        if (k && !strcmp(k, key))
            return v;
    }
    return NULL;
}

/* Levenshtein distance, capped: only used to suggest a near key. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 64 || lb > 64)
        return SIZE_MAX;
    size_t row[65];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

static void report_unknown(fh_yaml *y, yaml_node_t *k, const char *path, const char *key,
                           const char *const *known)
{
    char list[512] = "";
    size_t used = 0;
    const char *near = NULL;
    size_t best = 3; /* suggest only close typos */
    for (size_t i = 0; known[i]; i++) {
        int n = snprintf(list + used, sizeof(list) - used, "%s%s", i ? ", " : "", known[i]);
        if (n > 0 && (size_t)n < sizeof(list) - used)
            used += (size_t)n;
        size_t d = edit_distance(key, known[i]);
        if (d < best) {
            best = d;
            near = known[i];
        }
    }
    char kp[512];
    char shown[64];
    quote_value(k, shown, sizeof(shown));
    join_path(kp, sizeof(kp), path, key);
    if (near)
        fh_yaml_error(y, k, kp, "unknown key %s (did you mean '%s'?); known keys: %s", shown, near,
                      list);
    else
        fh_yaml_error(y, k, kp, "unknown key %s; known keys: %s", shown, list);
}

typedef struct keyed {
    const char *text;
    size_t index;
} keyed;

static int keyed_cmp(const void *a, const void *b)
{
    const keyed *x = a, *y = b;
    int c = strcmp(x->text, y->text);
    if (c)
        return c;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* first[i] = the index of the first of texts[0..n) equal to texts[i]
 * (i itself when it is the first; NULL texts are never equal). Sorting
 * keeps this O(n log n): comparing every pair took seconds for a few ten
 * thousand keys. Returns NULL when out of memory; free() the result. */
static size_t *first_equal(const char *const *texts, size_t n)
{
    size_t *first = calloc(n ? n : 1, sizeof(*first));
    keyed *k = calloc(n ? n : 1, sizeof(*k));
    if (!first || !k) {
        free(first);
        free(k);
        return NULL;
    }
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        first[i] = i;
        if (texts[i])
            k[m++] = (keyed){texts[i], i};
    }
    qsort(k, m, sizeof(*k), keyed_cmp);
    for (size_t i = 1; i < m; i++)
        if (!strcmp(k[i].text, k[i - 1].text))
            first[k[i].index] = first[k[i - 1].index];
    free(k);
    return first;
}

bool fh_yaml_check_map(fh_yaml *y, yaml_node_t *map, const char *path, const char *const *known,
                       bool null_ok)
{
    if (!map)
        return false;
    if (map->type != YAML_MAPPING_NODE) {
        if (null_ok && fh_yaml_is_null(map))
            return true;
        char g[96];
        fh_yaml_error(y, map, path, "must be a mapping (key: value); got %s",
                      got(map, g, sizeof(g)));
        return false;
    }
    size_t n = fh_yaml_map_size(map);
    const char **texts = calloc(n ? n : 1, sizeof(*texts));
    if (!texts) {
        fh_yaml_error(y, map, path, "out of memory");
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *k;
        const char *key = fh_yaml_map_key(y, map, i, &k, NULL);
        texts[i] = key && !fh_yaml_is_null(k) ? key : NULL;
    }
    size_t *first = first_equal(texts, n);
    free(texts);
    if (!first) {
        fh_yaml_error(y, map, path, "out of memory");
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        yaml_node_t *k;
        const char *key = fh_yaml_map_key(y, map, i, &k, NULL);
        if (!key || fh_yaml_is_null(k)) {
            fh_yaml_error(y, k, path, "keys must be strings, not %s", fh_yaml_describe(k));
            continue;
        }
        if (first[i] != i) {
            yaml_node_t *pk;
            fh_yaml_map_key(y, map, first[i], &pk, NULL);
            char kp[512];
            fh_yaml_error(y, k, join_path(kp, sizeof(kp), path, key),
                          "duplicate key; first defined at line %zu", pk->start_mark.line + 1);
            continue;
        }
        if (!known)
            continue;
        bool ok = false;
        for (size_t j = 0; known[j] && !ok; j++)
            ok = !strcmp(known[j], key);
        if (!ok)
            report_unknown(y, k, path, key, known);
    }
    free(first);
    return true;
}

/* ---- scalars ------------------------------------------------------------------ */

static bool is_int_text(const char *s)
{
    if (*s == '-' || *s == '+')
        s++;
    if (!*s)
        return false;
    for (; *s; s++)
        if (*s < '0' || *s > '9')
            return false;
    return true;
}

/* Decimal floats only: no hex, inf or nan, which strtod would take. */
static bool is_float_text(const char *s)
{
    if (*s == '-' || *s == '+')
        s++;
    size_t digits = 0;
    while (*s >= '0' && *s <= '9')
        s++, digits++;
    if (*s == '.') {
        s++;
        while (*s >= '0' && *s <= '9')
            s++, digits++;
    }
    if (!digits)
        return false;
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '-' || *s == '+')
            s++;
        if (*s < '0' || *s > '9')
            return false;
        while (*s >= '0' && *s <= '9')
            s++;
    }
    return *s == '\0';
}

bool fh_yaml_node_long(fh_yaml *y, yaml_node_t *n, const char *path, long min, long max, long *out)
{
    char g[96];
    if (!is_plain(n) || !is_int_text(scalar(n))) {
        fh_yaml_error(y, n, path, "must be an integer from %ld to %ld; got %s", min, max,
                      got(n, g, sizeof(g)));
        return false;
    }
    errno = 0;
    long v = strtol(scalar(n), NULL, 10);
    if (errno == ERANGE || v < min || v > max) {
        fh_yaml_error(y, n, path, "must be an integer from %ld to %ld; got %s", min, max,
                      got(n, g, sizeof(g)));
        return false;
    }
    *out = v;
    return true;
}

bool fh_yaml_node_double(fh_yaml *y, yaml_node_t *n, const char *path, double min, double max,
                         double *out)
{
    char g[96];
    if (!is_plain(n) || !is_float_text(scalar(n))) {
        fh_yaml_error(y, n, path, "must be a number from %g to %g; got %s", min, max,
                      got(n, g, sizeof(g)));
        return false;
    }
    double v = strtod(scalar(n), NULL);
    if (!isfinite(v) || v < min || v > max) {
        fh_yaml_error(y, n, path, "must be a number from %g to %g; got %s", min, max,
                      got(n, g, sizeof(g)));
        return false;
    }
    *out = v;
    return true;
}

bool fh_yaml_get_long(fh_yaml *y, yaml_node_t *map, const char *path, const char *key, long min,
                      long max, long *out)
{
    yaml_node_t *n = fh_yaml_get(y, map, key);
    if (!n)
        return true;
    char kp[512];
    return fh_yaml_node_long(y, n, join_path(kp, sizeof(kp), path, key), min, max, out);
}

bool fh_yaml_get_int(fh_yaml *y, yaml_node_t *map, const char *path, const char *key, int min,
                     int max, int *out)
{
    long v = *out;
    if (!fh_yaml_get_long(y, map, path, key, min, max, &v))
        return false;
    *out = (int)v;
    return true;
}

bool fh_yaml_get_double(fh_yaml *y, yaml_node_t *map, const char *path, const char *key, double min,
                        double max, double *out)
{
    yaml_node_t *n = fh_yaml_get(y, map, key);
    if (!n)
        return true;
    char kp[512];
    return fh_yaml_node_double(y, n, join_path(kp, sizeof(kp), path, key), min, max, out);
}

bool fh_yaml_get_bool(fh_yaml *y, yaml_node_t *map, const char *path, const char *key, bool *out)
{
    yaml_node_t *n = fh_yaml_get(y, map, key);
    if (!n)
        return true;
    if (is_plain(n) && !strcmp(scalar(n), "true")) {
        *out = true;
        return true;
    }
    if (is_plain(n) && !strcmp(scalar(n), "false")) {
        *out = false;
        return true;
    }
    char kp[512], g[96];
    fh_yaml_error(y, n, join_path(kp, sizeof(kp), path, key), "must be true or false; got %s",
                  got(n, g, sizeof(g)));
    return false;
}

/* A scalar's text as a string value; NULL (reported) when it is not one. */
static char *node_string(fh_yaml *y, yaml_node_t *n, const char *path, bool allow_empty)
{
    char g[96];
    if (n->type != YAML_SCALAR_NODE) {
        fh_yaml_error(y, n, path, "must be a string; got %s", got(n, g, sizeof(g)));
        return NULL;
    }
    bool null = fh_yaml_is_null(n);
    if ((null || !n->data.scalar.length) && !allow_empty) {
        fh_yaml_error(y, n, path, "must not be empty");
        return NULL;
    }
    /* Unreachable for a document from fh_yaml_open() (check_nuls refused
     * it); kept so a getter can never hand out a silently cut string. */
    if (has_nul(n)) {
        fh_yaml_error(y, n, path, "contains a NUL byte; keys and strings cannot hold one");
        return NULL;
    }
    char *s = strdup(null ? "" : scalar(n));
    if (!s)
        fh_yaml_error(y, n, path, "out of memory");
    return s;
}

bool fh_yaml_get_string(fh_yaml *y, yaml_node_t *map, const char *path, const char *key,
                        bool allow_empty, char **out)
{
    yaml_node_t *n = fh_yaml_get(y, map, key);
    if (!n)
        return true;
    char kp[512];
    char *s = node_string(y, n, join_path(kp, sizeof(kp), path, key), allow_empty);
    if (!s)
        return false;
    free(*out);
    *out = s;
    return true;
}

void fh_strv_free(char **v, size_t n)
{
    if (!v)
        return;
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

bool fh_yaml_get_string_list(fh_yaml *y, yaml_node_t *map, const char *path, const char *key,
                             bool (*valid)(const char *), const char *what, char ***items,
                             size_t *count)
{
    yaml_node_t *n = fh_yaml_get(y, map, key);
    if (!n)
        return true;
    fh_keypath kp;
    fh_keypath_init(&kp);
    if (path && *path)
        fh_keypath_push(&kp, path);
    fh_keypath_push(&kp, key);
    if (fh_yaml_is_null(n)) {
        fh_strv_free(*items, *count);
        *items = NULL;
        *count = 0;
        return true;
    }
    if (n->type != YAML_SEQUENCE_NODE) {
        char g[96];
        fh_yaml_error(y, n, kp.buf, "must be a list such as [\"a\", \"b\"]; got %s",
                      got(n, g, sizeof(g)));
        return false;
    }
    size_t total = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
    char **v = total ? calloc(total, sizeof(*v)) : NULL;
    if (total && !v) {
        fh_yaml_error(y, n, kp.buf, "out of memory");
        return false;
    }
    bool ok = true;
    for (size_t i = 0; i < total; i++) {
        yaml_node_t *it = yaml_document_get_node(&y->doc, n->data.sequence.items.start[i]);
        size_t mark = fh_keypath_push_index(&kp, i);
        char *s = node_string(y, it, kp.buf, false);
        if (s && valid && !valid(s)) {
            char g[96];
            fh_yaml_error(y, it, kp.buf, "must be %s; got %s", what, got(it, g, sizeof(g)));
            free(s);
            s = NULL;
        }
        fh_keypath_pop(&kp, mark);
        if (!s)
            ok = false;
        v[i] = s;
    }
    size_t *first = first_equal((const char *const *)v, total);
    if (total && !first) {
        fh_yaml_error(y, n, kp.buf, "out of memory");
        ok = false;
    }
    for (size_t i = 0; first && i < total; i++) {
        if (first[i] == i)
            continue;
        yaml_node_t *it = yaml_document_get_node(&y->doc, n->data.sequence.items.start[i]);
        size_t mark = fh_keypath_push_index(&kp, i);
        fh_yaml_error(y, it, kp.buf, "'%s' is listed twice", v[i]);
        fh_keypath_pop(&kp, mark);
        ok = false;
    }
    free(first);
    if (!ok) {
        fh_strv_free(v, total);
        return false;
    }
    fh_strv_free(*items, *count);
    *items = v;
    *count = total;
    return true;
}

/* ---- YAML to JSON -------------------------------------------------------------- */

static json_t *scalar_to_json(fh_yaml *y, yaml_node_t *n, const char *path)
{
    const char *s = scalar(n);
    size_t len = n->data.scalar.length;
    json_t *j;
    if (!is_plain(n)) {
        j = json_stringn(s, len);
    } else if (fh_yaml_is_null(n)) {
        j = json_null();
    } else if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE")) {
        j = json_true();
    } else if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE")) {
        j = json_false();
    } else if (is_int_text(s)) {
        errno = 0;
        long long v = strtoll(s, NULL, 10);
        if (errno == ERANGE) {
            fh_yaml_error(y, n, path, "integer %s is out of range (64-bit)", s);
            return NULL;
        }
        j = json_integer((json_int_t)v);
    } else if (is_float_text(s)) {
        double v = strtod(s, NULL);
        if (!isfinite(v)) {
            fh_yaml_error(y, n, path, "number %s is out of range", s);
            return NULL;
        }
        j = json_real(v);
    } else if (!strcmp(s, ".inf") || !strcmp(s, "-.inf") || !strcmp(s, ".nan") ||
               !strcmp(s, ".NaN") || !strcmp(s, ".Inf") || !strcmp(s, "-.Inf")) {
        fh_yaml_error(y, n, path, "%s cannot be represented in JSON", s);
        return NULL;
    } else {
        j = json_stringn(s, len);
    }
    if (!j)
        fh_yaml_error(y, n, path, "cannot be converted to JSON (out of memory?)");
    return j;
}

static json_t *node_to_json(fh_yaml *y, yaml_node_t *n, fh_keypath *kp)
{
    if (n->type == YAML_SCALAR_NODE)
        return scalar_to_json(y, n, kp->buf);
    if (n->type == YAML_SEQUENCE_NODE) {
        json_t *arr = json_array();
        if (!arr) {
            fh_yaml_error(y, n, kp->buf, "out of memory");
            return NULL;
        }
        size_t total = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
        bool ok = true;
        for (size_t i = 0; i < total; i++) {
            yaml_node_t *it = yaml_document_get_node(&y->doc, n->data.sequence.items.start[i]);
            size_t mark = fh_keypath_push_index(kp, i);
            json_t *j = node_to_json(y, it, kp);
            fh_keypath_pop(kp, mark);
            if (!j || json_array_append_new(arr, j) != 0)
                ok = false;
        }
        if (!ok) {
            json_decref(arr);
            return NULL;
        }
        return arr;
    }
    if (n->type == YAML_MAPPING_NODE) {
        if (!fh_yaml_check_map(y, n, kp->buf, NULL, false))
            return NULL;
        json_t *obj = json_object();
        if (!obj) {
            fh_yaml_error(y, n, kp->buf, "out of memory");
            return NULL;
        }
        size_t before = y->errors;
        size_t total = fh_yaml_map_size(n);
        for (size_t i = 0; i < total; i++) {
            yaml_node_t *k, *v;
            const char *key = fh_yaml_map_key(y, n, i, &k, &v);
            if (!key || json_object_get(obj, key))
                continue; /* reported by fh_yaml_check_map */
            size_t mark = fh_keypath_push(kp, key);
            json_t *j = node_to_json(y, v, kp);
            fh_keypath_pop(kp, mark);
            if (j && json_object_set_new(obj, key, j) != 0)
                fh_yaml_error(y, k, kp->buf, "key cannot be used in JSON");
        }
        if (y->errors != before) {
            json_decref(obj);
            return NULL;
        }
        return obj;
    }
    fh_yaml_error(y, n, kp->buf, "empty node");
    return NULL;
}

char *fh_yaml_to_json(fh_yaml *y, yaml_node_t *n, const char *path, bool object_only)
{
    if (!n || fh_yaml_is_null(n)) {
        if (object_only)
            return strdup("{}");
        return strdup("null");
    }
    if (object_only && n->type != YAML_MAPPING_NODE) {
        char g[96];
        fh_yaml_error(y, n, path,
                      "must be a mapping (key: value), handed to the plugin as a "
                      "JSON object; got %s",
                      got(n, g, sizeof(g)));
        return NULL;
    }
    fh_keypath kp;
    fh_keypath_init(&kp);
    if (path && *path)
        fh_keypath_push(&kp, path);
    size_t before = y->errors;
    json_t *j = node_to_json(y, n, &kp);
    if (!j || y->errors != before) {
        json_decref(j);
        return NULL;
    }
    char *text = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(j);
    if (!text)
        fh_yaml_error(y, n, path, "cannot be converted to JSON (out of memory?)");
    return text;
}

/* ---- validators ----------------------------------------------------------------- */

bool fh_valid_overlay_name(const char *s)
{
    if (!s || !(*s >= 'a' && *s <= 'z'))
        return false;
    size_t n = 0;
    for (; *s; s++, n++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
            return false;
    return n <= 64;
}

bool fh_valid_word(const char *s)
{
    if (!s || !*s)
        return false;
    size_t n = 0;
    for (; *s; s++, n++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_'))
            return false;
    return n <= 64;
}
