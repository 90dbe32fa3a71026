/*
 * cuda-impl.h — what the CUDA backend's host code (C11: cuda_backend.c, slice.c,
 * pool.c) and its kernels (.cu) share: the per-call tables the kernels read, and one
 * launcher per kernel (STYLE.md §3, llm.c): each takes an explicit stream, checks its
 * shapes, computes the grid, launches and returns cudaGetLastError().
 *
 * A call runs phase by phase over all its items, one launch per phase:
 *   comp (i1, τ_h) → score (logits, per-tile softmax partials) → softmax (max, sum)
 *   → select (radix select + window, ascending) → alpha
 *   → [host: fetch records] → gather (zero-copy rows) → exact (+ blend).
 *
 * Key slices live in pages of SPARQ_CU_PAGE_BYTES, each channel-major [d][P] with
 * P = sparq_cu_page_positions(d) positions, a multiple of SPARQ_CU_TILE, so that a
 * scoring tile never straddles two pages. An int8 slice's page (backend.h, quant.h)
 * holds int8 channels [d][P] and then the positions' fp32 scales [P], with
 * P = sparq_cu_page_positions_i8(d): about twice the positions per page.
 */
#ifndef SPARQ_CUDA_IMPL_H
#define SPARQ_CUDA_IMPL_H

#include <stdint.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SPARQ_CU_PAGE_BYTES (1u << 20)
/* Positions per scoring thread block: one thread each. */
#define SPARQ_CU_TILE 256u

/* Positions per page for head dimension d (fp16/bf16 elements). */
static inline uint32_t sparq_cu_page_positions(uint32_t d)
{
	return SPARQ_CU_PAGE_BYTES / (2u * d) / SPARQ_CU_TILE * SPARQ_CU_TILE;
}

/* Positions per int8 page: d int8 channels and one fp32 scale each. */
static inline uint32_t sparq_cu_page_positions_i8(uint32_t d)
{
	return SPARQ_CU_PAGE_BYTES / (d + 4u) / SPARQ_CU_TILE * SPARQ_CU_TILE;
}

/* The scales of an int8 page: after its d channels of P positions (4-byte aligned,
 * P being a multiple of SPARQ_CU_TILE). */
static inline uint32_t sparq_cu_page_scale_offset(uint32_t d, uint32_t P)
{
	return d * P;
}

/* One item of a call as the kernels see it; every pointer is a device address. */
struct sparq_cu_item {
	const float *q;          /* [g][d] queries */
	const uint64_t *mask;    /* [ceil(S/64)] bit j: position j masked; NULL = none */
	const float *vbar;       /* [d] mean of V over visible positions (read if α_h < 1) */
	const uint8_t *rows;     /* [sel_cap][rec_bytes] fetched records, in sel order */
	float *qc;               /* [g][r] q_h[i1] / τ_h */
	float *z;                /* [g][S] per-head logits, -inf where masked (per_head) */
	float *zsum;             /* [S] group-summed logits, -inf where masked */
	float *part;             /* [n_tiles][g][2] per-tile softmax (max, Σ exp) (per_head) */
	float *zmax;             /* [g] max of z_h over visible positions (per_head) */
	double *zden;            /* [g] Σ exp(z_h - zmax) over visible positions (per_head) */
	uint32_t *comp;          /* [r] out: chosen channels, ascending (not dense) */
	uint32_t *sel;           /* [sel_cap] out: selected positions, ascending */
	float *alpha;            /* [g] out */
	uint32_t *info;          /* [SPARQ_CU_INFO_WORDS] out: n_sel, flags, cache hits */
	float *y;                /* [g][d] out */
	uint32_t S, d, g, r;
	uint32_t m;              /* rows chosen by score, among visible j < w_start */
	uint32_t w_start;        /* first position of the local window */
	uint32_t sel_cap;        /* dense ? visible count : k */
	uint32_t dtype;          /* enum sparq_dtype */
	uint32_t rec_bytes;
	uint32_t n_tiles;
	uint8_t dense;           /* every visible position is selected: no scoring */
	uint8_t per_head;        /* α needs per-head logits (blend on, not dense) */
	uint8_t pad[2];
	/* v2 kernels only (SPARQ_CUDA_KERNELS unset; v1 ignores them) */
	const uint32_t *seg_pos; /* [n_seg + 1] first position of each record run, then S;
				  * NULL: rows holds the records (staged) */
	const uint64_t *seg_addr;/* [n_seg] device address of each run's first record */
	uint32_t n_seg;
	uint32_t ex_rows;        /* selected rows per exact-step block */
	float *ex_acc;           /* [sel_cap / ex_rows rounded up][g][d] partial Σ p·V */
	float *ex_ml;            /* [same][g][2] partial (max, Σ p) */
	uint32_t *sel_hist;      /* [4][256] radix histograms, zeroed before the call */
	uint32_t *sel_state;     /* [4] prefix, mask, keys still to take; zeroed likewise */
	uint32_t *sel_cnt;       /* [n_sel_chunks][2] per chunk: rows surely taken, ties */
	uint32_t *sel_off;       /* [n_sel_chunks][2] per chunk: first output, ties before */
	uint32_t n_sel_chunks;   /* ceil(S / SPARQ_CU_SEL_CHUNK) */
	/* the stream's GPU row cache (v2, zero-copy items; NULL rc_tag: none): slot
	 * pos & (rc_slots - 1) holds record pos when rc_tag[slot] == pos + 1 */
	uint32_t rc_slots;       /* a power of two */
	uint32_t *rc_tag;        /* [rc_slots] */
	uint8_t *rc_data;        /* [rc_slots][rec_bytes] */
	uint32_t *rc_mark;       /* [rc_slots] this call: SPARQ_CU_RC_HIT, or 1 + the row
				  * that refills the slot; zeroed before the call */
};

