/*
 * apierror.h - the OpenAI error shape for every error the host makes
 * itself: {"error": {"message", "type", "param", "code"}} with param null.
 * Stateless; any thread (responses are independent of connections).
 */
#ifndef FH_APIERROR_H
#define FH_APIERROR_H

#include <microhttpd.h>

/* A JSON error response (Content-Type set), or NULL when out of memory.
 * `allow` adds an Allow header (405); NULL for none. */
struct MHD_Response *fh_error_response(const char *type, const char *code, const char *message,
                                       const char *allow);

/* Queues an error on a connection, from inside an MHD access handler. */
enum MHD_Result fh_http_error(struct MHD_Connection *conn, unsigned status, const char *type,
                              const char *code, const char *message);
enum MHD_Result fh_http_error_allow(struct MHD_Connection *conn, unsigned status, const char *type,
                                    const char *code, const char *message, const char *allow);

#endif
