"""One function from a model spec string to a `dspy.LM`.

    openai/gpt-4o-mini, ollama_chat/qwen2.5, hosted_vllm/... -> LiteLLM / DSPy's own engines, unchanged
    local/<embedded name>                                   -> the bundled GGUF, in-process through llama.cpp
    local/<path to .gguf>                                    -> llama.cpp
    local/<path to a Hugging Face folder> or local/<hub id>  -> transformers

In-process models use DSPy 3.4's engine contract (`complete(Request) -> Response`), so DSPy's cache, retries,
callbacks and history work for them exactly as for a hosted model.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import dspy  # noqa: E402
from dspy.lm15 import Message, Request, Response, TextPart, TokenLogprob, TopLogprob, Usage  # noqa: E402

from programs import models  # noqa: E402
from programs.models import LOCAL_CONTEXT  # noqa: E402
from store.errors import UserError

LOCAL_PREFIX = "local/"
PROMPT_TOKENS = 256  # the critic's instruction, labels and chat template around the texts, with room to spare


class ModelSpecError(UserError):
    """A model spec that cannot be resolved: one line for the user."""


def _messages(request: Request) -> list[dict[str, str]]:
    """Chat messages for a local chat template (text parts only: local models here are text-only)."""
    out = []
    if request.system:
        system = request.system if isinstance(request.system, str) else "".join(getattr(p, "text", "") for p in request.system)
        out.append({"role": "system", "content": system})
    for message in request.messages:
        role = "system" if message.role == "developer" else message.role
        out.append({"role": role, "content": "".join(p.text for p in message.parts if isinstance(p, TextPart))})
    return out


def _fingerprint(messages: list[dict], config: Any) -> str:
    return hashlib.sha256(json.dumps([messages, repr(config)], sort_keys=True).encode()).hexdigest()


class _SeedSchedule:
    """DSPy asks an engine once per candidate with the same request (n > 1): give each its own seed, reproducibly."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()

    def next(self, key: str, base: int) -> int:
        with self._lock:
            k = self._seen.get(key, 0)
            self._seen[key] = k + 1
        return base + k


def _response(model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int,
              logprobs: list[TokenLogprob] | None) -> Response:
    return Response(
        id=None, model=model, message=Message.assistant(text),
        finish_reason="length" if finish == "length" else "stop",
        usage=Usage(input_tokens=prompt_tokens, output_tokens=completion_tokens),
        logprobs=tuple(logprobs) if logprobs else None,
    )


# ---------------------------------------------------------------------------------------------------------------
# llama.cpp (GGUF)
# ---------------------------------------------------------------------------------------------------------------

_LLAMAS: dict[tuple, Any] = {}
_LLAMAS_LOCK = threading.Lock()


def load_llama(path: str, *, n_ctx: int = LOCAL_CONTEXT, logits_all: bool = False, n_threads: int | None = None):
    """One llama.cpp instance per (file, context, logits) in the process, shared by every engine that asks."""
    key = (str(path), n_ctx, logits_all, n_threads)
    with _LLAMAS_LOCK:
        if key not in _LLAMAS:
            from llama_cpp import Llama

            llama = Llama(model_path=str(path), n_ctx=n_ctx, logits_all=logits_all, n_threads=n_threads,
                          n_batch=512, verbose=False, seed=0)
            _LLAMAS[key] = (llama, threading.Lock())
        return _LLAMAS[key]


