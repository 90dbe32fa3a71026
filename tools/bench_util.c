/*
 * bench_util.c — see bench_util.h. The bandwidth passes are deliberately plain:
 * glibc's memcpy for the copy (what any tier would use to move bulk data) and a
 * word sum for the read, split into equal, page-aligned slices, one per thread, so
 * the figures are what this machine's memory system gives to that many cores.
 */
#include <errno.h>
#include <math.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"

/* ---- random numbers ---- */

void bench_rng_seed(struct bench_rng *r, uint64_t seed)
{
	r->s = seed;
	r->has_spare = false;
	r->spare = 0.0f;
}

uint64_t bench_rng_next(struct bench_rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

double bench_rng_uniform(struct bench_rng *r)
{
	/* 53 random bits, offset by half a step: strictly inside (0, 1) */
	return ((double)(bench_rng_next(r) >> 11) + 0.5) * 0x1p-53;
}

float bench_rng_normal(struct bench_rng *r)
{
	if (r->has_spare) {
		r->has_spare = false;
		return r->spare;
	}
	double u = bench_rng_uniform(r), v = bench_rng_uniform(r);
	double rad = sqrt(-2.0 * log(u)), th = 2.0 * M_PI * v;

	r->spare = (float)(rad * sin(th));
	r->has_spare = true;
	return (float)(rad * cos(th));
}

float bench_rng_normal_fast(struct bench_rng *r)
{
	uint64_t x = bench_rng_next(r);
	uint32_t sum = (uint32_t)(x & 0xffff) + (uint32_t)((x >> 16) & 0xffff) +
		       (uint32_t)((x >> 32) & 0xffff) + (uint32_t)(x >> 48);

	/* four U(0,1): mean 2, variance 4/12; centre and scale to variance 1 */
	return ((float)sum * (1.0f / 65536.0f) - 2.0f) * 1.7320508f;
}

/* Uniform in [0, n) by multiply-shift: no division, bias below 2^-32. */
static uint32_t rng_below(struct bench_rng *r, uint32_t n)
{
	return (uint32_t)(((bench_rng_next(r) >> 32) * (uint64_t)n) >> 32);
}

int bench_sample_sorted(struct bench_rng *r, uint32_t n, uint32_t k, uint32_t *out,
			uint64_t *bits)
{
	size_t words = ((size_t)n + 63) / 64;
	/* mark the smaller set: the k chosen, or the n - k left out */
	bool mark_chosen = k <= n / 2;
	uint32_t marks = mark_chosen ? k : n - k, got = 0;

	if (n == 0 || k > n)
		return -EINVAL;
	memset(bits, 0, words * sizeof(*bits));
	while (got < marks) {
		uint32_t p = rng_below(r, n);
		uint64_t bit = 1ull << (p % 64);

		if (!(bits[p / 64] & bit)) {
			bits[p / 64] |= bit;
			got++;
		}
	}
	got = 0;
	for (uint32_t p = 0; p < n && got < k; p++)
		if (((bits[p / 64] >> (p % 64)) & 1) == mark_chosen)
			out[got++] = p;
	return 0;
}

/* ---- time and order statistics ---- */

uint64_t bench_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void *bench_alloc_huge(size_t bytes, bool *huge)
{
	const size_t huge_page = (size_t)2 << 20;
	size_t len = (bytes + huge_page - 1) / huge_page * huge_page;
	void *p = len ? aligned_alloc(huge_page, len) : NULL;

	*huge = p && madvise(p, len, MADV_HUGEPAGE) == 0;
	return p;
}

int bench_parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	/* strtoul takes "-1" as ULONG_MAX: a sign is refused, not wrapped */
	if (errno || *end || end == s || v < lo || v > hi || s[0] == '-')
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

uint32_t bench_online_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n > 0 ? (uint32_t)n : 1;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return (x > y) - (x < y);
}

double bench_median(uint64_t *v, uint32_t n)
{
	qsort(v, n, sizeof(*v), cmp_u64);
	if (n % 2)
		return (double)v[n / 2];
	return ((double)v[n / 2 - 1] + (double)v[n / 2]) / 2.0;
}

double bench_percentile(uint64_t *v, uint32_t n, double p)
{
	uint32_t rank = (uint32_t)ceil(p / 100.0 * n);

	qsort(v, n, sizeof(*v), cmp_u64);
	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return (double)v[rank - 1];
}

