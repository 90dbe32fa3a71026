/*
 * store.h — the record store: where the authoritative, full-precision records of a
 * stream live (DESIGN.md §2). A record is position j's K row and V row back to back
 * (d=128 fp16: 256 B + 256 B = 512 B). The algorithm reaches records only through
 * this interface, so the tiers (NUMA arenas, NVMe through io_uring) plug in without
 * touching it. Gathers are batched across streams so that a tier can issue the
 * reads of a whole layer at once.
 *
 * sparq_store_heap_create() is the plain host-RAM implementation the core ships with.
 */
#ifndef SPARQ_STORE_H
#define SPARQ_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct sparq_store_stream; /* one stream's records inside a store; owned by the store */

/* One stream's share of a batched gather: records pos[0..n) copied, in that order, to out. */
struct sparq_gather {
	struct sparq_store_stream *stream;
	const uint32_t *pos;    /* [n] positions, each < the stream's length */
	uint32_t n;
	void *out;              /* [n][record_bytes] */
};

struct sparq_store_ops {
	const char *name;
	/* A new empty stream of records of record_bytes each. */
	int (*stream_open)(void *ctx, uint32_t record_bytes, struct sparq_store_stream **out);
	void (*stream_close)(void *ctx, struct sparq_store_stream *s);
	/*
	 * Writes records pos..pos+n-1 from n K rows and n V rows (row_bytes = record_bytes/2
	 * each). pos must be <= the stream's length; the length becomes pos + n, so a
	 * failed append of the caller can simply be written again. -ENOSPC when full.
	 */
	int (*write)(void *ctx, struct sparq_store_stream *s, uint32_t pos, uint32_t n,
		     const void *k_rows, const void *v_rows);
	/* Copies the requested records; -ERANGE for a position past a stream's end. */
	int (*gather)(void *ctx, const struct sparq_gather *g, uint32_t n);
	/*
	 * Optional (NULL where records are not byte-addressable, e.g. on NVMe): the address
	 * of record pos in memory and, in *n_run, how many records lie back to back from
	 * it there (pos and the n_run - 1 after it, each record_bytes further on). Lets RAM
	 * tiers be read in place (CPU exact step, GPU zero-copy gather). NULL for a
	 * position past the stream's end or not in memory now.
	 * Without a hold op (heap stores) an address is valid until the stream is next
	 * written or closed. With one, only while the stream is held (below): records of a
	 * store with hold may move at any moment otherwise.
	 */
	const void *(*addr)(void *ctx, struct sparq_store_stream *s, uint32_t pos,
			    uint32_t *n_run);
	/*
	 * Optional (NULL where records have no single fixed home): the one host range every
	 * record of the store lives in, fixed from creation to destroy, so that a device can
	 * register (pin and map) it once and read records in place (DESIGN.md §8: register
	 * large ranges once, never per request). Returns 0, or -ENODATA if there is none.
	 */
	int (*region)(void *ctx, void **base, size_t *bytes);
	/*
	 * Optional, in pairs (NULL where addr, when present, is always valid, as in the
	 * heap stores). A store whose records move between memory and elsewhere (the tier
	 * manager: chunks demoted to NVMe by other streams' appends) pins a stream with it:
	 *  - hold returns 0 when every record of s (positions < its length now) is in
	 *    memory, and promises that from then until the matching release, addr returns
	 *    for each of them the same valid address, and the bytes there stay the
	 *    record's. Holds nest (a count per stream): the promise lasts until the last
	 *    release. A hold does no I/O and takes time in the stream's chunk count, not
	 *    its record count.
	 *  - hold returns -EAGAIN, taking nothing, when some record of s is not in memory:
	 *    the caller copies that stream's records with gather for this call instead.
	 *  - While s is held, a write that would rewrite or cut a held record (pos below
	 *    the length) fails with -EBUSY and changes nothing; appends are allowed (the
	 *    records they add are not covered by a hold taken before them).
	 *  - Closing a stream ends its holds with it: a caller must not close a stream
	 *    while it still reads the stream's records, nor release a closed stream.
	 * release undoes one successful hold of s.
	 */
	int (*hold)(void *ctx, struct sparq_store_stream *s);
	void (*release)(void *ctx, struct sparq_store_stream *s);
	void (*destroy)(void *ctx);
};

struct sparq_store {
	const struct sparq_store_ops *ops;
	void *ctx;
};

/*
 * Host-RAM store: records in chunks of chunk_records consecutive positions of one
 * stream (a power of two), at most capacity_bytes of chunks in all (0 = unlimited).
 * Returns -EINVAL for a chunk size that is not a power of two, -ENOMEM.
 */
int sparq_store_heap_create(uint32_t chunk_records, uint64_t capacity_bytes,
			    struct sparq_store **out);
/*
 * The same store with every chunk carved from one region of capacity_bytes (required,
 * > 0) reserved at creation and reported by the region op, so a GPU can map all its
 * records once. Freed chunks are reused for chunks of the same size; -ENOSPC when the
 * region has no room left. -EINVAL for a bad chunk size or capacity 0, -ENOMEM.
 */
int sparq_store_heap_create_region(uint32_t chunk_records, uint64_t capacity_bytes,
				   struct sparq_store **out);
/* Bytes of chunk memory the heap store holds now. */
uint64_t sparq_store_heap_used(const struct sparq_store *st);

/*
 * For a caller about to read s's records for one call: true when it may read them in
 * place with addr (*held is then set when a hold was taken, to be released after the
 * call's last read of them), false when it must copy them with gather.
 */
static inline bool sparq_store_in_place(const struct sparq_store *st,
					struct sparq_store_stream *s, bool *held)
{
	*held = false;
	if (!st->ops->addr)
		return false;
	if (!st->ops->hold)
		return true;
	if (st->ops->hold(st->ctx, s))
		return false;
	*held = true;
	return true;
}

static inline void sparq_store_destroy(struct sparq_store *st)
{
	if (st)
		st->ops->destroy(st->ctx);
}

#endif
