/*
 * fusion/overlay.h - the fusion-host overlay ABI, version 1.1.
 *
 * This header is the whole contract between fusion-host and an overlay
 * plugin. It depends on nothing but <stddef.h> and <stdint.h>; a plugin never
 * links against host symbols and may rely only on what this file declares
 * and on the function table the host hands it.
 *
 * WHAT AN OVERLAY IS
 *   An overlay is a shared object (.so) that rewrites an OpenAI-style chat
 *   completion request for a scenario (a system directive ahead of the
 *   caller's messages, tuned sampling parameters) and scores the model's
 *   answer against its quality rules. The host decides *whether* an overlay
 *   runs (feature flags, circuit breaker, budget gates); the overlay decides
 *   *what* it does to the request.
 *
 * ENTRY POINT
 *   The plugin exports exactly one symbol, FUSION_OVERLAY_ENTRY_NAME, a
 *   function returning a pointer to a const descriptor with static storage.
 *   Use FUSION_OVERLAY_DEFINE() below: it fills magic, ABI version and size.
 *   The host calls the entry once per load and checks magic, abi_major and
 *   size before reading anything else; it refuses a descriptor from a newer
 *   ABI minor than its own and copies min(size, sizeof) bytes into a zeroed
 *   local, so an older plugin simply has the newer fields NULL.
 *
 * LIFECYCLE (per loaded generation of a plugin)
 *   entry()  -> init() once -> match/apply/evaluate any number of times,
 *   possibly concurrently -> fini() once -> the file is unmapped.
 *   A hot swap loads the new file as a new generation and runs its init()
 *   while the old generation still serves requests already in flight; the
 *   old generation's fini() runs only once no thread uses it any more.
 *   If init() fails the generation is refused and fini() is not called.
 *
 * THREADING
 *   init() and fini() run alone: no other hook of the same generation runs
 *   at the same time. match(), apply() and evaluate() may run concurrently
 *   on many threads with the same state pointer; treat state as read-only
 *   after init() or protect it yourself. Hooks run on the host's request
 *   path: do not block, sleep or do network I/O in them. The host measures
 *   hook time against the overlay's latency budget, and a hook that never
 *   returns gets the overlay quarantined.
 *
 * MEMORY OWNERSHIP
 *   Nothing is freed across the boundary. Strings the host passes in are
 *   valid only for the duration of the call; copy what you keep. Strings the
 *   plugin hands back (descriptor fields, rule names, rule details) must stay
 *   valid until fini() returns: use static storage or memory owned by state.
 *   JSON crosses the boundary as UTF-8 text, never as library objects.
 *   Request changes go through the host's accessor functions, which copy.
 *
 * WHAT fini() MUST UNDO
 *   After fini() returns, nothing of the plugin may run or be referenced:
 *   no threads, timers, signal handlers, pthread keys with destructors,
 *   atexit() handlers, registered callbacks or open descriptors. The host
 *   unmaps the code afterwards; anything left behind would jump into
 *   unmapped memory. (Build with -fvisibility=hidden and avoid C++ inline
 *   statics or thread_local objects with destructors: they pin the library
 *   in memory, which the host detects and reports.)
 *
 * ABI RULE AND CHANGELOG
 *   Adding a field at the end of a struct or a function at the end of the
 *   host table bumps FUSION_ABI_MINOR; changing or removing anything bumps
 *   FUSION_ABI_MAJOR. The host loads plugins of its own major with a minor
 *   up to its own. A plugin checks FUSION_HOST_HAS() before calling a host
 *   function newer than 1.0.
 *     1.0  first release: descriptor, init args, host table, evaluation.
 *     1.1  typed config accessors (config_string, config_number,
 *          config_integer, config_bool, config_count, config_type,
 *          config_key) so init() needs no
 *          JSON parser; req_model; fusion_init_args.host_config (the host's,
 *          opaque); a rule's `passed` is the host's to decide from its score
 *          (overlays.<name>.rule_pass_mark, default 0.5). A 1.0 plugin loads
 *          unchanged into a 1.1 host.
 *
 * THE ANSWER evaluate() SEES
 *   The text of the first choice's message (choices[0].message.content),
 *   whole. For a streamed request it is the concatenation of the
 *   delta.content of choice 0 over every chunk, scored once the stream has
 *   ended (the client already has it: the score goes to metrics and gates).
 *   With n > 1 only choice 0 is scored; the other choices pass untouched.
 *   An answer with no text (tool calls only, refusal) is "" with len 0.
 *
 * READING THE REQUEST
 *   req_model() is the model the caller asked for; req_get_number() reads
 *   the caller's sampling values (temperature, top_p, ...) before you set
 *   yours, so an overlay can keep a caller's stricter choice.
 *
 * A MINIMAL OVERLAY
 *
 *   #include <fusion/overlay.h>
 *
 *   static int my_init(const fusion_init_args *a, void **state)
 *   { *state = NULL; (void)a; return 0; }
 *   static void my_fini(void *state) { (void)state; }
 *   static int my_apply(void *state, fusion_request *req,
 *                       const fusion_host_api *host)
 *   {
 *       (void)state;
 *       if (host->req_prepend_system(req, "Answer in one sentence.") != 0)
 *           return -1;
 *       return host->req_set_number(req, "temperature", 0.2);
 *   }
 *   static int my_evaluate(void *state, const fusion_request *req,
 *                          const char *answer, size_t len,
 *                          fusion_evaluation *out,
 *                          const fusion_host_api *host)
 *   {
 *       (void)state; (void)req; (void)answer; (void)host;
 *       fusion_eval_add(out, "short_answer", len < 200 ? 1.0 : 0.0, NULL);
 *       out->quality = len < 200 ? 1.0 : 0.0;
 *       return 0;
 *   }
 *   FUSION_OVERLAY_DEFINE(.name = "one_sentence", .version = "1.0.0",
 *                         .description = "Short answers", .license = "MIT",
 *                         .init = my_init, .fini = my_fini,
 *                         .apply = my_apply, .evaluate = my_evaluate)
 */
