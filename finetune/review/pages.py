"""What each review page shows, read from the store: plain dicts for the templates, every query read-only.

Each function takes a `Store` and reads it through `Store.query` (a short read-only connection, locked down to the
store's own tables), so a pipeline writing the same file waits at most for one query, and the page waits for the
pipeline's flush the same way (`store/db.py`).
"""

from __future__ import annotations

import json
import math
from typing import Any

from store import Store

FILTERS = {"all": "every input", "changed": "a student's output differs from the warm start's",
           "flips": "the critic disagrees with itself (its two orders disagree)",
           "drift": "longest drift first (output length / input length, furthest from 1)"}


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def students(store: Store) -> list[dict]:
    """Every student producer with a readable name (its training objective), warm start first: the first training
    run's student is the warm start the others started from."""
    rows = store.query(
        "SELECT c.producer, min(t.objective) AS objective, min(t.started_at) AS started FROM candidates c "
        "LEFT JOIN checkpoints k ON k.checkpoint_id = c.producer LEFT JOIN training_runs t USING (training_id) "
        "WHERE c.role = 'student' AND c.rank = 0 GROUP BY c.producer ORDER BY started NULLS LAST, c.producer")
    return [{"producer": r["producer"], "name": f"{r['objective'] or 'student'} ({r['producer'][:8]})",
             "warm": i == 0} for i, r in enumerate(rows)]


def runs(store: Store) -> list[dict]:
    return store.query("SELECT run_id, status, started_at, finished_at, profile, command FROM runs "
                       "ORDER BY started_at DESC")


def run_detail(store: Store, run_id: str) -> dict | None:
    """One run: its config, its stages (LM usage and cost per stage and model), its training runs and its results."""
    found = store.query("SELECT * FROM runs WHERE run_id = ?", [run_id])
    if not found:
        return None
    run = found[0]
    names = {s["producer"]: s["name"] for s in students(store)}
    stages = store.query("SELECT stage, model, calls, cache_hits, errors, prompt_tokens, completion_tokens, "
                         "round(latency_s, 1) AS latency_s, cost, first_call_at, last_call_at FROM usage_per_stage "
                         "WHERE run_id = ? ORDER BY first_call_at", [run_id])
    trainings = store.query("SELECT objective, status, started_at, finished_at, training_id FROM training_runs "
                            "WHERE run_id = ? ORDER BY started_at", [run_id])
    results = store.query("SELECT student, reference, judge, split, n, wtr_prob, wtr_prob_lo, wtr_prob_hi, "
                          "wtr_decision, wtr_decision_lo, wtr_decision_hi FROM evaluations WHERE run_id = ? "
                          "ORDER BY created_at", [run_id])
    lines = [f"{names.get(r['student'], r['student'])} vs {names.get(r['reference'], r['reference'])} on "
             f"{r['split']} (n={r['n']}, judge {r['judge']}): WTR (mean P) {_pct(r, 'wtr_prob')}, "
             f"(decisions) {_pct(r, 'wtr_decision')}" for r in results]
    seconds = ((run["finished_at"] - run["started_at"]).total_seconds()
               if run["finished_at"] and run["started_at"] else None)
    return {"run": run, "config": json.dumps(_json(run["config"]), indent=1, default=str), "stages": stages,
            "trainings": trainings, "results": lines, "seconds": seconds}


def _pct(r: dict, key: str) -> str:
    if r[key] is None:
        return "n/a"
    return f"{100 * r[key]:.1f} [{100 * (r[key + '_lo'] or 0):.1f}, {100 * (r[key + '_hi'] or 0):.1f}]"


def splits(store: Store) -> list[str]:
    return [r["split"] for r in store.query(
        "SELECT DISTINCT i.split FROM inputs i JOIN candidates c USING (input_id) WHERE c.role = 'student' "
        "ORDER BY 1")]


