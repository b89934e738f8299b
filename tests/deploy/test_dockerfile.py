"""The Dockerfile's structure: two targets from one source, pinned bases, non-root, exec form,
no secrets, the right extra in each image and no torch in the API's. No Docker engine needed:
the file is parsed here (line continuations, comments, stages, ARG defaults).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
SECRETISH = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|DATABASE_URL)", re.I)


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the build stages, in order."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            assert keyword == "ARG", f"only ARG may come before the first FROM, got {keyword}"
            arg_name, _, default = args.partition("=")
            global_args[arg_name] = default.strip("\"'")
        else:
            stages[-1].instructions.append(Instruction(keyword, args))
    return global_args, stages


def resolve(image: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)


def env_names(args: str) -> list[str]:
    """Variable names set by one ENV instruction (``A=1 B=2`` or the legacy ``A 1``)."""
    words = shlex.split(args)
    if words and "=" not in words[0]:
        return [words[0]]
    return [w.split("=", 1)[0] for w in words]


GLOBAL_ARGS, STAGES = parse(DOCKERFILE.read_text())
BY_NAME = {s.name: s for s in STAGES if s.name}


def chain(name: str) -> list[Stage]:
    """A stage and every stage it copies from or builds on, transitively."""
    seen: list[Stage] = []
    todo = [BY_NAME[name]]
    while todo:
        stage = todo.pop()
        if stage in seen:
            continue
        seen.append(stage)
        if stage.base in BY_NAME:
            todo.append(BY_NAME[stage.base])
        for copy in stage.all("COPY"):
            match = re.search(r"--from=(\S+)", copy)
            if match and match.group(1) in BY_NAME:
                todo.append(BY_NAME[match.group(1)])
    return seen


def runs(name: str) -> str:
    return "\n".join(run for stage in chain(name) for run in stage.all("RUN"))


def external_bases(name: str) -> list[str]:
    return [
        resolve(s.base, GLOBAL_ARGS)
        for s in chain(name)
        if s.base not in BY_NAME and s.base != "scratch"
    ]


def exec_form(args: str | None) -> list[str]:
    assert args is not None
    value = json.loads(args)  # shell form is not JSON: this raises
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def test_targets_api_and_worker_share_one_source() -> None:
    assert {"api", "worker"} <= set(BY_NAME)
    source = {s.name for s in chain("api")} & {s.name for s in chain("worker")}
    assert source, "both targets build from a common source stage"
    for name in source:
        copied = " ".join(BY_NAME[name].all("COPY"))
        for folder in ("client/", "core/", "api/", "trainer_worker/"):
            assert folder in copied, f"{name} does not copy {folder}"


@pytest.mark.parametrize("target", ["api", "worker"])
def test_final_stage_runs_as_non_root(target: str) -> None:
    user = BY_NAME[target].last("USER")
    assert user is not None, f"{target} sets no USER"
    uid = user.split(":")[0]
    assert uid not in {"root", "0"}
    assert uid.isdigit(), "a numeric uid lets Kubernetes verify runAsNonRoot"


def test_api_entrypoint() -> None:
    stage = BY_NAME["api"]
    command = exec_form(stage.last("ENTRYPOINT")) + exec_form(stage.last("CMD"))
    assert command == ["ftaas", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert "8000" in " ".join(stage.all("EXPOSE"))


def test_worker_entrypoint_is_pid_1() -> None:
    stage = BY_NAME["worker"]
    entrypoint = exec_form(stage.last("ENTRYPOINT"))
    assert entrypoint == ["ftaas"], "no shell or wrapper between Kubernetes and `ftaas`"
    assert exec_form(stage.last("CMD")) == ["worker"]


def test_each_target_installs_its_distribution() -> None:
    api, worker = runs("api"), runs("worker")
    assert re.search(r"pip install [^\n]*\./api\b", api)
    assert re.search(r"pip install [^\n]*\./trainer_worker\b", worker)
    assert "./api" not in worker


def test_no_torch_in_api() -> None:
    for install in re.findall(r"pip install[^\n&;]*", runs("api")):
        assert "torch" not in install and "trainer_worker" not in install
    for base in external_bases("api"):
        assert "pytorch" not in base and "cuda" not in base
        assert base.startswith("python:3.11"), base


def test_worker_keeps_the_images_torch() -> None:
    (base,) = external_bases("worker")
    assert base.startswith(("pytorch/pytorch:", "nvidia/cuda:")) and "runtime" in base
    worker = runs("worker")
    if base.startswith("pytorch/pytorch:"):
        # pip must not swap the CUDA build for a wheel from PyPI.
        assert re.search(r"--constraint|-c ", worker), "constrain torch to the image's version"


def test_worker_build_imports_the_recipe_with_the_pinned_torch() -> None:
    """An image whose training stack does not import (or whose torch pip swapped) fails to
    build rather than fails its first job."""
    worker = runs("worker")
    install = worker.index("--constraint /tmp/keep-torch.txt")
    unchanged = worker.index("grep -i '^torch==' | diff - /tmp/keep-torch.txt")
    imports = re.search(r'python -c "import torch\b[^"]*\bftaas_worker\.recipe\b', worker)
    assert imports, "the build imports ftaas_worker.recipe"
    assert install < unchanged < imports.start() < worker.index("rm -rf /tmp/src /tmp/keep-torch")


def test_base_images_pinned() -> None:
    for stage in STAGES:
        if stage.base in BY_NAME or stage.base == "scratch":
            continue
        image = resolve(stage.base, GLOBAL_ARGS)
        assert "$" not in image, f"unresolved {stage.base}"
        repository, _, digest = image.partition("@")
        tag = repository.rsplit("/", 1)[-1].partition(":")[2]
        assert tag or digest, f"{image} is not pinned"
        assert tag != "latest" and re.search(r"\d", tag or digest), f"{image} is not pinned"


def test_no_secrets_baked_in() -> None:
    for stage in STAGES:
        for args in stage.all("ENV"):
            for name in env_names(args):
                assert not SECRETISH.search(name), f"ENV {name} looks like a secret"
                assert not name.startswith("AWS_"), f"ENV {name}: credentials come at run time"
        for args in stage.all("ARG"):
            assert not SECRETISH.search(args.split("=")[0]), f"ARG {args} looks like a secret"
        for args in stage.all("COPY") + stage.all("ADD"):
            assert not re.search(r"\.env\b|\.pem\b|\.key\b|secret", args, re.I), args
    for name in GLOBAL_ARGS:
        assert not SECRETISH.search(name), f"ARG {name} looks like a secret"


def test_model_cache_is_set() -> None:
    for target in ("api", "worker"):
        names = [n for args in BY_NAME[target].all("ENV") for n in env_names(args)]
        assert "HF_HOME" in names and "FTAAS_DATA_DIR" in names, target


def test_dockerignore() -> None:
    ignored = {
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for entry in (".git", ".venv", ".ftaas", ".pytest_cache", ".ruff_cache", "**/__pycache__"):
        assert entry in ignored, f".dockerignore should exclude {entry}"
    assert "**/.env" in ignored or ".env" in ignored


def test_parser_reads_shell_form_as_shell_form() -> None:
    _, stages = parse("FROM python:3.11.11-slim AS x\nCMD ftaas \\\n  serve\nUSER 1000\n")
    assert stages[0].last("CMD").split() == ["ftaas", "serve"]
    with pytest.raises(json.JSONDecodeError):
        exec_form(stages[0].last("CMD"))
