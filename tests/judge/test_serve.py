"""`thresher serve`: the OpenAI chat-completions schema, errors, API key and determinism, over real models.

Fast tests use a real (randomly initialised, tiny) LlamaForCausalLM saved with thresher's
micro character tokenizer: a real model behind a real HTTP server, answering nonsense.
Its generation config has no end-of-sequence token, so every reply runs to
``max_tokens`` -- which makes the usage counts exact. The SmolLM2 tests are marked slow.
"""
from __future__ import annotations

import httpx
import pytest

from thresher.judge.serve import start_server_in_thread
from thresher.models.chat import encode_prompt
from thresher.models.load import load_tokenizer


@pytest.fixture(scope="module")
def tiny_server(tiny_chat_model_dir, torch_one_thread):
    url, stop = start_server_in_thread(tiny_chat_model_dir, port=0, api_key_env="THRESHER_TEST_NO_SUCH_KEY_VAR")
    name = httpx.get(url + "/models").json()["data"][0]["id"]
    yield url, name
    stop()


def _chat(url, **body):
    return httpx.post(url + "/chat/completions", json=body, timeout=60)


MESSAGES = [{"role": "system", "content": "Answer in JSON."}, {"role": "user", "content": "What is 2+3?"}]


def test_models_and_health(tiny_server, tiny_chat_model_dir):
    url, name = tiny_server
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
    models = httpx.get(url + "/models").json()
    assert models["object"] == "list" and len(models["data"]) == 1
    card = models["data"][0]
    assert card["object"] == "model" and card["owned_by"] == "thresher"
    assert name.startswith("tiny-")  # the model identity of a local directory: <dir name>-<hash>
    assert httpx.get(url + f"/models/{name}").json()["id"] == name
    health = httpx.get(url[: -len("/v1")] + "/health").json()
    assert health["status"] == "ok" and health["model"] == name and health["batching"] == "serialised"


def test_chat_completion_schema_and_exact_usage(tiny_server, tiny_chat_model_dir):
    url, name = tiny_server
    r = _chat(url, model=name, messages=MESSAGES, max_tokens=7, temperature=0, response_format={"type": "json_object"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "object", "created", "model", "system_fingerprint", "choices", "usage"}
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion" and body["model"] == name
    assert isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] == "length"  # no EOS in this model: it runs to max_tokens
    prompt_len = len(encode_prompt(load_tokenizer(tiny_chat_model_dir), MESSAGES))  # counted independently of the server
    assert body["usage"] == {"prompt_tokens": prompt_len, "completion_tokens": 7, "total_tokens": prompt_len + 7}


