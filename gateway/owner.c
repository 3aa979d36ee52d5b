/*
 * owner.c - breaker and outlier owner in the control process. See owner.h.
 *
 * Loop: an eventfd poll wakes us for urgent records (failures, trials); a 10 ms timer drains the
 * rest, ticks the breakers whose deadline passed, publishes every breaker (publishing also
 * collects the trial permits workers claimed), ends ejections that ran out, and watches for
 * upstreams left without a usable host.
 */
#include "owner.h"

#include <errno.h>
#include <pthread.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "outcome.h"

#define EJECTION_GROWTH_CAP 10

/* Per route: is the share of rate-limited requests above the rule's ratio, and since when. */
typedef struct rlwatch {
    uint64_t admitted, rejected; /* totals at the last sample */
    uint64_t above_since_ms;     /* 0 = below */
    bool firing;
} rlwatch_t;

#define RLWATCH_SAMPLE_MS 1000

struct gw_owner {
    uv_loop_t loop; /* the owner's own, on its own thread */
    pthread_t thread;
    pthread_mutex_t mu; /* held for every change of breaker/host state and for every drain */
    uv_async_t stop;
    rlwatch_t *rl; /* per route */
    uint64_t next_rl_sample_ms;
    const gw_runtime_t *rt;
    uv_poll_t poll;
    uv_timer_t tick;
    bool *touched; /* per upstream: publish after this batch */
    uint64_t dropped;
};

/* Monotonic ms, read fresh: the owner is called from two threads, so no loop's cached time. */
static uint64_t now_ms(const gw_owner_t *o)
{
    (void)o;
    return uv_hrtime() / 1000000;
}

bool gw_owner_active(const gw_owner_t *o)
{
    return o != NULL && GW_STAT_GET(o->rt->shared->config_generation) == o->rt->generation;
}

uint64_t gw_owner_dropped(const gw_owner_t *o)
{
    return o->dropped;
}

static void emit(gw_owner_t *o, const char *kind, json_t *fields)
{
    char *text = json_dumps(fields, JSON_COMPACT);
    gw_events_emit(o->rt->events, kind, -1, text);
    free(text);
    json_decref(fields);
}

static void on_transitions(gw_owner_t *o, size_t u, const br_transitions_t *tr)
{
    gw_upstate_t *s = gw_runtime_upstate(o->rt, u);
    const char *name = o->rt->cfg->upstreams[u].name;
    for (unsigned i = 0; i < tr->n; i++) {
        const br_transition_t *t = &tr->t[i];
        __atomic_fetch_add(&s->transitions[t->from][t->to], 1, __ATOMIC_RELAXED);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        GW_STAT_SET(s->state_since_unix_ms,
                    (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000);
        br_stats_t st;
        br_breaker_stats(&s->owner, now_ms(o), &st);
        double rate =
            st.window_calls > 0 ? (double)st.window_failures / (double)st.window_calls : 0.0;
        /* the owner resets its consecutive count when it opens: report the run that tripped it */
        if (t->reason == BR_REASON_CONSECUTIVE_FAILURES && st.consecutive_failures == 0)
            st.consecutive_failures = o->rt->cfg->upstreams[u].breaker.consecutive_failures;
        char kind[GW_EVENT_KIND_MAX];
        snprintf(kind, sizeof(kind), "breaker_%s", br_state_name(t->to));
        gw_log(t->to == BR_STATE_OPEN ? GW_LOG_WARN : GW_LOG_INFO, "breaker transition",
               "{s:s, s:s, s:s, s:s, s:I}", "upstream", name, "from", br_state_name(t->from), "to",
               br_state_name(t->to), "reason", br_reason_name(t->reason), "open_ms",
               (json_int_t)t->open_ms);
        emit(o, kind,
             json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:{s:I, s:I, s:I, s:f, s:i}}", "upstream",
                       name, "from", br_state_name(t->from), "to", br_state_name(t->to), "reason",
                       br_reason_name(t->reason), "open_ms", (json_int_t)t->open_ms,
                       "breaker_generation", (json_int_t)t->generation, "window", "calls",
                       (json_int_t)st.window_calls, "failures", (json_int_t)st.window_failures,
                       "slow", (json_int_t)st.window_slow, "failure_rate", rate,
                       "consecutive_failures", (int)st.consecutive_failures));
    }
}

