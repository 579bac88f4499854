"""Evaluate a student against the teacher: the critic judges student vs the teacher's reference in both orders.

Student outputs come from the student *as a DSPy LM* (`local/<checkpoint>`, greedy; its engine generates concurrent
calls as one batch), so every output is an LM call in the store, cached like any other. Judgments are stored per
order (`metrics.judge`); an item counts only when both orders gave an answer (one order alone carries the critic's
position lean); the win-tie rate (both readings) with its bootstrap interval goes into `evaluations`.
"""

from __future__ import annotations

from datetime import datetime

import dspy

from finetune.model_card import refresh_cards
from metrics.judge import judge_verdicts
from metrics.winrate import Estimate, win_tie_rate
from programs.critic import DEFAULT, PAPER, Critic
from programs.critic_rule import MAX_TOKENS
from programs.generation_defaults import MAX_NEW_TOKENS
from programs.legacy_ids import critic_id_parts, task_id_parts
from programs.parallel import imap
from programs.progress import stage_progress
from programs.student import ProgramStudent, Student
from programs.teach import candidate_id
from store import Store, stable_id, to_json
from store.callback import last_lm_call_id
from store.cli import ArgumentParser, code_version, entry_point, quiet_libraries


def student_outputs(store: Store, student: Student, student_lm: dspy.LM, inputs: list[dict], *, producer: str,
                    run_id: str, threads: int | None = None) -> dict[str, dict]:
    """input_id -> {candidate_id, text} of the student's output, generating only what the store lacks.

    Each output is one DSPy call (cached and recorded like any other); `threads` of them at a time, by default as many
    as the student's engine batches (a local transformers student generates them together), else one. An input the
    student's program fails on (or answers with nothing) is a `student_failures` row (`failures`), not a candidate."""
    if threads is None:
        threads = getattr(getattr(student_lm, "engine", None), "batch_size", 1)
    have = {r["input_id"]: r for r in store.query(
        "SELECT input_id, candidate_id, text FROM candidates WHERE role = 'student' AND producer = ?", [producer])}
    todo = [i for i in inputs if i["input_id"] not in have]
    with stage_progress("generate", total=len(inputs), done=len(inputs) - len(todo), unit="inputs") as advance, \
            dspy.context(lm=student_lm):
        def one(item: dict) -> tuple[str, str | None, list | None, str | None]:
            return (*_answer(student, item["text"]), last_lm_call_id())

        for item, (text, error, steps, call_id) in imap(one, todo, threads):
            row = {"input_id": item["input_id"], "producer": producer, "lm_call_id": call_id, "run_id": run_id,
                   "created_at": datetime.now()}
            if error is None:
                cid = candidate_id(item["input_id"], "student", producer, 0)
                row.update(candidate_id=cid, role="student", rank=0, text=text,
                           **({"trace": to_json(steps)} if steps else {}))
                store.add("candidates", row)
                have[item["input_id"]] = row
            else:
                store.add("student_failures", {**row, "error": error})
            advance(1)
    store.flush()
    return have


def _answer(student: Student, text: str) -> tuple[str, str | None, list | None]:
    """The student's stored output for one input, the error that stopped it (None: none), and each predictor's call
    for a program of several (`ProgramStudent`)."""
    try:
        prediction = student(text=text)
    except Exception as e:  # noqa: BLE001 - the user's program failed on this input: stored, a loss
        return "", _one_line(e), None
    output = student.task.encode_outputs(prediction) or ""
    return output, None if output else "the student's program returned an empty output", getattr(
        prediction, "_steps", None)


def failures(store: Store, producer: str, inputs: list[dict]) -> dict[str, str]:
    """input_id -> error, for the inputs where the student's program failed and wrote no output."""
    return {r["input_id"]: r["error"] for r in store.query(
        "SELECT input_id, error FROM student_failures f WHERE producer = ? AND list_contains(?, input_id) "
        "AND NOT EXISTS (SELECT 1 FROM candidates c WHERE c.input_id = f.input_id AND c.role = 'student' "
        "AND c.producer = f.producer)", [producer, [i["input_id"] for i in inputs]])}


def _one_line(error: BaseException) -> str:
    """An exception as one line (an adapter's parse error spans several: the first says what went wrong)."""
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first}"[:300]


def failure_line(evaluation: dict) -> str | None:
    """"the student failed on K of N evaluation inputs: <first error>", or None when it failed on none."""
    failed = evaluation.get("failed") or {}
    if not failed:
        return None
    n = len(failed) + len(evaluation["items"])
    return f"the student failed on {len(failed)} of {n} evaluation inputs: {next(iter(failed.values()))}"


