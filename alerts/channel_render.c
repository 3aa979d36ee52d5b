/*
 * channel_render.c - what the provider channels share to turn a notification into text: a
 * bounded buffer, one alert read into plain fields, the notification's word and title, labels as
 * text, and the JSON POST every JSON provider sends. See channel_int.h.
 *
 * Why bounded everywhere: every chat provider refuses (or worse, silently cuts) a message over
 * its limit: WeCom text 2048 B and markdown 4096 B, Feishu 20 KB per request, Slack 3000
 * characters per section, Twilio 4000 characters of TwiML. A renderer appends into an al_buf_t
 * whose max is the provider's limit minus what it reserves for the rest of the message, so the
 * request that leaves is always one the provider accepts, and a cut never splits a UTF-8
 * sequence (a half character is invalid JSON for some providers and mojibake for others).
 *
 * Pure: no I/O, no clock.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acklink.h"
#include "channel_int.h"

/* ---- al_buf_t ---- */

void al_buf_init(al_buf_t *b, size_t max)
{
    memset(b, 0, sizeof(*b));
    b->max = max;
}

void al_buf_dispose(al_buf_t *b)
{
    free(b->p);
    al_buf_init(b, b->max);
}

size_t al_utf8_prefix(const char *s, size_t n, size_t max)
{
    size_t cut;

    if (n <= max)
        return n;
    cut = max;
    /* Step back over continuation bytes (10xxxxxx) to the start of the cut sequence: the
     * sequence starting there does not fit whole, so it goes too. */
    while (cut > 0 && ((unsigned char)s[cut] & 0xC0) == 0x80)
        cut--;
    return cut;
}

size_t al_buf_room(const al_buf_t *b)
{
    return b->max > b->len ? b->max - b->len : 0;
}

static bool reserve(al_buf_t *b, size_t need)
{
    size_t cap = b->cap > 0 ? b->cap : 256;
    char *p;

    if (need <= b->cap)
        return true;
    while (cap < need)
        cap *= 2;
    if (cap > b->max + 1)
        cap = b->max + 1;
    p = realloc(b->p, cap);
    if (p == NULL) {
        b->oom = true;
        return false;
    }
    b->p = p;
    b->cap = cap;
    return true;
}

bool al_buf_add(al_buf_t *b, const char *s, size_t n)
{
    size_t take = al_utf8_prefix(s, n, al_buf_room(b));

    if (b->oom || !reserve(b, b->len + take + 1))
        return false;
    memcpy(b->p + b->len, s, take);
    b->len += take;
    b->p[b->len] = '\0';
    if (take < n)
        b->full = true;
    return take == n;
}

bool al_buf_puts(al_buf_t *b, const char *s)
{
    return al_buf_add(b, s, strlen(s));
}

bool al_buf_printf(al_buf_t *b, const char *fmt, ...)
{
    char small[512], *big = NULL;
    va_list ap;
    int n;
    bool ok;

    va_start(ap, fmt);
    n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return false;
    if ((size_t)n < sizeof(small))
        return al_buf_add(b, small, (size_t)n);
    va_start(ap, fmt);
    n = vasprintf(&big, fmt, ap);
    va_end(ap);
    if (n < 0) {
        b->oom = true;
        return false;
    }
    ok = al_buf_add(b, big, (size_t)n);
    free(big);
    return ok;
}

char *al_buf_steal(al_buf_t *b)
{
    char *p = b->oom ? NULL : b->p != NULL ? b->p : strdup("");

    if (b->oom)
        free(b->p);
    al_buf_init(b, b->max);
    return p;
}

/* ---- one alert ---- */

static const char *str_or_empty(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s != NULL ? s : "";
}

