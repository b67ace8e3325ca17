/*
 * cli.h - the fusion-host command line: argument parsing and the offline
 * commands (check, flags validate, plugin-test). Runs on the main thread.
 */
#ifndef FH_CLI_H
#define FH_CLI_H

/* Returns the process exit status: 0 done, 1 refused/failed, 2 usage. */
int fh_cli_main(int argc, char **argv);

#endif
