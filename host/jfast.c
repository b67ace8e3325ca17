/*
 * jfast.c - see jfast.h.
 *
 * The scanner is a recursive descent over the bytes, bounded by
 * FH_JSCAN_MAX_DEPTH; every function takes the end pointer and never reads
 * past it (the input need not be NUL-terminated). Iteration over a
 * validated object or array re-skips values with the same code, so an
 * unvalidated input is never walked by the iterators' shortcuts.
 */
#include "jfast.h"

#include "util.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- eight bytes at a time ------------------------------------------------------- */

#define ONES  0x0101010101010101ull
#define HIGHS 0x8080808080808080ull

static uint64_t load8(const char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

/* Non-zero when some byte of w is zero / below n (n <= 128) / equal to c.
 * The classic bit tricks: exact for "some byte", not for which one. */
static uint64_t has_zero(uint64_t w)
{
    return (w - ONES) & ~w & HIGHS;
}

static uint64_t has_less(uint64_t w, unsigned n)
{
    return (w - ONES * n) & ~w & HIGHS;
}

static uint64_t has_byte(uint64_t w, unsigned char c)
{
    return has_zero(w ^ (ONES * c));
}

/* The bytes of w that are not plain string text ('"', '\\', a control
 * byte, and for the scanner, which checks UTF-8 itself, a byte >= 0x80): a
 * high bit set in each; exact up to the first one (the bit tricks may also
 * flag bytes after it). Zero when all eight are plain. */
static uint64_t special8(uint64_t w, bool allow_high)
{
    return has_less(w, 0x20) | has_byte(w, '"') | has_byte(w, '\\') |
           (allow_high ? 0 : (w & HIGHS));
}

static bool plain8(uint64_t w, bool allow_high)
{
    return !special8(w, allow_high);
}

/* ---- UTF-8 ------------------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at s (s < end, s[0] >= 0x80), or 0. */
static size_t utf8_seq(const unsigned char *s, const unsigned char *end)
{
    unsigned c = s[0];
    size_t n;
    unsigned min;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
        min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    if ((size_t)(end - s) < n)
        return 0;
    unsigned cp = c & (0x7fu >> n);
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return n;
}

bool fh_utf8_valid(const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str, *end = s + n;
    while (s < end) {
        /* Eight ASCII bytes at a time: the common case for English text. */
        while ((size_t)(end - s) >= 8 && !(load8((const char *)s) & HIGHS))
            s += 8;
        if (s >= end)
            break;
        if (*s < 0x80) {
            s++;
            continue;
        }
        size_t k = utf8_seq(s, end);
        if (!k)
            return false;
        s += k;
    }
    return true;
}

/* ---- shared strings ------------------------------------------------------------------ */

#define SHARED_MIN   256 /* shorter strings are cheaper to build than to look up */
#define SHARED_SLOTS 8

typedef struct shared_str {
    json_t *node;  /* one reference held by the cache */
    char *escaped; /* its JSON text, quotes included */
    size_t escaped_len;
} shared_str;

typedef struct shared_cache {
    shared_str slot[SHARED_SLOTS];
    unsigned next; /* the slot replaced next */
} shared_cache;

typedef struct obuf obuf;

static pthread_key_t shared_key;
static pthread_once_t shared_once = PTHREAD_ONCE_INIT;

static void shared_cache_free(void *p)
{
    shared_cache *c = p;
    for (unsigned i = 0; i < SHARED_SLOTS; i++) {
        json_decref(c->slot[i].node);
        free(c->slot[i].escaped);
    }
    free(c);
}

static void shared_key_init(void)
{
    pthread_key_create(&shared_key, shared_cache_free);
}

static shared_cache *shared_get(bool create)
{
    pthread_once(&shared_once, shared_key_init);
    shared_cache *c = pthread_getspecific(shared_key);
    if (!c && create && (c = calloc(1, sizeof(*c))) != NULL)
        pthread_setspecific(shared_key, c);
    return c;
}

static void put_string(obuf *o, const char *s, size_t n);

/* ---- serialiser -------------------------------------------------------------------- */

struct obuf {
    char *p;
    size_t len, cap;
    bool oom;
};

static bool reserve(obuf *o, size_t more)
{
    if (o->oom)
        return false;
    if (o->len + more + 1 <= o->cap)
        return true;
    size_t cap = o->cap ? o->cap : 256;
    while (cap < o->len + more + 1)
        cap *= 2;
    char *np = realloc(o->p, cap);
    if (!np) {
        o->oom = true;
        return false;
    }
    o->p = np;
    o->cap = cap;
    return true;
}

static void put(obuf *o, const char *s, size_t n)
{
    if (!reserve(o, n))
        return;
    memcpy(o->p + o->len, s, n);
    o->len += n;
}

static void putc1(obuf *o, char c)
{
    if (reserve(o, 1))
        o->p[o->len++] = c;
}

/* Bytes that need an escape: '"', '\\' and the C0 controls. */
static bool needs_escape(unsigned char c)
{
    return c < 0x20 || c == '"' || c == '\\';
}

static void put_string(obuf *o, const char *s, size_t n)
{
    putc1(o, '"');
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        while (n - i >= 8 && plain8(load8(s + i), true))
            i += 8;
        if (i >= n)
            break;
        unsigned char c = (unsigned char)s[i];
        if (!needs_escape(c))
            continue;
        put(o, s + run, i - run);
        run = i + 1;
        char esc[8];
        switch (c) {
        case '"':
            put(o, "\\\"", 2);
            break;
        case '\\':
            put(o, "\\\\", 2);
            break;
        case '\b':
            put(o, "\\b", 2);
            break;
        case '\f':
            put(o, "\\f", 2);
            break;
        case '\n':
            put(o, "\\n", 2);
            break;
        case '\r':
            put(o, "\\r", 2);
            break;
        case '\t':
            put(o, "\\t", 2);
            break;
        default:
            snprintf(esc, sizeof(esc), "\\u%04X", (unsigned)c);
            put(o, esc, 6);
        }
    }
    put(o, s + run, n - run);
    putc1(o, '"');
}

