/*
 * sparq_bench.c — sparq-bench, the performance probe of the SparQ core.
 *
 * Mode `kernel` builds one layer's worth of streams for a model geometry (batch ×
 * n_kv streams of S positions of seeded random data), then times, in one run:
 *   - the SparQ decode step (one batched sparq_backend_attend over every KV head),
 *     phase by phase from the backend's own stats;
 *   - dense attention over the very same streams (k >= S makes the step exact);
 *   - this machine's memory bandwidth (a large copy and a read-only pass) with the
 *     same number of threads as the backend.
 * Every figure is printed next to the limit it is compared with (DESIGN.md §8: a
 * benchmark shows the physical floor and the dense baseline beside sparqd's number).
 *
 * Bandwidth is measured before the streams exist, and its buffers freed, so the
 * run's peak memory is the larger of the two, not their sum.
 *
 * Exit status: 0 success, 1 runtime failure, 2 usage error.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend.h"
#include "half.h"
#include "sparq.h"
#include "store.h"
#include "stream.h"

#include "bench_util.h"

#define EXIT_RUNTIME 1
#define EXIT_USAGE 2

#define PROG "sparq-bench"
#define SEED 0x5eed5a7dULL
/* Positions per sparq_stream_append during setup: bulk, like a prefill. */
#define FILL_CHUNK 4096u
/* Records per heap-store chunk. */
#define STORE_CHUNK 1024u
/* Bandwidth buffers: far beyond any cache, so the figures are DRAM's. */
#define BW_BYTES ((size_t)1 << 30)
#define BW_REPS 5u
#define WARMUP_CALLS 2u
/*
 * Queries: N(0, 1) · QUERY_SCALE, with a few channels HEAVY_GAIN times larger (real
 * queries concentrate their mass on a few channels, which is what makes the
 * r-component approximation work). The scale sets the spread of the logits: with the
 * keys below it is about 4.7, so the top 1/16 of positions carry ~99% of a head's
 * softmax mass, as in a trained model at long context; at scale 1 (spread 2.4) they
 * carry ~75%, attention far flatter than real, and the error against dense would
 * measure the data rather than the method. GROUP_SHARED: see make_queries().
 */
#define QUERY_SCALE 2.0f
#define GROUP_SHARED 0.8f
#define HEAVY_CHANNELS 4u
#define HEAVY_GAIN 6.0f

struct preset {
	const char *name;
	uint32_t n_q, n_kv, d, layers;
};

static const struct preset presets[] = {
	{ "llama3-8b", 32, 8, 128, 32 },
	{ "llama3-70b", 64, 8, 128, 80 },
	{ "mistral-7b", 32, 8, 128, 32 },
	{ "llama2-7b", 32, 32, 128, 32 },  /* MHA: g = 1, the blend is on */
};
#define N_PRESETS (sizeof(presets) / sizeof(presets[0]))

struct opts {
	const struct preset *preset;
	uint64_t S;
	uint32_t batch;
	double ratio;
	uint32_t r, k;
	int32_t l;                  /* -1 = k/4 */
	bool have_ratio, have_r, have_k;
	enum sparq_dtype dtype;
	uint32_t threads;           /* as given, 0 = all online CPUs */
	uint32_t reps;
	const char *backend;
	bool json;
	/* derived once everything is validated */
	uint32_t g, n_threads, dense_reps;
	struct sparq_params params;
	struct sparq_resolved resolved;
};

/* One layer's state: every pointer owned, freed by bench_destroy on every path. */
struct bench {
	struct sparq_backend *be;
	struct sparq_store *st;
	struct sparq_stream **streams;    /* [n_items] */
	struct sparq_attend_item *items;  /* [n_items] */
	uint32_t n_items;                 /* batch × n_kv */
	uint32_t g, d;
	float *q;                         /* [n_items][g][d] */
	float *y;                         /* [n_items][g][d] SparQ output */
	float *y_dense;                   /* [n_items][g][d] dense output */
};

enum phase {
	PH_STEP,
	PH_SCORE,
	PH_SELECT,
	PH_GATHER,
	PH_EXACT,
	PH_N,
};

/* The timed calls of one configuration (SparQ or dense). */
struct timing {
	uint32_t reps;
	double med_ms[PH_N];
	double p90_step_ms;
	uint64_t slice_bytes, record_bytes;  /* of one call */
	struct sparq_resolved used;          /* item 0, as the backend applied it */
	uint32_t n_sel;                      /* item 0 */
};

struct report {
	char isa[160];
	double setup_s;
	struct bench_bw bw;
	struct timing sq, dn;
	uint64_t bytes_read, dense_bytes;
	double achieved_gbs, dense_gbs, score_gbs;
	double bw_fraction, dense_bw_fraction, score_bw_fraction;
	double speedup, transfer_ratio, byte_ratio;
	double projected_ms, projected_dense_ms;
	double floor_ms, dense_floor_ms;   /* bytes / read-only bandwidth: the memory floor */
	double rel_err;
};

