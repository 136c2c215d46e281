"""Experiment tracking: one ``Tracking`` object fans each step's metrics out to the chosen backends.

``Tracking(project, experiment, default_backend=["console", "file"])`` then ``tracker.log(metrics, step)``.

Backends:

* ``console``: one line per step via :class:`verl.utils.logger.LocalLogger` (tqdm-friendly).
* ``file``: JSON lines ``{"step": s, "data": {...}}``, flushed after every line so a killed run keeps every
  step it finished. Path: ``$VERL_FILE_LOGGER_PATH`` if set, else
  ``{$VERL_FILE_LOGGER_ROOT or "outputs"}/{project}/{experiment}.jsonl``. Existing files are appended to, so a
  resumed run continues the same file. ``python -m verl.utils.plotting`` plots it.
* ``tensorboard``: ``torch.utils.tensorboard.SummaryWriter`` in ``$TENSORBOARD_DIR``, default
  ``tensorboard_log/{project}/{experiment}``.
* ``wandb``, ``mlflow``, ``swanlab``, ``clearml``, ``trackio``: optional packages, imported only when chosen; a
  missing package raises ``ImportError`` naming the ``pip install`` line.

Environment variables (all read by :meth:`_TrackingEnv.from_environ`, nowhere else):

==========================================  ===========================================================
``VERL_FILE_LOGGER_PATH``                   exact JSONL path of the ``file`` backend
``VERL_FILE_LOGGER_ROOT``                   root folder of the ``file`` backend (default ``outputs``)
``TENSORBOARD_DIR``                         event-file folder of the ``tensorboard`` backend
``WANDB_MODE``                              ``offline`` / ``disabled`` / ``online``, passed to ``wandb.init``
``WANDB_ENTITY``                            wandb team or user
``MLFLOW_TRACKING_URI``                     default ``sqlite:////tmp/mlruns.db``
``MLFLOW_RUN_ID``                           resume this mlflow run instead of starting one
``SWANLAB_API_KEY`` / ``SWANLAB_LOG_DIR``   swanlab login key / local log folder (default ``swanlog``)
``SWANLAB_MODE``                            swanlab mode (default ``cloud``)
==========================================  ===========================================================
"""

from __future__ import annotations

import dataclasses
import json
import logging
import numbers
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from verl.utils.logger import LocalLogger

__all__ = ["DEFAULT_FILE_LOGGER_ROOT", "SUPPORTED_BACKENDS", "Tracking", "ValidationGenerationsLogger"]

logger = logging.getLogger(__name__)

DEFAULT_FILE_LOGGER_ROOT = "outputs"
SUPPORTED_BACKENDS = ("console", "file", "tensorboard", "wandb", "mlflow", "swanlab", "clearml", "trackio")
# Accepted by upstream verl but tied to a vendor platform SDK we do not implement.
_UNSUPPORTED_BACKENDS = {"vemlp_wandb": "the Volcengine ML platform backend is not implemented; use 'wandb'"}


@dataclasses.dataclass(frozen=True)
class _TrackingEnv:
    """Every environment variable the tracking backends read (see the module docstring)."""

    file_logger_path: str | None
    file_logger_root: str
    tensorboard_dir: str | None
    wandb_mode: str | None
    wandb_entity: str | None
    mlflow_tracking_uri: str
    mlflow_run_id: str | None
    swanlab_api_key: str | None
    swanlab_log_dir: str
    swanlab_mode: str

    @classmethod
    def from_environ(cls) -> _TrackingEnv:
        env = os.environ
        return cls(
            file_logger_path=env.get("VERL_FILE_LOGGER_PATH") or None,
            file_logger_root=env.get("VERL_FILE_LOGGER_ROOT") or DEFAULT_FILE_LOGGER_ROOT,
            tensorboard_dir=env.get("TENSORBOARD_DIR") or None,
            wandb_mode=env.get("WANDB_MODE") or None,
            wandb_entity=env.get("WANDB_ENTITY") or None,
            mlflow_tracking_uri=env.get("MLFLOW_TRACKING_URI") or "sqlite:////tmp/mlruns.db",
            mlflow_run_id=env.get("MLFLOW_RUN_ID") or None,
            swanlab_api_key=env.get("SWANLAB_API_KEY") or None,
            swanlab_log_dir=env.get("SWANLAB_LOG_DIR") or "swanlog",
            swanlab_mode=env.get("SWANLAB_MODE") or "cloud",
        )


