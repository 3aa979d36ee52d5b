/*
 * rules.c - which alert an event concerns, what it does to it, and the text people read.
 *
 * Events come from the events channel (gateway/owner.c, gateway/supervisor.c, gateway/proxy.c)
 * with a kind and a JSON object of fields. The table below maps each kind to an action on one
 * alert, named by the event that raises it and the labels that identify it:
 *
 *   kind                       action  alert             labels           clears by itself
 *   breaker_open               raise   breaker_open      upstream         breaker_closed
 *   breaker_half_open          note    breaker_open      upstream
 *   breaker_forced_open/closed note    breaker_open      upstream         (operator actions)
 *   breaker_closed             clear   breaker_open      upstream
 *   host_down                  raise   host_down         upstream, host   host_up
 *   host_ejected/host_restored note    host_down         upstream, host
 *   host_up                    clear   host_down         upstream, host
 *   no_healthy_hosts           raise   no_healthy_hosts  upstream         no_healthy_hosts_cleared
 *   no_healthy_hosts_cleared   clear   no_healthy_hosts  upstream
 *   worker_crash               raise   worker_crash      worker           quiet period
 *   worker_stall               raise   worker_stall      worker           quiet period
 *   crash_loop                 raise   crash_loop        -                quiet period
 *   handler_fault              raise   handler_fault     route            quiet period
 *   rate_limited               raise   rate_limited      route            rate_limited_cleared
 *   rate_limited_cleared       clear   rate_limited      route
 *   delivery_failing           raise   delivery_failing  channel          (engine: a success)
 *   delivery_failing_cleared   clear   delivery_failing  channel          (engine only)
 *   alert_store_degraded       raise   alert_store_...   -                alert_store_recovered
 *   alert_store_recovered      clear   alert_store_...   -                (control process only)
 *
 * A raise whose rule is absent or "off" becomes a note (lineage on an existing alert only). A
 * clear always resolves: a condition that ended is good news whatever the rules say now.
 * rate_limited may carry "ratio" (rejected share, 0..1) and "held_ms" (how long it has held): a
 * ratio under the rule's ratio clears the alert ("ratio back under"); a hold shorter than the
 * rule's `for` is only a note. Everything else (reload, reload_failed, ...) is ignored here: it is
 * in the audit trail already.
 *
 * Pure functions over jansson values: no I/O, no clock.
 */
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alerts_int.h"

typedef void (*summary_fn)(json_t *f, json_t *labels, char *out, size_t cap);

typedef struct mapping {
    const char *kind;
    al_action_t action;
    gw_event_kind_t rule;
    const char *event;
    const char *labels[2];
    bool auto_resolve;
    summary_fn summary;
} mapping_t;

static const char *lab(json_t *labels, const char *name)
{
    const char *s = json_string_value(json_object_get(labels, name));
    return s != NULL ? s : "?";
}

static long long num(json_t *f, const char *name, long long dflt)
{
    json_t *v = json_object_get(f, name);

    if (json_is_integer(v))
        return (long long)json_integer_value(v);
    if (json_is_real(v))
        return (long long)json_real_value(v);
    return dflt;
}

static double real(json_t *f, const char *name, double dflt)
{
    json_t *v = json_object_get(f, name);

    return json_is_number(v) ? json_number_value(v) : dflt;
}

static const char *str(json_t *f, const char *name)
{
    return json_string_value(json_object_get(f, name));
}