/* ---- outlier ejection -------------------------------------------------------------------- */

static uint32_t ejected_now(const gw_upstate_t *s, uint64_t now)
{
    uint32_t n = 0;
    for (uint32_t h = 0; h < s->nhosts; h++)
        n += s->hosts[h].ejected_until_ms > now;
    return n;
}

static void outlier(gw_owner_t *o, size_t u, uint32_t host, br_outcome_kind_t kind)
{
    const gw_outlier_config_t *oc = &o->rt->cfg->upstreams[u].outlier;
    gw_upstate_t *s = gw_runtime_upstate(o->rt, u);
    if (host >= s->nhosts || kind == BR_OUTCOME_NEUTRAL || oc->consecutive_failures == 0)
        return;
    gw_host_state_t *hs = &s->hosts[host];
    if (kind == BR_OUTCOME_SUCCESS) {
        hs->consecutive_failures = 0;
        return;
    }
    uint64_t now = now_ms(o);
    if (++hs->consecutive_failures < oc->consecutive_failures || hs->ejected_until_ms > now)
        return;
    /* never more than max_ejected of the hosts (but at least one may go, as in Envoy) */
    /* never more than max_ejected of the hosts: with one host nothing is ejected (the breaker
     * already guards the whole upstream, and ejecting its only host would outlast the breaker's
     * open period and starve the half-open trials) */
    uint64_t max = (uint64_t)s->nhosts * oc->max_ejected_ppm / GW_PPM_ONE;
    if (ejected_now(s, now) >= max)
        return;
    hs->ejections++;
    uint64_t growth = hs->ejections < EJECTION_GROWTH_CAP ? hs->ejections : EJECTION_GROWTH_CAP;
    uint64_t dur = oc->ejection_ms * growth;
    __atomic_store_n(&hs->ejected_until_ms, now + dur, __ATOMIC_RELAXED);
    const gw_upstream_config_t *uc = &o->rt->cfg->upstreams[u];
    gw_log(GW_LOG_WARN, "host ejected", "{s:s, s:s, s:i, s:I}", "upstream", uc->name, "host",
           uc->hosts[host].text, "consecutive_failures", (int)hs->consecutive_failures,
           "ejection_ms", (json_int_t)dur);
    emit(o, "host_ejected",
         json_pack("{s:s, s:s, s:i, s:I, s:i}", "upstream", uc->name, "host", uc->hosts[host].text,
                   "consecutive_failures", (int)hs->consecutive_failures, "ejection_ms",
                   (json_int_t)dur, "ejections", (int)hs->ejections));
    hs->consecutive_failures = 0;
}

