/*
 * test_metrics.c — sparqd's Prometheus endpoint (daemon/metrics.h) scraped over a plain
 * TCP socket: the HTTP envelope (status, Content-Type version 0.0.4, Content-Length),
 * then every line of the body through a strict parser of the text exposition format
 * (HELP/TYPE before samples, one TYPE per family, families contiguous, metric and
 * label names, label value escapes, numbers, no duplicate series, counters >= 0).
 * The values are checked against what this test did through libsparq and against the
 * flags the daemon got. Also: other paths and methods, a bad port value (exit 2), a
 * port already taken (exit 1 with a reason), the default (off).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "daemon_helpers.h"
#include "helpers.h"
#include "libsparq.h"

static int failures;

#define CHECK(cond, ...) T_EXPECT(failures, cond, __VA_ARGS__)

/* ---- the strict parser ---- */

#define MAX_FAMILIES 128
#define MAX_SERIES 1024

struct family {
	char name[128];
	char type[16];
	bool help, sampled, closed;
};

struct series {
	char key[512];   /* name{labels} as written */
	double value;
};

struct expo {
	struct family fam[MAX_FAMILIES];
	unsigned n_fam;
	struct series ser[MAX_SERIES];
	unsigned n_ser;
	char err[256];
};

static bool name_ok(const char *s, size_t n, bool colon)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		char ch = s[i];
		bool alpha = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_' ||
			     (colon && ch == ':');

		if (!alpha && !(i > 0 && ch >= '0' && ch <= '9'))
			return false;
	}
	return true;
}

static struct family *fam_find(struct expo *e, const char *name, size_t n)
{
	for (unsigned i = 0; i < e->n_fam; i++)
		if (strlen(e->fam[i].name) == n && strncmp(e->fam[i].name, name, n) == 0)
			return &e->fam[i];
	return NULL;
}

static struct family *fam_get(struct expo *e, const char *name, size_t n)
{
	struct family *f = fam_find(e, name, n);

	if (f || e->n_fam == MAX_FAMILIES || n >= sizeof(f->name))
		return f;
	f = &e->fam[e->n_fam++];
	memset(f, 0, sizeof(*f));
	memcpy(f->name, name, n);
	return f;
}

static int bad(struct expo *e, unsigned line, const char *why)
{
	snprintf(e->err, sizeof(e->err), "line %u: %s", line, why);
	return -1;
}

/* "# HELP name text" or "# TYPE name kind". */
static int parse_meta(struct expo *e, const char *l, unsigned ln)
{
	bool help = strncmp(l, "# HELP ", 7) == 0, type = strncmp(l, "# TYPE ", 7) == 0;
	const char *name = l + 7, *sp;
	struct family *f;

	if (!help && !type)
		return bad(e, ln, "a comment that is neither HELP nor TYPE");
	sp = strchr(name, ' ');
	if (!sp || !name_ok(name, (size_t)(sp - name), true))
		return bad(e, ln, "bad metric name in HELP/TYPE");
	f = fam_get(e, name, (size_t)(sp - name));
	if (!f)
		return bad(e, ln, "too many families");
	if (f->sampled)
		return bad(e, ln, "HELP/TYPE after the family's samples");
	if (help) {
		if (f->help)
			return bad(e, ln, "second HELP");
		f->help = true;
		for (const char *p = sp + 1; *p; p++) {
			if (*p != '\\')
				continue;
			if (p[1] != '\\' && p[1] != 'n')
				return bad(e, ln, "bad escape in HELP");
			p++;
		}
		return 0;
	}
	if (f->type[0])
		return bad(e, ln, "second TYPE");
	if (strcmp(sp + 1, "counter") && strcmp(sp + 1, "gauge") && strcmp(sp + 1, "histogram") &&
	    strcmp(sp + 1, "summary") && strcmp(sp + 1, "untyped"))
		return bad(e, ln, "unknown TYPE");
	snprintf(f->type, sizeof(f->type), "%s", sp + 1);
	return 0;
}

