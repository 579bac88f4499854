"""What feedback bought and the checks beside it: each trained student's paired difference over the warm start by the
critic, and the critic-independent checks (`metrics.checks`) of every student. The pipeline's evaluate stage calls
these; they read evaluations and the store and ask the critic only for the direct comparisons."""

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

    per_item = {e["label"]: {it["input_id"]: p for it, p in zip(e["items"], e["p_student"])}
                for e in evaluations if e["split"] == split and e["judge"] == critic_name}
    (base_label, base), rows = models[0], []
    for label, model in models[1:]:
        direct = compare_producers(store, critic=critic, critic_lm=critic_lm, critic_name=critic_name, inputs=inputs,
                                   producer=model.checkpoint_id, reference=base.checkpoint_id, split=split,
                                   run_id=run_id, threads=threads, role="student", purpose="student-eval")
        rows.append({"label": label, "baseline": base_label,
                     "paired_prob": paired_difference(per_item.get(label, {}), per_item.get(base_label, {})),
                     "paired_decision": paired_difference(per_item.get(label, {}), per_item.get(base_label, {}),
                                                          decisions=True),
                     "direct_prob": direct["wtr_prob"], "direct_decision": direct["wtr_decision"]})
    return rows


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


__all__ = ["add_checks", "mean", "mean_meaning", "paired_lift"]
