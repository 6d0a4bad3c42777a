"""Shared by the benchmark scripts: print a table and write it as one section of
docs/benchmarks.md (replacing that section only, so scripts can run in any order).

Run every script from the repository root as a module: `python -m bench.recall`."""
from __future__ import annotations

import argparse
import platform
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
HEADER = "# Benchmarks\n\nEach section is written by the script it names; rerun the script to refresh it.\n"


def machine() -> str:
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    return f"{dev}; torch {torch.__version__}; Python {platform.python_version()}"


def write_section(key: str, title: str, body: str, doc: Path = DOC, header: str = HEADER) -> None:
    """Replace (or append) the section between `<!-- bench:key -->` markers of `doc`. A
    `--quick` run (the tests' small model) writes its own section, `key-quick`: a smoke run
    never replaces the measured figures."""
    if "--quick" in sys.argv[1:]:
        key, title = f"{key}-quick", f"{title} (--quick)"
    doc.parent.mkdir(exist_ok=True)
    text = doc.read_text() if doc.exists() else header
    cmd = " ".join([f"python -m bench.{Path(sys.argv[0]).stem}"] + sys.argv[1:])
    block = (f"<!-- bench:{key} -->\n## {title}\n\n`{cmd}` — {time.strftime('%Y-%m-%d')}, {machine()}\n\n"
             f"{body.strip()}\n<!-- /bench:{key} -->")
    pat = re.compile(rf"<!-- bench:{re.escape(key)} -->.*?<!-- /bench:{re.escape(key)} -->", re.S)
    text = pat.sub(lambda _: block, text) if pat.search(text) else text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)
    print(f"\n[written to {doc.relative_to(ROOT) if doc.is_relative_to(ROOT) else doc} § {title}]")


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


def overriding(base: list[str], *sets: str) -> list[str]:
    """`base`'s KEY=VALUE overrides with `sets` put in, each replacing `base`'s entry of its key
    (the run is the same as with both; an upbringing's description then names each key once)."""
    keys = {s.split("=", 1)[0] for s in sets}
    return [s for s in base if s.split("=", 1)[0] not in keys] + list(sets)


# How the agents were raised, as pretraining overrides of a run config (envs/corpus.py's knobs)
UPBRINGINGS = {"default": [], "evidence": ["pretrain.evidence_share=1", "pretrain.evidence_weight=1"],
               # raised on reliable stated confidence, and talking with it (claims say sure / thinks)
               "confidence": ["pretrain.confidence_share=0.5", "pretrain.confidence_reliability=1",
                              "params.confidence=true"]}
# the same, saying "sure" only from probability .9: where the default model's round-0 answers on
# never-taught people split knowers (.76 sure) from guessers (.16), against .93 / .63 at .5
UPBRINGINGS["confidence-strict"] = UPBRINGINGS["confidence"] + ["params.sure_at=0.9"]
# and without debate's supporting facts: claims as the confidence texts show them
UPBRINGINGS["confidence-bare"] = UPBRINGINGS["confidence-strict"] + ["params.supported=false"]
# strict, raised on texts whose answers set unsure claims aside when any claim is sure: in every
# social text and for 3,000 steps (in half of them and 1,500 steps the model did not learn it)
UPBRINGINGS["confidence-weighing"] = ["pretrain.confidence_share=1", "pretrain.confidence_reliability=1",
                                      "pretrain.confidence_weight=1", "pretrain.steps=3000",
                                      "params.confidence=true", "params.sure_at=0.9"]
# weighing, saying "sure" only from .97: where its guessers' sure wrong answers fall to 2.6% and
# its knowers' sure right ones to 18.8% (from 10.7% / 48.4% at .9; bench.sure_calibration)
UPBRINGINGS["confidence-weighing-97"] = overriding(UPBRINGINGS["confidence-weighing"], "params.sure_at=0.97")
# the same, where a sure claim can be wrong (reliability .8) and what the agent knows counts as a
# sure claim of its own: weighing's knower heard sure wrong claims it had never read
UPBRINGINGS["confidence-self"] = overriding(UPBRINGINGS["confidence-weighing"], "pretrain.confidence_reliability=0.8",
                                            "pretrain.confidence_self=1")


@dataclass
class ConfigRun:
    upbringing: str
    seed: int
    cfg: object
    points: list
    world: object
    records: pd.DataFrame
    took: str
    variant: str = ""       # the protocol variant, where the benchmark sweeps them


def run_config_experiment(description: str, config: Path, name: str, quick: list[str], quick_help: str,
                          seeds: str = "", upbringings: str = "default", variants: str | None = None):
    """The frame of a benchmark that is a run config's experiment (asch, debate): its command
    line (`--quick` adds `quick` overrides, `--out`, `--set`, `--seeds`, `--upbringings`, and
    `--variants` where `variants` is given: protocol variants, `params.variant`), one run per
    upbringing, seed and variant (each resumed if its dir holds a finished one) and how long
    each took. Returns (args, [ConfigRun])."""
    from evolution.run import run_experiment
    from evolution.run_config import load
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument("--out", default=None, help=f"runs root (default runs/{name}[-quick]), one dir per upbringing "
                    "and seed; a finished run is read back")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--seeds", default=seeds, help="run seeds, comma-separated (default: the config's)")
    ap.add_argument("--upbringings", default=upbringings, help=f"comma-separated, of {sorted(UPBRINGINGS)}")
    if variants is not None:
        ap.add_argument("--variants", default=variants, help="protocol variants (params.variant), comma-separated; default: the config's")
    args = ap.parse_args()
    ups = args.upbringings.split(",")
    unknown = [u for u in ups if u not in UPBRINGINGS]
    if unknown:
        ap.error(f"--upbringings: unknown {unknown}; known: {sorted(UPBRINGINGS)}")
    root = Path(args.out or ROOT / "runs" / (name + ("-quick" if args.quick else "")))
    sets = (quick if args.quick else []) + args.set
    seed_sets = [[f"seed={s}"] for s in args.seeds.split(",")] if args.seeds else [[]]
    vs = args.variants.split(",") if variants is not None and args.variants else [""]
    plan = [(u, v, sets + UPBRINGINGS[u] + ss + ([f"params.variant={v}"] if v else []))
            for u in ups for ss in seed_sets for v in vs]
    for _, _, point_sets in plan:        # every config checked before any work starts
        load(config, point_sets)
    runs = []
    for up, v, point_sets in plan:
        _, cfg, points, world = load(config, point_sets)
        out = root / (f"{up}-seed{cfg.seed}" + (f"-{v}" if v else ""))
        resumed = (out / "records.parquet").exists()
        t0 = time.perf_counter()
        df = run_experiment(config, out, point_sets, progress=True)
        took = f"{time.perf_counter() - t0:.0f} s" + (" (a finished run read back)" if resumed else "")
        runs.append(ConfigRun(up, cfg.seed, cfg, points, world, df, took, v))
    return args, runs


def md_table(df, floatfmt: str = ".3f") -> str:
    return df.to_markdown(floatfmt=floatfmt)
