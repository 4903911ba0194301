"""Charts (matplotlib, PNG) and the self-contained report.html of `--analysis`."""

from __future__ import annotations

import base64
import html
import os
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from models.outbox import OutboxStatus

MAX_SERIES = 8  # more lines than this on one chart is noise; the CSV has them all
Rows = list[asyncpg.Record]


def _chart(path: Path, title: str, now: datetime, draw: Callable[[Axes], bool]) -> Path:
    """Draw one chart ("No data yet" when `draw` finds nothing) and write it to `path` atomically."""
    figure, axes = plt.subplots(figsize=(9, 4.2), dpi=110)
    if not draw(axes):
        axes.text(0.5, 0.5, "No data yet", ha="center", va="center", fontsize=14, color="#666")
        axes.set_axis_off()
    axes.set_title(title, loc="left", fontsize=12, fontweight="bold")
    figure.text(
        0.99, 0.01, f"loadbay · generated {now:%Y-%m-%d %H:%M} UTC", ha="right", fontsize=7, color="#888"
    )
    figure.tight_layout()
    partial = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(partial)
    plt.close(figure)
    os.replace(partial, path)
    return path


def _by_series(rows: Rows, key: str, x: str, y: str) -> dict[str, tuple[list[Any], list[float]]]:
    """(x, y) lists per `key` value, the first MAX_SERIES keys in order; rows without y skipped."""
    series: dict[str, tuple[list[Any], list[float]]] = defaultdict(lambda: ([], []))
    for row in rows:
        if row[y] is None:
            continue
        xs, ys = series[row[key]]
        xs.append(row[x])
        ys.append(float(row[y]))
    return dict(sorted(series.items())[:MAX_SERIES])


def _energy_daily(tables: dict[str, Rows], ax: Axes) -> bool:
    """Bars of kWh per day, one colour per meter (the first MAX_SERIES)."""
    series = _by_series(tables["energy_daily"], "meter_id", "day", "kwh")
    days = sorted({d for xs, _ in series.values() for d in xs})
    width = 0.8 / max(1, len(series))
    for n, (meter, (xs, kwh)) in enumerate(series.items()):
        where = [days.index(d) + (n - (len(series) - 1) / 2) * width for d in xs]
        ax.bar(where, kwh, width=width, label=meter)
    ax.set_xticks(range(len(days)), [d.isoformat() for d in days])
    ax.set_xlabel("day (settlement time zone)")
    ax.set_ylabel("kWh")
    if series:
        ax.legend(fontsize=8, ncols=2)
    return bool(series)


def _profile(tables: dict[str, Rows], ax: Axes) -> bool:
    """A line per meter: average kWh of each half-hour of the day."""
    series = _by_series(tables["energy_half_hour_profile"], "meter_id", "local_time", "avg_kwh")
    for meter, (times, kwh) in series.items():
        ax.plot(times, kwh, label=meter)
    ax.set_xlabel("time of day")
    ax.set_ylabel("average kWh per half-hour")
    ax.set_xticks(range(0, 48, 4))
    if series:
        ax.legend(fontsize=8, ncols=2)
    return bool(series)


def _outcomes(tables: dict[str, Rows], ax: Axes) -> bool:
    """Stacked bars of shipments on our vans per scheduled date, by outbox status."""
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in tables["dispatch_outcomes"]:
        day = row["day"].isoformat() if row["day"] else "no date"
        counts[row["outbox_status"]][day] += row["shipments"]
    days = sorted({d for per_day in counts.values() for d in per_day})
    bottom = [0] * len(days)
    for status, per_day in sorted(counts.items()):
        values = [per_day.get(d, 0) for d in days]
        ax.bar(days, values, bottom=bottom, label=status)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xlabel("scheduled ship date")
    ax.set_ylabel("shipments on our vans")
    if days:
        ax.legend(fontsize=8)
    return bool(days)


def _ingest(tables: dict[str, Rows], ax: Axes) -> bool:
    """Rows loaded and rejected per day received, side by side on a log scale."""
    loaded: dict[str, int] = defaultdict(int)
    rejected: dict[str, int] = defaultdict(int)
    for row in tables["ingest_quality"]:
        loaded[row["day"].isoformat()] += row["rows_loaded"]
        rejected[row["day"].isoformat()] += row["rows_rejected"]
    days = sorted(loaded)
    positions = range(len(days))
    ax.bar([p - 0.2 for p in positions], [loaded[d] for d in days], width=0.4, label="rows loaded")
    ax.bar([p + 0.2 for p in positions], [rejected[d] for d in days], width=0.4, label="rows rejected")
    ax.set_xticks(list(positions), days)
    ax.set_xlabel("day received (UTC)")
    ax.set_ylabel("rows")
    ax.set_yscale("symlog")
    if days:
        ax.legend(fontsize=8)
    return bool(days)


