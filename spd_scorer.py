"""SPD scorer: which mismatching draft tokens of speculative decoding can be accepted without changing the answer.

Terms (``docs/spd.md``; DESIGN section 6), per sample: context ``c`` (prompt ids), draft tokens ``d_1..d_K``, the
target model's greedy tokens ``t_1..t_K`` at the same positions, ground truth ``g``.

* mismatch mask ``m_i = [d_i != t_i]``; matching tokens are always accepted, as in plain speculative decoding;
* decisions ``a_i ~ Bernoulli(p_i)`` on mismatches, ``p_i = sigmoid(s_i)`` from :class:`ScoringActor`;
* decision mask: the mismatches up to and including the first rejected one (``j``); later decisions do not change
  the outcome, so they get no gradient;
* hybrid prefix ``c + d_1..d_{j-1} + t_j`` (all of ``d`` when nothing is rejected), which the target completes;
* reward table (:func:`compute_reward_tensor`): A accepted >= 1 and correct ``1 + alpha * accepted / K``; B none
  accepted and correct ``1``; C accepted >= 1 and wrong ``-beta``; D none accepted and wrong ``0``.

Indices here are 0-based: ``j`` is the position in ``d`` (0..K-1) of the first rejected mismatch, ``K`` when there
is none, and the hybrid prefix is ``c + d[:j] + [t[j]]``.

How GRPO trains the scorer unchanged: :class:`ScoringActor` looks like a causal LM with a 2-token vocabulary.
``forward`` returns ``logits`` ``(b, T, 2)`` = ``[0, s]`` (index 1 = log-odds of ACCEPT), shifted like an LM's, so
``logits[:, t]`` scores the draft token at ``t + 1`` from the hidden state at ``t + 1`` (which has seen that token).
``SPDRollout`` (``verl/workers/rollout/spd_rollout.py``) writes ``input_ids = c + d`` and ``responses = a``, so
``DataParallelPPOActor``'s ``log_softmax(logits[:, -R-1:-1])`` gathered at ``responses`` is
``log Bernoulli(a_i; p_i)``: the policy-gradient log-prob, with no change to the actor.

Importing this module registers ``ScoringActorConfig`` / ``ScoringActor`` with ``AutoConfig`` and
``AutoModelForCausalLM`` (``model_type="spd_scoring_actor"``), so ``actor_rollout_ref.model.external_lib=spd_scorer``
lets the FSDP worker load a scorer directory like any causal LM.

CLI (a scorer directory from a causal-LM checkpoint, tokenizer copied)::

    python spd_scorer.py --init_from BACKBONE_DIR --out SCORER_DIR [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_BETA",
    "ScoringActor",
    "ScoringActorConfig",
    "accept_logits",
    "accepted_mismatches",
    "build_scorer_dir",
    "compute_reward_tensor",
    "decision_mask",
    "first_rejection",
    "hybrid_prefix_ids",
    "mismatch_mask",
    "scenario",
    "scenario_counts",
]

DEFAULT_ALPHA = 1.0
"""Scenario A bonus per accepted mismatch, as a fraction of K: reward ``1 + alpha * accepted / K``."""
DEFAULT_BETA = 1.0
"""Scenario C penalty: reward ``-beta`` when an accepted mismatch broke the answer."""


# ------------------------------------------------------------------------------------------------------ pure maths


def mismatch_mask(draft: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """``m_i = [d_i != t_i]`` on valid (non-padding) positions.

    Args:
        draft: ``(B, K)`` draft token ids.
        target: ``(B, K)`` target greedy token ids.
        valid: ``(B, K)`` 1 on real positions, 0 on padding; None means all real.

    Returns:
        ``(B, K)`` long, 1 where the draft token differs from the target's.
    """
    mismatch = draft != target
    if valid is not None:
        mismatch = mismatch & valid.bool()
    return mismatch.long()


def _rejected(decisions: torch.Tensor, mismatch: torch.Tensor) -> torch.Tensor:
    """``(B, K)`` bool: mismatches the decisions reject."""
    return mismatch.bool() & ~decisions.bool()


def decision_mask(decisions: torch.Tensor, mismatch: torch.Tensor) -> torch.Tensor:
    """Positions whose decision matters: mismatches up to and including the first rejected one.

    Example: mismatch ``[0, 1, 1, 0, 1]``, decisions ``[1, 1, 0, 1, 1]`` -> ``[0, 1, 1, 0, 0]`` (position 2 is the
    first rejection; position 4 comes after it).

    Args:
        decisions: ``(B, K)`` 0/1, 1 = accept.
        mismatch: ``(B, K)`` 0/1 from :func:`mismatch_mask`.

    Returns:
        ``(B, K)`` long.
    """
    rejected = _rejected(decisions, mismatch).long()
    rejected_before = (torch.cumsum(rejected, dim=-1) - rejected) > 0  # a rejection strictly before i
    return (mismatch.bool() & ~rejected_before).long()


def first_rejection(decisions: torch.Tensor, mismatch: torch.Tensor) -> torch.Tensor:
    """0-based index of the first rejected mismatch per row, or ``K`` (the tensor width) when there is none.

    Args:
        decisions: ``(B, K)`` 0/1.
        mismatch: ``(B, K)`` 0/1.

    Returns:
        ``(B,)`` long.
    """
    rejected = _rejected(decisions, mismatch)
    width = torch.full_like(rejected[:, 0], rejected.size(-1), dtype=torch.long)
    return torch.where(rejected.any(dim=-1), rejected.long().argmax(dim=-1), width)  # argmax = first max


def accepted_mismatches(decisions: torch.Tensor, mismatch: torch.Tensor) -> torch.Tensor:
    """Mismatches accepted before the first rejection (the ones that reach the hybrid prefix).

    Args:
        decisions: ``(B, K)`` 0/1.
        mismatch: ``(B, K)`` 0/1.

    Returns:
        ``(B,)`` long.
    """
    return (decision_mask(decisions, mismatch) * decisions.long()).sum(dim=-1)


def hybrid_prefix_ids(context: Sequence[int], draft: Sequence[int], target: Sequence[int], j: int) -> list[int]:
    """``c + d[:j] + [t[j]]`` for a first rejection at 0-based ``j``; ``c + d`` when ``j >= len(d)`` (none).

    Example: ``c=[7]``, ``d=[1, 2, 3]``, ``t=[1, 5, 6]``, ``j=1`` -> ``[7, 1, 5]``.
    """
    context, draft, target = [int(x) for x in context], [int(x) for x in draft], [int(x) for x in target]
    if len(draft) != len(target):
        raise ValueError(f"draft and target must have the same length, got {len(draft)} and {len(target)}")
    if j < 0:
        raise ValueError(f"first rejection index must be >= 0, got {j}")
    if j >= len(draft):
        return context + draft
    return context + draft[:j] + [target[j]]


def compute_reward_tensor(
    correct: torch.Tensor,
    accepted_mismatches: torch.Tensor,
    num_draft_tokens: torch.Tensor,
    alpha: float = DEFAULT_ALPHA,
    beta: float = DEFAULT_BETA,
) -> torch.Tensor:
    """The A/B/C/D reward table.

    ====  =============  =======  ==========================
    case  accepted >= 1  correct  reward
    ====  =============  =======  ==========================
    A     yes            yes      ``1 + alpha * accepted / K``
    B     no             yes      ``1``
    C     yes            no       ``-beta``
    D     no             no       ``0``
    ====  =============  =======  ==========================

    Args:
        correct: ``(B,)`` bool/0-1, the target's completion of the hybrid prefix contains the ground truth.
        accepted_mismatches: ``(B,)`` counts from :func:`accepted_mismatches`.
        num_draft_tokens: ``(B,)`` K per sample (a tensor, or an int broadcast to all rows).
        alpha: scenario A bonus scale.
        beta: scenario C penalty.

    Returns:
        ``(B,)`` float32 rewards.
    """
    correct = torch.as_tensor(correct).bool()
    accepted = torch.as_tensor(accepted_mismatches).float()
    k = torch.as_tensor(num_draft_tokens, dtype=torch.float32).expand_as(accepted).clamp(min=1.0)
    any_accepted = accepted >= 1
    reward_a = 1.0 + alpha * accepted / k
    return torch.where(
        correct,
        torch.where(any_accepted, reward_a, torch.ones_like(accepted)),
        torch.where(any_accepted, torch.full_like(accepted, -float(beta)), torch.zeros_like(accepted)),
    )


def scenario(correct: bool, accepted: int) -> str:
    """``'A'`` (accepted & correct), ``'B'`` (none & correct), ``'C'`` (accepted & wrong) or ``'D'`` (none & wrong)."""
    if correct:
        return "A" if accepted >= 1 else "B"
    return "C" if accepted >= 1 else "D"


def scenario_counts(correct: torch.Tensor, accepted: torch.Tensor) -> dict[str, int]:
    """How many rows fall in each scenario: ``{"A": n, "B": n, "C": n, "D": n}``; inputs ``(B,)``."""
    counts = dict.fromkeys("ABCD", 0)
    for c, a in zip(torch.as_tensor(correct).tolist(), torch.as_tensor(accepted).tolist()):
        counts[scenario(bool(c), int(a))] += 1
    return counts


def accept_logits(scores: torch.Tensor) -> torch.Tensor:
    """Per-position accept scores -> causal-LM-style 2-way logits.

    Args:
        scores: ``(b, T)`` ``s_t`` from the hidden state at ``t``.

    Returns:
        ``(b, T, 2)`` with ``[..., 0] = 0`` and ``[..., 1] = s_{t+1}`` (``0`` at the last position), so
        ``log_softmax`` gives ``(log(1 - p), log p)`` of the token at ``t + 1``, as an LM's logits at ``t`` score it.
    """
    shifted = torch.cat([scores[:, 1:], torch.zeros_like(scores[:, :1])], dim=1)  # (b, T)
    return torch.stack([torch.zeros_like(shifted), shifted], dim=-1)


# ------------------------------------------------------------------------------------------------------ model


class ScoringActorConfig(PretrainedConfig):
    """Config of :class:`ScoringActor`: the backbone's own config, nested under ``backbone_config``.

    Args:
        backbone_config: the causal LM's config (object or dict with ``model_type``); None gives a default Llama
            (only so that ``ScoringActorConfig()`` works, as transformers expects).
    """

    model_type = "spd_scoring_actor"
    sub_configs = {"backbone_config": AutoConfig}

    def __init__(self, backbone_config: PretrainedConfig | dict | None = None, **kwargs: Any):
        if isinstance(backbone_config, dict):
            backbone_config = AutoConfig.for_model(**backbone_config)
        elif backbone_config is None:
            backbone_config = AutoConfig.for_model("llama")
        self.backbone_config = backbone_config
        kwargs.setdefault("tie_word_embeddings", False)  # the score head shares nothing with the embeddings
        super().__init__(**kwargs)


def _normal_(tensor: torch.Tensor, std: float) -> None:
    """transformers' guarded initialiser when it exists (5.x: leaves loaded weights alone), else torch's."""
    try:
        from transformers import initialization as hf_init

        hf_init.normal_(tensor, mean=0.0, std=std)
    except ImportError:
        nn.init.normal_(tensor, mean=0.0, std=std)


def _zeros_(tensor: torch.Tensor) -> None:
    try:
        from transformers import initialization as hf_init

        hf_init.zeros_(tensor)
    except ImportError:
        nn.init.zeros_(tensor)


class ScoringActor(PreTrainedModel):
    """The causal-LM backbone (its transformer body, without the LM head) + a linear score head ``hidden -> s``.

    ``forward`` returns ``.logits`` ``(b, T, 2)`` from :func:`accept_logits`; ``p_i = sigmoid(s_i)``. There is no
    ``generate``: :class:`verl.workers.rollout.spd_rollout.SPDRollout` samples the decisions.
    """

    config_class = ScoringActorConfig
    base_model_prefix = "model"  # same key prefix as *ForCausalLM checkpoints ("model.layers.0...")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flash_attn_2 = True

    def __init__(self, config: ScoringActorConfig):
        super().__init__(config)
        self.model = AutoModel.from_config(config.backbone_config)
        self.score = nn.Linear(config.backbone_config.hidden_size, 1)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if module is getattr(self, "score", None):
            _normal_(module.weight, std=float(getattr(self.config.backbone_config, "initializer_range", 0.02)))
            _zeros_(module.bias)
        elif hasattr(super(), "_init_weights"):
            super()._init_weights(module)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        use_cache: bool = False,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """``input_ids`` etc. ``(b, T)`` -> ``CausalLMOutputWithPast(logits=(b, T, 2))``; see :func:`accept_logits`."""
        kwargs.pop("labels", None)
        out = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False, **kwargs
        )
        scores = self.score(out.last_hidden_state).squeeze(-1)  # (b, T): s_t from the hidden state at t
        return CausalLMOutputWithPast(logits=accept_logits(scores))

    @torch.no_grad()
    def accept_probs(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``(b, T)`` ``p_t`` of accepting the token AT position ``t`` (unshifted; position 0 is meaningless)."""
        logits = self(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        s = logits[..., 1].float()  # (b, T), s_{t+1} at t
        return torch.sigmoid(torch.cat([torch.zeros_like(s[:, :1]), s[:, :-1]], dim=1))

    @classmethod
    def from_backbone(cls, backbone_path: str | Path, seed: int = 0, dtype: torch.dtype | None = None) -> ScoringActor:
        """A scorer whose body is the causal LM at ``backbone_path`` and whose head is fresh (seeded)."""
        backbone_config = AutoConfig.from_pretrained(str(backbone_path))
        token_ids = {
            key: getattr(backbone_config, key, None) for key in ("bos_token_id", "eos_token_id", "pad_token_id")
        }
        config = ScoringActorConfig(backbone_config=backbone_config, **token_ids)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            scorer = cls(config)
        backbone = AutoModel.from_pretrained(str(backbone_path))
        result = scorer.model.load_state_dict(backbone.state_dict(), strict=False)
        if result.missing_keys:
            raise ValueError(f"{backbone_path} lacks backbone weights {result.missing_keys[:5]}")
        return scorer.to(dtype) if dtype is not None else scorer


def build_scorer_dir(backbone_path: str | Path, out_dir: str | Path, seed: int = 0) -> Path:
    """Save ``ScoringActor.from_backbone(backbone_path)`` and the backbone's tokenizer into ``out_dir``.

    The result is what ``--model_path`` / ``actor_rollout_ref.model.path`` points at.
    """
    from transformers import AutoTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ScoringActor.from_backbone(backbone_path, seed=seed).save_pretrained(out)
    try:
        AutoTokenizer.from_pretrained(str(backbone_path)).save_pretrained(out)
    except (OSError, ValueError) as exc:  # a backbone without a tokenizer: the caller must provide one
        logger.warning("no tokenizer copied from %s: %s", backbone_path, exc)
    return out


def _register() -> None:
    AutoConfig.register(ScoringActorConfig.model_type, ScoringActorConfig, exist_ok=True)
    AutoModelForCausalLM.register(ScoringActorConfig, ScoringActor, exist_ok=True)


_register()  # the point of importing this module as model.external_lib


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build an SPD scorer directory (backbone + fresh score head).")
    parser.add_argument("--init_from", required=True, help="causal-LM checkpoint directory to use as the backbone")
    parser.add_argument("--out", required=True, help="directory to write the scorer and tokenizer into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the score head's initialisation")
    args = parser.parse_args(argv)
    print(f"scorer written to {build_scorer_dir(args.init_from, args.out, seed=args.seed)}")


if __name__ == "__main__":
    main()
