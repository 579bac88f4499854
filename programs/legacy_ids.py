"""Every rule that keeps the ids of runs, students and samples recorded by earlier versions, in one place.

An id is a hash of settings (`store.stable_id`), so a setting added later would change every id: a rerun on an old
store would then find nothing and train everything again. Each rule below says how a newer value is hashed so that
it equals what the earlier version hashed (tests/test_legacy_ids.py pins ids recorded then). A new setting that
must leave ids alone gets its rule here and nowhere else.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from programs.critic_rule import DEFAULT as CRITIC
from programs.critic_rule import PAPER, CriticSettings
from store.ids import stable_id

# -- a run (PipelineConfig.identity) ---------------------------------------------------------------------------------

# config keys added after runs were recorded, with the value at which a run's id is as it was (left out of it)
PIPELINE_KEYS_ADDED: dict[str, Any] = {
    **{f"critic_{f.name}": getattr(CRITIC, f.name) for f in fields(CriticSettings)},
    "dpo_learning_rate": None, "brio_learning_rate": None, "warmstart_epochs": None, "warmstart_max_steps": None,
    "feedback_epochs": None, "feedback_max_steps": None, "feedback_lr_scheduler_type": "linear",
    "feedback_warmup_ratio": 0.0, "dpo_beta": 0.1, "dpo_loss_type": "sigmoid", "dpo_loss_weights": None,
    "dpo_label_smoothing": 0.0, "sampling_temperature": 1.0, "sampling_top_p": 0.9, "pair_anchor": "greedy",
    "min_confidence": 0.0, "both_orders_agree": False, "eval_split": "test",
    "meaning_floor": None, "meaning_margin": None, "length_control": False,
}
# config keys renamed since: hashed under the name runs recorded (new name -> earlier name)
PIPELINE_KEYS_RENAMED: dict[str, str] = {"second_judge": "judge", "eval_inputs": "test_inputs"}
# keys that decide how fast or how far a command goes, never what it computes: not part of a run's id
NOT_RESULTS = ("threads", "max_calls", "max_cost")
# Task fields added after runs of programs' tasks (recorded whole in the config) were recorded, with the value at
# which they are left out
TASK_FIELDS_ADDED: dict[str, Any] = {"defaults": (), "student_adapter": "labeled"}


def pipeline_identity(values: dict[str, Any]) -> dict[str, Any]:
    """A config's values (`asdict`) as the run id hashes them: results-deciding keys only, added keys left out at
    their earlier value, renamed keys under their earlier name, a program's task as it was recorded."""
    values = {k: v for k, v in values.items() if k not in NOT_RESULTS}
    for key, default in PIPELINE_KEYS_ADDED.items():
        if key in values and values[key] == default:
            values.pop(key)
    values = {PIPELINE_KEYS_RENAMED.get(k, k): v for k, v in values.items()}
    if isinstance(values.get("task"), dict):  # a program's task, recorded whole
        values["task"] = earlier_task(values["task"])
    return values


def earlier_task(task: dict) -> dict:
    """A task (`asdict`) as identities recorded it before `TASK_FIELDS_ADDED` were added, its steps too."""
    task = {k: v for k, v in task.items() if k not in TASK_FIELDS_ADDED or v != TASK_FIELDS_ADDED[k]}
    if task.get("steps"):
        task["steps"] = tuple((name, earlier_task(step)) for name, step in task["steps"])
    return task


# -- a training run and a student's samples --------------------------------------------------------------------------

# TrainConfig fields added after training runs were recorded: left out of a run's identity while at their default
# (finetune.runner.config_identity), so those runs keep their training ids and folders and are not trained again
TRAIN_FIELDS_ADDED = frozenset({"lr_scheduler_type", "warmup_ratio", "loss_type", "loss_weights", "label_smoothing",
                                "prompt_format", "adapter"})
# The sampling settings a student's samples were drawn with before they were settings: at these values a round's
# producer is the checkpoint itself, otherwise the checkpoint tagged with the ones that differ
# (finetune.feedback.sample_producer); the values then, not today's defaults (programs/generation_defaults.py)
SAMPLING_AT_FIRST: dict[str, Any] = dict(k=6, method="nucleus", top_p=0.9, temperature=1.0, max_new_tokens=64, seed=0)


# -- the ids of evaluations, audits and their commands' runs -----------------------------------------------------------


def task_id_parts(task_name: str) -> tuple[str, ...]:
    """A command's task in its run id: humor, the only task when these ids were first recorded, adds nothing."""
    return () if task_name == "humor" else (task_name,)


def critic_id_parts(method: str) -> tuple[str, ...]:
    """A critic's settings (`CriticSettings.method`) in an audit's or an evaluation's id: the paper's, which every
    one judged by before there were settings, add nothing."""
    return () if method == PAPER.method else (method,)


# -- a student's folder ----------------------------------------------------------------------------------------------


def warm_start_folder(out_dir: Path, identity: dict[str, Any], dataset_id: str, marker: str) -> Path:
    """The warm start's folder: named by its training config's `identity` with the output_dir default it hashed
    then, and merging left out (a step after training, so adding an objective to a finished imitation run reuses its
    adapter). A folder named the earlier way, with merging in the name, that holds a finished run (`marker`) is used
    as it is, so a store made then is not trained again."""
    key = {**identity, "output_dir": "runs/imitation"}  # ImitationConfig's default output_dir, hashed by earlier names
    folder, earlier = (out_dir / f"student-ft-{stable_id({**key, 'merge_lora': merge}, dataset_id)[:10]}"
                       for merge in (False, True))
    return earlier if not (folder / marker).exists() and (earlier / marker).exists() else folder
