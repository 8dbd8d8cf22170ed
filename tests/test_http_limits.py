"""Every HTTP request has a total deadline and a bounded read (issue 11, findings 2 and 4).

The servers here are small raw-socket servers on 127.0.0.1 that misbehave on purpose: they
trickle an answer one byte per second (in the status line, the headers or the body), stream a
chunked body that never ends, send a 100 MB body or a gzip bomb. Against each, through the CLI:

- ``request_timeout`` is a total deadline per attempt: the postback (or the ``--check`` API call)
  is cut when it runs out, not when the server stops sending;
- after SIGTERM the process exits within ``min(request_timeout, 10)`` s plus 2 s, whatever the
  server does;
- at most 64 KB of a postback answer and 4 MB of an API answer are read (after decompression):
  the target's peak RSS (``ru_maxrss`` of that child, from ``os.wait4``) stays under 150 MB.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import typing as t
from pathlib import Path

import pytest

from tests.conftest import (
    DEAD_LETTERS_ON_PURPOSE,
    LAUNCHER,
    config_under,
    run_target,
    singer_lines,
    track,
)

PEAK_RSS_LIMIT_MB = 150
MB = 1024 * 1024

Behaviour = t.Callable[[socket.socket, threading.Event], None]


class Misbehaving:
    """A raw HTTP server on 127.0.0.1: reads each request's head, then lets ``behaviour`` write
    (or trickle) the answer. Records when each request arrived and when the client went away."""

    def __init__(self, behaviour: Behaviour) -> None:
        self.behaviour = behaviour
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.stop = threading.Event()
        self.arrived: list[float] = []
        self.gone: list[float] = []
        """When the client closed (a write failed or a read saw EOF), per connection."""
        self.got_request = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(65536)
                if not data:
                    return
                head += data
            self.arrived.append(time.monotonic())
            self.got_request.set()
            try:
                self.behaviour(conn, self.stop)
            except OSError:
                pass
            self.gone.append(time.monotonic())

    def close(self) -> None:
        self.stop.set()
        self.listener.close()


@contextlib.contextmanager
def misbehaving(behaviour: Behaviour) -> t.Iterator[Misbehaving]:
    server = Misbehaving(behaviour)
    try:
        yield server
    finally:
        server.close()


def _client_still_there(conn: socket.socket) -> None:
    """Raise if the client closed its end (it never sends anything more on this connection)."""
    conn.setblocking(False)
    try:
        if conn.recv(1, socket.MSG_PEEK) == b"":
            raise ConnectionResetError("the client closed")
    except BlockingIOError:
        pass
    finally:
        conn.setblocking(True)


def trickle(head: bytes, *, then: bytes = b"x") -> Behaviour:
    """Send ``head``, then ``then`` one byte a second, for as long as the client listens."""

    def behaviour(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(head)
        while not stop.wait(1.0):
            _client_still_there(conn)
            conn.sendall(then)

    return behaviour


TRICKLES = {
    "body": trickle(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\n\r\n"
    ),
    "chunked_body": trickle(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        then=b"1\r\nx\r\n",
    ),
    "headers": trickle(b"HTTP/1.1 200 OK\r\nX-Slow: ", then=b"x"),
    "status_line": trickle(b"HTTP/1.1 ", then=b"2"),
}


def endless_chunked(status: str = "200 OK") -> Behaviour:
    """A chunked body that never ends (64 KB chunks as fast as the client reads them)."""
    chunk = b"%x\r\n%s\r\n" % (65536, b"A" * 65536)

    def behaviour(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(
            f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        sent = 0
        while not stop.is_set() and sent < 512 * MB:  # (a cap, so a broken client ends too)
            conn.sendall(chunk)
            sent += len(chunk)

    return behaviour


def big_body(size: int, status: str = "200 OK") -> Behaviour:
    def behaviour(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(
            f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {size}\r\n\r\n".encode()
        )
        block = b"A" * 65536
        left = size
        while left > 0 and not stop.is_set():
            conn.sendall(block[:left])
            left -= len(block)

    return behaviour


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """~0.5 MB of gzip that inflates to 512 MB (512 gzip members of 1 MB of "A" each)."""
    return gzip.compress(b"A" * MB, compresslevel=9) * 512


def gzip_bomb(payload: bytes, status: str = "200 OK") -> Behaviour:
    def behaviour(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(
            f"HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Encoding: gzip\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        stop.wait(30)  # keep the connection open: the client decides when it has read enough

    return behaviour


# --- running the target as a child whose peak memory we can read --------------------------------


class Child(t.NamedTuple):
    code: int
    stdout: str
    stderr: str
    peak_rss_mb: float


def run_measured(tmp: Path, config: dict, lines: list[str], *, args: t.Sequence[str] = (),
                 timeout: float = 120) -> Child:  # fmt: skip
    """Run the CLI; return its exit code, output and peak RSS (``ru_maxrss`` from ``wait4``)."""
    config_path = tmp / "config.json"
    config_path.write_text(json.dumps(config))
    (tmp / "in.singer").write_text("\n".join(lines) + "\n")
    rss_path = tmp / "maxrss"
    with (
        (tmp / "in.singer").open("rb") as stdin,
        (tmp / "out").open("wb") as out,
        (tmp / "err").open("wb") as err,
    ):
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, str(rss_path), "-m", "target_everflow", "--config", str(config_path), *args],
            stdin=stdin, stdout=out, stderr=err, cwd=tmp, start_new_session=True,
        )  # fmt: skip
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(
                f"the target did not finish within {timeout} s: {(tmp / 'err').read_text()[-2000:]}"
            )
    return Child(
        code, (tmp / "out").read_text(), (tmp / "err").read_text(), int(rss_path.read_text()) / 1024
    )


def live_config(tmp: Path, url: str, **changes: t.Any) -> dict:
    return {
        **config_under(tmp),
        "postback_url": url,
        "max_retries": 0,
        "request_timeout": 5,
        **changes,
    }


def api_config(tmp: Path, url: str, **changes: t.Any) -> dict:
    """--check against ``url`` (the API at ``url/v1``)."""
    return {**config_under(tmp), "api_key": "k-123", "api_url": url.rstrip("/") + "/v1", "advertiser_id": 7,
            "postback_url": "https://t.example.com/", **changes}  # fmt: skip


# --- finding 2: request_timeout is a total deadline; SIGTERM ends the run ----------------------


@pytest.mark.parametrize("where", sorted(TRICKLES))
def test_a_trickling_answer_is_cut_at_request_timeout(tmp_path: Path, where: str) -> None:
    with misbehaving(TRICKLES[where]) as server:
        result = run_target(live_config(tmp_path, server.url, request_timeout=2),
                            singer_lines("orders", [track(1)]), tmp_path, timeout=60)  # fmt: skip
        assert result.code == 3, result.stderr[-2000:]
        assert "no answer within 2 s" in result.stderr
        deadline = time.monotonic() + 10
        while not server.gone and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.gone, "the server is still sending to the client"
        # Cut at the deadline (a generous margin for a loaded machine; the server notices within 1 s).
        assert server.gone[0] - server.arrived[0] < 2 + 5


def _wait_for_exit(proc: subprocess.Popen, seconds: float) -> int | None:
    try:
        return proc.wait(seconds)
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.parametrize("request_timeout", [30, 5])
def test_sigterm_ends_a_run_whose_postback_trickles(tmp_path: Path, request_timeout: int) -> None:
    """request_timeout 30: the grace (10 s) runs out first and the postback is abandoned (its
    socket shut down, nothing waits on it); 5: the postback's own deadline ends it."""
    config_path = tmp_path / "config.json"
    input_path = tmp_path / "in.singer"
    input_path.write_text("\n".join(singer_lines("orders", [track(1)])) + "\n")
    with misbehaving(TRICKLES["body"]) as server, input_path.open("rb") as stdin:
        config_path.write_text(
            json.dumps(live_config(tmp_path, server.url, request_timeout=request_timeout))
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "target_everflow", "--config", str(config_path)],
            stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
        )  # fmt: skip
        try:
            assert server.got_request.wait(60), "the postback never arrived"
            time.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            sent_at = time.monotonic()
            code = _wait_for_exit(proc, min(request_timeout, 10) + 2)
            took = time.monotonic() - sent_at
        finally:
            if proc.poll() is None:
                proc.kill()
            _, stderr = proc.communicate(timeout=30)
    assert code is not None, f"still alive {took:.1f} s after SIGTERM: {stderr.decode()[-2000:]}"
    assert code == 128 + signal.SIGTERM, stderr.decode()[-2000:]
    assert b"Traceback" not in stderr
    if request_timeout > 10:
        assert b"Abandoned 1 postbacks still in flight after 10 s" in stderr


