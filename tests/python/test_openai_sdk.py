"""The official `openai` Python SDK against a real poolgate in front of the Rust mock upstream,
used exactly as a new user would: `OpenAI(base_url=<poolgate>/v1, api_key=<poolgate client key>)`.

Every proxied request is written to the gateway's ledger (`gateway.expect`), and the last test
checks that `/admin/api/usage` holds exactly one matching record per ledger entry.
"""

from __future__ import annotations

import asyncio
import time
from typing import Iterator

import httpx
import openai
import pytest

from conftest import (
    MOCK_CHUNKS,
    MOCK_CONTENT,
    MOCK_USAGE,
    MODEL,
    UPSTREAM_MODEL,
    Gateway,
)


@pytest.fixture(scope="module")
def client(gateway: Gateway) -> Iterator[openai.OpenAI]:
    # No retries: every SDK call is exactly one HTTP request, so the usage ledger stays exact.
    with openai.OpenAI(base_url=gateway.base_url, api_key=gateway.client_key, max_retries=0) as c:
        yield c


def usage_tuple(usage) -> tuple[int, int, int]:
    return (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens)


MESSAGES = [{"role": "user", "content": "Say hello"}]


# === chat completions ===


def test_chat_completion(gateway: Gateway, client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    gateway.expect(
        completion._request_id, endpoint="chat.completions", status=200, outcome="success",
        tokens=MOCK_USAGE,
    )

    assert completion.object == "chat.completion"
    # poolgate relays the upstream body as is: the model is the upstream's id.
    assert completion.model == UPSTREAM_MODEL
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == MOCK_CONTENT
    assert choice.finish_reason == "stop"
    assert usage_tuple(completion.usage) == MOCK_USAGE


def collect_stream(stream) -> tuple[list, str]:
    chunks = list(stream)
    content = "".join(
        choice.delta.content or "" for chunk in chunks for choice in chunk.choices
    )
    return chunks, content


def test_chat_stream(gateway: Gateway, client: openai.OpenAI) -> None:
    with client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True) as stream:
        chunks, content = collect_stream(stream)
        request_id = stream.response.headers.get("x-request-id")
        content_type = stream.response.headers.get("content-type", "")
    # Without include_usage poolgate still asks upstream for usage (it is recorded below) and
    # strips the usage chunk from what the client sees.
    gateway.expect(
        request_id, endpoint="chat.completions", status=200, outcome="success",
        streamed=True, tokens=MOCK_USAGE,
    )

    assert content_type.startswith("text/event-stream")
    assert content == MOCK_CONTENT
    # role chunk, one chunk per piece, finish_reason chunk; the iterator ended at [DONE].
    assert len(chunks) == MOCK_CHUNKS + 2
    assert all(chunk.object == "chat.completion.chunk" for chunk in chunks)
    assert all(chunk.model == UPSTREAM_MODEL for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks] == [None] * (MOCK_CHUNKS + 1) + ["stop"]


def test_chat_stream_with_include_usage_ends_with_a_usage_chunk(
    gateway: Gateway, client: openai.OpenAI
) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks, content = collect_stream(stream)
    gateway.expect(
        stream.response.headers.get("x-request-id"), endpoint="chat.completions", status=200,
        outcome="success", streamed=True, tokens=MOCK_USAGE,
    )

    assert content == MOCK_CONTENT
    *body, last = chunks
    assert last.choices == []
    assert usage_tuple(last.usage) == MOCK_USAGE
    assert all(chunk.usage is None for chunk in body)
    assert body[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("stream_options", [None, {"include_usage": False}])
def test_chat_stream_without_include_usage_has_no_usage_chunk(
    gateway: Gateway, client: openai.OpenAI, stream_options
) -> None:
    extra = {} if stream_options is None else {"stream_options": stream_options}
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True, **extra)
    chunks, content = collect_stream(stream)
    gateway.expect(
        stream.response.headers.get("x-request-id"), endpoint="chat.completions", status=200,
        outcome="success", streamed=True, tokens=MOCK_USAGE,
    )

    assert content == MOCK_CONTENT
    assert all(chunk.usage is None for chunk in chunks)
    assert all(len(chunk.choices) == 1 for chunk in chunks), "a usage-only chunk leaked through"


