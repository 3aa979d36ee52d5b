/*
 * state.c - the circuit breaker's state machine (owner side).
 *
 *                      consecutive_failures | failure_rate | slow_call_rate
 *          +--------+ -------------------------------------------------> +--------+
 *   init ->| CLOSED |                                                    |  OPEN  |
 *          +--------+ <-----------+        +---------------------------> +--------+
 *                                 |        | trial_failed                     |
 *               trials_succeeded  |        | slow_call_rate (slow trials)     | open_elapsed
 *               (all n succeeded) |        | probe_timeout                    | (tick: now >=
 *                                 |        | (open again, wait doubled,       |  open_until, or
 *                                 |        |  capped at max_open_duration)    |  a trial outcome)
 *                              +---------------+                              |
 *                              |   HALF_OPEN   | <----------------------------+
 *                              +---------------+
 *
 *   admin, from any state:  force_open  -> FORCED_OPEN     (rejects everything, no timer)
 *                           force_close -> FORCED_CLOSED   (admits everything, never trips)
 *                           reset       -> CLOSED          (counters cleared, wait back to base)
 *
 * Who makes each transition: only the owner (one per breaker, in the control process), inside
 *   br_breaker_record()  closed -> open (a trigger fires on the outcome just counted);
 *                        half_open -> closed | open (trial outcomes); open -> half_open when a
 *                        trial outcome arrives before the owner's own timer saw the period end;
 *   br_breaker_tick()    open -> half_open (now >= open_until); half_open -> open (probe_timeout);
 *   br_breaker_force()   the admin transitions.
 * Workers never transition. They read the published state and claim trial permits (shared.c);
 * a claim is not a transition: open with its period over already behaves like half_open for
 * workers, and the owner moves to half_open when its tick or the first trial outcome says so.
 *
 * Generation: every transition starts a new generation (the owner's counter, published with the
 * state), except open -> half_open: the trial permits are published with the open state, so
 * trials claimed before and after the owner notices the period ended belong to one batch and one
 * generation. An outcome carries the generation it was admitted under; an older one is ignored
 * (stale), so nothing admitted under one state is counted in another.
 *
 * Invariants, per state (n = half_open_requests, base = open_duration):
 *   CLOSED         open_ms == base; consecutive < consecutive_failures (when enabled); the window
 *                  and the consecutive count hold only outcomes of this generation; no trials.
 *   OPEN           open_until = entry + open_ms, base <= open_ms <= max_open_duration; window
 *                  empty; the trial batch is published (n permits); finished == ok == 0.
 *   HALF_OPEN      now >= open_until (owner's clock or a worker's); ok < n; no failed trial;
 *                  slow trials below slow_call_rate of n; finished <= claimed; permits available
 *                  + trials in flight + returns pending <= n, so never more than n trials run.
 *   FORCED_OPEN    no timer, no trials; outcomes of this generation cannot exist.
 *   FORCED_CLOSED  open_ms == base; outcomes are counted in the window and the consecutive count
 *                  (for stats) but nothing trips.
 *
 * Probe deadline: the owner cannot see a worker die with a trial, only that a permit was taken
 * (at publish) and that no outcome followed. In half_open, "progress" is the last news of the
 * trials: the entry, a claim first seen, a trial outcome. When probe_timeout_ms passes without
 * progress while some trial is outstanding (claimed > finished), the trials in flight are failed
 * and the breaker re-opens (probe_timeout). Every outstanding trial was claimed before the last
 * progress, so none is failed before it ran probe_timeout_ms. With nothing outstanding the
 * deadline only re-arms, so the owner keeps looking for claims every probe_timeout_ms.
 *
 * Time: every `now` is clamped to the last seen (the owner's clock may lag a worker's).
 */
#include <string.h>

#include "breaker_int.h"

/* ---- names ---- */

const char *br_strerror(int err)
{
    switch (err) {
#define BR_STRERROR_CASE(name, value, msg)                                                         \
    case BR_##name:                                                                                \
        return msg;
        BR_ERRORS(BR_STRERROR_CASE)
#undef BR_STRERROR_CASE
    case BR_OK:
        return "success";
    default:
        return "unknown error";
    }
}

const char *br_state_name(br_state_t state)
{
    static const char *const names[BR_STATE_COUNT] = {
        [BR_STATE_CLOSED] = "closed",
        [BR_STATE_OPEN] = "open",
        [BR_STATE_HALF_OPEN] = "half_open",
        [BR_STATE_FORCED_OPEN] = "forced_open",
        [BR_STATE_FORCED_CLOSED] = "forced_closed",
    };
    return (unsigned)state < BR_STATE_COUNT ? names[state] : NULL;
}

