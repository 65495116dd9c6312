/*
 * Non-variadic ioctl(2)/syscall(2)/mmap(2) wrappers returning -errno instead of -1 + errno.
 * (see uffdctl_helpers.h for the map of the helpers)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "uffd_uapi.h"
#include "uffdctl_helpers.h"
#include "uffdctl_readfirst.h"

#ifndef __NR_userfaultfd
#define __NR_userfaultfd 323
#endif
#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 0x0001U
#endif

int uffdctl_ioctl(int fd, unsigned long req, void *arg)
{
	int r = ioctl(fd, req, arg);
	return r < 0 ? -errno : r;
}

/*
 * Per-shape ioctl wrappers taking scalars: filling the struct in C costs nothing,
 * filling a cffi struct from Python costs ~100 ns a field.  Three shapes cover
 * every range ioctl (checked below); the result field is preset to INT64_MIN, a
 * value the kernel never writes, so "not written" stays visible in *res.
 */
struct uffdctl_range_mode { struct uffdio_range range; __u64 mode; __s64 res; };
struct uffdctl_dst_src { __u64 dst; __u64 src; __u64 len; __u64 mode; __s64 res; };
_Static_assert(sizeof(struct uffdctl_range_mode) == sizeof(struct uffdio_zeropage) &&
	       offsetof(struct uffdio_zeropage, zeropage) == offsetof(struct uffdctl_range_mode, res) &&
	       offsetof(struct uffdio_continue, mapped) == offsetof(struct uffdctl_range_mode, res) &&
	       offsetof(struct uffdio_poison, updated) == offsetof(struct uffdctl_range_mode, res) &&
	       offsetof(struct uffdio_writeprotect, mode) == offsetof(struct uffdctl_range_mode, mode),
	       "range+mode+result layout");
_Static_assert(offsetof(struct uffdio_copy, copy) == offsetof(struct uffdctl_dst_src, res) &&
	       offsetof(struct uffdio_move, move) == offsetof(struct uffdctl_dst_src, res),
	       "dst+src+len+mode+result layout");

int uffdctl_ioctl_range(int fd, unsigned long req, uint64_t start, uint64_t len)
{
	struct uffdio_range r = { start, len };
	return ioctl(fd, req, &r) < 0 ? -errno : 0;
}

int uffdctl_ioctl_range_mode(int fd, unsigned long req, uint64_t start, uint64_t len, uint64_t mode,
			     int64_t *res)
{
	struct uffdctl_range_mode a = { { start, len }, mode, INT64_MIN };
	int r = ioctl(fd, req, &a) < 0 ? -errno : 0;
	*res = a.res;
	return r;
}

int uffdctl_ioctl_dst_src(int fd, unsigned long req, uint64_t dst, uint64_t src, uint64_t len, uint64_t mode,
			  int64_t *res)
{
	struct uffdctl_dst_src a = { dst, src, len, mode, INT64_MIN };
	int r = ioctl(fd, req, &a) < 0 ? -errno : 0;
	*res = a.res;
	return r;
}

int uffdctl_userfaultfd(int flags)
{
	long r = syscall(__NR_userfaultfd, flags);
	return r < 0 ? -errno : (int)r;
}

int uffdctl_dev_userfaultfd(int flags)
{
	int dfd = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	int r, e;
	if (dfd < 0)
		return -errno;
	r = ioctl(dfd, USERFAULTFD_IOC_NEW, flags);
	e = errno;
	close(dfd);
	return r < 0 ? -e : r;
}

int64_t uffdctl_mmap(uint64_t addr, uint64_t len, int prot, int flags, int fd, int64_t off)
{
	void *p = mmap((void *)(uintptr_t)addr, len, prot, flags, fd, off);
	return p == MAP_FAILED ? -errno : (int64_t)(uintptr_t)p;
}

int uffdctl_munmap(uint64_t addr, uint64_t len)
{
	return munmap((void *)(uintptr_t)addr, len) < 0 ? -errno : 0;
}