#ifndef FUSION_OVERLAY_H
#define FUSION_OVERLAY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* "FSOV" in ASCII: the first field of every descriptor. */
#define FUSION_OVERLAY_MAGIC 0x46534f56u
#define FUSION_ABI_MAJOR     1
#define FUSION_ABI_MINOR     1

/* The one symbol a plugin exports. */
#define FUSION_OVERLAY_ENTRY      fusion_overlay_entry
#define FUSION_OVERLAY_ENTRY_NAME "fusion_overlay_entry"

#if defined(__GNUC__) || defined(__clang__)
#define FUSION_EXPORT       __attribute__((visibility("default")))
#define FUSION_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define FUSION_EXPORT
#define FUSION_PRINTF(f, a)
#endif

/* Limits the host guarantees; longer names are refused at load. */
#define FUSION_NAME_MAX       64 /* [a-z0-9_], starts with a letter */
#define FUSION_VERSION_MAX    32 /* MAJOR.MINOR.PATCH[-prerelease] */
#define FUSION_EVAL_MAX_RULES 16

typedef enum fusion_log_level {
    FUSION_LOG_ERROR = 0,
    FUSION_LOG_WARN = 1,
    FUSION_LOG_INFO = 2,
    FUSION_LOG_DEBUG = 3
} fusion_log_level;

/* A request being routed; opaque, reached only through the host table. */
typedef struct fusion_request fusion_request;

/* What init() receives (defined below). */
typedef struct fusion_init_args fusion_init_args;

/* One micro-overlay text (directive) that the overlay's feature enables. */
typedef struct fusion_directive {
    const char *name; /* e.g. "rollback_first" */
    const char *text; /* UTF-8, the file's content */
    size_t text_len;
} fusion_directive;

/* One named quality rule's result. */
typedef struct fusion_rule_result {
    const char *name;   /* static or state-owned, [a-z0-9_] */
    double score;       /* [0,1] */
    int passed;         /* non-zero when the rule holds; since 1.1 the host
                           sets it from score and the overlay's
                           rule_pass_mark (default 0.5) after evaluate() */
    const char *detail; /* optional, static or state-owned; may be NULL */
} fusion_rule_result;

