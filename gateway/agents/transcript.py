"""A call's transcript as the caller lived it: caller turns, and assistant turns cut to what was heard.

Caller turns come from input transcription (each committed turn becomes an item; its transcript
arrives later, asynchronously); assistant turns from the output audio transcript. A barge-in
truncates an assistant item at the offset the caller heard; the text is cut in proportion
(heard audio / audio forwarded, at a word boundary). The server gives no word timings, so the cut
is an estimate, exact at both ends (nothing heard, everything heard) and marked ``truncated``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Role = Literal["caller", "assistant", "keypad"]


@dataclass
class Turn:
    role: Role
    item_id: str
    at_s: float  # seconds into the call when the item began
    text: str = ""
    audio_ms: float | None = None  # assistant: audio forwarded to the caller
    heard_ms: float | None = None  # assistant: where a barge-in cut it
    filler: bool = False  # an out-of-band filler the gateway asked for while a tool ran

    def heard_text(self) -> str:
        if self.heard_ms is None or not self.text:
            return self.text
        if not self.audio_ms or self.heard_ms <= 0:
            return ""
        words = self.text.split()
        keep = round(len(words) * min(1.0, self.heard_ms / self.audio_ms))
        return " ".join(words[:keep])

    def as_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"role": self.role, "at_s": round(self.at_s, 3), "text": self.heard_text()}
        if self.role == "assistant":
            out["item_id"] = self.item_id
            if self.audio_ms is not None:
                out["audio_ms"] = round(self.audio_ms)
            if self.heard_ms is not None:
                out["truncated"] = True
                out["heard_ms"] = self.heard_ms
                out["full_text"] = self.text
            if self.filler:
                out["filler"] = True
        elif self.role == "caller":
            out["item_id"] = self.item_id
        return out


class Transcript:
    def __init__(self) -> None:
        self.turns: list[Turn] = []
        self._items: dict[str, Turn] = {}
        self._deleted: set[str] = set()  # its transcription may still come: ignored

    def _turn(self, role: Role, item_id: str, at_s: float) -> Turn:
        turn = self._items.get(item_id)
        if turn is None:
            turn = self._items[item_id] = Turn(role, item_id, at_s)
            self.turns.append(turn)
        return turn

    def caller_item(self, item_id: str, at_s: float) -> None:
        self._turn("caller", item_id, at_s)

    def forget(self, item_id: str) -> None:
        """The item was deleted from the conversation (noise that did not interrupt)."""
        self._deleted.add(item_id)
        turn = self._items.pop(item_id, None)
        if turn is not None:
            self.turns.remove(turn)

    def caller_text(self, item_id: str, text: str, at_s: float) -> None:
        if item_id in self._deleted:
            return
        self._turn("caller", item_id, at_s).text = text.strip()

    def assistant_item(self, item_id: str, at_s: float, filler: bool = False) -> None:
        self._turn("assistant", item_id, at_s).filler = filler

    def assistant_text(self, item_id: str, text: str, at_s: float) -> None:
        self._turn("assistant", item_id, at_s).text = text.strip()

    def audio_done(self, item_id: str, audio_ms: float) -> None:
        turn = self._items.get(item_id)
        if turn is not None:
            turn.audio_ms = audio_ms

    def truncated(self, item_id: str, heard_ms: int, produced_ms: float | None) -> None:
        turn = self._items.get(item_id)
        if turn is not None:
            turn.heard_ms = heard_ms
            if produced_ms is not None:
                turn.audio_ms = produced_ms

    def keypad(self, text: str, at_s: float) -> None:
        turn = Turn("keypad", "", at_s, text)
        self.turns.append(turn)

    def snapshot(self) -> list[dict[str, Any]]:
        return [t.as_record() for t in sorted(self.turns, key=lambda t: t.at_s) if t.text or t.role != "caller"]
