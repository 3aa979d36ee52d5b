/*
 * test_gateway_health.c - the active health prober (gateway/health.c).
 *
 * Two parts. The pure parts are driven exactly: gw_health_record() (thresholds, flapping, the
 * unknown state, ending an ejection, resuming from shared state) and the scheduler
 * (gw_health_sched_*: staggering, the concurrency bound, the queue bound, rescheduling, the
 * gate), with an injected clock. The prober itself then runs on a real libuv loop against tiny
 * servers on loopback: the exact probe request, up/down cycles with on_change, every failure kind
 * (refused, timeout, malformed, 5xx), 1xx interim responses, restart resumption, the gate, and
 * 320 blackholed hosts that must never hold more than GW_HEALTH_MAX_INFLIGHT sockets. Each loop
 * test ends by closing the prober and asserting uv_loop_close() == 0 (no handle left behind).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "health.h"
#include "log.h"
#include "runtime.h"
#include "upstate.h"

/* ---- gw_health_record ------------------------------------------------------------------------ */

static gw_health_check_config_t hc(uint32_t healthy, uint32_t unhealthy)
{
    return (gw_health_check_config_t){true, "/health", 200, 100, healthy, unhealthy};
}

static void unknown_host_is_usable_and_needs_unhealthy_threshold_fails_to_go_down(void **state)
{
    gw_host_state_t hs = {0};
    gw_health_check_config_t c = hc(2, 3);
    assert_int_equal(hs.down, 0); /* unknown counts as usable */
    assert_int_equal(gw_health_record(&hs, &c, false, 1000), 0);
    assert_int_equal(gw_health_record(&hs, &c, false, 1001), 0);
    assert_int_equal(hs.down, 0);
    assert_int_equal(hs.probed, 1);
    assert_int_equal(gw_health_record(&hs, &c, false, 1002), GW_HEALTH_WENT_DOWN);
    assert_int_equal(hs.down, 1);
    assert_int_equal(hs.fails, 3);
    /* further failures report nothing new */
    assert_int_equal(gw_health_record(&hs, &c, false, 1003), 0);
    assert_int_equal(hs.fails, 4);
}

static void unknown_host_that_passes_reports_no_transition(void **state)
{
    gw_host_state_t hs = {0};
    gw_health_check_config_t c = hc(2, 3);
    assert_int_equal(gw_health_record(&hs, &c, true, 1), 0);
    assert_int_equal(gw_health_record(&hs, &c, true, 2), 0);
    assert_int_equal(hs.passes, 2);
    assert_int_equal(hs.down, 0);
}

static void down_host_needs_healthy_threshold_passes_to_come_up(void **state)
{
    gw_host_state_t hs = {.down = 1, .fails = 3, .probed = 1};
    gw_health_check_config_t c = hc(3, 2);
    assert_int_equal(gw_health_record(&hs, &c, true, 10), 0);
    assert_int_equal(hs.fails, 0);
    assert_int_equal(gw_health_record(&hs, &c, true, 11), 0);
    assert_int_equal(hs.down, 1);
    assert_int_equal(gw_health_record(&hs, &c, true, 12), GW_HEALTH_WENT_UP);
    assert_int_equal(hs.down, 0);
    /* and a healthy host needs unhealthy_threshold failures in a row to go down again */
    assert_int_equal(gw_health_record(&hs, &c, false, 13), 0);
    assert_int_equal(gw_health_record(&hs, &c, false, 14), GW_HEALTH_WENT_DOWN);
}

static void flapping_host_never_changes_state(void **state)
{
    gw_health_check_config_t c = hc(2, 2);
    for (int64_t start_down = 0; start_down <= 1; start_down++) {
        gw_host_state_t hs = {.down = start_down};
        for (int i = 0; i < 50; i++) {
            assert_int_equal(gw_health_record(&hs, &c, i % 2 == 0, (uint64_t)i), 0);
            assert_int_equal(hs.down, start_down);
            assert_true(hs.passes <= 1 && hs.fails <= 1);
        }
    }
}

static void a_failure_resets_the_pass_count_and_a_pass_the_fail_count(void **state)
{
    gw_host_state_t hs = {.down = 1};
    gw_health_check_config_t c = hc(2, 2);
    gw_health_record(&hs, &c, true, 1);
    gw_health_record(&hs, &c, false, 2);
    assert_int_equal(hs.passes, 0);
    assert_int_equal(gw_health_record(&hs, &c, true, 3), 0); /* 1 pass, not 2 */
    assert_int_equal(gw_health_record(&hs, &c, true, 4), GW_HEALTH_WENT_UP);
}

static void healthy_probe_ends_an_ejection(void **state)
{
    gw_health_check_config_t c = hc(2, 2);
    gw_host_state_t hs = {.passes = 5, .probed = 1, .ejected_until_ms = 30000};
    assert_int_equal(gw_health_record(&hs, &c, true, 1000), GW_HEALTH_UNEJECTED);
    assert_true(hs.ejected_until_ms <= 1000); /* over (the owner then reports host_restored) */
    assert_int_equal(hs.down, 0);

    /* a down host that comes up while ejected: both at once */
    gw_host_state_t down = {.down = 1, .passes = 1, .ejected_until_ms = 30000};
    assert_int_equal(gw_health_record(&down, &c, true, 1000),
                     GW_HEALTH_WENT_UP | GW_HEALTH_UNEJECTED);
    assert_true(down.ejected_until_ms <= 1000);
}

