"""SmtpAdapter against a real SMTP server (aiosmtpd on 127.0.0.1), no mocks."""

from __future__ import annotations

import contextlib
import email
import email.policy
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import SecretStr

from sangkien.adapters.email import SmtpAdapter
from sangkien.clock import FrozenClock
from sangkien.config.settings import Settings
from sangkien.notifications import OutgoingMessage, PermanentFailure, TemporaryFailure
from sangkien.testing import AdapterContract

SUBJECT = "Thông báo: sáng kiến “Cải tiến quy trình” đã được công nhận"
BODY = "Kính gửi ông Nguyễn Văn Ấn,\nHội đồng đã công nhận sáng kiến của ông. Ỷ ữ ặ đ Đ."


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes

    @property
    def message(self) -> email.message.EmailMessage:
        # line ends are CRLF on the wire
        text = self.content.replace(b"\r\n", b"\n")
        return email.message_from_bytes(text, policy=email.policy.default)  # type: ignore[return-value]


@dataclass
class Recorder:
    """An aiosmtpd handler that records envelopes, or answers with a canned reply."""

    rcpt_reply: str | None = None
    data_reply: str | None = None
    envelopes: list[Received] = field(default_factory=list)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.data_reply:
            return self.data_reply
        got = Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.content)
        self.envelopes.append(got)
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def smtp_server() -> Iterator[Any]:
    """Start an SMTP server on 127.0.0.1; yield a function (handler, **kw) -> (controller, port)."""
    started: list[Controller] = []

    def start(handler: Recorder, **kwargs: Any) -> tuple[Controller, int]:
        port = _free_port()
        controller = Controller(handler, hostname="127.0.0.1", port=port, **kwargs)
        controller.start()
        started.append(controller)
        return controller, port

    yield start
    for controller in started:
        with contextlib.suppress(AssertionError):  # already stopped by the test
            controller.stop()


def _message(**overrides: Any) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "id": "01JABCDEF0123456789",
        "kind": "notification",
        "channel": "email",
        "recipient": "an.nguyen@example.vn",
        "recipient_name": "Nguyễn Văn Ấn",
        "subject": SUBJECT,
        "body": BODY,
        "instance_id": "inst-42",
    }
    fields.update(overrides)
    return OutgoingMessage(**fields)


def test_delivers_utf8_mail_with_headers(smtp_server: Any) -> None:
    """A notification arrives with From, To (named), Subject, Date, Message-ID and UTF-8 text."""
    handler = Recorder()
    _, port = smtp_server(handler)
    clock = FrozenClock(datetime(2026, 3, 2, 8, 30, tzinfo=UTC))
    adapter = SmtpAdapter(
        "127.0.0.1", port, from_address="Sáng kiến <sangkien@example.gov.vn>", clock=clock
    )
    adapter.send(_message())

    (got,) = handler.envelopes
    assert got.mail_from == "sangkien@example.gov.vn"
    assert got.rcpt_tos == ["an.nguyen@example.vn"]
    assert got.content.isascii(), "headers and body are MIME-encoded for any server"
    mail = got.message
    assert mail["Subject"] == SUBJECT
    assert mail["To"].addresses[0].display_name == "Nguyễn Văn Ấn"
    assert mail["To"].addresses[0].addr_spec == "an.nguyen@example.vn"
    assert mail["From"].addresses[0].display_name == "Sáng kiến"
    assert mail["Message-ID"] == "<01JABCDEF0123456789@sangkien>"
    assert mail["X-Sangkien-Message-Id"] == "01JABCDEF0123456789"
    assert mail["X-Sangkien-Instance-Id"] == "inst-42"
    assert mail["Auto-Submitted"] == "auto-generated"
    assert mail["Date"].datetime == datetime(2026, 3, 2, 8, 30, tzinfo=UTC)
    assert mail.get_content_type() == "text/plain"
    assert mail.get_content_charset() == "utf-8"
    assert mail.get_content().rstrip("\n") == BODY


