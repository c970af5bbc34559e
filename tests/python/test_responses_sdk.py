"""The Responses API, sticky routing and model aliases with the official `openai` SDK against a
real poolgate and real `mock-upstream` processes (each started on port 0, its bound port read
from its first line):

- `client.responses.create` (JSON and streaming, and the `responses.stream` helper) on an
  OpenAI-type backend (pass-through) and on an Anthropic backend (translated);
- response affinity with three backends in the pool: a follow-up with `previous_response_id`,
  `retrieve` and `delete` reach the backend that made the response (mock response ids carry the
  mock's port, so the id says who served it), and while that backend cools the follow-up gets 429
  with `Retry-After`;
- sticky routing: 50 conversations over 4 backends stay on their backend while it is ready and
  move when it cools;
- aliases and wildcard mappings, and what `models.list` shows.

These requests use their own client key (left out of the usage ledger of test_openai_sdk.py);
the records they need are checked here.
"""

from __future__ import annotations

import time
from typing import Iterator

import httpx
import openai
import pytest

from conftest import MOCK_CHUNKS, MOCK_CONTENT, Gateway, Process, start_mock_upstream, stop

RESP_MODEL = "resp-gpt"
CLAUDE_MODEL = "resp-claude"
STICKY_MODEL = "sticky-agent"
CONVERSATIONS = 50


def start_mocks(workdir, prefix: str, count: int) -> list[Process]:
    mocks: list[Process] = []
    try:
        for i in range(count):
            mocks.append(start_mock_upstream(
                workdir / f"{prefix}-{i}.log", "--control", "--stream-chunks", str(MOCK_CHUNKS)
            ))
    except BaseException:
        for mock in mocks:
            stop(mock.proc)
        raise
    return mocks


def add_backend(gateway: Gateway, **body) -> dict:
    response = gateway.admin("POST", "/backends", json=body)
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(scope="module")
def fleet(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, str]]:
    """Three Responses-capable mocks serving RESP_MODEL: {port: backend id}."""
    mocks = start_mocks(tmp_path_factory.mktemp("responses-fleet"), "resp", 3)
    try:
        backends = {
            mock.port: add_backend(
                gateway, name=f"resp-{i}", api_base_url=f"http://127.0.0.1:{mock.port}/v1",
                api_key=f"sk-resp-{i}-key-0001", model_mappings={RESP_MODEL: "mock-model"},
            )["id"]
            for i, mock in enumerate(mocks)
        }
        # An Anthropic backend (the session's mock speaks /v1/messages too).
        add_backend(
            gateway, name="resp-claude", api="anthropic",
            api_base_url=f"http://127.0.0.1:{gateway.upstream_port}",
            api_key="sk-ant-resp-key-0001", model_mappings={CLAUDE_MODEL: "claude-up"},
        )
        yield backends
    finally:
        for mock in mocks:
            stop(mock.proc)


@pytest.fixture(scope="module")
def key(gateway: Gateway) -> dict:
    created = gateway.create_key(name="responses-sdk")
    gateway.unledgered_key_ids.add(created["id"])
    return created


@pytest.fixture(scope="module")
def client(gateway: Gateway, key: dict) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key=key["key"], max_retries=0) as c:
        yield c


def port_of(response_id: str) -> int:
    """The port of the mock that made a response (`resp_mock_{port}_{n}`)."""
    assert response_id.startswith("resp_mock_"), response_id
    return int(response_id.split("_")[2])


def usage_record(gateway: Gateway, request_id: str) -> dict:
    deadline = time.monotonic() + 10
    while True:
        records = gateway.admin("GET", "/usage", params={"limit": 1000}).json()["records"]
        found = [r for r in records if r["request_id"] == request_id]
        if found or time.monotonic() > deadline:
            assert found, f"no usage record for {request_id}"
            return found[0]
        time.sleep(0.05)


# === create, JSON and streaming ===


