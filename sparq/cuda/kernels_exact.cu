/*
 * kernels_exact.cu — moving rows and SPARQ.md steps 6-7:
 *   gather:  one warp per selected record, read straight from host memory the GPU
 *            mapped once (zero-copy) into the device rows buffer — never one copy
 *            call per row (DESIGN.md §7: 0.09 GB/s that way, 50 GB/s by kernel);
 *   exact:   one block per (item, query head): each warp runs an fp32 online
 *            softmax over its share of the selected rows, the warps' partial sums
 *            are merged, and the result is blended with v̄ where α_h < 1;
 *   scatter: a key append, rows [n][d] written as columns of a channel-major page.
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
