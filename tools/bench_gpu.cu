/*
 * bench_gpu.cu — the GPU side of `sparq-bench gpu` (see bench_gpu.h): hardware
 * ceilings and the dense baselines, kept deliberately plain so that a reader can
 * check them by eye. They are baselines, not the product: the dense kernel is
 * validated against the CPU backend's dense result before anything is timed, and
 * sparq-bench prints its achieved bandwidth next to the HBM ceiling, so a slow
 * baseline shows itself rather than flattering SparQ.
 *
 * Dense kernel (flash-decoding structure): grid (n_split, n_items), each block takes
 * one contiguous range of positions of one KV head for all g query heads of its
 * group; each warp walks tiles of 32 positions with an online softmax — logits with
 * one position per lane (a whole K row per lane, 16 B loads), then the value update
 * with d/32 channels per lane (coalesced V rows) — the block's warps are merged in
 * shared memory, and a second kernel merges the splits. All arithmetic is fp32.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "bench_gpu.h"

#define DENSE_THREADS 128
#define DENSE_WARPS (DENSE_THREADS / 32)
#define WARMUP 1u
#define FULL_MASK 0xffffffffu

struct bench_gpu {
	cudaStream_t compute, copy;
	cudaEvent_t ev[6];   /* start, stop, ready[2], free[2] */
	int sm_count;
	char err[256];
};

struct bench_gpu_dense {
	struct bench_gpu *g;
	struct bench_gpu_dense_shape sh;
	uint32_t chunk;           /* positions per split */
	float *q;                 /* [n_items][g][d] */
	float *pm, *pl;           /* [n_items][n_split][g] partial max, denominator */
	float *pacc;              /* [n_items][n_split][g][d] partial numerators */
	float *y;                 /* [n_items][g][d] */
};

enum { EV_START, EV_STOP, EV_READY0, EV_READY1, EV_FREE0, EV_FREE1 };

/* Records the failing call; -ENOMEM for allocation failures, -EIO otherwise. */
static int fail(struct bench_gpu *g, const char *call, cudaError_t e)
{
	snprintf(g->err, sizeof(g->err), "%s: %s (%s)", call, cudaGetErrorString(e),
		 cudaGetErrorName(e));
	return e == cudaErrorMemoryAllocation ? -ENOMEM : -EIO;
}

static int fail_msg(struct bench_gpu *g, const char *msg)
{
	snprintf(g->err, sizeof(g->err), "%s", msg);
	return -EINVAL;
}

