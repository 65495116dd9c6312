/* cffi cdef: what Python sees of uffdctl._uffd.  Structs declared in full are checked
 * against the compiler's layout when the module is built (cffi API mode); uffd_msg is
 * packed and ends in "...;", so cffi takes its size from the compiler.
 * tests/test_bindings.py checks sizes and offsets against the kernel's. */
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef long long __s64;

struct uffdio_api { __u64 api; __u64 features; __u64 ioctls; };
struct uffdio_range { __u64 start; __u64 len; };
struct uffdio_register { struct uffdio_range range; __u64 mode; __u64 ioctls; };
struct uffdio_copy { __u64 dst; __u64 src; __u64 len; __u64 mode; __s64 copy; };
struct uffdio_zeropage { struct uffdio_range range; __u64 mode; __s64 zeropage; };
struct uffdio_writeprotect { struct uffdio_range range; __u64 mode; };
struct uffdio_continue { struct uffdio_range range; __u64 mode; __s64 mapped; };
struct uffdio_poison { struct uffdio_range range; __u64 mode; __s64 updated; };
struct uffdio_move { __u64 dst; __u64 src; __u64 len; __u64 mode; __s64 move; };

struct uffd_msg {
	__u8 event;
	__u8 reserved1;
	__u16 reserved2;
	__u32 reserved3;
	union {
		struct { __u64 flags; __u64 address; union { __u32 ptid; } feat; } pagefault;
		struct { __u32 ufd; } fork;
		struct { __u64 from; __u64 to; __u64 len; } remap;
		struct { __u64 start; __u64 end; } remove;
		struct { __u64 reserved1; __u64 reserved2; __u64 reserved3; } reserved;
	} arg;
	...;
};

struct page_region { __u64 start; __u64 end; __u64 categories; };
struct pm_scan_arg {
	__u64 size; __u64 flags; __u64 start; __u64 end; __u64 walk_end;
	__u64 vec; __u64 vec_len; __u64 max_pages; __u64 category_inverted;
	__u64 category_mask; __u64 category_anyof_mask; __u64 return_mask;
};

#define USERFAULTFD_IOC_NEW ...
#define UFFDIO_API ...
#define UFFDIO_REGISTER ...
#define UFFDIO_UNREGISTER ...
#define UFFDIO_WAKE ...
#define UFFDIO_COPY ...
#define UFFDIO_ZEROPAGE ...
#define UFFDIO_MOVE ...
#define UFFDIO_WRITEPROTECT ...
#define UFFDIO_CONTINUE ...
#define UFFDIO_POISON ...
#define PAGEMAP_SCAN ...

/* libc, called directly: cffi releases the GIL around each call */
void *memset(void *, int, size_t);
void *memcpy(void *, const void *, size_t);

/* helpers (cdefs/uffdctl_*.c, declared in cdefs/uffdctl_helpers.h): 0 / value or -errno */
int uffdctl_ioctl(int, unsigned long, void *);
int uffdctl_ioctl_range(int, unsigned long, uint64_t, uint64_t);
int uffdctl_ioctl_range_mode(int, unsigned long, uint64_t, uint64_t, uint64_t, int64_t *);
int uffdctl_ioctl_dst_src(int, unsigned long, uint64_t, uint64_t, uint64_t, uint64_t, int64_t *);
int64_t uffdctl_dst_src1(int, unsigned long, uint64_t, uint64_t, uint64_t, uint64_t);
int64_t uffdctl_range_mode1(int, unsigned long, uint64_t, uint64_t, uint64_t);
int64_t uffdctl_copy1(int, uint64_t, uint64_t, uint64_t, uint64_t);
int64_t uffdctl_zeropage1(int, uint64_t, uint64_t, uint64_t);
int64_t uffdctl_writeprotect1(int, uint64_t, uint64_t, uint64_t);
int64_t uffdctl_last_result(void);
int uffdctl_userfaultfd(int);
int uffdctl_dev_userfaultfd(int);
int64_t uffdctl_mmap(uint64_t, uint64_t, int, int, int, int64_t);
int uffdctl_munmap(uint64_t, uint64_t);
int uffdctl_madvise(uint64_t, uint64_t, int);
int uffdctl_mprotect(uint64_t, uint64_t, int);
int64_t uffdctl_mremap(uint64_t, uint64_t, uint64_t, int, uint64_t);
int uffdctl_memfd_create(const char *, unsigned int);
int64_t uffdctl_pread(int, void *, uint64_t, int64_t);
int64_t uffdctl_read(int, void *, uint64_t);
int64_t uffdctl_poll_read(int, void *, uint64_t, int, int);

struct uffdctl_access_result {
	int64_t minflt; int64_t majflt; int32_t sigbus; int32_t si_code;
	uint64_t fault_addr; uint64_t ns;
};
int uffdctl_access(uint64_t, uint64_t, int, const void *, void *, int, uint64_t,
		   struct uffdctl_access_result *);
int uffdctl_thread_faults(int64_t *, int64_t *);
struct uffdctl_access_job {
	uint64_t addr; uint64_t len; int write; int fill; const void *wbuf; void *rbuf; uint64_t stride;
	struct uffdctl_access_result res; int ret; int done; struct uffdctl_access_job *next;
};
struct uffdctl_worker;
struct uffdctl_worker *uffdctl_worker_start(int *);
int uffdctl_worker_tid(struct uffdctl_worker *);
int uffdctl_worker_submit(struct uffdctl_worker *, struct uffdctl_access_job *, int);
int uffdctl_worker_wait(struct uffdctl_worker *, struct uffdctl_access_job *, int);
int uffdctl_worker_busy(struct uffdctl_worker *);
int uffdctl_worker_stop(struct uffdctl_worker *, int);
int uffdctl_worker_stack(struct uffdctl_worker *, uint64_t *);
int uffdctl_gettid(void);

