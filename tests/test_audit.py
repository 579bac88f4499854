"""The critic audit (`metrics/audit.py`): agreement, position flips and length bias on labeled pairs, computed by
hand for deterministic judges; the `audits` row; a rerun that asks nothing; one-line errors for bad files.

The judges are small deterministic engines (the thing under test is the audit's bookkeeping, not a model); the slow
test runs the real CLI on the bundled 0.5B critic.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import dspy
import pytest

from metrics import audit as audit_mod
from metrics.audit import AuditError, audit, load_pairs, main
from programs.adapter import LabeledAdapter
from programs.critic import PAPER, Critic
from programs.builtin_tasks import HUMOR
from store import Store
from test_critic import PositionBiasedJudge  # tests/ is on sys.path (rootdir conftest, no package)

ROOT = Path(__file__).resolve().parent.parent
BUNDLED_PAIRS = ROOT / "programs" / "data" / "audit_pairs.jsonl"
ENV = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

# Five pairs, worked out by hand below for each judge. Word counts (better / worse): 4/8, 7/2, 11/3, 6/11, 3/8.
# The first order judged shows the better text first on pairs 0, 2, 4 and second on pairs 1, 3.
PAIRS = [
    {"id": "A", "input": "I lost my keys.", "better": "a joke about my keys",
     "worse": "I can not find my keys anywhere today", "worse_kind": "flat"},
    {"id": "B", "input": "It rained all day.", "better": "my plain cheerful rewrite of the rain",
     "worse": "it rained", "worse_kind": "flat"},
    {"id": "C", "input": "The printer jammed.", "better": "the printer and I had a joke of a morning together",
     "worse": "the printer jammed", "worse_kind": "flat"},
    {"id": "D", "input": "The dog ate my sandwich.", "better": "my dog dined on my sandwich",
     "worse": "a joke about something else entirely, long and unrelated to it", "worse_kind": "unrelated"},
    {"id": "E", "input": "I am tired.", "better": "a short quip",
     "worse": "a plain and longer restatement of the same", "worse_kind": "flat"},
]


def _response(request, choice: str, p1: float):
    """'Reason: …\\nChoice: <choice>' with P('1') = p1 at the answer token."""
    text = f"Reason: one is better.\nChoice: {choice}"
    tokens = ["Reason", ":", " one is better.", "\n", "Choice", ":", " ", choice]
    top = (dspy.lm15.TopLogprob(token="1", logprob=math.log(p1)), dspy.lm15.TopLogprob(token="2", logprob=math.log(1 - p1)))
    logprobs = tuple(dspy.lm15.TokenLogprob(token=t, logprob=-0.01, top=top if i == len(tokens) - 1 else ())
                     for i, t in enumerate(tokens))
    return dspy.lm15.Response(id=None, model=request.model, message=dspy.lm15.Message.assistant(text),
                              finish_reason="stop", usage=dspy.lm15.Usage(input_tokens=10, output_tokens=8),
                              logprobs=logprobs)


def _shown(request) -> tuple[str, str, str]:
    user = request.messages[-1].parts[0].text
    text = user.split("Text:")[1].split("Paraphrase 1:")[0].strip()
    first = user.split("Paraphrase 1:")[1].split("Paraphrase 2:")[0].strip()
    second = user.split("Paraphrase 2:")[1].strip()
    return text, first, second


class LongerJudge:
    """No position lean at all: always picks the text with more words, P = 0.8."""

    def __init__(self):
        self.calls = 0

    def complete(self, request):
        self.calls += 1
        _, first, second = _shown(request)
        first_longer = len(first.split()) > len(second.split())
        return _response(request, "1" if first_longer else "2", 0.8 if first_longer else 0.2)


class MumblingJudge(PositionBiasedJudge):
    """PositionBiasedJudge, except that it cannot answer about a text containing 'mumble'."""

    def complete(self, request):
        if "mumble" in _shown(request)[0]:
            self.calls += 1
            return dspy.lm15.Response(id=None, model=request.model, message=dspy.lm15.Message.assistant("I like both!"),
                                      finish_reason="stop", usage=dspy.lm15.Usage(input_tokens=5, output_tokens=3))
        return super().complete(request)


@pytest.fixture
def dspy_clean(dspy_state):
    """dspy_state, and the adapter put back too (the CLI configures LabeledAdapter globally)."""
    adapter = dspy.settings.adapter
    yield dspy_state
    dspy.configure(adapter=adapter)


def write_pairs(path: Path, pairs=PAIRS) -> Path:
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return path


def run_audit(tmp_path, engine, pairs=PAIRS, name="local/test-judge"):
    from store.callback import install

    store = Store(tmp_path / "t.duckdb")
    install(store)
    lm = dspy.LM(name, engine=engine, cache=False)
    with dspy.context(adapter=LabeledAdapter()):
        result = audit(pairs, Critic(HUMOR, PAPER), lm, store=store, judge=name, run_id="audit-test", source="test pairs",
                       file_sha="f" * 64)
    return store, result


def test_position_biased_judge_numbers_by_hand(tmp_path, dspy_clean):
    # P('1') = 0.9 when a 'joke' is shown first, else 0.6: it always answers "1".
    # P(better): A .65, B .5 (tie), C .65, D .35, E .5 (tie) -> agreement 2/5.
    # First order alone: A .9, B .4, C .9, D .1, E .6 -> 3/5. Both orders name position 1 on every pair -> flips 5/5.
    # Decided pairs A, C, D went to the shorter, longer, longer text (labels: longer only on C); the one decided
    # disagreement, D, went to the longer text -> length bias 1/1.
    engine = PositionBiasedJudge()
    store, r = run_audit(tmp_path, engine)
    assert engine.calls == 10
    assert r["n"] == 5 and r["failed_judgments"] == 0 and r["ties"] == 2
    assert r["agreement"].value == pytest.approx(0.4)
    assert r["agreement"].lo <= 0.4 <= r["agreement"].hi
    assert r["single_order_agreement"].value == pytest.approx(0.6)
    assert r["position_flip_rate"].value == pytest.approx(1.0)
    assert r["length_bias"].value == pytest.approx(1.0) and r["length_bias"].n == 1
    assert r["longer_chosen"].value == pytest.approx(2 / 3) and r["longer_expected"].value == pytest.approx(1 / 3)
    assert r["better_wins_when_first"].value == 1.0 and r["better_wins_when_second"].value == 0.0
    assert r["position_two_share"].value == 0.0
    assert {k: (v["n"], v["agreement"].value) for k, v in r["by_kind"].items()} == {"flat": (4, 0.5),
                                                                                    "unrelated": (1, 0.0)}
    assert r["by_kind"]["flat"]["position_flip_rate"].value == 1.0  # every measure per kind, with its interval
    # calibration: confidences .65 (A, C, D: right, right, wrong) and two ties (half right) -> |2/3 - .65| x 3/5
    assert r["ece"].value == pytest.approx(abs(2 / 3 - 0.65) * 3 / 5 + 0.0)
    assert r["position_lean"] > 0  # it leans to position 1
    assert [round(it["p_better"], 6) for it in r["items"]] == [0.65, 0.5, 0.65, 0.35, 0.5]

    row, = store.query("SELECT * FROM audits")
    assert row["audit_id"] == r["audit_id"] and row["judge"] == "local/test-judge" and row["source"] == "test pairs"
    assert row["n"] == 5 and row["run_id"] == "audit-test"
    assert row["agreement"] == pytest.approx(0.4) and row["position_flip_rate"] == pytest.approx(1.0)
    assert row["single_order_agreement"] == pytest.approx(0.6) and row["length_bias"] == pytest.approx(1.0)
    assert row["agreement_lo"] <= row["agreement"] <= row["agreement_hi"]
    details = json.loads(row["details"])
    assert details["producer"] == "audit-file:" + "f" * 16 and details["pair_ids"] == list("ABCDE")
    assert len(details["items"]) == 5 and details["failed_judgments"] == 0

    # everything is linked: inputs (split 'audit') -> candidates (role 'audit') -> judgments -> LM calls
    assert store.scalar("SELECT count(*) FROM inputs WHERE split = 'audit'") == 5
    assert store.scalar("SELECT count(*) FROM candidates WHERE role = 'audit' AND producer = ?",
                        ["audit-file:" + "f" * 16]) == 10
    assert store.scalar("SELECT count(*) FROM judgments WHERE purpose = 'audit'") == 10
    assert store.scalar("SELECT count(*) FROM judgments j JOIN candidates c ON j.first_id = c.candidate_id "
                        "JOIN candidates d ON j.second_id = d.candidate_id AND c.input_id = d.input_id "
                        "JOIN inputs i ON i.input_id = j.input_id AND i.split = 'audit'") == 10
    assert store.scalar("SELECT count(*) FROM judgments j LEFT JOIN lm_calls l ON j.lm_call_id = l.call_id "
                        "WHERE l.call_id IS NULL") == 0
    better = store.query("SELECT c.text FROM candidates c WHERE role = 'audit' AND rank % 2 = 0 ORDER BY rank")
    assert [b["text"] for b in better] == [p["better"] for p in PAIRS]
    # the store's own view agrees on the flips
    assert store.scalar("SELECT count(*) FILTER (WHERE position_flip) FROM judgment_orders") == 5


def test_rerun_asks_the_critic_nothing(tmp_path, dspy_clean):
    engine = PositionBiasedJudge()
    store, first = run_audit(tmp_path, engine)
    calls = store.scalar("SELECT count(*) FROM lm_calls")
    _, again = run_audit(tmp_path, engine)
    assert engine.calls == 10  # every judgment was already in the store
    assert store.scalar("SELECT count(*) FROM lm_calls") == calls
    assert store.scalar("SELECT count(*) FROM judgments") == 10 and store.scalar("SELECT count(*) FROM audits") == 1
    assert again["audit_id"] == first["audit_id"] and again["agreement"] == first["agreement"]
    # a subset of the pairs is another audit, with no new call either
    _, part = run_audit(tmp_path, engine, pairs=PAIRS[:3])
    assert engine.calls == 10 and store.scalar("SELECT count(*) FROM audits") == 2
    assert part["n"] == 3 and part["agreement"].value == pytest.approx(2 / 3)


def test_length_loving_judge_has_no_position_flips_and_full_length_bias(tmp_path, dspy_clean):
    # Always the longer text, whichever position: P(better) .8 on B and C (better is longer), .2 elsewhere.
    # First order alone gives the same answers. Choices differ between the orders on every pair -> no flips.
    engine = LongerJudge()
    _, r = run_audit(tmp_path, engine)
    assert r["agreement"].value == pytest.approx(0.4)
    assert r["single_order_agreement"].value == pytest.approx(0.4)
    assert r["position_flip_rate"].value == 0.0
    assert r["length_bias"].value == 1.0 and r["length_bias"].n == 3
    assert r["longer_chosen"].value == 1.0 and r["longer_expected"].value == pytest.approx(0.4)
    assert r["ties"] == 0 and r["position_two_share"].value == pytest.approx(0.5)


def test_failed_judgments_are_counted_and_left_out(tmp_path, dspy_clean):
    pairs = PAIRS + [{"id": "F", "input": "mumble mumble", "better": "a joke", "worse": "mumble"}]
    engine = MumblingJudge()
    store, r = run_audit(tmp_path, engine, pairs=pairs)
    assert engine.calls == 12
    assert r["failed_judgments"] == 2 and r["failed_pairs"] == 1 and r["n"] == 5 and r["n_pairs"] == 6
    assert r["agreement"].value == pytest.approx(0.4) and r["position_flip_rate"].n == 5
    assert store.scalar("SELECT count(*) FROM judgments WHERE source = 'failed'") == 2
    assert json.loads(store.scalar("SELECT details FROM audits"))["failed_judgments"] == 2


def test_load_pairs_ids_lines_and_sha(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('\n{"input": " a  b ", "better": "c", "worse": "d"}\n' + json.dumps(PAIRS[0]) + "\n")
    pf = load_pairs(f)
    assert [(p["id"], p["line"], p["input"]) for p in pf.pairs] == [("line2", 2, "a b"), ("A", 3, "I lost my keys.")]
    assert len(pf.sha) == 64 and pf.sha == load_pairs(f).sha
    bundled = load_pairs(BUNDLED_PAIRS).pairs
    assert len(bundled) >= 40
    shorter = sum(len(p["better"].split()) < len(p["worse"].split()) for p in bundled)
    assert 0.35 <= shorter / len(bundled) <= 0.65  # length bias is measurable: the better text is often the shorter


def test_cli_table_and_json(tmp_path, dspy_clean, monkeypatch, capsys):
    engine = PositionBiasedJudge()
    monkeypatch.setattr(audit_mod, "resolve_lm", lambda spec, **kw: dspy.LM(spec, engine=engine, cache=False))
    pairs = write_pairs(tmp_path / "pairs.jsonl")
    db = tmp_path / "cli.duckdb"
    args = ["--pairs", str(pairs), "--critic", "local/test-judge", "--db", str(db), "--mode", "reason-first",
            "--aggregate", "mean", "--pointwise-weight", "0", "--out", str(tmp_path / "plots")]  # the paper's critic
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "agreement" in out and "40.0%" in out and "100.0%" in out and "failed judgments" in out

    assert main([*args, "--format", "json", "--limit", "4"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert engine.calls == 10  # the first four pairs were judged by the first command
    assert result["n"] == 4 and result["agreement"]["value"] == pytest.approx(0.5)
    assert result["position_flip_rate"]["value"] == 1.0 and len(result["items"]) == 4
    assert Path(result["reliability_plot"]).is_file() and result["by_kind"]["flat"]["agreement"]["n"] >= 1

    store = Store(db, create=False)
    audits = store.query("SELECT judge, source, n FROM audits ORDER BY n")
    assert [(a["judge"], a["n"]) for a in audits] == [("local/test-judge", 4), ("local/test-judge", 5)]
    assert audits[0]["source"] == str(pairs.resolve())
    runs = store.query("SELECT status, command FROM runs ORDER BY command")
    assert [r["status"] for r in runs] == ["finished", "finished"] and "metrics.audit" in runs[0]["command"]
    sha = load_pairs(pairs).sha
    assert store.scalar("SELECT DISTINCT producer FROM candidates") == f"audit-file:{sha[:16]}"


@pytest.mark.parametrize("case, content, extra, message", [
    ("missing", None, [], "pairs file not found"),
    ("empty", "\n\n", [], "has no pairs"),
    ("bad-json", json.dumps(PAIRS[0]) + "\n{not json\n", [], "bad-json.jsonl:2: not valid JSON"),
    ("no-worse", '{"input": "a", "better": "b"}\n', [], "no-worse.jsonl:1: missing or empty 'worse'"),
    ("not-object", '["a", "b", "c"]\n', [], "not-object.jsonl:1: expected a JSON object"),
    ("same-text", '{"input": "a", "better": "b", "worse": " b "}\n', [], "same-text.jsonl:1: 'better' and 'worse'"),
    ("dup-id", json.dumps(PAIRS[0]) + "\n" + json.dumps(PAIRS[0]) + "\n", [], "already used on line 1"),
    ("bad-limit", json.dumps(PAIRS[0]) + "\n", ["--limit", "0"], "--limit must be at least 1"),
    ("unknown-local", json.dumps(PAIRS[0]) + "\n", ["--critic", "local/no-such-model"], "unknown local model"),
    ("no-provider", json.dumps(PAIRS[0]) + "\n", ["--critic", "gpt-4o"], "needs a provider prefix"),
    ("no-split", json.dumps(PAIRS[0]) + "\n", ["--split", "dev"], "no pairs with split 'dev'"),
    ("rubrics", json.dumps(PAIRS[0]) + "\n", ["--rubrics", "9"], "critic rubrics = 9, but task 'humor' has 3"),
    ("scale", json.dumps(PAIRS[0]) + "\n", ["--scale", "0"], "critic scale must be > 0"),
])
def test_bad_files_and_specs_are_one_line_errors(tmp_path, dspy_clean, capsys, case, content, extra, message):
    path = tmp_path / f"{case}.jsonl"
    if content is not None:
        path.write_text(content)
    code = main(["--pairs", str(path), "--db", str(tmp_path / "t.duckdb"), *extra])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error:") and message in lines[0], err
    assert not (tmp_path / "t.duckdb").exists()  # nothing is written before the inputs and the critic check out


def test_python_m_entry_point_reports_a_missing_file(tmp_path):
    out = subprocess.run([sys.executable, "-m", "metrics.audit", "--pairs", str(tmp_path / "nope.jsonl")],
                         capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().startswith("error: pairs file not found"), out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not out.stdout


def test_audit_api_refuses_no_pairs(tmp_path):
    with pytest.raises(AuditError):
        audit([], None, None, store=None, judge="x", run_id="r")


@pytest.mark.slow
def test_real_cli_on_bundled_pairs_with_the_small_critic(tmp_path):
    db = tmp_path / "audit.duckdb"
    cmd = [sys.executable, "-m", "metrics.audit", "--pairs", str(BUNDLED_PAIRS), "--critic",
           "local/qwen2.5-coder-0.5b-instruct", "--limit", "4", "--db", str(db), "--format", "json",
           "--out", str(tmp_path / "plots")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["n_pairs"] == 4 and result["n"] + result["failed_pairs"] == 4
    store = Store(db, create=False)
    row, = store.query("SELECT * FROM audits")
    assert row["judge"] == "local/qwen2.5-coder-0.5b-instruct" and row["n"] == result["n"]
    # 4 pairs x 2 orders with the choice alone, and a 1-5 score of each of the 8 texts (the default critic)
    assert store.scalar("SELECT count(*) FROM judgments WHERE purpose = 'audit' AND method = 'choice-first'") == 8
    assert store.scalar("SELECT count(*) FROM judgments WHERE purpose = 'audit' AND method = 'pointwise'") == 8
    if row["n"]:
        assert 0.0 <= row["agreement"] <= 1.0 and 0.0 <= row["position_flip_rate"] <= 1.0


def test_split_audits_only_that_half_and_keeps_each_pairs_orientation(tmp_path, dspy_clean, monkeypatch, capsys):
    engine = PositionBiasedJudge()
    monkeypatch.setattr(audit_mod, "resolve_lm", lambda spec, **kw: dspy.LM(spec, engine=engine, cache=False))
    path = tmp_path / "split.jsonl"
    path.write_text("".join(json.dumps({**pr, "split": "dev" if i % 2 == 0 else "test"}) + "\n"
                            for i, pr in enumerate(PAIRS)))
    paper = ["--mode", "reason-first", "--aggregate", "mean", "--pointwise-weight", "0", "--out", str(tmp_path)]
    args = ["--pairs", str(path), "--critic", "local/test-judge", "--db", str(tmp_path / "s.duckdb"), *paper]
    assert main([*args, "--split", "test", "--format", "json"]) == 0
    test_half = json.loads(capsys.readouterr().out)
    assert [it["pair_id"] for it in test_half["items"]] == ["B", "D"] and engine.calls == 4
    assert main([*args, "--format", "json"]) == 0  # the whole file: B and D are not asked again
    whole = json.loads(capsys.readouterr().out)
    assert whole["n_pairs"] == 5 and engine.calls == 10
    assert {it["pair_id"]: it["p_better"] for it in whole["items"]}["D"] == test_half["items"][1]["p_better"]
