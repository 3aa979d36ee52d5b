/*
 * worker.c - a worker process's event loop: accept, serve through the proxy, stop gracefully.
 *
 * Runs in a child forked by the supervisor, which has already bound the listening sockets. The
 * worker never touches SQLite and never blocks: everything it does is on its own libuv loop.
 * It exits with _exit() (it is a forked child: the parent's atexit handlers and stdio buffers are
 * not its own).
 */
#include "worker.h"

#include <signal.h>
#include <stdlib.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "log.h"

#define MAX_REQUEST_BODY (16u * 1024 * 1024)
#define BUFPOOL_MAX_FREE 256
#define STOP_POLL_MS 20

/* A client connection is gone: h2o closed its socket. */
static void on_client_close(uv_handle_t *h)
{
    gw_worker_t *w = h->loop->data;
    w->open_conns--;
    free(h);
}

static void on_accept(uv_stream_t *listener, int status)
{
    gw_worker_t *w = listener->data;
    if (status != 0 || w->stopping)
        return;
    uv_tcp_t *conn = malloc(sizeof(*conn));
    if (conn == NULL)
        return;
    uv_tcp_init(listener->loop, conn);
    if (uv_accept(listener, (uv_stream_t *)conn) != 0) {
        uv_close((uv_handle_t *)conn, (uv_close_cb)free);
        return;
    }
    uv_tcp_nodelay(conn, 1);
    w->open_conns++;
    h2o_socket_t *sock = h2o_uv_socket_create((uv_stream_t *)conn, on_client_close);
    h2o_accept(&w->accept_ctx, sock);
}

static void on_heartbeat(uv_timer_t *t)
{
    gw_worker_t *w = t->data;
    GW_STAT_SET(w->wstats->heartbeat_ms, uv_now(w->loop));
}

static void exit_worker(gw_worker_t *w, const char *why)
{
    gw_log(GW_LOG_INFO, "worker exiting", "{s:i, s:s, s:I}", "worker", (int)w->index, "reason", why,
           "abandoned_requests", (json_int_t)w->inflight);
    _exit(0);
}

static void on_stop_poll(uv_timer_t *t)
{
    gw_worker_t *w = t->data;
    /* Wait for the clients to close their connections: h2o answers the next request on each
     * keep-alive connection with "Connection: close" (HTTP/2: GOAWAY), and closes idle ones after
     * its own idle timeout. Exiting while a connection is open could drop a request that the
     * client is sending on it right now. */
    if (w->inflight == 0 && w->open_conns == 0)
        exit_worker(w, "stopped");
    if (uv_now(w->loop) >= w->stop_deadline_ms)
        exit_worker(w, "shutdown_timeout");
}

static void begin_stop(gw_worker_t *w)
{
    if (w->stopping)
        return;
    w->stopping = true;
    gw_log(GW_LOG_INFO, "worker stopping", "{s:i, s:I}", "worker", (int)w->index, "inflight",
           (json_int_t)w->inflight);
    for (size_t i = 0; i < w->nlisteners; i++)
        uv_close((uv_handle_t *)&w->listeners[i], NULL);
    GW_STAT_SET(w->wstats->ready, 0);
    h2o_context_request_shutdown(&w->h2o_ctx);
    w->stop_deadline_ms = uv_now(w->loop) + w->cfg->shutdown_timeout_ms;
    uv_timer_start(&w->stop_timer, on_stop_poll, 0, STOP_POLL_MS);
}

static void on_signal(uv_signal_t *s, int signum)
{
    begin_stop(s->data);
}

