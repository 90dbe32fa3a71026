/*
 * sparq-stress — drives a sparqd hard and checks every answer (what redis-benchmark is
 * to redis, plus an oracle).
 *
 * Many client threads, each with its own connection and sessions, run a random mix of
 * decode appends, attends and gathers, and now and then churn: the client hangs up
 * (the daemon parks its persistent sessions and closes them), reconnects, resumes each
 * session (from NVMe or into RAM) and drops the parked copy. The daemon is started
 * here with a small --ram-bytes by default, so the sessions overflow host RAM into
 * the NVMe tier and the run crosses demotion, promotion, park and resume.
 *
 * Oracle: every K/V record is a pure function of (seed, session, layer, head,
 * position), so a gathered row is checked against its regeneration; every attend is
 * recomputed in-process by the SparQ core over a mirror of the session (heap store,
 * the daemon's backend with the daemon's thread count, the same per-KV-head batch the
 * daemon builds) and y and alpha must match bit for bit. The daemon's CPU backend is
 * deterministic for a given batch (each item is computed by one thread in a fixed
 * order), so no tolerance is needed; a CUDA daemon is checked against an in-process
 * CUDA backend the same way.
 *
 * Fault mode (--kill-ms): a victim process (this binary, --victim) connects, creates
 * a session and appends and attends until it is SIGKILLed at a random moment; its
 * session must vanish from the daemon.
 *
 * NVMe fault mode (--nvme-faults AFTER:COUNT): the daemon started here is given its
 * test-only switch (--allow-fault-injection --nvme-fault eio:reads:...), so after
 * AFTER good NVMe requests the next COUNT reads fail with EIO. Reads only: a failed
 * read must surface as -EIO to the client whose request needed it and change nothing,
 * so the request is counted as a client-visible fault and the client carries on (a
 * failed append or resume is retried as it stands: nothing of it was acknowledged);
 * every later answer is still verified bit for bit, the daemon must keep serving, and
 * the daemon reports at exit how many NVMe requests failed.
 *
 * Exit status: 0 clean; 1 any mismatch, lost session or token, request error, leaked
 * victim session or daemon crash; 2 bad usage; 3 the daemon could not be started or
 * reached. Results: a table on stdout, one JSON object (--json FILE) and a CSV
 * timeline next to it (--csv FILE, default the JSON path with .csv) that tools/plot
 * turns into throughput and latency over time per tier.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "backend.h"
#include "bench_util.h"
#include "half.h"
#include "libsparq.h"
#include "sparq.h"
#include "sparqd_spawn.h"
#include "store.h"
#include "stream.h"

#define TOOL "sparq-stress"
#define MAX_SESSIONS 64u
#define PREFILL_PIECE 512u
#define GATHER_MAX 256u

enum op { OP_APPEND, OP_ATTEND, OP_GATHER, OP_PARK, OP_RESUME, OP_COUNT };
static const char *const op_names[OP_COUNT] = { "append", "attend", "gather", "park", "resume" };
enum tier { TIER_RAM, TIER_NVME, TIER_COUNT };
static const char *const tier_names[TIER_COUNT] = { "ram", "nvme" };

struct cfg {
	const char *socket;            /* NULL: spawn a daemon */
	uint32_t clients, sessions, context;
	uint32_t layers, q_heads, kv_heads, head_dim;
	uint32_t r, k, l;
	double duration_s;
	uint64_t max_ops;
	uint32_t w_append, w_attend, w_gather; /* mix weights */
	double churn_s;                /* mean seconds between a client's churns; 0 = none */
	uint32_t kill_ms;              /* fault mode: victim lifetime bound; 0 = off */
	uint32_t fault_after, fault_count; /* --nvme-faults; count 0 = off */
	uint64_t seed;
	const char *ram_bytes, *nvme_bytes;
	uint32_t threads;              /* daemon backend threads (spawned) */
	const char *json, *csv;
	double interval_s;             /* CSV timeline resolution */
	bool inject;                   /* --inject-mismatch: prove the oracle bites */
};

struct sample {
	uint64_t t_ns;                 /* since the run started */
	uint32_t lat_ns_lo;            /* latencies above 4.29 s saturate */
	uint8_t op, tier;
};

struct session {
	uint64_t id;
	uint32_t idx;                  /* global index: the seed's session coordinate */
	uint32_t len;                  /* positions per stream, as the mirror holds them */
	struct sparq_stream **mirror;  /* [layers][kv_heads] */
	_Atomic int on_nvme;           /* the monitor saw records of it served from NVMe */
};

struct client {
	struct run *run;
	uint32_t index;
	pthread_t thread;
	struct sparq_client *c;
	struct sparq_backend *be;
	struct sparq_store *st;
	struct session ses[MAX_SESSIONS];
	struct bench_rng rng;
	struct sample *log;
	size_t n_log, cap_log;
	uint64_t mismatches, errors, lost;
	uint64_t faults[OP_COUNT];     /* requests that failed with the injected -EIO */
	char first_problem[256];
};

struct use_sample {
	uint64_t t_ns, ram_used, nvme_used;
};

struct run {
	struct cfg cfg;
	char backend[16];
	uint32_t daemon_threads;
	uint64_t t0;
	_Atomic bool stop;
	_Atomic uint64_t ops_done;
	_Atomic bool injected_attend, injected_gather;
	struct client *clients;
	pthread_mutex_t mu;            /* the use timeline and the session table below */
	struct use_sample *use;
	size_t n_use, cap_use;
	struct session *all[1024];     /* every stress session, for the monitor */
	uint32_t n_all;
	uint64_t kills, victim_leaks, victim_failed;
	uint64_t faults[OP_COUNT], faults_total; /* client-visible -EIO, all clients */
	bool daemon_gone;
	pid_t daemon_pid;              /* spawned here; 0 when external */
};

/* ---- the seeded data ---- */

static uint64_t mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* Channel i of the K (kind 0) or V (kind 1) row at pos: deterministic, finite. */
static uint16_t record_value(uint64_t seed, uint32_t sess, uint32_t layer, uint32_t head,
			     uint32_t pos, uint32_t i, unsigned kind)
{
	uint64_t h = mix64(seed ^ mix64(((uint64_t)sess << 40) ^ ((uint64_t)layer << 28) ^
					((uint64_t)head << 20) ^ kind));
	uint64_t x = mix64(h ^ ((uint64_t)pos << 12) ^ i);
	/* keys with per-channel scales, as real keys have; values plain */
	float u = (float)(x >> 40) / (float)(1u << 24) * 2.0f - 1.0f;
	float scale = kind == 0 ? 0.25f + (float)((i * 37u + head * 11u) % 16u) / 8.0f : 1.0f;

	return sparq_f32_to_f16(u * scale);
}