/* ---- usage ---- */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: " PROG " MODE [options]\n"
		"       " PROG " --help\n"
		"\n"
		"modes:\n"
		"  kernel   time one decode-step attention (one layer, every KV head) on a\n"
		"           backend, next to dense attention over the same data and this\n"
		"           machine's memory bandwidth\n"
		"\n"
		"options of kernel:\n"
		"  --preset NAME        model geometry (default llama3-8b):\n");
	for (size_t i = 0; i < N_PRESETS; i++)
		fprintf(f, "                         %-11s %2u q heads, %2u KV heads, d %u, %u layers\n",
			presets[i].name, presets[i].n_q, presets[i].n_kv, presets[i].d,
			presets[i].layers);
	fprintf(f,
		"  --context S          positions per stream (default 131072)\n"
		"  --batch B            sequences (default 1); one layer = B x n_kv streams\n"
		"  --ratio C            target transfer 1/C: r = d/C, k = max(128, S/(2C)) (default 8)\n"
		"  --r R --k K          explicit components and rows instead of --ratio\n"
		"  --l L                local window of recent positions (default k/4)\n"
		"  --dtype fp16|bf16    storage dtype (default fp16)\n"
		"  --threads N          backend and bandwidth threads, 0 = all online CPUs (default 0)\n"
		"  --reps N             timed calls (default 20; dense gets max(3, N/4))\n"
		"  --backend cpu|cuda   backend to time (default cpu)\n"
		"  --json               one JSON object on stdout; the table goes to stderr\n"
		"  -h, --help           this text\n"
		"\n"
		"exit status: 0 success, 1 runtime failure, 2 usage error\n");
}

/* Reports a usage error; returns -EINVAL so callers can pass it on. */
__attribute__((format(printf, 1, 2))) static int usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, PROG ": ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n(try '" PROG " --help')\n");
	return -EINVAL;
}

/* ---- option parsing: validate everything before allocating anything ---- */

static int parse_u64(const char *name, const char *val, uint64_t min, uint64_t max,
		     uint64_t *out)
{
	char *end;
	unsigned long long v;

	errno = 0;
	/* strtoull accepts "-1" (wrapping it); a number here never has a sign */
	if (!val[0] || val[0] == '-' || val[0] == '+' || val[0] == ' ')
		goto bad;
	v = strtoull(val, &end, 10);
	if (errno || *end || v < min || v > max)
		goto bad;
	*out = v;
	return 0;
bad:
	fprintf(stderr, PROG ": %s: expected an integer in [%" PRIu64 ", %" PRIu64 "], got '%s'\n",
		name, min, max, val);
	fprintf(stderr, "(try '" PROG " --help')\n");
	return -EINVAL;
}

static int parse_u32(const char *name, const char *val, uint32_t min, uint32_t max,
		     uint32_t *out)
{
	uint64_t v;
	int ret = parse_u64(name, val, min, max, &v);

	if (ret == 0)
		*out = (uint32_t)v;
	return ret;
}

static int parse_ratio(const char *val, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(val, &end);
	if (!val[0] || errno || *end || !isfinite(v) || v < 1.0 || v > 1e6)
		return usage_error("--ratio: expected a compression C in [1, 1e6] (transfer 1/C), got '%s'", val);
	*out = v;
	return 0;
}

static const struct preset *find_preset(const char *name)
{
	for (size_t i = 0; i < N_PRESETS; i++)
		if (strcmp(presets[i].name, name) == 0)
			return &presets[i];
	return NULL;
}

static void opts_default(struct opts *o)
{
	memset(o, 0, sizeof(*o));
	o->preset = &presets[0];
	o->S = 131072;
	o->batch = 1;
	o->ratio = 8.0;
	o->l = -1;
	o->dtype = SPARQ_DTYPE_F16;
	o->reps = 20;
	o->backend = "cpu";
}

/* The value of option argv[*i]: after '=' or the next argument. */
static int opt_value(int argc, char **argv, int *i, const char *eq, const char **val)
{
	if (eq) {
		*val = eq + 1;
		return 0;
	}
	if (*i + 1 >= argc)
		return usage_error("option %s needs a value", argv[*i]);
	*val = argv[++*i];
	return 0;
}

/* One option; returns 1 when it was --help. */
static int parse_one(struct opts *o, int argc, char **argv, int *i)
{
	const char *arg = argv[*i], *eq = strchr(arg, '='), *val = NULL;
	size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
	uint32_t u32 = 0;
	int ret;

#define IS(name) (len == strlen(name) && strncmp(arg, name, len) == 0)
	if (IS("-h") || IS("--help") || IS("--json")) {
		if (eq)
			return usage_error("option %.*s takes no value", (int)len, arg);
		if (IS("--json")) {
			o->json = true;
			return 0;
		}
		return 1;
	}
	if (!(IS("--preset") || IS("--context") || IS("--batch") || IS("--ratio") || IS("--r") ||
	      IS("--k") || IS("--l") || IS("--dtype") || IS("--threads") || IS("--reps") ||
	      IS("--backend")))
		return usage_error("unknown option '%s'", arg);
	ret = opt_value(argc, argv, i, eq, &val);
	if (ret)
		return ret;
	if (IS("--preset")) {
		o->preset = find_preset(val);
		if (!o->preset)
			return usage_error("unknown preset '%s' (llama3-8b, llama3-70b, mistral-7b, "
					   "llama2-7b)", val);
	} else if (IS("--context")) {
		ret = parse_u64("--context", val, 1, SPARQ_POS_MAX, &o->S);
	} else if (IS("--batch")) {
		ret = parse_u32("--batch", val, 1, 4096, &o->batch);
	} else if (IS("--ratio")) {
		ret = parse_ratio(val, &o->ratio);
		o->have_ratio = true;
	} else if (IS("--r")) {
		ret = parse_u32("--r", val, 1, SPARQ_HEAD_DIM_MAX, &o->r);
		o->have_r = true;
	} else if (IS("--k")) {
		ret = parse_u32("--k", val, 1, SPARQ_POS_MAX, &o->k);
		o->have_k = true;
	} else if (IS("--l")) {
		ret = parse_u32("--l", val, 0, SPARQ_POS_MAX - 1, &u32);
		o->l = ret ? -1 : (int32_t)u32;
	} else if (IS("--dtype")) {
		if (strcmp(val, "fp16") == 0 || strcmp(val, "f16") == 0)
			o->dtype = SPARQ_DTYPE_F16;
		else if (strcmp(val, "bf16") == 0)
			o->dtype = SPARQ_DTYPE_BF16;
		else
			return usage_error("--dtype: expected fp16 or bf16, got '%s'", val);
	} else if (IS("--threads")) {
		/* the CPU backend refuses more than 256 workers */
		ret = parse_u32("--threads", val, 0, 256, &o->threads);
	} else if (IS("--reps")) {
		ret = parse_u32("--reps", val, 1, 100000, &o->reps);
	} else if (IS("--backend")) {
		if (strcmp(val, "cpu") && strcmp(val, "cuda"))
			return usage_error("--backend: expected cpu or cuda, got '%s'", val);
		o->backend = val;
	}
#undef IS
	return ret;
}

