/*
 * owner.h - the single owner of every breaker and outlier detector (runs in the control process).
 *
 * Workers only read published state and push outcome records (outq.h). The owner drains the
 * records, runs each upstream's breaker state machine (breaker/), counts consecutive failures per
 * host for outlier ejection, publishes the results to shared memory (upstate.h), and turns every
 * transition into an event: breaker_open / breaker_half_open / breaker_closed /
 * breaker_forced_open / breaker_forced_closed, host_ejected / host_restored, host_down / host_up
 * (from the health prober), no_healthy_hosts / no_healthy_hosts_cleared.
 *
 * Ownership across reloads: a control process owns only while its config generation is the one
 * in force (gw_shared_t.config_generation). During a reload the outgoing owner keeps owning until
 * the new workers are ready, then the new one takes over; records that arrive for a generation
 * that does not own are dropped (counted).
 */
#ifndef GW_OWNER_H
#define GW_OWNER_H

#include <stdbool.h>
#include <uv.h>

#include "runtime.h"

typedef struct gw_owner gw_owner_t;

/* Starts the owner on its own thread and event loop (a breaker must never wait behind the
 * control loop's SQLite work). `main_loop` is the caller's (unused; kept for symmetry). NULL on
 * failure. Every other function here may be called from the caller's thread. */
gw_owner_t *gw_owner_new(uv_loop_t *main_loop, const gw_runtime_t *rt);

/* Stops the owner's thread and frees it. Accepts NULL. */
void gw_owner_close(gw_owner_t *o);

/* Drains pending outcomes now (used before answering the admin API and at stop). */
void gw_owner_drain(gw_owner_t *o);

/* True while this control process owns the breakers. */
bool gw_owner_active(const gw_owner_t *o);

/* Admin override of upstream `i`'s breaker: "force_open", "force_close" or "reset". Returns 0,
 * -EINVAL for an unknown action, -EAGAIN when this process does not own the breakers right now
 * (a reload is switching owners: retry). */
int gw_owner_force(gw_owner_t *o, size_t upstream, const char *action);

/* The health prober reports a host's transition (up = healthy). */
void gw_owner_host_health(gw_owner_t *o, size_t upstream, size_t host, bool up);

/* Records dropped because this process did not own the breakers when they arrived. */
uint64_t gw_owner_dropped(const gw_owner_t *o);

#endif
