"""``torch.save`` bytes read without torch: the zip's records, its pickle through an allow-list, its storages as
NumPy arrays over the bytes (no copy).

``torch.save`` writes a zip of stored records: ``<prefix>/data.pkl`` (a protocol-2 pickle), ``<prefix>/data/<key>``
(one per storage, its raw little-endian elements) and a few small ones. The pickle names each tensor as

    torch._utils._rebuild_tensor_v2((storage, dtype, key, location, numel), offset, size, stride, grad, hooks)

and :func:`read_saved` runs it on a small pickle machine of its own that knows only the opcodes and globals an
answer holds (as ``torch.load(weights_only=True)`` does): dicts, lists, tuples, strings, integers, floats, bools,
None and tensors of the storage types in ``STORAGE_DTYPES``. A tensor becomes a read-only NumPy view of its
record, checked to lie inside it, with no more elements than its storage (no stride-0 blow-up). Anything else
(another global, opcode or layout, a record out of place, a cycle, nesting past ``MAX_DEPTH``) raises
:class:`ReadRefused` with what is wrong; a zip64 layout (a record or offset past 4 GiB) raises
:class:`ReadUnsupported`, for the caller to hand to torch. Memory: the views, the pickle's own objects (bounded
by its size) and nothing else.
"""

from __future__ import annotations

import struct

import numpy as np

STORAGE_DTYPES = {"FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
                  "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
                  "ByteStorage": np.uint8, "BoolStorage": np.bool_}
TORCH_DTYPE_NAMES = {np.dtype(np.float32): "torch.float32", np.dtype(np.float16): "torch.float16",
                     np.dtype(np.float64): "torch.float64", np.dtype(np.int64): "torch.int64",
                     np.dtype(np.int32): "torch.int32", np.dtype(np.int16): "torch.int16",
                     np.dtype(np.int8): "torch.int8", np.dtype(np.uint8): "torch.uint8", np.dtype(np.bool_): "torch.bool"}
MAX_RECORDS = 65536
MAX_PICKLE_BYTES = 8 << 20  # an answer's pickle: its tokens, settings and warnings (~15 KB at 512 tokens)
MAX_OPS = 1_000_000         # pickle opcodes run: the objects it makes (~100 bytes each at most)
MAX_DEPTH = 32           # nesting of lists, tuples and dicts in an answer
MAX_DIMS = 16
_END = b"PK\x05\x06"
_CENTRAL = b"PK\x01\x02"
_LOCAL = b"PK\x03\x04"
_REBUILD = ("torch._utils", "_rebuild_tensor_v2")
_ORDERED = ("collections", "OrderedDict")


class ReadRefused(ValueError):
    """The bytes are not a ``torch.save`` of what an answer may hold."""


class ReadUnsupported(ReadRefused):
    """A ``torch.save`` layout this reader leaves to torch (zip64)."""


def records(raw) -> dict:
    """{name: memoryview of its bytes} of a ``torch.save`` zip, from its central directory; every record stored,
    inside the bytes, after its local header of the same name."""
    data = memoryview(raw).cast("B")
    end = len(data) - 22
    if end < 0 or data[end:end + 4] != _END:
        raise ReadRefused("not a torch.save zip (no end record)")
    disk, start_disk, here, count, size, offset, comment = struct.unpack_from("<HHHHIIH", data, end + 4)
    if 0xFFFFFFFF in (size, offset) or 0xFFFF in (here, count):
        raise ReadUnsupported("a zip64 answer")
    if disk or start_disk or here != count or comment or count > MAX_RECORDS or offset + size > end:
        raise ReadRefused("the answer's zip directory is damaged")
    out = {}
    for _ in range(count):
        if offset + 46 > end or data[offset:offset + 4] != _CENTRAL:
            raise ReadRefused("the answer's zip directory is damaged")
        method, = struct.unpack_from("<H", data, offset + 10)
        stored, plain, name_len, extra_len, note_len = struct.unpack_from("<IIHHH", data, offset + 20)
        local, = struct.unpack_from("<I", data, offset + 42)
        if 0xFFFFFFFF in (stored, plain, local):
            raise ReadUnsupported("a zip64 answer")
        name = bytes(data[offset + 46:offset + 46 + name_len])
        offset += 46 + name_len + extra_len + note_len
        if method != 0 or stored != plain or local + 30 > end or data[local:local + 4] != _LOCAL:
            raise ReadRefused(f"the answer's record {name[:80]!r} is not a stored zip record")
        local_name, local_extra = struct.unpack_from("<HH", data, local + 26)
        if bytes(data[local + 30:local + 30 + local_name]) != name:
            raise ReadRefused(f"the answer's record {name[:80]!r} is not where its directory says")
        begin = local + 30 + local_name + local_extra
        if begin + stored > end:
            raise ReadRefused(f"the answer's record {name[:80]!r} runs past its zip")
        out[name.decode("utf-8", "replace")] = data[begin:begin + stored]
    return out


