"""Interactive views for the notebooks: HTML renderings and small ipywidgets apps.

Everything here also degrades to plain HTML/text, so a notebook executed headless by papermill
still shows a readable picture in its saved outputs.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence

ROLE_COLOURS = {"system": "#eef0f3", "user": "#e3f0ff", "assistant": "#e5f7e8"}
ROLE_BORDERS = {"system": "#8a94a6", "user": "#3b82f6", "assistant": "#22a347"}


def conversation_html(messages: Sequence[dict], title: str = "") -> str:
    """One conversation as chat bubbles: roles told apart by colour and label, text escaped."""
    parts = [f"<div style='font-weight:600;margin:4px 0'>{html.escape(title)}</div>"] if title else []
    for m in messages:
        role = str(m.get("role", "?"))
        bg, border = ROLE_COLOURS.get(role, "#fff4e5"), ROLE_BORDERS.get(role, "#f59e0b")
        indent = "margin-left:48px" if role == "assistant" else "margin-right:48px"
        content = html.escape(str(m.get("content", ""))).replace("\n", "<br>")
        parts.append(
            f"<div style='background:{bg};border-left:4px solid {border};padding:6px 10px;margin:4px 0;"
            f"border-radius:6px;{indent};font-family:sans-serif;color:#111'>"
            f"<div style='font-size:11px;color:{border};font-weight:700;text-transform:uppercase'>{html.escape(role)}"
            f"</div>{content}</div>"
        )
    return "<div style='max-width:720px'>" + "".join(parts) + "</div>"


def conversation_browser(rows: Sequence[dict], title: str = "conversation"):
    """Step through conversations with a slider and previous/next buttons."""
    import ipywidgets as W

    out = W.HTML()
    slider = W.IntSlider(value=0, min=0, max=max(len(rows) - 1, 0), description=title, continuous_update=True)
    prev, nxt = (
        W.Button(description="◀", layout=W.Layout(width="40px")),
        W.Button(description="▶", layout=W.Layout(width="40px")),
    )

    def show(*_):
        out.value = conversation_html(
            rows[slider.value]["messages"], f"{title} {slider.value + 1} / {len(rows)}"
        )

    slider.observe(show, names="value")
    prev.on_click(lambda _: setattr(slider, "value", max(slider.value - 1, 0)))
    nxt.on_click(lambda _: setattr(slider, "value", min(slider.value + 1, slider.max)))
    show()
    return W.VBox([W.HBox([prev, slider, nxt]), out])


def slider_view(
    render: Callable[[int], object], description: str, value: int, min: int, max: int, step: int = 1
):
    """A slider that re-renders an output area (a figure, HTML or text) for each value."""
    import ipywidgets as W

    return W.interactive(render, **{description: W.IntSlider(value=value, min=min, max=max, step=step)})
