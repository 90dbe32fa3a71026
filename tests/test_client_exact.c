/*
 * test_client_exact.c — attention through sparqd equals the in-process SparQ core bit
 * for bit (issue 4, "Tests"). The daemon runs the CPU backend with 2 threads; this
 * program builds the very same streams in-process (CPU backend, 2 threads, a heap
 * store), appends the same bytes in the same pieces, and compares with memcmp:
 *   - y and alpha of a batched attend over two sessions (fp16 and bf16), with the
 *     session defaults, explicit r/k/l, blend on, and dense;
 *   - the selection (positions, counts, alpha) of select;
 *   - gathered records.
 * The daemon's store is the tier manager, the in-process one the heap store: both
 * return identical records, so any difference is a bug in the path between them
 * (descriptor encoding, parameter mapping, layouts, the batch's order).
 */
#include <errno.h>
#include <string.h>

#include "daemon_helpers.h"
#include "helpers.h"
#include "libsparq.h"

#define L 2u
#define HQ 8u
#define HKV 2u
#define G (HQ / HKV)
#define D 128u
#define N_SESS 2u
#define STEPS 6u
#define SEL_CAP 2048u

static const uint32_t prefill[N_SESS] = { 3000, 1700 };
static const enum sparq_dtype dtypes[N_SESS] = { SPARQ_DTYPE_F16, SPARQ_DTYPE_BF16 };

struct mirror {
	struct sparq_backend *be;
	struct sparq_store *st;
	struct sparq_stream *s[N_SESS][L][HKV];
};

/* K with per-channel scales (as real keys have), V plain; n tokens of one layer. */
static void make_kv(struct t_rng *r, enum sparq_dtype dt, uint32_t n, uint16_t *k, uint16_t *v)
{
	for (uint32_t t = 0; t < n; t++)
		for (uint32_t h = 0; h < HKV; h++)
			for (uint32_t i = 0; i < D; i++) {
				size_t at = ((size_t)t * HKV + h) * D + i;
				float scale = 0.25f + (float)((i * 37 + h * 11) % 16) / 8.0f;
				k[at] = t_to_dtype((float)t_normal(r) * scale, dt);
				v[at] = t_to_dtype((float)t_normal(r), dt);
			}
}

/* Appends [n][HKV][D] K/V to the daemon and, head by head, to the mirror. */
static void append_both(struct sparq_client *c, struct mirror *m, const uint64_t *ids,
			uint32_t s, uint32_t layer, uint32_t n, const uint16_t *k, const uint16_t *v)
{
	uint16_t *hk = t_alloc((size_t)n * D * 2), *hv = t_alloc((size_t)n * D * 2);
	const char *why = "";
	int ret = sparq_append(c, ids[s], layer, n, k, v);

	T_CHECK(ret == 0, "daemon append: %d %s", ret, sparq_client_error(c));
	for (uint32_t h = 0; h < HKV; h++) {
		for (uint32_t t = 0; t < n; t++) {
			memcpy(hk + (size_t)t * D, k + ((size_t)t * HKV + h) * D, D * 2);
			memcpy(hv + (size_t)t * D, v + ((size_t)t * HKV + h) * D, D * 2);
		}
		ret = sparq_stream_append(m->s[s][layer][h], n, hk, hv, &why);
		T_CHECK(ret == 0, "in-process append: %d %s", ret, why);
	}
	free(hk);
	free(hv);
}

/* What the daemon makes of API parameters (request.c: sd_params_for). */
static struct sparq_params core_params(const struct sparq_attn_params *p, uint32_t S)
{
	struct sparq_params out = { .r = p->r, .k = p->k, .l = p->l >= 0 ? p->l : -1,
				    .ratio = p->ratio, .blend = (enum sparq_blend)p->blend };
	if (p->dense) {
		out.r = D;
		out.k = S;
		out.l = 0;
		out.ratio = 0;
	}
	return out;
}

/* In-process: one batch of every KV head of layer for each session, in request order. */
static void attend_local(struct mirror *m, uint32_t layer, const float (*q)[HQ * D],
			 float (*y)[HQ * D], float (*alpha)[HQ],
			 const struct sparq_attn_params *const *params, enum sparq_attend_mode mode,
			 uint32_t (*sel)[HKV][SEL_CAP], uint32_t (*n_sel)[HKV])
{
	struct sparq_attend_item items[N_SESS * HKV];
	struct sparq_attend_batch b = { .items = items, .n = N_SESS * HKV, .mode = mode };

	for (uint32_t s = 0; s < N_SESS; s++)
		for (uint32_t h = 0; h < HKV; h++) {
			struct sparq_stream *st = m->s[s][layer][h];
			items[s * HKV + h] = (struct sparq_attend_item){
				.stream = st, .g = G, .q = q[s] + h * G * D,
				.y = mode == SPARQ_ATTEND_FULL ? y[s] + h * G * D : NULL,
				.alpha = alpha[s] + h * G,
				.params = core_params(params[s], sparq_stream_len(st)),
				.sel = sel ? sel[s][h] : NULL, .sel_cap = sel ? SEL_CAP : 0,
			};
		}
	int ret = sparq_backend_attend(m->be, &b);
	T_CHECK(ret == 0, "in-process attend: %d (%s), item %d", ret, b.why ? b.why : "",
		b.bad_item);
	if (n_sel)
		for (uint32_t s = 0; s < N_SESS; s++)
			for (uint32_t h = 0; h < HKV; h++)
				n_sel[s][h] = items[s * HKV + h].n_sel;
}

