/*
 * uffdctl's own copy of the userfaultfd and PAGEMAP_SCAN uapi, as of the newest
 * kernel the project targets (6.18; 7.x additions are listed in comments only).
 * Carried so the build does not depend on the build host's <linux/userfaultfd.h>
 * (6.1 here: no POISON, MOVE, WP_ASYNC, PAGEMAP_SCAN).  Names and layouts are the
 * kernel's: include/uapi/linux/userfaultfd.h, include/uapi/linux/fs.h.
 * Values are checked against ../shared/spec/kernel-semantics.md §4 by
 * tests/test_bindings.py, and against the system headers where those define a name.
 */
#ifndef UFFDCTL_UAPI_H
#define UFFDCTL_UAPI_H

#include <linux/types.h>
#include <linux/ioctl.h>

#define USERFAULTFD_IOC      0xAA
#define USERFAULTFD_IOC_NEW  _IO(USERFAULTFD_IOC, 0x00)

#define UFFD_API ((__u64)0xAA)
#define UFFDIO   0xAA

#define _UFFDIO_REGISTER     (0x00)
#define _UFFDIO_UNREGISTER   (0x01)
#define _UFFDIO_WAKE         (0x02)
#define _UFFDIO_COPY         (0x03)
#define _UFFDIO_ZEROPAGE     (0x04)
#define _UFFDIO_MOVE         (0x05)
#define _UFFDIO_WRITEPROTECT (0x06)
#define _UFFDIO_CONTINUE     (0x07)
#define _UFFDIO_POISON       (0x08)
#define _UFFDIO_API          (0x3F)

struct uffdio_api {
	__u64 api;
	__u64 features;
	__u64 ioctls;
};

struct uffdio_range {
	__u64 start;
	__u64 len;
};

struct uffdio_register {
	struct uffdio_range range;
	__u64 mode;
	__u64 ioctls;
};

struct uffdio_copy {
	__u64 dst;
	__u64 src;
	__u64 len;
	__u64 mode;
	__s64 copy;
};

struct uffdio_zeropage {
	struct uffdio_range range;
	__u64 mode;
	__s64 zeropage;
};

struct uffdio_writeprotect {
	struct uffdio_range range;
	__u64 mode;
};

struct uffdio_continue {
	struct uffdio_range range;
	__u64 mode;
	__s64 mapped;
};

struct uffdio_poison {
	struct uffdio_range range;
	__u64 mode;
	__s64 updated;
};

struct uffdio_move {
	__u64 dst;
	__u64 src;
	__u64 len;
	__u64 mode;
	__s64 move;
};

struct uffd_msg {
	__u8 event;
	__u8 reserved1;
	__u16 reserved2;
	__u32 reserved3;
	union {
		struct {
			__u64 flags;
			__u64 address;
			union {
				__u32 ptid;
			} feat;
		} pagefault;
		struct {
			__u32 ufd;
		} fork;
		struct {
			__u64 from;
			__u64 to;
			__u64 len;
		} remap;
		struct {
			__u64 start;
			__u64 end;
		} remove;
		struct {
			__u64 reserved1;
			__u64 reserved2;
			__u64 reserved3;
		} reserved;
	} arg;
} __attribute__((packed));

#define UFFDIO_API          _IOWR(UFFDIO, _UFFDIO_API, struct uffdio_api)
#define UFFDIO_REGISTER     _IOWR(UFFDIO, _UFFDIO_REGISTER, struct uffdio_register)
#define UFFDIO_UNREGISTER   _IOR(UFFDIO, _UFFDIO_UNREGISTER, struct uffdio_range)
#define UFFDIO_WAKE         _IOR(UFFDIO, _UFFDIO_WAKE, struct uffdio_range)
#define UFFDIO_COPY         _IOWR(UFFDIO, _UFFDIO_COPY, struct uffdio_copy)
#define UFFDIO_ZEROPAGE     _IOWR(UFFDIO, _UFFDIO_ZEROPAGE, struct uffdio_zeropage)
#define UFFDIO_MOVE         _IOWR(UFFDIO, _UFFDIO_MOVE, struct uffdio_move)
#define UFFDIO_WRITEPROTECT _IOWR(UFFDIO, _UFFDIO_WRITEPROTECT, struct uffdio_writeprotect)
#define UFFDIO_CONTINUE     _IOWR(UFFDIO, _UFFDIO_CONTINUE, struct uffdio_continue)
#define UFFDIO_POISON       _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)

/* PAGEMAP_SCAN, include/uapi/linux/fs.h (6.7+) */
struct page_region {
	__u64 start;
	__u64 end;
	__u64 categories;
};

struct pm_scan_arg {
	__u64 size;
	__u64 flags;
	__u64 start;
	__u64 end;
	__u64 walk_end;
	__u64 vec;
	__u64 vec_len;
	__u64 max_pages;
	__u64 category_inverted;
	__u64 category_mask;
	__u64 category_anyof_mask;
	__u64 return_mask;
};

