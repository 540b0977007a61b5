/* kp_core.h - the per-packet decision of kproxy_core._engine, in plain C.
 *
 * An exact twin of kproxy_core/_engine_py.py: the same hash, the same bucketed flow
 * and affinity tables (same geometry, same slot choice), the same decision. Nothing
 * here raises or touches Python objects: functions return KP_OK or a status code,
 * which _engine.pyx maps to an exception in one place (_check).
 *
 * Ownership and threads. kp_state (flows, affinity) is owned by the Core and touched
 * only with the Core's lock held, which every lookup and batch holds while it runs. A
 * kp_fam (one family's tables) is owned by its Python _Fam and changed in place by one
 * writer at a time (the Core's writer lock), without the lookups' lock: an update
 * (kp_fam_install) builds new immutable blocks, points keys at their records with
 * release stores and retires what it replaced; readers load the pointers with acquire
 * loads, and those that read two tables for one packet check a seqlock count
 * (kp_gen_begin). Retired memory is freed (kp_fam_reclaim) only by a writer holding the
 * lookups' lock: every lookup that could still read it has ended by then. The one
 * mutable part of a block is its round-robin state (kp_rr, rr_cur): new connections
 * advance it, with the lookups' lock held.
 *
 * Endpoint selectors (kproxy_core/selectors.py holds the reference algorithms, which the
 * twin runs): a record's sel byte says how a new connection picks from its pool.
 *   random       kp_pick(h, n): kube-proxy's uniform choice (the hot path; unchanged)
 *   weighted     a Vose alias column i = kp_pick(h, n), kept iff r < thr[i] with
 *                r = kp_mix(h ^ KP_WEIGHT_SALT), else its alias (kp_al4/kp_al6)
 *   round-robin  rotation, or nginx's smooth weighted round-robin (kp_rr_next)
 *   maglev       tab[tstart + hi64(kp_hash(seed, src, 0, ports) * M)]: the pool's Maglev
 *   source-hash  lookup table, indexed by a hash under the selector's seed, not the
 *                engine's (source-hash: the source address only)
 */
#ifndef KP_CORE_H
#define KP_CORE_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#define KP_INLINE static inline __attribute__((always_inline))
#define KP_NOINLINE __attribute__((noinline))
#define KP_LIKELY(x) __builtin_expect(!!(x), 1)
#define KP_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define KP_PREFETCH(p) __builtin_prefetch((const void *)(p), 1, 3)
#define KP_CTZ(x) __builtin_ctz(x)
#define KP_BSWAP64(x) __builtin_bswap64(x)
#elif defined(_MSC_VER)
#include <intrin.h>
#include <xmmintrin.h>
#define KP_INLINE static __forceinline
#define KP_NOINLINE __declspec(noinline)
#define KP_LIKELY(x) (x)
#define KP_UNLIKELY(x) (x)
#define KP_PREFETCH(p) _mm_prefetch((const char *)(p), _MM_HINT_T0)
static __forceinline int kp_ctz_msvc(unsigned x) { unsigned long i; _BitScanForward(&i, x); return (int)i; }
#define KP_CTZ(x) kp_ctz_msvc(x)
#define KP_BSWAP64(x) _byteswap_uint64(x)
#else
#define KP_INLINE static inline
#define KP_NOINLINE
#define KP_LIKELY(x) (x)
#define KP_UNLIKELY(x) (x)
#define KP_PREFETCH(p) ((void)(p))
static inline int kp_ctz_generic(unsigned x) { int i = 0; while (!(x & 1u)) { x >>= 1; i++; } return i; }
#define KP_CTZ(x) kp_ctz_generic(x)
static inline uint64_t kp_bswap_generic(uint64_t x) {
    uint64_t r = 0; int i; for (i = 0; i < 8; i++) { r = (r << 8) | (x & 0xff); x >>= 8; } return r;
}
#define KP_BSWAP64(x) kp_bswap_generic(x)
#endif

#if defined(__linux__)
#include <sys/mman.h>
#endif

#if defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
#include <emmintrin.h>
#define KP_SSE2 1
#endif

enum { KP_OK = 0, KP_ENOMEM = 1, KP_ETOOBIG = 2 };

#define KP_SLOTS 8
#define KP_AFFINITY_SALT 0x9E3779B97F4A7C15ULL
#define KP_WEIGHT_SALT 0xD6E8FEB86659FD93ULL  /* selectors.WEIGHT_SALT */

/* selector codes: selectors.SELECTOR_CODES */
enum { KP_SEL_RANDOM = 0, KP_SEL_WEIGHTED = 1, KP_SEL_RR = 2, KP_SEL_SH = 3, KP_SEL_MAGLEV = 4 };

/* ------------------------------------------------------------------ hashing */

KP_INLINE uint64_t kp_mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

typedef struct { uint64_t hi, lo; } kp_a6;  /* an IPv6 address as a 128-bit big-endian int */

KP_INLINE int kp_a6_eq(kp_a6 a, kp_a6 b) { return a.hi == b.hi && a.lo == b.lo; }

KP_INLINE uint64_t kp_ports(uint16_t sport, uint16_t dport, uint8_t proto) {
    return ((uint64_t)sport << 24) | ((uint64_t)dport << 8) | proto;
}

KP_INLINE uint64_t kp_hash4(uint64_t seed, uint32_t src, uint32_t dst, uint16_t sport,
                            uint16_t dport, uint8_t proto) {
    return kp_mix(kp_mix(seed ^ (((uint64_t)src << 32) | dst)) ^ kp_ports(sport, dport, proto));
}

KP_INLINE uint64_t kp_hash6(uint64_t seed, kp_a6 src, kp_a6 dst, uint16_t sport,
                            uint16_t dport, uint8_t proto) {
    uint64_t h = kp_mix(seed ^ src.hi);
    h = kp_mix(h ^ src.lo);
    h = kp_mix(h ^ dst.hi);
    h = kp_mix(h ^ dst.lo);
    return kp_mix(h ^ kp_ports(sport, dport, proto));
}

/* aseed = seed + KP_AFFINITY_SALT (mod 2**64); svc is never negative (checked at load) */
KP_INLINE uint64_t kp_ahash4(uint64_t aseed, int32_t svc, uint32_t src) {
    return kp_mix(aseed ^ (((uint64_t)(uint32_t)svc << 32) | src));
}

KP_INLINE uint64_t kp_ahash6(uint64_t aseed, int32_t svc, kp_a6 src) {
    return kp_mix(kp_mix(kp_mix(aseed ^ (uint64_t)(uint32_t)svc) ^ src.hi) ^ src.lo);
}

/* multiply-shift: an index in [0, n) without modulo bias */
KP_INLINE uint32_t kp_pick(uint64_t h, uint32_t n) {
    return (uint32_t)(((h >> 32) * (uint64_t)n) >> 32);
}

/* the high 64 bits of a * b: a Maglev slot is hi64(hash * M), with no division on the
 * packet path and a bias of M / 2**64 instead of a modulo's */
KP_INLINE uint64_t kp_mulhi(uint64_t a, uint64_t b) {
#if defined(__SIZEOF_INT128__)
    __extension__ typedef unsigned __int128 kp_u128;
    return (uint64_t)(((kp_u128)a * b) >> 64);
#elif defined(_MSC_VER) && defined(_M_X64)
    return __umulh(a, b);
#else
    uint64_t al = a & 0xffffffffu, ah = a >> 32, bl = b & 0xffffffffu, bh = b >> 32;
    uint64_t ll = al * bl, lh = al * bh, hl = ah * bl, hh = ah * bh;
    uint64_t mid = (ll >> 32) + (lh & 0xffffffffu) + (hl & 0xffffffffu);
    return hh + (lh >> 32) + (hl >> 32) + (mid >> 32);
#endif
}

KP_INLINE kp_a6 kp_a6_load(const uint8_t *p) {  /* 16 bytes, network order */
    kp_a6 a; uint64_t w;
    memcpy(&w, p, 8); a.hi = KP_BSWAP64(w);
    memcpy(&w, p + 8, 8); a.lo = KP_BSWAP64(w);
    return a;
}

KP_INLINE void kp_a6_store(uint8_t *p, kp_a6 a) {
    uint64_t w = KP_BSWAP64(a.hi); memcpy(p, &w, 8);
    w = KP_BSWAP64(a.lo); memcpy(p + 8, &w, 8);
}

/* Dotted-quad IPv4 exactly as Python's ipaddress accepts it: four groups of 1-3 ASCII
 * digits, no leading zeros, each <= 255. Returns 0 for anything else (the caller then
 * asks ipaddress, which decides and words the error). */
KP_INLINE int kp_parse_ip4(const char *s, size_t n, uint32_t *out) {
    uint32_t v = 0;
    size_t i = 0;
    int parts = 0;
    if (n < 7 || n > 15) return 0;
    for (;;) {
        size_t st = i;
        unsigned o = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            if (i - st == 3) return 0;
            o = o * 10 + (unsigned)(s[i] - '0');
            i++;
        }
        if (i == st || (i - st > 1 && s[st] == '0') || o > 255) return 0;
        v = (v << 8) | o;
        if (++parts == 4) {
            if (i != n) return 0;
            *out = v;
            return 1;
        }
        if (i >= n || s[i] != '.') return 0;
        i++;
    }
}

/* ------------------------------------------------------------------ bucketed tables
 * Buckets of KP_SLOTS slots; tags (16 bits, 0 = empty) live in their own array, so a
 * lookup reads one 16-byte tag group (the tag array of a 1<<18 table is 512 KiB) and
 * then only the record whose tag matches. Records are 32 or 64 bytes, 64-byte aligned:
 * one cache line each. */

typedef struct {
    uint16_t *tags;
    char *recs;
    void *raw;          /* what kp_big_alloc returned (recs is aligned up from it) */
    size_t raw_size, rsize;
    uint64_t nbuckets;  /* a power of two */
    int64_t count;
} kp_table;

/* Zeroed memory for a big table. On Linux, anonymous memory marked for transparent huge
 * pages: random probes into an 8 MiB flow table otherwise miss the TLB on most packets
 * (measured, track=1, 100k flows: 28.9 -> 30.5 M lookups/s). */
static void *kp_big_alloc(size_t size, size_t *raw_size) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (size >= ((size_t)1 << 21)) {
        size_t n = (size + ((size_t)1 << 21) - 1) & ~(((size_t)1 << 21) - 1);
        void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return NULL;
        madvise(p, n, MADV_HUGEPAGE);  /* only a hint: fine if it fails */
        *raw_size = n;
        return p;
    }
#endif
    *raw_size = 0;
    return calloc(size, 1);
}

static void kp_big_free(void *p, size_t raw_size) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (raw_size) { if (p) munmap(p, raw_size); return; }
#endif
    (void)raw_size;
    free(p);
}

KP_INLINE unsigned kp_tagmask(const uint16_t *tg, uint16_t tag) {
#ifdef KP_SSE2
    /* broadcast as 32-bit lanes: GCC builds _mm_set1_epi16 through a 2-byte store and a
     * 4-byte load, a failed store forward (measured: 18.6 vs 28.8 M lookups/s) */
    __m128i v = _mm_loadu_si128((const __m128i *)tg);
    __m128i eq = _mm_cmpeq_epi16(v, _mm_set1_epi32((int)((uint32_t)tag * 0x10001u)));
    return (unsigned)_mm_movemask_epi8(_mm_packs_epi16(eq, _mm_setzero_si128())) & 0xffu;
#else
    unsigned m = 0; int i;
    for (i = 0; i < KP_SLOTS; i++) m |= (unsigned)(tg[i] == tag) << i;
    return m;
#endif
}

KP_INLINE uint64_t kp_bucket(const kp_table *t, uint64_t h) { return (h >> 16) & (t->nbuckets - 1); }
KP_INLINE uint16_t kp_tag(uint64_t h) { uint16_t g = (uint16_t)(h & 0xffff); return g ? g : 1; }

static int kp_table_init(kp_table *t, uint64_t nbuckets, size_t rsize) {
    size_t n;
    memset(t, 0, sizeof(*t));
    if (nbuckets == 0 || nbuckets > (((uint64_t)1) << 40) / (KP_SLOTS * 64)) return KP_ETOOBIG;
    n = (size_t)nbuckets * KP_SLOTS;
    t->tags = (uint16_t *)calloc(n, sizeof(uint16_t));
    t->raw = kp_big_alloc(n * rsize + 64, &t->raw_size);
    t->rsize = rsize;
    if (!t->tags || !t->raw) {
        free(t->tags); kp_big_free(t->raw, t->raw_size);
        memset(t, 0, sizeof(*t));
        return KP_ENOMEM;
    }
    t->recs = (char *)(((uintptr_t)t->raw + 63) & ~(uintptr_t)63);
    t->nbuckets = nbuckets;
    return KP_OK;
}

static void kp_table_free(kp_table *t) {
    free(t->tags); kp_big_free(t->raw, t->raw_size);
    memset(t, 0, sizeof(*t));
}

static void kp_table_clear(kp_table *t) {
    if (t->tags) memset(t->tags, 0, (size_t)t->nbuckets * KP_SLOTS * sizeof(uint16_t));
    t->count = 0;
}

KP_INLINE void kp_table_drop(kp_table *t, uint64_t s) {
    if (t->tags[s]) { t->tags[s] = 0; t->count--; }
}

/* The slot for a key: its own (own >= 0, found by the caller's lookup in this same
 * bucket), else the first empty one, else (live == 0: flows) the first stale one
 * (stamp <= now), else the one with the smallest stamp, the first on ties. */
KP_INLINE uint64_t kp_table_place(kp_table *t, uint64_t h, int64_t own, double now, int live,
                                  size_t rsize, size_t stamp_off) {
    uint64_t b = kp_bucket(t, h);
    uint16_t *tg = t->tags + b * KP_SLOTS;
    const char *base = t->recs + b * KP_SLOTS * rsize;
    unsigned empty;
    int i, stale = -1, oldest = 0;
    if (own >= 0) return (uint64_t)own;
    empty = kp_tagmask(tg, 0);
    if (empty) {
        i = KP_CTZ(empty);
    } else {
#define KP_STAMP(i) (*(const double *)(base + (size_t)(i) * rsize + stamp_off))
        for (i = 0; i < KP_SLOTS; i++) {
            if (stale < 0 && !live && KP_STAMP(i) <= now) stale = i;
            if (KP_STAMP(i) < KP_STAMP(oldest)) oldest = i;
        }
#undef KP_STAMP
        i = stale >= 0 ? stale : oldest;
    }
    if (tg[i] == 0) t->count++;
    tg[i] = kp_tag(h);
    return b * KP_SLOTS + (uint64_t)i;
}

/* flows: 5-tuple -> service, frontend, masquerade and endpoint; stamp = expiry. Both
 * carry the endpoint's address and port (what a batch writes out, and what an update
 * checks against the service's new pools): a flow refers to nothing an update frees. */
typedef struct {
    uint64_t addrs;  /* src << 32 | dst */
    uint16_t sport, dport;
    uint8_t proto, fm;  /* fm: frontend | masquerade << 7 */
    uint16_t ep_port;
    int32_t svc;
    uint32_t ep_addr;
    double stamp;
} kp_flow4;

typedef struct {
    kp_a6 src, dst, ep_addr;
    uint16_t sport, dport, ep_port;
    uint8_t proto, fm;
    int32_t svc, pad_;
    double stamp;
} kp_flow6;

/* affinity: (service, client) -> endpoint address and port, stamp = last use */
typedef struct {
    uint64_t key;  /* svc << 32 | src */
    uint32_t ep_addr;
    uint16_t ep_port, pad_;
    double stamp;
    uint64_t pad2_;
} kp_aff4;

