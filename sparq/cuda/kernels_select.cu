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
 *
 * v2 (select2) computes the same set over many blocks per item, so that a call with
 * a few long items fills the GPU: four histogram passes over chunks of
 * SPARQ_CU_SEL_CHUNK positions (shared-memory histograms added into the item's
 * global one), each followed by a one-thread pick of the digit; then per chunk a
 * count of the rows surely taken and of the keys equal to T, a per-item scan of those
 * counts (which of the ties each chunk may take, where its rows go), and the ordered
 * compaction of each chunk at its offset. v1 stays reachable (SPARQ_CUDA_KERNELS=v1).
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

#define SEL2_THREADS 256

/* Where the v2 kernels take rows by score (before take_from) and all visible ones. */
__device__ __forceinline__ bool sel2_by_score(const struct sparq_cu_item *it)
{
	return !it->dense && it->m > 0;
}

__device__ __forceinline__ uint32_t sel2_take_from(const struct sparq_cu_item *it)
{
	return it->dense ? 0u : it->w_start;
}

/* Pass `pass`: this chunk's keys that match the prefix so far, by their next digit. */
__global__ void sel2_hist_kernel(const struct sparq_cu_item *items, int pass)
{
	__shared__ uint32_t hist[256];
	const struct sparq_cu_item *it = &items[blockIdx.y];
	const uint32_t lo = blockIdx.x * SPARQ_CU_SEL_CHUNK;

	if (!sel2_by_score(it) || lo >= it->w_start)
		return; /* uniform over the block */
	const uint32_t hi = min(lo + SPARQ_CU_SEL_CHUNK, it->w_start);
	const uint32_t prefix = it->sel_state[0], pmask = it->sel_state[1];
	const int shift = 24 - 8 * pass;

	for (uint32_t b = threadIdx.x; b < 256; b += blockDim.x)
		hist[b] = 0;
	__syncthreads();
	for (uint32_t j = lo + threadIdx.x; j < hi; j += blockDim.x) {
		if (cu_masked(it->mask, j))
			continue;
		uint32_t key = cu_sort_key(it->zsum[j]);
		if ((key & pmask) == prefix)
			atomicAdd(&hist[(key >> shift) & 255u], 1u);
	}
	__syncthreads();
	for (uint32_t b = threadIdx.x; b < 256; b += blockDim.x)
		if (hist[b])
			atomicAdd(&it->sel_hist[pass * 256 + b], hist[b]);
}

/* The digit holding the rem-th largest remaining key, as select_kernel picks it. */
__global__ void sel2_pick_kernel(const struct sparq_cu_item *items, int pass)
{
	const struct sparq_cu_item *it = &items[blockIdx.x];

	if (threadIdx.x != 0 || !sel2_by_score(it))
		return;
	const uint32_t *hist = it->sel_hist + pass * 256;
	const int shift = 24 - 8 * pass;
	uint32_t rem = pass == 0 ? it->m : it->sel_state[2], digit = 0;

	for (int b = 255; b >= 0; b--) {
		if (hist[b] >= rem) {
			digit = (uint32_t)b;
			break;
		}
		rem -= hist[b];
	}
	it->sel_state[0] |= digit << shift;
	it->sel_state[1] |= 255u << shift;
	it->sel_state[2] = rem;
}

/* One position's verdict: taken whatever the ties (sure), or a tie with the threshold. */
__device__ __forceinline__ void sel2_classify(const struct sparq_cu_item *it, uint32_t j,
					      uint32_t hi, bool by_score, uint32_t T, bool *sure,
					      bool *eq)
{
	const bool vis = j < hi && !cu_masked(it->mask, j);

	*sure = false;
	*eq = false;
	if (!vis)
		return;
	if (j >= sel2_take_from(it)) {
		*sure = true;
	} else if (by_score) {
		uint32_t key = cu_sort_key(it->zsum[j]);
		*sure = key > T;
		*eq = key == T;
	}
}

__global__ void sel2_count_kernel(const struct sparq_cu_item *items)
{
	__shared__ uint32_t red[32];
	const struct sparq_cu_item *it = &items[blockIdx.y];
	const uint32_t lo = blockIdx.x * SPARQ_CU_SEL_CHUNK;

	if (blockIdx.x >= it->n_sel_chunks)
		return;
	const uint32_t hi = min(lo + SPARQ_CU_SEL_CHUNK, it->S);
	const bool by_score = sel2_by_score(it);
	const uint32_t T = it->sel_state[0];
	uint32_t n_sure = 0, n_eq = 0;

	for (uint32_t j = lo + threadIdx.x; j < hi; j += blockDim.x) {
		bool sure, eq;
		sel2_classify(it, j, hi, by_score, T, &sure, &eq);
		n_sure += sure;
		n_eq += eq;
	}
	n_sure = cu_block_sum(n_sure, red);
	n_eq = cu_block_sum(n_eq, red);
	if (threadIdx.x == 0) {
		it->sel_cnt[blockIdx.x * 2 + 0] = n_sure;
		it->sel_cnt[blockIdx.x * 2 + 1] = n_eq;
	}
}

