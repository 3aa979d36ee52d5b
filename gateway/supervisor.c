/*
 * supervisor.c - binds, forks, watches, replaces, reloads; stops everything gracefully.
 *
 * Deliberately small and free of libuv: a child forked from a process with a running libuv loop
 * would inherit its epoll instance and handles. The supervisor waits on a signalfd (SIGCHLD,
 * SIGTERM, SIGINT, SIGHUP) with poll(), with a timeout for its timed duties, and keeps a table
 * of children. It never runs request code and never opens SQLite after start-up.
 *
 * Generations: the config in force, its runtime (shared stats sized for it) and its children form
 * a generation. A reload builds a new generation, starts its control process and workers, and
 * once every new worker is ready sends the old generation's children SIGTERM (they finish their
 * in-flight requests; new connections already go to the new workers, which accept on the same
 * sockets). When the last old child is gone the old generation is freed.
 *
 * Children of the current generation that die are replaced at once, in the same slot, except
 * during a crash loop (crashloop.h: more than 5 crashes within 60 s): each respawn is then
 * delayed, 0.5 s doubling up to 30 s, `crash_loop` is raised, and the other workers keep serving
 * meanwhile (the last live worker is never held back).
 *
 * Watchdog: each worker bumps a heartbeat in its stats slot every 100 ms from its event loop. A
 * ready worker whose heartbeat is older than watchdog.stall_after is killed (SIGKILL) and
 * replaced, with a `worker_stall` event.
 */
#include "supervisor.h"

#include <arpa/inet.h>
#include <errno.h>
#include <execinfo.h>
#include <jansson.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "control.h"
#include "crashloop.h"
#include "acklink.h"
#include "db.h"
#include "events.h"
#include "limiter.h"
#include "log.h"
#include "runtime.h"
#include "stats.h"
#include "worker.h"

#define CRASH_LOOP_COUNT GW_CRASH_LOOP_COUNT
#define CRASH_LOOP_WINDOW_MS GW_CRASH_LOOP_WINDOW_MS
#define RESPAWN_BASE_MS GW_RESPAWN_BASE_MS
#define STOP_GRACE_MS 2000
#define RELOAD_READY_TIMEOUT_MS 10000
#define ANNOUNCE_TIMEOUT_MS 5000
#define MAX_LISTENERS 64

typedef struct generation {
    uint64_t id;
    gw_config_t *cfg;
    gw_runtime_t rt;
    int listen_fds[MAX_LISTENERS];
    size_t nlisten;
    size_t live_children; /* children of this generation still running */
} generation_t;

typedef enum child_kind {
    CHILD_CONTROL = 0,
    CHILD_WORKER,
} child_kind_t;

typedef struct child {
    child_kind_t kind;
    uint32_t index; /* worker slot */
    generation_t *gen;
    pid_t pid;              /* 0 = not running */
    uint64_t respawn_at_ms; /* 0 = not waiting */
    bool retiring;          /* told to stop (reload or shutdown): do not replace */
    bool killed_for_stall;
} child_t;

typedef struct bound_fd {
    char addr[64];
    int fd;
} bound_fd_t;

typedef struct supervisor {
    const char *config_path;
    generation_t *cur, *old; /* old: the generation being drained after a reload */
    gw_events_t *events;
    gw_shared_t *shared;
    gw_upstates_t *upstates;
    gw_limiters_t *limiters;
    bound_fd_t bound[MAX_LISTENERS];
    size_t nbound;
    int admin_fd;
    int sigfd;
    sigset_t sigmask, oldmask;
    pid_t self;
    child_t *children;
    size_t nchildren, cap_children;
    gw_crashloop_t crashloop;
    bool stopping;
    uint64_t stop_deadline_ms;
    bool reloading; /* new generation started, waiting for its workers to be ready */
    uint64_t reload_deadline_ms;
    uint64_t announce_deadline_ms; /* != 0: done, waiting for the old workers to stop accepting */
    uint64_t last_watchdog_ms;
} supervisor_t;

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* ---- events ------------------------------------------------------------------------------ */