#define CK(call)                                         \
	do {                                             \
		cudaError_t e_ = (call);                 \
		if (e_ != cudaSuccess) {                 \
			ret = fail(g, #call, e_);        \
			goto out;                        \
		}                                        \
	} while (0)

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double median(double *v, uint32_t n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* ---- context ---- */

extern "C" int bench_gpu_open(struct bench_gpu **out, struct bench_gpu_info *info, char *why,
			      size_t why_len)
{
	struct bench_gpu *g = (struct bench_gpu *)calloc(1, sizeof(*g));
	cudaDeviceProp prop;
	int n = 0, ret = 0;
	cudaError_t e;

	*out = NULL;
	if (!g) {
		snprintf(why, why_len, "out of memory");
		return -ENOMEM;
	}
	e = cudaGetDeviceCount(&n);
	if (e != cudaSuccess || n == 0) {
		snprintf(why, why_len, "no CUDA device: %s",
			 e != cudaSuccess ? cudaGetErrorString(e) : "0 devices");
		free(g);
		return -ENODEV;
	}
	CK(cudaSetDevice(0));
	CK(cudaGetDeviceProperties(&prop, 0));
	CK(cudaStreamCreateWithFlags(&g->compute, cudaStreamNonBlocking));
	CK(cudaStreamCreateWithFlags(&g->copy, cudaStreamNonBlocking));
	for (int i = 0; i < 6; i++)
		CK(cudaEventCreate(&g->ev[i]));
	g->sm_count = prop.multiProcessorCount;
	memset(info, 0, sizeof(*info));
	snprintf(info->name, sizeof(info->name), "%s", prop.name);
	info->cc_major = prop.major;
	info->cc_minor = prop.minor;
	info->sm_count = prop.multiProcessorCount;
	info->total_mem = prop.totalGlobalMem;
	info->l2_bytes = (uint64_t)prop.l2CacheSize;
	*out = g;
	return 0;
out:
	snprintf(why, why_len, "%s", g->err);
	bench_gpu_close(g);
	return ret;
}

extern "C" void bench_gpu_close(struct bench_gpu *g)
{
	if (!g)
		return;
	/* teardown errors are not actionable: the process is about to report or exit */
	for (int i = 0; i < 6; i++)
		if (g->ev[i])
			(void)cudaEventDestroy(g->ev[i]);
	if (g->compute)
		(void)cudaStreamDestroy(g->compute);
	if (g->copy)
		(void)cudaStreamDestroy(g->copy);
	free(g);
}

extern "C" const char *bench_gpu_error(const struct bench_gpu *g)
{
	return g->err;
}

extern "C" int bench_gpu_mem_info(struct bench_gpu *g, uint64_t *free_bytes,
				  uint64_t *total_bytes)
{
	size_t f = 0, t = 0;
	int ret = 0;

	CK(cudaMemGetInfo(&f, &t));
	*free_bytes = f;
	*total_bytes = t;
out:
	return ret;
}

extern "C" int bench_gpu_host_alloc(struct bench_gpu *g, size_t bytes, void **out)
{
	int ret = 0;

	*out = NULL;
	CK(cudaHostAlloc(out, bytes, cudaHostAllocMapped | cudaHostAllocPortable));
out:
	return ret;
}

extern "C" void bench_gpu_host_free(struct bench_gpu *g, void *p)
{
	(void)g;
	if (p)
		(void)cudaFreeHost(p);
}

extern "C" int bench_gpu_dev_alloc(struct bench_gpu *g, size_t bytes, void **out)
{
	int ret = 0;

	*out = NULL;
	CK(cudaMalloc(out, bytes));
out:
	return ret;
}

extern "C" void bench_gpu_dev_free(struct bench_gpu *g, void *p)
{
	(void)g;
	if (p)
		(void)cudaFree(p);
}

extern "C" int bench_gpu_upload(struct bench_gpu *g, void *dev, const void *host, size_t bytes)
{
	int ret = 0;

	CK(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, g->compute));
	CK(cudaStreamSynchronize(g->compute));
out:
	return ret;
}

extern "C" int bench_gpu_copy_d2d(struct bench_gpu *g, void *dst, const void *src, size_t bytes)
{
	int ret = 0;

	CK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, g->compute));
	CK(cudaStreamSynchronize(g->compute));
out:
	return ret;
}

/* ---- ceilings ---- */

/* Median ms of reps copies of kind, one warm-up first. */
static int time_copies(struct bench_gpu *g, void *dst, const void *src, size_t bytes,
		       cudaMemcpyKind kind, uint32_t reps, double *ms)
{
	double *t = (double *)calloc(reps, sizeof(double));
	int ret = 0;

	if (!t || reps == 0) {
		free(t);
		return reps ? -ENOMEM : -EINVAL;
	}
	for (uint32_t i = 0; i < WARMUP + reps; i++) {
		float f = 0.0f;
		CK(cudaEventRecord(g->ev[EV_START], g->compute));
		CK(cudaMemcpyAsync(dst, src, bytes, kind, g->compute));
		CK(cudaEventRecord(g->ev[EV_STOP], g->compute));
		CK(cudaEventSynchronize(g->ev[EV_STOP]));
		CK(cudaEventElapsedTime(&f, g->ev[EV_START], g->ev[EV_STOP]));
		if (i >= WARMUP)
			t[i - WARMUP] = f;
	}
	*ms = median(t, reps);
out:
	free(t);
	return ret;
}

extern "C" int bench_gpu_h2d_gbs(struct bench_gpu *g, void *dev, const void *pinned,
				 size_t bytes, uint32_t reps, double *gbs)
{
	double ms = 0.0;
	int ret = time_copies(g, dev, pinned, bytes, cudaMemcpyHostToDevice, reps, &ms);

	if (ret == 0)
		*gbs = ms > 0.0 ? (double)bytes / (ms * 1e6) : 0.0;
	return ret;
}

