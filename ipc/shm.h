/*
 * shm.h — the data plane between one client and sparqd (DESIGN.md §5): a memfd region
 * the daemon creates at hello and passes with SCM_RIGHTS, holding a header (magic,
 * version, layout), a submission ring (client → daemon), a completion ring (daemon →
 * client) and a data area where q, y, appended K/V, selections and gathered rows live.
 * A decode step writes q into the data area, pushes one 64-byte descriptor and rings
 * an eventfd: no socket round trip, no tensor copy through the kernel.
 *
 * Layout (offsets from the region's start, every part 4096-aligned):
 *   0          struct sparq_shm_header
 *   sq_off     struct sparq_sqe [ring_entries]
 *   cq_off     struct sparq_cqe [ring_entries]
 *   data_off   data area, data_bytes long
 *
 * Trust: the client can write anything anywhere in the region at any time. The daemon
 * therefore keeps its own copy of the layout (never re-reads it from the header), its
 * own ring cursors, copies each descriptor out of the ring before looking at it, and
 * bounds-checks every offset and length against the data area (sparq_shm_range). The
 * region is sealed against shrinking, so a client cannot turn the daemon's accesses
 * into SIGBUS by truncating the memfd.
 *
 * Ring protocol (single producer, single consumer per ring, io_uring style):
 * free-running uint32 head/tail, entry i at i & (ring_entries - 1); a producer writes
 * the entry, then publishes tail with a release store; a consumer reads tail with an
 * acquire load, copies the entry, then publishes head with a release store. A client
 * never has more than ring_entries requests in flight, so the completion ring cannot
 * overflow; the daemon takes a submission only when it holds a free completion slot.
 *
 * Doorbells only when the other side sleeps (io_uring's SQ_NEED_WAKEUP pattern, both
 * ways). A daemon thread that polls a client's submission ring raises SPARQ_SQ_POLLING
 * in sq_flags, and the client skips the submit eventfd while it sees it. A client that
 * raises SPARQ_CQ_WAKE_ON_FLAG in cq_flags promises to raise SPARQ_CQ_WAITING before
 * it sleeps on the completion eventfd, and the daemon writes that eventfd only then.
 * Each side publishes (its tail, or its flag), issues a seq_cst fence, then reads the
 * other side's word (the flag, or the ring): at least one of the two sees the other,
 * so no request or completion is left without a wake-up. Both words start 0, which
 * means "always ring": a side that knows nothing of them works as before. The daemon
 * never takes the flags for more than a hint: a client that lies about them only
 * delays or wakes itself.
 */
#ifndef SPARQ_IPC_SHM_H
#define SPARQ_IPC_SHM_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SPARQ_SHM_MAGIC 0x44515053u     /* "SPQD" little-endian */
#define SPARQ_PROTOCOL_VERSION 1u       /* Hello.protocol_version and the header's */
#define SPARQ_SHM_RING_MIN 8u
#define SPARQ_SHM_RING_MAX 4096u
#define SPARQ_SHM_DATA_MIN (1ull << 20)
#define SPARQ_SHM_DATA_MAX (1ull << 36)

enum sparq_ring_op {
	SPARQ_OP_APPEND = 1,  /* session, layer, n = tokens, off[0] = K, off[1] = V */
	SPARQ_OP_ATTEND = 2,  /* layer, n = entries, off[0] = struct sparq_attend_desc [n] */
	SPARQ_OP_SELECT = 3,  /* layer, n = 1, off[0] = struct sparq_attend_desc [1] */
	SPARQ_OP_GATHER = 4,  /* session, layer, kv_head, n = rows, off[0] = pos, off[1] = out */
	SPARQ_OP_NOP = 5,     /* completes at once: measures the ring's round trip */
};

/* One submission: 64 bytes, copied out of the ring by the daemon before use. */
struct sparq_sqe {
	uint64_t user_data;     /* echoed in the completion */
	uint8_t op;             /* enum sparq_ring_op */
	uint8_t flags;          /* none defined: must be 0 */
	uint16_t reserved;      /* must be 0 */
	uint32_t layer;
	uint64_t session;
	uint32_t n;
	uint32_t kv_head;
	uint64_t off[3];        /* data-area offsets, meaning per op; 0 = absent */
	uint64_t reserved2;     /* must be 0 */
};

/* One completion: 64 bytes. res is 0 or a negative errno; why says which field. */
struct sparq_cqe {
	uint64_t user_data;
	int32_t res;
	int32_t bad_item;       /* failing entry of a batched attend, -1 if none */
	char why[48];           /* NUL-terminated reason when res < 0, else empty */
};

/* SparQ hyper-parameters inside a ring descriptor (same meaning as sparq.proto Params). */
struct sparq_shm_params {
	uint32_t r, k;
	int32_t l;              /* used only when l_set */
	float ratio;
	uint8_t blend;          /* 0 auto, 1 on, 2 off */
	uint8_t dense;
	uint8_t l_set;
	uint8_t use_defaults;   /* 1: ignore the fields above, take the session's defaults */
};

/*
 * One sequence of a batched attend (or the single entry of a select), in the data area.
 * attend: q [n_q_heads][d] fp32, y [n_q_heads][d] fp32 out, alpha [n_q_heads] fp32 out
 * (optional). select: q, sel [n_kv_heads][sel_cap] uint32 out, n_sel [n_kv_heads]
 * uint32 out, alpha [n_q_heads] fp32 out (optional).
 */
struct sparq_attend_desc {
	uint64_t session;
	uint64_t q_off;
	uint64_t y_off;
	uint64_t alpha_off;
	uint64_t sel_off;
	uint64_t n_sel_off;
	uint32_t sel_cap;
	uint32_t reserved;
	struct sparq_shm_params params;
	/* 80 bytes */
};

