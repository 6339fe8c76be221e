// zlib for recordings (gzip streams); the header is Debian's zlib1g-dev.
#include <zlib.h>