static void pass_below_healthy_threshold_or_failure_keeps_the_ejection(void **state)
{
    gw_health_check_config_t c = hc(3, 3);
    gw_host_state_t hs = {.fails = 1, .ejected_until_ms = 30000};
    assert_int_equal(gw_health_record(&hs, &c, true, 1000), 0); /* 1 of 3 passes */
    assert_int_equal(hs.ejected_until_ms, 30000);
    assert_int_equal(gw_health_record(&hs, &c, false, 1001), 0);
    assert_int_equal(hs.ejected_until_ms, 30000);
    /* an ejection that already ran out is left alone (the owner restores it) */
    gw_host_state_t over = {.passes = 9, .ejected_until_ms = 500};
    assert_int_equal(gw_health_record(&over, &c, true, 1000), 0);
    assert_int_equal(over.ejected_until_ms, 500);
}

static void counting_resumes_from_the_shared_state(void **state)
{
    /* a restarted control process finds fails = 2 of 3 already counted */
    gw_health_check_config_t c = hc(2, 3);
    gw_host_state_t hs = {.fails = 2, .probed = 1};
    assert_int_equal(gw_health_record(&hs, &c, false, 1), GW_HEALTH_WENT_DOWN);
}

static void zero_thresholds_read_as_one_and_counters_saturate(void **state)
{
    gw_health_check_config_t c = hc(0, 0);
    gw_host_state_t hs = {0};
    assert_int_equal(gw_health_record(&hs, &c, false, 1), GW_HEALTH_WENT_DOWN);
    assert_int_equal(gw_health_record(&hs, &c, true, 2), GW_HEALTH_WENT_UP);
    hs.passes = UINT32_MAX;
    gw_health_record(&hs, &c, true, 3);
    assert_int_equal(hs.passes, UINT32_MAX);
}

static void statuses_2xx_and_3xx_pass(void **state)
{
    assert_false(gw_health_status_passes(199));
    assert_true(gw_health_status_passes(200));
    assert_true(gw_health_status_passes(204));
    assert_true(gw_health_status_passes(302));
    assert_true(gw_health_status_passes(399));
    assert_false(gw_health_status_passes(400));
    assert_false(gw_health_status_passes(404));
    assert_false(gw_health_status_passes(503));
}

static void error_names(void **state)
{
    assert_string_equal(gw_health_strerror(0), "ok");
    assert_string_equal(gw_health_strerror(GW_HEALTH_ENOMEM), "out of memory");
    assert_string_equal(gw_health_strerror(GW_HEALTH_EALREADY), "already closing");
    assert_string_equal(gw_health_strerror(-12345), "unknown error");
}

/* ---- scheduler ---------------------------------------------------------------------------------
 */

static void first_round_is_staggered_over_one_interval(void **state)
{
    assert_int_equal(gw_health_stagger(1000, 200, 0, 4), 1000);
    assert_int_equal(gw_health_stagger(1000, 200, 1, 4), 1050);
    assert_int_equal(gw_health_stagger(1000, 200, 3, 4), 1150);
    assert_int_equal(gw_health_stagger(1000, 200, 0, 0), 1000);
    /* 10k hosts: all distinct enough, all within the interval */
    for (uint32_t k = 0; k < 10000; k++)
        assert_true(gw_health_stagger(0, 2000, k, 10000) < 2000);
}

static void sched_bad_arguments(void **state)
{
    gw_health_sched_t s;
    assert_int_equal(gw_health_sched_init(&s, 4, 0, 4), GW_HEALTH_EINVAL);
    assert_int_equal(gw_health_sched_init(&s, 4, 4, 0), GW_HEALTH_EINVAL);
    assert_int_equal(gw_health_sched_init(&s, 0, 4, 4), 0); /* nothing to probe is fine */
    assert_int_equal(gw_health_sched_next_due(&s), UINT64_MAX);
    assert_int_equal(gw_health_sched_collect(&s, 1000, true), 0);
    assert_int_equal(gw_health_sched_start(&s), -1);
    gw_health_sched_dispose(&s);
}

static void due_targets_run_in_due_order_and_others_wait(void **state)
{
    gw_health_sched_t s;
    assert_int_equal(gw_health_sched_init(&s, 3, 8, 8), 0);
    gw_health_sched_add(&s, 0, 300, 1000);
    gw_health_sched_add(&s, 1, 100, 1000);
    gw_health_sched_add(&s, 2, 200, 1000);
    assert_int_equal(gw_health_sched_next_due(&s), 100);
    assert_int_equal(gw_health_sched_collect(&s, 99, true), 0);
    assert_int_equal(gw_health_sched_collect(&s, 250, true), 2);
    assert_int_equal(gw_health_sched_start(&s), 1);
    assert_int_equal(gw_health_sched_start(&s), 2);
    assert_int_equal(gw_health_sched_start(&s), -1);
    assert_int_equal(gw_health_sched_next_due(&s), 300);
    assert_int_equal(s.targets[1].state, GW_HEALTH_T_RUNNING);
    assert_int_equal(s.targets[0].state, GW_HEALTH_T_WAITING);
    gw_health_sched_dispose(&s);
}

