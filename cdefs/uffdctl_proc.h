/*
 * uffdctl_proc.c: processes of a session with no Python in them (a raw-clone fork and the
 * child's native command loop).  The wire structs and op codes, shared with Python's cdef
 * (cdefs/uffd_cdef.h) and uffdctl/process.py.
 */
#ifndef UFFDCTL_PROC_H
#define UFFDCTL_PROC_H

#include <stdint.h>

#define UFFDCTL_PROC_PING	0	/* -> ret = getpid() */
#define UFFDCTL_PROC_ACCESS	1	/* a0 addr, a1 len, a2 write, a3 fill, a4 stride, a5 want data */
#define UFFDCTL_PROC_MADVISE	2	/* a0 addr, a1 len, a2 advice */
#define UFFDCTL_PROC_MUNMAP	3	/* a0 addr, a1 len */
#define UFFDCTL_PROC_MPROTECT	4	/* a0 addr, a1 len, a2 prot */
#define UFFDCTL_PROC_MREMAP	5	/* a0 old, a1 old_len, a2 new_len, a3 flags, a4 new_addr -> ret addr */
#define UFFDCTL_PROC_MMAP	6	/* a0 addr, a1 len, a2 prot, a3 flags (anonymous only) -> ret addr */
#define UFFDCTL_PROC_EXIT	7	/* a0 exit code: _exit() after the reply */
#define UFFDCTL_PROC_FORK	8	/* -> ret pid of a grandchild; its command socket in SCM_RIGHTS */
#define UFFDCTL_PROC_USERFAULTFD 9	/* a0 flags, a1 1 = /dev/userfaultfd -> the fd in SCM_RIGHTS */
#define UFFDCTL_PROC_WRITE	10	/* a0 addr, data_len payload bytes follow the request */
#define UFFDCTL_PROC_WAITPID	11	/* a0 pid, a1 options -> ret pid, a2.. status in rep.si_code */
#define UFFDCTL_PROC_KILL	12	/* a0 pid, a1 signal */

struct uffdctl_proc_req {
	uint32_t op;
	uint32_t data_len;
	uint64_t a[6];
};

struct uffdctl_proc_rep {
	int64_t ret;		/* result, or -errno */
	int64_t minflt;		/* ACCESS: faults of the child during the access (getrusage) */
	int64_t majflt;
	int32_t sig;		/* ACCESS: 0, or SIGBUS / SIGSEGV if the access ended in that signal */
	int32_t si_code;	/* the signal's si_code; WAITPID: the wait status */
	uint64_t fault_addr;
	uint64_t ns;
	uint64_t data_len;	/* bytes following the reply */
	int32_t fd;		/* 1 if an fd rides along in SCM_RIGHTS */
	int32_t pad;
};

/* Fork the calling process; the child runs the command loop on *sock_out's peer and never returns. */
int64_t uffdctl_proc_fork(int *sock_out);

#endif
