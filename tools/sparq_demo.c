/*
 * sparq_demo.c — the main job of the README's first command: a long synthetic
 * context in llama3-8b geometry with planted "needle" keys, kept in a freshly started
 * sparqd and decoded step by step through libsparq with SparQ and with dense
 * attention over the same caches, and a short table of what SparQ saves (bytes moved,
 * step time) and what it costs (error against dense, needles found).
 *
 * The demo is an ordinary client: it starts the daemon (../daemon/sparqd next to its
 * own executable, or $SPARQD) on a private data directory under the current directory
 * with a private socket, waits for the ready file, streams the prefill into it, and
 * per decode step appends one token then asks for attention. At the end it stops the
 * daemon with SIGTERM, checks that it exited 0, and removes the directory.
 *
 * Needles found: after each SparQ attend the demo asks for the selection of the same
 * query (select gives the positions the attend fetched) and looks for the needle the
 * query leans toward. Transfer: elements read per KV head by the SparQ step (key slice
 * S·r, the selected rows 2·n_sel·d) over dense's 2·S·d, with n_sel as measured.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "half.h"
#include "libsparq.h"
#include "sparq.h"
#include "sparqd_spawn.h"

#define N_KV 8u
#define G 4u            /* 32 query heads over 8 KV heads */
#define D 128u
#define N_NEEDLES 16u
#define SEL_CAP 16384u  /* rows of a selection the demo can look through */
#define READY_S 120     /* the daemon's start-up bound */
#define STOP_S 60       /* its shutdown bound */

struct demo {
	uint32_t context, steps, threads;
	float ratio;
	uint64_t session;
	struct sparq_client *c;
	float needle_dir[N_KV][N_NEEDLES][D];  /* unit directions of the planted keys */
	uint32_t needle_pos[N_KV][N_NEEDLES];
	struct bench_rng rng;
};

static void usage(FILE *f)
{
	fprintf(f, "usage: sparq-demo [--context N] [--steps N] [--ratio C] [--threads N]\n"
		   "  Starts sparqd on a private directory here, keeps an N-token synthetic context\n"
		   "  (llama3-8b geometry, one layer) in it, decodes N steps through libsparq with\n"
		   "  SparQ at transfer 1/C and with dense attention, prints the transfer ratio,\n"
		   "  step time, error against dense and needles found, and stops the daemon.\n"
		   "  defaults: --context 32768 --steps 16 --ratio 8 --threads 0 (all CPUs)\n"
		   "  environment: SPARQD=path of the sparqd binary (default ../daemon/sparqd\n"
		   "  next to this program)\n");
}

/* Starts sparqd on a fresh ./sparqd-demo-XXXXXX, its tiers sized to this run. */
static int daemon_start(struct sparqd_child *dn, const struct demo *d)
{
	char ram[32], nvme[32], threads[16];
	/* records of the whole run (K and V rows, fp16), plus chunk slack per stream */
	uint64_t rec_mib = ((uint64_t)(d->context + d->steps) * N_KV * 4 * D + (1u << 20) - 1) >> 20;

	snprintf(ram, sizeof(ram), "%lluM", (unsigned long long)(rec_mib + rec_mib / 4 + 64));
	snprintf(nvme, sizeof(nvme), "%lluM", (unsigned long long)(rec_mib + rec_mib / 4 + 64));
	snprintf(threads, sizeof(threads), "%u", d->threads);
	const char *args[] = { "--threads", threads, "--ram-bytes", ram, "--nvme-bytes", nvme,
			       "--log-level", "warn", NULL };
	return sparqd_spawn(dn, "sparq-demo", "sparqd-demo", args, READY_S);
}

static int client_fail(const struct demo *dm, const char *what, int ret)
{
	fprintf(stderr, "sparq-demo: %s failed: %s (%s)\n", what, strerror(-ret),
		sparq_client_error(dm->c));
	return ret;
}

/* Keys: noise with per-channel scales; values: noise. Needles are keys along a random
 * direction, far enough out that a query along it attends mostly to them. The prefill
 * goes to the daemon 1024 tokens at a time: [n][N_KV][D]. */
