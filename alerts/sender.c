/*
 * sender.c - the delivery loop: outbox rows -> channel requests -> libcurl multi on libuv -> the
 * attempt recorded in the engine. See sender.h for the contract, channel.h for channels.
 *
 * One pass (on_due, a uv timer; never re-entered):
 *
 *   claim up to (max_inflight - inflight) due rows  --store error--> look again in 1 s
 *     for each: find its channel by name (unknown / unsupported type: broken)
 *               al_outbox_check (0: cancelled, not sent; < 0: not sent, its lease will expire)
 *               local channel (console): deliver now, record
 *               HTTP channel: build every part's request, start part 0 -> a job in flight
 *   then arm the timer: at once if the batch was full and there is room; else at
 *   al_outbox_next_due() (at most 60 s ahead, so a wall-clock jump cannot stall us; 1 s when due
 *   rows could not be claimed because an earlier notification of their alert is in flight).
 *
 * A job (one claimed delivery being sent) goes part by part (a grouped webhook has one request per
 * alert): each part is one easy handle on the multi; when it completes, the reply is classified
 * (channel.h); "sent" moves to the next part, anything else ends the job. The job's result is
 * recorded with al_outbox_record() and the timer is armed at once (coalesced), so a freed slot or
 * an unblocked row is used on the next loop iteration.
 *
 * Time: every request's timeout is min(request timeout, deadline - now), where deadline =
 * lease_until - margin (5 s, or a quarter of a short lease), so the result is always recorded
 * while the claim is still ours. A job that runs out of budget between parts records a retry.
 * Timed out before the request head went out (CURLINFO_REQUEST_SIZE == 0): retry. After: ambiguous.
 *
 * libcurl on libuv (PLATFORM.md): CURLMOPT_SOCKETFUNCTION keeps one uv_poll_t per curl socket
 * (freed in its close callback), CURLMOPT_TIMERFUNCTION one uv_timer_t (1 ms when curl asks for
 * 0), then curl_multi_socket_action and curl_multi_info_read. No proxy unless configured
 * (CURLOPT_PROXY "" ignores http_proxy/https_proxy/all_proxy from the environment), no redirects,
 * http and https only, CURLOPT_NOSIGNAL. Connections are cached by the multi between sends.
 *
 * Invariants: inflight == number of jobs in s->jobs <= max_inflight; every job holds one claimed
 * delivery and exactly one easy handle on the multi; a delivery is recorded at most once; memory
 * of a uv handle is freed only in its close callback; nothing here logs a URL.
 */
#include <curl/curl.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "channel.h"
#include "sender.h"

#ifndef BW_VERSION
#define BW_VERSION "0"
#endif

#define LOG_EVERY_MS 10000 /* failures logged per channel at most this often */
#define MAX_SLEEP_MS 60000 /* the due timer never sleeps longer (wall-clock jumps) */
#define MIN_BUDGET_MS 50   /* do not start a part with less time than this left */
#define DETAIL_MAX 240     /* bytes of an attempt's "error" text */
#define EXCERPT_MAX 100    /* bytes of a reply body quoted in it */
#define OTHER_CHANNEL "(other)"

/* Attempt outcomes first (same order as al_reply_class_t), then the "not sent" ones. */
enum { R_CANCELLED = AL_REPLY_CLASS_COUNT, R_ERROR, R_COUNT };
static const char *const result_names[R_COUNT] = {"sent",      "retry",     "permanent", "broken",
                                                  "ambiguous", "cancelled", "error"};

typedef struct chstat {
    char name[72];
    uint64_t n[R_COUNT];
    uint64_t log_next;   /* uv_now() before which failures are not logged */
    uint64_t suppressed; /* failures not logged since the last line */
    bool failing;        /* the last attempt on this channel failed */
} chstat_t;

typedef struct buf {
    char *p;
    size_t len, cap, max;
    bool truncated;
} buf_t;

typedef struct sock {
    uv_poll_t poll;
    curl_socket_t fd;
    al_sender_t *s;
    struct sock *prev, *next;
} sock_t;

/* Where the outcome of a send goes when it is not an outbox row (al_sender_send_unstored). */
typedef struct unstored {
    al_unstored_fn fn;
    void *ctx;
} unstored_t;

typedef struct job {
    al_sender_t *s;
    unstored_t unstored; /* fn NULL: an outbox row (recorded in the engine) */
    struct job *prev, *next;
    al_delivery_t d;
    const al_channel_ops_t *ops;
    const gw_channel_config_t *chcfg; /* re-pointed by al_sender_set_config (NULL: removed) */
    char host[256];
    al_request_t *reqs;
    size_t nreqs, cur;
    CURL *easy;
    struct curl_slist *hdrs; /* HTTP: the header lines; SMTP: the RCPT TO list */
    size_t upload_off;       /* SMTP: bytes of the message handed to curl */
    buf_t body, headers;
    uint64_t deadline;   /* unix ms: the result must be recorded before */
    uint64_t started_ms; /* unix ms, for the latency field */
} job_t;

