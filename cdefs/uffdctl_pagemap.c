/*
 * /proc/PID/pagemap in bulk: read a range into a caller's array of raw 64-bit entries,
 * and the decodes the tool needs over a whole array (flag counts, runs of equal bits,
 * the --map grid) without one Python object per entry.
 * (see uffdctl_helpers.h for the map of the helpers)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "uffd_uapi.h"
#include "uffdctl_helpers.h"

/* fs/proc/task_mmu.c: the bits uffdctl names (pagemap.py's FLAG_BITS, in this order) */
#define PM_PRESENT		(1ull << 63)
#define PM_SWAP			(1ull << 62)
#define PM_FILE			(1ull << 61)
#define PM_GUARD_REGION		(1ull << 58)
#define PM_UFFD_WP		(1ull << 57)
#define PM_MMAP_EXCLUSIVE	(1ull << 56)
#define PM_SOFT_DIRTY		(1ull << 55)
#define PM_PFRAME_MASK		((1ull << 55) - 1)

static const uint64_t uffdctl_pm_bits[UFFDCTL_PM_NFLAGS] = {
	PM_PRESENT, PM_SWAP, PM_FILE, PM_GUARD_REGION, PM_UFFD_WP, PM_MMAP_EXCLUSIVE, PM_SOFT_DIRTY,
};

int64_t uffdctl_pagemap_read(int fd, uint64_t addr, uint64_t npages, uint64_t *raw)
{
	uint64_t done = 0;
	off_t off = (off_t)(addr / 4096) * 8;

	while (done < npages) {
		ssize_t r = pread(fd, (char *)raw + done * 8, (npages - done) * 8, off + done * 8);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			break;	/* past the end of the address space */
		done += (uint64_t)r / 8;
	}
	return (int64_t)done;
}

void uffdctl_pagemap_counts(const uint64_t *raw, uint64_t n, uint64_t *counts)
{
	uint64_t c[UFFDCTL_PM_NFLAGS] = { 0 };

	for (uint64_t i = 0; i < n; i++) {
		uint64_t v = raw[i];
		for (int b = 0; b < UFFDCTL_PM_NFLAGS; b++)
			c[b] += !!(v & uffdctl_pm_bits[b]);
	}
	for (int b = 0; b < UFFDCTL_PM_NFLAGS; b++)
		counts[b] = c[b];
}

int64_t uffdctl_pagemap_runs(const uint64_t *raw, uint64_t n, uint64_t mask, uint64_t *starts, uint64_t max)
{
	uint64_t nruns = 0, prev = 0;

	for (uint64_t i = 0; i < n; i++) {
		uint64_t v = raw[i] & mask;
		if (i == 0 || v != prev) {
			if (nruns < max)
				starts[nruns] = i;
			nruns++;
			prev = v;
		}
	}
	return (int64_t)nruns;	/* may exceed max: call again with a bigger array */
}

/* One character per entry, as PagemapEntry.symbol() (tests/test_pagemap.py holds them equal). */
void uffdctl_pagemap_symbols(const uint64_t *raw, uint64_t n, uint64_t zero_pfn, char *out)
{
	for (uint64_t i = 0; i < n; i++) {
		uint64_t v = raw[i], pfn = v & PM_PFRAME_MASK;
		char s;
		if (v & PM_GUARD_REGION)
			s = 'G';
		else if (v & PM_PRESENT)
			s = (zero_pfn && pfn == zero_pfn) ? 'Z' : (v & PM_UFFD_WP) ? 'W' :
			    (v & PM_SOFT_DIRTY) ? 'D' : 'P';
		else if (v & PM_SWAP)
			s = (v & PM_UFFD_WP) ? 'M' : 'X';
		else
			s = (v & PM_SOFT_DIRTY) ? 's' : '.';
		out[i] = s;
	}
}

/*
 * PAGEMAP_SCAN over [arg->start, arg->end) to the end, continuing from walk_end, as
 * uffdctl.pagemap.scan_all() does in Python: regions split at a call boundary are merged back,
 * and what a later call returns below the end of what is already held is dropped (the kernel's
 * walk_end can lag behind the regions it returned: docs/pagemap-scan-walk-end.md), so no page is
 * reported twice and only new pages count against max_pages.  The merged regions go to a buffer
 * this function grows with realloc(); *out (free it with uffdctl_free) and the count are returned,
 * or -errno (the regions found so far stay in *out).  arg->walk_end gets where the walk ended.
 */
int64_t uffdctl_scan_all(int fd, struct pm_scan_arg *arg, uint64_t max_pages, struct page_region **out)
{
	uint64_t end = arg->end, pos = arg->start, covered = arg->start, budget = max_pages;
	uint64_t vec_len = arg->vec_len, n = 0, cap = 0;
	struct page_region *vec = NULL, *res = NULL;
	int64_t err = 0;

	*out = NULL;
	if (vec_len) {
		vec = malloc(vec_len * sizeof(*vec));
		if (!vec)
			return -ENOMEM;
	}
	while (pos < end) {
		struct pm_scan_arg a = *arg;
		a.start = pos;
		a.end = end;
		a.vec = (uintptr_t)vec;
		a.max_pages = budget;
		a.walk_end = 0;
		long got = ioctl(fd, PAGEMAP_SCAN, &a);
		if (got < 0) {
			err = -errno;
			break;
		}
		uint64_t new_pages = 0;
		for (long i = 0; i < got; i++) {
			uint64_t s = vec[i].start, e = vec[i].end, c = vec[i].categories;
			if (e <= covered)
				continue;
			if (s < covered)
				s = covered;
			new_pages += (e - s) / 4096;
			if (n && res[n - 1].end == s && res[n - 1].categories == c) {
				res[n - 1].end = e;
			} else {
				if (n == cap) {
					uint64_t ncap = cap ? 2 * cap : 1024;
					struct page_region *p = realloc(res, ncap * sizeof(*res));
					if (!p) {
						err = -ENOMEM;
						goto done;
					}
					res = p;
					cap = ncap;
				}
				res[n].start = s;
				res[n].end = e;
				res[n].categories = c;
				n++;
			}
			covered = e;
		}
		if (a.walk_end <= pos) {	/* no progress: never loop forever */
			break;
		}
		pos = a.walk_end;
		if (covered < pos)
			covered = pos;
		if (max_pages) {
			if (new_pages >= budget)
				break;
			budget -= new_pages;
		}
	}
done:
	free(vec);
	*out = res;
	arg->walk_end = pos < end ? pos : end;
	return err ? err : (int64_t)n;
}

void uffdctl_free(void *p)
{
	free(p);
}
