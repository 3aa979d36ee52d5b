/*
 * admin.c - admin API: health, readiness, metrics, upstreams (SPEC section 6).
 *
 * One h2o handler dispatches on method and path. Responses are built with jansson (the admin API
 * is not a hot path; correctness of escaping matters more). Endpoints of later features (alerts,
 * silences, events, breaker overrides, reload) answer 501 with a JSON error until they exist,
 * so a client can tell "not built yet" from "wrong path" (404).
 */
#include "admin.h"

#include <errno.h>
#include <jansson.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "health.h"
#include "log.h"
#include "owner.h"
#include "query.h"
#include "reply.h"

typedef struct admin_handler {
    h2o_handler_t super;
    gw_admin_t *admin;
} admin_handler_t;

void gw_admin_send_json_text(h2o_req_t *req, int status, char *json)
{
    if (json == NULL) {
        h2o_send_error_500(req, "Internal Server Error", "out of memory", 0);
        return;
    }
    h2o_iovec_t copy = h2o_strdup(&req->pool, json, strlen(json));
    free(json);
    gw_reply_send(req, status, "application/json", true, NULL, copy);
}

static void send_json(h2o_req_t *req, int status, json_t *body)
{
    char *text = json_dumps(body, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(body);
    gw_admin_send_json_text(req, status, text);
}

static void send_error(h2o_req_t *req, int status, const char *code, const char *message)
{
    send_json(req, status, json_pack("{s:s, s:s}", "error", code, "message", message));
}

void gw_admin_send_error(h2o_req_t *req, int status, const char *code, const char *message)
{
    send_error(req, status, code, message);
}

void gw_admin_kick(gw_admin_t *a)
{
    if (a->kick != NULL)
        a->kick(a->kick_ctx);
}

/* Constant-time check of "Authorization: Bearer <token>". */
static int authorized(const gw_admin_t *a, h2o_req_t *req)
{
    if (a->cfg->admin_token == NULL)
        return 1;
    ssize_t i = h2o_find_header(&req->headers, H2O_TOKEN_AUTHORIZATION, -1);
    if (i < 0)
        return 0;
    h2o_iovec_t v = req->headers.entries[i].value;
    static const char prefix[] = "Bearer ";
    size_t plen = sizeof(prefix) - 1, tlen = strlen(a->cfg->admin_token);
    if (v.len != plen + tlen || strncasecmp(v.base, prefix, plen) != 0)
        return 0;
    return CRYPTO_memcmp(v.base + plen, a->cfg->admin_token, tlen) == 0;
}

static void handle_readyz(gw_admin_t *a, h2o_req_t *req)
{
    uint32_t nw = gw_stats_nworkers(a->stats), ready = 0;
    for (uint32_t w = 0; w < nw; w++)
        ready += GW_STAT_GET(gw_stats_worker(a->stats, w)->ready) == 1;
    bool ok = ready == nw && (a->db != NULL || a->retiring);
    send_json(req, ok ? 200 : 503,
              json_pack("{s:s, s:i, s:i, s:b}", "status", ok ? "ready" : "not_ready",
                        "workers_ready", (int)ready, "workers", (int)nw, "database",
                        a->db != NULL));
}

static void handle_metrics(gw_admin_t *a, h2o_req_t *req)
{
    gw_owner_drain(a->owner);
    gw_health_stats_t hs;
    gw_health_stats(a->health, &hs);
    char *text = gw_metrics_render(a->rt, uv_now(a->loop), &hs);
    char *alerts = gw_admin_alert_metrics(a);
    if (text == NULL || alerts == NULL) {
        free(text);
        free(alerts);
        send_error(req, 500, "internal_error", "out of memory");
        return;
    }
    h2o_iovec_t copy = h2o_concat(&req->pool, h2o_iovec_init(text, strlen(text)),
                                  h2o_iovec_init(alerts, strlen(alerts)));
    free(text);
    free(alerts);
    gw_reply_send(req, 200, "text/plain; version=0.0.4; charset=utf-8", false, NULL, copy);
}

static json_t *hosts_json(gw_admin_t *a, size_t u)
{
    const gw_upstream_config_t *uc = &a->cfg->upstreams[u];
    const gw_upstate_t *s = gw_runtime_upstate(a->rt, u);
    uint64_t now = uv_now(a->loop);
    json_t *hosts = json_array();
    for (size_t h = 0; h < uc->nhosts; h++) {
        const gw_host_state_t *hs = &s->hosts[h];
        const char *health = !uc->health_check.enabled ? "unchecked"
                             : GW_STAT_GET(hs->down)   ? "down"
                             : hs->probed              ? "up"
                                                       : "unknown";
        uint64_t until = GW_STAT_GET(hs->ejected_until_ms);
        json_array_append_new(
            hosts, json_pack("{s:s, s:s, s:b, s:I, s:i, s:b}", "address", uc->hosts[h].text,
                             "health", health, "ejected", until > now, "ejected_for_ms",
                             (json_int_t)(until > now ? until - now : 0), "ejections",
                             (int)hs->ejections, "usable", gw_host_usable(s, (uint32_t)h, now)));
    }
    return hosts;
}

static json_t *breaker_json(gw_admin_t *a, size_t u)
{
    gw_upstate_t *s = gw_runtime_upstate(a->rt, u);
    br_snapshot_t snap;
    br_shared_read(&s->pub, &snap);
    br_stats_t st;
    uint64_t now = uv_now(a->loop);
    br_breaker_stats(&s->owner, now, &st);
    return json_pack(
        "{s:s, s:I, s:I, s:I, s:i, s:i, s:I, s:I, s:I}", "state", br_state_name(snap.state),
        "since_unix_ms", (json_int_t)GW_STAT_GET(s->state_since_unix_ms), "generation",
        (json_int_t)snap.generation, "retry_after_ms",
        (json_int_t)(snap.open_until > now ? snap.open_until - now : 0), "trial_permits_left",
        (int)snap.permits, "consecutive_failures", (int)st.consecutive_failures, "window_calls",
        (json_int_t)st.window_calls, "window_failures", (json_int_t)st.window_failures,
        "window_slow", (json_int_t)st.window_slow);
}

/* POST /api/v1/upstreams/{name}/breaker {"action": "force_open"|"force_close"|"reset"} */
static void handle_breaker_action(gw_admin_t *a, h2o_req_t *req)
{
    static const char prefix[] = "/api/v1/upstreams/", suffix[] = "/breaker";
    h2o_iovec_t p = req->path_normalized;
    size_t plen = sizeof(prefix) - 1, slen = sizeof(suffix) - 1;
    h2o_iovec_t name = h2o_iovec_init(p.base + plen, p.len - plen - slen);
    size_t u = 0;
    while (u < a->cfg->nupstreams && !h2o_memis(name.base, name.len, a->cfg->upstreams[u].name,
                                                strlen(a->cfg->upstreams[u].name)))
        u++;
    if (u == a->cfg->nupstreams) {
        send_error(req, 404, "unknown_upstream", "no upstream by that name");
        return;
    }
    json_error_t jerr;
    json_t *body =
        json_loadb(req->entity.base != NULL ? req->entity.base : "", req->entity.len, 0, &jerr);
    const char *action = json_string_value(json_object_get(body, "action"));
    int r = action != NULL ? gw_owner_force(a->owner, u, action) : -EINVAL;
    json_decref(body);
    if (r == -EINVAL) {
        send_error(req, 400, "bad_request",
                   "body must be {\"action\": \"force_open\"|\"force_close\"|\"reset\"}");
        return;
    }
    if (r == -EAGAIN) {
        send_error(req, 409, "reload_in_progress", "breakers are changing owner; retry");
        return;
    }
    send_json(req, 200,
              json_pack("{s:s, s:o}", "upstream", a->cfg->upstreams[u].name, "breaker",
                        breaker_json(a, u)));
}

static json_t *upstream_json(gw_admin_t *a, size_t u)
{
    const gw_upstream_config_t *uc = &a->cfg->upstreams[u];
    uint64_t requests = 0, opened = 0, reused = 0, failed = 0, rejected = 0, brejected = 0;
    uint64_t outcomes[GW_OUTCOME_KIND_COUNT] = {0};
    int64_t inflight = 0, active = 0, idle = 0;
    for (uint32_t w = 0; w < gw_stats_nworkers(a->stats); w++) {
        gw_upstream_stats_t *us = gw_stats_upstream(a->stats, w, (uint32_t)u);
        requests += GW_STAT_GET(us->requests);
        opened += GW_STAT_GET(us->conn_opened);
        reused += GW_STAT_GET(us->conn_reused);
        failed += GW_STAT_GET(us->conn_failed);
        rejected += GW_STAT_GET(us->bulkhead_rejected);
        brejected += GW_STAT_GET(us->breaker_rejected);
        inflight += GW_STAT_GET(us->inflight);
        active += GW_STAT_GET(us->conn_active);
        idle += GW_STAT_GET(us->conn_idle);
        for (int k = 0; k < GW_OUTCOME_KIND_COUNT; k++)
            outcomes[k] += GW_STAT_GET(us->outcomes[k]);
    }
    json_t *hosts = hosts_json(a, u);
    json_t *out = json_object();
    for (int k = 0; k < GW_OUTCOME_KIND_COUNT; k++)
        json_object_set_new(out, gw_outcome_kind_name((gw_outcome_kind_t)k),
                            json_integer((json_int_t)outcomes[k]));
    json_t *counters =
        json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o}", "requests", (json_int_t)requests,
                  "inflight", (json_int_t)inflight, "connections_opened", (json_int_t)opened,
                  "connections_reused", (json_int_t)reused, "connect_failures", (json_int_t)failed,
                  "bulkhead_rejected", (json_int_t)rejected, "connections_active",
                  (json_int_t)active, "connections_idle", (json_int_t)idle, "outcomes", out);
    json_object_set_new(counters, "breaker_rejected", json_integer((json_int_t)brejected));
    return json_pack("{s:s, s:o, s:o, s:I, s:I, s:I, s:o}", "name", uc->name, "hosts", hosts,
                     "breaker", breaker_json(a, u), "max_concurrent",
                     (json_int_t)uc->max_concurrent, "connect_timeout_ms",
                     (json_int_t)uc->connect_timeout_ms, "timeout_ms", (json_int_t)uc->timeout_ms,
                     "counters", counters);
}