/* ---- threads ---- */

struct task {
	bench_task_fn fn;
	void *arg;
	uint32_t i, n;
};

static void *task_main(void *a)
{
	struct task *t = a;

	t->fn(t->arg, t->i, t->n);
	return NULL;
}

int bench_parallel(uint32_t n, bench_task_fn fn, void *arg)
{
	pthread_t *th;
	struct task *tasks;
	uint32_t started = 0;
	int ret = 0;

	if (n == 0)
		return -EINVAL;
	th = calloc(n, sizeof(*th));
	tasks = calloc(n, sizeof(*tasks));
	if (!th || !tasks) {
		ret = -ENOMEM;
		goto out;
	}
	for (uint32_t i = 0; i < n; i++)
		tasks[i] = (struct task){ .fn = fn, .arg = arg, .i = i, .n = n };
	for (uint32_t i = 1; i < n; i++) {
		if (pthread_create(&th[i], NULL, task_main, &tasks[i])) {
			ret = -EAGAIN;
			break;
		}
		started = i;
	}
	/* on a failed start the caller still takes its share, so every started
	 * thread finds its slice valid; the measurement is then discarded */
	fn(arg, 0, n);
	for (uint32_t i = 1; i <= started; i++)
		pthread_join(th[i], NULL);
out:
	free(th);
	free(tasks);
	return ret;
}

/* ---- memory bandwidth ---- */

enum bw_pass {
	BW_TOUCH,
	BW_COPY,
	BW_READ,
};

struct bw_job {
	uint8_t *src, *dst;
	size_t bytes;
	enum bw_pass pass;
	uint64_t *sums;   /* [threads] per-thread results of the read pass */
};

/* Thread i's page-aligned share [*off, *off + *len) of the buffers. */
static void bw_slice(size_t bytes, uint32_t i, uint32_t n, size_t *off, size_t *len)
{
	size_t per = bytes / n / 4096 * 4096;

	*off = per * i;
	*len = i + 1 == n ? bytes - *off : per;
}

/* Four independent accumulators: the loop is then bound by loads, not by the adds. */
static uint64_t sum_words(const uint64_t *p, size_t n)
{
	uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
	size_t i = 0;

	for (; i + 4 <= n; i += 4) {
		a0 += p[i];
		a1 += p[i + 1];
		a2 += p[i + 2];
		a3 += p[i + 3];
	}
	for (; i < n; i++)
		a0 += p[i];
	return a0 + a1 + a2 + a3;
}

static void bw_task(void *arg, uint32_t i, uint32_t n)
{
	struct bw_job *job = arg;
	size_t off, len;

	bw_slice(job->bytes, i, n, &off, &len);
	switch (job->pass) {
	case BW_TOUCH:
		/* a non-zero pattern: every page gets its own frame, none maps the zero page */
		memset(job->src + off, 0x5a, len);
		memset(job->dst + off, 0xa5, len);
		break;
	case BW_COPY:
		memcpy(job->dst + off, job->src + off, len);
		break;
	case BW_READ:
		job->sums[i] = sum_words((const uint64_t *)(job->src + off), len / 8);
		break;
	}
}

static int bw_time(struct bw_job *job, uint32_t threads, uint64_t *ns)
{
	uint64_t t0 = bench_now_ns();
	int ret = bench_parallel(threads, bw_task, job);

	*ns = bench_now_ns() - t0;
	return ret;
}

