/*
 * sender.h - the delivery loop: sends the engine's outbox rows through the channels.
 *
 * What it does: on the control process's libuv loop, claims due deliveries from the engine
 * (al_outbox_claim), re-checks each right before sending (al_outbox_check), turns it into HTTP
 * requests with its channel (channel.h), sends them with libcurl's multi-socket API on the same
 * loop (never blocking it; at most AL_SENDER_MAX_INFLIGHT deliveries in flight), classifies the
 * reply and records the attempt (al_outbox_record) well before the claim's lease ends. Retries,
 * backoff, jitter, max_age and the ambiguous policy are the engine's (docs/alerts.md, "The
 * outbox"); the sender only says what happened. It wakes at al_outbox_next_due() and on
 * al_sender_kick().
 *
 * Why here and not in workers: sends must never slow proxied requests; the control process owns
 * the database and has no request path.
 *
 * Callers: the control process, on the loop's thread only. The engine and the config must outlive
 * the sender (or the config be replaced with al_sender_set_config() before it is freed). The
 * engine's al_engine_start() must have run before the first send (rows left "sending" by a killed
 * process become ambiguous attempts and are resumed); the sender does not call it.
 *
 * Ownership: al_sender_new() allocates; al_sender_close() frees, asynchronously (libuv close
 * semantics: done(ctx) runs after the last handle's close callback; the loop can then be closed).
 *
 * Logs: one JSON object per line through opts.log (default: stderr in gw_log's shape). Never a
 * URL (webhook URLs embed tokens): the channel name and the URL's host only. Failures are logged
 * at most once per 10 s per channel, with a count of those left out.
 */
#ifndef AL_SENDER_H
#define AL_SENDER_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "alerts.h"
#include "channel.h"
#include "config.h"

#define AL_SENDER_MAX_INFLIGHT 32          /* deliveries being sent at once */
#define AL_SENDER_REQUEST_TIMEOUT_MS 10000 /* one HTTP request, connect included */
#define AL_SENDER_CONNECT_TIMEOUT_MS 3000  /* TCP + TLS handshake */
#define AL_SENDER_BODY_MAX (64 * 1024)     /* reply body bytes kept for classification */
#define AL_SENDER_HEADERS_MAX (16 * 1024)  /* reply header bytes kept */
#define AL_SENDER_CHANNELS_MAX 256         /* channel names with their own counters */
#define AL_SENDER_LEASE_MARGIN_MS 5000     /* record at least this long before the lease ends */
#define AL_SENDER_RECHECK_MS 1000          /* re-look when due rows could not be claimed */

typedef struct al_sender al_sender_t;

/* Log levels, the same order as gateway/log.h's. */
enum { AL_LOG_DEBUG = 0, AL_LOG_INFO, AL_LOG_WARN, AL_LOG_ERROR };

/* fields: a JSON object (borrowed) with the line's fields (channel, host, delivery_id, ...). */
typedef void (*al_log_fn)(void *ctx, int level, const char *msg, json_t *fields);

/* A clock in unix milliseconds (the engine's time base). */
typedef uint64_t (*al_clock_fn)(void *ctx);

typedef struct al_sender_options {
    al_clock_fn now; /* NULL: CLOCK_REALTIME */
    void *now_ctx;
    uint64_t request_timeout_ms; /* 0: AL_SENDER_REQUEST_TIMEOUT_MS */
    uint64_t connect_timeout_ms; /* 0: AL_SENDER_CONNECT_TIMEOUT_MS */
    size_t max_inflight;         /* 0 or more than AL_SENDER_MAX_INFLIGHT: the maximum */
    size_t body_max;             /* 0: AL_SENDER_BODY_MAX */
    const char *user_agent;      /* NULL: "breakwater/" BW_VERSION; copied */
    const char *proxy;           /* NULL: no proxy, and *_proxy environment variables ignored */
    al_log_fn log;               /* NULL: JSON lines on stderr */
    void *log_ctx;
    int console_fd; /* where the console channel writes; 0: stderr */
} al_sender_options_t;

/* Starts the delivery loop on `loop` for `engine`; `cfg` is the config's alerts section (names ->
 * types, urls, secrets), `source` e.g. "breakwater@HOST" (copied; the default "source" of a
 * notification whose payload lacks one). The first look at the outbox happens on the next loop
 * iteration. NULL with errno set (ENOMEM, EINVAL, EIO when curl cannot start) on failure. */
al_sender_t *al_sender_new(uv_loop_t *loop, al_engine_t *engine, const gw_alerts_config_t *cfg,
                           const char *source);

/* The same with options (tests, proxies, the log hook). opts may be NULL. */
al_sender_t *al_sender_new_with(uv_loop_t *loop, al_engine_t *engine, const gw_alerts_config_t *cfg,
                                const char *source, const al_sender_options_t *opts);

/* Something may have become due (an event raised an alert, an ack, a silence expired): look on
 * the next loop iteration (several kicks in one iteration make one look). */
void al_sender_kick(al_sender_t *s);

/* After a reload: channels are looked up by name in cfg from now on. Sends in flight keep their
 * requests; a channel removed by the reload is reported as broken for new claims. */
void al_sender_set_config(al_sender_t *s, const gw_alerts_config_t *cfg);

/* For a graceful stop (SPEC: "flush alert deliveries that can be sent"): keeps sending what is
 * due and calls idle(ctx) once, from the loop, when nothing is in flight and nothing more can be
 * claimed now (retries scheduled later do not count). Bound the wait with a timer of your own,
 * then call al_sender_close(). A second call replaces the first callback. */
void al_sender_drain(al_sender_t *s, void (*idle)(void *ctx), void *ctx);

/* The outcome of an unstored send (al_sender_send_unstored): the attempt's class (channel.h). */
typedef void (*al_unstored_fn)(void *ctx, const char *channel, al_reply_class_t result);

/* Sends one notification that is not in the outbox, for when the store itself fails (the control
 * process's alert_store_degraded notices). d is filled by the caller (channel, kind, tier,
 * delivery_id, attempt, payload_json in the outbox's shape; id 0) and moved in. Nothing is
 * re-checked or recorded in the engine; done(ctx, channel, result) runs exactly once, from the
 * loop or before this returns, and the attempt counts in al_sender_stats like any other. Takes
 * one in-flight slot; 0, or AL_ELIMIT when every slot is taken (d is then left to the caller). */
int al_sender_send_unstored(al_sender_t *s, al_delivery_t *d, al_unstored_fn done, void *ctx);

/* Deliveries being sent now. */
size_t al_sender_inflight(const al_sender_t *s);

/* Stops: in-flight sends are abandoned without touching the engine (their leases expire and the
 * engine records them as ambiguous at the next start, or at the next claim after lease_ms);
 * libuv close semantics, done(ctx) (may be NULL) after the last close callback. */
void al_sender_close(al_sender_t *s, void (*done)(void *ctx), void *ctx);

/* Counters for breakwater_alert_deliveries_total{channel,result}: calls row() for every channel
 * seen (configured or met in a delivery) x every result, zeros included. Results: "sent",
 * "retry", "permanent", "broken", "ambiguous" (attempt outcomes, see channel.h), "cancelled"
 * (al_outbox_check said not to send), "error" (not sent because of a store or memory error).
 * Counters never go down (a reload keeps them). */
void al_sender_stats(const al_sender_t *s,
                     void (*row)(void *ctx, const char *channel, const char *result, uint64_t n),
                     void *ctx);

#endif
