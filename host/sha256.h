/*
 * sha256.h - SHA-256 (FIPS 180-4), for client keys (auth.keys_file holds
 * their digests, never the keys) and plugin files (the admin API shows the
 * digest of the bytes mapped). Stateless; any thread.
 */
#ifndef FH_SHA256_H
#define FH_SHA256_H

#include <stddef.h>
#include <stdint.h>

void fh_sha256(const void *data, size_t len, unsigned char out[32]);

/* The same over data given in pieces. */
typedef struct fh_sha256_ctx {
    uint32_t h[8];
    uint64_t len;
    unsigned char buf[64];
    size_t fill;
} fh_sha256_ctx;

void fh_sha256_init(fh_sha256_ctx *c);
void fh_sha256_update(fh_sha256_ctx *c, const void *data, size_t len);
void fh_sha256_final(fh_sha256_ctx *c, unsigned char out[32]);
/* 64 lowercase hex digits and a NUL. */
void fh_sha256_hex(const unsigned char digest[32], char out[65]);

#endif
