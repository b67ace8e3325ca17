/*
 * hostapi.c - the fusion_host_api table: what a plugin can do to the host.
 *
 * Owns: the static, immutable table and the metric sink pointer. Any thread
 * may call any entry; each call touches only the request it is given, which
 * belongs to the calling thread while it runs (see request.h). The sink is
 * an atomic pointer set once at start, so readers never see a torn value.
 *
 * Every entry is defensive because its caller is third-party code: a NULL
 * request or argument, an out-of-range index or a malformed field name gives
 * a default ("" / 0 / -1) and never a crash. Nothing returned here has to be
 * freed by the plugin; strings stay valid at least until the request is
 * freed (the header promises only "for the duration of the call").
 */
#include "hostapi.h"

#include "jfast.h"
#include "log.h"
#include "request.h"

#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FH_FIELD_MAX 64 /* longest request field name a plugin may set */
#define FH_EVENT_MAX 50 /* metric event names: [a-z0-9_]{1,50} */

static _Atomic(fh_metric_sink) metric_sink;

void fh_host_api_set_metric_sink(fh_metric_sink sink)
{
    atomic_store(&metric_sink, sink);
}

/* ---- logging ---------------------------------------------------------- */

/* msg[len] is the NUL vsnprintf put where it cut. A cut inside a multi-byte
 * UTF-8 character would leave a lead byte without its continuation bytes,
 * which the journal and JSON log shippers reject or mangle: drop the partial
 * character. Bytes that are not UTF-8 at all are left as the plugin sent
 * them. */
static void cut_at_char_boundary(char *msg, size_t len)
{
    size_t start = len;
    /* Back over at most three continuation bytes (10xxxxxx) to the lead. */
    while (start > 0 && len - start < 3 && ((unsigned char)msg[start - 1] & 0xc0) == 0x80)
        start--;
    if (start == 0)
        return;
    unsigned char lead = (unsigned char)msg[start - 1];
    size_t need = (lead & 0xe0) == 0xc0   ? 2
                  : (lead & 0xf0) == 0xe0 ? 3
                  : (lead & 0xf8) == 0xf0 ? 4
                                          : 1;
    if (need > 1 && (start - 1) + need > len)
        msg[start - 1] = '\0';
}

static void api_log(fusion_log_level level, const char *fmt, ...) FUSION_PRINTF(2, 3);

static void api_log(fusion_log_level level, const char *fmt, ...)
{
    if (!fmt)
        return;
    int lv = (int)level;
    if (lv < FH_LOG_ERROR)
        lv = FH_LOG_ERROR;
    if (lv > FH_LOG_DEBUG)
        lv = FH_LOG_DEBUG;
    if (lv > (int)fh_log_get_level())
        return; /* skip the formatting for lines nobody will see */
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(msg))
        cut_at_char_boundary(msg, sizeof(msg) - 1);
    /* One plugin line must stay one log line: a newline or escape sequence
     * in a plugin's message must not forge host log lines. */
    for (char *p = msg; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = ' ';
    }
    fh_log((fh_log_level)lv, "%s", msg);
}

/* ---- request context -------------------------------------------------- */

static const char *api_scenario_type(const fusion_request *req)
{
    return req && req->scenario_type ? req->scenario_type : "";
}

static const char *api_scenario_id(const fusion_request *req)
{
    return req && req->scenario_id ? req->scenario_id : "";
}

static double api_confidence(const fusion_request *req)
{
    return req && req->confidence >= 0.0 ? req->confidence : -1.0;
}

/* ---- messages --------------------------------------------------------- */

static json_t *messages_of(const fusion_request *req)
{
    if (!req || !req->body)
        return NULL;
    json_t *m = json_object_get(req->body, "messages");
    return json_is_array(m) ? m : NULL;
}

static json_t *message_at(const fusion_request *req, size_t i)
{
    json_t *m = json_array_get(messages_of(req), i);
    return json_is_object(m) ? m : NULL;
}

static size_t api_message_count(const fusion_request *req)
{
    json_t *m = messages_of(req);
    return m ? json_array_size(m) : 0;
}

