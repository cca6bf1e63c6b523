-- wrk script for bench/run: defines only done(), so wrk keeps its fast static-request path,
-- and prints one parseable line at the end. Latencies are in microseconds.
-- errors.status counts responses with a status >= 400 (wrk's own definition).
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d bytes=%d connect=%d read=%d write=%d timeout=%d status=%d"
    .. " p50=%d p99=%d p999=%d mean=%.1f max=%d\n",
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.timeout,
    e.status, latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max))
end
