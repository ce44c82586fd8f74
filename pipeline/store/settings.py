"""A store's settings: those fixed when it is created (kept in `store.json`), and how a scheduled update inherits
them."""

from __future__ import annotations

import json

from core.config import to_dict
from core.errors import UserError
from pipeline.store.config import STORE_FIXED, StoreConfig


def fixed_settings(config: StoreConfig) -> dict:
    data = to_dict(config)
    out = {}
    for dotted in STORE_FIXED:
        node = data
        for part in dotted.split("."):
            node = node[part]
        out[dotted] = node
    return out


def with_store_settings(config: StoreConfig, fixed: dict) -> StoreConfig:
    """The store's own settings wherever this update leaves one at its default, so that a scheduled update needs
    only `--store` and `--docs` (and the teacher): the student and strategy come from the store."""
    from core.config import load_config

    data, default = to_dict(config), fixed_settings(StoreConfig())
    mine = fixed_settings(config)
    for dotted, value in fixed.items():
        if dotted in mine and mine[dotted] == default[dotted] and value != default[dotted]:
            node = data
            parts = dotted.split(".")
            for part in parts[:-1]:
                node = node[part]
            node[parts[-1]] = value
    return load_config(StoreConfig, None, data)


def check_fixed(store, manifest, config: StoreConfig) -> None:
    """Refuse an update whose fixed settings differ from the store's (`manifest`: its store.json)."""
    fixed = manifest.settings
    now_ = fixed_settings(config)
    diff = [k for k in fixed if fixed[k] != now_.get(k)]
    if diff:
        k = diff[0]
        raise UserError(f"store {store.path} was created with {k}={json.dumps(fixed[k])}, this update asks for "
                        f"{json.dumps(now_.get(k))}; a store keeps one student and one strategy (use another --store)")

