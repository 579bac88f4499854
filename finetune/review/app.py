"""The review app (Starlette + Jinja2): four pages over one store, a per-start token on every request.

A request must carry the token: `?token=...` (the URL the command prints) or the cookie the first such request sets
(HttpOnly, SameSite=Strict, so no other site's page can send it); anything else is 403. Every read goes through the
store's read-only connection; the only write is a rating (`rating.py`).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import parse_qs

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from finetune.rate import TEACHER
from finetune.review import pages, plots
from finetune.review.rating import Sessions
from store import Store
from store.errors import UserError

COOKIE = "review_token"
TEMPLATES = Path(__file__).parent / "templates"


class TokenMiddleware(BaseHTTPMiddleware):
    """403 unless the request carries this start's token (query or cookie); a good query token becomes a cookie."""

    def __init__(self, app, token: str):
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next):
        given = request.query_params.get("token") or request.cookies.get(COOKIE) or ""
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            return PlainTextResponse("403: this page needs the token in the URL the review command printed",
                                     status_code=403)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
        return response


def create_app(db: str, token: str) -> Starlette:
    """The app over the store at `db`, answering only requests with `token`."""
    store = Store(db, create=False)
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]))
    sessions = Sessions()

    def render(name: str, **context) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(db=db, **context))

    def runs(request: Request) -> Response:
        all_runs = pages.runs(store)
        chosen = [r for r in request.query_params.getlist("run") if r] or [r["run_id"] for r in all_runs[:2]]
        return render("runs.html", page="runs", runs=all_runs, chosen=chosen,
                      details=[d for d in (pages.run_detail(store, r) for r in chosen[:2]) if d])

    def outputs(request: Request) -> Response:
        available = pages.splits(store)
        split = request.query_params.get("split") or ("test" if "test" in available else next(iter(available), ""))
        chosen = request.query_params.get("filter", "all")
        if chosen not in pages.FILTERS:
            chosen = "all"
        return render("outputs.html", page="outputs", splits=available, split=split, filter=chosen,
                      filters=pages.FILTERS, **pages.outputs(store, split, chosen))

    def training(request: Request) -> Response:
        all_sets = pages.datasets(store)
        chosen = request.query_params.get("dataset") or (all_sets[-1]["dataset_id"] if all_sets else None)
        return render("training.html", page="training", datasets=all_sets, chosen=chosen,
                      rows=pages.dataset_rows(store, chosen) if chosen else None)

    def curves(request: Request) -> Response:
        found = pages.training_history(store, request.path_params["training_id"])
        if found is None:
            return PlainTextResponse("no such training run", status_code=404)
        return Response(plots.curves_png(*found), media_type="image/png")

    def rate(request: Request) -> Response:
        systems = [TEACHER] + [s["producer"] for s in pages.students(store)]
        names = {TEACHER: "teacher"} | {s["producer"]: s["name"] for s in pages.students(store)}
        session = sessions.get(request.query_params.get("session", ""))
        pair = session.next_pair() if session else None
        return render("rate.html", page="rate", systems=systems, names=names, splits=pages.splits(store),
                      session=request.query_params.get("session") if session else None, pair=pair,
                      rated=len(session.done) if session else 0, total=len(session.rows) if session else 0,
                      rater=session.rater if session else "", error=request.query_params.get("error"))

    async def rate_start(request: Request) -> Response:
        form = {k: v[-1] for k, v in parse_qs((await request.body()).decode()).items()}  # no multipart needed
        try:
            sid = await run_in_threadpool(sessions.start, store, rater=form.get("rater", ""), x=form.get("x", ""),
                                          y=form.get("y", ""), split=form.get("split", ""))
        except UserError as e:
            return RedirectResponse(request.url_for("rate").include_query_params(error=str(e)), status_code=303)
        return RedirectResponse(request.url_for("rate").include_query_params(session=sid), status_code=303)

    async def rate_pair(request: Request) -> Response:
        body = await request.json()
        try:
            summary = await run_in_threadpool(sessions.rate, store, str(body.get("session", "")),
                                              str(body.get("pair_id", "")), str(body.get("choice", "")))
        except UserError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        return JSONResponse({"ok": True, "judge": summary["judge"]})

    routes = [Route("/", runs, name="runs"), Route("/outputs", outputs, name="outputs"),
              Route("/training", training, name="training"),
              Route("/training/{training_id}.png", curves, name="curves"),
              Route("/rate", rate, name="rate"), Route("/rate/start", rate_start, methods=["POST"]),
              Route("/rate/pair", rate_pair, methods=["POST"])]
    return Starlette(routes=routes, middleware=[Middleware(TokenMiddleware, token=token)])
