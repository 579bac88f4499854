"""A student that explains itself: a Hugging Face model card (`README.md`) in every saved student folder.

The card says what the student is (base model, objective, teacher and critic), what it was trained on (every dataset
from the first warm start to this run, with its id and row count), how well it does (the win-tie rates against the
teacher recorded in `evaluations`, with their intervals) and how to load it (transformers / peft, and as a DSPy LM).
It is written when a run finishes (or is found finished: a rerun writes a card a folder lacks) and again after each
evaluation (`refresh_cards`), from the run's `train_result.json` marker and, when there is one, the store. The
metadata is `huggingface_hub.ModelCardData`, so the hub and `ModelCard.load` read it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from programs.config import task_label
from programs.task_sources import get_task

if TYPE_CHECKING:
    from store.db import Store

MARKER = "train_result.json"  # each finished run's record in its output folder (`finetune.runner` writes it)
CARD = "README.md"
OBJECTIVES = {
    "imitation": "imitation (supervised fine-tuning on the teacher's outputs; the paper's FT)",
    "ft": "imitation (supervised fine-tuning on the teacher's outputs; the paper's FT)",  # also the warm start, before
    "curated": "critic-curated imitation (supervised fine-tuning on the teacher's output the critic ranks first)",
    "sd": "self-distillation (supervised fine-tuning on the critic's preferred samples of the student)",
    "dpo": "DPO on the critic's (chosen, rejected) pairs of the student's own samples",
    "brio": "BRIO (ranking loss + cross-entropy on the teacher's outputs ranked by the critic)",
    "brio-dpo": "BRIO, then DPO on the critic's pairs of the BRIO model's samples (this run is the DPO half)",
}


def write_card(output_dir: str | Path, store: Store | None = None) -> list[Path]:
    """Write `README.md` into the run's model folders (`final`, and `merged` when there is one) and into
    `output_dir` itself; returns the files written (none when no run finished there)."""
    output_dir = Path(output_dir)
    info = _info(output_dir, store)
    if info is None:
        return []
    written = []
    folders = [f for f in (output_dir / "final", output_dir / "merged")
               if (f / "config.json").exists() or (f / "adapter_config.json").exists()]
    # each model folder, then the student's folder itself (in place of the Trainer's generic card), which describes
    # the model to use: the merged one when there is one
    for folder, target in [*((f, f) for f in folders), *([(folders[-1], output_dir)] if folders else [])]:
        tmp = target / f".{CARD}.tmp"
        render(info, folder).save(tmp)
        tmp.replace(target / CARD)
        written.append(target / CARD)
    return written


def refresh_cards(store: Store, checkpoint_id: str | None) -> list[Path]:
    """Rewrite the card of the run a checkpoint belongs to (after an evaluation of it); a card that cannot be written
    is a warning, never a failed evaluation."""
    if not checkpoint_id:
        return []
    rows = store.query("SELECT path FROM checkpoints WHERE training_id = (SELECT training_id FROM checkpoints "
                       "WHERE checkpoint_id = ?)", [checkpoint_id])
    written: list[Path] = []
    for output_dir in dict.fromkeys(Path(r["path"]).parent for r in rows):
        try:
            written += write_card(output_dir, store)
        except OSError as exc:
            warnings.warn(f"could not write the model card in {output_dir}: {exc}", stacklevel=2)
    return written


# -- what the card says ----------------------------------------------------------------------------------------------


def _info(output_dir: Path, store: Store | None) -> dict[str, Any] | None:
    """Everything the card says about the run in `output_dir`: its marker, and the store's rows about it."""
    marker = output_dir / MARKER
    if not marker.exists():
        return None
    recorded = json.loads(marker.read_text())
    result, config = recorded["result"], recorded.get("config") or {}
    info: dict[str, Any] = {
        "objective": recorded.get("objective", "ft"), "config": config, "base_model": config.get("base_model"),
        "training_id": result["training_id"], "steps": result.get("steps"), "log_history": result.get("log_history", []),
        "run_id": recorded.get("run_id"), "teacher": None, "critic": None, "task": None,
        "datasets": [], "starts_from": [], "evaluations": [],
    }
    dataset_id = recorded.get("dataset_id")
    if dataset_id or recorded.get("n_examples") is not None:
        info["datasets"] = [{"name": None, "dataset_id": dataset_id, "n_rows": recorded.get("n_examples"),
                             "stage": info["objective"]}]
    if store is None:
        return info
    run = store.query("SELECT config ->> 'teacher' AS teacher, config ->> 'critic' AS critic, config ->> 'task' AS task "
                      "FROM runs WHERE run_id = ?", [info["run_id"]])
    if run:
        info.update({k: v for k, v in run[0].items() if v})
    # the chain of runs this one starts from (a feedback student from its warm start), this run first
    chain, training_id, seen = [], info["training_id"], set()
    while training_id and training_id not in seen:
        seen.add(training_id)
        row = store.query("SELECT t.training_id, t.objective, t.base_model, t.run_id, d.dataset_id, d.name, d.n_rows "
                          "FROM training_runs t LEFT JOIN datasets d USING (dataset_id) WHERE t.training_id = ?",
                          [training_id])
        if not row:
            break
        chain.append(row[0])
        parent = store.query("SELECT training_id FROM checkpoints WHERE path = ? ORDER BY created_at DESC LIMIT 1",
                             [row[0]["base_model"]])
        training_id = parent[0]["training_id"] if parent else None
    if chain:
        info["datasets"] = [{"name": c["name"], "dataset_id": c["dataset_id"], "n_rows": c["n_rows"],
                             "stage": c["objective"]} for c in chain if c["dataset_id"]] or info["datasets"]
        info["starts_from"] = chain[1:]
        info["root_base"] = chain[-1]["base_model"]
        if not info["teacher"] and chain[-1]["run_id"]:
            root = store.query("SELECT config ->> 'teacher' AS teacher, config ->> 'critic' AS critic "
                               "FROM runs WHERE run_id = ?", [chain[-1]["run_id"]])
            if root:
                info.update({k: v for k, v in root[0].items() if v})
    info["evaluations"] = store.query(
        "SELECT e.student, e.reference, e.judge, e.split, e.n, e.wtr_prob, e.wtr_prob_lo, e.wtr_prob_hi, "
        "e.wtr_decision, e.wtr_decision_lo, e.wtr_decision_hi, e.created_at, k.path "
        "FROM evaluations e JOIN checkpoints k USING (checkpoint_id) WHERE k.training_id = ? "
        "ORDER BY e.split, e.judge, e.created_at", [info["training_id"]])
    return info


