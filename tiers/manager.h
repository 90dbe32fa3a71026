/*
 * manager.h — the tier manager: a record store (sparq/store.h) whose chunks live in a
 * NUMA host-RAM arena or on NVMe, moved between them by use (DESIGN.md §3, issue 3).
 *
 * - Appends land in RAM. Under RAM pressure the least-recently-used chunks are demoted:
 *   written to the stream's NVMe file, made durable (fdatasync), and only then freed.
 * - A gather copies RAM-resident records and reads the others straight from NVMe
 *   with io_uring, one aligned unit per record (d=128 fp16: one 512 B sector), every
 *   record checked against its CRC32C. A chunk read often enough is promoted back.
 * - Parking a session writes all its streams' chunks and per-record checksums, makes
 *   them durable, then publishes a manifest entry atomically (temp file, fsync,
 *   rename, fsync of the directory). Parked sessions survive restarts and kill -9: on
 *   open the manifest is replayed, half-written entries are discarded with a log line.
 *   Re-parking a grown session replaces its entry in that same rename: a crash leaves
 *   the old copy or the new one, never neither.
 *
 * - In place (store.h addr, region, hold, release; issue 5): a reader holds a stream
 *   whose chunks are all in RAM and reads its records where they lie in the arena,
 *   whose one region a GPU registers once. No chunk of a held stream is demoted; when
 *   only such chunks are left, an append that needs a slot fails with -ENOSPC (and
 *   keeps every record it had). A stream with a chunk on NVMe is not held (-EAGAIN):
 *   its reader gathers copies, reading only the selected records from the device.
 *   With in_place off the store has none of these ops and copies every record.
 *
 * Thread-safety: every call takes the manager's lock; streams may be used from any
 * thread.
 */
#ifndef SPARQ_TIERS_MANAGER_H
#define SPARQ_TIERS_MANAGER_H

#include <stdbool.h>
#include <stdint.h>

#include "store.h"

struct tier_manager;

enum tier_log_level { TIER_LOG_ERROR = 0, TIER_LOG_WARN = 1, TIER_LOG_INFO = 2, TIER_LOG_DEBUG = 3 };

struct tier_manager_config {
	/* host RAM */
	int numa_node;            /* -1 = local */
	uint64_t ram_bytes;       /* RAM tier capacity */
	bool huge_pages;
	/* NVMe */
	const char *dir;          /* data directory (chunk files, manifest) */
	uint64_t nvme_bytes;      /* NVMe tier capacity */
	uint32_t queue_depth;     /* io_uring depth, 1..4096 */
	uint32_t staging_bytes;   /* registered staging buffer for record reads */
	/* layout */
	uint32_t chunk_bytes;     /* bytes per chunk (a multiple of 4096), the unit of placement */
	/* readers may hold RAM-resident streams and read records in place (store.h hold);
	 * false: the store has no addr/region/hold and every record is copied out */
	bool in_place;
	/* where log lines go (may be NULL: silent) */
	void (*log)(void *user, enum tier_log_level level, const char *msg);
	void *log_user;
	/* Test hook (NULL outside crash tests): called after each step of a park that
	 * changes the data directory, naming it, so a test can kill the process there. */
	void (*park_step)(void *user, const char *step);
	void *step_user;
};

/* Fills cfg with defaults: local node, 1 GiB RAM, ./sparqd-data, 16 GiB NVMe, queue
 * depth 128, 4 MiB staging, 512 KiB chunks, huge pages on, in place on, no log. */
void tier_manager_defaults(struct tier_manager_config *cfg);

/*
 * Validates cfg, opens the arena and the NVMe engine, replays the manifest (parked
 * sessions become listable; half-written entries and orphaned files are removed and
 * logged). -EINVAL with a reason; -EOPNOTSUPP when the directory refuses O_DIRECT or
 * io_uring; -ENOMEM; other -errno from the directory.
 */
int tier_manager_open(const struct tier_manager_config *cfg, struct tier_manager **out,
		      const char **why);
/* Frees RAM; files of open, unparked streams are removed; parked data stays. */
void tier_manager_close(struct tier_manager *m);

/* The record-store view (streams opened here are unparked until parked). */
struct sparq_store *tier_manager_store(struct tier_manager *m);