# === other endpoints ===


def test_embeddings(gateway: Gateway, client: openai.OpenAI) -> None:
    inputs = ["hello brave new world", "second input", "hello brave new world"]
    result = client.embeddings.create(model=MODEL, input=inputs)
    gateway.expect(
        result._request_id, endpoint="embeddings", status=200, outcome="success",
        tokens=(10, 0, 10),
    )

    assert result.object == "list"
    assert result.model == UPSTREAM_MODEL
    assert [item.index for item in result.data] == [0, 1, 2]
    for item in result.data:
        assert item.object == "embedding"
        assert len(item.embedding) == 8
        assert all(-1.0 <= x <= 1.0 for x in item.embedding)
    # The mock derives each vector from its input: equal inputs, equal vectors.
    assert result.data[0].embedding == result.data[2].embedding
    assert result.data[0].embedding != result.data[1].embedding
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (10, 10)


def test_legacy_completion(gateway: Gateway, client: openai.OpenAI) -> None:
    completion = client.completions.create(model=MODEL, prompt="Say hello", max_tokens=16)
    gateway.expect(
        completion._request_id, endpoint="completions", status=200, outcome="success",
        tokens=MOCK_USAGE,
    )

    assert completion.object == "text_completion"
    assert completion.model == UPSTREAM_MODEL
    assert completion.choices[0].text == MOCK_CONTENT
    assert completion.choices[0].finish_reason == "stop"
    assert usage_tuple(completion.usage) == MOCK_USAGE


def test_legacy_completion_stream(gateway: Gateway, client: openai.OpenAI) -> None:
    stream = client.completions.create(model=MODEL, prompt="Say hello", stream=True)
    chunks = list(stream)
    gateway.expect(
        stream.response.headers.get("x-request-id"), endpoint="completions", status=200,
        outcome="success", streamed=True, tokens=MOCK_USAGE,
    )

    assert "".join(c.choices[0].text for c in chunks) == MOCK_CONTENT
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(len(c.choices) == 1 and c.usage is None for c in chunks)


def test_models_list(client: openai.OpenAI) -> None:
    # Served by poolgate itself (no upstream call, no usage record): the canonical model ids.
    ids = [model.id for model in client.models.list()]
    assert MODEL in ids
    assert UPSTREAM_MODEL not in ids


def test_models_retrieve(client: openai.OpenAI) -> None:
    # One model by name (`GET /v1/models/{model}`); a model nothing serves is a NotFoundError.
    model = client.models.retrieve(MODEL)
    assert (model.id, model.object, model.owned_by) == (MODEL, "model", "poolgate")
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"


# === errors ===


def test_unknown_model_is_not_found(gateway: Gateway, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    error = caught.value
    gateway.expect(
        error.request_id, endpoint="chat.completions", status=404, outcome="error",
        upstream_model=None,
    )

    assert error.status_code == 404
    assert error.code == "model_not_found"
    assert "no-such-model" in error.message


def test_wrong_api_key_is_an_authentication_error(gateway: Gateway) -> None:
    # Refused before any routing: not a client request of any key, so no usage record.
    with openai.OpenAI(
        base_url=gateway.base_url, api_key="pgk-nope-wrongsecret", max_retries=0
    ) as bad:
        with pytest.raises(openai.AuthenticationError) as caught:
            bad.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert caught.value.type == "authentication_error"
    assert caught.value.request_id.startswith("req_")


def test_missing_model_is_a_400_in_openai_shape(gateway: Gateway, client: openai.OpenAI) -> None:
    # The SDK's typed methods require `model`; its generic `post` does not.
    with pytest.raises(openai.BadRequestError) as caught:
        client.post("/chat/completions", body={"messages": MESSAGES}, cast_to=object)
    error = caught.value
    gateway.expect(
        error.request_id, endpoint="chat.completions", status=400, outcome="error",
        upstream_model=None,
    )
    assert (error.status_code, error.type, error.param, error.code) == (
        400, "invalid_request_error", "model", "missing_required_parameter",
    )

    # The same on the wire, exactly OpenAI's error object.
    raw = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers={"Authorization": f"Bearer {gateway.client_key}"},
        json={"messages": MESSAGES},
        timeout=10,
    )
    gateway.expect(
        raw.headers.get("x-request-id"), endpoint="chat.completions", status=400,
        outcome="error", upstream_model=None,
    )
    assert raw.status_code == 400
    assert raw.headers["content-type"].startswith("application/json")
    body = raw.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == "model"
    assert body["error"]["code"] == "missing_required_parameter"
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


