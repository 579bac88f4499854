"""report.md and its charts, written into the run's output folder from what the run measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from programs.config import task_label  # noqa: E402


def _bar_chart(path: Path, rows: list[dict[str, Any]]) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [r["label"] for r in rows]
    for offset, key, name in ((-0.2, "wtr_prob", "WTR (mean probability)"), (0.2, "wtr_decision", "WTR (decisions)")):
        values = [100 * r[key].value for r in rows]
        err = [[100 * (r[key].value - r[key].lo) for r in rows], [100 * (r[key].hi - r[key].value) for r in rows]]
        ax.bar([i + offset for i in range(len(rows))], values, width=0.4, yerr=err, capsize=4, label=name)
    ax.axhline(50, color="grey", linestyle=":", linewidth=1)
    ax.set_xticks(range(len(rows)), labels)
    ax.set_xlim(-0.8, len(rows) - 0.2)
    ax.set_ylim(0, 100)
    ax.set_ylabel("win-tie rate vs teacher (×100)")
    ax.set_title("Student vs teacher, judged by the critic (95% CI)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _loss_chart(path: Path, curves: dict[str, list[dict]]) -> bool:
    fig, ax = plt.subplots(figsize=(6, 3.2))
    drawn = False
    for label, log_history in curves.items():
        points = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
        if points:
            ax.plot(*zip(*points), marker="o", markersize=3, label=label)
            drawn = True
    if drawn:
        ax.set_xlabel("step")
        ax.set_ylabel("training loss")
        ax.set_title("Training curves")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def _length_chart(path: Path, ratios: dict[str, list[float]], band: tuple[float, float]) -> bool:
    if not any(ratios.values()):
        return False
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(list(ratios.values()), bins=12, label=list(ratios), alpha=0.8)
    for x in band:
        ax.axvline(x, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel("output / input length (words)")
    ax.set_ylabel("test outputs")
    ax.set_title("Length ratio of the students' outputs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _usage_lines(usage: list[dict]) -> list[str]:
    """The "Cost and usage" section: one row per stage and model of `usage_per_stage`, then the run's total."""
    def num(v, fmt="{:,}"):
        return "–" if v is None else fmt.format(v)

    def total(key):
        values = [r[key] for r in usage if r.get(key) is not None]
        return sum(values) if values else None

    lines = ["## Cost and usage", "",
             "| stage | model | LM calls | from the store | to the model | errors | prompt tokens | completion tokens "
             "| time (s) | mean per model call (s) | cost (USD) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in usage + [{"stage": "**total**", "model": "", **{k: total(k) for k in (
            "calls", "cache_hits", "model_calls", "errors", "prompt_tokens", "completion_tokens", "latency_s",
            "cost")}, "mean_latency_s": None}]:
        model = f"`{r['model']}`" if r.get("model") else ""
        lines.append(f"| {r['stage'] or '–'} | {model} | {num(r['calls'])} | {num(r['cache_hits'])} | "
                     f"{num(r['model_calls'])} | {num(r['errors'])} | {num(r['prompt_tokens'])} | "
                     f"{num(r['completion_tokens'])} | {num(r['latency_s'], '{:,.1f}')} | "
                     f"{num(r['mean_latency_s'], '{:.2f}')} | {num(r['cost'], '{:.4f}')} |")
    run_id = usage[0].get("run_id") if usage else None
    lines += ["", "All invocations of this run together; calls answered from the store are free (no tokens, no "
              "cost). Tokens and cost are the provider's figures, – where none was reported (local models have no "
              f"price). The same numbers: `python -m store query \"SELECT * FROM usage_per_stage WHERE run_id = "
              f"'{run_id}'\"`; each call is a row of `lm_calls`.", ""]
    return lines


def _teacher_lines(t: dict, config: dict) -> list[str]:
    """The teacher before and after DSPy optimization: its critic score on the validation inputs, and WTR on test."""
    def pct(e) -> str:
        return f"{100 * e.value:.1f} [{100 * e.lo:.1f}, {100 * e.hi:.1f}]"

    before, after = t.get("val_before"), t.get("val_after")
    return [
        "## Teacher optimization", "",
        f"`--optimize {t['optimizer']}` against the critic `{config['critic']}`; the program is `{t['program']}` and "
        f"its candidates are stored as producer `{t['producer']}`.", "",
        "| | critic score on validation inputs | WTR vs the teacher as written, test ×100 [95% CI] (mean P · decisions) |",
        "|---|---|---|",
        f"| teacher as written | {'' if before is None else f'{before:.3f}'} | 50 (itself) |",
        f"| optimized teacher | {'' if after is None else f'{after:.3f}'} | {pct(t['wtr_prob'])} · "
        f"{pct(t['wtr_decision'])} (n = {t['n']}) |", "",
        "Every candidate program the optimizer scored: `python -m store query \"SELECT optimizer, trial, score, chosen, "
        "n_demos, instructions FROM optimization_trials ORDER BY created_at, trial\"`.", "",
    ]


def _fmt(v: Any, fmt: str = "{:.2f}") -> str:
    return "–" if v is None or v != v else fmt.format(v)