typedef struct {
    kp_a6 src, ep_addr;
    int32_t svc;
    uint16_t ep_port, pad_;
    double stamp;
    uint64_t pad2_[2];
} kp_aff6;

#define KP_REC(t, T, s) ((T *)((t)->recs) + (s))

KP_INLINE int64_t kp_flow4_find(const kp_table *t, uint64_t h, uint64_t addrs, uint16_t sport,
                                uint16_t dport, uint8_t proto) {
    uint64_t b = kp_bucket(t, h);
    unsigned m = kp_tagmask(t->tags + b * KP_SLOTS, kp_tag(h));
    const kp_flow4 *r = KP_REC(t, const kp_flow4, b * KP_SLOTS);
    while (m) {
        int i = KP_CTZ(m);
        if (r[i].addrs == addrs && r[i].sport == sport && r[i].dport == dport && r[i].proto == proto)
            return (int64_t)(b * KP_SLOTS + (uint64_t)i);
        m &= m - 1;
    }
    return -1;
}

KP_INLINE int64_t kp_flow6_find(const kp_table *t, uint64_t h, kp_a6 src, kp_a6 dst,
                                uint16_t sport, uint16_t dport, uint8_t proto) {
    uint64_t b = kp_bucket(t, h);
    unsigned m = kp_tagmask(t->tags + b * KP_SLOTS, kp_tag(h));
    const kp_flow6 *r = KP_REC(t, const kp_flow6, b * KP_SLOTS);
    while (m) {
        int i = KP_CTZ(m);
        if (kp_a6_eq(r[i].src, src) && kp_a6_eq(r[i].dst, dst) && r[i].sport == sport &&
            r[i].dport == dport && r[i].proto == proto)
            return (int64_t)(b * KP_SLOTS + (uint64_t)i);
        m &= m - 1;
    }
    return -1;
}

KP_INLINE int64_t kp_aff4_find(const kp_table *t, uint64_t h, uint64_t key) {
    uint64_t b = kp_bucket(t, h);
    unsigned m = kp_tagmask(t->tags + b * KP_SLOTS, kp_tag(h));
    const kp_aff4 *r = KP_REC(t, const kp_aff4, b * KP_SLOTS);
    while (m) {
        int i = KP_CTZ(m);
        if (r[i].key == key) return (int64_t)(b * KP_SLOTS + (uint64_t)i);
        m &= m - 1;
    }
    return -1;
}

KP_INLINE int64_t kp_aff6_find(const kp_table *t, uint64_t h, int32_t svc, kp_a6 src) {
    uint64_t b = kp_bucket(t, h);
    unsigned m = kp_tagmask(t->tags + b * KP_SLOTS, kp_tag(h));
    const kp_aff6 *r = KP_REC(t, const kp_aff6, b * KP_SLOTS);
    while (m) {
        int i = KP_CTZ(m);
        if (r[i].svc == svc && kp_a6_eq(r[i].src, src)) return (int64_t)(b * KP_SLOTS + (uint64_t)i);
        m &= m - 1;
    }
    return -1;
}

/* ------------------------------------------------------------------ one family's tables
 *
 * Updated in place, read without locks. Everything a packet's decision reads from a
 * service port lives in one immutable block (kp_blk: its records, pools, selector data);
 * the frontend and NodePort tables map keys to record pointers. An update builds new
 * blocks, points the keys at their records with release stores, tombstones the keys it
 * drops, and retires the old blocks, which are freed only once no reader can hold them
 * (the reader side of the protocol is at kp_gen_begin; the writer's at kp_fam_install).
 */

/* a frontend record: 128 bytes, two cache lines. The first holds what every decision
 * reads (action, service, pools) and what the selectors read first; the second is cold
 * (KUBE-FW sources, round-robin state). action[cls]: the action for source class cls
 * (bit 0 pod, bit 1 node-local) of a source allowed by the record's KUBE-FW (the tables'
 * classes 4-7); fw: the record has a KUBE-FW (a non-empty allowed-source list fwl), and a
 * source outside it takes blocked[cls] (classes 0-3). Without one, every source is allowed. */
struct kp_blk;
typedef struct { int64_t total[2]; int32_t pos[2]; uint8_t smooth[2], pad_[6]; } kp_rr;
typedef struct kp_rec {
    uint8_t kind, np_filter, action[4], fw, sel;  /* sel: the port's selector (KP_SEL_*) */
    int32_t svc;
    uint32_t affinity;
    int32_t len[2];
    const void *pool;      /* kp_pe4 / kp_pe6: the cluster pool, then the local one */
    uint64_t seed;         /* Maglev / source-hash */
    const int32_t *tab;    /* their lookup tables: cluster at tab, local at tab + tlen[0] */
    uint32_t tlen[2];
    const void *al;        /* weighted: kp_al4 / kp_al6 columns, parallel to pool */
    /* second line */
    const struct kp_blk *blk;
    const void *fwl;       /* kp_cidr4 / kp_cidr6 [fwn] */
    int32_t fwn;
    uint8_t blocked[4];
    kp_rr *rr;             /* round-robin state (mutable: see the top of this file) */
    int64_t *rr_cur;       /* smooth round-robin's current weights, parallel to pool */
    const uint32_t *w;     /* weights, parallel to pool (weighted, round-robin) */
    uint64_t pad_[2];
} kp_rec;
typedef char kp_rec_is_two_lines[sizeof(kp_rec) == 128 ? 1 : -1];

typedef struct { uint32_t net, mask; } kp_cidr4;  /* net is pre-masked */
typedef struct { kp_a6 net, mask; } kp_cidr6;
/* a pool entry: the endpoint's address and port */
typedef struct { uint32_t addr; uint16_t port, pad_; } kp_pe4;
typedef struct { kp_a6 addr; uint16_t port, pad_[3]; } kp_pe6;
/* a weighted pool's alias column (one per pool entry, at the same index): [0] the
 * entry itself, [1] its alias, copied in, so that a pick reads this one line and not
 * the pool. Keep [0] iff r < thr: thr = ceil(prob * 2**64 / W), so r < thr iff
 * hi64(r * W) < prob, the twin's test, without a multiply by W on the packet path */
typedef struct { uint64_t thr; uint32_t addr[2]; uint16_t port[2]; uint32_t pad_; } kp_al4;
typedef struct { kp_a6 addr[2]; uint64_t thr; uint16_t port[2]; uint8_t pad_[20]; } kp_al6;
/* a key a block's record holds: a frontend (np = 0) or a NodePort (np = 1; addr unused) */
typedef struct { kp_a6 addr; uint16_t port; uint8_t proto, np; int32_t rec; } kp_key;

/* One service port of one family: its records, the keys they hold, its pools and
 * selector data, in one allocation. Immutable once installed, but for rr/rr_cur. */
typedef struct kp_blk {
    int32_t svc, nrec, nkey, nfw;
    int32_t len[2];
    uint8_t sel, v6, pad_[6];
    int64_t tlen[2];
    size_t size;
    kp_rec *rec;
    kp_key *key;
    void *pool;
    uint32_t *w;
    void *al;
    int64_t *rr_cur;
    int32_t *tab;
    void *fw;
    kp_rr rr;
} kp_blk;

/* open addressing, linear probing. A slot's rec: NULL empty, KP_TOMB deleted (its key
 * stays, and only that key may take the slot again), else the record. Readers load rec
 * (acquire) before the key: a slot's key is written before its first release of rec. */
#define KP_TOMB ((const kp_rec *)(uintptr_t)1)
typedef struct { uint32_t addr; uint16_t port; uint8_t proto, sel; const kp_rec *rec; } kp_fe4;
typedef struct { kp_a6 addr; uint16_t port; uint8_t proto, sel; uint32_t pad_; const kp_rec *rec; } kp_fe6;
typedef struct { uint16_t port; uint8_t proto, pad_; uint32_t pad2_; const kp_rec *rec; } kp_np;
/* a table: this header (one line), then cap slots, any number of them: a key's home slot
 * is hi64(hash * cap) (Lemire's multiply-shift range reduction), so a table is sized to
 * its keys (twice as many slots), not to a power of two (up to 4x: 64 B per IPv4 key
 * instead of 32). Published whole: a grown table is a new allocation, and the old one is
 * retired like a block */
typedef struct { uint64_t cap; int64_t live, used; size_t size; uint64_t pad2_[4]; } kp_htab;
#define KP_NEXT(t, i) ((i) + 1 == (t)->cap ? 0 : (i) + 1)
#define KP_SLOTS_OF(T, t) ((T *)((char *)(t) + sizeof(kp_htab)))

/* nftables' cluster-ips set: an active ClusterIP and the service index it reports */
typedef struct { uint32_t addr; int32_t svc; } kp_cip4;
typedef struct { kp_a6 addr; int32_t svc, pad_; uint64_t pad2_; } kp_cip6;

#if defined(__GNUC__) || defined(__clang__)
#define KP_LOAD_ACQ(p) __atomic_load_n(&(p), __ATOMIC_ACQUIRE)
#define KP_STORE_REL(p, v) __atomic_store_n(&(p), (v), __ATOMIC_RELEASE)
#define KP_LOAD_RLX(p) __atomic_load_n(&(p), __ATOMIC_RELAXED)
#define KP_FENCE_ACQ() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define KP_FENCE_REL() __atomic_thread_fence(__ATOMIC_RELEASE)
#else  /* MSVC on x86-64: aligned loads and stores are atomic; volatile keeps their order */
#define KP_LOAD_ACQ(p) (*(volatile const void **)&(p), (p))
#define KP_STORE_REL(p, v) (*(volatile void **)&(p) = (void *)(v))
#define KP_LOAD_RLX(p) (p)
#define KP_FENCE_ACQ() _ReadWriteBarrier()
#define KP_FENCE_REL() _ReadWriteBarrier()
#endif

#define KP_ROUND64(x) (((x) + 63) & ~(size_t)63)

static void *kp_aligned(size_t size) {
    void *p = NULL;
#if defined(_MSC_VER)
    p = _aligned_malloc(size, 64);
    if (p) memset(p, 0, size);
#else
    if (posix_memalign(&p, 64, size) != 0) return NULL;
    memset(p, 0, size);
#endif
    return p;
}
static void kp_aligned_free(void *p) {
#if defined(_MSC_VER)
    _aligned_free(p);
#else
    free(p);
#endif
}

/* Blocks come from an arena of 8 MiB chunks marked for transparent huge pages, in 64-byte
 * size classes with a free list each: a load lays the blocks out one after another, and
 * a lookup's record and pool share one TLB entry with thousands of others (measured,
 * 30,000 ports, stateless: blocks from posix_memalign 28 M/s, from the arena see
 * RESULTS.md). Bigger blocks (ports with hundreds of endpoints) are allocated alone.
 * Used by the family's one writer only. */
#define KP_ARENA_MAX 8192
#define KP_CHUNK ((size_t)8 << 20)
typedef struct {
    char *cur, *end;
    void *free[KP_ARENA_MAX / 64 + 1];
    void **chunk;
    size_t *chunk_raw;
    int64_t nchunk, cchunk;
} kp_arena;

static void *kp_arena_alloc(kp_arena *a, size_t size) {
    size_t c;
    void *p;
    size = KP_ROUND64(size);
    if (size > KP_ARENA_MAX) return kp_aligned(size);
    c = size / 64;
    if (a->free[c]) {
        p = a->free[c];
        a->free[c] = *(void **)p;
        memset(p, 0, size);
        return p;
    }
    if (!a->cur || a->cur + size > a->end) {
        size_t raw = 0;
        char *n;
        if (a->nchunk == a->cchunk) {
            int64_t cc = a->cchunk ? 2 * a->cchunk : 16;
            void **nc = (void **)realloc(a->chunk, sizeof(void *) * (size_t)cc);
            size_t *nr;
            if (!nc) return NULL;
            a->chunk = nc;
            nr = (size_t *)realloc(a->chunk_raw, sizeof(size_t) * (size_t)cc);
            if (!nr) return NULL;
            a->chunk_raw = nr;
            a->cchunk = cc;
        }
        n = (char *)kp_big_alloc(KP_CHUNK, &raw);  /* zeroed */
        if (!n) return NULL;
        a->chunk[a->nchunk] = n;
        a->chunk_raw[a->nchunk++] = raw;
        a->cur = (char *)(((uintptr_t)n + 63) & ~(uintptr_t)63);
        a->end = n + KP_CHUNK;
    }
    p = a->cur;
    a->cur += size;
    return p;
}

static void kp_arena_free(kp_arena *a, void *p, size_t size) {
    size_t c;
    if (!p) return;
    size = KP_ROUND64(size);
    if (size > KP_ARENA_MAX) { kp_aligned_free(p); return; }
    c = size / 64;
    *(void **)p = a->free[c];
    a->free[c] = p;
}

static void kp_arena_destroy(kp_arena *a) {
    int64_t i;
    for (i = 0; i < a->nchunk; i++) kp_big_free(a->chunk[i], a->chunk_raw[i]);
    free(a->chunk); free(a->chunk_raw);
    memset(a, 0, sizeof(*a));
}

typedef struct {
    int v6;
    int check;          /* nftables' cluster-ips-check is on: ncip + nscidr > 0 */
    int sel_any;        /* a port's selector is not random: batches run the loops built with
                         * the selectors (kp_batch*). Set before the first such record is
                         * published (and only then: see _engine.pyx's update) */
    int np_match_all, np_loopback, det_on;
    int32_t nlocal, nnpaddr;
    kp_htab *fe;        /* published: read with KP_LOAD_ACQ */
    kp_htab *np;
    uint32_t *local4, *npaddr4;
    kp_a6 *local6, *npaddr6;
    uint32_t det_mask4, det_net4;
    kp_a6 det_mask6, det_net6;
    /* nftables' cluster-ips-check (cold; all empty in iptables mode), filled by the caller,
     * sorted by kp_fam_sort; fixed for the family's life */
    int32_t ncip, nscidr;
    kp_cip4 *cip4;
    kp_cip6 *cip6;
    kp_cidr4 *scidr4;
    kp_cidr6 *scidr6;
    /* the writer's side (never read by a lookup) */
    kp_blk **svc_blk;   /* service index -> its installed block, or NULL */
    int32_t nsvc;       /* svc_blk's length */
    int64_t nblk, blk_bytes;
    kp_arena arena;     /* where its blocks live */
    void **retired;     /* replaced blocks, and tables (tagged: bit 0), freed by kp_fam_reclaim */
    int64_t nretired, cretired;
    uint64_t pad_[4];
    uint64_t gen;       /* the seqlock of an update: odd while one publishes (own line) */
    uint64_t pad2_[7];
} kp_fam;

static uint64_t kp_pow2_at_least(uint64_t n) {
    uint64_t c = 8;
    while (c < n) c <<= 1;
    return c;
}


/* slots for n keys: n * halves / 2 (at most half used, so probing ends), at least 16 */
static uint64_t kp_table_size(uint64_t n, unsigned halves) {
    uint64_t c = n * halves / 2 + 1;
    return c < 16 ? 16 : c;
}

static kp_htab *kp_htab_new(uint64_t nslots, size_t slot) {
    size_t size = sizeof(kp_htab) + nslots * slot;
    kp_htab *t = (kp_htab *)kp_aligned(size);
    if (!t) return NULL;
    t->cap = nslots;
    t->size = size;
    return t;
}

static void kp_unretire(kp_fam *f, void *p) {
    if ((uintptr_t)p & 1) kp_aligned_free((void *)((uintptr_t)p & ~(uintptr_t)1));
    else kp_arena_free(&f->arena, p, ((kp_blk *)p)->size);
}

