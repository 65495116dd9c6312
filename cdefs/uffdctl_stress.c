/*
 * `uffdctl stress`: one bounce of the kernel's userfaultfd stress test
 * (tools/testing/selftests/mm/uffd-stress.c in 6.12, selftests/vm/userfaultfd.c in 6.1), with
 * uffdctl's own native fault handler (uffdctl_handler.c) serving the faults:
 *
 *   - per CPU a locking thread: picks pages (sequential, racing or random by the bounce's mode
 *     bits), takes the pthread mutex that lives at the start of the page in the destination
 *     area (the first touch of a missing page faults), checks the page's counter against
 *     count_verify[] and increments both;
 *   - per CPU a background thread: UFFDIO_COPYs its share of pages from the source area, the
 *     first half, then (uffd-wp) write-protects its share, then the second half;
 *   - per CPU a uffdctl handler thread, in poll mode or blocking-read mode by the mode bits.
 *
 * A counter that differs from count_verify[] is a lost update: the bounce stops and says which
 * page, what it read, what it expected.  A test hook loses one update on purpose.
 * (see uffdctl_helpers.h for the map of the helpers)
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <unistd.h>

#include "uffd_uapi.h"
#include "uffdctl_helpers.h"

#define MAX_CPUS 256

/* The selftests' layout: pthread_mutex_t at page offset 0, the counter right after it. */
#define area_mutex(area, nr, psz) ((pthread_mutex_t *)((area) + (nr) * (psz)))
#define area_count(area, nr, psz) \
	((volatile unsigned long long *)(((uintptr_t)((area) + (nr) * (psz)) + sizeof(pthread_mutex_t) + \
					  sizeof(unsigned long long) - 1) & ~(sizeof(unsigned long long) - 1)))

struct uffdctl_stress_thread {
	struct uffdctl_stress *s;
	unsigned long cpu;
};

static void stress_fail(struct uffdctl_stress *s, int err, const char *where, uint64_t page,
			uint64_t got, uint64_t want)
{
	if (__atomic_exchange_n(&s->failed, 1, __ATOMIC_SEQ_CST) == 0) {
		s->err = err;
		s->where = where;
		s->bad_page = page;
		s->bad_count = got;
		s->bad_expect = want;
	}
	__atomic_store_n(&s->finished, 1, __ATOMIC_SEQ_CST);
}

int uffdctl_stress_init(struct uffdctl_stress *s)
{
	char *src = (char *)(uintptr_t)s->src;

	for (uint64_t nr = 0; nr < s->nr_pages; nr++) {
		pthread_mutexattr_t a;
		pthread_mutexattr_init(&a);
		pthread_mutex_init(area_mutex(src, nr, s->page_size), &a);
		s->count_verify[nr] = *area_count(src, nr, s->page_size) = 1;
		*(area_count(src, nr, s->page_size) + 1) = 1;	/* the selftests' non-zero placeholder */
	}
	if ((uintptr_t)area_count(NULL, 0, s->page_size) + 2 * sizeof(unsigned long long) > s->page_size)
		return -EINVAL;
	return 0;
}

static void *locking_thread(void *arg)
{
	struct uffdctl_stress_thread *t = arg;
	struct uffdctl_stress *s = t->s;
	char *dst = (char *)(uintptr_t)s->dst;
	unsigned long page_nr = 0, nr_pages_per_cpu = s->nr_pages / s->nr_cpus;
	unsigned long long count;

	if (!(s->bounces & UFFDCTL_BOUNCE_RANDOM)) {
		page_nr = -(unsigned long)s->bounces;
		if (!(s->bounces & UFFDCTL_BOUNCE_RACINGFAULTS))
			page_nr += t->cpu * nr_pages_per_cpu;
	}
	while (!__atomic_load_n(&s->finished, __ATOMIC_RELAXED)) {
		if (s->bounces & UFFDCTL_BOUNCE_RANDOM) {
			if (getrandom(&page_nr, sizeof(page_nr), 0) != sizeof(page_nr)) {
				stress_fail(s, -errno, "getrandom", 0, 0, 0);
				break;
			}
		} else {
			page_nr += 1;
		}
		page_nr %= s->nr_pages;
		pthread_mutex_lock(area_mutex(dst, page_nr, s->page_size));
		count = *area_count(dst, page_nr, s->page_size);
		if (count != s->count_verify[page_nr]) {
			stress_fail(s, UFFDCTL_STRESS_CORRUPT, "locking thread", page_nr, count,
				    s->count_verify[page_nr]);
			pthread_mutex_unlock(area_mutex(dst, page_nr, s->page_size));
			break;
		}
		count++;
		s->count_verify[page_nr] = count;
		if ((s->lose_update_at == -2 || (int64_t)page_nr == s->lose_update_at) &&
		    __atomic_exchange_n(&s->lose_armed, 0, __ATOMIC_SEQ_CST))
			s->lost_page = page_nr;	/* test hook: this update never reaches the page */
		else
			*area_count(dst, page_nr, s->page_size) = count;
		pthread_mutex_unlock(area_mutex(dst, page_nr, s->page_size));
	}
	return NULL;
}

