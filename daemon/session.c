/*
 * session.c — the session table and the session lifecycle (session.h).
 *
 * Park protocol: the session lock freezes the streams, their lengths go into the meta
 * blob, tier_park makes records then the manifest entry durable. A session parked
 * earlier and grown since is re-parked at shutdown or departure by tier_repark, which
 * replaces the old entry atomically (the manager keeps one entry per session): a crash
 * at any point leaves the old parked copy or the new one, never neither.
 *
 * Resume: the meta is read first (owner check, geometry, lengths), then tier_resume
 * opens the record streams and sparq_stream_attach rebuilds key slices and V sums.
 *
 * Retirement keeps a session in the table until its streams are closed: the tier
 * manager refuses to resume a session whose streams are still open, so a session that
 * left the table earlier would have been listed closed while resume answered -EBUSY.
 * The last reference to a retiring session closes its streams, then unlinks it and
 * wakes the lifecycle calls waiting for it (settled()).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* sparq_stream_records: parking hands the tier manager a stream's record store */
#include "backend-impl.h"
#include "meta.h"
#include "session.h"

static unsigned bucket(uint64_t id)
{
	return (unsigned)((id * 0x9e3779b97f4a7c15ull) >> 54) & (SD_BUCKETS - 1);
}

static uint32_t n_streams(const struct sd_session *s)
{
	return s->geo.n_layers * s->geo.n_kv_heads;
}

static uint64_t session_tokens(const struct sd_session *s)
{
	uint64_t sum = 0;

	for (uint32_t i = 0; i < n_streams(s); i++)
		sum += sparq_stream_len(s->streams[i]);
	return sum;
}

/* Releases the streams (their records go back to the tier manager); NULL afterwards. */
static void close_streams(struct sd_session *s)
{
	if (s->streams)
		for (uint32_t i = 0; i < n_streams(s); i++)
			if (s->streams[i])
				sparq_stream_destroy(s->streams[i]);
	free(s->streams);
	s->streams = NULL;
}

