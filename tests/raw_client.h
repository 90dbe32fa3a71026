/*
 * raw_client.h — a client of sparqd built from the protocol's parts (wire.h, shm.h,
 * sparq.pb-c.h) instead of libsparq, for the robustness tests: it can send what a
 * well-behaved client never would (bytes that are no protobuf, a second hello, a ring
 * tail far ahead of its head, descriptors with reserved bits set) and still read the
 * daemon's answers. Every wait is bounded; header-only like helpers.h.
 *
 * Functions return 0 or -errno like the code under test; the tests decide what a
 * result means. -EPIPE means the daemon closed the connection, -ETIMEDOUT that it did
 * not answer within RAW_TIMEOUT_MS.
 */
#ifndef SPARQ_TEST_RAW_CLIENT_H
#define SPARQ_TEST_RAW_CLIENT_H

#include <errno.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "shm.h"
#include "sparq.pb-c.h"
#include "wire.h"

/* Generous: sanitizer builds on a loaded 2-core machine answer slowly. */
#define RAW_TIMEOUT_MS 20000

struct raw_client {
	int sock;
	bool mapped;             /* hello done: shm, submit_fd, complete_fd valid */
	struct sparq_shm shm;
	int submit_fd, complete_fd;
	uint64_t next_id, next_user_data;
	uint64_t bump;           /* next free byte of the data area, from its start */
	uint8_t rx[SPARQ_WIRE_MAX];
};

static inline int raw_poll_in(int fd, int timeout_ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int r;

	do
		r = poll(&p, 1, timeout_ms);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	return r == 0 ? -ETIMEDOUT : 0;
}

