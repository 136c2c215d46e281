"""Typed view of the ``data`` node: which parquet files feed the trainer and how prompts are prepared.

Defined here, below the dataset code that reads it (``RLHFDataset`` builds this view from whatever mapping it is
handed, so a partial dict gets these defaults); the trainer's config tree uses the same class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from verl.base_config import BaseConfig
from verl.utils.config_keys import Refuse, key

__all__ = ["DataConfig", "DataClassRef", "SamplerRef"]

_MULTI_MODAL = "multi-modal only; rows with images/videos are refused when the dataset loads"


def _unset(value: Any) -> bool:
    return value is None or value == ""


@dataclass
class DataClassRef(BaseConfig):
    """A class in a Python file: ``path`` to the file, ``name`` of the class."""

    _emit_target = False

    path: str | None = None
    """File defining the class."""
    name: str | None = None
    """Class name in that file."""


@dataclass
class SamplerRef(BaseConfig):
    """``data.sampler``: a custom curriculum sampler (must subclass AbstractSampler; needs dataloader_num_workers=0)."""

    _emit_target = False

    class_path: str | None = None
    """File defining the sampler class."""
    class_name: str | None = None
    """Class name in that file."""


@dataclass
class ContinuousTokenConfig(BaseConfig):
    """``data.continuous_token`` (verl v0.9): continuous-token inputs."""

    _emit_target = False

    enable: bool | None = key(
        None,
        since="0.9",
        v09_default=False,
        refuse=Refuse(
            lambda v: not v,
            "false",
            "continuous-token inputs are not implemented; set false",
            "feeds continuous token embeddings to the model",
            True,
        ),
    )
    """Continuous-token inputs (null: false)."""
    model_family: str | None = key(
        None,
        since="0.9",
        v09_default="auto",
        effect="inert",
        reason="only used with continuous_token.enable=true, which is refused",
    )
    """Model family of the continuous tokens."""


@dataclass
class DataConfig(BaseConfig):
    """``data``: dataset and dataloader."""

    _path = "data"

    _emit_target = False
    _open = True  # extra keys (+data.my_key=...) are passed through to custom datasets, as verl does

    tokenizer: str | None = key(
        None, effect="inert", reason="prompts are tokenized with the policy's tokenizer (actor_rollout_ref.model)"
    )
    """Tokenizer path (verl reads the policy's)."""
    use_shm: bool = key(False, effect="inert", reason="data files are read in place")
    """Copy the data files to /dev/shm."""
    train_files: Any = "~/data/rlhf/gsm8k/train.parquet"
    """A parquet path or a list of them: data.train_files="['a.parquet','b.parquet']"."""
    val_files: Any = "~/data/rlhf/gsm8k/test.parquet"
    """Validation parquet path(s); null: no validation."""
    train_max_samples: int = -1
    """-1 keeps every row; a positive value truncates the dataset (quick experiments)."""
    val_max_samples: int = -1
    """-1 keeps every row of the validation set."""
    prompt_key: str = "prompt"
    """Column holding the chat-formatted prompt (a list of {role, content} messages)."""
    reward_fn_key: str = "data_source"
    """Column whose value selects the reward function (default_compute_score table)."""
    max_prompt_length: int = 512
    """Prompt tokens; longer prompts are refused, truncated or filtered (see truncation)."""
    max_response_length: int = key(
        512, effect="inert", reason="copied into actor_rollout_ref.rollout.response_length by interpolation"
    )
    """Generated tokens per response (the rollout's response_length follows it)."""
    train_batch_size: int = 1024
    """Prompts per training step, before each one is repeated rollout.n times."""
    gen_batch_size: int = key(1024, follows="data.train_batch_size")
    """Prompts generated per step when dynamic sampling (algorithm.filter_groups) over-generates."""
    val_batch_size: int | None = None
    """null: the whole validation set in one batch."""
    tool_config_path: str | None = key(
        None,
        follows="actor_rollout_ref.rollout.multi_turn.tool_config_path",
        effect="inert",
        reason="the tool_agent loop renders the tool schemas into each prompt itself (rollout.multi_turn.tool_config_path)",
    )
    """Follows actor_rollout_ref.rollout.multi_turn.tool_config_path."""
    return_raw_input_ids: bool = False
    """Also return the un-padded prompt token ids."""
    return_raw_chat: bool = False
    """Keep the un-templated message list in the batch (agent loops and multi-turn rollouts need it)."""
    return_full_prompt: bool = False
    """Keep the templated prompt text in the batch."""
    shuffle: bool = True
    """Shuffle the training set each epoch."""
    seed: int | None = None
    """null: a fixed seed of the sampler; set for a different shuffle order."""
    dataloader_num_workers: int = 8
    """Worker processes of a custom sampler's loader (the built-in loader reads in the driver)."""
    image_patch_size: int = key(14, effect="inert", reason=_MULTI_MODAL)
    """Vision patch size."""
    validation_shuffle: bool = False
    """Shuffle the validation set."""
    filter_overlong_prompts: bool = False
    """Drop prompts longer than max_prompt_length at load time (instead of failing or truncating later)."""
    filter_overlong_prompts_workers: int = key(
        1, effect="inert", reason="process count of the overlong filter; one process gives the same rows"
    )
    """Processes of the overlong filter."""
    truncation: str = key("error", choices=("error", "left", "right", "middle"))
    """What to do with an over-long prompt: error | left | right | middle."""
    image_key: str = "images"
    """Column of images (rows with images are refused)."""
    video_key: str = "videos"
    """Column of videos (rows with videos are refused)."""
    trust_remote_code: bool = False
    """Allow tokenizer/processor code shipped with the model."""
    custom_cls: DataClassRef = key(factory=DataClassRef)
    """A Dataset subclass in a file: path to the .py file and the class name."""
    return_multi_modal_inputs: bool = key(True, effect="inert", reason=_MULTI_MODAL)
    """Return processor outputs of multi-modal rows."""
    sampler: SamplerRef = key(factory=SamplerRef)
    """A custom curriculum sampler (must subclass AbstractSampler; needs dataloader_num_workers=0)."""
    datagen: DataClassRef = key(
        factory=DataClassRef,
        effect="inert",
        reason="read only by a data.custom_cls dataset (verl's DynamicGenDataset), which gets the data config",
    )
    """Data generator of a dynamic dataset."""
    apply_chat_template_kwargs: dict[str, Any] = key(factory=dict)
    """Extra keyword arguments for tokenizer.apply_chat_template (e.g. enable_thinking)."""
    need_tools_kwargs: bool = key(
        False,
        in_yaml=False,
        refuse=Refuse(
            lambda v: not v,
            "false",
            "tool calling is not implemented; set false",
            "requires tools_kwargs in every row's extra_info",
            True,
        ),
    )
    """Require tools_kwargs in every row (dataclass-only key; +data.need_tools_kwargs=...)."""
    audio_key: str | None = key(None, since="0.9", v09_default="audios", effect="inert", reason=_MULTI_MODAL)
    """Column of audio inputs (null: audios)."""
    function_tool_path: str | None = key(
        None,
        since="0.9",
        refuse=Refuse(
            _unset,
            "null",
            "function tools are not implemented; set null",
            "the dataset's copy of rollout.multi_turn.function_tool_path",
            "/tools/fns.py",
        ),
    )
    """The dataset's copy of rollout.multi_turn.function_tool_path."""
    mm_processor_kwargs: dict[str, Any] | None = key(None, since="0.9", effect="inert", reason=_MULTI_MODAL)
    """Keyword arguments of the multi-modal processor."""
    continuous_token: ContinuousTokenConfig = key(factory=ContinuousTokenConfig)
    """Continuous-token inputs (verl v0.9)."""