/* Reals with at most six decimals - every sampling parameter - without
 * printf: exactly what %.<precision>g writes for them when their decimal
 * form has no more significant digits than the precision (so the integral
 * part is bounded by 10^(precision - 6), and by 10^8 at most) and %g would
 * not use an exponent (not below 1e-4). */
static size_t short_real(char *b, double v, int precision)
{
    static const double limits[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8};
    int digits_left = (precision > 14 ? 14 : precision) - 6;
    if (digits_left < 0)
        return 0;
    double limit = limits[digits_left] * 1e6;
    double scaled = v * 1e6;
    if (!(scaled > -limit && scaled < limit))
        return 0;
    if (v != 0 && fabs(v) < 1e-4)
        return 0; /* %g writes those with an exponent */
    long long k = (long long)scaled;
    if ((double)k != scaled)
        return 0;
    size_t n = 0;
    if (signbit(v))
        b[n++] = '-';
    unsigned long long a = k < 0 ? (unsigned long long)-k : (unsigned long long)k;
    unsigned long long ip = a / 1000000u, fp = a % 1000000u;
    n += fh_utoa(ip, b + n);
    b[n++] = '.'; /* over fh_utoa's NUL */
    if (!fp) {
        b[n++] = '0';
    } else {
        char frac[6];
        for (int i = 5; i >= 0; i--, fp /= 10)
            frac[i] = (char)('0' + fp % 10);
        int last = 5;
        while (frac[last] == '0')
            last--;
        for (int i = 0; i <= last; i++)
            b[n++] = frac[i];
    }
    b[n] = '\0';
    return n;
}

size_t fh_json_real(char *b, size_t size, double v, int precision)
{
    if (size < 32)
        return 0;
    size_t fast = short_real(b, v, precision);
    if (fast)
        return fast;
    int n = snprintf(b, size, "%.*g", precision, v);
    if (n <= 0 || (size_t)n >= size - 3)
        return 0;
    if (!strchr(b, '.') && !strchr(b, 'e')) {
        memcpy(b + n, ".0", 3);
        n += 2;
    }
    char *e = strchr(b, 'e');
    if (e) {
        char *start = e + 1, *digits = e + 1;
        if (*digits == '+' || *digits == '-') {
            if (*digits == '-')
                start++;
            digits++;
        }
        while (*digits == '0' && digits[1])
            digits++;
        memmove(start, digits, strlen(digits) + 1);
        n = (int)strlen(b);
    }
    return (size_t)n;
}

static void put_real(obuf *o, double v)
{
    char b[64];
    size_t n = fh_json_real(b, sizeof(b), v, 15);
    if (!n)
        o->oom = true;
    else
        put(o, b, n);
}

static char *escape_alone(const char *s, size_t n, size_t *len);

