/*
 * nvme.c — the NVMe tier's I/O engine (nvme.h): one io_uring, one registered staging
 * buffer, a sparse registered file table indexed by fid, files opened O_DIRECT relative
 * to a directory fd held for the engine's life.
 *
 * A batch of descriptors is validated as a whole first (nothing is submitted when one is
 * bad), then fed to the ring keeping at most queue_depth in flight: fill SQEs, one
 * io_uring_submit per round, wait for one CQE and reap every CQE that is ready, refill.
 * Each SQE's user_data is its descriptor's index, so completions in any order land in the
 * right res. Every call returns with nothing in flight: the caller's buffers are its own
 * again, and no CQE of one call can be mistaken for one of the next.
 *
 * Fault injection is decided when a descriptor is about to be queued, in descriptor
 * order, so a test can aim it at "the third read" whatever order the device completes in.
 * An injected error never reaches the device; an injected short transfer really moves
 * half the bytes (rounded down to the alignment unit, since O_DIRECT cannot move less).
 *
 * A failure of the ring itself (io_uring_enter refusing to submit or wait for good)
 * leaves the engine "broken": every later request fails with that error rather than
 * risk submitting stale SQEs into a ring whose state is unknown.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include <liburing.h>

#include "nvme.h"

#define NVME_NAME_MAX 200u
#define NVME_STAGING_MAX (1u << 30)
#define NVME_QD_MAX 4096u
#define NVME_FILES_MAX 65536u
/* The kernel clamps one read/write to MAX_RW_COUNT (INT_MAX rounded down to a page);
 * a longer request would come back short, so it is refused up front. */
#define NVME_LEN_MAX 0x7ffff000u
/* user_data of the engine's own single operations (fsync, probe); never an index. */
#define NVME_TAG_SINGLE UINT64_MAX
/* -EAGAIN from io_uring_enter with nothing in flight (no request memory in the kernel)
 * is retried this many times, 100 µs apart, before the engine gives up: ~1 s. */
#define NVME_AGAIN_RETRIES 10000

struct nvme_file {
	int fd;                   /* -1: slot free */
	char *name;
};

struct tier_nvme {
	struct io_uring ring;
	bool ring_ready;
	int broken;               /* 0, or the ring error that ended the engine */
	int dir_fd;
	char *dir;
	uint32_t qd;
	uint32_t align;
	void *staging;            /* [staging_len], registered as buffer index 0 */
	size_t staging_len;
	uint32_t max_files;
	uint32_t open_files;
	struct nvme_file *files;  /* [max_files], index == fid == registered slot */
	struct tier_nvme_fault fault;   /* after/count count down as requests pass */
	struct tier_nvme_stats stats;
};

static bool nvme_is_pow2(uint64_t x)
{
	return x && !(x & (x - 1));
}

static int nvme_check_config(const struct tier_nvme_config *cfg, const char **why)
{
	if (!cfg) {
		*why = "no config";
		return -EINVAL;
	}
	if (!cfg->dir || !cfg->dir[0]) {
		*why = "dir must name a directory";
		return -EINVAL;
	}
	if (strlen(cfg->dir) >= PATH_MAX) {
		*why = "dir is longer than PATH_MAX";
		return -EINVAL;
	}
	if (cfg->queue_depth < 1 || cfg->queue_depth > NVME_QD_MAX) {
		*why = "queue_depth must be 1..4096";
		return -EINVAL;
	}
	if (cfg->staging_bytes < 4096 || cfg->staging_bytes % 4096 ||
	    cfg->staging_bytes > NVME_STAGING_MAX) {
		*why = "staging_bytes must be a multiple of 4096 in 4096..1 GiB";
		return -EINVAL;
	}
	if (cfg->max_files < 1 || cfg->max_files > NVME_FILES_MAX) {
		*why = "max_files must be 1..65536";
		return -EINVAL;
	}
	return 0;
}

/* Reads a small decimal from a sysfs file; 0 when it cannot. */
static uint64_t nvme_read_sysfs_u64(const char *path)
{
	char buf[32];
	ssize_t r;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return 0;
	r = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (r <= 0)
		return 0;
	buf[r] = '\0';
	return strtoull(buf, NULL, 10);
}

/*
 * The logical block size of the device under the directory. A partition has no queue/
 * of its own, its parent disk does: /sys/dev/block/M:m is a link into the partition's
 * directory inside the disk's, so "../queue" reaches the disk. Filesystems without a
 * block device (tmpfs, overlay: anonymous st_dev) and odd values fall back to 4096,
 * which every O_DIRECT implementation accepts.
 */