def test_check_against_a_trickling_api_ends_within_its_deadline(tmp_path: Path) -> None:
    with misbehaving(TRICKLES["chunked_body"]) as server:
        result = run_target(api_config(tmp_path, server.url, request_timeout=2), [], tmp_path,
                            args=["--check"], timeout=60)  # fmt: skip
    assert result.code == 1, result.stderr[-2000:]
    assert "no answer within 2s to GET" in result.stderr


def test_close_abandons_a_request_in_flight_at_once() -> None:
    """The client's close() (the run stopping) never waits on a socket: the request in flight
    ends with Abandoned right away, long before its deadline."""
    from target_everflow.transport import Abandoned, HttpClient

    with misbehaving(TRICKLES["body"]) as server:
        client = HttpClient(server.url, timeout=60, body_limit=1024)
        outcome: list[BaseException] = []

        def send() -> None:
            try:
                client.request("GET", "/")
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=send, daemon=True)
        worker.start()
        assert server.got_request.wait(10)
        client.close()
        worker.join(10)
    assert not worker.is_alive(), "the request still waits on its socket after close()"
    assert len(outcome) == 1 and isinstance(outcome[0], Abandoned) and outcome[0].sent


def test_a_deadline_counts_the_whole_attempt() -> None:
    from target_everflow.transport import DeadlineExceeded, HttpClient

    with misbehaving(TRICKLES["headers"]) as server:
        client = HttpClient(server.url, timeout=1.5, body_limit=1024)
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info:
            client.request("GET", "/")
        took = time.monotonic() - started
        client.close()
    assert info.value.sent
    assert took < 1.5 + 5  # (a generous margin: this checks that it ends, not how fast)