extern "C" int bench_gpu_d2d_gbs(struct bench_gpu *g, void *dst, const void *src, size_t bytes,
				 uint32_t reps, double *gbs)
{
	double ms = 0.0;
	int ret = time_copies(g, dst, src, bytes, cudaMemcpyDeviceToDevice, reps, &ms);

	/* a copy reads and writes every byte: HBM moved 2 x bytes */
	if (ret == 0)
		*gbs = ms > 0.0 ? 2.0 * (double)bytes / (ms * 1e6) : 0.0;
	return ret;
}

/* One warp per row: lanes read consecutive 16 B words of the row. */
__global__ void gather_rows_kernel(const uint4 *__restrict__ pool,
				   const uint32_t *__restrict__ rows, uint32_t n_rows,
				   uint32_t row_words, uint4 *__restrict__ dst)
{
	uint64_t warp = ((uint64_t)blockIdx.x * blockDim.x + threadIdx.x) / 32;
	uint64_t n_warps = (uint64_t)gridDim.x * blockDim.x / 32;
	uint32_t lane = threadIdx.x & 31;

	for (uint64_t i = warp; i < n_rows; i += n_warps) {
		const uint4 *src = pool + (uint64_t)rows[i] * row_words;
		for (uint32_t w = lane; w < row_words; w += 32)
			dst[i * row_words + w] = src[w];
	}
}

extern "C" int bench_gpu_gather_gbs(struct bench_gpu *g, const void *pinned_pool,
				    uint64_t pool_rows, uint32_t row_bytes, uint32_t n_rows,
				    void *dev_dst, uint32_t reps, uint64_t seed, double *gbs)
{
	uint32_t *rows = NULL, *d_rows = NULL;
	double *t = NULL;
	void *pool_dev = NULL;
	uint64_t s = seed;
	int ret = 0;

	if (row_bytes == 0 || row_bytes % 16 || n_rows == 0 || reps == 0 || pool_rows == 0 ||
	    pool_rows > UINT32_MAX)
		return fail_msg(g, "gather: row size must be a positive multiple of 16 B, "
				   "rows and pool non-empty, pool below 2^32 rows");
	rows = (uint32_t *)malloc((size_t)n_rows * sizeof(*rows));
	t = (double *)calloc(reps, sizeof(*t));
	if (!rows || !t) {
		ret = -ENOMEM;
		goto out;
	}
	for (uint32_t i = 0; i < n_rows; i++) {
		/* splitmix64: uniform rows, reproducible */
		uint64_t z = (s += 0x9e3779b97f4a7c15ull);
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
		z ^= z >> 31;
		rows[i] = (uint32_t)(((z >> 32) * pool_rows) >> 32);
	}
	CK(cudaMalloc((void **)&d_rows, (size_t)n_rows * sizeof(*d_rows)));
	CK(cudaMemcpy(d_rows, rows, (size_t)n_rows * sizeof(*d_rows), cudaMemcpyHostToDevice));
	CK(cudaHostGetDevicePointer(&pool_dev, (void *)pinned_pool, 0));
	for (uint32_t i = 0; i < WARMUP + reps; i++) {
		float f = 0.0f;
		CK(cudaEventRecord(g->ev[EV_START], g->compute));
		gather_rows_kernel<<<g->sm_count * 8, 256, 0, g->compute>>>(
			(const uint4 *)pool_dev, d_rows, n_rows, row_bytes / 16, (uint4 *)dev_dst);
		CK(cudaGetLastError());
		CK(cudaEventRecord(g->ev[EV_STOP], g->compute));
		CK(cudaEventSynchronize(g->ev[EV_STOP]));
		CK(cudaEventElapsedTime(&f, g->ev[EV_START], g->ev[EV_STOP]));
		if (i >= WARMUP)
			t[i - WARMUP] = f;
	}
	{
		double ms = median(t, reps);
		*gbs = ms > 0.0 ? (double)n_rows * row_bytes / (ms * 1e6) : 0.0;
	}
out:
	if (d_rows)
		(void)cudaFree(d_rows);
	free(rows);
	free(t);
	return ret;
}

