"""Seed the demo warehouse: ``analytics.contacts`` with N customers, and change it for a second run."""

from __future__ import annotations

import argparse
from pathlib import Path

import duckdb

FIRST = [
    "Ada",
    "Grace",
    "Linus",
    "Margaret",
    "Alan",
    "Barbara",
    "Dennis",
    "Frances",
    "Ken",
    "Radia",
    "Søren",
    "Zoë",
    "José",
    "Ngozi",
    "Hiroshi",
    "Małgorzata",
]
LAST = [
    "Lovelace",
    "Hopper",
    "Torvalds",
    "Hamilton",
    "Turing",
    "Liskov",
    "Ritchie",
    "Allen",
    "Thompson",
    "Perlman",
    "Kierkegaard",
    "Ødegaard",
    "Núñez",
    "Okafor",
    "Tanaka",
    "Wójcik",
]
STAGES = ["subscriber", "lead", "marketingqualifiedlead", "salesqualifiedlead", "opportunity", "customer"]
PLANS = ["free", "starter", "pro", "enterprise"]


def _pick(values: list[str], salt: int) -> str:
    items = ", ".join("'" + v.replace("'", "''") + "'" for v in values)
    return f"[{items}][1 + ((i * {salt}) % {len(values)})]"


def seed(path: Path, rows: int) -> None:
    """Create analytics.contacts with ``rows`` deterministic customers."""
    con = duckdb.connect(str(path))
    con.execute("create schema if not exists analytics")
    con.execute(f"""
        create or replace table analytics.contacts as
        select i as customer_id,
               'customer' || i || '@example.com' as email,
               {_pick(FIRST, 7)} as first_name,
               {_pick(LAST, 11)} as last_name,
               {_pick(STAGES, 13)} as lifecycle_stage,
               cast((i * 37) % 100 as integer) as lead_score,
               case when i % 17 = 0 then null
                    else cast(((i * 7919) % 500000) / 100.0 as decimal(12, 2)) end as lifetime_value,
               timestamp '2026-01-01 00:00:00' + to_seconds((i * 104729) % 28000000) as last_seen_at,
               {_pick(PLANS, 3)} as plan
        from range(1, {rows} + 1) as t(i)
    """)
    con.close()


def change(path: Path, every: int = 100, remove: int = 5) -> tuple[int, int]:
    """Bump the lead score of one row in ``every``, delete ``remove`` rows; return (changed, removed)."""
    con = duckdb.connect(str(path))
    changed = con.execute(
        f"update analytics.contacts set lead_score = (lead_score + 1) % 100 where customer_id % {every} = 7"
    ).fetchone()
    removed = con.execute(
        f"delete from analytics.contacts where customer_id in "
        f"(select customer_id from analytics.contacts where customer_id % {every} <> 7 "
        f"order by customer_id limit {remove})"
    ).fetchone()
    con.close()
    return int(changed[0]) if changed else 0, int(removed[0]) if removed else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--path", default=str(Path(__file__).parent / "warehouse.duckdb"))
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--change", action="store_true", help="change ~1%% and remove a few instead")
    args = parser.parse_args()
    if args.change:
        changed, removed = change(Path(args.path))
        print(f"changed {changed}, removed {removed}")
    else:
        seed(Path(args.path), args.rows)
        print(f"seeded {args.rows:,} customers into {args.path}")
