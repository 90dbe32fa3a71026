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
/* Records per tile of the exact step; attend_rows' scratch holds at least g of them. */
#define SPARQ_CPU_ROW_TILE 32u

struct sparq_cpu_kernels {
	const char *isa;
	/*
	 * z[h*zs + j] = Σ_i qc[h*r + i] · K[comp[i]][j] for h < G, j < n (n a multiple
	 * of SPARQ_CPU_TILE), K the block kt of capacity cap. Returns max |z| (NaN or inf
	 * when the fp32 logits overflowed), so no separate pass has to look.
	 */
	float (*score)(const uint16_t *kt, uint32_t cap, uint32_t n, const uint32_t *comp,
		      uint32_t r, const float *qc, uint32_t G, enum sparq_dtype dt, float *z,
		      size_t zs);
	/*
	 * The int8 slice (quant.h): z[h*zs + j] = scale[j] · Σ_i qc[h*r + i] · q8[comp[i]][j],
	 * the sum in fp32 in channel order as score's, then one multiply by the scale.
	 * Same contract otherwise.
	 */
	float (*score_i8)(const int8_t *q8, const float *scale, uint32_t cap, uint32_t n,
			  const uint32_t *comp, uint32_t r, const float *qc, uint32_t G, float *z,
			  size_t zs);
	/*
	 * Σ exp(x[j] - m) over j < n whose bit j of exclude is clear (exclude may be NULL);
	 * when out is given, out[j] = exp(x[j] - m) for those j.
	 */
	double (*exp_shift)(const float *x, uint32_t n, float m, const uint64_t *exclude,
			    float *out);
	/*
	 * Exact attention over n records: y[h*d + c] = Σ_j softmax_j(qs_h · K_j) V_j[c],
	 * K_j and V_j the halves of record rows[j]; scratch holds
	 * g * max(n, SPARQ_CPU_ROW_TILE) floats.
	 */
	void (*attend_rows)(const void *const *rows, uint32_t n, uint32_t d, const float *qs,
			    uint32_t g, enum sparq_dtype dt, float *y, float *scratch);
};

extern const struct sparq_cpu_kernels sparq_cpu_kernels_portable;

struct sparq_slice;
/*
 * Writes already quantized keys (rows q_rows [n][d] and their scales) at pos..pos+n-1
 * of an int8 CPU slice: the CUDA backend's move of a slice off the GPU, which must not
 * quantize twice. -EINVAL for a slice of another format, -ENOMEM.
 */
int sparq_cpu_slice_write_q8(struct sparq_slice *sl, uint32_t pos, uint32_t n,
			     const int8_t *q_rows, const float *scale);
/* NULL where the AVX2 path is not compiled in (non-x86 builds). */
const struct sparq_cpu_kernels *sparq_cpu_kernels_avx2(void);

static inline bool sparq_excluded(const uint64_t *exclude, uint32_t j)
{
	return exclude && ((exclude[j >> 6] >> (j & 63)) & 1u);
}

/*
 * The m largest x[j] among j < n not excluded, ties to the lower position, written
 * ascending to out. Needs m <= that many eligible positions; scratch holds 3n
 * entries. No sort of the S scores: a sampled threshold and one compaction pass,
 * then a radix select over the sortable bits of what is left (select.c).
 */
void sparq_cpu_topk(const float *x, uint32_t n, const uint64_t *exclude, uint32_t m,
		    uint32_t *scratch, uint32_t *out);

#endif
