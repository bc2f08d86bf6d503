"""What the admin route modules share: the app key of the daemon's AdminState and the lookups
made through it.

A leaf of lbcdn.admin: app.py and every route module (cache, dns, status, targets) import it,
it imports none of them, so route modules never reach for app.py or for one another
(tests/test_layers.py).
"""

from __future__ import annotations

from typing import Final, Protocol, runtime_checkable

from aiohttp import web

from lbcdn.acme.manager import AcmeManager
from lbcdn.admin.state import AdminState
from lbcdn.upstream.targets import TargetError, TargetsControl

STATE_KEY: Final = web.AppKey("lbcdn_admin_state", AdminState)


@runtime_checkable
class TargetsProvider(Protocol):
    def targets_control(self) -> TargetsControl | None:
        """The pools' control plane, where it runs in this process."""
        ...


def control_of(request: web.Request) -> TargetsControl:
    state = request.app[STATE_KEY]
    control = state.targets_control() if isinstance(state, TargetsProvider) else None
    if control is None:
        raise TargetError(503, "targets are not managed by this process")
    return control


@runtime_checkable
class AcmeProvider(Protocol):
    def acme_manager(self) -> AcmeManager | None:
        """The ACME manager, where it runs in this process."""
        ...


def acme_of(request: web.Request) -> AcmeManager | None:
    state = request.app[STATE_KEY]
    return state.acme_manager() if isinstance(state, AcmeProvider) else None
