/*
 * server.h - the stub's HTTP side: the libmicrohttpd daemon, the OpenAI
 * routes, fault injection and the introspection routes for tests.
 */
#ifndef STUB_SERVER_H
#define STUB_SERVER_H

#include <stdint.h>
#include <sys/socket.h>

struct stub_config {
    const char *model;   /* reported when a request names none */
    long delay_ms;       /* default answer delay, per request: "delay_ms" */
    long chunk_delay_ms; /* default gap between stream chunks */
    unsigned conn_limit; /* MHD connection limit */
    int quiet;           /* no per-request log lines, no MHD error log */
};

struct stub_server;

/*
 * Starts the daemon on `addr` (port 0: the kernel picks one; the bound port
 * goes to *port). Returns NULL after printing why.
 */
struct stub_server *stub_server_start(const struct stub_config *cfg, const struct sockaddr *addr,
                                      socklen_t addrlen, uint16_t *port);

/* Resumes every waiting connection, stops the daemon, frees everything. */
void stub_server_stop(struct stub_server *s);

#endif
