/*
 * stream.h — one stream: positions 0..S-1 of one (session, layer, KV head)
 * (DESIGN.md §2). It ties together the three things a decode step needs: the
 * backend's channel-major key slice for scoring, the store's full-precision records
 * for the exact step, and the fp32 running sum of V for the mean.
 *
 * A stream is not thread-safe: appends and attends on one stream are serialized by
 * the caller; distinct streams may be used from distinct threads.
 */
#ifndef SPARQ_STREAM_H
#define SPARQ_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "sparq.h"
#include "store.h"

struct sparq_stream;

/*
 * A new empty stream of head dimension d in storage dtype dt, its key slice on be
 * and its records in st (both must outlive it). -EINVAL for a bad geometry, -ENOMEM.
 */
int sparq_stream_create(struct sparq_backend *be, struct sparq_store *st, uint32_t d,
			enum sparq_dtype dt, struct sparq_stream **out, const char **why);
void sparq_stream_destroy(struct sparq_stream *s);

/*
 * A stream over records that already exist in st (e.g. a parked session resumed by
 * the tiers): takes ownership of records (closed by sparq_stream_destroy, also on
 * failure), reads its len records back in batches to rebuild the key slice on be and
 * the running sum of V. -EINVAL for a bad geometry or a record holding NaN/Inf, the
 * store's gather error (-ERANGE when it holds fewer than len records, -EBADMSG, -EIO),
 * -ENOMEM.
 */
int sparq_stream_attach(struct sparq_backend *be, struct sparq_store *st,
			struct sparq_store_stream *records, uint32_t len, uint32_t d,
			enum sparq_dtype dt, struct sparq_stream **out, const char **why);

/*
 * Appends n positions: k and v are [n][d] rows in the stream's dtype. Nothing is
 * appended on failure: -EINVAL for NaN/Inf in k or v (the reason names which),
 * -EOVERFLOW past SPARQ_POS_MAX, or the store's/backend's error (-ENOSPC, -ENOMEM).
 */
int sparq_stream_append(struct sparq_stream *s, uint32_t n, const uint16_t *k,
			const uint16_t *v, const char **why);

/*
 * Undoing appends: a mark holds the stream's length and its V running sum bit for bit
 * (subtracting the rows again in fp32 would not give the sum back exactly). A caller
 * that appends to several streams as one operation marks each first and rewinds them
 * all when one fails. A mark takes sparq_stream_mark_size() bytes of the caller's.
 */
struct sparq_stream_mark;
size_t sparq_stream_mark_size(const struct sparq_stream *s);
void sparq_stream_mark(const struct sparq_stream *s, struct sparq_stream_mark *mark);
/*
 * Back to the mark: length, records (the store cuts them) and V sum exactly as they
 * were; the key slice needs nothing (the next append overwrites past the length).
 * -EINVAL for a mark of another stream or one longer than the stream; the store's
 * error (-EBUSY where the records are parked), with nothing changed.
 */
int sparq_stream_rewind(struct sparq_stream *s, const struct sparq_stream_mark *mark);

uint32_t sparq_stream_len(const struct sparq_stream *s);
/* The store stream holding its records (for store-specific queries such as placement). */
struct sparq_store_stream *sparq_stream_records(const struct sparq_stream *s);
uint32_t sparq_stream_head_dim(const struct sparq_stream *s);
enum sparq_dtype sparq_stream_dtype(const struct sparq_stream *s);
/* K row and V row back to back: 2·d·sizeof(dtype). */
uint32_t sparq_stream_record_bytes(const struct sparq_stream *s);

/* Copies records pos[0..n) (K row then V row each) to out; -ERANGE past the end. */
int sparq_stream_gather(struct sparq_stream *s, const uint32_t *pos, uint32_t n, void *out);

/* The fp32 mean of V over all positions, [d]; -ENODATA for an empty stream. */
int sparq_stream_vmean(const struct sparq_stream *s, float *out);

#endif