static const char *api_message_role(const fusion_request *req, size_t i)
{
    const char *role = json_string_value(json_object_get(message_at(req, i), "role"));
    return role ? role : "";
}

/* Joins the text parts of an array content ({"type":"text","text":...}),
 * one per line; image and audio parts carry no text to score. */
static char *join_text_parts(json_t *parts)
{
    size_t total = 1, i;
    json_t *p;
    json_array_foreach(parts, i, p)
    {
        json_t *tv = json_object_get(p, "text");
        if (json_is_string(tv))
            total += json_string_length(tv) + 1;
    }
    char *out = malloc(total);
    if (!out)
        return NULL;
    size_t used = 0;
    json_array_foreach(parts, i, p)
    {
        json_t *tv = json_object_get(p, "text");
        if (!json_is_string(tv))
            continue;
        if (used > 0)
            out[used++] = '\n';
        size_t n = json_string_length(tv);
        memcpy(out + used, json_string_value(tv), n);
        used += n;
    }
    out[used] = '\0';
    return out;
}

/*
 * The joined text of message i is cached in req->joined[i] (indexes follow
 * the messages array; req_prepend_system shifts them) so that repeated calls
 * do not allocate again and the pointer stays valid until the request is
 * freed. The request belongs to the calling thread, so writing the cache
 * through a const pointer is safe; the object itself was never const.
 */
static const char *api_message_content(const fusion_request *creq, size_t i)
{
    json_t *msg = message_at(creq, i);
    if (!msg)
        return "";
    json_t *c = json_object_get(msg, "content");
    if (json_is_string(c))
        return json_string_value(c);
    if (!json_is_array(c))
        return ""; /* null or absent: an assistant turn with tool calls */

    fusion_request *req = (fusion_request *)creq;
    size_t count = api_message_count(req);
    if (req->joined_count < count) {
        char **grown = realloc(req->joined, count * sizeof(*grown));
        if (!grown)
            return "";
        memset(grown + req->joined_count, 0, (count - req->joined_count) * sizeof(*grown));
        req->joined = grown;
        req->joined_count = count;
    }
    if (!req->joined[i])
        req->joined[i] = join_text_parts(c);
    return req->joined[i] ? req->joined[i] : "";
}

/* ---- numeric fields ----------------------------------------------------- */

/* A well-formed field name: [a-z_]+ of at most FH_FIELD_MAX characters,
 * so a refused one can be quoted in a log line as it is. */
static int valid_field(const char *field)
{
    if (!field || !*field)
        return 0;
    size_t n = 0;
    for (const char *p = field; *p; p++, n++) {
        if (!((*p >= 'a' && *p <= 'z') || *p == '_') || n >= FH_FIELD_MAX)
            return 0;
    }
    return 1;
}

static int api_get_number(const fusion_request *req, const char *field, double *out)
{
    if (!req || !req->body || !field || !out)
        return 0;
    json_t *v = json_object_get(req->body, field);
    if (!json_is_number(v))
        return 0;
    *out = json_number_value(v);
    return 1;
}

/* The numeric sampling parameters an overlay may set. Anything else is the
 * caller's or the host's: a number in `stream`, `n` (50 answers billed) or
 * `fusion` changes what the request is, not how it is sampled. Keep this
 * list and the comment on req_set_number in <fusion/overlay.h> in step. */
static const char *const settable_fields[] = {
    "temperature",           "top_p", "presence_penalty", "frequency_penalty", "max_tokens",
    "max_completion_tokens", "seed",
};

static int allowed_field(const char *field)
{
    for (size_t i = 0; i < sizeof(settable_fields) / sizeof(settable_fields[0]); i++)
        if (strcmp(field, settable_fields[i]) == 0)
            return 1;
    return 0;
}

/* A plugin may set an allowed field that is absent, null or already a
 * number; a caller's string or object there stays as the caller sent it. */
static int settable(fusion_request *req, const char *field, const char *fn)
{
    if (!req || !req->body)
        return 0;
    if (!valid_field(field) || !allowed_field(field)) {
        /* valid_field() first: only a [a-z_] name is quoted into the log. */
        fh_debug("%s: refused field '%s'; an overlay may set only temperature, top_p, "
                 "presence_penalty, frequency_penalty, max_tokens, max_completion_tokens and seed",
                 fn, valid_field(field) ? field : "(malformed name)");
        return 0;
    }
    json_t *cur = json_object_get(req->body, field);
    return !cur || json_is_null(cur) || json_is_number(cur);
}

static int api_set_number(fusion_request *req, const char *field, double value)
{
    if (!isfinite(value) || !settable(req, field, "req_set_number"))
        return -1;
    json_t *v = json_real(value);
    if (!v)
        return -1;
    return json_object_set_new(req->body, field, v) == 0 ? 0 : -1;
}

static int api_set_integer(fusion_request *req, const char *field, int64_t value)
{
    if (!settable(req, field, "req_set_integer"))
        return -1;
    json_t *v = json_integer((json_int_t)value);
    if (!v)
        return -1;
    return json_object_set_new(req->body, field, v) == 0 ? 0 : -1;
}

/* ---- directive ------------------------------------------------------------ */

static int api_prepend_system(fusion_request *req, const char *text)
{
    json_t *msgs = messages_of(req);
    if (!msgs || !text)
        return -1;
    /* Valid UTF-8 only: a plugin cannot smuggle bytes that would make the
     * upstream body invalid JSON. A directive is the same text on every
     * request: checked, copied and escaped once per thread (jfast.h). */
    json_t *content = fh_json_string_shared(text, strlen(text));
    if (!content)
        return -1;
    json_t *msg = json_object();
    if (!msg || json_object_set_new(msg, "role", json_string("system")) != 0) {
        json_decref(content);
        json_decref(msg);
        return -1;
    }
    if (json_object_set_new(msg, "content", content) != 0) { /* stole content */
        json_decref(msg);
        return -1;
    }
    /* Keep the joined-content cache aligned with the new indexes. */
    if (req->joined_count > 0) {
        char **grown = realloc(req->joined, (req->joined_count + 1) * sizeof(*grown));
        if (!grown) {
            json_decref(msg);
            return -1;
        }
        memmove(grown + 1, grown, req->joined_count * sizeof(*grown));
        grown[0] = NULL;
        req->joined = grown;
        req->joined_count++;
    }
    /* Index 0: ahead of every caller message, the caller's own system
     * message included, so the directive frames the whole conversation. */
    if (json_array_insert_new(msgs, 0, msg) != 0) {
        if (req->joined_count > 0) { /* undo the shift */
            memmove(req->joined, req->joined + 1, (req->joined_count - 1) * sizeof(char *));
            req->joined_count--;
        }
        return -1;
    }
    return 0;
}

/* ---- metrics ------------------------------------------------------------ */

static int valid_event(const char *event)
{
    if (!event || !*event)
        return 0;
    size_t n = 0;
    for (const char *p = event; *p; p++, n++) {
        if (n >= FH_EVENT_MAX)
            return 0;
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
            return 0;
    }
    return 1;
}

static void api_metric_count(const char *event, double delta)
{
    if (!valid_event(event) || !isfinite(delta)) {
        fh_debug("metric_count: dropped an event with a malformed name or value");
        return;
    }
    fh_metric_sink sink = atomic_load(&metric_sink);
    if (sink)
        sink(fh_log_current_overlay(), event, delta);
}

static const char *api_model(const fusion_request *req)
{
    const char *m =
        req && req->body ? json_string_value(json_object_get(req->body, "model")) : NULL;
    return m ? m : "";
}

/* ---- 1.1: the overlay's config by key path, during init() -------------------- */

/* "a.b.2": object keys and list indexes, dotted. NULL when absent. */
static const json_t *config_at(const fusion_init_args *args, const char *path)
{
    if (!args || !path ||
        args->size < offsetof(fusion_init_args, host_config) + sizeof(args->host_config))
        return NULL;
    const json_t *j = args->host_config;
    char key[256];
    for (const char *p = path; j && *p;) {
        size_t n = strcspn(p, ".");
        if (n == 0 || n >= sizeof(key))
            return NULL;
        memcpy(key, p, n);
        key[n] = '\0';
        if (json_is_object(j)) {
            j = json_object_get(j, key);
        } else if (json_is_array(j)) {
            char *end = NULL;
            unsigned long i = strtoul(key, &end, 10);
            j = end && !*end ? json_array_get(j, i) : NULL;
        } else {
            return NULL;
        }
        p += n + (p[n] == '.');
    }
    return j;
}