static void kp_fam_free(kp_fam *f) {
    int64_t i;
    if (f->svc_blk)  /* the arena goes whole; only blocks outside it one by one */
        for (i = 0; i < f->nsvc; i++)
            if (f->svc_blk[i] && f->svc_blk[i]->size > KP_ARENA_MAX) kp_aligned_free(f->svc_blk[i]);
    for (i = 0; i < f->nretired; i++) {
        void *p = f->retired[i];
        if ((uintptr_t)p & 1 || ((kp_blk *)p)->size > KP_ARENA_MAX) kp_unretire(f, p);
    }
    kp_arena_destroy(&f->arena);
    free(f->svc_blk); free(f->retired);
    kp_aligned_free(f->fe); kp_aligned_free(f->np);
    free(f->local4); free(f->npaddr4); free(f->local6); free(f->npaddr6);
    free(f->cip4); free(f->cip6); free(f->scidr4); free(f->scidr6);
    memset(f, 0, sizeof(*f));
}

#define KP_ALLOC(p, n) do { \
        (p) = calloc((size_t)(n) ? (size_t)(n) : 1, sizeof(*(p))); \
        if (!(p)) { kp_fam_free(f); return KP_ENOMEM; } \
    } while (0)

/* An empty family: the node's address sets (nlocal, nnpaddr) and the cluster-ips-check
 * (ncip, nscidr) for the caller to fill, tables sized for about nfe frontends and nnp
 * NodePorts. Then kp_fam_sort, then kp_fam_install. */
static int kp_fam_init(kp_fam *f, int v6, int32_t nlocal, int32_t nnpaddr, int32_t ncip,
                       int32_t nscidr, int64_t nfe, int64_t nnp) {
    memset(f, 0, sizeof(*f));
    f->v6 = v6; f->nlocal = nlocal; f->nnpaddr = nnpaddr; f->ncip = ncip; f->nscidr = nscidr;
    f->check = ncip > 0 || nscidr > 0;
    f->fe = kp_htab_new(kp_table_size((uint64_t)nfe, 4), v6 ? sizeof(kp_fe6) : sizeof(kp_fe4));
    f->np = kp_htab_new(kp_table_size((uint64_t)nnp, 4), sizeof(kp_np));
    if (!f->fe || !f->np) { kp_fam_free(f); return KP_ENOMEM; }
    if (v6) {
        KP_ALLOC(f->local6, nlocal);
        KP_ALLOC(f->npaddr6, nnpaddr);
        KP_ALLOC(f->cip6, ncip);
        KP_ALLOC(f->scidr6, nscidr);
    } else {
        KP_ALLOC(f->local4, nlocal);
        KP_ALLOC(f->npaddr4, nnpaddr);
        KP_ALLOC(f->cip4, ncip);
        KP_ALLOC(f->scidr4, nscidr);
    }
    return KP_OK;
}
#undef KP_ALLOC

/* Fibonacci hashing (one multiply, the top bits): a frontend lookup is on every new
 * packet's path, and service addresses are dense runs that it spreads evenly. */
KP_INLINE uint64_t kp_fe4_slot(const kp_htab *t, uint32_t addr, uint16_t port, uint8_t proto) {
    return kp_mulhi((((uint64_t)addr << 24) | ((uint64_t)port << 8) | proto) * 0x9E3779B97F4A7C15ULL, t->cap);
}
KP_INLINE uint64_t kp_fe6_slot(const kp_htab *t, kp_a6 a, uint16_t port, uint8_t proto) {
    return kp_mulhi(kp_mix(a.hi ^ kp_mix(a.lo ^ (((uint64_t)port << 8) | proto))), t->cap);
}
KP_INLINE uint64_t kp_np_slot(const kp_htab *t, uint16_t port, uint8_t proto) {
    return kp_mulhi(kp_mix(((uint64_t)port << 8) | proto), t->cap);
}

/* Lookups: the record, or NULL. The loops end: a table is never more than half used. */
KP_INLINE const kp_fe4 *kp_fe4_find(const kp_fam *f, uint32_t addr, uint16_t port, uint8_t proto,
                                    const kp_rec **rec) {
    const kp_htab *t = (const kp_htab *)KP_LOAD_ACQ(f->fe);
    const kp_fe4 *s = KP_SLOTS_OF(const kp_fe4, t);
    uint64_t i = kp_fe4_slot(t, addr, port, proto);
    for (;;) {
        const kp_fe4 *e = &s[i];
        const kp_rec *r = (const kp_rec *)KP_LOAD_ACQ(e->rec);
        if (!r) { *rec = NULL; return e; }
        if (r != KP_TOMB && e->addr == addr && e->port == port && e->proto == proto) { *rec = r; return e; }
        i = KP_NEXT(t, i);
    }
}
KP_INLINE const kp_fe6 *kp_fe6_find(const kp_fam *f, kp_a6 addr, uint16_t port, uint8_t proto,
                                    const kp_rec **rec) {
    const kp_htab *t = (const kp_htab *)KP_LOAD_ACQ(f->fe);
    const kp_fe6 *s = KP_SLOTS_OF(const kp_fe6, t);
    uint64_t i = kp_fe6_slot(t, addr, port, proto);
    for (;;) {
        const kp_fe6 *e = &s[i];
        const kp_rec *r = (const kp_rec *)KP_LOAD_ACQ(e->rec);
        if (!r) { *rec = NULL; return e; }
        if (r != KP_TOMB && kp_a6_eq(e->addr, addr) && e->port == port && e->proto == proto) { *rec = r; return e; }
        i = KP_NEXT(t, i);
    }
}
KP_INLINE const kp_rec *kp_fe4_get(const kp_fam *f, uint32_t addr, uint16_t port, uint8_t proto) {
    const kp_rec *r;
    kp_fe4_find(f, addr, port, proto, &r);
    return r;
}
KP_INLINE const kp_rec *kp_fe6_get(const kp_fam *f, kp_a6 addr, uint16_t port, uint8_t proto) {
    const kp_rec *r;
    kp_fe6_find(f, addr, port, proto, &r);
    return r;
}
KP_INLINE const kp_rec *kp_np_get(const kp_fam *f, uint16_t port, uint8_t proto) {
    const kp_htab *t = (const kp_htab *)KP_LOAD_ACQ(f->np);
    const kp_np *s = KP_SLOTS_OF(const kp_np, t);
    uint64_t i = kp_np_slot(t, port, proto);
    for (;;) {
        const kp_np *e = &s[i];
        const kp_rec *r = (const kp_rec *)KP_LOAD_ACQ(e->rec);
        if (!r) return NULL;
        if (r != KP_TOMB && e->port == port && e->proto == proto) return r;
        i = KP_NEXT(t, i);
    }
}

/* The seqlock on the lookups that read more than one table (a packet that misses the
 * frontend table and is looked up as a NodePort): begin before the frontend lookup,
 * check after the last; a changed (or odd) count means an update published meanwhile, and
 * the lookups run again. One lookup of the frontend table alone needs no check: the
 * record it returns is a whole, immutable state of that port. */
KP_INLINE uint64_t kp_gen_begin(const kp_fam *f) {
    uint64_t g;
    while ((g = KP_LOAD_ACQ(f->gen)) & 1) {
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
        __builtin_ia32_pause();
#endif
    }
    return g;
}
KP_INLINE int kp_gen_same(const kp_fam *f, uint64_t g) {
    KP_FENCE_ACQ();
    return !(g & 1) && KP_LOAD_RLX(f->gen) == g;
}

static int kp_cmp4(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}
static int kp_cmp6(const void *a, const void *b) {
    const kp_a6 *x = (const kp_a6 *)a, *y = (const kp_a6 *)b;
    if (x->hi != y->hi) return x->hi < y->hi ? -1 : 1;
    return x->lo < y->lo ? -1 : x->lo > y->lo;
}

KP_INLINE int kp_in4(const uint32_t *a, int32_t n, uint32_t x) {
    int32_t lo = 0, hi = n;
    /* most addresses asked about (packet sources) lie outside the node's few: one range
     * test instead of a search, which costs every packet a dozen instructions */
    if (n == 0 || x < a[0] || x > a[n - 1]) return 0;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        if (a[mid] < x) lo = mid + 1; else hi = mid;
    }
    return lo < n && a[lo] == x;
}
KP_INLINE int kp_in6(const kp_a6 *a, int32_t n, kp_a6 x) {
    int32_t lo = 0, hi = n;
    if (n == 0 || x.hi < a[0].hi || x.hi > a[n - 1].hi) return 0;  /* as kp_in4 */
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        if (a[mid].hi < x.hi || (a[mid].hi == x.hi && a[mid].lo < x.lo)) lo = mid + 1; else hi = mid;
    }
    return lo < n && kp_a6_eq(a[lo], x);
}

/* the address sets, once the caller has filled them */
static void kp_fam_sort(kp_fam *f) {
    if (f->v6) {
        if (f->nlocal) qsort(f->local6, (size_t)f->nlocal, sizeof(kp_a6), kp_cmp6);
        if (f->nnpaddr) qsort(f->npaddr6, (size_t)f->nnpaddr, sizeof(kp_a6), kp_cmp6);
        if (f->ncip) qsort(f->cip6, (size_t)f->ncip, sizeof(kp_cip6), kp_cmp6);  /* addr first */
    } else {
        if (f->nlocal) qsort(f->local4, (size_t)f->nlocal, sizeof(uint32_t), kp_cmp4);
        if (f->nnpaddr) qsort(f->npaddr4, (size_t)f->nnpaddr, sizeof(uint32_t), kp_cmp4);
        if (f->ncip) qsort(f->cip4, (size_t)f->ncip, sizeof(kp_cip4), kp_cmp4);  /* addr first */
    }
}

/* prob * 2**64 / W rounded up, for 0 <= prob < W < 2**63 (shift-subtract division:
 * portable, and run once per weighted pool entry at load) */
static uint64_t kp_alias_thr(uint64_t prob, uint64_t W) {
    uint64_t rem = prob, q = 0;
    int k;
    for (k = 0; k < 64; k++) {
        rem <<= 1; q <<= 1;
        if (rem >= W) { rem -= W; q |= 1; }
    }
    return q + (rem != 0);
}

/* Vose's alias method in integers, exactly as selectors.alias_table: s_i = w_i * n;
 * small/large are stacks filled in index order; leftovers keep prob = W and alias = i.
 * s, small, large: scratch of n entries each. */
static void kp_alias_build(const uint32_t *w, int32_t n, uint64_t *prob, int32_t *alias,
                           uint64_t *s, int32_t *small, int32_t *large) {
    uint64_t W = 0;
    int32_t i, ns = 0, nl = 0;
    for (i = 0; i < n; i++) W += w[i];
    for (i = 0; i < n; i++) {
        s[i] = (uint64_t)w[i] * (uint64_t)n;
        prob[i] = W;
        alias[i] = i;
        if (s[i] < W) small[ns++] = i; else large[nl++] = i;
    }
    while (ns && nl) {
        int32_t l = small[--ns], g = large[--nl];
        prob[l] = s[l];
        alias[l] = g;
        s[g] = s[g] + s[l] - W;
        if (s[g] < W) small[ns++] = g; else large[nl++] = g;
    }
}

/* ------------------------------------------------------------------ blocks */

/* A zeroed block with room for nrec records, nkey keys, pools of n0 and n1 endpoints,
 * lookup tables of tlen0 and tlen1 entries and nfw KUBE-FW sources; weights, alias columns
 * and round-robin state as its selector needs. The caller fills svc, the pools (pool,
 * and w unless random), tab, fw, keys and each record's kind, np_filter, action, blocked,
 * fwn and fwl (as an index into fw), then calls kp_blk_finish. */
static kp_blk *kp_blk_new(kp_arena *arena, int v6, int32_t nrec, int32_t nkey, int32_t n0, int32_t n1, uint8_t sel,
                          int64_t tlen0, int64_t tlen1, int32_t nfw) {
    size_t npool = (size_t)n0 + (size_t)n1, pe = v6 ? sizeof(kp_pe6) : sizeof(kp_pe4);
    size_t o_rec = KP_ROUND64(sizeof(kp_blk)), o_key, o_pool, o_w, o_al, o_rrc, o_tab, o_fw, size;
    kp_blk *b;
    char *base;
    if (nrec < 0 || nkey < 0 || n0 < 0 || n1 < 0 || tlen0 < 0 || tlen1 < 0 || nfw < 0) return NULL;
    o_key = o_rec + (size_t)nrec * sizeof(kp_rec);
    o_pool = KP_ROUND64(o_key + (size_t)nkey * sizeof(kp_key));
    o_w = o_pool + npool * pe;
    o_al = KP_ROUND64(o_w + (sel != KP_SEL_RANDOM ? npool * sizeof(uint32_t) : 0));
    o_rrc = o_al + (sel == KP_SEL_WEIGHTED ? npool * (v6 ? sizeof(kp_al6) : sizeof(kp_al4)) : 0);
    o_tab = o_rrc + (sel == KP_SEL_RR ? npool * sizeof(int64_t) : 0);
    o_fw = KP_ROUND64(o_tab + (size_t)(tlen0 + tlen1) * sizeof(int32_t));
    size = KP_ROUND64(o_fw + (size_t)nfw * (v6 ? sizeof(kp_cidr6) : sizeof(kp_cidr4)));
    base = (char *)kp_arena_alloc(arena, size);
    if (!base) return NULL;
    b = (kp_blk *)base;
    b->nrec = nrec; b->nkey = nkey; b->nfw = nfw; b->len[0] = n0; b->len[1] = n1;
    b->sel = sel; b->v6 = (uint8_t)v6; b->tlen[0] = tlen0; b->tlen[1] = tlen1; b->size = size;
    b->rec = (kp_rec *)(base + o_rec);
    b->key = (kp_key *)(base + o_key);
    b->pool = base + o_pool;
    b->w = sel != KP_SEL_RANDOM ? (uint32_t *)(base + o_w) : NULL;
    b->al = sel == KP_SEL_WEIGHTED ? (void *)(base + o_al) : NULL;
    b->rr_cur = sel == KP_SEL_RR ? (int64_t *)(base + o_rrc) : NULL;
    b->tab = (int32_t *)(base + o_tab);
    b->fw = base + o_fw;
    return b;
}

/* KUBE-FW source `at` of block b: the network addr/prefix (IPv4 in addr.lo), pre-masked. */
static void kp_blk_set_fw(kp_blk *b, int32_t at, kp_a6 addr, int prefix) {
    if (b->v6) {
        kp_cidr6 *c = (kp_cidr6 *)b->fw + at;
        c->mask.hi = prefix >= 64 ? UINT64_MAX : (prefix <= 0 ? 0 : UINT64_MAX << (64 - prefix));
        c->mask.lo = prefix <= 64 ? 0 : (prefix >= 128 ? UINT64_MAX : UINT64_MAX << (128 - prefix));
        c->net.hi = addr.hi & c->mask.hi;
        c->net.lo = addr.lo & c->mask.lo;
    } else {
        kp_cidr4 *c = (kp_cidr4 *)b->fw + at;
        c->mask = prefix <= 0 ? 0 : (prefix >= 32 ? UINT32_MAX : UINT32_MAX << (32 - prefix));
        c->net = (uint32_t)addr.lo & c->mask;
    }
}

