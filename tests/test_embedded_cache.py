"""Where the embedded model's converted copy lives: named after the GGUF file's content, not
its modification time, and the copies of other contents removed. Small stand-in files only:
nothing here converts the real model."""

from __future__ import annotations

import os
from pathlib import Path

from bot.llm import embedded
from bot.llm.embedded import PREFIX, content_key, remove_stale


def fake_gguf(tmp_path: Path, content: bytes = b"GGUF" + bytes(range(256)) * 64) -> Path:
    path = tmp_path / "site-packages" / "model.gguf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def converted(root: Path, name: str) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def test_the_key_follows_the_content_not_the_modification_time(tmp_path):
    root, source = tmp_path / "cache", fake_gguf(tmp_path)
    key = content_key(source, root)
    assert len(key) == 16 and (root / embedded.DIGESTS_FILE).exists()
    os.utime(source, (1_000_000_000, 1_000_000_000))  # a fresh install: same bytes, another mtime
    assert content_key(source, root) == key
    assert content_key(source, tmp_path / "another-cache") == key  # computed afresh, same answer

    source.write_bytes(b"GGUF other content")
    assert content_key(source, root) != key


def test_the_remembered_digest_is_used_while_path_size_and_mtime_match(tmp_path):
    root, source = tmp_path / "cache", fake_gguf(tmp_path)
    key = content_key(source, root)
    stat = source.stat()
    # Same size and mtime, other bytes: the remembered digest answers without reading the file.
    source.write_bytes(bytes(reversed(source.read_bytes())))
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert content_key(source, root) == key
    (root / embedded.DIGESTS_FILE).write_text("not json")  # a broken cache only costs a rehash
    assert content_key(source, root) != key


def test_stale_copies_are_removed_and_the_current_one_kept(tmp_path):
    root = tmp_path / "cache"
    current = converted(root, PREFIX + "0123456789abcdef")
    old_key = converted(root, PREFIX + "fedcba9876543210")
    old_naming = converted(root, PREFIX + "98362432-1796061207")
    staging = converted(root, PREFIX + "fedcba9876543210.k3x_9a")  # another process's conversion under way
    unfinished = root / (PREFIX + "aaaaaaaaaaaaaaaa")  # no config.json: not a complete copy
    unfinished.mkdir()
    other = converted(root, "something-else")

    assert sorted(remove_stale(root, keep=current)) == sorted([old_key, old_naming])
    assert sorted(p.name for p in root.iterdir()) == sorted(
        p.name for p in (current, staging, unfinished, other))
    assert (current / "model.safetensors").read_bytes() == b"weights"
    assert remove_stale(tmp_path / "missing", keep=current) == []


def test_a_conversion_removes_the_stale_copies_and_an_old_named_one_is_adopted(tmp_path, monkeypatch):
    root, source = tmp_path / "cache", fake_gguf(tmp_path)
    monkeypatch.setenv("BOT_CACHE_DIR", str(root))
    monkeypatch.setattr(embedded, "gguf_path", lambda: source)
    conversions = []

    def fake_convert(src: Path, target: Path) -> None:
        conversions.append(target)
        converted(target.parent, target.name)

    monkeypatch.setattr(embedded, "_convert", fake_convert)
    stale = converted(root, PREFIX + "fedcba9876543210")
    target = embedded.converted_model_dir()
    assert conversions == [target] and target.name == PREFIX + content_key(source, root)
    assert not stale.exists() and (target / "config.json").exists()
    assert embedded.converted_model_dir() == target and len(conversions) == 1  # found, not converted again

    # A copy named the old way (size and mtime) from this same file is renamed, not converted again.
    stat = source.stat()
    legacy = converted(root, f"{PREFIX}{stat.st_size}-{int(stat.st_mtime)}")
    source.write_bytes(source.read_bytes())  # same content: the key stays
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    target.rename(root / "elsewhere")
    assert embedded.converted_model_dir() == target and len(conversions) == 1
    assert not legacy.exists() and (target / "config.json").exists()


def test_a_start_with_the_copy_in_place_removes_copies_named_the_old_way_only(tmp_path, monkeypatch):
    """Another virtual environment's install converted under the old naming (another mtime):
    never used again, half a gigabyte each. A copy of another content (another package version,
    maybe another environment's) stays."""
    root, source = tmp_path / "cache", fake_gguf(tmp_path)
    monkeypatch.setenv("BOT_CACHE_DIR", str(root))
    monkeypatch.setattr(embedded, "gguf_path", lambda: source)
    current = converted(root, PREFIX + content_key(source, root))
    old_naming = converted(root, PREFIX + "98362432-1796061207")
    other_content = converted(root, PREFIX + "fedcba9876543210")
    assert embedded.converted_model_dir() == current
    assert not old_naming.exists() and other_content.exists() and (current / "config.json").exists()