/* Emits an event whose fields are built with a jansson pack format (steals `fields`). */
static void emit(supervisor_t *s, const char *kind, int32_t worker, json_t *fields)
{
    char *text = fields != NULL ? json_dumps(fields, JSON_COMPACT) : NULL;
    if (gw_events_emit(s->events, kind, worker, text) == -EMSGSIZE) {
        /* too big (a long backtrace): keep the event, drop the detail */
        json_object_del(fields, "backtrace");
        free(text);
        text = json_dumps(fields, JSON_COMPACT);
        gw_events_emit(s->events, kind, worker, text);
    }
    free(text);
    json_decref(fields);
}

/* ---- sockets ----------------------------------------------------------------------------- */

/* Binds and listens on addr; returns the fd or -1 after logging why. */
static int bind_listener(const gw_addr_t *addr, const char *what)
{
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof(ss));
    if (addr->family == AF_INET6) {
        struct sockaddr_in6 *sa = (struct sockaddr_in6 *)&ss;
        sa->sin6_family = AF_INET6;
        sa->sin6_port = htons(addr->port);
        inet_pton(AF_INET6, addr->host, &sa->sin6_addr);
        len = sizeof(*sa);
    } else {
        struct sockaddr_in *sa = (struct sockaddr_in *)&ss;
        sa->sin_family = AF_INET;
        sa->sin_port = htons(addr->port);
        inet_pton(AF_INET, addr->host, &sa->sin_addr);
        len = sizeof(*sa);
    }
    int fd = socket(addr->family, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, (struct sockaddr *)&ss, len) != 0 || listen(fd, 1024) != 0) {
        gw_log(GW_LOG_ERROR, "cannot listen", "{s:s, s:s, s:s}", "listener", what, "address",
               addr->text, "error", strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    return fd;
}

/* The fd listening on `addr`: an already bound one (kept across reloads) or a new one. */
static int listener_fd(supervisor_t *s, const gw_addr_t *addr)
{
    for (size_t i = 0; i < s->nbound; i++)
        if (strcmp(s->bound[i].addr, addr->text) == 0)
            return s->bound[i].fd;
    if (s->nbound == MAX_LISTENERS)
        return -1;
    int fd = bind_listener(addr, "public");
    if (fd >= 0) {
        snprintf(s->bound[s->nbound].addr, sizeof(s->bound[0].addr), "%s", addr->text);
        s->bound[s->nbound++].fd = fd;
    }
    return fd;
}

/* Closes listening sockets that no live generation uses any more. */
static void close_unused_listeners(supervisor_t *s)
{
    for (size_t i = 0; i < s->nbound;) {
        bool used = false;
        for (generation_t *g = s->cur; g != NULL; g = g == s->cur ? s->old : NULL)
            for (size_t k = 0; k < g->nlisten; k++)
                used |= g->listen_fds[k] == s->bound[i].fd;
        if (used) {
            i++;
            continue;
        }
        close(s->bound[i].fd);
        s->bound[i] = s->bound[--s->nbound];
    }
}

/* ---- generations ------------------------------------------------------------------------- */

static void generation_free(generation_t *g)
{
    if (g == NULL)
        return;
    gw_stats_free(g->rt.stats);
    gw_outq_free(g->rt.outq);
    free((void *)g->rt.slot_of);
    free((void *)g->rt.limiter_of);
    gw_config_free(g->cfg);
    free(g);
}

static generation_t *generation_new(supervisor_t *s, gw_config_t *cfg, uint64_t id)
{
    generation_t *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return NULL;
    g->id = id;
    g->cfg = cfg;
    for (size_t i = 0; i < cfg->nlisten && i < MAX_LISTENERS; i++) {
        if ((g->listen_fds[i] = listener_fd(s, &cfg->listen[i])) < 0) {
            free(g);
            return NULL;
        }
        g->nlisten++;
    }
    uint32_t *slot_of = calloc(cfg->nupstreams, sizeof(uint32_t));
    g->rt.stats = gw_stats_new(cfg, cfg->workers);
    g->rt.outq = gw_outq_new(cfg->workers);
    if (slot_of == NULL || g->rt.stats == NULL || g->rt.outq == NULL) {
        gw_log(GW_LOG_ERROR, "cannot map shared memory", "{s:s}", "error", strerror(errno));
        free(slot_of);
        g->cfg = NULL; /* still the caller's */
        generation_free(g);
        return NULL;
    }
    uint64_t oldest_live = s->cur != NULL ? s->cur->id : id;
    int r = gw_upstates_bind(s->upstates, cfg, id, oldest_live, mono_ms(), slot_of);
    if (r != 0) {
        gw_log(GW_LOG_ERROR, "cannot keep state for the upstreams", "{s:s}", "error",
               r == -E2BIG ? "an upstream has more hosts than the maximum (64)"
                           : "too many upstreams over this process's life (maximum 256)");
        free(slot_of);
        g->cfg = NULL; /* still the caller's */
        generation_free(g);
        return NULL;
    }
    g->rt.slot_of = slot_of;
    br_keytable_t **limiter_of = calloc(cfg->nroutes + 1, sizeof(*limiter_of));
    r = limiter_of == NULL ? -ENOMEM
                           : gw_limiters_bind(s->limiters, cfg, id, oldest_live, limiter_of);
    if (r != 0) {
        gw_log(GW_LOG_ERROR, "cannot set up the rate limiters", "{s:s}", "error", strerror(-r));
        free(limiter_of);
        g->cfg = NULL; /* still the caller's */
        generation_free(g);
        return NULL;
    }
    g->rt.limiter_of = limiter_of;
    g->rt.upstates = s->upstates;
    g->rt.generation = id;
    g->rt.cfg = cfg;
    g->rt.config_path = s->config_path;
    g->rt.events = s->events;
    g->rt.shared = s->shared;
    return g;
}

/* ---- children ---------------------------------------------------------------------------- */

static child_t *add_child(supervisor_t *s, child_kind_t kind, uint32_t index, generation_t *g)
{
    for (size_t i = 0; i < s->nchildren; i++) {
        child_t *c = &s->children[i];
        if (c->gen == NULL) { /* a free entry */
            *c = (child_t){.kind = kind, .index = index, .gen = g};
            return c;
        }
    }
    if (s->nchildren == s->cap_children) {
        size_t cap = s->cap_children ? s->cap_children * 2 : 16;
        child_t *n = realloc(s->children, cap * sizeof(*n));
        if (n == NULL)
            return NULL;
        s->children = n;
        s->cap_children = cap;
    }
    child_t *c = &s->children[s->nchildren++];
    *c = (child_t){.kind = kind, .index = index, .gen = g};
    return c;
}

static void child_setup(supervisor_t *s)
{
    close(s->sigfd);
    sigprocmask(SIG_SETMASK, &s->oldmask, NULL);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != s->self) /* the supervisor died between fork and prctl */
        _exit(0);
}