static uint64_t phys_bytes(void)
{
	long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);

	return pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size : 0;
}

/* Bytes one stream of S positions costs: records, key slice, attend scratch. */
static uint64_t stream_bytes(const struct opts *o)
{
	uint64_t es = sparq_dtype_size(o->dtype), d = o->preset->d;

	/* record 2·d, slice d (channel-major), dense scratch: sel, row pointer, g weights */
	return o->S * (3 * d * es + 4 + 8 + 4 * (uint64_t)o->g);
}

/* Cross-option checks, then the hyper-parameters resolved as the backend will. */
static int opts_finish(struct opts *o)
{
	const struct preset *p = o->preset;
	const char *why = NULL;
	int ret;

	if ((o->have_r || o->have_k) && o->have_ratio)
		return usage_error("--ratio and --r/--k are alternatives: give one or the other");
	if (o->have_r != o->have_k)
		return usage_error("--r and --k go together (or use --ratio)");
	o->g = p->n_q / p->n_kv;
	ret = sparq_geometry_check(p->d, o->g, o->dtype, &why);
	if (ret)
		return usage_error("preset %s: %s", p->name, why);
	o->params = (struct sparq_params){
		.r = o->have_r ? o->r : 0,
		.k = o->have_k ? o->k : 0,
		.l = o->l,
		.ratio = o->have_r ? 0.0f : (float)o->ratio,
		.blend = SPARQ_BLEND_AUTO,
	};
	ret = sparq_params_resolve(&o->params, p->d, o->g, o->S, &o->resolved, &why);
	if (ret)
		return usage_error("bad SparQ parameters (%s, d = %u, S = %" PRIu64 "): %s",
				   p->name, p->d, o->S, why);
	o->n_threads = o->threads ? o->threads : bench_online_cpus();
	o->dense_reps = o->reps / 4 > 3 ? o->reps / 4 : 3;
	if (o->dense_reps > o->reps)
		o->dense_reps = o->reps;

	uint64_t need = stream_bytes(o) * o->batch * p->n_kv, have = phys_bytes();
	if (have && need > have / 4 * 3)
		return usage_error("this run needs about %.1f GiB, more than 3/4 of the machine's "
				   "%.1f GiB; lower --context or --batch",
				   (double)need / (1u << 30), (double)have / (1u << 30));
	return 0;
}

/* 0 to run, 1 after --help, -EINVAL after a usage error (already reported). */
static int parse_kernel_args(int argc, char **argv, struct opts *o)
{
	opts_default(o);
	for (int i = 0; i < argc; i++) {
		if (strncmp(argv[i], "-", 1) != 0)
			return usage_error("unexpected argument '%s'", argv[i]);
		int ret = parse_one(o, argc, argv, &i);
		if (ret)
			return ret;
	}
	return opts_finish(o);
}

/* ---- setup ---- */

static uint16_t to_half(float x, enum sparq_dtype dt)
{
	return dt == SPARQ_DTYPE_F16 ? sparq_f32_to_f16(x) : sparq_f32_to_bf16(x);
}

static void bench_destroy(struct bench *b)
{
	for (uint32_t i = 0; b->streams && i < b->n_items; i++)
		sparq_stream_destroy(b->streams[i]);
	free(b->streams);
	free(b->items);
	free(b->q);
	free(b->y);
	free(b->y_dense);
	/* streams first: they hold records in the store and slices on the backend */
	sparq_store_destroy(b->st);
	sparq_backend_close(b->be);
	memset(b, 0, sizeof(*b));
}

struct fill_job {
	struct bench *b;
	uint32_t S;
	enum sparq_dtype dt;
	int *ret;            /* [n_threads] */
	const char **why;    /* [n_threads] */
};

/*
 * Fills one stream with S positions: K channel c ~ N(0, 1) · scale_c with scale_c =
 * exp(0.5 · N(0, 1)) drawn once per stream, so some channels dominate the logits and
 * attention is far from uniform (as in real models); V ~ N(0, 1).
 */
