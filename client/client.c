/*
 * client.c — libsparq's handle and control plane (libsparq.h, DESIGN.md §5): connect
 * to sparqd's SOCK_SEQPACKET socket, say hello, map the shared region the daemon
 * answers with, and run control calls as request/response pairs matched by id.
 *
 * Waiting is always bounded and always watches the socket: a daemon that dies closes
 * the connection, which ends any wait with -EPIPE rather than a hang; one that stops
 * answering ends it with -ETIMEDOUT. A reply carrying an id we gave up on earlier is
 * read and dropped, so a timed-out call never shifts the answers of later ones.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "client-impl.h"
#include "wire.h"

#define DEFAULT_SOCKET "sparqd-data/" LIBSPARQ_DEFAULT_SOCKET

int sparq_client_fail(struct sparq_client *c, int ret, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(c->error, sizeof(c->error), fmt, ap);
	va_end(ap);
	return ret;
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Marks the daemon gone: every later call answers -EPIPE at once. */
static int daemon_gone(struct sparq_client *c)
{
	c->dead = true;
	return sparq_client_fail(c, -EPIPE, "the daemon closed the connection");
}

/*
 * Receives one packet, waiting at most until deadline (a now_ms() value). Returns its
 * length, -EPIPE when the daemon hung up, -ETIMEDOUT, -EPROTO for a truncated packet.
 */
static ssize_t recv_packet(struct sparq_client *c, uint64_t deadline, int *fds,
			   unsigned max_fds, unsigned *n_fds)
{
	for (;;) {
		struct pollfd p = { .fd = c->sock, .events = POLLIN };
		uint64_t now = now_ms();
		int left = now >= deadline ? 0 : (int)(deadline - now);
		int r = poll(&p, 1, left);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return sparq_client_fail(c, -errno, "poll on the daemon socket failed");
		if (r == 0)
			return sparq_client_fail(c, -ETIMEDOUT, "no reply from the daemon within %u ms",
						 c->timeout_ms);
		ssize_t n = sparq_wire_recv(c->sock, c->rx, sizeof(c->rx), fds, max_fds, n_fds);
		if (n == 0 || n == -ECONNRESET)
			return daemon_gone(c);
		if (n == -EMSGSIZE)
			return sparq_client_fail(c, -EPROTO, "the daemon sent an oversize packet");
		if (n == -EAGAIN)
			continue;
		if (n < 0)
			return sparq_client_fail(c, (int)n, "receiving from the daemon failed");
		return n;
	}
}

int sparq_client_call_locked(struct sparq_client *c, Sparq__V1__Request *req,
			     Sparq__V1__Response **out, int *fds, unsigned max_fds,
			     unsigned *n_fds, uint32_t timeout_ms)
{
	uint64_t deadline = now_ms() + timeout_ms;
	int ret;

	*out = NULL;
	if (n_fds)
		*n_fds = 0;
	if (c->dead)
		return daemon_gone(c);
	req->id = ++c->next_request_id;
	ret = sparq_wire_send(c->sock, &req->base, NULL, 0);
	if (ret == -EPIPE || ret == -ECONNRESET)
		return daemon_gone(c);
	if (ret)
		return sparq_client_fail(c, ret, "sending to the daemon failed");
	for (;;) {
		unsigned got = 0;
		ssize_t n = recv_packet(c, deadline, fds, max_fds, &got);
		if (n < 0)
			return (int)n;
		Sparq__V1__Response *resp = sparq__v1__response__unpack(NULL, (size_t)n, c->rx);
		if (!resp || resp->id != req->id) {
			/* garbage, or the late answer to a call that timed out: drop it */
			for (unsigned i = 0; i < got; i++)
				close(fds[i]);
			if (!resp)
				return sparq_client_fail(c, -EPROTO, "the daemon's reply does not unpack");
			sparq__v1__response__free_unpacked(resp, NULL);
			continue;
		}
		if (n_fds)
			*n_fds = got;
		if (resp->body_case == SPARQ__V1__RESPONSE__BODY_ERROR) {
			Sparq__V1__Error *e = resp->error;
			ret = e->code < 0 && e->code > -4096 ? e->code : -EPROTO;
			sparq_client_fail(c, ret, "%s", e->message && *e->message ? e->message :
				 "the daemon refused the request");
			for (unsigned i = 0; i < got; i++)
				close(fds[i]);
			if (n_fds)
				*n_fds = 0;
			sparq__v1__response__free_unpacked(resp, NULL);
			return ret;
		}
		*out = resp;
		return 0;
	}
}

static int timeout_from_env(uint32_t *out)
{
	const char *s = getenv("SPARQ_CLIENT_TIMEOUT_MS");
	char *end;
	unsigned long v;

	*out = SPARQ_CLIENT_TIMEOUT_MS_DEFAULT;
	if (!s || !*s)
		return 0;
	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno || *end || v == 0 || v > 86400000ul || s[0] == '-')
		return -EINVAL;
	*out = (uint32_t)v;
	return 0;
}

