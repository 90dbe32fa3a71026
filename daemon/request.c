/*
 * request.c — decode + validate (request.h). Two front ends (a protobuf packet, a ring
 * submission) fill the same struct sd_req and share the checks below, so a field is
 * validated the same way whichever path it came by. Nothing here allocates beyond the
 * unpacked message (freed before returning) and the attend entries (freed by
 * sd_req_release); nothing here keeps state.
 *
 * Order of checks: shape first (op known, counts in range), then indices against the
 * session geometry, then every offset/length against the region. Lengths are computed
 * in uint64_t from factors bounded by the limits in request.h, so no product overflows
 * before sparq_shm_range sees it.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "request.h"
#include "sparq.pb-c.h"

static const char *const op_names[SD_OP_COUNT] = {
	[SD_OP_NONE] = "none",     [SD_OP_HELLO] = "hello",   [SD_OP_CREATE] = "create",
	[SD_OP_CLOSE] = "close",   [SD_OP_PARK] = "park",     [SD_OP_RESUME] = "resume",
	[SD_OP_DROP] = "drop",     [SD_OP_LIST] = "list",     [SD_OP_STATS] = "stats",
	[SD_OP_APPEND] = "append", [SD_OP_ATTEND] = "attend", [SD_OP_SELECT] = "select",
	[SD_OP_GATHER] = "gather", [SD_OP_NOP] = "nop",
	[SD_OP_CONFIG] = "config",
};

const char *sd_op_name(enum sd_op op)
{
	return (unsigned)op < SD_OP_COUNT ? op_names[op] : "unknown";
}

/* Records the failure in r and returns err, so checks read `return fail(r, ...)`. */
static int fail(struct sd_req *r, int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(r->why, sizeof(r->why), fmt, ap);
	va_end(ap);
	r->err = err;
	return err;
}

static int range(const struct sd_req_ctx *ctx, struct sd_req *r, const char *what,
		 uint64_t off, uint64_t len, uint64_t align, void **out)
{
	int ret = sparq_shm_range(ctx->shm, off, len, align, out);

	if (ret)
		return fail(r, ret, "%s: offset %llu length %llu outside the data area or misaligned",
			    what, (unsigned long long)off, (unsigned long long)len);
	return 0;
}

/* An optional output: offset 0 means absent. */
static int range_opt(const struct sd_req_ctx *ctx, struct sd_req *r, const char *what,
		     uint64_t off, uint64_t len, uint64_t align, void **out)
{
	*out = NULL;
	return off ? range(ctx, r, what, off, len, align, out) : 0;
}

int sd_params_check(const struct sd_params *p, uint32_t head_dim, uint32_t group,
		    const char **why)
{
	struct sparq_resolved res;

	if (p->use_defaults || p->dense) {
		if ((unsigned)p->p.blend > SPARQ_BLEND_OFF) {
			*why = "unknown blend mode";
			return -EINVAL;
		}
		return 0;
	}
	/* k from a ratio only grows with S, so what resolves at S = 1 resolves at every S */
	return sparq_params_resolve(&p->p, head_dim, group, 1, &res, why);
}

struct sparq_params sd_params_for(const struct sd_params *p, uint32_t head_dim, uint32_t S)
{
	struct sparq_params out = p->p;

	if (p->dense) {
		/* k >= S selects every visible row: the core's exact dense attention */
		out.r = head_dim;
		out.k = S ? S : 1;
		out.l = 0;
		out.ratio = 0;
	}
	return out;
}