static void handle_upstreams(gw_admin_t *a, h2o_req_t *req)
{
    json_t *list = json_array();
    for (size_t u = 0; u < a->cfg->nupstreams; u++)
        json_array_append_new(list, upstream_json(a, u));
    send_json(req, 200, json_pack("{s:o}", "upstreams", list));
}

static int event_row(void *ctx, int64_t id, int64_t ts_ms, const char *kind, int32_t worker,
                     const char *fields_json)
{
    json_t *fields = json_loads(fields_json, 0, NULL);
    json_t *row =
        json_pack("{s:I, s:I, s:s, s:o, s:o}", "id", (json_int_t)id, "ts_ms", (json_int_t)ts_ms,
                  "kind", kind, "worker", worker < 0 ? json_null() : json_integer(worker), "fields",
                  fields != NULL ? fields : json_object());
    json_array_append_new(ctx, row);
    return 0;
}

static void handle_events(gw_admin_t *a, h2o_req_t *req)
{
    int64_t since = gw_query_uint(req, "since", 0), limit = gw_query_uint(req, "limit", 100);
    if (since < 0 || limit < 1 || limit > 1000) {
        send_error(req, 400, "bad_request",
                   "'since' must be an event id (>= 0) and 'limit' 1..1000");
        return;
    }
    if (a->eventlog == NULL) {
        send_error(req, 503, "database_unavailable", "the state database is not open");
        return;
    }
    json_t *list = json_array();
    int r = al_eventlog_list(a->eventlog, since, (uint32_t)limit, event_row, list);
    if (r != 0) {
        json_decref(list);
        send_error(req, 500, "database_error", al_db_strerror(r));
        return;
    }
    size_t n = json_array_size(list);
    json_int_t next = n > 0 ? json_integer_value(json_object_get(json_array_get(list, n - 1), "id"))
                            : (json_int_t)since;
    send_json(req, 200, json_pack("{s:o, s:I}", "events", list, "next_since", next));
}

