"""Interactive views for the notebooks: HTML renderings and small ipywidgets apps.

Everything here also degrades to plain HTML/text, so a notebook executed headless by papermill
still shows a readable picture in its saved outputs.
"""

from __future__ import annotations

import html
import time
import warnings
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
    """Step through conversations with a slider and previous/next buttons (both count from 1)."""
    import ipywidgets as W

    out = W.HTML()
    slider = W.IntSlider(value=1, min=1, max=max(len(rows), 1), description=title, continuous_update=True)
    prev, nxt = (
        W.Button(description="◀", tooltip="previous conversation", layout=W.Layout(width="40px")),
        W.Button(description="▶", tooltip="next conversation", layout=W.Layout(width="40px")),
    )

    def show(*_):
        out.value = conversation_html(
            rows[slider.value - 1]["messages"], f"{title} {slider.value} / {len(rows)}"
        )

    slider.observe(show, names="value")
    prev.on_click(lambda _: setattr(slider, "value", max(slider.value - 1, 1)))
    nxt.on_click(lambda _: setattr(slider, "value", min(slider.value + 1, slider.max)))
    show()
    return W.VBox([W.HBox([prev, slider, nxt]), out])


def slider_view(
    render: Callable[[int], object], description: str, value: int, min: int, max: int, step: int = 1
):
    """A slider that re-renders an output area (a figure, HTML or text) for each value."""
    import ipywidgets as W

    return W.interactive(render, **{description: W.IntSlider(value=value, min=min, max=max, step=step)})


def prompt_html(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")


def results_table(before: Sequence[tuple], after: Sequence[tuple], n: int = 10) -> str:
    """Held-out answers side by side: (prompt, reference, answer) triples of generate.exact_match, as HTML.

    The prompt is every turn before the answer (system prompt and earlier turns included)."""
    cell = "<td style='text-align:left;vertical-align:top'>{}</td>"
    rows = []
    for (prompt, ref, old), (_, _, new) in list(zip(before, after, strict=False))[:n]:
        cells = [prompt_html(prompt), html.escape(ref), html.escape(old[:80]), html.escape(new)]
        rows.append(
            "<tr>" + "".join(cell.format(c) for c in cells) + f"<td>{'✅' if new == ref else '❌'}</td></tr>"
        )
    head = "".join(
        f"<th style='text-align:left'>{h}</th>" for h in ("prompt", "reference", "before", "after", "")
    )
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def chat_box(respond: Callable[[list[dict]], str], example: str = ""):
    """A chat: type, press Enter (or click send); `respond(history)` returns the assistant's answer.

    An empty message is answered with a hint instead of silently doing nothing; the example prompt is shown
    as a hint below the box, not as a placeholder that looks like typed text."""
    import ipywidgets as W

    history: list[dict] = []
    # continuous_update=False: the text reaches the kernel once, on Enter (or when the box loses focus).
    # Reading it at an Enter "submit" event instead would race: the browser holds back value updates while
    # the kernel is busy, so the submit can arrive before the last keystrokes.
    box = W.Text(placeholder="Type a message, then press Enter", continuous_update=False)
    box.layout.width = "60%"
    send, reset = W.Button(description="send", button_style="primary"), W.Button(description="new chat")
    hint = f"<span style='color:#6b7280'>e.g. {html.escape(example)}</span>" if example else ""
    status, view = W.HTML(hint), W.HTML()
    last_sent = [0.0]

    def say(text: str) -> None:
        history.append({"role": "user", "content": text})
        status.value, view.value = "<span style='color:#6b7280'>thinking…</span>", conversation_html(history)
        history.append({"role": "assistant", "content": respond(list(history))})
        status.value, view.value = "", conversation_html(history)
        last_sent[0] = time.monotonic()

    def on_text(change) -> None:
        text = change["new"].strip()
        if text:
            box.value = ""  # observed again with "", which sends nothing
            say(text)

    def on_empty(*_) -> None:
        # the text of a real message arrives as a value change (on_text); an empty box gets a hint, unless
        # this is the click on "send" right after the box's text was sent when it lost focus
        if not box.value.strip() and time.monotonic() - last_sent[0] > 2:
            status.value = "<span style='color:#b45309'>Type a message first, then press Enter.</span>"

    def on_reset(_) -> None:
        history.clear()
        view.value, status.value = "", hint

    box.observe(on_text, names="value")
    with warnings.catch_warnings():
        # on_submit (Enter) is deprecated in ipywidgets 8; it is used only to answer an empty Enter
        warnings.simplefilter("ignore", DeprecationWarning)
        box.on_submit(on_empty)
    send.on_click(on_empty)
    reset.on_click(on_reset)
    return W.VBox([W.HBox([box, send, reset]), status, view])
