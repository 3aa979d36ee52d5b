/*
 * log.h - structured logs: one JSON object per line on stderr (SPEC section 1).
 *
 * Every line has `ts` (UTC, RFC 3339 with milliseconds), `level`, `msg`, then the caller's fields.
 * Fields are given as a jansson pack format and its arguments, so values are always escaped
 * correctly: gw_log(GW_LOG_INFO, "worker started", "{s:i, s:i}", "worker", id, "pid", pid).
 * Pass NULL as the format for no fields. A line is written with a single write(2), so lines from
 * several processes sharing stderr do not interleave.
 *
 * Never log secrets (tokens, webhook URLs with keys, auth headers): callers pass only what is safe.
 * The minimum level comes from the BREAKWATER_LOG_LEVEL environment variable (debug, info, warn,
 * error; default info), read once by gw_log_init().
 */
#ifndef GW_LOG_H
#define GW_LOG_H

#include <jansson.h>
#include <stdint.h>

typedef enum gw_log_level {
    GW_LOG_DEBUG = 0,
    GW_LOG_INFO,
    GW_LOG_WARN,
    GW_LOG_ERROR,
} gw_log_level_t;

/* Reads BREAKWATER_LOG_LEVEL and sets the process name shown in every line ("supervisor",
 * "worker", "control", ...). Call once per process, before logging; safe to call again after fork.
 */
void gw_log_init(const char *process);

int gw_log_enabled(gw_log_level_t level);

void gw_log(gw_log_level_t level, const char *msg, const char *fields_fmt, ...);

/* The wall clock in unix milliseconds: the `now_ms` the alert engine takes, event timestamps. */
uint64_t gw_unix_ms(void);

/*
 * Rate limit for a repeated log line (an upstream refusing thousands of connections must not
 * flood the log): at most one line per `interval_ms`; the next line that gets through carries the
 * count of the ones suppressed as field "suppressed". Embed one per call site or per object.
 */
typedef struct gw_log_limit {
    uint64_t interval_ms;
    uint64_t next_ms;
    uint64_t suppressed;
} gw_log_limit_t;

#define GW_LOG_LIMIT_INIT(ms)                                                                      \
    {                                                                                              \
        (ms), 0, 0                                                                                 \
    }

/* Like gw_log, but drops the line if `lim` allows none now; `now_ms` is a monotonic clock. */
void gw_log_limited(gw_log_limit_t *lim, uint64_t now_ms, gw_log_level_t level, const char *msg,
                    const char *fields_fmt, ...);

#endif
