"""The paper's training objectives, each from the same warm start (the imitation model), with data read by SQL.

    ft        more imitation: SFT on the teacher's pairs
    sd        self-distillation: SFT on the critic's positives among the student's own samples
    dpo       DPO on the critic's (positive, negative) student pairs; reference = the warm start
    curated   critic-curated imitation: SFT on each input's teacher candidate the critic ranks first, among those
              that pass the meaning guard (best-of-N by the critic: the cheap baseline feedback has to beat)
    brio      BRIO on the teacher's outputs ranked by the critic (ranking loss + cross-entropy)
    brio-dpo  BRIO, then DPO on pairs sampled from the BRIO model

Feedback (sd, dpo, the DPO half of brio-dpo) is collected once, or every K epochs (`feedback_every`), each time from
the current student (on-policy). Every dataset is a SQL query over the store's views; users may pass their own.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import dspy

from metrics.guards import LC, candidate_meaning, record_length_control
from metrics.judge import judge_verdicts
from finetune.feedback import FeedbackConfig, judge_round, sample_producer, sample_round
from finetune.runner import TrainResult, changed_settings
from finetune.stage_configs import ObjectiveTrainers
from programs.critic import Critic
from programs.student import row_input, training_answers, training_completion, training_examples, training_prompt
from programs.tasks import Task
from store import Store, stable_id, to_json
from store.errors import UserError
from programs.config import OBJECTIVE_NAMES  # the one list; the config validates against it


SFT_SQL = ("SELECT input, output FROM teacher_pairs WHERE teacher = $teacher AND split = 'train' "
           "AND list_contains($inputs, input_id) ORDER BY input_id, rank")
# A program of several predictors: every step of every teacher run, each row trained through its own predictor
STEPS_SQL = ("SELECT predictor, input, output FROM teacher_steps WHERE teacher = $teacher AND split = 'train' "
             "AND list_contains($inputs, input_id) ORDER BY input_id, rank, step")
# This round's judged student pairs ($pairs: "id|id", the smaller id first) as the critic ($judge, its settings
# $method) decided them: its combined P(a >= b) over both orders (the `verdicts` table); kept when the confidence
# |2 P - 1| reaches $min_confidence and, with $both_orders, when both orders favoured the same candidate.
_JUDGED = ("FROM verdicts v JOIN candidates ca ON ca.candidate_id = v.a_id "
           "JOIN candidates cb ON cb.candidate_id = v.b_id JOIN inputs i ON i.input_id = v.input_id "
           "WHERE v.judge = $judge AND v.method = $method AND ca.producer = $producer "
           "AND list_contains($pairs, least(v.a_id, v.b_id) || '|' || greatest(v.a_id, v.b_id)) "
           "AND v.p_a IS NOT NULL AND abs(v.p_a - 0.5) * 2 >= $min_confidence "
           "AND (NOT $both_orders OR coalesce(v.orders_agree, false)) ORDER BY v.input_id")
_CHOSEN, _REJECTED = ("CASE WHEN v.p_a >= 0.5 THEN ca.text ELSE cb.text END",
                      "CASE WHEN v.p_a >= 0.5 THEN cb.text ELSE ca.text END")
SD_SQL = f"SELECT i.text AS input, {_CHOSEN} AS output {_JUDGED}"
PAIRS_SQL = f"SELECT i.text AS input, {_CHOSEN} AS chosen, {_REJECTED} AS rejected {_JUDGED}"
# Best-of-N by the critic: per input, the teacher candidate with the highest mean verdict over its ranking pairs, among
# those whose meaning similarity to the input (`similarities`, $embedder) reaches $meaning_floor
CURATED_SQL = ("SELECT s.input, s.text AS output FROM teacher_scores s JOIN similarities m "
               "ON m.candidate_id = s.candidate_id AND m.embedder = $embedder WHERE s.teacher = $teacher "
               "AND s.judge = $judge AND s.method = $method AND list_contains($inputs, s.input_id) "
               "AND m.meaning >= $meaning_floor "
               "QUALIFY row_number() OVER (PARTITION BY s.input_id ORDER BY s.score DESC, s.rank) = 1 "
               "ORDER BY s.input_id")
BRIO_SQL = ("SELECT input_id, input, text, score FROM teacher_scores WHERE teacher = $teacher AND judge = $judge "
            "AND method = $method AND list_contains($inputs, input_id) ORDER BY input_id, score DESC, rank")

REQUIRED = {"sft": {"input", "output"}, "pairs": {"input", "chosen", "rejected"}, "brio": {"input_id", "input", "text"}}
ANSWERS = {"sft": ("output",), "pairs": ("chosen", "rejected"), "brio": ("text",)}  # what a row's student learns


class DatasetError(UserError):
    """A dataset query that cannot be used: one line naming what is wrong."""


def _used(sql: str, params: dict[str, Any]) -> dict[str, Any]:
    """The named parameters a query mentions (DuckDB refuses extra ones)."""
    return {k: v for k, v in params.items() if re.search(rf"\${k}\b", sql)}


def check_query(store: Store, kind: str, sql: str, params: dict[str, Any], *, name: str) -> None:
    """Fail early, in one line, when a dataset query does not run or lacks the columns `kind` needs."""
    try:
        columns = store.columns(sql, _used(sql, params))
    except Exception as e:  # noqa: BLE001 - a user's SQL: report DuckDB's first line
        raise DatasetError(f"{name} query failed: {str(e).splitlines()[0]}") from e
    missing = REQUIRED[kind] - set(columns)
    if missing:
        raise DatasetError(f"{name} query must return columns {sorted(REQUIRED[kind])}; missing {sorted(missing)} "
                           f"(it returns {columns})")


def sql_dataset(store: Store, kind: str, sql: str, params: dict[str, Any], *, name: str, run_id: str,
                task: Task | None = None) -> tuple[list[dict], str]:
    """Rows of a dataset query (checked for the columns `kind` needs), recorded in `datasets`; returns (rows, id).
    With `task`, each row's training prompt and answers are recorded beside it (`datasets.prompts`,
    `datasets.completions`), so the dataset can be exported as exactly what the student read and learned
    (`python -m store export`) without the task."""
    check_query(store, kind, sql, params, name=name)
    used = _used(sql, params)
    rows = store.query(sql, used)
    dataset_id = stable_id("dataset", name, sql, to_json(used), to_json(rows))
    prompts = completions = None
    if task is not None:  # every row's prompt, also a row with nothing to learn (its completions are null)
        prompts = to_json([training_prompt(*row_input(task, r)) for r in rows])
        completions = to_json([training_answers(task, r, ANSWERS[kind]) for r in rows])
    store.insert("datasets", [{"dataset_id": dataset_id, "name": name, "sql": sql, "n_rows": len(rows),
                               "rows": to_json(rows), "prompts": prompts, "completions": completions,
                               "run_id": run_id, "created_at": datetime.now()}])
    if prompts is not None:  # recorded before prompts were, or with a task's earlier fields (the id is the rows'):
        store.execute("UPDATE datasets SET prompts = ?, completions = ? WHERE dataset_id = ? "
                      "AND (prompts IS DISTINCT FROM ? OR completions IS DISTINCT FROM ?)",
                      [prompts, completions, dataset_id, prompts, completions])  # what the latest training read
    return rows, dataset_id


def default_sft_sql(task: Task) -> str:
    """Imitation's default query: the teacher's pairs, or every step of its runs for a program of several
    predictors."""
    return STEPS_SQL if task.steps else SFT_SQL


def final_step_inputs(store: Store, task: Task, teacher: str, inputs: list[dict]) -> list[dict]:
    """The inputs the feedback objectives train a program's last predictor on: what that predictor read in the
    teacher's first run on each train input (the earlier predictors' outputs beside the program's inputs), stored as
    inputs of the last predictor's own task (split 'train', source `teacher-steps:<teacher>`), one per distinct
    text. Sampling, judging and training then treat it as a task of one predictor."""
    final_name, final = task.steps[-1]
    rows = store.query("SELECT input_id, arg_max(input, step) AS input FROM teacher_steps WHERE teacher = ? "
                       "AND rank = 0 AND predictor = ? AND list_contains(?, input_id) GROUP BY input_id "
                       "ORDER BY input_id", [teacher, final_name, [i["input_id"] for i in inputs]])
    items: dict[str, dict] = {}
    for r in rows:
        text = final.encode_inputs(json.loads(r["input"]))
        iid = stable_id("input", final.name, text)
        items.setdefault(iid, {"input_id": iid, "text": text, "split": "train"})
    store.insert("inputs", [{**i, "task": final.name, "source": f"teacher-steps:{teacher}",
                             "created_at": datetime.now()} for i in items.values()])
    return list(items.values())


@dataclass
class ObjectiveContext:
    """What every objective needs: the store, the task, the warm start, the critic, the settings."""

    store: Store
    task: Task
    run_id: str
    out_dir: Path
    warm: TrainResult  # the imitation model every objective starts from (a full model folder)
    train_inputs: list[dict]
    teacher: str
    critic: Critic
    critic_lm: dspy.LM
    critic_name: str
    trainers: ObjectiveTrainers  # each trainer's config (finetune.stage_configs.objective_trainers)
    feedback: FeedbackConfig = field(default_factory=FeedbackConfig)
    feedback_every: float | None = None  # epochs between feedback rounds; None: feedback once
    sft_sql: str = SFT_SQL
    sd_sql: str = SD_SQL
    pairs_sql: str = PAIRS_SQL
    brio_sql: str = BRIO_SQL
    curated_sql: str = CURATED_SQL
    threads: int = 1

    @property
    def ranking_method(self) -> str:
        """The verdicts that rank the teacher's candidates (BRIO, curated): the critic's, length-controlled when the
        feedback says so."""
        return self.critic.method + (LC if self.feedback.length_control else "")

    def params(self, producer: str | None = None, pairs: list[str] | None = None,
               method: str | None = None) -> dict[str, Any]:
        from metrics.similarity import EMBEDDER

        floor = self.feedback.meaning_floor
        return {"teacher": self.teacher, "judge": self.critic_name, "method": method or self.critic.method,
                "producer": producer, "inputs": [i["input_id"] for i in self.train_inputs], "pairs": pairs or [],
                "min_confidence": float(self.feedback.min_confidence),
                "both_orders": bool(self.feedback.both_orders_agree),
                "embedder": EMBEDDER, "meaning_floor": -1.0 if floor is None else float(floor)}

    def rounds(self) -> list[float]:
        """Epochs per feedback round: one round of all epochs, or rounds of `feedback_every` epochs."""
        total = float(self.trainers.epochs)
        if not self.feedback_every or self.feedback_every >= total:
            return [total]
        n = int(total // self.feedback_every)
        rest = total - n * self.feedback_every
        return [self.feedback_every] * n + ([rest] if rest > 1e-9 else [])


def _out(ctx: ObjectiveContext, name: str, config: Any, *parts: Any, skip: tuple[str, ...] = ()) -> str:
    """The student's folder: named by where it starts, its data and every weight setting off its default (`parts`
    carry the `skip`ped ones), so other settings never find this run's model; at the defaults, the name earlier
    versions gave it."""
    changed = changed_settings(config, skip=skip)
    return str(ctx.out_dir / f"student-{name}-{stable_id(*parts, *([changed] if changed else []))[:10]}")


def _imitation(ctx: ObjectiveContext, base: TrainResult, rows: list[dict], dataset_id: str, name: str,
               epochs: float) -> TrainResult:
    from finetune.imitate import train_imitation

    cfg = replace(ctx.trainers.imitation, base_model=base.path, epochs=epochs)
    cfg.output_dir = _out(ctx, name, cfg, base.checkpoint_id, dataset_id, epochs, skip=("epochs",))
    pairs = training_examples(ctx.task, rows)
    return train_imitation(pairs, cfg, store=ctx.store, run_id=ctx.run_id, dataset_id=dataset_id, objective=name)


def _dpo(ctx: ObjectiveContext, base: TrainResult, rows: list[dict], dataset_id: str, name: str, epochs: float) -> TrainResult:
    from finetune.dpo import train_dpo

    cfg = replace(ctx.trainers.dpo, base_model=base.path, epochs=epochs)
    cfg.output_dir = _out(ctx, name, cfg, base.checkpoint_id, dataset_id, epochs, skip=("epochs",))
    pairs = training_examples(ctx.task, rows, ("chosen", "rejected"))
    return train_dpo(pairs, cfg, store=ctx.store, run_id=ctx.run_id, dataset_id=dataset_id, objective=name)


def _feedback_rounds(ctx: ObjectiveContext, name: str, start: TrainResult) -> TrainResult:
    """sd / dpo: sample from the current student, judge, train; repeat every K epochs (on-policy)."""
    current = start
    for i, epochs in enumerate(ctx.rounds()):
        producer = sample_producer(current.checkpoint_id, ctx.feedback)
        samples = sample_round(ctx.store, ctx.task, current.path, producer, ctx.train_inputs, ctx.feedback,
                               run_id=ctx.run_id)
        judged = judge_round(ctx.store, ctx.critic, ctx.critic_lm, ctx.critic_name, ctx.train_inputs, samples,
                             ctx.feedback, run_id=ctx.run_id, threads=ctx.threads)
        kind, sql = ("sft", ctx.sd_sql) if name == "sd" else ("pairs", ctx.pairs_sql)
        rows = []
        if judged["pairs"] or "$pairs" not in sql:
            rows, dataset_id = sql_dataset(ctx.store, kind, sql, ctx.params(producer, judged["pairs"],
                                                                            judged["method"]),
                                           name=f"{name}-round{i}", run_id=ctx.run_id, task=ctx.task)
        if not rows:
            raise DatasetError(
                f"{name}: no usable feedback pairs in round {i} ({judged['judged']} judged, {len(judged['pairs'])} "
                f"kept; {judged['dropped_length']} inputs without two in-band candidates, "
                f"{judged['dropped_identical']} with identical ones, {judged['dropped_meaning']} without two above "
                f"meaning_floor, {judged['dropped_margin']} pairs over meaning_margin; min_confidence / "
                "both_orders_agree drop the unsure ones); see `python -m store query \"SELECT * FROM feedback_pairs\"`")
        if name == "sd":
            current = _imitation(ctx, current, rows, dataset_id, "sd", epochs)
        else:
            current = _dpo(ctx, current, rows, dataset_id, name, epochs)
    return current


def rank_teacher_outputs(ctx: ObjectiveContext) -> dict[str, list[dict]]:
    """The critic compares every pair of the teacher's candidates per input, both orders (BRIO's ranking; with
    length control, its verdicts without the length term too). Returns input_id -> the teacher's candidates."""
    cands: dict[str, list[dict]] = {}
    for r in ctx.store.query("SELECT input_id, candidate_id, text FROM candidates WHERE role = 'teacher' AND producer = ? "
                             "AND list_contains(?, input_id) ORDER BY input_id, rank",
                             [ctx.teacher, [i["input_id"] for i in ctx.train_inputs]]):
        cands.setdefault(r["input_id"], []).append(r)
    texts = {i["input_id"]: i["text"] for i in ctx.train_inputs}
    items = [{"input_id": iid, "text": texts[iid], "a_id": a["candidate_id"], "a": a["text"], "b_id": b["candidate_id"],
              "b": b["text"]}
             for iid, cs in cands.items() for n, a in enumerate(cs) for b in cs[n + 1:]]
    verdicts = judge_verdicts(ctx.store, ctx.critic, ctx.critic_lm, items, judge=ctx.critic_name, run_id=ctx.run_id,
                              purpose="brio", threads=ctx.threads)
    if ctx.feedback.length_control:
        task = ctx.task
        record_length_control(ctx.store, [{"input_id": it["input_id"], "a_id": it["a_id"], "b_id": it["b_id"],
                                           "a": task.output_text(it["a"]), "b": task.output_text(it["b"]),
                                           "p_a": v.p_a, "orders_agree": v.orders_agree} for it, v in zip(items, verdicts)],
                              judge=ctx.critic_name, method=ctx.critic.method, purpose="brio", run_id=ctx.run_id)
    return cands