/* Names a stream in log lines and errors ("session 7 stream 12 position 4096"). */
void tier_stream_label(struct sparq_store_stream *s, uint64_t session, uint32_t index);

/*
 * Parks session: makes every record of streams[0..n) durable on NVMe with its
 * checksum, then publishes {session, meta, the streams' lengths} in the manifest.
 * Returns only after the entry is durable. The streams stay open and usable; their
 * RAM chunks become clean and are the first to go under pressure. The records a
 * manifest entry describes cannot be rewritten or cut while it stands (-EBUSY from the
 * store's write). -EEXIST when session is already parked (tier_repark replaces it),
 * -ENOSPC, -EIO, -EINVAL (also for a stream parked by another session).
 */
int tier_park(struct tier_manager *m, uint64_t session, const void *meta, uint32_t meta_len,
	      struct sparq_store_stream *const *streams, uint32_t n);

/*
 * Parks session again as streams[0..n) stand now (typically the streams it was
 * resumed into, grown since): the new entry replaces the old one in a single rename,
 * so that a crash at any moment leaves a restart with the old entry or the new one,
 * whole and with checksums that verify. Files only the old entry referenced are freed
 * after the switch. -ENOENT when session is not parked; otherwise as tier_park, and on
 * failure the old entry stands.
 */
int tier_repark(struct tier_manager *m, uint64_t session, const void *meta, uint32_t meta_len,
		struct sparq_store_stream *const *streams, uint32_t n);

struct tier_parked_info {
	uint64_t session;
	uint32_t n_streams;
	uint32_t meta_len;
	uint64_t records;      /* sum of the streams' lengths */
};

/* Parked sessions, up to max of them; *count receives how many there are. */
int tier_parked_list(struct tier_manager *m, struct tier_parked_info *out, uint32_t max,
		     uint32_t *count);

/*
 * Copies a parked session's meta (as given to tier_park) into meta (meta_cap bytes)
 * without opening anything; *meta_len receives its length. -ENOENT when not parked,
 * -ENOSPC when meta_cap is too small (*meta_len still set).
 */
int tier_parked_meta(struct tier_manager *m, uint64_t session, void *meta, uint32_t meta_cap,
		     uint32_t *meta_len);

/*
 * Opens the streams of a parked session (n must be its stream count; meta_cap at
 * least its meta_len). With to_ram the chunks are read back into RAM now, each checked
 * against its checksums; otherwise they stay on NVMe and are served from there.
 * The session stays parked (its manifest entry describes a prefix of the streams,
 * which only grow) until tier_drop. -ENOENT, -EBUSY when its streams are open,
 * -EBADMSG on a checksum mismatch (logged with session and position), -ENOSPC, -EIO.
 */
int tier_resume(struct tier_manager *m, uint64_t session, void *meta, uint32_t meta_cap,
		struct sparq_store_stream **streams, uint32_t n, bool to_ram);

/* Unpublishes a parked session; its files go when its streams are closed (or now). */
int tier_drop(struct tier_manager *m, uint64_t session);

struct tier_stats {
	uint64_t ram_capacity, ram_used, ram_chunks;
	uint64_t nvme_capacity, nvme_used, nvme_chunks;
	uint64_t ram_records_read, nvme_records_read;   /* records served by gathers */
	uint64_t ram_bytes_written, nvme_bytes_written;
	uint64_t nvme_bytes_read;                        /* from the device, all causes */
	uint64_t nvme_gather_bytes, nvme_gather_requested; /* read amplification of gathers */
	uint64_t demotions, promotions, parks, resumes;
	uint64_t checksum_failures;
	uint64_t holds, hold_misses;   /* streams held for in-place reads; refused (-EAGAIN) */
	int numa_node;
	uint32_t io_align;
};
void tier_manager_stats(struct tier_manager *m, struct tier_stats *out);

/*
 * Where stream s's records are now: *ram receives how many sit in RAM-resident chunks,
 * *nvme how many are served from NVMe only (what sparqctl sessions shows).
 */
void tier_stream_placement(struct sparq_store_stream *s, uint64_t *ram, uint64_t *nvme);

/* The NVMe engine, for tests that inject faults (tier_nvme_inject). */
struct tier_nvme *tier_manager_nvme(struct tier_manager *m);

#endif
