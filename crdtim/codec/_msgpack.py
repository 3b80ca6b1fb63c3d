"""Generic msgpack in and out (specs/crdt.md §7: strings as `str`, never `bin`; no extension
types; one complete value): the one module of crdtim that imports msgpack.

It knows nothing of conversations or lattices: `pack` any object, `unpack` any bytes into
plain Python objects. It must never let a msgpack exception escape: whatever the bytes,
`unpack` returns an object or raises DecodeError.
"""

from __future__ import annotations

import io
import threading
from typing import Any

import msgpack

from ..errors import DecodeError
from ._limits import DEFAULT_LIMITS

# A Packer per thread (a Packer is not thread-safe) instead of one per call: packb builds a
# Packer, buffer and all, for every message. A Packer keeps its buffer at the size of the
# largest message it made, so after a big one (a state chunk) the thread drops it; and after
# an exception (unpackable object), which leaves it out too.
_packers = threading.local()
_KEEP_PACKER_BYTES = 1 << 20


def pack(obj: Any) -> bytes:
    mine = _packers.__dict__  # this thread's
    # Taken out while in use, so that a nested call (none is expected) makes its own.
    packer = mine.pop("packer", None)
    if packer is None:
        packer = msgpack.Packer(use_bin_type=True)
    data: bytes = packer.pack(obj)  # msgpack is untyped
    if len(data) <= _KEEP_PACKER_BYTES:
        mine["packer"] = packer
    return data


def _no_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is not allowed")


def unpack(data: bytes | bytearray | memoryview,
           max_bytes: int = DEFAULT_LIMITS.max_bytes) -> Any:
    """msgpack bytes -> Python object; DecodeError for anything malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise DecodeError(f"{len(data)} bytes is over the limit of {max_bytes}")
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=False, ext_hook=_no_ext
        )
    except DecodeError:
        raise
    except msgpack.ExtraData:
        raise DecodeError("trailing bytes after the msgpack value") from None
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as e:
        # ValueError covers UnicodeDecodeError, FormatError, StackError, "Unpack failed".
        raise DecodeError(f"not valid msgpack: {_reason(e)}") from None


def stream(data: bytes) -> msgpack.Unpacker:
    """An unpacker reading `data` one value (or one container header) at a time, with the
    rules of `unpack`, for code that must look at a large value without building all of it
    (`_census`). Its errors are msgpack's, or ValueError: the caller catches them."""
    return msgpack.Unpacker(io.BytesIO(data), raw=False, strict_map_key=False,
                            ext_hook=_no_ext)


def _reason(e: BaseException) -> str:
    """What was wrong, never empty: msgpack raises StackError and FormatError without text."""
    if isinstance(e, msgpack.StackError) or isinstance(e, RecursionError):
        return "arrays or maps nested too deeply"
    if isinstance(e, msgpack.FormatError):
        return "a byte that starts no msgpack value (reserved type 0xc1)"
    return str(e) or type(e).__name__
