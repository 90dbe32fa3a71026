/*
 * main.c — sparqd's start and stop, in the order the design fixes: settings validated
 * before anything exists (exit 2 on a bad value), then the data directory, the tier
 * manager (replaying parked sessions), the backend (auto: CUDA when a device answers,
 * else the CPU with a log line), the session table, the workers, the socket; only then
 * the pid and ready files. Stopping undoes it in reverse after the loop has drained
 * every in-flight request and persistent sessions are parked.
 */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* struct sparq_backend.detail: what the opened backend reports about itself */
#include "backend-impl.h"
#include "loop.h"
#include "metrics.h"
#include "nvme.h"
#include "sparqd.h"
#include "workers.h"

#define EXIT_BAD_CONFIG 2

/* Writes "pid\n" to path atomically (temporary file, fsync, rename). */
static int write_pid_file(const char *path)
{
	char tmp[PATH_MAX + 16], line[32];
	int fd, n, ret = 0;

	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	n = snprintf(line, sizeof(line), "%ld\n", (long)getpid());
	if (write(fd, line, (size_t)n) != n || fsync(fd))
		ret = errno ? -errno : -EIO;
	close(fd);
	if (!ret && rename(tmp, path))
		ret = -errno;
	if (ret)
		unlink(tmp);
	return ret;
}

/* The backend's log callback (a CUDA fallback, the backend degrading); user: the sd_log. */
static void backend_log(void *user, const char *msg)
{
	sd_log(user, SD_LOG_WARN, "backend: %s", msg);
}

static int open_backend(struct sparqd *d)
{
	/* the fault fields stay 0 unless config.c accepted --cuda-fault with
	 * --allow-fault-injection */
	struct sparq_backend_config bc = {
		.n_threads = d->cfg.threads,
		.key_slice = d->cfg.key_slice,
		.cuda_fault_every = d->cfg.cuda_fault_every,
		.cuda_fault_sticky = d->cfg.cuda_fault_sticky,
		.log = backend_log,
		.log_user = &d->log,
	};
	const char *name = d->cfg.backend == SD_BACKEND_CUDA ? "cuda" : "cpu";
	int ret;

	if (d->cfg.backend == SD_BACKEND_AUTO) {
		ret = sparq_backend_open("cuda", &bc, &d->be);
		if (!ret) {
			name = "cuda";
		} else {
			struct sparq_backend_info info[4];
			const char *detail = "not listed";
			int n = sparq_backend_list(info, 4);

			for (int i = 0; i < n && i < 4; i++)
				if (strcmp(info[i].name, "cuda") == 0)
					detail = info[i].detail;
			sd_log(&d->log, SD_LOG_INFO, "backend auto: CUDA not usable (%s: %s), using the CPU",
			       detail, strerror(-ret));
		}
	}
	if (!d->be) {
		ret = sparq_backend_open(name, &bc, &d->be);
		if (ret) {
			sd_log(&d->log, SD_LOG_ERROR, "backend %s cannot be opened: %s", name,
			       strerror(-ret));
			return ret;
		}
	}
	/* the opened backend's own description: its thread count, its device */
	snprintf(d->backend_detail, sizeof(d->backend_detail), "%s", d->be->detail);
	sd_log(&d->log, SD_LOG_INFO, "backend %s (%s)", name, d->backend_detail);
	if (d->cfg.cuda_fault[0])
		sd_log(&d->log, SD_LOG_WARN, strcmp(name, "cuda") == 0 ?
		       "fault injection armed (tests only): --cuda-fault %s" :
		       "--cuda-fault %s has no effect: the backend is the CPU", d->cfg.cuda_fault);
	return 0;
}

static int open_tiers(struct sparqd *d)
{
	struct tier_manager_config tc;
	const char *why = "";
	int ret;

	tier_manager_defaults(&tc);
	tc.dir = d->cfg.data_dir;
	tc.ram_bytes = d->cfg.ram_bytes;
	tc.nvme_bytes = d->cfg.nvme_bytes;
	tc.chunk_bytes = d->cfg.chunk_bytes;
	tc.in_place = d->cfg.in_place;
	if (tc.staging_bytes < d->cfg.chunk_bytes)
		tc.staging_bytes = d->cfg.chunk_bytes;
	tc.log = sd_log_tier;
	tc.log_user = &d->log;
	ret = tier_manager_open(&tc, &d->tm, &why);
	if (ret == -EOPNOTSUPP)
		sd_log(&d->log, SD_LOG_ERROR, "data directory %s refuses O_DIRECT or io_uring: %s",
		       d->cfg.data_dir, why);
	else if (ret)
		sd_log(&d->log, SD_LOG_ERROR, "cannot open the tiers in %s with --ram-bytes %llu "
		       "--nvme-bytes %llu --chunk-bytes %u: %s (%s)", d->cfg.data_dir,
		       (unsigned long long)d->cfg.ram_bytes, (unsigned long long)d->cfg.nvme_bytes,
		       d->cfg.chunk_bytes, why, strerror(-ret));
	if (!ret && d->cfg.nvme_fault[0]) {
		/* config.c refused the spec without --allow-fault-injection */
		const struct sd_nvme_fault *f = &d->cfg.fault;
		struct tier_nvme_fault nf = { .after = f->after, .count = f->count, .err = f->err,
					      .short_io = f->short_io, .reads = f->reads,
					      .writes = f->writes };

		tier_nvme_inject(tier_manager_nvme(d->tm), &nf);
		sd_log(&d->log, SD_LOG_WARN, "fault injection armed (tests only): --nvme-fault %s",
		       d->cfg.nvme_fault);
	}
	return ret;
}

