// SPDX-License-Identifier: GPL-2.0
/*
 * mremap() of part of a MAP_PRIVATE hugetlb mapping leaks hugetlb reservations: after every
 * mapping is gone HugePages_Rsvd stays raised, for good (nr_hugepages=0 then leaves the pages as
 * HugePages_Surp; no process owns them).  Found by uffdctl's mremap side-by-side test on 6.18.
 *
 * Build and run as root (reserves 16 huge pages for the run and puts nr_hugepages back):
 *     cc -O2 -o hugetlb-mremap-resv-leak hugetlb-mremap-resv-leak.c && ./hugetlb-mremap-resv-leak
 *
 * One line per case: a 4-page MAP_PRIVATE|MAP_HUGETLB mapping, none of it touched, then one mm
 * operation, then munmap of everything; the case leaks if HugePages_Rsvd is higher afterwards.
 * Exits 1 if any case leaked, 0 if none did.  The leak is for good: a leaking kernel keeps the 2
 * pages of every run (4 MiB) until reboot.  Measured on 6.18.44 (the same with a memfd of
 * MFD_HUGETLB mapped MAP_PRIVATE): moving pages 1-2 away leaks 2, moving page 0 away 3, i.e. one per
 * untouched page left behind in the source; moving all 4, or munmap of 1-2, leaks none.  Suspect:
 * copy_vma_and_data() (mm/mremap.c) clears the reservation map of the moved part with
 * clear_vma_resv_huge_pages() (fixup_hugetlb_reservations() since 6.16), and what stays behind of a
 * split VMA then gives back none of its reservations when it is unmapped.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define HP (2UL << 20)

static long meminfo(const char *key)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[256];
	long v = -1;
	size_t n = strlen(key);

	while (f && fgets(line, sizeof(line), f))
		if (!strncmp(line, key, n) && line[n] == ':')
			v = atol(line + n + 1);
	if (f)
		fclose(f);
	return v;
}

static long get_nr_hugepages(void)
{
	FILE *f = fopen("/proc/sys/vm/nr_hugepages", "r");
	long n = -1;
	if (f) {
		if (fscanf(f, "%ld", &n) != 1)
			n = -1;
		fclose(f);
	}
	return n;
}

static int set_nr_hugepages(long n)
{
	FILE *f = fopen("/proc/sys/vm/nr_hugepages", "w");
	if (!f)
		return -1;
	fprintf(f, "%ld\n", n);
	return fclose(f);
}

static const char *ops[] = { "mremap pages 1-2 away", "mremap page 0 away", "mremap all 4 away",
			     "munmap pages 1-2" };

static long one(int op, int touched)
{
	long before = meminfo("HugePages_Rsvd");
	char *probe = mmap(NULL, 12 * HP, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *base = (char *)(((unsigned long)probe + HP - 1) & ~(HP - 1)), *t = base + 5 * HP, *r;

	r = mmap(base, 4 * HP, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_FIXED, -1, 0);
	if (r == MAP_FAILED) {
		perror("mmap MAP_HUGETLB");
		exit(2);
	}
	for (int i = 0; i < 4; i++)
		if (touched & (1 << i))
			r[i * HP] = 1;
	if (op == 0 && mremap(r + HP, 2 * HP, 2 * HP, MREMAP_MAYMOVE | MREMAP_FIXED, t) == MAP_FAILED)
		perror("mremap");
	if (op == 1 && mremap(r, HP, HP, MREMAP_MAYMOVE | MREMAP_FIXED, t) == MAP_FAILED)
		perror("mremap");
	if (op == 2 && mremap(r, 4 * HP, 4 * HP, MREMAP_MAYMOVE | MREMAP_FIXED, t) == MAP_FAILED)
		perror("mremap");
	if (op == 3)
		munmap(r + HP, 2 * HP);
	munmap(probe, 12 * HP);		/* everything: the mapping, what moved, the probe */
	return meminfo("HugePages_Rsvd") - before;
}

int main(void)
{
	long nr = get_nr_hugepages(), leaked = 0;

	/* above the reservations already held (leaked ones included): 16 pages for this run */
	if (nr < 0 || set_nr_hugepages(meminfo("HugePages_Rsvd") + 16)) {
		perror("/proc/sys/vm/nr_hugepages (run as root)");
		return 2;
	}
	for (int op = 0; op < 4; op += 3)	/* the leak, and the control (munmap of the same part) */
		for (int touched = 0; touched < 1; touched++) {
			long d = one(op, touched);
			printf("%-22s touched pages %c%c%c%c: HugePages_Rsvd %+ld\n", ops[op],
			       touched & 1 ? '0' : '-', touched & 2 ? '1' : '-', touched & 4 ? '2' : '-',
			       touched & 8 ? '3' : '-', d);
			leaked += d;
		}
	set_nr_hugepages(nr);
	printf("%s: %ld reservations leaked\n", leaked ? "LEAK" : "ok", leaked);
	return leaked ? 1 : 0;
}
