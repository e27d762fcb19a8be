"""The vhost-user back-end protocol for one virtio-net device, without I/O.

QEMU (the front-end) connects to our UNIX socket and sends messages: a
header (request u32, flags u32, payload size u32, little-endian) and a
payload, sometimes with file descriptors attached (SCM_RIGHTS): the guest's
memory regions, the eventfds that signal each ring.  ``MessageDecoder``
cuts the byte stream into messages, refusing a wrong version or an
oversized payload; ``Backend`` keeps the device's state (features, memory
table, rings) and turns each message into ``Effects`` for the I/O side
(``worker/vhost_io.py``): a reply to send, regions to map, descriptors to
close.  Queues are built here (``virtqueue.Virtqueue``) on the memory the
I/O side mapped.

Only what a network back-end without migration needs is offered: no dirty
log, one queue pair (receive ring 0, transmit ring 1).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from .virtqueue import GuestMemory, QueueError, Virtqueue

# -- wire format -------------------------------------------------------------------
HEADER = struct.Struct("<III")
VERSION = 1
FLAG_VERSION_MASK = 0x3
FLAG_REPLY = 1 << 2
FLAG_NEED_REPLY = 1 << 3
MAX_PAYLOAD = 4096
MAX_FDS = 8
MAX_REGIONS = 8
_U64 = struct.Struct("<Q")
_STATE = struct.Struct("<II")               # ring index, number
_ADDR = struct.Struct("<IIQQQQ")            # index, flags, desc, used, avail, log
_REGION = struct.Struct("<QQQQ")            # gpa, size, uva, mmap offset
_MEM_HEAD = struct.Struct("<II")            # region count, padding
RING_INDEX_MASK = 0xFF
RING_NOFD = 1 << 8

# requests (front-end to back-end)
GET_FEATURES, SET_FEATURES, SET_OWNER, RESET_OWNER, SET_MEM_TABLE = 1, 2, 3, 4, 5
SET_LOG_BASE, SET_LOG_FD = 6, 7
SET_VRING_NUM, SET_VRING_ADDR, SET_VRING_BASE, GET_VRING_BASE = 8, 9, 10, 11
SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR = 12, 13, 14
GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES, GET_QUEUE_NUM = 15, 16, 17
SET_VRING_ENABLE = 18
RESET_DEVICE = 34

# device features
F_GUEST_CSUM, F_GUEST_TSO4, F_GUEST_TSO6 = 1, 7, 8
F_MRG_RXBUF = 15
F_INDIRECT_DESC, F_EVENT_IDX = 28, 29
F_PROTOCOL_FEATURES = 30
F_VERSION_1 = 32
OFFERED = sum(1 << bit for bit in (F_GUEST_CSUM, F_GUEST_TSO4, F_GUEST_TSO6, F_MRG_RXBUF,
                                   F_INDIRECT_DESC, F_EVENT_IDX, F_PROTOCOL_FEATURES,
                                   F_VERSION_1))
# protocol features
PF_REPLY_ACK, PF_RESET_DEVICE = 3, 13
OFFERED_PROTOCOL = (1 << PF_REPLY_ACK) | (1 << PF_RESET_DEVICE)

RX, TX = 0, 1
RINGS = 2
HDR_LEN = 12                                # virtio_net_hdr with num_buffers
LEGACY_HDR_LEN = 10


class ProtocolError(Exception):
    """The front-end broke the protocol: the connection is dropped."""


@dataclass
class Message:
    """One vhost-user message, with the fds that came with it."""

    request: int
    flags: int
    payload: bytes
    fds: list[int] = field(default_factory=list)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)


class MessageDecoder:
    """Messages from the stream.  ``wanted`` is how much to read next: the
    I/O side reads no more than that, so descriptors that arrive with a
    message's bytes belong to that message."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.header: tuple[int, int, int] | None = None
        self.fds: list[int] = []

    def wanted(self) -> int:
        if self.header is None:
            return HEADER.size - len(self.buffer)
        return self.header[2] - len(self.buffer)

    def feed(self, data: bytes, fds: list[int]) -> Message | None:
        """Add what was read (at most ``wanted`` bytes); the message if it is
        now complete.  ProtocolError for a bad header (the descriptors
        received so far stay in ``fds`` for the caller to close)."""
        self.fds += fds
        self.buffer += data
        if self.header is None:
            if len(self.buffer) < HEADER.size:
                return None
            request, flags, size = HEADER.unpack(self.buffer)
            if flags & FLAG_VERSION_MASK != VERSION:
                raise ProtocolError(f"version {flags & FLAG_VERSION_MASK}, not {VERSION}")
            if size > MAX_PAYLOAD:
                raise ProtocolError(f"payload of {size} bytes")
            self.header = (request, flags, size)
            self.buffer.clear()
        if len(self.buffer) < self.header[2]:
            return None
        message = Message(self.header[0], self.header[1], bytes(self.buffer), self.fds)
        self.header, self.fds = None, []
        self.buffer.clear()
        return message


