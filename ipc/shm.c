/*
 * shm.c — the shared-memory data plane (shm.h): creating and sealing the region on
 * the daemon's side, validating it on the client's, bounds checks, and the two
 * single-producer/single-consumer rings.
 *
 * Each side trusts only what it computed itself: the layout is copied into struct
 * sparq_shm at create/map time, and each ring cursor a side produces is kept privately
 * and only published to the header. The cursors the other side publishes are read
 * once per operation and checked for plausibility before use.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shm.h"

#define PAGE 4096u

_Static_assert(sizeof(struct sparq_sqe) == 64, "submission descriptors are 64 bytes");
_Static_assert(sizeof(struct sparq_cqe) == 64, "completion descriptors are 64 bytes");
_Static_assert(sizeof(struct sparq_attend_desc) == 80, "attend descriptors are 80 bytes");
_Static_assert(sizeof(struct sparq_shm_header) <= PAGE, "the header fits its page");

static uint64_t page_up(uint64_t x)
{
	return (x + PAGE - 1) & ~(uint64_t)(PAGE - 1);
}

static bool pow2(uint32_t x)
{
	return x && !(x & (x - 1));
}

/* Fills the trusted layout of a region with these sizes; the header page comes first. */
static void layout(struct sparq_shm *s, uint64_t data_bytes, uint32_t entries)
{
	s->entries = entries;
	s->sq_off = PAGE;
	s->cq_off = s->sq_off + page_up((uint64_t)entries * sizeof(struct sparq_sqe));
	s->data_off = s->cq_off + page_up((uint64_t)entries * sizeof(struct sparq_cqe));
	s->data_bytes = data_bytes;
	s->size = s->data_off + data_bytes;
}

static void bind_views(struct sparq_shm *s)
{
	s->hdr = (struct sparq_shm_header *)s->base;
	s->sq = (struct sparq_sqe *)(s->base + s->sq_off);
	s->cq = (struct sparq_cqe *)(s->base + s->cq_off);
}

