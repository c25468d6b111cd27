"""What every kind of source shares: its credentials and the permanent errors that name it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kubetrain.api.fetch import FetchSource, SourceKind
from kubetrain.trainer.runtime import TrainerError


@dataclass(frozen=True)
class Credentials:
    """A source's Secret as the kubelet mounts it, one file per key (``CREDENTIAL_KEYS``).

    Values are read only to hand them to a library, never logged or reported. Without a
    directory every key is absent and the libraries use the environment's defaults.
    """

    directory: Path | None

    @classmethod
    def of(cls, source: FetchSource) -> Credentials:
        return cls(Path(source.credentials_dir) if source.credentials_dir else None)

    def file(self, key: str) -> str | None:
        if self.directory is None or not (self.directory / key).is_file():
            return None
        return str(self.directory / key)

    def value(self, key: str) -> str | None:
        path = self.file(key)
        return Path(path).read_text().strip() if path else None


def not_found(source: FetchSource, detail: str) -> TrainerError:
    reason = "DatasetNotFound" if source.kind is SourceKind.DATASET else "ModelNotFound"
    return TrainerError(f"{source.uri}: {detail}", reason=reason)


def access_denied(source: FetchSource) -> TrainerError:
    return TrainerError(
        f"{source.uri}: access denied with {credentials_of(source)}", reason="AccessDenied"
    )


def credentials_of(source: FetchSource) -> str:
    """Whose credentials were used, for messages: the Secret's name, never a value."""
    if source.credentials_secret:
        return f"the credentials of Secret {source.credentials_secret}"
    return "the environment's default credentials"


def bad_uri(source: FetchSource, detail: str) -> TrainerError:
    return TrainerError(f"{source.name} URI {source.uri!r}: {detail}", reason="ConfigurationError")