def reply(request: int, payload: bytes) -> bytes:
    return HEADER.pack(request, VERSION | FLAG_REPLY, len(payload)) + payload


def ack(request: int, ok: bool) -> bytes:
    """REPLY_ACK's answer: 0 for success."""
    return reply(request, _U64.pack(0 if ok else 1))


# -- the device ----------------------------------------------------------------------
@dataclass(frozen=True)
class RegionSpec:
    """A memory region as the front-end describes it, with its descriptor."""
    gpa: int
    size: int
    uva: int
    offset: int
    fd: int


@dataclass
class Effects:
    """What the I/O side does after a message: send ``reply`` (an answer,
    or the acknowledgement built by ``ack`` when ``need_ack``); map
    ``memory`` and hand it to ``Backend.set_memory``; close ``close``;
    log ``error``."""
    reply: bytes | None = None
    need_ack: bool = False
    ok: bool = True
    memory: list[RegionSpec] | None = None
    close: list[int] = field(default_factory=list)
    error: str = ""


@dataclass
class Ring:
    """One virtqueue as the front-end described it."""

    num: int = 0
    addr: tuple[int, int, int] | None = None      # desc, avail, used (QEMU's addresses)
    base: int = 0
    kick: int | None = None
    call: int | None = None
    started: bool = False
    enabled: bool = False
    queue: Virtqueue | None = None


