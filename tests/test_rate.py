"""`finetune.rate`: blind pairs out (the key only in the store), ratings back in as judgments and verdicts, the
rater's numbers through the same win-rate code as the critic's, and the decided pairs as an audit file.

Every store here is a real DuckDB file with `inputs` and `candidates` written directly (no model). The rater is a
function of the pairs file alone, as a person or an LLM shown only the file would be: it prefers the output with an
exclamation mark, calls it a tie when neither has one, and answers A when both do (a position lean, so some swapped
repeats disagree).
"""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from finetune.rate import (
    RatingError,
    audit_pairs,
    export_pairs,
    import_ratings,
    main,
    paired_rating_difference,
    rater_verdicts,
    report,
)
from metrics.audit import load_pairs
from metrics.judge import judgment_id, verdict_id
from metrics.winrate import paired_difference, win_tie_rate
from programs.builtin_tasks import HUMOR
from programs.teach import candidate_id
from store import Store, stable_id

TEACHER = "local/teacher-7b"
FT = "/runs/out/student-ft-abc/final"
DPO = "/runs/out/student-dpo-def/final"
N = 12  # test inputs
IDENTICAL = {10, 11}  # DPO's output is the teacher's (up to spaces) on these


def _text(system: str, i: int) -> str:
    if system == TEACHER:
        return f"The teacher's funny take on sentence {i}!"
    if system == FT:
        return f"The imitation student's take on sentence {i}" + ("!" if i % 3 == 0 else ".")
    if i in IDENTICAL:
        return _text(TEACHER, i) + "  "
    return f"The feedback student's take on sentence {i}" + ("!" if i % 2 == 0 else ".")


def _iid(i: int, split: str = "test") -> str:
    return stable_id("input", "humor", f"sentence {i}", split)


@pytest.fixture
def db(tmp_path) -> str:
    path = str(tmp_path / "t.duckdb")
    store = Store(path)
    now = datetime.now()
    inputs, cands = [], []
    for split, count in (("test", N), ("train", 3)):
        for i in range(count):
            iid = _iid(i, split)
            inputs.append({"input_id": iid, "task": "humor", "text": f"I said sentence {i}.", "split": split,
                           "source": "test", "created_at": now})
            for role, producer in (("teacher", TEACHER), ("student", FT), ("student", DPO)):
                cands.append({"candidate_id": candidate_id(iid, role, producer, 0), "input_id": iid, "role": role,
                              "producer": producer, "rank": 0, "text": _text(producer, i), "lm_call_id": None,
                              "run_id": None, "created_at": now})
    store.insert("inputs", inputs)
    store.insert("candidates", cands)
    store.close()
    return path


def _cid(i: int, system: str) -> str:
    return candidate_id(_iid(i), "teacher" if system == TEACHER else "student", system, 0)


def rate(pairs_file, out, *, scores: bool = False) -> list[dict]:
    """The rater: reads only the pairs file, writes a ratings file."""
    ratings = []
    for line in open(pairs_file):
        row = json.loads(line)
        a, b = "!" in row["A"], "!" in row["B"]
        choice = "A" if a else "b" if b else "Tie"  # both: position lean to A; case does not matter
        rating = {"pair_id": row["pair_id"], "choice": choice, "reason": f"{choice} has more punch"}
        if scores:
            rating |= {"score_a": 4 if a else 2, "score_b": 4 if b else 2}
        ratings.append(rating)
    with open(out, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in ratings)
    return ratings


def _export(db, tmp_path, x=FT, y="teacher", repeat=N, name="pairs.jsonl") -> tuple[list[dict], str, str]:
    store = Store(db)
    rows, batch = export_pairs(store, x=x, y=y, split="test", repeat=repeat, seed=0)
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows, batch, str(path)