def _require(module_name: str, backend: str, pip_name: str | None = None):
    """Import an optional backend package or explain how to install it."""
    import importlib

    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(
            f"the '{backend}' tracking backend needs the '{module_name}' package, which is not installed: "
            f"pip install {pip_name or module_name}"
        ) from err


def _config_to_dict(config: Any) -> dict:
    """A plain dict from a dict, an OmegaConf config or a dataclass (``{}`` for None)."""
    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if isinstance(config, Mapping) and not type(config).__module__.startswith("omegaconf"):
        return dict(config)
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(config):
            return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
    except ImportError:
        pass
    return dict(config)


def _flatten(data: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name, sep))
        else:
            flat[name] = value
    return flat


def _scalar(value: Any) -> float | int | None:
    """A loggable number, or None for strings, lists and multi-element tensors."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, numbers.Number):
        return value  # type: ignore[return-value]
    if hasattr(value, "item") and hasattr(value, "shape") and tuple(value.shape) in ((), (1,)):
        return value.item()
    return None


def _json_default(value: Any) -> Any:
    """``json.dumps`` fallback for numpy and torch values; anything else becomes its ``str``."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


class _FileLogger:
    """Appends ``{"step": s, "data": {...}}`` lines to a JSONL file, flushing every line."""

    def __init__(self, project_name: str, experiment_name: str, env: _TrackingEnv):
        path = env.file_logger_path or os.path.join(env.file_logger_root, project_name, f"{experiment_name}.jsonl")
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        self.path = path
        self._fp = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the whole run
        print(f"metrics (one JSON line per step) are written to {path}")

    def log(self, data: Mapping[str, Any], step: int) -> None:
        if self._fp.closed:
            return
        self._fp.write(json.dumps({"step": step, "data": dict(data)}, default=_json_default) + "\n")
        self._fp.flush()

    def finish(self) -> None:
        if not self._fp.closed:
            self._fp.close()


class _TensorboardAdapter:
    """Scalar metrics to TensorBoard event files."""

    def __init__(self, project_name: str, experiment_name: str, env: _TrackingEnv):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = env.tensorboard_dir or os.path.join("tensorboard_log", project_name, experiment_name)
        os.makedirs(self.log_dir, exist_ok=True)
        self.writer = SummaryWriter(log_dir=self.log_dir)
        self._closed = False

    def log(self, data: Mapping[str, Any], step: int) -> None:
        if self._closed:
            return
        for key, value in data.items():
            number = _scalar(value)
            if number is not None:
                self.writer.add_scalar(key, number, global_step=step)
        # Flush per step: the writer otherwise buffers for up to two minutes, which hides a crashed run's tail.
        self.writer.flush()

    def finish(self) -> None:
        if not self._closed:
            self.writer.close()
            self._closed = True


class _WandbAdapter:
    def __init__(self, project_name: str, experiment_name: str, config: dict, env: _TrackingEnv):
        wandb = _require("wandb", "wandb")
        kwargs: dict[str, Any] = {"project": project_name, "name": experiment_name, "config": config}
        if env.wandb_entity:
            kwargs["entity"] = env.wandb_entity
        if env.wandb_mode:
            # wandb reads WANDB_MODE itself too; passing it makes `offline` explicit and testable.
            kwargs["mode"] = env.wandb_mode
        self.run = wandb.init(**kwargs)

    def log(self, data: Mapping[str, Any], step: int) -> None:
        self.run.log(dict(data), step=step)

    def finish(self) -> None:
        self.run.finish()


class _MlflowLoggingAdapter:
    """Logs metrics to the active mlflow run, rewriting names mlflow would reject."""

    _INVALID = re.compile(r"[^0-9A-Za-z_\-. /]")

    def __init__(self):
        self.logger = logger

    @classmethod
    def sanitize_key(cls, key: str) -> str:
        """``@`` -> ``_at_``, other disallowed characters -> ``_``, repeated slashes -> one."""
        key = cls._INVALID.sub("_", key.replace("@", "_at_"))
        return re.sub(r"/{2,}", "/", key)

    def log(self, data: Mapping[str, Any], step: int) -> None:
        import mlflow

        metrics: dict[str, float] = {}
        for key, value in data.items():
            number = _scalar(value)
            if number is None:
                continue
            clean = self.sanitize_key(key)
            if clean != key:
                self.logger.warning("mlflow metric name %r rewritten to %r", key, clean)
            metrics[clean] = float(number)
        mlflow.log_metrics(metrics=metrics, step=step)

    def finish(self) -> None:
        import mlflow

        mlflow.end_run()