def evaluate(store: Store, *, student: Student, student_lm: dspy.LM, student_name: str, checkpoint_id: str | None,
             critic: Critic, critic_lm: dspy.LM, critic_name: str, inputs: list[dict], teacher_name: str, split: str,
             run_id: str, threads: int = 1) -> dict:
    """WTR of the student vs the teacher's first candidate on `inputs`; stored in `evaluations` and returned."""
    refs = {r["input_id"]: r for r in store.query(
        "SELECT input_id, candidate_id, text FROM candidates WHERE role = 'teacher' AND producer = ? AND rank = 0",
        [teacher_name])}
    outputs = student_outputs(store, student, student_lm, inputs, producer=student_name, run_id=run_id)
    items = [{"input_id": i["input_id"], "text": i["text"], "a_id": outputs[i["input_id"]]["candidate_id"],
              "a": outputs[i["input_id"]]["text"], "b_id": refs[i["input_id"]]["candidate_id"],
              "b": refs[i["input_id"]]["text"]}
             for i in inputs if i["input_id"] in outputs and i["input_id"] in refs]
    p, dropped = _both_orders(store, critic, critic_lm, items, judge=critic_name, run_id=run_id, purpose="eval",
                              threads=threads)
    items = [it for it in items if it["input_id"] in p]
    failed = {k: v for k, v in failures(store, student_name, inputs).items() if k in refs}
    prob, decision = win_tie_rate([p[it["input_id"]] for it in items] + [0.0] * len(failed))  # a failure loses
    task = student.task
    ratios = [len(task.output_text(it["a"]).split()) / max(1, len(task.input_text(it["text"]).split())) for it in items]
    details = {"items": [{"input_id": it["input_id"], "p_student": p[it["input_id"]],
                          "length_ratio": r} for it, r in zip(items, ratios)],
               "skipped": len(inputs) - len(items) - len(failed), "one_order_only": dropped, "method": critic.method,
               **({"failed": [{"input_id": k, "error": v} for k, v in failed.items()]} if failed else {})}
    evaluation_id = _store_evaluation(store, student=student_name, reference=teacher_name, judge=critic_name,
                                      split=split, items=items + [{"input_id": k} for k in failed], prob=prob,
                                      decision=decision, details=details, run_id=run_id, checkpoint_id=checkpoint_id,
                                      method=critic.method)
    return {"wtr_prob": prob, "wtr_decision": decision, "length_ratios": ratios, "items": items,
            "p_student": [p[it["input_id"]] for it in items], "failed": failed, "evaluation_id": evaluation_id}


def _both_orders(store: Store, critic: Critic, critic_lm: dspy.LM, items: list[dict], **kw) -> tuple[dict, int]:
    """input_id -> P(a >= b) for the items judged in both orders, and how many had one order only (left out)."""
    verdicts = judge_verdicts(store, critic, critic_lm, items, **kw)
    kept = {v.input_id: v.p_a for v in verdicts if v.p_a is not None and v.orders_agree is not None}
    return kept, sum(1 for v in verdicts if v.p_a is not None and v.orders_agree is None)


def _store_evaluation(store: Store, *, student: str, reference: str, judge: str, split: str, items: list[dict],
                      prob: Estimate, decision: Estimate, details: dict, run_id: str,
                      checkpoint_id: str | None, method: str = PAPER.method) -> str:
    """One `evaluations` row (id = hash of who was compared, by whom, how, on which inputs); returns its id."""
    how = critic_id_parts(method)  # as earlier ids hashed it
    row = {
        "evaluation_id": stable_id("evaluation", student, reference, judge, split,
                                   sorted(it["input_id"] for it in items), *how),
        "run_id": run_id, "checkpoint_id": checkpoint_id, "student": student, "reference": reference,
        "judge": judge, "split": split, "n": prob.n,
        "wtr_prob": prob.value, "wtr_prob_lo": prob.lo, "wtr_prob_hi": prob.hi,
        "wtr_decision": decision.value, "wtr_decision_lo": decision.lo, "wtr_decision_hi": decision.hi,
        "details": to_json(details), "created_at": datetime.now(),
    }
    store.insert("evaluations", [row], replace=True)
    refresh_cards(store, checkpoint_id)  # the student's model card now carries this win rate
    return row["evaluation_id"]


