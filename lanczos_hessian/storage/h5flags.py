"""Clear the "open for writing" flags a killed HDF5 writer leaves in its file's superblock.

Since HDF5 1.10, a file written with the latest format records in its superblock (version 2
or 3) that it is open for writing (and for SWMR writing); a process killed with ``kill -9``
never clears those flags, and HDF5 then refuses to open the file for writing again ("file is
already open for write", the job of the ``h5clear -s`` tool). Resuming a killed run needs
exactly that open, so this module resets the flags and the superblock checksum itself.

Superblock version 2/3 layout (HDF5 File Format Specification, Sec. II.A, "Superblock
Version 2"): signature (8 bytes), version (1), size of offsets ``s`` (1), size of lengths (1),
file consistency flags (1), four addresses (``4 s`` bytes), then a Jenkins lookup3 checksum
(4 bytes, little-endian) of everything before it.
"""

from __future__ import annotations

from pathlib import Path

SIGNATURE = b"\x89HDF\r\n\x1a\n"
FLAGS_OFFSET = 11
_MASK = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


def _word(data: bytes, i: int) -> int:
    return data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle`` of ``data``, as HDF5 checksums its metadata."""
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & _MASK
    i = 0
    while length > 12:
        a, b, c = (a + _word(data, i)) & _MASK, (b + _word(data, i + 4)) & _MASK, \
            (c + _word(data, i + 8)) & _MASK
        a = (a - c) & _MASK; a ^= _rot(c, 4); c = (c + b) & _MASK  # noqa: E702 (mix)
        b = (b - a) & _MASK; b ^= _rot(a, 6); a = (a + c) & _MASK  # noqa: E702
        c = (c - b) & _MASK; c ^= _rot(b, 8); b = (b + a) & _MASK  # noqa: E702
        a = (a - c) & _MASK; a ^= _rot(c, 16); c = (c + b) & _MASK  # noqa: E702
        b = (b - a) & _MASK; b ^= _rot(a, 19); a = (a + c) & _MASK  # noqa: E702
        c = (c - b) & _MASK; c ^= _rot(b, 4); b = (b + a) & _MASK  # noqa: E702
        length -= 12
        i += 12
    if length == 0:
        return c
    tail = data[i:i + length] + bytes(12 - length)
    a, b, c = (a + _word(tail, 0)) & _MASK, (b + _word(tail, 4)) & _MASK, \
        (c + _word(tail, 8)) & _MASK
    c ^= b; c = (c - _rot(b, 14)) & _MASK  # noqa: E702 (final)
    a ^= c; a = (a - _rot(c, 11)) & _MASK  # noqa: E702
    b ^= a; b = (b - _rot(a, 25)) & _MASK  # noqa: E702
    c ^= b; c = (c - _rot(b, 16)) & _MASK  # noqa: E702
    a ^= c; a = (a - _rot(c, 4)) & _MASK  # noqa: E702
    b ^= a; b = (b - _rot(a, 14)) & _MASK  # noqa: E702
    c ^= b; c = (c - _rot(b, 24)) & _MASK  # noqa: E702
    return c


def clear_write_flags(path) -> bool:
    """Reset the consistency flags of ``path``'s superblock; True if they were set.

    Only for a file whose writer is known to be dead (the resume of a killed run). Refuses
    (``ValueError``) a file whose superblock is not version 2/3 at offset 0 or whose stored
    checksum does not match, so a damaged file is never made worse.
    """
    path = Path(path)
    with open(path, "r+b") as handle:
        head = handle.read(12)
        if head[:8] != SIGNATURE or head[8] not in (2, 3):
            raise ValueError(f"{path}: no version 2/3 HDF5 superblock at offset 0")
        size = 12 + 4 * head[9]
        handle.seek(0)
        block = bytearray(handle.read(size + 4))
        stored = int.from_bytes(block[size:size + 4], "little")
        if lookup3(bytes(block[:size])) != stored:
            raise ValueError(f"{path}: superblock checksum mismatch; not touching the file")
        if block[FLAGS_OFFSET] == 0:
            return False
        block[FLAGS_OFFSET] = 0
        block[size:size + 4] = lookup3(bytes(block[:size])).to_bytes(4, "little")
        handle.seek(0)
        handle.write(block)
    return True
