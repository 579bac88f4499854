"""Bad input gets one clear line before any model loads (issue 12's table): config values of the wrong type or
range, an unknown profile in a TOML file, a CSV saved with a byte-order mark (accepted), and every command's table
below (a --db that cannot be a store, an unreadable pairs file, a cache that cannot be written, a hosted model
without its key): one line on stderr, no traceback, the shared exit code, no model pulled, no store created."""

from __future__ import annotations

import importlib

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
