/*
 * metrics.c - Prometheus text exposition (format 0.0.4) of the shared stats.
 *
 * Runs in the control process on each scrape: sums every worker slot, so the numbers are the
 * gateway's, not one worker's. Counters never go backwards because a replacement worker takes
 * over its predecessor's slot (stats.h). Label values are escaped as the format requires.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "health.h"

/* Writes a label value escaped for the exposition format (backslash, quote, newline). */
static void put_label(FILE *f, const char *v)
{
    for (; *v != '\0'; v++) {
        if (*v == '\\' || *v == '"')
            fputc('\\', f), fputc(*v, f);
        else if (*v == '\n')
            fputs("\\n", f);
        else
            fputc(*v, f);
    }
}

static void header(FILE *f, const char *name, const char *type, const char *help)
{
    fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static const char *route_label(const gw_config_t *cfg, size_t r)
{
    return r < cfg->nroutes ? cfg->routes[r].name : "(no_route)";
}

/* Sums one status code of route r over all workers' tables. */
static void render_requests(FILE *f, const gw_config_t *cfg, gw_stats_t *st)
{
    uint32_t nw = gw_stats_nworkers(st);
    header(f, "breakwater_requests_total", "counter",
           "Requests answered, by route and HTTP status code (499: client went away first).");
    for (size_t r = 0; r <= cfg->nroutes; r++) {
        /* collect distinct codes across workers (each table has at most GW_STATS_CODES) */
        uint64_t codes[GW_STATS_CODES * 4];
        uint64_t counts[GW_STATS_CODES * 4];
        size_t n = 0;
        for (uint32_t w = 0; w < nw; w++) {
            gw_route_stats_t *rs = gw_stats_route(st, w, (uint32_t)r);
            for (size_t i = 0; i < GW_STATS_CODES; i++) {
                uint64_t code = GW_STAT_GET(rs->codes[i].code);
                uint64_t count = GW_STAT_GET(rs->codes[i].count);
                if (count == 0)
                    continue;
                size_t k = 0;
                while (k < n && codes[k] != code)
                    k++;
                if (k == n) {
                    if (n == sizeof(codes) / sizeof(codes[0]))
                        k = n - 1; /* fold into the last one: bounded output */
                    else
                        codes[n] = code, counts[n++] = 0;
                }
                counts[k] += count;
            }
        }
        for (size_t k = 0; k < n; k++) {
            fputs("breakwater_requests_total{route=\"", f);
            put_label(f, route_label(cfg, r));
            if (codes[k] == 0)
                fprintf(f, "\",code=\"other\"} %llu\n", (unsigned long long)counts[k]);
            else
                fprintf(f, "\",code=\"%llu\"} %llu\n", (unsigned long long)codes[k],
                        (unsigned long long)counts[k]);
        }
    }
}

static void render_latency(FILE *f, const gw_config_t *cfg, gw_stats_t *st)
{
    uint32_t nw = gw_stats_nworkers(st);
    header(f, "breakwater_request_duration_seconds", "histogram",
           "Time from the request reaching a worker to its response being done, by route.");
    for (size_t r = 0; r <= cfg->nroutes; r++) {
        uint64_t buckets[GW_STATS_LATENCY_BUCKETS] = {0}, sum = 0, count = 0;
        for (uint32_t w = 0; w < nw; w++) {
            gw_route_stats_t *rs = gw_stats_route(st, w, (uint32_t)r);
            for (size_t b = 0; b < GW_STATS_LATENCY_BUCKETS; b++)
                buckets[b] += GW_STAT_GET(rs->latency_buckets[b]);
            sum += GW_STAT_GET(rs->latency_sum_us);
            count += GW_STAT_GET(rs->latency_count);
        }
        uint64_t cumulative = 0;
        for (size_t b = 0; b < GW_STATS_LATENCY_BUCKETS; b++) {
            cumulative += buckets[b];
            fputs("breakwater_request_duration_seconds_bucket{route=\"", f);
            put_label(f, route_label(cfg, r));
            if (b + 1 == GW_STATS_LATENCY_BUCKETS)
                fprintf(f, "\",le=\"+Inf\"} %llu\n", (unsigned long long)cumulative);
            else
                fprintf(f, "\",le=\"%g\"} %llu\n", (double)gw_stats_latency_bounds_us[b] / 1e6,
                        (unsigned long long)cumulative);
        }
        fputs("breakwater_request_duration_seconds_sum{route=\"", f);
        put_label(f, route_label(cfg, r));
        fprintf(f, "\"} %.6f\n", (double)sum / 1e6);
        fputs("breakwater_request_duration_seconds_count{route=\"", f);
        put_label(f, route_label(cfg, r));
        fprintf(f, "\"} %llu\n", (unsigned long long)count);
    }
}

/* One metric per upstream from a field of gw_upstream_stats_t, summed over workers. */
static void render_upstream_field(FILE *f, const gw_config_t *cfg, gw_stats_t *st, const char *name,
                                  const char *type, const char *help, size_t offset, bool is_signed)
{
    header(f, name, type, help);
    for (size_t u = 0; u < cfg->nupstreams; u++) {
        int64_t sum = 0;
        for (uint32_t w = 0; w < gw_stats_nworkers(st); w++) {
            char *base = (char *)gw_stats_upstream(st, w, (uint32_t)u);
            if (is_signed)
                sum += GW_STAT_GET(*(int64_t *)(base + offset));
            else
                sum += (int64_t)GW_STAT_GET(*(uint64_t *)(base + offset));
        }
        fprintf(f, "%s{upstream=\"", name);
        put_label(f, cfg->upstreams[u].name);
        fprintf(f, "\"} %lld\n", (long long)sum);
    }
}

static void render_upstreams(FILE *f, const gw_config_t *cfg, gw_stats_t *st)
{
#define FIELD(name, type, help, field, sgn)                                                        \
    render_upstream_field(f, cfg, st, name, type, help, offsetof(gw_upstream_stats_t, field), sgn)
    FIELD("breakwater_upstream_requests_total", "counter", "Requests admitted to the upstream.",
          requests, false);
    FIELD("breakwater_upstream_connections_opened_total", "counter",
          "TCP connections established to the upstream's hosts.", conn_opened, false);
    FIELD("breakwater_upstream_connections_reused_total", "counter",
          "Requests sent on a pooled keep-alive connection.", conn_reused, false);
    FIELD("breakwater_upstream_connect_failures_total", "counter",
          "Connection attempts that failed or timed out.", conn_failed, false);
    FIELD("breakwater_upstream_retries_total", "counter",
          "Requests re-sent once after a pooled connection proved stale.", retries, false);
    FIELD("breakwater_upstream_bulkhead_rejected_total", "counter",
          "Requests refused because max_concurrent was reached.", bulkhead_rejected, false);
    FIELD("breakwater_breaker_rejected_total", "counter",
          "Requests refused with circuit_open, never sent upstream.", breaker_rejected, false);
    FIELD("breakwater_upstream_inflight", "gauge", "Requests in flight to the upstream.", inflight,
          true);
    FIELD("breakwater_upstream_connections_active", "gauge",
          "Connections carrying a request or connecting.", conn_active, true);
    FIELD("breakwater_upstream_connections_idle", "gauge", "Idle pooled keep-alive connections.",
          conn_idle, true);
#undef FIELD
    header(f, "breakwater_upstream_outcomes_total", "counter",
           "Outcome of each request sent to the upstream.");
    for (size_t u = 0; u < cfg->nupstreams; u++) {
        for (int k = 0; k < GW_OUTCOME_KIND_COUNT; k++) {
            uint64_t sum = 0;
            for (uint32_t w = 0; w < gw_stats_nworkers(st); w++)
                sum += GW_STAT_GET(gw_stats_upstream(st, w, (uint32_t)u)->outcomes[k]);
            fputs("breakwater_upstream_outcomes_total{upstream=\"", f);
            put_label(f, cfg->upstreams[u].name);
            fprintf(f, "\",outcome=\"%s\"} %llu\n", gw_outcome_kind_name((gw_outcome_kind_t)k),
                    (unsigned long long)sum);
        }
    }
}

static void render_breakers(FILE *f, const gw_runtime_t *rt, uint64_t now)
{
    const gw_config_t *cfg = rt->cfg;
    header(f, "breakwater_breaker_state", "gauge",
           "1 for the state each upstream's circuit breaker is in, 0 for the others.");
    for (size_t u = 0; u < cfg->nupstreams; u++) {
        br_snapshot_t snap;
        br_shared_read(&gw_runtime_upstate(rt, u)->pub, &snap);
        for (int s = 0; s < BR_STATE_COUNT; s++) {
            fputs("breakwater_breaker_state{upstream=\"", f);
            put_label(f, cfg->upstreams[u].name);
            fprintf(f, "\",state=\"%s\"} %d\n", br_state_name((br_state_t)s), (int)snap.state == s);
        }
    }
    header(f, "breakwater_breaker_transitions_total", "counter",
           "Circuit breaker state changes, by upstream and from/to state.");
    for (size_t u = 0; u < cfg->nupstreams; u++) {
        gw_upstate_t *st = gw_runtime_upstate(rt, u);
        for (int a = 0; a < BR_STATE_COUNT; a++)
            for (int b = 0; b < BR_STATE_COUNT; b++) {
                uint64_t n = __atomic_load_n(&st->transitions[a][b], __ATOMIC_RELAXED);
                if (n == 0)
                    continue;
                fputs("breakwater_breaker_transitions_total{upstream=\"", f);
                put_label(f, cfg->upstreams[u].name);
                fprintf(f, "\",from=\"%s\",to=\"%s\"} %llu\n", br_state_name((br_state_t)a),
                        br_state_name((br_state_t)b), (unsigned long long)n);
            }
    }
    header(f, "breakwater_host_healthy", "gauge",
           "1 unless active health checks marked the host down.");
    for (size_t u = 0; u < cfg->nupstreams; u++) {
        gw_upstate_t *st = gw_runtime_upstate(rt, u);
        for (size_t h = 0; h < cfg->upstreams[u].nhosts; h++) {
            fputs("breakwater_host_healthy{upstream=\"", f);
            put_label(f, cfg->upstreams[u].name);
            fprintf(f, "\",host=\"%s\"} %d\n", cfg->upstreams[u].hosts[h].text,
                    __atomic_load_n(&st->hosts[h].down, __ATOMIC_RELAXED) == 0);
        }
    }
    header(f, "breakwater_host_usable", "gauge",
           "1 when the host takes traffic (not marked down by health checks, not ejected).");
    for (size_t u = 0; u < cfg->nupstreams; u++) {
        gw_upstate_t *st = gw_runtime_upstate(rt, u);
        for (size_t h = 0; h < cfg->upstreams[u].nhosts; h++) {
            fputs("breakwater_host_usable{upstream=\"", f);
            put_label(f, cfg->upstreams[u].name);
            fprintf(f, "\",host=\"%s\"} %d\n", cfg->upstreams[u].hosts[h].text,
                    gw_host_usable(st, (uint32_t)h, now));
        }
    }
    header(f, "breakwater_outcomes_dropped_total", "counter",
           "Outcome records lost because a worker's ring to the breaker owner was full.");
    fprintf(f, "breakwater_outcomes_dropped_total %llu\n",
            (unsigned long long)gw_outq_dropped(rt->outq));
}

static void render_ratelimits(FILE *f, const gw_runtime_t *rt)
{
    const gw_config_t *cfg = rt->cfg;
    static const char *const names[] = {
        "breakwater_ratelimit_admitted_total", "breakwater_ratelimit_rejected_total",
        "breakwater_ratelimit_keys", "breakwater_ratelimit_evictions_total"};
    static const char *const types[] = {"counter", "counter", "gauge", "counter"};
    static const char *const helps[] = {
        "Requests a route's rate limit admitted.",
        "Requests a route's rate limit refused (429), never sent upstream.",
        "Keys (clients) held in a route's rate-limit table.",
        "Keys forgotten to make room in a route's rate-limit table."};
    for (int m = 0; m < 4; m++) {
        header(f, names[m], types[m], helps[m]);
        for (size_t r = 0; r < cfg->nroutes; r++) {
            br_keytable_t *t = rt->limiter_of[r];
            if (t == NULL)
                continue;
            uint64_t v = 0;
            if (m < 2) {
                for (uint32_t w = 0; w < gw_stats_nworkers(rt->stats); w++) {
                    gw_route_stats_t *rs = gw_stats_route(rt->stats, w, (uint32_t)r);
                    v += m == 0 ? GW_STAT_GET(rs->rl_admitted) : GW_STAT_GET(rs->rl_rejected);
                }
            } else {
                br_keytable_stats_t ks;
                br_keytable_stats(t, &ks);
                v = m == 2 ? ks.in_use : ks.evictions;
            }
            fprintf(f, "%s{route=\"", names[m]);
            put_label(f, cfg->routes[r].name);
            fprintf(f, "\"} %llu\n", (unsigned long long)v);
        }
    }
}

static void render_supervision(FILE *f, const gw_runtime_t *rt)
{
    header(f, "breakwater_worker_restarts_total", "counter",
           "Workers replaced by the supervisor, by reason (crash, stall, exit).");
    for (int r = 0; r < GW_RESTART_REASON_COUNT; r++)
        fprintf(f, "breakwater_worker_restarts_total{reason=\"%s\"} %llu\n",
                gw_restart_reason_name((gw_restart_reason_t)r),
                (unsigned long long)GW_STAT_GET(rt->shared->restarts[r]));
    header(f, "breakwater_crash_loop", "gauge",
           "1 while worker respawns are being delayed after repeated crashes.");
    fprintf(f, "breakwater_crash_loop %lld\n", (long long)GW_STAT_GET(rt->shared->crash_loop));
    header(f, "breakwater_events_total", "counter", "Events emitted on the events channel.");
    fprintf(f, "breakwater_events_total %llu\n", (unsigned long long)gw_events_emitted(rt->events));
    header(f, "breakwater_events_dropped_total", "counter",
           "Events lost because the channel was full or their writer died mid-write.");
    fprintf(f, "breakwater_events_dropped_total %llu\n",
            (unsigned long long)gw_events_dropped(rt->events));
    uint64_t faults = 0;
    for (uint32_t w = 0; w < gw_stats_nworkers(rt->stats); w++)
        faults += GW_STAT_GET(gw_stats_worker(rt->stats, w)->handler_faults);
    header(f, "breakwater_handler_faults_total", "counter",
           "Requests answered 500 internal_error by a guarded handler.");
    fprintf(f, "breakwater_handler_faults_total %llu\n", (unsigned long long)faults);
    header(f, "breakwater_config_generation", "gauge", "1 at start, +1 per applied reload.");
    fprintf(f, "breakwater_config_generation %llu\n",
            (unsigned long long)GW_STAT_GET(rt->shared->config_generation));
}

static void render_workers(FILE *f, gw_stats_t *st)
{
    uint64_t hits = 0, misses = 0, ready = 0;
    for (uint32_t w = 0; w < gw_stats_nworkers(st); w++) {
        gw_worker_stats_t *ws = gw_stats_worker(st, w);
        hits += GW_STAT_GET(ws->bufpool_hits);
        misses += GW_STAT_GET(ws->bufpool_misses);
        ready += GW_STAT_GET(ws->ready) == 1;
    }
    header(f, "breakwater_bufpool_hits_total", "counter", "I/O buffers reused from a pool.");
    fprintf(f, "breakwater_bufpool_hits_total %llu\n", (unsigned long long)hits);
    header(f, "breakwater_bufpool_misses_total", "counter", "I/O buffers newly allocated.");
    fprintf(f, "breakwater_bufpool_misses_total %llu\n", (unsigned long long)misses);
    header(f, "breakwater_workers", "gauge", "Worker processes configured and ready.");
    fprintf(f, "breakwater_workers{state=\"configured\"} %u\n", gw_stats_nworkers(st));
    fprintf(f, "breakwater_workers{state=\"ready\"} %llu\n", (unsigned long long)ready);
    header(f, "breakwater_build_info", "gauge", "Always 1; the version is a label.");
    fprintf(f, "breakwater_build_info{version=\"%s\"} 1\n", BW_VERSION);
}

static void render_health(FILE *f, const gw_health_stats_t *hs)
{
    header(f, "breakwater_health_probes_total", "counter",
           "Active health probes by result (skipped: the prober was saturated or had a local "
           "error).");
    fprintf(f, "breakwater_health_probes_total{result=\"ok\"} %llu\n", (unsigned long long)hs->ok);
    fprintf(f, "breakwater_health_probes_total{result=\"failed\"} %llu\n",
            (unsigned long long)hs->failed);
    fprintf(f, "breakwater_health_probes_total{result=\"skipped\"} %llu\n",
            (unsigned long long)hs->skipped);
    header(f, "breakwater_health_probes_inflight", "gauge", "Health probes open right now.");
    fprintf(f, "breakwater_health_probes_inflight %u\n", hs->inflight);
}

char *gw_metrics_render(const gw_runtime_t *rt, uint64_t now_ms, const gw_health_stats_t *hs)
{
    const gw_config_t *cfg = rt->cfg;
    gw_stats_t *st = rt->stats;
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    if (f == NULL)
        return NULL;
    render_requests(f, cfg, st);
    render_latency(f, cfg, st);
    render_upstreams(f, cfg, st);
    render_workers(f, st);
    render_supervision(f, rt);
    render_breakers(f, rt, now_ms);
    render_ratelimits(f, rt);
    if (hs != NULL)
        render_health(f, hs);
    if (fclose(f) != 0) {
        free(out);
        return NULL;
    }
    return out;
}
