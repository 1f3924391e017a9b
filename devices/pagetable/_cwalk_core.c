/* The C fast path of the page-table walker (DESIGN.md "Walkers"; issue 3 item 6).
 *
 * A transcription of the pure-Python walker, step for step and in the same order, so that
 * both give identical results for any tables and any memory:
 *   walk_from        walker.py  walk_loop, bad_entry, update_leaf, s2_update_fault
 *   finish_arm_s1    arm.py     ArmS1Table.finish (permissions from its perm_table)
 *   finish_arm_s2    arm.py     ArmS2Config.finish
 *   finish_x86       x86.py     X86FirstStage.finish
 *   finish_vtdss     vtdss.py   VtdSecondStage.finish
 *   finish_ad        walker.py  AccessDirtyFormat.finish_ad
 *   regime_start     ArmS1Config.walk, ArmS2Config.walk, X86FirstStage.walk,
 *                    VtdSecondStage.walk (the checks before the tables)
 *   walker_walk      nested.py  Nested.walk
 * The spec sections are cited in those Python modules; the constants that decide each rule
 * are computed there and handed over in struct cw_table (fast.py), including the "clean
 * table entry" test (TableFormat.prepare).
 *
 * Three shortcuts, each doing exactly what the full loop would for the entries it takes:
 * descend_step goes down through clean table entries; batches run those descents for 16
 * addresses in lockstep, and read their leaves together (descend_group), when no walk can
 * write guest memory; and finish_clean_leaf hands a clean leaf straight to its format's
 * finish.  Everything else
 * (faults, updates, stage 2, other regions) goes through walk_from.
 *
 * Guest memory is read and written only through mem_read_u64 / mem_write_u64 and the
 * shortcuts' reads, which check every byte against the region table (vmm/memory.py
 * GuestMemory.read_u64 / write_u64: an access may cross into an adjacent region; one
 * touching any byte outside RAM fails as a whole).  A walk reads at most top + 1 entries
 * per table tree (nested: per stage-1 entry a whole stage-2 walk), whatever the tables
 * contain; a shortcut may read an entry again, which has no effect.
 */

#include <stdint.h>
#include <stddef.h>
#include <string.h>

#include "_cwalk_core.h"

/* walker.py ACCESS_* and Perm */
#define ACC_R 1u
#define ACC_W 2u
#define ACC_X 4u
#define ACC_PRIV 8u
#define PERM_MASK 7u

/* walker.py Reason */
#define R_NOT_PRESENT 1
#define R_BAD_TYPE 2
#define R_RESERVED 3
#define R_INPUT_RANGE 4
#define R_NON_CANONICAL 5
#define R_TTB_DISABLED 6
#define R_OUTPUT_SIZE 7
#define R_WALK_ABORT 8
#define R_ACCESS_FLAG 9
#define R_PERMISSION 10
#define R_SUPERVISOR 11
#define R_UPDATE_FAILED 12

/* devices.model FaultKind */
#define K_TRANSLATION 1
#define K_PERMISSION 2
#define K_ACCESS_FLAG 3
#define K_ADDRESS_SIZE 4
#define K_EXTERNAL_ABORT 6

/* walker.py ATTR_* */
#define ATTR_NG 1u
#define ATTR_GLOBAL 2u
#define ATTR_ACCESSED 4u
#define ATTR_DIRTY 8u
#define ATTR_SNOOP 16u

/* arm.py descriptor bits */
#define ARM_AP_2 (1ull << 7)
#define ARM_S2AP_R (1ull << 6)
#define ARM_S2AP_W (1ull << 7)
#define ARM_AF (1ull << 10)
#define ARM_NG (1ull << 11)
#define ARM_DBM (1ull << 51)
#define ARM_UXN (1ull << 54)
#define ARM_S2XN_SHIFT 53

/* x86.py / vtdss.py entry bits */
#define X86_RW (1ull << 1)
#define X86_US (1ull << 2)
#define X86_A (1ull << 5)
#define X86_D (1ull << 6)
#define X86_G (1ull << 8)
#define X86_XD (1ull << 63)
#define SS_R (1ull << 0)
#define SS_W (1ull << 1)
#define SS_X (1ull << 2)
#define SS_A (1ull << 8)
#define SS_D (1ull << 9)
#define SS_SNP (1ull << 11)

/* A walk result: a Translation (kind == CW_OK) or a Fault. */
struct res {
    uint64_t oa, size, pte, pte_addr, ipa;
    int32_t level;
    uint32_t perm, priv, user, attrs;
    uint32_t kind, reason, stage, s1ptw, has;
};

/* -- guest memory ------------------------------------------------------------------------ */

static inline uint64_t le64(uint64_t v)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return __builtin_bswap64(v);
#else
    return v;
#endif
}

/* The region holding gpa, or NULL (GuestMemory._find: last hit, then bisection). */
static inline const struct cw_region *mem_find(struct cw_memory *m, uint64_t gpa)
{
    uint32_t lo = 0, hi = m->count;
    const struct cw_region *r;

    if (m->last < m->count) {
        r = &m->regions[m->last];
        if (gpa - r->gpa < r->size && gpa >= r->gpa)
            return r;
    }
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (m->regions[mid].gpa <= gpa)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return NULL;
    r = &m->regions[lo - 1];
    if (gpa - r->gpa >= r->size)
        return NULL;
    m->last = lo - 1;
    return r;
}

