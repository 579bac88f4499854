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

import argparse
import os
import shlex
import sys
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from programs.config import PROFILES, ConfigError, PipelineConfig, build_config  # noqa: E402
from programs.inputs import InputError, load_inputs  # noqa: E402
from programs.progress import console  # noqa: E402
from store.cli import ArgumentParser, code_version, entry_point, quiet_libraries  # noqa: E402


def select_inputs(cfg: PipelineConfig, task) -> dict[str, list[dict]]:
    """The run's inputs per split (input_id = hash of task + text, so a rerun finds the same rows)."""
    from store import stable_id

    rows = load_inputs(cfg.inputs, task)
    chosen: dict[str, list[dict]] = {}
    for split in ("train", cfg.eval_split):
        items = [r for r in rows if r["split"] == split]
        limit = cfg.split_limit(split)
        items = items[:limit] if limit else items
        if not items:
            raise InputError(f"the inputs have no {split!r} rows (add a 'split' column, or more rows)")
        chosen[split] = [{"input_id": stable_id("input", task.name, r["text"]), "text": r["text"], "split": split}
                         for r in items]
    if cfg.ood_inputs:
        from programs.inputs import load_file

        # the task's out-of-distribution file, else the inputs' rows whose split is 'ood'
        ood = load_file(task.ood_inputs) if task.ood_inputs else [r for r in rows if r["split"] == "ood"]
        if not ood:
            raise InputError(f"task {task.name} has no out-of-distribution inputs (no ood_inputs file, no rows "
                             "with split 'ood'); pass --ood 0")
        chosen["ood"] = [{"input_id": stable_id("input", task.name, r["text"]), "text": r["text"], "split": "ood"}
                         for r in ood[: cfg.ood_inputs]]
    return chosen


def store_inputs(store, cfg: PipelineConfig, task, chosen: dict[str, list[dict]]) -> None:
    source = cfg.inputs if cfg.inputs in ("bundled", "empathetic_dialogues") else str(Path(cfg.inputs).resolve())
    store.insert("inputs", [{**r, "task": task.name, "source": source, "created_at": datetime.now()}
                            for items in chosen.values() for r in items])


def _threads(cfg: PipelineConfig, spec: str) -> int:
    """Hosted models take parallel calls; an in-process model serves one at a time."""
    return 1 if spec.startswith("local/") else cfg.threads


LABELS = {"ft": "FT", "sd": "SD", "brio": "BRIO", "dpo": "DPO", "brio-dpo": "BRIO→DPO"}


def _warmstart_settings(cfg: PipelineConfig) -> dict:
    """The imitation warm start's training settings (`warmstart_epochs` / `warmstart_max_steps`, else the shared ones)."""
    return dict(lora=cfg.lora, epochs=cfg.warmstart_epochs or cfg.epochs,
                max_steps=cfg.max_steps if cfg.warmstart_max_steps is None else cfg.warmstart_max_steps,
                learning_rate=cfg.learning_rate, batch_size=cfg.batch_size, max_length=cfg.max_length, seed=cfg.seed)


def _objective_settings(cfg: PipelineConfig) -> dict:
    """Every objective's training settings after the warm start (`feedback_*`, else the shared ones)."""
    return dict(lora=cfg.lora, epochs=cfg.feedback_epochs or cfg.epochs,
                max_steps=cfg.max_steps if cfg.feedback_max_steps is None else cfg.feedback_max_steps,
                learning_rate=cfg.learning_rate, batch_size=cfg.batch_size, max_length=cfg.max_length, seed=cfg.seed,
                lr_scheduler_type=cfg.feedback_lr_scheduler_type, warmup_ratio=cfg.feedback_warmup_ratio)


def _warm_start_dir(out_dir: Path, icfg, dataset_id: str) -> Path:
    """The warm start's folder, named by its training settings and data but not by merging (a step after training,
    so adding an objective to a finished imitation run reuses its adapter). A folder named the earlier way, with
    merging in the name, that holds a finished run is used as it is (a store made then is not trained again)."""
    from finetune.imitate import MARKER, ImitationConfig, config_identity
    from store import stable_id

    key = {**config_identity(icfg), "output_dir": ImitationConfig.output_dir}  # earlier names hashed the default
    folder, earlier = (out_dir / f"student-ft-{stable_id({**key, 'merge_lora': merge}, dataset_id)[:10]}"
                       for merge in (False, True))
    return earlier if not (folder / MARKER).exists() and (earlier / MARKER).exists() else folder


