/*
 * control.c - the control process's loop: database owner and admin listener.
 *
 * Forked by the supervisor, which keeps the admin socket bound across control restarts. Opening
 * the database here (not in the supervisor) keeps SQLite out of the process that must never
 * crash, and out of the workers that must never block.
 */
#include "control.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

#include "admin.h"
#include "acklink.h"
#include "alerts.h"
#include "sender.h"
#include "health.h"
#include "log.h"
#include "owner.h"
#include "storewatch.h"

#define DRAIN_INTERVAL_MS 100
#define DRAIN_BATCH 256
#define STOP_WAIT_MS 5000
#define ALERT_TICK_MAX_MS 1000 /* the engine is ticked at least this often */
#define ALERT_TICK_MIN_MS 5
#define DB_BUSY_TIMEOUT_MS 50
#define STORE_PROBE_MS 500 /* a failing store with nothing held is probed this often */
#define CONTROL_NICE 10    /* nice of the loop thread (engine, sender, admin API, health checks) */

typedef struct control {
    const gw_runtime_t *rt;
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_signal_t sig_term, sig_int;
    uv_timer_t drain, db_retry, alert_tick;
    al_engine_t *engine;         /* NULL until the database is open */
    al_sender_t *sender;         /* likewise */
    gw_storewatch_t *storewatch; /* alert_store_degraded notices; likewise */
    size_t events_held;          /* events read but not stored because the store failed */
    uint64_t probe_at;           /* unix ms before which the store is not probed again */
    uv_timer_t flush_timer;
    gw_log_limit_t drain_errors, db_errors;
    bool stopping;
    uint64_t stop_deadline_ms;
    uint64_t open_conns; /* admin connections accepted and not yet closed */
    gw_health_t *health;
    h2o_globalconf_t h2o_config;
    h2o_context_t h2o_ctx;
    h2o_accept_ctx_t accept_ctx;
    gw_admin_t admin;
} control_t;

static void on_health_change(void *ctx, size_t upstream, size_t host, bool up)
{
    gw_owner_host_health(ctx, upstream, host, up);
}

static bool health_gate(void *ctx)
{
    return gw_owner_active(ctx);
}

static void on_conn_close(uv_handle_t *h)
{
    control_t *c = h->loop->data;
    c->open_conns--;
    free(h);
}

static void on_accept(uv_stream_t *listener, int status)
{
    control_t *c = listener->data;
    if (status != 0)
        return;
    uv_tcp_t *conn = malloc(sizeof(*conn));
    if (conn == NULL)
        return;
    uv_tcp_init(listener->loop, conn);
    if (uv_accept(listener, (uv_stream_t *)conn) != 0) {
        uv_close((uv_handle_t *)conn, (uv_close_cb)free);
        return;
    }
    c->open_conns++;
    h2o_accept(&c->accept_ctx, h2o_uv_socket_create((uv_stream_t *)conn, on_conn_close));
}

/*
 * Moves events from the shared channel into the audit trail, one transaction per batch. Only
 * what was committed to SQLite is committed on the channel, so if this process dies mid-batch the
 * next control process reads the batch again. When the disk is full the batch is rolled back and
 * retried on the next tick; meanwhile the channel keeps the newest events (dropping the oldest).
 */
/* Tells the store watcher how the store is doing after a write whose result was r: failing while
 * events or engine inputs are held in memory, working once they are all stored. */
static void watch_store(control_t *c, int r)
{
    if (c->storewatch == NULL || c->engine == NULL)
        return;
    uint64_t now = gw_unix_ms();
    al_engine_stats_t st;
    al_engine_stats(c->engine, &st);
    if (c->events_held == 0 && st.queued == 0 && al_store_unavailable(st.last_store_error) &&
        now >= c->probe_at) {
        /* only an earlier error says the store fails, and nothing may write again for a while:
         * ask it, at most twice a second */
        c->probe_at = now + STORE_PROBE_MS;
        (void)al_engine_probe(c->engine);
        al_engine_stats(c->engine, &st);
    }
    if (al_store_unavailable(r))
        gw_storewatch_failed(c->storewatch, r, now);
    else if (al_store_unavailable(st.last_store_error))
        gw_storewatch_failed(c->storewatch, st.last_store_error, now);
    bool ok = c->events_held == 0 && st.queued == 0 && !al_store_unavailable(st.last_store_error);
    gw_storewatch_update(c->storewatch, ok, c->events_held + st.queued,
                         st.queue_dropped + gw_events_dropped(c->rt->events), now);
}

