/*
 * test_daemon_config.c — sparqd's settings (issue 4: "every value is validated at
 * start with a clear message"): each bad value on the command line or in a --config
 * file makes sparqd exit 2 with a message naming the option (and the file line), and
 * nothing is created: not the data directory, not the socket. A valid file applies, a
 * flag beats the file, and a data directory that exists as a plain file is refused.
 * The test-only --cuda-fault is refused without --allow-fault-injection (also from a
 * file), validated (N or N:sticky, N >= 1), refused with --backend cpu, and starts
 * when allowed.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "daemon_helpers.h"
#include "helpers.h"

static char base[3072];

/* Runs sparqd with args (NULL-terminated); returns its exit code, its stderr in err. */
static int run(const char *const *args, char *err, size_t cap)
{
	const char *argv[64];
	int pipefd[2], status, argc = 0;
	size_t got = 0;
	ssize_t n;
	pid_t pid;

	argv[argc++] = SPARQD_PATH;
	for (int i = 0; args[i]; i++)
		argv[argc++] = args[i];
	argv[argc] = NULL;
	T_CHECK(pipe(pipefd) == 0, "pipe: %s", strerror(errno));
	fflush(NULL);
	pid = fork();
	T_CHECK(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		dup2(pipefd[1], STDERR_FILENO);
		dup2(pipefd[1], STDOUT_FILENO);
		close(pipefd[0]);
		execv(SPARQD_PATH, (char *const *)argv);
		_exit(127);
	}
	close(pipefd[1]);
	while (got + 1 < cap && (n = read(pipefd[0], err + got, cap - 1 - got)) > 0)
		got += (size_t)n;
	err[got] = '\0';
	close(pipefd[0]);
	T_CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
	/* a daemon that started despite a bad value would never get here: it serves */
	return t_exit_code(status);
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	T_CHECK(f && fputs(text, f) >= 0 && fclose(f) == 0, "writing %s", path);
}

static bool exists(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0;
}

/* One bad setting: exit 2, the message says want, nothing appears in base. */
static void bad(const char *want, const char *a0, const char *a1, const char *a2)
{
	char data[PATH_MAX], sock[PATH_MAX], err[8192];
	const char *args[16];
	int n = 0, code;

	snprintf(data, sizeof(data), "%s/data", base);
	snprintf(sock, sizeof(sock), "%s/s.sock", base);
	args[n++] = "--data-dir";
	args[n++] = data;
	args[n++] = "--socket";
	args[n++] = sock;
	args[n++] = "--ram-bytes";
	args[n++] = "64M";
	args[n++] = "--nvme-bytes";
	args[n++] = "256M";
	args[n++] = a0;
	if (a1)
		args[n++] = a1;
	if (a2)
		args[n++] = a2;
	args[n] = NULL;
	code = run(args, err, sizeof(err));
	T_CHECK(code == 2, "%s %s: exit %d, not 2; output: %s", a0, a1 ? a1 : "", code, err);
	T_CHECK(strstr(err, "sparqd: error: ") && strstr(err, want),
		"%s %s: message lacks '%s': %s", a0, a1 ? a1 : "", want, err);
	T_CHECK(!exists(data) && !exists(sock), "%s %s: something was created", a0,
		a1 ? a1 : "");
}