static uint32_t nvme_probe_align(dev_t dev)
{
	char path[128];
	uint64_t lbs;

	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/queue/logical_block_size", major(dev),
		 minor(dev));
	lbs = nvme_read_sysfs_u64(path);
	if (!lbs) {
		snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/../queue/logical_block_size",
			 major(dev), minor(dev));
		lbs = nvme_read_sysfs_u64(path);
	}
	if (!lbs || !nvme_is_pow2(lbs) || lbs > 65536)
		return 4096;
	return lbs < 512 ? 512 : (uint32_t)lbs;
}

/* Waits for the engine's single operation, dropping any CQE that is not its own. */
static int nvme_wait_single(struct tier_nvme *n, int *res)
{
	struct io_uring_cqe *cqe;
	int ret;

	for (;;) {
		ret = io_uring_wait_cqe(&n->ring, &cqe);
		if (ret == -EINTR || ret == -EAGAIN)
			continue;
		if (ret < 0)
			return ret;
		if (io_uring_cqe_get_data64(cqe) == NVME_TAG_SINGLE)
			break;
		io_uring_cqe_seen(&n->ring, cqe);
	}
	*res = cqe->res;
	io_uring_cqe_seen(&n->ring, cqe);
	return 0;
}

/* Submits what is queued, retrying transient refusals; 0 once the kernel took it all. */
static int nvme_submit_all(struct tier_nvme *n)
{
	int tries = 0;

	while (io_uring_sq_ready(&n->ring)) {
		int ret = io_uring_submit(&n->ring);

		if (ret >= 0 || ret == -EINTR)
			continue;
		if ((ret != -EAGAIN && ret != -EBUSY) || ++tries > NVME_AGAIN_RETRIES)
			return ret;
		nanosleep(&(struct timespec){ .tv_nsec = 100000 }, NULL);
	}
	return 0;
}

/*
 * Runs one prepared SQE (fsync, probe I/O) to completion with nothing else in flight.
 * Returns the CQE's res; a ring failure breaks the engine.
 */
static int nvme_run_single(struct tier_nvme *n, struct io_uring_sqe *sqe)
{
	int ret, res = 0;

	io_uring_sqe_set_data64(sqe, NVME_TAG_SINGLE);
	ret = nvme_submit_all(n);
	if (!ret)
		ret = nvme_wait_single(n, &res);
	if (ret) {
		n->broken = ret;
		return ret;
	}
	return res;
}

/*
 * Proves that this directory takes what the request path will do: an O_DIRECT file,
 * registered in slot 0, one aligned block written and read back through the fixed
 * buffer. The file is unlinked at once so that nothing is left behind on any path.
 */
static int nvme_probe(struct tier_nvme *n, const char **why)
{
	char name[64];
	uint8_t *buf = n->staging;
	int fd = -1, minus_one = -1, ret;
	struct io_uring_sqe *sqe;

	for (int i = 0; fd < 0; i++) {
		snprintf(name, sizeof(name), ".sparqd-probe.%ld.%d", (long)getpid(), i);
		fd = openat(n->dir_fd, name, O_RDWR | O_CREAT | O_EXCL | O_DIRECT | O_CLOEXEC,
			    0600);
		if (fd < 0 && (errno != EEXIST || i == 99)) {
			ret = errno == EINVAL ? -EOPNOTSUPP : -errno;
			*why = ret == -EOPNOTSUPP ? "filesystem refuses O_DIRECT"
						  : "cannot create a probe file in dir";
			return ret;
		}
	}
	unlinkat(n->dir_fd, name, 0);

	ret = io_uring_register_files_update(&n->ring, 0, &fd, 1);
	if (ret < 0) {
		*why = "cannot register a file with io_uring";
		goto out;
	}
	for (uint32_t i = 0; i < n->align; i++)
		buf[i] = (uint8_t)(i * 31 + 7);
	sqe = io_uring_get_sqe(&n->ring);
	io_uring_prep_write_fixed(sqe, 0, buf, n->align, 0, 0);
	sqe->flags |= IOSQE_FIXED_FILE;
	ret = nvme_run_single(n, sqe);
	if (ret >= 0 && ret != (int)n->align)
		ret = -EIO;
	if (ret < 0) {
		*why = ret == -EINVAL ? "filesystem refuses O_DIRECT writes of one logical block"
				      : "probe write through io_uring failed";
		goto out;
	}
	memset(buf, 0, n->align);
	sqe = io_uring_get_sqe(&n->ring);
	io_uring_prep_read_fixed(sqe, 0, buf, n->align, 0, 0);
	sqe->flags |= IOSQE_FIXED_FILE;
	ret = nvme_run_single(n, sqe);
	if (ret >= 0 && ret != (int)n->align)
		ret = -EIO;
	if (ret < 0) {
		*why = ret == -EINVAL ? "filesystem refuses O_DIRECT reads of one logical block"
				      : "probe read through io_uring failed";
		goto out;
	}
	for (uint32_t i = 0; i < n->align; i++) {
		if (buf[i] != (uint8_t)(i * 31 + 7)) {
			*why = "probe read back other bytes than were written";
			ret = -EIO;
			goto out;
		}
	}
	ret = 0;
out:
	/* O_DIRECT refused at I/O time (EINVAL) is the same "skip" as refused at open. */
	if (ret == -EINVAL)
		ret = -EOPNOTSUPP;
	if (!n->broken)
		io_uring_register_files_update(&n->ring, 0, &minus_one, 1);
	close(fd);
	return ret;
}

