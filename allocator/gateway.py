"""`ds01 gateway`: the Docker Engine API on a socket every user may open, forwarded to dockerd.

Identity is the connecting uid (SO_PEERCRED), read once per connection. Creates are checked
and rewritten (labels, GPUs from the allocator, pinned bind sources); requests on one
container need its owner; everything else passes byte for byte, hijacked connections and
streams included. The pieces, top-down:

- `gateway_server`: the listening socket, a thread per connection, the bind-pin sweeper;
- `gateway_connection`: one connection's requests: ownership, scoping, forwarding;
- `gateway_creation`: one container create: checks, pins, GPU grant, rewrite, undo;
- `gateway_routes`, `gateway_create`: the pure rules; `gateway_http`: HTTP framing;
- `gateway_backends`: dockerd and the allocator; `gateway_pins`: the bind pins.
"""

from __future__ import annotations

from .gateway_connection import Connection
from .gateway_routes import Refusal
from .gateway_server import GatewayServer, GatewaySettings

__all__ = ["Connection", "GatewayServer", "GatewaySettings", "Refusal"]
