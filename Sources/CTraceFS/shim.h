// libtracefs and libtraceevent (Debian's libtracefs-dev, libtraceevent-dev): tracefs instances, event enabling and
// filters, per-CPU raw buffers, and the event formats that say where each field lies.
#include <tracefs.h>
#include <event-parse.h>
