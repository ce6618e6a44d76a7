"""What ``skewless init`` writes: a clean repository named after its folder.

``skewless.yaml`` is :func:`features.config.reference_yaml` (every key at its default, with its meaning), so the
reference cannot drift from what the reader accepts; ``definitions/entities.py`` is a commented start that
``skewless plan`` accepts as it is (an entity; the source, view and service that need a database are commented).
"""

from __future__ import annotations

import re
from pathlib import Path

from features.config import CONFIG_FILE, reference_yaml
from features.errors import ConfigError

STARTER_FILE = "entities.py"
STARTER = '''"""This repository's definitions: ``skewless plan`` and ``skewless apply`` read every ``*.py`` file
of this folder (not starting with ``_``); each object is named after the variable it is bound to.

Describe what features are about (entities), where the data comes from (a source on a connection named in
skewless.yaml) and what to compute from it (a feature view). The source, view and service below need a database:
add it under ``connections:`` in skewless.yaml, uncomment them, and run ``skewless plan``.
"""

from features import Entity, Int64

# from datetime import timedelta
# from features import Feature, FeatureService, FeatureView, Float64, SqlSource

# An entity: what features describe, and the key column(s) that identify one.
customer = Entity(join_keys={"customer_id": Int64})

# A source: a table (or query=...) on a connection of skewless.yaml, and the column saying when each row happened.
# orders = SqlSource(connection="shop", table="orders", timestamp="ordered_at")

# A feature view: one entity's features computed from one source, served online for `ttl` after their time.
# customer_orders = FeatureView(
#     entities=[customer],
#     source=orders,
#     ttl=timedelta(days=30),
#     features=[
#         Feature("amount", Float64),  # a column as it is
#         Feature("amount_with_tax", Float64, expr="amount * 1.2"),  # a row expression
#     ],
# )

# A feature service: the features one model uses, asked for by one name.
# churn_model = FeatureService(features=[customer_orders["amount"], customer_orders["amount_with_tax"]])
'''


def project_name(folder: Path) -> str:
    """The project name ``init`` gives a folder: its name, with the characters a key prefix cannot hold replaced."""
    return re.sub(r"[:{}\s]", "_", folder.resolve().name) or "skewless"


def write_skeleton(target: Path) -> list[Path]:
    """Write ``skewless.yaml`` and ``definitions/entities.py`` into ``target``; returns the files written. Refuses
    a folder that already holds a ``skewless.yaml``."""
    config = target / CONFIG_FILE
    if config.exists():
        raise ConfigError(f"{target} already holds a {CONFIG_FILE}; init writes nothing over a repository")
    definitions = target / "definitions"
    definitions.mkdir(parents=True, exist_ok=True)
    config.write_text(reference_yaml(project_name(target)))
    written = [config]
    starter = definitions / STARTER_FILE
    if not starter.exists():
        starter.write_text(STARTER)
        written.append(starter)
    return written
