/*
 * request.c - parsing, context and serialisation of a chat-completion request
 * (struct fusion_request, see request.h).
 *
 * Owns: the jansson body and the context strings of each request. A request
 * is touched by one thread at a time (the one routing it), so nothing here
 * locks. Invariants after a successful parse: body is an object, body has no
 * `fusion` member, body.messages is a non-empty array of objects each with a
 * string `role` and a string/array/null/absent `content`, and every context
 * string is either NULL or a private, non-empty copy of at most
 * FH_CONTEXT_MAX bytes of [A-Za-z0-9_.:-], safe in a log line or a label.
 *
 * Everything the caller sent other than `fusion` is kept as it came (tools,
 * response_format, n, seed, stream, vendor fields ...): the host adds, it
 * never filters.
 */
#include "request.h"

#include "jfast.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Context strings end up in logs, metric labels and rollout hashing; a
 * caller has no business sending kilobytes there. */
#define FH_CONTEXT_MAX 256
/* ... nor newlines, quotes or escapes: one of those in a log line or a
 * Prometheus label forges or breaks it. Identifiers need no more than this. */
#define FH_CONTEXT_CHARS "letters, digits and _ . : -"

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* [A-Za-z0-9_.:-]+, spelled out rather than isalnum(): the locale must not
 * widen what reaches a metric label. */
static int context_chars_valid(const char *s)
{
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == ':' || c == '-'))
            return 0;
    }
    return 1;
}

static char *dup_or_null(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

/* Reads one optional string member of the fusion object into *out (a fresh
 * copy). JSON null counts as absent, as OpenAI clients send it for unset
 * optional fields. Returns 0, or -1 with err set. */
static int take_context_string(json_t *fusion, const char *key, char **out, char *err,
                               size_t errlen)
{
    json_t *v = json_object_get(fusion, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v)) {
        set_err(err, errlen, "fusion.%s must be a string", key);
        return -1;
    }
    if (json_string_length(v) > FH_CONTEXT_MAX) {
        set_err(err, errlen, "fusion.%s is longer than %d bytes", key, FH_CONTEXT_MAX);
        return -1;
    }
    /* Checked as a C string; the length comparison refuses an embedded
     * NUL should the parser ever be told to allow one. */
    const char *text = json_string_value(v);
    if (strlen(text) != json_string_length(v) || !context_chars_valid(text)) {
        set_err(err, errlen, "fusion.%s may contain only " FH_CONTEXT_CHARS, key);
        return -1;
    }
    if (!*text)
        return 0; /* "" is "not given", like null */
    *out = dup_or_null(text);
    if (!*out) {
        set_err(err, errlen, "out of memory");
        return -1;
    }
    return 0;
}

static int parse_fusion(fusion_request *req, json_t *fusion, char *err, size_t errlen)
{
    if (json_is_null(fusion))
        return 0;
    if (!json_is_object(fusion)) {
        set_err(err, errlen,
                "fusion must be an object with scenario_type, scenario_id, confidence, key");
        return -1;
    }
    /* The fusion object is the host's own namespace: a misspelt key would
     * silently route to the baseline, so it is an error instead. */
    const char *key;
    json_t *v;
    json_object_foreach(fusion, key, v)
    {
        if (strcmp(key, "scenario_type") != 0 && strcmp(key, "scenario_id") != 0 &&
            strcmp(key, "confidence") != 0 && strcmp(key, "key") != 0) {
            set_err(err, errlen,
                    "fusion.%.64s is not a known field (scenario_type, scenario_id, "
                    "confidence, key)",
                    key);
            return -1;
        }
    }
    if (take_context_string(fusion, "scenario_type", &req->scenario_type, err, errlen) != 0 ||
        take_context_string(fusion, "scenario_id", &req->scenario_id, err, errlen) != 0 ||
        take_context_string(fusion, "key", &req->key, err, errlen) != 0)
        return -1;
    v = json_object_get(fusion, "confidence");
    if (v && !json_is_null(v)) {
        if (!json_is_number(v)) {
            set_err(err, errlen, "fusion.confidence must be a number in [0,1]");
            return -1;
        }
        double c = json_number_value(v);
        if (!(c >= 0.0 && c <= 1.0)) {
            set_err(err, errlen, "fusion.confidence is %g; it must be in [0,1]", c);
            return -1;
        }
        req->confidence = c;
    }
    return 0;
}

static int check_messages(json_t *body, char *err, size_t errlen)
{
    json_t *msgs = json_object_get(body, "messages");
    if (!msgs) {
        set_err(err, errlen, "messages is missing; it must be a non-empty array of objects");
        return -1;
    }
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        set_err(err, errlen, "messages must be a non-empty array of objects");
        return -1;
    }
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m)
    {
        if (!json_is_object(m)) {
            set_err(err, errlen, "messages[%zu] must be an object", i);
            return -1;
        }
        if (!json_is_string(json_object_get(m, "role"))) {
            set_err(err, errlen, "messages[%zu].role must be a string", i);
            return -1;
        }
        json_t *c = json_object_get(m, "content");
        if (c && !json_is_string(c) && !json_is_array(c) && !json_is_null(c)) {
            set_err(err, errlen,
                    "messages[%zu].content must be a string, an array of content parts "
                    "or null",
                    i);
            return -1;
        }
    }
    return 0;
}

