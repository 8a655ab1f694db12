#!/usr/bin/env python3
"""A reader of event_crypto envelopes outside PostgreSQL, written from docs/format.md alone.

Given the master key and rows of the key catalog (event_crypto.keys: key_id, version, algorithm, wrapped_key,
handle), it decrypts envelopes of format 1 and 2 at a field location, with an optional context.
Needs Python 3.9+ and the `cryptography` package; for compressed envelopes (format 2 flag 0x02) also the
`zstandard` package (imported only when such an envelope is read).
"""
import base64
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ALGORITHMS = {1: "aes-256-gcm", 2: "chacha20-poly1305"}
FLAG_CONTEXT, FLAG_COMPRESSED = 0x01, 0x02
MAX_DECOMPRESSED = 2**28 - 1        # the longest string a jsonb value holds
MAX_WINDOW_LOG = 23


def decompress(frame):
    """One zstd frame, decompressed with a hard cap on the output, never by the size the frame declares: the input
    goes in 16 bytes at a time, so one call yields at most a few blocks (128 KiB each) before the cap is checked."""
    import zstandard

    d = zstandard.ZstdDecompressor(max_window_size=2**MAX_WINDOW_LOG).decompressobj()
    out = bytearray()
    for i in range(0, len(frame), 16):
        if d.eof:
            raise ValueError("bytes follow the zstd frame")
        out += d.decompress(frame[i:i + 16])
        if len(out) > MAX_DECOMPRESSED:
            raise ValueError("the compressed value expands beyond the limit")
    if not d.eof or d.unused_data:
        raise ValueError("not exactly one complete zstd frame")
    return bytes(out)


def b64url_decode(s):
    raw = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != s:
        raise ValueError("not canonical unpadded base64url")
    return raw


def location(steps):
    """steps: object keys (str) and array indexes (int), from the document root to the field."""
    out = b""
    for s in steps:
        if isinstance(s, int):
            out += b"\x02" + struct.pack(">I", s)
        else:
            k = s.encode()
            out += b"\x01" + struct.pack(">I", len(k)) + k
    return out


def parse(text):
    """(format, algorithm, flags, key reference, version, header, rest): the key reference is the key id (format 1)
    or the handle as the catalog stores it, a signed 64-bit integer (format 2)."""
    if text.startswith("$ec2$"):
        blob = b64url_decode(text[5:])
        if len(blob) < 10:
            raise ValueError("truncated")
        algorithm, flags = blob[0] >> 4, blob[0] & 0x0F
        handle = int.from_bytes(blob[1:9], "big", signed=True)
        if handle == 0:
            raise ValueError("handle 0")
        version, i = 0, 9
        while True:
            if i >= len(blob) or i > 13:
                raise ValueError("bad version")
            b = blob[i]
            version |= (b & 0x7F) << (7 * (i - 9))
            i += 1
            if not b & 0x80:
                if i > 10 and b == 0:
                    raise ValueError("version not minimal")
                break
        if not 1 <= version <= 2**31 - 1:
            raise ValueError("version out of range")
        return 2, algorithm, flags, handle, version, blob[:i], blob[i:]
    if text.startswith("$ec1$"):
        blob = b64url_decode(text[5:])
        algorithm, flags, n = blob[0], blob[1], blob[2]
        if n == 0:
            raise ValueError("empty key id")
        key_id = blob[3:3 + n].decode()
        version = struct.unpack(">I", blob[3 + n:7 + n])[0]
        if version == 0:
            raise ValueError("version 0")
        return 1, algorithm, flags, key_id, version, blob[:7 + n], blob[7 + n:]
    raise ValueError("not an envelope of format 1 or 2")


def unwrap(master_key, key_id, version, algorithm_name, wrapped, purpose="data"):
    """A data key from event_crypto.keys.wrapped_key (docs/format.md, Wrapped data keys)."""
    salt = b"event_crypto/wrap/v1"
    kek = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"wrapping key").derive(master_key)
    if wrapped[0] != 1 or len(wrapped) != 61:
        raise ValueError("unknown wrapped key format")
    aad = salt + b"\x00" + purpose.encode() + b"\x00" + algorithm_name.encode() + b"\x00" + struct.pack(">I", version) + key_id.encode()
    return AESGCM(kek).decrypt(wrapped[1:13], wrapped[13:], aad)


def decrypt(text, steps, context, catalog, master_key):
    """catalog: rows (key_id, version, algorithm, wrapped_key, handle) of event_crypto.keys."""
    fmt, algorithm, flags, ref, version, header, rest = parse(text)
    known = FLAG_CONTEXT | (FLAG_COMPRESSED if fmt == 2 else 0)
    if flags & ~known or algorithm not in ALGORITHMS:
        raise ValueError("malformed header")
    if fmt == 2:
        rows = [r for r in catalog if r[4] == ref and r[1] == version]   # WHERE handle = h AND version = v
    else:
        rows = [r for r in catalog if r[0] == ref and r[1] == version]   # WHERE key_id = k AND version = v
    if not rows:
        raise KeyError("no such key version")
    key_id, _, algorithm_name, wrapped, _ = rows[0]
    if wrapped is None:
        raise KeyError(f"key {key_id!r} is shredded")
    if algorithm_name != ALGORITHMS[algorithm]:
        raise ValueError("the algorithm differs from the key's")
    key = unwrap(master_key, key_id, version, algorithm_name, wrapped)
    prefix = text[:5].encode()
    aad = prefix + header + location(steps) + b"\x00"
    if flags & 1:
        c = context.encode()
        aad += struct.pack(">I", len(c)) + c
    elif context is not None:
        raise ValueError("envelope not bound to a context")
    aead = AESGCM(key) if algorithm == 1 else ChaCha20Poly1305(key)
    plaintext = aead.decrypt(rest[:12], rest[12:], aad)
    if flags & FLAG_COMPRESSED:
        plaintext = decompress(plaintext)
    return plaintext.decode()
