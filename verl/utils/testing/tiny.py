"""Build a tiny tokenizer and causal LM offline, for tests, benchmarks and the quick start.

Nothing is downloaded. The tokenizer is a byte-level BPE trained with ``tokenizers`` on a synthetic corpus, wrapped
as a ``PreTrainedTokenizerFast`` with ChatML-style special tokens and a chat template. The model is a randomly
initialised Llama-architecture causal LM. Both are saved with ``save_pretrained`` so ``AutoTokenizer`` and
``AutoModelForCausalLM`` load them from the directory like any hub checkpoint.

Why Llama and not Qwen2: with transformers 5.x, ``AutoTokenizer`` on a ``qwen2`` directory swaps in Qwen's own
pre-tokenizer and silently disagrees with the saved ``tokenizer.json``; a Llama directory keeps it exactly.
Why head_dim 32: vLLM's CPU attention kernels support head sizes from 32 upwards, so the same model loads there.

CLI::

    python -m verl.utils.testing.tiny OUT_DIR [--seed 0] [--hidden-size 128] [--num-layers 2]
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_WORDS = (
    "the a an is are was be to of and in that it for on with as at by from this what which how many much "
    "answer question number digit sum total add plus minus times equals result step think final output "
    "yes no true false correct wrong label paper author belongs class positive negative "
    "apple banana cat dog red blue green small large one two three four five six seven eight nine ten "
    "please say repeat write count the following list python code def return print if else for while"
).split()


@dataclass(frozen=True)
class TinyModelSpec:
    """Sizes of the tiny model. Defaults give ~0.4M parameters and head_dim 32."""

    vocab_target: int = 512
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 1024


def synthetic_corpus(seed: int = 0, n_lines: int = 6000) -> list[str]:
    """Lines of words, digits, arithmetic and chat-formatted turns, so BPE learns the pieces tests use."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        kind = rng.random()
        if kind < 0.4:
            lines.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 14))))
        elif kind < 0.7:
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            lines.append(f"What is {a} + {b}? The answer is {a + b}. #### {a + b}")
        elif kind < 0.85:
            digit = rng.randint(0, 9)
            lines.append(" ".join(str(digit) for _ in range(rng.randint(2, 12))))
        else:
            user = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 8)))
            bot = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 8)))
            lines.append(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{bot}<|im_end|>")
    return lines


def build_tiny_tokenizer(seed: int = 0, vocab_target: int = 512):
    """Train a byte-level BPE on the synthetic corpus and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_target,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(synthetic_corpus(seed), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        additional_special_tokens=["<|im_start|>"],
        model_max_length=1024,
        padding_side="left",
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


def build_tiny_model(
    out_dir: str | Path,
    seed: int = 0,
    spec: TinyModelSpec | None = None,
    weights_seed: int | None = None,
    init_std: float | None = None,
) -> Path:
    """Build and save the tiny tokenizer + Llama causal LM into ``out_dir``; returns the directory.

    Deterministic for a given ``seed`` and ``spec``: two builds produce identical tokenizer files and weights.
    ``weights_seed`` (default ``seed``) draws other weights over the same tokenizer, e.g. a draft model for a
    target built with the same ``seed`` (speculative decoding needs one vocabulary). ``init_std`` (default
    transformers' 0.02) sets the weights' scale: at 0.02 an untrained model mostly repeats its last input token, so
    two such models agree almost everywhere; a draft built with e.g. 0.2 disagrees with its target often.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars are noise for a 1.4 MB file
    spec = spec or TinyModelSpec()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(seed, spec.vocab_target)
    # vocab_size equals the tokenizer length so an untrained model never samples an id that has no token.
    vocab_size = len(tokenizer)
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.hidden_size // spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|pad|>"],
        **({} if init_std is None else {"initializer_range": init_std}),
    )
    torch.manual_seed(seed if weights_seed is None else weights_seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        do_sample=True,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build a tiny tokenizer + Llama causal LM offline.")
    parser.add_argument("out_dir", help="directory to write the model and tokenizer into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the tokenizer's corpus and of the weights")
    parser.add_argument("--weights-seed", type=int, default=None, help="other weights, same tokenizer (draft models)")
    parser.add_argument("--init-std", type=float, default=None, help="scale of the random weights (default 0.02)")
    parser.add_argument("--hidden-size", type=int, default=TinyModelSpec.hidden_size)
    parser.add_argument("--intermediate-size", type=int, default=TinyModelSpec.intermediate_size)
    parser.add_argument("--num-layers", type=int, default=TinyModelSpec.num_layers)
    parser.add_argument("--num-heads", type=int, default=TinyModelSpec.num_heads)
    parser.add_argument("--num-kv-heads", type=int, default=TinyModelSpec.num_kv_heads)
    args = parser.parse_args(argv)
    spec = TinyModelSpec(
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        num_kv_heads=args.num_kv_heads,
    )
    out = build_tiny_model(
        args.out_dir, seed=args.seed, spec=spec, weights_seed=args.weights_seed, init_std=args.init_std
    )
    print(f"tiny model written to {out}")


if __name__ == "__main__":
    main()
