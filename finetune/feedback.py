"""The critic's feedback, as in the paper: sample k candidates from the current student, drop those outside the length
band, keep the most different pair among the rest, let the critic judge both orders, and turn the verdicts into
training data.

    sample (k = 6, batched; plus the greedy output, what evaluation sees) -> length filter ([0.8, 1.2] x input
    words) -> select pair (greedy vs the most different sample, else the most different pair: largest n-gram edit
    distance, or embedding distance) -> critic, both orders -> judgments (purpose 'feedback')

The training data is then read back from the store by SQL (`finetune.objectives`: this round's judged pairs,
optionally only the confident ones), so a user can replace any of it with a query of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import dspy

from metrics.guards import LC, candidate_meaning, record_length_control
from metrics.judge import judge_verdicts
from finetune.pairs import select_pair, within_length
from finetune.sample import sample_candidates, typed_sample
from programs.legacy_ids import SAMPLING_AT_FIRST
from programs.generation_defaults import (BATCH_SIZE, MAX_NEW_TOKENS, SAMPLE_K, SAMPLE_METHOD, SAMPLE_TEMPERATURE,
                                          SAMPLE_TOP_P, SEED)
from programs.student_lm import load_student
from programs.critic import Critic
from programs.progress import stage_progress
from programs.student import parse_completion, training_prompt
from programs.tasks import Task
from programs.teach import candidate_id
from store import Store, stable_id


GREEDY_RANK = -1  # the student's greedy output is stored as a 'sample' candidate of rank -1 (k may change)


@dataclass
class FeedbackConfig:
    k: int = SAMPLE_K
    method: str = SAMPLE_METHOD  # nucleus | diverse_beam
    top_p: float = SAMPLE_TOP_P
    temperature: float = SAMPLE_TEMPERATURE
    pair_selection: str = "edit"  # edit | embedding
    # greedy: the student's greedy output (what evaluation sees) vs the in-band sample most different from it, else
    # the most different in-band pair of samples; none: the paper's rule, the most different in-band pair of samples
    anchor: str = "greedy"
    length_lo: float = 0.8
    length_hi: float = 1.2
    max_new_tokens: int = MAX_NEW_TOKENS
    batch_size: int = BATCH_SIZE
    seed: int = SEED
    min_confidence: float = 0.0  # keep judged pairs whose debiased confidence |2 P - 1| is at least this
    both_orders_agree: bool = False  # keep only pairs both presentation orders decide the same way
    # guards where the critic is blind (metrics/guards.py); None / False: off, the paper's loop
    meaning_floor: float | None = None  # candidates less similar in meaning to the input never enter a pair
    meaning_margin: float | None = None  # drop a pair whose chosen side is less faithful than the rejected by more
    length_control: bool = False  # choose the sides by the critic's verdicts with its length term removed


def sample_producer(checkpoint_id: str, cfg: FeedbackConfig) -> str:
    """The `producer` of a round's samples: the checkpoint, tagged with the sampling settings off their defaults, so
    samples drawn with other settings are never reused for these."""
    changed = {k: getattr(cfg, k) for k, v in SAMPLING_AT_FIRST.items() if getattr(cfg, k) != v}
    return checkpoint_id if not changed else f"{checkpoint_id}~{stable_id('sampling', changed)[:8]}"


def _stored(store: Store, producer: str) -> dict[str, list[dict]]:
    have: dict[str, list[dict]] = {}
    for r in store.query("SELECT input_id, candidate_id, text, rank FROM candidates WHERE role = 'sample' AND producer = ? "
                         "ORDER BY input_id, rank", [producer]):
        have.setdefault(r["input_id"], []).append(r)
    return have


def _row(item: dict, producer: str, rank: int, text: str, run_id: str) -> dict:
    return {"candidate_id": candidate_id(item["input_id"], "sample", producer, rank), "input_id": item["input_id"],
            "role": "sample", "producer": producer, "rank": rank, "text": text, "lm_call_id": None, "run_id": run_id,
            "created_at": datetime.now()}


def sample_round(store: Store, task: Task, student_path: str, producer: str, inputs: list[dict], cfg: FeedbackConfig,
                 *, run_id: str) -> dict[str, list[dict]]:
    """k samples per input from the student at `student_path` (and, with the greedy anchor, its greedy output as rank
    -1), stored as candidates (role 'sample'); reuses stored ones. Returns input_id -> candidates, by rank."""
    have = _stored(store, producer)
    todo = [i for i in inputs if not any(r["rank"] >= 0 for r in have.get(i["input_id"], []))]
    greedy_todo = [i for i in inputs if cfg.anchor == "greedy"
                   and not any(r["rank"] == GREEDY_RANK for r in have.get(i["input_id"], []))]
    if not todo and not greedy_todo:
        return have
    model, tokenizer = load_student(student_path)
    with stage_progress("sample", total=len(todo) + len(greedy_todo), unit="inputs") as advance:
        for jobs, method, k in ((greedy_todo, "greedy", 1), (todo, cfg.method, cfg.k)):
            for start in range(0, len(jobs), cfg.batch_size):
                chunk = jobs[start:start + cfg.batch_size]
                prompts = [training_prompt(task, i["text"]) for i in chunk]
                outs = sample_candidates(model, tokenizer, prompts, k=k,
                                         method=method, top_p=cfg.top_p, temperature=cfg.temperature,
                                         batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                                         seed=cfg.seed + start)
                outs = [[typed_sample(model, tokenizer, prompt, text) for text in texts]
                        for prompt, texts in zip(prompts, outs)]
                ranks = [GREEDY_RANK] if method == "greedy" else range(k)
                rows = [_row(item, producer, rank, stored, run_id)  # several output fields: parsed, as JSON
                        for item, texts in zip(chunk, outs) for rank, text in zip(ranks, texts)
                        if (stored := parse_completion(task, text)) is not None]
                store.insert("candidates", rows)
                advance(len(chunk))
    return _stored(store, producer)


def pick_pair(cands: list[dict], text: str | None, cfg: FeedbackConfig, embed=None
              ) -> tuple[tuple[dict, dict] | None, str]:
    """The pair to judge among one input's candidates, and why: candidates outside the length band (relative to the
    input `text`; no band when None, for a task whose output is not a rewrite of one input text) are dropped
    first, then the pair is chosen among those that pass ('anchored' on the greedy output, or the most 'different'
    pair); 'length' / 'identical' when fewer than two distinct candidates pass / differ."""
    texts = [c["text"] for c in cands]
    in_band = [i for i, t in enumerate(texts) if text is None or within_length(t, text, cfg.length_lo, cfg.length_hi)]
    greedy = next((i for i, c in enumerate(cands) if c["rank"] == GREEDY_RANK), None)
    if cfg.anchor == "greedy" and greedy is not None:
        pair = select_pair(texts, method=cfg.pair_selection, embed=embed, allowed=in_band, anchor=greedy)
        if pair is not None:
            return (cands[pair[0]], cands[pair[1]]), "anchored"
    samples = [i for i in in_band if cands[i]["rank"] != GREEDY_RANK]
    pair = select_pair(texts, method=cfg.pair_selection, embed=embed, allowed=samples)
    if pair is not None:
        return (cands[pair[0]], cands[pair[1]]), "different"
    return None, "identical" if len({t.strip() for t in texts if t.strip()}) < 2 else "length"


def pair_key(a_id: str, b_id: str) -> str:
    """A judged pair as the default dataset queries name it: the two candidate ids, smaller first."""
    return "|".join(sorted((a_id, b_id)))


def judge_round(store: Store, critic: Critic, critic_lm: dspy.LM, critic_name: str, inputs: list[dict],
                samples: dict[str, list[dict]], cfg: FeedbackConfig, *, run_id: str, threads: int = 1) -> dict:
    """Select one pair per input (length band and meaning floor first), judge both orders, then apply the guards:
    length control (the sides chosen by the verdicts without the critic's length term) and the meaning margin.
    Returns counts, the judged `pairs` that passed (`pair_key`s: this round's data, whatever else the store holds for
    the same producer) and the verdicts' `method` the data is to be read with."""
    embed = None  # texts -> normalised embeddings, for the embedding-distance pair rule
    if cfg.pair_selection == "embedding":
        from metrics.similarity import embed
    task = critic.task
    meaning = _meaning(store, task, inputs, samples) if (cfg.meaning_floor is not None
                                                         or cfg.meaning_margin is not None) else {}
    items, why = [], {"anchored": 0, "different": 0, "length": 0, "identical": 0, "meaning": 0}
    one_to_one = len(task.inputs) == len(task.outputs) == 1  # several fields: no one text an output should match
    for item in inputs:                                      # in length
        band = item["text"] if one_to_one else None
        cands = samples.get(item["input_id"], [])
        if cfg.meaning_floor is not None:
            faithful = [c for c in cands if meaning[c["candidate_id"]] >= cfg.meaning_floor]
            if len(faithful) < 2 <= len(cands):
                why["meaning"] += 1
                continue
            cands = faithful
        pair, reason = pick_pair(cands, band, cfg, embed)
        why[reason] += 1
        if pair is not None:
            a, b = pair
            items.append({"input_id": item["input_id"], "text": item["text"], "a_id": a["candidate_id"],
                          "a": a["text"], "b_id": b["candidate_id"], "b": b["text"]})
    verdicts = judge_verdicts(store, critic, critic_lm, items, judge=critic_name, run_id=run_id, purpose="feedback",
                              threads=threads)
    p = {pair_key(v.a_id, v.b_id): v.p_a for v in verdicts}
    method, slope = critic.method, None
    if cfg.length_control:
        length_fit, lc = record_length_control(
            store, [{"input_id": it["input_id"], "a_id": it["a_id"], "b_id": it["b_id"], "a": task.output_text(it["a"]),
                     "b": task.output_text(it["b"]), "p_a": v.p_a, "orders_agree": v.orders_agree,
                     "n_orders": sum(x is not None for o in v.orders for x in o)} for it, v in zip(items, verdicts)],
            judge=critic_name, method=method, purpose="feedback", run_id=run_id)
        p = {pair_key(*key.split("|")): value for key, value in lc.items()}
        method, slope = method + LC, length_fit.slope
    kept, drifted = [], 0
    for it in items:
        key, pa = pair_key(it["a_id"], it["b_id"]), p.get(pair_key(it["a_id"], it["b_id"]))
        if cfg.meaning_margin is not None and pa is not None:
            chosen, rejected = (it["a_id"], it["b_id"]) if pa >= 0.5 else (it["b_id"], it["a_id"])
            if meaning[chosen] < meaning[rejected] - cfg.meaning_margin:
                drifted += 1
                continue
        kept.append(key)
    return {"pairs": kept, "method": method, "length_slope": slope,
            "judged": sum(v.p_a is not None for v in verdicts), "anchored": why["anchored"],
            "dropped_length": why["length"], "dropped_identical": why["identical"],
            "dropped_meaning": why["meaning"], "dropped_margin": drifted}


def _meaning(store: Store, task: Task, inputs: list[dict], samples: dict[str, list[dict]]) -> dict[str, float]:
    """Each of the round's candidates' meaning similarity to its input (stored, computed once)."""
    texts = {i["input_id"]: task.input_text(i["text"]) for i in inputs}
    return candidate_meaning(store, [{"candidate_id": c["candidate_id"], "input": texts[iid],
                                      "text": task.output_text(c["text"])}
                                     for iid, cands in samples.items() if iid in texts for c in cands])