#define UFFDCTL_POL_QUEUE ...
#define UFFDCTL_POL_ZEROPAGE ...
#define UFFDCTL_POL_COPY_SRC ...
#define UFFDCTL_POL_COPY_FILL ...
#define UFFDCTL_POL_CONTINUE ...
#define UFFDCTL_POL_UNPROTECT ...
#define UFFDCTL_POL_WAKE ...
struct uffdctl_handler_cfg {
	int uffd; int missing_policy; int wp_policy; int minor_policy;
	uint64_t base; uint64_t src; uint64_t page_size; uint64_t copy_mode;
	int fill; int batch; int log_cap; int read_mode; uint64_t src_len;
	uint32_t delay_us;
};
struct uffdctl_event {
	uint64_t ts_ns; struct uffd_msg msg; int32_t action; int32_t err; int64_t result; uint64_t seq;
};
struct uffdctl_handler;
struct uffdctl_handler *uffdctl_handler_start(const struct uffdctl_handler_cfg *, int *);
int uffdctl_handler_stop(struct uffdctl_handler *, int);
int uffdctl_handler_drain(struct uffdctl_handler *, struct uffdctl_event *, int);
void uffdctl_handler_stats(struct uffdctl_handler *, uint64_t *);
void uffdctl_handler_free(struct uffdctl_handler *);
int uffdctl_handler_sync(struct uffdctl_handler *, int);
int uffdctl_handler_stack(struct uffdctl_handler *, uint64_t *);

#define UFFDCTL_PM_NFLAGS ...
int64_t uffdctl_pagemap_read(int, uint64_t, uint64_t, uint64_t *);
void uffdctl_pagemap_counts(const uint64_t *, uint64_t, uint64_t *);
int64_t uffdctl_pagemap_runs(const uint64_t *, uint64_t, uint64_t, uint64_t *, uint64_t);
void uffdctl_pagemap_symbols(const uint64_t *, uint64_t, uint64_t, char *);
int64_t uffdctl_scan_all(int, struct pm_scan_arg *, uint64_t, struct page_region **);
void uffdctl_free(void *);

#define UFFDCTL_BOUNCE_RANDOM ...
#define UFFDCTL_BOUNCE_RACINGFAULTS ...
#define UFFDCTL_BOUNCE_VERIFY ...
#define UFFDCTL_BOUNCE_POLL ...
#define UFFDCTL_STRESS_CORRUPT ...
struct uffdctl_stress {
	int uffd; int nr_cpus; int bounces; int wp; int release_advice;
	uint64_t src; uint64_t dst; uint64_t dst_alias; uint64_t nr_pages; uint64_t page_size;
	uint64_t *count_verify; uint64_t *missing_faults; uint64_t *wp_faults;
	int64_t lose_update_at; int lose_armed; int64_t lost_page;
	int finished; int failed; int test_copy_eexist;
	int err; const char *where; uint64_t bad_page; uint64_t bad_count; uint64_t bad_expect;
};
int uffdctl_stress_init(struct uffdctl_stress *);
int uffdctl_stress_bounce(struct uffdctl_stress *);
int uffdctl_stress_verify(struct uffdctl_stress *);

int64_t uffdctl_loop_copy(int, uint64_t, uint64_t, uint64_t, uint64_t, uint64_t);
int64_t uffdctl_loop_zeropage(int, uint64_t, uint64_t, uint64_t);
int64_t uffdctl_loop_writeprotect(int, uint64_t, uint64_t, uint64_t, uint64_t);
struct uffdctl_faulter;
struct uffdctl_faulter *uffdctl_bench_faulter_start(uint64_t, uint64_t, uint64_t, int, uint64_t *);
void uffdctl_bench_faulter_join(struct uffdctl_faulter *);
struct uffdctl_refhandler;
struct uffdctl_refhandler *uffdctl_bench_refhandler_start(int, uint64_t, uint64_t, uint64_t, int, int);
int uffdctl_bench_refhandler_join(struct uffdctl_refhandler *);

/* processes of a session (cdefs/uffdctl_proc.c): a child runs a native command loop */
#define UFFDCTL_PROC_PING ...
#define UFFDCTL_PROC_ACCESS ...
#define UFFDCTL_PROC_MADVISE ...
#define UFFDCTL_PROC_MUNMAP ...
#define UFFDCTL_PROC_MPROTECT ...
#define UFFDCTL_PROC_MREMAP ...
#define UFFDCTL_PROC_MMAP ...
#define UFFDCTL_PROC_EXIT ...
#define UFFDCTL_PROC_FORK ...
#define UFFDCTL_PROC_USERFAULTFD ...
#define UFFDCTL_PROC_WRITE ...
#define UFFDCTL_PROC_WAITPID ...
#define UFFDCTL_PROC_KILL ...
struct uffdctl_proc_req { uint32_t op; uint32_t data_len; uint64_t a[6]; };
struct uffdctl_proc_rep {
	int64_t ret; int64_t minflt; int64_t majflt; int32_t sig; int32_t si_code;
	uint64_t fault_addr; uint64_t ns; uint64_t data_len; int32_t fd; int32_t pad;
};
int64_t uffdctl_proc_fork(int *);
