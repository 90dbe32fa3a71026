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
 * With --store tiers the records live in the tier manager (RAM tier large enough for
 * all of them) instead of a heap store, twice over: once with in-place reads (held
 * streams, issue 5) and once copy-only (tier_manager_config.in_place off), the SparQ
 * step timed on both in the same run, outputs compared bit for bit.
 *
 * Mode `tiers` measures the tier manager (tiers/manager.h) against the raw limits of
 * the directory it stores into, in one run (issue 3, "Benchmark"):
 *   - the device: sequential 4 MiB writes (+ fdatasync) and reads at qd 8, and random
 *     O_DIRECT reads of one record unit at each queue depth, through the very io_uring
 *     engine the manager uses (tiers/nvme.h), on a file of the data's size;
 *   - the manager's batched top-k gather served entirely from NVMe at the same queue
 *     depths (the same positions as the raw reads, every record checked), then
 *     entirely from RAM next to this machine's memcpy bandwidth;
 *   - tier_park of freshly written streams and tier_resume into RAM, next to the
 *     sequential write and read bandwidth.
 * Everything lives in a private directory inside --dir, removed at the end (--dir
 * itself too when the run created it).
 *
 * Exit status: 0 success, 1 runtime failure, 2 usage error.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <libgen.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "backend.h"
#include "half.h"
#include "manager.h"
#include "nvme.h"
#include "sparq.h"
#include "store.h"
#include "stream.h"

#include "bench_ipc.h"
#include "bench_opts.h"
#include "bench_trace.h"
#include "bench_util.h"
#ifdef SPARQ_BENCH_GPU
#include "bench_gpu.h"
#endif

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
	const char *csv;            /* NULL = none */
	bool json;
	bool tiers;                 /* --store tiers: records in the tier manager */
	const char *dir;            /* --dir: where the tier manager's directory goes */
	/* key-slice formats to time, one after the other on the same data (backend.h):
	 * native, int8, or both (--key-slice both) */
	enum sparq_slice_format key_slices[2];
	uint32_t n_key_slices;
	/* derived once everything is validated */
	uint32_t g, n_threads, dense_reps;
	struct sparq_params params;
	struct sparq_resolved resolved;
};

/* One layer's state: every pointer owned, freed by bench_destroy on every path. */
struct bench {
	struct sparq_backend *be;
	struct sparq_store *st;
	struct tier_manager *tm;          /* --store tiers: st is its store (st owns it) */
	char *tm_dir;                     /* its private directory, removed by bench_destroy */
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
	enum sparq_slice_format key_slice;
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
	/* --store tiers: the same step over the copy-only manager */
	struct timing copied;
	bool identical;                    /* outputs in place == copied, bit for bit */
	uint64_t holds, hold_misses;       /* the in-place manager's, over the SparQ calls */
};

/* Mode tiers: defaults and fixed parameters (see run_tiers). */
#define TIERS_DIR_DEFAULT "./sparqd-bench-data"
#define TIERS_STREAMS_DEFAULT 8u
#define TIERS_RECORDS_DEFAULT 262144u
#define TIERS_RB_DEFAULT 512u
#define TIERS_K_DEFAULT 2048u
#define TIERS_QD_DEFAULT "1,8,32,128"
#define TIERS_REPS_DEFAULT 5u
#define TIERS_QD_MAX 16u
#define TIERS_STREAMS_MAX 1024u
#define TIERS_RECORDS_MAX (1u << 28)
/* The RAM gather takes milliseconds: more steps for a stable median. */
#define RAM_REPS_MIN 20u

/* Mode gpu: see run_gpu. */
#define GPU_KMODES_MAX 6u
#define GPU_KMODES_DEFAULT "ratio8,k512,k2048"
#define GPU_REPS_DEFAULT 64u
/* Query sets per layer, rotated between passes: consecutive calls on one stream never
 * repeat a query, so no GPU-side cache can serve a call from the previous one. */
#define GPU_QSETS 4u
/* Streams are built until the key-slice bytes scored per pass exceed this: about 4x
 * the L2 of an H100/H200 (50-60 MB), so the rotation measures HBM, not L2. */
#define GPU_ROTATE_BYTES ((uint64_t)256 << 20)
/* Dense-resident copies of the layer: at least this much, so rotation defeats L2. */
#define GPU_SLOTS_BYTES ((uint64_t)1 << 30)
#define GPU_SLOTS_MAX 32u
#define GPU_HOST_DATA_MAX ((uint64_t)16 << 30)
#define GPU_DENSE_REPS 20u
#define GPU_OFFLOAD_LAYERS 4u
#define GPU_OFFLOAD_REPS 5u
#define GPU_CEIL_REPS 5u
#define GPU_H2D_MAX ((uint64_t)1 << 30)
#define GPU_GATHER_ROWS 262144u
/* Dense-kernel check: odd length (partial tiles), forced splits (the reduce runs). */
#define GPU_CHECK_S 3001u
#define GPU_CHECK_SPLITS 7u
#define GPU_CHECK_TOL 1e-3
/* DESIGN.md §7, H100 PCIe Gen5: what --dry-run assumes unless told otherwise. */
#define GPU_ASSUME_H2D 54.9
#define GPU_ASSUME_HBM 3000.0

/*
 * The columns of each mode's --csv (bench_csv: header on a new file, one row per
 * measured configuration). Names are stable: tools/plot reads them; a change of
 * columns is a new name, never a new meaning for an old one.
 */
#define KERNEL_CSV_HEADER "backend,preset,S,batch,k_mode,r,k,l,dtype,threads,step_ms," \
			  "step_p90_ms,floor_ms,ratio_floor,dense_ms,dense_floor_ms," \
			  "dense_ratio_floor,speedup_vs_dense,read_bw_gbs,rel_err_vs_dense"
#define TIERS_CSV_HEADER "record_bytes,streams,records_per_stream,k,qd,raw_iops," \
			 "raw_step_p50_ms,gather_nvme_records_per_s,gather_nvme_step_p50_ms," \
			 "gather_nvme_step_p99_ms,gather_vs_raw_iops,read_amplification," \
			 "gather_ram_records_per_s,gather_ram_vs_row_copy,park_gbs," \
			 "park_vs_seq_write,resume_gbs,resume_vs_seq_read"