def _expected_p(store: Store, judge: str, x: str, y: str) -> dict[str, float]:
    """P(x >= y) per input from the stored key and judgments, by hand."""
    ps: dict[str, list[float]] = {}
    for r in store.query("SELECT bp.input_id, bp.a_id, bp.b_id, j.p_first FROM blind_pairs bp JOIN judgments j "
                         "ON j.first_id = bp.a_id AND j.second_id = bp.b_id AND j.judge = ? AND j.method = 'rating'",
                         [judge]):
        i = next(k for k in range(N) if _iid(k) == r["input_id"])
        if {r["a_id"], r["b_id"]} != {_cid(i, x), _cid(i, y)}:
            continue  # another export's pair
        p_x = r["p_first"] if r["a_id"] == _cid(i, x) else 1 - r["p_first"]
        ps.setdefault(r["input_id"], []).append(p_x)
    out = {k: sum(v) / len(v) for k, v in ps.items()}
    for i in range(N):  # identical outputs: ties by construction
        if _text(x, i).strip() == _text(y, i).strip():
            out.setdefault(_iid(i), 0.5)
    return dict(sorted(out.items()))


# -- export ------------------------------------------------------------------------------------------------------------


def test_export_hides_the_key_and_repeats_pairs_swapped(db, tmp_path):
    rows, batch, path = _export(db, tmp_path, x=DPO, y="teacher", repeat=4)
    text = open(path).read()
    store = Store(db)
    cands = [r["candidate_id"] for r in store.query("SELECT candidate_id FROM candidates")]
    for secret in [*cands, TEACHER, DPO, FT, "student-dpo", "teacher-7b", batch, _iid(0)]:
        assert secret not in text, secret
    assert all(set(r) == {"pair_id", "instruction", "input", "A", "B"} for r in rows)
    assert {r["instruction"] for r in rows} == {HUMOR.critic_instruction}
    assert len(rows) == (N - len(IDENTICAL)) + 4 and len({r["pair_id"] for r in rows}) == len(rows)

    key = {r["pair_id"]: r for r in store.query("SELECT * FROM blind_pairs")}
    assert set(key) == {r["pair_id"] for r in rows}
    assert {(k["x"], k["y"], k["split"], k["batch"]) for k in key.values()} == {(DPO, TEACHER, "test", batch)}
    shown = {k["input_id"] for k in key.values()}
    assert shown == {_iid(i) for i in range(N) if i not in IDENTICAL}  # identical outputs are not shown
    originals = [k for k in key.values() if k["repeat_of"] is None]
    repeats = [k for k in key.values() if k["repeat_of"] is not None]
    assert len(originals) == N - len(IDENTICAL) and len(repeats) == 4
    for r in repeats:
        o = key[r["repeat_of"]]
        assert o["repeat_of"] is None and (r["a_id"], r["b_id"], r["input_id"]) == (o["b_id"], o["a_id"], o["input_id"])
    firsts = {k["a_id"] == _cid(next(i for i in range(N) if _iid(i) == k["input_id"]), DPO) for k in originals}
    assert firsts == {True, False}  # A is sometimes the student's, sometimes the teacher's
    by_id = {r["pair_id"]: r for r in rows}
    for pid, k in key.items():  # the file shows what the key says
        a = store.scalar("SELECT text FROM candidates WHERE candidate_id = ?", [k["a_id"]])
        assert by_id[pid]["A"] == a

    again, batch2 = export_pairs(store, x=DPO, y="teacher", split="test", repeat=4, seed=0)
    assert (again, batch2) == (rows, batch)  # deterministic: the same file, the same key, nothing added
    assert store.scalar("SELECT count(*) FROM blind_pairs") == len(rows)
    other, batch3 = export_pairs(store, x=DPO, y="teacher", split="test", repeat=4, seed=1)
    assert batch3 != batch and {r["pair_id"] for r in other}.isdisjoint(key)


