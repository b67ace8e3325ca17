/* plugindir.c - see plugindir.h. */
#include "plugindir.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int fh_plugin_files_list(const char *dir, fh_plugin_files *out)
{
    out->paths = NULL;
    out->count = 0;
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    size_t cap = 0;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (e->d_name[0] == '.' || len < 4 || strcmp(e->d_name + len - 3, ".so") != 0)
            continue;
        if (out->count == cap) {
            cap = cap ? cap * 2 : 8;
            char **grown = realloc(out->paths, cap * sizeof(*grown));
            if (!grown) {
                rc = -1;
                break;
            }
            out->paths = grown;
        }
        if (asprintf(&out->paths[out->count], "%s/%s", dir, e->d_name) < 0) {
            rc = -1;
            break;
        }
        out->count++;
    }
    closedir(d);
    if (rc != 0) {
        fh_plugin_files_free(out);
        errno = ENOMEM;
        return -1;
    }
    if (out->count)
        qsort(out->paths, out->count, sizeof(*out->paths), cmp_str);
    return 0;
}

void fh_plugin_files_free(fh_plugin_files *f)
{
    for (size_t i = 0; i < f->count; i++)
        free(f->paths[i]);
    free(f->paths);
    f->paths = NULL;
    f->count = 0;
}
