"""Render the explain-options table (protocol/options.py) into docs/api.md between its markers.

    .venv/bin/python tools/options_doc.py          # rewrite docs/api.md
    .venv/bin/python tools/options_doc.py --check  # exit 1 if docs/api.md is out of date

A unit test runs the check, so the documented options, defaults and ranges are the table's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smoothexplain.protocol.options import OPTIONS, Option

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
BEGIN, END = "<!-- options table: begin -->", "<!-- options table: end -->"


def _allowed(entry: Option) -> str:
    if entry.choices:
        return " · ".join(f"`{c}`" for c in entry.choices)
    if entry.kind is bool:
        return "true · false"
    if entry.kind is str:
        return "a module name, e.g. `features.7`"
    kind = "integer" if entry.kind is int else "number"
    return f"{kind} in {entry.span()}" if entry.low is not None else f"finite float32 {kind}"


def _surfaces(entry: Option) -> str:
    parts = []
    if entry.python:
        parts.append("`explain()`" + (" (`baselines`)" if entry.name == "baseline" else ""))
    if entry.proto:
        parts.append(f"proto `{entry.proto}`")
    if entry.flag:
        parts.append(f"`{entry.flag}`")
    if entry.config:
        parts.append("model-config `defaults:`")
    if entry.server_key:
        parts.append(f"model-config `{entry.server_key}` (server side)")
    return ", ".join(parts)


def render() -> str:
    rows = [
        "| option | allowed | default | where | what |",
        "|---|---|---|---|---|",
    ]
    for entry in OPTIONS:
        default = "–" if entry.default is None else f"`{entry.default}`"
        scope = " (IG only)" if entry.ig_only else ""
        rows.append(
            f"| `{entry.name}` | {_allowed(entry)} | {default} | {_surfaces(entry)} | "
            f"{entry.help}{scope} |"
        )
    return "\n".join([BEGIN, *rows, END])


def updated(text: str) -> str:
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + render() + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    text = DOC.read_text(encoding="utf-8")
    new = updated(text)
    if args.check:
        return 0 if new == text else 1
    DOC.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