static int geometry_check(struct sd_req *r, const struct sd_geometry *g)
{
	const char *why = "";

	if (g->n_layers == 0 || g->n_layers > SD_LAYERS_MAX)
		return fail(r, -EINVAL, "n_layers %u not in [1, %u]", g->n_layers, SD_LAYERS_MAX);
	if (g->n_kv_heads == 0 || g->n_kv_heads > SD_KV_HEADS_MAX)
		return fail(r, -EINVAL, "n_kv_heads %u not in [1, %u]", g->n_kv_heads,
			    SD_KV_HEADS_MAX);
	if ((uint64_t)g->n_layers * g->n_kv_heads > SD_STREAMS_MAX)
		return fail(r, -EINVAL, "n_layers * n_kv_heads above %u streams", SD_STREAMS_MAX);
	if (g->n_q_heads == 0 || g->n_q_heads % g->n_kv_heads)
		return fail(r, -EINVAL, "n_q_heads %u is not a positive multiple of n_kv_heads %u",
			    g->n_q_heads, g->n_kv_heads);
	if (sparq_geometry_check(g->head_dim, g->n_q_heads / g->n_kv_heads, g->dtype, &why))
		return fail(r, -EINVAL, "geometry: %s", why);
	return 0;
}

static int params_check(struct sd_req *r, const struct sd_params *p,
			const struct sd_geometry *g, const char *what)
{
	const char *why = "";

	if (sd_params_check(p, g->head_dim, g->n_q_heads / g->n_kv_heads, &why))
		return fail(r, -EINVAL, "%s: %s", what, why);
	return 0;
}

static int lookup(const struct sd_req_ctx *ctx, struct sd_req *r, uint64_t session,
		  struct sd_geometry *out)
{
	int ret = ctx->lookup ? ctx->lookup(ctx->lookup_user, session, out) : -ENOENT;

	if (ret == -ENOENT)
		return fail(r, -ENOENT, "no such session %llu", (unsigned long long)session);
	if (ret)
		return fail(r, ret, "session %llu unavailable", (unsigned long long)session);
	return 0;
}

static void copy_string(char *dst, size_t cap, const char *src)
{
	size_t n = src ? strnlen(src, cap - 1) : 0;

	memcpy(dst, src ? src : "", n);
	dst[n] = '\0';
}

/* ---- the checks both paths share, on already-decoded fields ---- */

static uint64_t esize(const struct sd_geometry *g)
{
	return sparq_dtype_size(g->dtype);
}

/* Append and gather address one layer of one session: its geometry into r->geo. */
static int lookup_layer(const struct sd_req_ctx *ctx, struct sd_req *r)
{
	int ret = lookup(ctx, r, r->session, &r->geo);

	if (ret)
		return ret;
	if (r->layer >= r->geo.n_layers)
		return fail(r, -EINVAL, "layer %u not below n_layers %u", r->layer, r->geo.n_layers);
	return 0;
}

static int check_append(const struct sd_req_ctx *ctx, struct sd_req *r, uint64_t k_off,
			uint64_t v_off)
{
	void *k, *v;
	uint64_t bytes;
	int ret;

	ret = lookup_layer(ctx, r);
	if (ret)
		return ret;
	if (r->n == 0 || r->n > SPARQ_POS_MAX)
		return fail(r, -EINVAL, "n_tokens %u not in [1, 2^31]", r->n);
	bytes = (uint64_t)r->n * r->geo.n_kv_heads * r->geo.head_dim * esize(&r->geo);
	ret = range(ctx, r, "append K", k_off, bytes, 2, &k);
	if (!ret)
		ret = range(ctx, r, "append V", v_off, bytes, 2, &v);
	if (ret)
		return ret;
	r->k = k;
	r->v = v;
	return 0;
}

static int check_gather(const struct sd_req_ctx *ctx, struct sd_req *r, uint64_t pos_off,
			uint64_t out_off)
{
	void *pos, *out;
	int ret;

	ret = lookup_layer(ctx, r);
	if (ret)
		return ret;
	if (r->kv_head >= r->geo.n_kv_heads)
		return fail(r, -EINVAL, "kv_head %u not below n_kv_heads %u", r->kv_head,
			    r->geo.n_kv_heads);
	if (r->n == 0)
		return fail(r, -EINVAL, "gather of 0 rows");
	ret = range(ctx, r, "gather pos", pos_off, (uint64_t)r->n * 4, 4, &pos);
	if (!ret)
		ret = range(ctx, r, "gather out", out_off,
			    (uint64_t)r->n * 2 * r->geo.head_dim * esize(&r->geo), 2, &out);
	if (ret)
		return ret;
	r->pos = pos;
	r->out = out;
	return 0;
}

