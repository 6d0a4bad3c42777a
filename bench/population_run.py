"""A whole run of 1,000 agents (configs/thousand.yaml) on one base model: time and memory.

    python -m bench.population_run [--agents 1000] [--placement population]

Runs the config into a temp dir (the default model from the cache) and reports the wall time
of the run, records per second, and the process's peak resident memory.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd

from bench.common import ROOT, md_table, write_section
from evolution.run import run_experiment


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=1000)
    p.add_argument("--placement", default="population")
    args = p.parse_args(argv)
    sets = [f"agents={args.agents}", f"placement.kind={args.placement}"]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        df = run_experiment(ROOT / "configs" / "thousand.yaml", Path(d) / "run", sets, progress=False)
        wall = time.time() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_round = df.groupby("round").size()
    rows.append(dict(agents=args.agents, placement=args.placement, rounds=len(per_round), records=len(df),
                     seconds=round(wall, 1), records_per_s=round(len(df) / wall, 1), peak_rss_mib=round(peak),
                     accuracy_round0=df[df["round"] == 0]["correct"].mean(),
                     accuracy_last=df[df["round"] == df["round"].max()]["correct"].mean()))
    t = pd.DataFrame(rows)
    print(md_table(t))
    write_section("population-run", "A run of 1,000 agents", md_table(t) + (
        "\n\n`configs/thousand.yaml`: discussion, 2 rounds after round 0, small world (k = 6), 4 people x 2 "
        "relations asked of every agent; personas mixed. Wall time includes loading the cached default model "
        "and spawning the agents; peak RSS is the whole process's (model, 1,000 agents' records, Python).\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
