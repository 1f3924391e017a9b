/* The C fast path of the page-table walker: declarations shared by the C code and by cffi.
 *
 * This file is parsed by cffi's cdef as well as compiled, so it holds only plain types,
 * prototypes and integer #defines (no include guards, no macros with arguments).  The
 * walker itself is _cwalk_core.c; devices/pagetable/fast.py fills these structures from
 * the Python format objects (walker.py, arm.py, x86.py, vtdss.py), which remain the
 * definition of every rule: the C code mirrors them step for step.
 */

#define CW_MAX_LEVELS 6

/* Table kinds (cw_table.kind) */
#define CW_ARM_S1 1
#define CW_ARM_S2 2
#define CW_X86 3
#define CW_VTDSS 4

/* Walk results (cw_walk_one return value, and bits 7:0 of an info word): 0 is a
 * translation, anything else a devices.model.FaultKind. */
#define CW_OK 0

/* Fault info word: presence of the optional Fault fields */
#define CW_HAS_LEVEL 1
#define CW_HAS_PTE_ADDR 2
#define CW_HAS_PTE 4
#define CW_HAS_IPA 8

/* An entry type that never matches (the Python walker's -1) */
#define CW_NEVER 0xFFFFFFFFFFFFFFFF

/* One level of one table tree, indexed by height h (0 = the table of the smallest pages). */
struct cw_level {
    uint64_t index_mask;
    uint64_t type_mask;
    uint64_t table_type;
    uint64_t leaf_type;
    uint64_t table_bad;       /* reserved bits | beyond-output-size bits of a table entry */
    uint64_t leaf_bad;
    uint64_t rsvd_table;      /* reserved bits alone, to tell RESERVED from OUTPUT_SIZE */
    uint64_t rsvd_leaf;
    uint64_t leaf_addr_mask;
    uint64_t fast_mask;       /* a clean table entry: pte & fast_mask == fast_value */
    uint64_t fast_value;      /* (TableFormat.prepare's clean mask and value, lookup) */
    uint64_t leaf_mask;       /* a clean leaf: pte & leaf_mask == leaf_value */
    uint64_t leaf_value;      /* (set by cw_prepare) */
    uint32_t shift;
    int32_t level;            /* the format's own name for this level */
    uint64_t unused[2];       /* 128 bytes in all: lv[h] is a shift, not a multiply */
};

/* One table tree with the controls of its format (TableFormat and its subclasses). */
struct cw_table {
    uint32_t kind;
    uint32_t stage;
    uint32_t top;
    uint32_t bad_type_reason;
    uint64_t root;
    uint64_t present_mask;
    uint64_t table_addr_mask;
    uint64_t table_set;
    struct cw_level lv[CW_MAX_LEVELS];
    /* Arm */
    uint64_t root_limit;      /* root & root_limit: the root is beyond the output size */
    uint64_t input_limit;     /* stage 2: ia & input_limit: beyond the IPA size */
    uint64_t table_key_mask;  /* stage 1: 0xF0 unless HAD */
    uint64_t dbm_key_mask;    /* stage 1: 0x100 with HD */
    uint32_t ia_bits;
    int32_t start_level;
    uint32_t ha, hd, affd, xnx;
    uint8_t perm_table[512];  /* stage 1: privileged | unprivileged << 4, by ArmS1Table key */
    /* x86 first stage and VT-d second stage */
    uint32_t sign_shift;      /* x86: va_bits - 1 */
    uint64_t sign_ones;       /* x86: the sign bits of an upper-half address */
    uint32_t sre, wpe, smep, ad, ssee;
};

/* A configured regime: a stage-1 Arm config (two halves), or a single table tree. */
struct cw_regime {
    uint32_t kind;            /* the kind of t[0] / t[1] */
    uint32_t halves;          /* Arm stage 1: bit i set when TTBi is enabled */
    uint64_t tag_mask[2];
    uint64_t expect[2];
    struct cw_table t[2];     /* t[0] only, except for Arm stage 1 */
};

/* A walker: one regime, or a stage-1 regime nested in a stage-2 one. */
struct cw_walker {
    uint32_t nested;
    uint32_t may_write;       /* some walk may update entries (set by cw_prepare) */
    struct cw_regime s1;      /* the regime when not nested */
    struct cw_regime s2;
};

/* Guest memory: regions sorted by GPA, never overlapping, each mapped at host. */
struct cw_region {
    uint64_t gpa;
    uint64_t size;
    uint8_t *host;
};

struct cw_memory {
    struct cw_region *regions;
    uint32_t count;
    uint32_t last;            /* the region of the last hit */
};

/* Where a batch's results go: one column per field, any of them NULL (not stored). */
struct cw_results {
    uint64_t *oa;
    uint64_t *info;
    uint64_t *pte;
    uint64_t *pte_addr;
    uint64_t *ipa;
};

/* Derive the walker's internal constants once its fields are set. */
void cw_prepare(struct cw_walker *w);

/* One walk.  Returns CW_OK with out[] = oa, size, level, perm, priv_perm, user_perm,
 * attrs, pte, pte_addr (the fields of a Translation); or a FaultKind with out[] = kind,
 * reason, stage, level, pte_addr, pte, s1ptw, ipa, CW_HAS_* flags. */
uint32_t cw_walk_one(const struct cw_walker *w, struct cw_memory *mem, uint64_t ia,
                     uint32_t access, uint64_t out[9]);

/* n walks with the same access (or access[i] when access is not NULL).  Each result is
 * an info word plus four addresses, stored in the columns of out (NULL: not stored).
 * Info word:
 *   translation: 7:0 = 0, 15:8 level, 23:16 perm, 31:24 priv_perm, 39:32 user_perm,
 *                47:40 attrs, 55:48 log2(size); oa, pte, pte_addr as named; ipa = 0
 *   fault:       7:0 kind, 15:8 reason, 23:16 stage, 31:24 level, 32 s1ptw,
 *                39:36 CW_HAS_*; absent fields are 0 in their arrays.
 * Returns the number of translations. */
size_t cw_walk_batch(const struct cw_walker *w, struct cw_memory *mem, const uint64_t *ia,
                     size_t n, uint32_t access_all, const uint8_t *access,
                     const struct cw_results *out);
