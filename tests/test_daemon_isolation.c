/*
 * test_daemon_isolation.c — two uids on one sparqd cannot see or touch each other's
 * sessions (issue 4, Security): list shows only the caller's, and every call naming
 * another uid's session — open or parked, over the socket or the ring — answers
 * -ENOENT "no such session", exactly as for an id that never existed, so ids leak
 * nothing. Resuming a parked session needs its creator's uid.
 *
 * It needs two uids, so it runs as root and forks children that drop to an
 * unprivileged uid (65534, "nobody") before connecting; not root: skip (77). The
 * daemon is started with --socket-mode 0666 and its private directory opened for
 * traversal (0711): the default 0600 socket admits only the daemon's own uid, which
 * is the first line of defence but would keep the second uid from ever reaching the
 * checks under test. SO_PEERCRED then tells the uids apart.
 */
#include <errno.h>
#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon_helpers.h"
#include "half.h"
#include "raw_client.h"

#define CHECK(cond, ...)                                                              \
	do {                                                                          \
		if (!(cond)) {                                                        \
			fprintf(stderr, "%s:%d [uid %u]: check failed: %s: ", __FILE__,  \
				__LINE__, (unsigned)getuid(), #cond);                 \
			fprintf(stderr, __VA_ARGS__);                                 \
			fputc('\n', stderr);                                          \
			exit(T_DAEMON_EXIT_FAIL);                                     \
		}                                                                     \
	} while (0)

#define OTHER_UID 65534u
#define KVH 2u
#define QH 4u
#define HD 64u
#define TOKENS 16u

static struct t_daemon daemon_;

/* ---- requests over the socket and the ring, by session id ---- */

static uint16_t kv_value(uint64_t sid, uint32_t i, bool v)
{
	return sparq_f32_to_f16((float)((int)((sid * 31 + i * 7 + v) % 29) - 14) / 8.0f);
}

/* Appends TOKENS tokens to layer 0, values derived from seed. */
static int append_socket(struct raw_client *c, uint64_t sid, uint64_t seed, char *why)
{
	Sparq__V1__Request req = SPARQ__V1__REQUEST__INIT;
	Sparq__V1__Append a = SPARQ__V1__APPEND__INIT;
	uint64_t bytes = (uint64_t)TOKENS * KVH * HD * 2;
	uint64_t koff = raw_alloc(c, bytes), voff = raw_alloc(c, bytes);
	uint16_t *k = raw_ptr(c, koff), *v = raw_ptr(c, voff);

	for (uint32_t i = 0; i < TOKENS * KVH * HD; i++) {
		k[i] = kv_value(seed, i, false);
		v[i] = kv_value(seed, i, true);
	}
	a.session = sid;
	a.n_tokens = TOKENS;
	a.k_off = koff;
	a.v_off = voff;
	req.body_case = SPARQ__V1__REQUEST__BODY_APPEND;
	req.append = &a;
	return raw_call(c, &req, NULL, why, 256);
}

/* Gathers all TOKENS rows of layer 0, KV head 1 and compares them with seed's values. */
static int gather_check(struct raw_client *c, uint64_t sid, uint64_t seed, char *why)
{
	Sparq__V1__Request req = SPARQ__V1__REQUEST__INIT;
	Sparq__V1__Gather g = SPARQ__V1__GATHER__INIT;
	uint64_t poff = raw_alloc(c, TOKENS * 4), ooff = raw_alloc(c, TOKENS * 2 * HD * 2);
	uint32_t *pos = raw_ptr(c, poff);
	uint16_t *out = raw_ptr(c, ooff);
	int ret;

	for (uint32_t i = 0; i < TOKENS; i++)
		pos[i] = i;
	g.session = sid;
	g.kv_head = 1;
	g.n = TOKENS;
	g.pos_off = poff;
	g.out_off = ooff;
	req.body_case = SPARQ__V1__REQUEST__BODY_GATHER;
	req.gather = &g;
	ret = raw_call(c, &req, NULL, why, 256);
	if (ret)
		return ret;
	for (uint32_t t = 0; t < TOKENS; t++)
		for (uint32_t j = 0; j < HD; j++) {
			uint32_t i = (t * KVH + 1) * HD + j;
			if (out[t * 2 * HD + j] != kv_value(seed, i, false) ||
			    out[t * 2 * HD + HD + j] != kv_value(seed, i, true)) {
				snprintf(why, 256, "row %u differs from what was appended", t);
				return 1;
			}
		}
	return 0;
}

static int ring_op(struct raw_client *c, uint8_t op, uint64_t sid, char *why)
{
	struct sparq_sqe sqe = { .op = op, .session = sid };
	struct sparq_cqe cqe;
	uint64_t a = raw_alloc(c, 64 * 1024), b = raw_alloc(c, 64 * 1024);
	struct sparq_attend_desc *d = raw_ptr(c, a);
	float *q = raw_ptr(c, b);
	int ret;

	memset(d, 0, sizeof(*d));
	for (uint32_t i = 0; i < QH * HD; i++)
		q[i] = 0.125f * (float)(i % 7);
	switch (op) {
	case SPARQ_OP_APPEND:
		sqe.n = 1;
		sqe.off[0] = b;
		sqe.off[1] = b + 4096;
		break;
	case SPARQ_OP_GATHER:
		((uint32_t *)raw_ptr(c, a))[0] = 0;
		sqe.n = 1;
		sqe.off[0] = a;
		sqe.off[1] = b + 8192;
		break;
	case SPARQ_OP_ATTEND:
	case SPARQ_OP_SELECT:
		d->session = sid;
		d->q_off = b;
		d->y_off = b + 8192;
		d->sel_off = b + 8192;
		d->n_sel_off = b + 16384;
		d->sel_cap = TOKENS;
		d->params.use_defaults = 1;
		sqe.session = 0;
		sqe.n = 1;
		sqe.off[0] = a;
		break;
	}
	ret = raw_submit(c, &sqe, &cqe);
	if (ret)
		return ret;
	snprintf(why, 256, "%s", cqe.why);
	return cqe.res;
}

/* Every call on sid answers -ENOENT "no such session", the answer for a nonexistent id. */
static void expect_invisible(struct raw_client *c, uint64_t sid, const char *whose)
{
	static const Sparq__V1__Request__BodyCase refs[] = {
		SPARQ__V1__REQUEST__BODY_CLOSE, SPARQ__V1__REQUEST__BODY_PARK,
		SPARQ__V1__REQUEST__BODY_RESUME, SPARQ__V1__REQUEST__BODY_DROP,
	};
	static const char *const ref_names[] = { "close", "park", "resume", "drop" };
	static const uint8_t ops[] = { SPARQ_OP_APPEND, SPARQ_OP_GATHER, SPARQ_OP_ATTEND,
				       SPARQ_OP_SELECT };
	static const char *const op_names[] = { "ring append", "ring gather", "ring attend",
						"ring select" };
	uint64_t ids[16];
	char why[256];
	int n, ret;

	n = raw_list(c, ids, 16);
	CHECK(n >= 0, "list: %d", n);
	for (int i = 0; i < n && i < 16; i++)
		CHECK(ids[i] != sid, "list shows %s session %llu", whose, (unsigned long long)sid);
	for (size_t i = 0; i < sizeof(refs) / sizeof(refs[0]); i++) {
		ret = raw_session_op(c, refs[i], sid, why, sizeof(why));
		CHECK(ret == -ENOENT && strstr(why, "no such session"), "%s of %s session: %d (%s)",
		      ref_names[i], whose, ret, why);
	}
	ret = append_socket(c, sid, 99, why);
	CHECK(ret == -ENOENT && strstr(why, "no such session"), "append to %s session: %d (%s)",
	      whose, ret, why);
	ret = gather_check(c, sid, 99, why);
	CHECK(ret == -ENOENT && strstr(why, "no such session"), "gather of %s session: %d (%s)",
	      whose, ret, why);
	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
		ret = ring_op(c, ops[i], sid, why);
		CHECK(ret == -ENOENT && strstr(why, "no such session"), "%s of %s session: %d (%s)",
		      op_names[i], whose, ret, why);
	}
	printf("  uid %-6u: %s session %llu: invisible to list, -ENOENT to 10 calls\n",
	       (unsigned)getuid(), whose, (unsigned long long)sid);
}

