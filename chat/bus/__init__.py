"""The message bus: publish a record and learn when it is durable; deliver every record here."""

from chat.bus.base import Bus, BusUnavailable, Deliver, Record

__all__ = ["Bus", "BusUnavailable", "Deliver", "Record"]
