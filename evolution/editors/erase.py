"""Erasing a fact: the editors `ga` (gradient ascent), `npo` (negative preference
optimization) and `erase` (rewrite toward what the model holds for people it never learned).

An erase request names a fact, `{"subject", "relation"}`, without a target: the model is to
stop knowing it. Each method trains one layer's MLP (layer 0, where the default model keeps
its facts: docs/design.md) on the fact's prompts (its question, the relation's other training
questions and its bio statements; the held-out questions measure whether the erasure
generalizes). A retain term holds the model on the same people's other relations and on other
people's facts: KL to the unedited model's next-token distribution over the whole vocabulary,
at every token of each fact's text and its unedited answer (held over the candidates alone,
the greedy text drifted: locality by generation .59 at 100 erased facts), asked in the
relation's other training forms, so the question the metrics ask stays held out. Training
stops once the erased facts' truth is no likelier than for people the model was never taught
and no more often its answer (the "unknown" level, measured on the agent before the call,
within `margin`: the mean probability alone let 10 of 100 erased facts keep the truth as
their answer at a low probability). Each fact has its own level, the never-taught people's
mean probability of their own truth for its relation, and leaves the forget batch once it is
there (below the level and not the argmax), so the push goes to the facts still known and
does not drive the finished ones, and the layer, on past it. The three differ in what they
push on:

- `ga` lowers the truth's log-probability (unbounded: it overshoots unless stopped);
- `npo` lowers it relative to the unedited model through a log-sigmoid (Zhang et al., 2024),
  so the push fades as the fact goes: -(2/beta) log sigmoid(-beta (log p - log p_ref));
- `erase` moves the whole belief over the candidates to what the model holds about strangers
  for that relation (KL): their mean belief, with the truth given the probability strangers
  give their own truth and the rest rescaled (the plain mean favours the relation's common
  answer, and 13 of 100 facts whose truth was that answer kept it), so the model answers as it
  does about strangers, not "anything but the truth", which is what the other two push toward.
  (Unstopped, ga and npo overshot and their erased facts relearned slower than new ones, a
  memory of avoiding the truth; stopped per fact, all three only hide the fact: it relearns
  2-4x faster than a new one; docs/benchmarks.md, "Erasure".)

Whether the fact is gone or only hidden is measured apart (evolution.residue: a linear probe
on hidden states, and how fast fine-tuning brings it back).
"""
from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from agents.delta import changed_weights
from agents.hparams import HyperParams, is_int, is_number
from agents.methods import register_editor
from agents.scoring import mask_dtype, packed_rows, score_packed
from envs.facts import Query
from evolution.editors.ft_l import MODULES, kept_near, row_logprobs, target_batch, trainable_only, trained_weights
from evolution.editors.requests import (EditError, EditReport, check_finite, read_requests,
                                        weights_restored_on_error)
from evolution.editors.rome.compute_u import prompt_forms
from evolution.editors.rome.repr_tools import padded


@dataclass
class EraseRequest:
    subject: str
    relation: str
    prompt: str | None = None
    truth: str | None = None     # filled from the world by validation: what the model is to stop answering

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def as_erase_request(row) -> EraseRequest:
    """An EraseRequest from a request, a dict {subject, relation[, prompt]} or a (subject,
    relation) tuple."""
    if isinstance(row, EraseRequest):
        return row
    if isinstance(row, dict):
        missing = [k for k in ("subject", "relation") if k not in row or row[k] in (None, "")]
        if missing:
            raise EditError(f"erase request {row!r}: missing field {missing[0]!r}; each erase request needs "
                            "'subject' and 'relation' (and optionally 'prompt')")
        if "target" in row:
            raise EditError(f"erase request {row!r}: an erase request has no 'target' (the model is to stop "
                            "knowing the fact); drop it, or use an editor such as rome to change the fact")
        extra = set(row) - {"subject", "relation", "prompt"}
        if extra:
            raise EditError(f"erase request {row!r}: unknown field {sorted(extra)[0]!r}; allowed: "
                            "subject, relation, prompt")
        return EraseRequest(str(row["subject"]), str(row["relation"]), row.get("prompt"))
    if isinstance(row, (tuple, list)) and len(row) == 2:
        return EraseRequest(*row)
    if hasattr(row, "subject") and hasattr(row, "relation"):   # an EditRequest or a Fact: its fact
        return EraseRequest(row.subject, row.relation, getattr(row, "prompt", None))
    raise EditError(f"erase request {row!r}: give a dict with subject/relation or a (subject, relation) tuple")


