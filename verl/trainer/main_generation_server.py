"""Entry point: ``python -m verl.trainer.main_generation_server +data.output_path=OUT.parquet key=value ...``.

Phase 0 generation: starts ``trainer.n_gpus_per_node * trainer.nnodes / (tp * dp * pp)`` standalone rollout
replicas of ``rollout.name`` (hf, vllm, sglang; on CPU each replica is one process), sends one chat-completion
request per row of the ``data.train_files`` parquet(s) asking for ``rollout.n`` responses, and writes the input
rows plus ``responses`` (n strings per row) and per-row ``status``/``error``/token/latency columns to
``data.output_path``. Config: ``generation_server.yaml`` (verl's ppo_trainer keys plus ``data.output_path`` and a
``generation`` block).

Finished rows go to ``<output_path>.progress.jsonl`` as they complete, so a killed run (even SIGKILL) restarts
where it stopped and never re-requests a finished row. A request that keeps failing becomes a failed row with its
error. Every check that needs no server (config, model path, data files and columns) runs before Ray starts.

``rollout.load_format=dummy`` is refused (random weights; only a trainer's weight sync replaces them). The yaml
default here is ``auto``, so the refusal only hits a user who set dummy or runs with ``--config-name ppo_trainer``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import sys

import hydra

from verl.trainer.config.generation import GenerationServerConfig
from verl.trainer.generation.client import RequestSettings, check_replicas, generate_rows
from verl.trainer.generation.io import ProgressLog, load_prompts, write_output

COMMAND = "python -m verl.trainer.main_generation_server"
EXAMPLE = 'python -m verl.trainer.main_generation_server --config-path "$PWD/examples/phase0" --config-name phase0_eval'
"""The shipped example (run from the repository root after ``python -m verl.utils.testing.tiny models/tiny``)."""


@hydra.main(config_path="config", config_name="generation_server", version_base=None)
def main(config) -> None:
    problems = missing_inputs(config)
    if problems:
        print(usage_message(problems), file=sys.stderr, flush=True)
        sys.exit(2)
    from verl.utils.cli_errors import exit_on_user_error

    with exit_on_user_error(COMMAND):  # bad input: one paragraph, no stack trace (HYDRA_FULL_ERROR=1 shows it)
        run_generation(config)


def missing_inputs(config) -> list[str]:
    """One line per mandatory input that is unset or absent: ``data.output_path``, every ``data.train_files``
    parquet, and ``actor_rollout_ref.model.path`` when replicas are to be started (no ``server_addresses``)."""
    problems = []
    data = config.data
    if not data.get("output_path"):
        problems.append("data.output_path is not set (the parquet to write the generations to)")
    files = data.get("train_files")
    files = [] if files is None else [files] if isinstance(files, str) else list(files)
    if not files:
        problems.append("data.train_files is not set (the prompts parquet: a chat message list per row)")
    for file in files:
        if not os.path.isfile(os.path.expanduser(str(file))):
            problems.append(
                f"data.train_files={file} does not exist (the prompts parquet: a chat message list per row)"
            )
    if not config.get("generation", {}).get("server_addresses"):
        model = str(config.actor_rollout_ref.model.path)
        if not os.path.exists(os.path.expanduser(model)):
            problems.append(f"actor_rollout_ref.model.path={model} does not exist (the model the replicas serve)")
    return problems


def usage_message(problems: list[str]) -> str:
    """What is missing, which keys to set, and the shipped example."""
    lines = ["main_generation_server: error: missing input:"]
    lines += [f"  {problem}" for problem in problems]
    lines += [
        "usage: python -m verl.trainer.main_generation_server [--config-path DIR --config-name NAME] key=value ...",
        "  e.g. data.train_files=prompts.parquet data.output_path=out.parquet actor_rollout_ref.model.path=MODEL_DIR",
        f"example (from the repository root, after python -m verl.utils.testing.tiny models/tiny): {EXAMPLE}",
    ]
    return "\n".join(lines)


def load_generation_config(config) -> GenerationServerConfig:
    """The typed tree of a composed config (``ppo_trainer`` + ``data.output_path`` works too: the ``generation``
    block then takes its defaults). The trainer's batch-size checks do not apply to generation."""
    if isinstance(config, GenerationServerConfig):
        return config
    from verl.trainer.config.build import build_trainer_config, check_refused_keys
    from verl.utils.device import resolve_device

    check_refused_keys(config, GenerationServerConfig)
    device = resolve_device(config.trainer.device)
    return build_trainer_config(config, tree=GenerationServerConfig, device=device, check=False)


