"""Shared by the benchmark scripts: print a table and write it as one section of
docs/benchmarks.md (replacing that section only, so scripts can run in any order).

Run every script from the repository root as a module: `python -m bench.recall`."""
from __future__ import annotations

import platform
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEach section is written by the script it names; rerun the script to refresh it.\n"


def machine() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    return f"{dev}; torch {torch.__version__}; Python {platform.python_version()}"


def write_section(key: str, title: str, body: str, doc: Path = DOC, header: str = HEADER) -> None:
    """Replace (or append) the section between `<!-- bench:key -->` markers of `doc`."""
    DOC.parent.mkdir(exist_ok=True)
    text = doc.read_text() if doc.exists() else header
    cmd = " ".join([f"python -m bench.{Path(sys.argv[0]).stem}"] + sys.argv[1:])
    block = (f"<!-- bench:{key} -->\n## {title}\n\n`{cmd}` — {time.strftime('%Y-%m-%d')}, {machine()}\n\n"
             f"{body.strip()}\n<!-- /bench:{key} -->")
    pat = re.compile(rf"<!-- bench:{re.escape(key)} -->.*?<!-- /bench:{re.escape(key)} -->", re.S)
    text = pat.sub(lambda _: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)
    print(f"\n[written to {doc.relative_to(ROOT)} § {title}]")


def timed(fn, repeat: int = 2) -> float:
    """Best wall time of `repeat` calls (the least disturbed by a noisy machine)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def timed_together(fns: dict, repeat: int = 4) -> dict:
    """Best wall time of each function, the calls alternated (a, b, a, b, ...): a ratio of
    two of them is not skewed by the machine being slower during one's turn."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def md_table(df, floatfmt: str = ".3f") -> str:
    return df.to_markdown(floatfmt=floatfmt)
