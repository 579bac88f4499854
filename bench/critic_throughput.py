"""Critic judgments per second by mode, against today's baseline (reason-first, every prompt evaluated from scratch).

    LITELLM_LOCAL_MODEL_COST_MAP=True python bench/critic_throughput.py [--critic NAME] [--pairs 24] [--split test]

Each mode judges the same labeled pairs (`programs/data/audit_pairs.jsonl`, the first N of `--split`) in both orders
through `metrics.judge.judge_verdicts`, the engine every stage uses, on a fresh temporary store with DSPy's cache
off, so every judgment is a real llama.cpp call:

    baseline        reason-first, llama.reset() before every call (no prompt state kept)
    reason-first    reason-first, prefix reuse (llama.cpp skips what the prompt shares with the last one)
    choice-first    the choice alone, read from its first token, prefix reuse
    default         programs.critic.DEFAULT (what the pipeline uses), prefix reuse

Modes run in turn after one warm-up call each; prints judgments/s, agreement with the labels on the pairs judged,
the ratio to the baseline, and PASS when the default's ratio is >= 2 at agreement no worse than the baseline's (else
BELOW TARGET). Exits 0 either way. About 6 minutes with the 1.5B critic and 24 pairs on a quiet 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import dspy  # noqa: E402

from metrics.judge import judge_verdicts  # noqa: E402
from programs.adapter import LabeledAdapter  # noqa: E402
from programs.critic import DEFAULT, PAPER, Critic, CriticSettings  # noqa: E402
from programs.lm import resolve_lm  # noqa: E402
from programs.builtin_tasks import HUMOR  # noqa: E402
from store.callback import install  # noqa: E402
from store.db import Store  # noqa: E402

TARGET = 2.0
PAIRS = ROOT / "programs" / "data" / "audit_pairs.jsonl"


def load(n: int, split: str | None) -> list[dict]:
    rows = [json.loads(line) for line in PAIRS.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if split is None or r.get("split") == split][:n]
    items = []
    for i, r in enumerate(rows):  # alternate which text is shown first, as the audit does
        better_first = i % 2 == 0
        a, b = (r["better"], r["worse"]) if better_first else (r["worse"], r["better"])
        items.append({"input_id": f"bench-{r['id']}", "text": r["input"], "a_id": f"{r['id']}-a", "a": a,
                      "b_id": f"{r['id']}-b", "b": b, "better_first": better_first})
    return items


def run_mode(name: str, settings: CriticSettings, critic_spec: str, items: list[dict], reuse_prefix: bool) -> dict:
    lm = resolve_lm(critic_spec, temperature=0.0, max_tokens=96, cache=False)
    lm.engine.reuse_prefix = reuse_prefix
    critic = Critic(HUMOR, settings)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.duckdb")
        install(store)
        with dspy.context(lm=lm):  # warm-up: the model loaded, its threads started
            critic.judge_order(items[0]["text"], items[0]["a"], items[0]["b"])
        start = time.perf_counter()
        verdicts = judge_verdicts(store, critic, lm, items, judge=critic_spec, run_id=f"bench-{name}",
                                  purpose="bench")
        seconds = time.perf_counter() - start
        calls = store.scalar("SELECT count(*) FROM judgments")
        store.close()
    right = [(v.p_a > 0.5) == it["better_first"] for v, it in zip(verdicts, items) if v.p_a is not None]
    return {"mode": name, "method": settings.method, "pairs": len(items), "calls": calls, "seconds": seconds,
            "pairs_per_s": len(items) / seconds, "agreement": sum(right) / len(items)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--critic", default="local/qwen2.5-coder-1.5b-instruct", help="a local GGUF critic spec")
    parser.add_argument("--pairs", type=int, default=24, help="labeled pairs to judge per mode")
    parser.add_argument("--split", default="test", help="which split of the labeled pairs (default test)")
    args = parser.parse_args()

    dspy.configure(adapter=LabeledAdapter())
    items = load(args.pairs, args.split)
    modes = [("baseline", PAPER, False), ("reason-first", PAPER, True),
             ("choice-first", CriticSettings(mode="choice-first"), True)]
    if DEFAULT not in (PAPER, CriticSettings(mode="choice-first")):
        modes.append(("default", DEFAULT, True))
    results = [run_mode(name, settings, args.critic, items, reuse) for name, settings, reuse in modes]
    base = results[0]
    print(f"critic {args.critic} · {len(items)} labeled pairs ({args.split}) · both orders each")
    print(f"{'mode':<14} {'method':<38} {'calls':>5} {'s':>7} {'pairs/s':>8} {'agree':>6} {'ratio':>6}")
    for r in results:
        print(f"{r['mode']:<14} {r['method']:<38} {r['calls']:>5} {r['seconds']:>7.1f} {r['pairs_per_s']:>8.3f} "
              f"{r['agreement']:>6.1%} {r['pairs_per_s'] / base['pairs_per_s']:>6.2f}")
    default = results[-1]
    ratio = default["pairs_per_s"] / base["pairs_per_s"]
    ok = ratio >= TARGET and default["agreement"] >= base["agreement"]
    print(f"default ({default['method']}) vs baseline: {ratio:.2f}x judgments/s, agreement "
          f"{default['agreement']:.1%} vs {base['agreement']:.1%} -> {'PASS' if ok else 'BELOW TARGET'} "
          f"(target >= {TARGET:g}x at no lower agreement)")


if __name__ == "__main__":
    main()
