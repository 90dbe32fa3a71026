/*
 * test_trace.c — sparq-bench trace's replay (tools/bench_trace.h) on a synthetic trace
 * this test writes in the layout tools/eval dumps: 2 layers, 2 KV heads with g = 2
 * query heads each, d = 16, S = 200, 20 decode steps after a prefill of 180. Keys
 * hold a few strong positions per (layer, KV head) aligned with that head's queries,
 * so attention is peaked as in a trained model.
 *
 * Checks, through the library calls the mode runs (no subprocess):
 *   - k >= S: SparQ's y equals dense bit for bit (error 0), every visible row is
 *     selected, no recall is counted;
 *   - small k: error > 0, the strong positions of the right KV head are selected,
 *     recall in [0, 1] and equal to a brute-force recall (full sort of the exact
 *     group-summed softmax weights), and the overlap counters equal a brute-force count
 *     over the selections the replay hands back;
 *   - malformed traces fail cleanly with the file and the fault named: a missing layer
 *     file, mismatched shapes (between layers, q against meta, V against K), a wrong
 *     dtype, NaN in q and Inf in K, bad meta.json, a layer out of range; and the
 *     command line exits 2 on them.
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_trace.h"
#include "helpers.h"

#define LAYERS 2u
#define NKV 2u
#define G 2u
#define NQ (NKV * G)
#define D 16u
#define SEQ 200u
#define STEPS 20u
#define PREFILL (SEQ - STEPS)
#define STRONG 4u

static char dir[1024];
static float qdata[LAYERS][STEPS][NQ][D];
static uint16_t kdata[LAYERS][SEQ][NKV][D], vdata[LAYERS][SEQ][NKV][D];
static uint32_t strong[LAYERS][NKV][STRONG];

static const char *path_of(const char *name)
{
	static char buf[1300];

	snprintf(buf, sizeof(buf), "%s/%s", dir, name);
	return buf;
}

/* A .npy the way numpy writes it: format 1.0, header padded to 64 bytes. */
static void write_npy(const char *name, const char *descr, uint32_t d0, uint32_t d1, uint32_t d2,
		      const void *data, size_t bytes)
{
	char hdr[256];
	unsigned char pre[10] = { 0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0 };
	int n = snprintf(hdr, sizeof(hdr), "{'descr': '%s', 'fortran_order': False, 'shape': "
			 "(%u, %u, %u), }", descr, d0, d1, d2);
	size_t total = ((10 + (size_t)n + 1 + 63) / 64) * 64 - 10;
	FILE *f = fopen(path_of(name), "wb");

	T_CHECK(f, "cannot create %s", name);
	memset(hdr + n, ' ', total - (size_t)n - 1);
	hdr[total - 1] = '\n';
	pre[8] = (unsigned char)total;
	pre[9] = (unsigned char)(total >> 8);
	T_CHECK(fwrite(pre, 1, 10, f) == 10 && fwrite(hdr, 1, total, f) == total &&
		fwrite(data, 1, bytes, f) == bytes && fclose(f) == 0, "cannot write %s", name);
}

static void write_meta(const char *extra, uint32_t n_q, uint32_t n_kv, uint32_t steps)
{
	FILE *f = fopen(path_of("meta.json"), "w");

	T_CHECK(f, "meta.json");
	fprintf(f, "{\n \"model\": \"synthetic \\\"peaked\\\"\",\n \"mode\": \"1/8\",\n"
		" \"n_layers\": %u,\n \"n_q_heads\": %u,\n \"n_kv_heads\": %u,\n \"head_dim\": %u,\n"
		" \"prefill\": %u,\n \"steps\": %u,\n \"q_positions\": [", LAYERS, n_q, n_kv, D,
		PREFILL, steps);
	for (uint32_t i = 0; i < steps; i++)
		fprintf(f, "%s%u", i ? ", " : "", PREFILL + i);
	fprintf(f, "],\n \"note\": {\"nested\": [1, 2.5, null, true]}%s\n}\n", extra);
	T_CHECK(fclose(f) == 0, "meta.json");
}

