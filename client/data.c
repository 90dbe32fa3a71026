/*
 * data.c — libsparq's data calls (append, attend, select, gather, ping): tensors are
 * copied into the shared data area, described by one ring descriptor, and the results
 * copied back out once the completion arrives (DESIGN.md §5: no socket round trip and
 * no tensor through the kernel on a decode step).
 *
 * Requests larger than the data area: an append or a gather is split into pieces that
 * fit, one ring request each, in order. The daemon applies each append piece
 * atomically; the split append checks every K/V value for NaN/Inf before sending
 * anything, so bad data is refused whole, and only a failure inside the daemon
 * (tiers full, I/O) can leave the pieces before it appended — the error message then
 * says how many tokens went in. A batched attend or a select must fit in one request
 * (-E2BIG): splitting it would cost the very round trips batching saves.
 */
#include <errno.h>
#include <string.h>

#include "client-impl.h"

void sparq_client_params_to_shm(const struct sparq_attn_params *p, struct sparq_shm_params *out)
{
	memset(out, 0, sizeof(*out));
	if (!p) {
		out->use_defaults = 1;
		return;
	}
	out->r = p->r;
	out->k = p->k;
	out->l = p->l;
	out->l_set = p->l >= 0;
	out->ratio = p->ratio;
	out->blend = (uint8_t)p->blend;
	out->dense = p->dense;
}

static size_t dtype_bytes(const struct sparq_geometry *g)
{
	(void)g; /* both storage dtypes are 16-bit */
	return 2;
}

/* Whether any of n 16-bit values is NaN or Inf in dtype. */
static bool any_nonfinite(const uint16_t *x, size_t n, enum sparq_client_dtype dt)
{
	const uint16_t mask = dt == SPARQ_CLIENT_BF16 ? 0x7f80u : 0x7c00u;
	uint16_t hit = 0;

	/* branch-free over the whole array: this runs over a whole prefill */
	for (size_t i = 0; i < n; i++)
		hit |= (uint16_t)((x[i] & mask) == mask);
	return hit != 0;
}

static int cqe_fail(struct sparq_client *c, const struct sparq_cqe *cqe, const char *op)
{
	return sparq_client_fail(c, cqe->res, "%s: %s", op,
				 cqe->why[0] ? cqe->why : "the daemon refused the request");
}

/*
 * Bytes of the data area one piece of a split append or gather may fill: a piece holds
 * two arrays, and each may lose up to SPARQ_CLIENT_ALIGN to alignment.
 */
static uint64_t piece_room(const struct sparq_client *c)
{
	if (c->shm.data_bytes <= 2 * SPARQ_CLIENT_ALIGN)
		return 0;
	return c->shm.data_bytes - 2 * SPARQ_CLIENT_ALIGN;
}

int sparq_append(struct sparq_client *c, uint64_t id, uint32_t layer, uint32_t n_tokens,
		 const uint16_t *k, const uint16_t *v)
{
	struct sparq_geometry g;
	uint32_t done = 0;
	int ret;

	if (!c)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	if (!k || !v || n_tokens == 0) {
		ret = sparq_client_fail(c, -EINVAL, "append: %s", n_tokens ? "k and v are required"
									 : "no tokens to append");
		goto out;
	}
	ret = sparq_client_geometry_locked(c, id, &g);
	if (ret)
		goto out;
	if (layer >= g.n_layers) {
		ret = sparq_client_fail(c, -EINVAL, "append: layer %u of a %u-layer session", layer,
					g.n_layers);
		goto out;
	}
	/* one token of K (or V): [n_kv_heads][head_dim] */
	const uint64_t tok = (uint64_t)g.n_kv_heads * g.head_dim * dtype_bytes(&g);
	uint64_t per_piece = piece_room(c) / (2 * tok);
	if (per_piece == 0) {
		ret = sparq_client_fail(c, -E2BIG, "append: one token does not fit the shared area");
		goto out;
	}
	if (per_piece > n_tokens)
		per_piece = n_tokens;
	if (per_piece < n_tokens) {
		const size_t elems = (size_t)n_tokens * g.n_kv_heads * g.head_dim;
		if (any_nonfinite(k, elems, g.dtype) || any_nonfinite(v, elems, g.dtype)) {
			ret = sparq_client_fail(c, -EINVAL, "append: NaN or Inf in %s; nothing appended",
						any_nonfinite(k, elems, g.dtype) ? "k" : "v");
			goto out;
		}
	}
	while (done < n_tokens) {
		uint32_t n = n_tokens - done < per_piece ? n_tokens - done : (uint32_t)per_piece;
		struct sparq_sqe sqe = { .op = SPARQ_OP_APPEND, .session = id, .layer = layer, .n = n };
		struct sparq_cqe cqe;
		void *pk, *pv;

		sparq_client_bump_reset(c);
		ret = sparq_client_alloc(c, n * tok, &sqe.off[0], &pk);
		if (!ret)
			ret = sparq_client_alloc(c, n * tok, &sqe.off[1], &pv);
		if (ret)
			goto out;
		memcpy(pk, (const uint8_t *)k + done * tok, n * tok);
		memcpy(pv, (const uint8_t *)v + done * tok, n * tok);
		ret = sparq_client_submit_locked(c, &sqe, &cqe);
		if (ret)
			goto out;
		if (cqe.res < 0) {
			ret = done ? sparq_client_fail(c, cqe.res, "append: %s (the first %u of %u "
						       "tokens were appended)", cqe.why, done, n_tokens)
				   : cqe_fail(c, &cqe, "append");
			goto out;
		}
		done += n;
	}
	ret = 0;
out:
	pthread_mutex_unlock(&c->lock);
	return ret;
}