def _checks(evaluations: list[dict]) -> None:
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
            done[key] = student_checks([it["text"] for it in items], [it["a"] for it in items],
                                       before=None if e["label"] == first else [before[it["input_id"]] for it in items],
                                       similarity=meaning_preservation)
        e["checks"] = done[key]


def _lift(store, models: list, evaluations: list[dict], *, critic, critic_lm, critic_name: str, inputs: list[dict],
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


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def _meaning(items: list[dict]) -> float:
    """Mean sentence-embedding similarity of input and student output (the bundled MiniLM)."""
    if not items:
        return float("nan")
    from metrics.similarity import meaning_preservation

    return _mean(meaning_preservation([it["text"] for it in items], [it["a"] for it in items]))


def _link_student(out_dir: Path, models: list, evaluations: list[dict], critic: str, split: str) -> str:
    """`<out>/student` points at the distilled student (the best by the critic on the evaluation split), so `local/<out>/student`
    is a model spec for any DSPy program."""
    scored = {e["label"]: e["wtr_prob"].value for e in evaluations
              if e["split"] == split and e["judge"] == critic and e["wtr_prob"].value == e["wtr_prob"].value}
    label, model = max(models, key=lambda m: scored.get(m[0], float("-inf")))
    link = out_dir / "student"
    target = os.path.relpath(Path(model.path).resolve(), out_dir.resolve())
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target, target_is_directory=True)
    return f"{model.path} ({label})"


