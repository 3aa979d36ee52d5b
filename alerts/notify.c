/*
 * notify.c - what becomes of a notification: held for group_wait, muted, or written to the outbox.
 *
 * Every notification the engine decides (first firing, escalation, repeat, resolved) passes here,
 * inside the transaction of the state change that caused it:
 *
 *   al_notify_locked(alert, kind)
 *     - first firing on a tier with group_wait: owed until the tier's open window ends (the window
 *       opens with the first alert and lasts group_wait; alerts raised inside it join it), and the
 *       alert's escalation/repeat timers start when the batch is sent (escalation.c)
 *     - muted by an active silence (silence.c) or an inhibiting alert: owed, with the strongest
 *       kind kept (escalated > firing > repeat), re-checked when the silence ends or the inhibiting
 *       alert resolves; the lineage says "suppressed" and by what
 *     - otherwise collected (al_note_t); al_notes_flush_locked() writes the collected notes at the
 *       end of the transaction grouped by (tier, kind): one outbox row per channel of the tier
 *       with up to AL_GROUP_MAX alerts, so alerts stepped together share a message
 *   al_notify_resolved_locked(alert): one row per channel that was (or may have been) notified
 *       about the alert, unless muted.
 *   al_notify_acked_locked(alert): the same for incident channels only (pagerduty, opsgenie):
 *       they page on their own until told, so an ack in Breakwater must reach them; chat
 *       channels are not told (the repeats stop, which is what people see).
 *
 * Inhibition rules (fixed, topology-driven): an active no_healthy_hosts{upstream=X} mutes
 * host_down{upstream=X,...} (the upstream's page covers its hosts); an active crash_loop mutes
 * worker_crash (the crash loop page covers each crash).
 *
 * Invariants: a collected note refers to an alert that is firing and not muted at collection time;
 * notes never outlive their transaction (al_txn_rollback() clears them).
 */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "alerts_int.h"
#include "channel.h"

/* ---- notifications collected during a transaction ---- */

void al_notes_clear(al_engine_t *e)
{
    e->nnotes = 0;
}

static int note_add(al_engine_t *e, const al_alert_t *a, al_notify_kind_t kind)
{
    if (e->nnotes == e->capnotes) {
        size_t cap = e->capnotes ? e->capnotes * 2 : 16;
        al_note_t *v = realloc(e->notes, cap * sizeof(*v));
        if (v == NULL)
            return AL_DB_ENOMEM;
        e->notes = v;
        e->capnotes = cap;
    }
    e->notes[e->nnotes++] = (al_note_t){a->id, a->tier, kind};
    return 0;
}

static int cmp_note(const void *pa, const void *pb)
{
    const al_note_t *a = pa, *b = pb;

    if (a->tier != b->tier)
        return a->tier - b->tier;
    if (a->kind != b->kind)
        return (int)a->kind - (int)b->kind;
    return a->alert_id < b->alert_id ? -1 : a->alert_id > b->alert_id;
}

/* Writes one outbox row (and its member rows) for channel; *uuid gets its delivery id. */
static int write_delivery(al_engine_t *e, const char *channel, al_notify_kind_t kind, int tier,
                          const int64_t *ids, size_t n, uint64_t now, char uuid[37])
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_DLV_INSERT);
    int64_t row;
    int r;

    al_uuid(e, uuid);
    al_bind_text(st, 1, uuid);
    al_bind_text(st, 2, channel);
    al_bind_text(st, 3, al_notify_kind_name(kind));
    sqlite3_bind_int(st, 4, tier);
    al_bind_time(st, 5, now);
    al_bind_time(st, 6, al_add_ms(now, e->cfg->delivery.max_age_ms));
    r = al_stmt_run(st);
    if (r != 0)
        return r;
    row = sqlite3_last_insert_rowid(e->conn);
    for (size_t i = 0; i < n && r == 0; i++) {
        st = al_stmt(e, AL_ST_DLV_MEMBER_INSERT);
        sqlite3_bind_int64(st, 1, row);
        sqlite3_bind_int64(st, 2, ids[i]);
        r = al_stmt_run(st);
    }
    return r;
}

