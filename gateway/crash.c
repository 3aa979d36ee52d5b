/*
 * crash.c - fatal-signal handler for workers. See crash.h.
 */
#include "crash.h"

#include <execinfo.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static gw_crash_record_t *crash_record;
static const gw_crash_context_t *crash_ctx;

static const int fatal_signals[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};

static void on_fatal(int sig, siginfo_t *si, void *uctx)
{
    gw_crash_record_t *r = crash_record;
    r->pid = getpid();
    r->fault_addr = (uint64_t)(uintptr_t)si->si_addr;
    r->route = crash_ctx->route;
    size_t i = 0;
    const char *id = crash_ctx->request_id;
    if (id != NULL)
        for (; i + 1 < sizeof(r->request_id) && id[i] != '\0'; i++)
            r->request_id[i] = id[i];
    r->request_id[i] = '\0';
    void *frames[GW_CRASH_FRAMES];
    int n = backtrace(frames, GW_CRASH_FRAMES);
    for (int k = 0; k < n; k++)
        r->frames[k] = (uint64_t)(uintptr_t)frames[k];
    r->nframes = (uint64_t)(n > 0 ? n : 0);
    __atomic_store_n(&r->signal, sig, __ATOMIC_RELEASE);

    struct sigaction dfl;
    memset(&dfl, 0, sizeof(dfl));
    dfl.sa_handler = SIG_DFL;
    sigaction(sig, &dfl, NULL);
    raise(sig);
}

int gw_crash_install(gw_crash_record_t *record, const gw_crash_context_t *ctx)
{
    crash_record = record;
    crash_ctx = ctx;
    memset(record, 0, sizeof(*record));
    record->route = -1;

    /* backtrace() loads libgcc on first use, which allocates: do that now, not in the handler */
    void *warm[2];
    backtrace(warm, 2);

    static char altstack[64 * 1024];
    stack_t ss = {.ss_sp = altstack, .ss_size = sizeof(altstack), .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0)
        return -1;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_fatal;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof(fatal_signals) / sizeof(fatal_signals[0]); i++)
        if (sigaction(fatal_signals[i], &sa, NULL) != 0)
            return -1;
    return 0;
}
