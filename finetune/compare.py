"""Students compared with each other: the critic-independent checks of each one's outputs, and what feedback bought
over the warm start on the same inputs (paired differences, the direct comparison). The pipeline's evaluate stage
reads them; they know no stage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from programs.tasks import Task


def add_checks(evaluations: list[dict], task: Task) -> None:
    """Critic-independent checks per student and split (`metrics.checks`), against the warm start's outputs on the
    same inputs; added to each evaluation as `checks`."""
    from metrics.checks import student_checks
    from metrics.similarity import meaning_preservation

    first = evaluations[0]["label"] if evaluations else None
    done: dict[tuple[str, str], dict] = {}
    for e in evaluations:
        key = (e["label"], e["split"])
        if key not in done:
            warm = next((w for w in evaluations if w["label"] == first and w["split"] == e["split"]), None)
            before = {it["input_id"]: it["a"] for it in (warm["items"] if warm else [])}
            items = [it for it in e["items"] if it["input_id"] in before] if e["label"] != first else e["items"]
            done[key] = student_checks([task.input_text(it["text"]) for it in items],
                                       [task.output_text(it["a"]) for it in items],
                                       before=None if e["label"] == first else [task.output_text(before[it["input_id"]])
                                                                               for it in items],
                                       similarity=meaning_preservation)
        e["checks"] = done[key]


def paired_lift(store, models: list, evaluations: list[dict], *, critic, critic_lm, critic_name: str, inputs: list[dict],
          split: str, run_id: str, threads: int) -> list[dict]:
    """What feedback bought, per trained student against the warm start, on the evaluation split by the critic: the paired
    difference of their P(student >= teacher) on the same inputs (bootstrap over inputs), and the direct comparison
    (the critic judging one student's output against the other's, both orders)."""
    from finetune.evaluate import compare_producers
    from metrics.winrate import paired_difference

    per_item = {e["label"]: per_input(e, e["p_student"])
                for e in evaluations if e["split"] == split and e["judge"] == critic_name}
    (base_label, base), rows = models[0], []
    for label, model in models[1:]:
        direct = compare_producers(store, critic=critic, critic_lm=critic_lm, critic_name=critic_name, inputs=inputs,
                                   producer=model.checkpoint_id, reference=base.checkpoint_id, split=split,
                                   run_id=run_id, threads=threads, role="student", purpose="student-eval")
        lc = {e["label"]: per_input(e, e["p_lc"])
              for e in evaluations if e["split"] == split and e["judge"] == critic_name and "p_lc" in e}
        rows.append({"label": label, "baseline": base_label,
                     "paired_prob_lc": paired_difference(lc.get(label, {}), lc.get(base_label, {})) if lc else None,
                     "paired_prob": paired_difference(per_item.get(label, {}), per_item.get(base_label, {})),
                     "paired_decision": paired_difference(per_item.get(label, {}), per_item.get(base_label, {}),
                                                          decisions=True),
                     "direct_prob": direct["wtr_prob"], "direct_decision": direct["wtr_decision"],
                     "raters": rater_lift(store, model.checkpoint_id, base.checkpoint_id, inputs)})
    return rows


def per_input(evaluation: dict, ps: list[float | None]) -> dict[str, float | None]:
    """input_id -> P(student >= teacher) of an evaluation's judged items (`ps`, in their order), and 0 for each input
    its student failed on: a failure loses, in a paired difference as in a win rate."""
    return {**{k: 0.0 for k in evaluation.get("failed") or {}},
            **{it["input_id"]: p for it, p in zip(evaluation["items"], ps)}}


_RATED = """
    SELECT v.judge, x.input_id, CASE WHEN v.a_id = x.candidate_id THEN v.p_a ELSE 1 - v.p_a END AS p
    FROM candidates x
    JOIN candidates y ON y.input_id = x.input_id AND y.role = 'student' AND y.producer = ? AND y.rank = 0
    JOIN verdicts v ON (v.a_id = x.candidate_id AND v.b_id = y.candidate_id)
                    OR (v.a_id = y.candidate_id AND v.b_id = x.candidate_id)
    WHERE x.role = 'student' AND x.producer = ? AND x.rank = 0 AND v.judge LIKE 'rater:%' AND v.p_a IS NOT NULL
      AND list_contains(?, x.input_id)"""


def rater_lift(store, x: str, y: str, inputs: list[dict]) -> list[dict]:
    """The independent check of a lift: every rater (`rater:NAME` verdicts, `finetune/rate.py`) that judged student x's
    outputs against student y's on these inputs. Per rater: P(x >= y) on the pairs that differ (`decided`: the share
    of the rated pairs where x was preferred, ties as half), and over all inputs with identical outputs as ties."""
    from metrics.winrate import bootstrap

    ids = [i["input_id"] for i in inputs]
    same = store.scalar("SELECT count(*) FROM candidates x JOIN candidates y ON y.input_id = x.input_id "
                        "AND y.role = 'student' AND y.producer = ? AND y.rank = 0 WHERE x.role = 'student' "
                        "AND x.producer = ? AND x.rank = 0 AND trim(x.text) = trim(y.text) "
                        "AND list_contains(?, x.input_id)", [y, x, ids]) or 0
    by_judge: dict[str, list[float]] = {}
    for r in store.query(_RATED, [y, x, ids]):
        by_judge.setdefault(r["judge"], []).append(r["p"])
    return [{"judge": judge, "rated": bootstrap(ps), "with_ties": bootstrap(ps + [0.5] * same), "identical": same}
            for judge, ps in sorted(by_judge.items())]


def independent_check(lift: list[dict]) -> str:
    """One line on where the independent check of the lift stands: each rater's verdict, or how to get one."""
    said = [f"{r['judge']} prefers {d['label']} to {d['baseline']} on {r['rated']} of the rated pairs "
            f"({r['with_ties']} with the {r['identical']} identical outputs as ties)"
            for d in lift for r in d.get("raters", [])]
    if said:
        return "; ".join(said)
    return ("none in the store yet: `python -m finetune.rate export` writes blind pairs of two students for any rater, "
            "`python -m finetune.rate import` reads the ratings back (docs/rating.md)")