def test_create_on_an_openai_backend_passes_through(
    gateway: Gateway, client: openai.OpenAI, fleet: dict[int, str]
) -> None:
    response = client.responses.create(
        model=RESP_MODEL, instructions="Be brief.", input="Hello", metadata={"app": "sdk"}
    )
    assert port_of(response.id) in fleet
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == MOCK_CONTENT
    assert response.model == "mock-model"
    assert response.usage.input_tokens == 10
    assert response.usage.output_tokens == MOCK_CHUNKS
    record = usage_record(gateway, response._request_id)
    assert (record["endpoint"], record["status"], record["outcome"]) == ("responses", 200, "success")
    assert (record["prompt_tokens"], record["completion_tokens"]) == (10, MOCK_CHUNKS)
    assert record["backend_id"] == fleet[port_of(response.id)]


def test_stream_on_an_openai_backend(client: openai.OpenAI, fleet: dict[int, str]) -> None:
    with client.responses.stream(model=RESP_MODEL, input="Hello") as stream:
        types = [event.type for event in stream]
        final = stream.get_final_response()
    assert types[0] == "response.created"
    assert types[-1] == "response.completed"
    assert types.count("response.output_text.delta") == MOCK_CHUNKS
    assert final.output_text == MOCK_CONTENT
    assert port_of(final.id) in fleet

    events = list(client.responses.create(model=RESP_MODEL, input="Hello", stream=True))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].response.usage.input_tokens == 10


def test_create_on_an_anthropic_backend_is_translated(
    gateway: Gateway, client: openai.OpenAI, fleet: dict[int, str]
) -> None:
    response = client.responses.create(
        model=CLAUDE_MODEL, instructions="Be brief.", input="Hello", max_output_tokens=64
    )
    assert response.id.startswith("resp_") and not response.id.startswith("resp_mock_")
    assert response.status == "completed"
    assert response.output_text == MOCK_CONTENT
    assert response.store is False
    assert response.usage.input_tokens == 10
    record = usage_record(gateway, response._request_id)
    assert (record["endpoint"], record["upstream_model"]) == ("responses", "claude-up")

    with client.responses.stream(model=CLAUDE_MODEL, input="Hello") as stream:
        types = [event.type for event in stream]
        final = stream.get_final_response()
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert final.output_text == MOCK_CONTENT
    assert final.usage.output_tokens == MOCK_CHUNKS


def test_stateful_features_on_an_anthropic_backend_are_a_clear_400(
    client: openai.OpenAI, fleet: dict[int, str]
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=CLAUDE_MODEL, input="Hi", previous_response_id="resp_x")
    error = caught.value.body
    assert error["code"] == "stateful_feature_unsupported"
    assert error["param"] == "previous_response_id"
    assert "Responses API" in error["message"]


# === response affinity ===


