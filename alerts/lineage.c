/*
 * lineage.c - the append-only history of each alert, and the JSON views built from the store.
 *
 * Every step in an alert's life is a row in alert_history, written in the transaction of the step:
 * raised (with the event that raised it), event (deduplicated raises and related events, sampled
 * after HISTORY_EVENTS_FULL in engine.c), flapping, grouped, suppressed, notified (channels and
 * delivery ids), delivery (each attempt: result, HTTP status, error, what happens next),
 * cancelled, escalated, acknowledged, cleared (flap hold-down started), resolved. The table refuses
 * UPDATE (a trigger); rows go only with their alert, by retention.
 *
 * GET /api/v1/alerts/{id} is al_alert_json(): the alert, every delivery that speaks about it and
 * its history, oldest first. Times are RFC 3339 UTC with milliseconds; the notification payload
 * (al_alert_to_json(admin = false)) keeps the webhook shape of SPEC section 5.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alerts_int.h"

#define DELIVERIES_READ_MAX 1000
#define LIST_DEFAULT 100
#define LIST_MAX 1000

int al_history_add(al_engine_t *e, int64_t alert_id, uint64_t ts_ms, const char *kind,
                   json_t *detail)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_HIST_INSERT);
    char *text;

    if (detail == NULL)
        detail = json_object();
    text = detail != NULL ? json_dumps(detail, JSON_COMPACT) : NULL;
    json_decref(detail);
    if (text == NULL)
        return AL_DB_ENOMEM;
    sqlite3_bind_int64(st, 1, alert_id);
    al_bind_time(st, 2, ts_ms);
    al_bind_text(st, 3, kind);
    sqlite3_bind_text(st, 4, text, -1, free);
    return al_stmt_run(st);
}

void al_fmt_time(uint64_t t, bool ms, char out[32])
{
    time_t secs = (time_t)(t / 1000);
    struct tm tm;
    size_t n;

    if (gmtime_r(&secs, &tm) == NULL) {
        snprintf(out, 32, "1970-01-01T00:00:00Z");
        return;
    }
    n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    if (ms)
        snprintf(out + n, 32 - n, ".%03uZ", (unsigned)(t % 1000));
    else
        snprintf(out + n, 32 - n, "Z");
}

static json_t *jtime(uint64_t t)
{
    char buf[32];

    if (t == AL_NEVER)
        return json_null();
    al_fmt_time(t, true, buf);
    return json_string(buf);
}

static json_t *jid(int64_t id)
{
    return id > 0 ? json_integer((json_int_t)id) : json_null();
}

json_t *al_alert_to_json(const al_engine_t *e, const al_alert_t *a, bool admin)
{
    json_t *labels = json_loads(a->labels, 0, NULL), *o;
    char id[24], started[32];

    snprintf(id, sizeof(id), "%lld", (long long)a->id);
    al_fmt_time(a->started_at, admin, started);
    o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:o, s:s, s:s, s:i, s:I, s:s, s:b}", "alert_id", id,
                  "dedup_key", a->dedup_key, "tier", al_tier_name(a->tier), "status",
                  al_status_name(a->status), "event", a->event, "labels",
                  labels != NULL ? labels : json_object(), "summary",
                  a->summary != NULL ? a->summary : "", "started_at", started, "escalation_level",
                  a->escalation_level, "count", (json_int_t)a->count, "source", e->source,
                  "flapping", a->flapping);
    if (o == NULL || !admin)
        return o;
    json_object_set_new(o, "id", json_integer((json_int_t)a->id));
    json_object_set_new(o, "origin", json_string(a->source));
    json_object_set_new(o, "first_tier", json_string(al_tier_name(a->first_tier)));
    json_object_set_new(o, "updated_at", jtime(a->updated_at));
    json_object_set_new(o, "last_seen_at", jtime(a->last_seen_at));
    json_object_set_new(o, "acked_at", jtime(a->acked_at));
    json_object_set_new(o, "acked_by", a->acked_by ? json_string(a->acked_by) : json_null());
    json_object_set_new(o, "resolved_at", jtime(a->resolved_at));
    json_object_set_new(o, "resolved_by",
                        a->resolved_by ? json_string(a->resolved_by) : json_null());
    json_object_set_new(o, "next_escalation_at", jtime(a->next_escalation_at));
    json_object_set_new(o, "next_repeat_at", jtime(a->next_repeat_at));
    json_object_set_new(o, "owed_notification",
                        a->notify_kind == AL_NOTIFY_NONE
                            ? json_null()
                            : json_string(al_notify_kind_name((al_notify_kind_t)a->notify_kind)));
    json_object_set_new(o, "group_until", jtime(a->notify_at));
    json_object_set_new(o, "silenced_by", jid(a->silenced_by));
    json_object_set_new(o, "inhibited_by", jid(a->inhibited_by));
    json_object_set_new(o, "flap_count", json_integer((json_int_t)a->flap_count));
    json_object_set_new(o, "hold_until", jtime(a->hold_until));
    json_object_set_new(o, "auto_resolve_at", jtime(a->auto_resolve_at));
    return o;
}

size_t al_alert_labels(const al_alert_t *a, json_t **holder, al_label_t *out, size_t max)
{
    const char *k;
    json_t *v;
    size_t n = 0;
    bool has_name = false;

    *holder = json_loads(a->labels, 0, NULL);
    json_object_foreach(*holder, k, v)
    {
        if (n + 2 >= max)
            break;
        if (!json_is_string(v) || strcmp(k, "tier") == 0)
            continue; /* the current tier is added below */
        has_name |= strcmp(k, "alertname") == 0;
        out[n++] = (al_label_t){k, json_string_value(v)};
    }
    if (!has_name && n < max)
        out[n++] = (al_label_t){"alertname", a->event};
    if (n < max)
        out[n++] = (al_label_t){"tier", al_tier_name(a->tier)};
    return n;
}