/* Offsets of one attend/select entry as either path carries them. */
struct entry_offs {
	uint64_t q, y, alpha, sel, n_sel;
};

static int check_entry(const struct sd_req_ctx *ctx, struct sd_req *r, uint32_t i,
		       const struct entry_offs *o, bool select)
{
	struct sd_entry *e = &r->entries[i];
	uint64_t qbytes;
	void *p;
	int ret;

	r->bad_item = (int32_t)i;
	ret = lookup(ctx, r, e->session, &e->geo);
	if (ret)
		return ret;
	if (r->layer >= e->geo.n_layers)
		return fail(r, -EINVAL, "entry %u: layer %u not below n_layers %u", i, r->layer,
			    e->geo.n_layers);
	ret = params_check(r, &e->params, &e->geo, "params");
	if (ret)
		return ret;
	qbytes = (uint64_t)e->geo.n_q_heads * e->geo.head_dim * 4;
	ret = range(ctx, r, "q", o->q, qbytes, 4, &p);
	if (ret)
		return ret;
	e->q = p;
	ret = range_opt(ctx, r, "alpha", o->alpha, (uint64_t)e->geo.n_q_heads * 4, 4, &p);
	if (ret)
		return ret;
	e->alpha = p;
	if (!select) {
		ret = range(ctx, r, "y", o->y, qbytes, 4, &p);
		if (ret)
			return ret;
		e->y = p;
	} else {
		if (e->sel_cap == 0)
			return fail(r, -EINVAL, "sel_cap is 0");
		ret = range(ctx, r, "sel", o->sel, (uint64_t)e->geo.n_kv_heads * e->sel_cap * 4,
			    4, &p);
		if (ret)
			return ret;
		e->sel = p;
		ret = range(ctx, r, "n_sel", o->n_sel, (uint64_t)e->geo.n_kv_heads * 4, 4, &p);
		if (ret)
			return ret;
		e->n_sel = p;
	}
	r->bad_item = -1;
	return 0;
}

static int alloc_entries(struct sd_req *r, uint32_t n, bool select)
{
	if (n == 0 || n > SD_ATTEND_MAX)
		return fail(r, -EINVAL, "%u entries not in [1, %u]", n, SD_ATTEND_MAX);
	if (select && n != 1)
		return fail(r, -EINVAL, "select takes exactly 1 entry, not %u", n);
	r->entries = calloc(n, sizeof(*r->entries));
	if (!r->entries)
		return fail(r, -ENOMEM, "out of memory");
	r->n = n;
	return 0;
}

/*
 * Params as the ring carries them (the protobuf path converts to this layout first, so
 * both paths check the same way).
 */
static int from_shm_params(struct sd_req *r, const struct sparq_shm_params *sp,
			   struct sd_params *out)
{
	memset(out, 0, sizeof(*out));
	if (sp->use_defaults > 1 || sp->dense > 1 || sp->l_set > 1)
		return fail(r, -EINVAL, "params flags must be 0 or 1");
	if (sp->use_defaults) {
		out->use_defaults = true;
		return 0;
	}
	if (sp->blend > SPARQ_BLEND_OFF)
		return fail(r, -EINVAL, "unknown blend mode %u", sp->blend);
	if (!isfinite(sp->ratio))
		return fail(r, -EINVAL, "ratio is not finite");
	out->p.r = sp->r;
	out->p.k = sp->k;
	out->p.l = sp->l_set ? sp->l : -1;
	out->p.ratio = sp->ratio;
	out->p.blend = (enum sparq_blend)sp->blend;
	out->dense = sp->dense;
	return 0;
}