static int setup_h2o(gw_worker_t *w)
{
    h2o_config_init(&w->h2o_config);
    w->h2o_config.server_name = h2o_iovec_init(H2O_STRLIT("breakwater"));
    w->h2o_config.max_request_entity_size = MAX_REQUEST_BODY;
    h2o_hostconf_t *host =
        h2o_config_register_host(&w->h2o_config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    h2o_pathconf_t *path = h2o_config_register_path(host, "/", 0);
    gw_proxy_register(w, path);
    h2o_context_init(&w->h2o_ctx, w->loop, &w->h2o_config);
    w->accept_ctx.ctx = &w->h2o_ctx;
    w->accept_ctx.hosts = w->h2o_config.hosts;
    return 0;
}

static int setup_listeners(gw_worker_t *w, const int *fds, size_t nfds)
{
    /* Every worker accepts on the same sockets. By default libuv accepts every pending
     * connection in one go, so the first worker to wake can take a whole burst of new clients
     * (seen: one worker holding all 64 benchmark connections). One accept per wake-up, with a
     * yield, spreads them (read once by libuv, before the first listen). */
    setenv("UV_TCP_SINGLE_ACCEPT", "1", 1);
    w->listeners = calloc(nfds, sizeof(*w->listeners));
    if (w->listeners == NULL)
        return UV_ENOMEM;
    w->nlisteners = nfds;
    for (size_t i = 0; i < nfds; i++) {
        uv_tcp_t *l = &w->listeners[i];
        uv_tcp_init(w->loop, l);
        l->data = w;
        int r = uv_tcp_open(l, fds[i]);
        if (r == 0)
            r = uv_listen((uv_stream_t *)l, 1024, on_accept);
        if (r != 0)
            return r;
    }
    return 0;
}

void gw_worker_event(gw_worker_t *w, const char *kind, const char *fields_json)
{
    gw_events_emit(w->events, kind, (int32_t)w->index, fields_json);
}

int gw_worker_main(const gw_runtime_t *rt, uint32_t index, const int *listen_fds, size_t nfds)
{
    const gw_config_t *cfg = rt->cfg;
    gw_stats_t *stats = rt->stats;
    gw_log_init("worker");
    signal(SIGPIPE, SIG_IGN);
    gw_worker_t *w = calloc(1, sizeof(*w));
    uv_loop_t *loop = malloc(sizeof(*loop));
    if (w == NULL || loop == NULL || uv_loop_init(loop) != 0)
        _exit(1);
    w->index = index;
    w->rt = rt;
    w->cfg = cfg;
    w->events = rt->events;
    w->crash_ctx.route = -1;
    w->ratelimit_errors.interval_ms = 10000;
    w->loop = loop;
    loop->data = w;
    w->stats = stats;
    w->wstats = gw_stats_worker(stats, index);
    if (getrandom(&w->reqid_prefix, sizeof(w->reqid_prefix), 0) != sizeof(w->reqid_prefix))
        w->reqid_prefix = ((uint64_t)getpid() << 32) ^ uv_hrtime();
    w->rng = w->reqid_prefix | 1;
    gw_crash_install(&w->wstats->crash, &w->crash_ctx);

    gw_router_init(&w->router, cfg);
    int r = gw_bufpool_init(&w->bufs, BUFPOOL_MAX_FREE, &w->wstats->bufpool_hits,
                            &w->wstats->bufpool_misses);
    if (r == 0)
        r = gw_upstreams_init(&w->upstreams, loop, cfg, stats, index);
    if (r == 0)
        r = setup_h2o(w);
    if (r == 0)
        r = setup_listeners(w, listen_fds, nfds);
    if (r != 0) {
        gw_log(GW_LOG_ERROR, "worker failed to start", "{s:i, s:s}", "worker", (int)index, "error",
               uv_strerror(r));
        _exit(1);
    }

    uv_signal_init(loop, &w->sig_term);
    uv_signal_init(loop, &w->sig_int);
    w->sig_term.data = w->sig_int.data = w;
    uv_signal_start(&w->sig_term, on_signal, SIGTERM);
    uv_signal_start(&w->sig_int, on_signal, SIGINT);
    uv_timer_init(loop, &w->heartbeat);
    uv_timer_init(loop, &w->stop_timer);
    w->heartbeat.data = w->stop_timer.data = w;
    uv_timer_start(&w->heartbeat, on_heartbeat, 0, GW_HEARTBEAT_MS);

    GW_STAT_SET(w->wstats->pid, (int64_t)getpid());
    GW_STAT_SET(w->wstats->started_ms, uv_now(loop));
    GW_STAT_SET(w->wstats->ready, 1);
    gw_log(GW_LOG_INFO, "worker ready", "{s:i}", "worker", (int)index);
    uv_run(loop, UV_RUN_DEFAULT);
    exit_worker(w, "loop ended");
    return 0;
}
