/*
 * manager.c — the tier manager (see manager.h): chunks of consecutive records of one
 * stream, resident in an arena slot, on NVMe, or both.
 *
 * On NVMe each stream has one file, "<uid>.rec", record p at offset p·unit where unit
 * is the record size rounded up to the device's O_DIRECT alignment, so that a selected
 * record costs one aligned read. Per-record CRC32Cs live in RAM for every durable
 * record; parking writes them to "<uid>.crc" and publishes "session-<id>.man".
 *
 * Chunk states: resident (slot set) and/or durable (its first `durable` records are on
 * NVMe with checksums). `dirty` means RAM holds records NVMe does not. A chunk is only
 * ever freed from RAM when it is not dirty: demotion writes and fdatasyncs first.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "arena.h"
#include "crc32c.h"
#include "manager.h"
#include "nvme.h"
#include "sparq.h"

#define MAN_MAGIC "SPQMAN01"
#define CRC_MAGIC "SPQCRC01"
#define MAN_VERSION 1u
#define META_MAX (1u << 20)
#define STREAMS_MAX (1u << 20)

struct chunk {
	struct sparq_store_stream *owner;
	uint32_t index;
	uint32_t slot;          /* arena slot, TIER_ARENA_NO_SLOT when not resident */
	uint32_t filled;        /* records written into this chunk */
	uint32_t durable;       /* records [0, durable) are on NVMe, checksums in crc */
	bool dirty;             /* RAM holds records that NVMe does not */
	bool on_nvme;           /* its extent is counted in nvme_used */
	uint32_t nvme_hits;     /* records served from NVMe since it was last resident */
	uint32_t *crc;          /* [chunk_records], allocated on first flush */
	struct chunk *prev, *next; /* LRU of resident chunks (most recent at head) */
};

struct sparq_store_stream {
	struct tier_manager *m;
	uint64_t uid;
	uint64_t session;       /* label for messages (UINT64_MAX: none) */
	uint32_t index;
	uint32_t record_bytes, unit, chunk_records;
	uint32_t len;
	uint32_t n_chunks, cap_chunks;
	struct chunk **chunks;
	int fid;                /* NVMe file, -1 until needed */
	bool parked;            /* a manifest entry references its file */
	uint32_t parked_len;    /* records [0, parked_len) are what that entry describes:
				   never rewritten nor cut while it stands */
	uint32_t holds;         /* store hold count: while > 0 no chunk of it is demoted
				   and its records are not rewritten nor cut */
	struct sparq_store_stream *next_open;
};

struct parked_stream {
	uint64_t uid;
	uint32_t len, record_bytes;
};

struct parked {
	uint64_t session;
	uint32_t n;
	struct parked_stream *s;
	uint8_t *meta;
	uint32_t meta_len;
	struct parked *next;
};

struct tier_manager {
	struct sparq_store pub;
	struct tier_manager_config cfg;
	char *dir;
	struct tier_arena *arena;
	struct tier_nvme *nvme;
	pthread_mutex_t mu;
	struct chunk lru;       /* sentinel: lru.next is the most recently used */
	uint64_t next_uid;
	uint32_t align;
	uint8_t *staging;
	size_t staging_len;
	struct sparq_store_stream *open;
	struct parked *parked;
	struct tier_stats st;
	/* gather's queue of NVMe reads, one per staging unit; used under mu only */
	uint32_t q_cap;
	struct tier_io *q_ios;
	struct chunk **q_cs;
	uint32_t *q_rs;
	void **q_outs;
};

