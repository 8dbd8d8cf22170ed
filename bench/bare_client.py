"""The bare client: the delivery benchmark's floor of CPU per postback.

It sends the same requests the target sends (the planned postbacks of a dry run on the same
input, with the real verification token) to the same receiver, ``--concurrency`` at a time,
with the same HTTP library at its plainest: one urllib3 connection per thread (the class the
target's transport uses), one ``GET`` each, the whole answer read. No ledger, no retries, no
deadline watchdog, no accounting beyond counting the 2xx answers::

    python bench/bare_client.py --url http://127.0.0.1:PORT --targets targets.txt --concurrency 128

``targets.txt`` holds one request target (path and query, already percent-encoded) a line;
``bench/run.py`` writes it from a dry run's planned postbacks. Prints ``{"sent": n, "ok": n}``
and exits 1 unless every answer was a 2xx.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import threading
import typing as t
from urllib.parse import quote, urlsplit

import urllib3.connection

HEADERS = {
    "User-Agent": "target-everflow",
    "Accept": "application/json, */*",
    "Accept-Encoding": "identity",
}
"""The headers the target's postback client sends."""


def request_targets(planned: t.Iterable[str], token: str) -> list[str]:
    """The request targets (path and query) of a dry run's planned-postback lines, with the
    real token where the dry run shows ``***`` (the token is the URL's last parameter)."""
    shown = "verification_token=" + quote("***", safe="")
    real = "verification_token=" + quote(token, safe="")
    targets = []
    for line in planned:
        if not line.strip():
            continue
        url = json.loads(line)["url"]
        if url.endswith(shown):
            url = url[: -len(shown)] + real
        parts = urlsplit(url)
        targets.append((parts.path or "/") + (f"?{parts.query}" if parts.query else ""))
    return targets


def send_all(host: str, port: int, targets: list[str], concurrency: int) -> tuple[int, int]:
    """Send every target, ``concurrency`` threads each with its own keep-alive connection;
    return (sent, answered 2xx)."""
    todo = collections.deque(targets)
    counts = [0, 0]
    lock = threading.Lock()

    def work() -> None:
        conn = urllib3.connection.HTTPConnection(host, port, timeout=30)
        sent = ok = 0
        try:
            while True:
                try:
                    target = todo.popleft()
                except IndexError:
                    break
                conn.request("GET", target, headers=HEADERS)
                response = conn.getresponse()
                response.read()
                sent += 1
                ok += 200 <= response.status < 300
        finally:
            conn.close()
            with lock:
                counts[0] += sent
                counts[1] += ok

    threads = [threading.Thread(target=work) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts[0], counts[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the receiver's base URL (its host and port)")
    parser.add_argument("--targets", required=True, help="request targets, one a line")
    parser.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args()
    where = urlsplit(args.url)
    with open(args.targets, encoding="utf-8") as f:
        targets = f.read().splitlines()
    sent, ok = send_all(where.hostname or "127.0.0.1", where.port or 80, targets, args.concurrency)
    print(json.dumps({"sent": sent, "ok": ok}))
    return 0 if ok == sent == len(targets) else 1


if __name__ == "__main__":
    sys.exit(main())
