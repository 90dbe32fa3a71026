/*
 * kernels_score.cu — SPARQ.md steps 1-3 and the softmax statistics of step 5, for
 * every item of a call in one launch per phase:
 *   comp:    i1 = the r largest Σ_h |q_h,i| (ties to the lower channel), τ_h, and
 *            qc_h = q_h[i1] / τ_h — one block per item;
 *   score:   z_h[j] = qc_h · K[i1][j] in fp32 over the channel-major slice, their
 *            group sum, -inf where masked, and per tile the max and Σ exp of each
 *            head's logits — one block per tile of SPARQ_CU_TILE positions;
 *   softmax: the tiles' partials folded into max_h and Σ_j exp(z_h,j - max_h).
 * The arithmetic follows the CPU backend's order (heads summed 0..g-1, channels in
 * ascending order) so both backends round alike. An int8 slice (quant.h) is scored the
 * same way on q_jc, each head's sum then multiplied once by the position's scale s_j,
 * as the CPU's int8 kernels do; its appends come through scatter_i8 below.
 */
#include <math.h>

#include "cu-common.cuh"

#define COMP_THREADS 256
#define HEAD_CHUNK 8   /* heads accumulated at once per position: registers, not memory */

__global__ void comp_kernel(const struct sparq_cu_item *items)
{
	__shared__ float score[SPARQ_HEAD_DIM_MAX];
	__shared__ uint8_t chosen[SPARQ_HEAD_DIM_MAX];
	__shared__ uint32_t comp[SPARQ_HEAD_DIM_MAX];
	const struct sparq_cu_item *it = &items[blockIdx.x];
	const uint32_t d = it->d, g = it->g, r = it->r;
	const float *q = it->q;

	if (it->dense)
		return; /* no scoring: the whole block leaves together */
	for (uint32_t i = threadIdx.x; i < d; i += blockDim.x) {
		float s = 0.0f;
		for (uint32_t h = 0; h < g; h++)
			s += fabsf(q[h * d + i]);
		score[i] = s;
	}
	__syncthreads();
	/* rank of channel i: how many beat it (larger, or equal and lower) — O(d²) with
	 * d <= 1024 is nothing next to S, and obviously right */
	for (uint32_t i = threadIdx.x; i < d; i += blockDim.x) {
		float si = score[i];
		uint32_t rank = 0;
		for (uint32_t j = 0; j < d; j++)
			rank += score[j] > si || (score[j] == si && j < i);
		chosen[i] = rank < r;
	}
	__syncthreads();
	if (threadIdx.x == 0) {
		uint32_t n = 0;
		for (uint32_t i = 0; i < d; i++)
			if (chosen[i])
				comp[n++] = i;
	}
	__syncthreads();
	for (uint32_t t = threadIdx.x; t < r; t += blockDim.x)
		it->comp[t] = comp[t];
	for (uint32_t h = threadIdx.x; h < g; h += blockDim.x) {
		const float *qh = q + (size_t)h * d;
		double all = 0.0, kept = 0.0;

		for (uint32_t i = 0; i < d; i++)
			all += fabsf(qh[i]);
		for (uint32_t t = 0; t < r; t++)
			kept += fabsf(qh[comp[t]]);
		/* a head with nothing kept has all-zero logits whatever τ is (reference.h) */
		float tau = kept > 0.0 ? (float)sqrt((double)d * kept / all) : sqrtf((float)d);
		for (uint32_t t = 0; t < r; t++)
			it->qc[h * r + t] = qh[comp[t]] / tau;
	}
}

__global__ void score_kernel(const struct sparq_cu_item *items, const struct sparq_cu_tile *tiles)
{
	__shared__ uint32_t comp[SPARQ_HEAD_DIM_MAX];
	__shared__ float red[32];
	const struct sparq_cu_tile tl = tiles[blockIdx.x];
	const struct sparq_cu_item *it = &items[tl.item];
	const uint32_t S = it->S, g = it->g, r = it->r, dt = it->dtype;
	const uint32_t j = tl.pos + threadIdx.x;
	const bool valid = j < S;
	const bool vis = valid && !cu_masked(it->mask, j);
	const uint16_t *kcol = tl.kt ? tl.kt + tl.col + threadIdx.x : NULL;
	const int8_t *qcol = tl.q8 ? tl.q8 + tl.col + threadIdx.x : NULL;
	/* int8: the position's scale, applied once per head after the channel sum */
	const float s_j = qcol && valid ? tl.scale[tl.col + threadIdx.x] : 1.0f;
	const float *qc = it->qc;
	float zs = 0.0f;
	bool bad = false;

	for (uint32_t t = threadIdx.x; t < r; t += blockDim.x)
		comp[t] = it->comp[t];
	__syncthreads();
	for (uint32_t h0 = 0; h0 < g; h0 += HEAD_CHUNK) {
		const uint32_t hn = g - h0 < HEAD_CHUNK ? g - h0 : HEAD_CHUNK;
		float acc[HEAD_CHUNK];

#pragma unroll
		for (int hh = 0; hh < HEAD_CHUNK; hh++)
			acc[hh] = 0.0f;
		if (vis) {
			for (uint32_t t = 0; t < r; t++) {
				/* channel-major: the block reads one contiguous run per channel */
				float kv = qcol ? (float)qcol[(size_t)comp[t] * tl.pitch]
						: cu_elem(kcol[(size_t)comp[t] * tl.pitch], dt);
#pragma unroll
				for (uint32_t hh = 0; hh < HEAD_CHUNK; hh++)
					if (hh < hn)
						acc[hh] += qc[(h0 + hh) * r + t] * kv;
			}
		}
		for (uint32_t hh = 0; hh < hn; hh++) {
			const uint32_t h = h0 + hh;
			float zh = qcol ? acc[hh] * s_j : acc[hh];

			zs += zh;
			bad |= vis && !isfinite(zh);
			if (!it->per_head)
				continue;
			if (valid)
				it->z[(size_t)h * S + j] = vis ? zh : -INFINITY;
			/* this tile's share of head h's softmax: its max and Σ exp(z - max) */
			float m = cu_block_max(vis ? zh : -INFINITY, red);
			float e = (vis && m > -INFINITY) ? expf(zh - m) : 0.0f;
			float s = cu_block_sum(e, red);
			if (threadIdx.x == 0) {
				it->part[((size_t)tl.t * g + h) * 2 + 0] = m;
				it->part[((size_t)tl.t * g + h) * 2 + 1] = s;
			}
		}
	}
	if (valid)
		it->zsum[j] = vis ? zs : -INFINITY;
	bad |= vis && !isfinite(zs);
	if (bad)
		atomicOr(&it->info[1], SPARQ_CU_OVERFLOW);
}

