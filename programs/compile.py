"""The whole pipeline in one command: inputs -> teach -> imitate -> feedback -> evaluate, every step recorded.

    python -m programs.compile                     # default profile: 1.5B teacher and critic, SmolLM2 student
    python -m programs.compile --profile tiny      # the 0.5B teacher and critic, a few inputs (tests, first look)
    python -m programs.compile --limit 8 --db my.duckdb --out out/

Rerunning the same command reuses everything already done (LM calls are answered from the store's cache; rows have
stable ids); a run killed at any point finishes on the next invocation with nothing lost or duplicated.

    python -m programs.compile --max-calls 200     # stop before the 201st LM call that is not answered from the store
    python -m programs.compile --max-cost 0.50     # stop before priced calls (hosted models) could pass $0.50

A budget counts this command's own new LM calls (cached answers are free). Reaching it stops the command before the
call that would pass it (exit code 3, run status 'stopped'); the same command with a higher budget, or none, goes on
from there.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from programs.config import ConfigError, PipelineConfig, build_config  # noqa: E402
from programs.flags import config_overrides, parser  # noqa: E402
from programs.inputs import InputError, store_inputs  # noqa: E402
from programs.preflight import check_run, check_steps  # noqa: E402
from programs.run_lms import LMs, run_lms  # noqa: E402
from programs import progress  # noqa: E402
from programs.progress import console  # noqa: E402
from store.cli import code_version, entry_point, quiet_libraries  # noqa: E402

if TYPE_CHECKING:
    from finetune.results import Results


# -- the pipeline: one function per stage, called in order ----------------------------------------------------------


@dataclass
class Pipeline:
    """What every stage reads: the config, the task and its inputs, the models, the open store and this run's row."""

    cfg: PipelineConfig
    task: Any
    chosen: dict[str, list[dict]]  # the inputs per split: train, the evaluation split, ood
    lms: LMs
    store: Any
    callback: Any  # the store's DSPy callback (the time it took goes into the last line)
    run_row: dict
    out_dir: Path
    db: str
    command: str
    started: float
    dropped: int = 0  # evaluation inputs left out because train has the same text
    teacher_program: Any = None  # a user's DSPy program as the teacher (`programs.distill`); None: the task's teacher
    student_program: Any = None  # the program a student of several predictors runs; None: `Student(task)`

    @property
    def run_id(self) -> str:
        return self.run_row["run_id"]

    @property
    def evaluated(self) -> list[dict]:
        """The inputs students are evaluated on (`eval_split`)."""
        return self.chosen[self.cfg.eval_split]

    def stage(self, name: str):
        """Record what happens inside as this run's stage `name`."""
        from store.callback import trace_context

        return trace_context(run_id=self.run_id, stage=name)

    def threads(self, spec: str) -> int:
        return _threads(self.cfg, spec)

    @cached_property
    def critic(self):
        """The critic the config describes: it judges the feedback pairs and the students."""
        from programs.critic import Critic

        return Critic(self.task, self.cfg.critic_settings(), max_tokens=self.cfg.critic_max_tokens)


@dataclass
class Teaching:
    """Who teaches: the program, the producer name its candidates carry in the store, and the optimizer's result
    (None: the teacher as written)."""

    program: Any
    name: str
    optimized: Any | None = None


