"""Notebooks as participants meet them: JupyterLab in headless Chromium, Run All from the menu, widgets used.

JupyterLab is started by the test on a free port, token-less, in a temporary root folder holding copies of
the notebooks (with parameters injected as papermill does, so that nothing is written into the repository).
For each notebook: open it, Run > Run All Cells, wait for the kernel, check that no cell failed and every
widget rendered, use a widget and check its visible effect, save, reload the page and check again.
Screenshots go to $PYTEST_ARTIFACTS (or a temporary folder, printed). Needs Debian's chromium and
chromium-driver (scripts/install_browser.sh) and selenium; without them it skips (a failure in CI).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from jupyterlab_browser import Lab, errors_in, image_sources, until
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from workshop_lib.model import REPO_ROOT

pytestmark = pytest.mark.slow  # JupyterLab in headless Chromium: make test and CI run it

FAST_TRAIN = {
    # a few hundred rows: every run tokenizes its data (the whole file is 4000 conversations)
    "train_file": [{"path": "data/synthetic/train.jsonl", "max_rows": 400}],
    "eval_file": [{"path": "data/synthetic/eval.jsonl", "max_rows": 40}],
    "max_steps": 10,
    "logging_steps": 2,
    "save_steps": 10,
    "eval_strategy": "steps",
    "eval_steps": 10,  # one evaluation (of the whole held-out set): it costs more than the 10 steps
    "n_generate": 8,
    "nproc_per_node": 1,
    "warmup_steps": 0,
}
RUN_ALL_S: dict[str, float] = {}  # notebook -> seconds of Run All in the browser (printed at the end)


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    base = os.environ.get("PYTEST_ARTIFACTS")
    path = Path(base) / "browser" if base else tmp_path_factory.mktemp("browser-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def lab(tmp_path_factory, artifacts):
    work = tmp_path_factory.mktemp("lab")
    root = work / "notebooks"
    root.mkdir()
    lab = Lab(root, work, artifacts)
    yield lab
    lab.close()
    if RUN_ALL_S:
        times = ", ".join(f"{k} {v:.1f} s" for k, v in RUN_ALL_S.items())
        print(f"\nRun All in the browser: {times}; screenshots in {artifacts}")
        (artifacts / "run_all_seconds.json").write_text(json.dumps(RUN_ALL_S, indent=1))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A finished run of the tiny model (10 steps), for notebooks 04 and 05."""
    from workshop_lib import recipe as R
    from workshop_lib import train

    root = tmp_path_factory.mktemp("runs")
    recipe = R.load_recipe(
        REPO_ROOT / "recipes" / "tiny_cpu.yaml",
        overrides={**FAST_TRAIN, "run_name": "browser", "output_root": str(root)},
    )
    if hasattr(train, "resolve_paths"):  # before the training-core rewrite, paths were resolved separately
        recipe = train.resolve_paths(recipe)
    train.fit(recipe)
    return root / "browser"


def prepare(lab: Lab, stem: str, parameters: dict) -> str:
    """Copy notebooks/<stem>.ipynb into the lab's root with parameters injected (as papermill does)."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(REPO_ROOT / "notebooks" / f"{stem}.ipynb"))
    nb = parameterize_notebook(nb, parameters) if parameters else nb
    nbformat.write(nb, lab.root / f"{stem}.ipynb")
    return f"{stem}.ipynb"


def run_in_browser(lab: Lab, stem: str, parameters: dict, timeout: float = 240) -> nbformat.NotebookNode:
    """Open, Run All, check nothing failed and widgets rendered; returns the saved notebook."""
    name = prepare(lab, stem, parameters)
    lab.open(name)
    seconds = lab.run_all(timeout)
    RUN_ALL_S[stem] = seconds
    print(f"{stem}: Run All {seconds:.1f} s in the browser")
    lab.screenshot(f"{stem}.run-all")
    saved = lab.save(name)
    assert not errors_in(saved), errors_in(saved)
    lab.assert_widgets_rendered()
    return saved


def reopen(lab: Lab, stem: str) -> None:
    """Save, reload the page (the notebook reopens from disk) and check no widget is broken.

    On a reload, ipywidgets fetches a live kernel's widgets with time limits of its own (jupyterlab_widgets
    3.0: 4 s for the kernel's answer, 2 s for a widget's model to appear): on a loaded machine a reload can
    show 'Error displaying widget', which the next reload does not. Once is printed with the console's
    errors, twice fails."""
    name = f"{stem}.ipynb"
    lab.save(name)
    lab.open(name)
    try:
        lab.assert_widgets_rendered()
    except AssertionError as e:
        print(f"{stem}: after a reload: {e}; reloading once more")
        lab.open(name)
        lab.assert_widgets_rendered()
    lab.screenshot(f"{stem}.reopened")
    lab.shutdown_kernels()


# ---------------------------------------------------------------------------------------------- tests
def output_text(nb: nbformat.NotebookNode) -> str:
    """Stream and text/plain outputs of a saved notebook (not its source)."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") + out.get("data", {}).get("text/plain", ""))
            parts.append(out.get("data", {}).get("text/html", ""))
    return "\n".join(parts)