def run(cfg: PipelineConfig, *, db: str, out: str, command: str) -> dict:
    """Run (or finish) the pipeline for `cfg`; returns the evaluation summary."""
    import dspy

    from finetune.evaluate import compare_producers, evaluate
    from finetune.feedback import FeedbackConfig
    from finetune.objectives import SFT_SQL, ObjectiveContext, check_query, run_objective, sql_dataset
    from programs.config import objectives
    from finetune.imitate import ImitationConfig, train_imitation
    from finetune.report import write_report
    from programs.adapter import LabeledAdapter
    from programs.critic import Critic
    from programs.lm import check_reachable, resolve_lm
    from programs.optimize import OptimizeSettings, optimize_teacher
    from programs.student import Student, training_prompt
    from programs.tasks import TaskError, get_task
    from programs.teach import teach
    from programs.teacher import Teacher
    from store import Store, stable_id, to_json
    from store.budget import Budget, BudgetExceeded
    from store.callback import install, trace_context

    try:
        task = get_task(cfg.task)
    except TaskError as e:
        raise ConfigError(str(e)) from e
    if cfg.critic_rubrics > len(task.rubrics):
        raise ConfigError(f"critic_rubrics = {cfg.critic_rubrics}, but task {task.name!r} has {len(task.rubrics)} "
                          "phrasing(s) of its rubric (critic_instruction, critic_rubrics)")
    chosen = select_inputs(cfg, task)  # bad inputs fail here, before any model is loaded
    teacher_lm = resolve_lm(cfg.teacher, temperature=cfg.teacher_temperature, top_p=cfg.teacher_top_p,
                            max_tokens=cfg.teacher_max_tokens, seed=cfg.seed)
    critic_lm = resolve_lm(cfg.critic, temperature=0.0, max_tokens=cfg.critic_max_tokens, seed=cfg.seed)
    judge_lm = resolve_lm(cfg.judge, temperature=0.0, max_tokens=cfg.critic_max_tokens, seed=cfg.seed) if cfg.judge else None
    reflection_lm = (resolve_lm(cfg.reflection_lm or cfg.teacher, temperature=0.7, max_tokens=512, seed=cfg.seed)
                     if cfg.optimize in ("mipro", "gepa") else None)
    from finetune.student import _resolve as resolve_student  # validates the student spec before any work

    resolve_student(cfg.student)
    check_reachable(teacher_lm)
    check_reachable(critic_lm)
    if judge_lm is not None:
        check_reachable(judge_lm)
    if cfg.reflection_lm and reflection_lm is not None:
        check_reachable(reflection_lm)

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
    store.insert("runs", [run_row], replace=True)
    out_dir = Path(out)
    console.print(f"run {run_id[:12]} · profile {cfg.profile} · store {db} · out {out_dir}", soft_wrap=True)
    try:
        with trace_context(run_id=run_id, stage="inputs"):
            store_inputs(store, cfg, task, chosen)
        teacher, teacher_name, optimized = Teacher(task, n=cfg.n_candidates), cfg.teacher, None
        if cfg.optimize:
            with trace_context(run_id=run_id, stage="optimize"):
                optimized = optimize_teacher(
                    store, task, settings=OptimizeSettings(cfg.optimize, train_size=cfg.optimize_inputs // 2,
                                                           val_size=cfg.optimize_inputs - cfg.optimize_inputs // 2,
                                                           trials=cfg.optimize_trials,
                                                           max_metric_calls=6 * cfg.optimize_trials, seed=cfg.seed),
                    n=cfg.n_candidates, teacher_name=cfg.teacher, teacher_lm=teacher_lm, critic_name=cfg.critic,
                    critic_lm=critic_lm, reflection_lm=reflection_lm, train=chosen["train"], run_id=run_id,
                    out_dir=out_dir)
            teacher, teacher_name = optimized.program, optimized.producer
        with trace_context(run_id=run_id, stage="teach"):
            taught = teach(store, teacher, teacher_lm, [r for rows in chosen.values() for r in rows], producer=teacher_name,
                           run_id=run_id, threads=_threads(cfg, cfg.teacher))
            if optimized is not None:  # the teacher as written, on the test inputs: the before of before/after
                teach(store, Teacher(task, n=cfg.n_candidates), teacher_lm, chosen[cfg.eval_split], producer=cfg.teacher,
                      run_id=run_id, threads=_threads(cfg, cfg.teacher))

        with trace_context(run_id=run_id, stage="imitate"):
            params = {"teacher": teacher_name, "inputs": [r["input_id"] for r in chosen["train"]]}
            rows, dataset_id = sql_dataset(store, "sft", cfg.sft_sql or SFT_SQL, params, name="imitation", run_id=run_id)
            if not rows:
                raise InputError("the teacher produced no usable training pairs (see failed calls: "
                                 "python -m store query \"SELECT error, response FROM lm_calls WHERE stage='teach'\")")
            pairs = [{"input": r["input"], "output": r["output"], "prompt": training_prompt(task, r["input"])}
                     for r in rows]
            wanted = objectives(cfg)
            icfg = ImitationConfig(base_model=cfg.student, merge_lora=False, instruction=task.student_instruction,
                                   **_warmstart_settings(cfg))
            icfg.output_dir = str(_warm_start_dir(out_dir, icfg, dataset_id))
            if cfg.merge_lora or wanted:  # the objectives start from a full model: merge after training
                icfg.merge_lora = True
            trained = train_imitation(pairs, icfg, store=store, run_id=run_id, dataset_id=dataset_id)

        critic = Critic(task, cfg.critic_settings(), max_tokens=cfg.critic_max_tokens)
        models = [("FT (imitation)" if not wanted else "warm start (imitation)", trained)]
        if wanted:
            ctx = ObjectiveContext(
                store=store, task=task, run_id=run_id, out_dir=out_dir, warm=trained, train_inputs=chosen["train"],
                teacher=teacher_name, critic=critic, critic_lm=critic_lm, critic_name=cfg.critic,
                train_settings=_objective_settings(cfg), feedback_every=cfg.feedback_every,
                learning_rates={"dpo": cfg.dpo_learning_rate, "brio": cfg.brio_learning_rate},
                dpo_settings=dict(beta=cfg.dpo_beta, loss_type=cfg.dpo_loss_type, loss_weights=cfg.dpo_loss_weights,
                                  label_smoothing=cfg.dpo_label_smoothing),
                feedback=FeedbackConfig(k=cfg.k_samples, method=cfg.sampling, pair_selection=cfg.pair_selection,
                                        temperature=cfg.sampling_temperature, top_p=cfg.sampling_top_p,
                                        anchor=cfg.pair_anchor, min_confidence=cfg.min_confidence,
                                        both_orders_agree=cfg.both_orders_agree,
                                        length_lo=cfg.length_band[0], length_hi=cfg.length_band[1], seed=cfg.seed,
                                        max_new_tokens=cfg.student_max_tokens),
                threads=_threads(cfg, cfg.critic), **({"sft_sql": cfg.sft_sql} if cfg.sft_sql else {}),
                **({"pairs_sql": cfg.pairs_sql} if cfg.pairs_sql else {}))
            for name in wanted:
                with trace_context(run_id=run_id, stage=name), dspy.context(lm=critic_lm):
                    models.append((LABELS[name], run_objective(name, ctx)))

        with trace_context(run_id=run_id, stage="evaluate"):
            evaluated = chosen[cfg.eval_split]
            splits = {cfg.eval_split: evaluated}
            if chosen.get("ood"):
                splits["ood"] = chosen["ood"]
            judges = [(cfg.critic, critic_lm)] + ([(cfg.judge, judge_lm)] if judge_lm is not None else [])
            evaluations = []
            for label, model in models:
                student_lm = resolve_lm(f"local/{Path(model.path).resolve()}", temperature=0.0,
                                        max_tokens=cfg.student_max_tokens)
                for split, items in splits.items():
                    for judge_name, lm in judges:
                        r = evaluate(store, student=Student(task), student_lm=student_lm, student_name=model.checkpoint_id,
                                     checkpoint_id=model.checkpoint_id, critic=critic, critic_lm=lm,
                                     critic_name=judge_name, inputs=items, teacher_name=teacher_name, split=split,
                                     run_id=run_id, threads=_threads(cfg, judge_name))
                        evaluations.append({"label": label, "judge": judge_name, "split": split, **r,
                                            "meaning": _meaning(r["items"]), "log_history": model.log_history})

        _checks(evaluations)
        lift = []
        if len(models) > 1:
            with trace_context(run_id=run_id, stage="evaluate"):
                lift = _lift(store, models, evaluations, critic=critic, critic_lm=critic_lm, critic_name=cfg.critic,
                             inputs=evaluated, split=cfg.eval_split, run_id=run_id, threads=_threads(cfg, cfg.critic))
        best = _link_student(out_dir, models, evaluations, cfg.critic, cfg.eval_split)
        teacher_quality = None
        if optimized is not None:
            with trace_context(run_id=run_id, stage="evaluate"):
                r = compare_producers(store, critic=critic, critic_lm=critic_lm, critic_name=cfg.critic,
                                      inputs=evaluated, producer=teacher_name, reference=cfg.teacher, split=cfg.eval_split,
                                      run_id=run_id, threads=_threads(cfg, cfg.critic))
            teacher_quality = {"optimizer": cfg.optimize, "program": str(optimized.path), "producer": teacher_name,
                               "val_before": optimized.baseline_score, "val_after": optimized.score, **r}
        first = evaluations[0]
        examples = [{"input": it["text"], "teacher": it["b"], "student": it["a"], "p": p}
                    for it, p in zip(first["items"], first["p_student"])][:8]
        usage = store.query("SELECT * FROM usage_per_stage WHERE run_id = ? ORDER BY first_call_at, stage, model",
                            [run_id])
        report = write_report(
            out_dir, config=asdict(cfg), command=command, db=db, log_history=trained.log_history, examples=examples,
            counts={"train_inputs": len(chosen["train"]), f"{cfg.eval_split}_inputs": len(evaluated), "pairs": len(pairs)},
            evaluations=[dict(e, length_ratio=_mean(e["length_ratios"])) for e in evaluations], usage=usage,
            teacher_quality=teacher_quality, lift=lift,
        )
        result = first
        store.insert("runs", [{**run_row, "status": "finished", "finished_at": datetime.now()}], replace=True)
    except KeyboardInterrupt:
        store.insert("runs", [{**run_row, "status": "interrupted", "finished_at": datetime.now()}], replace=True)
        raise
    except BudgetExceeded:
        store.insert("runs", [{**run_row, "status": "stopped", "finished_at": datetime.now()}], replace=True)
        raise
    except BaseException:
        store.insert("runs", [{**run_row, "status": "failed", "finished_at": datetime.now()}], replace=True)
        raise
    finally:
        store.close()  # flush, then checkpoint: one self-contained file when the command ends
    summary = {"run_id": run_id, "teach": taught, "checkpoint": trained.path, "report": str(report),
               "wtr_prob": result["wtr_prob"], "wtr_decision": result["wtr_decision"],
               "models": {label: model.path for label, model in models}}
    for d in lift:
        console.print(f"[bold]{d['label']} vs {d['baseline']}[/], {cfg.eval_split}, judge {cfg.critic}: paired difference "
                      f"{d['paired_prob'].signed()} points of WTR (mean P) · {d['paired_decision'].signed()} (decisions) "
                      f"· direct comparison WTR {d['direct_prob']}", highlight=False, soft_wrap=True)
    for e in evaluations:
        console.print(f"[bold]{e['label']}[/] vs teacher, {e['split']}, judge {e['judge']}: "
                      f"WTR mean P {e['wtr_prob']} · decisions {e['wtr_decision']}", highlight=False, soft_wrap=True)
    if teacher_quality is not None:
        console.print(f"optimized teacher ({cfg.optimize}) vs teacher as written, test, judge {cfg.critic}: "
                      f"WTR mean P {teacher_quality['wtr_prob']} · decisions {teacher_quality['wtr_decision']}",
                      highlight=False, soft_wrap=True)
    console.print(f"student: {out_dir / 'student'} -> {best} (use it as a model: local/{out_dir / 'student'})\n"
                  f"report:  {report}", soft_wrap=True)
    logged = callback.seconds + store.flush_seconds_total
    share = 100 * logged / (time.monotonic() - started)
    console.print(f"store: logging took {logged:.2f}s, {share:.2f}% of this run", soft_wrap=True)
    return summary


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m programs.compile", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default=None, choices=list(PROFILES), help="preset sizes and models (default: default)")
    p.add_argument("--config", metavar="FILE.toml", help="config file; flags override it")
    p.add_argument("--limit", type=int, metavar="N", help="use at most N train and N test inputs")
    p.add_argument("--db", default=None, help="DuckDB store (default: $CRITIC_DISTILL_DB or ./traces.duckdb)")
    p.add_argument("--out", default="out", help="output folder for checkpoints and the report (default: out)")
    p.add_argument("--task", help="humor (default) | formal | a task .toml file | package.module:ATTR | file.py:ATTR "
                                  "(docs/tasks.md)")
    p.add_argument("--inputs", help="bundled | empathetic_dialogues | a .txt/.jsonl/.csv/.parquet file")
    p.add_argument("--teacher", metavar="SPEC", help="model spec: local/<name|path> or a LiteLLM string")
    p.add_argument("--critic", metavar="SPEC", help="model spec for the critic")
    p.add_argument("--student", metavar="SPEC", help="embedded student name, model folder, or hub id")
    p.add_argument("--epochs", type=float)
    p.add_argument("--max-steps", type=int, dest="max_steps")
    p.add_argument("--full-finetune", action="store_true", help="train all weights instead of a LoRA adapter")
    p.add_argument("--merge-lora", action="store_true", help="also save the LoRA student merged into its base")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="parallel calls to hosted models (default 4; local models: 1)")
    c = p.add_argument_group("the critic (docs/critic.md; config keys critic_*)")
    c.add_argument("--critic-mode", dest="critic_mode", choices=["choice-first", "reason-first"],
                   help="choice-first: read the choice alone (default); reason-first: the paper's reason, then choice")
    c.add_argument("--critic-rubrics", dest="critic_rubrics", type=int, metavar="N",
                   help="average the critic over N phrasings of the task's rubric")
    g = p.add_argument_group("feedback distillation (after the imitation warm start)")
    g.add_argument("--objective", help="dpo (default) | none (imitation only) | ft | sd | brio | brio-dpo | all | "
                                       "a comma list")
    g.add_argument("--feedback-every", type=float, dest="feedback_every", metavar="K",
                   help="sample fresh pairs from the current student every K epochs (default: feedback once)")
    g.add_argument("--k", type=int, dest="k_samples", help="candidates sampled per input (default 6)")
    g.add_argument("--sampling", choices=["nucleus", "diverse_beam"])
    g.add_argument("--pair-selection", dest="pair_selection", choices=["edit", "embedding"])
    g.add_argument("--sft-sql", dest="sft_sql", metavar="SQL",
                   help="imitation/ft data: a query returning input, output ($teacher, $inputs available)")
    g.add_argument("--pairs-sql", dest="pairs_sql", metavar="SQL",
                   help="DPO data: a query returning input, chosen, rejected ($producer, $judge, $inputs available)")
    o = p.add_argument_group("optimization of the teacher (DSPy, the critic as metric), before it teaches")
    o.add_argument("--optimize", choices=["bootstrap", "mipro", "gepa"],
                   help="BootstrapFewShot, MIPROv2 or GEPA; the program is saved as program-*.json and reused")
    o.add_argument("--reflection-lm", dest="reflection_lm", metavar="SPEC",
                   help="model that proposes instructions for MIPROv2/GEPA (default: the teacher)")
    o.add_argument("--optimize-inputs", type=int, dest="optimize_inputs", metavar="N",
                   help="train inputs the optimizer sees (default 16: half train, half validation)")
    o.add_argument("--optimize-trials", type=int, dest="optimize_trials", metavar="N",
                   help="MIPROv2 trials; GEPA gets 6 critic calls per trial (default 4)")
    e = p.add_argument_group("evaluation")
    e.add_argument("--eval-split", dest="eval_split", choices=["test", "dev"],
                   help="the split students are evaluated on: test (default) | dev, to choose settings without "
                        "looking at test")
    e.add_argument("--judge", metavar="SPEC", help="a second, independent judge")
    e.add_argument("--ood", type=int, dest="ood_inputs", metavar="N", help="also evaluate on N bundled OOD inputs")
    b = p.add_argument_group("budget (this command's new LM calls; answers already in the store are free)")
    b.add_argument("--max-calls", type=int, dest="max_calls", metavar="N",
                   help="stop before the LM call that would make more than N; rerun with more to continue (exit 3)")
    b.add_argument("--max-cost", type=float, dest="max_cost", metavar="USD",
                   help="stop before the spend could pass USD, as the provider prices the calls (local models: "
                        "free); rerun with more to continue (exit 3)")
    return p


def config_overrides(args: argparse.Namespace) -> dict:
    """The config keys the command line sets (None: not given)."""
    overrides = {"limit": args.limit, "inputs": args.inputs, "teacher": args.teacher, "critic": args.critic,
                 "student": args.student, "epochs": args.epochs, "max_steps": args.max_steps, "seed": args.seed,
                 "threads": args.threads, "objective": args.objective, "feedback_every": args.feedback_every,
                 "k_samples": args.k_samples, "sampling": args.sampling, "pair_selection": args.pair_selection,
                 "sft_sql": args.sft_sql, "pairs_sql": args.pairs_sql, "judge": args.judge,
                 "ood_inputs": args.ood_inputs, "task": args.task, "max_calls": args.max_calls,
                 "max_cost": args.max_cost, "optimize": args.optimize, "reflection_lm": args.reflection_lm,
                 "optimize_inputs": args.optimize_inputs, "optimize_trials": args.optimize_trials,
                 "critic_mode": args.critic_mode, "critic_rubrics": args.critic_rubrics,
                 "eval_split": args.eval_split}
    if args.full_finetune:
        overrides["lora"] = False
    if args.merge_lora:
        overrides["merge_lora"] = True
    return overrides


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