static void check_attend(struct sparq_client *c, struct mirror *m, const uint64_t *ids,
			 uint32_t layer, const float (*q)[HQ * D],
			 const struct sparq_attn_params *const *params, const char *what)
{
	static float y[N_SESS][HQ * D], alpha[N_SESS][HQ], ly[N_SESS][HQ * D], lalpha[N_SESS][HQ];
	struct sparq_attend_req reqs[N_SESS];
	int32_t bad;

	for (uint32_t s = 0; s < N_SESS; s++)
		reqs[s] = (struct sparq_attend_req){ .session = ids[s], .q = q[s], .y = y[s],
						     .alpha = alpha[s],
						     /* the session defaults travel as NULL */
						     .params = params[s]->ratio == 8 && !params[s]->r &&
								       !params[s]->dense && params[s]->l < 0 ?
								       NULL : params[s] };
	int ret = sparq_attend(c, layer, reqs, N_SESS, &bad);
	T_CHECK(ret == 0, "%s: daemon attend: %d (%s) bad %d", what, ret, sparq_client_error(c),
		bad);
	attend_local(m, layer, q, ly, lalpha, params, SPARQ_ATTEND_FULL, NULL, NULL);
	for (uint32_t s = 0; s < N_SESS; s++) {
		for (uint32_t i = 0; i < HQ * D; i++)
			T_CHECK(memcmp(&y[s][i], &ly[s][i], sizeof(float)) == 0,
				"%s: session %u layer %u y[%u]: daemon %.9g, in-process %.9g", what, s,
				layer, i, y[s][i], ly[s][i]);
		T_CHECK(memcmp(alpha[s], lalpha[s], sizeof(alpha[s])) == 0,
			"%s: session %u layer %u: alpha differs", what, s, layer);
	}
}

