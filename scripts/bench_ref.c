/*
 * C reference for scripts/bench.py: the same ioctl loops, in plain C.
 *   bench_ref wake N          N x UFFDIO_WAKE on a registered page (the cheapest ioctl: pure call cost)
 *   bench_ref copy PAGES R    R rounds: one UFFDIO_COPY per page over PAGES pages, then MADV_DONTNEED
 *   bench_ref copy1 PAGES R   R rounds: one batched UFFDIO_COPY of PAGES pages, then MADV_DONTNEED
 *   bench_ref wp PAGES R      R rounds: one UFFDIO_WRITEPROTECT (on, then off) per page
 *   bench_ref fault N HCPU FCPU   MISSING round trip: a handler thread (poll, read, UFFDIO_COPY) on
 *                             vCPU HCPU, a faulting thread touching N pages on FCPU; prints the p50 ns
 *   bench_ref pagemap MIB     pread + decode of MIB of /proc/self/pagemap (every other page present):
 *                             per-flag counts and the PFNs of every entry; prints ns
 *   bench_ref scan MIB VEC    PAGEMAP_SCAN (PAGE_IS_WRITTEN, WP_ASYNC) of MIB written every other page,
 *                             continuing from walk_end with a VEC-entry vector; prints ns
 *   bench_ref handoff N       N accesses of one page handed to another thread (mutex + condvar) and
 *                             waited for, with getrusage(RUSAGE_THREAD) around each; prints ns per access
 *   bench_ref wp-touch K STRIDE   what a UFFDIO_WRITEPROTECT leaves behind for the caller: per-page WP on+off
 *                             over 4096 present pages with K one-byte reads STRIDE bytes apart after each
 *                             ioctl, the same reads after a UFFDIO_WAKE (changes no PTE) instead, and the reads
 *                             alone; pinned to the last CPU, thread CPU time, medians of 9 rounds; prints
 *                             "wp+reads wake+reads reads" in ns per ioctl
 * Prints nanoseconds per ioctl (or per page for copy1).  Uses the project's own uapi header.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "uffd_uapi.h"

static uint64_t now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000ull + t.tv_nsec;
}

static void die(const char *m) { perror(m); exit(1); }

static int main_ioctl(int argc, char **argv)
{
	const char *what = argc > 1 ? argv[1] : "wake";
	long n = argc > 2 ? atol(argv[2]) : 100000, rounds = argc > 3 ? atol(argv[3]) : 10;
	long pages = strcmp(what, "wake") ? n : 1;
	size_t len = pages * 4096;
	int fd = syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	struct uffdio_api api = { .api = UFFD_API };
	if (fd < 0 || ioctl(fd, UFFDIO_API, &api)) die("uffd");
	char *dst = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *src = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	madvise(dst, len, MADV_NOHUGEPAGE);
	memset(src, 1, len);
	/* wp: WP only (the pages are written by plain stores first); otherwise MISSING */
	struct uffdio_register reg = { .range = { (uintptr_t)dst, len },
		.mode = strcmp(what, "wp") ? UFFDIO_REGISTER_MODE_MISSING : UFFDIO_REGISTER_MODE_WP };
	if (ioctl(fd, UFFDIO_REGISTER, &reg)) die("register");
	uint64_t t = 0, ops = 0;
	double best = 1e30;
	if (!strcmp(what, "wake")) {
		struct uffdio_range r = { (uintptr_t)dst, 4096 };
		uint64_t t0 = now();
		for (long i = 0; i < n; i++)
			ioctl(fd, UFFDIO_WAKE, &r);
		t = now() - t0;
		ops = n;
	} else {
		for (long k = 0; k < rounds; k++) {
			if (!strcmp(what, "wp"))
				memset(dst, 2, len);
			uint64_t t0 = now();
			if (!strcmp(what, "copy")) {
				for (long i = 0; i < pages; i++) {
					struct uffdio_copy c = { (uintptr_t)dst + i * 4096, (uintptr_t)src + i * 4096, 4096, 0, 0 };
					if (ioctl(fd, UFFDIO_COPY, &c)) die("copy");
				}
				ops += pages;
			} else if (!strcmp(what, "copy1")) {
				struct uffdio_copy c = { (uintptr_t)dst, (uintptr_t)src, len, 0, 0 };
				if (ioctl(fd, UFFDIO_COPY, &c)) die("copy1");
				ops += pages;
			} else {
				for (int on = 1; on >= 0; on--)
					for (long i = 0; i < pages; i++) {
						struct uffdio_writeprotect w = { { (uintptr_t)dst + i * 4096, 4096 }, on };
						if (ioctl(fd, UFFDIO_WRITEPROTECT, &w)) die("wp");
					}
				ops += 2 * pages;
			}
			t = now() - t0;
			if ((double)t / ops < best)
				best = (double)t / ops;	/* best round, as bench.py takes */
			ops = 0;
			madvise(dst, len, MADV_DONTNEED);
		}
	}
	printf("%.1f\n", ops ? (double)t / ops : best);
	return 0;
}

