/*
 * Per-page ioctl loops kept in C: the benchmarks' reference for uffdctl's per-page paths.
 * (see uffdctl_helpers.h for the map of the helpers)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdint.h>

#include "uffd_uapi.h"
#include "uffdctl_helpers.h"

/* One UFFDIO_COPY per page over [dst, dst+len); returns pages done or -errno. */
int64_t uffdctl_loop_copy(int fd, uint64_t dst, uint64_t src, uint64_t len,
			  uint64_t page, uint64_t mode)
{
	int64_t n = 0;
	for (uint64_t off = 0; off < len; off += page, n++) {
		struct uffdio_copy c = { dst + off, src + off, page, mode, 0 };
		int r = uffdctl_ioctl(fd, UFFDIO_COPY, &c);
		if (r < 0)
			return r;
	}
	return n;
}

int64_t uffdctl_loop_zeropage(int fd, uint64_t dst, uint64_t len, uint64_t page)
{
	int64_t n = 0;
	for (uint64_t off = 0; off < len; off += page, n++) {
		struct uffdio_zeropage z = { { dst + off, page }, 0, 0 };
		int r = uffdctl_ioctl(fd, UFFDIO_ZEROPAGE, &z);
		if (r < 0)
			return r;
	}
	return n;
}

int64_t uffdctl_loop_writeprotect(int fd, uint64_t dst, uint64_t len,
				  uint64_t page, uint64_t mode)
{
	int64_t n = 0;
	for (uint64_t off = 0; off < len; off += page, n++) {
		struct uffdio_writeprotect w = { { dst + off, page }, mode };
		int r = uffdctl_ioctl(fd, UFFDIO_WRITEPROTECT, &w);
		if (r < 0)
			return r;
	}
	return n;
}

/* ---- a faulting thread for the round-trip benchmarks --------------------------------------
 * Touches (reads) one byte of each page in turn on its own pthread, pinned to `cpu` (< 0: not
 * pinned), and records the wall time of each touch: with the pages registered MISSING, that is
 * the userfault round trip through whichever handler serves them.
 */
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>

struct uffdctl_faulter {
	uint64_t addr, npages, page;
	int cpu;
	uint64_t *lat_ns;	/* npages */
	pthread_t thread;
};

static void *faulter_main(void *arg)
{
	struct uffdctl_faulter *f = arg;
	volatile uint64_t sink = 0;

	if (f->cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(f->cpu, &set);
		pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	}
	for (uint64_t i = 0; i < f->npages; i++) {
		uint64_t t0 = uffdctl_now_ns();
		sink += *(volatile uint8_t *)(uintptr_t)(f->addr + i * f->page);
		f->lat_ns[i] = uffdctl_now_ns() - t0;
	}
	(void)sink;
	return NULL;
}

struct uffdctl_faulter *uffdctl_bench_faulter_start(uint64_t addr, uint64_t npages, uint64_t page, int cpu,
						    uint64_t *lat_ns)
{
	struct uffdctl_faulter *f = calloc(1, sizeof(*f));
	if (!f)
		return NULL;
	*f = (struct uffdctl_faulter){ addr, npages, page, cpu, lat_ns, 0 };
	if (pthread_create(&f->thread, NULL, faulter_main, f)) {
		free(f);
		return NULL;
	}
	return f;
}

void uffdctl_bench_faulter_join(struct uffdctl_faulter *f)
{
	pthread_join(f->thread, NULL);
	free(f);
}
