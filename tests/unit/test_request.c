/*
 * test_request.c - request parsing (request.c) and the host API table
 * (hostapi.c): hostile bodies, the fusion object, preserved caller fields,
 * accessors, rewrites and NULL-safety. Single-threaded.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "hostapi.h"
#include "log.h"
#include "request.h"

#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static fusion_request *parse(const char *body)
{
    char err[256];
    fusion_request *req = fh_request_parse(body, strlen(body), err, sizeof(err));
    if (!req)
        fail_msg("parse failed: %s", err);
    return req;
}

static const char *full_body =
    "{\"model\":\"m\",\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
    "{\"role\":\"user\",\"content\":\"refund twice?\"}],"
    "\"fusion\":{\"scenario_type\":\"refund_processing\",\"scenario_id\":"
    "\"refund_processing_duplicate\",\"confidence\":0.85,\"key\":\"cust-42\"},"
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"lookup\",\"parameters\":{}}}],"
    "\"response_format\":{\"type\":\"json_object\"},\"n\":2,\"seed\":7,\"user\":\"u1\","
    "\"stream\":false,\"temperature\":0.9,\"x_vendor\":{\"a\":[1,2,3]}}";

static void test_parse_valid_and_context(void **unused)
{
    fusion_request *req = parse(full_body);
    assert_string_equal(req->scenario_type, "refund_processing");
    assert_string_equal(req->scenario_id, "refund_processing_duplicate");
    assert_string_equal(req->key, "cust-42");
    assert_true(fabs(req->confidence - 0.85) < 1e-12);
    assert_null(json_object_get(req->body, "fusion"));

    /* Everything but `fusion` is exactly what the caller sent. */
    json_t *orig = json_loads(full_body, 0, NULL);
    assert_non_null(orig);
    json_object_del(orig, "fusion");
    assert_true(json_equal(orig, req->body));
    json_decref(orig);

    const fusion_host_api *h = fh_host_api();
    assert_string_equal(h->req_scenario_type(req), "refund_processing");
    assert_string_equal(h->req_scenario_id(req), "refund_processing_duplicate");
    assert_true(fabs(h->req_confidence(req) - 0.85) < 1e-12);
    fh_request_free(req);
}

static void test_parse_without_fusion(void **unused)
{
    fusion_request *req =
        parse("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"fusion\":null}");
    const fusion_host_api *h = fh_host_api();
    assert_string_equal(h->req_scenario_type(req), "");
    assert_string_equal(h->req_scenario_id(req), "");
    assert_true(h->req_confidence(req) < 0.0);
    assert_null(json_object_get(req->body, "fusion"));
    fh_request_free(req);
}

struct bad_case {
    const char *body;
    size_t len; /* 0: strlen */
    const char *expect;
};

