/*
 * C reference for scripts/bench.py: the same ioctl loops, in plain C.
 *   bench_ref wake N          N x UFFDIO_WAKE on a registered page (the cheapest ioctl: pure call cost)
 *   bench_ref copy PAGES R    R rounds: one UFFDIO_COPY per page over PAGES pages, then MADV_DONTNEED
 *   bench_ref copy1 PAGES R   R rounds: one batched UFFDIO_COPY of PAGES pages, then MADV_DONTNEED
 *   bench_ref wp PAGES R      R rounds: one UFFDIO_WRITEPROTECT (on, then off) per page
 * Prints nanoseconds per ioctl (or per page for copy1).  Uses the project's own uapi header.
 */
#define _GNU_SOURCE
#include <fcntl.h>
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

int main(int argc, char **argv)
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
