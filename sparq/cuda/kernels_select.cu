/*
 * kernels_select.cu — SPARQ.md steps 4-5 on the GPU, one block per item:
 *   select: the m largest group-summed logits among the visible positions before
 *           the local window, by a radix select over the order-preserving bits of
 *           the fp32 logits (four 8-bit passes find the exact m-th largest key T and
 *           how many keys equal to T still fit), then one ordered compaction pass
 *           taking every key above T and the lowest positions equal to T — exactly
 *           "ties go to the lower position" — and the window appended as an explicit
 *           union; dense items take every visible position;
 *   alpha:  α_h = Σ_{j∈sel} exp(z_h,j - max_h) / Σ_visible, 1 when not blended.
 * Output positions come out ascending without any sort.
 */
#include <math.h>

#include "cu-common.cuh"

#define SELECT_THREADS 1024

/*
 * Appends, in position order, every j in [lo, hi) for which take(j) holds to sel at
 * *n_out (uniform across the block); take sees the block-exclusive count of earlier
 * "equal" candidates through eq_before so ties can be rationed in position order.
 */
struct select_state {
	const struct sparq_cu_item *it;
	uint32_t T, ties;   /* threshold key, keys equal to T still to take */
	bool by_score;      /* false: every visible position */
};

__device__ static void compact(const struct select_state *ss, uint32_t lo, uint32_t hi,
			       uint32_t *n_out, uint32_t *scan_scratch)
{
	const struct sparq_cu_item *it = ss->it;
	uint32_t eq_seen = 0;

	for (uint32_t base = lo; base < hi; base += blockDim.x) {
		uint32_t j = base + threadIdx.x, total;
		bool vis = j < hi && !cu_masked(it->mask, j);
		uint32_t key = vis && ss->by_score ? cu_sort_key(it->zsum[j]) : 0;
		bool gt = vis && (!ss->by_score || key > ss->T);
		bool eq = vis && ss->by_score && key == ss->T;
		uint32_t eq_rank = eq_seen + cu_block_scan(eq, scan_scratch, &total);

		eq_seen += total;
		bool take = gt || (eq && eq_rank < ss->ties);
		uint32_t idx = *n_out + cu_block_scan(take, scan_scratch, &total);
		if (take && idx < it->sel_cap)
			it->sel[idx] = j;
		*n_out += total;
	}
}

__global__ void select_kernel(const struct sparq_cu_item *items)
{
	__shared__ uint32_t hist[256];
	__shared__ uint32_t scan_scratch[32];
	__shared__ uint32_t s_digit, s_rem;
	const struct sparq_cu_item *it = &items[blockIdx.x];
	struct select_state ss = { it, 0, 0, true };
	uint32_t n_out = 0;

	if (it->dense) {
		ss.by_score = false;
		compact(&ss, 0, it->S, &n_out, scan_scratch);
		goto done;
	}
	if (it->m > 0) {
		uint32_t prefix = 0, pmask = 0;

		if (threadIdx.x == 0)
			s_rem = it->m;
		for (int pass = 0; pass < 4; pass++) {
			const int shift = 24 - 8 * pass;

			for (uint32_t b = threadIdx.x; b < 256; b += blockDim.x)
				hist[b] = 0;
			__syncthreads();
			for (uint32_t j = threadIdx.x; j < it->w_start; j += blockDim.x) {
				if (cu_masked(it->mask, j))
					continue;
				uint32_t key = cu_sort_key(it->zsum[j]);
				if ((key & pmask) == prefix)
					atomicAdd(&hist[(key >> shift) & 255u], 1u);
			}
			__syncthreads();
			if (threadIdx.x == 0) {
				/* the digit holding the rem-th largest of what is left; the
				 * keys in higher digits are all taken */
				uint32_t rem = s_rem, digit = 0;
				for (int b = 255; b >= 0; b--) {
					if (hist[b] >= rem) {
						digit = (uint32_t)b;
						break;
					}
					rem -= hist[b];
				}
				s_digit = digit;
				s_rem = rem;
			}
			__syncthreads();
			prefix |= s_digit << shift;
			pmask |= 255u << shift;
		}
		ss.T = prefix;
		ss.ties = s_rem;
		compact(&ss, 0, it->w_start, &n_out, scan_scratch);
	}
	/* the local window: every visible position from w_start on */
	ss.by_score = false;
	compact(&ss, it->w_start, it->S, &n_out, scan_scratch);
done:
	if (threadIdx.x == 0)
		it->info[0] = n_out;
}

__global__ void alpha_kernel(const struct sparq_cu_item *items)
{
	__shared__ double red[32];
	const struct sparq_cu_item *it = &items[blockIdx.x];
	const uint32_t g = it->g, S = it->S;

	if (it->dense || !it->per_head) {
		/* exactly 1: the dense case and blend off have no v̄ term at all */
		for (uint32_t h = threadIdx.x; h < g; h += blockDim.x)
			it->alpha[h] = 1.0f;
		return;
	}
	const uint32_t n = it->info[0];
	for (uint32_t h = 0; h < g; h++) {
		const float *zh = it->z + (size_t)h * S;
		const float m = it->zmax[h];
		double s = 0.0;

		for (uint32_t i = threadIdx.x; i < n; i += blockDim.x)
			s += expf(zh[it->sel[i]] - m);
		s = cu_block_sum(s, red);
		if (threadIdx.x == 0) {
			double a = s / it->zden[h];
			it->alpha[h] = (float)(a > 1.0 ? 1.0 : a);
		}
	}
}

extern "C" cudaError_t sparq_cu_launch_select(cudaStream_t st, const struct sparq_cu_item *items,
					      uint32_t n_items)
{
	if (!items || n_items == 0)
		return cudaErrorInvalidValue;
	select_kernel<<<n_items, SELECT_THREADS, 0, st>>>(items);
	return cudaGetLastError();
}

extern "C" cudaError_t sparq_cu_launch_alpha(cudaStream_t st, const struct sparq_cu_item *items,
					     uint32_t n_items)
{
	if (!items || n_items == 0)
		return cudaErrorInvalidValue;
	alpha_kernel<<<n_items, 256, 0, st>>>(items);
	return cudaGetLastError();
}
