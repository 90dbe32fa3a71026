/*
 * pool.c — GPU memory for key slices (STYLE.md §7: allocate once, carve, free once):
 * arenas of up to ARENA_BYTES are cudaMalloc'd when the free pages run out, carved
 * into SPARQ_CU_PAGE_BYTES pages, and only freed when the backend closes. The budget
 * caps the arenas, so a stream that finds no page is moved to the CPU backend rather
 * than failing, and the rest of the GPU stays free for the engine.
 */
#include <errno.h>
#include <stdlib.h>

#include "cuda-host.h"

#define ARENA_BYTES (256ull << 20)

int cu_pool_init(struct cu_pool *p, uint64_t budget)
{
	*p = (struct cu_pool){ .budget = budget };
	return 0;
}

/* Room on the free stack for every page there will be, so a put never fails. */
static int reserve_free(struct cu_pool *p, uint64_t pages)
{
	if (pages <= p->cap_free)
		return 0;
	if (pages > UINT32_MAX)
		return -ENOMEM;
	void **t = realloc(p->free_pages, pages * sizeof(*t));
	if (!t)
		return -ENOMEM;
	p->free_pages = t;
	p->cap_free = (uint32_t)pages;
	return 0;
}

/* One more arena, as large as the budget still allows. */
static int grow(struct cu_ctx *cx)
{
	struct cu_pool *p = &cx->pool;
	uint64_t bytes = p->budget - p->reserved;
	void *arena = NULL;
	cudaError_t e;

	if (bytes > ARENA_BYTES)
		bytes = ARENA_BYTES;
	bytes = bytes / SPARQ_CU_PAGE_BYTES * SPARQ_CU_PAGE_BYTES;
	if (bytes == 0)
		return -ENOSPC;
	if (reserve_free(p, (p->reserved + bytes) / SPARQ_CU_PAGE_BYTES))
		return -ENOMEM;
	if (p->n_arenas == p->cap_arenas) {
		uint32_t cap = p->cap_arenas ? 2 * p->cap_arenas : 16;
		void **t = realloc(p->arenas, cap * sizeof(*t));
		if (!t)
			return -ENOMEM;
		p->arenas = t;
		p->cap_arenas = cap;
	}
	e = cudaMalloc(&arena, bytes);
	if (e != cudaSuccess) {
		cudaGetLastError(); /* an allocation failure is not sticky: clear it */
		cu_fail(cx, e, "cudaMalloc of a key-slice arena");
		return -ENOMEM;
	}
	p->arenas[p->n_arenas++] = arena;
	p->reserved += bytes;
	/* pages go on the stack top-down so they are handed out in address order */
	for (uint64_t off = bytes; off > 0; off -= SPARQ_CU_PAGE_BYTES)
		p->free_pages[p->n_free++] = (uint8_t *)arena + off - SPARQ_CU_PAGE_BYTES;
	return 0;
}

int cu_pool_get(struct cu_ctx *cx, void **page)
{
	struct cu_pool *p = &cx->pool;

	if (p->n_free == 0) {
		int ret = grow(cx);
		if (ret)
			return ret;
	}
	*page = p->free_pages[--p->n_free];
	p->pages_out++;
	return 0;
}

void cu_pool_put(struct cu_pool *p, void *page)
{
	/* reserve_free made room for every page when its arena was carved */
	p->free_pages[p->n_free++] = page;
	p->pages_out--;
}

void cu_pool_fini(struct cu_pool *p)
{
	for (uint32_t i = 0; i < p->n_arenas; i++)
		cudaFree(p->arenas[i]);
	free(p->arenas);
	free(p->free_pages);
	*p = (struct cu_pool){ 0 };
}
