"""The same GRPO workload through this framework's ``main_ppo`` and through TRL's ``GRPOTrainer``, side by side.

Workload (identical on both sides unless a flag changes it): the tiny Llama of ``verl.utils.testing.tiny`` built
offline, the quick start's "repeat the digit" prompts (``examples/quickstart/make_data.py``, the same rows in the
same order for both) scored by ``examples/quickstart/reward.py``; ``--batch`` prompts x ``--n`` samples per step,
``--response-length`` new tokens at most (stopping at EOS), temperature 1, no top-k / top-p; one AdamW step per GRPO
step (no weight decay, grad clip 1.0, constant lr, no warm-up), clip epsilon 0.2, advantages normalised by the group
std, token-mean loss, k3 KL to a frozen reference with coefficient 0.001; CPU, fp32, no vLLM, no gradient
checkpointing, HF ``generate`` for the rollouts.

* ours: ``verl.trainer.main_ppo.run_ppo`` (TaskRunner -> RayPPOTrainer -> FSDP2 ranks in Ray actors, hf rollout),
  ``--ranks`` FSDP ranks (default 2), 1 torch thread per process. s/step is ``timing_s/step`` from the metrics
  file: generation, reward, old_log_prob (skipped in this on-policy setting, as TRL skips it), ref, advantages,
  actor update (forward, backward, clip, AdamW), i.e. the whole step except the dataloader fetch and logging.
* TRL: ``GRPOTrainer`` in one process, run twice, with 1 and with 2 torch threads; the faster is "TRL (best)". s/step
  is a ``TrainerCallback``'s on_step_begin -> on_step_end, which in TRL 1.16 covers ``training_step`` (generation,
  reward, reference log-probs, advantages inside ``_prepare_inputs``, then forward + backward) plus grad clipping,
  AdamW and ``zero_grad``; again all but the dataloader fetch and logging.

Each run is a fresh subprocess; its total wall (interpreter start, imports, model load, Ray start-up, training,
shutdown) is reported too, and "fixed" = total wall - the sum of its step walls. The first ``--warmup`` steps are
left out of the s/step statistics (not of the reward curves). "LEARNED" means the mean reward of the last 5 steps
minus that of the first 5 is above 0.3. Prints a per-step reward table, a summary table and the ratio
``TRL (best) s/step / ours s/step`` (>= 1.00x: ours is at least as fast), and writes the reward curves to a PNG
when matplotlib is installed. TRL is optional; without it the script says how to install it and exits with 2.

Examples:
  python benchmarks/vs_trl.py                      # defaults: 30 steps, ours at 2 ranks, TRL at 1 and 2 threads
  python benchmarks/vs_trl.py --quick              # 4-step smoke test
  python benchmarks/vs_trl.py --ranks 1 2 --steps 40 --batch 8
  python benchmarks/vs_trl.py --ours-override actor_rollout_ref.model.use_remove_padding=True
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "examples" / "quickstart"
MAX_PROMPT_LENGTH = 48
KL_COEF = 0.001
CLIP_EPS = 0.2
SEED = 42
LEARN_WINDOW = 5  # steps averaged at each end of the reward curve
LEARN_THRESHOLD = 0.3
OURS_STAGES = ("gen", "reward", "old_log_prob", "ref", "adv", "update_actor")


def _trl_missing_message() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        torch_version = version("torch")
    except PackageNotFoundError:
        torch_version = "<your torch version>"
    return (
        "TRL is not installed; it is an optional dependency used only by this benchmark. Install it with torch\n"
        "pinned to the version you have, so pip does not replace a CPU build with a CUDA one:\n\n"
        f'    echo "torch=={torch_version}" > /tmp/torch-pin.txt\n'
        "    pip install trl -c /tmp/torch-pin.txt\n"
    )


def _require_trl() -> None:
    try:
        import trl  # noqa: F401
    except Exception as exc:  # missing, or installed but broken (e.g. an incompatible transformers): same advice
        print(f"`import trl` failed: {exc!r}\n\n{_trl_missing_message()}", file=sys.stderr)
        sys.exit(2)


def _prepare(workdir: Path, n_prompts: int) -> None:
    """Tiny model + tokenizer and the training parquet, shared by every run."""
    sys.path.insert(0, str(QUICKSTART))
    import pandas as pd
    from make_data import make_rows

    from verl.utils.testing.tiny import build_tiny_model

    build_tiny_model(workdir / "model", seed=0)
    pd.DataFrame(make_rows(n_prompts, 7, "train", seed=0)).to_parquet(workdir / "train.parquet")


def _load_compute_score():
    spec = importlib.util.spec_from_file_location("quickstart_reward", QUICKSTART / "reward.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.compute_score


# ---------------------------------------------------------------------------------------------------- ours


def run_ours(args, ranks: int, workdir: Path) -> dict:
    """One ``main_ppo`` run; per-step wall, stage walls, mean score and response length from the metrics file."""
    from verl.trainer.main_ppo import run_ppo
    from verl.utils.config import compose_config

    metrics = workdir / f"ours-{ranks}.jsonl"
    metrics.unlink(missing_ok=True)
    os.environ["VERL_FILE_LOGGER_PATH"] = str(metrics)
    micro = args.batch * args.n // ranks  # the whole per-rank batch in one forward/backward
    overrides = [
        "algorithm.adv_estimator=grpo",
        "algorithm.use_kl_in_reward=False",
        "algorithm.norm_adv_by_std_in_grpo=True",
        f"data.train_files={workdir / 'train.parquet'}",
        "data.val_files=null",
        "data.shuffle=False",
        f"data.train_batch_size={args.batch}",
        f"data.max_prompt_length={MAX_PROMPT_LENGTH}",
        f"data.max_response_length={args.response_length}",
        "data.dataloader_num_workers=0",
        f"actor_rollout_ref.model.path={workdir / 'model'}",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "actor_rollout_ref.actor.strategy=fsdp2",
        f"actor_rollout_ref.actor.optim.lr={args.lr}",
        "actor_rollout_ref.actor.optim.weight_decay=0.0",
        "actor_rollout_ref.actor.optim.lr_warmup_steps=0",
        "actor_rollout_ref.actor.optim.lr_scheduler_type=constant",
        "actor_rollout_ref.actor.optim.clip_grad=1.0",
        "actor_rollout_ref.actor.grad_clip=1.0",
        f"actor_rollout_ref.actor.clip_ratio={CLIP_EPS}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={args.batch}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro}",
        "actor_rollout_ref.actor.ppo_epochs=1",
        "actor_rollout_ref.actor.loss_agg_mode=token-mean",
        "actor_rollout_ref.actor.use_kl_loss=True",
        f"actor_rollout_ref.actor.kl_loss_coef={KL_COEF}",
        "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
        "actor_rollout_ref.actor.entropy_coeff=0",
        "actor_rollout_ref.rollout.name=hf",
        f"actor_rollout_ref.rollout.n={args.n}",
        "actor_rollout_ref.rollout.temperature=1.0",
        "actor_rollout_ref.rollout.top_k=-1",
        "actor_rollout_ref.rollout.top_p=1.0",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={micro}",
        f"custom_reward_function.path={QUICKSTART / 'reward.py'}",
        "custom_reward_function.name=compute_score",
        "trainer.device=cpu",
        "trainer.nnodes=1",
        f"trainer.n_gpus_per_node={ranks}",
        "trainer.logger=[file]",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        "trainer.resume_mode=disable",
        f"trainer.default_local_dir={workdir / f'ckpt-{ranks}'}",
        f"trainer.total_training_steps={args.steps}",
        "trainer.total_epochs=2",
        "trainer.progress_bar=False",
        *args.ours_override,
    ]
    run_ppo(compose_config("ppo_trainer", overrides))
    rows = {}
    for line in metrics.read_text().splitlines():
        record = json.loads(line)
        if "timing_s/step" in record.get("data", {}):
            rows[int(record["step"])] = record["data"]
    steps = [rows[s] for s in sorted(rows)]
    return {
        "step_s": [r["timing_s/step"] for r in steps],
        "reward": [r["critic/score/mean"] for r in steps],
        "response_length": [r.get("response_length/mean", float("nan")) for r in steps],
        "stages": {s: [r.get(f"timing_s/{s}", 0.0) for r in steps] for s in OURS_STAGES},
        "threads": 1,
    }


# ---------------------------------------------------------------------------------------------------- TRL


def _trl_dataset(workdir: Path):
    """The parquet's rows as a ``datasets.Dataset``: conversational ``prompt`` plus the columns the reward needs."""
    import datasets
    import pandas as pd

    rows = []
    for row in pd.read_parquet(workdir / "train.parquet").to_dict("records"):
        rows.append(
            {
                "prompt": [{"role": str(m["role"]), "content": str(m["content"])} for m in row["prompt"]],
                "data_source": row["data_source"],
                "ground_truth": str(row["reward_model"]["ground_truth"]),
                "extra_info": {k: (v.item() if hasattr(v, "item") else v) for k, v in row["extra_info"].items()},
            }
        )
    return datasets.Dataset.from_list(rows)