/* Appends to out (always NUL-terminated, cut at cap). */
static void cat(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void cat(char *out, size_t cap, const char *fmt, ...)
{
    size_t used = strnlen(out, cap);
    va_list ap;

    if (used + 1 >= cap)
        return;
    va_start(ap, fmt);
    vsnprintf(out + used, cap - used, fmt, ap);
    va_end(ap);
}

static void sum_breaker(json_t *f, json_t *labels, char *out, size_t cap)
{
    const char *reason = str(f, "reason");
    json_t *w = json_object_get(f, "window");
    long long calls = num(w, "calls", 0);

    snprintf(out, cap, "Circuit breaker for upstream '%s' ", lab(labels, "upstream"));
    if (reason == NULL)
        cat(out, cap, "opened");
    else if (strcmp(reason, "consecutive_failures") == 0)
        cat(out, cap, "opened: %lld consecutive failures", num(w, "consecutive_failures", 0));
    else if (strcmp(reason, "failure_rate") == 0)
        cat(out, cap, "opened: failure rate %.0f%% over %lld calls",
            real(w, "failure_rate", 0) * 100.0, calls);
    else if (strcmp(reason, "slow_call_rate") == 0)
        cat(out, cap, "opened: %lld of %lld calls slower than the limit", num(w, "slow", 0), calls);
    else if (strcmp(reason, "trial_failed") == 0)
        cat(out, cap, "re-opened: a trial request failed");
    else if (strcmp(reason, "probe_timeout") == 0)
        cat(out, cap, "re-opened: the trial requests timed out");
    else
        cat(out, cap, "opened (%s)", reason);
}

static void sum_host_down(json_t *f, json_t *labels, char *out, size_t cap)
{
    (void)f;
    snprintf(out, cap, "Host %s of upstream '%s' is down: its health checks fail",
             lab(labels, "host"), lab(labels, "upstream"));
}

static void sum_no_hosts(json_t *f, json_t *labels, char *out, size_t cap)
{
    snprintf(out, cap, "Upstream '%s' has no usable host: %lld of %lld down, %lld ejected",
             lab(labels, "upstream"), num(f, "hosts_down", 0), num(f, "hosts", 0),
             num(f, "hosts_ejected", 0));
}

static void sum_crash(json_t *f, json_t *labels, char *out, size_t cap)
{
    long long sig = num(f, "signal", 0);
    const char *route = str(f, "route"), *rid = str(f, "request_id");

    if (sig != 0)
        snprintf(out, cap, "Worker %s crashed with SIG%s (signal %lld)", lab(labels, "worker"),
                 str(f, "signal_name") != NULL ? str(f, "signal_name") : "?", sig);
    else
        snprintf(out, cap, "Worker %s exited with code %lld", lab(labels, "worker"),
                 num(f, "exit_code", -1));
    if (route != NULL)
        cat(out, cap, " on route '%s'", route);
    if (rid != NULL)
        cat(out, cap, ", request %s", rid);
    cat(out, cap, "; replaced");
}

static void sum_stall(json_t *f, json_t *labels, char *out, size_t cap)
{
    snprintf(out, cap,
             "Worker %s stalled: its event loop was blocked for %lld ms (limit %lld ms); "
             "killed and replaced",
             lab(labels, "worker"), num(f, "blocked_ms", 0), num(f, "stall_after_ms", 0));
}

static void sum_crash_loop(json_t *f, json_t *labels, char *out, size_t cap)
{
    (void)labels;
    snprintf(out, cap, "Crash loop: %lld worker crashes within %lld s; respawns delayed by %lld ms",
             num(f, "crashes", 0), num(f, "window_ms", 0) / 1000, num(f, "respawn_delay_ms", 0));
}

static void sum_fault(json_t *f, json_t *labels, char *out, size_t cap)
{
    const char *rid = str(f, "request_id"), *err = str(f, "error");

    snprintf(out, cap, "Handler fault on route %s: %s", lab(labels, "route"),
             err != NULL ? err : "internal error");
    if (rid != NULL)
        cat(out, cap, " (request %s)", rid);
}

static void sum_rate(json_t *f, json_t *labels, char *out, size_t cap)
{
    double ratio = real(f, "ratio", -1);

    if (ratio >= 0)
        snprintf(out, cap, "Route '%s' is rejecting %.0f%% of its requests (rate limit)",
                 lab(labels, "route"), ratio * 100.0);
    else
        snprintf(out, cap, "Route '%s' is rejecting requests (rate limit)", lab(labels, "route"));
}

static void sum_delivery(json_t *f, json_t *labels, char *out, size_t cap)
{
    const char *err = str(f, "error");
    long long code = num(f, "http_status", 0);

    snprintf(out, cap, "Alert deliveries to channel '%s' are failing", lab(labels, "channel"));
    if (code > 0)
        cat(out, cap, ": HTTP %lld", code);
    if (err != NULL)
        cat(out, cap, "%s%s", code > 0 ? ", " : ": ", err);
    cat(out, cap, " (%lld attempts)", num(f, "attempts", 0));
}

static void sum_store(json_t *f, json_t *labels, char *out, size_t cap)
{
    const char *err = str(f, "error");

    (void)labels;
    snprintf(out, cap, "Alert store (SQLite) unavailable for %lld s: %s",
             num(f, "for_ms", 0) / 1000, err != NULL ? err : "store error");
    cat(out, cap, "; %lld inputs held in memory, %lld dropped", num(f, "held", 0),
        num(f, "dropped", 0));
}

#define UP                                                                                         \
    {                                                                                              \
        "upstream", NULL                                                                           \
    }
#define UH                                                                                         \
    {                                                                                              \
        "upstream", "host"                                                                         \
    }
static const mapping_t mappings[] = {
    {"breaker_open", AL_ACT_RAISE, GW_EVENT_BREAKER_OPEN, "breaker_open", UP, false, sum_breaker},
    {"breaker_half_open", AL_ACT_NOTE, GW_EVENT_BREAKER_OPEN, "breaker_open", UP, false, NULL},
    {"breaker_forced_open", AL_ACT_NOTE, GW_EVENT_BREAKER_OPEN, "breaker_open", UP, false, NULL},
    {"breaker_forced_closed", AL_ACT_NOTE, GW_EVENT_BREAKER_OPEN, "breaker_open", UP, false, NULL},
    {"breaker_override", AL_ACT_NOTE, GW_EVENT_BREAKER_OPEN, "breaker_open", UP, false, NULL},
    {"breaker_closed", AL_ACT_CLEAR, GW_EVENT_BREAKER_OPEN, "breaker_open", UP, false, NULL},
    {"host_down", AL_ACT_RAISE, GW_EVENT_HOST_DOWN, "host_down", UH, false, sum_host_down},
    {"host_ejected", AL_ACT_NOTE, GW_EVENT_HOST_DOWN, "host_down", UH, false, NULL},
    {"host_restored", AL_ACT_NOTE, GW_EVENT_HOST_DOWN, "host_down", UH, false, NULL},
    {"host_up", AL_ACT_CLEAR, GW_EVENT_HOST_DOWN, "host_down", UH, false, NULL},
    {"no_healthy_hosts", AL_ACT_RAISE, GW_EVENT_NO_HEALTHY_HOSTS, "no_healthy_hosts", UP, false,
     sum_no_hosts},
    {"no_healthy_hosts_cleared", AL_ACT_CLEAR, GW_EVENT_NO_HEALTHY_HOSTS, "no_healthy_hosts", UP,
     false, NULL},
    {"worker_crash",
     AL_ACT_RAISE,
     GW_EVENT_WORKER_CRASH,
     "worker_crash",
     {"worker", NULL},
     true,
     sum_crash},
    {"worker_stall",
     AL_ACT_RAISE,
     GW_EVENT_WORKER_STALL,
     "worker_stall",
     {"worker", NULL},
     true,
     sum_stall},
    {"crash_loop",
     AL_ACT_RAISE,
     GW_EVENT_CRASH_LOOP,
     "crash_loop",
     {NULL, NULL},
     true,
     sum_crash_loop},
    {"handler_fault",
     AL_ACT_RAISE,
     GW_EVENT_HANDLER_FAULT,
     "handler_fault",
     {"route", NULL},
     true,
     sum_fault},
    {"rate_limited",
     AL_ACT_RAISE,
     GW_EVENT_RATE_LIMITED,
     "rate_limited",
     {"route", NULL},
     false,
     sum_rate},
    {"rate_limited_cleared",
     AL_ACT_CLEAR,
     GW_EVENT_RATE_LIMITED,
     "rate_limited",
     {"route", NULL},
     false,
     NULL},
    {"delivery_failing",
     AL_ACT_RAISE,
     GW_EVENT_DELIVERY_FAILING,
     "delivery_failing",
     {"channel", NULL},
     false,
     sum_delivery},
    {"delivery_failing_cleared",
     AL_ACT_CLEAR,
     GW_EVENT_DELIVERY_FAILING,
     "delivery_failing",
     {"channel", NULL},
     false,
     NULL},
    {"alert_store_degraded",
     AL_ACT_RAISE,
     GW_EVENT_STORE_DEGRADED,
     "alert_store_degraded",
     {NULL, NULL},
     false,
     sum_store},
    {"alert_store_recovered",
     AL_ACT_CLEAR,
     GW_EVENT_STORE_DEGRADED,
     "alert_store_degraded",
     {NULL, NULL},
     false,
     NULL},
};
#undef UP
#undef UH

/* The label value of an event field: strings as they are, integers in decimal. */
static json_t *label_value(json_t *f, const char *name, int32_t worker)
{
    json_t *v = json_object_get(f, name);
    char buf[32];

    if (json_is_string(v))
        return json_string_length(v) <= AL_LABEL_VALUE_MAX ? json_copy(v) : NULL;
    if (json_is_integer(v)) {
        snprintf(buf, sizeof(buf), "%lld", (long long)json_integer_value(v));
        return json_string(buf);
    }
    if (v == NULL && strcmp(name, "worker") == 0 && worker >= 0) {
        snprintf(buf, sizeof(buf), "%d", (int)worker);
        return json_string(buf);
    }
    return NULL;
}

static void rate_limited_checks(const gw_rule_config_t *rule, json_t *f, al_intent_t *out)
{
    json_t *ratio = json_object_get(f, "ratio"), *held = json_object_get(f, "held_ms");

    if (rule->ratio_ppm > 0 && json_is_number(ratio) &&
        json_number_value(ratio) * GW_PPM_ONE < (double)rule->ratio_ppm) {
        out->action = AL_ACT_CLEAR; /* the ratio is back under the rule's */
        return;
    }
    if (rule->for_ms > 0 && json_is_integer(held) && json_integer_value(held) >= 0 &&
        (uint64_t)json_integer_value(held) < rule->for_ms)
        out->action = AL_ACT_NOTE; /* not held long enough yet */
}

bool al_rules_concern(const char *kind)
{
    for (size_t i = 0; kind != NULL && i < sizeof(mappings) / sizeof(mappings[0]); i++)
        if (strcmp(kind, mappings[i].kind) == 0)
            return true;
    return false;
}

int al_rules_map(const gw_alerts_config_t *cfg, const char *kind, int32_t worker, json_t *fields,
                 al_intent_t *out)
{
    const mapping_t *m = NULL;

    memset(out, 0, sizeof(*out));
    for (size_t i = 0; kind != NULL && i < sizeof(mappings) / sizeof(mappings[0]); i++)
        if (strcmp(kind, mappings[i].kind) == 0)
            m = &mappings[i];
    if (m == NULL)
        return 0; /* AL_ACT_IGNORE */
    out->labels = json_object();
    if (out->labels == NULL)
        return AL_DB_ENOMEM;
    for (int i = 0; i < 2 && m->labels[i] != NULL; i++) {
        json_t *v = label_value(fields, m->labels[i], worker);
        if (v == NULL || json_object_set_new(out->labels, m->labels[i], v) != 0) {
            al_intent_dispose(out);
            return AL_EBADINPUT;
        }
    }
    out->action = m->action;
    out->rule = m->rule;
    out->event = m->event;
    out->auto_resolve = m->auto_resolve;
    if (m->action == AL_ACT_RAISE) {
        const gw_rule_config_t *rule = &cfg->rules[m->rule];
        if (!rule->defined)
            out->action = AL_ACT_NOTE;
        else if (m->rule == GW_EVENT_RATE_LIMITED)
            rate_limited_checks(rule, fields, out);
    }
    if (m->summary != NULL)
        m->summary(fields, out->labels, out->summary, sizeof(out->summary));
    return 0;
}

void al_intent_dispose(al_intent_t *in)
{
    if (in == NULL)
        return;
    json_decref(in->labels);
    in->labels = NULL;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Appends s to the growing buffer, escaping \ " and newlines. */
static int put(char **buf, size_t *len, size_t *cap, const char *s, bool escape)
{
    for (; *s != '\0'; s++) {
        const char *piece = NULL;
        char one[2] = {*s, '\0'};
        if (escape && *s == '\\')
            piece = "\\\\";
        else if (escape && *s == '"')
            piece = "\\\"";
        else if (escape && *s == '\n')
            piece = "\\n";
        else
            piece = one;
        size_t n = strlen(piece);
        if (*len + n + 1 > *cap) {
            size_t ncap = (*cap + n + 1) * 2;
            char *p = realloc(*buf, ncap);
            if (p == NULL)
                return -1;
            *buf = p;
            *cap = ncap;
        }
        memcpy(*buf + *len, piece, n);
        *len += n;
        (*buf)[*len] = '\0';
    }
    return 0;
}

char *al_dedup_key(const char *event, json_t *labels, const char *skip)
{
    const char *keys[AL_LABELS_MAX] = {NULL};
    size_t n = 0, len = 0, cap = 0;
    const char *k;
    json_t *v;
    char *buf = NULL;
    int bad = 0;

    json_object_foreach(labels, k, v)
    {
        if (n < AL_LABELS_MAX && (skip == NULL || strcmp(k, skip) != 0))
            keys[n++] = k;
    }
    qsort(keys, n, sizeof(keys[0]), cmp_str);
    bad |= put(&buf, &len, &cap, event, false);
    for (size_t i = 0; i < n; i++) {
        bad |= put(&buf, &len, &cap, i == 0 ? "{" : ",", false);
        bad |= put(&buf, &len, &cap, keys[i], false);
        bad |= put(&buf, &len, &cap, "=\"", false);
        v = json_object_get(labels, keys[i]);
        bad |= put(&buf, &len, &cap, json_is_string(v) ? json_string_value(v) : "", true);
        bad |= put(&buf, &len, &cap, "\"", false);
    }
    if (n > 0)
        bad |= put(&buf, &len, &cap, "}", false);
    if (bad) {
        free(buf);
        return NULL;
    }
    return buf;
}

static bool label_name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > AL_LABEL_NAME_MAX || !(isalpha((unsigned char)s[0]) || s[0] == '_'))
        return false;
    for (size_t i = 1; i < n; i++)
        if (!(isalnum((unsigned char)s[i]) || s[i] == '_'))
            return false;
    return true;
}

