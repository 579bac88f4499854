"""The built-in tasks: humor paraphrase, the paper's task, and plain -> formal rewriting (`--task humor|formal`)."""

from __future__ import annotations

from pathlib import Path

from programs.tasks import Task

DATA = Path(__file__).parent / "data"

HUMOR = Task(
    name="humor",
    teacher_instruction=(
        "Generate {n} creative and humorous paraphrases with the exact same meaning as the input text. "
        "Format the paraphrases as a list numbered as {numbered} and write nothing else."
    ),
    critic_instruction=(
        "Choose the better paraphrase, based on how humorous and human-like it sounds, "
        "while staying true to the input text."
    ),
    critic_rubrics=(
        "Which paraphrase is funnier and more natural, while saying the same thing as the input text?",
        "Pick the paraphrase a person would enjoy more: witty and fluent, with the meaning of the input text kept.",
    ),
    student_instruction="Rewrite the sentence as a humorous paraphrase with the same meaning.",
    # the 1.5B critic is blind to lost meaning and padding (docs/critic.md): on the dev split an independent rater
    # preferred critic-curated imitation behind a meaning floor to imitation 76.9% of decided pairs, and DPO 27.6%
    # (docs/results/humor-guards). On formal, where the critic can judge, DPO unguarded stays the default.
    defaults=(("objective", "curated"), ("meaning_floor", 0.75), ("length_control", True)),
    input_desc="a literal sentence",
    output_desc="a humorous paraphrase of the text",
    bundled_inputs=DATA / "humor_inputs.jsonl",
    ood_inputs=DATA / "ood_inputs.jsonl",
    teacher_demos=({
        "text": "Suddenly a big gust of wind came and blew my dress up around my ears!",
        "outputs": ["Oops! A strong breeze came and gave me an impromptu Marilyn Monroe moment.",  # the paper's example
                    "The wind decided my dress looked better as a scarf, right up around my ears!",
                    "A sudden gust turned my dress into a parachute, and I very nearly took off."],
    },),
)

FORMAL = Task(
    name="formal",
    teacher_instruction=(
        "Rewrite the input text in {n} different formal and polished ways with the exact same meaning. "
        "Format the rewrites as a list numbered as {numbered} and write nothing else."
    ),
    critic_instruction=(
        "Choose the better rewrite, based on how formal and polished it sounds, "
        "while keeping the meaning of the input text."
    ),
    critic_rubrics=(
        "Which rewrite is more formal and polished, while saying the same thing as the input text?",
        "Pick the rewrite that would suit a formal letter best, with the meaning of the input text kept.",
    ),
    student_instruction="Rewrite the sentence in a formal, polished style with the same meaning.",
    input_desc="a casual, informal sentence",
    output_desc="a formal rewrite of the text",
    bundled_inputs=DATA / "formal_inputs.jsonl",
    ood_inputs=DATA / "formal_ood_inputs.jsonl",
    teacher_demos=({
        "text": "hey, can't make it tonight, something came up at work, sorry!!",
        "outputs": ["I regret that I will be unable to attend this evening, as a matter has arisen at work.",
                    "Please accept my apologies; an unexpected work commitment prevents me from attending tonight.",
                    "Unfortunately, something has come up at work, so I will not be able to join you this evening."],
    },),
)

TASKS: dict[str, Task] = {HUMOR.name: HUMOR, FORMAL.name: FORMAL}