static void spawn(supervisor_t *s, child_t *c)
{
    generation_t *g = c->gen;
    if (c->kind == CHILD_WORKER) /* a fresh slot for the new process: no stale crash record */
        memset(&gw_stats_worker(g->rt.stats, c->index)->crash, 0, sizeof(gw_crash_record_t));
    pid_t pid = fork();
    if (pid < 0) {
        gw_log(GW_LOG_ERROR, "fork failed", "{s:s}", "error", strerror(errno));
        c->respawn_at_ms = mono_ms() + RESPAWN_BASE_MS;
        return;
    }
    if (pid == 0) {
        child_setup(s);
        if (c->kind == CHILD_CONTROL) {
            for (size_t i = 0; i < s->nbound; i++)
                close(s->bound[i].fd);
            _exit(gw_control_main(&g->rt, s->admin_fd));
        }
        close(s->admin_fd);
        _exit(gw_worker_main(&g->rt, c->index, g->listen_fds, g->nlisten));
    }
    c->pid = pid;
    c->respawn_at_ms = 0;
    c->killed_for_stall = false;
    g->live_children++;
}

static const char *child_name(const child_t *c)
{
    return c->kind == CHILD_CONTROL ? "control" : "worker";
}

/* Records a crash; returns the delay before the respawn (0 outside a crash loop). */
static uint64_t note_crash(supervisor_t *s, uint64_t now)
{
    bool entering = false;
    uint64_t delay = gw_crashloop_note(&s->crashloop, now, &entering);
    if (entering) {
        GW_STAT_SET(s->shared->crash_loop, 1);
        gw_log(GW_LOG_ERROR, "crash loop: delaying worker respawns", "{s:i, s:i}", "crashes",
               CRASH_LOOP_COUNT + 1, "window_ms", CRASH_LOOP_WINDOW_MS);
        emit(s, "crash_loop", -1,
             json_pack("{s:i, s:i, s:I}", "crashes", CRASH_LOOP_COUNT + 1, "window_ms",
                       CRASH_LOOP_WINDOW_MS, "respawn_delay_ms", (json_int_t)delay));
    }
    return delay;
}

