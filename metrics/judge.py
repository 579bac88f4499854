"""The one judging engine: pairs judged in both orders (every rubric), stored per order, combined into a verdict.

Every stage that asks the critic goes through `judge_pairs`: the pipeline's evaluation, the feedback loop, BRIO's
rankings and the critic audit. Each LM call is a `judgments` row whose `method` names its prompt (reason-first,
choice-first, .../rubricN, pointwise), so a rerun asks only what the store lacks for that method; each pair's
combined P(a >= b) is a `verdicts` row whose `method` names the critic settings (`CriticSettings.method`), which
the store's feedback views read instead of restating the rule. Jobs run input by input, both orders back to back,
so llama.cpp reuses the evaluated prompt prefix (instruction and input) from one call to the next; prompts of one kind
run together, so even a new input shares the instruction with the call before it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import dspy

from programs.critic import POINTWISE, Critic, combine, order_method
from programs.parallel import imap
from programs.progress import stage_progress
from store import Store, stable_id


def judgment_id(judge: str, first_id: str, second_id: str | None, method: str = "reason-first",
                prompt: str | None = None) -> str:
    """Stable id of one judgment: who judged what, how, under which instruction (`prompt`, so that a rubric edited
    is asked again). The paper's prompt keeps the ids it had before methods existed."""
    if method == "reason-first":
        return stable_id("judgment", judge, first_id, second_id)
    return stable_id("judgment", judge, first_id, second_id, method, prompt)


def verdict_id(judge: str, method: str, a_id: str, b_id: str) -> str:
    return stable_id("verdict", judge, method, a_id, b_id)


@dataclass
class Verdict:
    input_id: str
    a_id: str
    b_id: str
    p_a: float | None  # P(a >= b), combined over orders and rubrics; None when every order failed
    orders_agree: bool | None  # both orders favoured the same candidate; None with a missing order
    orders: list[tuple[float | None, float | None]]  # per rubric: (P_first with a first, P_first with b first)
    choices: list[tuple[int | None, int | None]]  # per rubric: the parsed choices of the two orders
    scores: tuple[float | None, float | None] | None  # pointwise expected scores of a and b


def _order_id(critic: Critic, judge: str, first_id: str, second_id: str, rubric: int) -> str:
    return judgment_id(judge, first_id, second_id, order_method(critic.settings.mode, rubric),
                       critic.task.rubrics[rubric])


def _point_id(critic: Critic, judge: str, candidate_id: str) -> str:
    return judgment_id(judge, candidate_id, None, POINTWISE, critic.scorer.signature.instructions)


def _jobs(critic: Critic, items: list[dict], judge: str) -> list[tuple]:
    """(judgment id, kind, item, first key, second key, rubric) in the order that shares prompt prefixes: each
    rubric's pairwise prompts input by input (the two orders back to back), then the pointwise scores, so that a call
    differs from the one before it as late in the prompt as possible."""
    jobs, seen = [], set()

    def add(jid: str, *job) -> None:
        if jid not in seen:
            seen.add(jid)
            jobs.append((jid, *job))

    for r in range(critic.settings.rubrics):
        for it in items:
            for f, s in (("a", "b"), ("b", "a")):
                add(_order_id(critic, judge, it[f + "_id"], it[s + "_id"], r), "order", it, f, s, r)
    if critic.settings.pointwise_weight:
        for it in items:
            for c in ("a", "b"):
                add(_point_id(critic, judge, it[c + "_id"]), "point", it, c, None, 0)
    return jobs


def judge_verdicts(store: Store, critic: Critic, critic_lm: dspy.LM, items: list[dict], *, judge: str, run_id: str,
                   purpose: str, threads: int = 1) -> list[Verdict]:
    """items: {input_id, text, a_id, a, b_id, b}. One verdict per item, asking the critic only what is missing."""
    jobs = _jobs(critic, items, judge)
    stored = {r["judgment_id"]: r for r in store.query(
        "SELECT judgment_id, choice, p_first, score FROM judgments WHERE list_contains(?, judgment_id)",
        [[j[0] for j in jobs]])}
    todo = [j for j in jobs if j[0] not in stored]
    with stage_progress("judge", total=len(jobs), done=len(jobs) - len(todo), unit="judgments") as advance, \
            dspy.context(lm=critic_lm):
        def one(job):
            _, kind, it, f, s, r = job
            if kind == "point":
                return critic.score_one(it["text"], it[f])
            return critic.judge_order(it["text"], it[f], it[s], r)

        for job, j in imap(one, todo, threads):
            jid, kind, it, f, s, r = job
            row = {"judgment_id": jid, "input_id": it["input_id"], "judge": judge, "first_id": it[f + "_id"],
                   "second_id": it[s + "_id"] if s else None, "choice": j.choice, "source": j.source,
                   "purpose": purpose, "lm_call_id": j.lm_call_id, "run_id": run_id, "created_at": datetime.now()}
            if kind == "point":
                row |= {"p_first": None, "reason": None, "score": j.score, "method": POINTWISE}
            else:
                row |= {"p_first": j.p_first, "reason": j.reason, "score": None, "method": j.method}
            store.add("judgments", row)
            stored[jid] = row
            advance(1, j.source)
    store.flush()

    verdicts, rows, method = [], [], critic.method
    for it in items:
        orders, choices = [], []
        for r in range(critic.settings.rubrics):
            ab = stored.get(_order_id(critic, judge, it["a_id"], it["b_id"], r)) or {}
            ba = stored.get(_order_id(critic, judge, it["b_id"], it["a_id"], r)) or {}
            orders.append((ab.get("p_first"), ba.get("p_first")))
            choices.append((ab.get("choice"), ba.get("choice")))
        scores = None
        if critic.settings.pointwise_weight:
            scores = tuple((stored.get(_point_id(critic, judge, it[c + "_id"])) or {}).get("score") for c in ("a", "b"))
        p, agree = combine(orders, critic.settings, scores)
        verdicts.append(Verdict(it["input_id"], it["a_id"], it["b_id"], p, agree, orders, choices, scores))
        rows.append({"verdict_id": verdict_id(judge, method, it["a_id"], it["b_id"]), "input_id": it["input_id"],
                     "judge": judge, "method": method, "a_id": it["a_id"], "b_id": it["b_id"], "p_a": p,
                     "orders_agree": agree,
                     "n_orders": sum(p is not None for o in orders for p in o), "purpose": purpose, "run_id": run_id,
                     "created_at": datetime.now()})
    if rows:
        store.insert("verdicts", rows, replace=True)
    return verdicts


def judge_pairs(store: Store, critic: Critic, critic_lm: dspy.LM, items: list[dict], *, judge: str, run_id: str,
                purpose: str, threads: int = 1) -> dict[str, float | None]:
    """items: {input_id, text, a_id, a, b_id, b}. Returns input_id -> P(a >= b); judges only what is missing."""
    verdicts = judge_verdicts(store, critic, critic_lm, items, judge=judge, run_id=run_id, purpose=purpose,
                              threads=threads)
    return {v.input_id: v.p_a for v in verdicts}


__all__ = ["Verdict", "judge_pairs", "judge_verdicts", "judgment_id", "verdict_id"]
