/*
 * Processes of a session with no Python in them.
 *
 * The session daemon is multi-threaded: a child forked from it must not run
 * Python (the GIL is held by some other thread forever in the child) nor call
 * into glibc paths that take locks another thread may have held at fork time
 * (malloc, stdio).  So uffdctl_proc_fork() forks with the raw clone syscall
 * (no atfork handlers, no allocator locks held across a fork that
 * UFFD_FEATURE_EVENT_FORK may keep blocked until the FORK message is read), and
 * the child runs uffdctl_proc_loop(): a command loop in C over a stream
 * socketpair, until the parent closes its end or sends EXIT.  Everything the
 * loop calls is a system call or async-signal-safe; it never allocates.
 *
 * Wire: the parent writes one struct uffdctl_proc_req (+ req.data_len payload
 * bytes for WRITE); the child answers one struct uffdctl_proc_rep (+ rep.data_len
 * bytes for a read ACCESS; an fd in SCM_RIGHTS for USERFAULTFD and FORK).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "uffd_uapi.h"
#include "uffdctl_proc.h"

#ifndef __NR_userfaultfd
#define __NR_userfaultfd 323
#endif
#ifndef __NR_close_range
#define __NR_close_range 436
#endif

static sigjmp_buf *uffdctl_child_jb;
static volatile int uffdctl_child_sig, uffdctl_child_code;
static volatile uint64_t uffdctl_child_addr;

static void uffdctl_child_signal(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	if (uffdctl_child_jb) {
		uffdctl_child_sig = sig;
		uffdctl_child_code = si->si_code;
		uffdctl_child_addr = (uint64_t)(uintptr_t)si->si_addr;
		siglongjmp(*uffdctl_child_jb, 1);
	}
	/* not during an access: die of it (kill(), not raise(): glibc's cached tid is the parent thread's) */
	signal(sig, SIG_DFL);
	syscall(SYS_kill, syscall(SYS_getpid), sig);
}

static int uffdctl_full_read(int fd, void *buf, size_t n)
{
	char *p = buf;
	while (n) {
		ssize_t r = read(fd, p, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= r;
	}
	return 0;
}

static int uffdctl_full_write(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n) {
		ssize_t r = send(fd, p, n, MSG_NOSIGNAL);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		p += r;
		n -= r;
	}
	return 0;
}