def widget_area(lab: Lab, css: str):
    """The one widget output containing `css` (a widget inside it)."""
    found = [w for w in lab.widget_outputs() if w.find_elements(By.CSS_SELECTOR, css)]
    assert len(found) == 1, f"{len(found)} widget outputs contain {css}"
    return found[0]


def test_00_setup_check(lab):
    saved = run_in_browser(lab, "00_setup_check", {})
    text = output_text(saved)
    assert "[PASS] model config: tiny" in text and "cannot plan" not in text
    assert "memory per GPU: total (GiB)" in text and "memory_gib" not in text  # a table, not JSON
    reopen(lab, "00_setup_check")


def test_01_data_formatting(lab, tmp_path):
    saved = run_in_browser(lab, "01_data_formatting", {"output_dir": str(tmp_path / "data")})
    assert (tmp_path / "data" / "train.jsonl").exists()
    text = output_text(saved)
    assert f"train_file = '{tmp_path / 'data' / 'train.jsonl'}'" in text  # says how 03 trains on it
    browser = widget_area(lab, ".widget-slider")
    shown = browser.find_element(By.CSS_SELECTOR, ".widget-html-content")
    first = shown.text
    assert "train 1 / " in first
    assert browser.find_element(By.CSS_SELECTOR, ".widget-readout").text == "1"  # slider and heading agree
    next_button = [b for b in browser.find_elements(By.CSS_SELECTOR, "button") if b.text == "▶"]
    next_button[0].click()
    until(lambda: "train 2 / " in shown.text, 30, "the next button to show conversation 2")
    assert shown.text != first and browser.find_element(By.CSS_SELECTOR, ".widget-readout").text == "2"
    lab.screenshot("01_data_formatting.next", browser)
    reopen(lab, "01_data_formatting")


def test_02_chat_templates(lab):
    run_in_browser(lab, "02_chat_templates", {})
    view = widget_area(lab, ".widget-slider")
    before = until(lambda: image_sources(view), 30, "the length plot under the slider")
    readout = view.find_element(By.CSS_SELECTOR, ".widget-readout").text
    view.find_element(By.CSS_SELECTOR, ".noUi-handle").send_keys(Keys.ARROW_RIGHT)
    until(
        lambda: view.find_element(By.CSS_SELECTOR, ".widget-readout").text != readout,
        20,
        "the slider to move",
    )
    until(lambda: image_sources(view) and image_sources(view) != before, 60, "the plot to follow the slider")
    lab.screenshot("02_chat_templates.slider", view)
    reopen(lab, "02_chat_templates")


def run_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if (p / "recipe.yaml").exists())


