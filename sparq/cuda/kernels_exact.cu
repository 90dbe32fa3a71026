/*
 * kernels_exact.cu — moving rows and SPARQ.md steps 6-7:
 *   gather:  one warp per selected record, read straight from host memory the GPU
 *            mapped once (zero-copy) into the device rows buffer — never one copy
 *            call per row (DESIGN.md §7: 0.09 GB/s that way, 50 GB/s by kernel);
 *   exact:   one block per (item, query head): each warp runs an fp32 online
 *            softmax over its share of the selected rows, the warps' partial sums
 *            are merged, and the result is blended with v̄ where α_h < 1;
 *   scatter: a key append, rows [n][d] written as columns of a channel-major page.
 *
 * v2 (exact2, the default; v1 stays behind SPARQ_CUDA_KERNELS=v1): flash-decoding.
 * One block per (item, ex_rows selected rows) so that a few items with thousands of
 * rows fill every SM; it copies its records into shared memory with independent
 * 16-byte loads (many PCIe reads in flight), straight from mapped host memory when the
 * item has a record-run table (so the records cross PCIe once and there is no gather
 * phase), else from the staged rows; then the g heads' logits, the block's softmax
 * max and sum, and Σ p·V per head go out as partials. exact2_merge folds the partials
 * in fp32 and blends with v̄, as exact_kernel's last step does.
 *
 * Row cache (zero-copy items whose stream has one): rc_probe marks the cache slots
 * that hold a selected row and lets each missing row claim a slot no selected row
 * hits; exact2 then reads hits from GPU memory and writes each claimed row back from
 * shared memory. A hit slot is never written in the same call, so no block reads a
 * slot another block is refilling.
 */
#include <math.h>

#include "cu-common.cuh"

#define EXACT_WARPS 8
#define LANE_CHANNELS (SPARQ_HEAD_DIM_MAX / 32)  /* channels per lane at d = 1024 */

__global__ void gather_kernel(const struct sparq_cu_copy *copies, uint32_t n)
{
	const uint32_t i = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
	const uint32_t lane = threadIdx.x & 31;

	if (i >= n)
		return;
	const struct sparq_cu_copy c = copies[i];
	if ((((uintptr_t)c.src | (uintptr_t)c.dst | c.bytes) & 15u) == 0) {
		/* 16-byte loads keep many PCIe reads in flight per warp */
		const uint4 *s = (const uint4 *)c.src;
		uint4 *d = (uint4 *)c.dst;
		for (uint32_t w = lane; w < c.bytes / 16; w += 32)
			d[w] = s[w];
	} else {
		const uint16_t *s = (const uint16_t *)c.src;
		uint16_t *d = (uint16_t *)c.dst;
		for (uint32_t w = lane; w < c.bytes / 2; w += 32)
			d[w] = s[w];
	}
}

