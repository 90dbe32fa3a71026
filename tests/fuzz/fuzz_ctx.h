/*
 * fuzz_ctx.h — what the two request fuzzers share: a synthetic client (a real shared
 * region made by sparq_shm_create, a session table answered by the lookup callback the
 * daemon passes to the decoders) and the oracle applied to every decoded request.
 *
 * The oracle states what the executor relies on after sd_req_decode_*: on success
 * every pointer and the full length derived from the session's geometry lie inside the
 * client's data area (checked by arithmetic, then touched at both ends), every index is
 * below its geometry bound, and parameters that passed the check resolve for any stream
 * length; on failure the code is one the header documents, with a reason. A violated
 * rule aborts, which libFuzzer reports as a crash with the input that caused it.
 */
#ifndef SPARQ_FUZZ_CTX_H
#define SPARQ_FUZZ_CTX_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "request.h"
#include "shm.h"
#include "sparq.h"

/* The synthetic client's region: the smallest data area, 8-entry rings (data_off 12288). */
#define FUZZ_DATA_BYTES (1u << 20)
#define FUZZ_RING_ENTRIES 8u

/* Sessions the lookup knows; ids match the seeds (tests/fuzz/gen_corpus.py). */
struct fuzz_session {
	uint64_t id;
	int answer;                 /* 0, or the error the lookup returns */
	struct sd_geometry geo;
};

static const struct fuzz_session fuzz_sessions[] = {
	{ 1, 0, { 2, 4, 2, 64, SPARQ_DTYPE_F16 } },
	{ 2, 0, { 1, 8, 8, 128, SPARQ_DTYPE_BF16 } },
	{ 3, 0, { 4, 32, 1, 8, SPARQ_DTYPE_F16 } },           /* g = 32, d = 8 */
	{ 4, -EBUSY, { 1, 1, 1, 64, SPARQ_DTYPE_F16 } },      /* a session being closed */
	{ 1048577, 0, { 32, 32, 8, 128, SPARQ_DTYPE_BF16 } }, /* the golden messages' ids */
	{ 1048578, 0, { 1, 4, 4, 64, SPARQ_DTYPE_F16 } },
};

static struct sparq_shm fuzz_region;

static inline void fuzz_fail(const char *why, const struct sd_req *r)
{
	fprintf(stderr, "fuzz oracle: %s (op %s, err %d, why \"%s\")\n", why,
		r ? sd_op_name(r->op) : "-", r ? r->err : 0, r ? r->why : "");
	abort();
}

static inline int fuzz_lookup(void *user, uint64_t session, struct sd_geometry *out)
{
	(void)user;
	for (size_t i = 0; i < sizeof(fuzz_sessions) / sizeof(fuzz_sessions[0]); i++) {
		if (fuzz_sessions[i].id == session) {
			if (fuzz_sessions[i].answer)
				return fuzz_sessions[i].answer;
			*out = fuzz_sessions[i].geo;
			return 0;
		}
	}
	return -ENOENT;
}

static inline const struct sparq_shm *fuzz_region_get(void)
{
	const char *why = "";

	if (!fuzz_region.base &&
	    sparq_shm_create(FUZZ_DATA_BYTES, FUZZ_RING_ENTRIES, &fuzz_region, &why)) {
		fprintf(stderr, "sparq_shm_create: %s\n", why);
		abort();
	}
	return &fuzz_region;
}

static inline void fuzz_touch(const volatile uint8_t *p)
{
	(void)*p;
}

/* [p, p + len) lies in the data area; then both ends are read. */
static inline void fuzz_in_data(const struct sd_req *r, const void *p, uint64_t len,
				uint64_t align, const char *what)
{
	const struct sparq_shm *s = &fuzz_region;
	const uint8_t *b = p, *lo = s->base + s->data_off;

	if (!p)
		fuzz_fail(what, r);
	if (b < lo || (uint64_t)(b - lo) > s->data_bytes || len > s->data_bytes - (uint64_t)(b - lo))
		fuzz_fail(what, r);
	if ((uintptr_t)b % align)
		fuzz_fail(what, r);
	if (len) {
		fuzz_touch(b);
		fuzz_touch(b + len - 1);
	}
}

