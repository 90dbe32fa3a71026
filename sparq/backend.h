/*
 * backend.h — the compute backends behind one interface (STYLE.md §1, ggml-backend):
 * an opaque sparq_backend handle, a registry that always has the CPU backend and
 * reports whether CUDA was built and answers, and the batched decode-step calls.
 *
 * One attend call handles all KV heads of one layer of one or more sequences: an item
 * is one (sequence, KV head) stream with the g query heads that share it.
 */
#ifndef SPARQ_BACKEND_H
#define SPARQ_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "sparq.h"

struct sparq_backend;
struct sparq_stream;

/*
 * The form of the key slices a backend keeps (issue 5). Scoring (SPARQ.md steps 1-3, 5)
 * is the only reader; the exact step always reads full-precision records.
 */
enum sparq_slice_format {
	SPARQ_SLICE_NATIVE = 0,  /* the stream's dtype (fp16/bf16): the paper's scoring, exact */
	SPARQ_SLICE_INT8 = 1,    /* int8 with an fp32 scale per position (quant.h): d + 4
				  * bytes a position instead of 2d, scores approximate */
};

/* "native" / "int8"; NULL for an unknown value. */
const char *sparq_slice_format_name(enum sparq_slice_format f);
/* Parses a name of sparq_slice_format_name; -EINVAL for anything else. */
int sparq_slice_format_parse(const char *s, enum sparq_slice_format *out);
/* Bytes of key slice one position of head dimension d takes in format f (0: unknown). */
uint32_t sparq_slice_position_bytes(enum sparq_slice_format f, uint32_t d, enum sparq_dtype dt);

struct sparq_backend_config {
	uint32_t n_threads;   /* CPU worker threads, 0 = one per online CPU */
	bool cpu_portable;    /* CPU: use the portable C kernels even where AVX2 runs */
	uint64_t gpu_budget_bytes; /* CUDA: key-slice pool limit, 0 = 90% of free GPU memory */
	/* every slice the backend creates (CUDA: its internal CPU backend's too, so that
	 * a fallback computes the same function); -EINVAL at open for an unknown value */
	enum sparq_slice_format key_slice;
	/*
	 * Tests only (sparqd's --cuda-fault, refused without --allow-fault-injection): every
	 * cuda_fault_every-th call that has GPU items reports a synthetic CUDA failure in place
	 * of its last kernel launch, so the fallback to the CPU can be exercised; 0 = off.
	 * cuda_fault_sticky: the failure is one that leaves the CUDA context unusable
	 * (cudaErrorLaunchFailure), so the backend degrades; else cudaErrorLaunchOutOfResources.
	 */
	uint32_t cuda_fault_every;
	bool cuda_fault_sticky;
	/* Where a backend reports what deserves a log line (CUDA: its first fallback to the
	 * CPU, degrading); called from the calling thread, NULL = silent. */
	void (*log)(void *user, const char *msg);
	void *log_user;
};

/* What a backend did during one batched call, phase by phase (wall clock). */
struct sparq_attend_stats {
	uint64_t score_ns;      /* components, approximate logits, softmax mass */
	uint64_t select_ns;     /* top-k with the local window */
	uint64_t gather_ns;     /* records fetched from the store */
	uint64_t exact_ns;      /* exact attention on the rows, blend */
	uint64_t slice_bytes;   /* key-slice bytes read by scoring */
	uint64_t record_bytes;  /* record bytes fetched from the store */
	uint32_t cpu_items;     /* CUDA: items served by its internal CPU backend (the slice did
				 * not fit, or fallback_items) */
	uint32_t fallback_items; /* CUDA: of those, items the GPU should have served, moved to
				  * the CPU by a CUDA error (in this call or an earlier one) */
	uint64_t cache_rows;    /* CUDA: selected rows looked up in its GPU row cache */
	uint64_t cache_hits;    /* of those, found there: read from GPU memory, not the store */
	uint32_t graph_calls;   /* CUDA, SPARQ_CUDA_GRAPHS=1: calls run as one CUDA graph launch */
	uint32_t graph_replays; /* of those, replayed as captured (no new capture or update) */
};

