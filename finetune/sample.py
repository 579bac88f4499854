"""Sample k candidates per input from the student: the first half of the feedback step (the paper's k = 6).

    sample_candidates(model, tokenizer, prompts, k=6, method="nucleus")        -> list[list[str]], k per prompt

Prompts are chat messages (as `programs.student.training_prompt` writes them) or plain strings:
- chat messages render exactly as `programs.lm.TransformersEngine` renders them at inference: the tokenizer's chat
  template with `add_generation_prompt=True` for a causal model (the contents joined with a blank line when the
  tokenizer has no template), the contents joined with "\\n\\n" for a seq2seq model;
- a plain string is the model input verbatim (e.g. what `programs.student_lm.format_prompt` returns).
Special tokens are added by the tokenizer for seq2seq inputs only (causal prompts carry theirs in the template),
again as the engine does, so the student is sampled on the very tokens it sees in the pipeline.

Methods:
- "nucleus" (default): top-p sampling (top_k off), `num_return_sequences=k` in one `generate` call per batch.
- "diverse_beam": Diverse Beam Search (Vijayakumar et al. 2016, Hamming diversity): k beams in `num_beam_groups`
  groups (default k, i.e. one beam per group); at each step group g's log-probabilities are penalised by
  `diversity_penalty` x the number of times each token was chosen at this step by groups 0..g-1 for the same input.
  transformers 5 moved group beam search out of core `generate` to a Hub recipe
  (`custom_generate="transformers-community/group-beam-search"`, `trust_remote_code=True`): core `generate` now
  raises for `num_beam_groups > 1` unless it may download and run that code, which an offline pipeline cannot.
  So the decoding loop lives here (`group_beam_search`) and is passed to core `generate` as a callable
  `custom_generate`: core still prepares inputs, cache, encoder outputs, logits processors and stopping criteria.
- "beam": plain beam search with `num_beams = num_return_sequences = k` (the k best beams; little diversity).
- "greedy": the one output evaluation decodes (temperature 0), k = 1.

Every method batches `batch_size` prompts per `generate` call (prompts sorted by length to pad less; causal prompts
left-padded, each one's KV cache computed once and shared by its k rows), runs under `torch.inference_mode`, and
is deterministic for a seed (the global torch RNG is forked, so the caller's stream is left as it was).
Candidates are stripped and deduplicated within a prompt, keeping k slots: the distinct ones in order, then
repeated cyclically to fill k (an empty output only survives when nothing else did). `pairs.select_pair` then sees
how many really differ.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers.generation.utils import ALL_CACHE_NAMES

METHODS = ("nucleus", "diverse_beam", "beam", "greedy")


# -- prompts --------------------------------------------------------------------------------------------------------


def render_prompt(tokenizer: Any, prompt: Sequence[dict] | str, *, seq2seq: bool) -> str:
    """The model input for one prompt, rendered as `programs.lm.TransformersEngine` renders chat messages."""
    if isinstance(prompt, str):
        return prompt
    messages = [{"role": m["role"], "content": m["content"]} for m in prompt]
    if seq2seq or not getattr(tokenizer, "chat_template", None):
        return "\n\n".join(m["content"] for m in messages)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def dedupe_keep_k(outputs: Sequence[str], k: int) -> list[str]:
    """Distinct stripped outputs in first-seen order, cycled to fill k slots (empty ones only if nothing else)."""
    distinct = list(dict.fromkeys(o.strip() for o in outputs))
    non_empty = [o for o in distinct if o]
    distinct = non_empty or distinct or [""]
    return [distinct[i % len(distinct)] for i in range(k)]


# -- diverse beam search ----------------------------------------------------------------------------------------------


def _add_hypothesis(pool: list[tuple[float, torch.Tensor]], score: float, tokens: torch.Tensor, size: int) -> None:
    """Keep the `size` best finished hypotheses of one (input, group), best first."""
    if len(pool) < size or score > pool[-1][0]:
        pool.append((score, tokens))
        pool.sort(key=lambda h: -h[0])
        del pool[size:]


def group_beam_search(
    model: Any,
    input_ids: torch.LongTensor,
    logits_processor: Any,
    stopping_criteria: Any,
    generation_config: Any,
    num_groups: int = 1,
    hamming_penalty: float = 1.0,
    **model_kwargs: Any,
) -> torch.LongTensor:
    """Diverse (group) beam search as a decoding loop for `model.generate(custom_generate=group_beam_search, ...)`.

    Called by core `generate` after it has expanded the inputs to `batch * num_beams` rows and prepared the cache,
    the logits processors (applied to log-probabilities, per group, as core beam search does) and the stopping
    criteria (EOS, max length). Beams `g * group_size ... (g+1) * group_size - 1` of each input form group g; each
    group runs its own beam search, in order, with the Hamming penalty from the groups before it at the same step
    (the penalty enters the beam scores, as in the original transformers implementation). Finished hypotheses are
    scored `sum logprob / generated_length ** length_penalty`; a group stops when it holds `group_size` of them and
    no running beam can beat the worst (or at once with `early_stopping=True`). Returns the
    `num_return_sequences` best hypotheses per input over all groups, best first, right-padded with the pad token.
    """
    num_beams = generation_config.num_beams
    if num_groups < 1 or num_beams % num_groups:
        raise ValueError(f"num_beams ({num_beams}) must be a multiple of num_groups ({num_groups})")
    group_size = num_beams // num_groups
    rows_total, prompt_len = input_ids.shape
    batch = rows_total // num_beams
    device = input_ids.device
    pad = generation_config._pad_token_tensor
    pad_id = int(pad.flatten()[0]) if pad is not None else 0
    length_penalty = generation_config.length_penalty if generation_config.length_penalty is not None else 1.0
    early_stopping = generation_config.early_stopping
    max_length = generation_config.max_length
    keep = generation_config.num_return_sequences or 1

    # Only the first beam of each group is live at the start, so a group does not pick the same token k times.
    beam_scores = torch.zeros(batch, num_groups, group_size, device=device)
    beam_scores[:, :, 1:] = -1e9
    beam_scores = beam_scores.view(-1)
    pools: list[list[list[tuple[float, torch.Tensor]]]] = [[[] for _ in range(num_groups)] for _ in range(batch)]
    done = [[False] * num_groups for _ in range(batch)]
    item_base = torch.arange(batch, device=device)[:, None] * num_beams  # (batch, 1)

    sequences = input_ids
    outputs = model._prefill(sequences, generation_config, model_kwargs)
    first = True
    while True:
        if not first:
            model_inputs = model.prepare_inputs_for_generation(sequences, next_sequence_length=1, **model_kwargs)
            outputs = model(**model_inputs, return_dict=True)
        first = False
        model_kwargs = model._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=model.config.is_encoder_decoder
        )
        log_probs = torch.log_softmax(outputs.logits[:, -1, :].to(dtype=torch.float32, device=device), dim=-1)
        del outputs
        vocab = log_probs.shape[-1]
        gen_len = sequences.shape[1] + 1 - prompt_len  # generated tokens once this step's token is appended

        # This step's choice per row: parent beam, token, score; dead or finished rows keep their beam and get pad.
        parents_l = list(range(rows_total))
        tokens_l = [pad_id] * rows_total
        scores_l = beam_scores.tolist()
        chosen_l = [[-1] * num_beams for _ in range(batch)]  # live tokens chosen at this step, for the penalty

        for g in range(num_groups):
            rows = (item_base + g * group_size + torch.arange(group_size, device=device)).view(-1)  # batch*group_size
            scores = logits_processor(sequences[rows], log_probs[rows])
            if g > 0 and hamming_penalty:
                previous = torch.tensor([c[: g * group_size] for c in chosen_l], dtype=torch.long, device=device)
                counts = torch.zeros(batch, vocab, device=device)
                counts.scatter_add_(1, previous.clamp(min=0), (previous >= 0).to(counts.dtype))
                scores = scores - hamming_penalty * counts.repeat_interleave(group_size, dim=0)
            scores = (scores + beam_scores[rows][:, None]).view(batch, group_size * vocab)
            top_scores, top_index = torch.topk(scores, 2 * group_size, dim=1)
            top_beam, top_token = top_index // vocab, top_index % vocab
            cand_rows = item_base + g * group_size + top_beam  # (batch, 2*group_size)
            cand = torch.cat([sequences[cand_rows.view(-1)], top_token.view(-1, 1)], dim=1)
            hits = stopping_criteria(cand, None).view(batch, 2 * group_size).tolist()
            top_scores_l, cand_rows_l, top_token_l = top_scores.tolist(), cand_rows.tolist(), top_token.tolist()

            for b in range(batch):
                if done[b][g]:
                    continue
                selected: list[int] = []
                for rank in range(2 * group_size):
                    if hits[b][rank]:
                        # Only a top-group_size candidate may finish (as in beam search); dead beams never do.
                        if rank < group_size and top_scores_l[b][rank] > -1e8:
                            score = top_scores_l[b][rank] / (gen_len**length_penalty)
                            tokens = cand[b * 2 * group_size + rank, prompt_len:]
                            _add_hypothesis(pools[b][g], score, tokens, group_size)
                    else:
                        selected.append(rank)
                    if len(selected) == group_size:
                        break
                for j in range(group_size):
                    row = b * num_beams + g * group_size + j
                    if j < len(selected) and top_scores_l[b][selected[j]] > -1e8:
                        rank = selected[j]
                        parents_l[row] = cand_rows_l[b][rank]
                        tokens_l[row] = chosen_l[b][g * group_size + j] = top_token_l[b][rank]
                        scores_l[row] = top_scores_l[b][rank]
                    else:  # fewer live continuations than beams (e.g. at max length): a dead beam
                        scores_l[row] = -1e9
                pool = pools[b][g]
                if len(pool) >= group_size:
                    live = [top_scores_l[b][r] for r in selected if top_scores_l[b][r] > -1e8]
                    best_running = live[0] / (gen_len**length_penalty) if live else -1e9
                    done[b][g] = early_stopping is True or pool[-1][0] >= best_running

        beam_scores = torch.tensor(scores_l, dtype=torch.float32, device=device)
        parents = torch.tensor(parents_l, dtype=torch.long, device=device)
        next_tokens = torch.tensor(tokens_l, dtype=torch.long, device=device)
        cache_key = next((key for key in ALL_CACHE_NAMES if key in model_kwargs), None)
        if cache_key is not None:
            if hasattr(model, "_reorder_cache"):
                model_kwargs[cache_key] = model._reorder_cache(model_kwargs[cache_key], parents)
            else:
                model_kwargs[cache_key].reorder_cache(parents)
        sequences = torch.cat([sequences[parents], next_tokens[:, None]], dim=1)
        if sequences.shape[1] >= max_length or all(all(d) for d in done):
            break

    # Groups cut off before they filled up keep their live beams as hypotheses.
    gen_len = sequences.shape[1] - prompt_len
    for b in range(batch):
        for g in range(num_groups):
            if done[b][g]:
                continue
            for j in range(group_size):
                row = b * num_beams + g * group_size + j
                score = float(beam_scores[row])
                if score > -1e8:
                    score = score / (max(gen_len, 1) ** length_penalty)
                    _add_hypothesis(pools[b][g], score, sequences[row, prompt_len:], group_size)

    best: list[torch.Tensor] = []
    for b in range(batch):
        hyps = sorted((h for pool in pools[b] for h in pool), key=lambda h: -h[0])[:keep]
        while len(hyps) < keep:  # nothing finished at all: should not happen, but keep the shape
            hyps.append((-1e9, sequences.new_empty(0)))
        best.extend(h[1] for h in hyps)
    width = max((t.shape[0] for t in best), default=0)
    out = torch.full((len(best), prompt_len + width), pad_id, dtype=torch.long, device=device)
    out[:, :prompt_len] = input_ids[::num_beams].repeat_interleave(keep, dim=0)
    for i, t in enumerate(best):
        out[i, prompt_len : prompt_len + t.shape[0]] = t
    return out


# -- sampling ---------------------------------------------------------------------------------------------------------


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


def _eos_ids(model: Any, tokenizer: Any) -> list[int] | None:
    eos = tokenizer.eos_token_id
    extra = model.generation_config.eos_token_id if model.generation_config is not None else None
    extra = [extra] if isinstance(extra, int) else list(extra or [])
    ids = ([eos] if eos is not None else []) + [e for e in extra if e != eos]
    return ids or None


def typed_sample(model: Any, tokenizer: Any, prompt: Sequence[dict], text: str) -> str:
    """A sample with its `Literal` fields decoded under their type, as the student's engine decodes its answers
    (`programs.typed_outputs`): the feedback loop learns from the answers the distilled program will give."""
    from programs.student_lm import is_seq2seq, typed_answer

    return typed_answer(model, tokenizer, prompt, render_prompt(tokenizer, prompt, seq2seq=is_seq2seq(model)), text)


def sample_candidates(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[dict]] | Sequence[str],
    *,
    k: int = 6,
    method: str = "nucleus",
    top_p: float = 0.9,
    temperature: float = 1.0,
    num_beam_groups: int | None = None,
    diversity_penalty: float = 1.0,
    batch_size: int = 8,
    max_new_tokens: int = 48,
    seed: int = 0,
    share_prompt: bool = True,
) -> list[list[str]]:
    """k candidates (stripped, deduplicated, k slots) per prompt, in prompt order.

    `method`: "nucleus" (top_p, temperature), "diverse_beam" (`num_beam_groups` groups, default k, of k beams in all,
    Hamming `diversity_penalty`; see the module docstring), "beam" or "greedy" (k = 1). One `generate` call per
    `batch_size` prompts returns all k candidates of each (`num_return_sequences=k`). `share_prompt` (causal
    models): compute each prompt's KV cache once and share it among its k rows (`prompt_cache`) instead of once
    per row.
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; use one of {', '.join(METHODS)}")
    if k < 1:
        raise ValueError("k must be at least 1")
    if not prompts:
        return []
    from programs.student_lm import is_seq2seq

    seq2seq = is_seq2seq(model)
    texts = [render_prompt(tokenizer, p, seq2seq=seq2seq) for p in prompts]
    lengths = [len(tokenizer(t, add_special_tokens=seq2seq)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, num_return_sequences=k, pad_token_id=pad_id)
    if (eos := _eos_ids(model, tokenizer)) is not None:
        kwargs["eos_token_id"] = eos
    if method == "nucleus":
        kwargs.update(do_sample=True, top_p=top_p, top_k=0, temperature=temperature, num_beams=1)
    elif method == "beam":
        kwargs.update(do_sample=False, num_beams=k)
    elif method == "greedy":
        if k != 1:
            raise ValueError("greedy decoding gives one output per prompt: use k=1")
        kwargs.update(do_sample=False, num_beams=1)
    else:
        groups = num_beam_groups or k
        if groups < 1:
            raise ValueError("num_beam_groups must be at least 1")
        per_group = -(-k // groups)  # enough beams for k hypotheses, a multiple of the group count
        kwargs.update(do_sample=False, num_beams=groups * per_group, custom_generate=group_beam_search,
                      num_groups=groups, hamming_penalty=diversity_penalty)
    copies = max(kwargs["num_beams"], k)  # rows per prompt inside generate

    results: list[list[str]] = [[] for _ in texts]
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
                enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=seq2seq)
                enc = {key: v.to(model.device) for key, v in enc.items() if key in ("input_ids", "attention_mask")}
                if share_prompt and not seq2seq and copies > 1 and enc["input_ids"].shape[1] > 1:
                    enc["past_key_values"] = prompt_cache(model, enc["input_ids"], enc["attention_mask"], copies)
                out = model.generate(**enc, **kwargs)
                new = out if seq2seq else out[:, enc["input_ids"].shape[1] :]
                decoded = tokenizer.batch_decode(new, skip_special_tokens=True)
                for j, i in enumerate(idx):
                    results[i] = dedupe_keep_k(decoded[j * k : (j + 1) * k], k)
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return results