struct al_sender {
    uv_loop_t *loop;
    al_engine_t *engine;
    const gw_alerts_config_t *cfg;
    al_sender_options_t opt;
    char *source, *user_agent, *proxy;
    CURLM *multi;
    uv_timer_t due_timer, curl_timer;
    uint64_t due_at; /* uv_now() when due_timer fires */
    job_t *jobs;
    size_t inflight;
    sock_t *socks;
    chstat_t *stats;
    size_t nstats;
    chstat_t other;
    uint64_t store_log_next, store_suppressed;
    void (*drain_cb)(void *ctx);
    void *drain_ctx;
    bool closing;
    unsigned closing_handles;
    void (*done)(void *ctx);
    void *done_ctx;
};

/* ---- small helpers ---- */

static uint64_t realtime_ms(void *ctx)
{
    struct timespec ts;

    (void)ctx;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t now_ms(const al_sender_t *s)
{
    return s->opt.now(s->opt.now_ctx);
}

static void default_log(void *ctx, int level, const char *msg, json_t *fields)
{
    static const char *const names[] = {"debug", "info", "warn", "error"};
    char ts[40];
    json_t *o;
    char *line;
    size_t n;
    uint64_t ms = realtime_ms(NULL);
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;

    (void)ctx;
    if (level < AL_LOG_INFO || level > AL_LOG_ERROR)
        return;
    gmtime_r(&secs, &tm);
    n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof(ts) - n, ".%03uZ", (unsigned)(ms % 1000));
    o = json_pack("{s:s, s:s, s:s, s:s, s:i}", "ts", ts, "level", names[level], "msg", msg, "proc",
                  "control", "pid", (int)getpid());
    if (o == NULL)
        return;
    if (fields != NULL)
        json_object_update(o, fields);
    line = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (line == NULL)
        return;
    n = strlen(line);
    line[n] = '\n';
    for (size_t off = 0; off < n + 1;) {
        ssize_t w = write(STDERR_FILENO, line + off, n + 1 - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    free(line);
}

/* Logs msg with fields (stolen). */
static void slog(al_sender_t *s, int level, const char *msg, json_t *fields)
{
    s->opt.log(s->opt.log_ctx, level, msg, fields);
    json_decref(fields);
}

static chstat_t *stat_for(al_sender_t *s, const char *name)
{
    chstat_t *grown;

    for (size_t i = 0; i < s->nstats; i++)
        if (strcmp(s->stats[i].name, name) == 0)
            return &s->stats[i];
    if (s->nstats >= AL_SENDER_CHANNELS_MAX || strlen(name) >= sizeof(s->other.name))
        return &s->other;
    grown = realloc(s->stats, (s->nstats + 1) * sizeof(*s->stats));
    if (grown == NULL)
        return &s->other;
    s->stats = grown;
    memset(&s->stats[s->nstats], 0, sizeof(*s->stats));
    snprintf(s->stats[s->nstats].name, sizeof(s->stats[0].name), "%s", name);
    return &s->stats[s->nstats++];
}

static void stats_add_config(al_sender_t *s)
{
    for (size_t i = 0; s->cfg != NULL && i < s->cfg->nchannels; i++)
        stat_for(s, s->cfg->channels[i].name);
}

static void buf_init(buf_t *b, size_t max)
{
    memset(b, 0, sizeof(*b));
    b->max = max;
}

static void buf_dispose(buf_t *b)
{
    free(b->p);
    buf_init(b, b->max);
}

/* Appends what fits under the bound (and keeps the text NUL-terminated); never fails the
 * transfer: the rest is counted as truncated and dropped. */
static void buf_append(buf_t *b, const char *data, size_t n)
{
    size_t take = n;

    if (b->len + take > b->max) {
        take = b->max - b->len;
        b->truncated = true;
    }
    if (b->len + take + 1 > b->cap) {
        size_t cap = b->cap > 0 ? b->cap : 1024;
        char *p;
        while (cap < b->len + take + 1)
            cap *= 2;
        if (cap > b->max + 1)
            cap = b->max + 1;
        p = realloc(b->p, cap);
        if (p == NULL) {
            b->truncated = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, take);
    b->len += take;
    b->p[b->len] = '\0';
}

static size_t on_body(char *data, size_t size, size_t n, void *userp)
{
    buf_append(&((job_t *)userp)->body, data, size * n);
    return size * n;
}

static size_t on_header(char *data, size_t size, size_t n, void *userp)
{
    job_t *j = userp;

    if (size * n >= 5 && strncmp(data, "HTTP/", 5) == 0)
        j->headers.len = 0; /* a new response (after 100 Continue or a retried connection) */
    buf_append(&j->headers, data, size * n);
    return size * n;
}

/* The URL's host, for logs (never the URL: it may embed a token). */
static void url_host(const char *url, char *out, size_t outlen)
{
    CURLU *u = curl_url();
    char *host = NULL;

    out[0] = '\0';
    if (u != NULL && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
        curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK)
        snprintf(out, outlen, "%s", host);
    curl_free(host);
    curl_url_cleanup(u);
}

static al_channel_ctx_t make_ctx(const al_sender_t *s, const gw_channel_config_t *chcfg,
                                 uint64_t now)
{
    return (al_channel_ctx_t){.cfg = chcfg,
                              .alerts = chcfg != NULL ? s->cfg : NULL,
                              .source = s->source,
                              .now_ms = now,
                              .console_fd = s->opt.console_fd};
}

/* ---- recording ---- */

static void log_store_error(al_sender_t *s, const char *what, int r, const al_delivery_t *d)
{
    uint64_t t = uv_now(s->loop);

    if (t < s->store_log_next) {
        s->store_suppressed++;
        return;
    }
    s->store_log_next = t + LOG_EVERY_MS;
    slog(s, AL_LOG_ERROR, what,
         json_pack("{s:s, s:s?, s:s?, s:I}", "error", al_strerror(r), "channel",
                   d != NULL ? d->channel : NULL, "delivery_id", d != NULL ? d->delivery_id : NULL,
                   "suppressed", (json_int_t)s->store_suppressed));
    s->store_suppressed = 0;
}

static void log_outcome(al_sender_t *s, chstat_t *cs, const al_delivery_t *d, const char *host,
                        al_reply_class_t cls, const al_attempt_t *a, uint64_t latency)
{
    uint64_t t = uv_now(s->loop);
    json_t *f = json_pack("{s:s, s:s, s:s, s:i, s:s?, s:s?, s:s, s:i, s:I}", "channel", d->channel,
                          "host", host, "delivery_id", d->delivery_id, "attempt", (int)d->attempt,
                          "kind", al_notify_kind_name(d->kind), "tier", al_tier_name(d->tier),
                          "result", al_reply_class_name(cls), "http_status", a->http_status,
                          "latency_ms", (json_int_t)latency);

    if (f != NULL && a->error != NULL)
        json_object_set_new(f, "error", json_string(a->error));
    if (cls == AL_REPLY_SENT) {
        if (cs->failing) {
            json_object_set_new(f, "suppressed", json_integer((json_int_t)cs->suppressed));
            slog(s, AL_LOG_INFO, "alert deliveries to the channel work again", f);
        } else {
            slog(s, AL_LOG_DEBUG, "alert delivered", f);
        }
        cs->failing = false;
        cs->suppressed = 0;
        cs->log_next = 0;
        return;
    }
    cs->failing = true;
    if (t < cs->log_next) {
        cs->suppressed++;
        json_decref(f);
        return;
    }
    cs->log_next = t + LOG_EVERY_MS;
    json_object_set_new(f, "suppressed", json_integer((json_int_t)cs->suppressed));
    cs->suppressed = 0;
    slog(s, AL_LOG_WARN, "alert delivery attempt failed", f);
}

/* Records the attempt of d (claimed, checked) in the engine, or hands it to u->fn when d is not
 * an outbox row; counts and logs it, then disposes d. */
static void record(al_sender_t *s, al_delivery_t *d, const unstored_t *u, const char *host,
                   al_reply_class_t cls, long http_status, uint64_t retry_after, const char *detail,
                   uint64_t started)
{
    uint64_t now = now_ms(s);
    al_attempt_t a = {al_reply_class_result(cls), (int)http_status, retry_after, detail};
    chstat_t *cs = stat_for(s, d->channel);
    int r = u->fn == NULL ? al_outbox_record(s->engine, d, &a, now) : 0;

    cs->n[cls]++;
    log_outcome(s, cs, d, host, cls, &a, now >= started ? now - started : 0);
    if (u->fn != NULL)
        u->fn(u->ctx, d->channel, cls);
    else if (r == AL_ESTALE)
        slog(s, AL_LOG_WARN, "alert delivery result came after its lease ended (not recorded)",
             json_pack("{s:s, s:s}", "channel", d->channel, "delivery_id", d->delivery_id));
    else if (r != 0)
        log_store_error(s, "cannot record an alert delivery attempt (its lease will expire)", r, d);
    al_delivery_dispose(d);
}

/* ---- jobs ---- */

static void arm(al_sender_t *s, uint64_t delay);

static void job_free(job_t *j)
{
    al_sender_t *s = j->s;

    if (j->easy != NULL) {
        curl_multi_remove_handle(s->multi, j->easy);
        curl_easy_cleanup(j->easy);
    }
    curl_slist_free_all(j->hdrs);
    for (size_t i = 0; i < j->nreqs; i++)
        al_request_dispose(&j->reqs[i]);
    free(j->reqs);
    buf_dispose(&j->body);
    buf_dispose(&j->headers);
    al_delivery_dispose(&j->d);
    if (j->prev != NULL)
        j->prev->next = j->next;
    else if (s->jobs == j)
        s->jobs = j->next;
    if (j->next != NULL)
        j->next->prev = j->prev;
    s->inflight--;
    free(j);
}

/* Ends job j with an outcome: records it, frees the job, wakes the loop for the freed slot. */
static void job_finish(job_t *j, al_reply_class_t cls, long status, uint64_t retry_after,
                       const char *detail)
{
    al_sender_t *s = j->s;

    record(s, &j->d, &j->unstored, j->host, cls, status, retry_after, detail, j->started_ms);
    job_free(j);
    arm(s, 0);
}

static struct curl_slist *add_header(struct curl_slist *list, const char *line, bool *ok)
{
    struct curl_slist *n = curl_slist_append(list, line);

    if (n == NULL) {
        *ok = false;
        return list;
    }
    return n;
}

static struct curl_slist *request_headers(const job_t *j, const al_request_t *rq)
{
    char line[AL_IDEMPOTENCY_KEY_MAX + 32];
    struct curl_slist *h = NULL;
    bool ok = true;

    snprintf(line, sizeof(line), "Content-Type: %s",
             rq->content_type != NULL ? rq->content_type : "application/json");
    h = add_header(h, line, &ok);
    snprintf(line, sizeof(line), "Idempotency-Key: %s",
             rq->idempotency_key[0] != '\0' ? rq->idempotency_key : j->d.delivery_id);
    h = add_header(h, line, &ok);
    h = add_header(h, "Expect:", &ok); /* no 100-continue round trip on larger bodies */
    for (size_t i = 0; i < rq->nheaders; i++)
        h = add_header(h, rq->headers[i], &ok);
    if (!ok) {
        curl_slist_free_all(h);
        return NULL;
    }
    return h;
}

/* SMTP (AL_REQ_SMTP): the envelope's recipients as curl wants them. NULL: out of memory. */
static struct curl_slist *smtp_rcpts(const al_request_t *rq)
{
    struct curl_slist *h = NULL;
    bool ok = rq->nrcpt > 0;

    for (size_t i = 0; ok && i < rq->nrcpt; i++)
        h = add_header(h, rq->rcpt[i], &ok);
    if (!ok) {
        curl_slist_free_all(h);
        return NULL;
    }
    return h;
}

/* SMTP: hands curl the next bytes of the message (the request body). */
static size_t on_upload(char *out, size_t size, size_t n, void *userp)
{
    job_t *j = userp;
    const al_request_t *rq = &j->reqs[j->cur];
    size_t left = rq->body_len - j->upload_off, take = size * n < left ? size * n : left;

    memcpy(out, rq->body + j->upload_off, take);
    j->upload_off += take;
    return take;
}

/* Starts part j->cur. Returns 0, 1 when the lease budget is used up, or -1 (out of memory or a
 * curl setup error). */
static int part_start(job_t *j, uint64_t now)
{
    al_sender_t *s = j->s;
    al_request_t *rq = &j->reqs[j->cur];
    uint64_t left = j->deadline > now ? j->deadline - now : 0;
    uint64_t timeout = s->opt.request_timeout_ms < left ? s->opt.request_timeout_ms : left;
    uint64_t connect = s->opt.connect_timeout_ms < timeout ? s->opt.connect_timeout_ms : timeout;
    CURLcode c = CURLE_OK;
    CURL *e;

    if (left < MIN_BUDGET_MS)
        return 1;
    buf_dispose(&j->body);
    buf_dispose(&j->headers);
    curl_slist_free_all(j->hdrs);
    j->hdrs = rq->kind == AL_REQ_SMTP ? smtp_rcpts(rq) : request_headers(j, rq);
    j->upload_off = 0;
    e = curl_easy_init();
    if (j->hdrs == NULL || e == NULL) {
        curl_easy_cleanup(e);
        return -1;
    }
#define SET(opt, val)                                                                              \
    if (c == CURLE_OK)                                                                             \
    c = curl_easy_setopt(e, opt, val)
    SET(CURLOPT_URL, rq->url);
    SET(CURLOPT_PRIVATE, j);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_TIMEOUT_MS, (long)timeout);
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)connect);
    SET(CURLOPT_PROXY, s->proxy != NULL ? s->proxy : "");
    if (rq->kind == AL_REQ_SMTP) {
        /* The email channel: smtp:// upgrades with STARTTLS when offered, smtps:// is TLS. */
        SET(CURLOPT_PROTOCOLS_STR, "smtp,smtps");
        SET(CURLOPT_USE_SSL, (long)CURLUSESSL_TRY);
        SET(CURLOPT_MAIL_FROM, rq->mail_from);
        SET(CURLOPT_MAIL_RCPT, j->hdrs);
        SET(CURLOPT_UPLOAD, 1L);
        SET(CURLOPT_READFUNCTION, on_upload);
        SET(CURLOPT_READDATA, j);
        SET(CURLOPT_INFILESIZE_LARGE, (curl_off_t)rq->body_len);
    } else {
        SET(CURLOPT_PROTOCOLS_STR, "http,https");
        SET(CURLOPT_FOLLOWLOCATION, 0L);
        SET(CURLOPT_USERAGENT, s->user_agent);
        SET(CURLOPT_HTTPHEADER, j->hdrs);
        SET(CURLOPT_POST, 1L);
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->body_len);
        SET(CURLOPT_POSTFIELDS, rq->body != NULL ? rq->body : "");
        if (rq->method != NULL && strcmp(rq->method, "POST") != 0)
            SET(CURLOPT_CUSTOMREQUEST, rq->method);
    }
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, j);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, j);
#undef SET
    if (c != CURLE_OK || curl_multi_add_handle(s->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        return -1;
    }
    j->easy = e;
    return 0;
}

