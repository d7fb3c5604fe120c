"""Message templates: plain-text Jinja2, sandboxed, where a missing variable is an error.

A template is the file ``<dir>/<lang>/<name>.txt``: its first line is ``Subject: ...``, then a
blank line, then the body. Both parts are Jinja2 rendered in the sandbox (no access to
private attributes, no mutation of the context) with strict undefined variables, so a typo
such as ``data.titel`` fails loudly instead of sending a blank. Declared workflow fields that
have no value yet are ``None`` and print as nothing; test them with ``{% if data.x %}``.

:class:`TemplateStore` finds templates in a list of folders (the first folder holding a file
wins, so a host's folder placed before :func:`shipped_templates_dir` overrides shipped
templates) and falls back to its default language. :func:`build_context` turns an instance,
an event and a deadline into the variables templates see; :func:`sample_context` gives every
declared field a sample value so that validation can render each template once.

    SangkienError
    └── TemplateError     a template is missing, malformed, or failed to render
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from importlib import resources
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from sangkien.definition import Definition
from sangkien.errors import SangkienError

__all__ = [
    "DEFAULT_TIMEZONE",
    "Labels",
    "TemplateError",
    "TemplateStore",
    "build_context",
    "en_date",
    "en_datetime",
    "sample_context",
    "shipped_templates_dir",
    "vn_date",
    "vn_datetime",
]

DEFAULT_TIMEZONE = "Asia/Ho_Chi_Minh"

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_LANG = re.compile(r"^[a-z]{2}(-[A-Za-z]{2})?$")
_SUBJECT = "Subject:"
_EN_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


class TemplateError(SangkienError):
    """A template is missing, malformed or failed to render.

    ``template``, ``lang``, ``file`` and ``line`` say where; ``variable`` names the undefined
    variable (e.g. ``data.titel``) when that was the cause.
    """

    def __init__(
        self,
        message: str,
        *,
        template: str,
        lang: str | None = None,
        file: str | None = None,
        line: int | None = None,
        variable: str | None = None,
    ) -> None:
        self.template = template
        self.lang = lang
        self.file = file
        self.line = line
        self.variable = variable
        self.detail = message
        where = file or "<template>"
        if line is not None:
            where += f":{line}"
        which = f"template {template!r}" + (f" ({lang})" if lang else "")
        super().__init__(f"{where}: {which}: {message}")


def shipped_templates_dir() -> Path:
    """Folder holding the message templates that ship with sangkien."""
    return Path(str(resources.files("sangkien.workflows").joinpath("templates")))


# --------------------------------------------------------------------------- filters


def _zone(tz: str | tzinfo | None, default: tzinfo) -> tzinfo:
    if tz is None:
        return default
    if isinstance(tz, tzinfo):
        return tz
    try:
        return ZoneInfo(str(tz))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {tz!r}; use an IANA name such as {DEFAULT_TIMEZONE!r}"
        ) from None


def _temporal(value: Any, tz: tzinfo) -> date | datetime | None:
    """Return *value* as a date, or a datetime in *tz* (aware values are converted)."""
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.astimezone(tz) if value.tzinfo is not None else value
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        parsed = _parse_temporal(value)
        if parsed is None:
            raise ValueError(f"{value!r} is not an ISO date or date and time")
        return _temporal(parsed, tz)
    raise TypeError(f"expected a date or datetime, got {type(value).__name__}")


def _parse_temporal(text: str) -> date | datetime | None:
    s = text.strip()
    try:
        if len(s) == 10:
            return date.fromisoformat(s)
        return datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None


def _day(v: date | datetime) -> date:
    return v.date() if isinstance(v, datetime) else v


def vn_date(value: Any, tz: str | tzinfo | None = None) -> str:
    """Format as ``ngày 10 tháng 02 năm 2025`` (aware datetimes in *tz*, default Vietnam)."""
    v = _temporal(value, _zone(tz, ZoneInfo(DEFAULT_TIMEZONE)))
    if v is None:
        return ""
    d = _day(v)
    return f"ngày {d.day:02d} tháng {d.month:02d} năm {d.year}"


def vn_datetime(value: Any, tz: str | tzinfo | None = None) -> str:
    """Format as ``09:30 ngày 10/02/2025``; a plain date gives ``ngày 10/02/2025``."""
    v = _temporal(value, _zone(tz, ZoneInfo(DEFAULT_TIMEZONE)))
    if v is None:
        return ""
    d = _day(v)
    day = f"ngày {d.day:02d}/{d.month:02d}/{d.year}"
    return f"{v.hour:02d}:{v.minute:02d} {day}" if isinstance(v, datetime) else day


def en_date(value: Any, tz: str | tzinfo | None = None) -> str:
    """Format as ``10 February 2025`` (aware datetimes in *tz*, default Vietnam)."""
    v = _temporal(value, _zone(tz, ZoneInfo(DEFAULT_TIMEZONE)))
    if v is None:
        return ""
    d = _day(v)
    return f"{d.day} {_EN_MONTHS[d.month - 1]} {d.year}"


def en_datetime(value: Any, tz: str | tzinfo | None = None) -> str:
    """Format as ``09:30, 10 February 2025``; a plain date gives ``10 February 2025``."""
    v = _temporal(value, _zone(tz, ZoneInfo(DEFAULT_TIMEZONE)))
    if v is None:
        return ""
    day = en_date(_day(v))
    return f"{v.hour:02d}:{v.minute:02d}, {day}" if isinstance(v, datetime) else day


# --------------------------------------------------------------------------- environment


class _PathDict(dict[str, Any]):
    """A context mapping that knows its dotted path, to name undefined variables fully."""

    __slots__ = ("_sangkien_path",)

    def __init__(self, path: str, items: Mapping[str, Any]) -> None:
        super().__init__(items)
        self._sangkien_path = path


class _PathList(list[Any]):
    __slots__ = ("_sangkien_path",)

    def __init__(self, path: str, items: Sequence[Any]) -> None:
        super().__init__(items)
        self._sangkien_path = path


def _wrap(value: Any, path: str) -> Any:
    if isinstance(value, Mapping):
        return _PathDict(path, {str(k): _wrap(v, _join(path, str(k))) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return _PathList(path, [_wrap(v, f"{path}[{i}]") for i, v in enumerate(value)])
    return value


def _join(path: str, name: Any) -> str:
    if isinstance(name, str) and name.isidentifier():
        return f"{path}.{name}" if path else name
    return f"{path}[{name!r}]"


class _StrictUndefined(jinja2.StrictUndefined):
    """StrictUndefined whose message names the full variable: ``'data.titel' is undefined``."""

    __slots__ = ()

    @property
    def _undefined_message(self) -> str:
        name = self._undefined_name
        obj = self._undefined_obj
        if not self._undefined_hint and name is not None and obj is not jinja2.utils.missing:
            path = getattr(obj, "_sangkien_path", None)
            if path is not None:
                return f"{_join(path, name)!r} is undefined"
        return str(super()._undefined_message)


class _Environment(ImmutableSandboxedEnvironment):
    def getattr(self, obj: Any, attribute: str) -> Any:
        # a field named like a dict method (items, values, ...) is the field, not the method
        if isinstance(obj, _PathDict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


def _finalize(value: Any) -> Any:
    return "" if value is None else value


@dataclass(frozen=True)
class _Compiled:
    subject: jinja2.Template
    body: jinja2.Template
    source_lines: tuple[str, ...]


# --------------------------------------------------------------------------- store


class TemplateStore:
    """Message templates found in *dirs* (``<dir>/<lang>/<name>.txt``), first folder first."""

    def __init__(
        self,
        dirs: Sequence[str | Path],
        default_lang: str = "vi",
        *,
        timezone: str | tzinfo = DEFAULT_TIMEZONE,
    ) -> None:
        if not _LANG.match(default_lang):
            raise ValueError(f"default_lang {default_lang!r} is not a language code like 'vi'")
        self.dirs = tuple(Path(d) for d in dirs)
        self.default_lang = default_lang
        self.timezone = _zone(timezone, ZoneInfo(DEFAULT_TIMEZONE))
        env = _Environment(
            undefined=_StrictUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            finalize=_finalize,
        )
        tz = self.timezone

        def bind(f: Callable[..., str]) -> Callable[..., str]:
            def filt(value: Any, tz_name: str | tzinfo | None = None) -> str:
                return f(value, tz if tz_name is None else tz_name)

            filt.__doc__ = f.__doc__
            return filt

        env.filters.update(
            vn_date=bind(vn_date),
            vn_datetime=bind(vn_datetime),
            en_date=bind(en_date),
            en_datetime=bind(en_datetime),
        )
        self._env = env
        self._cache: dict[Path, tuple[int, _Compiled]] = {}

    def __repr__(self) -> str:
        dirs = [str(d) for d in self.dirs]
        return f"TemplateStore(dirs={dirs!r}, default_lang={self.default_lang!r})"

    # -- finding

    def _languages_to_try(self, lang: str | None) -> list[str]:
        out: list[str] = []
        for candidate in (lang, (lang or "").split("-")[0] or None, self.default_lang):
            if candidate and _LANG.match(candidate) and candidate not in out:
                out.append(candidate)
        return out

    def _find(self, name: str, lang: str | None) -> tuple[str, Path] | None:
        if not _NAME.match(name):
            return None
        for candidate in self._languages_to_try(lang):
            for d in self.dirs:
                path = d / candidate / f"{name}.txt"
                if path.is_file():
                    return candidate, path
        return None

    def exists(self, name: str, lang: str | None = None) -> bool:
        """Return whether ``render(name, ..., lang)`` finds a file (fallback included)."""
        return self._find(name, lang) is not None

    def names(self) -> set[str]:
        """Return the names of every template, in any language."""
        return {name for name, _lang, _path in self._files()}

    def languages(self, name: str | None = None) -> set[str]:
        """Return the languages that have templates (or that have template *name*)."""
        return {lang for n, lang, _path in self._files() if name is None or n == name}

    def _files(self) -> list[tuple[str, str, Path]]:
        out = []
        for d in self.dirs:
            if not d.is_dir():
                continue
            for lang_dir in sorted(d.iterdir()):
                if not lang_dir.is_dir() or not _LANG.match(lang_dir.name):
                    continue
                for f in sorted(lang_dir.glob("*.txt")):
                    if _NAME.match(f.stem) and f.is_file():
                        out.append((f.stem, lang_dir.name, f))
        return out

    # -- rendering

    def render(
        self, name: str, context: Mapping[str, Any], lang: str | None = None
    ) -> tuple[str, str]:
        """Render template *name* in *lang* (else the default language): (subject, body).

        Raise :class:`TemplateError` naming the template, file, line and, for a missing
        variable, the variable.
        """
        found = self._find(name, lang)
        if found is None:
            tried = ", ".join(self._languages_to_try(lang))
            where = ", ".join(str(d) for d in self.dirs) or "no folders"
            problem = (
                f"{name!r} is not a valid template name (lower_snake_case)"
                if not _NAME.match(name)
                else f"no template file for language {tried} in {where}"
            )
            raise TemplateError(problem, template=name, lang=lang)
        used_lang, path = found
        compiled = self._compile(name, used_lang, path)
        ctx = {str(k): _wrap(v, str(k)) for k, v in context.items()}
        subject = self._run(compiled, compiled.subject, ctx, name, used_lang, path)
        body = self._run(compiled, compiled.body, ctx, name, used_lang, path)
        # the body template starts with two newlines so that its line numbers match the file
        return " ".join(subject.split()), body.lstrip("\n")

    def check(self, name: str, context: Mapping[str, Any], lang: str | None = None) -> list[str]:
        """Render *name* in every language it exists in (or in *lang*); return the problems."""
        if not _NAME.match(name):
            return [f"{name!r} is not a valid template name (lower_snake_case)"]
        langs = [lang] if lang else sorted(self.languages(name))
        if not langs:
            where = ", ".join(str(d) for d in self.dirs) or "no folders"
            return [f"no template {name!r} in {where}"]
        problems = []
        for one in langs:
            try:
                self.render(name, context, one)
            except TemplateError as exc:
                problems.append(str(exc))
        return problems

    def _compile(self, name: str, lang: str, path: Path) -> _Compiled:
        try:
            stamp = path.stat().st_mtime_ns
        except OSError as exc:
            raise TemplateError(
                f"cannot read template: {exc.strerror}", template=name, lang=lang, file=str(path)
            ) from None
        cached = self._cache.get(path)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not valid UTF-8"
            raise TemplateError(
                f"cannot read template: {why}", template=name, lang=lang, file=str(path)
            ) from None
        text = text.removeprefix("\ufeff").replace("\r\n", "\n")
        lines = text.split("\n")
        if not lines[0].startswith(_SUBJECT):
            raise TemplateError(
                f"the first line must be '{_SUBJECT} ...', got {lines[0][:40]!r}",
                template=name,
                lang=lang,
                file=str(path),
                line=1,
            )
        if not lines[0][len(_SUBJECT) :].strip():
            raise TemplateError(
                "the subject is empty", template=name, lang=lang, file=str(path), line=1
            )
        if len(lines) > 1 and lines[1].strip():
            raise TemplateError(
                "the second line must be blank (it separates the subject from the body)",
                template=name,
                lang=lang,
                file=str(path),
                line=2,
            )
        subject_src = lines[0][len(_SUBJECT) :].strip()
        body_src = "\n\n" + "\n".join(lines[2:])
        try:
            compiled = _Compiled(
                subject=self._template(subject_src, name, path),
                body=self._template(body_src, name, path),
                source_lines=tuple(lines),
            )
        except TemplateSyntaxError as exc:
            raise TemplateError(
                f"syntax error: {exc.message}",
                template=name,
                lang=lang,
                file=str(path),
                line=exc.lineno,
            ) from None
        self._cache[path] = (stamp, compiled)
        return compiled

    def _template(self, source: str, name: str, path: Path) -> jinja2.Template:
        code = self._env.compile(source, name=name, filename=str(path))
        return self._env.template_class.from_code(
            self._env, code, self._env.make_globals(None), None
        )

    def _run(
        self,
        compiled: _Compiled,
        template: jinja2.Template,
        ctx: Mapping[str, Any],
        name: str,
        lang: str,
        path: Path,
    ) -> str:
        try:
            return template.render(ctx)
        except Exception as exc:
            line = _line_in(exc.__traceback__, str(path))
            variable = None
            if isinstance(exc, SecurityError):
                detail = f"refused by the sandbox: {exc}"
            elif isinstance(exc, UndefinedError):
                named = re.fullmatch(r"'(.+)' is undefined", str(exc))
                variable = named.group(1) if named else None
                if variable is None:
                    variable = _guess_variable(exc, compiled.source_lines, line)
                detail = f"undefined variable {variable!r}" if variable else str(exc)
            elif isinstance(exc, TypeError) and "no loader" in str(exc):
                detail = "{% include %}, {% import %} and {% extends %} are not available"
            else:
                detail = f"{type(exc).__name__}: {exc}"
            raise TemplateError(
                detail, template=name, lang=lang, file=str(path), line=line, variable=variable
            ) from exc


def _line_in(tb: TracebackType | None, filename: str) -> int | None:
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _guess_variable(exc: Exception, lines: Sequence[str], line: int | None) -> str | None:
    """Name an undefined attribute of a value with no path (e.g. of None) from the source."""
    m = re.search(r"has no attribute '([^']+)'", str(exc))
    if not m or line is None or not 0 < line <= len(lines):
        return None
    attr = re.escape(m.group(1))
    found = re.search(rf"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*|\[[^\]]*\])*)\.{attr}\b", lines[line - 1])
    return f"{found.group(1)}.{m.group(1)}" if found else None


# --------------------------------------------------------------------------- context


def _text(label: Any, lang: str) -> str | None:
    if label is None:
        return None
    if isinstance(label, str):
        return label
    if isinstance(label, Mapping):
        return label.get(lang) or label.get("vi") or next(iter(label.values()), None)
    return str(label)


class Labels:
    """Labels of a workflow's names in one language, for templates: ``labels.state('x')``."""

    def __init__(self, definition: Definition, lang: str) -> None:
        self._definition = definition
        self._lang = lang

    def workflow(self) -> str:
        """Return the workflow's title."""
        return self._definition.title(self._lang)

    def state(self, name: str) -> str:
        """Return the label of state *name* (the name itself when it has none)."""
        return self._definition.label(name, self._lang)

    def field(self, name: str) -> str:
        """Return the label of field *name*."""
        spec = self._definition.model.fields.get(name)
        return (_text(spec.label, self._lang) if spec else None) or name

    def role(self, name: str) -> str:
        """Return the label of role *name*."""
        spec = self._definition.model.role_specs.get(name)
        return (_text(spec.label, self._lang) if spec else None) or name

    def trigger(self, name: str, from_state: str | None = None) -> str:
        """Return the label of trigger *name* (of its transition from *from_state*, if given)."""
        return _trigger_label(self._definition, name, from_state, self._lang)

    def __repr__(self) -> str:
        return f"Labels({self._definition.key!r}, {self._lang!r})"


