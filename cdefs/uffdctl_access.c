/*
 * Touching memory with the GIL released: per-thread fault counts (getrusage(RUSAGE_THREAD)),
 * SIGBUS turned into a result instead of a crash.
 * (see uffdctl_helpers.h for the map of the helpers)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "uffd_uapi.h"
#include "uffdctl_helpers.h"

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

/* ---- a native access thread: accesses handed over without a Python thread switch ----------
 *
 * uffdctl's Thread used to be a Python thread fed by a queue: every access paid two GIL hand-offs
 * (~29 us here).  A worker is a pthread that runs queued jobs in order with uffdctl_access(); the
 * caller submits (one mutex + signal) and waits on a condition variable with the GIL released (cffi
 * releases it around each call).  A job blocked in a userfault blocks only the worker.
 */
struct uffdctl_worker {
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t work, done;
	struct uffdctl_access_job *head, *tail;	/* queued, in order */
	int tid, stop, running, idle;
};

static void *uffdctl_worker_main(void *arg)
{
	struct uffdctl_worker *w = arg;
	struct uffdctl_access_result warm;
	uint8_t scratch[64];
	sigset_t async;

	/* asynchronous signals belong to Python's main thread; synchronous ones (SIGBUS of an access) stay */
	sigfillset(&async);
	sigdelset(&async, SIGBUS);
	sigdelset(&async, SIGSEGV);
	sigdelset(&async, SIGILL);
	sigdelset(&async, SIGFPE);
	pthread_sigmask(SIG_BLOCK, &async, NULL);
	/* warm up: fault in this thread's stack and TLS, arm the SIGBUS handler, so the fault counts of
	 * real accesses are the access's own */
	uffdctl_access((uint64_t)(uintptr_t)scratch, sizeof(scratch), 1, NULL, NULL, 0, 0, &warm);
	pthread_mutex_lock(&w->lock);
	w->tid = (int)syscall(SYS_gettid);
	w->running = 1;
	pthread_cond_broadcast(&w->done);
	for (;;) {
		while (!w->head && !w->stop) {
			w->idle = 1;
			pthread_cond_wait(&w->work, &w->lock);
		}
		if (!w->head)
			break;
		w->idle = 0;
		struct uffdctl_access_job *j = w->head;
		pthread_mutex_unlock(&w->lock);
		j->ret = uffdctl_access(j->addr, j->len, j->write, j->wbuf, j->rbuf, j->fill, j->stride, &j->res);
		pthread_mutex_lock(&w->lock);
		w->head = j->next;
		if (!w->head)
			w->tail = NULL;
		__atomic_store_n(&j->done, 1, __ATOMIC_RELEASE);
		pthread_cond_broadcast(&w->done);
	}
	w->running = 0;
	pthread_cond_broadcast(&w->done);
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

struct uffdctl_worker *uffdctl_worker_start(int *err)
{
	struct uffdctl_worker *w = calloc(1, sizeof(*w));
	int r;

	*err = 0;
	if (!w) {
		*err = -ENOMEM;
		return NULL;
	}
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);	/* the deadlines of wait/stop */
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->work, NULL);
	pthread_cond_init(&w->done, &ca);
	pthread_condattr_destroy(&ca);
	r = pthread_create(&w->thread, NULL, uffdctl_worker_main, w);
	if (r) {
		*err = -r;
		free(w);
		return NULL;
	}
	pthread_mutex_lock(&w->lock);
	while (!w->running)
		pthread_cond_wait(&w->done, &w->lock);
	pthread_mutex_unlock(&w->lock);
	return w;
}

int uffdctl_worker_tid(struct uffdctl_worker *w)
{
	return w->tid;
}

/*
 * A thread's stack is an anonymous mapping the caller never asked for, placed wherever mmap found room
 * (often a hole the caller freed a moment ago, meaning to mremap there with MREMAP_FIXED): the backend
 * refuses a FIXED target that would replace one (the hugetlb mremap side by side did, and the handler
 * thread returned into the moved region: SIGSEGV).
 */
