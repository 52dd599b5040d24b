"""The outgoing multiplexer queue: round-robin, with the BLIP spec's urgent-message placement."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

from .outgoing import OutgoingMessage

__all__ = ["Outbox"]


class Outbox:
    """Messages ready to send a frame; the head sends next, then goes back into the queue.

    Normal messages go to the tail (round robin). An urgent message goes right after the last
    urgent message in the queue, leaving one normal message in between if there is one after it
    (so normal messages are not starved), or after the first message if there is no urgent one.
    A new urgent message (nothing sent yet) never overtakes a message that has not started yet,
    so messages begin in the order they were queued.
    """

    def __init__(self) -> None:
        self._queue: deque[OutgoingMessage] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def __bool__(self) -> bool:
        return bool(self._queue)

    def __iter__(self) -> Iterator[OutgoingMessage]:
        return iter(self._queue)

    def push(self, msg: OutgoingMessage) -> None:
        """Queue ``msg`` at the place its urgency and progress call for."""
        queue = self._queue
        index = len(queue)
        if msg.urgent and len(queue) > 1:
            is_new = msg.is_new
            i = len(queue)
            while True:
                i -= 1
                other = queue[i]
                if other.urgent:
                    if i + 1 != len(queue):
                        i += 1  # leave one normal message between the two urgent ones
                    break
                if is_new and other.is_new:
                    break
                if i == 0:
                    break
            index = i + 1
        queue.insert(index, msg)

    def pop(self) -> OutgoingMessage | None:
        """Remove and return the head of the queue, or None if empty."""
        return self._queue.popleft() if self._queue else None

    def peek(self) -> OutgoingMessage | None:
        """The head of the queue, or None if empty."""
        return self._queue[0] if self._queue else None

    def find(self, number: int, is_response: bool) -> OutgoingMessage | None:
        """The queued request (or reply) with this number, ignoring ACKs."""
        for msg in self._queue:
            if msg.number == number and not msg.is_ack and msg.is_response == is_response:
                return msg
        return None

    def remove(self, msg: OutgoingMessage) -> None:
        self._queue.remove(msg)
