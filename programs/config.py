"""The pipeline's config: one dataclass, profiles as presets, a TOML file and flags on top (in that order)."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from programs.critic_rule import DEFAULT as CRITIC
from programs.critic_rule import MAX_TOKENS as CRITIC_MAX_TOKENS
from programs.critic_rule import CriticSettings
from programs.generation_defaults import MAX_NEW_TOKENS, SAMPLE_K, SAMPLE_METHOD, SAMPLE_TEMPERATURE, SAMPLE_TOP_P
from programs.legacy_ids import pipeline_identity
from store.errors import UserError

CRITIC_FIELDS = tuple(f.name for f in fields(CriticSettings))  # each is a `critic_<name>` key


class ConfigError(UserError):
    """A bad config file or value: one line for the user."""


@dataclass
class PipelineConfig:
    profile: str = "default"
    task: str = "humor"  # a built-in task (humor, formal), a task .toml file, or package.module:ATTR / file.py:ATTR
    inputs: str = "bundled"  # bundled | empathetic_dialogues | a .txt/.jsonl/.csv/.parquet file
    train_inputs: int | None = 140  # None = all
    eval_inputs: int | None = 40  # the evaluation split's (test, or dev with eval_split = dev); None = all
    limit: int | None = None  # --limit N caps train and the evaluation split
    # the split students are evaluated on: test (reporting) | dev (choosing settings, so test stays unseen)
    eval_split: str = "test"
    teacher: str = "local/qwen2.5-coder-1.5b-instruct"
    critic: str = "local/qwen2.5-coder-1.5b-instruct"
    student: str = "smollm2-135m-instruct"
    n_candidates: int = 3  # the paper's N
    teacher_temperature: float = 0.8
    teacher_top_p: float = 1.0
    teacher_max_tokens: int = 160
    critic_max_tokens: int = CRITIC_MAX_TOKENS
    # how the critic asks and combines both orders (programs.critic.CriticSettings; docs/critic.md); the defaults are
    # the settings measured best on the dev half of the labeled pairs (docs/results/critic-audit)
    critic_mode: str = CRITIC.mode  # choice-first (the choice alone, read from its first token) | reason-first
    critic_rubrics: int = CRITIC.rubrics  # phrasings of the rubric to average over (the task's own first)
    critic_aggregate: str = CRITIC.aggregate  # logodds | mean (the paper's) | calibrated (needs critic_prior)
    critic_scale: float = CRITIC.scale  # multiplies the combined log-odds
    critic_prior: float = CRITIC.prior  # the critic's lean to position 1 in log-odds ('calibrated' removes it)
    critic_abstain_margin: float = CRITIC.abstain_margin  # orders disagree and |log-odds| below this: a tie
    critic_pointwise_weight: float = CRITIC.pointwise_weight  # weight of the 1-5 pointwise score difference
    student_max_tokens: int = MAX_NEW_TOKENS
    seed: int = 0
    lora: bool = True
    merge_lora: bool = False
    epochs: float = 1.0  # every training stage's, unless warmstart_epochs / feedback_epochs say otherwise
    max_steps: int = -1  # > 0 overrides epochs
    warmstart_epochs: float | None = None  # the imitation warm start; None: epochs
    warmstart_max_steps: int | None = None  # the warm start; None: max_steps
    feedback_epochs: float | None = None  # every objective after the warm start (ft, sd, brio, dpo); None: epochs
    feedback_max_steps: int | None = None  # the objectives; None: max_steps (-1: train by epochs)
    feedback_lr_scheduler_type: str = "linear"  # the objectives' schedule (transformers' SchedulerType names)
    feedback_warmup_ratio: float = 0.0  # share of the objectives' steps spent warming the learning rate up
    learning_rate: float | None = None  # imitation, FT and SD; None: 2e-4 with LoRA, 5e-5 full
    dpo_learning_rate: float | None = None  # DPO rounds; None: 5e-5 with LoRA, 5e-6 full (TRL's scale, not SFT's)
    brio_learning_rate: float | None = None  # BRIO; None: 1e-4 with LoRA, 2e-5 full
    dpo_beta: float = 0.1  # how far DPO may move the student from the warm start (higher: less)
    dpo_loss_type: str | list[str] = "sigmoid"  # TRL's loss_type; a list mixes losses, e.g. ["sigmoid", "sft"] (RPO)
    dpo_loss_weights: list[float] | None = None  # one weight per dpo_loss_type entry; None: 1 each
    dpo_label_smoothing: float = 0.0  # cDPO: the assumed chance that the critic's label is wrong, in [0, 0.5)
    batch_size: int = 8
    max_length: int = 128
    threads: int = 4  # parallel LM calls for hosted teachers/critics (local models run one at a time)
    # feedback distillation (after the imitation warm start); "none" stops at imitation
    # after the imitation warm start: dpo (the paper's best single method) | none | ft | curated | sd | brio |
    # brio-dpo | all | a comma-separated list. A task's defaults may choose another (humor: curated, guarded)
    objective: str = "dpo"
    feedback_every: float | None = None  # epochs between on-policy feedback rounds; None: feedback once
    k_samples: int = SAMPLE_K  # the paper's k
    sampling: str = SAMPLE_METHOD  # nucleus | diverse_beam
    sampling_temperature: float = SAMPLE_TEMPERATURE  # the student's sampling temperature for feedback candidates
    sampling_top_p: float = SAMPLE_TOP_P  # nucleus sampling's top-p
    pair_selection: str = "edit"  # edit (largest n-gram edit distance) | embedding
    # greedy: the student's greedy output (what evaluation sees) vs the in-band sample most different from it (else
    # the most different in-band pair of samples); none: the paper's rule, the most different in-band pair of samples
    pair_anchor: str = "greedy"
    min_confidence: float = 0.0  # keep judged pairs whose debiased confidence |2 P - 1| is at least this
    both_orders_agree: bool = False  # keep only pairs that each presentation order alone decides the same way
    length_band: tuple[float, float] = (0.8, 1.2)  # keep pairs whose length ratio to the input is inside
    # guards where the critic is blind (docs/critic.md; metrics/guards.py), each chosen on dev (docs/results/guards)
    meaning_floor: float | None = None  # a candidate less similar in meaning (MiniLM cosine) to its input never
    #                                     enters a feedback pair, nor critic-curated imitation's data
    meaning_margin: float | None = None  # drop a pair whose chosen side loses more meaning than this to the rejected
    length_control: bool = False  # choose the sides (and rank the teacher's candidates) by the critic's verdicts
    #                               with its fitted preference for the longer text removed
    sft_sql: str | None = None  # replaces the imitation/ft dataset query (columns input, output)
    pairs_sql: str | None = None  # replaces the DPO preference query (columns input, chosen, rejected)
    # evaluation beyond the critic on the test split
    second_judge: str | None = None  # a second, independent judge of the students (model spec; TOML: judge too)
    ood_inputs: int = 0  # how many bundled out-of-distribution inputs to evaluate on too
    # DSPy optimization of the teacher against the critic, before it teaches (None: the teacher as written)
    optimize: str | None = None  # bootstrap | mipro | gepa
    reflection_lm: str | None = None  # model spec proposing instructions (MIPROv2, GEPA); default: the teacher's
    optimize_inputs: int = 16  # train inputs the optimizer uses: half to learn from, half to score candidates on
    optimize_trials: int = 4  # MIPROv2 trials; GEPA gets 6 metric calls per trial
    # budget for one command (its real LM calls; cached answers are free); not part of the run's identity
    max_calls: int | None = None  # stop before the LM call that would make more than this many
    max_cost: float | None = None  # stop before the spend (USD, as the provider prices calls) could pass this

    def __post_init__(self) -> None:
        _check_values(self)  # a bad value fails where the config is built, from a file, flags or Python

    def split_limit(self, split: str) -> int | None:
        base = self.train_inputs if split == "train" else self.eval_inputs
        if self.limit is not None:
            return self.limit if base is None else min(base, self.limit)
        return base

    def critic_settings(self) -> CriticSettings:
        """The critic's settings from the `critic_*` keys."""
        return CriticSettings(**{f: getattr(self, f"critic_{f}") for f in CRITIC_FIELDS})

    def identity(self) -> dict[str, Any]:
        """What decides the run's results (and so its id): everything but how fast it gets there, hashed as earlier
        versions did (programs/legacy_ids.py)."""
        return pipeline_identity(asdict(self))