int uffdctl_pthread_stack(pthread_t t, uint64_t *out)
{
	pthread_attr_t a;
	void *addr;
	size_t size, guard = 0;

	if (pthread_getattr_np(t, &a))
		return -ESRCH;
	pthread_attr_getstack(&a, &addr, &size);
	pthread_attr_getguardsize(&a, &guard);
	pthread_attr_destroy(&a);
	out[0] = (uint64_t)(uintptr_t)addr - guard;
	out[1] = (uint64_t)(uintptr_t)addr + size;
	return 0;
}

int uffdctl_worker_stack(struct uffdctl_worker *w, uint64_t *out)
{
	return uffdctl_pthread_stack(w->thread, out);
}

/* Queue n jobs (an array); they run in order after any queued before. */
int uffdctl_worker_submit(struct uffdctl_worker *w, struct uffdctl_access_job *jobs, int n)
{
	pthread_mutex_lock(&w->lock);
	if (w->stop) {
		pthread_mutex_unlock(&w->lock);
		return -ESHUTDOWN;
	}
	for (int i = 0; i < n; i++) {
		jobs[i].next = NULL;
		jobs[i].done = 0;
		if (w->tail)
			w->tail->next = &jobs[i];
		else
			w->head = &jobs[i];
		w->tail = &jobs[i];
	}
	pthread_cond_signal(&w->work);
	pthread_mutex_unlock(&w->lock);
	return 0;
}

static void uffdctl_deadline(struct timespec *ts, int timeout_ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += timeout_ms / 1000;
	ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

/* Wait for a job (timeout_ms < 0: forever): 1 done, 0 still running (blocked in a fault?). */
int uffdctl_worker_wait(struct uffdctl_worker *w, struct uffdctl_access_job *j, int timeout_ms)
{
	struct timespec dl;

	if (__atomic_load_n(&j->done, __ATOMIC_ACQUIRE))
		return 1;
	if (timeout_ms == 0)
		return 0;
	if (timeout_ms > 0)
		uffdctl_deadline(&dl, timeout_ms);
	pthread_mutex_lock(&w->lock);
	while (!j->done) {
		if (timeout_ms < 0)
			pthread_cond_wait(&w->done, &w->lock);
		else if (pthread_cond_timedwait(&w->done, &w->lock, &dl) == ETIMEDOUT)
			break;
	}
	pthread_mutex_unlock(&w->lock);
	return j->done;
}

int uffdctl_worker_busy(struct uffdctl_worker *w)
{
	int busy;
	pthread_mutex_lock(&w->lock);
	busy = w->head != NULL;
	pthread_mutex_unlock(&w->lock);
	return busy;
}

/*
 * Stop after the queued jobs; wait up to timeout_ms for the thread to end.  0: joined and freed;
 * -ETIMEDOUT: still blocked in a job (a fault nobody resolves): the worker is left to end on its
 * own (it frees nothing the caller still holds) and must not be used again.
 */
int uffdctl_worker_stop(struct uffdctl_worker *w, int timeout_ms)
{
	struct timespec dl;
	int left;

	uffdctl_deadline(&dl, timeout_ms < 0 ? 0 : timeout_ms);
	pthread_mutex_lock(&w->lock);
	w->stop = 1;
	pthread_cond_signal(&w->work);
	while (w->running)
		if (pthread_cond_timedwait(&w->done, &w->lock, &dl) == ETIMEDOUT)
			break;
	left = w->running;
	pthread_mutex_unlock(&w->lock);
	if (left) {
		pthread_detach(w->thread);
		return -ETIMEDOUT;
	}
	pthread_join(w->thread, NULL);
	pthread_cond_destroy(&w->work);
	pthread_cond_destroy(&w->done);
	pthread_mutex_destroy(&w->lock);
	free(w);
	return 0;
}