def _moved_lines(evaluations: list[dict]) -> list[str]:
    """Per student: what training did to it (the run's summary) and the critic-independent checks of its outputs."""
    from finetune.runner import training_summary

    rows, seen = [], set()
    for e in evaluations:
        if (e["label"], e["split"]) in seen or "checks" not in e:
            continue
        seen.add((e["label"], e["split"]))
        t, c = training_summary(e.get("log_history") or []), e["checks"]
        rows.append(f"| {e['label']} | {e['split']} | {t['steps']} | {_fmt(t['first_loss'], '{:.3f}')} → "
                    f"{_fmt(t['final_loss'], '{:.3f}')} | {_fmt(t.get('reward_accuracy'))} | "
                    f"{_fmt(t.get('reward_margin'), '{:.3f}')} | {_fmt(c.get('changed'))} | {_fmt(c['copy_rate'])} | "
                    f"{_fmt(c['length_ratio'])} | {_fmt(c.get('meaning'))} | {_fmt(c['distinct_1'])} / "
                    f"{_fmt(c['distinct_2'])} |")
    if not rows:
        return []
    return ["## Did training move the student?", "",
            "| student | split | steps | loss first → last | DPO reward accuracy | DPO reward margin | changed vs warm "
            "start | copy rate | length ratio | meaning | distinct-1 / -2 |",
            "|---|---|---|---|---|---|---|---|---|---|---|", *rows, "",
            "A feedback run counts only if it moved the student. Changed: share of greedy outputs that differ from "
            "the warm start's on the same inputs. DPO reward accuracy and margin: the last logged values on the "
            "training pairs (share of pairs whose chosen answer gained on the rejected one against the reference, "
            "and by how much; `training_runs.metrics` keeps every step and a summary). None of these asks the critic: "
            "copy rate is the share of outputs that nearly repeat the input (word edit similarity ≥ 0.9), meaning the "
            "input–output embedding similarity, distinct-n the share of distinct word n-grams over all outputs.", ""]


def _lift_lines(lift: list[dict], split: str) -> list[str]:
    """The report's lead: what feedback bought over imitation, as paired differences and a direct comparison."""
    def pts(e) -> str:
        return "–" if not e.n else f"{100 * e.value:+.1f} [{100 * e.lo:+.1f}, {100 * e.hi:+.1f}]"

    def pct(e) -> str:
        return "–" if not e.n else f"{100 * e.value:.1f} [{100 * e.lo:.1f}, {100 * e.hi:.1f}]"

    rows = [f"| {d['label']} | {d['baseline']} | {d['paired_prob'].n} | {pts(d['paired_prob'])} | "
            f"{pts(d['paired_prob_lc']) if d.get('paired_prob_lc') else '–'} | "
            f"{pts(d['paired_decision'])} | {pct(d['direct_prob'])} | {pct(d['direct_decision'])} |" for d in lift]
    rated = [f"| {d['label']} | {d['baseline']} | `{r['judge']}` | {r['rated'].n} | {pct(r['rated'])} | "
             f"{r['identical']} | {pct(r['with_ties'])} |" for d in lift for r in d.get("raters", [])]
    raters = (["Independent raters (blind pairs, `python -m finetune.rate`; docs/rating.md):", "",
               "| student | vs | rater | pairs rated | prefers the student ×100 | identical outputs | with ties ×100 |",
               "|---|---|---|---|---|---|---|", *rated, ""] if rated else
              ["No independent rating of these students is in the store yet: `python -m finetune.rate export` writes "
               "blind pairs of two students for a person or any model, `import` reads the ratings back "
               "(docs/rating.md). Where the critic and a rater disagree, believe neither alone.", ""])
    return [f"## What feedback bought ({split} split, by the critic that labelled the training pairs)", "",
            "| student | vs | n | Δ WTR mean P, points [95% CI] | Δ length-controlled | Δ WTR decisions | "
            "direct WTR mean P ×100 | direct WTR decisions ×100 |", "|---|---|---|---|---|---|---|---|", *rows, "",
            "Δ: the student's P(output ≥ teacher's) minus the warm start's on the same inputs, averaged, with a "
            "bootstrap over inputs (paired: the inputs' difficulty cancels). A lift is real when its interval lies "
            "above zero. Length-controlled: the same with the critic's fitted preference for the longer output "
            "removed from every verdict (metrics/length_control.py). Direct: the critic judging the two students' "
            "outputs against each other (both orders); 50 is a tie.", "", *raters]


