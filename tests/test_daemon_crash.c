/*
 * test_daemon_crash.c — sparqd killed with SIGKILL in the middle of an append stream
 * loses no parked session (issue 4). Parking is the durability promise: whatever was
 * parked must come back bit for bit after a crash, whatever the daemon was doing.
 *
 * Daemon 1: PARKED persistent sessions of different lengths (both layers, every KV
 * head written with values derived from session index, layer, token, head, dim) are
 * parked. A child process then streams appends (16 tokens per ring request) into one
 * of the parked sessions (its parked prefix must survive unchanged) and into a session
 * of its own that it parked after its prefill; a non-persistent session holds data
 * too. Mid-stream, the daemon is SIGKILLed.
 *
 * Daemon 2 on the same data directory: list shows exactly the parked sessions, not
 * open, with their parked lengths; each resumes (from NVMe or read into RAM,
 * alternately) and every row of every stream gathers back equal to what was appended,
 * bit for bit; the non-persistent session is gone; a new session gets an id none of
 * the parked ones had.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon_helpers.h"
#include "half.h"
#include "raw_client.h"

#define CHECK T_REQUIRE

#define LAYERS 2u
#define QH 4u
#define KVH 2u
#define HD 64u
#define PARKED 3
#define CHUNK 16u                 /* tokens per append request */
#define STREAM_MS 400             /* how long the child appends before the kill */

static const uint32_t parked_tokens[PARKED] = { 16, 272, 1040 };
#define CHILD_PREFILL 48u

static struct t_daemon daemon_;

/* The value of one element: distinct per session index, layer, token, head, dim, K/V. */
static uint16_t elem(uint32_t sx, uint32_t layer, uint32_t t, uint32_t h, uint32_t j, bool v)
{
	uint32_t x = sx * 2654435761u ^ layer * 40503u ^ t * 9973u ^ h * 613u ^ j * 31u ^ v;

	x ^= x >> 13;
	x *= 0x5bd1e995u;
	x ^= x >> 15;
	/* a finite f16: sign, exponent 1..29, any mantissa */
	return (uint16_t)((x & 0x83ffu) | (((x >> 10) % 29u + 1u) << 10));
}

/* Appends tokens [t0, t0 + n) of session index sx to one layer through the ring. */
static int append(struct raw_client *c, uint64_t sid, uint32_t sx, uint32_t layer, uint32_t t0,
		  uint32_t n)
{
	uint64_t bytes = (uint64_t)n * KVH * HD * 2;
	uint64_t koff = raw_alloc(c, bytes), voff = raw_alloc(c, bytes);
	uint16_t *k = raw_ptr(c, koff), *v = raw_ptr(c, voff);
	struct sparq_sqe sqe = { .op = SPARQ_OP_APPEND, .session = sid, .layer = layer, .n = n,
				 .off = { koff, voff, 0 } };
	struct sparq_cqe cqe;
	int ret;

	for (uint32_t t = 0; t < n; t++)
		for (uint32_t h = 0; h < KVH; h++)
			for (uint32_t j = 0; j < HD; j++) {
				size_t i = ((size_t)t * KVH + h) * HD + j;
				k[i] = elem(sx, layer, t0 + t, h, j, false);
				v[i] = elem(sx, layer, t0 + t, h, j, true);
			}
	ret = raw_submit(c, &sqe, &cqe);
	return ret ? ret : cqe.res;
}

static void append_all(struct raw_client *c, uint64_t sid, uint32_t sx, uint32_t tokens)
{
	for (uint32_t layer = 0; layer < LAYERS; layer++)
		for (uint32_t t = 0; t < tokens; t += CHUNK) {
			uint32_t n = tokens - t < CHUNK ? tokens - t : CHUNK;
			int ret = append(c, sid, sx, layer, t, n);
			CHECK(ret == 0, "append %u tokens at %u: %d", n, t, ret);
		}
}

