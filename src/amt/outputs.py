"""Where a verb writes: never over a user's file without being asked.

A verb's output folder may be new, empty, or one the same verb wrote before (it holds the verb's
`marker` file, so a rerun replaces that verb's own outputs); any other non-empty folder is refused
unless the user passes --force, since a verb writing `<image>.json` into a folder of images would
replace, say, LabelMe annotations of the same names. A single output file (an export, a video) is
refused when it exists, unless --force. This module imports nothing from amt, so every layer
may use it.
"""

from __future__ import annotations

from pathlib import Path

SHOWN = 3  # files named in the message


class OutputExistsError(FileExistsError):
    """An output would replace something the verb did not write; the message names it and the way out."""


def claim_output_folder(folder: Path, marker: str | tuple[str, ...], force: bool, verb: str) -> None:
    """Refuse `folder` (see the module docstring) unless it is new, empty, holds `marker` (or one
    of several) or `force` is set; creates nothing."""
    folder = Path(folder)
    if force or not folder.exists():
        return
    if not folder.is_dir():
        raise OutputExistsError(f"{folder}: --out must be a folder, and this is a file")
    entries = sorted(p.name for p in folder.iterdir())
    markers = (marker,) if isinstance(marker, str) else marker
    if not entries or any(m in entries for m in markers):
        return
    shown = ", ".join(entries[:SHOWN]) + (", ..." if len(entries) > SHOWN else "")
    raise OutputExistsError(
        f"{folder}: holds files that `{verb}` did not write ({shown}); choose a new or empty --out, "
        "or pass --force to write into it (files of the same names are replaced)"
    )


def claim_output_file(path: Path, force: bool, flag: str = "--out") -> None:
    """Refuse an existing `path` unless `force` is set."""
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{path}: {flag} names a folder; give a file name")
    if path.exists() and not force:
        raise OutputExistsError(f"{path}: exists; pass --force to replace it, or choose another {flag}")