/* Ends ejections whose time ran out, and tracks the "no usable host" condition. */
static void watch_hosts(gw_owner_t *o, size_t u, uint64_t now)
{
    const gw_upstream_config_t *uc = &o->rt->cfg->upstreams[u];
    gw_upstate_t *s = gw_runtime_upstate(o->rt, u);
    uint32_t usable = 0, down = 0, ejected = 0;
    for (uint32_t h = 0; h < s->nhosts; h++) {
        gw_host_state_t *hs = &s->hosts[h];
        uint64_t until = __atomic_load_n(&hs->ejected_until_ms, __ATOMIC_RELAXED);
        if (until != 0 && until <= now) {
            __atomic_store_n(&hs->ejected_until_ms, 0, __ATOMIC_RELAXED);
            emit(o, "host_restored",
                 json_pack("{s:s, s:s}", "upstream", uc->name, "host", uc->hosts[h].text));
        }
        down += __atomic_load_n(&hs->down, __ATOMIC_RELAXED) != 0;
        ejected += hs->ejected_until_ms > now;
        usable += gw_host_usable(s, h, now);
    }
    int64_t was = GW_STAT_GET(s->unavailable);
    if (usable == 0 && was == 0) {
        GW_STAT_SET(s->unavailable, 1);
        gw_log(GW_LOG_ERROR, "no usable host", "{s:s, s:i, s:i}", "upstream", uc->name,
               "hosts_down", (int)down, "hosts_ejected", (int)ejected);
        emit(o, "no_healthy_hosts",
             json_pack("{s:s, s:i, s:i, s:i}", "upstream", uc->name, "hosts", (int)s->nhosts,
                       "hosts_down", (int)down, "hosts_ejected", (int)ejected));
    } else if (usable > 0 && was != 0) {
        GW_STAT_SET(s->unavailable, 0);
        emit(o, "no_healthy_hosts_cleared",
             json_pack("{s:s, s:i}", "upstream", uc->name, "hosts_usable", (int)usable));
    }
}

/* ---- draining ---------------------------------------------------------------------------- */

static br_outcome_kind_t classify(const gw_upstream_config_t *uc, const gw_outq_rec_t *rec)
{
    switch ((gw_outcome_kind_t)rec->kind) {
    case GW_OUTCOME_RESPONSE:
        return br_classify_status(rec->status, uc->failure_statuses, uc->nfailure_statuses);
    case GW_OUTCOME_CANCELLED:
        return BR_OUTCOME_NEUTRAL;
    default:
        return BR_OUTCOME_FAILURE;
    }
}

static void on_record(void *ctx, uint32_t worker, const gw_outq_rec_t *rec)
{
    gw_owner_t *o = ctx;
    const gw_config_t *cfg = o->rt->cfg;
    if (!gw_owner_active(o) || rec->upstream >= cfg->nupstreams) {
        o->dropped++;
        return;
    }
    const gw_upstream_config_t *uc = &cfg->upstreams[rec->upstream];
    gw_upstate_t *s = gw_runtime_upstate(o->rt, rec->upstream);
    br_outcome_t out = {
        .generation = rec->generation,
        .trial = rec->trial != 0,
        .kind = classify(uc, rec),
        .latency_us = rec->latency_us,
    };
    br_transitions_t tr;
    br_breaker_record(&s->owner, &out, now_ms(o), &tr);
    on_transitions(o, rec->upstream, &tr);
    outlier(o, rec->upstream, rec->host, out.kind);
    o->touched[rec->upstream] = true;
}

/* Publishes one breaker, and whether any outcome could trip it now (see upstate.h). */
static void publish(gw_owner_t *o, size_t u, uint64_t now)
{
    gw_upstate_t *s = gw_runtime_upstate(o->rt, u);
    br_breaker_publish(&s->owner, &s->pub, now);
    br_stats_t st;
    br_breaker_stats(&s->owner, now, &st);
    bool sensitive = st.state != BR_STATE_CLOSED || st.window_failures > 0 || st.window_slow > 0 ||
                     st.consecutive_failures > 0;
    GW_STAT_SET(s->sensitive, sensitive ? 1 : 0);
}

static void publish_touched(gw_owner_t *o)
{
    for (size_t u = 0; u < o->rt->cfg->nupstreams; u++) {
        if (!o->touched[u])
            continue;
        o->touched[u] = false;
        publish(o, u, now_ms(o));
    }
}

/* Call with the mutex held. */
static void drain_locked(gw_owner_t *o)
{
    gw_outq_drain(o->rt->outq, on_record, o);
    publish_touched(o);
}

void gw_owner_drain(gw_owner_t *o)
{
    if (o == NULL)
        return;
    pthread_mutex_lock(&o->mu);
    drain_locked(o);
    pthread_mutex_unlock(&o->mu);
}

static void on_poll(uv_poll_t *p, int status, int events)
{
    gw_owner_drain(p->data);
}

