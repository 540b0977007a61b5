/* kp_core.h - the per-packet decision of kproxy_core._engine, in plain C.
 *
 * An exact twin of kproxy_core/_engine_py.py: the same hash, the same bucketed flow
 * and affinity tables (same geometry, same slot choice), the same decision. Nothing
 * here raises or touches Python objects: functions return KP_OK or a status code,
 * which _engine.pyx maps to an exception in one place (_check).
 *
 * Ownership: a kp_fam (one family's tables) is built once by _engine.pyx, never
 * changed afterwards, and freed by its Python owner; kp_state (flows, affinity) is
 * owned by the Core and only touched with the Core's lock held. The one exception in
 * kp_fam is the round-robin state (kp_fam.rr, rr_cur): new connections advance it, so it
 * is written by decisions, and like kp_state only with the Core's lock held.
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
    int32_t *aux;       /* IPv4 flows: the endpoint index of each slot (cold: per-call only) */
    void *raw;          /* what kp_big_alloc returned (recs is aligned up from it) */
    size_t raw_size;
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

static int kp_table_init(kp_table *t, uint64_t nbuckets, size_t rsize, int aux) {
    size_t n;
    memset(t, 0, sizeof(*t));
    if (nbuckets == 0 || nbuckets > (((uint64_t)1) << 40) / (KP_SLOTS * 64)) return KP_ETOOBIG;
    n = (size_t)nbuckets * KP_SLOTS;
    t->tags = (uint16_t *)calloc(n, sizeof(uint16_t));
    t->raw = kp_big_alloc(n * rsize + 64, &t->raw_size);
    if (aux) t->aux = (int32_t *)calloc(n, sizeof(int32_t));
    if (!t->tags || !t->raw || (aux && !t->aux)) {
        free(t->tags); kp_big_free(t->raw, t->raw_size); free(t->aux);
        memset(t, 0, sizeof(*t));
        return KP_ENOMEM;
    }
    t->recs = (char *)(((uintptr_t)t->raw + 63) & ~(uintptr_t)63);
    t->nbuckets = nbuckets;
    return KP_OK;
}

static void kp_table_free(kp_table *t) {
    free(t->tags); kp_big_free(t->raw, t->raw_size); free(t->aux);
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

/* flows: 5-tuple -> service, frontend, masquerade and endpoint; stamp = expiry.
 * IPv4 carries the endpoint's address and port (what a batch writes out) and keeps its
 * index in kp_table.aux, to fit 32 bytes; IPv6 carries the index. */
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
    kp_a6 src, dst;
    uint16_t sport, dport;
    uint8_t proto, fm, pad_[2];
    int32_t svc, ep;
    double stamp;
    uint64_t pad2_;
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

/* ------------------------------------------------------------------ one family's tables */

/* a frontend record with its service port's fields copied in: one 32-byte load.
 * action[cls]: the action for source class cls (bit 0 pod, bit 1 node-local) of a source
 * allowed by the record's KUBE-FW (the tables' classes 4-7). fw: the record has a
 * KUBE-FW (a non-empty allowed-source list in kp_fam.fwrec); a source outside the list
 * then takes kp_fam.fwrec[rec].blocked[cls] (classes 0-3). Without one, every source is
 * allowed. */
typedef struct {
    uint8_t kind, np_filter, action[4], fw, sel;  /* sel: the port's selector (KP_SEL_*) */
    int32_t svc;
    uint32_t affinity;
    int32_t start[2], len[2];
} kp_rec;
/* a service port. sel, seed, tstart/tlen: its selector, the Maglev/source-hash seed and
 * each pool's lookup table in kp_fam.tab (filled by the caller) */
typedef struct {
    int32_t svc; uint32_t affinity; int32_t start[2]; int32_t len[2];
    uint64_t seed; int32_t tstart[2]; uint32_t tlen[2]; uint8_t sel;
} kp_port;
/* a record's selector data beside kp_rec (cold: read only when sel is not random) */
typedef struct { uint64_t seed; int32_t tstart[2]; uint32_t tlen[2]; int32_t port, pad_; } kp_rsel;
/* round-robin state of a port's two pools: the rotation's next index, or (smooth) the
 * current weights in kp_fam.rr_cur beside the pool; total = the pool's Σw */
typedef struct { int64_t total[2]; int32_t pos[2]; uint8_t smooth[2], pad_[6]; } kp_rr;
/* a record's KUBE-FW (cold: read only for records with fw set): its allowed sources are
 * fw4/fw6[start .. start + len), and the actions for sources outside them */
typedef struct { int32_t start, len; uint8_t blocked[4]; } kp_fwrec;
typedef struct { uint32_t net, mask; } kp_cidr4;  /* net is pre-masked */
typedef struct { kp_a6 net, mask; } kp_cidr6;
typedef struct { uint32_t addr; uint16_t port, pad_; } kp_ep4;
typedef struct { kp_a6 addr; uint16_t port, pad_[3]; } kp_ep6;
/* a pool entry with its endpoint's address and port copied in */
typedef struct { int32_t ep; uint32_t addr; uint16_t port, pad_; uint32_t pad2_; } kp_pe4;
typedef struct { kp_a6 addr; int32_t ep; uint16_t port, pad_; uint64_t pad2_; } kp_pe6;
/* a weighted pool's alias column (one per pool entry, at the same index): [0] the
 * entry itself, [1] its alias, copied in, so that a pick reads this one line and not
 * the pool. Keep [0] iff r < thr: thr = ceil(prob * 2**64 / W), so r < thr iff
 * hi64(r * W) < prob, the twin's test, without a multiply by W on the packet path */
typedef struct { uint64_t thr; uint32_t addr[2]; int32_t ep[2]; uint16_t port[2]; uint32_t pad_; } kp_al4;
typedef struct { kp_a6 addr[2]; uint64_t thr; int32_t ep[2]; uint16_t port[2]; uint8_t pad_[12]; } kp_al6;
/* open addressing, linear probing, load <= 1/2; rec < 0 marks an empty slot */
/* sel: the record's selector (set by kp_fam_index), so that a batch's frontend lookup
 * knows what the pick will read two stages before the decision */
typedef struct { uint32_t addr; uint16_t port; uint8_t proto, sel; int32_t rec, pad2_; } kp_fe4;
typedef struct { kp_a6 addr; uint16_t port; uint8_t proto, sel; int32_t rec; uint64_t pad2_; } kp_fe6;
typedef struct { uint16_t port; uint8_t proto, pad_; int32_t rec; } kp_np;
/* nftables' cluster-ips set: an active ClusterIP and the service index it reports */
typedef struct { uint32_t addr; int32_t svc; } kp_cip4;
typedef struct { kp_a6 addr; int32_t svc, pad_; uint64_t pad2_; } kp_cip6;

typedef struct {
    int v6;
    int check;          /* nftables' cluster-ips-check is on: ncip + nscidr > 0 (beside the
                         * counts: the miss path reads nlocal from this line anyway) */
    int32_t nrec, nport, npool, nep, nfe, nnp, nlocal, nnpaddr, nsvc, nfw;
    /* filled by the caller */
    int32_t *rec_port;
    kp_rec *rec;     /* kind, np_filter, action, fw; kp_fam_index copies the port's fields */
    kp_fwrec *fwrec; /* per record */
    kp_cidr4 *fw4;
    kp_cidr6 *fw6;
    kp_port *port;
    int32_t *pool_ep;
    kp_ep4 *ep4;
    kp_ep6 *ep6;
    uint32_t *local4, *npaddr4;
    kp_a6 *local6, *npaddr6;
    int np_match_all, np_loopback, det_on;
    uint32_t det_mask4, det_net4;
    kp_a6 det_mask6, det_net6;
    /* built by kp_fe*_put, kp_np_put and kp_fam_index */
    kp_fe4 *fe4;
    kp_fe6 *fe6;
    uint64_t fe_mask;
    int fe_shift;       /* 64 - log2(fe_mask + 1) */
    kp_np *np;
    uint64_t np_mask;
    kp_pe4 *pool4;
    kp_pe6 *pool6;
    int32_t *svc_port;  /* service index -> its port here (the last one), or -1 */
    /* nftables' cluster-ips-check (cold; all empty in iptables mode): allocated by
     * kp_fam_alloc_check, filled by the caller, sorted by kp_fam_index */
    int32_t ncip, nscidr;
    kp_cip4 *cip4;
    kp_cip6 *cip6;
    kp_cidr4 *scidr4;
    kp_cidr6 *scidr6;
    /* selectors, last: the older fields keep their offsets, so the plain (random-only)
     * loops compile as before. pool_w and tab are filled by the caller (tab: the Maglev /
     * source-hash lookup tables, entries index a pool); rsel, al4/al6, rr, rr_cur by
     * kp_fam_index */
    int64_t ntab, nal, nrrcur;
    size_t tab_raw, al_raw;  /* kp_big_alloc's sizes: tab and al4/al6 are huge-page backed */
    uint32_t *pool_w;
    int32_t *tab;
    kp_rsel *rsel;
    kp_al4 *al4;
    kp_al6 *al6;
    kp_rr *rr;          /* per port; mutable (see the top of this file) */
    int64_t *rr_cur;    /* per pool entry (nrrcur: npool if any port is round-robin) */
    int sel_any;        /* a port's selector is not random: batches run the loops built with
                         * the selectors (kp_batch*); random-only tables run the plain ones */
} kp_fam;

static uint64_t kp_pow2_at_least(uint64_t n) {
    uint64_t c = 8;
    while (c < n) c <<= 1;
    return c;
}

static void kp_fam_free(kp_fam *f) {
    free(f->rec_port); free(f->rec); free(f->port); free(f->pool_ep); free(f->ep4);
    free(f->ep6); free(f->local4); free(f->npaddr4); free(f->local6); free(f->npaddr6);
    free(f->fe4); free(f->fe6); free(f->np); free(f->pool4); free(f->pool6); free(f->svc_port);
    free(f->fwrec); free(f->fw4); free(f->fw6);
    free(f->cip4); free(f->cip6); free(f->scidr4); free(f->scidr6);
    free(f->pool_w); free(f->rsel); free(f->rr); free(f->rr_cur);
    kp_big_free(f->tab, f->tab_raw);
    kp_big_free(f->v6 ? (void *)f->al6 : (void *)f->al4, f->al_raw);
    memset(f, 0, sizeof(*f));
}

#define KP_ALLOC(p, n) do { \
        (p) = calloc((size_t)(n) ? (size_t)(n) : 1, sizeof(*(p))); \
        if (!(p)) { kp_fam_free(f); return KP_ENOMEM; } \
    } while (0)