json_t *fh_json_string_shared(const char *text, size_t n)
{
    if (n >= SHARED_MIN) {
        shared_cache *c = shared_get(true);
        for (unsigned i = 0; c && i < SHARED_SLOTS; i++) {
            json_t *node = c->slot[i].node;
            if (node && json_string_length(node) == n &&
                memcmp(json_string_value(node), text, n) == 0)
                return json_incref(node);
        }
        if (c && fh_utf8_valid(text, n)) {
            json_t *node = json_stringn_nocheck(text, n);
            size_t elen = 0;
            char *esc = node ? escape_alone(text, n, &elen) : NULL;
            if (esc) { /* else out of memory for the cache: uncached */
                shared_str *slot = &c->slot[c->next];
                c->next = (c->next + 1) % SHARED_SLOTS;
                json_decref(slot->node);
                free(slot->escaped);
                slot->node = json_incref(node);
                slot->escaped = esc;
                slot->escaped_len = elen;
            }
            return node;
        }
        if (c)
            return NULL; /* not UTF-8 */
    }
    return fh_utf8_valid(text, n) ? json_stringn_nocheck(text, n) : NULL;
}

/* A cached string's escaped text, if v is one of this thread's. */
static const shared_str *shared_find(const json_t *v)
{
    if (json_string_length(v) < SHARED_MIN)
        return NULL;
    shared_cache *c = shared_get(false);
    for (unsigned i = 0; c && i < SHARED_SLOTS; i++)
        if (c->slot[i].node == v)
            return &c->slot[i];
    return NULL;
}

static void put_value(obuf *o, const json_t *v)
{
    char b[32];
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        putc1(o, '{');
        const char *k;
        json_t *m;
        bool first = true;
        json_object_foreach((json_t *)v, k, m)
        {
            if (!first)
                putc1(o, ',');
            first = false;
            put_string(o, k, strlen(k));
            putc1(o, ':');
            put_value(o, m);
        }
        putc1(o, '}');
        break;
    }
    case JSON_ARRAY: {
        putc1(o, '[');
        for (size_t i = 0, n = json_array_size(v); i < n; i++) {
            if (i)
                putc1(o, ',');
            put_value(o, json_array_get(v, i));
        }
        putc1(o, ']');
        break;
    }
    case JSON_STRING: {
        const shared_str *sh = shared_find(v);
        size_t len = json_string_length(v);
        const char *str = json_string_value(v);
        if (sh)
            put(o, sh->escaped, sh->escaped_len);
        else if (len > 1 && str[0] == '\0')
            put(o, str + 1, len - 1); /* a number kept as written (build_number) */
        else
            put_string(o, str, len);
        break;
    }
    case JSON_INTEGER: {
        int n = snprintf(b, sizeof(b), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        put(o, b, (size_t)n);
        break;
    }
    case JSON_REAL:
        put_real(o, json_real_value(v));
        break;
    case JSON_TRUE:
        put(o, "true", 4);
        break;
    case JSON_FALSE:
        put(o, "false", 5);
        break;
    case JSON_NULL:
        put(o, "null", 4);
        break;
    }
}

/* The JSON text of one string, quotes included. */
static char *escape_alone(const char *s, size_t n, size_t *len)
{
    obuf o = {0};
    put_string(&o, s, n);
    if (o.oom || !reserve(&o, 0)) {
        free(o.p);
        return NULL;
    }
    o.p[o.len] = '\0';
    *len = o.len;
    return o.p;
}

char *fh_json_dump(const json_t *v, size_t *len)
{
    if (!v)
        return NULL;
    obuf o = {0};
    put_value(&o, v);
    if (o.oom || !reserve(&o, 0)) {
        free(o.p);
        return NULL;
    }
    o.p[o.len] = '\0';
    /* Doubling leaves up to half unused, and the text may wait a long
     * time for an upstream: give the rest back. */
    if (o.cap > o.len + 1 + 64) {
        char *fit = realloc(o.p, o.len + 1);
        if (fit)
            o.p = fit;
    }
    if (len)
        *len = o.len;
    return o.p;
}

/* ---- scanner ------------------------------------------------------------------------- */

#define PATH_DEPTH 6 /* the deepest path fh_json_scan_paths looks for */

/* A path to report, split: key names, or array indexes (name NULL). */
typedef struct want {
    const char *name[PATH_DEPTH];
    size_t len[PATH_DEPTH];
    long index[PATH_DEPTH];
    int n;
    fh_jval *out;
} path_want;