/* The alias columns of one weighted pool (n > 0 entries at pool index st). */
static int kp_blk_alias(kp_blk *b, int32_t st, int32_t n) {
    uint64_t *prob = (uint64_t *)malloc(sizeof(uint64_t) * 2 * (size_t)n), *s, W = 0;
    int32_t *alias = (int32_t *)malloc(sizeof(int32_t) * 3 * (size_t)n), *small, *large, i;
    if (!prob || !alias) { free(prob); free(alias); return KP_ENOMEM; }
    s = prob + n; small = alias + n; large = small + n;
    kp_alias_build(b->w + st, n, prob, alias, s, small, large);
    for (i = 0; i < n; i++) W += b->w[st + i];
    for (i = 0; i < n; i++) {
        /* a full column is its own alias: either branch gives the entry */
        uint64_t thr = prob[i] >= W ? UINT64_MAX : kp_alias_thr(prob[i], W);
        int k;
        for (k = 0; k < 2; k++) {
            int32_t e = st + (k ? alias[i] : i);
            if (b->v6) {
                kp_al6 *a = (kp_al6 *)b->al + st + i;
                a->thr = thr; a->addr[k] = ((kp_pe6 *)b->pool)[e].addr; a->port[k] = ((kp_pe6 *)b->pool)[e].port;
            } else {
                kp_al4 *a = (kp_al4 *)b->al + st + i;
                a->thr = thr; a->addr[k] = ((kp_pe4 *)b->pool)[e].addr; a->port[k] = ((kp_pe4 *)b->pool)[e].port;
            }
        }
    }
    free(prob); free(alias);
    return KP_OK;
}

/* Derive what the caller did not fill: alias columns, round-robin totals, and each
 * record's copies of the port's fields. fwl of a record is an index into fw on entry. */
static int kp_blk_finish(kp_blk *b, uint32_t affinity, uint64_t seed) {
    int32_t i, w;
    for (w = 0; w < 2; w++) {
        int32_t st = w ? b->len[0] : 0, n = b->len[w], k;
        if (n <= 0) continue;
        if (b->sel == KP_SEL_WEIGHTED && kp_blk_alias(b, st, n) != KP_OK) return KP_ENOMEM;
        if (b->sel == KP_SEL_RR) {
            int64_t total = 0;
            uint8_t smooth = 0;
            for (k = 0; k < n; k++) {
                total += b->w[st + k];
                if (b->w[st + k] != b->w[st]) smooth = 1;
            }
            b->rr.total[w] = total;
            b->rr.smooth[w] = smooth;
        }
    }
    for (i = 0; i < b->nrec; i++) {
        kp_rec *r = &b->rec[i];
        size_t fw_at = (size_t)(uintptr_t)r->fwl;
        r->svc = b->svc; r->affinity = affinity; r->len[0] = b->len[0]; r->len[1] = b->len[1];
        r->sel = b->sel; r->pool = b->pool; r->seed = seed; r->tab = b->tab;
        r->tlen[0] = (uint32_t)b->tlen[0]; r->tlen[1] = (uint32_t)b->tlen[1];
        r->al = b->al; r->blk = b; r->rr = &b->rr; r->rr_cur = b->rr_cur; r->w = b->w;
        r->fw = r->fwn > 0;
        r->fwl = (const char *)b->fw + fw_at * (b->v6 ? sizeof(kp_cidr6) : sizeof(kp_cidr4));
    }
    return KP_OK;
}

KP_INLINE const kp_pe4 *kp_pool4(const kp_blk *b, int which) { return (const kp_pe4 *)b->pool + (which ? b->len[0] : 0); }
KP_INLINE const kp_pe6 *kp_pool6(const kp_blk *b, int which) { return (const kp_pe6 *)b->pool + (which ? b->len[0] : 0); }

/* Is this endpoint in either pool of b? */
static int kp_blk_has(const kp_blk *b, kp_a6 addr, uint16_t port) {
    int32_t i, n = b->len[0] + b->len[1];
    if (b->v6) {
        const kp_pe6 *p = (const kp_pe6 *)b->pool;
        for (i = 0; i < n; i++) if (p[i].port == port && kp_a6_eq(p[i].addr, addr)) return 1;
    } else {
        const kp_pe4 *p = (const kp_pe4 *)b->pool;
        for (i = 0; i < n; i++) if (p[i].port == port && p[i].addr == (uint32_t)addr.lo) return 1;
    }
    return 0;
}

/* Does every endpoint of old stay in nb (NULL: none does)? */
static int kp_blk_keeps(const kp_blk *old, const kp_blk *nb) {
    int32_t i, n = old->len[0] + old->len[1];
    if (!n) return 1;
    if (!nb) return 0;
    for (i = 0; i < n; i++) {
        kp_a6 a;
        uint16_t port;
        if (old->v6) { a = ((const kp_pe6 *)old->pool)[i].addr; port = ((const kp_pe6 *)old->pool)[i].port; }
        else { a.hi = 0; a.lo = ((const kp_pe4 *)old->pool)[i].addr; port = ((const kp_pe4 *)old->pool)[i].port; }
        if (!kp_blk_has(nb, a, port)) return 0;
    }
    return 1;
}

/* Round-robin across an update: a pool of the new block continues where the same pool of
 * the old one stopped when it is unchanged (the same endpoints in the same order with the
 * same weights, round-robin in both); any other pool starts at its head. */
static void kp_rr_carry(kp_blk *nb, const kp_blk *ob) {
    int w;
    if (!ob || nb->sel != KP_SEL_RR || ob->sel != KP_SEL_RR) return;
    for (w = 0; w < 2; w++) {
        int32_t n = nb->len[w], a = w ? nb->len[0] : 0, c = w ? ob->len[0] : 0, i;
        int same = n > 0 && n == ob->len[w];
        for (i = 0; same && i < n; i++) {
            same = nb->w[a + i] == ob->w[c + i] &&
                   (nb->v6 ? kp_a6_eq(((kp_pe6 *)nb->pool)[a + i].addr, ((const kp_pe6 *)ob->pool)[c + i].addr) &&
                                 ((kp_pe6 *)nb->pool)[a + i].port == ((const kp_pe6 *)ob->pool)[c + i].port
                           : ((kp_pe4 *)nb->pool)[a + i].addr == ((const kp_pe4 *)ob->pool)[c + i].addr &&
                                 ((kp_pe4 *)nb->pool)[a + i].port == ((const kp_pe4 *)ob->pool)[c + i].port);
        }
        if (!same) continue;
        nb->rr.pos[w] = ob->rr.pos[w];
        if (nb->rr.smooth[w]) memcpy(nb->rr_cur + a, ob->rr_cur + c, sizeof(int64_t) * (size_t)n);
    }
}

/* Round-robin state across a whole load: each round-robin block of nf continues where the
 * same service's block of of stopped (kp_rr_carry). Under the lock lookups hold. */
static void kp_fam_carry(kp_fam *nf, const kp_fam *of) {
    int32_t i;
    if (!of) return;
    for (i = 0; i < nf->nsvc && i < of->nsvc; i++)
        if (nf->svc_blk[i] && of->svc_blk[i]) kp_rr_carry(nf->svc_blk[i], of->svc_blk[i]);
}

/* ------------------------------------------------------------------ the writer */

/* A table with room for `more` further keys at a load of at most 1/2 counting
 * tombstones: the same one, or a rehash of its live keys into a new one (published by
 * the caller; the old one is then retired). */
static kp_htab *kp_htab_ready(kp_htab *t, int64_t more, size_t slot, int kind) {
    kp_htab *n;
    uint64_t i, cap;
    if ((uint64_t)(t->used + more) * 2 <= t->cap) return t;
    cap = kp_table_size((uint64_t)(t->live + more), 5);  /* 2.5 slots a key: room to grow */
    n = kp_htab_new(cap, slot);
    if (!n) return NULL;
    for (i = 0; i < t->cap; i++) {
        uint64_t j;
        if (kind == 0) {
            const kp_fe4 *e = KP_SLOTS_OF(kp_fe4, t) + i;
            kp_fe4 *s = KP_SLOTS_OF(kp_fe4, n);
            if (!e->rec || e->rec == KP_TOMB) continue;
            for (j = kp_fe4_slot(n, e->addr, e->port, e->proto); s[j].rec; j = KP_NEXT(n, j)) {}
            s[j] = *e;
        } else if (kind == 1) {
            const kp_fe6 *e = KP_SLOTS_OF(kp_fe6, t) + i;
            kp_fe6 *s = KP_SLOTS_OF(kp_fe6, n);
            if (!e->rec || e->rec == KP_TOMB) continue;
            for (j = kp_fe6_slot(n, e->addr, e->port, e->proto); s[j].rec; j = KP_NEXT(n, j)) {}
            s[j] = *e;
        } else {
            const kp_np *e = KP_SLOTS_OF(kp_np, t) + i;
            kp_np *s = KP_SLOTS_OF(kp_np, n);
            if (!e->rec || e->rec == KP_TOMB) continue;
            for (j = kp_np_slot(n, e->port, e->proto); s[j].rec; j = KP_NEXT(n, j)) {}
            s[j] = *e;
        }
        n->live++;
        n->used++;
    }
    return n;
}

/* Point a key at a record (the caller made room: kp_htab_ready). */
static void kp_key_put(kp_fam *f, const kp_key *k, const kp_rec *rec) {
    uint64_t i;
    if (k->np) {
        kp_htab *t = f->np;
        kp_np *s = KP_SLOTS_OF(kp_np, t);
        for (i = kp_np_slot(t, k->port, k->proto); s[i].rec; i = KP_NEXT(t, i))
            if (s[i].port == k->port && s[i].proto == k->proto) {
                if (s[i].rec == KP_TOMB) t->live++;
                KP_STORE_REL(s[i].rec, rec);
                return;
            }
        s[i].port = k->port; s[i].proto = k->proto;
        t->live++; t->used++;
        KP_STORE_REL(s[i].rec, rec);
    } else if (f->v6) {
        kp_htab *t = f->fe;
        kp_fe6 *s = KP_SLOTS_OF(kp_fe6, t);
        for (i = kp_fe6_slot(t, k->addr, k->port, k->proto); s[i].rec; i = KP_NEXT(t, i))
            if (kp_a6_eq(s[i].addr, k->addr) && s[i].port == k->port && s[i].proto == k->proto) {
                if (s[i].rec == KP_TOMB) t->live++;
                s[i].sel = rec->sel;  /* a prefetch hint only: may pair with the other record */
                KP_STORE_REL(s[i].rec, rec);
                return;
            }
        s[i].addr = k->addr; s[i].port = k->port; s[i].proto = k->proto; s[i].sel = rec->sel;
        t->live++; t->used++;
        KP_STORE_REL(s[i].rec, rec);
    } else {
        kp_htab *t = f->fe;
        kp_fe4 *s = KP_SLOTS_OF(kp_fe4, t);
        uint32_t a = (uint32_t)k->addr.lo;
        for (i = kp_fe4_slot(t, a, k->port, k->proto); s[i].rec; i = KP_NEXT(t, i))
            if (s[i].addr == a && s[i].port == k->port && s[i].proto == k->proto) {
                if (s[i].rec == KP_TOMB) t->live++;
                s[i].sel = rec->sel;
                KP_STORE_REL(s[i].rec, rec);
                return;
            }
        s[i].addr = a; s[i].port = k->port; s[i].proto = k->proto; s[i].sel = rec->sel;
        t->live++; t->used++;
        KP_STORE_REL(s[i].rec, rec);
    }
}

/* Tombstone a key if it still points into block ob (a record of a replaced port that
 * the update did not give again). */
static void kp_key_drop(kp_fam *f, const kp_key *k, const kp_blk *ob) {
    const kp_rec *lo = ob->rec, *hi = ob->rec + ob->nrec;
    uint64_t i;
#define KP_DROP_IF(T, slot, match) do { \
        kp_htab *t_ = (k->np ? f->np : f->fe); \
        T *s_ = KP_SLOTS_OF(T, t_); \
        for (i = (slot); s_[i].rec; i = KP_NEXT(t_, i)) \
            if (match) { \
                if (s_[i].rec >= lo && s_[i].rec < hi) { KP_STORE_REL(s_[i].rec, KP_TOMB); t_->live--; } \
                return; \
            } \
    } while (0)
    if (k->np) KP_DROP_IF(kp_np, kp_np_slot(f->np, k->port, k->proto), s_[i].port == k->port && s_[i].proto == k->proto);
    else if (f->v6) KP_DROP_IF(kp_fe6, kp_fe6_slot(f->fe, k->addr, k->port, k->proto),
                               kp_a6_eq(s_[i].addr, k->addr) && s_[i].port == k->port && s_[i].proto == k->proto);
    else KP_DROP_IF(kp_fe4, kp_fe4_slot(f->fe, (uint32_t)k->addr.lo, k->port, k->proto),
                    s_[i].addr == (uint32_t)k->addr.lo && s_[i].port == k->port && s_[i].proto == k->proto);
#undef KP_DROP_IF
}

static int kp_retire(kp_fam *f, void *p) {
    if (!p) return KP_OK;
    if (f->nretired == f->cretired) {
        int64_t c = f->cretired ? 2 * f->cretired : 64;
        void **n = (void **)realloc(f->retired, sizeof(void *) * (size_t)c);
        if (!n) return KP_ENOMEM;
        f->retired = n; f->cretired = c;
    }
    f->retired[f->nretired++] = p;
    return KP_OK;
}

/* Free what updates retired. Only when no lookup can still hold it: the caller holds
 * the lock every lookup holds while it reads (see _engine.pyx), or nothing is loaded. */
static void kp_fam_reclaim(kp_fam *f) {
    int64_t i;
    for (i = 0; i < f->nretired; i++) kp_unretire(f, f->retired[i]);
    f->nretired = 0;
}

/* A block built for f and not installed (an update that failed). Writer only. */
static void kp_blk_discard(kp_fam *f, kp_blk *b) {
    if (b) kp_arena_free(&f->arena, b, b->size);
}

/* Install blocks (each replaces the block of its service index, or is new) and remove
 * the ports of `removed`: the one publication of an update (and of a whole load, into an
 * empty family). The writer's half of the protocol:
 *   1. everything that can fail first (room in both tables and in svc_blk, retire list);
 *   2. the seqlock count odd; each new record's keys pointed at it (a release store: a
 *      reader that sees the pointer sees the record); the keys of replaced records that
 *      the update does not give again tombstoned; a grown table published whole;
 *   3. the count even again; replaced blocks and tables retired, freed by
 *      kp_fam_reclaim once the caller knows no lookup started before can still read them.
 * *stale: set when an endpoint of a replaced or removed port is in no pool of its new
 * block (flows to it must go). The service indices are the caller's: 0 <= svc. */