/* UFFDIO_COPY one page; EEXIST (the handler won) wakes, as the selftests' __copy_page(). */
static int copy_page(struct uffdctl_stress *s, uint64_t offset, int retry)
{
	struct uffdio_copy c = {
		.dst = s->dst + offset, .src = s->src + offset, .len = s->page_size,
		.mode = s->wp ? UFFDIO_COPY_MODE_WP : 0,
	};
	if (ioctl(s->uffd, UFFDIO_COPY, &c)) {
		if (c.copy != -EEXIST) {
			stress_fail(s, (int)c.copy, "background UFFDIO_COPY", offset / s->page_size, 0, 0);
			return -1;
		}
		struct uffdio_range r = { c.dst, s->page_size };
		ioctl(s->uffd, UFFDIO_WAKE, &r);
		return 0;
	}
	if ((uint64_t)c.copy != s->page_size) {
		stress_fail(s, -EIO, "background UFFDIO_COPY short", offset / s->page_size, c.copy, s->page_size);
		return -1;
	}
	if (retry && __atomic_exchange_n(&s->test_copy_eexist, 0, __ATOMIC_SEQ_CST)) {
		/* once per bounce: the same copy again (through the alias where there is one) is EEXIST */
		struct uffdio_copy again = c;
		if (s->dst_alias)
			again.dst = s->dst_alias + offset;
		again.copy = 0;
		if (!ioctl(s->uffd, UFFDIO_COPY, &again) || again.copy != -EEXIST)
			stress_fail(s, -EIO, "UFFDIO_COPY retry not EEXIST", offset / s->page_size, again.copy,
				    (uint64_t)-EEXIST);
	}
	return 1;
}

static void *background_thread(void *arg)
{
	struct uffdctl_stress_thread *t = arg;
	struct uffdctl_stress *s = t->s;
	unsigned long per = s->nr_pages / s->nr_cpus;
	unsigned long start_nr = t->cpu * per, end_nr = (t->cpu + 1) * per, mid_nr = (start_nr + end_nr) / 2;

	for (unsigned long nr = start_nr; nr < mid_nr && !s->failed; nr++)
		copy_page(s, nr * s->page_size, 1);
	if (s->wp) {
		struct uffdio_writeprotect w = { { s->dst + start_nr * s->page_size, per * s->page_size },
						 UFFDIO_WRITEPROTECT_MODE_WP };
		if (ioctl(s->uffd, UFFDIO_WRITEPROTECT, &w))
			stress_fail(s, -errno, "background UFFDIO_WRITEPROTECT", start_nr, 0, 0);
	}
	for (unsigned long nr = mid_nr; nr < end_nr && !s->failed; nr++)
		copy_page(s, nr * s->page_size, 1);
	return NULL;
}

/* Count what the handlers did the way the selftest counts: a MISSING fault counts when its
 * UFFDIO_COPY copied the page (not when it met EEXIST), a WP fault when it was unprotected. */
static void count_faults(struct uffdctl_stress *s, struct uffdctl_handler *h, unsigned long cpu)
{
	struct uffdctl_event ev[256];
	int n;

	do {
		n = uffdctl_handler_drain(h, ev, 256);
		for (int i = 0; i < n; i++) {
			if (ev[i].msg.event != UFFD_EVENT_PAGEFAULT)
				continue;
			if (ev[i].err) {
				stress_fail(s, ev[i].err, "handler", (ev[i].msg.arg.pagefault.address - s->dst) /
					    s->page_size, 0, 0);
			} else if (ev[i].msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
				s->wp_faults[cpu]++;
			} else if (ev[i].action == UFFDCTL_POL_COPY_SRC && (uint64_t)ev[i].result == s->page_size) {
				s->missing_faults[cpu]++;
			}
		}
	} while (n == 256);
}

