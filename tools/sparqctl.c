/*
 * sparqctl — the operator's view of a running sparqd (what redis-cli is to redis):
 * status, sessions, stats and config read through the same libsparq calls an engine
 * uses; park, resume and drop act on sessions of the caller's own uid (the daemon
 * enforces that; a foreign session answers "no such session").
 *
 * Output is a table for people by default and one JSON object with --json for
 * scripts; both carry the same fields. Every failure ends in one line on stderr that
 * says what to do, and an exit code a script can branch on (see usage()).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "libsparq.h"

enum exit_code {
	EXIT_OK = 0,
	EXIT_REFUSED = 1,       /* the daemon answered the request with an error */
	EXIT_USAGE = 2,
	EXIT_NOT_RUNNING = 3,   /* nothing listens on the socket */
	EXIT_NO_ACCESS = 4,     /* the socket exists but we may not connect */
	EXIT_PROTOCOL = 5,      /* another protocol version, daemon gone, timeout */
};

#define MAX_SESSIONS 4096u
#define MAX_CONFIG 64u

struct opts {
	const char *socket;
	bool json;
	bool to_ram;
	const char *cmd;
	uint64_t id;
};

static void usage(FILE *f)
{
	fprintf(f,
		"usage: sparqctl [--socket PATH] [--json] COMMAND [ARGS]\n"
		"\n"
		"commands:\n"
		"  status            version, backend and GPU, tiers with capacity, used, free\n"
		"  sessions          your sessions: owner, geometry, tokens, tier placement, state\n"
		"  stats             request counts and p50/p99 latency, bytes per tier, read\n"
		"                    amplification, checksum failures\n"
		"  config            the daemon's effective configuration\n"
		"  park ID           make session ID durable on NVMe (it stays open)\n"
		"  resume ID [--to-ram]  reopen parked session ID (records read back into RAM)\n"
		"  drop ID           remove session ID's parked copy\n"
		"\n"
		"options:\n"
		"  --socket PATH     the daemon's socket (default $SPARQD_SOCKET, else\n"
		"                    ./sparqd-data/sparqd.sock)\n"
		"  --json            one JSON object on stdout instead of tables\n"
		"\n"
		"exit status:\n"
		"  0 success; 1 the daemon refused the request (reason on stderr); 2 bad usage;\n"
		"  3 no sparqd listens on the socket; 4 the socket is not accessible to you;\n"
		"  5 protocol mismatch, the daemon went away or did not answer in time\n");
}

static int parse_id(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!s || !*s || *s == '-' || *s == '+')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end)
		return -EINVAL;
	*out = v;
	return 0;
}

static int parse_args(int argc, char **argv, struct opts *o)
{
	int i;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i];

		if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			exit(EXIT_OK);
		} else if (strcmp(a, "--json") == 0) {
			o->json = true;
		} else if (strcmp(a, "--to-ram") == 0) {
			o->to_ram = true;
		} else if (strcmp(a, "--socket") == 0) {
			if (++i >= argc) {
				fprintf(stderr, "sparqctl: --socket needs a path\n");
				return -EINVAL;
			}
			o->socket = argv[i];
		} else if (strncmp(a, "--socket=", 9) == 0) {
			o->socket = a + 9;
		} else if (strncmp(a, "--", 2) == 0) {
			fprintf(stderr, "sparqctl: unknown option '%s' (see --help)\n", a);
			return -EINVAL;
		} else if (!o->cmd) {
			o->cmd = a;
		} else if (o->id == 0) {
			if (parse_id(a, &o->id) || o->id == 0) {
				fprintf(stderr, "sparqctl: '%s' is not a session id\n", a);
				return -EINVAL;
			}
		} else {
			fprintf(stderr, "sparqctl: unexpected argument '%s'\n", a);
			return -EINVAL;
		}
	}
	if (!o->cmd) {
		usage(stderr);
		return -EINVAL;
	}
	bool takes_id = !strcmp(o->cmd, "park") || !strcmp(o->cmd, "resume") ||
			!strcmp(o->cmd, "drop");
	bool known = takes_id || !strcmp(o->cmd, "status") || !strcmp(o->cmd, "sessions") ||
		     !strcmp(o->cmd, "stats") || !strcmp(o->cmd, "config");
	if (!known) {
		fprintf(stderr, "sparqctl: unknown command '%s' (see --help)\n", o->cmd);
		return -EINVAL;
	}
	if (takes_id && o->id == 0) {
		fprintf(stderr, "sparqctl: %s needs a session id\n", o->cmd);
		return -EINVAL;
	}
	if (!takes_id && o->id) {
		fprintf(stderr, "sparqctl: %s takes no session id\n", o->cmd);
		return -EINVAL;
	}
	if (o->to_ram && strcmp(o->cmd, "resume") != 0) {
		fprintf(stderr, "sparqctl: --to-ram goes with resume only\n");
		return -EINVAL;
	}
	return 0;
}