static void running_probes_never_exceed_the_bound(void **state)
{
    gw_health_sched_t s;
    assert_int_equal(gw_health_sched_init(&s, 10, 16, 4), 0);
    for (uint32_t i = 0; i < 10; i++)
        gw_health_sched_add(&s, i, 0, 100);
    assert_int_equal(gw_health_sched_collect(&s, 0, true), 10);
    int64_t started[10];
    int n = 0;
    for (int64_t i; (i = gw_health_sched_start(&s)) >= 0;)
        started[n++] = i;
    assert_int_equal(n, 4);
    assert_int_equal(s.running, 4);
    assert_int_equal(s.qlen, 6);
    /* one finishes: exactly one more may start, one that was not running */
    gw_health_sched_finish(&s, (uint32_t)started[0], 10, true);
    int64_t next = gw_health_sched_start(&s);
    assert_true(next >= 0);
    for (int k = 0; k < n; k++)
        assert_true(next != started[k]);
    assert_int_equal(gw_health_sched_start(&s), -1);
    assert_int_equal(s.skipped, 0);
    gw_health_sched_dispose(&s);
}

static void full_queue_skips_and_counts_the_due_probe(void **state)
{
    gw_health_sched_t s;
    assert_int_equal(gw_health_sched_init(&s, 5, 2, 1), 0);
    for (uint32_t i = 0; i < 5; i++)
        gw_health_sched_add(&s, i, 100 + i, 1000);
    assert_int_equal(gw_health_sched_collect(&s, 200, true), 2); /* queue of 2 */
    assert_int_equal(s.skipped, 3);
    /* the skipped ones wait for their next interval, neither failed nor lost */
    for (uint32_t i = 2; i < 5; i++) {
        assert_int_equal(s.targets[i].state, GW_HEALTH_T_WAITING);
        assert_int_equal(s.targets[i].due_ms, 1100 + i);
    }
    /* starting one frees a queue place, not a second running place */
    assert_int_equal(gw_health_sched_start(&s), 0);
    assert_int_equal(gw_health_sched_start(&s), -1);
    assert_int_equal(s.qlen, 1);
    gw_health_sched_dispose(&s);
}

static void a_skipped_probe_far_behind_is_not_retried_at_once(void **state)
{
    gw_health_sched_t s;
    assert_int_equal(gw_health_sched_init(&s, 2, 1, 1), 0);
    gw_health_sched_add(&s, 0, 0, 100);
    gw_health_sched_add(&s, 1, 0, 100);
    assert_int_equal(gw_health_sched_collect(&s, 5000, true), 1);
    assert_int_equal(s.skipped, 1);
    assert_int_equal(s.targets[1].due_ms, 5100); /* now + interval, not a burst of catch-ups */
    gw_health_sched_dispose(&s);
}

static void a_host_never_has_two_probes_at_once(void **state)
{
    gw_health_sched_t s;
    assert_int_equal(gw_health_sched_init(&s, 1, 4, 4), 0);
    gw_health_sched_add(&s, 0, 0, 10);
    assert_int_equal(gw_health_sched_collect(&s, 0, true), 1);
    assert_int_equal(gw_health_sched_start(&s), 0);
    /* the probe runs far past several intervals: the host is not due again meanwhile */
    assert_int_equal(gw_health_sched_collect(&s, 1000, true), 0);
    assert_int_equal(gw_health_sched_start(&s), -1);
    assert_int_equal(gw_health_sched_next_due(&s), UINT64_MAX);
    /* it fell behind: due again at once, then on its cadence */
    gw_health_sched_finish(&s, 0, 1000, true);
    assert_int_equal(gw_health_sched_next_due(&s), 1000);
    assert_int_equal(gw_health_sched_collect(&s, 1000, true), 1);
    assert_int_equal(gw_health_sched_start(&s), 0);
    gw_health_sched_finish(&s, 0, 1003, true);
    assert_int_equal(gw_health_sched_next_due(&s), 1010);
    gw_health_sched_dispose(&s);
}

static void finish_keeps_the_cadence(void **state)
{
    gw_health_sched_t s;
    assert_int_equal(gw_health_sched_init(&s, 1, 4, 4), 0);
    gw_health_sched_add(&s, 0, 100, 200);
    gw_health_sched_collect(&s, 105, true);
    assert_int_equal(gw_health_sched_start(&s), 0);
    gw_health_sched_finish(&s, 0, 180, true);
    assert_int_equal(gw_health_sched_next_due(&s), 300); /* due + interval, not finish + interval */
    /* a target that could not start (local error) is counted as skipped */
    gw_health_sched_collect(&s, 300, true);
    assert_int_equal(gw_health_sched_start(&s), 0);
    gw_health_sched_finish(&s, 0, 301, false);
    assert_int_equal(s.skipped, 1);
    assert_int_equal(gw_health_sched_next_due(&s), 500);
    gw_health_sched_dispose(&s);
}