class LlamaCppEngine:
    """DSPy engine over llama-cpp-python. Log-probabilities need `logits_all`, so a separate instance serves them."""

    def __init__(self, model_path: str, *, n_ctx: int = LOCAL_CONTEXT, n_threads: int | None = None, name: str | None = None,
                 reuse_prefix: bool = True):
        self.model_path = str(model_path)
        self.n_ctx = n_ctx
        # llama.cpp keeps the last prompt's evaluated state and skips the prefix a new greedy prompt shares with it
        # (the instruction and the input, across a pair's two orders); False evaluates every prompt from scratch
        self.reuse_prefix = reuse_prefix
        # llama-cpp-python's default is half the cores for generation; this process is the machine's main job.
        # CRITIC_DISTILL_LLAMA_THREADS lowers it where processes share the cores: llama.cpp's threads spin while
        # they wait for each other, so two processes that each take every core run many times slower, not 2x.
        self.n_threads = n_threads or int(os.environ.get("CRITIC_DISTILL_LLAMA_THREADS") or 0) or os.cpu_count() or 1
        self.name = name or Path(model_path).stem
        self._seeds = _SeedSchedule()

    def complete(self, request: Request) -> Response:
        cfg = request.config
        messages = _messages(request)
        want_logprobs = cfg.logprobs is not None
        llama, lock = load_llama(self.model_path, n_ctx=self.n_ctx, logits_all=want_logprobs, n_threads=self.n_threads)
        seed = self._seeds.next(_fingerprint(messages, cfg), cfg.seed if cfg.seed is not None else 0)
        kwargs: dict[str, Any] = dict(
            messages=messages,
            temperature=cfg.temperature if cfg.temperature is not None else 0.0,
            top_p=cfg.top_p if cfg.top_p is not None else 1.0,
            top_k=cfg.top_k if cfg.top_k is not None else 0,
            min_p=0.0,
            max_tokens=cfg.max_tokens or 512,
            stop=list(cfg.stop) or None,
            seed=seed,
            repeat_penalty=1.0,
        )
        with lock:
            if kwargs["temperature"] > 0 or not self.reuse_prefix:
                # A prompt found in the KV cache is re-evaluated in a different batch split, which moves the logits
                # slightly and so the sample: evaluate it from scratch so that a seed always gives the same text.
                llama.reset()
            out = llama.create_chat_completion(**kwargs)
            choice = out["choices"][0]
            usage = out.get("usage") or {}
            logprobs = None
            if want_logprobs:
                logprobs = _llama_logprobs(llama, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0),
                                           k=max(1, min(cfg.logprobs or 1, 20)), greedy=kwargs["temperature"] == 0)
        return _response(request.model, choice["message"].get("content") or "", choice.get("finish_reason") or "stop",
                         usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0), logprobs)

    def dump_state(self) -> dict:
        return {"model_path": self.model_path, "n_ctx": self.n_ctx, "n_threads": self.n_threads, "name": self.name,
                "reuse_prefix": self.reuse_prefix}

    @classmethod
    def load_state(cls, state: dict) -> LlamaCppEngine:
        return cls(**state)


def _llama_logprobs(llama, n_prompt: int, n_completion: int, *, k: int, greedy: bool) -> list[TokenLogprob] | None:
    """Top-k log-probabilities of the generated tokens, read from the logits llama.cpp just kept.

    llama-cpp-python's own `logprobs=` path log-softmaxes every prompt row and sorts the whole vocabulary in Python
    for each generated token: with Qwen's 152k-token vocabulary that made one critic judgment 5x slower than the
    generation itself. A partial sort in numpy gives the same numbers.
    """
    import numpy as np

    if n_prompt < 1 or n_completion < 1:
        return None
    ids = [int(t) for t in llama.input_ids[n_prompt:llama.n_tokens]]  # generated tokens that were evaluated
    rows = np.asarray(llama.scores[n_prompt - 1:n_prompt - 1 + n_completion], dtype=np.float64)
    if len(ids) < len(rows) and greedy:
        ids += [int(np.argmax(rows[len(ids)]))]  # the last token is sampled but never evaluated: greedy took the max
    ids = ids[:n_completion]
    out: list[TokenLogprob] = []
    for i, token_id in enumerate(ids):
        row = rows[i]
        logp = row - (row.max() + np.log(np.exp(row - row.max()).sum()))
        top = np.argpartition(-logp, k - 1)[:k]
        top = top[np.argsort(-logp[top])]
        text = lambda t: llama.detokenize([int(t)], prev_tokens=ids[:i]).decode("utf-8", errors="ignore")  # noqa: E731
        out.append(TokenLogprob(token=text(token_id), logprob=float(logp[token_id]),
                                top=tuple(TopLogprob(token=text(t), logprob=float(logp[t])) for t in top)))
    return out or None


