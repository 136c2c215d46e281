"""The trainer keeps only the newest ``max_*_ckpt_to_keep`` global_step_N directories."""

from __future__ import annotations

from verl.trainer.ppo.ray_trainer import rotate_checkpoints


def test_rotation_keeps_the_newest_step_directories_in_numeric_order(tmp_path):
    for step in (2, 10, 4, 8):
        (tmp_path / f"global_step_{step}" / "actor").mkdir(parents=True)
    (tmp_path / "global_step_tmp").mkdir()  # not a step directory: left alone
    # numeric order is 2 < 4 < 8 < 10 (a string sort would put 10 first); keep the newest 2
    assert rotate_checkpoints(tmp_path, keep=2) == [2, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["global_step_10", "global_step_8", "global_step_tmp"]


def test_rotation_is_off_without_a_limit(tmp_path):
    (tmp_path / "global_step_1").mkdir()
    assert rotate_checkpoints(tmp_path, keep=None) == []
    assert rotate_checkpoints(tmp_path, keep=0) == []
    assert (tmp_path / "global_step_1").is_dir()
