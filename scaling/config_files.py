"""Config files and overrides: reading a Python or JSON config, laying it over a base, `--config.a.b=value`.

A config file is either a Python file whose `get_config()` returns a ConfigDict holding only what
differs from the defaults (a complete config works too), or a JSON file holding a resolved config (a
run directory's config.json). `FILE.py:ARG` passes ARG to `get_config(ARG)` (a named variant of one
file). `overlay` lays what a file holds over a base (a key the base does not know is an error naming
the file). Overrides are `--config.a.b=value`; the value is parsed to the type of the existing leaf
(scaling/flags.py reads the other command-line forms and hands them over in this one).
"""
import ast
import importlib.util
import json
import math
import pathlib

import ml_collections

from scaling.config_schema import ConfigError


def split_spec(spec) -> tuple[pathlib.Path, str | None]:
    """'file.py:ARG' -> (file.py, 'ARG'); any other spec -> (path, None)."""
    text = str(spec)
    at = text.find(".py:")
    if at < 0:
        return pathlib.Path(text), None
    path, arg = pathlib.Path(text[:at + 3]), text[at + 4:]
    if not arg:
        raise ConfigError(f"config {text!r}: nothing after ':'; give get_config's argument ({path}:ARG) or "
                          f"drop the ':'")
    return path, arg


def load_py(spec) -> ml_collections.ConfigDict:
    """What a Python config file's get_config() (or get_config(ARG) for 'file.py:ARG') returns, as
    written (not laid over the defaults)."""
    path, arg = split_spec(spec)
    if path.suffix != ".py":
        raise ConfigError(f"{path}: a config here must be a Python file (.py) with get_config()")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (" (it is a directory)" if path.is_dir() else ""))
    spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"{path}: line {e.lineno}: SyntaxError: {e.msg}; fix the file") from None
    except Exception as e:  # the file is user code: whatever it raises is a broken config
        raise ConfigError(f"{path}: raised {_error_at(e, path)} while loading; fix the file") from None
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"{path} defines no get_config() returning a ConfigDict")
    args = _get_config_args(module.get_config, path, arg)
    try:
        written = module.get_config(*args)
    except Exception as e:
        raise ConfigError(f"{path}: get_config({', '.join(map(repr, args))}) raised {_error_at(e, path)}; "
                          "fix the file") from None
    return _mapping(written, f"{path}: get_config()", "returned")


def load_json(path: pathlib.Path):
    """What a JSON config file (a run directory's config.json) holds, as written (not laid over the defaults)."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return _mapping(json.loads(path.read_text()), str(path))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read ({e})") from None


def _get_config_args(get_config, path: pathlib.Path, arg: str | None) -> tuple:
    """(arg,) or (): what get_config is called with; a ConfigError when its signature disagrees."""
    import inspect
    args, signature = () if arg is None else (arg,), "(...)"
    try:
        signature = inspect.signature(get_config)
        signature.bind(*args)
    except TypeError:
        if arg is None:
            raise ConfigError(f"{path}: get_config{signature} needs an argument; pass it as "
                              f"--config={path}:ARG") from None
        raise ConfigError(f"{path}: get_config() takes no argument, but {arg!r} was given ({path}:{arg}); "
                          f"drop ':{arg}' or give get_config a parameter") from None
    except ValueError:  # no signature to read (a builtin): call it as asked
        pass
    return args


def _error_at(e: BaseException, path: pathlib.Path) -> str:
    """'KeyError: 'x' (line 3)': an exception raised by a config file, with its deepest line in that file."""
    import traceback
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if pathlib.Path(f.filename).resolve() == path.resolve()]
    return f"{type(e).__name__}: {e}" + (f" (line {lines[-1]})" if lines else "")


def _mapping(value, what: str, verb: str = "holds"):
    """`value` when it is a dict or ConfigDict; else a ConfigError saying what `what` holds instead."""
    if not isinstance(value, (dict, ml_collections.ConfigDict)):
        raise ConfigError(f"{what} {verb} {_short(value)} (type {type(value).__name__}); expected a mapping "
                          "of keys to values (a dict or ConfigDict), e.g. {\"train\": {\"tokens\": 2000000}}")
    return value


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def overlay(base, written, source: str, prefix: str = "") -> ml_collections.ConfigDict:
    """Lay `written` (a possibly partial, nested ConfigDict or dict) over `base` in place; returns base.

    A key `base` lacks, or a value of another type than the default's (ints are fine for floats,
    lists for tuples), is a ConfigError naming `source` and the key. An empty section of `base` is
    a free-form mapping: it takes `written`'s keys as they are.
    """
    _mapping(written, f"{source}: {prefix.rstrip('.') or 'the config'}")
    if isinstance(base, ml_collections.ConfigDict) and not base.keys():
        base.update(written)
        return base
    for key, value in written.items():
        name = f"{prefix}{key}"
        if key not in base:
            raise ConfigError(f"{source}: unknown config key {name!r}; valid keys here: {sorted(base.keys())}")
        old = base[key]
        if isinstance(old, ml_collections.ConfigDict):
            if not isinstance(value, (dict, ml_collections.ConfigDict)):
                raise ConfigError(f"{source}: {name}={value!r}: {name} is a section; set its keys instead")
            overlay(old, value, source, prefix=f"{name}.")
            continue
        if isinstance(value, list) and isinstance(old, tuple):
            value = _tuples(value)
        try:
            base[key] = value
        except TypeError:
            raise ConfigError(f"{source}: {name}={value!r} is a {type(value).__name__}; the default "
                              f"{old!r} is a {type(old).__name__}") from None
    return base


def _tuples(value):
    """JSON lists back to the tuples a config holds (nested pairs included)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def apply_override(config, item: str) -> None:
    """Apply one `--config.a.b=value` (or `a.b=value`) override in place."""
    text = item[2:] if item.startswith("--") else item
    if text.startswith("config."):
        text = text[len("config."):]
    if "=" not in text:
        raise ConfigError(f"override {item!r} must look like --config.section.key=value")
    dotted, raw = text.split("=", 1)
    *parents, leaf = dotted.split(".")
    node = config
    for i, part in enumerate(parents):
        if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
            where = ".".join(parents[:i]) or "config"
            valid = sorted(k for k in node.keys() if isinstance(node[k], ml_collections.ConfigDict))
            raise ConfigError(f"unknown config section {'.'.join(parents[:i + 1])!r} in {item!r}; "
                              f"sections of {where}: {valid}")
        node = node[part]
    if leaf not in node:
        raise ConfigError(f"unknown config key {dotted!r} in {item!r}; keys of "
                          f"{'.'.join(parents) or 'config'}: {sorted(node.keys())}")
    old = node[leaf]
    with node.ignore_type():
        node[leaf] = _parse_like(raw, old, dotted)


def _parse_like(raw: str, old, key: str):
    if isinstance(old, bool):
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{key}={raw!r}: expected a boolean (true/false)")
    if isinstance(old, int):
        try:
            value = float(raw)  # accept 2e6 for integers
        except ValueError:
            raise ConfigError(f"{key}={raw!r}: expected an integer") from None
        if not math.isfinite(value) or value != int(value):
            raise ConfigError(f"{key}={raw!r}: expected an integer")
        return int(value)
    if isinstance(old, float):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{key}={raw!r}: expected a number") from None
    if isinstance(old, str):
        return raw
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
