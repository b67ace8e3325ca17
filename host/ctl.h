/*
 * ctl.h - the admin commands of the command line: a client of the admin
 * API a running daemon serves (admin.listen; docs/admin-api.md).
 *
 *   list, status, enable NAME, disable NAME, unload NAME, load PATH,
 *   reload, reset NAME, flags show, health
 *
 * Owns nothing past one call: each command is one HTTP request (libcurl,
 * easy interface) on a unix socket or TCP with a bearer token, and its
 * answer printed for people (tables, key: value lines) or, with --json, as
 * the daemon's JSON. Runs on the main thread of a short-lived process.
 *
 * Exit codes: 0 done, 1 refused or failed (an error answer, health not ok),
 * 2 usage, 3 no HTTP answer from the admin API (no socket, refused,
 * timed out) - so scripts can tell "the daemon said no" from "no daemon".
 */
#ifndef FH_CTL_H
#define FH_CTL_H

#include <stdbool.h>

/* Where the admin commands look when neither --admin, $FUSION_HOST_ADMIN
 * nor -c FILE names an address: the daemon's default admin.listen. */
#define FH_CTL_DEFAULT_ADDR "unix:/run/fusion-host/admin.sock"
#define FH_CTL_ADDR_ENV     "FUSION_HOST_ADMIN"
#define FH_CTL_EXIT_DOWN    3

/* True when argv (argv[0] the command word, then its arguments) is an
 * admin command; `flags` is one only as `flags show`. */
bool fh_ctl_is_command(int argc, char **argv);

/* Runs the admin command in argv[0]. Options may come anywhere after it:
 * --admin ADDR, --token-file F, --json, -c/--config FILE. Returns the exit
 * status. */
int fh_ctl_main(int argc, char **argv);

#endif
