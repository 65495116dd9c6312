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
