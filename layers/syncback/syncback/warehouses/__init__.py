"""Warehouse connections: the protocol in ``base`` and one module per engine."""

from __future__ import annotations

from pathlib import Path

from syncback.secrets import SecretResolver
from syncback.spec import DuckDBWarehouseConfig, SnowflakeWarehouseConfig
from syncback.warehouses.base import Warehouse


def connect(
    name: str,
    config: DuckDBWarehouseConfig | SnowflakeWarehouseConfig,
    root: Path,
    secrets: SecretResolver,
    state: bool = False,
) -> Warehouse:
    """Open the warehouse ``name`` that ``config`` describes; DuckDB paths are relative to ``root``.
    ``state``: as the state schema reaches it (a Snowflake warehouse's ``state_access`` login)."""
    if isinstance(config, DuckDBWarehouseConfig):
        from syncback.warehouses.duckdb import DuckDBWarehouse

        duck: Warehouse = DuckDBWarehouse(root / config.path, config.lock_wait_s, config.memory_limit)
        return duck
    from syncback.warehouses.snowflake import SnowflakeWarehouse

    if state and config.state_access is not None:
        return SnowflakeWarehouse(config.for_state(), secrets, f"{name}.state_access")
    snow: Warehouse = SnowflakeWarehouse(config, secrets, name)
    return snow