typedef struct scan {
    const char *p, *end, *err;
    /* fh_json_scan_paths: what to report, and where the scan is. */
    path_want *wants;
    int nwants;
    struct {
        const char *key, *key_end; /* the raw key token, or NULL in an array */
        long index;
    } at[PATH_DEPTH];
} scan;

static size_t unescape(const fh_jval *str, char *out);

static bool fail(scan *s)
{
    if (!s->err)
        s->err = s->p;
    return false;
}

static void skip_ws(scan *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\n' || *s->p == '\r' || *s->p == '\t'))
        s->p++;
}

static int hex4(const char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= c - '0';
        else if (c >= 'a' && c <= 'f')
            v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v |= c - 'A' + 10;
        else
            return -1;
    }
    return v;
}

/* At the opening quote; leaves s->p after the closing one. Rejects what
 * jansson rejects: raw control characters, bad escapes, lone or reversed
 * surrogates, \u0000, invalid UTF-8. */
static bool scan_string(scan *s)
{
    s->p++;
    while (s->p < s->end) {
        /* Eight bytes at a time; the first special byte found by its bit
         * (little-endian: the lowest set bit is the first byte). */
        while (s->end - s->p >= 8) {
            uint64_t m = special8(load8(s->p), false);
            if (m) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
                s->p += (size_t)__builtin_ctzll(m) / 8;
#endif
                break;
            }
            s->p += 8;
        }
        if (s->p >= s->end)
            break;
        unsigned char c = (unsigned char)*s->p;
        if (c == '"') {
            s->p++;
            return true;
        }
        if (c < 0x20)
            return fail(s);
        if (c == '\\') {
            if (s->end - s->p < 2)
                return fail(s);
            char e = s->p[1];
            if (e == 'u') {
                if (s->end - s->p < 6)
                    return fail(s);
                int cp = hex4(s->p + 2);
                if (cp <= 0) /* bad hex, or \u0000 */
                    return fail(s);
                s->p += 6;
                if (cp >= 0xdc00 && cp <= 0xdfff)
                    return fail(s); /* a low surrogate first */
                if (cp >= 0xd800 && cp <= 0xdbff) {
                    if (s->end - s->p < 6 || s->p[0] != '\\' || s->p[1] != 'u')
                        return fail(s);
                    int lo = hex4(s->p + 2);
                    if (lo < 0xdc00 || lo > 0xdfff)
                        return fail(s);
                    s->p += 6;
                }
                continue;
            }
            if (!strchr("\"\\/bfnrt", e) || e == '\0')
                return fail(s);
            s->p += 2;
            continue;
        }
        if (c < 0x80) {
            s->p++;
            continue;
        }
        size_t k = utf8_seq((const unsigned char *)s->p, (const unsigned char *)s->end);
        if (!k)
            return fail(s);
        s->p += k;
    }
    return fail(s);
}

static bool digits(scan *s)
{
    const char *start = s->p;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
        s->p++;
    return s->p > start;
}

static bool scan_number(scan *s)
{
    if (s->p < s->end && *s->p == '-')
        s->p++;
    if (s->p >= s->end)
        return fail(s);
    if (*s->p == '0')
        s->p++;
    else if (!digits(s))
        return fail(s);
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        if (!digits(s))
            return fail(s);
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
            s->p++;
        if (!digits(s))
            return fail(s);
    }
    return true;
}

static bool literal(scan *s, const char *word, size_t n)
{
    if ((size_t)(s->end - s->p) < n || memcmp(s->p, word, n) != 0)
        return fail(s);
    s->p += n;
    return true;
}

static bool scan_value(scan *s, int depth, fh_jtype *type);

/* The value [start, s->p) at `depth` ends: is it one of the paths wanted? */
static void report(scan *s, int depth, const char *start, fh_jtype type)
{
    for (int w = 0; w < s->nwants; w++) {
        path_want *x = &s->wants[w];
        if (x->n != depth)
            continue;
        int i = 0;
        for (; i < depth; i++) {
            if (!x->name[i]) {
                if (s->at[i].key || s->at[i].index != x->index[i])
                    break;
                continue;
            }
            if (!s->at[i].key)
                break;
            fh_jval k = {.start = s->at[i].key, .end = s->at[i].key_end, .type = FH_J_STRING};
            size_t raw = (size_t)(k.end - k.start) - 2;
            bool eq = raw == x->len[i] && memcmp(k.start + 1, x->name[i], raw) == 0;
            if (!eq && memchr(k.start + 1, '\\', raw)) {
                char name[64];
                if (x->len[i] < sizeof(name)) {
                    memcpy(name, x->name[i], x->len[i]);
                    name[x->len[i]] = '\0';
                    eq = fh_jstr_eq(&k, name);
                }
            }
            if (!eq)
                break;
        }
        if (i == depth) {
            x->out->start = start;
            x->out->end = s->p;
            x->out->type = type; /* a repeated key: the last one, as jansson keeps */
        }
    }
}

