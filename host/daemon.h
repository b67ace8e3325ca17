/*
 * daemon.h - `fusion-host serve`: wires config, registry, upstream,
 * pipeline and the HTTP listener together and runs the main loop (signals,
 * reload, watchdog, reaping) until SIGTERM.
 */
#ifndef FH_DAEMON_H
#define FH_DAEMON_H

typedef struct fh_serve_opts {
    const char *config_path;
    const char *ready_file; /* written once serving: "listen=HOST:PORT\n" */
} fh_serve_opts;

/* Returns the process exit status: 0 after a clean drain, 1 when it could
 * not start. */
int fh_serve(const fh_serve_opts *o);

#endif