/* The host byte at gpa, or NULL outside RAM. */
static uint8_t *mem_byte(struct cw_memory *m, uint64_t gpa)
{
    const struct cw_region *r = mem_find(m, gpa);
    return r ? r->host + (gpa - r->gpa) : NULL;
}

/* Reads that straddle a region's end or miss the last region used. */
static __attribute__((noinline)) int mem_read_u64_slow(struct cw_memory *m, uint64_t gpa,
                                                       uint64_t *value)
{
    const struct cw_region *r = mem_find(m, gpa);
    uint64_t v = 0;
    int i;

    if (r == NULL)
        return 0;
    if (r->size - (gpa - r->gpa) >= 8) {
        memcpy(&v, r->host + (gpa - r->gpa), 8);
        *value = le64(v);
        return 1;
    }
    /* Straddles the end of a region: every byte must be RAM. */
    for (i = 0; i < 8; i++) {
        uint8_t *b;
        if (gpa + i < gpa)
            return 0;
        b = mem_byte(m, gpa + i);
        if (b == NULL)
            return 0;
        v |= (uint64_t)*b << (8 * i);
    }
    *value = v;
    return 1;
}

static inline __attribute__((always_inline)) int mem_read_u64(struct cw_memory *m,
                                                              uint64_t gpa, uint64_t *value)
{
    /* The region of the last access (regions[0] exists even when count is 0: size 0). */
    const struct cw_region *r = &m->regions[m->last];
    uint64_t off = gpa - r->gpa, v;

    if (__builtin_expect(off < r->size && r->size - off >= 8, 1)) {
        memcpy(&v, r->host + off, 8);
        *value = le64(v);
        return 1;
    }
    return mem_read_u64_slow(m, gpa, value);
}

static int mem_write_u64(struct cw_memory *m, uint64_t gpa, uint64_t value)
{
    const struct cw_region *r = mem_find(m, gpa);
    uint8_t *bytes[8];
    int i;

    if (r == NULL)
        return 0;
    if (r->size - (gpa - r->gpa) >= 8) {
        uint64_t v = le64(value);
        memcpy(r->host + (gpa - r->gpa), &v, 8);
        return 1;
    }
    /* All or nothing: check every byte before writing any. */
    for (i = 0; i < 8; i++) {
        if (gpa + i < gpa)
            return 0;
        bytes[i] = mem_byte(m, gpa + i);
        if (bytes[i] == NULL)
            return 0;
    }
    for (i = 0; i < 8; i++)
        *bytes[i] = (uint8_t)(value >> (8 * i));
    return 1;
}

/* -- results ----------------------------------------------------------------------------- */

static inline void fault(struct res *r, uint32_t kind, uint32_t reason, uint32_t stage)
{
    r->kind = kind;
    r->reason = reason;
    r->stage = stage;
    r->level = 0;
    r->pte_addr = 0;
    r->pte = 0;
    r->ipa = 0;
    r->s1ptw = 0;
    r->has = 0;
}

/* TableFormat.fault: at the entry of height h. */
static inline void entry_fault(struct res *r, const struct cw_table *t, uint32_t kind,
                               uint32_t reason, int h, uint64_t pte_addr, int has_pte,
                               uint64_t pte)
{
    fault(r, kind, reason, t->stage);
    r->level = t->lv[h].level;
    r->pte_addr = pte_addr;
    r->has = CW_HAS_LEVEL | CW_HAS_PTE_ADDR;
    if (has_pte) {
        r->pte = pte;
        r->has |= CW_HAS_PTE;
    }
}

/* walker.py s2_update_fault */
static inline void s2_update_fault(struct res *r, uint64_t ipa)
{
    fault(r, K_PERMISSION, R_PERMISSION, 2);
    r->s1ptw = 1;
    r->ipa = ipa;
    r->has = CW_HAS_IPA;
}

/* walker.py bad_entry */
static inline void bad_entry(struct res *r, const struct cw_table *t, uint64_t pte, int h,
                             uint64_t pte_addr, uint64_t rsvd)
{
    if (pte & rsvd)
        entry_fault(r, t, K_TRANSLATION, R_RESERVED, h, pte_addr, 1, pte);
    else
        entry_fault(r, t, K_ADDRESS_SIZE, R_OUTPUT_SIZE, h, pte_addr, 1, pte);
}

/* walker.py update_leaf; returns 0 when the result is a fault.  has_pa == 0 is pa = -1. */
static inline int update_leaf(struct res *r, const struct cw_table *t, struct cw_memory *m,
                              int has_pa, uint64_t pa, uint64_t new_pte, int h,
                              uint64_t pte_addr, uint64_t pte)
{
    if (!has_pa) {
        s2_update_fault(r, pte_addr);
        return 0;
    }
    if (mem_write_u64(m, pa, new_pte))
        return 1;
    entry_fault(r, t, K_EXTERNAL_ABORT, R_UPDATE_FAILED, h, pte_addr, 1, pte);
    return 0;
}