def _trigger_label(
    definition: Definition, trigger: str | None, source: str | None, lang: str
) -> str:
    if not trigger:
        return ""
    matching = [t for t in definition.model.transitions if t.trigger == trigger]
    preferred = [t for t in matching if source in t.sources] or matching
    for t in preferred:
        text = _text(t.label, lang)
        if text:
            return text
    return trigger


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, Mapping):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _coerce(value: Any, kind: str) -> Any:
    if not isinstance(value, str):
        return value
    parsed = _parse_temporal(value)
    if kind == "date" and isinstance(parsed, date) and not isinstance(parsed, datetime):
        return parsed
    if kind == "datetime" and parsed is not None:
        if not isinstance(parsed, datetime):
            return datetime(parsed.year, parsed.month, parsed.day, tzinfo=UTC)
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return value


def _moment(value: Any) -> Any:
    if isinstance(value, str):
        parsed = _parse_temporal(value)
        if isinstance(parsed, datetime):
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
        return parsed if parsed is not None else value
    return value


def _link(pattern: str, instance: Any) -> str | None:
    if not pattern:
        return None
    out = pattern
    for key in ("instance_id", "workflow", "external_ref", "unit"):
        value = _get(instance, "id" if key == "instance_id" else key)
        out = out.replace("{" + key + "}", quote(str(value or ""), safe=""))
    return out


