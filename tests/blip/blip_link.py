"""Test helper: two BLIPProtocol peers connected back to back, frame by frame."""

from __future__ import annotations

from dataclasses import dataclass, field

from fieldsync.blip import BLIPProtocol, Event


@dataclass
class Link:
    a: BLIPProtocol = field(default_factory=BLIPProtocol)
    b: BLIPProtocol = field(default_factory=BLIPProtocol)
    a_events: list[Event] = field(default_factory=list)  # events seen by a
    b_events: list[Event] = field(default_factory=list)
    a_frames: list[bytes] = field(default_factory=list)  # frames sent by a
    b_frames: list[bytes] = field(default_factory=list)

    def step(self) -> bool:
        """Deliver one frame each way (if any); return False when both are idle."""
        moved = False
        frame = self.a.next_frame()
        if frame is not None:
            self.a_frames.append(frame)
            self.b_events += self.b.receive_frame(frame)
            moved = True
        frame = self.b.next_frame()
        if frame is not None:
            self.b_frames.append(frame)
            self.a_events += self.a.receive_frame(frame)
            moved = True
        return moved

    def run(self, max_steps: int = 100_000) -> None:
        for _ in range(max_steps):
            if not self.step():
                return
        raise AssertionError("link did not go idle")