int al_labels_check(json_t *labels, char *err, size_t errlen)
{
    const char *k;
    json_t *v;

    if (!json_is_object(labels)) {
        snprintf(err, errlen, "labels must be an object of strings");
        return AL_EBADINPUT;
    }
    if (json_object_size(labels) > AL_LABELS_MAX) {
        snprintf(err, errlen, "at most %d labels", AL_LABELS_MAX);
        return AL_EBADINPUT;
    }
    json_object_foreach(labels, k, v)
    {
        if (!label_name_ok(k)) {
            snprintf(err, errlen, "label name '%.64s' is not valid ([A-Za-z_][A-Za-z0-9_]*)", k);
            return AL_EBADINPUT;
        }
        if (!json_is_string(v) || json_string_length(v) > AL_LABEL_VALUE_MAX ||
            strlen(json_string_value(v)) != json_string_length(v)) {
            snprintf(err, errlen, "label '%.64s' must be a string of at most %d bytes", k,
                     AL_LABEL_VALUE_MAX);
            return AL_EBADINPUT;
        }
    }
    return 0;
}

int al_tier_defined(const gw_alerts_config_t *cfg, int t)
{
    if (t < 0 || t >= GW_TIER_COUNT)
        return -1;
    if (cfg->tiers[t].defined)
        return t;
    for (int u = t - 1; u >= 0; u--)
        if (cfg->tiers[u].defined)
            return u;
    for (int u = t + 1; u < GW_TIER_COUNT; u++)
        if (cfg->tiers[u].defined)
            return u;
    return -1;
}
