"""``socketserver`` over Nautilus: :class:`NautilusServerMixin`.

Mix it in front of a ``socketserver`` TCP server and pass ``context=``::

    class Server(NautilusServerMixin, socketserver.ThreadingTCPServer):
        pass

    server = Server(("127.0.0.1", 8443), Handler, context=nautilus.Context(identity))

    class HTTPServer(NautilusServerMixin, http.server.ThreadingHTTPServer):
        pass

Accepted sockets are wrapped (server side) in the accept loop, which does no
I/O; the handshake runs in :meth:`~NautilusServerMixin.finish_request`, that
is in the handler's thread (or process) for ``ThreadingMixIn`` /
``ForkingMixIn`` servers, so a slow or silent client cannot hold up accepts
(a plain ``TCPServer`` handles one connection at a time anyway). A failed
handshake is logged at DEBUG on the ``nautilus.server`` logger and the
connection closed; the handler is not called and the server keeps serving.
Handlers get the :class:`nautilus.NautilusSocket` as ``self.request``
(``StreamRequestHandler``'s ``rfile``/``wfile`` work unchanged); its
``session`` attribute says who the peer is.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from nautilus.context import Context
from nautilus.exceptions import NautilusError
from nautilus.sockets import NautilusSocket, wrap_socket

if TYPE_CHECKING:
    import socketserver

    _Base = socketserver.TCPServer
else:
    _Base = object

__all__ = ["NautilusServerMixin"]

logger = logging.getLogger("nautilus.server")


def _error_name(error: BaseException) -> str:
    """The public class name of an error (a Nautilus error by its documented class)."""
    for cls in type(error).__mro__:
        if cls.__module__ == "nautilus.exceptions":
            return cls.__name__
    return type(error).__name__


class NautilusServerMixin(_Base):
    """Serve Nautilus instead of plain TCP from a ``socketserver`` TCP server.

    Args:
        context: a :class:`nautilus.Context` with an identity (keyword only);
            every other argument goes to the server class.

    Raises:
        TypeError: ``context`` is missing or not a Context.
        ValueError: the context has no identity.
        OSError: as the server class (the address cannot be bound...).
    """

    context: Context

    def __init__(self, *args: Any, context: Context, **kwargs: Any) -> None:
        if not isinstance(context, Context):
            raise TypeError(f"context must be a nautilus.Context, not {type(context).__name__}")
        if context.identity is None:
            raise ValueError("a server needs a context with an identity")
        self.context = context
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[NautilusSocket, Any]:
        """Accept a TCP connection and wrap it, without any I/O (the handshake comes later).

        Raises:
            OSError: as ``accept()`` (``serve_forever`` ignores it).
        """
        sock, addr = super().get_request()
        try:
            wrapped = wrap_socket(
                self.context, sock, server_side=True, do_handshake_on_connect=False
            )
        except BaseException:
            sock.close()
            raise
        return wrapped, addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Run the handshake, then the handler; a failed handshake is logged and dropped.

        ``shutdown_request()`` (called by the server afterwards) closes the
        socket either way.
        """
        if isinstance(request, NautilusSocket):
            try:
                request.do_handshake()
            except (NautilusError, OSError) as exc:
                logger.debug(
                    "nautilus: handshake with %s failed: %s: %s",
                    client_address,
                    _error_name(exc),
                    exc,
                )
                return
        super().finish_request(request, client_address)
