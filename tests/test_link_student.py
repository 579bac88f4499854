"""`<out>/student`: the student of the objective the run trained (the task's evidence chose it, not the critic's
verdict on the run), else the critic's best of several."""

from types import SimpleNamespace

from metrics.winrate import Estimate
from finetune.link_student import link_student


def _students(tmp_path, *labels):
    models = []
    for label in labels:
        folder = tmp_path / label.replace(" ", "-")
        folder.mkdir()
        models.append((label, SimpleNamespace(path=str(folder))))
    return models


def _evaluation(label, wtr, judge="critic", judged=69):
    return {"label": label, "judge": judge, "split": "test", "wtr_prob": Estimate(wtr, wtr - 1, wtr + 1, 69),
            "items": [{"input_id": f"i{n}"} for n in range(judged)]}


def test_one_objective_is_linked_even_when_the_critic_prefers_the_warm_start(tmp_path):
    models = _students(tmp_path, "warm start (imitation)", "curated imitation")
    out = tmp_path / "out"
    out.mkdir()
    evaluations = [_evaluation("warm start (imitation)", 47.3), _evaluation("curated imitation", 47.0)]
    line = link_student(out, models, evaluations, "critic", "test")
    assert (out / "student").resolve() == (tmp_path / "curated-imitation").resolve()
    assert line.endswith("(curated imitation, the run's objective)")


def test_several_objectives_link_the_critics_best(tmp_path):
    models = _students(tmp_path, "warm start (imitation)", "DPO", "BRIO")
    out = tmp_path / "out"
    out.mkdir()
    evaluations = [_evaluation("warm start (imitation)", 47.3), _evaluation("DPO", 48.2), _evaluation("BRIO", 48.0),
                   _evaluation("BRIO", 60.0, judge="second judge")]  # only the critic's verdicts choose
    assert link_student(out, models, evaluations, "critic", "test").endswith("(DPO, the best by the critic)")
    assert (out / "student").resolve() == (tmp_path / "DPO").resolve()


def test_an_imitation_only_run_links_its_one_student(tmp_path):
    models = _students(tmp_path, "FT (imitation)")
    out = tmp_path / "out"
    out.mkdir()
    assert link_student(out, models, [], "critic", "test").endswith("(FT (imitation), the only student)")
    assert (out / "student").resolve() == (tmp_path / "FT-(imitation)").resolve()


def test_no_student_is_chosen_from_an_evaluation_that_judged_nothing(tmp_path):
    """Every output of both students failed: nothing is linked, and an earlier run's link is gone."""
    models = _students(tmp_path, "warm start (imitation)", "DPO")
    out = tmp_path / "out"
    out.mkdir()
    (out / "student").symlink_to(tmp_path / "DPO", target_is_directory=True)
    evaluations = [_evaluation("warm start (imitation)", 0.0, judged=0), _evaluation("DPO", 0.0, judged=0)]
    assert link_student(out, models, evaluations, "critic", "test") is None
    assert not (out / "student").exists() and not (out / "student").is_symlink()


def test_an_objective_that_judged_nothing_is_passed_over(tmp_path):
    models = _students(tmp_path, "warm start (imitation)", "DPO")
    out = tmp_path / "out"
    out.mkdir()
    evaluations = [_evaluation("warm start (imitation)", 0.4), _evaluation("DPO", 0.0, judged=0)]
    assert link_student(out, models, evaluations, "critic", "test").endswith(
        "(warm start (imitation), the best by the critic)")