struct sparq_shm_header {
	uint32_t magic;
	uint32_t version;
	uint64_t size;           /* whole region */
	uint32_t ring_entries;   /* power of two */
	uint32_t reserved;
	uint64_t sq_off, cq_off, data_off, data_bytes;
	/* cursors on their own cache lines: one side writes each */
	_Alignas(64) _Atomic uint32_t sq_head;   /* daemon */
	_Alignas(64) _Atomic uint32_t sq_tail;   /* client */
	_Alignas(64) _Atomic uint32_t cq_head;   /* client */
	_Alignas(64) _Atomic uint32_t cq_tail;   /* daemon */
	_Alignas(64) _Atomic uint32_t sq_flags;  /* daemon: SPARQ_SQ_POLLING */
	_Alignas(64) _Atomic uint32_t cq_flags;  /* client: SPARQ_CQ_WAKE_ON_FLAG, _WAITING */
};

#define SPARQ_SQ_POLLING 1u        /* a daemon thread watches the submission ring */
#define SPARQ_CQ_WAKE_ON_FLAG 1u   /* the client keeps SPARQ_CQ_WAITING up to date */
#define SPARQ_CQ_WAITING 2u        /* the client sleeps (or is about to) on the eventfd */

/* A mapped region and this side's private view of it. */
struct sparq_shm {
	int fd;
	uint8_t *base;
	uint64_t size;
	uint32_t entries;        /* trusted copies of the layout */
	uint64_t sq_off, cq_off, data_off, data_bytes;
	struct sparq_shm_header *hdr;
	struct sparq_sqe *sq;
	struct sparq_cqe *cq;
	/* private cursors: a producer's tail, a consumer's head */
	uint32_t sq_head, sq_tail, cq_head, cq_tail;
};

/*
 * Daemon side: a new sealed memfd region with data_bytes of data area (rounded up to
 * 4096) and ring_entries entries per ring. -EINVAL with a reason for sizes outside
 * [SPARQ_SHM_DATA_MIN, SPARQ_SHM_DATA_MAX] or entries not a power of two in
 * [SPARQ_SHM_RING_MIN, SPARQ_SHM_RING_MAX]; -errno of memfd_create/ftruncate/mmap.
 */
int sparq_shm_create(uint64_t data_bytes, uint32_t ring_entries, struct sparq_shm *out,
		     const char **why);

/*
 * Client side: maps the region behind fd (taking ownership of fd) and validates the
 * header: magic, version, sizes consistent with the file's size, parts inside it and
 * not overlapping. -EPROTO (with a reason) for a region that fails, -EPROTONOSUPPORT
 * for another version, -errno of fstat/mmap.
 */
int sparq_shm_map(int fd, struct sparq_shm *out, const char **why);

/* Unmaps and closes; safe on a zeroed struct (fd -1 or 0 with base NULL). */
void sparq_shm_unmap(struct sparq_shm *shm);

/*
 * The address of [off, off + len) in the data area, or -ERANGE when any of it lies
 * outside (overflow-safe), when off is 0, or when off is not aligned to align (a power
 * of two; 1 for none). len 0 is allowed for a valid off.
 */
int sparq_shm_range(const struct sparq_shm *shm, uint64_t off, uint64_t len, uint64_t align,
		    void **out);

/* Client: pushes one submission; -EAGAIN when the ring is full. Rings no doorbell. */
int sparq_sq_push(struct sparq_shm *shm, const struct sparq_sqe *sqe);
/*
 * Daemon: copies the next submission into *out. Returns 1 when one was taken, 0 when
 * the ring is empty or no completion slot is free, -EPROTO when the client's tail is
 * impossible (more than ring_entries ahead of the daemon's head).
 */
int sparq_sq_pop(struct sparq_shm *shm, struct sparq_sqe *out);
/* Daemon: posts one completion (a slot is free by sparq_sq_pop's rule). One thread at a
 * time per region: the completion ring has a single producer. */
void sparq_cq_push(struct sparq_shm *shm, const struct sparq_cqe *cqe);
/* Client: copies the next completion into *out; 1 taken, 0 empty, -EPROTO corrupt. */
int sparq_cq_pop(struct sparq_shm *shm, struct sparq_cqe *out);

/* Client, after sparq_sq_push: whether to write the submit eventfd (no daemon thread is
 * polling the ring). Fences before reading the flag. */
bool sparq_sq_needs_doorbell(struct sparq_shm *shm);
/* Daemon: raises or lowers SPARQ_SQ_POLLING. Lowering fences: re-check the ring with
 * sparq_sq_pending afterwards and take what arrived meanwhile (nobody rang for it). */
void sparq_sq_set_polling(struct sparq_shm *shm, bool on);
/* Daemon: whether the client published a submission not taken yet (a cheap look for a
 * poller; sparq_sq_pop decides what is valid). */
bool sparq_sq_pending(struct sparq_shm *shm);
/* Client: enters (waiting) or leaves the state where it needs the completion eventfd.
 * Entering fences: re-check the ring with sparq_cq_pop before sleeping. */
void sparq_cq_set_waiting(struct sparq_shm *shm, bool waiting);
/* Daemon, after sparq_cq_push: whether to write the completion eventfd. Fences before
 * reading the flag. */
bool sparq_cq_needs_doorbell(struct sparq_shm *shm);
/* Daemon: whether the client says it sleeps on the completion eventfd (a hint: it has
 * not run since its last completion was rung, so its next request is not due yet). */
bool sparq_cq_client_asleep(const struct sparq_shm *shm);

#endif
