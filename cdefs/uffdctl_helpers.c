/*
 * Small C helpers compiled into uffdctl._uffd (cffi API mode).
 *
 * - non-variadic wrappers for ioctl(2)/syscall(2)/mmap(2) that return -errno
 *   instead of -1 + errno (one call from Python, no errno round trip);
 * - uffdctl_access(): touch memory with the GIL released (cffi releases it
 *   around every call), counting the calling thread's minor/major faults with
 *   getrusage(RUSAGE_THREAD) and turning SIGBUS into a result, not a crash;
 * - a native fault-handling thread (pthread) that polls the uffd and a stop
 *   eventfd, reads messages in batches, resolves them by policy and logs every
 *   message with a timestamp; it never needs the GIL;
 * - per-page ioctl loops used by the benchmarks.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <setjmp.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

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

/* ---- touching memory, with SIGBUS turned into a result ------------------ */

static __thread sigjmp_buf *uffdctl_jb;
static __thread volatile int uffdctl_bus_code;
static __thread volatile uint64_t uffdctl_bus_addr;
static struct sigaction uffdctl_old_bus;
static pthread_mutex_t uffdctl_sig_lock = PTHREAD_MUTEX_INITIALIZER;

static void uffdctl_bus_handler(int sig, siginfo_t *si, void *uc)
{
	if (uffdctl_jb) {
		uffdctl_bus_code = si->si_code;
		uffdctl_bus_addr = (uint64_t)(uintptr_t)si->si_addr;
		siglongjmp(*uffdctl_jb, 1);
	}
	/* Not one of ours: hand it to whoever had SIGBUS before (faulthandler). */
	if (uffdctl_old_bus.sa_flags & SA_SIGINFO) {
		if (uffdctl_old_bus.sa_sigaction) {
			uffdctl_old_bus.sa_sigaction(sig, si, uc);
			return;
		}
	} else if (uffdctl_old_bus.sa_handler != SIG_DFL &&
		   uffdctl_old_bus.sa_handler != SIG_IGN) {
		uffdctl_old_bus.sa_handler(sig);
		return;
	}
	signal(sig, SIG_DFL);
	raise(sig);
}

