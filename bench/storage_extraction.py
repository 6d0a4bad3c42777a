"""Storage vs extraction ("Physics of Language Models 3.1") on our world: is knowledge that
the model stores also extractable by QA for people whose QA it never saw?

    python -m bench.storage_extraction [--people 300] [--steps 1500]

Regimes: bio-only pretraining then QA fine-tuning, mixed training, and each with
multi-template + permutation augmentation of the bios.
"""
from __future__ import annotations

import argparse
import os
import time

import pandas as pd

from agents.agent import Agent
from agents.pretrain import PretrainConfig, train
from analysis.knowledge import knowledge_frame
from bench.common import md_table, write_section

REGIMES = {
    "bio pretrain → QA fine-tune (1 template)": dict(qa_mode="finetune", bio_templates="one", permute=False),
    "bio pretrain → QA fine-tune (multi-template + permute)": dict(qa_mode="finetune"),
    "mixed training (1 template)": dict(qa_mode="mixed", bio_templates="one", permute=False),
    "mixed training (multi-template + permute)": dict(qa_mode="mixed"),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--people", type=int, default=300)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--quick", action="store_true", help="80 people, 300 steps")
    args = ap.parse_args()
    if args.quick:
        args.people, args.steps = 80, 300
    rows = []
    for name, kw in REGIMES.items():
        cfg = PretrainConfig.from_dict(dict(people=args.people, steps=args.steps, **kw))
        t0 = time.time()
        model, tok, world, report = train(cfg, progress=False)
        df = knowledge_frame(Agent(model, tok), world, forms=("question",))
        df = df[df.taught]
        rows.append({"regime": name, "steps": report["steps"], "seconds": round(time.time() - t0, 1),
                     "QA acc, QA trained": df[df.qa_in_training].correct.mean(),
                     "QA acc, QA never trained": df[~df.qa_in_training].correct.mean()})
        print(rows[-1], flush=True)
    df = pd.DataFrame(rows).set_index("regime")
    print(df.round(3).to_string())
    body = (md_table(df) + f"\n\n{args.people} people (20 % never taught, QA for half of the taught), "
            f"{args.steps} pretraining steps (fine-tune regimes add {args.steps // 2} QA-only steps). "
            "The column that matters is QA accuracy on people whose QA was never trained. `seconds` is "
            f"wall time (1-minute load average at the end: {os.getloadavg()[0]:.1f}; above 2, other work shared "
            "the 2 cores and inflated it).")
    write_section("storage-extraction", "Storage vs extraction (Physics of LMs 3.1)", body)


if __name__ == "__main__":
    main()
