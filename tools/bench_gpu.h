/*
 * bench_gpu.h — what `sparq-bench gpu` measures on the GPU besides the CUDA backend
 * itself: the machine's ceilings (pinned host->device copy, HBM copy, zero-copy row
 * gather from pinned host memory) and the two dense baselines SparQ is compared with
 * (issue 5, "Benchmark"): dense attention over K/V resident in GPU memory (a
 * flash-decoding-class split-S kernel plus a reduce) and the same kernel fed by
 * copying the whole layer's K/V over PCIe every step (FlexGen-style offload,
 * double-buffered so copy and compute overlap as they would in such a system).
 *
 * Everything is timed with CUDA events on the context's own streams, after warm-up,
 * median of the repetitions. Every CUDA call is checked: a failure returns -EIO
 * (-ENOMEM when out of memory) and bench_gpu_error() tells which call and why.
 *
 * Records are laid out as the record store keeps them: per KV head ("item"), S
 * records of K row then V row, fp16, [n_items][S][2][d].
 *
 * Built only with SPARQ_CUDA (SPARQ_BENCH_GPU is then defined for sparq-bench).
 */
#ifndef SPARQ_BENCH_GPU_H
#define SPARQ_BENCH_GPU_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct bench_gpu;
struct bench_gpu_dense;

struct bench_gpu_info {
	char name[256];   /* cudaDeviceProp.name */
	int cc_major, cc_minor, sm_count;
	uint64_t total_mem, l2_bytes;
};

/*
 * Device 0, two streams (compute, copy) and events. -ENODEV with a reason in why
 * when no device answers.
 */
int bench_gpu_open(struct bench_gpu **out, struct bench_gpu_info *info, char *why,
		   size_t why_len);
void bench_gpu_close(struct bench_gpu *g);
/* The last failing CUDA call and its error string ("" when none failed). */
const char *bench_gpu_error(const struct bench_gpu *g);

int bench_gpu_mem_info(struct bench_gpu *g, uint64_t *free_bytes, uint64_t *total_bytes);

/* Pinned host memory, mapped into the device's address space (zero-copy readable). */
int bench_gpu_host_alloc(struct bench_gpu *g, size_t bytes, void **out);
void bench_gpu_host_free(struct bench_gpu *g, void *p);
int bench_gpu_dev_alloc(struct bench_gpu *g, size_t bytes, void **out);
void bench_gpu_dev_free(struct bench_gpu *g, void *p);
/* Synchronous copies: host->device from pinned memory, device->device. */
int bench_gpu_upload(struct bench_gpu *g, void *dev, const void *host, size_t bytes);
int bench_gpu_copy_d2d(struct bench_gpu *g, void *dst, const void *src, size_t bytes);

/* ---- ceilings: median over reps after one warm-up ---- */

/* cudaMemcpyAsync host->device of bytes from pinned memory: bytes / s, in GB/s. */
int bench_gpu_h2d_gbs(struct bench_gpu *g, void *dev, const void *pinned, size_t bytes,
		      uint32_t reps, double *gbs);
/* cudaMemcpyAsync device->device: (bytes read + bytes written) / s, in GB/s. */
int bench_gpu_d2d_gbs(struct bench_gpu *g, void *dst, const void *src, size_t bytes,
		      uint32_t reps, double *gbs);
/*
 * A kernel (one warp per row) reading n_rows random rows of row_bytes (a multiple of
 * 16) from pool_rows rows of pinned host memory straight over PCIe into dev_dst
 * ([n_rows][row_bytes]); rows bytes / s in GB/s. -EINVAL for a bad row size.
 */
int bench_gpu_gather_gbs(struct bench_gpu *g, const void *pinned_pool, uint64_t pool_rows,
			 uint32_t row_bytes, uint32_t n_rows, void *dev_dst, uint32_t reps,
			 uint64_t seed, double *gbs);

/* ---- dense attention baselines ---- */

struct bench_gpu_dense_shape {
	uint32_t n_items;   /* KV heads of the layer (batch x n_kv) */
	uint32_t g;         /* query heads per KV head: 1, 2, 4 or 8 */
	uint32_t d;         /* head dimension: 64, 128 or 256 */
	uint32_t S;         /* positions per item */
	uint32_t n_split;   /* blocks per item along S; 0 = about 8 blocks per SM in all */
};

/*
 * A plan for one layer shape: device buffers for q, the per-split partial softmax
 * states and y. -EINVAL (reason via bench_gpu_error) for a shape the kernel does not
 * cover.
 */
int bench_gpu_dense_create(struct bench_gpu *g, const struct bench_gpu_dense_shape *shape,
			   struct bench_gpu_dense **out);
void bench_gpu_dense_destroy(struct bench_gpu_dense *p);
uint32_t bench_gpu_dense_splits(const struct bench_gpu_dense *p);
/* Bytes of one layer's records: n_items x S x 2 x d x 2. */
uint64_t bench_gpu_dense_layer_bytes(const struct bench_gpu_dense *p);

/* Uploads q ([n_items][g][d] fp32, post-RoPE, unscaled). */
int bench_gpu_dense_set_q(struct bench_gpu_dense *p, const float *q);
/*
 * y = softmax(q K^T / sqrt(d)) V per query head over the records at dev_rec, written
 * to y ([n_items][g][d] fp32, host). Synchronous: for checks, not for timing.
 */
int bench_gpu_dense_run(struct bench_gpu_dense *p, const void *dev_rec, float *y);

/* Median ms of one layer's dense attention, rotating over n_slots resident copies. */
int bench_gpu_dense_time_resident(struct bench_gpu_dense *p, void *const *slots,
				  uint32_t n_slots, uint32_t reps, double *ms);
/*
 * Median ms per layer of `layers` consecutive layers, each copied from pinned host
 * memory into one of two device buffers while the previous layer computes, then
 * attended. If y is not NULL it receives the last layer's output.
 */
int bench_gpu_dense_time_offload(struct bench_gpu_dense *p, const void *pinned_rec,
				 void *const bufs[2], uint32_t layers, uint32_t reps, double *ms,
				 float *y);

#ifdef __cplusplus
}
#endif

#endif