/* Zeroed arrays for the given sizes; the caller fills rec_port, rec (kind, np_filter,
 * action, fw), fwrec, fw*, port, pool_ep, pool_w, tab, ep*, local*, npaddr* and the flags,
 * puts the frontends and NodePorts, then calls kp_fam_index. nal / nrrcur: npool if a
 * port is weighted / round-robin, else 0 (random-only tables carry no selector state). */
static int kp_fam_alloc(kp_fam *f, int v6, int32_t nrec, int32_t nport, int32_t npool,
                        int32_t nep, int32_t nfe, int32_t nnp, int32_t nlocal, int32_t nnpaddr,
                        int32_t nsvc, int32_t nfw, int64_t ntab, int32_t nal, int32_t nrrcur) {
    uint64_t i;
    memset(f, 0, sizeof(*f));
    f->v6 = v6; f->nrec = nrec; f->nport = nport; f->npool = npool; f->nep = nep;
    f->nfe = nfe; f->nnp = nnp; f->nlocal = nlocal; f->nnpaddr = nnpaddr; f->nsvc = nsvc;
    f->nfw = nfw;
    f->fe_mask = kp_pow2_at_least(2 * (uint64_t)nfe) - 1;
    f->fe_shift = 64;
    for (i = f->fe_mask + 1; i > 1; i >>= 1) f->fe_shift--;
    f->np_mask = kp_pow2_at_least(2 * (uint64_t)nnp) - 1;
    KP_ALLOC(f->rec_port, nrec);
    KP_ALLOC(f->rec, nrec);
    KP_ALLOC(f->fwrec, nrec);
    KP_ALLOC(f->port, nport);
    KP_ALLOC(f->pool_ep, npool);
    KP_ALLOC(f->np, f->np_mask + 1);
    KP_ALLOC(f->svc_port, nsvc);
    f->ntab = ntab; f->nal = nal; f->nrrcur = nrrcur;
    KP_ALLOC(f->pool_w, npool);
    KP_ALLOC(f->rsel, nrec);
    KP_ALLOC(f->rr, nport);
    KP_ALLOC(f->rr_cur, nrrcur);
    /* read at random by every pick of their selectors: huge pages spare the TLB
     * (measured, 10,000 pools of 10, stateless: Maglev 13.3 -> 16.1 M/s, weighted
     * 25.6 -> 27.0) */
    f->tab = (int32_t *)kp_big_alloc(sizeof(int32_t) * (size_t)(ntab ? ntab : 1), &f->tab_raw);
    if (v6) f->al6 = (kp_al6 *)kp_big_alloc(sizeof(kp_al6) * (size_t)(nal ? nal : 1), &f->al_raw);
    else f->al4 = (kp_al4 *)kp_big_alloc(sizeof(kp_al4) * (size_t)(nal ? nal : 1), &f->al_raw);
    if (!f->tab || (v6 ? !f->al6 : !f->al4)) { kp_fam_free(f); return KP_ENOMEM; }
    if (v6) {
        KP_ALLOC(f->ep6, nep);
        KP_ALLOC(f->pool6, npool);
        KP_ALLOC(f->fe6, f->fe_mask + 1);
        KP_ALLOC(f->local6, nlocal);
        KP_ALLOC(f->npaddr6, nnpaddr);
        KP_ALLOC(f->fw6, nfw);
        for (i = 0; i <= f->fe_mask; i++) f->fe6[i].rec = -1;
    } else {
        KP_ALLOC(f->ep4, nep);
        KP_ALLOC(f->pool4, npool);
        KP_ALLOC(f->fe4, f->fe_mask + 1);
        KP_ALLOC(f->local4, nlocal);
        KP_ALLOC(f->npaddr4, nnpaddr);
        KP_ALLOC(f->fw4, nfw);
        for (i = 0; i <= f->fe_mask; i++) f->fe4[i].rec = -1;
    }
    for (i = 0; i <= f->np_mask; i++) f->np[i].rec = -1;
    return KP_OK;
}

