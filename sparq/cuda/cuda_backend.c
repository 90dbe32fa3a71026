/*
 * cuda_backend.c — the CUDA backend (issue 5): SparQ's scoring and top-k run on the
 * GPU against key slices resident in GPU memory, and only the selected records
 * cross PCIe. A call runs every item through each phase in one launch (see
 * cuda-impl.h), with two host round trips: after selection (the caller's sel/alpha,
 * and the positions to fetch) and at the end (y).
 *
 * Fetch, per record store:
 *  A. stores with a fixed host region (store.h region op): the region is registered
 *     with CUDA once, at first use, and a gather kernel reads the rows in place. In a
 *     store whose records move (store.h hold: the tier manager, whose region is its
 *     RAM arena) only streams held for the call are read so, and the holds end after
 *     the call's final synchronization;
 *  B. every other store or stream: one batched store gather for the whole call into a
 *     pinned staging buffer, then one copy of that buffer to the GPU.
 * Both end in the same device rows buffer and the same exact-attention kernel.
 *
 * Streams whose slices did not fit in the GPU budget are served by an internal CPU
 * backend (slice.c); a batch is split, the CPU items run after the GPU items.
 *
 * CUDA failures (issue 5): when the GPU part of a call fails with a CUDA error (not a
 * validation error: -EINVAL and -ERANGE are returned as before), its items are served
 * by the internal CPU backend instead, and counted. That backend reads the keys from
 * the stream's CPU slice, which for a GPU stream is a mirror filled from the record
 * store on demand (positions [0, cpu_len) are kept, so the next fallback reads only
 * what was appended since): it never reads the GPU slice or anything else the failed
 * call may have left half-written, so it computes bit for bit what the CPU backend
 * computes on those streams. The row caches the call used are dropped (a slot may be
 * claimed for a row that was never copied). An error that leaves the CUDA context
 * unusable (the documented sticky errors, or one that a cleared error state and a
 * stream synchronization still report) degrades the backend, logged once: each stream
 * then moves to the CPU for good at its next call or append, from the store. An
 * append whose upload fails in CUDA does the same for its stream and succeeds: the
 * store already holds the records.
 *
 * Per-call buffers (one pinned host buffer, one device buffer) grow on demand and
 * are reused; calls on one backend are serialized.
 *
 * Two generations of the GPU path (PERF.md). v1, the default, is what passed the
 * conformance suite, memcheck and racecheck on an H200. v2 (SPARQ_CUDA_KERNELS=v2)
 * selects over many blocks per item and runs the exact step flash-decoding style with
 * the zero-copy gather fused into it: the kernel finds each selected record's address
 * from a table of the store's record runs, so region stores need no host round trip
 * between selection and the exact step, and the call ends in its only
 * synchronization; it also brings the per-stream row cache. v2 has not run on a GPU
 * yet, so it stays opt-in until a device run passes the same checks.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../half.h"
#include "../stream.h"
#include "cuda-host.h"

#define STAGE_BYTES (4u << 20)
#define MASK_BATCH 256u

/* Host-side plan of one GPU item: its shape and where its buffers sit. */
struct plan {
	struct sparq_attend_item *it;
	uint32_t index;             /* in the caller's batch */
	struct sparq_store *store;
	struct cu_region *region;   /* zero-copy source, NULL: staging */
	bool held;                  /* region under a store hold, released at the call's end */
	uint32_t S, d, g, r, n_vis, sel_cap, rec_bytes, n_tiles, w_start, m;
	bool dense, per_head;
	size_t o_q, o_mask, o_comp, o_sel, o_alpha, o_info, o_vbar, o_y, o_rows;
	size_t o_qc, o_z, o_zsum, o_part, o_zmax, o_zden;
	/* v2 */
	uint32_t n_seg, ex_rows, ex_chunks, sel_chunks;
	struct cu_slice *rc;        /* the slice whose row cache serves this item, or NULL */
	size_t o_rc_mark;
	size_t o_seg_pos, o_seg_addr, o_sel_hist, o_sel_cnt, o_sel_off, o_ex_acc, o_ex_ml;
};

/* v2 sections: inputs [0, in_end), outputs [out, out_end), staged rows to host_bytes
 * (all mirrored on the host), then scratch zeroed per call [scr, scr_end), then the
 * device-only rest. */
struct layout2 {
	size_t items, tiles, in_end, out, out_end, rows_b, host_bytes, scr, scr_end, dev_bytes;
	uint32_t n_tiles, g_max, sel_chunks_max, ex_chunks_max;
	uint32_t rc_rows_max;       /* the largest sel_cap of the items with a row cache */
};

/* Byte offsets of a call's sections; host mirrors [0, host_bytes) of the device's. */
struct layout {
	size_t items, tiles, out1, out1_end, in2, copies, in2_end, out2, out2_end;
	size_t rows_b, host_bytes, dev_bytes;
	uint32_t n_tiles, n_copies_max, g_max, d_max;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int cu_fail(struct cu_ctx *cx, cudaError_t e, const char *what)
{
	cx->last_err = e;
	snprintf(cx->err, sizeof(cx->err), "CUDA: %s: %s (%s)", what, cudaGetErrorName(e),
		 cudaGetErrorString(e));
	return e == cudaErrorMemoryAllocation ? -ENOMEM : -EIO;
}

void cu_update_detail(struct cu_ctx *cx)
{
	char d[320];

	/* degraded first: the detail is cut at 160 bytes */
	snprintf(d, sizeof(d), "%s%.64s; slice pool %.2f/%.2f GiB; %u of %u streams on CPU (%s)%s%s%s",
		 cx->degraded ? "DEGRADED (CUDA error: every call on the CPU); " : "",
		 cx->dev_desc, (double)cx->pool.pages_out * SPARQ_CU_PAGE_BYTES / (1u << 30),
		 (double)cx->pool.budget / (1u << 30), cx->n_fallback, cx->n_slices,
		 cx->n_lost ? "no room or CUDA error" : "no room",
		 cx->key_slice == SPARQ_SLICE_INT8 ? "; int8 key slice" : "",
		 cx->kernels_v1 ? "; kernels v1" : cx->rc_off ? "; kernels v2, no row cache"
							  : "; kernels v2",
		 cx->graphs ? ", graphs" : "");
	snprintf(cx->pub.detail, sizeof(cx->pub.detail), "%.159s", d);
}

/* The scoring tile k of item i: SPARQ_CU_TILE positions from pos, inside one page. */
static struct sparq_cu_tile cu_tile_of(const struct cu_slice *cs, uint32_t pos, uint32_t i,
				       uint32_t k)
{
	const void *page = cs->pages[pos / cs->per_page];
	struct sparq_cu_tile tl = {
		.pitch = cs->per_page, .col = pos % cs->per_page, .pos = pos, .item = i, .t = k,
	};

	if (cs->i8) {
		tl.q8 = page;
		tl.scale = (const float *)((const int8_t *)page +
					   sparq_cu_page_scale_offset(cs->d, cs->per_page));
	} else {
		tl.kt = page;
	}
	return tl;
}

/* Key-slice bytes scoring reads for r channels of S positions (the stats' slice_bytes). */
static uint64_t cu_scored_bytes(const struct cu_ctx *cx, uint32_t r, uint32_t S)
{
	/* int8: r bytes and a 4-byte scale per position; native: r fp16/bf16 elements */
	return cx->key_slice == SPARQ_SLICE_INT8 ? ((uint64_t)r + sizeof(float)) * S
						 : (uint64_t)r * S * 2;
}

static bool masked(const uint64_t *ex, uint32_t j)
{
	return ex && ((ex[j >> 6] >> (j & 63)) & 1u);
}

static size_t al(size_t x)
{
	return (x + 255) & ~(size_t)255;
}

/* ---- planning ---- */

static void plan_item(struct plan *p, struct sparq_attend_item *it, uint32_t index)
{
	const uint64_t *ex = it->exclude;

	*p = (struct plan){ .it = it, .index = index };
	p->store = sparq_stream_store(it->stream);
	p->S = sparq_stream_len(it->stream);
	p->d = sparq_stream_head_dim(it->stream);
	p->g = it->g;
	p->r = it->used.r;
	p->rec_bytes = sparq_stream_record_bytes(it->stream);
	p->n_vis = p->S;
	if (ex) {
		for (uint32_t j = 0; j < p->S; j++)
			p->n_vis -= masked(ex, j);
	}
	p->dense = p->n_vis <= it->used.k;
	p->per_head = !p->dense && it->used.blend;
	p->sel_cap = p->dense ? p->n_vis : it->used.k;
	p->n_tiles = p->dense ? 0 : (p->S + SPARQ_CU_TILE - 1) / SPARQ_CU_TILE;
	p->w_start = p->S;
	if (!p->dense) {
		/* the local window: the current token (if visible) and the l most recent
		 * visible positions before it — an explicit set, never a logit bonus */
		uint32_t want = it->used.l + !masked(ex, p->S - 1), wn = 0;
		for (uint32_t j = p->S; j-- > 0 && wn < want;) {
			if (!masked(ex, j)) {
				p->w_start = j;
				wn++;
			}
		}
		p->m = it->used.k - wn;
	}
}

/* Registers st's region with the GPU once; NULL when it has none or it cannot be. */
static struct cu_region *region_for(struct cu_ctx *cx, struct sparq_store *st)
{
	struct cu_region *r = NULL;
	void *base;
	size_t bytes;
	cudaError_t e;