__global__ void exact_kernel(const struct sparq_cu_item *items)
{
	__shared__ float qs[SPARQ_HEAD_DIM_MAX];
	__shared__ float wacc[EXACT_WARPS][SPARQ_HEAD_DIM_MAX];
	__shared__ float wm[EXACT_WARPS], wl[EXACT_WARPS];
	const struct sparq_cu_item *it = &items[blockIdx.x];
	const uint32_t h = blockIdx.y, d = it->d, dt = it->dtype;
	const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x & 31;

	if (h >= it->g)
		return;
	const uint32_t n = it->info[0];
	/* scale q before the dot product (SPARQ.md pitfall: fp16 range) */
	const float inv = 1.0f / sqrtf((float)d);
	for (uint32_t c = threadIdx.x; c < d; c += blockDim.x)
		qs[c] = it->q[(size_t)h * d + c] * inv;
	__syncthreads();

	float m = -INFINITY, l = 0.0f, acc[LANE_CHANNELS];
#pragma unroll
	for (int t = 0; t < (int)LANE_CHANNELS; t++)
		acc[t] = 0.0f;
	for (uint32_t i = warp; i < n; i += EXACT_WARPS) {
		const uint16_t *K = (const uint16_t *)(it->rows + (size_t)i * it->rec_bytes);
		const uint16_t *V = K + d;
		float p = 0.0f;

#pragma unroll
		for (int t = 0; t < (int)LANE_CHANNELS; t++) {
			uint32_t c = lane + 32u * t;
			if (c < d)
				p += qs[c] * cu_elem(K[c], dt);
		}
		for (int o = 16; o > 0; o >>= 1)
			p += __shfl_xor_sync(0xffffffffu, p, o);
		/* online softmax: rescale what was summed so far to the new maximum */
		float mn = fmaxf(m, p), sc = expf(m - mn), e = expf(p - mn);
		l = l * sc + e;
#pragma unroll
		for (int t = 0; t < (int)LANE_CHANNELS; t++) {
			uint32_t c = lane + 32u * t;
			if (c < d)
				acc[t] = acc[t] * sc + e * cu_elem(V[c], dt);
		}
		m = mn;
	}
#pragma unroll
	for (int t = 0; t < (int)LANE_CHANNELS; t++) {
		uint32_t c = lane + 32u * t;
		if (c < d)
			wacc[warp][c] = acc[t];
	}
	if (lane == 0) {
		wm[warp] = m;
		wl[warp] = l;
	}
	__syncthreads();
	float M = -INFINITY;
	for (int w = 0; w < EXACT_WARPS; w++)
		if (wl[w] > 0.0f)
			M = fmaxf(M, wm[w]);
	const float a = it->alpha[h];
	for (uint32_t c = threadIdx.x; c < d; c += blockDim.x) {
		float num = 0.0f, den = 0.0f;
		for (int w = 0; w < EXACT_WARPS; w++) {
			if (wl[w] > 0.0f) {
				float s = expf(wm[w] - M);
				num += wacc[w][c] * s;
				den += wl[w] * s;
			}
		}
		float y = num / den;
		/* blend toward the mean for the mass the selection missed (step 7) */
		if (a < 1.0f)
			y = a * y + (1.0f - a) * it->vbar[c];
		it->y[(size_t)h * d + c] = y;
	}
}

#define EX2_THREADS 256
#define EX2_WARPS (EX2_THREADS / 32)
static_assert(SPARQ_CU_EX_ROWS_MAX <= EX2_THREADS, "one row address per thread");

/*
 * Address of selected row i: in the staged rows, in the row cache, or found in the
 * record-run table; *refill gets the cache slot this row is to be written to, or
 * UINT32_MAX.
 */
__device__ __forceinline__ const uint8_t *ex2_row(const struct sparq_cu_item *it, uint32_t i,
						  uint32_t *refill)
{
	*refill = UINT32_MAX;
	if (!it->seg_pos)
		return it->rows + (size_t)i * it->rec_bytes;
	const uint32_t j = it->sel[i];
	if (it->rc_tag) {
		const uint32_t s = j & (it->rc_slots - 1), mk = it->rc_mark[s];
		if ((mk & SPARQ_CU_RC_HIT) && it->rc_tag[s] == j + 1)
			return it->rc_data + (size_t)s * it->rec_bytes;
		if (mk == i + 1)
			*refill = s;
	}
	uint32_t lo = 0, hi = it->n_seg;  /* seg_pos[lo] <= j < seg_pos[hi] */

	while (hi - lo > 1) {
		uint32_t mid = (lo + hi) / 2;
		if (it->seg_pos[mid] <= j)
			lo = mid;
		else
			hi = mid;
	}
	return (const uint8_t *)(uintptr_t)it->seg_addr[lo] +
	       (size_t)(j - it->seg_pos[lo]) * it->rec_bytes;
}