int sparq_shm_create(uint64_t data_bytes, uint32_t ring_entries, struct sparq_shm *out,
		     const char **why)
{
	struct sparq_shm s = { .fd = -1 };
	int ret;

	if (data_bytes < SPARQ_SHM_DATA_MIN || data_bytes > SPARQ_SHM_DATA_MAX) {
		*why = "data area outside [1 MiB, 64 GiB]";
		return -EINVAL;
	}
	if (!pow2(ring_entries) || ring_entries < SPARQ_SHM_RING_MIN ||
	    ring_entries > SPARQ_SHM_RING_MAX) {
		*why = "ring entries not a power of two in [8, 4096]";
		return -EINVAL;
	}
	layout(&s, page_up(data_bytes), ring_entries);
	s.fd = memfd_create("sparqd-client", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (s.fd < 0) {
		*why = "memfd_create failed";
		return -errno;
	}
	if (ftruncate(s.fd, (off_t)s.size) < 0) {
		ret = -errno;
		*why = "cannot size the shared region";
		goto err;
	}
	/* a client that shrank the file would turn the daemon's loads into SIGBUS */
	if (fcntl(s.fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
		ret = -errno;
		*why = "cannot seal the shared region";
		goto err;
	}
	s.base = mmap(NULL, s.size, PROT_READ | PROT_WRITE, MAP_SHARED, s.fd, 0);
	if (s.base == MAP_FAILED) {
		s.base = NULL;
		ret = -errno;
		*why = "cannot map the shared region";
		goto err;
	}
	bind_views(&s);
	s.hdr->magic = SPARQ_SHM_MAGIC;
	s.hdr->version = SPARQ_PROTOCOL_VERSION;
	s.hdr->size = s.size;
	s.hdr->ring_entries = s.entries;
	s.hdr->sq_off = s.sq_off;
	s.hdr->cq_off = s.cq_off;
	s.hdr->data_off = s.data_off;
	s.hdr->data_bytes = s.data_bytes;
	*out = s;
	return 0;
err:
	close(s.fd);
	return ret;
}

int sparq_shm_map(int fd, struct sparq_shm *out, const char **why)
{
	struct sparq_shm s = { .fd = fd };
	struct sparq_shm_header h;
	struct stat st;
	void *p;
	int ret;

	if (fstat(fd, &st) < 0) {
		ret = -errno;
		*why = "cannot stat the shared region";
		goto err;
	}
	if (st.st_size < (off_t)PAGE) {
		ret = -EPROTO;
		*why = "shared region smaller than its header";
		goto err;
	}
	p = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		ret = -errno;
		*why = "cannot map the region's header";
		goto err;
	}
	memcpy(&h, p, sizeof(h));
	munmap(p, PAGE);
	if (h.magic != SPARQ_SHM_MAGIC) {
		ret = -EPROTO;
		*why = "shared region has a bad magic";
		goto err;
	}
	if (h.version != SPARQ_PROTOCOL_VERSION) {
		ret = -EPROTONOSUPPORT;
		*why = "shared region of another protocol version";
		goto err;
	}
	if (!pow2(h.ring_entries) || h.ring_entries < SPARQ_SHM_RING_MIN ||
	    h.ring_entries > SPARQ_SHM_RING_MAX || h.data_bytes < SPARQ_SHM_DATA_MIN ||
	    h.data_bytes > SPARQ_SHM_DATA_MAX || h.data_bytes % PAGE) {
		ret = -EPROTO;
		*why = "shared region header has impossible sizes";
		goto err;
	}
	/* the only layout we accept is the one we would have made */
	layout(&s, h.data_bytes, h.ring_entries);
	if (h.sq_off != s.sq_off || h.cq_off != s.cq_off || h.data_off != s.data_off ||
	    h.size != s.size || (uint64_t)st.st_size != s.size) {
		ret = -EPROTO;
		*why = "shared region layout does not match its size";
		goto err;
	}
	s.base = mmap(NULL, s.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (s.base == MAP_FAILED) {
		s.base = NULL;
		ret = -errno;
		*why = "cannot map the shared region";
		goto err;
	}
	bind_views(&s);
	/* a fresh region starts with every cursor at 0; adopt them as they are */
	s.sq_tail = atomic_load_explicit(&s.hdr->sq_tail, memory_order_acquire);
	s.cq_head = atomic_load_explicit(&s.hdr->cq_head, memory_order_acquire);
	*out = s;
	return 0;
err:
	close(fd);
	return ret;
}

void sparq_shm_unmap(struct sparq_shm *s)
{
	if (s->base)
		munmap(s->base, s->size);
	if (s->base || s->fd > 0)
		close(s->fd);
	s->base = NULL;
	s->fd = -1;
}

int sparq_shm_range(const struct sparq_shm *s, uint64_t off, uint64_t len, uint64_t align,
		    void **out)
{
	if (off == 0 || align == 0 || (align & (align - 1)) || off % align)
		return -ERANGE;
	if (off < s->data_off || off - s->data_off > s->data_bytes ||
	    len > s->data_bytes - (off - s->data_off))
		return -ERANGE;
	*out = s->base + off;
	return 0;
}

int sparq_sq_push(struct sparq_shm *s, const struct sparq_sqe *sqe)
{
	uint32_t head = atomic_load_explicit(&s->hdr->sq_head, memory_order_acquire);

	if (s->sq_tail - head >= s->entries)
		return -EAGAIN;
	s->sq[s->sq_tail & (s->entries - 1)] = *sqe;
	s->sq_tail++;
	atomic_store_explicit(&s->hdr->sq_tail, s->sq_tail, memory_order_release);
	return 0;
}

int sparq_sq_pop(struct sparq_shm *s, struct sparq_sqe *out)
{
	uint32_t tail = atomic_load_explicit(&s->hdr->sq_tail, memory_order_acquire);
	uint32_t cq_head = atomic_load_explicit(&s->hdr->cq_head, memory_order_acquire);

	if (tail == s->sq_head)
		return 0;
	if (tail - s->sq_head > s->entries)
		return -EPROTO;
	/* every taken submission owes one completion: never owe more than the ring holds.
	 * A client that lies about cq_head only overwrites its own unread completions. The
	 * difference is signed: a completion posted without a submission (the daemon's
	 * notice of an impossible tail) leaves cq_head ahead of sq_head, which frees slots
	 * rather than reading as 2^32 - 1 owed completions and stalling the ring for good. */
	if ((int32_t)(s->sq_head - cq_head) >= (int32_t)s->entries)
		return 0;
	memcpy(out, &s->sq[s->sq_head & (s->entries - 1)], sizeof(*out));
	s->sq_head++;
	atomic_store_explicit(&s->hdr->sq_head, s->sq_head, memory_order_release);
	return 1;
}

void sparq_cq_push(struct sparq_shm *s, const struct sparq_cqe *cqe)
{
	s->cq[s->cq_tail & (s->entries - 1)] = *cqe;
	s->cq_tail++;
	atomic_store_explicit(&s->hdr->cq_tail, s->cq_tail, memory_order_release);
}

int sparq_cq_pop(struct sparq_shm *s, struct sparq_cqe *out)
{
	uint32_t tail = atomic_load_explicit(&s->hdr->cq_tail, memory_order_acquire);

	if (tail == s->cq_head)
		return 0;
	if (tail - s->cq_head > s->entries)
		return -EPROTO;
	memcpy(out, &s->cq[s->cq_head & (s->entries - 1)], sizeof(*out));
	out->why[sizeof(out->why) - 1] = '\0';
	s->cq_head++;
	atomic_store_explicit(&s->hdr->cq_head, s->cq_head, memory_order_release);
	return 1;
}

bool sparq_sq_needs_doorbell(struct sparq_shm *s)
{
	/* the tail store (release) must be visible before the flag is read */
	atomic_thread_fence(memory_order_seq_cst);
	return !(atomic_load_explicit(&s->hdr->sq_flags, memory_order_relaxed) & SPARQ_SQ_POLLING);
}

void sparq_sq_set_polling(struct sparq_shm *s, bool on)
{
	atomic_store_explicit(&s->hdr->sq_flags, on ? SPARQ_SQ_POLLING : 0u, memory_order_relaxed);
	/* lowered: visible before the caller's last look at the ring */
	if (!on)
		atomic_thread_fence(memory_order_seq_cst);
}

bool sparq_sq_pending(struct sparq_shm *s)
{
	return atomic_load_explicit(&s->hdr->sq_tail, memory_order_acquire) != s->sq_head;
}

void sparq_cq_set_waiting(struct sparq_shm *s, bool waiting)
{
	atomic_store_explicit(&s->hdr->cq_flags,
			      SPARQ_CQ_WAKE_ON_FLAG | (waiting ? SPARQ_CQ_WAITING : 0u),
			      memory_order_relaxed);
	/* raised: visible before the caller's last look at the ring */
	if (waiting)
		atomic_thread_fence(memory_order_seq_cst);
}

bool sparq_cq_client_asleep(const struct sparq_shm *s)
{
	uint32_t f = atomic_load_explicit(&s->hdr->cq_flags, memory_order_relaxed);

	return (f & SPARQ_CQ_WAKE_ON_FLAG) && (f & SPARQ_CQ_WAITING);
}

bool sparq_cq_needs_doorbell(struct sparq_shm *s)
{
	uint32_t f;

	/* the completion's tail store must be visible before the flag is read */
	atomic_thread_fence(memory_order_seq_cst);
	f = atomic_load_explicit(&s->hdr->cq_flags, memory_order_relaxed);
	return !(f & SPARQ_CQ_WAKE_ON_FLAG) || (f & SPARQ_CQ_WAITING);
}