static bool scan_container(scan *s, int depth, bool object)
{
    if (depth >= FH_JSCAN_MAX_DEPTH)
        return fail(s);
    char close = object ? '}' : ']';
    s->p++;
    skip_ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        return true;
    }
    for (long index = 0;; index++) {
        fh_jtype t;
        const char *key = s->p;
        if (object) {
            if (s->p >= s->end || *s->p != '"' || !scan_string(s))
                return fail(s);
            if (s->wants && depth < PATH_DEPTH) {
                s->at[depth].key = key;
                s->at[depth].key_end = s->p;
            }
            skip_ws(s);
            if (s->p >= s->end || *s->p != ':')
                return fail(s);
            s->p++;
            skip_ws(s);
        } else if (s->wants && depth < PATH_DEPTH) {
            s->at[depth].key = NULL;
            s->at[depth].index = index;
        }
        const char *start = s->p;
        if (!scan_value(s, depth + 1, &t))
            return false;
        if (s->wants && depth < PATH_DEPTH)
            report(s, depth + 1, start, t);
        skip_ws(s);
        if (s->p >= s->end)
            return fail(s);
        if (*s->p == close) {
            s->p++;
            return true;
        }
        if (*s->p != ',')
            return fail(s);
        s->p++;
        skip_ws(s);
    }
}

static bool scan_value(scan *s, int depth, fh_jtype *type)
{
    if (s->p >= s->end)
        return fail(s);
    switch (*s->p) {
    case '{':
        *type = FH_J_OBJECT;
        return scan_container(s, depth, true);
    case '[':
        *type = FH_J_ARRAY;
        return scan_container(s, depth, false);
    case '"':
        *type = FH_J_STRING;
        return scan_string(s);
    case 't':
        *type = FH_J_TRUE;
        return literal(s, "true", 4);
    case 'f':
        *type = FH_J_FALSE;
        return literal(s, "false", 5);
    case 'n':
        *type = FH_J_NULL;
        return literal(s, "null", 4);
    default:
        *type = FH_J_NUMBER;
        return scan_number(s);
    }
}

bool fh_json_scan(const char *str, size_t n, fh_jval *top, size_t *err_at)
{
    scan s = {.p = str, .end = str + n};
    skip_ws(&s);
    fh_jval v = {.start = s.p};
    bool ok = scan_value(&s, 0, &v.type);
    v.end = s.p;
    if (ok) {
        skip_ws(&s);
        ok = s.p == s.end || fail(&s);
    }
    if (!ok) {
        if (err_at)
            *err_at = (size_t)((s.err ? s.err : s.p) - str);
        return false;
    }
    if (top)
        *top = v;
    return true;
}

bool fh_json_scan_paths(const char *str, size_t n, fh_jval *top, const char *const *paths,
                        fh_jval *found, size_t npaths)
{
    path_want wants[8];
    if (npaths > 8)
        return false;
    for (size_t i = 0; i < npaths; i++) {
        path_want *w = &wants[i];
        memset(w, 0, sizeof(*w));
        w->out = &found[i];
        found[i].type = FH_J_NONE;
        const char *p = paths[i];
        while (*p && w->n < PATH_DEPTH) {
            const char *dot = strchr(p, '.');
            size_t len = dot ? (size_t)(dot - p) : strlen(p);
            if (len && strspn(p, "0123456789") == len) {
                w->name[w->n] = NULL;
                w->index[w->n] = strtol(p, NULL, 10);
            } else {
                w->name[w->n] = p;
                w->len[w->n] = len;
            }
            w->n++;
            p += len + (dot ? 1 : 0);
        }
    }
    scan s = {.p = str, .end = str + n, .wants = wants, .nwants = (int)npaths};
    skip_ws(&s);
    fh_jval v = {.start = s.p};
    bool ok = scan_value(&s, 0, &v.type);
    v.end = s.p;
    if (ok) {
        skip_ws(&s);
        ok = s.p == s.end;
    }
    if (ok && top)
        *top = v;
    return ok;
}

