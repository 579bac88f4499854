"""Evaluate a student against the teacher: the critic judges student vs the teacher's reference in both orders.

Student outputs come from the student *as a DSPy LM* (`local/<checkpoint>`), so every output is an LM call in the
store, cached like any other. Judgments are stored per order; the win-tie rate (both readings) with its bootstrap
interval goes into `evaluations`.
"""

from __future__ import annotations

from datetime import datetime

import dspy

from metrics.winrate import Estimate, win_tie_rate
from programs.critic import Critic
from programs.parallel import imap
from programs.progress import stage_progress
from programs.student import Student
from programs.teach import candidate_id
from store import Store, stable_id, to_json
from store.callback import last_lm_call_id


def judgment_id(judge: str, first_id: str, second_id: str) -> str:
    return stable_id("judgment", judge, first_id, second_id)


def student_outputs(store: Store, student: Student, student_lm: dspy.LM, inputs: list[dict], *, producer: str,
                    run_id: str, threads: int = 1) -> dict[str, dict]:
    """input_id -> {candidate_id, text} of the student's output, generating only what the store lacks."""
    have = {r["input_id"]: r for r in store.query(
        "SELECT input_id, candidate_id, text FROM candidates WHERE role = 'student' AND producer = ?", [producer])}
    todo = [i for i in inputs if i["input_id"] not in have]
    with stage_progress("generate", total=len(inputs), done=len(inputs) - len(todo)) as advance, \
            dspy.context(lm=student_lm):
        def one(item: dict) -> tuple[str, str | None]:
            try:
                text = (student(text=item["text"]).paraphrase or "").strip()
            except Exception:  # noqa: BLE001 - recorded as a failed call; the item is left out of the evaluation
                text = ""
            return text, last_lm_call_id()

        for item, (text, call_id) in imap(one, todo, threads):
            if text:
                cid = candidate_id(item["input_id"], "student", producer, 0)
                row = {"candidate_id": cid, "input_id": item["input_id"], "role": "student", "producer": producer,
                       "rank": 0, "text": text, "lm_call_id": call_id, "run_id": run_id,
                       "created_at": datetime.now()}
                store.add("candidates", row)
                have[item["input_id"]] = row
            advance(1)
    store.flush()
    return have


def judge_pairs(store: Store, critic: Critic, critic_lm: dspy.LM, items: list[dict], *, judge: str, run_id: str,
                purpose: str, threads: int = 1) -> dict[str, float | None]:
    """items: {input_id, text, a_id, a, b_id, b}. Returns input_id -> debiased P(a >= b); judges only what is missing."""
    wanted = [(it, first, second) for it in items
              for first, second in ((("a_id", "a"), ("b_id", "b")), (("b_id", "b"), ("a_id", "a")))]
    ids = [judgment_id(judge, it[f[0]], it[s[0]]) for it, f, s in wanted]
    have = {r["judgment_id"]: r for r in store.query(
        "SELECT judgment_id, p_first FROM judgments WHERE list_contains(?, judgment_id)", [ids])}
    p_first: dict[str, float | None] = {jid: r["p_first"] for jid, r in have.items()}
    todo = [(w, jid) for w, jid in zip(wanted, ids) if jid not in have]
    with stage_progress("judge", total=len(wanted), done=len(wanted) - len(todo)) as advance, dspy.context(lm=critic_lm):
        def one(job):
            (it, f, s), _ = job
            return critic.judge_order(it["text"], it[f[1]], it[s[1]])

        for ((it, f, s), jid), j in imap(one, todo, threads):
            store.add("judgments", {
                "judgment_id": jid, "input_id": it["input_id"], "judge": judge, "first_id": it[f[0]],
                "second_id": it[s[0]], "choice": j.choice, "p_first": j.p_first, "source": j.source,
                "reason": j.reason, "purpose": purpose, "lm_call_id": j.lm_call_id, "run_id": run_id,
                "created_at": datetime.now(),
            })
            p_first[jid] = j.p_first
            advance(1, j.source)
    store.flush()
    out = {}
    for it in items:
        ab = p_first.get(judgment_id(judge, it["a_id"], it["b_id"]))
        ba = p_first.get(judgment_id(judge, it["b_id"], it["a_id"]))
        ps = [p for p in (ab, None if ba is None else 1 - ba) if p is not None]
        out[it["input_id"]] = sum(ps) / len(ps) if ps else None
    return out


def evaluate(store: Store, *, student: Student, student_lm: dspy.LM, student_name: str, checkpoint_id: str | None,
             critic: Critic, critic_lm: dspy.LM, critic_name: str, inputs: list[dict], teacher_name: str, split: str,
             run_id: str, threads: int = 1) -> dict:
    """WTR of the student vs the teacher's first candidate on `inputs`; stored in `evaluations` and returned."""
    refs = {r["input_id"]: r for r in store.query(
        "SELECT input_id, candidate_id, text FROM candidates WHERE role = 'teacher' AND producer = ? AND rank = 0",
        [teacher_name])}
    outputs = student_outputs(store, student, student_lm, inputs, producer=student_name, run_id=run_id)  # one local model
    items = [{"input_id": i["input_id"], "text": i["text"], "a_id": outputs[i["input_id"]]["candidate_id"],
              "a": outputs[i["input_id"]]["text"], "b_id": refs[i["input_id"]]["candidate_id"],
              "b": refs[i["input_id"]]["text"]}
             for i in inputs if i["input_id"] in outputs and i["input_id"] in refs]
    p = judge_pairs(store, critic, critic_lm, items, judge=critic_name, run_id=run_id, purpose="eval", threads=threads)
    prob, decision = win_tie_rate([p[it["input_id"]] for it in items])
    ratios = [len(it["a"].split()) / max(1, len(it["text"].split())) for it in items]
    details = {"items": [{"input_id": it["input_id"], "p_student": p[it["input_id"]],
                          "length_ratio": r} for it, r in zip(items, ratios)],
               "skipped": len(inputs) - len(items)}
    row = {
        "evaluation_id": stable_id("evaluation", student_name, teacher_name, critic_name, split,
                                   sorted(it["input_id"] for it in items)),
        "run_id": run_id, "checkpoint_id": checkpoint_id, "student": student_name, "reference": teacher_name,
        "judge": critic_name, "split": split, "n": prob.n,
        "wtr_prob": prob.value, "wtr_prob_lo": prob.lo, "wtr_prob_hi": prob.hi,
        "wtr_decision": decision.value, "wtr_decision_lo": decision.lo, "wtr_decision_hi": decision.hi,
        "details": to_json(details), "created_at": datetime.now(),
    }
    store.insert("evaluations", [row], replace=True)
    return {"wtr_prob": prob, "wtr_decision": decision, "length_ratios": ratios, "items": items,
            "p_student": [p[it["input_id"]] for it in items], "evaluation_id": row["evaluation_id"]}


__all__ = ["Estimate", "evaluate", "judge_pairs", "student_outputs"]
