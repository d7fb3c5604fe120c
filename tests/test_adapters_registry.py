"""load_adapters: built-ins, real entry-point discovery, loud failures; the adapter contract."""

from __future__ import annotations

import json
import sys
import textwrap
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from sangkien.adapters import (
    BUILTIN_ADAPTERS,
    AdapterConfigError,
    LogAdapter,
    SmtpAdapter,
    WebhookAdapter,
    known_channel_names,
    load_adapters,
)
from sangkien.adapters.webhook import generate_secret, verify
from sangkien.config.settings import Settings
from sangkien.errors import SangkienError
from sangkien.notifications import (
    NotificationAdapter,
    OutgoingMessage,
    PermanentFailure,
    TemporaryFailure,
)
from sangkien.testing import AdapterContract, RecordingAdapter

PLUGIN_ADAPTER = """
from sangkien.notifications import OutgoingMessage


class {cls}:
    name = "{name}"

    def __init__(self, settings=None):
        self.settings = settings
        self.sent = []

    @classmethod
    def from_settings(cls, settings):
        return cls(settings)

    def send(self, message: OutgoingMessage) -> None:
        self.sent.append(message)


def make(settings):
    return {cls}(settings)
"""


class Plugins:
    """Install fake distributions (a dist-info with entry_points.txt) on sys.path."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp_path = tmp_path
        self.monkeypatch = monkeypatch
        self.count = 0

    def install(self, dist: str, entries: dict[str, str], modules: dict[str, str]) -> Path:
        """Make a folder holding *modules* and a *dist* declaring *entries*; put it on sys.path."""
        self.count += 1
        root = self.tmp_path / f"site{self.count}"
        info = root / f"{dist.replace('-', '_')}-1.0.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n", encoding="utf-8"
        )
        lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
        (info / "entry_points.txt").write_text(f"[sangkien.adapters]\n{lines}", encoding="utf-8")
        for module, source in modules.items():
            (root / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
            self.monkeypatch.delitem(sys.modules, module, raising=False)
        self.monkeypatch.syspath_prepend(str(root))
        return root


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Plugins:
    """Install fake adapter distributions for the duration of one test."""
    return Plugins(tmp_path, monkeypatch)


def _settings(**kwargs: Any) -> Settings:
    return Settings(**kwargs)


# --- built-ins


def test_default_settings_give_the_log_adapter() -> None:
    """With the default SANGKIEN_CHANNELS=log, only the LogAdapter is built."""
    adapters = load_adapters(_settings())
    assert list(adapters) == ["log"]
    assert isinstance(adapters["log"], LogAdapter)


def test_every_builtin_channel_is_built() -> None:
    """log, email and webhook build LogAdapter, SmtpAdapter and WebhookAdapter."""
    settings = _settings(
        channels="log, email,webhook",
        webhook_secret=generate_secret(),
        webhook_allowed_hosts="hooks.example.vn",
    )
    adapters = load_adapters(settings)
    assert {name: type(a) for name, a in adapters.items()} == {
        "log": LogAdapter,
        "email": SmtpAdapter,
        "webhook": WebhookAdapter,
    }
    assert all(isinstance(a, NotificationAdapter) for a in adapters.values())
    assert set(BUILTIN_ADAPTERS) == {"log", "email", "webhook"}


def test_builtin_that_cannot_start_fails_loudly() -> None:
    """An enabled webhook channel without a secret is an AdapterConfigError at start-up."""
    with pytest.raises(AdapterConfigError, match=r"'webhook'.*SANGKIEN_WEBHOOK_SECRET"):
        load_adapters(_settings(channels="webhook"))


def test_error_is_a_sangkien_error() -> None:
    """AdapterConfigError shares the package's exception root."""
    assert issubclass(AdapterConfigError, SangkienError)


def test_missing_channel_lists_available_names() -> None:
    """An enabled channel with no adapter fails and lists the names that exist."""
    with pytest.raises(AdapterConfigError) as caught:
        load_adapters(_settings(channels="log,sms,zalo"))
    text = str(caught.value)
    assert "'sms', 'zalo'" in text
    assert "available: email, log, webhook" in text


# --- extra adapters


def test_extra_adapters_are_returned_and_can_serve_channels() -> None:
    """Adapters passed in extra serve enabled channels and are returned even when not enabled."""
    sms, push = RecordingAdapter("sms"), RecordingAdapter("push")
    adapters = load_adapters(_settings(channels="log,sms"), extra=[sms, push])
    assert adapters["sms"] is sms
    assert adapters["push"] is push
    assert set(adapters) == {"log", "sms", "push"}


def test_extra_duplicating_a_builtin_fails() -> None:
    """An extra adapter named like a built-in is refused, naming both sources."""
    with pytest.raises(AdapterConfigError) as caught:
        load_adapters(_settings(), extra=[RecordingAdapter("email")])
    text = str(caught.value)
    assert "'email'" in text
    assert "built-in SmtpAdapter" in text
    assert "RecordingAdapter passed in extra" in text


