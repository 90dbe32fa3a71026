/*
 * metrics.c — the Prometheus endpoint (metrics.h): a text renderer and a minimal
 * HTTP/1.x responder on a loopback socket.
 *
 * The HTTP side is deliberately the smallest that a scraper (Prometheus, curl, a
 * test's raw socket) needs: one request per connection, the request line read up to
 * the blank line (8 KiB at most, 2 s per read and write), then one response with a
 * Content-Length and "Connection: close". GET /metrics (and GET /) answer 200, another
 * path 404, another method 405. Nothing a peer sends is ever echoed back.
 *
 * Families are written with their HELP and TYPE lines before their samples; label
 * values are escaped as the format demands (backslash, double quote, newline), so
 * a backend detail string with quotes in it cannot break a line.
 */
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "metrics.h"
#include "sparqd.h"

#define REQ_MAX 8192
#define IO_TIMEOUT_S 2

struct sd_metrics {
	struct sparqd *d;
	int listen_fd;
	int stop_fd;          /* eventfd: written once to end the thread */
	pthread_t thread;
};

/* A growable text buffer; a failed allocation is remembered and reported once. */
struct text {
	char *p;
	size_t len, cap;
	bool oom;
};

static void put(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(struct text *t, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (t->oom)
		return;
	for (;;) {
		size_t room = t->cap - t->len;

		va_start(ap, fmt);
		n = vsnprintf(t->p ? t->p + t->len : NULL, t->p ? room : 0, fmt, ap);
		va_end(ap);
		if (n < 0) {
			t->oom = true;
			return;
		}
		if (t->p && (size_t)n < room) {
			t->len += (size_t)n;
			return;
		}
		size_t cap = t->cap ? t->cap * 2 : 16384;
		while (cap < t->len + (size_t)n + 1)
			cap *= 2;
		char *p = realloc(t->p, cap);
		if (!p) {
			t->oom = true;
			return;
		}
		t->p = p;
		t->cap = cap;
	}
}

/* A label value, escaped: \ → \\, " → \", newline → \n. */
static void put_label_value(struct text *t, const char *v)
{
	put(t, "\"");
	for (; *v; v++) {
		if (*v == '\\')
			put(t, "\\\\");
		else if (*v == '"')
			put(t, "\\\"");
		else if (*v == '\n')
			put(t, "\\n");
		else
			put(t, "%c", *v);
	}
	put(t, "\"");
}

static void family(struct text *t, const char *name, const char *type, const char *help)
{
	put(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* One sample with at most one label (label NULL: none). */
static void sample_u(struct text *t, const char *name, const char *label, const char *lv,
		     unsigned long long v)
{
	put(t, "%s", name);
	if (label) {
		put(t, "{%s=", label);
		put_label_value(t, lv);
		put(t, "}");
	}
	put(t, " %llu\n", v);
}

static void sample_d(struct text *t, const char *name, const char *label, const char *lv,
		     double v)
{
	put(t, "%s", name);
	if (label) {
		put(t, "{%s=", label);
		put_label_value(t, lv);
		put(t, "}");
	}
	put(t, " %.9g\n", v);
}

static void counter1(struct text *t, const char *name, const char *help, unsigned long long v)
{
	family(t, name, "counter", help);
	sample_u(t, name, NULL, NULL, v);
}

/* A family with one sample per tier. */
static void per_tier(struct text *t, const char *name, const char *type, const char *help,
		     unsigned long long ram, unsigned long long nvme)
{
	family(t, name, type, help);
	sample_u(t, name, "tier", "ram", ram);
	sample_u(t, name, "tier", "nvme", nvme);
}

static void render_ops(struct text *t, struct sparqd *d)
{
	family(t, "sparqd_requests_total", "counter", "Requests answered, by operation.");
	for (unsigned op = SD_OP_HELLO; op < SD_OP_COUNT; op++)
		sample_u(t, "sparqd_requests_total", "op", sd_op_name((enum sd_op)op),
			 atomic_load_explicit(&d->stats.ops[op].count, memory_order_relaxed));
	family(t, "sparqd_request_errors_total", "counter",
	       "Requests answered with an error, by operation.");
	for (unsigned op = SD_OP_HELLO; op < SD_OP_COUNT; op++)
		sample_u(t, "sparqd_request_errors_total", "op", sd_op_name((enum sd_op)op),
			 atomic_load_explicit(&d->stats.ops[op].errors, memory_order_relaxed));
	family(t, "sparqd_request_latency_seconds", "gauge",
	       "Latency quantiles since start, decode to reply (histogram bucket upper bound).");
	for (unsigned op = SD_OP_HELLO; op < SD_OP_COUNT; op++) {
		static const double qs[] = { 0.5, 0.99 };
		static const char *const qn[] = { "0.5", "0.99" };

		for (unsigned i = 0; i < 2; i++) {
			put(t, "sparqd_request_latency_seconds{op=");
			put_label_value(t, sd_op_name((enum sd_op)op));
			put(t, ",quantile=");
			put_label_value(t, qn[i]);
			put(t, "} %.9g\n", (double)sd_stats_quantile(&d->stats, (enum sd_op)op, qs[i]) * 1e-9);
		}
	}
}

/* What the backend recovered from (sparq_backend_health; all 0 for the CPU backend). */
static void render_backend(struct text *t, struct sparqd *d)
{
	struct sparq_backend_health h;

	sparq_backend_health(d->be, &h);
	counter1(t, "sparqd_backend_cuda_errors_total",
		 "CUDA failures in attends and appends (synthetic ones from --cuda-fault included).",
		 h.cuda_errors);
	counter1(t, "sparqd_backend_fallback_calls_total",
		 "Attends with items the GPU should have served that ran on the CPU backend after "
		 "a CUDA error.", h.fallback_batches);
	counter1(t, "sparqd_backend_fallback_items_total",
		 "Items (sequence, KV head) of those attends served on the CPU backend.",
		 h.fallback_items);
	family(t, "sparqd_backend_streams_lost", "gauge",
	       "Streams alive that moved to the CPU backend for good after a CUDA error.");
	sample_u(t, "sparqd_backend_streams_lost", NULL, NULL, h.streams_lost);
	family(t, "sparqd_backend_degraded", "gauge",
	       "1 when a CUDA error left the GPU context unusable: every attend runs on the CPU.");
	sample_u(t, "sparqd_backend_degraded", NULL, NULL, h.degraded);
}

int sd_metrics_render(struct sparqd *d, char **text, size_t *len)
{
	struct text t = { 0 };
	struct tier_stats ts;
	double amp;

	tier_manager_stats(d->tm, &ts);
	amp = ts.nvme_gather_requested ?
		(double)ts.nvme_gather_bytes / (double)ts.nvme_gather_requested : 1.0;

	family(&t, "sparqd_build_info", "gauge", "Version and attention backend of this sparqd (always 1).");
	put(&t, "sparqd_build_info{version=");
	put_label_value(&t, SPARQ_VERSION_STRING);
	put(&t, ",backend=");
	put_label_value(&t, sparq_backend_name(d->be));
	put(&t, ",detail=");
	put_label_value(&t, d->backend_detail);
	put(&t, "} 1\n");
	render_backend(&t, d);
	family(&t, "sparqd_uptime_seconds", "gauge", "Seconds since the daemon started.");
	sample_d(&t, "sparqd_uptime_seconds", NULL, NULL, (double)(sd_now_ns() - d->stats.start_ns) * 1e-9);
	family(&t, "sparqd_clients", "gauge", "Clients connected now.");
	sample_u(&t, "sparqd_clients", NULL, NULL, __atomic_load_n(&d->n_clients, __ATOMIC_RELAXED));
	family(&t, "sparqd_sessions", "gauge", "Open sessions now.");
	sample_u(&t, "sparqd_sessions", NULL, NULL, sd_sessions_count(&d->sessions));
	render_ops(&t, d);

	per_tier(&t, "sparqd_tier_capacity_bytes", "gauge", "Capacity of each tier.",
		 ts.ram_capacity, ts.nvme_capacity);
	per_tier(&t, "sparqd_tier_used_bytes", "gauge", "Bytes of each tier in use.",
		 ts.ram_used, ts.nvme_used);
	per_tier(&t, "sparqd_tier_free_bytes", "gauge", "Bytes of each tier still free.",
		 ts.ram_capacity > ts.ram_used ? ts.ram_capacity - ts.ram_used : 0,
		 ts.nvme_capacity > ts.nvme_used ? ts.nvme_capacity - ts.nvme_used : 0);
	per_tier(&t, "sparqd_tier_chunks", "gauge", "Chunks held by each tier.",
		 ts.ram_chunks, ts.nvme_chunks);
	per_tier(&t, "sparqd_tier_records_read_total", "counter",
		 "Records served to gathers from each tier.", ts.ram_records_read,
		 ts.nvme_records_read);
	per_tier(&t, "sparqd_tier_bytes_written_total", "counter", "Bytes written into each tier.",
		 ts.ram_bytes_written, ts.nvme_bytes_written);
	counter1(&t, "sparqd_nvme_bytes_read_total", "Bytes read from the NVMe tier, all causes.",
		 ts.nvme_bytes_read);
	counter1(&t, "sparqd_demotions_total", "Chunks demoted from RAM to NVMe.", ts.demotions);
	counter1(&t, "sparqd_promotions_total", "Chunks promoted from NVMe back to RAM.",
		 ts.promotions);
	counter1(&t, "sparqd_parks_total", "Sessions parked (made durable).", ts.parks);
	counter1(&t, "sparqd_resumes_total", "Parked sessions resumed.", ts.resumes);
	counter1(&t, "sparqd_checksum_failures_total", "Records whose CRC32C did not match.",
		 ts.checksum_failures);
	family(&t, "sparqd_read_amplification", "gauge",
	       "NVMe bytes read per byte gathers asked for (1 when none).");
	sample_d(&t, "sparqd_read_amplification", NULL, NULL, amp);

	if (t.oom) {
		free(t.p);
		return -ENOMEM;
	}
	*text = t.p;
	*len = t.len;
	return 0;
}

static int send_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static void respond(int fd, const char *status, const char *type, const char *body, size_t len)
{
	char head[256];
	int n = snprintf(head, sizeof(head),
			 "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n\r\n", status, type, len);

	if (send_all(fd, head, (size_t)n) == 0)
		send_all(fd, body, len);
}

/* Reads up to the blank line that ends the request head; 0, or -errno / -EMSGSIZE. */
static int read_head(int fd, char *buf, size_t cap, size_t *got)
{
	*got = 0;
	for (;;) {
		ssize_t r;

		if (*got + 1 >= cap)
			return -EMSGSIZE;
		r = recv(fd, buf + *got, cap - 1 - *got, 0);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ECONNRESET;
		*got += (size_t)r;
		buf[*got] = '\0';
		if (strstr(buf, "\r\n\r\n") || strstr(buf, "\n\n"))
			return 0;
	}
}

static void serve_one(struct sd_metrics *m, int fd)
{
	static const char plain[] = "text/plain; charset=utf-8";
	struct timeval tv = { .tv_sec = IO_TIMEOUT_S };
	char *req = malloc(REQ_MAX), *text = NULL;
	size_t got, len;

	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (!req)
		return;
	if (read_head(fd, req, REQ_MAX, &got)) {
		/* a peer that sends nothing sensible gets nothing but the close */
		if (got)
			respond(fd, "400 Bad Request", plain, "bad request\n", 12);
		goto out;
	}
	if (strncmp(req, "GET ", 4) != 0 && strncmp(req, "HEAD ", 5) != 0) {
		respond(fd, "405 Method Not Allowed", plain, "only GET\n", 9);
		goto out;
	}
	const char *path = strchr(req, ' ') + 1;
	size_t plen = strcspn(path, " \r\n");
	bool ok = (plen == 8 && strncmp(path, "/metrics", 8) == 0) ||
		  (plen == 1 && path[0] == '/');
	if (!ok) {
		respond(fd, "404 Not Found", plain, "try /metrics\n", 13);
		goto out;
	}
	if (sd_metrics_render(m->d, &text, &len)) {
		respond(fd, "500 Internal Server Error", plain, "out of memory\n", 14);
		goto out;
	}
	respond(fd, "200 OK", "text/plain; version=0.0.4; charset=utf-8", text,
		strncmp(req, "HEAD ", 5) == 0 ? 0 : len);
out:
	free(text);
	free(req);
}

static void *metrics_thread(void *arg)
{
	struct sd_metrics *m = arg;
	struct pollfd pfd[2] = { { .fd = m->listen_fd, .events = POLLIN },
				 { .fd = m->stop_fd, .events = POLLIN } };

	for (;;) {
		int n = poll(pfd, 2, -1);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 || pfd[1].revents)
			break;
		if (pfd[0].revents & POLLIN) {
			int fd = accept4(m->listen_fd, NULL, NULL, SOCK_CLOEXEC);

			if (fd < 0) {
				if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
					sd_log(&m->d->log, SD_LOG_WARN, "metrics accept: %s",
					       strerror(errno));
				continue;
			}
			serve_one(m, fd);
			close(fd);
		}
	}
	return NULL;
}

int sd_metrics_start(struct sparqd *d, struct sd_metrics **out, const char **why)
{
	struct sockaddr_in a = { .sin_family = AF_INET,
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
				 .sin_port = htons((uint16_t)d->cfg.metrics_port) };
	struct sd_metrics *m;
	int one = 1, ret;

	*out = NULL;
	if (d->cfg.metrics_port == 0)
		return 0;
	m = calloc(1, sizeof(*m));
	*why = "out of memory";
	if (!m)
		return -ENOMEM;
	m->d = d;
	m->stop_fd = -1;
	*why = "cannot create the metrics socket";
	m->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (m->listen_fd < 0)
		goto err;
	/* a restarted daemon may rebind while the old connections sit in TIME_WAIT */
	setsockopt(m->listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	*why = "cannot bind 127.0.0.1 to the metrics port";
	if (bind(m->listen_fd, (struct sockaddr *)&a, sizeof(a)))
		goto err;
	*why = "cannot listen on the metrics port";
	if (listen(m->listen_fd, 16))
		goto err;
	*why = "cannot create the metrics stop eventfd";
	m->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (m->stop_fd < 0)
		goto err;
	*why = "cannot start the metrics thread";
	ret = pthread_create(&m->thread, NULL, metrics_thread, m);
	if (ret) {
		errno = ret;
		goto err;
	}
	sd_log(&d->log, SD_LOG_INFO, "metrics on http://127.0.0.1:%u/metrics", d->cfg.metrics_port);
	*out = m;
	return 0;
err:
	ret = -errno;
	if (m->listen_fd >= 0)
		close(m->listen_fd);
	if (m->stop_fd >= 0)
		close(m->stop_fd);
	free(m);
	return ret;
}

void sd_metrics_stop(struct sd_metrics *m)
{
	uint64_t one = 1;

	if (!m)
		return;
	if (write(m->stop_fd, &one, sizeof(one)) != sizeof(one))
		sd_log(&m->d->log, SD_LOG_WARN, "metrics stop: %s", strerror(errno));
	pthread_join(m->thread, NULL);
	close(m->listen_fd);
	close(m->stop_fd);
	free(m);
}
