"""``python -m verl.trainer.config [--write | --check]``: regenerate (or check) what comes from the typed tree.

Writes ``verl/trainer/config/ppo_trainer.yaml``, ``ppo_megatron_trainer.yaml`` and the key table of
``docs/compat.md``. ``--check`` (the default) prints the stale files and exits 1 when there are any.
"""

from __future__ import annotations

import argparse
import sys

from verl.trainer.config.render import write_or_check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m verl.trainer.config", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="rewrite the generated files")
    group.add_argument("--check", action="store_true", help="exit 1 if a generated file is stale (default)")
    args = parser.parse_args(argv)
    stale = write_or_check(write=args.write)
    for path in stale:
        print(("rewrote " if args.write else "stale: ") + path)
    if not stale:
        print("generated config files are up to date")
    return 0 if args.write or not stale else 1


if __name__ == "__main__":
    sys.exit(main())
