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