const char *br_reason_name(br_reason_t reason)
{
    static const char *const names[BR_REASON_COUNT] = {
        [BR_REASON_CONSECUTIVE_FAILURES] = "consecutive_failures",
        [BR_REASON_FAILURE_RATE] = "failure_rate",
        [BR_REASON_SLOW_CALL_RATE] = "slow_call_rate",
        [BR_REASON_TRIAL_FAILED] = "trial_failed",
        [BR_REASON_TRIALS_SUCCEEDED] = "trials_succeeded",
        [BR_REASON_PROBE_TIMEOUT] = "probe_timeout",
        [BR_REASON_OPEN_ELAPSED] = "open_elapsed",
        [BR_REASON_FORCED] = "forced",
        [BR_REASON_RESET] = "reset",
    };
    return (unsigned)reason < BR_REASON_COUNT ? names[reason] : NULL;
}

/* ---- configuration and classification ---- */

int br_config_validate(const br_config_t *cfg)
{
    if (cfg == NULL || cfg->failure_rate_ppm > BR_PPM_ONE || cfg->slow_call_rate_ppm > BR_PPM_ONE)
        return BR_EINVAL;
    if (cfg->window_ms == 0 || cfg->open_duration_ms == 0)
        return BR_EINVAL;
    if (cfg->max_open_duration_ms < cfg->open_duration_ms)
        return BR_EINVAL;
    if (cfg->half_open_requests == 0 || cfg->half_open_requests > BR_MAX_HALF_OPEN_REQUESTS)
        return BR_EINVAL;
    return 0;
}

br_outcome_kind_t br_classify_status(uint16_t status, const uint16_t *failure_statuses, size_t n)
{
    if (status >= 400 && status <= 499)
        return BR_OUTCOME_SUCCESS;
    for (size_t i = 0; i < n; i++)
        if (failure_statuses[i] == status)
            return BR_OUTCOME_FAILURE;
    return BR_OUTCOME_SUCCESS;
}

/* ---- helpers ---- */

static uint64_t clamp_now(br_breaker_t *b, uint64_t now)
{
    if (now < b->last_now)
        now = b->last_now;
    b->last_now = now;
    return now;
}