def test_follow_ups_land_on_the_backend_that_made_the_response(
    client: openai.OpenAI, fleet: dict[int, str]
) -> None:
    firsts = [client.responses.create(model=RESP_MODEL, input=f"first {i}") for i in range(6)]
    assert {port_of(r.id) for r in firsts} == set(fleet), "round-robin used all three"
    for first in firsts:
        follow_up = client.responses.create(
            model=RESP_MODEL, input="and then?", previous_response_id=first.id
        )
        assert port_of(follow_up.id) == port_of(first.id)
        with client.responses.stream(
            model=RESP_MODEL, input="more", previous_response_id=follow_up.id
        ) as stream:
            streamed = stream.get_final_response()
        assert port_of(streamed.id) == port_of(first.id)
        assert client.responses.retrieve(first.id).id == first.id

    gone = firsts[0]
    client.responses.delete(gone.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(gone.id)


def test_a_follow_up_gets_429_with_retry_after_while_its_backend_cools(
    gateway: Gateway, client: openai.OpenAI, fleet: dict[int, str]
) -> None:
    first = client.responses.create(model=RESP_MODEL, input="cool me")
    owner = port_of(first.id)
    scripted = httpx.post(
        f"http://127.0.0.1:{owner}/__mock/replies", json={"status": 429, "retry_after": 30}
    )
    assert scripted.status_code == 204
    for _ in range(2):
        with pytest.raises(openai.RateLimitError) as caught:
            client.responses.create(model=RESP_MODEL, input="next", previous_response_id=first.id)
        retry_after = int(caught.value.response.headers["retry-after"])
        # The upstream's 30 s, plus up to the default 20 % jitter.
        assert 1 <= retry_after <= 36
        assert caught.value.body["type"] == "rate_limit_error"
    # The second never reached an upstream: nothing was ready to take it.
    record = usage_record(gateway, caught.value.response.headers["x-request-id"])
    assert (record["status"], record["attempts"]) == (429, 0)
    # Reads wait for the owner too.
    with pytest.raises(openai.RateLimitError):
        client.responses.retrieve(first.id)

    reset = gateway.admin("POST", f"/backends/{fleet[owner]}/reset-cooldown")
    assert reset.status_code == 200, reset.text
    follow_up = client.responses.create(
        model=RESP_MODEL, input="next", previous_response_id=first.id
    )
    assert port_of(follow_up.id) == owner


# === sticky routing ===


@pytest.fixture(scope="module")
def sticky_fleet(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, str]]:
    mocks = start_mocks(tmp_path_factory.mktemp("sticky-fleet"), "sticky", 4)
    try:
        backends = {
            mock.port: add_backend(
                gateway, name=f"sticky-{i}", api_base_url=f"http://127.0.0.1:{mock.port}/v1",
                api_key=f"sk-sticky-{i}-key-0001", model_mappings={STICKY_MODEL: "mock-model"},
            )["id"]
            for i, mock in enumerate(mocks)
        }
        setting = gateway.admin(
            "PUT", "/settings/sticky", json={"enabled": True, "models": [STICKY_MODEL]}
        )
        assert setting.status_code == 200, setting.text
        yield backends
    finally:
        gateway.admin("PUT", "/settings/sticky", json={})
        for mock in mocks:
            stop(mock.proc)


def turn(client: openai.OpenAI, n: int) -> tuple[int, int]:
    response = client.responses.create(
        model=STICKY_MODEL, prompt_cache_key=f"conversation-{n}",
        instructions="You are a coding agent.", input=f"task {n}",
    )
    return port_of(response.id), response.usage.input_tokens_details.cached_tokens


def test_sticky_conversations_stay_put_while_ready_and_move_when_their_backend_cools(
    gateway: Gateway, client: openai.OpenAI, sticky_fleet: dict[int, str]
) -> None:
    home: dict[int, int] = {}
    for round_ in range(2):
        for n in range(CONVERSATIONS):
            port, cached = turn(client, n)
            assert home.setdefault(n, port) == port, f"conversation {n} moved in round {round_}"
            assert (cached > 0) == (round_ > 0), f"conversation {n}, round {round_}: {cached}"
    counts = {port: list(home.values()).count(port) for port in sticky_fleet}
    assert all(count >= 10 for count in counts.values()), counts

    cooled = next(iter(sticky_fleet))
    httpx.post(f"http://127.0.0.1:{cooled}/__mock/replies", json={"status": 429, "retry_after": 60})
    moved: dict[int, int] = {}
    for round_ in range(2):
        for n in range(CONVERSATIONS):
            port, _ = turn(client, n)
            if home[n] == cooled:
                assert port != cooled, f"conversation {n} stayed on the cooling backend"
                assert moved.setdefault(n, port) == port, f"moved conversation {n} moved again"
            else:
                assert port == home[n], f"conversation {n} left a ready backend"
    assert len(moved) == counts[cooled]

    # The dashboard's numbers: each backend's cached-token share, once the batched usage writer
    # (flushed every 500 ms) stored all 4 × CONVERSATIONS turns.
    deadline = time.monotonic() + 10
    while True:
        stats = gateway.admin("GET", "/stats").json()
        stored = sum(
            stats["by_backend"].get(backend_id, {}).get("requests", 0)
            for backend_id in sticky_fleet.values()
        )
        if stored >= 4 * CONVERSATIONS or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    for backend_id in sticky_fleet.values():
        assert stats["by_backend"][backend_id]["cached_share"] > 0.2, stats["by_backend"][backend_id]
    gateway.admin("POST", f"/backends/{sticky_fleet[cooled]}/reset-cooldown")


