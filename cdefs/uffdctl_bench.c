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

/* ---- the C reference handler of the round-trip benchmarks -----------------------------------
 * What the kernel's selftests do (uffd_poll_thread in tools/testing/selftests/mm/uffd-common.c,
 * and scripts/bench_ref.c): poll(2), read(2) one message, UFFDIO_COPY one page from a single
 * source page; on its own pthread pinned to `cpu` (< 0: not pinned), until `n` faults are
 * served.  read_first: try read(2) before poll(2) (the uffd is non-blocking), as uffdctl's own
 * loops do: one system call less per fault when a message is already queued.  Run in uffdctl's process, on the same memory, so that the benchmark can interleave
 * it with uffdctl's handlers block by block.
 */
#include <errno.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <unistd.h>

struct uffdctl_refhandler {
	int fd, cpu, read_first;
	uint64_t src, page, n;
	int err;
	pthread_t thread;
};

static void *refhandler_main(void *arg)
{
	struct uffdctl_refhandler *h = arg;
	struct uffd_msg m;

	if (h->cpu >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(h->cpu, &set);
		pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	}
	for (uint64_t served = 0; served < h->n;) {
		struct pollfd p = { h->fd, POLLIN, 0 };
		if (h->read_first && read(h->fd, &m, sizeof(m)) == sizeof(m))
			goto got;
		int r = poll(&p, 1, 5000);
		if (r <= 0) {
			h->err = r ? -errno : -ETIMEDOUT;
			return NULL;
		}
		if (read(h->fd, &m, sizeof(m)) != sizeof(m))
			continue;
got:
		if (m.event != UFFD_EVENT_PAGEFAULT)
			continue;
		struct uffdio_copy c = { m.arg.pagefault.address & ~(h->page - 1), h->src, h->page, 0, 0 };
		if (ioctl(h->fd, UFFDIO_COPY, &c)) {
			h->err = -errno;
			return NULL;
		}
		served++;
	}
	return NULL;
}

struct uffdctl_refhandler *uffdctl_bench_refhandler_start(int fd, uint64_t src, uint64_t page, uint64_t n, int cpu,
							  int read_first)
{
	struct uffdctl_refhandler *h = calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	*h = (struct uffdctl_refhandler){ .fd = fd, .cpu = cpu, .read_first = read_first, .src = src, .page = page,
					  .n = n };
	if (pthread_create(&h->thread, NULL, refhandler_main, h)) {
		free(h);
		return NULL;
	}
	return h;
}

/* Join; 0 or the -errno that stopped it early. */
int uffdctl_bench_refhandler_join(struct uffdctl_refhandler *h)
{
	int err;
	pthread_join(h->thread, NULL);
	err = h->err;
	free(h);
	return err;
}
