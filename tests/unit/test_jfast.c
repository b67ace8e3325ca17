/*
 * test_jfast.c - the request path's own JSON code (host/jfast.c) against
 * jansson: the serialiser must write exactly what json_dumps writes, the
 * scanner must accept exactly what json_loadb accepts (hostile inputs
 * included), and the readers must find what jansson finds.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "jfast.h"

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void assert_dump_like_jansson(json_t *v)
{
    char *want = json_dumps(v, JSON_COMPACT | JSON_REAL_PRECISION(15) | JSON_ENCODE_ANY);
    size_t len = 0;
    char *got = fh_json_dump(v, &len);
    assert_non_null(want);
    assert_non_null(got);
    if (strcmp(want, got) != 0)
        print_error("jansson: %s\njfast:   %s\n", want, got);
    assert_string_equal(got, want);
    assert_int_equal(len, strlen(want));
    free(want);
    free(got);
}

static void dump_reals(void **state)
{
    (void)state;
    const double values[] = {
        0.0,        -0.0,     0.22,   0.75,        0.4,       1.0,     -1.5,
        1e-7,       1e20,     1e21,   123456789.0, 0.1 + 0.2, 1.0 / 3, 99999999.999999,
        12345678.5, 2.5e-300, -7e300, 0.000001,    0.0000015, 5e-324};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        json_t *r = json_real(values[i]);
        assert_dump_like_jansson(r);
        json_decref(r);
    }
    /* Many random six-decimal and arbitrary values. */
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < 20000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        double v = (double)(int64_t)(x % 2000000000000ull) / 1e6;
        if (i % 3 == 0)
            v = (double)(x >> 11) / (double)(1ull << 53) * pow(10, (double)(x % 40) - 20);
        if (i % 7 == 0)
            v = -v;
        json_t *r = json_real(v);
        assert_dump_like_jansson(r);
        json_decref(r);
    }
}

static void dump_strings(void **state)
{
    (void)state;
    const char *strings[] = {"",
                             "plain",
                             "quote \" backslash \\ slash /",
                             "controls \b\f\n\r\t\x01\x1f end",
                             "utf-8: caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
                             "exactly8",
                             "sixteen bytes!!!",
                             "long run of plain text before an escape at the very end\n",
                             "\x7f del stays"};
    for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++) {
        json_t *s = json_string(strings[i]);
        assert_non_null(s);
        assert_dump_like_jansson(s);
        json_decref(s);
    }
}

static void dump_documents(void **state)
{
    (void)state;
    const char *docs[] = {
        "{}",
        "[]",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"Rules:\\n1. "
        "a\\t\\\"b\\\"\"},"
        "{\"role\":\"user\",\"content\":\"x\"}],\"temperature\":0.22,\"top_p\":0.75,\"n\":2,"
        "\"seed\":-9223372036854775807,\"stream\":false,\"tools\":null,\"x\":[1,2.5,true,{}]}",
        "{\"nested\":{\"a\":[[[]]],\"b\":{\"c\":{}}},\"\\u00e9\":\"\\ud83d\\ude00\"}",
    };
    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
        json_t *v = json_loads(docs[i], 0, NULL);
        assert_non_null(v);
        assert_dump_like_jansson(v);
        json_decref(v);
    }
}

/* Inputs both must refuse or both accept (json_loadb with JSON_DECODE_ANY
 * accepts a scalar document, as the scanner does). */
static void scan_like_jansson(void **state)
{
    (void)state;
    const char *inputs[] = {
        "{}",
        "[]",
        "{\"a\":1}",
        " { \"a\" : [ 1 , 2 ] } ",
        "\"s\"",
        "0",
        "-0",
        "-0.5e-3",
        "1E+2",
        "true",
        "false",
        "null",
        "{\"a\":\"\\u00e9\\ud83d\\ude00\"}",
        "[1,2,3]",
        /* refused */
        "",
        " ",
        "{",
        "}",
        "[",
        "{\"a\"}",
        "{\"a\":}",
        "{\"a\":1,}",
        "[1,]",
        "[,1]",
        "{,}",
        "{\"a\":1 \"b\":2}",
        "01",
        "1.",
        ".5",
        "-",
        "+1",
        "1e",
        "1e+",
        "0x10",
        "NaN",
        "Infinity",
        "tru",
        "nul",
        "truex",
        "{\"a\":1}x",
        "[1] [2]",
        "\"unterminated",
        "\"bad \\x escape\"",
        "\"\\u12\"",
        "\"\\u0000\"",
        "\"\\udc00\"",
        "\"\\ud800\"",
        "\"\\ud800\\u0041\"",
        "\"raw \x01 control\"",
        "\"\xff\"",
        "\"\xc0\xaf\"",
        "\"\xed\xa0\x80\"",
        "\"\xf4\x90\x80\x80\"",
        "\"\xe2\x82\"",
        "{'a':1}",
        "[1,2",
        "{\"a\":[1,{\"b\":2]}}",
        "/* c */ {}",
    };
    for (size_t i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
        size_t n = strlen(inputs[i]);
        json_error_t e;
        json_t *j = json_loadb(inputs[i], n, JSON_DECODE_ANY, &e);
        fh_jval top;
        bool ok = fh_json_scan(inputs[i], n, &top, NULL);
        if (ok != (j != NULL))
            print_error("input %zu '%s': jansson %s, jfast %s\n", i, inputs[i],
                        j ? "accepts" : "refuses", ok ? "accepts" : "refuses");
        assert_int_equal(ok, j != NULL);
        json_decref(j);
    }
    /* A NUL after the document is trailing garbage for both. */
    assert_null(json_loadb("{\"a\":1}", 8, 0, NULL));
    assert_false(fh_json_scan("{\"a\":1}", 8, NULL, NULL));
    /* Deep nesting: refused past the limit, never a stack overflow. */
    size_t deep = 100000;
    char *d = malloc(2 * deep);
    memset(d, '[', deep);
    memset(d + deep, ']', deep);
    assert_false(fh_json_scan(d, 2 * deep, NULL, NULL));
    free(d);
}