/* The crash record a dying worker left, as JSON fields (with the symbolized backtrace). */
static json_t *crash_fields(const child_t *c, int sig, const gw_crash_record_t *r)
{
    const gw_config_t *cfg = c->gen->cfg;
    json_t *f = json_pack("{s:i, s:i, s:s}", "worker", (int)c->index, "signal", sig, "signal_name",
                          sigabbrev_np(sig) ? sigabbrev_np(sig) : "?");
    if (__atomic_load_n(&r->signal, __ATOMIC_ACQUIRE) != sig)
        return f; /* killed from outside (e.g. SIGKILL): no record */
    json_object_set_new(f, "pid", json_integer((json_int_t)r->pid));
    json_object_set_new(f, "fault_addr", json_integer((json_int_t)r->fault_addr));
    if (r->route >= 0 && (size_t)r->route < cfg->nroutes)
        json_object_set_new(f, "route", json_string(cfg->routes[r->route].name));
    if (r->request_id[0] != '\0')
        json_object_set_new(
            f, "request_id",
            json_stringn(r->request_id, strnlen(r->request_id, sizeof(r->request_id))));
    size_t n = r->nframes < GW_CRASH_FRAMES ? r->nframes : GW_CRASH_FRAMES;
    void *frames[GW_CRASH_FRAMES];
    for (size_t i = 0; i < n; i++)
        frames[i] = (void *)(uintptr_t)r->frames[i];
    char **syms = n > 0 ? backtrace_symbols(frames, (int)n) : NULL;
    json_t *bt = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(bt, json_string(syms != NULL ? syms[i] : "?"));
    free(syms);
    json_object_set_new(f, "backtrace", bt);
    return f;
}

/* Workers of generation g that are running and not being retired. */
static size_t live_workers(const supervisor_t *s, const generation_t *g)
{
    size_t n = 0;
    for (size_t i = 0; i < s->nchildren; i++) {
        const child_t *c = &s->children[i];
        n += c->gen == g && c->kind == CHILD_WORKER && c->pid != 0 && !c->retiring;
    }
    return n;
}

static void on_child_exit(supervisor_t *s, child_t *c, int status)
{
    generation_t *g = c->gen;
    int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    uint64_t now = mono_ms();
    c->pid = 0;
    g->live_children--;
    if (c->retiring || s->stopping) {
        gw_log(GW_LOG_INFO, "child stopped", "{s:s, s:i, s:i, s:I}", "child", child_name(c),
               "index", (int)c->index, "exit_code", code, "generation", (json_int_t)g->id);
        if (c->kind == CHILD_WORKER)
            gw_stats_reset_gauges(g->rt.stats, c->index);
        c->gen = NULL; /* frees the entry */
        return;
    }

    gw_restart_reason_t reason = c->killed_for_stall ? GW_RESTART_STALL
                                 : sig != 0          ? GW_RESTART_CRASH
                                                     : GW_RESTART_EXIT;
    GW_STAT_ADD(s->shared->restarts[reason], 1);
    if (c->kind == CHILD_WORKER) {
        if (reason != GW_RESTART_STALL) {
            json_t *f = crash_fields(c, sig, &gw_stats_worker(g->rt.stats, c->index)->crash);
            json_object_set_new(f, "exit_code", json_integer(code));
            char *text = json_dumps(f, JSON_COMPACT);
            gw_log(GW_LOG_ERROR, "worker died; replacing it", "{s:s}", "crash",
                   text != NULL ? text : "{}");
            free(text);
            emit(s, "worker_crash", (int32_t)c->index, f);
        }
        gw_stats_reset_gauges(g->rt.stats, c->index);
    } else {
        gw_log(GW_LOG_ERROR, "control process died; replacing it", "{s:i, s:i}", "exit_code", code,
               "signal", sig);
    }
    uint64_t delay = reason == GW_RESTART_STALL ? 0 : note_crash(s, now);
    if (delay > 0 && c->kind == CHILD_WORKER && live_workers(s, g) == 0)
        delay = 0; /* never leave the gateway without a worker: the loop's delay is for the rest */
    if (delay > 0)
        c->respawn_at_ms = now + delay;
    else
        spawn(s, c);
}