static inline void fuzz_geometry_ok(const struct sd_req *r, const struct sd_geometry *g)
{
	const char *why = "";

	if (!g->n_layers || g->n_layers > SD_LAYERS_MAX || !g->n_kv_heads ||
	    g->n_kv_heads > SD_KV_HEADS_MAX || g->n_q_heads % g->n_kv_heads ||
	    (uint64_t)g->n_layers * g->n_kv_heads > SD_STREAMS_MAX || !g->n_q_heads ||
	    sparq_geometry_check(g->head_dim, g->n_q_heads / g->n_kv_heads, g->dtype, &why))
		fuzz_fail("accepted an invalid geometry", r);
}

/* Parameters that passed the decoder resolve for every stream length the core takes. */
static inline void fuzz_params_ok(const struct sd_req *r, const struct sd_params *p,
				  const struct sd_geometry *g)
{
	static const uint64_t lengths[] = { 1, 2, 127, 128, 129, 4096, 1u << 20, SPARQ_POS_MAX };
	const uint32_t group = g->n_q_heads / g->n_kv_heads;

	if (p->use_defaults)
		return;
	for (size_t i = 0; i < sizeof(lengths) / sizeof(lengths[0]); i++) {
		struct sparq_params sp = sd_params_for(p, g->head_dim, (uint32_t)lengths[i]);
		struct sparq_resolved res;
		const char *why = "";

		if (sparq_params_resolve(&sp, g->head_dim, group, lengths[i], &res, &why)) {
			fprintf(stderr, "S = %llu: %s\n", (unsigned long long)lengths[i], why);
			fuzz_fail("accepted parameters that do not resolve", r);
		}
		if (res.r == 0 || res.r > g->head_dim || res.k == 0 || res.l >= res.k)
			fuzz_fail("parameters resolved out of range", r);
	}
}

static inline const struct fuzz_session *fuzz_session_of(uint64_t id)
{
	for (size_t i = 0; i < sizeof(fuzz_sessions) / sizeof(fuzz_sessions[0]); i++)
		if (fuzz_sessions[i].id == id && !fuzz_sessions[i].answer)
			return &fuzz_sessions[i];
	return NULL;
}

static inline void fuzz_check_session_geo(const struct sd_req *r, uint64_t id,
					  const struct sd_geometry *geo)
{
	const struct fuzz_session *s = fuzz_session_of(id);

	if (!s || memcmp(&s->geo, geo, sizeof(*geo)))
		fuzz_fail("request bound to a session the lookup did not answer", r);
}

/*
 * The oracle. ret is what sd_req_decode_* returned for r. With SPARQ_FUZZ_VERBOSE set
 * in the environment each verdict is printed (to read what a seed or crash input does).
 */