static void excerpt(const buf_t *b, char *out, size_t outlen)
{
    size_t n = 0;

    for (size_t i = 0; i < b->len && n + 1 < outlen && n < EXCERPT_MAX; i++)
        out[n++] = isprint((unsigned char)b->p[i]) ? b->p[i] : ' ';
    out[n] = '\0';
}

/* A short text for the lineage and the log: what happened, never the URL. */
static void describe(const job_t *j, const al_reply_t *rp, CURLcode code, uint64_t elapsed,
                     char *out, size_t outlen)
{
    char text[EXCERPT_MAX + 1], part[48] = "";
    int n;

    if (j->nreqs > 1)
        snprintf(part, sizeof(part), " (part %zu of %zu)", j->cur + 1, j->nreqs);
    switch (rp->transport) {
    case AL_XFER_REPLY:
        excerpt(&j->body, text, sizeof(text));
        n = snprintf(out, outlen, "%s %ld%s%s",
                     j->reqs[j->cur].kind == AL_REQ_SMTP ? "SMTP" : "HTTP", rp->status,
                     text[0] ? ": " : "", text);
        break;
    case AL_XFER_NOT_SENT:
        n = snprintf(out, outlen, "not sent: %s", curl_easy_strerror(code));
        break;
    case AL_XFER_TIMEOUT_SENT:
        n = snprintf(out, outlen, "no reply within %llu ms after the request was sent",
                     (unsigned long long)elapsed);
        break;
    case AL_XFER_CLOSED_SENT:
        n = snprintf(out, outlen, "connection ended after the request was sent: %s",
                     curl_easy_strerror(code));
        break;
    default:
        n = snprintf(out, outlen, "cannot send: %s", curl_easy_strerror(code));
        break;
    }
    if (n >= 0 && (size_t)n < outlen)
        snprintf(out + n, outlen - (size_t)n, "%s", part);
}

