/*
 * outq.h - the outcome channel: workers -> the breaker owners in the control process.
 *
 * Workers never change breaker or outlier state themselves (issue: channel-driven breaker). Each
 * worker pushes one small record per finished upstream call into its own single-producer,
 * single-consumer ring in shared memory; the control process drains every ring and runs the state
 * machines. One ring per worker slot means no atomic read-modify-write on the request path: the
 * producer writes the record and then publishes it with one release store of `head`.
 *
 * Wake-ups: the consumer polls every GW_OUTQ_POLL_MS, and a producer also writes to an eventfd
 * when the record is urgent (a failure or a half-open trial), so a breaker can open within
 * microseconds of the failure that trips it instead of at the next poll. Successes ride the poll.
 *
 * Full ring: the record is dropped and counted (the owner then sees fewer outcomes; it never
 * blocks a worker). A worker that dies mid-push leaves an unpublished slot that its replacement
 * overwrites: nothing to repair.
 *
 * The rings belong to one config generation (they sit beside that generation's stats): records
 * are indexed by that generation's upstream numbering.
 */
#ifndef GW_OUTQ_H
#define GW_OUTQ_H

#include <stdbool.h>
#include <stdint.h>

#define GW_OUTQ_SLOTS 4096 /* per worker; a power of two */
#define GW_OUTQ_POLL_MS 10

typedef struct gw_outq_rec {
    uint64_t t_ns;       /* monotonic time the call finished: the owner applies in this order */
    uint64_t generation; /* the breaker generation the call was admitted under */
    uint64_t latency_us;
    uint32_t upstream;
    uint16_t host;
    uint16_t status;
    uint8_t kind; /* gw_outcome_kind_t */
    uint8_t trial;
    uint8_t pad[6];
} gw_outq_rec_t;

typedef struct gw_outq gw_outq_t;

/* Maps rings for `nworkers` workers and creates the wake-up eventfd. NULL on failure. */
gw_outq_t *gw_outq_new(uint32_t nworkers);
void gw_outq_free(gw_outq_t *q);

/* The eventfd the consumer polls for urgent records. */
int gw_outq_fd(const gw_outq_t *q);

/* Producer (worker `worker` only). Returns false when the ring was full (the record is dropped
 * and counted). `urgent` also signals the eventfd. */
bool gw_outq_push(gw_outq_t *q, uint32_t worker, const gw_outq_rec_t *rec, bool urgent);

/* Consumer (one process). Calls `cb` for every published record of every ring, merged across
 * rings in t_ns order (each ring is already in order), so that the owner sees the outcomes of
 * different workers in the order they happened; returns how many it delivered. Also clears the
 * eventfd. */
typedef void (*gw_outq_cb)(void *ctx, uint32_t worker, const gw_outq_rec_t *rec);
uint32_t gw_outq_drain(gw_outq_t *q, gw_outq_cb cb, void *ctx);

/* Records dropped because a ring was full, over all workers. */
uint64_t gw_outq_dropped(const gw_outq_t *q);

#endif