/* Serializes root (stolen) into *out. */
static int dump(json_t *root, char **out)
{
    *out = root != NULL ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return *out != NULL ? 0 : AL_DB_ENOMEM;
}

int al_alerts_json(al_engine_t *e, const char *status, uint32_t limit, char **out)
{
    sqlite3_stmt *st;
    json_t *list;
    int rc, r = 0;

    *out = NULL;
    if (status != NULL && al_status_parse(status) < 0)
        return AL_EBADINPUT;
    limit = limit == 0 ? LIST_DEFAULT : limit > LIST_MAX ? LIST_MAX : limit;
    if (status != NULL) {
        st = al_stmt(e, AL_ST_ALERT_LIST_STATUS);
        al_bind_text(st, 1, status);
        sqlite3_bind_int(st, 2, (int)limit);
    } else {
        st = al_stmt(e, AL_ST_ALERT_LIST_ALL);
        sqlite3_bind_int(st, 1, (int)limit);
    }
    list = json_array();
    while (list != NULL && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        al_alert_t a;
        r = al_alert_read(st, &a);
        if (r != 0)
            break;
        if (json_array_append_new(list, al_alert_to_json(e, &a, true)) != 0)
            r = AL_DB_ENOMEM;
        al_alert_dispose(&a);
        if (r != 0)
            break;
    }
    if (list == NULL)
        r = AL_DB_ENOMEM;
    else if (r == 0 && rc != SQLITE_DONE)
        r = al_db_translate(rc);
    al_stmt_done(st);
    if (r != 0) {
        json_decref(list);
        return r;
    }
    return dump(json_pack("{s:o}", "alerts", list), out);
}

static json_t *col_json_int(sqlite3_stmt *st, int i)
{
    if (sqlite3_column_type(st, i) == SQLITE_NULL)
        return json_null();
    return json_integer((json_int_t)sqlite3_column_int64(st, i));
}

static json_t *col_json_text(sqlite3_stmt *st, int i)
{
    const char *s = (const char *)sqlite3_column_text(st, i);
    return s != NULL ? json_string(s) : json_null();
}

static int deliveries_json(al_engine_t *e, int64_t id, json_t *list)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_DLV_FOR_ALERT);
    int rc, r = 0;

    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int(st, 2, DELIVERIES_READ_MAX);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *d = json_pack(
            "{s:o, s:o, s:o, s:s, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "delivery_id",
            col_json_text(st, 0), "channel", col_json_text(st, 1), "kind", col_json_text(st, 2),
            "tier", al_tier_name(sqlite3_column_int(st, 3)), "status", col_json_text(st, 4),
            "attempts", col_json_int(st, 5), "created_at", jtime(al_col_time(st, 6)),
            "next_attempt_at", jtime(al_col_time(st, 7)), "last_attempt_at",
            jtime(al_col_time(st, 8)), "last_code", col_json_int(st, 9), "last_error",
            col_json_text(st, 10), "finished_at", jtime(al_col_time(st, 11)));
        if (d == NULL || json_array_append_new(list, d) != 0) {
            r = AL_DB_ENOMEM;
            break;
        }
    }
    if (r == 0 && rc != SQLITE_DONE)
        r = al_db_translate(rc);
    al_stmt_done(st);
    return r;
}

static int history_json(al_engine_t *e, int64_t id, json_t *list, bool *truncated)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_HIST_LIST);
    size_t n = 0;
    int rc, r = 0;

    *truncated = false;
    sqlite3_bind_int64(st, 1, id);
    sqlite3_bind_int(st, 2, AL_HISTORY_READ_MAX + 1);
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *detail, *h;
        if (++n > AL_HISTORY_READ_MAX) {
            *truncated = true;
            break;
        }
        detail = json_loads((const char *)sqlite3_column_text(st, 3), 0, NULL);
        h = json_pack("{s:I, s:o, s:I, s:o, s:o}", "id", (json_int_t)sqlite3_column_int64(st, 0),
                      "ts", jtime(al_col_time(st, 1)), "ts_ms",
                      (json_int_t)sqlite3_column_int64(st, 1), "kind", col_json_text(st, 2),
                      "detail", detail != NULL ? detail : json_object());
        if (h == NULL || json_array_append_new(list, h) != 0) {
            r = AL_DB_ENOMEM;
            break;
        }
    }
    if (r == 0 && !*truncated && rc != SQLITE_DONE)
        r = al_db_translate(rc);
    al_stmt_done(st);
    return r;
}

int al_alert_json(al_engine_t *e, int64_t id, char **out)
{
    json_t *deliveries = json_array(), *history = json_array(), *alert = NULL;
    bool truncated = false;
    al_alert_t a;
    int r;

    *out = NULL;
    r = deliveries != NULL && history != NULL ? al_alert_get(e, id, &a) : AL_DB_ENOMEM;
    if (r == 1) {
        alert = al_alert_to_json(e, &a, true);
        al_alert_dispose(&a);
        r = alert != NULL ? 0 : AL_DB_ENOMEM;
    } else if (r == 0) {
        r = AL_ENOENT;
    }
    if (r == 0)
        r = deliveries_json(e, id, deliveries);
    if (r == 0)
        r = history_json(e, id, history, &truncated);
    if (r != 0) {
        json_decref(alert);
        json_decref(deliveries);
        json_decref(history);
        return r;
    }
    return dump(json_pack("{s:o, s:o, s:o, s:b}", "alert", alert, "deliveries", deliveries,
                          "history", history, "history_truncated", truncated),
                out);
}
