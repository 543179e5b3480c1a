"""thresher.data.pool on the real shared data files and on hand-made bad inputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from thresher.data.pool import (
    LoadReport,
    Pool,
    assistant_text,
    load_pool,
    read_jsonl,
    record_text,
    user_text,
    write_jsonl,
)
from thresher.data.records import (
    PoolFormatError,
    content_hash,
    detect_format,
    normalise_row,
)

ALPACA_ROWS = 5000
# the two Alpaca rows whose response is empty (0-based element indexes in alpaca_5000.json)
ALPACA_EMPTY_OUTPUT_ELEMENTS = [2335, 4658]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def alpaca_file(shared_data: Path) -> Path:
    return shared_data / "alpaca" / "alpaca_5000.json"


@pytest.fixture(scope="module")
def alpaca_raw(alpaca_file: Path) -> list[dict]:
    return json.loads(alpaca_file.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def alpaca(alpaca_file: Path, tmp_path_factory) -> tuple[Pool, LoadReport]:
    rejects = tmp_path_factory.mktemp("alpaca") / "rejects.jsonl"
    return load_pool(alpaca_file, on_error="skip", rejects_path=rejects)


@pytest.fixture(scope="module")
def sharegpt_file(shared_data: Path) -> Path:
    return shared_data / "sharegpt" / "dummy_conversation.json"


@pytest.fixture(scope="module")
def sharegpt(sharegpt_file: Path) -> Pool:
    pool, report = load_pool(sharegpt_file)
    assert report.rows_rejected == 0
    return pool


@pytest.fixture(scope="module")
def gsm8k_train(shared_data: Path) -> Path:
    return shared_data / "gsm8k" / "train.jsonl"


def _write_lines(path: Path, lines: list[str | bytes]) -> Path:
    with open(path, "wb") as f:
        for ln in lines:
            f.write(ln if isinstance(ln, bytes) else ln.encode("utf-8"))
            f.write(b"\n")
    return path


def _row(**kw) -> str:
    return json.dumps(kw, ensure_ascii=False)


def _assert_error(exc: PoolFormatError, path: Path, line: int | None, field: str | None, reason_start: str,
                  unit: str = "line") -> None:
    assert exc.path == str(path)
    assert (exc.unit, exc.line) == (unit, line)
    assert exc.field == field
    assert exc.reason.startswith(reason_start), exc.reason
    msg = str(exc)
    if line is None:
        where = str(path)
    else:
        where = f"{path}:{line}" if unit == "line" else f"{path} {unit} {line}"
    assert msg.startswith(where + (" field" if field else ":")), msg
    if field is not None:
        assert f"field '{field}'" in msg
    else:
        assert " field '" not in msg
    assert reason_start in msg


# --------------------------------------------------------------------------- Alpaca (real file)


def test_alpaca_reads_all_5000_rows_and_keeps_those_with_a_response(alpaca, alpaca_file):
    pool, report = alpaca
    assert report.rows_read == ALPACA_ROWS
    # Two rows of the real slice have an empty response: nothing to train on, so they are rejects.
    assert [(r.unit, r.line, r.field, r.reason) for r in report.rejects] == [
        ("element", i, "output", "is empty") for i in ALPACA_EMPTY_OUTPUT_ELEMENTS
    ]
    assert report.rows_kept == len(pool) == ALPACA_ROWS - 2
    assert len(set(pool.ids)) == len(pool)
    assert set(pool.sources) == {"alpaca_5000"}


def test_alpaca_default_raise_mode_names_the_first_empty_response(alpaca_file):
    with pytest.raises(PoolFormatError) as ei:
        load_pool(alpaca_file)
    _assert_error(ei.value, alpaca_file, ALPACA_EMPTY_OUTPUT_ELEMENTS[0], "output", "is empty", unit="element")


def test_alpaca_ids_are_stable_across_loads(alpaca, alpaca_file, tmp_path):
    pool, _ = alpaca
    again, _ = load_pool(alpaca_file, on_error="skip", rejects_path=tmp_path / "r.jsonl")
    assert again.ids == pool.ids
    assert again.fingerprint == pool.fingerprint
    # the id scheme itself is pinned: caches keyed on ids survive a code change only if it is
    assert pool.ids[0] == "8665377474ada5c3"
    assert pool.ids[4] == "2bcc800761e5afa8"


def test_alpaca_known_record_matches_hand_built_messages(alpaca, alpaca_raw):
    pool, _ = alpaca
    raw = alpaca_raw[0]
    assert raw["instruction"] == "Are the two sentences below grammatically correct? Output yes or no."
    expected_user = (
        "Are the two sentences below grammatically correct? Output yes or no."
        "\n\n"
        "Sentence 1: I am going to the store.\nSentence 2: I goes to the store."
    )
    expected = [{"role": "user", "content": expected_user}, {"role": "assistant", "content": "No"}]
    rec = pool[0]
    assert rec["messages"] == expected
    assert rec["id"] == content_hash(expected)[:16]
    assert rec["meta"] == {}
    assert user_text(rec) == expected_user
    assert assistant_text(rec) == "No"
    assert record_text(rec) == expected_user + "\n\nNo"

    # a row with an empty input: the user text is the instruction alone
    rec5 = pool[4]
    assert alpaca_raw[4]["input"] == ""
    assert rec5["messages"] == [
        {"role": "user", "content": "Generate a new solution to address the global climate crisis."},
        {"role": "assistant", "content": alpaca_raw[4]["output"]},
    ]


def test_alpaca_every_kept_record_matches_its_raw_row(alpaca, alpaca_raw):
    pool, _ = alpaca
    kept = [r for i, r in enumerate(alpaca_raw) if i not in ALPACA_EMPTY_OUTPUT_ELEMENTS]
    assert len(kept) == len(pool)
    for raw, rec in zip(kept, pool):
        user = raw["instruction"] if not raw["input"].strip() else f"{raw['instruction']}\n\n{raw['input']}"
        assert rec["messages"] == [{"role": "user", "content": user}, {"role": "assistant", "content": raw["output"]}]


# --------------------------------------------------------------------------- ShareGPT (real file)


def test_sharegpt_multi_turn_roles_turns_and_ids(sharegpt, sharegpt_file):
    raw = json.loads(sharegpt_file.read_text(encoding="utf-8"))
    assert len(sharegpt) == len(raw) == 500
    assert sharegpt.ids == [r["id"] for r in raw]
    role_map = {"human": "user", "gpt": "assistant"}
    n_turns = 0
    for r, rec in zip(raw, sharegpt):
        assert len(rec["messages"]) == len(r["conversations"])
        assert rec["messages"] == [{"role": role_map[t["from"]], "content": t["value"]} for t in r["conversations"]]
        n_turns += len(rec["messages"])
    assert n_turns == 2000
    # the sample really is multi-turn: 2, 4 and 6 turns
    assert sorted({len(rec["messages"]) for rec in sharegpt}) == [2, 4, 6]
    first = sharegpt.get("identity_0")
    assert first["messages"][0] == {"role": "user", "content": "Who are you?"}
    assert first["messages"][-1] == {"role": "assistant", "content": "You too!"}
    assert first["source"] == "dummy_conversation"


# --------------------------------------------------------------------------- GSM8K train.jsonl as a pool


def test_gsm8k_rows_load_as_question_answer_pool(gsm8k_train, tmp_path):
    raw = read_jsonl(gsm8k_train)
    assert detect_format(raw[0]) == "qa"
    pool, report = load_pool(gsm8k_train, rejects_path=tmp_path / "r.jsonl")
    assert report.rows_read == report.rows_kept == len(pool) == len(raw) == 7473
    assert report.rejects == []
    assert len(set(pool.ids)) == len(pool)
    for r, rec in zip(raw, pool):
        assert rec["messages"] == [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]
    assert pool[0]["messages"][1]["content"].endswith("#### 72")
    assert pool[0]["source"] == "train"
    forced, _ = load_pool(gsm8k_train, fmt="qa")
    assert forced.fingerprint == pool.fingerprint


def test_qa_rows_bad_fields(tmp_path):
    path = _write_lines(tmp_path / "qa.jsonl", [
        _row(question="What is 2+2?", answer="4"),
        _row(question="What is 3+3?"),
    ])
    with pytest.raises(PoolFormatError) as ei:
        load_pool(path)
    _assert_error(ei.value, path, 2, "answer", "missing required field")

    path = _write_lines(tmp_path / "qa2.jsonl", [_row(question=7, answer="4")])
    with pytest.raises(PoolFormatError) as ei:
        load_pool(path)
    _assert_error(ei.value, path, 1, "question", "expected a string, got int")


# --------------------------------------------------------------------------- round trips


def test_parquet_round_trip_identical_records_and_fingerprint(sharegpt, alpaca, tmp_path):
    alpaca_pool, _ = alpaca
    records = list(sharegpt) + alpaca_pool.slice(0, 300)
    records.append({"id": "with-meta", "source": "hand",
                    "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "héllo ✓"},
                                 {"role": "assistant", "content": "line1\nline2\u2028end"}],
                    "meta": {"lang": "fr", "score": 0.5, "tags": ["a", "b"], "nested": {"k": 1}}})
    pool = Pool(records, name="mixed")
    out = pool.save(tmp_path / "sub" / "pool.parquet")
    assert out.is_file()
    assert not list(out.parent.glob("*.tmp*"))
    back, report = load_pool(out)
    assert report.rows_read == report.rows_kept == len(pool)
    assert list(back) == list(pool)
    assert back.ids == pool.ids
    assert back.fingerprint == pool.fingerprint


def test_jsonl_round_trip(sharegpt, tmp_path):
    records = list(sharegpt)[:50] + [{"id": "m1", "source": "hand", "meta": {"x": [1, 2]},
                                      "messages": [{"role": "user", "content": "emoji 🚀 and \u2028 sep"},
                                                   {"role": "assistant", "content": "ok\r\nfine"}]}]
    pool = Pool(records, name="j")
    path = pool.save(tmp_path / "pool.jsonl")
    back, report = load_pool(path)
    assert report.rows_read == len(pool) == 51
    assert list(back) == list(pool)
    assert back.fingerprint == pool.fingerprint
    # the low-level writer/reader round-trip arbitrary rows too
    rows = [{"a": "ünïcode", "b": [1, 2.5, None], "c": {"d": "x\ny"}}, {"e": "\u2028"}]
    write_jsonl(tmp_path / "rows.jsonl", rows)
    assert read_jsonl(tmp_path / "rows.jsonl") == rows


def test_save_refuses_a_suffix_load_pool_cannot_read(sharegpt, tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.parquet, \.pq or \.jsonl"):
        sharegpt.save(tmp_path / "pool.json")
    assert not (tmp_path / "pool.json").exists()


def test_hf_datasets_directory_loads(alpaca_raw, sharegpt_file, tmp_path):
    from datasets import Dataset

    rows = alpaca_raw[:50]
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "alpaca_ds"))
    pool, report = load_pool(tmp_path / "alpaca_ds")
    assert report.rows_read == len(pool) == 50
    expected = Pool.from_records(rows)
    assert [r["messages"] for r in pool] == [r["messages"] for r in expected]
    assert pool.ids == expected.ids

    conv = json.loads(sharegpt_file.read_text(encoding="utf-8"))[:20]
    Dataset.from_list(conv).save_to_disk(str(tmp_path / "sharegpt_ds"))
    pool2, _ = load_pool(tmp_path / "sharegpt_ds")
    assert pool2.ids == [r["id"] for r in conv]
    assert [len(r["messages"]) for r in pool2] == [len(r["conversations"]) for r in conv]


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + _row(instruction="a", output="b").encode() + b"\n")
    pool, _ = load_pool(path)
    assert pool[0]["messages"][0] == {"role": "user", "content": "a"}
    jpath = tmp_path / "bom.json"
    jpath.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"instruction": "a", "output": "b"}]).encode())
    assert load_pool(jpath)[0].ids == pool.ids


# --------------------------------------------------------------------------- bad inputs


GOOD1 = _row(instruction="Add 1 and 2.", output="3")
GOOD2 = _row(instruction="Name a colour.", input="one word", output="Blue")


def test_bad_json_line(tmp_path):
    path = _write_lines(tmp_path / "bad.jsonl", [GOOD1, GOOD2, '{"instruction": "x", "output": ', GOOD1])
    with pytest.raises(PoolFormatError) as ei:
        load_pool(path)
    _assert_error(ei.value, path, 3, None, "invalid JSON")


def test_missing_output_field(tmp_path):
    path = _write_lines(tmp_path / "missing.jsonl", [GOOD1, _row(instruction="Say hi.", input="")])
    with pytest.raises(PoolFormatError) as ei:
        load_pool(path)
    _assert_error(ei.value, path, 2, "output", "missing required field")


def test_wrong_type_instruction(tmp_path):
    path = _write_lines(tmp_path / "type.jsonl", [GOOD1, GOOD2, _row(instruction=42, output="x")])
    with pytest.raises(PoolFormatError) as ei:
        load_pool(path)
    _assert_error(ei.value, path, 3, "instruction", "expected a string, got int")


def test_empty_conversation(tmp_path):
    path = _write_lines(tmp_path / "conv.jsonl", [_row(id="c0", conversations=[])])
    with pytest.raises(PoolFormatError) as ei:
        load_pool(path)
    _assert_error(ei.value, path, 1, "conversations", "empty conversation")


def test_non_utf8_bytes(tmp_path):
    path = _write_lines(tmp_path / "latin1.jsonl", [GOOD1, b'{"instruction": "caf\xe9", "output": "x"}', GOOD2])
    with pytest.raises(PoolFormatError) as ei:
        load_pool(path)
    _assert_error(ei.value, path, 2, None, "not valid UTF-8")


def test_unknown_role(tmp_path):
    conv = [{"from": "human", "value": "hi"}, {"from": "robot", "value": "beep"}]
    path = _write_lines(tmp_path / "role.jsonl", [GOOD1, _row(id="r1", conversations=conv)])
    with pytest.raises(PoolFormatError) as ei:
        load_pool(path)
    _assert_error(ei.value, path, 2, "conversations[1].from", "unknown role 'robot'")


def test_duplicate_id(tmp_path):
    path = _write_lines(tmp_path / "dup.jsonl", [
        _row(id="a", instruction="one", output="1"),
        _row(id="b", instruction="two", output="2"),
        _row(id="a", instruction="three", output="3"),
    ])
    with pytest.raises(PoolFormatError) as ei:
        load_pool(path)
    _assert_error(ei.value, path, 3, "id", "duplicate id 'a' (first seen at line 1)")
    pool, report = load_pool(path, dedupe_ids=True)
    assert pool.ids == ["a", "b"]
    assert pool[0]["messages"][0]["content"] == "one"
    assert (report.rows_read, report.rows_kept, report.rows_rejected, report.duplicates_dropped) == (3, 2, 0, 1)


def test_json_list_reports_element_position(tmp_path):
    # the third element (index 2) is bad: reported as "element 2" (0-based), not as a line
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"},
                                {"instruction": "e"}], indent=1), encoding="utf-8")
    with pytest.raises(PoolFormatError) as ei:
        load_pool(path)
    _assert_error(ei.value, path, 2, "output", "missing required field", unit="element")
    assert str(ei.value) == f"{path} element 2 field 'output': missing required field"
    _, report = load_pool(path, on_error="skip", rejects_path=tmp_path / "rej.jsonl")
    assert [(r.where, r.field) for r in report.rejects] == [(f"{path} element 2", "output")]
    assert read_jsonl(tmp_path / "rej.jsonl") == [
        {"file": str(path), "element": 2, "field": "output", "reason": "missing required field",
         "raw": json.dumps({"instruction": "e"})}
    ]


def test_normalise_row_errors_without_a_file():
    with pytest.raises(PoolFormatError) as ei:
        normalise_row({"prompt": "x", "completion": "y"}, line=4)
    assert (ei.value.path, ei.value.line, ei.value.field) == ("<memory>", 4, None)
    assert "cannot tell the format" in str(ei.value)


# --------------------------------------------------------------------------- on_error="skip"


def test_skip_writes_rejects_and_counts_exactly(tmp_path):
    conv_ok = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]
    lines: list[str | bytes] = [
        _row(id="g1", instruction="Add 1 and 2.", output="3"),                         # 1 good
        '{"instruction": "x", "output": ',                                             # 2 bad JSON
        _row(id="g2", instruction="Name a colour.", input="one word", output="Blue"),  # 3 good
        _row(id="m1", instruction="Say hi."),                                          # 4 missing output
        "",                                                                            # 5 blank: skipped, not a row
        _row(id="t1", instruction=42, output="x"),                                     # 6 wrong type
        _row(id="g3", conversations=conv_ok),                                          # 7 good
        _row(id="e1", conversations=[]),                                               # 8 empty conversation
        b'{"id": "u1", "instruction": "caf\xe9", "output": "x"}',                      # 9 not UTF-8
        _row(id="r1", conversations=[conv_ok[0], {"from": "robot", "value": "b"}]),    # 10 unknown role
        _row(id="g1", instruction="again", output="dup"),                              # 11 duplicate id
        _row(id="g4", messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]),  # 12 good
    ]
    path = _write_lines(tmp_path / "mixed.jsonl", lines)
    rejects_path = tmp_path / "out" / "rejects.jsonl"
    pool, report = load_pool(path, on_error="skip", rejects_path=rejects_path)

    assert pool.ids == ["g1", "g2", "g3", "g4"]
    assert pool.get("g1")["messages"][1]["content"] == "3"  # the first g1 is kept, the repeat rejected
    assert report.rows_read == 11
    assert report.rows_kept == 4
    assert report.rows_rejected == 7
    assert report.rejects_path == str(rejects_path)

    expected = [
        (2, None, "invalid JSON"),
        (4, "output", "missing required field"),
        (6, "instruction", "expected a string, got int"),
        (8, "conversations", "empty conversation"),
        (9, None, "not valid UTF-8"),
        (10, "conversations[1].from", "unknown role 'robot'"),
        (11, "id", "duplicate id 'g1' (first seen at line 1)"),
    ]
    rows = read_jsonl(rejects_path)
    assert len(rows) == len(expected)
    columns = {2: len(lines[1]) + 1, 9: len('{"id": "u1", "instruction": "caf') + 1}  # where the decoding failed
    for row, (line, field, reason) in zip(rows, expected):
        assert set(row) == {"file", "line", "field", "reason", "raw"} | ({"column"} if line in columns else set())
        assert row.get("column") == columns.get(line)
        assert row["file"] == str(path)
        assert row["line"] == line
        assert row["field"] == field
        assert row["reason"].startswith(reason), row["reason"]
    assert rows[1]["raw"] == lines[3]
    assert "caf\ufffd" in rows[4]["raw"]  # undecodable bytes are shown, replaced
    assert [(r.line, r.field) for r in report.rejects] == [(e[0], e[1]) for e in expected]


def test_skip_with_nothing_usable_still_raises_after_writing_rejects(tmp_path):
    path = _write_lines(tmp_path / "allbad.jsonl", ['{"broken', _row(instruction="x")])
    rp = tmp_path / "rej.jsonl"
    with pytest.raises(PoolFormatError, match=r"no usable examples \(2 rejected\)"):
        load_pool(path, on_error="skip", rejects_path=rp)
    assert [r["line"] for r in read_jsonl(rp)] == [1, 2]


def _cli_load(*args: str):
    from typer.testing import CliRunner

    from thresher.cli import app

    return CliRunner().invoke(app, ["load", *map(str, args)])


def test_skip_rejects_go_beside_the_output_even_when_the_input_folder_is_read_only(tmp_path):
    src = tmp_path / "readonly"
    src.mkdir()
    path = _write_lines(src / "pool.jsonl", [_row(instruction="a", output="b"), _row(instruction="c"), _row(instruction="d", output="e")])
    out = tmp_path / "work" / "clean.parquet"
    src.chmod(0o555)
    try:
        # as root a read-only mode does not stop writes: then what still tells is where the file went
        res = _cli_load(path, "--on-error", "skip", "--out", out)
        assert res.exit_code == 0, res.output
        assert "3 rows read, 2 kept, 1 rejected" in res.output
        assert sorted(p.name for p in src.iterdir()) == ["pool.jsonl"]  # nothing written beside the input
    finally:
        src.chmod(0o755)
    rejects = tmp_path / "work" / "clean.rejects.jsonl"
    assert f"rejectswrittento{rejects}" in "".join(res.output.split())  # (rich may wrap a long path)
    assert [(r["line"], r["field"]) for r in read_jsonl(rejects)] == [(2, "output")]
    assert load_pool(out)[0].ids == load_pool(path, on_error="skip")[0].ids

    # the library default writes no file at all, anywhere near the input
    _, report = load_pool(path, on_error="skip")
    assert report.rows_rejected == 1 and report.rejects_path is None
    assert sorted(p.name for p in src.iterdir()) == ["pool.jsonl"]


def test_a_clean_reload_removes_the_stale_rejects_file_of_its_output(tmp_path):
    from thresher.api import load

    path = _write_lines(tmp_path / "pool.jsonl", [_row(instruction="a", output="b"), _row(instruction="c")])
    out = tmp_path / "out.parquet"
    _, report = load(path, out=out, on_error="skip")
    rejects = tmp_path / "out.rejects.jsonl"
    assert report.rejects_path == str(rejects) and rejects.exists()

    _write_lines(path, [_row(instruction="a", output="b"), _row(instruction="c", output="fixed")])
    res = _cli_load(path, "--on-error", "skip", "--out", out)
    assert res.exit_code == 0, res.output
    assert "2 rows read, 2 kept, 0 rejected" in res.output
    assert f"removedthestalerejectsfile{rejects}" in "".join(res.output.split())
    assert not rejects.exists()
    _, report = load(path, out=out)  # nothing stale left: nothing to say
    assert report.stale_rejects_removed is None and report.rejects_path is None

    # an explicitly named rejects file is the load's too
    named = tmp_path / "named.jsonl"
    named.write_text('{"stale": true}\n')
    _, report = load_pool(path, on_error="skip", rejects_path=named)
    assert report.stale_rejects_removed == str(named) and not named.exists()


def test_an_unwritable_rejects_location_is_a_one_line_error(tmp_path):
    path = _write_lines(tmp_path / "pool.jsonl", [_row(instruction="a", output="b"), _row(instruction="c")])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    res = _cli_load(path, "--on-error", "skip", "--rejects", blocker / "rejects.jsonl", "--out", tmp_path / "p.parquet")
    assert res.exit_code == 2
    assert isinstance(res.exception, SystemExit)  # handled, not a traceback
    assert res.output.startswith("error:") and "Traceback" not in res.output
    assert f"cannotwritetherejectsfile{blocker / 'rejects.jsonl'}" in "".join(res.output.split())


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_changes_when_one_answer_character_changes(sharegpt, alpaca):
    records = [dict(r, messages=[dict(m) for m in r["messages"]]) for r in sharegpt]
    base = Pool(records)
    assert base.fingerprint == sharegpt.fingerprint
    victim = records[123]["messages"][-1]
    assert victim["role"] == "assistant"
    victim["content"] = victim["content"][:-1] + ("X" if victim["content"][-1] != "X" else "Y")
    changed = Pool(records)
    assert changed.ids == base.ids  # the given ids stay, only the content differs
    assert changed.fingerprint != base.fingerprint

    # Alpaca: ids are content hashes; one character of one response changes the fingerprint
    alpaca_pool, _ = alpaca
    recs = list(alpaca_pool)
    m = recs[10]["messages"]
    recs[10] = dict(recs[10], messages=[m[0], {"role": "assistant", "content": m[1]["content"] + "."}])
    assert Pool(recs).fingerprint != alpaca_pool.fingerprint
    assert Pool(list(alpaca_pool)).fingerprint == alpaca_pool.fingerprint


# --------------------------------------------------------------------------- "nothing lost, nothing poisoned, no tracebacks"


def _cli_subprocess(args: list, tmp_path: Path):
    """``python -m thresher.cli ARGS`` in a fresh process, with HOME (and so ~/.cache) under tmp_path."""
    import os
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_HOME", "HF_DATASETS_CACHE", "XDG_CACHE"))}
    env.update(HOME=str(home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", COLUMNS="400")
    env.pop("THRESHER_DEBUG", None)
    res = subprocess.run([sys.executable, "-m", "thresher.cli", *map(str, args)], capture_output=True, text=True, check=False,
                         env=env, cwd=tmp_path, timeout=300)
    return res, home


def _assert_one_line_error(res, *fragments: str) -> str:
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def _write_parquet(path: Path, columns: dict) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def _pool_columns(ids, messages, meta=None) -> dict:
    """The columns Pool.save writes, with whatever values a test wants in them."""
    n = len(ids)
    return {"id": ids, "messages": messages, "source": ["hand"] * n, "meta": meta if meta is not None else ["{}"] * n}


def _chat(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in turns]


OK_CHAT = _chat(("user", "q"), ("assistant", "a"))


def test_a_parquet_file_that_is_not_parquet_is_a_one_line_error(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_text("hello, I am text\n")
    with pytest.raises(PoolFormatError) as ei:
        load_pool(path)
    _assert_error(ei.value, path, None, None, "not a readable Parquet file")
    res, _ = _cli_subprocess(["load", path], tmp_path)
    _assert_one_line_error(res, str(path), "not a readable Parquet file")


def test_parquet_pool_with_wrong_column_types_names_file_row_and_field(tmp_path):
    # messages is an int column
    p1 = _write_parquet(tmp_path / "ints.parquet", _pool_columns(["a", "b"], [1, 2]))
    with pytest.raises(PoolFormatError) as ei:
        load_pool(p1)
    _assert_error(ei.value, p1, 0, "messages", "expected a list of turns, got int", unit="row")
    assert str(ei.value) == f"{p1} row 0 field 'messages': expected a list of turns, got int"

    # id is a list
    p2 = _write_parquet(tmp_path / "listid.parquet", _pool_columns([["x"], ["y"]], [OK_CHAT, OK_CHAT]))
    with pytest.raises(PoolFormatError) as ei:
        load_pool(p2)
    _assert_error(ei.value, p2, 0, "id", "expected a string or integer id, got list", unit="row")

    # only one row is bad: that row is named, and skip keeps the others
    p3 = _write_parquet(tmp_path / "onebad.parquet",
                        _pool_columns(["a", "b", "c"], [OK_CHAT, None, OK_CHAT], meta=["{}", "{}", "{not json"]))
    with pytest.raises(PoolFormatError) as ei:
        load_pool(p3)
    _assert_error(ei.value, p3, 1, "messages", "expected a list of turns, got NoneType", unit="row")
    pool, report = load_pool(p3, on_error="skip", rejects_path=tmp_path / "rej.jsonl")
    assert pool.ids == ["a"]
    assert [(r.where, r.field) for r in report.rejects] == [(f"{p3} row 1", "messages"), (f"{p3} row 2", "meta")]
    assert [(r["row"], r["field"]) for r in read_jsonl(tmp_path / "rej.jsonl")] == [(1, "messages"), (2, "meta")]

    # a raw (Alpaca) Parquet: the same row/field naming
    p4 = _write_parquet(tmp_path / "alpaca.parquet", {"instruction": ["a", "b"], "output": ["x", ""]})
    with pytest.raises(PoolFormatError) as ei:
        load_pool(p4)
    _assert_error(ei.value, p4, 1, "output", "is empty", unit="row")


def test_parquet_duplicate_ids_get_the_jsonl_duplicate_error(tmp_path):
    path = _write_parquet(tmp_path / "dup.parquet", _pool_columns(
        ["a", "b", "a"], [_chat(("user", q), ("assistant", "x")) for q in ("one", "two", "three")]))
    with pytest.raises(PoolFormatError) as ei:
        load_pool(path)
    _assert_error(ei.value, path, 2, "id", "duplicate id 'a' (first seen at row 0)", unit="row")
    pool, report = load_pool(path, dedupe_ids=True)
    assert pool.ids == ["a", "b"] and report.duplicates_dropped == 1
    assert pool[0]["messages"][0]["content"] == "one"
    pool, report = load_pool(path, on_error="skip")
    assert pool.ids == ["a", "b"] and [(r.line, r.field) for r in report.rejects] == [(2, "id")]

    raw = _write_parquet(tmp_path / "dup_raw.parquet", {"id": ["a", "a"], "instruction": ["x", "y"], "output": ["1", "2"]})
    with pytest.raises(PoolFormatError) as ei:
        load_pool(raw)
    _assert_error(ei.value, raw, 1, "id", "duplicate id 'a' (first seen at row 0)", unit="row")


# the same bad conversations, in every input format: (messages, field, reason)
BAD_CONVERSATIONS = [
    (_chat(("user", "hi"), ("robot", "beep")), "messages[1].role", "unknown role 'robot'"),
    (_chat(("user", "hi"), ("assistant", "  ")), "messages[1].content", "is empty"),
    (_chat(("assistant", "hello"), ("user", "hi"), ("assistant", "a")), "messages[0].role",
     "the conversation starts with an assistant turn"),
    (_chat(("user", "hi"), ("user", "again"), ("assistant", "a")), "messages[1].role", "two user turns in a row"),
    (_chat(("user", "hi"), ("assistant", "a"), ("assistant", "b")), "messages[2].role", "two assistant turns in a row"),
    (_chat(("user", "hi"), ("assistant", "a"), ("user", "more?")), "messages[2].role",
     "the conversation ends on a user turn"),
    (_chat(("user", "hi"), ("system", "be nice"), ("assistant", "a")), "messages[1].role",
     "a system turn may only come first"),
    (_chat(("system", "be nice")), "messages", "no user turn"),
]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet", "datasets"])
def test_every_input_format_validates_records_the_same_way(fmt, tmp_path):
    good = {"id": "good", "messages": _chat(("system", "s"), ("user", "q"), ("assistant", "a"), ("user", "q2"),
                                            ("assistant", "a2")), "source": "hand", "meta": {}}
    for k, (messages, field, reason) in enumerate(BAD_CONVERSATIONS):
        rows = [good, {"id": f"bad{k}", "messages": messages, "source": "hand", "meta": {}}]
        if fmt == "jsonl":
            path, pos, unit = write_jsonl(tmp_path / f"p{k}.jsonl", rows), 2, "line"
        elif fmt == "json":
            path, pos, unit = tmp_path / f"p{k}.json", 1, "element"
            path.write_text(json.dumps(rows), encoding="utf-8")
        elif fmt == "parquet":  # the columns Pool.save writes: read back without a second look until now
            path, pos, unit = tmp_path / f"p{k}.parquet", 1, "row"
            _write_parquet(path, _pool_columns([r["id"] for r in rows], [r["messages"] for r in rows]))
        else:
            from datasets import Dataset

            path, pos, unit = tmp_path / f"ds{k}", 1, "row"
            Dataset.from_list([{"id": r["id"], "messages": r["messages"]} for r in rows]).save_to_disk(str(path))
        with pytest.raises(PoolFormatError) as ei:
            load_pool(path)
        _assert_error(ei.value, path, pos, field, reason, unit=unit)
        pool, report = load_pool(path, on_error="skip")
        assert pool.ids == ["good"] and [(r.line, r.field) for r in report.rejects] == [(pos, field)]
        # what was kept is written in a form that reloads
        again, _ = load_pool(pool.save(tmp_path / f"out{k}.jsonl"))
        assert list(again) == list(pool)


def test_one_record_check_for_normalised_records_and_reload(tmp_path):
    from thresher.data.records import validate_record

    rec = {"id": "r", "messages": _chat(("user", "hi"), ("robot", "beep")), "source": "s", "meta": {}}
    with pytest.raises(PoolFormatError, match=r"field 'messages\[1\]\.role': unknown role 'robot'"):
        validate_record(rec)
    with pytest.raises(PoolFormatError) as ei:
        Pool.from_records([{"id": "ok", "messages": OK_CHAT, "source": "s", "meta": {}}, rec])
    assert (ei.value.path, ei.value.unit, ei.value.line, ei.value.field) == ("<memory>", "element", 1, "messages[1].role")
    for bad, field in [({**rec, "messages": OK_CHAT, "id": ["x"]}, "id"), ({**rec, "messages": OK_CHAT, "meta": "x"}, "meta"),
                       ({**rec, "messages": OK_CHAT, "source": 3}, "source"), ({"id": "x", "messages": OK_CHAT}, "source")]:
        with pytest.raises(PoolFormatError) as ei:
            validate_record(bad)
        assert ei.value.field == field
    good = {"id": "g", "messages": _chat(("system", ""), ("user", "q"), ("assistant", "a")), "source": "s", "meta": {}}
    assert validate_record(good) is good  # an empty system turn is allowed


@pytest.mark.parametrize(("turns", "field", "reason"), [
    ([("gpt", "hello"), ("human", "hi"), ("gpt", "a")], "conversations[0].from", "the conversation starts with an assistant turn"),
    ([("human", "hi"), ("human", "again"), ("gpt", "a")], "conversations[1].from", "two user turns in a row (turns 0 and 1)"),
    ([("human", "hi"), ("gpt", "a"), ("human", "more?")], "conversations[2].from", "the conversation ends on a user turn"),
    ([("human", "hi"), ("gpt", "")], "conversations[1].value", "is empty (assistant turn 1)"),
])
def test_sharegpt_roles_out_of_order_are_rejected(turns, field, reason, tmp_path):
    ok = _row(id="ok", conversations=[{"from": "system", "value": "s"}, {"from": "human", "value": "q"},
                                      {"from": "gpt", "value": "a"}])
    bad = _row(id="bad", conversations=[{"from": f, "value": v} for f, v in turns])
    path = _write_lines(tmp_path / "sg.jsonl", [ok, bad])
    with pytest.raises(PoolFormatError) as ei:
        load_pool(path)
    _assert_error(ei.value, path, 2, field, reason)
    pool, report = load_pool(path, on_error="skip", rejects_path=tmp_path / "rej.jsonl")
    assert pool.ids == ["ok"] and report.rows_read == 2 and report.rows_rejected == 1
    [rej] = read_jsonl(tmp_path / "rej.jsonl")
    assert (rej["line"], rej["field"]) == (2, field) and rej["reason"].startswith(reason)
    # the same rule for OpenAI messages (ShareGPT names mapped to roles)
    names = {"human": "user", "gpt": "assistant"}
    mpath = _write_lines(tmp_path / "m.jsonl", [_row(id="m", messages=_chat(*[(names[f], v) for f, v in turns]))])
    with pytest.raises(PoolFormatError) as ei:
        load_pool(mpath)
    _assert_error(ei.value, mpath, 1, field.replace("conversations", "messages").replace(".from", ".role")
                  .replace(".value", ".content"), reason)


def test_alpaca_and_qa_rows_with_a_system_prompt_meet_the_turn_rules(tmp_path):
    path = _write_lines(tmp_path / "a.jsonl", [_row(instruction="i", input="x", output="o", system="be brief"),
                                               _row(question="q?", answer="a", system="s")])
    pool, _ = load_pool(path)
    assert [[m["role"] for m in r["messages"]] for r in pool] == [["system", "user", "assistant"]] * 2


def test_jsonl_errors_name_the_true_line_and_column(tmp_path):
    truncated = '{"instruction": "x", "output": '
    path = _write_lines(tmp_path / "bad.jsonl", [GOOD1, GOOD2, truncated, GOOD1])
    with pytest.raises(PoolFormatError) as ei:
        load_pool(path)
    _assert_error(ei.value, path, 3, None, "invalid JSON: Expecting value")
    assert ei.value.column == len(truncated) + 1  # at the end of line 3 (not "column 1" of a phantom line 4)
    assert str(ei.value) == f"{path}:3: invalid JSON: Expecting value (column {len(truncated) + 1})"

    missing_comma = '{"instruction": "x" "output": "y"}'
    path = _write_lines(tmp_path / "mid.jsonl", [GOOD1, missing_comma])
    with pytest.raises(PoolFormatError) as ei:
        load_pool(path)
    assert (ei.value.line, ei.value.column) == (2, missing_comma.index('"output"') + 1)

    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes(GOOD1.encode() + b"\r\n" + truncated.encode() + b"\r\n")
    with pytest.raises(PoolFormatError) as ei:
        load_pool(crlf)
    assert (ei.value.line, ei.value.column) == (2, len(truncated) + 1)

    # a JSON document: its line and column
    jpath = tmp_path / "bad.json"
    jpath.write_text(f'[\n  {{"instruction": "a", "output": "b"}},\n  {missing_comma}\n]\n')
    with pytest.raises(PoolFormatError) as ei:
        load_pool(jpath)
    col = missing_comma.index('"output"') + 3
    assert (ei.value.unit, ei.value.line, ei.value.column) == ("line", 3, col)
    assert str(ei.value) == f"{jpath}:3: invalid JSON: Expecting ',' delimiter (column {col})"


def test_a_folder_of_shards_loads_as_their_concatenation_in_name_order(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _write_lines(shards / "part-b.jsonl", [_row(id="b1", instruction="b", output="1")])
    _write_lines(shards / "part-a.jsonl", [_row(id="a1", instruction="a", output="1"), _row(id="a2", instruction="a", output="2")])
    (shards / "part-c.json").write_text(json.dumps([{"id": "c1", "question": "c?", "answer": "1"}]))
    _write_parquet(shards / "part-d.parquet", _pool_columns(["d1"], [OK_CHAT]))
    (shards / "README.md").write_text("not a shard")
    (shards / ".part-0.jsonl").write_text("hidden, ignored\n")
    (shards / "old.rejects.jsonl").write_text('{"file": "x", "line": 1}\n')
    pool, report = load_pool(shards)
    assert pool.ids == ["a1", "a2", "b1", "c1", "d1"]
    assert report.rows_read == report.rows_kept == 5
    assert set(pool.sources) == {"shards", "hand"}  # the folder's name, unless a row names its source
    assert pool.name == "shards"

    # each error names its shard; duplicates are found across shards
    _write_lines(shards / "part-e.jsonl", [_row(id="e1", instruction="e", output="1"), _row(id="b1", instruction="e", output="2"),
                                           _row(id="e3", instruction="e")])
    with pytest.raises(PoolFormatError) as ei:
        load_pool(shards)
    _assert_error(ei.value, shards / "part-e.jsonl", 2, "id", f"duplicate id 'b1' (first seen at {shards / 'part-b.jsonl'}:1)")
    pool, report = load_pool(shards, on_error="skip")
    assert pool.ids == ["a1", "a2", "b1", "c1", "d1", "e1"]
    assert [(r.path, r.line, r.field) for r in report.rejects] == [(str(shards / "part-e.jsonl"), 2, "id"),
                                                                     (str(shards / "part-e.jsonl"), 3, "output")]


def test_a_folder_of_shards_via_the_cli_never_touches_the_hf_cache(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _write_lines(shards / "0.jsonl", [_row(id="a", instruction="a", output="1")])
    _write_lines(shards / "1.jsonl", [_row(id="b", instruction="b", output="2"), _row(id="c", instruction="c", output=3)])
    res, home = _cli_subprocess(["load", shards], tmp_path)
    _assert_one_line_error(res, f"{shards / '1.jsonl'}:2 field 'output': expected a string, got int")
    assert not (home / ".cache").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(PoolFormatError) as ei:
        load_pool(empty)
    _assert_error(ei.value, empty, None, None, "a folder with no pool files")
    assert "save_to_disk" in str(ei.value)


def test_an_unsupported_output_suffix_is_a_config_error_before_any_work(sharegpt, tmp_path):
    from thresher.data.pool import check_save_path
    from thresher.errors import ConfigError

    for name in ("pool.json", "pool", "pool.csv"):
        with pytest.raises(ConfigError, match=r"must end in \.parquet, \.pq or \.jsonl"):
            sharegpt.save(tmp_path / "new" / name)
        with pytest.raises(ConfigError):
            check_save_path(name)
    assert not (tmp_path / "new").exists()  # not even the folder
    assert check_save_path(tmp_path / "ok.pq") == tmp_path / "ok.pq"

    src = _write_lines(tmp_path / "in.jsonl", [_row(instruction="a", output="b")])
    res, _ = _cli_subprocess(["load", src, "--out", tmp_path / "pool.json"], tmp_path)
    _assert_one_line_error(res, "pool.json", ".parquet, .pq or .jsonl")
    assert not (tmp_path / "pool.json").exists()