int sparq_attend(struct sparq_client *c, uint32_t layer, const struct sparq_attend_req *reqs,
		 uint32_t n, int32_t *bad)
{
	struct sparq_sqe sqe = { .op = SPARQ_OP_ATTEND, .layer = layer, .n = n };
	struct sparq_attend_desc *desc;
	struct sparq_cqe cqe;
	void *p;
	int ret;

	if (bad)
		*bad = -1;
	if (!c)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	if (!reqs || n == 0) {
		ret = sparq_client_fail(c, -EINVAL, "attend: no requests");
		goto out;
	}
	sparq_client_bump_reset(c);
	ret = sparq_client_alloc(c, (uint64_t)n * sizeof(*desc), &sqe.off[0], &p);
	if (ret)
		goto out;
	desc = p;
	for (uint32_t i = 0; i < n; i++) {
		const struct sparq_attend_req *r = &reqs[i];
		struct sparq_attend_desc dsc = { .session = r->session };
		struct sparq_geometry g = { 0 };
		void *pq = NULL;

		ret = sparq_client_geometry_locked(c, r->session, &g);
		if (!ret && (!r->q || !r->y))
			ret = sparq_client_fail(c, -EINVAL, "attend: q and y are required");
		const uint64_t qb = (uint64_t)g.n_q_heads * g.head_dim * sizeof(float);
		if (!ret)
			ret = sparq_client_alloc(c, qb, &dsc.q_off, &pq);
		if (!ret)
			ret = sparq_client_alloc(c, qb, &dsc.y_off, &p);
		if (!ret && r->alpha)
			ret = sparq_client_alloc(c, (uint64_t)g.n_q_heads * sizeof(float),
						 &dsc.alpha_off, &p);
		if (ret) {
			if (bad)
				*bad = (int32_t)i;
			goto out;
		}
		memcpy(pq, r->q, qb);
		sparq_client_params_to_shm(r->params, &dsc.params);
		desc[i] = dsc;
	}
	ret = sparq_client_submit_locked(c, &sqe, &cqe);
	if (ret)
		goto out;
	if (cqe.res < 0) {
		if (bad)
			*bad = cqe.bad_item;
		ret = cqe_fail(c, &cqe, "attend");
		goto out;
	}
	/* desc[] lives in the shared area, but we wrote it: its offsets are our own */
	for (uint32_t i = 0; i < n; i++) {
		struct sparq_geometry g = { 0 };
		(void)sparq_client_geometry_locked(c, reqs[i].session, &g); /* cached above */
		const uint64_t qb = (uint64_t)g.n_q_heads * g.head_dim * sizeof(float);
		(void)sparq_shm_range(&c->shm, desc[i].y_off, qb, 1, &p);
		memcpy(reqs[i].y, p, qb);
		if (reqs[i].alpha) {
			(void)sparq_shm_range(&c->shm, desc[i].alpha_off,
					      (uint64_t)g.n_q_heads * sizeof(float), 1, &p);
			memcpy(reqs[i].alpha, p, (size_t)g.n_q_heads * sizeof(float));
		}
	}
	ret = 0;
out:
	pthread_mutex_unlock(&c->lock);
	return ret;
}

