/*
 * external.c - POST /api/v1/alerts bodies: the generic shape and Alertmanager's webhook v4.
 *
 * Generic (SPEC section 5):
 *   {"summary": "...", "tier": "P1", "labels": {...}, "dedup_key": "...", "status": "resolved"}
 * Alertmanager webhook v4 (so a `webhook_config` can point at Breakwater):
 *   {"version": "4", "status": "...", "alerts": [{"status": "firing"|"resolved", "labels": {...},
 *    "annotations": {"summary": ...}, "startsAt": ..., "fingerprint": ...}, ...], ...}
 *
 * Tier: the `tier` field (generic only), else label `tier` (P0/P1/P2), else label `severity`
 * (critical -> P0, error/warning -> P1, anything else -> P2), else P2; a tier the config does not
 * define becomes the nearest defined one (more urgent first). Event name: label `alertname`, else
 * "external" (generic) / "alertmanager". dedup_key: the given one, else event{labels} without
 * alertname, so Alertmanager's repeated notifications for one alert update one Breakwater alert
 * and its resolved notification resolves it.
 *
 * Validation happens here, before anything is stored: a bad body is refused as a whole
 * (AL_EBADINPUT with a reason), never half-applied. Pure: no I/O.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "alerts_int.h"

#define DEDUP_KEY_MAX 1024

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

void al_ext_dispose(al_ext_alert_t *x)
{
    if (x == NULL)
        return;
    free(x->event);
    free(x->dedup_key);
    free(x->summary);
    json_decref(x->labels);
    memset(x, 0, sizeof(*x));
}

static int tier_text(const char *s)
{
    if (s != NULL && (s[0] == 'P' || s[0] == 'p') && s[1] >= '0' && s[1] <= '2' && s[2] == '\0')
        return s[1] - '0';
    return -1;
}

static int tier_from_labels(json_t *labels)
{
    const char *sev = json_string_value(json_object_get(labels, "severity"));
    int t = tier_text(json_string_value(json_object_get(labels, "tier")));

    if (t >= 0)
        return t;
    if (sev == NULL)
        return GW_TIER_P2;
    if (strcasecmp(sev, "critical") == 0)
        return GW_TIER_P0;
    if (strcasecmp(sev, "error") == 0 || strcasecmp(sev, "warning") == 0)
        return GW_TIER_P1;
    return GW_TIER_P2;
}

/* Fills the parts both shapes share, from labels (stolen) and the chosen tier. */
static int finish(const gw_alerts_config_t *cfg, al_ext_alert_t *x, json_t *labels,
                  const char *event_default, int tier, const char *key, char *err, size_t errlen)
{
    const char *name = json_string_value(json_object_get(labels, "alertname"));

    x->labels = labels;
    x->tier = al_tier_defined(cfg, tier);
    if (x->tier < 0) {
        set_err(err, errlen, "no alert tier is defined");
        return AL_EBADINPUT;
    }
    x->event = strdup(name != NULL && name[0] != '\0' ? name : event_default);
    x->dedup_key =
        key != NULL ? strdup(key) : al_dedup_key(x->event ? x->event : "", labels, "alertname");
    if (x->event == NULL || x->dedup_key == NULL)
        return AL_DB_ENOMEM;
    if (strlen(x->event) > AL_LABEL_VALUE_MAX) {
        set_err(err, errlen, "alertname longer than %d bytes", AL_LABEL_VALUE_MAX);
        return AL_EBADINPUT;
    }
    return 0;
}

static int labels_of(json_t *o, json_t **out, char *err, size_t errlen)
{
    json_t *labels = json_object_get(o, "labels");
    int r;

    *out = NULL;
    if (labels == NULL) {
        *out = json_object();
        return *out != NULL ? 0 : AL_DB_ENOMEM;
    }
    r = al_labels_check(labels, err, errlen);
    if (r != 0)
        return r;
    *out = json_deep_copy(labels);
    return *out != NULL ? 0 : AL_DB_ENOMEM;
}

static int status_of(json_t *o, bool *resolved, char *err, size_t errlen)
{
    json_t *v = json_object_get(o, "status");
    const char *s = json_string_value(v);

    *resolved = false;
    if (v == NULL)
        return 0;
    if (s != NULL && strcmp(s, "firing") == 0)
        return 0;
    if (s != NULL && strcmp(s, "resolved") == 0) {
        *resolved = true;
        return 0;
    }
    set_err(err, errlen, "status must be \"firing\" or \"resolved\"");
    return AL_EBADINPUT;
}