static void session_free(struct sd_session *s)
{
	if (!s)
		return;
	close_streams(s);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

static struct sd_session *session_new(const struct sd_geometry *geo)
{
	struct sd_session *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	s->geo = *geo;
	s->streams = calloc(n_streams(s), sizeof(*s->streams));
	if (!s->streams) {
		free(s);
		return NULL;
	}
	pthread_mutex_init(&s->mu, NULL);
	return s;
}

/* Table lock held. */
static struct sd_session *find_locked(struct sd_sessions *t, uint64_t id)
{
	for (struct sd_session *s = t->buckets[bucket(id)]; s; s = s->next)
		if (s->id == id)
			return s;
	return NULL;
}

static void insert_locked(struct sd_sessions *t, struct sd_session *s)
{
	unsigned b = bucket(s->id);

	s->next = t->buckets[b];
	t->buckets[b] = s;
	s->refs++;   /* the table's own reference */
	s->linked = true;
	t->count++;
}

static void unlink_locked(struct sd_sessions *t, struct sd_session *s)
{
	for (struct sd_session **pp = &t->buckets[bucket(s->id)]; *pp; pp = &(*pp)->next) {
		if (*pp == s) {
			*pp = s->next;
			s->linked = false;
			t->count--;
			return;
		}
	}
}

int sd_sessions_init(struct sd_sessions *t, struct tier_manager *tm, struct sparq_backend *be,
		     const struct sd_log *log)
{
	struct tier_parked_info *info = NULL;
	uint32_t count = 0;
	uint64_t next = (uint64_t)time(NULL) << 20;
	int ret;

	memset(t, 0, sizeof(*t));
	t->tm = tm;
	t->store = tier_manager_store(tm);
	t->be = be;
	t->log = log;
	ret = tier_parked_list(tm, NULL, 0, &count);
	if (!ret && count) {
		info = calloc(count, sizeof(*info));
		if (!info)
			return -ENOMEM;
		ret = tier_parked_list(tm, info, count, &count);
	}
	for (uint32_t i = 0; !ret && i < count; i++)
		if (info[i].session >= next)
			next = info[i].session + 1;
	free(info);
	if (ret)
		return ret;
	t->next_id = next;
	pthread_mutex_init(&t->mu, NULL);
	{
		pthread_condattr_t a;

		/* the bounded wait in settled() must not jump with the wall clock */
		pthread_condattr_init(&a);
		pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
		pthread_cond_init(&t->retired, &a);
		pthread_condattr_destroy(&a);
	}
	sd_log(log, SD_LOG_INFO, "%u parked session%s on disk", count, count == 1 ? "" : "s");
	return 0;
}

uint32_t sd_sessions_count(struct sd_sessions *t)
{
	uint32_t n;

	pthread_mutex_lock(&t->mu);
	n = t->count;
	pthread_mutex_unlock(&t->mu);
	return n;
}

struct sd_session *sd_session_get(struct sd_sessions *t, uint32_t uid, uint64_t id)
{
	struct sd_session *s;

	pthread_mutex_lock(&t->mu);
	s = find_locked(t, id);
	if (s && s->owner_uid == uid && !s->retiring)
		s->refs++;
	else
		s = NULL;
	pthread_mutex_unlock(&t->mu);
	return s;
}

/* The last reference to a retiring session is gone: its streams close while it is
 * still listed (open), then it leaves the table and the waiters in settled() wake. */
static void finish_retirement(struct sd_sessions *t, struct sd_session *s)
{
	bool last;

	pthread_mutex_lock(&s->mu);
	close_streams(s);
	pthread_mutex_unlock(&s->mu);
	pthread_mutex_lock(&t->mu);
	unlink_locked(t, s);
	s->closing = false;
	last = s->refs == 0;   /* a list may have referenced it meanwhile: it frees it then */
	pthread_cond_broadcast(&t->retired);
	pthread_mutex_unlock(&t->mu);
	if (last)
		session_free(s);
}

void sd_session_put(struct sd_sessions *t, struct sd_session *s)
{
	bool free_it = false, finish = false;

	pthread_mutex_lock(&t->mu);
	if (--s->refs == 0) {
		/* only a retiring session (it gave up the table's reference) gets here linked */
		if (!s->linked)
			free_it = true;
		else if (!s->closing)
			finish = s->closing = true;
	}
	pthread_mutex_unlock(&t->mu);
	if (finish)
		finish_retirement(t, s);
	else if (free_it)
		session_free(s);
}

/* The session id of uid once it is not retiring: 0 with *out referenced (taken out of
 * the table, the table's reference handed over, when take) or NULL when it is not open;
 * -EBUSY when its retirement outlasts SD_RETIRE_WAIT_MS. */
static int settled(struct sd_sessions *t, uint32_t uid, uint64_t id, bool take,
		   struct sd_session **out, const char **why)
{
	struct timespec until;
	struct sd_session *s;
	int ret = 0;

	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += SD_RETIRE_WAIT_MS / 1000;
	until.tv_nsec += (long)(SD_RETIRE_WAIT_MS % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	*out = NULL;
	pthread_mutex_lock(&t->mu);
	s = find_locked(t, id);
	if (s && s->owner_uid == uid && s->retiring)
		sd_log(t->log, SD_LOG_DEBUG, "session %" PRIu64 ": waiting for its retirement", id);
	while ((s = find_locked(t, id)) && s->owner_uid == uid && s->retiring) {
		if (pthread_cond_timedwait(&t->retired, &t->mu, &until) == ETIMEDOUT) {
			ret = -EBUSY;
			*why = "session is still being parked after its client left (try again)";
			break;
		}
	}
	if (!ret && s && s->owner_uid == uid) {
		if (take)
			unlink_locked(t, s);
		else
			s->refs++;
		*out = s;
	}
	pthread_mutex_unlock(&t->mu);
	if (ret)
		sd_log(t->log, SD_LOG_WARN, "session %" PRIu64 ": retirement still running after "
		       "%u ms", id, SD_RETIRE_WAIT_MS);
	return ret;
}

int sd_sessions_geometry(void *user, uint64_t id, struct sd_geometry *out)
{
	struct sd_lookup *l = user;
	struct sd_session *s;
	int ret = -ENOENT;

	pthread_mutex_lock(&l->t->mu);
	s = find_locked(l->t, id);
	if (s && s->owner_uid == l->uid && !s->retiring) {
		*out = s->geo;
		ret = 0;
	}
	pthread_mutex_unlock(&l->t->mu);
	return ret;
}

int sd_session_create(struct sd_sessions *t, const struct sd_req *r, uint32_t uid, uint32_t pid,
		      uint64_t conn, uint64_t *id, const char **why)
{
	struct sd_session *s = session_new(&r->geo);
	int ret = 0;

	*why = "out of memory";
	if (!s)
		return -ENOMEM;
	s->defaults = r->defaults;
	s->persistent = r->persistent;
	memcpy(s->label, r->label, sizeof(s->label));
	s->owner_uid = uid;
	s->owner_pid = pid;
	s->owner_conn = conn;
	pthread_mutex_lock(&t->mu);
	s->id = t->next_id++;
	pthread_mutex_unlock(&t->mu);
	for (uint32_t i = 0; i < n_streams(s) && !ret; i++) {
		ret = sparq_stream_create(t->be, t->store, r->geo.head_dim, r->geo.dtype,
					  &s->streams[i], why);
		if (!ret)
			tier_stream_label(sparq_stream_records(s->streams[i]), s->id, i);
	}
	if (ret) {
		session_free(s);
		return ret;
	}
	pthread_mutex_lock(&t->mu);
	insert_locked(t, s);
	pthread_mutex_unlock(&t->mu);
	*id = s->id;
	sd_log(t->log, SD_LOG_DEBUG, "session %" PRIu64 " created (uid %u, %u streams)", s->id, uid,
	       n_streams(s));
	return 0;
}

/* Session lock held. Parks the session as it stands now; with replace, in place of
 * its parked copy (tier_repark: the old copy stands until the new one is whole). */
static int park_locked(struct sd_sessions *t, struct sd_session *s, bool replace,
		       const char **why)
{
	struct sd_meta m = { .geo = s->geo, .defaults = s->defaults, .owner_uid = s->owner_uid,
			     .owner_pid = s->owner_pid, .n_streams = n_streams(s) };
	struct sparq_store_stream **recs = NULL;
	uint8_t *blob = NULL;
	int ret = -ENOMEM;

	memcpy(m.label, s->label, sizeof(m.label));
	*why = "out of memory";
	m.lengths = calloc(m.n_streams, sizeof(*m.lengths));
	recs = calloc(m.n_streams, sizeof(*recs));
	blob = malloc(sd_meta_size(m.n_streams));
	if (!m.lengths || !recs || !blob)
		goto out;
	for (uint32_t i = 0; i < m.n_streams; i++) {
		m.lengths[i] = sparq_stream_len(s->streams[i]);
		recs[i] = sparq_stream_records(s->streams[i]);
		if (m.lengths[i] == 0) {
			*why = "cannot park a session with an empty stream (append to every layer first)";
			ret = -EINVAL;
			goto out;
		}
	}
	sd_meta_encode(&m, blob);
	ret = replace ? tier_repark(t->tm, s->id, blob, sd_meta_size(m.n_streams), recs,
				    m.n_streams) :
			tier_park(t->tm, s->id, blob, sd_meta_size(m.n_streams), recs, m.n_streams);
	if (ret) {
		*why = ret == -EEXIST ? "session is already parked" :
		       ret == -ENOSPC ? "NVMe tier is full" : "parking failed";
		goto out;
	}
	s->parked = true;
	s->parked_tokens = session_tokens(s);
	*why = "";
out:
	free(m.lengths);
	free(recs);
	free(blob);
	return ret;
}

/* Session lock held: parks it, or re-parks it when it grew since its last park. */
static int park_current_locked(struct sd_sessions *t, struct sd_session *s, const char **why)
{
	if (s->parked && s->parked_tokens == session_tokens(s))
		return 0;
	return park_locked(t, s, s->parked, why);
}

int sd_session_park(struct sd_sessions *t, uint32_t uid, uint64_t id, const char **why)
{
	struct sd_session *s;
	int ret = settled(t, uid, id, false, &s, why);

	if (ret)
		return ret;
	*why = "no such session";
	if (!s)
		return -ENOENT;
	pthread_mutex_lock(&s->mu);
	if (s->parked) {
		*why = "session is already parked (drop it first)";
		ret = -EEXIST;
	} else {
		ret = park_locked(t, s, false, why);
	}
	pthread_mutex_unlock(&s->mu);
	sd_session_put(t, s);
	return ret;
}

/* The meta of a parked session of uid: -ENOENT when none, or not uid's. */
static int parked_meta(struct sd_sessions *t, uint32_t uid, uint64_t id, struct sd_meta *m,
		       uint8_t **blob_out, uint32_t *len_out, const char **why)
{
	uint32_t len = 0;
	uint8_t *blob = NULL;
	int ret;

	*why = "no such session";
	ret = tier_parked_meta(t->tm, id, NULL, 0, &len);
	if (ret == -ENOENT)
		return ret;
	blob = malloc(len ? len : 1);
	if (!blob) {
		*why = "out of memory";
		return -ENOMEM;
	}
	ret = tier_parked_meta(t->tm, id, blob, len, &len);
	if (ret) {
		free(blob);
		*why = "no such session";
		return ret == -ENOSPC ? -EAGAIN : ret;
	}
	ret = sd_meta_decode(blob, len, m, why);
	if (ret) {
		sd_log(t->log, SD_LOG_WARN, "parked session %" PRIu64 ": %s", id, *why);
		free(blob);
		return ret;
	}
	if (m->owner_uid != uid) {
		sd_meta_free(m);
		free(blob);
		*why = "no such session";
		return -ENOENT;
	}
	if (blob_out) {
		*blob_out = blob;
		*len_out = len;
	} else {
		free(blob);
	}
	return 0;
}

/* Close and drop of a session not loaded here: checks that uid owns the parked copy, drops it. */
static int drop_parked_only(struct sd_sessions *t, uint32_t uid, uint64_t id, const char **why)
{
	struct sd_meta m;
	int ret = parked_meta(t, uid, id, &m, NULL, NULL, why);

	if (ret)
		return ret;
	sd_meta_free(&m);
	ret = tier_drop(t->tm, id);
	*why = ret ? "dropping the parked copy failed" : "";
	return ret;
}

int sd_session_close(struct sd_sessions *t, uint32_t uid, uint64_t id, const char **why)
{
	struct sd_session *s;
	int ret = settled(t, uid, id, true, &s, why);

	if (ret)
		return ret;
	if (s) {
		pthread_mutex_lock(&s->mu);
		if (s->parked) {
			ret = tier_drop(t->tm, id);
			if (ret == -ENOENT)
				ret = 0;
			s->parked = ret != 0;
		}
		pthread_mutex_unlock(&s->mu);
		if (ret)
			sd_log(t->log, SD_LOG_WARN, "session %" PRIu64 " closed, its parked copy "
			       "could not be dropped: %s", id, strerror(-ret));
		sd_session_put(t, s);
		*why = ret ? "closed, but dropping the parked copy failed" : "";
		return ret;
	}
	return drop_parked_only(t, uid, id, why);
}

int sd_session_drop(struct sd_sessions *t, uint32_t uid, uint64_t id, const char **why)
{
	struct sd_session *s;
	int ret = settled(t, uid, id, false, &s, why);

	if (ret)
		return ret;
	if (s) {
		pthread_mutex_lock(&s->mu);
		if (!s->parked) {
			*why = "session has no parked copy";
			ret = -ENOENT;
		} else {
			ret = tier_drop(t->tm, id);
			if (!ret)
				s->parked = false;
			*why = ret ? "dropping the parked copy failed" : "";
		}
		pthread_mutex_unlock(&s->mu);
		sd_session_put(t, s);
		return ret;
	}
	return drop_parked_only(t, uid, id, why);
}

int sd_session_resume(struct sd_sessions *t, uint32_t uid, uint32_t pid, uint64_t conn,
		      uint64_t id, bool to_ram, const char **why)
{
	struct sparq_store_stream **recs = NULL;
	struct sd_session *s = NULL, *open;
	struct sd_meta m;
	uint8_t *blob = NULL;
	uint32_t len = 0, attached = 0;
	int ret;

	ret = settled(t, uid, id, false, &open, why);
	if (ret)
		return ret;
	if (open) {
		sd_session_put(t, open);
		*why = "session is already open";
		return -EBUSY;
	}
	ret = parked_meta(t, uid, id, &m, &blob, &len, why);
	if (ret)
		return ret;
	ret = -ENOMEM;
	*why = "out of memory";
	s = session_new(&m.geo);
	recs = calloc(m.n_streams, sizeof(*recs));
	if (!s || !recs)
		goto err;
	ret = tier_resume(t->tm, id, blob, len, recs, m.n_streams, to_ram);
	if (ret) {
		*why = ret == -EBUSY ? "session is already open" :
		       ret == -EBADMSG ? "a parked record fails its checksum" :
		       ret == -ENOSPC ? "RAM tier is full" : "resuming failed";
		goto err;
	}
	for (; attached < m.n_streams; attached++) {
		uint32_t i = attached;

		tier_stream_label(recs[i], id, i);
		ret = sparq_stream_attach(t->be, t->store, recs[i], m.lengths[i], m.geo.head_dim,
					  m.geo.dtype, &s->streams[i], why);
		recs[i] = NULL;  /* owned by the stream now, also on failure */
		if (ret)
			goto err;
	}
	s->id = id;
	s->defaults = m.defaults;
	s->persistent = true;
	memcpy(s->label, m.label, sizeof(s->label));
	s->owner_uid = uid;
	s->owner_pid = pid;
	s->owner_conn = conn;
	s->parked = true;
	s->parked_tokens = session_tokens(s);
	pthread_mutex_lock(&t->mu);
	open = find_locked(t, id);
	if (!open)
		insert_locked(t, s);
	pthread_mutex_unlock(&t->mu);
	if (open) {
		/* a concurrent resume of the same id won; the manager refused ours anyway */
		ret = -EBUSY;
		*why = "session is already open";
		goto err;
	}
	sd_log(t->log, SD_LOG_INFO, "session %" PRIu64 " resumed (uid %u, %" PRIu64 " records%s)",
	       id, uid, s->parked_tokens, to_ram ? ", read into RAM" : "");
	sd_meta_free(&m);
	free(recs);
	free(blob);
	*why = "";
	return 0;
err:
	if (recs)
		for (uint32_t i = attached; i < m.n_streams; i++)
			if (recs[i])
				t->store->ops->stream_close(t->store->ctx, recs[i]);
	session_free(s);
	sd_meta_free(&m);
	free(recs);
	free(blob);
	return ret;
}

int sd_session_list(struct sd_sessions *t, uint32_t uid, struct sd_session_info **out,
		    uint32_t *n)
{
	struct tier_parked_info *parked = NULL;
	struct sd_session_info *v = NULL, *grown;
	struct sd_session **open = NULL;
	uint32_t k = 0, n_parked = 0, n_open = 0, have = 0;
	int ret = -ENOMEM;

	/* The open sessions first, the parked ones after: a retiring session is parked
	 * before its streams close, so whatever the timing it shows up in one of them.
	 * References under the table lock, details under each session's own lock: the
	 * table lock is never held while waiting for a session busy with a long attend. */
	pthread_mutex_lock(&t->mu);
	v = calloc(t->count ? t->count : 1, sizeof(*v));
	open = calloc(t->count ? t->count : 1, sizeof(*open));
	for (unsigned b = 0; v && open && b < SD_BUCKETS; b++) {
		for (struct sd_session *s = t->buckets[b]; s; s = s->next) {
			if (s->owner_uid == uid) {
				s->refs++;
				open[n_open++] = s;
			}
		}
	}
	pthread_mutex_unlock(&t->mu);
	for (uint32_t i = 0; i < n_open; i++) {
		struct sd_session *s = open[i];

		pthread_mutex_lock(&s->mu);
		if (s->streams) {   /* NULL: a retirement closed them just now; it is parked */
			v[k] = (struct sd_session_info){ .id = s->id, .geo = s->geo,
							 .tokens = sparq_stream_len(s->streams[0]),
							 .persistent = s->persistent,
							 .parked = s->parked, .open = true,
							 .owner_uid = s->owner_uid,
							 .owner_pid = s->owner_pid };
			for (uint32_t j = 0; j < n_streams(s); j++) {
				uint64_t ram, nvme;

				tier_stream_placement(sparq_stream_records(s->streams[j]), &ram,
						      &nvme);
				v[k].ram_records += ram;
				v[k].nvme_records += nvme;
			}
			memcpy(v[k].label, s->label, sizeof(v[k].label));
			k++;
		}
		pthread_mutex_unlock(&s->mu);
		sd_session_put(t, s);
	}
	if (!v || !open)
		goto out;
	ret = tier_parked_list(t->tm, NULL, 0, &n_parked);
	if (!ret && n_parked) {
		ret = -ENOMEM;
		parked = calloc(n_parked, sizeof(*parked));
		grown = realloc(v, ((size_t)k + n_parked) * sizeof(*v));
		if (grown)
			v = grown;
		if (parked && grown)
			ret = tier_parked_list(t->tm, parked, n_parked, &have);
		/* more may have been parked since the count: those are listed next time */
		if (have < n_parked)
			n_parked = have;
	}
	for (uint32_t i = 0; !ret && i < n_parked; i++) {
		struct sd_meta m;
		const char *why;
		bool seen = false;

		for (uint32_t j = 0; j < k; j++)
			seen |= v[j].id == parked[i].session;
		if (seen || parked_meta(t, uid, parked[i].session, &m, NULL, NULL, &why))
			continue;
		v[k] = (struct sd_session_info){ .id = parked[i].session, .geo = m.geo,
						 .tokens = m.lengths[0], .persistent = true,
						 .parked = true, .open = false,
						 .owner_uid = m.owner_uid, .owner_pid = m.owner_pid };
		memcpy(v[k].label, m.label, sizeof(v[k].label));
		k++;
		sd_meta_free(&m);
	}
out:
	free(open);
	free(parked);
	if (ret) {
		free(v);
		return ret;
	}
	*out = v;
	*n = k;
	return 0;
}

/* Marks every session matching (all, or conn) retiring: it stays in the table, and the
 * batch holds a reference to it, chained through retire_next. */
static struct sd_session *mark_retiring(struct sd_sessions *t, bool all, uint64_t conn)
{
	struct sd_session *list = NULL;

	pthread_mutex_lock(&t->mu);
	for (unsigned b = 0; b < SD_BUCKETS; b++) {
		for (struct sd_session *s = t->buckets[b]; s; s = s->next) {
			if (!s->retiring && (all || s->owner_conn == conn)) {
				s->retiring = true;
				s->refs++;
				s->retire_next = list;
				list = s;
			}
		}
	}
	pthread_mutex_unlock(&t->mu);
	return list;
}

static void retire(struct sd_sessions *t, struct sd_session *list, const char *when)
{
	while (list) {
		struct sd_session *s = list;
		const char *why = "";
		int ret = 0;

		list = s->retire_next;
		pthread_mutex_lock(&s->mu);
		if (s->persistent) {
			ret = park_current_locked(t, s, &why);
			if (ret)
				sd_log(t->log, SD_LOG_ERROR, "%s: session %" PRIu64 " not parked: %s",
				       when, s->id, why);
			else
				sd_log(t->log, SD_LOG_INFO, "%s: session %" PRIu64 " parked (%" PRIu64
				       " records)", when, s->id, s->parked_tokens);
		}
		pthread_mutex_unlock(&s->mu);
		/* the table gives up its reference; it stays linked until the streams close */
		pthread_mutex_lock(&t->mu);
		s->refs--;
		pthread_mutex_unlock(&t->mu);
		sd_session_put(t, s);
	}
}

void sd_sessions_conn_gone(struct sd_sessions *t, uint64_t conn)
{
	retire(t, mark_retiring(t, false, conn), "client gone");
}

void sd_sessions_shutdown(struct sd_sessions *t)
{
	retire(t, mark_retiring(t, true, 0), "shutdown");
	pthread_cond_destroy(&t->retired);
	pthread_mutex_destroy(&t->mu);
}
