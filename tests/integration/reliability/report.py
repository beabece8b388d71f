"""Soak figures (docs/reliability-soak.json) → the generated sections of docs/reliability.md."""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["render", "write_report"]


def _corpus(r: dict[str, Any]) -> str:
    b = r["background"]
    failed = ", ".join(r["failed"]) or "none"
    return (
        f"Measured {r['measured']}: {r['cases']} cases × {r['rounds']} rounds = "
        f"{r['requests']} bad requests (REST, gRPC, StreamPredictions, raw HTTP), 4 senders, "
        f"while 4 clients kept a background load going.\n\n"
        f"| bad requests | failed | worker PIDs unchanged | background answers | lost | "
        f"errors | mismatched |\n|---|---|---|---|---|---|---|\n"
        f"| {r['requests']} | {failed} | {'yes' if r['workers_unchanged'] else '**no**'} | "
        f"{b['requests']} | {b['lost']} | {b['errors']} | {b['mismatched']} |"
    )


def _load(r: dict[str, Any]) -> str:
    rows = [
        f"| {k} | {f['requests']} | {f['lost']} | {f['errors']} | {f['mismatched']} | "
        f"{f['throughput']:.2f} | {f['throughput_vs_k1']:.2f} | {f['p50']:.3f} | "
        f"{f['p90']:.3f} | {f['p99']:.3f} | {f['max']:.3f} |"
        for k, f in sorted(r["clients"].items(), key=lambda item: int(item[0]))
    ]
    return (
        f"Measured {r['measured']}: {r['rounds']} interleaved rounds of {r['seconds']:g} s per "
        f"client count; requests drawn from 12 specs (3 predict, 9 explain of 4-16 samples) "
        f"over REST and gRPC; every answer compared with the engine run in-process.\n\n"
        f"| clients k | requests | lost | errors | mismatched | req/s (median of rounds) | "
        f"× k=1 | p50 s | p90 s | p99 s | max s |\n|---|---|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
    )


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def _faults(r: dict[str, Any]) -> str:
    kill, oom = r["kill_mid_batch"], r["oom_split"]
    queued, running = r["deadline_in_queue"], r["deadline_while_running"]
    budget, long = r["response_timeout_budget"], r["single_long_call"]
    in_flight = sum(len(k["outcomes"]) for k in kill)
    lines = [
        (
            "worker SIGKILLed mid-batch (4 long explains, REST + gRPC)",
            len(kill),
            f'{sum(k["failed_fast"] for k in kill)}/{in_flight} answered "Worker died.", '
            f"{sum(k['served_exactly'] for k in kill)} queued ones served exactly by the new "
            f"worker, 0 hung; restart {_median(kill, 'restart_seconds'):.1f} s median "
            f"(max {max(k['restart_seconds'] for k in kill):.1f} s); exact afterwards "
            f"{sum(k['exact_after_restart'] for k in kill)}/{len(kill)}",
        ),
        (
            "OOM above 8 rows (chunks of 64, 2 concurrent explains)",
            len(oom),
            f"{sum(o['exact'] for o in oom)}/{sum(o['answers'] for o in oom)} answers exact; "
            f"{sum(o['oom_events'] for o in oom)} OOM splits in all (48 → 24 → 12 → 6 rows in "
            f"the first run, the halved size is kept); largest call after an OOM "
            f"{max(o['largest_call_after_oom'] for o in oom)} rows",
        ),
        (
            "client deadline (0.5 s) passes in the queue",
            len(queued),
            f"{sum(q['code'] == 'DEADLINE_EXCEEDED' for q in queued)}/{len(queued)} "
            f"DEADLINE_EXCEEDED; chunks computed for them: "
            f"{sum(q['chunks'] - q['chunks_of_first'] for q in queued)}",
        ),
        (
            "client deadline (1 s) passes while computing (20 chunks of 0.2 s)",
            len(running),
            f"{sum(q['code'] == 'DEADLINE_EXCEEDED' for q in running)}/{len(running)} "
            f"DEADLINE_EXCEEDED; chunks computed {_median(running, 'chunks'):.0f} median of 20; "
            f"worker kept {sum(q['worker_kept'] for q in running)}/{len(running)}",
        ),
        (
            "batch longer than responseTimeout (12 s of work, 4 s timeout)",
            len(budget),
            f"{sum(b['status'] == 504 for b in budget)}/{len(budget)} answered 504 in time; "
            f"predictions in the batch answered {sum(b['predict_ok'] for b in budget)}, "
            f"worker kept {sum(b['worker_kept'] for b in budget)}/{len(budget)}",
        ),
        (
            "one model call (5 s) longer than responseTimeout (3 s)",
            len(long),
            f'HTTP {long[0]["status"]} "{long[0]["message"]}" (TorchServe kills the worker); '
            f"restart {long[0]['restart_seconds']:.1f} s; answers exactly afterwards: "
            f"{'yes' if long[0]['predicts_after'] else 'no'}",
        ),
    ]
    costly = r.get("costly_batch", [])
    if costly:
        outcomes = [o for c in costly for o in c["outcomes"]]
        extra = sum(c["chunks"] - c["outcomes"].count("200") * c["chunks_per_big"] for c in costly)
        lines.append(
            (
                "admission by cost (max_batch_seconds 3 s): one 60-chunk explanation, then "
                "three 8-chunk ones and a small one together",
                len(costly),
                f"too dear: {sum(c['too_dear'][0] == 400 for c in costly)}/{len(costly)} "
                f"400 before any chunk; of {len(outcomes)} big ones "
                f"{outcomes.count('200')} computed (exact "
                f"{sum(c['exact'] for c in costly)}), "
                f"{outcomes.count('503 UNAVAILABLE')} answered 503 at once with no chunk "
                f"computed for them (chunks beyond the computed ones: "
                f"{extra}); "
                f"small batch-mate answered {sum(c['small_ok'] for c in costly)}/{len(costly)}",
            )
        )
    table = "\n".join(f"| {name} | {runs} | {text} |" for name, runs, text in lines)
    return f"Measured {r['measured']}.\n\n| fault | runs | result |\n|---|---|---|\n{table}"


