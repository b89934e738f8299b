"""Model folders from GGUF files: a quantised single-file model becomes a normal transformers
folder (safetensors weights, the tokenizer with its chat template, a generation config) that
the catalogue can name and that loads in a fraction of a second, with nothing read from a hub.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from ftaas_core.builtin_models import gguf_file

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def model_folder_from_gguf(
    gguf_file: Path, target: Path, dtype: Literal["float32", "bfloat16"] = "float32"
) -> Path:
    """Write ``target`` from ``gguf_file`` (de-quantised to ``dtype``); an existing complete
    folder is kept. Built beside ``target`` and renamed into place, so concurrent builders and
    a crash mid-way never leave a half-written folder behind."""
    if (target / "config.json").exists():
        return target
    source, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # save_pretrained refuses a GGUF-loaded model
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=DTYPES[dtype])
    model.load_state_dict(loaded.state_dict())
    model.generation_config = GenerationConfig.from_model_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    target.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(building)
        tokenizer.save_pretrained(building)
        building.rename(target)
    except OSError:
        if not (target / "config.json").exists():  # not another builder's finished folder
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


def prepare_builtin(name: str, folder: Path) -> bool:
    """Make a built-in model's folder from its GGUF file if it is missing; whether it did."""
    source = gguf_file(name)
    if source is None or (folder / "config.json").exists():
        return False
    model_folder_from_gguf(source, folder)
    return True
