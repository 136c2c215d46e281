"""Train an SPD scoring model with GRPO: which mismatching draft tokens can be accepted without changing the answer.

For each sample of an SPD dataset (``python -m verl.utils.dataset.spd_dataset``: context, draft tokens, the target's
greedy tokens, ground truth), the scorer (``spd_scorer.ScoringActor``) gives ``p_i``, the probability of accepting
draft token ``i``; the rollout (``rollout.name=spd``) samples accept/reject decisions on the mismatches; the reward
(data source ``spd_scorer``) asks the TARGET model, served behind an OpenAI-compatible ``/v1/completions``, to
complete the hybrid prefix ``c + d_1..d_{j-1} + t_j`` at temperature 0 and scores the A/B/C/D table of
``docs/spd.md``. GRPO then runs through the same ``RayPPOTrainer`` as any verl job.

Example (CPU, tiny models, the target served by ``python -m verl.serve``)::

    python -m verl.utils.dataset.spd_dataset --draft_model_path models/draft --target_model_path models/target \\
        --prompts prompts.parquet                                   # writes data/spd/train.parquet
    python train_spd_scorer.py --model_path models/draft --target_model_url http://127.0.0.1:8000/v1/completions \\
        --n_gpus 2

Defaults: ``--train_files data/spd/train.parquet`` (where the dataset builder writes), ``--total_training_steps``
from ``--total_epochs`` (1) x full batches per epoch, ``--output_dir checkpoints/spd_scorer/<experiment name>``
(the experiment name defaults to the ``--model_path`` directory's name). ``--dry_run`` prepares everything (output
directory, scorer, trainer config) and prints the plan without training.

Anything of the form ``key=value`` after the flags is passed to the trainer as a Hydra override, e.g.
``actor_rollout_ref.actor.optim.lr=1e-5 trainer.logger=[console,wandb]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from verl.utils.dataset.spd_dataset import DEFAULT_SPD_DATA, build_command

SPD_METRIC_PREFIX = "spd/"
PROG = "train_spd_scorer"
DEFAULT_CHECKPOINT_ROOT = "checkpoints/spd_scorer"
"""``--output_dir`` defaults to ``<this>/<experiment name>`` (relative to the working directory)."""


class UsageError(Exception):
    """A problem with the command's inputs: reported as one line, exit status 2."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to a flag's help unless the help states its default already or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or action.default in (None, False, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="train_spd_scorer.py",
        description=__doc__.split("\n\n")[0],
        epilog="Further arguments key=value are Hydra overrides of verl's ppo_trainer config.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--model_path",
        required=True,
        help="required: a scorer checkpoint, or a local causal LM (the draft) to start a scorer from",
    )
    parser.add_argument(
        "--target_model_url",
        required=True,
        help="required: the target's OpenAI-compatible completions URL (or its base)",
    )
    parser.add_argument("--target_model_name", default=None, help="model name to send to the target (default: any)")
    parser.add_argument("--target_tokenizer", default=None, help="tokenizer of the target (default: from the data)")
    parser.add_argument("--n_gpus", type=int, default=1, help="training ranks (CPU processes on a CPU machine)")
    parser.add_argument("--nnodes", type=int, default=1, help="nodes")
    parser.add_argument(
        "--train_files",
        default=DEFAULT_SPD_DATA,
        help=f"SPD parquet from python -m verl.utils.dataset.spd_dataset (default: {DEFAULT_SPD_DATA}, where that "
        "command writes by default)",
    )
    parser.add_argument("--val_files", default=None, help="held-out SPD parquet (default: train_files)")
    parser.add_argument(
        "--total_training_steps",
        type=int,
        default=None,
        help="GRPO steps (default: total_epochs x full batches per epoch, i.e. rows // batch_size)",
    )
    parser.add_argument(
        "--total_epochs", type=int, default=1, help="passes over the data when --total_training_steps is not given"
    )
    parser.add_argument(
        "--output_dir",
        default=None,
        help=f"checkpoints, metrics.jsonl and the scorer (default: {DEFAULT_CHECKPOINT_ROOT}/EXPERIMENT_NAME, created)",
    )
    parser.add_argument(
        "--experiment_name",
        default=None,
        help="trainer.experiment_name (default: the --output_dir's name, else the --model_path directory's name)",
    )
    parser.add_argument("--batch_size", type=int, default=8, help="samples (prompts) per step")
    parser.add_argument("--rollout_n", type=int, default=4, help="decision vectors sampled per sample (GRPO group)")
    parser.add_argument(
        "--mini_batch_size", type=int, default=None, help="samples per optimizer step (default: batch_size)"
    )
    parser.add_argument(
        "--micro_batch_size",
        type=int,
        default=None,
        help="sequences per forward/backward per rank (default: mini batch x rollout_n / ranks)",
    )
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate of the scorer")
    parser.add_argument("--alpha", type=float, default=0.5, help="scenario A bonus: 1 + alpha * accepted / K")
    parser.add_argument("--beta", type=float, default=1.0, help="scenario C penalty: -beta")
    parser.add_argument("--max_tokens", type=int, default=32, help="completion length asked of the target")
    parser.add_argument("--target_concurrency", type=int, default=16, help="concurrent requests to the target")
    parser.add_argument("--target_timeout", type=float, default=60.0, help="seconds per target request")
    parser.add_argument(
        "--on_target_failure",
        choices=("zero", "raise"),
        default="zero",
        help="a target unreachable after retries: score the sample 0 (and count it), or stop the run",
    )
    parser.add_argument("--save_freq", type=int, default=None, help="checkpoint every N steps (default: at the end)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="training device")
    parser.add_argument(
        "--dry_run",
        action="store_true",
        help="check the inputs, create the output directory and scorer, compose the trainer config, print the plan "
        "and exit without training",
    )
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if "=" not in a or a.startswith("--")]
    if unknown:
        parser.error(f"unrecognised arguments: {' '.join(unknown)} (overrides must look like key=value)")
    for name in ("total_training_steps", "total_epochs", "batch_size", "rollout_n", "n_gpus", "nnodes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    return args, rest


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill in what was left out: the experiment name, ``output_dir`` and ``total_training_steps`` (which needs the
    data's row count). Writes nothing.

    Raises:
        UsageError: the data file is missing (the message has the command that builds it), or has fewer rows than
            one batch.
    """
    if not Path(args.train_files).is_file():
        build = build_command(draft_model_path=args.model_path, output=args.train_files)
        raise UsageError(f"no SPD data at {args.train_files} (--train_files); build it with: {build}")
    if args.experiment_name is None:
        source = args.output_dir if args.output_dir is not None else args.model_path
        args.experiment_name = Path(os.path.abspath(os.path.expanduser(source))).name or "run"
    if args.output_dir is None:
        args.output_dir = f"{DEFAULT_CHECKPOINT_ROOT}/{args.experiment_name}"
    if args.total_training_steps is None:
        rows = data_rows(args.train_files)
        per_epoch = rows // args.batch_size  # the trainer drops the last short batch
        if per_epoch == 0:
            raise UsageError(
                f"{args.train_files} has {rows} rows, fewer than one batch (--batch_size {args.batch_size}); "
                "lower --batch_size or add rows"
            )
        args.total_training_steps = args.total_epochs * per_epoch
        args.steps_from = (
            f"--total_epochs {args.total_epochs} x {per_epoch} batches per epoch: {rows} rows // --batch_size "
            f"{args.batch_size}"
        )
    else:
        args.steps_from = "--total_training_steps"
    return args


def data_rows(train_files: str) -> int:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(train_files).metadata.num_rows
    except Exception as exc:  # pyarrow raises several types for a damaged or non-parquet file
        raise UsageError(
            f"--train_files {train_files} is not a readable parquet ({type(exc).__name__}: {exc})"
        ) from exc


def scorer_dir(model_path: str, output_dir: Path) -> str:
    """``model_path`` if it is a scorer checkpoint, else a new scorer built on it under ``output_dir``."""
    config = Path(model_path) / "config.json"
    if not config.is_file():
        raise UsageError(f"--model_path {model_path}: no config.json (a local model directory is required)")
    if json.loads(config.read_text()).get("model_type") == "spd_scoring_actor":
        return model_path
    from spd_scorer import build_scorer_dir

    out = output_dir / "scorer_init"
    if not (out / "config.json").is_file():
        build_scorer_dir(model_path, out)
        print(f"train_spd_scorer: new scorer on the backbone {model_path} written to {out}")
    return str(out)


def data_shape(train_files: str) -> tuple[int, int, str | None]:
    """(longest draft K, longest context in tokens, the target tokenizer named by the data)."""
    import pandas as pd

    try:
        frame = pd.read_parquet(train_files)
    except Exception as exc:  # pyarrow raises several types for a damaged or non-parquet file
        raise UsageError(f"{train_files} is not a readable parquet ({type(exc).__name__}: {exc})") from exc
    for column in ("spd_draft_ids", "spd_target_ids", "extra_info"):
        if column not in frame.columns:
            raise UsageError(f"{train_files} has no {column!r} column; build the data with: {build_command()}")
    k = int(max(len(ids) for ids in frame["spd_draft_ids"]))
    infos = [info if isinstance(info, dict) else {} for info in frame["extra_info"]]
    contexts = [len(info["context_ids"]) if info.get("context_ids") is not None else 0 for info in infos]
    model_path = next((info.get("model_path") for info in infos if info.get("model_path")), None)
    return k, max(contexts + [1]), model_path


def overrides(args: argparse.Namespace, scorer: str, k: int, context_len: int, target_tokenizer: str | None) -> list:
    mini = args.mini_batch_size or args.batch_size
    ranks = args.n_gpus * args.nnodes
    micro = args.micro_batch_size or max(1, mini * args.rollout_n // ranks)
    kwargs = {
        "target_model_url": args.target_model_url,
        "alpha": args.alpha,
        "beta": args.beta,
        "max_tokens": args.max_tokens,
        "on_target_failure": args.on_target_failure,
        "concurrency": args.target_concurrency,
        "timeout": args.target_timeout,
    }
    if args.target_model_name:
        kwargs["target_model_name"] = args.target_model_name
    if target_tokenizer:
        kwargs["model_path"] = target_tokenizer
    reward_fn = Path(__file__).resolve().parent / "verl" / "utils" / "reward_score" / "spd_scorer_reward.py"
    out = Path(args.output_dir)
    result = [
        "algorithm.adv_estimator=grpo",
        "algorithm.use_kl_in_reward=False",
        f"data.train_files={args.train_files}",
        f"data.val_files={args.val_files or args.train_files}",
        f"data.train_batch_size={args.batch_size}",
        f"data.max_prompt_length={context_len + 8}",
        f"data.max_response_length={k}",
        "data.truncation=left",
        "data.dataloader_num_workers=0",
        f"actor_rollout_ref.model.path={scorer}",
        "actor_rollout_ref.model.external_lib=spd_scorer",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        f"actor_rollout_ref.actor.optim.lr={args.lr}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={mini}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro}",
        "actor_rollout_ref.actor.use_kl_loss=False",
        "actor_rollout_ref.rollout.name=spd",
        "actor_rollout_ref.rollout.mode=sync",
        f"actor_rollout_ref.rollout.n={args.rollout_n}",
        f"actor_rollout_ref.rollout.response_length={k}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro}",
        "reward_model.reward_manager=batch",
        f"custom_reward_function.path={reward_fn}",
        "custom_reward_function.name=compute_score_batch",
        *(f"+custom_reward_function.reward_kwargs.{key}={value}" for key, value in kwargs.items()),
        f"trainer.n_gpus_per_node={args.n_gpus}",
        f"trainer.nnodes={args.nnodes}",
        f"trainer.total_training_steps={args.total_training_steps}",
        # steps given explicitly may span several passes over the data; the trainer stops at total_training_steps
        "trainer.total_epochs=1000",
        f"trainer.default_local_dir={out / 'checkpoints'}",
        f"trainer.save_freq={args.save_freq or args.total_training_steps}",
        "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]",
        "trainer.project_name=spd_scorer",
        f"trainer.experiment_name={args.experiment_name}",
        "trainer.logger=[console,file]",
        "trainer.test_freq=-1",
        "trainer.val_before_train=False",
    ]
    if args.device != "auto":
        result.append(f"trainer.device={args.device}")
    return result


def spd_metrics(non_tensor: dict) -> dict[str, float]:
    """The scorer's metrics from the reward's per-sample columns (``spd_scorer_reward.compute_score`` keys).

    acceptance_rate: accepted mismatches / mismatches; accepted_length_mean: draft tokens kept per sample, beside
    plain speculative decoding's (the draft up to its first mismatch); accuracy: the target's completions that keep
    the right answer; scenario counts A/B/C/D; target failures and latency.
    """
    if "scenario" not in non_tensor:
        return {}
    scenario = np.asarray(non_tensor["scenario"], dtype=object)
    accepted = np.asarray(non_tensor["accepted_mismatches"], dtype=np.float64)
    mismatches = np.asarray(non_tensor["num_mismatches"], dtype=np.float64)
    kept = np.asarray(non_tensor["accepted_length"], dtype=np.float64)
    out = {
        "acceptance_rate": float(accepted.sum() / max(mismatches.sum(), 1.0)),
        "accepted_length_mean": float(kept.mean()),
        "accuracy": float(np.mean([bool(c) for c in non_tensor["correct"]])),
        "target_failures": float(np.sum([bool(f) for f in non_tensor["target_failed"]])),
        "target_latency_s/mean": float(np.mean(np.asarray(non_tensor["target_latency_s"], dtype=np.float64))),
        "target_latency_s/max": float(np.max(np.asarray(non_tensor["target_latency_s"], dtype=np.float64))),
    }
    if "spd_draft_ids" in non_tensor and "spd_target_ids" in non_tensor:
        plain = [_plain_sd_length(d, t) for d, t in zip(non_tensor["spd_draft_ids"], non_tensor["spd_target_ids"])]
        out["plain_sd_length_mean"] = float(np.mean(plain))
        out["accepted_length_gain"] = out["accepted_length_mean"] - out["plain_sd_length_mean"]
    for name in ("A", "B", "C", "D"):
        out[f"scenario_{name}"] = float(np.sum(scenario == name))
    return {SPD_METRIC_PREFIX + key: value for key, value in out.items()}


def _plain_sd_length(draft, target) -> int:
    """Draft tokens plain speculative decoding keeps: those before the first mismatch."""
    for i, (d, t) in enumerate(zip(draft, target)):
        if int(d) != int(t):
            return i
    return len(draft)


def _make_trainer_cls():
    from verl.trainer.ppo.ray_trainer import RayPPOTrainer

    class SPDTrainer(RayPPOTrainer):
        """``RayPPOTrainer`` that also logs the SPD metrics of each step's rewards."""

        def _advantage_stage(self, batch, metrics):
            metrics.update(spd_metrics(batch.non_tensor_batch))
            return super()._advantage_stage(batch, metrics)

    return SPDTrainer


def build_config(args: argparse.Namespace, extra: list[str]) -> tuple[object, Path]:
    """Prepare a run: resolve the defaults, create the output directory, build the scorer if needed and compose
    verl's trainer config. Returns ``(config, output_dir)``."""
    resolve_defaults(args)
    out = Path(args.output_dir)
    k, context_len, _ = data_shape(args.train_files)
    out.mkdir(parents=True, exist_ok=True)
    scorer = scorer_dir(args.model_path, out)
    from verl.utils.config import compose_config

    config = compose_config("ppo_trainer", [*overrides(args, scorer, k, context_len, args.target_tokenizer), *extra])
    return config, out


def main(argv: list[str] | None = None) -> None:
    args, extra = parse_args(argv)
    try:
        config, out = build_config(args, extra)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(
        f"{PROG}: {args.total_training_steps} steps ({args.steps_from}) on {args.train_files}; output in {out}",
        flush=True,
    )
    if args.dry_run:
        print(
            f"{PROG}: dry run; trainer.total_training_steps={config.trainer.total_training_steps} "
            f"trainer.default_local_dir={config.trainer.default_local_dir}"
        )
        return
    os.environ.setdefault("VERL_FILE_LOGGER_PATH", str(out / "metrics.jsonl"))
    from verl.trainer.main_ppo import TaskRunner, run_ppo
    from verl.utils.device import auto_set_device

    auto_set_device(config)
    runner = type("SPDTaskRunner", (TaskRunner,), {"trainer_cls": _make_trainer_cls()})
    run_ppo(config, task_runner_class=runner)
    print(f"{PROG}: done; metrics in {out / 'metrics.jsonl'}, checkpoints in {out / 'checkpoints'}")


if __name__ == "__main__":
    main()
