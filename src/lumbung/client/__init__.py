"""The client side of the hub's API: ``Client`` for consumers, ``NodeSession`` for nodes."""

from lumbung.client.consumer import Client
from lumbung.client.node_session import NodeSession

__all__ = ["Client", "NodeSession"]
