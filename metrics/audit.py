"""Audit the critic on labeled pairs, like the paper's Table 1: agreement, position bias, length bias.

    python -m metrics.audit --pairs programs/data/audit_pairs.jsonl                    # the default 1.5B critic
    python -m metrics.audit --pairs my_pairs.jsonl --critic local/qwen2.5-coder-0.5b-instruct --limit 20
    python -m metrics.audit --pairs my_pairs.jsonl --critic openai/gpt-4o-mini --format json

A pairs file has one JSON object per line: `input` (the literal sentence), `better` (the text a person prefers),
`worse`, and optionally `id`, `worse_kind` (every measure is also reported per kind) and `split` (`--split`). Each
pair is judged in both orders through `metrics.judge.judge_verdicts` (purpose 'audit') with the critic's settings
(docs/critic.md), so the judgments are stored and a rerun asks the critic nothing it has already answered.

In the store: the inputs (split 'audit'), the texts as candidates (role 'audit', producer 'audit-file:<sha>',
rank 2i for line i's better text and 2i + 1 for its worse one), the judgments, and one `audits` row per
(judge, file, pairs) with the summary and the per-pair details.

What is measured, each with a 95% bootstrap interval (the first order judged shows the better text first on lines 1,
3, 5, ... and second on the others, so the single-order numbers are those of a critic asked once, with its position
lean in them):
- agreement: share of pairs where the P(better) averaged over both orders is > 0.5 (a tie is not agreement)
- single-order agreement: the same from the first order alone
- position-flip rate: share of pairs whose parsed choice names the same position in both orders (the answer
  follows the position, not the text)
- length bias: among decided pairs where the critic disagrees with the label, the share where it chose the longer
  text; and over all decided pairs the share that went to the longer text against the share the labels give
- calibration: expected calibration error of the critic's confidence, and a reliability plot in `--out`
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from metrics.winrate import Estimate, bootstrap  # noqa: E402
from store.cli import ArgumentParser, code_version, entry_point, quiet_libraries  # noqa: E402
from store.errors import UserError  # noqa: E402

DEFAULT_CRITIC = "local/qwen2.5-coder-1.5b-instruct"
from programs.critic_rule import DEFAULT as DEFAULT_SETTINGS  # noqa: E402
from programs.critic_rule import MAX_TOKENS  # noqa: E402
from programs.legacy_ids import critic_id_parts, task_id_parts  # noqa: E402
FIELDS = ("input", "better", "worse")


class AuditError(UserError):
    """A bad pairs file or audit request: one line for the user."""


@dataclass(frozen=True)
class PairFile:
    path: Path
    sha: str  # sha256 of the file's bytes
    pairs: list[dict]  # {id, line, input, better, worse, worse_kind?}


def load_pairs(path: str | os.PathLike) -> PairFile:
    """Read and check a pairs file; every problem is an AuditError that names the file and line."""
    p = Path(path).expanduser()
    try:
        if not p.exists():
            raise AuditError(f"pairs file not found: {p}")
        if p.is_dir():
            raise AuditError(f"{p} is a folder; pass a .jsonl file with one pair per line")
        raw = p.read_bytes()
    except OSError as e:  # no permission, a name too long, a device that cannot be read
        raise AuditError(f"cannot read the pairs file {p}: {e.strerror or e}") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise AuditError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    pairs: list[dict] = []
    seen: dict[str, int] = {}
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise AuditError(f"{p}:{line_no}: not valid JSON ({e.msg})") from e
        if not isinstance(rec, dict):
            raise AuditError(f"{p}:{line_no}: expected a JSON object with {', '.join(FIELDS)}")
        bad = [f for f in FIELDS if not isinstance(rec.get(f), str) or not rec[f].strip()]
        if bad:
            raise AuditError(f"{p}:{line_no}: missing or empty {', '.join(repr(f) for f in bad)} "
                             f"(each line needs non-empty strings {', '.join(FIELDS)})")
        better, worse = " ".join(rec["better"].split()), " ".join(rec["worse"].split())
        if better == worse:
            raise AuditError(f"{p}:{line_no}: 'better' and 'worse' are the same text")
        pair_id = str(rec["id"]) if rec.get("id") not in (None, "") else f"line{line_no}"
        if pair_id in seen:
            raise AuditError(f"{p}:{line_no}: pair id {pair_id!r} already used on line {seen[pair_id]}")
        seen[pair_id] = line_no
        pair = {"id": pair_id, "line": line_no, "input": " ".join(rec["input"].split()), "better": better,
                "worse": worse}
        for key in ("worse_kind", "split"):
            if rec.get(key):
                pair[key] = str(rec[key])
        pairs.append(pair)
    if not pairs:
        raise AuditError(f"{p} has no pairs (expected one JSON object per line with {', '.join(FIELDS)})")
    return PairFile(p, hashlib.sha256(raw).hexdigest(), pairs)


def content_sha(pairs: list[dict]) -> str:
    """A hash standing in for the file's when pairs come from code rather than a file."""
    lines = [json.dumps({k: pr.get(k) for k in ("id", *FIELDS)}, sort_keys=True) for pr in pairs]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def producer_name(file_sha: str) -> str:
    return f"audit-file:{file_sha[:16]}"