/* Runs the alert engine's due work (escalations, repeats, group_wait, retries of a failed
 * store) and re-arms for its next deadline. */
static void on_alert_tick(uv_timer_t *t)
{
    control_t *c = t->data;
    if (c->engine == NULL)
        return;
    uint64_t now = gw_unix_ms(), next = now + ALERT_TICK_MAX_MS;
    int r = al_engine_tick(c->engine, now, &next);
    if (r < 0)
        gw_log_limited(&c->drain_errors, uv_now(&c->loop), GW_LOG_ERROR,
                       "alert engine tick failed; will retry", "{s:s}", "error", al_strerror(r));
    watch_store(c, r);
    uint64_t wait = next > now ? next - now : 0;
    if (wait > ALERT_TICK_MAX_MS)
        wait = ALERT_TICK_MAX_MS;
    uv_timer_start(t, on_alert_tick, wait < ALERT_TICK_MIN_MS ? ALERT_TICK_MIN_MS : wait, 0);
    gw_admin_kick(&c->admin);
}

/* Something changed in the alert store: run the engine's due work soon. */
static void alerts_changed(control_t *c)
{
    if (c->engine != NULL && !c->stopping)
        uv_timer_start(&c->alert_tick, on_alert_tick, 0, 0);
}

static void kick_alerts(void *ctx)
{
    control_t *c = ctx;
    if (c->sender != NULL)
        al_sender_kick(c->sender);
}

/* The sender's log lines go through ours (same JSON format, same level filter). */
static void sender_log(void *ctx, int level, const char *msg, json_t *fields)
{
    (void)ctx;
    gw_log((gw_log_level_t)level, msg, fields != NULL ? "O" : NULL, fields);
}

/* An ack link was clicked (a worker verified its signature). */
static int ack_from_link(control_t *c, const gw_event_t *e)
{
    json_t *f = json_loads(e->fields, 0, NULL);
    json_int_t id = json_integer_value(json_object_get(f, "alert_id"));
    const char *via = json_string_value(json_object_get(f, "via"));
    /* who acked, as the lineage shows it: a click, or a key pressed during a phone call */
    const char *by = via != NULL && strcmp(via, "phone") == 0 ? "ack-link (phone)" : "ack-link";
    int r = id > 0 ? al_engine_ack(c->engine, (int64_t)id, by, e->ts_ms) : AL_EBADINPUT;
    json_decref(f);
    gw_log(r == 0 ? GW_LOG_INFO : GW_LOG_WARN, "acknowledgement link used", "{s:I, s:s}",
           "alert_id", (json_int_t)id, "result", r == 0 ? "acknowledged" : al_strerror(r));
    return r == AL_ENOENT || r == AL_ESTATE ? AL_EBADINPUT : r; /* nothing to retry */
}