def _start_mlflow(project_name: str, experiment_name: str, config: dict, env: _TrackingEnv) -> _MlflowLoggingAdapter:
    mlflow = _require("mlflow", "mlflow")
    mlflow.set_tracking_uri(env.mlflow_tracking_uri)
    experiment = mlflow.set_experiment(project_name)  # creates it on first use
    mlflow.start_run(run_id=env.mlflow_run_id, experiment_id=experiment.experiment_id, run_name=experiment_name)
    mlflow.log_params({k: str(v)[:500] for k, v in _flatten(config).items()})
    return _MlflowLoggingAdapter()


class _CallableBackend:
    """Adapter for packages whose API is ``log(data, step=...)`` and ``finish()`` (swanlab, trackio)."""

    def __init__(self, module: Any):
        self.module = module

    def log(self, data: Mapping[str, Any], step: int) -> None:
        self.module.log(dict(data), step=step)

    def finish(self) -> None:
        self.module.finish()


def _start_swanlab(project_name: str, experiment_name: str, config: dict, env: _TrackingEnv) -> _CallableBackend:
    swanlab = _require("swanlab", "swanlab")
    if env.swanlab_api_key:
        swanlab.login(env.swanlab_api_key)
    swanlab.init(
        project=project_name,
        experiment_name=experiment_name,
        config={"FRAMEWORK": "verl", **config},
        logdir=env.swanlab_log_dir,
        mode=env.swanlab_mode,
    )
    return _CallableBackend(swanlab)


def _start_trackio(project_name: str, experiment_name: str, config: dict, env: _TrackingEnv) -> _CallableBackend:
    trackio = _require("trackio", "trackio")
    trackio.init(project=project_name, name=experiment_name, config=config)
    return _CallableBackend(trackio)


class _ClearMLAdapter:
    def __init__(self, project_name: str, experiment_name: str, config: dict, env: _TrackingEnv):
        clearml = _require("clearml", "clearml")
        self.task = clearml.Task.init(project_name=project_name, task_name=experiment_name, continue_last_task=True)
        self.task.connect_configuration(config, name="verl config")

    def log(self, data: Mapping[str, Any], step: int) -> None:
        report = self.task.get_logger()
        for key, value in data.items():
            number = _scalar(value)
            if number is None:
                continue
            title, _, series = key.rpartition("/")
            report.report_scalar(title=title or key, series=series, value=float(number), iteration=step)

    def finish(self) -> None:
        self.task.close()


def _normalise_backends(default_backend: str | Iterable[str] | None) -> list[str]:
    if default_backend is None:
        return []
    if isinstance(default_backend, str):
        names = [default_backend]
    else:
        names = [str(name) for name in default_backend]
    for name in names:
        if name in _UNSUPPORTED_BACKENDS:
            raise ValueError(f"tracking backend {name!r}: {_UNSUPPORTED_BACKENDS[name]}")
        if name not in SUPPORTED_BACKENDS:
            raise ValueError(f"unknown tracking backend {name!r}; supported: {', '.join(SUPPORTED_BACKENDS)}")
    return list(dict.fromkeys(names))  # drop duplicates, keep order