/* Part j->cur of job j completed with code. */
static void part_done(job_t *j, CURLcode code)
{
    al_sender_t *s = j->s;
    bool smtp = j->reqs[j->cur].kind == AL_REQ_SMTP;
    long status = 0, reqsize = 0;
    curl_off_t elapsed_us = 0;
    uint64_t retry_after = 0, now;
    al_reply_class_t cls;
    al_channel_ctx_t ctx;
    al_reply_t rp;
    char detail[DETAIL_MAX];
    int r;

    curl_easy_getinfo(j->easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(j->easy, CURLINFO_REQUEST_SIZE, &reqsize);
    curl_easy_getinfo(j->easy, CURLINFO_TOTAL_TIME_T, &elapsed_us);
    if (smtp) /* "sent" = message bytes went out; REQUEST_SIZE is HTTP only */
        reqsize = j->upload_off > 0;
    curl_multi_remove_handle(s->multi, j->easy);
    curl_easy_cleanup(j->easy);
    j->easy = NULL;
    rp = (al_reply_t){.transport = al_curl_transport((int)code, reqsize > 0),
                      .status = code == CURLE_OK ? status : 0,
                      .headers = j->headers.p != NULL ? j->headers.p : "",
                      .body = j->body.p != NULL ? j->body.p : "",
                      .body_len = j->body.len,
                      .body_truncated = j->body.truncated};
    if (smtp && code != CURLE_OK && status >= 400) {
        /* An SMTP refusal (RCPT 550, AUTH 535, final 554) fails the transfer in curl, but it is
         * the server's answer: the channel classifies its code. */
        rp.transport = AL_XFER_REPLY;
        rp.status = status;
    }
    now = now_ms(s);
    ctx = make_ctx(s, j->chcfg, now);
    cls = al_channel_classify(j->ops, &ctx, &rp, &retry_after);
    if (cls == AL_REPLY_SENT && j->cur + 1 < j->nreqs) {
        j->cur++;
        r = part_start(j, now);
        if (r == 0)
            return;
        snprintf(detail, sizeof(detail), "%s after %zu of %zu parts were sent",
                 r > 0 ? "lease budget used up" : "out of memory", j->cur, j->nreqs);
        job_finish(j, AL_REPLY_RETRY, 0, 0, detail);
        return;
    }
    if (cls == AL_REPLY_SENT) {
        job_finish(j, cls, rp.status, 0, NULL);
        return;
    }
    describe(j, &rp, code, (uint64_t)elapsed_us / 1000, detail, sizeof(detail));
    job_finish(j, cls, rp.status, retry_after, detail);
}

static void check_done(al_sender_t *s)
{
    CURLMsg *m;
    int left;

    while (!s->closing && (m = curl_multi_info_read(s->multi, &left)) != NULL) {
        job_t *j = NULL;
        if (m->msg != CURLMSG_DONE)
            continue;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&j);
        if (j != NULL)
            part_done(j, m->data.result);
    }
}