static int build_context(struct demo *dm)
{
	const uint32_t chunk = 1024;
	uint16_t *k = malloc((size_t)chunk * N_KV * D * 2), *v = malloc((size_t)chunk * N_KV * D * 2);
	float scale[N_KV][D];
	int ret = 0;

	if (!k || !v) {
		ret = -ENOMEM;
		goto out;
	}
	for (uint32_t h = 0; h < N_KV; h++) {
		for (uint32_t c = 0; c < D; c++)
			scale[h][c] = expf(0.5f * bench_rng_normal(&dm->rng));
		for (uint32_t n = 0; n < N_NEEDLES; n++) {
			float norm = 0;
			for (uint32_t c = 0; c < D; c++) {
				dm->needle_dir[h][n][c] = bench_rng_normal(&dm->rng) * scale[h][c];
				norm += dm->needle_dir[h][n][c] * dm->needle_dir[h][n][c];
			}
			for (uint32_t c = 0; c < D; c++)
				dm->needle_dir[h][n][c] /= sqrtf(norm);
			/* spread over the context, never in the recent window */
			dm->needle_pos[h][n] = (uint32_t)((uint64_t)(dm->context * 3 / 4) * n / N_NEEDLES) +
					       (uint32_t)(bench_rng_next(&dm->rng) % (dm->context / (2 * N_NEEDLES) + 1));
		}
	}
	for (uint32_t pos = 0; pos < dm->context && !ret; pos += chunk) {
		uint32_t n = dm->context - pos < chunk ? dm->context - pos : chunk;
		for (uint32_t i = 0; i < n; i++)
			for (uint32_t h = 0; h < N_KV; h++) {
				uint16_t *kr = k + ((size_t)i * N_KV + h) * D;
				uint16_t *vr = v + ((size_t)i * N_KV + h) * D;
				for (uint32_t c = 0; c < D; c++) {
					kr[c] = sparq_f32_to_f16(bench_rng_normal_fast(&dm->rng) * scale[h][c]);
					vr[c] = sparq_f32_to_f16(bench_rng_normal_fast(&dm->rng));
				}
				for (uint32_t t = 0; t < N_NEEDLES; t++) {
					if (dm->needle_pos[h][t] != pos + i)
						continue;
					for (uint32_t c = 0; c < D; c++)
						kr[c] = sparq_f32_to_f16(3.0f * sqrtf((float)D) *
									 dm->needle_dir[h][t][c]);
				}
			}
		ret = sparq_append(dm->c, dm->session, 0, n, k, v);
		if (ret)
			client_fail(dm, "appending the prefill", ret);
	}
out:
	free(k);
	free(v);
	return ret;
}

/* One decode token: a fresh K/V row per KV head (the current token). */
static int append_token(struct demo *dm)
{
	uint16_t k[N_KV * D], v[N_KV * D];

	for (uint32_t i = 0; i < N_KV * D; i++) {
		k[i] = sparq_f32_to_f16(bench_rng_normal(&dm->rng));
		v[i] = sparq_f32_to_f16(bench_rng_normal(&dm->rng));
	}
	int ret = sparq_append(dm->c, dm->session, 0, 1, k, v);
	return ret ? client_fail(dm, "append", ret) : 0;
}

struct step_result {
	uint64_t sparq_ns, dense_ns;
	double sparq_elems, dense_elems;
	double err_sq, ref_sq;
	uint32_t needles_found, r, k, n_sel_min, n_sel_max;
	uint64_t sparq_records, dense_records, nvme_records;  /* the daemon's counters */
};

/* Records the daemon's tiers served so far (RAM and NVMe), and from NVMe alone. */
static int records_read(struct demo *dm, uint64_t *all, uint64_t *nvme)
{
	struct sparq_stats st;
	int ret = sparq_stats_get(dm->c, &st);

	if (ret)
		return client_fail(dm, "stats", ret);
	*all = st.ram_records_read + st.nvme_records_read;
	*nvme = st.nvme_records_read;
	return 0;
}

static int attend(struct demo *dm, const float *q, float *y,
		  const struct sparq_attn_params *p, uint64_t *ns)
{
	struct sparq_attend_req req = { .session = dm->session, .q = q, .y = y, .params = p };
	uint64_t t0 = bench_now_ns();
	int ret = sparq_attend(dm->c, 0, &req, 1, NULL);

	*ns = bench_now_ns() - t0;
	return ret ? client_fail(dm, "attend", ret) : 0;
}