def audit_input_id(task_name: str, text: str) -> str:
    """Audit inputs get their own ids (split 'audit'), apart from the same sentence in the pipeline's inputs."""
    from store import stable_id

    return stable_id("input", task_name, text, "audit")


def _words(text: str) -> int:
    return len(text.split())


def _num(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def _flags(items: list[dict]) -> dict[str, list]:
    """Per-measure 0/1 flags (or values) from per-pair rows; each list is bootstrapped into a mean with a CI."""
    judged = [it for it in items if it["p_better"] is not None]
    both_parsed = [it for it in items if None not in it["choices"]]
    # length: only pairs the critic decided (P != 0.5) whose texts differ in length
    decided = [it for it in judged if it["p_better"] != 0.5 and it["better_words"] != it["worse_words"]]
    chose_longer = [(it["p_better"] > 0.5) == (it["better_words"] > it["worse_words"]) for it in decided]
    return {
        "agreement": [float(it["p_better"] > 0.5) for it in judged],
        "decided_agreement": [float(it["p_better"] > 0.5) for it in judged if it["p_better"] != 0.5],
        "coverage": [float(it["p_better"] != 0.5) for it in judged],
        "single_order_agreement": [float(it["p_first_order"] > 0.5) for it in items if it["p_first_order"] is not None],
        "position_flip_rate": [float(it["choices"][0] == it["choices"][1]) for it in both_parsed],
        "length_bias": [float(longer) for it, longer in zip(decided, chose_longer) if it["p_better"] < 0.5],
        "longer_chosen": [float(x) for x in chose_longer],
        "longer_expected": [float(it["better_words"] > it["worse_words"]) for it in decided],
        # position lean, from every order judged: how often the better text wins when shown first / second
        "better_wins_when_first": [float(c == 1) for it in items for c, pos in zip(it["choices"], it["positions"])
                                   if c and pos == 1],
        "better_wins_when_second": [float(c == 2) for it in items for c, pos in zip(it["choices"], it["positions"])
                                    if c and pos == 2],
        "position_two_share": [float(c == 2) for it in items for c in it["choices"] if c],
    }


def confidence_bins(p_better: list[float], bins: int) -> list[tuple[float, float, int]]:
    """(mean confidence max(P, 1 - P), share chosen right, pairs) per non-empty bin of confidence over [0.5, 1];
    a tie counts as half right."""
    conf = [max(p, 1 - p) for p in p_better]
    correct = [1.0 if p > 0.5 else 0.5 if p == 0.5 else 0.0 for p in p_better]
    out = []
    for k in range(bins):
        lo, hi = 0.5 + 0.5 * k / bins, 0.5 + 0.5 * (k + 1) / bins
        idx = [i for i, c in enumerate(conf) if lo <= c < hi or (k == bins - 1 and c == hi)]
        if idx:
            out.append((sum(conf[i] for i in idx) / len(idx), sum(correct[i] for i in idx) / len(idx), len(idx)))
    return out


def expected_calibration_error(p_better: list[float], bins: int = 10) -> float | None:
    """ECE of the critic's confidence against whether it chose the better text."""
    if not p_better:
        return None
    return sum(n / len(p_better) * abs(right - conf) for conf, right, n in confidence_bins(p_better, bins))


def _ece_estimate(p_better: list[float], resamples: int = 1000, seed: int = 0) -> Estimate:
    import numpy as np

    if not p_better:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    x = np.asarray(p_better)
    boots = [expected_calibration_error(list(x[rng.integers(0, x.size, x.size)])) for _ in range(resamples)]
    return Estimate(expected_calibration_error(p_better), float(np.quantile(boots, 0.025)),
                    float(np.quantile(boots, 0.975)), len(p_better))


def position_lean(items: list[dict]) -> float | None:
    """The critic's lean to position 1 in log-odds: the mean of (logit P_first(a, b) + logit P_first(b, a)) / 2 over
    pairs judged in both orders (zero for a critic that ignores position)."""
    from programs.critic import logit

    leans = [(logit(it["p_ab"]) + logit(it["p_ba"])) / 2 for it in items
             if it.get("p_ab") is not None and it.get("p_ba") is not None]
    return sum(leans) / len(leans) if leans else None


def summarize(items: list[dict], *, per_kind: bool = True) -> dict[str, Any]:
    """The audit's numbers from per-pair rows, each a mean with a 95% bootstrap interval.

    Each row: p_better (the critic's P(better), or None), p_first_order (P(better) from the first order judged
    alone), choices ((choice, choice) of the two orders, each 1 | 2 | None), positions (where the better text stood in
    each order), p_ab / p_ba (P_first of each order), better_words, worse_words, worse_kind (optional).
    """
    judged = [it for it in items if it["p_better"] is not None]
    out: dict[str, Any] = {name: bootstrap(values) for name, values in _flags(items).items()}
    out |= {
        "n": len(judged),
        "n_pairs": len(items),
        "ece": _ece_estimate([it["p_better"] for it in judged]),
        "position_lean": position_lean(items),
        "ties": sum(1 for it in judged if it["p_better"] == 0.5),
        "failed_pairs": len(items) - len(judged),
    }
    if per_kind:
        kinds = sorted({it.get("worse_kind") for it in items if it.get("worse_kind")})
        out["by_kind"] = {k: summarize([it for it in items if it.get("worse_kind") == k], per_kind=False) for k in kinds}
    return out


def reliability_plot(p_better: list[float], path: Path, title: str, bins: int = 5) -> Path:
    """Confidence against accuracy in bins (the diagonal is a calibrated critic), with the share of pairs per bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, ys, ns = zip(*confidence_bins(p_better, bins)) if p_better else ((), (), ())
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0.5, 1], [0.5, 1], ls="--", color="grey", lw=1, label="calibrated")
    ax.plot(xs, ys, marker="o", label="critic")
    for x, y, n in zip(xs, ys, ns):
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xlim(0.5, 1.0)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("confidence, max(P, 1 - P)")
    ax.set_ylabel("share where the better text was chosen")
    ax.set_title(title, fontsize=9)
    ax.legend(loc="lower right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def audit(pairs: list[dict], critic, critic_lm, *, store, judge: str, run_id: str, source: str = "pairs",
          file_sha: str | None = None, task=None, threads: int = 1, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Judge each labeled pair in both orders with `critic` on `critic_lm`, store the summary in `audits`, return it.

    `pairs`: dicts with input, better, worse (and id, line, worse_kind as `load_pairs` gives them). `file_sha` names
    the pairs file (producer 'audit-file:<sha>'); without it a hash of the pairs stands in. The critic's settings
    (`critic.settings`) decide how it asks and how the orders combine; `out_dir` gets the reliability plot.
    """
    import dspy

    from metrics.judge import judge_verdicts
    from programs.adapter import LabeledAdapter
    from programs.builtin_tasks import HUMOR
    from programs.teach import candidate_id
    from store import stable_id, to_json
    from store.callback import trace_context

    task = task or HUMOR
    if not pairs:
        raise AuditError("no pairs to audit")
    pairs = [{**pr, "id": pr.get("id") or f"pair{i + 1}", "line": pr.get("line") or i + 1} for i, pr in enumerate(pairs)]
    file_sha = file_sha or content_sha(pairs)
    producer = producer_name(file_sha)
    now = datetime.now()

    inputs, candidates, items = {}, [], []
    for pr in pairs:
        input_id = audit_input_id(task.name, pr["input"])
        inputs[input_id] = {"input_id": input_id, "task": task.name, "text": pr["input"], "split": "audit",
                            "source": source, "created_at": now}
        rank = 2 * (pr["line"] - 1)  # the file is the producer's list: line i's texts at ranks 2i, 2i + 1
        better_id = candidate_id(input_id, "audit", producer, rank)
        worse_id = candidate_id(input_id, "audit", producer, rank + 1)
        for cid, text, r in ((better_id, pr["better"], rank), (worse_id, pr["worse"], rank + 1)):
            candidates.append({"candidate_id": cid, "input_id": input_id, "role": "audit", "producer": producer,
                               "rank": r, "text": text, "lm_call_id": None, "run_id": run_id, "created_at": now})
        better_first = pr["line"] % 2 == 1  # alternate by line, so that the first order alone is not always better-first
        a, b = (("better", better_id), ("worse", worse_id)) if better_first else (("worse", worse_id), ("better", better_id))
        items.append({"input_id": input_id, "text": pr["input"], "a_id": a[1], "a": pr[a[0]], "b_id": b[1], "b": pr[b[0]],
                      "pair": pr, "better_first": better_first})

    store.insert("inputs", list(inputs.values()))
    store.insert("candidates", candidates)
    context = {} if dspy.settings.adapter is not None else {"adapter": LabeledAdapter()}
    with trace_context(run_id=run_id, stage="audit"), dspy.context(**context):
        verdicts = judge_verdicts(store, critic, critic_lm,
                                  [{k: it[k] for k in ("input_id", "text", "a_id", "a", "b_id", "b")} for it in items],
                                  judge=judge, run_id=run_id, purpose="audit", threads=threads)

    rows, failed = [], 0
    for it, v in zip(items, verdicts):
        pr = it["pair"]
        (p_ab, p_ba), choices = v.orders[0], v.choices[0]  # the task's own rubric: position measures
        failed += sum(1 for o in v.orders for p in o if p is None)
        positions = (1, 2) if it["better_first"] else (2, 1)  # where the better text stood in each order
        p_orders = [None if p is None else (p if pos == 1 else 1 - p) for p, pos in zip((p_ab, p_ba), positions)]
        rows.append({
            "pair_id": pr["id"], "line": pr["line"], "worse_kind": pr.get("worse_kind"), "split": pr.get("split"),
            "better_first": it["better_first"], "positions": positions, "choices": tuple(choices),
            "p_ab": p_ab, "p_ba": p_ba, "p_orders": p_orders, "p_first_order": p_orders[0],
            "p_better": None if v.p_a is None else (v.p_a if it["better_first"] else 1 - v.p_a),
            "orders_agree": v.orders_agree, "scores": v.scores, "orders": v.orders,
            "better_words": _words(pr["better"]), "worse_words": _words(pr["worse"]),
        })
    summary = summarize(rows)
    method = critic.settings.method
    pair_ids = [pr["id"] for pr in pairs]
    audit_id = stable_id("audit", judge, file_sha, pair_ids, *task_id_parts(task.name), *critic_id_parts(method))
    plot = None
    if out_dir is not None:
        plot = str(reliability_plot([r["p_better"] for r in rows if r["p_better"] is not None],
                                    Path(out_dir) / f"reliability-{audit_id[:12]}.png", f"{judge}\n{method}"))
    agreement: Estimate = summary["agreement"]
    details = {
        "file_sha": file_sha, "producer": producer, "pair_ids": pair_ids, "failed_judgments": failed,
        "method": method, "settings": asdict(critic.settings), "reliability_plot": plot, **as_json(summary),
        "items": [{k: v for k, v in r.items() if k != "positions"} for r in rows],
    }
    store.insert("audits", [{
        "audit_id": audit_id, "run_id": run_id, "judge": judge, "source": source, "n": summary["n"],
        "agreement": _num(agreement.value), "agreement_lo": _num(agreement.lo), "agreement_hi": _num(agreement.hi),
        "position_flip_rate": _num(summary["position_flip_rate"].value),
        "single_order_agreement": _num(summary["single_order_agreement"].value),
        "length_bias": _num(summary["length_bias"].value), "details": to_json(details), "created_at": datetime.now(),
    }], replace=True)
    return {"audit_id": audit_id, "run_id": run_id, "judge": judge, "source": source, "failed_judgments": failed,
            "method": method, "reliability_plot": plot, **summary, "items": rows}


def _est_dict(e: Estimate) -> dict[str, Any]:
    return {"value": _num(e.value), "lo": _num(e.lo), "hi": _num(e.hi), "n": e.n}


def as_json(result: dict[str, Any]) -> dict[str, Any]:
    """The result with intervals as plain dicts (for --format json and the `audits` row), per kind too."""
    out = {k: (_est_dict(v) if isinstance(v, Estimate) else v) for k, v in result.items() if k != "by_kind"}
    if "by_kind" in result:
        out["by_kind"] = {k: as_json(v) for k, v in result["by_kind"].items()}
    return out


# -- CLI ---------------------------------------------------------------------------------------------------------


def _pct_ci(e: Estimate) -> str:
    if e.n == 0:
        return "-"
    return f"{100 * e.value:.1f}% [{100 * e.lo:.1f}, {100 * e.hi:.1f}]"


MEASURES = (  # (key, label): what the table prints, each with its 95% CI
    ("agreement", "agreement (both orders)"),
    ("decided_agreement", "  among decided pairs (no tie)"),
    ("coverage", "  decided share (1 - ties/abstentions)"),
    ("single_order_agreement", "single-order agreement"),
    ("position_flip_rate", "position-flip rate"),
    ("better_wins_when_first", "  better wins when shown 1st"),
    ("better_wins_when_second", "  better wins when shown 2nd"),
    ("position_two_share", "  share of answers \"2\""),
    ("length_bias", "length bias (disagreements -> longer)"),
    ("longer_chosen", "decisions -> longer"),
    ("longer_expected", "  labels -> longer"),
    ("ece", "calibration error (ECE)"),
)


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"critic audit · {result['judge']} · {result.get('method', '')}", caption=str(result["source"]),
                  title_justify="left", caption_justify="left")
    table.add_column("measure")
    table.add_column("value [95% CI]", justify="right")
    table.add_column("over", justify="right")
    for key, name in MEASURES:
        table.add_row(name, _pct_ci(result[key]), str(result[key].n))
    lean = result.get("position_lean")
    table.add_row("position lean (log-odds to 1st)", "-" if lean is None else f"{lean:+.2f}", "")
    table.add_row("ties (P = 0.5)", str(result["ties"]), "")
    table.add_row("failed judgments", str(result["failed_judgments"]), "")
    console = Console()
    console.print(table)
    if result.get("by_kind"):
        kinds = Table(title="per kind of worse text", title_justify="left")
        kinds.add_column("kind")
        for col in ("n", "agreement", "single-order", "flips", "length bias", "ECE"):
            kinds.add_column(col, justify="right")
        for kind, k in result["by_kind"].items():
            kinds.add_row(kind, str(k["n"]), _pct_ci(k["agreement"]), _pct_ci(k["single_order_agreement"]),
                          _pct_ci(k["position_flip_rate"]), _pct_ci(k["length_bias"]), _pct_ci(k["ece"]))
        console.print(kinds)
    if result.get("reliability_plot"):
        console.print(f"reliability plot: {result['reliability_plot']}", highlight=False)


