/*
 * store_heap.c — the host-RAM record store the core ships with: each stream's records
 * in fixed-size chunks of consecutive positions (the unit the tiers later place and
 * migrate), one allocation per chunk, a chunk table that grows by doubling. A shared
 * capacity limit turns "out of memory" into -ENOSPC instead of an abort.
 *
 * Thread-safety: distinct streams may be written and gathered concurrently; the byte
 * accounting is atomic. One stream is used by one thread at a time (stream.h).
 *
 * The region variant (sparq_store_heap_create_region) carves chunks from one mapping
 * reserved at creation instead of one malloc each, so a GPU can register all records
 * once and gather them in place; freed chunks wait on a free list per chunk size.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "store.h"

struct heap_store {
	struct sparq_store pub;
	uint32_t chunk_records;   /* power of two */
	uint32_t chunk_shift;
	uint64_t capacity;        /* bytes, 0 = unlimited */
	_Atomic uint64_t used;
	/* region variant only (region != NULL): */
	uint8_t *region;          /* [capacity] every chunk lives here */
	size_t bump;              /* bytes of the region ever handed out */
	pthread_mutex_t mu;       /* guards bump and the free lists */
	struct free_list *lists;  /* [n_lists] freed chunks, one list per chunk size */
	uint32_t n_lists;
};

/* Freed region chunks of one size, linked through their first bytes. */
struct free_list {
	size_t bytes;
	void *head;
};

struct sparq_store_stream {
	uint32_t record_bytes;
	uint32_t len;
	uint32_t n_chunks, cap_chunks;
	uint8_t **chunks;         /* [n_chunks][chunk_records * record_bytes] */
};

static uint8_t *chunk_alloc(struct heap_store *hs, size_t bytes)
{
	uint8_t *c = NULL;

	if (!hs->region)
		return aligned_alloc(64, bytes);
	pthread_mutex_lock(&hs->mu);
	for (uint32_t i = 0; i < hs->n_lists; i++) {
		if (hs->lists[i].bytes == bytes && hs->lists[i].head) {
			c = hs->lists[i].head;
			memcpy(&hs->lists[i].head, c, sizeof(void *));
			break;
		}
	}
	/* 64-byte steps keep every chunk as aligned as the malloc variant's */
	if (!c && hs->bump + ((bytes + 63) & ~(size_t)63) <= hs->capacity) {
		c = hs->region + hs->bump;
		hs->bump += (bytes + 63) & ~(size_t)63;
	}
	pthread_mutex_unlock(&hs->mu);
	return c;
}

/* Returns a chunk; region chunks go on their size's free list (-ENOMEM leaks it there:
 * the region is released whole at destroy anyway). */
static void chunk_free(struct heap_store *hs, uint8_t *c, size_t bytes)
{
	uint32_t i;

	if (!hs->region) {
		free(c);
		return;
	}
	pthread_mutex_lock(&hs->mu);
	for (i = 0; i < hs->n_lists && hs->lists[i].bytes != bytes; i++)
		;
	if (i == hs->n_lists) {
		struct free_list *t = realloc(hs->lists, (i + 1) * sizeof(*t));
		if (t) {
			hs->lists = t;
			hs->lists[i] = (struct free_list){ .bytes = bytes, .head = NULL };
			hs->n_lists++;
		}
	}
	if (i < hs->n_lists) {
		memcpy(c, &hs->lists[i].head, sizeof(void *));
		hs->lists[i].head = c;
	}
	pthread_mutex_unlock(&hs->mu);
}

static int heap_stream_open(void *ctx, uint32_t record_bytes, struct sparq_store_stream **out)
{
	struct sparq_store_stream *s;

	(void)ctx;
	if (record_bytes == 0 || record_bytes % 2)
		return -EINVAL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->record_bytes = record_bytes;
	*out = s;
	return 0;
}

static void heap_stream_close(void *ctx, struct sparq_store_stream *s)
{
	struct heap_store *hs = ctx;

	if (!s)
		return;
	for (uint32_t i = 0; i < s->n_chunks; i++)
		chunk_free(hs, s->chunks[i], (size_t)hs->chunk_records * s->record_bytes);
	atomic_fetch_sub(&hs->used, (uint64_t)s->n_chunks * hs->chunk_records * s->record_bytes);
	free(s->chunks);
	free(s);
}

/* Makes chunks exist for positions [0, end). */
static int heap_reserve(struct heap_store *hs, struct sparq_store_stream *s, uint64_t end)
{
	uint64_t need = (end + hs->chunk_records - 1) >> hs->chunk_shift;
	size_t chunk_bytes = (size_t)hs->chunk_records * s->record_bytes;

	if (need > s->cap_chunks) {
		uint64_t cap = s->cap_chunks ? s->cap_chunks : 8;
		while (cap < need)
			cap *= 2;
		uint8_t **t = realloc(s->chunks, cap * sizeof(*t));
		if (!t)
			return -ENOMEM;
		s->chunks = t;
		s->cap_chunks = (uint32_t)cap;
	}
	while (s->n_chunks < need) {
		uint64_t used = atomic_fetch_add(&hs->used, chunk_bytes) + chunk_bytes;
		if (hs->capacity && used > hs->capacity) {
			atomic_fetch_sub(&hs->used, chunk_bytes);
			return -ENOSPC;
		}
		/* 64-byte aligned so SIMD loads of a record never split a line needlessly */
		uint8_t *c = chunk_alloc(hs, chunk_bytes);
		if (!c) {
			atomic_fetch_sub(&hs->used, chunk_bytes);
			return hs->region ? -ENOSPC : -ENOMEM;
		}
		s->chunks[s->n_chunks++] = c;
	}
	return 0;
}

