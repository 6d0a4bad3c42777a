"""Why MEMOIR misses after 1,000 sequential edits on the default model: room in one value, and
which of a name's tokens a key can be read at.

    python -m bench.memoir_capacity [--people 8] [--steps 150]

The sequential benchmark's 1,000 edits rewrite every relation of 200 people, so the editor's
one value per person (added at the subject token tracing picks) must carry five new facts.
Two measurements, on `--people` of those people with all five of their edits:

1. Room: the value search (the editor's texts: prompts, paraphrases and bio statements behind
   prefixes) run with one delta at the traced token, the same for more steps, one delta at
   each token from the traced one to the name's last, and one at every token of the name.
   Reported: each relation's target NLL after the search (mean token NLL, mean over people).
   The editor ships the first; the others say whether more tokens would hold five facts.
2. Reach: a key is the MLP input at its token averaged over the person's texts; a prompt reads
   it where its own mask shares at least the routing threshold of the key's mask. Per token of
   the name: the share of the person's texts and of its held-out paraphrases that reach the
   person's key there (a key nobody's prompt reaches adds nothing), and the share of other
   people's questions, at the same token of their names, that reach it (locality's risk).
"""
from __future__ import annotations

import argparse
import random

import pandas as pd
import torch

from bench.common import md_table, write_section
from bench.editing import default_model, sequential_requests
from evolution.editors.memoir.editor import MEMOIRHyperParams, key_statistics, person_texts
from evolution.editors.memoir.memory import install
from evolution.editors.rome.compute_v import (Rows, batch_of, frozen, head_logits, residual_after, rewrite_rows,
                                              target_nll)
from evolution.editors.rome.repr_tools import keys_at_subject, subject_index
from evolution.editors.rome.rome_main import chosen_layer
from evolution.editors.target import chosen_key_tokens


def name_length(agent, subject: str) -> int:
    return len(agent.tokenizer(" " + subject, add_special_tokens=False).input_ids)