#define SPARQ_CU_RC_HIT 0x80000000u
/* info words: [0] rows selected, [1] flags, [2] rows found in the row cache */
#define SPARQ_CU_INFO_WORDS 4u

/* Positions per block of the v2 select kernels. */
#define SPARQ_CU_SEL_CHUNK 2048u
/* Shared memory for the records of one v2 exact-step block, and for its g × rows logits. */
#define SPARQ_CU_EX_BYTES (32u << 10)
#define SPARQ_CU_EX_ROWS_MAX 64u
#define SPARQ_CU_EX_LOGITS 2048u

/* Selected rows per v2 exact-step block for records of rec_bytes and g heads. */
static inline uint32_t sparq_cu_ex_rows(uint32_t rec_bytes, uint32_t g)
{
	uint32_t n = SPARQ_CU_EX_BYTES / rec_bytes;

	if (n > SPARQ_CU_EX_LOGITS / g)
		n = SPARQ_CU_EX_LOGITS / g;
	return n > SPARQ_CU_EX_ROWS_MAX ? SPARQ_CU_EX_ROWS_MAX : n ? n : 1u;
}

#define SPARQ_CU_OVERFLOW 1u

/* One scoring tile: SPARQ_CU_TILE positions of one item, inside one page. */
struct sparq_cu_tile {
	const uint16_t *kt;      /* page base: channel c of column t at kt[c * pitch + t];
				  * NULL in an int8 slice */
	const int8_t *q8;        /* int8 slice: its page base, the same layout, else NULL */
	const float *scale;      /* int8 slice: the page's scales [pitch] */
	uint32_t pitch;          /* positions per page */
	uint32_t col;            /* first column of the tile in the page */
	uint32_t pos;            /* stream position of that column */
	uint32_t item;
	uint32_t t;              /* tile index within the item */
	uint32_t pad;
};

/* One record to copy from mapped host memory into the device rows buffer. */
struct sparq_cu_copy {
	const uint8_t *src;      /* device address of mapped host memory */
	uint8_t *dst;
	uint32_t bytes;
	uint32_t pad;
};

/* Launchers: 0 on success, else the CUDA error of the launch. */
cudaError_t sparq_cu_launch_comp(cudaStream_t st, const struct sparq_cu_item *items,
				 uint32_t n_items);
cudaError_t sparq_cu_launch_score(cudaStream_t st, const struct sparq_cu_item *items,
				  const struct sparq_cu_tile *tiles, uint32_t n_tiles,
				  uint32_t g_max);
cudaError_t sparq_cu_launch_softmax(cudaStream_t st, const struct sparq_cu_item *items,
				    uint32_t n_items);
cudaError_t sparq_cu_launch_select(cudaStream_t st, const struct sparq_cu_item *items,
				   uint32_t n_items);
cudaError_t sparq_cu_launch_alpha(cudaStream_t st, const struct sparq_cu_item *items,
				  uint32_t n_items);
cudaError_t sparq_cu_launch_gather(cudaStream_t st, const struct sparq_cu_copy *copies,
				   uint32_t n);
cudaError_t sparq_cu_launch_exact(cudaStream_t st, const struct sparq_cu_item *items,
				  uint32_t n_items, uint32_t g_max, uint32_t d_max);
/*
 * v2 (the default): select over many blocks per item (radix histograms per chunk of
 * SPARQ_CU_SEL_CHUNK positions, then an ordered compaction with per-chunk offsets),
 * same rows and order as sparq_cu_launch_select. sel_chunks_max: the most chunks of
 * any item.
 */
cudaError_t sparq_cu_launch_select2(cudaStream_t st, const struct sparq_cu_item *items,
				    uint32_t n_items, uint32_t sel_chunks_max);
/*
 * v2 exact step: blocks over (item, ex_rows selected rows) read the records in place
 * (seg_pos/seg_addr: mapped host memory) or from rows (staged), write per-block
 * softmax partials, and a merge kernel combines them and blends with v̄.
 * ex_chunks_max: the most blocks of any item (sel_cap / ex_rows rounded up).
 */
cudaError_t sparq_cu_launch_exact2(cudaStream_t st, const struct sparq_cu_item *items,
				   uint32_t n_items, uint32_t ex_chunks_max, uint32_t g_max);
/*
 * Row-cache lookup before exact2, for the items with a cache: marks the slots that
 * hold a selected row (counting the hits in info[2]), then lets each missing row
 * claim its slot when no selected row hits there and no earlier miss claimed it.
 * exact2 reads hits from the cache and writes the claimed rows into it.
 * rows_max: the largest sel_cap of those items.
 */
cudaError_t sparq_cu_launch_rc_probe(cudaStream_t st, const struct sparq_cu_item *items,
				     uint32_t n_items, uint32_t rows_max);
/*
 * Writes n rows [n][d] (src, device) into a page as columns col..col+n-1 of [d][pitch]
 * (the decode append: one column per stream, nothing else rewritten).
 */
cudaError_t sparq_cu_launch_scatter(cudaStream_t st, const uint16_t *src, uint32_t n,
				    uint32_t d, uint16_t *page, uint32_t pitch, uint32_t col);
/*
 * The int8 append (kernels_score.cu): quantized rows q [n][d] and their scales [n]
 * (device, quantized on the host by quant.h) written as columns col..col+n-1 of an
 * int8 page of pitch positions.
 */
cudaError_t sparq_cu_launch_scatter_i8(cudaStream_t st, const int8_t *q, const float *scale,
				       uint32_t n, uint32_t d, int8_t *page, uint32_t pitch,
				       uint32_t col);

#ifdef __cplusplus
}
#endif

#endif