int uffdctl_stress_bounce(struct uffdctl_stress *s)
{
	unsigned long n = s->nr_cpus;
	pthread_t lockers[MAX_CPUS], copiers[MAX_CPUS];
	struct uffdctl_handler *handlers[MAX_CPUS];
	struct uffdctl_stress_thread args[MAX_CPUS];
	pthread_attr_t attr;
	int err = 0;

	if (n == 0 || n > MAX_CPUS || s->nr_pages % n)
		return -EINVAL;
	s->finished = 0;
	s->failed = 0;
	s->err = 0;
	s->where = NULL;
	s->test_copy_eexist = 1;
	for (unsigned long c = 0; c < n; c++)
		s->missing_faults[c] = s->wp_faults[c] = 0;

	struct uffdctl_handler_cfg hc = {
		.uffd = s->uffd, .missing_policy = UFFDCTL_POL_COPY_SRC, .wp_policy = UFFDCTL_POL_UNPROTECT,
		.minor_policy = UFFDCTL_POL_QUEUE, .base = s->dst, .src = s->src, .page_size = s->page_size,
		.copy_mode = s->wp ? UFFDIO_COPY_MODE_WP : 0, .batch = 16,
		/* every fault of a bounce fits: each page faults MISSING at most once and WP at most once */
		.log_cap = (int)(2 * s->nr_pages + 64),
		.read_mode = !(s->bounces & UFFDCTL_BOUNCE_POLL),
	};
	for (unsigned long c = 0; c < n; c++) {
		handlers[c] = uffdctl_handler_start(&hc, &err);
		if (!handlers[c]) {
			while (c--)
				uffdctl_handler_free(handlers[c]);
			return err;
		}
	}
	pthread_attr_init(&attr);
	pthread_attr_setstacksize(&attr, 16 * 1024 * 1024);
	for (unsigned long c = 0; c < n; c++) {
		args[c].s = s;
		args[c].cpu = c;
		if (pthread_create(&lockers[c], &attr, locking_thread, &args[c]) ||
		    pthread_create(&copiers[c], &attr, background_thread, &args[c])) {
			/* the selftest exits here; we cannot unwind half-started threads cleanly either */
			abort();
		}
	}
	for (unsigned long c = 0; c < n; c++)
		pthread_join(copiers[c], NULL);
	/* Zap the source at once: the whole area was transferred by the background threads; a racing
	 * handler UFFDIO_COPY that now reads a zero page gets EEXIST (the selftest's comment). */
	if (madvise((void *)(uintptr_t)s->src, s->nr_pages * s->page_size, s->release_advice))
		stress_fail(s, -errno, "release of the source area", 0, 0, 0);
	__atomic_store_n(&s->finished, 1, __ATOMIC_SEQ_CST);
	for (unsigned long c = 0; c < n; c++)
		pthread_join(lockers[c], NULL);
	for (unsigned long c = 0; c < n; c++) {
		uffdctl_handler_stop(handlers[c], 1);
		count_faults(s, handlers[c], c);
		uffdctl_handler_free(handlers[c]);
	}
	pthread_attr_destroy(&attr);
	return s->failed ? (s->err ? s->err : UFFDCTL_STRESS_CORRUPT) : 0;
}

/* BOUNCE_VERIFY: after unregistering, every counter must equal count_verify[]. */
int uffdctl_stress_verify(struct uffdctl_stress *s)
{
	char *dst = (char *)(uintptr_t)s->dst;

	for (uint64_t nr = 0; nr < s->nr_pages; nr++) {
		uint64_t got = *area_count(dst, nr, s->page_size);
		if (got != s->count_verify[nr]) {
			s->failed = 1;
			s->err = UFFDCTL_STRESS_CORRUPT;
			s->where = "verification";
			s->bad_page = nr;
			s->bad_count = got;
			s->bad_expect = s->count_verify[nr];
			return UFFDCTL_STRESS_CORRUPT;
		}
	}
	return 0;
}
