/*
 * admin.h - the admin API's listener and connections (SPEC 5).
 *
 * Owns: the listening socket (admin.listen: a unix socket, mode 0660, by
 * default; TCP only with a bearer token from admin.token_file), its own
 * event loop thread ("fh-admin", a worker.h loop with an httpd.h server),
 * the connections on it, and the queue of requests waiting for the main
 * thread.
 *
 * What a request does is not decided here: every authorised request, with
 * its body, is queued for the main thread (the only one that loads
 * plugins, reloads and writes the operator state), which runs it with the
 * handler given to fh_admin_run() and hands the answer back; the admin
 * thread then writes it. A client that leaves meanwhile loses only its
 * answer. So the public listener and the workers never wait on operator
 * commands, and operator commands never queue behind client traffic.
 *
 * Threads: fh_admin_open/run/close on the main thread; the connections on
 * the admin thread; the queue under its mutex, with an eventfd that the
 * main loop polls (fh_admin_fd).
 */
#ifndef FH_ADMIN_H
#define FH_ADMIN_H

#include <stddef.h>
#include <sys/types.h>

typedef struct fh_admin fh_admin;

/* A request's answer: the HTTP status, and in *json a malloc'd JSON body
 * (the handler's to allocate, ours to free). */
typedef unsigned (*fh_admin_fn)(void *ud, const char *method, const char *path, const char *body,
                                size_t len, char **json);

/* Binds admin.listen and starts the admin thread. A unix socket path that
 * is a symlink or not a socket, or one another process still answers on,
 * is refused; a stale socket (nobody answers) is replaced. TCP needs a
 * token file owned by us and not readable by group or other. NULL with a
 * message naming the setting to fix. */
fh_admin *fh_admin_open(const char *listen, const char *token_file, char *err, size_t errlen);
/* Stops the thread, closes the connections, removes the socket file. */
void fh_admin_close(fh_admin *a);

/* The main loop polls this descriptor (readable: requests are waiting). */
int fh_admin_fd(const fh_admin *a);
/* Main thread: runs every waiting request through fn and sends the
 * answers. */
void fh_admin_run(fh_admin *a, fh_admin_fn fn, void *ud);

/* Reads the bearer token of admin.token_file into its SHA-256 digest: 0,
 * or -1 with a message (unreadable, owned by someone but root or `owner`,
 * readable by group or other, shorter than 16 characters). `check` judges
 * the file with it too. */
int fh_admin_read_token(const char *path, uid_t owner, unsigned char digest[32], char *err,
                        size_t errlen);

/* "unix:/run/fusion-host/admin.sock" or "127.0.0.1:9090": where it listens. */
const char *fh_admin_address(const fh_admin *a);

#endif