__global__ void softmax_kernel(const struct sparq_cu_item *items)
{
	__shared__ float redf[32];
	__shared__ double redd[32];
	const struct sparq_cu_item *it = &items[blockIdx.x];
	const uint32_t g = it->g, nt = it->n_tiles;

	if (it->dense || !it->per_head)
		return;
	for (uint32_t h = 0; h < g; h++) {
		float m = -INFINITY;
		for (uint32_t t = threadIdx.x; t < nt; t += blockDim.x)
			m = fmaxf(m, it->part[((size_t)t * g + h) * 2]);
		m = cu_block_max(m, redf);
		double s = 0.0;
		for (uint32_t t = threadIdx.x; t < nt; t += blockDim.x) {
			float tm = it->part[((size_t)t * g + h) * 2];
			if (tm > -INFINITY)
				s += (double)it->part[((size_t)t * g + h) * 2 + 1] *
				     exp((double)tm - (double)m);
		}
		s = cu_block_sum(s, redd);
		if (threadIdx.x == 0) {
			it->zmax[h] = m;
			it->zden[h] = s;
		}
	}
}

/* page_scale: the page's scales (sparq_cu_page_scale_offset, computed by the launcher) */
__global__ void scatter_i8_kernel(const int8_t *q, const float *scale, uint32_t n, uint32_t d,
				  int8_t *page, float *page_scale, uint32_t pitch, uint32_t col)
{
	const uint32_t i = blockIdx.x * blockDim.x + threadIdx.x;  /* position */
	const uint32_t c = blockIdx.y * blockDim.y + threadIdx.y;  /* channel */

	if (i < n && c < d)
		page[(size_t)c * pitch + col + i] = q[(size_t)i * d + c];
	if (i < n && c == 0)
		page_scale[col + i] = scale[i];
}

extern "C" cudaError_t sparq_cu_launch_scatter_i8(cudaStream_t st, const int8_t *q,
						  const float *scale, uint32_t n, uint32_t d,
						  int8_t *page, uint32_t pitch, uint32_t col)
{
	if (!q || !scale || !page || n == 0 || d == 0 || col + n > pitch)
		return cudaErrorInvalidValue;
	dim3 block(32, 8);
	dim3 grid((n + 31) / 32, (d + 7) / 8);
	float *page_scale = (float *)(page + sparq_cu_page_scale_offset(d, pitch));
	scatter_i8_kernel<<<grid, block, 0, st>>>(q, scale, n, d, page, page_scale, pitch, col);
	return cudaGetLastError();
}

extern "C" cudaError_t sparq_cu_launch_comp(cudaStream_t st, const struct sparq_cu_item *items,
					    uint32_t n_items)
{
	if (!items || n_items == 0)
		return cudaErrorInvalidValue;
	comp_kernel<<<n_items, COMP_THREADS, 0, st>>>(items);
	return cudaGetLastError();
}

extern "C" cudaError_t sparq_cu_launch_score(cudaStream_t st, const struct sparq_cu_item *items,
					     const struct sparq_cu_tile *tiles, uint32_t n_tiles,
					     uint32_t g_max)
{
	if (!items || !tiles || g_max == 0 || g_max > SPARQ_GROUP_MAX)
		return cudaErrorInvalidValue;
	if (n_tiles == 0)
		return cudaSuccess; /* every item dense */
	score_kernel<<<n_tiles, SPARQ_CU_TILE, 0, st>>>(items, tiles);
	return cudaGetLastError();
}

extern "C" cudaError_t sparq_cu_launch_softmax(cudaStream_t st, const struct sparq_cu_item *items,
					       uint32_t n_items)
{
	if (!items || n_items == 0)
		return cudaErrorInvalidValue;
	softmax_kernel<<<n_items, 256, 0, st>>>(items);
	return cudaGetLastError();
}
