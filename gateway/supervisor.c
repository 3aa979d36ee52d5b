/*
 * supervisor.c - binds, forks, reaps and replaces; stops everything gracefully.
 *
 * Deliberately tiny and free of libuv: a child forked from a process with a running libuv loop
 * would inherit its epoll instance and handles. The supervisor waits on a signalfd (SIGCHLD,
 * SIGTERM, SIGINT, SIGHUP) with poll(), and keeps a table of children by slot.
 *
 * Respawn: a child that exits while we are not stopping is started again in the same slot (a
 * worker keeps its stats slot, so counters carry on). A child that dies within
 * RAPID_EXIT_MS of its start is respawned after RESPAWN_DELAY_MS rather than at once, so a
 * child that cannot start does not spin the CPU. (Crash records, the watchdog and crash-loop
 * alerts come with the supervised-workers work.)
 */
#include "supervisor.h"

#include <arpa/inet.h>
#include <errno.h>
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
#include "db.h"
#include "log.h"
#include "stats.h"
#include "worker.h"

#define RAPID_EXIT_MS 1000
#define RESPAWN_DELAY_MS 1000
#define STOP_GRACE_MS 2000

typedef enum child_kind {
    CHILD_CONTROL = 0,
    CHILD_WORKER,
} child_kind_t;

typedef struct child {
    child_kind_t kind;
    uint32_t index; /* worker slot */
    pid_t pid;      /* 0 = not running */
    uint64_t started_ms;
    uint64_t respawn_at_ms; /* 0 = not waiting */
} child_t;

typedef struct supervisor {
    gw_config_t *cfg;
    gw_stats_t *stats;
    int *listen_fds;
    size_t nlisten;
    int admin_fd;
    int sigfd;
    sigset_t sigmask, oldmask;
    pid_t self;
    child_t *children; /* [0] = control, [1..workers] = workers */
    size_t nchildren;
    bool stopping;
    uint64_t stop_deadline_ms;
} supervisor_t;

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

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

static int bootstrap_database(const gw_config_t *cfg)
{
    char err[512];
    al_db_t *db = NULL;
    int r = al_db_open(cfg->state_dir, &db, err, sizeof(err));
    if (r != 0) {
        gw_log(GW_LOG_ERROR, "cannot open the state database", "{s:s, s:s}", "state_dir",
               cfg->state_dir, "error", err);
        return -1;
    }
    gw_log(GW_LOG_INFO, "state database ready", "{s:s, s:i}", "state_dir", cfg->state_dir,
           "schema_version", al_db_schema_version(db));
    al_db_close(db); /* the control process reopens it: one owner at a time */
    return 0;
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
    pid_t pid = fork();
    if (pid < 0) {
        gw_log(GW_LOG_ERROR, "fork failed", "{s:s}", "error", strerror(errno));
        c->respawn_at_ms = mono_ms() + RESPAWN_DELAY_MS;
        return;
    }
    if (pid == 0) {
        child_setup(s);
        if (c->kind == CHILD_CONTROL) {
            for (size_t i = 0; i < s->nlisten; i++)
                close(s->listen_fds[i]);
            _exit(gw_control_main(s->cfg, s->stats, s->admin_fd));
        }
        close(s->admin_fd);
        _exit(gw_worker_main(s->cfg, s->stats, c->index, s->listen_fds, s->nlisten));
    }
    c->pid = pid;
    c->started_ms = mono_ms();
    c->respawn_at_ms = 0;
}

static const char *child_name(const child_t *c)
{
    return c->kind == CHILD_CONTROL ? "control" : "worker";
}

static void on_child_exit(supervisor_t *s, child_t *c, int status)
{
    int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    uint64_t now = mono_ms();
    if (c->kind == CHILD_WORKER)
        gw_stats_reset_gauges(s->stats, c->index);
    c->pid = 0;
    if (s->stopping) {
        gw_log(GW_LOG_INFO, "child stopped", "{s:s, s:i, s:i}", "child", child_name(c), "index",
               (int)c->index, "exit_code", code);
        return;
    }
    gw_log(GW_LOG_ERROR, "child exited unexpectedly; replacing it", "{s:s, s:i, s:i, s:i}", "child",
           child_name(c), "index", (int)c->index, "exit_code", code, "signal", sig);
    if (now - c->started_ms < RAPID_EXIT_MS)
        c->respawn_at_ms = now + RESPAWN_DELAY_MS;
    else
        spawn(s, c);
}

static void reap(supervisor_t *s)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (size_t i = 0; i < s->nchildren; i++)
            if (s->children[i].pid == pid)
                on_child_exit(s, &s->children[i], status);
    }
}

static size_t running(const supervisor_t *s)
{
    size_t n = 0;
    for (size_t i = 0; i < s->nchildren; i++)
        n += s->children[i].pid != 0;
    return n;
}