static int kp_fam_install(kp_fam *f, kp_blk **nb, int32_t n, const int32_t *removed, int32_t nrem,
                          int *stale) {
    int64_t nfe = 0, nnp = 0, need = 0;
    int32_t i, maxsvc = -1, k;
    kp_htab *fe, *np;
    kp_blk **gone = NULL;
    int32_t ngone = 0;
    *stale = 0;
    for (i = 0; i < n; i++) {
        for (k = 0; k < nb[i]->nkey; k++) { if (nb[i]->key[k].np) nnp++; else nfe++; }
        if (nb[i]->svc > maxsvc) maxsvc = nb[i]->svc;
    }
    for (i = 0; i < nrem; i++) if (removed[i] > maxsvc) maxsvc = removed[i];
    if (maxsvc >= f->nsvc) {
        int32_t c = f->nsvc ? f->nsvc : 64;
        kp_blk **s;
        while (c <= maxsvc) c = c > 0x3FFFFFFF ? 0x7FFFFFFF : 2 * c;
        s = (kp_blk **)realloc(f->svc_blk, sizeof(kp_blk *) * (size_t)c);
        if (!s) return KP_ENOMEM;
        memset(s + f->nsvc, 0, sizeof(kp_blk *) * (size_t)(c - f->nsvc));
        f->svc_blk = s; f->nsvc = c;
    }
    fe = kp_htab_ready(f->fe, nfe, f->v6 ? sizeof(kp_fe6) : sizeof(kp_fe4), f->v6);
    np = fe ? kp_htab_ready(f->np, nnp, sizeof(kp_np), 2) : NULL;
    need = (int64_t)n + nrem + 2;
    gone = (kp_blk **)malloc(sizeof(kp_blk *) * (size_t)(n + nrem + 1));
    while (fe && np && gone && f->cretired - f->nretired < need) {
        int64_t c = f->cretired ? 2 * f->cretired : 64;
        void **r = (void **)realloc(f->retired, sizeof(void *) * (size_t)c);
        if (!r) break;
        f->retired = r; f->cretired = c;
    }
    if (!fe || !np || !gone || f->cretired - f->nretired < need) {
        if (fe && fe != f->fe) kp_aligned_free(fe);
        if (np && np != f->np) kp_aligned_free(np);
        free(gone);
        return KP_ENOMEM;
    }

    KP_STORE_REL(f->gen, f->gen + 1);  /* odd: lookups that read two tables wait */
    KP_FENCE_REL();
    if (fe != f->fe) { kp_retire(f, (void *)((uintptr_t)f->fe | 1)); KP_STORE_REL(f->fe, fe); }
    if (np != f->np) { kp_retire(f, (void *)((uintptr_t)f->np | 1)); KP_STORE_REL(f->np, np); }
    for (i = 0; i < n; i++) {
        kp_blk *b = nb[i], *ob = f->svc_blk[b->svc];
        kp_rr_carry(b, ob);
        for (k = 0; k < b->nkey; k++) kp_key_put(f, &b->key[k], &b->rec[b->key[k].rec]);
        if (ob) gone[ngone++] = ob;
        f->svc_blk[b->svc] = b;
        f->nblk++; f->blk_bytes += (int64_t)b->size;
    }
    for (i = 0; i < nrem; i++) {
        kp_blk *ob = f->svc_blk[removed[i]];
        if (ob) gone[ngone++] = ob;
        f->svc_blk[removed[i]] = NULL;
    }
    for (i = 0; i < ngone; i++) {
        kp_blk *ob = gone[i];
        for (k = 0; k < ob->nkey; k++) kp_key_drop(f, &ob->key[k], ob);
        if (!kp_blk_keeps(ob, f->svc_blk[ob->svc])) *stale = 1;
        f->nblk--; f->blk_bytes -= (int64_t)ob->size;
        kp_retire(f, ob);
    }
    KP_STORE_REL(f->gen, f->gen + 1);
    free(gone);
    return KP_OK;
}

/* ------------------------------------------------------------------ the decision */

typedef struct {
    uint64_t seed, aseed;   /* aseed = seed + KP_AFFINITY_SALT */
    double timeout[256];    /* flow timeout per IP protocol number (30 s unless set) */
    int stale_udp_only;     /* updates drop stale UDP flows only (kube-proxy's cleanup) */
    kp_table flows[2], aff[2];  /* [0] IPv4, [1] IPv6 */
} kp_state;

/* the endpoint: ep_addr/ep_port (IPv4) or ep6/ep_port (IPv6) */
typedef struct { int32_t svc; uint32_t ep_addr; uint16_t ep_port; uint8_t verdict, fe, masq; kp_a6 ep6; } kp_res;

enum { KP_PASS = 0, KP_DNAT = 1, KP_REJECT = 2, KP_DROP = 3 };

KP_INLINE void kp_set(kp_res *r, uint8_t verdict, int32_t svc, uint8_t fe) {
    r->verdict = verdict; r->svc = svc; r->fe = fe; r->masq = 0;
    r->ep_addr = 0; r->ep_port = 0;
}

KP_INLINE int kp_is_local4(const kp_fam *f, uint32_t a) {
    return (a >> 24) == 0x7F || kp_in4(f->local4, f->nlocal, a);
}
KP_INLINE int kp_is_local6(const kp_fam *f, kp_a6 a) {
    return (a.hi == 0 && a.lo == 1) || kp_in6(f->local6, f->nlocal, a);
}

/* source class: bit 0 = the local detector matches, bit 1 = a node-local address */
KP_INLINE int kp_cls4(const kp_fam *f, uint32_t src) {
    int pod = f->det_on && (src & f->det_mask4) == f->det_net4;
    return pod | (kp_is_local4(f, src) << 1);
}
KP_INLINE int kp_cls6(const kp_fam *f, kp_a6 src) {
    int pod = f->det_on && (src.hi & f->det_mask6.hi) == f->det_net6.hi &&
              (src.lo & f->det_mask6.lo) == f->det_net6.lo;
    return pod | (kp_is_local6(f, src) << 1);
}

/* The action byte of record R for a packet from src: its source class, and for a
 * record with a KUBE-FW whether src is inside one of the allowed CIDRs (a linear scan:
 * the lists are short). */
KP_INLINE uint8_t kp_action4(const kp_fam *f, const kp_rec *R, uint32_t src) {
    int cls = kp_cls4(f, src);
    if (KP_UNLIKELY(R->fw)) {
        const kp_cidr4 *c = (const kp_cidr4 *)R->fwl;
        int32_t i;
        for (i = 0; i < R->fwn; i++)
            if ((src & c[i].mask) == c[i].net) return R->action[cls];
        return R->blocked[cls];
    }
    return R->action[cls];
}
KP_INLINE uint8_t kp_action6(const kp_fam *f, const kp_rec *R, kp_a6 src) {
    int cls = kp_cls6(f, src);
    if (KP_UNLIKELY(R->fw)) {
        const kp_cidr6 *c = (const kp_cidr6 *)R->fwl;
        int32_t i;
        for (i = 0; i < R->fwn; i++)
            if ((src.hi & c[i].mask.hi) == c[i].net.hi && (src.lo & c[i].mask.lo) == c[i].net.lo)
                return R->action[cls];
        return R->blocked[cls];
    }
    return R->action[cls];
}

/* dst is node-local here */
KP_INLINE int kp_np_accepts4(const kp_fam *f, uint32_t dst) {
    if (f->np_match_all) return f->np_loopback || (dst >> 24) != 0x7F;
    return kp_in4(f->npaddr4, f->nnpaddr, dst);
}
KP_INLINE int kp_np_accepts6(const kp_fam *f, kp_a6 dst) {
    if (f->np_match_all) return !(dst.hi == 0 && dst.lo == 1);
    return kp_in6(f->npaddr6, f->nnpaddr, dst);
}

/* nftables' cluster-ips-check, for a packet that matched no frontend and is not
 * addressed to the node (filter forward/output, after DNAT): an active ClusterIP on any
 * port -> REJECT (its service, frontend ClusterIP); an address inside a service CIDR ->
 * DROP; else PASS. Called only when f->check (inlined: a call here costs iptables mode ~6%
 * on packets that miss every frontend, as measured with a 100%-miss batch). */
KP_INLINE void kp_check4(const kp_fam *f, uint32_t dst, kp_res *r) {
    int32_t lo = 0, hi = f->ncip, i;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        if (f->cip4[mid].addr < dst) lo = mid + 1; else hi = mid;
    }
    if (lo < f->ncip && f->cip4[lo].addr == dst) { kp_set(r, KP_REJECT, f->cip4[lo].svc, 1); return; }
    for (i = 0; i < f->nscidr; i++)
        if ((dst & f->scidr4[i].mask) == f->scidr4[i].net) { kp_set(r, KP_DROP, -1, 0); return; }
    kp_set(r, KP_PASS, -1, 0);
}
KP_INLINE void kp_check6(const kp_fam *f, kp_a6 dst, kp_res *r) {
    int32_t lo = 0, hi = f->ncip, i;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        const kp_a6 *a = &f->cip6[mid].addr;
        if (a->hi < dst.hi || (a->hi == dst.hi && a->lo < dst.lo)) lo = mid + 1; else hi = mid;
    }
    if (lo < f->ncip && kp_a6_eq(f->cip6[lo].addr, dst)) {
        kp_set(r, KP_REJECT, f->cip6[lo].svc, 1);
        return;
    }
    for (i = 0; i < f->nscidr; i++)
        if ((dst.hi & f->scidr6[i].mask.hi) == f->scidr6[i].net.hi &&
            (dst.lo & f->scidr6[i].mask.lo) == f->scidr6[i].net.lo) {
            kp_set(r, KP_DROP, -1, 0);
            return;
        }
    kp_set(r, KP_PASS, -1, 0);
}

/* rec argument of kp_decide*: not looked up yet */
#define KP_REC_UNKNOWN ((const kp_rec *)(uintptr_t)2)

/* Round-robin: the pool index a new connection takes (advance) or would take (a
 * read-only lookup). Rotation, or nginx's smooth weighted round-robin over the current
 * weights beside the pool: add w_i to each, take the largest (the first on ties),
 * subtract the pool's total from it. |cur_i| <= total < 2**52: no overflow. */
static int32_t kp_rr_next(const kp_rec *R, int which, int32_t n, int advance) {
    kp_rr *r = R->rr;
    int32_t i, best = 0, off = which ? R->len[0] : 0;
    int64_t *cur;
    const uint32_t *w;
    int64_t bv;
    if (!r->smooth[which]) {
        i = r->pos[which];
        if (advance) r->pos[which] = i + 1 < n ? i + 1 : 0;
        return i;
    }
    cur = R->rr_cur + off;
    w = R->w + off;
    bv = cur[0] + w[0];
    for (i = 1; i < n; i++)
        if (cur[i] + w[i] > bv) { bv = cur[i] + w[i]; best = i; }
    if (advance) {
        for (i = 0; i < n; i++) cur[i] += w[i];
        cur[best] -= r->total[which];
    }
    return best;
}

KP_INLINE const int32_t *kp_tab(const kp_rec *R, int which) { return R->tab + (which ? R->tlen[0] : 0); }

/* Every selector but random (kp_decide* inlines that one): the chosen pool entry of
 * record R's pool `which` (n > 0 entries at pool), or (weighted) its copy in *tmp.
 * advance: round-robin moves on. */
KP_INLINE const kp_pe4 *kp_select4(const kp_rec *R, int which, const kp_pe4 *pool, int32_t n,
                                   uint64_t h, uint32_t src, uint16_t sport, uint16_t dport,
                                   uint8_t proto, int advance, kp_pe4 *tmp) {
    if (R->sel == KP_SEL_WEIGHTED) {
        const kp_al4 *a = (const kp_al4 *)R->al + (which ? R->len[0] : 0) + (int32_t)kp_pick(h, (uint32_t)n);
        int k = kp_mix(h ^ KP_WEIGHT_SALT) >= a->thr;
        tmp->addr = a->addr[k]; tmp->port = a->port[k];
        return tmp;
    }
    if (R->sel == KP_SEL_RR) return &pool[kp_rr_next(R, which, n, advance)];
    {
        uint64_t fh = R->sel == KP_SEL_SH ? kp_hash4(R->seed, src, 0, 0, 0, 0)
                                          : kp_hash4(R->seed, src, 0, sport, dport, proto);
        return &pool[kp_tab(R, which)[(int64_t)kp_mulhi(fh, R->tlen[which])]];
    }
}

KP_INLINE const kp_pe6 *kp_select6(const kp_rec *R, int which, const kp_pe6 *pool, int32_t n,
                                   uint64_t h, kp_a6 src, uint16_t sport, uint16_t dport,
                                   uint8_t proto, int advance, kp_pe6 *tmp) {
    if (R->sel == KP_SEL_WEIGHTED) {
        const kp_al6 *a = (const kp_al6 *)R->al + (which ? R->len[0] : 0) + (int32_t)kp_pick(h, (uint32_t)n);
        int k = kp_mix(h ^ KP_WEIGHT_SALT) >= a->thr;
        tmp->addr = a->addr[k]; tmp->port = a->port[k];
        return tmp;
    }
    if (R->sel == KP_SEL_RR) return &pool[kp_rr_next(R, which, n, advance)];
    {
        kp_a6 zero = {0, 0};
        uint64_t fh = R->sel == KP_SEL_SH ? kp_hash6(R->seed, src, zero, 0, 0, 0)
                                          : kp_hash6(R->seed, src, zero, sport, dport, proto);
        return &pool[kp_tab(R, which)[(int64_t)kp_mulhi(fh, R->tlen[which])]];
    }
}

/* The record and action byte of a new packet: the frontend table, else (to the node)
 * the NodePort table. Returns the record or NULL (*r is then the verdict: PASS or the
 * cluster-ips-check's). rec/g: a frontend lookup the caller made (a batch's prefetch
 * stage) and the seqlock count read before it, or KP_REC_UNKNOWN. */
KP_INLINE const kp_rec *kp_match4(const kp_fam *f, uint32_t src, uint32_t dst, uint16_t dport,
                                  uint8_t proto, const kp_rec *rec, uint64_t g, uint8_t *action,
                                  kp_res *r) {
    if (rec == KP_REC_UNKNOWN) {
        g = kp_gen_begin(f);
        rec = kp_fe4_get(f, dst, dport, proto);
    }
    for (;;) {
        if (rec) { *action = kp_action4(f, rec, src); return rec; }
        if (kp_is_local4(f, dst)) {
            rec = kp_np_get(f, dport, proto);
            if (rec) *action = kp_np_accepts4(f, dst) ? kp_action4(f, rec, src) : rec->np_filter;
            else kp_set(r, KP_PASS, -1, 0);
        } else if (KP_UNLIKELY(f->check)) {
            kp_check4(f, dst, r);
        } else {
            kp_set(r, KP_PASS, -1, 0);
        }
        if (KP_LIKELY(kp_gen_same(f, g))) return rec;
        g = kp_gen_begin(f);  /* an update published between the two lookups: again */
        rec = kp_fe4_get(f, dst, dport, proto);
    }
}
KP_INLINE const kp_rec *kp_match6(const kp_fam *f, kp_a6 src, kp_a6 dst, uint16_t dport,
                                  uint8_t proto, const kp_rec *rec, uint64_t g, uint8_t *action,
                                  kp_res *r) {
    if (rec == KP_REC_UNKNOWN) {
        g = kp_gen_begin(f);
        rec = kp_fe6_get(f, dst, dport, proto);
    }
    for (;;) {
        if (rec) { *action = kp_action6(f, rec, src); return rec; }
        if (kp_is_local6(f, dst)) {
            rec = kp_np_get(f, dport, proto);
            if (rec) *action = kp_np_accepts6(f, dst) ? kp_action6(f, rec, src) : rec->np_filter;
            else kp_set(r, KP_PASS, -1, 0);
        } else if (KP_UNLIKELY(f->check)) {
            kp_check6(f, dst, r);
        } else {
            kp_set(r, KP_PASS, -1, 0);
        }
        if (KP_LIKELY(kp_gen_same(f, g))) return rec;
        g = kp_gen_begin(f);
        rec = kp_fe6_get(f, dst, dport, proto);
    }
}

/* The decision for one IPv4 packet whose hash is h (kp_hash4). track: 0 = flow and
 * affinity tables untouched, 1 = read and write, 2 = read only; a round-robin pick moves
 * its cursor in modes 0 and 1 (a new connection), not in 2. f may be NULL (nothing
 * loaded). sels: f->sel_any, a constant in each batch loop (0: every pick is random).
 * rec, g: see kp_match4. */