/* The cluster-ips-check arrays (after kp_fam_alloc): ncip ClusterIPs, nscidr CIDRs. */
static int kp_fam_alloc_check(kp_fam *f, int32_t ncip, int32_t nscidr) {
    f->ncip = ncip; f->nscidr = nscidr; f->check = ncip > 0 || nscidr > 0;
    if (f->v6) {
        KP_ALLOC(f->cip6, ncip);
        KP_ALLOC(f->scidr6, nscidr);
    } else {
        KP_ALLOC(f->cip4, ncip);
        KP_ALLOC(f->scidr4, nscidr);
    }
    return KP_OK;
}
#undef KP_ALLOC

/* Fibonacci hashing (one multiply, the top bits): a frontend lookup is on every new
 * packet's path, and service addresses are dense runs that it spreads evenly. */
KP_INLINE uint64_t kp_fe4_slot(const kp_fam *f, uint32_t addr, uint16_t port, uint8_t proto) {
    return ((((uint64_t)addr << 24) | ((uint64_t)port << 8) | proto) * 0x9E3779B97F4A7C15ULL) >> f->fe_shift;
}
KP_INLINE uint64_t kp_fe6_slot(const kp_fam *f, kp_a6 a, uint16_t port, uint8_t proto) {
    return kp_mix(a.hi ^ kp_mix(a.lo ^ (((uint64_t)port << 8) | proto))) >> f->fe_shift;
}
KP_INLINE uint64_t kp_np_slot(uint16_t port, uint8_t proto) {
    return kp_mix(((uint64_t)port << 8) | proto);
}

/* Putting a key twice keeps the last record, as a dict does. */
static void kp_fe4_put(kp_fam *f, uint32_t addr, uint16_t port, uint8_t proto, int32_t rec) {
    uint64_t i = kp_fe4_slot(f, addr, port, proto);
    while (f->fe4[i].rec >= 0 &&
           !(f->fe4[i].addr == addr && f->fe4[i].port == port && f->fe4[i].proto == proto))
        i = (i + 1) & f->fe_mask;
    f->fe4[i].addr = addr; f->fe4[i].port = port; f->fe4[i].proto = proto; f->fe4[i].rec = rec;
}
static void kp_fe6_put(kp_fam *f, kp_a6 addr, uint16_t port, uint8_t proto, int32_t rec) {
    uint64_t i = kp_fe6_slot(f, addr, port, proto);
    while (f->fe6[i].rec >= 0 &&
           !(kp_a6_eq(f->fe6[i].addr, addr) && f->fe6[i].port == port && f->fe6[i].proto == proto))
        i = (i + 1) & f->fe_mask;
    f->fe6[i].addr = addr; f->fe6[i].port = port; f->fe6[i].proto = proto; f->fe6[i].rec = rec;
}
static void kp_np_put(kp_fam *f, uint16_t port, uint8_t proto, int32_t rec) {
    uint64_t i = kp_np_slot(port, proto) & f->np_mask;
    while (f->np[i].rec >= 0 && !(f->np[i].port == port && f->np[i].proto == proto))
        i = (i + 1) & f->np_mask;
    f->np[i].port = port; f->np[i].proto = proto; f->np[i].rec = rec;
}

