/*
 * test_sha256.c - host/sha256.c: the FIPS 180-4 vectors, the incremental
 * API against the one-shot digest for every piece size 1..130 over a buffer
 * that crosses many block boundaries, and the hex form. Single-threaded.
 */
#include "sha256.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <setjmp.h>
#include <cmocka.h>

static void hex_of(const void *data, size_t len, char out[65])
{
    unsigned char d[32];
    fh_sha256(data, len, d);
    fh_sha256_hex(d, out);
}

static void test_known_vectors(void **state)
{
    (void)state;
    char hex[65];
    hex_of("", 0, hex);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    hex_of("abc", 3, hex);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    /* Two blocks: the padding spills into a second one. */
    const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    hex_of(two, strlen(two), hex);
    assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    /* One million 'a's. */
    size_t n = 1000000;
    char *a = malloc(n);
    assert_non_null(a);
    memset(a, 'a', n);
    hex_of(a, n, hex);
    assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    free(a);
}

/* Lengths around the 55/56/64-byte padding edges, one-shot vs incremental
 * fed a byte at a time (the padding code is the usual place for slips). */
static void test_padding_edges(void **state)
{
    (void)state;
    unsigned char buf[200];
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (unsigned char)(i * 7 + 3);
    const size_t lens[] = {0, 1, 54, 55, 56, 57, 63, 64, 65, 119, 120, 127, 128, 129, 200};
    for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++) {
        unsigned char one[32], inc[32];
        fh_sha256(buf, lens[k], one);
        fh_sha256_ctx c;
        fh_sha256_init(&c);
        for (size_t i = 0; i < lens[k]; i++)
            fh_sha256_update(&c, buf + i, 1);
        fh_sha256_final(&c, inc);
        if (memcmp(one, inc, 32) != 0)
            fail_msg("length %zu: byte-at-a-time digest differs from the one-shot", lens[k]);
    }
    /* 56 'a's is a known vector that needs a second block for the length. */
    char hex[65];
    memset(buf, 'a', 56);
    hex_of(buf, 56, hex);
    assert_string_equal(hex, "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a");
}

static void test_incremental_every_piece_size(void **state)
{
    (void)state;
    unsigned char buf[1000];
    uint32_t x = 2463534242u; /* xorshift: reproducible, not periodic in 64 */
    for (size_t i = 0; i < sizeof(buf); i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        buf[i] = (unsigned char)x;
    }
    unsigned char want[32];
    fh_sha256(buf, sizeof(buf), want);
    for (size_t piece = 1; piece <= 130; piece++) {
        fh_sha256_ctx c;
        fh_sha256_init(&c);
        for (size_t off = 0; off < sizeof(buf); off += piece) {
            size_t n = sizeof(buf) - off < piece ? sizeof(buf) - off : piece;
            fh_sha256_update(&c, buf + off, n);
        }
        fh_sha256_update(&c, buf, 0); /* an empty update changes nothing */
        unsigned char got[32];
        fh_sha256_final(&c, got);
        if (memcmp(want, got, 32) != 0)
            fail_msg("pieces of %zu bytes: digest differs from the one-shot", piece);
    }
    /* Uneven pieces: 1, 2, 3, ... bytes. */
    fh_sha256_ctx c;
    fh_sha256_init(&c);
    size_t off = 0;
    for (size_t piece = 1; off < sizeof(buf); piece++) {
        size_t n = sizeof(buf) - off < piece ? sizeof(buf) - off : piece;
        fh_sha256_update(&c, buf + off, n);
        off += n;
    }
    unsigned char got[32];
    fh_sha256_final(&c, got);
    assert_memory_equal(want, got, 32);
}

static void test_hex(void **state)
{
    (void)state;
    unsigned char d[32];
    for (int i = 0; i < 32; i++)
        d[i] = (unsigned char)(i * 8 + i / 4); /* 00 08 10 ... f8 plus low bits */
    char out[66];
    memset(out, 'X', sizeof(out));
    fh_sha256_hex(d, out);
    assert_int_equal(out[64], '\0');
    assert_int_equal(out[65], 'X'); /* nothing past the NUL */
    assert_int_equal(strlen(out), 64);
    for (int i = 0; i < 32; i++) {
        char want[3];
        snprintf(want, sizeof(want), "%02x", d[i]);
        assert_memory_equal(out + 2 * i, want, 2);
    }
    memset(d, 0xff, sizeof(d));
    fh_sha256_hex(d, out);
    assert_string_equal(out, "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff");
    memset(d, 0, sizeof(d));
    fh_sha256_hex(d, out);
    assert_string_equal(out, "0000000000000000000000000000000000000000000000000000000000000000");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_vectors),
        cmocka_unit_test(test_padding_edges),
        cmocka_unit_test(test_incremental_every_piece_size),
        cmocka_unit_test(test_hex),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
