"""Tasks: GSM8K parsing and the task built from the real files, YAML tasks, the arith testbed."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from thresher.data.pool import Pool, assistant_text, load_pool, user_text
from thresher.tasks import (
    TASKS,
    DevTask,
    Task,
    TaskConfigError,
    TaskDataError,
    TaskItem,
    get_task,
    gsm8k_pool,
    gsm8k_task,
    list_tasks,
    load_custom_task,
    register_task,
)
from thresher.tasks.arith import (
    DEFECTS,
    ArithConfig,
    ArithTestbed,
    defect_counts,
    read_defect_labels,
)
from thresher.tasks.base import extract_gsm8k
from thresher.tasks.gsm8k import (
    gsm8k_dir,
    load_gsm8k_split,
    parse_gsm8k_answer,
    shared_data_dir,
    strip_calculator,
)

GSM8K_TRAIN, GSM8K_TEST = 7473, 1319


# =========================================================================== GSM8K parsing


@pytest.mark.parametrize(
    ("answer", "number", "solution"),
    [
        ("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72",
         "72", "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips.\n#### 72"),
        ("He saves 1,000 + 234 = <<1000+234=1234>>1,234 dollars.\n#### 1,234",
         "1234", "He saves 1,000 + 234 = 1,234 dollars.\n#### 1234"),
        ("The temperature falls 3 - 10 = <<3-10=-7>>-7 degrees.\n#### -7", "-7", "The temperature falls 3 - 10 = -7 degrees.\n#### -7"),
        ("Each costs 7/2 = <<7/2=3.5>>3.50 dollars.\n#### 3.50", "3.5", "Each costs 7/2 = 3.50 dollars.\n#### 3.5"),
        ("A quarter is 0.25.\n#### 0.25", "0.25", "A quarter is 0.25.\n#### 0.25"),
        ("So $5.\n#### $5", "5", "So $5.\n#### 5"),
        ("Exactly 12.\n####12.0", "12", "Exactly 12.\n#### 12"),
        ("#### 1,000,000", "1000000", "#### 1000000"),
    ],
)
def test_parse_gsm8k_answer(answer, number, solution):
    assert parse_gsm8k_answer(answer) == (number, solution)


@pytest.mark.parametrize("bad", ["She has 5 apples.", "Total 5.\n#### five", "#### "])
def test_parse_gsm8k_answer_rejects_malformed(bad):
    with pytest.raises(ValueError):
        parse_gsm8k_answer(bad)


def test_strip_calculator():
    assert strip_calculator("2*3 = <<2*3=6>>6 and 6+1 = <<6+1=7>>7") == "2*3 = 6 and 6+1 = 7"
    assert strip_calculator("no annotations <here>") == "no annotations <here>"


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("She sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18", "18"),  # strict
        ("#### 1,234.", "1234"),
        ("#### -5\nThat is 5 fewer than 10.", "-5"),  # strict #### wins over later numbers
        ("First 2 + 3 = 5, then 5 * 2 = 10. The answer is 10.", "10"),
        ("The answer is $1,000.", "1000"),
        ("The answer is -3.5", "-3.5"),
        ("The answer is 7. Earlier I said the answer is 42.", "42"),  # the last phrase counts
        ("costs $2.50 each, so 5 x $2.50 = $12.50 in total.", "12.5"),  # last-number fallback
        ("I think 3 apples and then 7 more", "7"),
        ("I do not know.", None),
    ],
)
def test_extract_gsm8k_on_model_style_outputs(output, expected):
    assert extract_gsm8k(output) == expected


# =========================================================================== GSM8K from the real files


@pytest.fixture(scope="module")
def gsm8k_path(shared_data: Path) -> Path:
    return shared_data / "gsm8k"


@pytest.fixture(scope="module")
def gsm(gsm8k_path) -> Task:
    return gsm8k_task(gsm8k_path)


@pytest.fixture(scope="module")
def gpool(gsm8k_path) -> Pool:
    return gsm8k_pool(gsm8k_path)


def test_gsm8k_task_splits_and_no_leaks(gsm, gpool):
    dev, test = gsm.dev, gsm._sealed_test()
    assert len(dev) == 200
    assert len(test) == gsm.test_size == GSM8K_TEST
    assert gsm.name == "gsm8k" and gsm.extractor == "gsm8k" and gsm.domains == ["gsm8k"]
    assert len({it.id for it in dev}) == 200
    assert all(it.id.startswith("gsm8k-train-") for it in dev)
    assert all(it.id.startswith("gsm8k-test-") for it in test)

    assert len(gpool) == GSM8K_TRAIN - 200
    pool_ids, pool_q = set(gpool.ids), {user_text(r) for r in gpool}
    assert not pool_ids & {it.id for it in dev}
    assert not pool_q & {it.question for it in dev}
    assert not {it.question for it in test} & {it.question for it in dev}
    # the pool is exactly the train split minus dev
    assert pool_ids | {it.id for it in dev} == {f"gsm8k-train-{i:05d}" for i in range(GSM8K_TRAIN)}


def test_gsm8k_items_answers_and_targets(gsm, gsm8k_path):
    raw_train = [json.loads(ln) for ln in (gsm8k_path / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    for it in gsm.dev + gsm._sealed_test():
        assert "<<" not in it.target and ">>" not in it.target
        assert it.target.endswith(f"\n#### {it.answer}")
        assert re.fullmatch(r"-?\d+(\.\d+)?", it.answer)
        assert extract_gsm8k(it.target) == it.answer
        assert gsm.is_correct(it.target, it)
    for it in gsm.dev:
        raw = raw_train[int(it.id.rsplit("-", 1)[1])]
        assert it.question == raw["question"].strip()
        assert it.answer == raw["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    view = gsm.dev_view()
    assert type(view) is DevTask and not hasattr(view, "_test")
    assert gsm.messages(gsm.dev[0]) == [{"role": "user", "content": gsm.dev[0].question}]


def test_gsm8k_pool_records(gpool, gsm8k_path):
    first = gpool.get("gsm8k-train-00000")
    assert first["messages"] == [
        {"role": "user", "content": "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
                                    "clips in May. How many clips did Natalia sell altogether in April and May?"},
        {"role": "assistant", "content": "Natalia sold 48/2 = 24 clips in May.\n"
                                         "Natalia sold 48+24 = 72 clips altogether in April and May.\n#### 72"},
    ]
    assert first["source"] == "gsm8k"
    assert first["meta"] == {"final_answer": "72", "split": "train"}
    train = {p.id: p for p in load_gsm8k_split("train", gsm8k_path)}
    for rec in gpool:
        assert assistant_text(rec) == train[rec["id"]].solution  # the same format as the task's targets


def test_gsm8k_deterministic_and_seeded(gsm, gpool, gsm8k_path):
    again = gsm8k_task(gsm8k_path)
    assert again.dev == gsm.dev
    assert again._sealed_test() == gsm._sealed_test()
    assert again.fingerprint() == gsm.fingerprint()
    assert gsm8k_pool(gsm8k_path).fingerprint == gpool.fingerprint

    other = gsm8k_task(gsm8k_path, seed=1, dev_size=50)
    assert len(other.dev) == 50 and other.dev != gsm.dev[:50]
    assert other.fingerprint() != gsm.fingerprint()
    other_pool = gsm8k_pool(gsm8k_path, seed=1, dev_size=50)
    assert len(other_pool) == GSM8K_TRAIN - 50
    assert not set(other_pool.ids) & {it.id for it in other.dev}
    assert len(gsm8k_pool(gsm8k_path, exclude_dev=False)) == GSM8K_TRAIN


def test_gsm8k_test_subsample(gsm, gsm8k_path):
    a = gsm8k_task(gsm8k_path, test_size=100, seed=3)
    b = gsm8k_task(gsm8k_path, test_size=100, seed=3)
    sub = a._sealed_test()
    assert len(sub) == 100 and sub == b._sealed_test()
    full = {it.id: it for it in gsm._sealed_test()}
    assert all(full[it.id] == it for it in sub)
    assert [it.id for it in sub] == sorted(it.id for it in sub)
    assert gsm8k_task(gsm8k_path, test_size=100, seed=4)._sealed_test() != sub
    with pytest.raises(ValueError, match="test_size"):
        gsm8k_task(gsm8k_path, test_size=GSM8K_TEST + 1)


def test_gsm8k_default_location(shared_data, monkeypatch):
    monkeypatch.setenv("THRESHER_SHARED_DATA", str(shared_data))
    assert gsm8k_dir() == shared_data / "gsm8k"
    assert get_task("gsm8k", dev_size=10).dev == gsm8k_task(shared_data / "gsm8k", dev_size=10).dev
    monkeypatch.delenv("THRESHER_SHARED_DATA")
    # without the variable: the shared/data folder beside the checkout, like the tests' fixture
    assert shared_data_dir() == Path(__file__).resolve().parents[3] / "shared" / "data"
    monkeypatch.setenv("THRESHER_SHARED_DATA", "/nonexistent/thresher-data")
    with pytest.raises(FileNotFoundError, match="THRESHER_SHARED_DATA"):
        gsm8k_task()


def test_gsm8k_bad_row_names_file_line_field(tmp_path):
    good = {"question": "What is 1+1?", "answer": "1+1 = <<1+1=2>>2\n#### 2"}
    (tmp_path / "test.jsonl").write_text(json.dumps(good) + "\n", encoding="utf-8")
    rows = [good, {"question": "Q2?", "answer": "2"}, good]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(TaskDataError) as ei:
        gsm8k_task(tmp_path, dev_size=1)
    e = ei.value
    assert (e.path, e.line, e.field) == (str(tmp_path / "train.jsonl"), 2, "answer")
    assert str(e).startswith(f"{tmp_path / 'train.jsonl'}:2 field 'answer': no '#### N'")


# =========================================================================== registry


def test_registry():
    assert {"arith", "gsm8k"} <= set(list_tasks())
    assert list_tasks() == sorted(TASKS)
    t = get_task("arith", seed=2, dev_size=30, test_size=60)
    assert isinstance(t, Task) and len(t.dev) == 30 and t.test_size == 60
    assert t.dev == ArithTestbed(seed=2, dev_size=30, test_size=60).task().dev
    with pytest.raises(KeyError, match=r"unknown task 'nope'; known: arith, gsm8k"):
        get_task("nope")

    @register_task("tiny_test_task")
    def tiny(**params):
        return Task("tiny", [TaskItem("d0", "1+1?", "2")], [TaskItem("t0", "2+2?", "4")], **params)

    try:
        assert "tiny_test_task" in list_tasks()
        assert get_task("tiny_test_task", max_new_tokens=5).max_new_tokens == 5
        with pytest.raises(ValueError, match="already registered"):
            register_task("tiny_test_task")(lambda **p: None)
    finally:
        TASKS.unregister("tiny_test_task")


# =========================================================================== custom YAML tasks


DEV_ROWS = [
    {"id": "d1", "q": "What is 2+3?", "a": 5, "sol": "2+3=5. The answer is 5.", "topic": "add"},
    {"id": "d2", "q": "What is 9-4?", "a": "5", "sol": "9-4=5. The answer is 5.", "topic": "sub"},
    {"q": "What is 1+7?", "a": "8", "sol": "1+7=8. The answer is 8.", "topic": "add"},
]
TEST_ROWS = [
    {"q": "What is 6+1?", "a": 7, "sol": "6+1=7. The answer is 7.", "topic": "add"},
    {"q": "What is 8-8?", "a": 0, "sol": "8-8=0. The answer is 0.", "topic": "sub"},
]
YAML = """\
name: tiny_math
dev: data/dev.jsonl
test: data/test.jsonl
question_field: q
answer_field: a
target_field: sol
domain_field: topic
extractor: answer_is
system: "Answer briefly."
user_template: "Q: {question}\\nA:"
max_new_tokens: 24
description: two-operand sums
"""


def _jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture
def yaml_task(tmp_path, monkeypatch) -> Path:
    _jsonl(tmp_path / "tasks" / "data" / "dev.jsonl", DEV_ROWS)
    _jsonl(tmp_path / "tasks" / "data" / "test.jsonl", TEST_ROWS)
    y = tmp_path / "tasks" / "tiny.yaml"
    y.write_text(YAML, encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative data paths resolve against the YAML file, not the cwd
    return y


def _write_yaml(y: Path, text: str) -> Path:
    y.write_text(text, encoding="utf-8")
    return y


def test_custom_yaml_task_round_trip(yaml_task):
    task = get_task(str(yaml_task))
    assert isinstance(task, Task)
    assert (task.name, task.extractor, task.max_new_tokens, task.description) == ("tiny_math", "answer_is", 24, "two-operand sums")
    assert task.dev == [
        TaskItem("d1", "What is 2+3?", "5", "2+3=5. The answer is 5.", "add"),
        TaskItem("d2", "What is 9-4?", "5", "9-4=5. The answer is 5.", "sub"),
        TaskItem("tiny_math-dev-00003", "What is 1+7?", "8", "1+7=8. The answer is 8.", "add"),
    ]
    assert task._sealed_test() == [
        TaskItem("tiny_math-test-00001", "What is 6+1?", "7", "6+1=7. The answer is 7.", "add"),
        TaskItem("tiny_math-test-00002", "What is 8-8?", "0", "8-8=0. The answer is 0.", "sub"),
    ]
    assert task.domains == ["add", "sub"]
    assert task.messages(task.dev[0]) == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Q: What is 2+3?\nA:"},
    ]
    assert task.is_correct("2+3=5. The answer is 5.", task.dev[0])
    assert not task.is_correct("The answer is 6.", task.dev[0])
    same = load_custom_task(yaml_task)
    assert same.fingerprint() == task.fingerprint()
    assert get_task(yaml_task, max_new_tokens=99).max_new_tokens == 99  # overrides


def test_custom_yaml_defaults(tmp_path):
    _jsonl(tmp_path / "dev.jsonl", [{"question": "a?", "answer": "x"}])
    _jsonl(tmp_path / "test.jsonl", [{"question": "b?", "answer": "y"}])
    y = _write_yaml(tmp_path / "t.yml", "name: plain\ndev: dev.jsonl\ntest: " + str(tmp_path / "test.jsonl") + "\nextractor: exact\n")
    task = get_task(y)
    assert task.dev == [TaskItem("plain-dev-00001", "a?", "x", "", "all")]
    assert task.messages(task.dev[0]) == [{"role": "user", "content": "a?"}]
    assert task.max_new_tokens == 48 and task.is_correct(" x ", task.dev[0])


@pytest.mark.parametrize(
    ("edit", "key", "fragment"),
    [
        (lambda s: s.replace("name: tiny_math\n", ""), "name", "missing required key"),
        (lambda s: s.replace("extractor: answer_is", "extractor: regexy"), "extractor", "unknown extractor 'regexy'; known: ['answer_is', 'exact', 'gsm8k', 'last_number']"),
        (lambda s: s.replace("extractor:", "extracter:"), "extracter", "unknown key"),
        (lambda s: s.replace('"Q: {question}\\nA:"', '"Q: {q}"'), "user_template", "must contain '{question}'"),
        (lambda s: s.replace('"Q: {question}\\nA:"', '"{question} {answer}"'), "user_template", "not a valid template"),
        (lambda s: s.replace("max_new_tokens: 24", "max_new_tokens: lots"), "max_new_tokens", "expected a positive integer, got 'lots'"),
        (lambda s: s.replace("max_new_tokens: 24", "max_new_tokens: 0"), "max_new_tokens", "expected a positive integer, got 0"),
        (lambda s: s.replace("question_field: q", "question_field: [q]"), "question_field", "expected a string, got list"),
        (lambda s: s.replace("dev: data/dev.jsonl", "dev: data/missing.jsonl"), "dev", "data file not found"),
    ],
)
def test_custom_yaml_config_errors(yaml_task, edit, key, fragment):
    _write_yaml(yaml_task, edit(YAML))
    with pytest.raises(TaskConfigError) as ei:
        get_task(yaml_task)
    e = ei.value
    assert (e.path, e.key) == (str(yaml_task), key)
    assert str(e).startswith(f"{yaml_task} key '{key}': ")
    assert fragment in str(e)
    if key == "dev":
        assert str(yaml_task.parent / "data" / "missing.jsonl") in str(e)


def test_custom_yaml_not_a_mapping_or_invalid(yaml_task):
    _write_yaml(yaml_task, "- name: x\n- dev: y\n")
    with pytest.raises(TaskConfigError, match=r"tiny\.yaml: expected a mapping of keys at the top level, got list"):
        get_task(yaml_task)
    _write_yaml(yaml_task, "name: x\ndev: [unclosed\n")
    with pytest.raises(TaskConfigError, match=r"tiny\.yaml: invalid YAML \(line 3, column 1\)"):
        get_task(yaml_task)
    with pytest.raises(FileNotFoundError, match="task file not found"):
        get_task(yaml_task.parent / "absent.yaml")


@pytest.mark.parametrize(
    ("rows", "line", "field", "fragment"),
    [
        ([DEV_ROWS[0], '{"q": "broken', DEV_ROWS[1]], 2, None, "invalid JSON"),
        ([DEV_ROWS[0], DEV_ROWS[1], {"a": "1", "sol": "s", "topic": "add"}], 3, "q", "missing required field"),
        ([{"q": "x?", "a": [1], "sol": "s", "topic": "add"}], 1, "a", "expected a string or a number, got list"),
        ([{"q": "x?", "a": "1", "topic": "add"}], 1, "sol", "missing required field"),
        ([{"q": "  ", "a": "1", "sol": "s", "topic": "add"}], 1, "q", "is empty"),
        ([DEV_ROWS[0], dict(DEV_ROWS[1], id="d1")], 2, "id", "duplicate id 'd1' (first seen at line 1)"),
        ([DEV_ROWS[0], "[1, 2]"], 2, None, "expected a JSON object per item, got list"),
    ],
)
def test_custom_yaml_bad_rows(yaml_task, rows, line, field, fragment):
    dev = _jsonl(yaml_task.parent / "data" / "dev.jsonl", rows)
    with pytest.raises(TaskDataError) as ei:
        get_task(yaml_task)
    e = ei.value
    assert (e.path, e.line, e.field) == (str(dev), line, field)
    assert str(e).startswith(f"{dev}:{line}" + (f" field '{field}'" if field else "") + ": ")
    assert fragment in str(e)


def test_custom_yaml_test_question_in_dev_is_refused(yaml_task):
    _jsonl(yaml_task.parent / "data" / "test.jsonl", [TEST_ROWS[0], DEV_ROWS[1]])
    with pytest.raises(TaskConfigError, match=r"key 'test': task 'tiny_math': 1 test questions also appear in dev"):
        get_task(yaml_task)


# =========================================================================== the arith testbed

_Q = re.compile(
    r"^(\w+) has (\d+) (\w+)(?:,\s+(gets|loses) (\d+)(?:, then (gets|loses) (\d+))?)?\. (?:So h|H)ow many (?:are there )?now\?$"
)


def solve(question: str) -> int:
    """Recompute an arith problem's answer from its wording alone."""
    m = _Q.match(question)
    assert m, f"unparseable arith question: {question!r}"
    val = int(m.group(2))
    for op, v in ((m.group(4), m.group(5)), (m.group(6), m.group(7))):
        if op is not None:
            val = val + int(v) if op == "gets" else val - int(v)
    return val


