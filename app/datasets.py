"""Reading `datasets.toml` into the dataset registry, with errors that name the fix."""

from __future__ import annotations

import tomllib

from pydantic import ValidationError

from app.errors import ConfigError
from app.settings import Settings
from models.datasets import DatasetRegistry


def load_registry(settings: Settings) -> DatasetRegistry:
    """The built-in datasets plus those declared in DATASETS_FILE (when it exists)."""
    path = settings.datasets_file
    data: dict[str, object] = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}", hint="Fix the file or remove it") from None
    try:
        return DatasetRegistry.from_toml(data)
    except (ValidationError, ValueError) as exc:
        raise ConfigError(
            f"{path} declares an invalid dataset: {exc}",
            hint="See the README section 'Datasets' for the format",
        ) from None
