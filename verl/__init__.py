"""verl-compatible RL post-training for LLMs.

``from verl import DataProto`` is the public entry to the data protocol. Importing this package pulls in torch
and tensordict only: no Ray, no inference engines, no environment changes.
"""

from __future__ import annotations

from pathlib import Path

__version__ = (Path(__file__).parent / "version" / "version").read_text().strip()


def __getattr__(name: str):
    # DataProto is resolved lazily so that ``import verl`` stays cheap for tools that only need the version.
    if name == "DataProto":
        from verl.protocol import DataProto

        return DataProto
    raise AttributeError(f"module 'verl' has no attribute {name!r}")


__all__ = ["DataProto", "__version__"]
