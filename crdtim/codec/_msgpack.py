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
    return _unpackb(data)


def _unpackb(data: bytes | bytearray | memoryview, **options: Any) -> Any:
    """msgpack.unpackb under the rules above; DecodeError for anything malformed."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_no_ext,
                               **options)
    except DecodeError:
        raise
    except msgpack.ExtraData:
        raise DecodeError("trailing bytes after the msgpack value") from None
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as e:
        # ValueError covers UnicodeDecodeError, FormatError, StackError, "Unpack failed".
        raise DecodeError(f"not valid msgpack: {_reason(e)}") from None


#: Values a frame body may hold in all (specs/protocol.md §2): its fields, and the items of
#: the arrays among them (a COMPACT_DELTA's or HAVE's replica ids, HAVE's indexes). Payloads
#: travel as bytes, one value each, so honest frames hold a few thousand at most.
MAX_FRAME_VALUES = 16384


class _MapInFrame(Exception):
    """Raised inside msgpack's unpacking: a frame body held a map."""


def _no_map(pairs: Any) -> Any:
    raise _MapInFrame


def unpack_frame(data: bytes | bytearray | memoryview, max_bytes: int) -> Any:
    """A frame body -> its list of fields; DecodeError for anything malformed, for a map
    anywhere in it, or for more than MAX_FRAME_VALUES values in all.

    The values are counted from the msgpack headers before anything is built (only in
    bodies long enough to hold more): an 8 MiB array of empty arrays in place of a DELTA's
    payload would otherwise build 8 million lists, about 500 MiB, before any field was
    looked at (specs/security.md §7).
    """
    if len(data) > max_bytes:
        raise DecodeError(f"{len(data)} bytes is over the limit of {max_bytes}")
    if len(data) > MAX_FRAME_VALUES:
        try:
            values = count_headers(data, 0, MAX_FRAME_VALUES)
        except (KeyError, IndexError):
            values = 0  # not msgpack: unpacking below says what is wrong
        if values > MAX_FRAME_VALUES:
            raise DecodeError(f"over {MAX_FRAME_VALUES} values in the fields of one frame")
    try:
        return _unpackb(data, object_pairs_hook=_no_map)
    except _MapInFrame:
        raise DecodeError("a frame field holds a map; fields are scalars, strings, bytes "
                          "or arrays of them") from None


def count_headers(data: bytes | bytearray | memoryview, pos: int, stop_above: int) -> int:
    """The items of the one msgpack value at data[pos:] (an array's items and a map's
    entries, nested ones too: a dot [replica, counter] is two), read from the container
    headers without building any object; stops once past `stop_above`, so it takes at most
    about twice that many steps. KeyError or IndexError when the bytes are not msgpack."""
    items = 0
    values = 1  # still to read
    while values and items <= stop_above:
        values -= 1
        b = data[pos]
        if b <= 0x7F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):  # fixint, nil, bool
            pos += 1
        elif b <= 0x8F:  # fixmap
            n = b & 0x0F
            items, values, pos = items + n, values + 2 * n, pos + 1
        elif b <= 0x9F:  # fixarray
            n = b & 0x0F
            items, values, pos = items + n, values + n, pos + 1
        elif b <= 0xBF:  # fixstr
            pos += 1 + (b & 0x1F)
        elif b in (0xDC, 0xDD, 0xDE, 0xDF):  # array 16/32, map 16/32
            width = 2 if b in (0xDC, 0xDE) else 4
            n = int.from_bytes(data[pos + 1:pos + 1 + width], "big")
            items += n
            values += n if b <= 0xDD else 2 * n
            pos += 1 + width
        else:
            pos += _scalar_size(data, pos, b)
    return items


# The size of each remaining msgpack scalar after its first byte: (length-field width,
# fixed payload size).
_SCALARS = {0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0), 0xD9: (1, 0), 0xDA: (2, 0),
            0xDB: (4, 0), 0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1), 0xCA: (0, 4),
            0xCB: (0, 8), 0xCC: (0, 1), 0xCD: (0, 2), 0xCE: (0, 4), 0xCF: (0, 8),
            0xD0: (0, 1), 0xD1: (0, 2), 0xD2: (0, 4), 0xD3: (0, 8), 0xD4: (0, 2),
            0xD5: (0, 3), 0xD6: (0, 5), 0xD7: (0, 9), 0xD8: (0, 17)}


def _scalar_size(data: bytes | bytearray | memoryview, pos: int, b: int) -> int:
    width, fixed = _SCALARS[b]  # 0xC1 never gets here: the value was skipped over already
    return 1 + width + fixed + int.from_bytes(data[pos + 1:pos + 1 + width], "big")


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


def map_reader(data: bytes, max_entries: int) -> tuple[int, int, Any]:
    """(entries, where the first key starts, an unpacker there) for the map at the start of
    `data`, for a caller that reads its entries one at a time without building the values
    (`_conv_keys`; its unpack/skip errors go through `unpack_failure`). DecodeError when
    `data` does not start with a whole map header, or when the header counts over
    `max_entries` (refused before any entry is read)."""
    if not data or not (0x80 <= data[0] <= 0x8f or data[0] in (0xde, 0xdf)):
        raise DecodeError("expected a map")
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, ext_hook=_no_ext,
                                max_buffer_size=len(data))
    unpacker.feed(data)
    try:
        n: int = unpacker.read_map_header()
    except msgpack.OutOfData:
        raise DecodeError("the bytes end inside the map") from None
    if n > max_entries:
        raise DecodeError(f"{n} map entries is over the limit of {max_entries}")
    return n, unpacker.tell(), unpacker


#: What reading a map_reader's entries may raise, for unpack_failure to name.
UNPACK_ERRORS = (ValueError, TypeError, IndexError, msgpack.UnpackException, RecursionError)


def unpack_failure(e: BaseException) -> DecodeError:
    """The DecodeError for one of UNPACK_ERRORS raised inside a map's entries."""
    if isinstance(e, (msgpack.OutOfData, IndexError)):
        return DecodeError("the bytes end inside the map")
    return DecodeError(f"not valid msgpack: {_reason(e)}")


def pack_map_header(n: int) -> bytes:
    """The msgpack header of a map of `n` entries (fixmap, map 16 or map 32)."""
    if n < 16:
        return bytes((0x80 | n,))
    if n < 0x10000:
        return b"\xde" + n.to_bytes(2, "big")
    return b"\xdf" + n.to_bytes(4, "big")