def _trl_reward_function():
    """``reward.py``'s ``compute_score`` behind TRL's reward signature (completions + dataset columns as kwargs)."""
    compute_score = _load_compute_score()

    def repeat_digit_reward(completions, ground_truth, data_source, extra_info=None, **_):
        scores = []
        for i, completion in enumerate(completions):
            # conversational prompts give [{"role": "assistant", "content": text}], plain ones the text itself
            text = completion[-1]["content"] if isinstance(completion, list) else completion
            info = extra_info[i] if extra_info is not None else None
            scores.append(float(compute_score(data_source[i], text, ground_truth[i], info)))
        return scores

    return repeat_digit_reward


def _our_prompt_ids(workdir: Path, tokenizer) -> list[int]:
    """The first row's prompt token ids as this framework's dataset produces them (un-padded)."""
    from omegaconf import OmegaConf

    from verl.utils.dataset.rl_dataset import RLHFDataset

    config = OmegaConf.create({"max_prompt_length": MAX_PROMPT_LENGTH, "prompt_key": "prompt", "truncation": "error"})
    return list(RLHFDataset(str(workdir / "train.parquet"), tokenizer, config)[0]["raw_prompt_ids"])


def trl_config_kwargs(args, output_dir: str) -> dict:
    """The ``GRPOConfig`` fields of the workload (TRL 1.16 names)."""
    per_step = args.batch * args.n
    return {
        "output_dir": output_dir,
        # one optimizer step = batch*n completions, generated fresh for that step and used once
        "per_device_train_batch_size": per_step,
        "gradient_accumulation_steps": 1,
        "steps_per_generation": 1,  # generation_batch_size = per_device_train_batch_size * 1
        "num_iterations": 1,
        "num_generations": args.n,
        "max_steps": args.steps,
        "max_completion_length": args.response_length,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "shuffle_dataset": False,  # same prompts in the same order as ours (data.shuffle=False)
        # loss: PPO-clip, token-level ratios, token mean over the whole batch ("dapo": sum / active tokens)
        "loss_type": "dapo",
        "importance_sampling_level": "token",
        "epsilon": CLIP_EPS,
        "scale_rewards": "group",
        "beta": KL_COEF,
        "use_bias_correction_kl": False,  # KL term not multiplied by the importance ratio, as in ours
        "mask_truncated_completions": False,
        # optimizer: plain torch AdamW, as ours
        "optim": "adamw_torch",
        "learning_rate": args.lr,
        "weight_decay": 0.0,
        "adam_beta1": 0.9,
        "adam_beta2": 0.999,
        "adam_epsilon": 1e-8,
        "max_grad_norm": 1.0,
        "lr_scheduler_type": "constant",
        "warmup_steps": 0,
        # CPU, fp32, HF generate, nothing saved or reported
        "use_cpu": True,
        "bf16": False,
        "fp16": False,
        "use_vllm": False,
        "gradient_checkpointing": False,
        "model_init_kwargs": {"dtype": "float32"},
        "report_to": "none",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        "seed": SEED,
        "data_seed": SEED,
    }