fusion_request *fh_request_parse(const char *body, size_t len, char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (!body) {
        set_err(err, errlen, "empty request body");
        return NULL;
    }
    /* The same checks as jansson's parser (invalid UTF-8, \u0000 in strings,
     * trailing garbage, nesting too deep, numbers out of range), in one
     * fast pass (jfast.h). */
    size_t at = 0;
    const char *why = NULL;
    json_t *root = fh_json_parse(body, len, &at, &why);
    if (!root) {
        int line = 1, col = 1;
        for (size_t i = 0; i < at && i < len; i++, col++)
            if (body[i] == '\n')
                line++, col = 0;
        set_err(err, errlen, "invalid JSON at line %d, column %d: %s", line, col, why);
        return NULL;
    }
    if (!json_is_object(root)) {
        set_err(err, errlen, "the request body must be a JSON object");
        json_decref(root);
        return NULL;
    }
    if (check_messages(root, err, errlen) != 0) {
        json_decref(root);
        return NULL;
    }
    fusion_request *req = calloc(1, sizeof(*req));
    if (!req) {
        set_err(err, errlen, "out of memory");
        json_decref(root);
        return NULL;
    }
    req->body = root; /* owned by req from here on */
    req->confidence = -1.0;
    json_t *fusion = json_object_get(root, "fusion");
    if (fusion) {
        req->had_fusion = 1;
        if (parse_fusion(req, fusion, err, errlen) != 0) {
            fh_request_free(req);
            return NULL;
        }
        json_object_del(root, "fusion");
    }
    return req;
}

void fh_request_free(fusion_request *req)
{
    if (!req)
        return;
    json_decref(req->body);
    free(req->scenario_type);
    free(req->scenario_id);
    free(req->key);
    free(req->request_id);
    for (size_t i = 0; i < req->joined_count; i++)
        free(req->joined[i]);
    free(req->joined);
    free(req);
}

int fh_request_set_context(fusion_request *req, const char *scenario_type, const char *scenario_id,
                           const char *key, double confidence)
{
    return fh_request_set_context_checked(req, scenario_type, scenario_id, key, confidence, NULL,
                                          0);
}

int fh_request_set_context_checked(fusion_request *req, const char *scenario_type,
                                   const char *scenario_id, const char *key, double confidence,
                                   char *err, size_t errlen)
{
    if (err && errlen)
        err[0] = '\0';
    if (!req) {
        set_err(err, errlen, "no request");
        return -1;
    }
    /* Negative means "not given"; anything else must be a probability. */
    if (isnan(confidence) || confidence > 1.0) {
        set_err(err, errlen, "confidence must be a number from 0 to 1");
        return -1;
    }
    /* The same rules as the body's fusion object: these values come from
     * X-Fusion-* headers and go to the same logs and labels. */
    static const char *const names[3] = {"scenario_type", "scenario_id", "key"};
    const char *in[3] = {scenario_type, scenario_id, key};
    char *copy[3] = {NULL, NULL, NULL};
    for (int i = 0; i < 3; i++) {
        if (!in[i] || !*in[i])
            continue; /* "" is "not given" */
        if (strlen(in[i]) > FH_CONTEXT_MAX) {
            set_err(err, errlen, "fusion.%s is longer than %d bytes", names[i], FH_CONTEXT_MAX);
            goto fail;
        }
        if (!context_chars_valid(in[i])) {
            set_err(err, errlen, "fusion.%s may contain only " FH_CONTEXT_CHARS, names[i]);
            goto fail;
        }
        if (!(copy[i] = dup_or_null(in[i]))) {
            set_err(err, errlen, "out of memory");
            goto fail;
        }
    }
    /* All copies made: swap them in, so a failure leaves req unchanged. */
    free(req->scenario_type);
    free(req->scenario_id);
    free(req->key);
    req->scenario_type = copy[0];
    req->scenario_id = copy[1];
    req->key = copy[2];
    req->confidence = confidence < 0.0 ? -1.0 : confidence;
    return 0;
fail:
    for (int i = 0; i < 3; i++)
        free(copy[i]);
    return -1;
}

int fh_request_set_id(fusion_request *req, const char *request_id)
{
    if (!req)
        return -1;
    char *copy = NULL;
    if (request_id && !(copy = dup_or_null(request_id)))
        return -1;
    free(req->request_id);
    req->request_id = copy;
    return 0;
}

char *fh_request_dump(const fusion_request *req, int pretty)
{
    if (!req || !req->body)
        return NULL;
    /* 15 significant digits print every decimal a person or a parameter
     * table wrote exactly (0.4, not 0.40000000000000002), at the cost of the
     * last bit of a 17-digit caller value. jansson keeps insertion order, so
     * the caller's field order survives. */
    if (!pretty)
        return fh_json_dump(req->body, NULL); /* the same text, on the request path */
    return json_dumps(req->body, JSON_REAL_PRECISION(15) | JSON_INDENT(2));
}
