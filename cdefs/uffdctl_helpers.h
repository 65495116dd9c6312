/*
 * The C helpers compiled into uffdctl._uffd (cffi API mode), one file per concern:
 *
 *   uffdctl_sys.c      non-variadic wrappers for ioctl(2)/syscall(2)/mmap(2) that return
 *                      -errno instead of -1 + errno (one call from Python, no errno round trip);
 *   uffdctl_access.c   touching memory with the GIL released (cffi releases it around every
 *                      call), counting the calling thread's minor/major faults with
 *                      getrusage(RUSAGE_THREAD) and turning SIGBUS into a result, not a crash;
 *   uffdctl_handler.c  the native fault-handling thread (pthread): polls the uffd and a stop
 *                      eventfd, reads messages in batches, resolves them by policy and logs every
 *                      message with a timestamp; it never needs the GIL;
 *   uffdctl_pagemap.c  /proc/PID/pagemap in bulk: a range read into an array of raw entries,
 *                      flag counts, runs and the --map grid decoded over the whole array;
 *   uffdctl_stress.c   `uffdctl stress`: the kernel's uffd-stress bounce (locking threads,
 *                      background copy threads, uffdctl's handler threads, verification);
 *   uffdctl_bench.c    per-page ioctl loops used by the benchmarks.
 *
 * This header is what they share and what the cffi preamble sees; cdefs/uffd_cdef.h is what
 * Python sees of it.  Include "uffd_uapi.h" first.
 */
#ifndef UFFDCTL_HELPERS_H
#define UFFDCTL_HELPERS_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* ---- uffdctl_sys.c: 0 / value or -errno --------------------------------- */
int uffdctl_ioctl(int fd, unsigned long req, void *arg);
int uffdctl_ioctl_range(int fd, unsigned long req, uint64_t start, uint64_t len);
int uffdctl_ioctl_range_mode(int fd, unsigned long req, uint64_t start, uint64_t len, uint64_t mode,
			     int64_t *res);
int uffdctl_ioctl_dst_src(int fd, unsigned long req, uint64_t dst, uint64_t src, uint64_t len, uint64_t mode,
			  int64_t *res);
int64_t uffdctl_dst_src1(int fd, unsigned long req, uint64_t dst, uint64_t src, uint64_t len, uint64_t mode);
int64_t uffdctl_range_mode1(int fd, unsigned long req, uint64_t start, uint64_t len, uint64_t mode);
int64_t uffdctl_copy1(int fd, uint64_t dst, uint64_t src, uint64_t len, uint64_t mode);
int64_t uffdctl_zeropage1(int fd, uint64_t start, uint64_t len, uint64_t mode);
int64_t uffdctl_writeprotect1(int fd, uint64_t start, uint64_t len, uint64_t mode);
int64_t uffdctl_last_result(void);
int uffdctl_userfaultfd(int flags);
int uffdctl_dev_userfaultfd(int flags);
int64_t uffdctl_mmap(uint64_t addr, uint64_t len, int prot, int flags, int fd, int64_t off);
int uffdctl_munmap(uint64_t addr, uint64_t len);
int uffdctl_madvise(uint64_t addr, uint64_t len, int advice);
int uffdctl_mprotect(uint64_t addr, uint64_t len, int prot);
int64_t uffdctl_mremap(uint64_t old, uint64_t old_len, uint64_t new_len, int flags, uint64_t new_addr);
int uffdctl_memfd_create(const char *name, unsigned int flags);
int64_t uffdctl_pread(int fd, void *buf, uint64_t count, int64_t off);
int64_t uffdctl_read(int fd, void *buf, uint64_t count);
int64_t uffdctl_poll_read(int fd, void *buf, uint64_t count, int timeout_ms, int poll_first);

static inline uint64_t uffdctl_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

/* ---- uffdctl_access.c ----------------------------------------------------- */
struct uffdctl_access_result {
	int64_t minflt;		/* minor faults of the calling thread during the access */
	int64_t majflt;
	int32_t sigbus;		/* 1 if the access ended in SIGBUS */
	int32_t si_code;
	uint64_t fault_addr;
	uint64_t ns;		/* wall time of the access */
};

int uffdctl_access(uint64_t addr, uint64_t len, int write, const void *wbuf,
		   void *rbuf, int fill, uint64_t stride,
		   struct uffdctl_access_result *res);
int uffdctl_thread_faults(int64_t *minflt, int64_t *majflt);

/* a native access thread (uffdctl_access.c): jobs run in order, waited for with the GIL released */
struct uffdctl_access_job {
	uint64_t addr, len;
	int write, fill;
	const void *wbuf;
	void *rbuf;
	uint64_t stride;
	struct uffdctl_access_result res;
	int ret;
	int done;			/* set by the worker */
	struct uffdctl_access_job *next;	/* the worker's queue */
};
struct uffdctl_worker;
struct uffdctl_worker *uffdctl_worker_start(int *err);
int uffdctl_worker_tid(struct uffdctl_worker *w);
int uffdctl_worker_submit(struct uffdctl_worker *w, struct uffdctl_access_job *jobs, int n);
int uffdctl_worker_wait(struct uffdctl_worker *w, struct uffdctl_access_job *j, int timeout_ms);
int uffdctl_worker_busy(struct uffdctl_worker *w);
int uffdctl_worker_stop(struct uffdctl_worker *w, int timeout_ms);
/* [lo, hi) of a thread's stack, guard page included: a MAP_FIXED / MREMAP_FIXED target must not take it */
int uffdctl_pthread_stack(pthread_t t, uint64_t *out);
int uffdctl_worker_stack(struct uffdctl_worker *w, uint64_t *out);
int uffdctl_gettid(void);

