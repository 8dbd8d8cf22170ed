"""Claiming keys: who owns a claim, whether its owner is gone, and the claim transaction.

Claims are atomic: the key is the primary key, new keys are claimed with ``INSERT ... ON
CONFLICT DO NOTHING ... RETURNING`` and stale claims are taken over with a conditional
``UPDATE ... WHERE owner = <the stale owner> ... RETURNING``. There is no check-then-insert, so
two processes sharing one PostgreSQL ledger never both own a key.
"""

from __future__ import annotations

import collections
import logging
import os
import pathlib
import socket
from collections.abc import Callable, Mapping
from typing import Any

from target_everflow.ledger.backend import Backend, Identity
from target_everflow.ledger.base import DELIVERED_STATUS, HELD_STATUS, SENDING_STATUS, ClaimStatus

OwnerIsDead = Callable[[str, str], bool]
"""``(owner, scope) -> bool``: whether that owner's process is known to be gone."""


def machine_scope() -> str:
    """What must match, besides the hostname, for a pid to be meaningful to us.

    Containers using the host's network (``--network host``, ``hostNetwork: true``) share the
    hostname but not the PID namespace; a pid from another namespace would look dead to us. A
    reboot also recycles pids. So the fast "owner's pid is gone" takeover applies only when the
    boot id and the PID namespace match too (where they cannot be read, both sides record "").
    """
    try:
        boot = pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except (OSError, AttributeError):
        pidns = ""
    return f"{boot}|{pidns}" if (boot or pidns) else ""


def _pid_alive(pid: int) -> bool:
    """False only when we are sure the process is gone."""
    if pid <= 0 or os.name != "posix":  # on Windows os.kill(pid, 0) would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: exists under another user
        return True
    return True


def _parse_owner(owner: str) -> tuple[str, int] | None:
    host, sep, _random = owner.rpartition(":")
    if not sep:
        return None
    host, sep, pid = host.rpartition(":")
    if not sep or not pid.isdigit():
        return None
    return host, int(pid)


def owner_is_dead(owner: str, scope: str, my_scope: str) -> bool:
    """True when ``owner`` ran on this machine (same hostname, and ``scope`` is ours:
    ``my_scope``) and its process no longer exists."""
    parsed = _parse_owner(owner)
    if parsed is None:
        return False
    host, pid = parsed
    if host != socket.gethostname() or scope != my_scope or pid == os.getpid():
        return False
    return not _pid_alive(pid)


def claim_rows(
    backend: Backend,
    who: Identity,
    cur: Any,
    keys: list[str],
    metadata: Mapping[str, Mapping[str, Any]] | None,
    *,
    owner_is_dead: OwnerIsDead,
    log: logging.Logger,
) -> dict[str, ClaimStatus]:
    """Claim ``keys`` (sorted, distinct) for ``who`` inside the caller's transaction: new keys
    are inserted, claims of owners that are gone (``owner_is_dead``) or whose lease expired are
    taken over. ``metadata`` is written to the rows made ours (claimed or in doubt)."""
    answers = _claim(backend, who, cur, keys, owner_is_dead, log)
    if metadata:
        ours = sorted(
            k
            for k, s in answers.items()
            if s in (ClaimStatus.CLAIMED, ClaimStatus.TAKEN_OVER) and k in metadata
        )
        if ours:
            backend.write_metadata(cur, who, [(k, metadata[k]) for k in ours])
    return answers


