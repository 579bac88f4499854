"""The Rate page's blind pairs: planned in memory by `finetune.rate.plan_export`, each key press stored by
`finetune.rate.store_ratings`, so a page rating is the same `judgments` + `verdicts` rows of `rater:NAME` that a
ratings file's import writes (and the report, the win rates and the critic audit read it like any judge).

The store is written only when a pair is rated: that pair's key row (`blind_pairs`, as an export writes it) and the
rating, each insert in its own short write connection (`Store.insert`), so a pipeline writing the same file waits
at most for those inserts, and a rating waits for the pipeline's flush (retrying up to the store's lock timeout).
"""

from __future__ import annotations

import random
import secrets
import threading
from dataclasses import dataclass, field

from finetune.rate import CHOICES, Rating, RatingError, plan_export, store_ratings
from store import Store

KEYS = {"a": "a", "b": "b", "t": "tie", "tie": "tie"}


@dataclass
class Session:
    rater: str
    rows: list[dict]  # what the browser sees: pair_id, instruction, input, A, B
    key: dict[str, dict]  # pair_id -> its blind_pairs row: never sent to the browser
    done: set[str] = field(default_factory=set)

    def next_pair(self) -> dict | None:
        return next((r for r in self.rows if r["pair_id"] not in self.done), None)


class Sessions:
    """The raters' sessions of this server (in memory: a restart starts new ones; stored ratings stay)."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def start(self, store: Store, *, rater: str, x: str, y: str, split: str | None) -> str:
        """Blind pairs of x and y on `split`, sides and order drawn at random (a fresh seed per session), with the
        export's swapped repeats to measure the rater's consistency."""
        if not rater.strip():
            raise RatingError("give your name: ratings are stored as judgments of rater:NAME")
        plan = plan_export(store, x=x, y=y, split=split or None, seed=random.SystemRandom().getrandbits(32))
        sid = secrets.token_urlsafe(12)
        with self._lock:
            self._sessions[sid] = Session(rater.strip(), plan.rows, {k["pair_id"]: k for k in plan.key})
        return sid

    def get(self, sid: str) -> Session | None:
        return self._sessions.get(sid)

    def rate(self, store: Store, sid: str, pair_id: str, key: str) -> dict:
        """Store one rating (A, B or a tie) of a pair of the session: its key row, then the rating."""
        session = self.get(sid)
        if session is None or pair_id not in session.key:
            raise RatingError("unknown rating session or pair (the server restarted?): start again")
        choice = KEYS.get(key.strip().lower())
        if choice is None:
            raise RatingError(f"a rating is A, B or T (tie), got {key!r}")
        pair = session.key[pair_id]
        rows = [pair] + ([session.key[pair["repeat_of"]]] if pair["repeat_of"] in session.key else [])
        store.insert("blind_pairs", rows)  # INSERT OR IGNORE: a pair's key once, as an export writes it
        summary = store_ratings(store, [Rating(pair_id, CHOICES[choice], None, None, None, 0)],
                                rater=session.rater, where="review page")
        session.done.add(pair_id)
        return summary
