"""A typed output of the local student decoded under its type: a `Literal` field is always one of its values.

The student writes its answer freely; then each `Literal` output field the prompt declares is read back from the
answer, and a value that is not one of the allowed ones is replaced: by the one allowed value it unambiguously
spells (case, whitespace, quotes, a trailing period: `Billing.` -> `billing`), else by the allowed value the student
itself finds likeliest at that place in its answer (`score`). An answer that already holds an allowed value is
returned unchanged, so outputs that were valid before stay byte-identical. An answer to a ChatAdapter prompt of one
output field that lacks DSPy's `[[ ## field ## ]]` marker is put under it (the whole answer is that field: the one
reading there is), so an undertrained student's answer still parses.

The allowed values are read from the prompt DSPy's adapter wrote, since that is all an engine sees: ChatAdapter's
"`name` (Literal[...])" lines and `[[ ## name ## ]]` markers, or `LabeledAdapter`'s `Label: <one of: a, b>` lines
and `Label: value` answers. The same function serves evaluation, the feedback loop's samples and a distilled program
in a user's hands (`programs.lm.TransformersEngine`).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# the values the student itself finds likeliest: score(prefix of the answer, continuations) -> log-probabilities
Score = Callable[[str, Sequence[str]], Sequence[float]]

_CHAT_FIELD = re.compile(r"^\d+\. `(\w+)` \(Literal\[(.*)\]\):?", re.M)
_CHAT_ANY_FIELD = re.compile(r"^\d+\. `(\w+)` \(", re.M)
_CHAT_OUTPUTS = "Your output fields are:"
_LABELED_FIELD = re.compile(r"^([A-Z][\w ]*): <one of: (.+)>$", re.M)
_LABELED_ONLY = re.compile(r"Answer with the (.+) only: one of: (.+)\.$", re.M)


@dataclass(frozen=True)
class Choice:
    """A `Literal` output field as the answer shows it: where its value is, and what it may be."""

    field: str  # the marker or label the value follows
    options: tuple[str, ...]
    style: str  # "chat" ([[ ## field ## ]] then the value), "labeled" (Label: value), "whole" (the whole answer)


def _system(messages: Sequence[dict]) -> str:
    return "\n".join(m.get("content") or "" for m in messages if m.get("role") == "system")


def _chat_outputs(system: str) -> str | None:
    """The "Your output fields are:" section of a ChatAdapter (or JSONAdapter) system message; None elsewhere."""
    if _CHAT_OUTPUTS not in system:
        return None
    return system.split(_CHAT_OUTPUTS, 1)[1].split("All interactions will be structured", 1)[0]


def choices(messages: Sequence[dict]) -> list[Choice]:
    """The `Literal` output fields the adapter's prompt declares (none for a prompt of text fields only)."""
    system = _system(messages)
    found: list[Choice] = []
    if (outputs := _chat_outputs(system)) is not None:
        for m in _CHAT_FIELD.finditer(outputs):
            try:
                options = ast.literal_eval(f"[{m.group(2)}]")
            except (ValueError, SyntaxError):
                continue
            found.append(Choice(m.group(1), tuple(str(o) for o in options), "chat"))
        return found
    for m in _LABELED_FIELD.finditer(system):
        found.append(Choice(m.group(1), tuple(o.strip() for o in m.group(2).split(", ")), "labeled"))
    if not found and (m := _LABELED_ONLY.search(system)):
        found.append(Choice(m.group(1).capitalize(), tuple(o.strip() for o in m.group(2).split(", ")), "whole"))
    return found


def lenient(value: str, options: Sequence[str]) -> str | None:
    """The one allowed value `value` spells, ignoring case, surrounding space, quotes and closing punctuation;
    None when it spells none, or several."""
    if value in options:
        return value
    bare = value.strip().strip("`'\"*").rstrip(".!,;").strip().strip("`'\"*").strip()
    matches = {o for o in options if o.lower() == bare.lower()}
    return matches.pop() if len(matches) == 1 else None


def _span(answer: str, choice: Choice) -> tuple[int, int] | None:
    """Where the field's value is in `answer` (start, end), None when the answer does not have the field."""
    if choice.style == "whole":
        m = re.match(rf"\s*(?:{re.escape(choice.field)}\s*:\s*)?", answer, re.I)
        return m.end(), len(answer.rstrip())
    if choice.style == "chat":
        m = re.search(rf"\[\[ ## {re.escape(choice.field)} ## \]\]\s*", answer)
        if not m:
            return None
        nxt = answer.find("[[ ##", m.end())
        end = len(answer) if nxt < 0 else nxt
    else:
        m = re.search(rf"^\W*{re.escape(choice.field)}\W*\s*:[ \t]*", answer, re.I | re.M)
        if not m:
            return None
        nxt = answer.find("\n", m.end())
        end = len(answer) if nxt < 0 else nxt
    while end > m.end() and answer[end - 1].isspace():
        end -= 1
    return m.end(), end


def only_output(messages: Sequence[dict]) -> str | None:
    """The name of the one output field of a ChatAdapter prompt; None for another prompt or several fields."""
    system = _system(messages)
    if (outputs := _chat_outputs(system)) is None:
        return None
    names = _CHAT_ANY_FIELD.findall(outputs)
    if len(names) != 1 or f"[[ ## {names[0]} ## ]]" not in system:  # JSONAdapter's prompt lists fields alike
        return None
    return names[0]


def snap(messages: Sequence[dict], answer: str, score: Score | None) -> str:
    """`answer` with each `Literal` field's value one of its allowed values (the module docstring says how); an
    answer to a ChatAdapter prompt of one output field without the field's marker at the start of a line is that
    field's value (what follows a marker written mid-line, else all of it: the one reading there is), put under
    its marker."""
    only = only_output(messages)
    marker = f"[[ ## {only} ## ]]"
    if only is not None and not re.search(rf"^\s*{re.escape(marker)}", answer, re.M):  # ChatAdapter reads none
        value = answer.split(marker, 1)[1] if marker in answer else answer  # after a marker written mid-line
        value = value.split("[[ ##", 1)[0].strip()
        answer = f"{marker}\n{value}\n\n[[ ## completed ## ]]"
    for choice in choices(messages):
        span = _span(answer, choice)
        if span is None:
            continue
        start, end = span
        value = answer[start:end]
        chosen = lenient(value, choice.options)
        if chosen is None and score is not None and choice.options:
            logps = score(answer[:start], choice.options)
            chosen = choice.options[max(range(len(choice.options)), key=lambda i: logps[i])]
        if chosen is not None and chosen != value:
            answer = answer[:start] + chosen + answer[end:]
    return answer


__all__ = ["Choice", "choices", "lenient", "snap"]
