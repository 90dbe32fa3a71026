/*
 * cuda-host.h — the CUDA backend's host-side state (C11), shared by its three host
 * files: pool.c (GPU pages under a budget), slice.c (key slices in those pages, with
 * the move to the CPU backend when they do not fit) and cuda_backend.c (the calls).
 *
 * Every CUDA runtime call is checked; a failure becomes -EIO (-ENOMEM for device
 * allocation failures) and a reason kept in the context until the next call, which
 * is what batch->why points at.
 *
 * A CUDA failure never loses a request (cuda_backend.c): the call's GPU items are
 * served by the internal CPU backend, whose slice under each stream is a mirror of
 * its keys read from the record store (never from the GPU, whose state the failed
 * call may have left half-written). An error that leaves the context unusable
 * degrades the backend: from then on every stream moves to the CPU for good.
 */
#ifndef SPARQ_CUDA_HOST_H
#define SPARQ_CUDA_HOST_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include <cuda_runtime_api.h>

#include "../backend-impl.h"
#include "cuda-impl.h"

/* GPU pages for key slices: arenas cudaMalloc'd as needed, never past the budget. */
struct cu_pool {
	uint64_t budget;      /* bytes of arenas at most */
	uint64_t reserved;    /* bytes of arenas allocated */
	void **arenas;        /* [n_arenas] */
	uint32_t n_arenas, cap_arenas;
	void **free_pages;    /* [n_free] stack of unused pages */
	uint32_t n_free, cap_free;
	uint64_t pages_out;   /* pages held by slices */
};

/* Registered host regions of record stores (zero-copy gather). */
#define CU_MAX_REGIONS 16

struct cu_region {
	const struct sparq_store *store;
	uint8_t *base;        /* host */
	size_t bytes;
	uint8_t *dev;         /* the same bytes as the GPU addresses them */
};

/* Words of the shape a captured call graph is replayed for (cuda_backend.c graph_run2). */
#define CU_GRAPH_KEY_WORDS 16

struct cu_ctx {
	struct sparq_backend pub;
	struct sparq_backend *cpu;  /* serves the streams whose slices did not fit, and fallbacks */
	int dev;
	char dev_desc[96];
	cudaStream_t st;
	cudaEvent_t ev[6];
	pthread_mutex_t mu;         /* one call at a time: pool, staging, call buffers
				     * (recursive: the append and create wrappers hold it
				     * across slice.c, which takes it too) */
	struct cu_pool pool;
	enum sparq_slice_format key_slice; /* of every slice, and of the internal CPU backend's */
	/* key-append staging: pinned host → device, then a scatter kernel */
	uint16_t *h_stage, *d_stage;
	size_t stage_bytes;
	/* per-call buffers, grown on demand and reused */
	uint8_t *h_buf;             /* pinned mirror of d_buf's leading sections */
	size_t h_cap;
	uint8_t *d_buf;
	size_t d_cap;
	struct cu_region regions[CU_MAX_REGIONS];
	uint32_t n_regions;
	uint32_t n_slices;          /* slices alive */
	uint32_t n_fallback;        /* of those, served by the CPU backend */
	bool kernels_v1;            /* unless SPARQ_CUDA_KERNELS=v2 at open: the verified kernels */
	bool rc_off;                /* SPARQ_CUDA_ROWCACHE=0 at open: no row caches */
	/* SPARQ_CUDA_GRAPHS=1 at open (v2): zero-copy calls run as one CUDA graph */
	bool graphs;
	cudaGraphExec_t graph_exec; /* the last instantiated graph, NULL: none */
	uint64_t graph_key[CU_GRAPH_KEY_WORDS]; /* the shape it was captured for */
	uint64_t graph_replays, graph_captures, graph_updates, graph_instances;
	uint64_t rc_bytes, rc_cap;  /* GPU bytes of row caches now, and at most */
	char err[192];
	cudaError_t last_err;       /* the latest cu_fail's error: tells CUDA failures from others */
	/* fallback (under mu) */
	bool degraded;              /* a sticky error: the GPU is not used any more */
	bool logged_fallback;       /* the first fallback was logged (later ones are counted) */
	uint32_t n_lost;            /* streams alive that moved to the CPU after a CUDA error */
	uint64_t n_cuda_errors, n_fb_batches, n_fb_items;
	/* test-only fault injection (sparq_backend_config.cuda_fault_*) */
	uint32_t fault_every;       /* 0 = off */
	uint32_t fault_count;       /* calls with GPU items since the last injected fault */
	bool fault_now;             /* this call's last launch reports fault_err instead */
	cudaError_t fault_err;
	void (*log)(void *user, const char *msg);
	void *log_user;
};

/* The GPU state of one stream's slice (sparq_slice.ext of the CPU slice it wraps). */
struct cu_slice {
	bool on_gpu;          /* false: the CPU slice it wraps holds the keys */
	bool i8;              /* int8 pages: [d][per_page] int8, then [per_page] fp32 scales */
	uint32_t d;
	uint32_t per_page;    /* positions per page */
	uint32_t len;         /* positions written */
	uint32_t n_pages, cap_pages;
	uint16_t **pages;     /* [n_pages] device pages, each [d][per_page] */
	/* the row cache: records fetched by recent calls (zero-copy stores, v2) */
	uint32_t rc_slots;    /* 0: none yet */
	uint32_t rc_rec_bytes;
	uint32_t *rc_tag;     /* device [rc_slots]: position + 1, 0 empty */
	uint8_t *rc_data;     /* device [rc_slots][rc_rec_bytes] */
	/* fallback state (cuda_backend.c) */
	uint32_t cpu_len;     /* on_gpu: positions [0, cpu_len) of the CPU slice mirror the keys */
	bool stale;           /* on_gpu: the GPU copy cannot be trusted (an append failed in
			       * CUDA, or came after degrading): the stream moves to the CPU,
			       * from the store, at its next call */
	bool lost;            /* !on_gpu because of a CUDA error, not for want of room */
};

/* Frees a slice's row cache (between calls: nothing reads it). */
void cu_rc_free(struct cu_ctx *cx, struct cu_slice *cs);

/* Records a failed CUDA call's reason in cx->err; returns -ENOMEM or -EIO. */
int cu_fail(struct cu_ctx *cx, cudaError_t e, const char *what);
/* Rewrites cx->pub.detail: device, pool, streams that fell back. */
void cu_update_detail(struct cu_ctx *cx);

int cu_pool_init(struct cu_pool *p, uint64_t budget);
/* A free page; -ENOSPC past the budget, -ENOMEM when the device refuses. */
int cu_pool_get(struct cu_ctx *cx, void **page);
void cu_pool_put(struct cu_pool *p, void *page);
void cu_pool_fini(struct cu_pool *p);

int cu_slice_create(void *ctx, uint32_t d, enum sparq_dtype dt, struct sparq_slice **out);
int cu_slice_write(void *ctx, struct sparq_slice *sl, uint32_t pos, uint32_t n,
		   const uint16_t *k_rows);
void cu_slice_destroy(void *ctx, struct sparq_slice *sl);

static inline struct cu_slice *cu_slice_of(const struct sparq_slice *sl)
{
	return sl->ext;
}

#endif