__global__ void __launch_bounds__(EX2_THREADS)
exact2_kernel(const struct sparq_cu_item *items)
{
	__shared__ uint4 rec[SPARQ_CU_EX_BYTES / 16];
	__shared__ const uint8_t *src[SPARQ_CU_EX_ROWS_MAX];
	__shared__ uint32_t refill[SPARQ_CU_EX_ROWS_MAX];
	__shared__ float p[SPARQ_CU_EX_LOGITS]; /* [g][R] */
	const struct sparq_cu_item *it = &items[blockIdx.y];
	const uint32_t R = it->ex_rows, d = it->d, g = it->g, dt = it->dtype;
	const uint32_t rb = it->rec_bytes;
	const uint32_t n = min(it->info[0], it->sel_cap);
	const uint32_t i0 = blockIdx.x * R;
	const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x & 31;

	if (i0 >= n)
		return; /* uniform over the block */
	const uint32_t rows = min(R, n - i0);

	/* rows <= SPARQ_CU_EX_ROWS_MAX < EX2_THREADS: one address per thread at most */
	uint32_t my_refill = UINT32_MAX;
	const uint8_t *mine = threadIdx.x < rows ? ex2_row(it, i0 + threadIdx.x, &my_refill) : NULL;
	if (threadIdx.x < rows) {
		src[threadIdx.x] = mine;
		refill[threadIdx.x] = my_refill;
	}
	if (__syncthreads_and((rb & 15u) == 0 && ((uintptr_t)mine & 15u) == 0)) {
		/* 16-byte words; four loads issued before their stores keep reads in flight */
		const uint32_t wpr = rb / 16, nw = rows * wpr;
		for (uint32_t w0 = threadIdx.x; w0 < nw; w0 += 4 * blockDim.x) {
			uint4 v[4];
#pragma unroll
			for (int u = 0; u < 4; u++) {
				uint32_t w = w0 + u * blockDim.x;
				if (w < nw) {
					const uint4 *s = (const uint4 *)src[w / wpr];
					v[u] = s[w % wpr];
				}
			}
#pragma unroll
			for (int u = 0; u < 4; u++) {
				uint32_t w = w0 + u * blockDim.x;
				if (w < nw)
					rec[w] = v[u];
			}
		}
	} else {
		const uint32_t wpr = rb / 2, nw = rows * wpr;
		uint16_t *r16 = (uint16_t *)rec;
		for (uint32_t w = threadIdx.x; w < nw; w += blockDim.x)
			r16[w] = ((const uint16_t *)src[w / wpr])[w % wpr];
	}
	__syncthreads();

	if (it->rc_tag) {
		/* rows this block claimed go into the cache (rec_bytes % 16 == 0 there) */
		const uint32_t wpr = rb / 16, nw = rows * wpr;
		for (uint32_t w = threadIdx.x; w < nw; w += blockDim.x) {
			const uint32_t s = refill[w / wpr];
			if (s != UINT32_MAX)
				((uint4 *)(it->rc_data + (size_t)s * rb))[w % wpr] = rec[w];
		}
		if (threadIdx.x < rows && my_refill != UINT32_MAX)
			it->rc_tag[my_refill] = it->sel[i0 + threadIdx.x] + 1;
	}

	/* logits: one warp per (row, head), lanes over channels; q scaled first (fp16 range) */
	const float inv = 1.0f / sqrtf((float)d);
	for (uint32_t pr = warp; pr < rows * g; pr += EX2_WARPS) {
		const uint32_t i = pr / g, h = pr % g;
		const uint16_t *K = (const uint16_t *)((const uint8_t *)rec + (size_t)i * rb);
		const float *q = it->q + (size_t)h * d;
		float s = 0.0f;

		for (uint32_t c = lane; c < d; c += 32)
			s += (q[c] * inv) * cu_elem(K[c], dt);
		for (int o = 16; o > 0; o >>= 1)
			s += __shfl_xor_sync(0xffffffffu, s, o);
		if (lane == 0)
			p[h * R + i] = s;
	}
	__syncthreads();

	/* per head: this block's max and Σ exp, p turned into exp(s - max) */
	for (uint32_t h = warp; h < g; h += EX2_WARPS) {
		float m = -INFINITY;
		for (uint32_t i = lane; i < rows; i += 32)
			m = fmaxf(m, p[h * R + i]);
		for (int o = 16; o > 0; o >>= 1)
			m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
		float l = 0.0f;
		for (uint32_t i = lane; i < rows; i += 32) {
			float e = expf(p[h * R + i] - m);
			p[h * R + i] = e;
			l += e;
		}
		for (int o = 16; o > 0; o >>= 1)
			l += __shfl_xor_sync(0xffffffffu, l, o);
		if (lane == 0) {
			it->ex_ml[((size_t)blockIdx.x * g + h) * 2 + 0] = m;
			it->ex_ml[((size_t)blockIdx.x * g + h) * 2 + 1] = l;
		}
	}
	__syncthreads();

	/* Σ_i p_h,i · V_i[c], one thread per (head, channel) */
	for (uint32_t hc = threadIdx.x; hc < g * d; hc += blockDim.x) {
		const uint32_t h = hc / d, c = hc % d;
		float acc = 0.0f;

		for (uint32_t i = 0; i < rows; i++) {
			const uint16_t *V = (const uint16_t *)((const uint8_t *)rec + (size_t)i * rb) + d;
			acc += p[h * R + i] * cu_elem(V[c], dt);
		}
		it->ex_acc[((size_t)blockIdx.x * g + h) * d + c] = acc;
	}
}

