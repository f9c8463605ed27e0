"""Monitoring paths answered on the data port, through the admin plane's handlers.

Same handlers, same access rules as the admin listener (CONTRACT.md §1): the peer must
be loopback or in ``admin.allow_networks`` and the Host must name this server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..admin.routes import AdminRequest, AdminResponse, error_response
from . import wire

if TYPE_CHECKING:
    from .protocol import ClientProtocol, Request


async def serve_monitoring(proto: ClientProtocol, req: Request) -> tuple[bool, int]:
    """Answer one monitoring request; returns (keep the connection, status sent)."""
    state = proto.state
    path = req.path.decode("latin-1")
    method = req.method.decode("latin-1")
    peer_ip = proto.peer[0] if proto.peer else None
    host = req.header(b"host")
    denied = state.access.check(peer_ip, host.decode("latin-1") if host else None)
    if denied is not None:
        resp = error_response(*denied)
    else:
        handler, params, allowed = state.router.resolve(method, path)
        if handler is None:
            resp = error_response(405, f"method {method} not allowed; use {', '.join(allowed)}")
            resp.headers.append(("allow", ", ".join(allowed)))
        else:
            areq = AdminRequest(
                method=method,
                path=path,
                query=AdminRequest.parse_query(req.query.decode("latin-1")),
                headers={k.decode("latin-1"): v.decode("latin-1") for k, v in req.headers},
                body=req.body,
                peer_ip=peer_ip,
                params=params,
            )
            resp = await handler(areq)
    return await write_admin_response(proto, req, resp), resp.status


async def write_admin_response(proto: ClientProtocol, req: Request, resp: AdminResponse) -> bool:
    keep = req.keep_alive and not proto.state.draining
    transport = proto.transport
    assert transport is not None
    extra = b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in resp.headers)
    ctype = b"content-type: " + resp.content_type.encode("latin-1") + b"\r\n"
    if resp.stream is None or req.head_only:
        if resp.stream is not None:
            await _close_stream(resp.stream)  # HEAD: the stream's headers, no stream
            ctype += b"transfer-encoding: chunked\r\n"
        transport.write(
            wire.simple_response(
                resp.status,
                resp.body,
                keep_alive=keep,
                date=proto.state.date_header,
                content_type=ctype,
                extra=extra,
                head_only=req.head_only,
            )
        )
        return keep
    transport.write(
        b"".join(
            (
                wire.STATUS_LINE.get(resp.status, b"HTTP/1.1 200 OK\r\n"),
                proto.state.date_header,
                ctype,
                b"transfer-encoding: chunked\r\n",
                wire.KEEP_ALIVE if keep else wire.CLOSE,
                extra,
                wire.CRLF,
            )
        )
    )
    try:
        async for piece in resp.stream:
            if proto.closed:
                break
            if piece:
                transport.write(wire.chunk(piece))
                await proto.drain()
    finally:
        await _close_stream(resp.stream)
    if not proto.closed:
        transport.write(wire.CHUNKED_END)
    return keep


async def _close_stream(stream: object) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