static inline void translation(struct res *r, const struct cw_table *t, int h, uint64_t ia,
                               uint64_t pte, uint64_t pte_addr, uint32_t access,
                               uint32_t priv, uint32_t user, uint32_t attrs)
{
    uint64_t size = 1ull << t->lv[h].shift;

    r->kind = CW_OK;
    r->oa = (pte & t->lv[h].leaf_addr_mask) | (ia & (size - 1));
    r->size = size;
    r->level = t->lv[h].level;
    r->perm = (access & ACC_PRIV) ? priv : user;
    r->priv = priv;
    r->user = user;
    r->attrs = attrs;
    r->pte = pte;
    r->pte_addr = pte_addr;
}

/* -- leaves (TableFormat.finish of each format) -------------------------------------------- */

struct leaf {
    struct cw_memory *m;
    const struct cw_table *t;
    uint64_t ia, pte, pte_addr, pa, acc_and, acc_or;
    int has_pa, h;
    uint32_t access;
};

static inline void permission_fault(struct res *r, const struct leaf *l)
{
    entry_fault(r, l->t, K_PERMISSION, R_PERMISSION, l->h, l->pte_addr, 1, l->pte);
}

/* arm.py ArmS1Table.finish */
static inline void finish_arm_s1(struct res *r, const struct leaf *l)
{
    const struct cw_table *t = l->t;
    uint64_t pte = l->pte, new_pte = pte;
    uint32_t key, priv, user, perm, attrs;

    if (!(pte & ARM_AF)) {
        if (!t->ha) {
            entry_fault(r, t, K_ACCESS_FLAG, R_ACCESS_FLAG, l->h, l->pte_addr, 1, pte);
            return;
        }
        if (l->access)
            new_pte |= ARM_AF;
    }
    key = (uint32_t)(((pte >> 6) & 3) | ((pte >> 51) & 0xC)
                     | ((l->acc_or >> 55) & t->table_key_mask) | ((pte >> 43) & t->dbm_key_mask));
    priv = t->perm_table[key] & 0xF;
    user = t->perm_table[key] >> 4;
    perm = (l->access & ACC_PRIV) ? priv : user;
    if (l->access & PERM_MASK & ~perm) {
        permission_fault(r, l);
        return;
    }
    if ((l->access & ACC_W) && (pte & ARM_AP_2) && t->hd && (pte & ARM_DBM))
        new_pte &= ~ARM_AP_2;
    if (new_pte != pte
        && !update_leaf(r, t, l->m, l->has_pa, l->pa, new_pte, l->h, l->pte_addr, pte))
        return;
    attrs = ((pte & ARM_NG) ? ATTR_NG : 0) | ((new_pte & ARM_AF) ? ATTR_ACCESSED : 0)
            | (((pte & ARM_DBM) && !(new_pte & ARM_AP_2)) ? ATTR_DIRTY : 0);
    translation(r, t, l->h, l->ia, pte, l->pte_addr, l->access, priv, user, attrs);
}

/* arm.py ArmS2Config.finish */
static inline void finish_arm_s2(struct res *r, const struct leaf *l)
{
    const struct cw_table *t = l->t;
    uint64_t pte = l->pte, new_pte = pte;
    uint32_t rw, priv, user, perm, attrs;
    int clean;

    if (!(pte & ARM_AF) && !t->affd) {
        if (!t->ha) {
            entry_fault(r, t, K_ACCESS_FLAG, R_ACCESS_FLAG, l->h, l->pte_addr, 1, pte);
            return;
        }
        if (l->access)
            new_pte |= ARM_AF;
    }
    clean = t->hd && (pte & ARM_DBM) && !(pte & ARM_S2AP_W);
    rw = ((pte & ARM_S2AP_R) ? ACC_R : 0) | (((pte & ARM_S2AP_W) || clean) ? ACC_W : 0);
    if (t->xnx) {
        /* XN[1:0]: 00 both, 01 EL0 only, 10 neither, 11 EL1 only may execute. */
        uint32_t xn = (uint32_t)(pte >> ARM_S2XN_SHIFT) & 3;
        priv = rw | ((xn == 0 || xn == 3) ? ACC_X : 0);
        user = rw | ((xn == 0 || xn == 1) ? ACC_X : 0);
    } else {
        priv = user = (pte & ARM_UXN) ? rw : (rw | ACC_X);
    }
    perm = (l->access & ACC_PRIV) ? priv : user;
    if (l->access & PERM_MASK & ~perm) {
        permission_fault(r, l);
        return;
    }
    if (clean && (l->access & ACC_W))
        new_pte |= ARM_S2AP_W;
    if (new_pte != pte
        && !update_leaf(r, t, l->m, l->has_pa, l->pa, new_pte, l->h, l->pte_addr, pte))
        return;
    attrs = ((new_pte & ARM_AF) ? ATTR_ACCESSED : 0)
            | (((pte & ARM_DBM) && (new_pte & ARM_S2AP_W)) ? ATTR_DIRTY : 0);
    translation(r, t, l->h, l->ia, pte, l->pte_addr, l->access, priv, user, attrs);
}