def run(cfg: PipelineConfig, *, db: str, out: str, command: str, teacher_program: Any = None,
        student_program: Any = None) -> dict:
    """Run (or finish) the pipeline for `cfg`; returns the evaluation summary. `teacher_program`: any DSPy program
    that teaches instead of the task's own teacher, N runs of it per input (`CriticDistill.compile`);
    `student_program`: for a task of several predictors, the program the student runs (default: the task's)."""
    from store.db import check_path

    _load_stages()
    task, chosen, dropped = check_run(cfg)  # a bad task or bad inputs fail here, before any model is loaded
    check_path(db)  # so does a --db that cannot be a store (nothing created yet)
    teacher_program = teacher_program or task.program  # a task file's program teaches
    if teacher_program is None:
        task.check_list_teacher()  # a task of several output fields needs a program to teach
    check_steps(task, teacher_program, student_program or task.program)
    lms = run_lms(cfg)
    p = _start(cfg, task, chosen, lms, db=db, out=out, command=command)
    p.dropped, p.teacher_program = dropped, teacher_program
    p.student_program = student_program or task.program
    with _recorded(p), progress.log_to(p.out_dir / "progress.log"):
        progress.emit(f"run {p.run_id[:12]}: start, profile {cfg.profile}, store {db}, command {command}")
        _inputs(p)
        teacher = _optimize(p)
        taught = _teach(p, teacher)
        warm, pairs = _imitate(p, teacher)
        students = _feedback(p, teacher, warm)
        results = _evaluate(p, teacher, students)
        report = _report(p, warm, pairs, results)
        progress.emit(f"run {p.run_id[:12]}: done in {progress.duration(time.monotonic() - p.started)}")
    from finetune.evaluate import failure_line
    from finetune.results import print_results

    first = results.evaluations[0]
    summary = {"run_id": p.run_id, "teach": taught, "checkpoint": warm.path, "report": str(report),
               "wtr_prob": first["wtr_prob"], "wtr_decision": first["wtr_decision"],
               "models": {label: model.path for label, model in students}, "best": results.best,
               "failed": next((line for e in results.evaluations if (line := failure_line(e))), None)}
    print_results(results, eval_split=cfg.eval_split, critic=cfg.critic, optimizer=cfg.optimize, run_id=p.run_id,
                  out_dir=p.out_dir, report=report)
    logged = p.callback.seconds + p.store.flush_seconds_total
    share = 100 * logged / (time.monotonic() - p.started)
    console.print(f"store: logging took {logged:.2f}s, {share:.2f}% of this run", soft_wrap=True)
    return summary


def _load_stages() -> None:
    """Import every stage's code in one place, before the first model loads: a broken install fails now rather than
    hours into a run, and the libraries load in the order they always have (torch before llama.cpp)."""
    import importlib

    for name in ("dspy", "finetune.evaluate", "finetune.feedback", "finetune.objectives", "finetune.imitate",
                 "finetune.report", "programs.adapter", "programs.critic", "programs.lm", "finetune.optimize",
                 "finetune.runner", "programs.student", "programs.tasks", "programs.teach", "programs.teacher",
                 "store.db", "store.budget", "store.callback"):
        importlib.import_module(name)


def _start(cfg: PipelineConfig, task, chosen: dict[str, list[dict]], lms: LMs, *, db: str, out: str,
           command: str) -> Pipeline:
    """Open the store and record every LM call into it (within the budget), check the user's SQL, and build this
    run's row (written by `_recorded`; the id is the config's, so a rerun is the same run)."""
    import dspy

    from finetune.objectives import check_query
    from programs.adapter import LabeledAdapter
    from store import Store, stable_id, to_json
    from store.budget import Budget
    from store.callback import install

    started = time.monotonic()
    store = Store(db)
    callback = install(store, budget=Budget(cfg.max_calls, cfg.max_cost))
    dspy.configure(adapter=LabeledAdapter())
    run_id = stable_id("run", cfg.identity())
    run_row = {"run_id": run_id, "started_at": datetime.now(), "status": "running", "command": command,
               "profile": cfg.profile, "config": to_json(asdict(cfg)), "code_version": code_version()}
    params = {"teacher": cfg.teacher, "judge": cfg.critic, "producer": "", "method": "", "inputs": [], "pairs": [],
              "min_confidence": float(cfg.min_confidence), "both_orders": bool(cfg.both_orders_agree)}
    if cfg.sft_sql:
        check_query(store, "sft", cfg.sft_sql, params, name="--sft-sql")
    if cfg.pairs_sql:
        check_query(store, "pairs", cfg.pairs_sql, params, name="--pairs-sql")
    out_dir = Path(out)
    console.print(f"run {run_id[:12]} · profile {cfg.profile} · store {db} · out {out_dir}", soft_wrap=True)
    return Pipeline(cfg=cfg, task=task, chosen=chosen, lms=lms, store=store, callback=callback, run_row=run_row,
                    out_dir=out_dir, db=db, command=command, started=started)


@contextmanager
def _recorded(p: Pipeline) -> Iterator[None]:
    """The run's status when the stages end (`store.runs.recorded_run`), then the store closed: flushed, then
    checkpointed, one self-contained file when the command ends."""
    from store.runs import recorded_run

    try:
        with recorded_run(p.store, p.run_row):
            yield
    finally:
        p.store.close()