/* Past the string token at p (its opening quote), in a validated document:
 * the closing quote is the first '"' not escaped. */
static const char *skip_string_fast(const char *p, const char *end)
{
    p++;
    while (p < end) {
        while (end - p >= 8 && !(has_byte(load8(p), '"') | has_byte(load8(p), '\\')))
            p += 8;
        if (p >= end)
            break;
        if (*p == '\\')
            p += 2;
        else if (*p++ == '"')
            break;
    }
    return p;
}

/* ---- parser: the scanner, building a jansson tree as it goes -------------------------- */

typedef struct build {
    scan s;
    const char *why;
} build;

static json_t *build_fail(build *b, const char *why)
{
    if (!b->why)
        b->why = why;
    fail(&b->s);
    return NULL;
}

static json_t *build_value(build *b, int depth);

/* A validated string token [start, end): its decoded bytes in `small` when
 * they fit, else malloc'd (*heap set). */
static char *decode(const char *start, const char *end, char *small, size_t small_len, size_t *len,
                    char **heap)
{
    fh_jval v = {.start = start, .end = end, .type = FH_J_STRING};
    size_t need = (size_t)(end - start);
    char *out = small;
    *heap = NULL;
    if (need > small_len) {
        out = *heap = malloc(need);
        if (!out)
            return NULL;
    }
    *len = unescape(&v, out);
    out[*len] = '\0';
    return out;
}

static json_t *build_string(build *b)
{
    const char *start = b->s.p;
    if (!scan_string(&b->s))
        return build_fail(b, "invalid string");
    char small[256], *heap;
    size_t len;
    char *text = decode(start, b->s.p, small, sizeof(small), &len, &heap);
    json_t *v = text ? json_stringn_nocheck(text, len) : NULL;
    free(heap);
    return v ? v : build_fail(b, "out of memory");
}

static json_t *build_number(build *b)
{
    const char *start = b->s.p;
    if (!scan_number(&b->s))
        return build_fail(b, "invalid number");
    size_t n = (size_t)(b->s.p - start);
    char small[64], *text = n < sizeof(small) ? small : malloc(n + 1);
    if (!text)
        return build_fail(b, "out of memory");
    memcpy(text, start, n);
    text[n] = '\0';
    errno = 0;
    json_t *v = NULL;
    bool big = false;
    if (!memchr(text, '.', n) && !memchr(text, 'e', n) && !memchr(text, 'E', n)) {
        json_int_t i = strtoll(text, NULL, 10);
        if (errno == ERANGE)
            big = true;
        else
            v = json_integer(i);
    } else {
        double d = strtod(text, NULL);
        if (errno == ERANGE && (d == HUGE_VAL || d == -HUGE_VAL))
            big = true;
        else
            v = json_real(d);
    }
    if (big) {
        /* A number no C type holds (a seed of 2^64-1, 1e400): the host has
         * no use for its value, and the upstream must get it as written.
         * Kept as its text behind a NUL byte (fh_json_raw_number), which
         * no parsed string can start with: \u0000 is refused. */
        char *raw = malloc(n + 1);
        if (raw) {
            raw[0] = '\0';
            memcpy(raw + 1, text, n);
            v = json_stringn_nocheck(raw, n + 1);
            free(raw);
        }
    }
    if (text != small)
        free(text);
    return v ? v : build_fail(b, "out of memory");
}

static json_t *build_container(build *b, int depth, bool object)
{
    if (depth >= FH_JSCAN_MAX_DEPTH)
        return build_fail(b, "nested too deep");
    json_t *c = object ? json_object() : json_array();
    if (!c)
        return build_fail(b, "out of memory");
    char close = object ? '}' : ']';
    scan *s = &b->s;
    s->p++;
    skip_ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        return c;
    }
    for (;;) {
        char small[128], *heap = NULL, *key = NULL;
        if (object) {
            const char *k = s->p;
            size_t klen;
            if (s->p >= s->end || *s->p != '"' || !scan_string(s))
                goto bad;
            key = decode(k, s->p, small, sizeof(small), &klen, &heap);
            if (!key)
                goto bad;
            skip_ws(s);
            if (s->p >= s->end || *s->p != ':') {
                free(heap);
                goto bad;
            }
            s->p++;
            skip_ws(s);
        }
        json_t *v = build_value(b, depth + 1);
        int rc = !v       ? -1
                 : object ? json_object_set_new_nocheck(c, key, v)
                          : json_array_append_new(c, v);
        free(heap);
        if (rc != 0)
            goto bad;
        skip_ws(s);
        if (s->p >= s->end)
            goto bad;
        if (*s->p == close) {
            s->p++;
            return c;
        }
        if (*s->p != ',')
            goto bad;
        s->p++;
        skip_ws(s);
    }