/* "12.0 MiB" */
static const char *human_bytes(uint64_t b, char *buf, size_t len)
{
	static const char *const unit[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
	double v = (double)b;
	unsigned u = 0;

	while (v >= 1024.0 && u < 5) {
		v /= 1024.0;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%" PRIu64 " B", b);
	else
		snprintf(buf, len, "%.1f %s", v, unit[u]);
	return buf;
}

/* "850 ns", "12.3 us", "4.56 ms", "1.20 s" */
static const char *human_ns(uint64_t ns, char *buf, size_t len)
{
	if (ns < 1000)
		snprintf(buf, len, "%" PRIu64 " ns", ns);
	else if (ns < 1000000)
		snprintf(buf, len, "%.1f us", (double)ns / 1e3);
	else if (ns < 1000000000)
		snprintf(buf, len, "%.2f ms", (double)ns / 1e6);
	else
		snprintf(buf, len, "%.2f s", (double)ns / 1e9);
	return buf;
}

static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			printf("\\%c", ch);
		else if (ch == '\n')
			printf("\\n");
		else if (ch < 0x20)
			printf("\\u%04x", ch);
		else
			putchar(ch);
	}
	putchar('"');
}

static const char *dtype_name(enum sparq_client_dtype t)
{
	return t == SPARQ_CLIENT_BF16 ? "bf16" : t == SPARQ_CLIENT_F16 ? "f16" : "?";
}

static int cmd_status(struct sparq_client *c, const struct opts *o)
{
	struct sparq_stats st;
	int ret = sparq_stats_get(c, &st);
	bool gpu;

	if (ret)
		return ret;
	gpu = strcmp(st.backend, "cuda") == 0;
	if (o->json) {
		printf("{\"version\": ");
		json_str(sparq_client_server_version(c));
		printf(", \"backend\": ");
		json_str(st.backend);
		printf(", \"backend_detail\": ");
		json_str(st.backend_detail);
		printf(", \"gpu\": ");
		if (gpu)
			json_str(st.backend_detail);
		else
			printf("null");
		printf(", \"uptime_s\": %.3f, \"clients\": %u, \"sessions\": %u, \"tiers\": {"
		       "\"ram\": {\"capacity\": %" PRIu64 ", \"used\": %" PRIu64 ", \"free\": %" PRIu64 "}, "
		       "\"nvme\": {\"capacity\": %" PRIu64 ", \"used\": %" PRIu64 ", \"free\": %" PRIu64 "}}}\n",
		       (double)st.uptime_ns / 1e9, st.clients, st.sessions, st.ram_capacity,
		       st.ram_used, st.ram_capacity - st.ram_used, st.nvme_capacity, st.nvme_used,
		       st.nvme_capacity - st.nvme_used);
		return 0;
	}
	char a[32], b[32], f[32];
	uint64_t up = st.uptime_ns / 1000000000u;

	printf("sparqd %s, up %" PRIu64 "h%02" PRIu64 "m%02" PRIu64 "s, %u clients, %u sessions\n",
	       sparq_client_server_version(c), up / 3600, up / 60 % 60, up % 60, st.clients,
	       st.sessions);
	printf("backend  %s (%s)\n", st.backend, st.backend_detail);
	printf("gpu      %s\n", gpu ? st.backend_detail : "none in use (CPU backend)");
	printf("\n%-5s %12s %12s %12s %6s\n", "tier", "capacity", "used", "free", "use");
	printf("%-5s %12s %12s %12s %5.1f%%\n", "ram", human_bytes(st.ram_capacity, a, sizeof(a)),
	       human_bytes(st.ram_used, b, sizeof(b)),
	       human_bytes(st.ram_capacity - st.ram_used, f, sizeof(f)),
	       st.ram_capacity ? 100.0 * (double)st.ram_used / (double)st.ram_capacity : 0.0);
	printf("%-5s %12s %12s %12s %5.1f%%\n", "nvme", human_bytes(st.nvme_capacity, a, sizeof(a)),
	       human_bytes(st.nvme_used, b, sizeof(b)),
	       human_bytes(st.nvme_capacity - st.nvme_used, f, sizeof(f)),
	       st.nvme_capacity ? 100.0 * (double)st.nvme_used / (double)st.nvme_capacity : 0.0);
	return 0;
}

