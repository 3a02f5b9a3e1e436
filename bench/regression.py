"""The proxy's CPU per request and added latency, this tree against an older one, in one run.

Absolute figures drift with the machine between sessions (docs/benchmarks.md, "Noise"), so a
regression check compares within one run: the older tree (a ``git worktree``, run with this
venv) and this one are started side by side, each as its Procfile runs it (gunicorn, one uvicorn
worker, embedded usage sink, its own SQLite), every worker pinned to CPU 0 and the fakes and the
client to CPU 1, as in ``bench.run``. A third worker runs this tree with uvicorn-worker's own
class instead of ``costr.server.UvicornWorker`` (what Costr's head limits cost by themselves).

Each of BLOCKS blocks measures:
- concurrency 1: PAIRS rounds, each sending the same request direct to the fake and through each
  worker, in alternating order (``loadgen.run_interleaved``), so drift hits all alike. *Added*
  p50/p99 = the worker's percentile minus direct's; CPU per request = the worker's time on CPU
  (all threads, schedstat; settled, so its usage writer is counted) over the requests;
- concurrency 32: WINDOW s of closed-loop load on every worker at once (they share CPU 0, so
  drift hits them alike, as in ``bench.sink_cost``), the windows started together after every
  worker's warm-up (``loadgen.StartTogether``): requests per second (each worker's share of the
  core) and CPU per request (from that start until the worker is quiet again).

Reported: every block's figures per tree, and the median over blocks of each block's ratio
this tree / the older tree.

    .venv/bin/python -m bench.regression --base /tmp/costr-base [--blocks 4] [--pairs 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import loadgen, procs, run
from bench.loadgen import percentile

ROOT = run.ROOT
WINDOW = 3.0


def log(message: str) -> None:
    print(f"[regression {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _commit(root: Path) -> str:
    done = subprocess.run(  # noqa: S603 - git, our own tree
        ["git", "-C", str(root), "log", "-1", "--format=%h"],  # noqa: S607
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or "?"


async def _block(setups: dict[str, run.Setup], pairs: int) -> dict[str, dict]:
    names = list(setups)
    first = setups[names[0]]
    direct = run.targets(first, run.CHAT_BODY)[0]
    through = {name: run.targets(setup, run.CHAT_BODY)[1] for name, setup in setups.items()}
    for name, target in through.items():
        target.name = name
    # Warm every worker (token cache, upstream pool).
    for target in through.values():
        await loadgen.run_closed_loop(target, 8, requests=200, warmup=5)
    before = {name: procs.settle_cpu(s.worker_pid) for name, s in setups.items()}
    stats, _ = await loadgen.run_interleaved([direct, *through.values()], pairs, warmup=20)
    after = {name: procs.settle_cpu(s.worker_pid) for name, s in setups.items()}
    d = [r.latency for r in stats["direct"].results]
    out: dict[str, dict] = {}
    for name in names:
        t = stats[name].results
        lat = [r.latency for r in t]
        paired = [b - a for a, b in zip(d, lat, strict=True)]
        out[name] = {
            "added_p50": 1000 * (percentile(lat, 50) - percentile(d, 50)),
            "added_p99": 1000 * (percentile(lat, 99) - percentile(d, 99)),
            "paired_p50": 1000 * percentile(paired, 50),
            "paired_p99": 1000 * percentile(paired, 99),
            "cpu_c1": 1000 * (after[name] - before[name]).threads / len(t),
            "errors_c1": stats[name].errors,
        }
    # Concurrency 32: every worker loaded at once, sharing CPU 0, so whatever slows the machine
    # slows them alike (bench.sink_cost: windows taking turns drift by 20 % on this machine).
    # One start for every window, after every warm-up (loadgen.StartTogether): a worker whose
    # window started later would end later, alone on the core, and gain requests per second for
    # it. CPU is counted from that start (a slow warm-up, such as the base's token look-ups, is
    # not the window's) to when the worker is quiet again (its usage writer caught up).
    for s in setups.values():
        procs.settle_cpu(s.worker_pid)
    before: dict[str, procs.CpuSample] = {}

    def sample() -> None:
        before.update({name: procs.cpu_sample(s.worker_pid) for name, s in setups.items()})

    together = loadgen.StartTogether(len(through), on_start=sample)
    windows = await asyncio.gather(
        *(
            loadgen.run_closed_loop(target, 32, duration=WINDOW, warmup=3, together=together)
            for target in through.values()
        )
    )
    after = {name: procs.settle_cpu(s.worker_pid) for name, s in setups.items()}
    for name, window in zip(through, windows, strict=True):
        out[name].update(
            rps_c32=window.rps,
            cpu_c32=1000 * (after[name] - before[name]).threads / len(window.results),
            errors_c32=window.errors,
        )
    return out


FIGURES = (
    ("cpu_c1", "CPU ms/request, c=1"),
    ("cpu_c32", "CPU ms/request, c=32"),
    ("added_p50", "added latency p50 ms, c=1"),
    ("added_p99", "added latency p99 ms, c=1"),
    ("paired_p50", "request-by-request added p50 ms, c=1"),
    ("paired_p99", "request-by-request added p99 ms, c=1"),
    ("rps_c32", "requests/s, c=32"),
)


def measure(base: Path, blocks: int, pairs: int) -> tuple[dict, dict]:
    pin = len(os.sched_getaffinity(0)) >= 2
    variants = {
        "current": (ROOT, run.WORKER_CLASS),
        "base": (base, run.PLAIN_WORKER_CLASS),
        "current, plain uvicorn worker": (ROOT, run.PLAIN_WORKER_CLASS),
    }
    meta = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "loadavg_start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "commits": {name: _commit(root) for name, (root, _) in variants.items()},
        "blocks": blocks,
        "pairs": pairs,
    }
    children = procs.Processes()
    scratch = Path(tempfile.mkdtemp(prefix="costr-regression-"))
    try:
        setups = {}
        for i, (name, (root, worker_class)) in enumerate(variants.items()):
            tmp = scratch / str(i)
            tmp.mkdir()
            log(f"starting {name} from {root} ({worker_class})")
            setups[name] = run.start(
                run.Plan(), tmp, children, pin, root=root, worker_class=worker_class
            )
            run.sanity_check(setups[name])
        results: dict[str, list[dict]] = {name: [] for name in variants}
        for index in range(blocks):
            log(f"block {index + 1}/{blocks}")
            figures = asyncio.run(_block(setups, pairs))
            for name, row in figures.items():
                results[name].append(row)
            children.check_alive()
        meta["loadavg_end"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        return results, meta
    finally:
        children.stop_all()
        shutil.rmtree(scratch, ignore_errors=True)


def ratios(results: dict, name: str = "current", against: str = "base") -> dict[str, float]:
    out = {}
    for key, _ in FIGURES:
        each = [
            a[key] / b[key] if b[key] else float("nan")
            for a, b in zip(results[name], results[against], strict=True)
        ]
        out[key] = statistics.median(each)
    return out


def section(results: dict, meta: dict) -> str:
    commits = meta["commits"]
    lines = [
        f"## Proxy overhead: this tree against an older one ({commits['base']})",
        "",
        f"`python -m bench.regression --base <worktree of {commits['base']}>`, {meta['date']}; "
        f"load average {meta['loadavg_start']} at the start, {meta['loadavg_end']} at the end. "
        f"*current* is {commits['current']} (the working tree) as its Procfile runs it "
        "(`costr.server.UvicornWorker`); *base* is "
        f"{commits['base']} as its Procfile ran it (`uvicorn_worker.UvicornWorker`), from a git "
        "worktree with the same venv; *current, plain uvicorn worker* is this tree under "
        "uvicorn-worker's own class (without Costr's head limits). All three at once, each "
        "with its own fake provider and SQLite, embedded usage writer, every worker pinned to "
        f"CPU 0. {meta['blocks']} blocks; in each, {meta['pairs']:,} rounds at concurrency 1 "
        "(one request direct and one through each worker per round, order alternating) and "
        f"{WINDOW:.0f} s at concurrency 32 on all three at once, started together after every "
        "warm-up (sharing CPU 0, so req/s is each worker's share of one core). CPU is all the "
        "worker's threads (schedstat) over the requests it served.",
        "",
        "| figure | " + " | ".join(results) + " | current / base (median of blocks) |",
        "| --- | " + " | ".join("---:" for _ in results) + " | ---: |",
    ]
    r = ratios(results)
    for key, label in FIGURES:
        cells = []
        for name in results:
            values = [row[key] for row in results[name]]
            digits = 0 if key == "rps_c32" else 3
            cells.append(", ".join(f"{v:,.{digits}f}" for v in values))
        lines.append(f"| {label} (each block) | " + " | ".join(cells) + f" | {r[key]:.2f} |")
    errors = {
        name: sum(row["errors_c1"] + row["errors_c32"] for row in rows)
        for name, rows in results.items()
    }
    lines += [
        "",
        "Errors: " + ", ".join(f"{name} {count}" for name, count in errors.items()) + ".",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="a checkout of the older tree")
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--json", help="also write the raw figures here")
    args = parser.parse_args(argv)
    results, meta = measure(Path(args.base).resolve(), args.blocks, args.pairs)
    if args.json:
        import json

        Path(args.json).write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(section(results, meta))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    sys.exit(main())