int main(void)
{
	const char *tmp = getenv("SPARQ_TEST_DIR");
	char cfg[PATH_MAX], long_path[400], out[8192];
	struct t_daemon d = { 0 };
	struct stat st;

	t_daemon_need_own("the config test");
	snprintf(base, sizeof(base), "%s/sparqd-config-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	T_CHECK(mkdtemp(base), "mkdtemp: %s", strerror(errno));
	snprintf(cfg, sizeof(cfg), "%s/sparqd.conf", base);

	/* the command line */
	bad("--threads", "--threads", "x", NULL);
	bad("--threads", "--threads", "-1", NULL);
	bad("--threads", "--threads", "5000", NULL);
	bad("--workers", "--workers", "0", NULL);
	bad("power of two", "--ring-entries", "100", NULL);
	bad("--ring-entries", "--ring-entries", "4", NULL);
	bad("multiple of 4096", "--chunk-bytes", "5000", NULL);
	bad("--ram-bytes", "--ram-bytes", "12Q", NULL);
	bad("--ram-bytes", "--ram-bytes", "1K", NULL);
	bad("--nvme-bytes", "--nvme-bytes", "-1G", NULL);
	bad("--nvme-bytes", "--nvme-bytes", "99999999999T", NULL);
	bad("--shm-bytes", "--shm-bytes", "1K", NULL);
	bad("--socket-mode", "--socket-mode", "0999", NULL);
	bad("--socket-mode", "--socket-mode", "rw", NULL);
	bad("--backend", "--backend", "gpu", NULL);
	bad("--key-slice: 'fp8' is not native or int8", "--key-slice", "fp8", NULL);
	bad("--key-slice: 'INT8'", "--key-slice=INT8", NULL, NULL);
	bad("--log-level", "--log-level", "loud", NULL);
	bad("--record-reads: 'zero-copy' is not in-place or copy", "--record-reads", "zero-copy",
	    NULL);
	bad("--max-clients", "--max-clients", "0", NULL);
	bad("unknown option", "--bogus", NULL, NULL);
	bad("needs a value", "--threads", NULL, NULL);
	bad("takes no value", "--foreground=yes", NULL, NULL);
	bad("unexpected argument", "extra", NULL, NULL);
	bad("smaller than one chunk", "--ram-bytes", "1M", "--chunk-bytes=2M");
	memset(long_path, 'x', sizeof(long_path) - 1);
	long_path[0] = '/';
	long_path[sizeof(long_path) - 1] = '\0';
	bad("--socket", "--socket", long_path, NULL);
	bad("--config", "--config", "/nonexistent/sparqd.conf", NULL);
	/* test-only CUDA faults: refused unless fault injection is allowed, then validated */
	bad("--cuda-fault: refused", "--cuda-fault", "3", NULL);
	bad("--cuda-fault: refused", "--cuda-fault=1:sticky", NULL, NULL);
	bad("--cuda-fault: '0'", "--allow-fault-injection", "--cuda-fault=0", NULL);
	bad("--cuda-fault: 'x'", "--allow-fault-injection", "--cuda-fault=x", NULL);
	bad("--cuda-fault: '-1'", "--allow-fault-injection", "--cuda-fault=-1", NULL);
	bad("--cuda-fault: '3:often'", "--allow-fault-injection", "--cuda-fault=3:often", NULL);
	bad("--cuda-fault: '4294967296'", "--allow-fault-injection", "--cuda-fault=4294967296",
	    NULL);
	bad("--cuda-fault: spec longer", "--allow-fault-injection",
	    "--cuda-fault=1234567890123456789012345678901234", NULL);
	bad("--cuda-fault: the CPU backend", "--backend=cpu", "--allow-fault-injection",
	    "--cuda-fault=3");
	write_file(cfg, "cuda-fault = 2\n");
	bad("--cuda-fault: refused", "--config", cfg, NULL);
	/* checked by the tier manager, after the directory exists: it goes again */
	bad("--ram-bytes", "--ram-bytes", "1000T", NULL);

	/* the config file: the line is named */
	write_file(cfg, "# comment\nworkers = 2\nbogus = 1\n");
	bad(":3: unknown key 'bogus'", "--config", cfg, NULL);
	write_file(cfg, "workers = 0\n");
	bad(":1: --workers", "--config", cfg, NULL);
	write_file(cfg, "\n\nthreads 4\n");
	bad(":3: expected \"key = value\"", "--config", cfg, NULL);
	write_file(cfg, "key-slice = int4\n");
	bad(":1: --key-slice: 'int4'", "--config", cfg, NULL);
	write_file(cfg, "foreground = maybe\n");
	bad(":1: foreground takes true or false", "--config", cfg, NULL);
	write_file(cfg, "config = /etc/other.conf\n");
	bad(":1: unknown key 'config'", "--config", cfg, NULL);
	write_file(cfg, "record-reads = zerocopy\n");
	bad(":1: --record-reads: 'zerocopy'", "--config", cfg, NULL);

	/* help and version answer and exit 0 */
	T_CHECK(run((const char *const[]){ "--help", NULL }, out, sizeof(out)) == 0 &&
			strstr(out, "--ring-entries"), "--help: %s", out);
	T_CHECK(run((const char *const[]){ "--version", NULL }, out, sizeof(out)) == 0 &&
			strstr(out, "sparqd "), "--version: %s", out);

	/* a valid file applies; a flag beats it; a default stands where neither speaks */
	write_file(cfg, "socket-mode = 0640\nmax-clients = 8\nlog-level = debug\n"
			"record-reads = copy\nkey-slice = int8\n");
	t_daemon_start(&d, NULL, (const char *const[]){ "--config", cfg, NULL });
	T_CHECK(stat(d.socket, &st) == 0 && (st.st_mode & 0777) == 0640,
		"socket mode %o, the file said 0640", st.st_mode & 0777);
	T_CHECK(t_daemon_stop(&d) == 0, "sparqd did not stop cleanly");
	t_daemon_start(&d, d.dir,
		       (const char *const[]){ "--config", cfg, "--socket-mode", "0600", NULL });
	T_CHECK(stat(d.socket, &st) == 0 && (st.st_mode & 0777) == 0600,
		"socket mode %o, the flag said 0600", st.st_mode & 0777);
	T_CHECK(t_daemon_stop(&d) == 0, "sparqd did not stop cleanly");
	/* allowed, it starts: the CUDA backend where one answers (auto), else a warning */
	t_daemon_start(&d, d.dir, (const char *const[]){ "--backend", "auto",
							  "--allow-fault-injection",
							  "--cuda-fault", "2:sticky", NULL });
	T_CHECK(t_daemon_stop(&d) == 0, "sparqd with --cuda-fault did not stop cleanly");
	t_daemon_cleanup(&d);

	/* a data directory path that is a plain file: a clear error, the file untouched */
	{
		char file[PATH_MAX], sock[PATH_MAX], err[8192];
		int code;

		snprintf(file, sizeof(file), "%s/plain", base);
		snprintf(sock, sizeof(sock), "%s/p.sock", base);
		write_file(file, "keep me\n");
		code = run((const char *const[]){ "--data-dir", file, "--socket", sock,
						   "--ram-bytes", "64M", "--nvme-bytes", "256M",
						   NULL }, err, sizeof(err));
		T_CHECK(code != 0 && strstr(err, file), "data dir is a file: exit %d: %s", code, err);
		T_CHECK(stat(file, &st) == 0 && st.st_size == 8 && !exists(sock),
			"the plain file changed or a socket appeared");
	}

	snprintf(out, sizeof(out), "rm -rf '%s'", base);
	T_CHECK(system(out) == 0, "cleanup");
	printf("PASS\n");
	return T_EXIT_PASS;
}