static void reap(supervisor_t *s)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (size_t i = 0; i < s->nchildren; i++)
            if (s->children[i].gen != NULL && s->children[i].pid == pid)
                on_child_exit(s, &s->children[i], status);
    }
}

static size_t running(const supervisor_t *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->nchildren; i++)
        n += s->children[i].gen != NULL && s->children[i].pid != 0;
    return n;
}

/* Tells every child of generation g (all generations when g is NULL) to stop. */
static void retire(supervisor_t *s, generation_t *g)
{
    for (size_t i = 0; i < s->nchildren; i++) {
        child_t *c = &s->children[i];
        if (c->gen == NULL || (g != NULL && c->gen != g))
            continue;
        c->retiring = true;
        c->respawn_at_ms = 0;
        if (c->pid != 0)
            kill(c->pid, SIGTERM);
        else
            c->gen = NULL;
    }
}

/* ---- watchdog ---------------------------------------------------------------------------- */

/*
 * Kills (and so replaces) a worker whose event loop has not run for stall_after. Two guards
 * against mistaking a paused machine for stuck workers (a VM paused or starved for seconds makes
 * every heartbeat old at once): a pass is skipped when the supervisor's own previous pass is
 * itself older than stall_after (then we were not running either), and at most one worker is
 * killed per pass (a pass runs every stall_after / 4), so a truly stuck fleet is still replaced
 * one by one while a momentary stall never takes every worker down together.
 */
static void watchdog(supervisor_t *s, uint64_t now)
{
    uint64_t last = s->last_watchdog_ms;
    s->last_watchdog_ms = now;
    if (last != 0 && now - last > s->cur->cfg->stall_after_ms)
        return;
    for (size_t i = 0; i < s->nchildren; i++) {
        child_t *c = &s->children[i];
        if (c->gen == NULL || c->kind != CHILD_WORKER || c->pid == 0 || c->retiring ||
            c->killed_for_stall)
            continue;
        gw_worker_stats_t *ws = gw_stats_worker(c->gen->rt.stats, c->index);
        uint64_t beat = GW_STAT_GET(ws->heartbeat_ms);
        uint64_t stall_after = c->gen->cfg->stall_after_ms;
        /* a healthy loop's heartbeat can be up to one beat old: only what lies beyond that is
         * blocking, so a worker is never killed before it has really been stuck stall_after */
        if (GW_STAT_GET(ws->ready) != 1 || beat == 0 || now <= beat ||
            now - beat < stall_after + GW_HEARTBEAT_MS)
            continue;
        uint64_t blocked = now - beat - GW_HEARTBEAT_MS;
        gw_log(GW_LOG_ERROR, "worker stalled; killing and replacing it", "{s:i, s:i, s:I}",
               "worker", (int)c->index, "worker_pid", (int)c->pid, "blocked_ms",
               (json_int_t)blocked);
        emit(s, "worker_stall", (int32_t)c->index,
             json_pack("{s:i, s:i, s:I, s:I}", "worker", (int)c->index, "pid", (int)c->pid,
                       "blocked_ms", (json_int_t)blocked, "stall_after_ms",
                       (json_int_t)stall_after));
        c->killed_for_stall = true;
        kill(c->pid, SIGKILL);
        return; /* one per pass */
    }
}

/* ---- reload ------------------------------------------------------------------------------ */

static void reload_result(supervisor_t *s, bool ok, const char *message)
{
    snprintf(s->shared->reload_message, sizeof(s->shared->reload_message), "%s", message);
    GW_STAT_SET(s->shared->reload_ok, ok ? 1 : 0);
    __atomic_fetch_add(&s->shared->reload_seq, 1, __ATOMIC_RELEASE);
}

static void reload_refused(supervisor_t *s, json_t *errors, const char *summary)
{
    char *text = json_dumps(errors, JSON_COMPACT);
    gw_log(GW_LOG_ERROR, "reload refused; keeping the running config", "{s:s, s:s}", "reason",
           summary, "errors", text != NULL ? text : "[]");
    reload_result(s, false, text != NULL ? text : summary);
    free(text);
    emit(s, "reload_failed", -1, json_pack("{s:s, s:o}", "reason", summary, "errors", errors));
}

