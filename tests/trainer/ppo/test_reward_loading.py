"""Building the reward function from the trainer config: custom functions, managers, legacy vs newer keys."""

from __future__ import annotations

import functools

import pytest
import torch

from verl.trainer.ppo.reward import compute_reward, get_custom_reward_fn, load_reward_manager
from verl.utils.config import compose_config
from verl.utils.reward_score import default_compute_score
from verl.workers.reward_manager import BatchRewardManager, DAPORewardManager, NaiveRewardManager

REWARD_FILE = """
def compute_score(data_source, solution_str, ground_truth, extra_info=None, bonus=0.0):
    return float(solution_str == ground_truth) + bonus

def other_score(data_source, solution_str, ground_truth, extra_info=None):
    return -1.0

async def async_score(data_source, solution_str, ground_truth, extra_info=None):
    return 0.75
"""


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(REWARD_FILE)
    return str(path)


def config(*overrides: str):
    return compose_config("ppo_trainer", overrides=["actor_rollout_ref.rollout.name=hf", *overrides])


def test_no_custom_path_means_no_custom_function():
    assert get_custom_reward_fn(config()) is None


def test_custom_function_defaults_to_compute_score_and_binds_reward_kwargs(reward_file):
    cfg = config(f"custom_reward_function.path={reward_file}", "+custom_reward_function.reward_kwargs.bonus=0.5")
    fn = get_custom_reward_fn(cfg)
    assert isinstance(fn, functools.partial) and fn.keywords == {"bonus": 0.5}
    assert fn(data_source="x", solution_str="7", ground_truth="7") == 1.5


def test_custom_function_by_name_and_async_function(reward_file):
    fn = get_custom_reward_fn(
        config(f"custom_reward_function.path={reward_file}", "custom_reward_function.name=other_score")
    )
    assert fn("x", "7", "7") == -1.0
    fn = get_custom_reward_fn(
        config(f"custom_reward_function.path={reward_file}", "custom_reward_function.name=async_score")
    )
    assert fn("x", "7", "7") == 0.75


def test_missing_reward_file_names_path_and_key(tmp_path):
    missing = tmp_path / "nope.py"
    with pytest.raises(FileNotFoundError, match=r"nope\.py.*custom_reward_function\.path"):
        get_custom_reward_fn(config(f"custom_reward_function.path={missing}"))


def test_missing_function_names_function_path_and_what_is_there(reward_file):
    with pytest.raises(AttributeError, match=r"'missing_fn' not found in .*my_reward\.py.*other_score"):
        get_custom_reward_fn(
            config(f"custom_reward_function.path={reward_file}", "custom_reward_function.name=missing_fn")
        )


def test_reward_file_that_fails_on_import(tmp_path):
    broken = tmp_path / "broken_reward.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(RuntimeError, match=r"broken_reward\.py.*boom"):
        get_custom_reward_fn(config(f"custom_reward_function.path={broken}"))


def test_newer_custom_function_keys_are_used(reward_file):
    fn = get_custom_reward_fn(
        config(f"reward.custom_reward_function.path={reward_file}", "reward.custom_reward_function.name=other_score")
    )
    assert fn("x", "a", "b") == -1.0


def test_same_path_under_both_keys_is_fine(reward_file):
    cfg = config(f"reward.custom_reward_function.path={reward_file}", f"custom_reward_function.path={reward_file}")
    assert get_custom_reward_fn(cfg)("x", "7", "7") == 1.0


def test_conflicting_custom_paths_name_both_keys(reward_file, tmp_path):
    other = tmp_path / "other.py"
    other.write_text(REWARD_FILE)
    cfg = config(f"reward.custom_reward_function.path={other}", f"custom_reward_function.path={reward_file}")
    with pytest.raises(ValueError, match=r"reward\.custom_reward_function\.path=.*and custom_reward_function\.path="):
        get_custom_reward_fn(cfg)


@pytest.mark.parametrize(
    "overrides, manager_cls",
    [
        ([], NaiveRewardManager),  # legacy default
        (["reward_model.reward_manager=batch"], BatchRewardManager),  # legacy key
        (["reward.reward_manager.name=batch"], BatchRewardManager),  # newer key over the legacy default
        (["reward_model.reward_manager=batch", "reward.reward_manager.name=batch"], BatchRewardManager),
    ],
)
def test_manager_name_resolution(overrides, manager_cls):
    manager = load_reward_manager(config(*overrides), tokenizer=None, num_examine=0)
    assert type(manager) is manager_cls
    assert manager.compute_score is default_compute_score