def _curated(ctx: ObjectiveContext) -> TrainResult:
    """Critic-curated imitation: the teacher's candidates ranked by the critic (BRIO's ranking, reused), each one's
    meaning similarity to its input stored, then imitation from the warm start on each input's best faithful one."""
    if ctx.task.steps:
        raise DatasetError("curated: critic-curated imitation of a program of several predictors is not supported "
                           "yet; use ft, dpo or brio")
    cands = rank_teacher_outputs(ctx)
    texts = {i["input_id"]: ctx.task.input_text(i["text"]) for i in ctx.train_inputs}
    candidate_meaning(ctx.store, [{"candidate_id": c["candidate_id"], "input": texts[iid],
                                   "text": ctx.task.output_text(c["text"])} for iid, cs in cands.items() for c in cs])
    rows, dataset_id = sql_dataset(ctx.store, "sft", ctx.curated_sql, ctx.params(method=ctx.ranking_method),
                                   name="curated", run_id=ctx.run_id, task=ctx.task)
    if not rows:
        raise DatasetError("curated: no teacher candidate passes the meaning guard (meaning_floor "
                           f"{ctx.feedback.meaning_floor}); lower it, or see `python -m store query "
                           "\"SELECT * FROM similarities\"`")
    return _imitation(ctx, ctx.warm, rows, dataset_id, "curated", float(ctx.trainers.epochs))


