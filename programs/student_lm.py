"""The student model: load it, prompt it, generate from it.

Inference (`programs/lm.py` serves a student as a DSPy LM) and training (`finetune/`) both load students from here.

A student spec is a string:
- an embedded model name (default `smollm2-135m-instruct`): its GGUF is pulled through `programs.models`, converted
  once to a float32 safetensors folder next to it (`<cache>/models/<name>-hf`) and loaded from there afterwards;
- a path to a GGUF file (converted the same way, once);
- a local folder in Hugging Face format: a full model, or a PEFT adapter (`adapter_config.json`), loaded as its base
  model plus the adapter;
- a hub id, when the hub is reachable.

Causal LMs are prompted through their chat template (one user message: instruction, blank line, text); seq2seq
models (BART, T5) get the instruction and the text as plain input.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import torch
from programs.generation_defaults import BATCH_SIZE, MAX_NEW_TOKENS, SEED
from store.errors import UserError

DEFAULT_STUDENT = "smollm2-135m-instruct"

# Used only when a causal tokenizer ships no chat template: the prompt renders as a prefix of prompt + answer, so
# completion-only training and generation see the same context.
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


class StudentError(UserError):
    """A user-facing problem loading a student model (one line, no traceback)."""


# -- loading ---------------------------------------------------------------------------------------------------------


def _converted_dir(gguf: Path, name: str) -> Path:
    """Convert a GGUF file once into a float32 safetensors folder beside the cached models; reuse it afterwards."""
    from programs import models
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = models.cache_dir() / "models" / f"{name}-hf"
    if (target / "config.json").exists():
        return target
    try:  # before the model loads: a cache that cannot be written is one line
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}-hf-"))
    except OSError as e:
        raise StudentError(f"cannot write the model cache at {target.parent}: {e.strerror or e} (set "
                           "CRITIC_DISTILL_CACHE to a writable folder)") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        # The weights are dequantized already; without this, save_pretrained refuses (or writes a GGUF-tagged config).
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, target)  # atomic: a killed conversion never leaves a half folder under the final name
        except OSError:
            if not (target / "config.json").exists():  # not a concurrent conversion that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _resolve(spec: str) -> str:
    """The local folder (or hub id) that `spec` names, converting an embedded or GGUF model on first use."""
    from programs import models

    if models.is_embedded(spec):
        entry = models.get(spec)
        return str(_converted_dir(models.path(entry.name), entry.name))
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        from store.ids import stable_id  # only here: the store (and DuckDB) stays out of plain model loads

        resolved = path.resolve()
        key = stable_id(str(resolved), resolved.stat().st_size)[:8]
        return str(_converted_dir(resolved, f"{resolved.stem}-{key}"))
    if path.is_dir():
        if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
            raise StudentError(f"{spec} is not a Hugging Face model folder (no config.json or adapter_config.json)")
        return str(path)
    if path.exists() or spec.startswith((".", "/", "~")) or spec.endswith(".gguf"):
        raise StudentError(f"no model at {spec} (pass an embedded model name, a model folder or a GGUF file)")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise StudentError(
            f"{spec!r} is not an embedded model or a local folder, and the hub is offline (HF_HUB_OFFLINE=1); "
            f"pass a local model folder or one of: {', '.join(models.REGISTRY)}"
        )
    return spec  # a hub id


def _ensure_tokens(model: Any, tokenizer: Any) -> None:
    """Every student tokenizer gets a pad token, and every causal one a chat template."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        elif tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})
            model.resize_token_embeddings(len(tokenizer))
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if not is_seq2seq(model) and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE


def _load_hf(source: str) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    config = AutoConfig.from_pretrained(source)
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    model = auto.from_pretrained(source, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source)
    return model, tokenizer