def test_conflicting_manager_names_name_both_keys():
    cfg = config("reward_model.reward_manager=dapo", "reward.reward_manager.name=batch")
    with pytest.raises(
        ValueError, match=r"reward\.reward_manager\.name='batch' and reward_model\.reward_manager='dapo'"
    ):
        load_reward_manager(cfg, tokenizer=None, num_examine=0)


def test_reward_kwargs_and_reward_fn_key_reach_the_manager():
    cfg = config(
        "reward_model.reward_manager=dapo",
        "data.reward_fn_key=source",
        "+reward_model.reward_kwargs.max_resp_len=16",
        "+reward_model.reward_kwargs.overlong_buffer_cfg.enable=true",
        "+reward_model.reward_kwargs.overlong_buffer_cfg.len=4",
        "+reward_model.reward_kwargs.overlong_buffer_cfg.penalty_factor=1.0",
    )
    manager = load_reward_manager(cfg, tokenizer=None, num_examine=1)
    assert isinstance(manager, DAPORewardManager)
    assert manager.max_resp_len == 16 and manager.overlong_buffer_cfg["len"] == 4
    assert manager.reward_fn_key == "source" and manager.num_examine == 1
    # explicit keyword arguments win over the config
    assert load_reward_manager(cfg, None, 0, max_resp_len=32).max_resp_len == 32


@pytest.mark.parametrize("prefix", ["reward_model.reward_kwargs", "reward.reward_kwargs"])
def test_dapo_buffer_kwargs_from_either_location_are_validated(prefix):
    base = ["reward_model.reward_manager=dapo", f"+{prefix}.overlong_buffer_cfg.enable=true"]
    ok = load_reward_manager(
        config(*base, f"+{prefix}.overlong_buffer_cfg.len=4", f"+{prefix}.max_resp_len=16"), tokenizer=None
    )
    assert ok.max_resp_len == 16 and ok.overlong_buffer_cfg["len"] == 4
    # buffer longer than the response: the error names the kwargs key
    bad = config(*base, f"+{prefix}.overlong_buffer_cfg.len=32", f"+{prefix}.max_resp_len=16")
    with pytest.raises(ValueError, match=r"max_resp_len=16 must be >= .*overlong_buffer_cfg\.len=32"):
        load_reward_manager(bad, tokenizer=None)


def test_custom_function_reaches_the_manager(reward_file):
    manager = load_reward_manager(config(f"custom_reward_function.path={reward_file}"), tokenizer=None)
    assert manager.compute_score(data_source="x", solution_str="a", ground_truth="a") == 1.0


@pytest.mark.parametrize("prefix", ["reward_model", "reward"])
def test_sandbox_url_is_bound_to_default_compute_score(prefix):
    manager = load_reward_manager(config(f"{prefix}.sandbox_fusion.url=http://127.0.0.1:1/run_code"), tokenizer=None)
    fn = manager.compute_score
    assert fn.func is default_compute_score
    assert fn.keywords["sandbox_fusion_url"] == "http://127.0.0.1:1/run_code"
    assert fn.keywords["memory_limit_mb"] == 1024


def test_manager_loaded_by_importlib_source(tmp_path):
    module = tmp_path / "my_manager.py"
    module.write_text(
        "from verl.workers.reward_manager import NaiveRewardManager\nclass MyManager(NaiveRewardManager):\n    pass\n"
    )
    cfg = config(
        "reward.reward_manager.source=importlib",
        f"reward.reward_manager.module.path={module}",
        "reward.reward_manager.module.name=MyManager",
    )
    assert type(load_reward_manager(cfg, tokenizer=None)).__name__ == "MyManager"


def test_compute_reward_unpacks_dict_and_plain_results():
    tensor = torch.ones(2, 3)

    def with_dict(data, return_dict=False):
        return {"reward_tensor": tensor, "reward_extra_info": {"acc": [1, 0]}} if return_dict else tensor

    def plain(data):
        return tensor

    assert compute_reward(None, with_dict) == (tensor, {"acc": [1, 0]})
    assert compute_reward(None, plain) == (tensor, {})