static void closed_gate_defers_without_counting(void **state)
{
    gw_health_sched_t s;
    assert_int_equal(gw_health_sched_init(&s, 2, 4, 4), 0);
    gw_health_sched_add(&s, 0, 0, 100);
    gw_health_sched_add(&s, 1, 50, 100);
    assert_int_equal(gw_health_sched_collect(&s, 60, false), 0);
    assert_int_equal(s.skipped, 0);
    assert_int_equal(s.qlen, 0);
    assert_int_equal(gw_health_sched_next_due(&s), 100);
    assert_int_equal(gw_health_sched_collect(&s, 150, true), 2);
    gw_health_sched_dispose(&s);
}

/* 320 hosts whose probes all take the full timeout (blackholed), simulated 1 ms at a time. */
static void simulated_blackholed_fleet_stays_within_bounds(void **state)
{
    enum { N = 320, MAX = GW_HEALTH_MAX_INFLIGHT, INTERVAL = 200, TIMEOUT = 100, END = 3000 };
    gw_health_sched_t s;
    uint64_t ends[N] = {0}, probes[N] = {0};
    assert_int_equal(gw_health_sched_init(&s, N, GW_HEALTH_QUEUE_MAX, MAX), 0);
    for (uint32_t i = 0; i < N; i++)
        gw_health_sched_add(&s, i, gw_health_stagger(0, INTERVAL, i, N), INTERVAL);
    uint32_t peak = 0;
    for (uint64_t now = 0; now < END; now++) {
        for (uint32_t i = 0; i < N; i++)
            if (s.targets[i].state == GW_HEALTH_T_RUNNING && ends[i] == now)
                gw_health_sched_finish(&s, i, now, true);
        gw_health_sched_collect(&s, now, true);
        for (int64_t i; (i = gw_health_sched_start(&s)) >= 0;) {
            ends[i] = now + TIMEOUT;
            probes[i]++;
        }
        assert_true(s.running <= MAX);
        assert_true(s.qlen <= N);
        if (s.running > peak)
            peak = s.running;
    }
    assert_int_equal(peak, MAX);
    /* throughput is bounded by MAX / TIMEOUT, shared fairly (FIFO): every host got probed, and
     * none more than twice as often as another */
    uint64_t lo = UINT64_MAX, hi = 0, total = 0;
    for (uint32_t i = 0; i < N; i++) {
        lo = probes[i] < lo ? probes[i] : lo;
        hi = probes[i] > hi ? probes[i] : hi;
        total += probes[i];
    }
    assert_true(lo >= 1);
    assert_true(hi <= 2 * lo);
    assert_true(total <= (uint64_t)MAX * (END / TIMEOUT + 1));
    gw_health_sched_dispose(&s);
}

/* ---- the prober on a real loop ------------------------------------------------------------------
 */

typedef enum srv_mode {
    SRV_STATUS = 0, /* answer `status` */
    SRV_SILENT,     /* read the request, never answer */
    SRV_GARBAGE,    /* answer bytes that are not HTTP */
    SRV_INTERIM,    /* 100 Continue, then `status` */
} srv_mode_t;

typedef struct server {
    uv_tcp_t listener;
    int port;
    srv_mode_t mode;
    int status;
    int accepted;
    char last_request[1024];
} server_t;

typedef struct sconn {
    uv_tcp_t tcp;
    server_t *srv;
    uv_write_t write;
    char buf[1024];
    size_t len;
    char out[256];
} sconn_t;

static void sconn_free(uv_handle_t *h)
{
    free(h->data);
}

static void sconn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    sconn_t *c = h->data;
    *buf = uv_buf_init(c->buf + c->len, (unsigned)(sizeof(c->buf) - 1 - c->len));
}

static void sconn_written(uv_write_t *w, int status)
{
    sconn_t *c = w->data;
    uv_close((uv_handle_t *)&c->tcp, sconn_free);
}

static void sconn_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    sconn_t *c = st->data;
    if (nread < 0) {
        if (!uv_is_closing((uv_handle_t *)st))
            uv_close((uv_handle_t *)st, sconn_free);
        return;
    }
    c->len += (size_t)nread;
    c->buf[c->len] = '\0';
    if (strstr(c->buf, "\r\n\r\n") == NULL)
        return;
    snprintf(c->srv->last_request, sizeof(c->srv->last_request), "%s", c->buf);
    c->len = 0;
    if (c->srv->mode == SRV_SILENT)
        return; /* the prober's timeout closes it; we see EOF then */
    uv_read_stop(st);
    if (c->srv->mode == SRV_GARBAGE)
        snprintf(c->out, sizeof(c->out), "SSH-2.0-OpenSSH\r\n\r\n");
    else
        snprintf(c->out, sizeof(c->out), "%sHTTP/1.1 %d X\r\nContent-Length: 2\r\n\r\nok",
                 c->srv->mode == SRV_INTERIM ? "HTTP/1.1 100 Continue\r\n\r\n" : "",
                 c->srv->status);
    uv_buf_t b = uv_buf_init(c->out, (unsigned)strlen(c->out));
    c->write.data = c;
    uv_write(&c->write, st, &b, 1, sconn_written);
}