# ---------------------------------------------------------------------------------------------------------------
# transformers (Hugging Face folders, the distilled student, hub ids when online)
# ---------------------------------------------------------------------------------------------------------------


def _decode(tok: Any, new: list[int], cfg: Any) -> tuple[list[int], str]:
    """Generated token ids as the answer: without padding and end-of-sequence tokens, cut at the request's stops."""
    ids = [t for t in new if t not in (tok.pad_token_id, tok.eos_token_id)]
    text = tok.decode(ids, skip_special_tokens=True)
    for stop in cfg.stop:
        text = text.split(stop)[0]
    return ids, text.strip()


class _Pending:
    """A greedy request waiting to be generated with others (`TransformersEngine`)."""

    def __init__(self, request: Request):
        self.request = request
        self.key = (request.config.max_tokens, tuple(request.config.stop))  # what one batch must share
        self.response: Response | None = None
        self.error: BaseException | None = None
        self.done = False


class TransformersEngine:
    """DSPy engine over a transformers causal or seq2seq model (chat template when the tokenizer has one).

    Greedy requests without log-probabilities (the student's outputs in evaluation) are batched: requests that
    arrive from several threads while a generation runs wait and go together, up to `batch_size`, through
    `programs.student_lm.generate_ids` (the batched path of `student_lm.generate`). Each stays its own DSPy call
    (cached, recorded). So `imap(..., threads=batch_size)` or DSPy's own threads batch a local student; one thread
    gets one at a time. Sampled requests and those that want log-probabilities go one at a time, seeded as before.
    """

    def __init__(self, model_path: str, *, name: str | None = None, batch_size: int = 8, typed: bool = True):
        self.model_path = str(model_path)
        self.name = name or Path(model_path).name
        self.batch_size = batch_size
        self.typed = typed  # a `Literal` output is always one of its values (programs/typed_outputs.py)
        self._loaded = None
        self._lock = threading.Lock()  # one generation at a time
        self._queue: list[_Pending] = []
        self._arrived = threading.Condition()
        self._seeds = _SeedSchedule()
        self._adapter_checked = False

    def _load(self):
        if self._loaded is None:
            from programs.student_lm import load_student

            self._loaded = load_student(self.model_path)
        return self._loaded

    def _check_adapter(self, request: Request) -> None:
        """A distilled student learned one adapter's messages (`Task.student_adapter`, in its train_result.json): say
        so, once, when another adapter's reach it, since its answers then come from prompts it never saw."""
        if self._adapter_checked:
            return
        self._adapter_checked = True
        folder = Path(self.model_path).resolve()  # `<out>/student` links to the best student's folder
        marker = next((d / "train_result.json" for d in (folder, folder.parent) if (d / "train_result.json").exists()),
                      None)
        if marker is None:
            return  # not trained by critic-distill: any adapter is the user's choice
        try:
            learned = json.loads(marker.read_text()).get("config", {}).get("adapter", "labeled")
        except (OSError, ValueError):
            return
        used = "chat" if any("[[ ## " in m["content"] for m in _messages(request)) else "labeled"
        if used != learned:
            import warnings

            fix = ("dspy.configure(adapter=LabeledAdapter()) (programs.adapter)" if learned == "labeled"
                   else "DSPy's ChatAdapter (the default: configure no other adapter)")
            warnings.warn(f"local/{self.model_path} was trained on {learned} prompts, but this call sends {used} "
                          f"ones: run it under {fix}", UserWarning, stacklevel=2)

    def _snap(self, model, tok, messages: list[dict], prompt: str, text: str) -> str:
        """The answer with its `Literal` fields decoded under their type (`programs.typed_outputs.snap`)."""
        if not self.typed:
            return text
        from programs.student_lm import typed_answer

        return typed_answer(model, tok, messages, prompt, text)

    def complete(self, request: Request) -> Response:
        self._check_adapter(request)
        cfg = request.config
        if not cfg.temperature and cfg.logprobs is None and self.batch_size > 1:
            return self._complete_batched(request)
        with self._lock:
            return self._complete_one(request)

    # -- greedy, batched ---------------------------------------------------------------------------------------------

    GATHER_S = 0.05  # how long a batch waits for one more request to arrive (a generation takes seconds)

    def _complete_batched(self, request: Request) -> Response:
        pending = _Pending(request)
        with self._arrived:
            self._queue.append(pending)
            self._arrived.notify_all()
        with self._lock:
            if not pending.done:  # nobody took it into their batch: lead one
                self._generate(self._gather(pending))
        if pending.error is not None:
            raise pending.error
        assert pending.response is not None
        return pending.response

    def _gather(self, lead: _Pending) -> list[_Pending]:
        """`lead` and the queued requests that can share its batch, once the batch is full or arrivals pause."""
        with self._arrived:
            while True:
                mates = [p for p in self._queue if p.key == lead.key]
                if len(mates) >= self.batch_size or not self._arrived.wait(self.GATHER_S):
                    break
            group = [lead] + [p for p in mates if p is not lead][: self.batch_size - 1]
            self._queue = [p for p in self._queue if p not in group]
        return group

    def _generate(self, group: list[_Pending]) -> None:
        from programs.student_lm import generate_ids, is_seq2seq, render_prompt

        try:
            model, tok = self._load()
            cfg = group[0].request.config
            messages = [_messages(p.request) for p in group]
            prompts = [render_prompt(tok, m, seq2seq=is_seq2seq(model)) for m in messages]
            out = generate_ids(model, tok, prompts, batch_size=len(group), max_new_tokens=cfg.max_tokens or 256)
            for p, m, prompt, (prompt_tokens, rows) in zip(group, messages, prompts, out):
                ids, text = _decode(tok, rows[0], cfg)
                text = self._snap(model, tok, m, prompt, text)
                finish = "length" if len(rows[0]) >= (cfg.max_tokens or 256) else "stop"
                p.response = _response(p.request.model, text, finish, prompt_tokens, len(ids), None)
        except BaseException as e:  # noqa: BLE001 - every request of the batch gets the failure
            for p in group:
                p.error = e
            raise
        finally:
            for p in group:
                p.done = True

    # -- one at a time (sampling, log-probabilities) -------------------------------------------------------------------

    def _complete_one(self, request: Request) -> Response:
        import torch
        from programs.student_lm import is_seq2seq, render_prompt, stop_ids

        cfg = request.config
        messages = _messages(request)
        model, tok = self._load()
        prompt = render_prompt(tok, messages, seq2seq=is_seq2seq(model))
        enc = tok(prompt, return_tensors="pt", add_special_tokens=model.config.is_encoder_decoder)
        temperature = cfg.temperature if cfg.temperature is not None else 0.0
        seed = self._seeds.next(_fingerprint(messages, cfg), cfg.seed if cfg.seed is not None else 0)
        torch.manual_seed(seed)
        gen = dict(max_new_tokens=cfg.max_tokens or 256, do_sample=temperature > 0, return_dict_in_generate=True,
                   output_scores=cfg.logprobs is not None, pad_token_id=tok.pad_token_id or tok.eos_token_id)
        if (stops := stop_ids(model, tok)) is not None:  # the stop tokens of the batched path too
            gen["eos_token_id"] = stops
        if temperature > 0:
            gen.update(temperature=temperature, top_p=cfg.top_p if cfg.top_p is not None else 1.0)
        with torch.inference_mode():
            out = model.generate(**enc, **gen)
        # Generated tokens only; scores[i] is the distribution that produced new[i].
        start = 1 if model.config.is_encoder_decoder else enc["input_ids"].shape[1]
        new = [int(t) for t in out.sequences[0, start:]]
        ids, text = _decode(tok, new, cfg)
        if cfg.logprobs is None:  # log-probabilities score what was generated: left as it was
            text = self._snap(model, tok, messages, prompt, text)
        logprobs = None
        if cfg.logprobs is not None and out.scores:
            k = max(1, min(cfg.logprobs or 1, 20))
            logprobs = []
            for scores, chosen in zip(out.scores, new):
                if chosen in (tok.pad_token_id, tok.eos_token_id):
                    break
                lp = torch.log_softmax(scores[0].float(), dim=-1)
                top = torch.topk(lp, k)
                logprobs.append(TokenLogprob(token=tok.decode([chosen]), logprob=float(lp[chosen]),
                                             top=tuple(TopLogprob(token=tok.decode([int(i)]), logprob=float(v))
                                                       for v, i in zip(top.values, top.indices))))
        finish = "length" if len(new) >= gen["max_new_tokens"] else "stop"
        return _response(request.model, text, finish, int(enc["input_ids"].shape[1]), len(ids), logprobs)

    def dump_state(self) -> dict:
        return {"model_path": self.model_path, "name": self.name, "batch_size": self.batch_size, "typed": self.typed}

    @classmethod
    def load_state(cls, state: dict) -> TransformersEngine:
        return cls(**state)