static const char *state_of(const struct sparq_session_info *s)
{
	if (s->open && s->parked)
		return "open+parked";
	return s->open ? "open" : "parked";
}

static int cmd_sessions(struct sparq_client *c, const struct opts *o)
{
	struct sparq_session_info *v = calloc(MAX_SESSIONS, sizeof(*v));
	uint32_t n = 0;
	int ret;

	if (!v)
		return -ENOMEM;
	ret = sparq_session_list(c, v, MAX_SESSIONS, &n);
	if (ret)
		goto out;
	if (n > MAX_SESSIONS) {
		fprintf(stderr, "sparqctl: showing %u of %u sessions\n", MAX_SESSIONS, n);
		n = MAX_SESSIONS;
	}
	if (o->json) {
		printf("{\"sessions\": [");
		for (uint32_t i = 0; i < n; i++) {
			const struct sparq_session_info *s = &v[i];

			printf("%s{\"id\": %" PRIu64 ", \"owner_uid\": %u, \"owner_pid\": %u, "
			       "\"geometry\": {\"n_layers\": %u, \"n_q_heads\": %u, \"n_kv_heads\": %u, "
			       "\"head_dim\": %u, \"dtype\": \"%s\"}, \"tokens\": %" PRIu64 ", "
			       "\"ram_records\": %" PRIu64 ", \"nvme_records\": %" PRIu64 ", "
			       "\"open\": %s, \"parked\": %s, \"persistent\": %s, \"label\": ",
			       i ? ", " : "", s->id, s->owner_uid, s->owner_pid, s->geometry.n_layers,
			       s->geometry.n_q_heads, s->geometry.n_kv_heads, s->geometry.head_dim,
			       dtype_name(s->geometry.dtype), s->tokens, s->ram_records,
			       s->nvme_records, s->open ? "true" : "false",
			       s->parked ? "true" : "false", s->persistent ? "true" : "false");
			json_str(s->label);
			printf("}");
		}
		printf("]}\n");
		goto out;
	}
	if (n == 0) {
		printf("no sessions of your uid\n");
		goto out;
	}
	printf("%-20s %-13s %-22s %10s %-17s %-11s %-4s %s\n", "id", "owner", "geometry", "tokens",
	       "placement", "state", "pers", "label");
	for (uint32_t i = 0; i < n; i++) {
		const struct sparq_session_info *s = &v[i];
		char owner[24], geo[40], place[40];
		uint64_t all = s->ram_records + s->nvme_records;

		snprintf(owner, sizeof(owner), "%u/%u", s->owner_uid, s->owner_pid);
		snprintf(geo, sizeof(geo), "L%u H%u/%u d%u %s", s->geometry.n_layers,
			 s->geometry.n_q_heads, s->geometry.n_kv_heads, s->geometry.head_dim,
			 dtype_name(s->geometry.dtype));
		if (!s->open)
			snprintf(place, sizeof(place), "nvme (parked)");
		else if (all == 0)
			snprintf(place, sizeof(place), "-");
		else
			snprintf(place, sizeof(place), "ram %.0f%% nvme %.0f%%",
				 100.0 * (double)s->ram_records / (double)all,
				 100.0 * (double)s->nvme_records / (double)all);
		printf("%-20" PRIu64 " %-13s %-22s %10" PRIu64 " %-17s %-11s %-4s %s\n", s->id, owner,
		       geo, s->tokens, place, state_of(s), s->persistent ? "yes" : "no", s->label);
	}
out:
	free(v);
	return ret;
}

