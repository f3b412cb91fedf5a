#include <rte_errno.h>

int fulcrum_rte_errno(void) { return rte_errno; }
