/* auth.c - see auth.h. */
#include "auth.h"

#include "sha256.h"

#include <ctype.h>
#include <stdbool.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define NAME_MAX_LEN 64

typedef struct key_entry {
    char name[NAME_MAX_LEN + 1];
    unsigned char digest[32];
} key_entry;

struct fh_keys {
    key_entry *items;
    size_t count;
};

static int hexval(int c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

static bool name_ok(const char *s, size_t n)
{
    if (n == 0 || n > NAME_MAX_LEN)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && !strchr("_.-", s[i]))
            return false;
    return true;
}

fh_keys *fh_keys_load(const char *path, fh_diag *diag)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fh_diag_add(diag, "%s: cannot read auth.keys_file: %s", path, strerror(errno));
        return NULL;
    }
    fh_keys *k = calloc(1, sizeof(*k));
    size_t cap = 0, problems = diag->count;
    char line[512];
    for (int no = 1; k && fgets(line, sizeof(line), f); no++) {
        char *hash = strchr(line, '#');
        if (hash)
            *hash = '\0';
        char *p = line;
        while (isspace((unsigned char)*p))
            p++;
        if (!*p)
            continue;
        char *name = p;
        while (*p && !isspace((unsigned char)*p))
            p++;
        size_t nlen = (size_t)(p - name);
        while (isspace((unsigned char)*p))
            p++;
        char *hex = p;
        while (*p && !isspace((unsigned char)*p))
            p++;
        size_t hlen = (size_t)(p - hex);
        while (isspace((unsigned char)*p))
            p++;
        key_entry e;
        memset(&e, 0, sizeof(e));
        bool ok = name_ok(name, nlen) && hlen == 64 && !*p;
        for (size_t i = 0; ok && i < 32; i++) {
            int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
            ok = hi >= 0 && lo >= 0;
            e.digest[i] = (unsigned char)(hi << 4 | lo);
        }
        if (!ok) {
            fh_diag_add(diag,
                        "%s:%d: expected `NAME SHA256-HEX` (a name of [A-Za-z0-9_.-], at most 64; "
                        "the key's digest: printf %%s \"$KEY\" | sha256sum)",
                        path, no);
            continue;
        }
        memcpy(e.name, name, nlen);
        bool dup = false;
        for (size_t i = 0; i < k->count; i++)
            dup = dup || strcmp(k->items[i].name, e.name) == 0;
        if (dup) {
            fh_diag_add(diag, "%s:%d: client '%s' is listed twice", path, no, e.name);
            continue;
        }
        if (k->count == cap) {
            cap = cap ? 2 * cap : 8;
            key_entry *g = realloc(k->items, cap * sizeof(*g));
            if (!g) {
                fh_keys_free(k);
                k = NULL;
                break;
            }
            k->items = g;
        }
        k->items[k->count++] = e;
    }
    fclose(f);
    if (!k) {
        fh_diag_add(diag, "%s: out of memory", path);
        return NULL;
    }
    if (diag->count == problems && k->count == 0)
        fh_diag_add(diag, "%s: no client key in auth.keys_file (every request would be refused)",
                    path);
    if (diag->count != problems) {
        fh_keys_free(k);
        return NULL;
    }
    return k;
}

void fh_keys_free(fh_keys *k)
{
    if (!k)
        return;
    free(k->items);
    free(k);
}

size_t fh_keys_count(const fh_keys *k)
{
    return k ? k->count : 0;
}

const char *fh_keys_check(const fh_keys *k, const char *authorization)
{
    if (!k || !authorization || strncasecmp(authorization, "Bearer ", 7) != 0)
        return NULL;
    const char *key = authorization + 7;
    while (*key == ' ')
        key++;
    unsigned char d[32];
    fh_sha256(key, strlen(key), d);
    const char *found = NULL;
    for (size_t i = 0; i < k->count; i++) {
        unsigned diff = 0;
        for (size_t j = 0; j < 32; j++)
            diff |= (unsigned)(d[j] ^ k->items[i].digest[j]);
        /* No early exit: every entry costs the same, matched or not. */
        if (diff == 0 && !found)
            found = k->items[i].name;
    }
    return found;
}
