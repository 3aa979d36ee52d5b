/*
 * bufpool.h - a per-worker free list of fixed-size I/O buffers.
 *
 * The request hot path reads every upstream response into one of these. Reusing them avoids a
 * malloc/free pair (and page faults on fresh memory) per request. The list is bounded: releasing
 * a buffer into a full list frees it, so an idle worker holds at most `max_free` buffers.
 * Hits and misses are counted in the worker's shared stats for /metrics.
 *
 * One pool per event loop; not thread-safe (nothing in a worker is).
 */
#ifndef GW_BUFPOOL_H
#define GW_BUFPOOL_H

#include <stddef.h>
#include <stdint.h>

#define GW_BUF_SIZE 65536

typedef struct gw_bufpool {
    void **free_list;
    size_t nfree, max_free;
    uint64_t *hits, *misses; /* where to count (shared stats); never NULL after init */
    uint64_t local_hits, local_misses;
} gw_bufpool_t;

/* max_free: how many released buffers to keep. hits/misses may be NULL (counted locally). */
int gw_bufpool_init(gw_bufpool_t *p, size_t max_free, uint64_t *hits, uint64_t *misses);
void gw_bufpool_dispose(gw_bufpool_t *p);

/* Returns a GW_BUF_SIZE buffer, or NULL when memory is exhausted. */
char *gw_buf_get(gw_bufpool_t *p);
/* Accepts NULL. */
void gw_buf_put(gw_bufpool_t *p, char *buf);

#endif
