/*
 * storewatch.c - alert_store_degraded notices, sent without the store. See storewatch.h.
 *
 *   ok --failed()--> failing --GRACE_MS--> paged: a firing notice per channel of the rule's tier
 *    ^                  |                     |
 *    +--update(ok)------+  (log line only)    +--update(ok)--> ok: a resolved notice per channel
 *                                                              tried, and the two events
 *
 * Each channel has one notice slot: the kind it should get (`want`), the kind it last got, and
 * the attempts of `want`. A pass (the timer) starts every due notice; a send's outcome comes back
 * through on_sent(): sent -> done; retry or ambiguous -> again after a doubling backoff (the same
 * delivery_id, so receivers that honour Idempotency-Key drop a duplicate); permanent or broken ->
 * given up (logged). A kind that changed while a send was in flight is picked up by the next pass.
 *
 * Invariants: at most one send per slot in flight; a resolved notice only goes to a channel that
 * was sent (or may have been sent) the firing one; the events are emitted once per paged episode.
 */
#include "storewatch.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "alerts.h"
#include "channel.h"
#include "log.h"

typedef struct notice {
    gw_storewatch_t *w;
    const char *channel;        /* borrowed from the config */
    al_notify_kind_t want;      /* AL_NOTIFY_FIRING / _RESOLVED, or AL_NOTIFY_KIND_COUNT: none */
    al_notify_kind_t done;      /* the last kind delivered (AL_NOTIFY_KIND_COUNT: none) */
    al_notify_kind_t in_flight; /* AL_NOTIFY_KIND_COUNT: nothing in flight */
    bool tried_firing;          /* a firing notice was attempted: it may have arrived */
    unsigned attempts;          /* attempts of `want` */
    uint64_t next_at;           /* unix ms of the next attempt of `want` */
    char delivery_id[37];       /* of `want`, kept across its retries */
} notice_t;

struct gw_storewatch {
    uv_loop_t *loop;
    uv_timer_t timer;
    const gw_alerts_config_t *cfg;
    gw_events_t *events;
    al_sender_t *sender;
    char *source;
    bool failing, paged;
    int err;                 /* the last store error */
    uint64_t since;          /* unix ms of the first error of this episode */
    uint64_t now;            /* the latest time a caller told us */
    size_t held_max;         /* most inputs held at once in this episode */
    uint64_t dropped_before; /* the running total of drops when the episode began */
    uint64_t dropped;        /* the running total now */
    notice_t n[GW_STOREWATCH_CHANNELS_MAX];
    size_t nn;
};

#define NONE AL_NOTIFY_KIND_COUNT