def read_saved(raw):
    """The object ``torch.save`` wrote into ``raw`` (see the module docstring); raises :class:`ReadRefused`."""
    found = records(raw)
    pickles = [name for name in found if name.endswith("/data.pkl") and name.count("/") == 1]
    if len(pickles) != 1:
        raise ReadRefused("the answer's zip has no single data.pkl")
    prefix = pickles[0][:-len("data.pkl")]
    if len(found[pickles[0]]) > MAX_PICKLE_BYTES:
        raise ReadRefused(f"the answer's pickle is over {MAX_PICKLE_BYTES:,} bytes")
    order = found.get(prefix + "byteorder")
    if order is not None and bytes(order) != b"little":
        raise ReadRefused("the answer is not little-endian")
    try:
        value = _Machine(found[pickles[0]], found, prefix).run()
    except ReadRefused:
        raise
    except (ValueError, TypeError, IndexError, KeyError, AttributeError, struct.error, UnicodeDecodeError,
            OverflowError, MemoryError, RecursionError) as error:
        raise ReadRefused(f"the answer's pickle is damaged ({type(error).__name__}: {str(error)[:120]})") from None
    _check_shape(value)
    return value


class _Machine:
    """The pickle machine: the opcodes of ``OPCODES``, nothing else."""

    def __init__(self, data, found: dict, prefix: str):
        self.data = bytes(data)
        self.pos = 0
        self.found = found
        self.prefix = prefix
        self.stack: list = []
        self.marks: list = []
        self.memo: dict = {}

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ReadRefused("the answer's pickle is cut short")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def pop_mark(self) -> list:
        if not self.marks:
            raise ReadRefused("the answer's pickle has no mark")
        at = self.marks.pop()
        items = self.stack[at:]
        del self.stack[at:]
        return items

    def pop(self):
        if len(self.stack) <= (self.marks[-1] if self.marks else 0):
            raise ReadRefused("the answer's pickle pops an empty stack")
        return self.stack.pop()

    def run(self):
        ops = OPCODES
        for _ in range(MAX_OPS):
            code = self.take(1)
            op = ops.get(code)
            if op is None:
                raise ReadRefused(f"the answer's pickle uses opcode {code!r}, which answers do not")
            if op is _stop:
                if len(self.stack) != 1 or self.marks:
                    raise ReadRefused("the answer's pickle ends with a wrong stack")
                if self.pos != len(self.data):
                    raise ReadRefused("bytes follow the answer's pickle")
                return self.stack[0]
            op(self)
        raise ReadRefused(f"the answer's pickle runs past {MAX_OPS:,} steps")

    def storage(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _Storage)
                and isinstance(pid[2], str) and isinstance(pid[4], int) and not isinstance(pid[4], bool)):
            raise ReadRefused("the answer's pickle names a storage it does not describe")
        dtype, key, numel = np.dtype(pid[1].dtype), pid[2], pid[4]
        record = self.found.get(f"{self.prefix}data/{key}")
        if record is None:
            raise ReadRefused(f"the answer's storage {key[:40]!r} has no record")
        if numel < 0 or numel * dtype.itemsize != len(record):
            raise ReadRefused(f"the answer's storage {key[:40]!r} holds {len(record)} bytes, not {numel} elements")
        return np.frombuffer(record, dtype=dtype.newbyteorder("<"), count=numel)


class _Storage:
    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


def _tensor(storage, offset, size, stride, requires_grad, hooks, *metadata):
    """``_rebuild_tensor_v2``'s tensor, as a read-only NumPy view of its storage."""
    if not isinstance(storage, np.ndarray) or len(metadata) > 1:
        raise ReadRefused("a tensor of the answer has no storage")
    ints = (offset, *size, *stride) if isinstance(size, tuple) and isinstance(stride, tuple) else None
    if ints is None or len(size) != len(stride) or len(size) > MAX_DIMS or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints):
        raise ReadRefused("a tensor of the answer has a bad size or stride")
    if requires_grad is not False or not (isinstance(hooks, dict) and not hooks):
        raise ReadRefused("a tensor of the answer carries autograd state")
    count = 1
    for n in size:
        count *= n
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if count > len(storage) or (last >= len(storage) if count else offset > len(storage)):
        raise ReadRefused("a tensor of the answer reaches past its storage")
    item = storage.itemsize
    return np.lib.stride_tricks.as_strided(storage[offset:] if count else storage[:0], shape=size,
                                           strides=tuple(s * item for s in stride), writeable=False)


def _check_shape(value) -> None:
    """No container inside itself (a cycle), nesting at most MAX_DEPTH; a container shared by two others (a
    pickle memo) is walked once."""
    done: set = set()
    path: set = set()
    todo = [(value, 0, False)]
    while todo:
        item, depth, leaving = todo.pop()
        if leaving:
            path.discard(id(item))
            done.add(id(item))
            continue
        if not isinstance(item, (dict, list, tuple)) or id(item) in done:
            continue
        if id(item) in path:
            raise ReadRefused("the answer holds a container inside itself")
        if depth > MAX_DEPTH:
            raise ReadRefused(f"the answer nests deeper than {MAX_DEPTH}")
        path.add(id(item))
        todo.append((item, depth, True))
        children = (*item.keys(), *item.values()) if isinstance(item, dict) else item
        todo.extend((child, depth + 1, False) for child in children)