/* ---- POST /api/v1/reload ---------------------------------------------------------------- */

#define RELOAD_WAIT_MS 20000
#define RELOAD_POLL_MS 25

typedef struct pending_reload {
    uv_timer_t timer;
    gw_admin_t *admin;
    h2o_req_t *req; /* NULL once the client went away */
    uint64_t seq0, deadline_ms;
} pending_reload_t;

static void on_reload_req_dispose(void *p)
{
    pending_reload_t *pr = *(pending_reload_t **)p;
    pr->req = NULL;
}

static void reload_answer(pending_reload_t *pr)
{
    gw_shared_t *sh = pr->admin->rt->shared;
    if (pr->req == NULL)
        return;
    bool ok = GW_STAT_GET(sh->reload_ok) == 1;
    char msg[sizeof(sh->reload_message)];
    memcpy(msg, sh->reload_message, sizeof(msg));
    msg[sizeof(msg) - 1] = '\0';
    if (ok) {
        send_json(pr->req, 200,
                  json_pack("{s:s, s:s, s:I}", "status", "reloaded", "message", msg, "generation",
                            (json_int_t)GW_STAT_GET(sh->config_generation)));
        return;
    }
    json_t *errors = json_loads(msg, 0, NULL);
    if (!json_is_array(errors)) {
        json_decref(errors);
        errors = json_pack("[s]", msg);
    }
    send_json(pr->req, 422,
              json_pack("{s:s, s:s, s:o}", "error", "reload_failed", "message",
                        "the new configuration was refused; the running one is kept", "errors",
                        errors));
}