/* ---- protobuf path ---- */

static int from_pb_params(struct sd_req *r, const Sparq__V1__Params *pb, struct sd_params *out)
{
	struct sparq_shm_params sp = { .use_defaults = 1 };

	/* checked here: the enum is wider than the ring's byte, which would wrap */
	if (pb && (unsigned)pb->blend > SPARQ__V1__BLEND__BLEND_OFF)
		return fail(r, -EINVAL, "unknown blend mode %d", (int)pb->blend);
	if (pb)
		sp = (struct sparq_shm_params){ .r = pb->r, .k = pb->k, .l = pb->l,
						.ratio = pb->ratio, .blend = (uint8_t)pb->blend,
						.dense = pb->dense != 0, .l_set = pb->l_set != 0 };
	return from_shm_params(r, &sp, out);
}

static int from_pb_geometry(struct sd_req *r, const Sparq__V1__Geometry *pb)
{
	if (!pb)
		return fail(r, -EINVAL, "create without a geometry");
	if (pb->dtype != SPARQ__V1__DTYPE__DTYPE_F16 && pb->dtype != SPARQ__V1__DTYPE__DTYPE_BF16)
		return fail(r, -EINVAL, "dtype %d is neither f16 nor bf16", (int)pb->dtype);
	r->geo = (struct sd_geometry){ .n_layers = pb->n_layers, .n_q_heads = pb->n_q_heads,
				       .n_kv_heads = pb->n_kv_heads, .head_dim = pb->head_dim,
				       .dtype = (enum sparq_dtype)pb->dtype };
	return geometry_check(r, &r->geo);
}

static int need_session_ref(struct sd_req *r, const Sparq__V1__SessionRef *ref)
{
	if (!ref)
		return fail(r, -EPROTO, "%s without a session", sd_op_name(r->op));
	r->session = ref->session;
	return 0;
}

static int decode_pb_attend(const struct sd_req_ctx *ctx, struct sd_req *r,
			    const Sparq__V1__Attend *a)
{
	int ret;

	r->layer = a->layer;
	if (a->n_entries > SD_ATTEND_MAX)
		return fail(r, -EINVAL, "%zu entries above %u", a->n_entries, SD_ATTEND_MAX);
	ret = alloc_entries(r, (uint32_t)a->n_entries, false);
	for (uint32_t i = 0; i < r->n && !ret; i++) {
		const Sparq__V1__AttendEntry *pe = a->entries[i];
		struct entry_offs o = { .q = pe->q_off, .y = pe->y_off, .alpha = pe->alpha_off };

		r->entries[i].session = pe->session;
		ret = from_pb_params(r, pe->params, &r->entries[i].params);
		if (ret)
			r->bad_item = (int32_t)i;
		else
			ret = check_entry(ctx, r, i, &o, false);
	}
	return ret;
}

static int decode_pb_select(const struct sd_req_ctx *ctx, struct sd_req *r,
			    const Sparq__V1__Select *s)
{
	struct entry_offs o = { .q = s->q_off, .alpha = s->alpha_off, .sel = s->sel_off,
				.n_sel = s->n_sel_off };
	int ret;

	r->layer = s->layer;
	ret = alloc_entries(r, 1, true);
	if (ret)
		return ret;
	r->entries[0].session = s->session;
	r->entries[0].sel_cap = s->sel_cap;
	ret = from_pb_params(r, s->params, &r->entries[0].params);
	if (ret)
		return ret;
	return check_entry(ctx, r, 0, &o, true);
}

