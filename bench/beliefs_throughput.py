"""beliefs() throughput: prompt sharing (one packed row per prompt, its candidates after it
under a block mask) against one sequence per (prompt, candidate), for queries alone and
with three peers' claims in context (every protocol round after 0); each against the bare
batched forward of its own sequences (the ceiling), and one query at a time. One run.

    python -m bench.beliefs_throughput [--queries 400] [--single 60] [--people 300]
"""
from __future__ import annotations

import argparse
import random

import pandas as pd
import torch

from agents.agent import Agent
from agents.pretrain import PretrainConfig, pretrained_dir
from agents.records import prompts_with_context
from agents.scoring import (mask_dtype, candidate_logprobs, packed_rows, padded_batches, pair_logprobs,
                            pair_sequences, score_packed)
from bench.common import md_table, timed, write_section
from envs.world import World, claim



def peer_context(world, queries, seed=0):
    rng = random.Random(seed)
    return [" ".join(claim(world.relations[q.relation], q.subject, rng.choice(q.candidates), f"agent {k}")
                     for k in range(3)) for q in queries]


@torch.inference_mode()
def bare_pairs(model, seqs, pad_id, bs, device):
    for _, ids, mask in padded_batches(seqs, bs, pad_id):
        model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.sum().item()


@torch.inference_mode()
def bare_packed(model, rows, pad_id, bs, device):
    fwd = lambda idx, ids, pos, mask: model(input_ids=ids, position_ids=pos, attention_mask=mask).logits
    score_packed(fwd, rows, pad_id, bs, mask_dtype(model), device)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", type=int, default=400)
    ap.add_argument("--single", type=int, default=60, help="queries timed one at a time")
    ap.add_argument("--people", type=int, default=300)
    ap.add_argument("--batch", type=int, default=32, help="packed rows per forward (beliefs' default)")
    ap.add_argument("--pair-batch", type=int, default=128, help="sequences per forward, pairs layout")
    args = ap.parse_args()
    path = pretrained_dir(PretrainConfig(people=args.people))
    world = World.load(path / "world.json")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    agent = Agent.from_dir(path, device=device, batch_size=args.batch)
    model, tok, bs, pbs = agent.model, agent.tokenizer, args.batch, args.pair_batch
    queries = random.Random(0).sample(world.queries(), args.queries)
    rows = []
    for label, context in [("alone", None), ("3 peers' claims", peer_context(world, queries))]:
        _, prompts = prompts_with_context(queries, context)
        cands = [q.candidates for q in queries]
        seqs, _, _ = pair_sequences(tok, prompts, cands)
        packed = packed_rows(tok, prompts, cands)
        new = candidate_logprobs(model, tok, prompts, cands, bs)
        old = pair_logprobs(model, tok, prompts, cands, pbs)
        err = max((a - b).abs().max().item() for a, b in zip(new, old))
        t_old = timed(lambda: pair_logprobs(model, tok, prompts, cands, pbs), 3)
        t_new = timed(lambda: candidate_logprobs(model, tok, prompts, cands, bs), 3)
        t_old_c = timed(lambda: bare_pairs(model, seqs, tok.pad_token_id, pbs, device), 3)
        t_new_c = timed(lambda: bare_packed(model, packed, tok.pad_token_id, bs, device), 3)
        k = args.single
        t_one = timed(lambda: [agent.beliefs([q], context=None if context is None else context[i])
                               for i, q in enumerate(queries[:k])], 1) / k
        rows.append({"queries": label, "tokens per query, pairs": sum(map(len, seqs)) / len(queries),
                     "tokens per query, packed": sum(len(r.tokens) for r in packed) / len(queries),
                     "pairs q/s": len(queries) / t_old, "packed q/s": len(queries) / t_new,
                     "packed / pairs": t_old / t_new,
                     "pairs: time / bare forward": t_old / t_old_c, "packed: time / bare forward": t_new / t_new_c,
                     "one at a time q/s": 1 / t_one, "max |log-prob diff|": err})
    df = pd.DataFrame(rows).set_index("queries")
    print(df.to_string(float_format=lambda x: f"{x:.3g}"))
    body = (md_table(df, ".3g") + f"\n\n{args.queries} queries of the default world ({args.people} people), {device}; "
            f"batches of {pbs} sequences (pairs) and of {bs} packed rows (the defaults). `pairs`: one sequence per (prompt, candidate), the prompt recomputed for each of a "
            "query's ~30 candidates (the scoring before prompt sharing, still what vLLM is given); `packed`: one "
            "row per prompt, each candidate's tokens after it under a block attention mask (agents/scoring.py, "
            "what `beliefs` does now). Targets: packed >= 4x pairs with three peers' claims in context, >= 1.5x "
            "alone; log-probs equal to 1e-5. `time / bare forward`: the scorer's time over a bare batched forward "
            "of its own rows (the ceiling); `one at a time`: `beliefs([q])` per query.")
    write_section("beliefs-throughput", "beliefs() throughput: prompt sharing", body)


if __name__ == "__main__":
    main()