static void drain_events(control_t *c)
{
    gw_events_t *ev = c->rt->events;
    gw_event_t *e = malloc(sizeof(*e));
    if (e == NULL || c->admin.eventlog == NULL) {
        free(e);
        return;
    }
    int n = 0, r = 0;
    while (n < DRAIN_BATCH && gw_events_next(ev, uv_now(&c->loop), e) == 1) {
        if (n == 0 && (r = al_eventlog_begin(c->admin.eventlog)) != 0)
            break;
        if ((r = al_eventlog_append(c->admin.eventlog, e->ts_ms, e->kind, e->worker, e->fields)) !=
            0)
            break;
        n++;
    }
    if (n > 0 && r == 0)
        r = al_eventlog_commit(c->admin.eventlog);
    if (r == 0 && n > 0 && c->engine != NULL) {
        /* second pass over the same events (not committed on the channel yet), now that the
         * audit trail has them: the alert engine (each event is its own transaction there) */
        gw_events_rewind(ev);
        for (int i = 0; i < n && gw_events_next(ev, uv_now(&c->loop), e) == 1; i++) {
            int er = strcmp(e->kind, "ack_request") == 0
                         ? ack_from_link(c, e)
                         : al_engine_event(c->engine, e->kind, e->worker, e->fields, e->ts_ms);
            if (er < 0 && er != AL_EBADINPUT)
                gw_log_limited(&c->drain_errors, uv_now(&c->loop), GW_LOG_ERROR,
                               "alert engine could not take an event", "{s:s, s:s}", "kind",
                               e->kind, "error", al_strerror(er));
        }
        alerts_changed(c);
    }
    c->events_held = r == 0 ? 0 : (size_t)n + 1; /* + the one that failed */
    watch_store(c, r);
    if (r == 0) {
        gw_events_commit(ev);
    } else {
        al_eventlog_rollback(c->admin.eventlog);
        gw_events_rewind(ev);
        gw_log_limited(&c->drain_errors, uv_now(&c->loop), GW_LOG_ERROR,
                       "cannot store events; will retry", "{s:s}", "error", al_db_strerror(r));
    }
    free(e);
}

static void on_drain(uv_timer_t *t)
{
    drain_events(t->data);
}

/* Stores what is pending and gives the database up (the next control process waits for it). */
static void release_database(control_t *c)
{
    gw_owner_drain(c->admin.owner);
    drain_events(c);
    uv_timer_stop(&c->alert_tick);
    gw_storewatch_set_sender(c->storewatch, NULL);
    gw_storewatch_free(c->storewatch);
    c->storewatch = NULL;
    if (c->sender != NULL) {
        /* in-flight sends are abandoned: their leases expire and the next control process
         * records them as ambiguous attempts (retried for P0/P1 with the same Idempotency-Key) */
        al_sender_close(c->sender, NULL, NULL);
        c->sender = NULL;
        c->admin.sender = NULL; /* the admin API may still answer (e.g. /metrics) until exit */
    }
    al_engine_free(c->engine);
    c->engine = NULL;
    c->admin.engine = NULL;
    al_eventlog_close(c->admin.eventlog);
    al_db_close(c->admin.db);
    c->admin.eventlog = NULL;
    c->admin.db = NULL;
}

/*
 * Stopping: answer what is in flight (a reload request waits for its result) and let admin
 * clients close their keep-alive connections (h2o tells each one "Connection: close" on its next
 * response), so that a reload never resets a scraper's connection; then exit.
 */
static void on_stop_poll(uv_timer_t *t)
{
    control_t *c = t->data;
    if ((c->admin.inflight == 0 && c->open_conns == 0) || uv_now(&c->loop) >= c->stop_deadline_ms) {
        gw_log(GW_LOG_INFO, "control stopped", "{s:I}", "open_connections",
               (json_int_t)c->open_conns);
        _exit(0);
    }
}

static void finish_stop(control_t *c)
{
    uv_timer_stop(&c->flush_timer);
    release_database(c);
    uv_timer_start(&c->db_retry, on_stop_poll, 0, 20);
}

static void on_flushed(void *ctx)
{
    control_t *c = ctx;
    gw_log(GW_LOG_INFO, "alert deliveries flushed", NULL);
    finish_stop(c);
}

static void on_flush_deadline(uv_timer_t *t)
{
    control_t *c = t->data;
    gw_log(GW_LOG_WARN,
           "shutdown_timeout passed with alert deliveries pending; they resume at "
           "the next start",
           "{s:I}", "inflight", (json_int_t)al_sender_inflight(c->sender));
    finish_stop(c);
}