static void hello_or_die(struct raw_client *c)
{
	int ret = raw_connect(c, daemon_.socket);

	CHECK(ret == 0, "connect %s: %s", daemon_.socket, strerror(-ret));
	ret = raw_hello(c);
	CHECK(ret == 0, "hello: %s", strerror(-ret));
}

static uint64_t create_or_die(struct raw_client *c, bool persistent)
{
	uint64_t sid;
	int ret = raw_create(c, 1, QH, KVH, HD, persistent, &sid);

	CHECK(ret == 0, "create: %s", strerror(-ret));
	return sid;
}

/* Runs fn as OTHER_UID in a child; returns its exit code. fn writes a result to fd. */
static int as_other_uid(void (*fn)(int fd, uint64_t arg), uint64_t arg, uint64_t *result)
{
	int p[2], status;
	pid_t pid;

	CHECK(pipe(p) == 0, "pipe: %s", strerror(errno));
	fflush(NULL);
	pid = fork();
	CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		/* the parent's daemon is not the child's to stop on exit */
		t_daemon_unregister(&daemon_);
		close(p[0]);
		if (setgroups(0, NULL) || setgid(OTHER_UID) || setuid(OTHER_UID)) {
			fprintf(stderr, "cannot drop to uid %u: %s\n", OTHER_UID, strerror(errno));
			exit(T_DAEMON_EXIT_FAIL);
		}
		CHECK(getuid() == OTHER_UID && geteuid() == OTHER_UID, "still uid %u", getuid());
		fn(p[1], arg);
		fflush(NULL);
		exit(T_DAEMON_EXIT_PASS);
	}
	close(p[1]);
	*result = 0;
	if (read(p[0], result, sizeof(*result)) != (ssize_t)sizeof(*result))
		*result = 0;
	close(p[0]);
	CHECK(waitpid(pid, &status, 0) == pid, "waitpid: %s", strerror(errno));
	return t_exit_code(status);
}