def validate_generation_config(config) -> tuple[RequestSettings, int]:
    """Check everything that needs no server; return the request settings and the number of replicas to start.

    Raises:
        ValueError: naming the key, its value and the fix.
    """
    from verl.workers.rollout.replica import RolloutMode, get_rollout_replica_class

    config = load_generation_config(config)
    gen, rollout = config.generation, config.actor_rollout_ref.rollout
    if not config.data.output_path:
        raise ValueError(
            "data.output_path is not set; pass data.output_path=/path/out.parquet (+data.output_path=... "
            "with --config-name ppo_trainer)"
        )
    n, top_p = int(rollout.n), float(rollout.top_p)
    temperature = float(rollout.temperature) if rollout.do_sample else 0.0
    if n < 1:
        raise ValueError(f"actor_rollout_ref.rollout.n={n} must be >= 1 (responses per prompt)")
    if temperature == 0 and n > 1:
        raise ValueError(
            f"actor_rollout_ref.rollout.temperature=0 (greedy) with rollout.n={n} would produce {n} identical "
            "responses per prompt; set rollout.n=1, or a temperature > 0 to sample several"
        )
    if gen.run_eval and not _eval_available():
        raise ValueError(
            "generation.run_eval=true needs verl.trainer.main_eval.run_eval, which this install lacks; "
            "set generation.run_eval=false and score the output with python -m verl.trainer.main_eval later"
        )
    n_replicas = 0
    if not gen.server_addresses:
        replica_cls = get_rollout_replica_class(rollout.name)  # ValueError listing the names
        replica_cls.check_config(rollout, RolloutMode.STANDALONE)  # load_format=dummy is refused here
        size = rollout.tensor_model_parallel_size * rollout.data_parallel_size * rollout.pipeline_model_parallel_size
        world = config.trainer.n_gpus_per_node * config.trainer.nnodes
        if world < size or world % size:
            raise ValueError(
                f"trainer.n_gpus_per_node * trainer.nnodes = {world} devices cannot be split into replicas of "
                f"{size} (rollout tensor x data x pipeline parallel sizes); make it a multiple"
            )
        n_replicas = world // size
        model_path = os.path.expanduser(str(config.actor_rollout_ref.model.path))
        if not os.path.exists(model_path):
            raise ValueError(f"actor_rollout_ref.model.path={model_path} does not exist")
    sampling = {"n": n, "temperature": temperature, "top_p": top_p, "max_tokens": int(rollout.response_length)}
    if rollout.top_k > 0:
        sampling["top_k"] = rollout.top_k
    if gen.seed is not None:
        sampling["seed"] = gen.seed
    chat_kwargs = dict(config.data.apply_chat_template_kwargs)
    if chat_kwargs:
        sampling["chat_template_kwargs"] = chat_kwargs
    settings = RequestSettings(
        model=str(config.actor_rollout_ref.model.path),
        sampling=sampling,
        max_concurrency=int(gen.max_concurrency),
        max_attempts=int(gen.max_attempts),
        backoff_s=float(gen.retry_backoff_s),
        timeout_s=float(gen.request_timeout_s),
        api_key=gen.api_key,
    )
    return settings, n_replicas