def run_trl(args, threads: int, workdir: Path) -> dict:
    """One ``GRPOTrainer`` run with ``threads`` torch threads; per-step wall from a callback, rewards from logs."""
    import torch

    torch.set_num_threads(threads)
    from transformers import AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.walls: list[float] = []
            self._start = 0.0

        def on_step_begin(self, targs, state, control, **kwargs):
            self._start = time.perf_counter()

        def on_step_end(self, targs, state, control, **kwargs):
            self.walls.append(time.perf_counter() - self._start)

    model_dir = str(workdir / "model")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = _trl_dataset(workdir)
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=model_dir,
        reward_funcs=_trl_reward_function(),
        args=GRPOConfig(**trl_config_kwargs(args, str(workdir / f"trl-{threads}"))),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[timer],
    )
    # Prompt check: TRL's own tokenisation of a conversational prompt vs this framework's dataset.
    trl_ids = list(trainer._tokenize_prompts([dataset[0]["prompt"]])[0][0])
    ours_ids = _our_prompt_ids(workdir, tokenizer)
    trainer.train()
    logs = {int(e["step"]): e for e in trainer.state.log_history if "reward" in e}
    steps = [logs[s] for s in sorted(logs)]
    return {
        "step_s": timer.walls,
        "reward": [e["reward"] for e in steps],
        "response_length": [e.get("completions/mean_length", float("nan")) for e in steps],
        "threads": torch.get_num_threads(),
        "prompt_check": {"trl": trl_ids, "ours": ours_ids},
    }


