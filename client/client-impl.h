/*
 * client-impl.h — libsparq's insides, shared by its files and never installed: the
 * handle, the control-call round trip (client.c), the ring path with its bump
 * allocator over the data area (ring.c) and the per-handle session geometry cache
 * (sessions.c). Functions named *_locked expect the handle's lock held.
 */
#ifndef SPARQ_CLIENT_IMPL_H
#define SPARQ_CLIENT_IMPL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#include "libsparq.h"
#include "shm.h"
#include "sparq.pb-c.h"

/* How long a call waits for the daemon before -ETIMEDOUT (override: $SPARQ_CLIENT_TIMEOUT_MS). */
#define SPARQ_CLIENT_TIMEOUT_MS_DEFAULT 120000u
/* Spin on the completion ring this long before sleeping on its eventfd: a decode-step
 * attend of a small context completes within it, and the wake-up costs several µs. */
#define SPARQ_CLIENT_SPIN_NS 30000u
/* The adaptive spin (ring.c): up to twice the slowest of the last SPARQ_CLIENT_RECENT
 * ring requests, when all of them completed within this bound; never longer. */
#define SPARQ_CLIENT_SPIN_MAX_NS 200000u
#define SPARQ_CLIENT_RECENT 4u
/* Data-area allocations are cache-line aligned, so no two tensors share a line. */
#define SPARQ_CLIENT_ALIGN 64u

/* What this handle knows of a session's geometry: enough to size its tensors. */
struct sparq_client_session {
	uint64_t id;
	struct sparq_geometry g;
};

struct sparq_client {
	pthread_mutex_t lock;   /* one call at a time: one request in flight per handle */
	int sock;               /* SOCK_SEQPACKET control connection */
	int submit_fd;          /* eventfd: we write it after pushing a submission */
	int complete_fd;        /* eventfd: the daemon writes it after posting a completion */
	struct sparq_shm shm;
	uint64_t client_id;
	uint32_t timeout_ms;

	uint64_t next_request_id;   /* control messages */
	uint64_t next_user_data;    /* ring submissions */
	/* ring requests given up on (timeout) whose completions have not come yet: until
	 * they do, the daemon may still write into the data area, so nothing new goes out */
	uint32_t stale;
	bool dead;                  /* the daemon hung up: every call is -EPIPE from now */
	/* how long the last ring requests took, ns (0: none yet, or one that timed out) */
	uint64_t recent_ns[SPARQ_CLIENT_RECENT];
	uint32_t recent_at;

	uint64_t bump;              /* next free byte of the data area (bump allocator) */

	struct sparq_client_session *sessions;  /* geometry cache, unordered */
	uint32_t n_sessions, cap_sessions;

	char backend[16];
	char server_version[32];
	char error[256];
	uint8_t rx[65536];          /* one received control packet (SPARQ_WIRE_MAX) */
};

/* Records a failure's reason on the handle and returns ret (a negative errno). */
int sparq_client_fail(struct sparq_client *c, int ret, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/*
 * One control round trip: sends req (its id is set here), waits for the response with
 * the same id and returns it unpacked (the caller frees it with
 * sparq__v1__response__free_unpacked) in *out. An error response becomes its negative
 * code (its message kept on the handle) and *out NULL. -EPIPE when the daemon is gone,
 * -ETIMEDOUT, -EPROTO for a reply that does not unpack. fds/max_fds/n_fds receive
 * descriptors sent with the reply (may be NULL/0).
 */
int sparq_client_call_locked(struct sparq_client *c, Sparq__V1__Request *req,
			     Sparq__V1__Response **out, int *fds, unsigned max_fds,
			     unsigned *n_fds, uint32_t timeout_ms);

/* Forgets everything the bump allocator handed out: the start of a new request. */
static inline void sparq_client_bump_reset(struct sparq_client *c)
{
	c->bump = 0;
}

/*
 * Reserves bytes of the data area for the current request; *off receives the region
 * offset a descriptor carries, *p its address here. -E2BIG when the area is full.
 */
int sparq_client_alloc(struct sparq_client *c, uint64_t bytes, uint64_t *off, void **p);

/*
 * Pushes one submission (user_data is set here), rings the doorbell and waits for its
 * completion into *cqe. Returns 0 when a completion came (its res may be negative),
 * -EPIPE (daemon gone), -ETIMEDOUT, -EPROTO (corrupt completion ring).
 */
int sparq_client_submit_locked(struct sparq_client *c, struct sparq_sqe *sqe,
			       struct sparq_cqe *cqe);

/*
 * The geometry of session id: from the cache, else from the daemon's list (sessions
 * this handle did not create: resumed, or another handle's of the same uid).
 * -ENOENT when the daemon does not show it to us.
 */
int sparq_client_geometry_locked(struct sparq_client *c, uint64_t id,
				 struct sparq_geometry *g);

/* Converts API parameters to the ring's form (NULL: the session's defaults). */
void sparq_client_params_to_shm(const struct sparq_attn_params *p, struct sparq_shm_params *out);

#endif