int al_alert_view(const al_channel_ctx_t *ctx, const al_message_t *m, size_t i, al_alert_view_t *v)
{
    json_t *el = json_array_get(m->alerts, i);

    memset(v, 0, sizeof(*v));
    if (!json_is_object(el))
        return AL_EBADINPUT;
    v->alert_id = str_or_empty(el, "alert_id");
    v->dedup_key = str_or_empty(el, "dedup_key");
    v->tier = str_or_empty(el, "tier");
    v->status = str_or_empty(el, "status");
    v->event = str_or_empty(el, "event");
    v->summary = str_or_empty(el, "summary");
    v->started_at = str_or_empty(el, "started_at");
    v->source = str_or_empty(el, "source");
    if (*v->source == '\0' && ctx != NULL && ctx->source != NULL)
        v->source = ctx->source;
    if (*v->tier == '\0')
        v->tier = al_message_tier(m);
    v->labels = json_object_get(el, "labels");
    if (!json_is_object(v->labels))
        v->labels = NULL; /* renderers iterate with json_object_foreach, which accepts NULL */
    v->count = json_integer_value(json_object_get(el, "count"));
    v->escalation_level = json_integer_value(json_object_get(el, "escalation_level"));
    v->flapping = json_is_true(json_object_get(el, "flapping"));
    return 0;
}

al_alert_action_t al_alert_action(const al_message_t *m, const al_alert_view_t *v)
{
    if (m->d->kind == AL_NOTIFY_RESOLVED || strcmp(v->status, "resolved") == 0)
        return AL_ACTION_RESOLVE;
    if (strcmp(v->status, "acknowledged") == 0)
        return AL_ACTION_ACKNOWLEDGE;
    return AL_ACTION_TRIGGER;
}

const char *al_message_word(const al_message_t *m)
{
    const char *status = json_string_value(json_object_get(json_array_get(m->alerts, 0), "status"));

    if (m->d->kind == AL_NOTIFY_RESOLVED || (status != NULL && strcmp(status, "resolved") == 0))
        return "RESOLVED";
    if (status != NULL && strcmp(status, "acknowledged") == 0)
        return "ACKNOWLEDGED";
    if (m->d->kind == AL_NOTIFY_ESCALATED)
        return "ESCALATED";
    if (m->d->kind == AL_NOTIFY_REPEAT)
        return "REPEAT";
    return "FIRING";
}

const char *al_message_tier(const al_message_t *m)
{
    const char *t = al_tier_name(m->d->tier);
    return t != NULL ? t : "P2";
}