_SYSTEM_ACTOR = {"vi": "Hệ thống (tự động)", "en": "the system (automatically)"}


def build_context(
    *,
    definition: Definition,
    instance: Any,
    event: Any = None,
    deadline: Mapping[str, Any] | None = None,
    recipient: Mapping[str, Any],
    link_pattern: str = "",
    unit_name: str | None = None,
    lang: str = "vi",
) -> dict[str, Any]:
    """Return the variables a template sees (see docs/directory-and-templates.md).

    *instance* and *event* are mappings (or :class:`~sangkien.model.Instance` and
    :class:`~sangkien.model.Event`); dates in the instance data become ``date`` objects,
    times aware ``datetime`` objects, and declared fields without a value are ``None``.
    *link_pattern* may use ``{instance_id}``, ``{workflow}``, ``{external_ref}``, ``{unit}``.
    """
    fields = definition.model.fields
    raw = dict(_get(instance, "data") or {})
    data: dict[str, Any] = {name: None for name in fields}
    for key, value in raw.items():
        spec = fields.get(key)
        data[key] = _coerce(value, spec.type) if spec is not None else value
    state = str(_get(instance, "state") or "")
    unit = _get(instance, "unit")
    title = data.get("title")
    if not (isinstance(title, str) and title):
        title = _get(instance, "external_ref") or _get(instance, "id")
    ctx: dict[str, Any] = {
        "lang": lang,
        "instance": {
            "id": _get(instance, "id"),
            "workflow": _get(instance, "workflow") or definition.key,
            "workflow_title": definition.title(lang),
            "title": title,
            "state": state,
            "state_label": definition.label(state, lang) if state else "",
            "unit": unit,
            "unit_name": unit_name or unit,
            "created_by": _get(instance, "created_by"),
            "external_ref": _get(instance, "external_ref"),
            "parent_id": _get(instance, "parent_id"),
            "link": _link(link_pattern, instance),
        },
        "data": data,
        "event": None,
        "deadline": None,
        "recipient": {"id": _get(recipient, "id"), "name": _get(recipient, "name")},
        "labels": Labels(definition, lang),
    }
    if ctx["recipient"]["name"] is None:
        ctx["recipient"]["name"] = ctx["recipient"]["id"]
    if event is not None:
        trigger = _get(event, "trigger")
        from_state = _get(event, "from_state")
        to_state = _get(event, "to_state")
        actor_id = _get(event, "actor_id")
        if actor_id is None and isinstance(_get(event, "actor"), Mapping):
            actor_id = _get(event, "actor")["id"]
        actor_name = _get(event, "actor_name")
        if (
            actor_name is None
            and actor_id is not None
            and (actor_id == "system" or str(actor_id).startswith("system:"))
        ):
            actor_name = _SYSTEM_ACTOR.get(lang.split("-")[0], _SYSTEM_ACTOR["en"])
        ctx["event"] = {
            "kind": _get(event, "kind"),
            "trigger": trigger,
            "trigger_label": _trigger_label(definition, trigger, from_state, lang),
            "from_state": from_state,
            "from_label": definition.label(from_state, lang) if from_state else "",
            "to_state": to_state,
            "to_label": definition.label(to_state, lang) if to_state else "",
            "actor": actor_name or actor_id,
            "actor_id": actor_id,
            "comment": _get(event, "comment"),
            "at": _moment(_get(event, "at")),
        }
    if deadline is not None:
        ctx["deadline"] = {
            "label": _text(_get(deadline, "label"), lang) or "",
            "due_at": _moment(_get(deadline, "due_at")),
            "step": _get(deadline, "step"),
            "steps": _get(deadline, "steps"),
        }
    return ctx


