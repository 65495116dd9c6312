/*
 * The read-first wait of a uffd, shared by uffdctl_poll_read() (uffdctl._uffd, cdefs/uffdctl_sys.c)
 * and the fast path's wait_msgs (uffdctl._fastpath, cdefs/uffdctl_fastpath.c): bytes read, 0 on
 * timeout (timeout_ms < 0: wait forever), or -errno.  poll_first: poll before the first read (a
 * blocking fd, whose read would ignore the timeout); otherwise read first and poll only on EAGAIN
 * (one system call when a message is already queued).
 */
#ifndef UFFDCTL_READFIRST_H
#define UFFDCTL_READFIRST_H

#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <unistd.h>

static inline int64_t uffdctl_read_first(int fd, void *buf, uint64_t count, int timeout_ms, int poll_first)
{
	for (;;) {
		ssize_t r = poll_first ? (errno = EAGAIN, -1) : read(fd, buf, count);
		poll_first = 0;
		if (r >= 0)
			return r;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return -errno;
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int n = poll(&p, 1, timeout_ms);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return 0;
		if (p.revents & POLLIN) {
			r = read(fd, buf, count);
			if (r >= 0)
				return r;
			if (errno != EAGAIN && errno != EINTR)
				return -errno;
			continue;	/* another reader took it */
		}
		if (p.revents & (POLLERR | POLLNVAL))
			return -EBADF;
		if (p.revents & POLLHUP && !(p.revents & POLLIN))
			return -EPIPE;
	}
}

#endif
