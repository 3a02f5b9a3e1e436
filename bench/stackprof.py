"""gunicorn config (``--config python:bench.stackprof``, or the file's path for another tree): a
sampling profiler in the worker, for attributing CPU between two trees. Never used outside the
benchmark.

With ``BENCH_STACKPROF_DIR`` set, a thread samples the event loop thread's Python stack every
``BENCH_STACKPROF_INTERVAL`` seconds (default 0.001) and every 2 s writes
``<pid>.json``: per function (``file:function``), the samples it was on the stack (inclusive)
and at the top (self). The sampler needs the GIL, so a sample falls where the loop thread lets
it go (a bias towards I/O and bytecode boundaries, alike for both trees); time the loop thread
spends in C without Python frames above shows as its caller.
"""

import os


def post_worker_init(worker):
    directory = os.environ.get("BENCH_STACKPROF_DIR")
    if not directory:
        return
    import collections
    import json
    import sys
    import threading
    import time
    from pathlib import Path

    interval = float(os.environ.get("BENCH_STACKPROF_INTERVAL", "0.001"))
    main = threading.main_thread().ident
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    out = Path(directory) / f"{os.getpid()}.json"

    def name(frame) -> str:
        code = frame.f_code
        path = code.co_filename
        for marker in ("site-packages/", "/apps/", "/costr/", "/lib/python3"):
            if marker in path:
                path = path[path.index(marker) :]
                break
        return f"{path}:{code.co_name}"

    def sample() -> None:
        samples = 0
        last = time.monotonic()
        while True:
            time.sleep(interval)
            frame = sys._current_frames().get(main)
            if frame is None:
                continue
            samples += 1
            own[name(frame)] += 1
            seen = set()
            while frame is not None:
                seen.add(name(frame))
                frame = frame.f_back
            inclusive.update(seen)
            if time.monotonic() - last > 2:
                last = time.monotonic()
                out.write_text(
                    json.dumps(
                        {"samples": samples, "inclusive": inclusive, "self": own}, default=dict
                    )
                )

    threading.Thread(target=sample, daemon=True, name="bench-stackprof").start()