static void server_accept(uv_stream_t *l, int status)
{
    server_t *srv = l->data;
    sconn_t *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->srv = srv;
    uv_tcp_init(l->loop, &c->tcp);
    c->tcp.data = c;
    assert_int_equal(uv_accept(l, (uv_stream_t *)&c->tcp), 0);
    srv->accepted++;
    uv_read_start((uv_stream_t *)&c->tcp, sconn_alloc, sconn_read);
}

static void server_start(uv_loop_t *loop, server_t *srv, srv_mode_t mode, int status)
{
    struct sockaddr_in a;
    memset(srv, 0, sizeof(*srv));
    srv->mode = mode;
    srv->status = status;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_init(loop, &srv->listener), 0);
    srv->listener.data = srv;
    assert_int_equal(uv_tcp_bind(&srv->listener, (struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&srv->listener, 128, server_accept), 0);
    int len = sizeof(a);
    uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&a, &len);
    srv->port = ntohs(a.sin_port);
}

static void server_stop(server_t *srv)
{
    uv_close((uv_handle_t *)&srv->listener, NULL);
}

/* A port nothing listens on: bound, then closed. */
static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    getsockname(fd, (struct sockaddr *)&a, &len);
    close(fd);
    return ntohs(a.sin_port);
}

/* A listener with backlog 0 that never accepts, its queue filled by one connection: further
 * SYNs are dropped, so connects hang until the prober's timeout. fds[0] listener, fds[1] filler. */
