/*
 * exec.c — execution of decoded requests (exec.h). Inputs that live in the client's
 * region (K/V rows, queries, gather positions) are copied into private buffers first
 * and checked there: the client can rewrite its region at any moment, and a position
 * re-read after its bounds check could point anywhere. Outputs are built privately and
 * copied out last, so the backend never reads memory the client can change under it.
 *
 * Locking: sessions are referenced through the table, then their locks are taken in
 * ascending id order (a batched attend may name several, and the same one twice).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "exec.h"
#include "wire.h"

/* What one request produced, for the reply. */
struct result {
	int err;
	const char *why;
	int32_t bad_item;
	uint64_t created;                 /* create */
	struct sd_session_info *list;     /* list */
	uint32_t n_list;
	bool stats;
	bool config;                      /* config */
};

static bool rows_finite(const uint16_t *x, size_t n, enum sparq_dtype dt)
{
	uint16_t mask = dt == SPARQ_DTYPE_F16 ? 0x7c00u : 0x7f80u;

	for (size_t i = 0; i < n; i++)
		if ((x[i] & mask) == mask)
			return false;
	return true;
}

static int exec_append(struct sparqd *d, struct sd_client *c, const struct sd_req *r,
		       struct result *res)
{
	struct sd_session *s = sd_session_get(&d->sessions, c->uid, r->session);
	uint32_t kv, hd, n = r->n;
	uint16_t *k = NULL, *v = NULL;
	uint8_t *marks = NULL;
	size_t per_head, mark_bytes;
	int ret;

	res->why = "no such session";
	if (!s)
		return -ENOENT;
	kv = s->geo.n_kv_heads;
	hd = s->geo.head_dim;
	per_head = (size_t)n * hd;
	/* every stream of a layer has the same head dimension, hence the same mark size */
	mark_bytes = sparq_stream_mark_size(sd_session_stream(s, r->layer, 0));
	k = malloc(per_head * kv * sizeof(*k));
	v = malloc(per_head * kv * sizeof(*v));
	marks = malloc(mark_bytes * kv);
	ret = -ENOMEM;
	res->why = "out of memory";
	if (!k || !v || !marks)
		goto out;
	/* [n][kv][hd] in the region → [kv][n][hd] here: one contiguous run per stream */
	for (uint32_t t = 0; t < n; t++) {
		for (uint32_t h = 0; h < kv; h++) {
			size_t src = ((size_t)t * kv + h) * hd, dst = (size_t)h * per_head + (size_t)t * hd;

			memcpy(k + dst, r->k + src, hd * sizeof(*k));
			memcpy(v + dst, r->v + src, hd * sizeof(*v));
		}
	}
	ret = -EINVAL;
	res->why = "NaN or Inf in appended K";
	if (!rows_finite(k, per_head * kv, s->geo.dtype))
		goto out;
	res->why = "NaN or Inf in appended V";
	if (!rows_finite(v, per_head * kv, s->geo.dtype))
		goto out;
	pthread_mutex_lock(&s->mu);
	ret = 0;
	for (uint32_t h = 0; h < kv && !ret; h++) {
		if ((uint64_t)sparq_stream_len(sd_session_stream(s, r->layer, h)) + n > SPARQ_POS_MAX) {
			res->why = "stream would exceed 2^31 positions";
			ret = -EOVERFLOW;
		}
	}
	/* all heads or none: each stream is marked first and rewound when a later head
	 * fails (RAM and NVMe tiers full, an NVMe error), so a failed request changes nothing */
	for (uint32_t h = 0; h < kv && !ret; h++)
		sparq_stream_mark(sd_session_stream(s, r->layer, h),
				  (struct sparq_stream_mark *)(marks + h * mark_bytes));
	for (uint32_t h = 0; h < kv && !ret; h++) {
		ret = sparq_stream_append(sd_session_stream(s, r->layer, h), n, k + h * per_head,
					  v + h * per_head, &res->why);
		for (uint32_t j = 0; ret && j < h; j++) {
			int err = sparq_stream_rewind(sd_session_stream(s, r->layer, j),
						      (struct sparq_stream_mark *)(marks + j * mark_bytes));
			if (err)
				sd_log(&d->log, SD_LOG_ERROR, "session %" PRIu64 " layer %u: KV head %u "
				       "keeps the tokens of a failed append: %s", s->id, r->layer, j,
				       strerror(-err));
		}
		if (ret && h)
			sd_log(&d->log, SD_LOG_WARN, "session %" PRIu64 " layer %u: append failed at "
			       "KV head %u of %u (%s); the heads before it were rewound", s->id,
			       r->layer, h, kv, res->why);
	}
	pthread_mutex_unlock(&s->mu);
out:
	free(k);
	free(v);
	free(marks);
	sd_session_put(&d->sessions, s);
	return ret;
}

