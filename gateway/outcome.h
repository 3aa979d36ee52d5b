/*
 * outcome.h - the one record every proxied request ends in.
 *
 * The upstream client produces exactly one gw_outcome_t per request that was admitted to an
 * upstream (requests refused before that - no route, rate limit, breaker, bulkhead, no host -
 * are not calls and produce none). It is the only input the circuit breaker and the per-host
 * outlier detector get about the upstream, so it says what happened in upstream terms, not in
 * terms of what the client was answered.
 *
 * Classification: GW_OUTCOME_RESPONSE carries the upstream's status; whether that status is a
 * failure is the upstream's `failure_statuses` decision, made by the consumer (gw_outcome_failed).
 * A client cancelling is neutral: it says nothing about the upstream's health. A body that breaks
 * off after a good head is reported as RESET or TIMEOUT (with the head's status): the caller got a
 * truncated response, which is a failure.
 */
#ifndef GW_OUTCOME_H
#define GW_OUTCOME_H

#include <stdbool.h>
#include <stdint.h>

typedef enum gw_outcome_kind {
    GW_OUTCOME_RESPONSE = 0,    /* a complete response head arrived; see status */
    GW_OUTCOME_CONNECT_REFUSED, /* ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, ... */
    GW_OUTCOME_CONNECT_TIMEOUT, /* no connection within connect_timeout */
    GW_OUTCOME_RESET,           /* reset, early close or malformed response after connecting */
    GW_OUTCOME_TIMEOUT,         /* the request's deadline passed while waiting on the upstream */
    GW_OUTCOME_CANCELLED,       /* the client went away first: neutral for the breaker */
    GW_OUTCOME_KIND_COUNT
} gw_outcome_kind_t;

typedef struct gw_outcome {
    uint32_t route;    /* route index */
    uint32_t upstream; /* upstream index */
    uint32_t host;     /* host index within the upstream */
    gw_outcome_kind_t kind;
    uint16_t status;      /* the upstream's status whenever a head arrived (also when the body
                             then broke off: kind RESET or TIMEOUT), else 0 */
    uint64_t latency_us;  /* from admission to the response head, or to the failure */
    uint64_t finished_ms; /* monotonic clock, ms */
} gw_outcome_t;

/* The stable lower-case name used in metrics and logs ("connect_refused"). */
const char *gw_outcome_kind_name(gw_outcome_kind_t kind);

#endif