#define GPU_CSV_HEADER "config,S,batch,k_mode,sparq_ms,floor_ms,ratio_floor,dense_offload_ms," \
		       "dense_resident_ms,speedup_offload,speedup_resident," \
		       "gpu_bytes_per_token_sparq,gpu_bytes_per_token_dense"

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
		"  tiers    time the tier manager's top-k gathers from NVMe and from RAM and\n"
		"           its park and resume, next to raw io_uring random reads, sequential\n"
		"           device bandwidth and memory bandwidth measured in the same run\n"
		"  gpu      one configuration on the GPU: the CUDA backend's SparQ step per\n"
		"           layer and per token, its PCIe + HBM floor, dense attention resident\n"
		"           and offloaded, pinned-copy / HBM / zero-copy gather ceilings, GPU\n"
		"           memory per token; CSV and JSON lines for the plots\n"
		"  ipc      one batched attend through a sparqd started for the run versus the\n"
		"           same call in-process: overhead p50/p99 next to the ping floor and\n"
		"           the 20 us target, and a load run of concurrent clients\n"
		"           (options: sparq-bench ipc --help)\n"
		"  trace    replay a real model's decode trace (tools/eval --dump-traces DIR):\n"
		"           SparQ vs dense step time, error, top-k recall and the overlap of\n"
		"           consecutive selections (options: sparq-bench trace --help)\n"
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
		"  --store heap|tiers   where the records live (default heap); tiers: the tier\n"
		"                       manager, RAM tier holding every record, timed twice in\n"
		"                       the run: records read in place (held streams) and\n"
		"                       copied out (in_place off); not with --csv. With\n"
		"                       --backend cuda the in-place run is the zero-copy path\n"
		"  --dir PATH           --store tiers: parent of the manager's private directory\n"
		"                       (default .; nothing is written to the device)\n"
		"  --key-slice native|int8|both\n"
		"                       scoring keys as stored, int8 with a scale per position,\n"
		"                       or both, timed one after the other on the same data and\n"
		"                       compared (default native; CSV k_mode gets '-int8')\n"
		"  --json               one JSON object on stdout; the table goes to stderr\n"
		"  --csv FILE           append one row for the configuration (header on a new\n"
		"                       file; tools/plot kernel charts it); columns, times in ms\n"
		"                       (floor: bytes read / this machine's read bandwidth):\n"
		"                       " KERNEL_CSV_HEADER "\n"
		"                       (with --backend cuda: mode gpu's columns)\n"
		"  -h, --help           this text\n"
		"\n"
		"options of tiers:\n"
		"  --dir PATH           directory on the device to measure (default\n"
		"                       " TIERS_DIR_DEFAULT "; created if missing); the run works\n"
		"                       in a private subdirectory, removed at the end, and\n"
		"                       removes PATH too when it created it\n"
		"  --streams N          streams (default %u)\n"
		"  --records-per-stream N\n"
		"                       records per stream (default %u)\n"
		"  --record-bytes B     bytes per record, K row + V row, even (default %u:\n"
		"                       d = 128 fp16)\n"
		"  --k K                distinct random positions per stream per step, sorted\n"
		"                       as a top-k selection hands them over (default %u)\n"
		"  --qd LIST            comma-separated io_uring queue depths (default %s)\n"
		"  --ram-mib N          RAM tier for park, resume and the RAM gather; it must\n"
		"                       hold every stream (default: just that)\n"
		"  --reps N             timed steps per queue depth (default %u; the RAM\n"
		"                       gather runs max(N, %u))\n"
		"  --json               one JSON object on stdout; the table goes to stderr\n"
		"  --csv FILE           append one row per queue depth (header on a new file);\n"
		"                       columns (run-wide figures repeat on every row):\n"
		"                       " TIERS_CSV_HEADER "\n"
		"\n"
		"options of gpu (needs a CUDA build and a device, except --dry-run):\n"
		"  --preset NAME        model geometry (default llama3-8b)\n"
		"  --context S          positions per stream (default 131072)\n"
		"  --batch B            sequences (default 1)\n"
		"  --kmodes LIST        comma-separated ratioC (r = d/C, k = max(128, S/(2C))) or\n"
		"                       kN (fixed k = N, r = --r) (default " GPU_KMODES_DEFAULT ")\n"
		"  --r R                r of the fixed-k modes (default d/8)\n"
		"  --l L                local window (default k/4)\n"
		"  --reps N             timed SparQ calls per k-mode, rounded up to whole passes\n"
		"                       over the layers built (default %u)\n"
		"  --layers N           layers of streams to build and rotate (default: until the\n"
		"                       key slice scored per pass exceeds %u MiB, at most the\n"
		"                       model's layers)\n"
		"  --threads N          host threads for data and the backend, 0 = all (default 0)\n"
		"  --config NAME        label of the configuration in the CSV (default S<S/1024>K-b<B>)\n"
		"  --csv FILE           append one row per k-mode (header on a new file);\n"
		"                       columns: " GPU_CSV_HEADER "\n"
		"  --jsonl FILE         append the configuration's JSON object as one line\n"
		"  --json               the JSON object on stdout; the table goes to stderr\n"
		"  --dry-run            print the plan and the floor formulas, evaluated with\n"
		"                       assumed ceilings; no GPU needed\n"
		"  --h2d-gbs X --hbm-gbs Y\n"
		"                       the ceilings --dry-run assumes (default %.1f and %.0f)\n"
		"  --key-slice native|int8\n"
		"                       the CUDA backend's key slices (default native); the\n"
		"                       slice bytes of the floor and the measured GPU memory per\n"
		"                       token follow it\n"
		"  `kernel --backend cuda` runs one configuration of this mode (its --ratio or\n"
		"  --r/--k give the one k-mode)\n"
		"\n"
		"exit status: 0 success, 1 runtime failure, 2 usage error\n",
		TIERS_STREAMS_DEFAULT, TIERS_RECORDS_DEFAULT, TIERS_RB_DEFAULT, TIERS_K_DEFAULT,
		TIERS_QD_DEFAULT, TIERS_REPS_DEFAULT, RAM_REPS_MIN, GPU_REPS_DEFAULT,
		(unsigned)(GPU_ROTATE_BYTES >> 20), GPU_ASSUME_H2D, GPU_ASSUME_HBM);
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
	o->dir = ".";
	o->key_slices[0] = SPARQ_SLICE_NATIVE;
	o->n_key_slices = 1;
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
	      IS("--backend") || IS("--csv") || IS("--store") || IS("--dir") ||
	      IS("--key-slice")))
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
	} else if (IS("--csv")) {
		if (!val[0])
			return usage_error("--csv: expected a file path, got ''");
		o->csv = val;
	} else if (IS("--store")) {
		if (strcmp(val, "heap") && strcmp(val, "tiers"))
			return usage_error("--store: expected heap or tiers, got '%s'", val);
		o->tiers = strcmp(val, "tiers") == 0;
	} else if (IS("--dir")) {
		if (!val[0] || strlen(val) > 3000)
			return usage_error("--dir: expected a directory path (up to 3000 bytes)");
		o->dir = val;
	} else if (IS("--key-slice")) {
		if (bench_parse_key_slices(val, o->key_slices, &o->n_key_slices))
			ret = usage_error("--key-slice: expected native, int8 or both, got '%s'",
					  val);
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
	uint64_t es = sparq_dtype_size(o->dtype), d = o->preset->d, slice = 0;

	/* the formats run one after the other: the larger slice counts */
	for (uint32_t i = 0; i < o->n_key_slices; i++) {
		uint64_t b = sparq_slice_position_bytes(o->key_slices[i], (uint32_t)d, o->dtype);
		slice = b > slice ? b : slice;
	}
	/* record 2·d, the slice, dense scratch: sel, row pointer, g weights */
	return o->S * (2 * d * es + slice + 4 + 8 + 4 * (uint64_t)o->g);
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
	if (o->tiers && o->csv)
		return usage_error("--csv: the kernel CSV has no store column; --store tiers "
				   "reports in the table and --json");
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

	/* --store tiers keeps two copies: in place and copy-only */
	uint64_t need = stream_bytes(o) * o->batch * p->n_kv * (o->tiers ? 2 : 1);
	uint64_t have = phys_bytes();
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
	/* the manager removed its stream files at close: the directory is empty */
	if (b->tm_dir && rmdir(b->tm_dir))
		fprintf(stderr, PROG ": cannot remove %s: %s\n", b->tm_dir, strerror(errno));
	free(b->tm_dir);
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
static void fill_queries(float *qbuf, uint32_t n_items, uint32_t g, uint32_t d, uint64_t seed)
{
	struct bench_rng rng;
	float own = sqrtf(1.0f - GROUP_SHARED * GROUP_SHARED);

	bench_rng_seed(&rng, seed);
	for (uint32_t i = 0; i < n_items; i++) {
		float *q = qbuf + (size_t)i * g * d;

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

static void make_queries(struct bench *b)
{
	fill_queries(b->q, b->n_items, b->g, b->d, SEED ^ 0x51ull);
}

/*
 * --store tiers: a tier manager whose RAM tier holds every record (nothing is demoted,
 * the device is never read), in a private directory under --dir.
 */
static int open_tiers_store(struct bench *b, const struct opts *o, bool in_place)
{
	struct tier_manager_config cfg;
	uint64_t rec = 2ull * o->preset->d * sparq_dtype_size(o->dtype), per_chunk, chunks;
	const char *why = "";
	size_t len = strlen(o->dir) + 32;
	int ret;

	b->tm_dir = malloc(len);
	if (!b->tm_dir)
		return -ENOMEM;
	snprintf(b->tm_dir, len, "%s/sparq-bench-XXXXXX", o->dir);
	if (!mkdtemp(b->tm_dir)) {
		ret = -errno;
		fprintf(stderr, PROG ": --dir: cannot create %s: %s\n", b->tm_dir, strerror(-ret));
		free(b->tm_dir);
		b->tm_dir = NULL;
		return ret;
	}
	tier_manager_defaults(&cfg);
	cfg.dir = b->tm_dir;
	cfg.in_place = in_place;
	per_chunk = cfg.chunk_bytes / rec;
	chunks = (uint64_t)b->n_items * ((o->S + per_chunk - 1) / per_chunk);
	cfg.ram_bytes = chunks * cfg.chunk_bytes;
	cfg.nvme_bytes = cfg.ram_bytes;
	ret = tier_manager_open(&cfg, &b->tm, &why);
	if (ret) {
		fprintf(stderr, PROG ": tier_manager_open in %s: %s (errno %d: %s)\n", b->tm_dir,
			why, -ret, strerror(-ret));
		return ret;
	}
	b->st = tier_manager_store(b->tm);
	return 0;
}

static int bench_setup(struct bench *b, const struct opts *o, bool in_place, double *setup_s)
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
	if (o->tiers) {
		ret = open_tiers_store(b, o, in_place);
		if (ret)
			return ret;
	} else {
		ret = sparq_store_heap_create(STORE_CHUNK, 0, &b->st);
		if (ret) {
			fprintf(stderr, PROG ": cannot create the heap store: %s\n", strerror(-ret));
			return ret;
		}
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

/* One table line: quantity, value, the limit it is compared with, the ratio, in
 * columns of the given widths (each mode sizes its own table). */
static void row_w(FILE *f, int w_what, int w_value, int w_limit, const char *what,
		  const char *value, const char *limit, const char *ratio)
{
	fprintf(f, "%-*s %-*s %-*s %s\n", w_what, what, w_value, value, w_limit,
		limit ? limit : "", ratio ? ratio : "");
}

static void row(FILE *f, const char *what, const char *value, const char *limit, const char *ratio)
{
	row_w(f, 34, 16, 34, what, value, limit, ratio);
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
	fprintf(f, "  key slice %s: %u bytes per position and KV head (native %u)\n",
		sparq_slice_format_name(r->key_slice),
		sparq_slice_position_bytes(r->key_slice, p->d, o->dtype),
		sparq_slice_position_bytes(SPARQ_SLICE_NATIVE, p->d, o->dtype));
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

	if (o->tiers) {
		const struct timing *cp = &r->copied;

		fprintf(f, "\nrecords in the tier manager (RAM tier), read in place vs copied "
			   "(in_place off), same run:\n");
		snprintf(v, sizeof(v), "%.3f ms", sq->med_ms[PH_STEP]);
		snprintf(l, sizeof(l), "copied %.3f ms", cp->med_ms[PH_STEP]);
		snprintf(q, sizeof(q), "%.2fx copied / in place",
			 ratio_of(cp->med_ms[PH_STEP], sq->med_ms[PH_STEP]));
		row(f, "SparQ step, in place (median)", v, l, q);
		/* the same work in both runs: their difference is the machine's noise */
		snprintf(v, sizeof(v), "%.3f ms", sq->med_ms[PH_SCORE] + sq->med_ms[PH_SELECT]);
		snprintf(l, sizeof(l), "copied %.3f ms", cp->med_ms[PH_SCORE] + cp->med_ms[PH_SELECT]);
		snprintf(q, sizeof(q), "%.2fx (same work: noise)",
			 ratio_of(cp->med_ms[PH_SCORE] + cp->med_ms[PH_SELECT],
				  sq->med_ms[PH_SCORE] + sq->med_ms[PH_SELECT]));
		row(f, "score + select, in place (median)", v, l, q);
		snprintf(v, sizeof(v), "%.3f ms", sq->med_ms[PH_GATHER]);
		snprintf(l, sizeof(l), "copied %.3f ms", cp->med_ms[PH_GATHER]);
		snprintf(q, sizeof(q), "%.2fx", ratio_of(cp->med_ms[PH_GATHER],
							 sq->med_ms[PH_GATHER]));
		row(f, "gather phase, in place (median)", v, l, q);
		snprintf(v, sizeof(v), "%.3f ms", sq->med_ms[PH_EXACT]);
		snprintf(l, sizeof(l), "copied %.3f ms", cp->med_ms[PH_EXACT]);
		snprintf(q, sizeof(q), "%.2fx", ratio_of(cp->med_ms[PH_EXACT],
							 sq->med_ms[PH_EXACT]));
		row(f, "exact phase, in place (median)", v, l, q);
		fmt_bytes(b1, sizeof(b1), cp->record_bytes);
		double cgbs = ratio_of((double)cp->record_bytes, cp->med_ms[PH_GATHER] * 1e6);
		snprintf(v, sizeof(v), "%.2f GB/s", cgbs);
		snprintf(l, sizeof(l), "copy bw %.2f GB/s", r->bw.copy_gbs);
		snprintf(q, sizeof(q), "%.2f of copy bw (%s copied)", ratio_of(cgbs, r->bw.copy_gbs),
			 b1);
		row(f, "copied: records / gather phase", v, l, q);
		snprintf(v, sizeof(v), "%.3f ms", ratio_of((double)cp->record_bytes,
							    r->bw.copy_gbs * 1e6));
		snprintf(l, sizeof(l), "copied gather %.3f ms", cp->med_ms[PH_GATHER]);
		row(f, "  memcpy floor of those bytes", v, l, NULL);
		snprintf(v, sizeof(v), "%" PRIu64 " / %" PRIu64, r->holds, r->hold_misses);
		row(f, "streams held / refused (in place)", v, "calls x streams",
		    r->hold_misses ? "some streams copied" : "every stream in place");
		row(f, "outputs in place == copied", r->identical ? "bit for bit" : "DIFFER", NULL,
		    NULL);
		if (strcmp(o->backend, "cuda") == 0)
			fprintf(f, "note: on the GPU the bandwidth limits above are this host's "
				   "memory; sparq-bench gpu measures the PCIe and zero-copy ceilings\n");
	}

	if (r->score_bw_fraction > 1.0)
		fprintf(f, "\nnote: the key slice (%.1f MiB) is read faster than DRAM: at this S it is "
			   "largely cache-resident, so score_bw_fraction says little\n",
			(double)sq->slice_bytes / (1u << 20));
	if (sq->n_sel >= o->S)
		fprintf(f, "\nnote: k >= S, so the SparQ step is exact dense attention\n");
}

/* ---- CSV ---- */

/* The k-mode's label, as mode gpu names its k-modes. */
static void kmode_name(char *buf, size_t n, bool have_r, uint32_t r, uint32_t k, double ratio)
{
	if (have_r)
		snprintf(buf, n, "r%u-k%u", r, k);
	else
		snprintf(buf, n, "ratio%g", ratio);
}

/* Writes the row into c, opened before the run (so a wrong file fails before it). */
static int kernel_write_csv(struct bench_csv *c, const struct report *r, const struct opts *o)
{
	const struct timing *sq = &r->sq, *dn = &r->dn;
	char km[32];

	kmode_name(km, sizeof(km), o->have_r, o->r, o->k, o->ratio);
	/* the format rides on the k-mode label, so the columns stay as they were */
	if (r->key_slice != SPARQ_SLICE_NATIVE)
		snprintf(km + strlen(km), sizeof(km) - strlen(km), "-%s",
			 sparq_slice_format_name(r->key_slice));
	bench_csv_str(c, o->backend);
	bench_csv_str(c, o->preset->name);
	bench_csv_u64(c, o->S);
	bench_csv_u64(c, o->batch);
	bench_csv_str(c, km);
	bench_csv_u64(c, sq->used.r);
	bench_csv_u64(c, sq->used.k);
	bench_csv_u64(c, sq->used.l);
	bench_csv_str(c, sparq_dtype_name(o->dtype));
	bench_csv_u64(c, o->n_threads);
	bench_csv_num(c, true, sq->med_ms[PH_STEP]);
	bench_csv_num(c, true, sq->p90_step_ms);
	bench_csv_num(c, r->floor_ms > 0.0, r->floor_ms);
	bench_csv_num(c, r->floor_ms > 0.0, ratio_of(sq->med_ms[PH_STEP], r->floor_ms));
	bench_csv_num(c, true, dn->med_ms[PH_STEP]);
	bench_csv_num(c, r->dense_floor_ms > 0.0, r->dense_floor_ms);
	bench_csv_num(c, r->dense_floor_ms > 0.0,
		      ratio_of(dn->med_ms[PH_STEP], r->dense_floor_ms));
	bench_csv_num(c, r->speedup > 0.0, r->speedup);
	bench_csv_num(c, true, r->bw.read_gbs);
	bench_csv_num(c, true, r->rel_err);
	bench_csv_end_row(c);
	return 0;
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
	json_str(f, "key_slice", sparq_slice_format_name(r->key_slice), &first);
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
	json_str(f, "store", o->tiers ? "tiers" : "heap", &first);
	if (o->tiers) {
		json_num(f, "copied_step_ms", r->copied.med_ms[PH_STEP], &first);
		json_num(f, "copied_gather_ms", r->copied.med_ms[PH_GATHER], &first);
		json_num(f, "copied_exact_ms", r->copied.med_ms[PH_EXACT], &first);
		json_num(f, "copied_vs_in_place", ratio_of(r->copied.med_ms[PH_STEP],
							   r->sq.med_ms[PH_STEP]), &first);
		json_u64(f, "holds", r->holds, &first);
		json_u64(f, "hold_misses", r->hold_misses, &first);
		json_u64(f, "outputs_identical", r->identical, &first);
	}
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
	struct sparq_backend_config cfg = { .n_threads = o->n_threads, .key_slice = r->key_slice };
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

/*
 * --store tiers: the same layer in a copy-only manager (the same seeds, so the same
 * records and queries), the SparQ step timed there; its outputs must equal the
 * in-place run's bit for bit. Freed before the dense baseline runs.
 */
static int time_copied(struct bench *b, const struct opts *o, struct report *r)
{
	struct bench c = { .be = b->be };
	struct sparq_attend_batch batch;
	double setup_s;
	int ret;

	fprintf(stderr, PROG ": filling the copy-only tier manager...\n");
	ret = bench_setup(&c, o, false, &setup_s);
	if (ret)
		goto out;
	fprintf(stderr, PROG ": timing the SparQ step with records copied (%u calls)...\n",
		o->reps);
	ret = time_attend(&c, &o->params, c.y, o->reps, &r->copied, &batch);
	if (ret) {
		report_attend_error("SparQ step, records copied", ret, &batch);
		goto out;
	}
	r->identical = !memcmp(b->y, c.y, (size_t)b->n_items * b->g * b->d * sizeof(float));
	if (!r->identical) {
		fprintf(stderr, PROG ": outputs with records in place and copied differ\n");
		ret = -EPROTO;
	}
out:
	c.be = NULL;  /* b's */
	bench_destroy(&c);
	return ret;
}

/*
 * One key-slice format, start to end: backend, streams (the same seeds for every
 * format, so both see the same keys and queries), the SparQ step and the dense one.
 * r->bw and r->key_slice are set by the caller.
 */
static int run_kernel_format(const struct opts *o, struct report *r, struct bench_csv *csv)
{
	struct bench b = { 0 };
	struct sparq_attend_batch batch;
	struct sparq_params dense;
	FILE *table = o->json ? stderr : stdout;
	int ret;

	ret = open_backend(&b, o, r);
	if (ret)
		goto out;
	fprintf(stderr, PROG ": filling %u streams x %" PRIu64 " positions (key slice %s)...\n",
		o->batch * o->preset->n_kv, o->S, sparq_slice_format_name(r->key_slice));
	ret = bench_setup(&b, o, true, &r->setup_s);
	if (ret)
		goto out;

	struct tier_stats ts0 = { 0 }, ts1 = { 0 };
	if (b.tm)
		tier_manager_stats(b.tm, &ts0);
	fprintf(stderr, PROG ": timing the SparQ step (%u calls)...\n", o->reps);
	ret = time_attend(&b, &o->params, b.y, o->reps, &r->sq, &batch);
	if (ret) {
		report_attend_error("SparQ step", ret, &batch);
		goto out;
	}
	if (b.tm) {
		tier_manager_stats(b.tm, &ts1);
		r->holds = ts1.holds - ts0.holds;
		r->hold_misses = ts1.hold_misses - ts0.hold_misses;
		ret = time_copied(&b, o, r);
		if (ret)
			goto out;
	}

	/* k >= S makes the step exact dense attention over every row; r is then unused */
	dense = (struct sparq_params){ .r = 1, .k = (uint32_t)o->S, .l = -1,
				       .blend = SPARQ_BLEND_AUTO };
	fprintf(stderr, PROG ": timing dense attention (%u calls)...\n", o->dense_reps);
	ret = time_attend(&b, &dense, b.y_dense, o->dense_reps, &r->dn, &batch);
	if (ret) {
		report_attend_error("dense baseline", ret, &batch);
		goto out;
	}

	derive(r, &b, o);
	if (o->json) {
		print_json(stdout, r, o);
		fflush(stdout);
	}
	print_table(table, r, o);
	if (o->csv)
		ret = kernel_write_csv(csv, r, o);
out:
	bench_destroy(&b);
	return ret;
}

/* --key-slice both: the two formats side by side, each against the same limit. */
static void print_slice_comparison(FILE *f, const struct report *nat, const struct report *i8,
				   const struct opts *o)
{
	char v[64], l[64], q[64], b1[32], b2[32];

	fprintf(f, "\nkey slice int8 vs native (same data, same queries, one run)\n");
	row(f, "quantity (one layer)", "int8", "native", "int8 / native");
	snprintf(v, sizeof(v), "%.3f ms", i8->sq.med_ms[PH_SCORE]);
	snprintf(l, sizeof(l), "%.3f ms", nat->sq.med_ms[PH_SCORE]);
	snprintf(q, sizeof(q), "%.3f", ratio_of(i8->sq.med_ms[PH_SCORE], nat->sq.med_ms[PH_SCORE]));
	row(f, "score phase (median)", v, l, q);
	fmt_bytes(b1, sizeof(b1), i8->sq.slice_bytes);
	fmt_bytes(b2, sizeof(b2), nat->sq.slice_bytes);
	snprintf(q, sizeof(q), "%.3f", ratio_of((double)i8->sq.slice_bytes,
						(double)nat->sq.slice_bytes));
	row(f, "key slice bytes scored per call", b1, b2, q);
	snprintf(v, sizeof(v), "%.3f ms", ratio_of((double)i8->sq.slice_bytes,
						   i8->bw.read_gbs * 1e6));
	snprintf(l, sizeof(l), "%.3f ms", ratio_of((double)nat->sq.slice_bytes,
						   nat->bw.read_gbs * 1e6));
	row(f, "score floor (slice / read bw)", v, l, NULL);
	snprintf(v, sizeof(v), "%.2f of %.2f GB/s", i8->score_gbs, i8->bw.read_gbs);
	snprintf(l, sizeof(l), "%.2f of %.2f GB/s", nat->score_gbs, nat->bw.read_gbs);
	snprintf(q, sizeof(q), "%.2f / %.2f of read bw", i8->score_bw_fraction,
		 nat->score_bw_fraction);
	row(f, "key slice read rate", v, l, q);
	snprintf(v, sizeof(v), "%.3f ms", i8->sq.med_ms[PH_STEP]);
	snprintf(l, sizeof(l), "%.3f ms", nat->sq.med_ms[PH_STEP]);
	snprintf(q, sizeof(q), "%.3f", ratio_of(i8->sq.med_ms[PH_STEP], nat->sq.med_ms[PH_STEP]));
	row(f, "SparQ step (median)", v, l, q);
	snprintf(v, sizeof(v), "%u B", sparq_slice_position_bytes(SPARQ_SLICE_INT8, o->preset->d,
								   o->dtype));
	snprintf(l, sizeof(l), "%u B", sparq_slice_position_bytes(SPARQ_SLICE_NATIVE,
								   o->preset->d, o->dtype));
	snprintf(q, sizeof(q), "%.3f",
		 ratio_of(sparq_slice_position_bytes(SPARQ_SLICE_INT8, o->preset->d, o->dtype),
			  sparq_slice_position_bytes(SPARQ_SLICE_NATIVE, o->preset->d, o->dtype)));
	row(f, "slice memory per position, KV head", v, l, q);
	snprintf(v, sizeof(v), "%.4f", i8->rel_err);
	snprintf(l, sizeof(l), "%.4f", nat->rel_err);
	row(f, "output error vs dense (rel. L2)", v, l, NULL);
}

static int run_kernel(const struct opts *o)
{
	struct report r[2];
	struct bench_csv csv = { 0 };
	size_t bw_bytes = BW_BYTES;
	uint64_t phys = phys_bytes();
	int ret = 0;

	memset(r, 0, sizeof(r));
	if (o->csv) {
		ret = bench_csv_open(&csv, o->csv, KERNEL_CSV_HEADER, PROG);
		if (ret)
			return ret;
	}
	/* on a small machine, keep the two buffers within a quarter of its memory */
	if (phys && bw_bytes > phys / 8)
		bw_bytes = (size_t)(phys / 8) & ~(size_t)4095;
	fprintf(stderr, PROG ": measuring memory bandwidth (%u threads, 2 x %zu MiB)...\n",
		o->n_threads, bw_bytes >> 20);
	ret = bench_mem_bw(o->n_threads, bw_bytes, BW_REPS, &r[0].bw);
	if (ret) {
		fprintf(stderr, PROG ": memory bandwidth measurement failed: errno %d (%s)\n", -ret,
			strerror(-ret));
		goto out;
	}
	for (uint32_t i = 0; i < o->n_key_slices && ret == 0; i++) {
		r[i].bw = r[0].bw;
		r[i].key_slice = o->key_slices[i];
		if (i)
			fprintf(o->json ? stderr : stdout, "\n");
		ret = run_kernel_format(o, &r[i], &csv);
	}
	if (ret == 0 && o->n_key_slices == 2)
		print_slice_comparison(o->json ? stderr : stdout, &r[0], &r[1], o);
	/* read-pass checksum: printed so the pass is observable, not optimised away */
	if (ret == 0)
		fprintf(stderr, PROG ": done (read-pass checksum %016" PRIx64 ")\n", r[0].bw.checksum);
out:
	if (bench_csv_close(&csv) && !ret)
		ret = -EIO;
	return ret;
}

/* ==== mode tiers ==== */

/* Sequential baseline: requests of this size, this many in flight, over 2x as many
 * buffers (reads may land in a buffer another request still fills: the bytes are
 * thrown away, only the transfer is measured). */
#define SEQ_REQ_BYTES (4u << 20)
#define SEQ_QD 8u
#define SEQ_BUFS (2u * SEQ_QD)
/* Single reads, one per submission, for the qd-1 latency distribution. */
#define LAT_READS 4000u
#define TIERS_WARMUP 1u
/* Issue 3: top-k gather from NVMe at >= 80% of raw random-read IOPS at the same qd. */
#define GATHER_TARGET 0.80
/* RAM tier of the managers that serve gathers from NVMe: a few chunks, so nothing of
 * the streams is resident (resume with to_ram = false loads nothing anyway). */
#define NVME_RAM_CHUNKS 4u
#define TIERS_SESSION 0x5350415251424e43ull /* "SPARQBNC" */
/* Memory bandwidth buffers: far beyond any cache, half the kernel mode's. */
#define TIERS_BW_BYTES ((size_t)512 << 20)
/* Records per store write while filling: a bulk append, like a prefill. */
#define FILL_RECORDS 4096u
#define RAW_FILE "raw-device.dat"
#define STAGING_MAX (1u << 30)
/* The RAM gather's floor copies rows out of at most this much plain memory. */
#define WINDOW_MAX ((uint64_t)1 << 30)

struct tiers_opts {
	const char *dir;
	uint32_t streams, records, record_bytes, k, reps;
	uint32_t qd[TIERS_QD_MAX], n_qd;
	uint64_t ram_mib;
	const char *csv;                   /* NULL = none */
	bool have_ram, json;
	/* derived once everything is validated */
	struct tier_manager_config base;   /* manager defaults every manager starts from */
	uint32_t chunk_records, chunks_per_stream, max_qd;
	uint64_t ram_need;                 /* bytes of chunks holding every stream */
	uint64_t ram_bytes;                /* RAM tier for park / resume / RAM gather */
	uint64_t step_records;             /* streams × k */
};

struct tiers_qd_result {
	uint32_t qd, in_flight;            /* in_flight: min(qd, staging / unit) */
	double raw_iops, raw_gbs, raw_lat_ms, raw_p50_ms, raw_p99_ms;
	double g_rps, g_gbs, g_p50_ms, g_p99_ms, g_vs_raw;
	uint64_t nvme_served, ram_served, promotions;
	uint64_t gather_bytes, gather_requested;
};

struct tiers_report {
	uint32_t align, unit, staging, per_submit;
	uint64_t data_bytes;               /* records × record_bytes, all streams */
	uint64_t raw_bytes;                /* records × unit: the raw file, one stream file set */
	double fill_s, total_s;
	struct bench_bw bw;
	size_t bw_bytes;
	double mem_copy_gbs;               /* bytes copied / s = bw.copy_gbs / 2 */
	double seq_write_gbs, seq_read_gbs;
	bool seq_huge, window_huge;
	uint64_t window_bytes;             /* the random-row memcpy floor's buffer */
	double row_copy_gbs, ram_vs_rows;
	double lat_p50_ms, lat_p99_ms, lat_mean_ms;
	double park_s, park_gbs, resume_s, resume_gbs, park_vs, resume_vs;
	uint32_t ram_reps;
	double ram_rps, ram_gbs, ram_p50_ms, ram_p99_ms, ram_vs_copy;
	uint64_t ram_nvme_served;
	double read_amp;
	uint64_t promotions;
	struct tiers_qd_result q[TIERS_QD_MAX];
	uint64_t peak_rss, peak_disk;
};

/* What one run holds: every pointer owned, freed by tiers_destroy on every path. */
struct tiers_ctx {
	const struct tiers_opts *o;
	char *work, *store, *raw_path;
	bool made_dir, made_work;
	uint32_t unit, staging;
	uint64_t nvme_cap;
	uint32_t *pos;                     /* [streams][k] positions of the current step */
	uint64_t *bits;                    /* sampling scratch */
	uint8_t *out;                      /* [streams][k][record_bytes] gather output */
	uint8_t *want;                     /* [record_bytes] */
	struct sparq_gather *g;            /* [streams] */
	struct sparq_store_stream **s;     /* [streams], NULL when closed */
	struct tier_io *ios;               /* [per_submit] raw descriptors */
	uint64_t *ns_a, *ns_b;             /* [max(reps, RAM_REPS_MIN, LAT_READS)] */
};

static volatile sig_atomic_t tiers_stop;

static void tiers_on_signal(int sig)
{
	(void)sig;
	tiers_stop = 1;
}

static int interrupted(void)
{
	fprintf(stderr, PROG ": interrupted; removing the benchmark's files\n");
	return -EINTR;
}

static uint64_t round_up_u64(uint64_t x, uint64_t a)
{
	return (x + a - 1) / a * a;
}

/* ---- options ---- */

static int parse_qd_list(const char *val, struct tiers_opts *o)
{
	char buf[256], *save = NULL;
	size_t len = strlen(val);

	if (!len || len >= sizeof(buf) || val[0] == ',' || val[len - 1] == ',' ||
	    strstr(val, ",,"))
		return usage_error("--qd: expected a comma-separated list of queue depths in "
				   "[1, 4096], e.g. " TIERS_QD_DEFAULT "; got '%s'", val);
	memcpy(buf, val, len + 1);
	o->n_qd = 0;
	for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		uint32_t q;

		if (o->n_qd == TIERS_QD_MAX)
			return usage_error("--qd: at most %u queue depths", TIERS_QD_MAX);
		if (parse_u32("--qd", tok, 1, 4096, &q))
			return -EINVAL;
		for (uint32_t i = 0; i < o->n_qd; i++)
			if (o->qd[i] == q)
				return usage_error("--qd: queue depth %u is listed twice", q);
		/* insertion keeps the list ascending, the order the table reads best in */
		uint32_t i = o->n_qd++;
		for (; i > 0 && o->qd[i - 1] > q; i--)
			o->qd[i] = o->qd[i - 1];
		o->qd[i] = q;
	}
	return 0;
}

static void tiers_opts_default(struct tiers_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->dir = TIERS_DIR_DEFAULT;
	o->streams = TIERS_STREAMS_DEFAULT;
	o->records = TIERS_RECORDS_DEFAULT;
	o->record_bytes = TIERS_RB_DEFAULT;
	o->k = TIERS_K_DEFAULT;
	o->reps = TIERS_REPS_DEFAULT;
	tier_manager_defaults(&o->base);
	parse_qd_list(TIERS_QD_DEFAULT, o);
}

/* One option; returns 1 when it was --help. */
static int parse_tiers_one(struct tiers_opts *o, int argc, char **argv, int *i)
{
	const char *arg = argv[*i], *eq = strchr(arg, '='), *val = NULL;
	size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
	int ret = 0;

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
	if (!(IS("--dir") || IS("--records-per-stream") || IS("--streams") ||
	      IS("--record-bytes") || IS("--k") || IS("--qd") || IS("--ram-mib") || IS("--reps") ||
	      IS("--csv")))
		return usage_error("unknown option '%s' for mode tiers", arg);
	ret = opt_value(argc, argv, i, eq, &val);
	if (ret)
		return ret;
	if (IS("--dir")) {
		if (!val[0])
			return usage_error("--dir: expected a directory path, got ''");
		if (strlen(val) > 3000)
			return usage_error("--dir: path longer than 3000 bytes");
		o->dir = val;
	} else if (IS("--records-per-stream")) {
		ret = parse_u32("--records-per-stream", val, 1, TIERS_RECORDS_MAX, &o->records);
	} else if (IS("--streams")) {
		ret = parse_u32("--streams", val, 1, TIERS_STREAMS_MAX, &o->streams);
	} else if (IS("--record-bytes")) {
		ret = parse_u32("--record-bytes", val, 2, o->base.chunk_bytes, &o->record_bytes);
		if (!ret && o->record_bytes % 2)
			return usage_error("--record-bytes: a record is a K row and a V row of "
					   "equal size, so it must be even; got %u", o->record_bytes);
	} else if (IS("--k")) {
		ret = parse_u32("--k", val, 1, TIERS_RECORDS_MAX, &o->k);
	} else if (IS("--qd")) {
		ret = parse_qd_list(val, o);
	} else if (IS("--ram-mib")) {
		ret = parse_u64("--ram-mib", val, 1, 1ull << 24, &o->ram_mib);
		o->have_ram = true;
	} else if (IS("--reps")) {
		ret = parse_u32("--reps", val, 1, 10000, &o->reps);
	} else if (IS("--csv")) {
		if (!val[0])
			return usage_error("--csv: expected a file path, got ''");
		o->csv = val;
	}
#undef IS
	return ret;
}

/* Free bytes of the filesystem holding path (or its parent when path is missing). */
static bool fs_free(const char *path, uint64_t *bytes)
{
	struct statvfs vfs;

	if (statvfs(path, &vfs))
		return false;
	*bytes = (uint64_t)vfs.f_bavail * vfs.f_frsize;
	return true;
}

static int tiers_opts_finish(struct tiers_opts *o)
{
	struct stat sb;
	char parent[4096];
	const char *probe = o->dir;
	uint64_t free_b, phys = phys_bytes();

	if (o->k > o->records)
		return usage_error("--k %u exceeds --records-per-stream %u: a step selects "
				   "distinct positions", o->k, o->records);
	if (stat(o->dir, &sb) == 0) {
		if (!S_ISDIR(sb.st_mode))
			return usage_error("--dir: '%s' exists and is not a directory", o->dir);
	} else if (errno == ENOENT) {
		snprintf(parent, sizeof(parent), "%s", o->dir);
		probe = dirname(parent);
		if (stat(probe, &sb) || !S_ISDIR(sb.st_mode))
			return usage_error("--dir: the parent of '%s' ('%s') is not an existing "
					   "directory (only the last component is created)",
					   o->dir, probe);
	} else {
		return usage_error("--dir: cannot stat '%s': %s", o->dir, strerror(errno));
	}

	o->max_qd = o->qd[o->n_qd - 1];
	o->chunk_records = o->base.chunk_bytes / o->record_bytes;
	o->chunks_per_stream = (o->records + o->chunk_records - 1) / o->chunk_records;
	o->ram_need = (uint64_t)o->streams * o->chunks_per_stream * o->base.chunk_bytes;
	o->step_records = (uint64_t)o->streams * o->k;
	uint64_t need_mib = (o->ram_need + (1u << 20) - 1) >> 20;
	if (o->have_ram && o->ram_mib < need_mib)
		return usage_error("--ram-mib %" PRIu64 " cannot hold the %u streams (%" PRIu64
				   " MiB of %u KiB chunks): resume into RAM and the RAM gather "
				   "need them all resident; give at least %" PRIu64
				   " or fewer/shorter streams",
				   o->ram_mib, o->streams, need_mib, o->base.chunk_bytes >> 10,
				   need_mib);
	o->ram_bytes = (o->have_ram ? o->ram_mib : need_mib) << 20;

	uint64_t data = (uint64_t)o->streams * o->records * o->record_bytes;
	uint64_t mem = o->ram_bytes + (data < WINDOW_MAX ? data : WINDOW_MAX) +
		       o->step_records * o->record_bytes;
	if (phys && mem > phys / 4 * 3)
		return usage_error("this run needs about %.1f GiB of memory (RAM tier %.1f GiB), "
				   "more than 3/4 of the machine's %.1f GiB; lower "
				   "--records-per-stream, --streams or --ram-mib",
				   (double)mem / (1u << 30), (double)o->ram_bytes / (1u << 30),
				   (double)phys / (1u << 30));
	/* raw file + stream files + checksums, at the smallest possible unit (512 B);
	 * checked again with the device's real alignment once it is known */
	uint64_t unit = round_up_u64(o->record_bytes, 512);
	uint64_t disk = 2 * (uint64_t)o->streams * o->chunks_per_stream * o->chunk_records * unit +
			(uint64_t)o->streams * o->records * 4;
	if (fs_free(probe, &free_b) && disk > free_b)
		return usage_error("this run writes about %.1f GiB into '%s' (a raw file and "
				   "the streams), more than the %.1f GiB free there; lower "
				   "--records-per-stream or --streams",
				   (double)disk / (1u << 30), o->dir, (double)free_b / (1u << 30));
	return 0;
}

/* 0 to run, 1 after --help, -EINVAL after a usage error (already reported). */
static int parse_tiers_args(int argc, char **argv, struct tiers_opts *o)
{
	tiers_opts_default(o);
	for (int i = 0; i < argc; i++) {
		if (strncmp(argv[i], "-", 1) != 0)
			return usage_error("unexpected argument '%s'", argv[i]);
		int ret = parse_tiers_one(o, argc, argv, &i);
		if (ret)
			return ret;
	}
	return tiers_opts_finish(o);
}

/* ---- data: records derived from (stream, position), positions from (phase, rep) ---- */

static void record_fill(uint32_t stream, uint32_t pos, uint32_t rb, uint8_t *rec)
{
	struct bench_rng rng;

	bench_rng_seed(&rng, SEED ^ ((uint64_t)stream << 40) ^ pos);
	for (uint32_t i = 0; i < rb; i += 8) {
		uint64_t x = bench_rng_next(&rng);
		memcpy(rec + i, &x, rb - i < 8 ? rb - i : 8);
	}
}

/* The step's positions: the same for the raw reads and the gather of one (phase, rep),
 * fresh for every other, so no read finds what an earlier one left in a cache. */
static void step_positions(struct tiers_ctx *c, uint32_t phase, uint32_t rep)
{
	const struct tiers_opts *o = c->o;
	struct bench_rng rng;

	bench_rng_seed(&rng, SEED ^ ((((uint64_t)phase << 32) | rep) * 0x9e3779b97f4a7c15ull));
	for (uint32_t s = 0; s < o->streams; s++)
		bench_sample_sorted(&rng, o->records, o->k, c->pos + (size_t)s * o->k, c->bits);
}

/* Every gathered record against its derived content. */
static int check_gather(struct tiers_ctx *c, const char *what)
{
	const struct tiers_opts *o = c->o;

	for (uint32_t s = 0; s < o->streams; s++) {
		for (uint32_t j = 0; j < o->k; j++) {
			uint32_t p = c->pos[(size_t)s * o->k + j];
			record_fill(s, p, o->record_bytes, c->want);
			if (memcmp(c->out + ((size_t)s * o->k + j) * o->record_bytes, c->want,
				   o->record_bytes)) {
				fprintf(stderr, PROG ": %s returned wrong bytes for stream %u position "
					"%u\n", what, s, p);
				return -EIO;
			}
		}
	}
	return 0;
}

/* ---- setup and teardown ---- */

static void tiers_log(void *user, enum tier_log_level lv, const char *msg)
{
	(void)user;
	if (lv <= TIER_LOG_WARN)
		fprintf(stderr, PROG ": tier manager %s: %s\n", lv == TIER_LOG_ERROR ? "error" : "warning",
			msg);
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	if (remove(path))
		fprintf(stderr, PROG ": cannot remove %s: %s\n", path, strerror(errno));
	return 0;
}

static void tiers_destroy(struct tiers_ctx *c)
{
	/* the private directory holds only what this run made */
	if (c->made_work)
		nftw(c->work, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	if (c->made_dir && rmdir(c->o->dir))
		fprintf(stderr, PROG ": cannot remove %s: %s\n", c->o->dir, strerror(errno));
	free(c->work);
	free(c->store);
	free(c->raw_path);
	free(c->pos);
	free(c->bits);
	free(c->out);
	free(c->want);
	free(c->g);
	free(c->s);
	free(c->ios);
	free(c->ns_a);
	free(c->ns_b);
}

static char *path_join(const char *a, const char *b)
{
	size_t n = strlen(a) + strlen(b) + 2;
	char *p = malloc(n);

	if (p)
		snprintf(p, n, "%s/%s", a, b);
	return p;
}

static int tiers_setup(struct tiers_ctx *c, const struct tiers_opts *o)
{
	size_t nsamples = o->reps > RAM_REPS_MIN ? o->reps : RAM_REPS_MIN;

	if (nsamples < LAT_READS)
		nsamples = LAT_READS;
	c->o = o;
	if (mkdir(o->dir, 0700) == 0) {
		c->made_dir = true;
	} else if (errno != EEXIST) {
		fprintf(stderr, PROG ": cannot create --dir %s: %s\n", o->dir, strerror(errno));
		return -errno;
	}
	c->work = path_join(o->dir, "sparq-bench-XXXXXX");
	if (!c->work)
		return -ENOMEM;
	if (!mkdtemp(c->work)) {
		int ret = -errno;
		fprintf(stderr, PROG ": cannot create a work directory in %s: %s\n", o->dir,
			strerror(-ret));
		return ret;
	}
	c->made_work = true;
	c->store = path_join(c->work, "store");
	c->raw_path = path_join(c->work, RAW_FILE);
	c->pos = malloc(o->step_records * sizeof(*c->pos));
	c->bits = malloc(((size_t)o->records + 63) / 64 * sizeof(*c->bits));
	c->out = malloc(o->step_records * o->record_bytes);
	c->want = malloc(o->record_bytes);
	c->g = calloc(o->streams, sizeof(*c->g));
	c->s = calloc(o->streams, sizeof(*c->s));
	c->ns_a = calloc(nsamples, sizeof(*c->ns_a));
	c->ns_b = calloc(nsamples, sizeof(*c->ns_b));
	if (!c->store || !c->raw_path || !c->pos || !c->bits || !c->out || !c->want || !c->g ||
	    !c->s || !c->ns_a || !c->ns_b) {
		fprintf(stderr, PROG ": out of memory for the step buffers\n");
		return -ENOMEM;
	}
	for (uint32_t s = 0; s < o->streams; s++)
		c->g[s] = (struct sparq_gather){ .pos = c->pos + (size_t)s * o->k, .n = o->k,
						 .out = c->out + (size_t)s * o->k * o->record_bytes };
	return 0;
}

static void open_failed(const char *what, const char *dir, int ret, const char *why)
{
	if (ret == -EOPNOTSUPP)
		fprintf(stderr, PROG ": %s refuses O_DIRECT or io_uring (%s); the tiers benchmark "
			"needs both: point --dir at a local filesystem such as ext4 or xfs\n",
			dir, why ? why : "no reason given");
	else
		fprintf(stderr, PROG ": %s on %s failed: %s (errno %d: %s)\n", what, dir,
			why ? why : "no reason given", -ret, strerror(-ret));
}

static int open_engine(struct tiers_ctx *c, uint32_t qd, uint32_t staging, struct tier_nvme **n,
		       int *fid, bool create)
{
	struct tier_nvme_config cfg = { .dir = c->work, .queue_depth = qd,
					.staging_bytes = staging, .max_files = 4 };
	const char *why = NULL;
	int ret = tier_nvme_open(&cfg, n, &why);

	if (ret) {
		*n = NULL;
		open_failed("tier_nvme_open", c->work, ret, why);
		return ret;
	}
	ret = tier_nvme_file_open(*n, RAW_FILE, create, fid);
	if (ret)
		fprintf(stderr, PROG ": cannot open %s: %s\n", c->raw_path, strerror(-ret));
	return ret;
}

static int open_manager(struct tiers_ctx *c, uint32_t qd, uint64_t ram_bytes, bool huge,
			struct tier_manager **m)
{
	struct tier_manager_config cfg = c->o->base;
	const char *why = NULL;
	int ret;

	cfg.dir = c->store;
	cfg.queue_depth = qd;
	cfg.ram_bytes = ram_bytes;
	cfg.huge_pages = huge;
	cfg.nvme_bytes = c->nvme_cap;
	cfg.staging_bytes = c->staging;
	cfg.log = tiers_log;
	ret = tier_manager_open(&cfg, m, &why);
	if (ret) {
		*m = NULL;
		open_failed("tier_manager_open", c->store, ret, why);
	}
	return ret;
}

static void close_streams(struct tiers_ctx *c, struct sparq_store *st)
{
	for (uint32_t s = 0; s < c->o->streams; s++) {
		if (c->s[s])
			st->ops->stream_close(st->ctx, c->s[s]);
		c->s[s] = NULL;
	}
}

/* ---- the raw device ---- */

/* One pass over the raw file with SEQ_REQ_BYTES requests, SEQ_QD in flight; a write
 * pass ends with fdatasync, inside the timing (park is durable when it returns too). */
static int seq_pass(struct tier_nvme *n, int fid, bool write, uint64_t bytes, uint8_t *buf,
		    double *gbs)
{
	uint32_t cnt = (uint32_t)((bytes + SEQ_REQ_BYTES - 1) / SEQ_REQ_BYTES);
	struct tier_io *ios = calloc(cnt, sizeof(*ios));
	int ret;

	if (!ios)
		return -ENOMEM;
	for (uint32_t i = 0; i < cnt; i++) {
		uint64_t off = (uint64_t)i * SEQ_REQ_BYTES;
		ios[i] = (struct tier_io){ .fid = fid, .write = write, .offset = off,
					   .len = (uint32_t)(bytes - off < SEQ_REQ_BYTES ? bytes - off
											: SEQ_REQ_BYTES),
					   .buf = buf + (size_t)(i % SEQ_BUFS) * SEQ_REQ_BYTES };
	}
	uint64_t t0 = bench_now_ns();
	ret = tier_nvme_submit(n, ios, cnt);
	if (!ret && write)
		ret = tier_nvme_file_sync(n, fid);
	uint64_t t1 = bench_now_ns();
	free(ios);
	if (ret) {
		fprintf(stderr, PROG ": sequential %s failed: %s\n", write ? "write" : "read",
			strerror(-ret));
		return ret;
	}
	*gbs = ratio_of((double)bytes, (double)(t1 - t0));
	return 0;
}

/* Sequential write, sequential read, then single random reads (latency at qd 1). */
static int raw_sequential(struct tiers_ctx *c, struct tiers_report *r)
{
	struct tier_nvme *n = NULL;
	uint8_t *buf = NULL;
	int fid = -1, ret;
	struct bench_rng rng;

	ret = open_engine(c, SEQ_QD, c->staging, &n, &fid, true);
	if (ret)
		goto out;
	/* huge pages, like the arena that park writes from and resume reads into */
	buf = bench_alloc_huge((size_t)SEQ_BUFS * SEQ_REQ_BYTES, &r->seq_huge);
	if (!buf) {
		ret = -ENOMEM;
		goto out;
	}
	/* random bytes: a virtual disk that compresses or deduplicates gets no help */
	bench_rng_seed(&rng, SEED ^ 0xd15cull);
	for (size_t i = 0; i < (size_t)SEQ_BUFS * SEQ_REQ_BYTES / 8; i++)
		((uint64_t *)buf)[i] = bench_rng_next(&rng);

	fprintf(stderr, PROG ": sequential write of %.2f GiB (%u MiB requests, qd %u)...\n",
		(double)r->raw_bytes / (1u << 30), SEQ_REQ_BYTES >> 20, SEQ_QD);
	ret = seq_pass(n, fid, true, r->raw_bytes, buf, &r->seq_write_gbs);
	if (ret || tiers_stop)
		goto out;
	fprintf(stderr, PROG ": sequential read...\n");
	ret = seq_pass(n, fid, false, r->raw_bytes, buf, &r->seq_read_gbs);
	if (ret || tiers_stop)
		goto out;

	uint64_t units = r->raw_bytes / c->unit, sum = 0;
	uint8_t *stage = tier_nvme_staging(n, NULL);
	for (uint32_t i = 0; i < LAT_READS && !ret; i++) {
		struct tier_io io = { .fid = fid, .offset = bench_rng_next(&rng) % units * c->unit,
				      .len = c->unit, .buf = stage };
		uint64_t t0 = bench_now_ns();
		ret = tier_nvme_submit(n, &io, 1);
		c->ns_a[i] = bench_now_ns() - t0;
		sum += c->ns_a[i];
	}
	if (ret) {
		fprintf(stderr, PROG ": single random reads failed: %s\n", strerror(-ret));
		goto out;
	}
	r->lat_mean_ms = (double)sum / LAT_READS / 1e6;
	r->lat_p50_ms = bench_median(c->ns_a, LAT_READS) / 1e6;
	r->lat_p99_ms = bench_percentile(c->ns_a, LAT_READS, 99.0) / 1e6;
out:
	free(buf);
	tier_nvme_close(n);
	return ret ? ret : tiers_stop ? interrupted() : 0;
}

/* One step's records read raw: stream s's file is the raw file's s-th slice; batches
 * of per_submit descriptors into the staging buffer, as the manager's gather issues. */
static int raw_step(struct tiers_ctx *c, struct tier_nvme *n, int fid, uint32_t per,
		    uint64_t *ns)
{
	const struct tiers_opts *o = c->o;
	uint8_t *stage = tier_nvme_staging(n, NULL);
	uint32_t q = 0;
	int ret = 0;

	uint64_t t0 = bench_now_ns();
	for (uint32_t s = 0; s < o->streams && !ret; s++) {
		for (uint32_t j = 0; j < o->k; j++) {
			uint64_t rec = (uint64_t)s * o->records + c->pos[(size_t)s * o->k + j];

			if (q == per) {
				ret = tier_nvme_submit(n, c->ios, q);
				q = 0;
				if (ret)
					break;
			}
			c->ios[q] = (struct tier_io){ .fid = fid, .offset = rec * c->unit,
						      .len = c->unit, .buf = stage + (size_t)q * c->unit };
			q++;
		}
	}
	if (!ret)
		ret = tier_nvme_submit(n, c->ios, q);
	*ns = bench_now_ns() - t0;
	if (ret)
		fprintf(stderr, PROG ": raw random reads failed: %s\n", strerror(-ret));
	return ret;
}

/* ---- the tier manager ---- */

/* Writes every stream fresh into the manager (bulk appends; all dirty in RAM). */
static int fill_streams(struct tiers_ctx *c, struct sparq_store *st)
{
	const struct tiers_opts *o = c->o;
	uint32_t row = o->record_bytes / 2;
	uint8_t *k = malloc((size_t)FILL_RECORDS * row), *v = malloc((size_t)FILL_RECORDS * row);
	int ret = 0;

	if (!k || !v) {
		ret = -ENOMEM;
		fprintf(stderr, PROG ": out of memory for the fill buffers\n");
		goto out;
	}
	for (uint32_t s = 0; s < o->streams && !ret; s++) {
		ret = st->ops->stream_open(st->ctx, o->record_bytes, &c->s[s]);
		if (ret) {
			c->s[s] = NULL;
			fprintf(stderr, PROG ": stream_open: %s\n", strerror(-ret));
			break;
		}
		for (uint32_t p = 0; p < o->records && !ret; p += FILL_RECORDS) {
			uint32_t nrec = o->records - p < FILL_RECORDS ? o->records - p : FILL_RECORDS;

			if (tiers_stop) {
				ret = interrupted();
				break;
			}
			for (uint32_t j = 0; j < nrec; j++) {
				record_fill(s, p + j, o->record_bytes, c->want);
				memcpy(k + (size_t)j * row, c->want, row);
				memcpy(v + (size_t)j * row, c->want + row, row);
			}
			ret = st->ops->write(st->ctx, c->s[s], p, nrec, k, v);
			if (ret)
				fprintf(stderr, PROG ": writing stream %u at %u: %s\n", s, p,
					strerror(-ret));
		}
	}
out:
	free(k);
	free(v);
	return ret;
}

static int resume(struct tiers_ctx *c, struct tier_manager *m, bool to_ram)
{
	int ret = tier_resume(m, TIERS_SESSION, NULL, 0, c->s, c->o->streams, to_ram);

	if (ret) {
		memset(c->s, 0, c->o->streams * sizeof(*c->s));
		fprintf(stderr, PROG ": tier_resume(to_ram = %s): %s\n", to_ram ? "true" : "false",
			strerror(-ret));
		return ret;
	}
	for (uint32_t s = 0; s < c->o->streams; s++)
		c->g[s].stream = c->s[s];
	return 0;
}

static int timed_gather(struct tiers_ctx *c, struct sparq_store *st, uint64_t *ns)
{
	uint64_t t0 = bench_now_ns();
	int ret = st->ops->gather(st->ctx, c->g, c->o->streams);

	*ns = bench_now_ns() - t0;
	if (ret)
		fprintf(stderr, PROG ": gather failed: %s\n", strerror(-ret));
	return ret;
}

/* The step's rows memcpy'd out of a plain buffer (row (s, p) at the same offset as in
 * a concatenation of the streams, wrapped at its end): the RAM gather's floor. */
static uint64_t copy_rows(struct tiers_ctx *c, const uint8_t *window, uint64_t bytes)
{
	const struct tiers_opts *o = c->o;
	uint64_t rows = bytes / o->record_bytes;

	uint64_t t0 = bench_now_ns();
	for (uint32_t s = 0; s < o->streams; s++) {
		for (uint32_t j = 0; j < o->k; j++) {
			uint64_t row = ((uint64_t)s * o->records + c->pos[(size_t)s * o->k + j]) % rows;
			memcpy(c->out + ((size_t)s * o->k + j) * o->record_bytes,
			       window + row * o->record_bytes, o->record_bytes);
		}
	}
	return bench_now_ns() - t0;
}

/*
 * Fill, park (timed), close, resume into RAM (timed), gather from RAM (timed), close.
 * The session stays parked for the NVMe phases.
 */
static int tiers_ram_phase(struct tiers_ctx *c, struct tiers_report *r)
{
	const struct tiers_opts *o = c->o;
	struct tier_manager *m = NULL;
	struct sparq_store *st = NULL;
	struct tier_stats a, b;
	uint8_t *window;
	int ret;

	/* the floor of a RAM gather: the same rows copied from plain memory that has the
	 * arena's size (up to WINDOW_MAX) and huge-page advice, touched before use */
	r->window_bytes = r->data_bytes < WINDOW_MAX ? r->data_bytes : WINDOW_MAX;
	window = bench_alloc_huge(r->window_bytes, &r->window_huge);
	if (!window) {
		fprintf(stderr, PROG ": out of memory for the %" PRIu64 " MiB row-copy buffer\n",
			r->window_bytes >> 20);
		return -ENOMEM;
	}
	memset(window, 0x3c, r->window_bytes);
	ret = open_manager(c, o->max_qd, o->ram_bytes, true, &m);
	if (ret) {
		free(window);
		return ret;
	}
	st = tier_manager_store(m);
	fprintf(stderr, PROG ": writing %u streams x %u records into the RAM tier...\n",
		o->streams, o->records);
	uint64_t t0 = bench_now_ns();
	ret = fill_streams(c, st);
	r->fill_s = (double)(bench_now_ns() - t0) / 1e9;
	if (ret)
		goto out;

	fprintf(stderr, PROG ": parking them...\n");
	t0 = bench_now_ns();
	ret = tier_park(m, TIERS_SESSION, NULL, 0, c->s, o->streams);
	r->park_s = (double)(bench_now_ns() - t0) / 1e9;
	if (ret) {
		fprintf(stderr, PROG ": tier_park: %s\n", strerror(-ret));
		goto out;
	}
	close_streams(c, st);
	if (tiers_stop) {
		ret = interrupted();
		goto out;
	}

	fprintf(stderr, PROG ": resuming into RAM...\n");
	t0 = bench_now_ns();
	ret = resume(c, m, true);
	r->resume_s = (double)(bench_now_ns() - t0) / 1e9;
	if (ret)
		goto out;

	fprintf(stderr, PROG ": gathering from RAM (%u steps), next to memcpy of the same rows "
		"from a plain %" PRIu64 " MiB buffer...\n", r->ram_reps, r->window_bytes >> 20);
	tier_manager_stats(m, &a);
	for (uint32_t rep = 0; rep < TIERS_WARMUP + r->ram_reps && !ret; rep++) {
		uint64_t ns_g, ns_rows;

		if (tiers_stop) {
			ret = interrupted();
			break;
		}
		step_positions(c, 0, rep);
		ret = timed_gather(c, st, &ns_g);
		if (!ret)
			ret = check_gather(c, "the RAM gather");
		ns_rows = copy_rows(c, window, r->window_bytes);
		if (rep >= TIERS_WARMUP) {
			c->ns_a[rep - TIERS_WARMUP] = ns_g;
			c->ns_b[rep - TIERS_WARMUP] = ns_rows;
		}
	}
	tier_manager_stats(m, &b);
	r->ram_nvme_served = b.nvme_records_read - a.nvme_records_read;
	if (!ret) {
		double med = bench_median(c->ns_a, r->ram_reps);
		r->ram_p50_ms = med / 1e6;
		r->ram_p99_ms = bench_percentile(c->ns_a, r->ram_reps, 99.0) / 1e6;
		r->ram_rps = ratio_of((double)o->step_records, med / 1e9);
		r->ram_gbs = ratio_of((double)o->step_records * o->record_bytes, med);
		r->row_copy_gbs = ratio_of((double)o->step_records * o->record_bytes,
					     bench_median(c->ns_b, r->ram_reps));
	}
out:
	if (m)
		close_streams(c, st);
	tier_manager_close(m);
	free(window);
	return ret;
}

/* Raw reads and NVMe gathers at one queue depth, step by step in alternation. */
static int tiers_qd_phase(struct tiers_ctx *c, uint32_t qi, struct tiers_qd_result *q,
			  uint32_t per)
{
	const struct tiers_opts *o = c->o;
	struct tier_nvme *n = NULL;
	struct tier_manager *m = NULL;
	struct sparq_store *st = NULL;
	struct tier_stats a, b;
	int fid = -1, ret;

	q->qd = o->qd[qi];
	q->in_flight = q->qd < per ? q->qd : per;
	ret = open_engine(c, q->qd, c->staging, &n, &fid, false);
	if (!ret)
		ret = open_manager(c, q->qd, (uint64_t)NVME_RAM_CHUNKS * o->base.chunk_bytes,
				   false, &m);
	if (ret)
		goto out;
	st = tier_manager_store(m);
	fprintf(stderr, PROG ": qd %u: raw reads and NVMe gathers, %u steps of %" PRIu64
		" records...\n", q->qd, o->reps, o->step_records);
	for (uint32_t rep = 0; rep < TIERS_WARMUP + o->reps && !ret; rep++) {
		bool warm = rep < TIERS_WARMUP;
		uint64_t ns_raw, ns_g;

		if (tiers_stop) {
			ret = interrupted();
			break;
		}
		step_positions(c, qi + 1, rep);
		ret = raw_step(c, n, fid, per, &ns_raw);
		if (ret)
			break;
		/* a fresh resume per step: every chunk starts with no NVMe hits, so the
		 * promotion rule cannot move chunks to RAM across steps */
		ret = resume(c, m, false);
		if (ret)
			break;
		tier_manager_stats(m, &a);
		ret = timed_gather(c, st, &ns_g);
		tier_manager_stats(m, &b);
		close_streams(c, st);
		if (!ret)
			ret = check_gather(c, "the NVMe gather");
		if (ret || warm)
			continue;
		c->ns_a[rep - TIERS_WARMUP] = ns_raw;
		c->ns_b[rep - TIERS_WARMUP] = ns_g;
		q->nvme_served += b.nvme_records_read - a.nvme_records_read;
		q->ram_served += b.ram_records_read - a.ram_records_read;
		q->promotions += b.promotions - a.promotions;
		q->gather_bytes += b.nvme_gather_bytes - a.nvme_gather_bytes;
		q->gather_requested += b.nvme_gather_requested - a.nvme_gather_requested;
	}
	if (ret)
		goto out;
	double raw = bench_median(c->ns_a, o->reps), g = bench_median(c->ns_b, o->reps);
	q->raw_iops = ratio_of((double)o->step_records, raw / 1e9);
	q->raw_gbs = ratio_of((double)o->step_records * c->unit, raw);
	q->raw_lat_ms = ratio_of((double)q->in_flight, q->raw_iops) * 1e3;
	q->raw_p50_ms = raw / 1e6;
	q->raw_p99_ms = bench_percentile(c->ns_a, o->reps, 99.0) / 1e6;
	q->g_rps = ratio_of((double)o->step_records, g / 1e9);
	q->g_gbs = ratio_of((double)o->step_records * o->record_bytes, g);
	q->g_p50_ms = g / 1e6;
	q->g_p99_ms = bench_percentile(c->ns_b, o->reps, 99.0) / 1e6;
	q->g_vs_raw = ratio_of(q->g_rps, q->raw_iops);
out:
	if (m)
		close_streams(c, st);
	tier_manager_close(m);
	tier_nvme_close(n);
	return ret;
}

/* ---- results ---- */

static void fmt_rate(char *buf, size_t n, double v, const char *unit)
{
	const char *sp = unit[0] ? " " : "";

	if (v >= 1e6)
		snprintf(buf, n, "%.2f M%s%s", v / 1e6, sp, unit);
	else if (v >= 1e3)
		snprintf(buf, n, "%.1f k%s%s", v / 1e3, sp, unit);
	else
		snprintf(buf, n, "%.0f%s%s", v, sp, unit);
}

/* The tiers table is wider than the kernel mode's. */
static void trow(FILE *f, const char *what, const char *value, const char *limit,
		 const char *ratio)
{
	row_w(f, 38, 19, 38, what, value, limit, ratio);
}

static void print_tiers_table(FILE *f, const struct tiers_report *r, const struct tiers_opts *o)
{
	char v[96], l[96], l2[96], q[128], b1[32], b2[32];

	fmt_bytes(b1, sizeof(b1), r->data_bytes);
	fprintf(f, PROG " tiers: %s (O_DIRECT alignment %u B)\n", o->dir, r->align);
	fprintf(f, "  %u streams x %u records of %u B = %s; one record = one %u B read "
		   "(read amplification %.2f)\n",
		o->streams, o->records, o->record_bytes, b1, r->unit,
		(double)r->unit / o->record_bytes);
	fmt_bytes(b1, sizeof(b1), o->step_records * o->record_bytes);
	fprintf(f, "  step: k = %u sorted distinct random positions per stream = %" PRIu64
		   " records (%s) in one batched gather\n", o->k, o->step_records, b1);
	fmt_bytes(b1, sizeof(b1), r->staging);
	fmt_bytes(b2, sizeof(b2), (uint64_t)NVME_RAM_CHUNKS * o->base.chunk_bytes);
	fprintf(f, "  manager: %u KiB chunks, staging %s (%u reads per submission), RAM tier "
		   "%" PRIu64 " MiB for park/resume/RAM gather, %s for NVMe gathers\n",
		o->base.chunk_bytes >> 10, b1, r->per_submit, o->ram_bytes >> 20, b2);
	fmt_bytes(b1, sizeof(b1), r->peak_rss);
	fmt_bytes(b2, sizeof(b2), r->peak_disk);
	fprintf(f, "  %u timed steps per qd after %u warm-up, raw and gather alternating on the "
		   "same positions; fill %.1f s, run %.1f s, peak RSS %s, peak disk %s\n\n",
		o->reps, TIERS_WARMUP, r->fill_s, r->total_s, b1, b2);

	trow(f, "quantity", "value", "compared with", "ratio");
	snprintf(v, sizeof(v), "%.2f GB/s", r->mem_copy_gbs);
	snprintf(l, sizeof(l), "read + write %.2f GB/s", r->bw.copy_gbs);
	snprintf(q, sizeof(q), "memcpy, 1 thread (%zu MiB)", r->bw_bytes >> 20);
	trow(f, q, v, l, NULL);
	fmt_bytes(b1, sizeof(b1), r->window_bytes);
	snprintf(v, sizeof(v), "%.2f GB/s", r->row_copy_gbs);
	snprintf(l, sizeof(l), "the steps' rows from %s%s", b1,
		 r->window_huge ? ", huge pages" : "");
	snprintf(q, sizeof(q), "memcpy of random %u B rows, 1 thread", o->record_bytes);
	trow(f, q, v, l, NULL);
	fmt_bytes(b1, sizeof(b1), r->raw_bytes);
	snprintf(v, sizeof(v), "%.3f GB/s", r->seq_write_gbs);
	snprintf(l, sizeof(l), "fresh %s file, + fdatasync", b1);
	snprintf(q, sizeof(q), "sequential write, %u MiB x qd %u", SEQ_REQ_BYTES >> 20, SEQ_QD);
	trow(f, q, v, l, NULL);
	snprintf(v, sizeof(v), "%.3f GB/s", r->seq_read_gbs);
	snprintf(q, sizeof(q), "sequential read, %u MiB x qd %u", SEQ_REQ_BYTES >> 20, SEQ_QD);
	trow(f, q, v, r->seq_huge ? "same file; huge-page buffers" : "same file", NULL);
	snprintf(v, sizeof(v), "%.3f / %.3f ms", r->lat_p50_ms, r->lat_p99_ms);
	snprintf(l, sizeof(l), "mean %.3f ms, %u reads", r->lat_mean_ms, LAT_READS);
	snprintf(q, sizeof(q), "one %u B read per submit, p50 / p99", r->unit);
	trow(f, q, v, l, NULL);

	for (uint32_t i = 0; i < o->n_qd; i++) {
		const struct tiers_qd_result *x = &r->q[i];

		fprintf(f, "\nqueue depth %u", x->qd);
		if (x->in_flight < x->qd)
			fprintf(f, " (at most %u in flight: the staging buffer holds %u units)",
				x->in_flight, r->per_submit);
		fprintf(f, "\n");
		fmt_rate(v, sizeof(v), x->raw_iops, "IOPS");
		snprintf(q, sizeof(q), "  raw random %u B reads", r->unit);
		trow(f, q, v, "the device's limit at this qd", NULL);
		snprintf(v, sizeof(v), "%.4f GB/s", x->raw_gbs);
		trow(f, "    bandwidth", v, NULL, NULL);
		snprintf(v, sizeof(v), "%.3f ms", x->raw_lat_ms);
		trow(f, "    latency per read (in flight/IOPS)", v, NULL, NULL);
		snprintf(v, sizeof(v), "%.1f / %.1f ms", x->raw_p50_ms, x->raw_p99_ms);
		trow(f, "    step, p50 / p99", v, NULL, NULL);
		fmt_rate(v, sizeof(v), x->g_rps, "rec/s");
		fmt_rate(b1, sizeof(b1), x->raw_iops, "IOPS");
		snprintf(l, sizeof(l), "raw %s", b1);
		snprintf(q, sizeof(q), "%.2f gather_vs_raw_iops (target >= %.2f: %s)", x->g_vs_raw,
			 GATHER_TARGET, x->g_vs_raw >= GATHER_TARGET ? "met" : "MISSED");
		trow(f, "  top-k gather from NVMe", v, l, q);
		snprintf(v, sizeof(v), "%.4f GB/s", x->g_gbs);
		snprintf(l, sizeof(l), "raw %.4f GB/s", x->raw_gbs);
		snprintf(q, sizeof(q), "%.2f", ratio_of(x->g_gbs, x->raw_gbs));
		trow(f, "    bandwidth (record bytes)", v, l, q);
		snprintf(v, sizeof(v), "%.1f / %.1f ms", x->g_p50_ms, x->g_p99_ms);
		snprintf(l, sizeof(l), "raw %.1f / %.1f ms", x->raw_p50_ms, x->raw_p99_ms);
		trow(f, "    step, p50 / p99", v, l, NULL);
		snprintf(v, sizeof(v), "%" PRIu64 " / %" PRIu64 " / %" PRIu64, x->nvme_served,
			 x->ram_served, x->promotions);
		snprintf(l, sizeof(l), "of %" PRIu64 " records requested",
			 o->step_records * o->reps);
		trow(f, "    from NVMe / from RAM / promotions", v, l, NULL);
	}

	fprintf(f, "\n");
	snprintf(v, sizeof(v), "%.3f", r->read_amp);
	snprintf(l, sizeof(l), "unit %u B / record %u B", r->unit, o->record_bytes);
	trow(f, "read amplification (NVMe gathers)", v, l, NULL);
	fmt_rate(v, sizeof(v), r->ram_rps, "rec/s");
	snprintf(l, sizeof(l), "%u steps, p50 %.2f ms", r->ram_reps, r->ram_p50_ms);
	trow(f, "top-k gather from RAM", v, l, NULL);
	snprintf(v, sizeof(v), "%.2f GB/s", r->ram_gbs);
	snprintf(l, sizeof(l), "memcpy 1 thread %.2f GB/s", r->mem_copy_gbs);
	snprintf(q, sizeof(q), "%.2f gather_ram_vs_mem_copy", r->ram_vs_copy);
	trow(f, "  bandwidth (record bytes)", v, l, q);
	snprintf(l, sizeof(l), "random rows %.2f GB/s", r->row_copy_gbs);
	snprintf(q, sizeof(q), "%.2f gather_ram_vs_row_copy", r->ram_vs_rows);
	trow(f, "", "", l, q);
	fmt_bytes(b1, sizeof(b1), r->data_bytes);
	snprintf(v, sizeof(v), "%.3f GB/s", r->park_gbs);
	snprintf(l, sizeof(l), "seq write %.3f GB/s", r->seq_write_gbs);
	snprintf(q, sizeof(q), "%.2f park_vs_seq_write (%.2f s)", r->park_vs, r->park_s);
	snprintf(l2, sizeof(l2), "park, %s dirty in RAM", b1);
	trow(f, l2, v, l, q);
	snprintf(v, sizeof(v), "%.3f GB/s", r->resume_gbs);
	snprintf(l, sizeof(l), "seq read %.3f GB/s", r->seq_read_gbs);
	snprintf(q, sizeof(q), "%.2f resume_vs_seq_read (%.2f s)", r->resume_vs, r->resume_s);
	trow(f, "resume into RAM (to_ram)", v, l, q);

	fprintf(f, "\n%-6s %-14s %-16s %-8s %s\n", "qd", "raw IOPS", "gather rec/s", "ratio",
		"target");
	for (uint32_t i = 0; i < o->n_qd; i++) {
		const struct tiers_qd_result *x = &r->q[i];
		fmt_rate(v, sizeof(v), x->raw_iops, "");
		fmt_rate(l, sizeof(l), x->g_rps, "");
		fprintf(f, "%-6u %-14s %-16s %-8.2f >= %.2f %s\n", x->qd, v, l, x->g_vs_raw,
			GATHER_TARGET, x->g_vs_raw >= GATHER_TARGET ? "met" : "MISSED");
	}
	if (r->promotions)
		fprintf(f, "\nnote: %" PRIu64 " chunk promotions happened inside timed NVMe gathers "
			   "(k is large against the stream: a chunk hit chunk_records/4 times in one "
			   "step is read back whole); those gathers include chunk reads\n",
			r->promotions);
	if (r->ram_nvme_served)
		fprintf(f, "\nnote: the RAM gathers read %" PRIu64 " records from NVMe\n",
			r->ram_nvme_served);
}

static void json_arr(FILE *f, const char *key, const struct tiers_report *r, uint32_t n,
		     size_t off, bool is_u64, bool *first)
{
	json_key(f, key, first);
	fputc('[', f);
	for (uint32_t i = 0; i < n; i++) {
		const char *p = (const char *)&r->q[i] + off;
		if (i)
			fputs(", ", f);
		if (is_u64) {
			uint64_t u;
			memcpy(&u, p, sizeof(u));
			fprintf(f, "%" PRIu64, u);
		} else {
			double d;
			memcpy(&d, p, sizeof(d));
			if (isfinite(d))
				fprintf(f, "%.9g", d);
			else
				fputs("null", f);
		}
	}
	fputc(']', f);
}

static void print_tiers_json(FILE *f, const struct tiers_report *r, const struct tiers_opts *o)
{
	bool first = true;
	uint32_t n = o->n_qd;

	json_str(f, "mode", "tiers", &first);
	json_str(f, "dir", o->dir, &first);
	json_u64(f, "align", r->align, &first);
	json_u64(f, "unit", r->unit, &first);
	json_u64(f, "record_bytes", o->record_bytes, &first);
	json_u64(f, "streams", o->streams, &first);
	json_u64(f, "records_per_stream", o->records, &first);
	json_u64(f, "k", o->k, &first);
	json_u64(f, "step_records", o->step_records, &first);
	json_u64(f, "reps", o->reps, &first);
	json_u64(f, "data_bytes", r->data_bytes, &first);
	json_u64(f, "chunk_bytes", o->base.chunk_bytes, &first);
	json_u64(f, "staging_bytes", r->staging, &first);
	json_u64(f, "ram_tier_bytes", o->ram_bytes, &first);
	json_key(f, "qd", &first);
	fputc('[', f);
	for (uint32_t i = 0; i < n; i++)
		fprintf(f, "%s%u", i ? ", " : "", r->q[i].qd);
	fputc(']', f);
#define QARR(key, field, u) json_arr(f, key, r, n, offsetof(struct tiers_qd_result, field), u, &first)
	QARR("raw_iops", raw_iops, false);
	QARR("raw_gbs", raw_gbs, false);
	QARR("raw_lat_ms", raw_lat_ms, false);
	QARR("raw_step_p50_ms", raw_p50_ms, false);
	QARR("raw_step_p99_ms", raw_p99_ms, false);
	QARR("gather_nvme_records_per_s", g_rps, false);
	QARR("gather_nvme_gbs", g_gbs, false);
	QARR("gather_nvme_step_p50_ms", g_p50_ms, false);
	QARR("gather_nvme_step_p99_ms", g_p99_ms, false);
	QARR("gather_vs_raw_iops", g_vs_raw, false);
	QARR("gather_nvme_promotions", promotions, true);
	QARR("gather_nvme_ram_served", ram_served, true);
#undef QARR
	json_num(f, "gather_target", GATHER_TARGET, &first);
	json_num(f, "read_amplification", r->read_amp, &first);
	json_num(f, "raw_lat_qd1_p50_ms", r->lat_p50_ms, &first);
	json_num(f, "raw_lat_qd1_p99_ms", r->lat_p99_ms, &first);
	json_num(f, "gather_ram_records_per_s", r->ram_rps, &first);
	json_num(f, "gather_ram_gbs", r->ram_gbs, &first);
	json_num(f, "gather_ram_step_p50_ms", r->ram_p50_ms, &first);
	json_u64(f, "gather_ram_reps", r->ram_reps, &first);
	json_num(f, "mem_bw_gbs", r->bw.copy_gbs, &first);
	json_num(f, "mem_copy_gbs", r->mem_copy_gbs, &first);
	json_u64(f, "mem_bw_threads", 1, &first);
	json_num(f, "gather_ram_vs_mem_copy", r->ram_vs_copy, &first);
	json_num(f, "mem_row_copy_gbs", r->row_copy_gbs, &first);
	json_u64(f, "mem_row_copy_window_bytes", r->window_bytes, &first);
	json_num(f, "gather_ram_vs_row_copy", r->ram_vs_rows, &first);
	json_num(f, "park_gbs", r->park_gbs, &first);
	json_num(f, "park_s", r->park_s, &first);
	json_num(f, "resume_gbs", r->resume_gbs, &first);
	json_num(f, "resume_s", r->resume_s, &first);
	json_num(f, "seq_write_gbs", r->seq_write_gbs, &first);
	json_num(f, "seq_read_gbs", r->seq_read_gbs, &first);
	json_num(f, "park_vs_seq_write", r->park_vs, &first);
	json_num(f, "resume_vs_seq_read", r->resume_vs, &first);
	json_num(f, "fill_s", r->fill_s, &first);
	json_num(f, "total_s", r->total_s, &first);
	json_u64(f, "peak_rss_bytes", r->peak_rss, &first);
	json_u64(f, "peak_disk_bytes", r->peak_disk, &first);
	fprintf(f, "}\n");
}

/* Writes the rows into c, opened before the run (so a wrong file fails before it). */
static int tiers_write_csv(struct bench_csv *c, const struct tiers_report *r,
			   const struct tiers_opts *o)
{
	for (uint32_t i = 0; i < o->n_qd; i++) {
		const struct tiers_qd_result *q = &r->q[i];

		bench_csv_u64(c, o->record_bytes);
		bench_csv_u64(c, o->streams);
		bench_csv_u64(c, o->records);
		bench_csv_u64(c, o->k);
		bench_csv_u64(c, q->qd);
		bench_csv_num(c, true, q->raw_iops);
		bench_csv_num(c, true, q->raw_p50_ms);
		bench_csv_num(c, true, q->g_rps);
		bench_csv_num(c, true, q->g_p50_ms);
		bench_csv_num(c, true, q->g_p99_ms);
		bench_csv_num(c, true, q->g_vs_raw);
		bench_csv_num(c, true, r->read_amp);
		bench_csv_num(c, true, r->ram_rps);
		bench_csv_num(c, true, r->ram_vs_rows);
		bench_csv_num(c, true, r->park_gbs);
		bench_csv_num(c, true, r->park_vs);
		bench_csv_num(c, true, r->resume_gbs);
		bench_csv_num(c, true, r->resume_vs);
		bench_csv_end_row(c);
	}
	return bench_csv_close(c);
}

/* ---- mode tiers ---- */

static int run_tiers(const struct tiers_opts *o)
{
	struct tiers_ctx c = { 0 };
	struct tiers_report r = { 0 };
	struct sigaction sa = { .sa_handler = tiers_on_signal };
	struct rusage ru;
	FILE *table = o->json ? stderr : stdout;
	struct bench_csv csv = { 0 };
	uint64_t t_start = bench_now_ns(), free_b;
	int ret;

	if (o->csv) {
		ret = bench_csv_open(&csv, o->csv, TIERS_CSV_HEADER, PROG);
		if (ret)
			return ret;
	}
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	ret = tiers_setup(&c, o);
	if (ret)
		goto out;

	/* the device's alignment, from a probe engine on the work directory */
	{
		struct tier_nvme_config nc = { .dir = c.work, .queue_depth = 1,
					       .staging_bytes = 4096, .max_files = 1 };
		struct tier_nvme *n;
		const char *why = NULL;

		ret = tier_nvme_open(&nc, &n, &why);
		if (ret) {
			open_failed("tier_nvme_open", c.work, ret, why);
			goto out;
		}
		r.align = tier_nvme_align(n);
		tier_nvme_close(n);
	}
	c.unit = (uint32_t)round_up_u64(o->record_bytes, r.align);
	r.unit = c.unit;
	r.data_bytes = (uint64_t)o->streams * o->records * o->record_bytes;
	r.raw_bytes = (uint64_t)o->streams * o->records * c.unit;
	/* a staging buffer that keeps the deepest queue busy twice over, as the manager's */
	uint64_t staging = round_up_u64(2ull * o->max_qd * c.unit, 4096);
	if (staging < o->base.staging_bytes)
		staging = o->base.staging_bytes;
	if (staging > STAGING_MAX)
		staging = STAGING_MAX;
	c.staging = (uint32_t)staging;
	r.staging = c.staging;
	r.per_submit = c.staging / c.unit;
	c.nvme_cap = (uint64_t)o->streams * o->chunks_per_stream * o->chunk_records * c.unit +
		     o->base.chunk_bytes;
	r.peak_disk = r.raw_bytes + c.nvme_cap + (uint64_t)o->streams * o->records * 4;
	if (fs_free(c.work, &free_b) && r.peak_disk > free_b) {
		fprintf(stderr, PROG ": this run writes %.2f GiB into %s but only %.2f GiB are "
			"free there\n", (double)r.peak_disk / (1u << 30), o->dir,
			(double)free_b / (1u << 30));
		ret = -ENOSPC;
		goto out;
	}
	c.ios = calloc(r.per_submit, sizeof(*c.ios));
	if (!c.ios) {
		ret = -ENOMEM;
		goto out;
	}
	r.ram_reps = o->reps > RAM_REPS_MIN ? o->reps : RAM_REPS_MIN;

	uint64_t phys = phys_bytes();
	r.bw_bytes = TIERS_BW_BYTES;
	if (phys && r.bw_bytes > phys / 8)
		r.bw_bytes = (size_t)(phys / 8) & ~(size_t)4095;
	/* one thread: the manager copies a gather's records on the caller's thread */
	fprintf(stderr, PROG ": measuring memory bandwidth (1 thread, 2 x %zu MiB)...\n",
		r.bw_bytes >> 20);
	ret = bench_mem_bw(1, r.bw_bytes, BW_REPS, &r.bw);
	if (ret) {
		fprintf(stderr, PROG ": memory bandwidth measurement failed: errno %d (%s)\n", -ret,
			strerror(-ret));
		goto out;
	}
	r.mem_copy_gbs = r.bw.copy_gbs / 2.0;

	ret = raw_sequential(&c, &r);
	if (ret)
		goto out;
	ret = tiers_ram_phase(&c, &r);
	if (ret)
		goto out;
	for (uint32_t i = 0; i < o->n_qd && !ret; i++)
		ret = tiers_qd_phase(&c, i, &r.q[i], r.per_submit);
	if (ret)
		goto out;

	uint64_t gb = 0, greq = 0;
	for (uint32_t i = 0; i < o->n_qd; i++) {
		gb += r.q[i].gather_bytes;
		greq += r.q[i].gather_requested;
		r.promotions += r.q[i].promotions;
	}
	r.read_amp = ratio_of((double)gb, (double)greq);
	r.ram_vs_copy = ratio_of(r.ram_gbs, r.mem_copy_gbs);
	r.ram_vs_rows = ratio_of(r.ram_gbs, r.row_copy_gbs);
	r.park_gbs = ratio_of((double)r.data_bytes, r.park_s * 1e9);
	r.resume_gbs = ratio_of((double)r.data_bytes, r.resume_s * 1e9);
	r.park_vs = ratio_of(r.park_gbs, r.seq_write_gbs);
	r.resume_vs = ratio_of(r.resume_gbs, r.seq_read_gbs);
	if (getrusage(RUSAGE_SELF, &ru) == 0)
		r.peak_rss = (uint64_t)ru.ru_maxrss * 1024;
	r.total_s = (double)(bench_now_ns() - t_start) / 1e9;

	if (o->json) {
		print_tiers_json(stdout, &r, o);
		fflush(stdout);
	}
	print_tiers_table(table, &r, o);
	if (o->csv)
		ret = tiers_write_csv(&csv, &r, o);
	fprintf(stderr, PROG ": done (read-pass checksum %016" PRIx64 ")\n", r.bw.checksum);
out:
	if (bench_csv_close(&csv) && !ret)
		ret = -EIO;
	tiers_destroy(&c);
	return ret;
}

/* ==== mode gpu ==== */

/*
 * Mode gpu (issue 5, "Benchmark"): one (S, batch) configuration of a model geometry,
 * every k-mode over the same data, on the GPU, in one run:
 *   - ceilings: pinned host->device copy, HBM copy (read + write), zero-copy gather
 *     of random 512 B rows from the layer's pinned host records;
 *   - a check of the dense baseline kernel against the CPU backend's dense result on
 *     a small case (fails the run above GPU_CHECK_TOL);
 *   - dense attention with the layer's K/V resident in GPU memory (rotating over
 *     copies far beyond L2) and offloaded (copied over PCIe every step, overlapped);
 *   - the SparQ step through the CUDA backend (one batched call per layer, every KV
 *     head), over `layers` layers of streams built from the same records and
 *     rotated, so the key slices read per pass exceed L2; time per layer x the
 *     model's layers is the per-token figure;
 *   - its physical floor: bytes over PCIe (selected records + q and y) at the
 *     measured pinned-copy bandwidth plus the key-slice bytes at the measured HBM
 *     bandwidth; and GPU memory per token of context against dense-resident.
 * It appends one JSON object per configuration to --jsonl and one CSV row per k-mode
 * to --csv. --dry-run prints the plan and the floor formulas with assumed ceilings
 * and needs no GPU (and no CUDA build).
 *
 * Without CUDA in the build a real run fails with "not built with CUDA". When the
 * CUDA backend cannot be opened or fails, the ceilings and dense baselines are still
 * reported and the run exits 1.
 */


struct gpu_kmode {
	char name[24];
	struct sparq_params params;
};

struct gpu_opts {
	const struct preset *preset;
	uint64_t S;
	uint32_t batch, reps, layers, threads;
	uint32_t r_fixed;              /* r of fixed-k modes; 0 = d/8 */
	int32_t l;                     /* -1 = k/4 */
	struct gpu_kmode km[GPU_KMODES_MAX];
	uint32_t n_km;
	const char *config, *csv, *jsonl;
	bool json, dry_run;
	double assume_h2d, assume_hbm;
	enum sparq_slice_format key_slice;  /* the backend's key slices (--key-slice) */
	/* derived */
	char config_buf[48];
	uint32_t g, n_items, n_threads, n_slots;
	uint64_t rec_bytes, layer_bytes;
};

/* What one k-mode moves per layer, from the parameters alone. */
struct gpu_plan {
	struct sparq_resolved res;
	uint32_t n_sel;                /* min(k, S) rows per KV head */
	uint64_t pcie_bytes;           /* records + q + y, all KV heads */
	uint64_t slice_bytes;          /* S·r·2 per KV head (int8 slice: S·(r + 4)) */
	double transfer_ratio;
};

struct gpu_row {
	struct gpu_plan pl;
	bool ok;                       /* SparQ measured */
	uint32_t calls;
	double layer_ms, layer_p90_ms, ph_ms[PH_N];
	uint64_t be_slice_bytes, be_record_bytes;  /* the backend's own counts, one call */
	uint32_t cpu_items;            /* items the CUDA backend served on its CPU fallback */
	uint64_t cache_rows, cache_hits; /* the backend's row cache over the timed calls */
	/* decode steps: layer 0's streams, GPU_DECODE_STEPS calls with drifting queries */
	uint32_t dec_steps;
	double dec_ms, dec_hit;        /* median step; rows found in the row cache, steps 2.. */
	double rel_err;                /* layer 0, query set 0, against dense */
	/* per token, all layers */
	double sparq_ms, floor_ms, ratio_floor, speedup_off, speedup_res;
};

struct gpu_report {
	char dev[256], be_detail[160];
	int cc_major, cc_minor, sm_count;
	uint64_t dev_mem, l2_bytes;
	double h2d_gbs, hbm_gbs, gather_gbs;
	uint64_t h2d_bytes, hbm_bytes, gather_rows;
	double check_err, check_off_err;
	uint32_t dense_splits;
	double res_layer_ms, off_layer_ms, res_gbs, off_gbs;
	double dense_res_ms, dense_off_ms;    /* per token, all layers */
	double gen_s, fill_s, total_s;
	uint64_t gpu_used;                    /* device memory taken by the backend's streams */
	double bpt_sparq, bpt_dense;          /* per token, per KV head, per layer */
	uint32_t layers;                      /* layers of streams built */
	bool dry_run;                         /* nothing measured: floors at assumed ceilings */
	bool dense_ok;                        /* ceilings and dense baselines measured */
	bool sparq_ok;
	char sparq_why[256];
	struct gpu_row rows[GPU_KMODES_MAX];
};

static int parse_kmodes(const char *val, struct gpu_opts *o)
{
	const char *p = val;

	o->n_km = 0;
	while (*p) {
		size_t n = strcspn(p, ",");
		char tok[24];
		char *end;

		if (n == 0 || n >= sizeof(tok) || o->n_km == GPU_KMODES_MAX)
			return usage_error("--kmodes: expected up to %u comma-separated modes "
					   "ratioC or kN, got '%s'", GPU_KMODES_MAX, val);
		memcpy(tok, p, n);
		tok[n] = '\0';
		struct gpu_kmode *m = &o->km[o->n_km];
		memset(m, 0, sizeof(*m));
		snprintf(m->name, sizeof(m->name), "%s", tok);
		m->params.blend = SPARQ_BLEND_AUTO;
		errno = 0;
		if (strncmp(tok, "ratio", 5) == 0 && isdigit((unsigned char)tok[5])) {
			double c = strtod(tok + 5, &end);
			if (errno || *end || !isfinite(c) || c < 1.0 || c > 1e6)
				return usage_error("--kmodes: bad ratio in '%s' (ratioC, C in [1, 1e6])", tok);
			m->params.ratio = (float)c;
		} else if (tok[0] == 'k' && isdigit((unsigned char)tok[1])) {
			unsigned long long k = strtoull(tok + 1, &end, 10);
			if (errno || *end || k == 0 || k > SPARQ_POS_MAX)
				return usage_error("--kmodes: bad k in '%s' (kN, N in [1, 2^31])", tok);
			m->params.k = (uint32_t)k;
		} else {
			return usage_error("--kmodes: unknown mode '%s' (ratioC or kN)", tok);
		}
		o->n_km++;
		p += n;
		if (*p == ',')
			p++;
		if (*p == '\0' && p[-1] == ',')
			return usage_error("--kmodes: trailing comma in '%s'", val);
	}
	if (o->n_km == 0)
		return usage_error("--kmodes: no mode given");
	return 0;
}

static void gpu_opts_default(struct gpu_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->preset = &presets[0];
	o->S = 131072;
	o->batch = 1;
	o->reps = GPU_REPS_DEFAULT;
	o->l = -1;
	o->assume_h2d = GPU_ASSUME_H2D;
	o->assume_hbm = GPU_ASSUME_HBM;
	(void)parse_kmodes(GPU_KMODES_DEFAULT, o);
}

static int parse_gbs(const char *name, const char *val, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(val, &end);
	if (!val[0] || errno || *end || !isfinite(v) || v <= 0.0 || v > 1e6)
		return usage_error("%s: expected a bandwidth in GB/s in (0, 1e6], got '%s'", name, val);
	*out = v;
	return 0;
}

/* One option of mode gpu; returns 1 when it was --help. */
static int parse_gpu_one(struct gpu_opts *o, int argc, char **argv, int *i)
{
	const char *arg = argv[*i], *eq = strchr(arg, '='), *val = NULL;
	size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
	uint32_t u32 = 0;
	int ret = 0;

#define IS(name) (len == strlen(name) && strncmp(arg, name, len) == 0)
	if (IS("-h") || IS("--help") || IS("--json") || IS("--dry-run")) {
		if (eq)
			return usage_error("option %.*s takes no value", (int)len, arg);
		if (IS("--json"))
			o->json = true;
		else if (IS("--dry-run"))
			o->dry_run = true;
		else
			return 1;
		return 0;
	}
	if (!(IS("--preset") || IS("--context") || IS("--batch") || IS("--kmodes") || IS("--r") ||
	      IS("--l") || IS("--reps") || IS("--layers") || IS("--threads") || IS("--config") ||
	      IS("--csv") || IS("--jsonl") || IS("--h2d-gbs") || IS("--hbm-gbs") ||
	      IS("--key-slice")))
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
	} else if (IS("--kmodes")) {
		ret = parse_kmodes(val, o);
	} else if (IS("--r")) {
		ret = parse_u32("--r", val, 1, SPARQ_HEAD_DIM_MAX, &o->r_fixed);
	} else if (IS("--l")) {
		ret = parse_u32("--l", val, 0, SPARQ_POS_MAX - 1, &u32);
		o->l = ret ? -1 : (int32_t)u32;
	} else if (IS("--reps")) {
		ret = parse_u32("--reps", val, 1, 100000, &o->reps);
	} else if (IS("--layers")) {
		ret = parse_u32("--layers", val, 0, 1024, &o->layers);
	} else if (IS("--threads")) {
		ret = parse_u32("--threads", val, 0, 256, &o->threads);
	} else if (IS("--config")) {
		if (!val[0] || strlen(val) > 40 || strpbrk(val, ",\"\\\n"))
			return usage_error("--config: 1 to 40 characters, no comma, quote or "
					   "backslash, got '%s'", val);
		o->config = val;
	} else if (IS("--csv")) {
		o->csv = val;
	} else if (IS("--jsonl")) {
		o->jsonl = val;
	} else if (IS("--h2d-gbs")) {
		ret = parse_gbs("--h2d-gbs", val, &o->assume_h2d);
	} else if (IS("--hbm-gbs")) {
		ret = parse_gbs("--hbm-gbs", val, &o->assume_hbm);
	} else if (IS("--key-slice")) {
		/* one format per run: each has its own memory figure and floor */
		if (sparq_slice_format_parse(val, &o->key_slice))
			return usage_error("--key-slice: expected native or int8, got '%s'", val);
	}
#undef IS
	return ret;
}

/* k-mode m resolved for this geometry: its plan. -EINVAL (reported) when it does not resolve. */
static int gpu_plan_of(const struct gpu_opts *o, const struct gpu_kmode *m, struct gpu_plan *pl,
		       struct sparq_params *params)
{
	const struct preset *p = o->preset;
	const char *why = NULL;
	int ret;

	*params = m->params;
	params->l = o->l;
	if (params->k && !params->r)
		params->r = o->r_fixed ? o->r_fixed : (p->d + 4) / 8;
	ret = sparq_params_resolve(params, p->d, o->g, o->S, &pl->res, &why);
	if (ret)
		return usage_error("k-mode %s (d = %u, S = %" PRIu64 "): %s", m->name, p->d, o->S, why);
	pl->n_sel = pl->res.k < o->S ? pl->res.k : (uint32_t)o->S;
	/* q up and y down, fp32, per query head */
	pl->pcie_bytes = (uint64_t)o->n_items *
			 ((uint64_t)pl->n_sel * o->rec_bytes + 2ull * o->g * p->d * sizeof(float));
	/* what scoring reads from HBM: r channels, plus the scale of each int8 position */
	pl->slice_bytes = (uint64_t)o->n_items * o->S *
			  (o->key_slice == SPARQ_SLICE_INT8 ? pl->res.r + 4u : pl->res.r * 2u);
	pl->transfer_ratio = ratio_of(sparq_transfer_sparq(o->S, p->d, pl->res.r, pl->res.k),
				      sparq_transfer_dense(o->S, p->d));
	return 0;
}

static uint64_t div_up(uint64_t a, uint64_t b)
{
	return (a + b - 1) / b;
}

static int gpu_opts_finish(struct gpu_opts *o)
{
	const struct preset *p = o->preset;
	const char *why = NULL;
	uint64_t min_slice = UINT64_MAX, phys = phys_bytes(), host_max = GPU_HOST_DATA_MAX;
	struct sparq_params params;
	struct gpu_plan pl;
	int ret;

	o->g = p->n_q / p->n_kv;
	ret = sparq_geometry_check(p->d, o->g, SPARQ_DTYPE_F16, &why);
	if (ret)
		return usage_error("preset %s: %s", p->name, why);
	if (!(p->d == 64 || p->d == 128 || p->d == 256) ||
	    !(o->g == 1 || o->g == 2 || o->g == 4 || o->g == 8))
		return usage_error("preset %s: the dense GPU baseline covers d 64/128/256 and g "
				   "1/2/4/8", p->name);
	o->n_items = o->batch * p->n_kv;
	if (o->n_items > 65535)
		return usage_error("batch %u x %u KV heads: at most 65535 streams per layer",
				   o->batch, p->n_kv);
	o->rec_bytes = 2ull * p->d * 2;
	o->layer_bytes = (uint64_t)o->n_items * o->S * o->rec_bytes;
	o->n_threads = o->threads ? o->threads : bench_online_cpus();
	for (uint32_t i = 0; i < o->n_km; i++) {
		ret = gpu_plan_of(o, &o->km[i], &pl, &params);
		if (ret)
			return ret;
		if (pl.slice_bytes < min_slice)
			min_slice = pl.slice_bytes;
	}
	if (phys && host_max > phys / 4)
		host_max = phys / 4;
	if (o->layer_bytes > host_max && !o->dry_run)
		return usage_error("one layer's records take %.2f GiB, more than this machine "
				   "allows (%.2f GiB): lower --context or --batch",
				   (double)o->layer_bytes / (1u << 30), (double)host_max / (1u << 30));
	if (o->layers == 0) {
		uint64_t want = div_up(GPU_ROTATE_BYTES, min_slice ? min_slice : 1);
		uint64_t fit = host_max / (o->layer_bytes ? o->layer_bytes : 1);
		if (want > p->layers)
			want = p->layers;
		if (want > fit)
			want = fit;
		o->layers = want ? (uint32_t)want : 1;
	}
	o->n_slots = (uint32_t)div_up(GPU_SLOTS_BYTES, o->layer_bytes);
	if (o->n_slots < 2)
		o->n_slots = 2;   /* the offload baseline double-buffers */
	if (o->n_slots > GPU_SLOTS_MAX)
		o->n_slots = GPU_SLOTS_MAX;
	if (!o->config) {
		if (o->S % 1024 == 0)
			snprintf(o->config_buf, sizeof(o->config_buf), "S%" PRIu64 "K-b%u", o->S / 1024,
				 o->batch);
		else
			snprintf(o->config_buf, sizeof(o->config_buf), "S%" PRIu64 "-b%u", o->S, o->batch);
		o->config = o->config_buf;
	}
	return 0;
}

static int parse_gpu_args(int argc, char **argv, struct gpu_opts *o)
{
	gpu_opts_default(o);
	for (int i = 0; i < argc; i++) {
		if (strncmp(argv[i], "-", 1) != 0)
			return usage_error("unexpected argument '%s'", argv[i]);
		int ret = parse_gpu_one(o, argc, argv, &i);
		if (ret)
			return ret;
	}
	return gpu_opts_finish(o);
}

/*
 * `kernel --backend cuda` is one configuration of mode gpu: the kernel options carry
 * over (one k-mode from --ratio or --r/--k), the layers of data are chosen as in gpu.
 */
static int gpu_opts_from_kernel(const struct opts *k, struct gpu_opts *o)
{
	gpu_opts_default(o);
	o->preset = k->preset;
	o->S = k->S;
	o->batch = k->batch;
	o->reps = k->reps;
	o->threads = k->threads;
	o->json = k->json;
	o->csv = k->csv;
	o->l = k->l;
	o->n_km = 1;
	memset(&o->km[0], 0, sizeof(o->km[0]));
	o->km[0].params.blend = SPARQ_BLEND_AUTO;
	if (k->have_r) {
		o->km[0].params.r = k->r;
		o->km[0].params.k = k->k;
	} else {
		o->km[0].params.ratio = (float)k->ratio;
	}
	kmode_name(o->km[0].name, sizeof(o->km[0].name), k->have_r, k->r, k->k, k->ratio);
	if (k->n_key_slices != 1)
		return usage_error("--backend cuda: give one --key-slice (native or int8); each "
				   "is its own run of mode gpu");
	o->key_slice = k->key_slices[0];
	if (k->dtype != SPARQ_DTYPE_F16)
		return usage_error("--backend cuda: the GPU benchmark stores fp16 (the dense "
				   "baselines read fp16 records)");
	return gpu_opts_finish(o);
}

/* ---- derived figures ---- */

static double gpu_floor_layer_ms(const struct gpu_plan *pl, double h2d_gbs, double hbm_gbs)
{
	return ratio_of((double)pl->pcie_bytes, h2d_gbs * 1e6) +
	       ratio_of((double)pl->slice_bytes, hbm_gbs * 1e6);
}

static void gpu_derive(struct gpu_report *r, const struct gpu_opts *o)
{
	uint32_t L = o->preset->layers;

	r->res_gbs = ratio_of((double)o->layer_bytes, r->res_layer_ms * 1e6);
	r->off_gbs = ratio_of((double)o->layer_bytes, r->off_layer_ms * 1e6);
	r->dense_res_ms = r->res_layer_ms * L;
	r->dense_off_ms = r->off_layer_ms * L;
	r->bpt_dense = (double)o->rec_bytes;
	for (uint32_t i = 0; i < o->n_km; i++) {
		struct gpu_row *w = &r->rows[i];

		w->floor_ms = gpu_floor_layer_ms(&w->pl, r->h2d_gbs, r->hbm_gbs) * L;
		if (!w->ok)
			continue;
		w->sparq_ms = w->layer_ms * L;
		w->ratio_floor = ratio_of(w->sparq_ms, w->floor_ms);
		w->speedup_off = ratio_of(r->dense_off_ms, w->sparq_ms);
		w->speedup_res = ratio_of(r->dense_res_ms, w->sparq_ms);
	}
}

/* ---- dry run ---- */

static void gpu_print_plan(FILE *f, const struct gpu_opts *o)
{
	const struct preset *p = o->preset;
	uint32_t L = p->layers;
	char b1[32], b2[32], b3[32];

	fmt_bytes(b1, sizeof(b1), o->layer_bytes);
	fmt_bytes(b2, sizeof(b2), o->layer_bytes * o->layers);
	fmt_bytes(b3, sizeof(b3), o->layer_bytes * o->n_slots);
	fprintf(f, PROG " gpu --dry-run: %s, %s (%u q heads, %u KV heads, g = %u, d = %u, %u "
		   "layers), fp16, key slice %s\n", o->config, p->name, p->n_q, p->n_kv, o->g, p->d,
		L, sparq_slice_format_name(o->key_slice));
	fprintf(f, "  S = %" PRIu64 ", batch %u: %u KV-head streams per layer, %" PRIu64
		   " B per record, %s of records per layer\n", o->S, o->batch, o->n_items,
		o->rec_bytes, b1);
	fprintf(f, "  plan: %u layer(s) of streams built from one layer's records (%s of host "
		   "records), rotated; per-token figures = time per layer x %u\n", o->layers, b2, L);
	fprintf(f, "  dense baselines: %u resident copies of the layer on the GPU (%s), offload "
		   "double-buffered over %u layers; check on S = %u first (tolerance %.0e)\n",
		o->n_slots, b3, GPU_OFFLOAD_LAYERS, GPU_CHECK_S, GPU_CHECK_TOL);
	fprintf(f, "  formulas, per layer: pcie = n_kv_streams x (n_sel x %" PRIu64 " B + 2 x g x d x "
		   "4 B); slice = n_kv_streams x S x %s\n", o->rec_bytes,
		o->key_slice == SPARQ_SLICE_INT8 ? "(r x 1 B + 4 B scale)" : "r x 2 B");
	fprintf(f, "    floor = pcie / H2D + slice / HBM; dense offload floor = layer / H2D; "
		   "dense resident floor = layer / HBM\n");
	fprintf(f, "    assumed here (not measured): H2D %.1f GB/s, HBM %.0f GB/s "
		   "(--h2d-gbs, --hbm-gbs)\n\n", o->assume_h2d, o->assume_hbm);
	fprintf(f, "%-10s %5s %7s %6s %8s %12s %12s %11s %12s %12s %9s\n", "k_mode", "r", "k",
		"l", "transfer", "pcie/layer", "slice/layer", "floor ms", "off floor", "res floor",
		"max x off");
	double off = ratio_of((double)o->layer_bytes, o->assume_h2d * 1e6) * L;
	double res = ratio_of((double)o->layer_bytes, o->assume_hbm * 1e6) * L;
	for (uint32_t i = 0; i < o->n_km; i++) {
		struct gpu_plan pl;
		struct sparq_params params;

		if (gpu_plan_of(o, &o->km[i], &pl, &params))
			continue;
		double fl = gpu_floor_layer_ms(&pl, o->assume_h2d, o->assume_hbm) * L;
		fmt_bytes(b1, sizeof(b1), pl.pcie_bytes);
		fmt_bytes(b2, sizeof(b2), pl.slice_bytes);
		fprintf(f, "%-10s %5u %7u %6u %8.4f %12s %12s %11.3f %12.3f %12.3f %9.1f\n",
			o->km[i].name, pl.res.r, pl.res.k, pl.res.l, pl.transfer_ratio, b1, b2, fl,
			off, res, ratio_of(off, fl));
	}
	fprintf(f, "\n  (floor, off floor, res floor: ms per token over %u layers; max x off: the "
		   "speedup over dense offload if SparQ ran at its floor and offload at its floor)\n",
		L);
	fprintf(f, "  GPU bytes per token per KV head per layer: dense resident %" PRIu64
		   " (2 x d x 2 B); SparQ %s key slice %u (%s) plus the backend's own\n",
		o->rec_bytes, o->key_slice == SPARQ_SLICE_INT8 ? "int8" : "fp16",
		sparq_slice_position_bytes(o->key_slice, p->d, SPARQ_DTYPE_F16),
		o->key_slice == SPARQ_SLICE_INT8 ? "d x 1 B + 4 B" : "d x 2 B");
}

/* ---- output ---- */

static void gpu_print_table(FILE *f, const struct gpu_report *r, const struct gpu_opts *o)
{
	const struct preset *p = o->preset;
	char v[64], l[96], q[96], b1[32];

	fprintf(f, PROG " gpu: %s, %s, S = %" PRIu64 ", batch %u (%u KV-head streams per layer), "
		   "fp16, key slice %s (%u B per position and KV head)\n", o->config, p->name, o->S,
		o->batch, o->n_items, sparq_slice_format_name(o->key_slice),
		sparq_slice_position_bytes(o->key_slice, p->d, SPARQ_DTYPE_F16));
	fprintf(f, "  device: %s (sm_%d%d, %d SMs, %.0f GiB, L2 %.0f MiB)\n", r->dev, r->cc_major,
		r->cc_minor, r->sm_count, (double)r->dev_mem / (1u << 30),
		(double)r->l2_bytes / (1u << 20));
	fprintf(f, "  cuda backend: %s\n", r->be_detail);
	fmt_bytes(b1, sizeof(b1), o->layer_bytes);
	fprintf(f, "  one layer of records = %s; SparQ timed over %u layer(s) of streams built from "
		   "the same records, rotated, %u query sets; per-token = per-layer median x %u "
		   "layers (projection)\n", b1, r->layers, GPU_QSETS, p->layers);
	fprintf(f, "  data %.1f s, streams %.1f s, run %.1f s\n\n", r->gen_s, r->fill_s, r->total_s);

	row_w(f, 44, 16, 34, "quantity", "value", "compared with", "ratio");
	fmt_bytes(b1, sizeof(b1), r->h2d_bytes);
	snprintf(v, sizeof(v), "%.2f GB/s", r->h2d_gbs);
	snprintf(q, sizeof(q), "pinned H2D, cudaMemcpy of %s", b1);
	row_w(f, 44, 16, 34, q, v, "PCIe Gen5 x16 ~ 63 GB/s", NULL);
	fmt_bytes(b1, sizeof(b1), r->hbm_bytes);
	snprintf(v, sizeof(v), "%.0f GB/s", r->hbm_gbs);
	snprintf(q, sizeof(q), "HBM, D2D copy of %s (read + write)", b1);
	row_w(f, 44, 16, 34, q, v, NULL, NULL);
	snprintf(v, sizeof(v), "%.2f GB/s", r->gather_gbs);
	snprintf(l, sizeof(l), "H2D %.2f GB/s", r->h2d_gbs);
	snprintf(q, sizeof(q), "%.2f", ratio_of(r->gather_gbs, r->h2d_gbs));
	row_w(f, 44, 16, 34, "zero-copy gather, random 512 B rows", v, l, q);
	snprintf(v, sizeof(v), "%.2e", fmax(r->check_err, r->check_off_err));
	snprintf(l, sizeof(l), "CPU dense, S = %u (tol %.0e)", GPU_CHECK_S, GPU_CHECK_TOL);
	row_w(f, 44, 16, 34, "dense kernel check, rel. L2 error", v, l, NULL);
	snprintf(v, sizeof(v), "%.3f ms", r->res_layer_ms);
	snprintf(l, sizeof(l), "%.0f GB/s of records", r->res_gbs);
	snprintf(q, sizeof(q), "%.2f of HBM copy rate", ratio_of(r->res_gbs, r->hbm_gbs));
	snprintf(b1, sizeof(b1), "%u", r->dense_splits);
	row_w(f, 44, 16, 34, "dense resident, one layer (median)", v, l, q);
	snprintf(v, sizeof(v), "%.3f ms", r->off_layer_ms);
	snprintf(l, sizeof(l), "%.2f GB/s of records", r->off_gbs);
	snprintf(q, sizeof(q), "%.2f of H2D", ratio_of(r->off_gbs, r->h2d_gbs));
	row_w(f, 44, 16, 34, "dense offload, one layer (median)", v, l, q);
	snprintf(v, sizeof(v), "%.1f B", r->bpt_sparq);
	snprintf(l, sizeof(l), "dense resident %.0f B", r->bpt_dense);
	snprintf(q, sizeof(q), "%.3f", ratio_of(r->bpt_sparq, r->bpt_dense));
	row_w(f, 44, 16, 34, "GPU bytes/token/KV head/layer, SparQ", r->sparq_ok ? v : "n/a", l,
	      r->sparq_ok ? q : NULL);

	for (uint32_t i = 0; i < o->n_km; i++) {
		const struct gpu_row *w = &r->rows[i];

		fprintf(f, "\nk-mode %s: r = %u, k = %u, l = %u, %u rows per KV head, transfer "
			   "%.4f\n", o->km[i].name, w->pl.res.r, w->pl.res.k, w->pl.res.l, w->pl.n_sel,
			w->pl.transfer_ratio);
		if (!w->ok) {
			row_w(f, 44, 16, 34, "  SparQ step", "n/a", r->sparq_why, NULL);
			continue;
		}
		snprintf(v, sizeof(v), "%.3f ms", w->layer_ms);
		snprintf(l, sizeof(l), "p90 %.3f ms, %u calls", w->layer_p90_ms, w->calls);
		row_w(f, 44, 16, 34, "  SparQ step, one layer (median)", v, l, NULL);
		if (w->ph_ms[PH_SCORE] + w->ph_ms[PH_SELECT] + w->ph_ms[PH_GATHER] +
		    w->ph_ms[PH_EXACT] > 0.0) {
			snprintf(v, sizeof(v), "%.3f/%.3f/%.3f/%.3f", w->ph_ms[PH_SCORE],
				 w->ph_ms[PH_SELECT], w->ph_ms[PH_GATHER], w->ph_ms[PH_EXACT]);
			row_w(f, 44, 16, 34, "  phases score/select/gather/exact ms", v,
			      "the backend's stats", NULL);
		}
		snprintf(v, sizeof(v), "%.3f ms", w->sparq_ms);
		snprintf(l, sizeof(l), "floor %.3f ms", w->floor_ms);
		snprintf(q, sizeof(q), "%.2f ratio_floor (target <= 1.5 at 128K)", w->ratio_floor);
		snprintf(b1, sizeof(b1), "  per token, %u layers", p->layers);
		row_w(f, 44, 16, 34, b1, v, l, q);
		snprintf(l, sizeof(l), "dense offload %.3f ms", r->dense_off_ms);
		snprintf(q, sizeof(q), "%.2fx speedup_offload (target >= 10)", w->speedup_off);
		row_w(f, 44, 16, 34, "", "", l, q);
		snprintf(l, sizeof(l), "dense resident %.3f ms", r->dense_res_ms);
		snprintf(q, sizeof(q), "%.2fx speedup_resident", w->speedup_res);
		row_w(f, 44, 16, 34, "", "", l, q);
		fmt_bytes(b1, sizeof(b1), w->pl.pcie_bytes);
		snprintf(v, sizeof(v), "%s", b1);
		fmt_bytes(b1, sizeof(b1), w->pl.slice_bytes);
		snprintf(l, sizeof(l), "slice %s per layer", b1);
		row_w(f, 44, 16, 34, "  floor bytes: PCIe per layer", v, l, NULL);
		if (w->be_slice_bytes || w->be_record_bytes) {
			fmt_bytes(b1, sizeof(b1), w->be_record_bytes);
			snprintf(v, sizeof(v), "%s", b1);
			fmt_bytes(b1, sizeof(b1), w->be_slice_bytes);
			snprintf(l, sizeof(l), "slice %s", b1);
			row_w(f, 44, 16, 34, "  backend's counts: records per layer", v, l, NULL);
		}
		if (w->cache_rows) {
			snprintf(v, sizeof(v), "%.1f %%", 100.0 * w->cache_hits / w->cache_rows);
			snprintf(l, sizeof(l), "of %llu rows looked up",
				 (unsigned long long)w->cache_rows);
			row_w(f, 44, 16, 34, "  row cache hits, timed calls", v, l,
			      "(rotating query sets)");
		}
		if (w->dec_steps) {
			snprintf(v, sizeof(v), "%.3f ms", w->dec_ms);
			if (isnan(w->dec_hit))
				snprintf(l, sizeof(l), "%u steps, no row cache", w->dec_steps);
			else
				snprintf(l, sizeof(l), "%u steps, row cache hits %.1f %%",
					 w->dec_steps, 100.0 * w->dec_hit);
			row_w(f, 44, 16, 34, "  decode steps, drifting q (median)", v, l, NULL);
		}
		snprintf(v, sizeof(v), "%.4f", w->rel_err);
		row_w(f, 44, 16, 34, "  output rel. L2 error vs dense (layer 0)", v,
		      "dense resident kernel", NULL);
		if (w->cpu_items)
			fprintf(f, "  note: %u of %u items per call ran on the backend's CPU fallback "
				   "(their key slices did not fit the GPU budget): not a GPU figure\n",
				w->cpu_items, o->n_items);
	}
	/* one greppable line for tools/gpu-bench's closing table */
	fprintf(f, "\nsummary %s: H2D %.1f GB/s, HBM %.0f GB/s, gather %.1f GB/s, dense check "
		   "%.1e, dense resident at %.2f of HBM, GPU B/token/head/layer SparQ %.1f vs dense "
		   "%.0f%s%s\n", o->config, r->h2d_gbs, r->hbm_gbs, r->gather_gbs,
		fmax(r->check_err, r->check_off_err), ratio_of(r->res_gbs, r->hbm_gbs),
		r->bpt_sparq, r->bpt_dense, r->sparq_why[0] ? "; SparQ: " : "", r->sparq_why);
}

static void gpu_print_json(FILE *f, const struct gpu_report *r, const struct gpu_opts *o)
{
	bool first = true;

	json_str(f, "mode", "gpu", &first);
	json_u64(f, "dry_run", r->dry_run, &first);
	json_str(f, "config", o->config, &first);
	json_str(f, "key_slice", sparq_slice_format_name(o->key_slice), &first);
	json_str(f, "preset", o->preset->name, &first);
	json_u64(f, "S", o->S, &first);
	json_u64(f, "batch", o->batch, &first);
	json_u64(f, "n_q_heads", o->preset->n_q, &first);
	json_u64(f, "n_kv_heads", o->preset->n_kv, &first);
	json_u64(f, "d", o->preset->d, &first);
	json_u64(f, "model_layers", o->preset->layers, &first);
	json_u64(f, "layers_built", r->layers, &first);
	json_str(f, "device", r->dev, &first);
	json_str(f, "cuda_backend", r->be_detail, &first);
	json_u64(f, "layer_record_bytes", o->layer_bytes, &first);
	json_num(f, "h2d_gbs", r->dense_ok ? r->h2d_gbs : NAN, &first);
	json_u64(f, "h2d_bytes", r->h2d_bytes, &first);
	json_num(f, "hbm_copy_gbs", r->dense_ok ? r->hbm_gbs : NAN, &first);
	json_u64(f, "hbm_copy_bytes", r->hbm_bytes, &first);
	json_num(f, "zero_copy_gather_gbs", r->dense_ok ? r->gather_gbs : NAN, &first);
	json_u64(f, "zero_copy_gather_rows", r->gather_rows, &first);
	json_num(f, "dense_check_rel_err", r->dense_ok ? r->check_err : NAN, &first);
	json_num(f, "dense_check_offload_rel_err", r->dense_ok ? r->check_off_err : NAN, &first);
	json_u64(f, "dense_splits", r->dense_splits, &first);
	json_num(f, "dense_resident_layer_ms", r->dense_ok ? r->res_layer_ms : NAN, &first);
	json_num(f, "dense_offload_layer_ms", r->dense_ok ? r->off_layer_ms : NAN, &first);
	json_num(f, "dense_resident_gbs", r->dense_ok ? r->res_gbs : NAN, &first);
	json_num(f, "dense_offload_gbs", r->dense_ok ? r->off_gbs : NAN, &first);
	json_num(f, "dense_resident_ms", r->dense_ok ? r->dense_res_ms : NAN, &first);
	json_num(f, "dense_offload_ms", r->dense_ok ? r->dense_off_ms : NAN, &first);
	json_u64(f, "gpu_bytes_backend", r->gpu_used, &first);
	json_num(f, "gpu_bytes_per_token_sparq", r->sparq_ok ? r->bpt_sparq : NAN, &first);
	json_num(f, "gpu_bytes_per_token_dense", r->bpt_dense, &first);
	json_str(f, "gpu_bytes_per_token_unit", "bytes per context token per KV head per layer",
		 &first);
	json_u64(f, "sparq_ok", r->sparq_ok, &first);
	if (!r->sparq_ok)
		json_str(f, "sparq_error", r->sparq_why, &first);
	json_num(f, "data_s", r->gen_s, &first);
	json_num(f, "streams_s", r->fill_s, &first);
	json_num(f, "total_s", r->total_s, &first);
	json_key(f, "rows", &first);
	fputc('[', f);
	for (uint32_t i = 0; i < o->n_km; i++) {
		const struct gpu_row *w = &r->rows[i];
		bool f2 = true;

		if (i)
			fputs(", ", f);
		json_str(f, "k_mode", o->km[i].name, &f2);
		json_u64(f, "r", w->pl.res.r, &f2);
		json_u64(f, "k", w->pl.res.k, &f2);
		json_u64(f, "l", w->pl.res.l, &f2);
		json_u64(f, "n_sel", w->pl.n_sel, &f2);
		json_num(f, "transfer_ratio", w->pl.transfer_ratio, &f2);
		json_u64(f, "pcie_bytes_per_layer", w->pl.pcie_bytes, &f2);
		json_u64(f, "slice_bytes_per_layer", w->pl.slice_bytes, &f2);
		json_num(f, "floor_ms", w->floor_ms, &f2);
		json_u64(f, "calls", w->calls, &f2);
		json_num(f, "sparq_layer_ms", w->ok ? w->layer_ms : NAN, &f2);
		json_num(f, "sparq_layer_p90_ms", w->ok ? w->layer_p90_ms : NAN, &f2);
		json_num(f, "score_ms", w->ok ? w->ph_ms[PH_SCORE] : NAN, &f2);
		json_num(f, "select_ms", w->ok ? w->ph_ms[PH_SELECT] : NAN, &f2);
		json_num(f, "gather_ms", w->ok ? w->ph_ms[PH_GATHER] : NAN, &f2);
		json_num(f, "exact_ms", w->ok ? w->ph_ms[PH_EXACT] : NAN, &f2);
		json_u64(f, "backend_slice_bytes", w->be_slice_bytes, &f2);
		json_u64(f, "backend_record_bytes", w->be_record_bytes, &f2);
		json_u64(f, "cpu_fallback_items", w->cpu_items, &f2);
		json_num(f, "cache_hit_rate", w->cache_rows ? (double)w->cache_hits / w->cache_rows
							    : NAN, &f2);
		json_num(f, "decode_step_ms", w->dec_steps ? w->dec_ms : NAN, &f2);
		json_num(f, "decode_cache_hit_rate", w->dec_steps ? w->dec_hit : NAN, &f2);
		json_num(f, "sparq_ms", w->ok ? w->sparq_ms : NAN, &f2);
		json_num(f, "ratio_floor", w->ok ? w->ratio_floor : NAN, &f2);
		json_num(f, "speedup_offload", w->ok ? w->speedup_off : NAN, &f2);
		json_num(f, "speedup_resident", w->ok ? w->speedup_res : NAN, &f2);
		json_num(f, "rel_err_vs_dense", w->ok ? w->rel_err : NAN, &f2);
		fputc('}', f);
	}
	fputc(']', f);
	fprintf(f, "}\n");
}

static int gpu_write_csv(const struct gpu_report *r, const struct gpu_opts *o)
{
	struct bench_csv c;
	int ret = bench_csv_open(&c, o->csv, GPU_CSV_HEADER, PROG);

	if (ret)
		return ret;
	for (uint32_t i = 0; i < o->n_km; i++) {
		const struct gpu_row *w = &r->rows[i];

		bench_csv_str(&c, o->config);
		bench_csv_u64(&c, o->S);
		bench_csv_u64(&c, o->batch);
		bench_csv_str(&c, o->km[i].name);
		bench_csv_num(&c, w->ok, w->sparq_ms);
		bench_csv_num(&c, true, w->floor_ms);
		bench_csv_num(&c, w->ok, w->ratio_floor);
		bench_csv_num(&c, r->dense_ok, r->dense_off_ms);
		bench_csv_num(&c, r->dense_ok, r->dense_res_ms);
		bench_csv_num(&c, w->ok, w->speedup_off);
		bench_csv_num(&c, w->ok, w->speedup_res);
		bench_csv_num(&c, r->sparq_ok, r->bpt_sparq);
		bench_csv_num(&c, true, r->bpt_dense);
		bench_csv_end_row(&c);
	}
	return bench_csv_close(&c);
}

/* Appends the configuration's JSON object to path as one line. */
static int gpu_append_jsonl(const char *path, const struct gpu_report *r, const struct gpu_opts *o)
{
	FILE *f = fopen(path, "a");
	int ret = 0;

	if (!f) {
		ret = -errno;
		fprintf(stderr, PROG ": cannot open %s: %s\n", path, strerror(-ret));
		return ret;
	}
	gpu_print_json(f, r, o);
	if (ferror(f))
		ret = -EIO;
	if (fclose(f) && !ret)
		ret = -errno;
	if (ret)
		fprintf(stderr, PROG ": writing %s failed: %s\n", path, strerror(-ret));
	return ret;
}

/* ---- run ---- */

#ifdef SPARQ_BENCH_GPU

/* ||y - ref|| / ||ref|| over n values. */
static double rel_l2(const float *y, const float *ref, size_t n)
{
	double num = 0.0, den = 0.0;

	for (size_t i = 0; i < n; i++) {
		double e = (double)y[i] - ref[i];
		num += e * e;
		den += (double)ref[i] * ref[i];
	}
	return den > 0.0 ? sqrt(num / den) : (num > 0.0 ? INFINITY : 0.0);
}

/* One layer's records, [n_items][S][K row, V row] fp16, drawn as fill_stream draws. */
struct gen_job {
	uint16_t *rec;
	uint32_t n_items, d;
	uint64_t S;
};

static void gen_task(void *arg, uint32_t t, uint32_t n)
{
	const struct gen_job *j = arg;
	uint64_t blocks = div_up(j->S, FILL_CHUNK), units = blocks * j->n_items;
	float scale[SPARQ_HEAD_DIM_MAX];

	for (uint64_t u = t; u < units; u += n) {
		uint32_t item = (uint32_t)(u / blocks);
		uint64_t p0 = (u % blocks) * FILL_CHUNK, p1 = p0 + FILL_CHUNK;
		struct bench_rng rng;

		if (p1 > j->S)
			p1 = j->S;
		/* the item's channel scales (some channels dominate, as in fill_stream) */
		bench_rng_seed(&rng, SEED ^ (0x9e3779b97f4a7c15ull * (item + 1)));
		for (uint32_t c = 0; c < j->d; c++)
			scale[c] = expf(0.5f * bench_rng_normal(&rng));
		bench_rng_seed(&rng, SEED ^ (0xd1b54a32d192ed03ull * (u + 1)));
		for (uint64_t pos = p0; pos < p1; pos++) {
			uint16_t *k = j->rec + ((size_t)item * j->S + pos) * 2 * j->d, *v = k + j->d;
			for (uint32_t c = 0; c < j->d; c++) {
				k[c] = sparq_f32_to_f16(bench_rng_normal_fast(&rng) * scale[c]);
				v[c] = sparq_f32_to_f16(bench_rng_normal_fast(&rng));
			}
		}
	}
}

static void gpu_fail(struct bench_gpu *gg, const char *what, int ret)
{
	fprintf(stderr, PROG ": %s failed: errno %d (%s): %s\n", what, -ret, strerror(-ret),
		bench_gpu_error(gg));
}

/*
 * The dense baseline against the CPU backend's dense result (k >= S is exact dense
 * attention), resident and through the offload path, on GPU_CHECK_S positions of the
 * geometry, split into GPU_CHECK_SPLITS blocks per head so the reduce is exercised.
 */
static int gpu_check_dense(struct bench_gpu *gg, const struct gpu_opts *go,
			   struct gpu_report *r)
{
	struct opts o;
	struct bench b = { 0 };
	struct report kr = { 0 };
	struct timing t;
	struct sparq_attend_batch batch;
	struct sparq_params dense = { .r = 1, .k = GPU_CHECK_S, .l = -1, .blend = SPARQ_BLEND_AUTO };
	struct bench_gpu_dense *plan = NULL;
	uint16_t *rec = NULL;
	uint32_t *pos = NULL;
	void *buf[2] = { NULL, NULL };
	float *y = NULL;
	double setup_s, ms;
	size_t ny;
	int ret;

	opts_default(&o);
	o.preset = go->preset;
	o.S = GPU_CHECK_S;
	o.threads = go->threads;
	o.reps = 1;
	ret = opts_finish(&o);
	if (ret)
		return ret;
	ret = open_backend(&b, &o, &kr);
	if (ret)
		goto out;
	ret = bench_setup(&b, &o, true, &setup_s);
	if (ret)
		goto out;
	ret = time_attend(&b, &dense, b.y_dense, 1, &t, &batch);
	if (ret) {
		report_attend_error("dense check (CPU backend)", ret, &batch);
		goto out;
	}

	struct bench_gpu_dense_shape sh = { .n_items = b.n_items, .g = b.g, .d = b.d,
					    .S = GPU_CHECK_S, .n_split = GPU_CHECK_SPLITS };
	size_t bytes = (size_t)b.n_items * GPU_CHECK_S * 2 * b.d * sizeof(uint16_t);
	ny = (size_t)b.n_items * b.g * b.d;
	pos = malloc(GPU_CHECK_S * sizeof(*pos));
	y = malloc(ny * sizeof(*y));
	if (!pos || !y) {
		ret = -ENOMEM;
		goto out;
	}
	ret = bench_gpu_host_alloc(gg, bytes, (void **)&rec);
	if (ret == 0)
		ret = bench_gpu_dev_alloc(gg, bytes, &buf[0]);
	if (ret == 0)
		ret = bench_gpu_dev_alloc(gg, bytes, &buf[1]);
	if (ret == 0)
		ret = bench_gpu_dense_create(gg, &sh, &plan);
	if (ret) {
		gpu_fail(gg, "dense check: allocation", ret);
		goto out;
	}
	for (uint32_t i = 0; i < GPU_CHECK_S; i++)
		pos[i] = i;
	for (uint32_t i = 0; i < b.n_items && ret == 0; i++)
		ret = sparq_stream_gather(b.streams[i], pos, GPU_CHECK_S,
					  rec + (size_t)i * GPU_CHECK_S * 2 * b.d);
	if (ret) {
		fprintf(stderr, PROG ": dense check: gathering the records failed: %s\n",
			strerror(-ret));
		goto out;
	}
	ret = bench_gpu_dense_set_q(plan, b.q);
	if (ret == 0)
		ret = bench_gpu_upload(gg, buf[0], rec, bytes);
	if (ret == 0)
		ret = bench_gpu_dense_run(plan, buf[0], y);
	if (ret) {
		gpu_fail(gg, "dense check: resident run", ret);
		goto out;
	}
	r->check_err = rel_l2(y, b.y_dense, ny);
	memset(y, 0, ny * sizeof(*y));
	ret = bench_gpu_dense_time_offload(plan, rec, buf, 2, 1, &ms, y);
	if (ret) {
		gpu_fail(gg, "dense check: offload run", ret);
		goto out;
	}
	r->check_off_err = rel_l2(y, b.y_dense, ny);
	fprintf(stderr, PROG ": dense kernel check (S = %u, %u splits, %u heads): rel. L2 error "
		"%.3e resident, %.3e offload, tolerance %.0e\n", GPU_CHECK_S,
		bench_gpu_dense_splits(plan), b.n_items * b.g, r->check_err, r->check_off_err,
		GPU_CHECK_TOL);
	if (!(r->check_err <= GPU_CHECK_TOL && r->check_off_err <= GPU_CHECK_TOL)) {
		fprintf(stderr, PROG ": FAILED: the dense GPU baseline disagrees with the CPU "
			"backend's dense attention; nothing is timed with a wrong kernel\n");
		ret = -EDOM;
	}
out:
	bench_gpu_dense_destroy(plan);
	bench_gpu_dev_free(gg, buf[0]);
	bench_gpu_dev_free(gg, buf[1]);
	bench_gpu_host_free(gg, rec);
	free(pos);
	free(y);
	bench_destroy(&b);
	return ret;
}

/* SparQ's side: `layers` x n_items streams on the CUDA backend. */
struct gpu_sparq {
	struct sparq_backend *be;
	struct sparq_store *st;
	struct sparq_stream **streams;     /* [layers][n_items] */
	struct sparq_attend_item *items;   /* [n_items] */
	float *q;                          /* [layers][GPU_QSETS][n_items][g][d] */
	float *y;                          /* [n_items][g][d] */
	uint32_t n_streams;
};

static float *gpu_q(const struct gpu_sparq *s, const struct gpu_opts *o, uint32_t layer,
		    uint32_t set, uint32_t item)
{
	size_t per = (size_t)o->g * o->preset->d;
	return s->q + (((size_t)layer * GPU_QSETS + set) * o->n_items + item) * per;
}

static void gpu_sparq_destroy(struct gpu_sparq *s)
{
	for (uint32_t i = 0; s->streams && i < s->n_streams; i++)
		sparq_stream_destroy(s->streams[i]);
	free(s->streams);
	free(s->items);
	free(s->q);
	free(s->y);
	sparq_store_destroy(s->st);
	sparq_backend_close(s->be);
	memset(s, 0, sizeof(*s));
}

struct append_job {
	struct gpu_sparq *s;
	const uint16_t *rec;
	uint32_t n_items, d;
	uint64_t S;
	int *ret;
	const char **why;
};

/* Thread t appends streams t, t + n, ...: records de-interleaved into K and V rows. */
static void append_task(void *arg, uint32_t t, uint32_t n)
{
	struct append_job *j = arg;
	uint16_t *k = malloc((size_t)FILL_CHUNK * j->d * sizeof(*k));
	uint16_t *v = malloc((size_t)FILL_CHUNK * j->d * sizeof(*v));

	if (!k || !v) {
		j->ret[t] = -ENOMEM;
		j->why[t] = "out of memory for the append buffers";
		goto out;
	}
	for (uint32_t i = t; i < j->s->n_streams && j->ret[t] == 0; i += n) {
		const uint16_t *src = j->rec + (size_t)(i % j->n_items) * j->S * 2 * j->d;

		for (uint64_t p = 0; p < j->S && j->ret[t] == 0; p += FILL_CHUNK) {
			uint32_t m = (uint32_t)(j->S - p < FILL_CHUNK ? j->S - p : FILL_CHUNK);
			for (uint32_t r = 0; r < m; r++) {
				const uint16_t *row = src + (p + r) * 2 * j->d;
				memcpy(k + (size_t)r * j->d, row, j->d * sizeof(*k));
				memcpy(v + (size_t)r * j->d, row + j->d, j->d * sizeof(*v));
			}
			j->ret[t] = sparq_stream_append(j->s->streams[i], m, k, v, &j->why[t]);
		}
	}
out:
	free(k);
	free(v);
}

static int gpu_sparq_setup(struct gpu_sparq *s, const struct gpu_opts *o, const uint16_t *rec,
			   char *why, size_t why_len)
{
	struct sparq_backend_config cfg = { .n_threads = o->n_threads, .key_slice = o->key_slice };
	uint32_t d = o->preset->d;
	size_t nq = (size_t)o->layers * GPU_QSETS * o->n_items * o->g * d;
	const char *w = NULL;
	int ret;

	ret = sparq_backend_open("cuda", &cfg, &s->be);
	if (ret) {
		s->be = NULL;
		snprintf(why, why_len, "sparq_backend_open(\"cuda\"): errno %d (%s)", -ret,
			 strerror(-ret));
		return ret;
	}
	s->n_streams = o->layers * o->n_items;
	s->streams = calloc(s->n_streams, sizeof(*s->streams));
	s->items = calloc(o->n_items, sizeof(*s->items));
	s->q = malloc(nq * sizeof(*s->q));
	s->y = malloc((size_t)o->n_items * o->g * d * sizeof(*s->y));
	if (!s->streams || !s->items || !s->q || !s->y) {
		snprintf(why, why_len, "out of memory for %u streams", s->n_streams);
		return -ENOMEM;
	}
	/* one region for every record, as the daemon's arenas are: the backend registers
	 * it with the GPU once and gathers rows from it in place (zero-copy) */
	uint64_t region = (uint64_t)s->n_streams * div_up(o->S, STORE_CHUNK) * STORE_CHUNK *
			  o->rec_bytes;
	ret = sparq_store_heap_create_region(STORE_CHUNK, region, &s->st);
	if (ret) {
		snprintf(why, why_len, "sparq_store_heap_create_region(%.2f GiB): %s",
			 (double)region / (1u << 30), strerror(-ret));
		return ret;
	}
	for (uint32_t i = 0; i < s->n_streams; i++) {
		ret = sparq_stream_create(s->be, s->st, d, SPARQ_DTYPE_F16, &s->streams[i], &w);
		if (ret) {
			snprintf(why, why_len, "stream %u: sparq_stream_create: %s (errno %d: %s)", i,
				 w ? w : "?", -ret, strerror(-ret));
			return ret;
		}
	}
	for (uint32_t l = 0; l < o->layers; l++)
		for (uint32_t set = 0; set < GPU_QSETS; set++)
			fill_queries(gpu_q(s, o, l, set, 0), o->n_items, o->g, d,
				     SEED ^ (0x51ull + 0x1000ull * (l * GPU_QSETS + set)));

	uint32_t nt = o->n_threads < s->n_streams ? o->n_threads : s->n_streams;
	struct append_job job = { .s = s, .rec = rec, .n_items = o->n_items, .d = d, .S = o->S };
	job.ret = calloc(nt, sizeof(*job.ret));
	job.why = calloc(nt, sizeof(*job.why));
	if (!job.ret || !job.why) {
		ret = -ENOMEM;
		snprintf(why, why_len, "out of memory");
	} else {
		ret = bench_parallel(nt, append_task, &job);
		if (ret)
			snprintf(why, why_len, "cannot start %u threads", nt);
		for (uint32_t t = 0; ret == 0 && t < nt; t++) {
			if (job.ret[t]) {
				ret = job.ret[t];
				snprintf(why, why_len, "filling the streams: %s (errno %d: %s)",
					 job.why[t] ? job.why[t] : "?", -ret, strerror(-ret));
			}
		}
	}
	free(job.ret);
	free(job.why);
	return ret;
}

/* Warm pass, then calls rotating over layers and query sets; y0 = layer 0, set 0. */
static int gpu_time_sparq(struct gpu_sparq *s, const struct gpu_opts *o,
			  const struct sparq_params *params, struct gpu_row *w, float *y0,
			  char *why, size_t why_len)
{
	uint32_t L = o->layers, per = o->g * o->preset->d;
	uint32_t timed = (uint32_t)div_up(o->reps > L ? o->reps : L, L) * L;
	uint64_t *ns[PH_N] = { 0 };
	struct sparq_attend_batch batch = { .items = s->items, .n = o->n_items,
					    .mode = SPARQ_ATTEND_FULL, .bad_item = -1 };
	int ret = 0;

	for (int ph = 0; ph < PH_N; ph++) {
		ns[ph] = calloc(timed, sizeof(uint64_t));
		if (!ns[ph]) {
			ret = -ENOMEM;
			snprintf(why, why_len, "out of memory for timing samples");
			goto out;
		}
	}
	for (uint32_t i = 0; i < o->n_items; i++) {
		s->items[i] = (struct sparq_attend_item){ .g = o->g, .params = *params,
							  .y = s->y + (size_t)i * per };
	}
	/* calls [0, L) warm up; the last call is layer 0, set 0 again, for y0 */
	for (uint32_t c = 0; c < L + timed + 1; c++) {
		bool last = c == L + timed;
		uint32_t layer = last ? 0 : c % L, set = last ? 0 : (c / L) % GPU_QSETS;

		for (uint32_t i = 0; i < o->n_items; i++) {
			s->items[i].stream = s->streams[layer * o->n_items + i];
			s->items[i].q = gpu_q(s, o, layer, set, i);
		}
		memset(&batch.stats, 0, sizeof(batch.stats));
		uint64_t t0 = bench_now_ns();
		ret = sparq_backend_attend(s->be, &batch);
		uint64_t t1 = bench_now_ns();
		if (ret) {
			snprintf(why, why_len, "sparq_backend_attend: errno %d (%s), item %d: %s",
				 -ret, strerror(-ret), batch.bad_item, batch.why ? batch.why : "?");
			goto out;
		}
		if (c < L || last)
			continue;
		ns[PH_STEP][c - L] = t1 - t0;
		ns[PH_SCORE][c - L] = batch.stats.score_ns;
		ns[PH_SELECT][c - L] = batch.stats.select_ns;
		ns[PH_GATHER][c - L] = batch.stats.gather_ns;
		ns[PH_EXACT][c - L] = batch.stats.exact_ns;
		w->be_slice_bytes = batch.stats.slice_bytes;
		w->be_record_bytes = batch.stats.record_bytes;
		w->cpu_items = batch.stats.cpu_items;
		w->cache_rows += batch.stats.cache_rows;
		w->cache_hits += batch.stats.cache_hits;
	}
	memcpy(y0, s->y, (size_t)o->n_items * per * sizeof(*y0));
	w->calls = timed;
	w->layer_p90_ms = bench_percentile(ns[PH_STEP], timed, 90.0) / 1e6;
	for (int ph = 0; ph < PH_N; ph++)
		w->ph_ms[ph] = bench_median(ns[ph], timed) / 1e6;
	w->layer_ms = w->ph_ms[PH_STEP];
	w->ok = true;
out:
	for (int ph = 0; ph < PH_N; ph++)
		free(ns[ph]);
	return ret;
}

/*
 * Consecutive decode steps on layer 0's streams with slowly drifting queries: step t
 * uses q0 + (t / steps) · GPU_DECODE_DRIFT · (q1 - q0), q0 and q1 being query sets 0
 * and 1 (no appends: the streams stay as timed). Shows what the row cache saves when
 * one step's selection resembles the last one's; the first step only warms it.
 */
#define GPU_DECODE_STEPS 16u
#define GPU_DECODE_DRIFT 0.25f

static int gpu_decode_steps(struct gpu_sparq *s, const struct gpu_opts *o,
			    const struct sparq_params *params, struct gpu_row *w, char *why,
			    size_t why_len)
{
	const uint32_t per = o->g * o->preset->d, n = o->n_items;
	float *q = malloc((size_t)n * per * sizeof(float));
	uint64_t ns[GPU_DECODE_STEPS], rows = 0, hits = 0;
	struct sparq_attend_batch batch = { .items = s->items, .n = n,
					    .mode = SPARQ_ATTEND_FULL, .bad_item = -1 };
	int ret = 0;

	if (!q) {
		snprintf(why, why_len, "out of memory for decode queries");
		return -ENOMEM;
	}
	for (uint32_t t = 0; t < GPU_DECODE_STEPS; t++) {
		const float a = GPU_DECODE_DRIFT * (float)t / GPU_DECODE_STEPS;

		for (uint32_t i = 0; i < n; i++) {
			const float *q0 = gpu_q(s, o, 0, 0, i), *q1 = gpu_q(s, o, 0, 1, i);
			for (uint32_t c = 0; c < per; c++)
				q[(size_t)i * per + c] = q0[c] + a * (q1[c] - q0[c]);
			s->items[i] = (struct sparq_attend_item){
				.stream = s->streams[i], .g = o->g, .q = q + (size_t)i * per,
				.params = *params, .y = s->y + (size_t)i * per,
			};
		}
		memset(&batch.stats, 0, sizeof(batch.stats));
		uint64_t t0 = bench_now_ns();
		ret = sparq_backend_attend(s->be, &batch);
		ns[t] = bench_now_ns() - t0;
		if (ret) {
			snprintf(why, why_len, "decode step %u: errno %d (%s), item %d: %s", t, -ret,
				 strerror(-ret), batch.bad_item, batch.why ? batch.why : "?");
			break;
		}
		if (t > 0) {
			rows += batch.stats.cache_rows;
			hits += batch.stats.cache_hits;
		}
	}
	if (ret == 0) {
		w->dec_steps = GPU_DECODE_STEPS;
		w->dec_ms = bench_median(ns + 1, GPU_DECODE_STEPS - 1) / 1e6;
		w->dec_hit = rows ? (double)hits / (double)rows : NAN;
	}
	free(q);
	return ret;
}

/* Ceilings, then the dense baselines on layer 0's records with layer 0's first queries. */
static int gpu_dense_phase(struct bench_gpu *gg, const struct gpu_opts *o, uint16_t *rec,
			   const float *q0, float *y_dense, struct gpu_report *r)
{
	struct bench_gpu_dense_shape sh = { .n_items = o->n_items, .g = o->g, .d = o->preset->d,
					    .S = (uint32_t)o->S };
	struct bench_gpu_dense *plan = NULL;
	void **slots = calloc(o->n_slots, sizeof(*slots));
	int ret = 0;

	if (!slots)
		return -ENOMEM;
	for (uint32_t i = 0; i < o->n_slots && ret == 0; i++)
		ret = bench_gpu_dev_alloc(gg, o->layer_bytes, &slots[i]);
	if (ret == 0)
		ret = bench_gpu_dense_create(gg, &sh, &plan);
	if (ret) {
		gpu_fail(gg, "dense baselines: allocation", ret);
		goto out;
	}
	r->dense_splits = bench_gpu_dense_splits(plan);

	fprintf(stderr, PROG ": measuring the ceilings...\n");
	r->h2d_bytes = o->layer_bytes < GPU_H2D_MAX ? o->layer_bytes : GPU_H2D_MAX;
	ret = bench_gpu_h2d_gbs(gg, slots[0], rec, r->h2d_bytes, GPU_CEIL_REPS, &r->h2d_gbs);
	if (ret) {
		gpu_fail(gg, "pinned H2D bandwidth", ret);
		goto out;
	}
	r->hbm_bytes = o->layer_bytes;
	ret = bench_gpu_d2d_gbs(gg, slots[1], slots[0], r->hbm_bytes, GPU_CEIL_REPS, &r->hbm_gbs);
	if (ret) {
		gpu_fail(gg, "HBM bandwidth", ret);
		goto out;
	}
	uint64_t pool_rows = o->layer_bytes / 512;
	r->gather_rows = pool_rows < GPU_GATHER_ROWS ? pool_rows : GPU_GATHER_ROWS;
	ret = bench_gpu_gather_gbs(gg, rec, pool_rows, 512, (uint32_t)r->gather_rows, slots[1],
				   GPU_CEIL_REPS, SEED, &r->gather_gbs);
	if (ret) {
		gpu_fail(gg, "zero-copy gather", ret);
		goto out;
	}

	fprintf(stderr, PROG ": dense baselines (%u resident copies, %u splits per head)...\n",
		o->n_slots, r->dense_splits);
	ret = bench_gpu_upload(gg, slots[0], rec, o->layer_bytes);
	for (uint32_t i = 1; i < o->n_slots && ret == 0; i++)
		ret = bench_gpu_copy_d2d(gg, slots[i], slots[0], o->layer_bytes);
	if (ret == 0)
		ret = bench_gpu_dense_set_q(plan, q0);
	if (ret == 0)
		ret = bench_gpu_dense_run(plan, slots[0], y_dense);
	if (ret == 0)
		ret = bench_gpu_dense_time_resident(plan, slots, o->n_slots, GPU_DENSE_REPS,
						    &r->res_layer_ms);
	if (ret) {
		gpu_fail(gg, "dense resident", ret);
		goto out;
	}
	ret = bench_gpu_dense_time_offload(plan, rec, slots, GPU_OFFLOAD_LAYERS, GPU_OFFLOAD_REPS,
					   &r->off_layer_ms, NULL);
	if (ret)
		gpu_fail(gg, "dense offload", ret);
	else
		r->dense_ok = true;
out:
	bench_gpu_dense_destroy(plan);
	for (uint32_t i = 0; i < o->n_slots; i++)
		bench_gpu_dev_free(gg, slots[i]);
	free(slots);
	return ret;
}

static int run_gpu_device(const struct gpu_opts *o, struct gpu_report *r)
{
	struct bench_gpu *gg = NULL;
	struct bench_gpu_info info;
	struct gpu_sparq s = { 0 };
	uint16_t *rec = NULL;
	float *q0 = NULL, *y_dense = NULL, *y0 = NULL;
	size_t ny = (size_t)o->n_items * o->g * o->preset->d;
	char why[256];
	uint64_t t0, free_before = 0, free_after = 0, total = 0;
	int ret;

	ret = bench_gpu_open(&gg, &info, why, sizeof(why));
	if (ret) {
		fprintf(stderr, PROG ": %s\n", why);
		return ret;
	}
	snprintf(r->dev, sizeof(r->dev), "%s", info.name);
	r->cc_major = info.cc_major;
	r->cc_minor = info.cc_minor;
	r->sm_count = info.sm_count;
	r->dev_mem = info.total_mem;
	r->l2_bytes = info.l2_bytes;
	r->layers = o->layers;
	backend_detail("cuda", r->be_detail, sizeof(r->be_detail), false);

	ret = gpu_check_dense(gg, o, r);
	if (ret)
		goto out;

	q0 = malloc(ny * sizeof(*q0));
	y_dense = malloc(ny * sizeof(*y_dense));
	y0 = malloc(ny * sizeof(*y0));
	if (!q0 || !y_dense || !y0) {
		ret = -ENOMEM;
		goto out;
	}
	ret = bench_gpu_host_alloc(gg, o->layer_bytes, (void **)&rec);
	if (ret) {
		gpu_fail(gg, "pinned records", ret);
		goto out;
	}
	fprintf(stderr, PROG ": generating one layer of records (%.2f GiB, %u threads)...\n",
		(double)o->layer_bytes / (1u << 30), o->n_threads);
	t0 = bench_now_ns();
	{
		struct gen_job job = { .rec = rec, .n_items = o->n_items, .d = o->preset->d,
				       .S = o->S };
		ret = bench_parallel(o->n_threads, gen_task, &job);
		if (ret) {
			fprintf(stderr, PROG ": cannot start %u threads\n", o->n_threads);
			goto out;
		}
	}
	r->gen_s = (double)(bench_now_ns() - t0) / 1e9;
	/* the same queries as the SparQ streams' layer 0, set 0 */
	fill_queries(q0, o->n_items, o->g, o->preset->d, SEED ^ 0x51ull);

	ret = gpu_dense_phase(gg, o, rec, q0, y_dense, r);
	if (ret)
		goto out;

	/* SparQ: whatever fails here still leaves the ceilings and baselines to report */
	fprintf(stderr, PROG ": building %u x %u streams on the CUDA backend...\n", o->layers,
		o->n_items);
	t0 = bench_now_ns();
	ret = bench_gpu_mem_info(gg, &free_before, &total);
	if (ret == 0)
		ret = gpu_sparq_setup(&s, o, rec, r->sparq_why, sizeof(r->sparq_why));
	r->fill_s = (double)(bench_now_ns() - t0) / 1e9;
	bench_gpu_host_free(gg, rec);
	rec = NULL;
	if (ret) {
		if (!r->sparq_why[0])
			snprintf(r->sparq_why, sizeof(r->sparq_why), "%s", bench_gpu_error(gg));
		fprintf(stderr, PROG ": SparQ on the CUDA backend: %s\n", r->sparq_why);
		goto out;
	}
	r->sparq_ok = true;
	for (uint32_t i = 0; i < o->n_km; i++) {
		struct sparq_params params;
		struct gpu_row *w = &r->rows[i];

		if (gpu_plan_of(o, &o->km[i], &w->pl, &params))
			continue;
		fprintf(stderr, PROG ": timing SparQ, %s (r = %u, k = %u)...\n", o->km[i].name,
			w->pl.res.r, w->pl.res.k);
		ret = gpu_time_sparq(&s, o, &params, w, y0, r->sparq_why, sizeof(r->sparq_why));
		if (ret) {
			fprintf(stderr, PROG ": SparQ on the CUDA backend: %s\n", r->sparq_why);
			break;
		}
		w->rel_err = rel_l2(y0, y_dense, ny);
		ret = gpu_decode_steps(&s, o, &params, w, r->sparq_why, sizeof(r->sparq_why));
		if (ret) {
			fprintf(stderr, PROG ": SparQ decode steps: %s\n", r->sparq_why);
			break;
		}
	}
	/* after the calls, so the backend's working buffers for the largest k count too */
	if (bench_gpu_mem_info(gg, &free_after, &total) == 0) {
		r->gpu_used = free_before > free_after ? free_before - free_after : 0;
		r->bpt_sparq = (double)r->gpu_used / ((double)o->layers * o->n_items * o->S);
	} else {
		r->sparq_ok = false;   /* no memory figure: the CSV leaves it empty */
	}
out:
	gpu_sparq_destroy(&s);
	bench_gpu_host_free(gg, rec);
	free(q0);
	free(y_dense);
	free(y0);
	bench_gpu_close(gg);
	return ret;
}
#else
static int run_gpu_device(const struct gpu_opts *o, struct gpu_report *r)
{
	(void)o;
	(void)r;
	fprintf(stderr, PROG ": not built with CUDA (configure with -DSPARQ_CUDA=ON and nvcc); "
		"the GPU benchmark cannot run (--dry-run prints its plan)\n");
	return -ENODEV;
}
#endif

static int run_gpu(const struct gpu_opts *o)
{
	struct gpu_report *r = NULL;
	FILE *table = o->json ? stderr : stdout;
	uint64_t t0 = bench_now_ns();
	int ret = 0;

	r = calloc(1, sizeof(*r));
	if (!r)
		return -ENOMEM;
	for (uint32_t i = 0; i < o->n_km; i++) {
		struct sparq_params params;
		(void)gpu_plan_of(o, &o->km[i], &r->rows[i].pl, &params);
	}
	if (o->dry_run) {
		gpu_print_plan(stdout, o);
#ifndef SPARQ_BENCH_GPU
		fprintf(stdout, "\nnote: this binary was not built with CUDA; a real run fails\n");
#endif
		/* the files get the rows with floors at the assumed ceilings, measured
		 * fields empty, so the output path can be checked without a GPU */
		r->dry_run = true;
		r->h2d_gbs = o->assume_h2d;
		r->hbm_gbs = o->assume_hbm;
		r->layers = o->layers;
		snprintf(r->sparq_why, sizeof(r->sparq_why), "dry run: nothing measured");
		gpu_derive(r, o);
		goto files;
	}
	ret = run_gpu_device(o, r);
	/* a failure before the dense baselines leaves nothing worth a table */
	if (ret && !r->dense_ok)
		goto out;
	r->total_s = (double)(bench_now_ns() - t0) / 1e9;
	gpu_derive(r, o);
	if (o->json) {
		gpu_print_json(stdout, r, o);
		fflush(stdout);
	}
	gpu_print_table(table, r, o);
files:
	if (o->jsonl) {
		int e = gpu_append_jsonl(o->jsonl, r, o);
		ret = ret ? ret : e;
	}
	if (o->csv) {
		int e = gpu_write_csv(r, o);
		ret = ret ? ret : e;
	}
out:
	free(r);
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
	if (strcmp(argv[1], "tiers") == 0) {
		struct tiers_opts to;

		ret = parse_tiers_args(argc - 2, argv + 2, &to);
		if (ret == 1) {
			usage(stdout);
			return 0;
		}
		if (ret)
			return EXIT_USAGE;
		return run_tiers(&to) ? EXIT_RUNTIME : 0;
	}
	if (strcmp(argv[1], "ipc") == 0)
		return bench_ipc_main(argc - 2, argv + 2);
	if (strcmp(argv[1], "trace") == 0)
		return bench_trace_main(argc - 2, argv + 2);
	if (strcmp(argv[1], "gpu") == 0) {
		struct gpu_opts go;

		ret = parse_gpu_args(argc - 2, argv + 2, &go);
		if (ret == 1) {
			usage(stdout);
			return 0;
		}
		if (ret)
			return EXIT_USAGE;
		return run_gpu(&go) ? EXIT_RUNTIME : 0;
	}
	if (strcmp(argv[1], "kernel") != 0) {
		usage_error("unknown mode '%s' (modes: kernel, tiers, gpu, ipc, trace)", argv[1]);
		return EXIT_USAGE;
	}
	ret = parse_kernel_args(argc - 2, argv + 2, &o);
	if (ret == 1) {
		usage(stdout);
		return 0;
	}
	if (ret)
		return EXIT_USAGE;
	/* on the GPU, a kernel run is one configuration of mode gpu: the CPU-side
	 * figures (host memory bandwidth) say nothing about a GPU step. --store tiers is
	 * the exception: it compares two ways of fetching the same records, in place and
	 * copied, whatever the backend */
	if (strcmp(o.backend, "cuda") == 0 && !o.tiers) {
		struct gpu_opts go;

		if (gpu_opts_from_kernel(&o, &go))
			return EXIT_USAGE;
		return run_gpu(&go) ? EXIT_RUNTIME : 0;
	}
	return run_kernel(&o) ? EXIT_RUNTIME : 0;
}