/* One block per (item, head): the blocks' partials folded, then the blend with v̄. */
__global__ void exact2_merge_kernel(const struct sparq_cu_item *items)
{
	const struct sparq_cu_item *it = &items[blockIdx.x];
	const uint32_t h = blockIdx.y, d = it->d, g = it->g;

	if (h >= g)
		return;
	const uint32_t n = min(it->info[0], it->sel_cap);
	const uint32_t nb = (n + it->ex_rows - 1) / it->ex_rows;
	const float *ml = it->ex_ml;
	float M = -INFINITY;

	for (uint32_t b = 0; b < nb; b++)
		if (ml[((size_t)b * g + h) * 2 + 1] > 0.0f)
			M = fmaxf(M, ml[((size_t)b * g + h) * 2]);
	const float a = it->alpha[h];
	for (uint32_t c = threadIdx.x; c < d; c += blockDim.x) {
		float num = 0.0f, den = 0.0f;
		for (uint32_t b = 0; b < nb; b++) {
			const float l = ml[((size_t)b * g + h) * 2 + 1];
			if (l > 0.0f) {
				float s = expf(ml[((size_t)b * g + h) * 2] - M);
				num += it->ex_acc[((size_t)b * g + h) * d + c] * s;
				den += l * s;
			}
		}
		float y = num / den;
		/* blend toward the mean for the mass the selection missed (step 7) */
		if (a < 1.0f)
			y = a * y + (1.0f - a) * it->vbar[c];
		it->y[(size_t)h * d + c] = y;
	}
}

__global__ void scatter_kernel(const uint16_t *src, uint32_t n, uint32_t d, uint16_t *page,
			       uint32_t pitch, uint32_t col)
{
	const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;  /* position */
	const uint32_t c = blockIdx.y * blockDim.y + threadIdx.y;  /* channel */

	if (i < n && c < d)
		page[(size_t)c * pitch + col + i] = src[(size_t)i * d + c];
}

extern "C" cudaError_t sparq_cu_launch_gather(cudaStream_t st, const struct sparq_cu_copy *copies,
					      uint32_t n)
{
	const uint32_t per_block = 256 / 32;

	if (n == 0)
		return cudaSuccess;
	if (!copies)
		return cudaErrorInvalidValue;
	gather_kernel<<<(n + per_block - 1) / per_block, 256, 0, st>>>(copies, n);
	return cudaGetLastError();
}

