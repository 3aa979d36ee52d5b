/*
 * limiter.c - the registry of rate-limit tables. See limiter.h.
 */
#include "limiter.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>

typedef struct entry {
    char route[72]; /* "" = free */
    uint32_t max_keys;
    br_gcra_params_t params;
    void *mem;
    size_t size;
    br_keytable_t *table;
    uint64_t bound_generation;
} entry_t;

struct gw_limiters {
    entry_t e[GW_LIMITERS_MAX];
};

gw_limiters_t *gw_limiters_new(void)
{
    return calloc(1, sizeof(gw_limiters_t));
}

static void release(entry_t *e)
{
    if (e->mem != NULL)
        munmap(e->mem, e->size);
    memset(e, 0, sizeof(*e));
}

void gw_limiters_free(gw_limiters_t *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < GW_LIMITERS_MAX; i++)
        release(&l->e[i]);
    free(l);
}

int gw_limiter_params(const gw_ratelimit_config_t *rl, br_gcra_params_t *out)
{
    return br_gcra_params_init(out, rl->rate.tokens, rl->rate.period_ms, rl->burst);
}

void gw_limiters_collect(gw_limiters_t *l, uint64_t oldest_live)
{
    for (size_t i = 0; i < GW_LIMITERS_MAX; i++)
        if (l->e[i].route[0] != '\0' && l->e[i].bound_generation < oldest_live)
            release(&l->e[i]);
}

static entry_t *find(gw_limiters_t *l, const char *route, uint32_t max_keys,
                     const br_gcra_params_t *p)
{
    for (size_t i = 0; i < GW_LIMITERS_MAX; i++) {
        entry_t *e = &l->e[i];
        if (strcmp(e->route, route) == 0 && e->max_keys == max_keys &&
            br_gcra_params_equal(&e->params, p))
            return e;
    }
    return NULL;
}

static int make(entry_t *e, const char *route, uint32_t max_keys, const br_gcra_params_t *p)
{
    br_keytable_config_t kc = {.max_keys = max_keys, .params = *p};
    if (getrandom(kc.hash_key, sizeof(kc.hash_key), 0) != (ssize_t)sizeof(kc.hash_key))
        return -EIO;
    size_t size = br_keytable_size(max_keys);
    if (size == 0)
        return -EINVAL;
    void *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return -ENOMEM;
    br_keytable_t *t = NULL;
    int r = br_keytable_init(&t, mem, size, &kc);
    if (r != 0) {
        munmap(mem, size);
        return r;
    }
    snprintf(e->route, sizeof(e->route), "%s", route);
    e->max_keys = max_keys;
    e->params = *p;
    e->mem = mem;
    e->size = size;
    e->table = t;
    return 0;
}

int gw_limiters_bind(gw_limiters_t *l, const gw_config_t *cfg, uint64_t generation,
                     uint64_t oldest_live, br_keytable_t **table_of)
{
    gw_limiters_collect(l, oldest_live);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const gw_route_config_t *rc = &cfg->routes[i];
        table_of[i] = NULL;
        if (!rc->rate_limit.enabled)
            continue;
        br_gcra_params_t p;
        int r = gw_limiter_params(&rc->rate_limit, &p);
        if (r != 0)
            return r;
        entry_t *e = find(l, rc->name, rc->rate_limit.max_keys, &p);
        if (e == NULL) {
            for (size_t k = 0; e == NULL && k < GW_LIMITERS_MAX; k++)
                if (l->e[k].route[0] == '\0')
                    e = &l->e[k];
            if (e == NULL)
                return -ENOSPC;
            if ((r = make(e, rc->name, rc->rate_limit.max_keys, &p)) != 0)
                return r;
        }
        e->bound_generation = generation;
        table_of[i] = e->table;
    }
    return 0;
}