/* First child: sees none of root's sessions; makes its own, parks it, leaves. */
static void child_probe(int fd, uint64_t unused)
{
	struct raw_client c;
	uint64_t sid;
	char why[256];
	int ret;

	(void)unused;
	hello_or_die(&c);
	CHECK(raw_list(&c, NULL, 0) == 0, "uid %u lists another uid's sessions", OTHER_UID);
	/* the baseline: the answer for an id nobody has */
	ret = raw_session_op(&c, SPARQ__V1__REQUEST__BODY_CLOSE, 0x7777777, why, sizeof(why));
	CHECK(ret == -ENOENT && strstr(why, "no such session"), "close of no session: %d (%s)", ret,
	      why);
	sid = create_or_die(&c, true);
	ret = append_socket(&c, sid, sid, why);
	CHECK(ret == 0, "append to its own session: %s", why);
	ret = raw_session_op(&c, SPARQ__V1__REQUEST__BODY_PARK, sid, why, sizeof(why));
	CHECK(ret == 0, "park its own session: %s", why);
	CHECK(write(fd, &sid, sizeof(sid)) == (ssize_t)sizeof(sid), "pipe");
	raw_close(&c);
}

/* The isolation checks of the child, on the ids the parent passes (one per call). */
static void child_invisible(int fd, uint64_t sid)
{
	struct raw_client c;

	hello_or_die(&c);
	expect_invisible(&c, sid, "root's");
	raw_close(&c);
	(void)fd;
}

