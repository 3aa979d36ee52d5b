/*
 * silence.c - silences: label matchers (parsing, matching) and the silences table.
 *
 * A silence is a set of matchers and a time range [starts_at, ends_at). While it is active, a
 * notification for an alert whose labels match every matcher is not delivered: engine.c records it
 * in the alert's lineage ("suppressed") and keeps it owed until ends_at, when it is re-checked (and
 * delivered if nothing else mutes it). Expiring a silence early (DELETE) wakes those alerts at
 * once.
 *
 * Matchers: NAME="value" (equal), NAME!="value", NAME=~"regex", NAME!~"regex", the same four
 * operators as Alertmanager. A label the alert lacks reads as "". Regexes are POSIX extended
 * (regcomp), anchored at both ends like Prometheus', at most AL_REGEX_MAX bytes, compiled once when
 * the silence is loaded. Alerts are matched on their labels plus `alertname` (the event, unless a
 * label says otherwise) and `tier` (the current tier). A silence needs at least one matcher that
 * does not match the empty string, so a typo cannot silence everything.
 *
 * Bounds: AL_MATCHERS_MAX matchers per silence; AL_SILENCES_MAX silences not yet ended (creating
 * more fails with AL_ELIMIT); the cache of compiled silences is rebuilt only after a change.
 */
#include <ctype.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alerts_int.h"

#define CREATED_BY_MAX 256
#define COMMENT_MAX 1024
#define LIST_MAX 1000

enum { OP_EQ = 0, OP_NE, OP_RE, OP_NRE };
static const char *const op_text[] = {"=", "!=", "=~", "!~"};

typedef struct matcher {
    char *name, *value, *text;
    int op;
    regex_t re;
    bool compiled;
} matcher_t;

struct al_matchers {
    size_t n;
    matcher_t m[AL_MATCHERS_MAX];
};

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

void al_matchers_free(al_matchers_t *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->n; i++) {
        free(m->m[i].name);
        free(m->m[i].value);
        free(m->m[i].text);
        if (m->m[i].compiled)
            regfree(&m->m[i].re);
    }
    free(m);
}

size_t al_matchers_count(const al_matchers_t *m)
{
    return m != NULL ? m->n : 0;
}

const char *al_matchers_text(const al_matchers_t *m, size_t i)
{
    return m != NULL && i < m->n ? m->m[i].text : NULL;
}

/* Writes `"value"` with \\ \" \n escapes into out (cap bytes); false when it does not fit. */
static bool quote(const char *v, char *out, size_t cap)
{
    size_t j = 0;

    if (cap < 3)
        return false;
    out[j++] = '"';
    for (; *v != '\0'; v++) {
        const char *piece = *v == '\\' ? "\\\\" : *v == '"' ? "\\\"" : *v == '\n' ? "\\n" : NULL;
        size_t n = piece != NULL ? 2 : 1;
        if (j + n + 2 > cap)
            return false;
        if (piece != NULL)
            memcpy(out + j, piece, 2);
        else
            out[j] = *v;
        j += n;
    }
    out[j++] = '"';
    out[j] = '\0';
    return true;
}

/* Reads a double-quoted value at *p (past the opening quote) into out; *p ends past the closing
 * quote. */
static bool unquote(const char **p, char *out, size_t cap)
{
    const char *s = *p;
    size_t j = 0;

    for (; *s != '"'; s++) {
        char c = *s;
        if (c == '\0')
            return false;
        if (c == '\\') {
            s++;
            c = *s == 'n' ? '\n' : *s;
            if (c != '\n' && c != '"' && c != '\\')
                return false;
        }
        if (j + 1 >= cap)
            return false;
        out[j++] = c;
    }
    out[j] = '\0';
    *p = s + 1;
    return true;
}

static bool bare_char_ok(char c)
{
    return c != '\0' && !isspace((unsigned char)c) && strchr("\"',{}", c) == NULL;
}

