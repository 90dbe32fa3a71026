/*
 * test_ipc.c — the protocol's building blocks without a daemon: the shared region
 * (create, seal, map and its validation of hostile headers, bounds checks), the two
 * rings (order, full/empty, impossible cursors, the completion-slot rule) and the
 * SEQPACKET framing (round trip with descriptors, truncated packets, surplus
 * descriptors closed, peer credentials).
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers.h"
#include "shm.h"
#include "wire.h"

static int open_fds(void)
{
	int n = 0;

	for (int fd = 0; fd < 1024; fd++)
		n += fcntl(fd, F_GETFD) >= 0;
	return n;
}

/* A copy of a fresh region's bytes in a new memfd, with the header patched by fn. */
static int forged(const struct sparq_shm *src, void (*fn)(struct sparq_shm_header *, uint64_t *),
		  uint64_t size)
{
	int fd = memfd_create("forged", MFD_CLOEXEC);
	struct sparq_shm_header h;

	T_CHECK(fd >= 0, "memfd");
	memcpy(&h, src->base, sizeof(h));
	fn(&h, &size);
	T_CHECK(ftruncate(fd, (off_t)size) == 0, "ftruncate");
	T_CHECK(pwrite(fd, &h, sizeof(h), 0) == (ssize_t)sizeof(h), "pwrite");
	return fd;
}

static void bad_magic(struct sparq_shm_header *h, uint64_t *size) { (void)size; h->magic ^= 1; }
static void bad_version(struct sparq_shm_header *h, uint64_t *size) { (void)size; h->version = 99; }
static void bad_ring(struct sparq_shm_header *h, uint64_t *size) { (void)size; h->ring_entries = 100; }
static void bad_data(struct sparq_shm_header *h, uint64_t *size) { (void)size; h->data_bytes += 4096; }
static void bad_off(struct sparq_shm_header *h, uint64_t *size) { (void)size; h->data_off = 8192; }
static void short_file(struct sparq_shm_header *h, uint64_t *size) { (void)h; *size -= 4096; }
static void huge_data(struct sparq_shm_header *h, uint64_t *size)
{
	(void)size;
	h->data_bytes = UINT64_MAX - 4095;
	h->size = UINT64_MAX;
}
static void as_is(struct sparq_shm_header *h, uint64_t *size) { (void)h; (void)size; }

