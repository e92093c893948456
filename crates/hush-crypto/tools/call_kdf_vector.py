#!/usr/bin/env python3
"""Independent implementation of hush's call key derivation (docs/crypto.md), used to produce
the test vector checked by `call::tests::test_vector_matches_independent_implementation`.

Needs only python3-cryptography (X25519) and the standard library (HMAC-SHA256 for HKDF).
Run: python3 crates/hush-crypto/tools/call_kdf_vector.py
"""
import hashlib
import hmac

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat


def x25519_public(seed: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def x25519(seed: bytes, peer: bytes) -> bytes:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    return X25519PrivateKey.from_private_bytes(seed).exchange(X25519PublicKey.from_public_bytes(peer))


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:length]


def u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


# ---- inputs ----
caller_identity = b"\x05" + x25519_public(bytes([0xA0] * 32))
callee_identity = b"\x05" + x25519_public(bytes([0xB0] * 32))
call_id = bytes(range(0x00, 0x10))
caller_seed = bytes(range(0x20, 0x40))
callee_seed = bytes(range(0x40, 0x60))
offered = [0x0008, 0x0007]
chosen = 0x0008
key_len = 32  # AEAD_AES_256_GCM
version = 1

caller_eph = x25519_public(caller_seed)
callee_eph = x25519_public(callee_seed)
shared = x25519(caller_seed, callee_eph)
assert shared == x25519(callee_seed, caller_eph)

transcript = (
    b"HUSH-CALL" + bytes([version]) + call_id + caller_identity + callee_identity
    + caller_eph + callee_eph + bytes([len(offered)]) + b"".join(c.to_bytes(2, "big") for c in offered)
    + chosen.to_bytes(2, "big")
)
salt = hashlib.sha256(transcript).digest()
s0 = hkdf_extract(salt, shared)
confirm = hkdf_expand(s0, b"hush v1 answer confirm" + u32(0), 32)


def epoch_keys(s: bytes, e: int):
    c2e = hkdf_expand(s, b"hush v1 srtp caller to callee" + u32(e), key_len + 12)
    e2c = hkdf_expand(s, b"hush v1 srtp callee to caller" + u32(e), key_len + 12)
    return c2e[:key_len], c2e[key_len:], e2c[:key_len], e2c[key_len:]


c2e_key, c2e_salt, e2c_key, e2c_salt = epoch_keys(s0, 0)
s1 = hkdf_expand(s0, b"hush v1 next epoch" + u32(1), 32)
c2e_key1, c2e_salt1, e2c_key1, e2c_salt1 = epoch_keys(s1, 1)

for name, value in [
    ("caller_identity", caller_identity), ("callee_identity", callee_identity),
    ("call_id", call_id), ("caller_seed", caller_seed), ("callee_seed", callee_seed),
    ("caller_ephemeral", caller_eph), ("callee_ephemeral", callee_eph), ("x25519_shared", shared),
    ("transcript", transcript), ("salt_sha256_transcript", salt), ("epoch0_secret", s0),
    ("confirm", confirm), ("caller_to_callee_key", c2e_key), ("caller_to_callee_salt", c2e_salt),
    ("callee_to_caller_key", e2c_key), ("callee_to_caller_salt", e2c_salt), ("epoch1_secret", s1),
    ("epoch1_caller_to_callee_key", c2e_key1), ("epoch1_caller_to_callee_salt", c2e_salt1),
    ("epoch1_callee_to_caller_key", e2c_key1), ("epoch1_callee_to_caller_salt", e2c_salt1),
]:
    print(f"{name} = {value.hex()}")