def _is_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").exists()


def _is_seq2seq(folder: Path) -> bool:
    config = folder / "config.json"
    return config.exists() and bool(json.loads(config.read_text()).get("is_encoder_decoder"))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def render(info: dict[str, Any], folder: Path):
    """The card (`huggingface_hub.ModelCard`) of the student in `folder`."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    adapter = _is_adapter(folder)
    objective = info["objective"]
    base = info["base_model"]
    datasets = [d for d in info["datasets"] if d.get("dataset_id")]
    evals = info["evaluations"]
    name = f"{folder.parent.name}/{folder.name}"
    results = [EvalResult(task_type="text-generation", dataset_type=f"critic-distill/{_task_name(info.get('task'))}",
                          dataset_name=e["split"], metric_type=metric, metric_value=round(e[key], 4),
                          metric_name=f"{label} vs {e['reference']}", metric_config=f"judge={e['judge']}")
               for e in evals for metric, key, label in (("win_tie_rate", "wtr_prob", "WTR (mean P)"),
                                                         ("win_tie_rate_decisions", "wtr_decision", "WTR (decisions)"))
               if e[key] is not None]
    data = ModelCardData(
        base_model=base, library_name="peft" if adapter else "transformers",
        pipeline_tag="text2text-generation" if _is_seq2seq(folder) else "text-generation",
        tags=["critic-distill", "distillation", objective, *(["lora"] if info["config"].get("lora") else []),
              *(["trl", "dpo"] if "dpo" in objective else ["trl", "sft"] if objective in ("imitation", "ft", "curated", "sd") else [])],
        datasets=[d["dataset_id"] for d in datasets] or None,
        model_name=name if results else None, eval_results=results or None,
    )
    return ModelCard("---\n" + data.to_yaml() + "\n---\n\n" + _prose(info, folder, name, adapter, datasets, evals))


def _prose(info: dict, folder: Path, name: str, adapter: bool, datasets: list[dict], evals: list[dict]) -> str:
    config, objective = info["config"], info["objective"]
    summary = _summary(info["log_history"])
    lines = [
        f"# {name}",
        "",
        "A student distilled by [critic-distill](https://arxiv.org/abs/2402.18113) (\"Small But Funny\"): trained on "
        "what a teacher model wrote and a critic model judged.",
        "",
        f"- **Base model:** `{info['base_model']}`"
        + (f" (first base: `{info['root_base']}`)" if info.get("root_base") not in (None, info["base_model"]) else ""),
        f"- **Objective:** `{objective}`: {OBJECTIVES.get(objective, objective)}",
        f"- **Teacher:** `{info['teacher'] or 'unknown'}` · **critic:** `{info['critic'] or 'unknown'}`"
        + (f" · **task:** `{task_label(info['task'])}`" if info.get("task") else ""),
        f"- **Weights here:** {'a LoRA adapter (peft) on the base model' if adapter else 'a full model'}"
        f"{' (LoRA r=' + str(config.get('lora_r')) + ', merged)' if not adapter and config.get('lora') else ''}",
        f"- **Training:** {info['steps']} steps, learning rate {config.get('learning_rate') or 'the stage default'}, "
        f"{config.get('epochs')} epochs (max_steps {config.get('max_steps')}), batch {config.get('batch_size')}, "
        f"max length {config.get('max_length')}, seed {config.get('seed')}"
        + (f"; loss {summary}" if summary else ""),
        f"- **Training id:** `{info['training_id']}` · **run:** `{info['run_id']}`",
        "",
        "## Training data",
        "",
    ]
    if datasets:
        lines += ["| stage | dataset | id | rows |", "|---|---|---|---|"]
        lines += [f"| {d['stage']} | {d['name'] or '–'} | `{d['dataset_id']}` | {d['n_rows'] if d['n_rows'] is not None else '–'} |"
                  for d in datasets]
        lines += ["", "Export any of them with `python -m store export <dataset or id> -o data.jsonl` (chat format, "
                      "with lineage)."]
    else:
        lines += ["Not recorded (trained without a store)."]
    lines += ["", "## Evaluation", ""]
    if evals:
        lines += ["Win-tie rate against the teacher's output, judged in both presentation orders, ×100 with 95% "
                  "bootstrap intervals:", "",
                  "| split | judge | reference | n | WTR (mean P) | WTR (decisions) |", "|---|---|---|---|---|---|"]
        for e in evals:
            lines.append(f"| {e['split']} | `{e['judge']}` | `{e['reference']}` | {e['n']} | "
                         f"{_pct(e['wtr_prob'])} [{_pct(e['wtr_prob_lo'])}, {_pct(e['wtr_prob_hi'])}] | "
                         f"{_pct(e['wtr_decision'])} [{_pct(e['wtr_decision_lo'])}, {_pct(e['wtr_decision_hi'])}] |")
    else:
        lines += ["Not evaluated yet: `python -m programs.compile` evaluates every student it trains, and "
                  f"`python -m finetune.evaluate --student {folder} --inputs FILE` any one; this card is rewritten "
                  "with the numbers."]
    lines += ["", "## Use it", "", *_usage(info, folder, adapter)]
    return "\n".join(lines) + "\n"


def _summary(log_history: list[dict]) -> str:
    losses = [row["loss"] for row in log_history if "loss" in row]
    if len(losses) < 2:
        return f"{losses[0]:.3f}" if losses else ""
    return f"{losses[0]:.3f} → {losses[-1]:.3f}"


def _usage(info: dict, folder: Path, adapter: bool) -> list[str]:
    path = str(folder.resolve())
    auto = "AutoModelForSeq2SeqLM" if _is_seq2seq(folder) else "AutoModelForCausalLM"
    lines = ["With transformers:", "", "```python"]
    if adapter:
        lines += [f"from transformers import {auto}, AutoTokenizer",
                  "from peft import PeftModel", "",
                  f"base = {auto}.from_pretrained({info['base_model']!r})  # an embedded name: see load_student below",
                  f"model = PeftModel.from_pretrained(base, {path!r}).merge_and_unload()",
                  f"tokenizer = AutoTokenizer.from_pretrained({path!r})"]
    else:
        lines += [f"from transformers import {auto}, AutoTokenizer", "",
                  f"model = {auto}.from_pretrained({path!r})",
                  f"tokenizer = AutoTokenizer.from_pretrained({path!r})"]
    lines += ["```", "", "or, with the base resolved the way critic-distill resolves it (embedded names included):", "",
              "```python", "from programs.student_lm import load_student", "",
              f"model, tokenizer = load_student({path!r})", "```", ""]
    return lines + _dspy_usage(info.get("task") or "humor", f"local/{path}")


def _dspy_usage(task: Any, lm: str) -> list[str]:
    """The DSPy snippet for the run's task: its student signature with the task's own fields, or, for a program's
    task, the user's program pointed at the student; a task that no longer loads gets a snippet that reads its
    fields at run time (the card renders whatever the task)."""
    shape = _task_shape(task)
    load = f"resolve_lm({lm!r}, temperature=0.0, max_tokens=64)"
    if shape is not None and shape[2] is not None:
        inputs, outputs, program = shape
        chat = isinstance(task, dict) and task.get("student_adapter") == "chat"
        return ["As a DSPy LM behind your own program (the run distilled a DSPy program's task: the student was "
                "trained on that program's prompts, through " + ("DSPy's ChatAdapter, the default: no configure line"
                                                                 if chat else "the labeled adapter") + "):", "",
                "```python", "import dspy",
                *([] if chat else ["from programs.adapter import LabeledAdapter"]), "from programs.lm import resolve_lm",
                "", f"program = {program}()  # the program you distilled", f"program.set_lm({load})",
                *([] if chat else ["dspy.configure(adapter=LabeledAdapter())"]),
                f"print(program({_call_args(inputs)}).{outputs[0]})", "```", "",
                "`CriticDistill.compile` returns this program already pointed at the student: "
                "`program.save(\"program.json\")` keeps it, and `program.load(\"program.json\", "
                "allow_unsafe_lm_state=True)` on a fresh instance loads it again (the flag lets DSPy import this "
                "project's LM class: pass it only for files you wrote)."]
    lines = ["As a DSPy LM (the prompt it was trained on comes from the task's student signature and the labeled "
             "adapter):", "", "```python", "import dspy", "from programs.adapter import LabeledAdapter",
             "from programs.lm import resolve_lm"]
    spec = _spec_here(task)
    configure = f"dspy.configure(lm={load}, adapter=LabeledAdapter())"
    if shape is None:
        return lines + ["from programs.tasks import get_task, student_signature", "", configure,
                        f"task = get_task({spec!r})",
                        "print(dspy.Predict(student_signature(task))(**{name: \"...\" for name in task.inputs}))",
                        "```"]
    inputs, outputs, _ = shape
    if inputs == ["text"]:  # the built-in fields: the Student program takes the one input as `text`
        return lines + ["from programs.student import Student", "from programs.tasks import get_task", "", configure,
                        f"print(Student(get_task({spec!r}))({_call_args(inputs)}).{outputs[0]})", "```"]
    return lines + ["from programs.tasks import get_task, student_signature", "", configure,
                    f"student = dspy.Predict(student_signature(get_task({spec!r})))",
                    f"print(student({_call_args(inputs)}).{outputs[0]})", "```"]


def _task_shape(task: Any) -> tuple[list[str], list[str], str | None] | None:
    """The recorded task's input and output field names, and for a program's task the program's class name
    (`YourProgram` when only its recorded fields are known); None when it cannot be read here."""
    try:
        task = _recorded(task)
        if isinstance(task, dict):  # a program's task (CriticDistill), recorded whole
            inputs = [f[0] for f in task.get("input_fields") or []] or ["text"]
            outputs = [f[0] for f in task.get("output_fields") or []] or ["paraphrase"]
            return [str(n) for n in inputs], [str(n) for n in outputs], "YourProgram"
        loaded = get_task(task)
        program = None if loaded.program is None else type(loaded.program).__name__
        return list(loaded.inputs), list(loaded.outputs), program
    except Exception:  # noqa: BLE001 - a task file moved or broken since the run: the card still renders
        return None


def _recorded(task: Any) -> Any:
    """The task as the run's config recorded it: a spec, or a program's task as a dict (stored as JSON text)."""
    if isinstance(task, str) and task.startswith("{"):
        try:
            return json.loads(task)
        except ValueError:
            return task
    return task


def _task_name(task: Any) -> str:
    """The task as a dataset type names it: the spec, or a program's task by its name."""
    task = _recorded(task)
    return str(task.get("name") or "task") if isinstance(task, dict) else str(task or "task")


def _spec_here(task: Any) -> str:
    """The task spec as the snippet gives it: a task file by its absolute path, so the snippet runs anywhere."""
    if isinstance(task, str) and task.lower().endswith(".toml") and Path(task).expanduser().is_file():
        return str(Path(task).expanduser().resolve())
    return task if isinstance(task, str) else str(task)


def _call_args(inputs: list[str]) -> str:
    return ", ".join(f"{name}={'I am tired.' if name == 'text' else '...'!r}" for name in inputs)


__all__ = ["refresh_cards", "render", "write_card"]