def test_ascii_mail_without_recipient_name(smtp_server: Any) -> None:
    """A plain ASCII message without a recipient name is sent with a bare To address."""
    handler = Recorder()
    _, port = smtp_server(handler)
    SmtpAdapter("127.0.0.1", port).send(
        _message(recipient_name=None, subject="Hello", body="Plain text.")
    )
    mail = handler.envelopes[0].message
    assert mail["To"] == "an.nguyen@example.vn"
    assert mail.get_content() == "Plain text.\n"


def test_recipient_name_equal_to_the_address_is_dropped(smtp_server: Any) -> None:
    """A literal address used as its own name gives a bare To, not '"a@b" <a@b>'."""
    handler = Recorder()
    _, port = smtp_server(handler)
    SmtpAdapter("127.0.0.1", port).send(_message(recipient_name="an.nguyen@example.vn"))
    assert handler.envelopes[0].message["To"] == "an.nguyen@example.vn"


def test_newlines_in_subject_cannot_inject_headers(smtp_server: Any) -> None:
    """CR/LF in a subject are folded to spaces instead of adding headers."""
    handler = Recorder()
    _, port = smtp_server(handler)
    SmtpAdapter("127.0.0.1", port).send(_message(subject="Hi\r\nBcc: victim@example.com"))
    mail = handler.envelopes[0].message
    assert mail["Bcc"] is None
    assert mail["Subject"] == "Hi Bcc: victim@example.com"


def test_unwritable_header_is_permanent() -> None:
    """A message whose id cannot go in a header fails permanently, not with ValueError."""
    adapter = SmtpAdapter("127.0.0.1", _free_port())
    with pytest.raises(PermanentFailure, match="cannot be written as an email"):
        adapter.send(_message(id="abc\r\nBcc: x@y.vn"))


def test_same_id_twice_is_sent_twice_with_one_message_id(smtp_server: Any) -> None:
    """A retried message goes out again with the same Message-ID so receivers can dedupe."""
    handler = Recorder()
    _, port = smtp_server(handler)
    adapter = SmtpAdapter("127.0.0.1", port)
    adapter.send(_message())
    adapter.send(_message(attempt=2))
    assert [r.message["Message-ID"] for r in handler.envelopes] == [
        "<01JABCDEF0123456789@sangkien>"
    ] * 2


def test_unicode_domain_is_idna_encoded(smtp_server: Any) -> None:
    """A recipient with a Vietnamese domain name is sent to its IDNA (xn--) form."""
    handler = Recorder()
    _, port = smtp_server(handler)
    SmtpAdapter("127.0.0.1", port).send(_message(recipient="an@sángkiến.vn"))
    assert handler.envelopes[0].rcpt_tos == ["an@xn--sngkin-pta6822d.vn"]


@pytest.mark.parametrize(
    "recipient",
    [
        "",
        "not-an-address",
        "a@b@c",
        "an nguyen@example.vn",
        "ấn@example.vn",
        "a@",
        "@b.vn",
        "a@b.vn,c@d.vn",
        "a@b.vn\r\nRCPT TO:<x@y>",
        "Nguyễn <an@example.vn>",
    ],
)
def test_recipient_that_is_not_an_address_is_permanent(recipient: str) -> None:
    """A recipient that is not an email address fails permanently without contacting the server."""
    adapter = SmtpAdapter("127.0.0.1", _free_port())  # nothing listens: proves no connection
    with pytest.raises(PermanentFailure, match="not an email address"):
        adapter.send(_message(recipient=recipient))


def test_550_unknown_user_is_permanent(smtp_server: Any) -> None:
    """A 550 reply to RCPT TO is a PermanentFailure naming the code."""
    _, port = smtp_server(Recorder(rcpt_reply="550 no such user"))
    with pytest.raises(PermanentFailure, match="550 no such user"):
        SmtpAdapter("127.0.0.1", port).send(_message())


