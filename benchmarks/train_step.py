"""One GRPO step, measured two ways in one run: through this framework and as a plain transformers loop.

* framework: ``main_ppo``'s TaskRunner -> RayPPOTrainer -> 1 and 2 FSDP2 ranks (gloo) in Ray actors, hf rollout,
  each configuration in a fresh subprocess; the worker class is ``profile_step.ProfiledActorRolloutRefWorker``,
  which adds timers (model forward/backward/optimizer, collectives, FSDP hooks, weight sync, (de)serialisation)
  inside the workers without changing what they compute.
* baseline: the same workload (the same parquet prompts, chat template and left padding to the batch's longest
  prompt) in one process with plain transformers and torch: ``generate``, a no-grad forward (``logits_to_keep``)
  for the old log-probs, one for the reference, GRPO advantages, one PPO-clip update with AdamW.

Prints, per stage (gen, old_log_prob, ref, adv, update_actor, step), the wall time, the time inside the model and
the time around it split by where it goes (see ``profile_step``), the framework/plain ratio, tokens/s and the peak
RSS of every process. The first step of each run is a warm-up and is not counted. ``--cprofile`` adds a short
extra run that prints cProfile summaries of the driver and of worker rank 0 for one step.

Usage: python benchmarks/train_step.py [--steps 4] [--batch 16] [--n 4] [--response-length 16] [--ranks 1 2]
       [--cprofile] [--override KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("gen", "old_log_prob", "ref", "adv", "update_actor", "step")


def _prepare(workdir: Path, n_prompts: int) -> tuple[str, str]:
    sys.path.insert(0, str(REPO / "examples" / "quickstart"))
    import pandas as pd
    from make_data import make_rows

    from verl.utils.testing.tiny import build_tiny_model

    model_dir = workdir / "model"
    build_tiny_model(model_dir, seed=0)
    pd.DataFrame(make_rows(n_prompts, 7, "train", seed=0)).to_parquet(workdir / "train.parquet")
    return str(model_dir), str(workdir / "train.parquet")


def run_framework(args, ranks: int, model_dir: str, data: str, workdir: Path) -> dict:
    """One ``main_ppo`` run with the profiled worker/trainer (``profile_step``); stage walls and the raw records."""
    import profile_step

    from verl.trainer.main_ppo import run_ppo
    from verl.utils.config import compose_config

    metrics = workdir / f"framework-{ranks}.jsonl"
    os.environ["VERL_FILE_LOGGER_PATH"] = str(metrics)
    micro = args.batch * args.n // ranks
    overrides = [
        "algorithm.adv_estimator=grpo",
        f"data.train_files={data}",
        "data.val_files=null",
        f"data.train_batch_size={args.batch}",
        "data.max_prompt_length=48",
        f"data.max_response_length={args.response_length}",
        "data.dataloader_num_workers=0",
        f"actor_rollout_ref.model.path={model_dir}",
        "actor_rollout_ref.model.enable_gradient_checkpointing=False",
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.actor.optim.lr=1e-3",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={args.batch}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={micro}",
        "actor_rollout_ref.actor.use_kl_loss=True",
        "actor_rollout_ref.rollout.name=hf",
        f"actor_rollout_ref.rollout.n={args.n}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={micro}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={micro}",
        f"custom_reward_function.path={REPO / 'examples' / 'quickstart' / 'reward.py'}",
        "trainer.device=cpu",
        f"trainer.n_gpus_per_node={ranks}",
        "trainer.logger=[file]",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        "trainer.resume_mode=disable",
        f"trainer.default_local_dir={workdir / f'ckpt-{ranks}'}",
        f"trainer.total_training_steps={args.steps + 1}",
        "trainer.total_epochs=100",
        "trainer.progress_bar=False",
        *args.override,
    ]
    profile_step.install_driver()
    run_ppo(compose_config("ppo_trainer", overrides), task_runner_class=profile_step.profiled_task_runner())
    rows = [json.loads(line)["data"] for line in metrics.read_text().splitlines()][1:]  # drop the warm-up step
    out = {s: statistics.mean(r.get(f"timing_s/{s}", 0.0) for r in rows) for s in STAGES}
    out["tokens"] = statistics.mean(r["perf/total_num_tokens"] for r in rows)
    return {"walls": out, "profile": profile_step.RESULT}


def run_plain(args, model_dir: str, data: str) -> dict:
    """The same GRPO step, written directly against transformers in one process (model time measured the same way)."""
    import profile_step as ps
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    actor = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    optim = torch.optim.AdamW(actor.parameters(), lr=1e-3)
    ps.install_common()
    ps.patch_model_forward(actor)
    generate = ps.timed("generate", actor.generate)

    @functools.partial(ps.timed, "optimizer")
    def clip_and_step():
        torch.nn.utils.clip_grad_norm_(actor.parameters(), 1.0)
        optim.step()

    # The framework's prompts (same parquet rows, chat template, left padding to the batch's longest prompt).
    import pandas as pd

    prompt_rows = pd.read_parquet(data)["prompt"].tolist()
    tok.padding_side = "left"

    def step_prompts(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        chats = [[dict(m) for m in prompt_rows[(step * args.batch + i) % len(prompt_rows)]] for i in range(args.batch)]
        texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in chats]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        return enc.input_ids.repeat_interleave(args.n, 0), enc.attention_mask.repeat_interleave(args.n, 0)

    R = args.response_length

    def logp(model, seq, attn):
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        # only the response positions through the head, as TRL does (logits_to_keep)
        out = model(input_ids=seq, attention_mask=attn, position_ids=pos, use_cache=False, logits_to_keep=R + 1)
        logits = out.logits[:, :-1]
        return torch.log_softmax(logits.float(), -1).gather(-1, seq[:, -R:, None]).squeeze(-1)

    rows, model_rows = [], []
    for step in range(args.steps + 1):
        ids, mask = step_prompts(step)
        t, m = {}, {}

        def mark(stage, since, before, t=t, m=m):
            t[stage] = time.perf_counter() - since
            m[stage] = sum(ps.delta(ps.snapshot(), before, ps.MODEL_BUCKETS).values())

        t0, step_before = time.perf_counter(), ps.snapshot()
        with torch.no_grad():
            out = generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=R,
                min_new_tokens=R,
                do_sample=True,
                top_k=0,
                pad_token_id=tok.pad_token_id,
            )
        mark("gen", t0, step_before)
        seq = out[:, : ids.shape[1] + R]
        attn = torch.cat([mask, torch.ones_like(seq[:, ids.shape[1] :])], dim=1)
        s, before = time.perf_counter(), ps.snapshot()
        with torch.no_grad():
            old = logp(actor, seq, attn)
        mark("old_log_prob", s, before)
        s, before = time.perf_counter(), ps.snapshot()
        with torch.no_grad():
            ref_lp = logp(ref, seq, attn)
        mark("ref", s, before)
        s, before = time.perf_counter(), ps.snapshot()
        words = tok.batch_decode(seq[:, -R:], skip_special_tokens=True)
        score = torch.tensor([sum(w == "7" for w in x.split()) / max(len(x.split()), 1) for x in words])
        grouped = score.view(args.batch, args.n)
        adv = ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-6)).view(-1, 1)
        mark("adv", s, before)
        s, before = time.perf_counter(), ps.snapshot()
        new = logp(actor, seq, attn)
        ratio = torch.exp(new - old)
        pg = torch.max(-adv * ratio, -adv * ratio.clamp(0.8, 1.2)).mean()
        kl = (torch.exp(ref_lp - new) - (ref_lp - new) - 1).mean()
        (pg + 0.001 * kl).backward()
        clip_and_step()
        optim.zero_grad()
        mark("update_actor", s, before)
        mark("step", t0, step_before)
        t["tokens"] = float(attn.sum())
        t.update(ps.delta(ps.snapshot(), step_before, ps.COUNTERS))
        rows.append(t)
        model_rows.append(m)
    rows, model_rows = rows[1:], model_rows[1:]
    return {
        "walls": {k: statistics.mean(r[k] for r in rows) for k in (*STAGES, "tokens")},
        "counters": {k: statistics.mean(r[k] for r in rows) for k in ps.COUNTERS},
        "model": {k: statistics.mean(r[k] for r in model_rows) for k in STAGES},
        "peak_rss_mb": ps.peak_rss_mb(),
        "threads": torch.get_num_threads(),
    }


COLUMNS = (
    ("wall", "wall"),
    ("model", "model (fwd+bwd+opt+gen)"),
    ("around", "around"),
    ("collective", "collectives"),
    ("fsdp", "FSDP hooks"),
    ("weight_sync", "weight sync"),
    ("worker_py", "worker Python"),
    ("rank_wait", "rank imbalance"),
    ("serde", "(de)serialise"),
    ("ray", "Ray submit+transport"),
    ("dispatch", "dispatch+collect"),
    ("driver_py", "driver Python"),
)


def _mean(values) -> float:
    values = list(values)
    return statistics.mean(values) if values else 0.0


def _worker_steps(records: list[dict]) -> list[list[dict]]:
    """Group one rank's call records into steps (each step starts at generate_sequences)."""
    steps: list[list[dict]] = []
    for rec in records:
        if rec["method"] == "generate_sequences" or not steps:
            steps.append([])
        steps[-1].append(rec)
    return steps