/* The parser builds what json_loadb builds, and refuses what it refuses. */
/* Numbers no C type holds are the caller's business (a seed of 2^64-1, a
 * vendor field of 1e999): jansson refuses them, jfast keeps them and writes
 * them back exactly as they came (issue 9: never a 400 for a number the
 * host does not read). */
static void big_numbers_kept_as_written(void **state)
{
    (void)state;
    const char *inputs[] = {
        "{\"seed\":18446744073709551615}",
        "[1e999,-1e999,-99999999999999999999999]",
        "{\"a\":{\"b\":[123456789012345678901234567890.5e400]},\"n\":1}",
    };
    for (size_t i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
        size_t n = strlen(inputs[i]), at = 0;
        const char *why = NULL;
        json_t *got = fh_json_parse(inputs[i], n, &at, &why);
        assert_non_null(got);
        size_t len = 0;
        char *back = fh_json_dump(got, &len);
        assert_non_null(back);
        assert_string_equal(back, inputs[i]);
        assert_int_equal(len, n);
        free(back);
        json_decref(got);
    }
}

static void parse_like_jansson(void **state)
{
    (void)state;
    const char *inputs[] = {
        "{}",
        "[]",
        "{\"a\":1,\"a\":2}",
        "[1,-2,3.5,-0.0,1e3,1E-2,true,false,null,\"s\"]",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"caf\u00e9 \\n "
        "\\\"q\\\"\"}],"
        "\"temperature\":0.2,\"seed\":9223372036854775807,\"n\":-9223372036854775808}",
        "{\"\\ud83d\\ude00\":{\"x\":[[],{}]}}",
        "[0.12345678901234567890123456789012345678901234567890123456789012345678901234567890]",
        /* refused */
        "",
        "1",
        "\"s\"",
        "{\"a\":1}x",
        "{\"a\":\"\\u0000\"}",
        "[\"\xff\"]",
        "{\"a\" 1}",
        "[1,]",
        "{\"\\ud800\":1}",
    };
    for (size_t i = 0; i < sizeof(inputs) / sizeof(inputs[0]); i++) {
        size_t n = strlen(inputs[i]), at = 0;
        const char *why = NULL;
        json_t *want = json_loadb(inputs[i], n, 0, NULL);
        json_t *got = fh_json_parse(inputs[i], n, &at, &why);
        if ((want == NULL) != (got == NULL))
            print_error("input %zu '%s': jansson %s, jfast %s (%s)\n", i, inputs[i],
                        want ? "accepts" : "refuses", got ? "accepts" : "refuses", why ? why : "");
        assert_int_equal(want == NULL, got == NULL);
        if (want) {
            assert_true(json_equal(want, got));
            char *a = json_dumps(want, JSON_COMPACT), *b = json_dumps(got, JSON_COMPACT);
            assert_string_equal(a, b); /* the same key order too */
            free(a);
            free(b);
        } else {
            assert_non_null(why);
            assert_true(at <= n);
        }
        json_decref(want);
        json_decref(got);
    }
    size_t deep = 100000, at = 0;
    char *d = malloc(2 * deep);
    memset(d, '[', deep);
    memset(d + deep, ']', deep);
    assert_null(fh_json_parse(d, 2 * deep, &at, NULL));
    free(d);
}