def compare_producers(store: Store, *, critic: Critic, critic_lm: dspy.LM, critic_name: str, inputs: list[dict],
                      producer: str, reference: str, split: str, run_id: str, threads: int = 1,
                      role: str = "teacher", purpose: str = "teacher-eval") -> dict:
    """WTR of one producer's first candidates against another's, both orders, on the inputs both answered: the
    optimized teacher vs the one as written (role 'teacher'), or one student vs another (role 'student', the direct
    comparison of a feedback student with its warm start)."""
    first = {}
    for name in (producer, reference):
        first[name] = {r["input_id"]: r for r in store.query(
            "SELECT input_id, candidate_id, text FROM candidates WHERE role = ? AND producer = ? AND rank = 0",
            [role, name])}
    items = [{"input_id": i["input_id"], "text": i["text"], "a_id": first[producer][i["input_id"]]["candidate_id"],
              "a": first[producer][i["input_id"]]["text"], "b_id": first[reference][i["input_id"]]["candidate_id"],
              "b": first[reference][i["input_id"]]["text"]}
             for i in inputs if i["input_id"] in first[producer] and i["input_id"] in first[reference]]
    p, _ = _both_orders(store, critic, critic_lm, items, judge=critic_name, run_id=run_id, purpose=purpose,
                        threads=threads)
    items = [it for it in items if it["input_id"] in p]
    # one student's failure where the other answered is its loss (the other's win), as against the teacher
    lost = {k: 0.0 for k in failures(store, producer, inputs) if k in first[reference]} if role == "student" else {}
    won = {k: 1.0 for k in failures(store, reference, inputs) if k in first[producer]} if role == "student" else {}
    prob, decision = win_tie_rate([p[it["input_id"]] for it in items] + list(lost.values()) + list(won.values()))
    evaluation_id = _store_evaluation(
        store, student=producer, reference=reference, judge=critic_name, split=split, items=items, prob=prob,
        decision=decision, details={"items": [{"input_id": it["input_id"], "p": p[it["input_id"]]} for it in items],
                                    "method": critic.method, "role": role},
        run_id=run_id, checkpoint_id=None, method=critic.method)
    return {"wtr_prob": prob, "wtr_decision": decision, "n": prob.n, "evaluation_id": evaluation_id,
            "p": {it["input_id"]: p[it["input_id"]] for it in items}}


__all__ = ["Estimate", "compare_producers", "evaluate", "failure_line", "failures", "student_outputs"]


# -- python -m finetune.evaluate -----------------------------------------------------------------------------------


def _student_spec(student: str) -> tuple[str, str]:
    """(model spec, producer name) for a checkpoint folder, an embedded student name or a local/ spec."""
    from pathlib import Path

    if student.startswith("local/"):
        student = student[len("local/"):]
    path = Path(student).expanduser()
    if path.exists():
        return f"local/{path.resolve()}", str(path.resolve())
    return f"local/{student}", student


@entry_point()
def main(argv: list[str] | None = None) -> int:
    """Evaluate any student checkpoint on any input file against the teacher; print WTR with its CI and store it."""
    import os

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    ap = ArgumentParser(prog="python -m finetune.evaluate", description=main.__doc__)
    ap.add_argument("--student", required=True, help="checkpoint folder (e.g. out/student-ft-…/final), embedded name")
    ap.add_argument("--inputs", required=True, help=".txt/.jsonl/.csv/.parquet; a 'reference' column holds the "
                                                    "teacher's outputs, otherwise the teacher writes (and caches) them")
    ap.add_argument("--critic", default="local/qwen2.5-coder-1.5b-instruct", help="judge model spec")
    ap.add_argument("--second-judge", "--judge", dest="judge", metavar="SPEC",
                    help="a second, independent judge beside the critic (e.g. an API model)")
    ap.add_argument("--teacher", help="writes references when the file has none (default: the critic's model)")
    ap.add_argument("--task", default="humor", help="humor (default) | formal | a task .toml file | "
                                                     "package.module:ATTR | file.py:ATTR (docs/tasks.md)")
    ap.add_argument("--limit", type=int, help="evaluate the first N inputs only")
    ap.add_argument("--db", help="DuckDB store (default: $CRITIC_DISTILL_DB or ./traces.duckdb)")
    args = ap.parse_args(argv)

    from programs.student_lm import _resolve as resolve_student
    from programs.inputs import InputError, load_file
    from programs.lm import check_context, check_hosted, resolve_lm
    from programs.progress import console
    from programs.task_sources import get_task
    from store.db import check_path, default_path

    quiet_libraries()
    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be a positive integer")
    task = get_task(args.task)
    rows = load_file(args.inputs, task)[: args.limit]
    check_context([r["text"] for r in rows], [args.critic, args.judge, args.teacher], answer_tokens=MAX_TOKENS,
                  judged_tokens=160)  # this command's critic and teacher max_tokens
    student_spec, producer = _student_spec(args.student)
    check_path(args.db or default_path())  # a --db that cannot be a store: one line, nothing created or pulled
    teacher_spec = args.teacher or args.critic
    need_teacher = any("reference" not in r for r in rows)
    check_hosted(args.critic, args.judge, teacher_spec if need_teacher else None)  # keys, answers: before any pull
    resolve_student(student_spec[len("local/"):])
    critic_lm = resolve_lm(args.critic, temperature=0.0, max_tokens=MAX_TOKENS)
    judge_lm = resolve_lm(args.judge, temperature=0.0, max_tokens=MAX_TOKENS) if args.judge else None
    teacher_lm = resolve_lm(teacher_spec, temperature=0.8, max_tokens=160, seed=0) if need_teacher else None
    summary = _evaluate_file(task, rows, args, student_spec, producer, teacher_spec, critic_lm, judge_lm, teacher_lm)
    for name, result in summary.items():
        console.print(f"[bold]{name}[/]: WTR mean P {result['wtr_prob']} · decisions {result['wtr_decision']}",
                      highlight=False)
    return 0