static void spawn_generation(supervisor_t *s, generation_t *g)
{
    child_t *ctl = add_child(s, CHILD_CONTROL, 0, g);
    if (ctl != NULL)
        spawn(s, ctl);
    for (uint32_t i = 0; i < g->cfg->workers; i++) {
        child_t *w = add_child(s, CHILD_WORKER, i, g);
        if (w != NULL)
            spawn(s, w);
    }
}

static void begin_reload(supervisor_t *s)
{
    if (s->stopping)
        return;
    if (s->reloading || s->old != NULL) {
        json_t *e = json_pack("[s]", "a reload is already in progress");
        reload_refused(s, e, "busy");
        return;
    }
    gw_diag_t diag;
    gw_diag_init(&diag);
    gw_config_t *cfg = NULL;
    const char *default_yaml = gw_default_config_yaml;
    int r = s->config_path != NULL ? gw_config_load_file(s->config_path, &cfg, &diag)
                                   : gw_config_load_string("<default>", default_yaml,
                                                           strlen(default_yaml), &cfg, &diag);
    json_t *errors = json_array();
    for (size_t i = 0; i < diag.n; i++)
        json_array_append_new(errors, json_string(diag.items[i]));
    gw_diag_dispose(&diag);
    if (r != 0) {
        reload_refused(s, errors, "invalid configuration");
        return;
    }
    const gw_config_t *old = s->cur->cfg;
    const char *why = strcmp(cfg->state_dir, old->state_dir) != 0                   ? "state_dir"
                      : strcmp(cfg->admin_listen.text, old->admin_listen.text) != 0 ? "admin.listen"
                                                                                    : NULL;
    if (why != NULL) {
        char msg[128];
        snprintf(msg, sizeof(msg), "changing %s needs a restart", why);
        json_array_append_new(errors, json_string(msg));
        gw_config_free(cfg);
        reload_refused(s, errors, msg);
        return;
    }
    json_decref(errors);
    generation_t *g = generation_new(s, cfg, s->cur->id + 1);
    if (g == NULL) {
        gw_config_free(cfg);
        close_unused_listeners(s);
        reload_refused(s, json_pack("[s]", "cannot set up the new listeners or shared memory"),
                       "start-up failed");
        return;
    }
    s->old = s->cur;
    s->cur = g;
    s->reloading = true;
    s->reload_deadline_ms = mono_ms() + RELOAD_READY_TIMEOUT_MS;
    gw_log(GW_LOG_INFO, "reloading: starting workers on the new config", "{s:I}", "generation",
           (json_int_t)g->id);
    spawn_generation(s, g);
}

/* Called while reloading: once the new workers are all ready, retire the old generation. */
static void reload_progress(supervisor_t *s, uint64_t now)
{
    generation_t *g = s->cur;
    uint32_t ready = 0;
    for (uint32_t i = 0; i < g->cfg->workers; i++)
        ready += GW_STAT_GET(gw_stats_worker(g->rt.stats, i)->ready) == 1;
    if (ready < g->cfg->workers && now < s->reload_deadline_ms)
        return;
    s->reloading = false;
    if (ready < g->cfg->workers) {
        /* the new generation cannot start: keep the old one, drop the new */
        generation_t *bad = s->cur;
        s->cur = s->old;
        s->old = bad;
        retire(s, bad);
        reload_refused(s, json_pack("[s]", "the new workers did not become ready"),
                       "new workers not ready");
        return;
    }
    GW_STAT_SET(s->shared->config_generation, g->id);
    gw_log(GW_LOG_INFO, "new workers ready; draining the old ones", "{s:I}", "generation",
           (json_int_t)g->id);
    s->announce_deadline_ms = now + ANNOUNCE_TIMEOUT_MS;
    retire(s, s->old);
}

/*
 * The reload is reported done (API answer, `reload` event) only once every old worker has
 * stopped accepting: a client that connects after the answer must get the new config.
 */