/* [n][kv_heads][head_dim] K and V of one layer from position pos on. */
static void make_kv(const struct cfg *cf, uint32_t sess, uint32_t layer, uint32_t pos,
		    uint32_t n, uint16_t *k, uint16_t *v)
{
	for (uint32_t t = 0; t < n; t++)
		for (uint32_t h = 0; h < cf->kv_heads; h++)
			for (uint32_t i = 0; i < cf->head_dim; i++) {
				size_t at = ((size_t)t * cf->kv_heads + h) * cf->head_dim + i;
				k[at] = record_value(cf->seed, sess, layer, h, pos + t, i, 0);
				v[at] = record_value(cf->seed, sess, layer, h, pos + t, i, 1);
			}
}

/* ---- bookkeeping ---- */

static void problem(struct client *cl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void problem(struct client *cl, const char *fmt, ...)
{
	va_list ap;

	if (cl->first_problem[0])
		return;
	va_start(ap, fmt);
	vsnprintf(cl->first_problem, sizeof(cl->first_problem), fmt, ap);
	va_end(ap);
	fprintf(stderr, TOOL ": client %u: %s\n", cl->index, cl->first_problem);
}

static void record(struct client *cl, enum op op, const struct session *s, uint64_t t_start,
		   uint64_t lat)
{
	if (cl->n_log == cl->cap_log) {
		size_t cap = cl->cap_log ? cl->cap_log * 2 : 4096;
		struct sample *p = realloc(cl->log, cap * sizeof(*p));

		if (!p)
			return;   /* a lost sample costs a statistic, not the run */
		cl->log = p;
		cl->cap_log = cap;
	}
	cl->log[cl->n_log++] = (struct sample){
		.t_ns = t_start - cl->run->t0, .lat_ns_lo = lat > UINT32_MAX ? UINT32_MAX : (uint32_t)lat,
		.op = (uint8_t)op,
		/* no session: a churn's park of them all, which writes to NVMe */
		.tier = (uint8_t)(!s || atomic_load(&s->on_nvme) ? TIER_NVME : TIER_RAM) };
	atomic_fetch_add(&cl->run->ops_done, 1);
}

/*
 * In NVMe fault mode, an -EIO is what an injected read failure must look like to the
 * client: counted, not a problem. Anything else (and any error without faults) is one.
 */
static bool fault_seen(struct client *cl, enum op op, int ret)
{
	if (!cl->run->cfg.fault_count || ret != -EIO)
		return false;
	cl->faults[op]++;
	return true;
}

/* Retries of one request that keeps meeting injected faults: COUNT bounds them all. */
#define FAULT_RETRIES 100000u

/* A daemon error on an operation that must succeed. */
static void op_failed(struct client *cl, const char *what, const struct session *s, int ret)
{
	if (ret == -ENOENT)
		cl->lost++;
	else
		cl->errors++;
	if (ret == -EPIPE)
		cl->run->daemon_gone = true;
	problem(cl, "%s of session %" PRIu64 ": %s (%s)", what, s ? s->id : 0, strerror(-ret),
		sparq_client_error(cl->c));
}

/* ---- the operations ---- */

static int mirror_append(struct client *cl, struct session *s, uint32_t layer, uint32_t n,
			 const uint16_t *k, const uint16_t *v)
{
	const struct cfg *cf = &cl->run->cfg;
	size_t row = cf->head_dim;
	uint16_t *hk = malloc((size_t)n * row * 2), *hv = malloc((size_t)n * row * 2);
	const char *why = "";
	int ret = hk && hv ? 0 : -ENOMEM;

	for (uint32_t h = 0; !ret && h < cf->kv_heads; h++) {
		for (uint32_t t = 0; t < n; t++) {
			memcpy(hk + t * row, k + ((size_t)t * cf->kv_heads + h) * row, row * 2);
			memcpy(hv + t * row, v + ((size_t)t * cf->kv_heads + h) * row, row * 2);
		}
		ret = sparq_stream_append(s->mirror[layer * cf->kv_heads + h], n, hk, hv, &why);
	}
	if (ret)
		problem(cl, "in-process append: %s (%s)", strerror(-ret), why);
	free(hk);
	free(hv);
	return ret;
}

/* n positions of every layer, to the daemon and the mirror. */
static int do_append(struct client *cl, struct session *s, uint32_t n, bool timed)
{
	const struct cfg *cf = &cl->run->cfg;
	size_t sz = (size_t)n * cf->kv_heads * cf->head_dim;
	uint16_t *k = malloc(sz * 2), *v = malloc(sz * 2);
	int ret = k && v ? 0 : -ENOMEM;

	for (uint32_t l = 0; !ret && l < cf->layers; l++) {
		make_kv(cf, s->idx, l, s->len, n, k, v);
		uint64_t t = bench_now_ns();
		ret = sparq_append(cl->c, s->id, l, n, k, v);
		/* a failed append stored nothing: the same positions again */
		for (uint32_t i = 0; ret && i < FAULT_RETRIES && fault_seen(cl, OP_APPEND, ret); i++)
			ret = sparq_append(cl->c, s->id, l, n, k, v);
		uint64_t lat = bench_now_ns() - t;
		if (ret) {
			op_failed(cl, "append", s, ret);
			break;
		}
		if (timed)
			record(cl, OP_APPEND, s, t, lat);
		ret = mirror_append(cl, s, l, n, k, v);
	}
	if (!ret)
		s->len += n;
	free(k);
	free(v);
	return ret;
}

static int do_attend(struct client *cl, struct session *s)
{
	const struct cfg *cf = &cl->run->cfg;
	uint32_t g = cf->q_heads / cf->kv_heads, d = cf->head_dim;
	uint32_t layer = (uint32_t)(bench_rng_next(&cl->rng) % cf->layers);
	size_t nq = (size_t)cf->q_heads * d;
	float *q = malloc(nq * 4), *y = malloc(nq * 4), *ly = malloc(nq * 4);
	float *al = malloc(cf->q_heads * 4), *lal = malloc(cf->q_heads * 4);
	struct sparq_attend_item *items = calloc(cf->kv_heads, sizeof(*items));
	struct sparq_attn_params p = { .r = cf->r, .k = cf->k, .l = (int32_t)cf->l };
	int ret = -ENOMEM;

	if (!q || !y || !ly || !al || !lal || !items)
		goto out;
	for (size_t i = 0; i < nq; i++)
		q[i] = bench_rng_normal_fast(&cl->rng);
	struct sparq_attend_req rq = { .session = s->id, .q = q, .y = y, .alpha = al, .params = &p };
	uint64_t t = bench_now_ns();
	ret = sparq_attend(cl->c, layer, &rq, 1, NULL);
	uint64_t lat = bench_now_ns() - t;
	if (ret && fault_seen(cl, OP_ATTEND, ret)) {
		ret = 0;
		goto out;
	}
	if (ret) {
		op_failed(cl, "attend", s, ret);
		goto out;
	}
	record(cl, OP_ATTEND, s, t, lat);

	/* the daemon's batch for this request: one item per KV head, in head order */
	struct sparq_attend_batch b = { .items = items, .n = cf->kv_heads, .mode = SPARQ_ATTEND_FULL };
	for (uint32_t h = 0; h < cf->kv_heads; h++)
		items[h] = (struct sparq_attend_item){
			.stream = s->mirror[layer * cf->kv_heads + h], .g = g,
			.q = q + (size_t)h * g * d, .y = ly + (size_t)h * g * d, .alpha = lal + h * g,
			.params = { .r = cf->r, .k = cf->k, .l = (int32_t)cf->l, .ratio = 0,
				    .blend = SPARQ_BLEND_AUTO } };
	ret = sparq_backend_attend(cl->be, &b);
	if (ret) {
		problem(cl, "in-process attend: %s (%s)", strerror(-ret), b.why ? b.why : "");
		goto out;
	}
	if (cf->inject && !atomic_exchange(&cl->run->injected_attend, true))
		ly[0] = nextafterf(ly[0], INFINITY);   /* one ulp: the check must see it */
	if (memcmp(y, ly, nq * 4) || memcmp(al, lal, cf->q_heads * 4)) {
		size_t i = 0;

		while (i < nq && !memcmp(&y[i], &ly[i], 4))
			i++;
		cl->mismatches++;
		problem(cl, "attend mismatch: session %" PRIu64 " layer %u (S=%u) y[%zu] daemon %.9g, "
			"in-process %.9g", s->id, layer, s->len, i, i < nq ? y[i] : 0.0,
			i < nq ? ly[i] : 0.0);
	}
out:
	free(q);
	free(y);
	free(ly);
	free(al);
	free(lal);
	free(items);
	return ret;
}

static int do_gather(struct client *cl, struct session *s)
{
	const struct cfg *cf = &cl->run->cfg;
	uint32_t layer = (uint32_t)(bench_rng_next(&cl->rng) % cf->layers);
	uint32_t head = (uint32_t)(bench_rng_next(&cl->rng) % cf->kv_heads);
	uint32_t n = 1 + (uint32_t)(bench_rng_next(&cl->rng) % GATHER_MAX), d = cf->head_dim;
	uint32_t *pos = malloc(n * 4);
	uint16_t *out = malloc((size_t)n * 2 * d * 2);
	int ret = -ENOMEM;

	if (!pos || !out)
		goto out;
	for (uint32_t i = 0; i < n; i++)
		pos[i] = (uint32_t)(bench_rng_next(&cl->rng) % s->len);
	uint64_t t = bench_now_ns();
	ret = sparq_gather(cl->c, s->id, layer, head, pos, n, out);
	uint64_t lat = bench_now_ns() - t;
	if (ret && fault_seen(cl, OP_GATHER, ret)) {
		ret = 0;
		goto out;
	}
	if (ret) {
		op_failed(cl, "gather", s, ret);
		goto out;
	}
	record(cl, OP_GATHER, s, t, lat);
	for (uint32_t i = 0; i < n; i++) {
		for (uint32_t c = 0; c < 2 * d; c++) {
			uint16_t want = record_value(cf->seed, s->idx, layer, head, pos[i], c % d, c / d);

			if (cf->inject && !atomic_exchange(&cl->run->injected_gather, true))
				want ^= 1;

			if (out[(size_t)i * 2 * d + c] != want) {
				cl->mismatches++;
				problem(cl, "gather mismatch: session %" PRIu64 " layer %u head %u position "
					"%u channel %u: 0x%04x, want 0x%04x", s->id, layer, head, pos[i],
					c, out[(size_t)i * 2 * d + c], want);
				goto out;
			}
		}
	}
out:
	free(pos);
	free(out);
	return ret;
}

static int session_create(struct client *cl, struct session *s)
{
	const struct cfg *cf = &cl->run->cfg;
	char label[64];
	struct sparq_session_opts so = {
		.geometry = { .n_layers = cf->layers, .n_q_heads = cf->q_heads,
			      .n_kv_heads = cf->kv_heads, .head_dim = cf->head_dim,
			      .dtype = SPARQ_CLIENT_F16 },
		.defaults = { .r = cf->r, .k = cf->k, .l = (int32_t)cf->l },
		.persistent = true, .label = label,
	};
	const char *why = "";
	int ret;

	snprintf(label, sizeof(label), "stress-%u", s->idx);
	s->mirror = calloc((size_t)cf->layers * cf->kv_heads, sizeof(*s->mirror));
	if (!s->mirror)
		return -ENOMEM;
	for (uint32_t i = 0; i < cf->layers * cf->kv_heads; i++) {
		ret = sparq_stream_create(cl->be, cl->st, cf->head_dim, SPARQ_DTYPE_F16, &s->mirror[i],
					  &why);
		if (ret) {
			problem(cl, "in-process stream: %s (%s)", strerror(-ret), why);
			return ret;
		}
	}
	ret = sparq_session_create(cl->c, &so, &s->id);
	if (ret) {
		op_failed(cl, "create", s, ret);
		return ret;
	}
	for (uint32_t done = 0; !ret && done < cf->context; done += PREFILL_PIECE) {
		uint32_t n = cf->context - done < PREFILL_PIECE ? cf->context - done : PREFILL_PIECE;
		ret = do_append(cl, s, n, false);
	}
	return ret;
}

/*
 * Hang up and come back: the daemon parks our persistent sessions and closes them;
 * each is resumed (alternately from NVMe and into RAM) and its parked copy dropped,
 * so the next departure parks it afresh. Its length must be what we appended.
 */
static int churn(struct client *cl)
{
	const struct cfg *cf = &cl->run->cfg;
	struct sparq_session_info *info = calloc(1024, sizeof(*info));
	uint64_t t = bench_now_ns(), lat;
	uint32_t n = 0;
	int ret;

	if (!info)
		return -ENOMEM;
	sparq_disconnect(cl->c);
	cl->c = NULL;
	ret = sparq_connect(cl->run->cfg.socket, "sparq-stress", 0, &cl->c);
	if (ret) {
		cl->run->daemon_gone = true;
		cl->errors++;
		problem(cl, "reconnect: %s", strerror(-ret));
		goto out;
	}
	/* the departure is handled behind any request still queued: wait for it */
	for (uint64_t end = bench_now_ns() + 60000000000ull;;) {
		uint32_t closed = 0;

		ret = sparq_session_list(cl->c, info, 1024, &n);
		for (uint32_t i = 0; !ret && i < n && i < 1024; i++)
			for (uint32_t j = 0; j < cf->sessions; j++)
				if (info[i].id == cl->ses[j].id && !info[i].open && info[i].parked)
					closed++;
		if (ret || closed == cf->sessions || bench_now_ns() > end)
			break;
		usleep(2000);
	}
	lat = bench_now_ns() - t;
	if (ret) {
		op_failed(cl, "list", NULL, ret);
		goto out;
	}
	record(cl, OP_PARK, NULL, t, lat);
	for (uint32_t j = 0; j < cf->sessions; j++) {
		struct session *s = &cl->ses[j];
		bool to_ram = bench_rng_next(&cl->rng) & 1;

		t = bench_now_ns();
		ret = sparq_session_resume(cl->c, s->id, to_ram);
		/* a failed resume leaves the session parked as it was */
		for (uint32_t i = 0; ret && i < FAULT_RETRIES && fault_seen(cl, OP_RESUME, ret); i++)
			ret = sparq_session_resume(cl->c, s->id, to_ram);
		lat = bench_now_ns() - t;
		if (ret) {
			op_failed(cl, "resume", s, ret);
			goto out;
		}
		record(cl, OP_RESUME, s, t, lat);
		ret = sparq_session_drop(cl->c, s->id);
		if (ret) {
			op_failed(cl, "drop", s, ret);
			goto out;
		}
	}
	ret = sparq_session_list(cl->c, info, 1024, &n);
	for (uint32_t j = 0; !ret && j < cf->sessions; j++) {
		bool found = false;

		for (uint32_t i = 0; i < n && i < 1024; i++) {
			if (info[i].id != cl->ses[j].id)
				continue;
			found = true;
			if (info[i].tokens != cl->ses[j].len) {
				cl->lost++;
				problem(cl, "session %" PRIu64 " resumed with %" PRIu64 " tokens, %u appended",
					info[i].id, info[i].tokens, cl->ses[j].len);
			}
		}
		if (!found) {
			cl->lost++;
			problem(cl, "session %" PRIu64 " missing after resume", cl->ses[j].id);
		}
	}
out:
	free(info);
	return ret;
}

static bool time_up(struct run *r)
{
	const struct cfg *cf = &r->cfg;

	if (atomic_load(&r->stop))
		return true;
	if (cf->max_ops && atomic_load(&r->ops_done) >= cf->max_ops)
		return true;
	return cf->duration_s > 0 && (double)(bench_now_ns() - r->t0) * 1e-9 >= cf->duration_s;
}

static void *client_main(void *arg)
{
	struct client *cl = arg;
	struct run *r = cl->run;
	const struct cfg *cf = &r->cfg;
	struct sparq_backend_config bc = { .n_threads = r->daemon_threads };
	uint32_t wsum = cf->w_append + cf->w_attend + cf->w_gather;
	uint64_t next_churn = 0;
	int ret;

	bench_rng_seed(&cl->rng, cf->seed * 1000003u + cl->index);
	ret = sparq_connect(cf->socket, "sparq-stress", 0, &cl->c);
	if (ret) {
		cl->errors++;
		problem(cl, "connect: %s", strerror(-ret));
		return NULL;
	}
	ret = sparq_backend_open(r->backend, &bc, &cl->be);
	if (!ret)
		ret = sparq_store_heap_create(1024, 0, &cl->st);
	if (ret) {
		cl->errors++;
		problem(cl, "in-process %s backend: %s", r->backend, strerror(-ret));
		return NULL;
	}
	for (uint32_t j = 0; j < cf->sessions; j++) {
		cl->ses[j].idx = cl->index * cf->sessions + j;
		if (session_create(cl, &cl->ses[j]))
			return NULL;
		pthread_mutex_lock(&r->mu);
		r->all[r->n_all++] = &cl->ses[j];
		pthread_mutex_unlock(&r->mu);
	}
	if (cf->churn_s > 0)
		next_churn = bench_now_ns() +
			     (uint64_t)(-log(bench_rng_uniform(&cl->rng)) * cf->churn_s * 1e9);
	while (!time_up(r) && !cl->first_problem[0]) {
		struct session *s = &cl->ses[bench_rng_next(&cl->rng) % cf->sessions];
		uint32_t pick = (uint32_t)(bench_rng_next(&cl->rng) % wsum);

		if (next_churn && bench_now_ns() >= next_churn) {
			ret = churn(cl);
			next_churn = bench_now_ns() +
				     (uint64_t)(-log(bench_rng_uniform(&cl->rng)) * cf->churn_s * 1e9);
		} else if (pick < cf->w_append) {
			ret = do_append(cl, s, 1, true);
		} else if (pick < cf->w_append + cf->w_attend) {
			ret = do_attend(cl, s);
		} else {
			ret = do_gather(cl, s);
		}
		if (ret)
			break;
	}
	return NULL;
}

/* ---- the monitor: tier placement per session, tier use over time, daemon alive ---- */

static void monitor_tick(struct run *r, struct sparq_client *c, struct sparq_session_info *info)
{
	struct sparq_stats st;
	uint32_t n = 0;

	if (sparq_session_list(c, info, 1024, &n) == 0) {
		pthread_mutex_lock(&r->mu);
		for (uint32_t i = 0; i < n && i < 1024; i++)
			for (uint32_t j = 0; j < r->n_all; j++)
				if (r->all[j]->id == info[i].id && info[i].open)
					atomic_store(&r->all[j]->on_nvme, info[i].nvme_records > 0);
		pthread_mutex_unlock(&r->mu);
	}
	if (sparq_stats_get(c, &st) == 0) {
		pthread_mutex_lock(&r->mu);
		if (r->n_use == r->cap_use) {
			size_t cap = r->cap_use ? r->cap_use * 2 : 256;
			struct use_sample *p = realloc(r->use, cap * sizeof(*p));
			if (p) {
				r->use = p;
				r->cap_use = cap;
			}
		}
		if (r->n_use < r->cap_use)
			r->use[r->n_use++] = (struct use_sample){ bench_now_ns() - r->t0, st.ram_used,
								  st.nvme_used };
		pthread_mutex_unlock(&r->mu);
	}
}

static void *monitor_main(void *arg)
{
	struct run *r = arg;
	struct sparq_session_info *info = calloc(1024, sizeof(*info));
	struct sparq_client *c = NULL;

	if (!info || sparq_connect(r->cfg.socket, "sparq-stress-monitor", 0, &c)) {
		free(info);
		return NULL;
	}
	while (!atomic_load(&r->stop)) {
		monitor_tick(r, c, info);
		if (r->daemon_pid && waitpid(r->daemon_pid, NULL, WNOHANG) == r->daemon_pid) {
			fprintf(stderr, TOOL ": sparqd (pid %d) died during the run\n", (int)r->daemon_pid);
			r->daemon_pid = 0;
			r->daemon_gone = true;
			atomic_store(&r->stop, true);
		}
		usleep(100000);
	}
	sparq_disconnect(c);
	free(info);
	return NULL;
}

/* ---- fault mode: victims killed mid-request ---- */

/* The victim's life: one session, appends and attends until the kill. */
static int victim_main(const char *socket, const char *label)
{
	struct sparq_session_opts so = {
		.geometry = { .n_layers = 1, .n_q_heads = 4, .n_kv_heads = 2, .head_dim = 64,
			      .dtype = SPARQ_CLIENT_F16 },
		.defaults = { .r = 16, .k = 32, .l = 8 }, .label = label,
	};
	static uint16_t k[256 * 2 * 64], v[256 * 2 * 64];
	static float q[4 * 64], y[4 * 64];
	struct sparq_client *c;
	uint64_t id;

	for (size_t i = 0; i < sizeof(k) / 2; i++) {
		k[i] = sparq_f32_to_f16((float)(i % 97) / 97.0f - 0.5f);
		v[i] = sparq_f32_to_f16((float)(i % 89) / 89.0f - 0.5f);
	}
	for (size_t i = 0; i < 4 * 64; i++)
		q[i] = (float)(i % 13) / 13.0f - 0.5f;
	if (sparq_connect(socket, "sparq-stress-victim", 0, &c) || sparq_session_create(c, &so, &id))
		return 1;
	for (;;) {
		struct sparq_attend_req rq = { .session = id, .q = q, .y = y };

		if (sparq_append(c, id, 0, 256, k, v) || sparq_attend(c, 0, &rq, 1, NULL))
			return 1;
	}
}

static bool label_listed(struct sparq_client *c, const char *label, struct sparq_session_info *info)
{
	uint32_t n = 0;

	if (sparq_session_list(c, info, 1024, &n))
		return true;   /* cannot tell: treat as still there, the caller retries */
	for (uint32_t i = 0; i < n && i < 1024; i++)
		if (strcmp(info[i].label, label) == 0)
			return true;
	return false;
}

static void *killer_main(void *arg)
{
	struct run *r = arg;
	struct bench_rng rng;
	struct sparq_session_info *info = calloc(1024, sizeof(*info));
	struct sparq_client *c = NULL;
	char label[64];

	bench_rng_seed(&rng, r->cfg.seed ^ 0x6b696c6cu);
	if (!info || sparq_connect(r->cfg.socket, "sparq-stress-killer", 0, &c)) {
		free(info);
		return NULL;
	}
	while (!time_up(r)) {
		pid_t pid;
		int status;

		snprintf(label, sizeof(label), "victim-%" PRIu64, r->kills);
		fflush(NULL);
		pid = fork();
		if (pid == 0) {
			execl("/proc/self/exe", "sparq-stress", "--victim", r->cfg.socket, label,
			      (char *)NULL);
			_exit(127);
		}
		if (pid < 0)
			break;
		usleep((useconds_t)(20000 + bench_rng_next(&rng) % ((uint64_t)r->cfg.kill_ms * 1000)));
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		if (WIFEXITED(status)) {
			/* it gave up before the kill: the daemon refused it something */
			r->victim_failed++;
			fprintf(stderr, TOOL ": victim %s exited %d before its kill\n", label,
				WEXITSTATUS(status));
		}
		r->kills++;
		/* the daemon reclaims a dead client's sessions: its session must go */
		bool gone = false;
		for (int i = 0; i < 500 && !gone; i++) {
			gone = !label_listed(c, label, info);
			if (!gone)
				usleep(10000);
		}
		if (!gone) {
			r->victim_leaks++;
			fprintf(stderr, TOOL ": %s's session outlived it by 5 s\n", label);
		}
	}
	sparq_disconnect(c);
	free(info);
	return NULL;
}

/* ---- results ---- */

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

static double pct(const uint32_t *v, size_t n, double p)
{
	if (!n)
		return 0;
	size_t i = (size_t)ceil(p * (double)n);
	return (double)v[i ? i - 1 : 0];
}

struct cell {
	uint32_t *lat;
	size_t n;
};

/* Latencies of [op][tier] over [t_lo, t_hi) (ns since start), sorted. */
static void collect(struct run *r, uint64_t t_lo, uint64_t t_hi, struct cell (*cells)[TIER_COUNT])
{
	const struct cfg *cf = &r->cfg;

	for (int o = 0; o < OP_COUNT; o++)
		for (int t = 0; t < TIER_COUNT; t++)
			cells[o][t].n = 0;
	for (uint32_t i = 0; i < cf->clients; i++) {
		const struct client *cl = &r->clients[i];

		for (size_t j = 0; j < cl->n_log; j++) {
			const struct sample *s = &cl->log[j];
			struct cell *c = &cells[s->op][s->tier];

			if (s->t_ns >= t_lo && s->t_ns < t_hi)
				c->lat[c->n++] = s->lat_ns_lo;
		}
	}
	for (int o = 0; o < OP_COUNT; o++)
		for (int t = 0; t < TIER_COUNT; t++)
			qsort(cells[o][t].lat, cells[o][t].n, 4, cmp_u32);
}

static void write_csv(struct run *r, struct cell (*cells)[TIER_COUNT], uint64_t span_ns, FILE *f)
{
	uint64_t step = (uint64_t)(r->cfg.interval_s * 1e9);

	fprintf(f, "t_s,op,tier,ops,ops_per_s,p50_us,p99_us,ram_used_mib,nvme_used_mib\n");
	for (uint64_t lo = 0; lo < span_ns; lo += step) {
		double ram = 0, nvme = 0;

		for (size_t i = 0; i < r->n_use; i++)
			if (r->use[i].t_ns < lo + step) {
				ram = (double)r->use[i].ram_used / 1048576.0;
				nvme = (double)r->use[i].nvme_used / 1048576.0;
			}
		collect(r, lo, lo + step, cells);
		for (int o = 0; o < OP_COUNT; o++)
			for (int t = 0; t < TIER_COUNT; t++) {
				const struct cell *c = &cells[o][t];

				if (!c->n)
					continue;
				fprintf(f, "%.3f,%s,%s,%zu,%.1f,%.1f,%.1f,%.1f,%.1f\n",
					(double)(lo + step / 2) * 1e-9, op_names[o], tier_names[t], c->n,
					(double)c->n / r->cfg.interval_s, pct(c->lat, c->n, 0.5) / 1e3,
					pct(c->lat, c->n, 0.99) / 1e3, ram, nvme);
			}
	}
}

/* ---- options ---- */

static void usage(FILE *f)
{
	fprintf(f,
		"usage: sparq-stress [options]\n"
		"  --socket PATH       drive this sparqd (default: start one here, in ./stress-XXXXXX)\n"
		"  --clients N         client threads, one connection each (4)\n"
		"  --sessions N        sessions per client, at most %u (2)\n"
		"  --context N         prefill tokens per session (4096)\n"
		"  --layers N --q-heads N --kv-heads N --head-dim N   geometry (2, 8, 2, 128; fp16)\n"
		"  --r N --k N --l N   SparQ parameters of every attend (32, 128, 32)\n"
		"  --duration S        stop after S seconds (20)\n"
		"  --ops N             or after N operations (0 = no bound)\n"
		"  --mix A:T:G         weights of append, attend, gather (2:5:3)\n"
		"  --churn S           mean seconds between a client's park/resume churns (5; 0 = off)\n"
		"  --kill-ms MS        fault mode: victims SIGKILLed within MS ms (0 = off)\n"
		"  --nvme-faults A:C   NVMe fault mode (daemon started here only): after A good\n"
		"                      NVMe requests the next C reads fail with EIO; requests that\n"
		"                      fail must say -EIO, nothing acknowledged may change (off)\n"
		"  --seed N            data and schedule seed (1)\n"
		"  --ram-bytes SIZE --nvme-bytes SIZE --threads N   for the daemon started here\n"
		"                      (8M, 2G, 2): small RAM so the sessions spill to NVMe\n"
		"  --json FILE         results as one JSON object; --csv FILE the timeline\n"
		"                      (default: the JSON path with .csv)\n"
		"  --interval S        timeline resolution (1)\n"
		"  --inject-mismatch   corrupt one expected attend output and one expected row, so\n"
		"                      the run must report 2 mismatches and fail (checks the checker)\n"
		"exit: 0 clean, 1 mismatch/lost session/error/daemon crash, 2 usage, 3 no daemon\n",
		MAX_SESSIONS);
}

static int parse_u(const char *s, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!s || *s == '-' || *s == '+' || !*s)
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_args(int argc, char **argv, struct cfg *cf)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		uint64_t n = 0;
		bool num = true;
		int ret = 0;

		if (!strcmp(a, "--help")) {
			usage(stdout);
			exit(0);
		}
		if (!strcmp(a, "--inject-mismatch")) {
			cf->inject = true;
			continue;
		}
		if (!v) {
			fprintf(stderr, TOOL ": %s needs a value (see --help)\n", a);
			return -EINVAL;
		}
		if (!strcmp(a, "--socket")) {
			cf->socket = v, num = false;
		} else if (!strcmp(a, "--json")) {
			cf->json = v, num = false;
		} else if (!strcmp(a, "--csv")) {
			cf->csv = v, num = false;
		} else if (!strcmp(a, "--ram-bytes")) {
			cf->ram_bytes = v, num = false;
		} else if (!strcmp(a, "--nvme-bytes")) {
			cf->nvme_bytes = v, num = false;
		} else if (!strcmp(a, "--duration") || !strcmp(a, "--churn") || !strcmp(a, "--interval")) {
			char *end;
			double x = strtod(v, &end);

			num = false;
			if (*end || !(x >= 0) || x > 86400 || (!strcmp(a, "--interval") && x < 0.01)) {
				fprintf(stderr, TOOL ": %s: '%s' is not a number of seconds\n", a, v);
				return -EINVAL;
			}
			*(!strcmp(a, "--duration") ? &cf->duration_s :
			  !strcmp(a, "--churn") ? &cf->churn_s : &cf->interval_s) = x;
		} else if (!strcmp(a, "--nvme-faults")) {
			unsigned x, y;
			char tail;

			num = false;
			if (sscanf(v, "%u:%u%c", &x, &y, &tail) != 2 || !y || v[0] == '-' ||
			    strchr(v, '-')) {
				fprintf(stderr, TOOL ": --nvme-faults: '%s' is not AFTER:COUNT "
					"(COUNT at least 1)\n", v);
				return -EINVAL;
			}
			cf->fault_after = x, cf->fault_count = y;
		} else if (!strcmp(a, "--mix")) {
			unsigned x, y, z;
			char tail;

			num = false;
			if (sscanf(v, "%u:%u:%u%c", &x, &y, &z, &tail) != 3 || x + y + z == 0 ||
			    x > 1000 || y > 1000 || z > 1000) {
				fprintf(stderr, TOOL ": --mix: '%s' is not A:T:G weights\n", v);
				return -EINVAL;
			}
			cf->w_append = x, cf->w_attend = y, cf->w_gather = z;
		} else {
			ret = parse_u(v, UINT32_MAX, &n);
		}
		if (num) {
			uint32_t *dst = !strcmp(a, "--clients") ? &cf->clients :
					!strcmp(a, "--sessions") ? &cf->sessions :
					!strcmp(a, "--context") ? &cf->context :
					!strcmp(a, "--layers") ? &cf->layers :
					!strcmp(a, "--q-heads") ? &cf->q_heads :
					!strcmp(a, "--kv-heads") ? &cf->kv_heads :
					!strcmp(a, "--head-dim") ? &cf->head_dim :
					!strcmp(a, "--r") ? &cf->r : !strcmp(a, "--k") ? &cf->k :
					!strcmp(a, "--l") ? &cf->l : !strcmp(a, "--kill-ms") ? &cf->kill_ms :
					!strcmp(a, "--threads") ? &cf->threads : NULL;

			if (!strcmp(a, "--ops") || !strcmp(a, "--seed")) {
				if (ret) {
					fprintf(stderr, TOOL ": %s: '%s' is not a number\n", a, v);
					return -EINVAL;
				}
				*(!strcmp(a, "--ops") ? &cf->max_ops : &cf->seed) = n;
			} else if (!dst) {
				fprintf(stderr, TOOL ": unknown option '%s' (see --help)\n", a);
				return -EINVAL;
			} else if (ret) {
				fprintf(stderr, TOOL ": %s: '%s' is not a number\n", a, v);
				return -EINVAL;
			} else {
				*dst = (uint32_t)n;
			}
		}
		i++;
	}
	if (!cf->clients || cf->clients > 256 || !cf->sessions || cf->sessions > MAX_SESSIONS ||
	    cf->clients * cf->sessions > 1024) {
		fprintf(stderr, TOOL ": --clients in [1, 256], --sessions in [1, %u], at most 1024 "
			"sessions in all\n", MAX_SESSIONS);
		return -EINVAL;
	}
	if (!cf->context || !cf->layers || !cf->kv_heads || cf->q_heads % cf->kv_heads ||
	    !cf->q_heads || cf->head_dim % 8 || !cf->head_dim || !cf->r || cf->r > cf->head_dim ||
	    !cf->k || cf->l >= cf->k) {
		fprintf(stderr, TOOL ": bad geometry or SparQ parameters (context > 0, q-heads a "
			"multiple of kv-heads, head-dim a multiple of 8, 0 < r <= head-dim, l < k)\n");
		return -EINVAL;
	}
	if (cf->fault_count && cf->socket) {
		fprintf(stderr, TOOL ": --nvme-faults needs the daemon started here (the switch is "
			"given at its start), not --socket\n");
		return -EINVAL;
	}
	if (cf->duration_s == 0 && cf->max_ops == 0) {
		fprintf(stderr, TOOL ": give --duration or --ops a bound\n");
		return -EINVAL;
	}
	return 0;
}

