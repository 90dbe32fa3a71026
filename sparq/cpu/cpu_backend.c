/*
 * cpu_backend.c — the CPU backend: key slices in host RAM and the SparQ decode step
 * (SPARQ.md steps 1-7) on the processor's cores.
 *
 * A batch runs phase by phase over all its items — score, select, gather, exact —
 * so that the store sees one gather for the whole layer (a tier can batch its reads)
 * and so that each phase's wall time is measurable. Within a phase the items are
 * spread over the worker pool.
 *
 * Key slice: blocks of SLICE_BLOCK positions, each channel-major ([d][cap]); only the
 * last block may be smaller, and it doubles as it fills, so short streams stay small
 * and an append never rewrites more than that one block. Block capacities are
 * multiples of the kernel tile and unused tail positions are zero, so scoring runs
 * whole tiles without a remainder loop. In the int8 format (backend.h, quant.h) a
 * block holds int8 channels plus one fp32 scale per position instead of fp16/bf16.
 *
 * Scratch memory lives in the backend and is reused across calls (no page faults
 * on the decode path); attend calls on one backend are therefore serialized.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../backend-impl.h"
#include "../half.h"
#include "../quant.h"
#include "../stream.h"
#include "cpu-impl.h"
#include "pool.h"

/* 16K positions: each chosen channel is then a 32 KiB run, long enough to stream */
#define SLICE_BLOCK 16384u

struct cpu_block {
	uint16_t *kt;   /* [d][cap] native format, else NULL */
	int8_t *q8;     /* [d][cap] int8 format, else NULL */
	float *scale;   /* [cap] int8 format: s_j of each position */
	uint32_t cap;
};

struct cpu_slice {
	struct sparq_slice pub;
	enum sparq_slice_format fmt;
	uint32_t n_blocks, cap_blocks;
	struct cpu_block *blocks;
};

struct cpu_ctx {
	struct sparq_backend pub;
	const struct sparq_cpu_kernels *k;
	enum sparq_slice_format fmt;  /* of every slice this backend creates */
	struct sparq_pool *pool;
	pthread_mutex_t mu;      /* one attend at a time: the scratch arena is shared */
	uint8_t *scratch;
	size_t scratch_cap;
};

/* Per-item state of one call, carved from the scratch arena. */
struct item_work {
	struct sparq_attend_item *it;
	struct cpu_slice *sl;
	struct sparq_store *store;
	uint32_t S, S_pad, d, g, n_vis, rec_bytes;
	bool dense;          /* every visible position is selected: exact dense attention */
	bool per_head;       /* per-head logits are needed (the blend's softmax mass) */
	bool gathered;       /* its rows were fetched by gather_batched */
	bool fetch;          /* the call reads records (not select-only) */
	bool in_place;       /* records read where they lie (store addr), else copied */
	bool held;           /* in_place under a store hold: released at the call's end */
	float *q_comp;       /* [g][r] q_h[i1] / τ_h, or [1][r] their sum over heads */
	uint32_t *comp;      /* [r] */
	float *z;            /* [g][S_pad] per-head approximate logits (per_head only) */
	float *zsum;         /* [S_pad] group-summed logits */
	float *zmax;         /* [g] */
	double *zden;        /* [g] softmax denominators over the visible positions */
	uint32_t *sel;       /* [n_sel] ascending */
	uint32_t n_sel;
	uint32_t *cand;      /* [3S] select scratch */
	float *alpha;        /* [g] */
	const void **rows;   /* [n_sel] record addresses */
	uint8_t *gbuf;       /* [n_sel][rec_bytes] when the records are copied */
	float *w;            /* [g][n_sel] exact logits, then weights */
	float *qs;           /* [g][d] q / sqrt(d) */
	uint8_t *mbuf;       /* [MASK_BATCH][rec_bytes] masked rows for the mean */
	uint32_t *mpos;      /* [MASK_BATCH] */
	const void **mrows;  /* [MASK_BATCH] */
	int ret;
	const char *why;
};

#define MASK_BATCH 256u

