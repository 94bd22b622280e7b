"""A run-input form generated from a workflow's ``input_schema`` (JSON Schema).

An object schema with ``properties`` becomes one field per property (text, choice,
number, switch, or JSON text for arrays, objects and anything else); every other
schema, and no schema at all, gets one raw JSON field. The form validates the
input with jsonschema on every change, as the control plane will (the schema's
``$schema`` dialect, Draft 2020-12 by default, formats not asserted), and shows
each error at the field it is about.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import jsonschema
import referencing.exceptions
from nicegui import ui
from nicegui.elements.mixins.validation_element import ValidationElement

from statepipe_api.convert import resolve_local_ref

__all__ = ["SchemaForm", "json_pointer_path"]

# A field without a value: the key is left out of the input.
_ABSENT: Any = object()
# Strings longer than this (maxLength) get a multi-line field.
_LONG_STRING = 200
_MULTILINE_FORMATS = frozenset({"textarea", "multiline", "markdown", "text"})
# Form-level errors listed at most.
_MAX_LISTED_ERRORS = 12


class _Unparsable(Exception):
    """A field's text is not a value (JSON that does not parse)."""


def json_pointer_path(path: Any) -> str:
    """``["items", 1, "qty"]`` as ``input.items[1].qty`` (how the server names places)."""
    return "input" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _dumps(value: Any, *, indent: int | None = 2) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=False)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, bool | int | float | str)


def _resolve(schema: Any, root: Mapping[str, Any]) -> dict[str, Any]:
    """A (sub)schema with a local ``$ref`` ("#/$defs/x") followed, siblings kept."""
    if not isinstance(schema, dict):
        return {}
    for _ in range(16):  # a cycle of refs ends here rather than spinning
        ref = schema.get("$ref")
        if not isinstance(ref, str) or not ref.startswith("#"):
            return schema
        try:
            target = resolve_local_ref(root, ref)
        except LookupError:
            return schema
        if not isinstance(target, dict):
            return schema
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _kind(schema: Mapping[str, Any]) -> str:
    """Which widget a property gets: string, text, enum, number, integer, boolean or json."""
    enum = schema.get("enum")
    if isinstance(enum, list) and enum and all(_is_scalar(v) for v in enum):
        return "enum"
    if "const" in schema:
        return "json"
    declared = schema.get("type")
    types = [declared] if isinstance(declared, str) else declared
    if not isinstance(types, list):
        return "json"
    types = [t for t in types if t != "null"]
    if len(types) != 1:
        return "json"
    kind = types[0]
    if kind == "string":
        multiline = (
            schema.get("format") in _MULTILINE_FORMATS
            or schema.get("x-multiline") is True
            or "contentMediaType" in schema
            or (isinstance(schema.get("maxLength"), int) and schema["maxLength"] > _LONG_STRING)
        )
        return "text" if multiline else "string"
    if kind in ("number", "integer", "boolean"):
        return kind
    return "json"