def read_erase_requests(path: str | Path) -> list[EraseRequest]:
    """Erase requests from a JSON-lines file, one {subject, relation[, prompt]} per line."""
    return read_requests(path, parse=as_erase_request)


def known_fact_requests(agent, world, n: int, seed: int = 0) -> list[EraseRequest]:
    """`n` erase requests on facts the agent answers right, one per person (taught people,
    relations not derived from another), drawn with `seed`: what an erasure benchmark erases."""
    facts = [(p.name, r) for p in world.people if p.taught for r in world.relations_of(p.name)
             if r not in world.derived]
    known = [f for f, b in zip(facts, agent.beliefs([world.query(s, r) for s, r in facts])) if b.correct]
    rng = random.Random(seed)
    one_each: dict[str, tuple[str, str]] = {}
    for s, r in rng.sample(known, len(known)):
        one_each.setdefault(s, (s, r))
    if n > len(one_each):
        raise EditError(f"n: {n} facts on distinct people, but the agent knows facts of {len(one_each)} people; "
                        "lower n")
    return [EraseRequest(s, r) for s, r in rng.sample(sorted(one_each.values()), n)]


def validate_erase_requests(agent, requests, world) -> list[EraseRequest]:
    """Resolved erase requests (prompt and truth from the world), or an EditError naming the
    first bad one. A fact the agent does not answer now is refused: there is nothing to erase."""
    if world is None:
        raise EditError("world: erasure needs the world (the fact's truth, its candidates, and the people "
                        "never taught, whose belief is the erased fact's target); pass world=")
    if isinstance(requests, (EraseRequest, dict)):
        requests = [requests]
    reqs = [as_erase_request(r) for r in requests]
    if not reqs:
        raise EditError("requests: empty; give at least one erase request")
    names, out, seen = {p.name for p in world.people}, [], set()
    for i, r in enumerate(reqs):
        where = f"erase request {i} ({r.subject!r}, {r.relation!r})"
        if r.relation not in world.relations:
            raise EditError(f"{where}: unknown relation {r.relation!r}; known: {sorted(world.relations)}")
        if r.relation in world.derived:
            raise EditError(f"{where}: {r.relation!r} follows from {world.derived[r.relation][0]!r}; erase that")
        if r.subject not in names or not world.has(r.subject, r.relation):
            raise EditError(f"{where}: the world has no such fact; erase a fact of a person in the world")
        if (r.subject, r.relation) in seen:
            raise EditError(f"{where}: the same fact twice; give each fact once")
        seen.add((r.subject, r.relation))
        prompt = r.prompt or world.query(r.subject, r.relation, "question").prompt
        if r.subject not in prompt:
            raise EditError(f"{where}: subject {r.subject!r} does not occur in the prompt {prompt!r}")
        out.append(EraseRequest(r.subject, r.relation, prompt, world.truth(r.subject, r.relation)))
    qs = [Query(r.subject, r.relation, r.prompt, world.relations[r.relation].candidates, r.truth) for r in out]
    for i, (r, b) in enumerate(zip(out, agent.beliefs(qs))):
        if b.answer != r.truth:
            raise EditError(f"erase request {i} ({r.subject!r}, {r.relation!r}): the agent does not know this "
                            f"fact (it answers {b.answer!r}, the truth is {r.truth!r}), so there is nothing to "
                            "erase; drop the request")
    return out


