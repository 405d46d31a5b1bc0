"""The web part's settings: `http` (health, metrics, prediction, the console)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..settings import read_secret_file, setting


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = setting(False, "bool", "serve /healthz, /metrics, /v1/predict")
    host: str = setting("127.0.0.1", "host", "bind address (localhost unless you need more)")
    port: int = setting(8080, "int", "port", low=1, high=65535)
    snapshot: bool = setting(False, "bool", "serve /snapshot.jpg (an image leaves the device)")
    console: bool = setting(False, "bool", "serve the web console at / (status, people, "
                            "labelling collected crops, adapt and revert); it always asks for "
                            "the token: this one, or <state_dir>/console_token, generated "
                            "when none is configured")
    max_upload_bytes: int = setting(5_000_000, "int", "largest /v1/predict upload", low=1024,
                                    high=100_000_000)
    token_env: str | None = setting(None, "str", "environment variable holding a bearer token "
                                    "required for everything but /healthz", nullable=True)
    token_file: str | None = setting(None, "path", "file holding that token (mode 0600); a "
                                     "token is required when host is not a loopback address",
                                     nullable=True)
    allowed_hosts: tuple[str, ...] = setting((), "hosts", "names a browser may use for this "
                                             "device besides its IP addresses, localhost "
                                             "and its host name (a request naming another "
                                             "host gets 421: DNS rebinding)")
    max_connections: int = setting(16, "int", "open connections served at once; more wait "
                                   "in the backlog or are refused", low=1, high=1024)
    timeout_s: float = setting(10.0, "float", "a connection idle this long is closed",
                               low=0.5, high=600)


def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def http_token(http: HttpConfig) -> str | None:
    """The HTTP bearer token, if one is configured (the loader has checked it is long
    enough; an empty variable yields "", which matches no request, never None)."""
    if http.token_env:
        return os.environ.get(http.token_env, "")
    if http.token_file:
        return read_secret_file("http.token_file", http.token_file)
    return None
