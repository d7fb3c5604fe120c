"""SmtpAdapter: notifications as UTF-8 email through an SMTP server (smtplib)."""

from __future__ import annotations

import base64
import re
import smtplib
import ssl
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import TYPE_CHECKING, Literal

from pydantic import SecretStr

from sangkien.clock import Clock, SystemClock
from sangkien.notifications import OutgoingMessage, PermanentFailure, TemporaryFailure

if TYPE_CHECKING:
    from sangkien.config.settings import Settings

__all__ = ["SmtpAdapter"]

Security = Literal["none", "starttls", "tls"]

# An addr-spec as sent on the SMTP envelope: ASCII dot-atom local part (no SMTPUTF8) and a
# domain of LDH labels (non-ASCII domains are IDNA-encoded first), or a bracketed literal.
_LOCAL = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_ADDRESS = re.compile(rf"({_LOCAL})@({_DOMAIN}|\[[0-9A-Fa-f:.]+\])")


def _addr_spec(value: str) -> str | None:
    """Return *value* as an ASCII addr-spec, or None when it is not an email address."""
    value = value.strip()
    if len(value) > 254 or value.count("@") != 1:
        return None
    local, domain = value.split("@")
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    candidate = f"{local}@{domain}"
    return candidate if _ADDRESS.fullmatch(candidate) and len(local) <= 64 else None


def _one_line(text: str) -> str:
    return " ".join(text.split())


