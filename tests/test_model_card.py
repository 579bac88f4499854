"""Students that explain themselves: a real tiny student trained for two steps carries a Hugging Face model card
(`finetune/model_card.py`) that `huggingface_hub.ModelCard.load` reads, names its base model, objective, teacher,
critic and dataset, is written again by a rerun that trains nothing, and carries the win rate once evaluated."""

from __future__ import annotations

import ast
import json
from datetime import datetime
from dataclasses import asdict
from pathlib import Path

import dspy
import pytest
from huggingface_hub import ModelCard

from finetune.evaluate import _store_evaluation
from finetune.model_card import render
from finetune.imitate import ImitationConfig, train_imitation
from metrics.winrate import win_tie_rate
from programs.program_tasks import from_program
from programs.tasks import Task
from store import stable_id, to_json
from store.db import Store

ROOT = Path(__file__).resolve().parent.parent
TEACHER, CRITIC = "local/qwen2.5-coder-0.5b-instruct", "local/qwen2.5-coder-1.5b-instruct"


@pytest.fixture(scope="module")
def trained(tiny_causal_dir, tmp_path_factory) -> dict:
    """A LoRA student (merged too) trained 2 steps on 8 teacher pairs recorded as the `imitation` dataset of a run."""
    tmp = tmp_path_factory.mktemp("card")
    lines = (ROOT / "programs" / "data" / "humor_inputs.jsonl").read_text().splitlines()[:8]
    pairs = [{"input": t, "output": f"Oops! {t.rstrip('.')}, classic Monday."}
             for t in (json.loads(line)["text"] for line in lines)]
    store = Store(tmp / "t.duckdb")
    now = datetime.now()
    store.insert("runs", [{"run_id": "run1", "started_at": now, "status": "running", "command": "test",
                           "profile": "tiny", "config": to_json({"teacher": TEACHER, "critic": CRITIC, "task": "humor"}),
                           "code_version": "x"}])
    dataset_id = stable_id("dataset", "imitation", pairs)
    store.insert("datasets", [{"dataset_id": dataset_id, "name": "imitation", "sql": "SELECT ...", "n_rows": len(pairs),
                               "rows": to_json(pairs), "run_id": "run1", "created_at": now}])
    config = ImitationConfig(base_model=str(tiny_causal_dir), output_dir=str(tmp / "student-ft-x"), max_steps=2,
                             batch_size=4, learning_rate=5e-3, max_length=96, merge_lora=True)
    result = train_imitation(pairs, config, store=store, run_id="run1", dataset_id=dataset_id, progress=False)
    return {"store": store, "config": config, "pairs": pairs, "result": result, "dataset_id": dataset_id,
            "out": Path(config.output_dir), "base": str(tiny_causal_dir)}


def test_every_student_folder_has_a_card(trained):
    for folder, library in (("final", "peft"), ("merged", "transformers")):
        card = ModelCard.load(trained["out"] / folder / "README.md")
        assert card.data.base_model == trained["base"] and card.data.library_name == library
        assert card.data.datasets == [trained["dataset_id"]] and "imitation" in card.data.tags
        text = card.text
        assert f"`imitation`: imitation" in text and TEACHER in text and CRITIC in text
        assert f"| imitation | imitation | `{trained['dataset_id']}` | 8 |" in text  # the dataset, its id and row count
        assert "2 steps" in text and "Not evaluated yet" in text
        assert f"local/{(trained['out'] / folder).resolve()}" in text  # the DSPy LM spec
        assert ("PeftModel.from_pretrained" in text) == (library == "peft") and "AutoModelForCausalLM" in text
    top = ModelCard.load(trained["out"] / "README.md")  # the student's folder: the merged model's card
    assert top.data.library_name == "transformers" and top.data.datasets == [trained["dataset_id"]]


def test_a_rerun_writes_a_missing_card_without_training(trained):
    final = trained["out"] / "final"
    (final / "README.md").unlink()
    weights = (final / "adapter_model.safetensors").stat().st_mtime
    again = train_imitation(trained["pairs"], trained["config"], store=trained["store"], run_id="run1",
                            dataset_id=trained["dataset_id"], progress=False)
    assert again.training_id == trained["result"].training_id
    assert (final / "adapter_model.safetensors").stat().st_mtime == weights  # not trained again
    assert ModelCard.load(final / "README.md").data.base_model == trained["base"]


