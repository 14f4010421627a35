"""Whether a peer library is installed, its version, and the exact command that installs it.

A peer adapter is always registered, so a suite naming it validates everywhere; where the
package is missing, ``paqbench list methods`` marks it unavailable with the install
command and the step raises :class:`PeerUnavailable` (one line, the same command) instead
of a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import Any, ClassVar

from paqbench.interfaces import Method, Unavailable


class PeerUnavailable(Unavailable):
    """The peer's package is not installed (or does not import) here."""


@dataclass(frozen=True)
class Peer:
    """A peer library: the module imported, the distribution installed, paqbench's extra
    that pulls it, and a note on where it can be installed (its own pins)."""

    module: str
    distribution: str
    extra: str
    note: str = ""

    @property
    def install_command(self) -> str:
        command = f"pip install 'paqbench[{self.extra}]'"
        return f"{command} ({self.note})" if self.note else command

    def available(self) -> bool:
        """Installed here, judged without importing it (listings stay fast)."""
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):
            return False

    def version(self) -> str | None:
        try:
            return version(self.distribution)
        except PackageNotFoundError:
            return None

    def load(self) -> ModuleType:
        """Import the peer, or raise :class:`PeerUnavailable` naming the install command."""
        if not self.available():
            raise PeerUnavailable(f"{self.distribution} is not installed; install it with: {self.install_command}")
        try:
            return importlib.import_module(self.module)
        except Exception as exc:  # a broken install is unavailable too, with its reason
            raise PeerUnavailable(
                f"{self.distribution} {self.version() or ''} is installed but does not import "
                f"({type(exc).__name__}: {exc}); reinstall it with: {self.install_command}"
            ) from exc

    def facts(self) -> dict[str, Any]:
        """What the step's record says about the peer."""
        return {"peer": self.distribution, "peer_version": self.version()}


class PeerMethod(Method):
    """Base of the peer adapters: listings show whether the peer is installed."""

    peer: ClassVar[Peer]

    @classmethod
    def summary(cls) -> str:
        text = super().summary()
        if cls.peer.available():
            return f"[{cls.peer.distribution} {cls.peer.version() or '?'}] {text}"
        return f"[unavailable: {cls.peer.install_command}] {text}"
