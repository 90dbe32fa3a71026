/*
 * cpu-impl.h — the CPU backend's inner loops, behind a table chosen once at backend
 * creation: AVX2+FMA+F16C where the processor has them, portable C everywhere.
 * Both tables compute the same function (the conformance suite runs both).
 *
 * Key-slice blocks are channel-major: kt[c * cap + j] is channel c of position j of
 * the block, so the r chosen channels are r contiguous runs (SPARQ.md).
 */
#ifndef SPARQ_CPU_IMPL_H
#define SPARQ_CPU_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../sparq.h"

/* Positions a scoring kernel handles per step; block capacities are multiples of it. */
#define SPARQ_CPU_TILE 64u

struct sparq_cpu_kernels {
	const char *isa;
	/*
	 * z[h*zs + j] = Σ_i qc[h*r + i] · K[comp[i]][j] for h < G, j < n (n a multiple
	 * of SPARQ_CPU_TILE), K the block kt of capacity cap.
	 */
	void (*score)(const uint16_t *kt, uint32_t cap, uint32_t n, const uint32_t *comp,
		      uint32_t r, const float *qc, uint32_t G, enum sparq_dtype dt, float *z,
		      size_t zs);
	/*
	 * Σ exp(x[j] - m) over j < n whose bit j of exclude is clear (exclude may be NULL);
	 * when out is given, out[j] = exp(x[j] - m) for those j.
	 */
	double (*exp_shift)(const float *x, uint32_t n, float m, const uint64_t *exclude,
			    float *out);
	/* out[h*n + j] = Σ_c qs[h*d + c] · K_j[c], K_j the first half of record rows[j]. */
	void (*logits)(const void *const *rows, uint32_t n, uint32_t d, const float *qs,
		       uint32_t g, enum sparq_dtype dt, float *out);
	/* y[h*d + c] += Σ_j w[h*n + j] · V_j[c], V_j the second half of record rows[j]. */
	void (*accum_v)(const void *const *rows, uint32_t n, uint32_t d, const float *w,
			uint32_t g, enum sparq_dtype dt, float *y);
};

extern const struct sparq_cpu_kernels sparq_cpu_kernels_portable;
/* NULL where the AVX2 path is not compiled in (non-x86 builds). */
const struct sparq_cpu_kernels *sparq_cpu_kernels_avx2(void);

static inline bool sparq_excluded(const uint64_t *exclude, uint32_t j)
{
	return exclude && ((exclude[j >> 6] >> (j & 63)) & 1u);
}

/*
 * The m largest x[j] among j < n not excluded, ties to the lower position, written
 * ascending to out. Needs m <= that many eligible positions; scratch holds n
 * entries. A radix select over the sortable bits of x: two passes over x whatever m
 * is, no sort of the S scores.
 */
void sparq_cpu_topk(const float *x, uint32_t n, const uint64_t *exclude, uint32_t m,
		    uint32_t *scratch, uint32_t *out);

#endif
