"""The command line, checked before Hydra runs anything: every override must name something.

Hydra would run ``+simulaton.rounds=1`` as the default job (the ``+`` adds a key nobody reads)
and answer ``simulaton.rounds=1`` or ``strategy=fedavgg`` with a twenty-line message. This
module composes the config the command line asks for with Hydra's own compose API (about 0.1 s
a composition, no job started), and turns every way it can be wrong into one
:class:`~fedsim.errors.ConfigError` line that names the key and suggests the closest valid one:

- bad override syntax (Hydra's parser);
- an option a config group does not have (``strategy=fedavgg`` -> ``fedavg``);
- a key the composed config does not have (``simulaton.rounds`` -> ``simulation.rounds``,
  ``privacy.noise_multipler`` -> ``noise_multiplier``);
- a top-level key or group fedsim does not know, however it got there (``+simulaton.rounds=1``,
  ``+experiment=x`` without a ``conf/experiment/`` group);
- a ``+key`` added to a ``_target_`` node that the class does not accept (the message lists
  the parameters it does accept).

A multirun sweep (``-m``) is checked value by value, so one bad value among good ones stops the
sweep before its first job. ``resume=<dir>`` runs are checked by :mod:`fedsim.run.resume`.
"""

from __future__ import annotations

import difflib
import inspect
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fedsim.errors import ConfigError

CONFIG_NAME = "config"
# Top-level keys Hydra or fedsim itself reads that are not in conf/config.yaml's body.
HYDRA_KEY = "hydra"


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate most like ``word`` (difflib's ratio >= 0.6), or ``None``."""
    match = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return match[0] if match else None


def did_you_mean(word: str, candidates: Iterable[str], prefix: str = "") -> str:
    """`` (did you mean '<prefix>x'?)`` for the closest candidate, or ``""`` if none is close."""
    match = closest(word, candidates)
    return f" (did you mean '{prefix}{match}'?)" if match else ""


def group_options(conf_dir: Path, group: str) -> list[str]:
    """The options (YAML files) of config group ``group``; empty if it is not a group."""
    directory = conf_dir / group
    return sorted(p.stem for p in directory.glob("*.yaml")) if directory.is_dir() else []


def config_groups(conf_dir: Path) -> list[str]:
    """Every config group under ``conf_dir`` (directories holding YAML options)."""
    return sorted(p.name for p in conf_dir.iterdir() if p.is_dir() and any(p.glob("*.yaml")))


def known_top_level(base: DictConfig, conf_dir: Path) -> set[str]:
    """Top-level names a composed config may hold: the base config's keys, the groups that
    compose into a key of their own (``update.compression`` -> ``update``), and ``hydra``."""
    groups = {g.split(".")[0] for g in config_groups(conf_dir)}
    return set(base.keys()) | groups | {HYDRA_KEY}


def accepted_parameters(target: str) -> list[str] | None:
    """The keyword parameters ``target``'s constructor accepts; ``None`` if it takes any."""
    from hydra._internal.utils import _locate  # the resolver instantiate() itself uses

    try:
        signature = inspect.signature(_locate(target))
    except Exception:  # noqa: BLE001 - an unimportable target is reported when it is located
        return None
    params = signature.parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL]


def expand_sweeps(overrides: list[Any]) -> Iterator[list[str]]:
    """Override lists that between them use every value of every sweep once.

    The first list takes each sweep's first value; each further list changes one sweep to one
    of its other values. Linear in the values, not their product: a bad value fails in the
    list that holds it whatever the other sweeps hold.
    """

    def text(override: Any, value: str) -> str:
        return f"{override.get_key_element()}={value}"

    def first(override: Any) -> str:
        if override.is_sweep_override():
            return text(override, next(iter(override.sweep_string_iterator())))
        return override.input_line

    base = [first(o) for o in overrides]
    yield base
    for i, override in enumerate(overrides):
        if override.is_sweep_override():
            for value in list(override.sweep_string_iterator())[1:]:
                yield base[:i] + [text(override, value)] + base[i + 1:]


def _missing_option(message: str, conf_dir: Path) -> ConfigError:
    """``Could not find 'strategy/fedavgg'`` -> one line with the group's options."""
    found = re.search(r"Could not find '([^']+)/([^'/]+)'", message)
    if not found:
        return ConfigError(message.splitlines()[0])
    group, option = found.groups()
    options = group_options(conf_dir, group)
    if not options:
        return ConfigError(
            f"{group}: no config group {group!r}{did_you_mean(group, config_groups(conf_dir))}"
        )
    return ConfigError(
        f"{group}: no option {option!r}{did_you_mean(option, options)} "
        f"(choose from {', '.join(options)})"
    )