def test_chat_without_messages_is_a_400_naming_the_field(
    gateway: Gateway, client: openai.OpenAI
) -> None:
    # OpenAI's answer, given without an upstream call: `param` names the field.
    for body, code in [
        ({"model": MODEL}, "missing_required_parameter"),
        ({"model": MODEL, "messages": "hi"}, "invalid_type"),
    ]:
        with pytest.raises(openai.BadRequestError) as caught:
            client.post("/chat/completions", body=body, cast_to=object)
        error = caught.value
        assert (error.status_code, error.type, error.param, error.code) == (
            400, "invalid_request_error", "messages", code,
        ), body
        gateway.expect(
            error.request_id, endpoint="chat.completions", status=400, outcome="error",
            upstream_model=None,
        )


def test_client_key_rate_limit_is_a_rate_limit_error(gateway: Gateway) -> None:
    limited = gateway.create_key(name="limited", rpm_limit=1)
    with openai.OpenAI(
        base_url=gateway.base_url, api_key=limited["key"], max_retries=0
    ) as client:
        first = client.chat.completions.create(model=MODEL, messages=MESSAGES)
        gateway.expect(
            first._request_id, endpoint="chat.completions", status=200, outcome="success",
            tokens=MOCK_USAGE, client_key_id=limited["id"],
        )
        assert first.choices[0].message.content == MOCK_CONTENT

        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
    error = caught.value
    gateway.expect(
        error.request_id, endpoint="chat.completions", status=429, outcome="error",
        client_key_id=limited["id"], upstream_model=None,
    )
    assert error.status_code == 429
    assert error.code == "rate_limit_exceeded"
    retry_after = int(error.response.headers["retry-after"])
    assert 1 <= retry_after <= 60


def test_a_spent_budget_is_not_retried_by_the_sdk(gateway: Gateway) -> None:
    # A budget of $0: nothing may be spent. The SDK would retry a 429 twice (max_retries=2)
    # unless the answer says `x-should-retry: false`; every request poolgate sees leaves a
    # usage record, so the records of this key count the SDK's attempts.
    key = gateway.create_key(name="no-budget", budget_total_usd=0)
    gateway.unledgered_key_ids.add(key["id"])
    with openai.OpenAI(base_url=gateway.base_url, api_key=key["key"], max_retries=2) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
    error = caught.value
    assert error.status_code == 429
    assert error.code == "budget_exceeded"
    assert error.type == "insufficient_quota"
    assert error.response.headers["x-should-retry"] == "false"
    assert "total budget of $0 is used up" in error.message

    deadline = time.monotonic() + 5  # the writer flushes every 500 ms
    records: list = []
    while time.monotonic() < deadline:
        response = gateway.admin("GET", "/usage", params={"client_key_id": key["id"]})
        records = response.json()["records"]
        if records:
            # The SDK makes its retries before it raises; their records may be one flush later.
            time.sleep(0.6)
            records = gateway.admin(
                "GET", "/usage", params={"client_key_id": key["id"]}
            ).json()["records"]
            break
        time.sleep(0.1)
    assert [(r["request_id"], r["status"]) for r in records] == [(error.request_id, 429)]


# === the response around the body ===