static void new_uuid(char out[37])
{
    unsigned char b[16] = {0};
    size_t got = 0;

    while (got < sizeof(b)) {
        ssize_t r = getrandom(b + got, sizeof(b) - got, 0);
        if (r <= 0) {
            /* never in practice; a weaker id beats no notice */
            uint64_t t = gw_unix_ms() ^ (uint64_t)(uintptr_t)out;
            memcpy(b + got, &t, sizeof(b) - got < sizeof(t) ? sizeof(b) - got : sizeof(t));
            break;
        }
        got += (size_t)r;
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

static void iso_time(uint64_t ms, char out[32])
{
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;

    if (gmtime_r(&secs, &tm) == NULL || strftime(out, 32, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, 32, "1970-01-01T00:00:00Z");
}

static int rule_tier(const gw_storewatch_t *w)
{
    const gw_rule_config_t *r = &w->cfg->rules[GW_EVENT_STORE_DEGRADED];
    return r->defined && w->cfg->tiers[r->tier].defined ? (int)r->tier : -1;
}

static void summary(const gw_storewatch_t *w, bool resolved, char *out, size_t cap)
{
    uint64_t secs = (w->now > w->since ? w->now - w->since : 0) / 1000;

    if (resolved)
        snprintf(out, cap,
                 "Alert store (SQLite) works again after %llu s; %zu inputs were held in memory "
                 "at most, %llu dropped",
                 (unsigned long long)secs, w->held_max,
                 (unsigned long long)(w->dropped - w->dropped_before));
    else
        snprintf(
            out, cap,
            "Alert store (SQLite) failing for %llu s: %s. Alerts are held in memory (%zu held, "
            "%llu dropped) and their notifications wait until it works again",
            (unsigned long long)secs, al_strerror(w->err), w->held_max,
            (unsigned long long)(w->dropped - w->dropped_before));
}

/* The notification in the outbox's payload shape (alerts.h, al_delivery_t), alert_id "" (there
 * is no row, so no ack link). */
static char *payload(const gw_storewatch_t *w, const notice_t *n, int tier)
{
    char started[32], text[400];
    const char *tname = al_tier_name(tier),
               *status = n->want == AL_NOTIFY_RESOLVED ? "resolved" : "firing";
    json_t *alert, *root;
    char *out;

    iso_time(w->since, started);
    summary(w, n->want == AL_NOTIFY_RESOLVED, text, sizeof(text));
    alert = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:{}, s:s, s:s, s:i, s:i, s:s, s:b}",
                      "alert_id", "", "delivery_id", n->delivery_id, "dedup_key",
                      "alert_store_degraded", "tier", tname, "status", status, "event",
                      "alert_store_degraded", "labels", "summary", text, "started_at", started,
                      "escalation_level", 0, "count", 1, "source", w->source, "flapping", 0);
    root = json_pack("{s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:[o]}", "version", "1", "delivery_id",
                     n->delivery_id, "channel", n->channel, "kind", al_notify_kind_name(n->want),
                     "tier", tname, "source", w->source, "attempt", (int)n->attempts + 1, "alerts",
                     alert);
    out = root != NULL ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return out;
}

static void on_timer(uv_timer_t *t);

/* Wakes the pass in delay_ms, unless it is already due earlier. */
static void arm(gw_storewatch_t *w, uint64_t delay_ms)
{
    if (uv_is_active((uv_handle_t *)&w->timer) && uv_timer_get_due_in(&w->timer) <= delay_ms)
        return;
    uv_timer_start(&w->timer, on_timer, delay_ms, 0);
}

static void on_sent(void *ctx, const char *channel, al_reply_class_t result)
{
    notice_t *n = ctx;
    gw_storewatch_t *w = n->w;
    al_notify_kind_t kind = n->in_flight;
    uint64_t backoff = GW_STOREWATCH_RETRY_MS;

    n->in_flight = NONE;
    if (kind != n->want) /* the wish changed meanwhile: the next pass sends the new one */
        goto next;
    if (result == AL_REPLY_SENT) {
        n->done = kind;
        n->want = NONE;
        goto next;
    }
    n->attempts++;
    if (result == AL_REPLY_PERMANENT || result == AL_REPLY_BROKEN ||
        n->attempts >= GW_STOREWATCH_ATTEMPTS_MAX) {
        gw_log(GW_LOG_WARN, "alert store notice given up", "{s:s, s:s, s:s, s:i}", "channel",
               channel, "kind", al_notify_kind_name(kind), "result", al_reply_class_name(result),
               "attempts", (int)n->attempts);
        n->want = NONE;
        goto next;
    }
    for (unsigned i = 1; i < n->attempts && backoff < GW_STOREWATCH_RETRY_MAX_MS; i++)
        backoff *= 2;
    if (backoff > GW_STOREWATCH_RETRY_MAX_MS)
        backoff = GW_STOREWATCH_RETRY_MAX_MS;
    n->next_at = gw_unix_ms() + backoff;
next:
    arm(w, 0);
}

/* Starts every due notice; re-arms for the next one. */
static void pass(gw_storewatch_t *w)
{
    uint64_t now = gw_unix_ms(), next = UINT64_MAX;
    int tier = rule_tier(w);

    if (w->failing && !w->paged && tier >= 0) {
        if (now < w->since + GW_STOREWATCH_GRACE_MS) {
            arm(w, w->since + GW_STOREWATCH_GRACE_MS - now);
            return;
        }
        w->paged = true;
        w->now = now;
        gw_log(GW_LOG_ERROR, "alert store failing: paging on the alert_store_degraded tier",
               "{s:s, s:s, s:I}", "tier", al_tier_name(tier), "error", al_strerror(w->err), "held",
               (json_int_t)w->held_max);
        for (size_t i = 0; i < w->nn; i++) {
            notice_t *n = &w->n[i];
            n->want = AL_NOTIFY_FIRING;
            n->attempts = 0;
            n->next_at = now;
            new_uuid(n->delivery_id);
        }
    }
    for (size_t i = 0; i < w->nn && tier >= 0; i++) {
        notice_t *n = &w->n[i];
        al_delivery_t d = {0};
        int r;

        if (n->want == NONE || n->in_flight != NONE)
            continue;
        if (n->next_at > now) {
            next = n->next_at < next ? n->next_at : next;
            continue;
        }
        if (w->sender == NULL) {
            next = now + GW_STOREWATCH_RETRY_MS < next ? now + GW_STOREWATCH_RETRY_MS : next;
            continue;
        }
        memcpy(d.delivery_id, n->delivery_id, sizeof(d.delivery_id));
        d.channel = strdup(n->channel);
        d.kind = n->want;
        d.tier = tier;
        d.attempt = n->attempts + 1;
        d.created_at_ms = w->since;
        d.expires_at_ms = UINT64_MAX;
        d.payload_json = payload(w, n, tier);
        n->in_flight = n->want;
        if (n->want == AL_NOTIFY_FIRING)
            n->tried_firing = true;
        r = d.channel != NULL && d.payload_json != NULL
                ? al_sender_send_unstored(w->sender, &d, on_sent, n)
                : AL_DB_ENOMEM;
        if (r != 0) { /* every slot taken, or out of memory: try again soon */
            n->in_flight = NONE;
            al_delivery_dispose(&d);
            next = now + GW_STOREWATCH_RETRY_MS < next ? now + GW_STOREWATCH_RETRY_MS : next;
        }
    }
    if (next != UINT64_MAX)
        arm(w, next > now ? next - now : 0);
}

static void on_timer(uv_timer_t *t)
{
    pass(t->data);
}

gw_storewatch_t *gw_storewatch_new(uv_loop_t *loop, const gw_alerts_config_t *cfg,
                                   gw_events_t *events, const char *source)
{
    gw_storewatch_t *w = calloc(1, sizeof(*w));
    int tier;

    if (w == NULL || (w->source = strdup(source != NULL ? source : "breakwater")) == NULL) {
        free(w);
        return NULL;
    }
    w->loop = loop;
    w->cfg = cfg;
    w->events = events;
    uv_timer_init(loop, &w->timer);
    w->timer.data = w;
    tier = rule_tier(w);
    for (size_t i = 0; tier >= 0 && i < cfg->tiers[tier].nchannels; i++) {
        if (w->nn == GW_STOREWATCH_CHANNELS_MAX)
            break;
        w->n[w->nn] = (notice_t){.w = w,
                                 .channel = cfg->channels[cfg->tiers[tier].channels[i]].name,
                                 .want = NONE,
                                 .done = NONE,
                                 .in_flight = NONE};
        w->nn++;
    }
    return w;
}

void gw_storewatch_set_sender(gw_storewatch_t *w, al_sender_t *sender)
{
    if (w == NULL)
        return;
    w->sender = sender;
    if (sender == NULL) /* its abandoned sends never report back */
        for (size_t i = 0; i < w->nn; i++)
            w->n[i].in_flight = NONE;
    else
        arm(w, 0);
}

void gw_storewatch_failed(gw_storewatch_t *w, int err, uint64_t now_ms)
{
    if (w == NULL)
        return;
    w->err = err;
    w->now = now_ms;
    if (w->failing)
        return;
    w->failing = true;
    w->since = now_ms;
    w->held_max = 0;
    w->dropped_before = w->dropped;
    gw_log(GW_LOG_WARN, "alert store failing: alerts are held in memory until it works again",
           "{s:s}", "error", al_strerror(err));
    arm(w, GW_STOREWATCH_GRACE_MS);
}

/* Emits the episode's events so the alert history has it (raised, then at once resolved). */
static void record_episode(gw_storewatch_t *w)
{
    json_t *o =
        json_pack("{s:I, s:I, s:s, s:I, s:I}", "since_ms", (json_int_t)w->since, "for_ms",
                  (json_int_t)(w->now - w->since), "error", al_strerror(w->err), "held",
                  (json_int_t)w->held_max, "dropped", (json_int_t)(w->dropped - w->dropped_before));
    char *fields = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;

    if (fields == NULL || gw_events_emit(w->events, "alert_store_degraded", -1, fields) != 0 ||
        gw_events_emit(w->events, "alert_store_recovered", -1, "{}") != 0)
        gw_log(GW_LOG_WARN, "cannot record the alert store episode on the events channel", NULL);
    free(fields);
    json_decref(o);
}

void gw_storewatch_update(gw_storewatch_t *w, bool ok, size_t held, uint64_t dropped,
                          uint64_t now_ms)
{
    if (w == NULL)
        return;
    w->dropped = dropped;
    if (!w->failing)
        return;
    w->now = now_ms;
    if (held > w->held_max)
        w->held_max = held;
    if (!ok)
        return;
    w->failing = false;
    gw_log(GW_LOG_INFO, "alert store works again", "{s:I, s:I, s:I, s:b}", "failed_ms",
           (json_int_t)(now_ms - w->since), "held_max", (json_int_t)w->held_max, "dropped",
           (json_int_t)(w->dropped - w->dropped_before), "paged", w->paged);
    if (!w->paged)
        return;
    w->paged = false;
    record_episode(w);
    for (size_t i = 0; i < w->nn; i++) {
        notice_t *n = &w->n[i];
        if (!n->tried_firing) {
            n->want = NONE; /* never told: nothing to take back */
            continue;
        }
        n->tried_firing = false;
        n->want = AL_NOTIFY_RESOLVED;
        n->attempts = 0;
        n->next_at = now_ms;
        new_uuid(n->delivery_id);
    }
    arm(w, 0);
}

bool gw_storewatch_failing(const gw_storewatch_t *w)
{
    return w != NULL && w->failing;
}

static void on_closed(uv_handle_t *h)
{
    gw_storewatch_t *w = h->data;
    free(w->source);
    free(w);
}

void gw_storewatch_free(gw_storewatch_t *w)
{
    if (w == NULL)
        return;
    uv_close((uv_handle_t *)&w->timer, on_closed);
}