static void pin(int cpu)
{
	cpu_set_t set;
	if (cpu < 0)
		return;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
}

/* ---- fault: the MISSING round trip ---------------------------------------------------------- */
static int f_uffd, f_hcpu, f_fcpu;
static long f_n;
static char *f_area, *f_src;
static uint64_t *f_lat;

static void *f_handler(void *arg)
{
	struct uffd_msg m;
	long served = 0;
	pin(f_hcpu);
	while (served < f_n) {
		struct pollfd p = { f_uffd, POLLIN, 0 };
		if (poll(&p, 1, 5000) <= 0) die("poll");
		if (read(f_uffd, &m, sizeof(m)) != sizeof(m)) continue;
		struct uffdio_copy c = { m.arg.pagefault.address & ~4095ull, (uintptr_t)f_src, 4096, 0, 0 };
		if (ioctl(f_uffd, UFFDIO_COPY, &c)) die("copy");
		served++;
	}
	return NULL;
}

static void *f_faulter(void *arg)
{
	volatile char sink = 0;
	pin(f_fcpu);
	for (long i = 0; i < f_n; i++) {
		uint64_t t0 = now();
		sink += f_area[i * 4096];
		f_lat[i] = now() - t0;
	}
	(void)sink;
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static int bench_fault(long n, int hcpu, int fcpu)
{
	pthread_t h, f;
	f_n = n, f_hcpu = hcpu, f_fcpu = fcpu;
	f_uffd = syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	struct uffdio_api api = { .api = UFFD_API };
	if (f_uffd < 0 || ioctl(f_uffd, UFFDIO_API, &api)) die("uffd");
	f_area = mmap(NULL, n * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	f_src = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	madvise(f_area, n * 4096, MADV_NOHUGEPAGE);
	memset(f_src, 7, 4096);
	f_lat = calloc(n, sizeof(*f_lat));
	struct uffdio_register reg = { { (uintptr_t)f_area, n * 4096 }, UFFDIO_REGISTER_MODE_MISSING, 0 };
	if (ioctl(f_uffd, UFFDIO_REGISTER, &reg)) die("register");
	pthread_create(&h, NULL, f_handler, NULL);
	pthread_create(&f, NULL, f_faulter, NULL);
	pthread_join(f, NULL);
	pthread_join(h, NULL);
	qsort(f_lat, n, sizeof(*f_lat), cmp_u64);
	printf("%.1f\n", (double)f_lat[n / 2]);
	return 0;
}

/* ---- pagemap: pread + decode --------------------------------------------------------------- */
static int bench_pagemap(long mib)
{
	size_t len = (size_t)mib << 20, n = len / 4096;
	char *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t *raw = malloc(n * 8), counts[7] = { 0 }, pfns = 0;
	static const uint64_t bits[7] = { 1ull << 63, 1ull << 62, 1ull << 61, 1ull << 58, 1ull << 57, 1ull << 56,
					  1ull << 55 };
	int fd = open("/proc/self/pagemap", O_RDONLY);
	madvise(a, len, MADV_NOHUGEPAGE);
	for (size_t i = 0; i < n; i += 2)
		a[i * 4096] = 1;
	uint64_t t0 = now();
	if (pread(fd, raw, n * 8, (uintptr_t)a / 4096 * 8) != (ssize_t)(n * 8)) die("pread");
	for (size_t i = 0; i < n; i++) {
		for (int b = 0; b < 7; b++)
			counts[b] += !!(raw[i] & bits[b]);
		pfns += raw[i] & ((1ull << 55) - 1);
	}
	uint64_t t = now() - t0;
	if (counts[0] != n / 2) die("pagemap decode");
	printf("%llu\n", (unsigned long long)t + (pfns & 0));
	return 0;
}

/* ---- scan: PAGEMAP_SCAN with continuation ------------------------------------------------- */
static int bench_scan(long mib, long vec_len)
{
	size_t len = (size_t)mib << 20, n = len / 4096;
	char *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int uffd = syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK), fd = open("/proc/self/pagemap", O_RDONLY);
	struct uffdio_api api = { .api = UFFD_API, .features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED };
	struct page_region *vec = calloc(vec_len, sizeof(*vec));
	madvise(a, len, MADV_NOHUGEPAGE);
	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api)) die("uffd");
	struct uffdio_register reg = { { (uintptr_t)a, len }, UFFDIO_REGISTER_MODE_WP, 0 };
	if (ioctl(uffd, UFFDIO_REGISTER, &reg)) die("register");
	struct uffdio_writeprotect wp = { { (uintptr_t)a, len }, UFFDIO_WRITEPROTECT_MODE_WP };
	if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp)) die("wp");
	for (size_t i = 0; i < n; i += 2)
		a[i * 4096] = 1;
	uint64_t t0 = now(), pos = (uintptr_t)a, end = pos + len, regions = 0;
	while (pos < end) {
		struct pm_scan_arg s = { .size = sizeof(s), .start = pos, .end = end, .vec = (uintptr_t)vec,
			.vec_len = vec_len, .category_mask = PAGE_IS_WRITTEN, .return_mask = PAGE_IS_WRITTEN };
		long r = ioctl(fd, PAGEMAP_SCAN, &s);
		if (r < 0) die("PAGEMAP_SCAN");
		regions += r;
		if (s.walk_end <= pos) break;
		pos = s.walk_end;
	}
	uint64_t t = now() - t0;
	if (regions < n / 2) die("scan");
	printf("%llu\n", (unsigned long long)t);
	return 0;
}

