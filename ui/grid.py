"""An AG Grid whose rows reach the browser as one grid call, not inside the element.

An element's props are sent with the page and made reactive by Vue in the browser:
10,000 rows there meant a 2 MB page and seconds of main-thread work before the first
row painted. ``RowGrid`` keeps the full rows in ``options['rowData']`` on the server
(so views and tests read and update them as usual), leaves them out of what it sends
as an element, and hands them over with ``setGridOption('rowData', ...)`` each time
the browser's grid is ready (also after a reconnect re-creates it).
"""

from __future__ import annotations

import json
from typing import Any

from nicegui import ui

from ui.theme import STATUS_COLORS

# Cell renderers the run grids share (sp.* helpers are in theme.py; every value
# rendered as HTML goes through sp.esc).
STATUS_CELL = f"""(p) => {{
  const c = {json.dumps(STATUS_COLORS)}[p.value] || '#9e9e9e';
  return `<span class="sp-status" data-status="${{sp.esc(p.value)}}" `
       + `style="background:${{c}};color:#fff">`
       + `${{sp.esc((p.value || '').toLowerCase().replace('_', ' '))}}</span>`;
}}"""
TIME_CELL = (
    """(p) => p.value ? `<span title="${sp.utc(p.value)}">${sp.fmtTime(p.value)}</span>` : ''"""
)
# Milliseconds from started_at to finished_at, or to now while it runs.
DURATION_VALUE = """(p) => {
  const s = p.data.started_at, f = p.data.finished_at;
  return s ? (f ? Date.parse(f) : Date.now()) - Date.parse(s) : null;
}"""


class RowGrid(ui.aggrid):
    """``ui.aggrid`` with its rows sent by a grid call once the grid is ready."""

    def __init__(self, options: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(options, **kwargs)
        self.on("gridReady", self._send_rows)

    def _to_dict(self) -> dict[str, Any]:
        data = super()._to_dict()
        props = data.get("props") or {}
        options = props.get("options")
        if isinstance(options, dict) and options.get("rowData"):
            data["props"] = {**props, "options": {**options, "rowData": []}}
        return data

    def _send_rows(self) -> None:
        self.run_grid_method("setGridOption", "rowData", self.options.get("rowData") or [])