static const char *api_config_string(const fusion_init_args *args, const char *path,
                                     const char *dflt)
{
    const char *v = json_string_value(config_at(args, path));
    return v ? v : dflt;
}

static double api_config_number(const fusion_init_args *args, const char *path, double dflt)
{
    const json_t *j = config_at(args, path);
    return json_is_number(j) ? json_number_value(j) : dflt;
}

static int64_t api_config_integer(const fusion_init_args *args, const char *path, int64_t dflt)
{
    const json_t *j = config_at(args, path);
    if (json_is_integer(j))
        return (int64_t)json_integer_value(j);
    double v = json_is_real(j) ? json_real_value(j) : NAN;
    /* 3.0 is whole; 3.5 is not an integer and gets the default. */
    return isfinite(v) && v == floor(v) && fabs(v) < 9.0e15 ? (int64_t)v : dflt;
}

static int api_config_bool(const fusion_init_args *args, const char *path, int dflt)
{
    const json_t *j = config_at(args, path);
    return json_is_boolean(j) ? json_is_true(j) : dflt;
}

static size_t api_config_count(const fusion_init_args *args, const char *path)
{
    const json_t *j = config_at(args, path);
    return json_is_array(j) ? json_array_size(j) : 0;
}

static int api_config_type(const fusion_init_args *args, const char *path)
{
    /* "" is the whole config. */
    const json_t *j =
        path && !*path && args &&
                args->size >= offsetof(fusion_init_args, host_config) + sizeof(args->host_config)
            ? args->host_config
            : config_at(args, path);
    switch (j ? json_typeof(j) : JSON_NULL) {
    case JSON_OBJECT:
        return FUSION_CONFIG_OBJECT;
    case JSON_ARRAY:
        return FUSION_CONFIG_LIST;
    case JSON_STRING:
        return FUSION_CONFIG_STRING;
    case JSON_INTEGER:
    case JSON_REAL:
        return FUSION_CONFIG_NUMBER;
    case JSON_TRUE:
    case JSON_FALSE:
        return FUSION_CONFIG_BOOL;
    case JSON_NULL:
        return j ? FUSION_CONFIG_NULL : FUSION_CONFIG_ABSENT;
    }
    return FUSION_CONFIG_ABSENT;
}

static const char *api_config_key(const fusion_init_args *args, const char *path, size_t i)
{
    const json_t *j =
        path && !*path && args &&
                args->size >= offsetof(fusion_init_args, host_config) + sizeof(args->host_config)
            ? args->host_config
            : config_at(args, path);
    if (!json_is_object(j))
        return NULL;
    const char *key;
    json_t *v;
    size_t k = 0;
    json_object_foreach((json_t *)j, key, v)
    {
        if (k++ == i)
            return key;
    }
    return NULL;
}

static const fusion_host_api host_api = {
    .size = (uint32_t)sizeof(fusion_host_api),
    .abi_major = FUSION_ABI_MAJOR,
    .abi_minor = FUSION_ABI_MINOR,
    .log = api_log,
    .req_scenario_type = api_scenario_type,
    .req_scenario_id = api_scenario_id,
    .req_confidence = api_confidence,
    .req_message_count = api_message_count,
    .req_message_role = api_message_role,
    .req_message_content = api_message_content,
    .req_get_number = api_get_number,
    .req_prepend_system = api_prepend_system,
    .req_set_number = api_set_number,
    .req_set_integer = api_set_integer,
    .metric_count = api_metric_count,
    .req_model = api_model,
    .config_string = api_config_string,
    .config_number = api_config_number,
    .config_integer = api_config_integer,
    .config_bool = api_config_bool,
    .config_count = api_config_count,
    .config_type = api_config_type,
    .config_key = api_config_key,
};

const fusion_host_api *fh_host_api(void)
{
    return &host_api;
}
