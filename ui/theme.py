"""Colours, fonts and the small browser-side helpers every page shares."""

from __future__ import annotations

from nicegui import ui

FAVICON = "🔗"

# One colour per status, the same in chips, grids, the graph and the timeline.
STATUS_COLORS: dict[str, str] = {
    "PENDING": "#9e9e9e",
    "QUEUED": "#8d99ae",
    "RUNNING": "#2196f3",
    "RETRY_WAIT": "#ff9800",
    "PAUSED": "#ab47bc",
    "INTERRUPTED": "#ff7043",
    "SUCCEEDED": "#2e7d32",
    "FAILED": "#d32f2f",
    "CANCELLED": "#616161",
    "SKIPPED": "#bdbdbd",
}

LEVEL_CLASSES: dict[str, str] = {
    "error": "sp-log-error",
    "warning": "sp-log-warning",
    "debug": "sp-log-debug",
    "info": "",
}


def status_color(status: str) -> str:
    return STATUS_COLORS.get(status, "#9e9e9e")


def status_chip(status: str) -> ui.badge:
    """A coloured chip for a run or node status."""
    return (
        ui.badge(status.lower().replace("_", " "))
        .classes("sp-status text-white")
        .style(f"background-color: {status_color(status)} !important")
        .props(f'data-status="{status}"')
    )


_CSS = """
:root { --sp-mono: ui-monospace, 'JetBrains Mono', 'SFMono-Regular', Menlo, Consolas, monospace; }
.sp-mono, .sp-mono *:not(.q-icon):not(.material-icons) { font-family: var(--sp-mono);
  font-size: 12.5px; }
.sp-status { font-weight: 600; letter-spacing: .02em; padding: 2px 8px; border-radius: 10px; }
.sp-log-error { color: #e53935; }
.sp-log-warning { color: #f9a825; }
.sp-log-debug { opacity: .55; }
.sp-muted { opacity: .65; }
.sp-card { border: 1px solid rgba(127,127,127,.25); border-radius: 8px; }
.sp-bar { display: flex; height: 8px; width: 100%; min-width: 60px; border-radius: 4px;
          overflow: hidden; background: rgba(127,127,127,.15); margin-top: 12px; }
.sp-bar > span { display: block; height: 100%; }
.sp-kv td { padding: 1px 10px 1px 0; vertical-align: top; }
.sp-kv td:first-child { opacity: .65; white-space: nowrap; }
.sp-children td { padding: 1px 10px 1px 0; vertical-align: middle; white-space: nowrap; }
.sp-child-cell { line-height: 15px; padding-top: 3px; white-space: nowrap; overflow: hidden;
                 text-overflow: ellipsis; }
.sp-child-of { font-size: 11px; opacity: .75; color: inherit; text-decoration: none; }
.sp-child-of:hover { text-decoration: underline; opacity: 1; }
.sp-trace-open { color: inherit; opacity: .55; text-decoration: none; }
.sp-trace-open:hover { opacity: 1; }
.sp-tab-hidden { position: absolute !important; top: 0; left: -20000px; visibility: hidden;
                 pointer-events: none; }
body.body--dark .jse-main {
  --jse-background-color: #1e1f22; --jse-text-color: #d4d4d4; --jse-panel-background: #2a2b2e;
  --jse-key-color: #9cdcfe; --jse-value-color: #d4d4d4; --jse-value-color-string: #ce9178;
  --jse-value-color-number: #b5cea8; --jse-value-color-boolean: #569cd6;
  --jse-value-color-null: #c586c0; --jse-delimiter-color: #8c8c8c;
  --jse-selection-background-color: #264f78; --jse-hover-background-color: #2a2d2e;
  --jse-main-border: 1px solid #3c3c3c; --jse-collapsed-items-background-color: #333;
}
body.body--dark .sp-card { border-color: rgba(255,255,255,.12); }
.ag-theme-quartz, .ag-root-wrapper { font-size: 13px; }
.sp-log { border: 1px solid rgba(127,127,127,.25); border-radius: 6px; padding: 6px 8px;
          line-height: 1.45; }
.sp-log-line { white-space: pre-wrap; word-break: break-word; padding: 1px 0; }
.sp-log-line details > summary { cursor: pointer; list-style: none; }
.sp-log-line details > summary::-webkit-details-marker { display: none; }
.sp-log-line details > summary::after { content: ' ▸'; opacity: .5; }
.sp-log-line details[open] > summary::after { content: ' ▾'; }
.sp-log-ts { display: inline-block; min-width: 72px; margin-right: 8px; }
.sp-log-node { display: inline-block; min-width: 90px; max-width: 160px; overflow: hidden;
               text-overflow: ellipsis; vertical-align: bottom; margin-right: 8px; opacity: .85;
               font-weight: 600; white-space: nowrap; }
.sp-log-level { display: inline-block; min-width: 56px; opacity: .7; }
.sp-log-status { font-weight: 600; }
.sp-log-call { display: inline-block; font-size: 11px; padding: 0 5px; margin-right: 6px;
               border-radius: 3px; background: rgba(127,127,127,.18); }
.sp-log-pre { margin: 4px 0 4px 24px; padding: 6px 8px; background: rgba(127,127,127,.1);
              border-radius: 4px; max-height: 320px; overflow: auto; white-space: pre; }
.sp-log-tokens > span:last-child { }
"""

