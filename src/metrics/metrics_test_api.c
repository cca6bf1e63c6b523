/* Test-only entry points for the metrics (libmoonring_ffi.so only): make the calling thread a
 * worker for moonring.metrics, as worker_main does, so microbenchmarks and specs reach the C
 * slots. */
#include "metrics/metrics.h"

MR_EXPORT int mr_metrics_test_worker(int id)
{
    return mr_metrics_worker(id) ? 0 : MR_FFI_NOMEM;
}
