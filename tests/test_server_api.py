"""The REST + SSE API, end to end: a real Jupyter server in a child process, real HTTP.

The server runs the cm_notebook extension under a non-root base URL with a token; the
model is the scripted provider, scripted per context through its JSON options.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jupyter_server_proc import JupyterServer
from server_client import create_context, read_events, wait_for


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    with JupyterServer(tmp_path_factory.mktemp("jupyter")) as running:
        yield running
    # Whatever the tests threw at it, the server never crashed a request.
    assert "Traceback" not in running.log(), running.log()


@pytest.fixture
def client(server: JupyterServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as http:
        yield http


def _assert_error(response: httpx.Response, *statuses: int) -> dict[str, object]:
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, object] = response.json()
    assert body["message"]
    assert "Traceback" not in response.text
    return body


# -- authentication --------------------------------------------------------------------


@pytest.mark.parametrize("headers", [{}, {"Authorization": "token wrong"}])
def test_without_the_token_nothing_is_served(
    server: JupyterServer, headers: dict[str, str]
) -> None:
    with httpx.Client(timeout=30) as anonymous:
        for method, path in [
            ("GET", "/contexts"),
            ("POST", "/contexts"),
            ("GET", "/openapi.json"),
            ("GET", "/contexts/c1/events"),
            ("GET", "/no/such/path"),
        ]:
            response = anonymous.request(method, server.api(path), headers=headers, json={})
            _assert_error(response, 401, 403)
    assert list((server.data_dir / "contexts").glob("*")) == [] or all(
        "title" in json.loads((p / "metadata.json").read_text())
        for p in (server.data_dir / "contexts").iterdir()
    )


def test_a_logged_in_browser_needs_the_xsrf_token_to_change_anything(
    server: JupyterServer,
) -> None:
    # Log in like a browser: the token in a page URL sets the login and _xsrf cookies.
    with httpx.Client(timeout=30) as browser:
        browser.get(f"{server.url}api/status", params={"token": server.auth["Authorization"][6:]})
        assert browser.get(server.api("/contexts")).status_code == 200  # the cookie logs in
        browser.get(f"{server.url}no-such-page")  # an HTML page: it sets the _xsrf cookie
        xsrf = browser.cookies.get("_xsrf")
        assert xsrf, "Jupyter sets an _xsrf cookie"
        _assert_error(browser.post(server.api("/contexts"), json={}), 403)
        allowed = browser.post(server.api("/contexts"), json={}, headers={"X-XSRFToken": xsrf})
        assert allowed.status_code == 201, allowed.text


def test_an_event_source_can_give_the_token_in_the_url(
    server: JupyterServer, client: httpx.Client
) -> None:
    # EventSource cannot set headers: the token goes in the query, as Jupyter allows.
    context_id = create_context(client, [])
    token = server.auth["Authorization"].removeprefix("token ")
    with httpx.Client(timeout=30) as browser:
        url = server.api(f"/contexts/{context_id}/events")
        (resync,) = read_events(
            browser, f"{url}?token={token}&since=5", lambda e: True
        )  # ahead of the bus: a Resync, which proves the stream opened
        assert resync.event == "Resync"
    with httpx.Client(timeout=30) as stranger:
        _assert_error(_opened(stranger, url), 403)


def test_no_token_given_in_the_url_reaches_the_log(
    server: JupyterServer, client: httpx.Client
) -> None:
    token = server.auth["Authorization"].removeprefix("token ")
    with httpx.Client(timeout=30) as browser:
        for path in ["/contexts/%2e%2e", "/contexts/no-such-context", "/no/such/path"]:
            response = browser.get(f"{server.api(path)}?since=3&token={token}")
            _assert_error(response, 400, 404)
    log = server.log()
    assert "no-such-context" in log  # the errors were logged...
    assert f"token={token}" not in log  # ...without the secret
    assert "token=[secret]" in log


# -- contexts --------------------------------------------------------------------------


def test_contexts_are_created_read_renamed_listed_and_deleted(client: httpx.Client) -> None:
    created = client.post(
        "contexts",
        json={"title": "Capitals", "provider": "scripted", "system": "Be brief.", "tags": ["geo"]},
    )
    assert created.status_code == 201, created.text
    detail = created.json()
    context_id = detail["context"]["id"]
    assert detail["context"]["system_prompt"] == "Be brief."
    assert detail["state"] == "Idle"
    assert detail["running"] == {}

    renamed = client.patch(f"contexts/{context_id}", json={"title": "Rivers"})
    assert renamed.status_code == 200
    assert renamed.json()["context"]["title"] == "Rivers"
    assert client.get(f"contexts/{context_id}").json()["context"]["title"] == "Rivers"
    listed = client.get("contexts").json()["contexts"]
    assert context_id in [meta["id"] for meta in listed]

    assert client.delete(f"contexts/{context_id}").status_code == 204
    _assert_error(client.get(f"contexts/{context_id}"), 404)
    _assert_error(client.delete(f"contexts/{context_id}"), 404)


@pytest.mark.parametrize(
    "body",
    [
        {"provider": "no-such-provider"},
        {"provider": "scripted", "provider_options": {"colour": "red"}},
        {"provider": "scripted", "provider_options": {"script": [{"sing": "la"}]}},
        {"provider": "scripted", "provider_options": {"api_key": "sk-123"}},
        {"title": 5},
        {"tags": "geo"},
    ],
)
def test_a_context_that_could_not_work_is_not_created(
    client: httpx.Client, body: dict[str, object]
) -> None:
    before = len(client.get("contexts").json()["contexts"])
    _assert_error(client.post("contexts", json=body), 400)
    assert len(client.get("contexts").json()["contexts"]) == before


# -- sending and streaming -------------------------------------------------------------


def test_a_reply_streams_over_sse_until_message_completed(client: httpx.Client) -> None:
    context_id = create_context(
        client, [{"reply": "Paris is the capital.", "chunks": "words", "delay": 0.01}]
    )
    sent: list[httpx.Response] = []
    events = read_events(
        client,
        f"contexts/{context_id}/events",
        lambda e: e.event == "MessageCompleted",
        started=lambda: sent.append(
            client.post(f"contexts/{context_id}/messages", json={"text": "Capital of France?"})
        ),
    )
    assert sent[0].status_code == 202
    turn = sent[0].json()
    assert turn["branch"] == "main"
    assert turn["turn_id"].startswith("t")
    # The seed's browser snippet reads JSON.parse(e.data).delta per 'ContentDelta'.
    deltas = [json.loads(e.data)["delta"] for e in events if e.event == "ContentDelta"]
    assert "".join(deltas) == "Paris is the capital."
    ids = [int(e.id) for e in events]
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    completed = json.loads(events[-1].data)
    assert completed["status"] == "complete"
    assert completed["seq"] == ids[-1]
    message = client.get(f"contexts/{context_id}/messages/{completed['message_id']}")
    assert message.json()["content"] == "Paris is the capital."


@pytest.mark.slow
def test_a_client_that_reconnects_with_last_event_id_misses_nothing(client: httpx.Client) -> None:
    text = " ".join(f"word{i}" for i in range(30))
    context_id = create_context(client, [{"reply": text, "chunks": "words", "delay": 0.02}])
    url = f"contexts/{context_id}/events"
    first = read_events(
        client,
        url,
        lambda e: e.event == "ContentDelta" and json.loads(e.data)["offset"] > 0,
        started=lambda: client.post(f"contexts/{context_id}/messages", json={"text": "go"}),
    )
    # The client left mid-reply; the reply goes on. Reconnect where it stopped.
    second = read_events(
        client,
        url,
        lambda e: e.event == "MessageCompleted",
        headers={"Last-Event-ID": first[-1].id},
    )
    events = first + second
    ids = [int(e.id) for e in events]
    assert ids == list(range(ids[0], ids[0] + len(ids))), ids
    deltas = [json.loads(e.data)["delta"] for e in events if e.event == "ContentDelta"]
    assert "".join(deltas) == text
    # ?since= replays the same history (an EventSource cannot set headers at first).
    replay = read_events(
        client, f"{url}?since={ids[0] - 1}", lambda e: e.event == "MessageCompleted"
    )
    assert [(e.id, e.event, e.data) for e in replay] == [(e.id, e.event, e.data) for e in events]


def test_idle_streams_get_heartbeats_and_end_when_the_client_leaves(
    server: JupyterServer, client: httpx.Client
) -> None:
    context_id = create_context(client, [])

    def streams() -> int:
        count: int = client.get(f"contexts/{context_id}").json()["streams"]
        return count

    viewer = httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30)
    with viewer, viewer.stream("GET", f"contexts/{context_id}/events") as response:
        assert response.status_code == 200
        # Keep the line iterator: dropping it mid-stream closes the connection.
        lines = response.iter_lines()
        for line in lines:
            if line == ": heartbeat":
                break  # the server's heartbeat is 0.5 s here; httpx's timeout bounds it
        assert streams() == 1
        lines.close()  # the viewer leaves
    # The viewer left: the server notices and ends its side of the stream.
    wait_for(lambda: streams() == 0)


def test_a_tool_call_approved_over_http_finishes_the_turn(client: httpx.Client) -> None:
    context_id = create_context(
        client,
        [
            {"tool_call": "get_weather", "arguments": {"city": "Paris"}, "id": "w1"},
            {"reply": "Sunny in Paris.", "chunks": "words"},
        ],
    )
    url = f"contexts/{context_id}/events"
    asked = read_events(
        client,
        url,
        lambda e: e.event == "ToolApprovalRequested",
        started=lambda: client.post(f"contexts/{context_id}/messages", json={"text": "Weather?"}),
    )
    (call_id,) = json.loads(asked[-1].data)["tool_call_ids"]
    pending = client.get(f"contexts/{context_id}/tools/{call_id}").json()
    assert pending["tool_call"]["status"] == "pending"
    assert pending["tool_call"]["arguments"] == {"city": "Paris", "days": 1}
    assert [c["id"] for c in client.get(f"contexts/{context_id}/tools").json()["tool_calls"]] == [
        call_id
    ]

    # Edited arguments are checked against the tool's schema; a bad edit decides nothing.
    bad_edit = client.post(
        f"contexts/{context_id}/tools/approve",
        json={"tool_call_id": call_id, "arguments": {"city": "Lyon", "days": "many"}},
    )
    _assert_error(bad_edit, 400)
    assert client.get(f"contexts/{context_id}/tools/{call_id}").json()["tool_call"]["status"] == (
        "pending"
    )

    def approve() -> None:
        decided = client.post(
            f"contexts/{context_id}/tools/approve",
            json={"tool_call_id": call_id, "arguments": {"city": "Lyon"}},
        )
        assert decided.status_code == 200, decided.text
        assert [c["id"] for c in decided.json()["tool_calls"]] == [call_id]

    rest = read_events(
        client,
        url,
        lambda e: e.event == "StateChanged" and json.loads(e.data)["new"] == "Idle",
        headers={"Last-Event-ID": asked[-1].id},
        started=approve,
    )
    names = [e.event for e in rest]
    assert "ToolCallResolved" in names
    assert "MessageCompleted" in names
    done = client.get(f"contexts/{context_id}/tools/{call_id}").json()["tool_call"]
    assert done["status"] == "done"
    assert done["result"] == "Lyon: sunny for 1 day(s)"
    last = client.get(f"contexts/{context_id}/messages", params={"limit": 1}).json()
    assert last["messages"][0]["content"] == "Sunny in Paris."
    # Nothing is pending any more: approving again is a conflict, an old id too.
    _assert_error(client.post(f"contexts/{context_id}/tools/approve", json={}), 409)
    _assert_error(
        client.post(f"contexts/{context_id}/tools/deny", json={"tool_call_id": call_id}), 409
    )
    _assert_error(client.get(f"contexts/{context_id}/tools/nope"), 404)


def test_a_tool_call_denied_over_http_tells_the_model(client: httpx.Client) -> None:
    context_id = create_context(
        client,
        [{"tool_call": "get_weather", "arguments": {"city": "Oslo"}}, {"reply": "Understood."}],
    )
    client.post(f"contexts/{context_id}/messages", json={"text": "Weather?"})

    def pending() -> bool:
        return bool(client.get(f"contexts/{context_id}").json()["pending_tool_calls"])

    wait_for(pending)
    # Refused, deciding nothing: an unknown branch (404 as everywhere), a reason or an
    # edit larger than a decision may carry (it could never reach a kernel's call).
    deny = f"contexts/{context_id}/tools/deny"
    assert _assert_error(client.post(deny, json={"branch": "nope"}), 404)["reason"] == (
        "BranchNotFoundError"
    )
    approve = f"contexts/{context_id}/tools/approve"
    assert _assert_error(client.post(approve, json={"branch": "nope"}), 404)
    _assert_error(client.post(deny, json={"reason": "r" * 10_001}), 400)
    (call,) = client.get(f"contexts/{context_id}/tools").json()["tool_calls"]
    huge = {"tool_call_id": call["id"], "arguments": {"city": "x" * 1_000_001}}
    assert "larger than 1,000,000 characters" in str(
        _assert_error(client.post(approve, json=huge), 400)["message"]
    )
    assert pending()
    denied = client.post(f"contexts/{context_id}/tools/deny", json={"reason": "not today"})
    assert denied.status_code == 200
    assert len(denied.json()["tool_calls"]) == 1
    wait_for(lambda: client.get(f"contexts/{context_id}").json()["state"] == "Idle")
    call = client.get(f"contexts/{context_id}/messages").json()["messages"][1]["tool_calls"][0]
    assert call["status"] == "denied"
    assert call["reason"] == "not today"


def test_send_while_streaming_is_a_conflict_and_stop_ends_the_reply(client: httpx.Client) -> None:
    context_id = create_context(client, [{"hang": True, "after_chunks": 1, "text": "partial"}])
    assert client.post(f"contexts/{context_id}/messages", json={"text": "go"}).status_code == 202
    body = _assert_error(
        client.post(f"contexts/{context_id}/messages", json={"text": "again"}), 409
    )
    assert body["reason"] == "BusyError"
    # A new system prompt mid-turn would fork at the unfinished reply: refused too, and
    # the switch asked for with it is not made either (a refused request changes nothing).
    asked = client.get(f"contexts/{context_id}/messages").json()["messages"][0]["id"]
    side = {"name": "side", "from_message": asked, "switch": True}
    assert client.post(f"contexts/{context_id}/branches", json=side).status_code == 201
    branch_url = f"contexts/{context_id}/branches/main"
    edit = _assert_error(client.put(branch_url, json={"system": "Be brief.", "active": True}), 409)
    assert edit["reason"] == "BusyError"
    assert client.get(f"contexts/{context_id}").json()["context"]["active_branch"] == "side"
    assert client.put(branch_url, json={"active": True}).status_code == 200  # alone: fine
    assert "turn.cancel()" not in str(edit["message"])
    assert f"contexts/{context_id}/stop" in str(edit["message"])
    detail = client.get(f"contexts/{context_id}").json()
    assert list(detail["running"]) == ["main"]
    stopped = client.post(f"contexts/{context_id}/stop", json={})
    assert stopped.status_code == 202
    assert stopped.json()["turn_id"] == detail["running"]["main"]
    wait_for(lambda: client.get(f"contexts/{context_id}").json()["running"] == {})
    reply = client.get(f"contexts/{context_id}/messages").json()["messages"][-1]
    assert reply["status"] == "interrupted"
    _assert_error(client.post(f"contexts/{context_id}/stop", json={}), 409)
    _assert_error(client.post(f"contexts/{context_id}/stop", json={"branch": "nope"}), 404)
    malformed = client.post(f"contexts/{context_id}/stop", json={"branch": "../.."})
    assert _assert_error(malformed, 400)["reason"] == "InvalidIdError"


# -- messages, branches, edit, regenerate, compare --------------------------------------


def _converse(client: httpx.Client, context_id: str, *texts: str) -> None:
    for text in texts:
        sent = client.post(f"contexts/{context_id}/messages", json={"text": text})
        assert sent.status_code == 202, sent.text
        wait_for(lambda: client.get(f"contexts/{context_id}").json()["running"] == {})


def test_messages_come_in_pages_from_the_newest(client: httpx.Client) -> None:
    context_id = create_context(client, [])  # the scripted model echoes
    _converse(client, context_id, "one", "two", "three")
    url = f"contexts/{context_id}/messages"
    newest = client.get(url, params={"limit": 2}).json()
    assert [m["content"] for m in newest["messages"]] == ["three", "echo: three"]
    assert newest["has_more"] is True
    assert newest["branch"] == "main"
    older = client.get(url, params={"limit": 3, "before": newest["messages"][0]["id"]}).json()
    assert [m["content"] for m in older["messages"]] == ["echo: one", "two", "echo: two"]
    oldest = client.get(url, params={"limit": 3, "before": older["messages"][0]["id"]}).json()
    assert [m["content"] for m in oldest["messages"]] == ["one"]
    assert oldest["has_more"] is False
    _assert_error(client.get(url, params={"before": "m-unknown"}), 404)
    _assert_error(client.get(url, params={"limit": 0}), 400)
    _assert_error(client.get(url, params={"limit": "many"}), 400)
    _assert_error(client.get(url, params={"branch": "nope"}), 404)


def test_branches_are_forked_switched_and_deleted(client: httpx.Client) -> None:
    context_id = create_context(client, [])
    _converse(client, context_id, "hello")
    url = f"contexts/{context_id}/branches"
    first = client.get(f"contexts/{context_id}/messages").json()["messages"][0]
    made = client.post(url, json={"name": "other way", "from_message": first["id"]})
    assert made.status_code == 201
    assert made.json()["head"] == first["id"]
    _assert_error(client.post(url, json={"name": "other way"}), 409)
    listed = client.get(url).json()
    assert listed["active"] == "main"
    assert {b["name"] for b in listed["branches"]} == {"main", "other way"}
    switched = client.put(f"{url}/other%20way", json={"active": True})
    assert switched.status_code == 200
    assert switched.json()["name"] == "other way"
    assert client.get(f"contexts/{context_id}").json()["context"]["active_branch"] == "other way"
    _assert_error(client.delete(f"{url}/other%20way"), 409)  # the active one
    client.put(f"{url}/main", json={"active": True})
    assert client.delete(f"{url}/other%20way").status_code == 204
    _assert_error(client.get(f"{url}/other%20way"), 404)
    _assert_error(client.delete(f"{url}/other%20way"), 404)


def test_branches_carry_their_own_system_prompt(client: httpx.Client) -> None:
    context_id = create_context(client, [], system="Be brief.")
    url = f"contexts/{context_id}/branches"
    made = client.post(
        url,
        json={"name": "pirate", "system": "Talk like a pirate.", "params": {"temperature": 0.2}},
    )
    assert made.status_code == 201, made.text
    assert made.json()["system_prompt"] == "Talk like a pirate."
    changed = client.put(f"{url}/pirate", json={"system": "Talk like a parrot."})
    assert changed.status_code == 200, changed.text
    assert changed.json()["system_prompt"] == "Talk like a parrot."
    inherit = client.put(f"{url}/pirate", json={"system": None, "active": True})
    assert inherit.json()["system_prompt"] is None
    assert client.get(f"contexts/{context_id}").json()["context"]["active_branch"] == "pirate"
    _assert_error(client.post(url, json={"name": "x", "provider": "no-such-provider"}), 400)
    _assert_error(client.post(url, json={"name": "y", "params": {"switch": True}}), 400)


def test_renaming_is_signalled(client: httpx.Client) -> None:
    context_id = create_context(client, [])
    events = read_events(
        client,
        f"contexts/{context_id}/events",
        lambda e: e.event == "ContextUpdated",
        started=lambda: client.patch(f"contexts/{context_id}", json={"title": "New name"}),
    )
    assert json.loads(events[-1].data)["changed"] == ["title"]
    _assert_error(client.patch(f"contexts/{context_id}", json={"title": ""}), 400)


def test_edit_regenerate_and_compare(client: httpx.Client) -> None:
    context_id = create_context(
        client, [{"reply": "first answer"}, {"reply": "edited answer"}, {"reply": "second try"}]
    )
    _converse(client, context_id, "question")
    question = client.get(f"contexts/{context_id}/messages").json()["messages"][0]
    edited = client.post(
        f"contexts/{context_id}/messages/{question['id']}/edit",
        json={"text": "better question", "branch": "better"},
    )
    assert edited.status_code == 202
    assert edited.json()["branch"] == "better"
    wait_for(lambda: client.get(f"contexts/{context_id}").json()["running"] == {})
    again = client.post(f"contexts/{context_id}/regenerate", json={"branch": "main"})
    assert again.status_code == 202
    wait_for(lambda: client.get(f"contexts/{context_id}").json()["running"] == {})
    compared = client.get(
        f"contexts/{context_id}/compare", params=[("branch", "main"), ("branch", "better")]
    )
    assert compared.status_code == 200, compared.text
    texts = {r["branch"]: r["text"] for r in compared.json()["results"]}
    assert texts == {"main": "second try", "better": "edited answer"}
    _assert_error(client.get(f"contexts/{context_id}/compare", params={"branch": "nope"}), 404)
    answer = client.get(f"contexts/{context_id}/messages").json()["messages"][-1]
    _assert_error(
        client.post(f"contexts/{context_id}/messages/{answer['id']}/edit", json={"text": "x"}), 400
    )  # not a user message


def test_a_reply_that_failed_for_good_is_retried(client: httpx.Client) -> None:
    context_id = create_context(
        client, [{"error": "permanent", "message": "no key"}, {"reply": "now it works"}]
    )
    url = f"contexts/{context_id}"
    _converse(client, context_id, "question")
    assert client.get(url).json()["states"]["main"] == "PermanentFailure"
    failed = client.get(f"{url}/messages").json()["messages"][-1]
    assert failed["status"] == "error"
    retried = client.post(f"{url}/retry", json={"branch": "main"})
    assert retried.status_code == 202, retried.text
    assert retried.json()["branch"] == "main"
    wait_for(lambda: client.get(url).json()["running"] == {})
    messages = client.get(f"{url}/messages").json()["messages"]
    assert [m["content"] for m in messages] == ["question", "now it works"]
    # Nothing failed now: a 409 that says what to do instead.
    refused = _assert_error(client.post(f"{url}/retry", json={}), 409)
    assert "its last reply did not fail" in str(refused["message"])
    assert f"/cm/api/contexts/{context_id}/regenerate makes a new reply" in str(refused["message"])
    _assert_error(client.post(f"{url}/retry", json={"branch": "nope"}), 404)
    _assert_error(client.post(f"{url}/retry", json={"branch": "../.."}), 400)


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"text": ""}', "text"),
        (b'{"text": 5}', "text"),
        (b'{"text": "hi", "colour": "red"}', "colour"),
        (b'{"text": "hi", "params": {"temperature": "hot"}}', None),
        (b'{"text": "hi", "params": {"branch": "main"}}', "params"),
        (b'{"text": "hi", "params": {"api_key": "sk-123"}}', None),
    ],
)
def test_malformed_bodies_get_400_with_the_field_errors(
    client: httpx.Client, body: bytes, field: str | None
) -> None:
    context_id = create_context(client, [])
    response = client.post(f"contexts/{context_id}/messages", content=body)
    error = _assert_error(response, 400)
    if field is not None:
        assert field in [loc for e in error["errors"] for loc in e["loc"]]  # type: ignore[attr-defined]


# Written as they go on the wire: a literal '..' segment would be resolved by the client.
HOSTILE_IDS = [
    "%2E%2E",
    "..%2F..%2Fetc",
    "%2e%2e%2fvictim",
    "a%5Cb",
    "con",
    "x" * 300,
    "%00",
    "%C3%28",
]
HOSTILE_BRANCHES = ["%2E%2E", "..%2Fmain", "a%2Fb", "%0A", "%20main", "%E2%80%AE"]


def test_hostile_ids_and_branch_names_get_400_or_404_and_touch_nothing_outside(
    server: JupyterServer, client: httpx.Client
) -> None:
    victim = server.root / "victim" / "contexts" / "c1"
    victim.mkdir(parents=True)
    (victim / "metadata.json").write_text("{}")
    before = _tree(server.root)
    context_id = create_context(client, [])
    for bad in HOSTILE_IDS:
        for method, path in [
            ("GET", f"/contexts/{bad}"),
            ("DELETE", f"/contexts/{bad}"),
            ("PATCH", f"/contexts/{bad}"),
            ("GET", f"/contexts/{bad}/messages"),
            ("POST", f"/contexts/{bad}/messages"),
            ("GET", f"/contexts/{bad}/events"),
            ("GET", f"/contexts/{context_id}/messages/{bad}"),
            ("POST", f"/contexts/{context_id}/messages/{bad}/edit"),
            ("GET", f"/contexts/{context_id}/tools/{bad}"),
        ]:
            body = {"text": "x", "title": "x"} if method in ("POST", "PATCH") else None
            response = client.request(method, server.api(path), json=body)
            _assert_error(response, 400, 404)
    for bad in HOSTILE_BRANCHES:
        for method, path, body in [
            ("GET", f"/contexts/{context_id}/branches/{bad}", None),
            ("PUT", f"/contexts/{context_id}/branches/{bad}", {"active": True}),
            ("DELETE", f"/contexts/{context_id}/branches/{bad}", None),
            ("GET", f"/contexts/{context_id}/messages?branch={bad}", None),
        ]:
            _assert_error(client.request(method, server.api(path), json=body), 400, 404)
    for name in ["../x", "a/b", "\x00", " main", "main\n", "a..b", "x" * 101]:
        response = client.post(f"contexts/{context_id}/branches", json={"name": name})
        _assert_error(response, 400)
        response = client.post(
            f"contexts/{context_id}/messages", json={"text": "x", "branch": name}
        )
        _assert_error(response, 400)
    assert _tree(server.root) == before
    assert (victim / "metadata.json").read_text() == "{}"


def _tree(root: Path) -> dict[str, float]:
    # Every file outside the server's own folders, with its modification time.
    skip = {"data", "runtime", "config", "server.log"}
    return {
        str(path.relative_to(root)): path.stat().st_mtime
        for path in root.rglob("*")
        if path.relative_to(root).parts[0] not in skip
    }


def test_deleting_a_context_ends_its_event_streams(client: httpx.Client) -> None:
    context_id = create_context(client, [{"hang": True}])
    client.post(f"contexts/{context_id}/messages", json={"text": "go"})

    def delete() -> None:
        assert client.delete(f"contexts/{context_id}").status_code == 204

    with pytest.raises(AssertionError, match="the stream ended"):
        read_events(
            client, f"contexts/{context_id}/events?since=0", lambda e: False, started=delete
        )
    _assert_error(_opened(client, f"contexts/{context_id}/events"), 404)


def test_asking_for_signals_the_server_never_numbered_gives_a_resync(client: httpx.Client) -> None:
    # E.g. a browser reconnecting after the server restarted: its Last-Event-ID is ahead.
    context_id = create_context(client, [])
    url = f"contexts/{context_id}/events"
    (resync,) = read_events(client, url, lambda e: True, headers={"Last-Event-ID": "999"})
    assert resync.event == "Resync"
    assert json.loads(resync.data)["seq"] == int(resync.id) == 0
    for bad in ["-1", "abc", "1e3", "9" * 30]:
        _assert_error(_opened(client, url, headers={"Last-Event-ID": bad}), 400)
        _assert_error(_opened(client, url, params={"since": bad}), 400)


def _opened(client: httpx.Client, url: str, **options: Any) -> httpx.Response:
    # A request to the events stream that does not hang if, wrongly, it streams: the
    # body is read only when the answer is not a stream.
    with client.stream("GET", url, **options) as response:
        if not response.headers["content-type"].startswith("text/event-stream"):
            response.read()
        return response


def test_a_message_that_cannot_be_stored_is_answered_and_leaves_nothing_unretrieved(
    tmp_path: Path,
) -> None:
    # A server of its own: its log, read after it stopped, holds what its exit found.
    with (
        JupyterServer(tmp_path) as running,
        httpx.Client(base_url=running.api("/"), headers=running.auth, timeout=30) as http,
    ):
        context_id = create_context(http, [{"reply": "never"}])
        messages = running.data_dir / "contexts" / context_id / "messages"
        shutil.rmtree(messages)
        messages.write_text("not a folder")
        response = http.post(f"contexts/{context_id}/messages", json={"text": "hi"})
        assert "could not be stored" in str(_assert_error(response, 500)["message"])
    assert "never retrieved" not in running.log(), running.log()


def test_a_context_whose_metadata_is_damaged_can_be_deleted_over_http(
    server: JupyterServer, client: httpx.Client
) -> None:
    context_id = create_context(client, [])
    (server.data_dir / "contexts" / context_id / "metadata.json").write_text("{garbage")
    body = _assert_error(client.get(f"contexts/{context_id}"), 500)
    assert body["reason"] == "CorruptDataError"
    assert client.delete(f"contexts/{context_id}").status_code == 204
    assert not (server.data_dir / "contexts" / context_id).exists()
    _assert_error(client.delete(f"contexts/{context_id}"), 404)
