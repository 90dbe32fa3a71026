/*
 * bench_trace.c — sparq-bench trace (issue 7): SparQ on a real model's attention.
 *
 * `tools/eval run --dump-traces DIR` writes the post-RoPE queries of every decode
 * step and the keys and values of the whole sequence, per layer (bench_trace.h). This
 * mode rebuilds each layer's streams on a backend exactly as sparqd held them during
 * that decode: the positions before the first traced query appended in bulk (the
 * prefill), then per step the step's own K/V row appended and its query attended over
 * the prefix, twice, through the same in-process path `sparq-bench kernel` times:
 *   - the SparQ step (cfg params), its selection returned;
 *   - dense attention (k >= S: the backend's exact path), the reference answer.
 * Per layer and over all layers it reports the step times (p50, p90) and their ratio,
 * the bytes each call read (the backend's stats) next to the memory floor they imply,
 * the relative error of y against dense, the top-k recall of the selection against
 * the exact top rows (group-summed softmax weights, computed here in double), and the
 * overlap of consecutive selections: the fraction of the rows selected at step t that
 * were selected at step t-1 (or within the last TRACE_OVERLAP_WINDOW steps) — the hit
 * rate of a GPU row cache keeping the previous steps' rows, measured on real data
 * rather than guessed. A backend that reports its own row-cache counters (CUDA v2)
 * has them printed beside it.
 *
 * --key-slice both replays every layer twice, on a backend with native key slices and
 * on one with int8 slices (backend.h), and adds the agreement of the two selections:
 * the fraction of the native step's rows the int8 step selected too, over all rows
 * and over the rows scoring chose (outside the local window, which both always hold).
 *
 * Everything read from the trace is validated first (meta.json, every selected
 * layer's three .npy files, their shapes against each other, every value finite): a
 * trace that does not validate is exit 2 with the file and the fault named, before
 * any work.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "bench_opts.h"
#include "bench_trace.h"
#include "bench_util.h"
#include "half.h"
#include "npy.h"
#include "sparq.h"
#include "store.h"
#include "stream.h"

#define PROG "sparq-bench trace"
#define EXIT_RUNTIME 1
#define EXIT_USAGE 2
#define META_MAX ((size_t)64 << 20)
#define JSON_DEPTH_MAX 32
#define LAYERS_MAX 4096u
#define HEADS_MAX 4096u
/* Rows per sparq_stream_append while rebuilding the prefill: bulk, as sparqd's. */
#define FILL_ROWS 4096u
#define STORE_CHUNK 1024u
/* Memory bandwidth of the floor: buffers far beyond any cache, median of a few runs. */
#define BW_BYTES ((size_t)256 << 20)
#define BW_REPS 3u
#define ERR_LEN 1024

#define TRACE_CSV_HEADER "backend,trace,layer,steps,S,r,k,sparq_p50_ms,sparq_p90_ms," \
			 "dense_p50_ms,dense_p90_ms,speedup_vs_dense,sparq_bytes_per_step," \
			 "dense_bytes_per_step,byte_ratio,floor_ms,ratio_floor,rel_err_mean," \
			 "rel_err_max,topk_recall,overlap_prev,overlap_last4,overlap_prev_scored," \
			 "cache_hit_rate"

/* "reason" into err (err_len may be 0). */
__attribute__((format(printf, 3, 4)))
static void say(char *err, size_t err_len, const char *fmt, ...)
{
	va_list ap;

	if (!err || err_len == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, err_len, fmt, ap);
	va_end(ap);
}

/* ==== meta.json: the flat object tools/eval writes ==== */

struct jp {
	const char *p, *end;
	const char *why;
};

static void jws(struct jp *j)
{
	while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
		j->p++;
}

static bool jeat(struct jp *j, char c)
{
	jws(j);
	if (j->p < j->end && *j->p == c) {
		j->p++;
		return true;
	}
	return false;
}

/* A string; its bytes (escapes reduced to the escaped character, \uXXXX to '?') go
 * to out when given, truncated to cap - 1. */
static int jstring(struct jp *j, char *out, size_t cap)
{
	size_t n = 0;

	if (!jeat(j, '"')) {
		j->why = "expected a string";
		return -EINVAL;
	}
	while (j->p < j->end && *j->p != '"') {
		char c = *j->p++;
		if (c == '\\') {
			if (j->p >= j->end)
				break;
			c = *j->p++;
			if (c == 'u') {
				if (j->end - j->p < 4) {
					j->why = "bad \\u escape";
					return -EINVAL;
				}
				j->p += 4;
				c = '?';
			}
		}
		if (out && n + 1 < cap)
			out[n++] = c;
	}
	if (j->p >= j->end) {
		j->why = "unterminated string";
		return -EINVAL;
	}
	j->p++;
	if (out && cap)
		out[n] = '\0';
	return 0;
}

/* A non-negative integer without fraction or exponent, at most max. */
static int juint(struct jp *j, uint64_t max, uint64_t *out)
{
	uint64_t v = 0;
	const char *s;

	jws(j);
	s = j->p;
	while (j->p < j->end && *j->p >= '0' && *j->p <= '9') {
		v = v * 10 + (uint64_t)(*j->p++ - '0');
		if (v > max) {
			j->why = "a number is out of range";
			return -EINVAL;
		}
	}
	if (j->p == s || (j->p < j->end && (*j->p == '.' || *j->p == 'e' || *j->p == 'E'))) {
		j->why = "expected a non-negative integer";
		return -EINVAL;
	}
	*out = v;
	return 0;
}

static int jskip(struct jp *j, int depth)
{
	if (depth > JSON_DEPTH_MAX) {
		j->why = "nested too deeply";
		return -EINVAL;
	}
	jws(j);
	if (j->p >= j->end) {
		j->why = "unexpected end";
		return -EINVAL;
	}
	if (*j->p == '"')
		return jstring(j, NULL, 0);
	if (*j->p == '[' || *j->p == '{') {
		char close = *j->p == '[' ? ']' : '}';
		bool obj = *j->p == '{';
		j->p++;
		if (jeat(j, close))
			return 0;
		do {
			if (obj && (jstring(j, NULL, 0) || !jeat(j, ':'))) {
				j->why = j->why ? j->why : "expected ':'";
				return -EINVAL;
			}
			if (jskip(j, depth + 1))
				return -EINVAL;
		} while (jeat(j, ','));
		if (!jeat(j, close)) {
			j->why = "expected ',' or a closing bracket";
			return -EINVAL;
		}
		return 0;
	}
	/* number, true, false, null: the run of their characters */
	const char *s = j->p;
	while (j->p < j->end && (strchr("+-.eE", *j->p) || (*j->p >= '0' && *j->p <= '9') ||
				 (*j->p >= 'a' && *j->p <= 'z')))
		j->p++;
	if (j->p == s) {
		j->why = "unexpected character";
		return -EINVAL;
	}
	return 0;
}

static int juint_array(struct jp *j, uint32_t **out, uint32_t *n)
{
	uint32_t cap = 0;

	*out = NULL;
	*n = 0;
	if (!jeat(j, '[')) {
		j->why = "q_positions is not an array";
		return -EINVAL;
	}
	if (jeat(j, ']'))
		return 0;
	do {
		uint64_t v;
		if (juint(j, SPARQ_POS_MAX - 1, &v))
			return -EINVAL;
		if (*n == cap) {
			uint32_t nc = cap ? 2 * cap : 256;
			uint32_t *p = nc > cap ? realloc(*out, (size_t)nc * sizeof(*p)) : NULL;
			if (!p) {
				j->why = "out of memory";
				return -ENOMEM;
			}
			*out = p;
			cap = nc;
		}
		(*out)[(*n)++] = (uint32_t)v;
	} while (jeat(j, ','));
	if (!jeat(j, ']')) {
		j->why = "q_positions: expected ',' or ']'";
		return -EINVAL;
	}
	return 0;
}

enum meta_key { MK_LAYERS, MK_NQ, MK_NKV, MK_D, MK_PREFILL, MK_STEPS, MK_N };
static const char *const meta_keys[MK_N] = {
	"n_layers", "n_q_heads", "n_kv_heads", "head_dim", "prefill", "steps",
};

static char *read_file(const char *path, size_t max, size_t *len, int *ret)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t n = 0;

	*ret = 0;
	if (!f) {
		*ret = -errno;
		return NULL;
	}
	buf = malloc(max + 1);
	if (!buf) {
		*ret = -ENOMEM;
		goto out;
	}
	n = fread(buf, 1, max + 1, f);
	if (ferror(f)) {
		*ret = -EIO;
	} else if (n > max) {
		*ret = -EFBIG;
	}
out:
	fclose(f);
	if (*ret) {
		free(buf);
		return NULL;
	}
	buf[n] = '\0';
	*len = n;
	return buf;
}

