"""Adapters: every edit and fine-tune is a delta on the base weights, exported as a peft LoRA
directory; the base model loaded from disk + that adapter gives the edited model's logits.

Measured on the small test model (logits of magnitude ~14): base + adapter differs from the
edited agent by at most 4.8e-6 for a ROME edit and a LoRA learner (float32 rounding of the
SVD factors), so 1e-4 is the tolerance. A full fine-tune is truncated honestly: at rank 4
the largest relative error of a module is 0.82 and the logits move by up to 5.2."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from agents.adapters import AdapterError, export_adapter
from tests.edit_helpers import known_requests

ATOL = 1e-4
DOWN0 = "model.layers.0.mlp.down_proj"


def logits(model, tokenizer, prompts: list[str]) -> torch.Tensor:
    enc = tokenizer(prompts, return_tensors="pt", padding=True).to(next(model.parameters()).device)
    with torch.no_grad():
        out = model(**enc).logits.float().cpu()
    return out[enc.attention_mask.cpu().bool()]     # real tokens only


def base_plus_adapter(small_dir, adapter_dir):
    """What a user does: the base model from its own directory, the adapter on top."""
    base = AutoModelForCausalLM.from_pretrained(small_dir)
    return PeftModel.from_pretrained(base, adapter_dir).eval()


def prompts_of(world, subjects) -> list[str]:
    return [world.query(s, r, "question").prompt for s in subjects for r in ("company", "major", "birth_city")]


@pytest.fixture(scope="module")
def news(small_world):
    world = copy.deepcopy(small_world)
    return world, world.evolve(0.1, "company", seed=5)


@pytest.fixture(scope="module")
def rome_agent(small_agent, small_world):
    agent = small_agent.spawn("rome")
    reqs = known_requests(small_agent, small_world, 2, seed=1)
    for r in reqs:                                  # two calls: sequential edits of one layer
        agent.edit([r], method="rome", world=small_world)
    return agent, reqs


def test_two_rome_edits_export_exactly_at_rank_2(tmp_path, small_dir, small_world, small_agent, rome_agent):
    agent, reqs = rome_agent
    assert list(agent.delta()) == [DOWN0 + ".weight"]
    rep = export_adapter(agent, tmp_path / "r2", rank=2)
    assert rep.exact and not rep.dropped and list(rep.modules) == [DOWN0]
    m = rep.modules[DOWN0]
    assert (m.rank, m.numerical_rank, m.kind) == (2, 2, "linear") and m.rel_error < 1e-6   # measured 8.4e-8
    saved = json.loads((tmp_path / "r2" / "knowevo_adapter.json").read_text())
    assert saved["exact"] and saved["modules"][DOWN0]["rank"] == 2
    prompts = [r.prompt for r in reqs] + prompts_of(small_world, [p.name for p in small_world.people[:3]])
    want = logits(agent.model, agent.tokenizer, prompts)
    got = logits(base_plus_adapter(small_dir, tmp_path / "r2"), agent.tokenizer, prompts)
    assert torch.allclose(got, want, atol=ATOL, rtol=0)                                    # measured 4.8e-6
    # the edit is visible in these logits (the comparison is not base vs base): measured 12.9
    assert (want - logits(small_agent.model, agent.tokenizer, prompts)).abs().max() > 1.0
    # rank 1 cannot hold two edits, and says so: measured rel_error 0.57
    low = export_adapter(agent, tmp_path / "r1", rank=1)
    assert not low.exact and low.modules[DOWN0].rank == 1 and low.max_rel_error > 0.1


def test_lora_learner_exports_exactly(tmp_path, small_dir, small_agent, news):
    world, changed = news
    agent = small_agent.spawn("lora")
    agent.learn(changed, "lora", world=world, epochs=2, lr=3e-3, rank=4)
    rep = export_adapter(agent, tmp_path / "a", rank=8)
    # every Linear the learner adapted (7 per layer, 2 layers), numerical rank 4 = the learner's
    assert rep.exact and len(rep.modules) == 14 and not rep.dropped
    assert {m.numerical_rank for m in rep.modules.values()} == {4} and rep.max_rel_error < 1e-5  # 1.8e-7
    prompts = prompts_of(world, [f.subject for f in changed[:4]])
    want = logits(agent.model, agent.tokenizer, prompts)
    got = logits(base_plus_adapter(small_dir, tmp_path / "a"), agent.tokenizer, prompts)
    assert torch.allclose(got, want, atol=ATOL, rtol=0)                                    # measured 4.8e-6


def test_full_finetune_is_truncated_and_says_so(tmp_path, small_dir, small_agent, news):
    world, changed = news
    agent = small_agent.spawn("ft")
    agent.learn(changed, "finetune", world=world, epochs=2, lr=1e-3)
    rep = export_adapter(agent, tmp_path / "a", rank=4)
    norms = {k for k in agent.delta() if "norm" in k}
    assert norms and set(rep.dropped) == norms                     # RMSNorm weights: LoRA cannot hold them
    assert not rep.exact and rep.max_rel_error > 0.1                # measured 0.82
    assert rep.modules["model.embed_tokens"].kind == "embedding" and rep.modules["lm_head"].kind == "linear"
    assert all(m.rank == 4 < m.numerical_rank for m in rep.modules.values())
    # the reported error is the error of the factors actually written
    f = load_file(tmp_path / "a" / "adapter_model.safetensors")
    b, a = (f[f"base_model.model.{DOWN0}.lora_{x}.weight"] for x in "BA")
    d = agent.delta()[DOWN0 + ".weight"]
    assert float((d - b @ a).norm() / d.norm()) == pytest.approx(rep.modules[DOWN0].rel_error, rel=1e-3)
    # only the factors are written, not the base's embedding and lm_head matrices
    assert all("lora_" in k for k in f)
    # and the truncation shows in the logits (measured 5.2 at rank 4): not a silent "exact" export
    prompts = prompts_of(world, [x.subject for x in changed[:4]])
    gap = logits(base_plus_adapter(small_dir, tmp_path / "a"), agent.tokenizer, prompts) - \
        logits(agent.model, agent.tokenizer, prompts)
    assert gap.abs().max() > 10 * ATOL
    with pytest.raises(AdapterError, match="strict: .*input_layernorm.*LoRA cannot hold them"):
        export_adapter(agent, tmp_path / "strict", rank=4, strict=True)
    assert not (tmp_path / "strict").exists()


@pytest.mark.parametrize("rank", [0, -1, 2.0, True, "8"])
def test_bad_rank_is_refused(tmp_path, rome_agent, rank):
    with pytest.raises(AdapterError, match=r"rank: .*give a positive integer"):
        export_adapter(rome_agent[0], tmp_path / "a", rank=rank)
    assert not (tmp_path / "a").exists()


def test_nothing_to_export_is_refused(tmp_path, small_agent):
    agent = small_agent.spawn("same")
    with pytest.raises(AdapterError, match="no delta to export"):
        export_adapter(agent, tmp_path / "a")
    with torch.no_grad():                                  # only a norm weight changed
        agent.model.model.norm.weight.mul_(1.5)
    with pytest.raises(AdapterError, match=r"no changed parameter is a Linear or Embedding weight \(\['model.norm"):
        export_adapter(agent, tmp_path / "a")
    assert not (tmp_path / "a").exists()