static void mlog(struct tier_manager *m, enum tier_log_level lv, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void mlog(struct tier_manager *m, enum tier_log_level lv, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	if (!m->cfg.log)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	m->cfg.log(m->cfg.log_user, lv, msg);
}

static uint32_t round_up(uint32_t x, uint32_t a)
{
	return (x + a - 1) / a * a;
}

/* ---- LRU ---- */

static void lru_unlink(struct chunk *c)
{
	if (c->prev) {
		c->prev->next = c->next;
		c->next->prev = c->prev;
		c->prev = c->next = NULL;
	}
}

static void lru_touch(struct tier_manager *m, struct chunk *c)
{
	lru_unlink(c);
	c->next = m->lru.next;
	c->prev = &m->lru;
	m->lru.next->prev = c;
	m->lru.next = c;
}

/* ---- NVMe files and chunk I/O ---- */

static void file_name(char *buf, size_t len, uint64_t uid, const char *ext)
{
	snprintf(buf, len, "%016" PRIx64 ".%s", uid, ext);
}

static int stream_file(struct tier_manager *m, struct sparq_store_stream *s, bool create)
{
	char name[64];

	if (s->fid >= 0)
		return 0;
	file_name(name, sizeof(name), s->uid, "rec");
	return tier_nvme_file_open(m->nvme, name, create, &s->fid);
}

static uint64_t chunk_extent(const struct sparq_store_stream *s)
{
	return (uint64_t)s->chunk_records * s->unit;
}

static uint8_t *record_in_slot(struct tier_manager *m, const struct chunk *c, uint32_t r)
{
	return (uint8_t *)tier_arena_ptr(m->arena, c->slot) + (size_t)r * c->owner->record_bytes;
}

static const char *label(const struct sparq_store_stream *s, char *buf, size_t len)
{
	if (s->session == UINT64_MAX)
		snprintf(buf, len, "stream %016" PRIx64, s->uid);
	else
		snprintf(buf, len, "session %" PRIu64 " stream %u", s->session, s->index);
	return buf;
}

/*
 * Writes the chunk's records [0, filled) to NVMe (not synced: the caller syncs the
 * file once for all its chunks) and records their checksums. Records travel unit by
 * unit; when the unit equals the record size the slot is written in place.
 */
static int chunk_write(struct tier_manager *m, struct chunk *c)
{
	struct sparq_store_stream *s = c->owner;
	uint64_t base = (uint64_t)c->index * chunk_extent(s);
	int ret;

	if (!c->on_nvme) {
		if (m->st.nvme_used + chunk_extent(s) > m->st.nvme_capacity)
			return -ENOSPC;
	}
	if (!c->crc) {
		c->crc = calloc(s->chunk_records, sizeof(uint32_t));
		if (!c->crc)
			return -ENOMEM;
	}
	ret = stream_file(m, s, true);
	if (ret)
		return ret;
	for (uint32_t r = 0; r < c->filled; r++)
		c->crc[r] = tier_crc32c(0, record_in_slot(m, c, r), s->record_bytes);

	if (s->unit == s->record_bytes) {
		struct tier_io io = { .fid = s->fid, .write = true, .offset = base,
				      .len = round_up(c->filled * s->unit, m->align),
				      .buf = tier_arena_ptr(m->arena, c->slot) };
		ret = tier_nvme_submit(m->nvme, &io, 1);
	} else {
		uint32_t per = (uint32_t)(m->staging_len / s->unit);
		for (uint32_t r0 = 0; r0 < c->filled && !ret; r0 += per) {
			uint32_t nr = c->filled - r0 < per ? c->filled - r0 : per;
			memset(m->staging, 0, (size_t)nr * s->unit);
			for (uint32_t r = 0; r < nr; r++)
				memcpy(m->staging + (size_t)r * s->unit, record_in_slot(m, c, r0 + r),
				       s->record_bytes);
			struct tier_io io = { .fid = s->fid, .write = true,
					      .offset = base + (uint64_t)r0 * s->unit,
					      .len = nr * s->unit, .buf = m->staging };
			ret = tier_nvme_submit(m->nvme, &io, 1);
		}
	}
	if (ret)
		return ret;
	if (!c->on_nvme) {
		c->on_nvme = true;
		m->st.nvme_used += chunk_extent(s);
		m->st.nvme_chunks++;
	}
	m->st.nvme_bytes_written += (uint64_t)c->filled * s->unit;
	c->durable = c->filled;
	c->dirty = false;
	return 0;
}

/* Frees a chunk's slot; it must be clean (durable on NVMe) or the stream be closing. */
static void chunk_release(struct tier_manager *m, struct chunk *c)
{
	if (c->slot == TIER_ARENA_NO_SLOT)
		return;
	lru_unlink(c);
	tier_arena_free(m->arena, c->slot);
	c->slot = TIER_ARENA_NO_SLOT;
	m->st.ram_chunks--;
	m->st.ram_used -= m->cfg.chunk_bytes;
}

/*
 * Demotes the least recently used chunk other than keep and those of held streams
 * (a reader has their addresses). -ENOSPC when none can go.
 */
static int demote_one(struct tier_manager *m, const struct chunk *keep)
{
	struct chunk *c = m->lru.prev;
	int ret;

	while (c != &m->lru && (c == keep || c->owner->holds))
		c = c->prev;
	if (c == &m->lru)
		return -ENOSPC;
	if (c->dirty) {
		ret = chunk_write(m, c);
		if (!ret)
			ret = tier_nvme_file_sync(m->nvme, c->owner->fid);
		if (ret) {
			char lb[96];
			mlog(m, TIER_LOG_ERROR, "demoting %s chunk %u failed: %s",
			     label(c->owner, lb, sizeof(lb)), c->index, strerror(-ret));
			return ret;
		}
	}
	chunk_release(m, c);
	m->st.demotions++;
	return 0;
}

/* A slot for c, demoting others as needed. */
static int chunk_alloc_slot(struct tier_manager *m, struct chunk *c, bool may_demote)
{
	struct sparq_store_stream *s = c->owner;
	uint32_t hint = TIER_ARENA_NO_SLOT;
	int ret;

	/* next to the stream's previous chunk: its gathers stay in a small window */
	if (c->index > 0 && s->chunks[c->index - 1]->slot != TIER_ARENA_NO_SLOT)
		hint = s->chunks[c->index - 1]->slot + 1;
	for (;;) {
		ret = tier_arena_alloc(m->arena, hint, &c->slot);
		if (ret != -ENOSPC || !may_demote)
			break;
		ret = demote_one(m, c);
		if (ret)
			return ret;
	}
	if (ret)
		return ret;
	m->st.ram_chunks++;
	m->st.ram_used += m->cfg.chunk_bytes;
	lru_touch(m, c);
	return 0;
}

static int verify(struct tier_manager *m, const struct chunk *c, uint32_t r, const void *rec)
{
	if (tier_crc32c(0, rec, c->owner->record_bytes) == c->crc[r])
		return 0;
	char lb[96];
	m->st.checksum_failures++;
	mlog(m, TIER_LOG_ERROR, "checksum mismatch: %s position %" PRIu64 " (chunk %u)",
	     label(c->owner, lb, sizeof(lb)),
	     (uint64_t)c->index * c->owner->chunk_records + r, c->index);
	return -EBADMSG;
}

/* Reads a durable chunk back into a fresh slot and checks every record. */
static int chunk_promote(struct tier_manager *m, struct chunk *c, bool may_demote)
{
	struct sparq_store_stream *s = c->owner;
	uint64_t base = (uint64_t)c->index * chunk_extent(s);
	int ret;

	ret = chunk_alloc_slot(m, c, may_demote);
	if (ret)
		return ret;
	ret = stream_file(m, s, false);
	if (ret)
		goto err;
	if (s->unit == s->record_bytes) {
		struct tier_io io = { .fid = s->fid, .offset = base,
				      .len = round_up(c->durable * s->unit, m->align),
				      .buf = tier_arena_ptr(m->arena, c->slot) };
		ret = tier_nvme_submit(m->nvme, &io, 1);
	} else {
		uint32_t per = (uint32_t)(m->staging_len / s->unit);
		for (uint32_t r0 = 0; r0 < c->durable && !ret; r0 += per) {
			uint32_t nr = c->durable - r0 < per ? c->durable - r0 : per;
			struct tier_io io = { .fid = s->fid, .offset = base + (uint64_t)r0 * s->unit,
					      .len = nr * s->unit, .buf = m->staging };
			ret = tier_nvme_submit(m->nvme, &io, 1);
			for (uint32_t r = 0; r < nr && !ret; r++)
				memcpy(record_in_slot(m, c, r0 + r), m->staging + (size_t)r * s->unit,
				       s->record_bytes);
		}
	}
	if (ret)
		goto err;
	m->st.nvme_bytes_read += (uint64_t)c->durable * s->unit;
	for (uint32_t r = 0; r < c->durable; r++) {
		ret = verify(m, c, r, record_in_slot(m, c, r));
		if (ret)
			goto err;
	}
	c->filled = c->durable;
	c->dirty = false;
	c->nvme_hits = 0;
	m->st.promotions++;
	return 0;
err:
	chunk_release(m, c);
	return ret;
}

/* ---- store interface ---- */

static int mgr_stream_open(void *ctx, uint32_t record_bytes, struct sparq_store_stream **out)
{
	struct tier_manager *m = ctx;
	struct sparq_store_stream *s;

	if (record_bytes == 0 || record_bytes % 2 || record_bytes > m->cfg.chunk_bytes)
		return -EINVAL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	pthread_mutex_lock(&m->mu);
	s->m = m;
	s->uid = m->next_uid++;
	s->session = UINT64_MAX;
	s->record_bytes = record_bytes;
	s->unit = round_up(record_bytes, m->align);
	s->chunk_records = m->cfg.chunk_bytes / record_bytes;
	s->fid = -1;
	s->next_open = m->open;
	m->open = s;
	pthread_mutex_unlock(&m->mu);
	*out = s;
	return 0;
}

static bool uid_parked(struct tier_manager *m, uint64_t uid)
{
	for (struct parked *p = m->parked; p; p = p->next)
		for (uint32_t i = 0; i < p->n; i++)
			if (p->s[i].uid == uid)
				return true;
	return false;
}

static void unlink_stream_files(struct tier_manager *m, uint64_t uid)
{
	char name[64];

	file_name(name, sizeof(name), uid, "rec");
	tier_nvme_unlink(m->nvme, name);
	file_name(name, sizeof(name), uid, "crc");
	tier_nvme_unlink(m->nvme, name);
}

static void stream_free_locked(struct tier_manager *m, struct sparq_store_stream *s)
{
	for (struct sparq_store_stream **pp = &m->open; *pp; pp = &(*pp)->next_open) {
		if (*pp == s) {
			*pp = s->next_open;
			break;
		}
	}
	for (uint32_t i = 0; i < s->n_chunks; i++) {
		struct chunk *c = s->chunks[i];
		chunk_release(m, c);
		if (c->on_nvme && !s->parked) {
			m->st.nvme_used -= chunk_extent(s);
			m->st.nvme_chunks--;
		}
		free(c->crc);
		free(c);
	}
	if (s->fid >= 0)
		tier_nvme_file_close(m->nvme, s->fid);
	if (!s->parked && !uid_parked(m, s->uid))
		unlink_stream_files(m, s->uid);
	free(s->chunks);
	free(s);
}

static void mgr_stream_close(void *ctx, struct sparq_store_stream *s)
{
	struct tier_manager *m = ctx;

	if (!s)
		return;
	pthread_mutex_lock(&m->mu);
	stream_free_locked(m, s);
	pthread_mutex_unlock(&m->mu);
}

static int ensure_chunks(struct sparq_store_stream *s, uint32_t need)
{
	if (need > s->cap_chunks) {
		uint32_t cap = s->cap_chunks ? s->cap_chunks * 2 : 8;
		while (cap < need)
			cap *= 2;
		struct chunk **t = realloc(s->chunks, cap * sizeof(*t));
		if (!t)
			return -ENOMEM;
		s->chunks = t;
		s->cap_chunks = cap;
	}
	while (s->n_chunks < need) {
		struct chunk *c = calloc(1, sizeof(*c));
		if (!c)
			return -ENOMEM;
		c->owner = s;
		c->index = s->n_chunks;
		c->slot = TIER_ARENA_NO_SLOT;
		s->chunks[s->n_chunks++] = c;
	}
	return 0;
}

/*
 * Cuts the chunks back to records [0, len): chunks past it hold nothing and give their
 * RAM back (their NVMe extent stays the stream's, for the records written next). Undoes
 * what a failed or rolled-back append left behind, so that RAM it took is free again
 * and a park never writes records past the stream's end.
 */
static void trim_locked(struct tier_manager *m, struct sparq_store_stream *s, uint32_t len)
{
	for (uint32_t ci = len / s->chunk_records; ci < s->n_chunks; ci++) {
		struct chunk *c = s->chunks[ci];
		uint32_t first = ci * s->chunk_records;
		uint32_t keep = first >= len ? 0 : len - first < c->filled ? len - first : c->filled;

		c->filled = keep;
		if (c->durable > keep)
			c->durable = keep;
		c->dirty = c->filled > c->durable;
		if (keep == 0) {
			chunk_release(m, c);
			c->nvme_hits = 0;
		}
	}
}

static int mgr_write(void *ctx, struct sparq_store_stream *s, uint32_t pos, uint32_t n,
		     const void *k_rows, const void *v_rows)
{
	struct tier_manager *m = ctx;
	uint32_t row = s->record_bytes / 2;
	int ret = 0;

	if (pos > s->len)
		return -EINVAL;
	pthread_mutex_lock(&m->mu);
	/* the parked copy's records stay as its checksums say (a re-park relies on it);
	 * a held stream's records stay where its reader has their addresses */
	if (pos < s->parked_len || (s->holds && pos < s->len)) {
		ret = -EBUSY;
		goto out;
	}
	/* n = 0 cuts the stream to pos: the store contract's length pos + n */
	if (n == 0) {
		trim_locked(m, s, pos);
		s->len = pos;
		goto out;
	}
	ret = ensure_chunks(s, (uint32_t)(((uint64_t)pos + n + s->chunk_records - 1) /
					  s->chunk_records));
	for (uint32_t i = 0; i < n && !ret;) {
		uint32_t p = pos + i, ci = p / s->chunk_records, r = p % s->chunk_records;
		uint32_t run = s->chunk_records - r < n - i ? s->chunk_records - r : n - i;
		struct chunk *c = s->chunks[ci];

		if (c->slot == TIER_ARENA_NO_SLOT) {
			ret = c->durable ? chunk_promote(m, c, true) : chunk_alloc_slot(m, c, true);
			if (ret)
				break;
		}
		lru_touch(m, c);
		for (uint32_t t = 0; t < run; t++) {
			uint8_t *rec = record_in_slot(m, c, r + t);
			memcpy(rec, (const uint8_t *)k_rows + (size_t)(i + t) * row, row);
			memcpy(rec + row, (const uint8_t *)v_rows + (size_t)(i + t) * row, row);
		}
		if (r < c->durable)
			c->durable = r; /* rewritten records are no longer what NVMe holds */
		if (r + run > c->filled)
			c->filled = r + run;
		c->dirty = true;
		m->st.ram_bytes_written += (uint64_t)run * s->record_bytes;
		i += run;
	}
	if (!ret)
		s->len = pos + n;
	else
		trim_locked(m, s, s->len); /* chunks it filled or took for nothing */
out:
	pthread_mutex_unlock(&m->mu);
	return ret;
}

/* Reads the queued NVMe records, checks them and copies them out. */
static int flush_reads(struct tier_manager *m, struct tier_io *ios, struct chunk **cs,
		       uint32_t *rs, void **outs, uint32_t n)
{
	int ret;

	if (n == 0)
		return 0;
	ret = tier_nvme_submit(m->nvme, ios, n);
	if (ret) {
		mlog(m, TIER_LOG_ERROR, "NVMe record read failed: %s", strerror(-ret));
		return ret;
	}
	for (uint32_t i = 0; i < n; i++) {
		struct sparq_store_stream *s = cs[i]->owner;
		m->st.nvme_bytes_read += s->unit;
		m->st.nvme_gather_bytes += s->unit;
		m->st.nvme_gather_requested += s->record_bytes;
		ret = verify(m, cs[i], rs[i], ios[i].buf);
		if (ret)
			return ret;
		memcpy(outs[i], ios[i].buf, s->record_bytes);
	}
	m->st.nvme_records_read += n;
	return 0;
}

static int mgr_gather(void *ctx, const struct sparq_gather *g, uint32_t n)
{
	struct tier_manager *m = ctx;
	struct tier_io *ios = m->q_ios;
	struct chunk **cs = m->q_cs;
	uint32_t *rs = m->q_rs, q = 0;
	void **outs = m->q_outs;
	int ret = 0;

	pthread_mutex_lock(&m->mu);
	for (uint32_t i = 0; i < n; i++)
		for (uint32_t j = 0; j < g[i].n; j++)
			if (g[i].pos[j] >= g[i].stream->len) {
				ret = -ERANGE;
				goto out;
			}
	for (uint32_t i = 0; i < n && !ret; i++) {
		struct sparq_store_stream *s = g[i].stream;
		uint32_t per = (uint32_t)(m->staging_len / s->unit); /* <= q_cap: unit >= align */

		for (uint32_t j = 0; j < g[i].n && !ret; j++) {
			uint32_t p = g[i].pos[j], ci = p / s->chunk_records, r = p % s->chunk_records;
			struct chunk *c = s->chunks[ci];
			uint8_t *out = (uint8_t *)g[i].out + (size_t)j * s->record_bytes;

			if (c->slot != TIER_ARENA_NO_SLOT) {
				memcpy(out, record_in_slot(m, c, r), s->record_bytes);
				lru_touch(m, c);
				m->st.ram_records_read++;
				continue;
			}
			/* the staging buffer is shared by the whole batch: flush when full */
			if (q == per) {
				ret = flush_reads(m, ios, cs, rs, outs, q);
				q = 0;
				if (ret)
					break;
			}
			ret = stream_file(m, s, false);
			if (ret)
				break;
			ios[q] = (struct tier_io){ .fid = s->fid, .offset = (uint64_t)p * s->unit,
						   .len = s->unit,
						   .buf = m->staging + (size_t)q * s->unit };
			cs[q] = c;
			rs[q] = r;
			outs[q] = out;
			q++;
			c->nvme_hits++;
		}
		/* streams of other record sizes pack the staging buffer differently */
		if (!ret && q && i + 1 < n && g[i + 1].stream->unit != s->unit) {
			ret = flush_reads(m, ios, cs, rs, outs, q);
			q = 0;
		}
	}
	if (!ret)
		ret = flush_reads(m, ios, cs, rs, outs, q);
	/*
	 * Chunks read record by record often enough come back to RAM whole, but only into
	 * free slots: under uniform top-k traffic every chunk crosses the threshold at
	 * about the same time, and promoting by demoting would churn whole chunks through
	 * the device to serve single records. Their reads count as gather traffic, so the
	 * read amplification says what the device really did.
	 */
	for (uint32_t i = 0; i < n && !ret; i++) {
		struct sparq_store_stream *s = g[i].stream;
		for (uint32_t ci = 0; ci < s->n_chunks; ci++) {
			struct chunk *c = s->chunks[ci];
			if (c->slot != TIER_ARENA_NO_SLOT || c->nvme_hits < s->chunk_records / 4)
				continue;
			if (chunk_promote(m, c, false) == 0)
				m->st.nvme_gather_bytes += (uint64_t)c->durable * s->unit;
			else
				c->nvme_hits = 0; /* no free slot: count afresh */
		}
	}
out:
	pthread_mutex_unlock(&m->mu);
	return ret;
}

/*
 * In place (store.h addr): within a slot records lie back to back, record_bytes apart
 * (record_in_slot), so the run is the rest of the chunk's filled records; the NVMe
 * unit padding exists only in the files. The lock keeps the chunk table steady
 * against a concurrent append; the hold is what keeps the slot.
 */
static const void *mgr_addr(void *ctx, struct sparq_store_stream *s, uint32_t pos,
			    uint32_t *n_run)
{
	struct tier_manager *m = ctx;
	const void *a = NULL;

	pthread_mutex_lock(&m->mu);
	if (pos < s->len) {
		const struct chunk *c = s->chunks[pos / s->chunk_records];
		uint32_t r = pos % s->chunk_records;

		if (c->slot != TIER_ARENA_NO_SLOT && r < c->filled) {
			a = record_in_slot(m, c, r);
			*n_run = c->filled - r;
		}
	}
	pthread_mutex_unlock(&m->mu);
	return a;
}

/* Every slot lives in the arena, reserved at open and released at close. */
static int mgr_region(void *ctx, void **base, size_t *bytes)
{
	struct tier_manager *m = ctx;

	tier_arena_region(m->arena, base, bytes);
	return 0;
}

/*
 * A look at each chunk's slot, no I/O: a stream with a chunk on NVMe is copied by its
 * reader (gather reads only the selected records from there; promoting the stream
 * whole would read all of them). A held stream's chunks move to the front of the LRU,
 * as a gather's reads would have moved them.
 */
static int mgr_hold(void *ctx, struct sparq_store_stream *s)
{
	struct tier_manager *m = ctx;
	uint32_t n_chunks;
	int ret = 0;

	pthread_mutex_lock(&m->mu);
	n_chunks = (uint32_t)(((uint64_t)s->len + s->chunk_records - 1) / s->chunk_records);
	for (uint32_t ci = 0; ci < n_chunks; ci++)
		if (s->chunks[ci]->slot == TIER_ARENA_NO_SLOT) {
			ret = -EAGAIN;
			m->st.hold_misses++;
			goto out;
		}
	for (uint32_t ci = n_chunks; ci-- > 0;)
		lru_touch(m, s->chunks[ci]);
	s->holds++;
	m->st.holds++;
out:
	pthread_mutex_unlock(&m->mu);
	return ret;
}

static void mgr_release(void *ctx, struct sparq_store_stream *s)
{
	struct tier_manager *m = ctx;

	pthread_mutex_lock(&m->mu);
	if (s->holds)
		s->holds--;
	pthread_mutex_unlock(&m->mu);
}

static void mgr_destroy(void *ctx)
{
	tier_manager_close(ctx);
}

static const struct sparq_store_ops mgr_ops = {
	.name = "tiers",
	.stream_open = mgr_stream_open,
	.stream_close = mgr_stream_close,
	.write = mgr_write,
	.gather = mgr_gather,
	.addr = mgr_addr,
	.region = mgr_region,
	.hold = mgr_hold,
	.release = mgr_release,
	.destroy = mgr_destroy,
};

/* in_place off (the baseline): every record leaves the manager as a copy */
static const struct sparq_store_ops mgr_copy_ops = {
	.name = "tiers",
	.stream_open = mgr_stream_open,
	.stream_close = mgr_stream_close,
	.write = mgr_write,
	.gather = mgr_gather,
	.destroy = mgr_destroy,
};

/* ---- files written with plain syscalls (park-time metadata, not the request path) ---- */

static int write_file_durable(struct tier_manager *m, const char *name, const void *buf,
			      size_t len)
{
	char path[4096];
	int fd, ret = 0;

	snprintf(path, sizeof(path), "%s/%s", m->dir, name);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	for (size_t off = 0; off < len;) {
		ssize_t w = write(fd, (const uint8_t *)buf + off, len - off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			ret = -errno;
			break;
		}
		off += (size_t)w;
	}
	if (!ret && fsync(fd))
		ret = -errno;
	close(fd);
	return ret;
}

/* A test's crash point (manager.h): the data directory has just changed. */
static void step(struct tier_manager *m, const char *what)
{
	if (m->cfg.park_step)
		m->cfg.park_step(m->cfg.step_user, what);
}

/*
 * Replaces name as a whole: "<name>.tmp" written and fsynced, then renamed over it, so
 * that a crash leaves the old file or the new one, never a mix. The caller syncs the
 * directory to make the rename itself durable.
 */
static int replace_file_durable(struct tier_manager *m, const char *name, const void *buf,
				size_t len, const char *what)
{
	char tmp[128], tpath[4200], fpath[4200];
	int ret;

	snprintf(tmp, sizeof(tmp), "%s.tmp", name);
	ret = write_file_durable(m, tmp, buf, len);
	if (ret)
		return ret;
	step(m, what);
	snprintf(tpath, sizeof(tpath), "%s/%s", m->dir, tmp);
	snprintf(fpath, sizeof(fpath), "%s/%s", m->dir, name);
	if (rename(tpath, fpath))
		return -errno;
	return 0;
}

static int read_file(struct tier_manager *m, const char *name, uint8_t **buf, size_t *len,
		     size_t max)
{
	char path[4096];
	struct stat stb;
	int fd, ret = 0;

	snprintf(path, sizeof(path), "%s/%s", m->dir, name);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &stb) || stb.st_size < 0 || (size_t)stb.st_size > max) {
		close(fd);
		return -EBADMSG;
	}
	*len = (size_t)stb.st_size;
	*buf = malloc(*len ? *len : 1);
	if (!*buf) {
		close(fd);
		return -ENOMEM;
	}
	for (size_t off = 0; off < *len;) {
		ssize_t r = read(fd, *buf + off, *len - off);
		if (r <= 0) {
			if (r < 0 && errno == EINTR)
				continue;
			ret = r < 0 ? -errno : -EBADMSG;
			break;
		}
		off += (size_t)r;
	}
	close(fd);
	if (ret) {
		free(*buf);
		*buf = NULL;
	}
	return ret;
}

