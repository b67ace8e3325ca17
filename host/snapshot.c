/* snapshot.c - see snapshot.h. */
#include "snapshot.h"

#include "log.h"

#include <stdlib.h>

fh_snapshot *fh_snapshot_load(const char *config_path, const char *reson_features, fh_diag *diag)
{
    fh_snapshot *s = calloc(1, sizeof(*s));
    if (!s) {
        fh_diag_add(diag, "out of memory");
        return NULL;
    }
    atomic_init(&s->refs, 1);
    s->cfg = fh_config_load(config_path, diag);
    if (s->cfg)
        s->flags = fh_flags_load(s->cfg->feature_flags, diag);
    if (!s->cfg || !s->flags || fh_env_override_parse(reson_features, &s->ovr) != 0) {
        fh_snapshot_unref(s);
        return NULL;
    }
    fh_diag unknown = {0};
    fh_env_override_check(&s->ovr, s->flags, &unknown);
    for (size_t i = 0; i < unknown.count; i++)
        fh_warn("%s", unknown.items[i]);
    fh_diag_clear(&unknown);
    if (s->cfg->environment && !fh_flags_environment(s->flags, s->cfg->environment))
        fh_warn("%s: environment '%s' is not defined under environments:; using 100%% global "
                "rollout",
                s->flags->path, s->cfg->environment);
    return s;
}

fh_snapshot *fh_snapshot_ref(fh_snapshot *s)
{
    if (s)
        atomic_fetch_add(&s->refs, 1);
    return s;
}

void fh_snapshot_unref(fh_snapshot *s)
{
    if (!s || atomic_fetch_sub(&s->refs, 1) != 1)
        return;
    fh_env_override_free(&s->ovr);
    fh_flags_free(s->flags);
    fh_config_free(s->cfg);
    free(s);
}

void fh_snapshot_holder_init(fh_snapshot_holder *h)
{
    pthread_mutex_init(&h->lock, NULL);
    h->current = NULL;
    h->next_generation = 1;
    atomic_init(&h->installed, 0);
}

void fh_snapshot_holder_destroy(fh_snapshot_holder *h)
{
    fh_snapshot_unref(h->current);
    h->current = NULL;
    pthread_mutex_destroy(&h->lock);
}

fh_snapshot *fh_snapshot_get(fh_snapshot_holder *h)
{
    pthread_mutex_lock(&h->lock);
    fh_snapshot *s = fh_snapshot_ref(h->current);
    pthread_mutex_unlock(&h->lock);
    return s;
}

void fh_snapshot_install(fh_snapshot_holder *h, fh_snapshot *s)
{
    pthread_mutex_lock(&h->lock);
    fh_snapshot *old = h->current;
    s->generation = h->next_generation++;
    h->current = s;
    atomic_store(&h->installed, s->generation);
    pthread_mutex_unlock(&h->lock);
    fh_snapshot_unref(old);
}

uint64_t fh_snapshot_installed(fh_snapshot_holder *h)
{
    return atomic_load(&h->installed);
}