# -- the opcodes ------------------------------------------------------------------------------------------------

def _stop(m):  # handled in run
    pass


def _push(value):
    return lambda m: m.stack.append(value)


def _mark(m):
    m.marks.append(len(m.stack))


def _put(m, index):
    if not m.stack:
        raise ReadRefused("the answer's pickle memoizes nothing")
    m.memo[index] = m.stack[-1]


def _get(m, index):
    if index not in m.memo:
        raise ReadRefused("the answer's pickle reads a memo it never wrote")
    m.stack.append(m.memo[index])


def _text(m, n):
    m.stack.append(m.take(n).decode("utf-8", "surrogatepass"))


def _global(m):
    module = m.take(_line_end(m)).decode("ascii")
    m.take(1)
    name = m.take(_line_end(m)).decode("ascii")
    m.take(1)
    if (module, name) == _REBUILD:
        m.stack.append(_tensor)
    elif (module, name) == _ORDERED:
        m.stack.append(dict)
    elif module == "torch" and name in STORAGE_DTYPES:
        m.stack.append(_Storage(name))
    else:
        raise ReadRefused(f"the answer's pickle names {module[:60]}.{name[:60]}, which answers do not hold")


def _line_end(m) -> int:
    end = m.data.find(b"\n", m.pos, m.pos + 256)
    if end < 0:
        raise ReadRefused("the answer's pickle has a bad global")
    return end - m.pos


def _reduce(m):
    args, func = m.pop(), m.pop()
    if not isinstance(args, tuple):
        raise ReadRefused("the answer's pickle calls with bad arguments")
    if func is dict and not args:
        m.stack.append({})
    elif func is _tensor:
        m.stack.append(_tensor(*args))
    else:
        raise ReadRefused("the answer's pickle calls what answers do not")


def _persistent(m):
    m.stack.append(m.storage(m.pop()))


def _tuple_of(n):
    def op(m):
        items = [m.pop() for _ in range(n)][::-1]
        m.stack.append(tuple(items))
    return op


def _tuple(m):
    m.stack.append(tuple(m.pop_mark()))


def _setitems(m):
    items = m.pop_mark()
    target = m.pop()
    if not isinstance(target, dict) or len(items) % 2:
        raise ReadRefused("the answer's pickle sets items of what is not a dict")
    for key, value in zip(items[::2], items[1::2]):
        target[key] = value
    m.stack.append(target)


def _setitem(m):
    value, key, target = m.pop(), m.pop(), m.pop()
    if not isinstance(target, dict):
        raise ReadRefused("the answer's pickle sets items of what is not a dict")
    target[key] = value
    m.stack.append(target)


def _appends(m):
    items = m.pop_mark()
    target = m.pop()
    if not isinstance(target, list):
        raise ReadRefused("the answer's pickle appends to what is not a list")
    target.extend(items)
    m.stack.append(target)


def _append(m):
    value, target = m.pop(), m.pop()
    if not isinstance(target, list):
        raise ReadRefused("the answer's pickle appends to what is not a list")
    target.append(value)
    m.stack.append(target)


def _proto(m):
    if m.take(1)[0] > 4:
        raise ReadRefused("the answer's pickle has an unknown protocol")


def _frame(m):
    m.unpack("<Q")


def _memoize(m):
    _put(m, len(m.memo))


OPCODES = {
    b"\x80": _proto, b"\x95": _frame, b".": _stop, b"(": _mark, b"}": lambda m: m.stack.append({}),
    b"]": lambda m: m.stack.append([]), b")": _push(()), b"N": _push(None), b"\x88": _push(True),
    b"\x89": _push(False),
    b"q": lambda m: _put(m, m.unpack("<B")), b"r": lambda m: _put(m, m.unpack("<I")), b"\x94": _memoize,
    b"h": lambda m: _get(m, m.unpack("<B")), b"j": lambda m: _get(m, m.unpack("<I")),
    b"X": lambda m: _text(m, m.unpack("<I")), b"\x8c": lambda m: _text(m, m.unpack("<B")),
    b"K": lambda m: m.stack.append(m.unpack("<B")), b"M": lambda m: m.stack.append(m.unpack("<H")),
    b"J": lambda m: m.stack.append(m.unpack("<i")),
    b"\x8a": lambda m: m.stack.append(int.from_bytes(m.take(m.unpack("<B")), "little", signed=True)),
    b"G": lambda m: m.stack.append(m.unpack(">d")),
    b"c": _global, b"R": _reduce, b"Q": _persistent,
    b"t": _tuple, b"\x85": _tuple_of(1), b"\x86": _tuple_of(2), b"\x87": _tuple_of(3),
    b"u": _setitems, b"s": _setitem, b"e": _appends, b"a": _append,
}