def parser() -> argparse.ArgumentParser:
    from programs.critic_rule import AGGREGATES, MODES

    d = DEFAULT_SETTINGS
    p = ArgumentParser(prog="python -m metrics.audit", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", required=True, metavar="FILE.jsonl",
                   help="labeled pairs: one {input, better, worse} object per line (optional worse_kind, split)")
    p.add_argument("--critic", default=DEFAULT_CRITIC, metavar="SPEC",
                   help=f"model spec of the critic (default {DEFAULT_CRITIC})")
    p.add_argument("--db", default=None, help="DuckDB store (default: $CRITIC_DISTILL_DB or ./traces.duckdb)")
    p.add_argument("--limit", type=int, metavar="N", help="audit only the first N pairs (after --split)")
    p.add_argument("--split", metavar="NAME", help="audit only the pairs whose split is NAME (e.g. dev, test)")
    p.add_argument("--task", default="humor", help="whose critic to audit: humor (default) | formal | a task .toml "
                                                   "file | package.module:ATTR | file.py:ATTR (docs/tasks.md)")
    g = p.add_argument_group("critic settings (programs.critic.CriticSettings; defaults: the pipeline's)")
    g.add_argument("--mode", choices=MODES, default=d.mode, help=f"how the critic answers (default {d.mode})")
    g.add_argument("--rubrics", type=int, default=d.rubrics, metavar="N",
                   help=f"average over N phrasings of the rubric (default {d.rubrics})")
    g.add_argument("--aggregate", choices=AGGREGATES, default=d.aggregate,
                   help=f"how the two orders combine (default {d.aggregate})")
    g.add_argument("--scale", type=float, default=d.scale, help=f"log-odds scale (default {d.scale:g})")
    g.add_argument("--prior", type=float, default=d.prior, help="lean to position 1 in log-odds, removed with "
                                                                f"--aggregate calibrated (default {d.prior:g})")
    g.add_argument("--abstain-margin", type=float, default=d.abstain_margin, metavar="X",
                   help=f"a tie when the orders disagree and |log-odds| < X (default {d.abstain_margin:g}: never)")
    g.add_argument("--pointwise-weight", type=float, default=d.pointwise_weight, metavar="W",
                   help=f"blend in W x the 1-5 pointwise score difference (default {d.pointwise_weight:g})")
    p.add_argument("--out", metavar="DIR", default="out/audit", help="folder for the reliability plot (default out/audit)")
    p.add_argument("--format", choices=["table", "json"], default="table", help="how to print the result")
    return p


