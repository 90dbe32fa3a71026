/*
 * sparq_demo.c — the main job of the README's first command: a long synthetic
 * context in llama3-8b geometry with planted "needle" keys, decoded step by step
 * with SparQ and with dense attention over the same caches, and a short table of
 * what SparQ saves (bytes moved, step time) and what it costs (error against dense,
 * needles found).
 *
 * Until the daemon lands (issue 4) the demo runs the SparQ core in-process; then it
 * becomes a client of a freshly started sparqd and this table stays the same.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "bench_util.h"
#include "half.h"
#include "sparq.h"
#include "store.h"
#include "stream.h"

#define N_KV 8u
#define G 4u            /* 32 query heads over 8 KV heads */
#define D 128u
#define N_NEEDLES 16u

struct demo {
	uint32_t context, steps, threads;
	float ratio;
	struct sparq_backend *be;
	struct sparq_store *st;
	struct sparq_stream *s[N_KV];
	float needle_dir[N_KV][N_NEEDLES][D];  /* unit directions of the planted keys */
	uint32_t needle_pos[N_KV][N_NEEDLES];
	struct bench_rng rng;
};

static void usage(FILE *f)
{
	fprintf(f, "usage: sparq-demo [--context N] [--steps N] [--ratio C] [--threads N]\n"
		   "  Decodes N steps over an N-token synthetic context (llama3-8b geometry, one\n"
		   "  layer) with SparQ at transfer 1/C and with dense attention, and prints the\n"
		   "  transfer ratio, step time, error against dense and needles found.\n"
		   "  defaults: --context 32768 --steps 16 --ratio 8 --threads 0 (all CPUs)\n");
}

static int parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || end == s || v < lo || v > hi || s[0] == '-')
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

/* Keys: noise with per-channel scales; values: noise. Needles are keys along a random
 * direction, far enough out that a query along it attends mostly to them. */
static int build_context(struct demo *dm)
{
	const uint32_t chunk = 1024;
	uint16_t *k = malloc((size_t)chunk * D * 2), *v = malloc((size_t)chunk * D * 2);
	float scale[D];
	const char *why = "";
	int ret = 0;

	if (!k || !v) {
		ret = -ENOMEM;
		goto out;
	}
	for (uint32_t h = 0; h < N_KV && !ret; h++) {
		for (uint32_t c = 0; c < D; c++)
			scale[c] = expf(0.5f * bench_rng_normal(&dm->rng));
		for (uint32_t n = 0; n < N_NEEDLES; n++) {
			float norm = 0;
			for (uint32_t c = 0; c < D; c++) {
				dm->needle_dir[h][n][c] = bench_rng_normal(&dm->rng) * scale[c];
				norm += dm->needle_dir[h][n][c] * dm->needle_dir[h][n][c];
			}
			for (uint32_t c = 0; c < D; c++)
				dm->needle_dir[h][n][c] /= sqrtf(norm);
			/* spread over the context, never in the recent window */
			dm->needle_pos[h][n] = (uint32_t)((uint64_t)(dm->context * 3 / 4) * n / N_NEEDLES) +
					       (uint32_t)(bench_rng_next(&dm->rng) % (dm->context / (2 * N_NEEDLES) + 1));
		}
		for (uint32_t pos = 0; pos < dm->context && !ret; pos += chunk) {
			uint32_t n = dm->context - pos < chunk ? dm->context - pos : chunk;
			for (uint32_t i = 0; i < n; i++) {
				for (uint32_t c = 0; c < D; c++) {
					k[i * D + c] = sparq_f32_to_f16(bench_rng_normal_fast(&dm->rng) * scale[c]);
					v[i * D + c] = sparq_f32_to_f16(bench_rng_normal_fast(&dm->rng));
				}
				for (uint32_t t = 0; t < N_NEEDLES; t++) {
					if (dm->needle_pos[h][t] != pos + i)
						continue;
					for (uint32_t c = 0; c < D; c++)
						k[i * D + c] = sparq_f32_to_f16(
							3.0f * sqrtf((float)D) * dm->needle_dir[h][t][c]);
				}
			}
			ret = sparq_stream_append(dm->s[h], n, k, v, &why);
		}
	}
	if (ret)
		fprintf(stderr, "sparq-demo: building the context failed: %s (%s)\n",
			strerror(-ret), why);
out:
	free(k);
	free(v);
	return ret;
}

