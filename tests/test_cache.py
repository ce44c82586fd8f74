"""One cache folder: every cached thing (GGUF conversions, fetched models, content hashes, the demo's world) lives
under `core.cache.cache_root()`, which follows SEAL_TT_CACHE."""

from pathlib import Path


def test_every_cache_user_follows_seal_tt_cache(monkeypatch, tmp_path):
    from core import cache, fetch, gguf, hashing

    monkeypatch.delenv("SEAL_TT_CACHE", raising=False)
    assert cache.cache_root() == Path.home() / ".cache" / "seal-tt"
    monkeypatch.setenv("SEAL_TT_CACHE", str(tmp_path))
    assert cache.cache_root() == gguf.cache_root() == tmp_path
    assert fetch.model_dir("m") == tmp_path / "models" / "m"
    assert hashing._index() == tmp_path / "hashes.json"
    (tmp_path / "w.txt").write_text("x")
    hashing.file_sha256(tmp_path / "w.txt")
    assert (tmp_path / "hashes.json").is_file()
