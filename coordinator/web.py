# SPDX-License-Identifier: AGPL-3.0-or-later
"""The coordinator's HTTP side (aiohttp): status page, JSON snapshot, Prometheus metrics and targets.

Every route serves bytes prepared when the status snapshot was last rebuilt (see
:class:`~coordinator.status.StatusBoard`); no request touches the scheduler or the database.

* ``/`` — the status page (server-rendered HTML; the chart is drawn by ``/static/chart.js``).
* ``/snapshot.html`` — the same page on its own: style and chart inlined, no refresh, so a saved copy
  still shows the run after the coordinator is gone (``lila up`` saves one when it ends).
* ``/api/status`` — the snapshot as JSON.
* ``/metrics`` — Prometheus text format.
* ``/api/prometheus-targets`` — Prometheus ``file_sd``/``http_sd`` JSON listing the metrics endpoints
  live peers declared at Join, one target group per peer with ``peer_id`` and ``peer_name`` labels.
"""

from __future__ import annotations

import datetime
import html
import json
import logging
from pathlib import Path
from string import Template
from typing import Any

from aiohttp import web

from coordinator.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from coordinator.metrics import CoordinatorMetrics
from coordinator.status import StatusBoard

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
STATIC_DIR = PACKAGE_DIR / "static"
TEMPLATE_PATH = PACKAGE_DIR / "templates" / "status.html"
STATIC_TYPES = {".js": "application/javascript", ".css": "text/css"}
PAGE_REFRESH_S = 10


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _tokens(n: float) -> str:
    for limit, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= limit:
            return f"{n / limit:.2f} {suffix}"
    return f"{n:.0f}"


