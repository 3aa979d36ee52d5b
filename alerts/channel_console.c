/*
 * channel_console.c - the `console` channel: each notification as a JSON log line on stderr.
 *
 * The embedded default config sends every tier here, so a fresh install shows its alerts in the
 * log. One line per alert of the notification (a group of 5 is 5 lines, so each line can be read
 * and grepped alone), in the log's shape: {"ts","level","msg", then the SPEC section 5 webhook
 * fields plus "channel" and "kind"}. level: "error" for P0, "warn" for other firing, escalated
 * and repeat notifications, "info" for resolved ones. msg: "alert firing", "alert escalated",
 * "alert repeat", "alert resolved".
 *
 * Each line is written with one write(2) (as gateway/log.c does), so lines from several processes
 * sharing stderr do not interleave. Delivery to the console always counts as sent: a log that
 * cannot be written is not a reason to retry a page (nor is there anything to retry against).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "channel.h"

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return;
        }
        p += w;
        n -= (size_t)w;
    }
}

static void format_ts(uint64_t ms, char out[40])
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    size_t n;

    if (gmtime_r(&secs, &tm) == NULL) {
        snprintf(out, 40, "1970-01-01T00:00:00.000Z");
        return;
    }
    n = strftime(out, 40, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 40 - n, ".%03uZ", (unsigned)(ms % 1000));
}

static json_t *console_line(const al_channel_ctx_t *ctx, const al_message_t *m, size_t i)
{
    const char *kind = al_notify_kind_name(m->d->kind);
    json_t *body = al_webhook_body(ctx, m, i), *line;
    char ts[40], msg[64];

    if (body == NULL)
        return NULL;
    format_ts(ctx->now_ms, ts);
    snprintf(msg, sizeof(msg), "alert %s", kind != NULL ? kind : "notification");
    line = json_pack("{s:s, s:s, s:s, s:s?, s:s?}", "ts", ts, "level",
                     m->d->kind == AL_NOTIFY_RESOLVED ? "info"
                     : m->d->tier == GW_TIER_P0       ? "error"
                                                      : "warn",
                     "msg", msg, "channel", m->d->channel, "kind", kind);
    if (line != NULL)
        json_object_update(line, body);
    json_decref(body);
    return line;
}

static al_reply_class_t console_deliver(const al_channel_ctx_t *ctx, const al_message_t *m,
                                        char *err, size_t errlen)
{
    int fd = ctx->console_fd > 0 ? ctx->console_fd : STDERR_FILENO;

    for (size_t i = 0; i < m->nalerts; i++) {
        json_t *line = console_line(ctx, m, i);
        char *text = line != NULL ? json_dumps(line, JSON_COMPACT) : NULL;
        size_t n;

        json_decref(line);
        if (text == NULL)
            continue; /* out of memory or a malformed element: nothing sensible to print */
        n = strlen(text);
        text[n] = '\n'; /* json_dumps leaves room for the NUL, replaced by the newline */
        write_all(fd, text, n + 1);
        free(text);
    }
    (void)err;
    (void)errlen;
    return AL_REPLY_SENT;
}

const al_channel_ops_t al_channel_console = {
    .type = "console",
    .parts = NULL,
    .build = NULL,
    .classify = NULL,
    .deliver = console_deliver,
};
