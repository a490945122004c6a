"""Bearer tokens: `hat_<prefix>_<secret>`, shown once, stored as prefix + HMAC-SHA256."""

import hashlib
import hmac
import secrets
from dataclasses import dataclass

TOKEN_SCHEME = "hat"  # noqa: S105 (a prefix, not a secret)


@dataclass(frozen=True)
class Token:
    prefix: str
    secret: str

    @property
    def plaintext(self) -> str:
        return f"{TOKEN_SCHEME}_{self.prefix}_{self.secret}"


def generate() -> Token:
    return Token(prefix=secrets.token_hex(6), secret=secrets.token_urlsafe(32))


def parse(plaintext: str) -> Token | None:
    scheme, _, rest = plaintext.partition("_")
    prefix, _, secret = rest.partition("_")
    if scheme != TOKEN_SCHEME or len(prefix) != 12 or len(secret) < 32:
        return None
    return Token(prefix=prefix, secret=secret)


def digest(token: Token, key: bytes) -> str:
    # The secret has 256 bits of entropy, so a keyed fast hash is enough; the key
    # keeps a leaked table useless without the settings.
    return hmac.new(key, token.plaintext.encode(), hashlib.sha256).hexdigest()


def matches(token: Token, stored_digest: str, key: bytes) -> bool:
    return hmac.compare_digest(digest(token, key), stored_digest)