static int parse_one(const char *text, matcher_t *m, char *err, size_t errlen)
{
    char value[AL_LABEL_VALUE_MAX + 1], canon[AL_LABEL_NAME_MAX + 4 + 2 * AL_LABEL_VALUE_MAX + 3];
    const char *p = text, *name;
    size_t nlen;

    while (isspace((unsigned char)*p))
        p++;
    name = p;
    if (!(isalpha((unsigned char)*p) || *p == '_')) {
        set_err(err, errlen, "matcher '%.80s': expected a label name", text);
        return AL_EBADINPUT;
    }
    while (isalnum((unsigned char)*p) || *p == '_')
        p++;
    nlen = (size_t)(p - name);
    if (nlen > AL_LABEL_NAME_MAX) {
        set_err(err, errlen, "matcher '%.80s': label name too long", text);
        return AL_EBADINPUT;
    }
    while (isspace((unsigned char)*p))
        p++;
    if (p[0] == '=' && p[1] == '~')
        m->op = OP_RE;
    else if (p[0] == '!' && p[1] == '~')
        m->op = OP_NRE;
    else if (p[0] == '!' && p[1] == '=')
        m->op = OP_NE;
    else if (p[0] == '=')
        m->op = OP_EQ;
    else {
        set_err(err, errlen, "matcher '%.80s': expected =, !=, =~ or !~ after the name", text);
        return AL_EBADINPUT;
    }
    p += m->op == OP_EQ ? 1 : 2;
    while (isspace((unsigned char)*p))
        p++;
    if (*p == '"') {
        p++;
        if (!unquote(&p, value, sizeof(value))) {
            set_err(err, errlen,
                    "matcher '%.80s': unterminated or bad quoted value (escapes: \\\" \\\\ \\n; "
                    "at most %d bytes)",
                    text, AL_LABEL_VALUE_MAX);
            return AL_EBADINPUT;
        }
    } else {
        size_t vlen = 0;
        while (vlen < AL_LABEL_VALUE_MAX && bare_char_ok(p[vlen]))
            vlen++;
        memcpy(value, p, vlen);
        value[vlen] = '\0';
        p += vlen;
    }
    while (isspace((unsigned char)*p))
        p++;
    if (*p != '\0') {
        set_err(err, errlen, "matcher '%.80s': unexpected text after the value (quote it)", text);
        return AL_EBADINPUT;
    }
    if ((m->op == OP_RE || m->op == OP_NRE) && strlen(value) > AL_REGEX_MAX) {
        set_err(err, errlen, "matcher '%.80s': regex longer than %d bytes", text, AL_REGEX_MAX);
        return AL_EBADINPUT;
    }
    m->name = strndup(name, nlen);
    m->value = strdup(value);
    if (m->name == NULL || m->value == NULL || !quote(value, canon, sizeof(canon)))
        return AL_DB_ENOMEM;
    if (asprintf(&m->text, "%s%s%s", m->name, op_text[m->op], canon) < 0) {
        m->text = NULL;
        return AL_DB_ENOMEM;
    }
    if (m->op == OP_RE || m->op == OP_NRE) {
        char anchored[AL_REGEX_MAX + 8];
        int rc;
        snprintf(anchored, sizeof(anchored), "^(%.*s)$", AL_REGEX_MAX, value);
        rc = regcomp(&m->re, anchored, REG_EXTENDED | REG_NOSUB);
        if (rc != 0) {
            char why[128];
            regerror(rc, &m->re, why, sizeof(why));
            set_err(err, errlen, "matcher '%.80s': bad regex: %s", text, why);
            return AL_EBADINPUT;
        }
        m->compiled = true;
    }
    return 0;
}

static bool match_one(const matcher_t *m, const char *v)
{
    switch (m->op) {
    case OP_EQ:
        return strcmp(v, m->value) == 0;
    case OP_NE:
        return strcmp(v, m->value) != 0;
    case OP_RE:
        return regexec(&m->re, v, 0, NULL, 0) == 0;
    default:
        return regexec(&m->re, v, 0, NULL, 0) != 0;
    }
}

int al_matchers_parse(const char *const *texts, size_t n, al_matchers_t **out, char *err,
                      size_t errlen)
{
    al_matchers_t *m;
    bool selective = false;
    int r = 0;

    *out = NULL;
    if (n == 0 || n > AL_MATCHERS_MAX) {
        set_err(err, errlen, "a silence needs 1 to %d matchers", AL_MATCHERS_MAX);
        return AL_EBADINPUT;
    }
    m = calloc(1, sizeof(*m));
    if (m == NULL)
        return AL_DB_ENOMEM;
    for (size_t i = 0; r == 0 && i < n; i++) {
        if (texts[i] == NULL) {
            set_err(err, errlen, "matcher %zu is missing", i);
            r = AL_EBADINPUT;
            break;
        }
        r = parse_one(texts[i], &m->m[i], err, errlen);
        m->n = i + 1; /* so that al_matchers_free() releases a half-built one */
        if (r == 0 && !match_one(&m->m[i], ""))
            selective = true;
    }
    if (r == 0 && !selective) {
        set_err(err, errlen,
                "every matcher matches the empty string: a silence needs at least one that "
                "selects something (e.g. upstream=\"users\")");
        r = AL_EBADINPUT;
    }
    if (r != 0) {
        al_matchers_free(m);
        return r;
    }
    *out = m;
    return 0;
}

