"""The Singer message reader: fast, lenient where leniency loses nothing, precise when it stops.

Parsing: ``msgspec`` first (several times faster than ``json.loads``, same result for valid JSON:
floats as ``Decimal``, integers of any size), on the raw bytes of each line when the input is a
file or a pipe (no separate UTF-8 decoding pass). A line msgspec refuses is parsed again with
``json.loads``, which also takes what some taps write and msgspec does not: ``NaN`` /
``Infinity`` (Python's ``json.dumps`` default), lone UTF-16 surrogate escapes (``"\\ud800"``) and
integers of more than 4,300 digits (kept as ``Decimal``). So no record is refused that the SDK's
default reader would take.

Leniency that loses nothing: blank lines are skipped, and a UTF-8 byte-order mark before the
first message is ignored.

Everything else that is not a Singer message stops the run with ``InputError`` (exit code 2)
whose message names the line number and what is wrong with it, without a traceback: a line that
is not JSON or is cut off (the tap stopped mid-write), not UTF-8, nested too deeply to read, not
a JSON object, without a known ``type``, or a message without what its type requires (a RECORD's
``stream`` and ``record``, a SCHEMA's ``schema`` with ``properties``, a STATE's ``value``). A
RECORD before its stream's SCHEMA and the SDK's own checks are reported the same way. The
target settles the records read before that line and emits the last STATE they cover (see
``TargetEverflow.main``).

Waiting: a pipe (a tap's standard output), FIFO, socket or terminal is waited on with ``poll``,
never longer than the reader's ``due`` hook asks, so that the target can deliver a batch by age
while the tap sends nothing (``max_batch_age_seconds``). Only complete lines are parsed: a line
whose newline has not come yet waits for it. The wait is interrupted by SIGTERM/SIGINT like a
blocking read. A regular file or an in-memory stream is read straight through.
"""

from __future__ import annotations

import io
import json
import math
import os
import select
import stat
import sys
import typing as t
from collections import Counter, defaultdict
from decimal import Decimal
from itertools import islice

from singer_sdk.exceptions import InvalidJSONSchema, RecordsWithoutSchemaException
from singer_sdk.singerlib.encoding.base import GenericSingerReader, SingerMessageType
from singer_sdk.singerlib.exceptions import InvalidInputLine

from target_everflow.errors import InputError, Terminated
from target_everflow.text import clip, first_line, kind_of

try:
    import msgspec
    from singer_sdk.contrib.msgspec import decoder as _decoder
except ImportError:  # pragma: no cover - msgspec is a dependency; this keeps the target usable
    msgspec = None  # type: ignore[assignment]  # the module, absent
    _decoder = None  # type: ignore[assignment]  # likewise

_MSGSPEC_REFUSES: tuple[type[BaseException], ...] = (
    (msgspec.DecodeError, UnicodeError, RecursionError) if msgspec is not None else ()
)
_BOM = "\ufeff"
_MAX_INT_DIGITS = 4000
"""Longer integers are read as ``Decimal`` (Python refuses to parse ints past 4,300 digits)."""
KNOWN_TYPES = frozenset(m.value for m in SingerMessageType)
_SHOWN = 80
_CHUNK = 1 << 16
"""Bytes read from a pipe at a time (one ``read(2)``)."""
_BLOCK_LINES = 1000
"""Lines of a file read between two calls of ``due``."""
_IDLE_WAIT = 1.0
"""The longest single wait for input, in seconds (then ``due`` is asked again)."""


def _parse_int(text: str) -> int | Decimal:
    return int(text) if len(text) <= _MAX_INT_DIGITS else Decimal(text)


def _shown_line(text: str | bytes) -> str:
    """A broken input line as its error shows it: quoted, clipped."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return repr(clip(text.rstrip("\r\n"), _SHOWN))


class BrokenLine(InputError, InvalidInputLine):
    """A line that is not a Singer message (exit 2); also the SDK's ``InvalidInputLine``."""


class RecordBeforeSchema(InputError, RecordsWithoutSchemaException):
    """A RECORD before its stream's SCHEMA (exit 2); also the SDK's exception for it."""


def broken(number: int, problem: str, kind: type[InputError] = BrokenLine) -> InputError:
    """The error for a broken line: names the line and what is wrong with it."""
    return kind(f"The Singer input is broken at line {number}: {problem}")