static int exec_gather(struct sparqd *d, struct sd_client *c, const struct sd_req *r,
		       struct result *res)
{
	struct sd_session *s = sd_session_get(&d->sessions, c->uid, r->session);
	size_t out_bytes;
	uint32_t *pos = NULL;
	void *out = NULL;
	int ret = -ENOMEM;

	res->why = "no such session";
	if (!s)
		return -ENOENT;
	out_bytes = (size_t)r->n * 2 * s->geo.head_dim * sparq_dtype_size(s->geo.dtype);
	pos = malloc((size_t)r->n * sizeof(*pos));
	out = malloc(out_bytes);
	res->why = "out of memory";
	if (!pos || !out)
		goto out;
	memcpy(pos, r->pos, (size_t)r->n * sizeof(*pos));
	pthread_mutex_lock(&s->mu);
	ret = sparq_stream_gather(sd_session_stream(s, r->layer, r->kv_head), pos, r->n, out);
	pthread_mutex_unlock(&s->mu);
	res->why = ret == -ERANGE ? "position past the end of the stream" :
		   ret == -EBADMSG ? "a record fails its checksum" : "gather failed";
	if (!ret)
		memcpy(r->out, out, out_bytes);
out:
	free(pos);
	free(out);
	sd_session_put(&d->sessions, s);
	return ret;
}

static int cmp_session(const void *a, const void *b)
{
	const struct sd_session *x = *(struct sd_session *const *)a;
	const struct sd_session *y = *(struct sd_session *const *)b;

	return x->id < y->id ? -1 : x->id > y->id;
}