static void on_signal(uv_signal_t *s, int signum)
{
    control_t *c = s->data;
    if (c->stopping)
        return;
    c->stopping = true;
    gw_log(GW_LOG_INFO, "control stopping", "{s:I}", "inflight", (json_int_t)c->admin.inflight);
    uv_close((uv_handle_t *)&c->listener, NULL);
    h2o_context_request_shutdown(&c->h2o_ctx);
    c->admin.retiring = true;
    uv_timer_stop(&c->db_retry);
    c->stop_deadline_ms = uv_now(&c->loop) + STOP_WAIT_MS;
    /* A reload hands the database to the next control process at once. A full stop first sends
     * the notifications that are due (SPEC: "flush alert deliveries that can be sent"), for at
     * most shutdown_timeout. */
    bool reload = GW_STAT_GET(c->rt->shared->config_generation) != c->rt->generation;
    if (!reload && c->sender != NULL) {
        drain_events(c);
        alerts_changed(c);
        uv_timer_start(&c->flush_timer, on_flush_deadline, c->rt->cfg->shutdown_timeout_ms, 0);
        al_sender_drain(c->sender, on_flushed, c);
        return;
    }
    finish_stop(c);
}

static void start_alert_engine(control_t *c)
{
    char host[128] = "localhost", source[160];
    gethostname(host, sizeof(host) - 1);
    snprintf(source, sizeof(source), "breakwater@%s", host);
    al_engine_options_t opts = {.source = source};
    int r = al_engine_new(c->admin.db, &c->rt->cfg->alerts, &opts, &c->engine);
    if (r == 0)
        r = al_engine_start(c->engine, gw_unix_ms());
    if (r != 0) {
        gw_log(GW_LOG_ERROR, "cannot start the alert engine", "{s:s}", "error", al_strerror(r));
        al_engine_free(c->engine);
        c->engine = NULL;
        return;
    }
    c->admin.engine = c->engine;
    if (GW_STAT_GET(c->rt->shared->ack_secret_set) == 1)
        al_ack_set_secret(c->rt->shared->ack_secret);
    al_sender_options_t sopts = {.log = sender_log, .log_ctx = c};
    c->sender = al_sender_new_with(&c->loop, c->engine, &c->rt->cfg->alerts, source, &sopts);
    if (c->sender == NULL)
        gw_log(GW_LOG_ERROR, "cannot start the alert delivery loop", "{s:s}", "error",
               strerror(errno));
    c->admin.sender = c->sender;
    c->storewatch = gw_storewatch_new(&c->loop, &c->rt->cfg->alerts, c->rt->events, source);
    if (c->storewatch == NULL)
        gw_log(GW_LOG_ERROR, "cannot start the alert store watcher (out of memory)", NULL);
    gw_storewatch_set_sender(c->storewatch, c->sender);
    alerts_changed(c);
}

/*
 * Opens the database without blocking the loop for long: after a reload the previous control
 * process holds the exclusive lock until it has answered its last request, so a busy database is
 * retried on a timer instead of waited for.
 */
static void on_db_retry(uv_timer_t *t)
{
    control_t *c = t->data;
    char err[512];
    struct al_db_options opts = {.busy_timeout_ms = DB_BUSY_TIMEOUT_MS};
    int r = al_db_open_with(c->rt->cfg->state_dir, &opts, &c->admin.db, err, sizeof(err));
    if (r != 0) {
        c->admin.db = NULL;
        gw_log_limited(&c->db_errors, uv_now(&c->loop),
                       r == AL_DB_EBUSY ? GW_LOG_INFO : GW_LOG_ERROR,
                       "state database not open yet; retrying", "{s:s}", "error", err);
        uv_timer_start(t, on_db_retry, r == AL_DB_EBUSY ? 100 : 2000, 0);
        return;
    }
    /* Holding the database makes this process the events channel's only consumer (the previous
     * control process gave it up after its last drain): start from what it committed. */
    gw_events_rewind(c->rt->events);
    r = al_eventlog_open(c->admin.db, &c->admin.eventlog);
    if (r != 0) {
        gw_log(GW_LOG_ERROR, "cannot prepare the event log", "{s:s}", "error", al_db_strerror(r));
        c->admin.eventlog = NULL;
    }
    start_alert_engine(c);
}

