/* iplimit.c - see iplimit.h. Keys are the 16 bytes of an IPv6 address, or
 * an IPv4 address mapped into one; entries leave when their count is 0. */
#include "iplimit.h"

#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BUCKETS 4096u

typedef struct entry {
    unsigned char key[16];
    unsigned count;
    struct entry *next;
} entry;

struct fh_iplimit {
    pthread_mutex_t mu;
    entry *b[BUCKETS];
};

fh_iplimit *fh_iplimit_new(void)
{
    fh_iplimit *l = calloc(1, sizeof(*l));
    if (l)
        pthread_mutex_init(&l->mu, NULL);
    return l;
}

void fh_iplimit_free(fh_iplimit *l)
{
    if (!l)
        return;
    for (unsigned i = 0; i < BUCKETS; i++)
        while (l->b[i]) {
            entry *e = l->b[i];
            l->b[i] = e->next;
            free(e);
        }
    pthread_mutex_destroy(&l->mu);
    free(l);
}

static void key_of(const struct sockaddr *a, unsigned char key[16])
{
    memset(key, 0, 16);
    if (a->sa_family == AF_INET6) {
        memcpy(key, &((const struct sockaddr_in6 *)a)->sin6_addr, 16);
    } else if (a->sa_family == AF_INET) {
        key[10] = key[11] = 0xff;
        memcpy(key + 12, &((const struct sockaddr_in *)a)->sin_addr, 4);
    }
}

static unsigned hash(const unsigned char key[16])
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (int i = 0; i < 16; i++)
        h = (h ^ key[i]) * 16777619u;
    return h % BUCKETS;
}

static entry **find(fh_iplimit *l, const unsigned char key[16])
{
    entry **p = &l->b[hash(key)];
    while (*p && memcmp((*p)->key, key, 16) != 0)
        p = &(*p)->next;
    return p;
}

bool fh_iplimit_take(fh_iplimit *l, const struct sockaddr *addr, unsigned max)
{
    unsigned char key[16];
    key_of(addr, key);
    bool ok = true;
    pthread_mutex_lock(&l->mu);
    entry **p = find(l, key);
    if (*p) {
        if (max && (*p)->count >= max)
            ok = false;
        else
            (*p)->count++;
    } else {
        entry *e = malloc(sizeof(*e));
        if (e) {
            memcpy(e->key, key, 16);
            e->count = 1;
            e->next = NULL;
            *p = e;
        } else {
            ok = false;
        }
    }
    pthread_mutex_unlock(&l->mu);
    return ok;
}

void fh_iplimit_give(fh_iplimit *l, const struct sockaddr *addr)
{
    unsigned char key[16];
    key_of(addr, key);
    pthread_mutex_lock(&l->mu);
    entry **p = find(l, key);
    if (*p && --(*p)->count == 0) {
        entry *e = *p;
        *p = e->next;
        free(e);
    }
    pthread_mutex_unlock(&l->mu);
}
