/*
 * events.c - the lock-free shared events ring. See events.h for the protocol.
 *
 * Slot sequence numbers, for the event at position p (0, 1, 2, ...):
 *   2p + 1   a producer is writing it
 *   2p + 2   published: readable
 * Anything else at that slot means either an older position (not written yet) or a newer one
 * (the consumer was lapped).
 */
#include "events.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

typedef struct slot {
    uint64_t seq;
    gw_event_t ev;
} slot_t;

struct gw_events {
    uint64_t head; /* next position to claim: producers, atomic */
    char pad1[56];
    uint64_t tail;     /* committed consumer position (survives a consumer restart) */
    uint64_t read_pos; /* consumer's read cursor */
    uint64_t dropped;
    uint64_t stuck_pos, stuck_since_ms; /* consumer only: a slot waiting on its producer */
    char pad2[24];
    slot_t slots[GW_EVENTS_SLOTS];
};

gw_events_t *gw_events_new(void)
{
    void *p =
        mmap(NULL, sizeof(gw_events_t), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    gw_events_t *ev = p;
    ev->stuck_pos = UINT64_MAX;
    return ev;
}

void gw_events_free(gw_events_t *ev)
{
    if (ev != NULL)
        munmap(ev, sizeof(*ev));
}

int gw_events_emit(gw_events_t *ev, const char *kind, int32_t worker, const char *fields_json)
{
    if (fields_json == NULL)
        fields_json = "{}";
    size_t klen = strlen(kind), flen = strlen(fields_json);
    if (klen == 0 || klen >= GW_EVENT_KIND_MAX)
        return -EINVAL;
    if (flen >= GW_EVENT_FIELDS_MAX)
        return -EMSGSIZE;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);

    uint64_t p = __atomic_fetch_add(&ev->head, 1, __ATOMIC_ACQ_REL);
    slot_t *s = &ev->slots[p % GW_EVENTS_SLOTS];
    __atomic_store_n(&s->seq, 2 * p + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    s->ev.ts_ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    s->ev.worker = worker;
    s->ev.fields_len = (uint32_t)flen;
    memcpy(s->ev.kind, kind, klen + 1);
    memcpy(s->ev.fields, fields_json, flen + 1);
    __atomic_store_n(&s->seq, 2 * p + 2, __ATOMIC_RELEASE);
    return 0;
}

static void drop_ahead(gw_events_t *ev, uint64_t n)
{
    ev->read_pos += n;
    __atomic_fetch_add(&ev->dropped, n, __ATOMIC_RELAXED);
    ev->stuck_pos = UINT64_MAX;
}

int gw_events_next(gw_events_t *ev, uint64_t now_ms, gw_event_t *out)
{
    for (;;) {
        uint64_t head = __atomic_load_n(&ev->head, __ATOMIC_ACQUIRE);
        uint64_t pos = ev->read_pos;
        if (pos >= head)
            return 0;
        if (head - pos > GW_EVENTS_SLOTS) { /* lapped: the oldest ones were overwritten */
            drop_ahead(ev, head - pos - GW_EVENTS_SLOTS);
            continue;
        }
        slot_t *s = &ev->slots[pos % GW_EVENTS_SLOTS];
        uint64_t seq = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
        if (seq == 2 * pos + 2) {
            memcpy(out, &s->ev, sizeof(*out));
            __atomic_thread_fence(__ATOMIC_ACQUIRE);
            if (__atomic_load_n(&s->seq, __ATOMIC_RELAXED) != seq) {
                drop_ahead(ev, 1); /* overwritten while we copied it */
                continue;
            }
            out->kind[GW_EVENT_KIND_MAX - 1] = '\0';
            out->fields[GW_EVENT_FIELDS_MAX - 1] = '\0';
            ev->read_pos++;
            ev->stuck_pos = UINT64_MAX;
            return 1;
        }
        if (seq > 2 * pos + 2) { /* a later position already reuses the slot */
            drop_ahead(ev, 1);
            continue;
        }
        /* claimed but not published yet: wait for the producer, but not forever */
        if (ev->stuck_pos != pos) {
            ev->stuck_pos = pos;
            ev->stuck_since_ms = now_ms;
            return 0;
        }
        if (now_ms - ev->stuck_since_ms < GW_EVENTS_STUCK_MS)
            return 0;
        drop_ahead(ev, 1);
    }
}

void gw_events_commit(gw_events_t *ev)
{
    __atomic_store_n(&ev->tail, ev->read_pos, __ATOMIC_RELEASE);
}

void gw_events_rewind(gw_events_t *ev)
{
    ev->read_pos = __atomic_load_n(&ev->tail, __ATOMIC_ACQUIRE);
    ev->stuck_pos = UINT64_MAX;
}

uint64_t gw_events_dropped(const gw_events_t *ev)
{
    return __atomic_load_n(&ev->dropped, __ATOMIC_RELAXED);
}

uint64_t gw_events_emitted(const gw_events_t *ev)
{
    return __atomic_load_n(&ev->head, __ATOMIC_RELAXED);
}