static void write_layer(uint32_t l)
{
	char name[32];

	snprintf(name, sizeof(name), "layer%02u_q.npy", l);
	write_npy(name, "<f4", STEPS, NQ, D, qdata[l], sizeof(qdata[l]));
	snprintf(name, sizeof(name), "layer%02u_k.npy", l);
	write_npy(name, "<f2", SEQ, NKV, D, kdata[l], sizeof(kdata[l]));
	snprintf(name, sizeof(name), "layer%02u_v.npy", l);
	write_npy(name, "<f2", SEQ, NKV, D, vdata[l], sizeof(vdata[l]));
}

static void write_good(void)
{
	write_meta("", NQ, NKV, STEPS);
	for (uint32_t l = 0; l < LAYERS; l++)
		write_layer(l);
}

/*
 * Per (layer, KV head) a direction u: its g query heads are 4u plus noise, STRONG keys
 * are 8u (logit +8 over the N(0, 0.5²) of the others); one of them lies in the decoded
 * part, so the set of strong rows grows during the replay.
 */
static void make_data(void)
{
	struct t_rng rng = { 7 };

	for (uint32_t l = 0; l < LAYERS; l++) {
		for (uint32_t h = 0; h < NKV; h++) {
			float u[D], norm = 0.0f;
			for (uint32_t c = 0; c < D; c++) {
				u[c] = (float)t_normal(&rng);
				norm += u[c] * u[c];
			}
			for (uint32_t c = 0; c < D; c++)
				u[c] /= sqrtf(norm);
			for (uint32_t j = 0; j < SEQ; j++)
				for (uint32_t c = 0; c < D; c++) {
					kdata[l][j][h][c] = sparq_f32_to_f16(0.5f * (float)t_normal(&rng));
					vdata[l][j][h][c] = sparq_f32_to_f16((float)t_normal(&rng));
				}
			for (uint32_t s = 0; s < STRONG; s++) {
				/* distinct per head and layer; the last one decoded at step 5 */
				uint32_t j = s + 1 < STRONG ? 11 + 53 * s + 7 * h + 3 * l : PREFILL + 5;
				strong[l][h][s] = j;
				for (uint32_t c = 0; c < D; c++)
					kdata[l][j][h][c] = sparq_f32_to_f16(8.0f * u[c]);
			}
			for (uint32_t i = 0; i < STEPS; i++)
				for (uint32_t qh = 0; qh < G; qh++)
					for (uint32_t c = 0; c < D; c++)
						qdata[l][i][h * G + qh][c] =
							4.0f * u[c] + 0.3f * (float)t_normal(&rng);
		}
	}
}

/* The recall the replay should report, by a full sort of the exact weights. */
static double mass_of[SEQ];

static int by_mass(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	if (mass_of[x] != mass_of[y])
		return mass_of[x] > mass_of[y] ? -1 : 1;
	return x < y ? -1 : (x > y);
}

static void brute_recall(uint32_t l, const struct trace_layer_result *res, double *sum,
			 uint64_t *n)
{
	*sum = 0.0;
	*n = 0;
	for (uint32_t i = 0; i < STEPS; i++) {
		uint32_t len = PREFILL + i + 1;
		for (uint32_t h = 0; h < NKV; h++) {
			const uint32_t *sel = res->sel + ((size_t)i * NKV + h) * res->sel_cap;
			uint32_t ns = res->n_sel[i * NKV + h], idx[SEQ], hits = 0;

			if (ns >= len)
				continue;
			memset(mass_of, 0, sizeof(mass_of));
			for (uint32_t qh = 0; qh < G; qh++) {
				double z[SEQ], zmax = -INFINITY, den = 0.0;
				for (uint32_t j = 0; j < len; j++) {
					z[j] = 0.0;
					for (uint32_t c = 0; c < D; c++)
						z[j] += (double)qdata[l][i][h * G + qh][c] *
							sparq_f16_to_f32(kdata[l][j][h][c]);
					z[j] /= sqrt((double)D);
					zmax = fmax(zmax, z[j]);
				}
				for (uint32_t j = 0; j < len; j++)
					den += exp(z[j] - zmax);
				for (uint32_t j = 0; j < len; j++)
					mass_of[j] += exp(z[j] - zmax) / den;
			}
			for (uint32_t j = 0; j < len; j++)
				idx[j] = j;
			qsort(idx, len, sizeof(idx[0]), by_mass);
			for (uint32_t t = 0; t < ns; t++)
				for (uint32_t s = 0; s < ns; s++)
					hits += idx[t] == sel[s];
			*sum += (double)hits / ns;
			(*n)++;
		}
	}
}