def outputs(store: Store, split: str, filter: str = "all", limit: int = 100) -> dict:
    """Per input of `split`: the teacher's reference and each student's output, with the critic's verdict of that
    student against the reference (both orders, P, whether the orders agree) and the critic-independent checks
    (meaning similarity to the input, length ratio)."""
    studs = students(store)
    rows = store.query(
        "SELECT i.input_id, i.text AS input, c.role, c.producer, c.candidate_id, c.text, m.meaning "
        "FROM inputs i JOIN candidates c USING (input_id) "
        "LEFT JOIN (SELECT candidate_id, max(meaning) AS meaning FROM similarities GROUP BY ALL) m "
        "USING (candidate_id) "
        "WHERE i.split = ? AND c.rank = 0 AND c.role IN ('teacher', 'student') ORDER BY i.input_id", [split])
    verdicts = store.query(
        "SELECT v.a_id, v.b_id, v.judge, v.method, v.p_a, v.orders_agree, o.p_a_first, o.p_a_second "
        "FROM verdicts v JOIN inputs i USING (input_id) "
        "LEFT JOIN judgment_orders o ON o.a_id = v.a_id AND o.b_id = v.b_id AND o.judge = v.judge "
        "AND o.method = split_part(v.method, '/', 1) "
        "WHERE i.split = ? AND v.judge NOT LIKE 'rater:%' AND v.purpose = 'eval' ORDER BY v.created_at", [split])
    by_pair = {(v["a_id"], v["b_id"]): v for v in verdicts}  # the newest verdict of a pair wins
    items: dict[str, dict] = {}
    for r in rows:
        item = items.setdefault(r["input_id"], {"input_id": r["input_id"], "input": r["input"], "teacher": None,
                                                "outputs": {}})
        if r["role"] == "teacher":
            item["teacher"] = item["teacher"] or r
        else:
            item["outputs"][r["producer"]] = r
    warm = next((s["producer"] for s in studs if s["warm"]), None)
    for item in items.values():
        ref = item["teacher"]
        drift = 0.0
        for o in item["outputs"].values():
            v = by_pair.get((o["candidate_id"], ref["candidate_id"])) if ref else None
            o["verdict"] = v
            o["length_ratio"] = len(o["text"].split()) / max(1, len(item["input"].split()))
            o["changed"] = warm is not None and o["producer"] != warm and warm in item["outputs"] and \
                o["text"].strip() != item["outputs"][warm]["text"].strip()
            drift = max(drift, abs(math.log(max(o["length_ratio"], 1e-3))))
        item["drift"] = drift
        item["changed"] = any(o["changed"] for o in item["outputs"].values())
        item["flips"] = any(o["verdict"] is not None and o["verdict"]["orders_agree"] is False
                            for o in item["outputs"].values())
    shown = list(items.values())
    if filter == "changed":
        shown = [i for i in shown if i["changed"]]
    elif filter == "flips":
        shown = [i for i in shown if i["flips"]]
    elif filter == "drift":
        shown.sort(key=lambda i: -i["drift"])
    return {"students": studs, "items": shown[:limit], "total": len(items), "matching": len(shown)}


def datasets(store: Store) -> list[dict]:
    return store.query("SELECT d.dataset_id, d.name, d.n_rows, d.sql, d.created_at, t.objective, t.training_id "
                       "FROM datasets d LEFT JOIN training_runs t USING (dataset_id) ORDER BY d.created_at")


def dataset_rows(store: Store, dataset_id: str, limit: int = 50) -> dict | None:
    """A dataset's first rows; DPO rows (prompt, chosen, rejected) with the critic's confidence where the row has
    it (`confidence`, or P of the chosen side `p_chosen`)."""
    found = store.query("SELECT name, n_rows, sql, rows FROM datasets WHERE dataset_id = ?", [dataset_id])
    if not found:
        return None
    rows = _json(found[0]["rows"]) or []
    columns = list(rows[0].keys()) if rows and isinstance(rows[0], dict) else []
    return {"name": found[0]["name"], "n_rows": found[0]["n_rows"], "sql": found[0]["sql"], "columns": columns,
            "rows": [{c: _cell(r.get(c)) for c in columns} for r in rows[:limit]],
            "pairs": "chosen" in columns and "rejected" in columns}


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return value


def training_history(store: Store, training_id: str) -> tuple[str, list[dict]] | None:
    """A training run's objective and its trainer log history (loss, rewards per logging step)."""
    found = store.query("SELECT objective, metrics FROM training_runs WHERE training_id = ?", [training_id])
    if not found:
        return None
    history = _json(found[0]["metrics"]) or []
    return found[0]["objective"], [h for h in history if isinstance(h, dict)]
