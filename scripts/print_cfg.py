"""Print the composed trainer config, with any overrides applied, as YAML.

    python3 scripts/print_cfg.py                                   # the packaged ppo_trainer.yaml
    python3 scripts/print_cfg.py --config-name ppo_megatron_trainer
    python3 scripts/print_cfg.py --resolve actor_rollout_ref.rollout.name=hf algorithm.adv_estimator=grpo
    python3 scripts/print_cfg.py --select actor_rollout_ref.rollout actor_rollout_ref.rollout.name=hf

Overrides use Hydra syntax (``key=value``, ``+new.key=value``); a misspelt key fails with the key named.
``--resolve`` evaluates ``${...}`` interpolations (mandatory ``???`` values must then be given).
"""

from __future__ import annotations

import argparse
import sys

from omegaconf import OmegaConf

from verl.utils.config import compose_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of the script."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. trainer.nnodes=2 +new.key=1")
    parser.add_argument("--config-name", default="ppo_trainer", help="config to compose (default: ppo_trainer)")
    parser.add_argument("--config-dir", default=None, help="folder of the config (default: the packaged one)")
    parser.add_argument("--resolve", action="store_true", help="evaluate ${...} interpolations before printing")
    parser.add_argument("--select", default=None, help="print only this dotted sub-tree")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Compose and print; returns the process exit code."""
    args = parse_args(argv)
    try:
        cfg = compose_config(args.config_name, args.overrides, config_dir=args.config_dir)
    except Exception as err:  # Hydra composition errors already name the key and the fix
        print(f"error: {err}", file=sys.stderr)
        return 2
    node = OmegaConf.select(cfg, args.select) if args.select else cfg
    if node is None:
        print(f"error: {args.select!r} is not a key of the config", file=sys.stderr)
        return 2
    print(OmegaConf.to_yaml(node, resolve=args.resolve) if OmegaConf.is_config(node) else node, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