bool al_matchers_match(const al_matchers_t *m, const al_label_t *labels, size_t n)
{
    if (m == NULL || m->n == 0)
        return false;
    for (size_t i = 0; i < m->n; i++) {
        const char *v = "";
        for (size_t j = 0; j < n; j++)
            if (strcmp(labels[j].name, m->m[i].name) == 0) {
                v = labels[j].value != NULL ? labels[j].value : "";
                break;
            }
        if (!match_one(&m->m[i], v))
            return false;
    }
    return true;
}

/* ---- the cache of compiled silences ---- */

void al_silence_cache_dispose(al_silence_cache_t *c)
{
    for (size_t i = 0; i < c->n; i++)
        al_matchers_free(c->v[i].matchers);
    free(c->v);
    c->v = NULL;
    c->n = 0;
    c->valid = false;
}

/* Parses a stored matchers column (a JSON array of matcher texts). NULL when unusable. */
static al_matchers_t *stored_matchers(const char *text)
{
    json_t *arr = json_loads(text, 0, NULL);
    al_matchers_t *m = NULL;
    size_t n = json_array_size(arr);

    if (json_is_array(arr) && n > 0 && n <= AL_MATCHERS_MAX) {
        const char *texts[AL_MATCHERS_MAX];
        for (size_t i = 0; i < n; i++)
            texts[i] = json_string_value(json_array_get(arr, i));
        if (al_matchers_parse(texts, n, &m, NULL, 0) != 0)
            m = NULL;
    }
    json_decref(arr);
    return m;
}

static int cache_load(al_engine_t *e, uint64_t now)
{
    al_silence_cache_t *c = &e->silences;
    sqlite3_stmt *st = al_stmt(e, AL_ST_SIL_ACTIVE);
    int rc, r = 0;

    al_silence_cache_dispose(c);
    c->v = calloc(AL_SILENCES_MAX, sizeof(*c->v));
    if (c->v == NULL)
        return AL_DB_ENOMEM;
    al_bind_time(st, 1, now);
    sqlite3_bind_int(st, 2, AL_SILENCES_MAX);
    while (c->n < AL_SILENCES_MAX && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        al_silence_entry_t *x = &c->v[c->n];
        x->matchers = stored_matchers((const char *)sqlite3_column_text(st, 1));
        if (x->matchers == NULL)
            continue; /* written by a newer binary with other syntax: never matches here */
        x->id = sqlite3_column_int64(st, 0);
        x->starts_at = al_col_time(st, 2);
        x->ends_at = al_col_time(st, 3);
        c->n++;
    }
    if (c->n < AL_SILENCES_MAX && rc != SQLITE_DONE)
        r = al_db_translate(rc);
    al_stmt_done(st);
    if (r != 0)
        al_silence_cache_dispose(c);
    else
        c->valid = true;
    return r;
}

int al_silence_find(al_engine_t *e, const al_label_t *labels, size_t n, uint64_t now, int64_t *id,
                    uint64_t *ends_at)
{
    int r;

    *id = 0;
    *ends_at = AL_NEVER;
    if (!e->silences.valid && (r = cache_load(e, now)) != 0)
        return r;
    for (size_t i = 0; i < e->silences.n; i++) {
        const al_silence_entry_t *x = &e->silences.v[i];
        if (x->starts_at > now || x->ends_at <= now)
            continue;
        if ((*id == 0 || x->ends_at > *ends_at) && al_matchers_match(x->matchers, labels, n)) {
            *id = x->id;
            *ends_at = x->ends_at;
        }
    }
    return 0;
}

/* ---- the silences table ---- */