def canonical(question: str) -> str:
    """Undo the near-duplicate rephrasings, to check leaks up to surface form."""
    q = re.sub(r"\s+", " ", question).replace("So how many", "How many").replace("are there now?", "now?")
    return q


def stated_answer(output: str) -> int | None:
    m = re.search(r"The answer is (-?\d+)\.$", output)
    return int(m.group(1)) if m else None


@pytest.fixture(scope="module")
def arith1000():
    bed = ArithTestbed(pool_size=1000, seed=7)
    pool, task, labels = bed.build()
    rows = {r["id"]: r for r in bed.pool_rows()}
    return pool, task, labels, rows


def test_arith_deterministic(tmp_path):
    a_pool, a_task, a_labels = ArithTestbed(seed=5).build(tmp_path / "a")
    b_pool, b_task, b_labels = ArithTestbed(ArithConfig(seed=5)).build(tmp_path / "b")
    assert list(a_pool) == list(b_pool)
    assert a_pool.fingerprint == b_pool.fingerprint
    assert a_labels == b_labels
    assert a_task.dev == b_task.dev and a_task._sealed_test() == b_task._sealed_test()
    assert a_task.fingerprint() == b_task.fingerprint()
    for name in ("pool.jsonl", "defects.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # the files on disk are the same pool and labels
    disk_pool, _ = load_pool(tmp_path / "a" / "pool.jsonl")
    assert disk_pool.fingerprint == a_pool.fingerprint
    assert read_defect_labels(tmp_path / "a" / "defects.jsonl") == a_labels
    assert "defect" not in (tmp_path / "a" / "pool.jsonl").read_text()
    # another seed, another testbed
    c_pool, c_task, _ = ArithTestbed(seed=6).build()
    assert c_pool.fingerprint != a_pool.fingerprint and c_task.fingerprint() != a_task.fingerprint()


def test_arith_defect_counts_match_rates(arith1000):
    pool, _, labels, _ = arith1000
    assert len(pool) == 1000
    assert Counter(labels.values()) == {
        "clean": 450, "wrong_answer": 200, "truncated": 50, "off_format": 50,
        "exact_dup": 50, "near_dup": 50, "off_task": 50, "trivial": 100,
    }
    assert defect_counts(pool.ids, labels) == {"clean": 450, "wrong_answer": 200, "truncated": 50, "off_format": 50,
                                               "exact_dup": 50, "near_dup": 50, "off_task": 50, "trivial": 100}
    cfg = ArithConfig(pool_size=333, seed=1, wrong_answer=0.3, truncated=0.02, trivial=0.0)
    _, _, lab = ArithTestbed(cfg).build()
    got = Counter(lab.values())
    for d in DEFECTS:
        assert got.get(d, 0) == round(getattr(cfg, d) * 333), d
    assert sum(got.values()) == 333


def test_arith_wrong_answers_are_wrong_and_clean_ones_right(arith1000):
    pool, _, labels, rows = arith1000
    n_wrong = n_clean = 0
    for rec in pool:
        q, out, label = user_text(rec), assistant_text(rec), labels[rec["id"]]
        if label == "wrong_answer":
            truth, said = solve(q), stated_answer(out)
            assert said is not None and said != truth, (q, out)
            # the last worked step shows the same wrong number
            assert out.split(" The answer is")[0].endswith(f"={said}.")
            n_wrong += 1
        elif label == "clean":
            assert stated_answer(out) == solve(q), (q, out)
            steps = re.findall(r"(\d+)([+-])(\d+)=(\d+)\.", out)
            assert len(steps) == rows[rec["id"]]["steps"]
            for a, op, b, c in steps:
                assert (int(a) + int(b) if op == "+" else int(a) - int(b)) == int(c)
            n_clean += 1
        elif label == "trivial":
            assert stated_answer(out) == solve(q)
    assert (n_wrong, n_clean) == (200, 450)


def test_arith_truncated_off_format_and_duplicates(arith1000):
    pool, _, labels, _ = arith1000
    by_label: dict[str, list[dict]] = {}
    for rec in pool:
        by_label.setdefault(labels[rec["id"]], []).append(rec)
    for rec in by_label["truncated"]:
        assert "The answer is" not in assistant_text(rec)
        assert len(assistant_text(rec)) >= 3
    for rec in by_label["off_format"]:
        out = assistant_text(rec)
        assert "The answer is" not in out
        assert str(solve(user_text(rec))) in out
    originals = [r for r in pool if labels[r["id"]] not in ("exact_dup", "near_dup")]
    texts = {(user_text(r), assistant_text(r)) for r in originals}
    for rec in by_label["exact_dup"]:
        assert (user_text(rec), assistant_text(rec)) in texts
    canon = {(canonical(user_text(r)), assistant_text(r)) for r in originals}
    for rec in by_label["near_dup"]:
        assert (canonical(user_text(rec)), assistant_text(rec)) in canon


def test_arith_near_duplicates_differ_from_their_source(arith1000):
    pool, _, labels, _ = arith1000
    texts = {(user_text(r), assistant_text(r)) for r in pool if labels[r["id"]] not in ("exact_dup", "near_dup")}
    same = [user_text(r) for r in pool if labels[r["id"]] == "near_dup" and (user_text(r), assistant_text(r)) in texts]
    assert same == []


def test_arith_no_eval_question_in_pool(arith1000):
    pool, task, _, _ = arith1000
    eval_q = {it.question for it in task.dev} | {it.question for it in task._sealed_test()}
    assert len(eval_q) == len(task.dev) + task.test_size  # dev and test are disjoint and unique
    pool_q = {user_text(r) for r in pool}
    assert not pool_q & eval_q
    assert not {canonical(q) for q in pool_q} & eval_q


def test_arith_dev_balanced_and_mostly_two_step(arith1000):
    _, task, _, _ = arith1000
    assert Counter(it.domain for it in task.dev) == {"add": 67, "sub": 67, "mix": 66}
    steps = [len(re.findall(r"=-?\d+\.", it.target)) for it in task.dev]
    assert set(steps) <= {1, 2}
    two_step = sum(s == 2 for s in steps) / len(steps)
    assert two_step >= 0.6
    assert all(s == 2 for s, it in zip(steps, task.dev) if it.domain == "mix")
    for it in task.dev:
        assert solve(it.question) == int(it.answer)
        assert task.is_correct(it.target, it)
    # the pool's clean part leans easier than dev
    pool, _, labels, rows = arith1000
    clean_two = [rows[i]["steps"] == 2 for i, lab in labels.items() if lab == "clean"]
    assert sum(clean_two) / len(clean_two) < two_step
