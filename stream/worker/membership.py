"""A restarted worker asks the broker to drop its killed predecessor from the group before it joins.

A SIGKILLed worker sends no LeaveGroup: the broker keeps it as a member
until its session (`SLUICE_SESSION_TIMEOUT_S`, 6 s) runs out. A worker
restarted on the same data directory starts in about 2.3 s and joins while
that session still runs. The embedded broker (Tansu) then forms the next
generation with the dead member as its leader: the restarted worker's
SyncGroup waits 5 s for an assignment that never comes, is told to rejoin,
and only its second join makes it leader (11.2 s from its first JoinGroup
to its assignment, where one round takes about 3 s; docs/operations.md,
"A restart now rejoins before its dead predecessor's session ends").

So a worker writes its group member id into its data directory at each
assignment (`MemberFile.remember`), reads it once when its process starts,
before any join, and sends one LeaveGroup for that id before its first
join (`MemberFile.take_predecessor`, `leave_for_predecessor`). The broker drops
the dead member at once and the first round forms without it.

It never sends its own member id: Faust subscribes again when its topics
change, and a file read at that moment would hold the id the worker itself
wrote at its first assignment (a LeaveGroup for a live member throws it out
of the group). Nothing here can fail a start: an unreadable file, a broker
that does not answer or refuses (the member is gone already, after a clean
stop) is logged at info and the worker joins as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from aiokafka.protocol.group import LeaveGroupRequest

log = logging.getLogger("sluice.worker")

#: The file in the worker's data directory holding its last group member id.
MEMBER_FILE = "group-member"
#: How long the LeaveGroup (with the coordinator's lookup) may hold up the first join.
LEAVE_TIMEOUT_S = 5.0


class MemberFile:
    """The group member id file of one data directory: this process's id, and its predecessor's.

    Made at process start, before any join: what the file holds then is the
    previous process's id (`take_predecessor` hands it out once).
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / MEMBER_FILE
        self._predecessor = self._read()
        self._written: str | None = None

    def _read(self) -> str | None:
        try:
            member_id = self.path.read_text().strip()
        except OSError:
            return None
        return member_id or None

    def take_predecessor(self) -> str | None:
        """The previous process's member id the first time (None if there was none), None ever after."""
        member_id, self._predecessor = self._predecessor, None
        return member_id

    def remember(self, member_id: str) -> None:
        """Write this process's `member_id` (at each assignment; only when it changed), replacing the file in one step."""
        if not member_id or member_id == self._written:
            return
        part = self.path.with_name(MEMBER_FILE + ".part")
        try:
            part.write_text(member_id + "\n")
            os.replace(part, self.path)
        except OSError as exc:
            log.info("could not write the group member id to %s (%r): a restart will wait out this member's session",
                     self.path, exc)
            return
        self._written = member_id


async def leave_for_predecessor(coordinator, member_id: str | None, timeout_s: float = LEAVE_TIMEOUT_S) -> bool:
    """Send a LeaveGroup for `member_id` through the consumer's group `coordinator`; True if the broker took it.

    Sends nothing for no id or for the coordinator's own member id. Runs in
    the consumer's event loop (the consumer thread's).
    """
    if not member_id or member_id == coordinator.member_id:
        return False
    group = coordinator.group_id
    try:
        await asyncio.wait_for(coordinator.ensure_coordinator_known(), timeout_s)
        response = await asyncio.wait_for(coordinator._send_req(LeaveGroupRequest(group, member_id)), timeout_s)
    except Exception as exc:  # noqa: BLE001 - the join goes on as before: the member's session ends on its own
        log.info("LeaveGroup for the previous member %s of group %s not sent (%r)", member_id, group, exc)
        return False
    if response.error_code:
        log.info("LeaveGroup for the previous member %s of group %s: error code %d (gone already)",
                 member_id, group, response.error_code)
        return False
    log.info("LeaveGroup for the previous member %s of group %s: taken", member_id, group)
    return True