	if (!st->ops->addr || !st->ops->region || st->ops->region(st->ctx, &base, &bytes))
		return NULL;
	for (uint32_t i = 0; i < cx->n_regions; i++) {
		if (cx->regions[i].store != st)
			continue;
		if (cx->regions[i].base == base && cx->regions[i].bytes == bytes)
			return cx->regions[i].dev ? &cx->regions[i] : NULL;
		/* the same address now names another store: forget the old mapping */
		r = &cx->regions[i];
		if (r->dev)
			cudaHostUnregister(r->base);
		cudaGetLastError();
		break;
	}
	if (!r) {
		if (cx->n_regions == CU_MAX_REGIONS)
			return NULL;
		r = &cx->regions[cx->n_regions++];
	}
	*r = (struct cu_region){ .store = st, .base = base, .bytes = bytes };
	e = cudaHostRegister(base, bytes, cudaHostRegisterMapped | cudaHostRegisterPortable);
	if (e == cudaSuccess) {
		void *dev = NULL;
		e = cudaHostGetDevicePointer(&dev, base, 0);
		if (e == cudaSuccess)
			r->dev = dev;
		else
			cudaHostUnregister(base);
	}
	/* remembered either way: a region that cannot be mapped is staged, not retried */
	cudaGetLastError();
	return r->dev ? r : NULL;
}

/*
 * The zero-copy source of an item for this call: its store's registered region, when
 * its records may be read in place until the call ends (held, where the store holds;
 * a stream the store cannot hold now is staged). A select-only call reads no records
 * and holds nothing.
 */
static void choose_source(struct cu_ctx *cx, struct plan *p, bool full)
{
	p->held = false;
	p->region = region_for(cx, p->store);
	if (p->region && full &&
	    !sparq_store_in_place(p->store, sparq_stream_records(p->it->stream), &p->held))
		p->region = NULL;
}

/*
 * Ends the holds of a call's items. Only once no kernel of the call can still read
 * their records: after its final synchronization; a validation error stops before the
 * launches that read records or after that synchronization, and a CUDA error has been
 * waited for by note_failure (context_lost synchronizes the stream).
 */
static void release_holds(struct plan *pl, uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		if (!pl[i].held)
			continue;
		pl[i].store->ops->release(pl[i].store->ctx,
					  sparq_stream_records(pl[i].it->stream));
		pl[i].held = false;
	}
}

/*
 * The scoring buffers of one item (both kernel generations score alike): the scaled
 * query components, the group-summed logits and, when the blend needs them, the
 * per-head logits and softmax statistics. Dense items score nothing.
 */
static size_t layout_scoring(struct plan *p, size_t off)
{
	if (p->dense)
		return off;
	p->o_qc = off;
	off = al(off + (size_t)p->g * p->r * sizeof(float));
	p->o_zsum = off;
	off = al(off + (size_t)p->S * sizeof(float));
	if (p->per_head) {
		p->o_z = off;
		off = al(off + (size_t)p->g * p->S * sizeof(float));
		p->o_part = off;
		off = al(off + (size_t)p->n_tiles * p->g * 2 * sizeof(float));
		p->o_zmax = off;
		off = al(off + (size_t)p->g * sizeof(float));
		p->o_zden = off;
		off = al(off + (size_t)p->g * sizeof(double));
	}
	return off;
}

static void layout_call(struct plan *pl, uint32_t n, struct layout *L)
{
	size_t off = 0;

	memset(L, 0, sizeof(*L));
	for (uint32_t i = 0; i < n; i++) {
		L->n_tiles += pl[i].n_tiles;
		if (pl[i].region)
			L->n_copies_max += pl[i].sel_cap;
		L->g_max = pl[i].g > L->g_max ? pl[i].g : L->g_max;
		L->d_max = pl[i].d > L->d_max ? pl[i].d : L->d_max;
	}
	L->items = off;
	off = al(off + n * sizeof(struct sparq_cu_item));
	L->tiles = off;
	off = al(off + L->n_tiles * sizeof(struct sparq_cu_tile));
	for (uint32_t i = 0; i < n; i++) {
		struct plan *p = &pl[i];
		p->o_q = off;
		off = al(off + (size_t)p->g * p->d * sizeof(float));
		p->o_mask = off;
		if (p->it->exclude)
			off = al(off + (size_t)(p->S + 63) / 64 * sizeof(uint64_t));
	}
	L->out1 = off;
	for (uint32_t i = 0; i < n; i++) {
		struct plan *p = &pl[i];
		p->o_comp = off;
		off = al(off + (size_t)p->r * sizeof(uint32_t));
		p->o_sel = off;
		off = al(off + (size_t)p->sel_cap * sizeof(uint32_t));
		p->o_alpha = off;
		off = al(off + (size_t)p->g * sizeof(float));
		p->o_info = off;
		off = al(off + 2 * sizeof(uint32_t));
	}
	L->out1_end = off;
	L->in2 = off;
	L->copies = off;
	off = al(off + (size_t)L->n_copies_max * sizeof(struct sparq_cu_copy));
	for (uint32_t i = 0; i < n; i++) {
		pl[i].o_vbar = off;
		off = al(off + (size_t)pl[i].d * sizeof(float));
	}
	L->in2_end = off;
	L->out2 = off;
	for (uint32_t i = 0; i < n; i++) {
		pl[i].o_y = off;
		off = al(off + (size_t)pl[i].g * pl[i].d * sizeof(float));
	}
	L->out2_end = off;
	/* staged rows first: the host mirror ends with them */
	L->rows_b = off;
	for (uint32_t i = 0; i < n; i++) {
		if (pl[i].region)
			continue;
		pl[i].o_rows = off;
		off = al(off + (size_t)pl[i].sel_cap * pl[i].rec_bytes);
	}
	L->host_bytes = off;
	for (uint32_t i = 0; i < n; i++) {
		struct plan *p = &pl[i];
		if (p->region) {
			p->o_rows = off;
			off = al(off + (size_t)p->sel_cap * p->rec_bytes);
		}
		off = layout_scoring(p, off);
	}
	L->dev_bytes = off;
}

static int ensure_buffers(struct cu_ctx *cx, const struct layout *L)
{
	cudaError_t e;

	if (L->host_bytes > cx->h_cap) {
		cudaFreeHost(cx->h_buf);
		cx->h_buf = NULL;
		cx->h_cap = 0;
		e = cudaMallocHost((void **)&cx->h_buf, L->host_bytes);
		if (e != cudaSuccess) {
			cx->h_buf = NULL;
			cudaGetLastError();
			return cu_fail(cx, e, "cudaMallocHost of the call buffer");
		}
		cx->h_cap = L->host_bytes;
	}
	if (L->dev_bytes > cx->d_cap) {
		cudaFree(cx->d_buf);
		cx->d_buf = NULL;
		cx->d_cap = 0;
		e = cudaMalloc((void **)&cx->d_buf, L->dev_bytes);
		if (e != cudaSuccess) {
			cx->d_buf = NULL;
			cudaGetLastError();
			return cu_fail(cx, e, "cudaMalloc of the call buffer");
		}
		cx->d_cap = L->dev_bytes;
	}
	return 0;
}

/* The item and tile tables, queries and masks, in the host mirror. */
static void fill_inputs(struct cu_ctx *cx, struct plan *pl, uint32_t n, const struct layout *L)
{
	struct sparq_cu_item *items = (struct sparq_cu_item *)(cx->h_buf + L->items);
	struct sparq_cu_tile *tiles = (struct sparq_cu_tile *)(cx->h_buf + L->tiles);
	uint8_t *D = cx->d_buf;
	uint32_t t = 0;

	for (uint32_t i = 0; i < n; i++) {
		struct plan *p = &pl[i];
		struct sparq_attend_item *it = p->it;
		struct cu_slice *cs = cu_slice_of(sparq_stream_slice(it->stream));

		items[i] = (struct sparq_cu_item){
			.q = (const float *)(D + p->o_q),
			.mask = it->exclude ? (const uint64_t *)(D + p->o_mask) : NULL,
			.vbar = (const float *)(D + p->o_vbar),
			.rows = D + p->o_rows,
			.qc = p->dense ? NULL : (float *)(D + p->o_qc),
			.z = p->per_head ? (float *)(D + p->o_z) : NULL,
			.zsum = p->dense ? NULL : (float *)(D + p->o_zsum),
			.part = p->per_head ? (float *)(D + p->o_part) : NULL,
			.zmax = p->per_head ? (float *)(D + p->o_zmax) : NULL,
			.zden = p->per_head ? (double *)(D + p->o_zden) : NULL,
			.comp = (uint32_t *)(D + p->o_comp),
			.sel = (uint32_t *)(D + p->o_sel),
			.alpha = (float *)(D + p->o_alpha),
			.info = (uint32_t *)(D + p->o_info),
			.y = (float *)(D + p->o_y),
			.S = p->S, .d = p->d, .g = p->g, .r = p->r, .m = p->m,
			.w_start = p->w_start, .sel_cap = p->sel_cap,
			.dtype = (uint32_t)sparq_stream_dtype(it->stream),
			.rec_bytes = p->rec_bytes, .n_tiles = p->n_tiles,
			.dense = p->dense, .per_head = p->per_head,
		};
		memcpy(cx->h_buf + p->o_q, it->q, (size_t)p->g * p->d * sizeof(float));
		if (it->exclude)
			memcpy(cx->h_buf + p->o_mask, it->exclude,
			       (size_t)(p->S + 63) / 64 * sizeof(uint64_t));
		for (uint32_t k = 0; k < p->n_tiles; k++) {
			uint32_t pos = k * SPARQ_CU_TILE;
			tiles[t++] = cu_tile_of(cs, pos, i, k);
		}
	}
}

/* ---- fetch (host side) ---- */

