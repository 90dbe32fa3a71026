/*
 * test_client_roundtrip.c — every libsparq call through a real sparqd (issue 4,
 * "Tests"): connect, ping, create, append in bulk and one token, attend batched over
 * two sessions, select, gather, stats, list, park, a persistent session parked by a
 * disconnect then resumed and dropped, close; and the errors a user meets: no daemon,
 * unknown sessions, bad layers, NaN, a request too large, a split append, a daemon
 * that dies (-EPIPE, not a hang).
 *
 * Gathered rows are compared with what was appended, so a round trip that loses or
 * reorders data fails here, not only in the bit-exactness test.
 */
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "daemon_helpers.h"
#include "helpers.h"
#include "libsparq.h"

#define L 2u     /* layers */
#define HQ 8u    /* query heads */
#define HKV 2u   /* KV heads */
#define D 64u    /* head dimension */
#define S0 1000u /* prefill tokens */

#define CHECK_OK(call)                                                                  \
	do {                                                                            \
		int r_ = (call);                                                        \
		T_CHECK(r_ == 0, "%s = %d (%s): %s", #call, r_, strerror(-r_),          \
			sparq_client_error(c));                                         \
	} while (0)

/* The K or V element of (layer, position, kv head, channel): reproducible anywhere. */
static uint16_t elem(uint64_t seed, uint32_t layer, uint32_t pos, uint32_t h, uint32_t i,
		     bool is_v)
{
	struct t_rng r = { seed ^ ((uint64_t)layer << 56) ^ ((uint64_t)pos << 20) ^
			   ((uint64_t)h << 12) ^ ((uint64_t)i << 1) ^ is_v };
	t_next(&r);
	return sparq_f32_to_f16((float)(t_normal(&r) * (is_v ? 1.0 : 0.5)));
}

/* K and V of positions [pos, pos + n) of one layer: [n][HKV][D]. */
static void fill(uint64_t seed, uint32_t layer, uint32_t pos, uint32_t n, uint16_t *k,
		 uint16_t *v)
{
	for (uint32_t t = 0; t < n; t++)
		for (uint32_t h = 0; h < HKV; h++)
			for (uint32_t i = 0; i < D; i++) {
				size_t at = ((size_t)t * HKV + h) * D + i;
				k[at] = elem(seed, layer, pos + t, h, i, false);
				v[at] = elem(seed, layer, pos + t, h, i, true);
			}
}

static void append_seeded(struct sparq_client *c, uint64_t id, uint64_t seed, uint32_t layer,
			  uint32_t pos, uint32_t n)
{
	uint16_t *k = t_alloc((size_t)n * HKV * D * 2), *v = t_alloc((size_t)n * HKV * D * 2);

	fill(seed, layer, pos, n, k, v);
	CHECK_OK(sparq_append(c, id, layer, n, k, v));
	free(k);
	free(v);
}

/* Gathers every position in [0, n) of every stream and compares with the seeded data. */
static void check_contents(struct sparq_client *c, uint64_t id, uint64_t seed, uint32_t n)
{
	uint32_t *pos = t_alloc((size_t)n * 4);
	uint16_t *out = t_alloc((size_t)n * 2 * D * 2);

	for (uint32_t j = 0; j < n; j++)
		pos[j] = n - 1 - j; /* any order: descending here */
	for (uint32_t l = 0; l < L; l++)
		for (uint32_t h = 0; h < HKV; h++) {
			CHECK_OK(sparq_gather(c, id, l, h, pos, n, out));
			for (uint32_t j = 0; j < n; j++)
				for (uint32_t i = 0; i < D; i++) {
					T_CHECK(out[(size_t)j * 2 * D + i] ==
							elem(seed, l, pos[j], h, i, false),
						"session %llu layer %u head %u pos %u: K differs",
						(unsigned long long)id, l, h, pos[j]);
					T_CHECK(out[(size_t)j * 2 * D + D + i] ==
							elem(seed, l, pos[j], h, i, true),
						"session %llu layer %u head %u pos %u: V differs",
						(unsigned long long)id, l, h, pos[j]);
				}
		}
	free(pos);
	free(out);
}