static int decode_pb_body(const struct sd_req_ctx *ctx, struct sd_req *r,
			  const Sparq__V1__Request *m)
{
	int ret;

	switch (m->body_case) {
	case SPARQ__V1__REQUEST__BODY_HELLO:
		r->op = SD_OP_HELLO;
		if (ctx->hello_done)
			return fail(r, -EPROTO, "second hello on one connection");
		r->version = m->hello->protocol_version;
		if (r->version != SPARQ_PROTOCOL_VERSION)
			return fail(r, -EPROTONOSUPPORT, "protocol version %u, this daemon speaks %u",
				    r->version, SPARQ_PROTOCOL_VERSION);
		copy_string(r->name, sizeof(r->name), m->hello->client_name);
		r->shm_bytes = m->hello->shm_bytes;
		return 0;
	case SPARQ__V1__REQUEST__BODY_CREATE:
		r->op = SD_OP_CREATE;
		break;
	case SPARQ__V1__REQUEST__BODY_CLOSE:
		r->op = SD_OP_CLOSE;
		break;
	case SPARQ__V1__REQUEST__BODY_PARK:
		r->op = SD_OP_PARK;
		break;
	case SPARQ__V1__REQUEST__BODY_DROP:
		r->op = SD_OP_DROP;
		break;
	case SPARQ__V1__REQUEST__BODY_RESUME:
		r->op = SD_OP_RESUME;
		break;
	case SPARQ__V1__REQUEST__BODY_LIST:
		r->op = SD_OP_LIST;
		break;
	case SPARQ__V1__REQUEST__BODY_STATS:
		r->op = SD_OP_STATS;
		break;
	case SPARQ__V1__REQUEST__BODY_CONFIG:
		r->op = SD_OP_CONFIG;
		break;
	case SPARQ__V1__REQUEST__BODY_APPEND:
		r->op = SD_OP_APPEND;
		break;
	case SPARQ__V1__REQUEST__BODY_ATTEND:
		r->op = SD_OP_ATTEND;
		break;
	case SPARQ__V1__REQUEST__BODY_SELECT:
		r->op = SD_OP_SELECT;
		break;
	case SPARQ__V1__REQUEST__BODY_GATHER:
		r->op = SD_OP_GATHER;
		break;
	default:
		return fail(r, -EPROTO, "request without a known body (case %d)", (int)m->body_case);
	}
	if (!ctx->hello_done)
		return fail(r, -EPROTO, "%s before hello", sd_op_name(r->op));

	switch (r->op) {
	case SD_OP_CREATE:
		ret = from_pb_geometry(r, m->create->geometry);
		if (!ret)
			ret = from_pb_params(r, m->create->defaults, &r->defaults);
		if (ret)
			return ret;
		if (r->defaults.use_defaults)
			return fail(r, -EINVAL, "create without default parameters");
		ret = params_check(r, &r->defaults, &r->geo, "defaults");
		if (ret)
			return ret;
		if (m->create->label && strlen(m->create->label) >= SD_LABEL_MAX)
			return fail(r, -EINVAL, "label longer than %u bytes", SD_LABEL_MAX - 1);
		copy_string(r->label, sizeof(r->label), m->create->label);
		r->persistent = m->create->persistent;
		return 0;
	case SD_OP_CLOSE:
		return need_session_ref(r, m->close);
	case SD_OP_PARK:
		return need_session_ref(r, m->park);
	case SD_OP_DROP:
		return need_session_ref(r, m->drop);
	case SD_OP_RESUME:
		r->session = m->resume->session;
		r->to_ram = m->resume->to_ram;
		return 0;
	case SD_OP_LIST:
	case SD_OP_STATS:
	case SD_OP_CONFIG:
		return 0;
	case SD_OP_APPEND:
		r->session = m->append->session;
		r->layer = m->append->layer;
		r->n = m->append->n_tokens;
		return check_append(ctx, r, m->append->k_off, m->append->v_off);
	case SD_OP_ATTEND:
		return decode_pb_attend(ctx, r, m->attend);
	case SD_OP_SELECT:
		return decode_pb_select(ctx, r, m->select);
	case SD_OP_GATHER:
		r->session = m->gather->session;
		r->layer = m->gather->layer;
		r->kv_head = m->gather->kv_head;
		r->n = m->gather->n;
		return check_gather(ctx, r, m->gather->pos_off, m->gather->out_off);
	default:
		return fail(r, -EPROTO, "unexpected op");
	}
}