def test_03_train_run_all_again_and_after_an_edit(lab, tmp_path):
    """The participant's loop: Run All, Run All again in the same kernel, type a new line into the parameters
    cell and Run All: three finished runs, each with the values the cell showed, no error output."""
    params = {
        "output_root": str(tmp_path),
        "max_steps": 10,
        "overrides": {k: v for k, v in FAST_TRAIN.items() if k != "max_steps"},
    }
    saved = run_in_browser(lab, "03_train", params, timeout=400)
    text = output_text(saved)
    assert "image/png" in json.dumps([c.get("outputs", []) for c in saved.cells])  # the live or final plot
    assert "held-out exact match" in text and len(run_folders(tmp_path)) == 1
    RUN_ALL_S["03_train again"] = lab.run_all(400)
    saved = lab.save("03_train.ipynb")
    assert not errors_in(saved), errors_in(saved)
    assert len(run_folders(tmp_path)) == 2 and all(
        (r / "result.json").exists() for r in run_folders(tmp_path)
    )
    # type a recipe key the cell does not list, as a new last line of the parameters cell
    lab.type_at_end_of_cell(1, '\nlr_scheduler_type = "constant"')
    RUN_ALL_S["03_train edited"] = lab.run_all(400)
    saved = lab.save("03_train.ipynb")
    assert not errors_in(saved), errors_in(saved)
    newest = run_folders(tmp_path)[-1]
    assert (
        len(run_folders(tmp_path)) == 3
        and "lr_scheduler_type: constant" in (newest / "recipe.yaml").read_text()
    )
    lab.screenshot("03_train.edited")
    reopen(lab, "03_train")


def test_03_your_own_model_follow_the_advice_to_success(lab, tmp_path):
    """Bring your own model (Mistral's real v3 vocabulary, its v0.3 template, which drops system prompts) with
    the bundled data, system_prompt forced to keep: Run All stops with one message naming the fix; the
    participant types it into the parameters and Run All trains, the system prompts merged, as it says."""
    from test_real_tokenizers import REALS, save_tiny_model

    model = save_tiny_model(REALS[1], tmp_path / "my-model")
    out = tmp_path / "runs"
    small = {k: v for k, v in FAST_TRAIN.items() if k != "max_steps"}
    small |= {"n_generate": 0, "per_device_train_batch_size": 2, "eval_strategy": "no", "save_steps": 3}
    params = {"model": str(model), "output_root": str(out), "max_steps": 3, "overrides": small}
    lab.open(prepare(lab, "03_train", {**params, "system_prompt": "keep"}))
    lab.run_all(300)
    saved = lab.save("03_train.ipynb")
    errors = [e for e in errors_in(saved) if "did not run" not in e]
    assert len(errors) == 1 and "system_prompt" in errors[0] and "auto" in errors[0], errors
    assert not out.exists() or not run_folders(out)  # nothing written
    lab.screenshot("03_train.own-model-refused")
    # the advice, typed below the injected parameters (the last assignment wins)
    lab.type_at_end_of_cell(2, '\nsystem_prompt = "auto"')
    lab.run_all(300)
    saved = lab.save("03_train.ipynb")
    assert not errors_in(saved), errors_in(saved)
    assert "merged into the first user turn, because the template drops them" in output_text(saved)
    (run,) = run_folders(out)
    assert json.loads((run / "result.json").read_text())["system_prompt"] == "merge"
    lab.shutdown_kernels()


def test_04_loss_curves(lab, trained_run, tmp_path):
    saved = run_in_browser(lab, "04_loss_curves", {"runs": str(trained_run), "out_dir": str(tmp_path)})
    assert "note:" not in output_text(saved) and (tmp_path / "loss_curves.png").exists()
    explorer = widget_area(lab, "select[multiple]")
    pick, metrics = [Select(e) for e in explorer.find_elements(By.CSS_SELECTOR, "select[multiple]")]
    first = until(lambda: image_sources(explorer), 30, "the explorer's plot")
    metrics.deselect_all()
    metrics.select_by_visible_text("learning rate")
    until(
        lambda: image_sources(explorer) and image_sources(explorer) != first,
        60,
        "the metric picker to redraw",
    )
    axis = Select(explorer.find_element(By.CSS_SELECTOR, ".widget-dropdown select"))
    lr_plot = image_sources(explorer)
    axis.select_by_visible_text("tokens seen")
    until(
        lambda: image_sources(explorer) and image_sources(explorer) != lr_plot,
        60,
        "the x-axis picker to redraw",
    )
    lab.screenshot("04_loss_curves.tokens", explorer)
    pick.deselect_all()
    until(lambda: not image_sources(explorer), 30, "the plot to be cleared with no run chosen")
    assert "Choose at least one run" in explorer.text
    reopen(lab, "04_loss_curves")