# ---------------------------------------------------------------------------------------------------- report


def _window(steps: int) -> int:
    return max(1, min(LEARN_WINDOW, steps // 2))


def summarise(result: dict, warmup: int) -> dict:
    measured = result["step_s"][warmup:]
    rewards, k = result["reward"], _window(len(result["reward"]))
    first, last = statistics.mean(rewards[:k]), statistics.mean(rewards[-k:])
    return {
        "mean": statistics.mean(measured),
        "std": statistics.stdev(measured) if len(measured) > 1 else 0.0,
        "median": statistics.median(measured),
        "n": len(measured),
        "first": first,
        "last": last,
        "k": k,
        "learned": last - first > LEARN_THRESHOLD,
        "fixed": result["total_wall"] - sum(result["step_s"]),
        "resp_len": statistics.mean(result["response_length"]),
    }


def plot_rewards(results: dict[str, dict], out_png: Path, title: str) -> str | None:
    """Both sides' reward curves on one axis (raw thin, EMA thick); ``None`` when matplotlib is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    from verl.utils.plotting import smooth

    fig = Figure(figsize=(7.5, 4.0), layout="constrained")
    FigureCanvasAgg(fig)  # own canvas: the global pyplot backend is left alone
    ax = fig.subplots()
    colors = ("tab:blue", "tab:cyan", "tab:orange", "tab:red", "tab:green", "tab:purple")
    for color, (name, res) in zip(colors, results.items()):
        steps = list(range(1, len(res["reward"]) + 1))
        ax.plot(steps, res["reward"], color=color, alpha=0.3, linewidth=1.0)
        ax.plot(steps, smooth(res["reward"], 0.6), color=color, linewidth=2.0, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("mean reward (ours: critic/score/mean, TRL: reward)")
    ax.set_ylim(-0.05, 1.05)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.suptitle(title)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return str(out_png)


def report(args, results: dict[str, dict], ours_names: list[str], trl_names: list[str]) -> None:
    summ = {name: summarise(res, args.warmup) for name, res in results.items()}
    check = next((results[n]["prompt_check"] for n in trl_names if "prompt_check" in results[n]), None)
    print(
        f"\nGRPO: {args.batch} prompts x {args.n} samples per step, <= {args.response_length} response tokens, "
        f"lr {args.lr:g}, {args.steps} steps (s/step: mean of the {args.steps - args.warmup} after "
        f"{args.warmup} warm-up)"
    )
    if check is not None:
        same = check["trl"] == check["ours"]
        print(
            f"prompt ids, row 0: {'IDENTICAL' if same else 'DIFFERENT'} ({len(check['ours'])} tokens ours, "
            f"{len(check['trl'])} TRL)" + ("" if same else f"\n  ours {check['ours']}\n  TRL  {check['trl']}")
        )
    print("\n### reward per step\n")
    print("| step | " + " | ".join(results) + " |")
    print("|---:|" + "---:|" * len(results))
    for i in range(max(len(r["reward"]) for r in results.values())):
        cells = [f"{r['reward'][i]:.3f}" if i < len(r["reward"]) else "" for r in results.values()]
        print(f"| {i + 1} | " + " | ".join(cells) + " |")
    print("\n### summary\n")
    k = _window(args.steps)
    print(
        "| run | threads/process | s/step (mean ± std, n) | median s/step | total wall s | fixed s | "
        f"reward first-{k} | last-{k} | rise | mean resp. len | learned |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, s in summ.items():
        print(
            f"| {name} | {results[name]['threads']} | {s['mean']:.3f} ± {s['std']:.3f} ({s['n']}) | "
            f"{s['median']:.3f} | {results[name]['total_wall']:.1f} | {s['fixed']:.1f} | {s['first']:.3f} | "
            f"{s['last']:.3f} | {s['last'] - s['first']:+.3f} | {s['resp_len']:.1f} | "
            f"{'LEARNED' if s['learned'] else 'NOT LEARNED'} |"
        )
    for name in ours_names:
        stages = results[name]["stages"]
        means = ", ".join(f"{st} {statistics.mean(stages[st][args.warmup :]):.3f}" for st in OURS_STAGES)
        print(f"\n{name} stages (s/step): {means}")
    best = min(trl_names, key=lambda n: summ[n]["mean"])
    print("\nTRL runs: " + ", ".join(f"{n} {summ[n]['mean']:.3f} s/step" for n in trl_names) + f"; best: {best}")
    for name in ours_names:
        ratio = summ[best]["mean"] / summ[name]["mean"]
        print(f"TRL (best) / ours = {ratio:.2f}x   [{best} {summ[best]['mean']:.3f} / {name} {summ[name]['mean']:.3f}]")
    print(
        "\ns/step, ours: timing_s/step = gen + reward + old_log_prob + ref + adv + update_actor (driver-side wall"
        " of the whole step, Ray calls included; excludes the dataloader fetch and logging; old_log_prob is ~0"
        " because one mini-batch x one epoch is on-policy and the pass is skipped, as TRL skips it)."
        "\ns/step, TRL: on_step_begin -> on_step_end = training_step (generation, reward, ref log-probs, advantages,"
        " forward + backward) + grad clip + AdamW + zero_grad (excludes the dataloader fetch and logging)."
        "\nTRL loss_type=dapo: per-token loss summed over the batch / number of completion tokens (token-mean)."
        "\ntotal wall: the run's whole subprocess (imports, model load, Ray start-up, training, shutdown);"
        " fixed = total wall - sum of all step walls."
    )
    if not args.no_plot:
        png = plot_rewards(results, Path(args.out_dir) / "reward_curves.png", "GRPO reward: ours vs TRL")
        print(f"\nreward curves: {png}" if png else "\nmatplotlib not installed: no reward-curve PNG")


# ---------------------------------------------------------------------------------------------------- driver


def _child(args) -> None:
    """Run one configuration in this (fresh) process and write its result as JSON."""
    workdir = Path(args.child_workdir)
    kind, count = args.child.split(":")
    result = run_ours(args, int(count), workdir) if kind == "ours" else run_trl(args, int(count), workdir)
    Path(args.child_out).write_text(json.dumps(result))


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--steps", type=int, default=30, help="training steps per run (default 30)")
    parser.add_argument(
        "--warmup", type=int, default=2, help="first steps left out of the s/step statistics (default 2)"
    )
    parser.add_argument("--batch", type=int, default=16, help="prompts per step (default 16)")
    parser.add_argument("--n", type=int, default=4, help="samples per prompt, the GRPO group size (default 4)")
    parser.add_argument("--response-length", type=int, default=16, help="max new tokens per response (default 16)")
    parser.add_argument("--lr", type=float, default=1e-2, help="AdamW learning rate, as the quick start (1e-2)")
    parser.add_argument(
        "--ranks", type=int, nargs="+", default=[2], help="FSDP rank counts to run ours with (default: 2)"
    )
    parser.add_argument(
        "--trl-threads", type=int, nargs="+", default=[1, 2], help="torch thread counts for TRL (default: 1 2)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 steps, 1 warm-up")
    parser.add_argument(
        "--ours-override",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra Hydra overrides for ours, appended last (e.g. actor_rollout_ref.model.use_remove_padding=True)",
    )
    parser.add_argument(
        "--out-dir",
        default=str(REPO / "outputs" / "vs_trl"),
        help="where reward_curves.png and results.json go (default: outputs/vs_trl)",
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    parser.add_argument("--verbose", action="store_true", help="show the runs' own output instead of hiding it")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-workdir", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup = 4, 1
    if args.child:
        return args
    if args.steps - args.warmup < 1:
        parser.error("--steps must exceed --warmup")
    if any(args.batch * args.n % r for r in args.ranks):
        parser.error("--batch * --n must be divisible by every --ranks value")
    return args


def main() -> None:
    args = _parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # ours: 1 thread per process, driver and workers alike
    if args.child:
        _child(args)
        return
    _require_trl()
    results: dict[str, dict] = {}
    ours_names = [f"ours {r} rank{'s' if r > 1 else ''}" for r in args.ranks]
    trl_names = [f"TRL {t} thread{'s' if t > 1 else ''}" for t in args.trl_threads]
    runs = [(n, f"ours:{r}", {}) for n, r in zip(ours_names, args.ranks)]
    runs += [(n, f"trl:{t}", {"OMP_NUM_THREADS": str(t)}) for n, t in zip(trl_names, args.trl_threads)]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        _prepare(workdir, n_prompts=args.batch * (args.steps + 1))
        base = [sys.executable, __file__, "--child-workdir", tmp, "--steps", str(args.steps)]
        base += ["--batch", str(args.batch), "--n", str(args.n), "--response-length", str(args.response_length)]
        base += ["--lr", repr(args.lr), "--ours-override", *args.ours_override]
        for i, (name, child, env) in enumerate(runs):
            out, log = workdir / f"result-{i}.json", workdir / f"run-{i}.log"
            print(f"running {name} ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            with open(log, "w") as fp:
                sink = None if args.verbose else fp
                proc = subprocess.run(
                    [*base, "--child", child, "--child-out", str(out)],
                    env={**os.environ, **env},
                    stdout=sink,
                    stderr=subprocess.STDOUT if sink else None,
                )
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                tail = "" if args.verbose else "\n".join(log.read_text().splitlines()[-40:])
                sys.exit(f"{name} failed (exit {proc.returncode}); last lines of its output:\n{tail}")
            results[name] = json.loads(out.read_text()) | {"total_wall": wall}
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.out_dir) / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    report(args, results, ours_names, trl_names)


if __name__ == "__main__":
    main()