static int fill_stream(struct sparq_stream *s, uint32_t S, uint32_t d, enum sparq_dtype dt,
		       uint64_t seed, const char **why)
{
	struct bench_rng rng;
	uint16_t *k = malloc((size_t)FILL_CHUNK * d * sizeof(*k));
	uint16_t *v = malloc((size_t)FILL_CHUNK * d * sizeof(*v));
	float *scale = malloc(d * sizeof(*scale));
	int ret = 0;

	if (!k || !v || !scale) {
		*why = "out of memory for the fill buffers";
		ret = -ENOMEM;
		goto out;
	}
	bench_rng_seed(&rng, seed);
	for (uint32_t c = 0; c < d; c++)
		scale[c] = expf(0.5f * bench_rng_normal(&rng));
	for (uint32_t pos = 0; pos < S; pos += FILL_CHUNK) {
		uint32_t n = S - pos < FILL_CHUNK ? S - pos : FILL_CHUNK;

		for (uint32_t j = 0; j < n; j++) {
			for (uint32_t c = 0; c < d; c++) {
				k[(size_t)j * d + c] = to_half(bench_rng_normal_fast(&rng) * scale[c], dt);
				v[(size_t)j * d + c] = to_half(bench_rng_normal_fast(&rng), dt);
			}
		}
		ret = sparq_stream_append(s, n, k, v, why);
		if (ret)
			goto out;
	}
out:
	free(k);
	free(v);
	free(scale);
	return ret;
}

/* Thread t fills streams t, t + n, t + 2n, ... (distinct streams: stream.h allows it). */
static void fill_task(void *arg, uint32_t t, uint32_t n)
{
	struct fill_job *job = arg;

	for (uint32_t i = t; i < job->b->n_items && job->ret[t] == 0; i += n)
		job->ret[t] = fill_stream(job->b->streams[i], job->S, job->b->d, job->dt,
					  SEED ^ (0x9e3779b97f4a7c15ull * (i + 1)), &job->why[t]);
}

/*
 * Per item, g query heads ~ N(0, QUERY_SCALE²) with a few heavy channels shared by
 * the group. The heads of a group share a common direction (correlation
 * GROUP_SHARED²): SparQ selects one set of rows per group from the group-summed
 * logits, and heads drawn independently would each want different rows, which real
 * GQA heads, trained to share their keys, do not.
 */
static void make_queries(struct bench *b)
{
	struct bench_rng rng;
	uint32_t g = b->g, d = b->d;
	float own = sqrtf(1.0f - GROUP_SHARED * GROUP_SHARED);

	bench_rng_seed(&rng, SEED ^ 0x51ull);
	for (uint32_t i = 0; i < b->n_items; i++) {
		float *q = b->q + (size_t)i * g * d;

		for (uint32_t c = 0; c < d; c++) {
			float shared = bench_rng_normal(&rng);
			for (uint32_t h = 0; h < g; h++)
				q[h * d + c] = QUERY_SCALE * (GROUP_SHARED * shared +
							      own * bench_rng_normal(&rng));
		}
		for (uint32_t t = 0; t < HEAVY_CHANNELS; t++) {
			uint32_t c = (uint32_t)(bench_rng_next(&rng) % d);
			for (uint32_t h = 0; h < g; h++)
				q[h * d + c] *= HEAVY_GAIN;
		}
	}
}

static int bench_setup(struct bench *b, const struct opts *o, double *setup_s)
{
	const struct preset *p = o->preset;
	size_t qn;
	uint64_t t0 = bench_now_ns();
	const char *why = NULL;
	int ret;

	b->n_items = o->batch * p->n_kv;
	b->g = o->g;
	b->d = p->d;
	qn = (size_t)b->n_items * b->g * b->d;
	b->streams = calloc(b->n_items, sizeof(*b->streams));
	b->items = calloc(b->n_items, sizeof(*b->items));
	b->q = malloc(qn * sizeof(float));
	b->y = malloc(qn * sizeof(float));
	b->y_dense = malloc(qn * sizeof(float));
	if (!b->streams || !b->items || !b->q || !b->y || !b->y_dense) {
		fprintf(stderr, PROG ": out of memory for %u items\n", b->n_items);
		return -ENOMEM;
	}
	ret = sparq_store_heap_create(STORE_CHUNK, 0, &b->st);
	if (ret) {
		fprintf(stderr, PROG ": cannot create the heap store: %s\n", strerror(-ret));
		return ret;
	}
	for (uint32_t i = 0; i < b->n_items; i++) {
		ret = sparq_stream_create(b->be, b->st, b->d, o->dtype, &b->streams[i], &why);
		if (ret) {
			fprintf(stderr, PROG ": stream %u: sparq_stream_create: %s (errno %d: %s)\n",
				i, why ? why : "?", -ret, strerror(-ret));
			return ret;
		}
	}

	struct fill_job job = { .b = b, .S = (uint32_t)o->S, .dt = o->dtype };
	uint32_t nt = o->n_threads < b->n_items ? o->n_threads : b->n_items;
	job.ret = calloc(nt, sizeof(*job.ret));
	job.why = calloc(nt, sizeof(*job.why));
	if (!job.ret || !job.why) {
		ret = -ENOMEM;
	} else {
		ret = bench_parallel(nt, fill_task, &job);
		for (uint32_t t = 0; ret == 0 && t < nt; t++) {
			if (job.ret[t]) {
				ret = job.ret[t];
				why = job.why[t];
			}
		}
	}
	free(job.ret);
	free(job.why);
	if (ret) {
		fprintf(stderr, PROG ": filling the streams failed: %s (errno %d: %s)\n",
			why ? why : "?", -ret, strerror(-ret));
		return ret;
	}

	make_queries(b);
	for (uint32_t i = 0; i < b->n_items; i++) {
		b->items[i] = (struct sparq_attend_item){
			.stream = b->streams[i],
			.g = b->g,
			.q = b->q + (size_t)i * b->g * b->d,
		};
	}
	*setup_s = (double)(bench_now_ns() - t0) / 1e9;
	return 0;
}

