"""The official `anthropic` Python SDK against a real poolgate: `Anthropic(base_url=<poolgate>,
api_key=<poolgate client key>)`, on an Anthropic backend (pass-through) and on an OpenAI-compatible
backend (translated), JSON and streaming, with errors in Anthropic's shape.
"""

from __future__ import annotations

from typing import Iterator

import anthropic
import pytest

from conftest import MOCK_CONTENT, MOCK_USAGE, MODEL, UPSTREAM_MODEL, Gateway

CLAUDE = "claude-test"
CLAUDE_UPSTREAM = "claude-up"
MESSAGES = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def claude_backend(gateway: Gateway) -> None:
    """An Anthropic backend served by the same mock upstream (it speaks `/v1/messages` too)."""
    response = gateway.admin("POST", "/backends", json={
        "name": "mock-anthropic",
        "api": "anthropic",
        "api_base_url": f"http://127.0.0.1:{gateway.upstream_port}",
        "api_key": "sk-ant-mock-upstream-key",
        "model_mappings": {CLAUDE: {"upstream_model": CLAUDE_UPSTREAM}},
    })
    assert response.status_code == 201, response.text


@pytest.fixture(scope="module")
def client(gateway: Gateway, claude_backend: None) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=gateway.root_url, api_key=gateway.client_key, max_retries=0
    ) as c:
        yield c


def usage_tuple(usage) -> tuple[int, int, int]:
    return (usage.input_tokens, usage.output_tokens, usage.input_tokens + usage.output_tokens)


@pytest.mark.parametrize(
    "model, upstream_model",
    [(CLAUDE, CLAUDE_UPSTREAM), (MODEL, UPSTREAM_MODEL)],
    ids=["anthropic-backend", "openai-backend"],
)
def test_message(gateway: Gateway, client: anthropic.Anthropic, model: str, upstream_model: str) -> None:
    message = client.messages.create(model=model, max_tokens=64, messages=MESSAGES)
    gateway.expect(
        message._request_id, endpoint="messages", status=200, outcome="success",
        tokens=MOCK_USAGE, upstream_model=upstream_model, canonical_model=model,
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.content[0].type == "text"
    assert message.content[0].text == MOCK_CONTENT
    assert message.stop_reason == "end_turn"
    assert usage_tuple(message.usage) == MOCK_USAGE


@pytest.mark.parametrize(
    "model, upstream_model",
    [(CLAUDE, CLAUDE_UPSTREAM), (MODEL, UPSTREAM_MODEL)],
    ids=["anthropic-backend", "openai-backend"],
)
def test_stream(gateway: Gateway, client: anthropic.Anthropic, model: str, upstream_model: str) -> None:
    with client.messages.create(
        model=model, max_tokens=64, messages=MESSAGES, stream=True
    ) as stream:
        events = list(stream)
        request_id = stream.response.headers.get("request-id")
    gateway.expect(
        request_id, endpoint="messages", status=200, outcome="success", streamed=True,
        tokens=MOCK_USAGE, upstream_model=upstream_model, canonical_model=model,
    )
    kinds = [event.type for event in events]
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_stop" in kinds
    text = "".join(
        event.delta.text for event in events
        if event.type == "content_block_delta" and event.delta.type == "text_delta"
    )
    assert text == MOCK_CONTENT
    delta = next(event for event in events if event.type == "message_delta")
    assert delta.delta.stop_reason == "end_turn"
    assert delta.usage.output_tokens == MOCK_USAGE[1]


def test_stream_helper_collects_the_final_message(gateway: Gateway, claude_backend: None) -> None:
    key = gateway.create_key(name="anthropic-helper")
    gateway.unledgered_key_ids.add(key["id"])
    with anthropic.Anthropic(base_url=gateway.root_url, api_key=key["key"], max_retries=0) as c:
        for model in (CLAUDE, MODEL):
            with c.messages.stream(model=model, max_tokens=64, messages=MESSAGES) as stream:
                text = "".join(stream.text_stream)
                final = stream.get_final_message()
            assert text == MOCK_CONTENT
            assert final.content[0].text == MOCK_CONTENT
            assert final.usage.output_tokens == MOCK_USAGE[1]


def test_errors_come_back_as_anthropic_errors(gateway: Gateway, client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="no-such-model", max_tokens=8, messages=MESSAGES)
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "not_found_error"
    gateway.expect(
        caught.value.response.headers.get("request-id"), endpoint="messages", status=404,
        outcome="error", upstream_model=None,
    )

    with anthropic.Anthropic(base_url=gateway.root_url, api_key="pgk-wrong-key", max_retries=0) as bad:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            bad.messages.create(model=CLAUDE, max_tokens=8, messages=MESSAGES)
    assert caught.value.body["error"]["type"] == "authentication_error"


def test_models_list_and_retrieve_in_anthropics_shape(client: anthropic.Anthropic) -> None:
    # The SDK sends `anthropic-version`: the page and the model come in Anthropic's shape.
    models = list(client.models.list())
    ids = [m.id for m in models]
    assert CLAUDE in ids and MODEL in ids
    claude = next(m for m in models if m.id == CLAUDE)
    assert (claude.type, claude.display_name) == ("model", CLAUDE)
    assert claude.created_at.year == 1970
    one = client.models.retrieve(CLAUDE)
    assert (one.id, one.type, one.display_name) == (CLAUDE, "model", CLAUDE)
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.body["error"]["type"] == "not_found_error"


def test_a_message_without_max_tokens_is_a_400_naming_it(
    gateway: Gateway, client: anthropic.Anthropic
) -> None:
    # The SDK's typed method requires `max_tokens`; its generic `post` does not.
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.post("/v1/messages", body={"model": CLAUDE, "messages": MESSAGES}, cast_to=object)
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in caught.value.body["error"]["message"]
    gateway.expect(
        caught.value.response.headers.get("request-id"), endpoint="messages", status=400,
        outcome="error", upstream_model=None,
    )


def test_count_tokens_passes_through_to_an_anthropic_backend(
    gateway: Gateway, client: anthropic.Anthropic
) -> None:
    counted = client.messages.count_tokens(model=CLAUDE, messages=MESSAGES)
    gateway.expect(
        counted._request_id, endpoint="messages.count_tokens", status=200, outcome="success",
        upstream_model=CLAUDE_UPSTREAM, canonical_model=CLAUDE,
    )
    assert counted.input_tokens == 10


def test_count_tokens_without_an_anthropic_backend_is_a_clear_501(
    gateway: Gateway, client: anthropic.Anthropic
) -> None:
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.count_tokens(model=MODEL, messages=MESSAGES)
    gateway.expect(
        caught.value.response.headers.get("request-id"), endpoint="messages.count_tokens",
        status=501, outcome="error", upstream_model=None, canonical_model=MODEL,
    )
    assert caught.value.status_code == 501
    assert "no Anthropic backend serves the model" in caught.value.body["error"]["message"]
