/*
 * loop.c — accept, receive, decode, dispatch (loop.h).
 *
 * A client's life: accepted (peer credentials recorded), hello (region and doorbells
 * created and passed), requests, then gone (EOF, error, or daemon shutdown). When it
 * goes, its socket leaves epoll at once and a teardown job is queued behind its last
 * request; the worker that runs it retires the client's sessions and hands the client
 * back here to be freed (region unmapped, fds closed). Nothing of a client is freed
 * while a worker may still touch it.
 *
 * The loop reads sockets only: ring submissions never pass through it. After hello a
 * client's submit doorbell belongs to the workers' epoll set (workers.h), so a ring
 * request wakes one thread, the worker that runs it. Control requests are queued for
 * the client's owner; the loop answers one at once only while the client is idle.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "exec.h"
#include "loop.h"
#include "wire.h"
#include "workers.h"

/* A client that does not read its replies stalls the worker serving it at most this
 * long; the loop never waits on one (sock_nonblock). */
#define SEND_TIMEOUT_S 2
/* Largest data area a client may ask for, unless --shm-bytes is larger. */
#define SHM_CLIENT_MAX (1ull << 30)

/*
 * The loop answers a client itself only where no worker writes to its socket: before
 * hello, and while the client is idle (workers.h). It must not wait there: a client
 * that never reads its replies fills its socket, and a blocking send would hold every
 * other client for SEND_TIMEOUT_S per reply. So the loop's own replies do not block;
 * one that finds the socket full is lost, as sd_reply_error says. Workers, who serve
 * one client each, keep the blocking send and its timeout. A failed fcntl leaves the
 * send blocking, bounded by the timeout as before.
 */
static void sock_nonblock(struct sd_client *c, bool on)
{
	int fl = fcntl(c->sock, F_GETFL);

	if (fl >= 0)
		(void)fcntl(c->sock, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

/* An error reply from the loop itself (see sock_nonblock). */
static void reply_error_now(struct sd_client *c, uint64_t id, int code, const char *why)
{
	sock_nonblock(c, true);
	sd_reply_error(c, id, code, why);
	sock_nonblock(c, false);
}

static int watch(struct sparqd *d, int fd, struct sd_watch *w)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = w };

	return epoll_ctl(d->epoll_fd, EPOLL_CTL_ADD, fd, &ev) ? -errno : 0;
}

static void unwatch(struct sparqd *d, int fd)
{
	if (fd >= 0)
		epoll_ctl(d->epoll_fd, EPOLL_CTL_DEL, fd, NULL);
}

/* Whether a daemon accepts connections on path now. */
static bool someone_listens(const char *path)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	bool yes;

	if (fd < 0)
		return false;
	memcpy(a.sun_path, path, strlen(path) + 1);
	yes = connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
	close(fd);
	return yes;
}

int sd_loop_open(struct sparqd *d, const char **why)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	const char *path = d->cfg.socket;
	struct stat st;
	sigset_t mask;
	int ret;

	d->w_listen.kind = SD_WATCH_LISTEN;
	d->w_signal.kind = SD_WATCH_SIGNAL;
	d->w_wake.kind = SD_WATCH_WAKE;
	if (lstat(path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			*why = "the socket path exists and is not a socket";
			return -EEXIST;
		}
		if (someone_listens(path)) {
			*why = "another daemon answers on the socket";
			return -EADDRINUSE;
		}
		if (unlink(path)) {
			*why = "cannot remove the stale socket";
			return -errno;
		}
		sd_log(&d->log, SD_LOG_INFO, "removed stale socket %s", path);
	}
	d->listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	*why = "cannot create the socket";
	if (d->listen_fd < 0)
		return -errno;
	memcpy(a.sun_path, path, strlen(path) + 1);
	*why = "cannot bind the socket";
	if (bind(d->listen_fd, (struct sockaddr *)&a, sizeof(a)))
		return -errno;
	d->socket_bound = true;
	*why = "cannot set the socket's mode";
	if (chmod(path, d->cfg.socket_mode))
		return -errno;
	*why = "cannot listen on the socket";
	if (listen(d->listen_fd, 128))
		return -errno;
	*why = "cannot create epoll";
	d->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	if (d->epoll_fd < 0)
		return -errno;
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	*why = "cannot create the signalfd";
	d->signal_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	if (d->signal_fd < 0)
		return -errno;
	*why = "cannot create the wake eventfd";
	d->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (d->wake_fd < 0)
		return -errno;
	*why = "cannot watch the loop's fds";
	ret = watch(d, d->listen_fd, &d->w_listen);
	if (!ret)
		ret = watch(d, d->signal_fd, &d->w_signal);
	if (!ret)
		ret = watch(d, d->wake_fd, &d->w_wake);
	return ret;
}