def test_05_chat_and_export(lab, trained_run):
    saved = run_in_browser(lab, "05_chat_and_export", {"run": str(trained_run), "n_eval": 8})
    assert "exact match on 8 held-out conversations" in output_text(saved)
    chat = widget_area(lab, ".widget-text input")
    box = chat.find_element(By.CSS_SELECTOR, ".widget-text input")
    box.click()
    box.send_keys(Keys.ENTER)  # empty: says so
    until(lambda: "Type a message first" in chat.text, 30, "a hint after an empty send")
    box.send_keys("Which word is the fruit: wolf, plum, ocean", Keys.ENTER)
    until(lambda: "ASSISTANT" in chat.text.upper() and "thinking" not in chat.text, 60, "an answer to Enter")
    assert "Which word is the fruit" in chat.text and box.get_attribute("value") == ""
    assert "Type a message first" not in chat.text
    box.send_keys("And the colour?")
    chat.find_element(By.XPATH, ".//button[normalize-space()='send']").click()  # the button sends too
    until(lambda: chat.text.upper().count("ASSISTANT") == 2, 60, "an answer to the send button")
    assert "Type a message first" not in chat.text  # the click right after the text was sent is no empty send
    lab.screenshot("05_chat_and_export.chat", chat)
    reopen(lab, "05_chat_and_export")


def test_06_preference_tuning(lab, trained_run, tmp_path):
    params = {
        "model": str(trained_run / "final"),  # DPO starts from an SFT model
        "output_root": str(tmp_path),
        "max_steps": 6,
        # 96 training pairs (6 steps of 16) and 16 held-out ones: DPOTrainer tokenizes every pair it is given
        "train_file": [{"path": "data/synthetic/pairs_train.jsonl", "max_rows": 96}],
        "eval_file": [{"path": "data/synthetic/pairs_eval.jsonl", "max_rows": 16}],
        "overrides": {
            k: v for k, v in FAST_TRAIN.items() if k not in ("max_steps", "eval_steps", "save_steps")
        },
    }
    saved = run_in_browser(lab, "06_preference_tuning", params, timeout=400)
    text = output_text(saved)
    assert "before DPO: preference accuracy" in text and "reward margin (vs reference)" in text
    assert "image/png" in json.dumps([c.get("outputs", []) for c in saved.cells])  # loss and rewards plot
    assert [r.name for r in run_folders(tmp_path) if (r / "result.json").exists()]
    RUN_ALL_S["06_preference_tuning again"] = lab.run_all(400)  # Run All again in the same kernel
    saved = lab.save("06_preference_tuning.ipynb")
    assert not errors_in(saved), errors_in(saved)
    assert len(run_folders(tmp_path)) == 2 and all(
        (r / "result.json").exists() for r in run_folders(tmp_path)
    )
    reopen(lab, "06_preference_tuning")


def test_07_grpo(lab, trained_run, tmp_path):
    """GRPO in JupyterLab: Run All trains a few steps, draws the reward curves, shows a sampled group and the
    scores before and after; saved and reopened."""
    params = {
        "model": str(trained_run / "final"),  # GRPO starts from an SFT model
        "output_root": str(tmp_path),
        "max_steps": 2,
        "train_file": [{"path": "data/synthetic/train.jsonl", "max_rows": 32}],
        "eval_file": [{"path": "data/synthetic/eval.jsonl", "max_rows": 8}],
        "overrides": {
            "n_generate": 8,
            "per_device_train_batch_size": 16,
            "num_generations": 4,
            "logging_steps": 1,
        },
    }
    saved = run_in_browser(lab, "07_grpo", params, timeout=400)
    text = output_text(saved)
    assert "def correct(" in text and "def well_formed(" in text  # the recipe's reward functions, shown
    assert "image/png" in json.dumps([c.get("outputs", []) for c in saved.cells])  # reward curves
    (run,) = [r for r in run_folders(tmp_path) if (r / "result.json").exists()]
    result = json.loads((run / "result.json").read_text())
    assert {"exact_match_before", "exact_match_after", "reward_before", "reward_after"} <= set(result)
    reopen(lab, "07_grpo")