static int parse_generic(const gw_alerts_config_t *cfg, json_t *root, al_ext_alert_t *x, char *err,
                         size_t errlen)
{
    json_t *tier = json_object_get(root, "tier"), *key = json_object_get(root, "dedup_key");
    const char *summary = json_string_value(json_object_get(root, "summary"));
    json_t *labels = NULL;
    int t, r;

    r = status_of(root, &x->resolved, err, errlen);
    if (r == 0)
        r = labels_of(root, &labels, err, errlen);
    if (r != 0)
        return r;
    if (!x->resolved && (summary == NULL || summary[0] == '\0')) {
        set_err(err, errlen, "\"summary\" (a non-empty string) is required");
        json_decref(labels);
        return AL_EBADINPUT;
    }
    if (key != NULL && (!json_is_string(key) || json_string_length(key) == 0 ||
                        json_string_length(key) > DEDUP_KEY_MAX)) {
        set_err(err, errlen, "dedup_key must be a string of 1 to %d bytes", DEDUP_KEY_MAX);
        json_decref(labels);
        return AL_EBADINPUT;
    }
    t = tier != NULL ? tier_text(json_string_value(tier)) : tier_from_labels(labels);
    if (t < 0) {
        set_err(err, errlen, "tier must be \"P0\", \"P1\" or \"P2\"");
        json_decref(labels);
        return AL_EBADINPUT;
    }
    if (summary != NULL && (x->summary = strndup(summary, AL_SUMMARY_MAX)) == NULL) {
        json_decref(labels);
        return AL_DB_ENOMEM;
    }
    return finish(cfg, x, labels, "external", t, json_string_value(key), err, errlen);
}

static const char *annotation(json_t *a)
{
    static const char *const names[] = {"summary", "description", "message"};
    json_t *ann = json_object_get(a, "annotations");

    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const char *s = json_string_value(json_object_get(ann, names[i]));
        if (s != NULL && s[0] != '\0')
            return s;
    }
    return NULL;
}

static int parse_am_alert(const gw_alerts_config_t *cfg, json_t *a, al_ext_alert_t *x, char *err,
                          size_t errlen)
{
    json_t *labels = NULL;
    const char *summary;
    int r;

    if (!json_is_object(a)) {
        set_err(err, errlen, "each entry of \"alerts\" must be an object");
        return AL_EBADINPUT;
    }
    r = status_of(a, &x->resolved, err, errlen);
    if (r == 0)
        r = labels_of(a, &labels, err, errlen);
    if (r != 0)
        return r;
    r = finish(cfg, x, labels, "alertmanager", tier_from_labels(labels), NULL, err, errlen);
    if (r != 0)
        return r;
    summary = annotation(a);
    x->summary = summary != NULL ? strndup(summary, AL_SUMMARY_MAX) : strdup(x->dedup_key);
    return x->summary != NULL ? 0 : AL_DB_ENOMEM;
}

static int parse_am(const gw_alerts_config_t *cfg, json_t *root, json_t *alerts,
                    al_ext_alert_t *out, size_t *n, char *err, size_t errlen)
{
    const char *version = json_string_value(json_object_get(root, "version"));
    size_t count = json_array_size(alerts);
    int r = 0;

    if (json_object_get(root, "version") != NULL && (version == NULL || strcmp(version, "4"))) {
        set_err(err, errlen, "unsupported Alertmanager webhook version (want \"4\")");
        return AL_EBADINPUT;
    }
    if (count > AL_EXTERNAL_MAX) {
        set_err(err, errlen, "at most %d alerts per body", AL_EXTERNAL_MAX);
        return AL_EBADINPUT;
    }
    for (size_t i = 0; r == 0 && i < count; i++) {
        r = parse_am_alert(cfg, json_array_get(alerts, i), &out[i], err, errlen);
        *n = i + 1;
    }
    return r;
}

int al_external_parse(const gw_alerts_config_t *cfg, const char *body, size_t len,
                      al_ext_alert_t *out, size_t *n, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root, *alerts;
    int r;

    *n = 0;
    set_err(err, errlen, "%s", "");
    if (len > AL_BODY_MAX) {
        set_err(err, errlen, "body larger than %d bytes", AL_BODY_MAX);
        return AL_EBADINPUT;
    }
    root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(root)) {
        set_err(err, errlen, "body must be a JSON object%s%s", root == NULL ? ": " : "",
                root == NULL ? jerr.text : "");
        json_decref(root);
        return AL_EBADINPUT;
    }
    alerts = json_object_get(root, "alerts");
    if (alerts != NULL && !json_is_array(alerts)) {
        set_err(err, errlen, "\"alerts\" must be an array (Alertmanager webhook v4)");
        r = AL_EBADINPUT;
    } else if (alerts != NULL) {
        r = parse_am(cfg, root, alerts, out, n, err, errlen);
    } else {
        *n = 1;
        r = parse_generic(cfg, root, &out[0], err, errlen);
    }
    json_decref(root);
    if (r != 0) {
        for (size_t i = 0; i < *n; i++)
            al_ext_dispose(&out[i]);
        *n = 0;
    }
    return r;
}
