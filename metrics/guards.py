"""Guards where the critic is blind, kept in the store so datasets can read them by SQL.

    candidate_meaning(store, items)           candidate_id -> meaning similarity to its input (table `similarities`)
    record_length_control(store, verdicts...) the critic's length term fitted on these verdicts (table `length_fits`)
                                              and each verdict without it (a `verdicts` row of method `<method>/lc`)

The meaning guard keeps candidates that drift from their input out of the critic's pairs (the critic scores a joke
that changes what happened above a faithful one); length control removes the critic's preference for the longer
text (`metrics/length_control.py`). Both are measured on dev before either becomes a default (docs/results/).
"""

from __future__ import annotations

from datetime import datetime
from typing import Sequence

from metrics.judge import verdict_id
from metrics.length_control import LengthFit, controlled, fit, word_count
from store import Store, stable_id

LC = "/lc"  # the method suffix of a length-controlled verdict


def candidate_meaning(store: Store, items: Sequence[dict], *, embedder: str | None = None) -> dict[str, float]:
    """items: {candidate_id, input, text} (plain texts). Their meaning similarity to the input, computed only for
    the candidates the store lacks (the bundled MiniLM), stored in `similarities`."""
    from metrics.similarity import EMBEDDER, meaning_preservation

    embedder = embedder or EMBEDDER
    ids = sorted({it["candidate_id"] for it in items})
    have = {r["candidate_id"]: r["meaning"] for r in store.query(
        "SELECT candidate_id, meaning FROM similarities WHERE embedder = ? AND list_contains(?, candidate_id)",
        [embedder, ids])} if ids else {}
    todo = list({it["candidate_id"]: it for it in items if it["candidate_id"] not in have}.values())
    if todo:
        scores = meaning_preservation([it["input"] for it in todo], [it["text"] for it in todo])
        now = datetime.now()
        store.insert("similarities", [{"candidate_id": it["candidate_id"], "embedder": embedder, "meaning": s,
                                       "created_at": now} for it, s in zip(todo, scores)])
        have.update({it["candidate_id"]: s for it, s in zip(todo, scores)})
    return have


def record_length_control(store: Store, pairs: Sequence[dict], *, judge: str, method: str, purpose: str,
                          run_id: str, groups: Sequence[str] | None = None) -> tuple[LengthFit, dict[str, float | None]]:
    """pairs: {a_id, b_id, a, b (plain texts), p_a, input_id}. Fits the critic's length term on them (one intercept
    per `groups` entry; None: none) and stores the fit and each pair's controlled verdict (method `method + LC`).
    Returns the fit and pair key (`a_id|b_id`) -> controlled P(a >= b)."""
    rows = [r for r in pairs if r["p_a"] is not None]
    diffs = [word_count(r["a"]) - word_count(r["b"]) for r in rows]
    kept_groups = None if groups is None else [g for g, r in zip(groups, pairs) if r["p_a"] is not None]
    length_fit = fit([r["p_a"] for r in rows], diffs, kept_groups)
    now = datetime.now()
    fit_id = stable_id("length-fit", judge, method, purpose, sorted((r["a_id"], r["b_id"]) for r in rows))
    store.insert("length_fits", [{"fit_id": fit_id, "judge": judge, "method": method, "purpose": purpose,
                                  "n": length_fit.n, "slope": length_fit.slope, "scale": length_fit.scale,
                                  "run_id": run_id, "created_at": now}], replace=True)
    out: dict[str, float | None] = {}
    verdicts = []
    for r, d in zip(rows, diffs):
        p = controlled(r["p_a"], d, length_fit)
        out[f"{r['a_id']}|{r['b_id']}"] = p
        verdicts.append({"verdict_id": verdict_id(judge, method + LC, r["a_id"], r["b_id"]), "input_id": r["input_id"],
                         "judge": judge, "method": method + LC, "a_id": r["a_id"], "b_id": r["b_id"], "p_a": p,
                         "orders_agree": r.get("orders_agree"), "n_orders": r.get("n_orders"), "purpose": purpose,
                         "run_id": run_id, "created_at": now})
    if verdicts:
        store.insert("verdicts", verdicts, replace=True)
    return length_fit, out


__all__ = ["LC", "candidate_meaning", "record_length_control"]