# Times travel as RFC 3339 UTC strings; the browser shows them in its own time zone,
# with the UTC time on hover. Elements opt in with class "sp-time" and data-ts.
_JS = """
<script>
window.sp = window.sp || {};
// Every value a grid renders as HTML goes through this: labels, errors and outputs are
// whatever a node or a caller wrote.
sp.esc = function (value) {
  return String(value ?? '').replace(/[&<>"']/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;',
    '"': '&quot;', "'": '&#39;'})[c]);
};
sp.fmtTime = function (iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (isNaN(d)) return iso;
  const now = new Date();
  const sameDay = d.toDateString() === now.toDateString();
  const opts = sameDay ? {hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false}
                       : {year: 'numeric', month: 'short', day: '2-digit', hour: '2-digit',
                          minute: '2-digit', second: '2-digit', hour12: false};
  return d.toLocaleString(undefined, opts);
};
sp.utc = function (iso) {
  return iso ? new Date(iso).toISOString().replace('T', ' ').replace('Z', ' UTC') : '';
};
sp.fmtDuration = function (ms) {
  if (ms === null || ms === undefined || isNaN(ms)) return '';
  if (ms < 1000) return Math.round(ms) + ' ms';
  const s = ms / 1000;
  if (s < 60) return s.toFixed(s < 10 ? 2 : 1) + ' s';
  const m = Math.floor(s / 60), r = Math.floor(s % 60);
  if (m < 60) return m + 'm ' + String(r).padStart(2, '0') + 's';
  const h = Math.floor(m / 60);
  return h + 'h ' + String(m % 60).padStart(2, '0') + 'm';
};
sp.localize = function (root) {
  (root || document).querySelectorAll('.sp-time[data-ts]').forEach(el => {
    const iso = el.getAttribute('data-ts');
    if (el.dataset.done === iso) return;
    el.textContent = sp.fmtTime(iso);
    el.title = sp.utc(iso);
    el.dataset.done = iso;
  });
};
sp.tickDurations = function () {
  document.querySelectorAll('.sp-ticking[data-start]').forEach(el => {
    const start = Date.parse(el.getAttribute('data-start'));
    if (!isNaN(start)) el.textContent = sp.fmtDuration(Date.now() - start);
  });
};
// Follow mode of a live log: stick to the bottom while data-follow is "1"; scrolling
// up turns it off and tells the server (so the toggle shows it), scrolling back on.
sp.wireLog = function (el) {
  el.setAttribute('data-sp-wired', '1');
  const id = el.id.replace(/^c/, '');
  new MutationObserver(() => {
    if (el.getAttribute('data-follow') === '1') el.scrollTop = el.scrollHeight;
  }).observe(el, {childList: true, subtree: true, characterData: true, attributes: true,
                  attributeFilter: ['data-follow']});
  let last = el.scrollTop;
  el.addEventListener('scroll', () => {
    const atBottom = el.scrollTop + el.clientHeight >= el.scrollHeight - 24;
    const following = el.getAttribute('data-follow') === '1';
    if (following && !atBottom && el.scrollTop < last) {
      el.setAttribute('data-follow', '0');
      emitEvent('sp-follow-' + id, false);
    } else if (!following && atBottom && el.scrollTop > last) {
      el.setAttribute('data-follow', '1');
      emitEvent('sp-follow-' + id, true);
    }
    last = el.scrollTop;
  });
  el.scrollTop = el.scrollHeight;
};
new MutationObserver(() => {
  sp.localize();
  document.querySelectorAll('.sp-log:not([data-sp-wired])').forEach(sp.wireLog);
}).observe(document.documentElement,
  {subtree: true, childList: true, attributes: true, attributeFilter: ['data-ts']});
setInterval(sp.tickDurations, 1000);  // a clock in the browser, not a request
document.addEventListener('DOMContentLoaded', () => sp.localize());
</script>
"""


def add_shared_head() -> None:
    """Adds the console's CSS and browser helpers to every page."""
    ui.add_head_html(f"<style>{_CSS}</style>{_JS}", shared=True)


def time_label(iso: str | None, *, placeholder: str = "—") -> ui.label:
    """A time shown in the browser's time zone, its UTC time on hover."""
    label = ui.label(iso or placeholder)
    if iso:
        label.classes("sp-time").props(f'data-ts="{iso}"')
    return label
