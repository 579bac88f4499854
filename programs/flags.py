"""The flags of `python -m programs.compile` and the config keys they set (programs/config.py: PipelineConfig)."""

from __future__ import annotations

import argparse
from dataclasses import fields

from programs.config import OFF, PROFILES, PipelineConfig
from store.cli import ArgumentParser


# the first line of programs/compile.py's docstring (importing it here would make a cycle)
DESCRIPTION = "The whole pipeline in one command: inputs -> teach -> imitate -> feedback -> evaluate, every step recorded."


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m programs.compile", description=DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default=None, choices=list(PROFILES), help="preset sizes and models (default: default)")
    p.add_argument("--config", metavar="FILE.toml", help="config file; flags override it")
    p.add_argument("--limit", type=int, metavar="N", help="use at most N train and N evaluation (test or dev) inputs")
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
    p.add_argument("--full-finetune", dest="lora", action="store_const", const=False, default=None,
                   help="train all weights instead of a LoRA adapter")
    p.add_argument("--merge-lora", dest="merge_lora", action="store_const", const=True, default=None,
                   help="also save the LoRA student merged into its base")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="parallel calls to hosted models (default 4; local models: 1)")
    c = p.add_argument_group("the critic (docs/critic.md; config keys critic_*)")
    c.add_argument("--critic-mode", dest="critic_mode", choices=["choice-first", "reason-first"],
                   help="choice-first: read the choice alone (default); reason-first: the paper's reason, then choice")
    c.add_argument("--critic-rubrics", dest="critic_rubrics", type=int, metavar="N",
                   help="average the critic over N phrasings of the task's rubric")
    g = p.add_argument_group("feedback distillation (after the imitation warm start)")
    g.add_argument("--objective", help="the task's default (humor: curated; formal and your own tasks: dpo) | none "
                                       "(imitation only) | dpo | ft | curated | sd | brio | brio-dpo | all | a comma list")
    g.add_argument("--meaning-floor", type=_cosine_or_off, dest="meaning_floor", metavar="COS|off",
                   help="guard: candidates less similar in meaning to their input never enter a pair or curated data "
                        "(the task's default: humor 0.75, others off)")
    g.add_argument("--meaning-margin", type=_cosine_or_off, dest="meaning_margin", metavar="COS|off",
                   help="guard: drop a pair whose chosen side loses more meaning than this to the rejected one")
    g.add_argument("--length-control", action=argparse.BooleanOptionalAction, dest="length_control", default=None,
                   help="guard: choose the sides by the critic's verdicts with its fitted length preference removed "
                        "(the task's default: humor on, others off)")
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
    e.add_argument("--second-judge", "--judge", dest="second_judge", metavar="SPEC",
                   help="a second, independent judge of the students, beside the critic")
    e.add_argument("--ood", type=int, dest="ood_inputs", metavar="N", help="also evaluate on N bundled OOD inputs")
    b = p.add_argument_group("budget (this command's new LM calls; answers already in the store are free)")
    b.add_argument("--max-calls", type=int, dest="max_calls", metavar="N",
                   help="stop before the LM call that would make more than N; rerun with more to continue (exit 3)")
    b.add_argument("--max-cost", type=float, dest="max_cost", metavar="USD",
                   help="stop before the spend could pass USD, as the provider prices the calls (local models: "
                        "free); rerun with more to continue (exit 3)")
    return p


def _cosine_or_off(text: str) -> float | str:
    """A guard's cosine, or `off` (the config layer turns it into no guard, over a task's default)."""
    if text.strip().lower() in OFF:
        return "off"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a cosine in [-1, 1] or off, got {text!r}") from None


# the flags the command reads itself; every other flag's `dest` is the config key it sets (tests/test_config.py)
COMMAND_ONLY = ("help", "profile", "config", "db", "out")


def config_overrides(args: argparse.Namespace) -> dict:
    """The config keys the command line sets (None: not given), each under its flag's `dest`."""
    keys = {f.name for f in fields(PipelineConfig)}
    return {k: v for k, v in vars(args).items() if k in keys}
