/*
 * request.h - struct fusion_request: one chat-completion request body being
 * routed, as the SDK's opaque type, plus its routing context.
 *
 * Owns: the parsed JSON body (jansson) and the context strings. A request
 * belongs to one thread at a time (the one routing it); not thread-safe.
 */
#ifndef FH_REQUEST_H
#define FH_REQUEST_H

#include "fusion/overlay.h"

#include <jansson.h>
#include <stddef.h>

struct fusion_request {
    json_t *body; /* the chat-completion object, `fusion` removed */
    char *scenario_type;
    char *scenario_id;
    char *key;
    char *request_id;
    double confidence; /* < 0: not given */
    int had_fusion;    /* the body had a `fusion` member (now removed) */
    /* Scratch for req_message_content() of array contents; freed with req. */
    char **joined;
    size_t joined_count;
};

/* Parses a request body. Takes the routing context from its `fusion`
 * object ({"scenario_type","scenario_id","confidence","key"}) and removes
 * it; the strings follow the rule of fh_request_set_context(). Returns NULL with a message for the
 * caller (HTTP 400) when the body is not a JSON object, `messages` is not an array of objects, or a
 * fusion field has the wrong type or range (confidence outside [0,1]). */
fusion_request *fh_request_parse(const char *body, size_t len, char *err, size_t errlen);
void fh_request_free(fusion_request *req);

/* Context setters for header-provided values (copy; NULL or "" clears).
 * Each string must be at most 256 bytes of [A-Za-z0-9_.:-] and confidence
 * NaN-free and at most 1 (negative: not given), else -1 and req unchanged. */
int fh_request_set_context(fusion_request *req, const char *scenario_type, const char *scenario_id,
                           const char *key, double confidence);
/* The same, writing why it refused into err (the caller's HTTP 400). */
int fh_request_set_context_checked(fusion_request *req, const char *scenario_type,
                                   const char *scenario_id, const char *key, double confidence,
                                   char *err, size_t errlen);
int fh_request_set_id(fusion_request *req, const char *request_id);

/* The body as compact JSON text (malloc'd), what goes upstream. */
char *fh_request_dump(const fusion_request *req, int pretty);

#endif
