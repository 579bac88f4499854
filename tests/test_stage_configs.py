"""Each stage's typed config, derived from the pipeline's in one place: the values every trainer received before
(when compile.py built them from dicts and halved the batch in objectives.py), so ids stay as they were."""

from dataclasses import asdict

from finetune.brio import BRIOTrainConfig
from finetune.dpo import DPOTrainConfig
from finetune.imitate import ImitationConfig
from finetune.runner import config_identity
from finetune.stage_configs import feedback_config, objective_trainers, warm_start_config
from programs.builtin_tasks import HUMOR
from programs.config import build_config
from store import stable_id


def test_each_trainer_gets_its_keys_and_the_shared_ones_else():
    cfg = build_config("tiny", overrides={"warmstart_max_steps": 3, "feedback_epochs": 2.0, "batch_size": 6,
                                          "dpo_learning_rate": 1e-6, "dpo_beta": 0.2, "feedback_warmup_ratio": 0.1})
    warm = warm_start_config(cfg, HUMOR)
    assert (warm.base_model, warm.max_steps, warm.epochs, warm.batch_size, warm.merge_lora) == \
        (cfg.student, 3, cfg.epochs, 6, False)
    assert warm.warmup_ratio == 0.0  # the feedback_* keys are the objectives' only
    t = objective_trainers(cfg, HUMOR)
    assert t.epochs == 2.0 and t.imitation.batch_size == 6 and t.imitation.warmup_ratio == 0.1
    assert (t.dpo.batch_size, t.dpo.learning_rate, t.dpo.beta) == (3, 1e-6, 0.2)  # pairs: two sequences each
    assert (t.brio.batch_size, t.brio.learning_rate) == (1, None)  # groups of four sequences; the trainer's default
    assert all(c.instruction == HUMOR.student_instruction and c.merge_lora for c in (t.imitation, t.dpo, t.brio))
    f = feedback_config(cfg)
    assert (f.k, f.method, f.length_lo, f.length_hi, f.max_new_tokens) == (
        cfg.k_samples, cfg.sampling, *cfg.length_band, cfg.student_max_tokens)


def test_the_derived_configs_equal_the_ones_built_by_hand_before():
    """At the default profile, each config hashes as the hand-built one of before (its training id and folder)."""
    cfg = build_config("default")
    shared = dict(lora=True, epochs=1.0, max_steps=-1, learning_rate=None, batch_size=8, max_length=128, seed=0)
    student = dict(instruction=HUMOR.student_instruction, prompt_format=HUMOR.prompt_format, adapter="labeled")
    before_warm = ImitationConfig(base_model=cfg.student, merge_lora=False, **student, **shared)
    assert asdict(warm_start_config(cfg, HUMOR)) == asdict(before_warm)
    feedback = {**shared, "lr_scheduler_type": "linear", "warmup_ratio": 0.0}
    before = {
        "imitation": ImitationConfig(base_model="b", merge_lora=True, **student, **feedback),
        "dpo": DPOTrainConfig(base_model="b", merge_lora=True, **student, **{**feedback, "batch_size": 4},
                              beta=0.1, loss_type="sigmoid", loss_weights=None, label_smoothing=0.0),
        "brio": BRIOTrainConfig(base_model="b", merge_lora=True, **student, **{**feedback, "batch_size": 2}),
    }
    from dataclasses import replace

    t = objective_trainers(cfg, HUMOR)
    for name, config in before.items():
        assert stable_id(config_identity(replace(getattr(t, name), base_model="b"))) == stable_id(
            config_identity(config)), name


def test_a_programs_objectives_train_its_last_predictor_on_that_predictors_own_prompts(tmp_path):
    """The feedback objectives of a program of several predictors train its last one (compile's `_final_step`
    derives the trainers from that step's task): its instruction and fields, not the whole program's."""
    import dspy

    from programs.program_tasks import from_program

    class TwoSteps(dspy.Module):
        def __init__(self):
            super().__init__()
            self.angle = dspy.Predict("question -> angle")
            self.answer = dspy.Predict("question, angle -> answer")

        def forward(self, question):
            return self.answer(question=question, angle=self.angle(question=question).angle)

    task = from_program(TwoSteps(), critic_instruction="Choose the better answer.")
    final = task.final_step
    cfg = build_config("tiny")
    whole, last = objective_trainers(cfg, task), objective_trainers(cfg, final)
    assert last.dpo.prompt_format == final.prompt_format != whole.dpo.prompt_format
    assert (last.dpo.instruction, last.imitation.adapter) == (final.student_instruction, final.student_adapter)
    from types import SimpleNamespace

    from finetune.objectives import ObjectiveContext
    from programs import compile as pipeline
    from programs.critic import Critic
    from store import Store

    store = Store(tmp_path / "t.duckdb")
    ctx = ObjectiveContext(store=store, task=task, run_id="r", out_dir=tmp_path, warm=None, train_inputs=[],
                           teacher="t", critic=Critic(task), critic_lm=None, critic_name="c", trainers=whole)
    stepped = pipeline._final_step(SimpleNamespace(task=task, store=store, cfg=cfg), ctx)
    assert stepped.task == final and stepped.trainers == last  # what the objectives train the last predictor with
