/*
 * slice.c — the CUDA backend's key slices: channel-major Kᵀ in GPU pages, one page
 * table per stream, appended in place (a decode append writes one column of one page
 * and rewrites nothing). Each slice wraps an empty CPU-backend slice: when the pool
 * has no page left for a stream (its budget is spent, or the device is full), the
 * keys written so far are copied back into that CPU slice, the pages are returned,
 * and from then on the stream is served by the CPU backend — it does not fail. The
 * backend.c wrappers see one owner throughout: the CPU slice is re-labelled as ours.
 *
 * int8 slices (backend.h) are quantized here on the host by quant.h, before the upload,
 * so the GPU holds the very bytes the CPU backend would; moving one to the CPU copies
 * those bytes, never quantizing twice.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "../cpu/cpu-impl.h"
#include "../quant.h"
#include "cuda-host.h"

int cu_slice_create(void *ctx, uint32_t d, enum sparq_dtype dt, struct sparq_slice **out)
{
	struct cu_ctx *cx = ctx;
	struct sparq_slice *sl;
	struct cu_slice *cs;
	int ret;

	ret = cx->cpu->ops->slice_create(cx->cpu->ctx, d, dt, &sl);
	if (ret)
		return ret;
	cs = calloc(1, sizeof(*cs));
	if (!cs) {
		cx->cpu->ops->slice_destroy(cx->cpu->ctx, sl);
		return -ENOMEM;
	}
	cs->on_gpu = true;
	cs->d = d;
	cs->i8 = cx->key_slice == SPARQ_SLICE_INT8;
	cs->per_page = cs->i8 ? sparq_cu_page_positions_i8(d) : sparq_cu_page_positions(d);
	sl->owner = &cx->pub;
	sl->ext = cs;
	pthread_mutex_lock(&cx->mu);
	cx->n_slices++;
	cu_update_detail(cx);
	pthread_mutex_unlock(&cx->mu);
	*out = sl;
	return 0;
}

static void release_pages(struct cu_ctx *cx, struct cu_slice *cs)
{
	for (uint32_t i = 0; i < cs->n_pages; i++)
		cu_pool_put(&cx->pool, cs->pages[i]);
	cs->n_pages = 0;
}

/*
 * Moves positions [0, upto) into the CPU slice and gives the pages back. On failure
 * the GPU copy stays authoritative; what was written into the CPU slice is
 * overwritten by the next attempt, which starts again at position 0.
 */
static int move_to_cpu(struct cu_ctx *cx, struct sparq_slice *sl, struct cu_slice *cs,
		       uint32_t upto)
{
	size_t page_elems = (size_t)cs->d * cs->per_page;
	/* an int8 page is d + 4 bytes a position, a native one 2d: one buffer fits both */
	size_t bytes = cs->i8 ? SPARQ_CU_PAGE_BYTES : page_elems * sizeof(uint16_t);
	uint8_t *page = malloc(bytes);
	uint8_t *rows = malloc(bytes);
	int ret = 0;

	if (!page || !rows) {
		ret = -ENOMEM;
		goto out;
	}
	for (uint32_t b = 0; (uint64_t)b * cs->per_page < upto; b++) {
		uint32_t base = b * cs->per_page;
		uint32_t cnt = upto - base < cs->per_page ? upto - base : cs->per_page;
		cudaError_t e = cudaMemcpy(page, cs->pages[b], bytes, cudaMemcpyDeviceToHost);
		if (e != cudaSuccess) {
			ret = cu_fail(cx, e, "copying a key slice back to the host");
			goto out;
		}
		if (cs->i8) {
			/* rows [cnt][d] int8 and the scales after them: the bytes as they are */
			int8_t *q = (int8_t *)rows;
			float *sc = (float *)(rows + page_elems);
			const float *psc = (const float *)(page + sparq_cu_page_scale_offset(
							cs->d, cs->per_page));
			for (uint32_t t = 0; t < cnt; t++)
				for (uint32_t c = 0; c < cs->d; c++)
					q[(size_t)t * cs->d + c] =
						(int8_t)page[(size_t)c * cs->per_page + t];
			memcpy(sc, psc, cnt * sizeof(float));
			ret = sparq_cpu_slice_write_q8(sl, base, cnt, q, sc);
		} else {
			const uint16_t *pg = (const uint16_t *)page;
			uint16_t *rw = (uint16_t *)rows;
			for (uint32_t t = 0; t < cnt; t++)
				for (uint32_t c = 0; c < cs->d; c++)
					rw[(size_t)t * cs->d + c] = pg[(size_t)c * cs->per_page + t];
			ret = cx->cpu->ops->slice_write(cx->cpu->ctx, sl, base, cnt, rw);
		}
		if (ret)
			goto out;
	}
	release_pages(cx, cs);
	cs->on_gpu = false;
	cx->n_fallback++;
	cu_update_detail(cx);
out:
	free(page);
	free(rows);
	return ret;
}

/* Page table entries for positions up to last; -ENOSPC/-ENOMEM when none is left. */
static int reserve_pages(struct cu_ctx *cx, struct cu_slice *cs, uint32_t last)
{
	uint32_t need = last / cs->per_page + 1;

	if (need > cs->cap_pages) {
		uint32_t cap = cs->cap_pages ? 2 * cs->cap_pages : 4;
		while (cap < need)
			cap *= 2;
		uint16_t **t = realloc(cs->pages, cap * sizeof(*t));
		if (!t)
			return -ENOMEM;
		cs->pages = t;
		cs->cap_pages = cap;
	}
	while (cs->n_pages < need) {
		void *p;
		int ret = cu_pool_get(cx, &p);
		if (ret)
			return ret;
		cs->pages[cs->n_pages++] = p;
	}
	return 0;
}

