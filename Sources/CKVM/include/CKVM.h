// The KVM half of vmscope's C shim: only what Swift cannot import on its own.
//
// - `ioctl` is variadic, so Swift cannot call it: two fixed-signature wrappers.
// - The system headers here are Linux 6.1; the structs below are newer UAPI
//   (Linux 6.8+), written by hand from Documentation/virt/kvm/api.rst. Their
//   sizes are asserted here at compile time and again in KVMTests.
// - The `kvm_run` exit payloads live in an anonymous union that Swift imports
//   awkwardly; the overlays below name them, with offsets asserted against the
//   6.1 header's `struct kvm_run`.
// - <malloc.h> is not in Swift's Glibc module: the VMM's `mallopt`, so that
//   a client's large output buffer goes back to the system when freed, and
//   the tracers', so that a read's arrays stay in the heap for the next read.
#ifndef VMSCOPE_CKVM_H
#define VMSCOPE_CKVM_H

#include <linux/kvm.h>
#include <malloc.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>

static inline int ckvm_ioctl_ptr(int fd, unsigned long request, void *arg) {
    return ioctl(fd, request, arg);
}

/// prctl(PR_SET_PDEATHSIG, sig), variadic like ioctl: the signal this process gets when its parent dies (a demo's
/// VMM ends with the demo, even a SIGKILLed one).
static inline int ckvm_parent_death_signal(int sig) {
    return prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0UL, 0UL, 0UL);
}

static inline int ckvm_ioctl_val(int fd, unsigned long request, unsigned long arg) {
    return ioctl(fd, request, arg);
}

/// glibc's `strerrorname_np` needs _GNU_SOURCE, which Swift's Glibc import does not set.
const char *ckvm_errno_name(int err);
/// memfd_create(2) and fallocate(2) are behind _GNU_SOURCE too.
int ckvm_memfd_create(const char *name, unsigned int flags);
int ckvm_fallocate(int fd, int mode, int64_t offset, int64_t len);
/// pthread_setname_np(3) on the calling thread (15 bytes at most), also _GNU_SOURCE.
int ckvm_set_thread_name(const char *name);
/// pidfd_open(2) of `pid` (close-on-exec), or -1 with errno.
int ckvm_pidfd_open(int pid);
/// The file descriptor `fd` of the process `pidfd` names, duplicated into this one (pidfd_getfd(2), Linux 5.6; needs
/// ptrace rights over it, e.g. root); -1 with errno on failure. syscall(2) is variadic, so these live here.
int ckvm_pidfd_getfd(int pidfd, int fd);
#define CKVM_FALLOC_FL_KEEP_SIZE 0x01
#define CKVM_FALLOC_FL_PUNCH_HOLE 0x02
#define CKVM_MFD_CLOEXEC 0x0001U

/// struct kvm_userspace_memory_region2 (KVM_SET_USER_MEMORY_REGION2, Linux 6.8).
struct ckvm_userspace_memory_region2 {
    uint32_t slot;
    uint32_t flags;
    uint64_t guest_phys_addr;
    uint64_t memory_size;
    uint64_t userspace_addr;
    uint64_t guest_memfd_offset;
    uint32_t guest_memfd;
    uint32_t pad1;
    uint64_t pad2[14];
};

/// struct kvm_memory_attributes (KVM_SET_MEMORY_ATTRIBUTES, Linux 6.8).
struct ckvm_memory_attributes {
    uint64_t address;
    uint64_t size;
    uint64_t attributes;
    uint64_t flags;
};

/// struct kvm_create_guest_memfd (KVM_CREATE_GUEST_MEMFD, Linux 6.8).
struct ckvm_create_guest_memfd {
    uint64_t size;
    uint64_t flags;
    uint64_t reserved[6];
};

/// kvm_run.memory_fault (KVM_EXIT_MEMORY_FAULT, Linux 6.8), at offset 32 of kvm_run.
struct ckvm_run_memory_fault {
    uint64_t flags;
    uint64_t gpa;
    uint64_t size;
};

/// kvm_run.io (KVM_EXIT_IO); the data lives at kvm_run + data_offset.
struct ckvm_run_io {
    uint8_t direction;
    uint8_t size;
    uint16_t port;
    uint32_t count;
    uint64_t data_offset;
};

/// kvm_run.mmio (KVM_EXIT_MMIO).
struct ckvm_run_mmio {
    uint64_t phys_addr;
    uint8_t data[8];
    uint32_t len;
    uint8_t is_write;
};

/// kvm_run.hypercall (KVM_EXIT_HYPERCALL); `flags` shares its place with the old `longmode`.
struct ckvm_run_hypercall {
    uint64_t nr;
    uint64_t args[6];
    uint64_t ret;
    uint64_t flags;
};

/// kvm_run.internal (KVM_EXIT_INTERNAL_ERROR).
struct ckvm_run_internal {
    uint32_t suberror;
    uint32_t ndata;
    uint64_t data[16];
};

/// kvm_run.system_event (KVM_EXIT_SYSTEM_EVENT).
struct ckvm_run_system_event {
    uint32_t type;
    uint32_t ndata;
    uint64_t data[16];
};

/// The calling thread's kernel thread id (gettid(2); glibc declares it only under _GNU_SOURCE).
int ckvm_gettid(void);

/// Offset of the exit union inside struct kvm_run.
#define CKVM_RUN_EXIT_UNION_OFFSET 32

_Static_assert(sizeof(struct ckvm_userspace_memory_region2) == 160, "kvm_userspace_memory_region2 is 160 bytes");
_Static_assert(offsetof(struct ckvm_userspace_memory_region2, guest_memfd) == 40, "guest_memfd @40");
_Static_assert(sizeof(struct ckvm_memory_attributes) == 32, "kvm_memory_attributes is 32 bytes");
_Static_assert(sizeof(struct ckvm_create_guest_memfd) == 64, "kvm_create_guest_memfd is 64 bytes");
_Static_assert(offsetof(struct kvm_run, io) == CKVM_RUN_EXIT_UNION_OFFSET, "exit union @32");
_Static_assert(offsetof(struct kvm_run, immediate_exit) == 1, "immediate_exit @1");
_Static_assert(offsetof(struct kvm_run, exit_reason) == 8, "exit_reason @8");
_Static_assert(sizeof(struct ckvm_run_io) == sizeof(((struct kvm_run *)0)->io), "io overlay");
_Static_assert(offsetof(struct ckvm_run_mmio, is_write) == offsetof(struct kvm_run, mmio.is_write) - CKVM_RUN_EXIT_UNION_OFFSET, "mmio overlay");
_Static_assert(offsetof(struct ckvm_run_hypercall, ret) == 88 - CKVM_RUN_EXIT_UNION_OFFSET, "hypercall.ret @88 of kvm_run");
_Static_assert(offsetof(struct ckvm_run_internal, data) == offsetof(struct kvm_run, internal.data) - CKVM_RUN_EXIT_UNION_OFFSET, "internal overlay");

#endif