/* walker.py AccessDirtyFormat.finish_ad: the permission check, the A/D update a request
 * makes, and the translation, for leaves with A and D bits (x86 first stage, VT-d second
 * stage). */
static inline void finish_ad(struct res *r, const struct leaf *l, uint64_t a, uint64_t d,
                             uint32_t priv, uint32_t user, uint32_t attrs)
{
    const struct cw_table *t = l->t;
    uint64_t pte = l->pte, new_pte = pte;
    uint32_t perm = (l->access & ACC_PRIV) ? priv : user;

    if (l->access & PERM_MASK & ~perm) {
        permission_fault(r, l);
        return;
    }
    if (t->ad && l->access) {
        new_pte = pte | a | ((l->access & ACC_W) ? d : 0);
        if (new_pte != pte
            && !update_leaf(r, t, l->m, l->has_pa, l->pa, new_pte, l->h, l->pte_addr, pte))
            return;
    }
    attrs |= ((new_pte & a) ? ATTR_ACCESSED : 0) | ((new_pte & d) ? ATTR_DIRTY : 0);
    translation(r, t, l->h, l->ia, pte, l->pte_addr, l->access, priv, user, attrs);
}

/* x86.py X86FirstStage.finish */
static inline void finish_x86(struct res *r, const struct leaf *l)
{
    const struct cw_table *t = l->t;
    uint64_t pte = l->pte;
    uint64_t every = l->acc_and & pte;
    int executable = !((l->acc_or | pte) & X86_XD);
    int user_page = (every & X86_US) != 0;
    int writable = (every & X86_RW) != 0;
    uint32_t user = 0, priv = 0;

    if (user_page)
        user = ACC_R | (writable ? ACC_W : 0) | (executable ? ACC_X : 0);
    if (t->sre) {
        priv = ACC_R | ((writable || !t->wpe) ? ACC_W : 0);
        if (executable && !(t->smep && user_page))
            priv |= ACC_X;
    }
    finish_ad(r, l, X86_A, X86_D, priv, user, (pte & X86_G) ? ATTR_GLOBAL : 0);
}

/* vtdss.py VtdSecondStage.finish */
static inline void finish_vtdss(struct res *r, const struct leaf *l)
{
    const struct cw_table *t = l->t;
    uint64_t pte = l->pte;
    uint64_t every = l->acc_and & pte;
    uint32_t perm;

    perm = ((every & SS_R) ? ACC_R : 0) | ((every & SS_W) ? ACC_W : 0);
    if (t->ssee ? (every & SS_X) : (every & SS_R))
        perm |= ACC_X;
    finish_ad(r, l, SS_A, SS_D, perm, perm, (pte & SS_SNP) ? ATTR_SNOOP : 0);
}

/* The format's finish for a leaf (kind is a constant where the caller knows it). */
static inline __attribute__((always_inline)) void
finish_leaf(struct res *r, const struct leaf *l, uint32_t kind)
{
    switch (kind) {
    case CW_ARM_S1:
        finish_arm_s1(r, l);
        return;
    case CW_ARM_S2:
        finish_arm_s2(r, l);
        return;
    case CW_X86:
        finish_x86(r, l);
        return;
    default:
        finish_vtdss(r, l);
        return;
    }
}

/* -- the walk ------------------------------------------------------------------------------ */

/* Where a walk of one table tree stands: the table to read next at height h, and the
 * AND / OR of the table entries used so far. */
struct walk_state {
    const struct cw_table *t;
    uint64_t table, acc_and, acc_or;
    int h;
};

static void regime_walk(struct cw_memory *m, const struct cw_regime *rg, uint64_t ia,
                        uint32_t access, const struct cw_regime *s2, struct res *r);

/* The bits hardware sets in every table entry it uses, for this access. */
static inline uint64_t table_set_of(const struct cw_table *t, uint32_t access)
{
    return access ? t->table_set : 0;
}

/* Fast descent through clean table entries (cw_prepare), without stage 2: for those the
 * loop of walk_from only accumulates and goes down, so doing just that here changes
 * nothing.  The first other entry, or one outside the region of the last access, is left
 * to walk_from at its level (reading it again has no side effect).  Returns whether the
 * state moved down one level (one step of the descent). */
static inline __attribute__((always_inline)) int
descend_step(const struct cw_region *reg, struct walk_state *st, uint64_t ia,
             uint64_t table_set)
{
    const struct cw_level *lv = &st->t->lv[st->h];
    uint64_t off = st->table + (((ia >> lv->shift) & lv->index_mask) << 3) - reg->gpa, pte;

    if (st->h <= 0 || reg->size < 8 || off > reg->size - 8)
        return 0;
    memcpy(&pte, reg->host + off, 8);
    pte = le64(pte);
    if ((pte & (lv->fast_mask | table_set)) != (lv->fast_value | table_set))
        return 0;
    st->acc_and &= pte;
    st->acc_or |= pte;
    st->table = pte & st->t->table_addr_mask;
    st->h--;
    return 1;
}

/* walker.py walk_tables from a state, specialised by the compiler for each format (kind
 * is a constant at every call site). */
