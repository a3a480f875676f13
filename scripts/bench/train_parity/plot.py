"""Loss curves as a standalone SVG (no matplotlib in .venv-ref): one panel per worker count,
every run a thin line (its per-step loss, smoothed over a few steps), one colour per trainer."""
import math
from html import escape

COLOURS = {"open_clip": "#d95f02", "ferroclip": "#1b9e77"}
PANEL_W, PANEL_H = 420, 300
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 56, 16, 34, 44


def smooth(values: list, window: int) -> list:
    """Trailing mean over `window` steps (the first steps average what there is)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _ticks(lo: float, hi: float, count: int = 5) -> list:
    """Round tick values (1, 2, 2.5 or 5 × a power of ten apart) covering [lo, hi]."""
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    return [round(first + i * step, 10) for i in range(int((hi - first) / step + 1e-9) + 1)]


def loss_curves_svg(panels: list, title: str, window: int = 5) -> str:
    """`panels`: [(panel title, [(trainer, label, [(step, loss), ...]), ...]), ...]."""
    width = PANEL_W * len(panels)
    height = PANEL_H + 28
    all_losses = [loss for _, runs in panels for _, _, curve in runs for _, loss in curve]
    all_steps = [step for _, runs in panels for _, _, curve in runs for step, _ in curve]
    y_lo, y_hi = min(all_losses), max(all_losses)
    pad = 0.04 * (y_hi - y_lo or 1.0)
    y_lo, y_hi = y_lo - pad, y_hi + pad
    x_lo, x_hi = min(all_steps), max(all_steps)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{width / 2}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>',
    ]
    for p, (panel_title, runs) in enumerate(panels):
        x0 = p * PANEL_W + MARGIN_L
        y0 = 28 + MARGIN_T
        w = PANEL_W - MARGIN_L - MARGIN_R
        h = PANEL_H - MARGIN_T - MARGIN_B

        def sx(step, x0=x0, w=w):
            return x0 + (step - x_lo) / ((x_hi - x_lo) or 1) * w

        def sy(loss, y0=y0, h=h):
            return y0 + (y_hi - loss) / (y_hi - y_lo) * h

        parts.append(f'<text x="{x0 + w / 2}" y="{y0 - 10}" text-anchor="middle">{escape(panel_title)}</text>')
        parts.append(f'<rect x="{x0}" y="{y0}" width="{w}" height="{h}" fill="none" stroke="#999"/>')
        for t in _ticks(y_lo, y_hi):
            y = sy(t)
            parts.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
            parts.append(f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end">{t:g}</text>')
        for t in _ticks(x_lo, x_hi):
            x = sx(t)
            parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y0 + h}" y2="{y0 + h + 4}" stroke="#999"/>')
            parts.append(f'<text x="{x:.1f}" y="{y0 + h + 16}" text-anchor="middle">{t:g}</text>')
        parts.append(f'<text x="{x0 + w / 2}" y="{y0 + h + 32}" text-anchor="middle">step</text>')
        parts.append(
            f'<text x="{x0 - 40}" y="{y0 + h / 2}" text-anchor="middle" '
            f'transform="rotate(-90 {x0 - 40} {y0 + h / 2})">loss (mean of {window} steps)</text>'
        )
        for trainer, _label, curve in runs:
            ys = smooth([loss for _, loss in curve], window)
            points = " ".join(f"{sx(s):.1f},{sy(y):.1f}" for (s, _), y in zip(curve, ys))
            parts.append(
                f'<polyline points="{points}" fill="none" stroke="{COLOURS[trainer]}" '
                f'stroke-width="1.2" stroke-opacity="0.8"/>'
            )
        legend_y = y0 + 14
        for i, trainer in enumerate(COLOURS):
            lx = x0 + w - 110
            ly = legend_y + i * 15
            parts.append(f'<line x1="{lx}" x2="{lx + 18}" y1="{ly - 4}" y2="{ly - 4}" stroke="{COLOURS[trainer]}" stroke-width="2"/>')
            parts.append(f'<text x="{lx + 24}" y="{ly}">{trainer}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