def breakdown(profile: dict) -> dict[str, dict[str, float]]:
    """Per stage: wall, model time and the time around it, split by where it went (means over measured steps)."""
    import profile_step as ps

    driver = [r for r in profile["driver"]["stages"] if r["step"] > 1]  # step 1 is the warm-up
    ranks = [_worker_steps(w["records"])[1:] for w in profile["workers"]]
    out = {}
    for stage in STAGES:
        per_step = []
        for step_idx, drow in enumerate(r for r in driver if r["stage"] == stage):
            calls = [[c for c in steps[step_idx] if stage == "step" or c["stage"] == stage] for steps in ranks]
            span, model, coll, fsdp, wsync, wpy, wser = [], [], [], [], [], [], []
            for rank_calls in calls:
                total = sum(c["total"] for c in rank_calls)
                inner_ser = sum(c["serialize"] + c["deserialize"] for c in rank_calls)
                io_ser = sum(c["deserialize_in"] + c["serialize_out"] for c in rank_calls)
                m = sum(c[b] for c in rank_calls for b in ps.MODEL_BUCKETS)
                coll.append(sum(c["collective"] for c in rank_calls))
                fsdp.append(sum(c["fsdp"] for c in rank_calls))
                wsync.append(sum(c["weight_sync"] for c in rank_calls))
                model.append(m)
                wpy.append(total - m - coll[-1] - fsdp[-1] - wsync[-1] - inner_ser)
                wser.append(inner_ser + io_ser)
                span.append(total + io_ser)
            d_ser = drow["serialize"] + drow["deserialize"]
            row = {
                "wall": drow["wall"],
                "model": _mean(model),
                "collective": _mean(coll),
                "fsdp": _mean(fsdp),
                "weight_sync": _mean(wsync),
                "worker_py": _mean(wpy),
                "rank_wait": max(span, default=0.0) - _mean(span),
                "serde": d_ser + _mean(wser),
                "ray": drow["submit"] + drow["wait"] - max(span, default=0.0),
                "dispatch": drow["dispatch"] + drow["collect"],
            }
            row["driver_py"] = drow["wall"] - d_ser - sum(drow[k] for k in ("dispatch", "submit", "wait", "collect"))
            row["around"] = row["wall"] - row["model"]
            per_step.append(row)
        out[stage] = {k: _mean(r[k] for r in per_step) for k, _ in COLUMNS}
    return out


