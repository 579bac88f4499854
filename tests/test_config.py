"""The pipeline config: learning rates per objective, validated, and left out of a run's identity while unset."""

import re
from dataclasses import replace

import pytest

from programs.config import ConfigError, PipelineConfig, build_config
from store import stable_id


def test_objective_learning_rates_from_toml_and_their_identity(tmp_path):
    plain = build_config("tiny")
    assert plain.dpo_learning_rate is None and plain.brio_learning_rate is None
    assert "dpo_learning_rate" not in plain.identity()  # unset: the run ids of earlier runs stay what they were

    toml = tmp_path / "lr.toml"
    toml.write_text("learning_rate = 1e-4\ndpo_learning_rate = 2e-6\n")
    cfg = build_config("tiny", str(toml))
    assert (cfg.learning_rate, cfg.dpo_learning_rate, cfg.brio_learning_rate) == (1e-4, 2e-6, None)
    assert cfg.identity()["dpo_learning_rate"] == 2e-6 and "brio_learning_rate" not in cfg.identity()
    assert cfg.identity() != plain.identity()


@pytest.mark.parametrize("key, value", [("dpo_learning_rate", -1e-5), ("brio_learning_rate", "fast"),
                                        ("learning_rate", 0), ("dpo_learning_rate", True)])
def test_bad_learning_rates_are_named(key, value):
    with pytest.raises(ConfigError, match=f"{key} must be a positive number"):
        build_config("tiny", overrides={key: value})


@pytest.mark.parametrize("values, message", [
    ({"k_samples": 0}, "k_samples must be a positive integer"),
    ({"length_band": (1.5, 2.0)}, "length_band must be"),
    ({"dpo_loss_type": "nope"}, "dpo_loss_type must be one of"),
    ({"teacher_temperature": "hot"}, "teacher_temperature must be in"),
    ({"objective": "dpo,nope"}, "unknown objective"),
])
def test_a_config_built_in_python_checks_its_values_where_it_is_built(values, message):
    """Not only `build_config`: `PipelineConfig(...)` and `dataclasses.replace` fail at once, in one line."""
    from dataclasses import replace

    with pytest.raises(ConfigError, match=message):
        PipelineConfig(**values)
    with pytest.raises(ConfigError, match=message):
        replace(PipelineConfig(), **values)
    assert PipelineConfig(meaning_floor="off").meaning_floor is None  # spellings normalized there too
    assert PipelineConfig(length_band=[0.5, 2.0]).length_band == (0.5, 2.0)


def test_new_keys_at_their_defaults_leave_run_ids_as_they_were():
    """Ids computed by the code before these keys existed: a rerun on an old store finds its run."""
    from store import stable_id

    # the imitation-only main job of before (the default since became imitation then DPO, on every test input)
    before = {"objective": "none", "meaning_floor": "off", "length_control": False}  # humor's guards came later
    assert stable_id("run", build_config("default", overrides={**before, "test_inputs": 40}).identity()) == \
        "fe64c4b5a7b77d1d6921d8f2"
    tiny = build_config("tiny", overrides=before)
    tiny.length_band, tiny.k_samples = (0.8, 1.2), 6  # the tiny profile's feedback settings of before
    assert stable_id("run", tiny.identity()) == "94b08c03ba644ea11c7ee99f"
    cfg = build_config("tiny", overrides={"dpo_beta": 0.3, "min_confidence": 0.2})
    assert cfg.identity()["dpo_beta"] == 0.3 and cfg.identity()["min_confidence"] == 0.2