/* One message per channel of the tier for n alerts (same tier and kind), and their lineage. */
static int write_group(al_engine_t *e, const al_note_t *notes, size_t n, uint64_t now)
{
    int tier = al_tier_defined(e->cfg, notes[0].tier);
    const gw_tier_config_t *tc = al_tier_cfg(e, tier);
    json_t *channels = json_array(), *dids = json_array();
    int64_t ids[AL_GROUP_MAX];
    char uuid[37];
    int r = channels != NULL && dids != NULL ? 0 : AL_DB_ENOMEM;

    for (size_t i = 0; i < n; i++)
        ids[i] = notes[i].alert_id;
    for (size_t c = 0; r == 0 && tc != NULL && c < tc->nchannels; c++) {
        const char *name = e->cfg->channels[tc->channels[c]].name;
        r = write_delivery(e, name, notes[0].kind, tier, ids, n, now, uuid);
        if (r == 0 && (json_array_append_new(channels, json_string(name)) != 0 ||
                       json_array_append_new(dids, json_string(uuid)) != 0))
            r = AL_DB_ENOMEM;
    }
    for (size_t i = 0; r == 0 && i < n; i++)
        r = al_history_add(e, ids[i], now, "notified",
                           json_pack("{s:s, s:s, s:O, s:O, s:i}", "kind",
                                     al_notify_kind_name(notes[0].kind), "tier",
                                     al_tier_name(tier >= 0 ? tier : notes[0].tier), "channels",
                                     channels, "delivery_ids", dids, "group_size", (int)n));
    json_decref(channels);
    json_decref(dids);
    return r;
}

int al_notes_flush_locked(al_engine_t *e, uint64_t now)
{
    size_t i = 0;
    int r = 0;

    assert(e->in_txn);
    if (e->nnotes == 0)
        return 0;
    qsort(e->notes, e->nnotes, sizeof(e->notes[0]), cmp_note);
    while (r == 0 && i < e->nnotes) {
        size_t j = i + 1;
        while (j < e->nnotes && j - i < AL_GROUP_MAX && e->notes[j].tier == e->notes[i].tier &&
               e->notes[j].kind == e->notes[i].kind)
            j++;
        r = write_group(e, e->notes + i, j - i, now);
        i = j;
    }
    e->nnotes = 0;
    return r;
}

/* ---- suppression: silences and inhibition ---- */

/* An active alert of `source` with the same value of label `equal` mutes alerts of `target`. */
static const struct inhibit_rule {
    const char *source, *target, *equal;
} inhibit_rules[] = {
    {"no_healthy_hosts", "host_down", "upstream"}, /* the upstream's page covers its hosts */
    {"crash_loop", "worker_crash", NULL},          /* the crash loop page covers each crash */
};

static int inhibitor(al_engine_t *e, const al_alert_t *a, int64_t *by)
{
    *by = 0;
    for (size_t i = 0; i < sizeof(inhibit_rules) / sizeof(inhibit_rules[0]) && *by == 0; i++) {
        const struct inhibit_rule *ir = &inhibit_rules[i];
        json_t *labels, *src;
        al_alert_t b;
        char *key;
        int r;

        if (strcmp(a->event, ir->target) != 0)
            continue;
        labels = json_loads(a->labels, 0, NULL);
        src = json_object();
        if (labels == NULL || src == NULL) {
            json_decref(labels);
            json_decref(src);
            return AL_DB_ENOMEM;
        }
        if (ir->equal != NULL)
            json_object_set(src, ir->equal, json_object_get(labels, ir->equal));
        key = ir->equal == NULL || json_object_get(labels, ir->equal) != NULL
                  ? al_dedup_key(ir->source, src, NULL)
                  : NULL;
        json_decref(labels);
        json_decref(src);
        if (key == NULL)
            continue;
        r = al_alert_get_active(e, key, &b);
        free(key);
        if (r < 0)
            return r;
        if (r == 1 && b.id != a->id)
            *by = b.id;
        if (r == 1)
            al_alert_dispose(&b);
    }
    return 0;
}

/* Who mutes a notification for a right now: a silence (*sil, ending at *sil_end) or an inhibiting
 * alert (*inh); both 0 when nobody does. */