extern "C" cudaError_t sparq_cu_launch_exact(cudaStream_t st, const struct sparq_cu_item *items,
					     uint32_t n_items, uint32_t g_max, uint32_t d_max)
{
	if (!items || n_items == 0 || g_max == 0 || g_max > SPARQ_GROUP_MAX || d_max == 0 ||
	    d_max > SPARQ_HEAD_DIM_MAX)
		return cudaErrorInvalidValue;
	exact_kernel<<<dim3(n_items, g_max), EXACT_WARPS * 32, 0, st>>>(items);
	return cudaGetLastError();
}

#define RC_THREADS 256

/* pass 0: mark the slots selected rows hit, count the hits; pass 1: misses claim. */
__global__ void rc_probe_kernel(const struct sparq_cu_item *items, int pass)
{
	const struct sparq_cu_item *it = &items[blockIdx.y];

	if (!it->rc_tag)
		return; /* uniform over the block */
	const uint32_t n = min(it->info[0], it->sel_cap);
	const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;
	bool hit = false;

	if (i < n) {
		const uint32_t j = it->sel[i], s = j & (it->rc_slots - 1);
		hit = it->rc_tag[s] == j + 1;
		if (pass == 0 && hit)
			atomicOr(&it->rc_mark[s], SPARQ_CU_RC_HIT);
		if (pass == 1 && !hit)
			atomicCAS(&it->rc_mark[s], 0u, i + 1);
	}
	if (pass == 0) {
		/* one atomic per block, not per row */
		const int hits = __syncthreads_count(hit);
		if (threadIdx.x == 0 && hits)
			atomicAdd(&it->info[2], (uint32_t)hits);
	}
}

extern "C" cudaError_t sparq_cu_launch_rc_probe(cudaStream_t st, const struct sparq_cu_item *items,
						uint32_t n_items, uint32_t rows_max)
{
	cudaError_t e;

	if (!items || n_items == 0 || n_items > 65535)
		return cudaErrorInvalidValue;
	if (rows_max == 0)
		return cudaSuccess;
	const dim3 grid((rows_max + RC_THREADS - 1) / RC_THREADS, n_items);
	for (int pass = 0; pass < 2; pass++) {
		rc_probe_kernel<<<grid, RC_THREADS, 0, st>>>(items, pass);
		if ((e = cudaGetLastError()) != cudaSuccess)
			return e;
	}
	return cudaSuccess;
}

extern "C" cudaError_t sparq_cu_launch_exact2(cudaStream_t st, const struct sparq_cu_item *items,
					      uint32_t n_items, uint32_t ex_chunks_max, uint32_t g_max)
{
	cudaError_t e;

	if (!items || n_items == 0 || n_items > 65535 || g_max == 0 || g_max > SPARQ_GROUP_MAX)
		return cudaErrorInvalidValue;
	if (ex_chunks_max == 0)
		return cudaSuccess; /* select mode or nothing selected */
	exact2_kernel<<<dim3(ex_chunks_max, n_items), EX2_THREADS, 0, st>>>(items);
	if ((e = cudaGetLastError()) != cudaSuccess)
		return e;
	exact2_merge_kernel<<<dim3(n_items, g_max), 128, 0, st>>>(items);
	return cudaGetLastError();
}

extern "C" cudaError_t sparq_cu_launch_scatter(cudaStream_t st, const uint16_t *src, uint32_t n,
					       uint32_t d, uint16_t *page, uint32_t pitch,
					       uint32_t col)
{
	if (!src || !page || n == 0 || d == 0 || col + n > pitch)
		return cudaErrorInvalidValue;
	dim3 block(32, 8);
	dim3 grid((n + 31) / 32, (d + 7) / 8);
	scatter_kernel<<<grid, block, 0, st>>>(src, n, d, page, pitch, col);
	return cudaGetLastError();
}