/* Attend or select: every entry × every KV head of its session in one backend call. */
static int exec_attend(struct sparqd *d, struct sd_client *c, const struct sd_req *r,
		       bool select, struct result *res)
{
	struct sd_session **ses = calloc(r->n, sizeof(*ses)), **locked = calloc(r->n, sizeof(*ses));
	struct sparq_attend_batch batch = { .mode = select ? SPARQ_ATTEND_SELECT : SPARQ_ATTEND_FULL };
	size_t n_items = 0, qf = 0, af = 0, sf = 0;
	uint32_t *item_entry = NULL, *sel = NULL, n_locked = 0;
	float *q = NULL, *y = NULL, *alpha = NULL;
	int ret = -ENOMEM;

	res->why = "out of memory";
	if (!ses || !locked)
		goto out;
	for (uint32_t i = 0; i < r->n; i++) {
		const struct sd_entry *e = &r->entries[i];

		ses[i] = sd_session_get(&d->sessions, c->uid, e->session);
		if (!ses[i]) {
			res->bad_item = (int32_t)i;
			res->why = "no such session";
			ret = -ENOENT;
			goto out;
		}
		n_items += e->geo.n_kv_heads;
		qf += (size_t)e->geo.n_q_heads * e->geo.head_dim;
		af += e->geo.n_q_heads;
		sf += (size_t)e->geo.n_kv_heads * e->sel_cap;
	}
	batch.items = calloc(n_items, sizeof(*batch.items));
	item_entry = calloc(n_items, sizeof(*item_entry));
	q = malloc(qf * sizeof(*q));
	y = select ? NULL : malloc(qf * sizeof(*y));
	alpha = malloc(af * sizeof(*alpha));
	sel = select ? malloc(sf * sizeof(*sel)) : NULL;
	if (!batch.items || !item_entry || !q || (!select && !y) || !alpha || (select && !sel))
		goto out;
	/* lock each distinct session once, in id order */
	memcpy(locked, ses, r->n * sizeof(*ses));
	qsort(locked, r->n, sizeof(*locked), cmp_session);
	for (uint32_t i = 0; i < r->n; i++)
		if (i == 0 || locked[i] != locked[n_locked - 1])
			locked[n_locked++] = locked[i];
	for (uint32_t i = 0; i < n_locked; i++)
		pthread_mutex_lock(&locked[i]->mu);
	qf = af = sf = 0;
	n_items = 0;
	for (uint32_t i = 0; i < r->n; i++) {
		const struct sd_entry *e = &r->entries[i];
		const struct sd_session *s = ses[i];
		uint32_t g = s->geo.n_q_heads / s->geo.n_kv_heads, hd = s->geo.head_dim;
		const struct sd_params *p = e->params.use_defaults ? &s->defaults : &e->params;

		memcpy(q + qf, e->q, (size_t)s->geo.n_q_heads * hd * sizeof(*q));
		for (uint32_t h = 0; h < s->geo.n_kv_heads; h++) {
			struct sparq_attend_item *it = &batch.items[n_items];

			it->stream = sd_session_stream(s, r->layer, h);
			it->g = g;
			it->q = q + qf + (size_t)h * g * hd;
			it->params = sd_params_for(p, hd, sparq_stream_len(it->stream));
			it->alpha = alpha + af + (size_t)h * g;
			if (select) {
				it->sel = sel + sf + (size_t)h * e->sel_cap;
				it->sel_cap = e->sel_cap;
			} else {
				it->y = y + qf + (size_t)h * g * hd;
			}
			item_entry[n_items++] = i;
		}
		qf += (size_t)s->geo.n_q_heads * hd;
		af += s->geo.n_q_heads;
		sf += (size_t)s->geo.n_kv_heads * e->sel_cap;
	}
	batch.n = (uint32_t)n_items;
	ret = sparq_backend_attend(d->be, &batch);
	if (ret) {
		res->bad_item = batch.bad_item >= 0 ? (int32_t)item_entry[batch.bad_item] : -1;
		res->why = batch.why ? batch.why : "attend failed";
	} else {
		/* copy out; the sessions are still locked, so the items still describe them */
		qf = af = sf = 0;
		n_items = 0;
		for (uint32_t i = 0; i < r->n; i++) {
			const struct sd_entry *e = &r->entries[i];
			const struct sd_geometry *geo = &ses[i]->geo;

			if (!select)
				memcpy(e->y, y + qf, (size_t)geo->n_q_heads * geo->head_dim * sizeof(*y));
			if (e->alpha)
				memcpy(e->alpha, alpha + af, (size_t)geo->n_q_heads * sizeof(*alpha));
			if (select) {
				memcpy(e->sel, sel + sf, (size_t)geo->n_kv_heads * e->sel_cap * sizeof(*sel));
				for (uint32_t h = 0; h < geo->n_kv_heads; h++)
					e->n_sel[h] = batch.items[n_items + h].n_sel;
			}
			n_items += geo->n_kv_heads;
			qf += (size_t)geo->n_q_heads * geo->head_dim;
			af += geo->n_q_heads;
			sf += (size_t)geo->n_kv_heads * e->sel_cap;
		}
	}
	for (uint32_t i = n_locked; i-- > 0;)
		pthread_mutex_unlock(&locked[i]->mu);
out:
	for (uint32_t i = 0; ses && i < r->n; i++)
		if (ses[i])
			sd_session_put(&d->sessions, ses[i]);
	free(ses);
	free(locked);
	free(batch.items);
	free(item_entry);
	free(q);
	free(y);
	free(alpha);
	free(sel);
	return ret;
}

