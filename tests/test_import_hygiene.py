"""``import verl`` and the pure modules pull in no distributed runtime or inference engine, and change nothing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("ray", "vllm", "sglang", "megatron", "transformers", "omegaconf", "hydra")


def _modules_after(statement: str) -> dict:
    code = (
        "import json, os, sys\n"
        "before = dict(os.environ)\n"
        f"{statement}\n"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))\n"
        "changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))\n"
        "print(json.dumps({'heavy': heavy, 'env_changed': changed}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "statement",
    [
        "import verl",
        "from verl import DataProto",
        "import verl.protocol",
        "import verl.trainer.ppo.core_algos",
        "import verl.utils.torch_functional",
    ],
)
def test_pure_modules_import_no_heavy_runtime_and_leave_env_alone(statement):
    result = _modules_after(statement)
    assert result["heavy"] == [], f"{statement} imported {result['heavy']}"
    assert result["env_changed"] == [], f"{statement} changed environment variables {result['env_changed']}"


def test_version_is_exposed():
    import verl

    assert verl.__version__.count(".") >= 2