def test_greedy_is_deterministic_and_seeded_sampling_reproducible(tiny_server):
    url, name = tiny_server
    a = _chat(url, model=name, messages=MESSAGES, max_tokens=12, temperature=0).json()["choices"][0]["message"]["content"]
    b = _chat(url, model=name, messages=MESSAGES, max_tokens=12, temperature=0).json()["choices"][0]["message"]["content"]
    assert a == b
    s1 = _chat(url, model=name, messages=MESSAGES, max_tokens=40, temperature=1.5, seed=7).json()
    s2 = _chat(url, model=name, messages=MESSAGES, max_tokens=40, temperature=1.5, seed=7).json()
    assert s1["choices"][0]["message"]["content"] == s2["choices"][0]["message"]["content"]
    # a random model sampled at temperature 1.5 over ~100 characters: another seed gives other text
    s3 = _chat(url, model=name, messages=MESSAGES, max_tokens=40, temperature=1.5, seed=8).json()
    assert s3["choices"][0]["message"]["content"] != s1["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("patch", "status", "param", "code"),
    [
        ({"n": 2}, 400, "n", None),
        ({"stream": True}, 400, "stream", None),
        ({"frequency_penalty": 0.5}, 400, "frequency_penalty", None),
        ({"temperature": 3.0}, 400, "temperature", None),
        ({"response_format": {"type": "json_schema"}}, 400, "response_format.type", None),
        ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages.0.role", None),
        ({"messages": []}, 400, "messages", None),
        ({"model": "gpt-4o"}, 404, "model", "model_not_found"),
        ({"max_tokens": 5000}, 400, "messages", "context_length_exceeded"),
    ],
)
def test_bad_requests_get_openai_errors(tiny_server, patch, status, param, code):
    url, name = tiny_server
    body = {"model": name, "messages": MESSAGES, "max_tokens": 4, "temperature": 0, **patch}
    r = _chat(url, **body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == code and err["message"]
    assert err["type"] == "invalid_request_error"


def test_requests_counted(tiny_server):
    url, name = tiny_server
    health = url[: -len("/v1")] + "/health"
    before = httpx.get(health).json()
    _chat(url, model=name, messages=MESSAGES, max_tokens=3, temperature=0)
    _chat(url, model=name, messages=MESSAGES, max_tokens=5000, temperature=0)  # context overflow: a failed request
    after = httpx.get(health).json()
    assert after["requests"] - before["requests"] == 2
    assert after["completed"] - before["completed"] == 1
    assert after["failed"] - before["failed"] == 1
    assert after["in_flight"] == 0


def test_api_key_required_when_set(tiny_chat_model_dir, torch_one_thread, monkeypatch):
    monkeypatch.setenv("THRESHER_SERVE_KEY", "serve-secret-123")
    url, stop = start_server_in_thread(tiny_chat_model_dir)
    try:
        name = "tiny"  # any name: the key is checked first
        assert httpx.get(url + "/models").status_code == 401
        r = _chat(url, model=name, messages=MESSAGES, max_tokens=2, temperature=0)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        bad = httpx.get(url + "/models", headers={"Authorization": "Bearer wrong"})
        assert bad.status_code == 401
        good = {"Authorization": "Bearer serve-secret-123"}
        name = httpx.get(url + "/models", headers=good).json()["data"][0]["id"]
        ok = httpx.post(url + "/chat/completions", headers=good, timeout=60,
                        json={"model": name, "messages": MESSAGES, "max_tokens": 2, "temperature": 0})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 2
        assert httpx.get(url[: -len("/v1")] + "/health").status_code == 200  # health stays open
    finally:
        stop()
    with pytest.raises(httpx.ConnectError):  # stopped means stopped
        httpx.get(url + "/models", timeout=2)


def test_served_name_override(tiny_chat_model_dir, torch_one_thread):
    url, stop = start_server_in_thread(tiny_chat_model_dir, served_name="judge-tiny")
    try:
        assert httpx.get(url + "/models").json()["data"][0]["id"] == "judge-tiny"
        r = _chat(url, model="judge-tiny", messages=MESSAGES, max_tokens=2, temperature=0)
        assert r.status_code == 200 and r.json()["model"] == "judge-tiny"
    finally:
        stop()


def test_openai_client_if_installed(tiny_server):
    openai = pytest.importorskip("openai", reason="the openai package is optional; httpx tests cover the schema")
    url, name = tiny_server
    client = openai.OpenAI(base_url=url, api_key="unused")
    out = client.chat.completions.create(model=name, messages=MESSAGES, max_tokens=5, temperature=0)
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 5


# --------------------------------------------------------------------------- SmolLM2 (slow)


@pytest.fixture(scope="module")
def smol_server():
    url, stop = start_server_in_thread("small", port=0)
    yield url
    stop()


@pytest.mark.slow
def test_smollm2_server_answers_deterministically(smol_server):
    url = smol_server
    assert httpx.get(url + "/models").json()["data"][0]["id"] == "small"
    msgs = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    a = _chat(url, model="small", messages=msgs, max_tokens=16, temperature=0).json()
    b = _chat(url, model="small", messages=msgs, max_tokens=16, temperature=0).json()
    text = a["choices"][0]["message"]["content"]
    assert text == b["choices"][0]["message"]["content"]
    assert "Paris" in text
    assert a["choices"][0]["finish_reason"] == "stop"  # SmolLM2 ends its turn with <|im_end|>
    tok = load_tokenizer("small")
    assert a["usage"]["prompt_tokens"] == len(encode_prompt(tok, msgs))
    assert 1 <= a["usage"]["completion_tokens"] <= 16
