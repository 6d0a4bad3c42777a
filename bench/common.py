"""Shared by the benchmark scripts: print a table and write it as one section of
docs/benchmarks.md (replacing that section only, so scripts can run in any order).

Run every script from the repository root as a module: `python -m bench.recall`."""
from __future__ import annotations

import argparse
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


MODEL_QUICK = "The tests' small model (80 people, 400 steps; --quick)"


def run_config_experiment(description: str, config: Path, name: str, quick: list[str], quick_help: str):
    """The frame of a benchmark that is a run config's experiment (asch, debate): its command
    line (`--quick` adds `quick` overrides, `--out`, `--set`), the run (resumed if `--out`
    holds a finished one) and how long it took. Returns (args, cfg, points, world, records, took)."""
    from evolution.run import run_experiment
    from evolution.run_config import load
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--out", default=None, help=f"run dir (default runs/{name}[-quick]); a finished run is read back")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = ap.parse_args()
    sets = (quick if args.quick else []) + args.set
    out = Path(args.out or ROOT / "runs" / (name + ("-quick" if args.quick else "")))
    _, cfg, points, world = load(config, sets)
    resumed = (out / "records.parquet").exists()
    t0 = time.perf_counter()
    df = run_experiment(config, out, sets, progress=True)
    took = f"{time.perf_counter() - t0:.0f} s" + (f" (a finished run in {out.name} read back)" if resumed else "")
    return args, cfg, points, world, df, took


def md_table(df, floatfmt: str = ".3f") -> str:
    return df.to_markdown(floatfmt=floatfmt)