class Tracking:
    """Send metrics to several experiment trackers at once.

    Args:
        project_name: project / group name (``trainer.project_name``).
        experiment_name: run name (``trainer.experiment_name``).
        default_backend: one backend name or a list of them (``trainer.logger``); see ``SUPPORTED_BACKENDS``.
        config: run configuration (dict, OmegaConf or dataclass) recorded by backends that keep one.

    Raises:
        ValueError: an unknown backend name (the message lists the supported ones).
        ImportError: an optional backend's package is missing (the message has the ``pip install`` line).

    Example:
        >>> tracker = Tracking("demo", "run1", default_backend="console")
        >>> tracker.log({"critic/score/mean": 0.5}, step=1)
        step:1 - critic/score/mean:0.5
    """

    supported_backend = list(SUPPORTED_BACKENDS)

    def __init__(
        self,
        project_name: str,
        experiment_name: str,
        default_backend: str | list[str] | None = "console",
        config: Any = None,
    ):
        self.project_name = project_name
        self.experiment_name = experiment_name
        self.logger: dict[str, Any] = {}
        self._finished = False
        env = _TrackingEnv.from_environ()
        config_dict = _config_to_dict(config)
        for name in _normalise_backends(default_backend):
            self.logger[name] = self._start_backend(name, config_dict, env)

    def _start_backend(self, name: str, config: dict, env: _TrackingEnv) -> Any:
        project, experiment = self.project_name, self.experiment_name
        if name == "console":
            return LocalLogger(print_to_console=True)
        if name == "file":
            return _FileLogger(project, experiment, env)
        if name == "tensorboard":
            return _TensorboardAdapter(project, experiment, env)
        if name == "wandb":
            return _WandbAdapter(project, experiment, config, env)
        if name == "mlflow":
            return _start_mlflow(project, experiment, config, env)
        if name == "swanlab":
            return _start_swanlab(project, experiment, config, env)
        if name == "clearml":
            return _ClearMLAdapter(project, experiment, config, env)
        return _start_trackio(project, experiment, config, env)

    def log(self, data: Mapping[str, Any], step: int, backend: str | Iterable[str] | None = None) -> None:
        """Send ``data`` for ``step`` to every backend, or only to those named in ``backend``."""
        wanted = None if backend is None else ({backend} if isinstance(backend, str) else set(backend))
        for name, sink in self.logger.items():
            if wanted is None or name in wanted:
                sink.log(data=data, step=step)

    def finish(self) -> None:
        """Close every backend (idempotent); a failing backend does not stop the others from closing."""
        if self._finished:
            return
        self._finished = True
        for name, sink in self.logger.items():
            try:
                sink.finish()
            except Exception as err:  # closing must not mask the run's own result
                logger.warning("tracking backend %s failed to finish: %s", name, err)

    def __del__(self):
        try:
            self.finish()
        except Exception:
            pass


class ValidationGenerationsLogger:
    """Logs a handful of validation samples (input, output, score) to the experiment trackers.

    Console prints them, ``file`` appends them to ``{file logger path stem}_val_generations.jsonl``,
    ``tensorboard`` adds a text summary, ``wandb`` logs a table; other backends are skipped.

    Args:
        project_name: project name, used to place the file output.
        experiment_name: run name, used to place the file output.
    """

    def __init__(self, project_name: str | None = None, experiment_name: str | None = None):
        self.project_name = project_name or "verl"
        self.experiment_name = experiment_name or "run"

    def log(self, loggers: Iterable[str], samples: list, step: int) -> None:
        """Log ``samples`` (sequences of ``(input, output, score, ...)``) for ``step`` to each named backend."""
        rows = [self._row(sample) for sample in samples]
        if not rows:
            return
        for name in loggers:
            if name == "console":
                self._log_console(rows, step)
            elif name == "file":
                self._log_file(rows, step)
            elif name == "tensorboard":
                self._log_tensorboard(rows, step)
            elif name == "wandb":
                self._log_wandb(rows, step)

    @staticmethod
    def _row(sample: Any) -> dict[str, Any]:
        fields = list(sample) + [None] * 3
        return {"input": fields[0], "output": fields[1], "score": fields[2]}

    @staticmethod
    def _log_console(rows: list[dict[str, Any]], step: int) -> None:
        for i, row in enumerate(rows):
            print(
                f"[val step {step} sample {i}] score={row['score']}\n[input] {row['input']}\n[output] {row['output']}"
            )

    def _log_file(self, rows: list[dict[str, Any]], step: int) -> None:
        env = _TrackingEnv.from_environ()
        base = env.file_logger_path or os.path.join(env.file_logger_root, self.project_name, self.experiment_name)
        path = f"{os.path.splitext(base)[0]}_val_generations.jsonl"
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "a", encoding="utf-8") as fp:
            fp.write(json.dumps({"step": step, "samples": rows}, default=_json_default) + "\n")

    def _log_tensorboard(self, rows: list[dict[str, Any]], step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        env = _TrackingEnv.from_environ()
        log_dir = env.tensorboard_dir or os.path.join("tensorboard_log", self.project_name, self.experiment_name)
        text = "\n\n".join(
            f"**sample {i}** (score {r['score']})\n\n{r['input']}\n\n---\n\n{r['output']}" for i, r in enumerate(rows)
        )
        with SummaryWriter(log_dir=log_dir) as writer:
            writer.add_text("val/generations", text, global_step=step)

    @staticmethod
    def _log_wandb(rows: list[dict[str, Any]], step: int) -> None:
        wandb = _require("wandb", "wandb")
        if wandb.run is None:
            return
        table = wandb.Table(columns=["step", "input", "output", "score"])
        for row in rows:
            table.add_data(step, str(row["input"]), str(row["output"]), row["score"])
        wandb.log({"val/generations": table}, step=step)
