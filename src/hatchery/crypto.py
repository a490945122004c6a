"""Credentials kept at rest (project role passwords) are encrypted with the settings' key."""

import base64
import hashlib

from cryptography.fernet import Fernet


def _fernet(key: bytes) -> Fernet:
    # The settings key is free-form text of 32+ characters; Fernet wants 32 url-safe bytes.
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(key).digest()))


def encrypt(plaintext: str, key: bytes) -> bytes:
    return _fernet(key).encrypt(plaintext.encode())


def decrypt(ciphertext: bytes, key: bytes) -> str:
    return _fernet(key).decrypt(ciphertext).decode()