static int blackhole(int fds[2])
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    fds[0] = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(bind(fds[0], (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(fds[0], 0), 0);
    getsockname(fds[0], (struct sockaddr *)&a, &len);
    fds[1] = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(connect(fds[1], (struct sockaddr *)&a, sizeof(a)), 0);
    return ntohs(a.sin_port);
}

typedef struct fixture {
    uv_loop_t loop;
    gw_config_t *cfg;
    gw_upstates_t *upstates;
    uint32_t slot_of[8];
    gw_runtime_t rt;
    gw_health_t *h;
    int ups, downs; /* on_change calls */
    bool gate;
    int closed;
    /* run_until */
    uv_timer_t poll;
    bool (*pred)(struct fixture *);
    uint64_t deadline;
    bool met;
} fixture_t;

static void on_change(void *ctx, size_t upstream, size_t host, bool up)
{
    fixture_t *f = ctx;
    assert_true(upstream < f->cfg->nupstreams);
    assert_true(host < f->cfg->upstreams[upstream].nhosts);
    /* called after the shared state was written */
    assert_int_equal(gw_runtime_upstate(&f->rt, upstream)->hosts[host].down, up ? 0 : 1);
    if (up)
        f->ups++;
    else
        f->downs++;
}

static bool gate(void *ctx)
{
    return ((fixture_t *)ctx)->gate;
}

/* Step 1: the loop (servers are started on it before the config names their ports). */
static void fx_loop(fixture_t *f)
{
    memset(f, 0, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    f->gate = true;
}

/* Step 2: loads `fmt` (printf format) into a runtime over fresh shared state. */
static void fx_config(fixture_t *f, const char *fmt, ...)
{
    static char yaml[262144];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(yaml, sizeof(yaml), fmt, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof(yaml));
    gw_diag_t diag;
    gw_diag_init(&diag);
    int r = gw_config_load_string("t.yaml", yaml, strlen(yaml), &f->cfg, &diag);
    for (size_t i = 0; i < diag.n; i++)
        print_message("diag: %s\n", diag.items[i]);
    gw_diag_dispose(&diag);
    assert_int_equal(r, 0);
    assert_true(f->cfg->nupstreams <= 8);
    f->upstates = gw_upstates_new();
    assert_non_null(f->upstates);
    assert_int_equal(gw_upstates_bind(f->upstates, f->cfg, 1, 1, 0, f->slot_of), 0);
    f->rt = (gw_runtime_t){
        .generation = 1, .cfg = f->cfg, .slot_of = f->slot_of, .upstates = f->upstates};
}

/* Step 3: the prober. */
static void fx_start(fixture_t *f)
{
    f->h = gw_health_new(&f->loop, &f->rt, on_change, f);
    assert_non_null(f->h);
}

static gw_host_state_t *hstate(fixture_t *f, size_t u, size_t h)
{
    return &gw_runtime_upstate(&f->rt, u)->hosts[h];
}

static void poll_cb(uv_timer_t *t)
{
    fixture_t *f = t->data;
    if (f->pred(f)) {
        f->met = true;
        uv_stop(&f->loop);
    } else if (uv_now(&f->loop) >= f->deadline) {
        uv_stop(&f->loop);
    }
}

/* Runs the loop until pred(f) holds (checked every 2 ms) or max_ms pass. Returns pred's result. */
static bool run_until(fixture_t *f, bool (*pred)(fixture_t *), uint64_t max_ms)
{
    f->pred = pred;
    f->met = false;
    uv_update_time(&f->loop);
    f->deadline = uv_now(&f->loop) + max_ms;
    uv_timer_init(&f->loop, &f->poll);
    f->poll.data = f;
    uv_timer_start(&f->poll, poll_cb, 2, 2);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&f->poll, NULL);
    uv_run(&f->loop, UV_RUN_NOWAIT);
    return f->met;
}

static fixture_t *closing_fx; /* done callbacks carry no context: the fixture being closed */

static void on_done(gw_health_t *h)
{
    gw_health_stats_t st;
    gw_health_stats(h, &st); /* h is still valid inside done */
    closing_fx->closed++;
}

/* Closes the prober and the servers, runs the loop dry, and checks that nothing was left. */
static void fx_dispose(fixture_t *f, server_t *servers, size_t nservers)
{
    if (f->h != NULL) {
        closing_fx = f;
        assert_int_equal(gw_health_close(f->h, on_done), 0);
        assert_int_equal(gw_health_close(f->h, on_done), GW_HEALTH_EALREADY);
    }
    for (size_t i = 0; i < nservers; i++)
        server_stop(&servers[i]);
    /* server-side connections end on the EOF the prober's closed sockets send */
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(f->closed, f->h != NULL ? 1 : 0);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    gw_upstates_free(f->upstates);
    gw_config_free(f->cfg);
}

#define HC_FAST                                                                                    \
    "health_check: { interval: 40ms, timeout: 30ms, healthy_threshold: 2, "                        \
    "unhealthy_threshold: 2 }"
#define ROUTE "routes:\n  - { name: r, match: { path_prefix: / }, upstream: a }\n"

static bool host0_passed_twice(fixture_t *f)
{
    return hstate(f, 0, 0)->passes >= 2;
}

static bool host0_down(fixture_t *f)
{
    return hstate(f, 0, 0)->down == 1;
}

static bool host0_up_and_unejected(fixture_t *f)
{
    return hstate(f, 0, 0)->down == 0 && hstate(f, 0, 0)->ejected_until_ms <= uv_now(&f->loop);
}

static void probe_sends_the_request_and_marks_down_then_up(void **state)
{
    fixture_t f;
    server_t srv;
    fx_loop(&f);
    server_start(&f.loop, &srv, SRV_STATUS, 200);
    fx_config(&f,
              "upstreams:\n  a: { hosts: [\"127.0.0.1:%d\"], "
              "health_check: { path: \"/healthz?deep=1\", interval: 40ms, timeout: 30ms, "
              "healthy_threshold: 2, unhealthy_threshold: 2 } }\n" ROUTE,
              srv.port);
    fx_start(&f);

    assert_true(run_until(&f, host0_passed_twice, 2000));
    char want[256];
    snprintf(want, sizeof(want),
             "GET /healthz?deep=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
             "User-Agent: breakwater-health\r\nConnection: close\r\n\r\n",
             srv.port);
    assert_string_equal(srv.last_request, want);
    assert_int_equal(hstate(&f, 0, 0)->down, 0);
    assert_int_equal(hstate(&f, 0, 0)->probed, 1);
    assert_int_equal(f.ups + f.downs, 0); /* unknown -> healthy is not a transition */

    srv.status = 503;
    assert_true(run_until(&f, host0_down, 2000));
    assert_int_equal(f.downs, 1);
    assert_true(hstate(&f, 0, 0)->fails >= 2);

    /* ejected by outlier detection meanwhile: once healthy again, a passing probe ends it */
    uv_update_time(&f.loop);
    hstate(&f, 0, 0)->ejected_until_ms = uv_now(&f.loop) + 600000;
    srv.status = 302; /* 3xx passes */
    assert_true(run_until(&f, host0_up_and_unejected, 2000));
    assert_int_equal(f.ups, 1);
    assert_int_equal(f.downs, 1);

    gw_health_stats_t st;
    gw_health_stats(f.h, &st);
    assert_int_equal(st.targets, 1);
    assert_true(st.ok >= 4);
    assert_true(st.failed >= 2);
    assert_int_equal(st.transitions, 2);
    assert_int_equal(st.unejected, 1);
    assert_int_equal(st.skipped, 0);
    assert_int_equal(st.inflight_max, 1);
    fx_dispose(&f, &srv, 1);
}

static bool four_down_one_up(fixture_t *f)
{
    return hstate(f, 0, 0)->down == 1 && hstate(f, 0, 1)->down == 1 && hstate(f, 0, 2)->down == 1 &&
           hstate(f, 0, 3)->down == 1 && hstate(f, 0, 4)->passes >= 3;
}

static void every_failure_kind_fails_the_probe_and_interim_responses_are_skipped(void **state)
{
    fixture_t f;
    server_t srv[4];
    fx_loop(&f);
    server_start(&f.loop, &srv[0], SRV_SILENT, 0);   /* timeout */
    server_start(&f.loop, &srv[1], SRV_GARBAGE, 0);  /* malformed */
    server_start(&f.loop, &srv[2], SRV_STATUS, 404); /* 4xx fails (unlike for the breaker) */
    server_start(&f.loop, &srv[3], SRV_INTERIM, 200);
    int refused = closed_port();
    fx_config(&f,
              "upstreams:\n  a: { hosts: [\"127.0.0.1:%d\", \"127.0.0.1:%d\", \"127.0.0.1:%d\", "
              "\"127.0.0.1:%d\", \"127.0.0.1:%d\"], " HC_FAST " }\n" ROUTE,
              srv[0].port, srv[1].port, srv[2].port, refused, srv[3].port);
    /* the prober's host indexes are the config's */
    assert_int_equal(f.cfg->upstreams[0].hosts[3].port, refused);
    assert_int_equal(f.cfg->upstreams[0].hosts[4].port, srv[3].port);
    fx_start(&f);
    assert_true(run_until(&f, four_down_one_up, 3000));
    assert_int_equal(hstate(&f, 0, 4)->down, 0);
    assert_int_equal(f.downs, 4);
    assert_int_equal(f.ups, 0);
    assert_true(srv[0].accepted >= 2 && srv[1].accepted >= 2 && srv[2].accepted >= 2);
    fx_dispose(&f, srv, 4);
}

static bool host0_probed(fixture_t *f)
{
    return hstate(f, 0, 0)->passes >= 1;
}

static void a_restarted_prober_resumes_from_the_shared_state(void **state)
{
    fixture_t f;
    server_t srv;
    fx_loop(&f);
    server_start(&f.loop, &srv, SRV_STATUS, 200);
    fx_config(&f, "upstreams:\n  a: { hosts: [\"127.0.0.1:%d\"], " HC_FAST " }\n" ROUTE, srv.port);
    /* what an earlier control process left: the host is down */
    gw_host_state_t *hs = hstate(&f, 0, 0);
    hs->down = 1;
    hs->fails = 7;
    hs->probed = 1;
    fx_start(&f);
    assert_int_equal(hs->down, 1); /* not reset at start */
    assert_true(run_until(&f, host0_probed, 2000));
    assert_int_equal(hs->passes, 1);
    assert_int_equal(hs->down, 1); /* one pass of two */
    assert_true(run_until(&f, host0_passed_twice, 2000));
    assert_int_equal(hs->down, 0);
    assert_int_equal(f.ups, 1);
    fx_dispose(&f, &srv, 1);
}

static bool never(fixture_t *f)
{
    return false;
}

static bool stale_down_cleared(fixture_t *f)
{
    return hstate(f, 1, 0)->down == 0 && hstate(f, 0, 0)->passes >= 1;
}

static void closed_gate_probes_nothing_and_the_sweep_waits_for_it(void **state)
{
    fixture_t f;
    server_t srv;
    fx_loop(&f);
    server_start(&f.loop, &srv, SRV_STATUS, 200);
    fx_config(&f,
              "upstreams:\n  a: { hosts: [\"127.0.0.1:%d\"], " HC_FAST " }\n"
              "  b: { hosts: [\"127.0.0.1:%d\"] }\n" ROUTE,
              srv.port, srv.port);
    /* upstream b has no health checks but a `down` left by an earlier config */
    hstate(&f, 1, 0)->down = 1;
    fx_start(&f);
    f.gate = false;
    gw_health_set_gate(f.h, gate, &f);
    run_until(&f, never, 300);
    assert_int_equal(srv.accepted, 0);
    assert_int_equal(hstate(&f, 0, 0)->probed, 0);
    assert_int_equal(hstate(&f, 1, 0)->down, 1);
    f.gate = true;
    assert_true(run_until(&f, stale_down_cleared, 2000));
    assert_int_equal(f.ups, 1);
    assert_true(srv.accepted >= 1);
    gw_health_stats_t st;
    gw_health_stats(f.h, &st);
    assert_int_equal(st.targets, 1);
    assert_int_equal(st.skipped, 0);
    fx_dispose(&f, &srv, 1);
}

/* Sockets this process has open (libuv keeps other fds of its own, e.g. a reserved /dev/null). */
static int open_sockets(void)
{
    int n = 0;
    char path[300], target[64];
    DIR *d = opendir("/proc/self/fd");
    assert_non_null(d);
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
        ssize_t len = readlink(path, target, sizeof(target) - 1);
        n += len > 7 && strncmp(target, "socket:", 7) == 0;
    }
    closedir(d);
    return n;
}

