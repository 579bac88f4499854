"""What a run's evaluation found (`Results`) and the lines that say it in the terminal: what feedback bought first,
then every student against the teacher, step by step, the optimized teacher, and where the student and report are."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune.compare import independent_check
from finetune.evaluate import failure_line
from programs.progress import console


@dataclass
class Results:
    """What the evaluate stage found."""

    evaluations: list[dict]  # one per student, split and judge
    lift: list[dict]  # what feedback bought, per trained student against the warm start
    best: str | None  # the student `<out>/student` points at (None: no evaluation judged any student's output)
    teacher_quality: dict | None  # the optimized teacher against the one as written
    length_fit: Any = None  # the critic's length preference fitted on the evaluation's verdicts (metrics.length_control)
    steps: list[dict] = field(default_factory=list)  # a program of several predictors: each one's agreement per student


def print_results(results: Results, *, eval_split: str, critic: str, optimizer: str | None, run_id: str,
                  out_dir: Path, report: Path) -> None:
    """The lead (what feedback bought), every evaluation, the optimized teacher, and where the student and the
    report are."""
    for d in results.lift:
        lc = f" · length-controlled {d['paired_prob_lc'].signed()}" if d.get("paired_prob_lc") else ""
        console.print(f"[bold]{d['label']} vs {d['baseline']}[/], {eval_split}, judge {critic} (the critic "
                      f"that labelled the training pairs): paired difference {d['paired_prob'].signed()} points of WTR "
                      f"(mean P){lc} · {d['paired_decision'].signed()} (decisions) · direct comparison WTR "
                      f"{d['direct_prob']}", highlight=False, soft_wrap=True)
    if results.lift:
        console.print(f"independent check: {independent_check(results.lift)}", highlight=False, soft_wrap=True)
    for e in results.evaluations:
        lc = f" · length-controlled {e['wtr_prob_lc']}" if "wtr_prob_lc" in e else ""
        if not e["items"]:  # nothing judged: the failures are the whole result, never a NaN
            result = f"nothing judged: {failure_line(e) or 'no input had both an output and a reference'}"
        else:
            failed = failure_line(e)
            result = f"WTR mean P {e['wtr_prob']}{lc} · decisions {e['wtr_decision']}" + (
                f" · {failed} (each a loss)" if failed else "")
        console.print(f"[bold]{e['label']}[/] vs teacher, {e['split']}, judge {e['judge']}: {result}",
                      highlight=False, soft_wrap=True)
    for s in results.steps:
        console.print(f"[bold]{s['label']}[/] vs teacher, step by step, {eval_split}: " + "; ".join(
            f"{r['predictor']}: exact match {r['exact']}" + ("" if r["typed"] else f", similarity {r['similarity']:.2f}")
            for r in s["steps"]), highlight=False, soft_wrap=True)
    teacher_quality = results.teacher_quality
    if teacher_quality is not None:
        console.print(f"optimized teacher ({optimizer}) vs teacher as written, {eval_split}, judge {critic}: "
                      f"WTR mean P {teacher_quality['wtr_prob']} · decisions {teacher_quality['wtr_decision']}",
                      highlight=False, soft_wrap=True)
    if results.best is None:
        console.print(f"student: none linked (no evaluation judged any student's output: "
                      f"python -m store query \"SELECT * FROM student_failures WHERE run_id = '{run_id}'\")\n"
                      f"report:  {report}", soft_wrap=True, highlight=False)
    else:
        console.print(f"student: {out_dir / 'student'} -> {results.best} (use it as a model: "
                      f"local/{out_dir / 'student'})\nreport:  {report}", soft_wrap=True)
