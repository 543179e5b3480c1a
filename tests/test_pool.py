"""thresher.pool on the real shared data files and on hand-made bad inputs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from thresher.pool import (
    LoadReport,
    Pool,
    PoolFormatError,
    assistant_text,
    content_hash,
    detect_format,
    load_pool,
    normalise_row,
    read_jsonl,
    record_text,
    user_text,
    write_jsonl,
)

ALPACA_ROWS = 5000
# the two Alpaca rows whose response is empty (1-based positions in alpaca_5000.json)
ALPACA_EMPTY_OUTPUT_LINES = [2336, 4659]


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


def _assert_error(exc: PoolFormatError, path: Path, line: int | None, field: str | None, reason_start: str) -> None:
    assert exc.path == str(path)
    assert exc.line == line
    assert exc.field == field
    assert exc.reason.startswith(reason_start), exc.reason
    msg = str(exc)
    assert msg.startswith(f"{path}:{line}" if line is not None else str(path))
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
    assert [(r.line, r.field, r.reason) for r in report.rejects] == [
        (line, "output", "is empty") for line in ALPACA_EMPTY_OUTPUT_LINES
    ]
    assert report.rows_kept == len(pool) == ALPACA_ROWS - 2
    assert len(set(pool.ids)) == len(pool)
    assert set(pool.sources) == {"alpaca_5000"}


def test_alpaca_default_raise_mode_names_the_first_empty_response(alpaca_file):
    with pytest.raises(PoolFormatError) as ei:
        load_pool(alpaca_file)
    _assert_error(ei.value, alpaca_file, ALPACA_EMPTY_OUTPUT_LINES[0], "output", "is empty")


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
    kept = [r for i, r in enumerate(alpaca_raw, start=1) if i not in ALPACA_EMPTY_OUTPUT_LINES]
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
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"},
                                {"instruction": "e"}]), encoding="utf-8")
    with pytest.raises(PoolFormatError) as ei:
        load_pool(path)
    _assert_error(ei.value, path, 3, "output", "missing required field")


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
    for row, (line, field, reason) in zip(rows, expected):
        assert set(row) == {"file", "line", "field", "reason", "raw"}
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