/* ---- uffdctl_handler.c ---------------------------------------------------- */
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
	int read_mode;		/* 1: blocking read(2) without poll (the fd must be blocking; stop cancels) */
	uint64_t src_len;	/* COPY_SRC: bytes of source from src (0: unchecked); faults beyond are queued */
	uint32_t delay_us;	/* tests: sleep between read() and handling, widening the race the barrier closes */
};

struct uffdctl_event {
	uint64_t ts_ns;		/* CLOCK_MONOTONIC when read */
	struct uffd_msg msg;
	int32_t action;		/* policy applied, UFFDCTL_POL_* */
	int32_t err;		/* 0 or -errno of the resolving ioctl */
	int64_t result;		/* result field of the resolving ioctl */
	uint64_t seq;		/* 1-based position in the handler's message stream: stable when old entries drop */
};

struct uffdctl_handler;		/* private to uffdctl_handler.c */
struct uffdctl_handler *uffdctl_handler_start(const struct uffdctl_handler_cfg *cfg, int *err);
int uffdctl_handler_stop(struct uffdctl_handler *h, int release);
int uffdctl_handler_drain(struct uffdctl_handler *h, struct uffdctl_event *out, int max);
void uffdctl_handler_stats(struct uffdctl_handler *h, uint64_t *out);
void uffdctl_handler_free(struct uffdctl_handler *h);
int uffdctl_handler_sync(struct uffdctl_handler *h, int timeout_ms);
int uffdctl_handler_stack(struct uffdctl_handler *h, uint64_t *out);

/* ---- uffdctl_pagemap.c ---------------------------------------------------- */
#define UFFDCTL_PM_NFLAGS 7	/* present swap file guard uffd_wp exclusive soft_dirty */
int64_t uffdctl_pagemap_read(int fd, uint64_t addr, uint64_t npages, uint64_t *raw);
void uffdctl_pagemap_counts(const uint64_t *raw, uint64_t n, uint64_t *counts);
int64_t uffdctl_pagemap_runs(const uint64_t *raw, uint64_t n, uint64_t mask, uint64_t *starts, uint64_t max);
void uffdctl_pagemap_symbols(const uint64_t *raw, uint64_t n, uint64_t zero_pfn, char *out);
int64_t uffdctl_scan_all(int fd, struct pm_scan_arg *arg, uint64_t max_pages, struct page_region **out);
void uffdctl_free(void *p);

/* ---- uffdctl_stress.c ----------------------------------------------------- */
#define UFFDCTL_BOUNCE_RANDOM		(1 << 0)	/* the selftests' mode bits of a bounce */
#define UFFDCTL_BOUNCE_RACINGFAULTS	(1 << 1)
#define UFFDCTL_BOUNCE_VERIFY		(1 << 2)
#define UFFDCTL_BOUNCE_POLL		(1 << 3)
#define UFFDCTL_STRESS_CORRUPT		1		/* a counter lost an update */

struct uffdctl_stress {
	int uffd;
	int nr_cpus;			/* locking, background and handler threads: one of each per CPU */
	int bounces;			/* bounces left: its low bits are this bounce's mode */
	int wp;				/* UFFDIO_COPY_MODE_WP, and write-protect half way */
	int release_advice;		/* MADV_DONTNEED (private) or MADV_REMOVE (shared) */
	uint64_t src, dst, dst_alias;	/* dst_alias: 0, or a second mapping of dst (shared memory) */
	uint64_t nr_pages, page_size;
	uint64_t *count_verify;		/* nr_pages */
	uint64_t *missing_faults;	/* nr_cpus: MISSING faults whose UFFDIO_COPY copied the page */
	uint64_t *wp_faults;		/* nr_cpus */
	int64_t lose_update_at;		/* test hook: the page whose next update is not stored, -2 any
					 * page (the first update of the bounce), -1 none */
	int lose_armed;
	int64_t lost_page;		/* the page the hook dropped an update of, or -1 */
	int finished, failed, test_copy_eexist;
	int err;			/* 0, UFFDCTL_STRESS_CORRUPT or -errno */
	const char *where;
	uint64_t bad_page, bad_count, bad_expect;
};
int uffdctl_stress_init(struct uffdctl_stress *s);
int uffdctl_stress_bounce(struct uffdctl_stress *s);
int uffdctl_stress_verify(struct uffdctl_stress *s);

/* ---- uffdctl_bench.c: pages done or -errno -------------------------------- */
int64_t uffdctl_loop_copy(int fd, uint64_t dst, uint64_t src, uint64_t len, uint64_t page, uint64_t mode);
int64_t uffdctl_loop_zeropage(int fd, uint64_t dst, uint64_t len, uint64_t page);
int64_t uffdctl_loop_writeprotect(int fd, uint64_t dst, uint64_t len, uint64_t page, uint64_t mode);

struct uffdctl_faulter;
struct uffdctl_faulter *uffdctl_bench_faulter_start(uint64_t addr, uint64_t npages, uint64_t page, int cpu,
						    uint64_t *lat_ns);
void uffdctl_bench_faulter_join(struct uffdctl_faulter *f);
struct uffdctl_refhandler;
struct uffdctl_refhandler *uffdctl_bench_refhandler_start(int fd, uint64_t src, uint64_t page, uint64_t n, int cpu,
							  int read_first);
int uffdctl_bench_refhandler_join(struct uffdctl_refhandler *h);

#endif