def _inputs(p: Pipeline) -> None:
    """Store the chosen inputs (stable ids: a rerun finds the same rows)."""
    with p.stage("inputs"):
        store_inputs(p.store, p.cfg, p.task, p.chosen)


def _optimize(p: Pipeline) -> Teaching:
    """With --optimize, DSPy optimizes the teacher with the critic as metric (the program is saved and reused);
    otherwise the teacher teaches as written."""
    from programs.teacher import Teacher

    cfg = p.cfg
    if p.teacher_program is not None:
        return _program_teaching(p)
    if not cfg.optimize:
        return Teaching(Teacher(p.task, n=cfg.n_candidates), cfg.teacher)
    from finetune.optimize import OptimizeSettings, optimize_teacher

    with p.stage("optimize"):
        optimized = optimize_teacher(
            p.store, p.task, settings=OptimizeSettings(cfg.optimize, train_size=cfg.optimize_inputs // 2,
                                                       val_size=cfg.optimize_inputs - cfg.optimize_inputs // 2,
                                                       trials=cfg.optimize_trials,
                                                       max_metric_calls=6 * cfg.optimize_trials, seed=cfg.seed),
            n=cfg.n_candidates, teacher_name=cfg.teacher, teacher_lm=p.lms.teacher, critic_name=cfg.critic,
            critic_lm=p.lms.critic, reflection_lm=p.lms.reflection, train=p.chosen["train"], run_id=p.run_id,
            out_dir=p.out_dir)
    return Teaching(optimized.program, optimized.producer, optimized)


def _program_teaching(p: Pipeline) -> Teaching:
    """A user's program as the teacher; its candidates carry the program's state in their producer name
    (`program_producer`)."""
    from programs.teacher import ProgramTeacher, program_producer

    if p.cfg.optimize:
        raise ConfigError("optimize the teacher program before distilling it (e.g. dspy.GEPA with the critic as "
                          "metric), not with optimize = ...")
    program = p.teacher_program
    return Teaching(ProgramTeacher(program, p.task, n=p.cfg.n_candidates), program_producer(p.cfg.teacher, program))


def _teach(p: Pipeline, teacher: Teaching) -> dict:
    """The teacher writes N candidates for every input (the ones the store has already are not asked again)."""
    from programs.teach import teach
    from programs.teacher import Teacher

    cfg = p.cfg
    with p.stage("teach"):
        taught = teach(p.store, teacher.program, p.lms.teacher, [r for rows in p.chosen.values() for r in rows],
                       producer=teacher.name, run_id=p.run_id, threads=p.threads(cfg.teacher))
        if teacher.optimized is not None:  # the teacher as written, on the evaluation inputs: the "before"
            teach(p.store, Teacher(p.task, n=cfg.n_candidates), p.lms.teacher, p.evaluated, producer=cfg.teacher,
                  run_id=p.run_id, threads=p.threads(cfg.teacher))
    return taught


def _imitate(p: Pipeline, teacher: Teaching) -> tuple[Any, list[dict]]:
    """The warm start: the student trained on the teacher's pairs (SFT; --sft-sql chooses them). Returns the trained
    student and its training pairs."""
    from finetune.imitate import train_imitation
    from finetune.objectives import default_sft_sql, sql_dataset
    from finetune.stage_configs import warm_start_config
    from programs.config import objectives
    from programs.student import training_examples

    cfg = p.cfg
    with p.stage("imitate"):
        params = {"teacher": teacher.name, "inputs": [r["input_id"] for r in p.chosen["train"]]}
        rows, dataset_id = sql_dataset(p.store, "sft", cfg.sft_sql or default_sft_sql(p.task), params,
                                       name="imitation", run_id=p.run_id, task=p.task)
        pairs = training_examples(p.task, rows)  # a program of several predictors: a pair per step of its runs
        if not pairs:
            raise InputError("the teacher produced no usable training pairs (see failed calls: "
                             "python -m store query \"SELECT error, response FROM lm_calls WHERE stage='teach'\")")
        icfg = warm_start_config(cfg, p.task)
        icfg.output_dir = str(_warm_start_dir(p.out_dir, icfg, dataset_id))
        if cfg.merge_lora or objectives(cfg):  # the objectives start from a full model: merge after training
            icfg.merge_lora = True
        warm = train_imitation(pairs, icfg, store=p.store, run_id=p.run_id, dataset_id=dataset_id)
    return warm, pairs


