"""The Agent: one language model (shared base weights + this agent's own delta) and a persona.

This class is the seam of knowevo. Protocols, editors and the generation loop call
`beliefs`, `generate`, `edit`, `learn`, `save`, `load`, and never reach into the model.
Methods of editing and learning live in `evolution/`; the Agent only looks them up by name.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from agents.checkpoint import load_model_dir
from agents.delta import take_update
from agents.records import Belief, beliefs_from_scores, prompts_with_context
from agents.scoring import candidate_logprobs, check_readable, greedy_continuations, text_nll
from agents.state import load_state, put_extensions, save_state, take_extensions
from envs.facts import Query


def pick_device(device: str | None = None) -> str:
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


class Agent:
    def __init__(self, model, tokenizer, name: str = "agent 0", persona: str = "neutral",
                 device: str | None = None, batch_size: int = 32, base: dict | None = None):
        self.name, self.persona, self.batch_size = name, persona, batch_size
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        # The base weights this agent started from; its delta is measured against them.
        # Agents made with `spawn` share one base dict (no copy per agent).
        self.base = base if base is not None else {k: v.detach().clone() for k, v in model.state_dict().items()}
        # Method-owned state beside the weights (ROME/MEMIT's edit memory...), saved and
        # loaded with the agent (agents/state.py); a spawned agent starts with none.
        self.state: dict = {}
        # The change the last edit/learn made, as the method returned it ({param: dense | (B, A)},
        # agents/delta.py), for the placement to keep; None when the method returned none.
        self.last_update: dict | None = None

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_dir(cls, path: str | Path, name: str = "agent 0", persona: str = "neutral",
                 device: str | None = None, **kw) -> "Agent":
        model, tokenizer = load_model_dir(path)
        return cls(model, tokenizer, name, persona, device, **kw)

    def spawn(self, name: str, persona: str = "neutral") -> "Agent":
        """A new agent on the same base weights (its own copy of the model, shared base dict)."""
        return Agent(copy.deepcopy(self.model), self.tokenizer, name, persona, self.device,
                     self.batch_size, self.base)

    # -- reading beliefs ------------------------------------------------------------------
    def beliefs(self, queries: list[Query], context: str | list[str] | None = None, **fields) -> list[Belief]:
        """For each query, a distribution over its candidates. `context` (one text, or one per
        query) is placed before the question; extra `fields` (round=, protocol=...) are
        copied onto every record."""
        check_readable(self.tokenizer, queries)
        contexts, prompts = prompts_with_context(queries, context)
        scores = candidate_logprobs(self.model, self.tokenizer, prompts, [q.candidates for q in queries],
                                    self.batch_size)
        return beliefs_from_scores(queries, contexts, scores, self.name, **fields)

    @torch.inference_mode()
    def nll(self, texts: list[str], batch_size: int = 32) -> tuple[float, int]:
        """(summed next-token NLL, tokens) over `texts`: what perplexity is made of."""
        fwd = lambda idx, ids, mask: self.model(input_ids=ids, attention_mask=mask).logits
        return text_nll(fwd, self.tokenizer, texts, batch_size, self.device)

    @torch.inference_mode()
    def generate(self, prompts: list[str], max_new_tokens: int = 12) -> list[str]:
        """Greedy continuations (text after the prompt), `batch_size` prompts per call."""
        gen = lambda idx, **enc: self.model.generate(**enc)
        return greedy_continuations(gen, self.tokenizer, list(prompts), max_new_tokens, self.batch_size, self.device)

    # -- changing this agent ----------------------------------------------------------------
    def edit(self, requests, method: str, **hparams):
        """Apply knowledge edits with a registered method (see evolution/editors)."""
        from agents.methods import editor
        self.last_update = None
        report = editor(method)(self, requests, **hparams)
        self.last_update = take_update(report)
        return report

    def learn(self, data, method: str = "finetune", **hparams):
        """Continual learning from texts or facts with a registered method."""
        from agents.methods import learner
        self.last_update = None
        report = learner(method)(self, data, **hparams)
        self.last_update = take_update(report)
        return report

    def delta(self, atol: float = 0.0) -> dict[str, torch.Tensor]:
        """This agent's change to the base weights, per parameter that changed."""
        out = {}
        for k, v in self.model.state_dict().items():
            d = v.detach() - self.base[k].to(v.device)
            if d.abs().max() > atol:
                out[k] = d
        return out

    # -- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(path, safe_serialization=True)
        self.tokenizer.save_pretrained(path)
        (path / "agent.json").write_text(json.dumps({"name": self.name, "persona": self.persona}))
        save_state({**self.state, **take_extensions(self.model)}, path)   # edit memory, a side memory...
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | None = None, **kw) -> "Agent":
        meta_file = Path(path) / "agent.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        agent = cls.from_dir(path, meta.get("name", "agent 0"), meta.get("persona", "neutral"), device, **kw)
        agent.state = put_extensions(agent.model, load_state(path))
        return agent