/* ---- handoff: an access run by another thread ------------------------------------------- */
static pthread_mutex_t h_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t h_work = PTHREAD_COND_INITIALIZER, h_done = PTHREAD_COND_INITIALIZER;
static volatile char *h_addr;
static int h_pending, h_stop;

static void *h_worker(void *arg)
{
	struct rusage r0, r1;
	pthread_mutex_lock(&h_lock);
	for (;;) {
		while (!h_pending && !h_stop)
			pthread_cond_wait(&h_work, &h_lock);
		if (h_stop)
			break;
		pthread_mutex_unlock(&h_lock);
		getrusage(RUSAGE_THREAD, &r0);
		*h_addr = 1;
		getrusage(RUSAGE_THREAD, &r1);
		pthread_mutex_lock(&h_lock);
		h_pending = 0;
		pthread_cond_signal(&h_done);
	}
	pthread_mutex_unlock(&h_lock);
	return NULL;
}

static int bench_handoff(long n)
{
	pthread_t w;
	h_addr = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	pthread_create(&w, NULL, h_worker, NULL);
	uint64_t t0 = now();
	for (long i = 0; i < n; i++) {
		pthread_mutex_lock(&h_lock);
		h_pending = 1;
		pthread_cond_signal(&h_work);
		while (h_pending)
			pthread_cond_wait(&h_done, &h_lock);
		pthread_mutex_unlock(&h_lock);
	}
	uint64_t t = now() - t0;
	pthread_mutex_lock(&h_lock);
	h_stop = 1;
	pthread_cond_signal(&h_work);
	pthread_mutex_unlock(&h_lock);
	pthread_join(w, NULL);
	printf("%.1f\n", (double)t / n);
	return 0;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static uint64_t cpu_now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
	return t.tv_sec * 1000000000ull + t.tv_nsec;
}