static void test_region(void)
{
	struct sparq_shm d, c;
	const char *why = NULL;
	void *p;
	int ret;

	T_CHECK(sparq_shm_create(1000, 64, &d, &why) == -EINVAL, "tiny data area accepted");
	T_CHECK(sparq_shm_create(1 << 20, 48, &d, &why) == -EINVAL, "ring of 48 accepted");
	T_CHECK(sparq_shm_create(1 << 20, 8192, &d, &why) == -EINVAL, "ring of 8192 accepted");
	ret = sparq_shm_create((1 << 20) + 1, 64, &d, &why);
	T_CHECK(ret == 0, "create: %d %s", ret, why);
	T_CHECK(d.data_bytes == (1 << 20) + 4096, "data area not rounded to pages");
	/* sealed: neither side can resize it under the other */
	T_CHECK(ftruncate(d.fd, 4096) < 0 && errno == EPERM, "region can be shrunk");

	ret = sparq_shm_map(dup(d.fd), &c, &why);
	T_CHECK(ret == 0, "map: %d %s", ret, why);
	T_CHECK(c.data_off == d.data_off && c.size == d.size, "layouts differ");

	/* forged headers, each refused with its reason, fd consumed */
	struct { void (*fn)(struct sparq_shm_header *, uint64_t *); int want; } bad[] = {
		{ bad_magic, -EPROTO }, { bad_version, -EPROTONOSUPPORT }, { bad_ring, -EPROTO },
		{ bad_data, -EPROTO }, { bad_off, -EPROTO }, { short_file, -EPROTO },
		{ huge_data, -EPROTO },
	};
	int before = open_fds();
	for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct sparq_shm x;
		why = NULL;
		ret = sparq_shm_map(forged(&d, bad[i].fn, d.size), &x, &why);
		T_CHECK(ret == bad[i].want, "forged header %u: got %d want %d", i, ret, bad[i].want);
		T_CHECK(why && *why, "forged header %u: no reason", i);
	}
	T_CHECK(open_fds() == before, "map leaked descriptors on refusal");
	struct sparq_shm ok;
	T_CHECK(sparq_shm_map(forged(&d, as_is, d.size), &ok, &why) == 0, "copy refused: %s", why);
	sparq_shm_unmap(&ok);

	/* bounds: inside the data area only, overflow-safe, aligned as asked */
	uint64_t lo = d.data_off, hi = d.data_off + d.data_bytes;
	T_CHECK(sparq_shm_range(&d, lo, d.data_bytes, 1, &p) == 0, "whole data area refused");
	T_CHECK(p == d.base + lo, "wrong address");
	T_CHECK(sparq_shm_range(&d, hi, 0, 1, &p) == 0, "empty range at the end refused");
	T_CHECK(sparq_shm_range(&d, 0, 0, 1, &p) == -ERANGE, "offset 0 accepted");
	T_CHECK(sparq_shm_range(&d, lo - 8, 8, 1, &p) == -ERANGE, "ring bytes accepted");
	T_CHECK(sparq_shm_range(&d, lo, d.data_bytes + 1, 1, &p) == -ERANGE, "one past accepted");
	T_CHECK(sparq_shm_range(&d, hi + 1, 0, 1, &p) == -ERANGE, "past the end accepted");
	T_CHECK(sparq_shm_range(&d, lo + 16, UINT64_MAX - 8, 1, &p) == -ERANGE, "overflow accepted");
	T_CHECK(sparq_shm_range(&d, UINT64_MAX, 2, 1, &p) == -ERANGE, "wrapping offset accepted");
	T_CHECK(sparq_shm_range(&d, lo + 2, 4, 4, &p) == -ERANGE, "misaligned accepted");
	T_CHECK(sparq_shm_range(&d, lo + 4, 4, 3, &p) == -ERANGE, "alignment 3 accepted");

	/* writes of one side are seen by the other */
	memcpy(c.base + lo, "needle", 7);
	T_CHECK(memcmp(d.base + lo, "needle", 7) == 0, "region not shared");
	sparq_shm_unmap(&c);
	sparq_shm_unmap(&d);
}

static void test_rings(void)
{
	struct sparq_shm d, c;
	struct sparq_sqe sqe = { 0 }, got;
	struct sparq_cqe cqe = { 0 }, cgot;
	const char *why;

	T_CHECK(sparq_shm_create(1 << 20, 8, &d, &why) == 0, "create");
	T_CHECK(sparq_shm_map(dup(d.fd), &c, &why) == 0, "map");
	T_CHECK(sparq_sq_pop(&d, &got) == 0, "empty ring gave a submission");
	/* wrap around the ring several times, in order */
	for (uint64_t i = 0; i < 100; i++) {
		sqe.user_data = i;
		sqe.op = SPARQ_OP_NOP;
		T_CHECK(sparq_sq_push(&c, &sqe) == 0, "push %lu", (unsigned long)i);
		T_CHECK(sparq_sq_pop(&d, &got) == 1 && got.user_data == i, "pop %lu", (unsigned long)i);
		cqe.user_data = i;
		cqe.res = -(int32_t)i;
		memset(cqe.why, 'x', sizeof(cqe.why)); /* unterminated: the reader terminates */
		sparq_cq_push(&d, &cqe);
		T_CHECK(sparq_cq_pop(&c, &cgot) == 1 && cgot.user_data == i && cgot.res == -(int32_t)i,
			"completion %lu", (unsigned long)i);
		T_CHECK(cgot.why[sizeof(cgot.why) - 1] == '\0', "reason not terminated");
	}
	T_CHECK(sparq_cq_pop(&c, &cgot) == 0, "empty completion ring gave one");
	/* full submission ring */
	for (int i = 0; i < 8; i++)
		T_CHECK(sparq_sq_push(&c, &sqe) == 0, "push into free ring");
	T_CHECK(sparq_sq_push(&c, &sqe) == -EAGAIN, "push into a full ring");
	/* the daemon owes completions for what it took: with none consumed it stops at 8 */
	for (int i = 0; i < 8; i++)
		T_CHECK(sparq_sq_pop(&d, &got) == 1, "pop %d", i);
	T_CHECK(sparq_sq_push(&c, &sqe) == 0, "push after the daemon took them");
	T_CHECK(sparq_sq_pop(&d, &got) == 0, "took a submission without a completion slot");
	for (int i = 0; i < 8; i++) {
		sparq_cq_push(&d, &cqe);
		T_CHECK(sparq_cq_pop(&c, &cgot) == 1, "drain %d", i);
	}
	T_CHECK(sparq_sq_pop(&d, &got) == 1, "slot freed but submission not taken");
	/* a hostile tail far ahead is refused, and nothing is read */
	atomic_store(&d.hdr->sq_tail, d.sq_head + 1000);
	T_CHECK(sparq_sq_pop(&d, &got) == -EPROTO, "impossible tail accepted");
	atomic_store(&c.hdr->cq_tail, c.cq_head + 1000);
	T_CHECK(sparq_cq_pop(&c, &cgot) == -EPROTO, "impossible completion tail accepted");
	sparq_shm_unmap(&c);
	sparq_shm_unmap(&d);
}