static const struct sparq_session_info *find(const struct sparq_session_info *list, uint32_t n,
					     uint64_t id)
{
	for (uint32_t i = 0; i < n; i++)
		if (list[i].id == id)
			return &list[i];
	return NULL;
}

static struct sparq_session_opts opts(bool persistent, const char *label)
{
	return (struct sparq_session_opts){
		.geometry = { .n_layers = L, .n_q_heads = HQ, .n_kv_heads = HKV, .head_dim = D,
			      .dtype = SPARQ_CLIENT_F16 },
		.defaults = { .ratio = 8, .l = -1 },
		.persistent = persistent,
		.label = label,
	};
}

/*
 * Waits (up to 2 s) until every thread of pid is stopped. SIGSTOP stops a process's
 * threads one after another, so a worker can still answer a request just after kill()
 * returns.
 */
static bool wait_all_stopped(pid_t pid)
{
	char path[64], line[512];

	for (int tries = 0; tries < 2000; tries++) {
		bool all = true;
		struct dirent *e;
		DIR *dir;

		snprintf(path, sizeof(path), "/proc/%d/task", (int)pid);
		dir = opendir(path);
		if (!dir)
			return false;
		while (all && (e = readdir(dir))) {
			FILE *f;
			char *state;

			if (e->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "/proc/%d/task/%.20s/stat", (int)pid, e->d_name);
			f = fopen(path, "r");
			if (!f)
				continue;  /* the thread is gone */
			state = fgets(line, sizeof(line), f) ? strrchr(line, ')') : NULL;
			all = state && (state[2] == 'T' || state[2] == 't');
			fclose(f);
		}
		closedir(dir);
		if (all)
			return true;
		usleep(1000);
	}
	return false;
}

static void test_no_daemon(const char *dir)
{
	struct sparq_client *c = NULL;
	char path[4200];
	int ret;

	snprintf(path, sizeof(path), "%s/nobody-listens.sock", dir);
	ret = sparq_connect(path, "t", 0, &c);
	T_CHECK(ret == -ENOENT && c == NULL, "connect to a missing socket: %d", ret);

	/* a socket file nobody accepts on: -ECONNREFUSED */
	int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	T_CHECK((size_t)snprintf(path, sizeof(path), "%s/dead.sock", dir) < sizeof(sa.sun_path),
		"socket path too long");
	memcpy(sa.sun_path, path, strlen(path) + 1);
	T_CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "bind");
	close(fd);
	ret = sparq_connect(sa.sun_path, "t", 0, &c);
	T_CHECK(ret == -ECONNREFUSED, "connect to a dead socket: %d", ret);
	unlink(sa.sun_path);

	memset(path, 'x', 200);
	path[200] = '\0';
	ret = sparq_connect(path, "t", 0, &c);
	T_CHECK(ret == -ENAMETOOLONG, "connect with a 200-byte path: %d", ret);
	T_CHECK(sparq_connect(NULL, "t", 0, NULL) == -EINVAL, "connect without out");

	/* the documented default: $SPARQD_SOCKET */
	setenv("SPARQD_SOCKET", path, 1);
	T_CHECK(sparq_connect(NULL, "t", 0, &c) == -ENAMETOOLONG, "$SPARQD_SOCKET not used");
	unsetenv("SPARQD_SOCKET");
}