def _evaluate_file(task, rows, args, student_spec, producer, teacher_spec, critic_lm, judge_lm, teacher_lm) -> dict:
    """Store the file's inputs (and references), then judge the student against them with each judge."""
    import hashlib
    from pathlib import Path

    from programs.adapter import LabeledAdapter
    from programs.lm import resolve_lm
    from programs.teach import teach
    from programs.teacher import ProgramTeacher, Teacher, program_producer
    from store.callback import install, trace_context
    from store.db import default_path
    from store.runs import recorded_run

    store = Store(args.db or default_path())
    install(store)
    dspy.configure(adapter=LabeledAdapter())
    digest = hashlib.sha256(Path(args.inputs).read_bytes()).hexdigest()[:12]
    split = f"file:{Path(args.inputs).name}"
    run_id = stable_id("evaluate", producer, args.critic, args.judge, digest, args.limit,
                       *task_id_parts(task.name))  # as earlier ids hashed it
    run_row = {"run_id": run_id, "started_at": datetime.now(), "status": "running", "command": "python -m finetune.evaluate",
               "profile": None, "config": to_json(vars(args)), "code_version": code_version()}
    # the run's row says how it ended: finished, failed, stopped (a budget) or interrupted
    with recorded_run(store, run_row), trace_context(run_id=run_id, stage="evaluate"):
        items = [{"input_id": stable_id("input", task.name, r["text"]), "text": r["text"]} for r in rows]
        store.insert("inputs", [{**it, "task": task.name, "split": r["split"],
                                 "source": str(Path(args.inputs).resolve()), "created_at": datetime.now()}
                                for it, r in zip(items, rows)])
        if teacher_lm is None:
            reference = f"file:{digest}"
            store.insert("candidates", [{
                "candidate_id": candidate_id(it["input_id"], "teacher", reference, 0), "input_id": it["input_id"],
                "role": "teacher", "producer": reference, "rank": 0, "text": r["reference"], "lm_call_id": None,
                "run_id": run_id, "created_at": datetime.now()} for it, r in zip(items, rows)])
        else:
            if task.program is not None:  # a task file's program teaches (one run per input: the reference)
                teacher, reference = ProgramTeacher(task.program, task, n=1), program_producer(teacher_spec, task.program)
            else:
                teacher, reference = Teacher(task), teacher_spec
            teach(store, teacher, teacher_lm, items, producer=reference, run_id=run_id)
        checkpoint = store.query("SELECT checkpoint_id FROM checkpoints WHERE path = ?", [producer])
        student_lm = resolve_lm(student_spec, temperature=0.0, max_tokens=MAX_NEW_TOKENS)
        student = ProgramStudent(task, task.program) if task.steps else Student(task)  # a program runs whole
        summary = {}
        for name, lm in ((args.critic, critic_lm), (args.judge, judge_lm)):
            if lm is None:
                continue
            summary[name] = evaluate(store, student=student, student_lm=student_lm, student_name=producer,
                                     checkpoint_id=checkpoint[0]["checkpoint_id"] if checkpoint else None,
                                     critic=Critic(task, DEFAULT), critic_lm=lm, critic_name=name, inputs=items,
                                     teacher_name=reference, split=split, run_id=run_id)
    store.close()  # flush, then checkpoint: one self-contained file
    return summary


if __name__ == "__main__":
    import sys

    sys.exit(main())
