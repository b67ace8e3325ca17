/* apierror.c - see apierror.h. */
#include "apierror.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

struct MHD_Response *fh_error_response(const char *type, const char *code, const char *message,
                                       const char *allow)
{
    json_t *o = json_pack("{s:{s:s, s:s, s:n, s:s}}", "error", "message", message, "type", type,
                          "param", "code", code);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text)
        return NULL;
    struct MHD_Response *r =
        MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(text);
        return NULL;
    }
    MHD_add_response_header(r, "Content-Type", "application/json");
    if (allow)
        MHD_add_response_header(r, "Allow", allow);
    return r;
}

enum MHD_Result fh_http_error_allow(struct MHD_Connection *conn, unsigned status, const char *type,
                                    const char *code, const char *message, const char *allow)
{
    struct MHD_Response *r = fh_error_response(type, code, message, allow);
    if (!r)
        return MHD_NO;
    enum MHD_Result rc = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return rc;
}

enum MHD_Result fh_http_error(struct MHD_Connection *conn, unsigned status, const char *type,
                              const char *code, const char *message)
{
    return fh_http_error_allow(conn, status, type, code, message, NULL);
}