/* name{label="value",...} value [timestamp] */
static int parse_sample(struct expo *e, const char *l, unsigned ln, struct family **last)
{
	const char *p = l, *name = l;
	char label_names[16][64];
	unsigned n_labels = 0;
	struct family *f;
	char *end;
	double v;

	while (*p && *p != '{' && *p != ' ')
		p++;
	if (!name_ok(name, (size_t)(p - name), true))
		return bad(e, ln, "bad metric name");
	f = fam_find(e, name, (size_t)(p - name));
	if (!f || !f->type[0])
		return bad(e, ln, "sample without a TYPE before it");
	if (f->closed)
		return bad(e, ln, "family's samples are not contiguous");
	if (*last && *last != f)
		(*last)->closed = true;
	*last = f;
	f->sampled = true;
	if (*p == '{') {
		p++;
		while (*p != '}') {
			const char *ln0 = p;

			while (*p && *p != '=')
				p++;
			if (*p != '=' || !name_ok(ln0, (size_t)(p - ln0), false))
				return bad(e, ln, "bad label name");
			if (n_labels == 16 || (size_t)(p - ln0) >= 64)
				return bad(e, ln, "too many labels");
			for (unsigned i = 0; i < n_labels; i++)
				if (strlen(label_names[i]) == (size_t)(p - ln0) &&
				    !strncmp(label_names[i], ln0, (size_t)(p - ln0)))
					return bad(e, ln, "repeated label");
			memcpy(label_names[n_labels], ln0, (size_t)(p - ln0));
			label_names[n_labels++][p - ln0] = '\0';
			if (*++p != '"')
				return bad(e, ln, "label value not quoted");
			for (p++; *p != '"'; p++) {
				if (!*p)
					return bad(e, ln, "unterminated label value");
				if (*p == '\\') {
					p++;
					if (*p != '\\' && *p != '"' && *p != 'n')
						return bad(e, ln, "bad escape in a label value");
				}
			}
			p++;
			if (*p == ',')
				p++;
			else if (*p != '}')
				return bad(e, ln, "expected , or } after a label");
		}
		p++;
	}
	if (*p != ' ')
		return bad(e, ln, "no space before the value");
	p++;
	if (!strncmp(p, "+Inf", 4) || !strncmp(p, "-Inf", 4) || !strncmp(p, "NaN", 3)) {
		v = p[0] == 'N' ? NAN : p[0] == '-' ? -INFINITY : INFINITY;
		end = (char *)p + (p[0] == 'N' ? 3 : 4);
	} else {
		errno = 0;
		v = strtod(p, &end);
		if (end == p || errno || !strchr("0123456789+-.", *p) || strpbrk(p, "xXpP"))
			return bad(e, ln, "value is not a number");
	}
	if (*end == ' ') {
		char *tend;
		(void)strtoll(end + 1, &tend, 10);
		if (tend == end + 1 || *tend)
			return bad(e, ln, "bad timestamp");
	} else if (*end) {
		return bad(e, ln, "trailing characters after the value");
	}
	if (!strcmp(f->type, "counter") && !(v >= 0))
		return bad(e, ln, "a negative or NaN counter");
	size_t klen = (size_t)(p - 1 - l);
	if (klen >= sizeof(e->ser[0].key) || e->n_ser == MAX_SERIES)
		return bad(e, ln, "series too long or too many");
	for (unsigned i = 0; i < e->n_ser; i++)
		if (strlen(e->ser[i].key) == klen && !strncmp(e->ser[i].key, l, klen))
			return bad(e, ln, "duplicate series");
	memcpy(e->ser[e->n_ser].key, l, klen);
	e->ser[e->n_ser].key[klen] = '\0';
	e->ser[e->n_ser++].value = v;
	return 0;
}