/* Gathers every row of every stream of sid and compares it with elem(sx, ...). */
static void verify(struct raw_client *c, uint64_t sid, uint32_t sx, uint32_t tokens)
{
	Sparq__V1__Request req = SPARQ__V1__REQUEST__INIT;
	Sparq__V1__Gather g = SPARQ__V1__GATHER__INIT;
	uint64_t poff = raw_alloc(c, (uint64_t)tokens * 4);
	uint64_t ooff = raw_alloc(c, (uint64_t)tokens * 2 * HD * 2);
	uint32_t *pos = raw_ptr(c, poff);
	uint16_t *out = raw_ptr(c, ooff);
	char why[256];

	for (uint32_t t = 0; t < tokens; t++)
		pos[t] = t;
	req.body_case = SPARQ__V1__REQUEST__BODY_GATHER;
	req.gather = &g;
	g.session = sid;
	g.n = tokens;
	g.pos_off = poff;
	g.out_off = ooff;
	for (uint32_t layer = 0; layer < LAYERS; layer++)
		for (uint32_t h = 0; h < KVH; h++) {
			g.layer = layer;
			g.kv_head = h;
			int ret = raw_call(c, &req, NULL, why, sizeof(why));
			CHECK(ret == 0, "gather session %llu layer %u head %u: %d (%s)",
			      (unsigned long long)sid, layer, h, ret, why);
			for (uint32_t t = 0; t < tokens; t++)
				for (uint32_t j = 0; j < HD; j++) {
					uint16_t wk = elem(sx, layer, t, h, j, false);
					uint16_t wv = elem(sx, layer, t, h, j, true);
					uint16_t gk = out[(size_t)t * 2 * HD + j];
					uint16_t gv = out[(size_t)t * 2 * HD + HD + j];
					CHECK(gk == wk && gv == wv,
					      "session %llu layer %u head %u token %u dim %u: K %#06x V %#06x, "
					      "appended K %#06x V %#06x", (unsigned long long)sid, layer,
					      h, t, j, gk, gv, wk, wv);
				}
		}
	/* one past the parked length is not there */
	pos[0] = tokens;
	g.n = 1;
	g.layer = 0;
	g.kv_head = 0;
	CHECK(raw_call(c, &req, NULL, why, sizeof(why)) == -ERANGE,
	      "session %llu has rows past its parked length %u", (unsigned long long)sid, tokens);
}

/*
 * The child: its own session (index PARKED), prefilled and parked, then appends to it
 * and to parked session 0 (index 0, after its parked prefix) until the daemon dies.
 */
static void streamer(int ready, uint64_t p0)
{
	struct raw_client c;
	uint64_t sid;
	char why[256];
	uint32_t t;

	t_daemon_unregister(&daemon_);
	if (raw_connect(&c, daemon_.socket) || raw_hello(&c) ||
	    raw_create(&c, LAYERS, QH, KVH, HD, true, &sid))
		_exit(2);
	append_all(&c, sid, PARKED, CHILD_PREFILL);
	if (raw_session_op(&c, SPARQ__V1__REQUEST__BODY_PARK, sid, why, sizeof(why)))
		_exit(3);
	(void)!write(ready, &sid, sizeof(sid));
	for (t = 0;; t += CHUNK) {
		for (uint32_t layer = 0; layer < LAYERS; layer++) {
			if (append(&c, sid, PARKED, layer, CHILD_PREFILL + t, CHUNK) ||
			    append(&c, p0, 0, layer, parked_tokens[0] + t, CHUNK))
				_exit(0);  /* the daemon is gone: what the test wants */
		}
	}
}