static int heap_write(void *ctx, struct sparq_store_stream *s, uint32_t pos, uint32_t n,
		      const void *k_rows, const void *v_rows)
{
	struct heap_store *hs = ctx;
	uint32_t row = s->record_bytes / 2;
	const uint8_t *k = k_rows, *v = v_rows;
	int ret;

	if (pos > s->len)
		return -EINVAL;
	ret = heap_reserve(hs, s, (uint64_t)pos + n);
	if (ret)
		return ret;
	for (uint32_t i = 0; i < n; i++) {
		uint32_t p = pos + i;
		uint8_t *rec = s->chunks[p >> hs->chunk_shift] +
			       (size_t)(p & (hs->chunk_records - 1)) * s->record_bytes;
		memcpy(rec, k + (size_t)i * row, row);
		memcpy(rec + row, v + (size_t)i * row, row);
	}
	s->len = pos + n;
	return 0;
}

static int heap_gather(void *ctx, const struct sparq_gather *g, uint32_t n)
{
	struct heap_store *hs = ctx;

	for (uint32_t i = 0; i < n; i++) {
		const struct sparq_store_stream *s = g[i].stream;
		uint8_t *out = g[i].out;

		for (uint32_t j = 0; j < g[i].n; j++)
			if (g[i].pos[j] >= s->len)
				return -ERANGE;
		for (uint32_t j = 0; j < g[i].n; j++) {
			uint32_t p = g[i].pos[j];
			memcpy(out + (size_t)j * s->record_bytes,
			       s->chunks[p >> hs->chunk_shift] +
				       (size_t)(p & (hs->chunk_records - 1)) * s->record_bytes,
			       s->record_bytes);
		}
	}
	return 0;
}

static const void *heap_addr(void *ctx, struct sparq_store_stream *s, uint32_t pos,
			     uint32_t *n_run)
{
	struct heap_store *hs = ctx;
	uint32_t off = pos & (hs->chunk_records - 1);

	if (pos >= s->len)
		return NULL;
	*n_run = hs->chunk_records - off;
	if (*n_run > s->len - pos)
		*n_run = s->len - pos;
	return s->chunks[pos >> hs->chunk_shift] + (size_t)off * s->record_bytes;
}

static int heap_region(void *ctx, void **base, size_t *bytes)
{
	struct heap_store *hs = ctx;

	if (!hs->region)
		return -ENODATA;
	*base = hs->region;
	*bytes = hs->capacity;
	return 0;
}

static void heap_destroy(void *ctx)
{
	struct heap_store *hs = ctx;

	if (hs->region) {
		munmap(hs->region, hs->capacity);
		pthread_mutex_destroy(&hs->mu);
		free(hs->lists);
	}
	free(hs);
}

static const struct sparq_store_ops heap_ops = {
	.name = "heap",
	.stream_open = heap_stream_open,
	.stream_close = heap_stream_close,
	.write = heap_write,
	.gather = heap_gather,
	.addr = heap_addr,
	.region = NULL,
	.destroy = heap_destroy,
};

/* The region variant differs only in having a region to report. */
static const struct sparq_store_ops heap_region_ops = {
	.name = "heap-region",
	.stream_open = heap_stream_open,
	.stream_close = heap_stream_close,
	.write = heap_write,
	.gather = heap_gather,
	.addr = heap_addr,
	.region = heap_region,
	.destroy = heap_destroy,
};

int sparq_store_heap_create(uint32_t chunk_records, uint64_t capacity_bytes,
			    struct sparq_store **out)
{
	struct heap_store *hs;

	if (chunk_records == 0 || (chunk_records & (chunk_records - 1)))
		return -EINVAL;
	hs = calloc(1, sizeof(*hs));
	if (!hs)
		return -ENOMEM;
	hs->chunk_records = chunk_records;
	hs->chunk_shift = (uint32_t)__builtin_ctz(chunk_records);
	hs->capacity = capacity_bytes;
	hs->pub.ops = &heap_ops;
	hs->pub.ctx = hs;
	*out = &hs->pub;
	return 0;
}

int sparq_store_heap_create_region(uint32_t chunk_records, uint64_t capacity_bytes,
				   struct sparq_store **out)
{
	struct heap_store *hs;
	struct sparq_store *st;
	int ret;

	if (capacity_bytes == 0 || capacity_bytes > SIZE_MAX / 2)
		return -EINVAL;
	ret = sparq_store_heap_create(chunk_records, capacity_bytes, &st);
	if (ret)
		return ret;
	hs = st->ctx;
	/* reserved, not committed: pages cost memory once records are written (or once a
	 * device registers the region, which pins it whole) */
	void *p = mmap(NULL, (size_t)capacity_bytes, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED) {
		free(hs);
		return -ENOMEM;
	}
	hs->region = p;
	pthread_mutex_init(&hs->mu, NULL);
	hs->pub.ops = &heap_region_ops;
	*out = &hs->pub;
	return 0;
}

uint64_t sparq_store_heap_used(const struct sparq_store *st)
{
	const struct heap_store *hs = st->ctx;

	return atomic_load(&((struct heap_store *)hs)->used);
}
