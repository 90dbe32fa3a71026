/*
 * nvme.h — the NVMe tier's I/O engine: files opened O_DIRECT in one data directory,
 * read and written through one io_uring with registered (fixed) files and a registered
 * staging buffer. Requests are small descriptors (STYLE §6) submitted as a batch and
 * reaped together, keeping up to queue_depth in flight; the request path makes no
 * blocking read/write syscalls. A fault-injection switch lets tests provoke ENOSPC,
 * EIO and short transfers without a failing disk.
 *
 * Thread-safety: one engine is used by one thread at a time (the tier manager holds
 * its lock around every call).
 */
#ifndef SPARQ_TIERS_NVME_H
#define SPARQ_TIERS_NVME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tier_nvme;

struct tier_nvme_config {
	const char *dir;          /* data directory; created (mode 0700) if missing */
	uint32_t queue_depth;     /* 1..4096; io_uring entries and max requests in flight */
	uint32_t staging_bytes;   /* registered staging buffer; a multiple of 4096, >= 4096 */
	uint32_t max_files;       /* registered file table size, 1..65536 */
};

/*
 * Validates cfg, creates the directory if needed, probes O_DIRECT and io_uring there.
 * -EINVAL with a reason for a bad config; -EOPNOTSUPP when the filesystem refuses
 * O_DIRECT or the kernel refuses io_uring (callers and tests say so and skip); -errno.
 */
int tier_nvme_open(const struct tier_nvme_config *cfg, struct tier_nvme **out, const char **why);
void tier_nvme_close(struct tier_nvme *n);

/* O_DIRECT alignment for offsets, lengths and buffers: the device's logical block size
 * (at least 512), or 4096 where it cannot be read. */
uint32_t tier_nvme_align(const struct tier_nvme *n);
/* The registered staging buffer: I/O whose buffer lies inside it uses fixed buffers. */
void *tier_nvme_staging(const struct tier_nvme *n, size_t *len);
const char *tier_nvme_dir(const struct tier_nvme *n);

/*
 * Opens name (a plain file name inside the directory, no '/') O_DIRECT, creating it
 * (mode 0600) when create is set, and registers it; *fid is its fixed-file index.
 * -ENOENT, -EMFILE when the registered table is full, -EINVAL for a bad name.
 */
int tier_nvme_file_open(struct tier_nvme *n, const char *name, bool create, int *fid);
void tier_nvme_file_close(struct tier_nvme *n, int fid);
/* Current size in bytes. */
int tier_nvme_file_size(struct tier_nvme *n, int fid, uint64_t *size);
/* fdatasync (through io_uring) so that everything written to fid is durable. */
int tier_nvme_file_sync(struct tier_nvme *n, int fid);
/* Removes name from the directory (closing nothing). -ENOENT. */
int tier_nvme_unlink(struct tier_nvme *n, const char *name);
/* fsync of the directory itself, after creating, renaming or unlinking files. */
int tier_nvme_sync_dir(struct tier_nvme *n);

struct tier_io {
	int fid;
	bool write;
	uint64_t offset;   /* multiple of tier_nvme_align() */
	uint32_t len;      /* multiple of tier_nvme_align() */
	void *buf;         /* aligned to tier_nvme_align() */
	int res;           /* out: len, or -errno (a short transfer is -EIO) */
};

/*
 * Performs every request, up to queue_depth in flight, and waits for all of them.
 * Returns 0 when all succeeded, else the first failing request's error (every res is
 * still filled in). Short transfers are not retried: they are -EIO (a record read is
 * one aligned unit, so a short one means the file is truncated or the device failed).
 */
int tier_nvme_submit(struct tier_nvme *n, struct tier_io *ios, uint32_t count);

/* Fault injection (tests): after `after` more requests succeed, the next `count`
 * requests of the selected kind fail with err (e.g. -EIO, -ENOSPC) or, when short is
 * set, transfer half their length. count = 0 switches injection off. */
struct tier_nvme_fault {
	uint32_t after;
	uint32_t count;
	int err;
	bool short_io;
	bool reads, writes;   /* which requests it applies to */
};
void tier_nvme_inject(struct tier_nvme *n, const struct tier_nvme_fault *f);

struct tier_nvme_stats {
	uint64_t reads, writes, syncs;
	uint64_t bytes_read, bytes_written;
	uint64_t errors;
};
void tier_nvme_stats(const struct tier_nvme *n, struct tier_nvme_stats *out);

#endif
