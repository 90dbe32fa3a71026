/*
 * test_daemon_retire.c — a persistent session whose client leaves is parked, then its
 * streams are closed; the states a client can observe in between must agree:
 *  - while list shows the session open, its streams may still be held; once list shows
 *    it parked and not open, resume succeeds at once (it used to answer -EBUSY "session
 *    is already open" while the streams were still closing);
 *  - a resume that arrives while the retirement runs waits for it and succeeds; before
 *    the daemon has seen the hang-up the session is really open (-EBUSY, said so).
 * Each round grows the session by one token per layer, so every departure re-parks it
 * (durable writes: the window the race needs), and checks the tokens that come back.
 */
#include <errno.h>
#include <string.h>

#include "client_helpers.h"
#include "daemon_helpers.h"
#include "helpers.h"
#include "libsparq.h"

#define L 2u
#define HKV 2u
#define HQ 4u
#define D 64u
#define S0 512u
#define ROUNDS 120u

static void append(struct sparq_client *c, uint64_t id, uint32_t n, uint32_t seed)
{
	uint16_t *k = t_alloc((size_t)n * HKV * D * 2), *v = t_alloc((size_t)n * HKV * D * 2);
	struct t_rng r = { 0xbead ^ seed };

	for (size_t i = 0; i < (size_t)n * HKV * D; i++) {
		k[i] = sparq_f32_to_f16((float)t_normal(&r));
		v[i] = sparq_f32_to_f16((float)t_normal(&r));
	}
	for (uint32_t l = 0; l < L; l++)
		T_CHECK_OK(c, sparq_append(c, id, l, n, k, v));
	free(k);
	free(v);
}

int main(void)
{
	const char *args[] = { "--log-level", "debug", NULL };
	struct sparq_session_opts o = {
		.geometry = { .n_layers = L, .n_q_heads = HQ, .n_kv_heads = HKV, .head_dim = D,
			      .dtype = SPARQ_CLIENT_F16 },
		.defaults = { .ratio = 8, .l = -1 },
		.persistent = true,
		.label = "retire",
	};
	struct sparq_session_info list[8];
	const struct sparq_session_info *info;
	struct t_daemon d = { 0 };
	struct sparq_client *watch, *c;
	unsigned open_seen = 0, busy_before = 0;
	uint64_t id, tokens = S0;
	uint32_t n;
	int ret;

	t_daemon_need_own("the retirement race test");
	t_daemon_start(&d, NULL, args);
	T_CHECK_OK(NULL, sparq_connect(d.socket, "retire-watch", 0, &watch));
	T_CHECK_OK(NULL, sparq_connect(d.socket, "retire", 0, &c));
	T_CHECK_OK(c, sparq_session_create(c, &o, &id));
	append(c, id, S0, 0);
	for (uint32_t round = 0; round < ROUNDS; round++) {
		append(c, id, 1, round + 1);
		tokens++;
		sparq_disconnect(c);
		if (round % 2 == 0) {
			/* watch list: open (streams held) until it says parked and closed */
			for (uint64_t end = t_daemon_now_ms() + 30000;; open_seen++) {
				T_CHECK_OK(watch, sparq_session_list(watch, list, 8, &n));
				info = t_session_find(list, n < 8 ? n : 8, id);
				T_CHECK(info, "round %u: the session is not listed", round);
				if (!info->open)
					break;
				T_CHECK(t_daemon_now_ms() < end, "round %u: still open after 30 s", round);
			}
			T_CHECK(info->parked && info->tokens == tokens,
				"round %u: listed closed but parked %d with %llu tokens (want %llu)",
				round, info->parked, (unsigned long long)info->tokens,
				(unsigned long long)tokens);
			T_CHECK_OK(NULL, sparq_connect(d.socket, "retire", 0, &c));
			ret = sparq_session_resume(c, id, round % 4 == 0);
			T_CHECK(ret == 0, "round %u: resume right after list showed the session "
				"parked and closed: %d (%s)", round, ret, sparq_client_error(c));
		} else {
			/* resume at once: only "already open" (the daemon has not seen the
			 * hang-up yet) may precede success, never a retirement in progress */
			T_CHECK_OK(NULL, sparq_connect(d.socket, "retire", 0, &c));
			for (uint64_t end = t_daemon_now_ms() + 30000;; busy_before++) {
				ret = sparq_session_resume(c, id, round % 4 == 1);
				if (ret != -EBUSY)
					break;
				T_CHECK(strstr(sparq_client_error(c), "already open"),
					"round %u: resume -EBUSY: %s", round, sparq_client_error(c));
				T_CHECK(t_daemon_now_ms() < end, "round %u: busy for 30 s", round);
			}
			T_CHECK(ret == 0, "round %u: resume: %d (%s)", round, ret,
				sparq_client_error(c));
		}
		T_CHECK_OK(c, sparq_session_list(c, list, 8, &n));
		info = t_session_find(list, n < 8 ? n : 8, id);
		T_CHECK(info && info->open && info->parked && info->tokens == tokens,
			"round %u: resumed session listed wrong (tokens %llu, want %llu)", round,
			info ? (unsigned long long)info->tokens : 0ull, (unsigned long long)tokens);
	}
	T_CHECK_OK(c, sparq_session_close(c, id));
	sparq_disconnect(c);
	sparq_disconnect(watch);
	printf("%u rounds: list showed the departing session open %u times, resume met it "
	       "still open %u times and waited for its retirement %u times\n", ROUNDS, open_seen,
	       busy_before, t_daemon_log_count(&d, "waiting for its retirement"));
	T_CHECK(t_daemon_stop(&d) == 0, "SIGTERM did not end in exit 0");
	t_daemon_cleanup(&d);
	printf("PASS\n");
	return T_EXIT_PASS;
}
