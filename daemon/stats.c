/*
 * stats.c — the latency histogram (stats.h). Bucket b covers values whose top bit is
 * b / SD_HIST_SUB and whose next two bits are b % SD_HIST_SUB: log-linear, so a fixed
 * 160 words cover nanoseconds to minutes with bounded relative error.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "stats.h"

uint64_t sd_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void sd_stats_init(struct sd_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->start_ns = sd_now_ns();
}

static unsigned bucket_of(uint64_t ns)
{
	unsigned top, sub;

	if (ns < SD_HIST_SUB)
		return (unsigned)ns;
	top = 63u - (unsigned)__builtin_clzll(ns);
	sub = (unsigned)(ns >> (top - 2)) & (SD_HIST_SUB - 1);
	if (top >= SD_HIST_BUCKETS / SD_HIST_SUB)
		return SD_HIST_BUCKETS - 1;
	return top * SD_HIST_SUB + sub;
}

/* The largest value that falls into bucket b. */
static uint64_t bucket_top(unsigned b)
{
	unsigned top = b / SD_HIST_SUB, sub = b % SD_HIST_SUB;

	if (top < 2)
		return b;
	return ((uint64_t)(SD_HIST_SUB + sub + 1) << (top - 2)) - 1;
}

void sd_stats_record(struct sd_stats *st, enum sd_op op, int err, uint64_t ns)
{
	struct sd_op_stats *o;

	if ((unsigned)op >= SD_OP_COUNT)
		op = SD_OP_NONE;
	o = &st->ops[op];
	atomic_fetch_add_explicit(&o->count, 1, memory_order_relaxed);
	if (err)
		atomic_fetch_add_explicit(&o->errors, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&o->hist[bucket_of(ns)], 1, memory_order_relaxed);
}

uint64_t sd_stats_quantile(const struct sd_stats *st, enum sd_op op, double q)
{
	const struct sd_op_stats *o = &st->ops[op];
	uint64_t total = 0, seen = 0, want;

	for (unsigned b = 0; b < SD_HIST_BUCKETS; b++)
		total += atomic_load_explicit(&o->hist[b], memory_order_relaxed);
	if (total == 0)
		return 0;
	want = (uint64_t)(q * (double)total + 0.999999);
	if (want == 0)
		want = 1;
	for (unsigned b = 0; b < SD_HIST_BUCKETS; b++) {
		seen += atomic_load_explicit(&o->hist[b], memory_order_relaxed);
		if (seen >= want)
			return bucket_top(b);
	}
	return bucket_top(SD_HIST_BUCKETS - 1);
}

void sd_stats_backend_detail(struct sparq_backend *be, const char *base, char *out, size_t len)
{
	struct sparq_backend_health h;

	sparq_backend_health(be, &h);
	if (!h.cuda_errors && !h.degraded) {
		snprintf(out, len, "%s", base);
		return;
	}
	/* first: clients keep 160 bytes of it (libsparq.h) and the base is long */
	snprintf(out, len, "%sCUDA errors %llu, CPU fallback %llu calls/%llu items, %u streams "
		 "moved; %s", h.degraded ? "DEGRADED (all on CPU); " : "",
		 (unsigned long long)h.cuda_errors, (unsigned long long)h.fallback_batches,
		 (unsigned long long)h.fallback_items, h.streams_lost, base);
}