int main(void)
{
	struct t_daemon d = { 0 };
	struct sparq_client *c, *c2;
	struct sparq_session_info list[64];
	struct sparq_stats st;
	uint64_t a, b, p;
	uint32_t n;
	int ret;

	t_daemon_start(&d, NULL, NULL);
	if (!d.external)
		test_no_daemon(d.dir);

	ret = sparq_connect(d.socket, "roundtrip", 0, &c);
	T_CHECK(ret == 0, "connect %s: %d", d.socket, ret);
	T_CHECK(strcmp(sparq_client_backend(c), "cpu") == 0 || d.external,
		"backend '%s', the test daemon runs cpu", sparq_client_backend(c));
	CHECK_OK(sparq_ping(c));

	/* create: two sessions, one labelled */
	struct sparq_session_opts o = opts(false, "roundtrip-a");
	CHECK_OK(sparq_session_create(c, &o, &a));
	o = opts(false, NULL);
	CHECK_OK(sparq_session_create(c, &o, &b));
	T_CHECK(a != b, "two sessions, one id %llu", (unsigned long long)a);

	/* append: bulk prefill on every layer, then one decode token */
	for (uint32_t l = 0; l < L; l++) {
		append_seeded(c, a, 1, l, 0, S0);
		append_seeded(c, b, 2, l, 0, S0 / 2);
		append_seeded(c, a, 1, l, S0, 1);
	}
	CHECK_OK(sparq_session_list(c, list, 64, &n));
	const struct sparq_session_info *ia = find(list, n < 64 ? n : 64, a);
	const struct sparq_session_info *ib = find(list, n < 64 ? n : 64, b);
	T_CHECK(ia && ib, "list lacks a session (%u listed)", n);
	T_CHECK(ia->tokens == S0 + 1 && ib->tokens == S0 / 2, "tokens %llu, %llu",
		(unsigned long long)ia->tokens, (unsigned long long)ib->tokens);
	T_CHECK(strcmp(ia->label, "roundtrip-a") == 0 && ia->open && !ia->parked &&
			!ia->persistent && ia->owner_uid == getuid() &&
			ia->owner_pid == (uint32_t)getpid(),
		"session info: label '%s' open %d parked %d uid %u pid %u", ia->label, ia->open,
		ia->parked, ia->owner_uid, ia->owner_pid);
	T_CHECK(ia->geometry.n_layers == L && ia->geometry.n_q_heads == HQ &&
			ia->geometry.n_kv_heads == HKV && ia->geometry.head_dim == D &&
			ia->geometry.dtype == SPARQ_CLIENT_F16,
		"geometry listed differs");
	check_contents(c, a, 1, S0); /* the prefill, then the token: */
	{
		uint32_t last = S0;
		uint16_t out[2 * D];
		CHECK_OK(sparq_gather(c, a, 1, 1, &last, 1, out));
		T_CHECK(out[5] == elem(1, 1, S0, 1, 5, false) && out[D + 7] == elem(1, 1, S0, 1, 7, true),
			"the one-token append reads back different");
	}

	/* attend: one request for both sessions, every query head, SparQ and dense */
	static float q[2][HQ * D], y[2][HQ * D], alpha[2][HQ], yd[HQ * D];
	struct t_rng rng = { 7 };
	for (uint32_t s = 0; s < 2; s++)
		for (uint32_t i = 0; i < HQ * D; i++)
			q[s][i] = (float)t_normal(&rng);
	struct sparq_attn_params dense = { .dense = true, .l = -1 };
	struct sparq_attend_req reqs[3] = {
		{ .session = a, .q = q[0], .y = y[0], .alpha = alpha[0] },
		{ .session = b, .q = q[1], .y = y[1], .alpha = alpha[1] },
		{ .session = a, .q = q[0], .y = yd, .params = &dense },
	};
	int32_t bad = 5;
	for (uint32_t i = 0; i < HQ * D; i++)
		y[0][i] = y[1][i] = yd[i] = NAN;
	ret = sparq_attend(c, 1, reqs, 3, &bad);
	T_CHECK(ret == 0 && bad == -1, "attend: %d bad %d: %s", ret, bad, sparq_client_error(c));
	double err = 0, ref = 0;
	for (uint32_t i = 0; i < HQ * D; i++) {
		T_CHECK(isfinite(y[0][i]) && isfinite(y[1][i]) && isfinite(yd[i]),
			"y[%u] not written", i);
		err += (y[0][i] - yd[i]) * (double)(y[0][i] - yd[i]);
		ref += (double)yd[i] * yd[i];
	}
	/* SparQ reads 1/8 of the rows: it differs from dense */
	T_CHECK(err > 0 && ref > 0, "SparQ equals dense on flat attention");
	/* dense through the daemon is exact attention over what we appended */
	double derr = 0, dref = 0;
	for (uint32_t hq = 0; hq < HQ; hq++) {
		const uint32_t h = hq / (HQ / HKV), S = S0 + 1;
		double *sc = t_alloc(S * sizeof(double)), mx = -INFINITY, sum = 0;
		for (uint32_t j = 0; j < S; j++) {
			double dot = 0;
			for (uint32_t i = 0; i < D; i++)
				dot += (double)q[0][hq * D + i] * sparq_f16_to_f32(elem(1, 1, j, h, i, false));
			sc[j] = dot / sqrt((double)D);
			mx = sc[j] > mx ? sc[j] : mx;
		}
		for (uint32_t j = 0; j < S; j++)
			sum += (sc[j] = exp(sc[j] - mx));
		for (uint32_t i = 0; i < D; i++) {
			double want = 0;
			for (uint32_t j = 0; j < S; j++)
				want += sc[j] / sum * sparq_f16_to_f32(elem(1, 1, j, h, i, true));
			derr += (yd[hq * D + i] - want) * (yd[hq * D + i] - want);
			dref += want * want;
		}
		free(sc);
	}
	T_CHECK(sqrt(derr / dref) < 1e-4, "dense through the daemon vs exact attention: relative "
		"error %.2e", sqrt(derr / dref));
	for (uint32_t h = 0; h < HQ; h++)
		T_CHECK(alpha[0][h] > 0 && alpha[0][h] <= 1.0f, "alpha[%u] = %g", h, alpha[0][h]);

	/* select: sorted positions per KV head, within the stream, the current token kept */
	uint32_t sel[HKV][512], n_sel[HKV];
	float salpha[HQ];
	CHECK_OK(sparq_select(c, a, 0, q[0], NULL, &sel[0][0], 512, n_sel, salpha));
	for (uint32_t h = 0; h < HKV; h++) {
		T_CHECK(n_sel[h] >= 128 && n_sel[h] <= 512, "n_sel[%u] = %u", h, n_sel[h]);
		for (uint32_t j = 1; j < n_sel[h]; j++)
			T_CHECK(sel[h][j] > sel[h][j - 1], "selection not ascending");
		T_CHECK(sel[h][n_sel[h] - 1] == S0, "the current token is not selected");
	}
	ret = sparq_select(c, a, 0, q[0], NULL, &sel[0][0], 4, n_sel, NULL);
	T_CHECK(ret == -EINVAL, "select with sel_cap 4 < k: %d", ret);

	/* stats: the daemon counted what we did */
	CHECK_OK(sparq_stats_get(c, &st));
	T_CHECK(st.sessions >= 2 && st.clients >= 1 && st.n_ops > 0 && st.uptime_ns > 0,
		"stats: %u sessions %u clients %u ops", st.sessions, st.clients, st.n_ops);
	bool counted = false;
	for (uint32_t i = 0; i < st.n_ops; i++)
		counted |= strcmp(st.ops[i].op, "attend") == 0 && st.ops[i].count >= 1;
	T_CHECK(counted, "stats count no attend");
	T_CHECK(strcmp(st.backend, sparq_client_backend(c)) == 0, "stats backend %s", st.backend);

	/* errors: an unknown session, a bad layer, NaN, a bad entry of a batch */
	const uint64_t nobody = 0x7fffffffffffull;
	uint16_t k1[HKV * D] = { 0 }, v1[HKV * D] = { 0 };
	T_CHECK(sparq_append(c, nobody, 0, 1, k1, v1) == -ENOENT, "append to no session");
	T_CHECK(sparq_session_close(c, nobody) == -ENOENT, "close no session");
	T_CHECK(sparq_session_park(c, nobody) == -ENOENT, "park no session");
	T_CHECK(sparq_session_resume(c, nobody, false) == -ENOENT, "resume no session");
	T_CHECK(sparq_append(c, a, L, 1, k1, v1) == -EINVAL, "append to layer %u", L);
	T_CHECK(sparq_append(c, a, 0, 0, k1, v1) == -EINVAL, "append of 0 tokens");
	T_CHECK(sparq_append(c, a, 0, 1, NULL, v1) == -EINVAL, "append without k");
	k1[3] = 0x7e00; /* fp16 NaN */
	ret = sparq_append(c, a, 0, 1, k1, v1);
	T_CHECK(ret == -EINVAL && strlen(sparq_client_error(c)) > 0, "append of NaN: %d", ret);
	reqs[1].session = nobody;
	ret = sparq_attend(c, 0, reqs, 2, &bad);
	T_CHECK(ret == -ENOENT && bad == 1, "attend naming no session: %d, bad %d", ret, bad);
	reqs[1].session = b;
	q[1][9] = NAN;
	ret = sparq_attend(c, 0, reqs, 2, &bad);
	T_CHECK(ret == -EINVAL && bad == 1, "attend with NaN in q: %d, bad %d (%s)", ret, bad,
		sparq_client_error(c));
	q[1][9] = 0;
	ret = sparq_attend(c, L, reqs, 2, &bad);
	T_CHECK(ret == -EINVAL, "attend layer %u: %d", L, ret);
	T_CHECK(sparq_gather(c, a, 0, HKV, (uint32_t[]){ 0 }, 1, (uint16_t[2 * D]){ 0 }) == -EINVAL,
		"gather of KV head %u", HKV);
	ret = sparq_gather(c, a, 0, 0, (uint32_t[]){ S0 + 1 }, 1, (uint16_t[2 * D]){ 0 });
	T_CHECK(ret == -ERANGE || ret == -EINVAL, "gather past the end: %d", ret);
	CHECK_OK(sparq_session_list(c, list, 64, &n));
	T_CHECK(find(list, n, a)->tokens == S0 + 1, "a refused append changed the length");
	CHECK_OK(sparq_ping(c)); /* and the connection still serves */

	/* park: durable, still open; twice is -EEXIST; close frees both copies */
	CHECK_OK(sparq_session_park(c, a));
	ret = sparq_session_park(c, a);
	T_CHECK(ret == -EEXIST, "second park: %d", ret);
	CHECK_OK(sparq_session_list(c, list, 64, &n));
	T_CHECK(find(list, n, a)->parked && find(list, n, a)->open, "parked session not listed so");
	CHECK_OK(sparq_attend(c, 0, reqs, 1, &bad)); /* usable while parked */
	CHECK_OK(sparq_session_close(c, a));
	CHECK_OK(sparq_session_list(c, list, 64, &n));
	T_CHECK(!find(list, n, a), "closed session still listed");
	T_CHECK(sparq_session_close(c, a) == -ENOENT, "second close");

	/* a persistent session outlives its client: parked at disconnect, resumed later */
	ret = sparq_connect(d.socket, "roundtrip-2", 0, &c2);
	T_CHECK(ret == 0, "second connect: %d", ret);
	o = opts(true, "kept");
	ret = sparq_session_create(c2, &o, &p);
	T_CHECK(ret == 0, "create persistent: %d %s", ret, sparq_client_error(c2));
	for (uint32_t l = 0; l < L; l++) {
		uint16_t *k = t_alloc((size_t)300 * HKV * D * 2), *v = t_alloc((size_t)300 * HKV * D * 2);
		fill(3, l, 0, 300, k, v);
		T_CHECK(sparq_append(c2, p, l, 300, k, v) == 0, "append: %s", sparq_client_error(c2));
		free(k);
		free(v);
	}
	/* the other handle (same uid) sees it */
	CHECK_OK(sparq_session_list(c, list, 64, &n));
	T_CHECK(find(list, n, p) && find(list, n, p)->persistent, "persistent session not listed");
	sparq_disconnect(c2);
	/* the daemon parks it when it sees the hang-up; give it a bounded while */
	const struct sparq_session_info *ip = NULL;
	for (int i = 0; i < 2000; i++) {
		CHECK_OK(sparq_session_list(c, list, 64, &n));
		ip = find(list, n, p);
		if (ip && ip->parked && !ip->open)
			break;
		t_daemon_sleep_ms(5);
	}
	T_CHECK(ip && ip->parked && !ip->open && ip->tokens == 300,
		"after its client left the persistent session is %s", ip ? "not parked+closed" : "gone");
	ret = sparq_attend(c, 0, &(struct sparq_attend_req){ .session = p, .q = q[0], .y = y[0] }, 1,
			   &bad);
	T_CHECK(ret != 0, "attend on a parked, closed session succeeded");
	/* listed closed only once its streams are closed: resume goes through at once */
	ret = sparq_session_resume(c, p, true);
	T_CHECK(ret == 0, "resume: %d (%s)", ret, sparq_client_error(c));
	check_contents(c, p, 3, 300);
	CHECK_OK(sparq_attend(c, 0, &(struct sparq_attend_req){ .session = p, .q = q[0], .y = y[0] },
			      1, &bad));
	CHECK_OK(sparq_session_drop(c, p));
	CHECK_OK(sparq_session_list(c, list, 64, &n));
	T_CHECK(find(list, n, p) && !find(list, n, p)->parked && find(list, n, p)->open,
		"dropped session: parked copy gone, streams open");
	CHECK_OK(sparq_session_close(c, p));
	CHECK_OK(sparq_session_close(c, b));

	/* a small shared area: a large append is split, a large attend refused */
	struct sparq_client *cs;
	ret = sparq_connect(d.socket, "roundtrip-small", 1u << 20, &cs);
	T_CHECK(ret == 0, "connect with a 1 MiB area: %d", ret);
	o = opts(false, NULL);
	T_CHECK(sparq_session_create(cs, &o, &p) == 0, "create");
	{
		const uint32_t big = 5000; /* 2.5 MiB of K and V per layer */
		uint16_t *k = t_alloc((size_t)big * HKV * D * 2), *v = t_alloc((size_t)big * HKV * D * 2);
		for (uint32_t l = 0; l < L; l++) {
			fill(4, l, 0, big, k, v);
			T_CHECK(sparq_append(cs, p, l, big, k, v) == 0, "split append: %s",
				sparq_client_error(cs));
		}
		/* NaN at the very end: refused whole, nothing of it appended */
		k[(size_t)big * HKV * D - 1] = 0x7c00; /* +Inf */
		ret = sparq_append(cs, p, 0, big, k, v);
		T_CHECK(ret == -EINVAL, "split append with Inf: %d", ret);
		T_CHECK(sparq_session_list(cs, list, 64, &n) == 0 && find(list, n, p)->tokens == big,
			"a refused split append changed the length");
		check_contents(cs, p, 4, big);
		free(k);
		free(v);

		/* 1024 sequences of 32 heads x 128 of q and y: far more than 1 MiB */
		struct sparq_geometry g = { 1, 64, 1, 1024, SPARQ_CLIENT_F16 };
		struct sparq_session_opts ob = { .geometry = g, .defaults = { .ratio = 8, .l = -1 } };
		uint64_t wide;
		T_CHECK(sparq_session_create(cs, &ob, &wide) == 0, "create wide: %s",
			sparq_client_error(cs));
		float *wq = t_alloc((size_t)64 * 1024 * 4), *wy = t_alloc((size_t)64 * 1024 * 4);
		struct sparq_attend_req wr[8];
		for (int i = 0; i < 8; i++)
			wr[i] = (struct sparq_attend_req){ .session = wide, .q = wq, .y = wy };
		ret = sparq_attend(cs, 0, wr, 8, &bad);
		T_CHECK(ret == -E2BIG, "attend larger than the area: %d", ret);
		free(wq);
		free(wy);
	}
	sparq_disconnect(cs);

	/* bad arguments never reach the daemon */
	T_CHECK(sparq_session_create(c, NULL, &p) == -EINVAL, "create without opts");
	o = opts(false, "a label that is far longer than the sixty-three bytes a label may hold");
	T_CHECK(sparq_session_create(c, &o, &p) == -EINVAL, "create with a long label");
	o = opts(false, NULL);
	o.geometry.n_q_heads = 3;
	T_CHECK(sparq_session_create(c, &o, &p) == -EINVAL, "3 query heads on 2 KV heads");
	o = opts(false, NULL);
	o.geometry.head_dim = 12;
	T_CHECK(sparq_session_create(c, &o, &p) == -EINVAL, "head_dim 12");
	T_CHECK(sparq_attend(c, 0, NULL, 1, &bad) == -EINVAL, "attend without requests");
	T_CHECK(sparq_ping(NULL) == -EINVAL, "ping without a handle");

	/* a daemon that stops answering: -ETIMEDOUT within the bound, and once it answers
	 * again the late completion is consumed before the next request reuses the area */
	if (!d.external) {
		struct sparq_client *ct;
		setenv("SPARQ_CLIENT_TIMEOUT_MS", "zero", 1);
		T_CHECK(sparq_connect(d.socket, "t", 0, &ct) == -EINVAL, "a bad timeout accepted");
		setenv("SPARQ_CLIENT_TIMEOUT_MS", "1000", 1);
		ret = sparq_connect(d.socket, "roundtrip-timeout", 0, &ct);
		unsetenv("SPARQ_CLIENT_TIMEOUT_MS");
		T_CHECK(ret == 0, "connect: %d", ret);
		T_CHECK(kill(d.pid, SIGSTOP) == 0, "SIGSTOP");
		T_CHECK(wait_all_stopped(d.pid), "the daemon's threads did not all stop");
		uint64_t t0 = t_daemon_now_ms();
		ret = sparq_ping(ct);
		uint64_t waited = t_daemon_now_ms() - t0;
		T_CHECK(ret == -ETIMEDOUT && waited >= 950 && waited < 10000,
			"ping a stopped daemon: %d after %llu ms", ret, (unsigned long long)waited);
		ret = sparq_session_list(ct, list, 64, &n);
		T_CHECK(ret == -ETIMEDOUT, "list on a stopped daemon: %d", ret);
		T_CHECK(kill(d.pid, SIGCONT) == 0, "SIGCONT");
		ret = sparq_ping(ct);
		T_CHECK(ret == 0, "ping after the daemon resumed: %d (%s)", ret, sparq_client_error(ct));
		T_CHECK(sparq_session_list(ct, list, 64, &n) == 0, "list after the daemon resumed: %s",
			sparq_client_error(ct));
		sparq_disconnect(ct);
	}

	/* the daemon dies: calls end with -EPIPE at once, never hang */
	if (!d.external) {
		T_CHECK(t_daemon_kill(&d) == 128 + SIGKILL, "kill");
		ret = sparq_ping(c);
		T_CHECK(ret == -EPIPE, "ping a dead daemon: %d (%s)", ret, sparq_client_error(c));
		ret = sparq_session_list(c, list, 64, &n);
		T_CHECK(ret == -EPIPE, "list on a dead daemon: %d", ret);
	}
	sparq_disconnect(c);
	t_daemon_cleanup(&d);
	printf("PASS\n");
	return T_EXIT_PASS;
}