def _diskfull(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return f"Measured {r['measured']}: skipped ({r['skipped']})."
    return (
        f"Measured {r['measured']}: $METRICS_LOCATION and $PROMETHEUS_MULTIPROC_DIR on a tmpfs "
        f"with {r['free_blocks']} free blocks, 4 clients for {r['seconds']:.0f} s.\n\n"
        "| requests | lost | errors | mismatched | worker PIDs unchanged |\n"
        "|---|---|---|---|---|\n"
        f"| {r['requests']} | {r['lost']} | {r['errors']} | {r['mismatched']} | "
        f"{'yes' if r['workers_unchanged'] else '**no**'} |"
    )


_SECTIONS: dict[str, Callable[[dict[str, Any]], str]] = {
    "corpus": _corpus,
    "load": _load,
    "faults": _faults,
    "diskfull": _diskfull,
}


def render(results: dict[str, Any]) -> dict[str, str]:
    return {
        part: _SECTIONS[part](figures) for part, figures in results.items() if part in _SECTIONS
    }


def write_report(results: dict[str, Any], path: Path) -> None:
    """Replace the text between `<!-- soak:part -->` and `<!-- /soak:part -->` markers."""
    text = path.read_text(encoding="utf-8")
    for part, body in render(results).items():
        pattern = re.compile(rf"(<!-- soak:{part} -->\n).*?(\n<!-- /soak:{part} -->)", re.DOTALL)
        text = pattern.sub(lambda m, b=body: m.group(1) + b + m.group(2), text)
    path.write_text(text, encoding="utf-8")