def test_451_to_rcpt_is_temporary(smtp_server: Any) -> None:
    """A 451 reply to RCPT TO is a TemporaryFailure naming the code."""
    _, port = smtp_server(Recorder(rcpt_reply="451 try later"))
    with pytest.raises(TemporaryFailure, match="451 try later"):
        SmtpAdapter("127.0.0.1", port).send(_message())


def test_451_to_data_is_temporary(smtp_server: Any) -> None:
    """A 451 reply to DATA (greylisting, full queue) is a TemporaryFailure."""
    _, port = smtp_server(Recorder(data_reply="451 try later"))
    with pytest.raises(TemporaryFailure, match="451"):
        SmtpAdapter("127.0.0.1", port).send(_message())


def test_554_to_data_is_permanent(smtp_server: Any) -> None:
    """A 554 reply to DATA (message rejected) is a PermanentFailure."""
    _, port = smtp_server(Recorder(data_reply="554 rejected as spam"))
    with pytest.raises(PermanentFailure, match="554 rejected as spam"):
        SmtpAdapter("127.0.0.1", port).send(_message())


def test_stopped_server_is_temporary(smtp_server: Any) -> None:
    """A server that is down (connection refused) is a TemporaryFailure."""
    controller, port = smtp_server(Recorder())
    controller.stop()
    with pytest.raises(TemporaryFailure, match=f"127.0.0.1:{port}"):
        SmtpAdapter("127.0.0.1", port).send(_message())


def test_silent_server_times_out_temporarily() -> None:
    """A server that accepts the connection but never greets times out: TemporaryFailure."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        with pytest.raises(TemporaryFailure, match="cannot connect"):
            SmtpAdapter("127.0.0.1", port, timeout=0.3).send(_message())


def test_server_hanging_up_is_temporary() -> None:
    """A server that greets then drops the connection (SMTPServerDisconnected) is temporary."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def greet_and_hang_up() -> None:
        conn, _ = listener.accept()
        conn.sendall(b"220 hello\r\n")
        conn.close()

    thread = threading.Thread(target=greet_and_hang_up, daemon=True)
    thread.start()
    try:
        with pytest.raises(TemporaryFailure, match="SMTPServerDisconnected"):
            SmtpAdapter("127.0.0.1", port, timeout=2).send(_message())
    finally:
        thread.join(5)
        listener.close()


def test_bad_configuration_is_refused_at_construction() -> None:
    """An unknown security mode, a bad from address or a zero timeout raise ValueError."""
    with pytest.raises(ValueError, match="security"):
        SmtpAdapter(security="ssl")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="SANGKIEN_SMTP_FROM"):
        SmtpAdapter(from_address="nobody")
    with pytest.raises(ValueError, match="timeout"):
        SmtpAdapter(timeout=0)


def test_from_settings_reads_smtp_settings() -> None:
    """from_settings copies host, port, security, user, from and timeout and hides the password."""
    settings = Settings(
        smtp_host="mail.example.vn",
        smtp_port=587,
        smtp_security="starttls",
        smtp_username="sangkien",
        smtp_password=SecretStr("hunter2-very-secret"),
        smtp_from="sangkien@example.vn",
        smtp_timeout=3.5,
    )
    adapter = SmtpAdapter.from_settings(settings)
    assert (adapter.host, adapter.port, adapter.security) == ("mail.example.vn", 587, "starttls")
    assert (adapter.username, adapter.from_address, adapter.timeout) == (
        "sangkien",
        "sangkien@example.vn",
        3.5,
    )
    assert "hunter2" not in repr(adapter)
    assert "password='***'" in repr(adapter)
    assert "hunter2" not in str(vars(adapter))


# --- TLS: a self-signed certificate made with the openssl command line


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (skips when openssl is not installed)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def _server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


