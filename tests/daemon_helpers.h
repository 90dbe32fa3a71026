/*
 * daemon_helpers.h — how integration tests get a real sparqd (STYLE.md §11, memcached
 * t/lib style): start build/daemon/sparqd (SPARQD_PATH, a compile definition CMake
 * passes) on a private directory and socket with --ready-file, wait for the ready file
 * with a bounded timeout, and stop it at teardown (SIGTERM, then SIGKILL) and reap it.
 *
 * $SPARQ_TEST_SOCKET points a suite at a daemon that already runs instead; tests that
 * must stop, kill or restart the daemon skip there (t_daemon_need_own). Private
 * directories live under $SPARQ_TEST_DIR (default /tmp); a directory that refuses
 * O_DIRECT or io_uring makes the daemon say so and exit before it is ready: the test
 * then skips with 77, as the tier tests do.
 *
 * A test that fails through exit() must not leave a daemon behind: each daemon started
 * here dies with the test (PR_SET_PDEATHSIG) and an atexit handler kills and reaps the
 * ones still running and removes their directories. Start daemons from the main thread
 * (the death signal follows the thread that forked).
 *
 * Header-only like helpers.h; needs no library besides libc. Functions exit 1 (fail)
 * or 77 (skip) with a message on setup failures, so tests read straight.
 */
#ifndef SPARQ_TEST_DAEMON_HELPERS_H
#define SPARQ_TEST_DAEMON_HELPERS_H

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "proc_helpers.h"

#ifndef SPARQD_PATH
#error "SPARQD_PATH must name the sparqd binary (tests/CMakeLists.txt passes it)"
#endif

#define T_DAEMON_EXIT_PASS 0
#define T_DAEMON_EXIT_FAIL 1
#define T_DAEMON_EXIT_SKIP 77

/* Seconds to wait for the ready file; sanitizer builds start slowly. */
#define T_DAEMON_READY_S 60
/* Seconds between SIGTERM and SIGKILL at teardown. */
#define T_DAEMON_STOP_S 30
/* Daemons one test may hold at once (e.g. a restart test holds one at a time). */
#define T_DAEMON_MAX 8

struct t_daemon {
	pid_t pid;                 /* 0: not running here (stopped, or external) */
	bool external;             /* $SPARQ_TEST_SOCKET serves; nothing to start or stop */
	bool own_dir;              /* dir was made here and is removed at cleanup */
	char dir[3072];            /* private directory: data/, the socket, the ready file */
	char data_dir[PATH_MAX];   /* --data-dir */
	char socket[108];          /* --socket (sizeof sun_path) */
	char ready[PATH_MAX];      /* --ready-file */
	char log[PATH_MAX];        /* the daemon's stderr, appended across restarts */
};

/* The daemons this test started, for the atexit handler (tests are single programs). */
static struct t_daemon *t_daemons[T_DAEMON_MAX];

#define T_DAEMON_DIE(code, ...)                                                   \
	do {                                                                      \
		fprintf(stderr, __VA_ARGS__);                                     \
		fputc('\n', stderr);                                              \
		exit(code);                                                       \
	} while (0)