/*
 * Dense attention in double for every step and query head, from the arrays the test
 * wrote: query head qh of KV head qh / G over positions 0 .. PREFILL + i. Returns the
 * largest relative error of the replay's dense outputs against it.
 */
static double dense_check(uint32_t l, const float *y_dense)
{
	double worst = 0.0;

	for (uint32_t i = 0; i < STEPS; i++) {
		uint32_t len = PREFILL + i + 1;
		for (uint32_t qh = 0; qh < NQ; qh++) {
			uint32_t h = qh / G;
			double z[SEQ], zmax = -INFINITY, den = 0.0, y[D] = { 0 }, num = 0.0, nrm = 0.0;
			for (uint32_t j = 0; j < len; j++) {
				z[j] = 0.0;
				for (uint32_t c = 0; c < D; c++)
					z[j] += (double)qdata[l][i][qh][c] * sparq_f16_to_f32(kdata[l][j][h][c]);
				z[j] /= sqrt((double)D);
				zmax = fmax(zmax, z[j]);
			}
			for (uint32_t j = 0; j < len; j++) {
				double w = exp(z[j] - zmax);
				den += w;
				for (uint32_t c = 0; c < D; c++)
					y[c] += w * sparq_f16_to_f32(vdata[l][j][h][c]);
			}
			for (uint32_t c = 0; c < D; c++) {
				double e = y[c] / den - y_dense[((size_t)i * NQ + qh) * D + c];
				num += e * e;
				nrm += (y[c] / den) * (y[c] / den);
			}
			worst = fmax(worst, sqrt(num / nrm));
		}
	}
	return worst;
}

/* Overlap counters from the selections alone: sets compared step against step. */
static void brute_overlap(const struct trace_layer_result *res, uint64_t *rows, uint64_t *prev,
			  uint64_t *win, uint64_t *sc_rows, uint64_t *sc_prev)
{
	*rows = *prev = *win = *sc_rows = *sc_prev = 0;
	for (uint32_t i = 1; i < STEPS; i++) {
		for (uint32_t h = 0; h < NKV; h++) {
			const uint32_t *sel = res->sel + ((size_t)i * NKV + h) * res->sel_cap;
			uint32_t ns = res->n_sel[i * NKV + h];
			for (uint32_t s = 0; s < ns; s++) {
				bool in_prev = false, in_win = false;
				for (uint32_t back = 1; back <= TRACE_OVERLAP_WINDOW && back <= i; back++) {
					const uint32_t *o = res->sel + ((size_t)(i - back) * NKV + h) *
								       res->sel_cap;
					uint32_t no = res->n_sel[(i - back) * NKV + h];
					bool found = false;
					for (uint32_t t = 0; t < no; t++)
						found |= o[t] == sel[s];
					in_prev |= found && back == 1;
					in_win |= found;
				}
				(*rows)++;
				*prev += in_prev;
				*win += in_win;
				/* scored rows: before the current position's window of l + 1 */
				if (sel[s] + res->used.l + 1 < PREFILL + i + 1) {
					(*sc_rows)++;
					*sc_prev += in_prev;
				}
			}
		}
	}
}

static void check_selections(const struct trace_layer_result *res, uint32_t k)
{
	for (uint32_t i = 0; i < STEPS; i++) {
		uint32_t len = PREFILL + i + 1;
		for (uint32_t h = 0; h < NKV; h++) {
			const uint32_t *sel = res->sel + ((size_t)i * NKV + h) * res->sel_cap;
			uint32_t ns = res->n_sel[i * NKV + h];
			T_CHECK(ns == (k < len ? k : len), "step %u head %u: %u rows selected", i, h, ns);
			for (uint32_t s = 0; s < ns; s++)
				T_CHECK(sel[s] < len && (s == 0 || sel[s] > sel[s - 1]),
					"step %u head %u: selection not ascending inside the prefix", i, h);
		}
	}
}

