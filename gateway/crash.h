/*
 * crash.h - a worker's fatal-signal handler: record what was running, then die by the signal.
 *
 * On SIGSEGV, SIGBUS, SIGFPE, SIGILL or SIGABRT the handler writes a gw_crash_record_t into the
 * worker's shared stats slot (signal, fault address, the route and request id being handled, and
 * the raw stack frames), restores the default action and re-raises, so the supervisor reaps a
 * worker killed by that very signal. Only async-signal-safe work happens in the handler: plain
 * stores into shared memory, backtrace() (pre-loaded at install time so it does not allocate),
 * sigaction and raise. The handler runs on an alternate stack so stack overflows are recorded.
 *
 * The supervisor symbolizes the frames: workers are forked without exec, so the binary and its
 * libraries sit at the same addresses in the supervisor.
 */
#ifndef GW_CRASH_H
#define GW_CRASH_H

#include "stats.h"

/* What the worker is doing right now, kept up to date by the request path (cheap: two stores). */
typedef struct gw_crash_context {
    int64_t route;          /* -1 when idle */
    const char *request_id; /* NUL-terminated, or NULL */
} gw_crash_context_t;

/* Installs the handler for this process. `ctx` must stay valid for the life of the process. */
int gw_crash_install(gw_crash_record_t *record, const gw_crash_context_t *ctx);

#endif