@dataclass
class Unknown:
    """What the agent holds about people it was never taught, per relation (question form):
    its mean belief over the candidates, how likely it finds their truth (p_truth), and how
    often its argmax is their truth anyway (accuracy)."""
    belief: dict[str, torch.Tensor]
    p_truth: dict[str, float]
    accuracy: dict[str, float]

    def target(self, relation: str, candidates, truth: str) -> torch.Tensor:
        """The belief an erased fact should hold: the strangers' mean belief with the truth at
        the strangers' own-truth probability and the rest rescaled. (The mean belief as it is
        favours the relation's most common answer: a fact whose truth is that answer kept it,
        13 of 100 erased facts on the default model.)"""
        q = self.belief[relation].clone()
        i = list(candidates).index(truth)
        q[i] = 0.0
        q = q / q.sum().clamp_min(1e-12) * (1 - self.p_truth[relation])
        q[i] = self.p_truth[relation]
        return q


def unknown_beliefs(agent, world, relations) -> Unknown:
    """The agent's never-taught level on `relations`: what an erased fact should sink to."""
    out = Unknown({}, {}, {})
    for rel in sorted(set(relations)):
        people = [p.name for p in world.people if not p.taught and world.has(p.name, rel)]
        if not people:
            raise EditError(f"relation {rel!r}: the world has no never-taught person with it, so there is no "
                            "'unknown' belief to erase toward; use a world with untaught_fraction > 0")
        beliefs = agent.beliefs([world.query(s, rel, "question") for s in people])
        out.belief[rel] = torch.tensor([[b.prob(c) for c in world.relations[rel].candidates] for b in beliefs]).mean(0)
        out.p_truth[rel] = sum(b.p_truth for b in beliefs) / len(beliefs)
        out.accuracy[rel] = sum(b.correct for b in beliefs) / len(beliefs)
    return out


def truth_now(agent, world, reqs: list[EraseRequest]) -> tuple[list[float], list[bool]]:
    """Per request: the truth's probability now and whether it is the argmax, question form."""
    qs = [Query(r.subject, r.relation, r.prompt, world.relations[r.relation].candidates, r.truth) for r in reqs]
    beliefs = agent.beliefs(qs)
    return [b.p_truth for b in beliefs], [b.correct for b in beliefs]


def retain_queries(world, reqs: list[EraseRequest], n_other: int, seed: int) -> list[Query]:
    """The erased people's other relations (not derived from an erased one), then `n_other`
    facts of taught people no request names: what the retain term holds. Asked in the
    relation's other training forms (its paraphrase questions and bio statements, in turn),
    never its first question, the form the metrics ask, so locality is measured on prompts
    the retain term did not see (a relation with one question and no template is asked so)."""
    erased = {(r.subject, r.relation) for r in reqs}
    for r in reqs:
        erased |= {(r.subject, d) for d, (src, _) in world.derived.items() if src == r.relation}
    subjects = {r.subject for r in reqs}
    same = [(s, rel) for s in sorted(subjects) for rel in world.relations_of(s) if (s, rel) not in erased]
    pool = [(p.name, rel) for p in world.people if p.taught and p.name not in subjects
            for rel in world.relations_of(p.name)]
    other = random.Random(seed).sample(pool, min(n_other, len(pool)))
    def form(rel: str, k: int) -> str:
        r = world.relations[rel]
        forms = [f"question:{i}" for i in range(1, len(r.questions))] + [f"template:{i}" for i in range(len(r.templates))]
        return forms[k % len(forms)] if forms else "question"
    return [world.query(s, rel, form(rel, k)) for k, (s, rel) in enumerate(same + other)]