def mean(values: list[float]) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def mean_meaning(items: list[dict], task: Task) -> float:
    """Mean sentence-embedding similarity of input and student output (the bundled MiniLM)."""
    if not items:
        return float("nan")
    from metrics.similarity import meaning_preservation

    return mean(meaning_preservation([task.input_text(it["text"]) for it in items],
                                      [task.output_text(it["a"]) for it in items]))


def length_controlled(store, evaluations: list[dict], task: Task, *, critic_name: str, split: str, method: str,
                      run_id: str):
    """The critic's preference for the longer output, fitted on every student's verdicts against the teacher on this
    split (one intercept per student: the slope is what length buys within a student) and removed from each item:
    each of those evaluations gains `p_lc`, `wtr_prob_lc` and `wtr_decision_lc`. Returns the fit (None: no verdicts).
    No model is asked: the fit reads the verdicts the evaluation already has."""
    from metrics.guards import record_length_control
    from metrics.winrate import win_tie_rate

    chosen = [e for e in evaluations if e["judge"] == critic_name and e["split"] == split]
    pairs, groups = [], []
    for e in chosen:
        for it, p in zip(e["items"], e["p_student"]):
            pairs.append({"input_id": it["input_id"], "a_id": it["a_id"], "b_id": it["b_id"],
                          "a": task.output_text(it["a"]), "b": task.output_text(it["b"]), "p_a": p})
            groups.append(e["label"])
    if not pairs:
        return None
    length_fit, lc = record_length_control(store, pairs, judge=critic_name, method=method, purpose="eval",
                                           run_id=run_id, groups=groups)
    for e in chosen:
        e["p_lc"] = [lc.get(f"{it['a_id']}|{it['b_id']}") for it in e["items"]]
        e["wtr_prob_lc"], e["wtr_decision_lc"] = win_tie_rate(list(per_input(e, e["p_lc"]).values()))
    return length_fit


def step_agreement(store, task: Task, producer: str, teacher: str, inputs: list[dict]) -> list[dict]:
    """For a program of several predictors, each predictor's student-vs-teacher agreement on these inputs: the
    student's run (its stored trace) against the teacher's first run of the same input, predictor by predictor.
    `exact`: the share of inputs where the predictor wrote the teacher's outputs exactly (a router's label);
    `similarity`: the mean sentence-embedding similarity of its outputs to the teacher's (text steps)."""
    import json

    from metrics.similarity import meaning_preservation
    from metrics.winrate import bootstrap

    if not task.steps:
        return []
    ids = [i["input_id"] for i in inputs]
    traces = {(r["role"], r["input_id"]): json.loads(r["trace"]) for r in store.query(
        "SELECT role, input_id, trace FROM candidates WHERE rank = 0 AND trace IS NOT NULL AND list_contains(?, "
        "input_id) AND ((role = 'student' AND producer = ?) OR (role = 'teacher' AND producer = ?))",
        [ids, producer, teacher])}
    rows = []
    for name, step in task.steps:
        pairs = []
        for input_id in ids:
            s, t = (next((c["outputs"] for c in traces.get((role, input_id), []) if c["predictor"] == name), None)
                    for role in ("student", "teacher"))
            if s is not None and t is not None:
                pairs.append((s, t))
        if not pairs:
            continue
        same = [float(all(str(s.get(f)).strip() == str(t.get(f)).strip() for f in step.outputs)) for s, t in pairs]
        text = [(step.output_text(step.encode_outputs(s)), step.output_text(step.encode_outputs(t))) for s, t in pairs]
        rows.append({"predictor": name, "n": len(pairs), "exact": bootstrap(same),
                     "similarity": sum(meaning_preservation([t for _, t in text], [s for s, _ in text])) / len(text),
                     "typed": [f for f in step.outputs if f in dict(step.field_types)]})
    return rows