/* ---- dense attention ---- */

__device__ __forceinline__ float warp_max(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
	return v;
}

__device__ __forceinline__ float warp_sum(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(FULL_MASK, v, o);
	return v;
}

/*
 * Partial attention of split blockIdx.x of item blockIdx.y over positions
 * [split·chunk, min(S, (split+1)·chunk)), which is never empty (the launcher sizes
 * the grid so), for the G query heads of the item.
 *   rec  [n_items][S][2][D] fp16    q [n_items][G][D] fp32 (unscaled)
 *   pm, pl [n_items][n_split][G]    pacc [n_items][n_split][G][D]
 */
template <int D, int G>
__global__ void __launch_bounds__(DENSE_THREADS)
dense_partial_kernel(const __half *__restrict__ rec, const float *__restrict__ q, uint32_t S,
		     uint32_t chunk, float *__restrict__ pm, float *__restrict__ pl,
		     float *__restrict__ pacc)
{
	constexpr int CPL = D / 32;   /* value channels per lane */
	__shared__ float qs[G][D];
	__shared__ float wm[DENSE_WARPS][G], wl[DENSE_WARPS][G];
	__shared__ float wacc[DENSE_WARPS][G][D];

	const uint32_t item = blockIdx.y, split = blockIdx.x, n_split = gridDim.x;
	const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
	const __half *base = rec + (size_t)item * S * 2 * D;
	const uint32_t s0 = split * chunk, s1 = min(S, s0 + chunk);
	/* scale q, not the logits: fp16-range safety as SPARQ.md's pitfalls ask */
	const float scale = rsqrtf((float)D);
	float m[G], l[G], acc[G][CPL];

	for (int i = threadIdx.x; i < G * D; i += DENSE_THREADS)
		qs[i / D][i % D] = q[(size_t)item * G * D + i] * scale;
	__syncthreads();
#pragma unroll
	for (int h = 0; h < G; h++) {
		m[h] = -INFINITY;
		l[h] = 0.0f;
#pragma unroll
		for (int c = 0; c < CPL; c++)
			acc[h][c] = 0.0f;
	}

	for (uint32_t t0 = s0 + warp * 32; t0 < s1; t0 += DENSE_WARPS * 32) {
		const uint32_t pos = t0 + lane;
		const bool valid = pos < s1;
		float s[G], p[G];

#pragma unroll
		for (int h = 0; h < G; h++)
			s[h] = 0.0f;
		if (valid) {
			const uint4 *k = (const uint4 *)(base + (size_t)pos * 2 * D);
#pragma unroll 4
			for (int c8 = 0; c8 < D / 8; c8++) {
				uint4 raw = k[c8];
				const __half2 *h2 = (const __half2 *)&raw;
				float2 f[4];
#pragma unroll
				for (int j = 0; j < 4; j++)
					f[j] = __half22float2(h2[j]);
#pragma unroll
				for (int h = 0; h < G; h++) {
					const float *qh = &qs[h][c8 * 8];
#pragma unroll
					for (int j = 0; j < 4; j++)
						s[h] += qh[2 * j] * f[j].x + qh[2 * j + 1] * f[j].y;
				}
			}
		}
		/* online softmax over this tile; lane 0 is always valid, so mx is finite */
#pragma unroll
		for (int h = 0; h < G; h++) {
			float sv = valid ? s[h] : -INFINITY;
			float mx = fmaxf(m[h], warp_max(sv));
			float corr = expf(m[h] - mx);   /* 0 on the first tile: m = -inf */
			p[h] = valid ? expf(sv - mx) : 0.0f;
			l[h] = l[h] * corr + warp_sum(p[h]);
#pragma unroll
			for (int c = 0; c < CPL; c++)
				acc[h][c] *= corr;
			m[h] = mx;
		}
		const uint32_t n = min(32u, s1 - t0);
		for (uint32_t j = 0; j < n; j++) {
			const __half2 *v = (const __half2 *)(base + (size_t)(t0 + j) * 2 * D + D +
							     lane * CPL);
			float vf[CPL];
#pragma unroll
			for (int c = 0; c < CPL / 2; c++) {
				float2 f = __half22float2(v[c]);
				vf[2 * c] = f.x;
				vf[2 * c + 1] = f.y;
			}
#pragma unroll
			for (int h = 0; h < G; h++) {
				float pj = __shfl_sync(FULL_MASK, p[h], j);
#pragma unroll
				for (int c = 0; c < CPL; c++)
					acc[h][c] += pj * vf[c];
			}
		}
	}

	/* merge the block's warps; a warp that saw no position has m = -inf, l = 0 */
#pragma unroll
	for (int h = 0; h < G; h++) {
		if (lane == 0) {
			wm[warp][h] = m[h];
			wl[warp][h] = l[h];
		}
#pragma unroll
		for (int c = 0; c < CPL; c++)
			wacc[warp][h][lane * CPL + c] = acc[h][c];
	}
	__syncthreads();
	for (int i = threadIdx.x; i < G * D; i += DENSE_THREADS) {
		const int h = i / D, c = i % D;
		float M = -INFINITY, L = 0.0f, A = 0.0f;

		for (int w = 0; w < DENSE_WARPS; w++)
			M = fmaxf(M, wm[w][h]);
		for (int w = 0; w < DENSE_WARPS; w++) {
			float e = wm[w][h] == -INFINITY ? 0.0f : expf(wm[w][h] - M);
			L += wl[w][h] * e;
			A += wacc[w][h][c] * e;
		}
		const size_t o = ((size_t)item * n_split + split) * G + h;
		if (c == 0) {
			pm[o] = M;
			pl[o] = L;
		}
		pacc[o * D + c] = A;
	}
}