def _feedback(p: Pipeline, teacher: Teaching, warm) -> list[tuple[str, Any]]:
    """Each objective (--objective) trained from the warm start on the critic's judgments of the student's own
    samples. Returns the students as (label, model), the warm start first."""
    from programs.config import objectives

    wanted = objectives(p.cfg)
    students = [("FT (imitation)" if not wanted else "warm start (imitation)", warm)]
    if not wanted:
        return students
    import dspy

    from finetune.objectives import ObjectiveContext, default_sft_sql, run_objective
    from finetune.stage_configs import feedback_config, objective_trainers

    cfg = p.cfg
    ctx = ObjectiveContext(
        store=p.store, task=p.task, run_id=p.run_id, out_dir=p.out_dir, warm=warm, train_inputs=p.chosen["train"],
        teacher=teacher.name, critic=p.critic, critic_lm=p.lms.critic, critic_name=cfg.critic,
        trainers=objective_trainers(cfg, p.task), feedback=feedback_config(cfg), feedback_every=cfg.feedback_every,
        threads=p.threads(cfg.critic), sft_sql=cfg.sft_sql or default_sft_sql(p.task),
        **({"pairs_sql": cfg.pairs_sql} if cfg.pairs_sql else {}))
    for name in wanted:
        with p.stage(name), dspy.context(lm=p.lms.critic):
            students.append((LABELS[name], run_objective(name, _final_step(p, ctx) if name not in ("ft", "curated") else ctx)))
    return students


def _final_step(p: Pipeline, ctx):
    """The feedback objectives' context: for a program of several predictors, its last predictor as a task of its
    own, on what that predictor read in the teacher's first run of each train input, judged by the critic with those
    fields (the outputs it compares were written from them); otherwise `ctx` itself."""
    if not p.task.steps:
        return ctx
    from dataclasses import replace

    from finetune.objectives import final_step_inputs
    from finetune.stage_configs import objective_trainers
    from programs.critic import Critic

    final = p.task.final_step
    inputs = final_step_inputs(p.store, p.task, ctx.teacher, ctx.train_inputs)
    critic = Critic(final, p.cfg.critic_settings(), max_tokens=p.cfg.critic_max_tokens)
    # the trainers' prompts are the last predictor's own (its instruction, fields and adapter)
    return replace(ctx, task=final, train_inputs=inputs, critic=critic, trainers=objective_trainers(p.cfg, final))


def _evaluate(p: Pipeline, teacher: Teaching, students: list[tuple[str, Any]]) -> Results:
    """Every student against the teacher; the critic-independent checks; what feedback bought; the best student
    linked as `<out>/student`; the optimized teacher against the one as written."""
    from finetune.compare import add_checks, length_controlled, paired_lift, step_agreement
    from finetune.link_student import link_student
    from finetune.results import Results

    cfg = p.cfg
    evaluations = _judge_students(p, teacher, students)
    add_checks(evaluations, p.task)
    length_fit = length_controlled(p.store, evaluations, p.task, critic_name=cfg.critic, split=cfg.eval_split,
                                   method=p.critic.method, run_id=p.run_id)
    lift = []
    if len(students) > 1:
        with p.stage("evaluate"):
            lift = paired_lift(p.store, students, evaluations, critic=p.critic, critic_lm=p.lms.critic,
                         critic_name=cfg.critic, inputs=p.evaluated, split=cfg.eval_split, run_id=p.run_id,
                         threads=p.threads(cfg.critic))
    best = link_student(p.out_dir, students, evaluations, cfg.critic, cfg.eval_split)
    teacher_quality = _teacher_quality(p, teacher) if teacher.optimized is not None else None
    steps = [{"label": label, "steps": rows} for label, model in students
             if (rows := step_agreement(p.store, p.task, model.checkpoint_id, teacher.name, p.evaluated))]
    return Results(evaluations, lift, best, teacher_quality, length_fit, steps)