static void reload_announce(supervisor_t *s, uint64_t now)
{
    if (s->announce_deadline_ms == 0)
        return;
    size_t accepting = 0;
    if (s->old != NULL)
        for (uint32_t i = 0; i < s->old->cfg->workers; i++)
            accepting += GW_STAT_GET(gw_stats_worker(s->old->rt.stats, i)->ready) == 1;
    if (accepting > 0 && now < s->announce_deadline_ms)
        return;
    s->announce_deadline_ms = 0;
    char msg[96];
    snprintf(msg, sizeof(msg), "reloaded: config generation %llu", (unsigned long long)s->cur->id);
    reload_result(s, true, msg);
    gw_log(GW_LOG_INFO, "reload done", "{s:I}", "generation", (json_int_t)s->cur->id);
    emit(s, "reload", -1,
         json_pack("{s:I, s:s}", "generation", (json_int_t)s->cur->id, "config",
                   s->config_path != NULL ? s->config_path : "<default>"));
}

/* Frees the drained generation once its last child is gone. */
static void collect_old(supervisor_t *s)
{
    if (s->old == NULL || s->reloading || s->old->live_children > 0)
        return;
    generation_t *g = s->old;
    for (size_t i = 0; i < s->nchildren; i++)
        if (s->children[i].gen == g)
            s->children[i].gen = NULL;
    s->old = NULL;
    generation_free(g);
    gw_limiters_collect(s->limiters, s->cur->id);
    close_unused_listeners(s);
}

/* ---- the loop ---------------------------------------------------------------------------- */

static void begin_stop(supervisor_t *s, int signo)
{
    if (s->stopping)
        return;
    s->stopping = true;
    s->stop_deadline_ms = mono_ms() + s->cur->cfg->shutdown_timeout_ms + STOP_GRACE_MS;
    gw_log(GW_LOG_INFO, "stopping", "{s:s, s:I}", "signal", strsignal(signo), "shutdown_timeout_ms",
           (json_int_t)s->cur->cfg->shutdown_timeout_ms);
    retire(s, NULL);
    /* The workers close their copies of the listening sockets; ours must go too, or the kernel
     * would keep accepting connections that nobody will ever serve (clients should be refused
     * and retry elsewhere). */
    for (size_t i = 0; i < s->nbound; i++)
        close(s->bound[i].fd);
    s->nbound = 0;
}

static void handle_signals(supervisor_t *s)
{
    struct signalfd_siginfo si;
    while (read(s->sigfd, &si, sizeof(si)) == (ssize_t)sizeof(si)) {
        switch (si.ssi_signo) {
        case SIGCHLD:
            reap(s);
            break;
        case SIGTERM:
        case SIGINT:
            begin_stop(s, (int)si.ssi_signo);
            break;
        case SIGHUP:
            begin_reload(s);
            break;
        default:
            break;
        }
    }
}

/* Milliseconds until the next timed duty, for poll(). */
static int next_timeout(const supervisor_t *s)
{
    uint64_t now = mono_ms(), next = now + 1000;
    uint64_t tick = s->cur->cfg->stall_after_ms / 4;
    if (now + (tick < 20 ? 20 : tick) < next)
        next = now + (tick < 20 ? 20 : tick);
    if (s->reloading && now + 20 < next)
        next = now + 20;
    for (size_t i = 0; i < s->nchildren; i++)
        if (s->children[i].gen != NULL && s->children[i].respawn_at_ms != 0 &&
            s->children[i].respawn_at_ms < next)
            next = s->children[i].respawn_at_ms;
    if (s->stopping && s->stop_deadline_ms < next)
        next = s->stop_deadline_ms;
    return next <= now ? 0 : (int)(next - now);
}

static void run_timers(supervisor_t *s)
{
    uint64_t now = mono_ms();
    for (size_t i = 0; i < s->nchildren; i++) {
        child_t *c = &s->children[i];
        if (c->gen != NULL && c->respawn_at_ms != 0 && c->respawn_at_ms <= now && !s->stopping)
            spawn(s, c);
    }
    if (gw_crashloop_quiet(&s->crashloop, now)) { /* a quiet window: the loop is over */
        GW_STAT_SET(s->shared->crash_loop, 0);
        gw_log(GW_LOG_INFO, "crash loop over", NULL);
    }
    if (!s->stopping)
        watchdog(s, now);
    if (s->reloading)
        reload_progress(s, now);
    reload_announce(s, now);
    collect_old(s);
    if (s->stopping && now >= s->stop_deadline_ms) {
        for (size_t i = 0; i < s->nchildren; i++) {
            if (s->children[i].gen != NULL && s->children[i].pid != 0) {
                gw_log(GW_LOG_WARN, "child did not stop in time; killing it", "{s:i}", "pid",
                       (int)s->children[i].pid);
                kill(s->children[i].pid, SIGKILL);
            }
        }
        s->stop_deadline_ms = UINT64_MAX - 1;
    }
}