KP_INLINE const kp_fe4 *kp_fe4_find(const kp_fam *f, uint32_t addr, uint16_t port, uint8_t proto) {
    uint64_t i = kp_fe4_slot(f, addr, port, proto);
    for (;;) {
        const kp_fe4 *e = &f->fe4[i];
        if (e->rec < 0 || (e->addr == addr && e->port == port && e->proto == proto)) return e;
        i = (i + 1) & f->fe_mask;
    }
}
KP_INLINE const kp_fe6 *kp_fe6_find(const kp_fam *f, kp_a6 addr, uint16_t port, uint8_t proto) {
    uint64_t i = kp_fe6_slot(f, addr, port, proto);
    for (;;) {
        const kp_fe6 *e = &f->fe6[i];
        if (e->rec < 0 || (kp_a6_eq(e->addr, addr) && e->port == port && e->proto == proto)) return e;
        i = (i + 1) & f->fe_mask;
    }
}
KP_INLINE int32_t kp_fe4_get(const kp_fam *f, uint32_t addr, uint16_t port, uint8_t proto) {
    uint64_t i = kp_fe4_slot(f, addr, port, proto);
    for (;;) {
        const kp_fe4 *e = &f->fe4[i];
        if (e->rec < 0) return -1;
        if (e->addr == addr && e->port == port && e->proto == proto) return e->rec;
        i = (i + 1) & f->fe_mask;
    }
}
KP_INLINE int32_t kp_fe6_get(const kp_fam *f, kp_a6 addr, uint16_t port, uint8_t proto) {
    uint64_t i = kp_fe6_slot(f, addr, port, proto);
    for (;;) {
        const kp_fe6 *e = &f->fe6[i];
        if (e->rec < 0) return -1;
        if (kp_a6_eq(e->addr, addr) && e->port == port && e->proto == proto) return e->rec;
        i = (i + 1) & f->fe_mask;
    }
}
KP_INLINE int32_t kp_np_get(const kp_fam *f, uint16_t port, uint8_t proto) {
    uint64_t i = kp_np_slot(port, proto) & f->np_mask;
    for (;;) {
        const kp_np *e = &f->np[i];
        if (e->rec < 0) return -1;
        if (e->port == port && e->proto == proto) return e->rec;
        i = (i + 1) & f->np_mask;
    }
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
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        if (a[mid] < x) lo = mid + 1; else hi = mid;
    }
    return lo < n && a[lo] == x;
}
KP_INLINE int kp_in6(const kp_a6 *a, int32_t n, kp_a6 x) {
    int32_t lo = 0, hi = n;
    while (lo < hi) {
        int32_t mid = lo + (hi - lo) / 2;
        if (a[mid].hi < x.hi || (a[mid].hi == x.hi && a[mid].lo < x.lo)) lo = mid + 1; else hi = mid;
    }
    return lo < n && kp_a6_eq(a[lo], x);
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

/* The alias columns of every weighted port's pools (after the pools are filled). */
static int kp_fam_alias(kp_fam *f) {
    int32_t p, w, i, maxn = 0;
    uint64_t *prob, *s;
    int32_t *alias, *small, *large;
    if (!f->nal) return KP_OK;
    for (p = 0; p < f->nport; p++)
        for (w = 0; w < 2; w++)
            if (f->port[p].len[w] > maxn) maxn = f->port[p].len[w];
    prob = (uint64_t *)malloc(sizeof(uint64_t) * 2 * (size_t)(maxn ? maxn : 1));
    alias = (int32_t *)malloc(sizeof(int32_t) * 3 * (size_t)(maxn ? maxn : 1));
    if (!prob || !alias) { free(prob); free(alias); return KP_ENOMEM; }
    s = prob + maxn; small = alias + maxn; large = small + maxn;
    for (p = 0; p < f->nport; p++) {
        if (f->port[p].sel != KP_SEL_WEIGHTED) continue;
        for (w = 0; w < 2; w++) {
            int32_t st = f->port[p].start[w], n = f->port[p].len[w];
            uint64_t W = 0;
            if (n <= 0) continue;
            kp_alias_build(f->pool_w + st, n, prob, alias, s, small, large);
            for (i = 0; i < n; i++) W += f->pool_w[st + i];
            for (i = 0; i < n; i++) {
                /* a full column is its own alias: either branch gives the entry */
                uint64_t thr = prob[i] >= W ? UINT64_MAX : kp_alias_thr(prob[i], W);
                int k;
                for (k = 0; k < 2; k++) {
                    int32_t e = st + (k ? alias[i] : i);
                    if (f->v6) {
                        kp_al6 *a = &f->al6[st + i];
                        a->thr = thr; a->addr[k] = f->pool6[e].addr; a->ep[k] = f->pool6[e].ep;
                        a->port[k] = f->pool6[e].port;
                    } else {
                        kp_al4 *a = &f->al4[st + i];
                        a->thr = thr; a->addr[k] = f->pool4[e].addr; a->ep[k] = f->pool4[e].ep;
                        a->port[k] = f->pool4[e].port;
                    }
                }
            }
        }
    }
    free(prob); free(alias);
    return KP_OK;
}

/* Sort the address sets, copy port fields into records and endpoints into pools,
 * index services, build the selectors' alias columns and round-robin state. Every index
 * was checked by the caller. */
static int kp_fam_index(kp_fam *f) {
    int32_t i;
    if (f->v6) {
        if (f->nlocal) qsort(f->local6, (size_t)f->nlocal, sizeof(kp_a6), kp_cmp6);
        if (f->nnpaddr) qsort(f->npaddr6, (size_t)f->nnpaddr, sizeof(kp_a6), kp_cmp6);
        if (f->ncip) qsort(f->cip6, (size_t)f->ncip, sizeof(kp_cip6), kp_cmp6);  /* addr first */
        for (i = 0; i < f->npool; i++) {
            f->pool6[i].ep = f->pool_ep[i];
            f->pool6[i].addr = f->ep6[f->pool_ep[i]].addr;
            f->pool6[i].port = f->ep6[f->pool_ep[i]].port;
        }
    } else {
        if (f->nlocal) qsort(f->local4, (size_t)f->nlocal, sizeof(uint32_t), kp_cmp4);
        if (f->nnpaddr) qsort(f->npaddr4, (size_t)f->nnpaddr, sizeof(uint32_t), kp_cmp4);
        if (f->ncip) qsort(f->cip4, (size_t)f->ncip, sizeof(kp_cip4), kp_cmp4);  /* addr first */
        for (i = 0; i < f->npool; i++) {
            f->pool4[i].ep = f->pool_ep[i];
            f->pool4[i].addr = f->ep4[f->pool_ep[i]].addr;
            f->pool4[i].port = f->ep4[f->pool_ep[i]].port;
        }
    }
    for (i = 0; i < f->nrec; i++) {
        const kp_port *p = &f->port[f->rec_port[i]];
        kp_rsel *r = &f->rsel[i];
        f->rec[i].svc = p->svc;
        f->rec[i].affinity = p->affinity;
        f->rec[i].start[0] = p->start[0]; f->rec[i].start[1] = p->start[1];
        f->rec[i].len[0] = p->len[0]; f->rec[i].len[1] = p->len[1];
        f->rec[i].sel = p->sel;
        r->seed = p->seed; r->port = f->rec_port[i];
        r->tstart[0] = p->tstart[0]; r->tstart[1] = p->tstart[1];
        r->tlen[0] = p->tlen[0]; r->tlen[1] = p->tlen[1];
    }
    for (i = 0; i < f->nsvc; i++) f->svc_port[i] = -1;
    for (i = 0; i < f->nport; i++) f->svc_port[f->port[i].svc] = i;
    for (i = 0; i < f->nport; i++) f->sel_any |= f->port[i].sel != KP_SEL_RANDOM;
    {
        uint64_t k;
        for (k = 0; k <= f->fe_mask; k++) {
            if (f->v6 && f->fe6[k].rec >= 0) f->fe6[k].sel = f->rec[f->fe6[k].rec].sel;
            if (!f->v6 && f->fe4[k].rec >= 0) f->fe4[k].sel = f->rec[f->fe4[k].rec].sel;
        }
    }
    for (i = 0; i < f->nport; i++) {
        int w;
        if (f->port[i].sel != KP_SEL_RR) continue;
        for (w = 0; w < 2; w++) {
            int32_t k, st = f->port[i].start[w], n = f->port[i].len[w];
            int64_t total = 0;
            uint8_t smooth = 0;
            for (k = 0; k < n; k++) {
                total += f->pool_w[st + k];
                if (f->pool_w[st + k] != f->pool_w[st]) smooth = 1;
            }
            f->rr[i].total[w] = total;
            f->rr[i].smooth[w] = smooth;
        }
    }
    return kp_fam_alias(f);
}

/* ------------------------------------------------------------------ the decision */

typedef struct {
    uint64_t seed, aseed;   /* aseed = seed + KP_AFFINITY_SALT */
    double timeout[256];    /* flow timeout per IP protocol number (30 s unless set) */
    kp_table flows[2], aff[2];  /* [0] IPv4, [1] IPv6 */
} kp_state;

/* ep: the endpoint index (for IPv4 flow hits only when asked for: want_ep);
 * ep_addr/ep_port: IPv4 only */
typedef struct { int32_t svc, ep; uint32_t ep_addr; uint16_t ep_port; uint8_t verdict, fe, masq; } kp_res;

enum { KP_PASS = 0, KP_DNAT = 1, KP_REJECT = 2, KP_DROP = 3 };

KP_INLINE void kp_set(kp_res *r, uint8_t verdict, int32_t svc, uint8_t fe) {
    r->verdict = verdict; r->svc = svc; r->fe = fe; r->ep = -1; r->masq = 0;
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

/* The action byte of record rec for a packet from src: its source class, and for a
 * record with a KUBE-FW whether src is inside one of the allowed CIDRs (a linear scan:
 * the lists are short). */
KP_INLINE uint8_t kp_action4(const kp_fam *f, int32_t rec, uint32_t src) {
    const kp_rec *R = &f->rec[rec];
    int cls = kp_cls4(f, src);
    if (KP_UNLIKELY(R->fw)) {
        const kp_fwrec *w = &f->fwrec[rec];
        const kp_cidr4 *c = f->fw4 + w->start;
        int32_t i;
        for (i = 0; i < w->len; i++)
            if ((src & c[i].mask) == c[i].net) return R->action[cls];
        return w->blocked[cls];
    }
    return R->action[cls];
}
KP_INLINE uint8_t kp_action6(const kp_fam *f, int32_t rec, kp_a6 src) {
    const kp_rec *R = &f->rec[rec];
    int cls = kp_cls6(f, src);
    if (KP_UNLIKELY(R->fw)) {
        const kp_fwrec *w = &f->fwrec[rec];
        const kp_cidr6 *c = f->fw6 + w->start;
        int32_t i;
        for (i = 0; i < w->len; i++)
            if ((src.hi & c[i].mask.hi) == c[i].net.hi && (src.lo & c[i].mask.lo) == c[i].net.lo)
                return R->action[cls];
        return w->blocked[cls];
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

#define KP_REC_UNKNOWN (-2)

/* Round-robin: the pool index a new connection takes (advance) or would take (a
 * read-only lookup). Rotation, or nginx's smooth weighted round-robin over the current
 * weights beside the pool: add w_i to each, take the largest (the first on ties),
 * subtract the pool's total from it. |cur_i| <= total < 2**52: no overflow. */
static int32_t kp_rr_next(const kp_fam *f, const kp_rec *R, const kp_rsel *rs, int which,
                          int32_t n, int advance) {
    kp_rr *r = &f->rr[rs->port];
    int32_t i, best = 0;
    int64_t *cur;
    const uint32_t *w;
    int64_t bv;
    if (!r->smooth[which]) {
        i = r->pos[which];
        if (advance) r->pos[which] = i + 1 < n ? i + 1 : 0;
        return i;
    }
    cur = f->rr_cur + R->start[which];
    w = f->pool_w + R->start[which];
    bv = cur[0] + w[0];
    for (i = 1; i < n; i++)
        if (cur[i] + w[i] > bv) { bv = cur[i] + w[i]; best = i; }
    if (advance) {
        for (i = 0; i < n; i++) cur[i] += w[i];
        cur[best] -= r->total[which];
    }
    return best;
}

/* Every selector but random (kp_decide* inlines that one): the chosen pool entry of
 * record R's pool `which` (n > 0 entries at pool), or (weighted) its copy in *tmp.
 * advance: round-robin moves on. */
KP_INLINE const kp_pe4 *kp_select4(const kp_fam *f, int32_t rec, int which, const kp_pe4 *pool,
                                   int32_t n, uint64_t h, uint32_t src, uint16_t sport,
                                   uint16_t dport, uint8_t proto, int advance, kp_pe4 *tmp) {
    const kp_rec *R = &f->rec[rec];
    const kp_rsel *rs = &f->rsel[rec];
    if (R->sel == KP_SEL_WEIGHTED) {
        const kp_al4 *a = &f->al4[R->start[which] + (int32_t)kp_pick(h, (uint32_t)n)];
        int k = kp_mix(h ^ KP_WEIGHT_SALT) >= a->thr;
        tmp->ep = a->ep[k]; tmp->addr = a->addr[k]; tmp->port = a->port[k];
        return tmp;
    }
    if (R->sel == KP_SEL_RR) return &pool[kp_rr_next(f, R, rs, which, n, advance)];
    {
        uint64_t fh = R->sel == KP_SEL_SH ? kp_hash4(rs->seed, src, 0, 0, 0, 0)
                                          : kp_hash4(rs->seed, src, 0, sport, dport, proto);
        return &pool[f->tab[rs->tstart[which] + (int64_t)kp_mulhi(fh, rs->tlen[which])]];
    }
}

KP_INLINE const kp_pe6 *kp_select6(const kp_fam *f, int32_t rec, int which, const kp_pe6 *pool,
                                   int32_t n, uint64_t h, kp_a6 src, uint16_t sport,
                                   uint16_t dport, uint8_t proto, int advance, kp_pe6 *tmp) {
    const kp_rec *R = &f->rec[rec];
    const kp_rsel *rs = &f->rsel[rec];
    if (R->sel == KP_SEL_WEIGHTED) {
        const kp_al6 *a = &f->al6[R->start[which] + (int32_t)kp_pick(h, (uint32_t)n)];
        int k = kp_mix(h ^ KP_WEIGHT_SALT) >= a->thr;
        tmp->ep = a->ep[k]; tmp->addr = a->addr[k]; tmp->port = a->port[k];
        return tmp;
    }
    if (R->sel == KP_SEL_RR) return &pool[kp_rr_next(f, R, rs, which, n, advance)];
    {
        kp_a6 zero = {0, 0};
        uint64_t fh = R->sel == KP_SEL_SH ? kp_hash6(rs->seed, src, zero, 0, 0, 0)
                                          : kp_hash6(rs->seed, src, zero, sport, dport, proto);
        return &pool[f->tab[rs->tstart[which] + (int64_t)kp_mulhi(fh, rs->tlen[which])]];
    }
}

/* The decision for one IPv4 packet whose hash is h (kp_hash4). track: 0 = flow and
 * affinity tables untouched, 1 = read and write, 2 = read only; a round-robin pick moves
 * its cursor in modes 0 and 1 (a new connection), not in 2. f may be NULL (nothing
 * loaded). sels: f->sel_any, a constant in each batch loop (0: every pick is random).
 * rec: kp_fe4_get(f, dst, dport, proto) if the caller has it (a batch's prefetch
 * stage does; the frontend table does not change during a batch), else KP_REC_UNKNOWN. */
KP_INLINE void kp_decide4(kp_state *st, const kp_fam *f, uint32_t src, uint32_t dst,
                          uint16_t sport, uint16_t dport, uint8_t proto, uint64_t h,
                          int32_t rec, double now, int track, int want_ep, int sels, kp_res *r) {
    kp_table *ft = &st->flows[0], *at = &st->aff[0];
    uint64_t addrs = ((uint64_t)src << 32) | dst, ah = 0, akey = 0;
    int64_t fs = -1, as = -1;
    int32_t svc, n;
    uint32_t timeout;
    uint8_t action, masq;
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
                r->ep = want_ep ? ft->aux[fs] : -1;
                return;
            }
        }
    }
    if (rec == KP_REC_UNKNOWN) rec = kp_fe4_get(f, dst, dport, proto);
    if (rec >= 0) {
        action = kp_action4(f, rec, src);
    } else if (kp_is_local4(f, dst)) {
        rec = kp_np_get(f, dport, proto);
        if (rec < 0) { kp_set(r, KP_PASS, -1, 0); return; }
        action = kp_np_accepts4(f, dst) ? kp_action4(f, rec, src) : f->rec[rec].np_filter;
    } else {
        if (KP_UNLIKELY(f->check)) kp_check4(f, dst, r);
        else kp_set(r, KP_PASS, -1, 0);
        return;
    }
    R = &f->rec[rec];
    svc = R->svc;
    if ((action & 3) != KP_DNAT) {
        if (action & 3) kp_set(r, action & 3, svc, R->kind);
        else kp_set(r, KP_PASS, -1, 0);
        return;
    }
    which = ((action >> 2) & 3) - 1;
    if (which < 0 || R->len[which] <= 0) { kp_set(r, KP_DROP, svc, R->kind); return; }
    pool = f->pool4 + R->start[which];
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
        else sel = kp_select4(f, rec, which, pool, n, h, src, sport, dport, proto, track != 2, &tmp);
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
            ft->aux[s] = sel->ep;
        }
    }
    r->verdict = KP_DNAT; r->svc = svc; r->fe = R->kind; r->masq = masq;
    r->ep = sel->ep; r->ep_addr = sel->addr; r->ep_port = sel->port;
}

