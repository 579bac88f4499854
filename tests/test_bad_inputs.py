"""Bad input gets one clear line before any model loads (issue 12's table): config values of the wrong type or
range, an unknown profile in a TOML file, a CSV saved with a byte-order mark (accepted), and every command's table
below (a --db that cannot be a store, an unreadable pairs file, a cache that cannot be written, a hosted model
without its key): one line on stderr, no traceback, the shared exit code, no model pulled, no store created."""

from __future__ import annotations

import importlib
import os

import pytest

from programs.compile import main
from programs.config import ConfigError, build_config
from programs.inputs import load_file


@pytest.mark.parametrize(("key", "value", "message"), [
    ("epochs", 0, "epochs must be a positive number"),
    ("epochs", -1.0, "epochs must be a positive number"),
    ("epochs", "two", "epochs must be a positive number"),
    ("k_samples", 0, "k_samples must be a positive integer"),
    ("batch_size", -4, "batch_size must be a positive integer"),
    ("max_length", 0, "max_length must be a positive integer"),
    ("threads", 0, "threads must be a positive integer"),
    ("threads", 1.5, "threads must be a positive integer"),
    ("ood_inputs", -1, "ood_inputs (--ood) must be 0 or a positive integer"),
    ("max_steps", -2, "max_steps must be a positive integer (or -1"),
])
def test_bad_config_values_are_one_line(key, value, message):
    with pytest.raises(ConfigError, match=None) as e:
        build_config(overrides={key: value})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_unknown_profile_in_a_toml_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('profile = "nope"\n')
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        build_config(toml_path=str(f))