static void on_reload_timer_close(uv_handle_t *h)
{
    free(h->data);
}

static void on_reload_poll(uv_timer_t *t)
{
    pending_reload_t *pr = t->data;
    uint64_t seq = __atomic_load_n(&pr->admin->rt->shared->reload_seq, __ATOMIC_ACQUIRE);
    if (seq != pr->seq0) {
        reload_answer(pr);
    } else if (uv_now(pr->admin->loop) < pr->deadline_ms && pr->req != NULL) {
        return;
    } else if (pr->req != NULL) {
        send_error(pr->req, 504, "reload_timeout", "the supervisor did not report a result");
    }
    uv_timer_stop(t);
    uv_close((uv_handle_t *)t, on_reload_timer_close);
}

static void handle_reload(gw_admin_t *a, h2o_req_t *req)
{
    /* validate here first, so that the caller gets every error even if the supervisor is busy */
    if (a->rt->config_path != NULL) {
        gw_diag_t diag;
        gw_config_t *cfg = NULL;
        gw_diag_init(&diag);
        int r = gw_config_load_file(a->rt->config_path, &cfg, &diag);
        gw_config_free(cfg);
        if (r != 0) {
            json_t *errors = json_array();
            for (size_t i = 0; i < diag.n; i++)
                json_array_append_new(errors, json_string(diag.items[i]));
            gw_diag_dispose(&diag);
            json_t *ev =
                json_pack("{s:s, s:O}", "reason", "invalid configuration", "errors", errors);
            char *text = json_dumps(ev, JSON_COMPACT);
            json_decref(ev);
            gw_log(GW_LOG_ERROR, "reload refused; keeping the running config", "{s:s, s:s}",
                   "reason", "invalid configuration", "errors", text != NULL ? text : "{}");
            gw_events_emit(a->rt->events, "reload_failed", -1, text);
            free(text);
            send_json(req, 422,
                      json_pack("{s:s, s:s, s:o}", "error", "invalid_config", "message",
                                "the configuration file has errors; the running one is kept",
                                "errors", errors));
            return;
        }
        gw_diag_dispose(&diag);
    }
    pending_reload_t *pr = calloc(1, sizeof(*pr));
    pending_reload_t **link =
        pr != NULL ? h2o_mem_alloc_shared(&req->pool, sizeof(*link), on_reload_req_dispose) : NULL;
    if (link == NULL) {
        free(pr);
        send_error(req, 500, "internal_error", "out of memory");
        return;
    }
    *link = pr;
    pr->admin = a;
    pr->req = req;
    pr->seq0 = __atomic_load_n(&a->rt->shared->reload_seq, __ATOMIC_ACQUIRE);
    pr->deadline_ms = uv_now(a->loop) + RELOAD_WAIT_MS;
    uv_timer_init(a->loop, &pr->timer);
    pr->timer.data = pr;
    uv_timer_start(&pr->timer, on_reload_poll, RELOAD_POLL_MS, RELOAD_POLL_MS);
    kill(getppid(), SIGHUP);
}

