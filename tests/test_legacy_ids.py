"""The rules that keep ids recorded by earlier versions (programs/legacy_ids.py), each against an id recorded then."""

from dataclasses import asdict

from programs.config import build_config
from programs.critic_rule import DEFAULT, PAPER
from programs.legacy_ids import (PIPELINE_KEYS_ADDED, critic_id_parts, earlier_task, pipeline_identity,
                                 task_id_parts, warm_start_folder)
from store import stable_id


def test_a_run_id_hashes_the_keys_runs_had_then():
    cfg = build_config("default", overrides={"objective": "none", "meaning_floor": "off", "length_control": False,
                                             "eval_inputs": 40})
    values = pipeline_identity(asdict(cfg))
    assert stable_id("run", values) == "fe64c4b5a7b77d1d6921d8f2"  # recorded before any added key existed
    assert not set(values) & {"threads", "max_calls", "max_cost", "second_judge", "eval_inputs"}
    assert values["judge"] is None and values["test_inputs"] == 40
    assert not set(values) & {k for k, v in PIPELINE_KEYS_ADDED.items() if v == getattr(cfg, k)}


def test_a_programs_task_leaves_out_fields_added_since_at_their_defaults():
    step = {"name": "route", "defaults": (), "student_adapter": "labeled"}
    task = {"name": "p", "defaults": (), "student_adapter": "chat", "steps": (("route", step),)}
    assert earlier_task(task) == {"name": "p", "student_adapter": "chat", "steps": (("route", {"name": "route"}),)}


def test_humor_and_the_papers_critic_add_nothing_to_command_ids():
    assert task_id_parts("humor") == () and task_id_parts("formal") == ("formal",)
    assert critic_id_parts(PAPER.method) == () and critic_id_parts(DEFAULT.method) == (DEFAULT.method,)


def test_a_warm_start_folder_named_the_earlier_way_is_used_when_it_holds_a_finished_run(tmp_path):
    key = {"lora": True}
    new = warm_start_folder(tmp_path, key, "d1", "train_result.json")
    earlier = tmp_path / f"student-ft-{stable_id({**key, 'output_dir': 'runs/imitation', 'merge_lora': True}, 'd1')[:10]}"
    assert new != earlier and new.name.startswith("student-ft-")
    (earlier / "train_result.json").parent.mkdir()
    (earlier / "train_result.json").write_text("{}")
    assert warm_start_folder(tmp_path, key, "d1", "train_result.json") == earlier
    (new / "train_result.json").parent.mkdir()
    (new / "train_result.json").write_text("{}")
    assert warm_start_folder(tmp_path, key, "d1", "train_result.json") == new  # the new name wins once it is there


def test_samples_and_training_runs_keep_the_names_they_had():
    from finetune.dpo import DPOTrainConfig
    from finetune.feedback import FeedbackConfig, sample_producer
    from finetune.runner import config_identity
    from programs.legacy_ids import SAMPLING_AT_FIRST, TRAIN_FIELDS_ADDED

    assert sample_producer("ck", FeedbackConfig()) == "ck"  # today's defaults are the first samples' settings
    assert sample_producer("ck", FeedbackConfig(k=3)) == f"ck~{stable_id('sampling', {'k': 3})[:8]}"
    assert SAMPLING_AT_FIRST["max_new_tokens"] == 64
    assert not TRAIN_FIELDS_ADDED & set(config_identity(DPOTrainConfig()))  # at their defaults: left out
    assert config_identity(DPOTrainConfig(warmup_ratio=0.1))["warmup_ratio"] == 0.1