static int read_meta(const char *dir, struct trace_meta *m, uint32_t **qpos, uint32_t *n_qpos,
		     char *err, size_t err_len)
{
	char path[4096], key[64];
	uint64_t val[MK_N] = { 0 };
	bool have[MK_N] = { false }, have_qpos = false;
	size_t len = 0;
	int ret;
	char *text;

	*qpos = NULL;
	*n_qpos = 0;
	snprintf(path, sizeof(path), "%s/meta.json", dir);
	text = read_file(path, META_MAX, &len, &ret);
	if (!text) {
		say(err, err_len, "%s: %s", path, ret == -EFBIG ? "larger than 64 MiB" : strerror(-ret));
		return ret == -EFBIG ? -EINVAL : ret;
	}
	struct jp j = { .p = text, .end = text + len };
	if (!jeat(&j, '{')) {
		j.why = "not a JSON object";
		ret = -EINVAL;
		goto bad;
	}
	if (!jeat(&j, '}')) {
		do {
			ret = jstring(&j, key, sizeof(key));
			if (ret)
				goto bad;
			if (!jeat(&j, ':')) {
				j.why = "expected ':'";
				ret = -EINVAL;
				goto bad;
			}
			int k;
			for (k = 0; k < MK_N && strcmp(key, meta_keys[k]) != 0; k++)
				;
			if (k < MK_N) {
				if (have[k]) {
					j.why = "a key is repeated";
					ret = -EINVAL;
					goto bad;
				}
				have[k] = true;
				ret = juint(&j, SPARQ_POS_MAX, &val[k]);
			} else if (strcmp(key, "q_positions") == 0) {
				if (have_qpos) {
					j.why = "a key is repeated";
					ret = -EINVAL;
					goto bad;
				}
				have_qpos = true;
				ret = juint_array(&j, qpos, n_qpos);
			} else {
				ret = jskip(&j, 1);
			}
			if (ret)
				goto bad;
		} while (jeat(&j, ','));
		if (!jeat(&j, '}')) {
			j.why = "expected ',' or '}'";
			ret = -EINVAL;
			goto bad;
		}
	}
	jws(&j);
	if (j.p != j.end) {
		j.why = "text after the object";
		ret = -EINVAL;
		goto bad;
	}
	for (int k = 0; k < MK_N; k++) {
		if (!have[k]) {
			say(err, err_len, "%s: no \"%s\" (tools/eval writes n_layers, n_q_heads, "
			    "n_kv_heads, head_dim, prefill, steps)", path, meta_keys[k]);
			ret = -EINVAL;
			goto out;
		}
	}
	m->n_layers = (uint32_t)val[MK_LAYERS];
	m->n_q = (uint32_t)val[MK_NQ];
	m->n_kv = (uint32_t)val[MK_NKV];
	m->d = (uint32_t)val[MK_D];
	m->prefill = (uint32_t)val[MK_PREFILL];
	m->steps = (uint32_t)val[MK_STEPS];
	if (!have_qpos)
		*n_qpos = UINT32_MAX;   /* absent: prefill + i */
	ret = 0;
	goto out;
bad:
	if (ret == -ENOMEM)
		say(err, err_len, "%s: out of memory", path);
	else
		say(err, err_len, "%s: not the JSON tools/eval writes: %s (at byte %td)", path,
		    j.why ? j.why : "malformed", j.p - text);
out:
	if (ret) {
		free(*qpos);
		*qpos = NULL;
	}
	free(text);
	return ret;
}

/* ==== the trace's files ==== */

static void layer_path(char *buf, size_t n, const char *dir, uint32_t layer, char what)
{
	snprintf(buf, n, "%s/layer%02u_%c.npy", dir, layer, what);
}

static void shape_str(char *buf, size_t n, const struct npy_array *a)
{
	size_t o = (size_t)snprintf(buf, n, "(");
	for (uint32_t i = 0; i < a->ndim && o < n; i++)
		o += (size_t)snprintf(buf + o, n - o, "%s%" PRIu64, i ? ", " : "", a->shape[i]);
	if (o < n)
		snprintf(buf + o, n - o, ")");
}

static bool shape_is(const struct npy_array *a, uint64_t d0, uint64_t d1, uint64_t d2)
{
	return a->ndim == 3 && a->shape[0] == d0 && a->shape[1] == d1 && a->shape[2] == d2;
}

/*
 * Checks one layer's three headers (or arrays) against m; S == 0 in m means "not known
 * yet": the K file sets it. -EINVAL with the file and the fault in err.
 */
static int check_layer_arrays(const char *dir, struct trace_meta *m, uint32_t layer,
			      const struct npy_array *q, const struct npy_array *k,
			      const struct npy_array *v, char *err, size_t err_len)
{
	char path[4200], sh[160];

	layer_path(path, sizeof(path), dir, layer, 'q');
	shape_str(sh, sizeof(sh), q);
	if (q->dtype != NPY_F32) {
		say(err, err_len, "%s: dtype float16, expected float32 ('<f4') queries", path);
		return -EINVAL;
	}
	if (!shape_is(q, m->steps, m->n_q, m->d)) {
		say(err, err_len, "%s: shape %s, expected [steps=%u][n_q_heads=%u][head_dim=%u] "
		    "as meta.json says", path, sh, m->steps, m->n_q, m->d);
		return -EINVAL;
	}
	layer_path(path, sizeof(path), dir, layer, 'k');
	shape_str(sh, sizeof(sh), k);
	if (k->dtype != NPY_F16) {
		say(err, err_len, "%s: dtype float32, expected float16 ('<f2') keys", path);
		return -EINVAL;
	}
	if (k->ndim != 3 || k->shape[1] != m->n_kv || k->shape[2] != m->d) {
		say(err, err_len, "%s: shape %s, expected [S][n_kv_heads=%u][head_dim=%u]", path, sh,
		    m->n_kv, m->d);
		return -EINVAL;
	}
	if (m->S == 0) {
		if (k->shape[0] > SPARQ_POS_MAX || k->shape[0] == 0) {
			say(err, err_len, "%s: S = %" PRIu64 " positions, expected 1 .. 2^31", path,
			    k->shape[0]);
			return -EINVAL;
		}
		m->S = (uint32_t)k->shape[0];
	} else if (k->shape[0] != m->S) {
		say(err, err_len, "%s: S = %" PRIu64 " positions, but the layers before have %u",
		    path, k->shape[0], m->S);
		return -EINVAL;
	}
	layer_path(path, sizeof(path), dir, layer, 'v');
	shape_str(sh, sizeof(sh), v);
	if (v->dtype != NPY_F16 || !shape_is(v, m->S, m->n_kv, m->d)) {
		say(err, err_len, "%s: %s %s, expected float16 of the keys' shape (%u, %u, %u)", path,
		    v->dtype == NPY_F16 ? "float16" : "float32", sh, m->S, m->n_kv, m->d);
		return -EINVAL;
	}
	return 0;
}

void trace_meta_free(struct trace_meta *m)
{
	free(m->q_pos);
	memset(m, 0, sizeof(*m));
}