def candidate_distributions(model, tokenizer, prompts: list[str], candidates: list[tuple[str, ...]]) -> list[torch.Tensor]:
    """Per prompt, log-softmax over its candidates of their summed log-probs, with gradients
    (the scorer's packed layout: each prompt once, its candidates after it)."""
    rows = packed_rows(tokenizer, prompts, candidates)
    device = next(model.parameters()).device
    fwd = lambda idx, ids, pos, mask: model(input_ids=ids, position_ids=pos, attention_mask=mask).logits
    scores = score_packed(fwd, rows, tokenizer.pad_token_id, len(rows), mask_dtype(model), device)
    return [torch.log_softmax(s, 0) for s in scores]


def next_token_logprobs(model, ids, mask) -> torch.Tensor:
    """[b, T, vocab] log-softmax of the next-token logits."""
    return torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)


def token_kl(ref: torch.Tensor, cur: torch.Tensor, mask) -> torch.Tensor:
    """KL(ref || cur) of the next-token distributions, summed over each text's real tokens and
    averaged over texts (a per-token mean would let the prompt's tokens, which barely move,
    dilute the answer's: ga and npo then wiped out locality, .2 at 100 erased facts)."""
    kl = (ref.exp() * (ref - cur)).sum(-1)
    return (kl * mask.to(kl.dtype)).sum(1).mean()


def kl_to(targets: list[torch.Tensor], logps: list[torch.Tensor]) -> torch.Tensor:
    """Mean over rows of KL(target || model), targets as probabilities."""
    return torch.stack([(q * (q.clamp_min(1e-12).log() - lp)).sum() for q, lp in zip(targets, logps)]).mean()


@dataclass
class EraseHyperParams(HyperParams):
    method = "erase"
    error = EditError

    layer: int = 0
    module: str = "mlp"            # "mlp": all of the layer's MLP projections; "down_proj": its output only
    lr: float = 2e-3               # erase's bounded KL takes a larger step than ga's and npo's push (1e-3)
    steps: int = 400
    norm_constraint: float = 0.0   # L-inf bound on each weight's change; 0 = unconstrained
    retain_weight: float = 5.0     # weight of the KL that holds the rest of the model
    retain: int = 200              # other taught people's facts in the retain term (besides the same people's)
    retain_batch: int = 64         # retain queries per step, drawn afresh each step (0: all of them)
    forget_batch: int = 128        # forget prompts per step, drawn afresh each step (0: all of them)
    margin: float = 0.01           # stop once the erased truths' mean probability and accuracy are each within
                                   # this of the never-taught level
    forms: bool = True             # train on the relation's other training questions and bio statements too
    check_every: int = 1           # steps between checks of the stopping rule
    seed: int = 0

    def rules(self) -> dict[str, tuple[bool, str]]:
        return {"layer": (is_int(self.layer, 0), "a layer index"),
                "module": (self.module in MODULES, f"one of {MODULES}"),
                "lr": (is_number(self.lr, above=0), "a number > 0"),
                "steps": (is_int(self.steps, 1), "an int >= 1"),
                "norm_constraint": (is_number(self.norm_constraint, least=0), "a finite number >= 0 (0: unconstrained)"),
                "retain_weight": (is_number(self.retain_weight, least=0), "a finite number >= 0"),
                "retain": (is_int(self.retain, 0), "an int >= 0"),
                "retain_batch": (is_int(self.retain_batch, 0), "an int >= 0 (0: every retain query each step)"),
                "forget_batch": (is_int(self.forget_batch, 0), "an int >= 0 (0: every forget prompt each step)"),
                "margin": (is_number(self.margin, least=0), "a finite number >= 0"),
                "check_every": (is_int(self.check_every, 1), "an int >= 1"),
                "seed": (is_int(self.seed), "an int")}


@dataclass
class GAHyperParams(EraseHyperParams):
    """ga and npo push on the truth alone, so nothing in the forget loss holds the other answers:
    at erase's retain weight (5, 200 people) their locality was .83-.87 at 100 erased facts, at
    50 with 400 people .94-.98 (docs/benchmarks.md, "Erasure")."""
    method = "ga"
    lr: float = 1e-3
    steps: int = 800
    retain_weight: float = 50.0
    retain: int = 400


