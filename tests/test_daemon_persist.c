/*
 * test_daemon_persist.c — sessions across a restart (issue 4: "SIGTERM: park sessions
 * marked persistent"; "parked sessions survive a daemon restart"):
 *  - at SIGTERM a persistent session is parked, a plain one is freed, and a persistent
 *    session with empty streams is reported (not parkable) without spoiling the exit 0;
 *  - after a restart on the same data directory the parked session is listed (not
 *    open), is refused until resumed, and once resumed gives the same attention output
 *    bit for bit and the same rows as before the restart;
 *  - a resumed session that grows is parked again when its client disconnects, and
 *    resumes (into RAM this time) with the new token;
 *  - grown once more, it is re-parked at SIGTERM in place of its parked copy (one
 *    manifest entry, nothing discarded at the restart) and resumes with the same
 *    attention output bit for bit;
 *  - close drops the parked copy; new ids never reuse a parked one.
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <string.h>

#include "client_helpers.h"
#include "daemon_helpers.h"
#include "helpers.h"
#include "libsparq.h"

#define L 2u
#define HQ 4u
#define HKV 2u
#define D 64u
#define S0 700u

static uint16_t elem(uint32_t layer, uint32_t pos, uint32_t h, uint32_t i, bool is_v)
{
	struct t_rng r = { 0x5eed ^ ((uint64_t)layer << 56) ^ ((uint64_t)pos << 20) ^
			   ((uint64_t)h << 12) ^ ((uint64_t)i << 1) ^ is_v };
	t_next(&r);
	return sparq_f32_to_f16((float)t_normal(&r));
}

static void append(struct sparq_client *c, uint64_t id, uint32_t layer, uint32_t pos, uint32_t n)
{
	uint16_t *k = t_alloc((size_t)n * HKV * D * 2), *v = t_alloc((size_t)n * HKV * D * 2);

	for (uint32_t t = 0; t < n; t++)
		for (uint32_t h = 0; h < HKV; h++)
			for (uint32_t i = 0; i < D; i++) {
				size_t at = ((size_t)t * HKV + h) * D + i;
				k[at] = elem(layer, pos + t, h, i, false);
				v[at] = elem(layer, pos + t, h, i, true);
			}
	T_CHECK_OK(c, sparq_append(c, id, layer, n, k, v));
	free(k);
	free(v);
}

/* Every row of every stream equals what was appended. */
static void check_rows(struct sparq_client *c, uint64_t id, uint32_t n)
{
	uint32_t *pos = t_alloc((size_t)n * 4);
	uint16_t *out = t_alloc((size_t)n * 2 * D * 2);

	for (uint32_t j = 0; j < n; j++)
		pos[j] = j;
	for (uint32_t l = 0; l < L; l++)
		for (uint32_t h = 0; h < HKV; h++) {
			T_CHECK_OK(c, sparq_gather(c, id, l, h, pos, n, out));
			for (uint32_t j = 0; j < n; j++)
				for (uint32_t i = 0; i < D; i++)
					T_CHECK(out[(size_t)j * 2 * D + i] == elem(l, j, h, i, false) &&
						out[(size_t)j * 2 * D + D + i] == elem(l, j, h, i, true),
						"layer %u head %u row %u differs", l, h, j);
		}
	free(pos);
	free(out);
}

/* Entries of dir whose name ends with suffix. */
static unsigned count_names(const char *dir, const char *suffix)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	unsigned n = 0;

	T_CHECK(d, "opendir %s: %s", dir, strerror(errno));
	while ((de = readdir(d))) {
		size_t a = strlen(de->d_name), b = strlen(suffix);
		n += a > b && strcmp(de->d_name + a - b, suffix) == 0;
	}
	closedir(d);
	return n;
}

static void attend(struct sparq_client *c, uint64_t id, float *y, float *alpha)
{
	static float q[HQ * D];
	struct t_rng r = { 99 };
	struct sparq_attend_req req = { .session = id, .q = q, .y = y, .alpha = alpha };
	int32_t bad;

	for (uint32_t i = 0; i < HQ * D; i++)
		q[i] = (float)t_normal(&r);
	T_CHECK_OK(c, sparq_attend(c, 1, &req, 1, &bad));
}

