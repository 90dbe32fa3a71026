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
#include <stdio.h>

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

/* A command-line number: 0 with *out set, or -EINVAL unless s is a decimal in [lo, hi]. */
int bench_parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out);

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

/*
 * CSV rows, the one writer every mode's --csv uses (tools/plot reads them by column
 * name). A file is appended to, so runs of several configurations collect in one file;
 * the header goes first when the file is new or empty, and a file that already has
 * rows must carry exactly this header: rows under another mode's (or an older
 * version's) columns would be misread by the plots, so that is -EINVAL, with nothing
 * written. Fields are comma-separated in call order; a figure that was not measured is
 * an empty field; a string holding a comma, a quote or a line break is quoted
 * (RFC 4180). Every row must have as many fields as the header has columns.
 */
struct bench_csv {
	FILE *f;
	const char *path, *prog;   /* for the messages */
	uint32_t cols;      /* columns of the header */
	uint32_t col;       /* fields written in the current row */
	bool bad_row;       /* a row had the wrong number of fields */
};

/*
 * header: the column names, comma-separated, no line break. -EINVAL for a file whose
 * first line is another header, or -errno of opening or reading it; either is also
 * said on stderr as "prog: path: reason".
 */
int bench_csv_open(struct bench_csv *c, const char *path, const char *header, const char *prog);
void bench_csv_str(struct bench_csv *c, const char *s);
void bench_csv_u64(struct bench_csv *c, uint64_t v);
/* v when ok and finite, else an empty field. */
void bench_csv_num(struct bench_csv *c, bool ok, double v);
void bench_csv_end_row(struct bench_csv *c);
/* Closes the file: -EIO when a write failed, -EINVAL when a row had the wrong number of
 * fields (a bug in the caller: the file is then unreliable), else 0; failures are
 * said on stderr. Does nothing for a bench_csv that is not open. */
int bench_csv_close(struct bench_csv *c);

#endif