/* Second child: the same uid resumes its parked session and finds its data. */
static void child_resume(int fd, uint64_t sid)
{
	struct raw_client c;
	uint64_t ids[4];
	char why[256];
	int ret;

	hello_or_die(&c);
	/* the first child's connection may still be retiring: resume waits for it */
	ret = raw_session_op(&c, SPARQ__V1__REQUEST__BODY_RESUME, sid, why, sizeof(why));
	CHECK(ret == 0, "uid %u resumes its own parked session: %d (%s)", OTHER_UID, ret, why);
	ret = gather_check(&c, sid, sid, why);
	CHECK(ret == 0, "resumed session's rows: %d (%s)", ret, why);
	CHECK(raw_list(&c, ids, 4) == 1 && ids[0] == sid, "its list after resume");
	ret = raw_session_op(&c, SPARQ__V1__REQUEST__BODY_CLOSE, sid, why, sizeof(why));
	CHECK(ret == 0, "close: %s", why);
	printf("  uid %-6u: resumed its parked session %llu, rows intact, closed it\n",
	       (unsigned)getuid(), (unsigned long long)sid);
	raw_close(&c);
	(void)fd;
}

int main(void)
{
	static const char *const args[] = { "--socket-mode", "0666", NULL };
	struct raw_client root;
	uint64_t open_sid, parked_sid, other_sid, unused;
	char why[256];
	int ret;

	if (geteuid() != 0) {
		printf("SKIP: needs root to run a second uid (%u) against the daemon\n", OTHER_UID);
		return T_DAEMON_EXIT_SKIP;
	}
	t_daemon_need_own("the isolation test (starts sparqd with --socket-mode 0666)");
	t_daemon_start(&daemon_, NULL, args);
	CHECK(chmod(daemon_.dir, 0711) == 0, "chmod %s: %s", daemon_.dir, strerror(errno));

	/* root: a persistent session, parked when its connection goes, and an open one */
	hello_or_die(&root);
	parked_sid = create_or_die(&root, true);
	CHECK(append_socket(&root, parked_sid, parked_sid, why) == 0, "append: %s", why);
	raw_close(&root);
	hello_or_die(&root);
	open_sid = create_or_die(&root, false);
	CHECK(append_socket(&root, open_sid, open_sid, why) == 0, "append: %s", why);
	printf("isolation between uid 0 and uid %u:\n", OTHER_UID);

	/* the other uid: its own session; root's open and parked ones are invisible */
	ret = as_other_uid(child_probe, 0, &other_sid);
	CHECK(ret == 0 && other_sid, "the first uid-%u client failed (%d)", OTHER_UID, ret);
	ret = as_other_uid(child_invisible, open_sid, &unused);
	CHECK(ret == 0, "uid %u touched root's open session (%d)", OTHER_UID, ret);
	ret = as_other_uid(child_invisible, parked_sid, &unused);
	CHECK(ret == 0, "uid %u touched root's parked session (%d)", OTHER_UID, ret);

	/* root cannot see or touch the other uid's parked session either */
	expect_invisible(&root, other_sid, "uid 65534's");

	/* and nothing of root's changed: the open session's rows, the parked one resumes */
	CHECK(gather_check(&root, open_sid, open_sid, why) == 0, "root's open session: %s", why);
	ret = raw_session_op(&root, SPARQ__V1__REQUEST__BODY_RESUME, parked_sid, why, sizeof(why));
	CHECK(ret == 0, "root resumes its parked session: %d (%s)", ret, why);
	CHECK(gather_check(&root, parked_sid, parked_sid, why) == 0, "root's parked session: %s",
	      why);
	uint64_t ids[8];
	ret = raw_list(&root, ids, 8);
	CHECK(ret == 2, "root lists %d sessions, not 2", ret);
	printf("  uid 0     : its 2 sessions listed, rows intact, the parked one resumed\n");

	/* the rightful uid resumes its own parked session */
	ret = as_other_uid(child_resume, other_sid, &unused);
	CHECK(ret == 0, "uid %u could not resume its own session (%d)", OTHER_UID, ret);

	raw_close(&root);
	ret = t_daemon_stop(&daemon_);
	CHECK(ret == 0, "sparqd exited with %d", ret);
	t_daemon_cleanup(&daemon_);
	printf("test_daemon_isolation: uids 0 and %u saw and touched only their own sessions\n",
	       OTHER_UID);
	return T_DAEMON_EXIT_PASS;
}