/* Parses a whole body; 0, or -1 with the reason in e->err. */
static int expo_parse(struct expo *e, const char *body)
{
	char line[1024];
	struct family *last = NULL;
	unsigned ln = 0;

	memset(e, 0, sizeof(*e));
	if (!*body || body[strlen(body) - 1] != '\n')
		return bad(e, 0, "body does not end with a newline");
	while (*body) {
		const char *nl = strchr(body, '\n');
		size_t n = (size_t)(nl - body);

		ln++;
		if (n >= sizeof(line))
			return bad(e, ln, "line too long");
		memcpy(line, body, n);
		line[n] = '\0';
		body = nl + 1;
		if (!n)
			return bad(e, ln, "empty line");
		if (strchr(line, '\r') || strchr(line, '\t'))
			return bad(e, ln, "CR or tab in a line");
		if (line[0] == '#') {
			if (parse_meta(e, line, ln))
				return -1;
		} else if (parse_sample(e, line, ln, &last)) {
			return -1;
		}
	}
	for (unsigned i = 0; i < e->n_fam; i++)
		if (!e->fam[i].sampled || !e->fam[i].help)
			return bad(e, ln, "a family without samples or HELP");
	return 0;
}

static bool expo_get(const struct expo *e, const char *key, double *v)
{
	for (unsigned i = 0; i < e->n_ser; i++) {
		if (!strcmp(e->ser[i].key, key)) {
			*v = e->ser[i].value;
			return true;
		}
	}
	return false;
}

static void test_parser(void)
{
	struct expo *e = malloc(sizeof(*e));
	static const char *const bad_bodies[] = {
		"a 1\n",                                                /* no TYPE */
		"# TYPE a counter\na -1\n",                             /* negative counter */
		"# HELP a x\n# TYPE a gauge\na{l=\"x} 1\n",             /* unterminated */
		"# HELP a x\n# TYPE a gauge\na{l=\"\\q\"} 1\n",         /* bad escape */
		"# HELP a x\n# TYPE a gauge\na 1\na 2\n",               /* duplicate */
		"# HELP a x\n# TYPE a gauge\n# HELP b y\n# TYPE b gauge\na 1\nb 1\na{x=\"1\"} 1\n",
		"# HELP a x\n# TYPE a gauge\na 1x\n",                   /* trailing */
		"# HELP a x\n# TYPE a gauge\na 1",                      /* no newline */
		"# HELP a x\n# TYPE a gauge\n# TYPE a gauge\na 1\n",    /* second TYPE */
		"# HELP 1a x\n# TYPE 1a gauge\n1a 1\n",                 /* bad name */
		"# HELP a x\n# TYPE a gauge\na{l=\"1\",l=\"2\"} 1\n",   /* repeated label */
		"# random comment\n",
	};

	if (!e)
		exit(T_EXIT_FAIL);
	CHECK(expo_parse(e, "# HELP a x \\\\ y\n# TYPE a counter\na{l=\"q\\\"\\n\\\\\"} 3\n"
			 "# HELP b y\n# TYPE b gauge\nb +Inf\nb{c=\"\"} 1.5e-3 1700000000000\n") == 0,
	      "a valid body refused: %s", e->err);
	for (size_t i = 0; i < sizeof(bad_bodies) / sizeof(bad_bodies[0]); i++)
		CHECK(expo_parse(e, bad_bodies[i]) != 0, "bad body %zu accepted", i);
	free(e);
}

/* ---- HTTP ---- */

/* Sends req to 127.0.0.1:port and reads the whole answer (the server closes). */
static int http(uint16_t port, const char *req, char *buf, size_t cap)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	size_t got = 0;
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&a, sizeof(a))) {
		int ret = -errno;
		close(fd);
		return ret;
	}
	if (write(fd, req, strlen(req)) != (ssize_t)strlen(req)) {
		close(fd);
		return -EIO;
	}
	for (;;) {
		ssize_t r = read(fd, buf + got, cap - 1 - got);

		if (r <= 0)
			break;
		got += (size_t)r;
		if (got == cap - 1)
			break;
	}
	buf[got] = '\0';
	close(fd);
	return (int)got;
}

