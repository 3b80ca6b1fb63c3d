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


#: The most fields a frame body may hold (specs/protocol.md §2): HELLO, the longest, has 6.
MAX_FRAME_FIELDS = 16


class _SecondContainer(Exception):
    """Raised inside msgpack's unpacking: a frame body held a nested array or a map."""


def _no_map(pairs: Any) -> Any:
    raise _SecondContainer


def unpack_frame(data: bytes | bytearray | memoryview, max_bytes: int) -> Any:
    """A frame body -> its list of at most MAX_FRAME_FIELDS scalars, strings and bytes;
    DecodeError for anything else (specs/protocol.md §2: no frame field is an array or a map;
    payloads travel as bytes).

    A body of the wrong shape is refused while it is read, not after: an 8 MiB array of
    empty arrays would otherwise build 8 million lists (about 500 MiB) before any field was
    looked at (specs/security.md §7). Arrays are capped at MAX_FRAME_FIELDS items and the
    second array to be completed (the outer one completes last) stops the unpacking, so at
    most the nesting depth times MAX_FRAME_FIELDS objects are ever built.
    """
    if len(data) > max_bytes:
        raise DecodeError(f"{len(data)} bytes is over the limit of {max_bytes}")
    lists = 0

    def one_list(items: list[Any]) -> list[Any]:
        nonlocal lists
        lists += 1
        if lists > 1:
            raise _SecondContainer
        return items

    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=False, ext_hook=_no_ext,
            max_array_len=MAX_FRAME_FIELDS, list_hook=one_list, object_pairs_hook=_no_map)
    except _SecondContainer:
        raise DecodeError("a frame field is an array or a map; fields are scalars, strings "
                          "or bytes") from None
    except DecodeError:
        raise
    except msgpack.ExtraData:
        raise DecodeError("trailing bytes after the msgpack value") from None
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as e:
        if "exceeds max_array_len" in str(e):
            raise DecodeError(f"an array of more than {MAX_FRAME_FIELDS} items; a frame has at "
                              f"most {MAX_FRAME_FIELDS} fields") from None
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