/* Records of staged items: one gather per store for the whole call. */
static int fetch_staged(struct cu_ctx *cx, struct plan *pl, uint32_t n, struct sparq_attend_batch *b)
{
	struct sparq_gather *g = calloc(n, sizeof(*g));
	bool *done = calloc(n, sizeof(*done));
	int ret = 0;

	if (!g || !done) {
		ret = -ENOMEM;
		b->why = "out of memory for the gather list";
		goto out;
	}
	for (uint32_t i = 0; i < n && !ret; i++) {
		struct sparq_store *st = pl[i].store;
		uint32_t ng = 0;

		if (pl[i].region || done[i])
			continue;
		for (uint32_t j = i; j < n; j++) {
			if (pl[j].region || pl[j].store != st)
				continue;
			g[ng++] = (struct sparq_gather){
				.stream = sparq_stream_records(pl[j].it->stream),
				.pos = (const uint32_t *)(cx->h_buf + pl[j].o_sel),
				.n = pl[j].it->n_sel, .out = cx->h_buf + pl[j].o_rows,
			};
			done[j] = true;
		}
		ret = st->ops->gather(st->ctx, g, ng);
		if (ret) {
			b->bad_item = (int32_t)pl[i].index;
			b->why = "record store gather failed";
		}
	}
out:
	free(g);
	free(done);
	return ret;
}

/* Copy descriptors for the zero-copy items: each selected record, in sel order. */
static int fetch_mapped(struct cu_ctx *cx, struct plan *pl, uint32_t n, const struct layout *L,
			uint32_t *n_copies, struct sparq_attend_batch *b)
{
	struct sparq_cu_copy *cp = (struct sparq_cu_copy *)(cx->h_buf + L->copies);
	uint32_t c = 0;

	for (uint32_t i = 0; i < n; i++) {
		struct plan *p = &pl[i];
		struct sparq_store *st = p->store;
		struct sparq_store_stream *rs = sparq_stream_records(p->it->stream);
		const uint32_t *sel = (const uint32_t *)(cx->h_buf + p->o_sel);
		uint8_t *dst = cx->d_buf + p->o_rows;

		if (!p->region)
			continue;
		for (uint32_t k = 0; k < p->it->n_sel;) {
			uint32_t run = 0;
			const uint8_t *a = st->ops->addr(st->ctx, rs, sel[k], &run);
			if (!a || a < p->region->base ||
			    a + (size_t)run * p->rec_bytes > p->region->base + p->region->bytes) {
				b->bad_item = (int32_t)p->index;
				b->why = a ? "record outside the store's registered region"
					   : "record store has no such position";
				return a ? -EFAULT : -ERANGE;
			}
			/* consecutive positions in one run need no further lookups */
			uint32_t t = 0;
			do {
				const uint8_t *h = a + (size_t)(sel[k + t] - sel[k]) * p->rec_bytes;
				cp[c++] = (struct sparq_cu_copy){
					.src = p->region->dev + (h - p->region->base),
					.dst = dst + (size_t)(k + t) * p->rec_bytes,
					.bytes = p->rec_bytes,
				};
				t++;
			} while (k + t < p->it->n_sel && sel[k + t] - sel[k] < run);
			k += t;
		}
	}
	*n_copies = c;
	return 0;
}

/* v̄ over the visible positions: the running sum less the masked rows (in double). */
static int visible_mean(struct plan *p, float *vbar)
{
	struct sparq_attend_item *it = p->it;
	struct sparq_store *st = p->store;
	struct sparq_store_stream *rs = sparq_stream_records(it->stream);
	enum sparq_dtype dt = sparq_stream_dtype(it->stream);
	uint32_t d = p->d, nm = 0, *pos = NULL;
	double *acc = calloc(d, sizeof(double));
	uint8_t *buf = NULL;
	int ret = 0;

	if (!acc)
		return -ENOMEM;
	sparq_stream_vsum(it->stream, vbar);
	for (uint32_t i = 0; i < d; i++)
		acc[i] = vbar[i];
	if (it->exclude) {
		pos = malloc(MASK_BATCH * sizeof(*pos));
		buf = malloc((size_t)MASK_BATCH * p->rec_bytes);
		if (!pos || !buf) {
			ret = -ENOMEM;
			goto out;
		}
	}
	for (uint32_t j = 0; it->exclude && j <= p->S; j++) {
		if (j < p->S && masked(it->exclude, j))
			pos[nm++] = j;
		if (nm == MASK_BATCH || (j == p->S && nm)) {
			struct sparq_gather g = { .stream = rs, .pos = pos, .n = nm, .out = buf };
			ret = st->ops->gather(st->ctx, &g, 1);
			if (ret)
				goto out;
			for (uint32_t t = 0; t < nm; t++) {
				const uint16_t *v = (const uint16_t *)(buf + (size_t)t * p->rec_bytes) + d;
				for (uint32_t i = 0; i < d; i++)
					acc[i] -= dt == SPARQ_DTYPE_F16 ? sparq_f16_to_f32(v[i])
									: sparq_bf16_to_f32(v[i]);
			}
			nm = 0;
		}
	}
	for (uint32_t i = 0; i < d; i++)
		vbar[i] = (float)(acc[i] / p->n_vis);
out:
	free(acc);
	free(pos);
	free(buf);
	return ret;
}

/* ---- the call ---- */

#define CK(call, what)                                  \
	do {                                            \
		cudaError_t e_ = (call);                \
		if (e_ != cudaSuccess) {                \
			ret = cu_fail(cx, e_, what);    \
			b->why = cx->err;               \
			goto out;                       \
		}                                       \
	} while (0)

/* The test fault (cuda_fault_every) stands in for the launch that ends a call's GPU
 * work: when last holds and this call drew the fault, the launch does not happen and
 * the synthetic error is what it returned. */
#define FAULT_OR(last, call) ((last) && cx->fault_now ? take_fault(cx) : (call))

static cudaError_t take_fault(struct cu_ctx *cx)
{
	cx->fault_now = false;
	return cx->fault_err;
}

static uint64_t elapsed_ns(cudaEvent_t a, cudaEvent_t z)
{
	float ms = 0.0f;

	if (cudaEventElapsedTime(&ms, a, z) != cudaSuccess) {
		cudaGetLastError();
		return 0;
	}
	return (uint64_t)((double)ms * 1e6);
}

