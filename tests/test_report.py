"""report.md's per-student section: what training did to each student and the critic-independent checks."""

from dataclasses import asdict

from metrics.winrate import Estimate


def _evaluation(label, outputs, log_history):
    items = [{"input_id": f"i{n}", "text": t, "a": o, "b": "teacher"}
             for n, (t, o) in enumerate(zip(["It rained all day long.", "My cat sat on my laptop."], outputs))]
    est = Estimate(0.5, 0.4, 0.6, 2)
    return {"label": label, "judge": "critic", "split": "test", "items": items, "wtr_prob": est,
            "wtr_decision": est, "length_ratio": 1.0, "log_history": log_history, "meaning": 0.5}


def test_report_shows_whether_each_student_moved(tmp_path):
    from finetune.report import write_report
    from finetune.compare import add_checks
    from programs.config import PipelineConfig
    from programs.builtin_tasks import HUMOR

    dpo_log = [{"loss": 0.693, "step": 1, "rewards/accuracies": 0.0, "rewards/margins": 0.0},
               {"loss": 0.61, "step": 8, "rewards/accuracies": 0.75, "rewards/margins": 0.42}]
    evaluations = [_evaluation("warm start (imitation)", ["It rained all day long.", "Cat: laptop owner now."],
                               [{"loss": 2.0, "step": 4}]),
                   _evaluation("DPO", ["The sky wept on my day off.", "Cat: laptop owner now."], dpo_log)]
    add_checks(evaluations, HUMOR)  # the bundled MiniLM for meaning
    assert evaluations[0]["checks"]["copy_rate"] == 0.5 and evaluations[0]["checks"]["changed"] is None
    assert evaluations[1]["checks"]["changed"] == 0.5 and evaluations[1]["checks"]["copy_rate"] == 0.0
    assert 0 < evaluations[1]["checks"]["meaning"] <= 1

    path = write_report(tmp_path, config=asdict(PipelineConfig()), counts={}, evaluations=evaluations,
                        log_history=[], examples=[], command="python -m programs.compile", db="t.duckdb")
    lines = path.read_text().splitlines()
    table = lines[lines.index("## Did training move the student?") + 4:]
    assert table[0].startswith("| warm start (imitation) | test | 4 | 2.000 → 2.000 | – | – | – | 0.50 |")
    assert table[1].startswith("| DPO | test | 8 | 0.693 → 0.610 | 0.75 | 0.420 | 0.50 | 0.00 |")
