#!/usr/bin/env python3
"""Independent implementation of hush's group call keys (docs/crypto.md section 9) for the
test vector: the RFC 9605 section 5.1 ratchet, the key id layout, the key message encoding and
one SFrame (RFC 9605 section 4.4) frame with suite AES_128_GCM_SHA256_128. Uses only the Python
standard library and python-cryptography's AES-GCM. Checked by
group::tests::test_vector_matches_independent_implementation."""
import hashlib
import hmac

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SUITE = 0x0004  # AES_128_GCM_SHA256_128
NK, NN = 16, 12


def extract(salt, ikm):
    return hmac.new(salt or b"\0" * 32, ikm, hashlib.sha256).digest()


def expand(prk, info, length):
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:length]


def ratchet(base):
    return expand(extract(b"", base), b"SFrame 1.0 Ratchet", 32)


def kid(sender, generation, step):
    return (sender << 24) | (generation << 8) | step


def minimal(v):
    n = max(1, (v.bit_length() + 7) // 8)
    return v.to_bytes(n, "big")


def header(k, ctr):
    cfg, tail = 0, b""
    if k < 8:
        cfg |= k << 4
    else:
        kb = minimal(k)
        cfg |= 0x80 | ((len(kb) - 1) << 4)
        tail += kb
    if ctr < 8:
        cfg |= ctr
    else:
        cb = minimal(ctr)
        cfg |= 0x08 | (len(cb) - 1)
        tail += cb
    return bytes([cfg]) + tail


def sframe_encrypt(base, k, ctr, metadata, plaintext):
    secret = extract(b"", base)
    label = k.to_bytes(8, "big") + SUITE.to_bytes(2, "big")
    key = expand(secret, b"SFrame 1.0 Secret key " + label, NK)
    salt = expand(secret, b"SFrame 1.0 Secret salt " + label, NN)
    nonce = bytes(a ^ b for a, b in zip(salt, ctr.to_bytes(NN, "big")))
    h = header(k, ctr)
    return h + AESGCM(key).encrypt(nonce, plaintext, h + metadata), key, salt


base0 = bytes(range(0x40, 0x60))
base1 = ratchet(base0)
base2 = ratchet(base1)
call_id = bytes(range(16))
k = kid(3, 0x0102, 1)
message = bytes([1]) + call_id + bytes([3]) + (0x0102).to_bytes(2, "big") + bytes([1]) + base1
metadata = bytes([1, 0])  # layout version 1, audio
frame, key, salt = sframe_encrypt(base1, k, 0, metadata, b"hush group audio frame")
frame5, _, _ = sframe_encrypt(base1, k, 5, metadata, b"hush group audio frame")

print(f"base_key (gen 0x0102, step 0) = {base0.hex()}")
print(f"step 1 = ratchet(step 0)       = {base1.hex()}")
print(f"step 2 = ratchet(step 1)       = {base2.hex()}")
print(f"KID (sender 3, gen 0x0102, step 1) = 0x{k:08x}")
print(f"key message (call id 00..0f, step 1) =")
for i in range(0, len(message), 32):
    print(f"    {message[i:i+32].hex()}")
print(f"sframe_key  (step 1) = {key.hex()}")
print(f"sframe_salt (step 1) = {salt.hex()}")
print(f"metadata = {metadata.hex()}   plaintext = 'hush group audio frame'")
print(f"frame, CTR 0 = {frame.hex()}")
print(f"frame, CTR 5 = {frame5.hex()}")
