"""Whether an erased fact is gone or only hidden: two readings of what is left inside the model.

- A linear probe on the hidden states of the fact's question (at the subject's last token,
  where the default model's layer-0 MLP writes the fact, and at the answer position), trained
  on taught people no request names and asked about the erased people: if it still decodes the
  erased truth about as well as held-out known people's, the fact is still written there, and
  only the path to the answer was cut. (The bare name alone holds too little for a probe on
  the default model: docs/benchmarks.md, "Q-probes".)
- Relearning: fine-tune a copy of the model on the erased facts and count the steps until it
  answers them again, against the same count of facts about people it was never taught. A fact
  that comes back much faster than a new one was hidden, not erased (the finding of Lynch et
  al., 2024, and Deeb & Roger, 2024, for unlearning methods).
"""
from __future__ import annotations

import random

import pandas as pd
import torch

from envs.world import World
from evolution.editors.ft_l import target_batch, target_nll
from evolution.editors.rome.repr_tools import padded, subject_index
from evolution.locate import linear_probe_accuracy


@torch.no_grad()
def prompt_states(agent, prompts: list[str], subjects: list[str], batch_size: int = 256) -> dict[str, torch.Tensor]:
    """{"subject": [layers + 1, n, d] at the subject's last token, "answer": the same at the
    prompt's last token}, inside each prompt (embeddings first). The fact is written at the
    subject (the default model's layer-0 MLP) and read at the answer position."""
    out: dict[str, list] = {"subject": [], "answer": []}
    for b in range(0, len(prompts), batch_size):
        ps, ss = prompts[b:b + batch_size], subjects[b:b + batch_size]
        enc = agent.tokenizer(ps).input_ids
        ids, mask = padded(enc, agent.tokenizer.pad_token_id, agent.device)
        hs = torch.stack(agent.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states)
        rows = torch.arange(len(ps), device=ids.device)
        at = {"subject": torch.tensor([subject_index(agent.tokenizer, p, s) for p, s in zip(ps, ss)], device=ids.device),
              "answer": torch.tensor([len(e) - 1 for e in enc], device=ids.device)}
        for k, cols in at.items():
            out[k].append(hs[:, rows, cols].float().cpu())
    return {k: torch.cat(v, 1) for k, v in out.items()}


def probe_residue(agent, world: World, requests, heldout_share: float = 0.2, ridge: float = 1.0,
                  seed: int = 0) -> pd.DataFrame:
    """Per position (subject, answer) and layer (0: the embedding), a linear probe's accuracy on
    the truth of: held-out taught people (known), the erased facts (erased), never-taught
    people (never_taught, the floor), pooled over the erased relations. Read from the question
    prompt's hidden states; one probe per relation, position and layer, trained on taught
    people the requests do not name for that relation."""
    erased = {(r.subject, r.relation) for r in requests}
    rng = random.Random(seed)
    groups_of = ("known", "erased", "never_taught")
    hits: dict[tuple[str, str], torch.Tensor] = {}
    counts = dict.fromkeys(groups_of, 0)
    for rel in sorted({r for _, r in erased}):
        cands = world.relations[rel].candidates
        has = [p for p in world.people if world.has(p.name, rel)]
        pool = [p.name for p in has if p.taught and (p.name, rel) not in erased]
        rng.shuffle(pool)
        cut = max(1, round(heldout_share * len(pool)))
        groups = {"known": pool[:cut], "erased": sorted(s for s, r in erased if r == rel),
                  "never_taught": [p.name for p in has if not p.taught], "train": pool[cut:]}
        people = [s for g in groups.values() for s in g]
        states = prompt_states(agent, [world.query(s, rel).prompt for s in people], people)
        at = {s: i for i, s in enumerate(people)}
        label = lambda names: torch.tensor([cands.index(world.truth(s, rel)) for s in names])
        tr = [at[s] for s in groups["train"]]
        for pos, st in states.items():
            for layer in range(st.shape[0]):
                for g in groups_of:
                    if groups[g]:
                        acc = linear_probe_accuracy(st[layer][tr], label(groups["train"]),
                                                    st[layer][[at[s] for s in groups[g]]], label(groups[g]),
                                                    len(cands), ridge)
                        key = (pos, g)
                        hits.setdefault(key, torch.zeros(st.shape[0]))[layer] += acc * len(groups[g])
        for g in groups_of:
            counts[g] += len(groups[g])
    n_layers = next(iter(hits.values())).shape[0]
    return pd.DataFrame([{"position": pos, "layer": layer,
                          **{f"probe_{g}": float(hits[(pos, g)][layer]) / max(counts[g], 1) if (pos, g) in hits
                             else float("nan") for g in groups_of},
                          **{f"n_{g}": counts[g] for g in groups_of}}
                         for pos in ("subject", "answer") for layer in range(n_layers)])


def relearn_curve(agent, world: World, facts: list[tuple[str, str]], steps: int = 30, lr: float = 1e-3) -> list[float]:
    """Accuracy on `facts` (question form, argmax) before and after each of `steps` Adam steps
    of fine-tuning every weight of a copy of the agent on those facts' question and truth. The
    agent itself is not changed."""
    if not facts:
        raise ValueError("facts: empty; give the (subject, relation) pairs to relearn")
    copy = agent.spawn(f"{agent.name} (relearning)")
    model = copy.model
    qs = [world.query(s, r, "question") for s, r in facts]
    batch = target_batch(copy.tokenizer, [q.prompt for q in qs], [q.truth for q in qs], copy.device)
    accuracy = lambda: sum(b.correct for b in copy.beliefs(qs)) / len(qs)
    curve = [accuracy()]
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = target_nll(model, *batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append(accuracy())
    return curve


def steps_to(curve: list[float], level: float = 0.9) -> int | None:
    """The first step whose accuracy reaches `level` (0: before any step), None when none does."""
    return next((i for i, a in enumerate(curve) if a >= level), None)


def matched_strangers(world: World, facts: list[tuple[str, str]], seed: int = 0) -> list[tuple[str, str]]:
    """As many never-taught people's facts as `facts`, relation for relation (fewer where the
    world has fewer never-taught people with that relation): what relearning is compared with."""
    rng = random.Random(seed)
    out = []
    for rel in sorted({r for _, r in facts}):
        n = sum(r == rel for _, r in facts)
        pool = [p.name for p in world.people if not p.taught and world.has(p.name, rel)]
        out += [(s, rel) for s in rng.sample(pool, min(n, len(pool)))]
    return out