KP_INLINE void kp_decide4(kp_state *st, const kp_fam *f, uint32_t src, uint32_t dst,
                          uint16_t sport, uint16_t dport, uint8_t proto, uint64_t h,
                          const kp_rec *rec, uint64_t g, double now, int track, int sels, kp_res *r) {
    kp_table *ft = &st->flows[0], *at = &st->aff[0];
    uint64_t addrs = ((uint64_t)src << 32) | dst, ah = 0, akey = 0;
    int64_t fs = -1, as = -1;
    int32_t svc, n;
    uint32_t timeout;
    uint8_t action = 0, masq;
    int which;
    const kp_rec *R;
    const kp_pe4 *pool, *sel = NULL;
    kp_pe4 tmp;  /* a weighted pick's entry, copied from its alias column */

    if (KP_UNLIKELY(!f)) { kp_set(r, KP_PASS, -1, 0); return; }
    if (track) {
        fs = kp_flow4_find(ft, h, addrs, sport, dport, proto);
        if (fs >= 0) {
            kp_flow4 *fl = KP_REC(ft, kp_flow4, fs);
            if (fl->stamp > now) {
                /* a batch has one `now`: only a flow's first packet in it dirties the line */
                if (track == 1 && fl->stamp != now + st->timeout[proto])
                    fl->stamp = now + st->timeout[proto];
                r->verdict = KP_DNAT; r->svc = fl->svc; r->fe = fl->fm & 0x7f; r->masq = fl->fm >> 7;
                r->ep_addr = fl->ep_addr; r->ep_port = fl->ep_port;
                return;
            }
        }
    }
    R = kp_match4(f, src, dst, dport, proto, rec, g, &action, r);
    if (!R) return;
    svc = R->svc;
    if ((action & 3) != KP_DNAT) {
        if (action & 3) kp_set(r, action & 3, svc, R->kind);
        else kp_set(r, KP_PASS, -1, 0);
        return;
    }
    which = ((action >> 2) & 3) - 1;
    if (which < 0 || R->len[which] <= 0) { kp_set(r, KP_DROP, svc, R->kind); return; }
    pool = (const kp_pe4 *)R->pool + (which ? R->len[0] : 0);
    n = R->len[which];
    timeout = R->affinity;
    if (timeout && track) {
        akey = ((uint64_t)(uint32_t)svc << 32) | src;
        ah = kp_ahash4(st->aseed, svc, src);
        as = kp_aff4_find(at, ah, akey);
        if (as >= 0) {
            const kp_aff4 *a = KP_REC(at, const kp_aff4, as);
            if (now - a->stamp <= (double)timeout) {
                int32_t i;
                for (i = 0; i < n; i++)
                    if (pool[i].addr == a->ep_addr && pool[i].port == a->ep_port) { sel = &pool[i]; break; }
            }
        }
    }
    if (!sel) {
        if (!sels || R->sel == KP_SEL_RANDOM) sel = &pool[kp_pick(h, (uint32_t)n)];
        else sel = kp_select4(R, which, pool, n, h, src, sport, dport, proto, track != 2, &tmp);
    }
    masq = (action >> 4) & 1;
    if (sel->addr == src) masq = 1;
    if (track == 1) {
        uint64_t s;
        if (timeout) {
            kp_aff4 *a;
            s = kp_table_place(at, ah, as, now, 1, sizeof(kp_aff4), offsetof(kp_aff4, stamp));
            a = KP_REC(at, kp_aff4, s);
            a->key = akey; a->ep_addr = sel->addr; a->ep_port = sel->port;
            a->stamp = now;
        }
        s = kp_table_place(ft, h, fs, now, 0, sizeof(kp_flow4), offsetof(kp_flow4, stamp));
        {
            kp_flow4 *fl = KP_REC(ft, kp_flow4, s);
            fl->addrs = addrs; fl->sport = sport; fl->dport = dport; fl->proto = proto;
            fl->fm = (uint8_t)(R->kind | (masq << 7)); fl->svc = svc;
            fl->ep_addr = sel->addr; fl->ep_port = sel->port;
            fl->stamp = now + st->timeout[proto];
        }
    }
    r->verdict = KP_DNAT; r->svc = svc; r->fe = R->kind; r->masq = masq;
    r->ep_addr = sel->addr; r->ep_port = sel->port;
}

KP_INLINE void kp_decide6(kp_state *st, const kp_fam *f, kp_a6 src, kp_a6 dst,
                          uint16_t sport, uint16_t dport, uint8_t proto, uint64_t h,
                          const kp_rec *rec, uint64_t g, double now, int track, int sels, kp_res *r) {
    kp_table *ft = &st->flows[1], *at = &st->aff[1];
    uint64_t ah = 0;
    int64_t fs = -1, as = -1;
    int32_t svc, n;
    uint32_t timeout;
    uint8_t action = 0, masq;
    int which;
    const kp_rec *R;
    const kp_pe6 *pool, *sel = NULL;
    kp_pe6 tmp;

    if (KP_UNLIKELY(!f)) { kp_set(r, KP_PASS, -1, 0); return; }
    if (track) {
        fs = kp_flow6_find(ft, h, src, dst, sport, dport, proto);
        if (fs >= 0) {
            kp_flow6 *fl = KP_REC(ft, kp_flow6, fs);
            if (fl->stamp > now) {
                if (track == 1 && fl->stamp != now + st->timeout[proto])
                    fl->stamp = now + st->timeout[proto];
                kp_set(r, KP_DNAT, fl->svc, fl->fm & 0x7f);
                r->masq = fl->fm >> 7;
                r->ep6 = fl->ep_addr; r->ep_port = fl->ep_port;
                return;
            }
        }
    }
    R = kp_match6(f, src, dst, dport, proto, rec, g, &action, r);
    if (!R) return;
    svc = R->svc;
    if ((action & 3) != KP_DNAT) {
        if (action & 3) kp_set(r, action & 3, svc, R->kind);
        else kp_set(r, KP_PASS, -1, 0);
        return;
    }
    which = ((action >> 2) & 3) - 1;
    if (which < 0 || R->len[which] <= 0) { kp_set(r, KP_DROP, svc, R->kind); return; }
    pool = (const kp_pe6 *)R->pool + (which ? R->len[0] : 0);
    n = R->len[which];
    timeout = R->affinity;
    if (timeout && track) {
        ah = kp_ahash6(st->aseed, svc, src);
        as = kp_aff6_find(at, ah, svc, src);
        if (as >= 0) {
            const kp_aff6 *a = KP_REC(at, const kp_aff6, as);
            if (now - a->stamp <= (double)timeout) {
                int32_t i;
                for (i = 0; i < n; i++)
                    if (kp_a6_eq(pool[i].addr, a->ep_addr) && pool[i].port == a->ep_port) { sel = &pool[i]; break; }
            }
        }
    }
    if (!sel) {
        if (!sels || R->sel == KP_SEL_RANDOM) sel = &pool[kp_pick(h, (uint32_t)n)];
        else sel = kp_select6(R, which, pool, n, h, src, sport, dport, proto, track != 2, &tmp);
    }
    masq = (action >> 4) & 1;
    if (kp_a6_eq(sel->addr, src)) masq = 1;
    if (track == 1) {
        uint64_t s;
        if (timeout) {
            kp_aff6 *a;
            s = kp_table_place(at, ah, as, now, 1, sizeof(kp_aff6), offsetof(kp_aff6, stamp));
            a = KP_REC(at, kp_aff6, s);
            a->svc = svc; a->src = src; a->ep_addr = sel->addr; a->ep_port = sel->port;
            a->stamp = now;
        }
        s = kp_table_place(ft, h, fs, now, 0, sizeof(kp_flow6), offsetof(kp_flow6, stamp));
        {
            kp_flow6 *fl = KP_REC(ft, kp_flow6, s);
            fl->src = src; fl->dst = dst; fl->sport = sport; fl->dport = dport; fl->proto = proto;
            fl->fm = (uint8_t)(R->kind | (masq << 7)); fl->svc = svc;
            fl->ep_addr = sel->addr; fl->ep_port = sel->port;
            fl->stamp = now + st->timeout[proto];
        }
    }
    kp_set(r, KP_DNAT, svc, R->kind);
    r->masq = masq;
    r->ep6 = sel->addr; r->ep_port = sel->port;
}

/* ------------------------------------------------------------------ batch prefetching
 * A batch loop runs three stages ahead of the decision, 3, 2 and 1 times a distance:
 *   stage 1 hashes the packet and prefetches its flow tag group (tracking) or its
 *           frontend slot (not tracking);
 *   stage 2 with tracking reads the tags: a tag match (a known flow, most packets)
 *           prefetches that flow record and is done; otherwise it prefetches the
 *           frontend slot. Without tracking it looks the frontend up and prefetches
 *           its record;
 *   stage 3, for a new flow, looks the frontend up and prefetches its record and, to
 *           write, the slot place() will take (the whole bucket when it is full:
 *           place() reads every stamp); not tracking, it prefetches the pool entries
 *           the pick can land on.
 * Tables with selectors other than random run their own loops (sels = 1, see
 * KP_PIPELINE) with a fourth stage, 4, 3, 2 and 1 times the distance ahead: the
 * frontend entry carries the record's selector, so stage 2 also fetches the record's
 * second line (round-robin state) for round-robin; stage 3 (untracked) fetches what the
 * pick reads first (KP_PREFETCH_SEL); stage 4 then fetches the pool entry a Maglev slot
 * names, or, for a new tracked flow, what stage 3 does untracked.
 * Flow prefetches are hints (the table changes under them). The frontend record found
 * is passed on to the decision with the seqlock count read before the lookup: an update
 * may publish in between, and the record is then a whole old state of its port (the
 * decision's old answer); a packet that missed checks the count (kp_match4).
 * Prefetching only what will be read matters: an extra, unused prefetch per packet (a
 * frontend slot for a known flow) cost a third of the throughput, as it holds a line
 * fill buffer. */
typedef struct { uint64_t h; const kp_rec *rec; uint64_t g; int32_t state, pad_; } kp_pipe;

enum { KP_PIPE_FLOW = 0, KP_PIPE_NEW = 1, KP_PIPE_NEW_W = 2, KP_PIPE_FE = 3 };

KP_INLINE void kp_pipe1_4(const kp_state *st, const kp_fam *f, kp_pipe *p, uint32_t src,
                          uint32_t dst, uint16_t sport, uint16_t dport, uint8_t proto, int track) {
    p->h = kp_hash4(st->seed, src, dst, sport, dport, proto);
    p->rec = KP_REC_UNKNOWN;
    if (!f) return;
    if (track) KP_PREFETCH(st->flows[0].tags + kp_bucket(&st->flows[0], p->h) * KP_SLOTS);
    else {
        const kp_htab *t = (const kp_htab *)KP_LOAD_ACQ(f->fe);
        KP_PREFETCH(KP_SLOTS_OF(const kp_fe4, t) + kp_fe4_slot(t, dst, dport, proto));
    }
}

KP_INLINE void kp_prefetch_place(const kp_table *t, uint64_t b, size_t rsize) {
    const char *base = t->recs + b * KP_SLOTS * rsize;
    unsigned e = kp_tagmask(t->tags + b * KP_SLOTS, 0);
    if (e) {
        KP_PREFETCH(base + (size_t)KP_CTZ(e) * rsize);
    } else {
        size_t off;
        for (off = 0; off < KP_SLOTS * rsize; off += 64) KP_PREFETCH(base + off);
    }
}

/* What a selector other than random reads first (R: the record, p: its kp_pipe; sels
 * loops only). Weighted: the alias column (both its endpoints are copied in). Maglev /
 * source-hash: the table slot (seed, table and sizes are in the record's first line);
 * HASH_MAGLEV / HASH_SOURCE are evaluated only there. Round-robin: the port's cursor,
 * and for smooth pools the current weights and the weights it scans. A macro for both
 * families: only the alias type differs. */
#define KP_PREFETCH_SEL(AL, HASH_MAGLEV, HASH_SOURCE) do { \
        int w_; \
        if (R->sel == KP_SEL_WEIGHTED) { \
            for (w_ = 0; w_ < 2; w_++) { \
                int32_t i_; \
                if (R->len[w_] <= 0) continue; \
                i_ = (w_ ? R->len[0] : 0) + (int32_t)kp_pick(p->h, (uint32_t)R->len[w_]); \
                KP_PREFETCH((const AL *)R->al + i_); \
            } \
        } else if (R->sel == KP_SEL_RR) { \
            KP_PREFETCH(R->rr); \
            for (w_ = 0; w_ < 2; w_++) { \
                if (R->len[w_] <= 0) continue; \
                KP_PREFETCH(R->rr_cur + (w_ ? R->len[0] : 0)); \
                KP_PREFETCH(R->w + (w_ ? R->len[0] : 0)); \
            } \
        } else { \
            uint64_t fh_ = R->sel == KP_SEL_SH ? HASH_SOURCE : HASH_MAGLEV; \
            for (w_ = 0; w_ < 2; w_++) \
                if (R->len[w_] > 0) KP_PREFETCH(&kp_tab(R, w_)[(int64_t)kp_mulhi(fh_, R->tlen[w_])]); \
        } \
    } while (0)

/* The frontend lookup of stages 2-3: the record (prefetched), with the seqlock count.
 * sels: round-robin reads the record's second line next, so fetch it too */
KP_INLINE const kp_rec *kp_fe4_rec(const kp_fam *f, uint32_t dst, uint16_t dport, uint8_t proto,
                                   int sels, uint64_t *g) {
    const kp_rec *rec;
    const kp_fe4 *e;
    *g = KP_LOAD_ACQ(f->gen);
    e = kp_fe4_find(f, dst, dport, proto, &rec);
    if (rec) {
        KP_PREFETCH(rec);
        if (sels && e->sel == KP_SEL_RR) KP_PREFETCH((const char *)rec + 64);
    }
    return rec;
}

KP_INLINE void kp_pipe2_4(const kp_state *st, const kp_fam *f, kp_pipe *p, uint32_t dst,
                          uint16_t dport, uint8_t proto, int track, int sels) {
    if (!f) return;
    if (track) {
        const kp_table *t = &st->flows[0];
        uint64_t b = kp_bucket(t, p->h);
        unsigned m = kp_tagmask(t->tags + b * KP_SLOTS, kp_tag(p->h));
        if (m) {
            KP_PREFETCH(t->recs + (b * KP_SLOTS + (uint64_t)KP_CTZ(m)) * sizeof(kp_flow4));
            p->state = KP_PIPE_FLOW;
            return;
        }
        {
            const kp_htab *h = (const kp_htab *)KP_LOAD_ACQ(f->fe);
            KP_PREFETCH(KP_SLOTS_OF(const kp_fe4, h) + kp_fe4_slot(h, dst, dport, proto));
        }
        p->state = track == 1 ? KP_PIPE_NEW_W : KP_PIPE_NEW;
        return;
    }
    p->rec = kp_fe4_rec(f, dst, dport, proto, sels, &p->g);
    p->state = KP_PIPE_FE;
}

KP_INLINE void kp_pipe3_4(const kp_state *st, const kp_fam *f, kp_pipe *p, uint32_t src,
                          uint32_t dst, uint16_t sport, uint16_t dport, uint8_t proto, int sels) {
    const kp_rec *R;
    if (!f || p->state == KP_PIPE_FLOW) return;
    if (p->state != KP_PIPE_FE) {
        p->rec = kp_fe4_rec(f, dst, dport, proto, sels, &p->g);
        if (p->rec && p->state == KP_PIPE_NEW_W)
            kp_prefetch_place(&st->flows[0], kp_bucket(&st->flows[0], p->h), sizeof(kp_flow4));
        return;
    }
    if (!p->rec) return;
    R = p->rec;
    if (!sels || R->sel == KP_SEL_RANDOM) {
        const kp_pe4 *pool = (const kp_pe4 *)R->pool;
        if (R->len[0] > 0) KP_PREFETCH(&pool[kp_pick(p->h, (uint32_t)R->len[0])]);
        if (R->len[1] > 0) KP_PREFETCH(&pool[R->len[0] + (int32_t)kp_pick(p->h, (uint32_t)R->len[1])]);
    } else {
        KP_PREFETCH_SEL(kp_al4, kp_hash4(R->seed, src, 0, sport, dport, proto),
                        kp_hash4(R->seed, src, 0, 0, 0, 0));
    }
}

