/* The roofline: the leanest C loop that makes the engine's stateless IPv4 decision for a
 * cluster of ClusterIP services, so `kproxy bench --sweep` can say how far the engine's
 * lookup_batch(track=False) is from what the memory system allows.
 *
 * It does only what that decision cannot avoid, per packet: one probe of an open-addressing
 * frontend table (load <= 1/2, linear probing, the engine's multiply hash of
 * addr<<24|port<<8|proto), the engine's seeded 5-tuple hash (splitmix64 finaliser, see
 * kproxy_core/_engine_py.py packet_hash), the multiply-shift pick ((h>>32)*n)>>32 and one read
 * of the chosen pool entry. The slot holds the pool's start and length itself (the engine
 * goes slot -> record -> port -> pool -> endpoint), the pool holds the endpoint itself, and
 * there is no source classification, verdict, masquerade or service index: those are the
 * engine's work beyond the limit. Two stages of software prefetch, RL_AHEAD packets apart:
 * the frontend slot of packet i + 2*RL_AHEAD, then the pool entry of packet i + RL_AHEAD.
 * Both tables ask for transparent huge pages, as the engine does for its flow and selector
 * tables: random probes into tens of MiB otherwise miss the TLB.
 *
 * Loaded by kproxy_core/roofline.py through ctypes, compiled at benchmark time with -O3 (the
 * engine's own optimisation level). Not part of the engine: nothing here is kept in sync by
 * the build, only by the equality check the harness runs against lookup_batch.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__GNUC__) || defined(__clang__)
#define RL_PREFETCH(p) __builtin_prefetch((const void *)(p), 0, 3)
#else
#define RL_PREFETCH(p) ((void)(p))
#endif

#ifndef RL_AHEAD
#define RL_AHEAD 16
#endif
#define RL_RING 64 /* > RL_AHEAD, a power of two */
typedef char rl_ring_is_big_enough[(RL_RING > RL_AHEAD) ? 1 : -1];

typedef struct {
    uint32_t addr;
    uint16_t port;
    uint8_t proto; /* 0: empty (frontends are TCP 6, UDP 17 or SCTP 132) */
    uint8_t pad;
    uint32_t start;
    uint32_t len;
} rl_slot; /* 16 bytes: four to a cache line */

typedef struct {
    uint32_t ip;
    uint16_t port;
    uint16_t pad;
} rl_ep;

typedef struct {
    rl_slot *slots;
    size_t slots_size;
    uint64_t mask;
    int shift;
    rl_ep *pool;
    size_t pool_size;
    uint64_t seed;
} rl_table;

static void *rl_alloc(size_t size) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (size >= ((size_t)1 << 21)) {
        void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return NULL;
        madvise(p, size, MADV_HUGEPAGE); /* a hint: fine if it fails */
        return p;
    }
#endif
    return calloc(size, 1);
}

static void rl_release(void *p, size_t size) {
    if (!p) return;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (size >= ((size_t)1 << 21)) {
        munmap(p, size);
        return;
    }
#endif
    (void)size;
    free(p);
}

static inline uint64_t rl_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static inline uint64_t rl_slot_of(const rl_table *t, uint32_t addr, uint16_t port, uint8_t proto) {
    return ((((uint64_t)addr << 24) | ((uint64_t)port << 8) | proto) * 0x9E3779B97F4A7C15ULL) >> t->shift;
}

void rl_free(rl_table *t) {
    if (!t) return;
    rl_release(t->slots, t->slots_size);
    rl_release(t->pool, t->pool_size);
    free(t);
}

/* n_fe frontends (addr, port, proto) -> pool [start, start + len) of the n_pool entries
 * (ip, port). Returns NULL when out of memory, or when a start/len is out of range. */