static int run(struct sparqd *d, struct sd_client *c, const struct sd_req *r, struct result *res)
{
	switch (r->op) {
	case SD_OP_NOP:
	case SD_OP_STATS:
		res->stats = r->op == SD_OP_STATS;
		return 0;
	case SD_OP_CONFIG:
		res->config = true;
		return 0;
	case SD_OP_CREATE:
		return sd_session_create(&d->sessions, r, c->uid, c->pid, c->id, &res->created,
					 &res->why);
	case SD_OP_CLOSE:
		return sd_session_close(&d->sessions, c->uid, r->session, &res->why);
	case SD_OP_PARK:
		return sd_session_park(&d->sessions, c->uid, r->session, &res->why);
	case SD_OP_RESUME:
		return sd_session_resume(&d->sessions, c->uid, c->pid, c->id, r->session, r->to_ram,
					 &res->why);
	case SD_OP_DROP:
		return sd_session_drop(&d->sessions, c->uid, r->session, &res->why);
	case SD_OP_LIST:
		res->why = "out of memory";
		return sd_session_list(&d->sessions, c->uid, &res->list, &res->n_list);
	case SD_OP_APPEND:
		return exec_append(d, c, r, res);
	case SD_OP_ATTEND:
		return exec_attend(d, c, r, false, res);
	case SD_OP_SELECT:
		return exec_attend(d, c, r, true, res);
	case SD_OP_GATHER:
		return exec_gather(d, c, r, res);
	default:
		res->why = "operation not valid here";
		return -EPROTO;
	}
}

void sd_reply_error(struct sd_client *c, uint64_t id, int code, const char *why)
{
	Sparq__V1__Response resp = SPARQ__V1__RESPONSE__INIT;
	Sparq__V1__Error err = SPARQ__V1__ERROR__INIT;

	err.code = code;
	err.message = (char *)(why && *why ? why : strerror(-code));
	resp.id = id;
	resp.body_case = SPARQ__V1__RESPONSE__BODY_ERROR;
	resp.error = &err;
	/* a client that is gone or does not read its replies loses them; the loop sees it go */
	(void)sparq_wire_send(c->sock, &resp.base, NULL, 0);
}

static void geometry_pb(Sparq__V1__Geometry *pb, const struct sd_geometry *g)
{
	pb->n_layers = g->n_layers;
	pb->n_q_heads = g->n_q_heads;
	pb->n_kv_heads = g->n_kv_heads;
	pb->head_dim = g->head_dim;
	pb->dtype = (Sparq__V1__Dtype)g->dtype;
}

static int reply_list(struct sd_client *c, uint64_t id, const struct result *res)
{
	Sparq__V1__Response resp = SPARQ__V1__RESPONSE__INIT;
	Sparq__V1__SessionList list = SPARQ__V1__SESSION_LIST__INIT;
	Sparq__V1__SessionInfo *infos = calloc(res->n_list ? res->n_list : 1, sizeof(*infos));
	Sparq__V1__SessionInfo **ptrs = calloc(res->n_list ? res->n_list : 1, sizeof(*ptrs));
	Sparq__V1__Geometry *geos = calloc(res->n_list ? res->n_list : 1, sizeof(*geos));
	int ret = -ENOMEM;

	if (!infos || !ptrs || !geos)
		goto out;
	for (uint32_t i = 0; i < res->n_list; i++) {
		const struct sd_session_info *s = &res->list[i];

		sparq__v1__session_info__init(&infos[i]);
		sparq__v1__geometry__init(&geos[i]);
		geometry_pb(&geos[i], &s->geo);
		infos[i].session = s->id;
		infos[i].geometry = &geos[i];
		infos[i].tokens = s->tokens;
		infos[i].persistent = s->persistent;
		infos[i].parked = s->parked;
		infos[i].open = s->open;
		infos[i].owner_uid = s->owner_uid;
		infos[i].owner_pid = s->owner_pid;
		infos[i].label = (char *)s->label;
		infos[i].ram_records = s->ram_records;
		infos[i].nvme_records = s->nvme_records;
		ptrs[i] = &infos[i];
	}
	list.n_sessions = res->n_list;
	list.sessions = ptrs;
	resp.id = id;
	resp.body_case = SPARQ__V1__RESPONSE__BODY_LIST;
	resp.list = &list;
	ret = sparq_wire_send(c->sock, &resp.base, NULL, 0);
out:
	free(infos);
	free(ptrs);
	free(geos);
	return ret;
}

