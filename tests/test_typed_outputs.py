"""A `Literal` output of the local student is decoded under its type: always one of the allowed values, under
DSPy's ChatAdapter as under LabeledAdapter; an answer that already is one is left byte-identical."""

from typing import Literal

import dspy
import pytest

from programs.adapter import LabeledAdapter
from programs.lm import resolve_lm
from programs.typed_outputs import choices, lenient, snap

ROUTE = dspy.Signature({"ticket": (str, dspy.InputField()),
                        "category": (Literal["billing", "shipping", "bug", "account"], dspy.OutputField()),
                        "reply": (str, dspy.OutputField())}, "Route the ticket, then reply to it.")
KIND = dspy.Signature("question -> kind: Literal['person', 'place', 'thing', 'reason', 'time']",
                      "Say what kind of answer the question asks for.")
TICKETS = ["My card was charged twice", "The parcel never arrived", "The app crashes on login",
           "I cannot change my email address", "Where is my refund?", "The button does nothing"]


def _longest(prefix, options):  # a scorer that is not the model: the test sees which value it picked
    return [len(o) for o in options]


@pytest.mark.parametrize("adapter", [dspy.ChatAdapter(), LabeledAdapter()], ids=["chat", "labeled"])
def test_a_value_spelled_loosely_is_the_allowed_one_and_junk_is_the_likeliest(adapter):
    messages = adapter.format(ROUTE, demos=[], inputs={"ticket": "x"})
    assert [(c.options, c.style) for c in choices(messages)] == [
        (("billing", "shipping", "bug", "account"), "labeled" if isinstance(adapter, LabeledAdapter) else "chat")]
    for written, chosen in (("Billing.", "billing"), (" 'SHIPPING' ", "shipping"), ("no idea at all", "shipping")):
        answer = adapter.format_assistant_message_content(ROUTE, {"category": written, "reply": "Sorry about that."})
        assert adapter.parse(ROUTE, snap(messages, answer, _longest)) == {"category": chosen,
                                                                          "reply": "Sorry about that."}
    valid = adapter.format_assistant_message_content(ROUTE, {"category": "bug", "reply": "We are on it."})
    assert snap(messages, valid, _longest) == valid  # nothing to decode: unchanged, byte for byte


def test_lenient_matching_is_only_where_it_is_unambiguous():
    assert lenient("Billing.", ["billing", "bug"]) == "billing"
    assert lenient("billing or bug", ["billing", "bug"]) is None
    assert lenient("A", ["a", "A"]) == "A"  # exact first
    assert lenient("b.", ["B", "b"]) is None  # two allowed values spell it: neither is chosen


def test_labeled_adapter_reads_a_closing_period_and_a_capital():
    assert LabeledAdapter().parse(KIND, "Place.") == {"kind": "place"}
    assert LabeledAdapter().parse(dspy.Signature("question -> count: int"), "4.") == {"count": 4}


@pytest.mark.parametrize("adapter", [dspy.ChatAdapter(), LabeledAdapter()], ids=["chat", "labeled"])
def test_a_random_student_always_answers_an_allowed_value(tiny_causal_dir, adapter):
    """The share of valid typed outputs of a randomly initialised model, with decoding under the type off and on.
    (A program of several output fields needs a student that writes the adapter's structure: a trained one,
    tests/test_distill.py.)"""
    signature = KIND
    predict = dspy.Predict(signature)
    field = next(iter(n for n, f in signature.output_fields.items() if "Literal" in str(f.annotation)))
    allowed = set(signature.output_fields[field].annotation.__args__)
    share = {}
    for typed in (False, True):
        lm = resolve_lm(f"local/{tiny_causal_dir}", temperature=0.0, max_tokens=24, cache=False)
        lm.engine.typed = typed
        valid = 0
        with dspy.context(lm=lm, adapter=adapter):
            for ticket in TICKETS:
                try:
                    out = predict(**{next(iter(signature.input_fields)): ticket})
                    valid += getattr(out, field) in allowed
                except Exception:  # noqa: BLE001 - an answer its adapter cannot parse: not valid
                    pass
        share[typed] = valid / len(TICKETS)
    print(f"valid {field}: {share[False]:.0%} before, {share[True]:.0%} after")
    assert share[True] == 1.0 and share[False] < 1.0


def test_an_answer_chat_adapter_cannot_read_is_put_under_its_one_fields_marker():
    """A student that wrote the marker mid-line, or none, still answers its one output field; JSONAdapter's prompt,
    which lists its fields the same way, is left alone."""
    route = dspy.Signature("ticket -> category: Literal['billing', 'shipping']", "Route.")
    messages = dspy.ChatAdapter().format(route, demos=[], inputs={"ticket": "x"})
    mid_line = "The tracking number.\n\nRespond with `[[ ## category ## ]]Shipping[[ ## completed ## ]]`."
    assert dspy.ChatAdapter().parse(route, snap(messages, mid_line, _longest)) == {"category": "shipping"}
    reply = dspy.Signature("ticket -> reply")
    messages = dspy.ChatAdapter().format(reply, demos=[], inputs={"ticket": "x"})
    assert dspy.ChatAdapter().parse(reply, snap(messages, "Sorry about that.", None)) == {"reply": "Sorry about that."}
    json_messages = dspy.JSONAdapter().format(route, demos=[], inputs={"ticket": "x"})
    assert snap(json_messages, '{"category": "billing"}', _longest) == '{"category": "billing"}'