static void teardown(struct sparqd *d)
{
	/* first: its thread reads the session table and the tiers */
	sd_metrics_stop(d->metrics);
	if (d->pool_started)
		sd_pool_stop(d);
	if (d->tm && d->cfg.nvme_fault[0]) {
		/* no worker runs now: the engine's counters are ours to read */
		struct tier_nvme_stats ns;

		tier_nvme_stats(tier_manager_nvme(d->tm), &ns);
		sd_log(&d->log, SD_LOG_WARN, "fault injection: %llu NVMe requests failed "
		       "(--nvme-fault %s; every failure counts, injected or not)",
		       (unsigned long long)ns.errors, d->cfg.nvme_fault);
	}
	if (d->sessions_ready)
		sd_sessions_shutdown(&d->sessions);
	sd_loop_close(d);
	if (d->be) {
		char detail[512];

		/* the CUDA errors the backend recovered from, once more in the log */
		sd_stats_backend_detail(d->be, d->backend_detail, detail, sizeof(detail));
		if (strcmp(detail, d->backend_detail) != 0)
			sd_log(&d->log, SD_LOG_WARN, "backend at exit: %s", detail);
	}
	sparq_backend_close(d->be);
	tier_manager_close(d->tm);
	if (d->ready_written)
		unlink(d->cfg.ready_file);
	if (d->pid_written)
		unlink(d->cfg.pid_file);
}

int main(int argc, char **argv)
{
	struct sparqd *d = calloc(1, sizeof(*d));
	char reason[PATH_MAX + 256];
	const char *why = "";
	bool created_dir = false;
	sigset_t mask;
	int ret;

	if (!d) {
		fprintf(stderr, "sparqd: error: out of memory\n");
		return 1;
	}
	d->listen_fd = d->epoll_fd = d->signal_fd = d->wake_fd = -1;
	ret = sd_config_parse(argc, argv, &d->cfg, reason, sizeof(reason));
	if (ret) {
		if (ret < 0)
			sd_log(NULL, SD_LOG_ERROR, "%s", reason);
		free(d);
		return ret == SD_CONFIG_EXIT ? 0 : EXIT_BAD_CONFIG;
	}
	d->log.level = d->cfg.log_level;
	sd_stats_init(&d->stats);
	/*
	 * Request buffers (append copies, gathered rows) are large and short-lived. glibc
	 * raises its mmap threshold after each such free and then keeps them in the heap,
	 * so a daemon serving many clients would hold their high-water mark for good
	 * (measured: +16 MiB over 1,000 clients). Fixed thresholds send them straight
	 * back to the kernel; the footprint then follows the live data.
	 */
	mallopt(M_MMAP_THRESHOLD, 128 * 1024);
	mallopt(M_TRIM_THRESHOLD, 256 * 1024);

	/* workers and the backend's threads inherit this: only the signalfd sees them */
	sigemptyset(&mask);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	pthread_sigmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);

	ret = 1;
	if (mkdir(d->cfg.data_dir, 0700) == 0)
		created_dir = true;
	else if (errno != EEXIST) {
		sd_log(&d->log, SD_LOG_ERROR, "cannot create data directory %s: %s", d->cfg.data_dir,
		       strerror(errno));
		goto out;
	}
	ret = open_tiers(d);
	if (ret) {
		/* the manager checks what only it can (RAM against MemAvailable): a bad value
		 * all the same (-ENOMEM there means above MemAvailable), and the directory
		 * made for it goes again */
		if (created_dir)
			rmdir(d->cfg.data_dir);
		ret = ret == -EINVAL || ret == -ENOMEM ? EXIT_BAD_CONFIG : 1;
		goto out;
	}
	ret = 1;
	if (open_backend(d))
		goto out;
	if (sd_sessions_init(&d->sessions, d->tm, d->be, &d->log)) {
		sd_log(&d->log, SD_LOG_ERROR, "cannot read the parked sessions");
		goto out;
	}
	d->sessions_ready = true;
	if (sd_pool_start(d)) {
		sd_log(&d->log, SD_LOG_ERROR, "cannot start %u workers", d->cfg.workers);
		goto out;
	}
	d->pool_started = true;
	ret = sd_loop_open(d, &why);
	if (ret) {
		sd_log(&d->log, SD_LOG_ERROR, "socket %s: %s (%s)", d->cfg.socket, why, strerror(-ret));
		ret = 1;
		goto out;
	}
	ret = sd_metrics_start(d, &d->metrics, &why);
	if (ret) {
		sd_log(&d->log, SD_LOG_ERROR, "metrics port %u: %s (%s)", d->cfg.metrics_port, why,
		       strerror(-ret));
		ret = 1;
		goto out;
	}
	ret = 1;
	if (d->cfg.pid_file[0]) {
		if (write_pid_file(d->cfg.pid_file)) {
			sd_log(&d->log, SD_LOG_ERROR, "cannot write pid file %s", d->cfg.pid_file);
			goto out;
		}
		d->pid_written = true;
	}
	if (d->cfg.ready_file[0]) {
		if (write_pid_file(d->cfg.ready_file)) {
			sd_log(&d->log, SD_LOG_ERROR, "cannot write ready file %s", d->cfg.ready_file);
			goto out;
		}
		d->ready_written = true;
	}
	sd_log(&d->log, SD_LOG_INFO, "listening on %s (data %s, %u workers, ram %llu MiB, nvme %llu MiB)",
	       d->cfg.socket, d->cfg.data_dir, d->cfg.workers,
	       (unsigned long long)(d->cfg.ram_bytes >> 20),
	       (unsigned long long)(d->cfg.nvme_bytes >> 20));
	ret = sd_loop_run(d) ? 1 : 0;
out:
	teardown(d);
	if (ret == 0)
		sd_log(&d->log, SD_LOG_INFO, "stopped");
	free(d);
	return ret;
}
