"""The whole pipeline in one command: inputs -> teach -> imitate -> evaluate, every step recorded in the store.

    python -m programs.compile                     # default profile: 1.5B teacher and critic, SmolLM2 student
    python -m programs.compile --profile tiny      # the 0.5B teacher and critic, a few inputs (tests, first look)
    python -m programs.compile --limit 8 --db my.duckdb --out out/

Rerunning the same command reuses everything already done (LM calls are answered from the store's cache; rows have
stable ids); a run killed at any point finishes on the next invocation with nothing lost or duplicated.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
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

EXIT_USAGE = 2


def _code_version() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        if out.returncode == 0:
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("critic-distill")
    except PackageNotFoundError:
        return "unknown"


def select_inputs(cfg: PipelineConfig, task) -> dict[str, list[dict]]:
    """The run's inputs per split (input_id = hash of task + text, so a rerun finds the same rows)."""
    from store import stable_id

    rows = load_inputs(cfg.inputs, task)
    chosen: dict[str, list[dict]] = {}
    for split in ("train", "test"):
        items = [r for r in rows if r["split"] == split]
        limit = cfg.split_limit(split)
        items = items[:limit] if limit else items
        if not items:
            raise InputError(f"the inputs have no {split!r} rows (add a 'split' column, or more rows)")
        chosen[split] = [{"input_id": stable_id("input", task.name, r["text"]), "text": r["text"], "split": split}
                         for r in items]
    if cfg.ood_inputs:
        from programs.inputs import load_file
        from programs.tasks import DATA

        ood = load_file(DATA / "ood_inputs.jsonl")[: cfg.ood_inputs]
        chosen["ood"] = [{"input_id": stable_id("input", task.name, r["text"]), "text": r["text"], "split": "ood"}
                         for r in ood]
    return chosen


def store_inputs(store, cfg: PipelineConfig, task, chosen: dict[str, list[dict]]) -> None:
    source = cfg.inputs if cfg.inputs in ("bundled", "empathetic_dialogues") else str(Path(cfg.inputs).resolve())
    store.insert("inputs", [{**r, "task": task.name, "source": source, "created_at": datetime.now()}
                            for items in chosen.values() for r in items])


def _threads(cfg: PipelineConfig, spec: str) -> int:
    """Hosted models take parallel calls; an in-process model serves one at a time."""
    return 1 if spec.startswith("local/") else cfg.threads


LABELS = {"ft": "FT", "sd": "SD", "brio": "BRIO", "dpo": "DPO", "brio-dpo": "BRIO→DPO"}


def _train_settings(cfg: PipelineConfig) -> dict:
    return dict(lora=cfg.lora, epochs=cfg.epochs, max_steps=cfg.max_steps, learning_rate=cfg.learning_rate,
                batch_size=cfg.batch_size, max_length=cfg.max_length, seed=cfg.seed)


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else float("nan")


def _meaning(items: list[dict]) -> float:
    """Mean sentence-embedding similarity of input and student output (the bundled MiniLM)."""
    if not items:
        return float("nan")
    from metrics.similarity import meaning_preservation

    return _mean(meaning_preservation([it["text"] for it in items], [it["a"] for it in items]))