static int attend_gpu_v1(struct cu_ctx *cx, struct sparq_attend_batch *b, struct plan *pl, uint32_t n)
{
	struct layout L;
	uint32_t n_copies = 0;
	uint64_t t0, host_fetch_ns = 0;
	int ret = 0;

	for (uint32_t i = 0; i < n; i++)
		choose_source(cx, &pl[i], b->mode != SPARQ_ATTEND_SELECT);
	layout_call(pl, n, &L);
	ret = ensure_buffers(cx, &L);
	if (ret) {
		b->why = cx->err;
		return ret;
	}
	fill_inputs(cx, pl, n, &L);

	const struct sparq_cu_item *items = (const struct sparq_cu_item *)(cx->d_buf + L.items);
	const struct sparq_cu_tile *tiles = (const struct sparq_cu_tile *)(cx->d_buf + L.tiles);
	cudaStream_t st = cx->st;

	CK(cudaEventRecord(cx->ev[0], st), "event");
	CK(cudaMemcpyAsync(cx->d_buf, cx->h_buf, L.out1, cudaMemcpyHostToDevice, st),
	   "upload of queries and tables");
	CK(cudaMemsetAsync(cx->d_buf + L.out1, 0, L.out1_end - L.out1, st), "clear outputs");
	CK(sparq_cu_launch_comp(st, items, n), "components kernel launch");
	CK(sparq_cu_launch_score(st, items, tiles, L.n_tiles, L.g_max), "score kernel launch");
	CK(sparq_cu_launch_softmax(st, items, n), "softmax kernel launch");
	CK(cudaEventRecord(cx->ev[1], st), "event");
	CK(sparq_cu_launch_select(st, items, n), "select kernel launch");
	CK(FAULT_OR(b->mode == SPARQ_ATTEND_SELECT, sparq_cu_launch_alpha(st, items, n)),
	   "alpha kernel launch");
	CK(cudaMemcpyAsync(cx->h_buf + L.out1, cx->d_buf + L.out1, L.out1_end - L.out1,
			   cudaMemcpyDeviceToHost, st), "download of the selection");
	CK(cudaEventRecord(cx->ev[2], st), "event");
	CK(cudaStreamSynchronize(st), "scoring and selection kernels");
	b->stats.score_ns += elapsed_ns(cx->ev[0], cx->ev[1]);
	b->stats.select_ns += elapsed_ns(cx->ev[1], cx->ev[2]);

	for (uint32_t i = 0; i < n; i++) {
		struct plan *p = &pl[i];
		const uint32_t *info = (const uint32_t *)(cx->h_buf + p->o_info);
		if (info[1] & SPARQ_CU_OVERFLOW) {
			b->bad_item = (int32_t)p->index;
			b->why = "approximate logits overflow fp32 (keys or queries too large)";
			ret = -ERANGE;
			goto out;
		}
		if (info[0] != (p->dense ? p->n_vis : p->it->used.k)) {
			/* the kernels select min(k, visible) rows by construction: a GPU
			 * failure, which the CPU backend can serve */
			b->bad_item = (int32_t)p->index;
			ret = cu_fail(cx, cudaErrorUnknown, "selection kernel returned a wrong row count");
			b->why = cx->err;
			goto out;
		}
	}
	for (uint32_t i = 0; i < n; i++) {
		struct plan *p = &pl[i];
		struct sparq_attend_item *it = p->it;
		const float *alpha = (const float *)(cx->h_buf + p->o_alpha);

		it->n_sel = ((const uint32_t *)(cx->h_buf + p->o_info))[0];
		if (it->sel)
			memcpy(it->sel, cx->h_buf + p->o_sel, it->n_sel * sizeof(uint32_t));
		if (it->alpha)
			memcpy(it->alpha, alpha, p->g * sizeof(float));
		if (it->comp && !p->dense)
			memcpy(it->comp, cx->h_buf + p->o_comp, p->r * sizeof(uint32_t));
		if (!p->dense)
			b->stats.slice_bytes += cu_scored_bytes(cx, p->r, p->S);
	}
	if (b->mode == SPARQ_ATTEND_SELECT)
		goto out;

	t0 = now_ns();
	ret = fetch_staged(cx, pl, n, b);
	if (ret)
		goto out;
	ret = fetch_mapped(cx, pl, n, &L, &n_copies, b);
	if (ret)
		goto out;
	for (uint32_t i = 0; i < n; i++) {
		struct plan *p = &pl[i];
		const float *alpha = (const float *)(cx->h_buf + p->o_alpha);
		bool blended = false;

		for (uint32_t h = 0; h < p->g; h++)
			blended |= alpha[h] < 1.0f;
		if (!blended)
			continue;
		ret = visible_mean(p, (float *)(cx->h_buf + p->o_vbar));
		if (ret) {
			b->bad_item = (int32_t)p->index;
			b->why = "record store read failed (masked rows for the mean)";
			goto out;
		}
		if (p->it->exclude)
			b->stats.record_bytes += (uint64_t)(p->S - p->n_vis) * p->rec_bytes;
	}
	host_fetch_ns = now_ns() - t0;

	CK(cudaEventRecord(cx->ev[3], st), "event");
	CK(cudaMemcpyAsync(cx->d_buf + L.in2, cx->h_buf + L.in2, L.in2_end - L.in2,
			   cudaMemcpyHostToDevice, st), "upload of row addresses and means");
	if (L.host_bytes > L.rows_b)
		CK(cudaMemcpyAsync(cx->d_buf + L.rows_b, cx->h_buf + L.rows_b,
				   L.host_bytes - L.rows_b, cudaMemcpyHostToDevice, st),
		   "upload of staged records");
	CK(sparq_cu_launch_gather(st, (const struct sparq_cu_copy *)(cx->d_buf + L.copies),
				  n_copies), "gather kernel launch");
	CK(cudaEventRecord(cx->ev[4], st), "event");
	CK(FAULT_OR(true, sparq_cu_launch_exact(st, items, n, L.g_max, L.d_max)),
	   "exact kernel launch");
	CK(cudaMemcpyAsync(cx->h_buf + L.out2, cx->d_buf + L.out2, L.out2_end - L.out2,
			   cudaMemcpyDeviceToHost, st), "download of the outputs");
	CK(cudaEventRecord(cx->ev[5], st), "event");
	CK(cudaStreamSynchronize(st), "gather and exact-attention kernels");
	b->stats.gather_ns += host_fetch_ns + elapsed_ns(cx->ev[3], cx->ev[4]);
	b->stats.exact_ns += elapsed_ns(cx->ev[4], cx->ev[5]);
	for (uint32_t i = 0; i < n; i++) {
		struct plan *p = &pl[i];
		memcpy(p->it->y, cx->h_buf + p->o_y, (size_t)p->g * p->d * sizeof(float));
		b->stats.record_bytes += (uint64_t)p->it->n_sel * p->rec_bytes;
	}
out:
	if (ret && b->bad_item < 0 && n)
		b->bad_item = (int32_t)pl[0].index;
	return ret;
}

/* ---- v2 ---- */

/*
 * The record runs of a zero-copy item, from position 0 to S: each run's first position
 * and its device address (when seg_pos is given: at most the p->n_seg of the counting
 * walk fit; else only counted into p->n_seg).
 */
static int walk_runs(struct plan *p, uint32_t *seg_pos, uint64_t *seg_addr)
{
	const uint32_t cap = seg_pos ? p->n_seg : UINT32_MAX;
	struct sparq_store *st = p->store;
	struct sparq_store_stream *rs = sparq_stream_records(p->it->stream);
	const struct cu_region *rg = p->region;
	uint32_t n = 0;

	for (uint32_t pos = 0; pos < p->S;) {
		uint32_t run = 0;
		const uint8_t *a = st->ops->addr(st->ctx, rs, pos, &run);

		if (!a || run == 0)
			return -ERANGE;
		if (run > p->S - pos)
			run = p->S - pos;
		if (a < rg->base || (size_t)(a - rg->base) > rg->bytes ||
		    (size_t)run * p->rec_bytes > rg->bytes - (size_t)(a - rg->base))
			return -EFAULT;
		if (n == cap)
			return -ERANGE; /* the runs changed since they were counted */
		if (seg_pos) {
			seg_pos[n] = pos;
			seg_addr[n] = (uint64_t)(uintptr_t)(rg->dev + (a - rg->base));
		}
		n++;
		pos += run;
	}
	if (seg_pos)
		seg_pos[n] = p->S;
	p->n_seg = n;
	return 0;
}

/*
 * The slice's row cache, grown to the power of two of slots at or above sel_cap (one
 * call's rows, direct-mapped by position); false when it does not fit in
 * the backend's cache allowance or the device refuses: the item then reads every
 * record from the store, as without a cache.
 */
static bool ensure_rc(struct cu_ctx *cx, struct cu_slice *cs, uint32_t sel_cap,
		      uint32_t rec_bytes)
{
	uint32_t want = 256;
	uint32_t *tag = NULL;
	uint8_t *data = NULL;

	while (want < sel_cap && want < (1u << 30))
		want *= 2;
	if (cs->rc_slots >= want && cs->rc_rec_bytes == rec_bytes)
		return true;
	cu_rc_free(cx, cs);
	const uint64_t bytes = (uint64_t)want * (rec_bytes + sizeof(uint32_t));
	if (cx->rc_bytes + bytes > cx->rc_cap)
		return false;
	if (cudaMalloc((void **)&tag, (size_t)want * sizeof(uint32_t)) != cudaSuccess ||
	    cudaMalloc((void **)&data, (size_t)want * rec_bytes) != cudaSuccess ||
	    cudaMemsetAsync(tag, 0, (size_t)want * sizeof(uint32_t), cx->st) != cudaSuccess) {
		cudaFree(tag);
		cudaFree(data);
		cudaGetLastError();
		return false;
	}
	cs->rc_slots = want;
	cs->rc_rec_bytes = rec_bytes;
	cs->rc_tag = tag;
	cs->rc_data = data;
	cx->rc_bytes += bytes;
	return true;
}

static void layout_call2(struct plan *pl, uint32_t n, bool full, struct layout2 *L)
{
	size_t off = 0;

	memset(L, 0, sizeof(*L));
	for (uint32_t i = 0; i < n; i++) {
		struct plan *p = &pl[i];
		p->sel_chunks = (p->S + SPARQ_CU_SEL_CHUNK - 1) / SPARQ_CU_SEL_CHUNK;
		p->ex_rows = sparq_cu_ex_rows(p->rec_bytes, p->g);
		p->ex_chunks = full ? (p->sel_cap + p->ex_rows - 1) / p->ex_rows : 0;
		L->n_tiles += p->n_tiles;
		L->g_max = p->g > L->g_max ? p->g : L->g_max;
		if (p->sel_chunks > L->sel_chunks_max)
			L->sel_chunks_max = p->sel_chunks;
		if (p->ex_chunks > L->ex_chunks_max)
			L->ex_chunks_max = p->ex_chunks;
	}
	L->items = off;
	off = al(off + n * sizeof(struct sparq_cu_item));
	L->tiles = off;
	off = al(off + L->n_tiles * sizeof(struct sparq_cu_tile));
	for (uint32_t i = 0; i < n; i++) {
		struct plan *p = &pl[i];
		p->o_q = off;
		off = al(off + (size_t)p->g * p->d * sizeof(float));
		p->o_mask = off;
		if (p->it->exclude)
			off = al(off + (size_t)(p->S + 63) / 64 * sizeof(uint64_t));
		p->o_vbar = off;
		off = al(off + (size_t)p->d * sizeof(float));
		if (full && p->region) {
			p->o_seg_pos = off;
			off = al(off + ((size_t)p->n_seg + 1) * sizeof(uint32_t));
			p->o_seg_addr = off;
			off = al(off + (size_t)p->n_seg * sizeof(uint64_t));
		}
	}
	L->in_end = off;
	L->out = off;
	for (uint32_t i = 0; i < n; i++) {
		struct plan *p = &pl[i];
		p->o_comp = off;
		off = al(off + (size_t)p->r * sizeof(uint32_t));
		p->o_sel = off;
		off = al(off + (size_t)p->sel_cap * sizeof(uint32_t));
		p->o_alpha = off;
		off = al(off + (size_t)p->g * sizeof(float));
		p->o_info = off;
		off = al(off + SPARQ_CU_INFO_WORDS * sizeof(uint32_t));
		p->o_y = off;
		off = al(off + (size_t)p->g * p->d * sizeof(float));
	}
	L->out_end = off;
	L->rows_b = off;
	for (uint32_t i = 0; i < n; i++) {
		if (!full || pl[i].region)
			continue;
		pl[i].o_rows = off;
		off = al(off + (size_t)pl[i].sel_cap * pl[i].rec_bytes);
	}
	L->host_bytes = off;
	L->scr = off;
	for (uint32_t i = 0; i < n; i++) {
		pl[i].o_sel_hist = off;  /* then the 4 words of sel_state */
		off = al(off + (4 * 256 + 4) * sizeof(uint32_t));
		if (pl[i].rc) {
			pl[i].o_rc_mark = off;
			off = al(off + (size_t)pl[i].rc->rc_slots * sizeof(uint32_t));
		}
		if (pl[i].rc && pl[i].sel_cap > L->rc_rows_max)
			L->rc_rows_max = pl[i].sel_cap;
	}
	L->scr_end = off;
	for (uint32_t i = 0; i < n; i++) {
		struct plan *p = &pl[i];
		p->o_sel_cnt = off;
		off = al(off + (size_t)p->sel_chunks * 2 * sizeof(uint32_t));
		p->o_sel_off = off;
		off = al(off + (size_t)p->sel_chunks * 2 * sizeof(uint32_t));
		if (full) {
			p->o_ex_acc = off;
			off = al(off + (size_t)p->ex_chunks * p->g * p->d * sizeof(float));
			p->o_ex_ml = off;
			off = al(off + (size_t)p->ex_chunks * p->g * 2 * sizeof(float));
		}
		off = layout_scoring(p, off);
	}
	L->dev_bytes = off;
}