/* Stage 4 (sels loops only, between stage 3 and the decision). Without tracking, stage 3
 * fetched what the pick reads first; for Maglev and source-hash that is the table slot,
 * which now names the pool entry to fetch. For a new flow (tracking), stage 3 found the
 * record; now it is here, so fetch what its pick reads (as stage 3 does untracked). */
KP_INLINE void kp_pipe4_4(const kp_fam *f, kp_pipe *p, uint32_t src, uint16_t sport,
                          uint16_t dport, uint8_t proto) {
    const kp_rec *R;
    if (!f || p->state == KP_PIPE_FLOW || !p->rec || p->rec == KP_REC_UNKNOWN) return;
    R = p->rec;
    if (p->state != KP_PIPE_FE) {
        if (R->sel == KP_SEL_RANDOM) {
            const kp_pe4 *pool = (const kp_pe4 *)R->pool;
            if (R->len[0] > 0) KP_PREFETCH(&pool[kp_pick(p->h, (uint32_t)R->len[0])]);
            if (R->len[1] > 0) KP_PREFETCH(&pool[R->len[0] + (int32_t)kp_pick(p->h, (uint32_t)R->len[1])]);
        } else {
            KP_PREFETCH_SEL(kp_al4, kp_hash4(R->seed, src, 0, sport, dport, proto),
                            kp_hash4(R->seed, src, 0, 0, 0, 0));
        }
    } else if (R->sel >= KP_SEL_SH) {
        uint64_t fh = R->sel == KP_SEL_SH ? kp_hash4(R->seed, src, 0, 0, 0, 0)
                                          : kp_hash4(R->seed, src, 0, sport, dport, proto);
        int w;
        for (w = 0; w < 2; w++)
            if (R->len[w] > 0)
                KP_PREFETCH((const kp_pe4 *)R->pool + (w ? R->len[0] : 0) +
                            kp_tab(R, w)[(int64_t)kp_mulhi(fh, R->tlen[w])]);
    }
}

KP_INLINE void kp_pipe1_6(const kp_state *st, const kp_fam *f, kp_pipe *p, kp_a6 src,
                          kp_a6 dst, uint16_t sport, uint16_t dport, uint8_t proto, int track) {
    p->h = kp_hash6(st->seed, src, dst, sport, dport, proto);
    p->rec = KP_REC_UNKNOWN;
    if (!f) return;
    if (track) KP_PREFETCH(st->flows[1].tags + kp_bucket(&st->flows[1], p->h) * KP_SLOTS);
    else {
        const kp_htab *t = (const kp_htab *)KP_LOAD_ACQ(f->fe);
        KP_PREFETCH(KP_SLOTS_OF(const kp_fe6, t) + kp_fe6_slot(t, dst, dport, proto));
    }
}

KP_INLINE const kp_rec *kp_fe6_rec(const kp_fam *f, kp_a6 dst, uint16_t dport, uint8_t proto,
                                   int sels, uint64_t *g) {
    const kp_rec *rec;
    const kp_fe6 *e;
    *g = KP_LOAD_ACQ(f->gen);
    e = kp_fe6_find(f, dst, dport, proto, &rec);
    if (rec) {
        KP_PREFETCH(rec);
        if (sels && e->sel == KP_SEL_RR) KP_PREFETCH((const char *)rec + 64);
    }
    return rec;
}

KP_INLINE void kp_pipe2_6(const kp_state *st, const kp_fam *f, kp_pipe *p, kp_a6 dst,
                          uint16_t dport, uint8_t proto, int track, int sels) {
    if (!f) return;
    if (track) {
        const kp_table *t = &st->flows[1];
        uint64_t b = kp_bucket(t, p->h);
        unsigned m = kp_tagmask(t->tags + b * KP_SLOTS, kp_tag(p->h));
        if (m) {
            KP_PREFETCH(t->recs + (b * KP_SLOTS + (uint64_t)KP_CTZ(m)) * sizeof(kp_flow6));
            p->state = KP_PIPE_FLOW;
            return;
        }
        {
            const kp_htab *h = (const kp_htab *)KP_LOAD_ACQ(f->fe);
            KP_PREFETCH(KP_SLOTS_OF(const kp_fe6, h) + kp_fe6_slot(h, dst, dport, proto));
        }
        p->state = track == 1 ? KP_PIPE_NEW_W : KP_PIPE_NEW;
        return;
    }
    p->rec = kp_fe6_rec(f, dst, dport, proto, sels, &p->g);
    p->state = KP_PIPE_FE;
}

KP_INLINE void kp_pipe3_6(const kp_state *st, const kp_fam *f, kp_pipe *p, kp_a6 src, kp_a6 dst,
                          uint16_t sport, uint16_t dport, uint8_t proto, int sels) {
    const kp_rec *R;
    if (!f || p->state == KP_PIPE_FLOW) return;
    if (p->state != KP_PIPE_FE) {
        p->rec = kp_fe6_rec(f, dst, dport, proto, sels, &p->g);
        if (p->rec && p->state == KP_PIPE_NEW_W)
            kp_prefetch_place(&st->flows[1], kp_bucket(&st->flows[1], p->h), sizeof(kp_flow6));
        return;
    }
    if (!p->rec) return;
    R = p->rec;
    if (!sels || R->sel == KP_SEL_RANDOM) {
        const kp_pe6 *pool = (const kp_pe6 *)R->pool;
        if (R->len[0] > 0) KP_PREFETCH(&pool[kp_pick(p->h, (uint32_t)R->len[0])]);
        if (R->len[1] > 0) KP_PREFETCH(&pool[R->len[0] + (int32_t)kp_pick(p->h, (uint32_t)R->len[1])]);
    } else {
        kp_a6 zero = {0, 0};
        KP_PREFETCH_SEL(kp_al6, kp_hash6(R->seed, src, zero, sport, dport, proto),
                        kp_hash6(R->seed, src, zero, 0, 0, 0));
    }
}

KP_INLINE void kp_pipe4_6(const kp_fam *f, kp_pipe *p, kp_a6 src, uint16_t sport,
                          uint16_t dport, uint8_t proto) {
    const kp_rec *R;
    kp_a6 zero = {0, 0};
    if (!f || p->state == KP_PIPE_FLOW || !p->rec || p->rec == KP_REC_UNKNOWN) return;
    R = p->rec;
    if (p->state != KP_PIPE_FE) {
        if (R->sel == KP_SEL_RANDOM) {
            const kp_pe6 *pool = (const kp_pe6 *)R->pool;
            if (R->len[0] > 0) KP_PREFETCH(&pool[kp_pick(p->h, (uint32_t)R->len[0])]);
            if (R->len[1] > 0) KP_PREFETCH(&pool[R->len[0] + (int32_t)kp_pick(p->h, (uint32_t)R->len[1])]);
        } else {
            KP_PREFETCH_SEL(kp_al6, kp_hash6(R->seed, src, zero, sport, dport, proto),
                            kp_hash6(R->seed, src, zero, 0, 0, 0));
        }
    } else if (R->sel >= KP_SEL_SH) {
        uint64_t fh = R->sel == KP_SEL_SH ? kp_hash6(R->seed, src, zero, 0, 0, 0)
                                          : kp_hash6(R->seed, src, zero, sport, dport, proto);
        int w;
        for (w = 0; w < 2; w++)
            if (R->len[w] > 0)
                KP_PREFETCH((const kp_pe6 *)R->pool + (w ? R->len[0] : 0) +
                            kp_tab(R, w)[(int64_t)kp_mulhi(fh, R->tlen[w])]);
    }
}

/* ------------------------------------------------------------------ batch loops */

#pragma pack(push, 1)
typedef struct {  /* engine.OUT_DTYPE */
    uint8_t verdict; int32_t service; uint8_t frontend; uint32_t ep_ip; uint16_t ep_port; uint8_t masq;
} kp_out4;
typedef struct {  /* engine.OUT6_DTYPE */
    uint8_t verdict; int32_t service; uint8_t frontend; uint8_t ep_ip[16]; uint16_t ep_port; uint8_t masq;
} kp_out6;
#pragma pack(pop)

/* One column of a batch: a typed memoryview's buffer and its stride in bytes. */
typedef struct { const char *p; ptrdiff_t step; } kp_col;
#define KP_AT(T, c, i) (*(const T *)((c).p + (ptrdiff_t)(i) * (c).step))

/* packets between stages; measured (track=1, 100k flows): 3-5 -> 30.7, 8 -> 29.4 M/s */
#define KP_PIPE_AHEAD 4
#ifndef KP_PIPE_AHEAD0
#define KP_PIPE_AHEAD0 8  /* stateless loops (no flow line per packet): measured at 30,000 / 100,000 ports, distance 4: 41 / 30, 8: 50 / 36, 12: 39 / 32, 16: 33 / 26 M/s */
#endif
#define KP_RING 32        /* > 3 * KP_PIPE_AHEAD0, a power of two; twice that with selectors */
typedef char kp_ring_is_big_enough[(KP_RING > 3 * KP_PIPE_AHEAD0) ? 1 : -1];
typedef char kp_ring_is_big_enough_s[(2 * KP_RING > 4 * KP_PIPE_AHEAD0) ? 1 : -1];
#define KP_RI(i) ((i) & ((sels ? 2 * KP_RING : KP_RING) - 1))

/* The stages and the decision over a batch: stage k runs (D - k + 1) * A packets ahead
 * of the decision, D = 3 stages, or 4 with the selectors. sels is a constant: the plain
 * loops (random picks only) are exactly the three-stage loop they were before stage 4
 * (its ring and layout too: measured, a shared loop cost them ~10% on new flows). */
#define KP_PIPELINE() do { \
        if (!sels) { \
            kp_pipe ring[KP_RING]; \
            if (n <= 3 * A) { \
                for (j = 0; j < n; j++) { KP_S1(j); KP_S2(j); KP_S3(j); KP_D(j); } \
                return; \
            } \
            for (i = 0; i < 3 * A; i++) KP_S1(i); \
            for (i = 0; i < 2 * A; i++) KP_S2(i); \
            for (i = 0; i < A; i++) KP_S3(i); \
            for (j = 0; j < n - 3 * A; j++) { \
                KP_S1(j + 3 * A); KP_S2(j + 2 * A); KP_S3(j + A); KP_D(j); \
            } \
            for (; j < n; j++) { \
                if (j + 2 * A < n) KP_S2(j + 2 * A); \
                if (j + A < n) KP_S3(j + A); \
                KP_D(j); \
            } \
        } else { \
            kp_pipe ring[2 * KP_RING]; \
            if (n <= 4 * A) { \
                for (j = 0; j < n; j++) { KP_S1(j); KP_S2(j); KP_S3(j); KP_S4(j); KP_D(j); } \
                return; \
            } \
            for (i = 0; i < 4 * A; i++) KP_S1(i); \
            for (i = 0; i < 3 * A; i++) KP_S2(i); \
            for (i = 0; i < 2 * A; i++) KP_S3(i); \
            for (i = 0; i < A; i++) KP_S4(i); \
            for (j = 0; j < n - 4 * A; j++) { \
                KP_S1(j + 4 * A); KP_S2(j + 3 * A); KP_S3(j + 2 * A); KP_S4(j + A); KP_D(j); \
            } \
            for (; j < n; j++) { \
                if (j + 3 * A < n) KP_S2(j + 3 * A); \
                if (j + 2 * A < n) KP_S3(j + 2 * A); \
                if (j + A < n) KP_S4(j + A); \
                KP_D(j); \
            } \
        } \
    } while (0)

/* The IPv4 batch loop. sport.p == NULL: every source port is 0. The steady state runs
 * every stage without bounds checks (measured: +4% on track=1 over checking each). */
KP_INLINE void kp_batch4_body(kp_state *st, const kp_fam *f, kp_col src, kp_col dst,
                              kp_col dport, kp_col proto, kp_col sport, char *out,
                              ptrdiff_t out_step, int64_t n, double now, kp_col times, int track,
                              int sels) {
    int64_t i, j;
    const int64_t A = track ? KP_PIPE_AHEAD : KP_PIPE_AHEAD0;
#define KP_SP(i) (sport.p ? KP_AT(uint16_t, sport, i) : (uint16_t)0)
/* times.p: each packet's own clock (flow and affinity timeouts), else now for all */
#define KP_NOW(j) (times.p ? KP_AT(double, times, j) : now)
#define KP_S1(i) kp_pipe1_4(st, f, &ring[KP_RI(i)], KP_AT(uint32_t, src, i), \
                            KP_AT(uint32_t, dst, i), KP_SP(i), KP_AT(uint16_t, dport, i), \
                            KP_AT(uint8_t, proto, i), track)
#define KP_S2(i) kp_pipe2_4(st, f, &ring[KP_RI(i)], KP_AT(uint32_t, dst, i), \
                            KP_AT(uint16_t, dport, i), KP_AT(uint8_t, proto, i), track, sels)
#define KP_S3(i) kp_pipe3_4(st, f, &ring[KP_RI(i)], KP_AT(uint32_t, src, i), \
                            KP_AT(uint32_t, dst, i), KP_SP(i), KP_AT(uint16_t, dport, i), \
                            KP_AT(uint8_t, proto, i), sels)
#define KP_S4(i) kp_pipe4_4(f, &ring[KP_RI(i)], KP_AT(uint32_t, src, i), KP_SP(i), \
                            KP_AT(uint16_t, dport, i), KP_AT(uint8_t, proto, i))
#define KP_D(j) do { \
        kp_res r_; kp_out4 *o_ = (kp_out4 *)(out + (ptrdiff_t)(j) * out_step); \
        kp_decide4(st, f, KP_AT(uint32_t, src, j), KP_AT(uint32_t, dst, j), KP_SP(j), \
                   KP_AT(uint16_t, dport, j), KP_AT(uint8_t, proto, j), \
                   ring[KP_RI(j)].h, ring[KP_RI(j)].rec, ring[KP_RI(j)].g, KP_NOW(j), track, sels, &r_); \
        o_->verdict = r_.verdict; o_->service = r_.svc; o_->frontend = r_.fe; \
        o_->ep_ip = r_.ep_addr; o_->ep_port = r_.ep_port; o_->masq = r_.masq; \
    } while (0)
    KP_PIPELINE();
#undef KP_S1
#undef KP_S2
#undef KP_S3
#undef KP_S4
#undef KP_D
}

KP_INLINE kp_a6 kp_row6(kp_col c, ptrdiff_t inner, int64_t i) {
    const char *p = c.p + (ptrdiff_t)i * c.step;
    uint8_t buf[16];
    int k;
    if (inner == 1) return kp_a6_load((const uint8_t *)p);
    for (k = 0; k < 16; k++) buf[k] = *(const uint8_t *)(p + k * inner);
    return kp_a6_load(buf);
}

/* The loop compiled for contiguous columns (what the Engine passes), with the strides
 * and (for track 0) the mode as constants, each variant its own function; and once
 * more for any strides. Measured on 100k flows: runtime strides 22.5 -> 28.7 M
 * lookups/s (track=1); track=0 as a constant 26.8 -> 36.8. The variants must stay
 * separate functions: inlined into one, track=1 fell to 17.7.
 * Each is built twice more: sels = 0 for tables whose picks are all random, sels = 1
 * when some port has another selector. The selectors' code in the loop, even never
 * run, cost random picks 6-8% (a call in the loop body spills its registers; inlined,
 * the loop outgrew them: stateless 35 -> 30 M/s), so random-only tables keep the loop
 * they had. */