/* "<uid>.crc": magic, uid, len, record_bytes, crc of the table, then len uint32. */
struct crc_header {
	char magic[8];
	uint64_t uid;
	uint32_t len, record_bytes;
	uint32_t table_crc, header_crc;
};

static int write_crc_file(struct tier_manager *m, struct sparq_store_stream *s)
{
	size_t bytes = sizeof(struct crc_header) + (size_t)s->len * 4;
	uint8_t *buf = malloc(bytes);
	struct crc_header *h = (struct crc_header *)buf;
	uint32_t *tab = (uint32_t *)(buf + sizeof(*h));
	char name[64];
	int ret;

	if (!buf)
		return -ENOMEM;
	for (uint32_t p = 0; p < s->len; p++)
		tab[p] = s->chunks[p / s->chunk_records]->crc[p % s->chunk_records];
	memset(h, 0, sizeof(*h));
	memcpy(h->magic, CRC_MAGIC, 8);
	h->uid = s->uid;
	h->len = s->len;
	h->record_bytes = s->record_bytes;
	h->table_crc = tier_crc32c(0, tab, (size_t)s->len * 4);
	h->header_crc = tier_crc32c(0, h, offsetof(struct crc_header, header_crc));
	file_name(name, sizeof(name), s->uid, "crc");
	ret = replace_file_durable(m, name, buf, bytes, "checksums written");
	free(buf);
	return ret;
}