/* ---- curl <-> libuv ---- */

static void on_sock_closed(uv_handle_t *h);

static void sock_close(sock_t *k)
{
    al_sender_t *s = k->s;

    if (k->prev != NULL)
        k->prev->next = k->next;
    else
        s->socks = k->next;
    if (k->next != NULL)
        k->next->prev = k->prev;
    k->prev = k->next = NULL;
    uv_poll_stop(&k->poll);
    s->closing_handles++;
    uv_close((uv_handle_t *)&k->poll, on_sock_closed);
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    sock_t *k = h->data;
    al_sender_t *s = k->s;
    int flags = 0, running = 0;

    if (status < 0)
        flags = CURL_CSELECT_ERR;
    else
        flags = ((events & UV_READABLE) ? CURL_CSELECT_IN : 0) |
                ((events & UV_WRITABLE) ? CURL_CSELECT_OUT : 0);
    curl_multi_socket_action(s->multi, k->fd, flags, &running); /* may close k (not free it) */
    check_done(s);
}

static int on_curl_socket(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
    al_sender_t *s = userp;
    sock_t *k = socketp;
    int events = 0;

    if (what == CURL_POLL_REMOVE) {
        if (k != NULL) {
            sock_close(k);
            curl_multi_assign(s->multi, fd, NULL);
        }
        return 0;
    }
    if (k == NULL) {
        k = calloc(1, sizeof(*k));
        if (k == NULL)
            return -1;
        if (uv_poll_init_socket(s->loop, &k->poll, fd) != 0) {
            free(k);
            return -1;
        }
        k->fd = fd;
        k->s = s;
        k->poll.data = k;
        k->next = s->socks;
        if (s->socks != NULL)
            s->socks->prev = k;
        s->socks = k;
        curl_multi_assign(s->multi, fd, k);
    }
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    return uv_poll_start(&k->poll, events, on_poll) == 0 ? 0 : -1;
}