def test_training_keys_from_toml(tmp_path):
    toml = tmp_path / "t.toml"
    toml.write_text('warmstart_epochs = 3\nfeedback_epochs = 2\nfeedback_max_steps = 40\ndpo_beta = 0.2\n'
                    'dpo_loss_type = ["sigmoid", "sft"]\ndpo_loss_weights = [1, 0.5]\nsampling_temperature = 0.7\n'
                    'sampling_top_p = 0.95\npair_anchor = "none"\nmin_confidence = 0.2\nboth_orders_agree = true\n'
                    'feedback_lr_scheduler_type = "cosine"\nfeedback_warmup_ratio = 0.1\n')
    cfg = build_config("tiny", str(toml))
    assert (cfg.warmstart_epochs, cfg.feedback_epochs, cfg.feedback_max_steps) == (3, 2, 40)
    assert cfg.dpo_loss_type == ["sigmoid", "sft"] and cfg.dpo_loss_weights == [1.0, 0.5]
    assert (cfg.sampling_temperature, cfg.sampling_top_p, cfg.pair_anchor) == (0.7, 0.95, "none")
    assert (cfg.min_confidence, cfg.both_orders_agree) == (0.2, True)
    from finetune.stage_configs import objective_trainers, warm_start_config
    from programs.builtin_tasks import HUMOR

    warm, objective = warm_start_config(cfg, HUMOR), objective_trainers(cfg, HUMOR).imitation
    assert (warm.epochs, warm.max_steps) == (3, -1) and (objective.epochs, objective.max_steps) == (2, 40)
    assert objective.lr_scheduler_type == "cosine"
    plain = build_config("tiny")
    assert warm_start_config(plain, HUMOR).epochs == objective_trainers(plain, HUMOR).epochs == plain.epochs  # fallback


