"""Key format, keyed hashes and the server secret.

A key is ``sk-ss-<prefix>_<secret>``: a 10-hex-character public prefix (stored in clear, used to find
the key, shown in lists as GitHub and Stripe show theirs) and 256 random bits. Only
HMAC-SHA256(server secret, whole key) is stored.

Why a keyed hash and not a slow one (bcrypt, scrypt, Argon2): slow hashes protect low-entropy secrets
(passwords) from offline guessing; a 256-bit random key cannot be guessed however fast the hash, and
a slow hash would cost 50-500 ms of CPU on every request. LiteLLM stores a plain SHA-256 of its keys
(`hash_token`); the HMAC adds that a stolen database alone cannot even check a guess without the secret,
which lives outside the database (OWASP Password Storage Cheat Sheet, "peppering"). Comparison is
`hmac.compare_digest`: constant time in the length of the hash, never stopping at the first difference.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from siglip_serve.errors import AccountsConfigError

KEY_PREFIX = "sk-ss-"
PREFIX_HEX = 10
_KEY = re.compile(rf"{KEY_PREFIX}([0-9a-f]{{{PREFIX_HEX}}})_[A-Za-z0-9_-]{{43}}")
SECRET_FILE = "key-secret"
_FINGERPRINT_MESSAGE = b"siglip-serve key secret fingerprint v1"


def new_key() -> tuple[str, str]:
    """(key, prefix): a fresh key and its public prefix."""
    prefix = secrets.token_hex(PREFIX_HEX // 2)
    return f"{KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}", prefix


def prefix_of(token: str) -> str | None:
    """The public prefix of a well-formed key, else None (such a token can only be a static key)."""
    match = _KEY.fullmatch(token)
    return match.group(1) if match else None


def shown_prefix(prefix: str) -> str:
    """How a key is named in lists: its first characters, as OpenAI's dashboard shows 'sk-...abcd'."""
    return f"{KEY_PREFIX}{prefix}"


class KeyHasher:
    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise AccountsConfigError("the key secret must be at least 16 bytes")
        self._secret = secret

    def hash(self, key: str) -> str:
        return hmac.new(self._secret, key.encode("utf-8"), hashlib.sha256).hexdigest()

    def matches(self, key: str, stored_hash: str) -> bool:
        return hmac.compare_digest(self.hash(key).encode("ascii"), stored_hash.encode("ascii"))

    def fingerprint(self) -> str:
        """Names the secret without revealing it: the store keeps it to refuse a server with another secret."""
        return hmac.new(self._secret, _FINGERPRINT_MESSAGE, hashlib.sha256).hexdigest()[:16]


def load_secret(configured: str | None, data_dir: str) -> bytes:
    """The configured secret, else the one in DATA_DIR/key-secret (made on first use, mode 0600)."""
    if configured:
        return configured.encode("utf-8")
    if "://" in data_dir:
        raise AccountsConfigError(f"--data-dir {data_dir} is not a local directory: set --key-secret "
                                  "(SIGLIP_SERVE_KEY_SECRET) for the key database")
    path = Path(data_dir).expanduser() / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # Written aside, then linked into place: of two processes starting at once one link wins, and
        # neither ever reads a half-written file.
        draft = path.with_name(f".{SECRET_FILE}.{secrets.token_hex(4)}")
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(32) + "\n")
        try:
            os.link(draft, path)
        except FileExistsError:
            pass
        finally:
            draft.unlink()
    text = path.read_text().strip()
    if not text:
        raise AccountsConfigError(f"the key secret file {path} is empty")
    return text.encode("utf-8")
