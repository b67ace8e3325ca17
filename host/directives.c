/*
 * directives.c - see directives.h. Reading is done with stdio; the UTF-8
 * check is the strict one (no overlongs, no surrogates) because the texts
 * are sent to the model inside JSON strings.
 */
#include "directives.h"

#include "jfast.h"
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Reads a whole text file; NULL with a reason in *why on failure. */
static char *read_text(const char *path, size_t *len, const char **why)
{
    /* O_NONBLOCK: a FIFO or device named *.md must not hang start-up. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    if (fd < 0) {
        *why = errno == ENOENT ? "missing" : strerror(errno);
        return NULL;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        *why = "not a regular file";
        return NULL;
    }
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        close(fd);
        *why = strerror(errno);
        return NULL;
    }
    char *buf = malloc(FH_DIRECTIVE_MAX_BYTES + 1);
    if (!buf) {
        fclose(f);
        *why = "out of memory";
        return NULL;
    }
    size_t n = fread(buf, 1, FH_DIRECTIVE_MAX_BYTES + 1, f);
    int err = ferror(f);
    fclose(f);
    if (err) {
        *why = "read error";
    } else if (n > FH_DIRECTIVE_MAX_BYTES) {
        *why = "larger than 64 KiB";
    } else if (!fh_utf8_valid(buf, n) || memchr(buf, '\0', n)) {
        *why = "not valid UTF-8 text";
    } else {
        size_t start = 0;
        while (start < n && (buf[start] == ' ' || buf[start] == '\n' || buf[start] == '\t' ||
                             buf[start] == '\r'))
            start++;
        if (start == n) {
            *why = "empty";
        } else {
            buf[n] = '\0';
            *len = n;
            return buf;
        }
    }
    free(buf);
    return NULL;
}

size_t fh_directives_load(const char *dir, const fh_feature *feature, fh_directive_set *out,
                          fh_diag *diag)
{
    size_t problems = 0;
    memset(out, 0, sizeof(*out));
    if (feature->enabled_overlay_count == 0)
        return 0;
    out->items = calloc(feature->enabled_overlay_count, sizeof(*out->items));
    if (!out->items) {
        fh_diag_add(diag, "%s: out of memory reading directive texts", feature->name);
        return 1;
    }
    for (size_t i = 0; i < feature->enabled_overlay_count; i++) {
        const char *name = feature->enabled_overlays[i];
        char *path = NULL;
        if (asprintf(&path, "%s/%s.md", dir, name) < 0) {
            problems++;
            continue;
        }
        const char *why = NULL;
        size_t len = 0;
        char *text = read_text(path, &len, &why);
        char *name_copy = text ? strdup(name) : NULL;
        if (!text || !name_copy) {
            fh_diag_add(diag,
                        "%s: micro-overlay text '%s' of feature %s is %s; write the directive "
                        "there or remove '%s' from its enabled_overlays",
                        path, name, feature->name, why ? why : "out of memory", name);
            free(text);
            problems++;
        } else {
            fusion_directive *d = &out->items[out->count++];
            d->name = name_copy;
            d->text = text;
            d->text_len = len;
        }
        free(path);
    }
    return problems;
}

void fh_directives_free(fh_directive_set *set)
{
    for (size_t i = 0; i < set->count; i++) {
        free((char *)set->items[i].name);
        free((char *)set->items[i].text);
    }
    free(set->items);
    memset(set, 0, sizeof(*set));
}

int fh_inputs_for(void *provider, const char *name, fh_overlay_inputs *in)
{
    fh_inputs_provider *p = provider;
    fh_directives_free(&p->current);
    memset(in, 0, sizeof(*in));
    if (!p->cfg)
        return 0;
    in->config_json = fh_config_overlay(p->cfg, name)->config_json;
    in->rule_pass_mark = fh_config_overlay(p->cfg, name)->rule_pass_mark;
    const fh_feature *feature = p->flags ? fh_flags_feature(p->flags, name) : NULL;
    if (!feature)
        return 0; /* no feature: init decides whether it can work without texts */
    fh_diag diag = {0};
    fh_directives_load(p->cfg->micro_overlays_dir, feature, &p->current, &diag);
    /* The overlay gets the texts that exist and its init() refuses if that
     * is not enough; the operator hears about the others here. */
    for (size_t i = 0; i < diag.count; i++)
        fh_warn("%s", diag.items[i]);
    fh_diag_clear(&diag);
    in->directives = p->current.items;
    in->directive_count = p->current.count;
    return 0;
}

void fh_inputs_provider_clear(fh_inputs_provider *p)
{
    fh_directives_free(&p->current);
}

uint64_t fh_inputs_fingerprint(fh_inputs_provider *p, const char *name)
{
    fh_overlay_inputs in;
    fh_inputs_for(p, name, &in);
    uint64_t h = 14695981039346656037ull; /* FNV-1a, with a separator after each field */
    const char *json = in.config_json ? in.config_json : "{}";
    for (const char *c = json; *c; c++)
        h = (h ^ (unsigned char)*c) * 1099511628211ull;
    for (size_t i = 0; i < in.directive_count; i++) {
        h = (h ^ 0x1e) * 1099511628211ull;
        for (const char *c = in.directives[i].name; *c; c++)
            h = (h ^ (unsigned char)*c) * 1099511628211ull;
        h = (h ^ 0x1f) * 1099511628211ull;
        for (size_t k = 0; k < in.directives[i].text_len; k++)
            h = (h ^ (unsigned char)in.directives[i].text[k]) * 1099511628211ull;
    }
    /* The rule pass mark is the generation's too (set at load). */
    unsigned char mark[sizeof(double)];
    memcpy(mark, &in.rule_pass_mark, sizeof(mark));
    h = (h ^ 0x1d) * 1099511628211ull;
    for (size_t k = 0; k < sizeof(mark); k++)
        h = (h ^ mark[k]) * 1099511628211ull;
    return h;
}
