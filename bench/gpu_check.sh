#!/usr/bin/env bash
# On a machine with a CUDA GPU, in at most ~8 minutes: the CUDA tests (bf16 training, a job's
# ranks on NCCL, QLoRA on bitsandbytes' CUDA kernels), then the training benchmark on the CUDA
# shapes, whose table replaces the CUDA section of bench/README.md.
#
#     bash bench/gpu_check.sh        # needs .venv with a CUDA build of torch (make install)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
python=.venv/bin/python
$python -c 'import torch; assert torch.cuda.is_available(), "no CUDA device"; print(torch.cuda.get_device_name())'
timeout 180 .venv/bin/pytest -q -m cuda tests/worker/test_cuda.py
mkdir -p .ftaas/bench
timeout 300 $python -m bench.train_throughput --repeats 1 | tee .ftaas/bench/cuda-table.md
$python - <<'PY'
import re
from pathlib import Path

readme, table = Path("bench/README.md"), Path(".ftaas/bench/cuda-table.md").read_text()
start, end = "<!-- cuda:start -->", "<!-- cuda:end -->"
text = readme.read_text()
if start not in text:
    text += f"\n## On a CUDA GPU (bench/gpu_check.sh)\n\n{start}\n{end}\n"
block = f"{start}\n{table.strip()}\n{end}"
readme.write_text(re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S))
PY