/*
 * Loads and checks "<uid>.crc"; *tab gets the first len checksums. The file may hold
 * more: a re-park of the grown stream replaced it before its new manifest entry was
 * published, and the records the old entry describes are the same (never rewritten).
 */
static int read_crc_file(struct tier_manager *m, uint64_t uid, uint32_t len, uint32_t rb,
			 uint32_t **tab)
{
	char name[64];
	uint8_t *buf;
	size_t bytes;
	int ret;

	file_name(name, sizeof(name), uid, "crc");
	ret = read_file(m, name, &buf, &bytes,
			sizeof(struct crc_header) + (size_t)SPARQ_POS_MAX * 4);
	if (ret)
		return ret;
	struct crc_header h;
	if (bytes < sizeof(h))
		goto bad;
	memcpy(&h, buf, sizeof(h));
	if (memcmp(h.magic, CRC_MAGIC, 8) || h.uid != uid || h.len < len || h.record_bytes != rb ||
	    bytes != sizeof(h) + (size_t)h.len * 4 ||
	    h.header_crc != tier_crc32c(0, &h, offsetof(struct crc_header, header_crc)) ||
	    h.table_crc != tier_crc32c(0, buf + sizeof(h), (size_t)h.len * 4))
		goto bad;
	*tab = malloc((size_t)len * 4 + 4);
	if (!*tab) {
		free(buf);
		return -ENOMEM;
	}
	memcpy(*tab, buf + sizeof(h), (size_t)len * 4);
	free(buf);
	return 0;
bad:
	free(buf);
	return -EBADMSG;
}

