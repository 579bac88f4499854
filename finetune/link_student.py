"""`<out>/student`: the run's distilled student as a folder link, so `local/<out>/student` is a model spec for any
DSPy program."""

from __future__ import annotations

import os
from pathlib import Path


def link_student(out_dir: Path, models: list, evaluations: list[dict], critic: str, split: str) -> str | None:
    """`<out>/student` points at the distilled student, so `local/<out>/student` is a model spec for any DSPy program:
    the one objective the run trained (what the task's evidence or the user chose: the critic is blind where it is
    blind, so its verdict does not overrule the choice), else the best of several by the critic on the evaluation
    split. Only a student whose evaluation judged at least one of its outputs is chosen; with none, nothing is linked
    (None)."""
    chosen = [e for e in evaluations if e["split"] == split and e["judge"] == critic]
    scored = {e["label"]: e["wtr_prob"].value for e in chosen if e["items"]}
    eligible = [m for m in models if m[0] in scored or all(e["label"] != m[0] for e in chosen)]
    link = out_dir / "student"
    if link.is_symlink() or link.exists():
        link.unlink()  # an earlier run's link would name a student this evaluation did not choose
    if not eligible:
        return None
    if len(models) == 2 and models[1] in eligible:  # the warm start and one objective
        (label, model), how = models[1], "the run's objective"
    else:
        label, model = max(eligible, key=lambda m: scored.get(m[0], float("-inf")))
        how = "the best by the critic" if len(models) > 1 else "the only student"
    link.symlink_to(os.path.relpath(Path(model.path).resolve(), out_dir.resolve()), target_is_directory=True)
    return f"{model.path} ({label}, {how})"