PROFILES: dict[str, dict[str, Any]] = {
    # fast: the 0.5B teacher/critic, a few inputs; for tests and a first look (<= 10 min on 2 CPU cores)
    "tiny": dict(teacher="local/qwen2.5-coder-0.5b-instruct", critic="local/qwen2.5-coder-0.5b-instruct",
                 train_inputs=24, eval_inputs=8, teacher_max_tokens=120, critic_max_tokens=64, max_steps=-1,
                 # a student trained for a step or two rambles: keep its pairs, so that feedback has data
                 length_band=(0.2, 5.0), k_samples=3,
                 # every feedback stage (sampling, pairs, DPO) in minutes: a task's guards and curation were chosen
                 # for the default's 1.5B teacher and critic, not for the 0.5B ones
                 objective="dpo", meaning_floor=None, length_control=False),
    # the README's first command: the 1.5B teacher/critic, 140 train inputs, every test input (69) so that students
    # can be told apart
    "default": dict(eval_inputs=None),
    # sized like the paper for a GPU or API models: all inputs (EmpatheticDialogues with --inputs), 10 epochs
    "full": dict(train_inputs=None, eval_inputs=None, epochs=10.0, batch_size=16, threads=8, ood_inputs=120,
                 second_judge="local/qwen2.5-coder-0.5b-instruct"),
}


