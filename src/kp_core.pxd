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
        KP_REC_UNKNOWN
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
        uint8_t np_filter
        uint8_t action[4]
        uint8_t fw
        uint8_t sel

    ctypedef struct kp_fwrec:
        int32_t start
        int32_t len
        uint8_t blocked[4]

    ctypedef struct kp_cidr4:
        uint32_t net
        uint32_t mask

    ctypedef struct kp_port:
        int32_t svc
        uint32_t affinity
        int32_t start[2]
        int32_t len[2]
        uint64_t seed
        int32_t tstart[2]
        uint32_t tlen[2]
        uint8_t sel

    ctypedef struct kp_ep4:
        uint32_t addr
        uint16_t port

    ctypedef struct kp_ep6:
        kp_a6 addr
        uint16_t port

    ctypedef struct kp_cidr6:
        kp_a6 net
        kp_a6 mask

    ctypedef struct kp_cip4:
        uint32_t addr
        int32_t svc

    ctypedef struct kp_cip6:
        kp_a6 addr
        int32_t svc

    ctypedef struct kp_fam:
        int v6
        int32_t nrec, nport, npool, nep, nfe, nnp, nlocal, nnpaddr, nsvc, nfw
        int32_t *rec_port
        kp_rec *rec
        kp_fwrec *fwrec
        kp_cidr4 *fw4
        kp_cidr6 *fw6
        kp_port *port
        int32_t *pool_ep
        kp_ep4 *ep4
        kp_ep6 *ep6
        uint32_t *local4
        uint32_t *npaddr4
        kp_a6 *local6
        kp_a6 *npaddr6
        int np_match_all, np_loopback, det_on
        uint32_t det_mask4, det_net4
        kp_a6 det_mask6, det_net6
        int32_t ncip, nscidr
        kp_cip4 *cip4
        kp_cip6 *cip6
        kp_cidr4 *scidr4
        kp_cidr6 *scidr6
        int64_t ntab
        uint32_t *pool_w
        int32_t *tab

    ctypedef struct kp_state:
        uint64_t seed
        uint64_t aseed
        double timeout[256]
        kp_table flows[2]
        kp_table aff[2]

    ctypedef struct kp_res:
        int32_t svc
        int32_t ep
        uint32_t ep_addr
        uint16_t ep_port
        uint8_t verdict
        uint8_t fe
        uint8_t masq

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

    int kp_table_init(kp_table *t, uint64_t nbuckets, size_t rsize, int aux)
    void kp_table_free(kp_table *t)
    void kp_table_clear(kp_table *t)

    int kp_fam_alloc(kp_fam *f, int v6, int32_t nrec, int32_t nport, int32_t npool,
                     int32_t nep, int32_t nfe, int32_t nnp, int32_t nlocal, int32_t nnpaddr,
                     int32_t nsvc, int32_t nfw, int64_t ntab, int32_t nal, int32_t nrrcur)
    int kp_fam_alloc_check(kp_fam *f, int32_t ncip, int32_t nscidr)
    void kp_fam_free(kp_fam *f)
    int kp_fam_index(kp_fam *f)
    void kp_fe4_put(kp_fam *f, uint32_t addr, uint16_t port, uint8_t proto, int32_t rec)
    void kp_fe6_put(kp_fam *f, kp_a6 addr, uint16_t port, uint8_t proto, int32_t rec)
    void kp_np_put(kp_fam *f, uint16_t port, uint8_t proto, int32_t rec)

    void kp_decide4(kp_state *st, const kp_fam *f, uint32_t src, uint32_t dst,
                    uint16_t sport, uint16_t dport, uint8_t proto, uint64_t h, int32_t rec,
                    double now, int track, int want_ep, int sels, kp_res *r)
    void kp_decide6(kp_state *st, const kp_fam *f, kp_a6 src, kp_a6 dst,
                    uint16_t sport, uint16_t dport, uint8_t proto, uint64_t h, int32_t rec,
                    double now, int track, int sels, kp_res *r)

    ctypedef struct kp_col:
        const char *p
        ptrdiff_t step

    void kp_batch4(kp_state *st, const kp_fam *f, kp_col src, kp_col dst, kp_col dport,
                   kp_col proto, kp_col sport, char *out, ptrdiff_t out_step, int64_t n,
                   double now, int track)
    void kp_batch6(kp_state *st, const kp_fam *f, kp_col src, ptrdiff_t src_inner, kp_col dst,
                   ptrdiff_t dst_inner, kp_col dport, kp_col proto, kp_col sport, char *out,
                   ptrdiff_t out_step, int64_t n, double now, int track)

    int64_t kp_remap(kp_table *t, const kp_fam *nf, const kp_fam *of)
    void kp_rr_carry(kp_fam *nf, const kp_fam *of)
    int kp_maglev_fill(int32_t *table, uint32_t M, int32_t n, const uint32_t *off,
                       const uint32_t *skip, const uint32_t *w)
