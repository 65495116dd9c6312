"""The session wire protocol: versioned JSON lines over a Unix stream socket.

Request:  ``{"v": 1, "id": 7, "op": "copy", "args": {"range": "buf:3", ...}}``
Response: ``{"v": 1, "id": 7, "ok": true, "result": {...}}``
      or  ``{"v": 1, "id": 7, "ok": false, "exit": 1, "error": {"type", "errno", "ioctl", "message", ...}}``

One line each, at most :data:`MAX_LINE` bytes.  A line that is not JSON, not an
object, of another version or too large gets an error response (type
``ProtocolError``, exit 2); a too-large line also closes the connection.
"""
from __future__ import annotations

import json

from ..errors import ProtocolError, to_wire

VERSION = 1
MAX_LINE = 1 << 20


def encode(obj: dict) -> bytes:
    return (json.dumps(obj, separators=(",", ":"), default=str) + "\n").encode()


def decode_request(line: bytes) -> dict:
    """Parse one request line; raise ProtocolError naming what is wrong."""
    if len(line) > MAX_LINE:
        raise ProtocolError(f"message of {len(line)} bytes exceeds the limit of {MAX_LINE}")
    try:
        req = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        raise ProtocolError(f"message is not JSON ({e.__class__.__name__}: {e})") from None
    if not isinstance(req, dict):
        raise ProtocolError(f"message is a JSON {type(req).__name__}, not an object")
    if req.get("v") != VERSION:
        raise ProtocolError(f"protocol version {req.get('v')!r} is not supported (this session speaks {VERSION})")
    if not isinstance(req.get("op"), str):
        raise ProtocolError("message has no \"op\" string")
    if not isinstance(req.get("args", {}), dict):
        raise ProtocolError("\"args\" must be an object")
    return req


def error_response(rid, e: BaseException) -> dict:
    """The response carrying an error: its wire form (uffdctl.errors.to_wire) and exit status."""
    err = to_wire(e)
    return {"v": VERSION, "id": rid, "ok": False, "exit": err["exit"], "error": err}


__all__ = ["VERSION", "MAX_LINE", "ProtocolError", "encode", "decode_request", "error_response"]