def test_an_evaluation_rewrites_the_card_with_its_win_rate(trained):
    result, store = trained["result"], trained["store"]
    prob, decision = win_tie_rate([0.7, 0.4, 0.9, 0.6, 0.55, 0.2], seed=0)
    _store_evaluation(store, student=result.checkpoint_id, reference=TEACHER, judge=CRITIC, split="test",
                      items=[{"input_id": f"i{n}"} for n in range(6)], prob=prob, decision=decision, details={},
                      run_id="run1", checkpoint_id=result.checkpoint_id)
    for folder in ("final", "merged"):  # the evaluated checkpoint is the merged one; both folders say so
        card = ModelCard.load(trained["out"] / folder / "README.md")
        text = card.text
        assert "Not evaluated yet" not in text
        row = (f"| test | `{CRITIC}` | `{TEACHER}` | 6 | {100 * prob.value:.1f} [{100 * prob.lo:.1f}, "
               f"{100 * prob.hi:.1f}] | {100 * decision.value:.1f} [{100 * decision.lo:.1f}, {100 * decision.hi:.1f}] |")
        assert row in text
        metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
        assert metrics == {"win_tie_rate": round(prob.value, 4), "win_tie_rate_decisions": round(decision.value, 4)}


# -- the DSPy snippet fits the run's task (cards rendered from plain data: no training) ------------------------------


def _dspy_snippet(task, folder: Path) -> tuple[str, str]:
    """The card's text for a run of `task` and its DSPy code block, checked to be Python."""
    info = {"objective": "ft", "config": {}, "base_model": "base", "training_id": "t1", "steps": 2, "log_history": [],
            "run_id": "run1", "teacher": TEACHER, "critic": CRITIC, "task": task, "datasets": [], "starts_from": [],
            "evaluations": []}
    text = render(info, folder).text
    code = text.split("As a DSPy LM", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    ast.parse(code)
    return text, code


def test_the_dspy_snippet_of_the_built_in_task(tmp_path):
    _, code = _dspy_snippet("humor", tmp_path)
    assert f"resolve_lm('local/{tmp_path.resolve()}'" in code
    assert "Student(get_task('humor'))(text='I am tired.').paraphrase" in code


def test_the_dspy_snippet_of_a_task_file_uses_its_fields(tmp_path):
    spec = ROOT / "examples" / "tasks" / "qa.toml"
    _, code = _dspy_snippet(str(spec), tmp_path)
    assert f"student_signature(get_task({str(spec)!r}))" in code
    assert "student(question='...', context='...').answer" in code
    assert "(text=" not in code and ".paraphrase" not in code


def test_the_dspy_snippet_of_a_programs_task_loads_the_program(tmp_path):
    class QA(dspy.Module):
        def __init__(self):
            super().__init__()
            self.answer = dspy.Predict(dspy.Signature("question, context -> answer", "Answer from the context."))

        def forward(self, question, context):
            return self.answer(question=question, context=context)

    task = from_program(QA(), critic_instruction="Choose the better answer.", name="qa-mine")
    recorded = to_json(asdict(task))  # as the run's config records it (CriticDistill's task)
    text, code = _dspy_snippet(recorded, tmp_path)
    assert "`qa-mine (a program's task)`" in text and "program.save(" in text
    assert "allow_unsafe_lm_state=True" in text
    assert "program = YourProgram()  # the program you distilled" in code
    assert f"program.set_lm(resolve_lm('local/{tmp_path.resolve()}', temperature=0.0, max_tokens=64))" in code
    assert "dspy.configure(adapter=LabeledAdapter())" in code
    assert "program(question='...', context='...').answer" in code and "get_task" not in code
    # a task file that names the program: the program's own class
    _, code = _dspy_snippet(str(ROOT / "examples" / "tasks" / "qa_program.toml"), tmp_path)
    assert "program = QA()" in code and "program(question='...', context='...').answer" in code


def test_a_task_that_no_longer_loads_still_renders(tmp_path):
    _, code = _dspy_snippet(str(tmp_path / "gone.toml"), tmp_path)
    assert "for name in task.inputs" in code