int al_silence_create(al_engine_t *e, const al_silence_spec_t *spec, uint64_t now_ms, int64_t *id,
                      char *err, size_t errlen)
{
    al_matchers_t *m = NULL;
    json_t *arr = NULL;
    char *text = NULL;
    uint64_t starts;
    int64_t active = 0;
    int r;

    set_err(err, errlen, "%s", "");
    if (e == NULL || spec == NULL || id == NULL)
        return AL_DB_EINVAL;
    *id = 0;
    r = al_matchers_parse(spec->matchers, spec->nmatchers, &m, err, errlen);
    if (r != 0)
        return r;
    starts = spec->starts_at_ms != 0 ? spec->starts_at_ms : now_ms;
    if (spec->ends_at_ms <= now_ms || spec->ends_at_ms <= starts) {
        set_err(err, errlen, "ends_at must be later than now and than starts_at");
        r = AL_EBADINPUT;
    } else if ((spec->created_by && strlen(spec->created_by) > CREATED_BY_MAX) ||
               (spec->comment && strlen(spec->comment) > COMMENT_MAX)) {
        set_err(err, errlen, "created_by is limited to %d bytes, comment to %d", CREATED_BY_MAX,
                COMMENT_MAX);
        r = AL_EBADINPUT;
    }
    arr = json_array();
    for (size_t i = 0; r == 0 && i < m->n; i++)
        if (arr == NULL || json_array_append_new(arr, json_string(m->m[i].text)) != 0)
            r = AL_DB_ENOMEM;
    if (r == 0 && (text = json_dumps(arr, JSON_COMPACT)) == NULL)
        r = AL_DB_ENOMEM;
    json_decref(arr);
    al_matchers_free(m);
    if (r == 0)
        r = al_txn_begin(e);
    if (r != 0) {
        free(text);
        return r;
    }
    {
        sqlite3_stmt *st = al_stmt(e, AL_ST_SIL_COUNT_ACTIVE);
        al_bind_time(st, 1, now_ms);
        r = al_stmt_int(st, 0, &active);
    }
    if (r == 0 && active >= AL_SILENCES_MAX) {
        set_err(err, errlen, "at most %d silences may be pending or active", AL_SILENCES_MAX);
        r = AL_ELIMIT;
    }
    if (r == 0) {
        sqlite3_stmt *st = al_stmt(e, AL_ST_SIL_INSERT);
        al_bind_text(st, 1, text);
        al_bind_time(st, 2, starts);
        al_bind_time(st, 3, spec->ends_at_ms);
        al_bind_time(st, 4, now_ms);
        al_bind_text(st, 5, spec->created_by != NULL ? spec->created_by : "");
        al_bind_text(st, 6, spec->comment != NULL ? spec->comment : "");
        r = al_stmt_run(st);
    }
    if (r == 0) {
        *id = sqlite3_last_insert_rowid(e->conn);
        r = al_txn_commit(e);
    } else {
        al_txn_rollback(e);
    }
    if (r != 0)
        *id = 0;
    e->silences.valid = false;
    free(text);
    return r;
}

int al_silence_expire(al_engine_t *e, int64_t id, uint64_t now_ms)
{
    sqlite3_stmt *st;
    int64_t found = 0;
    int r;

    if (e == NULL)
        return AL_DB_EINVAL;
    r = al_txn_begin(e);
    if (r != 0)
        return r;
    st = al_stmt(e, AL_ST_SIL_GET);
    sqlite3_bind_int64(st, 1, id);
    r = al_stmt_int(st, 0, &found);
    if (r == 0 && found == 0)
        r = AL_ENOENT;
    if (r == 0) {
        st = al_stmt(e, AL_ST_SIL_EXPIRE);
        sqlite3_bind_int64(st, 1, id);
        al_bind_time(st, 2, now_ms);
        r = al_stmt_run(st);
    }
    if (r == 0 && sqlite3_changes(e->conn) > 0) {
        /* Alerts this silence held get their owed notification at the next tick. */
        st = al_stmt(e, AL_ST_ALERT_WAKE_SILENCED);
        sqlite3_bind_int64(st, 1, id);
        al_bind_time(st, 2, now_ms);
        r = al_stmt_run(st);
    }
    if (r == 0)
        r = al_txn_commit(e);
    else
        al_txn_rollback(e);
    e->silences.valid = false;
    return r;
}

/* ---- JSON ---- */