int trace_open(const char *dir, const uint32_t *sel, uint32_t n_sel, struct trace_meta *m,
	       char *err, size_t err_len)
{
	uint32_t *qpos = NULL, n_qpos = 0;
	const char *why = NULL;
	int ret;

	memset(m, 0, sizeof(*m));
	ret = read_meta(dir, m, &qpos, &n_qpos, err, err_len);
	if (ret)
		return ret;
	ret = -EINVAL;
	if (m->n_layers == 0 || m->n_layers > LAYERS_MAX) {
		say(err, err_len, "%s/meta.json: n_layers %u, expected 1 .. %u", dir, m->n_layers,
		    LAYERS_MAX);
		goto fail;
	}
	if (m->n_kv == 0 || m->n_q == 0 || m->n_q > HEADS_MAX || m->n_q % m->n_kv) {
		say(err, err_len, "%s/meta.json: n_q_heads %u is not a multiple of n_kv_heads %u "
		    "(or one is 0 or above %u)", dir, m->n_q, m->n_kv, HEADS_MAX);
		goto fail;
	}
	m->g = m->n_q / m->n_kv;
	if (sparq_geometry_check(m->d, m->g, SPARQ_DTYPE_F16, &why)) {
		say(err, err_len, "%s/meta.json: head_dim %u with %u query heads per KV head: %s",
		    dir, m->d, m->g, why);
		goto fail;
	}
	if (m->steps == 0) {
		say(err, err_len, "%s/meta.json: steps is 0: nothing to replay", dir);
		goto fail;
	}
	if (n_qpos != UINT32_MAX && n_qpos != m->steps) {
		say(err, err_len, "%s/meta.json: %u q_positions for %u steps", dir, n_qpos, m->steps);
		goto fail;
	}
	if (n_qpos == UINT32_MAX) {
		qpos = malloc((size_t)m->steps * sizeof(*qpos));
		if (!qpos) {
			say(err, err_len, "out of memory for %u steps", m->steps);
			ret = -ENOMEM;
			goto fail;
		}
		for (uint32_t i = 0; i < m->steps; i++)
			qpos[i] = m->prefill + i;
	}
	for (uint32_t i = 1; i < m->steps; i++) {
		if (qpos[i] <= qpos[i - 1]) {
			say(err, err_len, "%s/meta.json: q_positions not strictly increasing at step %u "
			    "(%u after %u)", dir, i, qpos[i], qpos[i - 1]);
			goto fail;
		}
	}
	for (uint32_t i = 0; i < (n_sel ? n_sel : m->n_layers); i++) {
		uint32_t layer = n_sel ? sel[i] : i;
		struct npy_array a[3];
		char path[4200];
		int r = 0;

		if (layer >= m->n_layers) {
			say(err, err_len, "layer %u: the trace has layers 0 .. %u", layer,
			    m->n_layers - 1);
			ret = -EINVAL;
			goto fail;
		}
		for (int f = 0; f < 3 && r == 0; f++) {
			layer_path(path, sizeof(path), dir, layer, "qkv"[f]);
			r = npy_read_header(path, &a[f], err, err_len);
		}
		if (r) {
			ret = r;
			goto fail;
		}
		ret = check_layer_arrays(dir, m, layer, &a[0], &a[1], &a[2], err, err_len);
		if (ret)
			goto fail;
	}
	ret = -EINVAL;
	if (m->steps >= m->S || qpos[m->steps - 1] >= m->S) {
		say(err, err_len, "%s: %u steps with the last query at position %u, but the K/V "
		    "files hold S = %u positions (steps < S and every query inside S)", dir,
		    m->steps, qpos[m->steps - 1], m->S);
		goto fail;
	}
	m->q_pos = qpos;
	return 0;
fail:
	free(qpos);
	memset(m, 0, sizeof(*m));
	return ret;
}

void trace_layer_free(struct trace_layer *L)
{
	free(L->q);
	free(L->k);
	free(L->v);
	memset(L, 0, sizeof(*L));
}

int trace_layer_load(const char *dir, const struct trace_meta *m, uint32_t layer,
		     struct trace_layer *L, char *err, size_t err_len)
{
	struct npy_array a[3] = { 0 };
	struct trace_meta mm = *m;
	char path[4200];
	int ret = 0;

	memset(L, 0, sizeof(*L));
	for (int f = 0; f < 3 && ret == 0; f++) {
		layer_path(path, sizeof(path), dir, layer, "qkv"[f]);
		ret = npy_read(path, &a[f], err, err_len);
	}
	if (ret)
		goto fail;
	/* the files may have changed since trace_open: check them again */
	ret = check_layer_arrays(dir, &mm, layer, &a[0], &a[1], &a[2], err, err_len);
	if (ret)
		goto fail;
	ret = -EINVAL;
	const float *q = a[0].data;
	for (uint64_t i = 0; i < a[0].count; i++) {
		if (!isfinite(q[i])) {
			uint64_t hd = (uint64_t)m->n_q * m->d;
			layer_path(path, sizeof(path), dir, layer, 'q');
			say(err, err_len, "%s: %s at step %" PRIu64 ", q head %" PRIu64 ", component %"
			    PRIu64, path, isnan(q[i]) ? "NaN" : "Inf", i / hd, i % hd / m->d, i % m->d);
			goto fail;
		}
	}
	for (int f = 1; f < 3; f++) {
		const uint16_t *x = a[f].data;
		for (uint64_t i = 0; i < a[f].count; i++) {
			if (sparq_f16_nonfinite(x[i])) {
				uint64_t hd = (uint64_t)m->n_kv * m->d;
				layer_path(path, sizeof(path), dir, layer, "qkv"[f]);
				say(err, err_len, "%s: NaN or Inf at position %" PRIu64 ", KV head %"
				    PRIu64 ", component %" PRIu64, path, i / hd, i % hd / m->d,
				    i % m->d);
				goto fail;
			}
		}
	}
	L->layer = layer;
	L->q = a[0].data;
	L->k = a[1].data;
	L->v = a[2].data;
	return 0;
fail:
	for (int f = 0; f < 3; f++)
		npy_free(&a[f]);
	return ret;
}

/* ==== replay ==== */

void trace_layer_result_free(struct trace_layer_result *res)
{
	free(res->sparq_ns);
	free(res->dense_ns);
	free(res->rel_err);
	free(res->sel);
	free(res->n_sel);
	free(res->y);
	free(res->y_dense);
	memset(res, 0, sizeof(*res));
}

/* What one layer's replay holds: every pointer owned, freed by replay_destroy. */
struct replay {
	const struct trace_meta *m;
	const struct trace_layer *L;
	struct sparq_store *st;
	struct sparq_stream **streams;     /* [n_kv] */
	struct sparq_attend_item *items;   /* [n_kv] SparQ */
	struct sparq_attend_item *ditems;  /* [n_kv] dense */
	float *y, *y_dense;                /* [n_q][d] */
	uint16_t *kbuf, *vbuf;             /* [FILL_ROWS][d] one head's rows, contiguous */
	float *kf;                         /* [S][n_kv][d] the keys in fp32, for exact scores */
	uint32_t *sel;                     /* [n_kv][sel_cap] */
	uint32_t sel_cap;
	int32_t *last;                     /* [n_kv][S] the last step that selected a row */
	double *mass, *tmp;                /* [n_kv][S] exact-score scratch per KV head */
	uint64_t *hits;                    /* [n_kv] recall hits of the current step */
	uint32_t step;                     /* current step, for the recall threads */
};

static void replay_destroy(struct replay *r)
{
	for (uint32_t h = 0; r->streams && h < r->m->n_kv; h++)
		sparq_stream_destroy(r->streams[h]);
	free(r->streams);
	free(r->items);
	free(r->ditems);
	free(r->y);
	free(r->y_dense);
	free(r->kbuf);
	free(r->vbuf);
	free(r->kf);
	free(r->sel);
	free(r->last);
	free(r->mass);
	free(r->tmp);
	free(r->hits);
	/* streams first: they hold records in the store */
	if (r->st)
		sparq_store_destroy(r->st);
	memset(r, 0, sizeof(*r));
}

/* Rows [from, to) of every KV head, appended to its stream in bulk. */
static int append_rows(struct replay *r, uint32_t from, uint32_t to, const char **why)
{
	const struct trace_meta *m = r->m;
	size_t d = m->d;

	for (uint32_t pos = from; pos < to; pos += FILL_ROWS) {
		uint32_t n = to - pos < FILL_ROWS ? to - pos : FILL_ROWS;
		for (uint32_t h = 0; h < m->n_kv; h++) {
			for (uint32_t j = 0; j < n; j++) {
				size_t src = ((size_t)(pos + j) * m->n_kv + h) * d;
				memcpy(r->kbuf + j * d, r->L->k + src, d * sizeof(uint16_t));
				memcpy(r->vbuf + j * d, r->L->v + src, d * sizeof(uint16_t));
			}
			int ret = sparq_stream_append(r->streams[h], n, r->kbuf, r->vbuf, why);
			if (ret)
				return ret;
		}
	}
	return 0;
}

static double dot(const float *a, const float *b, uint32_t d)
{
	/* four chains: the loop's latency is the add's, not d of them in a row */
	double s0 = 0, s1 = 0, s2 = 0, s3 = 0;

	for (uint32_t c = 0; c < d; c += 4) {
		s0 += (double)a[c] * b[c];
		s1 += (double)a[c + 1] * b[c + 1];
		s2 += (double)a[c + 2] * b[c + 2];
		s3 += (double)a[c + 3] * b[c + 3];
	}
	return (s0 + s1) + (s2 + s3);
}

/* The value of rank k (0 = largest) of a[0..n), n > k; reorders a. Three-way
 * partitions, so runs of equal weights (underflowed ones) cost no extra passes. */
static double kth_largest(double *a, uint32_t n, uint32_t k)
{
	uint32_t lo = 0, hi = n;   /* the answer's rank lies in [lo, hi) */

	while (hi - lo > 1) {
		double x = a[lo], y = a[lo + (hi - lo) / 2], z = a[hi - 1];
		double p = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y));
		uint32_t gt = lo, i = lo, lt = hi;   /* [lo,gt) > p, [gt,i) == p, [lt,hi) < p */
		while (i < lt) {
			double v = a[i];
			if (v > p) {
				a[i] = a[gt];
				a[gt++] = v;
				i++;
			} else if (v < p) {
				a[i] = a[--lt];
				a[lt] = v;
			} else {
				i++;
			}
		}
		if (k < gt)
			hi = gt;
		else if (k >= lt)
			lo = lt;
		else
			return p;
	}
	return a[lo];
}