static void on_curl_timer(uv_timer_t *t)
{
    al_sender_t *s = t->data;
    int running = 0;

    curl_multi_socket_action(s->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(s);
}

static int on_curl_timer_change(CURLM *m, long timeout_ms, void *userp)
{
    al_sender_t *s = userp;

    if (timeout_ms < 0)
        uv_timer_stop(&s->curl_timer);
    else
        uv_timer_start(&s->curl_timer, on_curl_timer, timeout_ms > 0 ? (uint64_t)timeout_ms : 1, 0);
    return 0;
}

/* ---- one claimed delivery ---- */

/* Builds every part's request into j. Returns 0, AL_EBADINPUT or AL_DB_ENOMEM. */
static int build_parts(job_t *j, const al_channel_ctx_t *ctx, const al_message_t *m, size_t n)
{
    int r = 0;

    j->reqs = calloc(n, sizeof(*j->reqs));
    if (j->reqs == NULL)
        return AL_DB_ENOMEM;
    j->nreqs = n;
    for (size_t i = 0; r == 0 && i < n; i++)
        r = j->ops->build(ctx, m, i, &j->reqs[i]);
    if (r == 0 && j->reqs[0].url != NULL)
        url_host(j->reqs[0].url, j->host, sizeof(j->host));
    return r;
}

/* Starts sending d over an HTTP channel (d moves into a job, or is recorded). */
static void start_http(al_sender_t *s, al_delivery_t *d, const unstored_t *u,
                       const gw_channel_config_t *chcfg, const al_channel_ops_t *ops,
                       const al_message_t *m, uint64_t now)
{
    al_channel_ctx_t ctx = make_ctx(s, chcfg, now);
    size_t n = ops->parts != NULL ? ops->parts(&ctx, m) : 1;
    uint64_t budget = d->lease_until_ms > now ? d->lease_until_ms - now : 0;
    uint64_t margin =
        budget / 4 < AL_SENDER_LEASE_MARGIN_MS ? budget / 4 : AL_SENDER_LEASE_MARGIN_MS;
    job_t *j;
    int r;

    if (n == 0) {
        record(s, d, u, "", AL_REPLY_SENT, 0, 0, "nothing to send: no alerts left in it", now);
        return;
    }
    j = calloc(1, sizeof(*j));
    if (j == NULL) {
        record(s, d, u, "", AL_REPLY_RETRY, 0, 0, "out of memory", now);
        return;
    }
    j->s = s;
    j->unstored = *u;
    j->ops = ops;
    j->chcfg = chcfg;
    j->started_ms = now;
    j->deadline = now + budget - margin;
    buf_init(&j->body, s->opt.body_max);
    buf_init(&j->headers, AL_SENDER_HEADERS_MAX);
    j->next = s->jobs;
    if (s->jobs != NULL)
        s->jobs->prev = j;
    s->jobs = j;
    s->inflight++;
    r = build_parts(j, &ctx, m, n); /* m->d is d: build before moving it */
    j->d = *d;
    memset(d, 0, sizeof(*d));
    if (r != 0) {
        job_finish(j, r == AL_DB_ENOMEM ? AL_REPLY_RETRY : AL_REPLY_BROKEN, 0, 0,
                   r == AL_DB_ENOMEM ? "out of memory" : "the channel cannot build a request");
        return;
    }
    r = part_start(j, now);
    if (r != 0)
        job_finish(j, AL_REPLY_RETRY, 0, 0,
                   r > 0 ? "lease budget used up before sending" : "cannot start the request");
}

/* Handles one claimed delivery, or an unstored one when u->fn is set (takes d). */
static void start(al_sender_t *s, al_delivery_t *d, const unstored_t *u)
{
    const gw_channel_config_t *chcfg = al_channel_find(s->cfg, d->channel);
    const al_channel_ops_t *ops = chcfg != NULL ? al_channel_ops(chcfg->type) : NULL;
    uint64_t now = now_ms(s);
    al_message_t m;
    char why[160];
    int r = u->fn == NULL ? al_outbox_check(s->engine, d, now) : 1;

    if (r <= 0) {
        stat_for(s, d->channel)->n[r == 0 ? R_CANCELLED : R_ERROR]++;
        if (r < 0)
            log_store_error(s, "cannot re-check an alert delivery (its lease will expire)", r, d);
        al_delivery_dispose(d);
        return;
    }
    if (chcfg == NULL || ops == NULL) {
        if (chcfg == NULL)
            snprintf(why, sizeof(why), "no channel named '%s' in the config", d->channel);
        else
            snprintf(why, sizeof(why), "channel type '%s' is not supported by this build",
                     al_channel_type_name(chcfg->type));
        record(s, d, u, "", AL_REPLY_BROKEN, 0, 0, why, now);
        return;
    }
    r = al_message_parse(&m, d);
    if (r != 0) {
        record(s, d, u, "", r == AL_DB_ENOMEM ? AL_REPLY_RETRY : AL_REPLY_PERMANENT, 0, 0,
               r == AL_DB_ENOMEM ? "out of memory" : "the notification payload is malformed", now);
        return;
    }
    if (ops->deliver != NULL) {
        al_channel_ctx_t ctx = make_ctx(s, chcfg, now);
        al_reply_class_t cls;
        why[0] = '\0';
        cls = ops->deliver(&ctx, &m, why, sizeof(why));
        record(s, d, u, "", cls, 0, 0, cls == AL_REPLY_SENT || why[0] == '\0' ? NULL : why, now);
    } else if (ops->build != NULL) {
        start_http(s, d, u, chcfg, ops, &m, now);
    } else {
        record(s, d, u, "", AL_REPLY_BROKEN, 0, 0, "the channel type can neither build nor deliver",
               now);
    }
    al_message_dispose(&m);
}

/* ---- the due timer ---- */

static void drain_check(al_sender_t *s, size_t claimed)
{
    void (*cb)(void *) = s->drain_cb;

    if (cb == NULL || s->inflight > 0 || claimed > 0)
        return;
    s->drain_cb = NULL;
    cb(s->drain_ctx);
}

static void schedule_next(al_sender_t *s)
{
    uint64_t next = UINT64_MAX, now;
    int r = al_outbox_next_due(s->engine, &next);

    now = now_ms(s);
    if (r != 0) {
        log_store_error(s, "cannot read the alert outbox", r, NULL);
        arm(s, AL_SENDER_RECHECK_MS);
    } else if (next == UINT64_MAX) {
        arm(s, MAX_SLEEP_MS); /* nothing owed: kicks wake us; this is only a backstop */
    } else if (next <= now) {
        arm(s, AL_SENDER_RECHECK_MS); /* due but waiting for an earlier send of its alert */
    } else {
        arm(s, next - now < MAX_SLEEP_MS ? next - now : MAX_SLEEP_MS);
    }
}

static void on_due(uv_timer_t *t)
{
    al_sender_t *s = t->data;
    al_delivery_t batch[AL_SENDER_MAX_INFLIGHT];
    size_t room = s->opt.max_inflight - s->inflight, got = 0;
    int r;

    if (s->closing)
        return;
    if (room > 0) {
        r = al_outbox_claim(s->engine, now_ms(s), batch, room, &got);
        if (r != 0) {
            log_store_error(s, "cannot claim alert deliveries", r, NULL);
            arm(s, AL_SENDER_RECHECK_MS);
            return;
        }
        for (size_t i = 0; i < got; i++)
            start(s, &batch[i], &(unstored_t){NULL, NULL});
    }
    if (s->closing)
        return;
    if (s->inflight >= s->opt.max_inflight)
        return; /* a completion re-arms */
    if (room > 0 && got == room) {
        arm(s, 0); /* a full batch of local sends: more may be due */
        return;
    }
    schedule_next(s);
    drain_check(s, got);
}

/* Wakes the due timer in delay ms, unless it is already due earlier. */
static void arm(al_sender_t *s, uint64_t delay)
{
    uint64_t at;

    if (s->closing)
        return;
    at = uv_now(s->loop) + delay;
    if (uv_is_active((uv_handle_t *)&s->due_timer) && s->due_at <= at)
        return;
    s->due_at = at;
    uv_timer_start(&s->due_timer, on_due, delay, 0);
}

/* ---- public ---- */

al_sender_t *al_sender_new(uv_loop_t *loop, al_engine_t *engine, const gw_alerts_config_t *cfg,
                           const char *source)
{
    return al_sender_new_with(loop, engine, cfg, source, NULL);
}

static int init_multi(al_sender_t *s)
{
    CURLMcode c = CURLM_OK;

    s->multi = curl_multi_init();
    if (s->multi == NULL)
        return -1;
    c = curl_multi_setopt(s->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    if (c == CURLM_OK)
        c = curl_multi_setopt(s->multi, CURLMOPT_SOCKETDATA, s);
    if (c == CURLM_OK)
        c = curl_multi_setopt(s->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer_change);
    if (c == CURLM_OK)
        c = curl_multi_setopt(s->multi, CURLMOPT_TIMERDATA, s);
    if (c == CURLM_OK)
        c = curl_multi_setopt(s->multi, CURLMOPT_MAXCONNECTS, (long)AL_SENDER_MAX_INFLIGHT);
    return c == CURLM_OK ? 0 : -1;
}

static void free_sender(al_sender_t *s)
{
    free(s->stats);
    free(s->source);
    free(s->user_agent);
    free(s->proxy);
    free(s);
}

al_sender_t *al_sender_new_with(uv_loop_t *loop, al_engine_t *engine, const gw_alerts_config_t *cfg,
                                const char *source, const al_sender_options_t *opts)
{
    al_sender_t *s;

    if (loop == NULL || engine == NULL || cfg == NULL) {
        errno = EINVAL;
        return NULL;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        errno = EIO;
        return NULL;
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        goto nomem;
    if (opts != NULL)
        s->opt = *opts;
    if (s->opt.now == NULL)
        s->opt.now = realtime_ms;
    if (s->opt.request_timeout_ms == 0)
        s->opt.request_timeout_ms = AL_SENDER_REQUEST_TIMEOUT_MS;
    if (s->opt.connect_timeout_ms == 0)
        s->opt.connect_timeout_ms = AL_SENDER_CONNECT_TIMEOUT_MS;
    if (s->opt.max_inflight == 0 || s->opt.max_inflight > AL_SENDER_MAX_INFLIGHT)
        s->opt.max_inflight = AL_SENDER_MAX_INFLIGHT;
    if (s->opt.body_max == 0)
        s->opt.body_max = AL_SENDER_BODY_MAX;
    if (s->opt.log == NULL)
        s->opt.log = default_log;
    s->opt.user_agent = NULL;
    s->opt.proxy = NULL;
    s->loop = loop;
    s->engine = engine;
    s->cfg = cfg;
    snprintf(s->other.name, sizeof(s->other.name), OTHER_CHANNEL);
    s->source = source != NULL ? strdup(source) : NULL;
    s->user_agent = strdup(opts != NULL && opts->user_agent != NULL ? opts->user_agent
                                                                    : "breakwater/" BW_VERSION);
    s->proxy = opts != NULL && opts->proxy != NULL ? strdup(opts->proxy) : NULL;
    if ((source != NULL && s->source == NULL) || s->user_agent == NULL ||
        (opts != NULL && opts->proxy != NULL && s->proxy == NULL))
        goto nomem;
    if (init_multi(s) != 0) {
        curl_multi_cleanup(s->multi);
        free_sender(s);
        curl_global_cleanup();
        errno = EIO;
        return NULL;
    }
    stats_add_config(s);
    uv_timer_init(loop, &s->due_timer);
    uv_timer_init(loop, &s->curl_timer);
    s->due_timer.data = s;
    s->curl_timer.data = s;
    arm(s, 0);
    return s;
nomem:
    if (s != NULL)
        free_sender(s);
    curl_global_cleanup();
    errno = ENOMEM;
    return NULL;
}

void al_sender_kick(al_sender_t *s)
{
    if (s != NULL)
        arm(s, 0);
}

void al_sender_set_config(al_sender_t *s, const gw_alerts_config_t *cfg)
{
    if (s == NULL || cfg == NULL)
        return;
    s->cfg = cfg;
    stats_add_config(s);
    for (job_t *j = s->jobs; j != NULL; j = j->next)
        j->chcfg = al_channel_find(cfg, j->d.channel);
    arm(s, 0);
}

void al_sender_drain(al_sender_t *s, void (*idle)(void *ctx), void *ctx)
{
    if (s == NULL)
        return;
    s->drain_cb = idle;
    s->drain_ctx = ctx;
    arm(s, 0);
}

int al_sender_send_unstored(al_sender_t *s, al_delivery_t *d, al_unstored_fn done, void *ctx)
{
    uint64_t now;

    if (s == NULL || d == NULL || done == NULL || s->closing)
        return AL_DB_EINVAL;
    if (s->inflight >= s->opt.max_inflight)
        return AL_ELIMIT;
    now = now_ms(s);
    d->id = 0;
    /* start_http() gives a request the lease minus a margin: one request timeout */
    d->lease_until_ms = now + s->opt.request_timeout_ms + AL_SENDER_LEASE_MARGIN_MS;
    start(s, d, &(unstored_t){done, ctx});
    return 0;
}

size_t al_sender_inflight(const al_sender_t *s)
{
    return s != NULL ? s->inflight : 0;
}

static void handle_closed(al_sender_t *s)
{
    void (*done)(void *);
    void *ctx;

    if (--s->closing_handles > 0 || !s->closing)
        return;
    done = s->done;
    ctx = s->done_ctx;
    free_sender(s);
    curl_global_cleanup();
    if (done != NULL)
        done(ctx);
}

static void on_sock_closed(uv_handle_t *h)
{
    sock_t *k = h->data;
    al_sender_t *s = k->s;

    free(k);
    handle_closed(s);
}

static void on_timer_closed(uv_handle_t *h)
{
    handle_closed(h->data);
}

void al_sender_close(al_sender_t *s, void (*done)(void *ctx), void *ctx)
{
    if (s == NULL || s->closing)
        return;
    s->closing = true;
    s->done = done;
    s->done_ctx = ctx;
    s->drain_cb = NULL;
    while (s->jobs != NULL)
        job_free(s->jobs); /* abandoned: the lease expires, the engine records it as ambiguous */
    curl_multi_cleanup(s->multi); /* may report sockets removed: they close through sock_close */
    s->multi = NULL;
    while (s->socks != NULL)
        sock_close(s->socks);
    s->closing_handles += 2;
    uv_close((uv_handle_t *)&s->due_timer, on_timer_closed);
    uv_close((uv_handle_t *)&s->curl_timer, on_timer_closed);
}

void al_sender_stats(const al_sender_t *s,
                     void (*row)(void *ctx, const char *channel, const char *result, uint64_t n),
                     void *ctx)
{
    bool other = false;

    if (s == NULL || row == NULL)
        return;
    for (size_t i = 0; i < s->nstats; i++)
        for (int k = 0; k < R_COUNT; k++)
            row(ctx, s->stats[i].name, result_names[k], s->stats[i].n[k]);
    for (int k = 0; k < R_COUNT; k++)
        other |= s->other.n[k] > 0;
    for (int k = 0; other && k < R_COUNT; k++)
        row(ctx, s->other.name, result_names[k], s->other.n[k]);
}