static void reply_stats(struct sparqd *d, struct sd_client *c, uint64_t id)
{
	Sparq__V1__Response resp = SPARQ__V1__RESPONSE__INIT;
	Sparq__V1__StatsReply st = SPARQ__V1__STATS_REPLY__INIT;
	Sparq__V1__OpStats ops[SD_OP_COUNT], *ptrs[SD_OP_COUNT];
	struct tier_stats ts;
	char detail[512];
	size_t n = 0;

	for (unsigned op = SD_OP_HELLO; op < SD_OP_COUNT; op++) {
		const struct sd_op_stats *o = &d->stats.ops[op];

		sparq__v1__op_stats__init(&ops[n]);
		ops[n].op = (char *)sd_op_name((enum sd_op)op);
		ops[n].count = atomic_load_explicit(&o->count, memory_order_relaxed);
		ops[n].errors = atomic_load_explicit(&o->errors, memory_order_relaxed);
		ops[n].p50_ns = sd_stats_quantile(&d->stats, op, 0.50);
		ops[n].p99_ns = sd_stats_quantile(&d->stats, op, 0.99);
		ptrs[n] = &ops[n];
		n++;
	}
	tier_manager_stats(d->tm, &ts);
	st.backend = (char *)sparq_backend_name(d->be);
	/* with the CUDA fallback counts in front once there are any (sparqctl stats shows them) */
	sd_stats_backend_detail(d->be, d->backend_detail, detail, sizeof(detail));
	st.backend_detail = detail;
	st.clients = __atomic_load_n(&d->n_clients, __ATOMIC_RELAXED);
	st.sessions = sd_sessions_count(&d->sessions);
	st.n_ops = n;
	st.ops = ptrs;
	st.ram_capacity = ts.ram_capacity;
	st.ram_used = ts.ram_used;
	st.nvme_capacity = ts.nvme_capacity;
	st.nvme_used = ts.nvme_used;
	st.ram_records_read = ts.ram_records_read;
	st.nvme_records_read = ts.nvme_records_read;
	st.nvme_bytes_read = ts.nvme_bytes_read;
	st.nvme_bytes_written = ts.nvme_bytes_written;
	st.demotions = ts.demotions;
	st.promotions = ts.promotions;
	st.parks = ts.parks;
	st.resumes = ts.resumes;
	st.checksum_failures = ts.checksum_failures;
	st.read_amplification = ts.nvme_gather_requested ?
		(double)ts.nvme_gather_bytes / (double)ts.nvme_gather_requested : 1.0;
	st.uptime_ns = sd_now_ns() - d->stats.start_ns;
	resp.id = id;
	resp.body_case = SPARQ__V1__RESPONSE__BODY_STATS;
	resp.stats = &st;
	(void)sparq_wire_send(c->sock, &resp.base, NULL, 0);
}

/* The effective settings, straight from the table config.c parses them with. */
static int reply_config(struct sparqd *d, struct sd_client *c, uint64_t id)
{
	enum { MAX_ENTRIES = 64, VAL_MAX = PATH_MAX };
	Sparq__V1__Response resp = SPARQ__V1__RESPONSE__INIT;
	Sparq__V1__ConfigReply cr = SPARQ__V1__CONFIG_REPLY__INIT;
	Sparq__V1__ConfigEntry ents[MAX_ENTRIES], *ptrs[MAX_ENTRIES];
	char *vals = malloc((size_t)MAX_ENTRIES * VAL_MAX);
	const char *key;
	unsigned n = 0;
	int ret;

	if (!vals)
		return -ENOMEM;
	while (n < MAX_ENTRIES &&
	       sd_config_entry(&d->cfg, n, &key, vals + (size_t)n * VAL_MAX, VAL_MAX) == 0) {
		sparq__v1__config_entry__init(&ents[n]);
		ents[n].key = (char *)key;
		ents[n].value = vals + (size_t)n * VAL_MAX;
		ptrs[n] = &ents[n];
		n++;
	}
	cr.n_entries = n;
	cr.entries = ptrs;
	cr.server_version = (char *)SPARQ_VERSION_STRING;
	resp.id = id;
	resp.body_case = SPARQ__V1__RESPONSE__BODY_CONFIG;
	resp.config = &cr;
	ret = sparq_wire_send(c->sock, &resp.base, NULL, 0);
	free(vals);
	return ret;
}