KP_INLINE void kp_decide6(kp_state *st, const kp_fam *f, kp_a6 src, kp_a6 dst,
                          uint16_t sport, uint16_t dport, uint8_t proto, uint64_t h,
                          int32_t rec, double now, int track, int sels, kp_res *r) {
    kp_table *ft = &st->flows[1], *at = &st->aff[1];
    uint64_t ah = 0;
    int64_t fs = -1, as = -1;
    int32_t svc, n;
    uint32_t timeout;
    uint8_t action, masq;
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
                r->ep = fl->ep;
                return;
            }
        }
    }
    if (rec == KP_REC_UNKNOWN) rec = kp_fe6_get(f, dst, dport, proto);
    if (rec >= 0) {
        action = kp_action6(f, rec, src);
    } else if (kp_is_local6(f, dst)) {
        rec = kp_np_get(f, dport, proto);
        if (rec < 0) { kp_set(r, KP_PASS, -1, 0); return; }
        action = kp_np_accepts6(f, dst) ? kp_action6(f, rec, src) : f->rec[rec].np_filter;
    } else {
        if (KP_UNLIKELY(f->check)) kp_check6(f, dst, r);
        else kp_set(r, KP_PASS, -1, 0);
        return;
    }
    R = &f->rec[rec];
    svc = R->svc;
    if ((action & 3) != KP_DNAT) {
        if (action & 3) kp_set(r, action & 3, svc, R->kind);
        else kp_set(r, KP_PASS, -1, 0);
        return;
    }
    which = ((action >> 2) & 3) - 1;
    if (which < 0 || R->len[which] <= 0) { kp_set(r, KP_DROP, svc, R->kind); return; }
    pool = f->pool6 + R->start[which];
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
        else sel = kp_select6(f, rec, which, pool, n, h, src, sport, dport, proto, track != 2, &tmp);
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
            fl->fm = (uint8_t)(R->kind | (masq << 7)); fl->svc = svc; fl->ep = sel->ep;
            fl->stamp = now + st->timeout[proto];
        }
    }
    kp_set(r, KP_DNAT, svc, R->kind);
    r->masq = masq;
    r->ep = sel->ep;
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
 * selector data (kp_rsel) for Maglev, source-hash and round-robin; stage 3 (untracked)
 * fetches what the pick reads first (KP_PREFETCH_SEL); stage 4 then fetches the pool
 * entry a Maglev slot names, or, for a new tracked flow, what stage 3 does untracked.
 * Flow prefetches are hints (the table changes under them); the frontend record found
 * is exact (the family tables do not change during a batch) and is passed on to the
 * decision. Prefetching only what will be read matters: an extra, unused prefetch per
 * packet (a frontend slot for a known flow) cost a third of the throughput, as it
 * holds a line fill buffer. */