static int open_socket(struct sparq_client *c, const char *path)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };

	if (strlen(path) >= sizeof(sa.sun_path))
		return sparq_client_fail(c, -ENAMETOOLONG,
					 "socket path longer than %zu bytes: %s",
					 sizeof(sa.sun_path) - 1, path);
	strcpy(sa.sun_path, path);
	c->sock = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (c->sock < 0)
		return sparq_client_fail(c, -errno, "socket: %s", strerror(errno));
	while (connect(c->sock, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		if (errno == EINTR)
			continue;
		int ret = -errno;
		return sparq_client_fail(c, ret, "no daemon at %s: %s", path, strerror(-ret));
	}
	return 0;
}

/* Hello: version check, the region and its two doorbells. */
static int hello(struct sparq_client *c, const char *name, size_t shm_bytes)
{
	Sparq__V1__Request req = SPARQ__V1__REQUEST__INIT;
	Sparq__V1__Hello h = SPARQ__V1__HELLO__INIT;
	Sparq__V1__Response *resp;
	int fds[3] = { -1, -1, -1 };
	unsigned n_fds = 0;
	const char *why = "";
	int ret;

	h.protocol_version = SPARQ_PROTOCOL_VERSION;
	h.client_name = (char *)(name ? name : "");
	h.shm_bytes = shm_bytes;
	req.body_case = SPARQ__V1__REQUEST__BODY_HELLO;
	req.hello = &h;
	ret = sparq_client_call_locked(c, &req, &resp, fds, 3, &n_fds, c->timeout_ms);
	if (ret)
		return ret;
	if (resp->body_case != SPARQ__V1__RESPONSE__BODY_HELLO || n_fds != 3) {
		ret = sparq_client_fail(c, -EPROTO, "the daemon's hello reply %s",
					n_fds != 3 ? "lacks its three descriptors" : "is not a hello");
		goto out;
	}
	if (resp->hello->protocol_version != SPARQ_PROTOCOL_VERSION) {
		ret = sparq_client_fail(c, -EPROTONOSUPPORT,
					"the daemon speaks protocol %u, this library %u",
					resp->hello->protocol_version, SPARQ_PROTOCOL_VERSION);
		goto out;
	}
	/* sparq_shm_map owns fds[0] from here, whatever it returns */
	ret = sparq_shm_map(fds[0], &c->shm, &why);
	fds[0] = -1;
	if (ret) {
		sparq_client_fail(c, ret == -EPROTONOSUPPORT ? ret : -EPROTO, "the daemon's shared region: %s",
				  why);
		ret = ret == -EPROTONOSUPPORT ? ret : -EPROTO;
		goto out;
	}
	c->submit_fd = fds[1];
	c->complete_fd = fds[2];
	fds[1] = fds[2] = -1;
	/* this library keeps SPARQ_CQ_WAITING up to date: the daemon may skip doorbells */
	sparq_cq_set_waiting(&c->shm, false);
	c->client_id = resp->hello->client_id;
	snprintf(c->backend, sizeof(c->backend), "%s",
		 resp->hello->backend ? resp->hello->backend : "");
	snprintf(c->server_version, sizeof(c->server_version), "%s",
		 resp->hello->server_version ? resp->hello->server_version : "");
out:
	for (unsigned i = 0; i < 3; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	sparq__v1__response__free_unpacked(resp, NULL);
	return ret;
}

int sparq_connect(const char *socket_path, const char *name, size_t shm_bytes,
		  struct sparq_client **out)
{
	struct sparq_client *c;
	int ret;

	if (!out)
		return -EINVAL;
	*out = NULL;
	if (!socket_path || !*socket_path) {
		socket_path = getenv("SPARQD_SOCKET");
		if (!socket_path || !*socket_path)
			socket_path = DEFAULT_SOCKET;
	}
	if (name && strlen(name) > 255)
		return -EINVAL;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->sock = c->submit_fd = c->complete_fd = c->shm.fd = -1;
	ret = pthread_mutex_init(&c->lock, NULL);
	if (ret) {
		free(c);
		return -ret;
	}
	ret = timeout_from_env(&c->timeout_ms);
	if (!ret)
		ret = open_socket(c, socket_path);
	if (!ret)
		ret = hello(c, name, shm_bytes);
	if (ret) {
		sparq_disconnect(c);
		return ret;
	}
	*out = c;
	return 0;
}

void sparq_disconnect(struct sparq_client *c)
{
	if (!c)
		return;
	/* closing the socket is what tells the daemon to free our sessions */
	if (c->sock >= 0)
		close(c->sock);
	if (c->submit_fd >= 0)
		close(c->submit_fd);
	if (c->complete_fd >= 0)
		close(c->complete_fd);
	if (c->shm.base)
		sparq_shm_unmap(&c->shm);
	pthread_mutex_destroy(&c->lock);
	free(c->sessions);
	free(c);
}

const char *sparq_client_error(const struct sparq_client *c)
{
	return c ? c->error : "no client handle";
}

const char *sparq_client_backend(const struct sparq_client *c)
{
	return c ? c->backend : "";
}

const char *sparq_client_server_version(const struct sparq_client *c)
{
	return c ? c->server_version : "";
}
