/*
 * storewatch.h - pages people when the alert store itself fails (alert_store_degraded).
 *
 * While SQLite answers busy/full/I/O errors, alerts are held in memory (the events channel and the
 * engine's queue) and the outbox cannot be read, so the notifications that would say so cannot go
 * through it either. This module, in the control process, watches the store errors its callers
 * report and, once the store has been failing for GW_STOREWATCH_GRACE_MS, sends an
 * alert_store_degraded notice straight to the channels of that rule's tier
 * (al_sender_send_unstored: in memory, retried on a backoff while it matters, never recorded). When
 * the store works again it sends a resolved notice to the channels it tried, and emits the events
 * alert_store_degraded (with the figures of the episode) and alert_store_recovered on the events
 * channel, so the episode is in the audit trail and in the alert history like any other alert
 * (raised, then resolved: the notices already went out, so the outbox has nothing left to send for
 * it).
 *
 * What is not done: silences and group_wait do not apply to the notices (they live in the store);
 * nothing is sent for a failure shorter than the grace period (a log line says it happened).
 *
 * Callers: the control process, on its loop's thread. The sender must outlive this module's use of
 * it: call gw_storewatch_set_sender(w, NULL) before closing the sender (its abandoned sends never
 * report back, see al_sender_close()).
 */
#ifndef GW_STOREWATCH_H
#define GW_STOREWATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "events.h"
#include "sender.h"

#define GW_STOREWATCH_GRACE_MS 2000      /* failing this long before people are paged */
#define GW_STOREWATCH_RETRY_MS 1000      /* first retry of a notice; doubles */
#define GW_STOREWATCH_RETRY_MAX_MS 30000 /* retry cap */
#define GW_STOREWATCH_ATTEMPTS_MAX 10    /* attempts of one notice on one channel */
#define GW_STOREWATCH_CHANNELS_MAX 32    /* channels of one tier that get notices */

typedef struct gw_storewatch gw_storewatch_t;

/* cfg, events: borrowed, must outlive the watcher; source e.g. "breakwater@host" (copied). NULL
 * on out of memory. */
gw_storewatch_t *gw_storewatch_new(uv_loop_t *loop, const gw_alerts_config_t *cfg,
                                   gw_events_t *events, const char *source);

/* The sender to send notices with (NULL: none; notices wait). */
void gw_storewatch_set_sender(gw_storewatch_t *w, al_sender_t *sender);

/* A store error (al_store_unavailable kinds: busy, full, I/O) met at now_ms by a write. */
void gw_storewatch_failed(gw_storewatch_t *w, int err, uint64_t now_ms);

/* The store's state now: ok = the last write worked and nothing is held (held: inputs held in
 * memory; dropped: inputs dropped so far by a full memory queue, a running total). */
void gw_storewatch_update(gw_storewatch_t *w, bool ok, size_t held, uint64_t dropped,
                          uint64_t now_ms);

/* True from the first error until the store works again. */
bool gw_storewatch_failing(const gw_storewatch_t *w);

/* libuv close semantics: frees after the timer's close callback. */
void gw_storewatch_free(gw_storewatch_t *w);

#endif