def run(cfg: PipelineConfig, *, db: str, out: str, command: str) -> dict:
    """Run (or finish) the pipeline for `cfg`; returns the evaluation summary."""
    import dspy

    from finetune.evaluate import evaluate
    from finetune.feedback import FeedbackConfig
    from finetune.objectives import SFT_SQL, ObjectiveContext, check_query, run_objective, sql_dataset
    from programs.config import objectives
    from finetune.imitate import ImitationConfig, train_imitation
    from finetune.report import write_report
    from programs.adapter import LabeledAdapter
    from programs.critic import Critic
    from programs.lm import check_reachable, resolve_lm
    from programs.student import Student, training_prompt
    from programs.tasks import get_task
    from programs.teach import teach
    from programs.teacher import Teacher
    from store import Store, stable_id, to_json
    from store.callback import install, trace_context

    try:
        task = get_task(cfg.task)
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from e
    chosen = select_inputs(cfg, task)  # bad inputs fail here, before any model is loaded
    teacher_lm = resolve_lm(cfg.teacher, temperature=cfg.teacher_temperature, top_p=cfg.teacher_top_p,
                            max_tokens=cfg.teacher_max_tokens, seed=cfg.seed)
    critic_lm = resolve_lm(cfg.critic, temperature=0.0, max_tokens=cfg.critic_max_tokens, seed=cfg.seed)
    judge_lm = resolve_lm(cfg.judge, temperature=0.0, max_tokens=cfg.critic_max_tokens, seed=cfg.seed) if cfg.judge else None
    from finetune.student import _resolve as resolve_student  # validates the student spec before any work

    resolve_student(cfg.student)
    check_reachable(teacher_lm)
    check_reachable(critic_lm)
    if judge_lm is not None:
        check_reachable(judge_lm)

    started = time.monotonic()
    store = Store(db)
    callback = install(store)
    dspy.configure(adapter=LabeledAdapter())
    run_id = stable_id("run", cfg.identity())
    run_row = {"run_id": run_id, "started_at": datetime.now(), "status": "running", "command": command,
               "profile": cfg.profile, "config": to_json(asdict(cfg)), "code_version": _code_version()}
    params = {"teacher": cfg.teacher, "judge": cfg.critic, "producer": "", "inputs": []}
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
        with trace_context(run_id=run_id, stage="teach"):
            teacher = Teacher(task, n=cfg.n_candidates)
            taught = teach(store, teacher, teacher_lm, [r for rows in chosen.values() for r in rows], producer=cfg.teacher,
                           run_id=run_id, threads=_threads(cfg, cfg.teacher))

        with trace_context(run_id=run_id, stage="imitate"):
            params = {"teacher": cfg.teacher, "inputs": [r["input_id"] for r in chosen["train"]]}
            rows, dataset_id = sql_dataset(store, "sft", cfg.sft_sql or SFT_SQL, params, name="imitation", run_id=run_id)
            if not rows:
                raise InputError("the teacher produced no usable training pairs (see failed calls: "
                                 "python -m store query \"SELECT error, response FROM lm_calls WHERE stage='teach'\")")
            pairs = [{"input": r["input"], "output": r["output"], "prompt": training_prompt(task, r["input"])}
                     for r in rows]
            wanted = objectives(cfg)
            icfg = ImitationConfig(base_model=cfg.student, merge_lora=cfg.merge_lora or bool(wanted),
                                   instruction=task.student_instruction, **_train_settings(cfg))
            icfg.output_dir = str(out_dir / f"student-ft-{stable_id(asdict(icfg), dataset_id)[:10]}")
            trained = train_imitation(pairs, icfg, store=store, run_id=run_id, dataset_id=dataset_id)

        critic = Critic(task, max_tokens=cfg.critic_max_tokens)
        models = [("FT (imitation)" if not wanted else "warm start (imitation)", trained)]
        if wanted:
            ctx = ObjectiveContext(
                store=store, task=task, run_id=run_id, out_dir=out_dir, warm=trained, train_inputs=chosen["train"],
                teacher=cfg.teacher, critic=critic, critic_lm=critic_lm, critic_name=cfg.critic,
                train_settings=_train_settings(cfg), feedback_every=cfg.feedback_every,
                feedback=FeedbackConfig(k=cfg.k_samples, method=cfg.sampling, pair_selection=cfg.pair_selection,
                                        length_lo=cfg.length_band[0], length_hi=cfg.length_band[1], seed=cfg.seed,
                                        max_new_tokens=cfg.student_max_tokens),
                threads=_threads(cfg, cfg.critic), **({"sft_sql": cfg.sft_sql} if cfg.sft_sql else {}),
                **({"pairs_sql": cfg.pairs_sql} if cfg.pairs_sql else {}))
            for name in wanted:
                with trace_context(run_id=run_id, stage=name), dspy.context(lm=critic_lm):
                    models.append((LABELS[name], run_objective(name, ctx)))

        with trace_context(run_id=run_id, stage="evaluate"):
            splits = {"test": chosen["test"]}
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
                                     critic_name=judge_name, inputs=items, teacher_name=cfg.teacher, split=split,
                                     run_id=run_id, threads=_threads(cfg, judge_name))
                        evaluations.append({"label": label, "judge": judge_name, "split": split, **r,
                                            "meaning": _meaning(r["items"]), "log_history": model.log_history})

        first = evaluations[0]
        examples = [{"input": it["text"], "teacher": it["b"], "student": it["a"], "p": p}
                    for it, p in zip(first["items"], first["p_student"])][:8]
        report = write_report(
            out_dir, config=asdict(cfg), command=command, db=db, log_history=trained.log_history, examples=examples,
            counts={"train_inputs": len(chosen["train"]), "test_inputs": len(chosen["test"]), "pairs": len(pairs)},
            evaluations=[dict(e, length_ratio=_mean(e["length_ratios"])) for e in evaluations],
        )
        result = first
        store.insert("runs", [{**run_row, "status": "finished", "finished_at": datetime.now()}], replace=True)
    except KeyboardInterrupt:
        store.insert("runs", [{**run_row, "status": "interrupted", "finished_at": datetime.now()}], replace=True)
        raise
    except BaseException:
        store.insert("runs", [{**run_row, "status": "failed", "finished_at": datetime.now()}], replace=True)
        raise
    finally:
        store.flush()
    summary = {"run_id": run_id, "teach": taught, "checkpoint": trained.path, "report": str(report),
               "wtr_prob": result["wtr_prob"], "wtr_decision": result["wtr_decision"],
               "models": {label: model.path for label, model in models}}
    for e in evaluations:
        console.print(f"[bold]{e['label']}[/] vs teacher, {e['split']}, judge {e['judge']}: "
                      f"WTR mean P {e['wtr_prob']} · decisions {e['wtr_decision']}", highlight=False, soft_wrap=True)
    console.print(f"student: {trained.path}\nreport:  {report}", soft_wrap=True)
    logged = callback.seconds + store.flush_seconds_total
    share = 100 * logged / (time.monotonic() - started)
    console.print(f"store: logging took {logged:.2f}s, {share:.2f}% of this run", soft_wrap=True)
    return summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m programs.compile", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default=None, choices=list(PROFILES), help="preset sizes and models (default: default)")
    p.add_argument("--config", metavar="FILE.toml", help="config file; flags override it")
    p.add_argument("--limit", type=int, metavar="N", help="use at most N train and N test inputs")
    p.add_argument("--db", default=None, help="DuckDB store (default: $CRITIC_DISTILL_DB or ./traces.duckdb)")
    p.add_argument("--out", default="out", help="output folder for checkpoints and the report (default: out)")
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
    g = p.add_argument_group("feedback distillation (after the imitation warm start)")
    g.add_argument("--objective", help="none (default) | ft | sd | brio | dpo | brio-dpo | all | a comma list")
    g.add_argument("--feedback-every", type=float, dest="feedback_every", metavar="K",
                   help="sample fresh pairs from the current student every K epochs (default: feedback once)")
    g.add_argument("--k", type=int, dest="k_samples", help="candidates sampled per input (default 6)")
    g.add_argument("--sampling", choices=["nucleus", "diverse_beam"])
    g.add_argument("--pair-selection", dest="pair_selection", choices=["edit", "embedding"])
    g.add_argument("--sft-sql", dest="sft_sql", metavar="SQL",
                   help="imitation/ft data: a query returning input, output ($teacher, $inputs available)")
    g.add_argument("--pairs-sql", dest="pairs_sql", metavar="SQL",
                   help="DPO data: a query returning input, chosen, rejected ($producer, $judge, $inputs available)")
    e = p.add_argument_group("evaluation")
    e.add_argument("--judge", metavar="SPEC", help="a second, independent judge")
    e.add_argument("--ood", type=int, dest="ood_inputs", metavar="N", help="also evaluate on N bundled OOD inputs")
    return p