/* The reply, with fd (if >= 0) passed along in SCM_RIGHTS. */
static int uffdctl_send_rep(int sock, struct uffdctl_proc_rep *rep, int fd)
{
	struct iovec iov = { rep, sizeof(*rep) };
	union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t r;

	rep->fd = fd >= 0;
	if (fd >= 0) {
		struct cmsghdr *c;
		memset(&u, 0, sizeof(u));
		mh.msg_control = u.buf;
		mh.msg_controllen = sizeof(u.buf);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	do
		r = sendmsg(sock, &mh, MSG_NOSIGNAL);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -1;
	if ((size_t)r < sizeof(*rep))
		return uffdctl_full_write(sock, (char *)rep + r, sizeof(*rep) - r);
	return 0;
}

static uint64_t uffdctl_child_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

/* One access from the child's only thread; the signal, if any, becomes the result. */
static void uffdctl_child_access(const struct uffdctl_proc_req *q, struct uffdctl_proc_rep *rep, char *rbuf)
{
	uint64_t addr = q->a[0], len = q->a[1], stride = q->a[4];
	int write = (int)q->a[2], fill = (int)q->a[3];
	struct rusage r0, r1;
	sigjmp_buf jb;
	volatile uint64_t sink = 0;
	uint64_t t0;

	/* write the locals first: their faults must not count as the access's */
	memset(&jb, 0, sizeof(jb));
	memset(&r0, 0, sizeof(r0));
	memset(&r1, 0, sizeof(r1));
	uffdctl_child_sig = uffdctl_child_code = 0;
	uffdctl_child_addr = 0;
	getrusage(RUSAGE_SELF, &r0);
	t0 = uffdctl_child_now();
	if (sigsetjmp(jb, 1) == 0) {
		uffdctl_child_jb = &jb;
		uint64_t step = stride ? stride : 1;
		for (uint64_t off = 0; off < len; off += step) {
			volatile uint8_t *p = (volatile uint8_t *)(uintptr_t)(addr + off);
			if (write)
				*p = (uint8_t)fill;
			else if (rbuf)
				rbuf[off] = *p;
			else
				sink += *p;
		}
	} else {
		rep->sig = uffdctl_child_sig;
		rep->si_code = uffdctl_child_code;
		rep->fault_addr = uffdctl_child_addr;
	}
	uffdctl_child_jb = NULL;
	rep->ns = uffdctl_child_now() - t0;
	getrusage(RUSAGE_SELF, &r1);
	rep->minflt = r1.ru_minflt - r0.ru_minflt;
	rep->majflt = r1.ru_majflt - r0.ru_majflt;
	rep->ret = rep->sig ? -EFAULT : 0;
	(void)sink;
}

static int uffdctl_child_setup(int sock, pid_t parent)
{
	struct sigaction sa;
	sigset_t none;
	static const int dfl[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGCHLD, SIGUSR1, SIGUSR2, SIGALRM };

	/* die with the thread that forked us (a long-lived session thread) */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(127);
	for (unsigned i = 0; i < sizeof(dfl) / sizeof(dfl[0]); i++)
		signal(dfl[i], SIG_DFL);
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = uffdctl_child_signal;
	sa.sa_flags = SA_SIGINFO | SA_NODEFER;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
	sigaction(SIGSEGV, &sa, NULL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	/* keep stdio and the command socket (as fd 3), close everything else: above all the
	 * parent's uffds, whose last reference must stay the parent's (closing it wakes faults) */
	if (sock != 3) {
		if (dup2(sock, 3) < 0)
			_exit(126);
		close(sock);
	}
	syscall(__NR_close_range, 4, ~0U, 0);
	return 3;
}

static void uffdctl_proc_loop(int sock) __attribute__((noreturn));

/* fork with the raw syscall; the child never returns from here. */
static int64_t uffdctl_raw_fork(int *sock_out)
{
	int sv[2];
	pid_t parent = getpid();
	long pid;

	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		return -errno;
	pid = syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
	if (pid < 0) {
		int e = errno;
		close(sv[0]);
		close(sv[1]);
		return -e;
	}
	if (pid == 0) {
		close(sv[0]);
		uffdctl_proc_loop(uffdctl_child_setup(sv[1], parent));
	}
	close(sv[1]);
	*sock_out = sv[0];
	return pid;
}

static void uffdctl_proc_loop(int sock)
{
	struct uffdctl_proc_req q;
	struct uffdctl_proc_rep rep;
	char scratch[64];

	/* Warm up: the first access after fork COW-faults this frame's stack pages and the loop's
	 * statics; do it here so the fault counts of real accesses are the access's own. */
	memset(&q, 0, sizeof(q));
	memset(&rep, 0, sizeof(rep));
	q.a[0] = (uint64_t)(uintptr_t)scratch;
	q.a[1] = sizeof(scratch);
	q.a[2] = 1;
	uffdctl_child_access(&q, &rep, NULL);
	for (;;) {
		int fd = -1, exit_code = -1;
		char *data = NULL;
		uint64_t data_len = 0, map_len = 0;

		if (uffdctl_full_read(sock, &q, sizeof(q)) < 0)
			_exit(0);	/* the parent went away */
		memset(&rep, 0, sizeof(rep));
		switch (q.op) {
		case UFFDCTL_PROC_PING:
			rep.ret = getpid();
			break;
		case UFFDCTL_PROC_ACCESS:
			if (q.a[5] && !q.a[2] && q.a[1]) {
				map_len = (q.a[1] + 4095) & ~4095ull;
				data = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
				if (data == MAP_FAILED) {
					data = NULL;
					rep.ret = -errno;
					break;
				}
				memset(data, 0, map_len);	/* fault it in before the count starts */
			}
			uffdctl_child_access(&q, &rep, data);
			if (data && !rep.sig)
				data_len = q.a[1];
			break;
		case UFFDCTL_PROC_MADVISE:
			rep.ret = madvise((void *)(uintptr_t)q.a[0], q.a[1], (int)q.a[2]) < 0 ? -errno : 0;
			break;
		case UFFDCTL_PROC_MUNMAP:
			rep.ret = munmap((void *)(uintptr_t)q.a[0], q.a[1]) < 0 ? -errno : 0;
			break;
		case UFFDCTL_PROC_MPROTECT:
			rep.ret = mprotect((void *)(uintptr_t)q.a[0], q.a[1], (int)q.a[2]) < 0 ? -errno : 0;
			break;
		case UFFDCTL_PROC_MREMAP: {
			void *p = mremap((void *)(uintptr_t)q.a[0], q.a[1], q.a[2], (int)q.a[3], (void *)(uintptr_t)q.a[4]);
			rep.ret = p == MAP_FAILED ? -errno : (int64_t)(uintptr_t)p;
			break;
		}
		case UFFDCTL_PROC_MMAP: {
			void *p = mmap((void *)(uintptr_t)q.a[0], q.a[1], (int)q.a[2], (int)q.a[3] | MAP_ANONYMOUS, -1, 0);
			rep.ret = p == MAP_FAILED ? -errno : (int64_t)(uintptr_t)p;
			break;
		}
		case UFFDCTL_PROC_EXIT:
			exit_code = (int)q.a[0];
			break;
		case UFFDCTL_PROC_FORK: {
			int s = -1;
			int64_t r = uffdctl_raw_fork(&s);
			rep.ret = r;
			fd = r > 0 ? s : -1;
			break;
		}
		case UFFDCTL_PROC_USERFAULTFD: {
			int r;
			if (q.a[1]) {
				int dfd = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
				r = dfd < 0 ? -1 : ioctl(dfd, USERFAULTFD_IOC_NEW, (int)q.a[0]);
				if (r < 0)
					r = -errno;
				if (dfd >= 0)
					close(dfd);
			} else {
				r = (int)syscall(__NR_userfaultfd, (int)q.a[0]);
				if (r < 0)
					r = -errno;
			}
			rep.ret = r < 0 ? r : 0;
			fd = r;
			break;
		}
		case UFFDCTL_PROC_WRITE: {
			/* the payload goes straight into the target: a registered page faults in read() */
			uint64_t left = q.data_len;
			char *p = (char *)(uintptr_t)q.a[0];
			rep.ret = 0;
			while (left) {
				ssize_t r = read(sock, p, left);
				if (r < 0 && errno == EINTR)
					continue;
				if (r <= 0) {
					rep.ret = r < 0 ? -errno : -EPIPE;
					if (r == 0)
						_exit(0);
					break;
				}
				p += r;
				left -= r;
			}
			break;
		}
		case UFFDCTL_PROC_WAITPID: {
			int status = 0;
			pid_t r = waitpid((pid_t)q.a[0], &status, (int)q.a[1]);
			rep.ret = r < 0 ? -errno : r;
			rep.si_code = status;
			break;
		}
		case UFFDCTL_PROC_KILL:
			rep.ret = syscall(SYS_kill, (pid_t)q.a[0], (int)q.a[1]) < 0 ? -errno : 0;
			break;
		default:
			rep.ret = -ENOSYS;
		}
		rep.data_len = data_len;
		if (uffdctl_send_rep(sock, &rep, fd) < 0 ||
		    (data_len && uffdctl_full_write(sock, data, data_len) < 0))
			_exit(0);
		if (fd >= 0)
			close(fd);
		if (data)
			munmap(data, map_len);
		if (exit_code >= 0)
			_exit(exit_code);
	}
}

/* Fork the calling process; returns the child's pid (or -errno) and its command socket. */
int64_t uffdctl_proc_fork(int *sock_out)
{
	return uffdctl_raw_fork(sock_out);
}