def _missing_key(key: str, base: DictConfig, conf_dir: Path) -> ConfigError:
    """A dotted ``key`` the composed config lacks -> one line naming it, with a suggestion."""
    parts = key.split(".")
    node: Any = base
    for depth, part in enumerate(parts):
        if isinstance(node, DictConfig) and part in node:
            node = node[part]
            continue
        parent = ".".join(parts[:depth])
        siblings = list(node.keys()) if isinstance(node, DictConfig) else []
        if depth == 0:
            siblings = sorted(known_top_level(base, conf_dir) - {HYDRA_KEY})
        hint = did_you_mean(part, siblings, prefix=f"{parent}." if parent else "")
        siblings = [s for s in siblings if s != "_target_"]
        if not hint and depth == 1:
            hint = _in_other_options(parent, part, conf_dir)
        if not hint and depth and 0 < len(siblings) <= 12:
            hint = f" (it has {', '.join(map(str, siblings))})"
        where = f"'{parent}'" if parent else "the config"
        message = f"{key}: no key {part!r} in {where}{hint}"
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        accepted = accepted_parameters(str(target)) if target else None
        if accepted is not None:
            message += f"; {target} accepts {', '.join(accepted) or 'no parameters'}"
        return ConfigError(message)
    return ConfigError(f"{key}: cannot be set")


def _composition_error(
    message: str, variant: list[str], base: DictConfig, conf_dir: Path
) -> ConfigError:
    """Hydra's composition error for ``variant`` as one line naming the key."""
    from hydra import compose

    exists = re.search(r"An item is already at '([^']+)'", message)
    if exists:
        return ConfigError(f"{exists.group(1)}: already in the config; set it without the '+'")
    missing = re.search(r"Could not override '([^']+)'", message) or re.search(
        r"'([^']+)' does not exist", message
    )
    if not missing:
        return ConfigError(message.splitlines()[0])
    key = missing.group(1)
    # Walk the config the other overrides compose (e.g. privacy=central_dp), not the default one.
    others = [o for o in variant if o.lstrip("+~").split("=")[0] != key]
    try:
        composed = compose(config_name=CONFIG_NAME, overrides=others)
    except Exception:  # noqa: BLE001 - fall back to the default config
        composed = base
    return _missing_key(key, composed, conf_dir)


def _in_other_options(group: str, key: str, conf_dir: Path) -> str:
    """`` (did you mean 'privacy.noise_multiplier' of privacy=central_dp, ...?)`` when another
    option of ``group`` has a key close to ``key``; else ``""``."""
    holders: dict[str, list[str]] = {}
    for option in group_options(conf_dir, group):
        node = OmegaConf.load(conf_dir / group / f"{option}.yaml")
        match = closest(key, [str(k) for k in node.keys() if k != "defaults"])
        if match:
            holders.setdefault(match, []).append(option)
    if not holders:
        return ""
    match, options = max(holders.items(), key=lambda item: len(item[1]))
    chosen = ", ".join(f"{group}={o}" for o in options)
    return f" (did you mean '{group}.{match}'? it belongs to {chosen})"


def check_composed(cfg: DictConfig, base: DictConfig, conf_dir: Path, added: list[str]) -> None:
    """Refuse unknown top-level keys and ``+`` keys a ``_target_`` class would not accept."""
    known = known_top_level(base, conf_dir)
    for key in cfg.keys():
        if key not in known:
            hint = did_you_mean(str(key), known - {HYDRA_KEY})
            raise ConfigError(f"{key}: fedsim has no config group or key {key!r}{hint}")
    for key in added:
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else None
        if not isinstance(node, DictConfig) or "_target_" not in node:
            continue
        accepted = accepted_parameters(str(node._target_))
        if accepted is not None and name not in accepted:
            raise ConfigError(
                f"{key}: {node._target_} has no parameter {name!r}{did_you_mean(name, accepted)}; "
                f"it accepts {', '.join(accepted) or 'no parameters'}"
            )


def check_overrides(overrides: list[str], conf_dir: Path, verbose: bool = False) -> None:
    """Compose what ``overrides`` ask for; raise a one-line :class:`ConfigError` if it is wrong.

    ``verbose``: Hydra's own message is printed in full before fedsim's line.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException, MissingConfigException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as err:
        raise ConfigError(f"bad override syntax: {str(err).splitlines()[0]}") from None
    parsed = [o for o in parsed if not o.key_or_group.split(".")[0].split("/")[0] == HYDRA_KEY]
    if any(o.key_or_group == "resume" and not o.is_delete() for o in parsed):
        return  # a resumed run takes its saved config; fedsim.run.resume checks the rest
    added = [o.key_or_group for o in parsed if o.is_add() and not group_options(conf_dir, o.key_or_group)]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base="1.3"):
        base = compose(config_name=CONFIG_NAME)
        for variant in expand_sweeps(parsed):
            try:
                cfg = compose(config_name=CONFIG_NAME, overrides=variant)
            except MissingConfigException as err:
                _show(err, verbose)
                raise _missing_option(str(err), conf_dir) from None
            except HydraException as err:
                _show(err, verbose)
                raise _composition_error(str(err), variant, base, conf_dir) from None
            check_composed(cfg, base, conf_dir, added)
    GlobalHydra.instance().clear()


def _show(err: Exception, verbose: bool) -> None:
    if verbose:
        print(f"{type(err).__name__}: {err}", file=sys.stderr)


def overrides_of(argv: list[str]) -> list[str]:
    """The ``key=value`` overrides on a ``run_sim.py`` command line (Hydra's flags dropped)."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(argv)
    return list(args.overrides)