static void test_parse_hostile(void **unused)
{
    char longid[400];
    memset(longid, 'a', sizeof(longid));
    longid[sizeof(longid) - 1] = '\0';
    char longbody[600];
    snprintf(longbody, sizeof(longbody),
             "{\"messages\":[{\"role\":\"user\"}],\"fusion\":{\"scenario_id\":\"%s\"}}", longid);

    const struct bad_case cases[] = {
        {"not json", 0, "invalid JSON"},
        {"", 0, "invalid JSON"},
        {"[]", 0, "must be a JSON object"},
        {"[{\"messages\":[]}]", 0, "must be a JSON object"},
        {"\"messages\"", 0, "invalid JSON"}, /* jansson refuses bare scalars */
        {"{}", 0, "messages is missing"},
        {"{\"messages\":{}}", 0, "non-empty array"},
        {"{\"messages\":[]}", 0, "non-empty array"},
        {"{\"messages\":\"hi\"}", 0, "non-empty array"},
        {"{\"messages\":[1]}", 0, "messages[0] must be an object"},
        {"{\"messages\":[{\"role\":\"user\"},[]]}", 0, "messages[1] must be an object"},
        {"{\"messages\":[{\"content\":\"x\"}]}", 0, "messages[0].role must be a string"},
        {"{\"messages\":[{\"role\":5}]}", 0, "messages[0].role must be a string"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":5}]}", 0, "messages[0].content"},
        {"{\"messages\":[{\"role\":\"user\"}],\"fusion\":\"x\"}", 0, "fusion must be an object"},
        {"{\"messages\":[{\"role\":\"user\"}],\"fusion\":[]}", 0, "fusion must be an object"},
        {"{\"messages\":[{\"role\":\"user\"}],\"fusion\":{\"scenario_type\":5}}", 0,
         "fusion.scenario_type must be a string"},
        {"{\"messages\":[{\"role\":\"user\"}],\"fusion\":{\"scenario_id\":true}}", 0,
         "fusion.scenario_id must be a string"},
        {"{\"messages\":[{\"role\":\"user\"}],\"fusion\":{\"key\":{}}}", 0,
         "fusion.key must be a string"},
        {"{\"messages\":[{\"role\":\"user\"}],\"fusion\":{\"confidence\":\"0.9\"}}", 0,
         "fusion.confidence must be a number"},
        {"{\"messages\":[{\"role\":\"user\"}],\"fusion\":{\"confidence\":1.5}}", 0, "[0,1]"},
        {"{\"messages\":[{\"role\":\"user\"}],\"fusion\":{\"confidence\":-0.1}}", 0, "[0,1]"},
        {"{\"messages\":[{\"role\":\"user\"}],\"fusion\":{\"scenario\":\"x\"}}", 0,
         "fusion.scenario is not a known field"},
        {longbody, 0, "longer than 256 bytes"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"\xff\xfe\"}]}", 0, "invalid JSON"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"\xc3\"}]}", 0, "invalid JSON"},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"a\\u0000b\"}]}", 0, "invalid JSON"},
        {"{\"messages\":[{\"role\":\"user\"}]} trailing", 0, "invalid JSON"},
        {"{\"messages\":[{\"role\":\"user\"}]", 0, "invalid JSON"},
        /* An embedded NUL inside the declared length. */
        {"{\"messages\":[{\"role\":\"user\"}]}\0{}", 33, "invalid JSON"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[256] = "unset";
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].body);
        fusion_request *req = fh_request_parse(cases[i].body, len, err, sizeof(err));
        if (req || !strstr(err, cases[i].expect))
            fail_msg("case %zu: expected an error with '%s', got %s '%s'", i, cases[i].expect,
                     req ? "a request" : "error", err);
    }

    /* Nesting far past jansson's depth limit fails cleanly. */
    size_t depth = 200000;
    char *deep = malloc(depth * 2 + 64);
    assert_non_null(deep);
    size_t n = (size_t)sprintf(deep, "{\"messages\":[{\"role\":\"user\"}],\"x\":");
    memset(deep + n, '[', depth);
    memset(deep + n + depth, ']', depth);
    deep[n + 2 * depth] = '}';
    char err[256] = "";
    assert_null(fh_request_parse(deep, n + 2 * depth + 1, err, sizeof(err)));
    assert_non_null(strstr(err, "invalid JSON"));
    free(deep);

    /* NULL body, NULL error buffer. */
    assert_null(fh_request_parse(NULL, 0, err, sizeof(err)));
    assert_null(fh_request_parse("[]", 2, NULL, 0));
}

static void test_messages_accessors(void **unused)
{
    fusion_request *req =
        parse("{\"messages\":[{\"role\":\"system\",\"content\":\"sys\"},"
              "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"part one\"},"
              "{\"type\":\"image_url\",\"image_url\":{\"url\":\"x\"}},"
              "{\"type\":\"text\",\"text\":\"part two\"}]},"
              "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[]}]}");
    const fusion_host_api *h = fh_host_api();
    assert_int_equal(h->req_message_count(req), 3);
    assert_string_equal(h->req_message_role(req, 0), "system");
    assert_string_equal(h->req_message_content(req, 0), "sys");
    const char *joined = h->req_message_content(req, 1);
    assert_string_equal(joined, "part one\npart two");
    /* Cached: the same pointer again. */
    assert_ptr_equal(h->req_message_content(req, 1), joined);
    assert_string_equal(h->req_message_content(req, 2), "");
    assert_string_equal(h->req_message_role(req, 3), "");
    assert_string_equal(h->req_message_content(req, 99), "");

    /* Prepend shifts indexes; the cached text follows its message. */
    assert_int_equal(h->req_prepend_system(req, "directive"), 0);
    assert_int_equal(h->req_message_count(req), 4);
    assert_string_equal(h->req_message_role(req, 0), "system");
    assert_string_equal(h->req_message_content(req, 0), "directive");
    assert_string_equal(h->req_message_content(req, 1), "sys");
    assert_ptr_equal(h->req_message_content(req, 2), joined);
    assert_string_equal(joined, "part one\npart two"); /* still valid */
    fh_request_free(req);
}

