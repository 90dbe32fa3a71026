/*
 * test_sparqctl.c — sparqctl against a real sparqd: every command in table and JSON
 * form (each JSON document checked by a strict parser), park/resume/drop of a session
 * made here through libsparq, and the failures an operator meets: bad usage (exit 2),
 * no daemon or a stale socket (3), a socket another user may not reach (4), a session
 * that is not there (1).
 *
 * sparqctl runs as a child process (SPARQCTL_PATH) exactly as a person would run it;
 * its stdout and stderr are captured to files and read back.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon_helpers.h"
#include "helpers.h"
#include "libsparq.h"

#ifndef SPARQCTL_PATH
#error "SPARQCTL_PATH must name the sparqctl binary"
#endif

static int failures;

#define CHECK(cond, ...) T_EXPECT(failures, cond, __VA_ARGS__)

struct run {
	int code;
	char out[65536];
	char err[8192];
};

/* Runs sparqctl with args (NULL-terminated); as_uid >= 0 drops to that uid first. */
static void ctl(struct run *r, const char *dir, int as_uid, const char *const *args)
{
	char out[PATH_MAX], err[PATH_MAX];
	const char *argv[32];
	size_t n = 0;
	int status;
	pid_t pid;

	snprintf(out, sizeof(out), "%s/ctl.out", dir);
	snprintf(err, sizeof(err), "%s/ctl.err", dir);
	argv[n++] = SPARQCTL_PATH;
	for (size_t i = 0; args[i] && n < 31; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	fflush(NULL);
	pid = fork();
	if (pid < 0)
		T_DAEMON_DIE(T_EXIT_FAIL, "fork: %s", strerror(errno));
	if (pid == 0) {
		int fo = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0666);
		int fe = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0666);

		if (fo < 0 || fe < 0 || dup2(fo, 1) < 0 || dup2(fe, 2) < 0)
			_exit(126);
		if (as_uid >= 0 && (setgid((gid_t)as_uid) || setuid((uid_t)as_uid)))
			_exit(126);
		execv(SPARQCTL_PATH, (char *const *)argv);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) != pid)
		T_DAEMON_DIE(T_EXIT_FAIL, "waitpid: %s", strerror(errno));
	r->code = t_exit_code(status);
	t_slurp(out, r->out, sizeof(r->out));
	t_slurp(err, r->err, sizeof(r->err));
}

/*
 * Whether uid may execute path: a build tree under a 0700 directory (a mktemp -d clone,
 * a home directory) is out of its reach whatever the socket's mode says.
 */
static bool uid_can_exec(int uid, const char *path)
{
	int status;
	pid_t pid = fork();

	if (pid < 0)
		T_DAEMON_DIE(T_EXIT_FAIL, "fork: %s", strerror(errno));
	if (pid == 0) {
		if (setgid((gid_t)uid) || setuid((uid_t)uid))
			_exit(2);
		_exit(access(path, X_OK) == 0 ? 0 : 1);
	}
	if (waitpid(pid, &status, 0) != pid)
		T_DAEMON_DIE(T_EXIT_FAIL, "waitpid: %s", strerror(errno));
	return t_exit_code(status) == 0;
}

/* ---- a strict JSON parser (RFC 8259): true when the whole text is one value ---- */

static void ws(const char **p)
{
	while (**p == ' ' || **p == '\t' || **p == '\n' || **p == '\r')
		(*p)++;
}

static bool value(const char **p, int depth);

static bool string(const char **p)
{
	if (**p != '"')
		return false;
	for ((*p)++; **p != '"'; (*p)++) {
		if ((unsigned char)**p < 0x20)
			return false;
		if (**p == '\\') {
			(*p)++;
			if (**p == 'u') {
				for (int i = 1; i <= 4; i++)
					if (!strchr("0123456789abcdefABCDEF", (*p)[i]) || !(*p)[i])
						return false;
				*p += 4;
			} else if (!**p || !strchr("\"\\/bfnrt", **p)) {
				return false;
			}
		}
	}
	(*p)++;
	return true;
}