def load_student(spec: str = DEFAULT_STUDENT, *, for_training: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) for a student spec, float32 on CPU.

    A PEFT adapter folder loads its base (itself any spec, e.g. an embedded name) plus the adapter: merged into the
    base for inference, or as a trainable `PeftModel` when `for_training`. Inference models come back in eval mode.
    """
    source = _resolve(spec)
    adapter_config = Path(source) / "adapter_config.json"
    if adapter_config.exists():
        from peft import PeftModel

        base_spec = json.loads(adapter_config.read_text()).get("base_model_name_or_path")
        if not base_spec:
            raise StudentError(f"{spec}: adapter_config.json names no base model (base_model_name_or_path)")
        model, tokenizer = load_student(base_spec, for_training=for_training)
        if (Path(source) / "tokenizer_config.json").exists():
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(source)
        model = PeftModel.from_pretrained(model, source, is_trainable=for_training)
        if not for_training:
            model = model.merge_and_unload()
    else:
        model, tokenizer = _load_hf(source)
    _ensure_tokens(model, tokenizer)
    model.train(for_training)
    return model, tokenizer


# -- prompting and generation ------------------------------------------------------------------------------------


def is_seq2seq(model: Any) -> bool:
    """True for encoder-decoder models (BART, T5), PEFT-wrapped or not."""
    return bool(getattr(model.config, "is_encoder_decoder", False))


def user_message(instruction: str, text: str) -> str:
    return f"{instruction}\n\n{text}" if instruction else text


def render_prompt(tokenizer: Any, prompt: Sequence[dict] | str, *, seq2seq: bool) -> str:
    """The student's input for chat messages, the one rendering that inference (`programs.lm`), sampling and
    training data share: the chat template with the generation prompt (causal), the contents joined with a blank
    line (seq2seq, or a tokenizer without a template). A string is the model input already, kept verbatim."""
    if isinstance(prompt, str):
        return prompt
    messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    if seq2seq or not getattr(tokenizer, "chat_template", None):
        return "\n\n".join(m["content"] for m in messages)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def format_prompt(tokenizer: Any, instruction: str, text: str, *, seq2seq: bool) -> str:
    """The student's input for an instruction and a text: one user message (`render_prompt`)."""
    return render_prompt(tokenizer, [{"role": "user", "content": user_message(instruction, text)}], seq2seq=seq2seq)


def stop_ids(model: Any, tokenizer: Any) -> list[int] | None:
    """The tokens every generation stops at: the tokenizer's end of sequence, then the model's own."""
    eos = tokenizer.eos_token_id
    extra = model.generation_config.eos_token_id if model.generation_config is not None else None
    extra = [extra] if isinstance(extra, int) else list(extra or [])
    ids = ([eos] if eos is not None else []) + [e for e in extra if e != eos]
    return ids or None


def prompt_cache(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, copies: int) -> Any:
    """The KV cache of each (left-padded) causal prompt but its last token, computed once and repeated `copies`
    times per prompt, for `generate(past_key_values=...)`.

    Core `generate` expands the prompts to one row per beam / returned sequence *before* the prefill, so without
    this every one of the k candidates re-reads its prompt (the adapter's instructions and the text: ~60 tokens
    for the humor task on SmolLM2, as many as a candidate's own). `generate` then feeds only the last prompt token
    and decodes as usual; the positions are the ones it derives from the attention mask.
    """
    from transformers import DynamicCache

    positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    cache = DynamicCache(config=model.config)
    model(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1], position_ids=positions[:, :-1],
          past_key_values=cache, use_cache=True, logits_to_keep=1)
    cache.batch_repeat_interleave(copies)
    return cache


