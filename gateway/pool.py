"""The pool of model servers one gateway worker spreads predictions over.

The pool's members and the model version they serve come from the served-model file (the
rollout controller writes `servers`; without it, GATEWAY_UPSTREAM_URL alone) and change
together, so an answer is always labelled with the version of the server that gave it.
Each server keeps its own keep-alive `Upstream`. A prediction goes to the server with the
fewest requests outstanding, the first listed on a tie: at low load one server answers, with
its caches warm, instead of each in turn; a server that refuses a connection or answers 5xx
gets no request for GATEWAY_OUT_OF_ROTATION_SECONDS. A prediction that got no answer at all
from the first server (the connection was refused, or dropped before any answer, as when a
server dies) is sent once more to another server: predictions are idempotent, so a client
never sees a server of the pool die. A prediction that was answered (even 5xx) or is being
slow (read timeout) is never sent twice.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gateway import errors
from gateway.errors import GatewayError
from gateway.upstream import Upstream, UpstreamAnswer

NO_ANSWER = (errors.UPSTREAM_UNAVAILABLE, errors.UPSTREAM_ERROR)  # what Upstream.predict raises


@dataclass(eq=False)
class Member:
    """One model server of the pool."""

    client: Upstream
    outstanding: int = 0
    benched_until: float = field(default=float("-inf"))

    def in_rotation(self, now: float) -> bool:
        return now >= self.benched_until


@dataclass(frozen=True)
class Generation:
    """The members serving one model version."""

    members: tuple[Member, ...]
    version: str


class Pool:
    """Model servers behind one gateway worker; `on_state(healthy, total)` hears its size."""

    def __init__(
        self,
        make_client: Callable[[str], Upstream],
        out_of_rotation_seconds: float,
        on_state: Callable[[int, int], None] = lambda healthy, total: None,
    ):
        self._make_client = make_client
        self._out_seconds = out_of_rotation_seconds
        self._on_state = on_state
        self._lock = threading.Lock()
        self._current = Generation((), "")
        self._reported = (-1, -1)

    @property
    def urls(self) -> list[str]:
        return [member.client.url for member in self._current.members]

    @property
    def version(self) -> str:
        return self._current.version

    def use(self, urls: Sequence[str], version: str) -> None:
        """Serve `version` from `urls` from now on; servers already known keep their
        connections."""
        known = {member.client.url: member for member in self._current.members}
        members = tuple(known.get(url) or Member(self._make_client(url)) for url in urls)
        self._current = Generation(members, version)
        self._report()

    def predict(
        self, body: bytes, content_type: str, request_id: str
    ) -> tuple[UpstreamAnswer, str]:
        """POST /invocations to one server (another one if the first gave no answer);
        returns the answer and the version of the server that gave it."""
        generation = self._current
        self._report()  # a server whose time out of rotation ended is back in the count
        tried: set[Member] = set()
        while True:
            member = self._choose(generation.members, tried)
            tried.add(member)
            try:
                answer = member.client.predict(body, content_type, request_id)
            except GatewayError as error:
                if error.code not in NO_ANSWER:
                    raise
                self._bench(member)
                if len(tried) >= min(2, len(generation.members)):
                    raise
                continue
            finally:
                self._release(member)
            if answer.status >= 500:
                self._bench(member)
            elif member.benched_until != float("-inf"):
                member.benched_until = float("-inf")  # back in rotation
                self._report()
            return answer, generation.version

    def ping(self) -> bool:
        """True when at least one server answers GET /ping."""
        return any([member.client.ping() for member in self._current.members])

    def _choose(self, members: Sequence[Member], tried: set[Member]) -> Member:
        if not members:
            raise GatewayError(errors.UPSTREAM_UNAVAILABLE, "no model server is in the pool yet")
        now = time.monotonic()
        candidates = (
            [m for m in members if m not in tried and m.in_rotation(now)]
            or [m for m in members if m not in tried]
            or list(members)
        )
        with self._lock:
            member = min(candidates, key=lambda m: m.outstanding)
            member.outstanding += 1
        return member

    def _release(self, member: Member) -> None:
        with self._lock:
            member.outstanding -= 1

    def _bench(self, member: Member) -> None:
        member.benched_until = time.monotonic() + self._out_seconds
        self._report()

    def _report(self) -> None:
        """Tell `on_state` the pool's size and servers in rotation when they changed."""
        now = time.monotonic()
        members = self._current.members
        state = (sum(m.in_rotation(now) for m in members), len(members))
        if state != self._reported:
            self._reported = state
            self._on_state(*state)
