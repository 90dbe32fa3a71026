/*
 * sessions.c — libsparq's control calls on sessions (create, close, park, resume,
 * drop, list) and stats, each one protobuf request/response over the socket, plus the
 * handle's geometry cache.
 *
 * The data calls need a session's geometry to size its tensors in the shared area.
 * Geometry never changes and ids are never reused, so a cached entry stays right
 * forever; a session this handle did not create (resumed, or made by another handle
 * of the same uid) is looked up once in the daemon's list.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client-impl.h"

/* Parking and resuming move a whole session to or from NVMe: allow them longer. */
#define SLOW_CALL_FACTOR 10u

static struct sparq_client_session *cache_find(struct sparq_client *c, uint64_t id)
{
	for (uint32_t i = 0; i < c->n_sessions; i++)
		if (c->sessions[i].id == id)
			return &c->sessions[i];
	return NULL;
}

static int cache_put(struct sparq_client *c, uint64_t id, const struct sparq_geometry *g)
{
	struct sparq_client_session *s = cache_find(c, id);

	if (s) {
		s->g = *g;
		return 0;
	}
	if (c->n_sessions == c->cap_sessions) {
		uint32_t cap = c->cap_sessions ? 2 * c->cap_sessions : 16;
		void *p = realloc(c->sessions, (size_t)cap * sizeof(*c->sessions));
		if (!p)
			return -ENOMEM;
		c->sessions = p;
		c->cap_sessions = cap;
	}
	c->sessions[c->n_sessions++] = (struct sparq_client_session){ .id = id, .g = *g };
	return 0;
}

static void cache_remove(struct sparq_client *c, uint64_t id)
{
	struct sparq_client_session *s = cache_find(c, id);

	if (s)
		*s = c->sessions[--c->n_sessions];
}

static void geometry_from_wire(const Sparq__V1__Geometry *w, struct sparq_geometry *g)
{
	memset(g, 0, sizeof(*g));
	if (!w)
		return;
	g->n_layers = w->n_layers;
	g->n_q_heads = w->n_q_heads;
	g->n_kv_heads = w->n_kv_heads;
	g->head_dim = w->head_dim;
	g->dtype = w->dtype == SPARQ__V1__DTYPE__DTYPE_BF16 ? SPARQ_CLIENT_BF16 : SPARQ_CLIENT_F16;
}

/* A geometry the daemon reported that this library could not size tensors for. */
static bool geometry_sane(const struct sparq_geometry *g)
{
	return g->n_layers && g->n_kv_heads && g->n_q_heads && g->head_dim &&
	       g->n_q_heads % g->n_kv_heads == 0 && g->head_dim <= 1024 && g->n_q_heads <= 65536;
}

/* The daemon's list into a freshly allocated array (free_unpacked by the caller). */
static int list_locked(struct sparq_client *c, Sparq__V1__Response **resp)
{
	Sparq__V1__Request req = SPARQ__V1__REQUEST__INIT;
	Sparq__V1__ListSessions l = SPARQ__V1__LIST_SESSIONS__INIT;
	int ret;

	req.body_case = SPARQ__V1__REQUEST__BODY_LIST;
	req.list = &l;
	ret = sparq_client_call_locked(c, &req, resp, NULL, 0, NULL, c->timeout_ms);
	if (ret)
		return ret;
	if ((*resp)->body_case != SPARQ__V1__RESPONSE__BODY_LIST) {
		sparq__v1__response__free_unpacked(*resp, NULL);
		*resp = NULL;
		return sparq_client_fail(c, -EPROTO, "the daemon answered a list with something else");
	}
	return 0;
}

