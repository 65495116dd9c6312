/*
 * The process CRIU and uffdctl's own soft-dirty consumer track (scripts/vmtest_lib/criu_demo.py).
 *
 * One page of memfd shmem, MAP_SHARED, filled with 'A'.  SIGUSR1: register the page for uffd-wp,
 * then (argv[1]) "wp-onoff": UFFDIO_WRITEPROTECT on and off, or "unregister": nothing more; unregister,
 * close the uffd (CRIU cannot dump a userfaultfd), and write 'B' to the page.  SIGUSR2: report the
 * page's first byte.  Every report rewrites argv[2] ("ready ADDR", "written", "content C").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PAGE 4096

static volatile sig_atomic_t step;
static const char *status_path;

static void on_signal(int sig) { step = sig; }

static void report(const char *fmt, ...)
{
	char buf[128], tmp[4200];
	va_list ap;
	int fd, n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	snprintf(tmp, sizeof(tmp), "%s.tmp", status_path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || write(fd, buf, n) != n || close(fd) || rename(tmp, status_path))
		_exit(3);
}

static int wp_cycle(char *p, const char *mode)
{
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg = { .range = { (unsigned long)p, PAGE }, .mode = UFFDIO_REGISTER_MODE_WP };
	struct uffdio_writeprotect wp = { .range = { (unsigned long)p, PAGE } };
	struct uffdio_range range = { (unsigned long)p, PAGE };
	int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

	if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) || ioctl(uffd, UFFDIO_REGISTER, &reg))
		return -1;
	if (!strcmp(mode, "wp-onoff")) {
		wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
		if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp))
			return -1;
		wp.mode = 0;
		if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp))
			return -1;
	}
	if (ioctl(uffd, UFFDIO_UNREGISTER, &range))
		return -1;
	return close(uffd);
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_signal };
	sigset_t none;
	char *p;
	int fd;

	if (argc != 3) {
		fprintf(stderr, "usage: %s wp-onoff|unregister STATUS_FILE\n", argv[0]);
		return 2;
	}
	status_path = argv[2];
	fd = memfd_create("uffdctl-criu", 0);
	if (fd < 0 || ftruncate(fd, PAGE))
		return 3;
	p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED)
		return 3;
	close(fd);
	memset(p, 'A', PAGE);
	sigaction(SIGUSR1, &sa, NULL);
	sigaction(SIGUSR2, &sa, NULL);
	sigemptyset(&none);
	report("ready %lx", (unsigned long)p);
	for (;;) {
		sigset_t block;

		sigemptyset(&block);
		sigaddset(&block, SIGUSR1);
		sigaddset(&block, SIGUSR2);
		sigprocmask(SIG_BLOCK, &block, NULL);
		while (!step)
			sigsuspend(&none);
		sigprocmask(SIG_UNBLOCK, &block, NULL);
		if (step == SIGUSR1) {
			if (wp_cycle(p, argv[1]))
				report("error %d", errno);
			else {
				p[0] = 'B';
				report("written");
			}
		} else {
			report("content %c", p[0]);
		}
		step = 0;
	}
}
