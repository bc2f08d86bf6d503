"""What the admin API needs from the running daemon, as a typing.Protocol.

The admin app reads runtime state only through this boundary, so it can be tested with a small
fake, and so the daemon (or, with several workers, the control process) decides what backs it.
Later issues add methods here for the state-changing endpoints (targets, purge, reload).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from lbcdn.dns.engine import Engine


class AdminState(Protocol):
    @property
    def draining(self) -> bool:
        """True once shutdown began: /healthz answers 503 so load balancers and Kubernetes
        readiness probes stop sending new traffic while in-flight requests finish."""
        ...

    def describe(self) -> dict[str, object]:
        """A JSON-able view of the runtime: listeners, routes, pools and targets with their
        current state. Called on the event loop per request to /api/runtime: keep it cheap."""
        ...

    def dns_engine(self) -> Engine | None:
        """The DNS answer engine, when a DNS server runs (change batches, the records view)."""
        ...

    async def reload(self) -> None:
        """Re-read the configuration file and swap the runtime. Raises
        lbcdn.configkit.errors.ConfigError (invalid, nothing changed) or another Exception whose
        message says why nothing changed."""
        ...
