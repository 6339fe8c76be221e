#include "CTraceFS.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

static struct ctracefs_api api;
static const struct ctracefs_api *loaded;
static char load_error[512];
static pthread_once_t once = PTHREAD_ONCE_INIT;

static int resolve(void *lib, const char *name, void **slot) {
    *slot = dlsym(lib, name);
    if (*slot) return 0;
    snprintf(load_error, sizeof load_error, "%s", dlerror());
    return -1;
}

/// Resolves `count` functions of `lib` into `slots`; where one is missing, none (all NULL).
static void optional_group(void *lib, void **slots[], const char *names[], size_t count) {
    int all = 1;
    for (size_t i = 0; i < count; i++) {
        *slots[i] = dlsym(lib, names[i]);
        if (!*slots[i]) all = 0;
    }
    if (!all) for (size_t i = 0; i < count; i++) *slots[i] = NULL;
}

static void load(void) {
    // libtracefs needs libtraceevent; load it first, global, as the dynamic linker would.
    void *tep = dlopen("libtraceevent.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!tep) { snprintf(load_error, sizeof load_error, "%s", dlerror()); return; }
    void *fs = dlopen("libtracefs.so.1", RTLD_NOW | RTLD_GLOBAL);
    if (!fs) { snprintf(load_error, sizeof load_error, "%s", dlerror()); return; }
#define FS(name) if (resolve(fs, #name, (void **)&api.name)) return
#define TEP(name) if (resolve(tep, #name, (void **)&api.name)) return
    FS(tracefs_tracing_dir_is_mounted); FS(tracefs_instances); FS(tracefs_list_free); FS(tracefs_instance_alloc);
    FS(tracefs_instance_create); FS(tracefs_instance_destroy); FS(tracefs_instance_free);
    FS(tracefs_instance_set_buffer_size); FS(tracefs_instance_file_write); FS(tracefs_event_enable);
    FS(tracefs_event_file_write); FS(tracefs_trace_on); FS(tracefs_iterate_raw_events);
    TEP(tep_find_event_by_name); TEP(tep_free); TEP(tep_alloc); TEP(tep_parse_header_page); TEP(tep_parse_event);
    // Optional, each group all or none. The per-CPU readers (else `tracefs_iterate_raw_events`), and kbuffer, which
    // vmscope no longer reads pages with (`RingBufferPage`) and keeps for its tests to hold that walk against.
    optional_group(fs, (void **[]){(void **)&api.tracefs_cpu_open, (void **)&api.tracefs_cpu_close,
                                   (void **)&api.tracefs_cpu_read_size, (void **)&api.tracefs_cpu_read},
                   (const char *[]){"tracefs_cpu_open", "tracefs_cpu_close", "tracefs_cpu_read_size", "tracefs_cpu_read"}, 4);
    optional_group(tep, (void **[]){(void **)&api.kbuffer_alloc, (void **)&api.kbuffer_free,
                                    (void **)&api.kbuffer_load_subbuffer, (void **)&api.kbuffer_read_event,
                                    (void **)&api.kbuffer_next_event, (void **)&api.kbuffer_event_size,
                                    (void **)&api.kbuffer_missed_events},
                   (const char *[]){"kbuffer_alloc", "kbuffer_free", "kbuffer_load_subbuffer", "kbuffer_read_event",
                                    "kbuffer_next_event", "kbuffer_event_size", "kbuffer_missed_events"}, 7);
    optional_group(fs, (void **[]){(void **)&api.tracefs_set_tracing_dir}, (const char *[]){"tracefs_set_tracing_dir"}, 1);
#undef FS
#undef TEP
    loaded = &api;
}

const struct ctracefs_api *ctracefs_load(char *error, size_t error_size) {
    pthread_once(&once, load);
    if (!loaded && error && error_size) snprintf(error, error_size, "%s", load_error);
    return loaded;
}