rl_table *rl_build(uint64_t seed, int64_t n_fe, const uint32_t *fe_addr, const uint16_t *fe_port,
                   const uint8_t *fe_proto, const uint32_t *fe_start, const uint32_t *fe_len,
                   int64_t n_pool, const uint32_t *pool_ip, const uint16_t *pool_port) {
    rl_table *t;
    uint64_t cap = 2;
    int bits = 1;
    int64_t i;
    if (n_fe < 0 || n_pool < 0) return NULL;
    while (cap < 2 * (uint64_t)n_fe) {
        cap <<= 1;
        bits++;
    }
    t = (rl_table *)calloc(1, sizeof(*t));
    if (!t) return NULL;
    t->seed = seed;
    t->mask = cap - 1;
    t->shift = 64 - bits;
    t->slots_size = (size_t)cap * sizeof(rl_slot);
    t->pool_size = (size_t)(n_pool ? n_pool : 1) * sizeof(rl_ep);
    t->slots = (rl_slot *)rl_alloc(t->slots_size);
    t->pool = (rl_ep *)rl_alloc(t->pool_size);
    if (!t->slots || !t->pool) {
        rl_free(t);
        return NULL;
    }
    for (i = 0; i < n_pool; i++) {
        t->pool[i].ip = pool_ip[i];
        t->pool[i].port = pool_port[i];
    }
    for (i = 0; i < n_fe; i++) {
        uint64_t s = rl_slot_of(t, fe_addr[i], fe_port[i], fe_proto[i]);
        if (fe_proto[i] == 0 || (int64_t)fe_start[i] + (int64_t)fe_len[i] > n_pool) {
            rl_free(t);
            return NULL;
        }
        while (t->slots[s].proto &&
               !(t->slots[s].addr == fe_addr[i] && t->slots[s].port == fe_port[i] &&
                 t->slots[s].proto == fe_proto[i]))
            s = (s + 1) & t->mask;
        t->slots[s].addr = fe_addr[i];
        t->slots[s].port = fe_port[i];
        t->slots[s].proto = fe_proto[i];
        t->slots[s].start = fe_start[i];
        t->slots[s].len = fe_len[i];
    }
    return t;
}

/* The pool entry packet i lands on, or -1 (no frontend, or an empty pool). */
static inline int64_t rl_pick(const rl_table *t, uint32_t src, uint32_t dst, uint16_t sport,
                              uint16_t dport, uint8_t proto) {
    uint64_t s = rl_slot_of(t, dst, dport, proto), h;
    const rl_slot *e;
    for (;;) {
        e = &t->slots[s];
        if (!e->proto || (e->addr == dst && e->port == dport && e->proto == proto)) break;
        s = (s + 1) & t->mask;
    }
    if (!e->proto || !e->len) return -1;
    h = rl_mix(rl_mix(t->seed ^ (((uint64_t)src << 32) | dst)) ^
               (((uint64_t)sport << 24) | ((uint64_t)dport << 8) | proto));
    return (int64_t)e->start + (int64_t)(((h >> 32) * (uint64_t)e->len) >> 32);
}

/* Writes each packet's endpoint (0, 0 for a miss) and returns how many hit. The loop is
 * split in a prologue, the steady state and an epilogue, so the steady state carries no
 * bounds checks. */
#define RL_STAGE1(j) RL_PREFETCH(&t->slots[rl_slot_of(t, dst[j], dport[j], proto[j])])
#define RL_STAGE2(k) do { \
        int64_t p_ = rl_pick(t, src[k], dst[k], sport[k], dport[k], proto[k]); \
        ring[(k) & (RL_RING - 1)] = p_; \
        if (p_ >= 0) RL_PREFETCH(&t->pool[p_]); \
    } while (0)
#define RL_STAGE3(i) do { \
        int64_t p_ = ring[(i) & (RL_RING - 1)]; \
        if (p_ >= 0) { \
            out_ip[i] = t->pool[p_].ip; \
            out_port[i] = t->pool[p_].port; \
            hits++; \
        } else { \
            out_ip[i] = 0; \
            out_port[i] = 0; \
        } \
    } while (0)

int64_t rl_run(const rl_table *t, int64_t n, const uint32_t *src, const uint32_t *dst,
               const uint16_t *sport, const uint16_t *dport, const uint8_t *proto,
               uint32_t *out_ip, uint16_t *out_port) {
    int64_t ring[RL_RING];
    int64_t i, hits = 0;
    const int64_t a = RL_AHEAD;
    if (n <= 2 * a) {
        for (i = 0; i < n; i++) {
            RL_STAGE2(i);
            RL_STAGE3(i);
        }
        return hits;
    }
    for (i = 0; i < 2 * a; i++) RL_STAGE1(i);
    for (i = 0; i < a; i++) RL_STAGE2(i);
    for (i = 0; i < n - 2 * a; i++) {
        RL_STAGE1(i + 2 * a);
        RL_STAGE2(i + a);
        RL_STAGE3(i);
    }
    for (; i < n - a; i++) {
        RL_STAGE2(i + a);
        RL_STAGE3(i);
    }
    for (; i < n; i++) RL_STAGE3(i);
    return hits;
}