/* Host-owned; the plugin fills it in evaluate(). */
typedef struct fusion_evaluation {
    double quality; /* overall score in [0,1] */
    size_t rule_count;
    fusion_rule_result rules[FUSION_EVAL_MAX_RULES];
} fusion_evaluation;

/*
 * The host's function table. Append-only within a major version; `size` is
 * sizeof(fusion_host_api) as the host was built, so a plugin can test for a
 * member with FUSION_HOST_HAS(host, member) before using it.
 */
typedef struct fusion_host_api {
    uint32_t size;
    uint16_t abi_major;
    uint16_t abi_minor;

    /* Logging, attributed by the host to the calling overlay. */
    void (*log)(fusion_log_level level, const char *fmt, ...) FUSION_PRINTF(2, 3);

    /* Routing context of the request (never NULL; "" when unknown). */
    const char *(*req_scenario_type)(const fusion_request *req);
    const char *(*req_scenario_id)(const fusion_request *req);
    /* Caller's confidence in [0,1], or a negative value when not given. */
    double (*req_confidence)(const fusion_request *req);

    /* The caller's messages, in order. Content is the text of the message
     * (array contents are joined); role is "system", "user", ... */
    size_t (*req_message_count)(const fusion_request *req);
    const char *(*req_message_role)(const fusion_request *req, size_t i);
    const char *(*req_message_content)(const fusion_request *req, size_t i);

    /* A top-level numeric field of the request (e.g. "temperature").
     * Returns 1 and sets *out when present and numeric, 0 otherwise. */
    int (*req_get_number)(const fusion_request *req, const char *field, double *out);

    /* Rewrites. Each returns 0 on success, -1 on refusal (bad argument,
     * out of memory); the host copies what it is given.
     * req_set_number / req_set_integer set a top-level sampling parameter,
     * and only these: temperature, top_p, presence_penalty,
     * frequency_penalty, max_tokens, max_completion_tokens, seed. Any other
     * field (stream, n, model, ...), a non-finite value, or a field the
     * caller sent as something other than a number or null is refused with
     * -1 (logged at debug level). */
    int (*req_prepend_system)(fusion_request *req, const char *text);
    int (*req_set_number)(fusion_request *req, const char *field, double value);
    int (*req_set_integer)(fusion_request *req, const char *field, int64_t value);

    /* Metrics: adds `delta` to the overlay's counter `event`
     * ([a-z0-9_], at most 50 chars), exported as
     * fusion_overlay_events_total{overlay,result=event}. */
    void (*metric_count)(const char *event, double delta);

    /* ---- 1.1: check FUSION_HOST_HAS(host, member) before use ---- */

    /* The model the caller asked for ("" when none). */
    const char *(*req_model)(const fusion_request *req);

    /* The overlay's `config:` by key path, during init() only (`args` is
     * init's): "temperature", "limits.max_tokens", "keywords.2" (a list
     * element). Each returns `dflt` when the key is absent, null, or of
     * another type; config_integer also when the number is not whole.
     * Strings are valid until init() returns: copy what you keep.
     * config_count is the length of a list (0 when not a list); read its
     * strings with config_string(args, "list.N", NULL). */
    const char *(*config_string)(const fusion_init_args *args, const char *path, const char *dflt);
    double (*config_number)(const fusion_init_args *args, const char *path, double dflt);
    int64_t (*config_integer)(const fusion_init_args *args, const char *path, int64_t dflt);
    int (*config_bool)(const fusion_init_args *args, const char *path, int dflt);
    size_t (*config_count)(const fusion_init_args *args, const char *path);
    /* What is at a path (FUSION_CONFIG_ABSENT when nothing), and the keys
     * of an object ("" is the whole config): the i-th key, NULL past the
     * last. Enough to refuse unknown keys and wrong types with a message. */
    int (*config_type)(const fusion_init_args *args, const char *path);
    const char *(*config_key)(const fusion_init_args *args, const char *path, size_t i);
} fusion_host_api;

/* config_type() values (1.1). */
enum {
    FUSION_CONFIG_ABSENT = 0,
    FUSION_CONFIG_NULL,
    FUSION_CONFIG_BOOL,
    FUSION_CONFIG_NUMBER,
    FUSION_CONFIG_STRING,
    FUSION_CONFIG_LIST,
    FUSION_CONFIG_OBJECT
};

