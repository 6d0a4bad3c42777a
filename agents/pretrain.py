"""Pretrain the default model from scratch on the world's text; one readable loop.

What it reads is the world's corpus (envs/corpus.py: bios, QA, social texts and their knobs,
held here as `PretrainConfig.corpus`), sampled afresh every batch, so augmentation is free.
Documents are packed end to end into fixed-length rows; the loop is AdamW with warm-up and
a cosine decay. `qa_mode` chooses mixed training (QA from the start) or bios first, then QA.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from agents.model import PRESETS, ModelShape, tiny_llama
from agents.tokenizer import word_tokenizer
from envs.corpus import CorpusConfig, corpus_words, sample_texts
from envs.world import World

FORMAT_VERSION = 2  # bump when the data mix or loop changes: it invalidates the cache


@dataclass
class PretrainConfig:
    people: int = 300
    seed: int = 0
    qa_fraction: float = 0.5
    untaught_fraction: float = 0.2
    shape: ModelShape = field(default_factory=ModelShape)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    steps: int = 0                      # 0: chosen from the number of people
    batch_size: int = 16                # rows of `row_len` packed tokens per step
    row_len: int = 128
    lr: float = 3e-3
    warmup: int = 100
    qa_mode: str = "mixed"              # "mixed" | "finetune" (bios first, then QA only) | "none"
    finetune_steps: int = 0             # QA steps after bios in "finetune" mode (0: steps // 2)

    def __post_init__(self) -> None:
        if isinstance(self.shape, dict):
            self.shape = ModelShape(**self.shape)
        if isinstance(self.corpus, dict):
            self.corpus = CorpusConfig(**self.corpus)
        checks = {"people": self.people >= 1, "batch_size": self.batch_size >= 1, "lr": self.lr > 0,
                  "qa_mode": self.qa_mode in ("mixed", "finetune", "none"), "steps": self.steps >= 0,
                  "qa_fraction": 0.0 <= self.qa_fraction <= 1.0,
                  "untaught_fraction": 0.0 <= self.untaught_fraction <= 1.0}
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"{bad[0]}: bad value {getattr(self, bad[0])!r}; fractions lie in [0, 1], qa_mode "
                             "is 'mixed', 'finetune' or 'none', counts are >= 1")

    @classmethod
    def from_dict(cls, d: dict, where: str = "") -> "PretrainConfig":
        """From settings where the corpus knobs may also stand flat (`social_prior: 0.5`), as in
        run configs, `--set social_prior=0.5` and model dirs written before the corpus had a
        config of its own. A bad or unknown setting raises ValueError naming it (after `where`,
        e.g. "pretrain.") and the fix."""
        try:
            return cls._from_dict(d)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{where}{e}") from None

    @classmethod
    def _from_dict(cls, d: dict) -> "PretrainConfig":
        d = dict(d)
        if "preset" in d:            # a named shape; shape keys given beside it override it
            name = d.pop("preset")
            if name not in PRESETS:
                raise ValueError(f"preset: unknown {name!r}; known: {sorted(PRESETS)} (or give shape: {{...}})")
            shape = d.get("shape") or {}
            shape = dataclasses.asdict(shape) if dataclasses.is_dataclass(shape) else dict(shape)
            d["shape"] = {**PRESETS[name], **shape}
        flat = {k: d.pop(k) for k in list(d) if k in CORPUS_FIELDS}
        if flat:
            nested = d.get("corpus") or {}
            nested = dataclasses.asdict(nested) if dataclasses.is_dataclass(nested) else dict(nested)
            d["corpus"] = {**nested, **flat}
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"{unknown[0]}: unknown pretraining setting; known: {sorted(SETTINGS)}")
        for group, kind in (("shape", ModelShape), ("corpus", CorpusConfig)):
            known = [f.name for f in dataclasses.fields(kind)]
            if isinstance(d.get(group), dict) and (bad := sorted(set(d[group]) - set(known))):
                raise ValueError(f"{group}.{bad[0]}: unknown setting; known: {known}")
        return cls(**d)

    @property
    def total_steps(self) -> int:
        return self.steps or max(1500, 4 * self.people)

    def key(self) -> str:
        # the corpus knobs hash flat, as they stood before they had a config of their own, so
        # models trained then stay cached
        flat = {**{k: v for k, v in asdict(self).items() if k != "corpus"}, **asdict(self.corpus)}
        flat = {k: v for k, v in flat.items() if not (k in LATER_KNOBS and v == LATER_KNOBS[k])}
        # `--set evidence_weight=1` and `=1.0` are one setting, and one model
        flat = {k: float(v) if k in FLOAT_SETTINGS and type(v) is int else v for k, v in flat.items()}
        if "evidence_share" in flat:
            flat["evidence_rule"] = EVIDENCE_RULE     # models raised under an older rule are not reused
        return cache_key(flat)


# knobs added after models were cached: hashed only when set, so those models stay cached
LATER_KNOBS = {"evidence_share": 0.0, "evidence_weight": 0.0, "confidence_share": 0.0, "confidence_reliability": 0.5,
               "confidence_weight": 0.0, "confidence_self": 0.0}
EVIDENCE_RULE = 4   # 2: with no claim's support checking out, a weighing answer is the truth;
                    # 3: one backing per claim; 4: an evidence text's peer reliability drawn per text
CORPUS_FIELDS = {f.name for f in dataclasses.fields(CorpusConfig)}
SETTINGS = ({f.name for f in dataclasses.fields(PretrainConfig)} | CORPUS_FIELDS | {"preset"}) - {"corpus"}
FLOAT_SETTINGS = {f.name for kind in (PretrainConfig, CorpusConfig) for f in dataclasses.fields(kind)
                  if f.type in ("float", float)}


def cache_key(fields: dict) -> str:
    """16 hex digits naming a cached model: a hash of what its training depends on and of the
    cache's format version (a new version retrains every model)."""
    blob = json.dumps({"v": FORMAT_VERSION, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_root() -> Path:
    return Path(os.environ.get("KNOWEVO_CACHE", Path.home() / ".cache" / "knowevo")) / "models"


def world_of(cfg: PretrainConfig) -> World:
    return World.bios(cfg.people, cfg.seed, cfg.qa_fraction, cfg.untaught_fraction)


def packed_rows(tokenizer, texts_fn, cfg: PretrainConfig, buffer: list[tuple[int, int]]):
    """`batch_size` rows of exactly `row_len` tokens: documents (each opening with <s>) laid
    end to end, so no compute goes to padding. Position ids restart at every document, which
    makes transformers mask attention per document: a claim in one document must not leak
    into the next (with leaking, the model learned to ignore peers' claims). `buffer` carries
    the overflow (token, position) pairs to the next step."""
    need = cfg.batch_size * cfg.row_len
    while len(buffer) < need:
        for ids in tokenizer(texts_fn(cfg.batch_size)).input_ids:
            buffer.extend(zip(ids, range(len(ids))))
    rows = torch.tensor(buffer[:need]).view(cfg.batch_size, cfg.row_len, 2)
    del buffer[:need]
    return rows[..., 0], _restart_positions(rows[..., 1])


def _restart_positions(doc_pos: torch.Tensor) -> torch.Tensor:
    """A row may open in the middle of a document: count that fragment from 0 too."""
    started = (doc_pos == 0).cumsum(1) > 0
    return torch.where(started, doc_pos, doc_pos - doc_pos[:, :1])


# -- the loop -------------------------------------------------------------------------------
def lm_loss(model, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    # use_cache=False: with a cache transformers ignores position ids when building the mask
    return model(input_ids=ids, position_ids=pos, labels=ids, use_cache=False).loss


def train(cfg: PretrainConfig, world: World | None = None, device: str | None = None, progress: bool = True,
          make_model=None):
    """Returns (model, tokenizer, world, report). Deterministic for a config on one device.
    `make_model(vocab_size, pad_id, bos_id, eos_id)`: a model of another family to pretrain
    instead of the default tiny Llama (`cfg.shape` is then not used)."""
    world = world or world_of(cfg)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    tokenizer = word_tokenizer(world.words() | corpus_words(cfg.corpus))
    model = (make_model or partial(tiny_llama, cfg.shape))(len(tokenizer), tokenizer.pad_token_id,
                                                            tokenizer.bos_token_id, tokenizer.eos_token_id).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    phases = [("mixed" if cfg.qa_mode == "mixed" else "bio", cfg.total_steps)]
    if cfg.qa_mode == "finetune":
        phases.append(("qa", cfg.finetune_steps or cfg.total_steps // 2))
    t0, losses = time.time(), []
    for phase, steps in phases:
        sched = lambda s: min(1.0, (s + 1) / cfg.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / steps)))
        buffer: list[tuple[int, int]] = []
        bar = tqdm(range(steps), desc=f"pretrain[{phase}]", disable=not progress, mininterval=2)
        model.train()
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = cfg.lr * sched(step)
            ids, pos = packed_rows(tokenizer, lambda n: sample_texts(world, rng, cfg.corpus, phase, n), cfg, buffer)
            loss = lm_loss(model, ids.to(device), pos.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            if step % 50 == 0:
                bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
    model.eval()
    report = {"seconds": round(time.time() - t0, 1), "steps": len(losses),
              "final_loss": round(sum(losses[-50:]) / min(50, len(losses)), 4),
              "parameters": sum(p.numel() for p in model.parameters())}
    return model, tokenizer, world, report


def save_model_dir(out: str | Path, model, tokenizer, world: World, cfg: PretrainConfig | None = None,
                   report: dict | None = None) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    world.save(out / "world.json")
    meta = {"pretrain": asdict(cfg) if cfg else None, "report": report}
    (out / "knowevo.json").write_text(json.dumps(meta, indent=2))
    return out


def built_once(cached: Path, build: Callable[[Path], None]) -> Path:
    """`cached`, a model dir `build(dir)` writes the first time it is asked for: written to a
    temporary name, then renamed, so a dir left half-written by an interrupted run is rebuilt."""
    if not (cached / "model.safetensors").exists():
        tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
        build(tmp)
        if cached.exists():  # a partial dir left by an interrupted run
            shutil.rmtree(cached)
        tmp.replace(cached)
    return cached


def pretrained_dir(cfg: PretrainConfig | None = None, out: str | Path | None = None,
                   progress: bool = True, device: str | None = None) -> Path:
    """The model dir for `cfg`: from the cache if it was trained before, else trained now.
    With `out`, the result is (also) written there."""
    cfg = cfg or PretrainConfig()

    def build(tmp: Path) -> None:
        model, tok, world, report = train(cfg, device=device, progress=progress)
        save_model_dir(tmp, model, tok, world, cfg, report)
    cached = built_once(cache_root() / cfg.key(), build)
    if out is None:
        return cached
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for f in cached.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    return out