static void print_and_save(struct run *r, uint64_t span_ns, uint64_t mism, uint64_t errs,
			   uint64_t lost, const struct sparq_stats *st, bool ok)
{
	const struct cfg *cf = &r->cfg;
	struct cell cells[OP_COUNT][TIER_COUNT];
	size_t total = 0;
	char csv_path[4096];
	FILE *jf = NULL;

	for (uint32_t i = 0; i < cf->clients; i++)
		total += r->clients[i].n_log;
	for (int o = 0; o < OP_COUNT; o++)
		for (int t = 0; t < TIER_COUNT; t++)
			cells[o][t].lat = malloc((total ? total : 1) * 4);
	collect(r, 0, UINT64_MAX, cells);
	printf("\nsparq-stress: %u clients x %u sessions, context %u, L%u H%u/%u d%u, r=%u k=%u "
	       "l=%u, %.1f s, backend %s\n", cf->clients, cf->sessions, cf->context, cf->layers,
	       cf->q_heads, cf->kv_heads, cf->head_dim, cf->r, cf->k, cf->l, (double)span_ns * 1e-9,
	       r->backend);
	printf("%-7s %-5s %9s %10s %10s %10s %10s\n", "op", "tier", "ops", "ops/s", "p50 us",
	       "p99 us", "max us");
	for (int o = 0; o < OP_COUNT; o++)
		for (int t = 0; t < TIER_COUNT; t++) {
			const struct cell *c = &cells[o][t];

			if (!c->n)
				continue;
			printf("%-7s %-5s %9zu %10.1f %10.1f %10.1f %10.1f\n", op_names[o], tier_names[t],
			       c->n, (double)c->n / ((double)span_ns * 1e-9),
			       pct(c->lat, c->n, 0.5) / 1e3, pct(c->lat, c->n, 0.99) / 1e3,
			       (double)c->lat[c->n - 1] / 1e3);
		}
	printf("total   %9zu ops, %.1f ops/s\n", total, (double)total / ((double)span_ns * 1e-9));
	printf("daemon: ram %.1f/%.1f MiB, nvme %.1f/%.1f MiB, %" PRIu64 " demotions, %" PRIu64
	       " promotions, %" PRIu64 " parks, %" PRIu64 " resumes, read amplification %.2f, "
	       "%" PRIu64 " checksum failures\n", (double)st->ram_used / 1048576.0,
	       (double)st->ram_capacity / 1048576.0, (double)st->nvme_used / 1048576.0,
	       (double)st->nvme_capacity / 1048576.0, st->demotions, st->promotions, st->parks,
	       st->resumes, st->read_amplification, st->checksum_failures);
	printf("checks: %" PRIu64 " mismatches, %" PRIu64 " lost sessions/tokens, %" PRIu64
	       " request errors, %" PRIu64 " victims killed (%" PRIu64 " leaked a session), daemon %s"
	       " -> %s\n", mism, lost, errs, r->kills, r->victim_leaks,
	       r->daemon_gone ? "CRASHED or unreachable" : "alive", ok ? "PASS" : "FAIL");

	if (cf->fault_count)
		printf("nvme faults: %u reads armed to fail after %u good requests; client-visible "
		       "-EIO: %" PRIu64 " (append %" PRIu64 ", attend %" PRIu64 ", gather %" PRIu64
		       ", resume %" PRIu64 "); the daemon's count of failed NVMe requests is in its "
		       "log at exit%s\n", cf->fault_count, cf->fault_after, r->faults_total,
		       r->faults[OP_APPEND], r->faults[OP_ATTEND], r->faults[OP_GATHER],
		       r->faults[OP_RESUME],
		       r->faults_total ? "" : " (no fault reached a client: no NVMe read after them?)");
	if (cf->json && !(jf = fopen(cf->json, "w")))
		fprintf(stderr, TOOL ": cannot write %s: %s\n", cf->json, strerror(errno));
	if (jf) {
		fprintf(jf, "{\"clients\": %u, \"sessions\": %u, \"context\": %u, \"layers\": %u, "
			"\"q_heads\": %u, \"kv_heads\": %u, \"head_dim\": %u, \"r\": %u, \"k\": %u, "
			"\"l\": %u, \"seconds\": %.3f, \"backend\": \"%s\", \"ops\": [",
			cf->clients, cf->sessions, cf->context, cf->layers, cf->q_heads, cf->kv_heads,
			cf->head_dim, cf->r, cf->k, cf->l, (double)span_ns * 1e-9, r->backend);
		bool first = true;
		for (int o = 0; o < OP_COUNT; o++)
			for (int t = 0; t < TIER_COUNT; t++) {
				const struct cell *c = &cells[o][t];
				if (!c->n)
					continue;
				fprintf(jf, "%s{\"op\": \"%s\", \"tier\": \"%s\", \"count\": %zu, "
					"\"p50_us\": %.1f, \"p99_us\": %.1f, \"max_us\": %.1f}",
					first ? "" : ", ", op_names[o], tier_names[t], c->n,
					pct(c->lat, c->n, 0.5) / 1e3, pct(c->lat, c->n, 0.99) / 1e3,
					(double)c->lat[c->n - 1] / 1e3);
				first = false;
			}
		fprintf(jf, "], \"total_ops\": %zu, \"ops_per_s\": %.1f, \"mismatches\": %" PRIu64
			", \"lost\": %" PRIu64 ", \"errors\": %" PRIu64 ", \"kills\": %" PRIu64
			", \"victim_leaks\": %" PRIu64
			", \"daemon_crashed\": %s, \"demotions\": %" PRIu64
			", \"promotions\": %" PRIu64 ", \"checksum_failures\": %" PRIu64
			", \"nvme_faults_armed\": %u, \"fault_errors\": %" PRIu64
			", \"fault_errors_append\": %" PRIu64 ", \"fault_errors_attend\": %" PRIu64
			", \"fault_errors_gather\": %" PRIu64 ", \"fault_errors_resume\": %" PRIu64
			", \"pass\": %s}\n", total, (double)total / ((double)span_ns * 1e-9), mism, lost,
			errs, r->kills, r->victim_leaks, r->daemon_gone ? "true" : "false", st->demotions,
			st->promotions, st->checksum_failures, cf->fault_count, r->faults_total,
			r->faults[OP_APPEND], r->faults[OP_ATTEND], r->faults[OP_GATHER],
			r->faults[OP_RESUME], ok ? "true" : "false");
		fclose(jf);
	}
	const char *csv = cf->csv;
	if (!csv && cf->json) {
		size_t n = strlen(cf->json);
		const char *dot = n > 5 && !strcmp(cf->json + n - 5, ".json") ? cf->json + n - 5 : NULL;

		snprintf(csv_path, sizeof(csv_path), "%.*s.csv", (int)(dot ? (size_t)(dot - cf->json) : n),
			 cf->json);
		csv = csv_path;
	}
	if (csv) {
		FILE *f = fopen(csv, "w");

		if (!f) {
			fprintf(stderr, TOOL ": cannot write %s: %s\n", csv, strerror(errno));
		} else {
			write_csv(r, cells, span_ns, f);
			fclose(f);
			printf("timeline: %s\n", csv);
		}
	}
	for (int o = 0; o < OP_COUNT; o++)
		for (int t = 0; t < TIER_COUNT; t++)
			free(cells[o][t].lat);
}