def joint_nll(agent, layer: int, reqs, texts, slots: list[int], steps: int, lr: float = 0.1,
              weight_decay: float = 0.01) -> list[float]:
    """Each request's target NLL after searching one delta per token in `slots` (counted from
    the name's last, -1), all added on every text at once: the editor's value search with
    several tokens, less its KL rows (a fully rewritten person keeps only the bare name's) and
    its norm clamp (30 instead of 10 changed nothing, measured), and with the weight decay on
    |delta|^2 (the editor divides it by the value's norm, about 1 on this model)."""
    tok = agent.tokenizer
    subject = reqs[0].subject
    b = batch_of(rewrite_rows(tok, reqs, texts, list(range(len(reqs))), {}), Rows([], [], [], []),
                 tok.pad_token_id, agent.device)
    resid = residual_after(agent.model, layer, b)
    flat = [t for tx in texts for t in tx]
    site = [(j, subject_index(tok, text, subject, s), g) for j, text in enumerate(flat) for g, s in enumerate(slots)]
    rows, pos, grp = (torch.tensor(x, device=agent.device) for x in zip(*site))
    delta = torch.zeros(len(slots), resid.shape[-1], device=agent.device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=lr)
    with frozen(agent.model):
        for _ in range(steps):
            moved = resid.index_put((rows, pos), resid[rows, pos] + delta[grp])
            nll = target_nll(head_logits(agent.model, layer, moved, b, b.t_row, b.t_pos), b, len(reqs))
            loss = nll.sum() + weight_decay * (delta.norm(dim=1) ** 2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return nll.detach().tolist()


def keys_at(agent, mem, texts: list[str], subjects: list[str], token: int) -> torch.Tensor:
    return keys_at_subject(agent.model, agent.tokenizer, texts, subjects, mem.layer, {s: token for s in subjects})


@torch.no_grad()
def masks_of(mem, keys: torch.Tensor) -> list[set]:
    return [set(m.tolist()) for m in mem.mask_index(mem.features(keys.to(mem.memory.dtype)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--people", type=int, default=8)
    ap.add_argument("--steps", type=int, default=150)
    args = ap.parse_args()
    torch.manual_seed(0)
    base, world = default_model()
    allreqs = sequential_requests(base, world, 1000)
    people = random.Random(7).sample(sorted({r.subject for r in allreqs}), args.people)
    hp = MEMOIRHyperParams()
    layer, _ = chosen_layer(base, world, allreqs[:5], None)
    agent = base.spawn("capacity")
    mem = install(agent.model, layer, hp.width, hp.k, hp.threshold, hp.memory_seed,
                  *key_statistics(agent, world, layer, hp))
    mem.enabled = False                      # an empty memory: used for its features and masks only
    tokens, _, _ = chosen_key_tokens(agent, world, allreqs, [layer], None)
    others = [q for q in (world.query(p.name, "birth_city", "question") for p in world.people if p.taught)
              if q.subject not in people]

    room, reach = [], []
    for person in people:
        reqs = [r for r in allreqs if r.subject == person]
        texts = person_texts(agent, world, reqs, hp, 0)
        n, traced = name_length(agent, person), tokens[person]
        variants = {"traced token": ([traced], args.steps),
                    f"traced token, {2 * args.steps} steps": ([traced], 2 * args.steps),
                    "traced token to the last": (list(range(traced, 0)), args.steps),
                    "every token of the name": (list(range(-n, 0)), args.steps)}
        for name, (slots, steps) in variants.items():
            nll = joint_nll(agent, layer, reqs, texts, slots, steps)
            room.append({"keyed tokens": name, **{r.relation: x for r, x in zip(reqs, nll)}, "mean": sum(nll) / len(nll)})
        flat = [t for tx in texts for t in tx]
        held = [world.query(person, r.relation, f"heldout:{i}").prompt for r in reqs
                for i in range(len(world.relations[r.relation].heldout))]
        near = [q for q in others if name_length(agent, q.subject) == n][:40]
        for t in range(-n, 0):
            keys = keys_at(agent, mem, flat, [person] * len(flat), t)
            own, (key,) = masks_of(mem, keys), masks_of(mem, keys.mean(0, keepdim=True))
            share = lambda ms: sum(len(m & key) / mem.k >= mem.threshold for m in ms) / max(1, len(ms))
            role = "first" if t == -n else "last" if t == -1 else "middle"
            reach.append({"token of the name": role, "traced there": float(t == traced), "own texts": share(own),
                          "held-out paraphrases": share(masks_of(mem, keys_at(agent, mem, held, [person] * len(held), t))),
                          "other people": share(masks_of(mem, keys_at(agent, mem, [q.prompt for q in near],
                                                                      [q.subject for q in near], t)))})
        print(person, flush=True)

    room_df = pd.DataFrame(room).groupby("keyed tokens", sort=False).mean()
    reach_df = pd.DataFrame(reach).groupby("token of the name", sort=False).mean()
    print(room_df.to_string(), "\n", reach_df.to_string())
    note = (f"{args.people} people of the sequential benchmark, each with its five edits (every relation but "
            f"the derived company city), on the default model; the memory's layer ({layer}) and tokens from tracing, "
            f"as the editor picks them; {args.steps} Adam steps unless the row says more. Room: each relation's target "
            "NLL after the search (mean token NLL over the person's texts, mean over people; the editor stops at .02). "
            f"Reach: share of texts whose mask at that token of the name shares at least {mem.threshold} of the key's "
            "mask (the key averaged over the person's texts there); other people: questions about up to 40 other "
            "people with names of as many tokens, at the same token; traced there: the share of the people whose "
            "traced token it is.")
    write_section("memoir_capacity", "MEMOIR after 1,000 edits: room in one value, and where a key can be read",
                  "### Room for five new facts\n\n" + md_table(room_df, ".3f") + "\n\n### Reach of a key, per token "
                  "of the name\n\n" + md_table(reach_df, ".3f") + "\n\n" + note)


if __name__ == "__main__":
    main()
