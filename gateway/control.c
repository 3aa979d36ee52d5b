/*
 * control.c - the control process's loop: database owner and admin listener.
 *
 * Forked by the supervisor, which keeps the admin socket bound across control restarts. Opening
 * the database here (not in the supervisor) keeps SQLite out of the process that must never
 * crash, and out of the workers that must never block.
 */
#include "control.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>
#include <uv.h>

#include "admin.h"
#include "log.h"

typedef struct control {
    uv_loop_t loop;
    uv_tcp_t listener;
    uv_signal_t sig_term, sig_int;
    h2o_globalconf_t h2o_config;
    h2o_context_t h2o_ctx;
    h2o_accept_ctx_t accept_ctx;
    gw_admin_t admin;
} control_t;

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
    h2o_accept(&c->accept_ctx, h2o_uv_socket_create((uv_stream_t *)conn, (uv_close_cb)free));
}

static void on_signal(uv_signal_t *s, int signum)
{
    control_t *c = s->data;
    gw_log(GW_LOG_INFO, "control stopping", NULL);
    al_db_close(c->admin.db);
    _exit(0);
}

int gw_control_main(const gw_config_t *cfg, gw_stats_t *stats, int admin_fd)
{
    gw_log_init("control");
    signal(SIGPIPE, SIG_IGN);
    control_t *c = calloc(1, sizeof(*c));
    if (c == NULL || uv_loop_init(&c->loop) != 0)
        return 1;
    c->admin.cfg = cfg;
    c->admin.stats = stats;
    char err[512];
    if (al_db_open(cfg->state_dir, &c->admin.db, err, sizeof(err)) != 0) {
        /* keep serving the admin API (readyz reports it); the supervisor logs our state */
        gw_log(GW_LOG_ERROR, "control cannot open the state database", "{s:s}", "error", err);
        c->admin.db = NULL;
    }

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
    gw_log(GW_LOG_INFO, "admin API ready", "{s:s}", "address", cfg->admin_listen.text);
    uv_run(&c->loop, UV_RUN_DEFAULT);
    return 0;
}