int sd_req_decode_msg(const struct sd_req_ctx *ctx, const uint8_t *buf, size_t len,
		      struct sd_req *out)
{
	Sparq__V1__Request *m;
	int ret;

	memset(out, 0, sizeof(*out));
	out->bad_item = -1;
	m = sparq__v1__request__unpack(NULL, len, buf);
	if (!m)
		return fail(out, -EPROTO, "malformed request (%zu bytes do not unpack)", len);
	out->id = m->id;
	ret = decode_pb_body(ctx, out, m);
	sparq__v1__request__free_unpacked(m, NULL);
	return ret;
}

/* ---- ring path ---- */

static int decode_sqe_entries(const struct sd_req_ctx *ctx, struct sd_req *r, uint64_t off,
			      bool select)
{
	struct sparq_attend_desc d;
	void *p;
	int ret;

	ret = alloc_entries(r, r->n, select);
	if (ret)
		return ret;
	ret = range(ctx, r, "attend descriptors", off, (uint64_t)r->n * sizeof(d), 8, &p);
	for (uint32_t i = 0; i < r->n && !ret; i++) {
		/* one private copy: the client may rewrite the descriptor while we look */
		memcpy(&d, (const uint8_t *)p + (size_t)i * sizeof(d), sizeof(d));
		struct entry_offs o = { .q = d.q_off, .y = d.y_off, .alpha = d.alpha_off,
					.sel = d.sel_off, .n_sel = d.n_sel_off };

		r->bad_item = (int32_t)i;
		if (d.reserved)
			return fail(r, -EINVAL, "entry %u: reserved field is not 0", i);
		r->entries[i].session = d.session;
		r->entries[i].sel_cap = d.sel_cap;
		ret = from_shm_params(r, &d.params, &r->entries[i].params);
		if (!ret)
			ret = check_entry(ctx, r, i, &o, select);
	}
	return ret;
}

int sd_req_decode_sqe(const struct sd_req_ctx *ctx, const struct sparq_sqe *sqe,
		      struct sd_req *out)
{
	memset(out, 0, sizeof(*out));
	out->bad_item = -1;
	out->ring = true;
	out->id = sqe->user_data;
	if (!ctx->hello_done || !ctx->shm)
		return fail(out, -EPROTO, "ring submission before hello");
	if (sqe->flags || sqe->reserved || sqe->reserved2)
		return fail(out, -EINVAL, "flags or reserved fields are not 0");
	out->session = sqe->session;
	out->layer = sqe->layer;
	out->kv_head = sqe->kv_head;
	out->n = sqe->n;
	switch (sqe->op) {
	case SPARQ_OP_NOP:
		out->op = SD_OP_NOP;
		return 0;
	case SPARQ_OP_APPEND:
		out->op = SD_OP_APPEND;
		return check_append(ctx, out, sqe->off[0], sqe->off[1]);
	case SPARQ_OP_ATTEND:
		out->op = SD_OP_ATTEND;
		return decode_sqe_entries(ctx, out, sqe->off[0], false);
	case SPARQ_OP_SELECT:
		out->op = SD_OP_SELECT;
		return decode_sqe_entries(ctx, out, sqe->off[0], true);
	case SPARQ_OP_GATHER:
		out->op = SD_OP_GATHER;
		return check_gather(ctx, out, sqe->off[0], sqe->off[1]);
	default:
		return fail(out, -EINVAL, "unknown ring op %u", sqe->op);
	}
}

void sd_req_release(struct sd_req *r)
{
	free(r->entries);
	r->entries = NULL;
}
