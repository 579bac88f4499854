"""What every command line of the toolkit shares."""

from __future__ import annotations


def quiet_libraries() -> None:
    """Our own progress bars tell the story; the libraries' bars and deprecation chatter would drown them."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="transformers|trl|peft|torch")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    for name in ("LiteLLM", "litellm", "httpx", "dspy"):
        logging.getLogger(name).setLevel(logging.ERROR)