/* Per item, in chunk order: ties seen before each chunk and where its rows start. */
__global__ void sel2_scan_kernel(const struct sparq_cu_item *items)
{
	__shared__ uint32_t scratch[32];
	const struct sparq_cu_item *it = &items[blockIdx.x];
	const uint32_t nch = it->n_sel_chunks;
	const uint32_t ties = sel2_by_score(it) ? it->sel_state[2] : 0u;
	uint32_t eq_carry = 0, off_carry = 0;

	for (uint32_t base = 0; base < nch; base += blockDim.x) {
		const uint32_t c = base + threadIdx.x;
		const uint32_t sure = c < nch ? it->sel_cnt[c * 2 + 0] : 0u;
		const uint32_t eq = c < nch ? it->sel_cnt[c * 2 + 1] : 0u;
		uint32_t total;
		const uint32_t eq_before = eq_carry + cu_block_scan(eq, scratch, &total);

		eq_carry += total;
		const uint32_t left = ties > eq_before ? ties - eq_before : 0u;
		const uint32_t take = sure + (eq < left ? eq : left);
		const uint32_t off = off_carry + cu_block_scan(take, scratch, &total);

		off_carry += total;
		if (c < nch) {
			it->sel_off[c * 2 + 0] = off;
			it->sel_off[c * 2 + 1] = eq_before;
		}
	}
	if (threadIdx.x == 0)
		it->info[0] = off_carry;
}

/* Each chunk's rows in position order at its offset: the rule of compact(). */
__global__ void sel2_write_kernel(const struct sparq_cu_item *items)
{
	__shared__ uint32_t scratch[32];
	const struct sparq_cu_item *it = &items[blockIdx.y];
	const uint32_t lo = blockIdx.x * SPARQ_CU_SEL_CHUNK;

	if (blockIdx.x >= it->n_sel_chunks)
		return;
	const uint32_t hi = min(lo + SPARQ_CU_SEL_CHUNK, it->S);
	const bool by_score = sel2_by_score(it);
	const uint32_t T = it->sel_state[0], ties = by_score ? it->sel_state[2] : 0u;
	uint32_t n_out = it->sel_off[blockIdx.x * 2 + 0];
	uint32_t eq_seen = it->sel_off[blockIdx.x * 2 + 1];

	for (uint32_t base = lo; base < hi; base += blockDim.x) {
		const uint32_t j = base + threadIdx.x;
		bool sure, eq;
		uint32_t total;

		sel2_classify(it, j, hi, by_score, T, &sure, &eq);
		const uint32_t eq_rank = eq_seen + cu_block_scan(eq, scratch, &total);
		eq_seen += total;
		const bool take = sure || (eq && eq_rank < ties);
		const uint32_t idx = n_out + cu_block_scan(take, scratch, &total);
		if (take && idx < it->sel_cap)
			it->sel[idx] = j;
		n_out += total;
	}
}

extern "C" cudaError_t sparq_cu_launch_select2(cudaStream_t st, const struct sparq_cu_item *items,
					       uint32_t n_items, uint32_t sel_chunks_max)
{
	cudaError_t e;

	if (!items || n_items == 0 || sel_chunks_max == 0 || n_items > 65535)
		return cudaErrorInvalidValue;
	const dim3 grid(sel_chunks_max, n_items);
	for (int pass = 0; pass < 4; pass++) {
		sel2_hist_kernel<<<grid, SEL2_THREADS, 0, st>>>(items, pass);
		if ((e = cudaGetLastError()) != cudaSuccess)
			return e;
		sel2_pick_kernel<<<n_items, 32, 0, st>>>(items, pass);
		if ((e = cudaGetLastError()) != cudaSuccess)
			return e;
	}
	sel2_count_kernel<<<grid, SEL2_THREADS, 0, st>>>(items);
	if ((e = cudaGetLastError()) != cudaSuccess)
		return e;
	sel2_scan_kernel<<<n_items, SEL2_THREADS, 0, st>>>(items);
	if ((e = cudaGetLastError()) != cudaSuccess)
		return e;
	sel2_write_kernel<<<grid, SEL2_THREADS, 0, st>>>(items);
	return cudaGetLastError();
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
