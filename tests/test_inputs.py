"""Input loaders on real files of every supported type."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from programs.inputs import InputError, hash_split, load_file, load_inputs
from programs.builtin_tasks import HUMOR


def test_bundled_set_is_large_split_and_first_person():
    rows = load_inputs("bundled", HUMOR)
    assert len(rows) >= 300
    splits = {s: sum(r["split"] == s for r in rows) for s in ("train", "dev", "test")}
    assert splits["train"] > splits["test"] > 0 and splits["dev"] > 0
    assert len({r["text"].lower() for r in rows}) == len(rows)
    assert sum(" I " in f" {r['text']} " or r["text"].startswith(("I ", "My ")) or " my " in r["text"] for r in rows) > 0.9 * len(rows)


@pytest.mark.parametrize("kind", ["txt", "jsonl", "csv", "parquet"])
def test_each_file_type_loads(tmp_path, kind):
    texts = ["I lost my keys again this morning.", "My tea went cold while I answered emails."]
    p = tmp_path / f"in.{kind}"
    if kind == "txt":
        p.write_text("\n".join(texts) + "\n\n")
    elif kind == "jsonl":
        p.write_text("\n".join(json.dumps({"text": t, "split": "test"}) for t in texts))
    elif kind == "csv":
        p.write_text("sentence,split\n" + "\n".join(f'"{t}",train' for t in texts))
    else:
        pq.write_table(pa.table({"input": texts}), p)
    rows = load_file(p)
    assert [r["text"] for r in rows] == texts
    expected = {"jsonl": ["test"] * 2, "csv": ["train"] * 2}.get(kind, [hash_split(t) for t in texts])
    assert [r["split"] for r in rows] == expected


def test_bad_inputs_have_clear_messages(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    with pytest.raises(InputError, match="has no input texts"):
        load_file(empty)
    with pytest.raises(InputError, match="not found"):
        load_file(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(InputError, match=r"bad.jsonl:2: not valid JSON"):
        load_file(bad)
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="no text column"):
        load_file(nocol)
    docx = tmp_path / "x.docx"
    docx.write_text("x")
    with pytest.raises(InputError, match="unsupported input type"):
        load_file(docx)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(InputError, match="not UTF-8"):
        load_file(binary)