def write_report(out: Path, *, config: dict, counts: dict, evaluations: list[dict], log_history: list[dict],
                 examples: list[dict], command: str, db: str, usage: list[dict] | None = None,
                 teacher_quality: dict | None = None, lift: list[dict] | None = None, length_fit: Any = None,
                 steps: list[dict] | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    main_judge = evaluations[0]["judge"] if evaluations else None
    split = config.get("eval_split", "test")
    headline = [e for e in evaluations if e["split"] == split and e["judge"] == main_judge]
    _bar_chart(out / "wtr.png", headline)
    curves = {e["label"]: e.get("log_history") or [] for e in headline} or {"imitation": log_history}
    has_loss = _loss_chart(out / "loss.png", curves)
    has_lengths = _length_chart(out / "length_ratio.png", {e["label"]: e.get("length_ratios") or [] for e in headline},
                                tuple(config.get("length_band") or (0.8, 1.2)))
    lines = [
        "# Distillation report", "",
        f"Command: `{command}`  ", f"Store: `{db}` (every number below is a query away: `python -m store query ...`)", "",
        "## Setup", "",
        f"- task: {task_label(config['task'])}; profile: {config['profile']}; inputs: {config['inputs']}",
        f"- teacher: `{config['teacher']}` (N = {config['n_candidates']}, temperature {config['teacher_temperature']})",
        f"- critic: `{config['critic']}` (pairwise, both orders, probability of the choice; "
        f"{config.get('critic_mode', 'reason-first')}, {config.get('critic_aggregate', 'mean')})",
        f"- student: `{config['student']}` ({'LoRA' if config['lora'] else 'full fine-tuning'}, {config['epochs']} epoch(s))",
        f"- train inputs: {counts.get('train_inputs')}, teacher pairs: {counts.get('pairs')}, "
        f"{split} inputs: {counts.get(f'{split}_inputs')}",
        *([f"- {counts['dropped_overlap']} {split} inputs also in train were dropped (the same text: a student is "
           "not evaluated on what it was trained on)"] if counts.get("dropped_overlap") else []), "",
        *(_lift_lines(lift, split) if lift else []),
        "## Win-tie rate vs the teacher", "",
        "| student | judge | split | n | WTR (mean P) ×100 [95% CI] | length-controlled ×100 | "
        "WTR (decisions) ×100 [95% CI] | meaning | length ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in evaluations:
        meaning = e.get("meaning")
        lc = e.get("wtr_prob_lc")
        lines.append(f"| {e['label']} | `{e['judge']}` | {e['split']} | {e['wtr_prob'].n} | "
                     f"{e['wtr_prob'].interval()} | {'–' if lc is None else lc.interval()} | "
                     f"{e['wtr_decision'].interval()} | {_number(meaning, empty='')}"
                     f" | {_number(e['length_ratio'])} |")
    from finetune.evaluate import failure_line

    lines += [f"- **{e['label']}**, {e['split']}, judge `{e['judge']}`: {line}; each counts as a loss in its WTR"
              for e in evaluations if (line := failure_line(e))]
    lines += _step_lines(steps or [], split)
    lines += ["", "![win-tie rate](wtr.png)", "",
              "WTR (mean P) is the paper's definition: the critic's probability that the student's output is at least "
              "as good as the teacher's, averaged over both presentation orders and over items. WTR (decisions) is the "
              "share of items where that probability is at least 0.5. Small critics sit near 0.5, which squeezes the "
              "first toward 50; the second separates better. Meaning: cosine similarity of input and output "
              "embeddings (all-MiniLM-L6-v2). Length ratio: output words / input words.", ""]
    if length_fit is not None:
        lines += [f"Length control: on these {length_fit.n} verdicts the critic's log-odds rise by "
                  f"{length_fit.slope:+.3f} per unit of tanh(word difference / {length_fit.scale:.1f}) (one intercept "
                  "per student; > 0: it prefers the longer output). The length-controlled column removes that term "
                  "from each verdict, the length-controlled AlpacaEval method.", ""]
    lines += _moved_lines(evaluations)
    if teacher_quality:
        lines += _teacher_lines(teacher_quality, config)
    if has_loss:
        lines += ["## Training", "", "![training loss](loss.png)", ""]
    if has_lengths:
        lines += ["## Output length", "", "![length ratio](length_ratio.png)", ""]
    if usage:
        lines += _usage_lines(usage)
    if examples:
        lines += [f"## Examples ({split} split)", "", "| input | teacher | student | P(student ≥ teacher) |", "|---|---|---|---|"]
        for ex in examples:
            cells = [str(ex[k]).replace("|", "\\|").replace("\n", " ") for k in ("input", "teacher", "student")]
            p = ex.get("p")
            lines.append(f"| {cells[0]} | {cells[1]} | {cells[2]} | {'' if p is None else f'{p:.2f}'} |")
        lines.append("")
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _number(x: float | None, empty: str = "–") -> str:
    """A table cell: two decimals, or `empty` for a value that is missing or NaN (nothing was measured)."""
    return empty if x is None or x != x else f"{x:.2f}"


def _step_lines(steps: list[dict], split: str) -> list[str]:
    """A program of several predictors, step by step: where the student wrote what the teacher wrote."""
    if not steps:
        return []
    lines = ["", f"## Step by step: the student vs the teacher ({split})", "",
             "Each predictor of the student's run against the teacher's first run of the same input: exact match "
             "(every output field equal: a router's label), and the sentence-embedding similarity of its outputs.", "",
             "| student | predictor | n | exact match ×100 [95% CI] | similarity |", "|---|---|---|---|---|"]
    for s in steps:
        lines += [f"| {s['label']} | `{r['predictor']}` | {r['n']} | {r['exact'].interval()} | "
                  f"{_number(r['similarity'])} |" for r in s["steps"]]
    return lines

