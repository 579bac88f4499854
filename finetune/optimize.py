"""Optimize the teacher program with DSPy's optimizers, the critic as the metric (`--optimize`).

BootstrapFewShot keeps the teacher's own outputs that the critic passes as demos; MIPROv2 searches instructions and
demos against the critic's score; GEPA rewrites the instruction from the critic's reasons (its textual feedback).
The optimized program is saved as JSON and loaded on rerun; every candidate program's score is a row in the store.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import dspy

from metrics.critic_metric import CriticFeedback, CriticScore, CriticThreshold
from programs.progress import console
from programs.tasks import Task
from programs.teacher import Teacher
from store import Store, stable_id, to_json
from store.errors import UserError

OPTIMIZERS = ("bootstrap", "mipro", "gepa")


class OptimizeError(UserError):
    """A bad optimization setting: one line for the user."""


@dataclass
class OptimizeSettings:
    optimizer: str
    train_size: int = 8  # train inputs the optimizer learns from
    val_size: int = 8  # train inputs it scores candidates on (disjoint from the above where there are enough)
    trials: int = 4  # MIPROv2 trials
    candidates: int = 2  # MIPROv2 instruction/demo candidates
    max_metric_calls: int = 24  # GEPA's budget
    max_demos: int = 2  # bootstrapped demos per predictor
    threshold: float = 0.5  # BootstrapFewShot keeps a trace when the critic's score reaches this
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def key(self, *parts: Any) -> str:
        return stable_id("optimize", self.__dict__, *parts)


@dataclass
class Optimized:
    program: Teacher
    path: Path
    program_key: str
    producer: str  # the name the optimized teacher's candidates carry in the store
    baseline_score: float | None
    score: float | None
    loaded: bool


def examples(items: list[dict]) -> list[dspy.Example]:
    return [dspy.Example(text=it["text"], **({"reference": it["reference"]} if it.get("reference") else {}))
            .with_inputs("text") for it in items]


def _instructions(program: dspy.Module) -> str:
    return "\n---\n".join(p.signature.instructions for _, p in program.named_predictors())


def _n_demos(program: dspy.Module) -> int:
    return sum(len(p.demos) for _, p in program.named_predictors())


def _evaluate(program: dspy.Module, valset: list[dspy.Example], metric: CriticScore) -> float:
    result = dspy.Evaluate(devset=valset, metric=metric, num_threads=1, display_progress=False,
                           provide_traceback=False, failure_score=0.0)(program)
    return float(result.score) / 100.0


def optimize_teacher(store: Store, task: Task, *, settings: OptimizeSettings, n: int, teacher_name: str,
                     teacher_lm: dspy.LM, critic_name: str, critic_lm: dspy.LM, reflection_lm: dspy.LM | None,
                     train: list[dict], run_id: str, out_dir: Path) -> Optimized:
    """Optimize (or load the saved) teacher for `train` inputs; returns the program and where it lives."""
    if settings.optimizer not in OPTIMIZERS:
        raise OptimizeError(f"unknown optimizer {settings.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if len(train) < 2:
        raise OptimizeError("optimization needs at least 2 train inputs")
    trainset, valset = _split(examples(train), settings)
    key = settings.key(task.name, teacher_name, critic_name, n, [e.text for e in trainset + valset],
                       getattr(reflection_lm, "model", None))
    path = out_dir / f"program-{settings.optimizer}-{key[:10]}.json"
    producer = f"{teacher_name}+{settings.optimizer}-{key[:8]}"
    program = Teacher(task, n=n)
    if path.exists():
        program.load(str(path))
        row = store.query("SELECT score FROM optimization_trials WHERE program_key = ? AND chosen", [key])
        base = store.query("SELECT score FROM optimization_trials WHERE program_key = ? AND trial = 0", [key])
        console.print(f"optimize: loaded {path}", soft_wrap=True)
        return Optimized(program, path, key, producer, base[0]["score"] if base else None,
                         row[0]["score"] if row else None, loaded=True)

    score = CriticScore(task, critic_lm)
    console.print(f"optimize: {settings.optimizer} on {len(trainset)} train / {len(valset)} val inputs, "
                  f"critic {critic_name}", soft_wrap=True)
    with dspy.context(lm=teacher_lm):
        baseline = _evaluate(program, valset, score)
        trials: list[dict] = [{"trial": 0, "score": baseline, "program": program, "note": "unoptimized"}]
        if settings.optimizer == "bootstrap":
            optimizer = dspy.BootstrapFewShot(metric=CriticThreshold(score, settings.threshold),
                                              max_bootstrapped_demos=settings.max_demos, max_labeled_demos=0,
                                              max_rounds=1)
            best = optimizer.compile(Teacher(task, n=n), trainset=trainset)
            trials.append({"trial": 1, "score": _evaluate(best, valset, score), "program": best, "note": "bootstrapped"})
        elif settings.optimizer == "mipro":
            optimizer = dspy.MIPROv2(metric=score, prompt_model=reflection_lm or teacher_lm, task_model=teacher_lm,
                                     auto=None, num_candidates=settings.candidates, num_threads=1,
                                     max_bootstrapped_demos=settings.max_demos, max_labeled_demos=0,
                                     seed=settings.seed, verbose=False, **settings.extra)
            # the proposer's program- and data-summaries cost many long calls that small local models cannot use
            best = optimizer.compile(Teacher(task, n=n), trainset=trainset, valset=valset, num_trials=settings.trials,
                                     minibatch=len(valset) > 35, program_aware_proposer=False,
                                     data_aware_proposer=False)
            for i, c in enumerate(getattr(best, "candidate_programs", []) or [], start=1):
                trials.append({"trial": i, "score": float(c["score"]) / 100.0 if c["score"] > 1 else float(c["score"]),
                               "program": c["program"], "note": "full eval" if c.get("full_eval") else "minibatch"})
        else:
            if reflection_lm is None:
                raise OptimizeError("GEPA needs a reflection LM (--reflection-lm SPEC)")
            optimizer = dspy.GEPA(metric=CriticFeedback(score), reflection_lm=reflection_lm,
                                  max_metric_calls=settings.max_metric_calls, num_threads=1, track_stats=True,
                                  seed=settings.seed, use_merge=False, reflection_minibatch_size=min(3, len(trainset)),
                                  **settings.extra)
            best = optimizer.compile(Teacher(task, n=n), trainset=trainset, valset=valset)
            details = getattr(best, "detailed_results", None)
            if details is not None:
                for i, (cand, s) in enumerate(zip(details.candidates, details.val_aggregate_scores), start=1):
                    trials.append({"trial": i, "score": float(s), "program": cand,
                                   "note": f"parents {details.parents[i - 1]}"})
    chosen = max(trials, key=lambda t: (t["score"], t["trial"]))
    program = chosen["program"]
    _record(store, trials, chosen, settings, key, run_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    console.print(f"optimize: critic score {baseline:.3f} unoptimized -> {chosen['score']:.3f} "
                  f"(trial {chosen['trial']} of {len(trials) - 1}); saved {path}", soft_wrap=True)
    return Optimized(program, path, key, producer, baseline, chosen["score"], loaded=False)


def _split(data: list[dspy.Example], s: OptimizeSettings) -> tuple[list[dspy.Example], list[dspy.Example]]:
    """Disjoint train/val when there are enough inputs; otherwise they share (a tiny run still optimizes)."""
    if len(data) >= s.train_size + s.val_size:
        return data[:s.train_size], data[s.train_size:s.train_size + s.val_size]
    half = max(1, len(data) // 2)
    return data[:half], data[half:] or data[:half]


def _record(store: Store, trials: list[dict], chosen: dict, s: OptimizeSettings, key: str, run_id: str) -> None:
    now = datetime.now()
    store.insert("optimization_trials", [{
        "trial_id": stable_id("trial", key, t["trial"]), "program_key": key, "run_id": run_id,
        "optimizer": s.optimizer, "trial": t["trial"], "score": t["score"], "chosen": t is chosen, "note": t["note"],
        "instructions": _instructions(t["program"]), "n_demos": _n_demos(t["program"]),
        "program": to_json(_state(t["program"])), "settings": to_json(s.__dict__), "created_at": now,
    } for t in trials], replace=True)


def _state(program: dspy.Module) -> Any:
    try:
        return json.loads(json.dumps(program.dump_state(), default=str))
    except Exception:  # noqa: BLE001 - the instructions column still says what the program was
        return None