static bool number(const char **p)
{
	const char *s = *p;

	if (**p == '-')
		(*p)++;
	if (**p == '0')
		(*p)++;
	else if (**p >= '1' && **p <= '9')
		while (**p >= '0' && **p <= '9')
			(*p)++;
	else
		return false;
	if (**p == '.') {
		(*p)++;
		if (!(**p >= '0' && **p <= '9'))
			return false;
		while (**p >= '0' && **p <= '9')
			(*p)++;
	}
	if (**p == 'e' || **p == 'E') {
		(*p)++;
		if (**p == '+' || **p == '-')
			(*p)++;
		if (!(**p >= '0' && **p <= '9'))
			return false;
		while (**p >= '0' && **p <= '9')
			(*p)++;
	}
	return *p > s;
}

static bool members(const char **p, char close, bool keyed, int depth)
{
	(*p)++;
	ws(p);
	if (**p == close) {
		(*p)++;
		return true;
	}
	for (;;) {
		ws(p);
		if (keyed) {
			if (!string(p))
				return false;
			ws(p);
			if (*(*p)++ != ':')
				return false;
		}
		if (!value(p, depth + 1))
			return false;
		ws(p);
		if (**p == ',') {
			(*p)++;
			continue;
		}
		if (**p != close)
			return false;
		(*p)++;
		return true;
	}
}

static bool value(const char **p, int depth)
{
	if (depth > 32)
		return false;
	ws(p);
	switch (**p) {
	case '{':
		return members(p, '}', true, depth);
	case '[':
		return members(p, ']', false, depth);
	case '"':
		return string(p);
	case 't':
		return strncmp(*p, "true", 4) == 0 && (*p += 4);
	case 'f':
		return strncmp(*p, "false", 5) == 0 && (*p += 5);
	case 'n':
		return strncmp(*p, "null", 4) == 0 && (*p += 4);
	default:
		return number(p);
	}
}

static bool json_ok(const char *text)
{
	const char *p = text;

	if (!value(&p, 0))
		return false;
	ws(&p);
	return *p == '\0';
}

static void test_json_parser(void)
{
	/* the parser must be able to say no, or the JSON checks below prove nothing */
	CHECK(json_ok("{\"a\": [1, -2.5e3, true, null, \"x\\n\"]}\n"), "valid JSON refused");
	CHECK(!json_ok("{\"a\": 1,}"), "trailing comma accepted");
	CHECK(!json_ok("{\"a\": 01}"), "leading zero accepted");
	CHECK(!json_ok("{\"a\": \"x\"} {}"), "two documents accepted");
	CHECK(!json_ok("{\"a\": nan}"), "nan accepted");
	CHECK(!json_ok("{a: 1}"), "bare key accepted");
}

/* ---- the tests ---- */

static void fill(uint16_t *x, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		x[i] = sparq_f32_to_f16((float)((i * 2654435761u + seed) % 2001) / 1000.0f - 1.0f);
}

