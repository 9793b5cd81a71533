"""Realistic sample callbacks for every shipped provider profile, as the providers'
documents describe them. ``bridge send-test`` and ``bridge preview`` use them; so do the
tests. Files: ``bridge/samples/<profile>/<name>.json``."""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).parent

# What send-test sends when no sample is named: the most common event of each provider.
DEFAULTS = {
    "ratioready": "wall_art_completed",
    "zupertry": "job_completed",
    "posternity": "image_generation_completed",
    "upscale": "batch_complete",
    "listingrva": "image_generated",
}


def names(profile: str) -> list[str]:
    """The sample names for a profile, sorted; empty if it ships none."""
    folder = SAMPLE_DIR / profile
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def profiles() -> list[str]:
    return sorted(p.name for p in SAMPLE_DIR.iterdir() if p.is_dir() and names(p.name))


def path(profile: str, name: str | None = None) -> Path:
    """The sample file; raises LookupError with the available names if there is none."""
    available = names(profile)
    if not available:
        raise LookupError(f"there are no sample payloads for profile '{profile}'; "
                          "give one with --payload FILE")
    name = name or DEFAULTS.get(profile) or available[0]
    if name not in available:
        raise LookupError(f"no sample '{name}' for {profile}; samples: {', '.join(available)}")
    return SAMPLE_DIR / profile / f"{name}.json"


def read(profile: str, name: str | None = None) -> bytes:
    return path(profile, name).read_bytes()
