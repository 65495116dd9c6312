/*
 * The native fault-handling thread: polls the uffd and a stop eventfd, reads messages in
 * batches, resolves them by policy and logs every message with a timestamp; it never needs
 * the GIL and never mallocs.
 * (see uffdctl_helpers.h for the map of the helpers)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "uffd_uapi.h"
#include "uffdctl_helpers.h"

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
	/*
	 * The barrier (uffdctl_handler_sync): reads_begun counts read() calls begun, reads_done
	 * those whose messages are all resolved and logged.  An mm operation that raised a
	 * blocking event (REMOVE, UNMAP, REMAP, FORK) returns only once the event was read, so
	 * the read() that took it had begun before: waiting for reads_done >= reads_begun (as
	 * seen after the operation returned) puts the event in the log.
	 */
	uint64_t reads_begun, reads_done;
	pthread_cond_t done_cond;
	struct uffd_msg *retry;		/* faults answered EAGAIN (mmap changing): retried after the next read */
	int nretry, retry_cap;
	int stuck;			/* stop() timed out: the thread is blocked (in a fault of its own?) */
	int nonblock;			/* the uffd is O_NONBLOCK: read first, poll only when nothing is queued */
	int stop_req;			/* set by stop() before it signals stopfd (seen without a poll) */
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
	e->seq = h->head + 1;
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
		/* the source is [src, src + src_len), lined up with base: outside it, queue the fault */
		if (c->src_len && (page < c->base || page - c->base + c->page_size > c->src_len)) {
			*err = -EFAULT;
			return UFFDCTL_POL_QUEUE;
		}
		/* fall through */
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
	if (r == -EAGAIN) {	/* mmap changing: an event is pending; read it, then retry (the caller) */
		*err = r;
		return -2;
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

static void uffdctl_add_retry(struct uffdctl_handler *h, const struct uffd_msg *m)
{
	if (h->nretry == h->retry_cap) {
		size_t old = h->retry_cap * sizeof(*m), new = 2 * old;
		void *p = mremap(h->retry, old, new, MREMAP_MAYMOVE);
		if (p == MAP_FAILED) {
			uffdctl_add_pending(h, m);	/* cannot retry it: leave it to the user */
			return;
		}
		h->retry = p;
		h->retry_cap *= 2;
	}
	h->retry[h->nretry++] = *m;
}

static void uffdctl_reads_done(struct uffdctl_handler *h, uint64_t upto)
{
	pthread_mutex_lock(&h->lock);
	h->reads_done = upto;
	pthread_cond_broadcast(&h->done_cond);
	pthread_mutex_unlock(&h->lock);
}

/* Handle one message read from the uffd: resolve a fault by policy, log it (deferred faults are
 * logged when finally resolved). */
static void uffdctl_handle(struct uffdctl_handler *h, const struct uffd_msg *m, uint64_t ts)
{
	int err = 0, action = -1;
	int64_t result = 0;

	if (m->event == UFFD_EVENT_PAGEFAULT)
		action = uffdctl_resolve(h, m, &err, &result);
	if (action == -2) {
		uffdctl_add_retry(h, m);
		return;
	}
	if (action == UFFDCTL_POL_QUEUE)
		uffdctl_add_pending(h, m);
	uffdctl_log(h, m, action, err, result, ts);
}

/* Retry the faults deferred by EAGAIN (after the read that took the pending event). */
static void uffdctl_retry(struct uffdctl_handler *h)
{
	int n = h->nretry;
	uint64_t ts = uffdctl_now_ns();

	h->nretry = 0;
	for (int i = 0; i < n; i++)
		uffdctl_handle(h, &h->retry[i], ts);
}

/*
 * Release: resolve every fault the handler queued (and any message still
 * unread) the way that lets the faulting thread go on: MISSING -> zero-filled
 * page, WP -> un-protect, MINOR -> CONTINUE.  A fault the user already resolved
 * answers EEXIST (or is a no-op) and is merely woken.  So stopping a handler
 * never leaves a thread blocked in a fault it took.
 */
static void uffdctl_drain_unread(struct uffdctl_handler *h)
{
	struct uffd_msg m;
	uint64_t ts = uffdctl_now_ns();

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
}

static void uffdctl_release_pending(struct uffdctl_handler *h)
{
	struct uffdctl_handler_cfg safe = h->cfg;

	safe.missing_policy = UFFDCTL_POL_COPY_FILL;	/* zero-filled: works on hugetlb too */
	safe.wp_policy = UFFDCTL_POL_UNPROTECT;
	safe.minor_policy = UFFDCTL_POL_CONTINUE;
	memset(h->fill_page, 0, h->cfg.page_size);
	uffdctl_drain_unread(h);	/* messages that arrived but were never read */
	h->cfg = safe;
	for (int i = 0; i < h->nretry; i++)
		uffdctl_add_pending(h, &h->retry[i]);
	h->nretry = 0;
	for (int i = 0; i < h->npending; i++) {
		int err;
		int64_t result;
		for (int tries = 0; tries < 1000; tries++) {
			if (uffdctl_resolve(h, &h->pending[i], &err, &result) != -2)
				break;
			uffdctl_drain_unread(h);	/* the pending event is what makes it EAGAIN */
		}
	}
	h->npending = 0;
}

static void uffdctl_handle_batch(struct uffdctl_handler *h, const struct uffd_msg *msgs, ssize_t nmsgs)
{
	uint64_t ts;

	h->nreads++;
	if (h->cfg.delay_us) {
		struct timespec d = { h->cfg.delay_us / 1000000, (long)(h->cfg.delay_us % 1000000) * 1000 };
		nanosleep(&d, NULL);
	}
	ts = uffdctl_now_ns();
	for (ssize_t i = 0; i < nmsgs; i++)
		uffdctl_handle(h, &msgs[i], ts);
	uffdctl_retry(h);
}

static void *uffdctl_handler_main(void *arg)
{
	struct uffdctl_handler *h = arg;
	int n = h->cfg.batch;
	struct uffd_msg *msgs = h->msgs;
	sigset_t all;

	/* Signals belong to Python's main thread, not to this one. */
	pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);	/* read mode enables it around read(2) only */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, NULL);
	sem_post(&h->ready);
	for (;;) {
		if (h->cfg.read_mode) {
			/* the selftests' read mode: block in read(2); stop() cancels the thread there.
			 * No barrier here (reads_begun stays): a read blocked while idle would hold it. */
			int old;
			pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, &old);
			ssize_t got = read(h->cfg.uffd, msgs, n * sizeof(*msgs));
			pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old);
			if (got < 0) {
				if (errno == EAGAIN || errno == EINTR)
					continue;
				h->exit_err = -errno;
				break;
			}
			uffdctl_handle_batch(h, msgs, got / (ssize_t)sizeof(*msgs));
			continue;
		}
		if (__atomic_load_n(&h->stop_req, __ATOMIC_ACQUIRE))
			break;
		/*
		 * A message already queued (on one vCPU the faulter runs between our UFFDIO_COPY and
		 * our next poll, and faults again) is read at once: one read(2) per fault instead of
		 * poll(2) + read(2).  Only on a non-blocking uffd (a blocking read would not see stop),
		 * and not while faults wait for a retry (the poll below times them).  Counted by the
		 * barrier like any read.
		 */
		if (h->nonblock && !h->nretry) {
			uint64_t begun = __atomic_add_fetch(&h->reads_begun, 1, __ATOMIC_SEQ_CST);
			ssize_t got = read(h->cfg.uffd, msgs, n * sizeof(*msgs));
			if (got > 0) {
				uffdctl_handle_batch(h, msgs, got / (ssize_t)sizeof(*msgs));
				uffdctl_reads_done(h, begun);
				continue;
			}
			uffdctl_reads_done(h, begun);	/* EAGAIN, or an error the poll below reports */
		}
		struct pollfd p[2] = {
			{ .fd = h->cfg.uffd, .events = POLLIN },
			{ .fd = h->stopfd, .events = POLLIN },
		};
		/* faults deferred by EAGAIN: retry each millisecond until the event is gone */
		int r = poll(p, 2, h->nretry ? 1 : -1);
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
		if (!(p[0].revents & POLLIN)) {
			uffdctl_retry(h);
			continue;
		}
		uint64_t begun = __atomic_add_fetch(&h->reads_begun, 1, __ATOMIC_SEQ_CST);
		ssize_t got = read(h->cfg.uffd, msgs, n * sizeof(*msgs));
		if (got < 0) {
			uffdctl_reads_done(h, begun);
			if (errno == EAGAIN || errno == EINTR)
				continue;
			h->exit_err = -errno;
			break;
		}
		uffdctl_handle_batch(h, msgs, got / (ssize_t)sizeof(*msgs));
		uffdctl_reads_done(h, begun);
	}
	/* deferred faults are the user's now (stop without release leaves them blocked, and visible) */
	for (int i = 0; i < h->nretry; i++) {
		uffdctl_add_pending(h, &h->retry[i]);
		uffdctl_log(h, &h->retry[i], UFFDCTL_POL_QUEUE, -EAGAIN, 0, uffdctl_now_ns());
	}
	h->nretry = 0;
	uffdctl_reads_done(h, __atomic_load_n(&h->reads_begun, __ATOMIC_SEQ_CST));
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
	h->retry_cap = 64;
	h->retry = mmap(NULL, h->retry_cap * sizeof(*h->retry), PROT_READ | PROT_WRITE,
			MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	h->fill_page = mmap(NULL, h->cfg.page_size, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	h->stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (!h->log || !h->msgs || h->pending == MAP_FAILED || h->retry == MAP_FAILED ||
	    h->fill_page == MAP_FAILED || h->stopfd < 0) {
		*err = -ENOMEM;
		goto fail;
	}
	memset(h->fill_page, h->cfg.fill, h->cfg.page_size);
	{
		int fl = fcntl(h->cfg.uffd, F_GETFL);
		h->nonblock = fl >= 0 && (fl & O_NONBLOCK);
		/* poll(2) on a blocking uffd says EPOLLERR (userfaultfd_poll(): "poll() never guarantees
		 * that read won't block"): such a uffd is served in read mode, or not at all */
		if (fl >= 0 && !h->nonblock)
			h->cfg.read_mode = 1;
	}
	pthread_mutex_init(&h->lock, NULL);
	{
		pthread_condattr_t ca;
		pthread_condattr_init(&ca);
		pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
		pthread_cond_init(&h->done_cond, &ca);
		pthread_condattr_destroy(&ca);
	}
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
	if (h->retry && h->retry != MAP_FAILED)
		munmap(h->retry, h->retry_cap * sizeof(*h->retry));
	free(h->msgs);
	free(h->log);
	free(h);
	return NULL;
}

static int uffdctl_join_for(struct uffdctl_handler *h, int ms)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);	/* pthread_timedjoin_np measures CLOCK_REALTIME */
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	return pthread_timedjoin_np(h->thread, NULL, &ts);
}