struct sparq_attend_item {
	struct sparq_stream *stream;  /* S = its length when the call starts */
	uint32_t g;                   /* query heads sharing the KV head */
	const float *q;               /* [g][d] post-RoPE queries, finite */
	const uint64_t *exclude;      /* [ceil(S/64)] bit j set: position j masked; NULL = none */
	struct sparq_params params;
	float *y;                     /* [g][d] out: attention output (NULL in select mode) */
	float *alpha;                 /* [g] out, optional: mass covered, 1 when not blended */
	uint32_t *sel;                /* [sel_cap] out, optional: selected positions, ascending */
	uint32_t sel_cap;             /* must be >= k when sel is given */
	uint32_t *comp;               /* [r] out, optional: chosen components, ascending */
	uint32_t n_sel;               /* out: rows selected */
	struct sparq_resolved used;   /* out: r, k, l, blend as applied */
};

enum sparq_attend_mode {
	SPARQ_ATTEND_FULL = 0,     /* y = blend of exact attention on the selected rows */
	SPARQ_ATTEND_SELECT = 1,   /* selection and alpha only, for engines that attend themselves */
};

struct sparq_attend_batch {
	struct sparq_attend_item *items;
	uint32_t n;
	enum sparq_attend_mode mode;
	struct sparq_attend_stats stats;  /* out, accumulated */
	int32_t bad_item;                 /* out: index of the failing item, -1 if none */
	const char *why;                  /* out: reason of a failure, static string */
};

/* A backend the registry knows of, and whether it can be opened here. */
struct sparq_backend_info {
	const char *name;
	bool available;
	char detail[160];   /* "AVX2+F16C+FMA, 2 threads" / "not built" / "no device" */
};

/*
 * What a backend recovered from over its life (all zero for the CPU backend). The CUDA
 * backend serves a call whose GPU part failed with a CUDA error on its internal CPU
 * backend; after an error that leaves the CUDA context unusable it is degraded and
 * serves every later call there.
 */
struct sparq_backend_health {
	uint64_t cuda_errors;       /* CUDA failures in calls and appends, synthetic ones included */
	uint64_t fallback_batches;  /* calls with items moved to the CPU by a CUDA error */
	uint64_t fallback_items;    /* those items */
	uint32_t streams_lost;      /* streams alive now that moved to the CPU for good after one */
	bool degraded;              /* the context is unusable: every call runs on the CPU */
};

/* Fills up to max entries (CPU first); returns how many backends are known. */
int sparq_backend_list(struct sparq_backend_info *out, int max);

/*
 * Opens a backend by name ("cpu", "cuda"); cfg may be NULL. Returns -ENOENT for an
 * unknown name, -EINVAL for an unknown cfg->key_slice, -ENODEV when it is not built
 * or no device answers, -ENOMEM.
 */
int sparq_backend_open(const char *name, const struct sparq_backend_config *cfg,
		       struct sparq_backend **out);
void sparq_backend_close(struct sparq_backend *be);
const char *sparq_backend_name(const struct sparq_backend *be);
/* A consistent snapshot of be's health counters; safe while other threads use be. */
void sparq_backend_health(struct sparq_backend *be, struct sparq_backend_health *out);

/*
 * Runs the decode step for every item (SPARQ.md steps 1-7). Items are validated
 * before any work: -EINVAL for NaN/Inf in q, bad parameters, a geometry that does not
 * match the stream, an item whose streams belong to another backend, no visible
 * position; -ERANGE when finite inputs overflow the fp32 logits; store errors as the
 * store returns them. On failure batch->bad_item and batch->why name the cause and
 * the outputs of the batch are unspecified.
 */
int sparq_backend_attend(struct sparq_backend *be, struct sparq_attend_batch *batch);

#endif
