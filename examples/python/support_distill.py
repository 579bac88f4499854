"""Distill a two-step support program, a router with a `Literal` label and then a reply writer, into the embedded
135M student; then load the distilled program in a fresh process, under DSPy's default adapter, with no configure
line.

    python examples/python/support_distill.py          # tiny profile: a few minutes on a laptop CPU
    python examples/python/support_distill.py load     # a fresh process: load out/support/support-small.json

The student learns the prompts of DSPy's configured adapter (ChatAdapter here: none is configured), its router's
label is always one of the four, and the report (out/support/report.md) compares each step with the teacher's.
docs/python-api.md walks through it; tests/test_distill.py runs the same steps.
"""

import sys
from typing import Literal

import dspy

from programs.distill import CriticDistill, PairwiseCritic

CATEGORIES = ("billing", "shipping", "bug", "account")
# tickets written for this project: 9 train, 3 test
TICKETS = [
    "I was charged twice for my subscription this month.",
    "My parcel was supposed to arrive on Monday and it is still not here.",
    "The app crashes every time I open the settings page.",
    "I forgot my password and the reset email never comes.",
    "Can I get a refund for the order I cancelled last week?",
    "The tracking number you sent me does not work.",
    "Clicking 'save' on my profile shows an error 500.",
    "I want to change the email address on my account.",
    "Why is there a fee on my invoice that I did not agree to?",
    "The box arrived damaged and two items are missing.",
    "The search bar returns no results even for products you sell.",
    "Please close my account and delete my data.",
]
SAVED = "out/support/support-small.json"


class Support(dspy.Module):
    def __init__(self):
        super().__init__()
        self.route = dspy.Predict(dspy.Signature(
            {"ticket": (str, dspy.InputField()), "category": (Literal[CATEGORIES], dspy.OutputField())},
            "Which team should handle this customer support ticket?"))
        self.reply = dspy.Predict(dspy.Signature(
            "ticket, category -> reply", "Write a short, polite one-sentence reply to the customer from that team."))

    def forward(self, ticket: str) -> dspy.Prediction:
        category = self.route(ticket=ticket).category
        return self.reply(ticket=ticket, category=category)


def examples(split: str) -> list[dspy.Example]:
    chosen = TICKETS[:9] if split == "train" else TICKETS[9:]
    return [dspy.Example(ticket=t).with_inputs("ticket") for t in chosen]


def distill(**config) -> CriticDistill:
    return CriticDistill(critic=PairwiseCritic("Choose the better reply: from the right team, polite and brief."),
                         objective="imitation", profile="tiny", store="support.duckdb", out="out/support",
                         config=config)


if __name__ == "__main__":
    if sys.argv[1:] == ["load"]:  # a fresh process: no adapter configured, nothing of the pipeline imported
        program = Support()
        program.load(SAVED, allow_unsafe_lm_state=True)
    else:
        program = distill().compile(Support(), teacher=Support(), trainset=examples("train"),
                                    valset=examples("test"))
        program.save(SAVED)
    for ticket in ("I was billed for a plan I never bought.", "My order has not shipped after ten days."):
        with dspy.context(trace=[]):
            answer = program(ticket=ticket)
            route = dspy.settings.trace[0][2].category
        print(f"{route:9} {answer.reply}")