/*
 * The thread did not stop: it is blocked, most likely in a fault it took itself (UFFDIO_COPY
 * from a source in registered memory faults on that page, and only this thread would read the
 * message).  Resolve, from the caller's thread, whatever is unread on the uffd (zero-filled,
 * un-protected, continued) so that it can go on; never touches the thread's own lists.
 */
static void uffdctl_unstick(struct uffdctl_handler *h)
{
	struct uffdctl_handler_cfg safe = h->cfg;
	struct uffd_msg m;
	void *zero = mmap(NULL, h->cfg.page_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (zero == MAP_FAILED)
		return;
	for (;;) {
		struct pollfd p = { .fd = safe.uffd, .events = POLLIN };
		uint64_t flags, page;
		int r;
		if (poll(&p, 1, 0) <= 0 || !(p.revents & POLLIN))
			break;
		if (read(safe.uffd, &m, sizeof(m)) != sizeof(m))
			break;
		uffdctl_log(h, &m, m.event == UFFD_EVENT_PAGEFAULT ? UFFDCTL_POL_COPY_FILL : -1, 0, 0, uffdctl_now_ns());
		if (m.event != UFFD_EVENT_PAGEFAULT)
			continue;
		flags = m.arg.pagefault.flags;
		page = m.arg.pagefault.address & ~(safe.page_size - 1);
		if (flags & UFFD_PAGEFAULT_FLAG_WP) {
			struct uffdio_writeprotect wp = { .range = { page, safe.page_size }, .mode = 0 };
			r = uffdctl_ioctl(safe.uffd, UFFDIO_WRITEPROTECT, &wp);
		} else if (flags & UFFD_PAGEFAULT_FLAG_MINOR) {
			struct uffdio_continue co = { .range = { page, safe.page_size } };
			r = uffdctl_ioctl(safe.uffd, UFFDIO_CONTINUE, &co);
		} else {
			struct uffdio_copy cp = { .dst = page, .src = (uint64_t)(uintptr_t)zero, .len = safe.page_size };
			r = uffdctl_ioctl(safe.uffd, UFFDIO_COPY, &cp);
		}
		if (r < 0)
			uffdctl_wake(safe.uffd, page, safe.page_size);
	}
	munmap(zero, h->cfg.page_size);
}

/*
 * Stop and join the thread (the GIL is released by cffi while we wait).  Bounded: if the thread
 * does not stop within 1 s it is unstuck (above) and waited for again, up to ~3 s in all; after
 * that it is left behind (h->stuck, -ETIMEDOUT: uffdctl_handler_free then leaks h instead of
 * freeing memory the thread still uses; closing every uffd or process exit ends it).
 */
int uffdctl_handler_stop(struct uffdctl_handler *h, int release)
{
	uint64_t one = 1;
	int r;
	if (!h->running)
		return h->stuck ? -ETIMEDOUT : h->exit_err;
	if (h->cfg.read_mode) {
		/* blocked in read(2), or about to be: read is a cancellation point, and the thread
		 * the only place the thread accepts cancellation (it holds no lock there) */
		pthread_cancel(h->thread);
	} else {
		__atomic_store_n(&h->stop_req, 1, __ATOMIC_RELEASE);	/* a thread busy reading sees this */
		if (write(h->stopfd, &one, sizeof(one)) < 0)		/* one asleep in poll(2), this */
			return -errno;
	}
	r = uffdctl_join_for(h, 1000);
	for (int i = 0; r == ETIMEDOUT && i < 10; i++) {
		uffdctl_unstick(h);
		r = uffdctl_join_for(h, 200);
	}
	if (r == ETIMEDOUT) {
		h->stuck = 1;
		h->running = 0;
		pthread_mutex_lock(&h->lock);
		pthread_cond_broadcast(&h->done_cond);
		pthread_mutex_unlock(&h->lock);
		return -ETIMEDOUT;
	}
	h->running = 0;
	if (release)
		uffdctl_release_pending(h);
	return h->exit_err;
}

/*
 * The barrier: wait (at most timeout_ms) until every read() begun so far has its messages
 * resolved and logged.  0, or -ETIMEDOUT (the thread is blocked: stuck in a fault of its own, or
 * in an ioctl), or -ESRCH (not running).
 */
int uffdctl_handler_sync(struct uffdctl_handler *h, int timeout_ms)
{
	uint64_t target = __atomic_load_n(&h->reads_begun, __ATOMIC_SEQ_CST);
	struct timespec ts;
	int r = 0;

	if (!h->running)
		return -ESRCH;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += timeout_ms / 1000;
	ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_mutex_lock(&h->lock);
	while (h->reads_done < target && h->running && !r)
		r = pthread_cond_timedwait(&h->done_cond, &h->lock, &ts);
	pthread_mutex_unlock(&h->lock);
	return h->reads_done >= target ? 0 : -ETIMEDOUT;
}

/* The handler thread's stack (uffdctl_pthread_stack); -ESRCH once the thread is gone. */
int uffdctl_handler_stack(struct uffdctl_handler *h, uint64_t *out)
{
	if (!h->running)
		return -ESRCH;
	return uffdctl_pthread_stack(h->thread, out);
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
	if (h->stuck)
		return;		/* the thread may still run: leak h rather than free what it uses */
	close(h->stopfd);
	munmap(h->retry, h->retry_cap * sizeof(*h->retry));
	pthread_cond_destroy(&h->done_cond);
	munmap(h->pending, h->pending_cap * sizeof(*h->pending));
	free(h->msgs);
	sem_destroy(&h->ready);
	munmap(h->fill_page, h->cfg.page_size);
	pthread_mutex_destroy(&h->lock);
	free(h->log);
	free(h);
}