# === aliases and wildcards ===


def test_aliases_and_wildcards_route_and_list(
    gateway: Gateway, client: openai.OpenAI, fleet: dict[int, str]
) -> None:
    alias = gateway.admin("PUT", "/aliases/resp-latest", json={"target": RESP_MODEL})
    assert alias.status_code == 200, alias.text
    add_backend(
        gateway, name="wild", api_base_url=f"http://127.0.0.1:{gateway.upstream_port}/v1",
        api_key="sk-wild-key-0001", model_mappings={"wild-*": "mock-*", "wild-exact": "pinned"},
    )
    by_alias = client.responses.create(model="resp-latest", input="Hello")
    assert port_of(by_alias.id) in fleet
    record = usage_record(gateway, by_alias._request_id)
    assert record["canonical_model"] == RESP_MODEL

    # The wildcard keeps what `*` matched; the exact mapping of the same backend wins for its name.
    completion = client.chat.completions.create(
        model="wild-x", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.model == "mock-x"
    pinned = client.chat.completions.create(
        model="wild-exact", messages=[{"role": "user", "content": "hi"}]
    )
    assert pinned.model == "pinned"

    listed = {model.id: model for model in client.models.list()}
    assert "resp-latest" in listed and RESP_MODEL in listed and "wild-exact" in listed
    assert getattr(listed["resp-latest"], "alias_of", None) == RESP_MODEL
    assert not any("*" in model_id for model_id in listed)


# === Azure OpenAI ===


@pytest.fixture(scope="module")
def azure_mock(gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """An Azure-shaped mock (mock-upstream serves Azure's URLs below its root; it refuses a
    request without `api-key` with 401, and a deployment URL without `api-version` with 404)."""
    [mock] = start_mocks(tmp_path_factory.mktemp("azure"), "azure", 1)
    try:
        backend = add_backend(
            gateway, name="azure-sdk", api="azure", api_base_url=f"http://127.0.0.1:{mock.port}",
            api_key="azure-sdk-key-0001", api_version="2025-04-01-preview",
            model_mappings={"azure-gpt": "gpt4o-prod"},
        )
        assert backend["responses"] is True
        yield mock.port, backend["id"]
    finally:
        stop(mock.proc)


def test_azure_backends_serve_chat_and_responses_at_azure_urls(
    gateway: Gateway, client: openai.OpenAI, azure_mock: tuple[int, str]
) -> None:
    port, backend_id = azure_mock
    # The mock answers only Azure's URL with its api-version and key; the body's model is the
    # deployment.
    completion = client.chat.completions.create(
        model="azure-gpt", messages=[{"role": "user", "content": "hi"}]
    )
    assert completion.model == "gpt4o-prod"
    assert completion.choices[0].message.content == MOCK_CONTENT
    response = client.responses.create(model="azure-gpt", input="Hello")
    assert port_of(response.id) == port
    assert client.responses.retrieve(response.id).id == response.id

    # Azure's 429 (its error shape, `retry-after`) cools the backend like OpenAI's.
    httpx.post(f"http://127.0.0.1:{port}/__mock/replies", json={"status": 429, "retry_after": 20})
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="azure-gpt", messages=[{"role": "user", "content": "hi"}])
    assert 1 <= int(caught.value.response.headers["retry-after"]) <= 24
    backend = gateway.admin("GET", f"/backends/{backend_id}").json()
    assert backend["status"] == "cooling"
    assert gateway.admin("POST", f"/backends/{backend_id}/reset-cooldown").status_code == 200
