/*
 * upstream.c - per-worker hosts and keep-alive connection pools. See upstream.h.
 *
 * Connection states:
 *
 *   acquire --> CONNECTING --(connected)--> ACTIVE --(release)--> IDLE --(acquire)--> ACTIVE
 *                   |                         |                    |
 *                   +------(close)------------+-----(close, EOF, stray bytes, idle timeout)
 *                                             v
 *                                          CLOSING --(uv close cb)--> freed
 *
 * Only IDLE connections are on a host's idle list, and only they are read by the pool (to notice
 * an upstream closing them). The exchange owns reading while ACTIVE.
 */
#include "upstream.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define SWEEP_INTERVAL_MS 1000

static void sweep_cb(uv_timer_t *t);

int gw_upstreams_init(gw_upstreams_t *u, uv_loop_t *loop, const gw_config_t *cfg, gw_stats_t *stats,
                      uint32_t worker)
{
    memset(u, 0, sizeof(*u));
    u->loop = loop;
    u->n = cfg->nupstreams;
    u->ups = calloc(u->n, sizeof(*u->ups));
    if (u->ups == NULL)
        return UV_ENOMEM;
    for (size_t i = 0; i < u->n; i++) {
        gw_upstream_t *up = &u->ups[i];
        up->all = u;
        up->cfg = &cfg->upstreams[i];
        up->index = (uint32_t)i;
        up->nhosts = up->cfg->nhosts;
        up->hosts = calloc(up->nhosts, sizeof(*up->hosts));
        up->stats = stats != NULL ? gw_stats_upstream(stats, worker, (uint32_t)i)
                                  : calloc(1, sizeof(gw_upstream_stats_t));
        if (up->hosts == NULL || up->stats == NULL)
            return UV_ENOMEM; /* the process exits on this; no partial cleanup needed */
        /* spread workers over hosts so that they do not all start on the first one */
        up->rr = worker;
        for (size_t h = 0; h < up->nhosts; h++) {
            gw_host_t *host = &up->hosts[h];
            host->up = up;
            host->addr = &up->cfg->hosts[h];
            host->index = (uint32_t)h;
            if (host->addr->family == AF_INET6) {
                struct sockaddr_in6 *sa = (struct sockaddr_in6 *)&host->sa;
                sa->sin6_family = AF_INET6;
                sa->sin6_port = htons(host->addr->port);
                inet_pton(AF_INET6, host->addr->host, &sa->sin6_addr);
            } else {
                struct sockaddr_in *sa = (struct sockaddr_in *)&host->sa;
                sa->sin_family = AF_INET;
                sa->sin_port = htons(host->addr->port);
                inet_pton(AF_INET, host->addr->host, &sa->sin_addr);
            }
        }
    }
    uv_timer_init(loop, &u->sweep);
    u->sweep.data = u;
    uv_timer_start(&u->sweep, sweep_cb, SWEEP_INTERVAL_MS, SWEEP_INTERVAL_MS);
    uv_unref((uv_handle_t *)&u->sweep); /* the sweep alone must not keep the loop alive */
    return 0;
}

static void unlink_idle(gw_conn_t *c)
{
    gw_host_t *host = c->host;
    for (gw_conn_t **pp = &host->idle_head; *pp != NULL; pp = &(*pp)->next_idle) {
        if (*pp == c) {
            *pp = c->next_idle;
            c->next_idle = NULL;
            host->nidle--;
            GW_STAT_ADD(host->up->stats->conn_idle, -1);
            return;
        }
    }
}

static void on_close(uv_handle_t *h)
{
    free(h->data);
}

void gw_conn_close(gw_conn_t *c, bool abortive)
{
    if (c->state == GW_CONN_CLOSING)
        return;
    if (c->state == GW_CONN_IDLE) {
        unlink_idle(c);
    } else {
        GW_STAT_ADD(c->host->up->stats->conn_active, -1);
    }
    c->state = GW_CONN_CLOSING;
    c->owner = NULL;
    if (abortive)
        uv_tcp_close_reset(&c->tcp, on_close);
    else
        uv_close((uv_handle_t *)&c->tcp, on_close);
}

static void sweep_cb(uv_timer_t *t)
{
    gw_upstreams_t *u = t->data;
    uint64_t now = uv_now(u->loop);
    for (size_t i = 0; i < u->n; i++) {
        for (size_t h = 0; h < u->ups[i].nhosts; h++) {
            gw_host_t *host = &u->ups[i].hosts[h];
            gw_conn_t *c = host->idle_head;
            while (c != NULL) {
                gw_conn_t *next = c->next_idle;
                if (now - c->idle_since_ms >= GW_POOL_IDLE_TIMEOUT_MS)
                    gw_conn_close(c, false);
                c = next;
            }
        }
    }
}

void gw_upstreams_close(gw_upstreams_t *u)
{
    u->closing = true;
    for (size_t i = 0; i < u->n; i++)
        for (size_t h = 0; h < u->ups[i].nhosts; h++)
            while (u->ups[i].hosts[h].idle_head != NULL)
                gw_conn_close(u->ups[i].hosts[h].idle_head, false);
    if (!uv_is_closing((uv_handle_t *)&u->sweep))
        uv_close((uv_handle_t *)&u->sweep, NULL);
}