typedef struct { uint64_t h; int32_t rec; int32_t state; } kp_pipe;

enum { KP_PIPE_FLOW = 0, KP_PIPE_NEW = 1, KP_PIPE_NEW_W = 2, KP_PIPE_FE = 3 };

KP_INLINE void kp_pipe1_4(const kp_state *st, const kp_fam *f, kp_pipe *p, uint32_t src,
                          uint32_t dst, uint16_t sport, uint16_t dport, uint8_t proto, int track) {
    p->h = kp_hash4(st->seed, src, dst, sport, dport, proto);
    p->rec = KP_REC_UNKNOWN;
    if (!f) return;
    if (track) KP_PREFETCH(st->flows[0].tags + kp_bucket(&st->flows[0], p->h) * KP_SLOTS);
    else KP_PREFETCH(&f->fe4[kp_fe4_slot(f, dst, dport, proto)]);
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
 * source-hash: the table slot, from the record's selector data (fetched by stage 2);
 * HASH_MAGLEV / HASH_SOURCE are evaluated only there, where rs_ is that data.
 * Round-robin: the port's cursor, and for smooth pools the current weights and the
 * weights it scans. A macro for both families: only the alias array differs. */
#define KP_PREFETCH_SEL(AL, HASH_MAGLEV, HASH_SOURCE) do { \
        int w_; \
        if (R->sel == KP_SEL_WEIGHTED) { \
            for (w_ = 0; w_ < 2; w_++) { \
                int32_t i_; \
                if (R->len[w_] <= 0) continue; \
                i_ = R->start[w_] + (int32_t)kp_pick(p->h, (uint32_t)R->len[w_]); \
                KP_PREFETCH(&f->AL[i_]); \
            } \
        } else if (R->sel == KP_SEL_RR) { \
            KP_PREFETCH(&f->rr[f->rsel[p->rec].port]); \
            for (w_ = 0; w_ < 2; w_++) { \
                if (R->len[w_] <= 0) continue; \
                KP_PREFETCH(f->rr_cur + R->start[w_]); \
                KP_PREFETCH(f->pool_w + R->start[w_]); \
            } \
        } else { \
            const kp_rsel *rs_ = &f->rsel[p->rec]; \
            uint64_t fh_ = R->sel == KP_SEL_SH ? HASH_SOURCE : HASH_MAGLEV; \
            for (w_ = 0; w_ < 2; w_++) \
                if (R->len[w_] > 0) KP_PREFETCH(&f->tab[rs_->tstart[w_] + (int64_t)kp_mulhi(fh_, rs_->tlen[w_])]); \
        } \
    } while (0)

/* sels: the frontend entry tells the selector; Maglev, source-hash and round-robin read
 * the record's selector data next (stage 3), so fetch it with the record */
KP_INLINE int32_t kp_fe4_rec(const kp_fam *f, uint32_t dst, uint16_t dport, uint8_t proto, int sels) {
    const kp_fe4 *e;
    if (!sels) {
        int32_t rec = kp_fe4_get(f, dst, dport, proto);
        if (rec >= 0) KP_PREFETCH(&f->rec[rec]);
        return rec;
    }
    e = kp_fe4_find(f, dst, dport, proto);
    if (e->rec >= 0) {
        KP_PREFETCH(&f->rec[e->rec]);
        if (e->sel >= KP_SEL_RR) KP_PREFETCH(&f->rsel[e->rec]);
    }
    return e->rec;
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
        KP_PREFETCH(&f->fe4[kp_fe4_slot(f, dst, dport, proto)]);
        p->state = track == 1 ? KP_PIPE_NEW_W : KP_PIPE_NEW;
        return;
    }
    p->rec = kp_fe4_rec(f, dst, dport, proto, sels);
    p->state = KP_PIPE_FE;
}

KP_INLINE void kp_pipe3_4(const kp_state *st, const kp_fam *f, kp_pipe *p, uint32_t src,
                          uint32_t dst, uint16_t sport, uint16_t dport, uint8_t proto, int sels) {
    const kp_rec *R;
    if (!f || p->state == KP_PIPE_FLOW) return;
    if (p->state != KP_PIPE_FE) {
        p->rec = kp_fe4_rec(f, dst, dport, proto, sels);
        if (p->rec >= 0 && p->state == KP_PIPE_NEW_W)
            kp_prefetch_place(&st->flows[0], kp_bucket(&st->flows[0], p->h), sizeof(kp_flow4));
        return;
    }
    if (p->rec < 0) return;
    R = &f->rec[p->rec];
    if (!sels || R->sel == KP_SEL_RANDOM) {
        if (R->len[0] > 0) KP_PREFETCH(&f->pool4[R->start[0] + (int32_t)kp_pick(p->h, (uint32_t)R->len[0])]);
        if (R->len[1] > 0) KP_PREFETCH(&f->pool4[R->start[1] + (int32_t)kp_pick(p->h, (uint32_t)R->len[1])]);
    } else {
        KP_PREFETCH_SEL(al4, kp_hash4(rs_->seed, src, 0, sport, dport, proto),
                        kp_hash4(rs_->seed, src, 0, 0, 0, 0));
    }
}

/* Stage 4 (sels loops only, between stage 3 and the decision). Without tracking, stage 3
 * fetched what the pick reads first; for Maglev and source-hash that is the table slot,
 * which now names the pool entry to fetch. For a new flow (tracking), stage 3 found the
 * record; now it is here, so fetch what its pick reads (as stage 3 does untracked). */