static int ensure_buffers2(struct cu_ctx *cx, const struct layout2 *L)
{
	struct layout l1 = { .host_bytes = L->host_bytes, .dev_bytes = L->dev_bytes };

	return ensure_buffers(cx, &l1);
}

/* Tables, queries, masks, run tables and (full mode, blend on) v̄ in the host mirror. */
static int fill_inputs2(struct cu_ctx *cx, struct plan *pl, uint32_t n, bool full,
			const struct layout2 *L, struct sparq_attend_batch *b)
{
	struct sparq_cu_item *items = (struct sparq_cu_item *)(cx->h_buf + L->items);
	struct sparq_cu_tile *tiles = (struct sparq_cu_tile *)(cx->h_buf + L->tiles);
	uint8_t *D = cx->d_buf, *H = cx->h_buf;
	uint32_t t = 0;
	int ret;

	for (uint32_t i = 0; i < n; i++) {
		struct plan *p = &pl[i];
		struct sparq_attend_item *it = p->it;
		struct cu_slice *cs = cu_slice_of(sparq_stream_slice(it->stream));
		const bool zc = full && p->region;

		items[i] = (struct sparq_cu_item){
			.q = (const float *)(D + p->o_q),
			.mask = it->exclude ? (const uint64_t *)(D + p->o_mask) : NULL,
			.vbar = (const float *)(D + p->o_vbar),
			.rows = full && !p->region ? D + p->o_rows : NULL,
			.qc = p->dense ? NULL : (float *)(D + p->o_qc),
			.z = p->per_head ? (float *)(D + p->o_z) : NULL,
			.zsum = p->dense ? NULL : (float *)(D + p->o_zsum),
			.part = p->per_head ? (float *)(D + p->o_part) : NULL,
			.zmax = p->per_head ? (float *)(D + p->o_zmax) : NULL,
			.zden = p->per_head ? (double *)(D + p->o_zden) : NULL,
			.comp = (uint32_t *)(D + p->o_comp),
			.sel = (uint32_t *)(D + p->o_sel),
			.alpha = (float *)(D + p->o_alpha),
			.info = (uint32_t *)(D + p->o_info),
			.y = (float *)(D + p->o_y),
			.S = p->S, .d = p->d, .g = p->g, .r = p->r, .m = p->m,
			.w_start = p->w_start, .sel_cap = p->sel_cap,
			.dtype = (uint32_t)sparq_stream_dtype(it->stream),
			.rec_bytes = p->rec_bytes, .n_tiles = p->n_tiles,
			.dense = p->dense, .per_head = p->per_head,
			.seg_pos = zc ? (const uint32_t *)(D + p->o_seg_pos) : NULL,
			.seg_addr = zc ? (const uint64_t *)(D + p->o_seg_addr) : NULL,
			.n_seg = zc ? p->n_seg : 0,
			.ex_rows = p->ex_rows,
			.ex_acc = full ? (float *)(D + p->o_ex_acc) : NULL,
			.ex_ml = full ? (float *)(D + p->o_ex_ml) : NULL,
			.sel_hist = (uint32_t *)(D + p->o_sel_hist),
			.sel_state = (uint32_t *)(D + p->o_sel_hist) + 4 * 256,
			.sel_cnt = (uint32_t *)(D + p->o_sel_cnt),
			.sel_off = (uint32_t *)(D + p->o_sel_off),
			.n_sel_chunks = p->sel_chunks,
			.rc_slots = p->rc ? p->rc->rc_slots : 0,
			.rc_tag = p->rc ? p->rc->rc_tag : NULL,
			.rc_data = p->rc ? p->rc->rc_data : NULL,
			.rc_mark = p->rc ? (uint32_t *)(D + p->o_rc_mark) : NULL,
		};
		memcpy(H + p->o_q, it->q, (size_t)p->g * p->d * sizeof(float));
		if (it->exclude)
			memcpy(H + p->o_mask, it->exclude, (size_t)(p->S + 63) / 64 * sizeof(uint64_t));
		for (uint32_t k = 0; k < p->n_tiles; k++) {
			uint32_t pos = k * SPARQ_CU_TILE;
			tiles[t++] = cu_tile_of(cs, pos, i, k);
		}
		if (zc) {
			ret = walk_runs(p, (uint32_t *)(H + p->o_seg_pos), (uint64_t *)(H + p->o_seg_addr));
			if (ret) {
				b->bad_item = (int32_t)p->index;
				b->why = ret == -EFAULT ? "record outside the store's registered region"
							: "record store has no such position";
				return ret;
			}
			items[i].n_seg = p->n_seg;
		}
		/* v̄ before the kernels run: α is not known yet, so every blended item */
		if (full && p->per_head) {
			ret = visible_mean(p, (float *)(H + p->o_vbar));
			if (ret) {
				b->bad_item = (int32_t)p->index;
				b->why = "record store read failed (masked rows for the mean)";
				return ret;
			}
		}
	}
	return 0;
}

/* The kernels' verdict per item (host mirror of the outputs): overflow, row count. */
static int check_info2(struct cu_ctx *cx, struct plan *pl, uint32_t n,
		       struct sparq_attend_batch *b)
{
	for (uint32_t i = 0; i < n; i++) {
		struct plan *p = &pl[i];
		const uint32_t *info = (const uint32_t *)(cx->h_buf + p->o_info);

		if (info[1] & SPARQ_CU_OVERFLOW) {
			b->bad_item = (int32_t)p->index;
			b->why = "approximate logits overflow fp32 (keys or queries too large)";
			return -ERANGE;
		}
		if (info[0] != (p->dense ? p->n_vis : p->it->used.k)) {
			/* the kernels select min(k, visible) rows by construction: a GPU
			 * failure, which the CPU backend can serve */
			b->bad_item = (int32_t)p->index;
			int ret = cu_fail(cx, cudaErrorUnknown, "selection kernel returned a wrong row count");
			b->why = cx->err;
			return ret;
		}
		p->it->n_sel = info[0];
	}
	return 0;
}

/* A step of an enqueue function: what names it, and a failure returns at once. */
#define EQ(call, name)                                  \
	do {                                            \
		cudaError_t e_ = (call);                \
		*what = (name);                         \
		if (e_ != cudaSuccess)                  \
			return e_;                      \
	} while (0)

/*
 * v2, events 0-2: the upload of the call's tables, scoring, selection and α. evf is
 * cudaEventRecordExternal while a graph is captured, so that the events become record
 * nodes and still time the phases.
 */
static cudaError_t enqueue_front2(struct cu_ctx *cx, const struct layout2 *L, uint32_t n,
				  bool full, unsigned evf, const char **what)
{
	const struct sparq_cu_item *items = (const struct sparq_cu_item *)(cx->d_buf + L->items);
	const struct sparq_cu_tile *tiles = (const struct sparq_cu_tile *)(cx->d_buf + L->tiles);
	cudaStream_t st = cx->st;

	EQ(cudaEventRecordWithFlags(cx->ev[0], st, evf), "event");
	EQ(cudaMemcpyAsync(cx->d_buf, cx->h_buf, L->in_end, cudaMemcpyHostToDevice, st),
	   "upload of queries and tables");
	EQ(cudaMemsetAsync(cx->d_buf + L->out, 0, L->out_end - L->out, st), "clear outputs");
	EQ(cudaMemsetAsync(cx->d_buf + L->scr, 0, L->scr_end - L->scr, st), "clear select scratch");
	EQ(sparq_cu_launch_comp(st, items, n), "components kernel launch");
	EQ(sparq_cu_launch_score(st, items, tiles, L->n_tiles, L->g_max), "score kernel launch");
	EQ(sparq_cu_launch_softmax(st, items, n), "softmax kernel launch");
	EQ(cudaEventRecordWithFlags(cx->ev[1], st, evf), "event");
	EQ(sparq_cu_launch_select2(st, items, n, L->sel_chunks_max), "select kernels launch");
	EQ(FAULT_OR(!full, sparq_cu_launch_alpha(st, items, n)), "alpha kernel launch");
	EQ(cudaEventRecordWithFlags(cx->ev[2], st, evf), "event");
	return cudaSuccess;
}