static int suppression(al_engine_t *e, const al_alert_t *a, uint64_t now, int64_t *sil,
                       uint64_t *sil_end, int64_t *inh)
{
    al_label_t lv[AL_LABELS_MAX + 2];
    json_t *holder = NULL;
    size_t n = al_alert_labels(a, &holder, lv, AL_LABELS_MAX + 2);
    int r;

    *sil = 0;
    *inh = 0;
    *sil_end = AL_NEVER;
    r = al_silence_find(e, lv, n, now, sil, sil_end);
    json_decref(holder);
    if (r != 0 || *sil != 0)
        return r;
    return inhibitor(e, a, inh);
}

int al_kind_rank(int kind)
{
    switch (kind) {
    case AL_NOTIFY_REPEAT:
        return 1;
    case AL_NOTIFY_FIRING:
        return 2;
    case AL_NOTIFY_ESCALATED:
        return 3;
    default:
        return 0;
    }
}

/* Remembers that a notification is owed, keeping the strongest kind. */
static void owe(al_alert_t *a, al_notify_kind_t kind)
{
    if (al_kind_rank(kind) > al_kind_rank(a->notify_kind))
        a->notify_kind = kind;
}

void al_clear_owed(al_alert_t *a)
{
    a->notify_kind = AL_NOTIFY_NONE;
    a->notify_at = AL_NEVER;
    a->recheck_at = AL_NEVER;
}

/* The group_wait window of the tier that is still open at now, or a new one. */
static int group_until(al_engine_t *e, int tier, uint64_t wait, uint64_t now, uint64_t *until)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_ALERT_GROUP_OPEN);
    int64_t open;
    int r;

    sqlite3_bind_int(st, 1, tier);
    al_bind_time(st, 2, now);
    r = al_stmt_int(st, -1, &open);
    if (r == 0)
        *until = open >= 0 ? (uint64_t)open : al_add_ms(now, wait);
    return r;
}

/* Decides what happens to a notification of `kind` for the firing alert a: held for group_wait
 * (may_group), muted (owed until the silence/inhibition ends), or collected for this transaction.
 * The caller saves a. */
int al_notify_locked(al_engine_t *e, al_alert_t *a, al_notify_kind_t kind, uint64_t now,
                     bool may_group)
{
    const gw_tier_config_t *tc = al_tier_cfg(e, a->tier);
    uint64_t sil_end, until;
    int64_t sil, inh;
    int r;

    assert(a->status == AL_FIRING);
    if (may_group && kind == AL_NOTIFY_FIRING && tc != NULL && tc->group_wait_ms > 0) {
        r = group_until(e, a->tier, tc->group_wait_ms, now, &until);
        if (r != 0)
            return r;
        owe(a, kind);
        a->notify_at = until;
        a->recheck_at = AL_NEVER;
        /* escalate_after and repeat count from the batch's notification (scheduled then), so a
         * batch escalates as a batch */
        a->next_escalation_at = a->next_repeat_at = AL_NEVER;
        return al_history_add(e, a->id, now, "grouped",
                              json_pack("{s:s, s:s, s:I}", "kind", al_notify_kind_name(kind),
                                        "tier", al_tier_name(a->tier), "until_ms",
                                        (json_int_t)until));
    }
    r = suppression(e, a, now, &sil, &sil_end, &inh);
    if (r != 0)
        return r;
    if (sil != 0 || inh != 0) {
        /* lineage once per change (not for every muted repeat): new mute, other source, or a
         * stronger kind now owed */
        bool changed = a->notify_kind == AL_NOTIFY_NONE || a->silenced_by != sil ||
                       a->inhibited_by != inh || al_kind_rank(kind) > al_kind_rank(a->notify_kind);
        owe(a, kind);
        a->notify_at = AL_NEVER;
        a->recheck_at = sil != 0 ? sil_end : AL_NEVER;
        a->silenced_by = sil;
        a->inhibited_by = inh;
        if (!changed)
            return 0;
        return al_history_add(e, a->id, now, "suppressed",
                              sil != 0 ? json_pack("{s:s, s:I, s:I}", "kind",
                                                   al_notify_kind_name(kind), "silence",
                                                   (json_int_t)sil, "until_ms", (json_int_t)sil_end)
                                       : json_pack("{s:s, s:I}", "kind", al_notify_kind_name(kind),
                                                   "inhibited_by", (json_int_t)inh));
    }
    al_clear_owed(a);
    a->silenced_by = 0;
    a->inhibited_by = 0;
    return note_add(e, a, kind);
}