/*
 * Step r->step, KV head h: how many of its selected rows are among the exact top
 * n_sel rows by the group-summed softmax weights over the visible prefix (ties to
 * the lower position, as the selection breaks them).
 */
static uint64_t recall_hits(struct replay *r, uint32_t h, uint32_t len, const uint32_t *sel,
			    uint32_t n_sel)
{
	const struct trace_meta *m = r->m;
	uint32_t d = m->d, g = m->g;
	double *mass = r->mass + (size_t)h * m->S, *z = r->tmp + (size_t)h * m->S;
	double inv = 1.0 / sqrt((double)d);
	uint64_t hits = 0;

	memset(mass, 0, len * sizeof(double));
	for (uint32_t qh = 0; qh < g; qh++) {
		const float *q = r->L->q + ((size_t)r->step * m->n_q + (size_t)h * g + qh) * d;
		double zmax = -INFINITY, den = 0.0;
		for (uint32_t j = 0; j < len; j++) {
			z[j] = dot(q, r->kf + ((size_t)j * m->n_kv + h) * d, d) * inv;
			zmax = z[j] > zmax ? z[j] : zmax;
		}
		for (uint32_t j = 0; j < len; j++) {
			z[j] = exp(z[j] - zmax);
			den += z[j];
		}
		for (uint32_t j = 0; j < len; j++)
			mass[j] += z[j] / den;
	}
	memcpy(z, mass, len * sizeof(double));
	double thr = kth_largest(z, len, n_sel - 1);
	uint32_t above = 0;
	for (uint32_t j = 0; j < len; j++)
		above += mass[j] > thr;
	uint32_t ties = n_sel - above, tie_rank = 0, s = 0;
	for (uint32_t j = 0; j < len && s < n_sel; j++) {
		bool top = mass[j] > thr || (mass[j] == thr && tie_rank++ < ties);
		if (sel[s] == j) {
			hits += top;
			s++;
		}
	}
	return hits;
}

struct recall_job {
	struct replay *r;
	uint32_t len;
};

static void recall_task(void *arg, uint32_t t, uint32_t n)
{
	struct recall_job *job = arg;
	struct replay *r = job->r;

	for (uint32_t h = t; h < r->m->n_kv; h += n) {
		const struct sparq_attend_item *it = &r->items[h];
		r->hits[h] = it->n_sel < job->len ? recall_hits(r, h, job->len, it->sel, it->n_sel) : 0;
	}
}

static int replay_setup(struct replay *r, struct sparq_backend *be,
			const struct trace_replay_config *cfg, char *err, size_t err_len)
{
	const struct trace_meta *m = r->m;
	struct sparq_resolved at_end;
	const char *why = NULL;
	size_t S = m->S, nkv = m->n_kv, d = m->d;
	int ret;

	/* k grows with S under a ratio: its value at the full length bounds every step's */
	ret = sparq_params_resolve(&cfg->params, m->d, m->g, m->S, &at_end, &why);
	if (ret) {
		say(err, err_len, "bad SparQ parameters for d = %u, S = %u: %s", m->d, m->S, why);
		return ret;
	}
	r->sel_cap = at_end.k < m->S ? at_end.k : m->S;
	r->streams = calloc(nkv, sizeof(*r->streams));
	r->items = calloc(nkv, sizeof(*r->items));
	r->ditems = calloc(nkv, sizeof(*r->ditems));
	r->y = malloc(m->n_q * d * sizeof(float));
	r->y_dense = malloc(m->n_q * d * sizeof(float));
	r->kbuf = malloc(FILL_ROWS * d * sizeof(uint16_t));
	r->vbuf = malloc(FILL_ROWS * d * sizeof(uint16_t));
	r->kf = malloc(S * nkv * d * sizeof(float));
	r->sel = malloc(nkv * r->sel_cap * sizeof(uint32_t));
	r->last = malloc(nkv * S * sizeof(int32_t));
	r->mass = malloc(nkv * S * sizeof(double));
	r->tmp = malloc(nkv * S * sizeof(double));
	r->hits = calloc(nkv, sizeof(uint64_t));
	if (!r->streams || !r->items || !r->ditems || !r->y || !r->y_dense || !r->kbuf ||
	    !r->vbuf || !r->kf || !r->sel || !r->last || !r->mass || !r->tmp || !r->hits) {
		say(err, err_len, "out of memory for a layer of %zu positions x %zu KV heads", S, nkv);
		return -ENOMEM;
	}
	for (size_t i = 0; i < S * nkv * d; i++)
		r->kf[i] = sparq_f16_to_f32(r->L->k[i]);
	for (size_t i = 0; i < nkv * S; i++)
		r->last[i] = -1;
	/* every record in one region, as sparqd's arenas are: a GPU backend maps it once */
	uint64_t rec = 2 * d * sizeof(uint16_t);
	uint64_t region = nkv * ((S + STORE_CHUNK - 1) / STORE_CHUNK) * STORE_CHUNK * rec;
	ret = sparq_store_heap_create_region(STORE_CHUNK, region, &r->st);
	if (ret) {
		r->st = NULL;
		say(err, err_len, "sparq_store_heap_create_region(%" PRIu64 " bytes): %s", region,
		    strerror(-ret));
		return ret;
	}
	for (uint32_t h = 0; h < m->n_kv; h++) {
		ret = sparq_stream_create(be, r->st, m->d, SPARQ_DTYPE_F16, &r->streams[h], &why);
		if (ret) {
			r->streams[h] = NULL;
			say(err, err_len, "KV head %u: sparq_stream_create: %s (errno %d)", h,
			    why ? why : "?", -ret);
			return ret;
		}
	}
	return 0;
}

static double rel_err_of(const float *y, const float *ref, size_t n)
{
	double num = 0.0, den = 0.0;

	for (size_t i = 0; i < n; i++) {
		double e = (double)y[i] - ref[i];
		num += e * e;
		den += (double)ref[i] * ref[i];
	}
	return den > 0.0 ? sqrt(num / den) : (num > 0.0 ? INFINITY : 0.0);
}

static int attend_timed(struct sparq_backend *be, struct sparq_attend_item *items, uint32_t n,
			uint64_t *ns, struct sparq_attend_stats *stats, const char *what,
			uint32_t layer, uint32_t step, uint32_t pos, char *err, size_t err_len)
{
	struct sparq_attend_batch b = {
		.items = items, .n = n, .mode = SPARQ_ATTEND_FULL, .bad_item = -1,
	};
	uint64_t t0 = bench_now_ns();
	int ret = sparq_backend_attend(be, &b);

	*ns = bench_now_ns() - t0;
	*stats = b.stats;
	if (ret)
		say(err, err_len, "layer %u, step %u (position %u): %s call failed: errno %d (%s), "
		    "KV head %d: %s", layer, step, pos, what, -ret, strerror(-ret), b.bad_item,
		    b.why ? b.why : "no reason given");
	return ret;
}

int trace_replay_layer(struct sparq_backend *be, const struct trace_meta *m,
		       const struct trace_layer *L, const struct trace_replay_config *cfg,
		       struct trace_layer_result *res, char *err, size_t err_len)
{
	struct replay r = { .m = m, .L = L };
	struct sparq_attend_stats st;
	const char *why = NULL;
	uint32_t nkv = m->n_kv, g = m->g, d = m->d;
	int ret;

	memset(res, 0, sizeof(*res));
	ret = replay_setup(&r, be, cfg, err, err_len);
	if (ret)
		goto out;
	res->steps = m->steps;
	res->n_kv = nkv;
	res->sel_cap = r.sel_cap;
	res->sparq_ns = calloc(m->steps, sizeof(uint64_t));
	res->dense_ns = calloc(m->steps, sizeof(uint64_t));
	res->rel_err = calloc(m->steps, sizeof(double));
	if (cfg->keep_sel) {
		res->sel = calloc((size_t)m->steps * nkv * r.sel_cap, sizeof(uint32_t));
		res->n_sel = calloc((size_t)m->steps * nkv, sizeof(uint32_t));
	}
	if (cfg->keep_y) {
		res->y = malloc((size_t)m->steps * m->n_q * d * sizeof(float));
		res->y_dense = malloc((size_t)m->steps * m->n_q * d * sizeof(float));
	}
	if (!res->sparq_ns || !res->dense_ns || !res->rel_err ||
	    (cfg->keep_sel && (!res->sel || !res->n_sel)) ||
	    (cfg->keep_y && (!res->y || !res->y_dense))) {
		say(err, err_len, "out of memory for %u steps of results", m->steps);
		ret = -ENOMEM;
		goto out;
	}
	/* dense: every visible row selected, the backend's exact path (alpha = 1) */
	struct sparq_params dense = { .r = 1, .k = m->S, .l = -1, .blend = SPARQ_BLEND_AUTO };
	for (uint32_t h = 0; h < nkv; h++) {
		r.items[h] = (struct sparq_attend_item){
			.stream = r.streams[h], .g = g, .params = cfg->params,
			.y = r.y + (size_t)h * g * d,
			.sel = r.sel + (size_t)h * r.sel_cap, .sel_cap = r.sel_cap,
		};
		r.ditems[h] = (struct sparq_attend_item){
			.stream = r.streams[h], .g = g, .params = dense,
			.y = r.y_dense + (size_t)h * g * d,
		};
	}