int gw_control_main(const gw_runtime_t *rt, int admin_fd)
{
    const gw_config_t *cfg = rt->cfg;
    gw_log_init("control");
    signal(SIGPIPE, SIG_IGN);
    control_t *c = calloc(1, sizeof(*c));
    if (c == NULL || uv_loop_init(&c->loop) != 0)
        return 1;
    c->rt = rt;
    c->admin.rt = rt;
    c->admin.cfg = cfg;
    c->admin.stats = rt->stats;
    c->admin.loop = &c->loop;
    c->loop.data = c;
    c->drain_errors.interval_ms = 10000;
    c->db_errors.interval_ms = 5000;

    h2o_config_init(&c->h2o_config);
    c->h2o_config.server_name = h2o_iovec_init(H2O_STRLIT("breakwater"));
    c->h2o_config.max_request_entity_size = 1024 * 1024;
    h2o_hostconf_t *host =
        h2o_config_register_host(&c->h2o_config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    gw_admin_register(&c->admin, h2o_config_register_path(host, "/", 0));
    h2o_context_init(&c->h2o_ctx, &c->loop, &c->h2o_config);
    c->accept_ctx.ctx = &c->h2o_ctx;
    c->accept_ctx.hosts = c->h2o_config.hosts;

    uv_tcp_init(&c->loop, &c->listener);
    c->listener.data = c;
    int r = uv_tcp_open(&c->listener, admin_fd);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&c->listener, 128, on_accept);
    if (r != 0) {
        gw_log(GW_LOG_ERROR, "admin listener failed", "{s:s}", "error", uv_strerror(r));
        return 1;
    }
    uv_signal_init(&c->loop, &c->sig_term);
    uv_signal_init(&c->loop, &c->sig_int);
    c->sig_term.data = c->sig_int.data = c;
    uv_signal_start(&c->sig_term, on_signal, SIGTERM);
    uv_signal_start(&c->sig_int, on_signal, SIGINT);
    c->admin.owner = gw_owner_new(&c->loop, rt);
    if (c->admin.owner == NULL) {
        gw_log(GW_LOG_ERROR, "cannot start the breaker owner", NULL);
        return 1;
    }
    /* An alert storm keeps this thread busy (SQLite, JSON, webhooks: 75-80% of a core for 10k
     * alerts) and, at the workers' priority, it delayed their wake-ups by a scheduler slice
     * (bench/RESULTS.md, "Alert storm"). So this thread yields to them: nice CONTROL_NICE. The
     * breaker owner's thread, started above, keeps the workers' priority (on Linux a nice value
     * belongs to a thread: setpriority on a thread id changes that thread only). */
    if (setpriority(PRIO_PROCESS, (id_t)gettid(), CONTROL_NICE) != 0)
        gw_log(GW_LOG_WARN, "cannot lower the control loop's priority", "{s:s}", "error",
               strerror(errno));
    /* health checks write shared host state: only while this process owns it (see owner.h) */
    c->health = gw_health_new(&c->loop, rt, on_health_change, c->admin.owner);
    if (c->health == NULL) {
        gw_log(GW_LOG_ERROR, "cannot start the health prober", NULL);
        return 1;
    }
    gw_health_set_gate(c->health, health_gate, c->admin.owner);
    c->admin.health = c->health;
    uv_timer_init(&c->loop, &c->db_retry);
    c->db_retry.data = c;
    uv_timer_start(&c->db_retry, on_db_retry, 0, 0);
    uv_timer_init(&c->loop, &c->alert_tick);
    c->alert_tick.data = c;
    uv_timer_init(&c->loop, &c->flush_timer);
    c->flush_timer.data = c;
    c->admin.kick = kick_alerts;
    c->admin.kick_ctx = c;
    uv_timer_init(&c->loop, &c->drain);
    c->drain.data = c;
    uv_timer_start(&c->drain, on_drain, DRAIN_INTERVAL_MS, DRAIN_INTERVAL_MS);
    gw_log(GW_LOG_INFO, "admin API ready", "{s:s}", "address", cfg->admin_listen.text);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    return 0;
}