struct call {
	struct cpu_ctx *cx;
	struct item_work *w;
	uint32_t n;
	enum sparq_attend_mode mode;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static float elem(uint16_t x, enum sparq_dtype dt)
{
	return dt == SPARQ_DTYPE_F16 ? sparq_f16_to_f32(x) : sparq_bf16_to_f32(x);
}

/* ---- key slice ---- */

static int cpu_slice_create(void *ctx, uint32_t d, enum sparq_dtype dt, struct sparq_slice **out)
{
	struct cpu_ctx *cx = ctx;
	struct cpu_slice *sl = calloc(1, sizeof(*sl));

	if (!sl)
		return -ENOMEM;
	sl->pub.owner = &cx->pub;
	sl->pub.d = d;
	sl->pub.dtype = dt;
	sl->fmt = cx->fmt;
	*out = &sl->pub;
	return 0;
}

static void cpu_slice_destroy(void *ctx, struct sparq_slice *pub)
{
	struct cpu_slice *sl = (struct cpu_slice *)pub;

	(void)ctx;
	if (!sl)
		return;
	for (uint32_t b = 0; b < sl->n_blocks; b++) {
		free(sl->blocks[b].kt);
		free(sl->blocks[b].q8);
		free(sl->blocks[b].scale);
	}
	free(sl->blocks);
	free(sl);
}

/*
 * A zeroed block of capacity cap in the slice's format, holding a copy of the first
 * old->cap positions of old when old is given.
 */
static int block_alloc(const struct cpu_slice *sl, uint32_t cap, const struct cpu_block *old,
		       struct cpu_block *out)
{
	uint32_t d = sl->pub.d;
	struct cpu_block nb = { .cap = cap };