class Backend:
    """One virtio-net device's state over a vhost-user connection.
    ``count(name)`` counts dropped chains and broken queues."""

    def __init__(self, count: Callable[[str], None]) -> None:
        self.count = count
        self.features = 0
        self.protocol_features = 0
        self.memory: GuestMemory | None = None
        self.rings = [Ring() for _ in range(RINGS)]
        self._handlers: dict[int, Callable[[Message, Effects], None]] = {
            GET_FEATURES: self._get_features, SET_FEATURES: self._set_features,
            SET_OWNER: lambda m, e: None, RESET_OWNER: self._reset,
            RESET_DEVICE: self._reset, SET_MEM_TABLE: self._set_mem_table,
            SET_VRING_NUM: self._set_vring_num, SET_VRING_ADDR: self._set_vring_addr,
            SET_VRING_BASE: self._set_vring_base, GET_VRING_BASE: self._get_vring_base,
            SET_VRING_KICK: self._set_vring_kick, SET_VRING_CALL: self._set_vring_call,
            SET_VRING_ERR: self._set_vring_err,
            GET_PROTOCOL_FEATURES: self._get_protocol_features,
            SET_PROTOCOL_FEATURES: self._set_protocol_features,
            GET_QUEUE_NUM: self._get_queue_num, SET_VRING_ENABLE: self._set_vring_enable,
        }

    # -- what the data path asks ------------------------------------------------------
    def has(self, bit: int) -> bool:
        return bool(self.features >> bit & 1)

    @property
    def header_len(self) -> int:
        return HDR_LEN if self.has(F_VERSION_1) or self.has(F_MRG_RXBUF) else LEGACY_HDR_LEN

    @property
    def offload(self) -> bool:
        """The guest takes partial checksums and TCP segmentation offload."""
        return all(self.has(bit) for bit in (F_GUEST_CSUM, F_GUEST_TSO4, F_GUEST_TSO6))

    def queue(self, index: int) -> Virtqueue | None:
        """The ring's queue when it is started (enabled or not)."""
        ring = self.rings[index]
        return ring.queue if ring.started else None

    def fds(self) -> list[int]:
        """Every descriptor the device holds (to close on disconnect)."""
        return [fd for ring in self.rings for fd in (ring.kick, ring.call) if fd is not None]

    # -- messages ---------------------------------------------------------------------
    def handle(self, msg: Message) -> Effects:
        effects = Effects()
        handler = self._handlers.get(msg.request)
        if handler is None:
            effects.ok = False
            effects.error = f"unsupported request {msg.request}"
        else:
            try:
                handler(msg, effects)
            except (struct.error, ValueError) as exc:
                effects.ok = False
                effects.error = f"request {msg.request}: {exc}"
        if not effects.ok:
            effects.memory = None
        if effects.memory is None:
            effects.close += msg.fds            # every descriptor not kept
        effects.need_ack = (msg.need_reply and effects.reply is None
                            and bool(self.protocol_features >> PF_REPLY_ACK & 1))
        return effects

    def _get_features(self, msg: Message, effects: Effects) -> None:
        effects.reply = reply(msg.request, _U64.pack(OFFERED))

    def _set_features(self, msg: Message, effects: Effects) -> None:
        (features,) = _U64.unpack(msg.payload)
        if features & ~OFFERED:
            raise ValueError(f"features {features & ~OFFERED:#x} were not offered")
        self.features = features
        if not self.has(F_PROTOCOL_FEATURES):
            for ring in self.rings:             # no SET_VRING_ENABLE will come
                ring.enabled = True

    def _get_protocol_features(self, msg: Message, effects: Effects) -> None:
        effects.reply = reply(msg.request, _U64.pack(OFFERED_PROTOCOL))

    def _set_protocol_features(self, msg: Message, effects: Effects) -> None:
        (features,) = _U64.unpack(msg.payload)
        self.protocol_features = features & OFFERED_PROTOCOL

    def _get_queue_num(self, msg: Message, effects: Effects) -> None:
        effects.reply = reply(msg.request, _U64.pack(1))

    def _reset(self, msg: Message, effects: Effects) -> None:
        effects.close += self.fds()
        self.rings = [Ring() for _ in range(RINGS)]
        self.features = 0

    def _set_mem_table(self, msg: Message, effects: Effects) -> None:
        count, _ = _MEM_HEAD.unpack_from(msg.payload)
        if not 0 < count <= MAX_REGIONS or len(msg.fds) != count:
            raise ValueError(f"{count} regions with {len(msg.fds)} descriptors")
        if len(msg.payload) < _MEM_HEAD.size + count * _REGION.size:
            raise ValueError("short region table")
        regions = []
        for index, fd in enumerate(msg.fds):
            gpa, size, uva, offset = _REGION.unpack_from(msg.payload,
                                                         _MEM_HEAD.size + index * _REGION.size)
            if size == 0 or max(gpa, uva, offset) + size > 1 << 64:
                raise ValueError(f"region {index} has a bad size")
            regions.append(RegionSpec(gpa, size, uva, offset, fd))
        effects.memory = regions

    def set_memory(self, memory: GuestMemory | None) -> list[str]:
        """The regions are mapped (None: unmapped): queues are rebuilt on
        them and the old views dropped; what went wrong, if anything."""
        self.memory = memory
        return [error for index in range(RINGS) if (error := self._build(index))]

    def _ring(self, msg: Message, layout: struct.Struct = _STATE) -> tuple[Ring, int, tuple]:
        fields = layout.unpack_from(msg.payload)
        index = fields[0]
        if index >= RINGS:
            raise ValueError(f"ring {index} does not exist")
        return self.rings[index], index, fields

    def _set_vring_num(self, msg: Message, effects: Effects) -> None:
        ring, _, (_, num) = self._ring(msg)
        if num < 1 or num > 32768 or num & (num - 1):
            raise ValueError(f"ring size {num}")
        ring.num = num

    def _set_vring_addr(self, msg: Message, effects: Effects) -> None:
        ring, index, (_, _, desc, used, avail, _) = self._ring(msg, _ADDR)
        ring.addr = (desc, avail, used)
        if ring.started:
            effects.error = self._build(index)

    def _set_vring_base(self, msg: Message, effects: Effects) -> None:
        ring, _, (_, base) = self._ring(msg)
        ring.base = base & 0xFFFF

    def _get_vring_base(self, msg: Message, effects: Effects) -> None:
        """Stops the ring: the answer is where the next chain will be taken."""
        ring, index, _ = self._ring(msg)
        if ring.queue is not None:
            ring.base = ring.queue.last_avail
        ring.started, ring.queue = False, None
        if ring.kick is not None:
            effects.close.append(ring.kick)
            ring.kick = None
        effects.reply = reply(msg.request, _STATE.pack(index, ring.base))

    def _fd_for(self, msg: Message) -> tuple[Ring, int, int | None]:
        (value,) = _U64.unpack(msg.payload)
        index = value & RING_INDEX_MASK
        if index >= RINGS:
            raise ValueError(f"ring {index} does not exist")
        if value & RING_NOFD:
            return self.rings[index], index, None
        if len(msg.fds) != 1:
            raise ValueError(f"{len(msg.fds)} descriptors where one was due")
        return self.rings[index], index, msg.fds.pop()

    def _set_vring_kick(self, msg: Message, effects: Effects) -> None:
        ring, index, fd = self._fd_for(msg)
        if ring.kick is not None:
            effects.close.append(ring.kick)
        ring.kick = fd
        if fd is None:
            raise ValueError("polled rings are not supported")
        ring.started = True
        effects.error = self._build(index)

    def _set_vring_call(self, msg: Message, effects: Effects) -> None:
        ring, _, fd = self._fd_for(msg)
        if ring.call is not None:
            effects.close.append(ring.call)
        ring.call = fd

    def _set_vring_err(self, msg: Message, effects: Effects) -> None:
        self._fd_for(msg)                       # checked, then closed: errors are not reported

    def _set_vring_enable(self, msg: Message, effects: Effects) -> None:
        ring, _, (_, enable) = self._ring(msg)
        ring.enabled = bool(enable)

    def _build(self, index: int) -> str:
        """(Re)make the ring's queue on the current memory; an error or ""."""
        ring = self.rings[index]
        if ring.queue is not None:
            ring.base = ring.queue.last_avail
        ring.queue = None
        if not ring.started or self.memory is None or ring.addr is None or not ring.num:
            return ""
        desc, avail, used = ring.addr
        try:
            ring.queue = Virtqueue(self.memory, ring.num, desc, avail, used, ring.base,
                                   self.has(F_EVENT_IDX), self.count)
        except QueueError as exc:
            return f"ring {index}: {exc}"
        return ""