	ret = append_rows(&r, 0, m->q_pos[0], &why);
	for (uint32_t i = 0; i < m->steps && ret == 0; i++) {
		uint32_t pos = m->q_pos[i], len = pos + 1;

		ret = append_rows(&r, sparq_stream_len(r.streams[0]), len, &why);
		if (ret)
			break;
		for (uint32_t h = 0; h < nkv; h++)
			r.items[h].q = r.ditems[h].q = L->q + ((size_t)i * m->n_q + (size_t)h * g) * d;
		ret = attend_timed(be, r.items, nkv, &res->sparq_ns[i], &st, "SparQ", L->layer, i,
				   pos, err, err_len);
		if (ret)
			goto out;
		res->slice_bytes += st.slice_bytes;
		res->record_bytes += st.record_bytes;
		res->cache_rows += st.cache_rows;
		res->cache_hits += st.cache_hits;
		ret = attend_timed(be, r.ditems, nkv, &res->dense_ns[i], &st, "dense", L->layer, i,
				   pos, err, err_len);
		if (ret)
			goto out;
		res->dense_bytes += st.slice_bytes + st.record_bytes;
		res->rel_err[i] = rel_err_of(r.y, r.y_dense, (size_t)m->n_q * d);
		if (cfg->keep_y) {
			size_t n = (size_t)m->n_q * d;
			memcpy(res->y + i * n, r.y, n * sizeof(float));
			memcpy(res->y_dense + i * n, r.y_dense, n * sizeof(float));
		}

		/* recall against the exact top rows, KV heads on the threads */
		struct recall_job job = { .r = &r, .len = len };
		uint32_t nt = cfg->threads < nkv ? cfg->threads : nkv;
		r.step = i;
		ret = bench_parallel(nt ? nt : 1, recall_task, &job);
		if (ret) {
			say(err, err_len, "cannot start %u threads: errno %d", nt, -ret);
			goto out;
		}
		for (uint32_t h = 0; h < nkv; h++) {
			const struct sparq_attend_item *it = &r.items[h];
			int32_t *last = r.last + (size_t)h * m->S;

			if (it->n_sel < len) {
				res->recall_sum += (double)r.hits[h] / it->n_sel;
				res->recall_n++;
			}
			/* the row cache's view: a lookup per selected row from step 1 on */
			for (uint32_t s = 0; s < it->n_sel; s++) {
				uint32_t j = it->sel[s];
				if (i > 0) {
					bool prev = last[j] == (int32_t)i - 1;
					res->overlap_rows++;
					res->overlap_prev += prev;
					res->overlap_window += last[j] >= 0 &&
							       last[j] >= (int32_t)i - (int32_t)TRACE_OVERLAP_WINDOW;
					if ((uint64_t)j + it->used.l + 1 < len) {
						res->overlap_rows_scored++;
						res->overlap_prev_scored += prev;
					}
				}
				last[j] = (int32_t)i;
			}
			if (cfg->keep_sel) {
				memcpy(res->sel + ((size_t)i * nkv + h) * r.sel_cap, it->sel,
				       it->n_sel * sizeof(uint32_t));
				res->n_sel[(size_t)i * nkv + h] = it->n_sel;
			}
		}
		res->used = r.items[0].used;
	}
	if (ret)
		say(err, err_len, "layer %u: appending the trace's K/V rows failed: %s (errno %d)",
		    L->layer, why ? why : "no reason given", -ret);
out:
	replay_destroy(&r);
	if (ret)
		trace_layer_result_free(res);
	return ret;
}

/* ==== the command line ==== */

struct trace_opts {
	const char *dir;
	double ratio;
	uint32_t r, k;
	int32_t l;
	bool have_ratio, have_r, have_k, have_l;
	uint32_t *layers, n_layers;   /* NULL: every layer */
	const char *backend;
	uint32_t threads;             /* 0 = every online CPU */
	const char *csv;
	enum sparq_slice_format key_slices[2];  /* replayed in this order */
	uint32_t n_key_slices;
	struct sparq_params params;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: sparq-bench trace DIR [--ratio C | --r R --k K] [--l L] [--layers LIST]\n"
		"                             [--backend cpu|cuda] [--threads N] [--csv FILE]\n"
		"\n"
		"Replays a decode trace written by `tools/eval run --dump-traces DIR` (meta.json,\n"
		"layerLL_q.npy [steps][n_q][d] float32, layerLL_k/v.npy [S][n_kv][d] float16):\n"
		"per layer, one stream per KV head on the backend, the prefill appended in bulk,\n"
		"then every decode step's row appended and its query attended with SparQ and\n"
		"with dense attention (k >= S). Prints per layer and over all: step time p50/p90\n"
		"of both and their ratio, bytes read per step against dense and the memory floor\n"
		"(cpu), relative error of y against dense, top-k recall against the exact top\n"
		"rows (group-summed softmax), and the overlap of consecutive selections: the\n"
		"share of step t's rows also selected at step t-1 / within the last %u steps\n"
		"(the hit rate of a row cache holding them); the backend's own row-cache hits\n"
		"where it reports them (CUDA v2).\n"
		"\n"
		"  --ratio C            target transfer 1/C: r = d/C, k = max(128, S/(2C)) (default 8)\n"
		"  --r R --k K          explicit components and rows instead of --ratio\n"
		"  --l L                local window of recent positions (default k/4)\n"
		"  --layers LIST        layers to replay, e.g. 0,3,10-12 (default: all)\n"
		"  --backend cpu|cuda   backend (default cpu)\n"
		"  --key-slice native|int8|both\n"
		"                       key slices as stored, int8 with a scale per position, or\n"
		"                       both, replayed on the same trace with the agreement of\n"
		"                       their selections (default native; int8 rows: 'L-int8')\n"
		"  --threads N          backend threads, 0 = all online CPUs (default 0)\n"
		"  --csv FILE           append one row per layer and an 'all' row (header on a\n"
		"                       new file); columns:\n"
		"                       " TRACE_CSV_HEADER "\n"
		"  -h, --help           this text\n"
		"\n"
		"exit status: 0 success, 1 runtime failure, 2 usage error or a trace that does\n"
		"not validate (missing layer, inconsistent shapes, NaN/Inf)\n",
		TRACE_OVERLAP_WINDOW);
}

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

/* "0,3,10-12": ascending or not, no repeats, each < LAYERS_MAX. */
static int parse_layers(const char *val, struct trace_opts *o)
{
	const char *p = val;
	bool seen[LAYERS_MAX] = { false };

	free(o->layers);
	o->layers = malloc(LAYERS_MAX * sizeof(uint32_t));
	o->n_layers = 0;
	if (!o->layers)
		return usage_error("out of memory");
	do {
		char *end;
		unsigned long a, b;

		if (*p < '0' || *p > '9')
			return usage_error("--layers: expected a list like 0,3,10-12, got '%s'", val);
		a = strtoul(p, &end, 10);
		b = a;
		if (*end == '-') {
			p = end + 1;
			if (*p < '0' || *p > '9')
				return usage_error("--layers: bad range in '%s'", val);
			b = strtoul(p, &end, 10);
		}
		if (a > b || b >= LAYERS_MAX)
			return usage_error("--layers: bad range %lu-%lu (layers 0 .. %u)", a, b,
					   LAYERS_MAX - 1);
		for (unsigned long l = a; l <= b; l++) {
			if (seen[l])
				return usage_error("--layers: layer %lu is listed twice", l);
			seen[l] = true;
			o->layers[o->n_layers++] = (uint32_t)l;
		}
		p = end;
	} while (*p == ',' && ++p);
	if (*p)
		return usage_error("--layers: expected a list like 0,3,10-12, got '%s'", val);
	return 0;
}

static int parse_num(const char *name, const char *val, uint32_t lo, uint32_t hi, uint32_t *out)
{
	if (bench_parse_u32(val, lo, hi, out))
		return usage_error("%s: expected an integer in [%u, %u], got '%s'", name, lo, hi, val);
	return 0;
}