/* y[item][h][c] = merged numerators / merged denominators over the item's splits. */
__global__ void dense_reduce_kernel(const float *__restrict__ pm, const float *__restrict__ pl,
				    const float *__restrict__ pacc, uint32_t n_split, uint32_t G,
				    uint32_t D, float *__restrict__ y)
{
	const uint32_t item = blockIdx.x;

	for (uint32_t i = threadIdx.x; i < G * D; i += blockDim.x) {
		const uint32_t h = i / D, c = i % D;
		float M = -INFINITY, L = 0.0f, A = 0.0f;

		for (uint32_t s = 0; s < n_split; s++)
			M = fmaxf(M, pm[((size_t)item * n_split + s) * G + h]);
		for (uint32_t s = 0; s < n_split; s++) {
			const size_t o = ((size_t)item * n_split + s) * G + h;
			const float e = expf(pm[o] - M);
			L += pl[o] * e;
			A += pacc[o * D + c] * e;
		}
		y[(size_t)item * G * D + i] = A / L;
	}
}

typedef void (*dense_kernel_fn)(const __half *, const float *, uint32_t, uint32_t, float *,
				float *, float *);

/* The instantiation for (d, g), NULL when the baseline does not cover it. */
static dense_kernel_fn dense_kernel_for(uint32_t d, uint32_t g)
{
#define K(D_, G_)                                    \
	if (d == D_ && g == G_)                      \
		return dense_partial_kernel<D_, G_>;
#define KD(D_) K(D_, 1) K(D_, 2) K(D_, 4) K(D_, 8)
	KD(64) KD(128) KD(256)
#undef KD
#undef K
	return NULL;
}

extern "C" int bench_gpu_dense_create(struct bench_gpu *g,
				      const struct bench_gpu_dense_shape *shape,
				      struct bench_gpu_dense **out)
{
	struct bench_gpu_dense *p;
	const struct bench_gpu_dense_shape *sh = shape;
	uint32_t n_split;
	size_t part;
	int ret = 0;

