/*
 * events.h - the events channel: a bounded, crash-safe ring in shared memory.
 *
 * Producers are every process (workers: handler faults, later breaker outcomes' consequences;
 * the supervisor: crashes, stalls, crash loops, reloads; the control process: breaker
 * transitions, alerts). The single consumer is the control process, which persists each event in
 * SQLite (the audit trail behind GET /api/v1/events) and, later, feeds the alert engine.
 *
 * Never blocks a producer: when the ring is full the oldest unread event is overwritten and the
 * consumer counts it as dropped (gw_events_dropped, exported as a metric).
 *
 * Crash safety: there is no lock. A producer claims a slot with one atomic fetch-add on `head`,
 * marks the slot "being written" (odd sequence), copies the record, then publishes it (even
 * sequence = 2 * (position + 1)). A producer that dies mid-write leaves an odd sequence: the
 * consumer skips such a slot once it has stayed unpublished for GW_EVENTS_STUCK_MS, counting it
 * as dropped, so one crash never wedges the channel. The consumer copies a record and re-reads
 * the sequence afterwards, so a record overwritten while being read is detected (and dropped).
 */
#ifndef GW_EVENTS_H
#define GW_EVENTS_H

#include <stddef.h>
#include <stdint.h>

#define GW_EVENTS_SLOTS 512
#define GW_EVENT_KIND_MAX 32
#define GW_EVENT_FIELDS_MAX 3968 /* a JSON object; longer ones are refused (-EMSGSIZE) */
#define GW_EVENTS_STUCK_MS 1000

typedef struct gw_event {
    uint64_t ts_ms; /* wall clock, unix ms: for people reading the audit trail */
    int32_t worker; /* worker index, or -1 for the supervisor/control process */
    uint32_t fields_len;
    char kind[GW_EVENT_KIND_MAX];     /* NUL-terminated, e.g. "worker_crash" */
    char fields[GW_EVENT_FIELDS_MAX]; /* NUL-terminated JSON object text */
} gw_event_t;

typedef struct gw_events gw_events_t;

/* Maps a new shared ring. Returns NULL (errno set) on failure. */
gw_events_t *gw_events_new(void);
void gw_events_free(gw_events_t *ev);

/* Producer side (any process). `fields_json` must be a JSON object text (NULL means "{}").
 * Returns 0, or -EINVAL / -EMSGSIZE for an unusable record. Never blocks. */
int gw_events_emit(gw_events_t *ev, const char *kind, int32_t worker, const char *fields_json);

/*
 * Consumer side (one process only). Copies the next event into *out and returns 1, returns 0 when
 * nothing is ready. `now_ms` is a monotonic clock used to give up on slots whose producer died.
 * Events overwritten before they were read, or abandoned mid-write, are counted in
 * gw_events_dropped and skipped.
 *
 * Reading is two-phase so that a consumer crash loses nothing it had not stored yet: events read
 * with gw_events_next() are read again by the next consumer unless gw_events_commit() was called
 * after they were persisted. A (re)starting consumer calls gw_events_rewind() first.
 */
int gw_events_next(gw_events_t *ev, uint64_t now_ms, gw_event_t *out);
void gw_events_commit(gw_events_t *ev);
void gw_events_rewind(gw_events_t *ev);

/* Events lost so far: overwritten when the ring was full, or abandoned by a dying producer. */
uint64_t gw_events_dropped(const gw_events_t *ev);

/* Events emitted so far (all producers). */
uint64_t gw_events_emitted(const gw_events_t *ev);

#endif
