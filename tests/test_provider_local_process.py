"""The local model's server process: shared, out of the way of the event loop, never orphaned.

Real processes throughout: the provider starts llama.cpp's server as a child of this
test process, and the parent-death test starts a real parent process of its own.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from cm_notebook.errors import PermanentProviderError, TransientProviderError
from cm_notebook.model import Message
from cm_notebook.providers.base import ChatRequest, Finish, StreamChunk, TextDelta
from cm_notebook.providers.local import LocalProvider, unload_local_models

pytestmark = [pytest.mark.anyio, pytest.mark.local_model]

pytest.importorskip("xllamacpp")


def request(text: str = "Name three colours of the rainbow.", **params: object) -> ChatRequest:
    return ChatRequest(messages=[Message(role="user", content=text)], params=params)


async def collect(provider: LocalProvider, req: ChatRequest) -> list[StreamChunk]:
    return [event async for event in provider.stream(req)]


def text_of(events: list[StreamChunk]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def parent_of(pid: int) -> int:
    # Field 4 of /proc/<pid>/stat, after the parenthesised command name.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


def wait_for_exit(pidfd: int, timeout: float) -> bool:
    """Whether the process behind ``pidfd`` exited within ``timeout`` (an event, no polling)."""
    readable, _, _ = select.select([pidfd], [], [], timeout)
    return bool(readable)


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> LocalProvider:
    monkeypatch.delenv("CM_LOCAL_MODEL", raising=False)
    return LocalProvider(n_ctx=2048)


@pytest.fixture
def fresh() -> Iterator[None]:
    """No model server runs when the test starts (and none is left behind)."""
    unload_local_models()
    yield
    unload_local_models()


async def test_event_loop_never_stalls_while_the_model_loads_and_generates(
    provider: LocalProvider, fresh: None
) -> None:
    # A behaviour check, not a benchmark: loading in this process held the GIL for the
    # whole load (0.3 s idle, 6.5 s on a busy machine), and generating here would show
    # as one gap as long as the generation. With the model in a child process, the
    # loop only waits for the OS between ticks; the bound is generous for that.
    gaps: list[float] = []
    done = anyio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not done.is_set():
            await anyio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await provider.load()
        loaded_after = len(gaps)
        events = await collect(provider, request("Write a story about the sea.", max_tokens=64))
        done.set()
    assert events[-1] == Finish("length")
    assert loaded_after > 10  # it ticked all along
    assert len(gaps) > loaded_after + 10
    assert max(gaps) < 0.25, f"the event loop stalled for {max(gaps):.3f} s"


async def test_two_providers_share_one_server_process(provider: LocalProvider) -> None:
    other = LocalProvider(n_ctx=2048)
    async with anyio.create_task_group() as tg:  # two first uses at once start one server
        tg.start_soon(provider.load)
        tg.start_soon(other.load)
    assert provider.server_pid is not None
    assert provider.server_pid == other.server_pid
    assert provider.server_pid != os.getpid()
    assert parent_of(provider.server_pid) == os.getpid()
    texts: dict[str, str] = {}

    async def ask(name: str, which: LocalProvider) -> None:
        texts[name] = text_of(await collect(which, request(max_tokens=12)))

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask, "a", provider)
        tg.start_soon(ask, "b", other)
    assert texts["a"] == texts["b"] != ""  # greedy, served in turn by the one model
    assert provider.server_pid == other.server_pid


PARENT = """
import sys, anyio
from cm_notebook.providers.local import LocalProvider

provider = LocalProvider(n_ctx=512)
anyio.run(provider.load)
print(provider.server_pid, flush=True)
if sys.argv[1] == "wait":
    sys.stdin.read()  # until the test kills this process