enum { BH_HOSTS = GW_MAX_HOSTS, BH_UPSTREAMS = 5 };
static int sock_base, sock_peak;

static bool fleet_down_and_fds_sampled(fixture_t *f)
{
    int n = open_sockets() - sock_base;
    if (n > sock_peak)
        sock_peak = n;
    for (size_t u = 0; u < BH_UPSTREAMS; u++)
        for (size_t h = 0; h < BH_HOSTS; h++)
            if (hstate(f, u, h)->down != 1)
                return false;
    return true;
}

static void blackholed_fleet_never_holds_more_than_max_inflight_sockets(void **state)
{
    static char hosts[BH_HOSTS * 24], yaml[BH_UPSTREAMS * sizeof(hosts) + 1024];
    static int fds[BH_HOSTS][2];
    fixture_t f;
    fx_loop(&f);
    size_t off = 0;
    for (int i = 0; i < BH_HOSTS; i++)
        off += (size_t)snprintf(hosts + off, sizeof(hosts) - off, "%s\"127.0.0.1:%d\"",
                                i ? ", " : "", blackhole(fds[i]));
    off = (size_t)snprintf(yaml, sizeof(yaml), "upstreams:\n");
    for (int u = 0; u < BH_UPSTREAMS; u++)
        off += (size_t)snprintf(yaml + off, sizeof(yaml) - off,
                                "  u%d: { hosts: [%s], health_check: { interval: 200ms, "
                                "timeout: 50ms, unhealthy_threshold: 1 } }\n",
                                u, hosts);
    snprintf(yaml + off, sizeof(yaml) - off,
             "routes:\n  - { name: r, match: { path_prefix: / }, upstream: u0 }\n");
    fx_config(&f, "%s", yaml);
    sock_base = open_sockets();
    sock_peak = 0;
    fx_start(&f);
    /* 320 probes of 50 ms each through 64 slots: all down within ~300 ms */
    assert_true(run_until(&f, fleet_down_and_fds_sampled, 5000));
    gw_health_stats_t st;
    gw_health_stats(f.h, &st);
    assert_int_equal(st.targets, BH_HOSTS * BH_UPSTREAMS);
    assert_int_equal(st.inflight_max, GW_HEALTH_MAX_INFLIGHT);
    assert_true(sock_peak <= GW_HEALTH_MAX_INFLIGHT);
    assert_true(sock_peak >= GW_HEALTH_MAX_INFLIGHT / 2); /* the sampling did see the load */
    assert_int_equal(st.ok, 0);
    assert_true(st.failed >= BH_HOSTS * BH_UPSTREAMS);
    assert_int_equal(f.downs, BH_HOSTS * BH_UPSTREAMS);
    /* closing with probes in flight: every socket is closed, done is called once */
    fx_dispose(&f, NULL, 0);
    assert_true(open_sockets() <= sock_base);
    for (int i = 0; i < BH_HOSTS; i++) {
        close(fds[i][0]);
        close(fds[i][1]);
    }
}