static void test_prepend_ahead_of_caller_system(void **unused)
{
    fusion_request *req = parse(full_body);
    const fusion_host_api *h = fh_host_api();
    assert_int_equal(h->req_prepend_system(req, "first"), 0);
    json_t *msgs = json_object_get(req->body, "messages");
    assert_int_equal(json_array_size(msgs), 3);
    json_t *m0 = json_array_get(msgs, 0);
    assert_string_equal(json_string_value(json_object_get(m0, "role")), "system");
    assert_string_equal(json_string_value(json_object_get(m0, "content")), "first");
    assert_string_equal(json_string_value(json_object_get(json_array_get(msgs, 1), "content")),
                        "be brief");
    /* Text that is not UTF-8 is refused; the request is unchanged. */
    assert_int_equal(h->req_prepend_system(req, "bad \xff"), -1);
    assert_int_equal(json_array_size(msgs), 3);
    assert_int_equal(h->req_prepend_system(req, NULL), -1);
    fh_request_free(req);
}

static void test_numbers(void **unused)
{
    fusion_request *req = parse(full_body);
    const fusion_host_api *h = fh_host_api();
    double v = 0;
    assert_int_equal(h->req_get_number(req, "temperature", &v), 1);
    assert_true(fabs(v - 0.9) < 1e-12);
    assert_int_equal(h->req_get_number(req, "n", &v), 1);
    assert_true(v == 2.0);
    assert_int_equal(h->req_get_number(req, "max_tokens", &v), 0);
    assert_int_equal(h->req_get_number(req, "user", &v), 0); /* a string */

    assert_int_equal(h->req_set_number(req, "temperature", 0.22), 0);
    assert_int_equal(h->req_get_number(req, "temperature", &v), 1);
    assert_true(fabs(v - 0.22) < 1e-12);
    assert_int_equal(h->req_set_number(req, "top_p", 0.4), 0);
    assert_int_equal(h->req_set_integer(req, "max_tokens", 2048), 0);
    assert_true(json_is_integer(json_object_get(req->body, "max_tokens")));
    assert_int_equal(json_integer_value(json_object_get(req->body, "max_tokens")), 2048);

    /* Refusals: non-finite, bad names, fields that are not numbers. */
    assert_int_equal(h->req_set_number(req, "temperature", NAN), -1);
    assert_int_equal(h->req_set_number(req, "temperature", INFINITY), -1);
    assert_int_equal(h->req_set_number(req, "Temperature", 0.1), -1);
    assert_int_equal(h->req_set_number(req, "a.b", 0.1), -1);
    assert_int_equal(h->req_set_number(req, "top_p2", 0.1), -1);
    assert_int_equal(h->req_set_number(req, "", 0.1), -1);
    assert_int_equal(h->req_set_number(req, NULL, 0.1), -1);
    char longname[80];
    memset(longname, 'a', sizeof(longname));
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(h->req_set_number(req, longname, 0.1), -1);
    assert_int_equal(h->req_set_number(req, "messages", 1.0), -1);
    assert_int_equal(h->req_set_integer(req, "model", 1), -1);
    assert_int_equal(h->req_set_integer(req, "stream", 1), -1);
    assert_int_equal(h->req_set_integer(req, "tools", 1), -1);
    assert_true(json_is_array(json_object_get(req->body, "messages")));

    /* The dump prints the numbers as written, and keeps the field order. */
    char *text = fh_request_dump(req, 0);
    assert_non_null(text);
    assert_non_null(strstr(text, "\"temperature\":0.22"));
    assert_non_null(strstr(text, "\"top_p\":0.4"));
    assert_non_null(strstr(text, "\"max_tokens\":2048"));
    assert_true(strstr(text, "\"model\"") < strstr(text, "\"messages\""));
    assert_null(strstr(text, "fusion"));
    free(text);
    text = fh_request_dump(req, 1);
    assert_non_null(strstr(text, "\n  \"model\": \"m\""));
    free(text);
    fh_request_free(req);
}

