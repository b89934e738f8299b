"""What a job's base model is held and computed in: bfloat16 on CUDA, float32 on CPU, and, for
QLoRA (``load_in_4bit``), its linear layers' weights in 4-bit NF4 through bitsandbytes.

QLoRA keeps the settings of the QLoRA paper: NF4 (the 4-bit type spaced for normally
distributed weights), double quantisation (the per-block scales quantised too, about 0.4 bit
per weight saved) and matmuls in the training dtype, so only the frozen base is compressed.
The LoRA adapter on top trains in full precision and loads on the unquantised base.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import BitsAndBytesConfig

from ftaas_core.hyperparams import ResolvedHyperparameters

QUANT_TYPE = "nf4"


def compute_dtype(device: torch.device) -> torch.dtype:
    """The dtype training computes in (and the 4-bit weights are dequantised to for each
    matmul): bfloat16 where the GPU runs it at full speed, float32 on CPU."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def nf4_config(device: torch.device) -> BitsAndBytesConfig:
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=QUANT_TYPE,
        bnb_4bit_compute_dtype=compute_dtype(device),
        bnb_4bit_use_double_quant=True,
    )


def quantization_record(hp: ResolvedHyperparameters, device: torch.device) -> dict[str, Any] | None:
    """The manifest's account of how the base was quantised while training; None: it was not."""
    if not hp.load_in_4bit:
        return None
    config = nf4_config(device)
    return {
        "load_in_4bit": True,
        "quant_type": config.bnb_4bit_quant_type,
        "double_quant": config.bnb_4bit_use_double_quant,
        "compute_dtype": str(config.bnb_4bit_compute_dtype).removeprefix("torch."),
    }