static int bootstrap_database(const gw_config_t *cfg, gw_shared_t *shared)
{
    char err[512];
    al_db_t *db = NULL;
    if (al_db_open(cfg->state_dir, &db, err, sizeof(err)) != 0) {
        gw_log(GW_LOG_ERROR, "cannot open the state database", "{s:s, s:s}", "state_dir",
               cfg->state_dir, "error", err);
        return -1;
    }
    gw_log(GW_LOG_INFO, "state database ready", "{s:s, s:i}", "state_dir", cfg->state_dir,
           "schema_version", al_db_schema_version(db));
    /* the secret that signs ack links lives in the database (links survive restarts) and is
     * handed to the workers, which verify /ack/TOKEN without touching SQLite */
    int r = al_ack_secret_load(db, shared->ack_secret);
    if (r == 0)
        GW_STAT_SET(shared->ack_secret_set, 1);
    else
        gw_log(GW_LOG_WARN, "no ack-link secret: /ack/ links are disabled", "{s:s}", "error",
               al_db_strerror(r));
    al_db_close(db); /* the control process reopens it: one owner at a time */
    return 0;
}

static int setup(supervisor_t *s, gw_config_t *cfg)
{
    s->events = gw_events_new();
    s->shared = gw_shared_new();
    if (s->shared == NULL || bootstrap_database(cfg, s->shared) != 0)
        return -1;
    s->upstates = gw_upstates_new();
    s->limiters = gw_limiters_new();
    if (s->events == NULL || s->shared == NULL || s->upstates == NULL || s->limiters == NULL)
        return -1;
    s->cur = generation_new(s, cfg, 1);
    if (s->cur == NULL)
        return -1;
    GW_STAT_SET(s->shared->config_generation, 1);
    if ((s->admin_fd = bind_listener(&cfg->admin_listen, "admin")) < 0)
        return -1;
    sigemptyset(&s->sigmask);
    sigaddset(&s->sigmask, SIGCHLD);
    sigaddset(&s->sigmask, SIGTERM);
    sigaddset(&s->sigmask, SIGINT);
    sigaddset(&s->sigmask, SIGHUP);
    sigprocmask(SIG_BLOCK, &s->sigmask, &s->oldmask);
    s->sigfd = signalfd(-1, &s->sigmask, SFD_NONBLOCK | SFD_CLOEXEC);
    return s->sigfd < 0 ? -1 : 0;
}

static void teardown(supervisor_t *s)
{
    for (size_t i = 0; i < s->nbound; i++)
        close(s->bound[i].fd);
    if (s->admin_fd >= 0)
        close(s->admin_fd);
    if (s->sigfd >= 0)
        close(s->sigfd);
    free(s->children);
    generation_free(s->cur);
    generation_free(s->old);
    gw_events_free(s->events);
    gw_shared_free(s->shared);
    gw_upstates_free(s->upstates);
    gw_limiters_free(s->limiters);
}

int gw_supervisor_run(gw_config_t *cfg, const char *config_path)
{
    supervisor_t s = {.config_path = config_path, .admin_fd = -1, .sigfd = -1, .self = getpid()};
    gw_log_init("supervisor");
    signal(SIGPIPE, SIG_IGN);
    if (setup(&s, cfg) != 0) {
        if (s.cur == NULL)
            gw_config_free(cfg);
        teardown(&s);
        return 1;
    }
    spawn_generation(&s, s.cur);
    gw_log(GW_LOG_INFO, "breakwater started", "{s:s, s:s, s:i, s:s, s:s}", "version", BW_VERSION,
           "config", config_path != NULL ? config_path : "<default>", "workers", (int)cfg->workers,
           "listen", cfg->listen[0].text, "admin", cfg->admin_listen.text);

    while (!s.stopping || running(&s) > 0) {
        struct pollfd pfd = {.fd = s.sigfd, .events = POLLIN};
        int r = poll(&pfd, 1, next_timeout(&s));
        if (r < 0 && errno != EINTR)
            break;
        if (r > 0)
            handle_signals(&s);
        run_timers(&s);
    }
    gw_log(GW_LOG_INFO, "breakwater stopped", NULL);
    teardown(&s);
    return 0;
}