int sparq_client_geometry_locked(struct sparq_client *c, uint64_t id, struct sparq_geometry *g)
{
	struct sparq_client_session *s = cache_find(c, id);
	Sparq__V1__Response *resp;
	int ret;

	if (s) {
		*g = s->g;
		return 0;
	}
	ret = list_locked(c, &resp);
	if (ret)
		return ret;
	ret = sparq_client_fail(c, -ENOENT, "no such session: %llu", (unsigned long long)id);
	for (size_t i = 0; i < resp->list->n_sessions; i++) {
		const Sparq__V1__SessionInfo *si = resp->list->sessions[i];
		if (si->session != id)
			continue;
		geometry_from_wire(si->geometry, g);
		if (!geometry_sane(g)) {
			ret = sparq_client_fail(c, -EPROTO, "the daemon reports an impossible geometry "
						"for session %llu", (unsigned long long)id);
			break;
		}
		ret = cache_put(c, id, g);
		break;
	}
	sparq__v1__response__free_unpacked(resp, NULL);
	return ret;
}

static void params_to_wire(const struct sparq_attn_params *p, Sparq__V1__Params *w)
{
	w->r = p->r;
	w->k = p->k;
	w->l = p->l;
	w->l_set = p->l >= 0;
	w->ratio = p->ratio;
	w->blend = (Sparq__V1__Blend)p->blend;
	w->dense = p->dense;
}

int sparq_session_create(struct sparq_client *c, const struct sparq_session_opts *opts,
			 uint64_t *id)
{
	Sparq__V1__Request req = SPARQ__V1__REQUEST__INIT;
	Sparq__V1__CreateSession cs = SPARQ__V1__CREATE_SESSION__INIT;
	Sparq__V1__Geometry g = SPARQ__V1__GEOMETRY__INIT;
	Sparq__V1__Params p = SPARQ__V1__PARAMS__INIT;
	Sparq__V1__Response *resp;
	int ret;

	if (!c || !opts || !id)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	if (opts->label && strlen(opts->label) > 63) {
		ret = sparq_client_fail(c, -EINVAL, "label longer than 63 bytes");
		goto out;
	}
	if (opts->geometry.dtype != SPARQ_CLIENT_F16 && opts->geometry.dtype != SPARQ_CLIENT_BF16) {
		ret = sparq_client_fail(c, -EINVAL, "dtype must be SPARQ_CLIENT_F16 or SPARQ_CLIENT_BF16");
		goto out;
	}
	/* the daemon checks the geometry against what it serves; these are what the
	 * library itself needs to size tensors */
	if (!geometry_sane(&opts->geometry)) {
		ret = sparq_client_fail(c, -EINVAL, "geometry: every field non-zero, n_q_heads a "
					"multiple of n_kv_heads, head_dim at most 1024");
		goto out;
	}
	g.n_layers = opts->geometry.n_layers;
	g.n_q_heads = opts->geometry.n_q_heads;
	g.n_kv_heads = opts->geometry.n_kv_heads;
	g.head_dim = opts->geometry.head_dim;
	g.dtype = opts->geometry.dtype == SPARQ_CLIENT_BF16 ? SPARQ__V1__DTYPE__DTYPE_BF16 :
							       SPARQ__V1__DTYPE__DTYPE_F16;
	params_to_wire(&opts->defaults, &p);
	cs.geometry = &g;
	cs.defaults = &p;
	cs.persistent = opts->persistent;
	cs.label = (char *)(opts->label ? opts->label : "");
	req.body_case = SPARQ__V1__REQUEST__BODY_CREATE;
	req.create = &cs;
	ret = sparq_client_call_locked(c, &req, &resp, NULL, 0, NULL, c->timeout_ms);
	if (ret)
		goto out;
	if (resp->body_case != SPARQ__V1__RESPONSE__BODY_CREATED) {
		ret = sparq_client_fail(c, -EPROTO, "the daemon answered create with something else");
	} else {
		*id = resp->created->session;
		ret = cache_put(c, *id, &opts->geometry);
	}
	sparq__v1__response__free_unpacked(resp, NULL);
out:
	pthread_mutex_unlock(&c->lock);
	return ret;
}