def task_label(task: Any) -> str:
    """A run's task as its config recorded it: the spec (`humor`, a file), or a program's task (`CriticDistill`,
    recorded whole, as a dict or its JSON text) by its name."""
    if isinstance(task, str) and task.startswith("{"):
        try:
            task = json.loads(task)
        except ValueError:
            return task
    return f"{task['name']} (a program's task)" if isinstance(task, dict) else str(task)


def build_config(profile: str = "default", toml_path: str | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}")
    data: dict[str, Any] = {}
    if toml_path:
        p = Path(toml_path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{p}: not valid TOML ({e})") from e
        data = data.get("pipeline", data)
        if "profile" in data:
            if data["profile"] not in PROFILES:
                raise ConfigError(f"{p}: unknown profile {data['profile']!r}; choose one of {', '.join(PROFILES)}")
            profile = data["profile"]
    given = {ALIASES.get(k, k): v for k, v in {**data, **{k: v for k, v in (overrides or {}).items()
                                                          if v is not None}}.items()}
    # the layers, each over the one before: the dataclass, the task's own defaults, the profile, the file, the flags
    task, task_error = _load_task(given.get("task", PROFILES[profile].get("task", PipelineConfig.task)))
    values: dict[str, Any] = {**dict(task.defaults if task else ()), "profile": profile, **PROFILES[profile],
                              **given}
    known = {f.name: f for f in fields(PipelineConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; known: {', '.join(known)}")
    cfg = PipelineConfig(**values)  # checks every value (__post_init__)
    if task_error is not None:  # a bad task fails here, before any model is loaded, after the keys are checked
        raise task_error
    return cfg


OFF = ("off", "none")
ALIASES = {"judge": "second_judge", "test_inputs": "eval_inputs"}  # a key's earlier name, still read from files and overrides


def _check_values(self: PipelineConfig) -> None:
    """Every key's value, each named in one line when it cannot work (before any model loads); a few spellings
    normalized (`off` guards, a TOML list for length_band, `none` for optimize)."""
    for name in ("meaning_floor", "meaning_margin"):  # `off` turns a guard a task's defaults set back off
        if isinstance(getattr(self, name), str) and getattr(self, name).strip().lower() in OFF:
            setattr(self, name, None)
    for name in ("train_inputs", "eval_inputs", "limit"):
        v = getattr(self, name)
        if v is not None and (not isinstance(v, int) or v < 1):
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    if not (_number(self.teacher_temperature) and 0 <= self.teacher_temperature <= 2):
        raise ConfigError(f"teacher_temperature must be in [0, 2], got {self.teacher_temperature}")
    for name in ("n_candidates", "k_samples", "batch_size", "max_length", "threads", "student_max_tokens",
                 "teacher_max_tokens", "critic_max_tokens"):
        v = getattr(self, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"{name} must be a positive integer, got {v!r}")
    if isinstance(self.ood_inputs, bool) or not isinstance(self.ood_inputs, int) or self.ood_inputs < 0:
        raise ConfigError(f"ood_inputs (--ood) must be 0 or a positive integer, got {self.ood_inputs!r}")
    self.length_band = tuple(self.length_band)
    if len(self.length_band) != 2 or not 0 < self.length_band[0] <= 1 <= self.length_band[1]:
        raise ConfigError(f"length_band must be [lo, hi] with 0 < lo <= 1 <= hi, got {list(self.length_band)}")
    objectives(self)
    for name, allowed in (("sampling", ("nucleus", "diverse_beam")), ("pair_selection", ("edit", "embedding")),
                          ("eval_split", ("test", "dev"))):
        if getattr(self, name) not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
    for name in ("epochs", "learning_rate", "dpo_learning_rate", "brio_learning_rate", "warmstart_epochs",
                 "feedback_epochs"):
        v = getattr(self, name)
        if v is not None and not (_number(v) and v > 0):
            raise ConfigError(f"{name} must be a positive number, got {v!r}")
    _check_training(self)
    self.critic_settings()  # a CriticSettingsError: its own one line (a user error, as ConfigError is)
    if self.feedback_every is not None and self.feedback_every <= 0:
        raise ConfigError("feedback_every must be a positive number of epochs")
    if self.max_calls is not None and (isinstance(self.max_calls, bool) or not isinstance(self.max_calls, int)
                                      or self.max_calls < 0):
        raise ConfigError(f"max_calls must be a non-negative integer, got {self.max_calls!r}")
    if self.max_cost is not None and (isinstance(self.max_cost, bool) or not isinstance(self.max_cost, (int, float))
                                     or not self.max_cost > 0):
        raise ConfigError(f"max_cost must be a positive number of dollars, got {self.max_cost!r}")
    if self.optimize not in (None, "", "none", "bootstrap", "mipro", "gepa"):
        raise ConfigError(f"optimize must be one of bootstrap, mipro, gepa, got {self.optimize!r}")
    if self.optimize in ("", "none"):
        self.optimize = None
    if self.optimize and (self.optimize_inputs < 2 or self.optimize_trials < 1):
        raise ConfigError("optimize_inputs must be at least 2 and optimize_trials at least 1")




def _load_task(spec: Any) -> tuple[Any, Exception | None]:
    """The config's task, loaded once: its defaults are a layer of the config, and its error is reported after the
    config's own keys are checked."""
    from programs.task_sources import get_task
    from programs.tasks import TaskError

    try:
        return get_task(spec), None
    except TaskError as e:
        return None, e


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# TRL's DPOConfig.loss_type names (a test checks them against the installed TRL), and those that read label_smoothing
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
SMOOTHED_LOSSES = ("robust", "exo_pair", "aot", "aot_unpaired")
# transformers' SchedulerType values that need nothing but the step count
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
              "inverse_sqrt", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "warmup_stable_decay")


def _check_training(cfg: PipelineConfig) -> None:
    """The training and feedback keys, each named in one line when its value cannot work (before any model loads)."""
    for name in ("max_steps", "warmstart_max_steps", "feedback_max_steps"):
        v = getattr(cfg, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v == 0 or v < -1):
            raise ConfigError(f"{name} must be a positive integer (or -1: train by epochs), got {v!r}")
    if not (_number(cfg.sampling_temperature) and 0 < cfg.sampling_temperature <= 2):
        raise ConfigError(f"sampling_temperature must be in (0, 2], got {cfg.sampling_temperature!r}")
    if not (_number(cfg.sampling_top_p) and 0 < cfg.sampling_top_p <= 1):
        raise ConfigError(f"sampling_top_p must be in (0, 1], got {cfg.sampling_top_p!r}")
    if cfg.pair_anchor not in ("greedy", "none"):
        raise ConfigError(f"pair_anchor must be one of greedy, none, got {cfg.pair_anchor!r}")
    if not (_number(cfg.min_confidence) and 0 <= cfg.min_confidence < 1):
        raise ConfigError(f"min_confidence must be in [0, 1), got {cfg.min_confidence!r}")
    for name in ("meaning_floor", "meaning_margin"):
        v = getattr(cfg, name)
        if v is not None and not (_number(v) and -1 <= v <= 1):
            raise ConfigError(f"{name} must be a number in [-1, 1] (a cosine similarity), got {v!r}")
    if not isinstance(cfg.length_control, bool):
        raise ConfigError(f"length_control must be true or false, got {cfg.length_control!r}")
    if not isinstance(cfg.both_orders_agree, bool):
        raise ConfigError(f"both_orders_agree must be true or false, got {cfg.both_orders_agree!r}")
    if not (_number(cfg.dpo_beta) and cfg.dpo_beta > 0):
        raise ConfigError(f"dpo_beta must be a positive number, got {cfg.dpo_beta!r}")
    losses = [cfg.dpo_loss_type] if isinstance(cfg.dpo_loss_type, str) else cfg.dpo_loss_type
    if not isinstance(losses, (list, tuple)) or not losses or any(loss not in DPO_LOSS_TYPES for loss in losses):
        raise ConfigError(f"dpo_loss_type must be one of {', '.join(DPO_LOSS_TYPES)} or a list of them, "
                          f"got {cfg.dpo_loss_type!r}")
    if isinstance(cfg.dpo_loss_type, tuple):
        cfg.dpo_loss_type = list(cfg.dpo_loss_type)
    weights = cfg.dpo_loss_weights
    if weights is not None and (not isinstance(weights, (list, tuple)) or len(weights) != len(losses)
                                or not all(_number(w) and w >= 0 for w in weights) or not any(weights)):
        raise ConfigError(f"dpo_loss_weights must be one non-negative number per dpo_loss_type entry "
                          f"({len(losses)}), got {weights!r}")
    if weights is not None:
        cfg.dpo_loss_weights = [float(w) for w in weights]
    if not (_number(cfg.dpo_label_smoothing) and 0 <= cfg.dpo_label_smoothing < 0.5):
        raise ConfigError(f"dpo_label_smoothing must be in [0, 0.5), got {cfg.dpo_label_smoothing!r}")
    if cfg.dpo_label_smoothing and not set(losses) & set(SMOOTHED_LOSSES):
        raise ConfigError(f"dpo_label_smoothing needs a dpo_loss_type that reads it ({', '.join(SMOOTHED_LOSSES)}; "
                          f"e.g. \"robust\", DPO with flipped-label noise), got {cfg.dpo_loss_type!r}")
    if "exo_pair" in losses and not cfg.dpo_label_smoothing:
        raise ConfigError("dpo_loss_type exo_pair needs dpo_label_smoothing > 0 (its paper suggests 1e-3)")
    if cfg.feedback_lr_scheduler_type not in SCHEDULERS:
        raise ConfigError(f"feedback_lr_scheduler_type must be one of {', '.join(SCHEDULERS)}, "
                          f"got {cfg.feedback_lr_scheduler_type!r}")
    if not (_number(cfg.feedback_warmup_ratio) and 0 <= cfg.feedback_warmup_ratio < 1):
        raise ConfigError(f"feedback_warmup_ratio must be in [0, 1), got {cfg.feedback_warmup_ratio!r}")


OBJECTIVE_NAMES = ("ft", "curated", "sd", "brio", "dpo", "brio-dpo")


def objectives(cfg: PipelineConfig) -> list[str]:
    """The objectives to train after the warm start, in the paper's order."""
    if cfg.objective in ("none", "", None):
        return []
    if cfg.objective == "all":
        return list(OBJECTIVE_NAMES)
    names = [n.strip() for n in cfg.objective.split(",") if n.strip()]
    unknown = [n for n in names if n not in OBJECTIVE_NAMES]
    if unknown:
        raise ConfigError(f"unknown objective(s) {', '.join(unknown)}; choose from none, {', '.join(OBJECTIVE_NAMES)}, all")
    return names