static int decode_step(struct demo *dm, uint32_t step, struct step_result *res)
{
	static float q[N_KV * G * D], y_sparq[N_KV * G * D], y_dense[N_KV * G * D];
	static uint32_t sel[N_KV][SEL_CAP];
	uint32_t n_sel[N_KV];
	const struct sparq_attn_params sparq = { .ratio = dm->ratio, .l = -1,
						 .blend = SPARQ_CLIENT_BLEND_AUTO };
	const struct sparq_attn_params dense = { .dense = true, .l = -1 };
	const struct sparq_params core = { .ratio = dm->ratio, .l = -1, .blend = SPARQ_BLEND_AUTO };
	const uint32_t S = dm->context + step + 1;
	struct sparq_resolved used;
	const char *why = "";
	uint64_t ns;
	int ret;

	/* every query head of a group leans toward this step's needle, plus noise: the
	 * needle then holds a large share of the attention mass, not all of it */
	uint32_t target = step % N_NEEDLES;
	for (uint32_t h = 0; h < N_KV; h++)
		for (uint32_t i = 0; i < G * D; i++)
			q[h * G * D + i] = 0.45f * dm->needle_dir[h][target][i % D] * sqrtf((float)D) +
					   0.5f * bench_rng_normal(&dm->rng);

	/* the daemon's record counters around each attend (outside the timed calls) */
	uint64_t rec0, rec1, rec2, nv0, nv1, nv2;
	ret = records_read(dm, &rec0, &nv0);
	if (!ret)
		ret = attend(dm, q, y_sparq, &sparq, &ns);
	if (!ret)
		ret = records_read(dm, &rec1, &nv1);
	if (ret)
		return ret;
	res->sparq_ns += ns;
	ret = attend(dm, q, y_dense, &dense, &ns);
	if (!ret)
		ret = records_read(dm, &rec2, &nv2);
	if (ret)
		return ret;
	res->dense_ns += ns;
	res->sparq_records += rec1 - rec0;
	res->dense_records += rec2 - rec1;
	res->nvme_records += nv2 - nv0;
	/* the rows the SparQ attend fetched: same query, same cache, same parameters */
	ret = sparq_select(dm->c, dm->session, 0, q, &sparq, &sel[0][0], SEL_CAP, n_sel, NULL);
	if (ret)
		return client_fail(dm, "select", ret);
	/* r is not reported back: the daemon resolves it with this very recipe */
	ret = sparq_params_resolve(&core, D, G, S, &used, &why);
	if (ret) {
		fprintf(stderr, "sparq-demo: parameters: %s\n", why);
		return ret;
	}
	res->r = used.r;
	res->k = used.k;
	for (uint32_t h = 0; h < N_KV; h++) {
		bool hit = false;
		for (uint32_t i = 0; i < n_sel[h]; i++)
			hit |= sel[h][i] == dm->needle_pos[h][target];
		res->needles_found += hit;
		res->n_sel_min = n_sel[h] < res->n_sel_min ? n_sel[h] : res->n_sel_min;
		res->n_sel_max = n_sel[h] > res->n_sel_max ? n_sel[h] : res->n_sel_max;
		res->sparq_elems += (double)S * used.r + 2.0 * n_sel[h] * D + 4.0 * D;
		res->dense_elems += sparq_transfer_dense(S, D);
	}
	for (uint32_t i = 0; i < N_KV * G * D; i++) {
		double e = (double)y_sparq[i] - y_dense[i];
		res->err_sq += e * e;
		res->ref_sq += (double)y_dense[i] * y_dense[i];
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
	struct sparqd_child dn = { 0 };
	struct step_result res = { .n_sel_min = UINT32_MAX };
	struct sparq_stats st;
	int opt, ret = 0;

	dm.context = 32768;
	dm.steps = 16;
	dm.ratio = 8;
	while ((opt = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		char *end;
		switch (opt) {
		case 'c':
			if (bench_parse_u32(optarg, 4 * N_NEEDLES * 2, 1u << 24, &dm.context)) {
				fprintf(stderr, "sparq-demo: --context must be an integer in [128, 16777216]\n");
				return 2;
			}
			break;
		case 's':
			if (bench_parse_u32(optarg, 1, 100000, &dm.steps)) {
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
			if (bench_parse_u32(optarg, 0, 256, &dm.threads)) {
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
	/* k = S / (2·ratio) rows per KV head must fit the selection the demo reads back */
	if ((dm.context + dm.steps) / (2.0 * dm.ratio) > SEL_CAP) {
		fprintf(stderr, "sparq-demo: --context / (2 * --ratio) must stay under %u rows\n",
			SEL_CAP);
		return 2;
	}

	bench_rng_seed(&dm.rng, 2024);
	ret = daemon_start(&dn, &dm);
	if (ret)
		goto out;
	ret = sparq_connect(dn.socket, "sparq-demo", 0, &dm.c);
	if (ret) {
		fprintf(stderr, "sparq-demo: cannot connect to %s: %s\n", dn.socket, strerror(-ret));
		goto out;
	}
	struct sparq_session_opts so = {
		.geometry = { .n_layers = 1, .n_q_heads = N_KV * G, .n_kv_heads = N_KV,
			      .head_dim = D, .dtype = SPARQ_CLIENT_F16 },
		.defaults = { .ratio = dm.ratio, .l = -1 },
		.label = "sparq-demo",
	};
	ret = sparq_session_create(dm.c, &so, &dm.session);
	if (ret) {
		client_fail(&dm, "creating the session", ret);
		goto out;
	}
	ret = sparq_stats_get(dm.c, &st);
	if (ret) {
		client_fail(&dm, "stats", ret);
		goto out;
	}
	printf("sparq-demo: llama3-8b geometry (32 query heads on 8 KV heads, d=128), one layer, "
	       "%u-token context with %u needles per KV head\n", dm.context, N_NEEDLES);
	printf("sparqd (pid %d, %s, ready in %.1f s, socket %s): backend %s: %s\n", (int)dn.pid,
	       dn.bin, dn.start_s, dn.socket, st.backend, st.backend_detail);
	uint64_t t0 = bench_now_ns();
	ret = build_context(&dm);
	if (ret)
		goto out;
	ret = sparq_stats_get(dm.c, &st);
	if (ret) {
		client_fail(&dm, "stats", ret);
		goto out;
	}
	printf("context appended through libsparq in %.1f s (%.0f MiB of records; the daemon's "
	       "RAM tier holds %.0f MiB)\n", (bench_now_ns() - t0) / 1e9,
	       (double)dm.context * N_KV * 4 * D / 1048576.0, st.ram_used / 1048576.0);

	for (uint32_t step = 0; step < dm.steps && !ret; step++) {
		ret = append_token(&dm);
		if (!ret)
			ret = decode_step(&dm, step, &res);
	}
	if (ret)
		goto out;

	uint32_t S = dm.context + dm.steps;
	double theory = sparq_transfer_sparq(S, D, res.r, res.k) / sparq_transfer_dense(S, D);
	printf("\n%-7s %9s %5s %6s %10s %10s %10s %16s %14s\n", "mode", "context", "r", "k",
	       "transfer", "(formula)", "step ms", "rel.err vs dense", "needles found");
	printf("%-7s %9u %5s %6s %10.3f %10s %10.3f %16s %14s\n", "dense", S, "-", "-", 1.0, "-",
	       res.dense_ns / 1e6 / dm.steps, "0", "-");
	printf("%-7s %9u %5u %6u %10.3f %10.3f %10.3f %16.4f %8u/%-5u\n", "sparq", S, res.r, res.k,
	       res.sparq_elems / res.dense_elems, theory, res.sparq_ns / 1e6 / dm.steps,
	       sqrt(res.err_sq / res.ref_sq), res.needles_found, dm.steps * N_KV);
	printf("\nstep = one layer's attention for one decode token (8 KV heads, one request "
	       "through the daemon), mean of %u steps; transfer = elements read (key slice S*r + "
	       "the %u..%u selected rows) / dense elements read; SparQ is %.2fx dense here.\n",
	       dm.steps, res.n_sel_min, res.n_sel_max, (double)res.dense_ns / (double)res.sparq_ns);
	printf("the daemon's tiers served %.0f records per SparQ step and %.0f per dense step "
	       "(%llu of them from NVMe in all)\n", (double)res.sparq_records / dm.steps,
	       (double)res.dense_records / dm.steps, (unsigned long long)res.nvme_records);
out:
	sparq_disconnect(dm.c);
	if (dn.pid > 0) {
		int code = sparqd_stop(&dn, "sparq-demo", STOP_S);
		if (code != 0) {
			fprintf(stderr, "sparq-demo: sparqd exited with %d after SIGTERM, not 0\n", code);
			ret = ret ? ret : -EIO;
		} else if (!ret) {
			printf("sparqd stopped (SIGTERM, exit 0); %s removed\n", dn.dir);
		}
	}
	if (sparqd_cleanup(&dn, "sparq-demo") && !ret)
		ret = -EIO;
	return ret ? 1 : 0;
}