/* One decode token: a fresh K/V row per KV head (the current token). */
static int append_token(struct demo *dm)
{
	uint16_t k[D], v[D];
	const char *why = "";

	for (uint32_t h = 0; h < N_KV; h++) {
		for (uint32_t c = 0; c < D; c++) {
			k[c] = sparq_f32_to_f16(bench_rng_normal(&dm->rng));
			v[c] = sparq_f32_to_f16(bench_rng_normal(&dm->rng));
		}
		int ret = sparq_stream_append(dm->s[h], 1, k, v, &why);
		if (ret) {
			fprintf(stderr, "sparq-demo: append failed: %s (%s)\n", strerror(-ret), why);
			return ret;
		}
	}
	return 0;
}

struct step_result {
	uint64_t sparq_ns, dense_ns, sparq_bytes, dense_bytes;
	double err_sq, ref_sq;
	uint32_t needles_found, r, k;
};

static int attend(struct demo *dm, float (*q)[G * D], float (*y)[G * D], uint32_t (*sel)[4096],
		  struct sparq_params p, uint64_t *ns, uint64_t *bytes, struct sparq_resolved *used)
{
	struct sparq_attend_item items[N_KV];
	struct sparq_attend_batch b = { .items = items, .n = N_KV };

	for (uint32_t h = 0; h < N_KV; h++)
		items[h] = (struct sparq_attend_item){ .stream = dm->s[h], .g = G, .q = q[h],
						       .y = y[h], .params = p,
						       .sel = sel ? sel[h] : NULL, .sel_cap = 4096 };
	uint64_t t0 = bench_now_ns();
	int ret = sparq_backend_attend(dm->be, &b);
	*ns = bench_now_ns() - t0;
	if (ret) {
		fprintf(stderr, "sparq-demo: attend failed: %s (%s)\n", strerror(-ret),
			b.why ? b.why : "");
		return ret;
	}
	*bytes = b.stats.slice_bytes + b.stats.record_bytes;
	if (used)
		*used = items[0].used;
	return 0;
}