/* close, park, drop: a SessionRef answered by Ok. */
static int session_ref_call(struct sparq_client *c, Sparq__V1__Request__BodyCase body,
			    uint64_t id, uint32_t timeout_ms)
{
	Sparq__V1__Request req = SPARQ__V1__REQUEST__INIT;
	Sparq__V1__SessionRef ref = SPARQ__V1__SESSION_REF__INIT;
	Sparq__V1__Response *resp;
	int ret;

	ref.session = id;
	req.body_case = body;
	if (body == SPARQ__V1__REQUEST__BODY_CLOSE)
		req.close = &ref;
	else if (body == SPARQ__V1__REQUEST__BODY_PARK)
		req.park = &ref;
	else
		req.drop = &ref;
	ret = sparq_client_call_locked(c, &req, &resp, NULL, 0, NULL, timeout_ms);
	if (ret)
		return ret;
	if (resp->body_case != SPARQ__V1__RESPONSE__BODY_OK)
		ret = sparq_client_fail(c, -EPROTO, "the daemon did not answer Ok");
	sparq__v1__response__free_unpacked(resp, NULL);
	return ret;
}

int sparq_session_close(struct sparq_client *c, uint64_t id)
{
	int ret;

	if (!c)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	ret = session_ref_call(c, SPARQ__V1__REQUEST__BODY_CLOSE, id, c->timeout_ms);
	if (ret == 0 || ret == -ENOENT)
		cache_remove(c, id);
	pthread_mutex_unlock(&c->lock);
	return ret;
}

int sparq_session_park(struct sparq_client *c, uint64_t id)
{
	int ret;

	if (!c)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	ret = session_ref_call(c, SPARQ__V1__REQUEST__BODY_PARK, id,
			       c->timeout_ms * SLOW_CALL_FACTOR);
	pthread_mutex_unlock(&c->lock);
	return ret;
}

int sparq_session_drop(struct sparq_client *c, uint64_t id)
{
	int ret;

	if (!c)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	ret = session_ref_call(c, SPARQ__V1__REQUEST__BODY_DROP, id, c->timeout_ms);
	pthread_mutex_unlock(&c->lock);
	return ret;
}

int sparq_session_resume(struct sparq_client *c, uint64_t id, bool to_ram)
{
	Sparq__V1__Request req = SPARQ__V1__REQUEST__INIT;
	Sparq__V1__Resume r = SPARQ__V1__RESUME__INIT;
	Sparq__V1__Response *resp;
	int ret;

	if (!c)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	r.session = id;
	r.to_ram = to_ram;
	req.body_case = SPARQ__V1__REQUEST__BODY_RESUME;
	req.resume = &r;
	ret = sparq_client_call_locked(c, &req, &resp, NULL, 0, NULL,
				       c->timeout_ms * SLOW_CALL_FACTOR);
	if (!ret) {
		if (resp->body_case != SPARQ__V1__RESPONSE__BODY_OK)
			ret = sparq_client_fail(c, -EPROTO, "the daemon did not answer Ok");
		sparq__v1__response__free_unpacked(resp, NULL);
	}
	pthread_mutex_unlock(&c->lock);
	return ret;
}

int sparq_session_list(struct sparq_client *c, struct sparq_session_info *out, uint32_t max,
		       uint32_t *count)
{
	Sparq__V1__Response *resp;
	int ret;

	if (!c || !count || (max && !out))
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	ret = list_locked(c, &resp);
	if (ret)
		goto out;
	*count = (uint32_t)resp->list->n_sessions;
	for (size_t i = 0; i < resp->list->n_sessions && i < max; i++) {
		const Sparq__V1__SessionInfo *si = resp->list->sessions[i];
		struct sparq_session_info *o = &out[i];

		memset(o, 0, sizeof(*o));
		o->id = si->session;
		geometry_from_wire(si->geometry, &o->geometry);
		o->tokens = si->tokens;
		o->persistent = si->persistent;
		o->parked = si->parked;
		o->open = si->open;
		o->owner_uid = si->owner_uid;
		o->owner_pid = si->owner_pid;
		snprintf(o->label, sizeof(o->label), "%s", si->label ? si->label : "");
		o->ram_records = si->ram_records;
		o->nvme_records = si->nvme_records;
	}
	sparq__v1__response__free_unpacked(resp, NULL);
out:
	pthread_mutex_unlock(&c->lock);
	return ret;
}