/* Resolved notifications: one per channel that was (or may have been) notified about a. */
/* Providers with an incident lifecycle of their own (they escalate until acknowledged). */
static bool incident_channel(const al_engine_t *e, const char *name)
{
    const gw_channel_config_t *c = al_channel_find(e->cfg, name);

    return c != NULL && (c->type == GW_CHANNEL_PAGERDUTY || c->type == GW_CHANNEL_OPSGENIE);
}

/* A `kind` row (resolved or acknowledged) to each channel that was (or may have been) notified
 * about a (for acknowledged: incident channels only), unless a silence or inhibition mutes it. */
static int notify_told_channels(al_engine_t *e, al_alert_t *a, al_notify_kind_t kind, uint64_t now)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_DLV_NOTIFIED_CHANNELS);
    const char *kname = al_notify_kind_name(kind);
    char *names[64], uuid[37];
    size_t n = 0;
    uint64_t sil_end;
    int64_t sil, inh;
    json_t *channels = NULL, *dids = NULL;
    int rc = SQLITE_DONE, r = 0;

    sqlite3_bind_int64(st, 1, a->id);
    while (n < 64 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        const char *name = (const char *)sqlite3_column_text(st, 0);
        if (kind == AL_NOTIFY_ACKNOWLEDGED && !incident_channel(e, name))
            continue;
        names[n] = strdup(name);
        if (names[n] == NULL) {
            r = AL_DB_ENOMEM;
            break;
        }
        n++;
    }
    if (r == 0 && n < 64 && rc != SQLITE_DONE)
        r = al_db_translate(rc);
    al_stmt_done(st);
    if (r != 0 || n == 0)
        goto out;
    r = suppression(e, a, now, &sil, &sil_end, &inh);
    if (r == 0 && (sil != 0 || inh != 0)) {
        r = al_history_add(
            e, a->id, now, "suppressed",
            json_pack("{s:s, s:I, s:I}", "kind", kname, sil != 0 ? "silence" : "inhibited_by",
                      (json_int_t)(sil != 0 ? sil : inh), "channels", (json_int_t)n));
        goto out;
    }
    channels = json_array();
    dids = json_array();
    if (r == 0 && (channels == NULL || dids == NULL))
        r = AL_DB_ENOMEM;
    for (size_t i = 0; r == 0 && i < n; i++) {
        r = write_delivery(e, names[i], kind, a->tier, &a->id, 1, now, uuid);
        if (r == 0 && (json_array_append_new(channels, json_string(names[i])) != 0 ||
                       json_array_append_new(dids, json_string(uuid)) != 0))
            r = AL_DB_ENOMEM;
    }
    if (r == 0)
        r = al_history_add(e, a->id, now, "notified",
                           json_pack("{s:s, s:s, s:O, s:O, s:i}", "kind", kname, "tier",
                                     al_tier_name(a->tier), "channels", channels, "delivery_ids",
                                     dids, "group_size", 1));
out:
    json_decref(channels);
    json_decref(dids);
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    return r;
}

int al_notify_resolved_locked(al_engine_t *e, al_alert_t *a, uint64_t now)
{
    return notify_told_channels(e, a, AL_NOTIFY_RESOLVED, now);
}

int al_notify_acked_locked(al_engine_t *e, al_alert_t *a, uint64_t now)
{
    return notify_told_channels(e, a, AL_NOTIFY_ACKNOWLEDGED, now);
}

/* Cancels pending deliveries of a firing kind that speak only about non-firing alerts. */
int al_cancel_pending_locked(al_engine_t *e, int64_t id, uint64_t now, int *cancelled)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_DLV_CANCEL_FOR_ALERT);
    int r;

    sqlite3_bind_int64(st, 1, id);
    al_bind_time(st, 2, now);
    r = al_stmt_run(st);
    *cancelled = r == 0 ? sqlite3_changes(e->conn) : 0;
    return r;
}