static inline int raw_connect(struct raw_client *c, const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	memset(c, 0, sizeof(*c));
	c->submit_fd = c->complete_fd = -1;
	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	c->sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (c->sock < 0)
		return -errno;
	if (connect(c->sock, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int ret = -errno;
		close(c->sock);
		c->sock = -1;
		return ret;
	}
	return 0;
}

static inline void raw_close(struct raw_client *c)
{
	if (c->mapped) {
		sparq_shm_unmap(&c->shm);
		close(c->submit_fd);
		close(c->complete_fd);
		c->mapped = false;
	}
	if (c->sock >= 0)
		close(c->sock);
	c->sock = -1;
}

/* Sends len bytes as one packet, whatever they are. */
static inline int raw_send_bytes(struct raw_client *c, const void *buf, size_t len)
{
	ssize_t n = send(c->sock, buf, len, MSG_NOSIGNAL);

	if (n < 0)
		return -errno;
	return (size_t)n == len ? 0 : -EIO;
}

/* Sends a request, giving it the next id (req->id). */
static inline int raw_send(struct raw_client *c, Sparq__V1__Request *req)
{
	req->id = ++c->next_id;
	return sparq_wire_send(c->sock, &req->base, NULL, 0);
}

/*
 * Receives one response (caller frees with sparq__v1__response__free_unpacked) and up
 * to max_fds descriptors. -EPIPE when the daemon hung up, -EPROTO when it does not
 * unpack, -ETIMEDOUT.
 */
static inline int raw_recv(struct raw_client *c, Sparq__V1__Response **out, int *fds,
			   unsigned max_fds, unsigned *n_fds)
{
	unsigned got = 0;
	ssize_t n;
	int ret;

	*out = NULL;
	if (n_fds)
		*n_fds = 0;
	ret = raw_poll_in(c->sock, RAW_TIMEOUT_MS);
	if (ret)
		return ret;
	n = sparq_wire_recv(c->sock, c->rx, sizeof(c->rx), fds, max_fds, &got);
	if (n == 0 || n == -ECONNRESET)
		return -EPIPE;
	if (n < 0)
		return (int)n;
	if (n_fds)
		*n_fds = got;
	*out = sparq__v1__response__unpack(NULL, (size_t)n, c->rx);
	if (!*out) {
		for (unsigned i = 0; i < got; i++)
			close(fds[i]);
		return -EPROTO;
	}
	return 0;
}

/*
 * Sends req and waits for its response. Returns 0 for a non-error response (in *out
 * when out is not NULL, else freed), the response's error code for an error response
 * (its message copied to why when given), or -errno of the transport.
 */
static inline int raw_call(struct raw_client *c, Sparq__V1__Request *req,
			   Sparq__V1__Response **out, char *why, size_t why_cap)
{
	Sparq__V1__Response *resp;
	int ret = raw_send(c, req);

	if (out)
		*out = NULL;
	if (why && why_cap)
		why[0] = '\0';
	if (ret)
		return ret;
	ret = raw_recv(c, &resp, NULL, 0, NULL);
	if (ret)
		return ret;
	if (resp->id != req->id) {
		fprintf(stderr, "response id %llu, request id %llu\n",
			(unsigned long long)resp->id, (unsigned long long)req->id);
		sparq__v1__response__free_unpacked(resp, NULL);
		return -EPROTO;
	}
	if (resp->body_case == SPARQ__V1__RESPONSE__BODY_ERROR) {
		ret = resp->error->code;
		if (why && why_cap)
			snprintf(why, why_cap, "%s", resp->error->message ? resp->error->message : "");
		if (ret >= 0) {
			fprintf(stderr, "error response with code %d\n", ret);
			ret = -EPROTO;
		}
		sparq__v1__response__free_unpacked(resp, NULL);
		return ret;
	}
	if (out)
		*out = resp;
	else
		sparq__v1__response__free_unpacked(resp, NULL);
	return 0;
}

/* Hello with the given version; on success maps the region and keeps the doorbells. */
static inline int raw_hello_version(struct raw_client *c, uint32_t version, uint64_t shm_bytes,
				    char *why, size_t why_cap)
{
	Sparq__V1__Request req = SPARQ__V1__REQUEST__INIT;
	Sparq__V1__Hello h = SPARQ__V1__HELLO__INIT;
	Sparq__V1__Response *resp;
	int fds[3] = { -1, -1, -1 };
	unsigned n_fds = 0;
	const char *map_why = "";
	int ret;

	if (why && why_cap)
		why[0] = '\0';
	h.protocol_version = version;
	h.client_name = "robust-test";
	h.shm_bytes = shm_bytes;
	req.body_case = SPARQ__V1__REQUEST__BODY_HELLO;
	req.hello = &h;
	ret = raw_send(c, &req);
	if (ret)
		return ret;
	ret = raw_recv(c, &resp, fds, 3, &n_fds);
	if (ret)
		return ret;
	if (resp->body_case == SPARQ__V1__RESPONSE__BODY_ERROR) {
		ret = resp->error->code < 0 ? resp->error->code : -EPROTO;
		if (why && why_cap)
			snprintf(why, why_cap, "%s", resp->error->message);
		goto out;
	}
	if (resp->body_case != SPARQ__V1__RESPONSE__BODY_HELLO || n_fds != 3) {
		ret = -EPROTO;
		goto out;
	}
	ret = sparq_shm_map(fds[0], &c->shm, &map_why);
	fds[0] = -1; /* sparq_shm_map owns it now */
	if (ret) {
		if (why && why_cap)
			snprintf(why, why_cap, "%s", map_why);
		goto out;
	}
	c->submit_fd = fds[1];
	c->complete_fd = fds[2];
	fds[1] = fds[2] = -1;
	c->mapped = true;
out:
	for (unsigned i = 0; i < n_fds; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	sparq__v1__response__free_unpacked(resp, NULL);
	return ret;
}

static inline int raw_hello(struct raw_client *c)
{
	return raw_hello_version(c, SPARQ_PROTOCOL_VERSION, 0, NULL, 0);
}

/* Region offset of bytes of data-area space (64-byte aligned, from a bump pointer). */
static inline uint64_t raw_alloc(struct raw_client *c, uint64_t bytes)
{
	uint64_t start = (c->bump + 63) & ~(uint64_t)63;

	if (start + bytes > c->shm.data_bytes)
		start = 0; /* wrap: tests allocate far less than the area per request */
	c->bump = start + bytes;
	return c->shm.data_off + start;
}

static inline void *raw_ptr(struct raw_client *c, uint64_t off)
{
	return c->shm.base + off;
}

/* Rings the submit doorbell. */
static inline int raw_doorbell(struct raw_client *c)
{
	uint64_t one = 1;

	if (write(c->submit_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		return -errno;
	return 0;
}

/*
 * Waits for the next completion (into *cqe). -EPIPE when the daemon hung up the
 * socket meanwhile, -ETIMEDOUT, -EPROTO for a corrupt completion ring.
 */
static inline int raw_wait_cqe(struct raw_client *c, struct sparq_cqe *cqe, int timeout_ms)
{
	struct timespec t0, t;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		int r = sparq_cq_pop(&c->shm, cqe);
		if (r < 0)
			return r;
		if (r == 1)
			return 0;
		struct pollfd p[2] = { { .fd = c->complete_fd, .events = POLLIN },
				       { .fd = c->sock, .events = POLLIN | POLLRDHUP } };
		clock_gettime(CLOCK_MONOTONIC, &t);
		long spent = (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
		if (spent >= timeout_ms)
			return -ETIMEDOUT;
		int n = poll(p, 2, (int)(timeout_ms - spent));
		if (n < 0 && errno != EINTR)
			return -errno;
		if (n <= 0)
			continue;
		if (p[0].revents & POLLIN) {
			uint64_t v;
			(void)!read(c->complete_fd, &v, sizeof(v));
		}
		if (p[1].revents & (POLLHUP | POLLRDHUP | POLLERR)) {
			if (sparq_cq_pop(&c->shm, cqe) == 1)
				return 0;
			return -EPIPE;
		}
	}
}

/* Pushes sqe (user_data filled in), rings the doorbell, waits for its completion. */
static inline int raw_submit(struct raw_client *c, struct sparq_sqe *sqe, struct sparq_cqe *cqe)
{
	int ret;

	sqe->user_data = ++c->next_user_data;
	ret = sparq_sq_push(&c->shm, sqe);
	if (ret)
		return ret;
	ret = raw_doorbell(c);
	if (ret)
		return ret;
	/* user_data 0 is never submitted here: it marks the daemon's notices about an
	 * impossible ring tail, of which a corrupt tail may draw several; skip them */
	do
		ret = raw_wait_cqe(c, cqe, RAW_TIMEOUT_MS);
	while (!ret && cqe->user_data == 0 && cqe->res == -EPROTO);
	if (ret)
		return ret;
	if (cqe->user_data != sqe->user_data) {
		fprintf(stderr, "completion for %llu, submitted %llu\n",
			(unsigned long long)cqe->user_data, (unsigned long long)sqe->user_data);
		return -EPROTO;
	}
	return 0;
}

/* A ring NOP: the connection's data plane still answers. */
static inline int raw_nop(struct raw_client *c)
{
	struct sparq_sqe sqe = { .op = SPARQ_OP_NOP };
	struct sparq_cqe cqe;
	int ret = raw_submit(c, &sqe, &cqe);

	return ret ? ret : cqe.res;
}

/* ---- control requests the tests build often ---- */

static inline int raw_create(struct raw_client *c, uint32_t n_layers, uint32_t n_q_heads,
			     uint32_t n_kv_heads, uint32_t head_dim, bool persistent,
			     uint64_t *id)
{
	Sparq__V1__Request req = SPARQ__V1__REQUEST__INIT;
	Sparq__V1__CreateSession cs = SPARQ__V1__CREATE_SESSION__INIT;
	Sparq__V1__Geometry g = SPARQ__V1__GEOMETRY__INIT;
	Sparq__V1__Params p = SPARQ__V1__PARAMS__INIT;
	Sparq__V1__Response *resp;
	int ret;

	g.n_layers = n_layers;
	g.n_q_heads = n_q_heads;
	g.n_kv_heads = n_kv_heads;
	g.head_dim = head_dim;
	g.dtype = SPARQ__V1__DTYPE__DTYPE_F16;
	p.ratio = 8;
	cs.geometry = &g;
	cs.defaults = &p;
	cs.persistent = persistent;
	cs.label = "robust";
	req.body_case = SPARQ__V1__REQUEST__BODY_CREATE;
	req.create = &cs;
	ret = raw_call(c, &req, &resp, NULL, 0);
	if (ret)
		return ret;
	if (resp->body_case != SPARQ__V1__RESPONSE__BODY_CREATED)
		ret = -EPROTO;
	else
		*id = resp->created->session;
	sparq__v1__response__free_unpacked(resp, NULL);
	return ret;
}

/* close / park / drop by session id: body is one of the SessionRef cases. */
static inline int raw_session_op(struct raw_client *c, Sparq__V1__Request__BodyCase body,
				 uint64_t id, char *why, size_t why_cap)
{
	Sparq__V1__Request req = SPARQ__V1__REQUEST__INIT;
	Sparq__V1__SessionRef ref = SPARQ__V1__SESSION_REF__INIT;
	Sparq__V1__Resume res = SPARQ__V1__RESUME__INIT;

	ref.session = id;
	res.session = id;
	req.body_case = body;
	switch (body) {
	case SPARQ__V1__REQUEST__BODY_CLOSE: req.close = &ref; break;
	case SPARQ__V1__REQUEST__BODY_PARK: req.park = &ref; break;
	case SPARQ__V1__REQUEST__BODY_DROP: req.drop = &ref; break;
	case SPARQ__V1__REQUEST__BODY_RESUME: req.resume = &res; break;
	default: return -EINVAL;
	}
	return raw_call(c, &req, NULL, why, why_cap);
}

/* Session ids the daemon lists for this client (up to max); -errno or the count. */
static inline int raw_list(struct raw_client *c, uint64_t *ids, int max)
{
	Sparq__V1__Request req = SPARQ__V1__REQUEST__INIT;
	Sparq__V1__ListSessions l = SPARQ__V1__LIST_SESSIONS__INIT;
	Sparq__V1__Response *resp;
	int ret;

	req.body_case = SPARQ__V1__REQUEST__BODY_LIST;
	req.list = &l;
	ret = raw_call(c, &req, &resp, NULL, 0);
	if (ret)
		return ret;
	if (resp->body_case != SPARQ__V1__RESPONSE__BODY_LIST) {
		sparq__v1__response__free_unpacked(resp, NULL);
		return -EPROTO;
	}
	ret = (int)resp->list->n_sessions;
	for (int i = 0; i < ret && i < max; i++)
		ids[i] = resp->list->sessions[i]->session;
	sparq__v1__response__free_unpacked(resp, NULL);
	return ret;
}

/* The daemon's stats (caller frees); -errno. */
static inline int raw_stats(struct raw_client *c, Sparq__V1__Response **out)
{
	Sparq__V1__Request req = SPARQ__V1__REQUEST__INIT;
	Sparq__V1__Stats s = SPARQ__V1__STATS__INIT;
	int ret;

	req.body_case = SPARQ__V1__REQUEST__BODY_STATS;
	req.stats = &s;
	ret = raw_call(c, &req, out, NULL, 0);
	if (!ret && (*out)->body_case != SPARQ__V1__RESPONSE__BODY_STATS) {
		sparq__v1__response__free_unpacked(*out, NULL);
		*out = NULL;
		return -EPROTO;
	}
	return ret;
}

#endif
