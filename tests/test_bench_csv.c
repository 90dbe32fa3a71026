/*
 * test_bench_csv — the CSV writer every sparq-bench mode's --csv shares: the header
 * opens a new file, later runs append under it, a file with another header is refused
 * untouched, strings that need it are quoted, and a row with the wrong field count
 * or an unwritable path is an error.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_util.h"

#define CHECK(c)                                                                           \
	do {                                                                               \
		if (!(c)) {                                                                \
			fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
			goto fail;                                                         \
		}                                                                          \
	} while (0)

static int slurp(const char *path, char *buf, size_t n)
{
	FILE *f = fopen(path, "r");
	size_t got;

	if (!f)
		return -errno;
	got = fread(buf, 1, n - 1, f);
	buf[got] = '\0';
	fclose(f);
	return 0;
}

static void one_row(struct bench_csv *c, const char *s, uint64_t u, bool ok, double v)
{
	bench_csv_str(c, s);
	bench_csv_u64(c, u);
	bench_csv_num(c, ok, v);
	bench_csv_end_row(c);
}

int main(void)
{
	char dir[] = "/tmp/test_bench_csv-XXXXXX", path[64], buf[512];
	struct bench_csv c;

	if (!mkdtemp(dir))
		return 1;
	snprintf(path, sizeof(path), "%s/a.csv", dir);

	/* new file: header, then rows; an unmeasured figure is an empty field */
	CHECK(bench_csv_open(&c, path, "name,n,ms", "test") == 0);
	one_row(&c, "plain", 7, true, 1.5);
	one_row(&c, "a,b \"q\"", 8, false, 2.0);
	CHECK(bench_csv_close(&c) == 0);
	/* a second run appends under the same header, without repeating it */
	CHECK(bench_csv_open(&c, path, "name,n,ms", "test") == 0);
	one_row(&c, "again", 9, true, INFINITY);
	CHECK(bench_csv_close(&c) == 0);
	CHECK(slurp(path, buf, sizeof(buf)) == 0);
	CHECK(strcmp(buf, "name,n,ms\nplain,7,1.5\n\"a,b \"\"q\"\"\",8,\nagain,9,\n") == 0);

	/* another mode's file is refused and left as it was */
	CHECK(bench_csv_open(&c, path, "other,cols", "test") == -EINVAL);
	CHECK(c.f == NULL);
	CHECK(slurp(path, buf, sizeof(buf)) == 0);
	CHECK(strncmp(buf, "name,n,ms\nplain", 15) == 0);
	CHECK(bench_csv_close(&c) == 0);

	/* a row short of a field is reported at close */
	CHECK(bench_csv_open(&c, path, "name,n,ms", "test") == 0);
	bench_csv_str(&c, "short");
	bench_csv_end_row(&c);
	CHECK(bench_csv_close(&c) == -EINVAL);

	/* an unopenable path */
	snprintf(path, sizeof(path), "%s/missing/b.csv", dir);
	CHECK(bench_csv_open(&c, path, "x", "test") == -ENOENT);

	snprintf(path, sizeof(path), "%s/a.csv", dir);
	unlink(path);
	rmdir(dir);
	printf("bench_csv: ok\n");
	return 0;
fail:
	return 1;
}