static void reply_socket(struct sparqd *d, struct sd_client *c, const struct sd_req *r,
			 const struct result *res)
{
	Sparq__V1__Response resp = SPARQ__V1__RESPONSE__INIT;
	Sparq__V1__SessionCreated created = SPARQ__V1__SESSION_CREATED__INIT;
	Sparq__V1__Ok ok = SPARQ__V1__OK__INIT;
	char why[SD_WHY_MAX + 32];

	if (res->err) {
		if (res->bad_item >= 0)
			snprintf(why, sizeof(why), "entry %d: %s", res->bad_item,
				 res->why ? res->why : "");
		else
			snprintf(why, sizeof(why), "%s", res->why ? res->why : "");
		sd_reply_error(c, r->id, res->err, why);
		return;
	}
	if (r->op == SD_OP_LIST) {
		if (reply_list(c, r->id, res) == -EMSGSIZE)
			sd_reply_error(c, r->id, -EMSGSIZE, "too many sessions for one reply");
		return;
	}
	if (res->stats) {
		reply_stats(d, c, r->id);
		return;
	}
	if (res->config) {
		if (reply_config(d, c, r->id) == -ENOMEM)
			sd_reply_error(c, r->id, -ENOMEM, "out of memory");
		return;
	}
	resp.id = r->id;
	if (r->op == SD_OP_CREATE) {
		created.session = res->created;
		resp.body_case = SPARQ__V1__RESPONSE__BODY_CREATED;
		resp.created = &created;
	} else {
		resp.body_case = SPARQ__V1__RESPONSE__BODY_OK;
		resp.ok = &ok;
	}
	(void)sparq_wire_send(c->sock, &resp.base, NULL, 0);
}

static void reply_ring(struct sd_client *c, const struct sd_req *r, const struct result *res)
{
	struct sparq_cqe cqe = { .user_data = r->id, .res = res->err, .bad_item = res->bad_item };
	uint64_t one = 1;

	if (res->err)
		snprintf(cqe.why, sizeof(cqe.why), "%s", res->why ? res->why : "");
	sparq_cq_push(&c->shm, &cqe);
	/* a client spinning on the ring needs no wake-up (it said so in cq_flags); the
	 * counter cannot overflow in practice; a failed write only delays the client */
	if (sparq_cq_needs_doorbell(&c->shm) && write(c->complete_fd, &one, sizeof(one)) < 0)
		return;
}

void sd_ring_answer_enomem(struct sparqd *d, struct sd_client *c, uint64_t user_data)
{
	struct sd_job failed = { .req = { .ring = true, .id = user_data, .err = -ENOMEM,
					  .bad_item = -1 } };

	snprintf(failed.req.why, sizeof(failed.req.why), "out of memory");
	failed.t0 = sd_now_ns();
	sd_exec(d, c, &failed);
}

int sd_ring_take(struct sparqd *d, struct sd_client *c, struct sd_job **out, uint64_t *lost)
{
	struct sd_lookup lk = { .t = &d->sessions, .uid = c->uid };
	struct sd_req_ctx ctx = { .shm = &c->shm, .hello_done = true,
				  .lookup = sd_sessions_geometry, .lookup_user = &lk };
	struct sparq_sqe sqe;
	struct sd_job *job;
	int ret = sparq_sq_pop(&c->shm, &sqe);

	*out = NULL;
	if (ret <= 0)
		return ret;
	job = calloc(1, sizeof(*job));
	if (!job) {
		sd_log(&d->log, SD_LOG_ERROR, "out of memory: client %" PRIu64 " submission dropped",
		       c->id);
		*lost = sqe.user_data;
		return -ENOMEM;
	}
	job->t0 = sd_now_ns();
	sd_req_decode_sqe(&ctx, &sqe, &job->req);
	*out = job;
	return 1;
}

void sd_exec(struct sparqd *d, struct sd_client *c, struct sd_job *job)
{
	struct sd_req *r = &job->req;
	struct result res = { .bad_item = -1, .why = "" };

	if (r->err) {
		res.err = r->err;
		res.why = r->why;
		res.bad_item = r->bad_item;
	} else {
		res.err = run(d, c, r, &res);
		if (!res.err)
			res.why = "";
	}
	if (res.err)
		sd_log(&d->log, SD_LOG_DEBUG, "client %" PRIu64 " %s: %s (%d)", c->id,
		       sd_op_name(r->op), res.why, res.err);
	if (r->ring)
		reply_ring(c, r, &res);
	else
		reply_socket(d, c, r, &res);
	sd_stats_record(&d->stats, r->op, res.err, sd_now_ns() - job->t0);
	free(res.list);
}