static void test_context_setters(void **unused)
{
    fusion_request *req = parse("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}");
    const fusion_host_api *h = fh_host_api();
    assert_int_equal(
        fh_request_set_context(req, "lot_boundary", "lot_boundary_dispute_resolution", "k", 0.5),
        0);
    assert_string_equal(h->req_scenario_type(req), "lot_boundary");
    assert_string_equal(h->req_scenario_id(req), "lot_boundary_dispute_resolution");
    assert_string_equal(req->key, "k");
    assert_true(h->req_confidence(req) == 0.5);
    /* Refused values leave the context unchanged. */
    assert_int_equal(fh_request_set_context(req, "x", NULL, NULL, 1.5), -1);
    assert_int_equal(fh_request_set_context(req, "x", NULL, NULL, NAN), -1);
    assert_string_equal(h->req_scenario_type(req), "lot_boundary");
    /* NULL clears; a negative confidence means "not given". */
    assert_int_equal(fh_request_set_context(req, NULL, NULL, NULL, -5), 0);
    assert_string_equal(h->req_scenario_type(req), "");
    assert_null(req->key);
    assert_true(h->req_confidence(req) < 0);
    assert_int_equal(fh_request_set_id(req, "req-1"), 0);
    assert_string_equal(req->request_id, "req-1");
    assert_int_equal(fh_request_set_id(req, "req-2"), 0);
    assert_string_equal(req->request_id, "req-2");
    assert_int_equal(fh_request_set_id(req, NULL), 0);
    assert_null(req->request_id);
    fh_request_free(req);
}

/* Context strings reach log lines, metric labels and rollout hashing: only
 * identifier characters get in, from the body or from headers. */
static void test_context_strings_are_identifiers(void **unused)
{
    static const char rule[] = "may contain only letters, digits and _ . : -";
    static const struct {
        const char *field, *value; /* value as JSON string text */
    } bad[] = {
        {"scenario_type", "a\\nERROR forged"},
        {"scenario_type", "refund processing"},
        {"scenario_id", "x\\ty"},
        {"scenario_id", "a\\\"b"},
        {"key", "user@example.com"},
        {"key", "k}"},
        {"key", "caf\\u00e9"},
        {"scenario_type", "a\\u001b[31m"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char body[256], err[256] = "", want[128];
        snprintf(body, sizeof(body),
                 "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                 "\"fusion\":{\"%s\":\"%s\"}}",
                 bad[i].field, bad[i].value);
        snprintf(want, sizeof(want), "fusion.%s %s", bad[i].field, rule);
        fusion_request *req = fh_request_parse(body, strlen(body), err, sizeof(err));
        if (req || strcmp(err, want) != 0)
            fail_msg("case %zu (%s): expected '%s', got %s '%s'", i, body, want,
                     req ? "a request" : "error", err);
    }

    /* Every allowed character, and "" as "not given". */
    fusion_request *req = parse("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                                "\"fusion\":{\"scenario_type\":\"Refund_processing-2.v1:a\","
                                "\"scenario_id\":\"\",\"key\":\"tenant-7\"}}");
    assert_string_equal(req->scenario_type, "Refund_processing-2.v1:a");
    assert_null(req->scenario_id);
    assert_string_equal(req->key, "tenant-7");

    /* Header values go through the same rule; a refusal says why and
     * leaves the context as it was. */
    char err[256] = "";
    assert_int_equal(
        fh_request_set_context_checked(req, "a\nERROR forged", NULL, NULL, -1, err, sizeof(err)),
        -1);
    assert_string_equal(err, "fusion.scenario_type may contain only letters, digits and _ . : -");
    assert_int_equal(fh_request_set_context_checked(req, "ok", "ok", "a b", -1, err, sizeof(err)),
                     -1);
    assert_string_equal(err, "fusion.key may contain only letters, digits and _ . : -");
    assert_int_equal(fh_request_set_context(req, NULL, "x\r", NULL, -1), -1);
    assert_int_equal(fh_request_set_context_checked(req, "x", NULL, NULL, 2, err, sizeof(err)), -1);
    assert_non_null(strstr(err, "confidence"));
    assert_string_equal(req->scenario_type, "Refund_processing-2.v1:a");
    assert_string_equal(req->key, "tenant-7");
    assert_int_equal(fh_request_set_context_checked(req, "t.1", "", "k:2", 0.5, err, sizeof(err)),
                     0);
    assert_string_equal(err, "");
    assert_string_equal(req->scenario_type, "t.1");
    assert_null(req->scenario_id);
    assert_string_equal(req->key, "k:2");
    fh_request_free(req);
}

/* Only the sampling parameters are an overlay's to set; stream, n, model
 * and the like are the caller's, whatever their current value. */
static void test_set_only_sampling_fields(void **unused)
{
    fusion_request *req = parse("{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],"
                                "\"n\":2}");
    const fusion_host_api *h = fh_host_api();
    static const char *const allowed[] = {
        "temperature",           "top_p", "presence_penalty", "frequency_penalty", "max_tokens",
        "max_completion_tokens", "seed"};
    for (size_t i = 0; i < sizeof(allowed) / sizeof(allowed[0]); i++) {
        assert_int_equal(h->req_set_number(req, allowed[i], 0.5), 0);
        assert_int_equal(h->req_set_integer(req, allowed[i], 7), 0);
    }
    static const char *const refused[] = {"stream",       "n",
                                          "fusion",       "model",
                                          "user",         "logprobs",
                                          "top_logprobs", "stop",
                                          "logit_bias",   "parallel_tool_calls"};
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        if (h->req_set_integer(req, refused[i], 1) != -1 ||
            h->req_set_number(req, refused[i], 50) != -1)
            fail_msg("an overlay could set '%s'", refused[i]);
    }
    /* Absent ones stay absent, present ones unchanged. */
    assert_null(json_object_get(req->body, "stream"));
    assert_null(json_object_get(req->body, "fusion"));
    assert_int_equal(json_integer_value(json_object_get(req->body, "n")), 2);
    fh_request_free(req);
}

