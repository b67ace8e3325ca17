/*
 * iplimit.h - open connections per client address (limits.max_connections_per_ip).
 *
 * Owns: a small hash table of addresses with their count of open
 * connections. Any thread: one mutex, held for a lookup (taken once per
 * accepted and once per closed connection, never per request).
 */
#ifndef FH_IPLIMIT_H
#define FH_IPLIMIT_H

#include <stdbool.h>
#include <sys/socket.h>

typedef struct fh_iplimit fh_iplimit;

fh_iplimit *fh_iplimit_new(void);
void fh_iplimit_free(fh_iplimit *l);
/* Counts one more connection from addr unless it has `max` already
 * (max 0: no limit, always counted). false: refused, nothing counted. */
bool fh_iplimit_take(fh_iplimit *l, const struct sockaddr *addr, unsigned max);
/* The counterpart of a successful take. */
void fh_iplimit_give(fh_iplimit *l, const struct sockaddr *addr);

#endif