int main(void)
{
	struct sparq_session_opts o = {
		.geometry = { .n_layers = L, .n_q_heads = HQ, .n_kv_heads = HKV, .head_dim = D,
			      .dtype = SPARQ_CLIENT_F16 },
		.defaults = { .ratio = 8, .l = -1 },
		.persistent = true,
		.label = "keep",
	};
	static float y0[HQ * D], y1[HQ * D], a0[HQ], a1[HQ];
	struct sparq_session_info list[16];
	const struct sparq_session_info *info;
	struct t_daemon d = { 0 };
	struct sparq_client *c;
	uint64_t keep, plain, empty, fresh;
	uint32_t n;
	char what[128];
	int ret;

	t_daemon_need_own("the persistence test");
	t_daemon_start(&d, NULL, NULL);
	T_CHECK_OK(NULL, sparq_connect(d.socket, "persist", 0, &c));
	T_CHECK_OK(c, sparq_session_create(c, &o, &keep));
	o.label = "empty";
	T_CHECK_OK(c, sparq_session_create(c, &o, &empty));
	o.persistent = false;
	o.label = "plain";
	T_CHECK_OK(c, sparq_session_create(c, &o, &plain));
	for (uint32_t l = 0; l < L; l++) {
		append(c, keep, l, 0, S0 - 1);
		append(c, keep, l, S0 - 1, 1);
		append(c, plain, l, 0, 10);
	}
	attend(c, keep, y0, a0);
	check_rows(c, keep, S0);
	/* an explicit park works once; twice is -EEXIST; parking the empty one is refused */
	T_CHECK_OK(c, sparq_session_park(c, plain));
	ret = sparq_session_park(c, plain);
	T_CHECK(ret == -EEXIST, "second park: %d", ret);
	ret = sparq_session_park(c, empty);
	T_CHECK(ret == -EINVAL && strstr(sparq_client_error(c), "empty"),
		"park of an empty session: %d %s", ret, sparq_client_error(c));
	T_CHECK_OK(c, sparq_session_drop(c, plain));

	/* SIGTERM with the client still connected: keep parked, exit 0 */
	T_CHECK(t_daemon_stop(&d) == 0, "SIGTERM did not end in exit 0");
	snprintf(what, sizeof(what), "session %llu parked", (unsigned long long)keep);
	T_CHECK(t_daemon_log_count(&d, what), "log lacks '%s'", what);
	snprintf(what, sizeof(what), "session %llu not parked", (unsigned long long)empty);
	T_CHECK(t_daemon_log_count(&d, what), "log lacks '%s'", what);
	sparq_disconnect(c);

	/* restart: listed as parked, unusable until resumed, then identical */
	t_daemon_start(&d, d.dir, NULL);
	T_CHECK_OK(NULL, sparq_connect(d.socket, "persist", 0, &c));
	T_CHECK_OK(c, sparq_session_list(c, list, 16, &n));
	info = t_session_find(list, n < 16 ? n : 16, keep);
	T_CHECK(info && info->parked && !info->open && info->persistent && info->tokens == S0 &&
			strcmp(info->label, "keep") == 0 && info->geometry.n_layers == L &&
			info->geometry.n_q_heads == HQ && info->geometry.head_dim == D &&
			info->owner_uid == getuid(),
		"parked session listed wrong (found %d)", info != NULL);
	T_CHECK(!t_session_find(list, n < 16 ? n : 16, plain) &&
			!t_session_find(list, n < 16 ? n : 16, empty),
		"a session that was not parked came back");
	{
		int32_t bad;
		struct sparq_attend_req req = { .session = keep, .q = y1, .y = y1 };
		memset(y1, 0, sizeof(y1));
		ret = sparq_attend(c, 1, &req, 1, &bad);
		T_CHECK(ret == -ENOENT, "attend on a parked, unresumed session: %d", ret);
	}
	T_CHECK_OK(c, sparq_session_resume(c, keep, false));
	ret = sparq_session_resume(c, keep, false);
	T_CHECK(ret == -EBUSY, "second resume: %d", ret);
	attend(c, keep, y1, a1);
	T_CHECK(memcmp(y0, y1, sizeof(y0)) == 0 && memcmp(a0, a1, sizeof(a0)) == 0,
		"attention after resume differs from before the restart");
	check_rows(c, keep, S0);
	T_CHECK_OK(c, sparq_session_create(c, &o, &fresh));
	T_CHECK(fresh > keep, "new id %llu not above the parked %llu", (unsigned long long)fresh,
		(unsigned long long)keep);

	/* grow it, disconnect: parked again with the new token; resume into RAM */
	for (uint32_t l = 0; l < L; l++)
		append(c, keep, l, S0, 1);
	sparq_disconnect(c);
	T_CHECK_OK(NULL, sparq_connect(d.socket, "persist", 0, &c));
	for (int tries = 0;; tries++) {
		/* the departure is retired behind the last request, asynchronously */
		T_CHECK_OK(c, sparq_session_list(c, list, 16, &n));
		info = t_session_find(list, n < 16 ? n : 16, keep);
		if ((info && !info->open && info->tokens == S0 + 1) || tries == 500)
			break;
		t_daemon_sleep_ms(10);
	}
	T_CHECK(info && info->parked && !info->open && info->tokens == S0 + 1,
		"after the disconnect: found %d open %d tokens %llu", info != NULL,
		info ? info->open : 0, info ? (unsigned long long)info->tokens : 0ull);
	T_CHECK(!t_session_find(list, n < 16 ? n : 16, fresh), "a plain session outlived its client");
	T_CHECK_OK(c, sparq_session_resume(c, keep, true));
	check_rows(c, keep, S0 + 1);

	/* grow again, SIGTERM: re-parked over the old copy; after a restart, identical */
	for (uint32_t l = 0; l < L; l++)
		append(c, keep, l, S0 + 1, 1);
	attend(c, keep, y0, a0);
	T_CHECK(t_daemon_stop(&d) == 0, "SIGTERM after the growth did not end in exit 0");
	sparq_disconnect(c);
	snprintf(what, sizeof(what), "shutdown: session %llu parked (%u records)",
		 (unsigned long long)keep, L * HKV * (S0 + 2));
	T_CHECK(t_daemon_log_count(&d, what), "log lacks '%s'", what);
	T_CHECK(count_names(d.data_dir, ".man") == 1,
		"one manifest entry for the re-parked session, found %u",
		count_names(d.data_dir, ".man"));
	unsigned discarded = t_daemon_log_count(&d, "discarding");
	t_daemon_start(&d, d.dir, NULL);
	T_CHECK_OK(NULL, sparq_connect(d.socket, "persist", 0, &c));
	T_CHECK(t_daemon_log_count(&d, "discarding") == discarded,
		"the restart discarded a manifest entry");
	T_CHECK_OK(c, sparq_session_resume(c, keep, false));
	attend(c, keep, y1, a1);
	T_CHECK(memcmp(y0, y1, sizeof(y0)) == 0 && memcmp(a0, a1, sizeof(a0)) == 0,
		"attention after the re-park and restart differs from before");
	check_rows(c, keep, S0 + 2);

	/* close drops the parked copy too */
	T_CHECK_OK(c, sparq_session_close(c, keep));
	ret = sparq_session_resume(c, keep, false);
	T_CHECK(ret == -ENOENT, "resume after close: %d", ret);
	T_CHECK_OK(c, sparq_session_list(c, list, 16, &n));
	T_CHECK(!t_session_find(list, n < 16 ? n : 16, keep), "closed session still listed");
	sparq_disconnect(c);
	T_CHECK(t_daemon_stop(&d) == 0, "second SIGTERM did not end in exit 0");
	t_daemon_cleanup(&d);
	printf("PASS\n");
	return T_EXIT_PASS;
}
