/*
 * apierror.h - the OpenAI error shape for every error the host makes
 * itself: {"error": {"message", "type", "param", "code"}} with param null.
 * Stateless; any thread (responses are independent of connections).
 */
#ifndef FH_APIERROR_H
#define FH_APIERROR_H

#include "httpd.h"

/* A JSON error response (Content-Type set), or NULL when out of memory.
 * `allow` adds an Allow header (405); NULL for none. */
fh_hresp *fh_error_response(const char *type, const char *code, const char *message,
                            const char *allow);
/* Queues an error on a connection, from inside its request callback.
 * 0, or -1 (the connection is then closed). */
int fh_http_error(fh_hconn *conn, unsigned status, const char *type, const char *code,
                  const char *message);
int fh_http_error_allow(fh_hconn *conn, unsigned status, const char *type, const char *code,
                        const char *message, const char *allow);

#endif
