/*
 * test_stress.c — a short sparq-stress run in CI (under a minute): it starts its own
 * sparqd with an 8 MiB RAM tier, so three clients' sessions spill to NVMe; appends,
 * attends and gathers are verified bit for bit, clients churn through park/resume,
 * victims are SIGKILLed mid-request. The run must pass, must really have demoted to
 * NVMe, resumed and killed, and must write its JSON and CSV. A second, tiny run with
 * --inject-mismatch must fail: the oracle is able to see a wrong answer.
 *
 * With the argument "faults" it runs the NVMe fault mode instead (a separate CTest):
 * a default sparqd refuses --nvme-fault; then sparq-stress --nvme-faults starts its
 * daemon with the test-only switch, injected read failures must reach clients as
 * -EIO, everything acknowledged must still verify, and the daemon must report the
 * failed NVMe requests at exit (at least as many as the clients saw).
 *
 * Runs in a fresh directory under $SPARQ_TEST_DIR (the tool makes its daemon's
 * directory in the current one); skips (77) where that refuses O_DIRECT or io_uring.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon_helpers.h"
#include "helpers.h"

#ifndef SPARQ_STRESS_PATH
#error "SPARQ_STRESS_PATH must name the sparq-stress binary"
#endif

static int failures;

#define CHECK(cond, ...) T_EXPECT(failures, cond, __VA_ARGS__)

/* The first MiB of path in a buffer the caller frees ("" when unreadable, NULL on ENOMEM). */
static char *slurp(const char *path)
{
	char *buf = malloc(1 << 20);

	if (buf)
		t_slurp(path, buf, 1 << 20);
	return buf;
}

/* Runs sparq-stress with args; stdout+stderr go to dir/name.log. Exit code. */
static int stress(const char *dir, const char *name, const char *const *args)
{
	char log[PATH_MAX];
	const char *argv[48] = { SPARQ_STRESS_PATH };
	size_t n = 1;
	int status;
	pid_t pid;

	snprintf(log, sizeof(log), "%s/%s.log", dir, name);
	for (size_t i = 0; args[i] && n < 47; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0600);

		if (fd < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0 || chdir(dir))
			_exit(126);
		setenv("SPARQD", SPARQD_PATH, 1);
		execv(SPARQ_STRESS_PATH, (char *const *)argv);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &status, 0) != pid)
		return -1;
	return t_exit_code(status);
}

/* The unsigned number after "key": in a JSON text, or -1. */
static long long json_num(const char *json, const char *key)
{
	char pat[64];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\": ", key);
	p = strstr(json, pat);
	return p ? strtoll(p + strlen(pat), NULL, 10) : -1;
}

/* Whether a run that could not start its daemon failed on the directory's filesystem. */
static bool fs_refused(const char *dir, int code, const char *log)
{
	if (code != 3 || !log || !(strstr(log, "O_DIRECT") || strstr(log, "io_uring")))
		return false;
	printf("SKIP: %s refuses O_DIRECT or io_uring\n", dir);
	return true;
}

/* The N in the daemon's exit line "fault injection: N NVMe requests failed", or -1. */
static long long daemon_faults(const char *log)
{
	const char *p = log ? strstr(log, "fault injection: ") : NULL;

	return p ? strtoll(p + strlen("fault injection: "), NULL, 10) : -1;
}

/* Exit code of sparqd given args, with no socket ever opened (a refused config). */
static int sparqd_exit(const char *const *args)
{
	const char *argv[16] = { SPARQD_PATH };
	int status, fd;
	size_t n = 1;
	pid_t pid;

	for (size_t i = 0; args[i] && n < 15; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		fd = open("/dev/null", O_WRONLY);
		if (fd >= 0)
			dup2(fd, 2);
		execv(SPARQD_PATH, (char *const *)argv);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &status, 0) != pid)
		return -1;
	return t_exit_code(status);
}