/*
 * Stages rows through pinned memory and scatters them into their pages' columns, a
 * page's share at a time. fp16/bf16 slices stage the rows as they are; int8 slices
 * stage them quantized ([cnt][d] int8, then cnt fp32 scales) and scatter the scales too.
 */
static int upload(struct cu_ctx *cx, struct cu_slice *cs, enum sparq_dtype dt, uint32_t pos,
		  uint32_t n, const uint16_t *k_rows)
{
	const uint32_t d = cs->d;
	/* int8: a multiple of 4 positions keeps the scales after the int8 rows aligned */
	const uint32_t stage_pos = cs->i8 ? (uint32_t)(cx->stage_bytes / (d + 4u)) & ~3u
					  : (uint32_t)(cx->stage_bytes / (2u * d));
	uint8_t *h = (uint8_t *)cx->h_stage, *dv = (uint8_t *)cx->d_stage;
	cudaError_t e;

	for (uint32_t i = 0; i < n;) {
		uint32_t p = pos + i, b = p / cs->per_page, col = p % cs->per_page;
		uint32_t cnt = cs->per_page - col;
		size_t q_bytes = 0, bytes;

		if (cnt > n - i)
			cnt = n - i;
		if (cnt > stage_pos)
			cnt = stage_pos;
		if (cs->i8) {
			q_bytes = ((size_t)cnt * d + 3) & ~(size_t)3;
			sparq_quant_rows(k_rows + (size_t)i * d, cnt, d, dt, (int8_t *)h, 1, d,
					 (float *)(h + q_bytes));
			bytes = q_bytes + cnt * sizeof(float);
		} else {
			bytes = (size_t)cnt * d * sizeof(uint16_t);
			memcpy(h, k_rows + (size_t)i * d, bytes);
		}
		e = cudaMemcpyAsync(dv, h, bytes, cudaMemcpyHostToDevice, cx->st);
		if (e != cudaSuccess)
			return cu_fail(cx, e, "key append: upload");
		e = cs->i8 ? sparq_cu_launch_scatter_i8(cx->st, (const int8_t *)dv,
							(const float *)(dv + q_bytes), cnt, d,
							(int8_t *)cs->pages[b], cs->per_page, col)
			   : sparq_cu_launch_scatter(cx->st, (const uint16_t *)dv, cnt, d,
						     cs->pages[b], cs->per_page, col);
		if (e != cudaSuccess)
			return cu_fail(cx, e, "key append: scatter kernel launch");
		/* the staging buffer is reused by the next run: wait for this one */
		e = cudaStreamSynchronize(cx->st);
		if (e != cudaSuccess)
			return cu_fail(cx, e, "key append: scatter kernel");
		i += cnt;
	}
	return 0;
}

void cu_rc_free(struct cu_ctx *cx, struct cu_slice *cs)
{
	if (!cs->rc_slots)
		return;
	cudaFree(cs->rc_tag);
	cudaFree(cs->rc_data);
	cudaGetLastError();
	cx->rc_bytes -= (uint64_t)cs->rc_slots * (cs->rc_rec_bytes + sizeof(uint32_t));
	cs->rc_slots = 0;
	cs->rc_tag = NULL;
	cs->rc_data = NULL;
}

int cu_slice_write(void *ctx, struct sparq_slice *sl, uint32_t pos, uint32_t n,
		   const uint16_t *k_rows)
{
	struct cu_ctx *cx = ctx;
	struct cu_slice *cs = cu_slice_of(sl);
	int ret;

	if (n == 0)
		return 0;
	pthread_mutex_lock(&cx->mu);
	if (cs->on_gpu) {
		cudaError_t e = cudaSetDevice(cx->dev);
		if (e != cudaSuccess) {
			ret = cu_fail(cx, e, "cudaSetDevice");
			goto out;
		}
		/* positions written again may hold other records now: forget the cache
		 * (appends write at the end and keep it) */
		if (pos < cs->len)
			cu_rc_free(cx, cs);
		ret = reserve_pages(cx, cs, pos + n - 1);
		if (ret == -ENOSPC || ret == -ENOMEM) {
			/* no room on the GPU for this stream: the CPU backend serves it */
			ret = move_to_cpu(cx, sl, cs, pos < cs->len ? pos : cs->len);
			if (ret)
				goto out;
		} else if (ret) {
			goto out;
		} else {
			ret = upload(cx, cs, sl->dtype, pos, n, k_rows);
			if (ret == 0)
				cs->len = pos + n;
			goto out;
		}
	}
	ret = cx->cpu->ops->slice_write(cx->cpu->ctx, sl, pos, n, k_rows);
out:
	pthread_mutex_unlock(&cx->mu);
	return ret;
}

void cu_slice_destroy(void *ctx, struct sparq_slice *sl)
{
	struct cu_ctx *cx = ctx;
	struct cu_slice *cs;

	if (!sl)
		return;
	cs = cu_slice_of(sl);
	pthread_mutex_lock(&cx->mu);
	release_pages(cx, cs);
	cudaSetDevice(cx->dev);
	cu_rc_free(cx, cs);
	cx->n_slices--;
	if (!cs->on_gpu)
		cx->n_fallback--;
	cu_update_detail(cx);
	pthread_mutex_unlock(&cx->mu);
	free(cs->pages);
	free(cs);
	sl->ext = NULL;
	cx->cpu->ops->slice_destroy(cx->cpu->ctx, sl);
}
