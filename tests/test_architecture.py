"""The package's import structure (DESIGN.md section 2): layers import downward only, and no module imports itself
through a circle. Checked with import-linter (contracts in pyproject.toml) and its graph library, grimp.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO = Path(__file__).resolve().parents[1]


def _lint_imports() -> subprocess.CompletedProcess:
    code = "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    result = _lint_imports()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "5 kept, 0 broken" in result.stdout


def test_the_layer_contract_catches_an_upward_import():
    planted = REPO / "verl" / "utils" / "_planted_upward_import.py"
    planted.write_text("import verl.trainer.ppo.ray_trainer  # noqa: F401\n")
    try:
        result = _lint_imports()
    finally:
        planted.unlink()
    assert result.returncode != 0
    assert "verl.utils._planted_upward_import -> verl.trainer.ppo.ray_trainer" in result.stdout


def _import_cycles(package: str) -> list[list[str]]:
    """Strongly connected components of more than one module in the import graph (lazy imports included)."""
    graph = grimp.build_graph(package, cache_dir=None)  # no .grimp_cache in the checkout
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & graph.modules) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in modules:
        if module not in index:
            connect(module)
    return cycles


def test_no_import_circles():
    cycles = _import_cycles("verl")
    assert not cycles, "import circles (break them by moving the shared piece down a layer):\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


@pytest.mark.parametrize("statement", ["import verl.trainer.config.build", "import verl.trainer.main_ppo"])
def test_the_config_path_imports_no_torch_or_ray(statement):
    code = f"import sys; {statement}; print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------- one engine contract
ROLLOUT = REPO / "verl" / "workers" / "rollout"


def _rollout_sources() -> dict[str, str]:
    return {str(p.relative_to(REPO)): p.read_text() for p in sorted(ROLLOUT.rglob("*.py"))}


def _where(pattern: str, sources: dict[str, str]) -> set[str]:
    import re

    return {path for path, text in sources.items() if re.search(pattern, text)}


def test_one_token_sampling_loop_and_one_sampling_type_under_the_rollout_package():
    """Generation is written once per backend: token sampling and KV-cached decoding live in the hf engine alone
    (vLLM and SGLang sample inside their engines), no rollout module calls transformers' ``generate``, and the one
    runtime sampling type is ``engine.SamplingParams``."""
    import ast

    sources = _rollout_sources()
    assert _where(r"torch\.multinomial\(", sources) == {"verl/workers/rollout/hf_engine.py"}
    assert _where(r"past_key_values", sources) == {"verl/workers/rollout/hf_engine.py"}
    assert _where(r"\.generate\(\s*input_ids=", sources) == set()  # transformers' generate
    sampling_types = set()
    for path, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and "Sampling" in node.name and "Params" in node.name:
                sampling_types.add(f"{path}:{node.name}")
    assert sampling_types == {"verl/workers/rollout/engine.py:SamplingParams"}, sampling_types
    # every backend implements the contract
    from verl.workers.rollout.engine import InferenceEngine, SteppableEngine
    from verl.workers.rollout.hf_engine import HFEngine
    from verl.workers.rollout.sglang_rollout.adapter import SGLangEngine

    assert issubclass(HFEngine, SteppableEngine) and issubclass(SGLangEngine, InferenceEngine)
    assert "class VLLMEngine(SteppableEngine)" in sources["verl/workers/rollout/vllm_rollout/vllm_rollout.py"]


def test_every_source_file_is_tracked_by_git():
    """A source file that .gitignore swallows (or that was never added) is missing from every fresh clone."""
    import shutil
    import subprocess

    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(
        [
            "git",
            "ls-files",
            "--others",
            "--exclude-standard",
            "--ignored",
            "--",
            "verl",
            "tests",
            "benchmarks",
            "examples",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    ignored = [p for p in result.stdout.splitlines() if p.endswith((".py", ".sh", ".yaml", ".jsonl"))]
    assert not ignored, f"source files ignored by .gitignore: {ignored}"