KP_INLINE void kp_pipe4_4(const kp_fam *f, kp_pipe *p, uint32_t src, uint16_t sport,
                          uint16_t dport, uint8_t proto) {
    const kp_rec *R;
    if (!f || p->state == KP_PIPE_FLOW || p->rec < 0) return;
    R = &f->rec[p->rec];
    if (p->state != KP_PIPE_FE) {
        if (R->sel == KP_SEL_RANDOM) {
            if (R->len[0] > 0) KP_PREFETCH(&f->pool4[R->start[0] + (int32_t)kp_pick(p->h, (uint32_t)R->len[0])]);
            if (R->len[1] > 0) KP_PREFETCH(&f->pool4[R->start[1] + (int32_t)kp_pick(p->h, (uint32_t)R->len[1])]);
        } else {
            KP_PREFETCH_SEL(al4, kp_hash4(rs_->seed, src, 0, sport, dport, proto),
                            kp_hash4(rs_->seed, src, 0, 0, 0, 0));
        }
    } else if (R->sel >= KP_SEL_SH) {
        const kp_rsel *rs = &f->rsel[p->rec];
        uint64_t fh = R->sel == KP_SEL_SH ? kp_hash4(rs->seed, src, 0, 0, 0, 0)
                                          : kp_hash4(rs->seed, src, 0, sport, dport, proto);
        int w;
        for (w = 0; w < 2; w++)
            if (R->len[w] > 0)
                KP_PREFETCH(&f->pool4[R->start[w] + f->tab[rs->tstart[w] + (int64_t)kp_mulhi(fh, rs->tlen[w])]]);
    }
}

KP_INLINE void kp_pipe1_6(const kp_state *st, const kp_fam *f, kp_pipe *p, kp_a6 src,
                          kp_a6 dst, uint16_t sport, uint16_t dport, uint8_t proto, int track) {
    p->h = kp_hash6(st->seed, src, dst, sport, dport, proto);
    p->rec = KP_REC_UNKNOWN;
    if (!f) return;
    if (track) KP_PREFETCH(st->flows[1].tags + kp_bucket(&st->flows[1], p->h) * KP_SLOTS);
    else KP_PREFETCH(&f->fe6[kp_fe6_slot(f, dst, dport, proto)]);
}

KP_INLINE int32_t kp_fe6_rec(const kp_fam *f, kp_a6 dst, uint16_t dport, uint8_t proto, int sels) {
    const kp_fe6 *e;
    if (!sels) {
        int32_t rec = kp_fe6_get(f, dst, dport, proto);
        if (rec >= 0) KP_PREFETCH(&f->rec[rec]);
        return rec;
    }
    e = kp_fe6_find(f, dst, dport, proto);
    if (e->rec >= 0) {
        KP_PREFETCH(&f->rec[e->rec]);
        if (e->sel >= KP_SEL_RR) KP_PREFETCH(&f->rsel[e->rec]);
    }
    return e->rec;
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
        KP_PREFETCH(&f->fe6[kp_fe6_slot(f, dst, dport, proto)]);
        p->state = track == 1 ? KP_PIPE_NEW_W : KP_PIPE_NEW;
        return;
    }
    p->rec = kp_fe6_rec(f, dst, dport, proto, sels);
    p->state = KP_PIPE_FE;
}

KP_INLINE void kp_pipe3_6(const kp_state *st, const kp_fam *f, kp_pipe *p, kp_a6 src, kp_a6 dst,
                          uint16_t sport, uint16_t dport, uint8_t proto, int sels) {
    const kp_rec *R;
    if (!f || p->state == KP_PIPE_FLOW) return;
    if (p->state != KP_PIPE_FE) {
        p->rec = kp_fe6_rec(f, dst, dport, proto, sels);
        if (p->rec >= 0 && p->state == KP_PIPE_NEW_W)
            kp_prefetch_place(&st->flows[1], kp_bucket(&st->flows[1], p->h), sizeof(kp_flow6));
        return;
    }
    if (p->rec < 0) return;
    R = &f->rec[p->rec];
    if (!sels || R->sel == KP_SEL_RANDOM) {
        if (R->len[0] > 0) KP_PREFETCH(&f->pool6[R->start[0] + (int32_t)kp_pick(p->h, (uint32_t)R->len[0])]);
        if (R->len[1] > 0) KP_PREFETCH(&f->pool6[R->start[1] + (int32_t)kp_pick(p->h, (uint32_t)R->len[1])]);
    } else {
        kp_a6 zero = {0, 0};
        KP_PREFETCH_SEL(al6, kp_hash6(rs_->seed, src, zero, sport, dport, proto),
                        kp_hash6(rs_->seed, src, zero, 0, 0, 0));
    }
}

KP_INLINE void kp_pipe4_6(const kp_fam *f, kp_pipe *p, kp_a6 src, uint16_t sport,
                          uint16_t dport, uint8_t proto) {
    const kp_rec *R;
    kp_a6 zero = {0, 0};
    if (!f || p->state == KP_PIPE_FLOW || p->rec < 0) return;
    R = &f->rec[p->rec];
    if (p->state != KP_PIPE_FE) {
        if (R->sel == KP_SEL_RANDOM) {
            if (R->len[0] > 0) KP_PREFETCH(&f->pool6[R->start[0] + (int32_t)kp_pick(p->h, (uint32_t)R->len[0])]);
            if (R->len[1] > 0) KP_PREFETCH(&f->pool6[R->start[1] + (int32_t)kp_pick(p->h, (uint32_t)R->len[1])]);
        } else {
            KP_PREFETCH_SEL(al6, kp_hash6(rs_->seed, src, zero, sport, dport, proto),
                            kp_hash6(rs_->seed, src, zero, 0, 0, 0));
        }
    } else if (R->sel >= KP_SEL_SH) {
        const kp_rsel *rs = &f->rsel[p->rec];
        uint64_t fh = R->sel == KP_SEL_SH ? kp_hash6(rs->seed, src, zero, 0, 0, 0)
                                          : kp_hash6(rs->seed, src, zero, sport, dport, proto);
        int w;
        for (w = 0; w < 2; w++)
            if (R->len[w] > 0)
                KP_PREFETCH(&f->pool6[R->start[w] + f->tab[rs->tstart[w] + (int64_t)kp_mulhi(fh, rs->tlen[w])]]);
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
#define KP_RING 16        /* > 3 * KP_PIPE_AHEAD, a power of two; twice that with selectors */
typedef char kp_ring_is_big_enough[(KP_RING > 3 * KP_PIPE_AHEAD) ? 1 : -1];
typedef char kp_ring_is_big_enough_s[(2 * KP_RING > 4 * KP_PIPE_AHEAD) ? 1 : -1];
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
                              ptrdiff_t out_step, int64_t n, double now, int track, int sels) {
    int64_t i, j;
    const int64_t A = KP_PIPE_AHEAD;
#define KP_SP(i) (sport.p ? KP_AT(uint16_t, sport, i) : (uint16_t)0)
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
                   ring[KP_RI(j)].h, ring[KP_RI(j)].rec, now, track, 0, sels, &r_); \
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
        kp_col sp_ = {SPORT ? sport : NULL, 2}; \
        (void)track; \
        kp_batch4_body(st, f, s_, d_, dp_, pr_, sp_, out, sizeof(kp_out4), n, now, TRACK, SELS); \
    }
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
                                      ptrdiff_t out_step, int64_t n, double now, int track) {
    kp_batch4_body(st, f, src, dst, dport, proto, sport, out, out_step, n, now, track, f && f->sel_any);
}

typedef void (*kp_batch4_fn)(kp_state *, const kp_fam *, const char *, const char *, const char *,
                             const char *, const char *, char *, int64_t, double, int);