PAUSED_CLIENT = """
import sys
from target_everflow.transport import HttpClient
client = HttpClient(sys.argv[1], timeout=2, body_limit=1024)
print("sent", flush=True)
reply = client.request("GET", "/")
print(reply.status_code, reply.content.decode(), flush=True)
"""


def test_a_stopped_process_still_reads_the_answer_that_came_meanwhile(tmp_path: Path) -> None:
    """A process frozen mid-request (SIGSTOP: a frozen VM or container, a debugger) for longer
    than its deadline reads the answer that arrived meanwhile when it resumes: the deadline
    counts time the process could act (the watchdog discounts the stop), so a postback that
    Everflow answered is not mistaken for one that timed out."""

    def answer_soon(conn: socket.socket, stop: threading.Event) -> None:
        time.sleep(0.3)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    with misbehaving(answer_soon) as server:
        proc = subprocess.Popen(
            [sys.executable, "-c", PAUSED_CLIENT, server.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.got_request.wait(30)
            os.kill(proc.pid, signal.SIGSTOP)  # before the answer comes (0.3 s)
            time.sleep(4)  # twice the 2 s deadline; the answer arrives meanwhile
            os.kill(proc.pid, signal.SIGCONT)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert out.splitlines()[-1] == "200 ok"


# --- finding 4: answers are read up to a bound; memory stays flat ------------------------------


@pytest.mark.parametrize("answer", ["endless_chunked", "100_mb_body", "gzip_bomb"])
def test_a_huge_postback_answer_is_read_up_to_64_kb(
    tmp_path: Path, answer: str, bomb: bytes
) -> None:
    behaviour = {
        "endless_chunked": endless_chunked(),
        "100_mb_body": big_body(100 * MB),
        "gzip_bomb": gzip_bomb(bomb, "400 Bad Request"),
    }[answer]
    with misbehaving(behaviour) as server:
        child = run_measured(tmp_path, live_config(tmp_path, server.url, request_timeout=60, **DEAD_LETTERS_ON_PURPOSE),
                             singer_lines("orders", [track(1), track(2)]))  # fmt: skip
    print(f"peak RSS {child.peak_rss_mb:.0f} MB")
    assert child.peak_rss_mb < PEAK_RSS_LIMIT_MB, f"peak RSS {child.peak_rss_mb:.0f} MB"
    assert child.code == 0, child.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    if answer == "gzip_bomb":  # classified by its status and the bounded excerpt
        assert summary["dead_lettered"] == {"http_400": 2}, summary
        dead = (tmp_path / "state" / "dead_letter.jsonl").read_text()
        assert '"reason":"http_400"' in dead and "HTTP 400: AAAA" in dead
    else:
        assert summary["delivered"] == 2, summary


@pytest.mark.parametrize("answer", ["endless_chunked", "gzip_bomb"])
def test_a_huge_api_answer_is_read_up_to_4_mb(tmp_path: Path, answer: str, bomb: bytes) -> None:
    behaviour = endless_chunked() if answer == "endless_chunked" else gzip_bomb(bomb)
    with misbehaving(behaviour) as server:
        child = run_measured(
            tmp_path, api_config(tmp_path, server.url, request_timeout=60), [], args=["--check"]
        )
    print(f"peak RSS {child.peak_rss_mb:.0f} MB")
    assert child.peak_rss_mb < PEAK_RSS_LIMIT_MB, f"peak RSS {child.peak_rss_mb:.0f} MB"
    assert child.code == 1, child.stderr[-2000:]
    assert "with more than 4 MB" in child.stderr


def test_postbacks_never_ask_for_compression() -> None:
    seen: list[bytes] = []

    def record(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    class Recording(Misbehaving):
        def _serve(self, conn: socket.socket) -> None:
            head = conn.recv(65536)
            seen.append(head)
            record(conn, self.stop)
            conn.close()

    from target_everflow.delivery.postback import PostbackClient
    from target_everflow.mapping import Conversion

    server = Recording(record)
    try:
        client = PostbackClient(server.url, verification_token="t", timeout=5)
        conversion = Conversion(key="m:1", stream="s", event="e", event_id=0, transaction_id="t",
                                platform="web", message_id="1", params=[("nid", "1")], record={})  # fmt: skip
        assert client.send(conversion).verdict.value == "accepted"
        client.close()
    finally:
        server.close()
    assert b"\r\naccept-encoding: identity\r\n" in seen[0].lower()
