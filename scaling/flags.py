"""Command-line flags of the config-taking commands, in the forms absl and ml_collections users type.

    --config FILE  /  --config=FILE          a .py (get_config()) or .json config
    --config=FILE.py:ARG                     ARG is passed to get_config(ARG) (a named variant)
    --config.a.b=VALUE  /  --config.a.b VALUE   an override, parsed to the type of the default
    --flagfile=FILE  /  --flagfile FILE      more flags from FILE: whitespace-separated, shell
                                             quoting, `#` comments and `//` comment lines; nested
                                             --flagfile lines are read too (a cycle is an error)

`split(argv, sections)` pulls these out of argv and leaves the command's own arguments to argparse;
every override comes back in the one canonical form `--SECTION.a.b=VALUE` that
scaling.config_files.apply_override reads. A malformed flag is a FlagError naming it.
"""
import dataclasses
import pathlib
import shlex


class FlagError(ValueError):
    """A flag that cannot be read: a missing value, a missing or cyclic flagfile, a repeated --config."""


@dataclasses.dataclass
class ConfigFlags:
    """The config flags of one command line."""

    config: str | None
    """The --config value as given (FILE or FILE.py:ARG), or None when the flag is absent."""
    overrides: list[str]
    """Each override as `--SECTION.a.b=VALUE`, in command-line order (later ones win)."""
    rest: list[str]
    """Every other argument, in order, for the command's own parser."""


def split(argv: list[str], sections: tuple[str, ...] = ("config",)) -> ConfigFlags:
    """Separate --config, --SECTION.key overrides and --flagfile contents from the other arguments.

    `sections` are the override prefixes the command takes (`scaling sweep`: config and cloud).
    """
    tokens = expand_flagfiles(argv)
    out = ConfigFlags(config=None, overrides=[], rest=[])
    i = 0
    while i < len(tokens):
        name, eq, value = tokens[i].partition("=")
        section = name[2:].split(".", 1)[0] if name.startswith("--") else None
        if section not in sections or name in (f"--{s}" for s in sections if s != "config"):
            out.rest.append(tokens[i])  # the command's own argument (or a positional)
            i += 1
            continue
        if not eq:  # the spaced form: the value is the next argument
            value = _next_value(tokens, i, name)
            i += 1
        if name == "--config":
            if out.config is not None:
                raise FlagError(f"--config given twice ({out.config!r} and {value!r}); give one config file "
                                "and override its keys with --config.a.b=VALUE")
            out.config = value
        else:
            out.overrides.append(f"{name}={value}")
        i += 1
    return out


def _next_value(tokens: list[str], i: int, name: str) -> str:
    """The argument after flag `name` at position i: its value, unless it is missing."""
    if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
        what = "a config file" if name == "--config" else "a value"
        example = "--config=experiments/base.py" if name == "--config" else f"{name}=VALUE"
        raise FlagError(f"{name} is missing {what} (write {name} VALUE or {example})")
    return tokens[i + 1]


def expand_flagfiles(argv: list[str], _open: tuple[pathlib.Path, ...] = ()) -> list[str]:
    """argv with each --flagfile FILE (or --flagfile=FILE) replaced by the flags FILE holds."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        if name != "--flagfile":
            out.append(argv[i])
            i += 1
            continue
        if not eq:
            value = _next_value(argv, i, name)
            i += 1
        out += expand_flagfiles(read_flagfile(value, _open), _open + (pathlib.Path(value).resolve(),))
        i += 1
    return out


def read_flagfile(path, open_files: tuple[pathlib.Path, ...] = ()) -> list[str]:
    """The arguments written in a flagfile (comments and blank lines dropped)."""
    path = pathlib.Path(path)
    if path.resolve() in open_files:
        raise FlagError(f"--flagfile {path} includes itself (through --flagfile lines); remove the cycle")
    if not path.is_file():
        raise FlagError(f"--flagfile {path}: file not found" + (" (it is a directory)" if path.is_dir() else ""))
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise FlagError(f"--flagfile {path}: cannot be read ({e})") from None
    args = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("//"):  # absl's other comment form
            continue
        try:
            args += shlex.split(line, comments=True)
        except ValueError as e:  # an unclosed quote
            raise FlagError(f"--flagfile {path}: line {lineno}: {e}: {line.strip()!r}") from None
    return args