int main(void)
{
	struct t_daemon d = { 0 };
	struct sparq_backend_config cfg = { .n_threads = 2 };
	struct mirror m = { 0 };
	struct sparq_client *c;
	uint64_t ids[N_SESS];
	struct t_rng rng = { 20240521 };
	const char *why = "";
	int ret;

	t_daemon_start(&d, NULL, NULL);
	if (d.external)
		printf("note: an external daemon must run the cpu backend with 2 threads\n");
	ret = sparq_connect(d.socket, "exact", 0, &c);
	T_CHECK(ret == 0, "connect: %d", ret);
	T_CHECK(strcmp(sparq_client_backend(c), "cpu") == 0, "the daemon attends with %s",
		sparq_client_backend(c));

	m.be = t_backend_or_skip("cpu", &cfg);
	T_CHECK(sparq_store_heap_create(1024, 0, &m.st) == 0, "heap store");
	for (uint32_t s = 0; s < N_SESS; s++) {
		struct sparq_session_opts o = {
			.geometry = { L, HQ, HKV, D,
				      dtypes[s] == SPARQ_DTYPE_BF16 ? SPARQ_CLIENT_BF16 : SPARQ_CLIENT_F16 },
			.defaults = { .ratio = 8, .l = -1 },
		};
		ret = sparq_session_create(c, &o, &ids[s]);
		T_CHECK(ret == 0, "create: %d %s", ret, sparq_client_error(c));
		for (uint32_t l = 0; l < L; l++)
			for (uint32_t h = 0; h < HKV; h++) {
				ret = sparq_stream_create(m.be, m.st, D, dtypes[s], &m.s[s][l][h], &why);
				T_CHECK(ret == 0, "stream: %s", why);
			}
	}

	/* prefill in two unequal pieces per layer, as an engine's chunked prefill does */
	for (uint32_t s = 0; s < N_SESS; s++)
		for (uint32_t l = 0; l < L; l++) {
			uint32_t first = prefill[s] / 3, rest = prefill[s] - first;
			uint16_t *k = t_alloc((size_t)rest * HKV * D * 2);
			uint16_t *v = t_alloc((size_t)rest * HKV * D * 2);
			make_kv(&rng, dtypes[s], first, k, v);
			append_both(c, &m, ids, s, l, first, k, v);
			make_kv(&rng, dtypes[s], rest, k, v);
			append_both(c, &m, ids, s, l, rest, k, v);
			free(k);
			free(v);
		}

	static const struct sparq_attn_params defaults = { .ratio = 8, .l = -1 };
	static const struct sparq_attn_params explicit_rk = { .r = 16, .k = 200, .l = 0 };
	static const struct sparq_attn_params blend_on = { .ratio = 4, .l = 10,
							   .blend = SPARQ_CLIENT_BLEND_ON };
	static const struct sparq_attn_params dense = { .dense = true, .l = -1 };
	static float q[N_SESS][HQ * D];
	uint32_t checked = 0;

	for (uint32_t step = 0; step < STEPS; step++) {
		/* one decode token per session and layer, then each layer's attention */
		for (uint32_t s = 0; s < N_SESS; s++)
			for (uint32_t l = 0; l < L; l++) {
				uint16_t k[HKV * D], v[HKV * D];
				make_kv(&rng, dtypes[s], 1, k, v);
				append_both(c, &m, ids, s, l, 1, k, v);
			}
		for (uint32_t s = 0; s < N_SESS; s++)
			for (uint32_t i = 0; i < HQ * D; i++)
				q[s][i] = (float)t_normal(&rng) * (i % D < 8 ? 4.0f : 1.0f);
		for (uint32_t l = 0; l < L; l++) {
			const struct sparq_attn_params *p_def[N_SESS] = { &defaults, &defaults };
			const struct sparq_attn_params *p_mix[N_SESS] = { &explicit_rk, &blend_on };
			const struct sparq_attn_params *p_dense[N_SESS] = { &dense, &blend_on };
			check_attend(c, &m, ids, l, q, p_def, "session defaults");
			check_attend(c, &m, ids, l, q, p_mix, "explicit r/k, blend on");
			check_attend(c, &m, ids, l, q, p_dense, "dense");
			checked += 3;
		}
	}

	/* select: the same positions, counts and alpha as the core's select mode */
	{
		static uint32_t sel[N_SESS][HKV][SEL_CAP], lsel[N_SESS][HKV][SEL_CAP];
		uint32_t n_sel[N_SESS][HKV], ln_sel[N_SESS][HKV];
		float alpha[N_SESS][HQ], lalpha[N_SESS][HQ];
		const struct sparq_attn_params *p[N_SESS] = { &explicit_rk, &blend_on };
		for (uint32_t s = 0; s < N_SESS; s++) {
			ret = sparq_select(c, ids[s], 1, q[s], p[s], &sel[s][0][0], SEL_CAP, n_sel[s],
					   alpha[s]);
			T_CHECK(ret == 0, "select: %d %s", ret, sparq_client_error(c));
		}
		attend_local(&m, 1, q, NULL, lalpha, p, SPARQ_ATTEND_SELECT, lsel, ln_sel);
		for (uint32_t s = 0; s < N_SESS; s++) {
			T_CHECK(memcmp(n_sel[s], ln_sel[s], sizeof(n_sel[s])) == 0, "n_sel differs");
			for (uint32_t h = 0; h < HKV; h++)
				T_CHECK(memcmp(sel[s][h], lsel[s][h], n_sel[s][h] * 4u) == 0,
					"session %u head %u: selection differs", s, h);
			T_CHECK(memcmp(alpha[s], lalpha[s], sizeof(alpha[s])) == 0,
				"session %u: select alpha differs", s);
		}

		/* gather the selected rows: the records the core's exact step read */
		for (uint32_t s = 0; s < N_SESS; s++)
			for (uint32_t h = 0; h < HKV; h++) {
				uint32_t n = n_sel[s][h];
				uint16_t *out = t_alloc((size_t)n * 2 * D * 2);
				uint16_t *lout = t_alloc((size_t)n * 2 * D * 2);
				ret = sparq_gather(c, ids[s], 1, h, sel[s][h], n, out);
				T_CHECK(ret == 0, "gather: %d %s", ret, sparq_client_error(c));
				T_CHECK(sparq_stream_gather(m.s[s][1][h], sel[s][h], n, lout) == 0,
					"in-process gather");
				T_CHECK(memcmp(out, lout, (size_t)n * 2 * D * 2) == 0,
					"session %u head %u: gathered records differ", s, h);
				free(out);
				free(lout);
			}
	}

	printf("%u batched attends over %u sessions (fp16 + bf16), select and gather: "
	       "bit-identical to the in-process core\n", checked, N_SESS);
	sparq_disconnect(c);
	for (uint32_t s = 0; s < N_SESS; s++)
		for (uint32_t l = 0; l < L; l++)
			for (uint32_t h = 0; h < HKV; h++)
				sparq_stream_destroy(m.s[s][l][h]);
	sparq_store_destroy(m.st);
	sparq_backend_close(m.be);
	T_CHECK(t_daemon_stop(&d) <= 0, "the daemon did not exit cleanly");
	t_daemon_cleanup(&d);
	printf("PASS\n");
	return T_EXIT_PASS;
}