int bench_mem_bw(uint32_t threads, size_t bytes, uint32_t reps, struct bench_bw *out)
{
	struct bw_job job = { .bytes = bytes };
	uint64_t *copy_ns = NULL, *read_ns = NULL, touch_ns;
	int ret;

	if (threads == 0 || reps == 0 || bytes < (size_t)threads * 4096)
		return -EINVAL;
	job.src = aligned_alloc(4096, bytes);
	job.dst = aligned_alloc(4096, bytes);
	job.sums = calloc(threads, sizeof(*job.sums));
	copy_ns = calloc(reps, sizeof(*copy_ns));
	read_ns = calloc(reps, sizeof(*read_ns));
	if (!job.src || !job.dst || !job.sums || !copy_ns || !read_ns) {
		ret = -ENOMEM;
		goto out;
	}
	job.pass = BW_TOUCH;
	ret = bw_time(&job, threads, &touch_ns);
	out->checksum = 0;
	for (uint32_t rep = 0; ret == 0 && rep < reps; rep++) {
		job.pass = BW_COPY;
		ret = bw_time(&job, threads, &copy_ns[rep]);
		if (ret)
			break;
		job.pass = BW_READ;
		ret = bw_time(&job, threads, &read_ns[rep]);
		for (uint32_t i = 0; i < threads; i++)
			out->checksum += job.sums[i];
	}
	if (ret)
		goto out;
	out->copy_gbs = 2.0 * (double)bytes / bench_median(copy_ns, reps);
	out->read_gbs = (double)bytes / bench_median(read_ns, reps);
out:
	free(job.src);
	free(job.dst);
	free(job.sums);
	free(copy_ns);
	free(read_ns);
	return ret;
}

/* ---- CSV ---- */

int bench_csv_open(struct bench_csv *c, const char *path, const char *header, const char *prog)
{
	const char *why = NULL;
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int ret = 0;

	*c = (struct bench_csv){ .cols = 1, .path = path, .prog = prog };
	for (const char *p = header; *p; p++)
		c->cols += *p == ',';
	/* "a+": reads start anywhere, writes always land at the end */
	c->f = fopen(path, "a+");
	if (!c->f) {
		ret = -errno;
		fprintf(stderr, "%s: cannot open %s: %s\n", prog, path, strerror(-ret));
		return ret;
	}
	rewind(c->f);
	errno = 0;
	n = getline(&line, &cap, c->f);
	if (n < 0 && ferror(c->f)) {
		ret = errno ? -errno : -EIO;
		goto err;
	}
	if (n < 0) {
		/* a new or empty file: the header opens it */
		if (fseek(c->f, 0, SEEK_END) || fprintf(c->f, "%s\n", header) < 0) {
			ret = -EIO;
			goto err;
		}
	} else {
		if (n > 0 && line[n - 1] == '\n')
			line[--n] = '\0';
		if (strcmp(line, header) != 0) {
			why = "the file already holds rows under another header (another mode's or "
			       "an older version's columns); write to a new file";
			ret = -EINVAL;
			goto err;
		}
		/* a read must be followed by a positioning call before a write */
		if (fseek(c->f, 0, SEEK_END)) {
			ret = -errno;
			goto err;
		}
	}
	free(line);
	return 0;
err:
	fprintf(stderr, "%s: cannot append to %s: %s\n", prog, path, why ? why : strerror(-ret));
	free(line);
	fclose(c->f);
	c->f = NULL;
	return ret;
}

static void csv_sep(struct bench_csv *c)
{
	if (c->col++)
		fputc(',', c->f);
}

void bench_csv_str(struct bench_csv *c, const char *s)
{
	csv_sep(c);
	if (!strpbrk(s, ",\"\r\n")) {
		fputs(s, c->f);
		return;
	}
	fputc('"', c->f);
	for (; *s; s++) {
		if (*s == '"')
			fputc('"', c->f);
		fputc(*s, c->f);
	}
	fputc('"', c->f);
}

void bench_csv_u64(struct bench_csv *c, uint64_t v)
{
	csv_sep(c);
	fprintf(c->f, "%" PRIu64, v);
}

void bench_csv_num(struct bench_csv *c, bool ok, double v)
{
	csv_sep(c);
	if (ok && isfinite(v))
		fprintf(c->f, "%.6g", v);
}

void bench_csv_end_row(struct bench_csv *c)
{
	if (c->col != c->cols)
		c->bad_row = true;
	fputc('\n', c->f);
	c->col = 0;
}

int bench_csv_close(struct bench_csv *c)
{
	int ret = 0;

	if (!c->f)
		return 0;
	if (ferror(c->f))
		ret = -EIO;
	if (fclose(c->f) && !ret)
		ret = -errno;
	c->f = NULL;
	if (ret)
		fprintf(stderr, "%s: writing %s failed: %s\n", c->prog, c->path, strerror(-ret));
	else if (c->bad_row)
		fprintf(stderr, "%s: %s: a row without one field per column (a bug)\n", c->prog,
			c->path);
	return ret ? ret : c->bad_row ? -EINVAL : 0;
}
