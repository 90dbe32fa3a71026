/*
 * config.h — sparqd's settings (memcached style): defaults, then an optional
 * "key = value" file (--config, keys are the long option names), then the command
 * line, later values winning. Everything is validated here, with a reason, before the
 * daemon allocates or creates anything: a bad value costs an exit 2 and leaves no trace.
 */
#ifndef SPARQD_CONFIG_H
#define SPARQD_CONFIG_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/un.h>

#include "backend.h"
#include "log.h"

enum sd_backend_choice { SD_BACKEND_AUTO = 0, SD_BACKEND_CPU = 1, SD_BACKEND_CUDA = 2 };

struct sd_config {
	char data_dir[PATH_MAX];         /* NVMe tier files, default socket */
	char socket[sizeof(((struct sockaddr_un *)0)->sun_path)];
	unsigned socket_mode;            /* permission bits of the socket */
	char config_file[PATH_MAX];      /* "" = none */
	enum sd_backend_choice backend;
	enum sparq_slice_format key_slice; /* every key slice the backend keeps (backend.h) */
	uint32_t threads;                /* backend CPU threads, 0 = all CPUs */
	uint32_t workers;                /* request worker threads */
	uint32_t poll_us;                /* submission-ring polling after a request, 0 = off */
	uint64_t ram_bytes, nvme_bytes;  /* tier capacities */
	uint32_t chunk_bytes;            /* tier placement unit */
	bool in_place;                   /* records of RAM-resident streams read in place
					    (tier_manager_config.in_place); false: copied */
	uint64_t shm_bytes;              /* default data area per client */
	uint32_t ring_entries;           /* per ring, per client */
	uint32_t max_clients;
	bool foreground;
	char pid_file[PATH_MAX];         /* "" = none */
	char ready_file[PATH_MAX];       /* "" = none */
	enum sd_log_level log_level;
	uint32_t metrics_port;           /* Prometheus text on 127.0.0.1:N; 0 = off (metrics.h) */
	/*
	 * Test-only NVMe fault injection (tiers/nvme.h tier_nvme_inject), armed once when
	 * the tiers open. A default daemon can never reach it: --nvme-fault is refused
	 * unless --allow-fault-injection is also given at start, and no request turns it on.
	 */
	bool allow_fault_injection;
	char nvme_fault[64];             /* the spec as given, "" = off */
	struct sd_nvme_fault {           /* nvme_fault parsed */
		uint32_t after, count;
		int err;                 /* -EIO or -ENOSPC; 0 with short_io */
		bool short_io, reads, writes;
	} fault;
	/*
	 * Test-only CUDA fault injection (sparq_backend_config.cuda_fault_every), guarded the
	 * same way: --cuda-fault N[:sticky] needs --allow-fault-injection at start.
	 */
	char cuda_fault[32];             /* the spec as given, "" = off */
	uint32_t cuda_fault_every;       /* cuda_fault parsed: every Nth call with GPU items */
	bool cuda_fault_sticky;          /* the synthetic error degrades the backend */
};

enum sd_config_result {
	SD_CONFIG_RUN = 0,     /* start the daemon */
	SD_CONFIG_EXIT = 1,    /* --help or --version was answered */
};

/*
 * Fills cfg from defaults, the --config file and argv. Returns SD_CONFIG_RUN or
 * SD_CONFIG_EXIT, or -EINVAL with the reason in why (the caller exits 2), or the
 * -errno of reading the config file (also with a reason).
 */
int sd_config_parse(int argc, char **argv, struct sd_config *cfg, char *why, size_t why_len);

/*
 * The i-th setting (0, 1, ... in --help order) as its long option name in *key and its
 * effective value in val, as a config file would spell it (sizes in bytes, modes in
 * octal). -ENOENT past the last one, -ENOSPC when val is too small.
 */
int sd_config_entry(const struct sd_config *cfg, unsigned i, const char **key, char *val,
		    size_t len);

/* Parses "123", "64K", "512M", "2G", "1T" (powers of 1024); -EINVAL otherwise. */
int sd_config_size(const char *s, uint64_t *out);

#endif