@pytest.mark.parametrize("key, value, message", [
    ("warmstart_epochs", 0, "warmstart_epochs must be a positive number"),
    ("feedback_epochs", "two", "feedback_epochs must be a positive number"),
    ("feedback_max_steps", 0, "feedback_max_steps must be a positive integer"),
    ("warmstart_max_steps", 2.5, "warmstart_max_steps must be a positive integer"),
    ("sampling_temperature", 0, "sampling_temperature must be in (0, 2]"),
    ("sampling_top_p", 1.5, "sampling_top_p must be in (0, 1]"),
    ("pair_anchor", "best", "pair_anchor must be one of greedy, none"),
    ("min_confidence", 1.0, "min_confidence must be in [0, 1)"),
    ("both_orders_agree", "yes", "both_orders_agree must be true or false"),
    ("dpo_beta", 0, "dpo_beta must be a positive number"),
    ("dpo_loss_type", "kto", "dpo_loss_type must be one of"),
    ("dpo_loss_type", ["sigmoid", "nope"], "dpo_loss_type must be one of"),
    ("dpo_loss_weights", [1.0, 2.0], "dpo_loss_weights must be one non-negative number per dpo_loss_type entry"),
    ("dpo_label_smoothing", 0.5, "dpo_label_smoothing must be in [0, 0.5)"),
    ("dpo_label_smoothing", 0.1, "dpo_label_smoothing needs a dpo_loss_type that reads it"),
    ("feedback_lr_scheduler_type", "cosinus", "feedback_lr_scheduler_type must be one of"),
    ("feedback_warmup_ratio", -0.1, "feedback_warmup_ratio must be in [0, 1)"),
])
def test_bad_training_keys_are_named_in_one_line(key, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as e:
        build_config("tiny", overrides={key: value})
    assert "\n" not in str(e.value)


def test_label_smoothing_with_a_loss_that_reads_it():
    cfg = build_config("tiny", overrides={"dpo_loss_type": "robust", "dpo_label_smoothing": 0.1})
    assert cfg.dpo_label_smoothing == 0.1


def test_loss_types_and_schedulers_are_the_installed_libraries():
    import re as regex
    from dataclasses import fields

    from transformers.trainer_utils import SchedulerType
    from trl import DPOConfig

    from programs.config import DPO_LOSS_TYPES, SCHEDULERS

    help_text = next(f for f in fields(DPOConfig) if f.name == "loss_type").metadata["help"]
    assert set(DPO_LOSS_TYPES) == set(regex.findall(r"`'(\w+)'`", help_text))
    assert set(SCHEDULERS) <= {s.value for s in SchedulerType}


def test_critic_keys_from_toml_and_flags_one_line_errors(tmp_path):
    from programs.critic_rule import CriticSettingsError

    toml = tmp_path / "c.toml"
    toml.write_text('critic_mode = "reason-first"\ncritic_rubrics = 2\ncritic_abstain_margin = 0.5\n')
    cfg = build_config("tiny", str(toml), {"critic_pointwise_weight": 0.0})
    s = cfg.critic_settings()
    assert (s.mode, s.rubrics, s.abstain_margin, s.pointwise_weight) == ("reason-first", 2, 0.5, 0.0)
    assert cfg.identity()["critic_mode"] == "reason-first"  # off its default: part of the run's id
    assert "critic_mode" not in build_config("tiny").identity()  # at the default: ids of earlier runs stay
    for key, value, message in (("critic_mode", "fast", "critic mode must be one of"),
                                ("critic_rubrics", 0, "critic rubrics must be a positive integer"),
                                ("critic_aggregate", "max", "critic aggregate must be one of"),
                                ("critic_scale", -1.0, "critic scale must be > 0")):
        with pytest.raises(CriticSettingsError, match=message):  # its own one line, not re-wrapped
            build_config("tiny", overrides={key: value})


def test_eval_split_dev_evaluates_dev_inputs_and_never_reads_test(tmp_path):
    """Settings are chosen on dev: a dev run teaches and evaluates the dev inputs only, with its own run id."""
    from programs.flags import config_overrides, parser
    from programs.inputs import split_inputs
    from programs.task_sources import get_task

    cfg = build_config(overrides=config_overrides(parser().parse_args(["--eval-split", "dev"])))
    assert cfg.eval_split == "dev" and stable_id("run", cfg.identity()) != stable_id("run", build_config().identity())
    chosen = split_inputs(cfg, get_task("humor"))[0]
    assert set(chosen) == {"train", "dev"} and len(chosen["dev"]) == 69
    assert {r["split"] for r in chosen["dev"]} == {"dev"}
    test = {r["input_id"] for r in split_inputs(build_config(), get_task("humor"))[0]["test"]}
    assert not test & {r["input_id"] for r in chosen["dev"]}
    with pytest.raises(ConfigError, match="eval_split must be one of test, dev"):
        build_config(overrides={"eval_split": "train"})


def test_a_task_brings_the_defaults_its_dev_split_chose_and_every_layer_above_overrides_them(tmp_path):
    """Humor's main job is what the rater preferred on dev (curated imitation behind a meaning floor); formal, where
    the critic can judge, and a user's own task keep DPO unguarded; the tiny profile keeps the DPO smoke path."""
    from programs.flags import config_overrides, parser

    humor = build_config()
    assert (humor.objective, humor.meaning_floor, humor.length_control) == ("curated", 0.75, True)
    # the rated run of docs/results/humor-guards (--objective curated --meaning-floor 0.75 --length-control) is the
    # main job's run: a store that holds it answers the main job with no new work
    assert stable_id("run", humor.identity()) == "8eaa67db8bdcf5faece213b2"
    formal = build_config(overrides={"task": "formal"})
    assert (formal.objective, formal.meaning_floor, formal.length_control) == ("dpo", None, False)
    toml_task = tmp_path / "t.toml"
    toml_task.write_text('name = "t"\nteacher_instruction = "Write {n}."\ncritic_instruction = "Choose."\n'
                         'student_instruction = "Write."\ninput_desc = "a text"\noutput_desc = "a text"\n')
    own = build_config(overrides={"task": str(toml_task)})
    assert (own.objective, own.meaning_floor, own.length_control) == ("dpo", None, False)
    tiny = build_config("tiny")
    assert (tiny.objective, tiny.meaning_floor, tiny.length_control) == ("dpo", None, False)

    def flags(*argv):
        return build_config(overrides=config_overrides(parser().parse_args(list(argv))))

    off = flags("--objective", "dpo", "--meaning-floor", "off", "--no-length-control")
    assert (off.objective, off.meaning_floor, off.length_control) == ("dpo", None, False)
    assert "meaning_floor" not in off.identity()  # off is the guard's old default: the id of an unguarded run
    assert flags("--profile", "tiny", "--meaning-floor", "0.6").meaning_floor == 0.6
    file = tmp_path / "c.toml"
    file.write_text('objective = "dpo"\nmeaning_floor = "off"\n')
    from_file = build_config("default", str(file))
    assert (from_file.objective, from_file.meaning_floor, from_file.length_control) == ("dpo", None, True)
    from store.errors import UserError

    with pytest.raises(UserError, match="--meaning-floor: expected a cosine in \\[-1, 1\\] or off, got 'high'"):
        parser().parse_args(["--meaning-floor", "high"])


def test_a_programs_task_keeps_the_run_id_it_had_before_tasks_gained_defaults_and_an_adapter():
    """Task fields added later (`legacy_ids.TASK_FIELDS_ADDED`), at their defaults, leave a program's run id as it was; a
    student trained on another adapter's prompts is another run."""
    import dspy

    from programs.distill import PairwiseCritic, task_from_program
    from store import stable_id

    class QA(dspy.Module):  # the task's name is the class's: qa
        def __init__(self):
            super().__init__()
            self.find = dspy.Predict("question, context -> evidence")
            self.answer = dspy.Predict("question, evidence -> answer")

        def forward(self, question, context):
            return self.answer(question=question, evidence=self.find(question=question, context=context).evidence)

    class One(dspy.Module):
        def __init__(self):
            super().__init__()
            self.answer = dspy.Predict("question -> answer")

    def run_id(program, **more):
        task = task_from_program(program, PairwiseCritic("x"))
        task = replace(task, **more) if more else task
        return stable_id("run", build_config("tiny", overrides={"task": task}).identity())

    assert run_id(QA()) == "a91f485b0debd2ca6dd3e379"  # the ids of 5c21124, before Task.defaults
    assert run_id(One()) == "bb95e036107698616ad3b50b"
    assert run_id(One(), student_adapter="chat") != run_id(One())


def test_every_flag_sets_the_config_key_its_dest_names():
    """The flag -> key map is argparse's own: each flag's `dest` is a PipelineConfig key (or one the command reads
    itself), so a new flag cannot be forgotten in a hand-written map."""
    from dataclasses import fields

    from programs.flags import COMMAND_ONLY, config_overrides, parser

    keys = {f.name for f in fields(PipelineConfig)}
    dests = {a.dest for a in parser()._actions}
    assert dests - keys <= set(COMMAND_ONLY), dests - keys - set(COMMAND_ONLY)
    args = parser().parse_args(["--full-finetune", "--merge-lora", "--judge", "local/x", "--k", "3", "--limit", "2"])
    given = {k: v for k, v in config_overrides(args).items() if v is not None}
    assert given == {"lora": False, "merge_lora": True, "second_judge": "local/x", "k_samples": 3, "limit": 2}
    assert config_overrides(parser().parse_args(["--second-judge", "local/x"]))["second_judge"] == "local/x"
    assert all(v is None for v in config_overrides(parser().parse_args([])).values())  # nothing given: no layer


def test_the_second_judge_keeps_the_run_id_it_had_as_judge(tmp_path):
    """`judge` was renamed `second_judge`: a run with one keeps its id, and a file saying `judge` still works."""
    from store import stable_id

    cfg = build_config("tiny", overrides={"second_judge": "local/qwen2.5-coder-0.5b-instruct"})
    assert cfg.identity()["judge"] == "local/qwen2.5-coder-0.5b-instruct" and "second_judge" not in cfg.identity()
    toml = tmp_path / "c.toml"
    toml.write_text('judge = "local/qwen2.5-coder-0.5b-instruct"\n')
    assert build_config("tiny", str(toml)).second_judge == "local/qwen2.5-coder-0.5b-instruct"
    assert stable_id("run", build_config("tiny", str(toml)).identity()) == stable_id("run", cfg.identity())
    assert build_config("full").identity()["judge"] == "local/qwen2.5-coder-0.5b-instruct"