static inline __attribute__((always_inline)) void
walk_from(struct cw_memory *m, struct walk_state *st, const uint32_t kind, uint64_t ia,
          uint32_t access, const struct cw_regime *s2, struct res *r)
{
    const struct cw_table *t = st->t;
    const uint64_t present = t->present_mask;
    const uint64_t table_set = table_set_of(t, access);
    uint64_t table = st->table, acc_and = st->acc_and, acc_or = st->acc_or;
    int s2_writable = 1;
    int h;

    /* One pass per level, top first: at most top + 1 entries whatever the tables hold. */
    for (h = st->h; h >= 0; h--) {
        const struct cw_level *lv = &t->lv[h];
        uint64_t pte_addr = table + (((ia >> lv->shift) & lv->index_mask) << 3);
        uint64_t pa = pte_addr, pte, type;
        struct leaf l;

        if (s2 != NULL) {
            struct res r2;
            regime_walk(m, s2, pte_addr, ACC_R, NULL, &r2);
            if (r2.kind != CW_OK) {
                *r = r2;
                r->s1ptw = 1;
                r->ipa = pte_addr;
                r->has |= CW_HAS_IPA;
                return;
            }
            pa = r2.oa;
            s2_writable = (r2.perm & ACC_W) != 0;
        }
        if (!mem_read_u64(m, pa, &pte)) {
            entry_fault(r, t, K_EXTERNAL_ABORT, R_WALK_ABORT, h, pte_addr, 0, 0);
            return;
        }
        if (!(pte & present)) {
            entry_fault(r, t, K_TRANSLATION, R_NOT_PRESENT, h, pte_addr, 1, pte);
            return;
        }
        type = pte & lv->type_mask;
        if (type == lv->table_type) {
            if (pte & lv->table_bad) {
                bad_entry(r, t, pte, h, pte_addr, lv->rsvd_table);
                return;
            }
            if (table_set && (pte & table_set) != table_set) {
                if (!s2_writable) {
                    s2_update_fault(r, pte_addr);
                    return;
                }
                if (!mem_write_u64(m, pa, pte | table_set)) {
                    entry_fault(r, t, K_EXTERNAL_ABORT, R_UPDATE_FAILED, h, pte_addr, 1, pte);
                    return;
                }
            }
            acc_and &= pte;
            acc_or |= pte;
            table = pte & t->table_addr_mask;
            continue;
        }
        if (type != lv->leaf_type) {
            entry_fault(r, t, K_TRANSLATION, t->bad_type_reason, h, pte_addr, 1, pte);
            return;
        }
        if (pte & lv->leaf_bad) {
            bad_entry(r, t, pte, h, pte_addr, lv->rsvd_leaf);
            return;
        }
        l.m = m;
        l.t = t;
        l.ia = ia;
        l.pte = pte;
        l.pte_addr = pte_addr;
        l.pa = pa;
        l.has_pa = s2_writable;  /* stage 2 forbids hardware updates of this leaf */
        l.h = h;
        l.acc_and = acc_and;
        l.acc_or = acc_or;
        l.access = access;
        finish_leaf(r, &l, kind);
        return;
    }
    fault(r, K_TRANSLATION, t->bad_type_reason, t->stage);
}

/* The regime's own checks before the walk (each format's walk method): the tree to walk,
 * or 0 with the fault in r.  kind is rg->kind; a constant where the caller knows it. */
static inline __attribute__((always_inline)) int
regime_start_kind(const struct cw_regime *rg, const uint32_t kind, uint64_t ia,
                  uint32_t access, struct walk_state *st, struct res *r)
{
    const struct cw_table *t = &rg->t[0];

    switch (kind) {
    case CW_ARM_S1: {
        /* ArmS1Config.walk: bit 55 chooses the half, tagged or not */
        unsigned upper = (unsigned)(ia >> 55) & 1;
        t = &rg->t[upper];
        if (!(rg->halves & (1u << upper))) {
            fault(r, K_TRANSLATION, R_TTB_DISABLED, 1);
            return 0;
        }
        if (((ia & rg->tag_mask[upper]) >> t->ia_bits) != rg->expect[upper]) {
            fault(r, K_TRANSLATION, R_INPUT_RANGE, 1);
            return 0;
        }
        if (t->root & t->root_limit) {
            fault(r, K_ADDRESS_SIZE, R_OUTPUT_SIZE, t->stage);
            r->level = t->start_level;
            r->has = CW_HAS_LEVEL;
            return 0;
        }
        break;
    }
    case CW_ARM_S2:
        /* ArmS2Config.walk */
        if (ia & t->input_limit) {
            fault(r, K_TRANSLATION, R_INPUT_RANGE, 2);
            return 0;
        }
        if (t->root & t->root_limit) {
            fault(r, K_ADDRESS_SIZE, R_OUTPUT_SIZE, t->stage);
            r->level = t->start_level;
            r->has = CW_HAS_LEVEL;
            return 0;
        }
        break;
    case CW_X86: {
        /* X86FirstStage.walk */
        uint64_t sign = ia >> t->sign_shift;
        if (sign && sign != t->sign_ones) {
            fault(r, K_TRANSLATION, R_NON_CANONICAL, 1);
            return 0;
        }
        if ((access & ACC_PRIV) && !t->sre) {
            fault(r, K_PERMISSION, R_SUPERVISOR, 1);
            return 0;
        }
        break;
    }
    default:
        /* VtdSecondStage.walk */
        if (ia & t->input_limit) {
            fault(r, K_TRANSLATION, R_INPUT_RANGE, 2);
            return 0;
        }
        break;
    }
    st->t = t;
    st->table = t->root;
    st->acc_and = ~0ull;
    st->acc_or = 0;
    st->h = (int)t->top;
    return 1;
}