def run_generation(config):
    """Generate ``data.output_path`` from ``config``; return the written dataframe."""
    from tqdm import tqdm

    from verl.utils.cli_errors import preflight

    with preflight():  # config, prompts and paths are checked before any replica starts
        config = load_generation_config(config)
        settings, n_replicas = validate_generation_config(config)
        gen = config.generation
        train_files = config.data.train_files
        df, prompts = load_prompts(train_files, config.data.prompt_key)
    output_path = os.path.expanduser(str(config.data.output_path))
    header = {"train_files": train_files, "rows": len(df)}
    header.update({"prompt_key": config.data.prompt_key, "model": settings.model, "sampling": settings.sampling})
    log = ProgressLog(f"{output_path}.progress.jsonl", header, resume=bool(gen.resume))
    todo = {i: prompts[i] for i in range(len(df)) if i not in log.finished(retry_failed=bool(gen.retry_failed))}
    print(f"main_generation_server: {len(df)} rows, {len(df) - len(todo)} already done, {len(todo)} to generate")
    replicas = []
    try:
        if todo:
            urls, replicas = _start_servers(config, gen, n_replicas)
            bar = tqdm(total=len(df), initial=len(df) - len(todo), desc="generate", unit="row")

            def on_done(record: dict) -> None:
                log.append(record)
                bar.update(1)
                if record["status"] != "ok":
                    bar.write(f"row {record['row']} failed after {record['attempts']} tries: {record['error']}")

            asyncio.run(check_replicas(urls, settings.api_key))
            asyncio.run(generate_rows(todo, urls, settings, on_done))
            bar.close()
    finally:
        log.close()
        for replica in replicas:
            replica.shutdown()
    out = write_output(df, log.rows, output_path)
    failed = int((out["status"] != "ok").sum())
    print(f"main_generation_server: wrote {len(out)} rows ({failed} failed) to {output_path}")
    if gen.run_eval:
        _run_eval(config, output_path)
    return out


def _start_servers(config, gen, n_replicas: int) -> tuple[list[str], list]:
    """Base URLs of the servers to use: ``generation.server_addresses``, or freshly started standalone replicas."""
    if gen.server_addresses:
        addresses = gen.server_addresses
        addresses = [addresses] if isinstance(addresses, str) else list(addresses)
        return [a.rstrip("/") if "://" in a else f"http://{a}" for a in addresses], []
    from verl.trainer.main_ppo import init_ray
    from verl.workers.rollout.replica import get_rollout_replica_class

    init_ray(config)
    rollout = config.actor_rollout_ref.rollout
    replica_cls = get_rollout_replica_class(rollout.name)
    gpus_per_node = config.trainer.n_gpus_per_node
    model = config.actor_rollout_ref.model
    replicas = [replica_cls(r, rollout, model, gpus_per_node, api_key=gen.api_key) for r in range(n_replicas)]
    targets: list[str | None] = [None] * n_replicas
    if config.trainer.nnodes > 1 and replicas:  # round-robin over the nodes that can hold a replica
        from verl.single_controller.ray.base import node_targets

        targets = node_targets(replicas[0].standalone_bundle(), [1] * n_replicas)
    started = []
    try:
        for rank, (replica, target) in enumerate(zip(replicas, targets)):
            started.append(replica)
            replica.init_standalone(node_id=target)
            node = replica.node_id or "?"
            print(f"replica {rank} ({rollout.name}) serving at http://{replica.server_address} on node {node[:12]}")
    except BaseException:
        for replica in started:
            replica.shutdown()
        raise
    return [f"http://{r.server_address}" for r in replicas], replicas


def _eval_available() -> bool:
    if importlib.util.find_spec("verl.trainer.main_eval") is None:
        return False
    import verl.trainer.main_eval as main_eval

    return hasattr(main_eval, "run_eval")


def _run_eval(config, output_path: str) -> None:
    """Score ``output_path`` with ``verl.trainer.main_eval.run_eval`` (sandbox settings from ``reward_model``)."""
    from verl.trainer.main_eval import run_eval
    from verl.utils.config import compose_config

    sandbox = config.reward_model.sandbox_fusion
    overrides = [f"data.path={output_path}", f"data.prompt_key={config.data.prompt_key}"]
    overrides += [
        f"sandbox_fusion.{k}={getattr(sandbox, k)}"
        for k in ("url", "max_concurrent", "memory_limit_mb")
        if getattr(sandbox, k) is not None
    ]
    run_eval(compose_config("evaluation", overrides=overrides))


if __name__ == "__main__":
    from verl.utils.cli_errors import run_hydra_cli

    config_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config")
    run_hydra_cli(main, config_dir=config_dir, config_name="generation_server", command=COMMAND)
