"""Sample k candidates per input from the student: the first half of the feedback step (the paper's k = 6).

    sample_candidates(model, tokenizer, prompts, k=6, method="nucleus")        -> list[list[str]], k per prompt

Prompts are chat messages (as `programs.student.training_prompt` writes them) or plain strings, rendered by
`programs.student_lm.render_prompt`, the one rendering inference uses too (`programs.lm.TransformersEngine`): the
chat template with the generation prompt for a causal model, the contents joined with a blank line for a seq2seq
one; a plain string is the model input verbatim (e.g. what `programs.student_lm.format_prompt` returns). So the
student is sampled on the very tokens it sees in the pipeline.

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

Every method runs through the student's one batched generation, `programs.student_lm.generate_ids` (its
batching, padding, stop tokens and seeding: `batch_size` prompts per `generate` call, each causal prompt's KV cache
computed once and shared by its k rows, deterministic for a seed, the caller's torch RNG left as it was).
Candidates are stripped and deduplicated within a prompt, keeping k slots: the distinct ones in order, then
repeated cyclically to fill k (an empty output only survives when nothing else did). `pairs.select_pair` then sees
how many really differ.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from transformers.generation.utils import ALL_CACHE_NAMES

from programs.generation_defaults import (BATCH_SIZE, MAX_NEW_TOKENS, SAMPLE_K, SAMPLE_METHOD, SAMPLE_TEMPERATURE,
                                          SAMPLE_TOP_P, SEED)
from programs.student_lm import generate_texts, is_seq2seq, render_prompt, typed_answer

METHODS = ("nucleus", "diverse_beam", "beam", "greedy")


# -- candidates -----------------------------------------------------------------------------------------------------


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


def typed_sample(model: Any, tokenizer: Any, prompt: Sequence[dict], text: str) -> str:
    """A sample with its `Literal` fields decoded under their type, as the student's engine decodes its answers
    (`programs.typed_outputs`): the feedback loop learns from the answers the distilled program will give."""
    return typed_answer(model, tokenizer, prompt, render_prompt(tokenizer, prompt, seq2seq=is_seq2seq(model)), text)


def sample_candidates(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[dict]] | Sequence[str],
    *,
    k: int = SAMPLE_K,
    method: str = SAMPLE_METHOD,
    top_p: float = SAMPLE_TOP_P,
    temperature: float = SAMPLE_TEMPERATURE,
    num_beam_groups: int | None = None,
    diversity_penalty: float = 1.0,
    batch_size: int = BATCH_SIZE,
    max_new_tokens: int = MAX_NEW_TOKENS,
    seed: int = SEED,
    share_prompt: bool = True,
) -> list[list[str]]:
    """k candidates (stripped, deduplicated, k slots) per prompt, in prompt order.

    `method`: "nucleus" (top_p, temperature), "diverse_beam" (`num_beam_groups` groups, default k, of k beams in all,
    Hamming `diversity_penalty`; see the module docstring), "beam" or "greedy" (k = 1). The student's batched
    generation (`programs.student_lm.generate_ids`) runs it: one `generate` call per `batch_size` prompts returns
    all k candidates of each (`num_return_sequences=k`). `share_prompt` (causal models): compute each prompt's KV
    cache once and share it among its k rows (`programs.student_lm.prompt_cache`) instead of once per row.
    """
    if method not in METHODS:
        raise ValueError(f"unknown sampling method {method!r}; use one of {', '.join(METHODS)}")
    if k < 1:
        raise ValueError("k must be at least 1")
    if not prompts:
        return []
    if method == "nucleus":
        decoding: dict[str, Any] = dict(do_sample=True, top_p=top_p, top_k=0, temperature=temperature, num_beams=1)
    elif method == "beam":
        decoding = dict(do_sample=False, num_beams=k)
    elif method == "greedy":
        if k != 1:
            raise ValueError("greedy decoding gives one output per prompt: use k=1")
        decoding = dict(do_sample=False, num_beams=1)
    else:
        groups = num_beam_groups or k
        if groups < 1:
            raise ValueError("num_beam_groups must be at least 1")
        per_group = -(-k // groups)  # enough beams for k hypotheses, a multiple of the group count
        decoding = dict(do_sample=False, num_beams=groups * per_group, custom_generate=group_beam_search,
                        num_groups=groups, hamming_penalty=diversity_penalty)
    seq2seq = is_seq2seq(model)
    texts = [render_prompt(tokenizer, p, seq2seq=seq2seq) for p in prompts]
    out = generate_texts(model, tokenizer, texts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                         num_return_sequences=k, seed=seed, share_prompt=share_prompt, **decoding)
    return [dedupe_keep_k(rows, k) for rows in out]