int main(void)
{
	struct raw_client c;
	uint64_t pids[PARKED + 1], transient, fresh;
	uint32_t want_tokens[PARKED + 1];
	char why[256];
	int p[2], status, ret;
	pid_t child;

	t_daemon_need_own("the daemon crash test (kills and restarts sparqd)");
	t_daemon_start(&daemon_, NULL, NULL);
	ret = raw_connect(&c, daemon_.socket);
	CHECK(ret == 0 && raw_hello(&c) == 0, "connect + hello: %d", ret);
	for (int i = 0; i < PARKED; i++) {
		CHECK(raw_create(&c, LAYERS, QH, KVH, HD, true, &pids[i]) == 0, "create");
		append_all(&c, pids[i], (uint32_t)i, parked_tokens[i]);
		ret = raw_session_op(&c, SPARQ__V1__REQUEST__BODY_PARK, pids[i], why, sizeof(why));
		CHECK(ret == 0, "park: %d (%s)", ret, why);
		want_tokens[i] = parked_tokens[i];
	}
	CHECK(raw_create(&c, LAYERS, QH, KVH, HD, false, &transient) == 0, "create");
	append_all(&c, transient, PARKED + 1, 32);

	/* the append stream, and the kill in its middle */
	CHECK(pipe(p) == 0, "pipe");
	fflush(NULL);
	child = fork();
	CHECK(child >= 0, "fork: %s", strerror(errno));
	if (child == 0) {
		close(p[0]);
		streamer(p[1], pids[0]);
	}
	close(p[1]);
	CHECK(read(p[0], &pids[PARKED], sizeof(pids[PARKED])) == sizeof(pids[PARKED]),
	      "the streaming child failed before it streamed");
	close(p[0]);
	want_tokens[PARKED] = CHILD_PREFILL;
	t_daemon_sleep_ms(STREAM_MS);
	ret = t_daemon_kill(&daemon_);
	CHECK(ret == 128 + SIGKILL, "sparqd ended with %d, not by SIGKILL", ret);
	CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "the streaming child did not see the daemon go (status %#x)", status);
	raw_close(&c);
	printf("sparqd SIGKILLed %d ms into an append stream; restarting on the same data\n",
	       STREAM_MS);

	/* daemon 2 */
	t_daemon_start(&daemon_, daemon_.dir, NULL);
	ret = raw_connect(&c, daemon_.socket);
	CHECK(ret == 0 && raw_hello(&c) == 0, "connect + hello after the restart: %d", ret);
	{
		Sparq__V1__Request req = SPARQ__V1__REQUEST__INIT;
		Sparq__V1__ListSessions l = SPARQ__V1__LIST_SESSIONS__INIT;
		Sparq__V1__Response *resp;
		int found = 0;

		req.body_case = SPARQ__V1__REQUEST__BODY_LIST;
		req.list = &l;
		CHECK(raw_call(&c, &req, &resp, NULL, 0) == 0, "list");
		for (size_t i = 0; i < resp->list->n_sessions; i++) {
			const Sparq__V1__SessionInfo *s = resp->list->sessions[i];
			int k = -1;

			for (int j = 0; j <= PARKED; j++)
				if (pids[j] == s->session)
					k = j;
			CHECK(k >= 0, "session %llu listed after the crash: not one that was parked",
			      (unsigned long long)s->session);
			CHECK(s->parked && !s->open && s->persistent,
			      "session %llu: parked %d open %d persistent %d",
			      (unsigned long long)s->session, s->parked, s->open, s->persistent);
			CHECK(s->tokens == want_tokens[k], "session %llu lists %llu tokens, parked %u",
			      (unsigned long long)s->session, (unsigned long long)s->tokens,
			      want_tokens[k]);
			found++;
		}
		sparq__v1__response__free_unpacked(resp, NULL);
		CHECK(found == PARKED + 1, "%d of %d parked sessions listed", found, PARKED + 1);
	}
	for (int i = 0; i <= PARKED; i++) {
		Sparq__V1__Request req = SPARQ__V1__REQUEST__INIT;
		Sparq__V1__Resume r = SPARQ__V1__RESUME__INIT;

		r.session = pids[i];
		r.to_ram = i % 2;
		req.body_case = SPARQ__V1__REQUEST__BODY_RESUME;
		req.resume = &r;
		ret = raw_call(&c, &req, NULL, why, sizeof(why));
		CHECK(ret == 0, "resume %llu: %d (%s)", (unsigned long long)pids[i], ret, why);
		verify(&c, pids[i], (uint32_t)i, want_tokens[i]);
		printf("  session %llu (%s): %u tokens x %u layers x %u heads, bit-exact after "
		       "resume (%s)\n", (unsigned long long)pids[i],
		       i == PARKED ? "the streamer's own" : i == 0 ? "streamed into after park" :
		       "parked, idle", want_tokens[i], LAYERS, KVH, r.to_ram ? "into RAM" : "from NVMe");
	}
	ret = raw_session_op(&c, SPARQ__V1__REQUEST__BODY_RESUME, transient, why, sizeof(why));
	CHECK(ret == -ENOENT, "the non-persistent session after the crash: %d (%s)", ret, why);
	CHECK(raw_create(&c, 1, QH, KVH, HD, false, &fresh) == 0, "create after the restart");
	for (int i = 0; i <= PARKED; i++)
		CHECK(fresh != pids[i], "a new session reuses parked id %llu",
		      (unsigned long long)fresh);

	raw_close(&c);
	ret = t_daemon_stop(&daemon_);
	CHECK(ret == 0, "sparqd exited with %d", ret);
	t_daemon_cleanup(&daemon_);
	printf("test_daemon_crash: %d parked sessions survived SIGKILL bit for bit\n", PARKED + 1);
	return T_DAEMON_EXIT_PASS;
}