def _claim(
    backend: Backend,
    who: Identity,
    cur: Any,
    keys: list[str],
    owner_is_dead: OwnerIsDead,
    log: logging.Logger,
) -> dict[str, ClaimStatus]:
    now = backend.now(cur)
    lease_until = now + who.lease_seconds
    out: dict[str, ClaimStatus] = {}
    dead_cache: dict[tuple[str, str], bool] = {}
    todo = keys
    for _ in range(3):
        inserted = backend.insert_claims(cur, who, todo, now, lease_until)
        for k in inserted:
            out[k] = ClaimStatus.CLAIMED
        rest = [k for k in todo if k not in inserted]
        if not rest:
            return out
        cur.execute(
            backend.sql(
                "SELECT delivery_key, status, owner, owner_scope, lease_until"
                " FROM {t} WHERE delivery_key {in_keys}"
            ),
            (backend.keys_param(rest),),
        )
        rows = {r[0]: r[1:] for r in cur.fetchall()}
        takeovers: dict[tuple[str, bool], list[str]] = collections.defaultdict(list)
        was_sending: dict[str, bool] = {}
        missing: list[str] = []
        for k in rest:
            row = rows.get(k)
            if row is None:  # released by its owner after our INSERT saw it: insert again
                missing.append(k)
                continue
            status, owner, scope, row_lease = row
            if status == DELIVERED_STATUS:
                out[k] = ClaimStatus.DELIVERED
            elif status == HELD_STATUS:
                out[k] = ClaimStatus.HELD
            elif owner == who.owner:  # our own claim from an earlier call, still in flight
                out[k] = ClaimStatus.BUSY
            else:
                cache_key = (owner, scope or "")
                if cache_key not in dead_cache:
                    dead_cache[cache_key] = owner_is_dead(owner, scope or "")
                dead = dead_cache[cache_key]
                if dead or row_lease is None or row_lease <= now:
                    takeovers[(owner, dead)].append(k)
                    was_sending[k] = status == SENDING_STATUS
                else:
                    out[k] = ClaimStatus.BUSY
        for (old_owner, dead), ks in takeovers.items():
            # Compare-and-swap on the owner; the lease is re-checked by the database, so a
            # concurrent heartbeat or takeover makes this a no-op (-> BUSY, claim later).
            cur.execute(
                backend.sql(
                    "UPDATE {t} SET status = 'pending', owner = ?, owner_scope = ?,"
                    " lease_until = ?, updated_at = ?"
                    " WHERE delivery_key {in_keys} AND status IN ('pending', 'sending')"
                    " AND {owner} = ?"
                    " AND (? OR lease_until IS NULL OR lease_until <= ?)"
                    " RETURNING delivery_key"
                ),
                (
                    who.owner,
                    who.scope,
                    lease_until,
                    now,
                    backend.keys_param(ks),
                    old_owner,
                    dead,
                    now,
                ),
            )
            taken = {r[0] for r in cur.fetchall()}
            for k in ks:
                if k not in taken:
                    out[k] = ClaimStatus.BUSY
                elif was_sending[k]:
                    out[k] = ClaimStatus.TAKEN_OVER
                else:  # claimed by the dead run but never sent: an ordinary claim
                    out[k] = ClaimStatus.CLAIMED
            if taken:
                doubtful = sum(1 for k in taken if was_sending[k])
                log.info(
                    "ledger: took over %d claim(s) of %s (%s), %d of them in doubt",
                    len(taken),
                    old_owner,
                    "process gone" if dead else "lease expired",
                    doubtful,
                )
        if not missing:
            return out
        todo = missing
    for k in todo:  # still racing with another process: let the caller claim again
        out[k] = ClaimStatus.BUSY
    return out


def change_own_claims(
    backend: Backend, who: Identity, cur: Any, set_sql: str, keys: list[str], *, now: bool
) -> set[str]:
    """``UPDATE {t} SET <set_sql>`` (or DELETE when ``set_sql`` is empty) of ``who``'s pending
    or sending claims of ``keys`` (sorted, distinct), in the caller's transaction; the keys
    changed. ``now``: the ledger time is the first parameter of ``set_sql``."""
    head = f"UPDATE {{t}} SET {set_sql}" if set_sql else "DELETE FROM {t}"
    cur.execute(
        backend.sql(
            f"{head} WHERE delivery_key {{in_keys}} AND status IN ('pending', 'sending')"
            " AND {owner} = ? RETURNING delivery_key"
        ),
        ((backend.now(cur),) if now else ()) + (backend.keys_param(keys), who.owner),
    )
    return {r[0] for r in cur.fetchall()}
