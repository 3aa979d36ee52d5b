/*
 * bucket.c - GCRA token bucket maths (see bucket.h for the model, units and rounding rules, and
 * docs/ratelimit.md for the proofs).
 *
 * Invariants every function here relies on, established by br_gcra_params_init():
 *   1 <= scale <= BR_GCRA_SCALE_MAX, 1 <= interval <= tau, tau <= BR_GCRA_MAX_TAU_US * scale
 *   now ticks <= BR_GCRA_MAX_NOW_US * scale <= 2^62
 * so max(tat, now) + interval < 2^62 + 2^53 < BR_GCRA_TAT_LIMIT, and a tick count converted
 * back to nanoseconds, ceil(ticks / scale) * 1000 < 2^63: no expression below can overflow.
 *
 * Callers: the key table (keytable.c) and the gateway. Pure except br_gcra_admit()'s CAS.
 */
#include <errno.h>
#include <stddef.h>

#include "bucket.h"

#define NS_PER_US 1000u
#define NS_PER_MS 1000000u
#define NS_PER_S 1000000000u

static uint64_t gcd64(uint64_t a, uint64_t b)
{
    while (b != 0) {
        uint64_t r = a % b;
        a = b;
        b = r;
    }
    return a;
}

static uint64_t ceil_div(uint64_t a, uint64_t b)
{
    return a / b + (a % b != 0);
}

int br_gcra_params_init(br_gcra_params_t *p, uint64_t tokens, uint64_t period_ms, uint32_t burst)
{
    uint64_t period_us, g, k, scale, interval, tau;
    uint32_t exact = 1;

    if (tokens == 0 || period_ms == 0 || burst == 0)
        return -EINVAL;
    if (__builtin_mul_overflow(period_ms, (uint64_t)1000, &period_us))
        return -EINVAL;
    g = gcd64(tokens, period_us);
    k = tokens / g;
    if (k <= BR_GCRA_SCALE_MAX) {
        /* period_us * k / tokens = period_us / g exactly */
        scale = k;
        interval = period_us / g;
    } else {
        uint64_t num;
        if (__builtin_mul_overflow(period_us, (uint64_t)BR_GCRA_SCALE_MAX, &num))
            return -EINVAL;
        scale = BR_GCRA_SCALE_MAX;
        interval = ceil_div(num, tokens); /* up: never faster than configured */
        exact = 0;
        if (interval < BR_GCRA_MIN_INEXACT_INTERVAL)
            return -EINVAL;
    }
    if (__builtin_mul_overflow((uint64_t)burst, interval, &tau) || tau > BR_GCRA_MAX_TAU_US * scale)
        return -EINVAL;

    p->tokens = tokens;
    p->period_ms = period_ms;
    p->scale = scale;
    p->interval = interval;
    p->tau = tau;
    p->burst = burst;
    p->exact = exact;
    return 0;
}

bool br_gcra_params_equal(const br_gcra_params_t *a, const br_gcra_params_t *b)
{
    return a->scale == b->scale && a->interval == b->interval && a->tau == b->tau &&
           a->burst == b->burst;
}

uint32_t br_gcra_window_s(const br_gcra_params_t *p)
{
    uint64_t tau_us = ceil_div(p->tau, p->scale);
    uint64_t s = ceil_div(tau_us, 1000000u);
    return s == 0 ? 1 : (uint32_t)s;
}

uint64_t br_gcra_now_ticks(const br_gcra_params_t *p, uint64_t now_ns)
{
    uint64_t us = now_ns / NS_PER_US;
    if (us > BR_GCRA_MAX_NOW_US)
        us = BR_GCRA_MAX_NOW_US;
    return us * p->scale;
}

/* The wait from now_ns until the clock reads at least `ticks`: the first nanosecond t with
 * floor(t / 1000) * scale >= ticks is ceil(ticks / scale) * 1000. 0 if that is not later. */
static uint64_t ns_until(const br_gcra_params_t *p, uint64_t ticks, uint64_t now_ns)
{
    uint64_t at = ceil_div(ticks, p->scale) * NS_PER_US;
    return at > now_ns ? at - now_ns : 0;
}

static uint32_t ceil_u32(uint64_t v, uint64_t unit)
{
    uint64_t c = ceil_div(v, unit);
    return c > UINT32_MAX ? UINT32_MAX : (uint32_t)c;
}

/* Fills info for state `after` (= max(tat, n), plus T if admitted) seen at n / now_ns. */
static void fill_info(const br_gcra_params_t *p, bool admitted, uint64_t after, uint64_t n,
                      uint64_t now_ns, br_gcra_info_t *info)
{
    uint64_t used = after - n; /* after >= n always */
    uint64_t next_at;

    info->admitted = admitted;
    info->limit = p->burst;
    info->remaining = used >= p->tau ? 0 : (uint32_t)((p->tau - used) / p->interval);
    info->reset_ns = ns_until(p, after, now_ns);
    info->reset_s = ceil_u32(info->reset_ns, NS_PER_S);
    /* the next request is admitted at the first n' with after + T - n' <= tau */
    next_at = after + p->interval > p->tau ? after + p->interval - p->tau : 0;
    info->retry_after_ns = next_at > n ? ns_until(p, next_at, now_ns) : 0;
    info->retry_after_ms = ceil_div(info->retry_after_ns, NS_PER_MS);
    info->retry_after_s = ceil_u32(info->retry_after_ns, NS_PER_S);
    if (!admitted && info->retry_after_s == 0)
        info->retry_after_s = 1; /* cannot happen (denied => next_at > n); the header needs >= 1 */
}

bool br_gcra_decide(const br_gcra_params_t *p, uint64_t tat, uint64_t now_ns, uint64_t *new_tat,
                    br_gcra_info_t *info)
{
    if (now_ns / NS_PER_US > BR_GCRA_MAX_NOW_US)
        now_ns = BR_GCRA_MAX_NOW_US * NS_PER_US; /* the clamp, also for the info's waits */
    uint64_t n = br_gcra_now_ticks(p, now_ns);
    uint64_t base = tat > n ? tat : n;
    uint64_t next = base + p->interval;
    bool admitted = next - n <= p->tau;

    *new_tat = admitted ? next : tat;
    if (info != NULL)
        fill_info(p, admitted, admitted ? next : base, n, now_ns, info);
    return admitted;
}

bool br_gcra_admit(const br_gcra_params_t *p, uint64_t *tat, uint64_t now_ns, br_gcra_info_t *info)
{
    uint64_t old = __atomic_load_n(tat, __ATOMIC_ACQUIRE);

    for (;;) {
        uint64_t next;
        if (!br_gcra_decide(p, old, now_ns, &next, info))
            return false; /* linearized at the load that saw `old` */
        /* on failure `old` is reloaded: another decision was applied, decide again */
        if (__atomic_compare_exchange_n(tat, &old, next, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return true;
    }
}