	*out = NULL;
	if (!dense_kernel_for(sh->d, sh->g))
		return fail_msg(g, "dense baseline: d must be 64, 128 or 256 and g 1, 2, 4 or 8");
	if (sh->n_items == 0 || sh->S == 0 || sh->n_items > 65535)
		return fail_msg(g, "dense baseline: need 1..65535 items and S >= 1");
	p = (struct bench_gpu_dense *)calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->g = g;
	p->sh = *sh;
	n_split = sh->n_split;
	if (n_split == 0) {
		/* about 8 blocks per SM over the whole layer, at least 256 positions each */
		uint64_t want = ((uint64_t)g->sm_count * 8 + sh->n_items - 1) / sh->n_items;
		uint64_t most = (sh->S + 255) / 256;
		n_split = (uint32_t)(want < most ? want : most);
	}
	if (n_split == 0)
		n_split = 1;
	if (n_split > sh->S)
		n_split = sh->S;
	/* every split non-empty: recompute the count from the chunk */
	p->chunk = (sh->S + n_split - 1) / n_split;
	p->sh.n_split = (sh->S + p->chunk - 1) / p->chunk;
	part = (size_t)sh->n_items * p->sh.n_split * sh->g;
	CK(cudaMalloc((void **)&p->q, (size_t)sh->n_items * sh->g * sh->d * sizeof(float)));
	CK(cudaMalloc((void **)&p->y, (size_t)sh->n_items * sh->g * sh->d * sizeof(float)));
	CK(cudaMalloc((void **)&p->pm, part * sizeof(float)));
	CK(cudaMalloc((void **)&p->pl, part * sizeof(float)));
	CK(cudaMalloc((void **)&p->pacc, part * sh->d * sizeof(float)));
	*out = p;
	return 0;
out:
	bench_gpu_dense_destroy(p);
	return ret;
}

extern "C" void bench_gpu_dense_destroy(struct bench_gpu_dense *p)
{
	if (!p)
		return;
	if (p->q)
		(void)cudaFree(p->q);
	if (p->y)
		(void)cudaFree(p->y);
	if (p->pm)
		(void)cudaFree(p->pm);
	if (p->pl)
		(void)cudaFree(p->pl);
	if (p->pacc)
		(void)cudaFree(p->pacc);
	free(p);
}

extern "C" uint32_t bench_gpu_dense_splits(const struct bench_gpu_dense *p)
{
	return p->sh.n_split;
}

extern "C" uint64_t bench_gpu_dense_layer_bytes(const struct bench_gpu_dense *p)
{
	return (uint64_t)p->sh.n_items * p->sh.S * 2 * p->sh.d * sizeof(__half);
}

extern "C" int bench_gpu_dense_set_q(struct bench_gpu_dense *p, const float *q)
{
	struct bench_gpu *g = p->g;
	int ret = 0;

	CK(cudaMemcpy(p->q, q, (size_t)p->sh.n_items * p->sh.g * p->sh.d * sizeof(float),
		      cudaMemcpyHostToDevice));
out:
	return ret;
}

/* Both kernels of one layer on stream st. */
static int dense_launch(struct bench_gpu_dense *p, const void *dev_rec, cudaStream_t st)
{
	struct bench_gpu *g = p->g;
	const struct bench_gpu_dense_shape *sh = &p->sh;
	dim3 grid(sh->n_split, sh->n_items);
	int ret = 0;

	dense_kernel_for(sh->d, sh->g)<<<grid, DENSE_THREADS, 0, st>>>(
		(const __half *)dev_rec, p->q, sh->S, p->chunk, p->pm, p->pl, p->pacc);
	CK(cudaGetLastError());
	dense_reduce_kernel<<<sh->n_items, 256, 0, st>>>(p->pm, p->pl, p->pacc, sh->n_split,
							  sh->g, sh->d, p->y);
	CK(cudaGetLastError());
out:
	return ret;
}

static int read_y(struct bench_gpu_dense *p, float *y)
{
	struct bench_gpu *g = p->g;
	int ret = 0;

	CK(cudaMemcpy(y, p->y, (size_t)p->sh.n_items * p->sh.g * p->sh.d * sizeof(float),
		      cudaMemcpyDeviceToHost));
out:
	return ret;
}

