"""gunicorn config for `bench.run --usage-sink off`: the worker's usage sink replaced by a no-op,
so the benchmark can compare the proxy's throughput with and without metering (issue #5: the
sink must cost under 5 %). Never used outside the benchmark."""


def post_worker_init(worker):
    from apps.usage.metering import sink

    sink.emit = lambda record: None
    sink.emit_refusal = lambda org_slug, status, code: None
