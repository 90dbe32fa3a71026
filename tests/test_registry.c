/*
 * test_registry.c — the backend registry: what sparq_backend_list reports (CPU first
 * and always there, CUDA second, each with a detail line), that opening follows the
 * list (an unavailable backend is -ENODEV, never a silent CPU fallback), unknown
 * names and bad configurations are refused, and the CPU backend opens in its
 * configurations. The detail lines are printed so a CI log shows what was probed.
 */
#include <errno.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "helpers.h"

/*
 * The kernels the CPU backend picks on this machine when nothing forces portable C.
 * F16C through CPUID because clang 14 does not know it as a __builtin_cpu_supports
 * feature; "avx2" already implies the OS saves the AVX state F16C needs.
 */
static const char *expected_isa(void)
{
#if defined(__x86_64__) || defined(__i386__)
	unsigned a, b, c, d;

	__builtin_cpu_init();
	if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
	    __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C))
		return "AVX2";
#endif
	return "portable";
}

static void test_list(struct sparq_backend_info *cuda)
{
	struct sparq_backend_info info[4], one[2];
	int n;

	memset(info, 0xa5, sizeof(info));
	n = sparq_backend_list(info, 4);
	T_CHECK(n == 2, "%d backends listed, want 2", n);
	T_CHECK(info[0].name && strcmp(info[0].name, "cpu") == 0, "first entry is '%s'",
		info[0].name ? info[0].name : "(null)");
	T_CHECK(info[1].name && strcmp(info[1].name, "cuda") == 0, "second entry is '%s'",
		info[1].name ? info[1].name : "(null)");
	for (int i = 0; i < 2; i++)
		T_CHECK(memchr(info[i].detail, 0, sizeof(info[i].detail)) && info[i].detail[0],
			"%s: detail empty or unterminated", info[i].name);
	/* before the remaining checks, so a failing run's log still shows what was probed */
	printf("cpu: %s (%s)\n", info[0].detail, info[0].available ? "available" : "unavailable");
	printf("cuda: %s (%s)\n", info[1].detail, info[1].available ? "available" : "unavailable");

	/* the CPU backend needs nothing but threads, so it is always there */
	T_CHECK(info[0].available, "cpu unavailable: %s", info[0].detail);
	T_CHECK(strstr(info[0].detail, "thread"), "cpu detail '%s' does not name threads",
		info[0].detail);
	T_CHECK(strcspn(info[0].detail, ",") > 0, "cpu detail '%s' does not start with the ISA",
		info[0].detail);
	T_CHECK(strstr(info[0].detail, expected_isa()), "cpu detail '%s' should name %s",
		info[0].detail, expected_isa());

	/* up to max entries and no further, yet the count is still all of them */
	memset(one, 0xa5, sizeof(one));
	n = sparq_backend_list(one, 1);
	T_CHECK(n == 2, "list with max 1 returned %d", n);
	T_CHECK(one[0].name && strcmp(one[0].name, "cpu") == 0, "max 1: first entry");
	for (size_t b = 0; b < sizeof(one[1]); b++)
		T_CHECK(((const uint8_t *)&one[1])[b] == 0xa5, "max 1: wrote past the first entry");

	*cuda = info[1];
}

static void open_close(const char *name, const struct sparq_backend_config *cfg,
		       const char *what)
{
	struct sparq_backend *be = NULL;
	int ret = sparq_backend_open(name, cfg, &be);

	T_CHECK(ret == 0 && be, "open %s (%s): %d", name, what, ret);
	T_CHECK(strcmp(sparq_backend_name(be), name) == 0, "open %s (%s) gave '%s'", name, what,
		sparq_backend_name(be));
	sparq_backend_close(be);
}

static void test_open_cpu(void)
{
	open_close("cpu", NULL, "no config");
	open_close("cpu", &(struct sparq_backend_config){ 0 }, "zero config");
	open_close("cpu", &(struct sparq_backend_config){ .n_threads = 1 }, "1 thread");
	open_close("cpu", &(struct sparq_backend_config){ .n_threads = 3 }, "3 threads");
	open_close("cpu", &(struct sparq_backend_config){ .cpu_portable = true }, "portable");
	open_close("cpu", &(struct sparq_backend_config){ .n_threads = 1, .cpu_portable = true },
		   "portable, 1 thread");
	sparq_backend_close(NULL);  /* like free(NULL), so error paths need no checks */
}

static void test_open_errors(const struct sparq_backend_info *cuda)
{
	struct sparq_backend *be = NULL;
	int ret;

	T_CHECK(sparq_backend_open("nope", NULL, &be) == -ENOENT, "unknown name opened");
	T_CHECK(sparq_backend_open("", NULL, &be) == -ENOENT, "empty name opened");
	T_CHECK(sparq_backend_open("CPU", NULL, &be) == -ENOENT, "names are case-sensitive");
	T_CHECK(sparq_backend_open("cpu", &(struct sparq_backend_config){ .n_threads = 1000 },
				   &be) == -EINVAL,
		"1000 threads accepted");

	ret = sparq_backend_open("cuda", NULL, &be);
	if (cuda->available) {
		T_CHECK(ret == 0, "cuda listed as available but open gives %d", ret);
		T_CHECK(strcmp(sparq_backend_name(be), "cuda") == 0, "cuda opened as '%s'",
			sparq_backend_name(be));
		sparq_backend_close(be);
	} else {
		T_CHECK(ret == -ENODEV, "cuda listed as unavailable (%s) but open gives %d",
			cuda->detail, ret);
	}
}

int main(void)
{
	struct sparq_backend_info cuda;

	test_list(&cuda);
	test_open_cpu();
	test_open_errors(&cuda);
	return T_EXIT_PASS;
}