def _quiet_libraries() -> None:
    """Our own progress bars tell the story; the libraries' bars and deprecation chatter would drown them."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers|trl|peft|torch")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for name in ("LiteLLM", "litellm", "httpx", "dspy"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _quiet_libraries()
    from programs.lm import ModelSpecError
    from programs.models import ModelError
    from store import Store, StoreError  # noqa: F401

    overrides = {"limit": args.limit, "inputs": args.inputs, "teacher": args.teacher, "critic": args.critic,
                 "student": args.student, "epochs": args.epochs, "max_steps": args.max_steps, "seed": args.seed,
                 "threads": args.threads, "objective": args.objective, "feedback_every": args.feedback_every,
                 "k_samples": args.k_samples, "sampling": args.sampling, "pair_selection": args.pair_selection,
                 "sft_sql": args.sft_sql, "pairs_sql": args.pairs_sql, "judge": args.judge,
                 "ood_inputs": args.ood_inputs}
    if args.full_finetune:
        overrides["lora"] = False
    if args.merge_lora:
        overrides["merge_lora"] = True
    command = "python -m programs.compile " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    from store.db import default_path

    try:
        from finetune.imitate import TrainingError
        from finetune.objectives import DatasetError
        from finetune.student import StudentError

        cfg = build_config(args.profile or "default", args.config, overrides)
        run(cfg, db=args.db or default_path(), out=args.out, command=command)
    except (ConfigError, InputError, ModelSpecError, ModelError, StoreError, TrainingError, StudentError,
            DatasetError) as e:
        console.print(f"[red]error:[/] {e}", soft_wrap=True, highlight=False)
        usage = (ConfigError, InputError, ModelSpecError, ModelError, StudentError, DatasetError)
        return EXIT_USAGE if isinstance(e, usage) else 1
    except KeyboardInterrupt:
        console.print("interrupted: rerun the same command to finish (nothing done so far is lost)")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
