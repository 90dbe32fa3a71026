/*
 * bench_util.h — the pieces of sparq-bench that are not about SparQ: a seeded
 * generator (so every run measures the same data), a monotonic clock, order
 * statistics of timing samples, and the machine's memory bandwidth measured with the
 * same number of threads as the backend, so every figure sparq-bench prints can sit
 * next to the physical limit it is compared with (DESIGN.md §8).
 *
 * Functions return 0 or a negative errno code.
 */
#ifndef SPARQ_BENCH_UTIL_H
#define SPARQ_BENCH_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* splitmix64 with a cached second Box-Muller draw: seedable, identical everywhere. */
struct bench_rng {
	uint64_t s;
	bool has_spare;
	float spare;
};

void bench_rng_seed(struct bench_rng *r, uint64_t seed);
uint64_t bench_rng_next(struct bench_rng *r);
/* Uniform in (0, 1): never 0, so log() of it is finite. */
double bench_rng_uniform(struct bench_rng *r);
/* Standard normal, exact (Box-Muller). */
float bench_rng_normal(struct bench_rng *r);
/*
 * Approximately standard normal, from one 64-bit draw: the sum of four 16-bit
 * uniforms, centred and scaled (Irwin-Hall, bounded at ±3.46). Several times cheaper
 * than Box-Muller, which matters when a run fills hundreds of millions of elements.
 */
float bench_rng_normal_fast(struct bench_rng *r);

/*
 * k distinct positions drawn uniformly from [0, n), written to out in ascending order
 * (what a top-k selection hands a store). bits is scratch of (n + 63) / 64 words; its
 * contents are overwritten. Drawing the smaller of the set and its complement keeps
 * the rejection loop short for any k. -EINVAL for k > n or n = 0.
 */
int bench_sample_sorted(struct bench_rng *r, uint32_t n, uint32_t k, uint32_t *out,
			uint64_t *bits);

uint64_t bench_now_ns(void);

/*
 * bytes of memory aligned to 2 MiB with transparent huge pages advised, as the tier
 * arenas are (an O_DIRECT transfer into it pins a few large pages rather than many
 * small ones, which on some virtual disks doubles sequential bandwidth). *huge says
 * whether the kernel took the advice. Release with free(). NULL when out of memory.
 */
void *bench_alloc_huge(size_t bytes, bool *huge);

/* Online CPUs, at least 1: what a thread count of 0 means, for the backend too. */
uint32_t bench_online_cpus(void);

/* Median of n >= 1 samples (mean of the middle two for even n); sorts v in place. */
double bench_median(uint64_t *v, uint32_t n);
/* Nearest-rank percentile p in (0, 100] of n >= 1 samples; sorts v in place. */
double bench_percentile(uint64_t *v, uint32_t n, double p);

/* Runs fn(arg, i, n) for i in [0, n), one thread each (i = 0 on the caller). */
typedef void (*bench_task_fn)(void *arg, uint32_t i, uint32_t n);
int bench_parallel(uint32_t n, bench_task_fn fn, void *arg);

struct bench_bw {
	double copy_gbs;     /* memcpy: (bytes read + bytes written) / s, median */
	double read_gbs;     /* read-only pass (sum of words): bytes read / s, median */
	uint64_t checksum;   /* the read pass's sum: kept so the pass cannot be elided */
};

/*
 * Measures memory bandwidth with two touched buffers of `bytes` each, the work split
 * over `threads` threads, median of `reps` runs per pass. The buffers are freed
 * before it returns. -ENOMEM, -EAGAIN (threads), -EINVAL.
 */
int bench_mem_bw(uint32_t threads, size_t bytes, uint32_t reps, struct bench_bw *out);

#endif