# --------------------------------------------------------------------------- samples


_SAMPLE_DAY = date(2026, 3, 16)
_SAMPLE_MOMENT = datetime(2026, 3, 16, 2, 30, tzinfo=UTC)  # 09:30 in Vietnam
_SAMPLE_DUE = datetime(2026, 4, 30, 16, 59, 59, 999999, tzinfo=UTC)  # end of 30/4 in Vietnam


def _sample_number(spec: Any, integer: bool) -> int | float:
    value: float = 1.0
    if spec.min is not None:
        value = max(value, spec.min)
    if spec.max is not None:
        value = min(value, spec.max)
    if integer:
        up = math.ceil(value)
        return up if spec.max is None or up <= spec.max else math.floor(value)
    return value


def _sample_value(name: str, spec: Any, label: str) -> Any:
    kind = spec.type
    if spec.default is not None and kind not in ("date", "datetime"):
        return spec.default
    if kind in ("string", "text"):
        return label
    if kind == "integer":
        return _sample_number(spec, integer=True)
    if kind == "number":
        return _sample_number(spec, integer=False)
    if kind == "boolean":
        return True
    if kind == "date":
        return _SAMPLE_DAY
    if kind == "datetime":
        return _SAMPLE_MOMENT
    if kind == "enum":
        return spec.values[0] if spec.values else name
    if kind == "list":
        item = {
            "string": label,
            "integer": 1,
            "number": 100,
            "boolean": True,
            "object": {},
        }.get(spec.items or "string", label)
        return [item]
    return {}