class SegmentReader(GenericSingerReader[str]):
    """Reads Singer messages, counting lines; see the module docstring.

    ``line_number`` is the number of the line being processed (1-based, blank lines counted),
    so that whatever handles a message can name its line.
    """

    default_input = sys.stdin

    def __init__(self) -> None:
        super().__init__()
        self.line_number = 0
        self.due: t.Callable[[], float | None] | None = None
        """Called before the reader waits for input (and every ``_BLOCK_LINES`` lines of a
        file): does what is due, returns the seconds until something is due again (``None``:
        nothing is). The reader waits for input at most that long before calling it again, so
        what it does happens on time even while no line comes. The target drains its batches
        by age here (``max_batch_age_seconds``)."""
        self.stop_signal: int | None = None
        """Set by the target's signal handler: no line is read after it."""
        self.before: t.Callable[[str, dict], bool] | None = None
        """Called with each message's type and message before the SDK handles it; False: the
        hook has handled it (the SDK never sees it)."""
        self.after: t.Callable[[str, dict], None] | None = None
        """Called with each message's type and message after the SDK handled it."""

    # -- one line --------------------------------------------------------------------------

    def deserialize_json(self, line: str | bytes) -> dict:
        """Parse one line (see the module docstring); raise ``InputError`` naming the line."""
        if _decoder is not None:
            try:
                message = _decoder.decode(line)
            except _MSGSPEC_REFUSES:
                pass
            else:
                if isinstance(message, dict) and not _keys_once(line, message):
                    text = line.decode("utf-8") if isinstance(line, bytes) else line
                    try:
                        repeated = _loads(text)[1]
                    except (ValueError, RecursionError):  # (the exact check cannot tell)
                        repeated = None
                    if repeated is not None:
                        raise _repeated(self.line_number, repeated)
                return message
        return self._parse_leniently(line)

    def _parse_leniently(self, line: str | bytes) -> t.Any:
        number = self.line_number
        if isinstance(line, bytes):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise broken(
                    number,
                    f"it is not UTF-8 text (byte 0x{line[exc.start]:02x} at position {exc.start + 1} "
                    "of the line); Singer messages are UTF-8 JSON: check the tap's encoding",
                ) from None
        else:
            text = line
        if number == 1 and text.startswith(_BOM):
            text = text[1:]
        try:
            message, repeated = _loads(text)
        except RecursionError:
            raise broken(
                number, "it is JSON nested too deeply to read (about 1,000 levels)"
            ) from None
        except ValueError as exc:  # JSONDecodeError is a ValueError
            if (
                not text.endswith("\n")
                and isinstance(exc, json.JSONDecodeError)
                and (exc.pos >= len(text.rstrip()) or "Unterminated" in exc.msg)
            ):
                problem = (
                    "the input ends in the middle of a message (the last line is cut off: did "
                    "the tap stop while writing it?)"
                )
            elif isinstance(exc, json.JSONDecodeError):
                problem = f"it is not JSON ({exc.msg} at column {exc.colno})"
            else:
                problem = f"it is not JSON ({exc})"
            raise broken(number, f"{problem}: {_shown_line(text)}") from None
        if repeated is not None:
            raise _repeated(number, repeated)
        return message

    def check_message(self, message: t.Any) -> str:
        """The message's type, or ``InputError`` when it is not a Singer message."""
        number = self.line_number
        if not isinstance(message, dict):
            raise broken(
                number,
                f'it is {kind_of(message)}, not a Singer message (a JSON object with a "type")',
            )
        kind = message.get("type")
        if kind not in KNOWN_TYPES:
            if "type" not in message:
                raise broken(number, 'the message has no "type"')
            shown = (
                repr(kind) if isinstance(kind, str) and len(kind) <= 40 else f"({kind_of(kind)})"
            )
            raise broken(
                number,
                f"unknown message type {shown} (a Singer message is a RECORD, SCHEMA, STATE or "
                "ACTIVATE_VERSION); nothing after it was read, so that no record it may carry is "
                "lost unnoticed",
            )
        if kind in ("RECORD", "SCHEMA", "ACTIVATE_VERSION", "BATCH"):
            stream = message.get("stream")
            if not isinstance(stream, str) or not stream:
                what = 'no "stream"' if stream is None else f'a "stream" that is {kind_of(stream)}'
                raise broken(number, f"the {kind} message has {what}, not a stream name")
        if kind == "RECORD" and "record" not in message:
            raise broken(number, f'the RECORD of stream {message["stream"]!r} has no "record"')
        if kind == "SCHEMA":
            schema = message.get("schema")
            if not isinstance(schema, dict) or not isinstance(schema.get("properties"), dict):
                problem = (
                    f'"schema" is {kind_of(schema)}, not a JSON schema object'
                    if not isinstance(schema, dict)
                    else 'its "schema" has no "properties" object'
                )
                raise broken(number, f"the SCHEMA of stream {message['stream']!r}: {problem}")
            keys = message.get("key_properties")
            if keys is not None and (
                not isinstance(keys, list) or not all(isinstance(k, str) for k in keys)
            ):
                raise broken(
                    number,
                    f'the SCHEMA of stream {message["stream"]!r}: "key_properties" must be a '
                    "list of column names",
                )
        if kind == "STATE" and "value" not in message:
            raise broken(number, 'the STATE message has no "value"')
        return kind

    # -- the stream ------------------------------------------------------------------------

    def process_lines(
        self,
        file_input: t.IO[str] | None,
        callbacks: dict[str, t.Callable[[dict], None]],
    ) -> t.Counter[str]:
        stats: dict[str, int] = defaultdict(int)
        source = file_input or self.default_input
        number = 0
        for block in self._blocks(source):
            for line in block:
                if self.stop_signal is not None:  # a signal that could not stop the run at once
                    raise Terminated(self.stop_signal)
                number += 1
                self.line_number = number
                try:
                    message = self.deserialize_json(line)
                except InputError:
                    if not line.strip():
                        continue  # a blank line is no message: nothing is lost skipping it
                    raise
                kind = self.check_message(message)
                try:
                    if self.before is None or self.before(kind, message):
                        callbacks[kind](message)
                        if self.after is not None:
                            self.after(kind, message)
                except InputError:
                    raise
                except RecordsWithoutSchemaException as exc:
                    raise broken(number, first_line(exc), RecordBeforeSchema) from None
                except InvalidJSONSchema as exc:  # (only validate_records compiles the schema)
                    raise broken(
                        number,
                        f"the SCHEMA of stream {message.get('stream')!r} is not a valid JSON "
                        "schema, so records cannot be validated against it (validate_records): "
                        f"{first_line(exc)}",
                    ) from None
                except InvalidInputLine as exc:
                    raise broken(number, first_line(exc)) from None
                stats[kind] += 1
        return Counter(**stats)

    # -- waiting for input -----------------------------------------------------------------

    def _due(self) -> float | None:
        return self.due() if self.due is not None else None

    def _blocks(self, source: t.Any) -> t.Iterator[t.Iterable[str | bytes]]:
        """The input's lines, a block at a time; ``due`` is called before each block.

        A pipe, FIFO, socket or terminal is waited on with ``poll`` for at most what ``due``
        returns, and read a chunk at a time; only complete lines are handed on (a line the tap
        has not finished writing waits for its newline, or for the end of input). Anything else
        (a regular file, an in-memory stream) never makes the reader wait: its lines come in
        blocks of ``_BLOCK_LINES``.
        """
        stream = _lines(source)
        fd = _pollable_fd(stream)
        if fd is not None:
            yield from self._polled_blocks(stream, fd)
            return
        try:
            lines = iter(stream)
        except TypeError:  # a buffer wrapper that cannot iterate (click's, for `--input -`)
            lines = iter(source)
        while True:
            self._due()
            block = list(islice(lines, _BLOCK_LINES))
            if not block:
                return
            yield block

    def _polled_blocks(self, stream: t.Any, fd: int) -> t.Iterator[t.Iterable[bytes]]:
        # read1: the bytes the BufferedReader already holds first, then at most one read(2) of
        # at most _CHUNK bytes (a raw stream's read is one read(2) already).
        read = getattr(stream, "read1", None) or stream.read
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        partial: list[bytes] = []  # the start of a line whose newline has not come yet
        while True:
            if self.stop_signal is not None:  # a signal whose batch settled: stop waiting
                raise Terminated(self.stop_signal)
            wait = self._due()
            wait = _IDLE_WAIT if wait is None else min(max(wait, 0.0), _IDLE_WAIT)
            # A signal interrupts the wait: its handler runs, and what it raises ends the read.
            if not poller.poll(math.ceil(wait * 1000)):
                continue
            chunk = read(_CHUNK)
            if chunk is None:  # a non-blocking descriptor with nothing to read after all
                continue
            if not chunk:  # end of input: a last line without a newline is read as it is
                if partial:
                    yield [b"".join(partial)]
                return
            end = chunk.rfind(b"\n") + 1
            if not end:
                partial.append(chunk)
                continue
            complete = chunk[:end]
            if partial:
                partial.append(complete)
                complete = b"".join(partial)
            partial = [chunk[end:]] if end < len(chunk) else []
            yield io.BytesIO(complete)  # its lines, each with its newline


