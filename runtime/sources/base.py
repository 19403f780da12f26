"""The one protocol every long-running event source implements."""

from __future__ import annotations

from typing import Protocol


class Source(Protocol):
    """A source of Falco alerts that runs until stopped.

    ``start`` returns once the source is consuming; ``stop`` stops taking new input, waits
    for what it handed to the ingestor, and MUST leave its durable position (file offset, NATS
    ack floor) at the last acknowledged alert, so a restart neither loses nor repeats
    acknowledged work. ``ready`` is True while it is consuming.
    """

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def ready(self) -> bool: ...
