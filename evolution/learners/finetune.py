"""Continual fine-tuning of one agent on texts or facts: its weights change, its base does not.

Two learners, both `agent.learn(data, method=..., **hparams) -> dict`:
- "finetune": full fine-tuning of every weight;
- "lora": a peft LoRA adapter trained on the same loss and then MERGED into the weights, so
  the agent stays a plain transformers model behind the Agent API and `agent.delta()` is
  exactly the adapter's low-rank product per module (agents/adapters.py exports it back).

The loss is the pretraining loss (every token) on padded batches of whole texts, so a learned
bio reads to the model like the bios it was pretrained on. `data` is texts, or facts
(`envs.facts.Fact`) rendered with the world's forms: statements from every training template
and QA lines from every training question (a fact taught only as statements is stored but
poorly extracted by questions, as Physics of LMs 3.1 found; QA lines make it answerable).

Replay: `replay` (texts or facts the agent knew before) fills `replay_share` of every batch,
the standard guard against forgetting. A non-finite loss restores every weight and raises.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import torch

from agents.architectures import layout_of
from agents.delta import changed_weights
from agents.hparams import HyperParams, is_int, is_number
from agents.methods import register_learner
from envs.facts import Fact

FORMS = ("both", "statements", "qa")


class LearnError(ValueError):
    """Bad learning input; the message names the field and the fix."""


# -- data ---------------------------------------------------------------------------------
def fact_texts(world, facts: list[Fact], forms: str = "both") -> list[str]:
    """Training texts for facts: one per statement template and/or one per training question."""
    if forms not in FORMS:
        raise LearnError(f"forms: {forms!r}; use one of {FORMS}")
    out = []
    for f in facts:
        rel = world.relation(f.relation)
        if f.object not in rel.candidates:
            raise LearnError(f"fact ({f.subject!r}, {f.relation!r}): object {f.object!r} is not a candidate "
                             "of the relation")
        if forms in ("both", "statements"):
            out += [rel.statement(f.subject, f.object, i) for i in range(len(rel.templates))]
        if forms in ("both", "qa"):
            out += [f"{rel.question(f.subject, i)} {f.object} ." for i in range(len(rel.questions))]
    return out


def as_texts(data, world, forms: str, field: str) -> list[str]:
    """Texts from a list of texts or of Facts (these need the world for their forms)."""
    if data is None:
        return []
    data = list(data)
    if not data:
        raise LearnError(f"{field}: empty; give texts or facts")
    if all(isinstance(d, str) for d in data):
        if not all(d.strip() for d in data):
            raise LearnError(f"{field}: holds an empty text")
        return data
    if all(isinstance(d, Fact) for d in data):
        if world is None:
            raise LearnError(f"{field}: facts need world= to be rendered as texts (the relation's forms)")
        return fact_texts(world, data, forms)
    raise LearnError(f"{field}: give a list of texts or a list of envs.facts.Fact, not a mix")


def text_batches(texts: list[str], batch_size: int, rng: random.Random):
    order = list(range(len(texts)))
    rng.shuffle(order)
    for i in range(0, len(order), batch_size):
        yield [texts[j] for j in order[i:i + batch_size]]


def mixed_batches(texts: list[str], replay: list[str], batch_size: int, replay_share: float, rng: random.Random):
    """Batches of `batch_size` new texts (one shuffled pass) topped up with replayed texts so
    that they are `replay_share` of each batch: replay adds rows, not steps, so a run with
    replay takes as many steps on the news as one without."""
    if not replay or replay_share <= 0:
        yield from text_batches(texts, batch_size, rng)
        return
    n_old = max(1, round(batch_size * replay_share / (1 - replay_share)))
    for batch in text_batches(texts, batch_size, rng):
        yield batch + [rng.choice(replay) for _ in range(round(len(batch) * n_old / batch_size) or 1)]


def padded_lm_loss(model, tokenizer, texts: list[str], device) -> torch.Tensor:
    enc = tokenizer(texts, return_tensors="pt", padding=True).to(device)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    return model(**enc, labels=labels).loss


# -- hyperparameters ------------------------------------------------------------------------
@dataclass
class LearnHyperParams(HyperParams):
    method = "learn"
    error = LearnError

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 16
    seed: int = 0
    replay_share: float = 0.0     # share of each batch drawn from `replay`
    forms: str = "both"           # facts as "statements", "qa" lines, or "both"
    # LoRA only
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ()  # LoRA's target modules; () = the model family's (agents/architectures.py)

    def rules(self) -> dict[str, tuple[bool, str]]:
        return {"epochs": (is_int(self.epochs, 1), "an int >= 1"),
                "lr": (is_number(self.lr, above=0), "a number > 0"),
                "batch_size": (is_int(self.batch_size, 1), "an int >= 1"),
                "replay_share": (is_number(self.replay_share, least=0) and self.replay_share < 1, "a number in [0, 1)"),
                "forms": (self.forms in FORMS, f"one of {FORMS}"),
                "rank": (is_int(self.rank, 1), "an int >= 1"),
                "alpha": (is_number(self.alpha, above=0), "a number > 0"),
                "targets": (all(isinstance(t, str) and t for t in self.targets),
                            "a list of module names (empty: the model family's)")}


# -- the loop -------------------------------------------------------------------------------
def train_texts(model, tokenizer, device, texts: list[str], replay: list[str], hp: LearnHyperParams,
                params) -> list[float]:
    """AdamW on `params` over `epochs` passes; raises FloatingPointError on a non-finite loss."""
    rng = random.Random(hp.seed)
    opt = torch.optim.AdamW(params, lr=hp.lr, weight_decay=0.0)
    losses = []
    model.train()
    try:
        for _ in range(hp.epochs):
            for batch in mixed_batches(texts, replay, hp.batch_size, hp.replay_share, rng):
                loss = padded_lm_loss(model, tokenizer, batch, device)
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"learn: loss became {loss.item()}; weights restored, lower lr ({hp.lr})")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
    finally:
        model.eval()
    return losses


def _report(method: str, texts, replay, losses, t0, **extra) -> dict:
    per_epoch = max(1, len(losses) // max(1, extra.pop("epochs")))
    return {"method": method, "texts": len(texts), "replay_texts": len(replay), "steps": len(losses),
            "loss_first": losses[0], "loss_last": losses[-1],
            "loss_last_epoch": sum(losses[-per_epoch:]) / per_epoch, "seconds": round(time.time() - t0, 3), **extra}


class _Full:
    """Full fine-tuning: every weight trains in place."""

    def __init__(self, model, hp: LearnHyperParams):
        self.trained, self.params, self.extra = model, list(model.parameters()), {}

    def undo(self):
        return self.trained

    def result(self, before: dict) -> tuple:
        """(the trained model, its update: every weight's dense change)."""
        return self.trained, changed_weights(self.trained, before)


class _Lora:
    """A peft LoRA adapter on `hp.targets`, merged into the weights when training succeeds."""

    def __init__(self, model, hp: LearnHyperParams):
        from peft import LoraConfig, get_peft_model
        from transformers.pytorch_utils import Conv1D
        targets = hp.targets or layout_of(model).lora
        kinds = (torch.nn.Linear, Conv1D)
        present = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, kinds)}
        missing = [t for t in targets if t not in present]
        if missing:
            raise LearnError(f"lora: target module {missing[0]!r} is not a Linear layer of this model; "
                             f"available: {sorted(present)}")
        wrapped = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                          if not isinstance(m, kinds) and n.rsplit(".", 1)[-1] in targets})
        if wrapped:
            raise LearnError(f"lora: module {wrapped[0]!r} is wrapped here (a WISE side memory?), peft cannot adapt "
                             "it; leave it out of targets= or learn with method='finetune'")
        conv = any(isinstance(m, Conv1D) and n.rsplit(".", 1)[-1] in targets for n, m in model.named_modules())
        cfg = LoraConfig(r=hp.rank, lora_alpha=hp.alpha, target_modules=list(targets), lora_dropout=0.0,
                         bias="none", init_lora_weights=True, fan_in_fan_out=conv)
        torch.manual_seed(hp.seed)
        self.trained = get_peft_model(model, cfg)
        self.params = [p for p in self.trained.parameters() if p.requires_grad]
        self.extra = {"rank": hp.rank, "trainable_parameters": sum(p.numel() for p in self.params),
                      "modules": list(targets)}

    def undo(self):
        return self.trained.unload()

    def factors(self) -> dict:
        """Each adapted weight's change as its LoRA factors (B x scaling, A), in the weight's own
        orientation and under its name in the merged model."""
        from peft.tuners.lora import LoraLayer
        out = {}
        for n, m in self.trained.named_modules():
            if not isinstance(m, LoraLayer) or "default" not in m.lora_A:
                continue
            b = m.lora_B["default"].weight.detach() * m.scaling["default"]
            a = m.lora_A["default"].weight.detach()
            if b.abs().max() > 0:
                name = n.removeprefix("base_model.model.") + ".weight"
                out[name] = (a.T.contiguous(), b.T.contiguous()) if m.fan_in_fan_out else (b.contiguous(), a.clone())
        return out

    def result(self, before: dict) -> tuple:
        """(the model with the adapter merged in, its update: the adapter's factors)."""
        update = self.factors()
        merged = self.trained.merge_and_unload()
        for p in merged.parameters():
            p.requires_grad_(True)
        return merged, update