def test_raw_response_has_a_request_id(gateway: Gateway, client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    request_id = raw.headers.get("x-request-id")
    gateway.expect(
        request_id, endpoint="chat.completions", status=200, outcome="success",
        tokens=MOCK_USAGE,
    )
    assert raw.status_code == 200
    completion = raw.parse()
    assert completion._request_id == request_id
    assert completion.choices[0].message.content == MOCK_CONTENT


def test_async_client_stream(gateway: Gateway) -> None:
    async def run() -> tuple[str | None, list]:
        async with openai.AsyncOpenAI(
            base_url=gateway.base_url, api_key=gateway.client_key, max_retries=0
        ) as client:
            stream = await client.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [chunk async for chunk in stream]
            return stream.response.headers.get("x-request-id"), chunks

    request_id, chunks = asyncio.run(run())
    gateway.expect(
        request_id, endpoint="chat.completions", status=200, outcome="success",
        streamed=True, tokens=MOCK_USAGE,
    )
    content = "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)
    assert content == MOCK_CONTENT
    assert usage_tuple(chunks[-1].usage) == MOCK_USAGE


# === regressions of bugs found by this suite ===


def test_models_list_has_a_request_id(client: openai.OpenAI) -> None:
    raw = client.models.with_raw_response.list()
    assert raw.status_code == 200
    assert (raw.headers.get("x-request-id") or "").startswith("req_")


def test_refused_header_still_leaves_a_usage_record(gateway: Gateway) -> None:
    key = gateway.create_key(name="bad-header")
    gateway.unledgered_key_ids.add(key["id"])
    with openai.OpenAI(base_url=gateway.base_url, api_key=key["key"], max_retries=0) as client:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model=MODEL, messages=MESSAGES,
                extra_headers={"x-poolgate-max-wait-ms": "soon"},
            )
    assert caught.value.param == "x-poolgate-max-wait-ms"

    deadline = time.monotonic() + 2  # the writer flushes every 500 ms
    records: list = []
    while not records and time.monotonic() < deadline:
        time.sleep(0.1)
        response = gateway.admin("GET", "/usage", params={"client_key_id": key["id"]})
        records = response.json()["records"]
    assert [(r["request_id"], r["status"]) for r in records] == [(caught.value.request_id, 400)]


# === usage records: one per proxied SDK request ===


@pytest.mark.run_last
def test_usage_has_one_record_per_request(gateway: Gateway) -> None:
    expected = {e.request_id: e for e in gateway.ledger}
    assert len(expected) == len(gateway.ledger), "request ids must be unique"

    # Records reach the store through a batched writer (flushed every 500 ms by default).
    deadline = time.monotonic() + 10
    while True:
        response = gateway.admin("GET", "/usage", params={"limit": 1000})
        assert response.status_code == 200, response.text
        records = response.json()["records"]
        if len(records) >= len(expected) or time.monotonic() > deadline:
            break
        time.sleep(0.1)

    records = [r for r in records if r["client_key_id"] not in gateway.unledgered_key_ids]
    by_id = {r["request_id"]: r for r in records}
    assert len(by_id) == len(records), "duplicate usage records"
    # Exactly the proxied requests: the 401 and `models.list` are not proxied requests.
    assert sorted(by_id) == sorted(expected), (
        f"missing: {sorted(set(expected) - set(by_id))}, "
        f"unexpected: {[by_id[i] for i in set(by_id) - set(expected)]}"
    )

    problems = []
    for request_id, want in expected.items():
        got = by_id[request_id]
        tokens = (got["prompt_tokens"], got["completion_tokens"], got["total_tokens"])
        checks = {
            "endpoint": (got["endpoint"], want.endpoint),
            "status": (got["status"], want.status),
            "outcome": (got["outcome"], want.outcome),
            "client_key_id": (got["client_key_id"], want.client_key_id),
            "streamed": (got["streamed"], want.streamed),
            "upstream_model": (got["upstream_model"], want.upstream_model),
            "tokens": (tokens, want.tokens or (None, None, None)),
        }
        if want.status == 200:
            checks["canonical_model"] = (got["canonical_model"], want.canonical_model)
            checks["attempts"] = (got["attempts"], 1)
        for field, (actual, wanted) in checks.items():
            if actual != wanted:
                problems.append(f"{request_id} ({want.endpoint}, {want.status}): "
                                f"{field} = {actual!r}, expected {wanted!r}")
    assert not problems, "\n".join(problems)