gw_host_t *gw_upstream_pick(gw_upstream_t *up, const gw_upstate_t *state, uint64_t now_ms,
                            bool *all_ejected)
{
    *all_ejected = false;
    for (size_t tries = 0; tries < up->nhosts; tries++) {
        gw_host_t *h = &up->hosts[up->rr++ % up->nhosts];
        if (state == NULL || gw_host_usable(state, h->index, now_ms))
            return h;
    }
    if (state != NULL) {
        bool any_down = false;
        for (size_t i = 0; i < up->nhosts; i++)
            any_down |= __atomic_load_n(&state->hosts[i].down, __ATOMIC_RELAXED) != 0;
        *all_ejected = !any_down;
    }
    return NULL;
}

void gw_upstreams_set_reader(gw_upstreams_t *u, gw_conn_alloc_cb alloc, gw_conn_read_cb read)
{
    u->owner_alloc = alloc;
    u->owner_read = read;
}

static void conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char scratch[64]; /* bytes on an idle connection are discarded anyway */
    gw_conn_t *c = h->data;
    if (c->owner != NULL) {
        c->host->up->all->owner_alloc(c, buf);
        return;
    }
    buf->base = scratch;
    buf->len = sizeof(scratch);
}

static void conn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    gw_conn_t *c = s->data;
    if (nread == 0 || c->state == GW_CONN_CLOSING)
        return;
    if (c->owner != NULL) {
        c->host->up->all->owner_read(c, nread);
        return;
    }
    /* idle: EOF, an error, or bytes nobody asked for: this connection can't be trusted again */
    gw_conn_close(c, nread > 0);
}

void gw_conn_pause(gw_conn_t *c)
{
    if (!c->paused && c->state == GW_CONN_ACTIVE) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->paused = true;
    }
}

void gw_conn_resume(gw_conn_t *c)
{
    if (c->paused && c->state != GW_CONN_CLOSING) {
        c->paused = false;
        if (uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_read) != 0)
            gw_conn_close(c, false);
    }
}

static void on_connect(uv_connect_t *req, int status)
{
    gw_conn_t *c = req->data;
    if (status == UV_ECANCELED || c->state == GW_CONN_CLOSING)
        return; /* closed while connecting: the owner already knows */
    if (status == 0) {
        c->state = GW_CONN_ACTIVE;
        GW_STAT_ADD(c->host->up->stats->conn_opened, 1);
        status = uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_read);
    }
    if (status != 0) {
        GW_STAT_ADD(c->host->up->stats->conn_failed, 1);
    }
    c->on_connect(c, status);
}

int gw_conn_acquire(gw_host_t *host, void *owner, gw_conn_connect_cb cb, gw_conn_t **out,
                    bool *ready)
{
    gw_conn_t *c = host->idle_head;
    *ready = c != NULL;
    if (c != NULL) {
        unlink_idle(c);
        c->state = GW_CONN_ACTIVE;
        c->reused = true;
        c->owner = owner;
        GW_STAT_ADD(host->up->stats->conn_active, 1);
        GW_STAT_ADD(host->up->stats->conn_reused, 1);
        *out = c;
        return 0;
    }
    return gw_conn_connect(host, owner, cb, out);
}

int gw_conn_connect(gw_host_t *host, void *owner, gw_conn_connect_cb cb, gw_conn_t **out)
{
    gw_conn_t *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return UV_ENOMEM;
    int r = uv_tcp_init(host->up->all->loop, &c->tcp);
    if (r != 0) {
        free(c);
        return r;
    }
    c->tcp.data = c;
    c->connect_req.data = c;
    c->host = host;
    c->owner = owner;
    c->on_connect = cb;
    c->state = GW_CONN_CONNECTING;
    GW_STAT_ADD(host->up->stats->conn_active, 1);
    uv_tcp_nodelay(&c->tcp, 1);
    r = uv_tcp_connect(&c->connect_req, &c->tcp, (const struct sockaddr *)&host->sa, on_connect);
    if (r != 0) {
        GW_STAT_ADD(host->up->stats->conn_failed, 1);
        gw_conn_close(c, false);
        return r;
    }
    *out = c;
    return 0;
}

void gw_conn_release(gw_conn_t *c)
{
    gw_host_t *host = c->host;
    gw_upstreams_t *u = host->up->all;
    if (u->closing || host->nidle >= GW_POOL_MAX_IDLE) {
        gw_conn_close(c, false);
        return;
    }
    c->owner = NULL;
    gw_conn_resume(c);
    if (c->state == GW_CONN_CLOSING)
        return;
    GW_STAT_ADD(host->up->stats->conn_active, -1);
    GW_STAT_ADD(host->up->stats->conn_idle, 1);
    c->state = GW_CONN_IDLE;
    c->owner = NULL;
    c->reused = true;
    c->idle_since_ms = uv_now(u->loop);
    c->next_idle = host->idle_head;
    host->idle_head = c;
    host->nidle++;
}
