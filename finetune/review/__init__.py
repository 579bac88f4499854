"""The review page: a local web app over the store, read-only except for ratings (`python -m finetune.review`).

It lives in `finetune/` because its Rate page stores ratings through `finetune.rate` (one store format for a rater's
judgments, file or key press); `store/` stays the bottom layer and imports nothing above it (tests/test_layers.py).

- `pages.py`  the read queries behind each page (the store's read-only, locked-down connection)
- `plots.py`  loss and reward curves of a training run as PNG (matplotlib)
- `rating.py` blind pairs in memory for a rater, and each key press stored as `finetune.rate` stores a rating
- `app.py`    the Starlette app: routes, templates, the per-start token
- `__main__.py` the command: checks its flags and the store, prints the URL, serves on 127.0.0.1
"""