/*
 * The `rate_limited` event: fires when a route's rejected share stays at or above the rule's
 * ratio for the rule's `for` (sampled each second), clears (rate_limited_cleared) at the first
 * second back under it.
 */
static void watch_ratelimits(gw_owner_t *o, uint64_t now)
{
    const gw_config_t *cfg = o->rt->cfg;
    const gw_rule_config_t *rule = &cfg->alerts.rules[GW_EVENT_RATE_LIMITED];
    if (!rule->defined || now < o->next_rl_sample_ms)
        return;
    o->next_rl_sample_ms = now + RLWATCH_SAMPLE_MS;
    for (size_t r = 0; r < cfg->nroutes; r++) {
        if (o->rt->limiter_of[r] == NULL)
            continue;
        uint64_t adm = 0, rej = 0;
        for (uint32_t w = 0; w < gw_stats_nworkers(o->rt->stats); w++) {
            gw_route_stats_t *rs = gw_stats_route(o->rt->stats, w, (uint32_t)r);
            adm += GW_STAT_GET(rs->rl_admitted);
            rej += GW_STAT_GET(rs->rl_rejected);
        }
        rlwatch_t *rw = &o->rl[r];
        uint64_t da = adm - rw->admitted, dr = rej - rw->rejected;
        rw->admitted = adm;
        rw->rejected = rej;
        bool above = da + dr > 0 && dr * GW_PPM_ONE >= (da + dr) * (uint64_t)rule->ratio_ppm;
        if (!above) {
            rw->above_since_ms = 0;
            if (rw->firing) {
                rw->firing = false;
                emit(o, "rate_limited_cleared", json_pack("{s:s}", "route", cfg->routes[r].name));
            }
            continue;
        }
        if (rw->above_since_ms == 0)
            rw->above_since_ms = now;
        if (!rw->firing && now - rw->above_since_ms >= rule->for_ms) {
            rw->firing = true;
            gw_log(GW_LOG_WARN, "route is rate limiting heavily", "{s:s, s:f}", "route",
                   cfg->routes[r].name, "rejected_ratio", (double)dr / (double)(da + dr));
            emit(o, "rate_limited",
                 json_pack("{s:s, s:f, s:I, s:I}", "route", cfg->routes[r].name, "rejected_ratio",
                           (double)dr / (double)(da + dr), "rejected_last_s", (json_int_t)dr,
                           "admitted_last_s", (json_int_t)da));
        }
    }
}

static void on_tick(uv_timer_t *t)
{
    gw_owner_t *o = t->data;
    pthread_mutex_lock(&o->mu);
    drain_locked(o);
    if (gw_owner_active(o)) {
        uint64_t now = now_ms(o);
        for (size_t u = 0; u < o->rt->cfg->nupstreams; u++) {
            gw_upstate_t *s = gw_runtime_upstate(o->rt, u);
            if (br_breaker_next_deadline(&s->owner) <= now) {
                br_transitions_t tr;
                br_breaker_tick(&s->owner, now, &tr);
                on_transitions(o, u, &tr);
            }
            publish(o, u, now);
            watch_hosts(o, u, now);
        }
        watch_ratelimits(o, now);
    }
    pthread_mutex_unlock(&o->mu);
}

int gw_owner_force(gw_owner_t *o, size_t upstream, const char *action)
{
    br_action_t a;
    if (strcmp(action, "force_open") == 0)
        a = BR_ACTION_FORCE_OPEN;
    else if (strcmp(action, "force_close") == 0)
        a = BR_ACTION_FORCE_CLOSE;
    else if (strcmp(action, "reset") == 0)
        a = BR_ACTION_RESET;
    else
        return -EINVAL;
    if (!gw_owner_active(o))
        return -EAGAIN;
    pthread_mutex_lock(&o->mu);
    drain_locked(o);
    gw_upstate_t *s = gw_runtime_upstate(o->rt, upstream);
    br_transitions_t tr;
    br_breaker_force(&s->owner, a, now_ms(o), &tr);
    on_transitions(o, upstream, &tr);
    publish(o, upstream, now_ms(o));
    emit(o, "breaker_override",
         json_pack("{s:s, s:s}", "upstream", o->rt->cfg->upstreams[upstream].name, "action",
                   action));
    pthread_mutex_unlock(&o->mu);
    return 0;
}