def _authenticator(user: str, password: str) -> Any:
    def check(
        server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        return AuthResult(success=ok, handled=False)

    return check


def test_starttls_and_login(smtp_server: Any, certificate: tuple[Path, Path]) -> None:
    """With security=starttls the adapter upgrades, verifies the certificate, logs in and sends."""
    handler = Recorder()
    _, port = smtp_server(
        handler,
        tls_context=_server_context(certificate),
        require_starttls=True,
        authenticator=_authenticator("sangkien", "mật-khẩu-bí-mật"),
        auth_required=True,
        auth_require_tls=True,
    )
    client_context = ssl.create_default_context(cafile=str(certificate[0]))
    adapter = SmtpAdapter(
        "127.0.0.1",
        port,
        security="starttls",
        username="sangkien",
        password=SecretStr("mật-khẩu-bí-mật"),
        ssl_context=client_context,
    )
    adapter.send(_message())
    assert handler.envelopes[0].message["Subject"] == SUBJECT


def test_wrong_password_is_permanent_and_not_revealed(
    smtp_server: Any, certificate: tuple[Path, Path]
) -> None:
    """Refused credentials (535) are a PermanentFailure whose text never holds the password."""
    _, port = smtp_server(
        Recorder(),
        tls_context=_server_context(certificate),
        require_starttls=True,
        authenticator=_authenticator("sangkien", "right"),
        auth_required=True,
        auth_require_tls=True,
    )
    adapter = SmtpAdapter(
        "127.0.0.1",
        port,
        security="starttls",
        username="sangkien",
        password="wrong-password-xyz",
        ssl_context=ssl.create_default_context(cafile=str(certificate[0])),
    )
    with pytest.raises(PermanentFailure, match="535") as caught:
        adapter.send(_message())
    seen = f"{caught.value} {caught.value!r} {caught.value.__cause__!r} {adapter!r}"
    assert "wrong-password-xyz" not in seen
    assert "SANGKIEN_SMTP_PASSWORD" in str(caught.value)


def test_untrusted_certificate_is_temporary(
    smtp_server: Any, certificate: tuple[Path, Path]
) -> None:
    """A certificate the default trust store rejects fails (temporarily), never sends in clear."""
    handler = Recorder()
    _, port = smtp_server(handler, tls_context=_server_context(certificate), require_starttls=True)
    with pytest.raises(TemporaryFailure, match=r"CERTIFICATE_VERIFY_FAILED|certificate"):
        SmtpAdapter("127.0.0.1", port, security="starttls").send(_message())
    assert handler.envelopes == []


def test_starttls_not_offered_is_permanent(smtp_server: Any) -> None:
    """security=starttls against a server without STARTTLS is a PermanentFailure (configuration)."""
    _, port = smtp_server(Recorder())
    with pytest.raises(PermanentFailure, match="SANGKIEN_SMTP_SECURITY"):
        SmtpAdapter("127.0.0.1", port, security="starttls").send(_message())


def test_implicit_tls(smtp_server: Any, certificate: tuple[Path, Path]) -> None:
    """With security=tls the adapter connects over TLS from the first byte (SMTPS)."""
    handler = Recorder()
    _, port = smtp_server(handler, ssl_context=_server_context(certificate))
    adapter = SmtpAdapter(
        "127.0.0.1",
        port,
        security="tls",
        ssl_context=ssl.create_default_context(cafile=str(certificate[0])),
    )
    adapter.send(_message())
    assert handler.envelopes[0].message["X-Sangkien-Message-Id"] == "01JABCDEF0123456789"


class TestSmtpAdapterContract(AdapterContract):
    """SmtpAdapter, sending to a local aiosmtpd server, passes the adapter contract."""

    @pytest.fixture(autouse=True)
    def _server(self, smtp_server: Any) -> None:
        self.handler = Recorder()
        self.controller, self.port = smtp_server(self.handler)

    def make_adapter(self) -> SmtpAdapter:
        return SmtpAdapter("127.0.0.1", self.port, timeout=2)

    def received(self) -> Sequence[object]:
        # what a mail reader shows: decoded headers and text
        return [
            f"{m['X-Sangkien-Message-Id']}\n{m['Subject']}\n{m.get_content()}"
            for m in (r.message for r in self.handler.envelopes)
        ]

    def make_failing_adapter(self) -> SmtpAdapter:
        self.controller.stop()
        return self.make_adapter()