int uffdctl_madvise(uint64_t addr, uint64_t len, int advice)
{
	return madvise((void *)(uintptr_t)addr, len, advice) < 0 ? -errno : 0;
}

int uffdctl_mprotect(uint64_t addr, uint64_t len, int prot)
{
	return mprotect((void *)(uintptr_t)addr, len, prot) < 0 ? -errno : 0;
}

int64_t uffdctl_mremap(uint64_t old, uint64_t old_len, uint64_t new_len, int flags, uint64_t new_addr)
{
	void *p = mremap((void *)(uintptr_t)old, old_len, new_len, flags, (void *)(uintptr_t)new_addr);
	return p == MAP_FAILED ? -errno : (int64_t)(uintptr_t)p;
}

int uffdctl_memfd_create(const char *name, unsigned int flags)
{
	long r = syscall(__NR_memfd_create, name, flags);
	return r < 0 ? -errno : (int)r;
}

int64_t uffdctl_pread(int fd, void *buf, uint64_t count, int64_t off)
{
	ssize_t r = pread(fd, buf, count, off);
	return r < 0 ? -errno : r;
}

int64_t uffdctl_read(int fd, void *buf, uint64_t count)
{
	ssize_t r = read(fd, buf, count);
	return r < 0 ? -errno : r;
}

/*
 * poll(2) + read(2) in one call, so a Python fault policy waits with the GIL released and pays
 * one crossing per batch: uffdctl_read_first() (uffdctl_readfirst.h).
 */
int64_t uffdctl_poll_read(int fd, void *buf, uint64_t count, int timeout_ms, int poll_first)
{
	return uffdctl_read_first(fd, buf, count, timeout_ms, poll_first);
}

/*
 * The per-page fast path: one call, the result field as the return value.  On success: the
 * result field (bytes copied/zeroed/mapped...; 0 where the ioctl has none), never negative.  On
 * failure: -errno, and the result field (partial progress, or INT64_MIN if the kernel did not
 * write it) kept for uffdctl_last_result() on the same thread: Python reads it only then.
 */
static __thread int64_t uffdctl_last_res;

int64_t uffdctl_last_result(void)
{
	return uffdctl_last_res;
}

int64_t uffdctl_dst_src1(int fd, unsigned long req, uint64_t dst, uint64_t src, uint64_t len, uint64_t mode)
{
	struct uffdctl_dst_src a = { dst, src, len, mode, INT64_MIN };
	if (ioctl(fd, req, &a) < 0) {
		int64_t e = -errno;
		uffdctl_last_res = a.res;
		return e;
	}
	return a.res == INT64_MIN ? 0 : a.res;
}

int64_t uffdctl_range_mode1(int fd, unsigned long req, uint64_t start, uint64_t len, uint64_t mode)
{
	struct uffdctl_range_mode a = { { start, len }, mode, INT64_MIN };
	if (ioctl(fd, req, &a) < 0) {
		int64_t e = -errno;
		uffdctl_last_res = a.res;
		return e;
	}
	return a.res == INT64_MIN ? 0 : a.res;
}

/* The three per-page calls a fault policy makes most, with the request code built in: one
 * argument less to convert per call (the Python side's cost is per argument). */
int64_t uffdctl_copy1(int fd, uint64_t dst, uint64_t src, uint64_t len, uint64_t mode)
{
	return uffdctl_dst_src1(fd, UFFDIO_COPY, dst, src, len, mode);
}

int64_t uffdctl_zeropage1(int fd, uint64_t start, uint64_t len, uint64_t mode)
{
	return uffdctl_range_mode1(fd, UFFDIO_ZEROPAGE, start, len, mode);
}

int64_t uffdctl_writeprotect1(int fd, uint64_t start, uint64_t len, uint64_t mode)
{
	return uffdctl_range_mode1(fd, UFFDIO_WRITEPROTECT, start, len, mode);
}