static int has_prefix(h2o_req_t *req, const char *p);
static int has_suffix(h2o_req_t *req, const char *s);

static int path_is(h2o_req_t *req, const char *p)
{
    return h2o_memis(req->path_normalized.base, req->path_normalized.len, p, strlen(p));
}

static int has_prefix(h2o_req_t *req, const char *p)
{
    size_t n = strlen(p);
    return req->path_normalized.len >= n && memcmp(req->path_normalized.base, p, n) == 0;
}

static int has_suffix(h2o_req_t *req, const char *s)
{
    size_t n = strlen(s), len = req->path_normalized.len;
    return len >= n && memcmp(req->path_normalized.base + len - n, s, n) == 0;
}

static void on_admin_req_dispose(void *p)
{
    gw_admin_t *a = *(gw_admin_t **)p;
    a->inflight--;
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    gw_admin_t *a = ((admin_handler_t *)self)->admin;
    bool get = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("GET"));
    bool post = h2o_memis(req->method.base, req->method.len, H2O_STRLIT("POST"));
    gw_admin_t **link = h2o_mem_alloc_shared(&req->pool, sizeof(*link), on_admin_req_dispose);
    *link = a;
    a->inflight++;
    if (path_is(req, "/healthz")) {
        send_json(req, 200, json_pack("{s:s}", "status", "ok"));
        return 0;
    }
    if (!authorized(a, req)) {
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_WWW_AUTHENTICATE, NULL,
                       H2O_STRLIT("Bearer"));
        send_error(req, 401, "unauthorized", "a valid 'Authorization: Bearer <token>' is required");
        return 0;
    }
    if (get && path_is(req, "/readyz"))
        handle_readyz(a, req);
    else if (get && path_is(req, "/metrics"))
        handle_metrics(a, req);
    else if (get && path_is(req, "/api/v1/upstreams"))
        handle_upstreams(a, req);
    else if (get && path_is(req, "/api/v1/events"))
        handle_events(a, req);
    else if (post && path_is(req, "/api/v1/reload"))
        handle_reload(a, req);
    else if (post && has_prefix(req, "/api/v1/upstreams/") && has_suffix(req, "/breaker"))
        handle_breaker_action(a, req);
    else if (path_is(req, "/readyz") || path_is(req, "/metrics") ||
             path_is(req, "/api/v1/upstreams") || path_is(req, "/api/v1/events"))
        send_error(req, 405, "method_not_allowed", "this endpoint takes GET");
    else if (path_is(req, "/api/v1/reload"))
        send_error(req, 405, "method_not_allowed", "this endpoint takes POST");
    else if (gw_admin_alerts(a, req))
        ; /* answered */
    else
        send_error(req, 404, "not_found", "no such admin endpoint");
    return 0;
}

void gw_admin_register(gw_admin_t *a, h2o_pathconf_t *pathconf)
{
    admin_handler_t *h = (admin_handler_t *)h2o_create_handler(pathconf, sizeof(*h));
    h->super.on_req = on_req;
    h->admin = a;
}