# file name (and view) → title and what draws it; a new chart is one line here
CHARTS: dict[str, tuple[str, Callable[[dict[str, Rows], Axes], bool]]] = {
    "energy_daily": ("Energy per day and meter (kWh)", _energy_daily),
    "energy_half_hour_profile": ("Average half-hour profile", _profile),
    "dispatch_outcomes": ("Dispatch outcomes by scheduled date", _outcomes),
    "ingest_quality": ("Ingest volume and rejects per day", _ingest),
}


def render_charts(tables: dict[str, Rows], folder: Path, now: datetime) -> list[Path]:
    """One PNG per entry of CHARTS in `folder`, from the views' rows."""
    return [
        _chart(folder / f"{name}.png", title, now, partial(draw, tables))
        for name, (title, draw) in CHARTS.items()
    ]


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 72rem; color: #222; }
h1 { margin-bottom: 0.2rem; } .meta { color: #666; margin-top: 0; }
section { margin: 2rem 0; } img { width: 100%; border: 1px solid #ddd; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(30rem, 1fr)); gap: 1rem; }
.figures { display: flex; gap: 2rem; flex-wrap: wrap; }
.figure b { display: block; font-size: 1.6rem; } .figure span { color: #666; font-size: 0.85rem; }
table { border-collapse: collapse; font-size: 0.85rem; } th, td { padding: 0.2rem 0.6rem; }
th { background: #f0f0f0; text-align: left; } tr:nth-child(even) td { background: #fafafa; }
.empty, .more { color: #666; font-style: italic; }
"""


def render_report(
    tables: dict[str, Rows], charts: list[Path], folder: Path, now: datetime, last_load: datetime | None
) -> Path:
    """Write `report.html`: key figures, the charts inlined and the key tables; nothing external."""
    loaded = f"{last_load:%Y-%m-%d %H:%M} UTC" if last_load else "nothing loaded yet"
    images = "".join(
        f"<img alt='{html.escape(p.stem.replace('_', ' '))}' src='{data_uri(p)}'>" for p in charts
    )
    figures = "".join(
        f"<div class='figure'><b>{value:,}</b><span>{html.escape(label)}</span></div>"
        for label, value in _key_figures(tables)
    )
    sections = [
        ("Ingest quality", "ingest_quality"),
        ("Dispatch outcomes", "dispatch_outcomes"),
        ("Dispatch backlog", "dispatch_backlog"),
        ("Energy per day", "energy_daily"),
        ("Shipments per day", "shipments_daily"),
    ]
    tables_html = "".join(
        f"<section><h2>{title}</h2>{html_table(tables[view])}</section>" for title, view in sections
    )
    page = (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>loadbay report {now:%Y-%m-%d}</title><style>{_STYLE}</style></head><body>"
        f"<h1>loadbay report</h1><p class='meta'>Generated {now:%Y-%m-%d %H:%M} UTC · "
        f"data last loaded {html.escape(loaded)}</p><section class='figures'>{figures}</section>"
        f"<section class='charts'>{images}</section>{tables_html}</body></html>"
    )
    target = folder / "report.html"
    partial = folder / ".report.html.tmp"
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, target)
    return target


def _key_figures(tables: dict[str, Rows]) -> list[tuple[str, int]]:
    """The headline numbers at the top of the report."""
    ingest, outcomes = tables["ingest_quality"], tables["dispatch_outcomes"]
    return [
        ("files received", sum(r["files"] for r in ingest)),
        ("rows loaded", sum(r["rows_loaded"] for r in ingest)),
        ("rows rejected", sum(r["rows_rejected"] for r in ingest)),
        ("meters", len({r["meter_id"] for r in tables["energy_daily"]})),
        ("shipments", sum(r["shipments"] for r in tables["shipments_daily"])),
        (
            "jobs sent to DeTrack",
            sum(r["shipments"] for r in outcomes if r["outbox_status"] == OutboxStatus.SENT),
        ),
        ("in the dispatch backlog", len(tables["dispatch_backlog"])),
    ]


def cell_text(value: Any) -> str:
    """A table cell's text: times in UTC to the minute, dates in ISO form, NULL as empty."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def html_table(rows: list[asyncpg.Record], limit: int = 40) -> str:
    """An HTML table of the first `limit` rows, escaped, with a note of how many more the CSV has."""
    if not rows:
        return "<p class='empty'>No rows yet.</p>"
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0].keys())  # noqa: SIM118 (a Record)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell_text(v))}</td>" for v in r.values()) + "</tr>"
        for r in rows[:limit]
    )
    more = (
        f"<p class='more'>{len(rows) - limit} more rows in the CSV export.</p>" if len(rows) > limit else ""
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def data_uri(png: Path) -> str:
    """A PNG file as a `data:` URI, so the report needs no other file."""
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
