/*
 * sha256.h - SHA-256 (FIPS 180-4), for client keys (auth.keys_file holds
 * their digests, never the keys). Stateless; any thread.
 */
#ifndef FH_SHA256_H
#define FH_SHA256_H

#include <stddef.h>
#include <stdint.h>

void fh_sha256(const void *data, size_t len, unsigned char out[32]);

#endif