static inline int regime_start(const struct cw_regime *rg, uint64_t ia, uint32_t access,
                               struct walk_state *st, struct res *r)
{
    return regime_start_kind(rg, rg->kind, ia, access, st, r);
}

/* The rest of a started walk, by format: without stage 2 (the compiler drops the nested
 * code from this one), and with stage 2 (stage-1 formats only). */
static void regime_finish(struct cw_memory *m, const struct cw_regime *rg,
                          struct walk_state *st, uint64_t ia, uint32_t access, struct res *r)
{
    switch (rg->kind) {
    case CW_ARM_S1:
        walk_from(m, st, CW_ARM_S1, ia, access, NULL, r);
        return;
    case CW_ARM_S2:
        walk_from(m, st, CW_ARM_S2, ia, access, NULL, r);
        return;
    case CW_X86:
        walk_from(m, st, CW_X86, ia, access, NULL, r);
        return;
    default:
        walk_from(m, st, CW_VTDSS, ia, access, NULL, r);
        return;
    }
}

static void regime_finish_nested(struct cw_memory *m, const struct cw_regime *rg,
                                 struct walk_state *st, uint64_t ia, uint32_t access,
                                 const struct cw_regime *s2, struct res *r)
{
    if (rg->kind == CW_ARM_S1)
        walk_from(m, st, CW_ARM_S1, ia, access, s2, r);
    else
        walk_from(m, st, CW_X86, ia, access, s2, r);
}

static void regime_walk(struct cw_memory *m, const struct cw_regime *rg, uint64_t ia,
                        uint32_t access, const struct cw_regime *s2, struct res *r)
{
    struct walk_state st;

    if (!regime_start(rg, ia, access, &st, r))
        return;
    if (s2 != NULL) {
        regime_finish_nested(m, rg, &st, ia, access, s2, r);
        return;
    }
    while (descend_step(&m->regions[m->last], &st, ia, table_set_of(st.t, access)))
        ;
    regime_finish(m, rg, &st, ia, access, r);
}

/* Nested.walk, or the single regime. */
static inline void walker_walk(const struct cw_walker *w, struct cw_memory *m, uint64_t ia,
                               uint32_t access, struct res *r)
{
    struct res r2;
    uint32_t priv, user;

    if (!w->nested) {
        regime_walk(m, &w->s1, ia, access, NULL, r);
        return;
    }
    regime_walk(m, &w->s1, ia, access, &w->s2, r);
    if (r->kind != CW_OK)
        return;
    regime_walk(m, &w->s2, r->oa, access, NULL, &r2);
    if (r2.kind != CW_OK) {
        uint64_t ipa = r->oa;
        *r = r2;
        r->ipa = ipa;
        r->has |= CW_HAS_IPA;
        return;
    }
    priv = r->priv & r2.priv;
    user = r->user & r2.user;
    r->oa = r2.oa;
    if (r2.size < r->size)
        r->size = r2.size;
    r->perm = (access & ACC_PRIV) ? priv : user;
    r->priv = priv;
    r->user = user;
    r->attrs |= r2.attrs;
}

/* -- entry points ---------------------------------------------------------------------------- */

/* The clean-leaf test of batches, as one mask and value: all present bits set, the leaf
 * type (not also the table type), no reserved or beyond-output-size bit.  Matching it
 * must imply what walk_from checks before it calls the format's finish, so a level where
 * it cannot gets a test nothing matches.  (The clean-table-entry test comes from
 * TableFormat.prepare.) */
static void prepare_table(struct cw_table *t)
{
    uint32_t h;

    for (h = 0; h < CW_MAX_LEVELS; h++) {
        struct cw_level *lv = &t->lv[h];
        uint64_t value = t->present_mask | lv->leaf_type;

        lv->leaf_mask = t->present_mask | lv->type_mask | lv->leaf_bad;
        lv->leaf_value = value;
        if (h > t->top || lv->leaf_type == CW_NEVER || lv->leaf_type == lv->table_type
            || t->present_mask == 0 || (value & lv->type_mask) != lv->leaf_type
            || (value & lv->leaf_bad)) {
            lv->leaf_mask = 0;
            lv->leaf_value = 1;
        }
    }
}

/* Whether a walk with this access may write guest memory (hardware A/D/AF updates). */
static int table_may_write(const struct cw_table *t)
{
    return t->table_set || t->ha || t->hd || t->ad;
}

void cw_prepare(struct cw_walker *w)
{
    int i;

    w->may_write = 0;
    for (i = 0; i < 2; i++) {
        prepare_table(&w->s1.t[i]);
        prepare_table(&w->s2.t[i]);
        w->may_write |= table_may_write(&w->s1.t[i]) || table_may_write(&w->s2.t[i]);
    }
}

