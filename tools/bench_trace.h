/*
 * bench_trace.h — mode `trace` of sparq-bench (bench_trace.c, issue 7): replays the
 * per-layer q/K/V traces `tools/eval run --dump-traces DIR` writes from a real model's
 * decode through a backend, step by step, so that speed, error, top-k recall and the
 * overlap of consecutive selections (the hit rate of a row cache) are measured on real
 * attention patterns rather than on seeded random data.
 *
 * A trace directory holds meta.json (n_layers, n_q_heads, n_kv_heads, head_dim,
 * prefill, steps, optionally q_positions) and per layer L: layerLL_q.npy float32
 * [steps][n_q][d], the post-RoPE query of each decode step, and layerLL_k.npy /
 * layerLL_v.npy float16 [S][n_kv][d], the keys and values of the whole sequence.
 * Step i's query sits at position q_positions[i] (default prefill + i) and attends
 * over positions 0 .. q_positions[i] inclusive; query heads h·g .. h·g+g-1 share KV
 * head h (g = n_q / n_kv).
 *
 * The library half (trace_open .. trace_replay_layer) is what tests/test_trace.c
 * drives; bench_trace_main is the command line on top of it.
 */
#ifndef SPARQ_BENCH_TRACE_H
#define SPARQ_BENCH_TRACE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "sparq.h"

/* Steps back a row cache keeps rows for, in the wider of the two overlap figures. */
#define TRACE_OVERLAP_WINDOW 4u

/* A trace directory's geometry, read from meta.json and checked against the files. */
struct trace_meta {
	uint32_t n_layers, n_q, n_kv, d, g;
	uint32_t prefill, steps;
	uint32_t S;               /* positions in the K/V files */
	uint32_t *q_pos;          /* [steps] strictly increasing, < S */
};

/* One layer's arrays, validated (shapes as trace_meta says, every value finite). */
struct trace_layer {
	uint32_t layer;
	float *q;                 /* [steps][n_q][d] */
	uint16_t *k, *v;          /* [S][n_kv][d] fp16 bits */
};

/*
 * Reads dir/meta.json and the .npy headers of the layers in sel[0..n_sel) (n_sel = 0:
 * every layer) and checks them against each other: n_q a multiple of n_kv, a head
 * geometry the backends take, q [steps][n_q][d] float32 and K, V [S][n_kv][d] float16
 * in every layer, the same S everywhere, steps < S, the query positions inside S. Data
 * is not read (trace_layer_load checks it). Returns 0, -EINVAL for a trace that is not
 * one (err says which file and what), -ENOENT and other open errors for missing files,
 * -EIO, -ENOMEM; err (err_len bytes) receives the reason. trace_meta_free releases m
 * on success; on failure m holds nothing.
 */
int trace_open(const char *dir, const uint32_t *sel, uint32_t n_sel, struct trace_meta *m,
	       char *err, size_t err_len);
void trace_meta_free(struct trace_meta *m);

/*
 * Reads one layer's three arrays and checks their shapes against m and every value
 * for NaN/Inf. The errors of trace_open; on failure L holds nothing.
 */
int trace_layer_load(const char *dir, const struct trace_meta *m, uint32_t layer,
		     struct trace_layer *L, char *err, size_t err_len);
void trace_layer_free(struct trace_layer *L);

struct trace_replay_config {
	struct sparq_params params;   /* the SparQ step; its k, resolved per step, sizes n_sel */
	uint32_t threads;             /* for the exact scores of the recall, >= 1 */
	bool keep_sel;                /* fill trace_layer_result.sel/n_sel for every step */
	bool keep_y;                  /* fill trace_layer_result.y/y_dense for every step */
};

/* What one layer's replay measured. Sums are over steps (and KV heads where noted). */
struct trace_layer_result {
	uint32_t steps, n_kv;
	uint64_t *sparq_ns;           /* [steps] wall time of the batched SparQ call */
	uint64_t *dense_ns;           /* [steps] wall time of the batched dense call (k >= S) */
	double *rel_err;              /* [steps] ||y - y_dense|| / ||y_dense||, all q heads */
	/* top-k recall: |exact top-n_sel ∩ selection| / n_sel, per (step, KV head) whose
	 * selection does not cover every visible row; exact = group-summed softmax weights */
	double recall_sum;
	uint64_t recall_n;
	/* selected rows of steps 1.. (lookups of a row cache), and of those the rows also
	 * selected at the previous step / at one of the TRACE_OVERLAP_WINDOW previous ones,
	 * summed over KV heads */
	uint64_t overlap_rows, overlap_prev, overlap_window;
	/* the same two counts for the rows outside the local window (positions before the
	 * last l + 1, which every step selects anyway): what scoring chose */
	uint64_t overlap_rows_scored, overlap_prev_scored;
	uint64_t slice_bytes, record_bytes;   /* SparQ calls, backend stats */
	uint64_t dense_bytes;                 /* dense calls: slice + record bytes */
	uint64_t cache_rows, cache_hits;      /* backend row cache (CUDA v2), SparQ calls */
	struct sparq_resolved used;           /* as KV head 0's item applied it, last step */
	uint32_t sel_cap;                     /* row stride of sel */
	uint32_t *sel;                        /* keep_sel: [steps][n_kv][sel_cap], ascending */
	uint32_t *n_sel;                      /* keep_sel: [steps][n_kv] */
	float *y, *y_dense;                   /* keep_y: [steps][n_q][d] SparQ and dense outputs */
};

/*
 * Replays layer L on be: one stream per KV head (fp16 records in a heap store), the
 * positions before the first query appended in bulk, then per step the rows up to
 * the query's position appended and two batched calls timed, SparQ with cfg->params
 * and dense (k >= S, the exact answer), followed by the relative error, recall and
 * overlap. Returns 0, -EINVAL for bad parameters, the backend's or store's error
 * (err names the step and the reason), -ENOMEM. On failure res holds nothing;
 * trace_layer_result_free releases it after success.
 */
int trace_replay_layer(struct sparq_backend *be, const struct trace_meta *m,
		       const struct trace_layer *L, const struct trace_replay_config *cfg,
		       struct trace_layer_result *res, char *err, size_t err_len);
void trace_layer_result_free(struct trace_layer_result *res);

/* Runs the mode on argv (the arguments after "trace"); returns the exit status:
 * 0 success, 1 runtime failure, 2 usage error or a trace that does not validate. */
int bench_trace_main(int argc, char **argv);

#endif
