"""API tokens and roles.

A token is ``llm_`` + 43 random URL-safe characters (256 bits), shown once at creation; only its
SHA-256 is stored (a fast hash is enough for a high-entropy secret). Tokens can expire and be
revoked. Failed authentications are counted per client address: past ``limit`` failures in
``window`` seconds the address gets 429 until the window passes. Tokens never reach the logs:
they travel only in the ``Authorization`` header, which the access log does not record.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import threading
import time
from collections import defaultdict, deque

from sqlalchemy import select
from sqlalchemy.orm import Session

from lifelm.service.db import Token, User, utcnow

ROLES = ("viewer", "member", "owner")  # each may do what the ones before it may


def new_secret() -> str:
    """A fresh random token."""
    return "llm_" + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """What is stored of a token."""
    return hashlib.sha256(secret.encode()).hexdigest()


def issue(s: Session, user: User, *, name: str = "", days: float | None = 90) -> tuple[Token, str]:
    """Create a token for ``user``; return the row and the secret (shown once)."""
    secret = new_secret()
    expires = utcnow() + dt.timedelta(days=days) if days else None
    tok = Token(
        user_id=user.id, name=name, digest=digest(secret), prefix=secret[:8], expires=expires
    )
    s.add(tok)
    s.flush()
    return tok, secret


def lookup(s: Session, secret: str) -> User | None:
    """The user of a valid (known, unrevoked, unexpired) token, else None."""
    tok = s.scalars(select(Token).where(Token.digest == digest(secret))).first()
    if tok is None or tok.revoked or (tok.expires is not None and tok.expires <= utcnow()):
        return None
    return s.get(User, tok.user_id)


def role_at_least(role: str | None, needed: str) -> bool:
    """Whether ``role`` includes the rights of ``needed``."""
    return role is not None and ROLES.index(role) >= ROLES.index(needed)


class FailureLimiter:
    """Sliding-window count of failed authentications per client address."""

    def __init__(self, limit: int = 10, window: float = 60.0) -> None:
        self.limit, self.window = limit, window
        self._fails: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _trim(self, q: deque[float], now: float) -> None:
        while q and q[0] <= now - self.window:
            q.popleft()

    def blocked(self, client: str) -> float:
        """Seconds to wait before ``client`` may try again (0 when not blocked)."""
        now = time.monotonic()
        with self._lock:
            q = self._fails.get(client)
            if not q:
                return 0.0
            self._trim(q, now)
            return q[0] + self.window - now if len(q) >= self.limit else 0.0

    def fail(self, client: str) -> None:
        """Record one failed attempt."""
        with self._lock:
            self._fails[client].append(time.monotonic())