/* A port free right now (the kernel's pick), for the daemon to bind. */
static uint16_t free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) ||
	    getsockname(fd, (struct sockaddr *)&a, &len))
		T_DAEMON_DIE(T_EXIT_FAIL, "cannot find a free port: %s", strerror(errno));
	close(fd);
	return ntohs(a.sin_port);
}

/* Scrapes /metrics and parses it; returns 0 or -1 (reason printed). */
static int scrape(uint16_t port, char *buf, size_t cap, struct expo *e)
{
	const char *body, *cl;
	int n = http(port, "GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n", buf, cap);

	if (n <= 0) {
		fprintf(stderr, "scrape: %s\n", strerror(-n));
		return -1;
	}
	body = strstr(buf, "\r\n\r\n");
	cl = strstr(buf, "Content-Length: ");
	if (strncmp(buf, "HTTP/1.1 200 OK\r\n", 17) || !body || !cl ||
	    !strstr(buf, "Content-Type: text/plain; version=0.0.4")) {
		fprintf(stderr, "scrape: bad response head: %.300s\n", buf);
		return -1;
	}
	body += 4;
	if (strtoul(cl + 16, NULL, 10) != strlen(body)) {
		fprintf(stderr, "scrape: Content-Length %lu, body %zu bytes\n",
			strtoul(cl + 16, NULL, 10), strlen(body));
		return -1;
	}
	if (expo_parse(e, body)) {
		fprintf(stderr, "scrape: %s\n", e->err);
		return -1;
	}
	return 0;
}

/* Runs sparqd with args (no readiness wait) and returns its exit code; stderr → log. */
static int run_sparqd(const char *dir, const char *const *extra)
{
	char data[PATH_MAX], log[PATH_MAX];
	const char *argv[32] = { SPARQD_PATH, "--data-dir", data, "--backend", "cpu",
				 "--ram-bytes", "16M", "--nvme-bytes", "64M" };
	size_t n = 9;
	int status;
	pid_t pid;

	snprintf(data, sizeof(data), "%s/data2", dir);
	snprintf(log, sizeof(log), "%s/sparqd2.log", dir);
	for (size_t i = 0; extra[i] && n < 31; i++)
		argv[n++] = extra[i];
	argv[n] = NULL;
	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		if (fd < 0 || dup2(fd, 2) < 0)
			_exit(126);
		execv(SPARQD_PATH, (char *const *)argv);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &status, 0) != pid)
		return -1;
	return t_exit_code(status);
}

static bool log_has(const char *dir, const char *what)
{
	char path[PATH_MAX], buf[8192];

	snprintf(path, sizeof(path), "%s/sparqd2.log", dir);
	t_slurp(path, buf, sizeof(buf));
	return strstr(buf, what) != NULL;
}

