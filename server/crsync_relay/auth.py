"""Relay access tokens: HS256 JWTs scoped to store ids, with an expiry.

Claims: ``sub`` (who the token is for, free text), ``stores`` (list of store ids and prefix
scopes, see :func:`scope_allows`), ``iat``,
``exp`` (required). Signed with the relay's secret (at least 32 bytes).
"""

from __future__ import annotations

import logging
import os
import stat
import time
from pathlib import Path

import attrs
import jwt

from crsync.errors import AuthError, CrsyncError
from crsync.protocol import ErrorCode

from .refusal import Refusal

ALGORITHM = "HS256"
MIN_SECRET_BYTES = 32

log = logging.getLogger(__name__)


@attrs.frozen
class TokenClaims:
    """What a verified token grants."""

    subject: str
    stores: tuple[str, ...]
    expires: int

    def allows(self, store: str) -> bool:
        """True if the token's scope covers a store id (see :func:`scope_allows`)."""
        return any(scope_allows(s, store) for s in self.stores)


SEGMENT_SEPARATOR = "."
"""Separates the segments of a store id for prefix scopes: ``alice*`` grants ``alice`` and
``alice.notes``, never ``alice2``, ``alicebob`` or ``alice-evil``."""


def scope_allows(scope: str, store: str) -> bool:
    """Whether one scope of a token grants a store id.

    * ``alice``: exactly ``alice``.
    * ``*``: every store.
    * ``alice*`` (the prefix ends with a letter or digit): ``alice`` and the stores under it,
      ``alice.<anything>``; a prefix never grants a longer name (``alicebob``, ``alice2``,
      ``alice-evil``), so minting ``user + "*"`` gives each user only their own stores.
    * ``team-*`` (the prefix ends with ``-``, ``_`` or ``.``): every id that starts with the
      prefix, as the operator spelled it.
    """
    if not scope.endswith("*"):
        return scope == store
    prefix = scope[:-1]
    if not prefix:
        return True
    if prefix[-1] in "-_.":
        return len(store) > len(prefix) and store.startswith(prefix)
    return store == prefix or store.startswith(prefix + SEGMENT_SEPARATOR)


def _check_secret_mode(path: Path) -> None:
    """Refuse a secret file other users can read (anyone who reads it can mint tokens for every
    store); warn when its group can. POSIX only: Windows has no such mode bits."""
    if os.name != "posix":
        return
    mode = path.stat().st_mode
    if mode & stat.S_IROTH:
        raise CrsyncError(
            f"the secret file {path} is readable by every user of this machine (mode "
            f"{stat.S_IMODE(mode):o}), so anyone could mint tokens; run: chmod 600 {path}"
        )
    if mode & stat.S_IRGRP:
        log.warning("relay.secret_file_group_readable path=%s mode=%o", path, stat.S_IMODE(mode))


def load_secret(
    secret_file: str | os.PathLike[str] | None, env: dict[str, str] | None = None
) -> bytes:
    """The relay secret from a file or ``CRSYNC_RELAY_SECRET``.

    Raises:
        CrsyncError: no secret configured, unreadable, or shorter than 32 bytes.
    """
    env = dict(os.environ) if env is None else env
    if secret_file is not None:
        try:
            _check_secret_mode(Path(secret_file))
            secret = Path(secret_file).read_bytes().strip()
        except OSError as exc:
            raise CrsyncError(f"cannot read secret file {secret_file}: {exc.strerror}") from None
    elif env.get("CRSYNC_RELAY_SECRET"):
        secret = env["CRSYNC_RELAY_SECRET"].encode()
    else:
        raise CrsyncError(
            "no relay secret: pass --secret-file PATH or set CRSYNC_RELAY_SECRET "
            "(generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
        )
    if len(secret) < MIN_SECRET_BYTES:
        raise CrsyncError(f"the relay secret must be at least {MIN_SECRET_BYTES} bytes long")
    return secret


def issue_token(
    secret: bytes, stores: list[str], ttl_seconds: int, subject: str = "", now: float | None = None
) -> str:
    """Sign a token for some stores, valid for ``ttl_seconds``."""
    if not stores:
        raise CrsyncError("a token needs at least one store id (or a prefix ending in *)")
    if ttl_seconds <= 0:
        raise CrsyncError("a token's time to live must be positive")
    iat = int(time.time() if now is None else now)
    payload = {"sub": subject, "stores": list(stores), "iat": iat, "exp": iat + int(ttl_seconds)}
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def verify_token(secret: bytes, token: str | None, now: float | None = None) -> TokenClaims:
    """Check a token's signature and expiry.

    Raises:
        TokenInvalid: the token is missing or invalid (code ``unauthorized``).
        TokenExpired: the token has expired (code ``token_expired``).
    """
    if not token:
        raise TokenInvalid("this relay requires a token")
    try:
        claims = (
            jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "stores"]},
                leeway=0,
            )
            if now is None
            else jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                options={"require": ["exp", "stores"], "verify_exp": False},
            )
        )
    except jwt.ExpiredSignatureError:
        raise TokenExpired("the token has expired") from None
    except jwt.InvalidTokenError as exc:
        raise TokenInvalid(f"invalid token: {exc}") from None
    if now is not None and claims["exp"] <= now:
        raise TokenExpired("the token has expired")
    stores = claims.get("stores")
    if not isinstance(stores, list) or not all(isinstance(s, str) for s in stores):
        raise TokenInvalid("invalid token: 'stores' must be a list of store ids")
    return TokenClaims(str(claims.get("sub", "")), tuple(stores), int(claims["exp"]))


class TokenInvalid(AuthError, Refusal):
    """A missing, malformed, forged or wrongly scoped token."""

    code = ErrorCode.UNAUTHORIZED.value


class TokenExpired(AuthError, Refusal):
    """A token past its expiry."""

    code = ErrorCode.TOKEN_EXPIRED.value