bad:
    json_decref(c);
    return build_fail(b, object ? "invalid object" : "invalid array");
}

static json_t *build_value(build *b, int depth)
{
    scan *s = &b->s;
    if (s->p >= s->end)
        return build_fail(b, "unexpected end of input");
    fh_jtype t;
    switch (*s->p) {
    case '{':
        return build_container(b, depth, true);
    case '[':
        return build_container(b, depth, false);
    case '"':
        return build_string(b);
    case 't':
    case 'f':
    case 'n':
        if (!scan_value(s, depth, &t))
            return build_fail(b, "invalid literal");
        return t == FH_J_TRUE ? json_true() : t == FH_J_FALSE ? json_false() : json_null();
    default:
        return build_number(b);
    }
}

json_t *fh_json_parse(const char *str, size_t n, size_t *err_at, const char **why)
{
    build b = {.s = {.p = str, .end = str + n}};
    skip_ws(&b.s);
    json_t *v = NULL;
    if (b.s.p < b.s.end && (*b.s.p == '{' || *b.s.p == '['))
        v = build_value(&b, 0);
    else
        build_fail(&b, "'[' or '{' expected");
    if (v) {
        skip_ws(&b.s);
        if (b.s.p != b.s.end) {
            json_decref(v);
            v = build_fail(&b, "end of file expected");
        }
    }
    if (!v) {
        if (err_at)
            *err_at = (size_t)((b.s.err ? b.s.err : b.s.p) - str);
        if (why)
            *why = b.why ? b.why : "invalid JSON";
    }
    return v;
}

/* The value at *p within [.., end) of a validated container: no checks,
 * only the structure (the document was validated by fh_json_scan). */
static void next_value(const char **p, const char *end, fh_jval *v)
{
    scan s = {.p = *p, .end = end};
    skip_ws(&s);
    const char *q = s.p;
    v->start = q;
    switch (*q) {
    case '"':
        v->type = FH_J_STRING;
        q = skip_string_fast(q, end);
        break;
    case '{':
    case '[': {
        v->type = *q == '{' ? FH_J_OBJECT : FH_J_ARRAY;
        int depth = 0;
        while (q < end) {
            char c = *q;
            if (c == '"') {
                q = skip_string_fast(q, end);
                continue;
            }
            q++;
            if (c == '{' || c == '[')
                depth++;
            else if ((c == '}' || c == ']') && --depth == 0)
                break;
        }
        break;
    }
    default:
        v->type = *q == 't'   ? FH_J_TRUE
                  : *q == 'f' ? FH_J_FALSE
                  : *q == 'n' ? FH_J_NULL
                              : FH_J_NUMBER;
        while (q < end && *q != ',' && *q != '}' && *q != ']' && *q != ' ' && *q != '\n' &&
               *q != '\r' && *q != '\t')
            q++;
    }
    v->end = q;
    *p = q;
}

/* After a member or element: past the ',' (true) or at the close (false). */
static bool after_item(const char **p, const char *end)
{
    scan s = {.p = *p, .end = end};
    skip_ws(&s);
    *p = s.p;
    if (s.p < end && *s.p == ',') {
        (*p)++;
        return true;
    }
    return false;
}

bool fh_jobj_next(const fh_jval *obj, size_t *pos, fh_jval *key, fh_jval *val)
{
    if (obj->type != FH_J_OBJECT)
        return false;
    const char *end = obj->end - 1; /* the closing brace */
    const char *p = obj->start + (*pos ? *pos : 1);
    scan s = {.p = p, .end = end};
    skip_ws(&s);
    if (s.p >= end || *s.p != '"')
        return false;
    key->start = s.p;
    s.p = skip_string_fast(s.p, end);
    key->end = s.p;
    key->type = FH_J_STRING;
    skip_ws(&s);
    s.p++; /* ':' */
    p = s.p;
    next_value(&p, end, val);
    if (!after_item(&p, end))
        p = end;
    *pos = (size_t)(p - obj->start);
    return true;
}

