"""The teach stage: the teacher writes N candidates per input; each candidate is stored with the LM call that wrote it.

Resumable by construction: inputs that already have this teacher's candidates are skipped, and the LM cache in the
store answers any call that was made before a crash.
"""

from __future__ import annotations

from datetime import datetime

import dspy

from programs.parallel import imap
from programs.progress import stage_progress
from programs.teacher import Teacher
from store import Store, stable_id, to_json
from store.callback import last_lm_call_id
from store.errors import UserError


def candidate_id(input_id: str, role: str, producer: str, rank: int) -> str:
    return stable_id("candidate", input_id, role, producer, rank)


def teach(store: Store, teacher: Teacher, teacher_lm: dspy.LM, inputs: list[dict], *, producer: str, run_id: str,
          threads: int = 1) -> dict:
    """Write teacher candidates for `inputs` (dicts with input_id, text) that have none yet; returns counts."""
    done = {r["input_id"] for r in store.query(
        "SELECT DISTINCT input_id FROM candidates WHERE role = 'teacher' AND producer = ?", [producer])}
    todo = [i for i in inputs if i["input_id"] not in done]

    def one(item: dict) -> tuple[list[str], list | None, str | None]:
        try:
            prediction = teacher(text=item["text"])
            candidates, traces = prediction.candidates, prediction.get("traces")
        except UserError:  # a mistake in the user's program or task: one line, the run stops
            raise
        except Exception:  # noqa: BLE001 - a failed call is in lm_calls/module_calls with its error; go on
            candidates, traces = [], None
        return candidates, traces, last_lm_call_id()

    written = failed = 0
    with stage_progress("teach", total=len(inputs), done=len(inputs) - len(todo), unit="inputs") as advance, \
            dspy.context(lm=teacher_lm):
        for item, (candidates, traces, call_id) in imap(one, todo, threads):
            for rank, text in enumerate(candidates):
                store.add("candidates", {
                    "candidate_id": candidate_id(item["input_id"], "teacher", producer, rank),
                    "input_id": item["input_id"], "role": "teacher", "producer": producer, "rank": rank, "text": text,
                    "lm_call_id": call_id, "run_id": run_id, "created_at": datetime.now(),
                    "trace": to_json(traces[rank]) if traces else None,
                })
            written += len(candidates)
            failed += not candidates
            advance(1, f"{written} candidates, {failed} failed")
    store.flush()
    return {"inputs": len(inputs), "new_inputs": len(todo), "candidates": written, "failed": failed}