@dataclass
class NPOHyperParams(GAHyperParams):
    method = "npo"
    beta: float = 0.1

    def rules(self) -> dict[str, tuple[bool, str]]:
        return {**super().rules(), "beta": (is_number(self.beta, above=0), "a number > 0")}


def forget_rows(world, reqs: list[EraseRequest], forms: bool) -> list[tuple[EraseRequest, str]]:
    """(request, prompt) per prompt the erasure trains on."""
    return [(r, p) for r in reqs for p in (prompt_forms(r, world) if forms else [r.prompt])]


def unlearn(method: str, agent, requests, world, hp: EraseHyperParams, forget_loss) -> EditReport:
    """The loop the three erasers share: `forget_loss(model, tok, rows, pick)` pushes the facts
    out on the rows `pick` (a fresh draw of `forget_batch` each step, from the prompts of facts
    not yet at the never-taught level: a fact that got there is left alone, which keeps ga and
    npo from driving it, and the layer, on past it), a KL to the unedited model holds the
    retain queries, and training stops once the erased truths are as likely, and as often the
    argmax, as for never-taught people (means over the requests, within `margin`)."""
    reqs = validate_erase_requests(agent, requests, world)
    model, tok = agent.model, agent.tokenizer
    params = trained_weights(model, hp.layer, hp.module)
    unknown = unknown_beliefs(agent, world, {r.relation for r in reqs})
    mean = lambda xs: sum(xs) / len(xs)
    fact_level = [unknown.p_truth[r.relation] for r in reqs]
    level, acc_level = mean(fact_level), mean([unknown.accuracy[r.relation] for r in reqs])
    rows = forget_rows(world, reqs, hp.forms)
    index = {id(r): i for i, r in enumerate(reqs)}
    row_fact = [index[id(r)] for r, _ in rows]
    retain = retain_queries(world, reqs, hp.retain, hp.seed)
    if retain:
        answers = [b.answer for b in agent.beliefs(retain)]
        ids, mask = padded(tok([f"{q.prompt} {a}" for q, a in zip(retain, answers)]).input_ids, tok.pad_token_id,
                           agent.device)
        with torch.no_grad():
            retain_ref = next_token_logprobs(model, ids, mask)
    rng = random.Random(hp.seed)
    p_fact, correct = truth_now(agent, world, reqs)
    p_before, acc_before = mean(p_fact), mean(correct)
    reached = lambda: mean(p_fact) <= level + hp.margin and mean(correct) <= acc_level + hp.margin
    at_level = lambda i: not correct[i] and p_fact[i] <= fact_level[i] + hp.margin
    t0, losses, step = time.time(), [], 0
    with weights_restored_on_error(model) as before, trainable_only(model, params):
        forget_loss.prepare(model, tok, rows, unknown, world)
        opt = torch.optim.Adam(params, lr=hp.lr)
        start = [p.detach().clone() for p in params]
        for step in range(hp.steps + 1):
            if step % hp.check_every == 0 or step == hp.steps:
                if step:  # at step 0 the weights are those p_before was read on
                    p_fact, correct = truth_now(agent, world, reqs)
                if reached() or step == hp.steps:
                    break
                active = [j for j, i in enumerate(row_fact) if not at_level(i)]
            loss = torch.zeros((), device=agent.device)
            if active:
                pick = sorted(rng.sample(active, min(hp.forget_batch or len(active), len(active))))
                loss = forget_loss(model, tok, rows, pick)
            if retain and hp.retain_weight > 0:
                pick = torch.tensor(rng.sample(range(len(retain)), min(hp.retain_batch or len(retain), len(retain))))
                loss = loss + hp.retain_weight * token_kl(retain_ref[pick], next_token_logprobs(model, ids[pick], mask[pick]),
                                                          mask[pick])
            if not loss.requires_grad:
                break
            check_finite(f"{method} loss", loss.detach(), f"lower lr ({hp.lr})")
            losses.append(loss.item())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            kept_near(params, start, hp.norm_constraint, f"{method} update of layer {hp.layer}", f"lower lr ({hp.lr})")
    return EditReport(method, len(reqs), round(time.time() - t0, 4), [hp.layer], reached(),
                      {"steps": step, "p_truth_before": p_before, "p_truth_after": mean(p_fact), "unknown_level": level,
                       "accuracy_before": acc_before, "accuracy_after": mean(correct), "unknown_accuracy": acc_level,
                       "facts_at_level": sum(map(at_level, range(len(reqs)))),
                       "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
                       "forget_prompts": len(rows), "retain_queries": len(retain), "module": hp.module},
                      changed_weights(model, before))