/* 0 to run, 1 after --help, -EINVAL after a usage error (already reported). */
static int parse_args(int argc, char **argv, struct trace_opts *o)
{
	uint32_t u;

	memset(o, 0, sizeof(*o));
	o->ratio = 8.0;
	o->backend = "cpu";
	o->l = -1;
	o->key_slices[0] = SPARQ_SLICE_NATIVE;
	o->n_key_slices = 1;
	for (int i = 0; i < argc; i++) {
		const char *arg = argv[i], *eq = strchr(arg, '='), *val = NULL;
		size_t len = eq ? (size_t)(eq - arg) : strlen(arg);
		int ret = 0;

#define IS(name) (len == strlen(name) && strncmp(arg, name, len) == 0)
		if (IS("-h") || IS("--help"))
			return 1;
		if (arg[0] != '-') {
			if (o->dir)
				return usage_error("unexpected argument '%s' (one trace directory)", arg);
			o->dir = arg;
			continue;
		}
		if (!(IS("--ratio") || IS("--r") || IS("--k") || IS("--l") || IS("--layers") ||
		      IS("--backend") || IS("--threads") || IS("--csv") || IS("--key-slice")))
			return usage_error("unknown option '%s'", arg);
		if (eq)
			val = eq + 1;
		else if (i + 1 < argc)
			val = argv[++i];
		else
			return usage_error("option %s needs a value", arg);
		if (IS("--ratio")) {
			char *end;
			errno = 0;
			o->ratio = strtod(val, &end);
			if (!val[0] || errno || *end || !isfinite(o->ratio) || o->ratio < 1.0 ||
			    o->ratio > 1e6)
				return usage_error("--ratio: expected a compression C in [1, 1e6], got '%s'",
						   val);
			o->have_ratio = true;
		} else if (IS("--r")) {
			ret = parse_num("--r", val, 1, SPARQ_HEAD_DIM_MAX, &o->r);
			o->have_r = true;
		} else if (IS("--k")) {
			ret = parse_num("--k", val, 1, SPARQ_POS_MAX, &o->k);
			o->have_k = true;
		} else if (IS("--l")) {
			ret = parse_num("--l", val, 0, SPARQ_POS_MAX, &u);
			o->l = (int32_t)u;
			o->have_l = true;
		} else if (IS("--layers")) {
			ret = parse_layers(val, o);
		} else if (IS("--backend")) {
			if (strcmp(val, "cpu") != 0 && strcmp(val, "cuda") != 0)
				return usage_error("--backend: expected cpu or cuda, got '%s'", val);
			o->backend = val;
		} else if (IS("--threads")) {
			ret = parse_num("--threads", val, 0, 1024, &o->threads);
		} else if (IS("--csv")) {
			if (!val[0])
				return usage_error("--csv: expected a file path, got ''");
			o->csv = val;
		} else if (IS("--key-slice")) {
			if (bench_parse_key_slices(val, o->key_slices, &o->n_key_slices))
				return usage_error("--key-slice: expected native, int8 or both, got '%s'",
						   val);
		}
#undef IS
		if (ret)
			return ret;
	}
	if (!o->dir)
		return usage_error("no trace directory given");
	if (o->have_ratio && (o->have_r || o->have_k))
		return usage_error("--ratio and --r/--k are alternatives: give one or the other");
	if (o->have_r != o->have_k)
		return usage_error("--r and --k go together (or use --ratio)");
	o->params = (struct sparq_params){ .l = o->l, .blend = SPARQ_BLEND_AUTO };
	if (o->have_r) {
		o->params.r = o->r;
		o->params.k = o->k;
	} else {
		o->params.ratio = (float)o->ratio;
	}
	return 0;
}

/* Figures of one row of the table (a layer, or all of them). */
struct trace_row {
	char name[24];
	uint32_t steps, r, k;
	double sq_p50, sq_p90, dn_p50, dn_p90, speedup;
	double sq_bytes, dn_bytes, byte_ratio, floor_ms, x_floor;
	double err_mean, err_max, recall, ovl_prev, ovl_win, ovl_scored, cache_hit;
	bool has_recall, has_overlap, has_cache;
};

/* Sums over layers for the 'all' row. */
struct trace_total {
	uint64_t *sq_ns, *dn_ns;   /* [layers × steps] */
	uint32_t n;
	double err_sum, err_max, recall_sum;
	uint64_t recall_n, ovl_rows, ovl_prev, ovl_win, sc_rows, sc_prev, cache_rows, cache_hits;
	uint64_t sq_bytes, dn_bytes;
};

static double ratio_of(double a, double b)
{
	return b > 0.0 && isfinite(a) && isfinite(b) ? a / b : 0.0;
}

static void row_fill(struct trace_row *w, uint64_t *sq, uint64_t *dn, uint32_t n, double err_sum,
		     double err_max, double recall_sum, uint64_t recall_n, uint64_t rows,
		     uint64_t prev, uint64_t win, uint64_t sc_rows, uint64_t sc_prev,
		     uint64_t c_rows, uint64_t c_hits, uint64_t sq_b, uint64_t dn_b, double read_gbs)
{
	w->sq_p50 = bench_median(sq, n) / 1e6;
	w->sq_p90 = bench_percentile(sq, n, 90.0) / 1e6;
	w->dn_p50 = bench_median(dn, n) / 1e6;
	w->dn_p90 = bench_percentile(dn, n, 90.0) / 1e6;
	w->speedup = ratio_of(w->dn_p50, w->sq_p50);
	w->sq_bytes = (double)sq_b / n;
	w->dn_bytes = (double)dn_b / n;
	w->byte_ratio = ratio_of(w->sq_bytes, w->dn_bytes);
	/* bytes / (GB/s) = ns; / 1e6 = ms */
	w->floor_ms = read_gbs > 0 ? w->sq_bytes / read_gbs / 1e6 : 0.0;
	w->x_floor = ratio_of(w->sq_p50, w->floor_ms);
	w->err_mean = err_sum / n;
	w->err_max = err_max;
	w->has_recall = recall_n > 0;
	w->recall = w->has_recall ? recall_sum / (double)recall_n : 0.0;
	w->has_overlap = rows > 0;
	w->ovl_prev = w->has_overlap ? (double)prev / (double)rows : 0.0;
	w->ovl_win = w->has_overlap ? (double)win / (double)rows : 0.0;
	w->ovl_scored = sc_rows ? (double)sc_prev / (double)sc_rows : 0.0;
	w->has_cache = c_rows > 0;
	w->cache_hit = w->has_cache ? (double)c_hits / (double)c_rows : 0.0;
}

static void print_header(FILE *f)
{
	fprintf(f, "%-8s %5s %4s %6s | %9s %9s | %9s %9s | %7s | %10s %10s %6s | %8s %8s | %6s | "
		"%7s %7s | %5s\n", "layer", "steps", "r", "k", "SparQ p50", "p90", "dense p50", "p90",
		"speedup", "B/step", "dense B", "ratio", "err mean", "err max", "recall", "ovl t-1",
		"ovl <=4", "cache");
}

static void print_row(FILE *f, const struct trace_row *w)
{
	char rec[16] = "-", o1[16] = "-", o4[16] = "-", ch[16] = "-";

	if (w->has_recall)
		snprintf(rec, sizeof(rec), "%.3f", w->recall);
	if (w->has_overlap) {
		snprintf(o1, sizeof(o1), "%.3f", w->ovl_prev);
		snprintf(o4, sizeof(o4), "%.3f", w->ovl_win);
	}
	if (w->has_cache)
		snprintf(ch, sizeof(ch), "%.3f", w->cache_hit);
	fprintf(f, "%-8s %5u %4u %6u | %9.4f %9.4f | %9.4f %9.4f | %6.2fx | %10.0f %10.0f %6.3f | "
		"%8.4f %8.4f | %6s | %7s %7s | %5s\n", w->name, w->steps, w->r, w->k, w->sq_p50,
		w->sq_p90, w->dn_p50, w->dn_p90, w->speedup, w->sq_bytes, w->dn_bytes, w->byte_ratio,
		w->err_mean, w->err_max, rec, o1, o4, ch);
}

