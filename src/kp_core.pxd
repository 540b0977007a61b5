# Declarations of kp_core.h (the C side of kproxy_core._engine); see the header for
# what each function does. Nothing here raises: status codes go through _engine._check.

from libc.stddef cimport ptrdiff_t
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "kp_core.h" nogil:
    enum:
        KP_OK
        KP_ENOMEM
        KP_ETOOBIG
        KP_SLOTS
        KP_DNAT
        KP_SEL_RANDOM
        KP_SEL_WEIGHTED
        KP_SEL_RR
        KP_SEL_SH
        KP_SEL_MAGLEV

    ctypedef struct kp_a6:
        uint64_t hi
        uint64_t lo

    ctypedef struct kp_table:
        uint64_t nbuckets
        int64_t count
        size_t rsize

    ctypedef struct kp_flow4:
        pass
    ctypedef struct kp_flow6:
        pass
    ctypedef struct kp_aff4:
        pass
    ctypedef struct kp_aff6:
        pass

    ctypedef struct kp_rec:
        uint8_t kind
        int32_t svc
        uint8_t np_filter
        uint8_t action[4]
        uint8_t blocked[4]
        int32_t fwn
        const void *fwl

    ctypedef struct kp_cidr4:
        uint32_t net
        uint32_t mask

    ctypedef struct kp_cidr6:
        kp_a6 net
        kp_a6 mask

    ctypedef struct kp_pe4:
        uint32_t addr
        uint16_t port

    ctypedef struct kp_pe6:
        kp_a6 addr
        uint16_t port

    ctypedef struct kp_key:
        kp_a6 addr
        uint16_t port
        uint8_t proto
        uint8_t np
        int32_t rec

    ctypedef struct kp_blk:
        int32_t svc
        int32_t nrec
        int32_t nkey
        int32_t len[2]
        size_t size
        kp_rec *rec
        kp_key *key
        void *pool
        uint32_t *w
        int32_t *tab
        void *fw

    ctypedef struct kp_arena:
        char *cur

    ctypedef struct kp_htab:
        uint64_t cap
        int64_t live
        int64_t used
        size_t size

    ctypedef struct kp_cip4:
        uint32_t addr
        int32_t svc

    ctypedef struct kp_cip6:
        kp_a6 addr
        int32_t svc

    ctypedef struct kp_fam:
        int v6
        int check
        int sel_any
        int np_match_all, np_loopback, det_on
        int32_t nlocal, nnpaddr
        kp_htab *fe
        kp_htab *np
        uint32_t *local4
        uint32_t *npaddr4
        kp_a6 *local6
        kp_a6 *npaddr6
        uint32_t det_mask4, det_net4
        kp_a6 det_mask6, det_net6
        int32_t ncip, nscidr
        kp_cip4 *cip4
        kp_cip6 *cip6
        kp_cidr4 *scidr4
        kp_cidr6 *scidr6
        kp_blk **svc_blk
        int32_t nsvc
        int64_t nblk, blk_bytes
        int64_t nretired, cretired
        kp_arena arena

    ctypedef struct kp_state:
        uint64_t seed
        uint64_t aseed
        double timeout[256]
        int stale_udp_only
        kp_table flows[2]
        kp_table aff[2]

    ctypedef struct kp_res:
        int32_t svc
        uint32_t ep_addr
        uint16_t ep_port
        uint8_t verdict
        uint8_t fe
        uint8_t masq
        kp_a6 ep6

    const kp_rec *KP_REC_UNKNOWN

    uint64_t kp_mix(uint64_t z)
    uint64_t kp_hash4(uint64_t seed, uint32_t src, uint32_t dst, uint16_t sport,
                      uint16_t dport, uint8_t proto)
    uint64_t kp_hash6(uint64_t seed, kp_a6 src, kp_a6 dst, uint16_t sport,
                      uint16_t dport, uint8_t proto)
    uint64_t kp_ahash4(uint64_t aseed, int32_t svc, uint32_t src)
    uint64_t kp_ahash6(uint64_t aseed, int32_t svc, kp_a6 src)
    uint32_t kp_pick(uint64_t h, uint32_t n)
    uint64_t kp_mulhi(uint64_t a, uint64_t b)
    kp_a6 kp_a6_load(const uint8_t *p)
    void kp_a6_store(uint8_t *p, kp_a6 a)
    int kp_parse_ip4(const char *s, size_t n, uint32_t *out)

    int kp_table_init(kp_table *t, uint64_t nbuckets, size_t rsize)
    void kp_table_free(kp_table *t)
    void kp_table_clear(kp_table *t)

    int kp_fam_init(kp_fam *f, int v6, int32_t nlocal, int32_t nnpaddr, int32_t ncip,
                    int32_t nscidr, int64_t nfe, int64_t nnp)
    void kp_fam_free(kp_fam *f)
    void kp_fam_sort(kp_fam *f)
    kp_blk *kp_blk_new(kp_arena *arena, int v6, int32_t nrec, int32_t nkey, int32_t n0, int32_t n1, uint8_t sel,
                       int64_t tlen0, int64_t tlen1, int32_t nfw)
    int kp_blk_finish(kp_blk *b, uint32_t affinity, uint64_t seed)
    void kp_blk_set_fw(kp_blk *b, int32_t at, kp_a6 addr, int prefix)
    void kp_blk_discard(kp_fam *f, kp_blk *b)
    int kp_fam_install(kp_fam *f, kp_blk **nb, int32_t n, const int32_t *removed, int32_t nrem,
                       int *stale)
    void kp_fam_reclaim(kp_fam *f)
    void kp_fam_carry(kp_fam *nf, const kp_fam *of)

    void kp_decide4(kp_state *st, const kp_fam *f, uint32_t src, uint32_t dst,
                    uint16_t sport, uint16_t dport, uint8_t proto, uint64_t h, const kp_rec *rec,
                    uint64_t g, double now, int track, int sels, kp_res *r)
    void kp_decide6(kp_state *st, const kp_fam *f, kp_a6 src, kp_a6 dst,
                    uint16_t sport, uint16_t dport, uint8_t proto, uint64_t h, const kp_rec *rec,
                    uint64_t g, double now, int track, int sels, kp_res *r)
    const kp_rec *kp_fe4_get(const kp_fam *f, uint32_t addr, uint16_t port, uint8_t proto)
    const kp_rec *kp_fe6_get(const kp_fam *f, kp_a6 addr, uint16_t port, uint8_t proto)
    const kp_rec *kp_np_get(const kp_fam *f, uint16_t port, uint8_t proto)

    ctypedef struct kp_col:
        const char *p
        ptrdiff_t step

    void kp_batch4(kp_state *st, const kp_fam *f, kp_col src, kp_col dst, kp_col dport,
                   kp_col proto, kp_col sport, char *out, ptrdiff_t out_step, int64_t n,
                   double now, kp_col times, int track)
    void kp_batch6(kp_state *st, const kp_fam *f, kp_col src, ptrdiff_t src_inner, kp_col dst,
                   ptrdiff_t dst_inner, kp_col dport, kp_col proto, kp_col sport, char *out,
                   ptrdiff_t out_step, int64_t n, double now, kp_col times, int track)

    int64_t kp_flows_drop(kp_table *t, const kp_fam *f, const int32_t *only, int32_t nonly, int udp_only)
    int kp_maglev_fill(int32_t *table, uint32_t M, int32_t n, const uint32_t *off,
                       const uint32_t *skip, const uint32_t *w)