/* Registers max_files empty slots: sparse where the kernel has it (5.19+), else -1s. */
static int nvme_register_table(struct tier_nvme *n)
{
	int *fds, ret = io_uring_register_files_sparse(&n->ring, n->max_files);

	if (ret != -EINVAL)
		return ret;
	fds = malloc(n->max_files * sizeof(*fds));
	if (!fds)
		return -ENOMEM;
	for (uint32_t i = 0; i < n->max_files; i++)
		fds[i] = -1;
	ret = io_uring_register_files(&n->ring, fds, n->max_files);
	free(fds);
	return ret;
}

int tier_nvme_open(const struct tier_nvme_config *cfg, struct tier_nvme **out, const char **why)
{
	const char *reason_sink;
	struct tier_nvme *n = NULL;
	bool made_dir = false;
	struct iovec iov;
	struct stat st;
	int ret;

	if (!why)
		why = &reason_sink;
	*why = NULL;
	if (!out) {
		*why = "no output handle";
		return -EINVAL;
	}
	*out = NULL;
	ret = nvme_check_config(cfg, why);
	if (ret)
		return ret;

	n = calloc(1, sizeof(*n));
	if (!n) {
		*why = "out of memory";
		return -ENOMEM;
	}
	n->dir_fd = -1;
	n->qd = cfg->queue_depth;
	n->max_files = cfg->max_files;
	n->staging_len = cfg->staging_bytes;
	n->dir = strdup(cfg->dir);
	n->files = calloc(n->max_files, sizeof(*n->files));
	if (!n->dir || !n->files) {
		*why = "out of memory";
		ret = -ENOMEM;
		goto err;
	}
	for (uint32_t i = 0; i < n->max_files; i++)
		n->files[i].fd = -1;

	/* Only the last component is created: a missing parent is a typo, not a request. */
	if (mkdir(cfg->dir, 0700) == 0) {
		made_dir = true;
	} else if (errno != EEXIST) {
		ret = -errno;
		*why = ret == -ENOENT ? "the parent of dir does not exist" : "cannot create dir";
		goto err;
	}
	n->dir_fd = open(cfg->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (n->dir_fd < 0) {
		ret = -errno;
		*why = ret == -ENOTDIR ? "dir exists and is not a directory" : "cannot open dir";
		goto err;
	}
	if (fstat(n->dir_fd, &st)) {
		ret = -errno;
		*why = "cannot stat dir";
		goto err;
	}
	n->align = nvme_probe_align(st.st_dev);

	ret = io_uring_queue_init(n->qd, &n->ring, 0);
	if (ret < 0) {
		if (ret == -ENOSYS || ret == -EPERM) {
			ret = -EOPNOTSUPP;
			*why = "kernel refuses io_uring";
		} else {
			*why = "io_uring_queue_init failed";
		}
		goto err;
	}
	n->ring_ready = true;

	/* At least the device's alignment and a page, so the whole buffer is O_DIRECT-able. */
	ret = posix_memalign(&n->staging, n->align > 4096 ? n->align : 4096, n->staging_len);
	if (ret) {
		n->staging = NULL;
		ret = -ret;
		*why = "cannot allocate the staging buffer";
		goto err;
	}
	iov.iov_base = n->staging;
	iov.iov_len = n->staging_len;
	ret = io_uring_register_buffers(&n->ring, &iov, 1);
	if (ret < 0) {
		*why = "cannot register the staging buffer with io_uring (RLIMIT_MEMLOCK?)";
		goto err;
	}
	ret = nvme_register_table(n);
	if (ret < 0) {
		*why = "cannot register the file table (max_files over RLIMIT_NOFILE?)";
		goto err;
	}
	ret = nvme_probe(n, why);
	if (ret)
		goto err;
	*out = n;
	return 0;
err:
	tier_nvme_close(n);
	/* Leave the filesystem as it was: the directory is empty, the probe file is gone. */
	if (made_dir)
		rmdir(cfg->dir);
	return ret;
}

void tier_nvme_close(struct tier_nvme *n)
{
	if (!n)
		return;
	/* The ring goes first: it holds references to the files and pins the buffer. */
	if (n->ring_ready)
		io_uring_queue_exit(&n->ring);
	for (uint32_t i = 0; n->files && i < n->max_files; i++) {
		if (n->files[i].fd >= 0)
			close(n->files[i].fd);
		free(n->files[i].name);
	}
	if (n->dir_fd >= 0)
		close(n->dir_fd);
	free(n->files);
	free(n->staging);
	free(n->dir);
	free(n);
}

uint32_t tier_nvme_align(const struct tier_nvme *n)
{
	return n->align;
}

void *tier_nvme_staging(const struct tier_nvme *n, size_t *len)
{
	if (len)
		*len = n->staging_len;
	return n->staging;
}

const char *tier_nvme_dir(const struct tier_nvme *n)
{
	return n->dir;
}

/* A plain entry of the directory: no '/', not "." or "..", 1..200 bytes. */
static bool nvme_name_ok(const char *name)
{
	size_t len;

	if (!name)
		return false;
	len = strnlen(name, NVME_NAME_MAX + 1);
	return len >= 1 && len <= NVME_NAME_MAX && !strchr(name, '/') && strcmp(name, ".") &&
	       strcmp(name, "..");
}

static bool nvme_fid_ok(const struct tier_nvme *n, int fid)
{
	return fid >= 0 && (uint32_t)fid < n->max_files && n->files[fid].fd >= 0;
}

int tier_nvme_file_open(struct tier_nvme *n, const char *name, bool create, int *fid)
{
	struct nvme_file *f = NULL;
	struct stat st;
	int fd, ret;

	if (!nvme_name_ok(name) || !fid)
		return -EINVAL;
	if (n->open_files == n->max_files)
		return -EMFILE;
	for (uint32_t i = 0; i < n->max_files && !f; i++)
		if (n->files[i].fd < 0)
			f = &n->files[i];

	fd = openat(n->dir_fd, name, O_RDWR | O_DIRECT | O_CLOEXEC | (create ? O_CREAT : 0), 0600);
	if (fd < 0)
		return -errno;
	f->name = strdup(name);
	if (!f->name) {
		ret = -ENOMEM;
		goto err;
	}
	/* A FIFO or device node planted in the directory is not a chunk file. */
	if (fstat(fd, &st)) {
		ret = -errno;
		goto err;
	}
	if (!S_ISREG(st.st_mode)) {
		ret = -EINVAL;
		goto err;
	}
	ret = io_uring_register_files_update(&n->ring, (unsigned)(f - n->files), &fd, 1);
	if (ret < 0)
		goto err;
	f->fd = fd;
	n->open_files++;
	*fid = (int)(f - n->files);
	return 0;
err:
	free(f->name);
	f->name = NULL;
	close(fd);
	return ret;
}

void tier_nvme_file_close(struct tier_nvme *n, int fid)
{
	int minus_one = -1;
	struct nvme_file *f;

	if (!nvme_fid_ok(n, fid))
		return;
	f = &n->files[fid];
	/* Nothing is ever in flight between calls, so the slot can be emptied now. */
	io_uring_register_files_update(&n->ring, (unsigned)fid, &minus_one, 1);
	close(f->fd);
	free(f->name);
	f->fd = -1;
	f->name = NULL;
	n->open_files--;
}

int tier_nvme_file_size(struct tier_nvme *n, int fid, uint64_t *size)
{
	struct stat st;

	if (!nvme_fid_ok(n, fid) || !size)
		return -EINVAL;
	if (fstat(n->files[fid].fd, &st))
		return -errno;
	*size = (uint64_t)st.st_size;
	return 0;
}

int tier_nvme_file_sync(struct tier_nvme *n, int fid)
{
	struct io_uring_sqe *sqe;
	int ret;

	if (!nvme_fid_ok(n, fid))
		return -EINVAL;
	if (n->broken)
		return n->broken;
	sqe = io_uring_get_sqe(&n->ring);
	if (!sqe)
		return -EBUSY;
	io_uring_prep_fsync(sqe, fid, IORING_FSYNC_DATASYNC);
	sqe->flags |= IOSQE_FIXED_FILE;
	ret = nvme_run_single(n, sqe);
	if (ret < 0) {
		n->stats.errors++;
		return ret;
	}
	n->stats.syncs++;
	return 0;
}

int tier_nvme_unlink(struct tier_nvme *n, const char *name)
{
	if (!nvme_name_ok(name))
		return -EINVAL;
	if (unlinkat(n->dir_fd, name, 0))
		return -errno;
	return 0;
}

int tier_nvme_sync_dir(struct tier_nvme *n)
{
	/* dir_fd was opened O_RDONLY | O_DIRECTORY: fsync of it makes entries durable. */
	if (fsync(n->dir_fd))
		return -errno;
	return 0;
}

static int nvme_check_io(const struct tier_nvme *n, const struct tier_io *io)
{
	uint64_t a = n->align;

	if (!nvme_fid_ok(n, io->fid) || !io->buf || io->len == 0 || io->len > NVME_LEN_MAX)
		return -EINVAL;
	if (io->offset % a || io->len % a || (uintptr_t)io->buf % a)
		return -EINVAL;
	/* The kernel takes offsets as a signed loff_t. */
	if (io->offset > (uint64_t)INT64_MAX - io->len)
		return -EINVAL;
	return 0;
}

/*
 * Applies the fault switch to the descriptor about to be queued. Returns the error to
 * complete it with (never submitted), or 0 with *len the length to transfer: the
 * request's, or half of it rounded down to the alignment for a short transfer. A short
 * transfer of a single unit moves nothing and completes at once as -EIO.
 */
static int nvme_fault_take(struct tier_nvme *n, const struct tier_io *io, uint32_t *len)
{
	struct tier_nvme_fault *f = &n->fault;

	*len = io->len;
	if (!f->count || !(io->write ? f->writes : f->reads))
		return 0;
	if (f->after) {
		f->after--;
		return 0;
	}
	f->count--;
	if (!f->short_io)
		return f->err;
	*len = io->len / 2 / n->align * n->align;
	return *len ? 0 : -EIO;
}

static void nvme_complete(struct tier_nvme *n, struct tier_io *io, int res)
{
	if (res > 0) {
		if (io->write)
			n->stats.bytes_written += (uint64_t)res;
		else
			n->stats.bytes_read += (uint64_t)res;
	}
	if (res >= 0 && (uint32_t)res != io->len)
		res = -EIO;
	if (res < 0) {
		n->stats.errors++;
	} else if (io->write) {
		n->stats.writes++;
	} else {
		n->stats.reads++;
	}
	io->res = res;
}

/*
 * Gives up on what the ring would not take: the last `queued` descriptors below next
 * still without a result (SQEs are consumed in order, so those are the unsubmitted ones)
 * and everything from next on. Their SQEs stay in the SQ ring; breaking the engine
 * guarantees that nothing ever submits them.
 */
static void nvme_abandon(struct tier_nvme *n, struct tier_io *ios, uint32_t count, uint32_t next,
			 uint32_t queued, int err)
{
	n->broken = err;
	for (uint32_t i = next; i > 0 && queued; i--) {
		if (!ios[i - 1].res) {
			ios[i - 1].res = err;
			n->stats.errors++;
			queued--;
		}
	}
	for (uint32_t i = next; i < count; i++) {
		ios[i].res = err;
		n->stats.errors++;
	}
}

int tier_nvme_submit(struct tier_nvme *n, struct tier_io *ios, uint32_t count)
{
	uintptr_t stage = (uintptr_t)n->staging;
	uint32_t next = 0, queued = 0, active = 0, left = count;
	int ret = 0, bad = 0, tries = 0, hard = 0;

	if (!count)
		return 0;
	if (!ios)
		return -EINVAL;
	/* All or nothing: a bad descriptor is a caller bug, and a half-done batch would
	 * leave the caller to work out which writes happened. */
	for (uint32_t i = 0; i < count; i++) {
		ios[i].res = nvme_check_io(n, &ios[i]);
		if (ios[i].res)
			bad = ios[i].res;
	}
	if (bad) {
		for (uint32_t i = 0; i < count; i++)
			if (!ios[i].res)
				ios[i].res = -ECANCELED;
		return bad;
	}
	if (n->broken) {
		for (uint32_t i = 0; i < count; i++)
			ios[i].res = n->broken;
		return n->broken;
	}

	while (left) {
		bool stalled = false;

		/* Fill: queued + active never exceeds queue_depth, nor the SQ ring. */
		while (!hard && next < count && queued + active < n->qd) {
			struct tier_io *io = &ios[next];
			struct io_uring_sqe *sqe;
			uint32_t len;
			int inj = nvme_fault_take(n, io, &len);
			uintptr_t b = (uintptr_t)io->buf;

			if (inj) {
				io->res = inj;
				n->stats.errors++;
				next++;
				left--;
				continue;
			}
			sqe = io_uring_get_sqe(&n->ring);
			if (!sqe) {
				stalled = true;
				break;
			}
			/* Inside the registered buffer: the kernel skips pinning pages per I/O. */
			if (b >= stage && len <= n->staging_len &&
			    b - stage <= n->staging_len - len) {
				if (io->write)
					io_uring_prep_write_fixed(sqe, io->fid, io->buf, len,
								  io->offset, 0);
				else
					io_uring_prep_read_fixed(sqe, io->fid, io->buf, len,
								 io->offset, 0);
			} else if (io->write) {
				io_uring_prep_write(sqe, io->fid, io->buf, len, io->offset);
			} else {
				io_uring_prep_read(sqe, io->fid, io->buf, len, io->offset);
			}
			sqe->flags |= IOSQE_FIXED_FILE;
			io_uring_sqe_set_data64(sqe, next);
			next++;
			queued++;
		}

		/* The SQ ring has room for queue_depth SQEs, so a full one means entries
		 * nobody owns: treat it like a ring failure rather than spin. */
		if (stalled && !queued && !active)
			hard = -EBUSY;
		if (queued) {
			ret = io_uring_submit(&n->ring);
			if (ret > 0) {
				uint32_t took = (uint32_t)ret < queued ? (uint32_t)ret : queued;

				queued -= took;
				active += took;
				tries = 0;
			} else if (ret == -EAGAIN || ret == -EBUSY || ret == 0) {
				/* Out of kernel resources: completions free them; with none to
				 * reap, back off briefly, a bounded number of times. */
				if (!active && ++tries > NVME_AGAIN_RETRIES)
					hard = ret ? ret : -EAGAIN;
				else if (!active)
					nanosleep(&(struct timespec){ .tv_nsec = 100000 }, NULL);
			} else if (ret != -EINTR) {
				hard = ret;
			}
		}
		if (hard && (queued || next < count)) {
			nvme_abandon(n, ios, count, next, queued, hard);
			left -= queued + (count - next);
			next = count;
			queued = 0;
		}

		if (active) {
			struct io_uring_cqe *cqes[64], *cqe;
			unsigned got;

			ret = io_uring_wait_cqe(&n->ring, &cqe);
			if (ret == -EINTR || ret == -EAGAIN)
				continue;
			if (ret < 0) {
				/* Cannot happen short of a kernel bug: the ring cannot be
				 * waited on, so nothing more can be done for what is in it. */
				n->broken = ret;
				for (uint32_t i = 0; i < count; i++)
					if (!ios[i].res)
						ios[i].res = ret;
				return ret;
			}
			while ((got = io_uring_peek_batch_cqe(&n->ring, cqes, 64)) > 0) {
				for (unsigned i = 0; i < got; i++) {
					uint64_t idx = io_uring_cqe_get_data64(cqes[i]);

					if (idx >= count)
						continue;
					nvme_complete(n, &ios[idx], cqes[i]->res);
					active--;
					left--;
				}
				io_uring_cq_advance(&n->ring, got);
			}
		}
	}

	for (uint32_t i = 0; i < count; i++)
		if (ios[i].res < 0)
			return ios[i].res;
	return 0;
}

void tier_nvme_inject(struct tier_nvme *n, const struct tier_nvme_fault *f)
{
	if (!f || !f->count) {
		memset(&n->fault, 0, sizeof(n->fault));
		return;
	}
	n->fault = *f;
	/* An error must be a negative errno; anything else means the default, -EIO. */
	if (n->fault.err > 0)
		n->fault.err = -n->fault.err;
	if (!n->fault.err)
		n->fault.err = -EIO;
}

void tier_nvme_stats(const struct tier_nvme *n, struct tier_nvme_stats *out)
{
	*out = n->stats;
}
