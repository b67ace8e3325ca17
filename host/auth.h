/*
 * auth.h - client keys (auth.keys_file): who may use the gateway.
 *
 * Owns: the loaded list of client names and the SHA-256 digests of their
 * keys; the file holds no secrets. Immutable once loaded (a reload loads a
 * new list with the new snapshot); any thread may check against it.
 *
 * File format, one client per line: NAME SHA256-HEX, `#` starts a comment.
 *   printf %s "$KEY" | sha256sum   # the digest of a key
 */
#ifndef FH_AUTH_H
#define FH_AUTH_H

#include "diag.h"

#include <stddef.h>

typedef struct fh_keys fh_keys;

/* NULL with problems (FILE:LINE: ...) in diag when the file cannot be read
 * or has a bad line, a duplicate name, or no key at all. */
fh_keys *fh_keys_load(const char *path, fh_diag *diag);
void fh_keys_free(fh_keys *k);
size_t fh_keys_count(const fh_keys *k);
/* The name of the client whose key an Authorization header value
 * ("Bearer KEY") carries, or NULL. Every digest is compared in full, in
 * constant time, whichever matches. */
const char *fh_keys_check(const fh_keys *k, const char *authorization);

#endif