static int cmd_stats(struct sparq_client *c, const struct opts *o)
{
	struct sparq_stats st;
	int ret = sparq_stats_get(c, &st);

	if (ret)
		return ret;
	if (o->json) {
		printf("{\"ops\": [");
		for (uint32_t i = 0; i < st.n_ops; i++)
			printf("%s{\"op\": \"%s\", \"count\": %" PRIu64 ", \"errors\": %" PRIu64
			       ", \"p50_ns\": %" PRIu64 ", \"p99_ns\": %" PRIu64 "}", i ? ", " : "",
			       st.ops[i].op, st.ops[i].count, st.ops[i].errors, st.ops[i].p50_ns,
			       st.ops[i].p99_ns);
		printf("], \"ram_records_read\": %" PRIu64 ", \"nvme_records_read\": %" PRIu64
		       ", \"nvme_bytes_read\": %" PRIu64 ", \"nvme_bytes_written\": %" PRIu64
		       ", \"demotions\": %" PRIu64 ", \"promotions\": %" PRIu64 ", \"parks\": %" PRIu64
		       ", \"resumes\": %" PRIu64 ", \"checksum_failures\": %" PRIu64
		       ", \"read_amplification\": %.6g, \"row_cache_hit_rate\": null}\n",
		       st.ram_records_read, st.nvme_records_read, st.nvme_bytes_read,
		       st.nvme_bytes_written, st.demotions, st.promotions, st.parks, st.resumes,
		       st.checksum_failures, st.read_amplification);
		return 0;
	}
	char p50[24], p99[24], b1[32], b2[32];

	printf("%-8s %12s %8s %10s %10s\n", "op", "count", "errors", "p50", "p99");
	for (uint32_t i = 0; i < st.n_ops; i++) {
		const struct sparq_op_stats *s = &st.ops[i];

		if (s->count == 0)
			continue;
		printf("%-8s %12" PRIu64 " %8" PRIu64 " %10s %10s\n", s->op, s->count, s->errors,
		       human_ns(s->p50_ns, p50, sizeof(p50)), human_ns(s->p99_ns, p99, sizeof(p99)));
	}
	printf("\nrecords read  ram %" PRIu64 ", nvme %" PRIu64 "\n", st.ram_records_read,
	       st.nvme_records_read);
	printf("nvme bytes    read %s, written %s\n", human_bytes(st.nvme_bytes_read, b1, sizeof(b1)),
	       human_bytes(st.nvme_bytes_written, b2, sizeof(b2)));
	printf("chunks        %" PRIu64 " demoted, %" PRIu64 " promoted\n", st.demotions,
	       st.promotions);
	printf("sessions      %" PRIu64 " parked, %" PRIu64 " resumed\n", st.parks, st.resumes);
	printf("read amplification  %.2f (NVMe bytes read per byte asked for)\n",
	       st.read_amplification);
	printf("row-cache hit rate  n/a (the backend reports no row cache)\n");
	printf("checksum failures   %" PRIu64 "\n", st.checksum_failures);
	return 0;
}

static int cmd_config(struct sparq_client *c, const struct opts *o)
{
	struct sparq_config_entry *v = calloc(MAX_CONFIG, sizeof(*v));
	uint32_t n = 0;
	int ret;

	if (!v)
		return -ENOMEM;
	ret = sparq_config_get(c, v, MAX_CONFIG, &n);
	if (ret)
		goto out;
	if (n > MAX_CONFIG)
		n = MAX_CONFIG;
	if (o->json) {
		printf("{");
		for (uint32_t i = 0; i < n; i++) {
			printf("%s", i ? ", " : "");
			json_str(v[i].key);
			printf(": ");
			json_str(v[i].value);
		}
		printf("}\n");
		goto out;
	}
	for (uint32_t i = 0; i < n; i++)
		printf("%-14s = %s\n", v[i].key, v[i].value);
out:
	free(v);
	return ret;
}

