"""Training identity, pinned: a run's training id and its student folder are hashes of its config, so a store or an
output folder made before is found again (never trained again). The expected strings are literal: a refactor of the
configs or the driver that changes one fails here, not in a user's next run."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

from finetune.brio import BRIOTrainConfig
from finetune.brio import training_id_for as brio_id
from finetune.dpo import DPOTrainConfig
from finetune.dpo import training_id_for as dpo_id
from finetune.imitate import ImitationConfig
from finetune.imitate import training_id_for as imitation_id
from finetune.objectives import _out
from finetune.runner import TrainConfig, config_identity
from store import stable_id


def test_training_ids_are_pinned():
    assert imitation_id(ImitationConfig(), "d1") == "c8dc99f8748773279e152808"
    assert imitation_id(ImitationConfig(base_model="b", learning_rate=1e-3, lr_scheduler_type="cosine",
                                        warmup_ratio=0.1, epochs=3.0), "d1") == "65b7a6845f226e9b0aacc4f6"
    assert dpo_id(DPOTrainConfig(), "d1", "dpo") == "fbb1b50b93f75643ff68048a"
    assert dpo_id(DPOTrainConfig(base_model="b", beta=0.2, label_smoothing=0.1, loss_type=["sigmoid", "sft"],
                                 loss_weights=[1.0, 0.5]), "d1", "dpo") == "5716c84adc695679c905479f"
    assert brio_id(BRIOTrainConfig(), "d1") == "3d82a918ae1c207b7e4dfd3b"
    assert brio_id(BRIOTrainConfig(base_model="b", margin=0.01, rank_weight=2.0, length_penalty=0.5, batch_size=1),
                   "d1") == "328f21e93e5df9c08b7430fb"
    # the identity alone (what compile's warm-start folder hashes): output_dir is not in it
    assert stable_id(config_identity(ImitationConfig(output_dir="elsewhere"))) == "3395f94dfe8be712a1a9663b"


def test_student_folders_are_pinned(tmp_path):
    from programs.compile import _warm_start_dir

    ctx = SimpleNamespace(out_dir=Path("out"))
    settings = dict(lora=True, epochs=1.0, max_steps=-1, learning_rate=None, max_length=128, seed=0,
                    lr_scheduler_type="linear", warmup_ratio=0.0)
    at_defaults = (ImitationConfig(base_model="m", merge_lora=True, instruction="i", batch_size=8, **settings),
                   DPOTrainConfig(base_model="m", merge_lora=True, instruction="i", batch_size=4, **settings),
                   BRIOTrainConfig(base_model="m", merge_lora=True, instruction="i", batch_size=2, **settings))
    for config in at_defaults:
        assert _out(ctx, "n", config, "ck", "ds", 1.0, skip=("epochs",)) == "out/student-n-467da42909"
    assert _out(ctx, "x", DPOTrainConfig(base_model="b", beta=0.2, label_smoothing=0.1, loss_type=["sigmoid", "sft"],
                                         loss_weights=[1.0, 0.5]), "ckpt", "d1", 1.0,
                skip=("epochs",)) == "out/student-x-7075db0877"
    assert _out(ctx, "brio", BRIOTrainConfig(base_model="b", margin=0.01, rank_weight=2.0, length_penalty=0.5,
                                             batch_size=1), "ckpt", "d1") == "out/student-brio-fcb590f406"
    assert _warm_start_dir(tmp_path, ImitationConfig(), "d1") == tmp_path / "student-ft-6645f75d09"


def test_stage_configs_declare_only_their_own_fields():
    """Every shared setting is declared once, in TrainConfig; a stage adds its own and overrides defaults."""
    shared = {f.name for f in fields(TrainConfig)}
    own = {c: {f.name for f in fields(c)} - shared for c in (ImitationConfig, DPOTrainConfig, BRIOTrainConfig)}
    assert own == {ImitationConfig: set(), DPOTrainConfig: {"beta", "loss_type", "loss_weights", "label_smoothing"},
                   BRIOTrainConfig: {"margin", "rank_weight", "length_penalty"}}
    rates = [(c().lr(), c(lora=False).lr()) for c in (ImitationConfig, DPOTrainConfig, BRIOTrainConfig)]
    assert rates == [(2e-4, 5e-5), (5e-5, 5e-6), (1e-4, 2e-5)]
    assert [c().batch_size for c in (ImitationConfig, DPOTrainConfig, BRIOTrainConfig)] == [8, 4, 2]