void gw_owner_host_health(gw_owner_t *o, size_t upstream, size_t host, bool up)
{
    const gw_upstream_config_t *uc = &o->rt->cfg->upstreams[upstream];
    gw_log(up ? GW_LOG_INFO : GW_LOG_WARN, up ? "host healthy" : "host unhealthy", "{s:s, s:s}",
           "upstream", uc->name, "host", uc->hosts[host].text);
    emit(o, up ? "host_up" : "host_down",
         json_pack("{s:s, s:s}", "upstream", uc->name, "host", uc->hosts[host].text));
    pthread_mutex_lock(&o->mu);
    if (gw_owner_active(o))
        watch_hosts(o, upstream, now_ms(o));
    pthread_mutex_unlock(&o->mu);
}

static void on_stop(uv_async_t *a)
{
    gw_owner_t *o = a->data;
    uv_close((uv_handle_t *)&o->poll, NULL);
    uv_close((uv_handle_t *)&o->tick, NULL);
    uv_close((uv_handle_t *)&o->stop, NULL);
}

static void *owner_thread(void *arg)
{
    gw_owner_t *o = arg;
    uv_run(&o->loop, UV_RUN_DEFAULT);
    return NULL;
}

/*
 * The owner runs on its own thread and loop: the control process's main loop also does blocking
 * SQLite work (the audit trail, the alert engine, each commit an fsync), and a breaker must not
 * wait behind a disk flush to open. A mutex serialises the owner's work with the admin API's
 * calls into it (force, drain, host health); each hold is a few microseconds.
 */
gw_owner_t *gw_owner_new(uv_loop_t *main_loop, const gw_runtime_t *rt)
{
    (void)main_loop;
    gw_owner_t *o = calloc(1, sizeof(*o));
    bool *touched = calloc(rt->cfg->nupstreams + 1, sizeof(bool));
    rlwatch_t *rl = calloc(rt->cfg->nroutes + 1, sizeof(rlwatch_t));
    if (o == NULL || touched == NULL || rl == NULL || uv_loop_init(&o->loop) != 0) {
        free(o);
        free(touched);
        free(rl);
        return NULL;
    }
    pthread_mutex_init(&o->mu, NULL);
    o->rl = rl;
    o->rt = rt;
    o->touched = touched;
    uv_poll_init(&o->loop, &o->poll, gw_outq_fd(rt->outq));
    o->poll.data = o;
    uv_poll_start(&o->poll, UV_READABLE, on_poll);
    uv_timer_init(&o->loop, &o->tick);
    o->tick.data = o;
    uv_timer_start(&o->tick, on_tick, GW_OUTQ_POLL_MS, GW_OUTQ_POLL_MS);
    uv_async_init(&o->loop, &o->stop, on_stop);
    o->stop.data = o;
    if (pthread_create(&o->thread, NULL, owner_thread, o) != 0) {
        uv_close((uv_handle_t *)&o->poll, NULL);
        uv_close((uv_handle_t *)&o->tick, NULL);
        uv_close((uv_handle_t *)&o->stop, NULL);
        uv_run(&o->loop, UV_RUN_DEFAULT);
        uv_loop_close(&o->loop);
        free(touched);
        free(rl);
        free(o);
        return NULL;
    }
    return o;
}

void gw_owner_close(gw_owner_t *o)
{
    if (o == NULL)
        return;
    uv_async_send(&o->stop);
    pthread_join(o->thread, NULL);
    uv_loop_close(&o->loop);
    pthread_mutex_destroy(&o->mu);
    free(o->touched);
    free(o->rl);
    free(o);
}
