"""A DSPy adapter that writes plain labeled prompts ("Text: …", "Reason: …", "Choice: …").

DSPy's ChatAdapter prompt (`[[ ## field ## ]]` markers, `{field}` placeholders) is too much for the small embedded
models: Qwen2.5-Coder-0.5B answers it with the literal placeholder. A labeled format close to the paper's own
prompts works for them and for hosted models alike, and it is still a DSPy Adapter, so signatures, demos,
optimizers and callbacks work unchanged.
"""

from __future__ import annotations

import re
import typing
from typing import Any

from dspy.adapters.chat_adapter import ChatAdapter
from dspy.adapters.utils import format_field_value, get_annotation_name, parse_value
from dspy.signatures.signature import Signature
from dspy.utils.exceptions import AdapterParseError

from programs.typed_outputs import lenient


def label(name: str, field: Any = None) -> str:
    """`paraphrase_1` -> `Paraphrase 1`: the label a field has in the prompt and in the answer."""
    return re.sub(r"_(\d+)$", r" \1", name).replace("_", " ").capitalize()


def describe(field: Any, default: str | None = None) -> str | None:
    """A field's description as the prompt shows it (DSPy's `${name}` placeholder is no description); a field that
    is not text and has none is described by its type, so a small model learns what to write (`one of: a, b`); a
    text field without one, by `default`."""
    extra = getattr(field, "json_schema_extra", None) or {}
    desc = extra.get("desc") if isinstance(extra, dict) else None
    if desc and not desc.startswith("${"):
        return desc
    annotation = getattr(field, "annotation", str)
    return getattr(field, "description", None) or (default if annotation in (str, None) else type_hint(annotation))


def type_hint(annotation: Any) -> str:
    """What a value of a field's type looks like, in words."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return "one of: " + ", ".join(str(a) for a in args)
    if typing.get_origin(annotation) is typing.Union and type(None) in args:  # Optional[X]
        rest = [a for a in args if a is not type(None)]
        return (type_hint(rest[0]) if len(rest) == 1 else "a value") + ", or None"
    simple = {bool: "True or False", int: "a whole number", float: "a number", str: "text"}
    if annotation in simple:
        return simple[annotation]
    return f"JSON of type {get_annotation_name(annotation)}"


class LabeledAdapter(ChatAdapter):
    """Inputs and outputs as `Label: value` lines; a single output field is the whole answer."""

    def __init__(self, **kwargs: Any):
        kwargs.setdefault("use_json_adapter_fallback", False)
        super().__init__(**kwargs)

    def format_system_message(self, signature: type[Signature]) -> str:
        outputs = signature.output_fields
        if len(outputs) == 1:
            (name, field), = outputs.items()
            desc = describe(field)  # none made up: "the answer" misled a predictor whose output is not the answer
            shape = f"Answer with the {label(name).lower()} only" + (f": {desc.rstrip('.')}." if desc else ".")
        else:
            lines = "\n".join(f"{label(n, f)}: <{describe(f) or label(n).lower()}>" for n, f in outputs.items())
            shape = f"Answer in exactly this format:\n{lines}"
        return f"{signature.instructions.strip()}\n\n{shape}"

    def format_user_message_content(self, signature: type[Signature], inputs: dict[str, Any], prefix: str = "",
                                    suffix: str = "", main_request: bool = False) -> str:
        parts = [prefix] if prefix else []
        for name, field in signature.input_fields.items():
            if name in inputs:
                parts.append(f"{label(name, field)}: {format_field_value(field_info=field, value=inputs[name])}")
        if suffix:
            parts.append(suffix)
        return "\n".join(parts).strip()

    def format_assistant_message_content(self, signature: type[Signature], outputs: dict[str, Any],
                                         missing_field_message: str | None = None) -> str:
        fields = signature.output_fields

        def value(name: str, field: Any) -> str:  # as DSPy formats a field's value: text as it is, a list as JSON
            return format_field_value(field_info=field, value=outputs[name]) if name in outputs else str(
                missing_field_message)

        if len(fields) == 1:
            (name, field), = fields.items()
            return value(name, field)
        return "\n".join(f"{label(n, f)}: {value(n, f)}" for n, f in fields.items())

    def parse(self, signature: type[Signature], completion: str) -> dict[str, Any]:
        fields = signature.output_fields
        text = completion.strip()
        if len(fields) == 1:
            (name, field), = fields.items()
            m = re.match(rf"^\s*{re.escape(label(name, field))}\s*:\s*", text, re.I)
            return {name: self._value(signature, name, field, text[m.end():] if m else text, completion)}
        labels = {label(n, f).lower(): n for n, f in fields.items()}
        pattern = re.compile(rf"^\W*({'|'.join(re.escape(lbl) for lbl in labels)})\W*\s*:\s*(.*)$", re.I)
        found: dict[str, list[str]] = {}
        current = None
        for line in text.splitlines():
            m = pattern.match(line.strip())
            if m and labels[m.group(1).lower()] not in found:
                current = labels[m.group(1).lower()]
                found[current] = [m.group(2)]
            elif current is not None:
                found[current].append(line)
        missing = [n for n in fields if n not in found]
        if missing:
            raise AdapterParseError(adapter_name="LabeledAdapter", signature=signature, lm_response=completion,
                                    message=f"missing field(s) {missing}")
        return {n: self._value(signature, n, fields[n], "\n".join(found[n]).strip(), completion) for n in fields}

    @staticmethod
    def _value(signature: type[Signature], name: str, field: Any, raw: str, completion: str) -> Any:
        annotation = field.annotation
        if typing.get_origin(annotation) is typing.Literal:
            options = [str(o) for o in typing.get_args(annotation)]
            m = re.search(r"\b(" + "|".join(re.escape(o) for o in options) + r")\b", raw)
            found = m.group(1) if m else lenient(raw, options)  # `Billing.` is billing: unambiguous
            if found is None:
                raise AdapterParseError(adapter_name="LabeledAdapter", signature=signature, lm_response=completion,
                                        message=f"{name} must be one of {options}, got {raw[:80]!r}")
            raw = found
        if not raw:
            raise AdapterParseError(adapter_name="LabeledAdapter", signature=signature, lm_response=completion,
                                    message=f"empty {name}")
        try:
            return parse_value(raw, annotation)
        except ValueError as e:
            bare = raw.strip().rstrip(".!,;").strip()  # a number or a bool with a closing period: unambiguous
            if annotation in (bool, int, float) and bare != raw:
                try:
                    return parse_value(bare, annotation)
                except ValueError:
                    pass
            raise AdapterParseError(adapter_name="LabeledAdapter", signature=signature, lm_response=completion,
                                    message=f"cannot parse {name}: {e}") from e