def sample_context(
    definition: Definition, lang: str = "vi", *, minimal: bool = False
) -> dict[str, Any]:
    """Return a context with a sample value for every declared field, event and deadline.

    With *minimal*, optional things are left unset (fields not required, the event's comment,
    the link, the external reference), so that a template's ``{% if %}`` branches for missing
    values render too.
    """
    model = definition.model
    suffix = " (mẫu)" if lang.split("-")[0] == "vi" else " (sample)"
    data: dict[str, Any] = {}
    for name, spec in model.fields.items():
        if minimal and not spec.required:
            continue
        data[name] = _sample_value(name, spec, (_text(spec.label, lang) or name) + suffix)
    moving = next((t for t in model.transitions if t.to is not None), None)
    if moving is not None:
        trigger, from_state, to_state = moving.trigger, moving.sources[0], moving.to
    else:
        trigger, from_state, to_state = None, None, definition.initial_state
    deadline_label: Any = None
    for dl in (*[s.deadline for s in model.states.values()], *model.clocks.values()):
        if dl is not None and dl.label is not None:
            deadline_label = dl.label
            break
    instance = {
        "id": "0b9e1c52-sample",
        "workflow": definition.key,
        "state": to_state or definition.initial_state,
        "unit": "xa-nghia-hanh",
        "created_by": "nguyen.van.an",
        "external_ref": None if minimal else "HS-2026-0042",
        "data": data,
        "parent_id": "7d41a0f3-parent" if model.parent else None,
    }
    event = {
        "kind": "transition",
        "trigger": trigger,
        "from_state": from_state,
        "to_state": to_state,
        "actor_id": "pham.van.duc",
        "actor_name": "Phạm Văn Đức",
        "comment": None if minimal else "Ý kiến mẫu" if suffix == " (mẫu)" else "Sample comment",
        "at": _SAMPLE_MOMENT,
    }
    deadline = {
        "label": deadline_label or {"vi": "Hạn xử lý", "en": "Deadline"},
        "due_at": _SAMPLE_DUE,
        "step": 1,
        "steps": 2,
    }
    return build_context(
        definition=definition,
        instance=instance,
        event=event,
        deadline=deadline,
        recipient={"id": "nguyen.van.an", "name": "Nguyễn Văn An"},
        link_pattern="" if minimal else "https://example.gov.vn/sang-kien/{instance_id}",
        unit_name="Ủy ban nhân dân xã Nghĩa Hành",
        lang=lang,
    )
