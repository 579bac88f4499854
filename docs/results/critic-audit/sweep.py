"""The critic sweep behind docs/results/critic-audit/README.md: every critic setting audited on the labeled pairs.

    python docs/results/critic-audit/sweep.py --split dev  --db runs/critic-audit.duckdb            # choose
    python docs/results/critic-audit/sweep.py --split test --db runs/critic-audit.duckdb --only ... # report

Each prompt (reason-first, choice-first with each rubric phrasing, the pointwise score) is asked once per pair and
order and kept in the store; the combinations (aggregation, abstention, pointwise blend, scale) are then computed
from the stored judgments with no further model calls, through the same `metrics.audit.audit` the CLI runs. Prints
one line per setting (agreement, decided agreement, coverage, position flips, single-order agreement, length bias,
ECE, each with its 95% CI) and writes them as JSON next to the store.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

import dspy  # noqa: E402

from metrics.audit import as_json, audit, load_pairs, summarize  # noqa: E402
from programs.adapter import LabeledAdapter  # noqa: E402
from programs.critic import PAPER, Critic, CriticSettings, combine  # noqa: E402
from programs.lm import resolve_lm  # noqa: E402
from programs.task_sources import get_task  # noqa: E402
from store import Store, stable_id  # noqa: E402
from store.callback import install  # noqa: E402

C = CriticSettings
SETTINGS = {  # name -> settings; the prompts first (each costs calls), then combinations of what is stored
    "reason-first (paper)": PAPER,
    "choice-first, mean": C(aggregate="mean"),
    "choice-first, log-odds": C(),
    "pointwise alone": None,
    "reason-first, log-odds": C(mode="reason-first"),
    "choice-first, calibrated prior": "calibrated",
    "choice-first x2 rubrics": C(rubrics=2),
    "choice-first x3 rubrics": C(rubrics=3),
    "choice-first + pointwise 0.5": C(pointwise_weight=0.5),
    "choice-first + pointwise 1": C(pointwise_weight=1.0),
    "choice-first x3 + pointwise 0.5": C(rubrics=3, pointwise_weight=0.5),
    "choice-first, abstain 1": C(abstain_margin=1.0),
    "choice-first, abstain 2": C(abstain_margin=2.0),
    "choice-first x3, abstain 1": C(rubrics=3, abstain_margin=1.0),
}


def rubric_alone(result: dict, r: int) -> dict:
    """The audit's numbers for the r-th rubric phrasing on its own, from a multi-rubric audit's stored orders."""
    rows = []
    for it in result["items"]:
        p_ab, p_ba = it["orders"][r]
        p_a, agree = combine([(p_ab, p_ba)], C())
        positions = it["positions"]
        rows.append({**it, "p_ab": p_ab, "p_ba": p_ba, "orders_agree": agree,
                     "p_better": None if p_a is None else (p_a if it["better_first"] else 1 - p_a),
                     "p_first_order": None if p_ab is None else (p_ab if positions[0] == 1 else 1 - p_ab),
                     # choices of this rubric are not kept per rubric; position flips from its probabilities
                     "choices": tuple(None if p is None else (1 if p > 0.5 else 2) for p in (p_ab, p_ba))})
    return as_json(summarize(rows))


def fmt(e: dict) -> str:
    if not e or e.get("n", 0) == 0 or e.get("value") is None:
        return "-"
    return f"{100 * e['value']:.1f} [{100 * e['lo']:.0f},{100 * e['hi']:.0f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--split", required=True)
    ap.add_argument("--critic", default="local/qwen2.5-coder-1.5b-instruct")
    ap.add_argument("--task", default="humor")
    ap.add_argument("--pairs", default=str(ROOT / "programs" / "data" / "audit_pairs.jsonl"))
    ap.add_argument("--db", default="runs/critic-audit.duckdb")
    ap.add_argument("--only", nargs="*", help="names of SETTINGS to run (default all)")
    ap.add_argument("--out", default="runs/critic-audit")
    args = ap.parse_args()

    task = get_task(args.task)
    pair_file = load_pairs(args.pairs)
    pairs = [p for p in pair_file.pairs if p.get("split") == args.split]
    Path(args.db).parent.mkdir(parents=True, exist_ok=True)
    store = Store(args.db)
    install(store)
    dspy.configure(adapter=LabeledAdapter())
    lm = resolve_lm(args.critic, temperature=0.0, max_tokens=96, seed=0)
    results = {}
    lean = None
    for name, settings in SETTINGS.items():
        if args.only and name not in args.only:
            continue
        if name == "pointwise alone":
            settings = C(pointwise_weight=1.0, scale=1e-9)  # the pairwise part scaled away
        if settings == "calibrated":
            settings = C(aggregate="calibrated", prior=round(lean or 0.0, 2))
        start = time.perf_counter()
        run_id = stable_id("sweep", args.critic, args.split, name)
        result = audit(pairs, Critic(task, settings), lm, store=store, judge=args.critic, run_id=run_id,
                       source=f"sweep:{args.split}", file_sha=pair_file.sha, task=task, out_dir=args.out)
        if name == "choice-first, log-odds":
            lean = result["position_lean"]
        report(results, name, settings, as_json(result), start)
        if name == "choice-first x3 rubrics":
            for r in (1, 2):
                report(results, f"choice-first rubric {r + 1} (alone)", settings, rubric_alone(result, r), start)
    store.close()
    out = Path(args.out) / f"sweep-{args.split}-{Path(args.critic).name}-{args.task}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {out}")


def report(results: dict, name: str, settings, r: dict, start: float) -> None:
    results[name] = {"method": settings.method, "settings": asdict(settings), "seconds": time.perf_counter() - start,
                     **{k: v for k, v in r.items() if k != "items"}}
    print(f"{name:<34} agree {fmt(r['agreement']):<18} decided {fmt(r['decided_agreement']):<18} "
          f"cover {fmt(r['coverage']):<18} flips {fmt(r['position_flip_rate']):<18} "
          f"single {fmt(r['single_order_agreement']):<18} len {fmt(r['length_bias']):<18} "
          f"ECE {fmt(r['ece']):<18} lean {r['position_lean'] if r['position_lean'] is None else round(r['position_lean'], 2)} "
          f"{time.perf_counter() - start:.0f}s", flush=True)
    for kind, k in r["by_kind"].items():
        print(f"    {kind:<12} n={k['n']:<3} agree {fmt(k['agreement']):<18} flips {fmt(k['position_flip_rate'])}",
              flush=True)


if __name__ == "__main__":
    main()