def test_two_extras_with_one_name_fail() -> None:
    """Two extra adapters with the same name are refused."""
    with pytest.raises(AdapterConfigError, match="two adapters are named 'sms'"):
        load_adapters(_settings(), extra=[RecordingAdapter("sms"), RecordingAdapter("sms")])


def test_extra_that_is_not_an_adapter_fails() -> None:
    """Something without name/send passed in extra is refused."""
    with pytest.raises(AdapterConfigError, match="not a NotificationAdapter"):
        load_adapters(_settings(), extra=[object()])  # type: ignore[list-item]


# --- entry points (real importlib.metadata discovery)


def test_entry_point_class_with_from_settings(plugins: Plugins) -> None:
    """An entry point naming an adapter class is built with from_settings(settings)."""
    plugins.install(
        "sangkien-sms",
        {"sms": "fake_sms_a:SmsAdapter"},
        {"fake_sms_a": PLUGIN_ADAPTER.format(cls="SmsAdapter", name="sms")},
    )
    settings = _settings(channels="log,sms")
    adapters = load_adapters(settings)
    assert type(adapters["sms"]).__name__ == "SmsAdapter"
    assert adapters["sms"].settings is settings  # type: ignore[attr-defined]
    assert "sms" in known_channel_names()


def test_entry_point_factory_function(plugins: Plugins) -> None:
    """An entry point naming a function is called with the settings."""
    plugins.install(
        "sangkien-sms",
        {"sms": "fake_sms_b:make"},
        {"fake_sms_b": PLUGIN_ADAPTER.format(cls="SmsAdapter", name="sms")},
    )
    adapters = load_adapters(_settings(channels="sms"))
    assert list(adapters) == ["sms"]
    assert isinstance(adapters["sms"], NotificationAdapter)


def test_entry_points_not_enabled_are_not_imported(plugins: Plugins) -> None:
    """A disabled channel's module is never imported, but its name is known to validation."""
    plugins.install(
        "sangkien-broken",
        {"pager": "fake_broken:Adapter"},
        {"fake_broken": "raise ImportError('must not be imported')\n"},
    )
    assert list(load_adapters(_settings())) == ["log"]
    assert "fake_broken" not in sys.modules
    assert known_channel_names() == ["email", "log", "pager", "webhook"]


def test_entry_point_duplicating_a_builtin_fails(plugins: Plugins) -> None:
    """A package registering 'email' is refused at start-up, naming the built-in and the package."""
    plugins.install(
        "evil-mail",
        {"email": "fake_mail:Adapter"},
        {"fake_mail": PLUGIN_ADAPTER.format(cls="Adapter", name="email")},
    )
    with pytest.raises(AdapterConfigError) as caught:
        load_adapters(_settings())
    text = str(caught.value)
    assert "built-in SmtpAdapter" in text
    assert "evil-mail 1.0" in text


def test_two_packages_with_one_name_fail(plugins: Plugins) -> None:
    """Two distributions registering 'sms' are refused even when 'sms' is not enabled."""
    plugins.install("sms-one", {"sms": "fake_one:Adapter"}, {"fake_one": "Adapter = None\n"})
    plugins.install("sms-two", {"sms": "fake_two:Adapter"}, {"fake_two": "Adapter = None\n"})
    with pytest.raises(AdapterConfigError, match="two adapters are named 'sms'") as caught:
        load_adapters(_settings())
    assert "sms-one" in str(caught.value) and "sms-two" in str(caught.value)


def test_one_package_seen_twice_counts_once(plugins: Plugins) -> None:
    """The same distribution found twice on sys.path is one adapter, not a duplicate."""
    source = {"fake_twice": PLUGIN_ADAPTER.format(cls="Adapter", name="sms")}
    plugins.install("sms-twice", {"sms": "fake_twice:Adapter"}, source)
    plugins.install("sms-twice", {"sms": "fake_twice:Adapter"}, source)
    assert "sms" in load_adapters(_settings(channels="sms"))


def test_entry_point_duplicating_an_extra_fails(plugins: Plugins) -> None:
    """An extra adapter named like an installed entry point is refused."""
    plugins.install("sangkien-sms", {"sms": "fake_sms_c:Adapter"}, {"fake_sms_c": "Adapter = 1\n"})
    with pytest.raises(AdapterConfigError, match=r"sangkien-sms.*RecordingAdapter passed in extra"):
        load_adapters(_settings(), extra=[RecordingAdapter("sms")])


def test_failing_factory_is_reported_with_its_source(plugins: Plugins) -> None:
    """A factory that raises becomes an AdapterConfigError naming the channel and entry point."""
    plugins.install(
        "sangkien-sms",
        {"sms": "fake_sms_d:make"},
        {"fake_sms_d": "def make(settings):\n    raise RuntimeError('SMS_TOKEN is not set')\n"},
    )
    with pytest.raises(AdapterConfigError, match=r"'sms'.*fake_sms_d:make.*SMS_TOKEN") as caught:
        load_adapters(_settings(channels="sms"))
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_factory_returning_a_non_adapter_fails(plugins: Plugins) -> None:
    """A factory that returns something without name/send is refused."""
    plugins.install(
        "sangkien-sms",
        {"sms": "fake_sms_e:make"},
        {"fake_sms_e": "def make(settings):\n    return 42\n"},
    )
    with pytest.raises(AdapterConfigError, match="not a NotificationAdapter"):
        load_adapters(_settings(channels="sms"))


