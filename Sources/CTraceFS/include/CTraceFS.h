// libtracefs and libtraceevent, loaded at run time (dlopen), so that building vmscope needs neither -dev package
// and a machine without the libraries runs everything but tracing. Debian's runtime packages: libtracefs1 and
// libtraceevent1 (sonames libtracefs.so.1 and libtraceevent.so.1).
//
// Declared here, since their headers are not needed to build: the functions vmscope calls, and the leading
// members of the three structs it reads. Those members are libtraceevent's ABI for soname 1 (event-parse.h:
// struct tep_record, tep_event, tep_format, tep_format_field, unchanged from 1.0 to 1.8); sizes and offsets are
// asserted in a test against the headers where they are installed.
#ifndef VMSCOPE_CTRACEFS_H
#define VMSCOPE_CTRACEFS_H

#include <stdbool.h>
#include <stddef.h>

struct tracefs_instance;
struct tep_handle;
struct tracefs_cpu;
struct kbuffer;

/// struct tep_format_field, up to `size`.
struct ctracefs_field {
    struct ctracefs_field *next;
    void *event;
    char *type;
    char *name;
    char *alias;
    int offset;
    int size;
};

/// struct tep_event, up to `format.fields`.
struct ctracefs_event {
    struct tep_handle *tep;
    char *name;
    int id;
    int flags;
    int nr_common;
    int nr_fields;
    struct ctracefs_field *common_fields;
    struct ctracefs_field *fields;
};

/// struct tep_record, up to `data`.
struct ctracefs_record {
    unsigned long long ts;
    unsigned long long offset;
    long long missed_events;
    int record_size;
    int size;
    void *data;
};

typedef int (*ctracefs_raw_callback)(struct ctracefs_event *event, struct ctracefs_record *record, int cpu, void *context);

/// kbuffer.h's `KBUFFER_LSIZE_8` and `KBUFFER_ENDIAN_LITTLE` (the kernel's longs in x86_64's ring buffer pages).
#define CTRACEFS_KBUFFER_LSIZE_8 1
#define CTRACEFS_KBUFFER_ENDIAN_LITTLE 1

/// The functions vmscope calls, resolved by `ctracefs_load`.
struct ctracefs_api {
    int (*tracefs_tracing_dir_is_mounted)(bool mount, const char **path);
    char **(*tracefs_instances)(const char *regex);
    void (*tracefs_list_free)(char **list);
    struct tracefs_instance *(*tracefs_instance_alloc)(const char *tracing_dir, const char *name);
    struct tracefs_instance *(*tracefs_instance_create)(const char *name);
    int (*tracefs_instance_destroy)(struct tracefs_instance *instance);
    void (*tracefs_instance_free)(struct tracefs_instance *instance);
    int (*tracefs_instance_set_buffer_size)(struct tracefs_instance *instance, size_t size, int cpu);
    int (*tracefs_instance_file_write)(struct tracefs_instance *instance, const char *file, const char *str);
    int (*tracefs_event_enable)(struct tracefs_instance *instance, const char *system, const char *event);
    int (*tracefs_event_file_write)(struct tracefs_instance *instance, const char *system, const char *event,
                                    const char *file, const char *str);
    int (*tracefs_trace_on)(struct tracefs_instance *instance);
    int (*tracefs_iterate_raw_events)(struct tep_handle *tep, struct tracefs_instance *instance, void *cpus,
                                      int cpu_size, ctracefs_raw_callback callback, void *context);
    struct ctracefs_event *(*tep_find_event_by_name)(struct tep_handle *tep, const char *sys, const char *name);
    void (*tep_free)(struct tep_handle *tep);
    // A handle holding only the events vmscope decodes (`tracefs_local_events` parses every event's format and reads
    // /proc/kallsyms and the printk formats besides: most of `vmscope top --once`'s CPU).
    struct tep_handle *(*tep_alloc)(void);
    int (*tep_parse_header_page)(struct tep_handle *tep, char *buf, unsigned long size, int long_size);
    int (*tep_parse_event)(struct tep_handle *tep, const char *buf, unsigned long size, const char *sys);

    // Per-CPU readers that stay open between reads (libtracefs 1.6), NULL where the library is older:
    // `tracefs_iterate_raw_events` opens every CPU's files again on each call, which cost the lab's guest a quarter of
    // a CPU at ten reads a second with hardly an event.
    struct tracefs_cpu *(*tracefs_cpu_open)(struct tracefs_instance *instance, int cpu, bool nonblock);
    void (*tracefs_cpu_close)(struct tracefs_cpu *tcpu);
    int (*tracefs_cpu_read_size)(struct tracefs_cpu *tcpu);
    int (*tracefs_cpu_read)(struct tracefs_cpu *tcpu, void *buffer, bool nonblock);
    // libtraceevent's kbuffer, NULL where it lacks one of these: vmscope walks the pages itself (`RingBufferPage`);
    // its tests hold that walk against kbuffer. `size` and `endian` are kbuffer.h's enum values (below).
    struct kbuffer *(*kbuffer_alloc)(int size, int endian);
    void (*kbuffer_free)(struct kbuffer *kbuf);
    int (*kbuffer_load_subbuffer)(struct kbuffer *kbuf, void *subbuffer);
    void *(*kbuffer_read_event)(struct kbuffer *kbuf, unsigned long long *ts);
    void *(*kbuffer_next_event)(struct kbuffer *kbuf, unsigned long long *ts);
    int (*kbuffer_event_size)(struct kbuffer *kbuf);
    int (*kbuffer_missed_events)(struct kbuffer *kbuf);
    // Points libtracefs at one tracefs mount (libtracefs 1.3), NULL where the library is older: where the first
    // tracefs in /proc/mounts is read-only (debugfs' own, mounted ro), vmscope mounts /sys/kernel/tracing and uses it.
    int (*tracefs_set_tracing_dir)(char *tracing_dir);
};

/// Loads both libraries (once; later calls return the first answer). NULL where either library or one of the
/// functions is missing: then `error` holds dlerror's words.
const struct ctracefs_api *ctracefs_load(char *error, size_t error_size);

#endif