bool fh_jobj_get(const fh_jval *obj, const char *name, fh_jval *val)
{
    size_t pos = 0;
    fh_jval k, v;
    while (fh_jobj_next(obj, &pos, &k, &v)) {
        if (fh_jstr_eq(&k, name)) {
            *val = v;
            return true;
        }
    }
    return false;
}

bool fh_jarr_get(const fh_jval *arr, size_t i, fh_jval *val)
{
    if (arr->type != FH_J_ARRAY)
        return false;
    const char *end = arr->end - 1, *p = arr->start + 1;
    scan s = {.p = p, .end = end};
    skip_ws(&s);
    if (s.p >= end)
        return false;
    p = s.p;
    for (size_t k = 0;; k++) {
        next_value(&p, end, val);
        if (k == i)
            return true;
        if (!after_item(&p, end))
            return false;
    }
}

/* Decodes the string token into out (at least its length), returns the
 * decoded length. The token was validated. */
static size_t unescape(const fh_jval *str, char *out)
{
    const char *p = str->start + 1, *end = str->end - 1;
    size_t n = 0;
    while (p < end) {
        if (*p != '\\') {
            const char *bs = memchr(p, '\\', (size_t)(end - p));
            size_t run = (size_t)((bs ? bs : end) - p);
            memcpy(out + n, p, run);
            n += run;
            p += run;
            continue;
        }
        char e = p[1];
        p += 2;
        switch (e) {
        case 'b':
            out[n++] = '\b';
            break;
        case 'f':
            out[n++] = '\f';
            break;
        case 'n':
            out[n++] = '\n';
            break;
        case 'r':
            out[n++] = '\r';
            break;
        case 't':
            out[n++] = '\t';
            break;
        case 'u': {
            unsigned cp = (unsigned)hex4(p);
            p += 4;
            if (cp >= 0xd800 && cp <= 0xdbff) {
                unsigned lo = (unsigned)hex4(p + 2);
                p += 6;
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            if (cp < 0x80) {
                out[n++] = (char)cp;
            } else if (cp < 0x800) {
                out[n++] = (char)(0xc0 | (cp >> 6));
                out[n++] = (char)(0x80 | (cp & 0x3f));
            } else if (cp < 0x10000) {
                out[n++] = (char)(0xe0 | (cp >> 12));
                out[n++] = (char)(0x80 | ((cp >> 6) & 0x3f));
                out[n++] = (char)(0x80 | (cp & 0x3f));
            } else {
                out[n++] = (char)(0xf0 | (cp >> 18));
                out[n++] = (char)(0x80 | ((cp >> 12) & 0x3f));
                out[n++] = (char)(0x80 | ((cp >> 6) & 0x3f));
                out[n++] = (char)(0x80 | (cp & 0x3f));
            }
            break;
        }
        default: /* '"', '\\', '/' */
            out[n++] = e;
        }
    }
    return n;
}

char *fh_jstr_unescape(const fh_jval *str, size_t *len)
{
    if (str->type != FH_J_STRING || str->end - str->start < 2)
        return NULL;
    /* Decoding never grows the text: each escape is longer than its bytes. */
    char *out = malloc((size_t)(str->end - str->start));
    if (!out)
        return NULL;
    size_t n = unescape(str, out);
    out[n] = '\0';
    if (len)
        *len = n;
    return out;
}

bool fh_jstr_eq(const fh_jval *str, const char *name)
{
    size_t raw = (size_t)(str->end - str->start) - 2, want = strlen(name);
    const char *body = str->start + 1;
    if (!memchr(body, '\\', raw))
        return raw == want && memcmp(body, name, want) == 0;
    if (raw < want)
        return false; /* escapes only shorten */
    char small[256];
    char *buf = raw < sizeof(small) ? small : malloc(raw + 1);
    if (!buf)
        return false;
    size_t n = unescape(str, buf);
    bool eq = n == want && memcmp(buf, name, want) == 0;
    if (buf != small)
        free(buf);
    return eq;
}

bool fh_jnum_long(const fh_jval *num, long *out)
{
    if (num->type != FH_J_NUMBER)
        return false;
    const char *p = num->start;
    bool neg = *p == '-';
    if (neg)
        p++;
    long v = 0;
    for (; p < num->end; p++) {
        if (*p < '0' || *p > '9')
            return false; /* a fraction or an exponent */
        if (v > (LONG_MAX - (*p - '0')) / 10)
            return false;
        v = v * 10 + (*p - '0');
    }
    *out = neg ? -v : v;
    return true;
}