static inline uint64_t t_daemon_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static inline void t_daemon_sleep_ms(unsigned ms)
{
	struct timespec ts = { ms / 1000u, (long)(ms % 1000u) * 1000000L };
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* Copies the daemon's log to stderr, so a failing test shows what the daemon said. */
static inline void t_daemon_dump_log(const struct t_daemon *d)
{
	char buf[4096];
	size_t n;
	FILE *f;

	if (d->external || !d->log[0] || !(f = fopen(d->log, "r")))
		return;
	fprintf(stderr, "---- sparqd log (%s) ----\n", d->log);
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
		fwrite(buf, 1, n, stderr);
	fprintf(stderr, "---- end of sparqd log ----\n");
	fclose(f);
}

/* Lines of the daemon's log (across restarts) that contain what. */
static inline unsigned t_daemon_log_count(const struct t_daemon *d, const char *what)
{
	return t_file_count(d->log, what);
}

/* Whether the log says the data directory refused O_DIRECT or io_uring. */
static inline bool t_daemon_log_says_unsupported(const struct t_daemon *d)
{
	return t_daemon_log_count(d, "O_DIRECT") || t_daemon_log_count(d, "io_uring");
}

/*
 * Waits up to timeout_ms for the daemon to exit; returns its exit code, 128 + the
 * signal when a signal ended it, or -1 when it still runs. Reaps it (pid becomes 0).
 */
static inline int t_daemon_wait(struct t_daemon *d, unsigned timeout_ms)
{
	uint64_t end = t_daemon_now_ms() + timeout_ms;
	int status;

	if (d->pid <= 0)
		return -1;
	for (;;) {
		pid_t r = waitpid(d->pid, &status, WNOHANG);
		if (r == d->pid)
			break;
		if (r < 0 && errno != EINTR)
			T_DAEMON_DIE(T_DAEMON_EXIT_FAIL, "waitpid(%d): %s", (int)d->pid,
				     strerror(errno));
		if (t_daemon_now_ms() >= end)
			return -1;
		t_daemon_sleep_ms(5);
	}
	d->pid = 0;
	return t_exit_code(status);
}

/* SIGKILL and reap: a crash, as the crash tests want it. Returns 128 + SIGKILL. */
static inline int t_daemon_kill(struct t_daemon *d)
{
	if (d->pid <= 0)
		return -1;
	kill(d->pid, SIGKILL);
	return t_daemon_wait(d, T_DAEMON_STOP_S * 1000u);
}

/*
 * SIGTERM, up to T_DAEMON_STOP_S seconds for a clean exit, then SIGKILL. Returns the
 * exit code (0 is a clean shutdown), 128 + signal, or -1 for an external daemon. A
 * non-zero result dumps the daemon's log to stderr.
 */
static inline int t_daemon_stop(struct t_daemon *d)
{
	int code;

	if (d->pid <= 0)
		return -1;
	kill(d->pid, SIGTERM);
	code = t_daemon_wait(d, T_DAEMON_STOP_S * 1000u);
	if (code < 0) {
		fprintf(stderr, "sparqd (pid %d) ignored SIGTERM for %d s: killing it\n",
			(int)d->pid, T_DAEMON_STOP_S);
		code = t_daemon_kill(d);
	}
	if (code != 0)
		t_daemon_dump_log(d);
	return code;
}

static inline void t_daemon_unregister(struct t_daemon *d)
{
	for (unsigned i = 0; i < T_DAEMON_MAX; i++)
		if (t_daemons[i] == d)
			t_daemons[i] = NULL;
}

/* Stops the daemon if it runs (SIGTERM) and removes the directory made for it. */
static inline void t_daemon_cleanup(struct t_daemon *d)
{
	if (d->external)
		return;
	t_daemon_stop(d);
	if (d->own_dir && d->dir[0]) {
		char cmd[PATH_MAX + 16];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d->dir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", d->dir);
		d->own_dir = false;
	}
	t_daemon_unregister(d);
}

static void t_daemon_atexit(void)
{
	for (unsigned i = 0; i < T_DAEMON_MAX; i++) {
		struct t_daemon *d = t_daemons[i];
		if (!d)
			continue;
		/* the test failed (or forgot teardown): no grace period, but show the log */
		if (d->pid > 0) {
			t_daemon_kill(d);
			t_daemon_dump_log(d);
		}
		t_daemon_cleanup(d);
	}
}

static inline void t_daemon_register(struct t_daemon *d)
{
	static bool hooked;

	if (!hooked) {
		atexit(t_daemon_atexit);
		hooked = true;
	}
	for (unsigned i = 0; i < T_DAEMON_MAX; i++)
		if (t_daemons[i] == d)
			return;
	for (unsigned i = 0; i < T_DAEMON_MAX; i++) {
		if (!t_daemons[i]) {
			t_daemons[i] = d;
			return;
		}
	}
	T_DAEMON_DIE(T_DAEMON_EXIT_FAIL, "more than %d daemons in one test", T_DAEMON_MAX);
}

/* The ready file exists and holds the pid of our child. */
static inline bool t_daemon_ready(const struct t_daemon *d)
{
	char buf[32] = "";
	FILE *f = fopen(d->ready, "r");

	if (!f)
		return false;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	return n > 0 && strtol(buf, NULL, 10) == (long)d->pid;
}

/* True when this test runs against an external daemon ($SPARQ_TEST_SOCKET). */
static inline bool t_daemon_external(void)
{
	const char *s = getenv("SPARQ_TEST_SOCKET");
	return s && *s;
}

/* Skips (77) a test that must stop, kill or restart the daemon itself. */
static inline void t_daemon_need_own(const char *what)
{
	if (t_daemon_external()) {
		printf("SKIP: %s needs its own sparqd ($SPARQ_TEST_SOCKET is set)\n", what);
		exit(T_DAEMON_EXIT_SKIP);
	}
}

/*
 * Starts sparqd and waits until its socket accepts (the ready file holds its pid).
 * dir: NULL for a fresh private directory under $SPARQ_TEST_DIR, else an existing
 * directory from an earlier t_daemon_start (a restart on the same data, d keeps it).
 * args: extra flags, NULL-terminated (may be NULL), after the test defaults so they
 * win where they repeat a flag: --backend cpu --threads 2 --workers 2 --ram-bytes 256M
 * --nvme-bytes 1G --log-level info.
 * With $SPARQ_TEST_SOCKET set, d only records that socket. Exits 77 when the directory
 * refuses O_DIRECT or io_uring, 1 on any other failure (with the daemon's log).
 */
static inline void t_daemon_start(struct t_daemon *d, const char *dir, const char *const *args)
{
	const char *defaults[] = { "--backend", "cpu", "--threads", "2", "--workers", "2",
				   "--ram-bytes", "256M", "--nvme-bytes", "1G",
				   "--log-level", "info" };
	const size_t n_def = sizeof(defaults) / sizeof(defaults[0]);
	const char *argv[96];
	size_t argc = 0;
	bool keep_dir = dir != NULL && d->own_dir && strcmp(dir, d->dir) == 0;

	if (t_daemon_external()) {
		memset(d, 0, sizeof(*d));
		d->external = true;
		if (strlen(getenv("SPARQ_TEST_SOCKET")) >= sizeof(d->socket))
			T_DAEMON_DIE(T_DAEMON_EXIT_FAIL, "$SPARQ_TEST_SOCKET is too long");
		strcpy(d->socket, getenv("SPARQ_TEST_SOCKET"));
		return;
	}
	if (d->pid > 0)
		T_DAEMON_DIE(T_DAEMON_EXIT_FAIL, "t_daemon_start: daemon %d still runs",
			     (int)d->pid);
	if (!dir) {
		const char *base = getenv("SPARQ_TEST_DIR");
		char tmpl[sizeof(d->dir)];

		memset(d, 0, sizeof(*d));
		if ((size_t)snprintf(tmpl, sizeof(tmpl), "%s/sparqd-test-XXXXXX",
				     base && *base ? base : "/tmp") >= sizeof(tmpl))
			T_DAEMON_DIE(T_DAEMON_EXIT_FAIL, "$SPARQ_TEST_DIR is too long");
		if (!mkdtemp(tmpl))
			T_DAEMON_DIE(T_DAEMON_EXIT_FAIL, "mkdtemp %s: %s", tmpl, strerror(errno));
		strcpy(d->dir, tmpl);
		d->own_dir = true;
	} else if (!keep_dir) {
		memset(d, 0, sizeof(*d));
		if (strlen(dir) >= sizeof(d->dir))
			T_DAEMON_DIE(T_DAEMON_EXIT_FAIL, "directory name too long: %s", dir);
		strcpy(d->dir, dir);
	}
	d->external = false;
	snprintf(d->data_dir, sizeof(d->data_dir), "%s/data", d->dir);
	snprintf(d->ready, sizeof(d->ready), "%s/ready", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/sparqd.log", d->dir);
	if ((size_t)snprintf(d->socket, sizeof(d->socket), "%s/sparqd.sock", d->dir) >=
	    sizeof(d->socket))
		T_DAEMON_DIE(T_DAEMON_EXIT_FAIL,
			     "socket path under %s is longer than a Unix socket name allows "
			     "(%zu bytes): set SPARQ_TEST_DIR to a shorter directory",
			     d->dir, sizeof(d->socket) - 1);
	unlink(d->ready);

	argv[argc++] = SPARQD_PATH;
	argv[argc++] = "--data-dir";
	argv[argc++] = d->data_dir;
	argv[argc++] = "--socket";
	argv[argc++] = d->socket;
	argv[argc++] = "--ready-file";
	argv[argc++] = d->ready;
	argv[argc++] = "--foreground";
	for (size_t i = 0; i < n_def; i++)
		argv[argc++] = defaults[i];
	for (size_t i = 0; args && args[i]; i++) {
		if (argc + 1 >= sizeof(argv) / sizeof(argv[0]))
			T_DAEMON_DIE(T_DAEMON_EXIT_FAIL, "t_daemon_start: too many arguments");
		argv[argc++] = args[i];
	}
	argv[argc] = NULL;

	t_daemon_register(d);
	fflush(NULL);
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0)
		T_DAEMON_DIE(T_DAEMON_EXIT_FAIL, "fork: %s", strerror(errno));
	if (pid == 0) {
		int fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
		/* dies with the test, whatever way the test ends */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
			_exit(126);
		if (fd < 0 || dup2(fd, STDERR_FILENO) < 0)
			_exit(126);
		execv(SPARQD_PATH, (char *const *)argv);
		dprintf(STDERR_FILENO, "exec %s: %s\n", SPARQD_PATH, strerror(errno));
		_exit(127);
	}
	d->pid = pid;

	uint64_t end = t_daemon_now_ms() + T_DAEMON_READY_S * 1000u;
	while (!t_daemon_ready(d)) {
		int code = t_daemon_wait(d, 0);
		if (code >= 0) {
			t_daemon_dump_log(d);
			if (t_daemon_log_says_unsupported(d)) {
				printf("SKIP: sparqd cannot use %s (O_DIRECT or io_uring refused)\n",
				       d->data_dir);
				exit(T_DAEMON_EXIT_SKIP);
			}
			T_DAEMON_DIE(T_DAEMON_EXIT_FAIL, "sparqd exited with %d before it was ready",
				     code);
		}
		if (t_daemon_now_ms() >= end) {
			t_daemon_kill(d);
			t_daemon_dump_log(d);
			T_DAEMON_DIE(T_DAEMON_EXIT_FAIL, "sparqd not ready within %d s",
				     T_DAEMON_READY_S);
		}
		t_daemon_sleep_ms(10);
	}
}

#endif
