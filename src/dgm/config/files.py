"""Configuration files as text and nested dicts, before validation: a TOML file (or a run's
``config.json``) read safely, the configurations that ship with dgm found by name, and
``--set key=value`` overrides parsed and applied."""

from __future__ import annotations

import difflib
import os
import stat
import tomllib
from pathlib import Path
from typing import Any

from dgm.errors import ConfigError, shorten

#: echoed values and keys are cut to this many characters
ECHO_LIMIT = 80

#: a config file (TOML, or a run's config.json) is read only if it is a regular file this small
MAX_CONFIG_BYTES = 1024**2
#: and its tables and arrays nest at most this deep (dgm's own go 4 deep: model.upper[0].hidden)
MAX_DEPTH = 16


def read_config_text(path: Path, what: str = "config file") -> str:
    """The text of ``path`` if it is a regular file of at most :data:`MAX_CONFIG_BYTES` in
    UTF-8; else one ConfigError line naming it. A FIFO or a device (``/dev/zero``) is refused
    without reading from it (it is opened non-blocking and checked before any read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read {what} ({err.strerror or err})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise ConfigError(f"{path}: {kind}; expected a {what} (a regular file)")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{path}: {info.st_size:,} bytes; a {what} is expected to be at most "
                f"{MAX_CONFIG_BYTES:,} bytes"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read {what} ({err.strerror or err})") from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONFIG_BYTES:  # it grew while being read
        raise ConfigError(f"{path}: a {what} is expected to be at most {MAX_CONFIG_BYTES:,} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: cannot read {what} (not UTF-8: {err.reason})") from None


def depth(value: Any) -> int:
    """How deeply dicts and lists nest in ``value`` (a scalar: 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d + 1)
            if d + 1 <= MAX_DEPTH:  # deeper is refused anyway: stop walking
                stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def check_depth(data: Any, where: str) -> None:
    if depth(data) > MAX_DEPTH:
        raise ConfigError(
            f"{where}: tables and arrays nested more than {MAX_DEPTH} deep; a dgm config nests "
            "at most a few levels (model.upper[0].hidden)"
        )


#: the configurations that ship with dgm (``dgm train mnist_vae``; ``configs/`` in a checkout)
CONFIGS_DIR = Path(__file__).parent.parent / "configs"


def shipped_configs() -> list[str]:
    """The names of the configurations that ship with dgm: ``mnist_vae``, ``iwae/k5``..."""
    return sorted(p.relative_to(CONFIGS_DIR).with_suffix("").as_posix()
                  for p in CONFIGS_DIR.rglob("*.toml"))  # fmt: skip


def config_path(path: str | Path) -> Path:
    """The file a config argument names: a path to a TOML file; else the name of one that
    ships with dgm (``mnist_vae``, or ``configs/mnist_vae.toml`` outside a checkout)."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        return path
    name = path.as_posix().removeprefix("configs/").removesuffix(".toml")
    shipped = CONFIGS_DIR / f"{name}.toml"
    if name in shipped_configs() and shipped.is_file():
        return shipped
    if path.suffix != ".toml":
        close = difflib.get_close_matches(name, shipped_configs(), n=1)
        hint = f"did you mean '{close[0]}'?" if close else ", ".join(shipped_configs())
        raise ConfigError(
            f"{shorten(str(path), ECHO_LIMIT)}: no such file, and no configuration of that name "
            f"ships with dgm ({hint})"
        )
    return path  # a missing file: read_config_text names it


def read_toml(path: str | Path) -> dict[str, Any]:
    path = config_path(path)
    text = read_config_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML ({shorten(err, 2 * ECHO_LIMIT)})") from None
    except RecursionError:
        raise ConfigError(
            f"{path}: invalid TOML (arrays or tables nested too deeply; at most {MAX_DEPTH})"
        ) from None
    check_depth(data, str(path))
    return data


def parse_value(text: str) -> Any:
    """A ``--set`` value is read as a TOML value (numbers, booleans, arrays), else as a string."""
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    except RecursionError:
        raise ConfigError(
            f"--set ...={shorten(text, 20)}: arrays or tables nested too deeply (at most "
            f"{MAX_DEPTH})"
        ) from None
    check_depth(value, f"--set ...={shorten(text, 20)}")
    return value


def set_key(data: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key (``train.lr``) in nested dicts; unknown sections are left to validation."""
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"--set {shorten(key, ECHO_LIMIT)}: expected a dotted key like train.lr")
    node = data
    for p in parts[:-1]:
        child = node.setdefault(p, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"--set {shorten(key, ECHO_LIMIT)}: '{shorten(p, ECHO_LIMIT)}' is a value, not "
                "a section"
            )
        node = child
    node[parts[-1]] = value