def learn_with(way, method: str, agent, data, world, replay, hparams: dict) -> dict:
    """The one learning loop of both learners: read the hparams and data, train `way`'s
    parameters, and leave the weights as they were if anything fails."""
    hp = LearnHyperParams.read(hparams, also_known=("world", "replay"))
    texts = as_texts(data, world, hp.forms, "data")
    if not texts:
        raise LearnError("learn: give a non-empty list of non-empty texts (or facts with world=)")
    old = as_texts(replay, world, hp.forms, "replay")
    if hp.replay_share > 0 and not old:
        raise LearnError("learn: replay_share > 0 but no replay data; pass replay=[texts or facts]")
    before = {k: v.detach().clone() for k, v in agent.model.state_dict().items()}
    t0 = time.time()
    w = way(agent.model, hp)
    try:
        losses = train_texts(w.trained, agent.tokenizer, agent.device, texts, old, hp, w.params)
    except Exception:
        agent.model = w.undo()
        agent.model.load_state_dict(before)
        agent.model.eval()
        raise
    model, update = w.result(before)
    agent.model = model.eval()
    return {**_report(method, texts, old, losses, t0, epochs=hp.epochs, replay_share=hp.replay_share, **w.extra),
            "update": update}


@register_learner("finetune", hparams=LearnHyperParams, also=('world', 'replay'))
def finetune(agent, data, world=None, replay=None, **hparams) -> dict:
    """Full fine-tuning on texts or facts (with `world`), optionally replaying `replay`."""
    return learn_with(_Full, "finetune", agent, data, world, replay, hparams)


@register_learner("lora", hparams=LearnHyperParams, also=('world', 'replay'))
def lora(agent, data, world=None, replay=None, **hparams) -> dict:
    """LoRA fine-tuning (peft), merged into the weights afterwards (see the module docstring)."""
    return learn_with(_Lora, "lora", agent, data, world, replay, hparams)
