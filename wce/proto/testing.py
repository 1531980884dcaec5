"""Helpers for tests: a connected pair of channels in memory."""

from __future__ import annotations

import trio.testing

from .channel import MessageChannel


def channel_pair() -> tuple[MessageChannel, MessageChannel]:
    """Two channels talking to each other through trio's in-memory streams."""
    a, b = trio.testing.memory_stream_pair()
    return MessageChannel(a), MessageChannel(b)
