"""Which model response is active, which items belong to it, and what a barge-in interrupted.

Late deltas of an interrupted response must never reach the caller, and a response must be
cancelled once, by whoever cancels it (the gateway, or the server's own VAD). Everything here is
forgotten at ``response.done``: no more deltas can come for that response (bounded memory).
"""
from __future__ import annotations

LOCAL_PREFIX = "gw-local-"  # item ids of audio made by the gateway itself (a hold tone)
OUT_OF_BAND_MEMORY = 64


class Responses:
    __slots__ = ("active", "cancel_requested", "interrupted_items", "interrupted_responses", "item_response",
                 "out_of_band", "out_of_band_items")

    def __init__(self) -> None:
        self.active: str | None = None
        self.cancel_requested: str | None = None  # response we (or the server's VAD) are cancelling
        self.item_response: dict[str, str] = {}
        self.interrupted_responses: set[str] = set()
        self.interrupted_items: set[str] = set()
        # Responses outside the conversation (the gateway's fillers, `say`): their items cannot be
        # truncated (the server does not know them as conversation items).
        self.out_of_band: set[str] = set()
        # ... and their items, remembered past response.done while Twilio may still play them
        # (an ordered set of the last OUT_OF_BAND_MEMORY).
        self.out_of_band_items: dict[str, None] = {}

    def interrupted(self, item_id: str) -> bool:
        """Per delta: is this item's audio to be dropped? (Remembers the answer.)"""
        if item_id in self.interrupted_items:
            return True
        if self.item_response.get(item_id) in self.interrupted_responses:
            self.interrupted_items.add(item_id)
            return True
        return False

    def created(self, response_id: str, out_of_band: bool) -> None:
        self.active = response_id
        if out_of_band:
            self.out_of_band.add(response_id)

    def truncatable(self, item_id: str) -> bool:
        """A conversation item of the model (not local audio, not an out-of-band response's)."""
        return item_id not in self.out_of_band_items and not item_id.startswith(LOCAL_PREFIX)

    def item_added(self, item_id: str, response_id: str) -> None:
        self.item_response[item_id] = response_id
        if response_id in self.out_of_band:
            self.out_of_band_items[item_id] = None
            if len(self.out_of_band_items) > OUT_OF_BAND_MEMORY:
                del self.out_of_band_items[next(iter(self.out_of_band_items))]
        if response_id in self.interrupted_responses:
            self.interrupted_items.add(item_id)

    def done(self, response_id: str) -> list[str]:
        """The response is over; returns its items (now forgotten)."""
        if response_id == self.active:
            self.active = None
        if response_id == self.cancel_requested:
            self.cancel_requested = None
        self.interrupted_responses.discard(response_id)
        self.out_of_band.discard(response_id)
        items = [i for i, r in self.item_response.items() if r == response_id]
        for item_id in items:
            del self.item_response[item_id]
            self.interrupted_items.discard(item_id)
        return items

    def cancel(self, response_id: str) -> bool:
        """The call cancels a live response itself (a filler no longer needed): drop its late deltas.

        False if a barge-in is cancelling it already (the call's cancel, or the server's VAD)."""
        if response_id in self.interrupted_responses:
            return False
        if response_id == self.active:
            self.cancel_requested = response_id
        self.interrupted_responses.add(response_id)
        self.interrupted_items.update(i for i, r in self.item_response.items() if r == response_id)
        return True

    def reset(self) -> list[str]:
        """The session is gone (reconnect): forget its responses; returns their items."""
        items = list(self.item_response)
        self.active = self.cancel_requested = None
        self.item_response.clear()
        self.interrupted_responses.clear()
        self.interrupted_items.clear()
        self.out_of_band.clear()
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
