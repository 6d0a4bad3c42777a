"""Where MEMOIR's masks collide on the default model, and what whitening and a wider memory buy.

    python -m bench.memoir_masks [--people 200] [--k 16,32,64]

A routed memory (evolution/editors/memoir) sends a token to a stored edit when the token's
TopHash mask shares at least `threshold` of the edit's mask. This measures, for the keys the
editor would store for `--people` edited people (the sequential benchmark's people, one key
each at the subject token tracing picks), the share of mask entries shared with:
- own: the same person's held-out question paraphrases (should reach the key: generalization);
- other key: every other stored key, for those paraphrases (the best wrong key);
- unrelated: every token of 200 questions about unedited people and 20 of their bios (must
  not reach any key: locality).
Feature maps: the raw MLP input (MEMOIR's), whitened (C^-1/2 (a - mean), the editor's key
statistics), and whitened then expanded by a fixed random map to 1,024 or 4,096 features.
"""
from __future__ import annotations

import argparse

import pandas as pd
import torch

from analysis.edit_metrics import heldout_bios, locality_probe
from bench.common import md_table, write_section
from bench.editing import default_model, sequential_requests
from evolution.editors.memoir.editor import MEMOIRHyperParams, key_statistics, person_texts
from evolution.editors.memoir.memory import install, uninstall
from evolution.editors.rome.repr_tools import captured_input, down_proj, keys_at_subject
from evolution.editors.target import chosen_key_tokens


def activations(agent, world, people: int):
    """(stored keys [P, d_ff], paraphrase keys [N, d_ff], owner of each [N], unrelated tokens [M, d_ff])."""
    reqs = sequential_requests(agent, world, 5 * people)
    first: dict = {}
    for r in reqs:
        first.setdefault(r.subject, r)
    subjects = list(first)[:people]
    tokens, _, _ = chosen_key_tokens(agent, world, [first[s] for s in subjects], [0], None)
    hp = MEMOIRHyperParams()
    keys, para, owner = [], [], []
    for i, s in enumerate(subjects):
        texts = person_texts(agent, world, [first[s]], hp, 0)[0]
        keys.append(keys_at_subject(agent.model, agent.tokenizer, texts, [s] * len(texts), 0, tokens).mean(0))
        for j in range(len(world.relations[first[s].relation].heldout)):
            p = world.query(s, first[s].relation, f"heldout:{j}").prompt
            para.append(keys_at_subject(agent.model, agent.tokenizer, [p], [s], 0, tokens)[0])
            owner.append(i)
    texts = [q.prompt for q in locality_probe(world, reqs, 200, 0)] + heldout_bios(world, reqs, 20, 0)
    unrelated = []
    with captured_input(down_proj(agent.model, 0)) as box, torch.no_grad():
        for t in texts:
            agent.model(**agent.tokenizer(t, return_tensors="pt").to(agent.device))
    for x in box:
        unrelated.append(x[0])
    return torch.stack(keys), torch.stack(para), torch.tensor(owner), torch.cat(unrelated)


def overlaps(mem, keys, para, owner, unrelated) -> dict:
    def masks(x):
        return torch.zeros(len(x), mem.width).scatter_(1, mem.mask_index(mem.features(x)), 1.0)
    mk, mp, mu = masks(keys), masks(para), masks(unrelated)
    pk = mp @ mk.T / mem.k
    own = pk[torch.arange(len(para)), owner]
    pk[torch.arange(len(para)), owner] = -1
    other = pk.max(1).values
    unrel = (mu @ mk.T / mem.k).max(1).values
    q = lambda t, p: round(float(t.quantile(p)), 2)
    return {"own median": q(own, .5), "own 5%": q(own, .05), "own >= .4": round(float((own >= .4).float().mean()), 3),
            "other key 99%": q(other, .99), "other key max": q(other, 1.0),
            "unrelated 99%": q(unrel, .99), "unrelated max": q(unrel, 1.0),
            "unrelated >= .4": round(float((unrel >= .4).float().mean()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--people", type=int, default=200)
    ap.add_argument("--k", default="16,32,64")
    args = ap.parse_args()
    agent, world = default_model()
    keys, para, owner, unrelated = activations(agent, world, args.people)
    center, whiten = key_statistics(agent, world, 0, MEMOIRHyperParams())
    d = keys.shape[1]
    maps = [("raw", d, torch.zeros(d), torch.eye(d)), ("whitened", d, center, whiten),
            ("whitened, x1,024", 1024, center, whiten), ("whitened, x4,096", 4096, center, whiten)]
    rows = []
    for name, width, c, w in maps:
        for k in (int(x) for x in args.k.split(",")):
            mem = install(agent.model, 0, width, k, 0.4, 0, c, w)
            rows.append({"features": name, "width": width, "k": k, **overlaps(mem, keys, para, owner, unrelated)})
            uninstall(agent.model)
    df = pd.DataFrame(rows).set_index(["features", "width", "k"])
    print(df.to_string())
    note = (f"{args.people} edited people of the default model (one stored key each), {len(para)} held-out "
            f"paraphrases of their edited facts, {len(unrelated)} tokens of 200 questions about unedited people "
            "and 20 of their bios. Share of a stored key's mask entries a token's mask shares: own = the "
            "paraphrase's own key (the route generalization needs), other key = the best other person's key, "
            "unrelated = the best key for any unrelated token (the route locality forbids). `>= .4`: the share of "
            "paraphrases (own) or tokens (unrelated) at or above the editor's default threshold. The editor's "
            "default: whitened, x4,096, k = 32.")
    write_section("memoir_masks", "MEMOIR's masks: collisions, whitening and width", md_table(df, ".2f") + "\n\n" + note)


if __name__ == "__main__":
    main()
