"""SPD quality on held-out prompts: the trained scorer against the published acceptance policies, in one run.

Set-up (offline, CPU; ``verl.utils.testing.spd_task``): a 4-layer target trained on single-digit addition with
worded answers, and a weaker 2-layer draft that prefers other phrasings and a newline separator and gets some sums
wrong. The target is served by ``python -m verl.serve`` on 127.0.0.1; every policy below is judged by the training
reward's own path (``spd_scorer_reward.compute_score_batch``): the target completes the hybrid prefix, and the
answer is right when its number is the sum.

Policies, each a rule for the mismatching draft tokens (matching ones are always kept):

* ``accept none`` (plain speculative decoding) and ``accept all``;
* ``target p >= x``: the target's probability of the draft token (the "probability threshold" judge), swept;
* ``target entropy >= h``: accept where the target is unsure (the entropy judge), swept;
* ``KL(target || draft) <= x``: accept where the two distributions agree (the KL-threshold judge), swept;
* ``top-k / delta``: TensorRT-LLM's relaxed acceptance: the draft token is among the target's ``k`` most likely and
  its probability is within ``delta`` of the most likely one's, swept over ``k`` and ``delta``;
* ``AutoJudge``: a supervised classifier with the scorer's architecture (the draft's body and a score head),
  trained offline on oracle labels from the training split: would accepting this one token keep the answer?
* ``SPD scorer``: trained with GRPO by ``train_spd_scorer.py --model_path DRAFT --target_model_url URL`` against the
  served target, on the training split only; greedy decisions ``p >= tau`` at several ``tau``.

An outcome depends only on the first rejected mismatch ``j``, so the target completes each distinct hybrid prefix
of a split once (an oracle table); a policy is then scored from its ``j`` per row: draft tokens kept (``j``, or K
when it rejects nothing) and the answer's accuracy. The AutoJudge labels come from the training split's table.
Nothing is tuned on the held-out split.

Writes ``OUT/report.json`` (a list of ``{"policy", "family", "tokens_kept", "accuracy", "split"}``),
``OUT/table.csv`` and ``OUT/pareto.png`` (tokens kept against accuracy, every policy).

Usage::

    python -m verl.utils.testing.spd_task outputs/spd_quality/task   # once: the models (cached; about 2 min)
    python benchmarks/spd_quality.py                                 # the comparison
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "spd_quality", help="work directory")
    parser.add_argument("--task", type=Path, default=None, help="the spd_task directory (default OUT/task)")
    parser.add_argument("--scorer", default=None, help="a trained scorer export to evaluate (skips training)")
    parser.add_argument("--k", type=int, default=10, help="K, draft tokens per sample")
    parser.add_argument("--max-tokens", type=int, default=16, help="target completion budget")
    parser.add_argument("--steps", type=int, default=40, help="GRPO steps of the scorer")
    parser.add_argument("--ranks", type=int, default=2, help="training ranks (CPU processes)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per GRPO step")
    parser.add_argument("--rollout-n", type=int, default=8, help="decision vectors per prompt")
    parser.add_argument("--lr", type=float, default=3e-4, help="scorer learning rate")
    parser.add_argument(
        "--trade-offs",
        nargs="+",
        default=["2:1", "0.5:1"],
        help="one scorer per ALPHA:BETA (scenario A bonus 1 + alpha * accepted / K, scenario C penalty -beta)",
    )
    parser.add_argument("--autojudge-steps", type=int, default=300, help="AutoJudge training steps")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


# ------------------------------------------------------------------------------------------------ the served target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(target: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``python -m verl.serve TARGET`` on a free port; returns the process and its /v1/completions URL."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "verl.serve", str(target), "--port", str(port), "--max-batch-size", "64"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"verl.serve exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2):
                return proc, base + "/v1/completions"
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"verl.serve did not answer /health within 120 s; see {log}")


# ------------------------------------------------------------------------------------------------ oracle and features


def mismatches(frame) -> list[list[int]]:
    return [
        [i for i, (d, t) in enumerate(zip(ds, ts)) if d != t]
        for ds, ts in zip(frame["spd_draft_ids"], frame["spd_target_ids"])
    ]


def oracle_table(frame, url: str, target: Path, args: argparse.Namespace) -> list[dict[int, bool]]:
    """Per row, ``j -> answer correct`` for every possible first rejection ``j`` (its mismatch positions, and K for
    none), each hybrid prefix completed once by the served target through the training reward."""
    from verl.utils.reward_score.spd_scorer_reward import compute_score_batch

    jobs, infos, truths = [], [], []
    for row, (info, spots, truth) in enumerate(zip(frame["extra_info"], mismatches(frame), frame["reward_model"])):
        k = len(info["spd_draft_ids"])
        for j in [*spots, k]:
            decisions = [1] * k
            if j < k:
                decisions[j] = 0
            jobs.append((row, j))
            infos.append({**dict(info), "spd_decisions": decisions})
            truths.append(truth["ground_truth"])
    results = compute_score_batch(
        ["spd_scorer"] * len(infos),
        [""] * len(infos),
        truths,
        infos,
        target_model_url=url,
        target_model_name=str(target),
        model_path=str(target),
        max_tokens=args.max_tokens,
        concurrency=64,
    )
    failed = sum(bool(r.get("target_failed")) for r in results)
    if failed:
        raise SystemExit(f"{failed} target calls failed while building the oracle table")
    table: list[dict[int, bool]] = [{} for _ in range(len(frame))]
    for (row, j), result in zip(jobs, results):
        table[row][j] = bool(result["correct"])
    return table


def position_features(frame, target: Path, draft: Path) -> list[dict[str, list[float]]]:
    """Per row and draft position: the target's probability of the draft token, its entropy, the draft token's rank
    in the target's distribution, the target's largest probability, and KL(target || draft)."""
    import torch
    from transformers import AutoModelForCausalLM

    models = {
        name: AutoModelForCausalLM.from_pretrained(str(path)).eval()
        for name, path in (("target", target), ("draft", draft))
    }
    out = []
    with torch.no_grad():
        for info in frame["extra_info"]:
            context, tokens = [int(i) for i in info["context_ids"]], [int(i) for i in info["spd_draft_ids"]]
            ids = torch.tensor([context + tokens])
            logp = {
                n: m(input_ids=ids).logits[0, len(context) - 1 : -1].float().log_softmax(-1) for n, m in models.items()
            }
            p_t = logp["target"].exp()
            chosen = torch.tensor(tokens)[:, None]
            p_d = p_t.gather(-1, chosen)[:, 0]
            out.append(
                {
                    "p": p_d.tolist(),
                    "entropy": (-(p_t * logp["target"]).sum(-1)).tolist(),
                    "rank": (p_t > p_d[:, None]).sum(-1).tolist(),
                    "p_max": p_t.max(-1).values.tolist(),
                    "kl": (p_t * (logp["target"] - logp["draft"])).sum(-1).tolist(),
                }
            )
    return out


# ------------------------------------------------------------------------------------------------ learned judges


def autojudge_labels(frame, table) -> list[list[tuple[int, int]]]:
    """Per row, ``(position, label)`` per mismatch: 1 when accepting the draft token there (and so continuing to the
    next mismatch, where the target's greedy path would reject) keeps the answer."""
    labels = []
    for row, spots in enumerate(mismatches(frame)):
        k = len(frame["extra_info"][row]["spd_draft_ids"])
        following = [*spots[1:], k]
        labels.append([(i, int(table[row][nxt])) for i, nxt in zip(spots, following)])
    return labels


def train_autojudge(frame, labels, draft: Path, steps: int, seed: int):
    """The scorer's architecture (``ScoringActor`` on the draft's body) trained with binary cross-entropy on the
    oracle labels of the mismatches, a batch of 16 rows per step."""
    import random

    import torch

    import spd_scorer

    torch.manual_seed(seed)
    model = spd_scorer.ScoringActor.from_backbone(str(draft), seed=seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4)
    rows = [r for r, lab in enumerate(labels) if lab]
    rng = random.Random(seed)
    infos = frame["extra_info"]
    for _ in range(steps):
        loss = 0.0
        batch = rng.sample(rows, min(16, len(rows)))
        for row in batch:
            info = infos[row]
            context, tokens = [int(i) for i in info["context_ids"]], [int(i) for i in info["spd_draft_ids"]]
            logits = model(input_ids=torch.tensor([context + tokens])).logits[0, :, 1]  # s_{t+1} at t
            positions = torch.tensor([len(context) - 1 + i for i, _ in labels[row]])
            target = torch.tensor([float(y) for _, y in labels[row]])
            loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(logits[positions], target)
        (loss / len(batch)).backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()


def accept_probs(model, frame) -> list[list[float]]:
    """A ``ScoringActor``'s ``p_i`` for every draft position of every row."""
    import torch

    out = []
    with torch.no_grad():
        for info in frame["extra_info"]:
            context, tokens = [int(i) for i in info["context_ids"]], [int(i) for i in info["spd_draft_ids"]]
            out.append(model.accept_probs(torch.tensor([context + tokens]))[0, len(context) :].tolist())
    return out


def train_scorer(
    args: argparse.Namespace, draft: Path, target: Path, data: Path, url: str, alpha: float, beta: float
) -> tuple[Path, dict]:
    """GRPO through the documented command; returns the export and the run's throughput."""
    run = args.out / f"run_alpha{alpha:g}_beta{beta:g}"
    subprocess.run(["rm", "-rf", str(run)], check=True)  # the trainer would resume from an earlier run
    cmd = [sys.executable, str(REPO / "train_spd_scorer.py"), "--model_path", str(draft), "--target_model_url", url]
    cmd += ["--target_model_name", str(target), "--target_tokenizer", str(target), "--n_gpus", str(args.ranks)]
    cmd += ["--train_files", str(data), "--total_training_steps", str(args.steps), "--output_dir", str(run)]
    cmd += ["--device", "cpu", "--batch_size", str(args.batch_size), "--rollout_n", str(args.rollout_n)]
    cmd += ["--lr", str(args.lr), "--max_tokens", str(args.max_tokens), "--alpha", str(alpha)]
    cmd += ["--beta", str(beta), "--save_freq", str(args.steps), "--target_concurrency", "64"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "VERL_FILE_LOGGER_PATH": str(run / "metrics.jsonl")}
    log = run.with_suffix(".log")
    print(
        f"training the scorer (alpha {alpha:g}, beta {beta:g}): {args.steps} GRPO steps on {args.ranks} CPU ranks "
        f"(log: {log})",
        flush=True,
    )
    start = time.perf_counter()
    with open(log, "w") as sink:
        result = subprocess.run(cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"train_spd_scorer.py failed (exit {result.returncode}); see {log}")
    wall = time.perf_counter() - start
    steps = [json.loads(line)["data"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    samples = args.batch_size * args.rollout_n
    step_s = sum(s["timing_s/step"] for s in steps)
    reward_s = sum(s.get("timing_s/reward", 0.0) for s in steps)
    stats = {
        "wall_s": wall,
        "samples_per_s": samples * len(steps) / step_s,
        "reward_calls_per_s": samples * len(steps) / reward_s if reward_s else float("nan"),
        "reward_first5": sum(s["critic/score/mean"] for s in steps[:5]) / 5,
        "reward_last5": sum(s["critic/score/mean"] for s in steps[-5:]) / 5,
        "acceptance_first5": sum(s["spd/acceptance_rate"] for s in steps[:5]) / 5,
        "acceptance_last5": sum(s["spd/acceptance_rate"] for s in steps[-5:]) / 5,
    }
    return run / "checkpoints" / f"global_step_{args.steps}" / "actor" / "huggingface", stats


# ------------------------------------------------------------------------------------------------ policies and report


def outcome(decide, frame, table, k_of) -> tuple[float, float]:
    """``(tokens kept per sample, accuracy)`` of the per-position rule ``decide(row, i) -> accept``."""
    kept = correct = 0
    spots_all = mismatches(frame)
    for row, spots in enumerate(spots_all):
        j = next((i for i in spots if not decide(row, i)), k_of(row))
        kept += j
        correct += table[row][j]
    return kept / len(spots_all), correct / len(spots_all)


QUANTILES = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)


def sweep(train_values: list[float], fixed: tuple[float, ...]) -> list[float]:
    """The thresholds of one judge: a fixed grid and the quantiles of the judge's statistic over the TRAINING split's
    mismatches (so every judge is swept over its whole range without looking at the held-out split)."""
    ordered = sorted(train_values)
    picked = {ordered[min(len(ordered) - 1, int(q * len(ordered)))] for q in QUANTILES} if ordered else set()
    return sorted({round(float(v), 6) for v in (*fixed, *picked)})


def at_mismatches(frame, per_position: list[list[float]]) -> list[float]:
    return [per_position[row][i] for row, spots in enumerate(mismatches(frame)) for i in spots]


def policies(
    features, judge_p, scorers: dict[str, list[list[float]]], grids: dict[str, list[float]]
) -> list[tuple[str, str, object]]:
    """``(family, name, decide)`` for every policy of the comparison; ``grids``: each judge's thresholds."""
    out = [("plain", "accept none (plain SD)", lambda r, i: False), ("plain", "accept all", lambda r, i: True)]
    for x in grids["p"]:
        out.append(("target p", f"target p >= {x:.4g}", lambda r, i, x=x: features[r]["p"][i] >= x))
    for h in grids["entropy"]:
        out.append(("entropy", f"target entropy >= {h:.4g}", lambda r, i, h=h: features[r]["entropy"][i] >= h))
    for x in grids["kl"]:
        out.append(("KL", f"KL(target||draft) <= {x:.4g}", lambda r, i, x=x: features[r]["kl"][i] <= x))
    for k in (2, 3, 5):
        for delta in (0.5, 0.8, 0.9, 0.95):
            out.append(
                (
                    "top-k/delta",
                    f"top-{k}, delta {delta:g}",
                    lambda r, i, k=k, d=delta: (
                        features[r]["rank"][i] < k and features[r]["p"][i] >= features[r]["p_max"][i] - d
                    ),
                )
            )
    for tau in grids["AutoJudge"]:
        out.append(("AutoJudge", f"AutoJudge p >= {tau:.4g}", lambda r, i, t=tau: judge_p[r][i] >= t))
    for name, probs in scorers.items():
        for tau in grids[name]:
            out.append(("SPD scorer", f"{name} p >= {tau:.4g}", lambda r, i, t=tau, p=probs: p[r][i] >= t))
    return out


def pareto_front(rows: list[dict]) -> list[dict]:
    """The rows no other row beats on both axes (tokens kept, accuracy), one per distinct point, most tokens first."""
    front, seen = [], set()
    for r in sorted(rows, key=lambda r: (-r["tokens_kept"], -r["accuracy"])):
        point = (round(r["tokens_kept"], 6), round(r["accuracy"], 6))
        if point in seen:
            continue
        if not any(
            o["tokens_kept"] >= r["tokens_kept"]
            and o["accuracy"] >= r["accuracy"]
            and o is not r
            and (o["tokens_kept"], o["accuracy"]) != (r["tokens_kept"], r["accuracy"])
            for o in rows
        ):
            front.append(r)
            seen.add(point)
    return front


def best_fixed_at(rows, accuracy: float) -> float:
    """The most tokens any fixed baseline keeps at an accuracy at least ``accuracy``."""
    fixed = [r for r in rows if r["family"] not in ("SPD scorer", "AutoJudge") and r["accuracy"] >= accuracy - 1e-9]
    return max((r["tokens_kept"] for r in fixed), default=0.0)


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for family in dict.fromkeys(r["family"] for r in rows):
        members = [r for r in rows if r["family"] == family]
        dots = ax.plot(
            [r["tokens_kept"] for r in members], [r["accuracy"] for r in members], "o", alpha=0.6, label=family
        )
        if family in ("SPD scorer", "AutoJudge"):
            front = sorted(pareto_front(members), key=lambda r: r["tokens_kept"])
            ax.plot([r["tokens_kept"] for r in front], [r["accuracy"] for r in front], "-", color=dots[0].get_color())
    fixed = sorted(
        pareto_front([r for r in rows if r["family"] not in ("SPD scorer", "AutoJudge")]),
        key=lambda r: r["tokens_kept"],
    )
    ax.plot(
        [r["tokens_kept"] for r in fixed],
        [r["accuracy"] for r in fixed],
        "--",
        color="grey",
        label="front of the fixed baselines",
    )
    ax.set_xlabel("draft tokens kept per sample")
    ax.set_ylabel("answer accuracy (held-out)")
    ax.set_title("SPD acceptance policies on held-out prompts")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    import spd_scorer
    from verl.utils.dataset.spd_dataset import build_spd_dataset
    from verl.utils.testing.spd_task import build_spd_task

    torch.set_num_threads(2)
    args.out.mkdir(parents=True, exist_ok=True)
    task = build_spd_task(args.task or args.out / "task")  # cached; not part of the timed run
    start = time.perf_counter()
    frames = {}
    for split in ("train", "heldout"):
        frames[split] = build_spd_dataset(
            str(task["draft"]),
            str(task["target"]),
            str(task[split]),
            str(args.out / f"{split}.parquet"),
            max_draft_tokens=args.k,
            batch_size=32,
        )
    server, url = serve(task["target"], args.out / "serve.log")
    try:
        tables = {split: oracle_table(frame, url, task["target"], args) for split, frame in frames.items()}
        held = frames["heldout"]
        n_mis = sum(map(len, mismatches(held))) / len(held)
        print(
            f"{len(frames['train'])} train and {len(held)} held-out samples; K={args.k}; {n_mis:.2f} mismatches "
            f"per held-out sample; oracle tables built ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        features = position_features(held, task["target"], task["draft"])
        labels = autojudge_labels(frames["train"], tables["train"])
        judge_start = time.perf_counter()
        judge = train_autojudge(frames["train"], labels, task["draft"], args.autojudge_steps, args.seed)
        positives = sum(y for row in labels for _, y in row) / max(1, sum(map(len, labels)))
        print(
            f"AutoJudge trained on {sum(map(len, labels))} labelled mismatches ({positives:.2f} acceptable) in "
            f"{time.perf_counter() - judge_start:.0f} s",
            flush=True,
        )
        stats, exports = {}, {}
        if args.scorer:
            exports["SPD scorer"] = Path(args.scorer)
        else:
            for trade_off in args.trade_offs:
                alpha, beta = (float(v) for v in trade_off.split(":"))
                name = f"SPD scorer (alpha {alpha:g}, beta {beta:g})"
                exports[name], stats[name] = train_scorer(
                    args, task["draft"], task["target"], args.out / "train.parquet", url, alpha, beta
                )
    finally:
        server.terminate()
        server.wait(timeout=30)
    train = frames["train"]
    judge_p, judge_train = accept_probs(judge, held), accept_probs(judge, train)
    scorers, grids = {}, {}
    for name, path in exports.items():
        model = spd_scorer.ScoringActor.from_pretrained(str(path)).eval()
        scorers[name] = accept_probs(model, held)
        grids[name] = sweep(at_mismatches(train, accept_probs(model, train)), (0.1, 0.3, 0.5, 0.7, 0.9))
    grids["AutoJudge"] = sweep(at_mismatches(train, judge_train), (0.1, 0.3, 0.5, 0.7, 0.9))
    train_features = position_features(train, task["target"], task["draft"])
    for key, fixed in (("p", (0.01, 0.05, 0.1, 0.2)), ("entropy", (0.1, 0.5, 1.0)), ("kl", (0.1, 0.5, 1.0, 2.0))):
        grids[key] = sweep(at_mismatches(train, [f[key] for f in train_features]), fixed)
    table = tables["heldout"]
    k_of = lambda row: len(held["extra_info"][row]["spd_draft_ids"])  # noqa: E731
    rows = []
    for family, name, decide in policies(features, judge_p, scorers, grids):
        kept, acc = outcome(decide, held, table, k_of)
        rows.append({"policy": name, "family": family, "tokens_kept": kept, "accuracy": acc, "split": "heldout"})
    elapsed = time.perf_counter() - start

    print(f"\nheld-out samples: {len(held)}; scorers: {', '.join(str(p) for p in exports.values())}")
    print("| policy | draft tokens kept / sample | accuracy |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['policy']} | {r['tokens_kept']:.2f} | {r['accuracy']:.3f} |")
    print("\nEach fixed baseline against the SPD scorers at the same or higher accuracy (tokens kept per sample):")
    learned = [r for r in rows if r["family"] == "SPD scorer"]
    fixed = [r for r in rows if r["family"] not in ("SPD scorer", "AutoJudge")]
    beaten = 0
    for r in sorted(fixed, key=lambda r: -r["accuracy"]):
        rivals = [s for s in learned if s["accuracy"] >= r["accuracy"] - 1e-9]
        best = max(rivals, key=lambda s: s["tokens_kept"], default=None)
        if best is None:
            continue
        beaten += best["tokens_kept"] > r["tokens_kept"] + 1e-9
    print(f"  fixed policies beaten (a scorer keeps more tokens at equal or higher accuracy): {beaten} of {len(fixed)}")
    for family in ("SPD scorer", "AutoJudge"):
        front = pareto_front([r for r in rows if r["family"] == family])
        wins = 0
        print(f"  {family} Pareto front against the best fixed baseline at equal or higher accuracy:")
        for r in front:
            best = best_fixed_at(rows, r["accuracy"])
            wins += r["tokens_kept"] > best + 1e-9
            print(
                f"    {r['policy']}: accuracy {r['accuracy']:.3f}, tokens kept {r['tokens_kept']:.2f} vs "
                f"{best:.2f} ({r['tokens_kept'] - best:+.2f})"
            )
        print(f"    front points above every fixed baseline: {wins} of {len(front)}")
    for name, st in stats.items():
        print(
            f"{name}: {args.steps} steps in {st['wall_s']:.0f} s; {st['samples_per_s']:.1f} samples/s, "
            f"{st['reward_calls_per_s']:.1f} reward calls/s; reward {st['reward_first5']:.3f} -> "
            f"{st['reward_last5']:.3f}, acceptance {st['acceptance_first5']:.2f} -> {st['acceptance_last5']:.2f} "
            "(first 5 -> last 5 steps)"
        )
    print(f"benchmark wall time (task build excluded): {elapsed:.0f} s")
    (args.out / "report.json").write_text(json.dumps(rows, indent=1))
    import pandas as pd

    pd.DataFrame(rows).to_csv(args.out / "table.csv", index=False)
    plot(rows, args.out / "pareto.png")
    print(f"wrote {args.out / 'report.json'}, {args.out / 'table.csv'}, {args.out / 'pareto.png'}")


if __name__ == "__main__":
    main()