/* "session-<id>.man": header, n stream records, meta; CRC32C over all before it. */
struct man_header {
	char magic[8];
	uint32_t version, n_streams;
	uint64_t session;
	uint32_t meta_len, pad;
};

static void man_name(char *buf, size_t len, uint64_t session)
{
	snprintf(buf, len, "session-%016" PRIx64 ".man", session);
}

static int publish_manifest(struct tier_manager *m, const struct parked *p)
{
	size_t bytes = sizeof(struct man_header) + (size_t)p->n * sizeof(struct parked_stream) +
		       p->meta_len + 4;
	uint8_t *buf = calloc(1, bytes);
	struct man_header h = { .version = MAN_VERSION, .n_streams = p->n,
				.session = p->session, .meta_len = p->meta_len };
	char name[128];
	int ret;

	if (!buf)
		return -ENOMEM;
	memcpy(h.magic, MAN_MAGIC, 8);
	memcpy(buf, &h, sizeof(h));
	memcpy(buf + sizeof(h), p->s, (size_t)p->n * sizeof(struct parked_stream));
	memcpy(buf + bytes - 4 - p->meta_len, p->meta, p->meta_len);
	uint32_t crc = tier_crc32c(0, buf, bytes - 4);
	memcpy(buf + bytes - 4, &crc, 4);
	man_name(name, sizeof(name), p->session);
	/* temp, fsync, rename, fsync dir: the entry exists whole or not at all, and a
	 * re-park's entry replaces the old one in the rename */
	ret = replace_file_durable(m, name, buf, bytes, "manifest entry written");
	free(buf);
	if (ret)
		return ret;
	step(m, "manifest entry renamed");
	return tier_nvme_sync_dir(m->nvme);
}

static void parked_free(struct parked *p)
{
	if (!p)
		return;
	free(p->s);
	free(p->meta);
	free(p);
}

/* Parses a manifest entry; NULL with a reason when it is not whole and consistent. */
static struct parked *parse_manifest(const uint8_t *buf, size_t bytes, const char **why)
{
	struct man_header h;
	struct parked *p;

	if (bytes < sizeof(h) + 4) {
		*why = "truncated";
		return NULL;
	}
	memcpy(&h, buf, sizeof(h));
	uint32_t crc;
	memcpy(&crc, buf + bytes - 4, 4);
	if (memcmp(h.magic, MAN_MAGIC, 8) || h.version != MAN_VERSION) {
		*why = "unknown magic or version";
		return NULL;
	}
	if (h.n_streams == 0 || h.n_streams > STREAMS_MAX || h.meta_len > META_MAX ||
	    bytes != sizeof(h) + (size_t)h.n_streams * sizeof(struct parked_stream) + h.meta_len + 4) {
		*why = "sizes do not add up";
		return NULL;
	}
	if (crc != tier_crc32c(0, buf, bytes - 4)) {
		*why = "checksum mismatch";
		return NULL;
	}
	p = calloc(1, sizeof(*p));
	if (!p) {
		*why = "out of memory";
		return NULL;
	}
	p->session = h.session;
	p->n = h.n_streams;
	p->meta_len = h.meta_len;
	p->s = malloc((size_t)p->n * sizeof(*p->s));
	p->meta = malloc(p->meta_len ? p->meta_len : 1);
	if (!p->s || !p->meta) {
		parked_free(p);
		*why = "out of memory";
		return NULL;
	}
	memcpy(p->s, buf + sizeof(h), (size_t)p->n * sizeof(*p->s));
	memcpy(p->meta, buf + sizeof(h) + (size_t)p->n * sizeof(*p->s), p->meta_len);
	for (uint32_t i = 0; i < p->n; i++) {
		if (p->s[i].record_bytes == 0 || p->s[i].record_bytes % 2 ||
		    p->s[i].len > SPARQ_POS_MAX) {
			parked_free(p);
			*why = "bad stream geometry";
			return NULL;
		}
	}
	return p;
}