/* Each byte of the UTF-8 text in [s, end) belongs to a whole character. */
static bool utf8_complete(const char *s, const char *end)
{
    while (s < end) {
        unsigned char c = (unsigned char)*s;
        size_t n = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : 4;
        if ((size_t)(end - s) < n)
            return false;
        for (size_t i = 1; i < n; i++)
            if (((unsigned char)s[i] & 0xc0) != 0x80)
                return false;
        s += n;
    }
    return true;
}

/* Runs h->log(ERROR, "%s", text) with stderr in a file; returns the line. */
static void capture_log_line(const char *text, char *line, size_t len)
{
    char path[] = "/tmp/fh_test_log_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path);
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_true(dup2(fd, STDERR_FILENO) >= 0);
    fh_host_api()->log(FUSION_LOG_ERROR, "%s", text);
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    ssize_t n = pread(fd, line, len - 1, 0);
    close(fd);
    assert_true(n > 0);
    line[n] = '\0';
}

/* A plugin line cut at the 1 KiB limit ends on a character boundary. */
static void test_log_cut_keeps_utf8(void **unused)
{
    static const struct {
        const char *prefix, *ch; /* the character repeated past the limit */
    } cases[] = {
        {"", "\xc3\xa9"},            /* é, 2 bytes: byte 1022 is a lead */
        {"a", "\xe2\x82\xac"},       /* €, 3 bytes: 2 of the last one fit */
        {"ab", "\xf0\x9f\x98\x80"},  /* U+1F600, 4 bytes: 1 fits */
        {"abc", "\xf0\x9f\x98\x80"}, /* 4 bytes, exactly 1020 + 3 */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char text[2048], line[4096];
        size_t used = (size_t)snprintf(text, sizeof(text), "%s", cases[i].prefix);
        size_t w = strlen(cases[i].ch);
        while (used + w < 1500) {
            memcpy(text + used, cases[i].ch, w);
            used += w;
        }
        text[used] = '\0';
        capture_log_line(text, line, sizeof(line));
        char *nl = strchr(line, '\n');
        assert_non_null(nl);
        const char *msg = strstr(line, cases[i].prefix[0] ? cases[i].prefix : cases[i].ch);
        assert_non_null(msg);
        if (!utf8_complete(msg, nl))
            fail_msg("case %zu: the cut split a character: ...%s", i, nl - 8);
        /* Only the partial character went: at most 3 bytes short of 1023. */
        assert_true((size_t)(nl - msg) >= 1020 && (size_t)(nl - msg) <= 1023);
    }
}