static void client_free(struct sparqd *d, struct sd_client *c)
{
	bool listed = false;

	for (struct sd_client **pp = &d->clients; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			listed = true;
			break;
		}
	}
	if (c->sock >= 0)
		close(c->sock);
	/* the client holds the same eventfd: closing ours would not leave the set */
	sd_pool_unwatch(d, c);
	if (c->submit_fd >= 0)
		close(c->submit_fd);
	if (c->complete_fd >= 0)
		close(c->complete_fd);
	sparq_shm_unmap(&c->shm);
	/* counted until all of it is released: whoever reads the count in stats (a worker,
	 * meanwhile) and sees a client gone must find its fds closed and region unmapped */
	if (listed)
		__atomic_fetch_sub(&d->n_clients, 1, __ATOMIC_RELEASE);
	free(c->bye);
	sd_log(&d->log, SD_LOG_DEBUG, "client %" PRIu64 " freed", c->id);
	free(c);
}

/* The client is gone: stop listening to it, retire it behind its last request. */
static void client_gone(struct sparqd *d, struct sd_client *c, const char *how)
{
	struct sd_job *job = c->bye;

	if (c->closing)
		return;
	unwatch(d, c->sock);
	sd_log(&d->log, SD_LOG_DEBUG, "client %" PRIu64 " (%s, pid %u) %s", c->id, c->name, c->pid,
	       how);
	if (!c->hello_done) {
		/* no worker ever sees a client before hello (each of its requests is
		 * answered at once, and it has no doorbell): retire it here */
		c->closing = true;
		sd_sessions_conn_gone(&d->sessions, c->id);
		client_free(d, c);
		return;
	}
	c->bye = NULL;
	job->teardown = true;
	sd_pool_submit(d, c, job);   /* marks it closing */
}

static void accept_clients(struct sparqd *d)
{
	for (;;) {
		struct timeval tv = { .tv_sec = SEND_TIMEOUT_S };
		struct sd_client *c;
		pid_t pid;
		uid_t uid;
		gid_t gid;
		int fd = accept4(d->listen_fd, NULL, NULL, SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
				sd_log(&d->log, SD_LOG_WARN, "accept: %s", strerror(errno));
			return;
		}
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		if (d->n_clients >= d->cfg.max_clients) {
			sd_log(&d->log, SD_LOG_WARN, "refusing a client: %u clients connected (--max-clients)",
			       d->n_clients);
			struct sd_client tmp = { .sock = fd };
			sd_reply_error(&tmp, 0, -EAGAIN, "too many clients connected");
			close(fd);
			continue;
		}
		if (sparq_wire_peer(fd, &pid, &uid, &gid)) {
			sd_log(&d->log, SD_LOG_WARN, "refusing a client: no peer credentials");
			close(fd);
			continue;
		}
		c = calloc(1, sizeof(*c));
		if (!c) {
			close(fd);
			continue;
		}
		c->id = ++d->next_client_id;
		c->sock = fd;
		c->submit_fd = c->complete_fd = -1;
		c->shm.fd = -1;
		c->uid = (uint32_t)uid;
		c->pid = (uint32_t)pid;
		c->w_sock = (struct sd_watch){ .kind = SD_WATCH_SOCK, .c = c };
		if (watch(d, fd, &c->w_sock)) {
			close(fd);
			free(c);
			continue;
		}
		c->next = d->clients;
		d->clients = c;
		__atomic_fetch_add(&d->n_clients, 1, __ATOMIC_RELAXED);
		sd_log(&d->log, SD_LOG_DEBUG, "client %" PRIu64 " connected (uid %u, pid %u)", c->id,
		       c->uid, c->pid);
	}
}

