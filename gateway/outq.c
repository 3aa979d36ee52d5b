/*
 * outq.c - per-worker SPSC outcome rings in shared memory. See outq.h.
 *
 * Each ring has `head` (written by its worker only) and `tail` (written by the consumer only), on
 * separate cache lines. head and tail count records forever (they never wrap in practice); the
 * slot is `count % GW_OUTQ_SLOTS`.
 */
#include "outq.h"

#include <stddef.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

typedef struct ring {
    uint64_t head;
    char pad1[56];
    uint64_t tail;
    char pad2[56];
    uint64_t dropped;
    char pad3[56];
    gw_outq_rec_t recs[GW_OUTQ_SLOTS];
} ring_t;

struct gw_outq {
    size_t map_len;
    uint32_t nworkers;
    int efd;
    char pad[48];
    ring_t rings[];
};

gw_outq_t *gw_outq_new(uint32_t nworkers)
{
    size_t len = sizeof(gw_outq_t) + (size_t)nworkers * sizeof(ring_t);
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    gw_outq_t *q = p;
    q->map_len = len;
    q->nworkers = nworkers;
    q->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (q->efd < 0) {
        munmap(p, len);
        return NULL;
    }
    return q;
}

void gw_outq_free(gw_outq_t *q)
{
    if (q == NULL)
        return;
    close(q->efd);
    munmap(q, q->map_len);
}

int gw_outq_fd(const gw_outq_t *q)
{
    return q->efd;
}

bool gw_outq_push(gw_outq_t *q, uint32_t worker, const gw_outq_rec_t *rec, bool urgent)
{
    ring_t *r = &q->rings[worker];
    uint64_t head = __atomic_load_n(&r->head, __ATOMIC_RELAXED);
    uint64_t tail = __atomic_load_n(&r->tail, __ATOMIC_ACQUIRE);
    if (head - tail >= GW_OUTQ_SLOTS) {
        __atomic_store_n(&r->dropped, __atomic_load_n(&r->dropped, __ATOMIC_RELAXED) + 1,
                         __ATOMIC_RELAXED);
        return false;
    }
    r->recs[head % GW_OUTQ_SLOTS] = *rec;
    __atomic_store_n(&r->head, head + 1, __ATOMIC_RELEASE);
    if (urgent) {
        uint64_t one = 1;
        ssize_t n = write(q->efd, &one, sizeof(one)); /* EAGAIN: already signalled enough */
        (void)n;
    }
    return true;
}

uint32_t gw_outq_drain(gw_outq_t *q, gw_outq_cb cb, void *ctx)
{
    uint64_t junk;
    ssize_t n = read(q->efd, &junk, sizeof(junk)); /* clear first: later pushes signal again */
    (void)n;
    /* snapshot every ring's published range, then a k-way merge on t_ns (k = workers, small) */
    uint64_t tails[q->nworkers], heads[q->nworkers];
    for (uint32_t w = 0; w < q->nworkers; w++) {
        tails[w] = __atomic_load_n(&q->rings[w].tail, __ATOMIC_RELAXED);
        heads[w] = __atomic_load_n(&q->rings[w].head, __ATOMIC_ACQUIRE);
    }
    uint32_t total = 0;
    for (;;) {
        uint32_t best = UINT32_MAX;
        uint64_t best_t = UINT64_MAX;
        for (uint32_t w = 0; w < q->nworkers; w++) {
            if (tails[w] == heads[w])
                continue;
            uint64_t t = q->rings[w].recs[tails[w] % GW_OUTQ_SLOTS].t_ns;
            if (best == UINT32_MAX || t < best_t) {
                best = w;
                best_t = t;
            }
        }
        if (best == UINT32_MAX)
            break;
        gw_outq_rec_t rec = q->rings[best].recs[tails[best] % GW_OUTQ_SLOTS];
        tails[best]++;
        total++;
        cb(ctx, best, &rec);
    }
    for (uint32_t w = 0; w < q->nworkers; w++)
        __atomic_store_n(&q->rings[w].tail, tails[w], __ATOMIC_RELEASE);
    return total;
}

uint64_t gw_outq_dropped(const gw_outq_t *q)
{
    uint64_t sum = 0;
    for (uint32_t w = 0; w < q->nworkers; w++)
        sum += __atomic_load_n(&q->rings[w].dropped, __ATOMIC_RELAXED);
    return sum;
}