/* v2, events 3-4: the row cache probe, the exact step and the download of the outputs. */
static cudaError_t enqueue_back2(struct cu_ctx *cx, const struct layout2 *L, uint32_t n,
				 bool full, unsigned evf, const char **what)
{
	const struct sparq_cu_item *items = (const struct sparq_cu_item *)(cx->d_buf + L->items);
	cudaStream_t st = cx->st;

	EQ(cudaEventRecordWithFlags(cx->ev[3], st, evf), "event");
	if (full) {
		EQ(sparq_cu_launch_rc_probe(st, items, n, L->rc_rows_max), "row cache kernel launch");
		EQ(FAULT_OR(true, sparq_cu_launch_exact2(st, items, n, L->ex_chunks_max, L->g_max)),
		   "exact kernels launch");
	}
	EQ(cudaMemcpyAsync(cx->h_buf + L->out, cx->d_buf + L->out, L->out_end - L->out,
			   cudaMemcpyDeviceToHost, st), "download of the outputs");
	EQ(cudaEventRecordWithFlags(cx->ev[4], st, evf), "event");
	return cudaSuccess;
}

/*
 * SPARQ_CUDA_GRAPHS=1: a call with no staged item (nothing for the host to do between
 * selection and the exact step) is one graph launch instead of ~20 launches and
 * copies. A graph fixes what its nodes were given: the buffers, the section sizes and
 * the grids; items, tiles and every per-item pointer live in the uploaded tables. So
 * a call whose shape (the key below) is the last captured one replays it. A decode
 * step changes the shape now and then (k = S/2c grows every 2c tokens, a mask word or
 * a record run every 64 or chunk of positions): that call is captured again and the
 * executable graph updated in place, or instantiated anew when the update is refused.
 */
static cudaError_t graph_run2(struct cu_ctx *cx, const struct layout2 *L, uint32_t n, bool full,
			      bool *replayed, const char **what)
{
	const uint64_t key[CU_GRAPH_KEY_WORDS] = {
		(uintptr_t)cx->d_buf, (uintptr_t)cx->h_buf, n, full, L->items, L->tiles, L->in_end,
		L->out, L->out_end, L->scr, L->scr_end, L->n_tiles, L->g_max, L->sel_chunks_max,
		L->ex_chunks_max, L->rc_rows_max,
	};
	cudaGraph_t g = NULL;
	cudaError_t e, e_end;

	*replayed = cx->graph_exec && memcmp(key, cx->graph_key, sizeof(key)) == 0;
	if (*replayed) {
		cx->graph_replays++;
		*what = "graph launch";
		return cudaGraphLaunch(cx->graph_exec, cx->st);
	}
	/* thread-local: what other threads do with CUDA meanwhile does not end the capture */
	EQ(cudaStreamBeginCapture(cx->st, cudaStreamCaptureModeThreadLocal), "graph capture");
	e = enqueue_front2(cx, L, n, full, cudaEventRecordExternal, what);
	if (e == cudaSuccess)
		e = enqueue_back2(cx, L, n, full, cudaEventRecordExternal, what);
	e_end = cudaStreamEndCapture(cx->st, &g);
	if (e == cudaSuccess && e_end != cudaSuccess) {
		e = e_end;
		*what = "graph capture";
	}
	if (e != cudaSuccess) {
		if (g)
			cudaGraphDestroy(g);
		return e;
	}
	if (cx->graph_exec) {
		cudaGraphExecUpdateResultInfo info;

		if (cudaGraphExecUpdate(cx->graph_exec, g, &info) == cudaSuccess) {
			cx->graph_updates++;
		} else {
			/* another node structure (select mode, an item count that adds or
			 * drops a launch): not an error of the call, nor one for the next
			 * launch check to find */
			cudaGetLastError();
			cudaGraphExecDestroy(cx->graph_exec);
			cx->graph_exec = NULL;
		}
	}
	if (!cx->graph_exec) {
		e = cudaGraphInstantiate(&cx->graph_exec, g, 0);
		if (e != cudaSuccess) {
			cx->graph_exec = NULL;
			cudaGraphDestroy(g);
			*what = "graph instantiation";
			return e;
		}
		cx->graph_instances++;
	}
	cudaGraphDestroy(g);
	memcpy(cx->graph_key, key, sizeof(key));
	cx->graph_captures++;
	*what = "graph launch";
	return cudaGraphLaunch(cx->graph_exec, cx->st);
}

static int attend_gpu_v2(struct cu_ctx *cx, struct sparq_attend_batch *b, struct plan *pl,
			 uint32_t n)
{
	const bool full = b->mode != SPARQ_ATTEND_SELECT;
	struct layout2 L;
	bool staged = false;
	uint64_t t0 = now_ns(), host_ns;
	int ret = 0;

	for (uint32_t i = 0; i < n; i++) {
		struct plan *p = &pl[i];
		choose_source(cx, p, full);
		staged |= full && !p->region;
		p->rc = NULL;
		if (full && p->region && !cx->rc_off && p->rec_bytes % 16 == 0) {
			struct cu_slice *cs = cu_slice_of(sparq_stream_slice(p->it->stream));
			bool first = true;

			/* one item per stream uses its cache in a call: two would refill slots
			 * the other reads, each probing only its own selection */
			for (uint32_t j = 0; j < i; j++)
				first &= pl[j].rc != cs;
			if (first && ensure_rc(cx, cs, p->sel_cap, p->rec_bytes))
				p->rc = cs;
		}
		if (full && p->region) {
			ret = walk_runs(p, NULL, NULL);
			if (ret) {
				b->bad_item = (int32_t)p->index;
				b->why = ret == -EFAULT ? "record outside the store's registered region"
							: "record store has no such position";
				return ret;
			}
		}
	}
	layout_call2(pl, n, full, &L);
	ret = ensure_buffers2(cx, &L);
	if (ret) {
		b->why = cx->err;
		return ret;
	}
	ret = fill_inputs2(cx, pl, n, full, &L, b);
	if (ret)
		return ret;
	host_ns = now_ns() - t0;

	cudaStream_t st = cx->st;
	const char *what = "event";  /* the enqueue functions name their failing step here */
	const bool graphed = !staged && cx->graphs && !cx->fault_every;
	bool replayed = false;

	if (graphed) {
		CK(graph_run2(cx, &L, n, full, &replayed, &what), what);
	} else {
		CK(enqueue_front2(cx, &L, n, full, cudaEventRecordDefault, &what), what);
		if (staged) {
			/* the store copies the selected records: the host needs the selection */
			CK(cudaMemcpyAsync(cx->h_buf + L.out, cx->d_buf + L.out, L.out_end - L.out,
					   cudaMemcpyDeviceToHost, st), "download of the selection");
			CK(cudaStreamSynchronize(st), "scoring and selection kernels");
			ret = check_info2(cx, pl, n, b);
			if (ret)
				goto out;
			uint64_t t1 = now_ns();
			ret = fetch_staged(cx, pl, n, b);
			if (ret)
				goto out;
			host_ns += now_ns() - t1;
			CK(cudaMemcpyAsync(cx->d_buf + L.rows_b, cx->h_buf + L.rows_b,
					   L.host_bytes - L.rows_b, cudaMemcpyHostToDevice, st),
			   "upload of staged records");
		}
		CK(enqueue_back2(cx, &L, n, full, cudaEventRecordDefault, &what), what);
	}
	CK(cudaStreamSynchronize(st), "attention kernels");
	ret = check_info2(cx, pl, n, b);
	if (ret)
		goto out;
	b->stats.score_ns += elapsed_ns(cx->ev[0], cx->ev[1]);
	b->stats.select_ns += elapsed_ns(cx->ev[1], cx->ev[2]);
	b->stats.graph_calls += graphed;
	b->stats.graph_replays += replayed;
	/* zero-copy items read their records inside the exact step: gather is host work
	 * (run tables, v̄) plus, for staged items, the store copy and its upload */
	b->stats.gather_ns += host_ns + (staged ? elapsed_ns(cx->ev[2], cx->ev[3]) : 0);
	b->stats.exact_ns += elapsed_ns(cx->ev[3], cx->ev[4]);
	for (uint32_t i = 0; i < n; i++) {
		struct plan *p = &pl[i];
		struct sparq_attend_item *it = p->it;
		const float *alpha = (const float *)(cx->h_buf + p->o_alpha);
		bool blended = false;

		if (it->sel)
			memcpy(it->sel, cx->h_buf + p->o_sel, it->n_sel * sizeof(uint32_t));
		if (it->alpha)
			memcpy(it->alpha, alpha, p->g * sizeof(float));
		if (it->comp && !p->dense)
			memcpy(it->comp, cx->h_buf + p->o_comp, p->r * sizeof(uint32_t));
		if (!p->dense)
			b->stats.slice_bytes += cu_scored_bytes(cx, p->r, p->S);
		if (!full)
			continue;
		memcpy(it->y, cx->h_buf + p->o_y, (size_t)p->g * p->d * sizeof(float));
		/* rows found in the row cache were not read from the store */
		const uint32_t hits = p->rc ? ((const uint32_t *)(cx->h_buf + p->o_info))[2] : 0;
		if (p->rc)
			b->stats.cache_rows += it->n_sel;
		b->stats.cache_hits += hits;
		b->stats.record_bytes += (uint64_t)(it->n_sel - hits) * p->rec_bytes;
		for (uint32_t h = 0; h < p->g; h++)
			blended |= alpha[h] < 1.0f;
		if (blended && it->exclude)
			b->stats.record_bytes += (uint64_t)(p->S - p->n_vis) * p->rec_bytes;
	}
out:
	if (ret && b->bad_item < 0 && n)
		b->bad_item = (int32_t)pl[0].index;
	return ret;
}