class SmtpAdapter:
    """Send each notification as one email to its recipient.

    ``security`` is ``"none"`` (plain SMTP), ``"starttls"`` (upgrade after connecting) or
    ``"tls"`` (implicit TLS, usually port 465); certificates are checked against the
    system's trust store unless an ``ssl_context`` is given. The password is kept out of
    ``repr``, logs and error messages.

    Failures are classed so the outbox knows whether to retry: refused connections,
    timeouts, dropped connections and 4xx replies are temporary; 5xx replies (an unknown
    mailbox, a rejected message, refused credentials) and a recipient that is not an email
    address are permanent.
    """

    name = "email"

    def __init__(
        self,
        host: str = "localhost",
        port: int = 25,
        *,
        security: Security = "none",
        username: str | None = None,
        password: str | SecretStr | None = None,
        from_address: str = "sangkien@localhost",
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        local_hostname: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        if security not in ("none", "starttls", "tls"):
            raise ValueError(f"SMTP security must be 'none', 'starttls' or 'tls', not {security!r}")
        if timeout <= 0:
            raise ValueError(f"SMTP timeout must be positive, not {timeout!r}")
        from_name, from_addr = parseaddr(from_address)
        envelope_from = _addr_spec(from_addr)
        if envelope_from is None:
            raise ValueError(
                f"SMTP from address {from_address!r} is not an email address "
                "(set SANGKIEN_SMTP_FROM, e.g. 'Sáng kiến <sangkien@example.gov.vn>')"
            )
        self.host = host
        self.port = port
        self.security: Security = security
        self.username = username or None
        self._password = SecretStr(_reveal(password) or "") if password is not None else None
        self.from_address = from_address
        self.timeout = timeout
        self.local_hostname = local_hostname
        self._ssl_context = ssl_context
        self._envelope_from = envelope_from
        self._from_header = Address(display_name=_one_line(from_name), addr_spec=envelope_from)
        self._clock: Clock = clock or SystemClock()

    @classmethod
    def from_settings(cls, settings: Settings) -> SmtpAdapter:
        """Build from the ``SANGKIEN_SMTP_*`` settings."""
        return cls(
            settings.smtp_host,
            settings.smtp_port,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=settings.smtp_password,
            from_address=settings.smtp_from,
            timeout=settings.smtp_timeout,
        )

    def __repr__(self) -> str:
        auth = f", username={self.username!r}, password='***'" if self.username else ""
        return (
            f"SmtpAdapter(host={self.host!r}, port={self.port!r}, security={self.security!r}"
            f"{auth}, from_address={self.from_address!r})"
        )

    # --- building

    def build(self, message: OutgoingMessage) -> EmailMessage:
        """Return the email for *message*; PermanentFailure if the recipient is no address."""
        to = _addr_spec(message.recipient)
        if to is None:
            raise PermanentFailure(
                f"message {message.id!r}: recipient {message.recipient!r} is not an email "
                "address; fix the person's contact in the directory"
            )
        try:
            mail = self._compose(message, to)
        except ValueError as exc:  # a header value the email package refuses
            raise PermanentFailure(
                f"message {message.id!r} cannot be written as an email: {exc}"
            ) from exc
        return mail

    def _compose(self, message: OutgoingMessage, to: str) -> EmailMessage:
        mail = EmailMessage()
        mail["From"] = self._from_header
        name = _one_line(message.recipient_name or "")
        if name in (message.recipient.strip(), to):
            name = ""  # a literal address is its own name; "a@b" <a@b> helps nobody
        mail["To"] = Address(display_name=name, addr_spec=to)
        mail["Subject"] = _one_line(message.subject)
        mail["Date"] = format_datetime(self._clock.now())
        mail["Message-ID"] = f"<{message.id}@sangkien>"
        mail["X-Sangkien-Message-Id"] = message.id
        if message.instance_id:
            mail["X-Sangkien-Instance-Id"] = _one_line(message.instance_id)
        # RFC 3834: mark as machine-sent so out-of-office replies are not sent back
        mail["Auto-Submitted"] = "auto-generated"
        body = message.body if message.body.endswith("\n") else message.body + "\n"
        if body.isascii():
            mail.set_content(body, charset="utf-8")
        else:
            mail.set_content(body, charset="utf-8", cte="quoted-printable")
        # Python 3.11 drops the space where it folds a long encoded header (CPython
        # gh-144156); headers up to RFC 5322's 998 characters are not folded at all
        mail.policy = mail.policy.clone(max_line_length=998)
        return mail

    # --- sending

    def send(self, message: OutgoingMessage) -> None:
        """Deliver *message* or raise TemporaryFailure / PermanentFailure."""
        mail = self.build(message)
        to = _addr_spec(message.recipient)
        assert to is not None  # build() checked it
        where = f"SMTP server {self.host}:{self.port}"
        try:
            smtp = self._connect()
        except smtplib.SMTPResponseException as exc:
            raise TemporaryFailure(
                f"message {message.id!r}: {where} refused the connection: "
                f"{exc.smtp_code} {_text(exc.smtp_error)}"
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise TemporaryFailure(
                f"message {message.id!r}: cannot connect to {where}: {_describe(exc)}"
            ) from exc
        try:
            self._deliver(smtp, mail, to, message.id, where)
        finally:
            _close(smtp)

    def _connect(self) -> smtplib.SMTP:
        if self.security == "tls":
            return smtplib.SMTP_SSL(
                self.host,
                self.port,
                local_hostname=self.local_hostname,
                timeout=self.timeout,
                context=self._context(),
            )
        return smtplib.SMTP(
            self.host, self.port, local_hostname=self.local_hostname, timeout=self.timeout
        )

    def _context(self) -> ssl.SSLContext:
        return self._ssl_context or ssl.create_default_context()

    def _deliver(
        self, smtp: smtplib.SMTP, mail: EmailMessage, to: str, msg_id: str, where: str
    ) -> None:
        prefix = f"message {msg_id!r}: {where}"
        try:
            if self.security == "starttls":
                smtp.starttls(context=self._context())
            if self.username:
                secret = self._password.get_secret_value() if self._password else ""
                _login(smtp, self.username, secret)
            smtp.send_message(mail, from_addr=self._envelope_from, to_addrs=[to])
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = exc.recipients.get(to, (550, b"recipient refused"))
            raise _classed(
                code, f"{prefix} refused recipient {to!r}: {code} {_text(reply)}"
            ) from exc
        except smtplib.SMTPAuthenticationError as exc:
            raise _classed(
                exc.smtp_code,
                f"{prefix} refused the login of {self.username!r}: "
                f"{exc.smtp_code} {_text(exc.smtp_error)}; check SANGKIEN_SMTP_USERNAME "
                "and SANGKIEN_SMTP_PASSWORD",
            ) from None  # the reply is all that matters; keep login frames out of tracebacks
        except smtplib.SMTPResponseException as exc:
            raise _classed(
                exc.smtp_code, f"{prefix} replied {exc.smtp_code} {_text(exc.smtp_error)}"
            ) from exc
        except smtplib.SMTPNotSupportedError as exc:
            raise PermanentFailure(
                f"{prefix} does not support what SANGKIEN_SMTP_SECURITY / _USERNAME ask for: {exc}"
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            # SMTPServerDisconnected, timeouts, resets, TLS handshake failures
            raise TemporaryFailure(f"{prefix} failed: {_describe(exc)}") from exc


def _login(smtp: smtplib.SMTP, username: str, password: str) -> None:
    """Log in; non-ASCII credentials go as UTF-8 AUTH PLAIN (RFC 4616), which smtplib cannot."""
    if username.isascii() and password.isascii():
        smtp.login(username, password)
        return
    smtp.ehlo_or_helo_if_needed()
    if not smtp.has_extn("auth"):
        raise smtplib.SMTPNotSupportedError("SMTP AUTH extension not supported by server.")
    token = base64.b64encode(b"\0" + username.encode() + b"\0" + password.encode())
    code, reply = smtp.docmd("AUTH", "PLAIN " + token.decode("ascii"))
    if code != 235:
        raise smtplib.SMTPAuthenticationError(code, reply)


def _reveal(password: str | SecretStr | None) -> str | None:
    if password is None:
        return None
    if isinstance(password, str):
        return password
    return password.get_secret_value()


def _classed(code: int, text: str) -> TemporaryFailure | PermanentFailure:
    """4xx replies may succeed later; 5xx (and anything unexpected) will not."""
    if 400 <= code < 500:
        return TemporaryFailure(text)
    return PermanentFailure(text)


def _text(reply: bytes | str) -> str:
    if isinstance(reply, bytes):
        reply = reply.decode("utf-8", "replace")
    return _one_line(reply)


def _describe(exc: BaseException) -> str:
    detail = str(exc) or "no detail"
    return f"{type(exc).__name__}: {detail}"


def _close(smtp: smtplib.SMTP) -> None:
    # The message is delivered once DATA is accepted; a failing QUIT must not turn that
    # into an error (the outbox would send it again).
    try:
        smtp.quit()
    except (OSError, smtplib.SMTPException):
        smtp.close()
