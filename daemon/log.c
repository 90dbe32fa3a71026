/*
 * log.c — formatting and level filtering of log lines (log.h). A line is assembled in
 * a stack buffer and written with one write(2): stderr may be a pipe shared by many
 * threads and a test harness, and a single write of a short line stays whole.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

static const char *const names[] = { "error", "warn", "info", "debug" };

void sd_log(const struct sd_log *lg, enum sd_log_level lvl, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	int n;

	if (lg && lvl > lg->level)
		return;
	n = snprintf(line, sizeof(line), "sparqd: %s: ", names[lvl]);
	va_start(ap, fmt);
	n += vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	line[n++] = '\n';
	/* nothing useful to do when stderr is gone */
	if (write(STDERR_FILENO, line, (size_t)n) < 0)
		return;
}

void sd_log_tier(void *user, enum tier_log_level level, const char *msg)
{
	enum sd_log_level lvl = level <= TIER_LOG_DEBUG ? (enum sd_log_level)level : SD_LOG_DEBUG;

	sd_log(user, lvl, "tiers: %s", msg);
}

int sd_log_level_parse(const char *s, enum sd_log_level *out)
{
	for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (strcmp(s, names[i]) == 0) {
			*out = (enum sd_log_level)i;
			return 0;
		}
	}
	return -EINVAL;
}