/* The items whose slices moved to the CPU, as one batch of the internal CPU backend. */
static int attend_cpu(struct cu_ctx *cx, struct sparq_attend_batch *b, const uint32_t *idx,
		      uint32_t n)
{
	struct sparq_attend_item *items = malloc(n * sizeof(*items));
	struct sparq_attend_batch sub = { .items = items, .n = n, .mode = b->mode };
	int ret;

	if (!items) {
		b->why = "out of memory";
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < n; i++)
		items[i] = b->items[idx[i]];
	sub.bad_item = -1;
	ret = cx->cpu->ops->attend(cx->cpu->ctx, &sub);
	for (uint32_t i = 0; i < n; i++)
		b->items[idx[i]].n_sel = items[i].n_sel;
	if (ret) {
		b->bad_item = sub.bad_item >= 0 ? (int32_t)idx[sub.bad_item] : (int32_t)idx[0];
		b->why = sub.why;
	}
	b->stats.score_ns += sub.stats.score_ns;
	b->stats.select_ns += sub.stats.select_ns;
	b->stats.gather_ns += sub.stats.gather_ns;
	b->stats.exact_ns += sub.stats.exact_ns;
	b->stats.slice_bytes += sub.stats.slice_bytes;
	b->stats.record_bytes += sub.stats.record_bytes;
	b->stats.cpu_items += n;
	free(items);
	return ret;
}

/* ---- CUDA failures: fallback to the CPU backend ---- */

#define MIRROR_BATCH 1024u

