"""Turns the benchmark's figures into docs/benchmarks.md."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

# (label, limit, unit)
TARGETS = {
    "added_p50": ("Added latency p50, non-streamed, concurrency 1", 1.0, "ms"),
    "added_p99": ("Added latency p99, non-streamed, concurrency 1", 3.0, "ms"),
    "cpu_request": ("CPU per proxied non-streamed request (worst of c=1/8/32)", 1.0, "ms"),
    "rps": ("One worker, non-streamed requests/s (concurrency 32)", 1000.0, "req/s"),
    "ttfb_added": ("Streamed time to first chunk added, p50, concurrency 1", 1.0, "ms"),
    "cpu_chunk": ("CPU per forwarded chunk (worst variant)", 0.05, "ms"),
    "memory": ("Peak memory of the worker (VmHWM) after all load", 150.0, "MB"),
    "stalls": (
        "No Nagle/delayed-ACK stall: TCP_NODELAY on every client and upstream socket of the "
        "worker, and no gap of 40 ms or more in c=1 streams",
        40.0,
        "ms",
    ),
}


def _f(value, digits=2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def evaluate(r: dict) -> dict[str, tuple[float, bool]]:
    plain1 = r["plain"][1]
    added_p50 = plain1["costr"]["p50"] - plain1["direct"]["p50"]
    added_p99 = plain1["costr"]["p99"] - plain1["direct"]["p99"]
    cpu = max(r["cpu"][f"plain_c{c}"]["threads_ms"] for c in r["plain"])
    rps = r["plain"][max(r["plain"])]["costr"]["rps"]
    s1 = r["stream"][1]
    ttfb = s1["costr"]["ttfc_p50"] - s1["direct"]["ttfc_p50"]
    chunk = max(v["threads_ms"] for k, v in r["cpu"].items() if k.startswith("chunk_"))
    memory = r["memory_kib"]["VmHWM"] / 1024
    stall = s1["costr"]["gap_max"]
    values = {
        "added_p50": added_p50,
        "added_p99": added_p99,
        "cpu_request": cpu,
        "rps": rps,
        "ttfb_added": ttfb,
        "cpu_chunk": chunk,
        "memory": memory,
        "stalls": stall,
    }
    out = {}
    for key, value in values.items():
        limit = TARGETS[key][1]
        ok = value >= limit if key == "rps" else value <= limit
        if key == "stalls":
            ok = value < limit and nodelay_ok(r) if r.get("nodelay", {}).get("costr") else None
        out[key] = (value, ok)
    return out


def security_summary(r: dict, meta: dict) -> dict:
    """What the security page quotes (costr/trust.py reads it from docs/benchmarks.json)."""
    figures = evaluate(r)
    m = meta["machine"]
    return {
        "date": meta["date"],
        "machine": f"{m['cpu']}, {m['cores']} cores, Linux {m['kernel']}",
        "added_p50_ms": round(figures["added_p50"][0], 3),
        "added_p99_ms": round(figures["added_p99"][0], 3),
        "usage_sink": meta["usage_sink"],
    }


def _verdict(ok: bool | None) -> str:
    return "not checked" if ok is None else "PASS" if ok else "**MISS**"


def nodelay_ok(r: dict) -> bool:
    seen = r.get("nodelay", {}).get("costr", {})
    return all(seen.get(kind) and all(seen[kind]) for kind in ("accepted", "upstream"))


def nodelay_text(r: dict) -> str:
    parts = []
    for who, found in r.get("nodelay", {}).items():
        for kind, flags in found.items():
            parts.append(f"{who} {kind}: {sum(flags)}/{len(flags)}")
    return ", ".join(parts) or "not checked"


def summary(r: dict) -> str:
    lines = ["", "target                                                        measured   limit"]
    for key, (value, ok) in evaluate(r).items():
        label, limit, unit = TARGETS[key]
        verdict = _verdict(ok).strip("*")
        lines.append(f"{label:<60} {_f(value, 3):>9} {unit:<5} {limit:>g}  {verdict}")
    return "\n".join(lines)


def render(r: dict, meta: dict) -> str:
    plan = meta["plan"]
    m, v = meta["machine"], meta["versions"]
    pinned = (
        "Costr's gunicorn master and worker pinned to CPU 0; the fake provider and the load "
        "generator pinned to CPU 1 (`sched_setaffinity`)"
        if meta["pinned"]
        else "not pinned (the scheduler places every process)"
    )
    out: list[str] = []
    w = out.append
    w("# Benchmarks\n")
    w(
        "Written by `make bench` (`bench/run.py`); do not edit by hand — run it again. "
        "Every figure below comes from one run on one machine, with the fake provider and Costr "
        "measured side by side by the same client.\n"
    )
    if meta.get("quick"):
        w("**This was a `--quick` smoke run: phases are short and the figures are rough.**\n")
    w("## Run\n")
    w(f"- Date: {meta['date']}; the run took {meta['duration_s']:.0f} s.")
    w(
        f"- Machine: {m['cpu']} ({m['mhz']} MHz), {m['cores']} cores, Linux {m['kernel']}; "
        f"load average {' '.join(m['loadavg'])} at the start, "
        f"{' '.join(meta['loadavg_end'])} at the end (other work on the machine shows up here)."
    )
    w(
        "- Software: Python {python}, Django {django}, uvicorn {uvicorn}, gunicorn {gunicorn}, "
        "uvicorn-worker {uw}, uvloop {uvloop}, httptools {httptools} (also under Costr's "
        "upstream client, `costr/net/http1.py`).".format(**v, uw=v["uvicorn-worker"])
    )
    w(f"- Placement: {pinned}.")
    w("")
    w("## Method\n")
    server = (
        "as in the Procfile: `gunicorn costr.asgi:application --worker-class "
        "costr.server.UvicornWorker`, with **one** worker (uvloop + httptools, Costr's limits on "
        "request heads)"
        if meta.get("server", "gunicorn") == "gunicorn"
        else "under granian (`--server granian`, for comparison only), one worker, uvloop"
    )
    sink = (
        "Usage events go through the embedded sink: an in-process queue and a thread that "
        "stores them in SQLite (that thread's CPU is counted below)."
        if meta.get("usage_sink", "embedded") == "embedded"
        else "Usage events go to a Redis stream (`--usage-redis`), the production layout: the "
        "worker's sink thread only appends each batch to the stream (its CPU is counted below); "
        "no writer runs in the worker, and none is running during the benchmark."
    )
    w(
        f"- **Costr** runs {server}, "
        "`costr.settings.local` with `DEBUG=0`, a throwaway `COSTR_VAR_DIR` (SQLite, generated "
        "keyring), and `COSTR_UPSTREAM_*` pointing at the fake. The org, the three provider keys "
        "and the proxy token are made with the `createorg`, `addproviderkey` and `createtoken` "
        f"commands. {sink}"
    )
    w(
        "- **Fake provider**: `python -m tests.fakes.provider` (uvicorn, httptools, uvloop, one "
        "process, recording off), with the same keys."
    )
    w(
        "- **Client**: `bench/loadgen.py`, a closed-loop HTTP/1.1 keep-alive client written for "
        "the benchmark (an `asyncio.Protocol` on uvloop, llhttp via httptools, `TCP_NODELAY`), "
        "one connection per concurrent request. It costs a few tens of µs per request; its own "
        "CPU use is shown with each run. The request is the same bytes direct and through Costr "
        "except for the path (`/v1/chat/completions` vs `/p/bench/openai/v1/chat/completions`), "
        "the credential, and `X-Costr-Customer` (which Costr removes). Before measuring, the run "
        "checks that a non-streamed and a streamed response through Costr are byte-identical to "
        "the direct ones."
    )
    w(
        "- **Non-streamed**: an OpenAI chat completion (the fake's default answer, a ~600-byte "
        f"JSON body). Concurrency 1 alternates direct "
        f"and Costr request by request ({plan.c1_pairs:,} each), so drift hits both alike; "
        f"concurrency 8 and 32 run {plan.duration:g} s each, direct then Costr. "
        "*Added* = Costr's percentile minus direct's percentile."
    )
    w(
        f"- **Streamed**: `stream: true` with `stream_options.include_usage`, {plan.stream_chunks} "
        f"text chunks, the fake sleeping {plan.stream_delay_ms} ms between SSE events (about "
        f"{plan.stream_chunks + 4} events per stream). *Time to first chunk* runs from the "
        "request's last byte written to the first body byte read; a *gap* is the time between "
        "two reads that carried body bytes. Concurrency 1 alternates "
        f"({plan.stream_c1_pairs} each); 8 and 32 run {plan.stream_duration:g} s each."
    )
    w(
        "- **CPU** is read from `/proc/<worker>/task/*/schedstat` (time on CPU, ns) before and "
        "after a phase, once the worker has gone quiet (so the usage writer's batch is counted), "
        "divided by the requests Costr served in the phase. *Event loop* is the main thread "
        "(the request path); *all threads* adds the usage writer and the thread that loads "
        "tokens on a cache miss; *process* is utime+stime from `/proc/<pid>/stat` (10 ms "
        "ticks, includes exited threads) as a cross-check."
    )
    w(
        f"- **CPU per chunk**: {plan.long_streams} streams at concurrency {plan.long_concurrency} "
        f"with {plan.long_chunks} extra chunks each ({plan.long_delay_ms} ms apart, so they "
        "arrive one per read) against the same number of streams with none; the CPU difference "
        "divided by the extra chunks is the cost of forwarding one chunk. *Pass-through*: the "
        "client asked for usage, bytes pass unchanged. *Usage injected*: the client did not, so "
        "Costr adds `include_usage` and filters the usage chunk out of the stream."
    )
    w(
        "- **Memory**: the worker's `VmHWM` (peak resident set) from `/proc/<pid>/status` after "
        "every phase."
    )
    w("")

    w("## Targets\n")
    w("| target | limit | measured | |")
    w("| --- | ---: | ---: | --- |")
    for key, (value, ok) in evaluate(r).items():
        label, limit, unit = TARGETS[key]
        sign = "≥" if key == "rps" else "≤"
        shown = f"{_f(value, 3)} {unit}"
        if key == "stalls":
            sign = "<"
            shown = f"largest gap {shown}; TCP_NODELAY set on {nodelay_text(r)} sockets"
        w(f"| {label} | {sign} {limit:g} {unit} | {shown} | {_verdict(ok)} |")
    w("")

    w("## Non-streamed chat completions\n")
    w(
        "| concurrency | direct p50 ms | direct p99 ms | direct req/s | Costr p50 ms | "
        "Costr p99 ms | Costr req/s | added p50 ms | added p99 ms | client CPU % (Costr run) |"
    )
    w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c, row in r["plain"].items():
        d, t = row["direct"], row["costr"]
        w(
            f"| {c} | {_f(d['p50'], 3)} | {_f(d['p99'], 3)} | {_f(d['rps'], 0)} | "
            f"{_f(t['p50'], 3)} | {_f(t['p99'], 3)} | {_f(t['rps'], 0)} | "
            f"{_f(t['p50'] - d['p50'], 3)} | {_f(t['p99'] - d['p99'], 3)} | "
            f"{_f(t['client_cpu_pct'], 0)} |"
        )
    p = r["paired"]
    w("")
    w(
        f"Concurrency 1, request by request (Costr minus the direct request next to it): p50 "
        f"{_f(p['p50'], 3)} ms, p99 {_f(p['p99'], 3)} ms. Costr's own `X-Costr-Overhead-Ms` "
        f"header: p50 {_f(p['overhead_header_p50'], 3)} ms, p99 "
        f"{_f(p['overhead_header_p99'], 3)} ms. Errors: "
        + ", ".join(
            f"c={c} {row['direct']['errors']}/{row['costr']['errors']}"
            for c, row in r["plain"].items()
        )
        + " (direct/Costr)."
    )
    w("")

    w("## Streamed chat completions\n")
    w(
        "| concurrency | direct TTFC p50 / p99 ms | Costr TTFC p50 / p99 ms | added TTFC p50 / p99 "
        "ms | direct gap p50 / p99 / max ms | Costr gap p50 / p99 / max ms | direct total p50 ms "
        "| Costr total p50 / p99 ms | Costr streams/s |"
    )
    w("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for c, row in r["stream"].items():
        d, t = row["direct"], row["costr"]
        w(
            f"| {c} | {_f(d['ttfc_p50'], 3)} / {_f(d['ttfc_p99'], 3)} | "
            f"{_f(t['ttfc_p50'], 3)} / {_f(t['ttfc_p99'], 3)} | "
            f"{_f(t['ttfc_p50'] - d['ttfc_p50'], 3)} / {_f(t['ttfc_p99'] - d['ttfc_p99'], 3)} | "
            f"{_f(d['gap_p50'], 2)} / {_f(d['gap_p99'], 2)} / {_f(d['gap_max'], 2)} | "
            f"{_f(t['gap_p50'], 2)} / {_f(t['gap_p99'], 2)} / {_f(t['gap_max'], 2)} | "
            f"{_f(d['total_p50'], 1)} | {_f(t['total_p50'], 1)} / {_f(t['total_p99'], 1)} | "
            f"{_f(t['rps'], 0)} |"
        )
    sp = r["stream_paired_ttfc"]
    w("")
    w(
        f"Concurrency 1, stream by stream: added time to first chunk p50 {_f(sp['p50'], 3)} ms, "
        f"p99 {_f(sp['p99'], 3)} ms. Reads per stream (direct/Costr, c=1): "
        f"{_f(r['stream'][1]['direct']['reads_per_stream'], 1)}/"
        f"{_f(r['stream'][1]['costr']['reads_per_stream'], 1)}."
    )
    w("")

    w("## CPU\n")
    w("| phase | requests | event loop ms/req | all threads ms/req | process ms/req |")
    w("| --- | ---: | ---: | ---: | ---: |")
    for key, row in r["cpu"].items():
        if key.startswith("chunk_"):
            continue
        kind, _, c = key.rpartition("_c")
        label = {
            "plain": "Costr worker, non-streamed",
            "stream": "Costr worker, streamed",
            "fake": "fake provider, per request it served (for scale)",
        }[kind]
        w(
            f"| {label}, c={c} | {row['count']:,} | {_f(row['loop_ms'], 3)} | "
            f"{_f(row['threads_ms'], 3)} | {_f(row['process_ms'], 3)} |"
        )
    w("")
    w(
        "| CPU per forwarded chunk | streams x extra chunks | reads per long stream | event "
        "loop ms/chunk | all threads ms/chunk | process ms/chunk | CPU per short stream ms |"
    )
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key, row in r["cpu"].items():
        if not key.startswith("chunk_"):
            continue
        w(
            f"| {key.removeprefix('chunk_')} | {row['streams']} x {row['chunks']} | "
            f"{_f(row['reads_per_long_stream'], 0)} | {_f(row['loop_ms'], 4)} | "
            f"{_f(row['threads_ms'], 4)} | {_f(row['process_ms'], 4)} | "
            f"{_f(row['per_stream_ms'], 3)} |"
        )
    w("")
    w(
        f"Idle worker: {_f(r['idle_cpu_ms_per_s'], 2)} ms of CPU per second. "
        f"Worker pid unchanged through the run: {r['worker_pid_unchanged']}."
    )
    w("")

    w("## Memory\n")
    mem = r["memory_kib"]
    w(
        f"Worker resident set after warm-up {_f(r['rss_after_warmup_kib'] / 1024, 1)} MB; "
        f"after all load {_f(mem['VmRSS'] / 1024, 1)} MB; peak (VmHWM) "
        f"{_f(mem['VmHWM'] / 1024, 1)} MB."
    )
    w("")
    w("## Raw plan\n")
    w("```")
    for name, value in asdict(plan).items():
        w(f"{name} = {value}")
    w("```")
    notes = Path(__file__).with_name("notes.md")
    if notes.exists():
        w("")
        w(notes.read_text().strip())
    return "\n".join(out) + "\n"
