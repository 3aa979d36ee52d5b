/*
 * upstate.c - the name-keyed shared region of per-upstream state. See upstate.h.
 */
#include "upstate.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

struct gw_upstates {
    gw_upstate_t slots[GW_UPSTATE_MAX];
};

gw_upstates_t *gw_upstates_new(void)
{
    void *p = mmap(NULL, sizeof(gw_upstates_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                   -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void gw_upstates_free(gw_upstates_t *u)
{
    if (u != NULL)
        munmap(u, sizeof(*u));
}

gw_upstate_t *gw_upstates_slot(gw_upstates_t *u, uint32_t index)
{
    return &u->slots[index];
}

void gw_upstate_breaker_config(const gw_config_t *cfg, const gw_upstream_config_t *uc,
                               br_config_t *out)
{
    const gw_breaker_config_t *b = &uc->breaker;
    memset(out, 0, sizeof(*out));
    out->consecutive_failures = b->consecutive_failures;
    out->failure_rate_ppm = b->failure_rate_ppm;
    out->window_ms = b->window_ms;
    out->min_calls = b->min_calls;
    out->slow_call_duration_ms = b->slow_call_duration_ms;
    out->slow_call_rate_ppm = b->slow_call_rate_ppm;
    out->open_duration_ms = b->open_duration_ms;
    out->max_open_duration_ms = b->max_open_duration_ms;
    out->half_open_requests = b->half_open_requests;
    /* A trial that never reports back (its worker died) is failed after this long. It must
     * outlast the slowest request the upstream may legitimately take: the longest route timeout
     * to it (a streaming body keeps an idle timeout of the same length), plus margin. */
    uint64_t longest = uc->timeout_ms;
    for (size_t i = 0; i < cfg->nroutes; i++)
        if (&cfg->upstreams[cfg->routes[i].upstream_index] == uc &&
            cfg->routes[i].timeout_ms > longest)
            longest = cfg->routes[i].timeout_ms;
    out->probe_timeout_ms =
        longest + 1000 > b->open_duration_ms ? longest + 1000 : b->open_duration_ms;
}

/* FNV-1a over the settings that, when changed, must reset the slot. */
static uint64_t signature(const gw_config_t *cfg, const gw_upstream_config_t *uc)
{
    br_config_t bc;
    gw_upstate_breaker_config(cfg, uc, &bc);
    uint64_t h = 1469598103934665603ull;
    const unsigned char *p = (const unsigned char *)&bc;
    for (size_t i = 0; i < sizeof(bc); i++)
        h = (h ^ p[i]) * 1099511628211ull;
    for (size_t k = 0; k < uc->nhosts; k++) {
        for (const char *s = uc->hosts[k].text; *s != '\0'; s++)
            h = (h ^ (unsigned char)*s) * 1099511628211ull;
        h = (h ^ ',') * 1099511628211ull;
    }
    return h;
}

static void reset_slot(gw_upstate_t *s, const gw_config_t *cfg, const gw_upstream_config_t *uc,
                       uint64_t sig, uint64_t now_ms)
{
    br_config_t bc;
    gw_upstate_breaker_config(cfg, uc, &bc);
    memset(s, 0, sizeof(*s));
    snprintf(s->name, sizeof(s->name), "%s", uc->name);
    s->signature = sig;
    s->nhosts = (uint32_t)uc->nhosts;
    br_shared_init(&s->pub);
    br_breaker_init(&s->owner, &bc, now_ms);
    br_breaker_publish(&s->owner, &s->pub, now_ms);
}

static gw_upstate_t *find(gw_upstates_t *u, const char *name)
{
    for (size_t i = 0; i < GW_UPSTATE_MAX; i++)
        if (strcmp(u->slots[i].name, name) == 0)
            return &u->slots[i];
    return NULL;
}

int gw_upstates_bind(gw_upstates_t *u, const gw_config_t *cfg, uint64_t generation,
                     uint64_t oldest_live, uint64_t now_ms, uint32_t *slot_of)
{
    size_t free_slots = 0, needed = 0;
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        if (cfg->upstreams[i].nhosts > GW_MAX_HOSTS)
            return -E2BIG;
        needed += find(u, cfg->upstreams[i].name) == NULL;
    }
    for (size_t i = 0; i < GW_UPSTATE_MAX; i++) {
        gw_upstate_t *s = &u->slots[i];
        if (s->name[0] != '\0' && s->bound_generation < oldest_live)
            s->name[0] = '\0'; /* no live generation names it any more */
        free_slots += s->name[0] == '\0';
    }
    if (needed > free_slots)
        return -ENOSPC;
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const gw_upstream_config_t *uc = &cfg->upstreams[i];
        uint64_t sig = signature(cfg, uc);
        gw_upstate_t *s = find(u, uc->name);
        if (s == NULL)
            s = find(u, "");
        if (s->name[0] == '\0' || s->signature != sig)
            reset_slot(s, cfg, uc, sig, now_ms);
        s->bound_generation = generation;
        slot_of[i] = (uint32_t)(s - u->slots);
    }
    return 0;
}