def _caption(schema: Mapping[str, Any]) -> str:
    """The description, the default and the constraints a person should know up front."""
    parts: list[str] = []
    if isinstance(schema.get("description"), str) and schema["description"]:
        parts.append(schema["description"])
    if "default" in schema:
        parts.append(f"default: {_dumps(schema['default'], indent=None)}")
    hints = []
    for key, word in (
        ("format", "format"),
        ("minimum", "min"),
        ("exclusiveMinimum", "greater than"),
        ("maximum", "max"),
        ("exclusiveMaximum", "less than"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("pattern", "pattern"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
    ):
        if key in schema and not isinstance(schema[key], dict | list):
            hints.append(f"{word} {schema[key]}")
    if hints:
        parts.append(", ".join(hints))
    return " · ".join(parts)


class _Field:
    """One property of an object schema, as a widget."""

    def __init__(
        self, key: str, schema: dict[str, Any], *, required: bool, on_change: Callable[[], None]
    ) -> None:
        self.key = key
        self.schema = schema
        self.kind = _kind(schema)
        self.required = required
        self._on_change = on_change
        self._touched = False  # a switch the person has flipped counts as a value
        self._writing = False  # set while the form, not the person, sets the value
        # "required" shows once the person has been at the field (before, the Start
        # button's hint lists what is missing): a new form is not a page of errors.
        self.edited = False
        title = schema.get("title") if isinstance(schema.get("title"), str) else None
        label = f"{title or key}{' *' if required else ''}"
        with ui.column().classes("w-full gap-0"):
            self.element = self._build(label)
            self.element.mark(f"field-{key}")
            if isinstance(self.element, ValidationElement):
                self.element.without_auto_validation()  # the form sets the errors
            if title and title != key:
                self.element.tooltip(key)
            caption = _caption(schema)
            if caption:
                ui.label(caption).classes("text-xs sp-muted")
            # Switches have no error slot of their own.
            self._error_label = ui.label().classes("text-xs text-negative")
            self._error_label.set_visibility(False)
        if "default" in schema and self.accepts(schema["default"]):
            self.write(schema["default"])

    def _build(self, label: str) -> Any:
        handler = self._changed
        kind = self.kind
        if kind == "enum":
            options = {_dumps(v, indent=None): _option_label(v) for v in self.schema["enum"]}
            return ui.select(
                options, label=label, clearable=not self.required, on_change=handler
            ).classes("w-full")
        if kind in ("number", "integer"):
            return ui.number(
                label, step=1 if kind == "integer" else None, on_change=handler
            ).classes("w-full")
        if kind == "boolean":
            return ui.switch(label, on_change=handler)
        if kind == "text":
            return ui.textarea(label, on_change=handler).props("autogrow").classes("w-full")
        if kind == "json":
            return (
                ui.textarea(label, on_change=handler, placeholder=_json_placeholder(self.schema))
                .props("autogrow input-class=sp-mono")
                .classes("w-full")
            )
        placeholder = (
            self.schema.get("format") if isinstance(self.schema.get("format"), str) else None
        )
        return ui.input(label, placeholder=placeholder, on_change=handler).classes("w-full")

    def _changed(self) -> None:
        if self._writing:
            return
        self._touched = True
        self.edited = True
        self._on_change()

    def read(self) -> Any:
        """The field's value, or ``_ABSENT`` when it is left empty.

        Raises:
            _Unparsable: A JSON field whose text does not parse.
        """
        value = self.element.value
        kind = self.kind
        if kind == "enum":
            return _ABSENT if value is None else json.loads(value)
        if kind in ("number", "integer"):
            if value is None:
                return _ABSENT
            if not math.isfinite(value):
                raise _Unparsable("expected a finite number")
            return int(value) if float(value).is_integer() and abs(value) < 2**53 else value
        if kind == "boolean":
            present = self._touched or self.required or "default" in self.schema
            return bool(value) if present else _ABSENT
        if kind == "json":
            text = (value or "").strip()
            if not text:
                return _ABSENT
            try:
                return json.loads(text)
            except json.JSONDecodeError as err:
                raise _Unparsable(_json_error(err)) from None
        return value if value else _ABSENT

    def accepts(self, value: Any) -> bool:
        """Whether the widget can show ``value`` (``_ABSENT``: empty)."""
        if value is _ABSENT:
            return True
        kind = self.kind
        if kind == "enum":
            return _dumps(value, indent=None) in self.element.options
        if kind in ("number", "integer"):
            return isinstance(value, int | float) and not isinstance(value, bool)
        if kind == "boolean":
            return isinstance(value, bool)
        if kind == "json":
            return True
        return isinstance(value, str) and (value != "" or not self.required)

    def write(self, value: Any) -> None:
        """Shows ``value`` (one :meth:`accepts`) without counting as the person's change."""
        self._writing = True
        try:
            self._write(value)
        finally:
            self._writing = False

    def _write(self, value: Any) -> None:
        kind = self.kind
        if kind == "enum":
            self.element.value = None if value is _ABSENT else _dumps(value, indent=None)
        elif kind in ("number", "integer"):
            self.element.value = None if value is _ABSENT else value
        elif kind == "boolean":
            self.element.value = False if value is _ABSENT else value
            self._touched = value is not _ABSENT
        elif kind == "json":
            self.element.value = "" if value is _ABSENT else _dumps(value)
        else:
            self.element.value = "" if value is _ABSENT else value

    def show_error(self, message: str | None) -> None:
        if isinstance(self.element, ValidationElement):
            self.element.error = message
        else:
            self._error_label.text = message or ""
            self._error_label.set_visibility(bool(message))


def _option_label(value: Any) -> str:
    return value if isinstance(value, str) else _dumps(value, indent=None)


def _json_placeholder(schema: Mapping[str, Any]) -> str:
    declared = schema.get("type")
    if declared == "array":
        return "JSON, e.g. [1, 2]"
    if declared == "object":
        return 'JSON, e.g. {"key": "value"}'
    return "JSON"


def _json_error(err: json.JSONDecodeError) -> str:
    return f"not valid JSON: {err.msg} (line {err.lineno}, column {err.colno})"


def _humane(error: jsonschema.ValidationError) -> str:
    message = error.message
    if error.instance is None and message.startswith("None "):
        message = "null " + message[len("None ") :]
    return message


class SchemaForm:
    """The input of a run, as a form generated from a JSON Schema, plus a raw JSON view.

    Build it inside a container; it validates on every change and calls
    ``on_change`` afterwards, so a Start button can follow :attr:`valid`.

    Args:
        schema: The workflow's ``input_schema`` (None or empty: any JSON value).
        on_change: Called after each change, once the form has been validated.
    """

    def __init__(
        self, schema: Mapping[str, Any] | None, *, on_change: Callable[[], None] | None = None
    ) -> None:
        self.schema: dict[str, Any] = dict(schema or {})
        self._on_change = on_change
        self._syncing = False  # set while one view is copied into the other
        self._fields: dict[str, _Field] = {}
        self._extra: dict[str, Any] = {}  # keys the raw JSON has and the form does not show
        self._value: Any = None
        self._valid = True
        self.errors: list[str] = []
        self._missing: list[str] = []
        self._validator, schema_problem = self._make_validator()

        root = _resolve(self.schema, self.schema)
        properties = root.get("properties")
        is_object = root.get("type") == "object" or (
            "type" not in root and isinstance(properties, dict)
        )
        self.has_fields = bool(is_object and isinstance(properties, dict) and properties)
        required = root.get("required") if isinstance(root.get("required"), list) else []

        with ui.column().classes("w-full gap-2") as self.container:
            if schema_problem:
                ui.label(schema_problem).classes("text-xs text-warning")
            self.raw_toggle: ui.switch | None = None
            if self.has_fields:
                self.raw_toggle = (
                    ui.switch("raw JSON", on_change=self._toggled)
                    .props("dense")
                    .mark("raw-toggle")
                    .tooltip("type the whole input as JSON")
                )
                with ui.column().classes("w-full gap-2") as self._fields_box:
                    for key in _ordered(properties, required):
                        self._fields[key] = _Field(
                            key,
                            _resolve(properties[key], self.schema),
                            required=key in required,
                            on_change=self._field_changed,
                        )
            self.raw = (
                ui.textarea(
                    "input (JSON; empty: none)" if not self.schema else "input (JSON)",
                    on_change=self._raw_changed,
                )
                .props("outlined autogrow input-class=sp-mono")
                .classes("w-full")
                .mark("raw-json")
                .without_auto_validation()
            )
            self._note = ui.label().classes("text-xs text-warning").mark("form-note")
            self._errors_label = (
                ui.label().classes("text-xs text-negative whitespace-pre-line").mark("form-errors")
            )
        self.raw.set_visibility(not self.has_fields)
        self._note.set_visibility(False)
        if self.has_fields:
            self._copy_form_to_raw()
        self._validate(notify=False)  # the owner reads .valid once it has built its own parts

    # ----------------------------------------------------------- public

    @property
    def valid(self) -> bool:
        """True when the input satisfies the schema and every field parses."""
        return self._valid

    @property
    def value(self) -> Any:
        """The input to send (None: no input). Meaningful while :attr:`valid`."""
        return self._value

    @property
    def missing_required(self) -> list[str]:
        """Required fields left empty that do not show their error yet (not visited)."""
        return list(self._missing)

    @property
    def raw_mode(self) -> bool:
        """True while the whole input is typed as JSON."""
        return not self.has_fields or bool(self.raw_toggle and self.raw_toggle.value)

    # ---------------------------------------------------------- changes

    def _make_validator(self) -> tuple[jsonschema.protocols.Validator | None, str]:
        if not self.schema:
            return None, ""
        cls = jsonschema.validators.validator_for(
            self.schema, default=jsonschema.Draft202012Validator
        )
        try:
            cls.check_schema(self.schema)
        except jsonschema.SchemaError as err:
            return None, f"the input schema is not valid JSON Schema ({err.message}); not checked"
        return cls(self.schema), ""

    def _field_changed(self) -> None:
        if self._syncing:
            return
        self._set_note("")
        self._copy_form_to_raw()
        self._validate()

    def _raw_changed(self) -> None:
        if self._syncing:
            return
        self._set_note("")
        if self.has_fields:
            parsed, error = self._parse_raw()
            if error is None and isinstance(parsed, dict) and self._fits_form(parsed) is None:
                self._copy_to_form(parsed)
        self._validate()

    def _toggled(self, event: Any) -> None:
        if self._syncing:
            return
        self._set_note("")
        if event.value:  # form -> raw
            try:
                self._compose()
            except _Unparsable:
                self._set_toggle(False)
                self._set_note("fix the fields marked in red before switching to raw JSON")
                self._validate()
                return
            self._copy_form_to_raw()
        else:  # raw -> form
            parsed, error = self._parse_raw()
            reason = error or (
                "the input is not an object" if not isinstance(parsed, dict) else None
            )
            reason = reason or self._fits_form(parsed)
            if reason:
                self._set_toggle(True)
                self._set_note(f"cannot show this input in the form: {reason}")
                self._validate()
                return
            self._copy_to_form(parsed)
            for field in self._fields.values():
                field.edited = True  # the person has typed the whole input
        self._fields_box.set_visibility(not event.value)
        self.raw.set_visibility(bool(event.value))
        self._validate()

    def _set_toggle(self, value: bool) -> None:
        assert self.raw_toggle is not None
        self._syncing = True
        try:
            self.raw_toggle.value = value
        finally:
            self._syncing = False

    def _set_note(self, text: str) -> None:
        self._note.text = text
        self._note.set_visibility(bool(text))

    # ------------------------------------------------------------ views

    def _parse_raw(self) -> tuple[Any, str | None]:
        text = (self.raw.value or "").strip()
        if not text:
            return None, None
        try:
            return json.loads(text), None
        except json.JSONDecodeError as err:
            return None, _json_error(err)

    def _compose(self) -> dict[str, Any]:
        """The form's value. Raises _Unparsable (naming the fields) when one does not parse."""
        out: dict[str, Any] = {}
        broken = []
        for key, field in self._fields.items():
            try:
                value = field.read()
            except _Unparsable:
                broken.append(key)
                continue
            if value is not _ABSENT:
                out[key] = value
        if broken:
            raise _Unparsable(", ".join(broken))
        for key, value in self._extra.items():
            out.setdefault(key, value)
        return out

    def _fits_form(self, value: dict[str, Any]) -> str | None:
        for key, field in self._fields.items():
            if not field.accepts(value.get(key, _ABSENT)):
                shown = _dumps(value[key], indent=None)
                return f"{key} is {shown[:40]}, which its field cannot hold"
        return None

    def _copy_to_form(self, value: dict[str, Any]) -> None:
        self._syncing = True
        try:
            for key, field in self._fields.items():
                field.write(value.get(key, _ABSENT))
            self._extra = {k: v for k, v in value.items() if k not in self._fields}
        finally:
            self._syncing = False

    def _copy_form_to_raw(self) -> None:
        try:
            value = self._compose()
        except _Unparsable:
            return  # the raw view keeps its last good copy
        self._syncing = True
        try:
            self.raw.value = _dumps(value)
        finally:
            self._syncing = False

    # ------------------------------------------------------- validation

    def _validate(self, *, notify: bool = True) -> None:
        field_errors: dict[str, str] = {}
        listed: list[str] = []
        raw_error: str | None = None
        value: Any = None
        have_value = True
        if self.raw_mode:
            value, raw_error = self._parse_raw()
            have_value = raw_error is None
        else:
            value = {}
            for key, field in self._fields.items():
                try:
                    item = field.read()
                except _Unparsable as err:
                    field_errors[key] = str(err)
                    have_value = False
                    continue
                if item is not _ABSENT:
                    value[key] = item
            for key, item in self._extra.items():
                value.setdefault(key, item)

        if have_value and self._validator is not None:
            try:
                errors = sorted(
                    self._validator.iter_errors(value), key=jsonschema.exceptions.relevance
                )
            except referencing.exceptions.Unresolvable as err:
                errors = []
                listed.append(f"the input schema has a $ref that cannot be resolved: {err}")
            for error in errors:
                self._place(error, field_errors, listed)

        self._missing = []
        for key, field in self._fields.items():
            shown = None if self.raw_mode else field_errors.get(key)
            if shown == "required" and not field.edited:
                self._missing.append(key)
                shown = None
            field.show_error(shown)
        self.raw.error = raw_error
        if len(listed) > _MAX_LISTED_ERRORS:
            listed = [
                *listed[:_MAX_LISTED_ERRORS],
                f"… and {len(listed) - _MAX_LISTED_ERRORS} more",
            ]
        self.errors = listed
        self._errors_label.text = "\n".join(listed)
        self._errors_label.set_visibility(bool(listed))
        self._valid = have_value and not field_errors and not listed
        self._value = value if have_value else None
        if notify and self._on_change is not None:
            self._on_change()

    def _place(
        self, error: jsonschema.ValidationError, field_errors: dict[str, str], listed: list[str]
    ) -> None:
        """Puts an error at its field (form view) or in the list under the form."""
        path = list(error.absolute_path)
        message = _humane(error)
        if not self.raw_mode:
            if path and path[0] in self._fields:
                key = path[0]
                if key not in field_errors:
                    rest = json_pointer_path(path[1:])[len("input") :]
                    field_errors[key] = f"{rest.lstrip('.')}: {message}" if rest else message
                return
            if not path and error.validator == "required" and isinstance(error.instance, dict):
                missing = [
                    name
                    for name in error.validator_value
                    if isinstance(name, str) and name not in error.instance
                ]
                if missing and all(name in self._fields for name in missing):
                    for name in missing:
                        field_errors.setdefault(name, "required")
                    return
        listed.append(f"{json_pointer_path(path)}: {message}")


def _ordered(properties: Mapping[str, Any], required: list[Any]) -> list[str]:
    """Required properties first (in the order ``required`` lists them), then the rest.

    The spec travels as a protobuf Struct, a map that keeps no key order, so the rest
    come by ``x-order`` / ``propertyOrder`` where given, else by name.
    """
    first = [key for key in dict.fromkeys(required) if isinstance(key, str) and key in properties]

    def rank(key: str) -> tuple[float, str]:
        schema = properties[key] if isinstance(properties[key], dict) else {}
        order = schema.get("x-order", schema.get("propertyOrder"))
        number = order if isinstance(order, int | float) and not isinstance(order, bool) else None
        return (float("inf") if number is None else float(number), key)

    return [*first, *sorted((key for key in properties if key not in first), key=rank)]
