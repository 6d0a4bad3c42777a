"""The key k*: the down-projection's input at the subject's edited token, averaged over the
request's prompt alone and behind a few random corpus sentences, so the edit fires for
the subject in any context, not for one string. And the left vector C^-1 k*.
"""
from __future__ import annotations

import random

import torch

from evolution.editors.requests import EditRequest
from evolution.editors.rome.repr_tools import keys_at_subject


def context_prefixes(agent, world, n: int, seed: int, subject: str = "", relation: str = "") -> list[str]:
    """`n` short texts to put before a prompt. With a world that knows the subject: one or
    two QA pairs about the subject's other relations, the format pretraining shows QA in
    (packed documents are isolated, so the model never saw another person's text before a
    question). Otherwise one statement about another person, or without a world the
    model's own samples."""
    if n == 0:
        return []
    rng = random.Random(seed)
    if world is not None:
        names = {p.name for p in world.people}
        if subject in names:
            moved = {relation} | {d for d, (src, _) in world.derived.items() if src == relation}
            rels = [r for r in sorted(world.epochs[-1][subject]) if r not in moved]
            if rels:
                out = []
                for _ in range(n):
                    picked = rng.sample(rels, min(len(rels), rng.choice((1, 2))))
                    out.append(" ".join(f"{world.relations[r].question(subject, rng.randrange(3))} "
                                        f"{world.truth(subject, r)} ." for r in picked))
                return out
        people = [p.name for p in world.people if p.taught and p.name != subject] or sorted(names - {subject})
        out = []
        for _ in range(n):
            s = rng.choice(people)
            r = world.known_relation(s, rng.choice(sorted(world.relations)), rng)
            out.append(world.relations[r].statement(s, world.truth(s, r), rng.randrange(3)))
        return out
    tok, model = agent.tokenizer, agent.model
    torch.manual_seed(seed)
    ids = tok([""] * n, return_tensors="pt").input_ids.to(agent.device)
    with torch.no_grad():
        gen = model.generate(input_ids=ids, do_sample=True, max_new_tokens=10, pad_token_id=tok.pad_token_id)
    return [tok.decode(g[1:], skip_special_tokens=True).strip() + " ." for g in gen]


def prompt_forms(request: EditRequest, world=None, paraphrases: bool = True, statements: bool = True) -> list[str]:
    """The request's prompt, then, given a world that has the relation and the subject: with
    `paraphrases` the relation's other *training* question forms, with `statements` its bio
    sentences cut before the object ("The birthday of X is"). Both are text pretraining
    showed; the held-out question forms are never used: they measure generalization.

    Why statements: a key is read at a subject token, after the words before it. On the default
    model, at the last name token, the held-out birth-date questions ("What is the birthday of
    X?") gave keys that met the update at 0.34-0.44 of its strength when k* was averaged over
    the question forms alone (other relations: 0.74-1.10), and generalization was .10 for birth
    dates (.29 with statements); the bios say "The birthday of X is", so averaging over them
    covers that context. At the token tracing picks (target.key_tokens) it matters less:
    generalization .95 with statements, .935 without (100 single ROME edits)."""
    forms = [request.prompt]
    if world is None or request.relation not in world.relations \
            or request.subject not in {p.name for p in world.people}:
        return forms
    rel = world.relations[request.relation]
    if paraphrases:
        forms += [q for i in range(len(rel.questions)) if (q := rel.question(request.subject, i)) != request.prompt]
    if statements:
        forms += [q for t in rel.templates if (q := rel.prompt(request.subject, t)) not in forms]
    return forms


def rewrite_texts(forms: list[str], prefixes: list[str]) -> list[str]:
    """Each prompt form alone, then each prefix before one form (in turn)."""
    return list(forms) + [f"{p} {forms[i % len(forms)]}" for i, p in enumerate(prefixes)]


def subject_key(agent, request: EditRequest, layer: int, texts: list[str], tokens: dict[str, int]) -> torch.Tensor:
    """k* [d_ff]: the mean key over the request's rewrite texts, at the subject's edited token."""
    return keys_at_subject(agent.model, agent.tokenizer, texts, [request.subject] * len(texts), layer, tokens).mean(0)


def left_vector(k_star: torch.Tensor, cov_inv: torch.Tensor) -> torch.Tensor:
    """u = C^-1 k*: the direction the rank-one update reads keys along."""
    return (cov_inv @ k_star.double()).float()
