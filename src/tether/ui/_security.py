"""Who may read the dashboard and who may act through it.

The server listens on 127.0.0.1 only, but every local user and every web page the
user's browser opens can reach a loopback port. So:

- a per-start token (printed by ``tether ui`` in its URL) is needed for every page:
  the URL's ``?token=`` is traded for an HttpOnly, SameSite=Strict cookie named after
  the port (cookies do not tell ports apart);
- the ``Host`` header must name the loopback address and this port, so a DNS name
  rebound to 127.0.0.1 cannot read the pages;
- actions (POST only) need the token itself, in the ``X-Tether-Token`` header or a
  ``token`` form field: the cookie alone is not enough, since a browser sends it on
  requests another site makes. A request whose ``Origin`` (or ``Sec-Fetch-Site``)
  says it comes from another page is refused even with the right token.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field

#: Headers on every response: no framing, no inline scripts, no referrer (the URL may
#: hold the token), nothing cached.
SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}

TOKEN_HEADER = "x-tether-token"


@dataclass(frozen=True)
class Guard:
    """The token of this start of the dashboard and the address it serves on."""

    port: int
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))

    @property
    def origin(self) -> str:
        """The dashboard's own origin, as browsers write it in ``Origin``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The URL ``tether ui`` prints: the front page, with the token."""
        return f"{self.origin}/?token={self.token}"

    @property
    def cookie(self) -> str:
        """The name of the cookie that carries the token (one per port)."""
        return f"tether_ui_{self.port}"

    def matches(self, candidate: str | None) -> bool:
        """Whether ``candidate`` is this start's token (in constant time)."""
        return candidate is not None and hmac.compare_digest(
            candidate.encode(), self.token.encode()
        )

    def host_ok(self, host: str | None) -> bool:
        """Whether the ``Host`` header names this server on a loopback name."""
        return host in (f"127.0.0.1:{self.port}", f"localhost:{self.port}")

    def action_refusal(
        self, *, token: str | None, origin: str | None, fetch_site: str | None
    ) -> str | None:
        """Why an action request is refused (one line), or None when it may go ahead.

        ``origin`` and ``fetch_site`` are the request's ``Origin`` and
        ``Sec-Fetch-Site`` headers: browsers send them, so a page elsewhere is
        recognised; tools such as curl send neither and only need the token.
        """
        own = {self.origin, f"http://localhost:{self.port}"}
        if origin is not None and origin not in own:
            return f"refused: the request comes from another origin ({origin})"
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            return f"refused: the request comes from another site (Sec-Fetch-Site: {fetch_site})"
        if not self.matches(token):
            return "refused: actions need the dashboard's token (the one `tether ui` printed)"
        return None
