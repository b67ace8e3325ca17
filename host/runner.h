/*
 * runner.h - a real daemon for the operations toolkit (golden, bench):
 * `fusion-host serve` started as a child on loopback ports chosen at run
 * time, configured from the operator's config file, in front of the bundled
 * stub model (started too) or a given upstream; and the client calls the
 * tools make to it.
 *
 * Owns: the two child processes, a temporary folder (the derived config,
 * the state folder, the admin socket), and the digest of the configuration
 * the daemon runs with (config file, flags file, directive texts).
 *
 * The derived config is the operator's, with what must differ overridden:
 * ports (0), the admin socket and state folder (temporary), the upstream
 * (the stub), paths made absolute, no folder watcher, no client keys, and
 * every overlay's budget gate and breaker lifted (the tools measure the
 * overlays; the gates have their own tests).
 *
 * Threads: the calling thread only.
 */
#ifndef FH_RUNNER_H
#define FH_RUNNER_H

#include <stdbool.h>
#include <stddef.h>

typedef struct fh_runner fh_runner;

/* upstream: NULL to start the bundled stub model (fusion-stub-llm next to
 * this binary, or $FUSION_STUB_LLM). NULL with a message on failure. */
fh_runner *fh_runner_start(const char *config_path, const char *upstream, char *err, size_t errlen);
/* Stops both children (SIGTERM, then SIGKILL) and removes the folder. */
void fh_runner_stop(fh_runner *r);

/* The SHA-256 (hex) of the config file, the flags file and every
 * directive text, in a fixed order. */
const char *fh_runner_config_hash(const fh_runner *r);
/* Whether the upstream is the bundled stub (its last request is known). */
int fh_runner_has_stub(const fh_runner *r);

typedef struct fh_run_result {
    long status;       /* HTTP status; 0: no answer */
    double latency_ms; /* first byte sent to last byte received */
    char overlay[80];  /* X-Fusion-Overlay: "name/version" or "baseline" */
    char reason[64];   /* X-Fusion-Reason */
    char *body;        /* malloc'd */
    size_t len;
} fh_run_result;

/* POST /v1/chat/completions with `body`. 0, or -1 (transport error, in
 * out->reason as "transport_error"). Free out->body. */
int fh_runner_chat(fh_runner *r, const char *body, fh_run_result *out);
/* The body of the last request the stub received (malloc'd), or NULL. */
char *fh_runner_upstream_last(fh_runner *r);
/* Forgets the requests the stub recorded, so the next "last" is this
 * scenario's or nothing. */
void fh_runner_clear_upstream(fh_runner *r);
/* Whether SIGINT, SIGTERM or SIGHUP arrived since fh_runner_start (which
 * installs the handlers): stop, then fh_runner_stop. */
bool fh_runner_interrupted(void);

/* An admin API call (e.g. "POST", "/admin/overlays/x/disable"): the HTTP
 * status, and the body in *body when given (malloc'd). */
long fh_runner_admin(fh_runner *r, const char *method, const char *path, char **body);

#endif
