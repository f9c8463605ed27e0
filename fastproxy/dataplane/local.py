"""Monitoring paths answered on the data port, through the monitoring API's handlers.

The handlers are the admin plane's, reached through the `MonitoringPort` seam: the same
answers and the same access rules as on the admin listener (the peer must be loopback
or in ``admin.allow_networks``, the Host must name this server). This module only
turns the neutral request and response into bytes on the client's connection.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs

from ..core.flow import FlowControl
from ..core.seams import MonitoringPort, MonitorRequest, MonitorResponse
from . import wire
from .plane import DataPlane
from .request import Request


async def serve_monitoring(
    plane: DataPlane,
    monitoring: MonitoringPort,
    req: Request,
    transport: asyncio.Transport,
    flow: FlowControl,
    peer_ip: str | None,
) -> tuple[bool, int]:
    """Answer one monitoring request; returns (keep the connection, status sent)."""
    host = req.header(b"host")
    mreq = MonitorRequest(
        method=req.method.decode("latin-1"),
        path=req.path.decode("latin-1"),
        query=parse_qs(req.query.decode("latin-1"), keep_blank_values=True),
        headers={k.decode("latin-1"): v.decode("latin-1") for k, v in req.headers},
        body=bytes(req.body),
        peer_ip=peer_ip,
    )
    resp = await monitoring.serve_data_port(mreq, host.decode("latin-1") if host else None)
    return await write_monitor_response(plane, req, transport, flow, resp), resp.status


async def write_monitor_response(
    plane: DataPlane,
    req: Request,
    transport: asyncio.Transport,
    flow: FlowControl,
    resp: MonitorResponse,
) -> bool:
    keep = req.keep_alive and not plane.draining
    date = plane.date.line
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
                date=date,
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
                date,
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
            if transport.is_closing():
                break
            if piece:
                transport.write(wire.chunk(piece))
                await flow.drain()
    finally:
        await _close_stream(resp.stream)
    if not transport.is_closing():
        transport.write(wire.CHUNKED_END)
    return keep


async def _close_stream(stream: object) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