uint32_t cw_walk_one(const struct cw_walker *w, struct cw_memory *mem, uint64_t ia,
                     uint32_t access, uint64_t out[9])
{
    struct res r;

    walker_walk(w, mem, ia, access, &r);
    if (r.kind == CW_OK) {
        out[0] = r.oa;
        out[1] = r.size;
        out[2] = (uint64_t)(int64_t)r.level;
        out[3] = r.perm;
        out[4] = r.priv;
        out[5] = r.user;
        out[6] = r.attrs;
        out[7] = r.pte;
        out[8] = r.pte_addr;
    } else {
        out[0] = r.kind;
        out[1] = r.reason;
        out[2] = r.stage;
        out[3] = (uint64_t)(int64_t)r.level;
        out[4] = r.pte_addr;
        out[5] = r.pte;
        out[6] = r.s1ptw;
        out[7] = r.ipa;
        out[8] = r.has;
    }
    return r.kind;
}

static inline void store(const struct res *r, size_t i, uint64_t *oa, uint64_t *info,
                         uint64_t *pte, uint64_t *pte_addr, uint64_t *ipa)
{
    uint64_t word;

    if (r->kind == CW_OK)
        word = ((uint64_t)(uint8_t)r->level << 8) | ((uint64_t)r->perm << 16)
               | ((uint64_t)r->priv << 24) | ((uint64_t)r->user << 32)
               | ((uint64_t)r->attrs << 40) | ((uint64_t)__builtin_ctzll(r->size) << 48);
    else
        word = (uint64_t)r->kind | ((uint64_t)r->reason << 8) | ((uint64_t)r->stage << 16)
               | ((uint64_t)(uint8_t)r->level << 24) | ((uint64_t)r->s1ptw << 32)
               | ((uint64_t)r->has << 36);
    if (oa)
        oa[i] = r->kind == CW_OK ? r->oa : 0;
    if (info)
        info[i] = word;
    if (pte)
        pte[i] = r->pte;
    if (pte_addr)
        pte_addr[i] = r->pte_addr;
    if (ipa)
        ipa[i] = r->kind == CW_OK ? 0 : r->ipa;
}

/* The end of a walk without stage 2 whose next entry, pte at pte_addr, was read from RAM
 * and is a clean leaf (prepare_table): what walk_from would do, without its loop.  0 when
 * the entry is not a clean leaf. */
static inline __attribute__((always_inline)) int
finish_clean_leaf(struct cw_memory *m, const struct walk_state *st, uint32_t kind,
                  uint64_t ia, uint32_t access, uint64_t pte, uint64_t pte_addr,
                  struct res *r)
{
    const struct cw_table *t = st->t;
    const struct cw_level *lv = &t->lv[st->h];
    struct leaf l;

    if ((pte & lv->leaf_mask) != lv->leaf_value)
        return 0;
    l.m = m;
    l.t = t;
    l.ia = ia;
    l.pte = pte;
    l.pte_addr = pte_addr;
    l.pa = pte_addr;
    l.has_pa = 1;
    l.h = st->h;
    l.acc_and = st->acc_and;
    l.acc_or = st->acc_or;
    l.access = access;
    finish_leaf(r, &l, kind);
    return 1;
}

/* Batches overlap walks: a walk is a chain of dependent loads, too long for the CPU to
 * overlap the next one by itself.  So a group of GROUP addresses is started together and
 * their fast descents run in lockstep, level by level (independent loads, in flight at
 * once); then each walk is finished in order.  Reading ahead like this is only done when
 * no walk of the group can write guest memory (a lookup, or no HA/HD/AD): then the order
 * of reads cannot change any result.  Otherwise each walk runs whole, in order. */
#define GROUP 16

/* descend_step for a group of started walks (started[j]) in lockstep, level by level, when
 * they all walk the same table tree (otherwise each walk descends later, on its own): no
 * table_set, for no walk of the group may write.  Each walk's state is updated in place.  Then the entry each walk stopped at, its
 * leaf if all went well, is read for all of them at once: read[j] says it was (in RAM, in
 * the region), with its value in pte[j] and its address in pte_addr[j]. */