#define KP_VARIANT4(name, SPORT, TRACK, SELS) \
    KP_NOINLINE static void name(kp_state *st, const kp_fam *f, const char *src, const char *dst, \
                                 const char *dport, const char *proto, const char *sport, \
                                 char *out, int64_t n, double now, int track) { \
        kp_col s_ = {src, 4}, d_ = {dst, 4}, dp_ = {dport, 2}, pr_ = {proto, 1}; \
        kp_col sp_ = {SPORT ? sport : NULL, 2}, t_ = {NULL, 0}; \
        (void)track; \
        kp_batch4_body(st, f, s_, d_, dp_, pr_, sp_, out, sizeof(kp_out4), n, now, t_, TRACK, SELS); \
    }
/* each packet's own clock (times, 8 bytes apart), tracking: captures and flow logs */
#define KP_VARIANT4T(name, SPORT, SELS) \
    KP_NOINLINE static void name(kp_state *st, const kp_fam *f, const char *src, const char *dst, \
                                 const char *dport, const char *proto, const char *sport, \
                                 char *out, int64_t n, const char *times) { \
        kp_col s_ = {src, 4}, d_ = {dst, 4}, dp_ = {dport, 2}, pr_ = {proto, 1}; \
        kp_col sp_ = {SPORT ? sport : NULL, 2}, t_ = {times, 8}; \
        kp_batch4_body(st, f, s_, d_, dp_, pr_, sp_, out, sizeof(kp_out4), n, 0.0, t_, 1, SELS); \
    }
KP_VARIANT4T(kp_batch4_sp_tm, 1, 0)
KP_VARIANT4T(kp_batch4_nosp_tm, 0, 0)
KP_VARIANT4T(kp_batch4_sp_tm_s, 1, 1)
KP_VARIANT4T(kp_batch4_nosp_tm_s, 0, 1)
#undef KP_VARIANT4T
KP_VARIANT4(kp_batch4_sp, 1, track, 0)
KP_VARIANT4(kp_batch4_sp_t0, 1, 0, 0)
KP_VARIANT4(kp_batch4_nosp, 0, track, 0)
KP_VARIANT4(kp_batch4_nosp_t0, 0, 0, 0)
KP_VARIANT4(kp_batch4_sp_s, 1, track, 1)
KP_VARIANT4(kp_batch4_sp_t0_s, 1, 0, 1)
KP_VARIANT4(kp_batch4_nosp_s, 0, track, 1)
KP_VARIANT4(kp_batch4_nosp_t0_s, 0, 0, 1)
#undef KP_VARIANT4

KP_NOINLINE static void kp_batch4_any(kp_state *st, const kp_fam *f, kp_col src, kp_col dst,
                                      kp_col dport, kp_col proto, kp_col sport, char *out,
                                      ptrdiff_t out_step, int64_t n, double now, kp_col times,
                                      int track) {
    kp_batch4_body(st, f, src, dst, dport, proto, sport, out, out_step, n, now, times, track,
                   f && f->sel_any);
}

typedef void (*kp_batch4_fn)(kp_state *, const kp_fam *, const char *, const char *, const char *,
                             const char *, const char *, char *, int64_t, double, int);

static void kp_batch4(kp_state *st, const kp_fam *f, kp_col src, kp_col dst, kp_col dport,
                      kp_col proto, kp_col sport, char *out, ptrdiff_t out_step, int64_t n,
                      double now, kp_col times, int track) {
    int s = f && f->sel_any;
    if (times.p && track && times.step == 8 && src.step == 4 && dst.step == 4 && dport.step == 2 &&
        proto.step == 1 && out_step == (ptrdiff_t)sizeof(kp_out4) && (!sport.p || sport.step == 2)) {
        (sport.p ? (s ? kp_batch4_sp_tm_s : kp_batch4_sp_tm) : (s ? kp_batch4_nosp_tm_s : kp_batch4_nosp_tm))(
            st, f, src.p, dst.p, dport.p, proto.p, sport.p, out, n, times.p);
        return;
    }
    if (!times.p && src.step == 4 && dst.step == 4 && dport.step == 2 && proto.step == 1 &&
        out_step == (ptrdiff_t)sizeof(kp_out4)) {
        if (!sport.p) {
            kp_batch4_fn fn = track ? (s ? kp_batch4_nosp_s : kp_batch4_nosp)
                                    : (s ? kp_batch4_nosp_t0_s : kp_batch4_nosp_t0);
            fn(st, f, src.p, dst.p, dport.p, proto.p, NULL, out, n, now, track);
            return;
        }
        if (sport.step == 2) {
            kp_batch4_fn fn = track ? (s ? kp_batch4_sp_s : kp_batch4_sp)
                                    : (s ? kp_batch4_sp_t0_s : kp_batch4_sp_t0);
            fn(st, f, src.p, dst.p, dport.p, proto.p, sport.p, out, n, now, track);
            return;
        }
    }
    kp_batch4_any(st, f, src, dst, dport, proto, sport, out, out_step, n, now, times, track);
}

/* The IPv6 batch loop: src/dst rows of 16 bytes, src_inner/dst_inner bytes apart. */
KP_INLINE void kp_batch6_body(kp_state *st, const kp_fam *f, kp_col src, ptrdiff_t src_inner,
                              kp_col dst, ptrdiff_t dst_inner, kp_col dport, kp_col proto,
                              kp_col sport, char *out, ptrdiff_t out_step, int64_t n, double now,
                              kp_col times, int track, int sels) {
    int64_t i, j;
    const int64_t A = track ? KP_PIPE_AHEAD : KP_PIPE_AHEAD0;
#define KP_S1(i) kp_pipe1_6(st, f, &ring[KP_RI(i)], kp_row6(src, src_inner, i), \
                            kp_row6(dst, dst_inner, i), KP_SP(i), KP_AT(uint16_t, dport, i), \
                            KP_AT(uint8_t, proto, i), track)
#define KP_S2(i) kp_pipe2_6(st, f, &ring[KP_RI(i)], kp_row6(dst, dst_inner, i), \
                            KP_AT(uint16_t, dport, i), KP_AT(uint8_t, proto, i), track, sels)
#define KP_S3(i) kp_pipe3_6(st, f, &ring[KP_RI(i)], kp_row6(src, src_inner, i), \
                            kp_row6(dst, dst_inner, i), KP_SP(i), KP_AT(uint16_t, dport, i), \
                            KP_AT(uint8_t, proto, i), sels)
#define KP_S4(i) kp_pipe4_6(f, &ring[KP_RI(i)], kp_row6(src, src_inner, i), KP_SP(i), \
                            KP_AT(uint16_t, dport, i), KP_AT(uint8_t, proto, i))
#define KP_D(j) do { \
        kp_res r_; kp_out6 *o_ = (kp_out6 *)(out + (ptrdiff_t)(j) * out_step); \
        kp_decide6(st, f, kp_row6(src, src_inner, j), kp_row6(dst, dst_inner, j), KP_SP(j), \
                   KP_AT(uint16_t, dport, j), KP_AT(uint8_t, proto, j), \
                   ring[KP_RI(j)].h, ring[KP_RI(j)].rec, ring[KP_RI(j)].g, KP_NOW(j), track, sels, &r_); \
        o_->verdict = r_.verdict; o_->service = r_.svc; o_->frontend = r_.fe; o_->masq = r_.masq; \
        if (r_.verdict == KP_DNAT) { \
            kp_a6_store(o_->ep_ip, r_.ep6); o_->ep_port = r_.ep_port; \
        } else { \
            memset(o_->ep_ip, 0, 16); o_->ep_port = 0; \
        } \
    } while (0)
    KP_PIPELINE();
#undef KP_S1
#undef KP_S2
#undef KP_S3
#undef KP_S4
#undef KP_D
#undef KP_SP
#undef KP_NOW
}

#define KP_VARIANT6(name, SELS) \
    KP_NOINLINE static void name(kp_state *st, const kp_fam *f, kp_col src, ptrdiff_t src_inner, \
                                 kp_col dst, ptrdiff_t dst_inner, kp_col dport, kp_col proto, \
                                 kp_col sport, char *out, ptrdiff_t out_step, int64_t n, double now, \
                                 kp_col times, int track) { \
        kp_batch6_body(st, f, src, src_inner, dst, dst_inner, dport, proto, sport, out, out_step, n, \
                       now, times, track, SELS); \
    }
KP_VARIANT6(kp_batch6_plain, 0)
KP_VARIANT6(kp_batch6_s, 1)
#undef KP_VARIANT6

static void kp_batch6(kp_state *st, const kp_fam *f, kp_col src, ptrdiff_t src_inner, kp_col dst,
                      ptrdiff_t dst_inner, kp_col dport, kp_col proto, kp_col sport, char *out,
                      ptrdiff_t out_step, int64_t n, double now, kp_col times, int track) {
    (f && f->sel_any ? kp_batch6_s : kp_batch6_plain)(st, f, src, src_inner, dst, dst_inner, dport,
                                                      proto, sport, out, out_step, n, now, times, track);
}

/* ------------------------------------------------------------------ flows across updates */

KP_INLINE int kp_in_sorted(const int32_t *a, int32_t n, int32_t x) {
    int32_t lo = 0, hi = n;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        if (a[mid] < x) lo = mid + 1; else hi = mid;
    }
    return lo < n && a[lo] == x;
}

/* Drop the flows (of the services in the sorted list only[nonly]; only == NULL: all)
 * whose endpoint is in no pool of their service's block in f. udp_only: UDP flows only,
 * as kube-proxy's conntrack cleanup does (TCP and SCTP entries stay until they time out).
 * Returns how many. Results are memoised per (service, endpoint): most flows share one
 * with another flow. */
static int64_t kp_flows_drop(kp_table *t, const kp_fam *f, const int32_t *only, int32_t nonly,
                             int udp_only) {
    uint64_t s, nslots = t->nbuckets * KP_SLOTS, mcap;
    int64_t dropped = 0, mused = 0;
    typedef struct { kp_a6 a; int32_t svc; uint16_t port; uint8_t used, keep; } memo_t;
    memo_t *memo;
    if (!t->tags || t->count == 0) return 0;
    mcap = kp_pow2_at_least(2 * (uint64_t)t->count);
    if (mcap > ((uint64_t)1 << 22)) mcap = (uint64_t)1 << 22;
    memo = (memo_t *)calloc((size_t)mcap, sizeof(memo_t));  /* NULL: no memo */
    for (s = 0; s < nslots; s++) {
        int32_t svc;
        kp_a6 a;
        uint16_t port;
        int keep = -1;
        uint64_t i = 0;
        const kp_blk *b;
        if (!t->tags[s]) continue;
        if (f->v6) {
            const kp_flow6 *fl = KP_REC(t, const kp_flow6, s);
            svc = fl->svc; a = fl->ep_addr; port = fl->ep_port;
            if (udp_only && fl->proto != 17) continue;
        } else {
            const kp_flow4 *fl = KP_REC(t, const kp_flow4, s);
            svc = fl->svc; a.hi = 0; a.lo = fl->ep_addr; port = fl->ep_port;
            if (udp_only && fl->proto != 17) continue;
        }
        if (only && !kp_in_sorted(only, nonly, svc)) continue;
        if (memo) {
            i = kp_mix(a.hi ^ kp_mix(a.lo ^ ((uint64_t)(uint32_t)svc << 16 | port))) & (mcap - 1);
            while (memo[i].used && !(memo[i].svc == svc && memo[i].port == port && kp_a6_eq(memo[i].a, a)))
                i = (i + 1) & (mcap - 1);
            if (memo[i].used) keep = memo[i].keep;
        }
        if (keep < 0) {
            b = (svc >= 0 && svc < f->nsvc) ? f->svc_blk[svc] : NULL;
            keep = b != NULL && kp_blk_has(b, a, port);
            if (memo && (uint64_t)mused < mcap / 2) {
                memo[i].used = 1; memo[i].a = a; memo[i].svc = svc; memo[i].port = port;
                memo[i].keep = (uint8_t)keep; mused++;
            }
        }
        if (!keep) {
            kp_table_drop(t, s);
            dropped++;
        }
    }
    free(memo);
    return dropped;
}

/* ------------------------------------------------------------------ Maglev tables */

/* selectors.maglev_fill in C (the same table, entry for entry): n endpoints with their
 * permutations (offset, skip) and weights take turns claiming their next empty slot;
 * equal weights in plain rounds, else in Envoy's integer order (turn k + 1 of i in the
 * first iteration t after its turn k with t * w_i >= k * max(w), ties by index), kept in
 * a binary heap: O(M log n) however skewed the weights. The caller has checked
 * (selectors.check_maglev): n <= M < 2**31, off < M, 1 <= skip < M (or M = skip = 1),
 * gcd(skip, M) == 1 (so every walk reaches every slot), 1 <= w < 2**32. Stepping by
 * c += skip; if (c >= M) c -= M stays below 2**32 and needs no N x M permutation array. */
typedef struct { uint64_t t; int32_t i, pad_; } kp_turn;

KP_INLINE int kp_turn_lt(kp_turn a, kp_turn b) { return a.t < b.t || (a.t == b.t && a.i < b.i); }

static void kp_heap_down(kp_turn *h, int32_t n, int32_t k) {
    kp_turn x = h[k];
    for (;;) {
        int32_t c = 2 * k + 1;
        if (c >= n) break;
        if (c + 1 < n && kp_turn_lt(h[c + 1], h[c])) c++;
        if (!kp_turn_lt(h[c], x)) break;
        h[k] = h[c];
        k = c;
    }
    h[k] = x;
}

static int kp_maglev_fill(int32_t *table, uint32_t M, int32_t n, const uint32_t *off,
                          const uint32_t *skip, const uint32_t *w) {
    uint32_t *pos, s;
    int64_t filled = 0;
    int32_t i, uniform = 1;
    for (s = 0; s < M; s++) table[s] = -1;
    if (n <= 0) return KP_OK;
    pos = (uint32_t *)malloc(sizeof(uint32_t) * (size_t)n);
    if (!pos) return KP_ENOMEM;
    for (i = 0; i < n; i++) {
        pos[i] = off[i];
        if (w[i] != w[0]) uniform = 0;
    }
#define KP_TURN(i) do { \
        uint32_t c_ = pos[i], k_ = skip[i]; \
        while (table[c_] >= 0) { c_ += k_; if (c_ >= M) c_ -= M; } \
        table[c_] = (i); \
        c_ += k_; if (c_ >= M) c_ -= M; \
        pos[i] = c_; \
    } while (0)
    if (uniform) {
        for (;;)
            for (i = 0; i < n; i++) {
                KP_TURN(i);
                if (++filled == (int64_t)M) goto done;
            }
    } else {
        kp_turn *heap = (kp_turn *)malloc(sizeof(kp_turn) * (size_t)n);
        uint64_t *turns = (uint64_t *)calloc((size_t)n, sizeof(uint64_t));
        uint64_t wmax = 0;
        if (!heap || !turns) { free(heap); free(turns); free(pos); return KP_ENOMEM; }
        for (i = 0; i < n; i++) {
            heap[i].t = 1; heap[i].i = i; heap[i].pad_ = 0;  /* sorted: already a heap */
            if (w[i] > wmax) wmax = w[i];
        }
        while (filled < (int64_t)M) {
            kp_turn top = heap[0];
            uint64_t due;
            i = top.i;
            KP_TURN(i);
            filled++;
            turns[i]++;
            due = (turns[i] * wmax + w[i] - 1) / w[i];
            heap[0].t = due > top.t + 1 ? due : top.t + 1;
            kp_heap_down(heap, n, 0);
        }
        free(heap); free(turns);
    }
#undef KP_TURN
done:
    free(pos);
    return KP_OK;
}

#endif /* KP_CORE_H */