static int run_faults(const char *dir)
{
	char path[PATH_MAX], data[PATH_MAX];
	char *log, *json;
	int code;

	/* never reachable from a default daemon: refused before anything is created */
	snprintf(data, sizeof(data), "%s/refused", dir);
	code = sparqd_exit((const char *const[]){ "--data-dir", data, "--nvme-fault", "eio", NULL });
	CHECK(code == 2, "sparqd --nvme-fault without --allow-fault-injection exited %d, not 2", code);
	CHECK(access(data, F_OK) != 0, "the refused daemon created %s", data);
	code = sparqd_exit((const char *const[]){ "--data-dir", data, "--allow-fault-injection",
						  "--nvme-fault", "eio:after=x", NULL });
	CHECK(code == 2, "a bad --nvme-fault spec exited %d, not 2", code);

	code = stress(dir, "faults", (const char *const[]){
		"--clients", "3", "--sessions", "2", "--context", "2048", "--duration", "8",
		"--churn", "2", "--ram-bytes", "8M", "--nvme-bytes", "1G", "--seed", "11",
		"--nvme-faults", "200:40", "--json", "faults.json", NULL });
	snprintf(path, sizeof(path), "%s/faults.log", dir);
	log = slurp(path);
	if (fs_refused(dir, code, log)) {
		free(log);
		return T_EXIT_SKIP;
	}
	snprintf(path, sizeof(path), "%s/faults.json", dir);
	json = slurp(path);
	CHECK(code == 0 && json && strstr(json, "\"pass\": true"),
	      "fault run exited %d:\n%s\n%s", code, log ? log : "", json ? json : "");
	CHECK(json_num(json, "mismatches") == 0 && json_num(json, "lost") == 0 &&
	      json_num(json, "errors") == 0, "acknowledged data changed under faults: %s", json);
	CHECK(json_num(json, "fault_errors") > 0, "no injected fault reached a client: %s", json);
	CHECK(json_num(json, "total_ops") > 100, "the daemon stopped serving: %s", json);
	CHECK(daemon_faults(log) >= json_num(json, "fault_errors") && daemon_faults(log) <= 40,
	      "daemon reports %lld failed NVMe requests, clients saw %lld -EIO, 40 armed",
	      daemon_faults(log), json_num(json, "fault_errors"));
	free(log);
	free(json);
	return T_EXIT_PASS;
}

int main(int argc, char **argv)
{
	const char *base = getenv("SPARQ_TEST_DIR");
	char dir[PATH_MAX - 64], path[PATH_MAX];
	char *log, *json, *csv;
	int code;

	snprintf(dir, sizeof(dir), "%s/sparq-stress-test-XXXXXX", base && *base ? base : "/tmp");
	if (!mkdtemp(dir))
		T_DAEMON_DIE(T_EXIT_FAIL, "mkdtemp %s: %s", dir, strerror(errno));
	if (argc > 1 && strcmp(argv[1], "faults") == 0) {
		if (run_faults(dir) == T_EXIT_SKIP)
			return T_EXIT_SKIP;
		goto done;
	}

	code = stress(dir, "run", (const char *const[]){
		"--clients", "3", "--sessions", "2", "--context", "2048", "--layers", "2",
		"--q-heads", "8", "--kv-heads", "2", "--head-dim", "128", "--duration", "15",
		"--churn", "3", "--kill-ms", "200", "--ram-bytes", "8M", "--nvme-bytes", "1G",
		"--seed", "7", "--json", "run.json", NULL });
	snprintf(path, sizeof(path), "%s/run.log", dir);
	log = slurp(path);
	if (fs_refused(dir, code, log))
		return T_EXIT_SKIP;
	CHECK(code == 0, "stress run exited %d:\n%s", code, log ? log : "");
	snprintf(path, sizeof(path), "%s/run.json", dir);
	json = slurp(path);
	snprintf(path, sizeof(path), "%s/run.csv", dir);
	csv = slurp(path);
	CHECK(json && strstr(json, "\"pass\": true"), "JSON says pass: %s", json ? json : "");
	CHECK(json_num(json, "mismatches") == 0 && json_num(json, "lost") == 0 &&
	      json_num(json, "errors") == 0, "clean run: %s", json);
	CHECK(json_num(json, "total_ops") > 100, "ops: %lld", json_num(json, "total_ops"));
	CHECK(json_num(json, "demotions") > 0, "the sessions did not spill to NVMe: %s", json);
	CHECK(json_num(json, "kills") > 0 && json_num(json, "victim_leaks") == 0,
	      "victims: %lld killed, %lld leaked", json_num(json, "kills"),
	      json_num(json, "victim_leaks"));
	CHECK(strstr(json, "{\"op\": \"resume\"") && strstr(json, "{\"op\": \"attend\", \"tier\": \"nvme\""),
	      "resumes and NVMe-tier attends happened: %s", json);
	CHECK(csv && !strncmp(csv, "t_s,op,tier,ops,ops_per_s,p50_us,p99_us,ram_used_mib,nvme_used_mib\n", 67) &&
	      strstr(csv, ",attend,"), "CSV timeline: %.200s", csv ? csv : "");
	free(log);
	free(json);
	free(csv);

	/* the oracle must be able to fail */
	code = stress(dir, "inject", (const char *const[]){
		"--clients", "1", "--sessions", "1", "--context", "256", "--duration", "3",
		"--mix", "0:1:1", "--churn", "0", "--inject-mismatch", "--json", "inject.json", NULL });
	snprintf(path, sizeof(path), "%s/inject.json", dir);
	json = slurp(path);
	CHECK(code == 1 && json && json_num(json, "mismatches") >= 1 && strstr(json, "\"pass\": false"),
	      "an injected mismatch went unseen: exit %d, %s", code, json ? json : "");
	free(json);

done:
	if (!failures) {
		char cmd[PATH_MAX + 16];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", dir);
		printf("stress: all checks passed\n");
		return T_EXIT_PASS;
	}
	fprintf(stderr, "%d checks failed (logs in %s)\n", failures, dir);
	return T_EXIT_FAIL;
}