/* The doorbell-suppression words (shm.h), from both sides of one region. */
static void test_doorbell_flags(void)
{
	struct sparq_shm d, c;
	struct sparq_sqe sqe = { .op = SPARQ_OP_NOP }, got;
	const char *why = "";

	T_CHECK(sparq_shm_create(1 << 20, 8, &d, &why) == 0, "create");
	T_CHECK(sparq_shm_map(dup(d.fd), &c, &why) == 0, "map: %s", why);

	/* both words start 0: always ring, both ways */
	T_CHECK(sparq_sq_needs_doorbell(&c), "a fresh ring skips the submit doorbell");
	T_CHECK(sparq_cq_needs_doorbell(&d), "a fresh ring skips the completion doorbell");
	T_CHECK(!sparq_cq_client_asleep(&d), "a client that never said so is asleep");

	/* a daemon thread watching the ring: the client skips the doorbell, and the
	 * watcher sees what was published */
	T_CHECK(!sparq_sq_pending(&d), "an empty ring is pending");
	sparq_sq_set_polling(&d, true);
	T_CHECK(sparq_sq_push(&c, &sqe) == 0, "push");
	T_CHECK(!sparq_sq_needs_doorbell(&c), "doorbell rung while the daemon watches");
	T_CHECK(sparq_sq_pending(&d), "published submission not pending");
	T_CHECK(sparq_sq_pop(&d, &got) == 1 && !sparq_sq_pending(&d), "pop");
	sparq_sq_set_polling(&d, false);
	T_CHECK(sparq_sq_needs_doorbell(&c), "no doorbell after the watcher left");

	/* a client that keeps its word up to date: no eventfd while it spins, one once
	 * it sleeps; asleep only then */
	sparq_cq_set_waiting(&c, false);
	T_CHECK(!sparq_cq_needs_doorbell(&d), "completion doorbell for a spinning client");
	T_CHECK(!sparq_cq_client_asleep(&d), "a spinning client is asleep");
	sparq_cq_set_waiting(&c, true);
	T_CHECK(sparq_cq_needs_doorbell(&d), "no completion doorbell for a sleeping client");
	T_CHECK(sparq_cq_client_asleep(&d), "a sleeping client is awake");
	sparq_cq_set_waiting(&c, false);
	T_CHECK(!sparq_cq_client_asleep(&d), "a client that woke is still asleep");

	/* WAITING without WAKE_ON_FLAG is a word the protocol never writes: the client
	 * gets its doorbells (as one that knows nothing of the words) and is no sleeper */
	atomic_store(&c.hdr->cq_flags, SPARQ_CQ_WAITING);
	T_CHECK(sparq_cq_needs_doorbell(&d), "no doorbell for a client without the protocol");
	T_CHECK(!sparq_cq_client_asleep(&d), "a forged word makes a sleeper");
	sparq_shm_unmap(&c);
	sparq_shm_unmap(&d);
}