int sparq_select(struct sparq_client *c, uint64_t id, uint32_t layer, const float *q,
		 const struct sparq_attn_params *params, uint32_t *sel, uint32_t sel_cap,
		 uint32_t *n_sel, float *alpha)
{
	struct sparq_sqe sqe = { .op = SPARQ_OP_SELECT, .layer = layer, .session = id, .n = 1 };
	struct sparq_attend_desc dsc = { .session = id, .sel_cap = sel_cap };
	struct sparq_geometry g;
	struct sparq_cqe cqe;
	void *pd, *pq, *psel, *pn, *pa = NULL;
	int ret;

	if (!c)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	if (!q || !sel || !n_sel || sel_cap == 0) {
		ret = sparq_client_fail(c, -EINVAL, "select: q, sel (sel_cap > 0) and n_sel are "
					"required");
		goto out;
	}
	ret = sparq_client_geometry_locked(c, id, &g);
	if (ret)
		goto out;
	const uint64_t qb = (uint64_t)g.n_q_heads * g.head_dim * sizeof(float);
	const uint64_t selb = (uint64_t)g.n_kv_heads * sel_cap * sizeof(uint32_t);
	sparq_client_bump_reset(c);
	ret = sparq_client_alloc(c, sizeof(dsc), &sqe.off[0], &pd);
	if (!ret)
		ret = sparq_client_alloc(c, qb, &dsc.q_off, &pq);
	if (!ret)
		ret = sparq_client_alloc(c, selb, &dsc.sel_off, &psel);
	if (!ret)
		ret = sparq_client_alloc(c, (uint64_t)g.n_kv_heads * sizeof(uint32_t),
					 &dsc.n_sel_off, &pn);
	if (!ret && alpha)
		ret = sparq_client_alloc(c, (uint64_t)g.n_q_heads * sizeof(float), &dsc.alpha_off,
					 &pa);
	if (ret)
		goto out;
	memcpy(pq, q, qb);
	sparq_client_params_to_shm(params, &dsc.params);
	memcpy(pd, &dsc, sizeof(dsc));
	ret = sparq_client_submit_locked(c, &sqe, &cqe);
	if (ret)
		goto out;
	if (cqe.res < 0) {
		ret = cqe_fail(c, &cqe, "select");
		goto out;
	}
	memcpy(sel, psel, selb);
	memcpy(n_sel, pn, (size_t)g.n_kv_heads * sizeof(uint32_t));
	if (alpha)
		memcpy(alpha, pa, (size_t)g.n_q_heads * sizeof(float));
	ret = 0;
out:
	pthread_mutex_unlock(&c->lock);
	return ret;
}

int sparq_gather(struct sparq_client *c, uint64_t id, uint32_t layer, uint32_t kv_head,
		 const uint32_t *pos, uint32_t n, uint16_t *out)
{
	struct sparq_geometry g;
	uint32_t done = 0;
	int ret;

	if (!c)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	if (!pos || !out || n == 0) {
		ret = sparq_client_fail(c, -EINVAL, "gather: %s", n ? "pos and out are required"
								      : "no positions");
		goto out;
	}
	ret = sparq_client_geometry_locked(c, id, &g);
	if (ret)
		goto out;
	if (layer >= g.n_layers || kv_head >= g.n_kv_heads) {
		ret = sparq_client_fail(c, -EINVAL, "gather: layer %u, KV head %u outside a session "
					"of %u layers, %u KV heads", layer, kv_head, g.n_layers,
					g.n_kv_heads);
		goto out;
	}
	/* one record: the K row then the V row */
	const uint64_t rec = 2ull * g.head_dim * dtype_bytes(&g);
	uint64_t per_piece = piece_room(c) / (rec + sizeof(uint32_t));
	if (per_piece > n)
		per_piece = n;
	while (done < n) {
		uint32_t m = n - done < per_piece ? n - done : (uint32_t)per_piece;
		struct sparq_sqe sqe = { .op = SPARQ_OP_GATHER, .session = id, .layer = layer,
					 .kv_head = kv_head, .n = m };
		struct sparq_cqe cqe;
		void *pp, *po;

		sparq_client_bump_reset(c);
		ret = sparq_client_alloc(c, (uint64_t)m * sizeof(uint32_t), &sqe.off[0], &pp);
		if (!ret)
			ret = sparq_client_alloc(c, m * rec, &sqe.off[1], &po);
		if (ret)
			goto out;
		memcpy(pp, pos + done, (size_t)m * sizeof(uint32_t));
		ret = sparq_client_submit_locked(c, &sqe, &cqe);
		if (ret)
			goto out;
		if (cqe.res < 0) {
			ret = cqe_fail(c, &cqe, "gather");
			goto out;
		}
		memcpy((uint8_t *)out + done * rec, po, m * rec);
		done += m;
	}
	ret = 0;
out:
	pthread_mutex_unlock(&c->lock);
	return ret;
}

int sparq_ping(struct sparq_client *c)
{
	struct sparq_sqe sqe = { .op = SPARQ_OP_NOP };
	struct sparq_cqe cqe;
	int ret;

	if (!c)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	ret = sparq_client_submit_locked(c, &sqe, &cqe);
	if (!ret && cqe.res < 0)
		ret = cqe_fail(c, &cqe, "ping");
	pthread_mutex_unlock(&c->lock);
	return ret;
}
