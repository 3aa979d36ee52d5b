/*
 * stats.c - the shared counter region. See stats.h.
 *
 * Layout: a header, then for each worker one block: gw_worker_stats_t, the route stats
 * (nroutes + 1) and the upstream stats (nupstreams). Blocks are rounded up to 64 bytes so two
 * workers never write the same cache line.
 */
#include "stats.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

const uint64_t gw_stats_latency_bounds_us[GW_STATS_LATENCY_BUCKETS] = {
    1000,   2500,   5000,    10000,   25000,   50000,    100000,
    250000, 500000, 1000000, 2500000, 5000000, 10000000, UINT64_MAX};

struct gw_stats {
    size_t map_len;
    size_t block_len;
    uint32_t nworkers, nroutes, nupstreams;
    /* worker blocks follow, 64-byte aligned */
};

static size_t round64(size_t n)
{
    return (n + 63) & ~(size_t)63;
}

static size_t header_len(void)
{
    return round64(sizeof(gw_stats_t));
}

gw_stats_t *gw_stats_new(const gw_config_t *cfg, uint32_t nworkers)
{
    size_t block =
        round64(sizeof(gw_worker_stats_t) + (cfg->nroutes + 1) * sizeof(gw_route_stats_t) +
                cfg->nupstreams * sizeof(gw_upstream_stats_t));
    size_t len = header_len() + block * nworkers;
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    gw_stats_t *st = p; /* mmap memory is zeroed */
    st->map_len = len;
    st->block_len = block;
    st->nworkers = nworkers;
    st->nroutes = (uint32_t)cfg->nroutes;
    st->nupstreams = (uint32_t)cfg->nupstreams;
    return st;
}

void gw_stats_free(gw_stats_t *st)
{
    if (st != NULL)
        munmap(st, st->map_len);
}

uint32_t gw_stats_nworkers(const gw_stats_t *st)
{
    return st->nworkers;
}

gw_worker_stats_t *gw_stats_worker(gw_stats_t *st, uint32_t worker)
{
    return (gw_worker_stats_t *)((char *)st + header_len() + st->block_len * worker);
}

gw_route_stats_t *gw_stats_route(gw_stats_t *st, uint32_t worker, uint32_t route)
{
    gw_route_stats_t *routes = (gw_route_stats_t *)(gw_stats_worker(st, worker) + 1);
    return &routes[route];
}

gw_upstream_stats_t *gw_stats_upstream(gw_stats_t *st, uint32_t worker, uint32_t upstream)
{
    gw_route_stats_t *routes = (gw_route_stats_t *)(gw_stats_worker(st, worker) + 1);
    gw_upstream_stats_t *ups = (gw_upstream_stats_t *)(routes + st->nroutes + 1);
    return &ups[upstream];
}

void gw_stats_count_response(gw_route_stats_t *rs, int status, uint64_t latency_us)
{
    /* open addressing over the first GW_STATS_CODES - 1 slots; the last one is "other" */
    const size_t n = GW_STATS_CODES - 1;
    size_t i = (size_t)status % n, probes = 0;
    for (; probes < n; probes++, i = (i + 1) % n) {
        uint64_t code = GW_STAT_GET(rs->codes[i].code);
        if (code == (uint64_t)status)
            break;
        if (code == 0) {
            GW_STAT_SET(rs->codes[i].code, (uint64_t)status);
            break;
        }
    }
    if (probes == n)
        i = n;
    GW_STAT_ADD(rs->codes[i].count, 1);

    size_t b = 0;
    while (latency_us > gw_stats_latency_bounds_us[b])
        b++;
    GW_STAT_ADD(rs->latency_buckets[b], 1);
    GW_STAT_ADD(rs->latency_sum_us, latency_us);
    GW_STAT_ADD(rs->latency_count, 1);
}

void gw_stats_reset_gauges(gw_stats_t *st, uint32_t worker)
{
    gw_worker_stats_t *w = gw_stats_worker(st, worker);
    GW_STAT_SET(w->pid, 0);
    GW_STAT_SET(w->ready, 0);
    GW_STAT_SET(w->requests_inflight, 0);
    for (uint32_t u = 0; u < st->nupstreams; u++) {
        gw_upstream_stats_t *us = gw_stats_upstream(st, worker, u);
        GW_STAT_SET(us->inflight, 0);
        GW_STAT_SET(us->conn_active, 0);
        GW_STAT_SET(us->conn_idle, 0);
    }
}

const char *gw_restart_reason_name(gw_restart_reason_t r)
{
    static const char *const names[GW_RESTART_REASON_COUNT] = {"crash", "stall", "exit"};
    return (unsigned)r < GW_RESTART_REASON_COUNT ? names[r] : "unknown";
}

gw_shared_t *gw_shared_new(void)
{
    void *p =
        mmap(NULL, sizeof(gw_shared_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

void gw_shared_free(gw_shared_t *sh)
{
    if (sh != NULL)
        munmap(sh, sizeof(*sh));
}
