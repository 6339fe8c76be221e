// Functions glibc declares only under _GNU_SOURCE, which Swift's Glibc import does not define.
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <errno.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "CKVM.h"

const char *ckvm_errno_name(int err) {
    const char *name = strerrorname_np(err);
    return name ? name : "E?";
}

int ckvm_memfd_create(const char *name, unsigned int flags) {
    return memfd_create(name, flags);
}

int ckvm_fallocate(int fd, int mode, int64_t offset, int64_t len) {
    return fallocate(fd, mode, offset, len);
}

int ckvm_gettid(void) { return (int)gettid(); }

int ckvm_set_thread_name(const char *name) { return pthread_setname_np(pthread_self(), name); }

int ckvm_pidfd_open(int pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

int ckvm_pidfd_getfd(int pidfd, int fd) { return (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0); }