static void csv_row(struct bench_csv *c, const struct trace_opts *o, const struct trace_meta *m,
		    const struct trace_row *w)
{
	bench_csv_str(c, o->backend);
	bench_csv_str(c, o->dir);
	bench_csv_str(c, w->name);
	bench_csv_u64(c, w->steps);
	bench_csv_u64(c, m->S);
	bench_csv_u64(c, w->r);
	bench_csv_u64(c, w->k);
	bench_csv_num(c, true, w->sq_p50);
	bench_csv_num(c, true, w->sq_p90);
	bench_csv_num(c, true, w->dn_p50);
	bench_csv_num(c, true, w->dn_p90);
	bench_csv_num(c, w->speedup > 0, w->speedup);
	bench_csv_num(c, true, w->sq_bytes);
	bench_csv_num(c, true, w->dn_bytes);
	bench_csv_num(c, w->byte_ratio > 0, w->byte_ratio);
	bench_csv_num(c, w->floor_ms > 0, w->floor_ms);
	bench_csv_num(c, w->x_floor > 0, w->x_floor);
	bench_csv_num(c, true, w->err_mean);
	bench_csv_num(c, true, w->err_max);
	bench_csv_num(c, w->has_recall, w->recall);
	bench_csv_num(c, w->has_overlap, w->ovl_prev);
	bench_csv_num(c, w->has_overlap, w->ovl_win);
	bench_csv_num(c, w->has_overlap, w->ovl_scored);
	bench_csv_num(c, w->has_cache, w->cache_hit);
	bench_csv_end_row(c);
}

/* Loads every selected layer once, so a bad value anywhere stops the run before work. */
static int validate_data(const struct trace_opts *o, const struct trace_meta *m, char *err,
			 size_t err_len)
{
	uint32_t n = o->layers ? o->n_layers : m->n_layers;

	for (uint32_t i = 0; i < n; i++) {
		struct trace_layer L;
		int ret = trace_layer_load(o->dir, m, o->layers ? o->layers[i] : i, &L, err, err_len);
		if (ret)
			return ret;
		trace_layer_free(&L);
	}
	return 0;
}

/* Row names: the layer, with "-int8" for the int8 slice's rows. */
static void row_name(char *buf, size_t n, const char *base, enum sparq_slice_format f)
{
	snprintf(buf, n, "%s%s%s", base, f == SPARQ_SLICE_NATIVE ? "" : "-",
		 f == SPARQ_SLICE_NATIVE ? "" : sparq_slice_format_name(f));
}

/* Layer li's result into the totals (the per-step times at their place). */
static void total_add(struct trace_total *t, const struct trace_layer_result *res, uint32_t li,
		      uint32_t steps, double err_sum, double err_max)
{
	memcpy(t->sq_ns + (size_t)li * steps, res->sparq_ns, steps * sizeof(uint64_t));
	memcpy(t->dn_ns + (size_t)li * steps, res->dense_ns, steps * sizeof(uint64_t));
	t->n += steps;
	t->err_sum += err_sum;
	t->err_max = err_max > t->err_max ? err_max : t->err_max;
	t->recall_sum += res->recall_sum;
	t->recall_n += res->recall_n;
	t->ovl_rows += res->overlap_rows;
	t->ovl_prev += res->overlap_prev;
	t->ovl_win += res->overlap_window;
	t->sc_rows += res->overlap_rows_scored;
	t->sc_prev += res->overlap_prev_scored;
	t->cache_rows += res->cache_rows;
	t->cache_hits += res->cache_hits;
	t->sq_bytes += res->slice_bytes + res->record_bytes;
	t->dn_bytes += res->dense_bytes;
}

/* Selections of the two formats, step by step: rows in both, of the native ones. */
struct agreement {
	uint64_t both, rows;             /* all selected rows */
	uint64_t both_scored, scored;    /* those outside the local window */
};

static void agreement_add(struct agreement *a, const struct trace_meta *m,
			  const struct trace_layer_result *nat, const struct trace_layer_result *i8)
{
	for (uint32_t i = 0; i < m->steps; i++) {
		uint32_t len = m->q_pos[i] + 1, l = nat->used.l;

		for (uint32_t h = 0; h < m->n_kv; h++) {
			size_t at = (size_t)i * m->n_kv + h;
			const uint32_t *x = nat->sel + at * nat->sel_cap, *y = i8->sel + at * i8->sel_cap;
			uint32_t nx = nat->n_sel[at], ny = i8->n_sel[at];

			/* both ascending: one merge pass */
			for (uint32_t p = 0, q = 0; p < nx; p++) {
				while (q < ny && y[q] < x[p])
					q++;
				bool in = q < ny && y[q] == x[p];
				bool scored = (uint64_t)x[p] + l + 1 < len;
				a->both += in;
				a->rows++;
				a->both_scored += in && scored;
				a->scored += scored;
			}
		}
	}
}

static void print_summary(const struct trace_opts *o, const struct trace_meta *m,
			  enum sparq_slice_format f, const struct trace_total *tot,
			  const struct trace_row *all, const struct sparq_resolved *res_end,
			  const struct bench_bw *bw, uint32_t n_layers)
{
	double dn_floor = bw->read_gbs > 0 ? all->dn_bytes / bw->read_gbs / 1e6 : 0.0;

	printf("\nall %u layers x %u steps, key slice %s (times in ms per layer step, r and k at "
	       "S = %u):\n", n_layers, m->steps, sparq_slice_format_name(f), m->S);
	if (bw->read_gbs > 0) {
		printf("  SparQ step  p50 %.4f  p90 %.4f   memory floor %.5f (%.0f B / %.1f GB/s "
		       "read): %.1fx floor\n", all->sq_p50, all->sq_p90, all->floor_ms, all->sq_bytes,
		       bw->read_gbs, all->x_floor);
		printf("  dense step  p50 %.4f  p90 %.4f   memory floor %.5f (%.0f B): %.1fx floor\n",
		       all->dn_p50, all->dn_p90, dn_floor, all->dn_bytes,
		       ratio_of(all->dn_p50, dn_floor));
	} else {
		printf("  SparQ step  p50 %.4f  p90 %.4f (%.0f B read)\n", all->sq_p50, all->sq_p90,
		       all->sq_bytes);
		printf("  dense step  p50 %.4f  p90 %.4f (%.0f B read); GPU floors: sparq-bench gpu\n",
		       all->dn_p50, all->dn_p90, all->dn_bytes);
	}
	printf("  SparQ vs dense: %.2fx faster; bytes per step %.3f of dense (formula at S: %.3f)\n",
	       all->speedup, all->byte_ratio,
	       ratio_of(sparq_transfer_sparq(m->S, m->d, res_end->r, res_end->k),
			sparq_transfer_dense(m->S, m->d)));
	printf("  relative error of y vs dense: mean %.4f, max %.4f\n", all->err_mean, all->err_max);
	if (all->has_recall)
		printf("  top-k recall vs the exact top rows (group-summed softmax): %.4f over %" PRIu64
		       " (step, KV head) pairs\n", all->recall, tot->recall_n);
	else
		printf("  top-k recall: every step selected every visible row (k >= S)\n");
	if (all->has_overlap)
		printf("  selection overlap (row-cache hit rate): %.4f of the rows selected at step t "
		       "were selected at t-1, %.4f within the last %u steps (%" PRIu64 " lookups)\n",
		       all->ovl_prev, all->ovl_win, TRACE_OVERLAP_WINDOW, tot->ovl_rows);
	if (tot->sc_rows)
		printf("  of the rows scoring chose (outside the local window of l + 1): %.4f "
		       "selected at t-1 too\n", all->ovl_scored);
	if (all->has_cache)
		printf("  backend row cache: %" PRIu64 " of %" PRIu64 " rows hit (%.4f)\n",
		       tot->cache_hits, tot->cache_rows, all->cache_hit);
	else
		printf("  backend row cache: not reported by the %s backend\n", o->backend);
}