/* ---- timing ---- */

/*
 * warm + reps calls of one layer with parameters p, outputs to y. batch.stats
 * accumulates across calls, so it is zeroed before each one and read after it.
 * On failure *batch tells which item and why.
 */
static int time_attend(struct bench *b, const struct sparq_params *p, float *y, uint32_t reps,
		       struct timing *t, struct sparq_attend_batch *batch)
{
	uint64_t *ns[PH_N] = { 0 };
	int ret = 0;

	*batch = (struct sparq_attend_batch){
		.items = b->items, .n = b->n_items, .mode = SPARQ_ATTEND_FULL, .bad_item = -1,
	};
	for (int ph = 0; ph < PH_N; ph++) {
		ns[ph] = calloc(reps, sizeof(uint64_t));
		if (!ns[ph]) {
			batch->why = "out of memory for timing samples";
			ret = -ENOMEM;
			goto out;
		}
	}
	for (uint32_t i = 0; i < b->n_items; i++) {
		b->items[i].params = *p;
		b->items[i].y = y + (size_t)i * b->g * b->d;
	}
	for (uint32_t call = 0; call < WARMUP_CALLS + reps; call++) {
		memset(&batch->stats, 0, sizeof(batch->stats));
		uint64_t t0 = bench_now_ns();
		ret = sparq_backend_attend(b->be, batch);
		uint64_t t1 = bench_now_ns();
		if (ret)
			goto out;
		if (call < WARMUP_CALLS)
			continue;
		uint32_t c = call - WARMUP_CALLS;
		ns[PH_STEP][c] = t1 - t0;
		ns[PH_SCORE][c] = batch->stats.score_ns;
		ns[PH_SELECT][c] = batch->stats.select_ns;
		ns[PH_GATHER][c] = batch->stats.gather_ns;
		ns[PH_EXACT][c] = batch->stats.exact_ns;
		/* the same data and parameters every call: the byte counts do not change */
		t->slice_bytes = batch->stats.slice_bytes;
		t->record_bytes = batch->stats.record_bytes;
	}
	t->reps = reps;
	t->used = b->items[0].used;
	t->n_sel = b->items[0].n_sel;
	for (int ph = 0; ph < PH_N; ph++)
		t->med_ms[ph] = bench_median(ns[ph], reps) / 1e6;
	t->p90_step_ms = bench_percentile(ns[PH_STEP], reps, 90.0) / 1e6;
out:
	for (int ph = 0; ph < PH_N; ph++)
		free(ns[ph]);
	return ret;
}

static void report_attend_error(const char *what, int ret, const struct sparq_attend_batch *batch)
{
	fprintf(stderr, PROG ": %s: sparq_backend_attend failed: errno %d (%s)", what, -ret,
		strerror(-ret));
	if (batch->bad_item >= 0)
		fprintf(stderr, ", item %d", batch->bad_item);
	fprintf(stderr, ": %s\n", batch->why ? batch->why : "no reason given");
}

/* ---- results ---- */

static double ratio_of(double a, double b)
{
	return b > 0.0 && isfinite(a) && isfinite(b) ? a / b : 0.0;
}

/* ||y - y_dense|| / ||y_dense|| over every head of the layer. */
static double rel_error(const struct bench *b)
{
	size_t n = (size_t)b->n_items * b->g * b->d;
	double num = 0.0, den = 0.0;

	for (size_t i = 0; i < n; i++) {
		double e = (double)b->y[i] - b->y_dense[i];
		num += e * e;
		den += (double)b->y_dense[i] * b->y_dense[i];
	}
	return den > 0.0 ? sqrt(num / den) : 0.0;
}

static void derive(struct report *r, const struct bench *b, const struct opts *o)
{
	const struct timing *sq = &r->sq, *dn = &r->dn;
	uint32_t d = o->preset->d;

	r->bytes_read = sq->slice_bytes + sq->record_bytes;
	r->dense_bytes = dn->record_bytes;
	/* bytes per ms / 1e6 = GB/s */
	r->achieved_gbs = ratio_of((double)r->bytes_read, sq->med_ms[PH_STEP] * 1e6);
	r->dense_gbs = ratio_of((double)r->dense_bytes, dn->med_ms[PH_STEP] * 1e6);
	r->score_gbs = ratio_of((double)sq->slice_bytes, sq->med_ms[PH_SCORE] * 1e6);
	r->bw_fraction = ratio_of(r->achieved_gbs, r->bw.copy_gbs);
	r->dense_bw_fraction = ratio_of(r->dense_gbs, r->bw.copy_gbs);
	r->score_bw_fraction = ratio_of(r->score_gbs, r->bw.read_gbs);
	r->speedup = ratio_of(dn->med_ms[PH_STEP], sq->med_ms[PH_STEP]);
	r->transfer_ratio = ratio_of(sparq_transfer_sparq(o->S, d, sq->used.r, sq->used.k),
				     sparq_transfer_dense(o->S, d));
	r->byte_ratio = ratio_of((double)r->bytes_read, (double)r->dense_bytes);
	r->floor_ms = ratio_of((double)r->bytes_read, r->bw.read_gbs * 1e6);
	r->dense_floor_ms = ratio_of((double)r->dense_bytes, r->bw.read_gbs * 1e6);
	r->projected_ms = sq->med_ms[PH_STEP] * o->preset->layers;
	r->projected_dense_ms = dn->med_ms[PH_STEP] * o->preset->layers;
	r->rel_err = rel_error(b);
}