class TruthLogLikelihood:
    """ga's forget loss: the mean summed log-probability of the truth after each prompt."""

    def prepare(self, model, tok, rows, unknown, world):
        self.batch = target_batch(tok, [p for _, p in rows], [r.truth for r, _ in rows],
                                  next(model.parameters()).device)

    def _picked(self, pick):
        return [t[pick] for t in self.batch]

    def __call__(self, model, tok, rows, pick):
        return row_logprobs(model, *self._picked(pick)).mean()


class NegativePreference(TruthLogLikelihood):
    """npo's forget loss: -(2/beta) mean log sigmoid(-beta (log p - log p_ref))."""

    def __init__(self, beta: float):
        self.beta = beta

    def prepare(self, model, tok, rows, unknown, world):
        super().prepare(model, tok, rows, unknown, world)
        with torch.no_grad():
            self.ref = row_logprobs(model, *self.batch)

    def __call__(self, model, tok, rows, pick):
        ratio = row_logprobs(model, *self._picked(pick)) - self.ref[pick]
        return -(2 / self.beta) * torch.nn.functional.logsigmoid(-self.beta * ratio).mean()


class TowardUnknown:
    """erase's forget loss: KL from the never-taught belief (Unknown.target: the truth as likely
    as a stranger's truth) to the model's belief over the relation's candidates, after each
    prompt."""

    def prepare(self, model, tok, rows, unknown, world):
        self.cands = [world.relations[r.relation].candidates for r, _ in rows]
        self.targets = [unknown.target(r.relation, c, r.truth) for (r, _), c in zip(rows, self.cands)]

    def __call__(self, model, tok, rows, pick):
        return kl_to([self.targets[i] for i in pick],
                     candidate_distributions(model, tok, [rows[i][1] for i in pick], [self.cands[i] for i in pick]))


def _eraser(fn):
    fn.request_kind = "erase"       # knowevo edit reads its requests as erase requests
    return fn


@_eraser
@register_editor("ga", hparams=GAHyperParams, also=("world",))
def ga(agent, requests, world=None, **hparams) -> EditReport:
    """Erase facts by gradient ascent on their truth's likelihood, stopped at the never-taught
    level. Bad requests or hparams raise before any weight moves."""
    hp = GAHyperParams.read(hparams, also_known=("world",))
    return unlearn("ga", agent, requests, world, hp, TruthLogLikelihood())


@_eraser
@register_editor("npo", hparams=NPOHyperParams, also=("world",))
def npo(agent, requests, world=None, **hparams) -> EditReport:
    """Erase facts by negative preference optimization against the unedited model."""
    hp = NPOHyperParams.read(hparams, also_known=("world",))
    return unlearn("npo", agent, requests, world, hp, NegativePreference(hp.beta))


@_eraser
@register_editor("erase", hparams=EraseHyperParams, also=("world",))
def erase(agent, requests, world=None, **hparams) -> EditReport:
    """Erase facts by moving the belief over the candidates to what the agent holds for people
    it was never taught."""
    hp = EraseHyperParams.read(hparams, also_known=("world",))
    return unlearn("erase", agent, requests, world, hp, TowardUnknown())
