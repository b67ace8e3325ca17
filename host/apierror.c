/* apierror.c - see apierror.h. */
#include "apierror.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

fh_hresp *fh_error_response(const char *type, const char *code, const char *message,
                            const char *allow)
{
    json_t *o = json_pack("{s:{s:s, s:s, s:n, s:s}}", "error", "message", message, "type", type,
                          "param", "code", code);
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text)
        return NULL;
    fh_hresp *r = fh_hresp_buffer(text, strlen(text));
    if (!r || fh_hresp_header(r, "Content-Type", "application/json") != 0 ||
        (allow && fh_hresp_header(r, "Allow", allow) != 0)) {
        fh_hresp_free(r);
        return NULL;
    }
    return r;
}

int fh_http_error_allow(fh_hconn *conn, unsigned status, const char *type, const char *code,
                        const char *message, const char *allow)
{
    return fh_hconn_respond(conn, status, fh_error_response(type, code, message, allow));
}

int fh_http_error(fh_hconn *conn, unsigned status, const char *type, const char *code,
                  const char *message)
{
    return fh_http_error_allow(conn, status, type, code, message, NULL);
}
