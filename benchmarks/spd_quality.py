"""SPD scorer quality on held-out samples: a trained scorer against three fixed acceptance policies, in one run.

Set-up (all offline, CPU): the tiny target (``verl.utils.testing.tiny``, seed 0) served by ``OpenAIServer`` (hf
backend) on 127.0.0.1, and a draft that is the target with Gaussian noise (``--draft-noise``) added to every weight,
so that, as in real speculative decoding, the draft agrees with the target on most tokens and disagrees on a few.

Ground truths. The untrained tiny target does not answer questions: for a prompt like ``"count the banana large"``
it emits newlines and then falls into a loop (``"eseseses..."``, ``"dedede..."``, ``"########"``). So the ground
truth of each prompt is the last ``--truth-chars`` characters of the target's OWN greedy completion of the context
(``--max-tokens`` tokens, asked of the server); prompts whose completion ends in non-printable or replacement
characters are dropped. Accuracy therefore measures exactly what SPD must preserve: whether the target, completing
the hybrid prefix, still ends where it would have ended from the context alone. Plain speculative decoding
reproduces the target's greedy tokens, so its accuracy is ~1 by construction (exactly 1 unless batching changes a
near-tie argmax); accepting a mismatch can move the target into another loop.

Policies, on the mismatch positions only (matching draft tokens are always accepted):

* ``none``: accept no mismatch (= plain speculative decoding);
* ``all``: accept every mismatch;
* ``target_p>=x``: accept draft token ``d_i`` when the target's probability of it, from one teacher-forced forward of
  the target on ``c + d``, is at least ``x`` (one row per ``--thresholds`` value). The untrained tiny target is
  nearly uniform where it disagrees with the draft (measured: p(d_i) between 0.0017 and 0.0042, median 0.0035, on
  a vocabulary of ~300), so the default cuts sit inside that range; on real models use e.g. 0.05 and 0.2;
* ``scorer``: the scorer trained here by ``train_spd_scorer.py`` (GRPO on the training prompts, against the same
  server), or ``--scorer PATH`` (an ``actor/huggingface`` export); greedy, accept when ``p >= 0.5``.

Every policy's decisions are scored by ``spd_scorer_reward.compute_score_batch`` (the training reward): the target
completes the hybrid prefix; reported per policy: draft tokens kept per sample (the hybrid prefix's draft part),
mismatches accepted per sample, accuracy kept, mean reward and the A/B/C/D counts.

Usage::

    python benchmarks/spd_quality.py                       # builds everything under outputs/spd_quality
    python benchmarks/spd_quality.py --scorer outputs/spd_quality/run/checkpoints/global_step_40/actor/huggingface
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_WORDS = (
    "apple banana cat dog red blue green small large one two three four five six seven eight nine ten "
    "yes no true false positive negative answer number digit sum total list code python"
).split()
_VERBS = ["say", "repeat", "write", "count", "list", "print", "add", "sum", "label", "answer"]


def make_prompts(n: int, seed: int) -> list[str]:
    """``n`` distinct short instructions over the tiny tokenizer's words."""
    rng, seen = random.Random(seed), set()
    while len(seen) < n:
        seen.add(f"{rng.choice(_VERBS)} the {rng.choice(_WORDS)} {rng.choice(_WORDS)}")
    return sorted(sorted(seen), key=lambda _: rng.random())  # sorted first: set order varies per process


def build_noisy_draft(target: Path, out: Path, noise: float, seed: int) -> Path:
    """The target's weights plus ``N(0, noise^2)`` on every parameter, with the target's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(target))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * noise)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(target)).save_pretrained(out)
    return out


def ground_truths(url: str, tokenizer, prompts: list[str], max_tokens: int, chars: int) -> dict[str, str]:
    """``prompt -> truth``: the tail of the target's greedy completion, for prompts whose tail is printable ASCII."""
    from verl.utils.dataset.spd_dataset import render_context
    from verl.utils.reward_score.spd_scorer_reward import vllm_generate

    contexts = [render_context(tokenizer, [{"role": "user", "content": p}])[1] for p in prompts]
    texts = vllm_generate(url, contexts, max_tokens, concurrency=16)
    truths = {}
    for prompt, text in zip(prompts, texts):
        tail = " ".join((text or "").split())[-chars:].strip()
        if len(tail.strip()) >= 3 and tail.isascii() and tail.isprintable():
            truths[prompt] = tail
    return truths