static inline void fuzz_check(const struct sd_req *r, int ret, bool hello_done)
{
	static int verbose = -1;

	if (verbose < 0)
		verbose = getenv("SPARQ_FUZZ_VERBOSE") != NULL;
	if (verbose)
		fprintf(stderr, "%s %-6s -> %d %s\n", hello_done ? "after hello: " : "before hello:",
			sd_op_name(r->op), ret, r->why);
	if (ret) {
		switch (ret) {
		case -EPROTO: case -EPROTONOSUPPORT: case -EINVAL: case -ERANGE:
		case -ENOENT: case -ENOMEM: case -EBUSY:
			break;
		default:
			fuzz_fail("undocumented error code", r);
		}
		if (r->err != ret || !r->why[0] || !memchr(r->why, '\0', sizeof(r->why)))
			fuzz_fail("failure without its code or reason", r);
		if (r->bad_item < -1 || (r->bad_item >= 0 && (uint32_t)r->bad_item >= r->n))
			fuzz_fail("bad_item names no entry of the request", r);
		if (r->bad_item >= 0 && r->op != SD_OP_ATTEND && r->op != SD_OP_SELECT)
			fuzz_fail("bad_item set outside attend/select", r);
		return;
	}
	if (r->err || r->bad_item != -1)
		fuzz_fail("success with an error recorded", r);
	if (!hello_done && r->op != SD_OP_HELLO)
		fuzz_fail("request accepted before hello", r);
	if (hello_done && r->op == SD_OP_HELLO)
		fuzz_fail("second hello accepted", r);

	switch (r->op) {
	case SD_OP_HELLO:
		if (r->version != SPARQ_PROTOCOL_VERSION || !memchr(r->name, '\0', sizeof(r->name)))
			fuzz_fail("hello accepted with a bad version or name", r);
		break;
	case SD_OP_CREATE:
		fuzz_geometry_ok(r, &r->geo);
		if (r->defaults.use_defaults)
			fuzz_fail("create without defaults accepted", r);
		fuzz_params_ok(r, &r->defaults, &r->geo);
		if (!memchr(r->label, '\0', sizeof(r->label)))
			fuzz_fail("label not terminated", r);
		break;
	case SD_OP_APPEND: {
		uint64_t bytes = (uint64_t)r->n * r->geo.n_kv_heads * r->geo.head_dim *
				 sparq_dtype_size(r->geo.dtype);
		fuzz_check_session_geo(r, r->session, &r->geo);
		if (r->layer >= r->geo.n_layers || r->n == 0 || r->n > SPARQ_POS_MAX)
			fuzz_fail("append index out of range", r);
		fuzz_in_data(r, r->k, bytes, 2, "append K outside the data area");
		fuzz_in_data(r, r->v, bytes, 2, "append V outside the data area");
		break;
	}
	case SD_OP_GATHER:
		fuzz_check_session_geo(r, r->session, &r->geo);
		if (r->layer >= r->geo.n_layers || r->kv_head >= r->geo.n_kv_heads || r->n == 0)
			fuzz_fail("gather index out of range", r);
		fuzz_in_data(r, r->pos, (uint64_t)r->n * 4, 4, "gather pos outside the data area");
		fuzz_in_data(r, r->out,
			     (uint64_t)r->n * 2 * r->geo.head_dim * sparq_dtype_size(r->geo.dtype), 2,
			     "gather out outside the data area");
		break;
	case SD_OP_ATTEND:
	case SD_OP_SELECT:
		if (!r->entries || r->n == 0 || r->n > SD_ATTEND_MAX ||
		    (r->op == SD_OP_SELECT && r->n != 1))
			fuzz_fail("attend entry count out of range", r);
		for (uint32_t i = 0; i < r->n; i++) {
			const struct sd_entry *e = &r->entries[i];
			uint64_t qbytes = (uint64_t)e->geo.n_q_heads * e->geo.head_dim * 4;

			fuzz_check_session_geo(r, e->session, &e->geo);
			if (r->layer >= e->geo.n_layers)
				fuzz_fail("attend layer out of range", r);
			fuzz_params_ok(r, &e->params, &e->geo);
			fuzz_in_data(r, e->q, qbytes, 4, "q outside the data area");
			if (e->alpha)
				fuzz_in_data(r, e->alpha, (uint64_t)e->geo.n_q_heads * 4, 4,
					     "alpha outside the data area");
			if (r->op == SD_OP_ATTEND) {
				fuzz_in_data(r, e->y, qbytes, 4, "y outside the data area");
			} else {
				if (e->sel_cap == 0)
					fuzz_fail("select with sel_cap 0 accepted", r);
				fuzz_in_data(r, e->sel, (uint64_t)e->geo.n_kv_heads * e->sel_cap * 4, 4,
					     "sel outside the data area");
				fuzz_in_data(r, e->n_sel, (uint64_t)e->geo.n_kv_heads * 4, 4,
					     "n_sel outside the data area");
			}
		}
		break;
	case SD_OP_CLOSE: case SD_OP_PARK: case SD_OP_RESUME: case SD_OP_DROP:
	case SD_OP_LIST: case SD_OP_STATS: case SD_OP_NOP: case SD_OP_CONFIG:
		break;
	default:
		fuzz_fail("success with an unknown op", r);
	}
}

#endif