int main(void)
{
	enum { TOKENS = 64, D = 64, KV = 2, Q = 4, APPENDS = 3, ATTENDS = 5 };
	struct t_daemon d = { 0 };
	struct expo *e = malloc(sizeof(*e));
	char *buf = malloc(1 << 20);
	char port_s[16], key[128];
	struct sparq_client *c = NULL;
	struct sparq_session_opts so = {
		.geometry = { .n_layers = 1, .n_q_heads = Q, .n_kv_heads = KV, .head_dim = D,
			      .dtype = SPARQ_CLIENT_F16 },
		.defaults = { .r = 16, .k = 16, .l = -1 },
	};
	static uint16_t k[TOKENS * KV * D], v[TOKENS * KV * D];
	static float q[Q * D], y[Q * D];
	uint64_t id;
	uint16_t port;
	double val = -1;
	int ret;

	if (!e || !buf)
		return T_EXIT_FAIL;
	test_parser();
	t_daemon_need_own("the metrics test (it picks the daemon's flags)");
	port = free_port();
	snprintf(port_s, sizeof(port_s), "%u", port);
	t_daemon_start(&d, NULL, (const char *const[]){ "--metrics-port", port_s, NULL });

	/* a fresh daemon: a valid page with the configured capacities */
	CHECK(scrape(port, buf, 1 << 20, e) == 0, "first scrape");
	CHECK(expo_get(e, "sparqd_tier_capacity_bytes{tier=\"ram\"}", &val) && val == 268435456.0,
	      "ram capacity %g", val);
	CHECK(expo_get(e, "sparqd_tier_capacity_bytes{tier=\"nvme\"}", &val) && val == 1073741824.0,
	      "nvme capacity %g", val);
	CHECK(expo_get(e, "sparqd_sessions", &val) && val == 0, "sessions %g", val);
	CHECK(expo_get(e, "sparqd_requests_total{op=\"append\"}", &val) && val == 0, "appends %g", val);

	/* some traffic, then the counters must say exactly that */
	ret = sparq_connect(d.socket, "metrics-test", 0, &c);
	CHECK(ret == 0, "connect %d", ret);
	if (ret)
		return T_EXIT_FAIL;
	ret = sparq_session_create(c, &so, &id);
	for (unsigned i = 0; i < TOKENS * KV * D; i++) {
		k[i] = sparq_f32_to_f16((float)((i * 37u) % 101) / 50.0f - 1.0f);
		v[i] = sparq_f32_to_f16((float)((i * 53u) % 97) / 48.0f - 1.0f);
	}
	for (unsigned i = 0; i < Q * D; i++)
		q[i] = (float)((i * 29u) % 83) / 41.0f - 1.0f;
	for (int i = 0; i < APPENDS && !ret; i++)
		ret = sparq_append(c, id, 0, TOKENS, k, v);
	for (int i = 0; i < ATTENDS && !ret; i++) {
		struct sparq_attend_req rq = { .session = id, .q = q, .y = y };
		ret = sparq_attend(c, 0, &rq, 1, NULL);
	}
	CHECK(ret == 0, "traffic: %d %s", ret, sparq_client_error(c));
	/* a request that fails is counted as an error of its op */
	CHECK(sparq_session_park(c, id + 1000) == -ENOENT, "park of a foreign id");

	/* the daemon counts a request just after it answers it: allow it a moment */
	for (int tries = 0; tries < 200; tries++) {
		double a = 0, t = 0, pe = 0;
		if (scrape(port, buf, 1 << 20, e) == 0 &&
		    expo_get(e, "sparqd_requests_total{op=\"append\"}", &a) &&
		    expo_get(e, "sparqd_requests_total{op=\"attend\"}", &t) &&
		    expo_get(e, "sparqd_request_errors_total{op=\"park\"}", &pe) &&
		    a == APPENDS && t == ATTENDS && pe == 1)
			break;
		t_daemon_sleep_ms(10);
	}
	CHECK(scrape(port, buf, 1 << 20, e) == 0, "scrape after traffic");
	CHECK(expo_get(e, "sparqd_requests_total{op=\"append\"}", &val) && val == APPENDS,
	      "appends %g", val);
	CHECK(expo_get(e, "sparqd_requests_total{op=\"attend\"}", &val) && val == ATTENDS,
	      "attends %g", val);
	CHECK(expo_get(e, "sparqd_request_errors_total{op=\"attend\"}", &val) && val == 0,
	      "attend errors %g", val);
	CHECK(expo_get(e, "sparqd_request_errors_total{op=\"park\"}", &val) && val == 1,
	      "park errors %g", val);
	CHECK(expo_get(e, "sparqd_request_latency_seconds{op=\"attend\",quantile=\"0.99\"}", &val) &&
	      val > 0 && val < 60, "attend p99 %g s", val);
	CHECK(expo_get(e, "sparqd_sessions", &val) && val == 1, "sessions %g", val);
	CHECK(expo_get(e, "sparqd_clients", &val) && val >= 1, "clients %g", val);
	CHECK(expo_get(e, "sparqd_tier_used_bytes{tier=\"ram\"}", &val) && val > 0,
	      "ram used %g", val);
	CHECK(expo_get(e, "sparqd_checksum_failures_total", &val) && val == 0, "crc %g", val);
	/* the CPU backend has no CUDA work to fail: its health is all zero, but reported */
	CHECK(expo_get(e, "sparqd_backend_cuda_errors_total", &val) && val == 0, "cuda errors %g",
	      val);
	CHECK(expo_get(e, "sparqd_backend_fallback_calls_total", &val) && val == 0,
	      "fallback calls %g", val);
	CHECK(expo_get(e, "sparqd_backend_fallback_items_total", &val) && val == 0,
	      "fallback items %g", val);
	CHECK(expo_get(e, "sparqd_backend_streams_lost", &val) && val == 0, "streams lost %g", val);
	CHECK(expo_get(e, "sparqd_backend_degraded", &val) && val == 0, "degraded %g", val);
	snprintf(key, sizeof(key), "sparqd_build_info{version=\"%s\",backend=\"cpu\",detail=",
		 sparq_client_server_version(c));
	CHECK(strstr(buf, key) != NULL, "build_info names version and backend");
	for (unsigned i = 0; i < e->n_fam; i++)
		CHECK(strncmp(e->fam[i].name, "sparqd_", 7) == 0, "family %s", e->fam[i].name);
	CHECK(e->n_fam >= 20, "only %u families", e->n_fam);
	sparq_disconnect(c);

	/* other paths and methods; garbage gets an answer and no crash */
	CHECK(http(port, "GET /nope HTTP/1.1\r\n\r\n", buf, 4096) > 0 &&
	      !strncmp(buf, "HTTP/1.1 404", 12), "404: %.40s", buf);
	CHECK(http(port, "POST /metrics HTTP/1.1\r\n\r\n", buf, 4096) > 0 &&
	      !strncmp(buf, "HTTP/1.1 405", 12), "405: %.40s", buf);
	CHECK(http(port, "\x01\x02garbage\n\n", buf, 4096) > 0 && !strncmp(buf, "HTTP/1.1 405", 12),
	      "garbage: %.40s", buf);
	CHECK(scrape(port, buf, 1 << 20, e) == 0, "still serving after bad requests");

	/* a second daemon on the taken port: exit 1 saying why; a bad value: exit 2 */
	char sock2[sizeof(d.dir) + 16];
	snprintf(sock2, sizeof(sock2), "%s/s2.sock", d.dir);
	ret = run_sparqd(d.dir, (const char *const[]){ "--socket", sock2, "--metrics-port", port_s,
						       NULL });
	CHECK(ret == 1 && log_has(d.dir, "metrics port"), "port taken: exit %d", ret);
	ret = run_sparqd(d.dir, (const char *const[]){ "--metrics-port", "65536", NULL });
	CHECK(ret == 2 && log_has(d.dir, "--metrics-port"), "port 65536: exit %d", ret);
	ret = run_sparqd(d.dir, (const char *const[]){ "--metrics-port", "-1", NULL });
	CHECK(ret == 2, "port -1: exit %d", ret);

	CHECK(t_daemon_stop(&d) == 0, "clean stop with the metrics thread running");
	/* the default is off: a daemon without the flag does not listen there */
	t_daemon_start(&d, d.dir, NULL);
	CHECK(http(port, "GET /metrics HTTP/1.1\r\n\r\n", buf, 4096) == -ECONNREFUSED,
	      "metrics served without --metrics-port");
	CHECK(t_daemon_stop(&d) == 0, "clean stop");
	t_daemon_cleanup(&d);
	free(e);
	free(buf);
	if (failures) {
		fprintf(stderr, "%d checks failed\n", failures);
		return T_EXIT_FAIL;
	}
	printf("metrics: all checks passed\n");
	return T_EXIT_PASS;
}
