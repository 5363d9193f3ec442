"""One factory for the control test bed, shared by the unit and the integration tests: load a
ControlConfig, build the control components around test doubles, close the store at the end.

tests/ is on sys.path (pytest puts the directory of tests/conftest.py there), so tests import
this as `from control_components import control_components`. (The name is unique across the
test tree; tests/unit/control/control_testbed.py is on sys.path only where the unit tests of
control are collected, so the factory lives here.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from services.common.base_models import BaseModelSpec
from services.control.app import Components, build_components
from services.control.config import ControlConfig, load_config


def control_flags(home: Path | str, **flags: Any) -> list[str]:
    """The command line of `python -m services.control` for `home` and `flags`: each keyword is
    a flag spelled with underscores for dashes (reconcile_interval_s=0.2 is
    `--reconcile-interval-s 0.2`, inference="host:port" is `--inference host:port`); a None
    value leaves the flag out."""
    argv = ["--home", str(home)]
    for name, value in flags.items():
        if value is not None:
            argv += ["--" + name.replace("_", "-"), str(value)]
    return argv


@contextlib.contextmanager
def control_components(home: Path | str | ControlConfig,
                       base: BaseModelSpec | Iterable[BaseModelSpec] | None = None, *,
                       service_token: str | None = None, dispatcher: Any = None,
                       provision: Callable[[BaseModelSpec], Path] = lambda spec: spec.path,
                       tokenizers: Callable[[BaseModelSpec, str], Any] | None = None,
                       completions: Any = None, runner_settings: Any = None,
                       **flags: Any) -> Iterator[Components]:
    """Build the control components (services.control.app.build_components) and close their
    store when the block ends.

    `home` is the --home folder, or a ControlConfig already loaded (a second process over the
    same home: no flags then). The config is loaded from `control_flags(home, **flags)` (e.g.
    port=0, database_url=..., artifact_root="s3://...", reconcile_interval_s=0.2) with only
    FINETUNE_SERVICE_TOKEN=`service_token` in the environment. `base` is the base model (or
    models) of the catalog (None: the catalog file's); `provision` defaults to using each base
    model's folder as it is. `dispatcher`, `tokenizers`, `completions` and `runner_settings` go
    to build_components unchanged (None: its defaults, e.g. the base models' own tokenizers)."""
    if isinstance(home, ControlConfig):
        if flags or service_token is not None:
            raise TypeError("flags and service_token are for a new config, not a loaded one")
        config = home
    else:
        if service_token is None:
            raise TypeError("control_components needs the service token of a new config")
        config = load_config(control_flags(home, **flags),
                             environ={"FINETUNE_SERVICE_TOKEN": service_token})
    if isinstance(base, BaseModelSpec):
        base = [base]
    base_models = None if base is None else {b.name: b for b in base}
    components = build_components(config, dispatcher=dispatcher, base_models=base_models,
                                  provision=provision, tokenizers=tokenizers,
                                  completions=completions, runner_settings=runner_settings)
    try:
        yield components
    finally:
        components.store.close()