#define PROCFS_IOCTL_MAGIC 'f'
#define PAGEMAP_SCAN _IOWR(PROCFS_IOCTL_MAGIC, 16, struct pm_scan_arg)


#define UFFD_API_IOCTLS ((__u64)1 << _UFFDIO_REGISTER | (__u64)1 << _UFFDIO_UNREGISTER | (__u64)1 << _UFFDIO_API)
#define UFFD_API_RANGE_IOCTLS ((__u64)1 << _UFFDIO_WAKE | (__u64)1 << _UFFDIO_COPY | (__u64)1 << _UFFDIO_ZEROPAGE | \
	(__u64)1 << _UFFDIO_MOVE | (__u64)1 << _UFFDIO_WRITEPROTECT | (__u64)1 << _UFFDIO_CONTINUE | (__u64)1 << _UFFDIO_POISON)
#define UFFD_API_RANGE_IOCTLS_BASIC ((__u64)1 << _UFFDIO_WAKE | (__u64)1 << _UFFDIO_COPY | \
	(__u64)1 << _UFFDIO_WRITEPROTECT | (__u64)1 << _UFFDIO_CONTINUE | (__u64)1 << _UFFDIO_POISON)

#define UFFD_EVENT_PAGEFAULT 0x12
#define UFFD_EVENT_FORK      0x13
#define UFFD_EVENT_REMAP     0x14
#define UFFD_EVENT_REMOVE    0x15
#define UFFD_EVENT_UNMAP     0x16

#define UFFD_PAGEFAULT_FLAG_WRITE (1<<0)
#define UFFD_PAGEFAULT_FLAG_WP    (1<<1)
#define UFFD_PAGEFAULT_FLAG_MINOR (1<<2)

#define UFFD_FEATURE_PAGEFAULT_FLAG_WP  (1<<0)
#define UFFD_FEATURE_EVENT_FORK         (1<<1)
#define UFFD_FEATURE_EVENT_REMAP        (1<<2)
#define UFFD_FEATURE_EVENT_REMOVE       (1<<3)
#define UFFD_FEATURE_MISSING_HUGETLBFS  (1<<4)
#define UFFD_FEATURE_MISSING_SHMEM      (1<<5)
#define UFFD_FEATURE_EVENT_UNMAP        (1<<6)
#define UFFD_FEATURE_SIGBUS             (1<<7)
#define UFFD_FEATURE_THREAD_ID          (1<<8)
#define UFFD_FEATURE_MINOR_HUGETLBFS    (1<<9)
#define UFFD_FEATURE_MINOR_SHMEM        (1<<10)
#define UFFD_FEATURE_EXACT_ADDRESS      (1<<11)
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1<<12)
#define UFFD_FEATURE_WP_UNPOPULATED     (1<<13)
#define UFFD_FEATURE_POISON             (1<<14)
#define UFFD_FEATURE_WP_ASYNC           (1<<15)
#define UFFD_FEATURE_MOVE               (1<<16)

#define UFFDIO_REGISTER_MODE_MISSING ((__u64)1<<0)
#define UFFDIO_REGISTER_MODE_WP      ((__u64)1<<1)
#define UFFDIO_REGISTER_MODE_MINOR   ((__u64)1<<2)
#define UFFDIO_COPY_MODE_DONTWAKE    ((__u64)1<<0)
#define UFFDIO_COPY_MODE_WP          ((__u64)1<<1)
#define UFFDIO_ZEROPAGE_MODE_DONTWAKE ((__u64)1<<0)
#define UFFDIO_WRITEPROTECT_MODE_WP       ((__u64)1<<0)
#define UFFDIO_WRITEPROTECT_MODE_DONTWAKE ((__u64)1<<1)
#define UFFDIO_CONTINUE_MODE_DONTWAKE ((__u64)1<<0)
#define UFFDIO_CONTINUE_MODE_WP       ((__u64)1<<1)
#define UFFDIO_POISON_MODE_DONTWAKE   ((__u64)1<<0)
#define UFFDIO_MOVE_MODE_DONTWAKE        ((__u64)1<<0)
#define UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES ((__u64)1<<1)

#define UFFD_USER_MODE_ONLY 1

#define PAGE_IS_WPALLOWED  (1 << 0)
#define PAGE_IS_WRITTEN    (1 << 1)
#define PAGE_IS_FILE       (1 << 2)
#define PAGE_IS_PRESENT    (1 << 3)
#define PAGE_IS_SWAPPED    (1 << 4)
#define PAGE_IS_PFNZERO    (1 << 5)
#define PAGE_IS_HUGE       (1 << 6)
#define PAGE_IS_SOFT_DIRTY (1 << 7)
#define PAGE_IS_GUARD      (1 << 8)
#define PM_SCAN_WP_MATCHING   (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)

#endif /* UFFDCTL_UAPI_H */
