"""gunicorn config for `bench.memory --trace`: the worker runs tracemalloc, and SIGUSR1 makes it
write what it holds. Never used outside the benchmark.

On SIGUSR1 the worker writes, in ``BENCH_TRACEMALLOC_DIR``, ``<n>.snapshot`` (a tracemalloc
snapshot, ``BENCH_TRACEMALLOC_FRAMES`` frames deep, 6 by default: deeper slows the worker to a
crawl; 0: no tracemalloc, only the counts below, at full speed), ``<n>.types.json`` (live
objects the collector tracks, counted by type name, as objgraph's ``most_common_types`` would,
and ``sys.getallocatedblocks()``) and then ``<n>.done``. The handler runs on
the event loop's thread, so the worker stops serving while it writes: a diagnosis, not a
measurement. (uvicorn-worker's own SIGUSR1, reopening log files, is not needed here.)
"""

import os


def post_worker_init(worker):
    directory = os.environ.get("BENCH_TRACEMALLOC_DIR")
    if not directory:
        return
    import collections
    import gc
    import itertools
    import json
    import signal
    import sys
    import tracemalloc
    from pathlib import Path

    frames = int(os.environ.get("BENCH_TRACEMALLOC_FRAMES", "6"))
    if frames:
        tracemalloc.start(frames)
    counter = itertools.count(1)

    def dump(signum, frame):
        n = next(counter)
        base = Path(directory) / f"{os.getpid()}-{n:03d}"
        if frames:
            tracemalloc.take_snapshot().dump(str(base.with_suffix(".snapshot")))
        types = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
        types["(allocated blocks)"] = sys.getallocatedblocks()
        base.with_suffix(".types.json").write_text(json.dumps(dict(types)))
        base.with_suffix(".done").touch()

    signal.signal(signal.SIGUSR1, dump)