extern "C" int bench_gpu_dense_run(struct bench_gpu_dense *p, const void *dev_rec, float *y)
{
	struct bench_gpu *g = p->g;
	int ret = dense_launch(p, dev_rec, g->compute);

	if (ret)
		return ret;
	CK(cudaStreamSynchronize(g->compute));
	ret = read_y(p, y);
out:
	return ret;
}

extern "C" int bench_gpu_dense_time_resident(struct bench_gpu_dense *p, void *const *slots,
					     uint32_t n_slots, uint32_t reps, double *ms)
{
	struct bench_gpu *g = p->g;
	double *t = (double *)calloc(reps ? reps : 1, sizeof(double));
	int ret = 0;

	if (!t)
		return -ENOMEM;
	if (reps == 0 || n_slots == 0) {
		ret = fail_msg(g, "dense resident: need reps and slots");
		goto out;
	}
	for (uint32_t i = 0; i < WARMUP + reps; i++) {
		float f = 0.0f;
		CK(cudaEventRecord(g->ev[EV_START], g->compute));
		ret = dense_launch(p, slots[i % n_slots], g->compute);
		if (ret)
			goto out;
		CK(cudaEventRecord(g->ev[EV_STOP], g->compute));
		CK(cudaEventSynchronize(g->ev[EV_STOP]));
		CK(cudaEventElapsedTime(&f, g->ev[EV_START], g->ev[EV_STOP]));
		if (i >= WARMUP)
			t[i - WARMUP] = f;
	}
	*ms = median(t, reps);
out:
	free(t);
	return ret;
}

/*
 * Double buffering across layers: the copy of layer i+1 (copy stream) overlaps the
 * attention of layer i (compute stream); a buffer is overwritten only after the
 * kernel that read it finished (EV_FREE), and attended only after its copy landed
 * (EV_READY). Events of layer i are reused by layer i+2, after the waits that
 * needed them were enqueued, which is what stream-ordered events allow.
 */
extern "C" int bench_gpu_dense_time_offload(struct bench_gpu_dense *p, const void *pinned_rec,
					    void *const bufs[2], uint32_t layers, uint32_t reps,
					    double *ms, float *y)
{
	struct bench_gpu *g = p->g;
	const size_t bytes = bench_gpu_dense_layer_bytes(p);
	double *t = (double *)calloc(reps ? reps : 1, sizeof(double));
	int ret = 0;

	if (!t)
		return -ENOMEM;
	if (reps == 0 || layers == 0) {
		ret = fail_msg(g, "dense offload: need reps and layers");
		goto out;
	}
	for (uint32_t r = 0; r < WARMUP + reps; r++) {
		float f = 0.0f;
		CK(cudaEventRecord(g->ev[EV_START], g->compute));
		CK(cudaEventRecord(g->ev[EV_FREE0], g->compute));
		CK(cudaEventRecord(g->ev[EV_FREE1], g->compute));
		for (uint32_t i = 0; i < layers; i++) {
			const int b = (int)(i & 1);
			CK(cudaStreamWaitEvent(g->copy, g->ev[EV_FREE0 + b], 0));
			CK(cudaMemcpyAsync(bufs[b], pinned_rec, bytes, cudaMemcpyHostToDevice,
					   g->copy));
			CK(cudaEventRecord(g->ev[EV_READY0 + b], g->copy));
			CK(cudaStreamWaitEvent(g->compute, g->ev[EV_READY0 + b], 0));
			ret = dense_launch(p, bufs[b], g->compute);
			if (ret)
				goto out;
			CK(cudaEventRecord(g->ev[EV_FREE0 + b], g->compute));
		}
		/* the last kernel waited for the last copy: compute's stop covers both */
		CK(cudaEventRecord(g->ev[EV_STOP], g->compute));
		CK(cudaEventSynchronize(g->ev[EV_STOP]));
		CK(cudaStreamSynchronize(g->copy));
		CK(cudaEventElapsedTime(&f, g->ev[EV_START], g->ev[EV_STOP]));
		if (r >= WARMUP)
			t[r - WARMUP] = f / (float)layers;
	}
	*ms = median(t, reps);
	if (y)
		ret = read_y(p, y);
out:
	free(t);
	return ret;
}