# ---------------------------------------------------------------------------------------------------------------


def local_engine(target: str):
    """The engine for what follows `local/`: an embedded name, a GGUF file, a model folder, or a hub id."""
    if models.is_embedded(target):
        embedded = models.get(target)
        if embedded.is_folder:
            raise ModelSpecError(f"{embedded.name} is an embedding model, not a language model")
        path = models.path(target)
        if embedded.role == "student":
            return TransformersEngine(embedded.name, name=embedded.name)
        return LlamaCppEngine(str(path), name=embedded.name)
    p = Path(target).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelSpecError(f"no GGUF file at {p}")
        return LlamaCppEngine(str(p))
    if p.is_dir():
        if not any((p / f).exists() for f in ("config.json", "adapter_config.json")):
            raise ModelSpecError(f"{p} is not a Hugging Face model folder (no config.json or adapter_config.json)")
        return TransformersEngine(str(p))
    if p.exists() or target.startswith((".", "/", "~")) or target.count("/") != 1:
        known = ", ".join(models.REGISTRY)
        raise ModelSpecError(f"unknown local model {target!r}: not an embedded model ({known}), GGUF file or model folder")
    return TransformersEngine(target)  # a hub id: needs the network or the HF cache


def resolve_lm(spec: str, *, temperature: float | None = None, max_tokens: int | None = None,
               top_p: float | None = None, seed: int | None = None, n: int | None = None,
               cache: bool = True, num_retries: int = 3, **kwargs: Any) -> dspy.LM:
    """A `dspy.LM` for a model spec; LiteLLM strings pass through unchanged."""
    if not spec or not isinstance(spec, str):
        raise ModelSpecError("empty model spec")
    settings = {k: v for k, v in dict(top_p=top_p, seed=seed, n=n).items() if v is not None}
    if spec.startswith(LOCAL_PREFIX):
        target = spec[len(LOCAL_PREFIX):]
        if not target:
            raise ModelSpecError("'local/' needs a model name or path after it")
        try:
            engine = local_engine(target)
        except models.ModelError as e:
            raise ModelSpecError(str(e)) from e
        return dspy.LM(spec, engine=engine, temperature=temperature, max_tokens=max_tokens, cache=cache,
                       num_retries=num_retries, **settings, **kwargs)
    if "/" not in spec:
        raise ModelSpecError(f"model spec {spec!r} needs a provider prefix (e.g. openai/{spec}) or local/<name>")
    return dspy.LM(spec, temperature=temperature, max_tokens=max_tokens, cache=cache, num_retries=num_retries,
                   **settings, **kwargs)


