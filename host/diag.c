/* diag.c - see diag.h. */
#include "diag.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void diag_push(fh_diag *d, char *msg)
{
    if (!msg)
        return;
    if (d->count == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        char **items = realloc(d->items, cap * sizeof(*items));
        if (!items) {
            free(msg);
            return;
        }
        d->items = items;
        d->cap = cap;
    }
    d->items[d->count++] = msg;
}

static char *vformat(const char *fmt, va_list ap)
{
    char *s = NULL;
    if (vasprintf(&s, fmt, ap) < 0)
        return NULL;
    return s;
}

void fh_diag_add(fh_diag *d, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    diag_push(d, vformat(fmt, ap));
    va_end(ap);
}

void fh_diag_at(fh_diag *d, const char *file, size_t line, size_t col, const char *key,
                const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *what = vformat(fmt, ap);
    va_end(ap);
    if (!what)
        return;
    char *msg = NULL;
    int n;
    if (line > 0 && key && *key)
        n = asprintf(&msg, "%s:%zu:%zu: %s: %s", file, line, col, key, what);
    else if (line > 0)
        n = asprintf(&msg, "%s:%zu:%zu: %s", file, line, col, what);
    else if (key && *key)
        n = asprintf(&msg, "%s: %s: %s", file, key, what);
    else
        n = asprintf(&msg, "%s: %s", file, what);
    free(what);
    if (n < 0)
        return;
    diag_push(d, msg);
}

void fh_diag_clear(fh_diag *d)
{
    for (size_t i = 0; i < d->count; i++)
        free(d->items[i]);
    free(d->items);
    memset(d, 0, sizeof(*d));
}
