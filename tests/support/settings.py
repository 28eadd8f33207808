"""Where the repository is, and its config.toml with a test database: what most tests start from."""

from __future__ import annotations

from pathlib import Path

from bot.config import Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def settings_for(database: Path, **generation) -> Settings:
    """The repository's config.toml, with a test database and (optionally) generation overrides.
    Per-user cooldowns are off: most tests send one person's messages faster than a person
    would; the cooldown tests switch them on."""
    settings = load_settings(REPO_ROOT / "config.toml", environ={
        "BOT_DATABASE_URL": f"sqlite+aiosqlite:///{database}", "BOT_LIMITS_USER_MESSAGES_PER_MINUTE": "0"})
    return settings.with_overrides("generation", **generation) if generation else settings