def _judge_students(p: Pipeline, teacher: Teaching, students: list[tuple[str, Any]]) -> list[dict]:
    """Each student against the teacher on the evaluation split (and the OOD inputs), by the critic and by the
    second judge, running as the task's student module or the user's program of several predictors."""
    from finetune.judge_students import judge_students
    from programs.student import ProgramStudent, Student

    cfg = p.cfg
    splits = {cfg.eval_split: p.evaluated, **({"ood": p.chosen["ood"]} if p.chosen.get("ood") else {})}
    judges = [(cfg.critic, p.lms.critic)] + ([(cfg.second_judge, p.lms.second_judge)] if p.lms.second_judge else [])
    student = ProgramStudent(p.task, p.student_program) if p.task.steps else Student(p.task)
    with p.stage("evaluate"):
        return judge_students(p.store, p.task, students, student=student, teacher_name=teacher.name, splits=splits,
                              judges=judges, critic=p.critic, run_id=p.run_id, threads=p.threads,
                              max_tokens=cfg.student_max_tokens)


def _teacher_quality(p: Pipeline, teacher: Teaching) -> dict:
    """The optimized teacher's candidates against the teacher's as written, by the critic, on the evaluation split."""
    from finetune.evaluate import compare_producers

    cfg = p.cfg
    with p.stage("evaluate"):
        r = compare_producers(p.store, critic=p.critic, critic_lm=p.lms.critic, critic_name=cfg.critic,
                              inputs=p.evaluated, producer=teacher.name, reference=cfg.teacher, split=cfg.eval_split,
                              run_id=p.run_id, threads=p.threads(cfg.critic))
    optimized = teacher.optimized
    return {"optimizer": cfg.optimize, "program": str(optimized.path), "producer": teacher.name,
            "val_before": optimized.baseline_score, "val_after": optimized.score, **r}


def _report(p: Pipeline, warm, pairs: list[dict], results: Results) -> Path:
    """`<out>/report.md` with its plots: the evaluations, what feedback bought, examples, cost and usage."""
    from finetune.compare import mean
    from finetune.report import write_report

    cfg = p.cfg
    first = results.evaluations[0]
    examples = [{"input": it["text"], "teacher": it["b"], "student": it["a"], "p": p_student}
                for it, p_student in zip(first["items"], first["p_student"])][:8]
    usage = p.store.query("SELECT * FROM usage_per_stage WHERE run_id = ? ORDER BY first_call_at, stage, model",
                          [p.run_id])
    return write_report(
        p.out_dir, config=asdict(cfg), command=p.command, db=p.db, log_history=warm.log_history, examples=examples,
        counts={"train_inputs": len(p.chosen["train"]), f"{cfg.eval_split}_inputs": len(p.evaluated),
                "pairs": len(pairs), "dropped_overlap": p.dropped},
        evaluations=[dict(e, length_ratio=mean(e["length_ratios"])) for e in results.evaluations], usage=usage,
        teacher_quality=results.teacher_quality, lift=results.lift, length_fit=results.length_fit, steps=results.steps,
    )


# -- helpers of the stages ---------------------------------------------------------------------------------------------

def _threads(cfg: PipelineConfig, spec: str) -> int:
    """Hosted models take parallel calls; an in-process model serves one at a time."""
    return 1 if spec.startswith("local/") else cfg.threads


LABELS = {"ft": "FT", "curated": "curated imitation", "sd": "SD", "brio": "BRIO", "dpo": "DPO", "brio-dpo": "BRIO→DPO"}


def _warm_start_dir(out_dir: Path, icfg, dataset_id: str) -> Path:
    """The warm start's folder, as earlier versions named it (programs/legacy_ids.py)."""
    from finetune.runner import MARKER, config_identity
    from programs.legacy_ids import warm_start_folder

    return warm_start_folder(out_dir, config_identity(icfg), dataset_id, MARKER)


@entry_point(interrupted="interrupted: rerun the same command to finish (nothing done so far is lost)")
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    quiet_libraries()
    from store.db import default_path

    command = "python -m programs.compile " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    cfg = build_config(args.profile or "default", args.config, config_overrides(args))
    run(cfg, db=args.db or default_path(), out=args.out, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