static void kp_batch4(kp_state *st, const kp_fam *f, kp_col src, kp_col dst, kp_col dport,
                      kp_col proto, kp_col sport, char *out, ptrdiff_t out_step, int64_t n,
                      double now, int track) {
    int s = f && f->sel_any;
    if (src.step == 4 && dst.step == 4 && dport.step == 2 && proto.step == 1 &&
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
    kp_batch4_any(st, f, src, dst, dport, proto, sport, out, out_step, n, now, track);
}

/* The IPv6 batch loop: src/dst rows of 16 bytes, src_inner/dst_inner bytes apart. */
KP_INLINE void kp_batch6_body(kp_state *st, const kp_fam *f, kp_col src, ptrdiff_t src_inner,
                              kp_col dst, ptrdiff_t dst_inner, kp_col dport, kp_col proto,
                              kp_col sport, char *out, ptrdiff_t out_step, int64_t n, double now,
                              int track, int sels) {
    int64_t i, j;
    const int64_t A = KP_PIPE_AHEAD;
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
                   ring[KP_RI(j)].h, ring[KP_RI(j)].rec, now, track, sels, &r_); \
        o_->verdict = r_.verdict; o_->service = r_.svc; o_->frontend = r_.fe; o_->masq = r_.masq; \
        if (r_.verdict == KP_DNAT) { \
            kp_a6_store(o_->ep_ip, f->ep6[r_.ep].addr); o_->ep_port = f->ep6[r_.ep].port; \
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
}

#define KP_VARIANT6(name, SELS) \
    KP_NOINLINE static void name(kp_state *st, const kp_fam *f, kp_col src, ptrdiff_t src_inner, \
                                 kp_col dst, ptrdiff_t dst_inner, kp_col dport, kp_col proto, \
                                 kp_col sport, char *out, ptrdiff_t out_step, int64_t n, double now, \
                                 int track) { \
        kp_batch6_body(st, f, src, src_inner, dst, dst_inner, dport, proto, sport, out, out_step, n, \
                       now, track, SELS); \
    }
KP_VARIANT6(kp_batch6_plain, 0)
KP_VARIANT6(kp_batch6_s, 1)
#undef KP_VARIANT6

static void kp_batch6(kp_state *st, const kp_fam *f, kp_col src, ptrdiff_t src_inner, kp_col dst,
                      ptrdiff_t dst_inner, kp_col dport, kp_col proto, kp_col sport, char *out,
                      ptrdiff_t out_step, int64_t n, double now, int track) {
    (f && f->sel_any ? kp_batch6_s : kp_batch6_plain)(st, f, src, src_inner, dst, dst_inner, dport,
                                                      proto, sport, out, out_step, n, now, track);
}

/* ------------------------------------------------------------------ reload */

/* The first endpoint of either pool (cluster, then local) of port p with this address
 * and port number, or -1. */
static int32_t kp_find_ep4(const kp_fam *f, int32_t p, uint32_t addr, uint16_t port) {
    int w;
    for (w = 0; w < 2; w++) {
        int32_t i, start = f->port[p].start[w], end = start + f->port[p].len[w];
        for (i = start; i < end; i++)
            if (f->pool4[i].addr == addr && f->pool4[i].port == port) return f->pool4[i].ep;
    }
    return -1;
}
static int32_t kp_find_ep6(const kp_fam *f, int32_t p, kp_a6 addr, uint16_t port) {
    int w;
    for (w = 0; w < 2; w++) {
        int32_t i, start = f->port[p].start[w], end = start + f->port[p].len[w];
        for (i = start; i < end; i++)
            if (kp_a6_eq(f->pool6[i].addr, addr) && f->pool6[i].port == port) return f->pool6[i].ep;
    }
    return -1;
}

typedef struct { uint64_t key; int32_t val; } kp_memo_slot;

/* Keep the flows of table t whose endpoint is still in a pool of their service's port
 * in the new tables nf (re-pointing them at nf's endpoint index), drop the rest.
 * Returns how many were dropped. Results are memoised per (service, old endpoint):
 * a reload keeps whole services, so most flows share an answer with another. */
static int64_t kp_remap(kp_table *t, const kp_fam *nf, const kp_fam *of) {
    uint64_t s, nslots = t->nbuckets * KP_SLOTS, mcap, mused = 0;
    int64_t dropped = 0;
    kp_memo_slot *memo;
    int v6 = nf->v6;
    if (!t->tags || t->count == 0) return 0;
    mcap = kp_pow2_at_least(2 * (uint64_t)t->count);
    if (mcap > ((uint64_t)1 << 22)) mcap = (uint64_t)1 << 22;
    memo = (kp_memo_slot *)calloc((size_t)mcap, sizeof(kp_memo_slot));  /* NULL: no memo */
    for (s = 0; s < nslots; s++) {
        int32_t svc, oep, port, e = -1;
        if (!t->tags[s]) continue;
        if (v6) { svc = KP_REC(t, kp_flow6, s)->svc; oep = KP_REC(t, kp_flow6, s)->ep; }
        else { svc = KP_REC(t, kp_flow4, s)->svc; oep = t->aux[s]; }
        port = (of && svc >= 0 && svc < nf->nsvc) ? nf->svc_port[svc] : -1;
        if (port >= 0 && oep >= 0 && oep < of->nep) {
            uint64_t key = (((uint64_t)(uint32_t)svc << 32) | (uint32_t)oep) + 1, i = 0;
            int hit = 0;
            if (memo) {
                i = kp_mix(key) & (mcap - 1);
                while (memo[i].key && memo[i].key != key) i = (i + 1) & (mcap - 1);
                if (memo[i].key == key) { e = memo[i].val; hit = 1; }
            }
            if (!hit) {
                e = v6 ? kp_find_ep6(nf, port, of->ep6[oep].addr, of->ep6[oep].port)
                       : kp_find_ep4(nf, port, of->ep4[oep].addr, of->ep4[oep].port);
                if (memo && mused < mcap / 2) { memo[i].key = key; memo[i].val = e; mused++; }
            }
        }
        if (e < 0) {
            kp_table_drop(t, s);
            dropped++;
        } else if (v6) {
            KP_REC(t, kp_flow6, s)->ep = e;
        } else {
            t->aux[s] = e;
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

/* Round-robin state across a reload: a pool of the new tables nf continues where the
 * same pool of the old tables of stopped when it is unchanged (the same service index,
 * the same pool, round-robin in both, the same endpoints in the same order with the same
 * weights); any other pool starts at its head. */
static void kp_rr_carry(kp_fam *nf, const kp_fam *of) {
    int32_t p, i;
    int w;
    if (!of) return;
    for (p = 0; p < nf->nport; p++) {
        const kp_port *np = &nf->port[p], *op;
        int32_t q;
        if (np->sel != KP_SEL_RR || np->svc >= of->nsvc) continue;
        q = of->svc_port[np->svc];
        if (q < 0) continue;
        op = &of->port[q];
        if (op->sel != KP_SEL_RR) continue;
        for (w = 0; w < 2; w++) {
            int32_t a = np->start[w], b = op->start[w], n = np->len[w];
            int same = n == op->len[w];
            for (i = 0; same && i < n; i++) {
                same = nf->pool_w[a + i] == of->pool_w[b + i] &&
                       (nf->v6 ? kp_a6_eq(nf->pool6[a + i].addr, of->pool6[b + i].addr) &&
                                     nf->pool6[a + i].port == of->pool6[b + i].port
                               : nf->pool4[a + i].addr == of->pool4[b + i].addr &&
                                     nf->pool4[a + i].port == of->pool4[b + i].port);
            }
            if (!same || n == 0) continue;
            nf->rr[p].pos[w] = of->rr[q].pos[w];
            if (nf->rr[p].smooth[w]) memcpy(nf->rr_cur + a, of->rr_cur + b, sizeof(int64_t) * (size_t)n);
        }
    }
}

#endif /* KP_CORE_H */