int sparq_stats_get(struct sparq_client *c, struct sparq_stats *out)
{
	Sparq__V1__Request req = SPARQ__V1__REQUEST__INIT;
	Sparq__V1__Stats s = SPARQ__V1__STATS__INIT;
	Sparq__V1__Response *resp;
	int ret;

	if (!c || !out)
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	req.body_case = SPARQ__V1__REQUEST__BODY_STATS;
	req.stats = &s;
	ret = sparq_client_call_locked(c, &req, &resp, NULL, 0, NULL, c->timeout_ms);
	if (ret)
		goto out;
	if (resp->body_case != SPARQ__V1__RESPONSE__BODY_STATS) {
		ret = sparq_client_fail(c, -EPROTO, "the daemon answered stats with something else");
		goto free;
	}
	const Sparq__V1__StatsReply *r = resp->stats;
	memset(out, 0, sizeof(*out));
	snprintf(out->backend, sizeof(out->backend), "%s", r->backend ? r->backend : "");
	snprintf(out->backend_detail, sizeof(out->backend_detail), "%s",
		 r->backend_detail ? r->backend_detail : "");
	out->clients = r->clients;
	out->sessions = r->sessions;
	for (size_t i = 0; i < r->n_ops && out->n_ops < 16; i++) {
		struct sparq_op_stats *o = &out->ops[out->n_ops++];
		snprintf(o->op, sizeof(o->op), "%s", r->ops[i]->op ? r->ops[i]->op : "");
		o->count = r->ops[i]->count;
		o->errors = r->ops[i]->errors;
		o->p50_ns = r->ops[i]->p50_ns;
		o->p99_ns = r->ops[i]->p99_ns;
	}
	out->ram_capacity = r->ram_capacity;
	out->ram_used = r->ram_used;
	out->nvme_capacity = r->nvme_capacity;
	out->nvme_used = r->nvme_used;
	out->ram_records_read = r->ram_records_read;
	out->nvme_records_read = r->nvme_records_read;
	out->nvme_bytes_read = r->nvme_bytes_read;
	out->nvme_bytes_written = r->nvme_bytes_written;
	out->demotions = r->demotions;
	out->promotions = r->promotions;
	out->parks = r->parks;
	out->resumes = r->resumes;
	out->checksum_failures = r->checksum_failures;
	out->read_amplification = r->read_amplification;
	out->uptime_ns = r->uptime_ns;
free:
	sparq__v1__response__free_unpacked(resp, NULL);
out:
	pthread_mutex_unlock(&c->lock);
	return ret;
}

int sparq_config_get(struct sparq_client *c, struct sparq_config_entry *out, uint32_t max,
		     uint32_t *count)
{
	Sparq__V1__Request req = SPARQ__V1__REQUEST__INIT;
	Sparq__V1__GetConfig g = SPARQ__V1__GET_CONFIG__INIT;
	Sparq__V1__Response *resp;
	int ret;

	if (!c || !count || (max && !out))
		return -EINVAL;
	pthread_mutex_lock(&c->lock);
	req.body_case = SPARQ__V1__REQUEST__BODY_CONFIG;
	req.config = &g;
	ret = sparq_client_call_locked(c, &req, &resp, NULL, 0, NULL, c->timeout_ms);
	if (ret)
		goto out;
	if (resp->body_case != SPARQ__V1__RESPONSE__BODY_CONFIG) {
		ret = sparq_client_fail(c, -EPROTO, "the daemon answered config with something else");
		goto free;
	}
	*count = (uint32_t)resp->config->n_entries;
	for (size_t i = 0; i < resp->config->n_entries && i < max; i++) {
		const Sparq__V1__ConfigEntry *e = resp->config->entries[i];

		snprintf(out[i].key, sizeof(out[i].key), "%s", e->key ? e->key : "");
		snprintf(out[i].value, sizeof(out[i].value), "%s", e->value ? e->value : "");
	}
free:
	sparq__v1__response__free_unpacked(resp, NULL);
out:
	pthread_mutex_unlock(&c->lock);
	return ret;
}
