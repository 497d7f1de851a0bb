"""The command line's ``train`` options, made from the configurations' fields: each field a flag, its type and its
help (the field's ``metadata["help"]``), so that a field added to a configuration is an option at once; the recipe of
the typed options, and the command that trains a recipe.
"""

import argparse
import functools
import math
import types
import typing
from dataclasses import fields
from pathlib import Path

from .hierarchical import SIZES, HierarchicalConfig
from .losses import LIKELIHOODS
from .models import CONDITIONINGS, PRIORS, ModelConfig
from .recipes import DEFAULTS, HIERARCHICAL, Recipe, default_recipe
from .remedies import SCHEDULES, RemedyConfig
from .train import SpeedConfig, TrainConfig


def _number(kind, test, what):
    """An argparse type: ``kind`` parsed, then refused unless ``test`` holds (argparse names the option)."""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not (math.isfinite(value) and test(value)):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = what  # shown by argparse in its messages
    return parse


POSITIVE_INT = _number(int, lambda v: v > 0, "a positive integer")
NATURAL = _number(int, lambda v: v >= 0, "a non-negative integer")
POSITIVE = _number(float, lambda v: v > 0, "a positive number")
NON_NEGATIVE = _number(float, lambda v: v >= 0, "a non-negative number")


# ``train``'s options are the fields of these configurations, in this order; a field's metadata["help"] is its help.
# Not options: what the dataset and --model decide, and the recipe's parts.
CONFIGS = (ModelConfig, HierarchicalConfig, RemedyConfig, TrainConfig, SpeedConfig, Recipe)
NOT_OPTIONS = {"image_shape", "num_classes", "arch", "model", "remedies", "train"}
FLAGS = {"num_epochs": "--epochs", "warmup_steps": "--lr-warmup-steps"}  # where a flag is not the field's name
CHOICES = {
    "likelihood": sorted(LIKELIHOODS),
    "conditioning": CONDITIONINGS,
    "prior": PRIORS,
    "size": sorted(SIZES),
    "schedule": SCHEDULES,
}


class Option(typing.NamedTuple):
    """A field's option: its flag, its type (None taken out of ``X | None``), its help (the field's comment), and
    whether ``--no-FLAG`` sets it to None (an optional field that a default recipe sets, as ``--no-ema``)."""

    flag: str
    kind: type
    help: str | None
    can_unset: bool


@functools.cache
def config_options() -> dict[type, dict[str, Option]]:
    """Each configuration's options by field name. A field that two configurations share (``likelihood``) is one
    option, listed with the first."""
    defaults = [HIERARCHICAL, *DEFAULTS.values()]
    parts = [part for recipe in defaults for part in (recipe, recipe.model, recipe.remedies, recipe.train)]
    options, seen = {}, set()
    for config in CONFIGS:
        hints, helps = typing.get_type_hints(config), {f.name: f.metadata.get("help") for f in fields(config)}
        options[config] = {}
        for f in fields(config):
            if f.name in NOT_OPTIONS or f.name in seen:
                continue
            seen.add(f.name)
            kind, optional = hints[f.name], False
            if isinstance(kind, types.UnionType) and type(None) in typing.get_args(kind):  # X | None -> X
                kind, optional = next(a for a in typing.get_args(kind) if a is not type(None)), True
            set_by_default = any(getattr(p, f.name, None) is not None for p in parts if isinstance(p, config))
            flag = FLAGS.get(f.name, "--" + f.name.replace("_", "-"))
            options[config][f.name] = Option(flag, kind, helps.get(f.name), optional and set_by_default)
    return options


def flag_of(name: str) -> str | None:
    """The option of the configuration field ``name``, or None."""
    return next((o[name].flag for o in config_options().values() if name in o), None)


def add_config_options(t: argparse.ArgumentParser) -> None:
    """An option for each field of the configurations (``CONFIGS``), one group per configuration."""
    for config, options in config_options().items():
        about = (config.__doc__ or "").split("\n")[0]
        group = t.add_argument_group(config.__name__, f"{about} Defaults: recipes.default_recipe.")
        for name, option in options.items():
            kwargs = dict(dest=name, default=argparse.SUPPRESS, help=option.help)  # SUPPRESS: only typed ones are set
            if option.kind is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif typing.get_origin(option.kind) is tuple:
                kwargs.update(type=typing.get_args(option.kind)[0], nargs="+")
            else:
                kwargs.update(type=option.kind, choices=CHOICES.get(name))
            group.add_argument(option.flag, **kwargs)
            if option.can_unset:
                unset = f"--no-{option.flag[2:]}"
                group.add_argument(
                    unset, dest=name, action="store_const", const=None, default=argparse.SUPPRESS, help="turn it off"
                )


def recipe_of(args) -> Recipe:
    """``train``'s recipe: the dataset's default (``recipes.default_recipe``) with each typed option in place of its
    field. A ValueError (a value or combination the configurations refuse) starts with the field's name."""
    given = {k: v for k, v in vars(args).items() if flag_of(k) is not None}  # only the typed ones (SUPPRESS)
    return default_recipe(args.dataset, args.arch, conditional=args.model == "cvae").with_overrides(given)


def command(dataset: str, recipe: Recipe, out: str | Path) -> str:
    """The ``train`` command that trains ``recipe`` on ``dataset`` into ``out``: each field that differs from the
    dataset's default recipe, as its option (chapter 4 prints the commands of its full-profile runs with it)."""
    arch, conditional = recipe.model.arch, recipe.model.num_classes > 0
    words = ["python -m cvaelib train --dataset", dataset, "--out", str(out), "--arch", arch]
    words += [] if conditional else ["--model vae"]
    for name, value in recipe.overrides(default_recipe(dataset, arch, conditional)).items():
        flag = flag_of(name)
        if flag is None:  # what the dataset and --model decide
            continue
        if isinstance(value, bool):
            words.append(flag if value else f"--no-{flag[2:]}")
        elif value is None:
            words.append(f"--no-{flag[2:]}")
        else:
            values = value if isinstance(value, tuple) else [value]
            words += [flag, *(f"{v:g}" if isinstance(v, float) else str(v) for v in values)]
    return " ".join(words)


def option_error(parser: argparse.ArgumentParser, error: ValueError) -> None:
    """A configuration's ValueError as argparse's error of the option it names (exit status 2)."""
    name, _, reason = str(error).partition(" ")
    parser.error(f"argument {flag_of(name)}: {reason}" if flag_of(name) else str(error))
