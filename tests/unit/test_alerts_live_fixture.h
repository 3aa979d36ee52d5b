/* test_alerts_live_fixture.h - shared by the tests that run the real delivery loop
 * (test_alerts_sender.c, test_alerts_channel_delivery.c): a real engine on a SQLite file in a
 * temporary directory, the real sender on a libuv loop of the test's own, and a Python helper
 * from tests/integration (receiver.py, fake_providers.py) as the far end on loopback.
 *
 * What is here is what those tests share: starting and stopping the helper, a blocking call to
 * its control endpoints, the engine and sender set-up and tear-down, and running the loop until
 * a condition holds; the config, the one-value SQL reads and removing the temporary directory
 * come from test_alerts_engine_fixture.h. Each test keeps its own fixture struct.
 *
 * Every helper is static inline so each test file uses what it needs without unused-function
 * warnings. Not a test itself (the CMake glob takes tests/unit/test_*.c only).
 */
#ifndef TEST_ALERTS_LIVE_FIXTURE_H
#define TEST_ALERTS_LIVE_FIXTURE_H

#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <jansson.h>
#include <uv.h>

#include "alerts.h"
#include "config.h"
#include "db.h"
#include "sender.h"

#include "test_alerts_engine_fixture.h"

#define LIVE_PYTHON "/usr/bin/python3"

/* The path of tests/integration/<name>, found from this file's own path. */
static inline void live_script_path(char *out, size_t len, const char *name)
{
    const char *slash;

    snprintf(out, len, "%s", __FILE__); /* .../tests/unit/test_alerts_live_fixture.h */
    slash = strrchr(out, '/');
    assert_non_null(slash);
    out[slash - out] = '\0';
    slash = strrchr(out, '/');
    assert_non_null(slash);
    snprintf(out + (slash - out), len - (size_t)(slash - out), "/integration/%s", name);
}

/* Starts LIVE_PYTHON with argv (argv[0] "python3", NULL-terminated) and reads its stdout into
 * out until `lines` whole lines came (what it prints once it listens: "PORT n", ...) or 10 s
 * passed. Returns the child's pid. */
static inline pid_t live_python_start(const char *const *argv, char *out, size_t len, int lines)
{
    int fds[2], seen = 0;
    struct pollfd p;
    size_t n = 0;
    pid_t pid;

    assert_true(len > 1);
    out[0] = '\0';
    assert_int_equal(pipe(fds), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        execv(LIVE_PYTHON, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    p = (struct pollfd){.fd = fds[0], .events = POLLIN};
    while (n + 1 < len && seen < lines && poll(&p, 1, 10000) == 1) {
        ssize_t got = read(fds[0], out + n, len - 1 - n);
        if (got <= 0)
            break;
        for (ssize_t i = 0; i < got; i++)
            seen += out[n + (size_t)i] == '\n';
        n += (size_t)got;
        out[n] = '\0';
    }
    close(fds[0]);
    return pid;
}

/* SIGTERM to a child started above, and waits for it (nothing when *pid <= 0). */
static inline void live_child_stop(pid_t *pid)
{
    int st;

    if (*pid <= 0)
        return;
    kill(*pid, SIGTERM);
    waitpid(*pid, &st, 0);
    *pid = 0;
}

static inline size_t live_collect(char *data, size_t size, size_t n, void *userp)
{
    fwrite(data, size, n, userp);
    return size * n;
}

/* A blocking call to a helper's control endpoint (GET, or POST of the JSON text `post`): it must
 * answer 200 with JSON, which is returned (a new reference). Only while the loop is not
 * running. */
static inline json_t *live_control(int port, const char *path, const char *post)
{
    char url[160], *text = NULL;
    size_t len = 0;
    long status = 0;
    FILE *mem = open_memstream(&text, &len);
    CURL *c = curl_easy_init();
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    json_t *j;

    assert_non_null(mem);
    assert_non_null(c);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_PROXY, "");
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 5000L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, live_collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, mem);
    if (post != NULL) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, post);
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    }
    assert_int_equal(curl_easy_perform(c), CURLE_OK);
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    curl_slist_free_all(h);
    fclose(mem);
    j = json_loads(text, 0, NULL);
    if (status != 200 || j == NULL)
        fail_msg("%s %s: HTTP %ld, %s", post != NULL ? "POST" : "GET", path, status, text);
    free(text);
    return j;
}

static inline uint64_t live_wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* al_engine_options_t.random: a counter (jitter at the bottom of its range, ids distinct). */
static inline uint64_t live_counter_random(void *ctx)
{
    return (*(uint64_t *)ctx)++;
}

/* al_sender_options_t.log: appends {"level", "msg", fields...} to the JSON array ctx. */
static inline void live_capture_log(void *ctx, int level, const char *msg, json_t *fields)
{
    json_t *o = json_pack("{s:i, s:s}", "level", level, "msg", msg);

    json_object_update(o, fields);
    json_array_append_new(ctx, o);
}

/* Opens the database in dir and an engine on it, started (al_engine_start) at the wall clock. */
static inline void live_engine_open(const char *dir, const gw_config_t *cfg,
                                    const al_engine_options_t *opt, al_db_t **db, al_engine_t **e)
{
    char err[256];

    assert_int_equal(al_db_open(dir, db, err, sizeof(err)), 0);
    assert_int_equal(al_engine_new(*db, &cfg->alerts, opt, e), 0);
    assert_int_equal(al_engine_start(*e, live_wall_ms()), 0);
}

/* Frees the engine and closes its database (both set to NULL). */
static inline void live_engine_close(al_db_t **db, al_engine_t **e)
{
    al_engine_free(*e);
    al_db_close(*db);
    *e = NULL;
    *db = NULL;
}

static inline void live_on_closed(void *ctx)
{
    *(bool *)ctx = true;
}

/* Closes the sender and then the loop, which must have nothing left on it. */
static inline void live_sender_close(al_sender_t *s, uv_loop_t *loop)
{
    bool closed = false;

    al_sender_close(s, live_on_closed, &closed);
    assert_int_equal(uv_run(loop, UV_RUN_DEFAULT), 0);
    assert_true(closed);
    assert_int_equal(uv_loop_close(loop), 0);
}

typedef struct live_wait {
    uv_loop_t *loop;
    bool (*check)(void *ctx);
    void *ctx;
    uint64_t deadline;
    bool met;
} live_wait_t;

static inline void live_on_check(uv_timer_t *t)
{
    live_wait_t *w = t->data;

    if (w->check(w->ctx)) {
        w->met = true;
        uv_stop(w->loop);
    } else if (live_wall_ms() >= w->deadline) {
        uv_stop(w->loop);
    }
}

/* Runs the loop until check(ctx) holds (true) or timeout_ms passed (false); check runs every
 * 10 ms from a timer on the same loop. */
static inline bool live_run_until(uv_loop_t *loop, bool (*check)(void *ctx), void *ctx,
                                  uint64_t timeout_ms)
{
    live_wait_t w = {.loop = loop, .check = check, .ctx = ctx};
    uv_timer_t timer;

    w.deadline = live_wall_ms() + timeout_ms;
    uv_timer_init(loop, &timer);
    timer.data = &w;
    uv_timer_start(&timer, live_on_check, 10, 10);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&timer, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return w.met;
}

#endif