static void read_answer_fields(void **state)
{
    (void)state;
    const char *answer =
        "{\"id\":\"x\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
        "\"content\":\"Line 1\\nRoll back \\\"now\\\" \\u00e9\"}}],"
        "\"usage\":{\"prompt_tokens\":120,\"completion_tokens\":60,\"total_tokens\":180},"
        "\"fus\\u0069on\":1}";
    fh_jval top, v, c0, c1, msg, content;
    assert_true(fh_json_scan(answer, strlen(answer), &top, NULL));
    assert_int_equal(top.type, FH_J_OBJECT);
    assert_true(fh_jobj_get(&top, "choices", &v));
    assert_true(fh_jarr_get(&v, 0, &c0));
    assert_false(fh_jarr_get(&v, 1, &c1)); /* one choice only */
    assert_true(fh_jobj_get(&c0, "message", &msg));
    assert_true(fh_jobj_get(&msg, "content", &content));
    size_t len;
    char *text = fh_jstr_unescape(&content, &len);
    assert_string_equal(text, "Line 1\nRoll back \"now\" \xc3\xa9");
    assert_int_equal(len, strlen(text));
    free(text);
    assert_true(fh_jobj_get(&top, "fusion", &v)); /* an escaped key is still the key */
    fh_jval usage, n;
    long total = 0;
    assert_true(fh_jobj_get(&top, "usage", &usage));
    assert_true(fh_jobj_get(&usage, "total_tokens", &n));
    assert_true(fh_jnum_long(&n, &total));
    assert_int_equal(total, 180);
    assert_false(fh_jobj_get(&top, "missing", &v));
}

static void scan_paths(void **state)
{
    (void)state;
    const char *doc =
        "{\"usage\":{\"total_tokens\":1},\"choices\":[{\"message\":{\"content\":\"a\"}},"
        "{\"message\":{\"content\":\"b\"}}],\"fus\\u0069on\":[],\"usage\":{\"total_tokens\":7}}";
    const char *paths[] = {"usage", "choices.1.message.content", "fusion", "missing",
                           "choices.2.message.content"};
    fh_jval top, found[5];
    assert_true(fh_json_scan_paths(doc, strlen(doc), &top, paths, found, 5));
    assert_int_equal(top.type, FH_J_OBJECT);
    fh_jval n;
    long v = 0;
    assert_int_equal(found[0].type, FH_J_OBJECT); /* the repeated key: the last, as jansson */
    assert_true(fh_jobj_get(&found[0], "total_tokens", &n) && fh_jnum_long(&n, &v));
    assert_int_equal(v, 7);
    char *text = fh_jstr_unescape(&found[1], NULL);
    assert_string_equal(text, "b");
    free(text);
    assert_int_equal(found[2].type, FH_J_ARRAY); /* escaped key */
    assert_int_equal(found[3].type, FH_J_NONE);
    assert_int_equal(found[4].type, FH_J_NONE);
    assert_false(fh_json_scan_paths("{\"a\":", 5, &top, paths, found, 1));
}

/* Long strings built through the per-thread cache dump like any other,
 * invalid UTF-8 is refused, and the cache hands out the same node. */
static void shared_strings(void **state)
{
    (void)state;
    char text[600];
    for (size_t i = 0; i < sizeof(text) - 1; i++)
        text[i] = "Roll back \"first\"\n\t"[i % 19];
    text[sizeof(text) - 1] = '\0';
    json_t *a = fh_json_string_shared(text, strlen(text));
    json_t *b = fh_json_string_shared(text, strlen(text));
    assert_non_null(a);
    assert_ptr_equal(a, b);
    json_t *doc =
        json_pack("{s:[{s:s,s:O}],s:O}", "messages", "role", "system", "content", a, "again", b);
    assert_dump_like_jansson(doc);
    json_decref(doc);
    json_decref(a);
    json_decref(b);
    char bad[300];
    memset(bad, 'x', sizeof(bad));
    bad[100] = (char)0xff;
    assert_null(fh_json_string_shared(bad, sizeof(bad)));
    assert_null(fh_json_string_shared("\xc0\xaf", 2));
}

static void utf8(void **state)
{
    (void)state;
    assert_true(fh_utf8_valid("plain ascii text, long enough for the fast path", 47));
    assert_true(fh_utf8_valid("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80", 14));
    assert_false(fh_utf8_valid("bad \xff byte after eight", 23));
    assert_false(fh_utf8_valid("\xc0\xaf", 2));         /* overlong */
    assert_false(fh_utf8_valid("\xed\xa0\x80", 3));     /* surrogate */
    assert_false(fh_utf8_valid("\xf4\x90\x80\x80", 4)); /* past U+10FFFF */
    assert_false(fh_utf8_valid("truncated \xe2\x82", 12));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(dump_reals),         cmocka_unit_test(dump_strings),
        cmocka_unit_test(dump_documents),     cmocka_unit_test(scan_like_jansson),
        cmocka_unit_test(parse_like_jansson), cmocka_unit_test(big_numbers_kept_as_written),
        cmocka_unit_test(read_answer_fields), cmocka_unit_test(scan_paths),
        cmocka_unit_test(shared_strings),     cmocka_unit_test(utf8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