def _loads(text: str) -> tuple[t.Any, str | None]:
    """``json.loads`` as the reader parses (numbers exactly as written), and the first key the
    outermost object names more than once (None when it names each once)."""
    outermost: list[list[tuple[str, t.Any]]] = []

    def pairs(items: list[tuple[str, t.Any]]) -> dict:
        outermost[:] = [items]  # objects close inside out: the outermost one comes last
        return dict(items)

    message = json.loads(text, parse_float=Decimal, parse_int=_parse_int, object_pairs_hook=pairs)
    if isinstance(message, dict) and outermost and len(outermost[0]) != len(message):
        seen: set[str] = set()
        for key, _ in outermost[0]:
            if key in seen:
                return message, key
            seen.add(key)
    return message, None


def _repeated(number: int, key: str) -> InputError:
    """The error for a message that names a key twice (``{"type": "RECORD", "type": "STATE"}``:
    JSON readers silently keep the last one)."""
    shown = repr(key) if len(key) <= 40 else repr(key[:37] + "...")
    return broken(
        number,
        f"the message has the key {shown} more than once; which value is meant is ambiguous, "
        "so the line is not read (a Singer message names each of its keys once)",
    )


_RAW_MESSAGE = msgspec.json.Decoder(dict[str, msgspec.Raw]) if msgspec is not None else None
_KEY_LITERALS: dict[str, bytes] = {}
"""``"key"`` as UTF-8 bytes, for the few keys Singer messages have (bounded)."""