static void begin_stop(supervisor_t *s, int signo)
{
    if (s->stopping)
        return;
    s->stopping = true;
    s->stop_deadline_ms = mono_ms() + s->cfg->shutdown_timeout_ms + STOP_GRACE_MS;
    gw_log(GW_LOG_INFO, "stopping", "{s:s, s:I}", "signal", strsignal(signo), "shutdown_timeout_ms",
           (json_int_t)s->cfg->shutdown_timeout_ms);
    for (size_t i = 0; i < s->nchildren; i++)
        if (s->children[i].pid != 0)
            kill(s->children[i].pid, SIGTERM);
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
            gw_log(GW_LOG_WARN,
                   "SIGHUP: configuration reload is not implemented yet; "
                   "restart to apply a new config",
                   NULL);
            break;
        default:
            break;
        }
    }
}

/* Milliseconds until the next timed action (respawn or stop deadline), -1 for none. */
static int next_timeout(const supervisor_t *s)
{
    uint64_t now = mono_ms(), next = UINT64_MAX;
    for (size_t i = 0; i < s->nchildren; i++)
        if (s->children[i].respawn_at_ms != 0 && s->children[i].respawn_at_ms < next)
            next = s->children[i].respawn_at_ms;
    if (s->stopping && s->stop_deadline_ms < next)
        next = s->stop_deadline_ms;
    if (next == UINT64_MAX)
        return -1;
    return next <= now ? 0 : (int)(next - now);
}

static void run_timers(supervisor_t *s)
{
    uint64_t now = mono_ms();
    for (size_t i = 0; i < s->nchildren; i++) {
        child_t *c = &s->children[i];
        if (c->respawn_at_ms != 0 && c->respawn_at_ms <= now && !s->stopping)
            spawn(s, c);
    }
    if (s->stopping && now >= s->stop_deadline_ms) {
        for (size_t i = 0; i < s->nchildren; i++) {
            if (s->children[i].pid != 0) {
                gw_log(GW_LOG_WARN, "child did not stop in time; killing it", "{s:i}", "pid",
                       (int)s->children[i].pid);
                kill(s->children[i].pid, SIGKILL);
            }
        }
        s->stop_deadline_ms = UINT64_MAX - 1;
    }
}

static int setup(supervisor_t *s)
{
    if (bootstrap_database(s->cfg) != 0)
        return -1;
    s->listen_fds = calloc(s->cfg->nlisten, sizeof(int));
    if (s->listen_fds == NULL)
        return -1;
    for (size_t i = 0; i < s->cfg->nlisten; i++) {
        if ((s->listen_fds[i] = bind_listener(&s->cfg->listen[i], "public")) < 0)
            return -1;
        s->nlisten++;
    }
    if ((s->admin_fd = bind_listener(&s->cfg->admin_listen, "admin")) < 0)
        return -1;
    s->stats = gw_stats_new(s->cfg, s->cfg->workers);
    if (s->stats == NULL) {
        gw_log(GW_LOG_ERROR, "cannot map shared memory", "{s:s}", "error", strerror(errno));
        return -1;
    }
    sigemptyset(&s->sigmask);
    sigaddset(&s->sigmask, SIGCHLD);
    sigaddset(&s->sigmask, SIGTERM);
    sigaddset(&s->sigmask, SIGINT);
    sigaddset(&s->sigmask, SIGHUP);
    sigprocmask(SIG_BLOCK, &s->sigmask, &s->oldmask);
    s->sigfd = signalfd(-1, &s->sigmask, SFD_NONBLOCK | SFD_CLOEXEC);
    return s->sigfd < 0 ? -1 : 0;
}

int gw_supervisor_run(gw_config_t *cfg, const char *config_path)
{
    supervisor_t s = {.cfg = cfg, .admin_fd = -1, .sigfd = -1, .self = getpid()};
    gw_log_init("supervisor");
    signal(SIGPIPE, SIG_IGN);
    if (setup(&s) != 0)
        return 1;

    s.nchildren = 1 + cfg->workers;
    s.children = calloc(s.nchildren, sizeof(child_t));
    if (s.children == NULL)
        return 1;
    s.children[0].kind = CHILD_CONTROL;
    for (uint32_t i = 0; i < cfg->workers; i++) {
        s.children[1 + i].kind = CHILD_WORKER;
        s.children[1 + i].index = i;
    }
    for (size_t i = 0; i < s.nchildren; i++)
        spawn(&s, &s.children[i]);
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
    for (size_t i = 0; i < s.nlisten; i++)
        close(s.listen_fds[i]);
    close(s.admin_fd);
    close(s.sigfd);
    free(s.listen_fds);
    free(s.children);
    gw_stats_free(s.stats);
    return 0;
}
