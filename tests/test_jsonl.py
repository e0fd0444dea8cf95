"""The checkpoint format of resumable sweeps: a line cut by a kill loses only that record."""
import json

from workbench.io.jsonl import append_jsonl, read_jsonl


def test_cut_line_is_skipped_and_later_records_stay_whole(tmp_path):
    path = tmp_path / "sub" / "rows.jsonl"
    assert read_jsonl(path) == []
    append_jsonl(path, {"key": 1})
    with open(path, "a") as f:
        f.write(json.dumps({"key": 2})[:5])  # killed while writing record 2
    assert read_jsonl(path) == [{"key": 1}]
    append_jsonl(path, {"key": 3})
    assert read_jsonl(path) == [{"key": 1}, {"key": 3}]