def critic_from_args(args: argparse.Namespace, task):
    """The critic the flags describe; a bad setting is a CriticSettingsError, a user error of its own (before any
    model loads)."""
    from programs.critic import Critic, CriticSettings

    settings = CriticSettings(mode=args.mode, rubrics=args.rubrics, aggregate=args.aggregate, scale=args.scale,
                              prior=args.prior, abstain_margin=args.abstain_margin,
                              pointwise_weight=args.pointwise_weight)
    return Critic(task, settings, max_tokens=MAX_TOKENS)


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    pair_file = load_pairs(args.pairs)  # a bad file fails here, before any model is loaded
    if args.limit is not None and args.limit < 1:
        raise AuditError(f"--limit must be at least 1 (got {args.limit})")
    pairs = pair_file.pairs
    if args.split:
        pairs = [pr for pr in pairs if pr.get("split") == args.split]
        if not pairs:
            splits = sorted({str(pr.get("split")) for pr in pair_file.pairs if pr.get("split")})
            raise AuditError(f"no pairs with split {args.split!r} in {pair_file.path}"
                             + (f" (it has: {', '.join(splits)})" if splits else " (it has no split field)"))
    pairs = pairs[: args.limit] if args.limit else pairs
    from programs.task_sources import get_task

    task = get_task(args.task)  # a bad task is a TaskError: its own one line, exit 2

    import dspy

    from programs.adapter import LabeledAdapter
    from programs.lm import check_hosted
    from programs.progress import console
    from store import Store, stable_id, to_json
    from store.callback import install
    from store.db import check_path, default_path
    from store.runs import recorded_run

    critic = critic_from_args(args, task)
    settings = critic.settings
    quiet_libraries()
    db = args.db or default_path()
    check_path(db)  # a --db that cannot be a store: one line, nothing created, no model pulled
    check_hosted(args.critic)  # a hosted critic's key and answer before a local model is pulled
    critic_lm = resolve_lm(args.critic, temperature=0.0, max_tokens=MAX_TOKENS, seed=0)
    store = Store(db)
    install(store)
    dspy.configure(adapter=LabeledAdapter())
    source = str(pair_file.path.resolve())
    run_id = stable_id("run", "audit", args.critic, pair_file.sha, [pr["id"] for pr in pairs],
                       *task_id_parts(task.name), *critic_id_parts(settings.method))  # as earlier ids hashed them
    run_row = {"run_id": run_id, "started_at": datetime.now(), "status": "running", "command": command,
               "profile": None, "config": to_json({"pairs": source, "critic": args.critic, "limit": args.limit,
                                                     "split": args.split, "file_sha": pair_file.sha, "task": args.task,
                                                     "settings": asdict(settings)}),
               "code_version": code_version()}
    with recorded_run(store, run_row):
        console.print(f"audit {run_id[:12]} · critic {args.critic} · {settings.method} · {len(pairs)} pairs · "
                      f"store {db}", highlight=False)
        result = audit(pairs, critic, critic_lm, store=store, judge=args.critic, run_id=run_id, source=source,
                       file_sha=pair_file.sha, task=task, threads=1 if args.critic.startswith("local/") else 4,
                       out_dir=args.out)
    store.close()  # flush, then checkpoint: one self-contained file
    return result


def resolve_lm(spec: str, **kwargs):
    """`programs.lm.resolve_lm` (a seam for tests, which put a deterministic judge here)."""
    from programs.lm import resolve_lm as resolve

    return resolve(spec, **kwargs)


@entry_point(interrupted="interrupted: rerun the same command to finish (judgments so far are kept)")
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command = "python -m metrics.audit " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    result = run(args, command)
    if args.format == "json":
        print(json.dumps(as_json({k: v for k, v in result.items() if k != "items"}) | {"items": result["items"]},
                         default=str, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