_KEYS_WRITTEN: dict[tuple[str, ...], int] = {}
"""The bytes a message's keys take as JSON string literals, for the few key lists Singer
messages have (bounded)."""


def _key_literal(key: str) -> bytes:
    literal = _KEY_LITERALS.get(key)
    if literal is None:
        literal = b'"' + key.encode("utf-8", "surrogatepass") + b'"'
        if len(_KEY_LITERALS) < 256:
            _KEY_LITERALS[key] = literal
    return literal


def _keys_once(line: str | bytes, message: dict) -> bool:
    """Whether the message object names each of its keys once, as far as a cheap check can tell.

    Its keys and values as written (msgspec's ``Raw``, a shallow pass) are laid out again,
    compactly or with Python's default separators; the line must be exactly that. A key written
    twice makes the line longer than its decoded keys and values can account for (a key's
    literal is never shorter than its plain UTF-8 form): compact lines are decided by their
    length alone. False means "not sure" (a repeated key, or another layout): the exact, slower
    check then decides.
    """
    data = line if isinstance(line, bytes) else line.encode("utf-8", "surrogatepass")
    try:
        top = _RAW_MESSAGE.decode(data)
    except _MSGSPEC_REFUSES:
        return False
    n = len(top)
    if n != len(message) or n == 0:
        return False
    end = len(data) - (data.endswith(b"\n") + data.endswith(b"\r\n"))
    keys = tuple(top)
    written = _KEYS_WRITTEN.get(keys)
    if written is None:
        written = sum(len(_key_literal(key)) for key in keys)
        if len(_KEYS_WRITTEN) < 256:
            _KEYS_WRITTEN[keys] = written
    compact = 1 + 2 * n + written + sum(map(len, top.values()))
    if end == compact:
        return True
    if end != compact + 2 * n - 1:
        return False
    literals = [_key_literal(key) for key in keys]
    pairs = [literal + b": " + bytes(raw) for literal, raw in zip(literals, top.values())]
    return data[:end] == b"{" + b", ".join(pairs) + b"}"


def _lines(source: t.Any) -> t.Iterable[str | bytes]:
    """The lines of the input: the raw bytes beneath a text file or pipe, else its text lines."""
    buffer = getattr(source, "buffer", None)
    if isinstance(source, io.TextIOWrapper) and buffer is not None:
        return buffer
    return source


def _pollable_fd(stream: t.Any) -> int | None:
    """The descriptor of a binary pipe, FIFO, socket or terminal, else ``None``.

    Regular files are never waited on (they are always readable); neither are text streams
    (their decoded text may hold lines ``poll`` cannot see) nor anything without a descriptor.
    """
    binary = isinstance(stream, (io.BufferedIOBase, io.RawIOBase)) or hasattr(stream, "read1")
    if not binary or isinstance(stream, io.TextIOBase):
        return None
    try:
        fd = stream.fileno()
        mode = os.fstat(fd).st_mode
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return None
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode):
        return fd
    return None


__all__ = ["BrokenLine", "RecordBeforeSchema", "SegmentReader", "broken"]