static struct parked *find_parked(struct tier_manager *m, uint64_t session)
{
	for (struct parked *p = m->parked; p; p = p->next)
		if (p->session == session)
			return p;
	return NULL;
}

/*
 * Releases the streams of entry p that keep[0..n) does not hold on to: an open one
 * loses its parked mark (its files go when it is closed), the files of a closed one go
 * now. The entry itself is already unpublished (dropped, or replaced by a re-park).
 */
static void release_entry_locked(struct tier_manager *m, const struct parked *p,
				 struct sparq_store_stream *const *keep, uint32_t n)
{
	for (uint32_t i = 0; i < p->n; i++) {
		struct sparq_store_stream *open = NULL;
		bool kept = false;

		for (uint32_t j = 0; j < n; j++)
			kept |= keep[j]->uid == p->s[i].uid;
		if (kept)
			continue;
		for (struct sparq_store_stream *s = m->open; s; s = s->next_open)
			if (s->uid == p->s[i].uid)
				open = s;
		if (open) {
			open->parked = false; /* its files go when it is closed */
			open->parked_len = 0;
		} else {
			struct sparq_store_stream tmp = { .record_bytes = p->s[i].record_bytes,
							  .unit = round_up(p->s[i].record_bytes, m->align),
							  .chunk_records = m->cfg.chunk_bytes /
									   p->s[i].record_bytes };
			uint64_t chunks = tmp.chunk_records ?
				(p->s[i].len + tmp.chunk_records - 1) / tmp.chunk_records : 0;
			m->st.nvme_used -= chunks * chunk_extent(&tmp);
			m->st.nvme_chunks -= chunks;
			unlink_stream_files(m, p->s[i].uid);
		}
	}
}

/*
 * tier_park and tier_repark: records, then checksums, then the manifest entry, each
 * durable before the next. With old set (a re-park) the new entry replaces old in one
 * rename. Until then old stays valid: its records are never rewritten (parked_len),
 * the new records lie past them in the same files, and its checksum files are replaced
 * whole by ones that start with its checksums.
 */
static int park_locked(struct tier_manager *m, uint64_t session, const void *meta,
		       uint32_t meta_len, struct sparq_store_stream *const *streams, uint32_t n,
		       struct parked *old)
{
	struct parked *p = NULL;
	int ret = 0;

	p = calloc(1, sizeof(*p));
	if (!p || !(p->s = calloc(n, sizeof(*p->s))) || !(p->meta = malloc(meta_len + 1))) {
		ret = -ENOMEM;
		goto out;
	}
	p->session = session;
	p->n = n;
	p->meta_len = meta_len;
	if (meta_len)
		memcpy(p->meta, meta, meta_len);
	for (uint32_t i = 0; i < n; i++) {
		struct sparq_store_stream *s = streams[i];
		if (!s || s->m != m || s->len == 0)
			ret = -EINVAL;
		/* another session's parked records are not this one's to publish */
		else if (s->parked && s->session != session)
			ret = -EINVAL;
		if (ret)
			goto out;
	}
	/* data first, each file synced once, then its checksums */
	for (uint32_t i = 0; i < n && !ret; i++) {
		struct sparq_store_stream *s = streams[i];

		for (uint32_t ci = 0; ci < s->n_chunks && !ret; ci++)
			if (s->chunks[ci]->dirty) {
				ret = chunk_write(m, s->chunks[ci]);
				if (!ret)
					step(m, "records written");
			}
		if (!ret)
			ret = stream_file(m, s, true);
		if (!ret)
			ret = tier_nvme_file_sync(m->nvme, s->fid);
		if (!ret)
			ret = write_crc_file(m, s);
		if (!ret)
			step(m, "checksums renamed");
		p->s[i] = (struct parked_stream){ .uid = s->uid, .len = s->len,
						  .record_bytes = s->record_bytes };
	}
	if (!ret)
		ret = tier_nvme_sync_dir(m->nvme);
	if (!ret) {
		step(m, "checksums durable");
		ret = publish_manifest(m, p);
	}
	if (ret)
		goto out;
	step(m, "manifest entry durable");
	for (uint32_t i = 0; i < n; i++) {
		streams[i]->parked = true;
		streams[i]->parked_len = streams[i]->len;
		streams[i]->session = session;
		streams[i]->index = i;
	}
	if (old) {
		/* swap the entry in place, then free what only the old one referenced */
		struct parked tmp = *old;
		*old = *p;
		old->next = tmp.next;
		*p = tmp;
		p->next = NULL;
		release_entry_locked(m, p, streams, n);
		if (tier_nvme_sync_dir(m->nvme) == 0)
			step(m, "old records released");
	} else {
		p->next = m->parked;
		m->parked = p;
		p = NULL;
	}
	m->st.parks++;
out:
	if (ret)
		mlog(m, TIER_LOG_ERROR, "%sparking session %" PRIu64 " failed: %s", old ? "re-" : "",
		     session, strerror(-ret));
	parked_free(p);
	return ret;
}

int tier_park(struct tier_manager *m, uint64_t session, const void *meta, uint32_t meta_len,
	      struct sparq_store_stream *const *streams, uint32_t n)
{
	int ret;

	if (n == 0 || n > STREAMS_MAX || meta_len > META_MAX || (meta_len && !meta))
		return -EINVAL;
	pthread_mutex_lock(&m->mu);
	ret = find_parked(m, session) ? -EEXIST :
	      park_locked(m, session, meta, meta_len, streams, n, NULL);
	pthread_mutex_unlock(&m->mu);
	return ret;
}

int tier_repark(struct tier_manager *m, uint64_t session, const void *meta, uint32_t meta_len,
		struct sparq_store_stream *const *streams, uint32_t n)
{
	struct parked *old;
	int ret;

	if (n == 0 || n > STREAMS_MAX || meta_len > META_MAX || (meta_len && !meta))
		return -EINVAL;
	pthread_mutex_lock(&m->mu);
	old = find_parked(m, session);
	ret = old ? park_locked(m, session, meta, meta_len, streams, n, old) : -ENOENT;
	pthread_mutex_unlock(&m->mu);
	return ret;
}

int tier_parked_list(struct tier_manager *m, struct tier_parked_info *out, uint32_t max,
		     uint32_t *count)
{
	uint32_t k = 0;

	pthread_mutex_lock(&m->mu);
	for (struct parked *p = m->parked; p; p = p->next, k++) {
		if (k >= max)
			continue;
		out[k] = (struct tier_parked_info){ .session = p->session, .n_streams = p->n,
						    .meta_len = p->meta_len };
		for (uint32_t i = 0; i < p->n; i++)
			out[k].records += p->s[i].len;
	}
	pthread_mutex_unlock(&m->mu);
	*count = k;
	return 0;
}

