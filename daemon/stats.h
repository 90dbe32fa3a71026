/*
 * stats.h — per-operation counters and latency quantiles for the Stats reply. Each
 * operation keeps a fixed log-linear histogram (4 buckets per power of two, 1 ns to
 * ~18 min): recording is a few relaxed atomic adds from any worker, p50/p99 are read
 * off the buckets (upper bound of the bucket, within 19% of the true value).
 */
#ifndef SPARQD_STATS_H
#define SPARQD_STATS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "request.h"

#define SD_HIST_SUB 4u
#define SD_HIST_BUCKETS (40u * SD_HIST_SUB)

struct sd_op_stats {
	_Atomic uint64_t count, errors;
	_Atomic uint64_t hist[SD_HIST_BUCKETS];
};

struct sd_stats {
	struct sd_op_stats ops[SD_OP_COUNT];
	uint64_t start_ns;   /* CLOCK_MONOTONIC at start */
};

uint64_t sd_now_ns(void);
void sd_stats_init(struct sd_stats *st);
/* One finished request of op: err 0 or -errno, ns from decode to reply. */
void sd_stats_record(struct sd_stats *st, enum sd_op op, int err, uint64_t ns);
/* The q-quantile (0 < q <= 1) of op's latencies in ns; 0 when none was recorded. */
uint64_t sd_stats_quantile(const struct sd_stats *st, enum sd_op op, double q);

/*
 * The Stats reply's backend detail: base (what the backend said at open), preceded,
 * once the backend has met a CUDA error, by its live health (sparq_backend_health):
 * "[DEGRADED (all on CPU); ]CUDA errors E, CPU fallback B calls/I items, L streams
 * moved; " — first, because clients keep only 160 bytes. Cut to fit len.
 */
void sd_stats_backend_detail(struct sparq_backend *be, const char *base, char *out, size_t len);

#endif