#define FUSION_HOST_HAS(host, member)                                                              \
    ((host)->size >= offsetof(fusion_host_api, member) + sizeof((host)->member) &&                 \
     (host)->member != NULL)

/* What init() receives. Append-only; check `size` like the host table. */
struct fusion_init_args {
    uint32_t size;
    const fusion_host_api *host;
    const char *config_json; /* the overlay's `config:` as a JSON object text */
    size_t config_len;
    const fusion_directive *directives; /* the feature's enabled_overlays */
    size_t directive_count;
    char *error;       /* init() may write why it failed here ... */
    size_t error_size; /* ... at most this many bytes, NUL included */
    /* 1.1: the host's parsed config, read through config_*(); opaque. */
    const void *host_config;
};

typedef struct fusion_overlay_descriptor {
    /* Checked by the host before anything else; set by FUSION_OVERLAY_DEFINE. */
    uint32_t magic;
    uint16_t abi_major;
    uint16_t abi_minor;
    uint32_t size;

    const char *name;        /* [a-z][a-z0-9_]*, == its feature's name */
    const char *version;     /* semantic version, e.g. "1.2.0" */
    const char *description; /* one line */
    const char *license;     /* SPDX identifier */

    /* Required. Returns 0 and sets *state, or non-zero (and args->error). */
    int (*init)(const fusion_init_args *args, void **state);
    /* Required. Releases everything init() and the hooks took. */
    void (*fini)(void *state);
    /* Optional. How well the request suits the overlay, in [0,1];
     * 0 means "not for me" and the host serves the baseline (no_match). */
    double (*match)(void *state, const fusion_request *req, const fusion_host_api *host);
    /* Required. Rewrites the request; non-zero means hook_error and the host
     * serves the baseline. */
    int (*apply)(void *state, fusion_request *req, const fusion_host_api *host);
    /* Required. Scores `answer` (UTF-8, `len` bytes, not NUL-terminated
     * necessarily) into `out` (zeroed by the host). Non-zero: hook_error. */
    int (*evaluate)(void *state, const fusion_request *req, const char *answer, size_t len,
                    fusion_evaluation *out, const fusion_host_api *host);
} fusion_overlay_descriptor;

typedef const fusion_overlay_descriptor *(*fusion_overlay_entry_fn)(void);

/* Declares the entry function with a descriptor built from designated
 * initialisers: FUSION_OVERLAY_DEFINE(.name = "x", .version = "1.0.0", ...) */
#define FUSION_OVERLAY_DEFINE(...)                                                                 \
    FUSION_EXPORT const fusion_overlay_descriptor *FUSION_OVERLAY_ENTRY(void);                     \
    FUSION_EXPORT const fusion_overlay_descriptor *FUSION_OVERLAY_ENTRY(void)                      \
    {                                                                                              \
        static const fusion_overlay_descriptor fusion_descriptor_ = {                              \
            .magic = FUSION_OVERLAY_MAGIC,                                                         \
            .abi_major = FUSION_ABI_MAJOR,                                                         \
            .abi_minor = FUSION_ABI_MINOR,                                                         \
            .size = (uint32_t)sizeof(fusion_overlay_descriptor),                                   \
            __VA_ARGS__};                                                                          \
        return &fusion_descriptor_;                                                                \
    }

/* Appends a rule result; returns 0, or -1 when `out` is full. */
static inline int fusion_eval_add(fusion_evaluation *out, const char *name, double score,
                                  const char *detail)
{
    if (out->rule_count >= FUSION_EVAL_MAX_RULES)
        return -1;
    fusion_rule_result *r = &out->rules[out->rule_count++];
    r->name = name;
    r->score = score < 0.0 ? 0.0 : (score > 1.0 ? 1.0 : score);
    r->passed = r->score >= 0.5; /* a 1.1 host sets it again (rule_pass_mark) */
    r->detail = detail;
    return 0;
}

#ifdef __cplusplus
}
#endif

#endif /* FUSION_OVERLAY_H */
