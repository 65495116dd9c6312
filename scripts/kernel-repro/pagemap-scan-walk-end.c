// SPDX-License-Identifier: GPL-2.0
/*
 * PAGEMAP_SCAN reports a stale walk_end once a call has returned more regions than the
 * kernel's internal bounce buffer holds (512 on x86-64), although it walked to the end.
 *
 * Build and run (any x86-64 kernel >= 6.7; no uffd, no privileges needed):
 *     cc -O2 -o pagemap-scan-walk-end pagemap-scan-walk-end.c && ./pagemap-scan-walk-end
 *
 * An 8 MiB anonymous mapping with every other page present has 1,024 PAGE_IS_PRESENT
 * regions.  One PAGEMAP_SCAN with vec_len >= 1,024 returns all 1,024 of them (the walk
 * reached `end`), so walk_end must be `end`.  The kernel instead reports the address at
 * which its 512-entry bounce buffer last filled (the start of region 513: end - 4 MiB), and
 * a caller that continues from walk_end, as the uapi documents, receives the last 512
 * regions a second time.  Prints one line per vec_len; exits 1 if any walk_end is wrong,
 * 0 if all are right, 2 if PAGEMAP_SCAN is missing.  See docs/pagemap-scan-walk-end.md.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <unistd.h>
#include <linux/fs.h>

#ifndef PAGEMAP_SCAN	/* include/uapi/linux/fs.h, 6.7+ (build hosts may have older headers) */
struct page_region { uint64_t start, end, categories; };
struct pm_scan_arg {
	uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
	uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#define PAGE_IS_PRESENT (1 << 3)
#endif

#define PAGE 4096UL
#define NPAGES 2048UL		/* 8 MiB */

int main(void)
{
	static const uint64_t vec_lens[] = { 512, 513, 1000, 1023, 1024, 1025, 2048, 100000 };
	struct utsname u;
	int fd = open("/proc/self/pagemap", O_RDONLY), bad = 0;
	char *buf = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct page_region *vec = calloc(100000, sizeof(*vec));
	uint64_t start = (uintptr_t)buf, end = start + NPAGES * PAGE;

	if (fd < 0 || buf == MAP_FAILED || !vec) {
		perror("setup");
		return 2;
	}
	madvise(buf, NPAGES * PAGE, MADV_NOHUGEPAGE);	/* 4 KiB pages: one region per written page */
	for (unsigned long i = 0; i < NPAGES; i += 2)
		buf[i * PAGE] = 1;
	uname(&u);
	printf("kernel %s: %lu pages, every other one present (%lu regions)\n", u.release, NPAGES, NPAGES / 2);
	for (size_t k = 0; k < sizeof(vec_lens) / sizeof(vec_lens[0]); k++) {
		struct pm_scan_arg a = {
			.size = sizeof(a), .start = start, .end = end, .vec = (uintptr_t)vec,
			.vec_len = vec_lens[k], .category_mask = PAGE_IS_PRESENT, .return_mask = PAGE_IS_PRESENT,
		};
		long n = ioctl(fd, PAGEMAP_SCAN, &a);
		uint64_t want;

		if (n < 0) {
			printf("PAGEMAP_SCAN: %s (kernel without it: 6.7+)\n", strerror(errno));
			return 2;
		}
		/* vector full: walk_end is where the next region starts (one page after the last: the
		 * pattern alternates); otherwise every region was returned and the walk is done */
		want = (uint64_t)n == vec_lens[k] && (uint64_t)n < NPAGES / 2 ? vec[n - 1].end + PAGE : end;
		if (n == 0)
			want = end;
		printf("vec_len %6lu: %4ld regions, last ends at end-%#lx, walk_end = end-%#lx  %s\n",
		       (unsigned long)vec_lens[k], n, (unsigned long)(end - vec[n - 1].end),
		       (unsigned long)(end - a.walk_end), a.walk_end == want ? "ok" : "WRONG");
		bad |= a.walk_end != want;
	}
	if (bad)
		printf("FAIL: walk_end below the end of the walk; continuing from it returns regions twice\n");
	return bad;
}