def _brio(ctx: ObjectiveContext, base: TrainResult) -> TrainResult:
    from finetune.brio import train_brio

    rank_teacher_outputs(ctx)
    rows, dataset_id = sql_dataset(ctx.store, "brio", ctx.brio_sql, ctx.params(method=ctx.ranking_method),
                                   name="brio", run_id=ctx.run_id, task=ctx.task)
    groups: dict[str, dict] = {}
    for r in rows:
        g = groups.setdefault(r["input_id"], {"input": r["input"], "prompt": training_prompt(ctx.task, r["input"]),
                                              "candidates": []})
        g["candidates"].append(training_completion(ctx.task, r["text"]))
    usable = [dict(g, reference=g["candidates"][0]) for g in groups.values() if len(g["candidates"]) >= 2]
    if not usable:
        raise DatasetError("brio: no input has two or more ranked teacher candidates (the teacher wrote too few?)")
    cfg = replace(ctx.trainers.brio, base_model=base.path)
    cfg.output_dir = _out(ctx, "brio", cfg, base.checkpoint_id, dataset_id)
    return train_brio(usable, cfg, store=ctx.store, run_id=ctx.run_id, dataset_id=dataset_id)


def run_objective(name: str, ctx: ObjectiveContext) -> TrainResult:
    """Train `name` from the warm start; returns the final model (a merged full-model folder)."""
    if name == "ft":
        rows, dataset_id = sql_dataset(ctx.store, "sft", ctx.sft_sql, ctx.params(), name="ft", run_id=ctx.run_id,
                                       task=ctx.task)
        return _imitation(ctx, ctx.warm, rows, dataset_id, "ft", float(ctx.trainers.epochs))
    if name == "curated":
        return _curated(ctx)
    if name in ("sd", "dpo"):
        return _feedback_rounds(ctx, name, ctx.warm)
    if name == "brio":
        return _brio(ctx, ctx.warm)
    if name == "brio-dpo":
        return _feedback_rounds(ctx, "brio-dpo", _brio(ctx, ctx.warm))
    raise ValueError(f"unknown objective {name!r}; choose from {', '.join(OBJECTIVE_NAMES)} or all")


__all__ = ["DatasetError", "ObjectiveContext", "check_query", "default_sft_sql", "final_step_inputs", "run_objective",
           "sql_dataset"]
