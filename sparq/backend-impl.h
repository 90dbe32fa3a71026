/*
 * backend-impl.h — what a backend implements (STYLE.md §1). Each backend fills one
 * static const ops table and exports only a constructor; backend.c holds the public
 * wrappers, which validate and then dispatch.
 *
 * The key slice is backend-owned: channel-major Kᵀ in host RAM for the CPU backend,
 * in GPU memory for CUDA. Every backend's slice starts with struct sparq_slice so the
 * wrappers can check that a stream belongs to the backend it is attended on.
 */
#ifndef SPARQ_BACKEND_IMPL_H
#define SPARQ_BACKEND_IMPL_H

#include "backend.h"

struct sparq_slice {
	const struct sparq_backend *owner;
	uint32_t d;
	enum sparq_dtype dtype;
	/* Private to the owner when it wraps another backend's slice (the CUDA backend
	 * keeps its GPU state here on a CPU slice it can fall back to); NULL otherwise. */
	void *ext;
};

struct sparq_backend_ops {
	const char *name;
	/* An empty key slice for head dimension d. */
	int (*slice_create)(void *ctx, uint32_t d, enum sparq_dtype dt, struct sparq_slice **out);
	/* Writes the keys of positions pos..pos+n-1 (rows [n][d]); pos <= current length. */
	int (*slice_write)(void *ctx, struct sparq_slice *sl, uint32_t pos, uint32_t n,
			   const uint16_t *k_rows);
	void (*slice_destroy)(void *ctx, struct sparq_slice *sl);
	/* The batch was validated by the wrapper: geometry, q finite, params resolvable. */
	int (*attend)(void *ctx, struct sparq_attend_batch *batch);
	void (*destroy)(void *ctx);
	/* Optional (NULL: nothing to report): sparq_backend_health. */
	void (*health)(void *ctx, struct sparq_backend_health *out);
};

struct sparq_backend {
	const struct sparq_backend_ops *ops;
	void *ctx;
	char detail[160];
};

/* Constructors, each filling *out; the registry in backend.c calls them. */
int sparq_cpu_backend_create(const struct sparq_backend_config *cfg, struct sparq_backend **out);
/* Fills detail with the device's description or why there is none; -ENODEV if none. */
int sparq_cuda_probe(char *detail, unsigned detail_len);
/* The CUDA backend on device 0; -ENODEV where it is not built or no device answers. */
int sparq_cuda_backend_create(const struct sparq_backend_config *cfg, struct sparq_backend **out);

/* Stream internals the backends read (stream.c). */
struct sparq_slice *sparq_stream_slice(const struct sparq_stream *s);
struct sparq_store *sparq_stream_store(const struct sparq_stream *s);
struct sparq_store_stream *sparq_stream_records(const struct sparq_stream *s);
/* The fp32 running sum of V over all positions, [d] (compensated, see stream.c). */
void sparq_stream_vsum(const struct sparq_stream *s, float *out);

#endif