int main(void)
{
	struct t_daemon d;
	struct run *r = calloc(1, sizeof(*r));
	struct sparq_client *c = NULL;
	struct sparq_session_opts so = {
		.geometry = { .n_layers = 2, .n_q_heads = 4, .n_kv_heads = 2, .head_dim = 64,
			      .dtype = SPARQ_CLIENT_F16 },
		.defaults = { .r = 16, .k = 32, .l = -1 },
		.persistent = true,
		.label = "ctl \"test\"",
	};
	const uint32_t tokens = 100;
	uint16_t *k = malloc((size_t)tokens * 2 * 64 * 2), *v = malloc((size_t)tokens * 2 * 64 * 2);
	char id_s[32], want[128], stale[PATH_MAX];
	uint64_t id;
	int ret;

	if (!r || !k || !v)
		return T_EXIT_FAIL;
	test_json_parser();
	t_daemon_need_own("sparqctl's failure cases (stopped daemon, foreign user)");
	t_daemon_start(&d, NULL, NULL);
	const char *S = d.socket;

	/* usage errors: exit 2, nothing sent */
	ctl(r, d.dir, -1, (const char *[]){ NULL });
	CHECK(r->code == 2, "no command: exit %d", r->code);
	ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "frob", NULL });
	CHECK(r->code == 2 && strstr(r->err, "unknown command"), "frob: %d %s", r->code, r->err);
	ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "park", NULL });
	CHECK(r->code == 2 && strstr(r->err, "needs a session id"), "park: %d %s", r->code, r->err);
	ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "park", "12x", NULL });
	CHECK(r->code == 2 && strstr(r->err, "not a session id"), "park 12x: %d %s", r->code, r->err);
	ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "status", "7", NULL });
	CHECK(r->code == 2, "status 7: exit %d", r->code);
	ctl(r, d.dir, -1, (const char *[]){ "--help", NULL });
	CHECK(r->code == 0 && strstr(r->out, "exit status"), "--help: %d", r->code);

	/* status */
	ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "status", NULL });
	CHECK(r->code == 0, "status: exit %d: %s", r->code, r->err);
	CHECK(strstr(r->out, "backend  cpu") && strstr(r->out, "ram ") && strstr(r->out, "nvme "),
	      "status table: %s", r->out);
	CHECK(strstr(r->out, "256.0 MiB"), "status shows the RAM capacity: %s", r->out);
	ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "--json", "status", NULL });
	CHECK(r->code == 0 && json_ok(r->out), "status --json: %d %s", r->code, r->out);
	CHECK(strstr(r->out, "\"capacity\": 268435456") && strstr(r->out, "\"gpu\": null"),
	      "status --json fields: %s", r->out);

	/* a session of ours, through the library an engine uses */
	ret = sparq_connect(S, "ctl-test", 0, &c);
	CHECK(ret == 0, "connect: %d", ret);
	if (ret)
		return T_EXIT_FAIL;
	ret = sparq_session_create(c, &so, &id);
	CHECK(ret == 0, "create: %d %s", ret, sparq_client_error(c));
	fill(k, (size_t)tokens * 2 * 64, 1);
	fill(v, (size_t)tokens * 2 * 64, 2);
	for (uint32_t l = 0; l < 2 && !ret; l++)
		ret = sparq_append(c, id, l, tokens, k, v);
	CHECK(ret == 0, "append: %d %s", ret, sparq_client_error(c));
	snprintf(id_s, sizeof(id_s), "%" PRIu64, id);

	ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "sessions", NULL });
	CHECK(r->code == 0 && strstr(r->out, id_s) && strstr(r->out, "L2 H4/2 d64 f16") &&
	      strstr(r->out, "ram 100% nvme 0%") && strstr(r->out, "open "),
	      "sessions table: %d %s", r->code, r->out);
	ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "--json", "sessions", NULL });
	CHECK(r->code == 0 && json_ok(r->out), "sessions --json: %s", r->out);
	snprintf(want, sizeof(want), "\"id\": %s,", id_s);
	CHECK(strstr(r->out, want) && strstr(r->out, "\"tokens\": 100,") &&
	      strstr(r->out, "\"ram_records\": 400,") && strstr(r->out, "\"nvme_records\": 0,") &&
	      strstr(r->out, "\"label\": \"ctl \\\"test\\\"\"") && strstr(r->out, "\"persistent\": true"),
	      "sessions --json fields: %s", r->out);

	/* stats count what we did */
	ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "stats", NULL });
	CHECK(r->code == 0 && strstr(r->out, "append ") && strstr(r->out, "checksum failures"),
	      "stats: %d %s", r->code, r->out);
	ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "--json", "stats", NULL });
	CHECK(r->code == 0 && json_ok(r->out), "stats --json: %s", r->out);
	CHECK(strstr(r->out, "{\"op\": \"append\", \"count\": 2, \"errors\": 0") &&
	      strstr(r->out, "{\"op\": \"create\", \"count\": 1,") &&
	      strstr(r->out, "\"checksum_failures\": 0"), "stats --json counts: %s", r->out);

	/* config: the effective values, flags over defaults */
	ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "config", NULL });
	CHECK(r->code == 0 && strstr(r->out, "workers        = 2") &&
	      strstr(r->out, "metrics-port   = 0"), "config: %d %s", r->code, r->out);
	ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "--json", "config", NULL });
	CHECK(r->code == 0 && json_ok(r->out) && strstr(r->out, "\"ram-bytes\": \"268435456\"") &&
	      strstr(r->out, "\"backend\": \"cpu\""), "config --json: %s", r->out);

	/* park, park again (refused), the copy shows, then the owner goes */
	ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "park", id_s, NULL });
	CHECK(r->code == 0 && strstr(r->out, "parked"), "park: %d %s %s", r->code, r->out, r->err);
	ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "park", id_s, NULL });
	CHECK(r->code == 1 && strstr(r->err, id_s), "park twice: %d %s", r->code, r->err);
	ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "sessions", NULL });
	CHECK(strstr(r->out, "open+parked"), "sessions after park: %s", r->out);
	sparq_disconnect(c);
	c = NULL;
	/* the owner's departure closes the session (already parked); wait for it */
	for (int i = 0; i < 500; i++) {
		ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "--json", "sessions", NULL });
		if (strstr(r->out, "\"open\": false"))
			break;
		t_daemon_sleep_ms(10);
	}
	CHECK(strstr(r->out, "\"open\": false") && strstr(r->out, "\"parked\": true"),
	      "parked and closed: %s", r->out);
	ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "sessions", NULL });
	CHECK(strstr(r->out, "nvme (parked)"), "placement of a parked session: %s", r->out);

	/* resume into RAM, then drop the parked copy: gone */
	ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "resume", id_s, "--to-ram", NULL });
	CHECK(r->code == 0 && strstr(r->out, "resumed into RAM"), "resume: %d %s %s", r->code,
	      r->out, r->err);
	ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "drop", id_s, NULL });
	CHECK(r->code == 0 && strstr(r->out, "dropped"), "drop: %d %s %s", r->code, r->out, r->err);
	for (int i = 0; i < 500; i++) {
		ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "sessions", NULL });
		if (strstr(r->out, "no sessions"))
			break;
		t_daemon_sleep_ms(10);
	}
	CHECK(strstr(r->out, "no sessions of your uid"), "sessions after drop: %s", r->out);
	ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "drop", id_s, NULL });
	CHECK(r->code == 1 && strstr(r->err, "no such session"), "drop twice: %d %s", r->code,
	      r->err);
	ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "park", "999999", NULL });
	CHECK(r->code == 1 && strstr(r->err, "no such session (or not yours)"),
	      "park unknown: %d %s", r->code, r->err);

	/* someone else may not reach the socket (mode 0600 in a 0700 directory) */
	if (geteuid() != 0) {
		printf("note: not root, the foreign-uid case is not exercised\n");
	} else if (!uid_can_exec(65534, SPARQCTL_PATH)) {
		printf("note: uid 65534 cannot reach %s (a 0700 directory above the build?), "
		       "the foreign-uid case is not exercised\n", SPARQCTL_PATH);
	} else {
		ctl(r, d.dir, 65534, (const char *[]){ "--socket", S, "status", NULL });
		CHECK(r->code == 4 && strstr(r->err, "permission denied"),
		      "foreign uid: %d %s", r->code, r->err);
	}

	/* a stale socket file (nothing listens), then no daemon at all */
	snprintf(stale, sizeof(stale), "%s/stale.sock", d.dir);
	{
		struct sockaddr_un a = { .sun_family = AF_UNIX };
		int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);

		CHECK(strlen(stale) < sizeof(a.sun_path), "stale path too long: %s", stale);
		memcpy(a.sun_path, stale, strlen(stale) < sizeof(a.sun_path) ? strlen(stale) : 0);
		CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0, "bind stale");
		close(fd);
	}
	ctl(r, d.dir, -1, (const char *[]){ "--socket", stale, "status", NULL });
	CHECK(r->code == 3 && strstr(r->err, "nothing listens"), "stale: %d %s", r->code, r->err);
	CHECK(t_daemon_stop(&d) == 0, "daemon stop");
	ctl(r, d.dir, -1, (const char *[]){ "--socket", S, "status", NULL });
	CHECK(r->code == 3 && strstr(r->err, "is the daemon running"), "stopped: %d %s", r->code,
	      r->err);

	t_daemon_cleanup(&d);
	free(r);
	free(k);
	free(v);
	if (failures) {
		fprintf(stderr, "%d checks failed\n", failures);
		return T_EXIT_FAIL;
	}
	printf("sparqctl: all checks passed\n");
	return T_EXIT_PASS;
}