static uint64_t add_sat(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static bool slow_tracked(const br_config_t *cfg)
{
    return cfg->slow_call_duration_ms > 0;
}

static bool slow_trigger(const br_config_t *cfg)
{
    return slow_tracked(cfg) && cfg->slow_call_rate_ppm > 0;
}

/* slow = latency > slow_call_duration, exactly (latency in us, duration in ms). */
static bool is_slow(const br_config_t *cfg, uint64_t latency_us)
{
    if (!slow_tracked(cfg) || cfg->slow_call_duration_ms > UINT64_MAX / 1000)
        return false;
    return latency_us > cfg->slow_call_duration_ms * 1000;
}

/* part / whole >= ppm / 1e6, in integers (part <= whole < 2^39, so no overflow). */
static bool share_reaches(uint64_t part, uint64_t whole, uint32_t ppm)
{
    return part * BR_PPM_ONE >= (uint64_t)ppm * whole;
}

static void clear_counters(br_breaker_t *b, uint64_t now)
{
    b->consecutive = 0;
    br_window_clear(&b->window, now);
    b->granted = b->returns = b->claimed = b->finished = b->ok = b->slow = 0;
}

/* Makes one transition and reports it. The only place that changes b->state. */
static void enter(br_breaker_t *b, br_state_t to, br_reason_t reason, uint64_t now,
                  br_transitions_t *tr)
{
    br_state_t from = b->state;

    if (!(from == BR_STATE_OPEN && to == BR_STATE_HALF_OPEN)) {
        b->generation = (b->generation + 1) & BR_GENERATION_MASK;
        clear_counters(b, now);
    }
    b->state = to;
    switch (to) {
    case BR_STATE_OPEN:
        if (from == BR_STATE_HALF_OPEN)
            b->open_ms = b->open_ms > b->cfg.max_open_duration_ms / 2 ? b->cfg.max_open_duration_ms
                                                                      : b->open_ms * 2;
        b->open_until = add_sat(now, b->open_ms);
        b->granted = b->cfg.half_open_requests;
        break;
    case BR_STATE_HALF_OPEN:
        b->progress_ms = now;
        break;
    case BR_STATE_CLOSED:
    case BR_STATE_FORCED_CLOSED:
        b->open_ms = b->cfg.open_duration_ms;
        b->open_until = 0;
        break;
    default:
        b->open_until = 0;
        break;
    }
    if (tr != NULL && tr->n < BR_MAX_TRANSITIONS)
        tr->t[tr->n++] = (br_transition_t){
            from, to, reason, b->generation, now, to == BR_STATE_OPEN ? b->open_ms : 0};
}

static void begin(br_transitions_t *tr)
{
    if (tr != NULL)
        tr->n = 0;
}

/* ---- owner API ---- */

int br_breaker_init(br_breaker_t *b, const br_config_t *cfg, uint64_t now)
{
    if (b == NULL || br_config_validate(cfg) != 0)
        return BR_EINVAL;
    memset(b, 0, sizeof *b);
    b->cfg = *cfg;
    if (b->cfg.probe_timeout_ms == 0)
        b->cfg.probe_timeout_ms = b->cfg.open_duration_ms;
    b->state = BR_STATE_CLOSED;
    b->last_now = now;
    b->open_ms = cfg->open_duration_ms;
    br_window_init(&b->window, cfg->window_ms, now);
    return 0;
}

int br_breaker_adopt(br_breaker_t *b, const br_shared_t *s, uint64_t now)
{
    br_snapshot_t snap;

    br_shared_read(s, &snap);
    now = clamp_now(b, now);
    clear_counters(b, now);
    b->generation = (snap.generation + 1) & BR_GENERATION_MASK;
    b->open_ms = b->cfg.open_duration_ms;
    b->open_until = 0;
    switch (snap.state) {
    case BR_STATE_OPEN:
    case BR_STATE_HALF_OPEN:
        b->state = BR_STATE_OPEN;
        b->open_until = snap.state == BR_STATE_OPEN ? snap.open_until : now;
        b->granted = b->cfg.half_open_requests;
        break;
    case BR_STATE_FORCED_OPEN:
    case BR_STATE_FORCED_CLOSED:
        b->state = snap.state;
        break;
    default:
        b->state = BR_STATE_CLOSED;
        break;
    }
    return 0;
}

/* The closed-state triggers, checked after each counted call, in this order. */
static bool should_trip(br_breaker_t *b, uint64_t now, br_reason_t *why)
{
    const br_config_t *c = &b->cfg;
    br_window_counts_t w;

    if (c->consecutive_failures > 0 && b->consecutive >= c->consecutive_failures) {
        *why = BR_REASON_CONSECUTIVE_FAILURES;
        return true;
    }
    br_window_counts(&b->window, now, &w);
    if (w.calls == 0 || w.calls < c->min_calls)
        return false;
    if (c->failure_rate_ppm > 0 && share_reaches(w.failures, w.calls, c->failure_rate_ppm)) {
        *why = BR_REASON_FAILURE_RATE;
        return true;
    }
    if (slow_trigger(c) && share_reaches(w.slow, w.calls, c->slow_call_rate_ppm)) {
        *why = BR_REASON_SLOW_CALL_RATE;
        return true;
    }
    return false;
}

static int record_closed(br_breaker_t *b, const br_outcome_t *o, uint64_t now, br_transitions_t *tr)
{
    bool failure = o->kind == BR_OUTCOME_FAILURE;
    br_reason_t why;

    if (o->trial || o->kind == BR_OUTCOME_NEUTRAL)
        return BR_RECORD_NEUTRAL;
    br_window_add(&b->window, now, failure, is_slow(&b->cfg, o->latency_us));
    if (failure) {
        if (b->consecutive < UINT32_MAX)
            b->consecutive++;
    } else {
        b->consecutive = 0;
    }
    if (b->state == BR_STATE_CLOSED && should_trip(b, now, &why))
        enter(b, BR_STATE_OPEN, why, now, tr);
    return BR_RECORD_COUNTED;
}

static int record_trial(br_breaker_t *b, const br_outcome_t *o, uint64_t now, br_transitions_t *tr)
{
    const br_config_t *c = &b->cfg;

    b->finished++;
    if (b->claimed < b->finished)
        b->claimed = b->finished;
    b->progress_ms = now;
    if (o->kind == BR_OUTCOME_NEUTRAL) {
        b->returns++; /* the permit goes back at the next publish */
        return BR_RECORD_NEUTRAL;
    }
    if (o->kind == BR_OUTCOME_FAILURE) {
        enter(b, BR_STATE_OPEN, BR_REASON_TRIAL_FAILED, now, tr);
        return BR_RECORD_COUNTED;
    }
    b->ok++;
    if (is_slow(c, o->latency_us))
        b->slow++;
    if (slow_trigger(c) && share_reaches(b->slow, c->half_open_requests, c->slow_call_rate_ppm))
        enter(b, BR_STATE_OPEN, BR_REASON_SLOW_CALL_RATE, now, tr);
    else if (b->ok >= c->half_open_requests)
        enter(b, BR_STATE_CLOSED, BR_REASON_TRIALS_SUCCEEDED, now, tr);
    return BR_RECORD_COUNTED;
}

int br_breaker_record(br_breaker_t *b, const br_outcome_t *o, uint64_t now, br_transitions_t *tr)
{
    begin(tr);
    if ((unsigned)o->kind >= BR_OUTCOME_KIND_COUNT)
        return BR_EINVAL;
    now = clamp_now(b, now);
    if (o->generation != b->generation)
        return BR_RECORD_STALE;
    switch (b->state) {
    case BR_STATE_CLOSED:
    case BR_STATE_FORCED_CLOSED:
        return record_closed(b, o, now, tr);
    case BR_STATE_OPEN:
        if (!o->trial)
            return BR_RECORD_NEUTRAL;
        /* A worker saw the open period end before our timer did. */
        if (now < b->open_until)
            now = b->last_now = b->open_until;
        enter(b, BR_STATE_HALF_OPEN, BR_REASON_OPEN_ELAPSED, now, tr);
        return record_trial(b, o, now, tr);
    case BR_STATE_HALF_OPEN:
        return o->trial ? record_trial(b, o, now, tr) : BR_RECORD_NEUTRAL;
    default:
        return BR_RECORD_NEUTRAL;
    }
}

int br_breaker_tick(br_breaker_t *b, uint64_t now, br_transitions_t *tr)
{
    begin(tr);
    now = clamp_now(b, now);
    if (b->state == BR_STATE_OPEN && now >= b->open_until)
        enter(b, BR_STATE_HALF_OPEN, BR_REASON_OPEN_ELAPSED, now, tr);
    if (b->state == BR_STATE_HALF_OPEN && now - b->progress_ms >= b->cfg.probe_timeout_ms) {
        if (b->claimed > b->finished)
            enter(b, BR_STATE_OPEN, BR_REASON_PROBE_TIMEOUT, now, tr);
        else
            b->progress_ms = now;
    }
    return 0;
}

int br_breaker_force(br_breaker_t *b, br_action_t action, uint64_t now, br_transitions_t *tr)
{
    begin(tr);
    now = clamp_now(b, now);
    switch (action) {
    case BR_ACTION_FORCE_OPEN:
        if (b->state != BR_STATE_FORCED_OPEN)
            enter(b, BR_STATE_FORCED_OPEN, BR_REASON_FORCED, now, tr);
        return 0;
    case BR_ACTION_FORCE_CLOSE:
        if (b->state != BR_STATE_FORCED_CLOSED)
            enter(b, BR_STATE_FORCED_CLOSED, BR_REASON_FORCED, now, tr);
        return 0;
    case BR_ACTION_RESET:
        enter(b, BR_STATE_CLOSED, BR_REASON_RESET, now, tr);
        return 0;
    default:
        return BR_EINVAL;
    }
}

uint64_t br_breaker_next_deadline(const br_breaker_t *b)
{
    switch (b->state) {
    case BR_STATE_OPEN:
        return b->open_until;
    case BR_STATE_HALF_OPEN:
        return add_sat(b->progress_ms, b->cfg.probe_timeout_ms);
    default:
        return BR_NO_DEADLINE;
    }
}

br_state_t br_breaker_state(const br_breaker_t *b)
{
    return b->state;
}

void br_breaker_stats(br_breaker_t *b, uint64_t now, br_stats_t *out)
{
    br_window_counts_t w;

    now = clamp_now(b, now);
    br_window_counts(&b->window, now, &w);
    *out = (br_stats_t){
        .state = b->state,
        .generation = b->generation,
        .consecutive_failures = b->consecutive,
        .window_calls = w.calls,
        .window_failures = w.failures,
        .window_slow = w.slow,
        .open_until = b->open_until,
        .open_ms = b->open_ms,
        .trials_claimed = b->claimed,
        .trials_ok = b->ok,
    };
}

void br_breaker_observe_claims(br_breaker_t *b, uint32_t claimed, uint64_t now)
{
    now = clamp_now(b, now);
    if (b->state != BR_STATE_OPEN && b->state != BR_STATE_HALF_OPEN)
        return;
    if (claimed > b->claimed) {
        b->claimed = claimed;
        b->progress_ms = now;
    }
}