static void fmt_bytes(char *buf, size_t n, uint64_t bytes)
{
	if (bytes >= (1ull << 30))
		snprintf(buf, n, "%.2f GiB", (double)bytes / (1ull << 30));
	else if (bytes >= (1ull << 20))
		snprintf(buf, n, "%.2f MiB", (double)bytes / (1ull << 20));
	else
		snprintf(buf, n, "%.1f KiB", (double)bytes / 1024.0);
}

/* One table line: quantity, value, the limit it is compared with, the ratio. */
static void row(FILE *f, const char *what, const char *value, const char *limit, const char *ratio)
{
	fprintf(f, "%-34s %-16s %-34s %s\n", what, value, limit ? limit : "", ratio ? ratio : "");
}

static void print_table(FILE *f, const struct report *r, const struct opts *o)
{
	const struct preset *p = o->preset;
	const struct timing *sq = &r->sq, *dn = &r->dn;
	char v[64], l[64], l2[64], q[64], b1[32], b2[32];

	fprintf(f, PROG " kernel: %s (%u q heads, %u KV heads, g = %u, d = %u, %u layers)\n",
		p->name, p->n_q, p->n_kv, o->g, p->d, p->layers);
	fprintf(f, "  S = %" PRIu64 ", batch %u (%u streams), %s, backend %s (%s), %u threads\n",
		o->S, o->batch, o->batch * p->n_kv, sparq_dtype_name(o->dtype), o->backend, r->isa,
		o->n_threads);
	if (o->have_r)
		snprintf(v, sizeof(v), "explicit");
	else
		snprintf(v, sizeof(v), "ratio 1/%g", o->ratio);
	fprintf(f, "  SparQ r = %u, k = %u, l = %u (%s), blend %s; %u rows selected per KV head\n",
		sq->used.r, sq->used.k, sq->used.l, v, sq->used.blend ? "on" : "off", sq->n_sel);
	fprintf(f, "  %u timed calls (dense %u) after %u warm-up; setup %.2f s\n\n", sq->reps,
		dn->reps, WARMUP_CALLS, r->setup_s);

	row(f, "quantity (one layer)", "value", "compared with", "ratio");
	snprintf(v, sizeof(v), "%.2f GB/s", r->bw.copy_gbs);
	row(f, "memory bandwidth, copy", v, "read + write, 1 GiB memcpy", NULL);
	snprintf(v, sizeof(v), "%.2f GB/s", r->bw.read_gbs);
	row(f, "memory bandwidth, read-only", v, "sum of 1 GiB of words", NULL);

	snprintf(v, sizeof(v), "%.3f ms", sq->med_ms[PH_SCORE]);
	row(f, "score phase (median)", v, NULL, NULL);
	snprintf(v, sizeof(v), "%.2f GB/s", r->score_gbs);
	snprintf(l, sizeof(l), "read-only bw %.2f GB/s", r->bw.read_gbs);
	snprintf(q, sizeof(q), "%.2f score_bw_fraction (target >= 0.70)", r->score_bw_fraction);
	row(f, "  key slice read rate", v, l, q);
	snprintf(v, sizeof(v), "%.3f ms", sq->med_ms[PH_SELECT]);
	row(f, "select phase (median)", v, NULL, NULL);
	snprintf(v, sizeof(v), "%.3f ms", sq->med_ms[PH_GATHER]);
	row(f, "gather phase (median)", v, NULL, NULL);
	snprintf(v, sizeof(v), "%.3f ms", sq->med_ms[PH_EXACT]);
	row(f, "exact phase (median)", v, NULL, NULL);

	snprintf(v, sizeof(v), "%.3f ms", sq->med_ms[PH_STEP]);
	snprintf(l, sizeof(l), "dense %.3f ms", dn->med_ms[PH_STEP]);
	snprintf(q, sizeof(q), "%.2fx speedup_vs_dense", r->speedup);
	row(f, "SparQ step (median)", v, l, q);
	snprintf(v, sizeof(v), "%.3f ms", sq->p90_step_ms);
	snprintf(l, sizeof(l), "dense p90 %.3f ms", dn->p90_step_ms);
	row(f, "SparQ step (p90)", v, l, NULL);
	snprintf(v, sizeof(v), "%.3f ms", r->floor_ms);
	snprintf(l, sizeof(l), "dense floor %.3f ms", r->dense_floor_ms);
	snprintf(q, sizeof(q), "%.2f floor / step", ratio_of(r->floor_ms, sq->med_ms[PH_STEP]));
	row(f, "memory floor (bytes / read bw)", v, l, q);

	fmt_bytes(b1, sizeof(b1), r->bytes_read);
	fmt_bytes(b2, sizeof(b2), r->dense_bytes);
	snprintf(l, sizeof(l), "dense %s", b2);
	snprintf(q, sizeof(q), "%.4f measured byte ratio", r->byte_ratio);
	row(f, "bytes read (slice + records)", b1, l, q);
	fmt_bytes(b1, sizeof(b1), sq->slice_bytes);
	fmt_bytes(b2, sizeof(b2), sq->record_bytes);
	snprintf(v, sizeof(v), "%s", b1);
	snprintf(l, sizeof(l), "records %s", b2);
	row(f, "  of which key slice", v, l, NULL);
	snprintf(l, sizeof(l), "dense 2Sd + 2d elements");
	snprintf(q, sizeof(q), "%.4f transfer_ratio (r = %u, k = %u)", r->transfer_ratio,
		 sq->used.r, sq->used.k);
	row(f, "transfer, formula Sr + 2kd + 4d", "", l, q);

	snprintf(v, sizeof(v), "%.2f GB/s", r->achieved_gbs);
	snprintf(l, sizeof(l), "copy bw %.2f GB/s", r->bw.copy_gbs);
	snprintf(q, sizeof(q), "%.2f bw_fraction", r->bw_fraction);
	row(f, "SparQ achieved (bytes / step)", v, l, q);
	snprintf(v, sizeof(v), "%.2f GB/s", r->dense_gbs);
	snprintf(q, sizeof(q), "%.2f", r->dense_bw_fraction);
	row(f, "dense achieved (bytes / step)", v, l, q);

	snprintf(v, sizeof(v), "%.2f ms", r->projected_ms);
	snprintf(l, sizeof(l), "dense %.2f ms (projection)", r->projected_dense_ms);
	snprintf(q, sizeof(q), "%.2fx", r->speedup);
	snprintf(l2, sizeof(l2), "per token, %u layers (projection)", p->layers);
	row(f, l2, v, l, q);
	snprintf(v, sizeof(v), "%.4f", r->rel_err);
	row(f, "output error vs dense (rel. L2)", v, "dense output, same queries", NULL);

	if (r->score_bw_fraction > 1.0)
		fprintf(f, "\nnote: the key slice (%.1f MiB) is read faster than DRAM: at this S it is "
			   "largely cache-resident, so score_bw_fraction says little\n",
			(double)sq->slice_bytes / (1u << 20));
	if (sq->n_sel >= o->S)
		fprintf(f, "\nnote: k >= S, so the SparQ step is exact dense attention\n");
}

