"""What the REST answers say: a branch's state once a send is acknowledged, a decision
as made, provider options named when refused, the tool routes of a context removed on
disk, and damaged data as documented.

A real Jupyter server in a child process, as in ``test_server_api.py``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jupyter_server_proc import BASE_URL, JupyterServer
from server_client import create_context, read_events, wait_for
from tool_writer import start_tool_writer

from cm_notebook._claims import turn_running
from cm_notebook.server.wording import for_http

API = f"{BASE_URL}cm/api"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    # The default idle timeout: the sweeper looks only every few seconds, so what ends a
    # removed context's streams at once is the request that finds it gone.
    with JupyterServer(tmp_path_factory.mktemp("jupyter-answers")) as running:
        yield running
    assert "Traceback" not in running.log(), running.log()


@pytest.fixture
def client(server: JupyterServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as http:
        yield http


def _pending(client: httpx.Client, context_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def waiting() -> bool:
        found[:] = client.get(f"contexts/{context_id}/tools").json()["tool_calls"]
        return bool(found)

    wait_for(waiting)
    return found


# -- the state once a send is acknowledged -------------------------------------------------


def _details_until_idle(client: httpx.Client, context_id: str) -> list[dict[str, Any]]:
    # What a client polling the context's state until Idle sees, the Idle one last.
    seen: list[dict[str, Any]] = []

    def idle() -> bool:
        seen.append(client.get(f"contexts/{context_id}").json())
        return bool(seen[-1]["state"] == "Idle")

    wait_for(idle)
    return seen


def test_a_client_polling_the_state_until_idle_after_a_send_reads_the_whole_reply(
    client: httpx.Client,
) -> None:
    reply = "one two three four five six"
    for _ in range(3):  # the window is right after the 202: look at it a few times
        context_id = create_context(client, [{"reply": reply, "chunks": "words", "delay": 0.05}])
        sent = client.post(f"contexts/{context_id}/messages", json={"text": "hi"})
        assert sent.status_code == 202, sent.text
        seen = _details_until_idle(client, context_id)
        assert seen[0]["running"].get("main") in (sent.json()["turn_id"], None)
        for detail in seen:
            # A branch on which a turn runs is never Idle, in both fields alike.
            assert detail["states"]["main"] == detail["state"]
            if detail["running"]:
                assert detail["state"] != "Idle", detail
        messages = client.get(f"contexts/{context_id}/messages").json()["messages"]
        assert [(m["role"], m["status"]) for m in messages] == [
            ("user", "complete"),
            ("assistant", "complete"),
        ]
        assert messages[-1]["content"] == reply


# -- decisions answered as made ------------------------------------------------------------


def test_approve_and_deny_answer_the_calls_as_decided(client: httpx.Client) -> None:
    context_id = create_context(
        client,
        [
            {"tool_call": "get_weather", "arguments": {"city": "Paris"}},
            {"reply": "Sunny."},
            {"tool_call": "get_weather", "arguments": {"city": "Rome"}},
            {"reply": "Warm."},
        ],
    )
    assert client.post(f"contexts/{context_id}/messages", json={"text": "w?"}).status_code == 202
    [call] = _pending(client, context_id)
    approved = client.post(
        f"contexts/{context_id}/tools/approve",
        json={"tool_call_id": call["id"], "arguments": {"city": "Lyon"}},
    )
    assert approved.status_code == 200, approved.text
    [decided] = approved.json()["tool_calls"]
    assert decided["id"] == call["id"]
    assert decided["status"] == "approved"
    assert decided["arguments"] == {"city": "Lyon", "days": 1}  # what runs, defaults in
    wait_for(lambda: client.get(f"contexts/{context_id}").json()["state"] == "Idle")
    ran = client.get(f"contexts/{context_id}/tools/{call['id']}").json()["tool_call"]
    assert ran["arguments"] == decided["arguments"]
    assert ran["result"] == "Lyon: sunny for 1 day(s)"

    assert client.post(f"contexts/{context_id}/messages", json={"text": "r?"}).status_code == 202
    [call] = _pending(client, context_id)
    denied = client.post(
        f"contexts/{context_id}/tools/deny", json={"tool_call_id": call["id"], "reason": "no"}
    )
    assert denied.status_code == 200, denied.text
    [decided] = denied.json()["tool_calls"]
    assert (decided["id"], decided["status"], decided["reason"]) == (call["id"], "denied", "no")
    assert decided["arguments"] == {"city": "Rome", "days": 1}


def test_one_calls_status_on_a_chosen_branch_when_two_branches_share_its_id(
    client: httpx.Client,
) -> None:
    # Each branch's model numbers its own calls: a fork from the first question asks
    # for "same" again. Without ?branch= the id is ambiguous (as approve and deny say).
    script = [
        {"tool_call": "get_weather", "arguments": {"city": "Paris"}, "id": "same"},
        {"reply": "Sunny."},
        {"tool_call": "get_weather", "arguments": {"city": "Rome"}, "id": "same"},
        {"reply": "Warm."},
    ]
    context_id = create_context(client, script)
    url = f"contexts/{context_id}"
    for branch in ("main", "b"):
        if branch == "b":
            [question, *_] = client.get(f"{url}/messages").json()["messages"]
            forked = client.post(
                f"{url}/branches", json={"name": "b", "from_message": question["id"]}
            )
            assert forked.status_code == 201, forked.text
        sent = client.post(f"{url}/messages", json={"text": "w?", "branch": branch})
        assert sent.status_code == 202, sent.text
        assert [c["id"] for c in _pending(client, context_id)] == ["same"]
        decided = client.post(
            f"{url}/tools/approve", json={"tool_call_id": "same", "branch": branch}
        )
        assert decided.status_code == 200, decided.text
        wait_for(lambda: not client.get(f"{url}/tools").json()["tool_calls"])
        wait_for(lambda: client.get(f"{url}").json()["state"] == "Idle")
    ambiguous = client.get(f"{url}/tools/same")
    assert ambiguous.status_code == 400
    assert "branches 'main', 'b' all have the id 'same'" in ambiguous.text
    assert "?branch=" in ambiguous.text
    on_b = client.get(f"{url}/tools/same", params={"branch": "b"}).json()
    assert (on_b["branch"], on_b["tool_call"]["arguments"]["city"]) == ("b", "Rome")
    on_main = client.get(f"{url}/tools/same", params={"branch": "main"}).json()
    assert (on_main["branch"], on_main["tool_call"]["arguments"]["city"]) == ("main", "Paris")
    assert client.get(f"{url}/tools/same", params={"branch": "nope"}).status_code == 404


def test_approving_every_call_answers_them_approved(client: httpx.Client) -> None:
    context_id = create_context(
        client, [{"tool_call": "get_weather", "arguments": {"city": "Oslo"}}, {"reply": "Cold."}]
    )
    assert client.post(f"contexts/{context_id}/messages", json={"text": "w?"}).status_code == 202
    [call] = _pending(client, context_id)
    approved = client.post(f"contexts/{context_id}/tools/approve", json={})
    assert approved.status_code == 200, approved.text
    assert [(c["id"], c["status"]) for c in approved.json()["tool_calls"]] == [
        (call["id"], "approved")
    ]


def _decide_in_a_kernel(
    server: JupyterServer, client: httpx.Client, decision: str, body: dict[str, Any]
) -> tuple[dict[str, Any], str]:
    # A kernel's turn waits for approval of add(1, 2); the server decides it. Returns
    # the call answered and what the kernel printed (the tool's answer).
    context_id = create_context(client, [])
    kernel: list[subprocess.Popen[bytes]] = []
    try:
        asked = read_events(
            client,
            f"contexts/{context_id}/events",
            lambda e: e.event == "ToolApprovalRequested",
            started=lambda: kernel.append(
                start_tool_writer(server.data_dir, context_id, print_tool_result=True)
            ),
        )
        [call_id] = json.loads(asked[-1].data)["tool_call_ids"]
        answer = client.post(
            f"contexts/{context_id}/tools/{decision}", json={"tool_call_id": call_id, **body}
        )
        assert answer.status_code == 200, answer.text
        [decided] = answer.json()["tool_calls"]
        assert decided["id"] == call_id
        out, _ = kernel[0].communicate(timeout=60)
        return decided, out.decode().strip()
    finally:
        for process in kernel:
            if process.poll() is None:
                process.kill()
                process.wait(30)


def test_a_decision_on_a_call_waiting_in_a_kernel_is_answered_as_made(
    server: JupyterServer, client: httpx.Client
) -> None:
    approved, ran = _decide_in_a_kernel(
        server, client, "approve", {"arguments": {"a": 20, "b": 22}}
    )
    assert (approved["status"], approved["arguments"]) == ("approved", {"a": 20, "b": 22})
    assert ran == "42"  # the kernel ran the arguments answered
    denied, told = _decide_in_a_kernel(server, client, "deny", {"reason": "not now"})
    assert (denied["status"], denied["reason"]) == ("denied", "not now")
    assert denied["arguments"] == {"a": 1, "b": 2}
    assert "not now" in told


# -- provider options refused by name ------------------------------------------------------


def test_a_retry_asked_twice_is_told_the_first_one_runs(client: httpx.Client) -> None:
    # A double click: the second retry finds the first one's reply being made, not a
    # branch whose last reply "did not fail".
    context_id = create_context(
        client, [{"error": "permanent", "message": "no key"}, {"hang": True}]
    )
    url = f"contexts/{context_id}"
    assert client.post(f"{url}/messages", json={"text": "question"}).status_code == 202
    wait_for(lambda: client.get(url).json()["states"]["main"] == "PermanentFailure")
    first = client.post(f"{url}/retry", json={})
    assert first.status_code == 202, first.text
    second = client.post(f"{url}/retry", json={})
    assert second.status_code == 409, second.text
    assert second.json()["reason"] == "BusyError"
    message = second.json()["message"]
    assert "a reply is still being generated on branch 'main'" in message, message
    assert f'{API}/contexts/{context_id}/stop and {{"branch": "main"}}' in message, message
    assert "nothing to retry" not in message
    assert client.post(f"{url}/stop", json={}).json()["turn_id"] == first.json()["turn_id"]
    wait_for(lambda: client.get(url).json()["running"] == {})


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (
            {"provider": "scripted", "provider_options": {"bogus": 1}},
            ["unknown provider option 'bogus'", "valid options are", "script", "remove it"],
        ),
        (
            {"provider": "scripted", "provider_options": {"timeout": "x"}},
            ["unknown provider option 'timeout'", "valid options are", "delay"],
        ),
        (
            {"provider": "scripted", "provider_options": {"delay": "x"}},
            ["option 'delay' must be a number, not a string", "correct its value"],
        ),
        (
            {"provider": "anthropic:claude-haiku-4-5", "provider_options": {"timeout": "x"}},
            ["option 'timeout' must be a number, not a string", "correct its value"],
        ),
        # Kept by the client as given, they failed (or misled) every later request.
        (
            {"provider": "openai:m", "provider_options": {"organization": 5}},
            ["option 'organization' must be a string or null, not a number"],
        ),
        (
            {"provider": "openai:m", "provider_options": {"include_usage": "false"}},
            ["option 'include_usage' must be true or false, not a string"],
        ),
        (
            {"provider": "openai:m", "provider_options": {"default_headers": {"X-A": 5}}},
            ["default_headers must map header names to text values"],
        ),
    ],
    ids=[
        "unknown",
        "another provider's option",
        "a string for a number",
        "anthropic timeout",
        "a number for a string",
        "a string for true or false",
        "a number for a header",
    ],
)
def test_a_refused_provider_option_is_named_with_what_to_do(
    client: httpx.Client, body: dict[str, Any], said: list[str]
) -> None:
    refused = client.post("contexts", json=body)
    assert refused.status_code == 400, refused.text
    message = refused.json()["message"]
    for words in said:
        assert words in message, message
    assert "the request failed" not in message
    assert "not supported between instances" not in message  # Python's own words
    assert "__init__" not in message


def test_a_blank_title_and_a_provider_names_case_are_taken_alike(client: httpx.Client) -> None:
    # No title, an empty one and one of spaces: all "Untitled" (named after the first
    # message). A provider's name is case-insensitive: stored as its lower-case spelling.
    for title in ("", "   ", "\t \n"):
        made = client.post("contexts", json={"title": title, "provider": "scripted"})
        assert made.status_code == 201, made.text
        assert made.json()["context"]["title"] == "Untitled"
    made = client.post("contexts", json={"provider": " SCRIPTED "})
    assert made.status_code == 201, made.text
    assert made.json()["context"]["provider"]["spec"] == "scripted"
    context_id = made.json()["context"]["id"]
    fork = client.post(
        f"contexts/{context_id}/branches", json={"name": "b", "provider": "Scripted"}
    )
    assert fork.status_code == 201, fork.text
    assert fork.json()["provider"]["spec"] == "scripted"
    # A missing model is named with what a client of the API can do about it.
    refused = client.post("contexts", json={"provider": "openai"})
    assert refused.status_code == 400, refused.text
    message = refused.json()["message"]
    assert "model=" not in message, message
    assert '"model" in provider_options' in message, message
    given = {"provider": "openai", "provider_options": {"model": "gpt-4o-mini"}}
    assert client.post("contexts", json=given).status_code == 201


def test_a_credential_header_in_provider_options_is_refused_without_echo(
    client: httpx.Client, server: JupyterServer
) -> None:
    # Named a credential only as a header: accepted, it was stored redacted, and the
    # context's provider sent "[REDACTED]" as the header from then on.
    secret = f"vault{uuid.uuid4().hex}"
    options = {"default_headers": {"X-Vault-Token": secret}}
    refused = client.post("contexts", json={"provider": "openai:m", "provider_options": options})
    assert refused.status_code == 400, refused.text
    message = refused.json()["message"]
    assert "default_headers['X-Vault-Token']" in message, message
    assert "looks like a secret" in message, message
    leaked = secret in refused.text or secret in server.log()
    assert not leaked, "the header's value is in the answer or the server's log"
    stored = [
        p for p in server.data_dir.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()
    ]
    assert stored == []


def test_a_message_whose_every_clause_names_a_python_call_keeps_its_start(
    tmp_path: Path,
) -> None:
    # The server's log keeps the whole text; the client still learns what failed.
    worded = for_http(
        "provider 'x' cannot be made with the options ['y']: Factory.__init__() refused it",
        data_dir=tmp_path,
        api=API,
        context_id=None,
    )
    assert (
        worded
        == "provider 'x' cannot be made with the options ['y']; the server's log has the details"
    )
    assert for_http("make() failed", data_dir=tmp_path, api=API, context_id=None)


@pytest.mark.parametrize("stopping", [False, True])
def test_a_busy_branch_s_remedy_is_a_request(tmp_path: Path, stopping: bool) -> None:
    # The session's own refusal names session.turn()/session.stop(): a client is told the
    # events to wait for and the stop request, for that branch.
    worded = for_http(
        str(turn_running("side", stopping=stopping)), data_dir=tmp_path, api=API, context_id="c1"
    )
    assert "session." not in worded
    assert f"GET {API}/contexts/c1/events" in worded
    if not stopping:
        assert f'POST {API}/contexts/c1/stop and {{"branch": "side"}}' in worded


# -- the tool routes of a context removed on disk ------------------------------------------

_TOOL_ROUTES: dict[str, Callable[[httpx.Client, str], httpx.Response]] = {
    "pending": lambda http, c: http.get(f"contexts/{c}/tools"),
    "approve": lambda http, c: http.post(f"contexts/{c}/tools/approve", json={}),
    "deny": lambda http, c: http.post(f"contexts/{c}/tools/deny", json={"tool_call_id": "w1"}),
    "decisions": lambda http, c: http.get(f"contexts/{c}/tools/decisions"),
    "one call": lambda http, c: http.get(f"contexts/{c}/tools/w1"),
}


@pytest.mark.parametrize("route", list(_TOOL_ROUTES))
def test_the_tool_routes_of_a_context_removed_on_disk_answer_404_and_close_it(
    server: JupyterServer, client: httpx.Client, route: str
) -> None:
    context_id = create_context(client, [{"reply": "hello"}])
    assert client.post(f"contexts/{context_id}/messages", json={"text": "hi"}).status_code == 202
    wait_for(lambda: client.get(f"contexts/{context_id}").json()["state"] == "Idle")
    folder = server.data_dir / "contexts" / context_id
    answers: list[httpx.Response] = []

    def remove_then_ask() -> None:
        shutil.rmtree(folder)
        answers.append(_TOOL_ROUTES[route](client, context_id))

    started = time.monotonic()
    # The 404 ends the context's streams at once (the sweeper would take longer).
    with pytest.raises(AssertionError, match="the stream ended"):
        read_events(
            client,
            f"contexts/{context_id}/events",
            lambda event: False,
            started=remove_then_ask,
            timeout=4,
        )
    assert time.monotonic() - started < 4
    [answer] = answers
    assert answer.status_code == 404, answer.text
    assert answer.json()["reason"] == "ContextNotFoundError"
    assert f"GET {API}/contexts lists" in answer.json()["message"]


# -- damaged data ----------------------------------------------------------------------------


def test_damaged_data_answers_500_as_the_openapi_document_says(
    server: JupyterServer, client: httpx.Client
) -> None:
    document = client.get("openapi.json").json()
    context_routes = [path for path in document["paths"] if "{context_id}" in path]
    assert len(context_routes) >= 10
    error_schema = {"$ref": "#/components/schemas/ErrorBody"}
    for path in context_routes:
        for method, described in document["paths"][path].items():
            assert "503" in described["responses"], (method, path)  # stopping, a lock held
            answer = described["responses"].get("500")
            assert answer is not None, (method, path)
            assert "damaged" in answer["description"]
            if method == "head":  # its status, without the body
                assert "content" not in answer, (method, path)
                continue
            assert answer["content"]["application/json"]["schema"] == error_schema

    context_id = create_context(client, [{"reply": "r"}])
    metadata = server.data_dir / "contexts" / context_id / "metadata.json"
    metadata.write_text("{garbage")
    for url in (f"contexts/{context_id}", f"contexts/{context_id}/tools"):
        damaged = client.get(url)
        assert damaged.status_code == 500, damaged.text
        body = damaged.json()
        assert body["reason"] == "CorruptDataError"
        assert f"contexts/{context_id}/metadata.json is not valid JSON" in body["message"]
        assert f"DELETE {API}/contexts/{context_id}" in body["message"]
    assert client.delete(f"contexts/{context_id}").status_code == 204


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc/<pid>/fd")
def test_a_context_removed_on_disk_with_no_request_is_closed_within_seconds(
    server: JupyterServer, client: httpx.Client
) -> None:
    context_id = create_context(client, [{"reply": "hello"}])
    assert client.post(f"contexts/{context_id}/messages", json={"text": "hi"}).status_code == 202
    wait_for(lambda: client.get(f"contexts/{context_id}").json()["state"] == "Idle")
    folder = server.data_dir / "contexts" / context_id
    assert server.process is not None
    fds = Path(f"/proc/{server.process.pid}/fd")

    def held() -> list[str]:
        targets = []
        for fd in fds.iterdir():
            try:
                targets.append(str(fd.readlink()))
            except OSError:  # closed meanwhile
                continue
        return [target for target in targets if context_id in target]

    assert held()  # its session holds files of the context (its signal log, say)
    shutil.rmtree(folder)
    # No request, no events stream: the server's own sweep finds it gone (every 5 s).
    wait_for(lambda: not held(), timeout=15)


def test_the_log_names_the_api_under_the_servers_base_url(server: JupyterServer) -> None:
    # With --ServerApp.base_url=/jp/ the API is at /jp/cm/api: the log said /cm/api.
    assert f"cm_notebook: API at {BASE_URL}cm/api," in server.log()


def test_a_branch_waiting_for_a_decision_names_the_approval_requests(tmp_path: Path) -> None:
    # Waiting for MessageCompleted would never end: it came before the calls were asked.
    worded = for_http(
        str(turn_running("side", awaiting_approval=True)),
        data_dir=tmp_path,
        api=API,
        context_id="c1",
    )
    assert "session." not in worded
    assert (
        f"POST {API}/contexts/c1/tools/approve or POST {API}/contexts/c1/tools/deny with "
        '{"branch": "side"}' in worded
    )
    assert f"GET {API}/contexts/c1/tools lists them" in worded
    assert "MessageCompleted" not in worded