int tier_parked_meta(struct tier_manager *m, uint64_t session, void *meta, uint32_t meta_cap,
		     uint32_t *meta_len)
{
	struct parked *p;
	int ret = 0;

	pthread_mutex_lock(&m->mu);
	p = find_parked(m, session);
	if (!p) {
		ret = -ENOENT;
	} else {
		*meta_len = p->meta_len;
		if (meta_cap < p->meta_len)
			ret = -ENOSPC;
		else if (p->meta_len)
			memcpy(meta, p->meta, p->meta_len);
	}
	pthread_mutex_unlock(&m->mu);
	return ret;
}

/* Builds an open stream over a parked stream's file and checksums. */
static int stream_from_parked(struct tier_manager *m, const struct parked *p, uint32_t i,
			      struct sparq_store_stream **out)
{
	const struct parked_stream *ps = &p->s[i];
	struct sparq_store_stream *s = calloc(1, sizeof(*s));
	uint32_t *tab = NULL;
	int ret;

	if (!s)
		return -ENOMEM;
	s->m = m;
	s->uid = ps->uid;
	s->session = p->session;
	s->index = i;
	s->record_bytes = ps->record_bytes;
	s->unit = round_up(ps->record_bytes, m->align);
	s->chunk_records = m->cfg.chunk_bytes / ps->record_bytes;
	s->fid = -1;
	s->parked = true;
	ret = s->chunk_records ? 0 : -EINVAL;
	if (!ret)
		ret = read_crc_file(m, ps->uid, ps->len, ps->record_bytes, &tab);
	if (!ret)
		ret = ensure_chunks(s, (ps->len + s->chunk_records - 1) / s->chunk_records);
	for (uint32_t ci = 0; ci < s->n_chunks && !ret; ci++) {
		struct chunk *c = s->chunks[ci];
		uint32_t first = ci * s->chunk_records;
		c->filled = c->durable = ps->len - first < s->chunk_records ? ps->len - first
									    : s->chunk_records;
		c->on_nvme = true;
		c->crc = calloc(s->chunk_records, sizeof(uint32_t));
		if (!c->crc)
			ret = -ENOMEM;
		else
			memcpy(c->crc, tab + first, (size_t)c->durable * 4);
	}
	if (!ret)
		ret = stream_file(m, s, false);
	free(tab);
	if (ret) {
		for (uint32_t ci = 0; ci < s->n_chunks; ci++) {
			free(s->chunks[ci]->crc);
			free(s->chunks[ci]);
		}
		if (s->fid >= 0)
			tier_nvme_file_close(m->nvme, s->fid);
		free(s->chunks);
		free(s);
		return ret;
	}
	s->len = ps->len;
	s->parked_len = ps->len;
	s->next_open = m->open;
	m->open = s;
	*out = s;
	return 0;
}

int tier_resume(struct tier_manager *m, uint64_t session, void *meta, uint32_t meta_cap,
		struct sparq_store_stream **streams, uint32_t n, bool to_ram)
{
	struct parked *p;
	uint32_t made = 0;
	int ret = 0;

	pthread_mutex_lock(&m->mu);
	p = find_parked(m, session);
	if (!p) {
		ret = -ENOENT;
		goto out;
	}
	if (n != p->n || meta_cap < p->meta_len) {
		ret = -EINVAL;
		goto out;
	}
	for (struct sparq_store_stream *s = m->open; s; s = s->next_open)
		for (uint32_t i = 0; i < p->n; i++)
			if (s->uid == p->s[i].uid) {
				ret = -EBUSY;
				goto out;
			}
	for (; made < n && !ret; made++)
		ret = stream_from_parked(m, p, made, &streams[made]);
	if (ret) {
		made--;
		goto undo;
	}
	for (uint32_t i = 0; i < n && to_ram && !ret; i++)
		for (uint32_t ci = 0; ci < streams[i]->n_chunks && !ret; ci++)
			ret = chunk_promote(m, streams[i]->chunks[ci], true);
	if (ret)
		goto undo;
	if (meta && p->meta_len)
		memcpy(meta, p->meta, p->meta_len);
	m->st.resumes++;
	goto out;
undo:
	mlog(m, TIER_LOG_ERROR, "resuming session %" PRIu64 " failed: %s", session, strerror(-ret));
	while (made--)
		stream_free_locked(m, streams[made]);
out:
	pthread_mutex_unlock(&m->mu);
	return ret;
}

int tier_drop(struct tier_manager *m, uint64_t session)
{
	struct parked **pp, *p = NULL;
	char name[128];
	int ret;

	pthread_mutex_lock(&m->mu);
	for (pp = &m->parked; *pp; pp = &(*pp)->next)
		if ((*pp)->session == session) {
			p = *pp;
			break;
		}
	if (!p) {
		pthread_mutex_unlock(&m->mu);
		return -ENOENT;
	}
	man_name(name, sizeof(name), session);
	ret = tier_nvme_unlink(m->nvme, name);
	if (!ret)
		ret = tier_nvme_sync_dir(m->nvme);
	if (ret) {
		pthread_mutex_unlock(&m->mu);
		return ret;
	}
	*pp = p->next;
	release_entry_locked(m, p, NULL, 0);
	parked_free(p);
	pthread_mutex_unlock(&m->mu);
	return 0;
}

/* ---- open, replay, close ---- */

void tier_manager_defaults(struct tier_manager_config *cfg)
{
	*cfg = (struct tier_manager_config){
		.numa_node = -1, .ram_bytes = 1ull << 30, .huge_pages = true,
		.dir = "sparqd-data", .nvme_bytes = 16ull << 30, .queue_depth = 128,
		.staging_bytes = 4u << 20, .chunk_bytes = 512u << 10, .in_place = true,
	};
}

static int check_config(const struct tier_manager_config *cfg, const char **why)
{
	if (cfg->chunk_bytes == 0 || cfg->chunk_bytes % 4096 || cfg->chunk_bytes > (64u << 20)) {
		*why = "chunk_bytes must be a multiple of 4096 up to 64 MiB";
		return -EINVAL;
	}
	if (cfg->ram_bytes < cfg->chunk_bytes) {
		*why = "RAM tier capacity is smaller than one chunk";
		return -EINVAL;
	}
	if (cfg->nvme_bytes < cfg->chunk_bytes) {
		*why = "NVMe tier capacity is smaller than one chunk";
		return -EINVAL;
	}
	if (cfg->staging_bytes < cfg->chunk_bytes) {
		*why = "staging buffer must hold at least one chunk";
		return -EINVAL;
	}
	if (!cfg->dir || !cfg->dir[0] || strlen(cfg->dir) > 3000) {
		*why = "data directory path missing or too long";
		return -EINVAL;
	}
	return 0;
}