def _optional(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _rate(bytes_per_s: float) -> str:
    if not bytes_per_s:
        return "–"
    for limit, suffix in ((1e9, "GB/s"), (1e6, "MB/s"), (1e3, "kB/s")):
        if bytes_per_s >= limit:
            return f"{bytes_per_s / limit:.1f} {suffix}"
    return f"{bytes_per_s:.0f} B/s"


def _split_parts(splits: dict[str, Any]) -> tuple[str, list[str]]:
    """The summary line of the latest split and one table row per parameter hash it saw."""
    latest = splits["latest"]
    if latest is None:
        return "no split found: the peers agree on their parameters after every outer step compared", []
    summary = (
        f"{splits['count']} split outer step{'' if splits['count'] == 1 else 's'}; latest: outer step "
        f"{latest['outer_step']}, {len(latest['hashes'])} distinct parameter hashes, "
        f"{latest['groups_of_one']} peers averaged alone ({latest['active_peers']} active)"
        + ("" if latest["majority_sha256"] else "; no majority (tie): nobody was asked to re-sync")
    )
    majority = latest["majority_sha256"]
    rows = [
        f'<tr class="split-hash"><td><code>{_esc(h["params_sha256"][:16])}…</code></td>'
        f'<td class="num">{h["peers"]}</td>'
        f'<td>{"majority" if h["params_sha256"] == majority else "re-sync" if majority else "tie"}</td></tr>'
        for h in latest["hashes"]
    ]
    return summary, rows


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s ago"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def _rows(rows: list[str], columns: int, empty: str) -> str:
    return "\n".join(rows) if rows else f'<tr><td colspan="{columns}">{_esc(empty)}</td></tr>'


def _static_files() -> dict[str, tuple[bytes, str]]:
    """``/static/`` files: name -> (bytes, content type)."""
    return {p.name: (p.read_bytes(), STATIC_TYPES[p.suffix]) for p in STATIC_DIR.iterdir() if p.suffix in STATIC_TYPES}


def _assets(static: dict[str, tuple[bytes, str]] | None) -> dict[str, str]:
    """The template's refresh, style and script tags: links to ``/static/`` (``static`` None), or inlined."""
    if static is None:
        return dict(style='<link rel="stylesheet" href="/static/style.css">',
                    script='<script src="/static/chart.js"></script>')
    css, js = (static[name][0].decode("utf-8") for name in ("style.css", "chart.js"))
    if "</" in css or "</script" in js:
        raise ValueError("a static file holds '</' and cannot be inlined into the page")
    return dict(style=f"<style>\n{css}</style>", script=f"<script>\n{js}</script>")


def render_page(snapshot: dict[str, Any], *, refresh_s: int = PAGE_REFRESH_S,
                inline: dict[str, tuple[bytes, str]] | None = None) -> str:
    """The status page HTML for ``snapshot`` (every value escaped). With ``inline`` (the static files,
    :func:`_static_files`) the page stands alone: style and chart inlined, and no refresh."""
    stage_rows = []
    for s in snapshot["stages"]:
        pct = 100.0 * s["progress"]
        budget = f" / {_tokens(s['token_budget'])}" if s["token_budget"] else ""
        stage_rows.append(
            f'<tr class="stage-{_esc(s["status"])}"><td>{s["index"]}</td><td>{_esc(s["name"])}</td><td>{_esc(s["status"])}</td>'
            f'<td><span class="bar" title="{pct:.1f}%"><div style="width:{pct:.1f}%"></div></span> {pct:.1f}%</td>'
            f'<td class="num">{_tokens(s["tokens"])}{budget}</td>'
            f'<td class="num">{s["shards_completed"]} / {s["shards_leased"]} / {s["shards_total"]}</td>'
            f'<td>{_stage_model(s)}</td></tr>'
        )
    peer_rows = [
        f'<tr class="peer"><td>{_esc(p["name"])}</td><td>{_esc(p["device"]) or "–"}</td>'
        f'<td class="state-{_esc(p["state"])}">{_esc(p["state"])}</td><td class="num">{p["tokens_per_s"]:.1f}</td>'
        f'<td>{_ago(p["last_seen_s"])}</td><td class="num">{_tokens(p["tokens"])}</td><td class="num">{max(p["outer_step"], 0)}</td>'
        f'<td class="num">{p.get("strikes", 0)}</td><td>{_esc(p["reachability"]) or "–"}</td>'
        f'<td class="num">{_rate(p["uplink_bytes_per_s"])} / {_rate(p["downlink_bytes_per_s"])}</td></tr>'
        for p in snapshot["peers"]
    ]
    split_summary, split_rows = _split_parts(snapshot["splits"])
    leader_rows = [
        f'<tr><td>{i}</td><td>{_esc(p["name"])}</td><td class="num">{_tokens(p["tokens"])}</td></tr>'
        for i, p in enumerate(snapshot["leaderboard"], start=1)
    ]
    banned_rows = [
        f"<tr><td>{_esc(p['name'])}</td><td>{_esc(p['peer_id'])}</td><td>{_esc(p['reason'])}</td></tr>"
        for p in snapshot["banned"]
    ]
    run = snapshot["run"]
    model = run["model_preset"] + (f" ({run['model_variant']})" if run["model_variant"] else "")
    history = json.dumps(snapshot["history"], separators=(",", ":")).replace("<", "\\u003c")
    updated = datetime.datetime.fromtimestamp(snapshot["generated_at"], tz=datetime.timezone.utc)
    return Template(TEMPLATE_PATH.read_text(encoding="utf-8")).substitute(
        refresh_meta="" if inline is not None else f'<meta http-equiv="refresh" content="{int(refresh_s)}">',
        **_assets(inline),
        run_name=_esc(run["name"]),
        finished_badge='<span class="badge">finished</span>' if snapshot["finished"] else "",
        model=_esc(model),
        stage_name=_esc(_stage_heading(snapshot)),
        updated=updated.strftime("%Y-%m-%d %H:%M:%S UTC"),
        outer_step=snapshot["outer_step"],
        global_tokens=_tokens(snapshot["global_tokens"]),
        tokens_per_s=f"{snapshot['tokens_per_s']:.1f}",
        peers_active=snapshot["peers_by_state"].get("active", 0),
        peer_count=snapshot["peer_count"],
        loss=_optional(snapshot["loss"]),
        val_bpb=_optional(snapshot["val_bpb"]),
        stage_rows=_rows(stage_rows, 7, "no stages"),
        model_stage=_esc(_model_card(snapshot["model"])),
        next_growth=_esc(_growth_card(snapshot["model"]["next_growth"])),
        history_json=history,
        peer_rows=_rows(peer_rows, 10, "no peer has joined yet"),
        splits_count=snapshot["splits"]["count"],
        split_summary=_esc(split_summary),
        split_rows=_rows(split_rows, 3, "no split"),
        leader_rows=_rows(leader_rows, 3, "no contributions yet"),
        banned_rows=_rows(banned_rows, 3, "nobody is banned"),
    )


def _stage_model(stage: dict[str, Any]) -> str:
    """A stage's model cell: its shape and parameters, and the outer step of its growth once announced."""
    if not stage.get("model_label"):
        return "–"
    text = f"{_esc(stage['model_label'])} · {_tokens(stage['model_params'])} params"
    if stage.get("growth_step", -1) >= 0:
        text += f" · grows after outer step {stage['growth_step']}"
    return text


def _model_card(model: dict[str, Any]) -> str:
    """The model stage held now: ``1 · 8 layers × 144 (zero ×2) · 3.17 M params``."""
    if not model["label"]:
        return "–"
    return f"{model['stage']} · {model['label']} · {_tokens(model['params'])} params"


def _growth_card(growth: dict[str, Any] | None) -> str:
    """The next growth point: where (stage, global tokens), the announced outer step once known, the size."""
    if growth is None:
        return "none"
    step = f"outer step {growth['outer_step']}" if growth["outer_step"] is not None else "step not yet announced"
    return (f"{growth['stage_name']} at {_tokens(growth['at_tokens'])} tokens ({step}) → "
            f"{_tokens(growth['model_params'])} params")


def _stage_heading(snapshot: dict[str, Any]) -> str:
    """The header's stage: the current one's name; once the run finished, the last one's and "finished"."""
    if snapshot["stage_name"]:
        return snapshot["stage_name"]
    if snapshot["finished"]:
        stages = snapshot["stages"]
        return f"{stages[-1]['name']} (finished)" if stages else "finished"
    return "–"


class StatusWeb:
    """The aiohttp application; re-renders its cached bodies whenever ``board`` refreshes."""

    def __init__(
        self, *, board: StatusBoard, metrics: CoordinatorMetrics, page_refresh_s: int = PAGE_REFRESH_S
    ) -> None:
        self.board = board
        self.metrics = metrics
        self.page_refresh_s = page_refresh_s
        self._page = b"<!DOCTYPE html><title>starting</title><p>The coordinator is starting.</p>"
        self._standalone = self._page
        self._targets = b"[]"
        self._static = _static_files()
        self._runner: web.AppRunner | None = None
        board.listeners.append(self._on_snapshot)

    def _on_snapshot(self, snapshot: dict[str, Any]) -> None:
        self._page = render_page(snapshot, refresh_s=self.page_refresh_s).encode()
        self._standalone = render_page(snapshot, inline=self._static).encode()
        self._targets = json.dumps(self.board.targets).encode()

    def app(self) -> web.Application:
        """The routes (for tests with aiohttp's test client, or :meth:`start`)."""
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/snapshot.html", self._snapshot_page)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/prometheus-targets", self._prom_targets)
        app.router.add_get("/static/{name}", self._static_file)
        app.router.add_get("/healthz", self._health)
        return app

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(body=self._page, content_type="text/html", charset="utf-8")

    async def _snapshot_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self._standalone, content_type="text/html", charset="utf-8")

    async def _status(self, request: web.Request) -> web.Response:
        return web.Response(body=self.board.snapshot_json, content_type="application/json")

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _prom_targets(self, request: web.Request) -> web.Response:
        return web.Response(body=self._targets, content_type="application/json")

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _static_file(self, request: web.Request) -> web.Response:
        found = self._static.get(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(text=f"no static file {request.match_info['name']!r}")
        body, content_type = found
        return web.Response(body=body, content_type=content_type)

    async def start(self, *, host: str, port: int) -> int:
        """Listen on ``host:port`` (0: any free port); returns the bound port."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_port=False)
        await site.start()
        return int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