static void test_wire(void)
{
	int sv[2], fds[SPARQ_WIRE_MAX_FDS], pass[5];
	uint8_t *buf = t_alloc(SPARQ_WIRE_MAX);
	Sparq__V1__Request req = SPARQ__V1__REQUEST__INIT;
	Sparq__V1__Hello hello = SPARQ__V1__HELLO__INIT;
	unsigned n_fds;
	ssize_t n;

	T_CHECK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
	hello.protocol_version = SPARQ_PROTOCOL_VERSION;
	hello.client_name = "test";
	req.id = 42;
	req.body_case = SPARQ__V1__REQUEST__BODY_HELLO;
	req.hello = &hello;

	/* round trip with descriptors: they arrive, usable and distinct */
	for (int i = 0; i < 3; i++)
		pass[i] = memfd_create("p", MFD_CLOEXEC);
	T_CHECK(sparq_wire_send(sv[0], &req.base, pass, 3) == 0, "send");
	n = sparq_wire_recv(sv[1], buf, SPARQ_WIRE_MAX, fds, 3, &n_fds);
	T_CHECK(n > 0 && n_fds == 3, "recv: %zd, %u fds", n, n_fds);
	Sparq__V1__Request *r = sparq__v1__request__unpack(NULL, (size_t)n, buf);
	T_CHECK(r && r->id == 42 && r->body_case == SPARQ__V1__REQUEST__BODY_HELLO &&
		strcmp(r->hello->client_name, "test") == 0, "message changed in transit");
	sparq__v1__request__free_unpacked(r, NULL);
	for (int i = 0; i < 3; i++) {
		T_CHECK(fcntl(fds[i], F_GETFD) & FD_CLOEXEC, "descriptor not close-on-exec");
		close(fds[i]);
		close(pass[i]);
	}

	/* more descriptors than asked for: the surplus is closed, not leaked */
	int before = open_fds();
	for (int i = 0; i < 5; i++)
		pass[i] = memfd_create("p", MFD_CLOEXEC);
	union {
		struct cmsghdr a;
		char b[CMSG_SPACE(5 * sizeof(int))];
	} ctl = { 0 };
	uint8_t one = 0x08; /* field 1 varint: a valid, tiny Request */
	uint8_t pkt[2] = { one, 7 };
	struct iovec iov = { .iov_base = pkt, .iov_len = 2 };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b,
			     .msg_controllen = sizeof(ctl.b) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(5 * sizeof(int));
	memcpy(CMSG_DATA(cm), pass, 5 * sizeof(int));
	T_CHECK(sendmsg(sv[0], &mh, 0) == 2, "raw send");
	for (int i = 0; i < 5; i++)
		close(pass[i]);
	n = sparq_wire_recv(sv[1], buf, SPARQ_WIRE_MAX, fds, 1, &n_fds);
	T_CHECK(n == 2 && n_fds == 1, "recv with surplus: %zd %u", n, n_fds);
	close(fds[0]);
	T_CHECK(open_fds() == before, "surplus descriptors leaked");

	/* a packet longer than the buffer is reported, not half-read */
	uint8_t *big = t_alloc(SPARQ_WIRE_MAX + 100);
	T_CHECK(send(sv[0], big, SPARQ_WIRE_MAX + 100, 0) == SPARQ_WIRE_MAX + 100, "big send");
	n = sparq_wire_recv(sv[1], buf, SPARQ_WIRE_MAX, fds, 3, &n_fds);
	T_CHECK(n == -EMSGSIZE, "truncated packet: %zd", n);
	free(big);

	/* oversize and empty messages are refused before sending */
	char *name = t_alloc(SPARQ_WIRE_MAX + 1);
	memset(name, 'a', SPARQ_WIRE_MAX);
	hello.client_name = name;
	T_CHECK(sparq_wire_send(sv[0], &req.base, NULL, 0) == -EMSGSIZE, "oversize sent");
	free(name);
	Sparq__V1__Request empty = SPARQ__V1__REQUEST__INIT;
	T_CHECK(sparq_wire_send(sv[0], &empty.base, NULL, 0) == -EINVAL, "empty message sent");

	/* credentials of the peer are ours here */
	pid_t pid;
	uid_t uid;
	T_CHECK(sparq_wire_peer(sv[1], &pid, &uid, NULL) == 0 && pid == getpid() &&
		uid == getuid(), "peer credentials");

	/* closed peer: recv says 0, send says -EPIPE without a signal */
	close(sv[0]);
	T_CHECK(sparq_wire_recv(sv[1], buf, SPARQ_WIRE_MAX, fds, 3, &n_fds) == 0, "EOF");
	hello.client_name = "x";
	T_CHECK(sparq_wire_send(sv[1], &req.base, NULL, 0) == -EPIPE, "send to a closed peer");
	close(sv[1]);
	free(buf);
}

int main(void)
{
	test_region();
	test_rings();
	test_doorbell_flags();
	test_wire();
	printf("ipc: region, rings and framing behave\n");
	return T_EXIT_PASS;
}