/* "2026-01-01T00:00:00Z", "...T00:00:00.250Z", "...T02:00:00+02:00" -> unix ms. */
static bool parse_rfc3339(const char *s, uint64_t *out)
{
    int y, mo, d, h, mi, sec, n = 0;
    long long frac = 0;
    struct tm tm = {0};
    long long offset = 0;
    time_t t;

    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &n) != 6 || n != 19)
        return false;
    s += n;
    if (*s == '.') {
        int frac_digits = 0;
        for (s++; isdigit((unsigned char)*s); s++, frac_digits++)
            if (frac_digits < 3)
                frac = frac * 10 + (*s - '0');
        if (frac_digits == 0)
            return false;
        for (int i = frac_digits; i < 3; i++)
            frac *= 10;
    }
    if (*s == 'Z' || *s == 'z') {
        s++;
    } else if (*s == '+' || *s == '-') {
        int oh, om;
        if (sscanf(s + 1, "%2d:%2d%n", &oh, &om, &n) != 2 || n != 5)
            return false;
        offset = (oh * 60LL + om) * 60 * (*s == '+' ? 1 : -1);
        s += 6;
    } else {
        return false;
    }
    if (*s != '\0' || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return false;
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    t = timegm(&tm);
    if (t == (time_t)-1 || (long long)t - offset < 0)
        return false;
    *out = (uint64_t)((long long)t - offset) * 1000 + (uint64_t)frac;
    return true;
}

