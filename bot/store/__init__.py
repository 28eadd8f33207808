"""The database: SQLAlchemy models, migrations on start, and the async repository."""

from .repository import Store, StoreError

__all__ = ["Store", "StoreError"]