def test_ood_minus_one_stops_the_command_before_any_model(tmp_path, capsys):
    code = main(["--ood", "-1", "--db", str(tmp_path / "t.duckdb"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "ood_inputs (--ood) must be 0 or a positive integer, got -1" in err
    assert not (tmp_path / "t.duckdb").exists()


def test_a_csv_with_a_byte_order_mark_is_read(tmp_path):
    f = tmp_path / "in.csv"
    f.write_bytes("\ufefftext,split\nI lost my keys again.,train\nMy tea went cold.,test\n".encode("utf-8"))
    rows = load_file(f)
    assert [r["text"] for r in rows] == ["I lost my keys again.", "My tea went cold."]
    assert [r["split"] for r in rows] == ["train", "test"]


# -- every command: (id, module, argv, environment, exit code, what the line says) ------------------------------------
# {tmp} is the test's folder; {file} a regular file in it (a folder under it cannot be made, even by root); {notdb}
# a file that is not a DuckDB database; {db} a store. Every case runs with an empty model cache ({tmp}/cache) and no OpenAI key.
PAIRS = "programs/data/audit_pairs.jsonl"
TINY_CRITIC = "local/qwen2.5-coder-0.5b-instruct"
STUDENT = "smollm2-135m-instruct"
COMMANDS = [
    ("compile-db-under-a-file", "programs.compile", ["--profile", "tiny", "--db", "{file}/sub/t.duckdb"], {}, 1,
     "cannot create the store {file}/sub/t.duckdb: {file} is a file, not a folder"),
    ("audit-db-under-a-file", "metrics.audit", ["--pairs", PAIRS, "--critic", TINY_CRITIC, "--db", "{file}/t.duckdb"],
     {}, 1, "cannot create the store {file}/t.duckdb: {file} is a file, not a folder"),
    ("evaluate-db-under-a-file", "finetune.evaluate",
     ["--student", STUDENT, "--inputs", "{tmp}/in.txt", "--critic", TINY_CRITIC, "--db", "{file}/t.duckdb"], {}, 1,
     "cannot create the store {file}/t.duckdb: {file} is a file, not a folder"),
    ("compile-db-not-duckdb", "programs.compile", ["--profile", "tiny", "--db", "{notdb}"], {}, 1,
     "is not a valid DuckDB database file"),
    ("audit-db-not-duckdb", "metrics.audit", ["--pairs", PAIRS, "--critic", TINY_CRITIC, "--db", "{notdb}"], {}, 1,
     "is not a valid DuckDB database file"),
    ("evaluate-db-not-duckdb", "finetune.evaluate",
     ["--student", STUDENT, "--inputs", "{tmp}/in.txt", "--critic", TINY_CRITIC, "--db", "{notdb}"], {}, 1,
     "is not a valid DuckDB database file"),
    ("store-db-not-duckdb", "store.__main__", ["tables", "--db", "{notdb}"], {}, 1,
     "is not a valid DuckDB database file"),
    ("compile-db-a-folder", "programs.compile", ["--profile", "tiny", "--db", "{tmp}"], {}, 1,
     "--db {tmp} is a folder"),
    ("audit-pairs-unreadable", "metrics.audit", ["--pairs", "/proc/self/mem", "--db", "{tmp}/e.duckdb"], {}, 2,
     "cannot read the pairs file /proc/self/mem: Input/output error"),
    ("audit-pairs-name-too-long", "metrics.audit", ["--pairs", "{tmp}/" + "p" * 300, "--db", "{tmp}/e.duckdb"], {},
     2, "cannot read the pairs file"),
    ("models-cache-under-a-file", "programs.models", ["pull", STUDENT], {"CRITIC_DISTILL_CACHE": "{file}/cache"}, 2,
     "cannot write the model cache at {file}/cache/models: Not a directory"),
    ("store-query-reads-a-file", "store.__main__", ["query", "SELECT * FROM read_csv('/etc/passwd')", "--db", "{db}"],
     {}, 2, "reads the store's own tables and views only"),
    ("store-query-globs", "store.__main__", ["query", "SELECT * FROM glob('/etc/*')", "--db", "{db}"], {}, 2,
     "reads the store's own tables and views only"),
    ("store-query-a-url", "store.__main__", ["query", "FROM 'https://example.com/t.parquet'", "--db", "{db}"], {}, 2,
     "reads the store's own tables and views only"),
    ("compile-jsonl-text-a-list", "programs.compile",
     ["--profile", "tiny", "--inputs", "{tmp}/list.jsonl", "--db", "{tmp}/e.duckdb"], {}, 2,
     "{tmp}/list.jsonl:2: field 'text' is a list, not text"),
    ("compile-jsonl-line-a-number", "programs.compile",
     ["--profile", "tiny", "--inputs", "{tmp}/number.jsonl", "--db", "{tmp}/e.duckdb"], {}, 2,
     "{tmp}/number.jsonl:3: field 'text' is a number, not text (42)"),
    ("evaluate-jsonl-reference-an-object", "finetune.evaluate",
     ["--student", STUDENT, "--inputs", "{tmp}/object.jsonl", "--critic", TINY_CRITIC, "--db", "{tmp}/e.duckdb"], {},
     2, "{tmp}/object.jsonl:1: field 'reference' is an object, not text"),
    ("compile-inputs-name-too-long", "programs.compile",
     ["--profile", "tiny", "--inputs", "{tmp}/" + "i" * 300 + ".txt", "--db", "{tmp}/e.duckdb"], {}, 2,
     "File name too long"),
    ("compile-input-past-the-context", "programs.compile",
     ["--profile", "tiny", "--inputs", "{tmp}/long.jsonl", "--db", "{tmp}/e.duckdb"], {}, 2,
     "has 2000 words, more than a local model's 2048-token context holds"),
    ("evaluate-input-past-the-context", "finetune.evaluate",
     ["--student", STUDENT, "--inputs", "{tmp}/long.jsonl", "--critic", TINY_CRITIC, "--db", "{tmp}/e.duckdb"], {},
     2, "has 2000 words, more than a local model's 2048-token context holds"),
    ("compile-hosted-critic-no-key", "programs.compile",
     ["--profile", "tiny", "--critic", "openai/gpt-4o-mini", "--db", "{tmp}/e.duckdb"], {}, 2,
     "no API key for openai/gpt-4o-mini: set OPENAI_API_KEY"),
    ("compile-hosted-judge-no-key", "programs.compile",
     ["--profile", "tiny", "--judge", "openai/gpt-4o-mini", "--db", "{tmp}/e.duckdb"], {}, 2,
     "no API key for openai/gpt-4o-mini: set OPENAI_API_KEY"),
    ("audit-hosted-critic-no-key", "metrics.audit",
     ["--pairs", PAIRS, "--critic", "openai/gpt-4o-mini", "--db", "{tmp}/e.duckdb"], {}, 2,
     "no API key for openai/gpt-4o-mini: set OPENAI_API_KEY"),
    ("evaluate-hosted-judge-no-key", "finetune.evaluate",
     ["--student", STUDENT, "--inputs", "{tmp}/in.txt", "--critic", TINY_CRITIC, "--judge", "openai/gpt-4o-mini",
      "--db", "{tmp}/e.duckdb"], {}, 2, "no API key for openai/gpt-4o-mini: set OPENAI_API_KEY"),
]


@pytest.mark.parametrize("module, argv, env, code, message", [c[1:] for c in COMMANDS], ids=[c[0] for c in COMMANDS])
def test_every_command_says_one_line_and_pulls_nothing(module, argv, env, code, message, tmp_path, capsys,
                                                       monkeypatch):
    (tmp_path / "file").write_text("a regular file\n")
    (tmp_path / "notdb.duckdb").write_text("not a database\n")
    (tmp_path / "in.txt").write_text("I lost my keys again.\n")
    (tmp_path / "cache").mkdir()
    (tmp_path / "list.jsonl").write_text('{"text": "I lost my keys."}\n{"text": ["My tea", "went cold."]}\n')
    (tmp_path / "number.jsonl").write_text('"I lost my keys."\n\n42\n')
    (tmp_path / "long.jsonl").write_text('{"text": "My tea went cold.", "split": "train"}\n'
                                         f'{{"text": "{"cold " * 2000}", "split": "test"}}\n')
    (tmp_path / "object.jsonl").write_text('{"text": "I lost my keys.", "reference": {"joke": "keys"}}\n')
    names = {"tmp": tmp_path, "file": tmp_path / "file", "notdb": tmp_path / "notdb.duckdb", "db": tmp_path / "s.duckdb"}
    if any("{db}" in a for a in argv):
        from store import Store

        Store(names["db"]).close()
    monkeypatch.setenv("CRITIC_DISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(**names))
    for key in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):  # quiet_libraries sets them: give back
        monkeypatch.delenv(key, raising=False)
    got = importlib.import_module(module).main([a.format(**names) for a in argv])
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert got == code, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and message.format(**names) in lines[0], err
    assert "Traceback" not in err
    assert not list((tmp_path / "cache").rglob("*")), "a model was pulled before the error"
    assert not (tmp_path / "e.duckdb").exists() and not (tmp_path / "sub").exists()


def test_a_read_only_query_cannot_reach_outside_the_store_nor_unlock_itself(tmp_path):
    """The lock-down holds for Python's read path too, while the store's own views, DESCRIBE, SUMMARIZE, PIVOT and
    JSON still answer, and a write after a read (a new connection) is not locked down."""
    from store import ReadOnlyError, Store

    store = Store(tmp_path / "s.duckdb")
    store.insert("runs", [{"run_id": "r1", "status": "finished"}])
    for sql in ("SELECT * FROM read_text('/etc/hostname')", "SELECT 1; SELECT * FROM read_csv('/etc/passwd')"):
        with pytest.raises(ReadOnlyError, match="tables and views only"):
            store.query(sql)
    with pytest.raises(ReadOnlyError):  # refused before DuckDB; and locked inside it anyway
        store.query("SET enable_external_access = true")
    assert store.scalar("SELECT count(*) FROM usage_per_stage") == 0
    assert store.scalar("SELECT '{\"a\": 2}'::JSON ->> 'a'") == "2"
    assert [r["column_name"] for r in store.query("DESCRIBE runs")][0] == "run_id"
    assert store.query("SUMMARIZE runs") and store.query("PIVOT runs ON status USING count(*)")
    store.insert("runs", [{"run_id": "r2", "status": "running"}])
    assert store.scalar("SELECT count(*) FROM runs") == 2


# -- nothing lost: an LM call that returned is in the store after a kill -9 ------------------------------------------
KILLED = """
import sys
from store import Store
from store.callback import install, last_lm_call_id, trace_context
from programs.lm import resolve_lm

store = Store(sys.argv[1], flush_seconds=3600)  # no flush by age: only what the callback makes durable survives
install(store)
lm = resolve_lm("local/qwen2.5-coder-0.5b-instruct", temperature=0.0, max_tokens=4)
with trace_context(run_id="killed", stage="teach"):
    for i in range(50):
        lm(f"Say the number {i}.")
        print("returned", last_lm_call_id(), flush=True)
"""


@pytest.mark.slow
def test_a_call_that_returned_survives_kill_minus_9(tmp_path):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from store import Store

    db = tmp_path / "k.duckdb"
    env = {**os.environ, "CRITIC_DISTILL_LLAMA_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(db)], stdout=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).resolve().parent.parent)
    returned = []
    try:
        for line in proc.stdout:
            returned.append(line.split()[1])
            if len(returned) == 3:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and len(returned) == 3
    store = Store(db)  # a writer opening the file puts the dead process's journal into it
    rows = store.query("SELECT call_id, prompt_tokens, completion_tokens, cache_key FROM lm_calls WHERE run_id = "
                       "'killed'")
    got = {r["call_id"]: r for r in rows}
    assert set(returned) <= set(got), (returned, rows)
    assert all(got[c]["prompt_tokens"] > 0 and got[c]["completion_tokens"] > 0 for c in returned)
    keys = {r["cache_key"] for r in store.query("SELECT cache_key FROM lm_cache")}
    assert {got[c]["cache_key"] for c in returned} <= keys  # a rerun answers them from the store: no call made again
    usage = store.query("SELECT calls, prompt_tokens FROM usage_per_stage WHERE run_id = 'killed'")
    assert usage and usage[0]["calls"] >= 3 and usage[0]["prompt_tokens"] > 0
    assert not list(tmp_path.glob("k.duckdb.journal-*"))  # replayed, then removed
    store.close()


# -- the same text in train and in the evaluation split ------------------------------------------------------------


def test_an_evaluation_input_also_in_train_is_dropped_with_a_warning_and_reported(tmp_path, capsys):
    from dataclasses import asdict

    from finetune.report import write_report
    from programs.inputs import split_inputs
    from programs.config import PipelineConfig
    from programs.task_sources import get_task

    f = tmp_path / "in.jsonl"
    f.write_text("".join(f'{{"text": "{t}", "split": "{s}"}}\n' for t, s in [
        ("I lost my keys.", "train"), ("My tea went cold.", "train"), ("I lost my keys.", "test"),
        ("The bus was late.", "test"), ("My  tea went   cold.", "test")]))  # the same text, spaced otherwise
    cfg = PipelineConfig(inputs=str(f))
    chosen, dropped = split_inputs(cfg, get_task("humor"))
    assert dropped == 2 and [r["text"] for r in chosen["test"]] == ["The bus was late."]
    assert "warning: 2 test input(s) also in train were dropped from test" in capsys.readouterr().err
    report = write_report(tmp_path / "out", config=asdict(cfg), counts={"dropped_overlap": dropped}, evaluations=[],
                          log_history=[], examples=[], command="c", db="d").read_text()
    assert "- 2 test inputs also in train were dropped" in report

    bundled = PipelineConfig()  # no overlap: nothing dropped, the same inputs (and ids) as before
    chosen, dropped = split_inputs(bundled, get_task("humor"))
    assert dropped == 0
    assert not {r["text"] for r in chosen["train"]} & {r["text"] for r in chosen["test"]}