static bool parse_uid(const char *name, const char *ext, uint64_t *uid)
{
	char *end;
	size_t n = strlen(name), e = strlen(ext);

	if (n != 16 + 1 + e || name[16] != '.' || strcmp(name + 17, ext))
		return false;
	*uid = strtoull(name, &end, 16);
	return end == name + 16;
}

/* Loads every whole manifest entry; removes temp files, bad entries and orphans. */
static int replay(struct tier_manager *m)
{
	DIR *d = opendir(m->dir);
	struct dirent *de;
	uint64_t uid;

	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		const char *nm = de->d_name;
		size_t len = strlen(nm);
		if (len > 4 && !strcmp(nm + len - 4, ".tmp")) {
			mlog(m, TIER_LOG_WARN, "discarding half-written manifest entry %s", nm);
			tier_nvme_unlink(m->nvme, nm);
			continue;
		}
		if (strncmp(nm, "session-", 8) || len < 5 || strcmp(nm + len - 4, ".man"))
			continue;
		uint8_t *buf;
		size_t bytes;
		const char *why = "unreadable";
		struct parked *p = NULL;
		if (read_file(m, nm, &buf, &bytes, 64u << 20) == 0) {
			p = parse_manifest(buf, bytes, &why);
			free(buf);
		}
		for (uint32_t i = 0; p && i < p->n; i++) {
			uint32_t *tab;
			if (read_crc_file(m, p->s[i].uid, p->s[i].len, p->s[i].record_bytes, &tab)) {
				why = "a checksum file is missing or damaged";
				parked_free(p);
				p = NULL;
				break;
			}
			free(tab);
		}
		if (!p) {
			mlog(m, TIER_LOG_WARN, "discarding manifest entry %s: %s", nm, why);
			tier_nvme_unlink(m->nvme, nm);
			continue;
		}
		p->next = m->parked;
		m->parked = p;
		mlog(m, TIER_LOG_INFO, "parked session %" PRIu64 " recovered (%u streams)",
		     p->session, p->n);
	}
	rewinddir(d);
	while ((de = readdir(d))) {
		bool rec = parse_uid(de->d_name, "rec", &uid), crc = parse_uid(de->d_name, "crc", &uid);
		if (!rec && !crc)
			continue;
		if (uid >= m->next_uid)
			m->next_uid = uid + 1;
		if (!uid_parked(m, uid)) {
			mlog(m, TIER_LOG_INFO, "removing orphaned file %s", de->d_name);
			tier_nvme_unlink(m->nvme, de->d_name);
		}
	}
	closedir(d);
	for (struct parked *p = m->parked; p; p = p->next)
		for (uint32_t i = 0; i < p->n; i++) {
			uint32_t cr = m->cfg.chunk_bytes / p->s[i].record_bytes;
			uint64_t chunks = cr ? (p->s[i].len + cr - 1) / cr : 0;
			m->st.nvme_used += chunks * cr * round_up(p->s[i].record_bytes, m->align);
			m->st.nvme_chunks += chunks;
		}
	return tier_nvme_sync_dir(m->nvme);
}

int tier_manager_open(const struct tier_manager_config *cfg, struct tier_manager **out,
		      const char **why)
{
	struct tier_manager *m;
	const char *reason = "out of memory";
	int ret;

	ret = check_config(cfg, why);
	if (ret)
		return ret;
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->cfg = *cfg;
	m->dir = strdup(cfg->dir);
	m->lru.next = m->lru.prev = &m->lru;
	m->next_uid = 1;
	pthread_mutex_init(&m->mu, NULL);
	if (!m->dir) {
		ret = -ENOMEM;
		goto err;
	}
	struct tier_arena_config ac = { .node = cfg->numa_node, .capacity_bytes = cfg->ram_bytes,
					.slot_bytes = cfg->chunk_bytes,
					.huge_pages = cfg->huge_pages };
	ret = tier_arena_create(&ac, &m->arena, &reason);
	if (ret)
		goto err;
	struct tier_nvme_config nc = { .dir = cfg->dir, .queue_depth = cfg->queue_depth,
				       .staging_bytes = cfg->staging_bytes, .max_files = 4096 };
	ret = tier_nvme_open(&nc, &m->nvme, &reason);
	if (ret)
		goto err;
	m->align = tier_nvme_align(m->nvme);
	m->staging = tier_nvme_staging(m->nvme, &m->staging_len);
	m->q_cap = (uint32_t)(m->staging_len / m->align);
	m->q_ios = calloc(m->q_cap, sizeof(*m->q_ios));
	m->q_cs = calloc(m->q_cap, sizeof(*m->q_cs));
	m->q_rs = calloc(m->q_cap, sizeof(*m->q_rs));
	m->q_outs = calloc(m->q_cap, sizeof(*m->q_outs));
	if (!m->q_ios || !m->q_cs || !m->q_rs || !m->q_outs) {
		ret = -ENOMEM;
		reason = "out of memory";
		goto err;
	}
	struct tier_arena_stats as;
	tier_arena_stats(m->arena, &as);
	m->st.ram_capacity = as.capacity_bytes;
	m->st.nvme_capacity = cfg->nvme_bytes;
	m->st.numa_node = as.node;
	m->st.io_align = m->align;
	ret = replay(m);
	if (ret) {
		reason = "cannot read the data directory";
		goto err;
	}
	m->pub.ops = cfg->in_place ? &mgr_ops : &mgr_copy_ops;
	m->pub.ctx = m;
	*out = m;
	return 0;
err:
	*why = reason;
	tier_manager_close(m);
	return ret;
}

void tier_manager_close(struct tier_manager *m)
{
	if (!m)
		return;
	while (m->open)
		stream_free_locked(m, m->open);
	while (m->parked) {
		struct parked *p = m->parked;
		m->parked = p->next;
		parked_free(p);
	}
	free(m->q_ios);
	free(m->q_cs);
	free(m->q_rs);
	free(m->q_outs);
	tier_nvme_close(m->nvme);
	tier_arena_destroy(m->arena);
	pthread_mutex_destroy(&m->mu);
	free(m->dir);
	free(m);
}

struct sparq_store *tier_manager_store(struct tier_manager *m)
{
	return &m->pub;
}

void tier_stream_label(struct sparq_store_stream *s, uint64_t session, uint32_t index)
{
	pthread_mutex_lock(&s->m->mu);
	s->session = session;
	s->index = index;
	pthread_mutex_unlock(&s->m->mu);
}

void tier_stream_placement(struct sparq_store_stream *s, uint64_t *ram, uint64_t *nvme)
{
	*ram = *nvme = 0;
	pthread_mutex_lock(&s->m->mu);
	for (uint32_t i = 0; i < s->n_chunks; i++) {
		const struct chunk *c = s->chunks[i];

		if (!c)
			continue;
		if (c->slot != TIER_ARENA_NO_SLOT)
			*ram += c->filled;
		else
			*nvme += c->filled;
	}
	pthread_mutex_unlock(&s->m->mu);
}

void tier_manager_stats(struct tier_manager *m, struct tier_stats *out)
{
	pthread_mutex_lock(&m->mu);
	*out = m->st;
	pthread_mutex_unlock(&m->mu);
}

struct tier_nvme *tier_manager_nvme(struct tier_manager *m)
{
	return m->nvme;
}