void al_message_title(const al_message_t *m, char *buf, size_t cap)
{
    const char *summary =
        json_string_value(json_object_get(json_array_get(m->alerts, 0), "summary"));
    int n;

    if (cap == 0)
        return;
    if (m->nalerts == 1 && summary != NULL && *summary != '\0')
        n = snprintf(buf, cap, "[%s] %s: %s", al_message_tier(m), al_message_word(m), summary);
    else
        n = snprintf(buf, cap, "[%s] %s: %zu alerts", al_message_tier(m), al_message_word(m),
                     m->nalerts);
    if (n >= 0 && (size_t)n >= cap)
        buf[al_utf8_prefix(buf, cap - 1, cap - 1)] = '\0'; /* snprintf cut at a byte */
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

bool al_labels_text(al_buf_t *b, json_t *labels)
{
    size_t n = json_object_size(labels), k = 0;
    const char **keys;
    const char *key;
    json_t *val;
    bool ok = true;

    if (n == 0)
        return true;
    keys = calloc(n, sizeof(*keys));
    if (keys == NULL) {
        b->oom = true;
        return false;
    }
    json_object_foreach(labels, key, val) keys[k++] = key;
    qsort(keys, k, sizeof(*keys), cmp_str);
    for (size_t i = 0; ok && i < k; i++) {
        const char *s = json_string_value(json_object_get(labels, keys[i]));
        ok = al_buf_printf(b, "%s%s=%s", i > 0 ? ", " : "", keys[i], s != NULL ? s : "");
    }
    free(keys);
    return ok;
}

/* The white space an alert's text starts (lead) and ends (trail) with, and whether it is one
 * sentence (no line break, ends with '.'), so the "more" line can follow the same layout. */
static void layout_of(const char *p, size_t len, char lead[8], char trail[8], bool *sentence)
{
    size_t a = 0, z = len;

    while (a < len && a < 7 && (p[a] == ' ' || p[a] == '\n'))
        a++;
    memcpy(lead, p, a);
    lead[a] = '\0';
    while (z > a && len - z < 7 && (p[z - 1] == ' ' || p[z - 1] == '\n'))
        z--;
    memcpy(trail, p + z, len - z);
    trail[len - z] = '\0';
    *sentence = z > a && p[z - 1] == '.' && memchr(p, '\n', z) == NULL;
}

size_t al_render_alerts(const al_channel_ctx_t *ctx, const al_message_t *m, al_buf_t *b,
                        al_alert_render_fn fn, size_t max_alerts)
{
    size_t shown = 0, max = b->max, reserve = 0;
    char lead[8] = "", trail[8] = "";
    bool sentence = false;

    if (max_alerts > AL_RENDER_SHOWN_MAX)
        max_alerts = AL_RENDER_SHOWN_MAX;
    /* Keep room for the "more" line when there may be one. */
    if (m->nalerts > 1 && max > 2 * AL_RENDER_MORE_MAX)
        reserve = AL_RENDER_MORE_MAX;
    b->max = max - reserve;
    for (size_t i = 0; i < m->nalerts && shown < max_alerts; i++) {
        al_alert_view_t v;
        al_buf_t one;
        bool fits;

        if (al_alert_view(ctx, m, i, &v) != 0)
            continue;
        al_buf_init(&one, b->max);
        fn(ctx, m, &v, &one);
        if (one.oom)
            b->oom = true;
        fits = one.p != NULL && (shown == 0 || one.len <= al_buf_room(b));
        if (fits) {
            if (shown == 0)
                layout_of(one.p, one.len, lead, trail, &sentence);
            al_buf_add(b, one.p, one.len);
            shown++;
        }
        al_buf_dispose(&one);
        if (!fits || b->full)
            break;
    }
    b->max = max;
    if (shown == 0 || shown >= m->nalerts || b->oom)
        return shown;
    al_buf_printf(b, "%s" AL_ELLIPSIS "and %zu more alert%s%s%s", lead, m->nalerts - shown,
                  m->nalerts - shown == 1 ? "" : "s", sentence ? "." : "", trail);
    return b->oom ? shown : m->nalerts;
}

size_t al_render_more(size_t nalerts, size_t shown, char *buf, size_t cap)
{
    int n;

    if (cap == 0)
        return 0;
    buf[0] = '\0';
    if (shown >= nalerts)
        return 0;
    n = snprintf(buf, cap, AL_ELLIPSIS "and %zu more alert%s", nalerts - shown,
                 nalerts - shown == 1 ? "" : "s");
    if (n < 0) {
        buf[0] = '\0';
        return 0;
    }
    if ((size_t)n >= cap) /* snprintf cut at a byte */
        buf[al_utf8_prefix(buf, cap - 1, cap - 1)] = '\0';
    return strlen(buf);
}

/* Bytes the blocks j add to an array's compact JSON (its elements and their commas; an upper
 * bound by one), or 0 when out of memory. */
static size_t blocks_size(const json_t *j)
{
    char *dump = j != NULL ? json_dumps(j, JSON_COMPACT) : NULL;
    size_t n = dump != NULL ? strlen(dump) + 1 : 0;

    free(dump);
    return n;
}

static int append_blocks(json_t *blocks, json_t *j)
{
    int r = json_is_array(j) ? json_array_extend(blocks, j) : json_array_append(blocks, j);

    json_decref(j);
    return r;
}

long al_render_blocks(const al_channel_ctx_t *ctx, const al_message_t *m, json_t *blocks,
                      al_alert_block_fn fn, size_t budget, size_t max_alerts)
{
    size_t shown = 0, used = 0, reserve = 0, n;
    char more[AL_RENDER_MORE_MAX];
    json_t *j;

    if (max_alerts > AL_RENDER_SHOWN_MAX)
        max_alerts = AL_RENDER_SHOWN_MAX;
    /* Keep room for the "more" block when there may be one: the largest it can be (the most
     * alerts left out, the most digits) once at least one alert is shown. */
    if (m->nalerts > 1) {
        al_render_more(m->nalerts, 1, more, sizeof(more));
        reserve = blocks_size(j = fn(ctx, m, NULL, more, 1));
        json_decref(j);
        if (reserve == 0)
            return -1;
    }
    for (size_t i = 0; i < m->nalerts && shown < max_alerts; i++) {
        al_alert_view_t v;

        if (al_alert_view(ctx, m, i, &v) != 0)
            continue;
        j = fn(ctx, m, &v, NULL, shown);
        if ((n = blocks_size(j)) == 0) {
            json_decref(j);
            return -1;
        }
        if (shown > 0 && used + n + reserve > budget) {
            json_decref(j);
            break;
        }
        if (append_blocks(blocks, j) != 0)
            return -1;
        used += n;
        shown++;
    }
    if (shown == 0 || shown >= m->nalerts)
        return (long)shown;
    al_render_more(m->nalerts, shown, more, sizeof(more));
    j = fn(ctx, m, NULL, more, shown);
    if (j == NULL || append_blocks(blocks, j) != 0)
        return -1;
    return (long)m->nalerts;
}

bool al_facts_text(al_buf_t *b, const al_alert_view_t *v, const char *sep)
{
    bool ok = al_buf_printf(b, "since %s", *v->started_at ? v->started_at : "?");

    if (ok && v->count > 1)
        ok = al_buf_printf(b, "%scount %lld", sep, (long long)v->count);
    if (ok && v->escalation_level > 0)
        ok = al_buf_printf(b, "%sescalation %lld", sep, (long long)v->escalation_level);
    if (ok && v->flapping)
        ok = al_buf_printf(b, "%sflapping", sep);
    return ok;
}

al_reply_class_t al_code_lookup(const al_code_rule_t *rules, size_t n, int64_t code,
                                al_reply_class_t otherwise, uint64_t *retry_after_ms)
{
    for (size_t i = 0; i < n; i++) {
        if (rules[i].code != code)
            continue;
        if (rules[i].retry_after_ms > *retry_after_ms)
            *retry_after_ms = rules[i].retry_after_ms;
        return rules[i].cls;
    }
    return otherwise;
}

al_reply_class_t al_classify_code(const al_channel_ctx_t *ctx, const al_reply_t *r, bool has_code,
                                  int64_t code, const al_code_rule_t *rules, size_t n,
                                  uint64_t *retry_after_ms)
{
    al_reply_class_t cls = al_classify_http(ctx, r, retry_after_ms);
    bool ok2xx = cls == AL_REPLY_SENT;

    if (r->status == 429 || r->status >= 500)
        return cls;
    if (!has_code)
        return ok2xx ? AL_REPLY_RETRY : cls;
    if (code == 0)
        return cls; /* sent under 2xx; a "success" code under 4xx is not a success */
    return al_code_lookup(rules, n, code, ok2xx ? AL_REPLY_PERMANENT : cls, retry_after_ms);
}

/* ---- ack links ---- */

size_t al_channel_ack_link(const al_channel_ctx_t *ctx, const char *alert_id, char *buf, size_t cap)
{
    const char *url = ctx->alerts != NULL ? ctx->alerts->external_url : NULL;
    char *end = NULL;
    long long id;

    if (cap > 0)
        buf[0] = '\0';
    if (url == NULL || alert_id == NULL || *alert_id < '1' || *alert_id > '9')
        return 0;
    errno = 0;
    id = strtoll(alert_id, &end, 10);
    if (errno != 0 || *end != '\0' || id <= 0)
        return 0;
    return al_ack_link(url, (int64_t)id, ctx->now_ms / 1000, buf, cap);
}

/* ---- requests ---- */

int al_request_json(al_request_t *out, const char *url, json_t *body)
{
    out->kind = AL_REQ_HTTP;
    out->method = "POST";
    out->content_type = "application/json";
    out->body = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;
    out->url = url != NULL ? strdup(url) : NULL;
    json_decref(body);
    if (out->body == NULL || out->url == NULL) {
        al_request_dispose(out);
        return AL_DB_ENOMEM;
    }
    out->body_len = strlen(out->body);
    return 0;
}

uint64_t al_retry_secs(int64_t secs)
{
    if (secs <= 0)
        return 0;
    if (secs >= AL_RETRY_AFTER_MAX_MS / 1000)
        return AL_RETRY_AFTER_MAX_MS;
    return (uint64_t)secs * 1000;
}

bool al_json_str_is(json_t *o, const char *key, const char *val)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s != NULL && strcmp(s, val) == 0;
}

bool al_json_int(json_t *o, const char *key, int64_t *out)
{
    json_t *v = json_object_get(o, key);

    if (!json_is_integer(v))
        return false;
    *out = json_integer_value(v);
    return true;
}
