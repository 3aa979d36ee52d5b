/*
 * log.c - JSON line logger. See log.h for the contract.
 *
 * Lines are built with jansson (so every field is escaped), rendered into one buffer and written
 * with one write(2) call. Logging is not on the request hot path: the access log, when added,
 * must keep its own buffered writer.
 */
#include "log.h"

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static gw_log_level_t min_level = GW_LOG_INFO;
static char process_name[32] = "breakwater";

static const char *const level_names[] = {"debug", "info", "warn", "error"};

uint64_t gw_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void gw_log_init(const char *process)
{
    const char *env = getenv("BREAKWATER_LOG_LEVEL");
    if (env != NULL) {
        for (int i = GW_LOG_DEBUG; i <= GW_LOG_ERROR; i++)
            if (strcasecmp(env, level_names[i]) == 0)
                min_level = (gw_log_level_t)i;
    }
    if (process != NULL)
        snprintf(process_name, sizeof(process_name), "%s", process);
}

int gw_log_enabled(gw_log_level_t level)
{
    return level >= min_level;
}

static void format_ts(char *buf, size_t len)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf + n, len - n, ".%03ldZ", ts.tv_nsec / 1000000);
}

static void write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

static void vlog(gw_log_level_t level, const char *msg, json_t *extra, const char *fmt, va_list ap)
{
    char ts[40];
    format_ts(ts, sizeof(ts));
    json_t *obj = json_pack("{s:s, s:s, s:s, s:s, s:i}", "ts", ts, "level", level_names[level],
                            "msg", msg, "proc", process_name, "pid", (int)getpid());
    if (obj == NULL)
        return;
    if (fmt != NULL) {
        json_error_t err;
        json_t *fields = json_vpack_ex(&err, 0, fmt, ap);
        if (fields != NULL && json_is_object(fields))
            json_object_update(obj, fields);
        else
            json_object_set_new(obj, "log_error", json_string(err.text));
        json_decref(fields);
    }
    if (extra != NULL)
        json_object_update(obj, extra);
    char *line = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(obj);
    if (line == NULL)
        return;
    size_t n = strlen(line);
    line[n] = '\n'; /* json_dumps leaves room for the NUL, which we replace */
    write_all(line, n + 1);
    free(line);
}

void gw_log(gw_log_level_t level, const char *msg, const char *fields_fmt, ...)
{
    if (level < min_level)
        return;
    va_list ap;
    va_start(ap, fields_fmt);
    vlog(level, msg, NULL, fields_fmt, ap);
    va_end(ap);
}

void gw_log_limited(gw_log_limit_t *lim, uint64_t now_ms, gw_log_level_t level, const char *msg,
                    const char *fields_fmt, ...)
{
    if (level < min_level)
        return;
    if (now_ms < lim->next_ms) {
        lim->suppressed++;
        return;
    }
    lim->next_ms = now_ms + lim->interval_ms;
    json_t *extra = NULL;
    if (lim->suppressed > 0) {
        extra = json_pack("{s:I}", "suppressed", (json_int_t)lim->suppressed);
        lim->suppressed = 0;
    }
    va_list ap;
    va_start(ap, fields_fmt);
    vlog(level, msg, extra, fields_fmt, ap);
    va_end(ap);
    json_decref(extra);
}