static void bad_arguments_are_refused(void **state)
{
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    errno = 0;
    assert_null(gw_health_new(&loop, NULL, NULL, NULL));
    assert_int_equal(errno, EINVAL);
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- main
 * ---------------------------------------------------------------------------------------- */

int main(void)
{
    /* the prober logs every transition; keep the test output to cmocka's */
    setenv("BREAKWATER_LOG_LEVEL", "error", 1);
    gw_log_init("test");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(unknown_host_is_usable_and_needs_unhealthy_threshold_fails_to_go_down),
        cmocka_unit_test(unknown_host_that_passes_reports_no_transition),
        cmocka_unit_test(down_host_needs_healthy_threshold_passes_to_come_up),
        cmocka_unit_test(flapping_host_never_changes_state),
        cmocka_unit_test(a_failure_resets_the_pass_count_and_a_pass_the_fail_count),
        cmocka_unit_test(healthy_probe_ends_an_ejection),
        cmocka_unit_test(pass_below_healthy_threshold_or_failure_keeps_the_ejection),
        cmocka_unit_test(counting_resumes_from_the_shared_state),
        cmocka_unit_test(zero_thresholds_read_as_one_and_counters_saturate),
        cmocka_unit_test(statuses_2xx_and_3xx_pass),
        cmocka_unit_test(error_names),
        cmocka_unit_test(first_round_is_staggered_over_one_interval),
        cmocka_unit_test(sched_bad_arguments),
        cmocka_unit_test(due_targets_run_in_due_order_and_others_wait),
        cmocka_unit_test(running_probes_never_exceed_the_bound),
        cmocka_unit_test(full_queue_skips_and_counts_the_due_probe),
        cmocka_unit_test(a_skipped_probe_far_behind_is_not_retried_at_once),
        cmocka_unit_test(a_host_never_has_two_probes_at_once),
        cmocka_unit_test(finish_keeps_the_cadence),
        cmocka_unit_test(closed_gate_defers_without_counting),
        cmocka_unit_test(simulated_blackholed_fleet_stays_within_bounds),
        cmocka_unit_test(probe_sends_the_request_and_marks_down_then_up),
        cmocka_unit_test(every_failure_kind_fails_the_probe_and_interim_responses_are_skipped),
        cmocka_unit_test(a_restarted_prober_resumes_from_the_shared_state),
        cmocka_unit_test(closed_gate_probes_nothing_and_the_sweep_waits_for_it),
        cmocka_unit_test(blackholed_fleet_never_holds_more_than_max_inflight_sockets),
        cmocka_unit_test(bad_arguments_are_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