int main(int argc, char **argv)
{
	struct run *r = calloc(1, sizeof(*r));
	struct cfg *cf;
	struct sparqd_child child = { 0 };
	struct sparq_client *c = NULL;
	struct sparq_config_entry ents[64];
	struct sparq_stats st = { 0 };
	pthread_t mon, killer;
	uint64_t mism = 0, errs = 0, lost = 0, span;
	uint32_t n_ent = 0;
	bool spawned = false, ok;
	int ret, code;

	if (argc == 4 && !strcmp(argv[1], "--victim"))
		return victim_main(argv[2], argv[3]);
	if (!r)
		return 3;
	cf = &r->cfg;
	*cf = (struct cfg){ .clients = 4, .sessions = 2, .context = 4096, .layers = 2,
			    .q_heads = 8, .kv_heads = 2, .head_dim = 128, .r = 32, .k = 128, .l = 32,
			    .duration_s = 20, .w_append = 2, .w_attend = 5, .w_gather = 3,
			    .churn_s = 5, .seed = 1, .ram_bytes = "8M", .nvme_bytes = "2G",
			    .threads = 2, .interval_s = 1 };
	if (parse_args(argc, argv, cf))
		return 2;
	signal(SIGPIPE, SIG_IGN);
	pthread_mutex_init(&r->mu, NULL);
	if (!cf->socket) {
		char threads[16], fault[64];
		const char *args[] = { "--backend", "cpu", "--threads", threads, "--workers", "4",
				       "--ram-bytes", cf->ram_bytes, "--nvme-bytes", cf->nvme_bytes,
				       "--chunk-bytes", "64K", "--log-level", "warn",
				       cf->fault_count ? "--allow-fault-injection" : NULL,
				       "--nvme-fault", fault, NULL };

		snprintf(threads, sizeof(threads), "%u", cf->threads);
		snprintf(fault, sizeof(fault), "eio:reads:after=%u:count=%u", cf->fault_after,
			 cf->fault_count);
		ret = sparqd_spawn(&child, TOOL, "stress", args, 60);
		if (ret)
			return 3;
		spawned = true;
		cf->socket = child.socket;
		r->daemon_pid = child.pid;
	}
	ret = sparq_connect(cf->socket, "sparq-stress", 0, &c);
	if (ret) {
		fprintf(stderr, TOOL ": cannot connect to %s: %s\n", cf->socket, strerror(-ret));
		code = 3;
		goto out;
	}
	/* the mirror must compute as the daemon does: same backend, same thread count */
	snprintf(r->backend, sizeof(r->backend), "%s", sparq_client_backend(c));
	r->daemon_threads = cf->threads;
	if (sparq_config_get(c, ents, 64, &n_ent) == 0)
		for (uint32_t i = 0; i < n_ent && i < 64; i++)
			if (!strcmp(ents[i].key, "threads"))
				r->daemon_threads = (uint32_t)strtoul(ents[i].value, NULL, 10);
	r->clients = calloc(cf->clients, sizeof(*r->clients));
	if (!r->clients) {
		code = 3;
		goto out;
	}
	printf("sparq-stress: %u clients x %u sessions of %u tokens on %s (%s backend, %u threads);"
	       " prefill, then %.0f s / %" PRIu64 " ops\n", cf->clients, cf->sessions, cf->context,
	       cf->socket, r->backend, r->daemon_threads, cf->duration_s, cf->max_ops);
	fflush(stdout);
	r->t0 = bench_now_ns();
	pthread_create(&mon, NULL, monitor_main, r);
	for (uint32_t i = 0; i < cf->clients; i++) {
		r->clients[i] = (struct client){ .run = r, .index = i };
		pthread_create(&r->clients[i].thread, NULL, client_main, &r->clients[i]);
	}
	if (cf->kill_ms)
		pthread_create(&killer, NULL, killer_main, r);
	for (uint32_t i = 0; i < cf->clients; i++)
		pthread_join(r->clients[i].thread, NULL);
	/* clients stopped early on a problem: stop the others' helpers too */
	atomic_store(&r->stop, true);
	if (cf->kill_ms)
		pthread_join(killer, NULL);
	pthread_join(mon, NULL);
	span = bench_now_ns() - r->t0;

	for (uint32_t i = 0; i < cf->clients; i++) {
		struct client *cl = &r->clients[i];

		mism += cl->mismatches;
		errs += cl->errors;
		lost += cl->lost;
		for (int o = 0; o < OP_COUNT; o++) {
			r->faults[o] += cl->faults[o];
			r->faults_total += cl->faults[o];
		}
	}
	if (sparq_stats_get(c, &st))
		r->daemon_gone = true;
	/* our sessions go with their connections; the mirrors with them */
	for (uint32_t i = 0; i < cf->clients; i++) {
		struct client *cl = &r->clients[i];

		for (uint32_t j = 0; j < cf->sessions; j++) {
			if (cl->c && cl->ses[j].id)
				sparq_session_close(cl->c, cl->ses[j].id);
			for (uint32_t h = 0; cl->ses[j].mirror && h < cf->layers * cf->kv_heads; h++)
				sparq_stream_destroy(cl->ses[j].mirror[h]);
			free(cl->ses[j].mirror);
		}
		sparq_disconnect(cl->c);
		sparq_store_destroy(cl->st);
		sparq_backend_close(cl->be);
	}
	sparq_disconnect(c);
	c = NULL;
	if (spawned) {
		int rc = sparqd_stop(&child, TOOL, 60);

		if (rc != 0) {
			fprintf(stderr, TOOL ": sparqd exited with %d at the end (0 expected)\n", rc);
			r->daemon_gone = true;
		}
	}
	ok = !mism && !errs && !lost && !r->victim_leaks && !r->victim_failed && !r->daemon_gone &&
	     !st.checksum_failures;
	print_and_save(r, span, mism, errs, lost, &st, ok);
	code = ok ? 0 : 1;
	for (uint32_t i = 0; i < cf->clients; i++)
		free(r->clients[i].log);
out:
	sparq_disconnect(c);
	if (spawned)
		sparqd_cleanup(&child, TOOL);
	free(r->clients);
	free(r->use);
	free(r);
	return code;
}
