/*
 * strbuf.h - a growable NUL-terminated byte string.
 *
 * On allocation failure the buffer is poisoned (data freed, `failed` set)
 * and later appends do nothing, so callers check once at the end. The
 * owner frees `data`. Not shared between threads.
 */
#ifndef STUB_STRBUF_H
#define STUB_STRBUF_H

#include <stddef.h>

struct strbuf {
    char *data;
    size_t len, cap;
    int failed;
};

void sb_add(struct strbuf *b, const char *s, size_t n);
void sb_puts(struct strbuf *b, const char *s);

#endif