def generate_ids(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    *,
    batch_size: int = BATCH_SIZE,
    max_new_tokens: int = MAX_NEW_TOKENS,
    num_return_sequences: int = 1,
    seed: int = SEED,
    share_prompt: bool = False,
    **decoding: Any,
) -> list[tuple[int, list[list[int]]]]:
    """The batched generation every student path shares: for each rendered prompt, in order, its length in tokens
    and the new token ids of each returned sequence, cut before the first stop token (`stop_ids`).

    `decoding` goes to `model.generate` as it is (greedy unless it says otherwise: `do_sample`, `num_beams`,
    `temperature`, `top_p`, a `custom_generate` loop and its arguments). Prompts are batched by length in tokens
    (less padding); causal prompts are left-padded (their special tokens come from the chat template), seq2seq
    ones right-padded with the tokenizer's special tokens. `share_prompt` (causal): each prompt's KV cache is
    computed once for all its rows (`prompt_cache`). Deterministic for a seed; the caller's torch RNG is left as
    it was.
    """
    if not prompts:
        return []
    seq2seq = is_seq2seq(model)
    lengths = [len(tokenizer(p, add_special_tokens=seq2seq)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, num_beams=1, do_sample=False,
                                  num_return_sequences=num_return_sequences, pad_token_id=pad_id)
    kwargs.update(decoding)
    stops = stop_ids(model, tokenizer)
    if stops is not None:
        kwargs["eos_token_id"] = stops
    copies = max(kwargs["num_beams"], num_return_sequences)  # rows per prompt inside generate

    results: list[tuple[int, list[list[int]]]] = [(0, []) for _ in prompts]
    was_training = model.training
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "right" if seq2seq else "left"
    devices = [model.device] if model.device.type == "cuda" else []
    model.eval()
    try:
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(seed)
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                                add_special_tokens=seq2seq)
                enc = {k: v.to(model.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                if share_prompt and not seq2seq and copies > 1 and enc["input_ids"].shape[1] > 1:
                    enc["past_key_values"] = prompt_cache(model, enc["input_ids"], enc["attention_mask"], copies)
                out = model.generate(**enc, **kwargs)
                # new tokens only: after the decoder's start token (seq2seq), after the padded prompt (causal)
                new = (out[:, 1:] if seq2seq else out[:, enc["input_ids"].shape[1] :]).tolist()
                prompt_tokens = enc["attention_mask"].sum(dim=1).tolist()
                for j, i in enumerate(idx):
                    rows = new[j * num_return_sequences : (j + 1) * num_return_sequences]
                    results[i] = (int(prompt_tokens[j]), [_cut(row, stops) for row in rows])
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return results


def _cut(tokens: list[int], stops: list[int] | None) -> list[int]:
    """A generated row up to its first stop token (what follows is padding)."""
    for n, t in enumerate(tokens):
        if stops and t in stops:
            return tokens[:n]
    return tokens


def generate_texts(model: Any, tokenizer: Any, prompts: Sequence[str], **settings: Any) -> list[list[str]]:
    """`generate_ids` decoded: each prompt's returned sequences as stripped strings, in prompt order."""
    out = generate_ids(model, tokenizer, prompts, **settings)
    return [[tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in rows] for _, rows in out]


def generate(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    *,
    instruction: str,
    batch_size: int = BATCH_SIZE,
    max_new_tokens: int = MAX_NEW_TOKENS,
    num_beams: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    seed: int = SEED,
) -> list[list[str]]:
    """The student's outputs: `num_return_sequences` stripped strings per input, in input order (`generate_ids`)."""
    seq2seq = is_seq2seq(model)
    prompts = [format_prompt(tokenizer, instruction, t, seq2seq=seq2seq) for t in texts]
    decoding: dict[str, Any] = dict(num_beams=num_beams, do_sample=do_sample)
    if do_sample:
        decoding.update(temperature=temperature, top_p=top_p)
    return generate_texts(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                          num_return_sequences=num_return_sequences, seed=seed, **decoding)


def typed_answer(model: Any, tokenizer: Any, messages: Sequence[dict], prompt: str, answer: str) -> str:
    """`answer` to `messages` (rendered as `prompt`) with its `Literal` fields decoded under their type, the student's
    own likelihood choosing where its answer spells no allowed value (`programs.typed_outputs.snap`): one path for
    the engine's answers and the feedback loop's samples."""
    from programs.typed_outputs import snap

    return snap(messages, answer,
                lambda prefix, options: continuation_logprobs(model, tokenizer, prompt, prefix, options))


def continuation_logprobs(model: Any, tokenizer: Any, prompt: str, prefix: str, continuations: Sequence[str]
                          ) -> list[float]:
    """log p(prefix + c | prompt) for each continuation c, the prompt rendered as `generate_ids` takes it: how likely
    the student finds each allowed value at one place in its answer (`programs.typed_outputs`). The shared prefix
    is scored with every continuation, so a token that straddles the boundary counts fairly for each."""
    seq2seq = is_seq2seq(model)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if seq2seq:
                enc = tokenizer([prompt] * len(continuations), return_tensors="pt")
                labels = tokenizer([prefix + c for c in continuations], return_tensors="pt", padding=True,
                                   add_special_tokens=False)
                targets = labels["input_ids"].masked_fill(labels["attention_mask"] == 0, -100)
                logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                               labels=targets).logits
                return _summed(logits, targets)
            start = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            side = tokenizer.padding_side
            tokenizer.padding_side = "right"
            try:
                full = tokenizer([prompt + prefix + c for c in continuations], return_tensors="pt", padding=True,
                                 add_special_tokens=False)
            finally:
                tokenizer.padding_side = side
            targets = full["input_ids"].masked_fill(full["attention_mask"] == 0, -100)
            targets[:, :start] = -100
            logits = model(input_ids=full["input_ids"], attention_mask=full["attention_mask"]).logits
            return _summed(logits[:, :-1], targets[:, 1:])
    finally:
        model.train(was_training)


def _summed(logits: Any, targets: Any) -> list[float]:
    """Per row, the summed log-probability of the target tokens (-100: not scored)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    mask = targets != -100
    picked = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked * mask).sum(dim=-1).tolist()