def test_export_cli_line_and_user_errors(db, tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    assert main(["export", "--db", db, "--x", FT, "--y", "teacher", "--repeat", "3", "-o", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert len(line.splitlines()) == 1
    assert f"wrote {N + 3} pairs ({N} + 3 swapped repeats) to {out}" in line and "0 inputs with identical" in line
    assert "python -m finetune.rate import" in line
    store = Store(db)
    assert store.scalar("SELECT count(*) FROM blind_pairs") == N + 3

    # a second teacher makes 'teacher' ambiguous; --teacher settles it
    store.insert("candidates", [{"candidate_id": candidate_id(_iid(0), "teacher", "other/t", 0), "input_id": _iid(0),
                                 "role": "teacher", "producer": "other/t", "rank": 0, "text": "x"}])
    for argv, message in [(["--x", "nobody", "--y", "teacher"], "no outputs of 'nobody' on split 'test'"),
                          (["--x", FT, "--y", "teacher"], "several teachers"),
                          (["--x", FT, "--y", FT], "the same system"),
                          (["--x", "teacher", "--y", FT, "--split", "dev", "--teacher", TEACHER], "no teacher"),
                          (["--x", FT, "--y", "teacher", "--repeat", "-1", "--teacher", TEACHER], "--repeat")]:
        code = main(["export", "--db", db, "-o", str(tmp_path / "q.jsonl"), *argv])
        o, err = capsys.readouterr()
        lines = [x for x in err.splitlines() if x.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
        assert "Traceback" not in err and not o
    assert main(["export", "--db", db, "--x", FT, "--y", "teacher", "--teacher", TEACHER, "-o",
                 str(tmp_path / "q.jsonl")]) == 0
    assert main(["export", "--db", str(tmp_path / "none.duckdb"), "--x", FT, "--y", "teacher", "-o", "q"]) == 1
    assert "no store at" in capsys.readouterr().err and not (tmp_path / "none.duckdb").exists()


# -- import ------------------------------------------------------------------------------------------------------------


def test_import_writes_judgments_and_verdicts_and_is_idempotent(db, tmp_path):
    rows, batch, path = _export(db, tmp_path)
    ratings = rate(path, tmp_path / "r.jsonl", scores=True)
    store = Store(db)
    summary = import_ratings(store, tmp_path / "r.jsonl", rater="alice")
    judge = "rater:alice"
    key = {r["pair_id"]: r for r in store.query("SELECT * FROM blind_pairs")}
    got = {(r["first_id"], r["second_id"]): r for r in store.query(
        "SELECT * FROM judgments WHERE judge = ? AND method = 'rating'", [judge])}
    assert len(got) == len(ratings) == 2 * N
    for r in ratings:
        k = key[r["pair_id"]]
        j = got[(k["a_id"], k["b_id"])]
        choice = {"a": 1, "b": 2, "tie": None}[r["choice"].lower()]
        assert (j["choice"], j["p_first"]) == (choice, {1: 1.0, 2: 0.0, None: 0.5}[choice])
        assert (j["source"], j["purpose"], j["reason"], j["input_id"]) == ("rating", "rating", r["reason"],
                                                                          k["input_id"])
        assert j["judgment_id"] == judgment_id(judge, k["a_id"], k["b_id"], "rating") and j["score"] is None
    scores = store.query("SELECT * FROM judgments WHERE judge = ? AND method = 'rating-score'", [judge])
    assert len(scores) == 2 * len(ratings) and all(s["second_id"] is None and s["score"] in (2, 4) for s in scores)

    verdicts = {r["input_id"]: r for r in store.query("SELECT * FROM verdicts WHERE judge = ?", [judge])}
    assert len(verdicts) == N == summary["verdicts"]
    expected = _expected_p(store, judge, FT, TEACHER)
    for i in range(N):
        v = verdicts[_iid(i)]
        assert (v["a_id"], v["b_id"]) == (_cid(i, FT), _cid(i, TEACHER))  # a is x: p_a is P(x >= y)
        assert v["verdict_id"] == verdict_id(judge, "rating", v["a_id"], v["b_id"])
        assert (v["method"], v["purpose"], v["n_orders"]) == ("rating", "rating", 2)
        assert v["p_a"] == pytest.approx(expected[_iid(i)])
        # both have '!' when i % 3 == 0: the rater says A both times, i.e. a different system each time
        assert v["orders_agree"] is (i % 3 != 0)
        assert v["p_a"] == (0.5 if i % 3 == 0 else 0.0)

    tables = ("judgments", "verdicts", "blind_pairs")
    before = {t: store.query(f"SELECT * FROM {t} ORDER BY ALL") for t in tables}
    again = import_ratings(store, tmp_path / "r.jsonl", rater="alice")
    assert again["judgments_written"] == again["verdicts_written"] == 0
    assert {t: store.query(f"SELECT * FROM {t} ORDER BY ALL") for t in tables} == before  # nothing changed

    # the scores as the report reads them: each side's mean over the differing pairs, and the paired difference
    sc = report(store, "alice", FT, "teacher")["scores"]
    ft = [4.0 if i % 3 == 0 else 2.0 for i in range(N)]  # the rater scores 4 where the text has '!', else 2
    assert sc["x"]["value"] == pytest.approx(sum(ft) / N) and sc["y"]["value"] == pytest.approx(4.0)
    assert sc["difference"]["value"] == pytest.approx(sum(ft) / N - 4.0) and sc["difference"]["n"] == N
    assert sc["difference"]["lo"] <= sc["difference"]["value"] <= sc["difference"]["hi"]


def test_import_reads_csv_with_a_header(db, tmp_path, capsys):
    rows, _, path = _export(db, tmp_path, repeat=0)
    lines = ["pair_id,Choice,score_a,score_b,reason"]
    lines += [f"{r['pair_id']},{'a' if '!' in r['A'] else 'B'},,5,\"because, well\"" for r in rows]
    (tmp_path / "r.csv").write_text("\n".join(lines) + "\n")
    assert main(["import", str(tmp_path / "r.csv"), "--rater", "bob", "--db", db]) == 0
    out = capsys.readouterr().out
    assert len(out.strip().splitlines()) == 1 and f"imported {N} ratings" in out and "finetune.rate report" in out
    store = Store(db)
    assert store.scalar("SELECT count(*) FROM judgments WHERE judge = 'rater:bob' AND method = 'rating'") == N
    assert store.scalar("SELECT count(*) FROM judgments WHERE judge = 'rater:bob' AND method = 'rating-score'") == N
    assert store.scalar("SELECT count(*) FROM verdicts WHERE judge = 'rater:bob' AND orders_agree IS NULL") == N
    assert store.scalar("SELECT min(reason) FROM judgments WHERE judge = 'rater:bob'") == "because, well"


BAD = [
    ("unknown", lambda ids: [{"pair_id": ids[0], "choice": "A"}, {"pair_id": "deadbeef", "choice": "B"}],
     ":2: unknown pair_id 'deadbeef'"),
    ("choice", lambda ids: [{"pair_id": ids[0], "choice": "first"}], ":1: choice must be A, B or tie"),
    ("twice", lambda ids: [{"pair_id": ids[0], "choice": "A"}, {"pair_id": ids[1], "choice": "B"},
                           {"pair_id": ids[0], "choice": "b"}], ":3: pair"),
    ("score", lambda ids: [{"pair_id": ids[0], "choice": "tie", "score_a": "great"}], ":1: score_a must be a number"),
    ("json", lambda ids: ['{"pair_id": "x", "choice": '], ":1: not valid JSON"),
    ("object", lambda ids: [[ids[0], "A"]], ":1: expected a JSON object"),
    ("empty", lambda ids: [], "has no ratings"),
]


@pytest.mark.parametrize("case, lines, message", BAD, ids=[b[0] for b in BAD])
def test_a_bad_ratings_file_is_one_line_and_writes_nothing(db, tmp_path, capsys, case, lines, message):
    rows, _, _ = _export(db, tmp_path, repeat=0)
    ids = [r["pair_id"] for r in rows]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines(ids)))
    code = main(["import", str(bad), "--rater", "alice", "--db", db])
    out, err = capsys.readouterr()
    lines_ = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines_) == 1 and lines_[0].startswith("error: "), err
    assert message in lines_[0] and (str(bad) in lines_[0]), lines_[0]
    assert "Traceback" not in err and not out
    store = Store(db)
    assert store.scalar("SELECT count(*) FROM judgments") == 0 and store.scalar("SELECT count(*) FROM verdicts") == 0


def test_missing_or_headerless_files_are_one_line(db, tmp_path, capsys):
    assert main(["import", str(tmp_path / "nope.jsonl"), "--rater", "a", "--db", db]) == 2
    assert "ratings file not found" in capsys.readouterr().err
    (tmp_path / "r.csv").write_text("id,answer\nx,A\n")
    assert main(["import", str(tmp_path / "r.csv"), "--rater", "a", "--db", db]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'r.csv'}:1: a CSV ratings file needs a header with pair_id and choice" in err
    with pytest.raises(RatingError, match="--rater needs a name"):
        import_ratings(Store(db), tmp_path / "r.csv", rater=" ")


# -- report ------------------------------------------------------------------------------------------------------------


def test_report_is_win_tie_rate_on_the_raters_p_and_compares_the_critic(db, tmp_path, capsys):
    _, _, path = _export(db, tmp_path, x=DPO, y="teacher", repeat=N)
    rate(path, tmp_path / "r.jsonl")
    store = Store(db)
    import_ratings(store, tmp_path / "r.jsonl", rater="alice")
    expected = _expected_p(store, "rater:alice", DPO, TEACHER)
    assert rater_verdicts(store, "alice", DPO, "teacher") == expected
    assert list(rater_verdicts(store, "alice", DPO, "teacher")) == sorted(expected)
    assert rater_verdicts(store, "alice", "teacher", DPO) == {k: 1 - p for k, p in expected.items()}
    assert rater_verdicts(store, "alice", DPO, "teacher", split="train") == {}
    assert {expected[_iid(i)] for i in IDENTICAL} == {0.5}  # identical outputs, not shown: ties

    # a critic judged the same candidates: in the student's orientation on even inputs, the teacher's on odd ones
    critic = {}
    for i in range(N):
        p = 0.9 if i % 4 == 0 else 0.2 if i % 4 == 1 else 0.5 if i in IDENTICAL else 0.3
        critic[_iid(i)] = p
        a, b, p_a = (_cid(i, DPO), _cid(i, TEACHER), p) if i % 2 == 0 else (_cid(i, TEACHER), _cid(i, DPO), 1 - p)
        store.insert("verdicts", [{"verdict_id": verdict_id("local/critic", "reason-first/mean", a, b),
                                   "input_id": _iid(i), "judge": "local/critic", "method": "reason-first/mean",
                                   "a_id": a, "b_id": b, "p_a": p_a, "orders_agree": True, "n_orders": 2,
                                   "purpose": "eval", "created_at": datetime.now()}])
    r = report(store, "alice", DPO, "teacher")
    prob, decision = win_tie_rate(list(expected.values()))
    assert r["wtr_prob"] == {"value": prob.value, "lo": prob.lo, "hi": prob.hi, "n": N}
    assert r["wtr_decision"] == {"value": decision.value, "lo": decision.lo, "hi": decision.hi, "n": N}
    assert r["identical"] == len(IDENTICAL) and r["n"] == N
    decided = [p for p in expected.values() if p != 0.5]
    assert r["x_preferred"]["value"] == pytest.approx(sum(p > 0.5 for p in decided) / len(decided))
    # repeats: DPO has '!' on even inputs, where both have one and the rater says A both times: they disagree
    shown = [i for i in range(N) if i not in IDENTICAL]
    assert r["consistency"] == {"same": sum(i % 2 == 1 for i in shown), "n": len(shown)}
    (c,) = r["critics"]
    assert (c["judge"], c["method"], c["n"]) == ("local/critic", "reason-first/mean", N)
    c_prob, c_decision = win_tie_rate([critic[k] for k in sorted(critic)])
    assert c["wtr_prob"]["value"] == pytest.approx(c_prob.value) and c["wtr_prob"]["lo"] == pytest.approx(c_prob.lo)
    assert c["wtr_decision"]["value"] == pytest.approx(c_decision.value)
    both = [(critic[k] > 0.5) == (expected[k] > 0.5) for k in expected if critic[k] != 0.5 and expected[k] != 0.5]
    assert c["agreement"]["n"] == len(both) and c["agreement"]["value"] == pytest.approx(sum(both) / len(both))

    assert main(["report", "--rater", "alice", "--x", DPO, "--y", "teacher", "--db", db, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["wtr_prob"] == r["wtr_prob"]
    assert main(["report", "--rater", "alice", "--x", DPO, "--y", "teacher", "--db", db]) == 0
    text = capsys.readouterr().out
    assert "WTR of" in text and "consistency on swapped repeats" in text and "critic local/critic" in text
    assert main(["report", "--rater", "nobody", "--x", DPO, "--y", "teacher", "--db", db]) == 2
    assert "rater:nobody has no ratings" in capsys.readouterr().err


def test_paired_rating_difference_is_the_critics_paired_interval(db, tmp_path):
    store = Store(db)
    for x in (FT, DPO):
        _, _, path = _export(db, tmp_path, x=x, y="teacher", repeat=3, name=f"{x.split('-')[1]}.jsonl")
        rate(path, tmp_path / "r.jsonl")
        import_ratings(store, tmp_path / "r.jsonl", rater="alice")
    # the same p values as a critic's verdicts (student a, teacher b), as evaluation stores them
    for x in (FT, DPO):
        store.insert("verdicts", [{"verdict_id": verdict_id("local/critic", "m", _cid(i, x), _cid(i, TEACHER)),
                                   "input_id": _iid(i), "judge": "local/critic", "method": "m", "a_id": _cid(i, x),
                                   "b_id": _cid(i, TEACHER), "p_a": p, "orders_agree": None, "n_orders": 2,
                                   "purpose": "eval", "created_at": datetime.now()}
                                  for i in range(N) for p in [_expected_p(store, "rater:alice", x, TEACHER)[_iid(i)]]])
    critic = {x: {r["input_id"]: r["p_a"] for r in store.query(
        "SELECT input_id, p_a FROM verdicts WHERE judge = 'local/critic' AND a_id IN (SELECT candidate_id FROM "
        "candidates WHERE producer = ?) ORDER BY input_id", [x])} for x in (FT, DPO)}
    for decisions in (False, True):
        got = paired_rating_difference(store, "alice", DPO, FT, "teacher", decisions=decisions)
        want = paired_difference(critic[DPO], critic[FT], decisions=decisions)
        assert (got.value, got.lo, got.hi, got.n) == pytest.approx((want.value, want.lo, want.hi, want.n))
    assert got.n == N


# -- audit pairs -------------------------------------------------------------------------------------------------------


def test_audit_pairs_load_as_metrics_audit_pairs(db, tmp_path, capsys):
    _, _, path = _export(db, tmp_path, x=DPO, y="teacher", repeat=0)
    rate(path, tmp_path / "r.jsonl")
    store = Store(db)
    import_ratings(store, tmp_path / "r.jsonl", rater="alice")
    out = tmp_path / "my_pairs.jsonl"
    assert main(["audit-pairs", "--rater", "alice", "-o", str(out), "--db", db]) == 0
    line = capsys.readouterr().out
    assert f"python -m metrics.audit --pairs {out}" in line and " --task" not in line
    pairs = load_pairs(out).pairs
    decided = store.query("SELECT input_id, p_a FROM verdicts WHERE judge = 'rater:alice' AND p_a <> 0.5")
    assert len(pairs) == len(decided) > 0
    for pr in pairs:
        assert pr["split"] == "test" and pr["input"].startswith("I said sentence")
        assert "!" in pr["better"]  # what the rater preferred (when both had one: what it was shown as A)
        assert "!" in pr["worse"] or pr["better"] == _text(TEACHER, int(pr["input"].split()[-1].rstrip(".")))
    assert audit_pairs(store, "alice", tmp_path / "again.jsonl")["pairs"] == len(pairs)
    assert main(["audit-pairs", "--rater", "nobody", "-o", str(tmp_path / "n.jsonl"), "--db", db]) == 2
    assert "rater:nobody has decided no pair" in capsys.readouterr().err


def test_an_export_the_other_way_round_reads_as_the_same_pairs(db, tmp_path):
    store = Store(db)
    _, _, path = _export(db, tmp_path, x=FT, y="teacher", repeat=0)
    rate(path, tmp_path / "r.jsonl")
    import_ratings(store, tmp_path / "r.jsonl", rater="alice")
    first = rater_verdicts(store, "alice", FT, "teacher")
    _, _, path = _export(db, tmp_path, x="teacher", y=FT, repeat=0, name="back.jsonl")
    rate(path, tmp_path / "r2.jsonl")
    import_ratings(store, tmp_path / "r2.jsonl", rater="alice")
    both = rater_verdicts(store, "alice", FT, "teacher")
    assert set(both) == set(first) and both == {k: 1 - p for k, p in rater_verdicts(store, "alice", "teacher",
                                                                                     FT).items()}
    verdicts = {(v["a_id"], v["b_id"]): v for v in store.query("SELECT * FROM verdicts WHERE judge = 'rater:alice'")}
    assert len(verdicts) == 2 * N  # one per orientation, both brought up to date by the second file
    for i in range(N):
        ab, ba = verdicts[(_cid(i, FT), _cid(i, TEACHER))], verdicts[(_cid(i, TEACHER), _cid(i, FT))]
        assert ab["n_orders"] == ba["n_orders"] == 2 and ab["p_a"] == pytest.approx(1 - ba["p_a"])
        assert ab["orders_agree"] == ba["orders_agree"] is not None