static void test_null_safety(void **unused)
{
    const fusion_host_api *h = fh_host_api();
    assert_int_equal(h->size, sizeof(fusion_host_api));
    assert_int_equal(h->abi_major, FUSION_ABI_MAJOR);
    assert_string_equal(h->req_scenario_type(NULL), "");
    assert_string_equal(h->req_scenario_id(NULL), "");
    assert_true(h->req_confidence(NULL) < 0);
    assert_int_equal(h->req_message_count(NULL), 0);
    assert_string_equal(h->req_message_role(NULL, 0), "");
    assert_string_equal(h->req_message_content(NULL, 0), "");
    double v = 0;
    assert_int_equal(h->req_get_number(NULL, "temperature", &v), 0);
    assert_int_equal(h->req_prepend_system(NULL, "x"), -1);
    assert_int_equal(h->req_set_number(NULL, "temperature", 0.1), -1);
    assert_int_equal(h->req_set_integer(NULL, "max_tokens", 1), -1);
    h->metric_count(NULL, 1);
    h->log(FUSION_LOG_ERROR, NULL);
    h->log((fusion_log_level)42, "out-of-range level %d", 42);
    fusion_request *req = parse("{\"messages\":[{\"role\":\"user\"}]}");
    assert_int_equal(h->req_get_number(req, NULL, &v), 0);
    assert_int_equal(h->req_get_number(req, "x", NULL), 0);
    assert_string_equal(h->req_message_content(req, 0), ""); /* no content at all */
    fh_request_free(req);
    fh_request_free(NULL);
    assert_null(fh_request_dump(NULL, 0));
    assert_int_equal(fh_request_set_context(NULL, "a", "b", "c", 0.5), -1);
    assert_int_equal(fh_request_set_id(NULL, "x"), -1);
}

/* Metric sink capture. */
static char sink_overlay[64], sink_event[64];
static double sink_delta;
static int sink_calls;

static void capture_sink(const char *overlay, const char *event, double delta)
{
    snprintf(sink_overlay, sizeof(sink_overlay), "%s", overlay ? overlay : "(none)");
    snprintf(sink_event, sizeof(sink_event), "%s", event);
    sink_delta = delta;
    sink_calls++;
}

static void test_metrics_and_log(void **unused)
{
    const fusion_host_api *h = fh_host_api();
    h->metric_count("dropped_before_sink", 1); /* no sink: dropped */
    fh_host_api_set_metric_sink(capture_sink);
    const char *prev = fh_log_set_overlay("refund_lot_switch");
    h->metric_count("directive_applied", 2);
    assert_int_equal(sink_calls, 1);
    assert_string_equal(sink_overlay, "refund_lot_switch");
    assert_string_equal(sink_event, "directive_applied");
    assert_true(sink_delta == 2.0);
    /* Malformed names and values never reach the sink. */
    h->metric_count("Upper", 1);
    h->metric_count("with-dash", 1);
    h->metric_count("", 1);
    h->metric_count("a_name_that_is_much_longer_than_fifty_characters_xyz", 1);
    h->metric_count("ok", NAN);
    assert_int_equal(sink_calls, 1);
    h->metric_count("exactly_fifty_characters_long_event_name_abcdefghi", 1);
    assert_int_equal(sink_calls, 2);
    /* A plugin's newline cannot start a forged host line (visible on stderr
     * as one line; here it must simply not crash). */
    fh_log_set_level(FH_LOG_DEBUG);
    h->log(FUSION_LOG_DEBUG, "line one\nerror forged %s", "line");
    fh_log_set_level(FH_LOG_INFO);
    fh_log_set_overlay(prev);
    fh_host_api_set_metric_sink(NULL);
}

int main(void)
{
    /* Log lines must reach stderr, where test_log_cut_keeps_utf8 reads
     * them, even when the suite runs under systemd. */
    unsetenv("JOURNAL_STREAM");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_valid_and_context),
        cmocka_unit_test(test_parse_without_fusion),
        cmocka_unit_test(test_parse_hostile),
        cmocka_unit_test(test_messages_accessors),
        cmocka_unit_test(test_prepend_ahead_of_caller_system),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_context_setters),
        cmocka_unit_test(test_context_strings_are_identifiers),
        cmocka_unit_test(test_set_only_sampling_fields),
        cmocka_unit_test(test_log_cut_keeps_utf8),
        cmocka_unit_test(test_null_safety),
        cmocka_unit_test(test_metrics_and_log),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
