"""Adding an avatar: copy its video into place and list it in params.yaml.

params.yaml is edited with ruamel's round-trip mode so the user's comments
and ordering survive. The name, the preset and the video (video and audio
streams, long enough) are checked first, so bad input writes nothing and a bad
file never gets as far as `dvc repro`. The caller may track the copied video
(the CLI puts it under DVC) before params.yaml lists it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from synctalk.atomic import atomic_path, sweep_stale_temps
from synctalk.config import AVATAR_NAME, AVATAR_NAME_RULE, ConfigError, config_from_dict
from synctalk.media.extract import validate_source
from synctalk.paths import AvatarPaths


def add_avatar(
    name: str,
    video: Path,
    preset: str = "default",
    params_path: Path = Path("params.yaml"),
    root: Path = Path("."),
    force: bool = False,
    track: Callable[[Path], None] | None = None,
) -> Path:
    """Copy `video` to data/avatars/<name>/source.<ext>, `track` it, add it to params.yaml.

    If `track` fails, the copy is removed and params.yaml is left as it was."""
    # fullmatch: `$` would let a name end in a newline
    if not AVATAR_NAME.fullmatch(name):
        raise ConfigError(f"avatar name {name!r}: {AVATAR_NAME_RULE}")
    target_dir = AvatarPaths(name, root).avatar_dir
    sweep_stale_temps([params_path.parent, target_dir])  # what a killed `avatar add` left
    yaml = YAML()
    yaml.preserve_quotes = True
    data = yaml.load(params_path.read_text()) if params_path.exists() else CommentedMap()
    config = config_from_dict(data, source=str(params_path))
    if preset not in config.presets:
        raise ConfigError(
            f"unknown preset {preset!r}; {params_path} defines {sorted(config.presets)}"
        )
    if name in config.avatars and not force:
        raise ConfigError(
            f"avatar {name!r} already exists in {params_path} (use --force to replace)"
        )
    video = Path(video)
    if not video.is_file():
        raise ConfigError(f"{video}: no such file")
    validate_source(video, config.extract)

    target = target_dir / f"source{video.suffix.lower() or '.mp4'}"
    for old in target_dir.glob("source.*"):  # --force with another extension: one source only
        if old.name not in (target.name, f"{target.name}.dvc"):
            old.unlink()
    with atomic_path(target) as tmp:
        shutil.copyfile(video, tmp)
    if track is not None:
        try:
            track(target)
        except BaseException:
            target.unlink(missing_ok=True)
            raise

    avatars = data.get("avatars")
    if not isinstance(avatars, CommentedMap) or not avatars:
        avatars = CommentedMap(avatars or {})
        avatars.fa.set_block_style()
        data["avatars"] = avatars
    entry = CommentedMap(video=target.relative_to(root).as_posix(), preset=preset)
    avatars[name] = entry
    with atomic_path(params_path) as tmp, open(tmp, "w") as f:
        yaml.dump(data, f)
    return target
