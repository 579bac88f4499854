"""Shared fixtures: a real tokenizer and tiny real models, all built offline from configs (nothing downloaded).

- `tiny_tokenizer`: a byte-level BPE `PreTrainedTokenizerFast` trained on the bundled sentences, with bos/eos/pad/unk
  and a chat template, so `apply_chat_template` and TRL's conversational prompt-completion path work.
- `tiny_causal_dir`: a 2-layer Llama (hidden 32) + that tokenizer, saved as a Hugging Face folder.
- `tiny_seq2seq_dir`: a 1+1-layer BART (d_model 32) + that tokenizer, saved the same way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_INPUTS = ROOT / "programs" / "data" / "humor_inputs.jsonl"

TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ bos_token }}{{ message['role'] }}\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}{{ bos_token }}assistant\n{% endif %}"
)

EXTRA_TEXT = [
    "Rewrite the sentence as a humorous paraphrase with the same meaning.",
    "Oops! A strong breeze came and gave me an impromptu Marilyn Monroe moment.",
    "user assistant system funny joke pun humor laugh cat dog coffee Monday meeting boss traffic rain",
    "0 1 2 3 4 5 6 7 8 9 . , ! ? ' \" : ; - ( )",
]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end tests on the bundled models")


@pytest.fixture(scope="session", autouse=True)
def _offline_and_seeded():
    """Every test runs offline, with litellm's local cost map and a fixed torch seed."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
    import torch

    torch.manual_seed(0)
    yield


def _corpus() -> list[str]:
    lines = [json.loads(line)["text"] for line in BUNDLED_INPUTS.read_text().splitlines() if line.strip()]
    return lines + EXTRA_TEXT


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A byte-level BPE tokenizer (vocab ≈ 600) trained offline on the bundled sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="session")
def tiny_causal_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    """A tiny random Llama (hidden 32, 2 layers, 2 heads) + `tiny_tokenizer`, as a Hugging Face folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tiny_tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tiny_tokenizer.bos_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_seq2seq_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    """A tiny random BART (d_model 32, 1 encoder + 1 decoder layer, 2 heads) + `tiny_tokenizer`."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    config = BartConfig(
        vocab_size=len(tiny_tokenizer),
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=512,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        bos_token_id=tiny_tokenizer.bos_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id,
        pad_token_id=tiny_tokenizer.pad_token_id,
        decoder_start_token_id=tiny_tokenizer.bos_token_id,
        forced_bos_token_id=None,
        forced_eos_token_id=None,
    )
    model = BartForConditionalGeneration(config)
    path = tmp_path_factory.mktemp("tiny-bart")
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def dspy_state():
    """`store.callback.install` replaces dspy.cache and the global callbacks, and tests configure an adapter: put
    them back after every test, so no test sees another's DSPy settings."""
    import dspy

    cache, callbacks, lm, adapter = dspy.cache, dspy.settings.callbacks, dspy.settings.lm, dspy.settings.adapter
    yield dspy
    dspy.cache = cache
    dspy.configure(callbacks=callbacks, lm=lm, adapter=adapter)
