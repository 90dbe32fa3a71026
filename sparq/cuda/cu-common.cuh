/*
 * cu-common.cuh — device helpers the kernels share: storage element conversion,
 * the order-preserving key of an fp32 score, mask lookup, and block reductions and
 * scans built from warp shuffles (every thread of the block must call them).
 */
#ifndef SPARQ_CU_COMMON_CUH
#define SPARQ_CU_COMMON_CUH

#include <stdint.h>

#include <cuda_fp16.h>

#include "../sparq.h"
#include "cuda-impl.h"

__device__ __forceinline__ float cu_elem(uint16_t x, uint32_t dtype)
{
	return dtype == SPARQ_DTYPE_F16 ? __half2float(__ushort_as_half(x))
					: __uint_as_float((uint32_t)x << 16);
}

__device__ __forceinline__ bool cu_masked(const uint64_t *mask, uint32_t j)
{
	return mask && ((mask[j >> 6] >> (j & 63)) & 1u);
}

/* Larger float, larger key; -0 folds into +0 so the two zeros tie, as they compare. */
__device__ __forceinline__ uint32_t cu_sort_key(float f)
{
	uint32_t u = __float_as_uint(f == 0.0f ? 0.0f : f);

	return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* Block-wide reductions; scratch holds 32 entries; the result reaches every thread. */
__device__ __forceinline__ float cu_block_max(float v, float *scratch)
{
	for (int o = 16; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	__syncthreads(); /* scratch may still be read by a previous call */
	if ((threadIdx.x & 31) == 0)
		scratch[threadIdx.x >> 5] = v;
	__syncthreads();
	v = scratch[0];
	for (unsigned w = 1; w < (blockDim.x + 31) / 32; w++)
		v = fmaxf(v, scratch[w]);
	return v;
}

template <typename T>
__device__ __forceinline__ T cu_block_sum(T v, T *scratch)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	__syncthreads();
	if ((threadIdx.x & 31) == 0)
		scratch[threadIdx.x >> 5] = v;
	__syncthreads();
	/* the warps' sums in warp order: the same result in every thread */
	v = scratch[0];
	for (unsigned w = 1; w < (blockDim.x + 31) / 32; w++)
		v += scratch[w];
	return v;
}

/*
 * Exclusive prefix sum of flag over the block in thread order; *total gets the sum.
 * scratch holds 32 entries. blockDim.x must be a multiple of 32.
 */
__device__ __forceinline__ uint32_t cu_block_scan(uint32_t flag, uint32_t *scratch,
						  uint32_t *total)
{
	unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
	uint32_t v = flag;

	for (int o = 1; o < 32; o <<= 1) {
		uint32_t t = __shfl_up_sync(0xffffffffu, v, o);
		if (lane >= (unsigned)o)
			v += t;
	}
	__syncthreads();
	if (lane == 31)
		scratch[warp] = v;
	__syncthreads();
	uint32_t before = 0, all = 0;
	for (unsigned w = 0; w < nw; w++) {
		if (w < warp)
			before += scratch[w];
		all += scratch[w];
	}
	*total = all;
	return before + v - flag;
}

#define CU_CHECK_LAUNCH() cudaGetLastError()

#endif