static void test_replay(struct sparq_backend *be)
{
	char err[1024] = "";
	struct trace_meta m;
	int ret = trace_open(dir, NULL, 0, &m, err, sizeof(err));

	T_CHECK(ret == 0, "trace_open: %s", err);
	T_CHECK(m.n_layers == LAYERS && m.n_q == NQ && m.n_kv == NKV && m.g == G && m.d == D &&
		m.S == SEQ && m.steps == STEPS && m.q_pos[0] == PREFILL &&
		m.q_pos[STEPS - 1] == SEQ - 1, "trace geometry");

	for (uint32_t l = 0; l < LAYERS; l++) {
		struct trace_layer L;
		struct trace_layer_result res;
		uint64_t rows, prev, win, sc_rows, sc_prev, rn;
		double rsum;

		T_CHECK(trace_layer_load(dir, &m, l, &L, err, sizeof(err)) == 0, "load: %s", err);

		/* k >= S: the exact path on both sides, bit for bit */
		struct trace_replay_config exact = {
			.params = { .r = 4, .k = SEQ, .l = -1 }, .threads = 2, .keep_sel = true,
			.keep_y = true,
		};
		ret = trace_replay_layer(be, &m, &L, &exact, &res, err, sizeof(err));
		T_CHECK(ret == 0, "layer %u exact replay: %s", l, err);
		/* the reference answer itself: right heads, right prefix, right rows */
		double worst = dense_check(l, res.y_dense);
		T_CHECK(worst < 1e-5, "layer %u: dense output off the double reference by %g", l, worst);
		T_CHECK(memcmp(res.y, res.y_dense, (size_t)STEPS * NQ * D * sizeof(float)) == 0,
			"layer %u: k >= S output differs from dense", l);
		for (uint32_t i = 0; i < STEPS; i++)
			T_CHECK(res.rel_err[i] == 0.0, "layer %u step %u: k >= S error %g", l, i,
				res.rel_err[i]);
		T_CHECK(res.recall_n == 0, "k >= S counted recall");
		check_selections(&res, SEQ);
		brute_overlap(&res, &rows, &prev, &win, &sc_rows, &sc_prev);
		T_CHECK(rows == res.overlap_rows && prev == res.overlap_prev &&
			win == res.overlap_window && sc_rows == res.overlap_rows_scored &&
			sc_prev == res.overlap_prev_scored, "exact: overlap %lu/%lu/%lu, brute force %lu/%lu/%lu",
			(unsigned long)res.overlap_rows, (unsigned long)res.overlap_prev,
			(unsigned long)res.overlap_window, (unsigned long)rows, (unsigned long)prev,
			(unsigned long)win);
		/* every row of step t-1 is selected again, the new one is not */
		T_CHECK(res.overlap_rows - res.overlap_prev == (uint64_t)(STEPS - 1) * NKV,
			"exact: misses %lu", (unsigned long)(res.overlap_rows - res.overlap_prev));
		T_CHECK(res.dense_bytes > 0 && res.record_bytes == res.dense_bytes,
			"exact: SparQ read %lu record bytes, dense %lu", (unsigned long)res.record_bytes,
			(unsigned long)res.dense_bytes);
		trace_layer_result_free(&res);

		/* small k: a real selection */
		struct trace_replay_config sparse = {
			.params = { .r = 4, .k = 16, .l = 4 }, .threads = 2, .keep_sel = true,
		};
		ret = trace_replay_layer(be, &m, &L, &sparse, &res, err, sizeof(err));
		T_CHECK(ret == 0, "layer %u sparse replay: %s", l, err);
		double err_sum = 0.0;
		for (uint32_t i = 0; i < STEPS; i++) {
			T_CHECK(res.rel_err[i] >= 0.0 && isfinite(res.rel_err[i]), "error %g",
				res.rel_err[i]);
			err_sum += res.rel_err[i];
		}
		T_CHECK(err_sum > 0.0, "layer %u: k = 16 reproduced dense exactly", l);
		T_CHECK(res.used.r == 4 && res.used.k == 16 && res.used.l == 4, "params as applied");
		check_selections(&res, 16);
		for (uint32_t i = 0; i < STEPS; i++)
			for (uint32_t h = 0; h < NKV; h++)
				for (uint32_t s = 0; s < STRONG; s++) {
					uint32_t j = strong[l][h][s], ns = res.n_sel[i * NKV + h];
					const uint32_t *sel = res.sel + ((size_t)i * NKV + h) * res.sel_cap;
					bool found = false;
					if (j > PREFILL + i)
						continue;
					for (uint32_t t = 0; t < ns; t++)
						found |= sel[t] == j;
					T_CHECK(found, "layer %u step %u head %u: strong row %u not selected",
						l, i, h, j);
				}
		T_CHECK(res.recall_n == (uint64_t)STEPS * NKV, "recall counted %lu times",
			(unsigned long)res.recall_n);
		double recall = res.recall_sum / (double)res.recall_n;
		T_CHECK(recall >= 0.0 && recall <= 1.0, "recall %g", recall);
		brute_recall(l, &res, &rsum, &rn);
		T_CHECK(rn == res.recall_n && fabs(rsum - res.recall_sum) < 1e-9,
			"layer %u: recall sum %.12f over %lu, brute force %.12f over %lu", l,
			res.recall_sum, (unsigned long)res.recall_n, rsum, (unsigned long)rn);
		brute_overlap(&res, &rows, &prev, &win, &sc_rows, &sc_prev);
		T_CHECK(rows == res.overlap_rows && prev == res.overlap_prev &&
			win == res.overlap_window && sc_rows == res.overlap_rows_scored &&
			sc_prev == res.overlap_prev_scored, "sparse: overlap %lu/%lu/%lu, brute force %lu/%lu/%lu",
			(unsigned long)res.overlap_rows, (unsigned long)res.overlap_prev,
			(unsigned long)res.overlap_window, (unsigned long)rows, (unsigned long)prev,
			(unsigned long)win);
		/* k = 16, l = 4: 11 rows of each step are scoring's */
		T_CHECK(rows == (uint64_t)(STEPS - 1) * NKV * 16 && prev <= win && win <= rows &&
			prev > 0 && sc_rows == (uint64_t)(STEPS - 1) * NKV * 11 && sc_prev <= prev,
			"overlap counts %lu %lu %lu", (unsigned long)rows,
			(unsigned long)prev, (unsigned long)win);
		T_CHECK(res.slice_bytes > 0 && res.record_bytes < res.dense_bytes,
			"sparse: bytes %lu + %lu vs dense %lu", (unsigned long)res.slice_bytes,
			(unsigned long)res.record_bytes, (unsigned long)res.dense_bytes);
		printf("layer %u, k = 16: error mean %.4f, recall %.4f, overlap t-1 %.4f, last %u %.4f\n",
		       l, err_sum / STEPS, recall, (double)prev / rows, TRACE_OVERLAP_WINDOW,
		       (double)win / rows);
		trace_layer_result_free(&res);

		/* parameters the replay refuses before any work */
		struct trace_replay_config bad = { .params = { .r = D + 1, .k = 16 }, .threads = 1 };
		ret = trace_replay_layer(be, &m, &L, &bad, &res, err, sizeof(err));
		T_CHECK(ret == -EINVAL && strstr(err, "bad SparQ parameters"), "r > d: %d %s", ret, err);
		T_CHECK(res.sparq_ns == NULL && res.sel == NULL, "failed replay left results");
		trace_layer_free(&L);
	}
	trace_meta_free(&m);
}