static int bench_wp_touch(int k, long stride)
{
	enum { PAGES = 4096, ROUNDS = 9 };
	size_t len = (size_t)PAGES * 4096, tlen = (size_t)k * stride + 4096;
	double v[3][ROUNDS];
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(sysconf(_SC_NPROCESSORS_ONLN) - 1, &set);
	sched_setaffinity(0, sizeof(set), &set);
	int fd = syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	struct uffdio_api api = { UFFD_API, 0 };
	if (fd < 0 || ioctl(fd, UFFDIO_API, &api)) die("userfaultfd");
	char *dst = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	volatile char *rd = mmap(NULL, tlen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (dst == MAP_FAILED || rd == MAP_FAILED) die("mmap");
	struct uffdio_register reg = { { (uintptr_t)dst, len }, UFFDIO_REGISTER_MODE_WP };
	if (ioctl(fd, UFFDIO_REGISTER, &reg)) die("register");
	for (int r = 0; r < ROUNDS; r++) {
		memset(dst, 2, len);
		uint64_t t0 = cpu_now();
		for (int on = 1; on >= 0; on--)
			for (long i = 0; i < PAGES; i++) {
				struct uffdio_writeprotect w = { { (uintptr_t)dst + i * 4096, 4096 },
								 on ? UFFDIO_WRITEPROTECT_MODE_WP : 0 };
				if (ioctl(fd, UFFDIO_WRITEPROTECT, &w)) die("wp");
				for (int j = 0; j < k; j++)
					(void)rd[(size_t)j * stride];
			}
		v[0][r] = (double)(cpu_now() - t0) / (2 * PAGES);
		t0 = cpu_now();
		for (long i = 0; i < 2 * PAGES; i++) {
			struct uffdio_range w = { (uintptr_t)dst, 4096 };
			if (ioctl(fd, UFFDIO_WAKE, &w)) die("wake");
			for (int j = 0; j < k; j++)
				(void)rd[(size_t)j * stride];
		}
		v[1][r] = (double)(cpu_now() - t0) / (2 * PAGES);
		t0 = cpu_now();
		for (long i = 0; i < 2 * PAGES; i++) {
			for (int j = 0; j < k; j++)
				(void)rd[(size_t)j * stride];
			__asm__ volatile("" ::: "memory");
		}
		v[2][r] = (double)(cpu_now() - t0) / (2 * PAGES);
	}
	for (int i = 0; i < 3; i++)
		qsort(v[i], ROUNDS, sizeof(double), cmp_double);
	printf("%.1f %.1f %.1f\n", v[0][ROUNDS / 2], v[1][ROUNDS / 2], v[2][ROUNDS / 2]);
	return 0;
}

int main(int argc, char **argv)
{
	const char *what = argc > 1 ? argv[1] : "wake";
	if (!strcmp(what, "fault"))
		return bench_fault(argc > 2 ? atol(argv[2]) : 2000, argc > 3 ? atoi(argv[3]) : -1,
				   argc > 4 ? atoi(argv[4]) : -1);
	if (!strcmp(what, "pagemap"))
		return bench_pagemap(argc > 2 ? atol(argv[2]) : 1024);
	if (!strcmp(what, "scan"))
		return bench_scan(argc > 2 ? atol(argv[2]) : 1024, argc > 3 ? atol(argv[3]) : 512);
	if (!strcmp(what, "handoff"))
		return bench_handoff(argc > 2 ? atol(argv[2]) : 10000);
	if (!strcmp(what, "wp-touch"))
		return bench_wp_touch(argc > 2 ? atoi(argv[2]) : 0, argc > 3 ? atol(argv[3]) : 4160);
	return main_ioctl(argc, argv);
}