static int cmd_session_op(struct sparq_client *c, const struct opts *o)
{
	const char *done;
	int ret;

	if (strcmp(o->cmd, "park") == 0) {
		ret = sparq_session_park(c, o->id);
		done = "parked";
	} else if (strcmp(o->cmd, "resume") == 0) {
		ret = sparq_session_resume(c, o->id, o->to_ram);
		done = o->to_ram ? "resumed into RAM" : "resumed (served from NVMe)";
	} else {
		ret = sparq_session_drop(c, o->id);
		done = "dropped (parked copy removed)";
	}
	if (ret)
		return ret;
	if (o->json)
		printf("{\"session\": %" PRIu64 ", \"%s\": true}\n", o->id, o->cmd);
	else
		printf("session %" PRIu64 " %s\n", o->id, done);
	return 0;
}

static const char *socket_name(const struct opts *o)
{
	const char *env = getenv("SPARQD_SOCKET");

	if (o->socket && *o->socket)
		return o->socket;
	return env && *env ? env : "sparqd-data/" LIBSPARQ_DEFAULT_SOCKET;
}

/* One line on stderr for a failed connect, and the exit code that goes with it. */
static int connect_failed(const char *path, int ret)
{
	switch (ret) {
	case -ENOENT:
		fprintf(stderr, "sparqctl: no sparqd socket at %s: is the daemon running? "
			"(start it with sparqd --data-dir DIR, or pass --socket PATH)\n", path);
		return EXIT_NOT_RUNNING;
	case -ECONNREFUSED:
		fprintf(stderr, "sparqctl: %s: nothing listens there (sparqd stopped or "
			"crashed and left its socket)\n", path);
		return EXIT_NOT_RUNNING;
	case -EACCES:
	case -EPERM:
		fprintf(stderr, "sparqctl: %s: permission denied: the socket belongs to the "
			"daemon's user (see sparqd --socket-mode)\n", path);
		return EXIT_NO_ACCESS;
	case -EPROTONOSUPPORT:
		fprintf(stderr, "sparqctl: %s: the daemon speaks another protocol version\n", path);
		return EXIT_PROTOCOL;
	case -ENOTSOCK:
		fprintf(stderr, "sparqctl: %s is not a socket\n", path);
		return EXIT_NOT_RUNNING;
	default:
		fprintf(stderr, "sparqctl: cannot connect to %s: %s\n", path, strerror(-ret));
		return ret == -ENAMETOOLONG || ret == -EINVAL ? EXIT_USAGE : EXIT_PROTOCOL;
	}
}

int main(int argc, char **argv)
{
	struct opts o = { 0 };
	struct sparq_client *c;
	const char *path;
	int ret;

	if (parse_args(argc, argv, &o))
		return EXIT_USAGE;
	path = socket_name(&o);
	ret = sparq_connect(path, "sparqctl", 0, &c);
	if (ret)
		return connect_failed(path, ret);
	if (!strcmp(o.cmd, "status"))
		ret = cmd_status(c, &o);
	else if (!strcmp(o.cmd, "sessions"))
		ret = cmd_sessions(c, &o);
	else if (!strcmp(o.cmd, "stats"))
		ret = cmd_stats(c, &o);
	else if (!strcmp(o.cmd, "config"))
		ret = cmd_config(c, &o);
	else
		ret = cmd_session_op(c, &o);
	if (ret) {
		const char *why = sparq_client_error(c);

		const char *what = ret == -ENOENT && o.id ? "no such session (or not yours)" :
				   *why ? why : strerror(-ret);

		if (o.id)
			fprintf(stderr, "sparqctl: %s %" PRIu64 ": %s\n", o.cmd, o.id, what);
		else
			fprintf(stderr, "sparqctl: %s: %s\n", o.cmd, what);
		ret = ret == -EPIPE || ret == -ETIMEDOUT || ret == -EPROTO ? EXIT_PROTOCOL
									     : EXIT_REFUSED;
	}
	sparq_disconnect(c);
	fflush(stdout);
	return ret;
}
