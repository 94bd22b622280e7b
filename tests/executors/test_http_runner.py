"""``kind: http`` end to end: a real control plane, a real HTTP server on
loopback (tests/support/sp_http.py), both executors where it matters."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import grpc
import pytest
from sp_http import HttpServer, Reply, closed_port

from executors.http_runner import check_request, retry_after_ms
from statepipe.client import Client, Run, StatepipeError


@pytest.fixture
def web() -> Iterator[HttpServer]:
    with HttpServer() as server:
        yield server


def http(node_id: str, **params: Any) -> dict[str, Any]:
    """An http node; `retry=` and `timeout_ms=` go to the node, the rest to params."""
    node: dict[str, Any] = {"id": node_id, "kind": "http"}
    for key in ("retry", "after"):
        if key in params:
            node[key] = params.pop(key)
    node["params"] = params
    return node


def run_nodes(client: Client, *nodes: dict[str, Any], run_input: Any = None) -> Run:
    run_id = client.start_run({"name": "http-test", "nodes": list(nodes)}, run_input)
    return client.wait(run_id, timeout=60)


def api_calls(client: Client, run: Run) -> list[dict[str, Any]]:
    return [e.to_dict() for e in client.watch(run.run_id) if e.kind == "api_call"]


# ------------------------------------------------------------------ success


@pytest.mark.both_executors
def test_a_get_with_a_query_returns_the_parsed_json(client: Client, web: HttpServer) -> None:
    web.route("/items", lambda r: Reply(json={"items": [1, 2], "q": r.query["q"][0]}))
    run = run_nodes(client, http("get", url=web.url("/items"), query={"q": "red shoes", "n": 5}))
    assert run.status == "SUCCEEDED", run.node("get").error
    out = run.node("get").output
    assert out["status"] == 200
    assert out["body"] == {"items": [1, 2], "q": "red shoes"}
    assert out["body_base64"] is False
    assert out["truncated"] is False
    assert out["headers"]["content-type"] == "application/json"
    assert out["url"].startswith(web.url("/items?"))
    assert sorted(out["url"].split("?")[1].split("&")) == ["n=5", "q=red+shoes"]
    assert isinstance(out["elapsed_ms"], int)
    (seen,) = web.received("/items")
    assert seen.method == "GET"
    assert seen.query == {"q": ["red shoes"], "n": ["5"]}  # 5.0 through protobuf, sent as 5


@pytest.mark.both_executors
def test_a_post_sends_json_and_a_text_reply_stays_text(client: Client, web: HttpServer) -> None:
    web.route("/orders", Reply(201, body="created order 7"))
    payload = {"sku": "A-1", "qty": 2, "tags": ["x"], "note": None}
    run = run_nodes(
        client,
        http("post", method="post", url=web.url("/orders"), json="{{ input.order }}"),
        run_input={"order": payload},
    )
    assert run.status == "SUCCEEDED", run.node("post").error
    out = run.node("post").output
    assert (out["status"], out["body"]) == (201, "created order 7")
    (seen,) = web.received("/orders")
    assert seen.method == "POST"
    assert seen.headers["content-type"] == "application/json"
    assert seen.json() == payload


def test_a_text_body_and_headers_are_sent_as_given(client: Client, web: HttpServer) -> None:
    web.route("/echo", lambda r: Reply(body=r.body))
    run = run_nodes(
        client,
        http(
            "put",
            method="PUT",
            url=web.url("/echo"),
            body="line one\nline two",
            headers={"Content-Type": "text/csv", "X-Count": 3},
        ),
    )
    assert run.status == "SUCCEEDED", run.node("put").error
    assert run.node("put").output["body"] == "line one\nline two"
    (seen,) = web.received("/echo")
    assert seen.headers["content-type"] == "text/csv"
    assert seen.headers["x-count"] == "3"


def test_a_secret_header_from_the_environment_reaches_the_server_only(
    client: Client, web: HttpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "Bearer sk-test-8f14e45fceea167a"
    monkeypatch.setenv("SP_HTTP_TEST_TOKEN", secret)
    web.route("/private", Reply(json={"ok": True}))
    run = run_nodes(
        client,
        http(
            "call",
            url=web.url("/private"),
            headers={"X-Visible": "plain"},
            headers_from_env={"Authorization": "SP_HTTP_TEST_TOKEN"},
        ),
    )
    assert run.status == "SUCCEEDED", run.node("call").error
    (seen,) = web.received("/private")
    assert seen.headers["authorization"] == secret
    node = run.node("call")
    assert node.input["headers_from_env"] == {"Authorization": "SP_HTTP_TEST_TOKEN"}
    events = [e.to_dict() for e in client.watch(run.run_id)]
    assert any(e["kind"] == "api_call" for e in events)
    recorded = json.dumps([events, node.to_dict(), client.get_run(run.run_id).to_dict()])
    assert "sk-test-8f14e45fceea167a" not in recorded
    assert "plain" not in json.dumps([e for e in events if e["kind"] == "api_call"])


def test_a_missing_environment_variable_fails_at_once(client: Client, web: HttpServer) -> None:
    run = run_nodes(
        client,
        http(
            "call",
            url=web.url("/private"),
            headers_from_env={"Authorization": "SP_HTTP_TEST_UNSET_VARIABLE"},
            retry={"max_attempts": 3, "backoff_ms": 10},
        ),
    )
    node = run.node("call")
    assert (run.status, node.attempt) == ("FAILED", 1)
    assert "'SP_HTTP_TEST_UNSET_VARIABLE' is not set" in node.error
    assert web.requests == []


@pytest.mark.both_executors
def test_expect_accepts_the_listed_statuses_only(client: Client, web: HttpServer) -> None:
    web.route("/gone", Reply(404, json={"error": "gone"}))
    web.route("/ok", Reply(200, body="fine"))
    run = run_nodes(
        client,
        http("missing", url=web.url("/gone"), expect=[404, 410]),
        http("plain", url=web.url("/ok"), expect=[201], retry={"max_attempts": 3}),
    )
    assert run.node("missing").status == "SUCCEEDED", run.node("missing").error
    assert run.node("missing").output["status"] == 404
    assert run.node("missing").output["body"] == {"error": "gone"}
    plain = run.node("plain")
    assert (plain.status, plain.attempt) == ("FAILED", 1)
    assert "HTTP 200 OK: fine" in plain.error


def test_one_connection_serves_the_nodes_of_a_run_in_turn(client: Client, web: HttpServer) -> None:
    web.route("/a", Reply(body="a"))
    run = run_nodes(
        client,
        http("first", url=web.url("/a")),
        http("second", url=web.url("/a"), after=["first"]),
        http("third", url=web.url("/a"), after=["second"]),
    )
    assert run.status == "SUCCEEDED"
    ports = {r.client_port for r in web.received("/a")}
    assert len(web.received("/a")) == 3 and len(ports) == 1


def test_redirects_are_followed_when_asked(client: Client, web: HttpServer) -> None:
    web.route("/old", Reply(302, headers={"Location": "/new"}))
    web.route("/new", Reply(json={"here": True}))
    run = run_nodes(
        client,
        http("follow", url=web.url("/old"), follow_redirects=True),
        http("stay", url=web.url("/old")),
    )
    follow = run.node("follow").output
    assert (follow["status"], follow["url"], follow["body"]) == (
        200,
        web.url("/new"),
        {"here": True},
    )
    stay = run.node("stay")
    assert stay.status == "FAILED"
    assert "HTTP 302 Found to /new (set follow_redirects: true to follow)" in stay.error


# ------------------------------------------------------------------ failures and retries


@pytest.mark.both_executors
def test_a_500_is_retried_by_the_policy_until_it_succeeds(client: Client, web: HttpServer) -> None:
    web.route(
        "/flaky",
        Reply(500, body="database down"),
        Reply(503, body="still down"),
        Reply(json={"done": True}),
    )
    run = run_nodes(
        client, http("call", url=web.url("/flaky"), retry={"max_attempts": 3, "backoff_ms": 10})
    )
    node = run.node("call")
    assert (run.status, node.attempt) == ("SUCCEEDED", 3), node.error
    assert node.output["body"] == {"done": True}
    assert len(web.received("/flaky")) == 3
    statuses = [e["data"]["status"] for e in api_calls(client, run)]
    assert statuses == [500, 503, 200]


@pytest.mark.both_executors
def test_a_429_waits_for_its_retry_after(client: Client, web: HttpServer) -> None:
    web.route(
        "/limited",
        Reply(429, body="slow down", headers={"Retry-After": "1"}),
        Reply(json={"ok": 1}),
    )
    run = run_nodes(
        client,
        http("call", url=web.url("/limited"), retry={"max_attempts": 2, "backoff_ms": 10}),
    )
    assert run.status == "SUCCEEDED", run.node("call").error
    first, second = web.received("/limited")
    assert second.at - first.at >= 0.95  # Retry-After: 1 over the policy's 10 ms


@pytest.mark.both_executors
def test_a_404_fails_at_once_with_its_status_and_body(client: Client, web: HttpServer) -> None:
    web.route("/item/9", Reply(404, json={"error": "no such item", "id": 9}))
    run = run_nodes(
        client,
        http("call", url=web.url("/item/9"), retry={"max_attempts": 3, "backoff_ms": 10}),
    )
    node = run.node("call")
    assert (run.status, node.attempt) == ("FAILED", 1)
    assert node.error == (
        f'GET {web.url("/item/9")}: HTTP 404 Not Found: {{"error": "no such item", "id": 9}}'
    )
    assert len(web.received("/item/9")) == 1


@pytest.mark.both_executors
def test_a_refused_connection_is_retried_with_a_clear_message(client: Client) -> None:
    url = f"http://127.0.0.1:{closed_port()}/x"
    run = run_nodes(client, http("call", url=url, retry={"max_attempts": 2, "backoff_ms": 10}))
    node = run.node("call")
    assert (run.status, node.attempt) == ("FAILED", 2)
    assert node.error.startswith(f"GET {url}: cannot connect: ")
    assert "\n" not in node.error
    (event, _) = api_calls(client, run)
    assert event["data"]["status"] is None
    assert event["data"]["error"] == node.error


def test_a_slow_server_times_out_and_is_retried(client: Client, web: HttpServer) -> None:
    web.route("/slow", Reply(body="late", delay_s=2))
    started = time.monotonic()
    run = run_nodes(
        client,
        http(
            "call",
            url=web.url("/slow"),
            timeout_ms=200,
            retry={"max_attempts": 2, "backoff_ms": 10},
        ),
    )
    node = run.node("call")
    assert (run.status, node.attempt) == ("FAILED", 2)
    assert node.error == f"GET {web.url('/slow')}: timed out after 200 ms"
    assert time.monotonic() - started < 1.9


def test_a_template_that_renders_to_a_bad_value_fails_at_once(
    client: Client, web: HttpServer
) -> None:
    run = run_nodes(
        client,
        http(
            "call",
            method="{{ input.method }}",
            url=web.url("/x"),
            retry={"max_attempts": 3, "backoff_ms": 10},
        ),
        run_input={"method": "FETCH"},
    )
    node = run.node("call")
    assert (run.status, node.attempt) == ("FAILED", 1)
    assert "params.method 'FETCH' is not an HTTP method" in node.error


# ------------------------------------------------------------------ body and events


@pytest.mark.both_executors
def test_the_body_is_cut_at_max_body_bytes(client: Client, web: HttpServer) -> None:
    web.route("/big", Reply(body="x" * 5000))
    web.route("/bigjson", Reply(json={"data": "y" * 5000}))
    web.route("/bytes", Reply(body=bytes(range(256)), headers={"Content-Type": "image/png"}))
    run = run_nodes(
        client,
        http("text", url=web.url("/big"), max_body_bytes=1000),
        http("json", url=web.url("/bigjson"), max_body_bytes=100),
        http("bytes", url=web.url("/bytes")),
    )
    assert run.status == "SUCCEEDED"
    text = run.node("text").output
    assert (text["body"], text["truncated"]) == ("x" * 1000, True)
    cut = run.node("json").output
    assert cut["truncated"] is True and cut["body"] == '{"data": "' + "y" * 90
    raw = run.node("bytes").output
    assert (raw["body_base64"], raw["truncated"]) == (True, False)
    assert base64.b64decode(raw["body"]) == bytes(range(256))


@pytest.mark.both_executors
def test_each_request_is_an_api_call_event(client: Client, web: HttpServer) -> None:
    web.route("/thing", Reply(json={"name": "thing"}))
    web.route("/nope", Reply(400, body="bad request: sku"))
    run = run_nodes(
        client,
        http(
            "post",
            method="POST",
            url=web.url("/thing"),
            json={"a": 1},
            headers={"X-Api-Key": "visible-only-to-the-server"},
        ),
        http("bad", url=web.url("/nope"), after=["post"]),
    )
    ok, bad = api_calls(client, run)
    assert ok["node_id"] == "post"
    assert ok["message"] == f"POST {web.url('/thing')}"
    data = ok["data"]
    assert data["method"] == "POST" and data["url"] == web.url("/thing")
    assert data["status"] == 200 and data["error"] is None
    assert data["request_bytes"] == len(b'{"a":1}')
    assert data["response_bytes"] == len(b'{"name": "thing"}')
    assert isinstance(data["duration_ms"], int)
    assert "visible-only-to-the-server" not in json.dumps(ok)
    assert bad["data"]["status"] == 400
    assert bad["data"]["error"] == f"GET {web.url('/nope')}: HTTP 400 Bad Request: bad request: sku"


# ------------------------------------------------------------------ bad specs


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "node 'call': params.url is required"),
        ({"url": "ftp://example.com/f"}, "params.url 'ftp://example.com/f' must be an http://"),
        ({"url": "http://x", "method": "FETCH"}, "params.method 'FETCH' is not an HTTP method"),
        ({"url": "http://x", "json": {}, "body": "b"}, "params.json and params.body are exclusive"),
        ({"url": "http://x", "expect": [200, 999]}, "params.expect: 999 is not an HTTP status"),
        ({"url": "http://x", "timeout_ms": -1}, "params.timeout_ms must be a positive"),
        ({"url": "http://x", "headers": ["a"]}, "params.headers must be an object"),
        ({"url": "http://x", "headers_from_env": {"A": 1}}, "params.headers_from_env.A must be"),
        ({"url": "http://x", "header": {}}, "params.header is not a request field"),
    ],
)
def test_bad_params_are_refused_at_registration(
    client: Client, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(StatepipeError) as info:
        client.start_run(
            {"name": "bad-http", "nodes": [{"id": "call", "kind": "http", "params": params}]}
        )
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "node 'call': " in info.value.message
    assert message in info.value.message


def test_templates_pass_the_registration_check() -> None:
    check_request({"url": "{{ input.url }}", "method": "{{ input.m }}", "expect": "{{ input.e }}"})
    with pytest.raises(ValueError, match=r"^agent\.url is required$"):
        check_request({"method": "GET"}, where="agent")


def test_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_ms("2") == 2000
    assert retry_after_ms(" 0.5 ") == 500
    assert retry_after_ms(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30_000
    assert retry_after_ms(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0
    assert retry_after_ms("soon") == 0
    assert retry_after_ms(None) == 0
