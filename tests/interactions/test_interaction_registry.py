"""initialize_interactions_from_config: YAML format, default names, and errors that name the file and entry."""

from __future__ import annotations

import pytest

from verl.interactions.base import BaseInteraction
from verl.interactions.gsm8k_interaction import Gsm8kInteraction
from verl.interactions.multiturn_dialog_interaction import MultiTurnDialogInteraction
from verl.interactions.utils.interaction_registry import get_interaction_class, initialize_interactions_from_config

GSM8K = "verl.interactions.gsm8k_interaction.Gsm8kInteraction"
DIALOG = "verl.interactions.multiturn_dialog_interaction.MultiTurnDialogInteraction"


def write(tmp_path, text):
    path = tmp_path / "interactions.yaml"
    path.write_text(text)
    return str(path)


def test_loads_every_entry_with_its_config_and_default_names(tmp_path):
    path = write(
        tmp_path,
        f"""
interaction:
  - class_name: {GSM8K}
    config: {{}}
  - name: dialog
    class_name: {DIALOG}
    config: {{prob_weight: 0.25, label_token_ids: {{'yes': 7, 'no': [8, 9]}}}}
  - class_name: verl.interactions.base.BaseInteraction
""",
    )
    got = initialize_interactions_from_config(path)
    assert sorted(got) == ["base", "dialog", "gsm8k"]
    assert isinstance(got["gsm8k"], Gsm8kInteraction) and got["gsm8k"].name == "gsm8k"
    assert isinstance(got["dialog"], MultiTurnDialogInteraction) and got["dialog"].name == "dialog"
    assert got["dialog"].prob_weight == 0.25
    assert got["dialog"].label_token_ids == {"yes": [7], "no": [8, 9]}
    assert type(got["base"]) is BaseInteraction


@pytest.mark.parametrize(
    "text, match",
    [
        (
            f"interaction:\n  - class_name: {GSM8K}\n  - class_name: {GSM8K}\n",
            r"entry 1 \('gsm8k'\).*Duplicate interaction name 'gsm8k' found",
        ),
        ("interaction:\n  - class_name: verl.interactions.nope.Missing\n", r"entry 0 .*cannot be imported"),
        ("interaction:\n  - class_name: collections.OrderedDict\n", r"entry 0 .*not a subclass of .*BaseInteraction"),
        ("interaction:\n  - name: x\n", r"entry 0: each entry needs a 'class_name'"),
        (f"interaction:\n  - class_name: {GSM8K}\n    cfg: {{}}\n", r"entry 0: unknown keys \['cfg'\]"),
        ("interactions: []\n", r"top-level key 'interaction'"),
        ("interaction: [unclosed\n", r"not valid YAML"),
    ],
)
def test_bad_yaml_entries_raise_naming_file_and_entry(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(ValueError, match=match) as info:
        initialize_interactions_from_config(path)
    assert path in str(info.value)


def test_missing_file_names_the_path_and_the_config_key(tmp_path):
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match=r"nope\.yaml.*does not exist.*multi_turn\.interaction_config_path"):
        initialize_interactions_from_config(missing)


def test_get_interaction_class_needs_a_dotted_path():
    assert get_interaction_class(GSM8K) is Gsm8kInteraction
    with pytest.raises(ValueError, match="dotted path"):
        get_interaction_class("Gsm8kInteraction")


def test_unquoted_yes_no_labels_are_rejected(tmp_path):
    # YAML 1.1 reads an unquoted `yes` key as the boolean True; the label would silently become "true".
    path = write(tmp_path, f"interaction:\n  - class_name: {DIALOG}\n    config: {{label_token_ids: {{yes: 7}}}}\n")
    with pytest.raises(ValueError, match="YAML boolean; quote the label"):
        initialize_interactions_from_config(path)