# OpenAI-compatible servers LiteLLM reaches by a base URL (vLLM, SGLang, llama.cpp's server, a LiteLLM proxy), and
# the environment variables that give it
_SERVER_BASES = {"openai": ("OPENAI_BASE_URL", "OPENAI_API_BASE"), "hosted_vllm": ("HOSTED_VLLM_API_BASE",),
                 "litellm_proxy": ("LITELLM_PROXY_API_BASE",)}


def _serves(lm: dspy.LM, timeout: float) -> bool:
    """True when the OpenAI-compatible server at the LM's configured base URL lists its model (GET /models): no
    generation and no cost, so a rerun that the store answers sends the server no completion request at all."""
    provider, _, name = lm.model.partition("/")
    envs = _SERVER_BASES.get(provider, ())
    base = lm.kwargs.get("api_base") or lm.kwargs.get("base_url") or next(
        (os.environ[e] for e in envs if os.environ.get(e)), None)
    if not envs or not base:
        return False
    key = lm.kwargs.get("api_key") or os.environ.get(f"{provider.upper()}_API_KEY")
    import httpx

    try:
        r = httpx.get(base.rstrip("/") + "/models", headers={"Authorization": f"Bearer {key}"} if key else {},
                      timeout=timeout)
        r.raise_for_status()
        return name in {m.get("id") for m in r.json().get("data") or []}
    except Exception:  # noqa: BLE001 - no listing: the completion probe below decides
        return False


