/*
 * plugindir.h - the plugin folder's listing: its *.so files, sorted, so
 * every command loads them in the same order. Stateless; any thread.
 */
#ifndef FH_PLUGINDIR_H
#define FH_PLUGINDIR_H

#include <stddef.h>

typedef struct fh_plugin_files {
    char **paths; /* "dir/name.so", malloc'd, sorted */
    size_t count;
} fh_plugin_files;

/* Returns 0, or -1 with errno set when the folder cannot be read. Hidden
 * files (a rename's temporary, ".x.so.tmp") are skipped. */
int fh_plugin_files_list(const char *dir, fh_plugin_files *out);
void fh_plugin_files_free(fh_plugin_files *f);

#endif
