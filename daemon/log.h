/*
 * log.h — sparqd's log lines: "sparqd: LEVEL: message" on stderr, one write(2) per
 * line so lines from worker threads never interleave. The threshold lives in the
 * daemon's top-level context and is set once at start, before any thread runs.
 */
#ifndef SPARQD_LOG_H
#define SPARQD_LOG_H

#include "manager.h"

enum sd_log_level { SD_LOG_ERROR = 0, SD_LOG_WARN = 1, SD_LOG_INFO = 2, SD_LOG_DEBUG = 3 };

struct sd_log {
	enum sd_log_level level;   /* lines above it are dropped */
};

/* Prints one line when lvl passes the threshold (lg NULL: everything passes). */
void sd_log(const struct sd_log *lg, enum sd_log_level lvl, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* The tier manager's log callback; user is the struct sd_log. */
void sd_log_tier(void *user, enum tier_log_level level, const char *msg);

/* "error", "warn", "info", "debug" → level; -EINVAL for anything else. */
int sd_log_level_parse(const char *s, enum sd_log_level *out);

#endif