static int run(const struct trace_opts *o)
{
	struct trace_meta m = { 0 };
	struct trace_total tot[2];
	struct sparq_backend *be[2] = { NULL, NULL };
	struct bench_csv csv = { 0 };
	struct bench_bw bw = { 0 };
	struct sparq_resolved res_end;
	struct agreement agree = { 0 };
	char err[ERR_LEN] = "";
	const char *why = NULL;
	uint32_t threads = o->threads ? o->threads : bench_online_cpus();
	uint32_t n_layers, nf = o->n_key_slices;
	uint64_t t_start = bench_now_ns();
	int ret, status = EXIT_RUNTIME;

	memset(tot, 0, sizeof(tot));
	fprintf(stderr, PROG ": validating %s...\n", o->dir);
	ret = trace_open(o->dir, o->layers, o->n_layers, &m, err, sizeof(err));
	if (ret == 0)
		ret = validate_data(o, &m, err, sizeof(err));
	if (ret) {
		fprintf(stderr, PROG ": %s\n", err);
		status = ret == -ENOMEM || ret == -EIO ? EXIT_RUNTIME : EXIT_USAGE;
		goto out;
	}
	if (sparq_params_resolve(&o->params, m.d, m.g, m.S, &res_end, &why)) {
		usage_error("bad SparQ parameters for this trace (d = %u, S = %u): %s", m.d, m.S, why);
		status = EXIT_USAGE;
		goto out;
	}
	n_layers = o->layers ? o->n_layers : m.n_layers;
	if (o->csv && bench_csv_open(&csv, o->csv, TRACE_CSV_HEADER, PROG))
		goto out;

	for (uint32_t f = 0; f < nf; f++) {
		struct sparq_backend_config cfg = { .n_threads = threads,
						    .key_slice = o->key_slices[f] };
		ret = sparq_backend_open(o->backend, &cfg, &be[f]);
		if (ret) {
			be[f] = NULL;
			fprintf(stderr, PROG ": cannot open backend '%s' (key slice %s): errno %d "
				"(%s)\n", o->backend, sparq_slice_format_name(o->key_slices[f]), -ret,
				strerror(-ret));
			goto out;
		}
	}
	/* the CPU backend's floor is this machine's memory; a GPU's is not (sparq-bench gpu) */
	if (strcmp(o->backend, "cpu") == 0) {
		fprintf(stderr, PROG ": measuring memory bandwidth (%u threads, 2 x %zu MiB)...\n",
			threads, BW_BYTES >> 20);
		ret = bench_mem_bw(threads, BW_BYTES, BW_REPS, &bw);
		if (ret) {
			fprintf(stderr, PROG ": memory bandwidth measurement failed: errno %d (%s)\n",
				-ret, strerror(-ret));
			goto out;
		}
	}
	for (uint32_t f = 0; f < nf; f++) {
		tot[f].sq_ns = malloc((size_t)n_layers * m.steps * sizeof(uint64_t));
		tot[f].dn_ns = malloc((size_t)n_layers * m.steps * sizeof(uint64_t));
		if (!tot[f].sq_ns || !tot[f].dn_ns) {
			fprintf(stderr, PROG ": out of memory for %u x %u samples\n", n_layers, m.steps);
			goto out;
		}
	}

	printf("trace %s: %u layers (replaying %u), %u q heads on %u KV heads (g = %u), d = %u, "
	       "S = %u, %u decode steps at positions %u .. %u\n", o->dir, m.n_layers, n_layers,
	       m.n_q, m.n_kv, m.g, m.d, m.S, m.steps, m.q_pos[0], m.q_pos[m.steps - 1]);
	printf("backend %s, %u threads; SparQ %s: r = %u, k = %u at S = %u (l = %u, blend %s); "
	       "dense = the backend's exact path (k >= S)\n", o->backend, threads,
	       o->params.ratio > 0 ? "ratio" : "explicit", res_end.r, res_end.k, m.S, res_end.l,
	       res_end.blend ? "on" : "off");
	printf("key slice %s%s (%u B per position and KV head; native %u B)\n",
	       sparq_slice_format_name(o->key_slices[0]), nf == 2 ? " and int8, same trace" : "",
	       sparq_slice_position_bytes(o->key_slices[nf - 1], m.d, SPARQ_DTYPE_F16),
	       sparq_slice_position_bytes(SPARQ_SLICE_NATIVE, m.d, SPARQ_DTYPE_F16));
	printf("times: one batched call over the layer's %u KV heads per step; bytes: the "
	       "backend's slice + record bytes per call\n\n", m.n_kv);
	print_header(stdout);

	for (uint32_t li = 0; li < n_layers; li++) {
		uint32_t layer = o->layers ? o->layers[li] : li;
		struct trace_replay_config rc = { .params = o->params, .threads = threads,
						  .keep_sel = nf == 2 };
		struct trace_layer_result res[2];
		struct trace_layer L;
		char base[12];

		memset(res, 0, sizeof(res));
		ret = trace_layer_load(o->dir, &m, layer, &L, err, sizeof(err));
		if (ret == 0) {
			/* a failed replay frees its own result (the other's is freed here) */
			for (uint32_t f = 0; f < nf && ret == 0; f++)
				ret = trace_replay_layer(be[f], &m, &L, &rc, &res[f], err, sizeof(err));
			trace_layer_free(&L);
		}
		if (ret) {
			fprintf(stderr, PROG ": %s\n", err);
			trace_layer_result_free(&res[0]);
			goto out;
		}
		snprintf(base, sizeof(base), "%u", layer);
		for (uint32_t f = 0; f < nf; f++) {
			struct trace_row w = { 0 };
			double err_sum = 0.0, err_max = 0.0;

			for (uint32_t i = 0; i < m.steps; i++) {
				err_sum += res[f].rel_err[i];
				err_max = res[f].rel_err[i] > err_max ? res[f].rel_err[i] : err_max;
			}
			total_add(&tot[f], &res[f], li, m.steps, err_sum, err_max);
			row_name(w.name, sizeof(w.name), base, o->key_slices[f]);
			w.steps = m.steps;
			w.r = res[f].used.r;
			w.k = res[f].used.k;
			row_fill(&w, res[f].sparq_ns, res[f].dense_ns, m.steps, err_sum, err_max,
				 res[f].recall_sum, res[f].recall_n, res[f].overlap_rows,
				 res[f].overlap_prev, res[f].overlap_window, res[f].overlap_rows_scored,
				 res[f].overlap_prev_scored, res[f].cache_rows, res[f].cache_hits,
				 res[f].slice_bytes + res[f].record_bytes, res[f].dense_bytes,
				 bw.read_gbs);
			print_row(stdout, &w);
			if (o->csv)
				csv_row(&csv, o, &m, &w);
		}
		fflush(stdout);
		if (nf == 2)
			agreement_add(&agree, &m, &res[0], &res[1]);
		for (uint32_t f = 0; f < nf; f++)
			trace_layer_result_free(&res[f]);
	}

	struct trace_row all[2];
	for (uint32_t f = 0; f < nf; f++) {
		all[f] = (struct trace_row){ .steps = m.steps, .r = res_end.r, .k = res_end.k };
		row_name(all[f].name, sizeof(all[f].name), "all", o->key_slices[f]);
		row_fill(&all[f], tot[f].sq_ns, tot[f].dn_ns, tot[f].n, tot[f].err_sum,
			 tot[f].err_max, tot[f].recall_sum, tot[f].recall_n, tot[f].ovl_rows,
			 tot[f].ovl_prev, tot[f].ovl_win, tot[f].sc_rows, tot[f].sc_prev,
			 tot[f].cache_rows, tot[f].cache_hits, tot[f].sq_bytes, tot[f].dn_bytes,
			 bw.read_gbs);
		print_row(stdout, &all[f]);
		if (o->csv)
			csv_row(&csv, o, &m, &all[f]);
	}
	for (uint32_t f = 0; f < nf; f++)
		print_summary(o, &m, o->key_slices[f], &tot[f], &all[f], &res_end, &bw, n_layers);
	if (nf == 2) {
		printf("\nkey slice int8 vs native on the same trace:\n");
		printf("  selection agreement: %.4f of the native rows selected by int8 too (%" PRIu64
		       " rows); of the rows scoring chose (outside the local window): %.4f (%" PRIu64
		       ")\n", ratio_of((double)agree.both, (double)agree.rows), agree.rows,
		       ratio_of((double)agree.both_scored, (double)agree.scored), agree.scored);
		printf("  relative error of y vs dense: int8 mean %.4f (native %.4f); top-k recall "
		       "int8 %.4f (native %.4f)\n", all[1].err_mean, all[0].err_mean, all[1].recall,
		       all[0].recall);
		printf("  key slice bytes per position and KV head: int8 %u, native %u (%.3f)\n",
		       sparq_slice_position_bytes(SPARQ_SLICE_INT8, m.d, SPARQ_DTYPE_F16),
		       sparq_slice_position_bytes(SPARQ_SLICE_NATIVE, m.d, SPARQ_DTYPE_F16),
		       ratio_of(sparq_slice_position_bytes(SPARQ_SLICE_INT8, m.d, SPARQ_DTYPE_F16),
				sparq_slice_position_bytes(SPARQ_SLICE_NATIVE, m.d,
							   SPARQ_DTYPE_F16)));
	}
	fflush(stdout);
	fprintf(stderr, PROG ": done in %.1f s\n", (double)(bench_now_ns() - t_start) / 1e9);
	status = 0;
out:
	if (bench_csv_close(&csv) && status == 0)
		status = EXIT_RUNTIME;
	for (uint32_t f = 0; f < 2; f++) {
		free(tot[f].sq_ns);
		free(tot[f].dn_ns);
		if (be[f])
			sparq_backend_close(be[f]);
	}
	trace_meta_free(&m);
	return status;
}

int bench_trace_main(int argc, char **argv)
{
	struct trace_opts o;
	int ret = parse_args(argc, argv, &o);

	if (ret == 1) {
		usage(stdout);
		free(o.layers);
		return 0;
	}
	if (ret) {
		free(o.layers);
		return EXIT_USAGE;
	}
	ret = run(&o);
	free(o.layers);
	return ret;
}