"""


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="waits on a pidfd (Linux)")
@pytest.mark.parametrize("end", ["sigkill", "exit"])
def test_server_process_ends_with_its_parent(end: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CM_LOCAL_MODEL", raising=False)
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, "wait" if end == "sigkill" else "exit"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"the parent printed {line!r}"
        server = int(line)
        pidfd = os.pidfd_open(server)  # opened while the server surely still runs
        try:
            if end == "sigkill":
                assert parent_of(server) == parent.pid
                parent.send_signal(signal.SIGKILL)  # no atexit, no cleanup of any kind
            assert parent.wait(60) == (-signal.SIGKILL if end == "sigkill" else 0)
            assert wait_for_exit(pidfd, 30), f"the server process {server} outlived its parent"
        finally:
            os.close(pidfd)
    finally:
        if parent.poll() is None:
            parent.kill()
        parent.wait()
        for pipe in (parent.stdin, parent.stdout):
            if pipe is not None:
                pipe.close()


async def test_killed_server_gives_a_clear_error_and_the_next_request_restarts_it(
    provider: LocalProvider,
) -> None:
    before = text_of(await collect(provider, request(max_tokens=10)))
    first_pid = provider.server_pid
    assert first_pid is not None
    seen: list[str] = []

    async def kill_mid_reply() -> None:
        async for event in provider.stream(request("Write a long story.", max_tokens=1000)):
            if isinstance(event, TextDelta):
                seen.append(event.text)
                if len(seen) == 2:
                    os.kill(first_pid, signal.SIGKILL)

    with pytest.raises(TransientProviderError) as info:
        await kill_mid_reply()
    assert len(seen) >= 2
    message = str(info.value)
    assert f"model server process (pid {first_pid}) was killed by SIGKILL" in message
    assert "while answering" in message
    assert "next request starts it again" in message
    assert provider.server_pid is None  # nothing runs until the next request
    after = text_of(await collect(provider, request(max_tokens=10)))
    assert after == before  # greedy: the new server answers exactly like the old one
    assert provider.server_pid not in (None, first_pid)


async def test_unloading_the_models_mid_reply_is_said_to_be_a_stop_on_request(
    provider: LocalProvider,
) -> None:
    # Not a crash: the reply that was being written says the server was stopped.
    seen: list[str] = []

    async def unload_mid_reply() -> None:
        async for event in provider.stream(request("Write a long story.", max_tokens=1000)):
            if isinstance(event, TextDelta):
                seen.append(event.text)
                if len(seen) == 2:
                    await anyio.to_thread.run_sync(unload_local_models)

    with pytest.raises(TransientProviderError) as info:
        await unload_mid_reply()
    message = str(info.value)
    assert "was stopped on request (unload_local_models()" in message
    assert "while answering" in message
    assert "crash" not in message


async def test_an_interrupt_meant_for_the_kernel_does_not_stop_the_server(
    provider: LocalProvider,
) -> None:
    # Jupyter interrupts a kernel by signalling its whole process group; the server
    # runs in a session of its own, and ignores SIGINT should one reach it anyway.
    await provider.load()
    server = provider.server_pid
    assert server is not None
    assert os.getpgid(server) != os.getpgid(0)
    os.kill(server, signal.SIGINT)
    events = await collect(provider, request(max_tokens=3))
    assert events[-1] == Finish("length")
    assert provider.server_pid == server


async def test_server_that_does_not_start_in_time_is_a_clear_error(
    provider: LocalProvider,
) -> None:
    # A context size of its own, so that no running server is reused.
    slow = LocalProvider(n_ctx=320, start_timeout=0.001)
    with pytest.raises(PermanentProviderError) as info:
        await slow.load()
    message = str(info.value)
    assert "did not become ready within 0.001 s" in message
    assert "start_timeout" in message
    assert slow.server_pid is None


async def test_server_starts_with_an_http_proxy_in_the_environment(
    provider: LocalProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server process checked that it was ready through the proxy in http_proxy
    # (nothing listens on port 9 here), and the load failed after a minute.
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    # A context size of its own, so that a server is started with this environment.
    proxied = LocalProvider(n_ctx=384, start_timeout=30)
    try:
        events = await collect(proxied, request(max_tokens=3))
    finally:
        unload_local_models()
    assert events[-1] == Finish("length")


async def test_hung_server_is_killed_after_a_timeout_and_the_next_request_starts_another(
    provider: LocalProvider,
) -> None:
    # A stopped (SIGSTOP) server was handed to every later request, each failing after
    # the timeout (3 attempts of 600 s by default per send), until unload_local_models().
    # A context size of its own: the server stopped here is no other test's.
    hung = LocalProvider(n_ctx=448, timeout=2)
    await hung.load()
    first = hung.server_pid
    assert first is not None
    os.kill(first, signal.SIGSTOP)
    try:
        with pytest.raises(TransientProviderError) as info:
            await collect(hung, request(max_tokens=4))
        message = str(info.value)
        assert "timed out after 2 s" in message
        assert f"(pid {first}) did not answer a health check" in message
        assert "killed, and the next request starts it again" in message
        assert hung.server_pid is None
        # The 2 s that found the stopped server hung is too short for the first reply of
        # a server just started on a busy machine (that one is slow, not hung).
        hung.timeout = 120.0
        events = await collect(hung, request(max_tokens=4))
        assert events[-1] == Finish("length")
        assert hung.server_pid not in (None, first)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(first, signal.SIGCONT)
        unload_local_models()
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)  # killed and reaped, not left stopped


async def test_server_that_answers_health_after_a_timeout_is_kept(
    provider: LocalProvider,
) -> None:
    # A request that timed out behind long ones: the server answers GET /health (even
    # while generating), so it is busy, not hung; the error says what to do.
    await provider.load()
    server = provider._server
    assert server is not None
    error = await provider._timeout_error(server, received=0)
    assert isinstance(error, TransientProviderError)
    assert "the model server is busy" in str(error)
    # Each remedy said where it goes (a session's send() refuses timeout=).
    assert (
        "give it a larger timeout (provider_options={'timeout': ...} when the session is "
        "created, or LocalProvider(timeout=...)), or call "
        "cm_notebook.providers.local.unload_local_models() to restart it"
    ) in str(error)
    assert server.returncode is None
    assert provider.server_pid == server.pid


def server_children() -> set[int]:
    """The model server processes that are children of this process."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if parent_of(int(entry.name)) != os.getpid():
                    continue
                command = (entry / "cmdline").read_bytes()
            except (OSError, ValueError, IndexError):
                continue  # exited meanwhile
            if b"cm_notebook.providers._local_server" in command:
                found.add(int(entry.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
async def test_cancel_while_the_model_loads_ends_the_request_at_once(
    provider: LocalProvider,
) -> None:
    # The load ran in a worker thread that a cancel could not stop: turn.cancel() and
    # session.close() waited for the load, and a hung load until start_timeout.
    before = server_children()
    loading = LocalProvider(n_ctx=576, start_timeout=15)  # a server of its own
    child: int | None = None
    started = time.monotonic()
    with anyio.move_on_after(30) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(loading.load)
            for _ in range(2000):  # up to 10 s for the server process to appear
                new = server_children() - before
                if new:
                    break
                await anyio.sleep(0.005)
            (child,) = new
            os.kill(child, signal.SIGSTOP)  # a load that hangs
            cancelled_at = time.monotonic()
            tg.cancel_scope.cancel()
    try:
        assert not scope.cancelled_caught, "the load was not cancelled within 30 s"
        assert time.monotonic() - cancelled_at < 2.0
        assert loading.server_pid is None
    finally:
        if child is not None:
            os.kill(child, signal.SIGKILL)  # the abandoned load then fails at once
    assert time.monotonic() - started < 10


def process_state(pid: int) -> str | None:
    """The state letter of process ``pid`` (Z: a zombie), None once it is reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return None


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
async def test_server_that_dies_while_idle_is_reaped_at_once(provider: LocalProvider) -> None:
    # It stayed a zombie until the next request polled it.
    idle = LocalProvider(n_ctx=640)  # a server of its own
    await idle.load()
    server = idle.server_pid
    assert server is not None
    os.kill(server, signal.SIGKILL)
    for _ in range(500):  # up to 5 s
        state = process_state(server)
        if state is None:
            break
        await anyio.sleep(0.01)
    else:
        pytest.fail(f"the dead server process {server} was not reaped (state {state})")
    assert idle.server_pid is None
    events = await collect(idle, request(max_tokens=3))  # and the next request restarts it
    assert events[-1] == Finish("length")
    unload_local_models()