/* "90s", "2h", "250ms", "1d" -> ms. */
static bool parse_duration(const char *s, uint64_t *out)
{
    static const struct {
        const char *unit;
        uint64_t ms;
    } units[] = {{"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}, {"d", 86400000}};
    uint64_t v = 0;
    const char *p = s;

    if (!isdigit((unsigned char)*p))
        return false;
    for (; isdigit((unsigned char)*p); p++) {
        if (v > UINT64_MAX / 10 / 86400000)
            return false;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++)
        if (strcmp(p, units[i].unit) == 0) {
            *out = v * units[i].ms;
            return v > 0;
        }
    return false;
}

static bool json_time(json_t *v, uint64_t *out)
{
    if (json_is_integer(v) && json_integer_value(v) > 0) {
        *out = (uint64_t)json_integer_value(v);
        return true;
    }
    return json_is_string(v) && parse_rfc3339(json_string_value(v), out);
}

static json_t *get2(json_t *o, const char *a, const char *b)
{
    json_t *v = json_object_get(o, a);
    return v != NULL ? v : json_object_get(o, b);
}

/* An Alertmanager-style {"name","value","isRegex","isEqual"} matcher as text. */
static char *object_matcher(json_t *o)
{
    const char *name = json_string_value(json_object_get(o, "name"));
    const char *value = json_string_value(json_object_get(o, "value"));
    json_t *eq = json_object_get(o, "isEqual");
    bool re = json_is_true(json_object_get(o, "isRegex"));
    bool equal = eq == NULL || json_is_true(eq);
    char *q, *text = NULL;
    size_t cap;

    if (name == NULL || value == NULL || strlen(value) > AL_LABEL_VALUE_MAX)
        return NULL;
    cap = 2 * strlen(value) + 3;
    q = malloc(cap);
    if (q != NULL && quote(value, q, cap) &&
        asprintf(&text, "%s%s%s", name, re ? (equal ? "=~" : "!~") : (equal ? "=" : "!="), q) < 0)
        text = NULL;
    free(q);
    return text;
}

static int spec_times(json_t *root, uint64_t now, al_silence_spec_t *spec, char *err, size_t errlen)
{
    json_t *starts = get2(root, "starts_at", "startsAt"), *ends = get2(root, "ends_at", "endsAt");
    json_t *dur = json_object_get(root, "duration");
    uint64_t d;

    if (starts != NULL && !json_time(starts, &spec->starts_at_ms)) {
        set_err(err, errlen, "starts_at must be an RFC 3339 time or unix milliseconds");
        return AL_EBADINPUT;
    }
    if ((ends != NULL) == (dur != NULL)) {
        set_err(err, errlen, "give exactly one of ends_at and duration");
        return AL_EBADINPUT;
    }
    if (ends != NULL && !json_time(ends, &spec->ends_at_ms)) {
        set_err(err, errlen, "ends_at must be an RFC 3339 time or unix milliseconds");
        return AL_EBADINPUT;
    }
    if (dur != NULL) {
        if (!json_is_string(dur) || !parse_duration(json_string_value(dur), &d)) {
            set_err(err, errlen, "duration must look like 90s, 30m, 2h or 1d");
            return AL_EBADINPUT;
        }
        spec->ends_at_ms = (spec->starts_at_ms != 0 ? spec->starts_at_ms : now) + d;
    }
    return 0;
}

int al_silence_create_json(al_engine_t *e, const char *body, size_t len, uint64_t now_ms,
                           int64_t *id, char *err, size_t errlen)
{
    char *texts[AL_MATCHERS_MAX] = {0};
    al_silence_spec_t spec = {0};
    json_t *root, *ms;
    size_t n = 0;
    int r = 0;

    set_err(err, errlen, "%s", "");
    if (id != NULL)
        *id = 0;
    if (e == NULL || body == NULL || id == NULL)
        return AL_DB_EINVAL;
    if (len > AL_BODY_MAX) {
        set_err(err, errlen, "body larger than %d bytes", AL_BODY_MAX);
        return AL_EBADINPUT;
    }
    root = json_loadb(body, len, JSON_REJECT_DUPLICATES, NULL);
    ms = json_object_get(root, "matchers");
    if (!json_is_object(root) || !json_is_array(ms) || json_array_size(ms) == 0 ||
        json_array_size(ms) > AL_MATCHERS_MAX) {
        set_err(err, errlen, "expected an object with \"matchers\": 1 to %d matchers",
                AL_MATCHERS_MAX);
        r = AL_EBADINPUT;
        goto out;
    }
    for (n = 0; n < json_array_size(ms); n++) {
        json_t *m = json_array_get(ms, n);
        texts[n] = json_is_string(m) ? strdup(json_string_value(m)) : object_matcher(m);
        if (texts[n] == NULL) {
            set_err(err, errlen,
                    "matcher %zu must be a string like upstream=\"users\" or an "
                    "object {name, value, isRegex, isEqual}",
                    n);
            r = AL_EBADINPUT;
            n++;
            goto out;
        }
    }
    r = spec_times(root, now_ms, &spec, err, errlen);
    if (r != 0)
        goto out;
    spec.matchers = (const char *const *)texts;
    spec.nmatchers = n;
    spec.created_by = json_string_value(get2(root, "created_by", "createdBy"));
    spec.comment = json_string_value(json_object_get(root, "comment"));
    r = al_silence_create(e, &spec, now_ms, id, err, errlen);
out:
    for (size_t i = 0; i < n; i++)
        free(texts[i]);
    json_decref(root);
    return r;
}

static json_t *silence_row_json(sqlite3_stmt *st, uint64_t now)
{
    uint64_t starts = al_col_time(st, 2), ends = al_col_time(st, 3);
    json_t *matchers = json_loads((const char *)sqlite3_column_text(st, 1), 0, NULL);
    char s[32], en[32], cr[32];

    al_fmt_time(starts, true, s);
    al_fmt_time(ends, true, en);
    al_fmt_time(al_col_time(st, 4), true, cr);
    return json_pack("{s:I, s:o, s:s, s:s, s:s, s:s, s:s, s:b, s:s}", "id",
                     (json_int_t)sqlite3_column_int64(st, 0), "matchers",
                     matchers != NULL ? matchers : json_array(), "starts_at", s, "ends_at", en,
                     "created_at", cr, "created_by", (const char *)sqlite3_column_text(st, 5),
                     "comment", (const char *)sqlite3_column_text(st, 6), "expired_early",
                     sqlite3_column_type(st, 7) != SQLITE_NULL, "state",
                     now < starts ? "pending"
                     : now < ends ? "active"
                                  : "expired");
}

int al_silences_json(al_engine_t *e, uint64_t now_ms, bool include_expired, char **out)
{
    sqlite3_stmt *st = al_stmt(e, AL_ST_SIL_LIST);
    json_t *list = json_array(), *root;
    int rc = SQLITE_DONE, r = 0;

    *out = NULL;
    al_bind_time(st, 1, now_ms);
    sqlite3_bind_int(st, 2, include_expired ? 1 : 0);
    sqlite3_bind_int(st, 3, LIST_MAX);
    while (list != NULL && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        json_t *x = silence_row_json(st, now_ms);
        if (x == NULL || json_array_append_new(list, x) != 0) {
            r = AL_DB_ENOMEM;
            break;
        }
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
    root = json_pack("{s:o}", "silences", list);
    *out = root != NULL ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return *out != NULL ? 0 : AL_DB_ENOMEM;
}