/* trace_open (and, for data faults, trace_layer_load) must refuse the trace in dir. */
static void expect_bad(const char *what, int want, const char *file, const char *says)
{
	char err[1024] = "";
	struct trace_meta m;
	struct trace_layer L;
	int ret = trace_open(dir, NULL, 0, &m, err, sizeof(err));

	if (ret == 0) {
		for (uint32_t l = 0; l < m.n_layers && ret == 0; l++) {
			ret = trace_layer_load(dir, &m, l, &L, err, sizeof(err));
			if (ret == 0)
				trace_layer_free(&L);
		}
		trace_meta_free(&m);
	}
	T_CHECK(ret == want, "%s: returned %d (%s), want %d", what, ret, err, want);
	T_CHECK(strstr(err, file) && strstr(err, says), "%s: message '%s' lacks '%s' / '%s'",
		what, err, file, says);

	/* the command line: exit 2, before any work */
	char *argv[] = { dir, "--r", "4", "--k", "16" };
	T_CHECK(bench_trace_main(5, argv) == 2, "%s: sparq-bench trace did not exit 2", what);
	write_good();
}

static void test_malformed(void)
{
	static float qbad[STEPS][NQ][D];
	static uint16_t kbad[SEQ][NKV][D];
	char err[1024] = "";
	struct trace_meta m;

	unlink(path_of("layer01_v.npy"));
	expect_bad("missing V file", -ENOENT, "layer01_v.npy", "No such file");
	unlink(path_of("layer00_q.npy"));
	expect_bad("missing q file", -ENOENT, "layer00_q.npy", "cannot open");
	unlink(path_of("meta.json"));
	expect_bad("missing meta.json", -ENOENT, "meta.json", "No such file");

	write_npy("layer01_k.npy", "<f2", SEQ - 1, NKV, D, kdata[1], sizeof(kdata[1]) - NKV * D * 2);
	expect_bad("S differs between layers", -EINVAL, "layer01_k.npy", "layers before have 200");
	write_npy("layer00_v.npy", "<f2", SEQ, NKV, D - 8, vdata[0], sizeof(vdata[0]) / 2);
	expect_bad("V not of K's shape", -EINVAL, "layer00_v.npy", "keys' shape");
	write_npy("layer01_q.npy", "<f4", STEPS, NQ / 2, D, qdata[1], sizeof(qdata[1]) / 2);
	expect_bad("q heads differ from meta", -EINVAL, "layer01_q.npy", "n_q_heads=4");
	write_npy("layer00_q.npy", "<f4", STEPS - 1, NQ, D, qdata[0],
		  sizeof(qdata[0]) - NQ * D * sizeof(float));
	expect_bad("q steps differ from meta", -EINVAL, "layer00_q.npy", "steps=20");
	write_npy("layer00_k.npy", "<f2", SEQ, NKV + 1, D, kdata[0], 0);
	expect_bad("K files cut short", -EINVAL, "layer00_k.npy", "truncated data");
	write_npy("layer00_q.npy", "<f2", STEPS, NQ, D, qdata[0], sizeof(qdata[0]) / 2);
	expect_bad("q in float16", -EINVAL, "layer00_q.npy", "expected float32");

	memcpy(qbad, qdata[1], sizeof(qbad));
	qbad[7][3][5] = NAN;
	write_npy("layer01_q.npy", "<f4", STEPS, NQ, D, qbad, sizeof(qbad));
	expect_bad("NaN in q", -EINVAL, "layer01_q.npy", "NaN at step 7, q head 3, component 5");
	memcpy(kbad, kdata[0], sizeof(kbad));
	kbad[42][1][2] = 0x7c00; /* +Inf */
	write_npy("layer00_k.npy", "<f2", SEQ, NKV, D, kbad, sizeof(kbad));
	expect_bad("Inf in K", -EINVAL, "layer00_k.npy", "position 42, KV head 1, component 2");

	write_meta("", NQ + 1, NKV, STEPS);
	expect_bad("n_q not a multiple of n_kv", -EINVAL, "meta.json", "not a multiple");
	write_meta(",\n \"steps\": 3", NQ, NKV, STEPS);
	expect_bad("repeated key", -EINVAL, "meta.json", "repeated");
	write_meta(",\n \"extra\": [1, 2", NQ, NKV, STEPS);
	expect_bad("malformed JSON", -EINVAL, "meta.json", "not the JSON");
	write_meta("", NQ, NKV, STEPS - 1);
	expect_bad("steps differ from q files", -EINVAL, "layer00_q.npy", "steps=19");
	{
		FILE *f = fopen(path_of("meta.json"), "w");
		T_CHECK(f, "meta.json");
		fprintf(f, "{\"n_layers\": 2, \"n_q_heads\": 4, \"n_kv_heads\": 2, \"head_dim\": 16, "
			"\"prefill\": 180, \"steps\": 20, \"q_positions\": [180, 181, 181]}");
		fclose(f);
	}
	expect_bad("q_positions of another length", -EINVAL, "meta.json", "3 q_positions for 20");
	{
		FILE *f = fopen(path_of("meta.json"), "w");
		T_CHECK(f, "meta.json");
		fprintf(f, "{\"n_layers\": 2, \"n_q_heads\": 4, \"n_kv_heads\": 2, \"head_dim\": 16, "
			"\"prefill\": 190, \"steps\": 20}");
		fclose(f);
	}
	expect_bad("queries past S", -EINVAL, "trace", "steps < S");
	{
		FILE *f = fopen(path_of("meta.json"), "w");
		T_CHECK(f, "meta.json");
		fprintf(f, "{\"n_layers\": 2, \"n_q_heads\": 4, \"n_kv_heads\": 2, \"head_dim\": 12, "
			"\"prefill\": 180, \"steps\": 20}");
		fclose(f);
	}
	expect_bad("head_dim the backends refuse", -EINVAL, "meta.json", "head_dim 12");

	/* a layer the trace does not have */
	uint32_t sel[] = { 1, 2 };
	int ret = trace_open(dir, sel, 2, &m, err, sizeof(err));
	T_CHECK(ret == -EINVAL && strstr(err, "layer 2: the trace has layers 0 .. 1"),
		"layer out of range: %d %s", ret, err);
	/* the selected layers only: a broken layer that is not replayed does not matter */
	unlink(path_of("layer01_v.npy"));
	ret = trace_open(dir, sel, 1, &m, err, sizeof(err));
	T_CHECK(ret == -ENOENT, "layer 1 selected, its V missing: %d %s", ret, err);
	ret = trace_open(dir, sel + 1, 0, &m, err, sizeof(err));
	T_CHECK(ret == -ENOENT, "all layers, layer 1's V missing: %d", ret);
	uint32_t only0 = 0;
	ret = trace_open(dir, &only0, 1, &m, err, sizeof(err));
	T_CHECK(ret == 0, "layer 0 alone: %s", err);
	trace_meta_free(&m);
	write_good();

	/* usage errors of the command line */
	char *a1[] = { dir, "--ratio", "8", "--r", "4", "--k", "16" };
	T_CHECK(bench_trace_main(7, a1) == 2, "--ratio with --r/--k");
	char *a2[] = { dir, "--layers", "0,0" };
	T_CHECK(bench_trace_main(3, a2) == 2, "--layers 0,0");
	char *a3[] = { dir, "--layers", "1-0" };
	T_CHECK(bench_trace_main(3, a3) == 2, "--layers 1-0");
	char *a4[] = { dir, "--layers", "0," };
	T_CHECK(bench_trace_main(3, a4) == 2, "--layers 0,");
	char *a5[] = { "--backend", "tpu", dir };
	T_CHECK(bench_trace_main(3, a5) == 2, "--backend tpu");
	char *a6[] = { dir, "--layers", "5" };
	T_CHECK(bench_trace_main(3, a6) == 2, "--layers 5 of 2");
	char *a7[] = { dir, "--r", "17", "--k", "16" };
	T_CHECK(bench_trace_main(5, a7) == 2, "--r above d");
}

static void rm_tree(void)
{
	DIR *d = opendir(dir);
	struct dirent *e;

	T_CHECK(d, "opendir %s", dir);
	while ((e = readdir(d)) != NULL)
		if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
			T_CHECK(unlink(path_of(e->d_name)) == 0, "unlink %s", e->d_name);
	closedir(d);
	T_CHECK(rmdir(dir) == 0, "rmdir %s", dir);
}

int main(void)
{
	const char *base = getenv("SPARQ_TEST_DIR");
	struct sparq_backend_config cfg = { .n_threads = 2 };
	struct sparq_backend *be = t_backend_or_skip("cpu", &cfg);

	snprintf(dir, sizeof(dir), "%s/sparq-test-trace-XXXXXX", base && *base ? base : "/tmp");
	T_CHECK(mkdtemp(dir), "mkdtemp %s", dir);
	make_data();
	write_good();
	test_replay(be);
	test_malformed();
	rm_tree();
	sparq_backend_close(be);
	printf("trace: ok\n");
	return T_EXIT_PASS;
}
