"""The default model's presets (agents.model.PRESETS) side by side: pretraining cost and recall.

    python -m bench.presets [--steps 150]

Pretraining time is a ratio measured in one run: each preset trains `--steps` steps twice,
alternating (the machine is shared; the full run is 1,500 steps), and the table gives the
per-step cost and the full run it implies. Recall is scored on each preset's full cached
model (trained on first use), as bench/recall.py scores the default: argmax over the
relation's candidates, every taught person.
"""
from __future__ import annotations

import argparse
import random
import time

import pandas as pd

from agents.agent import Agent
from agents.model import PRESETS
from agents.pretrain import PretrainConfig, pretrained_dir, train
from analysis.knowledge import knowledge_frame
from bench.common import md_table, write_section
from envs.world import World


def seconds_per_step(preset: str, steps: int) -> tuple[float, int]:
    t0 = time.time()
    _, _, _, report = train(PretrainConfig.from_dict({"preset": preset, "steps": steps}), progress=False)
    return (time.time() - t0) / steps, report["parameters"]


def recall(preset: str) -> dict:
    path = pretrained_dir(PretrainConfig.from_dict({"preset": preset}), progress=False)
    agent, world = Agent.from_dir(path), World.load(path / "world.json")
    taught = [p.name for p in world.people if p.taught]
    df = knowledge_frame(agent, world, subjects=random.Random(0).sample(taught, len(taught)))
    q = df[df.form == "question"]
    return {"QA trained": q[q.qa_in_training].correct.mean(), "QA never trained": q[~q.qa_in_training].correct.mean(),
            "held-out paraphrases": df[df.form.str.startswith("heldout")].correct.mean()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()
    per: dict[str, list[float]] = {p: [] for p in PRESETS}
    params = {}
    for _ in range(2):
        for p in PRESETS:
            s, params[p] = seconds_per_step(p, args.steps)
            per[p].append(s)
    full = PretrainConfig().total_steps
    rows = []
    for p in PRESETS:
        s = min(per[p])
        rows.append({"preset": p, "shape": str(PRESETS[p] or "default"), "parameters": params[p],
                     "s/step": round(s, 4), f"{full} steps (s, implied)": round(s * full, 1),
                     "x small": round(s / min(per["small"]), 2), **recall(p)})
        print(rows[-1], flush=True)
    write_section("presets", "Default model presets: pretraining cost and recall",
                  md_table(pd.DataFrame(rows).set_index("preset")) +
                  f"\n\ns/step: the faster of two {args.steps}-step runs per preset, alternated in one run "
                  "(2 shared CPU cores); recall on each preset's full cached model (300 people).")


if __name__ == "__main__":
    main()