	if (sl->fmt == SPARQ_SLICE_INT8) {
		nb.q8 = calloc((size_t)d * cap, 1);
		nb.scale = calloc(cap, sizeof(float));
		if (!nb.q8 || !nb.scale) {
			free(nb.q8);
			free(nb.scale);
			return -ENOMEM;
		}
	} else {
		nb.kt = calloc((size_t)d * cap, sizeof(uint16_t));
		if (!nb.kt)
			return -ENOMEM;
	}
	for (uint32_t c = 0; old && c < d; c++) {
		if (nb.q8)
			memcpy(nb.q8 + (size_t)c * cap, old->q8 + (size_t)c * old->cap, old->cap);
		else
			memcpy(nb.kt + (size_t)c * cap, old->kt + (size_t)c * old->cap,
			       old->cap * sizeof(uint16_t));
	}
	if (old && nb.scale)
		memcpy(nb.scale, old->scale, old->cap * sizeof(float));
	*out = nb;
	return 0;
}

/* Makes block b able to hold offset off (b is the last block or a new one). */
static int slice_reserve(struct cpu_slice *sl, uint32_t b, uint32_t off)
{
	struct cpu_block nb;
	int ret;

	if (b >= sl->n_blocks) {
		if (b >= sl->cap_blocks) {
			uint32_t cap = sl->cap_blocks ? 2 * sl->cap_blocks : 4;
			struct cpu_block *t = realloc(sl->blocks, cap * sizeof(*t));
			if (!t)
				return -ENOMEM;
			sl->blocks = t;
			sl->cap_blocks = cap;
		}
		/* a stream past its first block is long: later blocks start full-size */
		ret = block_alloc(sl, b == 0 ? SPARQ_CPU_TILE : SLICE_BLOCK, NULL, &nb);
		if (ret)
			return ret;
		sl->blocks[b] = nb;
		sl->n_blocks = b + 1;
	}
	struct cpu_block *blk = &sl->blocks[b];
	if (off < blk->cap)
		return 0;
	uint32_t cap = blk->cap;
	while (cap <= off)
		cap *= 2;
	ret = block_alloc(sl, cap, blk, &nb);
	if (ret)
		return ret;
	free(blk->kt);
	free(blk->q8);
	free(blk->scale);
	*blk = nb;
	return 0;
}

/* Reserves every block positions pos..pos+n-1 touch, before anything is written: a
 * failure then leaves the positions below pos as they were (spare capacity is harmless). */
static int slice_reserve_range(struct cpu_slice *sl, uint32_t pos, uint32_t n)
{
	uint32_t last = pos + n - 1;

	for (uint32_t b = pos / SLICE_BLOCK; b <= last / SLICE_BLOCK; b++) {
		int ret = slice_reserve(sl, b, b == last / SLICE_BLOCK ? last % SLICE_BLOCK
								   : SLICE_BLOCK - 1);
		if (ret)
			return ret;
	}
	return 0;
}

static int cpu_slice_write(void *ctx, struct sparq_slice *pub, uint32_t pos, uint32_t n,
			   const uint16_t *k_rows)
{
	struct cpu_slice *sl = (struct cpu_slice *)pub;
	uint32_t d = pub->d;
	int ret;

	(void)ctx;
	if (n == 0)
		return 0;
	ret = slice_reserve_range(sl, pos, n);
	if (ret)
		return ret;
	for (uint32_t i = 0; i < n;) {
		uint32_t p = pos + i, b = p / SLICE_BLOCK, off = p % SLICE_BLOCK;
		uint32_t run = SLICE_BLOCK - off < n - i ? SLICE_BLOCK - off : n - i;

		struct cpu_block *blk = &sl->blocks[b];
		if (sl->fmt == SPARQ_SLICE_INT8) {
			/* quantized straight into the channel-major block (quant.h) */
			sparq_quant_rows(k_rows + (size_t)i * d, run, d, pub->dtype,
					 blk->q8 + off, blk->cap, 1, blk->scale + off);
			i += run;
			continue;
		}
		/* transpose the run channel by channel: each write stream stays sequential */
		for (uint32_t c = 0; c < d; c++) {
			uint16_t *dst = blk->kt + (size_t)c * blk->cap + off;
			const uint16_t *src = k_rows + (size_t)i * d + c;
			for (uint32_t t = 0; t < run; t++)
				dst[t] = src[(size_t)t * d];
		}
		i += run;
	}
	return 0;
}

int sparq_cpu_slice_write_q8(struct sparq_slice *pub, uint32_t pos, uint32_t n,
			     const int8_t *q_rows, const float *scale)
{
	struct cpu_slice *sl = (struct cpu_slice *)pub;
	uint32_t d = pub->d;
	int ret;

	if (sl->fmt != SPARQ_SLICE_INT8)
		return -EINVAL;
	if (n == 0)
		return 0;
	ret = slice_reserve_range(sl, pos, n);
	if (ret)
		return ret;
	for (uint32_t t = 0; t < n; t++) {
		uint32_t p = pos + t, off = p % SLICE_BLOCK;
		struct cpu_block *blk = &sl->blocks[p / SLICE_BLOCK];

		for (uint32_t c = 0; c < d; c++)
			blk->q8[(size_t)c * blk->cap + off] = q_rows[(size_t)t * d + c];
		blk->scale[off] = scale[t];
	}
	return 0;
}

/* ---- per-item phases ---- */

static void choose_components(const float *q, uint32_t g, uint32_t d, uint32_t r,
			      uint32_t *comp, float *score)
{
	/* r largest Σ_h|q_h,i|, ties to the lower index: a partial selection sort over
	 * d <= 1024 entries keeps the rule obvious; it is O(r·d), negligible next to S. */
	for (uint32_t i = 0; i < d; i++) {
		float s = 0.0f;
		for (uint32_t h = 0; h < g; h++)
			s += fabsf(q[h * d + i]);
		score[i] = s;
	}
	for (uint32_t t = 0; t < r; t++) {
		uint32_t best = UINT32_MAX;
		for (uint32_t i = 0; i < d; i++) {
			if (score[i] < 0.0f)
				continue; /* taken */
			if (best == UINT32_MAX || score[i] > score[best])
				best = i;
		}
		comp[t] = best;
		score[best] = -1.0f;
	}
	/* ascending channel order: the slice is then walked front to back */
	for (uint32_t a = 1; a < r; a++) {
		uint32_t v = comp[a], b = a;
		for (; b > 0 && comp[b - 1] > v; b--)
			comp[b] = comp[b - 1];
		comp[b] = v;
	}
}

static void phase_score(struct call *c, struct item_work *w)
{
	const struct sparq_cpu_kernels *k = c->cx->k;
	const struct sparq_attend_item *it = w->it;
	uint32_t d = w->d, g = w->g, r = it->used.r;
	enum sparq_dtype dt = w->sl->pub.dtype;
	float *cscore = w->qs; /* [d] free until the exact phase */

	choose_components(it->q, g, d, r, w->comp, cscore);
	for (uint32_t h = 0; h < g; h++) {
		const float *qh = it->q + (size_t)h * d;
		double all = 0.0, kept = 0.0;

		for (uint32_t i = 0; i < d; i++)
			all += fabsf(qh[i]);
		for (uint32_t i = 0; i < r; i++)
			kept += fabsf(qh[w->comp[i]]);
		/* τ = sqrt(d·kept/all); a head with nothing kept has all-zero logits */
		float tau = kept > 0.0 ? (float)sqrt((double)d * kept / all) : sqrtf((float)d);
		for (uint32_t i = 0; i < r; i++)
			w->q_comp[h * r + i] = qh[w->comp[i]] / tau;
	}
	if (!w->per_head) {
		/* Selection needs only Σ_h z_h, which is linear in q: score once with the
		 * summed query instead of g times. */
		for (uint32_t h = 1; h < g; h++)
			for (uint32_t i = 0; i < r; i++)
				w->q_comp[i] += w->q_comp[h * r + i];
	}

	uint32_t G = w->per_head ? g : 1;
	float *out = w->per_head ? w->z : w->zsum;
	float big = 0.0f;
	for (uint32_t b = 0; b < w->sl->n_blocks; b++) {
		const struct cpu_block *blk = &w->sl->blocks[b];
		uint32_t base = b * SLICE_BLOCK;
		uint32_t n = w->S - base < blk->cap ? w->S - base : blk->cap;

		n = (n + SPARQ_CPU_TILE - 1) / SPARQ_CPU_TILE * SPARQ_CPU_TILE;
		float b_big = blk->q8 ? k->score_i8(blk->q8, blk->scale, blk->cap, n, w->comp, r,
						    w->q_comp, G, out + base, w->S_pad)
				      : k->score(blk->kt, blk->cap, n, w->comp, r, w->q_comp, G, dt,
						 out + base, w->S_pad);
		big = (b_big > big || b_big != b_big) ? b_big : big;
	}

	/* finite inputs can still overflow fp32 logits (bf16 keys reach 3e38) */
	const uint64_t *ex = it->exclude;
	bool finite = big <= FLT_MAX;
	if (w->per_head && finite) {
		for (uint32_t j = 0; j < w->S; j++) {
			float s = 0.0f;
			for (uint32_t h = 0; h < g; h++)
				s += w->z[(size_t)h * w->S_pad + j];
			w->zsum[j] = s;
			finite &= fabsf(s) <= FLT_MAX;
		}
		for (uint32_t h = 0; h < g; h++) {
			const float *zh = w->z + (size_t)h * w->S_pad;
			float m = -FLT_MAX;
			for (uint32_t j = 0; j < w->S; j++)
				if (!sparq_excluded(ex, j))
					m = zh[j] > m ? zh[j] : m;
			w->zmax[h] = m;
			w->zden[h] = k->exp_shift(zh, w->S, m, ex, NULL);
		}
	}
	if (!finite) {
		w->ret = -ERANGE;
		w->why = "approximate logits overflow fp32 (keys or queries too large)";
	}
	if (it->comp)
		memcpy(it->comp, w->comp, r * sizeof(uint32_t));
}

static void phase_select(struct call *c, struct item_work *w)
{
	const struct sparq_attend_item *it = w->it;
	const uint64_t *ex = it->exclude;
	uint32_t S = w->S;

	if (w->dense) {
		uint32_t o = 0;
		for (uint32_t j = 0; j < S; j++)
			if (!sparq_excluded(ex, j))
				w->sel[o++] = j;
		w->n_sel = o;
		for (uint32_t h = 0; h < w->g; h++)
			w->alpha[h] = 1.0f;
		return;
	}

	/* local window: the current token (if visible) and the l most recent visible
	 * positions before it — an explicit set, never a logit bonus */
	uint32_t k = it->used.k, wn = 0, w_start = S;
	uint32_t want = it->used.l + !sparq_excluded(ex, S - 1);
	for (uint32_t j = S; j-- > 0 && wn < want;) {
		if (!sparq_excluded(ex, j)) {
			w_start = j;
			wn++;
		}
	}
	uint32_t m = k - wn;
	sparq_cpu_topk(w->zsum, w_start, ex, m, w->cand, w->sel);
	uint32_t o = m;
	for (uint32_t j = w_start; j < S; j++)
		if (!sparq_excluded(ex, j))
			w->sel[o++] = j;
	w->n_sel = o;

	for (uint32_t h = 0; h < w->g; h++) {
		if (!it->used.blend) {
			w->alpha[h] = 1.0f;
			continue;
		}
		const float *zh = w->z + (size_t)h * w->S_pad;
		float *tmp = w->w; /* [n_sel] free until the exact phase */
		for (uint32_t i = 0; i < w->n_sel; i++)
			tmp[i] = zh[w->sel[i]];
		double num = c->cx->k->exp_shift(tmp, w->n_sel, w->zmax[h], NULL, NULL);
		double a = num / w->zden[h];
		w->alpha[h] = (float)(a > 1.0 ? 1.0 : a);
	}
}

/* Record addresses for pos[0..n): in place (the item's in_place), else copied to buf. */
static int fetch_rows(struct sparq_store *st, struct sparq_store_stream *rs, bool in_place,
		      const uint32_t *pos, uint32_t n, uint32_t rec_bytes, const void **rows,
		      uint8_t *buf)
{
	if (in_place) {
		for (uint32_t i = 0; i < n;) {
			uint32_t run = 0;
			const uint8_t *a = st->ops->addr(st->ctx, rs, pos[i], &run);
			if (!a)
				return -ERANGE;
			/* consecutive positions in one chunk need no further lookups */
			uint32_t t = 0;
			do {
				rows[i + t] = a + (size_t)(pos[i + t] - pos[i]) * rec_bytes;
				t++;
			} while (i + t < n && pos[i + t] - pos[i] < run);
			i += t;
		}
		return 0;
	}
	struct sparq_gather g = { .stream = rs, .pos = pos, .n = n, .out = buf };
	int ret = st->ops->gather(st->ctx, &g, 1);
	for (uint32_t i = 0; ret == 0 && i < n; i++)
		rows[i] = buf + (size_t)i * rec_bytes;
	return ret;
}

static void phase_gather(struct call *c, struct item_work *w)
{
	(void)c;
	w->ret = fetch_rows(w->store, sparq_stream_records(w->it->stream), w->in_place, w->sel,
			    w->n_sel, w->rec_bytes, w->rows, w->gbuf);
	if (w->ret)
		w->why = "record store gather failed";
}

/*
 * Items whose records are copied (NVMe behind them) get one gather per store for the
 * whole call, so the reads of every stream of the layer are in flight together; items
 * read in place are resolved item by item on the pool.
 */
static int gather_batched(struct item_work *w, uint32_t n)
{
	struct sparq_gather *g = calloc(n, sizeof(*g));
	int ret = 0;

	if (!g)
		return -ENOMEM;
	for (uint32_t i = 0; i < n && !ret; i++) {
		struct sparq_store *st = w[i].store;
		uint32_t ng = 0;

		if (w[i].in_place || w[i].gathered)
			continue; /* read in place, or already gathered with an earlier item */
		for (uint32_t j = i; j < n; j++) {
			if (w[j].store != st || w[j].in_place)
				continue;
			g[ng++] = (struct sparq_gather){ .stream = sparq_stream_records(w[j].it->stream),
							 .pos = w[j].sel, .n = w[j].n_sel,
							 .out = w[j].gbuf };
			for (uint32_t r = 0; r < w[j].n_sel; r++)
				w[j].rows[r] = w[j].gbuf + (size_t)r * w[j].rec_bytes;
			w[j].gathered = true;
		}
		ret = st->ops->gather(st->ctx, g, ng);
		if (ret) {
			for (uint32_t j = i; j < n; j++)
				if (w[j].store == st && !w[j].in_place) {
					w[j].ret = ret;
					w[j].why = "record store gather failed";
				}
		}
	}
	free(g);
	return ret;
}

/* v̄ over the visible positions: the running sum less the masked rows. */
static int visible_mean(struct item_work *w, float *vbar)
{
	const uint64_t *ex = w->it->exclude;
	enum sparq_dtype dt = w->sl->pub.dtype;
	struct sparq_stream *s = w->it->stream;
	double *acc = (double *)w->w; /* reuse: [d] doubles fit in w, see scratch sizing */
	float *sum = vbar;
	uint32_t d = w->d, nm = 0;

	sparq_stream_vsum(s, sum);
	for (uint32_t i = 0; i < d; i++)
		acc[i] = sum[i];
	for (uint32_t j = 0; ex && j <= w->S; j++) {
		if (j < w->S && sparq_excluded(ex, j))
			w->mpos[nm++] = j;
		if (nm == MASK_BATCH || (j == w->S && nm)) {
			int ret = fetch_rows(w->store, sparq_stream_records(s), w->in_place,
					     w->mpos, nm, w->rec_bytes, w->mrows, w->mbuf);
			if (ret)
				return ret;
			for (uint32_t t = 0; t < nm; t++) {
				const uint16_t *v = (const uint16_t *)w->mrows[t] + d;
				for (uint32_t i = 0; i < d; i++)
					acc[i] -= elem(v[i], dt);
			}
			nm = 0;
		}
	}
	for (uint32_t i = 0; i < d; i++)
		vbar[i] = (float)(acc[i] / w->n_vis);
	return 0;
}

static void phase_exact(struct call *c, struct item_work *w)
{
	const struct sparq_cpu_kernels *k = c->cx->k;
	struct sparq_attend_item *it = w->it;
	uint32_t d = w->d, g = w->g, n = w->n_sel;
	enum sparq_dtype dt = w->sl->pub.dtype;
	float inv = 1.0f / sqrtf((float)d);
	float *vbar = w->zmax; /* [d]: sized max(g, d) */
	bool blended = false;

	/* scale q before the dot product (SPARQ.md pitfall: fp16 range) */
	for (uint32_t i = 0; i < g * d; i++)
		w->qs[i] = it->q[i] * inv;
	k->attend_rows(w->rows, n, d, w->qs, g, dt, it->y, w->w);
	for (uint32_t h = 0; h < g; h++)
		blended |= w->alpha[h] < 1.0f;
	if (blended) {
		/* w->w is free again: visible_mean borrows it for its double accumulator */
		w->ret = visible_mean(w, vbar);
		if (w->ret) {
			w->why = "record store read failed (masked rows for the mean)";
			return;
		}
		for (uint32_t h = 0; h < g; h++) {
			float a = w->alpha[h];
			for (uint32_t i = 0; i < d; i++)
				it->y[h * d + i] = a * it->y[h * d + i] + (1.0f - a) * vbar[i];
		}
	}
}

static void run_score(void *arg, uint32_t t, uint32_t worker)
{
	struct call *c = arg;
	(void)worker;
	if (!c->w[t].dense)
		phase_score(c, &c->w[t]);
}

static void run_select(void *arg, uint32_t t, uint32_t worker)
{
	struct call *c = arg;
	(void)worker;
	if (c->w[t].ret == 0)
		phase_select(c, &c->w[t]);
}

static void run_gather(void *arg, uint32_t t, uint32_t worker)
{
	struct call *c = arg;
	(void)worker;
	if (c->w[t].in_place)
		phase_gather(c, &c->w[t]);
}

static void run_exact(void *arg, uint32_t t, uint32_t worker)
{
	struct call *c = arg;
	(void)worker;
	phase_exact(c, &c->w[t]);
}

/* ---- scratch sizing ---- */

static size_t align64(size_t x)
{
	return (x + 63) & ~(size_t)63;
}

static uint32_t count_visible(const uint64_t *ex, uint32_t S)
{
	uint32_t n = 0;
	for (uint32_t j = 0; j < S; j++)
		n += !sparq_excluded(ex, j);
	return n;
}

/* Sizes item i's scratch and, when base is given, points its buffers into it. */
static size_t layout_item(struct item_work *w, uint8_t *base)
{
	size_t off = 0;
	uint32_t g = w->g, d = w->d, r = w->it->used.r;
	uint32_t n_sel = w->dense ? w->n_vis : w->it->used.k;
	uint32_t gd = g > d ? g : d;
	/* exact-step weights, at least a tile of them; visible_mean's [d] doubles */
	size_t wn = (size_t)g * (n_sel > SPARQ_CPU_ROW_TILE ? n_sel : SPARQ_CPU_ROW_TILE);

	if (wn < 2 * (size_t)d)
		wn = 2 * (size_t)d;
#define CARVE(field, count)                                                       \
	do {                                                                      \
		if (base)                                                         \
			w->field = (void *)(base + off);                          \
		off += align64((size_t)(count) * sizeof(*w->field));              \
	} while (0)
	CARVE(q_comp, (size_t)g * r);
	CARVE(comp, r);
	CARVE(zmax, gd);
	CARVE(zden, g);
	CARVE(alpha, g);
	CARVE(qs, (size_t)g * d);
	CARVE(sel, n_sel);
	CARVE(rows, n_sel);
	CARVE(w, wn);
	if (!w->dense) {
		CARVE(zsum, w->S_pad);
		CARVE(cand, 3 * (size_t)w->S);
		if (w->per_head)
			CARVE(z, (size_t)g * w->S_pad);
	}
	if (w->fetch && !w->in_place)
		CARVE(gbuf, (size_t)n_sel * w->rec_bytes);
	if (w->it->exclude) {
		CARVE(mpos, MASK_BATCH);
		CARVE(mrows, MASK_BATCH);
		if (w->fetch && !w->in_place)
			CARVE(mbuf, (size_t)MASK_BATCH * w->rec_bytes);
	}
#undef CARVE
	return off;
}

/* The first item a phase failed on, reported through the batch; 0 if none. */
static int first_failure(const struct item_work *w, struct sparq_attend_batch *b)
{
	for (uint32_t i = 0; i < b->n; i++) {
		if (w[i].ret) {
			b->bad_item = (int32_t)i;
			b->why = w[i].why;
			return w[i].ret;
		}
	}
	return 0;
}

static int cpu_attend(void *ctx, struct sparq_attend_batch *b)
{
	struct cpu_ctx *cx = ctx;
	struct item_work *w;
	struct call call;
	size_t total = 0;
	uint64_t t0, t1;
	int ret = 0;

	w = calloc(b->n, sizeof(*w));
	if (!w)
		return -ENOMEM;
	for (uint32_t i = 0; i < b->n; i++) {
		struct sparq_attend_item *it = &b->items[i];
		struct item_work *iw = &w[i];

		iw->it = it;
		iw->sl = (struct cpu_slice *)sparq_stream_slice(it->stream);
		iw->store = sparq_stream_store(it->stream);
		iw->S = sparq_stream_len(it->stream);
		iw->S_pad = (iw->S + SPARQ_CPU_TILE - 1) / SPARQ_CPU_TILE * SPARQ_CPU_TILE;
		iw->d = sparq_stream_head_dim(it->stream);
		iw->g = it->g;
		iw->rec_bytes = sparq_stream_record_bytes(it->stream);
		iw->n_vis = count_visible(it->exclude, iw->S);
		iw->dense = iw->n_vis <= it->used.k;
		iw->per_head = !iw->dense && it->used.blend;
		/* in place or copied is settled per item before the scratch is laid out; a
		 * hold taken here lasts to the end of the call (released at out) */
		iw->fetch = b->mode != SPARQ_ATTEND_SELECT;
		if (iw->fetch)
			iw->in_place = sparq_store_in_place(iw->store,
							    sparq_stream_records(it->stream),
							    &iw->held);
		total += layout_item(iw, NULL);
	}

	pthread_mutex_lock(&cx->mu);
	if (total > cx->scratch_cap) {
		free(cx->scratch);
		cx->scratch = aligned_alloc(64, align64(total));
		cx->scratch_cap = cx->scratch ? align64(total) : 0;
		if (!cx->scratch) {
			ret = -ENOMEM;
			b->why = "out of memory for scratch";
			goto out;
		}
	}
	total = 0;
	for (uint32_t i = 0; i < b->n; i++)
		total += layout_item(&w[i], cx->scratch + total);

	call = (struct call){ .cx = cx, .w = w, .n = b->n, .mode = b->mode };
	t0 = now_ns();
	sparq_pool_run(cx->pool, b->n, run_score, &call);
	t1 = now_ns();
	b->stats.score_ns += t1 - t0;
	sparq_pool_run(cx->pool, b->n, run_select, &call);
	t0 = now_ns();
	b->stats.select_ns += t0 - t1;
	ret = first_failure(w, b);
	if (ret)
		goto out;
	for (uint32_t i = 0; i < b->n; i++) {
		if (!w[i].dense && w[i].sl->fmt == SPARQ_SLICE_INT8)
			/* r int8 channels and the scales */
			b->stats.slice_bytes += (uint64_t)(w[i].it->used.r + sizeof(float)) *
						w[i].S_pad;
		else if (!w[i].dense)
			b->stats.slice_bytes += (uint64_t)w[i].it->used.r * w[i].S_pad *
						sparq_dtype_size(w[i].sl->pub.dtype);
		struct sparq_attend_item *it = w[i].it;
		it->n_sel = w[i].n_sel;
		if (it->sel)
			memcpy(it->sel, w[i].sel, w[i].n_sel * sizeof(uint32_t));
		if (it->alpha)
			memcpy(it->alpha, w[i].alpha, w[i].g * sizeof(float));
	}
	if (b->mode == SPARQ_ATTEND_SELECT)
		goto out;

	gather_batched(w, b->n);
	sparq_pool_run(cx->pool, b->n, run_gather, &call);
	t1 = now_ns();
	b->stats.gather_ns += t1 - t0;
	ret = first_failure(w, b);
	if (ret)
		goto out;
	for (uint32_t i = 0; i < b->n; i++)
		b->stats.record_bytes += (uint64_t)w[i].n_sel * w[i].rec_bytes;
	sparq_pool_run(cx->pool, b->n, run_exact, &call);
	b->stats.exact_ns += now_ns() - t1;
	ret = first_failure(w, b);
	if (ret)
		goto out;
	for (uint32_t i = 0; i < b->n; i++) {
		if (w[i].it->exclude && w[i].it->used.blend)
			b->stats.record_bytes += (uint64_t)(w[i].S - w[i].n_vis) * w[i].rec_bytes;
	}
out:
	pthread_mutex_unlock(&cx->mu);
	for (uint32_t i = 0; i < b->n; i++)
		if (w[i].held)
			w[i].store->ops->release(w[i].store->ctx,
						 sparq_stream_records(w[i].it->stream));
	free(w);
	return ret;
}

static void cpu_destroy(void *ctx)
{
	struct cpu_ctx *cx = ctx;

	sparq_pool_destroy(cx->pool);
	pthread_mutex_destroy(&cx->mu);
	free(cx->scratch);
	free(cx);
}

static const struct sparq_backend_ops cpu_ops = {
	.name = "cpu",
	.slice_create = cpu_slice_create,
	.slice_write = cpu_slice_write,
	.slice_destroy = cpu_slice_destroy,
	.attend = cpu_attend,
	.destroy = cpu_destroy,
};

int sparq_cpu_backend_create(const struct sparq_backend_config *cfg, struct sparq_backend **out)
{
	struct cpu_ctx *cx;
	uint32_t threads = cfg ? cfg->n_threads : 0;
	int ret;

	if (threads == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		threads = n > 0 ? (uint32_t)n : 1;
	}
	if (threads > 256 || (cfg && !sparq_slice_format_name(cfg->key_slice)))
		return -EINVAL;
	cx = calloc(1, sizeof(*cx));
	if (!cx)
		return -ENOMEM;
	cx->fmt = cfg ? cfg->key_slice : SPARQ_SLICE_NATIVE;
	cx->k = (cfg && cfg->cpu_portable) ? NULL : sparq_cpu_kernels_avx2();
	if (!cx->k)
		cx->k = &sparq_cpu_kernels_portable;
	ret = sparq_pool_create(threads, &cx->pool);
	if (ret) {
		free(cx);
		return ret;
	}
	pthread_mutex_init(&cx->mu, NULL);
	cx->pub.ops = &cpu_ops;
	cx->pub.ctx = cx;
	snprintf(cx->pub.detail, sizeof(cx->pub.detail), "%s, %u threads%s", cx->k->isa, threads,
		 cx->fmt == SPARQ_SLICE_INT8 ? ", int8 key slice" : "");
	*out = &cx->pub;
	return 0;
}