def plain_breakdown(plain: dict) -> dict[str, dict[str, float]]:
    out = {}
    for stage in STAGES:
        wall, model = plain["walls"][stage], plain["model"][stage]
        out[stage] = {k: 0.0 for k, _ in COLUMNS} | {"wall": wall, "model": model, "around": wall - model}
        out[stage]["driver_py"] = wall - model
    return out


def print_breakdown(title: str, table: dict[str, dict[str, float]]) -> None:
    print(f"\n### {title} (seconds per step)\n")
    print("| stage | " + " | ".join(label for _, label in COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    for stage in STAGES:
        print(f"| {stage} | " + " | ".join(f"{table[stage][k]:.3f}" for k, _ in COLUMNS) + " |")


def print_memory(name: str, result: dict) -> None:
    if "profile" not in result:
        print(f"| {name} | driver (plain loop, 1 process, {result['threads']} thread) | {result['peak_rss_mb']:.0f} |")
        return
    by_pid = {w["pid"]: w for w in result["profile"]["workers"]}
    ray_sys = 0.0
    for proc in result["profile"]["memory"]:
        if proc["pid"] in by_pid:
            w = by_pid[proc["pid"]]
            print(f"| {name} | worker rank {w['rank']} ({w['threads']} thread) | {proc['peak_rss_mb']:.0f} |")
        elif proc["name"] == "driver":
            print(f"| {name} | driver (TaskRunner + trainer) | {proc['peak_rss_mb']:.0f} |")
        else:
            ray_sys += proc["peak_rss_mb"]
    print(f"| {name} | Ray system processes (raylet, GCS, idle workers...), sum | {ray_sys:.0f} |")


def _child(args) -> None:
    """Run one configuration in this (fresh) process and write its result as JSON."""
    workdir = Path(args.child_workdir)
    model_dir, data = str(workdir / "model"), str(workdir / "train.parquet")
    if args.child == "plain":
        import torch

        torch.set_num_threads(1)
        result = run_plain(args, model_dir, data)
    else:
        result = run_framework(args, int(args.child), model_dir, data, workdir)
    Path(args.child_out).write_text(json.dumps(result))


def _print_comparison(tables: dict, results: dict) -> None:
    fw_names = [n for n in tables if n != "plain"]
    print("\n### wall time and model time, framework vs plain\n")
    head = " | ".join(f"{n} wall | ratio" for n in fw_names)
    print(f"| stage | plain wall | plain model | {head} | " + " | ".join(f"{n} model" for n in fw_names) + " |")
    print("|---|" + "---:|" * (2 + 3 * len(fw_names)))
    for stage in STAGES:
        p = tables["plain"][stage]["wall"]
        cells = [f"{tables[n][stage]['wall']:.3f} | {tables[n][stage]['wall'] / p:.2f}x" for n in fw_names]
        models = [f"{tables[n][stage]['model']:.3f}" for n in fw_names]
        print(f"| {stage} | {p:.3f} | {tables['plain'][stage]['model']:.3f} | " + " | ".join(cells + models) + " |")
    tps = [f"{n}: {results[n]['walls']['tokens'] / tables[n]['step']['wall']:.0f}" for n in tables]
    print("\ntokens/s: " + ", ".join(tps))
    skipped = [n for n in fw_names if tables[n]["old_log_prob"]["wall"] == 0.0]
    if skipped:  # the framework skipped its old-log-prob pass (on-policy); compare with a plain loop that does too
        plain = tables["plain"]["step"]["wall"] - tables["plain"]["old_log_prob"]["wall"]
        ratios = ", ".join(f"{n} {tables[n]['step']['wall'] / plain:.2f}x" for n in skipped)
        print(
            "old-log-prob pass skipped (actor.skip_on_policy_old_log_prob; off with --override "
            f"actor_rollout_ref.actor.skip_on_policy_old_log_prob=False). Against a plain loop that skips its "
            f"old-log-prob forward too ({plain:.3f} s): {ratios}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="measured steps (after one warm-up step)")
    parser.add_argument("--batch", type=int, default=16, help="prompts per step")
    parser.add_argument("--n", type=int, default=4, help="samples per prompt")
    parser.add_argument("--response-length", type=int, default=16)
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="FSDP rank counts to measure")
    parser.add_argument("--cprofile", action="store_true", help="also cProfile one step of the driver and rank 0")
    parser.add_argument(
        "--override", action="append", default=[], help="extra main_ppo override for the framework runs (repeatable)"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-workdir", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # 1 thread per process, driver and workers alike
    sys.path.insert(0, str(REPO / "benchmarks"))
    if args.child:
        _child(args)
        return
    # Ray workers import profile_step (the profiled worker class) through this.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "benchmarks"), os.environ.get("PYTHONPATH")]))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        _prepare(workdir, n_prompts=args.batch * (args.steps + 2))
        base = [sys.executable, __file__, "--batch", str(args.batch), "--n", str(args.n)]
        base += [f"--override={o}" for o in args.override]
        base += ["--response-length", str(args.response_length), "--child-workdir", tmp]
        runs = [("plain", "plain", args.steps, {})]
        runs += [(f"framework {r} rank{'s' if r > 1 else ''}", str(r), args.steps, {}) for r in args.ranks]
        if args.cprofile:  # a separate short run, so the profiler's cost stays out of the tables
            runs.append(("cprofile", str(max(args.ranks)), 2, {"BENCH_CPROFILE_STEP": "3"}))
        for name, child, steps, env in runs:
            out = workdir / f"result-{len(results)}.json"
            cmd = [*base, "--steps", str(steps), "--child", child, "--child-out", str(out)]
            print(f"running {name} ...", file=sys.stderr, flush=True)
            subprocess.run(cmd, check=True, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
            results[name] = json.loads(out.read_text())
    profiled = results.pop("cprofile", None)
    tables = {"plain": plain_breakdown(results["plain"])}
    tables.update({name: breakdown(res["profile"]) for name, res in results.items() if name != "plain"})
    print(f"\nGRPO step: {args.batch} prompts x {args.n} samples, {args.response_length} response tokens, ", end="")
    print(f"1 thread per process; mean of {args.steps} steps after one warm-up")
    for name, table in tables.items():
        print_breakdown(name, table)
    _print_comparison(tables, results)
    print("\nscoring forwards (old_log_prob, ref, update_actor; no KV cache), per step, all ranks:")
    for name, res in results.items():
        if name == "plain":
            c = res["counters"]
        else:
            calls = [r for w in res["profile"]["workers"] for s in _worker_steps(w["records"])[1:] for r in s]
            steps = max(len(_worker_steps(res["profile"]["workers"][0]["records"])) - 1, 1)
            c = {k: sum(r[k] for r in calls) / steps for k in ("positions", "real_tokens")}
        pad = 1 - c["real_tokens"] / c["positions"] if c["positions"] else 0.0
        print(f"  {name}: {c['positions']:.0f} positions, {c['real_tokens']:.0f} real tokens ({pad:.0%} padding)")
    for name, res in results.items():
        if name != "plain":
            walls = [r["wall"] for r in res["profile"]["driver"]["stages"] if r["stage"] == "step"][1:]
            print(f"{name}: step wall per measured step: " + ", ".join(f"{w:.3f}" for w in walls))
    print("\n### peak RSS per process (MB)\n")
    print("| run | process | peak RSS MB |\n|---|---|---:|")
    for name, res in results.items():
        print_memory(name, res)
    print(
        "\nmodel = HF forward + backward + clip/optimizer step + generate loop, exclusive of collectives; around ="
        " wall - model.\nWorker columns are means over ranks; rank imbalance = slowest rank - mean; Ray = .remote +"
        " ray.get minus the slowest rank's (deserialise + method + serialise)."
    )
    if profiled is not None:
        prof = profiled["profile"]
        print("\n### cProfile, driver, one step\n")
        print(prof["driver"]["profile"])
        rank0 = next(w for w in prof["workers"] if w["rank"] == 0)
        print("\n### cProfile, worker rank 0, one step\n")
        print(rank0["profile"])


if __name__ == "__main__":
    main()