def check_reachable(lm: dspy.LM, timeout: float = 20.0) -> None:
    """Fail fast with one line when a hosted model cannot be reached (local models load lazily instead).

    A server at a configured base URL that lists the model is reachable; anything else gets a 1-token completion."""
    if lm.model.startswith(LOCAL_PREFIX) or _serves(lm, min(timeout, 5.0)):
        return
    probe = lm.copy(num_retries=0, max_tokens=1, cache=False)
    start = time.monotonic()
    try:
        probe("ping")
    except Exception as e:  # noqa: BLE001 - any failure here means "not usable", reported in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelSpecError(f"cannot reach {lm.model} ({time.monotonic() - start:.0f}s): {first[:300]}") from e


def check_hosted(*specs: str | None) -> None:
    """Every hosted model's API key, then its answer, before any local model is pulled or loaded: a missing key is
    one line at once, not after a 491 MB download. Keys are checked first (no network), by LiteLLM's own table of
    what each provider needs; a provider that can work without one (a base URL, cloud credentials) is left to the
    reachability probe."""
    hosted = [s for s in dict.fromkeys(specs) if s and isinstance(s, str) and not s.startswith(LOCAL_PREFIX)]
    lms = [resolve_lm(spec, cache=False) for spec in hosted]  # a spec without a provider fails here, with its line
    for spec in hosted:
        missing = _missing_keys(spec)
        if missing:
            raise ModelSpecError(f"no API key for {spec}: set {' or '.join(missing)} (or use a local/ model)")
    for lm in lms:
        check_reachable(lm)


def _missing_keys(spec: str) -> list[str]:
    """The API-key variables LiteLLM says `spec` needs and the environment lacks; [] when it needs something else too
    (a base URL, a region) or cannot tell."""
    import litellm

    litellm.suppress_debug_info = True  # an unknown provider prints a banner otherwise; the probe reports it
    try:
        env = litellm.validate_environment(model=spec)
    except Exception:  # noqa: BLE001 - LiteLLM cannot tell: the probe will
        return []
    missing = list(env.get("missing_keys") or [])
    if env.get("keys_in_environment") or not missing or not all(k.endswith("_API_KEY") for k in missing):
        return []
    return missing


def check_context(texts: list[str], specs: list[str | None], *, answer_tokens: int, judged_tokens: int) -> None:
    """Refuse, in one line and before any model loads, an input that cannot fit a local model's context beside the
    critic's prompt: the instruction, two candidates of up to `judged_tokens` each and an answer of `answer_tokens`.

    Counted in words, not tokens: the tokenizer would need the model file, but the byte-level BPE tokenizers of the
    embedded models (Qwen2.5, SmolLM2) never join two words into one token, so an input's word count is a lower
    bound on its tokens. An input refused here surely does not fit (no false refusal); one just under the bound may
    still fail its calls, which are then recorded as errors. Hosted models' contexts are far larger and not
    checked."""
    if not any(s and s.startswith(LOCAL_PREFIX) for s in specs):
        return
    room = LOCAL_CONTEXT - PROMPT_TOKENS - 2 * judged_tokens - answer_tokens
    for text in texts:
        words = len(text.split())
        if words > room:
            from programs.inputs import InputError

            raise InputError(f"the input {' '.join(text.split()[:8])!r}... has {words} words, more than a local "
                             f"model's {LOCAL_CONTEXT}-token context holds beside the critic's prompt (at most {room}"
                             " words): shorten it, or use hosted models")
