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