static int decode_step(struct demo *dm, uint32_t step, struct step_result *res)
{
	static float q[N_KV][G * D], y_sparq[N_KV][G * D], y_dense[N_KV][G * D];
	static uint32_t sel[N_KV][4096];
	struct sparq_params sparq = { .ratio = dm->ratio, .l = -1, .blend = SPARQ_BLEND_AUTO };
	struct sparq_params dense = { .r = 1, .k = SPARQ_POS_MAX, .l = 0 };
	struct sparq_resolved used;
	uint64_t ns, bytes;
	int ret;

	/* every query head of a group leans toward this step's needle, plus noise: the
	 * needle then holds a large share of the attention mass, not all of it */
	uint32_t target = step % N_NEEDLES;
	for (uint32_t h = 0; h < N_KV; h++)
		for (uint32_t i = 0; i < G * D; i++)
			q[h][i] = 0.45f * dm->needle_dir[h][target][i % D] * sqrtf((float)D) +
				  0.5f * bench_rng_normal(&dm->rng);

	ret = attend(dm, q, y_sparq, sel, sparq, &ns, &bytes, &used);
	if (ret)
		return ret;
	res->sparq_ns += ns;
	res->sparq_bytes += bytes;
	res->r = used.r;
	res->k = used.k;
	ret = attend(dm, q, y_dense, NULL, dense, &ns, &bytes, NULL);
	if (ret)
		return ret;
	res->dense_ns += ns;
	res->dense_bytes += bytes;
	for (uint32_t h = 0; h < N_KV; h++) {
		bool hit = false;
		for (uint32_t i = 0; i < used.k && i < 4096; i++)
			hit |= sel[h][i] == dm->needle_pos[h][target];
		res->needles_found += hit;
		for (uint32_t i = 0; i < G * D; i++) {
			double e = (double)y_sparq[h][i] - y_dense[h][i];
			res->err_sq += e * e;
			res->ref_sq += (double)y_dense[h][i] * y_dense[h][i];
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	static struct demo dm;
	static const struct option opts[] = {
		{ "context", required_argument, NULL, 'c' }, { "steps", required_argument, NULL, 's' },
		{ "ratio", required_argument, NULL, 'r' },   { "threads", required_argument, NULL, 't' },
		{ "help", no_argument, NULL, 'h' },          { NULL, 0, NULL, 0 },
	};
	struct sparq_backend_config cfg = { 0 };
	struct step_result res = { 0 };
	const char *why = "";
	int opt, ret = 0;

	dm.context = 32768;
	dm.steps = 16;
	dm.ratio = 8;
	while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		char *end;
		switch (opt) {
		case 'c':
			if (parse_u32(optarg, 4 * N_NEEDLES * 2, 1u << 24, &dm.context)) {
				fprintf(stderr, "sparq-demo: --context must be an integer in [128, 16777216]\n");
				return 2;
			}
			break;
		case 's':
			if (parse_u32(optarg, 1, 100000, &dm.steps)) {
				fprintf(stderr, "sparq-demo: --steps must be an integer in [1, 100000]\n");
				return 2;
			}
			break;
		case 'r':
			dm.ratio = strtof(optarg, &end);
			if (*end || !(dm.ratio >= 1.0f && dm.ratio <= 1024.0f)) {
				fprintf(stderr, "sparq-demo: --ratio must be a compression in [1, 1024] (8 = transfer 1/8)\n");
				return 2;
			}
			break;
		case 't':
			if (parse_u32(optarg, 0, 256, &dm.threads)) {
				fprintf(stderr, "sparq-demo: --threads must be an integer in [0, 256]\n");
				return 2;
			}
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 2;
	}

	cfg.n_threads = dm.threads;
	bench_rng_seed(&dm.rng, 2024);
	ret = sparq_backend_open("cpu", &cfg, &dm.be);
	if (ret) {
		fprintf(stderr, "sparq-demo: cannot open the CPU backend: %s\n", strerror(-ret));
		return 1;
	}
	ret = sparq_store_heap_create(1024, 0, &dm.st);
	for (uint32_t h = 0; h < N_KV && !ret; h++)
		ret = sparq_stream_create(dm.be, dm.st, D, SPARQ_DTYPE_F16, &dm.s[h], &why);
	if (ret) {
		fprintf(stderr, "sparq-demo: setup failed: %s (%s)\n", strerror(-ret), why);
		goto out;
	}

	struct sparq_backend_info info[2];
	sparq_backend_list(info, 2);
	printf("sparq-demo: llama3-8b geometry (32 query heads on 8 KV heads, d=128), one layer, "
	       "%u-token context with %u needles per KV head\n", dm.context, N_NEEDLES);
	printf("backends: cpu: %s; cuda: %s\n", info[0].detail, info[1].detail);
	uint64_t t0 = bench_now_ns();
	ret = build_context(&dm);
	if (ret)
		goto out;
	printf("context built in %.1f s (%.0f MiB of records)\n", (bench_now_ns() - t0) / 1e9,
	       sparq_store_heap_used(dm.st) / 1048576.0);

	for (uint32_t step = 0; step < dm.steps && !ret; step++) {
		ret = append_token(&dm);
		if (!ret)
			ret = decode_step(&dm, step, &res);
	}
	if (ret)
		goto out;

	uint32_t S = sparq_stream_len(dm.s[0]);
	double theory = sparq_transfer_sparq(S, D, res.r, res.k) / sparq_transfer_dense(S, D);
	printf("\n%-7s %9s %5s %6s %10s %10s %10s %16s %14s\n", "mode", "context", "r", "k",
	       "transfer", "(formula)", "step ms", "rel.err vs dense", "needles found");
	printf("%-7s %9u %5s %6s %10.3f %10s %10.3f %16s %14s\n", "dense", S, "-", "-", 1.0, "-",
	       res.dense_ns / 1e6 / dm.steps, "0", "-");
	printf("%-7s %9u %5u %6u %10.3f %10.3f %10.3f %16.4f %8u/%-5u\n", "sparq", S, res.r, res.k,
	       (double)res.sparq_bytes / (double)res.dense_bytes, theory,
	       res.sparq_ns / 1e6 / dm.steps, sqrt(res.err_sq / res.ref_sq), res.needles_found,
	       dm.steps * N_KV);
	printf("\nstep = one layer's attention for one decode token (8 KV heads, one batched call), "
	       "mean of %u steps; transfer = bytes read / dense bytes read; SparQ is %.2fx dense here.\n",
	       dm.steps, (double)res.dense_ns / (double)res.sparq_ns);
out:
	for (uint32_t h = 0; h < N_KV; h++)
		sparq_stream_destroy(dm.s[h]);
	sparq_store_destroy(dm.st);
	sparq_backend_close(dm.be);
	return ret ? 1 : 0;
}