static inline void descend_group(const struct cw_region *reg, struct walk_state *st,
                                 const int *started, const uint64_t *ia, size_t g,
                                 int *read, uint64_t *pte, uint64_t *pte_addr)
{
    const struct cw_table *t = NULL;
    unsigned active = 0, all;
    size_t j;
    int h;

    for (j = 0; j < g; j++)
        read[j] = 0;  /* before any return: the caller looks at every one */
    for (j = 0; j < g; j++) {
        if (!started[j])
            continue;
        if (t != NULL && st[j].t != t)
            return;
        t = st[j].t;
        active |= 1u << j;
    }
    if (t == NULL || reg->size < 8)
        return;
    all = active;
    for (h = (int)t->top; h > 0 && active; h--) {
        const struct cw_level *lv = &t->lv[h];
        const uint64_t shift = lv->shift, index_mask = lv->index_mask;
        const uint64_t mask = lv->fast_mask, value = lv->fast_value;
        const uint64_t addr_mask = t->table_addr_mask, base = reg->gpa, last = reg->size - 8;

        for (j = 0; j < g; j++) {
            struct walk_state *s = &st[j];
            uint64_t off, entry;

            if (!(active & (1u << j)))
                continue;
            off = s->table + (((ia[j] >> shift) & index_mask) << 3) - base;
            if (off <= last) {
                memcpy(&entry, reg->host + off, 8);
                entry = le64(entry);
                if ((entry & mask) == value) {
                    s->acc_and &= entry;
                    s->acc_or |= entry;
                    s->table = entry & addr_mask;
                    s->h = h - 1;
                    continue;
                }
            }
            active &= ~(1u << j);
        }
    }
    for (j = 0; j < g; j++) {
        const struct cw_level *lv;
        uint64_t addr, off;

        if (!(all & (1u << j)))
            continue;
        lv = &t->lv[st[j].h];
        addr = st[j].table + (((ia[j] >> lv->shift) & lv->index_mask) << 3);
        off = addr - reg->gpa;
        if (off <= reg->size - 8) {
            memcpy(&pte[j], reg->host + off, 8);
            pte[j] = le64(pte[j]);
            pte_addr[j] = addr;
            read[j] = 1;
        }
    }
}

/* cw_walk_batch for a regime of one kind (a constant: the compiler specialises the starts
 * and finishes of each format), without stage 2. */
static inline __attribute__((always_inline)) size_t
walk_batch_kind(const struct cw_walker *w, const uint32_t kind, struct cw_memory *mem,
                const uint64_t *ia, size_t n, uint32_t access_all, const uint8_t *access,
                uint64_t *oa, uint64_t *info, uint64_t *pte, uint64_t *pte_addr,
                uint64_t *ipa)
{
    size_t i, j, ok = 0;

    for (i = 0; i < n; i += GROUP) {
        size_t g = n - i < GROUP ? n - i : GROUP;
        struct res r[GROUP];
        struct walk_state st[GROUP];
        uint64_t leaf_pte[GROUP], leaf_addr[GROUP];
        int started[GROUP], read[GROUP], may_write = 0;
        const struct cw_region *reg = &mem->regions[mem->last];

        if (access != NULL) {
            for (j = 0; j < g; j++)
                may_write |= access[i + j] != 0;
        } else {
            may_write = access_all != 0;
        }
        if (may_write && w->may_write) {
            for (j = 0; j < g; j++) {
                walker_walk(w, mem, ia[i + j], access ? access[i + j] : access_all, &r[0]);
                ok += r[0].kind == CW_OK;
                store(&r[0], i + j, oa, info, pte, pte_addr, ipa);
            }
            continue;
        }
        for (j = 0; j < g; j++)
            started[j] = regime_start_kind(&w->s1, kind, ia[i + j],
                                           access ? access[i + j] : access_all, &st[j], &r[j]);
        descend_group(reg, &st[0], started, ia + i, g, read, leaf_pte, leaf_addr);
        for (j = 0; j < g; j++) {
            uint32_t a = access ? access[i + j] : access_all;
            if (started[j]) {
                /* A result of its own, stored at once: the compiler keeps it in registers. */
                struct res leaf;
                if (read[j] && finish_clean_leaf(mem, &st[j], kind, ia[i + j], a, leaf_pte[j],
                                                 leaf_addr[j], &leaf)) {
                    ok += leaf.kind == CW_OK;
                    store(&leaf, i + j, oa, info, pte, pte_addr, ipa);
                    continue;
                }
                regime_finish(mem, &w->s1, &st[j], ia[i + j], a, &r[j]);
            }
            ok += r[j].kind == CW_OK;
            store(&r[j], i + j, oa, info, pte, pte_addr, ipa);
        }
    }
    return ok;
}

size_t cw_walk_batch(const struct cw_walker *w, struct cw_memory *mem, const uint64_t *ia,
                     size_t n, uint32_t access_all, const uint8_t *access,
                     const struct cw_results *out)
{
    uint64_t *oa = out->oa, *info = out->info, *pte = out->pte, *pte_addr = out->pte_addr;
    uint64_t *ipa = out->ipa;
    size_t i, ok = 0;
    struct res r;

    if (w->nested) {
        for (i = 0; i < n; i++) {
            walker_walk(w, mem, ia[i], access ? access[i] : access_all, &r);
            ok += r.kind == CW_OK;
            store(&r, i, oa, info, pte, pte_addr, ipa);
        }
        return ok;
    }
    switch (w->s1.kind) {
    case CW_ARM_S1:
        return walk_batch_kind(w, CW_ARM_S1, mem, ia, n, access_all, access, oa, info, pte,
                               pte_addr, ipa);
    case CW_ARM_S2:
        return walk_batch_kind(w, CW_ARM_S2, mem, ia, n, access_all, access, oa, info, pte,
                               pte_addr, ipa);
    case CW_X86:
        return walk_batch_kind(w, CW_X86, mem, ia, n, access_all, access, oa, info, pte,
                               pte_addr, ipa);
    default:
        return walk_batch_kind(w, CW_VTDSS, mem, ia, n, access_all, access, oa, info, pte,
                               pte_addr, ipa);
    }
}
