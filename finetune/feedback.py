"""The critic's feedback, as in the paper: sample k candidates from the current student, keep the most different pair,
drop pairs outside the length band, let the critic judge both orders, and turn the verdicts into training data.

    sample (k = 6, batched) -> select pair (largest n-gram edit distance, or embedding distance)
    -> length filter ([0.8, 1.2] x input words) -> critic, both orders -> judgments (purpose 'feedback')

The training data is then read back from the store by SQL (views `feedback_pairs`, `sd_examples`, `brio_groups`),
so a user can replace any of it with a query of their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import dspy

from finetune.evaluate import judge_pairs
from finetune.pairs import select_pair, within_length
from finetune.sample import sample_candidates
from finetune.student import load_student
from programs.critic import Critic
from programs.progress import stage_progress
from programs.student import training_prompt
from programs.tasks import Task
from programs.teach import candidate_id
from store import Store


@dataclass
class FeedbackConfig:
    k: int = 6
    method: str = "nucleus"  # nucleus | diverse_beam
    top_p: float = 0.9
    temperature: float = 1.0
    pair_selection: str = "edit"  # edit | embedding
    length_lo: float = 0.8
    length_hi: float = 1.2
    max_new_tokens: int = 48
    batch_size: int = 8
    seed: int = 0


def sample_round(store: Store, task: Task, student_path: str, producer: str, inputs: list[dict], cfg: FeedbackConfig,
                 *, run_id: str) -> dict[str, list[dict]]:
    """k samples per input from the student at `student_path`, stored as candidates (role 'sample'); reuses stored ones."""
    have: dict[str, list[dict]] = {}
    for r in store.query("SELECT input_id, candidate_id, text, rank FROM candidates WHERE role = 'sample' AND producer = ? "
                         "ORDER BY input_id, rank", [producer]):
        have.setdefault(r["input_id"], []).append(r)
    todo = [i for i in inputs if i["input_id"] not in have]
    if todo:
        model, tokenizer = load_student(student_path)
        with stage_progress("sample", total=len(inputs), done=len(inputs) - len(todo)) as advance:
            for start in range(0, len(todo), cfg.batch_size):
                chunk = todo[start:start + cfg.batch_size]
                outs = sample_candidates(model, tokenizer, [training_prompt(task, i["text"]) for i in chunk], k=cfg.k,
                                         method=cfg.method, top_p=cfg.top_p, temperature=cfg.temperature,
                                         batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens,
                                         seed=cfg.seed + start)
                rows = []
                for item, texts in zip(chunk, outs):
                    for rank, text in enumerate(texts):
                        rows.append({"candidate_id": candidate_id(item["input_id"], "sample", producer, rank),
                                     "input_id": item["input_id"], "role": "sample", "producer": producer,
                                     "rank": rank, "text": text, "lm_call_id": None, "run_id": run_id,
                                     "created_at": datetime.now()})
                    have[item["input_id"]] = [r for r in rows if r["input_id"] == item["input_id"]]
                store.insert("candidates", rows)
                advance(len(chunk))
    return have


def judge_round(store: Store, critic: Critic, critic_lm: dspy.LM, critic_name: str, inputs: list[dict],
                samples: dict[str, list[dict]], cfg: FeedbackConfig, *, run_id: str, threads: int = 1) -> dict:
    """Select one pair per input, filter by length, judge both orders. Returns counts."""
    embed = None  # texts -> normalised embeddings, for the embedding-distance pair rule
    if cfg.pair_selection == "embedding":
        from metrics.similarity import embed
    items, too_long, same = [], 0, 0
    for item in inputs:
        cands = samples.get(item["input_id"], [])
        texts = [c["text"] for c in cands]
        pair = select_pair(texts, method=cfg.pair_selection, embed=embed)
        if pair is None:
            same += 1
            continue
        a, b = cands[pair[0]], cands[pair[1]]
        if not (within_length(a["text"], item["text"], cfg.length_lo, cfg.length_hi)
                and within_length(b["text"], item["text"], cfg.length_lo, cfg.length_hi)):
            too_long += 1
            continue
        items.append({"input_id": item["input_id"], "text": item["text"], "a_id": a["candidate_id"], "a": a["text"],
                      "b_id": b["candidate_id"], "b": b["text"]})
    p = judge_pairs(store, critic, critic_lm, items, judge=critic_name, run_id=run_id, purpose="feedback",
                    threads=threads)
    return {"pairs": len(items), "judged": sum(v is not None for v in p.values()), "dropped_length": too_long,
            "dropped_identical": same}
