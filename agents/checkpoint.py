"""Load a model directory: the embedded default or a user's own Hugging Face checkpoint.

Safetensors only, never remote code, never a download: a missing or unsafe file is an error
that says what to do.
"""
from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer


class CheckpointError(ValueError):
    pass


def saved_tokenizer_class(path: Path):
    """The tokenizer class the directory was saved with (`tokenizer_config.json`), else
    AutoTokenizer. AutoTokenizer lets the model config's family win: a Qwen2 model saved with
    knowevo's word-level tokenizer was read by a `Qwen2Tokenizer`, which split " Acorn Labs" into
    ['A', 'a'] and scored garbage without a word."""
    import transformers
    cfg = path / "tokenizer_config.json"
    try:
        name = json.loads(cfg.read_text()).get("tokenizer_class") if cfg.exists() else None
    except (json.JSONDecodeError, AttributeError):
        name = None
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    return cls if cls is not None and hasattr(cls, "from_pretrained") else AutoTokenizer


def load_model_dir(path: str | Path, trust_remote_code: bool = False):
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"model dir {str(path)!r} does not exist; give a local directory made by "
                              "`knowevo pretrain` or `save_pretrained`")
    if not any(path.glob("*.safetensors")):
        extra = " (found PyTorch .bin weights: re-save them with save_pretrained(safe_serialization=True))" \
            if any(path.glob("*.bin")) else ""
        raise CheckpointError(f"model dir {str(path)!r} has no .safetensors weights{extra}; knowevo loads "
                              "safetensors only")
    try:
        tokenizer = saved_tokenizer_class(path).from_pretrained(path, local_files_only=True,
                                                                trust_remote_code=trust_remote_code)
    except Exception as e:  # tokenizers raises plain Exceptions for corrupt JSON
        raise CheckpointError(f"model dir {str(path)!r}: the tokenizer could not be read ({type(e).__name__}: "
                              f"{str(e)[:200]}); tokenizer.json may be corrupt: re-save it with "
                              "tokenizer.save_pretrained") from None
    try:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, use_safetensors=True,
                                                     trust_remote_code=trust_remote_code)
    except Exception as e:
        raise CheckpointError(f"model dir {str(path)!r}: the model could not be loaded ({type(e).__name__}: "
                              f"{str(e)[:200]})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer
