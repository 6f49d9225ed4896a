"""Which model response is active, which items belong to it, and what a barge-in interrupted.

Late deltas of an interrupted response must never reach the caller, and a response must be
cancelled once, by whoever cancels it (the gateway, or the server's own VAD). Everything here is
forgotten at ``response.done``: no more deltas can come for that response (bounded memory).
"""
from __future__ import annotations


class Responses:
    __slots__ = ("active", "cancel_requested", "interrupted_items", "interrupted_responses", "item_response")

    def __init__(self) -> None:
        self.active: str | None = None
        self.cancel_requested: str | None = None  # response we (or the server's VAD) are cancelling
        self.item_response: dict[str, str] = {}
        self.interrupted_responses: set[str] = set()
        self.interrupted_items: set[str] = set()

    def interrupted(self, item_id: str) -> bool:
        """Per delta: is this item's audio to be dropped? (Remembers the answer.)"""
        if item_id in self.interrupted_items:
            return True
        if self.item_response.get(item_id) in self.interrupted_responses:
            self.interrupted_items.add(item_id)
            return True
        return False

    def created(self, response_id: str) -> None:
        self.active = response_id

    def item_added(self, item_id: str, response_id: str) -> None:
        self.item_response[item_id] = response_id
        if response_id in self.interrupted_responses:
            self.interrupted_items.add(item_id)

    def done(self, response_id: str) -> list[str]:
        """The response is over; returns its items (now forgotten)."""
        if response_id == self.active:
            self.active = None
        if response_id == self.cancel_requested:
            self.cancel_requested = None
        self.interrupted_responses.discard(response_id)
        items = [i for i, r in self.item_response.items() if r == response_id]
        for item_id in items:
            del self.item_response[item_id]
            self.interrupted_items.discard(item_id)
        return items

    def interrupt_active(self) -> tuple[str, list[str]] | None:
        """Mark the active response interrupted (unless already being cancelled).

        Returns it and its items, or None if there is nothing to cancel.
        """
        response_id = self.active
        if response_id is None or response_id == self.cancel_requested:
            return None
        self.cancel_requested = response_id
        self.interrupted_responses.add(response_id)
        items = [i for i, r in self.item_response.items() if r == response_id]
        self.interrupted_items.update(items)
        return response_id, items