static int hello(struct sparqd *d, struct sd_client *c, const struct sd_req *r, const char **why)
{
	Sparq__V1__Response resp = SPARQ__V1__RESPONSE__INIT;
	Sparq__V1__HelloReply hr = SPARQ__V1__HELLO_REPLY__INIT;
	uint64_t cap = d->cfg.shm_bytes > SHM_CLIENT_MAX ? d->cfg.shm_bytes : SHM_CLIENT_MAX;
	uint64_t want = r->shm_bytes ? r->shm_bytes : d->cfg.shm_bytes;
	int fds[3], ret;

	if (want < SPARQ_SHM_DATA_MIN)
		want = SPARQ_SHM_DATA_MIN;
	if (want > cap)
		want = cap;
	ret = sparq_shm_create(want, d->cfg.ring_entries, &c->shm, why);
	if (ret)
		return ret;
	*why = "cannot create the doorbells";
	c->submit_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (c->submit_fd < 0)
		return -errno;
	c->complete_fd = eventfd(0, EFD_CLOEXEC);
	if (c->complete_fd < 0)
		return -errno;
	*why = "out of memory";
	c->bye = calloc(1, sizeof(*c->bye));
	if (!c->bye)
		return -ENOMEM;
	*why = "cannot watch the submit doorbell";
	ret = sd_pool_watch(d, c);
	if (ret)
		return ret;
	hr.protocol_version = SPARQ_PROTOCOL_VERSION;
	hr.server_version = (char *)SPARQ_VERSION_STRING;
	hr.backend = (char *)sparq_backend_name(d->be);
	hr.shm_bytes = c->shm.size;
	hr.ring_entries = c->shm.entries;
	hr.client_id = c->id;
	resp.id = r->id;
	resp.body_case = SPARQ__V1__RESPONSE__BODY_HELLO;
	resp.hello = &hr;
	fds[0] = c->shm.fd;
	fds[1] = c->submit_fd;
	fds[2] = c->complete_fd;
	c->hello_done = true;
	memcpy(c->name, r->name, sizeof(c->name));
	*why = "cannot send the hello reply";
	sock_nonblock(c, true);
	ret = sparq_wire_send(c->sock, &resp.base, fds, 3);
	sock_nonblock(c, false);
	if (!ret)
		sd_log(&d->log, SD_LOG_DEBUG, "client %" PRIu64 " hello as '%s' (%" PRIu64 " byte region)",
		       c->id, c->name, c->shm.size);
	return ret;
}

static void undo_hello(struct sparqd *d, struct sd_client *c)
{
	sd_pool_unwatch(d, c);
	free(c->bye);
	c->bye = NULL;
	if (c->submit_fd >= 0)
		close(c->submit_fd);
	if (c->complete_fd >= 0)
		close(c->complete_fd);
	c->submit_fd = c->complete_fd = -1;
	sparq_shm_unmap(&c->shm);
	memset(&c->shm, 0, sizeof(c->shm));
	c->shm.fd = -1;
	c->hello_done = false;
}

/* A control request: answered now when cheap and c is idle (keeps per-client order),
 * else queued behind its work. Before hello every request is an error, and c idle. */
static void dispatch(struct sparqd *d, struct sd_client *c, struct sd_job *job)
{
	bool cheap = job->req.err || job->req.op == SD_OP_NOP || !c->hello_done;

	if (cheap && sd_pool_client_idle(d, c)) {
		sock_nonblock(c, true);
		sd_exec(d, c, job);
		sock_nonblock(c, false);
		sd_req_release(&job->req);
		free(job);
		return;
	}
	sd_pool_submit(d, c, job);
}