static void say(struct cu_ctx *cx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void say(struct cu_ctx *cx, const char *fmt, ...)
{
	char msg[384];
	va_list ap;

	if (!cx->log)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	cx->log(cx->log_user, msg);
}

/* The errors the CUDA runtime documents as leaving the process in an inconsistent
 * state, every later CUDA call returning the same error. */
static bool sticky_error(cudaError_t e)
{
	switch (e) {
	case cudaErrorECCUncorrectable:
	case cudaErrorContained:
	case cudaErrorIllegalAddress:
	case cudaErrorLaunchTimeout:
	case cudaErrorAssert:
	case cudaErrorHardwareStackError:
	case cudaErrorIllegalInstruction:
	case cudaErrorMisalignedAddress:
	case cudaErrorInvalidAddressSpace:
	case cudaErrorInvalidPc:
	case cudaErrorLaunchFailure:
	case cudaErrorTensorMemoryLeak:
	case cudaErrorMpsClientTerminated:
	case cudaErrorExternalDevice:
		return true;
	default:
		return false;
	}
}

/*
 * Whether the context survived error e. cudaGetLastError clears a non-sticky error;
 * then the failed call's queued work is waited for (nothing of it may still run when
 * the next call reuses the buffers or its row caches are freed): an error reported
 * now, even after clearing once more, means the context is gone whatever e said.
 */
static bool context_lost(struct cu_ctx *cx, cudaError_t e)
{
	cudaError_t s;

	if (sticky_error(e)) {
		/* returns at once in a dead context; a synthetic error's work still runs */
		cudaStreamSynchronize(cx->st);
		cudaGetLastError();
		return true;
	}
	cudaGetLastError();
	s = cudaStreamSynchronize(cx->st);
	if (s != cudaSuccess && !sticky_error(s)) {
		cudaGetLastError();
		s = cudaStreamSynchronize(cx->st);
	}
	return s != cudaSuccess;
}

/* A CUDA failure (cx->err says which): counted, logged the first time (then says
 * what became of the work), and the backend degraded when the context did not
 * survive it. */
static void note_failure(struct cu_ctx *cx, cudaError_t e, bool synthetic, const char *then)
{
	cx->n_cuda_errors++;
	if (context_lost(cx, e)) {
		cx->degraded = true;
		cu_update_detail(cx);
		say(cx, "CUDA backend degraded: %s%s; the CUDA context is unusable, so every "
		    "later call runs on the CPU backend (restart to use the GPU again)", cx->err,
		    synthetic ? " [injected by --cuda-fault]" : "");
	} else if (!cx->logged_fallback) {
		cx->logged_fallback = true;
		say(cx, "CUDA failure, %s: %s%s (later ones are only counted)", then, cx->err,
		    synthetic ? " [injected by --cuda-fault]" : "");
	}
}

/*
 * Positions [cpu_len, S) of the stream's keys into its CPU slice, from the record
 * store (records are the K row then the V row): the CPU backend then reads exactly
 * the keys it would have been given by the appends.
 */
static int mirror_keys(struct cu_ctx *cx, struct sparq_stream *s)
{
	struct sparq_slice *sl = sparq_stream_slice(s);
	struct cu_slice *cs = cu_slice_of(sl);
	struct sparq_store *st = sparq_stream_store(s);
	const uint32_t S = sparq_stream_len(s), d = cs->d, rec = sparq_stream_record_bytes(s);
	uint32_t *pos = NULL;
	uint8_t *buf = NULL;
	uint16_t *k = NULL;
	int ret = 0;

	if (cs->cpu_len >= S)
		return 0;
	pos = malloc(MIRROR_BATCH * sizeof(*pos));
	buf = malloc((size_t)MIRROR_BATCH * rec);
	k = malloc((size_t)MIRROR_BATCH * d * sizeof(*k));
	if (!pos || !buf || !k) {
		ret = -ENOMEM;
		goto out;
	}
	while (cs->cpu_len < S) {
		const uint32_t at = cs->cpu_len, n = S - at < MIRROR_BATCH ? S - at : MIRROR_BATCH;
		struct sparq_gather g = { .stream = sparq_stream_records(s), .pos = pos, .n = n,
					  .out = buf };

		for (uint32_t i = 0; i < n; i++)
			pos[i] = at + i;
		ret = st->ops->gather(st->ctx, &g, 1);
		if (ret)
			goto out;
		for (uint32_t i = 0; i < n; i++)
			memcpy(k + (size_t)i * d, buf + (size_t)i * rec, d * sizeof(*k));
		ret = cx->cpu->ops->slice_write(cx->cpu->ctx, sl, at, n, k);
		if (ret)
			goto out;
		cs->cpu_len = at + n;
	}
out:
	free(pos);
	free(buf);
	free(k);
	return ret;
}

/* Moves a GPU stream to the CPU for good after a CUDA error: its keys from the store,
 * its pages back to the pool, its row cache freed. */
static int lose_stream(struct cu_ctx *cx, struct sparq_stream *s)
{
	struct cu_slice *cs = cu_slice_of(sparq_stream_slice(s));
	int ret = mirror_keys(cx, s);

	if (ret)
		return ret;
	for (uint32_t i = 0; i < cs->n_pages; i++)
		cu_pool_put(&cx->pool, cs->pages[i]);
	cs->n_pages = 0;
	cu_rc_free(cx, cs);
	cs->on_gpu = false;
	cs->stale = false;
	cs->lost = true;
	cx->n_fallback++;
	cx->n_lost++;
	cu_update_detail(cx);
	return 0;
}

/*
 * The GPU part of b failed in CUDA: forget what it did (outputs, stats, reason), drop
 * the row caches it used, and give each of its streams the keys the CPU backend needs
 * (or move them there for good when the backend degraded). The caller then serves
 * every item of b on the CPU.
 */
static int fall_back(struct cu_ctx *cx, struct sparq_attend_batch *b, const struct plan *pl,
		     uint32_t n, const struct sparq_attend_stats *before, bool synthetic)
{
	note_failure(cx, cx->last_err, synthetic, "the call was served by the CPU backend");
	b->stats = *before;
	b->bad_item = -1;
	b->why = NULL;
	for (uint32_t i = 0; i < n; i++) {
		struct sparq_stream *s = pl[i].it->stream;
		struct cu_slice *cs = cu_slice_of(sparq_stream_slice(s));
		int ret;

		if (!cs->on_gpu)
			continue;  /* the same stream twice in the call */
		cu_rc_free(cx, cs);
		ret = cx->degraded ? lose_stream(cx, s) : mirror_keys(cx, s);
		if (ret) {
			b->bad_item = (int32_t)pl[i].index;
			b->why = "record store read failed (the keys for the CPU fallback)";
			return ret;
		}
	}
	return 0;
}

static int cu_attend(void *ctx, struct sparq_attend_batch *b)
{
	struct cu_ctx *cx = ctx;
	struct plan *pl = calloc(b->n, sizeof(*pl));
	uint32_t *cpu_idx = calloc(b->n, sizeof(*cpu_idx));
	uint32_t n_gpu = 0, n_cpu = 0, n_fb = 0;
	int ret = 0;

	if (!pl || !cpu_idx) {
		free(pl);
		free(cpu_idx);
		b->why = "out of memory";
		return -ENOMEM;
	}
	pthread_mutex_lock(&cx->mu);
	for (uint32_t i = 0; i < b->n; i++) {
		struct sparq_stream *s = b->items[i].stream;
		struct cu_slice *cs = cu_slice_of(sparq_stream_slice(s));

		if (cs->on_gpu && (cx->degraded || cs->stale)) {
			ret = lose_stream(cx, s);
			if (ret) {
				b->bad_item = (int32_t)i;
				b->why = "record store read failed (moving the stream to the CPU "
					 "after a CUDA error)";
				goto out;
			}
		}
		if (cs->on_gpu)
			plan_item(&pl[n_gpu++], &b->items[i], i);
		else
			cpu_idx[n_cpu++] = i;
		n_fb += cs->lost;
	}
	if (n_gpu) {
		const struct sparq_attend_stats before = b->stats;
		bool drawn = false, synthetic = false;
		cudaError_t e;

		cx->last_err = cudaSuccess;
		/* the test fault: one compare per call when it is off */
		if (cx->fault_every && ++cx->fault_count == cx->fault_every) {
			cx->fault_count = 0;
			cx->fault_now = drawn = true;
		}
		e = cudaSetDevice(cx->dev);
		if (e != cudaSuccess) {
			ret = cu_fail(cx, e, "cudaSetDevice");
			b->why = cx->err;
			b->bad_item = (int32_t)pl[0].index;
		} else {
			ret = cx->kernels_v1 ? attend_gpu_v1(cx, b, pl, n_gpu)
					     : attend_gpu_v2(cx, b, pl, n_gpu);
			synthetic = drawn && !cx->fault_now;  /* FAULT_OR took it */
		}
		cx->fault_now = false;  /* not drawn when the call stopped before its end */
		if (ret && cx->last_err != cudaSuccess) {
			ret = fall_back(cx, b, pl, n_gpu, &before, synthetic);
			if (ret)
				goto out;
			n_fb += n_gpu;
			n_cpu = b->n;
			for (uint32_t i = 0; i < b->n; i++)
				cpu_idx[i] = i;
		} else if (ret) {
			goto out;
		}
	}
	if (n_fb) {
		b->stats.fallback_items += n_fb;
		cx->n_fb_batches++;
		cx->n_fb_items += n_fb;
	}
	if (n_cpu)
		ret = attend_cpu(cx, b, cpu_idx, n_cpu);
out:
	/* every path: the GPU part has synchronized or been waited for (release_holds) */
	release_holds(pl, n_gpu);
	pthread_mutex_unlock(&cx->mu);
	free(pl);
	free(cpu_idx);
	return ret;
}

/*
 * The slice ops slice.c implements, with the fallback state kept around them (under
 * the recursive mutex, which slice.c takes again): a rewrite shortens the CPU mirror;
 * after degrading, or once the stream's GPU copy is stale, appends go to the mirror
 * when they extend it (else the store has them for the next call); an append that
 * fails in CUDA leaves the stream stale instead of failing.
 */
static int cu_write(void *ctx, struct sparq_slice *sl, uint32_t pos, uint32_t n,
		    const uint16_t *k_rows)
{
	struct cu_ctx *cx = ctx;
	struct cu_slice *cs = cu_slice_of(sl);
	int ret;

	if (n == 0)
		return 0;
	pthread_mutex_lock(&cx->mu);
	if (cs->on_gpu && pos < cs->cpu_len)
		cs->cpu_len = pos;
	if (cs->on_gpu && (cx->degraded || cs->stale)) {
		cs->stale = true;
		if (pos == cs->cpu_len &&
		    cx->cpu->ops->slice_write(cx->cpu->ctx, sl, pos, n, k_rows) == 0)
			cs->cpu_len = pos + n;
		ret = 0;
		goto out;
	}
	cx->last_err = cudaSuccess;
	ret = cu_slice_write(ctx, sl, pos, n, k_rows);
	if (ret && cx->last_err != cudaSuccess && cs->on_gpu) {
		note_failure(cx, cx->last_err, false,
			     "the append went to the store only and the stream moves to the CPU backend");
		/* the mirror may have been rewritten from the GPU copy (slice.c's move
		 * to the CPU): read it all again from the store */
		cs->stale = true;
		cs->cpu_len = 0;
		ret = 0;
	}
out:
	pthread_mutex_unlock(&cx->mu);
	return ret;
}

static int cu_create(void *ctx, uint32_t d, enum sparq_dtype dt, struct sparq_slice **out)
{
	struct cu_ctx *cx = ctx;
	int ret;

	pthread_mutex_lock(&cx->mu);
	ret = cu_slice_create(ctx, d, dt, out);
	if (ret == 0 && cx->degraded) {
		struct cu_slice *cs = cu_slice_of(*out);

		cs->on_gpu = false;
		cs->lost = true;
		cx->n_fallback++;
		cx->n_lost++;
		cu_update_detail(cx);
	}
	pthread_mutex_unlock(&cx->mu);
	return ret;
}

static void cu_destroy_slice(void *ctx, struct sparq_slice *sl)
{
	struct cu_ctx *cx = ctx;

	if (!sl)
		return;
	pthread_mutex_lock(&cx->mu);
	if (cu_slice_of(sl)->lost)
		cx->n_lost--;
	cu_slice_destroy(ctx, sl);
	pthread_mutex_unlock(&cx->mu);
}

static void cu_health(void *ctx, struct sparq_backend_health *out)
{
	struct cu_ctx *cx = ctx;

	pthread_mutex_lock(&cx->mu);
	*out = (struct sparq_backend_health){
		.cuda_errors = cx->n_cuda_errors,
		.fallback_batches = cx->n_fb_batches,
		.fallback_items = cx->n_fb_items,
		.streams_lost = cx->n_lost,
		.degraded = cx->degraded,
	};
	pthread_mutex_unlock(&cx->mu);
}

/* ---- open / close ---- */

static void cu_destroy(void *ctx)
{
	struct cu_ctx *cx = ctx;

	if (!cx)
		return;
	cudaSetDevice(cx->dev);
	if (cx->st)
		cudaStreamSynchronize(cx->st);
	for (uint32_t i = 0; i < cx->n_regions; i++)
		if (cx->regions[i].dev)
			cudaHostUnregister(cx->regions[i].base);
	if (cx->graph_exec)
		cudaGraphExecDestroy(cx->graph_exec);
	cu_pool_fini(&cx->pool);
	cudaFree(cx->d_buf);
	cudaFreeHost(cx->h_buf);
	cudaFree(cx->d_stage);
	cudaFreeHost(cx->h_stage);
	for (int i = 0; i < 6; i++)
		if (cx->ev[i])
			cudaEventDestroy(cx->ev[i]);
	if (cx->st)
		cudaStreamDestroy(cx->st);
	cudaGetLastError();
	sparq_backend_close(cx->cpu);
	pthread_mutex_destroy(&cx->mu);
	free(cx);
}

static const struct sparq_backend_ops cuda_ops = {
	.name = "cuda",
	.slice_create = cu_create,
	.slice_write = cu_write,
	.slice_destroy = cu_destroy_slice,
	.attend = cu_attend,
	.destroy = cu_destroy,
	.health = cu_health,
};

int sparq_cuda_backend_create(const struct sparq_backend_config *cfg, struct sparq_backend **out)
{
	struct cu_ctx *cx;
	pthread_mutexattr_t ma;
	struct cudaDeviceProp prop;
	size_t mem_free = 0, mem_total = 0;
	char detail[160];
	uint64_t budget;
	int ret;

	ret = sparq_cuda_probe(detail, sizeof(detail));
	if (ret)
		return ret;
	cx = calloc(1, sizeof(*cx));
	if (!cx)
		return -ENOMEM;
	pthread_mutexattr_init(&ma);
	pthread_mutexattr_settype(&ma, PTHREAD_MUTEX_RECURSIVE);
	pthread_mutex_init(&cx->mu, &ma);
	pthread_mutexattr_destroy(&ma);
	if (cfg) {
		cx->fault_every = cfg->cuda_fault_every;
		cx->fault_err = cfg->cuda_fault_sticky ? cudaErrorLaunchFailure
						       : cudaErrorLaunchOutOfResources;
		cx->log = cfg->log;
		cx->log_user = cfg->log_user;
		/* the internal CPU backend gets the same cfg: one format on both sides */
		cx->key_slice = cfg->key_slice;
	}
	ret = sparq_cpu_backend_create(cfg, &cx->cpu);
	if (ret) {
		cx->cpu = NULL;
		goto err;
	}
	cx->dev = 0;
	ret = -ENODEV;
	if (cudaSetDevice(cx->dev) != cudaSuccess ||
	    cudaGetDeviceProperties(&prop, cx->dev) != cudaSuccess ||
	    cudaMemGetInfo(&mem_free, &mem_total) != cudaSuccess)
		goto err;
	budget = cfg && cfg->gpu_budget_bytes ? cfg->gpu_budget_bytes
					      : (uint64_t)((double)mem_free * 0.9);
	cu_pool_init(&cx->pool, budget);
	snprintf(cx->dev_desc, sizeof(cx->dev_desc), "%.48s sm_%d%d %.0f GiB", prop.name,
		 prop.major, prop.minor, (double)mem_total / (1u << 30));
	ret = -EIO;
	if (cudaStreamCreateWithFlags(&cx->st, cudaStreamNonBlocking) != cudaSuccess) {
		cx->st = NULL;
		goto err;
	}
	for (int i = 0; i < 6; i++) {
		if (cudaEventCreate(&cx->ev[i]) != cudaSuccess) {
			cx->ev[i] = NULL;
			goto err;
		}
	}
	ret = -ENOMEM;
	cx->stage_bytes = STAGE_BYTES;
	if (cudaMallocHost((void **)&cx->h_stage, cx->stage_bytes) != cudaSuccess) {
		cx->h_stage = NULL;
		goto err;
	}
	if (cudaMalloc((void **)&cx->d_stage, cx->stage_bytes) != cudaSuccess) {
		cx->d_stage = NULL;
		goto err;
	}
	/* read once at open: the whole backend runs one generation of kernels */
	const char *kv = getenv("SPARQ_CUDA_KERNELS"), *rc = getenv("SPARQ_CUDA_ROWCACHE");
	cx->kernels_v1 = !(kv && strcmp(kv, "v2") == 0);
	cx->rc_off = rc && strcmp(rc, "0") == 0;
	const char *gr = getenv("SPARQ_CUDA_GRAPHS");
	cx->graphs = !cx->kernels_v1 && gr && strcmp(gr, "1") == 0;
	/* row caches hold about one call's rows per stream: at ratio 1/8 a quarter of
	 * what the key slices take, so a quarter of their budget bounds them */
	cx->rc_cap = budget / 4;
	cx->pub.ops = &cuda_ops;
	cx->pub.ctx = cx;
	cu_update_detail(cx);
	*out = &cx->pub;
	return 0;
err:
	cudaGetLastError();
	cu_destroy(cx);
	return ret;
}