def test_adapter_name_must_match_entry_point_name(plugins: Plugins) -> None:
    """An entry point 'sms' that builds an adapter named 'text' is refused."""
    plugins.install(
        "sangkien-sms",
        {"sms": "fake_sms_f:Adapter"},
        {"fake_sms_f": PLUGIN_ADAPTER.format(cls="Adapter", name="text")},
    )
    with pytest.raises(AdapterConfigError, match="named 'text'"):
        load_adapters(_settings(channels="sms"))


def test_known_channel_names_without_plugins() -> None:
    """Without extra packages the known channels are the three built-ins, sorted."""
    assert known_channel_names() == ["email", "log", "webhook"]


# --- RecordingAdapter


def _message(**overrides: Any) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "id": "m1",
        "kind": "notification",
        "channel": "recording",
        "recipient": "an",
    }
    fields.update(overrides)
    return OutgoingMessage(**fields)


def test_recording_adapter_fails_as_told() -> None:
    """fail_next makes the next N sends fail temporarily (or permanently), then it delivers."""
    rec = RecordingAdapter(fail_times=2)
    for _ in range(2):
        with pytest.raises(TemporaryFailure):
            rec.send(_message())
    rec.send(_message())
    assert rec.ids == ["m1"]
    assert len(rec.attempts) == 3
    rec.fail_next(permanent=True, reason="mailbox gone")
    with pytest.raises(PermanentFailure, match="mailbox gone"):
        rec.send(_message(id="m2"))
    rec.send(_message(id="m3", recipient="binh"))
    assert [m.id for m in rec.to("binh")] == ["m3"]
    rec.clear()
    assert rec.messages == [] and rec.attempts == []


# --- the contract, run against the shipped adapters


class TestRecordingAdapterContract(AdapterContract):
    """RecordingAdapter passes the adapter contract."""

    def make_adapter(self) -> RecordingAdapter:
        self.recorder = RecordingAdapter("recording")
        return self.recorder

    def received(self) -> Sequence[object]:
        return self.recorder.messages

    def make_failing_adapter(self) -> RecordingAdapter:
        return RecordingAdapter("recording", fail_times=1, permanent=True)


class TestLogAdapterContract(AdapterContract):
    """LogAdapter passes the adapter contract (what it 'delivers' is a log line)."""

    @pytest.fixture(autouse=True)
    def _capture(self) -> Iterator[None]:
        with capture_logs() as logs:
            self.logs = logs
            yield

    def make_adapter(self) -> LogAdapter:
        return LogAdapter()

    def received(self) -> Sequence[object]:
        return self.logs


def test_log_adapter_leaves_out_body_and_payload() -> None:
    """The log line has the ids and subject but never the body or the event payload."""
    with capture_logs() as logs:
        LogAdapter().send(_message(subject="Chào", body="bí mật", instance_id="i1"))
        LogAdapter().send(
            _message(id="e1", kind="event", payload={"type": "Started", "token": "s3cr3t"})
        )
    note, event = logs
    assert note["message_id"] == "m1" and note["subject"] == "Chào"
    assert note["instance_id"] == "i1" and note["recipient"] == "an"
    assert "bí mật" not in json.dumps(note, ensure_ascii=False)
    assert event["event_type"] == "Started"
    assert "s3cr3t" not in json.dumps(event)


def test_log_adapter_uses_the_given_logger() -> None:
    """LogAdapter writes to the logger it is given."""
    with capture_logs() as logs:
        LogAdapter(structlog.get_logger("custom")).send(_message())
    assert logs[0]["message_id"] == "m1"


@pytest.fixture
def hook_server() -> Iterator[dict[str, Any]]:
    """A local webhook receiver recording bodies whose signature verifies; status settable."""
    state: dict[str, Any] = {"bodies": [], "status": 200, "secret": generate_secret()}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if verify(state["secret"], self.headers, body):
                state["bodies"].append(body)
            self.send_response(state["status"])
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


class TestWebhookAdapterContract(AdapterContract):
    """WebhookAdapter, posting to a local server, passes the adapter contract."""

    @pytest.fixture(autouse=True)
    def _server(self, hook_server: dict[str, Any]) -> None:
        self.server = hook_server

    def make_adapter(self) -> WebhookAdapter:
        return WebhookAdapter(self.server["secret"], allowed_hosts=["127.0.0.1"], timeout=2)

    def make_message(self, **overrides: Any) -> OutgoingMessage:
        return super().make_message(**{"recipient": self.server["url"], **overrides})

    def received(self) -> Sequence[object]:
        return self.server["bodies"]  # only bodies whose signature verified

    def make_failing_adapter(self) -> WebhookAdapter:
        self.server["status"] = 503
        return self.make_adapter()