static void uffdctl_arm_sigbus(void)
{
	struct sigaction cur, sa;

	pthread_mutex_lock(&uffdctl_sig_lock);
	sigaction(SIGBUS, NULL, &cur);
	if (!((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == uffdctl_bus_handler)) {
		memset(&sa, 0, sizeof(sa));
		sa.sa_sigaction = uffdctl_bus_handler;
		sa.sa_flags = SA_SIGINFO | SA_NODEFER;
		sigemptyset(&sa.sa_mask);
		uffdctl_old_bus = cur;
		sigaction(SIGBUS, &sa, NULL);
	}
	pthread_mutex_unlock(&uffdctl_sig_lock);
}

struct uffdctl_access_result {
	int64_t minflt;		/* minor faults of the calling thread during the access */
	int64_t majflt;
	int32_t sigbus;		/* 1 if the access ended in SIGBUS */
	int32_t si_code;
	uint64_t fault_addr;
	uint64_t ns;		/* wall time of the access */
};

static uint64_t uffdctl_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

/*
 * Access [addr, addr+len) from the calling thread.  write: copy wbuf in, or
 * fill with `fill` when wbuf is NULL.  read: copy out into rbuf, or read every
 * word when rbuf is NULL.  `stride` > 0 touches one byte every `stride` bytes
 * instead (one access per page: the fault count is then exact per page).
 */
int uffdctl_access(uint64_t addr, uint64_t len, int write, const void *wbuf,
		   void *rbuf, int fill, uint64_t stride,
		   struct uffdctl_access_result *res)
{
	struct rusage r0, r1;
	sigjmp_buf jb;
	volatile uint64_t sink = 0;
	uint64_t t0;

	uffdctl_arm_sigbus();
	/*
	 * Write everything this function writes between the two getrusage() calls first:
	 * the result, the thread-locals and the stack locals.  After clear_refs 4 on a
	 * soft-dirty kernel those pages are write-protected too, and their write faults
	 * must not be counted as the access's.
	 */
	memset(res, 0, sizeof(*res));
	memset(&jb, 0, sizeof(jb));
	memset(&r1, 0, sizeof(r1));
	uffdctl_jb = NULL;
	uffdctl_bus_code = 0;
	uffdctl_bus_addr = 0;
	getrusage(RUSAGE_THREAD, &r0);
	t0 = uffdctl_now_ns();
	if (sigsetjmp(jb, 1) == 0) {
		uffdctl_jb = &jb;
		if (stride) {
			for (uint64_t off = 0; off < len; off += stride) {
				volatile uint8_t *p = (volatile uint8_t *)(uintptr_t)(addr + off);
				if (write)
					*p = wbuf ? ((const uint8_t *)wbuf)[off] : (uint8_t)fill;
				else if (rbuf)
					((uint8_t *)rbuf)[off] = *p;
				else
					sink += *p;
			}
		} else if (write) {
			if (wbuf)
				memcpy((void *)(uintptr_t)addr, wbuf, len);
			else
				memset((void *)(uintptr_t)addr, fill, len);
		} else if (rbuf) {
			memcpy(rbuf, (const void *)(uintptr_t)addr, len);
		} else {
			uint64_t off = 0;
			for (; off + 8 <= len; off += 8)
				sink += *(volatile uint64_t *)(uintptr_t)(addr + off);
			for (; off < len; off++)
				sink += *(volatile uint8_t *)(uintptr_t)(addr + off);
		}
	} else {
		res->sigbus = 1;
		res->si_code = uffdctl_bus_code;
		res->fault_addr = uffdctl_bus_addr;
	}
	uffdctl_jb = NULL;
	res->ns = uffdctl_now_ns() - t0;
	getrusage(RUSAGE_THREAD, &r1);
	res->minflt = r1.ru_minflt - r0.ru_minflt;
	res->majflt = r1.ru_majflt - r0.ru_majflt;
	(void)sink;
	return res->sigbus ? -EFAULT : 0;
}

int uffdctl_thread_faults(int64_t *minflt, int64_t *majflt)
{
	struct rusage r;
	if (getrusage(RUSAGE_THREAD, &r) < 0)
		return -errno;
	*minflt = r.ru_minflt;
	*majflt = r.ru_majflt;
	return 0;
}

int uffdctl_gettid(void)
{
	return (int)syscall(SYS_gettid);
}

/* ---- the native fault handler ------------------------------------------- */

#define UFFDCTL_POL_QUEUE     0	/* log only: resolve by hand */
#define UFFDCTL_POL_ZEROPAGE  1
#define UFFDCTL_POL_COPY_SRC  2	/* copy from src + (addr - base) */
#define UFFDCTL_POL_COPY_FILL 3	/* copy from a page filled with a byte */
#define UFFDCTL_POL_CONTINUE  4
#define UFFDCTL_POL_UNPROTECT 5
#define UFFDCTL_POL_WAKE      6

struct uffdctl_handler_cfg {
	int uffd;
	int missing_policy;	/* QUEUE, ZEROPAGE, COPY_SRC, COPY_FILL */
	int wp_policy;		/* QUEUE, UNPROTECT, WAKE */
	int minor_policy;	/* QUEUE, CONTINUE */
	uint64_t base;		/* region the src offset is computed from */
	uint64_t src;
	uint64_t page_size;	/* 4096, or the huge page size for hugetlb */
	uint64_t copy_mode;	/* UFFDIO_COPY_MODE_WP to resolve write-protected */
	int fill;
	int batch;		/* messages per read() */
	int log_cap;		/* ring capacity, entries */
};

struct uffdctl_event {
	uint64_t ts_ns;		/* CLOCK_MONOTONIC when read */
	struct uffd_msg msg;
	int32_t action;		/* policy applied, UFFDCTL_POL_* */
	int32_t err;		/* 0 or -errno of the resolving ioctl */
	int64_t result;		/* result field of the resolving ioctl */
};

struct uffdctl_handler {
	struct uffdctl_handler_cfg cfg;
	pthread_t thread;
	int stopfd;
	int running;
	void *fill_page;
	pthread_mutex_t lock;
	struct uffdctl_event *log;
	uint64_t head, tail;	/* ring: [tail, head) */
	uint64_t dropped, nmsgs, nresolved, nerrors, nreads;
	int exit_err;
	struct uffd_msg *pending;	/* faults queued for a manual resolution */
	int npending, pending_cap;
	struct uffd_msg *msgs;		/* read buffer, allocated by start(): the thread never mallocs */
	sem_t ready;			/* posted once the thread is about to poll */
};

static void uffdctl_log(struct uffdctl_handler *h, const struct uffd_msg *m,
			int action, int err, int64_t result, uint64_t ts)
{
	struct uffdctl_event *e;

	pthread_mutex_lock(&h->lock);
	if (h->head - h->tail >= (uint64_t)h->cfg.log_cap) {
		h->tail++;
		h->dropped++;
	}
	e = &h->log[h->head % h->cfg.log_cap];
	e->ts_ns = ts;
	e->msg = *m;
	e->action = action;
	e->err = err;
	e->result = result;
	h->head++;
	h->nmsgs++;
	if (err)
		h->nerrors++;
	else if (action > UFFDCTL_POL_QUEUE)	/* a fault resolved (events have action -1) */
		h->nresolved++;
	pthread_mutex_unlock(&h->lock);
}

static int uffdctl_wake(int fd, uint64_t start, uint64_t len)
{
	struct uffdio_range r = { .start = start, .len = len };
	return uffdctl_ioctl(fd, UFFDIO_WAKE, &r);
}

/* Resolve one page fault; returns action, sets err and result. */
static int uffdctl_resolve(struct uffdctl_handler *h, const struct uffd_msg *m,
			   int *err, int64_t *result)
{
	const struct uffdctl_handler_cfg *c = &h->cfg;
	uint64_t flags = m->arg.pagefault.flags;
	uint64_t page = m->arg.pagefault.address & ~(c->page_size - 1);
	int action, r = 0;

	*err = 0;
	*result = 0;
	if (flags & UFFD_PAGEFAULT_FLAG_WP)
		action = c->wp_policy;
	else if (flags & UFFD_PAGEFAULT_FLAG_MINOR)
		action = c->minor_policy;
	else
		action = c->missing_policy;

	for (int tries = 0; tries < 1000; tries++) {
		switch (action) {
		case UFFDCTL_POL_QUEUE:
			return action;
		case UFFDCTL_POL_ZEROPAGE: {
			struct uffdio_zeropage z = { .range = { page, c->page_size } };
			r = uffdctl_ioctl(c->uffd, UFFDIO_ZEROPAGE, &z);
			*result = z.zeropage;
			break;
		}
		case UFFDCTL_POL_COPY_SRC:
		case UFFDCTL_POL_COPY_FILL: {
			struct uffdio_copy cp = {
				.dst = page,
				.src = action == UFFDCTL_POL_COPY_SRC ?
					c->src + (page - c->base) :
					(uint64_t)(uintptr_t)h->fill_page,
				.len = c->page_size,
				.mode = c->copy_mode,
			};
			r = uffdctl_ioctl(c->uffd, UFFDIO_COPY, &cp);
			*result = cp.copy;
			break;
		}
		case UFFDCTL_POL_CONTINUE: {
			struct uffdio_continue co = { .range = { page, c->page_size } };
			r = uffdctl_ioctl(c->uffd, UFFDIO_CONTINUE, &co);
			*result = co.mapped;
			break;
		}
		case UFFDCTL_POL_UNPROTECT: {
			struct uffdio_writeprotect wp = { .range = { page, c->page_size }, .mode = 0 };
			r = uffdctl_ioctl(c->uffd, UFFDIO_WRITEPROTECT, &wp);
			break;
		}
		case UFFDCTL_POL_WAKE:
			r = uffdctl_wake(c->uffd, page, c->page_size);
			break;
		default:
			r = -EINVAL;
		}
		if (r == -EAGAIN)	/* mmap changing: an event is pending, read it first */
			continue;
		break;
	}
	if (r == -EEXIST) {
		/* benign race: somebody resolved it already; wake as the selftests do */
		r = uffdctl_wake(c->uffd, page, c->page_size);
	}
	*err = r < 0 ? r : 0;
	return action;
}

/*
 * No malloc on the handler thread: a thread that forks holds glibc's allocator
 * locks until fork() returns, and with UFFD_FEATURE_EVENT_FORK fork() returns only
 * once this thread has read the FORK event.  The pending list grows with mremap.
 */
static void uffdctl_add_pending(struct uffdctl_handler *h, const struct uffd_msg *m)
{
	if (h->npending == h->pending_cap) {
		size_t old = h->pending_cap * sizeof(*m), new = 2 * old;
		void *p = mremap(h->pending, old, new, MREMAP_MAYMOVE);
		if (p == MAP_FAILED)
			return;
		h->pending = p;
		h->pending_cap *= 2;
	}
	h->pending[h->npending++] = *m;
}

/*
 * Release: resolve every fault the handler queued (and any message still
 * unread) the way that lets the faulting thread go on: MISSING -> zero-filled
 * page, WP -> un-protect, MINOR -> CONTINUE.  A fault the user already resolved
 * answers EEXIST (or is a no-op) and is merely woken.  So stopping a handler
 * never leaves a thread blocked in a fault it took.
 */
static void uffdctl_release_pending(struct uffdctl_handler *h)
{
	struct uffdctl_handler_cfg safe = h->cfg;
	struct uffd_msg m;
	uint64_t ts = uffdctl_now_ns();

	safe.missing_policy = UFFDCTL_POL_COPY_FILL;	/* zero-filled: works on hugetlb too */
	safe.wp_policy = UFFDCTL_POL_UNPROTECT;
	safe.minor_policy = UFFDCTL_POL_CONTINUE;
	memset(h->fill_page, 0, h->cfg.page_size);
	/* messages that arrived but were never read */
	for (;;) {
		struct pollfd p = { .fd = h->cfg.uffd, .events = POLLIN };
		if (poll(&p, 1, 0) <= 0 || !(p.revents & POLLIN))
			break;
		if (read(h->cfg.uffd, &m, sizeof(m)) != sizeof(m))
			break;
		uffdctl_log(h, &m, m.event == UFFD_EVENT_PAGEFAULT ? UFFDCTL_POL_QUEUE : -1, 0, 0, ts);
		if (m.event == UFFD_EVENT_PAGEFAULT)
			uffdctl_add_pending(h, &m);
	}
	h->cfg = safe;
	for (int i = 0; i < h->npending; i++) {
		int err;
		int64_t result;
		uffdctl_resolve(h, &h->pending[i], &err, &result);
	}
	h->npending = 0;
}

static void *uffdctl_handler_main(void *arg)
{
	struct uffdctl_handler *h = arg;
	int n = h->cfg.batch;
	struct uffd_msg *msgs = h->msgs;
	sigset_t all;

	/* Signals belong to Python's main thread, not to this one. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	sem_post(&h->ready);
	for (;;) {
		struct pollfd p[2] = {
			{ .fd = h->cfg.uffd, .events = POLLIN },
			{ .fd = h->stopfd, .events = POLLIN },
		};
		int r = poll(p, 2, -1);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			h->exit_err = -errno;
			break;
		}
		if (p[1].revents)
			break;
		if (p[0].revents & (POLLERR | POLLHUP | POLLNVAL)) {
			h->exit_err = -EPIPE;
			break;
		}
		ssize_t got = read(h->cfg.uffd, msgs, n * sizeof(*msgs));
		if (got < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			h->exit_err = -errno;
			break;
		}
		h->nreads++;
		uint64_t ts = uffdctl_now_ns();
		for (ssize_t i = 0; i < got / (ssize_t)sizeof(*msgs); i++) {
			int err = 0, action = -1;
			int64_t result = 0;
			if (msgs[i].event == UFFD_EVENT_PAGEFAULT)
				action = uffdctl_resolve(h, &msgs[i], &err, &result);
			if (action == UFFDCTL_POL_QUEUE)
				uffdctl_add_pending(h, &msgs[i]);
			uffdctl_log(h, &msgs[i], action, err, result, ts);
		}
	}
	return NULL;
}

struct uffdctl_handler *uffdctl_handler_start(const struct uffdctl_handler_cfg *cfg, int *err)
{
	struct uffdctl_handler *h = calloc(1, sizeof(*h));
	int r;

	*err = 0;
	if (!h) {
		*err = -ENOMEM;
		return NULL;
	}
	h->cfg = *cfg;
	if (h->cfg.log_cap <= 0)
		h->cfg.log_cap = 4096;
	if (h->cfg.page_size == 0)
		h->cfg.page_size = 4096;
	if (h->cfg.batch <= 0)
		h->cfg.batch = 16;
	h->log = calloc(h->cfg.log_cap, sizeof(*h->log));
	h->msgs = calloc(h->cfg.batch, sizeof(*h->msgs));
	h->pending_cap = 256;
	h->pending = mmap(NULL, h->pending_cap * sizeof(*h->pending), PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	h->fill_page = mmap(NULL, h->cfg.page_size, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	h->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (!h->log || !h->msgs || h->pending == MAP_FAILED || h->fill_page == MAP_FAILED || h->stopfd < 0) {
		*err = -ENOMEM;
		goto fail;
	}
	memset(h->fill_page, h->cfg.fill, h->cfg.page_size);
	pthread_mutex_init(&h->lock, NULL);
	sem_init(&h->ready, 0, 0);
	r = pthread_create(&h->thread, NULL, uffdctl_handler_main, h);
	if (r) {
		*err = -r;
		goto fail;
	}
	while (sem_wait(&h->ready) < 0 && errno == EINTR)
		;	/* started means polling: a fork right after start() cannot deadlock */
	h->running = 1;
	return h;
fail:
	if (h->stopfd >= 0)
		close(h->stopfd);
	if (h->fill_page && h->fill_page != MAP_FAILED)
		munmap(h->fill_page, h->cfg.page_size);
	if (h->pending && h->pending != MAP_FAILED)
		munmap(h->pending, h->pending_cap * sizeof(*h->pending));
	free(h->msgs);
	free(h->log);
	free(h);
	return NULL;
}

/* Stop and join the thread (the GIL is released by cffi while we wait). */
int uffdctl_handler_stop(struct uffdctl_handler *h, int release)
{
	uint64_t one = 1;
	if (!h->running)
		return h->exit_err;
	if (write(h->stopfd, &one, sizeof(one)) < 0)
		return -errno;
	pthread_join(h->thread, NULL);
	h->running = 0;
	if (release)
		uffdctl_release_pending(h);
	return h->exit_err;
}

/* Copy up to max logged events out; returns how many. */
int uffdctl_handler_drain(struct uffdctl_handler *h, struct uffdctl_event *out, int max)
{
	int n = 0;
	pthread_mutex_lock(&h->lock);
	while (n < max && h->tail < h->head) {
		out[n++] = h->log[h->tail % h->cfg.log_cap];
		h->tail++;
	}
	pthread_mutex_unlock(&h->lock);
	return n;
}

void uffdctl_handler_stats(struct uffdctl_handler *h, uint64_t *out)
{
	pthread_mutex_lock(&h->lock);
	out[0] = h->nmsgs;
	out[1] = h->nresolved;
	out[2] = h->nerrors;
	out[3] = h->dropped;
	out[4] = h->nreads;
	pthread_mutex_unlock(&h->lock);
}

void uffdctl_handler_free(struct uffdctl_handler *h)
{
	if (h->running)
		uffdctl_handler_stop(h, 1);
	close(h->stopfd);
	munmap(h->pending, h->pending_cap * sizeof(*h->pending));
	free(h->msgs);
	sem_destroy(&h->ready);
	munmap(h->fill_page, h->cfg.page_size);
	pthread_mutex_destroy(&h->lock);
	free(h->log);
	free(h);
}

/* ---- per-page ioctl loops (benchmarks) ---------------------------------- */

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