static void client_readable(struct sparqd *d, struct sd_client *c, uint8_t *buf)
{
	struct sd_lookup lk = { .t = &d->sessions, .uid = c->uid };
	struct sd_req_ctx ctx = { .shm = c->hello_done ? &c->shm : NULL,
				  .hello_done = c->hello_done, .lookup = sd_sessions_geometry,
				  .lookup_user = &lk };
	unsigned n_fds = 0;
	uint64_t t0;
	struct sd_job *job;
	const char *why = "";
	ssize_t n = sparq_wire_recv(c->sock, buf, SPARQ_WIRE_MAX, NULL, 0, &n_fds);

	if (n == 0) {
		client_gone(d, c, "disconnected");
		return;
	}
	if (n == -EAGAIN || n == -EINTR)
		return;
	if (n == -EMSGSIZE) {
		if (sd_pool_client_idle(d, c))
			reply_error_now(c, 0, -EMSGSIZE, "packet larger than 64 KiB");
		sd_stats_record(&d->stats, SD_OP_NONE, -EMSGSIZE, 0);
		return;
	}
	if (n < 0) {
		client_gone(d, c, "lost (receive error)");
		return;
	}
	t0 = sd_now_ns();
	job = calloc(1, sizeof(*job));
	if (!job) {
		if (sd_pool_client_idle(d, c))
			reply_error_now(c, 0, -ENOMEM, "out of memory");
		return;
	}
	job->t0 = t0;
	sd_req_decode_msg(&ctx, buf, (size_t)n, &job->req);
	if (job->req.op == SD_OP_HELLO && !job->req.err) {
		/* before hello every request is an error answered at once: c is idle here */
		int ret = hello(d, c, &job->req, &why);

		if (ret) {
			sd_log(&d->log, SD_LOG_WARN, "client %" PRIu64 " hello failed: %s (%s)", c->id,
			       why, strerror(-ret));
			undo_hello(d, c);
			reply_error_now(c, job->req.id, ret, why);
		}
		sd_stats_record(&d->stats, SD_OP_HELLO, ret, sd_now_ns() - t0);
		sd_req_release(&job->req);
		free(job);
		return;
	}
	dispatch(d, c, job);
}

static void free_dead(struct sparqd *d)
{
	struct sd_client *c = sd_pool_take_dead(d);

	while (c) {
		struct sd_client *next = c->next_dead;

		client_free(d, c);
		c = next;
	}
}

static void begin_shutdown(struct sparqd *d, int sig)
{
	sd_log(&d->log, SD_LOG_INFO, "%s: no new clients; finishing in-flight requests",
	       sig == SIGINT ? "SIGINT" : "SIGTERM");
	d->stopping = true;
	unwatch(d, d->listen_fd);
	close(d->listen_fd);
	d->listen_fd = -1;
	if (d->socket_bound && unlink(d->cfg.socket) == 0)
		d->socket_bound = false;
	/* requests already received run; nothing more is read */
	for (struct sd_client *c = d->clients; c; c = c->next)
		unwatch(d, c->sock);
	sd_pool_quiesce(d);
}

int sd_loop_run(struct sparqd *d)
{
	struct epoll_event evs[64];
	uint8_t *buf = malloc(SPARQ_WIRE_MAX);

	if (!buf)
		return -ENOMEM;
	while (!d->stopping) {
		int n = epoll_wait(d->epoll_fd, evs, 64, -1);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			sd_log(&d->log, SD_LOG_ERROR, "epoll_wait: %s", strerror(errno));
			free(buf);
			return -errno;
		}
		for (int i = 0; i < n && !d->stopping; i++) {
			struct sd_watch *w = evs[i].data.ptr;
			struct signalfd_siginfo si;
			uint64_t count;

			switch (w->kind) {
			case SD_WATCH_LISTEN:
				accept_clients(d);
				break;
			case SD_WATCH_SIGNAL:
				if (read(d->signal_fd, &si, sizeof(si)) == (ssize_t)sizeof(si))
					begin_shutdown(d, (int)si.ssi_signo);
				break;
			case SD_WATCH_WAKE:
				if (read(d->wake_fd, &count, sizeof(count)) < 0 && errno != EAGAIN)
					sd_log(&d->log, SD_LOG_WARN, "wake eventfd: %s", strerror(errno));
				free_dead(d);
				/* events after this one may name clients just freed */
				i = n;
				break;
			case SD_WATCH_SOCK:
				if (w->c->closing)
					break;
				if (evs[i].events & EPOLLIN)
					client_readable(d, w->c, buf);
				else
					client_gone(d, w->c, "hung up");
				break;
			}
		}
	}
	free(buf);
	sd_pool_drain(d);
	free_dead(d);
	return 0;
}

void sd_loop_close(struct sparqd *d)
{
	free_dead(d);
	while (d->clients)
		client_free(d, d->clients);
	if (d->listen_fd >= 0)
		close(d->listen_fd);
	if (d->signal_fd >= 0)
		close(d->signal_fd);
	if (d->wake_fd >= 0)
		close(d->wake_fd);
	if (d->epoll_fd >= 0)
		close(d->epoll_fd);
	d->listen_fd = d->signal_fd = d->wake_fd = d->epoll_fd = -1;
	if (d->socket_bound && unlink(d->cfg.socket) == 0)
		d->socket_bound = false;
}
