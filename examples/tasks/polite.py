"""A task in Python: casual -> warm and polite, derived from the built-in `formal` task (same bundled inputs).

    python -m programs.compile --task examples/tasks/polite.py:POLITE --profile tiny

`dataclasses.replace` keeps every field not named here (the inputs, the field descriptions) and checks the result
like any task. See docs/tasks.md.
"""

from dataclasses import replace

from programs.builtin_tasks import FORMAL

POLITE = replace(
    FORMAL,
    name="polite",
    teacher_instruction=(
        "Rewrite the input text in {n} different warm and polite ways with the exact same meaning. "
        "Format the rewrites as a list numbered as {numbered} and write nothing else."
    ),
    critic_instruction=(
        "Choose the better rewrite, based on how warm and polite it sounds, "
        "while keeping the meaning of the input text."
    ),
    student_instruction="Rewrite the sentence so that it sounds warm and polite, with the same meaning.",
    output_desc="a polite rewrite of the text",
    teacher_demos=({
        "text": "move your car, you're blocking my driveway",
        "outputs": ["Excuse me, would you mind moving your car? It is blocking my driveway.",
                    "Sorry to bother you, but your car is blocking my driveway; could you move it, please?",
                    "Hi there! Could I ask you to move your car? It's in front of my driveway. Thank you!"],
    },),
)