/* ---- JSON ---- */

static void json_key(FILE *f, const char *key, bool *first)
{
	fprintf(f, "%s\"%s\": ", *first ? "{" : ", ", key);
	*first = false;
}

static void json_num(FILE *f, const char *key, double v, bool *first)
{
	json_key(f, key, first);
	if (isfinite(v))
		fprintf(f, "%.9g", v);
	else
		fprintf(f, "null");
}

static void json_u64(FILE *f, const char *key, uint64_t v, bool *first)
{
	json_key(f, key, first);
	fprintf(f, "%" PRIu64, v);
}

static void json_str(FILE *f, const char *key, const char *s, bool *first)
{
	json_key(f, key, first);
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void print_json(FILE *f, const struct report *r, const struct opts *o)
{
	const struct timing *sq = &r->sq, *dn = &r->dn;
	bool first = true;

	json_str(f, "backend", o->backend, &first);
	json_str(f, "preset", o->preset->name, &first);
	json_u64(f, "S", o->S, &first);
	json_u64(f, "r", sq->used.r, &first);
	json_u64(f, "k", sq->used.k, &first);
	json_u64(f, "l", sq->used.l, &first);
	if (!o->have_r)
		json_num(f, "ratio", o->ratio, &first);
	json_u64(f, "batch", o->batch, &first);
	json_u64(f, "n_q_heads", o->preset->n_q, &first);
	json_u64(f, "n_kv_heads", o->preset->n_kv, &first);
	json_u64(f, "g", o->g, &first);
	json_u64(f, "d", o->preset->d, &first);
	json_str(f, "dtype", sparq_dtype_name(o->dtype), &first);
	json_u64(f, "threads", o->n_threads, &first);
	json_str(f, "isa", r->isa, &first);
	json_u64(f, "blend", sq->used.blend, &first);
	json_u64(f, "reps", sq->reps, &first);
	json_u64(f, "dense_reps", dn->reps, &first);
	json_num(f, "setup_s", r->setup_s, &first);
	json_u64(f, "bytes_read", r->bytes_read, &first);
	json_num(f, "step_ms", sq->med_ms[PH_STEP], &first);
	json_num(f, "step_p90_ms", sq->p90_step_ms, &first);
	json_num(f, "score_ms", sq->med_ms[PH_SCORE], &first);
	json_num(f, "select_ms", sq->med_ms[PH_SELECT], &first);
	json_num(f, "gather_ms", sq->med_ms[PH_GATHER], &first);
	json_num(f, "exact_ms", sq->med_ms[PH_EXACT], &first);
	json_num(f, "dense_ms", dn->med_ms[PH_STEP], &first);
	json_num(f, "dense_p90_ms", dn->p90_step_ms, &first);
	json_num(f, "speedup_vs_dense", r->speedup, &first);
	json_num(f, "transfer_ratio", r->transfer_ratio, &first);
	json_num(f, "byte_ratio", r->byte_ratio, &first);
	json_u64(f, "slice_bytes", sq->slice_bytes, &first);
	json_u64(f, "record_bytes", sq->record_bytes, &first);
	json_u64(f, "dense_bytes", r->dense_bytes, &first);
	json_num(f, "mem_bw_gbs", r->bw.copy_gbs, &first);
	json_num(f, "read_bw_gbs", r->bw.read_gbs, &first);
	json_num(f, "achieved_gbs", r->achieved_gbs, &first);
	json_num(f, "bw_fraction", r->bw_fraction, &first);
	json_num(f, "dense_gbs", r->dense_gbs, &first);
	json_num(f, "dense_bw_fraction", r->dense_bw_fraction, &first);
	json_num(f, "score_gbs", r->score_gbs, &first);
	json_num(f, "score_bw_fraction", r->score_bw_fraction, &first);
	json_u64(f, "layers", o->preset->layers, &first);
	json_num(f, "floor_ms", r->floor_ms, &first);
	json_num(f, "dense_floor_ms", r->dense_floor_ms, &first);
	json_num(f, "projected_token_ms", r->projected_ms, &first);
	json_num(f, "projected_dense_token_ms", r->projected_dense_ms, &first);
	json_num(f, "rel_err_vs_dense", r->rel_err, &first);
	fprintf(f, "}\n");
}

/* ---- mode kernel ---- */

/* The registry's line for a backend, for the report and for a failed open. */
static void backend_detail(const char *name, char *out, size_t n, bool print_all)
{
	struct sparq_backend_info info[4];
	int cnt = sparq_backend_list(info, 4);

	snprintf(out, n, "unknown");
	for (int i = 0; i < cnt && i < 4; i++) {
		if (print_all)
			fprintf(stderr, "  backend %-5s %-13s %s\n", info[i].name,
				info[i].available ? "available" : "unavailable", info[i].detail);
		if (strcmp(info[i].name, name) == 0)
			snprintf(out, n, "%s", info[i].detail);
	}
}

static int open_backend(struct bench *b, const struct opts *o, struct report *r)
{
	struct sparq_backend_config cfg = { .n_threads = o->n_threads };
	int ret = sparq_backend_open(o->backend, &cfg, &b->be);

	if (ret) {
		b->be = NULL;
		fprintf(stderr, PROG ": cannot open backend '%s': errno %d (%s); the registry says:\n",
			o->backend, -ret, strerror(-ret));
		backend_detail(o->backend, r->isa, sizeof(r->isa), true);
		return ret;
	}
	backend_detail(o->backend, r->isa, sizeof(r->isa), false);
	/* the registry describes a default-configured backend ("ISA, N threads"); the
	 * thread count actually used is reported on its own, so keep the ISA part */
	char *comma = strstr(r->isa, ", ");
	if (comma && strcmp(o->backend, "cpu") == 0)
		*comma = '\0';
	return 0;
}

static int run_kernel(const struct opts *o)
{
	struct bench b = { 0 };
	struct report r = { 0 };
	struct sparq_attend_batch batch;
	struct sparq_params dense;
	FILE *table = o->json ? stderr : stdout;
	size_t bw_bytes = BW_BYTES;
	uint64_t phys = phys_bytes();
	int ret;

	ret = open_backend(&b, o, &r);
	if (ret)
		goto out;

	/* on a small machine, keep the two buffers within a quarter of its memory */
	if (phys && bw_bytes > phys / 8)
		bw_bytes = (size_t)(phys / 8) & ~(size_t)4095;
	fprintf(stderr, PROG ": measuring memory bandwidth (%u threads, 2 x %zu MiB)...\n",
		o->n_threads, bw_bytes >> 20);
	ret = bench_mem_bw(o->n_threads, bw_bytes, BW_REPS, &r.bw);
	if (ret) {
		fprintf(stderr, PROG ": memory bandwidth measurement failed: errno %d (%s)\n", -ret,
			strerror(-ret));
		goto out;
	}

	fprintf(stderr, PROG ": filling %u streams x %" PRIu64 " positions...\n",
		o->batch * o->preset->n_kv, o->S);
	ret = bench_setup(&b, o, &r.setup_s);
	if (ret)
		goto out;

	fprintf(stderr, PROG ": timing the SparQ step (%u calls)...\n", o->reps);
	ret = time_attend(&b, &o->params, b.y, o->reps, &r.sq, &batch);
	if (ret) {
		report_attend_error("SparQ step", ret, &batch);
		goto out;
	}

	/* k >= S makes the step exact dense attention over every row; r is then unused */
	dense = (struct sparq_params){ .r = 1, .k = (uint32_t)o->S, .l = -1,
				       .blend = SPARQ_BLEND_AUTO };
	fprintf(stderr, PROG ": timing dense attention (%u calls)...\n", o->dense_reps);
	ret = time_attend(&b, &dense, b.y_dense, o->dense_reps, &r.dn, &batch);
	if (ret) {
		report_attend_error("dense baseline", ret, &batch);
		goto out;
	}

	derive(&r, &b, o);
	if (o->json) {
		print_json(stdout, &r, o);
		fflush(stdout);
	}
	print_table(table, &r, o);
	/* read-pass checksum: printed so the pass is observable, not optimised away */
	fprintf(stderr, PROG ": done (read-pass checksum %016" PRIx64 ")\n", r.bw.checksum);
out:
	bench_destroy(&b);
	return ret;
}

int main(int argc, char **argv)
{
	struct opts o;
	int ret;

	if (argc < 2) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
		usage(stdout);
		return 0;
	}
	if (strcmp(argv[1], "kernel") != 0) {
		usage_error("unknown mode '%s' (modes: kernel)", argv[1]);
		return EXIT_USAGE;
	}
	ret = parse_kernel_args(argc - 2, argv + 2, &o);
	if (ret == 1) {
		usage(stdout);
		return 0;
	}
	if (ret)
		return EXIT_USAGE;
	return run_kernel(&o) ? EXIT_RUNTIME : 0;
}