def write_prompts(path: Path, truths: dict[str, str]) -> None:
    import pandas as pd

    rows = [
        {
            "data_source": "spd_quality",
            "prompt": [{"role": "user", "content": prompt}],
            "reward_model": {"style": "rule", "ground_truth": truth},
            "extra_info": {"index": i},
        }
        for i, (prompt, truth) in enumerate(truths.items())
    ]
    pd.DataFrame(rows).to_parquet(path)


def train_scorer(args: argparse.Namespace, draft: Path, target: Path, data: Path, url: str) -> Path:
    run = args.out / "run"
    shutil.rmtree(run, ignore_errors=True)  # the trainer would resume from an earlier run's last checkpoint
    cmd = [sys.executable, str(REPO / "train_spd_scorer.py"), "--model_path", str(draft), "--target_model_url", url]
    cmd += ["--target_tokenizer", str(target), "--n_gpus", str(args.ranks), "--train_files", str(data)]
    cmd += ["--total_training_steps", str(args.steps), "--output_dir", str(run), "--device", "cpu"]
    cmd += ["--batch_size", str(args.batch_size), "--rollout_n", str(args.rollout_n), "--lr", str(args.lr)]
    cmd += ["--max_tokens", str(args.max_tokens), "--alpha", str(args.alpha), "--beta", str(args.beta)]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "VERL_FILE_LOGGER_PATH": str(run / "metrics.jsonl")}
    log = args.out / "train.log"
    print(f"training the scorer: {args.steps} GRPO steps on {args.ranks} CPU ranks (log: {log})", flush=True)
    start = time.perf_counter()
    with open(log, "w") as sink:
        result = subprocess.run(cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        raise SystemExit(f"train_spd_scorer.py failed (exit {result.returncode}); see {log}")
    print(f"trained in {time.perf_counter() - start:.0f} s", flush=True)
    return run / "checkpoints" / f"global_step_{args.steps}" / "actor" / "huggingface"


def draft_probs(model, frame) -> list[list[float]]:
    """Per row, the probability of each draft position under ``model``: the target's ``softmax`` at the position
    predicting ``d_i`` for a causal LM, the scorer's ``p_i`` for a ``ScoringActor`` (one row at a time, no padding)."""
    import torch

    out = []
    with torch.no_grad():
        for info, draft in zip(frame["extra_info"], frame["spd_draft_ids"]):
            context, draft = [int(i) for i in info["context_ids"]], [int(i) for i in draft]
            ids = torch.tensor([context + draft])  # (1, C + K)
            if hasattr(model, "accept_probs"):
                probs = model.accept_probs(ids)[0, len(context) :]  # p of the token AT each draft position
            else:
                logits = model(input_ids=ids).logits[0, len(context) - 1 : -1].float()  # (K, V), row i predicts d_i
                probs = logits.softmax(-1).gather(-1, torch.tensor(draft)[:, None])[:, 0]
            out.append(probs.tolist())
    return out


def evaluate(frame, decisions: list[list[int]], url: str, target: Path, args: argparse.Namespace) -> dict:
    from verl.utils.reward_score.spd_scorer_reward import compute_score_batch

    infos = [{**dict(info), "spd_decisions": d} for info, d in zip(frame["extra_info"], decisions)]
    truths = [rm["ground_truth"] for rm in frame["reward_model"]]
    results = compute_score_batch(
        ["spd_scorer"] * len(infos),
        [""] * len(infos),
        truths,
        infos,
        target_model_url=url,
        model_path=str(target),
        max_tokens=args.max_tokens,
        alpha=args.alpha,
        beta=args.beta,
    )
    n = len(results)
    return {
        "kept": sum(r["accepted_length"] for r in results) / n,
        "accepted": sum(r["accepted_mismatches"] for r in results) / n,
        "accuracy": sum(r["correct"] for r in results) / n,
        "reward": sum(r["score"] for r in results) / n,
        "scenarios": " ".join(f"{s}={sum(r['scenario'] == s for r in results)}" for s in "ABCD"),
        "failed": sum(r["target_failed"] for r in results),
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "spd_quality", help="work directory")
    parser.add_argument("--scorer", default=None, help="trained scorer export to evaluate (skips training)")
    parser.add_argument("--prompts", type=int, default=160, help="candidate prompts before filtering")
    parser.add_argument("--heldout-fraction", type=float, default=0.4, help="share of kept prompts held out")
    parser.add_argument("--k", type=int, default=12, help="K, draft tokens per sample")
    parser.add_argument("--max-tokens", type=int, default=24, help="target completion budget (and truth window)")
    parser.add_argument("--truth-chars", type=int, default=8, help="ground truth = this many trailing characters")
    parser.add_argument("--draft-noise", type=float, default=0.03, help="std of the noise added to the draft")
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.0033, 0.0036], help="target-probability cuts")
    parser.add_argument("--steps", type=int, default=40, help="GRPO steps")
    parser.add_argument("--ranks", type=int, default=2, help="training ranks (CPU processes)")
    parser.add_argument("--batch-size", type=int, default=8, help="samples per GRPO step")
    parser.add_argument("--rollout-n", type=int, default=4, help="decision vectors per sample")
    parser.add_argument("--lr", type=float, default=1e-4, help="scorer learning rate")
    parser.add_argument("--alpha", type=float, default=0.5, help="scenario A bonus")
    parser.add_argument("--beta", type=float, default=1.0, help="scenario C penalty")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import pandas as pd
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import spd_scorer
    from verl.utils.dataset.spd_dataset import build_spd_dataset
    from verl.utils.testing.tiny import build_tiny_model
    from verl.workers.rollout.openai_server import OpenAIServer

    torch.set_num_threads(1)  # the in-process server shares the cores with the trainer's ranks
    args.out.mkdir(parents=True, exist_ok=True)
    target = build_tiny_model(args.out / "target", seed=0)
    draft = build_noisy_draft(target, args.out / "draft", args.draft_noise, args.seed + 1)
    tokenizer = AutoTokenizer.from_pretrained(str(target))
    server = OpenAIServer(str(target), backend="hf")
    url = server.start() + "/v1/completions"
    try:
        truths = ground_truths(url, tokenizer, make_prompts(args.prompts, args.seed), args.max_tokens, args.truth_chars)
        prompts = list(truths)
        n_held = int(len(prompts) * args.heldout_fraction)
        splits = {"train": prompts[n_held:], "heldout": prompts[:n_held]}
        frames = {}
        for name, subset in splits.items():
            source, dest = args.out / f"{name}_prompts.parquet", args.out / f"{name}.parquet"
            write_prompts(source, {p: truths[p] for p in subset})
            frames[name] = build_spd_dataset(str(draft), str(target), str(source), str(dest), max_draft_tokens=args.k)
        held = frames["heldout"]
        mismatch = [
            [int(d != t) for d, t in zip(ds, ts)] for ds, ts in zip(held["spd_draft_ids"], held["spd_target_ids"])
        ]
        print(
            f"{len(prompts)} of {args.prompts} prompts kept (printable truth); {len(splits['train'])} train, "
            f"{len(held)} held out; K={args.k}, {sum(map(sum, mismatch)) / len(held):.2f} mismatches per held-out row; "
            f"{len(set(truths.values()))} distinct truths, e.g. {sorted(set(truths.values()))[:4]}",
            flush=True,
        )
        scorer_path = args.scorer or train_scorer(args, draft, target, args.out / "train.parquet", url)
        target_p = draft_probs(AutoModelForCausalLM.from_pretrained(str(target)).eval(), held)
        scorer_p = draft_probs(spd_scorer.ScoringActor.from_pretrained(str(scorer_path)).eval(), held)
        policies = {"accept none (plain SD)": [[0] * len(m) for m in mismatch]}
        policies["accept all"] = [[1] * len(m) for m in mismatch]
        for x in args.thresholds:
            policies[f"target p(d_i) >= {x:g}"] = [[int(p >= x) for p in row] for row in target_p]
        policies["trained scorer (p >= 0.5)"] = [[int(p >= 0.5) for p in row] for row in scorer_p]
        rows = {name: evaluate(held, d, url, target, args) for name, d in policies.items()}
    finally:
        server.stop()
    print(f"\nheld-out SPD samples: {len(held)}; scorer: {scorer_path}")
    print(
        "| policy | draft tokens kept / sample | mismatches accepted / sample | accuracy kept | mean reward | A/B/C/D |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['kept']:.2f} | {r['accepted']:.2f} | {r['accuracy']:.3f} | {r['reward']:.3f} | "
            f"{r['scenarios']} |"
        )
    failed = sum(r["failed"] for r in rows.values())
    if failed:
        print(f"warning: {failed} target calls failed (scored 0)")
    pd.DataFrame(rows).T.to_csv(args.out / "table.csv")


if __name__ == "__main__":
    main()
